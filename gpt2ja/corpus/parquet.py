"""The clean corpus as Parquet: one file per corpus part, one fixed, documented schema.

::

    {root}/clean/{corpus}/                     ──export_parquet──►   {out}/
        train/part-00000.jsonl.gz                                       train/part-00000.parquet
        train/part-00001.jsonl.gz                                       train/part-00001.parquet
        validation/part-00001.jsonl.gz                                  validation/part-00001.parquet
        _MANIFEST.json                                                  _work/train-00000.json …  completion records
                                                                        _MANIFEST.json            written last

Schema (:data:`SCHEMA_VERSION` 1). One row per :class:`gpt2ja.corpus.document.Document`,
in corpus order; every column is a non-null UTF-8 ``string`` (Arrow ``string``,
DuckDB ``VARCHAR``, ``datasets`` ``Value("string")``)::

    column      from                          what it holds
    id          Document.id                   32 hex digits: sha256(source NUL canonical URL), first 16 bytes
    source      Document.source               aozora, web, files…
    url         Document.url                  the canonical URL, or the path of a user's local file
    title       Document.title                "" when unknown
    author      Document.author               "" when unknown
    text        Document.text                 the cleaned text exactly as in the corpus (NFKC once, LF line ends)
    license     Document.license              a short note or URL; "" when unknown
    fetched_at  Document.fetched_at           ISO-8601 UTC text as in the Document ("2026-11-28T09:00:00Z");
                                              "" when unknown (DuckDB: ``TRY_CAST(fetched_at AS TIMESTAMPTZ)``)
    split       the part's folder             train or validation (not a Document field: the clean stage's layout)
    meta        Document.meta                 the free dict as compact JSON text; ``json.loads(meta)`` gives it back

Every Document field keeps its name; ``split`` is added from where the part
lies, and ``meta`` (a dict) becomes JSON text so that the schema stays fixed
whatever keys the stages add. ``fetched_at`` stays text (not a timestamp) so
that it round-trips exactly. Each file's Parquet key-value metadata holds
``gpt2ja`` = ``{"schema_version": 1, "corpus_part": "train/part-00000.jsonl.gz"}``.

Reading it back::

    import datasets, duckdb
    ds = datasets.load_dataset("parquet", data_files={"train": "out/train/*.parquet",
                                                      "validation": "out/validation/*.parquet"})
    duckdb.sql("SELECT split, count(*) FROM read_parquet('out/*/*.parquet') GROUP BY split")

The stage runs through :func:`gpt2ja.infra.stage.run_stage` (lock, skip when the
manifest verifies, manifest last). It resumes per part: a part's file is
written to a local scratch file, published under its final name (a rename on
disk, an upload on ``gs://``), then its completion record
``_work/{split}-NNNNN.json`` (size, sha256, fingerprint); a rerun after an
interruption reuses every part whose record and file still match. The
fingerprint is this config plus the corpus's manifest and its parts' checksums,
so a rebuilt corpus is exported again. The row counts (and characters) per
split are checked against the corpus's manifest before anything is published.

pyarrow is the optional extra ``parquet`` (``pip install -e '.[parquet]'``) and
is imported only here, inside the functions that write.

Example::

    cfg = ParquetConfig(corpus="data/clean/aozora", out="data/export/aozora-parquet")
    export_parquet(cfg)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gpt2ja.corpus.jsonl import ShardError, iter_part
from gpt2ja.corpus.split import SPLITS
from gpt2ja.infra import storage
from gpt2ja.infra.errors import Gpt2jaError
from gpt2ja.infra.stage import require, run_stage, scratch_dir, verify

STAGE = "parquet"
SCHEMA_VERSION = 1  # bump when the columns or their meaning change: every export is rebuilt
WORK_DIR = "_work"
#: (column, where its value comes from); all columns are non-null UTF-8 strings
COLUMNS = (
    ("id", "Document.id"),
    ("source", "Document.source"),
    ("url", "Document.url"),
    ("title", "Document.title"),
    ("author", "Document.author"),
    ("text", "Document.text"),
    ("license", "Document.license"),
    ("fetched_at", "Document.fetched_at"),
    ("split", "the part's folder (train or validation)"),
    ("meta", "Document.meta as JSON text"),
)
# A row group is also closed at this much text, so a part of long novels never sits in memory whole.
_ROW_GROUP_CHARS = 32 * 1024 * 1024
_PART_RE = re.compile(r"^(?P<split>[a-z]+)/part-(?P<index>\d{5})\.jsonl\.gz$")
PYARROW_HINT = "pip install -e '.[parquet]' (or pip install 'pyarrow>=15')"


class ParquetError(Gpt2jaError):
    """The Parquet export refused its input or cannot run (one line)."""


class ParquetConfig(BaseModel):
    """The Parquet export's configuration."""

    model_config = ConfigDict(extra="forbid")  # a misspelt setting is an error, never a silent default

    corpus: str = Field(description="the clean corpus directory ({root}/clean/{corpus}), with its manifest")
    out: str = Field(description="where the Parquet files go (local or gs://), a directory of its own")
    compression: Literal["zstd", "snappy", "gzip", "none"] = Field(
        "zstd", description="column compression (zstd: small files that every current reader opens)"
    )
    row_group_docs: int = Field(
        1000, ge=1, le=1_000_000, description="documents per row group (also closed at 32 MiB of text)"
    )

    def fingerprint_config(self) -> dict:
        return {"format": "parquet", "schema_version": SCHEMA_VERSION, **self.model_dump(exclude={"corpus", "out"})}


