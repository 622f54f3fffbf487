"""gpt2ja.model.checkpoint: one file per step published whole, an index written after it, the newest K kept; older runs'
TensorFlow checkpoints converted (`gpt2ja convert-checkpoints`)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from gpt2ja.model import checkpoint
from tests import procs

REPO = Path(__file__).resolve().parent.parent


def _arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "model/w": rng.normal(size=(3, 4)).astype(np.float32),
        "optimizer/iteration": np.int64(seed),
        "rng/0": np.array([seed, 7], np.uint32),
    }


def test_the_newest_k_are_kept_and_the_index_names_the_newest(tmp_path):
    for step in (2, 4, 6, 8):
        checkpoint.save(str(tmp_path), step, _arrays(step), examples=10 * step, backend="jax", keep=2)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "ckpt-6.npz", "ckpt-8.npz"]
    index = json.loads((tmp_path / "checkpoint").read_text())
    assert index["latest"] == "ckpt-8.npz" and index["all"] == ["ckpt-6.npz", "ckpt-8.npz"]
    got = checkpoint.load(checkpoint.latest(str(tmp_path)))
    assert (got.step, got.examples, got.meta["backend"]) == (8, 80, "jax")
    for name, value in _arrays(8).items():
        np.testing.assert_array_equal(got.arrays[name], value)
        assert got.arrays[name].dtype == np.asarray(value).dtype


def test_a_save_killed_before_its_index_leaves_the_previous_checkpoint_named(tmp_path):
    checkpoint.save(str(tmp_path), 2, _arrays(2), examples=20, backend="tensorflow", keep=3)
    # a process killed while writing step 4: its temporary file, never renamed; the index still names step 2
    (tmp_path / "ckpt-4.npz.tmp-999999").write_bytes(b"half a zip")
    assert checkpoint.latest(str(tmp_path)).endswith("ckpt-2.npz")
    checkpoint.save(str(tmp_path), 4, _arrays(4), examples=40, backend="tensorflow", keep=3)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "ckpt-2.npz", "ckpt-4.npz"]  # the stray file is gone


def test_damage_is_one_line_naming_the_file(tmp_path):
    checkpoint.save(str(tmp_path), 2, _arrays(2), examples=20, backend="jax", keep=3)
    checkpoint.save(str(tmp_path), 4, _arrays(4), examples=40, backend="jax", keep=3)
    newest = tmp_path / "ckpt-4.npz"
    newest.write_bytes(newest.read_bytes()[:200])
    with pytest.raises(checkpoint.CheckpointError, match=r"ckpt-4.npz cannot be read .*delete it"):
        checkpoint.load(checkpoint.latest(str(tmp_path)))
    newest.unlink()  # deleted: the index's previous entry is used
    assert checkpoint.latest(str(tmp_path)).endswith("ckpt-2.npz")
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "ckpt-4"\n')
    with pytest.raises(checkpoint.CheckpointError, match="not a gpt2ja checkpoint index .*convert-checkpoints"):
        checkpoint.latest(str(tmp_path))


OLD_RUN = """
import json, sys
import keras, numpy as np, tensorflow as tf
from gpt2ja.model import gpt2, runs
from gpt2ja.model.optim import make_optimizer
from gpt2ja.model.presets import ModelConfig
from gpt2ja.model.train import TrainConfig
from gpt2ja.tokenization.bytes_tokenizer import ByteTokenizer

run = sys.argv[1]
keras.utils.set_random_seed(5)
cfg = ModelConfig.from_preset("tiny", vocab_size=257, context_length=32, dropout=0.1)
train = TrainConfig(data="-", run=run, preset="tiny", steps=10, batch_tokens=256, micro_batch=8, warmup_steps=2)
lm = gpt2.build_model(cfg)
opt = make_optimizer(train, lm)
x = tf.constant(np.arange(64).reshape(2, 32) % 257, tf.int32)
with tf.GradientTape() as tape:
    loss = gpt2.causal_lm_loss(gpt2.logits(lm, x, training=True), x)
opt.apply(tape.gradient(loss, lm.trainable_variables), lm.trainable_variables)  # moments that are not zero
step, examples = tf.Variable(3, dtype=tf.int64), tf.Variable(24, dtype=tf.int64)
# the object graph gpt2ja wrote before gpt2ja.model.checkpoint
tf.train.Checkpoint(backbone=lm.backbone, optimizer=opt, step=step, examples=examples,
                    rng=gpt2.dropout_rng_states(lm)).save(run + "/checkpoints/ckpt")  # → ckpt-1
(ByteTokenizer()).save(run + "/tokenizer")
open(run + "/hparams.json", "w").write(json.dumps({"model": cfg.model_dump(), "train": train.model_dump(),
                                                   "data": {"seq_len": 32}}))
np.savez(run + "/expected.npz", **{"model/" + v.path: v.numpy() for v in lm.trainable_variables},
         **{"optimizer/" + v.path.split("/", 1)[1]: v.numpy() for v in opt.variables})
"""


@pytest.mark.slow
def test_a_tensorflow_checkpoint_of_an_older_run_converts(tmp_path):
    run = tmp_path / "old"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
    assert procs.run([sys.executable, "-c", OLD_RUN, str(run)], cwd=REPO, env=env).returncode == 0
    refused = procs.run(
        [sys.executable, "-m", "gpt2ja", "eval", "--run", str(run), "--text", str(run)], cwd=REPO, env=env
    )
    assert refused.returncode != 0 and "convert-checkpoints --run" in refused.stderr
    said = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(said) == 1 and "holds TensorFlow checkpoints" in said[0] and "Traceback" not in refused.stderr
    got = procs.run([sys.executable, "-m", "gpt2ja", "convert-checkpoints", "--run", str(run)], cwd=REPO, env=env)
    assert got.returncode == 0, got.stderr[-3000:]
    assert "converted" in got.stdout and "(step 1, example 24)" in got.stdout
    converted = checkpoint.load(str(run / "checkpoints" / "ckpt-1.npz"))
    expected = np.load(run / "expected.npz")
    assert sorted(expected.files) == sorted(k for k in converted.arrays if not k.startswith("rng/"))
    for name in expected.files:
        np.testing.assert_array_equal(converted.arrays[name], expected[name], err_msg=name)
    assert int(converted.arrays["optimizer/iteration"]) == 1
    assert len([k for k in converted.arrays if k.startswith("rng/")]) == 7
    # the converted run loads on JAX too (what the old files never could)
    load = "import sys; from gpt2ja.model import runs; print(runs.load_run(sys.argv[1]).step)"
    on_jax = procs.run([sys.executable, "-c", load, str(run)], cwd=REPO, env={**env, "KERAS_BACKEND": "jax"})
    assert on_jax.returncode == 0 and on_jax.stdout.strip() == "1", on_jax.stderr[-2000:]
