"""Training on CPU: the tiny preset on real shards (bytes tokenizer, one short Japanese sentence pair repeated).

The shards come from the real stages (clean-corpus artifact → ``write_shards``),
36 examples of 33 byte ids; runs are 8–120 steps of 256–512 tokens. The
exact-resume test kills a training process with SIGKILL mid-run and compares
the resumed run's final weights with an unbroken run's, bit for bit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from gpt2ja.corpus.document import Document
from gpt2ja.corpus.jsonl import ShardWriter
from gpt2ja.infra import storage
from gpt2ja.tokenization.bytes_tokenizer import ByteTokenizer
from gpt2ja.tokenization.shards import ShardsConfig, write_shards
from tests import procs

tf = pytest.importorskip("tensorflow")

from gpt2ja.model import checkpoint, runs  # noqa: E402
from gpt2ja.model.evaluate import evaluate_run  # noqa: E402
from gpt2ja.model.generate import generate_run  # noqa: E402
from gpt2ja.model.train import TrainConfig, TrainError, train  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TEXT = "吾輩は猫である。名前はまだ無い。"
SEQ_LEN = 32


def make_shards(root: Path) -> str:
    """A clean corpus of one repeated text (train 40 docs, validation 6) → bytes-tokenizer shards of seq_len 32."""
    corpus = str(root / "clean")
    for split, n in (("train", 40), ("validation", 6)):
        with ShardWriter(storage.join(corpus, split)) as out:
            for i in range(n):
                out.write(Document.new(source="test", url=f"{split}/{i}", text=TEXT * 2))
    files = [storage.file_info(u, root=corpus) for u in storage.list_files(corpus)]
    storage.write_manifest(
        corpus, storage.build_manifest(stage="clean", config={"test": "model"}, counts={}, files=files, timings={})
    )
    tok = ByteTokenizer().save(str(root / "tokenizer"))
    return write_shards(
        corpus,
        tok,
        str(root / "shards"),
        ShardsConfig(seq_len=SEQ_LEN, num_shards={"train": 2, "validation": 1}, workers=1),
    )


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return make_shards(tmp_path_factory.mktemp("model-data"))


def config(shards: str, run: Path, **kw) -> TrainConfig:
    base = dict(
        data=shards,
        run=str(run),
        preset="tiny",
        batch_tokens=8 * SEQ_LEN,
        micro_batch=8,
        steps=8,
        learning_rate=3e-3,
        warmup_steps=2,
        checkpoint_every=4,
        eval_every=4,
        eval_batches=2,
        log_every=1,
        deterministic=True,
        seed=7,
    )
    return TrainConfig(**{**base, **kw})


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / runs.METRICS).read_text().splitlines()]


def weights(run: Path, step: int) -> dict[str, np.ndarray]:
    arrays = checkpoint.load(str(run / runs.CHECKPOINT_DIR / f"ckpt-{step}.npz")).arrays
    return {name: value for name, value in arrays.items() if name.startswith(("model/", "optimizer/"))}


def test_config_errors_are_one_line(shards, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="warmup_steps 8 must be fewer than steps 8"):
        config(shards, tmp_path, warmup_steps=8)
    with pytest.raises(ValueError, match="choose a model"):
        config(shards, tmp_path, preset=None)
    cfg = config(shards, tmp_path / "r", batch_tokens=300)
    with pytest.raises(
        TrainError,
        match=r"not a multiple of micro_batch × seq_len = 8 × 32 = 256; "
        r"use batch_tokens 256$",
    ):
        train(cfg, progress=None)
    assert config(shards, tmp_path, batch_tokens=4 * 256).accumulation_steps(SEQ_LEN) == 4
    with pytest.raises(TrainError, match="unknown model preset 'huge'"):
        train(config(shards, tmp_path / "r2", preset="huge"), progress=None)
    monkeypatch.setattr("gpt2ja.model.train.host_memory_bytes", lambda: 8 * 2**30)
    with pytest.raises(
        TrainError,
        match=r"preset xl with micro_batch 8 needs about 2\d\.\d GiB to train "
        r"\(1,4\d\d,\d{3},\d{3} parameters\), this machine has 8\.0 GiB",
    ):
        train(config(shards, tmp_path / "r3", preset="xl"), progress=None)
    assert not (tmp_path / "r3").exists()  # stopped before writing anything
    old = tmp_path / "r4"  # a run started on other shards is not resumed on these (the CLI and the flow)
    old.mkdir()
    (old / runs.HPARAMS).write_text(json.dumps({"data": {"fingerprint": "0" * 64}}), encoding="utf-8")
    with pytest.raises(TrainError, match=r"r4 was trained on other shards \(fingerprint 000000000000, now "):
        train(config(shards, old), progress=None)
    assert sorted(p.name for p in old.iterdir()) == [runs.HPARAMS]


@pytest.mark.slow
def test_tiny_model_overfits_repeated_text(shards, tmp_path):
    run = tmp_path / "overfit"
    lines: list[str] = []
    cfg = config(
        shards,
        run,
        steps=150,
        warmup_steps=10,
        learning_rate=3e-3,
        log_every=10,
        eval_every=50,
        checkpoint_every=50,
        steps_per_execution=10,
        deterministic=False,
    )
    assert train(cfg, progress=lines.append) == str(run)
    rows = metrics(run)
    first, last = rows[0]["loss"], rows[-1]["loss"]
    # ln(320) ≈ 5.8 at init; the text is learned. How fast depends on the seed's data order: after 100 steps
    # the last window's loss was 0.28–1.17 over four seeds, after 150 steps 0.09–0.34
    assert first > 3.0 and last < 0.5, (first, last)
    assert rows[-1]["val_loss"] < 0.5  # validation holds the same text
    assert [r["step"] for r in rows if "loss" in r] == list(range(10, 151, 10))
    assert any(line.startswith("step 150/150") and "tok/s" in line and "ETA" in line for line in lines)
    # a self-describing run directory, manifest last
    hp = json.loads((run / runs.HPARAMS).read_text())
    assert hp["model"]["preset"] == "tiny" and hp["model"]["vocab_size"] == 257 and hp["padded_vocab_size"] == 320
    assert hp["model"]["context_length"] == SEQ_LEN and hp["train"]["steps"] == 150
    assert (run / runs.TOKENIZER_DIR / "tokenizer.json").exists()
    assert sorted(p.name for p in (run / runs.CHECKPOINT_DIR).iterdir()) == [
        "checkpoint",
        "ckpt-100.npz",
        "ckpt-150.npz",
        "ckpt-50.npz",
    ]
    assert list((run / runs.TENSORBOARD_DIR).glob("events.out.tfevents.*"))
    manifest = storage.read_manifest(str(run))
    assert manifest["stage"] == "train" and manifest["counts"]["tokens"] == 150 * 256
    # the run evaluates and generates on its own (hparams + tokenizer copy + newest checkpoint)
    held_out = tmp_path / "held-out.txt"
    held_out.write_text(TEXT * 3, encoding="utf-8")
    result = evaluate_run(str(run), [str(held_out)])
    assert json.loads((run / runs.EVAL_JSON).read_text())["bits_per_character"] == result["bits_per_character"]
    assert (result["characters"], result["tokens"], result["step"]) == (len(TEXT) * 3, len(TEXT.encode()) * 3, 150)
    assert result["bits_per_character"] < 3.0  # a random model: log2(257) × 3 bytes per character ≈ 24
    [sample] = generate_run(str(run), TEXT[:3], greedy=True, max_chars=6)
    assert sample.stopped == "max_chars" and len(sample.text) == 6
    assert sample.text.startswith(TEXT[3])  # "猫": the text is (partly) memorised after 150 steps
    # the same config again: complete, nothing to do
    again: list[str] = []
    train(cfg, progress=again.append)
    assert again and "nothing to do" in again[0]

    # --init-from: a fresh run that starts from these weights (fresh optimizer)
    tuned = tmp_path / "tuned"
    train(
        config(
            shards,
            tuned,
            preset=None,
            init_from=str(run),
            steps=2,
            warmup_steps=1,
            learning_rate=1e-5,
            eval_every=2,
            checkpoint_every=2,
        ),
        progress=None,
    )
    rows = metrics(tuned)
    assert rows[0]["loss"] < 0.5  # starts trained (a random model is at ≈ 5.8)
    assert json.loads((tuned / runs.HPARAMS).read_text())["train"]["init_from"] == str(run)
    tuned_ckpt = checkpoint.load(str(tuned / runs.CHECKPOINT_DIR / "ckpt-2.npz"))
    assert int(tuned_ckpt.arrays["optimizer/iteration"]) == 2  # the optimizer started at 0


KILL_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    from gpt2ja.model.train import TrainConfig, train
    cfg = TrainConfig(**json.loads(sys.argv[1]))
    kill_at = int(sys.argv[2])

    def on_log(step, record):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no final checkpoint

    train(cfg, progress=None, on_log=on_log)
""")


