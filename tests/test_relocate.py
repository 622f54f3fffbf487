"""A root moved to another directory, then copied to a bucket, still trains and evaluates from any directory.

Manifests name their inputs relative to themselves (gpt2ja/infra/stage.py), so nothing
in a root depends on where it was built or on the working directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpt2ja.infra import stage, storage
from tests.corpora import ZIPS

pytestmark = pytest.mark.slow

TRAIN = [
    "--preset",
    "tiny",
    "--steps",
    "2",
    "--batch-tokens",
    "256",
    "--micro-batch",
    "8",
    "--warmup-steps",
    "1",
    "--set",
    "checkpoint_every=2",
    "--set",
    "eval_every=2",
    "--set",
    "eval_batches=1",
    "--set",
    "log_every=1",
]


def _gpt2ja(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "gpt2ja", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _build_root(root: Path) -> None:
    """crawl (files) → clean → tokenizer → shards under ``root``, the demo's layout, built in this process."""
    from gpt2ja.corpus.clean import CleanConfig, run_clean
    from gpt2ja.crawler.files import crawl_files
    from gpt2ja.tokenization.shards import ShardsConfig, write_shards
    from gpt2ja.tokenization.train import train_tokenizer

    text = root.parent / "text"
    text.mkdir()
    for z in ZIPS[:12]:
        shutil.copy(z, text / z.name)
    raw = crawl_files(str(text), str(root), "mine")
    clean = run_clean(
        CleanConfig(inputs=[raw], out=str(root / "clean" / "c"), workers=1, split={"validation_fraction": 0.5})
    )  # ids hold the tmp path: the split varies
    tok = train_tokenizer(clean, "bytes", None, str(root / "tokenizers" / "bytes"))
    write_shards(
        clean,
        tok,
        str(root / "datasets" / "c" / "bytes-32"),
        ShardsConfig(seq_len=32, num_shards={"train": 2, "validation": 1}, workers=1),
    )


def test_a_moved_root_then_a_bucket_trains_and_evaluates_from_anywhere(tmp_path, gcs_emulator):
    first = tmp_path / "built" / "root"
    first.mkdir(parents=True)
    _build_root(first)
    moved = tmp_path / "moved" / "root"
    moved.parent.mkdir()
    os.rename(first, moved)
    # from the root itself, with relative paths; then from an unrelated directory, with absolute ones
    _gpt2ja(moved, "train", "--data", "datasets/c/bytes-32", "--run", "runs/r", *TRAIN)
    out = _gpt2ja(moved, "eval", "--run", "runs/r", "--text", "clean/c/validation")
    assert "bits" in out
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _gpt2ja(elsewhere, "train", "--data", str(moved / "datasets/c/bytes-32"), "--run", str(moved / "runs/r2"), *TRAIN)
    run = storage.read_manifest(str(moved / "runs" / "r2"))
    assert stage.input_uri(run, run["inputs"][0]["uri"]) == str(moved / "datasets" / "c" / "bytes-32")

    # the same root in a bucket (copied as is), used from yet another directory
    bucket = f"gs://{gcs_emulator.bucket}/relocated"
    storage.upload_dir(str(moved), bucket)
    shards = storage.join(bucket, "datasets", "c", "bytes-32")
    assert stage.verify(shards, deep=True)[1] == []
    _gpt2ja(elsewhere, "train", "--data", shards, "--run", storage.join(bucket, "runs", "r3"), *TRAIN)
    out = _gpt2ja(
        elsewhere,
        "eval",
        "--run",
        storage.join(bucket, "runs", "r3"),
        "--text",
        storage.join(bucket, "clean", "c", "validation"),
    )
    assert "bits" in out
    assert stage.verify(storage.join(bucket, "runs", "r3"), deep=True)[1] == []
