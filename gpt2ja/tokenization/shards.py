"""Token shards: a clean corpus + a tokenizer → fixed-length examples in GZIP TFRecord files.

    {root}/clean/{corpus}/  +  {root}/tokenizers/{name}/  ──write_shards──►  {root}/datasets/{corpus}/{dataset}/
        train-00000-of-00064.tfrecord ... train-00063-of-00064.tfrecord
        validation-00000-of-00004.tfrecord ...
        _work/train-00000.json ...      one completion record per finished shard
        _MANIFEST.json                  written last

Packing. Every document goes to one shard, chosen by a hash of its id
(:func:`shard_of`), so a refresh that adds documents leaves the others where
they were and every shard can be built on its own. Inside a shard, documents
are encoded in corpus order and joined by the tokenizer's EOS id, with an EOS
after *every* document (``doc₁ EOS doc₂ EOS …``); the stream is cut into
disjoint windows of ``seq_len + 1`` ids, one example each (GPT-2 style: the
model reads ``window[:-1]`` and predicts ``window[1:]``; consecutive windows do
not overlap, so the id at a window boundary is a target once and never an
input). The last partial window of each shard is dropped and counted in the
manifest (``dropped_tokens``, fewer than ``seq_len + 1`` per shard).

Format. One ``tf.train.Example`` per window with one bytes feature
``tokens``: the ids as raw little-endian ``uint16`` (``int32`` when the
vocabulary has more than 65,535 ids); the dtype is in the manifest, so the
reader (:mod:`gpt2ja.model.data`) never guesses.

Parallelism and resumption. Worker processes (spawn) each own a set of shards;
a worker reads each split's document stream once and encodes only the
documents of its shards (encoding is the costly part), writing each shard to a
local temp file that is published under its final name only when complete.
After publishing, a small completion record ``_work/{split}-NNNNN.json``
(counts, size, sha256, fingerprint) marks the shard done: a rerun after an
interruption rebuilds only the shards without a valid record. The manifest
(fingerprint = this config + the tokenizer's and the corpus's manifests) is
written last; an output whose manifest matches is skipped. A caller may run
the shards elsewhere instead: with ``map_parts`` (:data:`MapParts`), each shard
is one call (the Prefect flow makes it one task on its task runner: threads,
processes, a Dask cluster); a shard's bytes do not depend on where it was built.

TensorFlow is imported only inside the functions that write records.

Example::

    cfg = ShardsConfig(seq_len=1024)
    write_shards("data/clean/aozora", "data/tokenizers/sp32k", "data/shards/sp32k-1024", cfg)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from gpt2ja.corpus.jsonl import ShardError, list_parts, read_documents
from gpt2ja.corpus.split import SPLITS
from gpt2ja.infra import storage
from gpt2ja.infra.errors import Gpt2jaError
from gpt2ja.infra.parallel import MapParts, WorkerDied, map_with_progress, pool_map
from gpt2ja.infra.progress import progress
from gpt2ja.infra.stage import input_uri, require, run_stage, scratch_dir

log = logging.getLogger("gpt2ja.shards")

STAGE = "shards"
CONFIG_VERSION = 1
FEATURE = "tokens"
WORK_DIR = "_work"
# Salt of the document → shard hash; differs from the train/validation split's
# salt so that the two assignments are independent.
SHARD_SALT = "gpt2ja-shards-v1"
UINT16_MAX_VOCAB = 65_535  # the brief's bound: above it, ids are stored as int32
DTYPES = {"uint16": "<u2", "int32": "<i4"}  # manifest name → numpy little-endian dtype
# Documents are encoded in batches of about this many characters (one encode_batch call).
_BATCH_CHARS = 1 << 20
_BATCH_DOCS = 256


class ShardsError(Gpt2jaError, ValueError):
    """Shards that cannot be built: one line naming the artifact and the fix."""


class ShardsConfig(BaseModel):
    """The shard stage's configuration; every field but ``workers`` is part of the fingerprint.

    Example::

        ShardsConfig(seq_len=1024, num_shards={"train": 64, "validation": 4}, workers=8)
    """

    model_config = ConfigDict(extra="forbid")

    seq_len: int = Field(ge=8, le=8192, description="model context length; each example holds seq_len + 1 ids")
    num_shards: dict[str, int] = Field(
        default_factory=lambda: {"train": 64, "validation": 4},
        description="TFRecord files per split (≥ the number of hosts that read the split in parallel)",
    )
    workers: int = Field(
        default_factory=lambda: max(1, os.cpu_count() or 1),
        ge=1,
        le=256,
        description="encoding processes (not fingerprinted: any count gives identical files)",
    )
    compression: Literal["GZIP"] = Field("GZIP", description="TFRecord compression")
    dtype: Literal["auto", "uint16", "int32"] = Field(
        "auto", description="stored id type; auto = uint16 up to 65,535 ids, int32 above"
    )

    @field_validator("num_shards")
    @classmethod
    def _known_splits(cls, value: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(value) - set(SPLITS))
        if unknown or "train" not in value:
            raise ValueError(f"num_shards must name 'train' and optionally 'validation', got {sorted(value)}")
        bad = {k: v for k, v in value.items() if not 1 <= v <= 99_999}
        if bad:
            raise ValueError(f"num_shards must be between 1 and 99999 per split, got {bad}")
        return {s: value[s] for s in SPLITS if s in value}

    def fingerprint_config(self, dtype: str) -> dict:
        return {
            "version": CONFIG_VERSION,
            "seq_len": self.seq_len,
            "num_shards": self.num_shards,
            "compression": self.compression,
            "dtype": dtype,
            "salt": SHARD_SALT,
        }


# ----------------------------------------------------------------- format


def shard_of(doc_id: str, num_shards: int) -> int:
    """The shard of a document: a hash of its id alone (stable across corpus refreshes)."""
    digest = hashlib.sha256(f"{SHARD_SALT}\0{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % num_shards


def shard_name(split: str, index: int, num_shards: int) -> str:
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def token_dtype(vocab_size: int, requested: str = "auto", *, where: str = "shards") -> str:
    """``"uint16"`` or ``"int32"``: the stored id type for a vocabulary of ``vocab_size`` ids."""
    if requested == "auto":
        return "uint16" if vocab_size <= UINT16_MAX_VOCAB else "int32"
    if requested not in DTYPES:
        raise ShardsError(f"{where}: unknown dtype {requested!r}; use auto, uint16 or int32")
    if requested == "uint16" and vocab_size > UINT16_MAX_VOCAB:
        raise ShardsError(
            f"{where}: the tokenizer has {vocab_size:,} ids, more than uint16 holds "
            f"({UINT16_MAX_VOCAB:,}); set dtype to int32 or auto"
        )
    if requested == "int32" and vocab_size > 2**31 - 1:
        raise ShardsError(
            f"{where}: the tokenizer has {vocab_size:,} ids, more than int32 holds; use a smaller vocabulary"
        )
    return requested


def pack_tokens(ids, dtype: str) -> bytes:
    """The raw little-endian bytes of one example (``dtype`` is ``"uint16"`` or ``"int32"``)."""
    return np.asarray(ids, DTYPES[dtype]).tobytes()


def unpack_tokens(data: bytes, dtype: str) -> np.ndarray:
    """The ids of one example's raw bytes, as int32 (the inverse of :func:`pack_tokens`)."""
    return np.frombuffer(data, DTYPES[dtype]).astype(np.int32)


