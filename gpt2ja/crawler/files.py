"""The ``files`` source: a user's own directory of text becomes raw Documents.

Accepted files (found recursively, in sorted order so output is reproducible):

* ``.txt``  — UTF-8 (with or without BOM), else cp932 / Shift_JIS-2004, else EUC-JP;
  an Aozora-format text (ruby 《》, ［＃…］ notes, the 底本： footer) is cleaned of
  its notation the same way as a crawled one;
* ``.zip``  — an Aozora-style zip holding one .txt;
* ``.jsonl`` / ``.jsonl.gz`` — one JSON object per line with at least ``text``
  (other Document fields are kept when present).

Anything else is counted under ``unsupported_file``. No Scrapy here: reading a
directory needs no crawler. Output and manifest are those of a crawl:
``{root}/raw/files/{crawl_id}/part-*.jsonl.gz``.

Example::

    gpt2ja crawl files ~/my-japanese-texts --root data
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gpt2ja.corpus.aozora import looks_like_aozora, strip_notation
from gpt2ja.corpus.document import Document
from gpt2ja.corpus.jsonl import ShardWriter, list_parts
from gpt2ja.crawler.extract import ExtractError
from gpt2ja.crawler.extract import aozora as aozora_extract
from gpt2ja.infra import storage
from gpt2ja.infra.errors import Gpt2jaError
from gpt2ja.infra.stage import run_stage

logger = logging.getLogger("gpt2ja.crawl")
SUFFIXES = (".txt", ".zip", ".jsonl", ".jsonl.gz")


class AmbiguousEncoding(ExtractError):
    """More than one Japanese encoding decodes the file and the text does not say which is right."""


#: how much more Japanese-looking the best decoding must be than the next, and at least how Japanese
MARGIN, MIN_SCORE = 0.3, 0.6


def japanese_score(text: str) -> float:
    """How much a decoding looks like Japanese text, from -1 to 1 (1 for text without non-ASCII characters).

    Over the non-ASCII characters: kana and Japanese punctuation count 1, kanji
    0.5 (mojibake is mostly kanji), half-width katakana -1 (EUC-JP bytes read as
    Shift_JIS come out as half-width katakana), anything else 0.
    """
    total = score = 0.0
    for ch in text:
        o = ord(ch)
        if o < 0x80:
            continue
        total += 1
        if 0x3040 <= o <= 0x30FF or 0x3000 <= o <= 0x303F or ch in "ー・…（）！？":
            score += 1
        elif 0x4E00 <= o <= 0x9FFF:
            score += 0.5
        elif 0xFF61 <= o <= 0xFF9F:
            score -= 1
    return 1.0 if total == 0 else score / total


def decode_text(data: bytes, where: str) -> tuple[str, str]:
    """Decode a local text file: UTF-8, else the legacy Japanese encoding whose text looks Japanese.

    Valid UTF-8 is taken as UTF-8. Otherwise Shift_JIS (cp932, else
    shift_jis_2004) and EUC-JP, where they decode the bytes, are scored
    (:func:`japanese_score`); the better wins only by a clear
    margin, because short EUC-JP text often decodes as Shift_JIS too (as
    mojibake). Too little evidence raises :class:`AmbiguousEncoding` (the file is
    dropped as ``ambiguous_encoding``); no decoding at all, :class:`ExtractError`.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    found: dict[str, str] = {}  # text → the codec that gives it
    try:  # the Shift_JIS family as Aozora files use it: cp932, else shift_jis_2004 (its JIS X 0213 characters)
        text, codec = aozora_extract.decode_sjis(data, where)
        found[text] = codec
    except ExtractError:
        pass
    try:
        found.setdefault(data.decode("euc_jp"), "euc_jp")
    except UnicodeDecodeError:
        pass
    if not found:
        raise ExtractError(f"{where}: not UTF-8, Shift_JIS (cp932/2004) or EUC-JP; convert it to UTF-8 and run again")
    ranked = sorted(((japanese_score(t), t, c) for t, c in found.items()), key=lambda r: -r[0])
    best = ranked[0]
    if len(ranked) > 1 and (best[0] < MIN_SCORE or best[0] - ranked[1][0] < MARGIN):
        scores = ", ".join(f"{c} {s:.2f}" for s, _, c in ranked)
        raise AmbiguousEncoding(
            f"{where}: its encoding cannot be told from its text ({scores}); convert it to UTF-8 and run again"
        )
    return best[1], best[2]


def _docs_from_file(path: str, drops: Counter) -> Iterator[Document]:
    url = "file://" + os.path.abspath(path)
    name = os.path.basename(path)
    try:
        if name.endswith(".zip"):
            with open(path, "rb") as fh:
                got = aozora_extract.from_zip(fh.read(), path)
            yield Document.new(
                source="files",
                url=url,
                text=got.text,
                title=got.title,
                author=got.author,
                meta={"path": path, "encoding": got.encoding, "notation": got.counts, "aozora_notation_removed": True},
            )
        elif name.endswith(".txt"):
            with open(path, "rb") as fh:
                data = fh.read()
            text, encoding = decode_text(data, path)
            if looks_like_aozora(text):
                body = strip_notation(text)
                yield Document.new(
                    source="files",
                    url=url,
                    text=body.text,
                    title=body.title,
                    author=body.author,
                    meta={"path": path, "encoding": encoding, "notation": body.counts, "aozora_notation_removed": True},
                )
            else:
                yield Document.new(
                    source="files",
                    url=url,
                    text=text,
                    title=os.path.splitext(name)[0],
                    meta={"path": path, "encoding": encoding},
                )
        elif name.endswith((".jsonl", ".jsonl.gz")):
            yield from _docs_from_jsonl(path, url, drops)
        else:
            drops["unsupported_file"] += 1
            logger.warning("drop unsupported_file: %s (accepted: %s)", path, ", ".join(SUFFIXES))
    except ExtractError as exc:
        reason = (
            "bad_zip"
            if name.endswith(".zip")
            else "ambiguous_encoding"
            if isinstance(exc, AmbiguousEncoding)
            else "undecodable"
        )
        drops[reason] += 1
        logger.warning("drop %s: %s", reason, exc)


