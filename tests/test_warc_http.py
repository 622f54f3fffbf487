"""``crawl warc`` over HTTP: file URLs and Common Crawl style path listings, served here by a real local server.

The server holds the WARC and WET files of ``tests/test_warc.py`` laid out as
Common Crawl lays out a snapshot (``crawl-data/CC-TEST/segments/…``) with a
``warc.paths.gz`` of relative paths. It can also behave as a bad network does:
close the connection part-way through a file, answer 503 every time, or ignore
``Range`` requests. Nothing here reaches the internet; no test sleeps (backoff 0).
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from gpt2ja.corpus.jsonl import read_documents
from gpt2ja.crawler.mirror import MirrorServer, RecordingHandler
from gpt2ja.crawler.warc import WarcConfig, WarcError, crawl_warc, expand_paths
from gpt2ja.crawler.warc_inputs import FetchError
from gpt2ja.infra import storage
from tests import procs, test_warc
from tests.test_warc import DROPS, in_process

archives = test_warc.archives  # the fixture: the same WARC and WET files as the local tests

GPT2JA = [str(Path(sys.executable).with_name("gpt2ja"))]
SNAPSHOT = "crawl-data/CC-TEST"
WARC = f"{SNAPSHOT}/segments/1/warc/crawl-00000.warc.gz"
WET = f"{SNAPSHOT}/segments/1/wet/crawl-00000.warc.wet.gz"
LISTING = f"{SNAPSHOT}/warc.paths.gz"


class ArchiveHandler(RecordingHandler):
    """Static files with single ``bytes=N-`` ranges (unless ``server.ranges`` is off); the first GET of a
    path in ``server.cut`` closes the connection after that many bytes; a path in ``server.fail`` answers
    every GET with that status. Each request goes to ``server.log`` as (method, path, Range, status)."""

    def log_request(self, code="-", size="-"):
        self.server.log.append((self.command, self.path, self.headers.get("Range"), int(code)))

    def do_GET(self):
        if self.path in self.server.fail:
            return self.send_error(self.server.fail[self.path])
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            return self.send_error(404)
        data, start = Path(path).read_bytes(), 0
        asked = self.headers.get("Range")
        if asked and self.server.ranges:
            start = int(asked.removeprefix("bytes=").removesuffix("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Last-Modified", self.date_time_string(int(os.path.getmtime(path))))
        self.end_headers()
        cut = self.server.cut.pop(self.path, None)
        self.wfile.write(data[start:] if cut is None else data[start : start + cut])
        self.close_connection = True


@pytest.fixture(scope="module")
def site(archives, tmp_path_factory) -> Path:
    """A snapshot-like tree: the WARC and WET files and a warc.paths.gz listing their relative paths."""
    d = tmp_path_factory.mktemp("site")
    for rel, src in ((WARC, archives["warc"]), (WET, archives["wet"])):
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, d / rel)
    (d / LISTING).write_bytes(gzip.compress(f"{WARC}\n{WET}\n".encode(), mtime=0))
    return d


@pytest.fixture()
def server(site):
    srv = MirrorServer(str(site), handler=ArchiveHandler)
    srv.httpd.log, srv.httpd.cut, srv.httpd.fail, srv.httpd.ranges = [], {}, {}, True
    with srv:
        yield srv


@pytest.fixture(scope="module")
def local(archives, tmp_path_factory) -> str:
    """The same two files crawled from disk: what every HTTP crawl here must give."""
    cfg = WarcConfig(
        paths=[archives["warc"], archives["wet"]], root=str(tmp_path_factory.mktemp("local")), crawl_id="local"
    )
    return crawl_warc(cfg, map_parts=in_process)


def docs(uri: str) -> set[tuple[str, str, str]]:
    return {(d.id, d.url, d.text) for d in read_documents(uri)}


def http_cfg(server, tmp_path, paths, **kw) -> WarcConfig:
    return WarcConfig(
        paths=paths, root=str(tmp_path / "root"), crawl_id="cc", paths_base=server.url("/"), http_backoff_s=0, **kw
    )


def gets(server, path: str) -> list[tuple[str | None, int]]:
    return [(rng, status) for method, p, rng, status in server.httpd.log if method == "GET" and p == "/" + path]


def test_a_listing_url_gives_what_the_local_files_give(server, site, local, tmp_path, capsys):
    out = crawl_warc(http_cfg(server, tmp_path, [server.url("/" + LISTING)]), map_parts=in_process)
    assert docs(out) == docs(local) and len(docs(out)) == 5
    manifest, expected = storage.read_manifest(out), storage.read_manifest(local)
    assert manifest["counts"]["drops"] == expected["counts"]["drops"] == DROPS
    assert manifest["counts"]["records"] == expected["counts"]["records"]
    # each entry recorded as a URL with the size its HEAD request gave, in the listing's order
    assert manifest["config"]["inputs"] == [
        [server.url("/" + WARC), (site / WARC).stat().st_size],
        [server.url("/" + WET), (site / WET).stat().st_size],
    ]
    assert manifest["config"]["listing"] == {"paths_base": server.url("/"), "offset": 0, "limit": None}
    doc = next(d for d in read_documents(out) if d.url == "https://news.example.jp/a")
    assert doc.meta["warc_file"] == server.url("/" + WARC)
    assert gets(server, WARC) == [(None, 200)] and gets(server, WET) == [(None, 200)]
    # a rerun reads the listing and asks for the sizes again, but downloads no archive
    server.httpd.log.clear()
    crawl_warc(http_cfg(server, tmp_path, [server.url("/" + LISTING)]), map_parts=in_process)
    assert "already complete" in capsys.readouterr().err
    assert gets(server, WARC) == gets(server, WET) == [] and gets(server, LISTING) == [(None, 200)]


def test_first_and_offset_select_entries_of_the_listing(server, tmp_path):
    out = crawl_warc(http_cfg(server, tmp_path, [server.url("/" + LISTING)], limit=1), map_parts=in_process)
    counts = storage.read_manifest(out)["counts"]
    assert counts["files_read"] == 1 and counts["documents"] == 4
    assert [(m, p) for m, p, _, _ in server.httpd.log if p != "/" + LISTING] == [
        ("HEAD", "/" + WARC),
        ("GET", "/" + WARC),
    ]
    second = expand_paths([server.url("/" + LISTING)], paths_base=server.url("/"), offset=1, limit=5)
    assert [u for u, _ in second] == [server.url("/" + WET)]
    with pytest.raises(WarcError, match=r"warc.paths.gz: no entries after the first 2 \(it lists 2\); lower --offset"):
        expand_paths([server.url("/" + LISTING)], paths_base=server.url("/"), offset=2)


def test_a_missing_listing_entry_is_one_line(server, site, tmp_path):
    listing = f"{SNAPSHOT}/broken.paths"  # uncompressed: a listing too
    (site / listing).write_text(f"{WET}\n\n{SNAPSHOT}/segments/1/wet/missing.warc.wet.gz\n")
    url, base = server.url("/" + listing), server.url("/")
    with pytest.raises(WarcError) as err:
        crawl_warc(http_cfg(server, tmp_path, [url]), map_parts=in_process)
    assert str(err.value) == (
        f"{base}{SNAPSHOT}/segments/1/wet/missing.warc.wet.gz: HTTP 404 File not found "
        f"(entry 2 of {url}, its path joined to --paths-base {base}); check --paths-base, "
        "or leave the entry out with --offset/--first"
    )
    assert gets(server, WET) == [] and not (tmp_path / "root" / "raw" / "warc" / "cc").exists()


@pytest.mark.parametrize("ranges", [True, False], ids=["range", "restart"])
def test_a_dropped_connection_is_resumed(server, local, tmp_path, ranges):
    server.httpd.ranges = ranges
    server.httpd.cut = {"/" + WARC: 1000, "/" + WET: 10}
    out = crawl_warc(http_cfg(server, tmp_path, [server.url("/" + WARC), server.url("/" + WET)]), map_parts=in_process)
    assert docs(out) == docs(local) and storage.read_manifest(out)["counts"]["drops"] == DROPS
    # the second request asks for the rest; a server without ranges sends it all again (its head skipped)
    assert gets(server, WARC) == (
        [(None, 200), ("bytes=1000-", 206)] if ranges else [(None, 200), ("bytes=1000-", 200)]
    )
    assert gets(server, WET)[1] == (("bytes=10-", 206) if ranges else ("bytes=10-", 200))


def test_a_file_that_keeps_failing_ends_the_crawl_and_a_rerun_reads_only_it(server, tmp_path):
    urls = [server.url("/" + WARC), server.url("/" + WET)]
    server.httpd.fail = {"/" + WET: 503}
    with pytest.raises(FetchError) as err:
        crawl_warc(http_cfg(server, tmp_path, urls, http_retries=2), map_parts=in_process)
    assert str(err.value) == (
        f"{urls[1]}: still failing after 3 attempts (last: HTTP 503 Service Unavailable); "
        "rerun the same command later: the files already read are kept"
    )
    assert isinstance(err.value, storage.StorageError)  # the flow's crawl task retries it as transient I/O
    assert len(gets(server, WET)) == 3
    out = tmp_path / "root" / "raw" / "warc" / "cc"
    assert sorted(p.name for p in (out / "_work").iterdir()) == ["00000.json"]
    server.httpd.fail.clear()
    in_process.calls.clear()
    crawl_warc(http_cfg(server, tmp_path, urls, http_retries=2), map_parts=in_process)
    assert in_process.calls == ["file-00001"] and storage.read_manifest(str(out))["counts"]["drops"] == DROPS


def test_s3_is_refused_with_the_https_url():
    with pytest.raises(WarcError) as err:
        expand_paths(["s3://commoncrawl/crawl-data/CC-MAIN-2024-10/wet.paths.gz"])
    assert str(err.value) == (
        "s3://commoncrawl/crawl-data/CC-MAIN-2024-10/wet.paths.gz: s3:// needs AWS credentials "
        "and a client this project does not carry; read the same file over HTTPS instead: "
        "https://data.commoncrawl.org/crawl-data/CC-MAIN-2024-10/wet.paths.gz"
    )


def test_first_and_offset_need_a_listing(archives):
    with pytest.raises(ValidationError, match="none of the paths is one"):
        WarcConfig(paths=[archives["warc"]], limit=1)


@pytest.mark.slow
def test_a_flow_entry_reads_a_listing(server, tmp_path):
    """The pipeline's (and the refresh flow's) ``warc`` entry takes the same inputs and selection."""
    from gpt2ja.flows.config import WarcCrawl

    entry = WarcCrawl(
        paths=[server.url("/" + LISTING)],
        crawl_id="flow",
        paths_base=server.url("/"),
        offset=1,
        limit=1,
        http_backoff_s=0,
    )
    refresh = entry.model_copy(update={"crawl_id": "flow.refresh-1"})  # what corpus-refresh reads
    for e in (entry, refresh):
        out = crawl_warc(e.warc_config(str(tmp_path)), map_parts=in_process)
        assert {d.url for d in read_documents(out)} == {"https://blog.example.jp/1"}


@pytest.mark.slow
def test_cli_reads_a_listing(server, tmp_path):
    def gpt2ja(*args: str) -> subprocess.CompletedProcess:
        return procs.run(GPT2JA + list(args))

    got = gpt2ja(
        "crawl",
        "warc",
        server.url("/" + LISTING),
        "--paths-base",
        server.url("/"),
        "--first",
        "1",
        "--root",
        str(tmp_path),
        "--crawl-id",
        "cli",
        "--workers",
        "1",
        "--set",
        "http_backoff_s=0",
    )
    assert got.returncode == 0, got.stderr
    assert got.stdout.splitlines()[0].startswith("4 documents, ")
    s3 = "s3://commoncrawl/crawl-data/CC-MAIN-2024-10/wet.paths.gz"
    bad = gpt2ja("crawl", "warc", s3, "--root", str(tmp_path))
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
        f"error: {s3}: s3:// needs AWS credentials and a client this project does not carry; read the same file "
        "over HTTPS instead: https://data.commoncrawl.org/crawl-data/CC-MAIN-2024-10/wet.paths.gz"
    ]
