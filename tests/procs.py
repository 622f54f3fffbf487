"""Subprocesses for tests: no wall-clock limit of their own, and nothing left running when a test ends early.

A fixed ``timeout=`` on a subprocess is a guess about the machine; on a loaded
2-core machine it is missed by runs that are merely slow. Tests run their
commands through :func:`run` instead: the only limit is pytest-timeout's (per
test, set in ``pyproject.toml``), and when the test ends early — that timeout,
a failed assertion in a reader thread, a Ctrl-C — the command's whole process
group (its Prefect server, its workers) is killed before the exception goes on.
"""

from __future__ import annotations

import os
import signal
import subprocess

# Where a library insists on a startup limit (Prefect's test harness and its ephemeral server), it is
# pytest-timeout's per-test limit: a slow start on a loaded machine is not a failure of its own.
STARTUP_LIMIT_S = 600


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True, **kwargs)`` in its own process group, reaped on exit."""
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    capture = kwargs.pop("capture_output")
    if capture:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
    proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
    try:
        out, err = proc.communicate()
    except BaseException:
        kill_group(proc)
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group a ``start_new_session`` process leads, then reap the leader."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
