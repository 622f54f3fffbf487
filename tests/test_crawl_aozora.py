"""The aozora spider against the bundled mirror, served by a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import collections
import re
import signal
import subprocess
import sys
import time

import pytest

from gpt2ja.corpus.jsonl import list_parts, read_documents
from gpt2ja.crawler.extract.aozora import from_xhtml, from_zip
from gpt2ja.crawler.mirror import MirrorServer
from gpt2ja.crawler.runner import CrawlConfig, crawl_in_subprocess
from gpt2ja.infra import storage
from tests.conftest import MIRROR, TestSiteHandler, author_urls

CARD_PATH = re.compile(r"^/cards/\d{6}/card\d+\.html$")


def mirror_cards() -> set[str]:
    return {"/" + str(p.relative_to(MIRROR)) for p in MIRROR.glob("cards/*/card*.html")}


@pytest.fixture(scope="module")
def crawled(tmp_path_factory):
    """One polite-off crawl of the whole mirror: (server requests, output URI, manifest, documents)."""
    root = tmp_path_factory.mktemp("root")
    server = MirrorServer(str(MIRROR), handler=TestSiteHandler).start()
    try:
        cfg = CrawlConfig(
            source="aozora",
            start_urls=author_urls(server),
            root=str(root),
            crawl_id="t1",
            polite=False,
            progress_interval=0,
        )
        out = crawl_in_subprocess(cfg)
    finally:
        server.stop()
    return server.requests, out, storage.read_manifest(out), list(read_documents(out))


@pytest.mark.slow
def test_reaches_all_48_cards(crawled):
    requests, *_ = crawled
    ok_cards = {path for path, status, _ in requests if CARD_PATH.match(path) and status == 200}
    assert len(mirror_cards()) == 48
    assert ok_cards == mirror_cards()


def test_one_document_per_readable_card(crawled):
    _, _, manifest, docs = crawled
    # 36 cards outside the robots-disallowed /cards/000074/files/ give a document each
    assert len(docs) == 36 == manifest["counts"]["documents"]
    assert len({d.id for d in docs}) == 36
    assert {d.meta["person_id"] for d in docs} == {"000879", "000081", "000121"}
    rashomon = next(d for d in docs if d.title == "羅生門")
    assert rashomon.author == "芥川 竜之介"
    assert rashomon.text.startswith("　ある日の暮方の事である。一人の下人が、羅生門の下で雨やみを待っていた。")
    assert rashomon.license.startswith("public domain")
    assert rashomon.url.endswith("/cards/000879/card127.html")
    for d in docs:
        assert d.text and "\ufffd" not in d.text
        assert not re.search(r"《|》|［＃|^-{10,}$|^底本：", d.text, re.MULTILINE), d.title
        assert d.meta["edition"] == "txt" and d.meta["encoding"] in ("cp932", "shift_jis_2004")


def test_zips_and_xhtml_fetched_and_agree(crawled):
    requests, _, _, docs = crawled
    fetched = {path for path, status, _ in requests if status == 200}
    zips = {p for p in fetched if p.endswith(".zip")}
    xhtml = {p for p in fetched if re.search(r"/files/\d+_\d+\.html$", p)}
    assert len(zips) == 36
    assert len(xhtml) == 12  # the 16 XHTML editions less the 4 under the disallowed 000074
    both = [d for d in docs if "editions_agree" in d.meta]
    assert len(both) == 12 and all(d.meta["editions_agree"] for d in both)


def test_robots_disallowed_directory_never_fetched(crawled):
    requests, _, manifest, _ = crawled
    assert not [p for p, _, _ in requests if p.startswith("/cards/000074/files/")]
    assert ("/robots.txt", 200) in {(p, s) for p, s, _ in requests}
    # 12 zips + 12 XHTML links on the梶井 cards (8 of those XHTML files are absent from the mirror)
    assert manifest["counts"]["drops"]["robots_disallowed"] == 24
    assert manifest["counts"]["drops"]["no_edition_readable"] == 12


def test_404s_counted_by_status(crawled):
    requests, _, manifest, _ = crawled
    served_404 = sum(1 for _, status, _ in requests if status == 404)
    assert served_404 > 700  # author pages list hundreds of cards that the slice leaves out
    assert manifest["counts"]["http_status"]["404"] == served_404
    assert manifest["counts"]["drops"]["http_404"] == served_404
    assert manifest["counts"]["pages_fetched"] == len(requests)


def test_manifest_lists_parts_with_checksums(crawled):
    _, out, manifest, _ = crawled
    assert manifest["stage"] == "crawl"
    assert [f["path"] for f in manifest["files"]] == [u.rsplit("/", 1)[-1] for u in list_parts(out)]
    for f in manifest["files"]:
        assert storage.file_info(storage.join(out, f["path"]))["sha256"] == f["sha256"]
    assert manifest["fingerprint"] == storage.fingerprint(manifest["config"])


@pytest.mark.slow
def test_rerun_of_a_complete_crawl_is_skipped(crawled):
    _, out, manifest, _ = crawled
    root = out.rsplit("/raw/", 1)[0]
    cfg = CrawlConfig(**{**manifest["config"], "root": root, "progress_interval": 0})
    with MirrorServer(str(MIRROR)) as server:
        crawl_in_subprocess(cfg)
        assert server.requests == []  # nothing fetched: the manifest matched
    assert storage.read_manifest(out)["created_at"] == manifest["created_at"]


def test_crawl_document_matches_direct_extraction(crawled):
    _, _, _, docs = crawled
    doc = next(d for d in docs if d.title == "蜘蛛の糸")
    direct = from_zip((MIRROR / "cards/000879/files/92_ruby_164.zip").read_bytes(), "92_ruby_164.zip")
    assert doc.text == direct.text
    assert from_xhtml((MIRROR / "cards/000879/files/92_14545.html").read_bytes(), "92_14545.html").text == doc.text


@pytest.mark.slow
def test_interrupted_crawl_resumes_without_refetching(tmp_path):
    """Ctrl-C (SIGINT) mid-crawl, then the same command again: every page fetched once, nothing lost."""
    server = MirrorServer(str(MIRROR), handler=TestSiteHandler).start()
    try:
        cfg = CrawlConfig(
            source="aozora",
            start_urls=author_urls(server),
            root=str(tmp_path),
            crawl_id="r",
            polite=False,
            progress_interval=0,
            settings={"CONCURRENT_REQUESTS": 2, "CONCURRENT_REQUESTS_PER_DOMAIN": 2},
        )
        log = open(tmp_path / "crawl.log", "w+")  # a file, not a pipe: a full pipe would stall the crawl
        proc = subprocess.Popen(
            [sys.executable, "-m", "gpt2ja.crawler.runner", cfg.model_dump_json()],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # A card's document is complete once its last edition (the XHTML, when there is one) has arrived.
        while sum(1 for p, s, _ in server.requests if s == 200 and re.search(r"/files/\d+_\d+\.html$", p)) < 6:
            assert proc.poll() is None, "crawl ended before it could be interrupted"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        proc.wait()
        log.seek(0)
        err = log.read()
        first_session = list(server.requests)
        assert not storage.exists(storage.join(cfg.out_uri, storage.MANIFEST)), "an interrupted crawl is partial"
        written = list(read_documents(cfg.out_uri))
        assert 0 < len(written) < 36, err[-2000:]

        crawl_in_subprocess(cfg)
    finally:
        if "proc" in locals() and proc.poll() is None:  # the test ended early: the crawl must not outlive it
            proc.kill()
            proc.wait()
        server.stop()
    paths = collections.Counter(p for p, _, _ in server.requests if p != "/robots.txt")
    assert [p for p, n in paths.items() if n > 1] == []
    assert len(first_session) < len(server.requests)
    docs = list(read_documents(cfg.out_uri))
    assert len(docs) == 36 and len({d.id for d in docs}) == 36
    assert {d.id for d in written} <= {d.id for d in docs}
    manifest = storage.read_manifest(cfg.out_uri)
    assert manifest["counts"]["documents"] == 36
    assert manifest["timings"]["sessions"] == 2
    assert manifest["close_reasons"] == ["shutdown", "finished"]


@pytest.mark.slow
def test_a_killed_crawl_resumes_to_the_same_documents(tmp_path):
    """SIGKILL mid-crawl (an OOM kill, a preempted VM), then the same command: all 36 documents, once each.

    Scrapy's JOBDIR has the seen requests but not the queue after a kill; the
    crawl starts again from its start URLs and skips the cards whose documents
    were stored (no card that gave a document is fetched twice).
    """
    server = MirrorServer(str(MIRROR), handler=TestSiteHandler).start()
    try:
        cfg = CrawlConfig(
            source="aozora",
            start_urls=author_urls(server),
            root=str(tmp_path),
            crawl_id="k",
            polite=False,
            progress_interval=0,
            part_docs=2,
            settings={"CONCURRENT_REQUESTS": 2, "CONCURRENT_REQUESTS_PER_DOMAIN": 2},
        )
        log = open(tmp_path / "crawl.log", "w+")
        proc = subprocess.Popen(
            [sys.executable, "-m", "gpt2ja.crawler.runner", cfg.model_dump_json()],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        while len(list_parts(cfg.out_uri)) < 3:  # some documents stored (parts of 2)
            assert proc.poll() is None, "crawl ended before it could be killed"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        stored = {d.url for d in read_documents(cfg.out_uri)}
        before = len(server.requests)
        assert 0 < len(stored) < 36 and storage.read_manifest(cfg.out_uri) is None

        crawl_in_subprocess(cfg)
    finally:
        if "proc" in locals() and proc.poll() is None:  # the test ended early: the crawl must not outlive it
            proc.kill()
            proc.wait()
        server.stop()
    docs = list(read_documents(cfg.out_uri))
    assert len(docs) == 36 and len({d.id for d in docs}) == 36
    assert storage.read_manifest(cfg.out_uri)["counts"]["documents"] == 36
    again = [p for p, _, _ in server.requests[before:]]
    cards_stored = {u.split("//", 1)[1].split("/", 1)[1] for u in stored}
    assert not {"/" + c for c in cards_stored} & set(again)  # stored documents' cards were not fetched again