@pytest.mark.slow
def test_resume_after_kill_gives_identical_weights(shards, tmp_path):
    # dropout on (its random state must resume too), 2 micro-batches per step, AdamW + warmup + cosine
    kw = dict(steps=12, checkpoint_every=4, eval_batches=0, dropout=0.1, batch_tokens=2 * 4 * SEQ_LEN, micro_batch=4)
    straight = tmp_path / "straight"
    train(config(shards, straight, **kw), progress=None)

    killed = tmp_path / "killed"
    cfg = config(shards, killed, **kw)
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = procs.run([sys.executable, "-c", KILL_SCRIPT, cfg.model_dump_json(), "7"], cwd=REPO, env=env)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert runs.latest_checkpoint(str(killed)).endswith("ckpt-4.npz")  # steps 5–7 were lost
    assert [r["step"] for r in metrics(killed)][-1] == 7
    assert storage.read_manifest(str(killed)) is None  # unfinished

    lines: list[str] = []
    train(cfg, progress=lines.append)
    assert "took over the lock of pid" in lines[0] and "that process is gone" in lines[0]  # the killed one's
    assert "resuming run" in lines[1] and "from step 4" in lines[1]
    a, b = weights(straight, 12), weights(killed, 12)
    assert a.keys() == b.keys() and len(a) > 30
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    # metrics.jsonl of the resumed run: the lost steps 5–7 were dropped and redone, values identical
    assert [(r["step"], r["loss"]) for r in metrics(killed)] == [(r["step"], r["loss"]) for r in metrics(straight)]

    # a damaged checkpoint: one line naming it, for training and for loading
    data_file = killed / runs.CHECKPOINT_DIR / "ckpt-12.npz"
    data_file.write_bytes(data_file.read_bytes()[:100])
    with pytest.raises(TrainError, match=r"checkpoint .*ckpt-12.npz cannot be read .*delete it"):
        train(config(shards, killed, **{**kw, "steps": 14}), progress=None)
    with pytest.raises(runs.ModelError, match=r"checkpoint .*ckpt-12.npz cannot be read"):
        runs.load_run(str(killed))


