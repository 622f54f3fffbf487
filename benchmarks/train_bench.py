"""Training throughput (tokens/s) of GPT-2 presets on this machine, from real training steps.

Each preset trains for ``--steps`` optimizer steps on a shards artifact; the
figure is the median of the ``tokens_per_s`` the run logs after the first
(compile) interval. ``--compare-read`` also measures how fast ``make_dataset``
reads the same shards, and prints the ratio: input must never be the bottleneck.

Usage::

    .venv/bin/python benchmarks/train_bench.py --data data/demo/datasets/aozora-demo/sp3000-128 \\
        --presets tiny,small --steps 6 --micro-batch 4 --compare-read
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from crawl_bench import machine  # noqa: E402


def training_rate(shards: str, preset: str, steps: int, micro_batch: int, xla: bool = False) -> float:
    from infra import storage
    from model.train import TrainConfig, train

    seq_len = storage.read_manifest(shards)["seq_len"]
    with tempfile.TemporaryDirectory() as run:
        cfg = TrainConfig(data=shards, run=os.path.join(run, preset), preset=preset, steps=steps,
                          batch_tokens=micro_batch * seq_len, micro_batch=micro_batch, warmup_steps=0,
                          log_every=1, eval_batches=0, checkpoint_every=10**6, jit_compile=xla)
        train(cfg, progress=None)
        with open(os.path.join(run, preset, "metrics.jsonl"), encoding="utf-8") as fh:
            rates = [json.loads(line)["tokens_per_s"] for line in fh if '"tokens_per_s"' in line]
    steady = rates[1:] or rates  # the first interval includes tracing and compiling the step
    return statistics.median(steady)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a shards artifact (gpt2ja shards)")
    ap.add_argument("--presets", default="tiny,small")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--xla", action="store_true")
    ap.add_argument("--compare-read", action="store_true")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    fastest = 0.0
    for preset in [p.strip() for p in args.presets.split(",") if p.strip()]:
        rate = training_rate(args.data, preset, args.steps, args.micro_batch, args.xla)
        fastest = max(fastest, rate)
        print(f"train {preset}: {rate:,.0f} tokens/s (micro-batch {args.micro_batch}, {args.steps} steps, "
              f"XLA {'on' if args.xla else 'off'})")
    if args.compare_read:
        from tokens_bench import bench_read

        from infra import storage

        read = bench_read(args.data, storage.read_manifest(args.data)["seq_len"])
        print(f"reading is {read / fastest:,.0f}× the fastest training consumption on this machine")


if __name__ == "__main__":
    main()
