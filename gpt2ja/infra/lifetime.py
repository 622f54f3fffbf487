"""Worker processes end with the process that started them.

A stage's process pool (clean's parts, the shards' encoders) is started with
``initializer=die_with_parent``. When the stage's process is killed (SIGKILL:
an OOM kill, a preempted VM, a test timeout) nobody tells its workers; without
this they would live on, orphaned, holding memory and cores. On Linux the kernel
sends them SIGKILL when their parent ends (``PR_SET_PDEATHSIG``); elsewhere a
daemon thread polls the parent's pid.

Example::

    ProcessPoolExecutor(max_workers=4, mp_context=multiprocessing.get_context("spawn"),
                        initializer=die_with_parent)
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Make this (worker) process end when its parent does; a pool initializer."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
            if os.getppid() != parent:  # the parent died before the call: no signal will come
                os._exit(1)
            return
    threading.Thread(target=_watch, args=(parent,), name="die-with-parent", daemon=True).start()


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def reap_when_gone() -> None:
    """Start a watchdog that ends this process's descendants once this process is gone, even by SIGKILL.

    For commands whose libraries start helpers we cannot configure (Prefect's
    temporary API server, started by Prefect in ephemeral mode): without it a
    killed ``gpt2ja run`` or ``demo`` leaves that server running. The watchdog
    runs in its own session (a Ctrl-C to the terminal does not reach it), notes
    the descendants every second, and after the process has ended sends them
    SIGTERM, then SIGKILL to any left after 10 s; it ends with them.
    """
    import subprocess

    subprocess.Popen(
        [sys.executable, "-m", "gpt2ja.infra.lifetime", str(os.getpid())],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        close_fds=True,
    )


def _reaper(pid: int) -> None:
    import psutil

    try:
        watched = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    me, seen = os.getpid(), {}
    while True:
        try:
            if watched.status() == psutil.STATUS_ZOMBIE:
                break
            for child in watched.children(recursive=True):
                if child.pid != me:
                    seen[child.pid] = child  # a Process remembers its start time: a reused pid is not it
        except psutil.NoSuchProcess:
            break
        time.sleep(1.0)
    alive = [p for p in seen.values() if p.is_running()]
    for p in alive:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(alive, timeout=10)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


if __name__ == "__main__":
    _reaper(int(sys.argv[1]))