def import_tensorflow():
    """``import tensorflow`` with its C++ INFO/WARNING chatter off unless the user set the level."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


def serialize_example(tf, data: bytes) -> bytes:
    """One ``tf.train.Example`` with the single bytes feature ``tokens``."""
    feature = tf.train.Feature(bytes_list=tf.train.BytesList(value=[data]))
    return tf.train.Example(features=tf.train.Features(feature={FEATURE: feature})).SerializeToString()


# ----------------------------------------------------------------- one shard


class _ShardWriter:
    """Packs one shard's token stream into examples, written to a local TFRecord temp file."""

    def __init__(self, tf, path: str, *, seq_len: int, eos_id: int, dtype: str, compression: str) -> None:
        self.tf = tf
        self.path = path
        self.window = seq_len + 1
        self.eos_id = eos_id
        self.dtype = dtype
        self.writer = tf.io.TFRecordWriter(path, options=compression)
        self.buffer: list[int] = []
        self.documents = self.tokens = self.examples = 0

    def add(self, ids: list[int]) -> None:
        self.buffer.extend(ids)
        self.buffer.append(self.eos_id)  # EOS after every document
        self.documents += 1
        self.tokens += len(ids) + 1
        full = len(self.buffer) // self.window
        if full:
            rows = np.asarray(self.buffer[: full * self.window], DTYPES[self.dtype]).reshape(full, self.window)
            for row in rows:  # (window,) ids
                self.writer.write(serialize_example(self.tf, row.tobytes()))
            del self.buffer[: full * self.window]
            self.examples += full

    def close(self) -> int:
        """Close the file; returns the dropped tail (ids that did not fill a last window)."""
        self.writer.close()
        dropped = len(self.buffer)
        self.buffer = []
        return dropped


