"""Crawl and extraction speed, printed with the machine they were measured on.

* crawl: the ``aozora`` spider over the bundled mirror served on 127.0.0.1,
  politeness off (no delays, 16 requests in flight), pages/s over ``--repeat`` runs;
* extraction: Aozora zips → plain text (decode + notation removal), MB/s of
  compressed input and of Shift_JIS text, for the mirror's 48 zips and, when
  present, the 2,058 works of ``../shared/aozora-bulk``; XHTML editions too.

Usage::

    .venv/bin/python benchmarks/crawl_bench.py [--repeat 3] [--bulk ../shared/aozora-bulk]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MIRROR = REPO / "examples" / "aozora-mirror"
AUTHORS = ("879", "81", "121", "74")


def cpu_name() -> str:
    """The processor's model name (/proc/cpuinfo), else what platform knows."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return cpu


def machine() -> str:
    import scrapy

    return (
        f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}, Scrapy {scrapy.__version__}, "
        f"{platform.system()} {platform.release()}"
    )


def bench_crawl(repeat: int) -> None:
    from gpt2ja.crawler.mirror import MirrorServer
    from gpt2ja.crawler.runner import CrawlConfig, crawl_in_subprocess

    rates = []
    for i in range(repeat):
        with tempfile.TemporaryDirectory() as root, MirrorServer(str(MIRROR)) as server:
            cfg = CrawlConfig(
                source="aozora",
                root=root,
                crawl_id=f"bench{i}",
                polite=False,
                progress_interval=0,
                start_urls=[server.url(f"/index_pages/person{a}.html") for a in AUTHORS],
            )
            t0 = time.perf_counter()
            crawl_in_subprocess(cfg)
            wall = time.perf_counter() - t0
            from gpt2ja.infra import storage

            seconds = storage.read_manifest(cfg.out_uri)["timings"]["seconds"]
            pages = len(server.requests)
            rates.append((pages / seconds, pages / wall, pages))
    crawl_rate = statistics.median(r[0] for r in rates)
    wall_rate = statistics.median(r[1] for r in rates)
    print(
        f"crawl  aozora mirror, politeness off: {rates[0][2]} pages per crawl, "
        f"{crawl_rate:.0f} pages/s inside the crawl, {wall_rate:.0f} pages/s including process start "
        f"(median of {repeat})"
    )


def bench_extract(label: str, zips: list[Path], xhtml: list[Path]) -> None:
    from gpt2ja.crawler.extract.aozora import from_xhtml, from_zip

    blobs = [(p.name, p.read_bytes()) for p in zips]
    packed = sum(len(b) for _, b in blobs)
    text_bytes = 0
    for _, b in blobs:
        with zipfile.ZipFile(__import__("io").BytesIO(b)) as z:
            text_bytes += sum(i.file_size for i in z.infolist() if i.filename.lower().endswith(".txt"))
    t0 = time.perf_counter()
    chars = sum(len(from_zip(b, name).text) for name, b in blobs)
    dt = time.perf_counter() - t0
    print(
        f"extract {label}: {len(blobs)} zips, {packed / 1e6:.1f} MB zipped / {text_bytes / 1e6:.1f} MB Shift_JIS "
        f"in {dt:.2f} s = {packed / 1e6 / dt:.1f} MB/s zipped, {text_bytes / 1e6 / dt:.1f} MB/s text, "
        f"{chars / dt / 1e6:.2f} M chars/s"
    )
    if xhtml:
        pages = [(p.name, p.read_bytes()) for p in xhtml]
        size = sum(len(b) for _, b in pages)
        t0 = time.perf_counter()
        for name, b in pages:
            from_xhtml(b, name)
        dt = time.perf_counter() - t0
        print(f"extract {label}: {len(pages)} XHTML, {size / 1e6:.2f} MB in {dt:.3f} s = {size / 1e6 / dt:.1f} MB/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--bulk", default=str(REPO.parent / "shared" / "aozora-bulk"))
    args = ap.parse_args()
    print(f"machine: {machine()}")
    bench_crawl(args.repeat)
    bench_extract(
        "mirror", sorted(MIRROR.glob("cards/*/files/*.zip")), sorted(p for p in MIRROR.glob("cards/*/files/*.html"))
    )
    bulk = Path(args.bulk)
    if bulk.is_dir():
        bench_extract("aozora-bulk", sorted(bulk.rglob("*.zip")), [])
    else:
        print(f"extract aozora-bulk: skipped ({bulk} not found)")


if __name__ == "__main__":
    main()
