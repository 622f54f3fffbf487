"""Reading WARC and WET files record by record, one damaged record costing only itself.

WARC writers compress each record as its own gzip member. :func:`gzip_members`
walks those members itself (zlib), so a member that is not gzip data, inflates
past a limit or is cut short by the end of the file is named and skipped;
warcio then parses the records inside each member. Used by :mod:`gpt2ja.crawler.warc`.

Example::

    with open("CC-MAIN-…-00000.warc.gz", "rb") as fh:
        for offset, record, problem in iter_records(fh, limit=64 << 20):
            ...   # problem: None, "bad_gzip", "too_large", "truncated_gzip" or "malformed_record"
"""

from __future__ import annotations

import io
import logging
import tempfile
import zlib
from collections.abc import Iterator
from typing import IO, Any

logger = logging.getLogger("gpt2ja.crawl")

GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 1 << 20
SPOOL_BYTES = 8 << 20  # a gzip member is held in memory up to this size, then on local disk


def gzip_members(fh: IO[bytes], limit: int) -> Iterator[tuple[int, IO[bytes] | None, str | None]]:
    """Walk the gzip members of ``fh``: ``(offset, its decompressed bytes, None)`` or ``(offset, None, reason)``.

    WARC files compress each record as its own gzip member, so a member is the
    unit that can fail alone: ``bad_gzip`` (not gzip data; reading resumes at the
    next gzip header), ``too_large`` (it inflates past ``limit`` bytes),
    ``truncated_gzip`` (the file ends inside it: the last one). The bytes come
    in a rewound spooled file (memory up to :data:`SPOOL_BYTES`, then disk).
    """
    buf, offset, garbage = fh.read(CHUNK), 0, False
    while buf:
        if len(buf) < len(GZIP_MAGIC):
            more = fh.read(CHUNK)
            if more:
                buf += more
                continue
        if not buf.startswith(GZIP_MAGIC):  # not a member start: skip to the next gzip header
            if not garbage:
                yield offset, None, "bad_gzip"
                garbage = True
            i = buf.find(GZIP_MAGIC, 1)
            keep = i if i >= 0 else len(buf) - 1  # a header may straddle two chunks
            offset, buf = offset + keep, buf[keep:] + fh.read(CHUNK)
            if i < 0 and len(buf) == 1:
                return
            continue
        garbage = False
        start, d, size = offset, zlib.decompressobj(16 + zlib.MAX_WBITS), 0
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
        while True:
            try:
                out = d.decompress(buf, CHUNK) if buf else d.flush()
            except zlib.error:
                spool.close()
                yield start, None, "bad_gzip"
                garbage = True
                rest = buf[1:] if offset == start else buf  # at least one byte further each time
                offset, buf = offset + len(buf) - len(rest), rest
                break
            rest = d.unused_data if d.eof else d.unconsumed_tail
            offset, buf = offset + len(buf) - len(rest), rest
            size += len(out)
            if size <= limit:
                spool.write(out)
            if d.eof:
                spool.seek(0)
                if size > limit:
                    spool.close()
                    yield start, None, "too_large"
                else:
                    yield start, spool, None
                break
            if not buf and not out:
                buf = fh.read(CHUNK)
                if not buf:
                    spool.close()
                    yield start, None, "truncated_gzip"
                    return
        if not buf:
            buf = fh.read(CHUNK)


class _Rejoined(io.RawIOBase):
    """``fh`` with the ``head`` bytes already read from it put back in front (any stream, local or gs://)."""

    def __init__(self, head: bytes, fh: IO[bytes]) -> None:
        self.head, self.fh = head, fh

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if not self.head:
            return self.fh.read(size)
        if size is None or size < 0:
            got, self.head = self.head, b""
            return got + self.fh.read()
        got, self.head = self.head[:size], self.head[size:]
        return got + (self.fh.read(size - len(got)) if size > len(got) else b"")

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def iter_records(fh: IO[bytes], limit: int) -> Iterator[tuple[int, Any, str | None]]:
    """``(offset, warcio record, None)`` for each record of a WARC/WET stream, or ``(offset, None, reason)``.

    gzip files are read member by member (see :func:`gzip_members`); a member that
    is not a WARC record is ``malformed_record`` and reading goes on with the next.
    An uncompressed file stops at its first malformed record.
    """
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    head = fh.read(len(GZIP_MAGIC))
    reader = _Rejoined(head, fh)
    if head != GZIP_MAGIC:
        offset = 0
        try:
            records = ArchiveIterator(reader)
            for record in records:
                offset = records.offset  # where this record starts (get_record_offset() would consume it)
                if record.format != "warc":
                    raise ArchiveLoadFailed(f"not a WARC record ({record.format} header)")
                yield offset, record, None
        except (ArchiveLoadFailed, ValueError, EOFError) as exc:
            logger.warning("malformed record at byte %d: %s", offset, exc)
            yield offset, None, "malformed_record"
        return
    for offset, member, problem in gzip_members(reader, limit):
        if problem:
            yield offset, None, problem
            continue
        with member:
            try:
                for record in ArchiveIterator(member):
                    if record.format != "warc":  # warcio reads a line of six words as an ARC header
                        raise ArchiveLoadFailed(f"not a WARC record ({record.format} header)")
                    yield offset, record, None
            except (ArchiveLoadFailed, ValueError, EOFError) as exc:
                logger.warning("malformed record at byte %d: %s", offset, exc)
                yield offset, None, "malformed_record"
