"""Our own crawls' responses as WARC files, beside their documents, so extraction can be rerun without fetching.

Layout: ``{root}/raw/{source}/{crawl_id}/warc/{source}-{crawl_id}-NNNNN.warc.gz``,
listed in the crawl's ``_MANIFEST.json`` (size and sha256) like its document
parts; ``counts.warc`` says how many files and records of each type they hold.
Each file is gzip-per-record (one gzip member per record, what Common Crawl and
:mod:`gpt2ja.crawler.warc_records` expect): first a ``warcinfo`` record (software,
crawl, robots policy, User-Agent), then per stored response a ``response``
record and its ``request`` record (``WARC-Concurrent-To`` the response). A file
is closed and published when it reaches ``max_file_bytes`` (compressed) and
when the crawl session ends.

What is stored (decided by :class:`gpt2ja.crawler.extensions.WarcArchive`): every 2xx
response that Scrapy hands to a spider callback. Not stored, because no callback
parses them: 3xx (followed by Scrapy; the final response is stored, and
``WARC-Gpt2ja-Redirected-From`` lists the URLs that led to it), 4xx/5xx (errbacks:
``http_NNN`` drops), robots.txt (Scrapy's own request), and what never arrived
(``too_large`` past ``DOWNLOAD_MAXSIZE``, ``decompression_bomb``, timeouts).
A response is stored once per crawl: a URL already in the crawl's WARC files is
not written again (a crawl resumed after a kill fetches its pages again).

A response record holds what Scrapy received, not a byte copy of the wire (Scrapy
keeps neither). :func:`response_headers` makes it self-consistent:

* the status line is the protocol Scrapy reports, the status code and its
  standard reason phrase (the server's own phrase is not kept by Scrapy);
* the headers are those received, in order, with names as Scrapy normalises
  them (``Content-Type``), non-ASCII values %-encoded by warcio (RFC 8187);
* the body is Scrapy's ``response.body``: transfer coding (chunked) and the
  content codings Scrapy decoded (gzip, deflate, br, zstd) are undone, so
  ``Transfer-Encoding`` is removed, ``Content-Encoding`` is what Scrapy left
  (the codings it could not decode, usually none), and ``Content-Length`` is
  the length of the stored body.

``WARC-Target-URI`` is the final URL (after the crawl's ``url_alias``, so a
local mirror's pages are stored under the site's address, as their documents
are; the ``request`` record's ``Host`` header says where it was really sent),
``WARC-Date`` the moment the response reached the crawler (UTC, to the
second), ``WARC-IP-Address`` the server's address, ``WARC-Record-ID`` a fresh
UUID: two crawls of the same pages differ in those and in the HTTP ``Date``
header, never in URIs, statuses or payloads (``WARC-Payload-Digest``).

Crash safety: the file being filled lives in the crawl's local state directory
and each stored response is one ``write`` of whole gzip members, done before
the spider parses the response, so every document stored has its responses
on disk. A kill can leave at most one torn record at the end of that file: the
next session cuts the file back to its last complete record, continues it, and
publishes it whole (atomically: a rename, or one upload to ``gs://``). The
output folder only ever holds complete files, so the manifest's sizes and
sha256 always describe complete WARC files.

Example::

    files = WarcFiles("data/raw/web/w", "data/_state/crawl/web/w/warc", "web-w", info={"isPartOf": "web/w"})
    files.open()
    files.add(Fetched(url="https://example.jp/", status=200, headers=[("Content-Type", "text/html")],
                      body=b"<html>…</html>", fetched_at="2026-01-01T00:00:00Z"))
    files.close()          # → ['data/raw/web/w/warc/web-w-00000.warc.gz']
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import urlsplit

from gpt2ja.infra import storage

logger = logging.getLogger("gpt2ja.crawl")

FOLDER = "warc"
SUFFIX = ".warc.gz"
#: the WARC standard's suggested file size (ISO 28500, annex C): 1 GB
DEFAULT_FILE_BYTES = 1_000_000_000
FILE_RE = re.compile(r"^(?P<prefix>.+)-(?P<index>\d{5})\.warc\.gz$")
REDIRECTED_FROM = "WARC-Gpt2ja-Redirected-From"
#: response headers that describe the wire, not the stored body (replaced or dropped)
WIRE_HEADERS = ("transfer-encoding", "content-length")


def file_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:05d}{SUFFIX}"


@dataclass
class Fetched:
    """One response as the crawler received it, with its request: plain data (no Scrapy here)."""

    url: str  # WARC-Target-URI: the final URL
    status: int
    headers: list[tuple[str, str]]  # as received, in order
    body: bytes  # decoded (no transfer or content coding left but Content-Encoding's)
    fetched_at: str  # WARC-Date, e.g. 2026-01-01T00:00:00Z
    protocol: str = "HTTP/1.1"
    ip_address: str = ""
    method: str = "GET"
    request_url: str = ""  # the address asked (default: url)
    request_headers: list[tuple[str, str]] = field(default_factory=list)
    request_body: bytes = b""
    redirected_from: list[str] = field(default_factory=list)


def from_scrapy(response, request, fetched_at: str, alias: dict[str, str] | None = None) -> Fetched:
    """A Scrapy response and its request as :class:`Fetched` (URLs under ``alias`` as in the documents)."""
    from gpt2ja.crawler.pipelines import aliased

    def pairs(headers) -> list[tuple[str, str]]:
        return [(k.decode("latin-1"), v.decode("latin-1")) for k in headers for v in headers.getlist(k)]

    alias = alias or {}
    return Fetched(
        url=aliased(response.url, alias),
        status=response.status,
        headers=pairs(response.headers),
        body=response.body,
        fetched_at=fetched_at,
        protocol=getattr(response, "protocol", None) or "HTTP/1.1",
        ip_address=str(getattr(response, "ip_address", None) or ""),
        method=request.method,
        request_url=request.url,
        request_headers=pairs(request.headers),
        request_body=request.body or b"",
        redirected_from=[aliased(u, alias) for u in request.meta.get("redirect_urls", [])],
    )


def response_headers(fetched: Fetched):
    """The HTTP status line and headers of the response record, consistent with the stored body (module docstring)."""
    from warcio.statusandheaders import StatusAndHeaders

    try:
        reason = HTTPStatus(fetched.status).phrase
    except ValueError:
        reason = ""
    headers = [(k, v) for k, v in fetched.headers if k.lower() not in WIRE_HEADERS]
    headers.append(("Content-Length", str(len(fetched.body))))
    return StatusAndHeaders(f"{fetched.status} {reason}".strip(), headers, protocol=fetched.protocol)


def request_headers(fetched: Fetched):
    """The request line and headers as the crawler sent them (``Host`` added: Twisted adds it on the wire)."""
    from warcio.statusandheaders import StatusAndHeaders

    parts = urlsplit(fetched.request_url or fetched.url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = [("Host", parts.netloc)] + [(k, v) for k, v in fetched.request_headers if k.lower() != "host"]
    return StatusAndHeaders(f"{fetched.method} {target} HTTP/1.1", headers, is_http_request=True)


def record_bytes(fetched: Fetched) -> bytes:
    """The ``response`` and ``request`` records of one fetch: two gzip members, written in one go."""
    from warcio.warcwriter import WARCWriter

    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=True)
    warc = {"WARC-Date": fetched.fetched_at}
    if fetched.ip_address:
        warc["WARC-IP-Address"] = fetched.ip_address
    if fetched.redirected_from:
        warc[REDIRECTED_FROM] = " ".join(fetched.redirected_from)
    response = writer.create_warc_record(
        fetched.url,
        "response",
        payload=io.BytesIO(fetched.body),
        http_headers=response_headers(fetched),
        warc_headers_dict=warc,
    )
    writer.write_record(response)
    request = writer.create_warc_record(
        fetched.url,
        "request",
        payload=io.BytesIO(fetched.request_body),
        http_headers=request_headers(fetched),
        warc_headers_dict={
            "WARC-Date": fetched.fetched_at,
            "WARC-Concurrent-To": response.rec_headers.get_header("WARC-Record-ID"),
        },
    )
    writer.write_record(request)
    return buf.getvalue()


def warcinfo_bytes(name: str, info: dict[str, str], date: str) -> bytes:
    """The ``warcinfo`` record that opens the file ``name``."""
    from warcio.warcwriter import WARCWriter

    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=True)
    record = writer.create_warcinfo_record(name, {"format": "WARC File Format 1.0", **info})
    record.rec_headers.replace_header("WARC-Date", date)
    writer.write_record(record)
    return buf.getvalue()


def scan(fh, limit: int) -> tuple[int | None, Counter, set[str], str | None]:
    """``(end, records by type, response URIs, first problem)`` of a WARC stream, read up to its first problem.

    ``end`` is where the first damaged or cut-short record starts, None when the stream ends cleanly.
    """
    from gpt2ja.crawler.warc_records import iter_records

    end, kinds, uris, problem = 0, Counter(), set(), None
    for offset, record, trouble in iter_records(fh, limit):
        if trouble:
            problem, end = f"{trouble} at byte {offset:,}", offset
            break
        kinds[record.rec_type] += 1
        if record.rec_type == "response":
            uris.add(record.rec_headers.get_header("WARC-Target-URI") or "")
        end = None  # known once the next member starts (or the stream ends)
    return end, kinds, uris, problem


class WarcFiles:
    """The WARC files of one crawl: published ones under ``{out}/warc/``, the one being filled in ``state_dir``.

    :meth:`open` reads what earlier sessions stored (their URIs are not stored
    again) and repairs a file left by a killed session; :meth:`add` stores one
    fetch (``None``, or the reason it was not stored: ``already_stored``,
    ``too_large``); :meth:`close` publishes the file being filled.
    """

    def __init__(
        self,
        out_uri: str,
        state_dir: str,
        prefix: str,
        *,
        info: dict[str, str] | None = None,
        max_file_bytes: int = DEFAULT_FILE_BYTES,
        max_record_bytes: int = 1 << 62,
    ) -> None:
        self.out_uri, self.folder = out_uri, storage.join(out_uri, FOLDER)
        self.state_dir, self.prefix, self.info = state_dir, prefix, dict(info or {})
        self.max_file_bytes, self.max_record_bytes = max_file_bytes, max_record_bytes
        self.published: list[str] = []
        self.kinds: Counter = Counter()  # records by type, over every file of the crawl
        self.stored: set[str] = set()  # response URIs already in a file of the crawl
        self.notes: list[str] = []  # what open() found and repaired, for the log
        self._path: str | None = None  # the file being filled (local)
        self._size = 0
        self._responses = 0  # responses in the file being filled
        self._next = 0

    # ------------------------------------------------------------------ open: what earlier sessions left
    def open(self) -> "WarcFiles":
        index = -1
        for uri in storage.list_files(self.folder, recursive=False):
            m = FILE_RE.match(uri.rsplit("/", 1)[-1])
            if not m or m.group("prefix") != self.prefix:
                continue
            with storage.open(uri, "rb") as fh:
                _, kinds, uris, problem = scan(fh, 2 * self.max_record_bytes + (1 << 20))
            if problem:  # published whole, so damaged since: counted as far as it reads
                self.notes.append(f"{uri}: damaged WARC file ({problem}); its later records are not counted")
            self.published.append(uri)
            self.kinds.update(kinds)
            self.stored |= uris
            index = max(index, int(m.group("index")))
        os.makedirs(self.state_dir, exist_ok=True)
        published = {u.rsplit("/", 1)[-1] for u in self.published}
        for name in sorted(os.listdir(self.state_dir)):
            path = os.path.join(self.state_dir, name)
            m = FILE_RE.match(name)
            if not m or m.group("prefix") != self.prefix or name in published:
                os.unlink(path)  # published just before a kill (or not ours): nothing to resume
                continue
            if self._resume(path):
                index = max(index, int(m.group("index")))
        self._next = index + 1
        return self

    def _resume(self, path: str) -> bool:
        """Continue the file a killed session was filling, cut back to its last complete record; False when
        nothing of it was whole (it is removed, its name used again)."""
        with open(path, "rb") as fh:
            end, kinds, uris, problem = scan(fh, 2 * self.max_record_bytes + (1 << 20))
        size = os.path.getsize(path)
        end = size if end is None else end
        if end < size:
            with open(path, "r+b") as fh:
                fh.truncate(end)
            self.notes.append(
                f"{path}: cut back to its last complete record ({size - end:,} bytes of a record "
                f"torn by the kill removed: {problem or 'trailing bytes'})"
            )
        if kinds.get("warcinfo", 0) == 0:  # torn before its first record was whole: start it again
            os.unlink(path)
            return False
        self._path, self._size, self._responses = path, end, kinds.get("response", 0)
        self.kinds.update(kinds)
        self.stored |= uris
        return True

    # ------------------------------------------------------------------ add / close
    def add(self, fetched: Fetched) -> str | None:
        """Store one fetch; ``None`` when stored, else why not (``already_stored``, ``too_large``)."""
        if fetched.url in self.stored:
            return "already_stored"
        if len(fetched.body) > self.max_record_bytes:
            return "too_large"
        data = record_bytes(fetched)
        if self._path is None:
            self._start(fetched.fetched_at)
        self._append(data)
        self.stored.add(fetched.url)
        self.kinds.update({"response": 1, "request": 1})
        self._responses += 1
        if self._size >= self.max_file_bytes:
            self._publish()
        return None

    def _start(self, date: str) -> None:
        name = file_name(self.prefix, self._next)
        self._next += 1
        self._path, self._size, self._responses = os.path.join(self.state_dir, name), 0, 0
        os.makedirs(self.state_dir, exist_ok=True)
        self._append(warcinfo_bytes(name, self.info, date))
        self.kinds["warcinfo"] += 1

    def _append(self, data: bytes) -> None:
        # O_APPEND and whole records per call: a kill tears at most the last record, which open() cuts off
        fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        self._size += len(data)

    def _publish(self) -> None:
        path, self._path = self._path, None
        if self._responses == 0:  # a warcinfo alone: nothing was fetched into it
            os.unlink(path)
            self.kinds["warcinfo"] -= 1
            return
        uri = storage.join(self.folder, os.path.basename(path))
        storage.publish(path, uri)
        os.unlink(path)
        self.published.append(uri)

    def close(self) -> list[str]:
        """Publish the file being filled (if it holds a response); returns every published file of the crawl."""
        if self._path is not None:
            self._publish()
        return list(self.published)

    def summary(self) -> dict:
        """``counts.warc`` of the manifest: files and records by type, over every file of the crawl."""
        return {"files": len(self.published), "records": {k: v for k, v in sorted(self.kinds.items()) if v}}