def import_pyarrow():
    """``(pyarrow, pyarrow.parquet)``, or a ParquetError that says how to install them."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise ParquetError(f"the Parquet export needs pyarrow, which is not installed: {PYARROW_HINT}") from None
    return pyarrow, pyarrow.parquet


def schema(pa):
    """The fixed Arrow schema of every file (see the module docstring)."""
    return pa.schema([pa.field(name, pa.string(), nullable=False) for name, _ in COLUMNS])


def row(doc, split: str) -> dict:
    """One Document as a row of :func:`schema`."""
    return {
        "id": doc.id,
        "source": doc.source,
        "url": doc.url,
        "title": doc.title,
        "author": doc.author,
        "text": doc.text,
        "license": doc.license,
        "fetched_at": doc.fetched_at,
        "split": split,
        "meta": json.dumps(doc.meta, ensure_ascii=False, separators=(",", ":")),
    }


def corpus_parts(manifest: dict) -> list[tuple[str, int, str]]:
    """``(split, index, path)`` of the document parts a clean corpus's manifest lists, in split and part order."""
    parts = []
    for entry in manifest.get("files", []):
        m = _PART_RE.match(entry.get("path", ""))
        if m and m.group("split") in SPLITS:
            parts.append((m.group("split"), int(m.group("index")), entry["path"]))
    return sorted(parts, key=lambda p: (SPLITS.index(p[0]), p[1]))


def parquet_name(split: str, index: int) -> str:
    return f"{split}/part-{index:05d}.parquet"


def _record_uri(out: str, split: str, index: int) -> str:
    return storage.join(out, WORK_DIR, f"{split}-{index:05d}.json")


def _valid_record(out: str, split: str, index: int, fp: str) -> dict | None:
    """The part's completion record if it is from this build and its file is there with its size and sha256."""
    try:
        rec = json.loads(storage.read_text(_record_uri(out, split, index)))
        uri = storage.join(out, rec["file"]["path"])
        if (
            rec.get("fingerprint") == fp
            and storage.size(uri) == rec["file"]["bytes"]
            and storage.file_info(uri)["sha256"] == rec["file"]["sha256"]
        ):
            return rec
    except (storage.StorageError, ValueError, KeyError, TypeError):
        pass  # missing, unreadable or stale: the part is exported again
    return None


def export_part(
    corpus: str, split: str, index: int, path: str, out: str, cfg: ParquetConfig, fp: str, tmp: str
) -> dict:
    """Write one corpus part as one Parquet file, publish it, then its completion record; returns the record."""
    pa, pq = import_pyarrow()
    sch = schema(pa).with_metadata({"gpt2ja": json.dumps({"schema_version": SCHEMA_VERSION, "corpus_part": path})})
    name = parquet_name(split, index)
    local = os.path.join(tmp, name.replace("/", "-"))
    rows, chars, docs, characters = [], 0, 0, 0
    compression = None if cfg.compression == "none" else cfg.compression
    with pq.ParquetWriter(local, sch, compression=compression) as writer:

        def flush() -> None:
            if rows:
                writer.write_table(pa.Table.from_pylist(rows, schema=sch))
                rows.clear()

        try:
            for doc in iter_part(storage.join(corpus, path)):
                rows.append(row(doc, split))
                chars += len(doc.text)
                docs += 1
                characters += len(doc.text)
                if len(rows) >= cfg.row_group_docs or chars >= _ROW_GROUP_CHARS:
                    flush()
                    chars = 0
        except ShardError as err:
            raise ParquetError(f"corpus {corpus}: {err}") from None
        except storage.StorageError as err:
            raise ParquetError(f"corpus {corpus}: {err}") from None
        flush()
    info = storage.file_info(local)
    info["path"] = name
    storage.publish(local, storage.join(out, name))
    os.unlink(local)
    record = {
        "fingerprint": fp,
        "split": split,
        "index": index,
        "corpus_part": path,
        "file": info,
        "documents": docs,
        "characters": characters,
    }
    storage.write_text(_record_uri(out, split, index), json.dumps(record, sort_keys=True))
    return record