def _record_uri(out_uri: str, split: str, index: int) -> str:
    return storage.join(out_uri, WORK_DIR, f"{split}-{index:05d}.json")


def _build(job: dict) -> list[dict]:
    """Build the shards ``job["tasks"]`` (runs in a worker process, or inline for one worker).

    Reads each split's documents once, encodes only those of the owned shards,
    then publishes each shard file and its completion record (record last).
    """
    tf = import_tensorflow()
    tok, cfg = job["tokenizer"], job["config"]
    out_uri, corpus_uri = job["out"], job["corpus"]
    records = []
    tmp = scratch_dir("shards")
    try:
        for split in SPLITS:
            owned = sorted(i for s, i in job["tasks"] if s == split)
            if not owned:
                continue
            n = cfg["num_shards"][split]
            started = time.monotonic()
            writers = {
                i: _ShardWriter(
                    tf,
                    os.path.join(tmp, shard_name(split, i, n)),
                    seq_len=cfg["seq_len"],
                    eos_id=tok.eos_id,
                    dtype=cfg["dtype"],
                    compression=cfg["compression"],
                )
                for i in owned
            }
            batch: list[tuple[int, str]] = []
            chars = 0

            def flush() -> None:
                for (i, _), ids in zip(batch, tok.encode_batch([text for _, text in batch])):
                    writers[i].add(ids)
                batch.clear()

            try:
                for doc in read_documents(storage.join(corpus_uri, split)):
                    i = shard_of(doc.id, n)
                    if i in writers:
                        batch.append((i, doc.text))
                        chars += len(doc.text)
                        if len(batch) >= _BATCH_DOCS or chars >= _BATCH_CHARS:
                            flush()
                            chars = 0
            except ShardError as err:
                raise ShardsError(f"corpus {corpus_uri}: {err}") from None
            flush()
            seconds = time.monotonic() - started
            for i, writer in writers.items():
                dropped = writer.close()
                uri = storage.join(out_uri, shard_name(split, i, n))
                info = storage.file_info(writer.path, root=tmp)
                storage.publish(writer.path, uri)
                os.unlink(writer.path)
                record = {
                    "fingerprint": job["fingerprint"],
                    "split": split,
                    "index": i,
                    "num_shards": n,
                    "file": info,
                    "documents": writer.documents,
                    "tokens": writer.tokens,
                    "examples": writer.examples,
                    "dropped_tokens": dropped,
                    # the split's stream is shared by the worker's shards: its time is split evenly
                    "seconds": round(seconds / len(writers), 3),
                }
                storage.write_text(_record_uri(out_uri, split, i), json.dumps(record, sort_keys=True))
                log.info("%s: %d examples from %d documents", uri, writer.examples, writer.documents)
                records.append(record)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return records


