"""Compression baselines (gpt2ja/model/baselines.py): PPMd order 8 alone and primed, gzip, xz, on short Japanese texts.

The figures are checked against pyppmd, gzip and lzma called here directly; the
priming sample is read from a small run → shards → clean-corpus chain built on
disk (no TensorFlow); one slow test trains a tiny run and evaluates it through
the stage and the CLI.
"""

from __future__ import annotations

import gzip
import json
import lzma
import subprocess
import sys
from pathlib import Path

import pyppmd
import pytest

from gpt2ja.corpus.document import Document
from gpt2ja.corpus.jsonl import ShardWriter
from gpt2ja.infra import storage
from gpt2ja.model import baselines
from gpt2ja.model.baselines import Prime, compression_baselines, training_sample

REPO = Path(__file__).resolve().parent.parent
# Natsume Sōseki, 吾輩は猫である (public domain): the prime, and a held-out passage in the same voice
PRIME = (
    "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。何でも薄暗いじめじめした所で"
    "ニャーニャー泣いていた事だけは記憶している。吾輩はここで始めて人間というものを見た。"
) * 20
TEXT = (
    "吾輩は猫である。名前はまだ無い。吾輩はここで始めて人間というものを見た。しかもあとで聞くと"
    "それは書生という人間中で一番獰悪な種族であったそうだ。"
)
MEM = 16 << 20


def ppmd(data: bytes, prime: bytes = b"") -> int:
    """Bytes pyppmd emits for ``data`` (after ``prime``, in one stream), flush included."""
    enc = pyppmd.Ppmd7Encoder(8, MEM)
    enc.encode(prime)
    return len(enc.encode(data)) + len(enc.flush())


def test_figures_match_the_libraries_called_directly():
    data = TEXT.encode("utf-8")
    got = compression_baselines(TEXT, Prime(PRIME, source="here", documents=20))
    assert (got["characters"], got["bytes"]) == (len(TEXT), len(data))
    # the arena's size does not change PPMd's output while the model fits (here: 16 MiB vs 256 MiB)
    assert got["ppmd_order8_compressed_bytes"] == ppmd(data)
    assert got["ppmd_order8_bits_per_character"] == 8 * ppmd(data) / len(TEXT)
    assert got["ppmd_order8_bits_per_byte"] == 8 * ppmd(data) / len(data)
    assert got["ppmd_order8_primed_bits_per_character"] == 8 * ppmd(data, PRIME.encode()) / len(TEXT)
    assert got["gzip_bits_per_character"] == 8 * len(gzip.compress(data, 9, mtime=0)) / len(TEXT)
    assert got["xz_bits_per_byte"] == 8 * len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)) / len(data)
    assert got["prime_characters"] == len(PRIME) and got["prime_missing"] is None
    # the one-stream primed cost is compress(prime + text) - compress(prime), up to the prime's own 5-byte flush
    both = pyppmd.Ppmd7Encoder(8, MEM)
    joint = len(both.encode(PRIME.encode() + data)) + len(both.flush())
    subtracted = joint - ppmd(PRIME.encode())
    assert 0 <= got["ppmd_order8_primed_compressed_bytes"] - subtracted <= 8


def test_priming_with_similar_text_lowers_the_figure_and_unrelated_text_does_not_help_as_much():
    similar = compression_baselines(TEXT, Prime(PRIME))
    unrelated = compression_baselines(TEXT, Prime("The quick brown fox jumps over the lazy dog. " * 60))
    alone = similar["ppmd_order8_bits_per_character"]
    assert similar["ppmd_order8_primed_bits_per_character"] < 0.5 * alone
    assert similar["ppmd_order8_primed_bits_per_character"] < unrelated["ppmd_order8_primed_bits_per_character"]
    assert unrelated["ppmd_order8_bits_per_character"] == alone  # the unprimed figure ignores the prime


def test_without_a_prime_the_primed_figures_are_none_and_say_why():
    got = compression_baselines(TEXT, Prime(None, missing="the run's shards x are not here"))
    assert got["ppmd_order8_primed_bits_per_character"] is None and got["prime_characters"] == 0
    assert got["prime_missing"] == "the run's shards x are not here"
    words = baselines.verdict(got["ppmd_order8_bits_per_character"] - 0.1, got)
    assert words[0].startswith("The model (") and " beats PPMd order 8 alone" in words[0]
    assert words[1] == "No primed PPMd figure: the run's shards x are not here."
    assert " does not beat " in baselines.verdict(99.0, got)[0]


def test_the_arena_grows_with_the_input_within_bounds():
    assert baselines.ppmd_memory(1000) == 256 << 20
    assert baselines.ppmd_memory(100 << 20) == 800 << 20
    assert baselines.ppmd_memory(10 << 30) == 2 << 30


def make_run(root: Path, train_texts: list[str], *, with_counts: bool = True) -> str:
    """run/hparams.json → shards/_MANIFEST.json (names its corpus) → clean/train: the chain a trained run has."""
    corpus, shards, run = root / "clean", root / "shards", root / "run"
    with ShardWriter(storage.join(str(corpus), "train")) as out:
        for i, t in enumerate(train_texts):
            out.write(Document.new(source="test", url=f"train/{i}", text=t))
    counts = {"splits": {"train": {"documents": len(train_texts), "characters": sum(map(len, train_texts))}}}
    storage.write_manifest(
        str(corpus),
        storage.build_manifest(stage="clean", config={}, counts=counts if with_counts else {}, files=[], timings={}),
    )
    storage.write_manifest(
        str(shards),
        storage.build_manifest(  # as run_stage publishes it: refs relative
            stage="shards",
            config={},
            counts={},
            files=[],
            timings={},
            extra={"corpus": {"uri": storage.relative_ref(str(corpus), str(shards))}, "refs": "relative"},
        ),
    )
    run.mkdir()
    (run / "hparams.json").write_text(
        json.dumps({"model": {}, "refs": "relative", "data": {"uri": storage.relative_ref(str(shards), str(run))}})
    )
    return str(run)


