"""The clean stage: raw Document shards in, a deduplicated train/validation corpus out.

For each raw document, in this order (:data:`STEPS`)::

    aozora notation → malformed-notation check → normalise (NFKC, once) → quality filters (by source preset)

then, over the whole corpus, exact and near-duplicate removal (MinHash LSH over
character 5-grams, the oldest copy kept), then a split by id hash.

It runs in three phases so that memory stays bounded (one shard per worker
plus the dedup index) and every phase resumes per shard:

1. *per raw part, in parallel processes*: clean and filter; write the kept
   documents and their dedup records (signature, exact hash, priority) to
   ``{out}/_work/{fingerprint}/``; a part's ``.json`` record, written last,
   marks it done;
2. *once, sequentially*: feed all dedup records in (fetched_at, id) order to
   the index; which document of a cluster is kept does not depend on the
   order of the inputs;
3. *per part, in parallel*: write the survivors to ``{out}/{split}/part-NNNNN.jsonl.gz``.

Rerunning with the same inputs and config gives byte-identical outputs. The
per-part phases run in a local process pool (``workers``) unless the caller
passes ``map_parts`` (:data:`MapParts`): the Prefect flow passes one that runs
each part as a task on the configured task runner (threads, processes, a Dask
cluster); the files are the same either way.

Example::

    cfg = CleanConfig(inputs=["data/raw/aozora/2026-11-28"], out="data/clean/aozora")
    run_clean(cfg)
"""

from __future__ import annotations

import hashlib
import json
import sys
import time

from gpt2ja.corpus.clean_parts import (
    STEPS,
    CleanConfig,
    CleanError,
    filter_parts,
    find_duplicates,
    summarize,
    work_dir,
    write_parts,
)
from gpt2ja.corpus.jsonl import list_parts
from gpt2ja.corpus.split import SPLITS
from gpt2ja.infra import storage
from gpt2ja.infra.parallel import MapParts, pool_map
from gpt2ja.infra.stage import require, run_stage

__all__ = ["STEPS", "CleanConfig", "CleanError", "run_clean"]


def _inputs(cfg: CleanConfig) -> tuple[list[str], list[dict]]:
    parts, manifests = [], []
    for uri in cfg.inputs:
        manifest = require(uri, "crawl", "finish (resume) that crawl first, or drop it from --in", CleanError)
        manifests.append(manifest)
        parts.extend(list_parts(uri))
    return parts, manifests


def run_clean(cfg: CleanConfig, map_parts: MapParts | None = None) -> str:
    """Run the clean stage; returns ``cfg.out``. Skipped when the output verifies against its fingerprint.

    ``map_parts`` runs the per-part phases 1 and 3 (default: :func:`pool_map` of
    ``cfg.workers``); whatever runs them, the output is byte-identical. The
    output is built under its lock (:func:`gpt2ja.infra.stage.run_stage`). With
    ``dedup.index`` the clean reads only the inputs its index has not seen
    (:func:`gpt2ja.corpus.clean_indexed.run_clean_indexed`).
    """
    if cfg.dedup.index is not None:
        from gpt2ja.corpus.clean_indexed import run_clean_indexed

        return run_clean_indexed(cfg, map_parts)
    started = time.time()
    parts, manifests = _inputs(cfg)
    content = hashlib.sha256(
        json.dumps([[f["sha256"] for f in m.get("files", [])] for m in manifests]).encode()
    ).hexdigest()
    config = {**cfg.fingerprint_config(), "inputs_content": content}
    fp = storage.fingerprint(config, manifests)

    def build() -> dict:
        if not parts:
            raise CleanError(f"no raw parts in {', '.join(cfg.inputs)}: nothing to clean")
        for s in SPLITS:  # a partial earlier output is rebuilt (its parts would be appended to)
            storage.delete(storage.join(cfg.out, s))
        return _build(cfg, parts, manifests, config, fp, started, map_parts or pool_map(cfg.workers))

    outcome = run_stage("clean", cfg.out, fingerprint=fp, build=build, inputs=cfg.inputs, keep=("_work/",))
    if outcome.skipped:
        print(f"clean: {cfg.out} is complete for these inputs and config; skipped", file=sys.stderr)
    return cfg.out


def _build(
    cfg: CleanConfig,
    parts: list[str],
    manifests: list[dict],
    config: dict,
    fp: str,
    started: float,
    map_parts: MapParts,
) -> dict:
    """Phases 1–3 and the report into ``cfg.out``; the manifest (written by run_stage)."""
    work = work_dir(cfg, fp)
    t1 = time.time()
    results = filter_parts(cfg, work, list(enumerate(parts)), list(zip(cfg.inputs, manifests)), map_parts)
    t2 = time.time()
    dropped, clusters, dedup_stats = find_duplicates(
        work, list(range(len(parts))), cfg.dedup, sum(r["docs_kept"] for r in results), map_parts
    )
    t3 = time.time()
    split_counts = write_parts(cfg, work, list(range(len(parts))), dropped, map_parts)
    t4 = time.time()

    from gpt2ja.corpus.report import write_report

    counts = summarize(results, dropped, split_counts)
    if counts["documents_out"] == 0 and not cfg.allow_empty:
        top = ", ".join(f"{k} {v}" for k, v in sorted(counts["drops"].items(), key=lambda kv: -kv[1])[:4])
        raise CleanError(
            f"clean {cfg.out}: all {counts['documents_in']:,} documents were dropped ({top or 'none'}); "
            "check the inputs or loosen the filters, or pass --set allow_empty=true to publish it empty"
        )
    lengths = sorted(n for c in split_counts for n in c["lengths"])
    report = write_report(cfg.out, counts, results, clusters, dedup_stats, cfg, lengths)
    files = [storage.file_info(u, root=cfg.out) for s in SPLITS for u in list_parts(storage.join(cfg.out, s))]
    files += [storage.file_info(u, root=cfg.out) for u in report]
    manifest = storage.build_manifest(
        stage="clean",
        config=config,
        inputs=manifests,
        counts=counts,
        files=files,
        timings={
            "filter_s": round(t2 - t1, 3),
            "dedup_s": round(t3 - t2, 3),
            "write_s": round(t4 - t3, 3),
            "total_s": round(time.time() - started, 3),
        },
        extra={"steps": list(STEPS), "dedup": dedup_stats},
    )
    storage.delete(work)
    return manifest
