"""The clean stage's config and its per-part phases, shared by the full clean (:mod:`gpt2ja.corpus.clean`) and the
indexed clean (:mod:`gpt2ja.corpus.clean_indexed`).

1. :func:`process_part` cleans and filters one raw part (:data:`STEPS`) into the work directory;
2. :func:`find_duplicates` feeds the dedup records of all parts to the index;
3. :func:`write_part` writes one part's survivors into the splits.

:func:`filter_parts` and :func:`write_parts` run phases 1 and 3 over many parts on a ``map_parts``;
:func:`summarize` adds up their counts for the manifest.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gpt2ja.corpus import aozora
from gpt2ja.corpus.dedup import DedupConfig, Deduplicator, DedupRecord, exact_key, signature
from gpt2ja.corpus.document import Document
from gpt2ja.corpus.filters import PRESETS, QualityConfig, build_filters, first_failure, preset_for_source
from gpt2ja.corpus.jsonl import ShardWriter, iter_part_tolerant, list_parts
from gpt2ja.corpus.normalize import normalize
from gpt2ja.corpus.split import SPLITS, SplitConfig, split_of
from gpt2ja.infra import storage
from gpt2ja.infra.errors import Gpt2jaError
from gpt2ja.infra.parallel import MapParts, map_with_progress, pool_map
from gpt2ja.infra.progress import progress

logger = logging.getLogger("gpt2ja.clean")
EXAMPLE_CHARS = 120
# Notation left in a text after removal means the source's markup was broken
# (an unclosed 《 or ［＃): such a text is dropped rather than kept half-cleaned.
MALFORMED_RE = re.compile(r"［＃|《|》")


class CleanError(Gpt2jaError):
    """The clean stage refused its inputs (one line)."""


class CleanConfig(BaseModel):
    """The clean stage's configuration (also the Prefect flow's parameters)."""

    model_config = ConfigDict(extra="forbid")  # a misspelt setting is an error, never a silent default

    inputs: list[str] = Field(
        description="raw crawl directories ({root}/raw/{source}/{crawl_id}), each with a manifest"
    )
    out: str = Field(description="the clean corpus directory, e.g. {root}/clean/{corpus}")
    presets: dict[str, QualityConfig] = Field(
        default_factory=lambda: {k: v.model_copy() for k, v in PRESETS.items()},
        description="quality-filter presets by name",
    )
    source_presets: dict[str, str] = Field(
        default_factory=lambda: {"aozora": "literature", "files": "literature", "web": "web"},
        description="which preset each source uses",
    )
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    workers: int = Field(
        default_factory=lambda: max(1, os.cpu_count() or 1),
        ge=1,
        le=256,
        description="processes for the per-shard phases",
    )
    part_docs: int = Field(2000, ge=1, description="documents per work part (memory bound of a worker)")
    allow_empty: bool = Field(False, description="publish a corpus that the filters emptied (else an error)")

    @model_validator(mode="before")
    @classmethod
    def _merge_presets(cls, data):
        """A config may name only the thresholds it changes: they go on top of the built-in preset."""
        if isinstance(data, dict) and isinstance(data.get("presets"), dict):
            merged = {k: v.model_copy() for k, v in PRESETS.items()}
            for name, given in data["presets"].items():
                if isinstance(given, dict) and name in PRESETS:
                    merged[name] = QualityConfig.preset(name, **given)
                else:
                    merged[name] = given
            data = {**data, "presets": merged}
        return data

    @model_validator(mode="after")
    def _check_presets(self) -> "CleanConfig":
        unknown = {src: p for src, p in self.source_presets.items() if p not in self.presets}
        if unknown:
            raise ValueError(f"source_presets names unknown presets {unknown}; known: {sorted(self.presets)}")
        return self

    def fingerprint_config(self) -> dict:
        # the sharded engine's memory and task-size knobs do not change the output; its own settings
        # count only when it is chosen, so corpora built before the engine existed keep their fingerprint
        dedup = {"bands_per_task", "max_rows_in_memory"}
        if self.dedup.engine == "memory":
            dedup |= {"engine", "bucket_window"}
        if self.dedup.index is None:
            dedup |= {"index"}
        return self.model_dump(
            exclude={"workers": True, "inputs": True, "out": True, "allow_empty": True, "dedup": dedup}
        )


# --------------------------------------------------------------------------- phase 1
@dataclass
class PartResult:
    """What one worker saw in one raw part (saved as the part's completion record)."""

    index: int
    source_uri: str
    docs_in: int = 0
    chars_in: int = 0
    docs_kept: int = 0
    chars_kept: int = 0
    drops: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)  # reason -> {title, url, snippet, detail}

    def drop(self, reason: str, doc: Document | None, detail: str = "") -> None:
        self.drops[reason] += 1
        if reason not in self.examples:
            self.examples[reason] = {
                "title": doc.title if doc else "",
                "url": doc.url if doc else "",
                "snippet": doc.text[:EXAMPLE_CHARS] if doc else "",
                "detail": detail[:300],
            }
            logger.warning("drop %s: %s%s", reason, (doc.url if doc else detail), " (first of its kind)")

    def to_json(self) -> dict:
        return {
            "index": self.index,
            "source_uri": self.source_uri,
            "docs_in": self.docs_in,
            "chars_in": self.chars_in,
            "docs_kept": self.docs_kept,
            "chars_kept": self.chars_kept,
            "drops": dict(sorted(self.drops.items())),
            "examples": self.examples,
        }