WAIT_SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    from gpt2ja.model.train import TrainConfig, train
    cfg = TrainConfig(**json.loads(sys.argv[1]))
    go = sys.argv[2]

    def on_log(step, record):
        while step == 1 and not os.path.exists(go):  # hold the run (and its lock) until the test says go
            time.sleep(0.05)

    train(cfg, progress=None, on_log=on_log)
""")


@pytest.mark.slow
def test_a_second_train_of_the_same_run_is_refused_while_the_first_finishes(shards, tmp_path):
    from gpt2ja.infra import stage

    run = tmp_path / "busy"
    cfg = config(shards, run, steps=4, checkpoint_every=4, eval_batches=0)
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(
        [sys.executable, "-c", WAIT_SCRIPT, cfg.model_dump_json(), str(go)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lock = Path(stage.lock_uri(str(run)))
        while not lock.exists() and proc.poll() is None:
            time.sleep(0.05)
        assert lock.exists(), proc.stderr.read()[-3000:] if proc.poll() is not None else "no lock"
        with pytest.raises(stage.LockHeld) as err:
            train(cfg, progress=None)
        message = str(err.value)
        assert f"pid {proc.pid}" in message and str(run) in message and "\n" not in message
    finally:
        go.touch()
        try:
            _, stderr = proc.communicate()
        finally:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    # the first run was not disturbed: one series of metrics, a manifest that verifies file by file
    assert [r["step"] for r in metrics(run)] == [1, 2, 3, 4]
    manifest, problems = stage.verify(str(run), deep=True)
    assert problems == [] and manifest["stage"] == "train" and manifest["refs"] == "relative"
    assert not lock.exists() or json.loads(lock.read_text())["released"]


MIRRORED_SCRIPT = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from gpt2ja.model.train import TrainConfig, train
    train(TrainConfig(**json.loads(sys.argv[1])), progress=None)
""")


