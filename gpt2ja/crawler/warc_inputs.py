"""Inputs of the ``warc`` source beyond local files and gs://: HTTP(S) files and path listings.

* ``https://…/x.warc.gz`` (or ``.warc.wet.gz``; any http(s) URL not named like a
  listing): one input file. Its size, for the stage's fingerprint, is the
  ``Content-Length`` of a HEAD request; nothing is downloaded until it is read.
* A path listing, named ``….paths.gz`` or ``….paths`` (Common Crawl's
  ``warc.paths.gz`` and ``wet.paths.gz``), over http(s), on gs:// or on disk: one
  path a line, relative to ``paths_base`` (default ``https://data.commoncrawl.org/``;
  a line that is already a URL is kept). ``offset`` and ``limit`` select the
  entries of each listing: a snapshot lists about 90,000 files.
* ``s3://`` is refused with the https URL of the same object: Common Crawl's
  bucket needs authenticated S3 access, and this project carries no AWS client.

Reading (:class:`HttpFile`) is one streamed GET per file. A dropped connection, a
timeout, a 5xx or a 429 is retried up to ``retries`` times in a row (the first
wait ``backoff_s``, doubled each time, at most :data:`MAX_WAIT_S`), counted since
the last byte received, so a long file on a flaky line is not doomed by a fixed
total. Each retry asks for the rest (``Range: bytes=N-``, with ``If-Range`` the
first answer's ETag or Last-Modified); a server that sends the whole file instead
is read again from its start with the first N bytes skipped, so the records
parsed above see one unbroken stream either way.

A file that cannot be read (a 404 or 403, a size that changed, retries used up)
ends the crawl with one line naming the URL. Why not a named drop
(``fetch_failed``) and go on: a crawl that finishes writes every file's
completion record and its manifest, so a file skipped during a passing outage
would be missing from the output for good (a rerun skips a finished crawl), and
what the corpus holds would depend on the network that day. Ending is
resumable instead: the files already read keep their completion records, and
the same command later reads only the rest. Retries used up is a
:class:`FetchError`, also a :class:`gpt2ja.infra.storage.StorageError`, so the flow's
crawl task retries it as it does other transient I/O; a 404 is not retried.

Example::

    retry = Retry(retries=5, backoff_s=2.0)
    listing_inputs("https://data.commoncrawl.org/crawl-data/CC-MAIN-2024-10/wet.paths.gz",
                   DEFAULT_PATHS_BASE, offset=0, limit=10, retry=retry)   # [(url, size), ...]
    with HttpFile(url, size, retry) as fh:
        fh.read(1 << 20)
"""

from __future__ import annotations

import gzip
import http.client
import io
import logging
import os
import time
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

from gpt2ja import __version__
from gpt2ja.infra import storage
from gpt2ja.infra.errors import Gpt2jaError

logger = logging.getLogger("gpt2ja.crawl")

SUFFIXES = (".warc.gz", ".warc", ".wet.gz", ".wet")
LISTING_SUFFIXES = (".paths.gz", ".paths")
DEFAULT_PATHS_BASE = "https://data.commoncrawl.org/"
MAX_WAIT_S = 120.0
HEAD_THREADS = 16  # HEAD requests in flight while a listing's sizes are learnt
CHUNK = 1 << 20
USER_AGENT = f"gpt2ja/{__version__} (Japanese GPT-2 corpus research; crawl warc)"


class WarcError(Gpt2jaError):
    """The warc source refused its inputs, or could not read one (one line)."""


class FetchError(WarcError, storage.StorageError):
    """An HTTP input still failing after every retry: transient, so a later rerun (or the flow's retry) may pass."""


class _Transient(Exception):
    """A 5xx or 429 answer: worth another try."""


class _Refused(Exception):
    """A 4xx answer (404, 403, …): no retry helps."""


@dataclass(frozen=True)
class Retry:
    """How HTTP requests are retried: up to ``retries`` times in a row, waits from ``backoff_s`` doubling."""

    retries: int = 5
    backoff_s: float = 2.0
    timeout_s: float = 60.0

    def after(self, url: str, failures: int, problem: object) -> None:
        """Wait before try ``failures + 1``; raise :class:`FetchError` when the retries are used up."""
        if failures > self.retries:
            raise FetchError(
                f"{url}: still failing after {failures} attempts (last: {problem}); rerun the same "
                "command later: the files already read are kept"
            )
        delay = min(MAX_WAIT_S, self.backoff_s * 2 ** (failures - 1))
        logger.warning("%s: %s; retry %d of %d in %.1f s", url, problem, failures, self.retries, delay)
        time.sleep(delay)