# ----------------------------------------------------------------- the stage


def write_shards(
    corpus_uri: str, tokenizer_uri: str, out_uri: str, cfg: ShardsConfig, map_parts: MapParts | None = None
) -> str:
    """Tokenize ``corpus_uri`` with ``tokenizer_uri`` into TFRecord shards at ``out_uri``; returns ``out_uri``.

    Skipped when ``out_uri`` holds a manifest with the same fingerprint; after an
    interruption only the shards without a completion record are rebuilt. Bad
    input raises :class:`ShardsError` (one line naming the artifact) before
    anything is published. The shards are built by ``cfg.workers`` local
    processes, or, with ``map_parts``, one ``map_parts`` call per missing shard.
    """
    return _write(corpus_uri, tokenizer_uri, out_uri, cfg, map_parts)[0]


def _write(
    corpus_uri: str, tokenizer_uri: str, out_uri: str, cfg: ShardsConfig, map_parts: MapParts | None = None
) -> tuple[str, dict]:
    """``write_shards``; also returns what it did (for the CLI summary)."""
    started = time.monotonic()
    corpus_manifest = require(corpus_uri, "corpus", "build it with `gpt2ja clean`, or check the URI", ShardsError)
    tok_manifest = require(
        tokenizer_uri, "tokenizer", "train it with `gpt2ja tokenizer train`, or check the URI", ShardsError
    )
    from gpt2ja.tokenization.tokenizer import Tokenizer, TokenizerError

    try:
        tok = Tokenizer.load(tokenizer_uri)
    except (TokenizerError, storage.StorageError) as err:
        raise ShardsError(str(err)) from None
    dtype = token_dtype(tok.vocab_size, cfg.dtype, where=f"shards {out_uri} (tokenizer {tokenizer_uri})")
    config = cfg.fingerprint_config(dtype)
    fp = storage.fingerprint(config, [tok_manifest, corpus_manifest])
    did: dict = {"skipped": True, "built": 0}

    def build() -> dict:
        for split in cfg.num_shards:
            _require_documents(corpus_uri, split)
        expected = {(s, i) for s, n in cfg.num_shards.items() for i in range(n)}
        _remove_strays(out_uri, cfg)
        done = {key: rec for key in sorted(expected) if (rec := _valid_record(out_uri, *key, fp)) is not None}
        todo = sorted(expected - set(done))
        t0 = time.monotonic()
        with progress(len(expected), "shards: encode", "shards") as bar:
            bar.advance(len(done))  # finished by an earlier, interrupted run

            def finished(records: list[dict]) -> None:  # in this (the parent) process
                for rec in records:
                    done[(rec["split"], rec["index"])] = rec
                bar.advance(
                    len(records), tokens=sum(r["tokens"] for r in records), examples=sum(r["examples"] for r in records)
                )

            try:
                _run_jobs(
                    todo,
                    {"tokenizer": tok, "config": config, "out": out_uri, "corpus": corpus_uri, "fingerprint": fp},
                    cfg.workers,
                    map_parts,
                    finished,
                )
            except WorkerDied as err:
                raise ShardsError(f"shards {out_uri}: {err}") from None
        build_s = time.monotonic() - t0

        records = [done[key] for key in sorted(expected, key=lambda k: (SPLITS.index(k[0]), k[1]))]
        counts = _counts(records, cfg)
        for split, c in counts["splits"].items():
            if c["examples"] == 0:
                raise ShardsError(
                    f"shards {out_uri}: the {split} split of corpus {corpus_uri} has only {c['tokens']:,} tokens, "
                    f"not one example of {cfg.seq_len + 1} ids in any of its {cfg.num_shards[split]} shards; "
                    "use fewer shards or a shorter seq_len"
                )
        files = [
            {**rec["file"], "split": rec["split"], "examples": rec["examples"], "tokens": rec["tokens"]}
            for rec in records
        ]
        did.update(
            {
                "skipped": False,
                "built": len(todo),
                "reused": len(expected) - len(todo),
                "seconds": time.monotonic() - started,
                "build_s": build_s,
            }
        )
        return storage.build_manifest(
            stage=STAGE,
            config=config,
            inputs=[tok_manifest, corpus_manifest],
            counts=counts,
            files=files,
            timings={
                "build_s": round(build_s, 3),
                "total_s": round(time.monotonic() - started, 3),
                "encode_and_write_s": round(sum(r["seconds"] for r in records), 3),
            },
            extra={
                "seq_len": cfg.seq_len,
                "example_len": cfg.seq_len + 1,
                "dtype": dtype,
                "feature": FEATURE,
                "compression": cfg.compression,
                "vocab_size": tok.vocab_size,
                "eos_id": tok.eos_id,
                "num_shards": cfg.num_shards,
                # relative to this folder (refs: relative), so the root can move or go to a bucket
                "tokenizer": {
                    "uri": storage.relative_ref(tokenizer_uri, out_uri),
                    "kind": tok.kind,
                    "fingerprint": tok_manifest["fingerprint"],
                },
                "corpus": {
                    "uri": storage.relative_ref(corpus_uri, out_uri),
                    "fingerprint": corpus_manifest["fingerprint"],
                },
                "packing": "documents in corpus order per shard, each followed by eos_id; disjoint windows of "
                "seq_len + 1 ids; each shard's last partial window dropped",
            },
        )

    outcome = run_stage(
        "shards",
        out_uri,
        fingerprint=fp,
        build=build,
        inputs=[corpus_uri, tokenizer_uri],
        keep=(WORK_DIR + "/",),
        log=log.warning,
    )
    if outcome.skipped:
        log.info("%s is up to date (fingerprint %s); skipping", out_uri, fp[:12])
    return out_uri, did


