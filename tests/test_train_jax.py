"""The JAX backend trains what the TensorFlow backend trains: same steps, same losses, any device count.

Every JAX run is a ``gpt2ja train --backend jax`` process of its own (Keras
reads its backend once per process; this one runs TensorFlow). The exact
resume after SIGKILL is in ``tests/test_kill.py`` (``train-jax``); the
TensorFlow-free data stream in ``tests/test_records.py``; evaluation,
generation and export of a JAX run in ``tests/test_backends.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpt2ja.tokenization.bytes_tokenizer import ByteTokenizer
from tests import procs
from tests.corpora import write_tiny_run
from tests.net import free_ports
from tests.test_model_train import SEQ_LEN, make_shards

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return make_shards(tmp_path_factory.mktemp("jax-data"))


@pytest.fixture(scope="module")
def start(tmp_path_factory) -> str:
    """A tiny model both backends start from (init_from: its weights, a fresh optimizer)."""
    return str(write_tiny_run(tmp_path_factory.mktemp("jax-start"), ByteTokenizer(), context=SEQ_LEN))


def _command(shards: str, run: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gpt2ja",
        "train",
        "--data",
        shards,
        "--run",
        str(run),
        "--steps",
        "6",
        "--batch-tokens",
        str(4 * 4 * SEQ_LEN),
        "--micro-batch",
        "4",
        "--warmup-steps",
        "2",
        "--learning-rate",
        "3e-3",
        "--set",
        "log_every=1",
        "--set",
        "checkpoint_every=3",
        "--set",
        "eval_every=3",
        "--set",
        "eval_batches=2",
        "--set",
        "eval_sample_tokens=4",
        "--set",
        "seed=3",
        *args,
    ]


def _env(**extra: str) -> dict:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **extra}


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _train(shards: str, run: Path, *args: str, env: dict | None = None) -> list[dict]:
    got = procs.run(_command(shards, run, *args), cwd=REPO, env=_env(**(env or {})))
    assert got.returncode == 0, (got.stdout + got.stderr)[-3000:]
    return _metrics(run)


def _final(run: Path) -> dict[str, np.ndarray]:
    from gpt2ja.model import checkpoint

    return checkpoint.load(str(run / "checkpoints" / "ckpt-6.npz")).arrays


def test_both_backends_take_the_same_steps_from_the_same_weights(shards, start, tmp_path):
    # 4 micro-batches a step, clipping, warmup then cosine, AdamW's decay on the kernels: everything but dropout
    tf_rows = _train(shards, tmp_path / "tf", "--init-from", start, "--set", "deterministic=true")
    jax_rows = _train(shards, tmp_path / "jax", "--init-from", start, "--backend", "jax")
    assert [r["step"] for r in jax_rows] == [r["step"] for r in tf_rows]
    for a, b in zip(tf_rows, jax_rows):
        for key in ("loss", "lr", "grad_norm", "val_loss", "val_bits_per_character"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=2e-4, abs=1e-6), (a["step"], key, a[key], b[key])
    tf_state, jax_state = _final(tmp_path / "tf"), _final(tmp_path / "jax")
    shared = [k for k in tf_state if not k.startswith("rng/")]
    assert sorted(shared) == sorted(k for k in jax_state if not k.startswith("rng/")) and len(shared) > 60
    for name in shared:  # Adam divides by √v: a weight whose gradient is ~0 moves by float noise × lr at most
        np.testing.assert_allclose(jax_state[name], tf_state[name], rtol=1e-3, atol=2e-4, err_msg=name)
    hparams = json.loads((tmp_path / "jax" / "hparams.json").read_text())
    assert hparams["train"]["backend"] == "jax"

    def boards(run: Path) -> list[str]:  # the same event folders (root, train, validation)
        return sorted(str(p.parent.relative_to(run)) for p in run.rglob("events.out.tfevents.*"))

    assert (
        boards(tmp_path / "jax" / "tensorboard")
        == boards(tmp_path / "tf" / "tensorboard")
        == [".", "train", "validation"]
    )


def test_two_devices_train_as_one(shards, tmp_path):
    # keras.distribution.DataParallel over two CPU devices: the batch split in two, the gradients all-reduced
    one = _train(shards, tmp_path / "one", "--preset", "tiny", "--backend", "jax", "--set", "dropout=0.1")
    two = _train(
        shards,
        tmp_path / "two",
        "--preset",
        "tiny",
        "--backend",
        "jax",
        "--set",
        "dropout=0.1",
        env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
    )
    log = (tmp_path / "two" / "metrics.jsonl").read_text()
    assert log and [r["step"] for r in one] == [r["step"] for r in two]
    for a, b in zip(one, two):  # the same dropout masks: Keras draws them for the global batch
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), (a["step"], a["loss"], b["loss"])
    twin = _final(tmp_path / "two")
    for name, value in _final(tmp_path / "one").items():
        # the key bias's true gradient is 0 (softmax ignores a constant per query): Adam steps on rounding noise,
        # whose sign depends on the order of the sums, so it may move ±lr each step either way
        # elsewhere, Adam's division by √v turns the sums' rounding (1e-7) into up to 1e-4 of a tiny update
        tolerance = {"atol": 2 * 6 * 3e-3} if "key/bias" in name else {"rtol": 1e-3, "atol": 1e-5}
        np.testing.assert_allclose(twin[name], value, err_msg=name, **tolerance)


def test_two_hosts_train_as_two_devices_of_one(shards, tmp_path):
    # jax.distributed: two processes on 127.0.0.1, one CPU device each, every host reading the global stream and
    # keeping its rows of each batch; process 0 writes the run. Against one process with two devices.
    # Host w holds rows [8w, 8w+8) of each 16-row batch, so a micro-batch is other rows than on one host: the same
    # global batch and gradient, other dropout masks (hence dropout 0). Validation: each host scores its own files,
    # as on TensorFlow; these shards have a single one: off.
    args = ("--preset", "tiny", "--backend", "jax", "--set", "dropout=0", "--set", "eval_batches=0")
    one = _train(shards, tmp_path / "one", *args, env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    [port] = free_ports(1)
    hosts = [
        subprocess.Popen(
            _command(shards, tmp_path / "two", *args),
            cwd=REPO,
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)),
        )
        for i in range(2)
    ]
    try:
        logs = [host.communicate()[0] for host in hosts]
    finally:
        for host in hosts:
            procs.kill_group(host)
    assert [host.returncode for host in hosts] == [0, 0], "\n".join(log[-2000:] for log in logs)
    assert "JAX on 2 cpu device(s), 2 process(es)" in logs[0]
    two = _metrics(tmp_path / "two")
    assert [r["step"] for r in two] == [r["step"] for r in one]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), (a["step"], a["loss"], b["loss"])
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4), (a["step"], a["grad_norm"], b["grad_norm"])


def test_the_pipeline_runs_end_to_end_on_jax(tmp_path):
    # `gpt2ja run` of the demo with train.backend: jax: train, evaluate (+ samples) and export all on JAX
    import yaml

    config = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    config["root"] = str(tmp_path / "root")
    config["crawl"][0]["serve_mirror"] = str(REPO / "examples" / "aozora-mirror")
    config["train"].update(backend="jax", steps=20, warmup_steps=4, log_every=5, eval_every=10, checkpoint_every=10)
    path = tmp_path / "demo-jax.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    got = procs.run(
        [sys.executable, "-m", "gpt2ja", "run", str(path)],
        cwd=tmp_path,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"},
    )
    out = got.stdout + got.stderr
    assert got.returncode == 0, out[-4000:]
    assert "JAX on 1 cpu device(s)" in out and "pipeline done" in out
    run = tmp_path / "root" / "runs" / config["run"]
    assert json.loads((run / "hparams.json").read_text())["train"]["backend"] == "jax"
    assert json.loads((run / "checkpoints" / "checkpoint").read_text())["latest"] == "ckpt-20.npz"
    assert json.loads((run / "eval" / "eval.json").read_text())["bits_per_character"] > 0
    assert (run / "export" / "hf" / "model.safetensors").exists()
    assert "logits equal to the run's within" in out
