"""benchmarks/accelerator_check.sh end to end on CPU (`--cpu-smoke`): the GPU check must work the first time.

The device machines have PyTorch, JAX and CUDA but no TensorFlow, no Keras and
no package index. The smoke run does what a device session does, at tiny
sizes: ``--prepare`` here (wheels of what the device lacks, shards of the
bundled mirror made with TensorFlow, a held-out author), then every step of the
check in a stand-in of the device (``benchmarks/device_env.py simulate``: only
the device image's packages, the carried wheels installed with ``pip install
--target``, and a ``tensorflow`` on the path whose import raises ImportError):
device report and matmul ceilings, gpt2ja's JAX train step, the PyTorch
baseline, ``gpt2ja train --backend jax`` killed after its first checkpoint,
resumed and compared bit for bit with an unbroken run, ``gpt2ja eval`` with
the PPMd baselines and ``gpt2ja export hf``. A module the JAX path imports that
is neither on the device nor carried fails here.

Needs PyPI for the wheels (``pip download``), as the project's install does.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import procs

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(900)  # about 2.5 minutes alone on two loaded cores; the suite's default is 600 s
def test_the_accelerator_check_runs_end_to_end_in_a_device_stand_in(tmp_path):
    report = tmp_path / "report.md"
    got = procs.run(
        ["bash", str(REPO / "benchmarks" / "accelerator_check.sh"), "--cpu-smoke", "--report", str(report)],
        cwd=tmp_path,
    )
    text = report.read_text() if report.exists() else ""
    assert got.returncode == 0, text[-3000:] + got.stdout[-2000:] + got.stderr[-2000:]
    for heading in (
        "## 1. Device",
        "## 2. gpt2ja's JAX train step",
        "## 3. PyTorch baseline",
        "## 4. gpt2ja train --backend jax",
        "## 5. gpt2ja eval",
    ):
        assert heading in text
    assert "import tensorflow: ImportError" in text and "tensorflow absent" in text  # the stand-in has none
    assert "| tiny | 0.8 M |" in text or "BENCHMARK BUG" in text  # the JAX step's row (or its flag)
    assert (
        "| gpt2ja, JAX (gpt2ja.model.trainer_jax.make_step) |" in text
        and "| PyTorch (benchmarks/torch_gpt2.py) |" in text
    )
    assert "SIGKILL after checkpoint" in text
    assert "weights and optimizer state: bitwise equal to the unbroken run's" in text
    assert "ppmd_order8_primed_bits_per_character" in text and "logits checked against transformers" in text
    assert "All five steps passed" in text
    assert not list(Path("/tmp").glob("gpt2ja-accelerator-smoke-*/device/data"))  # cleaned up
