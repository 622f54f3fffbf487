"""Our own crawls write WARC: real crawls of a real local HTTP server, read back with warcio and `crawl warc`.

The key property: ``crawl warc`` over a ``web`` crawl's WARC files gives the
documents the crawl gave (same ids, URLs, titles, texts, meta) and drops the
same pages for the same reasons. The WARC holds exactly the 2xx responses that
reached the spider, each once, self-consistent (decoded body, its length); a
file torn by a kill is cut back to its last complete record and continued.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from gpt2ja.corpus.jsonl import read_documents
from gpt2ja.crawler.mirror import MirrorServer
from gpt2ja.crawler.runner import CrawlConfig, crawl_in_subprocess
from gpt2ja.crawler.warc import WarcConfig, crawl_warc
from gpt2ja.crawler.warc_writer import REDIRECTED_FROM, Fetched, WarcFiles, record_bytes
from gpt2ja.infra import stage, storage
from tests.conftest import MIRROR, TestSiteHandler
from tests.test_crawl_web import PARAS, page

UTF8 = '<meta charset="utf-8">'
#: reasons a page is dropped before it reaches the spider: such a page has no WARC record
NOT_FETCHED = ("http_404", "robots_disallowed", "too_large")
#: what only one side has: the crawl's link depth and dedup key, the archive's record address
ONE_SIDED_META = ("depth", "canonical_url", "warc_record_id", "warc_file", "warc_offset")


class ArchiveSiteHandler(TestSiteHandler):
    """The test site's handler plus ``/go/PATH`` (a 302 to ``/PATH``), ``/gz/PATH`` (the file gzip-encoded on
    the wire) and ``/chunked/PATH`` (the file in HTTP/1.1 chunked transfer coding)."""

    def do_GET(self):
        for prefix in ("/go/", "/gz/", "/chunked/"):
            if self.path.startswith(prefix):
                return getattr(self, "_" + prefix.strip("/"))(self.path[len(prefix) - 1 :])
        return super().do_GET()

    def _go(self, target: str) -> None:
        self.send_response(302)
        self.send_header("Location", target)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _gz(self, target: str) -> None:
        body = gzip.compress(Path(self.translate_path(target)).read_bytes(), mtime=0)
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _chunked(self, target: str) -> None:
        body = Path(self.translate_path(target)).read_bytes()
        chunks = b"".join(
            b"%x\r\n%s\r\n" % (len(body[i : i + 500]), body[i : i + 500]) for i in range(0, len(body), 500)
        )
        self.log_request(200)
        self.wfile.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n" + chunks + b"0\r\n\r\n"
        )
        self.close_connection = True


@pytest.fixture
def site(tmp_path) -> Path:
    """Good pages in three encodings, pages each spider rule drops, and the edge cases of storing responses."""
    site = tmp_path / "site"
    (site / "private").mkdir(parents=True)
    links = [
        "/utf8.html",
        "/sjis.html",
        "/eucjp.html",
        "/english.html",
        "/empty.html",
        "/nav.html",
        "/canon.html",
        "/canon.html?ref=top",
        "/notes.txt",
        "/gz/zipped.html",
        "/chunked/chunks.html",
        "/go/moved.html",
        "/huge.html",
        "/missing.html",
        "/private/secret.html",
    ]
    (site / "robots.txt").write_text("User-agent: *\nDisallow: /private/\n")
    (site / "index.html").write_text(page("目次", PARAS[:1], links, charset_meta=UTF8), encoding="utf-8")
    for name, title in (("utf8", "ユーティーエフ"), ("zipped", "圧縮"), ("chunks", "分割"), ("moved", "移転先")):
        (site / f"{name}.html").write_text(page(title, PARAS, charset_meta=UTF8), encoding="utf-8")
    (site / "sjis.html").write_bytes(page("シフトJIS①", PARAS + ["値段は①百円～二百円です。"]).encode("cp932"))
    (site / "eucjp.html").write_bytes(
        page(
            "イーユーシー", PARAS, charset_meta='<meta http-equiv="Content-Type" content="text/html; charset=EUC-JP">'
        ).encode("euc_jp")
    )
    (site / "english.html").write_text(
        page("English", ["This page is written in English only. " * 20] * 3), encoding="utf-8"
    )
    (site / "empty.html").write_bytes(b"")
    (site / "nav.html").write_text(
        f'<html><head>{UTF8}</head><body><nav><a href="/index.html">トップ</a></nav></body></html>', encoding="utf-8"
    )
    (site / "canon.html").write_text(
        page("正規", PARAS, head='<link rel="canonical" href="/canon.html">', charset_meta=UTF8), encoding="utf-8"
    )
    (site / "notes.txt").write_text("テキストファイルです。" * 10, encoding="utf-8")
    (site / "huge.html").write_text(page("巨大", PARAS * 400, charset_meta=UTF8), encoding="utf-8")
    (site / "private" / "secret.html").write_text(page("秘密", PARAS), encoding="utf-8")
    return site


def records(folder: str) -> list:
    """``(file name, WARC headers, HTTP headers, payload)`` of every record of the WARC files in ``folder``."""
    from warcio.archiveiterator import ArchiveIterator

    out = []
    for path in sorted(Path(folder).glob("*.warc.gz")):
        with open(path, "rb") as fh:
            for r in ArchiveIterator(fh):
                out.append((path.name, r.rec_headers, r.http_headers, r.content_stream().read()))
    return out


def in_process(fn, items, names):
    return [fn(item) for item in items]


@pytest.mark.slow
def test_web_crawl_stores_what_reached_the_spider_and_crawl_warc_gives_the_same_documents(site, tmp_path):
    with MirrorServer(str(site), handler=ArchiveSiteHandler) as server:
        cfg = CrawlConfig(
            source="web",
            start_urls=[server.url("/index.html")],
            root=str(tmp_path / "root"),
            crawl_id="w",
            polite=False,
            progress_interval=0,
            download_maxsize=200_000,
        )
        assert cfg.warc is True  # on by default for web
        out = crawl_in_subprocess(cfg)
    manifest = storage.read_manifest(out)
    assert stage.verify(out, deep=True)[1] == []
    assert [f["path"] for f in manifest["files"] if f["path"].startswith("warc/")] == ["warc/web-w-00000.warc.gz"]

    recs = records(os.path.join(out, "warc"))
    kinds = Counter(h.get_header("WARC-Type") for _, h, _, _ in recs)
    responses = {
        h.get_header("WARC-Target-URI"): (h, http, body)
        for _, h, http, body in recs
        if h.get_header("WARC-Type") == "response"
    }
    # exactly the 2xx responses the spider parsed, each once: not robots.txt, the 302, the 404, nor huge.html
    # (answered 200, but Scrapy cancelled it past download_maxsize)
    served = Counter(
        server.url(p) for p, status, _ in server.requests if status == 200 and p not in ("/robots.txt", "/huge.html")
    )
    assert kinds["response"] == len(responses) == len(served) == 13 and set(responses) == set(served)
    assert recs[0][1].get_header("WARC-Type") == "warcinfo"
    assert kinds == {"warcinfo": 1, "response": 13, "request": 13} and manifest["counts"]["warc"] == {
        "files": 1,
        "records": dict(kinds),
    }
    drops = manifest["counts"]["drops"]
    assert {k: drops[k] for k in NOT_FETCHED} == {"http_404": 1, "robots_disallowed": 1, "too_large": 1}

    for url, (h, http, body) in responses.items():  # self-consistent: the stored body and its length
        assert http.get_header("Content-Length") == str(len(body)), url
        assert http.get_header("Transfer-Encoding") is None and http.get_header("Content-Encoding") is None, url
        assert http.protocol.startswith("HTTP/1.") and http.get_statuscode() == "200"
        assert h.get_header("WARC-IP-Address") == "127.0.0.1" and h.get_header("WARC-Record-ID")
    for path in ("/gz/zipped.html", "/chunked/chunks.html", "/sjis.html"):  # decoded bodies, byte for byte
        name = path.rsplit("/", 1)[-1]
        assert responses[server.url(path)][2] == (site / name).read_bytes(), path
    moved = responses[server.url("/moved.html")][0]
    assert moved.get_header(REDIRECTED_FROM) == server.url("/go/moved.html")
    requests = {
        h.get_header("WARC-Concurrent-To"): http for _, h, http, _ in recs if h.get_header("WARC-Type") == "request"
    }
    assert set(requests) == {h.get_header("WARC-Record-ID") for h, _, _ in responses.values()}
    assert all(http.get_header("User-Agent").startswith("gpt2ja-crawler/") for http in requests.values())

    # the key property: the archive gives the crawl's documents back, and drops the same pages for the same reasons
    again = crawl_warc(
        WarcConfig(paths=[os.path.join(out, "warc")], root=str(tmp_path / "root"), crawl_id="again"),
        map_parts=in_process,
    )
    crawled = {d.id: d for d in read_documents(out)}
    archived = {d.id: d for d in read_documents(again)}
    assert len(crawled) == 8 and set(archived) == set(crawled)  # index, 3 encodings, canon, gz, chunked, moved
    for doc_id, doc in crawled.items():
        other = archived[doc_id]
        assert (other.url, other.title, other.author, other.text, other.license, other.source) == (
            doc.url,
            doc.title,
            doc.author,
            doc.text,
            doc.license,
            doc.source,
        )
        assert {k: v for k, v in other.meta.items() if k not in ONE_SIDED_META} == {
            k: v for k, v in doc.meta.items() if k not in ONE_SIDED_META
        }
        # fetched_at: the archive's is the WARC-Date (the response's arrival), the crawl's the document's making
        assert other.fetched_at == responses[other.meta["fetched_url"]][0].get_header("WARC-Date") <= doc.fetched_at
    counts = storage.read_manifest(again)["counts"]
    assert counts["drops"] == {k: v for k, v in drops.items() if k not in NOT_FETCHED}
    assert counts["records"] == dict(kinds)


@pytest.mark.slow
def test_aozora_crawl_stores_every_response_it_parsed_in_rolled_files(tmp_path):
    """``--warc`` on an Aozora crawl: card pages, zips and XHTML editions, each once, files rolled at a size.

    ``crawl warc`` cannot give the Aozora documents back: it reads pages as web pages (the zips are
    ``not_html``, the card pages too short); what is checked is that the archive holds what was fetched.
    """
    with MirrorServer(str(MIRROR), handler=TestSiteHandler) as server:
        cfg = CrawlConfig(
            source="aozora",
            start_urls=[server.url("/index_pages/person879.html")],
            root=str(tmp_path / "root"),
            crawl_id="a",
            polite=False,
            progress_interval=0,
            warc=True,
            warc_file_bytes=100_000,
        )
        out = crawl_in_subprocess(cfg)
    assert CrawlConfig(source="aozora", start_urls=["http://x/"]).warc is False  # off unless asked
    manifest = storage.read_manifest(out)
    assert stage.verify(out, deep=True)[1] == []
    recs = records(os.path.join(out, "warc"))
    uris = Counter(h.get_header("WARC-Target-URI") for _, h, _, _ in recs if h.get_header("WARC-Type") == "response")
    served = Counter(server.url(p) for p, status, _ in server.requests if status == 200 and p != "/robots.txt")
    assert uris == served and max(uris.values()) == 1
    assert sum(1 for u in uris if u.endswith(".zip")) == manifest["counts"]["documents"] == 12
    zip_path = "/cards/000879/files/127_ruby_150.zip"  # stored as served, byte for byte
    assert (
        next(
            b
            for _, h, _, b in recs
            if h.get_header("WARC-Target-URI") == server.url(zip_path) and h.get_header("WARC-Type") == "response"
        )
        == (MIRROR / zip_path.lstrip("/")).read_bytes()
    )
    files = sorted({name for name, *_ in recs})
    assert len(files) > 1 and files == [f"aozora-a-{i:05d}.warc.gz" for i in range(len(files))]
    firsts = [next(h for name, h, _, _ in recs if name == f).get_header("WARC-Type") for f in files]
    assert firsts == ["warcinfo"] * len(files)  # each file opens with its warcinfo
    assert manifest["counts"]["warc"]["files"] == len(files)
    assert [f["path"] for f in manifest["files"] if f["path"].startswith("warc/")] == [f"warc/{f}" for f in files]


@pytest.mark.slow
def test_a_killed_crawl_resumes_its_warc_file_and_stores_each_response_once(tmp_path):
    """SIGKILL an Aozora crawl while its WARC file is being filled and documents are stored, then rerun it.

    The rerun skips the cards whose documents were stored (their responses are in the file already: each
    record is written before the spider parses the response), fetches the rest again, stores what is not
    stored yet, and publishes the file the killed session had begun: every response fetched, once.
    """
    from gpt2ja.corpus.jsonl import list_parts
    from tests.conftest import author_urls

    with MirrorServer(str(MIRROR), handler=TestSiteHandler) as server:
        cfg = CrawlConfig(
            source="aozora",
            start_urls=author_urls(server)[:2],
            root=str(tmp_path),
            crawl_id="k",
            polite=False,
            progress_interval=0,
            part_docs=2,
            warc=True,
            settings={"CONCURRENT_REQUESTS": 2, "CONCURRENT_REQUESTS_PER_DOMAIN": 2},
        )
        filling = Path(cfg.state_path, "warc", "aozora-k-00000.warc.gz")
        log = open(tmp_path / "crawl.log", "w+")
        proc = subprocess.Popen(
            [sys.executable, "-m", "gpt2ja.crawler.runner", cfg.model_dump_json()],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            while len(list_parts(cfg.out_uri)) < 2:  # some documents stored, so their cards are skipped later
                assert proc.poll() is None, "crawl ended before it could be killed"
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert filling.stat().st_size > 0 and not Path(cfg.out_uri, "warc").exists()  # nothing published yet
        first = len(server.requests)
        crawl_in_subprocess(cfg)
    assert os.listdir(filling.parent) == []  # published, not left behind
    assert stage.verify(cfg.out_uri, deep=True)[1] == []
    recs = records(os.path.join(cfg.out_uri, "warc"))
    uris = Counter(h.get_header("WARC-Target-URI") for _, h, _, _ in recs if h.get_header("WARC-Type") == "response")
    fetched = {server.url(p) for p, status, _ in server.requests if status == 200 and p != "/robots.txt"}
    assert set(uris) == fetched and max(uris.values()) == 1
    again = {server.url(p) for p, status, _ in server.requests[first:] if status == 200 and p != "/robots.txt"}
    assert again < fetched  # the rerun did not fetch everything: what it skipped came from the killed session
    assert [name for name, h, _, _ in recs if h.get_header("WARC-Type") == "warcinfo"] == ["aozora-k-00000.warc.gz"]
    assert storage.read_manifest(cfg.out_uri)["counts"]["warc"] == {
        "files": 1,
        "records": {"request": len(uris), "response": len(uris), "warcinfo": 1},
    }


@pytest.mark.slow
def test_warc_files_go_to_gcs_with_the_documents(gcs_emulator, tmp_path):
    """``--root gs://…``: the file is filled in the local state dir and uploaded whole; the manifest lists it."""
    from warcio.archiveiterator import ArchiveIterator

    with MirrorServer(str(MIRROR), handler=TestSiteHandler) as server:
        cfg = CrawlConfig(
            source="aozora",
            start_urls=[server.url("/cards/000121/card628.html")],
            warc=True,
            root=f"gs://{gcs_emulator.bucket}/warc-test",
            crawl_id="g",
            polite=False,
            progress_interval=0,
            state_dir=str(tmp_path / "state"),
        )
        out = crawl_in_subprocess(cfg, env={"STORAGE_EMULATOR_HOST": gcs_emulator.host})
    manifest = storage.read_manifest(out)
    [entry] = [f for f in manifest["files"] if f["path"].startswith("warc/")]
    data = storage.read_bytes(storage.join(out, entry["path"]))
    assert len(data) == entry["bytes"] and stage.verify(out, deep=True)[1] == []
    uris = [
        r.rec_headers.get_header("WARC-Target-URI")
        for r in ArchiveIterator(io.BytesIO(data))
        if r.rec_type == "response"
    ]
    assert sorted(uris) == sorted(
        server.url(p) for p, status, _ in server.requests if status == 200 and p != "/robots.txt"
    )


