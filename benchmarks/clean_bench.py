"""Clean-stage speed and memory on ``../shared/aozora-bulk``, printed with the machine.

1. per core, in this process: Aozora notation removal + NFKC + quality filters
   (literature preset), MB/s of raw UTF-8 text (the decoded .txt, notation included);
2. dedup: MinHash signatures (MB/s of text) and the one sequential LSH pass;
3. the whole stage (``run_clean``) on the corpus read through the ``files``
   source, with 1 and 2 worker processes, and on a 10× copy of it, with the
   peak resident memory of the largest process.

Usage::

    .venv/bin/python benchmarks/clean_bench.py [--bulk ../shared/aozora-bulk] [--skip-10x]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from crawl_bench import machine  # noqa: E402


def raw_texts(bulk: Path) -> list[tuple[str, str]]:
    """(name, decoded .txt with its notation) of every zip."""
    from gpt2ja.crawler.extract.aozora import decode_sjis

    out = []
    for path in sorted(bulk.rglob("*.zip")):
        with zipfile.ZipFile(path) as z:
            member = max((i for i in z.infolist() if i.filename.lower().endswith(".txt")), key=lambda i: i.file_size)
            out.append((path.name, decode_sjis(z.read(member), path.name)[0]))
    return out


def bench_filters(texts: list[tuple[str, str]]) -> None:
    from gpt2ja.corpus.aozora import strip_notation
    from gpt2ja.corpus.document import Document
    from gpt2ja.corpus.filters import PRESETS, build_filters, first_failure
    from gpt2ja.corpus.normalize import normalize

    filters = build_filters(PRESETS["literature"])
    size = sum(len(t.encode("utf-8")) for _, t in texts)
    timings = {"notation": 0.0, "normalize": 0.0, "filters": 0.0}
    dropped = 0
    for name, text in texts:
        t0 = time.process_time()
        body = strip_notation(text)
        t1 = time.process_time()
        clean = normalize(body.text)
        t2 = time.process_time()
        dropped += first_failure(Document.new(source="aozora", url=name, text=clean), filters) is not None
        t3 = time.process_time()
        timings["notation"] += t1 - t0
        timings["normalize"] += t2 - t1
        timings["filters"] += t3 - t2
    total = sum(timings.values())
    parts = ", ".join(f"{k} {size / 1e6 / v:.1f} MB/s" for k, v in timings.items())
    print(
        f"clean per core: {len(texts)} works, {size / 1e6:.1f} MB raw UTF-8: notation + NFKC + filters "
        f"{size / 1e6 / total:.1f} MB/s of CPU time ({parts}); {dropped} dropped by the literature preset"
    )


def bench_dedup(texts: list[tuple[str, str]]) -> None:
    from gpt2ja.corpus.aozora import strip_notation
    from gpt2ja.corpus.dedup import DedupConfig, Deduplicator, DedupRecord, exact_key, signature
    from gpt2ja.corpus.normalize import normalize

    cfg = DedupConfig()
    clean = [(name, normalize(strip_notation(t).text)) for name, t in texts]
    size = sum(len(t.encode("utf-8")) for _, t in clean)
    t0 = time.process_time()
    records = [
        DedupRecord(key=name, priority=(name,), exact=exact_key(t), sig=signature(t, cfg), meta={}) for name, t in clean
    ]
    t1 = time.process_time()
    dedup = Deduplicator(cfg)
    for rec in sorted(records, key=lambda r: (r.priority, r.key)):
        dedup.add(rec)
    t2 = time.process_time()
    stats = dedup.stats()
    print(
        f"dedup: signatures {size / 1e6 / (t1 - t0):.1f} MB/s of clean text; LSH pass {t2 - t1:.2f} s for "
        f"{len(records)} documents; {stats['exact_duplicate']} exact + {stats['near_duplicate']} near duplicates"
    )


def peak_rss_mb() -> float:
    """Largest resident set of this process or any waited-for child (Linux reports KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024


def bench_stage(bulk: Path, copies: int, workers_list: list[int]) -> None:
    from gpt2ja.corpus.clean import CleanConfig, run_clean
    from gpt2ja.crawler.files import crawl_files
    from gpt2ja.infra import storage

    with tempfile.TemporaryDirectory() as root:
        raw = crawl_files(str(bulk), root=root, crawl_id="bulk", part_docs=256)
        if copies > 1:  # the same works crawled again under other names: all of it must dedup away
            manifest = storage.read_manifest(raw)
            extra = os.path.join(root, "raw", "files", f"bulk-x{copies}")
            os.makedirs(extra)
            n = 0
            for c in range(1, copies):
                for part in sorted(Path(raw).glob("part-*.jsonl.gz")):
                    shutil.copy(part, os.path.join(extra, f"part-{n:05d}.jsonl.gz"))
                    n += 1
            files = [storage.file_info(u) for u in storage.list_files(extra)]
            storage.write_manifest(extra, {**manifest, "files": files})
            inputs = [raw, extra]
        else:
            inputs = [raw]
        raw_bytes = sum(
            len(d.text.encode("utf-8"))
            for d in __import__("gpt2ja.corpus.jsonl", fromlist=["x"]).read_documents(inputs)
        )
        for workers in workers_list:
            out = os.path.join(root, f"clean-{workers}")
            t0 = time.perf_counter()
            run_clean(CleanConfig(inputs=inputs, out=out, workers=workers))
            wall = time.perf_counter() - t0
            m = storage.read_manifest(out)
            c = m["counts"]
            print(
                f"stage ×{copies}, {workers} worker(s): {c['documents_in']:,} docs, {raw_bytes / 1e6:.0f} MB in "
                f"{wall:.1f} s = {raw_bytes / 1e6 / wall:.1f} MB/s wall; out {c['documents_out']:,} docs; "
                f"phases {m['timings']}; peak RSS so far {peak_rss_mb():.0f} MB; "
                f"drops {c['drops']}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bulk", default=str(REPO.parent / "shared" / "aozora-bulk"))
    ap.add_argument("--skip-10x", action="store_true")
    args = ap.parse_args()
    bulk = Path(args.bulk)
    if not bulk.is_dir():
        raise SystemExit(f"error: {bulk} not found; pass --bulk DIR")
    print(f"machine: {machine()}")
    texts = raw_texts(bulk)
    bench_filters(texts)
    bench_dedup(texts)
    bench_stage(bulk, 1, [1, 2])
    if not args.skip_10x:
        bench_stage(bulk, 10, [2])


if __name__ == "__main__":
    main()