def clean_document(doc: Document, cfg: CleanConfig, filters: dict) -> tuple[Document | None, str | None, str]:
    """One document through :data:`STEPS`: (cleaned document, None, "") or (None, reason, detail)."""
    text = doc.text
    if not doc.meta.get("aozora_notation_removed") and aozora.looks_like_aozora(text):
        body = aozora.strip_notation(text)
        text = body.text
        doc.meta["notation"] = body.counts
        doc.meta["aozora_notation_removed"] = True
    unclosed = {k: v for k, v in (doc.meta.get("notation") or {}).items() if "unclosed" in k and v}
    if unclosed or MALFORMED_RE.search(text):
        return None, "malformed_notation", f"{unclosed or MALFORMED_RE.search(text).group(0)}"
    text = normalize(text)
    if not text.strip():
        return None, "empty_after_cleaning", ""
    preset = preset_for_source(doc.source, cfg.source_presets)
    cleaned = Document(
        **{**doc.__dict__, "text": text, "meta": {**doc.meta, "clean": {"preset": preset, "chars_raw": len(doc.text)}}}
    )
    reason = first_failure(cleaned, filters[preset])
    if reason:
        return None, reason, ""
    return cleaned, None, ""


STEPS = ("aozora_notation", "malformed_notation", "normalize", "quality_filters")


def record_key(index: int, position: int) -> str:
    return f"{index:05d}:{position:07d}"


def work_dir(cfg: CleanConfig, fp: str) -> str:
    """The work directory of the clean with fingerprint ``fp`` (phases 1 and 3 read and write there)."""
    return storage.join(cfg.out, "_work", fp[:16])


def process_part(args: tuple) -> dict:
    """Phase 1 for one raw part (runs in a worker process)."""
    index, part_uri, cfg_json, work = args
    cfg = CleanConfig.model_validate_json(cfg_json)
    filters = {name: build_filters(q) for name, q in cfg.presets.items()}
    res = PartResult(index=index, source_uri=part_uri)
    keys, prios, exacts, sigs, metas = [], [], [], [], []
    for stale in list_parts(work, prefix=f"kept{index:05d}"):  # an earlier attempt that did not finish
        storage.delete(stale)
    # work files are read once more and deleted: fast compression (level 1) is the right trade
    with ShardWriter(work, prefix=f"kept{index:05d}", max_docs=10**9, compresslevel=1) as writer:
        for doc, problem, detail in iter_part_tolerant(part_uri):
            if problem:
                res.drop(problem, None, detail)
                continue
            res.docs_in += 1
            res.chars_in += len(doc.text)
            cleaned, reason, detail = clean_document(doc, cfg, filters)
            if cleaned is None:
                res.drop(reason, doc, detail)
                continue
            writer.write(cleaned)
            res.docs_kept += 1
            res.chars_kept += len(cleaned.text)
            # A record key is unique even when two crawls hold the same document id (the same URL
            # fetched twice): part index and position among the part's kept documents.
            keys.append(record_key(index, len(keys)))
            prios.append([cleaned.fetched_at or "", cleaned.id])
            exacts.append(exact_key(cleaned.text) if cfg.dedup.exact else "")
            if cfg.dedup.near:
                sigs.append(signature(cleaned.text, cfg.dedup))
            metas.append({"title": cleaned.title, "url": cleaned.url, "id": cleaned.id, "chars": len(cleaned.text)})
    if res.docs_in == 0 and not res.drops:
        res.drops["empty_shard"] += 1
        logger.warning("drop empty_shard: %s holds no documents", part_uri)
    buf = io.BytesIO()
    np.savez(buf, sigs=np.stack(sigs) if sigs else np.zeros((0, cfg.dedup.num_perm), dtype=np.uint32))
    storage.write_bytes(storage.join(work, f"dedup{index:05d}.npz"), buf.getvalue())
    storage.write_text(
        storage.join(work, f"dedup{index:05d}.json"),
        json.dumps({"keys": keys, "prios": prios, "exacts": exacts, "metas": metas}, ensure_ascii=False),
    )
    # the completion record, last
    storage.write_text(storage.join(work, f"done{index:05d}.json"), json.dumps(res.to_json(), ensure_ascii=False))
    return res.to_json()


