"""Document shards: gzip-compressed JSON Lines, ``part-00000.jsonl.gz``.

Writers fill a local temporary file and publish each finished part atomically
through :mod:`gpt2ja.infra.storage` (a rename on disk, an upload on ``gs://``), so a
reader never sees half a part and a crash loses at most the part being filled.

Example::

    with ShardWriter("data/raw/aozora/2026-11-28") as out:
        out.write(doc)
    for doc in read_documents("data/raw/aozora/2026-11-28"):
        ...
"""

from __future__ import annotations

import gzip
import io
import os
import re
import tempfile
import zlib
from collections.abc import Iterable, Iterator

from gpt2ja.corpus.document import Document
from gpt2ja.infra import storage

PART_RE = re.compile(r"^(?P<prefix>[A-Za-z0-9_-]+)-(?P<index>\d{5})\.jsonl\.gz$")


class ShardError(ValueError):
    """A document shard that cannot be read: names the file and what to do."""


def part_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:05d}.jsonl.gz"


def list_parts(dir_uri: str, prefix: str = "part") -> list[str]:
    """The finished parts under ``dir_uri`` (sorted by index)."""
    parts = []
    for uri in storage.list_files(dir_uri, recursive=False):
        m = PART_RE.match(uri.rsplit("/", 1)[-1])
        if m and m.group("prefix") == prefix:
            parts.append((int(m.group("index")), uri))
    return [uri for _, uri in sorted(parts)]


class ShardWriter:
    """Write Documents into rotating parts under ``dir_uri``.

    A part is closed and published when it holds ``max_docs`` documents or
    ``max_bytes`` of uncompressed JSON. Numbering continues after the parts that
    are already there, so a resumed crawl appends instead of overwriting.
    """

    def __init__(
        self,
        dir_uri: str,
        *,
        prefix: str = "part",
        max_docs: int = 2000,
        max_bytes: int = 64 * 1024 * 1024,
        compresslevel: int = 6,
        start_index: int | None = None,
    ):
        self.dir_uri = dir_uri
        self.prefix = prefix
        self.max_docs = max_docs
        self.max_bytes = max_bytes
        self.compresslevel = compresslevel
        if start_index is None:  # continue after the parts already there
            existing = list_parts(dir_uri, prefix)
            start_index = 1 + max(
                (int(PART_RE.match(u.rsplit("/", 1)[-1]).group("index")) for u in existing), default=-1
            )
        self.next_index = start_index
        self.published: list[str] = []
        self.documents = 0
        self.characters = 0
        self._tmp: str | None = None
        self._gz: gzip.GzipFile | None = None
        self._raw = None
        self._part_docs = 0
        self._part_bytes = 0

    def _open_part(self) -> None:
        fd, self._tmp = tempfile.mkstemp(prefix=".part-", suffix=".jsonl.gz.tmp")
        self._raw = os.fdopen(fd, "wb")
        # mtime=0: identical input gives byte-identical parts
        self._gz = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=self.compresslevel, mtime=0)
        self._part_docs = 0
        self._part_bytes = 0

    def write(self, doc: Document) -> None:
        if self._gz is None:
            self._open_part()
        line = (doc.to_json() + "\n").encode("utf-8")
        self._gz.write(line)
        self._part_docs += 1
        self._part_bytes += len(line)
        self.documents += 1
        self.characters += len(doc.text)
        if self._part_docs >= self.max_docs or self._part_bytes >= self.max_bytes:
            self.flush()

    def flush(self) -> str | None:
        """Close and publish the part being filled (if any); returns its URI."""
        if self._gz is None:
            return None
        self._gz.close()
        self._raw.close()
        uri = storage.join(self.dir_uri, part_name(self.prefix, self.next_index))
        try:
            storage.publish(self._tmp, uri)
        finally:
            os.unlink(self._tmp)
            self._gz = self._raw = self._tmp = None
        self.next_index += 1
        self.published.append(uri)
        return uri

    def abort(self) -> None:
        """Drop the part being filled without publishing it."""
        if self._gz is not None:
            self._gz.close()
            self._raw.close()
            os.unlink(self._tmp)
            self._gz = self._raw = self._tmp = None

    def close(self) -> list[str]:
        self.flush()
        return self.published

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # Parts already published stay; the unfinished one is published only on success.
        if exc_type is None:
            self.close()
        else:
            self.abort()


def iter_part(uri: str) -> Iterator[Document]:
    """The Documents of one part; a corrupt or truncated part is a ShardError naming it."""
    try:
        with storage.open(uri, "rb") as raw, gzip.GzipFile(fileobj=raw) as gz:
            for lineno, line in enumerate(io.TextIOWrapper(gz, encoding="utf-8"), 1):
                if line.strip():
                    try:
                        yield Document.from_json(line)
                    except ValueError as exc:
                        raise ShardError(
                            f"{uri}: line {lineno} is not a Document ({exc}); "
                            "rebuild this part by rerunning the stage that wrote it"
                        ) from None
    except (EOFError, OSError, zlib.error) as exc:
        raise ShardError(
            f"{uri}: corrupt or truncated gzip ({exc}); delete it and rerun the stage that wrote it"
        ) from None


def iter_part_tolerant(uri: str) -> Iterator[tuple[Document | None, str | None, str]]:
    """Like :func:`iter_part`, but a bad record does not stop the reading.

    Yields ``(doc, None, "")`` for good records and ``(None, reason, detail)`` for
    problems: ``bad_json_line`` (the line is skipped, reading goes on) and
    ``truncated_shard`` (the gzip stream ends early or is corrupt: what was
    read before is kept, the rest of the part is lost and reported).
    """
    try:
        with storage.open(uri, "rb") as raw, gzip.GzipFile(fileobj=raw) as gz:
            for lineno, line in enumerate(io.TextIOWrapper(gz, encoding="utf-8", errors="strict"), 1):
                if not line.strip():
                    continue
                try:
                    yield Document.from_json(line), None, ""
                except (ValueError, TypeError, AttributeError) as exc:
                    yield None, "bad_json_line", f"{uri}: line {lineno}: {exc}"
    except (EOFError, OSError, zlib.error, UnicodeDecodeError) as exc:
        yield None, "truncated_shard", f"{uri}: {exc}"


def read_documents(uris: str | Iterable[str], prefix: str = "part") -> Iterator[Document]:
    """All Documents under one or more shard directories (or single part files), in part order."""
    if isinstance(uris, str):
        uris = [uris]
    for uri in uris:
        parts = [uri] if uri.endswith(".jsonl.gz") else list_parts(uri, prefix)
        for part in parts:
            yield from iter_part(part)
