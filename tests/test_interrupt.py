"""Ctrl-C and SIGKILL of `gpt2ja run`: one line and exit 130, or a kill, and no process left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from gpt2ja.infra import stage
from tests.corpora import data_pipeline_config

pytestmark = pytest.mark.slow


def _held_run(tmp_path: Path, config: Path) -> tuple[subprocess.Popen, list[psutil.Process]]:
    """`gpt2ja run` held in its shards stage (a terminal's Ctrl-C reaches it); its descendants then."""
    gate = tmp_path / "gate"
    env = {**os.environ, "GPT2JA_STAGE_HOLD": f"shards={gate}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpt2ja", "run", str(config)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    while not Path(str(gate) + ".held").exists():
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    return proc, psutil.Process(proc.pid).children(recursive=True)


def _gone(processes: list[psutil.Process]) -> list[psutil.Process]:
    """The processes still running after a while (they should end by themselves: a bounded wait)."""
    _, alive = psutil.wait_procs(processes, timeout=60)
    alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    for p in alive:
        p.kill()
    return alive


def test_ctrl_c_ends_a_run_with_one_line_and_the_rerun_resumes(tmp_path):
    config = data_pipeline_config(tmp_path)
    proc, helpers = _held_run(tmp_path, config)
    assert any("uvicorn" in " ".join(p.cmdline()) for p in helpers)  # Prefect's temporary server
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate()
    assert proc.returncode == 130
    assert "Traceback" not in err and "Crash detected! Execution was aborted by an interrupt signal" in err
    assert "error: interrupted; rerun the same command to resume" in err  # our one line, after Prefect's
    assert _gone(helpers) == []
    done = subprocess.run(
        [sys.executable, "-m", "gpt2ja", "run", str(config)], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "skipped (up to date): crawl, clean, tokenizer" in done.stdout + done.stderr
    assert stage.verify(str(tmp_path / "root" / "datasets" / "aozora-demo" / "sp3000-128"), deep=True)[1] == []


def test_a_killed_run_leaves_no_prefect_server_behind(tmp_path):
    proc, helpers = _held_run(tmp_path, data_pipeline_config(tmp_path))
    assert any("uvicorn" in " ".join(p.cmdline()) for p in helpers)
    proc.send_signal(signal.SIGKILL)  # nobody tells its children: the watchdog ends them
    proc.communicate()
    assert _gone(helpers) == []
