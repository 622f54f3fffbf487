"""Dedup engines compared: the memory pass and the sharded engine (``dedup.engine``), printed with the machine.

1. synthetic corpora made of ``../shared/aozora-bulk`` paragraphs (each document
   8 random paragraphs, about 1,500 characters), of which 10 % get one to three
   later copies: a third exact (whitespace changed), the rest near (about 3 % of
   the sentences changed, removed or extended, estimated Jaccard ≈ 0.9). The
   copies are the known duplicate set. Phase 1 (signatures) is done once; then
   phase 2 runs in a fresh process per engine: documents/s of phase 2, peak RSS
   of the driver and of the largest worker (and per step of the sharded engine:
   sign, bucket, verify; a worker runs many tasks of one step, its peak is the
   largest task's), precision and recall against the known set, and how many
   documents the engines decide differently;
2. ``--real``: the whole of aozora-bulk (or ``--real-works N`` of it) through the
   clean stage's phase 1 (gpt2ja.crawler.files → clean → dedup records), then both
   engines on the same records: which documents they decide differently, and why.

Usage::

    .venv/bin/python benchmarks/dedup_bench.py [--sizes 10000 100000] [--workers 2] [--real] [--with-1m]
    .venv/bin/python benchmarks/dedup_bench.py --sizes 100000 --with-1m --engines sharded --max-rows-in-memory 250000
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

PART_DOCS = 2000
DUP_FRACTION = 0.10


def paragraphs(bulk: Path) -> list[str]:
    """Cleaned paragraphs (≥ 80 characters) of every work, in file order."""
    from clean_bench import raw_texts

    from gpt2ja.corpus.aozora import strip_notation
    from gpt2ja.corpus.normalize import normalize

    out = []
    for _, text in raw_texts(bulk):
        out += [p for p in normalize(strip_notation(text).text).split("\n") if len(p.strip()) >= 80]
    return out


def edit(text: str, rng: random.Random, fraction: float = 0.03) -> str:
    sentences = text.split("。")
    for i in rng.sample(range(len(sentences)), max(1, round(len(sentences) * fraction))):
        sentences[i] = [sentences[i][::-1], "", sentences[i] + "。そのとき、遠くで鐘が鳴った"][i % 3]
    return "。".join(sentences)


def synthetic(paras: list[str], n: int, seed: int = 0) -> tuple[list[tuple[str, str, str]], set[str]]:
    """``n`` documents ``(id, fetched_at, text)`` in random order, and the ids of the later copies."""
    rng = random.Random(seed)
    docs, truth = [], set()
    i = 0
    while len(docs) < n:
        text = "\n".join(rng.sample(paras, 8))
        docs.append((f"o{i:08d}", "2026-01-01T00:00:00Z", text))
        if rng.random() < DUP_FRACTION:
            for c in range(rng.randint(1, 3)):
                if len(docs) >= n:
                    break
                copy = text.replace("\n", "\n\n") if c == 0 and rng.random() < 0.34 else edit(text, rng)
                docs.append((f"c{i:08d}-{c}", f"2026-0{2 + c}-01T00:00:00Z", copy))
                truth.add(docs[-1][0])
        i += 1
    rng.shuffle(docs)
    return docs, truth


def _sign(args: tuple) -> int:
    """Phase 1's dedup records of one part, as gpt2ja.corpus.clean_parts.process_part writes them."""
    import numpy as np

    from gpt2ja.corpus.clean_parts import record_key
    from gpt2ja.corpus.dedup import DedupConfig, exact_key, signature
    from gpt2ja.infra import storage

    work, index, docs = args
    cfg = DedupConfig()
    sigs = np.stack([signature(t, cfg) for _, _, t in docs])
    buf = io.BytesIO()
    np.savez(buf, sigs=sigs)
    storage.write_bytes(storage.join(work, f"dedup{index:05d}.npz"), buf.getvalue())
    storage.write_text(
        storage.join(work, f"dedup{index:05d}.json"),
        json.dumps(
            {
                "keys": [record_key(index, p) for p in range(len(docs))],
                "prios": [[f, i] for i, f, _ in docs],
                "exacts": [exact_key(t) for _, _, t in docs],
                "metas": [{"title": "", "url": "", "id": i, "chars": len(t)} for i, _, t in docs],
            }
        ),
    )
    return len(docs)


def peak_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited across fork and exec)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


class Measured:
    """``fn`` that also leaves its worker's peak memory in ``folder``: one file per function and
    process, ``{fn}-{pid}``. A worker runs many tasks of one step (a pool per step), so its peak
    is the largest of them."""

    def __init__(self, fn, folder: str) -> None:
        self.fn, self.folder, self.__name__ = fn, folder, fn.__name__

    def __call__(self, item):
        out = self.fn(item)
        Path(self.folder, f"{self.__name__}-{os.getpid()}").write_text(str(peak_mb()))
        return out