def is_http(uri: str) -> bool:
    return uri.lower().startswith(("http://", "https://"))


def is_listing(uri: str) -> bool:
    """A path listing (``warc.paths.gz``, ``wet.paths.gz``, ``….paths``) by its name, wherever it lives."""
    return urlsplit(uri).path.lower().endswith(LISTING_SUFFIXES)


def is_archive(name: str) -> bool:
    return name.lower().endswith(SUFFIXES)


def refuse_s3(uri: str) -> None:
    """``s3://`` → one line with the https URL of the same object (Common Crawl's bucket) or what to use."""
    bucket, _, key = uri[len("s3://") :].partition("/")
    where = DEFAULT_PATHS_BASE + key if bucket == "commoncrawl" else "its https:// URL, or copy it to gs://"
    raise WarcError(
        f"{uri}: s3:// needs AWS credentials and a client this project does not carry; "
        f"read the same file over HTTPS instead: {where}"
    )


def _open(url: str, retry: Retry, method: str = "GET", headers: dict | None = None) -> http.client.HTTPResponse:
    """One request; a 4xx raises :class:`_Refused`, a 5xx/429 :class:`_Transient`, a connection failure OSError."""
    request = urllib.request.Request(url, method=method, headers={"User-Agent": USER_AGENT, **(headers or {})})
    try:
        return urllib.request.urlopen(request, timeout=retry.timeout_s)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code >= 500 or err.code in (408, 425, 429):
            raise _Transient(f"HTTP {err.code} {err.reason}") from None
        raise _Refused(f"HTTP {err.code} {err.reason}") from None


TRANSIENT = (_Transient, OSError, http.client.HTTPException)  # URLError and timeouts are OSError


def head_size(url: str, retry: Retry, hint: str = "; check the URL") -> int:
    """The ``Content-Length`` of ``url`` from a HEAD request (-1 when the server does not say)."""
    failures = 0
    while True:
        try:
            with _open(url, retry, "HEAD") as resp:
                length = resp.headers.get("Content-Length", "")
                return int(length) if length.isdigit() else -1
        except _Refused as err:
            raise WarcError(f"{url}: {err}{hint}") from None
        except TRANSIENT as err:
            failures += 1
            retry.after(url, failures, err)


class HttpFile(io.RawIOBase):
    """A file read over HTTP front to back, streamed; a dropped connection is resumed where it stopped.

    ``size`` is the length the crawl was planned with (-1: unknown); an answer of
    another length means the file changed, and raises :class:`WarcError`.
    """

    def __init__(self, url: str, size: int, retry: Retry) -> None:
        super().__init__()
        self.url, self.size, self.retry = url, size, retry
        self.pos = 0  # bytes handed to the reader
        self.at = 0  # file offset of the current answer's next byte
        self.end: int | None = None  # file offset where the current answer ends (None: at its close)
        self.resp: http.client.HTTPResponse | None = None
        self.validator: str | None = None  # If-Range: the first answer's strong ETag or Last-Modified
        self.failures = 0  # in a row, since the last byte received
        self.eof = False

    def readable(self) -> bool:
        return True

    def _start(self) -> None:
        headers = {"Range": f"bytes={self.pos}-"} if self.pos else {}
        if self.pos and self.validator:
            headers["If-Range"] = self.validator
        resp = _open(self.url, self.retry, "GET", headers)
        length = resp.headers.get("Content-Length", "")
        length = int(length) if length.isdigit() else None
        if resp.status == 206:  # Content-Range: bytes START-LAST/TOTAL
            span, _, total = (resp.headers.get("Content-Range") or "").removeprefix("bytes ").partition("/")
            start = span.partition("-")[0]
            self.at = int(start) if start.isdigit() else -1
            total = int(total) if total.isdigit() else None
            if not 0 <= self.at <= self.pos:
                resp.close()
                raise _Transient(f"asked for byte {self.pos:,} on, got {resp.headers.get('Content-Range')!r}")
        else:  # the whole file (a server without ranges, or one whose file changed: the size check tells)
            self.at, total = 0, length
        if self.size >= 0 and total is not None and total != self.size:
            resp.close()
            raise WarcError(
                f"{self.url}: {total:,} bytes now, {self.size:,} when this crawl started: the file "
                "changed; rerun the same command to read the new version"
            )
        if self.validator is None:
            etag = resp.headers.get("ETag") or ""
            self.validator = etag if etag and not etag.startswith("W/") else resp.headers.get("Last-Modified")
        self.end = self.at + length if length is not None else None
        self.resp = resp

    def _stop(self) -> None:
        if self.resp is not None:
            self.resp.close()
            self.resp = None

    def _complete(self) -> bool:
        if self.end is not None:
            return self.at >= self.end
        return self.size < 0 or self.at >= self.size

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            return b"".join(iter(lambda: self.read(CHUNK), b""))
        while n:
            try:
                if self.resp is None:
                    if self.eof or 0 <= self.size <= self.pos:
                        return b""
                    self._start()
                data = self.resp.read(n)
                if not data and not self._complete():
                    raise ConnectionError(
                        f"connection closed at byte {self.at:,} of {self.end if self.end is not None else self.size:,}"
                    )
            except _Refused as err:
                self._stop()
                raise WarcError(
                    f"{self.url}: {err} while reading it; check the URL, then rerun the same command "
                    "(the files already read are kept)"
                ) from None
            except TRANSIENT as err:
                self._stop()
                self.failures += 1
                self.retry.after(self.url, self.failures, err)
                continue
            if not data:
                self._stop()
                self.eof = True
                return b""
            start, self.at = self.at, self.at + len(data)
            if self.at <= self.pos:  # bytes already handed out (a server that sent the whole file again)
                continue
            data = data[self.pos - start :] if start < self.pos else data
            self.pos += len(data)
            self.failures = 0
            return data
        return b""

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._stop()
        super().close()