def _check_counts(corpus: str, manifest: dict, counts: dict) -> None:
    """The rows per split must be the corpus's documents per split (when its manifest counts them)."""
    expected = (manifest.get("counts") or {}).get("splits") or {}
    for split, want in expected.items():
        got = counts["splits"].get(split, {"documents": 0, "characters": 0})
        for key in ("documents", "characters"):
            if key in want and want[key] != got[key]:
                raise ParquetError(
                    f"corpus {corpus}: its manifest counts {want[key]:,} {key} in {split}, its parts "
                    f"hold {got[key]:,}; rebuild the corpus with `gpt2ja clean`; nothing was published"
                )


def export_parquet(cfg: ParquetConfig, log=None) -> tuple[str, dict]:
    """Export the clean corpus ``cfg.corpus`` to ``cfg.out`` as Parquet; returns ``(cfg.out, what it did)``.

    ``what it did`` is ``{"skipped": True}`` when the output verified against its
    fingerprint, else ``{"skipped": False, "built": n, "reused": m}`` (parts written
    and parts kept from an interrupted earlier build).
    """
    started = time.monotonic()
    import_pyarrow()  # before anything else: one line that says how to install it
    manifest = require(cfg.corpus, "corpus", "build it with `gpt2ja clean`, or check the --corpus path", ParquetError)
    if manifest.get("stage") not in ("clean", None):
        raise ParquetError(
            f"{cfg.corpus} is a {manifest['stage']} artifact, not a clean corpus; give --corpus "
            "the output of `gpt2ja clean` (e.g. data/clean/aozora)"
        )
    parts = corpus_parts(manifest)
    if not parts:
        raise ParquetError(
            f"corpus {cfg.corpus} lists no document parts ({'/ or '.join(SPLITS)}/part-NNNNN.jsonl.gz) "
            "in its manifest; rebuild it with `gpt2ja clean`"
        )
    # the parts' checksums too (as the clean stage does with its crawls): other files are another export,
    # even under a corpus fingerprint that did not change
    listed = {f["path"]: f.get("sha256") for f in manifest.get("files", [])}
    content = hashlib.sha256(json.dumps([[p, listed[p]] for _, _, p in parts]).encode()).hexdigest()
    config = {**cfg.fingerprint_config(), "corpus_content": content}
    fp = storage.fingerprint(config, [manifest])
    did: dict = {"skipped": True}

    def build() -> dict:
        _, problems = verify(cfg.corpus)  # every part the manifest lists is there with its size
        if problems:
            raise ParquetError(f"corpus {cfg.corpus} is damaged ({problems[0]}); rebuild it with `gpt2ja clean`")
        records, built = [], 0
        tmp = scratch_dir("parquet")
        try:
            for split, index, path in parts:
                rec = _valid_record(cfg.out, split, index, fp)
                if rec is None:
                    rec = export_part(cfg.corpus, split, index, path, cfg.out, cfg, fp, tmp)
                    built += 1
                records.append(rec)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        splits = {
            s: {
                "documents": sum(r["documents"] for r in records if r["split"] == s),
                "characters": sum(r["characters"] for r in records if r["split"] == s),
                "files": sum(1 for r in records if r["split"] == s),
            }
            for s in SPLITS
        }
        counts = {
            "documents": sum(c["documents"] for c in splits.values()),
            "characters": sum(c["characters"] for c in splits.values()),
            "files": len(records),
            "splits": splits,
        }
        _check_counts(cfg.corpus, manifest, counts)
        did.update({"skipped": False, "built": built, "reused": len(records) - built})
        files = [{**r["file"], "split": r["split"], "rows": r["documents"]} for r in records]
        return storage.build_manifest(
            stage=STAGE,
            config=config,
            inputs=[manifest],
            counts=counts,
            files=files,
            timings={"total_s": round(time.monotonic() - started, 3)},
            extra={
                "schema": [{"name": name, "type": "string", "nullable": False, "from": src} for name, src in COLUMNS],
                "corpus": {"uri": storage.relative_ref(cfg.corpus, cfg.out), "fingerprint": manifest["fingerprint"]},
            },
        )

    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    run_stage(STAGE, cfg.out, fingerprint=fp, build=build, inputs=[cfg.corpus], keep=(WORK_DIR + "/",), log=say)
    return cfg.out, did


def summary(manifest: dict, did: dict) -> str:
    """One line about a Parquet export: rows per split, files, what this run did."""
    c = manifest["counts"]
    per = ", ".join(f"{s} {v['documents']:,}" for s, v in c["splits"].items())
    what = (
        "already up to date (manifest verifies): nothing was written"
        if did.get("skipped")
        else f"wrote {did['built']} file(s), reused {did['reused']}"
    )
    return f"{c['documents']:,} documents ({per}) in {c['files']} Parquet files → {manifest['uri']}; {what}"
