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