def test_the_sample_comes_from_the_runs_training_split(tmp_path):
    docs = [f"{i}番目の文書です。" + TEXT for i in range(30)]
    run = make_run(tmp_path, docs)
    whole = training_sample(run, 10_000)
    assert whole.source == str(tmp_path / "clean" / "train")
    assert whole.documents == 30 and whole.text == "".join(d + "\n" for d in docs)  # smaller than asked: all of it
    cut = training_sample(run, 500)
    assert cut.characters == 500 and cut == training_sample(run, 500)  # deterministic
    taken = [int(line.split("番目")[0]) for line in cut.text.split("\n")]
    assert len(taken) == cut.documents == len(set(taken))
    assert taken != list(range(len(taken)))  # spread over the split, not its first documents
    kept = training_sample(run, 10_000, exclude=[docs[3]])
    assert kept.documents == 29 and docs[3] not in kept.text.split("\n")


def test_a_missing_training_text_is_said_not_raised(tmp_path):
    run = make_run(tmp_path, ["本文。"])
    storage.delete(storage.join(str(tmp_path / "shards"), storage.MANIFEST))
    prime = training_sample(run, 100)
    assert prime.text is None and "shards" in prime.missing and "not here" in prime.missing
    assert training_sample(run, 0).missing == "priming turned off (prime characters 0)"
    assert "hparams.json" in training_sample(str(tmp_path / "nowhere"), 100).missing


def test_the_module_loads_no_tensorflow():
    code = (
        "import sys; from gpt2ja.model.baselines import compression_baselines; compression_baselines('猫である。'); "
        "print('tensorflow' in sys.modules)"
    )
    got = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert got.stdout.strip() == "False"


@pytest.mark.slow
def test_a_tiny_evaluation_writes_and_prints_the_baselines(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow")
    from typer.testing import CliRunner

    from gpt2ja.cli import app
    from gpt2ja.model.evaluate import EVAL_DIR, write_evaluation
    from gpt2ja.model.train import TrainConfig, train
    from tests.test_model_train import SEQ_LEN, make_shards
    from tests.test_model_train import TEXT as TRAIN_TEXT

    shards = make_shards(tmp_path / "data")
    run = tmp_path / "run"
    train(
        TrainConfig(
            data=shards,
            run=str(run),
            preset="tiny",
            batch_tokens=8 * SEQ_LEN,
            micro_batch=8,
            steps=2,
            warmup_steps=1,
            checkpoint_every=2,
            eval_every=2,
            eval_batches=1,
            log_every=1,
        ),
        progress=None,
    )
    held_out = tmp_path / "held-out.txt"
    held_out.write_text(TRAIN_TEXT * 3, encoding="utf-8")

    out = write_evaluation(str(run), [str(held_out)], str(run / EVAL_DIR), prime_chars=300)
    result = json.loads(Path(out, "eval.json").read_text())
    b = result["baselines"]
    assert b["prime_characters"] == 300 and b["prime_source"] == str(tmp_path / "data" / "clean" / "train")
    assert b["characters"] == result["characters"] == len(TRAIN_TEXT) * 3
    for name in ("ppmd_order8", "ppmd_order8_primed", "gzip", "xz"):
        assert b[f"{name}_bits_per_character"] > 0 and b[f"{name}_bits_per_byte"] > 0
    # the training text is the held-out text's sentence: priming helps a lot
    assert b["ppmd_order8_primed_bits_per_character"] < b["ppmd_order8_bits_per_character"]
    assert b["model_beats_ppmd_order8"] == (result["bits_per_character"] < b["ppmd_order8_bits_per_character"])
    report = Path(out, "report.md").read_text()
    assert "## Compression baselines" in report and "PPMd order 8 alone" in report and "primed with 300" in report

    got = CliRunner().invoke(app, ["eval", "--run", str(run), "--text", str(held_out), "--prime-chars", "0"])
    assert got.exit_code == 0, got.output
    printed = json.loads(got.output[: got.output.rindex("}") + 1])
    written = json.loads((run / "eval.json").read_text())["baselines"]
    assert printed["baselines"]["ppmd_order8_bits_per_character"] == written["ppmd_order8_bits_per_character"]
    assert written["ppmd_order8_primed_bits_per_character"] is None
    assert "PPMd order 8 alone" in got.output
    assert "No primed PPMd figure: priming turned off (prime characters 0)." in got.output

    # samples drawn at the default settings: new defaults make the evaluation again, not a skip
    from gpt2ja.infra import storage
    from gpt2ja.model import generate

    sampled = str(tmp_path / "eval-sampled")
    settings = {"num": 1, "max_chars": 4, "seed": 0}
    write_evaluation(str(run), [str(held_out)], sampled, prompts=["猫"], sampling=settings, prime_chars=0)
    first = storage.read_manifest(sampled)["fingerprint"]
    write_evaluation(str(run), [str(held_out)], sampled, prompts=["猫"], sampling=settings, prime_chars=0)
    assert storage.read_manifest(sampled)["fingerprint"] == first  # nothing changed: skipped
    monkeypatch.setitem(generate.DEFAULT_SAMPLING, "top_k", 3)
    write_evaluation(str(run), [str(held_out)], sampled, prompts=["猫"], sampling=settings, prime_chars=0)
    assert storage.read_manifest(sampled)["fingerprint"] != first