# --------------------------------------------------------------------------- phase 2
def load_records(work: str, index: int) -> list[DedupRecord]:
    meta = json.loads(storage.read_text(storage.join(work, f"dedup{index:05d}.json")))
    with np.load(io.BytesIO(storage.read_bytes(storage.join(work, f"dedup{index:05d}.npz")))) as npz:
        sigs = npz["sigs"]
    out = []
    for i, key in enumerate(meta["keys"]):
        out.append(
            DedupRecord(
                key=key,
                priority=tuple(meta["prios"][i]),
                exact=meta["exacts"][i],
                sig=sigs[i] if len(sigs) else None,
                meta=meta["metas"][i],
            )
        )
    return out


def find_duplicates(
    work: str, indices: list[int], cfg: DedupConfig, expected: int | None = None, map_parts: "MapParts | None" = None
) -> tuple[dict, list[dict], dict]:
    """Phase 2 over the records of parts ``indices``; ``expected`` (their count) sizes the progress bar.

    ``cfg.engine`` ``memory``: one sequential pass here; ``sharded``: the tasks of
    :mod:`gpt2ja.corpus.lsh_index` on ``map_parts`` (default: a pool of one process per CPU).
    """
    if cfg.engine == "sharded":
        from gpt2ja.corpus.lsh_index import find_duplicates_sharded

        if expected is None:
            expected = sum(len(load_records(work, i)) for i in indices)
        return find_duplicates_sharded(work, indices, cfg, task_runner(map_parts), expected)
    with progress(expected, "clean: dedup", "docs") as bar:
        return _find_duplicates(work, indices, cfg, bar)


def task_runner(map_parts: "MapParts | None") -> Callable[[Callable[[Any], Any], list, list[str], str], list]:
    """``run(fn, items, names, desc)``: the dedup steps' tasks on ``map_parts`` (default: a pool of
    one process per CPU), with a progress bar per step (:data:`gpt2ja.corpus.lsh_index.RunTasks`)."""
    mapper = map_parts or pool_map(max(1, os.cpu_count() or 1))

    def run(fn: Callable[[Any], Any], items: list, names: list[str], desc: str) -> list:
        with progress(len(items), desc, "tasks") as bar:
            return map_with_progress(mapper, fn, items, names, lambda _: bar.advance(1))

    return run


def _find_duplicates(work: str, indices: list[int], cfg: DedupConfig, bar) -> tuple[dict, list[dict], dict]:
    records = [rec for i in indices for rec in load_records(work, i)]
    records.sort(key=lambda r: (r.priority, r.key))  # oldest first: the copy a corpus already had is kept
    bar.update(total=len(records))
    dedup = Deduplicator(cfg)
    dropped = {}
    first_with_id: dict[str, str] = {}
    for rec in records:
        bar.advance()
        doc_id = rec.meta["id"]
        if doc_id in first_with_id:  # the same URL in two crawls: the older fetch stays
            dropped[rec.key] = ("duplicate_id", first_with_id[doc_id])
            continue
        first_with_id[doc_id] = rec.key
        reason, kept = dedup.add(rec)
        if reason:
            dropped[rec.key] = (reason, kept)
    return dropped, dedup.clusters(), dedup.stats()