def _run_jobs(
    todo: list[tuple[str, int]],
    job: dict,
    workers: int,
    map_parts: MapParts | None,
    finished: Callable[[list[dict]], None],
) -> None:
    """Build the shards ``todo``; ``finished`` gets each finished job's completion records, in this process.

    A local job is one split's share of the shards of one worker (each reads that
    split's stream once): the validation shards finish early, and each worker's
    train shards as soon as that worker is done. With ``map_parts``, one call per
    shard; its results arrive together.
    """
    if not todo:
        return
    if map_parts is not None:  # one call per shard: each reads its split and encodes its own documents
        map_with_progress(
            map_parts,
            _build,
            [{**job, "tasks": [key]} for key in todo],
            [f"{split}-{index:05d}" for split, index in todo],
            finished,
        )
        return
    jobs = []
    for split in SPLITS:
        mine = [key for key in todo if key[0] == split]
        n = min(workers, len(mine))
        jobs += [{**job, "tasks": mine[w::n]} for w in range(n)]
    if min(workers, len(todo)) == 1:  # in this process: no pool to start
        for one in jobs:
            finished(_build(one))
        return
    map_with_progress(pool_map(workers), _build, jobs, [f"job-{i:03d}" for i in range(len(jobs))], finished)


def _require_documents(corpus_uri: str, split: str) -> None:
    """An empty split is an error; reading stops at the first document with text."""
    split_uri = storage.join(corpus_uri, split)
    try:
        has_text = bool(list_parts(split_uri)) and any(doc.text for doc in read_documents(split_uri))
    except ShardError as err:
        raise ShardsError(f"corpus {corpus_uri}: {err}") from None
    if not has_text:
        raise ShardsError(
            f"corpus {corpus_uri} has no documents in its {split} split: nothing to shard; "
            f"rebuild it with `gpt2ja clean` (a validation split needs validation_fraction > 0) "
            f"or drop {split!r} from num_shards"
        )