@pytest.mark.slow
def test_a_warc_that_cannot_be_written_stops_the_crawl_in_one_line(tmp_path):
    """No WARC file can be made (its state folder is a file): the crawl stops, publishes nothing, says where."""
    from gpt2ja.crawler.runner import CrawlError

    with MirrorServer(str(MIRROR), handler=TestSiteHandler) as server:
        cfg = CrawlConfig(
            source="aozora",
            start_urls=[server.url("/cards/000121/card628.html")],
            warc=True,
            root=str(tmp_path),
            crawl_id="f",
            polite=False,
            progress_interval=0,
        )
        os.makedirs(cfg.state_path)
        Path(cfg.state_path, "warc").write_text("not a folder")
        with pytest.raises(CrawlError, match=r"crawl aozora/f: cannot read the crawl's WARC files in .*rerun") as err:
            crawl_in_subprocess(cfg)
    assert "\n" not in str(err.value) and storage.read_manifest(cfg.out_uri) is None
    assert not Path(cfg.state_path, "jobdir").exists()  # forgotten: the rerun fetches again what it saw


def _fetched(n: int, size: int = 2000) -> Fetched:
    body = page(f"頁{n}", PARAS).encode("utf-8").ljust(size)
    return Fetched(
        url=f"http://site.jp/p{n}.html",
        status=200,
        headers=[("Content-Type", "text/html")],
        body=body,
        fetched_at=f"2026-01-01T00:00:{n:02d}Z",
        request_headers=[("User-Agent", "t")],
    )


