"""An indexed refresh (``dedup.index``) against a clean from scratch, on ``../shared/aozora-bulk``.

Version 1 is every work of aozora-bulk but ``--held`` (read through the
``files`` source); the refresh crawl holds those works plus ``--repeats`` works of
version 1 again under other file names. Printed: the clean from scratch over both
crawls, the indexed clean of version 1, the indexed refresh (its phases, what it
read), the index's size per version, and whether both keep the same documents.

Usage::

    .venv/bin/python benchmarks/refresh_bench.py [--held 40] [--repeats 200] [--workers 2]
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _size(path: Path) -> str:
    return f"{sum(p.stat().st_size for p in path.rglob('*') if p.is_file()) / 1e6:.1f} MB"


def main() -> None:
    from gpt2ja.corpus.clean import CleanConfig, run_clean
    from gpt2ja.corpus.jsonl import read_documents
    from gpt2ja.crawler.files import crawl_files
    from gpt2ja.infra import storage

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bulk", default=str(REPO.parent / "shared" / "aozora-bulk" / "cards"))
    ap.add_argument("--held", type=int, default=40, help="works only in the refresh")
    ap.add_argument("--repeats", type=int, default=200, help="works of version 1 again, under other names")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    zips = sorted(Path(args.bulk).rglob("*.zip"))
    rng = random.Random(0)
    held = set(rng.sample(range(len(zips)), args.held))
    with tempfile.TemporaryDirectory(prefix="refresh-bench-") as tmp:
        base = Path(tmp)
        a, b = base / "v1", base / "v2"
        a.mkdir()
        b.mkdir()
        for i, z in enumerate(zips):
            shutil.copy(z, (b if i in held else a) / f"{i:05d}-{z.name}")
        for i in rng.sample([i for i in range(len(zips)) if i not in held], args.repeats):
            shutil.copy(zips[i], b / f"again-{i:05d}-{zips[i].name}")
        root = base / "root"
        v1 = crawl_files(str(a), str(root), "bulk")
        # fetch times have whole seconds: a refresh fetched in v1's last second would tie with it, and a clean
        # from scratch breaks the tie by id, where the index keeps the indexed copy (docs/clean.md)
        time.sleep(1.1)
        v2 = crawl_files(str(b), str(root), "bulk.refresh-r2")

        def clean(inputs: list[str], out: Path, **dedup) -> dict:
            started = time.time()
            run_clean(
                CleanConfig(inputs=inputs, out=str(out), workers=args.workers, dedup={"engine": "sharded", **dedup})
            )
            manifest = storage.read_manifest(str(out))
            t = manifest["timings"]
            print(
                f"  {time.time() - started:.1f} s (filter {t.get('filter_s', 0)} s, dedup {t.get('dedup_s', 0)} s, "
                f"write {t.get('write_s', 0)} s); {manifest['counts']['documents_out']:,} documents out"
            )
            return manifest

        print(f"raw: version 1 {_size(Path(v1))}, refresh {_size(Path(v2))}")
        print("clean from scratch over both crawls:")
        print(f"  drops {clean([v1, v2], base / 'scratch')['counts']['drops']}")
        out = root / "clean" / "bulk"
        print("indexed clean of version 1:")
        clean([v1], out, index="auto")
        print("indexed refresh:")
        m = clean([v1, v2], out, index="auto")
        info = m["dedup_index"]
        print(
            f"  read {info['documents_read']:,} documents of {len(info['inputs_read'])} crawl(s); "
            f"index {info['against']} → {info['produced']}; drops {m['counts']['drops']}"
        )
        for v in sorted((root / "dedup-index" / "bulk").glob("v*")):
            print(f"index {v.name}: {_size(v)}")

        def docs(o: Path) -> dict:
            return {d.id: d for d in read_documents([str(o / s) for s in ("train", "validation")])}

        ours, scratch = docs(out), docs(base / "scratch")
        print("the same documents as from scratch:", ours.keys() == scratch.keys())
        for name, one, other in (("only indexed", ours, scratch), ("only from scratch", scratch, ours)):
            for i in sorted(one.keys() - other.keys()):
                print(f"  {name}: {one[i].title} {one[i].url.rsplit('/', 1)[-1]} fetched {one[i].fetched_at}")


if __name__ == "__main__":  # the clean stage's spawn pool imports this module again
    main()
