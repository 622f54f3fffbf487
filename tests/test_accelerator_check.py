"""benchmarks/accelerator_check.sh end to end on CPU (`--cpu-smoke`): the accelerator check must work the first time.

The same script runs on a GPU or TPU machine with real sizes; here every step
runs at tiny sizes: device report, model_bench, shards from the bundled mirror,
training killed after its first checkpoint and resumed, evaluation with the PPMd
baselines, the Hugging Face export.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import procs

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_accelerator_check_runs_end_to_end_on_cpu(tmp_path):
    report = tmp_path / "report.md"
    got = procs.run(["bash", str(REPO / "benchmarks" / "accelerator_check.sh"), "--cpu-smoke", "--report", str(report)],
                    cwd=tmp_path)
    assert got.returncode == 0, (got.stdout + got.stderr)[-4000:]
    text = report.read_text()
    for heading in ("## 1. Device", "## 2. Training speed and MFU", "## 3. Training tiny", "## 4. Evaluation"):
        assert heading in text
    assert "| tiny |" in text and "MFU vs measured matmul" in text
    assert "SIGKILL after checkpoint" in text and "without a gap or repeat" in text
    assert "ppmd_order8_bits_per_character" in text and "logits checked against transformers" in text
    assert text.rstrip().endswith("All four steps passed.")
    assert not list(Path("/tmp").glob(f"gpt2ja-accelerator-check-*/root/runs/check/checkpoints"))  # cleaned up