def _docs_from_jsonl(path: str, url: str, drops: Counter) -> Iterator[Document]:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    text = record.get("text") if isinstance(record, dict) else None
                    if not isinstance(text, str):
                        raise TypeError('no "text" string')
                except (ValueError, TypeError) as exc:
                    drops["bad_jsonl_line"] += 1
                    logger.warning(
                        'drop bad_jsonl_line: %s:%d (%s; each line needs a JSON object with "text")', path, lineno, exc
                    )
                    continue
                line_url = record.get("url") or f"{url}#L{lineno}"
                meta = dict(record.get("meta") or {})
                meta.update({"path": path, "line": lineno})
                yield Document.new(
                    source="files",
                    url=line_url,
                    text=text,
                    title=record.get("title", ""),
                    author=record.get("author", ""),
                    license=record.get("license", ""),
                    meta=meta,
                )
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        drops["undecodable"] += 1
        logger.warning("drop undecodable: %s (%s; expected UTF-8 JSON Lines, optionally gzip)", path, exc)


def iter_paths(directory: str) -> Iterator[str]:
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames.sort()
        for name in sorted(filenames):
            if not name.startswith("."):
                yield os.path.join(dirpath, name)


class FilesError(Gpt2jaError):
    """The files source refused its directory (one line)."""


DEFAULT_PART_DOCS = 500


class FilesConfig(BaseModel):
    """The files crawl's settings (``gpt2ja crawl files``, a ``source: files`` entry of the pipeline's crawls)."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["files"] = Field("files", description="the crawl's kind")
    directory: str = Field(description="the folder that holds your .txt/.zip/.jsonl(.gz) files (searched recursively)")
    root: str = Field("data", description="run root: a local directory or gs://bucket/prefix")
    crawl_id: str | None = Field(
        None, description="names the output {root}/raw/files/{crawl_id}; default today's UTC date"
    )
    part_docs: int = Field(DEFAULT_PART_DOCS, ge=1, description="documents per output part")


def run_files(cfg: FilesConfig) -> str:
    """:func:`crawl_files` of ``cfg``; returns the crawl's URI."""
    return crawl_files(cfg.directory, root=cfg.root, crawl_id=cfg.crawl_id, part_docs=cfg.part_docs)


def crawl_files(
    directory: str, root: str = "data", crawl_id: str | None = None, part_docs: int = DEFAULT_PART_DOCS
) -> str:
    """Turn a directory of text into ``{root}/raw/files/{crawl_id}/``; returns that URI.

    Skipped when the output already has a manifest for the same directory and
    options; a directory with no usable file is an error (nothing is published).
    """
    from gpt2ja.crawler.runner import default_crawl_id

    if not os.path.isdir(directory):
        raise FilesError(f"{directory} is not a directory; give the folder that holds your .txt/.zip/.jsonl files")
    crawl_id = crawl_id or default_crawl_id()
    out = storage.join(root, "raw", "files", crawl_id)
    config = {"source": "files", "directory": os.path.abspath(directory), "crawl_id": crawl_id}
    fp = storage.fingerprint(config)
    started = time.time()
    drops: Counter = Counter()
    files_read = 0

    def build() -> dict:
        nonlocal files_read
        if list_parts(out):
            storage.delete(out)  # a partial earlier run: files are re-read from the start, cheaply
        with ShardWriter(out, max_docs=part_docs) as writer:
            for path in iter_paths(directory):
                files_read += 1
                for doc in _docs_from_file(path, drops):
                    if not doc.text.strip():
                        drops["empty_text"] += 1
                        logger.warning("drop empty_text: %s", doc.meta.get("path"))
                        continue
                    writer.write(doc)
        if writer.documents == 0:
            raise FilesError(
                f"no usable text in {directory} ({files_read} files read, drops: {dict(drops)}); "
                f"accepted: {', '.join(SUFFIXES)}"
            )
        counts = {
            "files_read": files_read,
            "documents": writer.documents,
            "characters": writer.characters,
            "drops": dict(sorted(drops.items())),
        }
        files = [storage.file_info(uri) for uri in list_parts(out)]
        return storage.build_manifest(
            stage="crawl",
            config=config,
            counts=counts,
            files=files,
            timings={"seconds": round(time.time() - started, 3)},
        )

    # the directory read is an input too: an output inside it would be read back as text
    outcome = run_stage("crawl", out, fingerprint=fp, build=build, inputs=[directory])
    if outcome.skipped:
        print(f"crawl files/{crawl_id}: already complete in {out}; skipped", file=sys.stderr)
        return out
    documents = outcome.manifest["counts"]["documents"]
    print(f"crawl files: {documents} documents from {files_read} files → {out}", file=sys.stderr)
    return out
