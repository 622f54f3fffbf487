"""The data the accelerator check carries to a device machine: a few MB of real shards, their tokenizer, held-out text.

Made here (the shard writer needs TensorFlow, which the device lacks) by the
project's own stages, from a part of an Aozora corpus in the site's layout
(``cards/<person id>/files/<stem>.zip``)::

    works of every author but one ─► gpt2ja crawl files ─► clean ─► tokenizer train ─► shards
    the held-out author's works    ─► gpt2ja crawl files ─► clean ─► heldout/ (Documents, never trained on)

Output (``DEST``)::

    root/clean/check/{train,validation}/   the clean corpus (the evaluation primes PPMd with its train split)
    root/tokenizers/sp/                    sentencepiece unigram of --vocab ids
    root/shards/                           GZIP TFRecord shards of --seq-len
    heldout/part-*.jsonl.gz                at most --heldout-chars characters of the held-out author
    PREPARED.json                          what was taken, sizes, the command

The raw crawls are deleted once cleaned (nothing downstream reads them; the
clean corpus's manifest still names them). Training works are every
``--every``-th work (sorted by path) of the other authors: with aozora-bulk's
2,058 works and ``--every 10``, about 6 MB of Shift_JIS text, 3 M characters.

Usage::

    .venv/bin/python benchmarks/device_data.py .device/data --bulk ../shared/aozora-bulk --holdout 000074
    .venv/bin/python benchmarks/device_data.py /tmp/d --bulk examples/aozora-mirror --holdout 000121 --every 1 \\
        --vocab 3000 --seq-len 128 --sample-sentences 20000      # the CPU smoke run's
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

#: share of the training works' documents (by id hash) kept for validation: training's validation loss reads a few
#: micro-batches of 16 sequences of 1024 from it (clean's default, 0.05, gives a handful of works here)
VALIDATION_FRACTION = 0.1


def gpt2ja(*args: str, log: Path) -> None:
    """One ``gpt2ja`` command in a subprocess; its output goes to ``log``; a failure ends the preparation."""
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"$ gpt2ja {' '.join(args)}\n")
        out.flush()
        done = subprocess.run(
            [sys.executable, "-m", "gpt2ja", *args],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "GPT2JA_PROGRESS": "off", "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
    if done.returncode:
        tail = log.read_text(encoding="utf-8").splitlines()[-15:]
        sys.exit(
            f"device_data: gpt2ja {args[0]} failed (exit {done.returncode}); the end of {log}:\n" + "\n".join(tail)
        )


def pick(bulk: Path, holdout: str, every: int) -> tuple[list[Path], list[Path]]:
    """(training zips: every ``every``-th work of the other authors, the held-out author's zips)."""
    zips = sorted(bulk.glob("cards/*/files/*.zip"))
    if not zips:
        sys.exit(f"device_data: no Aozora zips under {bulk}/cards/*/files/; give --bulk an Aozora corpus folder")
    held = [z for z in zips if z.parts[-3] == holdout]
    if not held:
        sys.exit(
            f"device_data: no works of person {holdout} under {bulk}; choose --holdout among "
            + ", ".join(sorted({z.parts[-3] for z in zips}))
        )
    rest = [z for z in zips if z.parts[-3] != holdout]
    return rest[::every], held


def link_tree(zips: list[Path], dest: Path) -> None:
    """``dest/cards/<id>/files/<stem>.zip`` → the originals (the crawl reads the site's layout)."""
    for z in zips:
        target = dest / "cards" / z.parts[-3] / "files" / z.name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(z.resolve(), target)


def size_of(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def prepare(
    dest: Path,
    bulk: Path,
    holdout: str,
    every: int,
    vocab: int,
    seq_len: int,
    sample_sentences: int,
    heldout_chars: int,
    validation_fraction: float = VALIDATION_FRACTION,
) -> dict:
    from gpt2ja.corpus.jsonl import ShardWriter, read_documents

    t0 = time.time()
    if dest.exists():
        shutil.rmtree(dest)
    root = dest / "root"
    root.mkdir(parents=True)
    log = dest / "prepare.log"
    train_zips, held_zips = pick(bulk, holdout, every)
    # `crawl files` names a document by its absolute path, and clean splits train/validation by a hash of that
    # name: the links live at a path fixed by the inputs (not a random temporary one), so the split is the same
    # on every preparation from the same corpus on this machine; a lock serialises preparations that share it
    key = hashlib.sha256(f"{bulk.resolve()}\0{holdout}\0{every}".encode()).hexdigest()[:12]
    tmp = Path(tempfile.gettempdir()) / "gpt2ja-device-data" / key
    tmp.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp.parent / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        shutil.rmtree(tmp, ignore_errors=True)
        link_tree(train_zips, tmp / "train")
        link_tree(held_zips, tmp / "heldout")
        gpt2ja("crawl", "files", str(tmp / "train"), "--root", str(root), "--crawl-id", "check", log=log)
        gpt2ja(
            "clean",
            "--in",
            str(root / "raw/files/check"),
            "--out",
            str(root / "clean/check"),
            "--set",
            f"split.validation_fraction={validation_fraction}",
            log=log,
        )
        gpt2ja("crawl", "files", str(tmp / "heldout"), "--root", str(tmp / "hroot"), "--crawl-id", "heldout", log=log)
        gpt2ja("clean", "--in", str(tmp / "hroot/raw/files/heldout"), "--out", str(tmp / "hroot/clean"), log=log)
        taken, chars = 0, 0
        with ShardWriter(str(dest / "heldout")) as out:
            for doc in read_documents([str(p) for p in sorted((tmp / "hroot/clean").glob("*/part-*.jsonl.gz"))]):
                if chars >= heldout_chars:
                    break
                out.write(doc)
                taken, chars = taken + 1, chars + len(doc.text)
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(root / "raw")  # read by nothing downstream; the clean manifest still names it
    gpt2ja(
        "tokenizer",
        "train",
        "--corpus",
        str(root / "clean/check"),
        "--vocab-size",
        str(vocab),
        "--sample-sentences",
        str(sample_sentences),
        "--out",
        str(root / "tokenizers/sp"),
        log=log,
    )
    gpt2ja(
        "shards",
        "--corpus",
        str(root / "clean/check"),
        "--tokenizer",
        str(root / "tokenizers/sp"),
        "--seq-len",
        str(seq_len),
        "--out",
        str(root / "shards"),
        "--workers",
        "1",
        log=log,
    )
    from gpt2ja.infra import storage

    manifest = storage.read_manifest(str(root / "shards")) or {}
    info = {
        "bulk": str(bulk),
        "holdout_person": holdout,
        "training_works": len(train_zips),
        "every": every,
        "heldout_works": taken,
        "heldout_characters": chars,
        "vocab": vocab,
        "seq_len": seq_len,
        "shard_counts": manifest.get("counts"),
        "bytes": {name: size_of(dest / name) for name in ("root/clean", "root/tokenizers", "root/shards", "heldout")},
        "seconds": round(time.time() - t0, 1),
    }
    (dest / "PREPARED.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dest", type=Path)
    ap.add_argument("--bulk", type=Path, default=REPO.parent / "shared" / "aozora-bulk")
    ap.add_argument("--holdout", default="000074", help="person id kept out of training (000074: 梶井基次郎)")
    ap.add_argument("--every", type=int, default=10, help="take every N-th training work")
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--sample-sentences", type=int, default=200_000)
    ap.add_argument("--heldout-chars", type=int, default=100_000)
    ap.add_argument(
        "--validation-fraction",
        type=float,
        default=VALIDATION_FRACTION,
        help="share of the training authors' documents kept for validation",
    )
    args = ap.parse_args()
    info = prepare(
        args.dest,
        args.bulk,
        args.holdout,
        args.every,
        args.vocab,
        args.seq_len,
        args.sample_sentences,
        args.heldout_chars,
        args.validation_fraction,
    )
    print(json.dumps(info, ensure_ascii=False))


if __name__ == "__main__":
    main()