RUN_ENGINE = r"""
import json, sys, tempfile, time
from pathlib import Path
sys.path[:0] = [{repo!r}, {repo!r} + "/benchmarks"]
from gpt2ja.corpus.clean_parts import find_duplicates
from gpt2ja.infra.parallel import pool_map
from gpt2ja.corpus.dedup import DedupConfig
from dedup_bench import Measured, peak_mb
work, parts, n, engine, workers, max_rows = {work!r}, {parts}, {n}, {engine!r}, {workers}, {max_rows}
pool, peaks = pool_map(workers), tempfile.mkdtemp()
t0 = time.perf_counter()
cfg = DedupConfig(engine=engine, **({{"max_rows_in_memory": max_rows}} if max_rows else {{}}))
dropped, clusters, stats = find_duplicates(work, list(range(parts)), cfg, n,
                                           lambda fn, items, names: pool(Measured(fn, peaks), items, names))
wall = time.perf_counter() - t0
steps = {{}}
for p in Path(peaks).iterdir():
    step = p.name.rsplit("-", 1)[0]
    steps[step] = max(steps.get(step, 0), float(p.read_text()))
print(json.dumps({{"wall": wall, "driver_mb": peak_mb(), "worker_mb": max(steps.values(), default=0),
                  "steps_mb": steps, "dropped": {{k: list(v) for k, v in dropped.items()}}, "stats": stats}}))
"""


def run_engine(work: str, parts: int, n: int, engine: str, workers: int, max_rows: int | None = None) -> dict:
    """Phase 2 of one engine in a fresh process (its own peak RSS; each worker's VmHWM via :class:`Measured`)."""
    code = RUN_ENGINE.format(
        repo=str(REPO), work=work, parts=parts, n=n, engine=engine, workers=workers, max_rows=max_rows
    )
    env = {**os.environ, "GPT2JA_PROGRESS": "off"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    if out.returncode:
        raise SystemExit(f"{engine} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_synthetic(
    paras: list[str],
    n: int,
    workers: int,
    engines: tuple[str, ...] = ("memory", "sharded"),
    max_rows: int | None = None,
) -> None:
    from gpt2ja.infra.parallel import pool_map

    docs, truth = synthetic(paras, n)
    ids = {}
    with tempfile.TemporaryDirectory(prefix="dedup-bench-") as work:
        parts = [docs[i : i + PART_DOCS] for i in range(0, n, PART_DOCS)]
        for index, part in enumerate(parts):
            for pos, (doc_id, _, _) in enumerate(part):
                ids[f"{index:05d}:{pos:07d}"] = doc_id
        t0 = time.perf_counter()
        pool_map(workers)(_sign, [(work, i, p) for i, p in enumerate(parts)], [str(i) for i in range(len(parts))])
        sign_s = time.perf_counter() - t0
        chars = sum(len(t) for _, _, t in docs)
        print(
            f"\n{n:,} documents ({chars / 1e6:.0f} M characters, {len(truth):,} known copies), "
            f"{len(parts)} parts; signatures {sign_s:.1f} s on {workers} processes (phase 1, both engines)"
        )
        results = {}
        for engine in engines:
            r = run_engine(work, len(parts), n, engine, workers, max_rows)
            found = {ids[k] for k in r["dropped"]}
            hit = len(found & truth)
            results[engine] = found
            print(
                f"  {engine:8s} phase 2 {r['wall']:7.1f} s = {n / r['wall']:8,.0f} docs/s; peak RSS driver "
                f"{r['driver_mb']:6.0f} MB, largest worker {r['worker_mb']:5.0f} MB; dropped {len(found):,}: "
                f"precision {hit / max(1, len(found)):.4f}, recall {hit / max(1, len(truth)):.4f}; "
                f"candidates {r['stats']['lsh_candidates']:,}, rejected {r['stats']['rejected_by_verify']:,}"
            )
            if len(r["steps_mb"]) > 1:
                print(
                    "           largest worker per step: "
                    + ", ".join(f"{step} {mb:.0f} MB" for step, mb in sorted(r["steps_mb"].items()))
                )
        if len(results) < 2:
            return
        only_sharded = results["sharded"] - results["memory"]
        only_memory = results["memory"] - results["sharded"]
        print(
            f"  documents decided differently by the two engines: {len(only_sharded | only_memory)} "
            f"(dropped by sharded only: {len(only_sharded)}, of them known copies {len(only_sharded & truth)}; "
            f"by memory only: {len(only_memory)})"
        )


def bench_real(bulk: Path, works: int | None, workers: int) -> None:
    """Phase 1 of the clean stage on aozora-bulk, then both engines on the same dedup records."""
    from gpt2ja.corpus.clean_parts import CleanConfig, find_duplicates, process_part
    from gpt2ja.corpus.jsonl import list_parts
    from gpt2ja.crawler.files import crawl_files
    from gpt2ja.infra.parallel import pool_map

    with tempfile.TemporaryDirectory(prefix="dedup-real-") as root:
        source = bulk
        if works:
            source = Path(root) / "bulk"
            for path in sorted(bulk.rglob("*.zip"))[:works]:
                dest = source / path.relative_to(bulk)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, dest)
        raw = crawl_files(str(source), root=root, crawl_id="bulk", part_docs=256)
        cfg = CleanConfig(inputs=[raw], out=os.path.join(root, "clean"), workers=workers)
        work = os.path.join(root, "work")
        parts = list_parts(raw)
        t0 = time.perf_counter()
        results = pool_map(workers)(
            process_part,
            [(i, u, cfg.model_dump_json(), work) for i, u in enumerate(parts)],
            [str(i) for i in range(len(parts))],
        )
        kept = sum(r["docs_kept"] for r in results)
        print(
            f"\nreal: {source} ({sum(r['docs_in'] for r in results):,} works, {kept:,} kept by the filters) "
            f"phase 1 {time.perf_counter() - t0:.0f} s"
        )
        out = {}
        for engine in ("memory", "sharded"):
            t0 = time.perf_counter()
            dropped, clusters, stats = find_duplicates(
                work, list(range(len(parts))), cfg.dedup.model_copy(update={"engine": engine}), kept, pool_map(workers)
            )
            out[engine] = (dropped, clusters)
            print(
                f"  {engine:8s} {time.perf_counter() - t0:5.1f} s; dropped {len(dropped)}: "
                f"{stats['exact_duplicate']} exact, {stats['near_duplicate']} near, {stats['clusters']} clusters"
            )
        memory, sharded = out["memory"][0], out["sharded"][0]
        titles = {}
        for engine in out:
            for c in out[engine][1]:
                titles[c["kept"]] = c["meta"]
                titles.update({m["key"]: m["meta"] for m in c["members"]})
        jac = {m["key"]: m["jaccard"] for c in out["sharded"][1] for m in c["members"]}
        differ = sorted(set(memory) ^ set(sharded) | {k for k in set(memory) & set(sharded) if memory[k] != sharded[k]})
        print(f"  decided differently: {len(differ)}")
        for key in differ:

            def say(d):
                return f"{d[key][0]} of {titles.get(d[key][1], {}).get('title', d[key][1])}" if key in d else "kept"

            print(
                f"    {titles.get(key, {}).get('title', key)} ({titles.get(key, {}).get('url', '')}): "
                f"memory {say(memory)}; sharded {say(sharded)} (J to kept {jac.get(key, '-')})"
            )