def open_input(uri: str, size: int, retry: Retry):
    """An input file for reading: streamed over HTTP, else through :func:`gpt2ja.infra.storage.open`."""
    return HttpFile(uri, size, retry) if is_http(uri) else storage.open(uri, "rb")


def _entry_uri(base: str, line: str) -> str:
    if is_http(line) or storage.is_gcs(line):
        return line
    if is_http(base) or storage.is_gcs(base):
        return base.rstrip("/") + "/" + line.lstrip("/")
    return os.path.join(os.path.abspath(os.path.expanduser(base)), line.lstrip("/"))


def read_listing(uri: str, base: str, offset: int, limit: int | None, retry: Retry) -> list[str]:
    """The URIs of entries ``offset`` to ``offset + limit`` of the path listing ``uri`` (read no further)."""
    entries: list[str] = []
    raw = HttpFile(uri, -1, retry) if is_http(uri) else storage.open(uri, "rb")
    with raw as fh:
        stream = gzip.GzipFile(fileobj=fh) if urlsplit(uri).path.lower().endswith(".gz") else io.BufferedReader(fh)
        seen = 0
        try:
            for line in io.TextIOWrapper(stream, encoding="utf-8"):
                line = line.strip()
                if not line:
                    continue
                seen += 1
                if not is_archive(urlsplit(line).path):
                    raise WarcError(
                        f"{uri}: entry {seen} ({line}) is not a WARC/WET file ({', '.join(SUFFIXES)}); "
                        "give a warc.paths.gz or wet.paths.gz listing (wat and cdx files hold no pages)"
                    )
                if seen > offset:
                    entries.append(_entry_uri(base, line))
                if limit is not None and len(entries) >= limit:
                    break
        except (gzip.BadGzipFile, EOFError, zlib.error, UnicodeDecodeError) as exc:
            raise WarcError(
                f"{uri}: not a readable path listing ({type(exc).__name__}: {exc}); give a "
                "warc.paths.gz or wet.paths.gz listing (one path a line)"
            ) from None
    if not entries:
        raise WarcError(
            f"{uri}: no entries after the first {offset} (it lists {seen}); lower --offset"
            if offset
            else f"{uri}: lists no files; give a warc.paths.gz or wet.paths.gz listing"
        )
    return entries


def listing_inputs(uri: str, base: str, offset: int, limit: int | None, retry: Retry) -> list[tuple[str, int]]:
    """``[(file URI, size)]`` of the selected entries of a listing; http(s) sizes by HEAD, several at a time."""
    entries = read_listing(uri, base, offset, limit, retry)

    def size(item: tuple[int, str]) -> int:
        n, entry = item
        hint = (
            f" (entry {offset + n} of {uri}, its path joined to --paths-base {base}); check --paths-base, "
            "or leave the entry out with --offset/--first"
        )
        if is_http(entry):
            return head_size(entry, retry, hint)
        try:
            return storage.size(entry)
        except storage.StorageError:
            raise WarcError(f"{entry}: no such file{hint}") from None

    with ThreadPoolExecutor(max_workers=min(HEAD_THREADS, len(entries))) as pool:
        return list(zip(entries, pool.map(size, enumerate(entries, 1))))