@pytest.mark.slow
def test_mirrored_two_cpu_replicas_match_one_device(shards, tmp_path):
    """MirroredStrategy over 2 logical CPUs (each replica half of every micro-batch) = the default strategy."""
    kw = dict(steps=6, checkpoint_every=6, eval_batches=0, batch_tokens=2 * 8 * SEQ_LEN, micro_batch=8)
    one = tmp_path / "one"
    train(config(shards, one, **kw), progress=None)
    two = tmp_path / "two"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    cfg = config(shards, two, strategy="mirrored", **kw)
    proc = procs.run([sys.executable, "-c", MIRRORED_SCRIPT, cfg.model_dump_json()], cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for r1, r2 in zip(metrics(one), metrics(two), strict=True):
        assert r1["step"] == r2["step"]
        assert r1["loss"] == pytest.approx(r2["loss"], rel=1e-5)
    a, b = weights(one, 6), weights(two, 6)
    for name in a:
        if name.startswith("backbone/"):
            np.testing.assert_allclose(a[name], b[name], rtol=1e-3, atol=5e-5, err_msg=name)


@pytest.mark.slow
def test_resuming_with_other_optimisation_settings_is_refused_unless_overridden(shards, tmp_path):
    run = tmp_path / "guarded"
    train(config(shards, run, steps=4), progress=None)
    before = json.loads((run / runs.HPARAMS).read_text())
    with pytest.raises(TrainError) as err:  # more steps and a lower learning rate
        train(config(shards, run, steps=6, learning_rate=1e-3), progress=None)
    message = str(err.value)
    assert "learning_rate 0.003 → 0.001" in message and "--override" in message and "\n" not in message
    assert json.loads((run / runs.HPARAMS).read_text()) == before  # the run's record is untouched
    assert storage.read_manifest(str(run)) is not None  # and its manifest still stands (nothing was withdrawn)
    train(config(shards, run, steps=6, learning_rate=1e-3, override=True), progress=None)
    hp = json.loads((run / runs.HPARAMS).read_text())
    assert hp["train"]["learning_rate"] == 1e-3
    assert hp["history"] == [
        {
            "step": 4,
            "changed": {"learning_rate": [0.003, 0.001], "steps": [4, 6]},
            "override": True,
            "code_version": storage.code_version(),
        }
    ]
    assert [r["step"] for r in metrics(run) if "loss" in r][-1] == 6


@pytest.mark.slow
def test_a_shard_damaged_after_the_fact_is_named_when_training_reads_it(shards, tmp_path):
    """A flipped byte in a shard: one line naming the file and the fix, not TensorFlow's DataLossError."""
    import shutil

    shutil.copytree(Path(shards).parent, tmp_path / "root")  # with the tokenizer the shards name relatively
    copy = tmp_path / "root" / Path(shards).name
    victim = sorted(copy.glob("train-*.tfrecord"))[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(TrainError) as err:
        train(config(str(copy), tmp_path / "run", steps=4), progress=None)
    message = str(err.value)
    assert str(victim) in message and "gpt2ja shards" in message and "\n" not in message