def main() -> None:
    from crawl_bench import machine

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bulk", default=str(REPO.parent / "shared" / "aozora-bulk"))
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    ap.add_argument("--with-1m", action="store_true", help="also 1,000,000 documents (about 1.5 G characters)")
    ap.add_argument("--workers", type=int, default=max(1, os.cpu_count() or 1))
    ap.add_argument("--engines", default="memory,sharded", help="engines of the synthetic runs, comma-separated")
    ap.add_argument(
        "--max-rows-in-memory",
        type=int,
        default=None,
        help="the sharded engine's bucket rows sorted in memory (default: DedupConfig's)",
    )
    ap.add_argument("--real", action="store_true", help="also both engines on aozora-bulk through the clean stage")
    ap.add_argument("--real-works", type=int, default=None, help="only the first N works of aozora-bulk")
    args = ap.parse_args()
    bulk = Path(args.bulk)
    if not bulk.is_dir():
        raise SystemExit(f"error: {bulk} not found; pass --bulk DIR")
    print(
        f"machine: {machine()}; {args.workers} worker process(es); max_rows_in_memory "
        f"{args.max_rows_in_memory or 'default'}"
    )
    sizes = args.sizes + ([1_000_000] if args.with_1m else [])
    if sizes:
        paras = paragraphs(bulk)
        print(f"pool: {len(paras):,} paragraphs of aozora-bulk")
        for n in sizes:
            bench_synthetic(paras, n, args.workers, tuple(args.engines.split(",")), args.max_rows_in_memory)
    if args.real or args.real_works:
        bench_real(bulk, args.real_works, args.workers)


if __name__ == "__main__":
    main()