# --------------------------------------------------------------------------- phase 3
def write_part(args: tuple) -> dict:
    """Phase 3 for one work part: drop duplicates, split, write final parts."""
    index, work, out, dropped_keys, split_json = args
    split_cfg = SplitConfig.model_validate_json(split_json)
    dropped = set(dropped_keys)
    # One final part per input part, numbered like it: parallel writers never collide, and
    # a split that gets no document from a part simply skips that number.
    writers = {s: ShardWriter(storage.join(out, s), max_docs=10**9, start_index=index) for s in SPLITS}
    counts = {s: {"documents": 0, "characters": 0} for s in SPLITS}
    lengths = []
    position = 0
    for uri in list_parts(work, prefix=f"kept{index:05d}"):
        for doc, problem, detail in iter_part_tolerant(uri):
            if problem:  # our own work file: broken only if the disk failed
                raise RuntimeError(f"work file damaged: {detail}; delete {work} and rerun")
            key = record_key(index, position)
            position += 1
            if key in dropped:
                continue
            s = split_of(doc.id, doc.author, doc.url, split_cfg)
            writers[s].write(doc)
            counts[s]["documents"] += 1
            counts[s]["characters"] += len(doc.text)
            lengths.append(len(doc.text))
    for w in writers.values():
        w.close()
    return {"splits": counts, "lengths": lengths}


# --------------------------------------------------------------------------- the stage


# --------------------------------------------------------------------------- phases 1 and 3 over many parts
def filter_parts(
    cfg: CleanConfig, work: str, numbered: list[tuple[int, str]], crawls: list[tuple[str, dict]], map_parts: MapParts
) -> list[dict]:
    """Phase 1 over ``(part number, raw part URI)`` pairs of the ``(uri, manifest)`` crawls; their
    completion records, in that order. Parts whose completion record is in ``work`` (an earlier,
    interrupted run) are not run again."""
    sizes = {storage.join(uri, f["path"]): f.get("bytes", 0) for uri, m in crawls for f in m.get("files", [])}
    cfg_json = cfg.model_dump_json()
    todo = [
        (i, uri, cfg_json, work) for i, uri in numbered if not storage.exists(storage.join(work, f"done{i:05d}.json"))
    ]
    # progress advances here, in the parent, as each part's worker finishes (workers never draw)
    with progress(len(numbered), "clean: filter", "parts") as bar:
        bar.advance(len(numbered) - len(todo))
        if todo:  # the parts' results are read back from their completion records, in part order
            map_with_progress(
                map_parts,
                process_part,
                todo,
                [f"filter-{job[0]:05d}" for job in todo],
                lambda r: bar.advance(
                    1,
                    docs=r["docs_in"],
                    kept=r["docs_kept"],
                    **({"bytes": sizes[r["source_uri"]]} if r["source_uri"] in sizes else {}),
                ),
            )
    return [json.loads(storage.read_text(storage.join(work, f"done{i:05d}.json"))) for i, _ in numbered]


def write_parts(cfg: CleanConfig, work: str, indices: list[int], dropped: dict, map_parts: MapParts) -> list[dict]:
    """Phase 3 for the parts ``indices``: each one's survivors to ``{out}/{split}/part-{index}``."""
    by_part: dict[int, list[str]] = {i: [] for i in indices}
    for key in dropped:
        by_part[int(key.split(":")[0])].append(key)
    jobs = [(i, work, cfg.out, sorted(by_part[i]), cfg.split.model_dump_json()) for i in indices]
    with progress(len(indices), "clean: write", "parts") as bar:
        return map_with_progress(
            map_parts,
            write_part,
            jobs,
            [f"write-{i:05d}" for i in indices],
            lambda c: bar.advance(1, docs=sum(s["documents"] for s in c["splits"].values())),
        )


def summarize(results: list[dict], dropped: dict, split_counts: list[dict]) -> dict:
    drops: Counter = Counter()
    for r in results:
        drops.update(r["drops"])
    drops.update(reason for reason, _ in dropped.values())
    splits = {
        s: {
            "documents": sum(c["splits"][s]["documents"] for c in split_counts),
            "characters": sum(c["splits"][s]["characters"] for c in split_counts),
        }
        for s in SPLITS
    }
    return {
        "parts_in": len(results),
        "documents_in": sum(r["docs_in"] for r in results),
        "characters_in": sum(r["chars_in"] for r in results),
        "documents_out": sum(v["documents"] for v in splits.values()),
        "characters_out": sum(v["characters"] for v in splits.values()),
        "splits": splits,
        "drops": dict(sorted(drops.items())),
    }