def _valid_record(out_uri: str, split: str, index: int, fp: str) -> dict | None:
    """The shard's completion record if it is from this build and its file is there with its size and sha256."""
    try:
        rec = json.loads(storage.read_text(_record_uri(out_uri, split, index)))
        uri = storage.join(out_uri, rec["file"]["path"])
        # a reused shard is read whole: a file damaged since it was written is rebuilt, never re-recorded
        if (
            rec.get("fingerprint") == fp
            and storage.size(uri) == rec["file"]["bytes"]
            and storage.file_info(uri)["sha256"] == rec["file"]["sha256"]
        ):
            return rec
    except (storage.StorageError, ValueError, KeyError, TypeError):
        pass  # missing, unreadable or stale: the shard is rebuilt
    return None


def _remove_strays(out_uri: str, cfg: ShardsConfig) -> None:
    """Delete shard files of an earlier layout (other shard counts) so the directory holds one build."""
    wanted = {shard_name(s, i, n) for s, n in cfg.num_shards.items() for i in range(n)}
    for uri in storage.list_files(out_uri, recursive=False):
        name = uri.rsplit("/", 1)[-1]
        if name.endswith(".tfrecord") and name not in wanted:
            storage.delete(uri)


def _counts(records: list[dict], cfg: ShardsConfig) -> dict:
    keys = ("documents", "tokens", "examples", "dropped_tokens")
    splits = {s: {k: sum(r[k] for r in records if r["split"] == s) for k in keys} for s in cfg.num_shards}
    for c in splits.values():
        c["example_tokens"] = c["examples"] * (cfg.seq_len + 1)
    totals = {k: sum(c[k] for c in splits.values()) for k in (*keys, "example_tokens")}
    return {**totals, "shards": len(records), "splits": splits}


# ----------------------------------------------------------------- CLI


class ShardsJob(ShardsConfig):
    """``gpt2ja shards``: a ``ShardsConfig`` and what it reads and writes (the pipeline derives those from names)."""

    corpus: str = Field(description="a clean corpus directory")
    tokenizer: str = Field(description="a tokenizer directory")
    out: str = Field(description="where the TFRecords go, e.g. data/datasets/ja/sp16k-1024")

    def shards_config(self) -> ShardsConfig:
        return ShardsConfig.model_validate(self.model_dump(exclude={"corpus", "tokenizer", "out"}))


def run_shards(job: ShardsJob) -> tuple[str, dict]:
    """Build (or find up to date) the shards of ``job``; returns their URI and what was done (for :func:`summary`)."""
    return _write(job.corpus, job.tokenizer, job.out, job.shards_config())


def summary(manifest: dict, did: dict | None = None) -> str:
    """One paragraph about a shards artifact: examples and tokens per split, format, what this run did."""
    counts, did = manifest["counts"], did or {}
    parts = [
        f"{s} {c['examples']:,} examples in {manifest['num_shards'][s]} files "
        f"({c['documents']:,} documents, {c['tokens']:,} tokens, {c['dropped_tokens']:,} dropped)"
        for s, c in counts["splits"].items()
    ]
    tok = manifest["tokenizer"]
    text = (
        f"Shards at {manifest['uri']}: "
        + "; ".join(parts)
        + f". Examples of {manifest['example_len']} ids (seq_len {manifest['seq_len']}) stored as "
        f"{manifest['dtype']} in {manifest['compression']} TFRecords; vocab size {manifest['vocab_size']:,}, "
        f"eos_id {manifest['eos_id']} ({tok['kind']} tokenizer {input_uri(manifest, tok['uri'])})."
    )
    if did.get("skipped"):
        text += " Already up to date (manifest fingerprint matches): nothing was rebuilt."
    elif did:
        rate = counts["tokens"] / did["build_s"] if did.get("build_s") and did["built"] else None
        text += f" Built {did['built']} shard(s), reused {did['reused']} finished one(s) in {did['seconds']:.1f} s" + (
            f" ({rate:,.0f} tokens/s)." if rate and not did["reused"] else "."
        )
    return text