def test_a_file_torn_by_a_kill_is_cut_back_and_continued(tmp_path):
    """What a SIGKILL leaves (a record half written at the end of the file being filled) is repaired on resume."""
    out, state = str(tmp_path / "out"), str(tmp_path / "state")
    first = WarcFiles(out, state, "web-k").open()
    assert [first.add(_fetched(n)) for n in range(3)] == [None, None, None]
    [filling] = os.listdir(state)  # the session is killed here: nothing published, the file stays
    assert not os.path.exists(os.path.join(out, "warc"))
    torn = record_bytes(_fetched(9))
    with open(os.path.join(state, filling), "ab") as fh:
        fh.write(torn[: len(torn) // 2])

    second = WarcFiles(out, state, "web-k").open()
    assert len(second.notes) == 1 and "cut back to its last complete record" in second.notes[0]
    assert second.stored == {f"http://site.jp/p{n}.html" for n in range(3)}
    assert second.add(_fetched(1)) == "already_stored"  # fetched again after the kill: stored once
    assert second.add(_fetched(9)) is None
    assert second.close() == [storage.join(out, "warc", "web-k-00000.warc.gz")]
    recs = records(os.path.join(out, "warc"))
    assert [h.get_header("WARC-Type") for _, h, _, _ in recs] == ["warcinfo"] + ["response", "request"] * 4
    assert [h.get_header("WARC-Target-URI") for _, h, _, _ in recs[1::2]] == [
        f"http://site.jp/p{n}.html" for n in (0, 1, 2, 9)
    ]
    assert second.summary() == {"files": 1, "records": {"request": 4, "response": 4, "warcinfo": 1}}

    # killed between publishing a file and removing it from the state dir: the published copy counts
    third = WarcFiles(out, state, "web-k").open()
    third.add(_fetched(10))
    third._publish()  # noqa: SLF001 - as a roll does; the state copy is put back below, as a kill would leave it
    shutil.copy(os.path.join(out, "warc", "web-k-00001.warc.gz"), os.path.join(state, "web-k-00001.warc.gz"))
    fourth = WarcFiles(out, state, "web-k").open()
    assert os.listdir(state) == [] and fourth.summary()["records"]["response"] == 5
    assert fourth.add(_fetched(11)) is None and fourth.close()[-1].endswith("web-k-00002.warc.gz")


def test_records_too_large_or_torn_before_their_first_record(tmp_path):
    out, state = str(tmp_path / "out"), str(tmp_path / "state")
    files = WarcFiles(out, state, "web-t", max_record_bytes=1000, max_file_bytes=1).open()
    assert files.add(_fetched(1, size=1001)) == "too_large"
    assert files.close() == [] and not os.path.exists(os.path.join(out, "warc"))  # nothing stored: no file
    os.makedirs(state, exist_ok=True)
    Path(state, "web-t-00000.warc.gz").write_bytes(gzip.compress(b"WARC/1.0\r\n")[:10])  # killed mid-warcinfo
    files = WarcFiles(out, state, "web-t", max_file_bytes=1).open()
    assert os.listdir(state) == []
    assert [files.add(_fetched(n)) for n in range(2)] == [None, None]  # max_file_bytes=1: one response a file
    assert [Path(u).name for u in files.close()] == ["web-t-00000.warc.gz", "web-t-00001.warc.gz"]


def test_warc_is_on_for_web_and_named_in_the_fingerprint_only_when_on():
    web = CrawlConfig(source="web", start_urls=["http://x/"])
    aozora = CrawlConfig(source="aozora", start_urls=["http://x/"])
    assert (web.warc, aozora.warc) == (True, False)
    assert web.fingerprint_config()["warc"] is True and "warc" not in aozora.fingerprint_config()
    assert CrawlConfig(source="web", start_urls=["http://x/"], warc=False).fingerprint_config() == {
        k: v for k, v in web.fingerprint_config().items() if k != "warc"
    }
    assert "warc_file_bytes" not in web.fingerprint_config()  # how files are cut is not what they hold
