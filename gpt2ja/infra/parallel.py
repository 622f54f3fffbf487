"""Per-part work in local processes: the default mapper of the stages that run parts (clean, shards, warc).

A stage hands its parts to a :data:`MapParts`. The Prefect flows pass one that
runs each part as a task on the configured task runner (threads, processes, a
Dask cluster); on the command line the default is :func:`pool_map`, a spawn
process pool whose workers die with the stage (:func:`gpt2ja.infra.lifetime.die_with_parent`).
A worker killed under it (the OOM killer) is one :class:`WorkerDied` line, not
a ``BrokenProcessPool`` traceback; the stage's finished parts are kept.

Example::

    pool_map(2)(len, ["ab", "c"], ["a", "b"])   # [2, 1]
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from gpt2ja.infra.errors import Gpt2jaError
from gpt2ja.infra.lifetime import die_with_parent

#: ``map_parts(fn, items, names)`` → ``[fn(item) for item in items]``, in the order of ``items``,
#: wherever the caller runs them; ``names`` label the calls (``"filter-00003"``, ``"write-00003"``).
#: ``fn`` is a module-level function and ``items`` are plain data, so both pickle.
MapParts = Callable[[Callable[[Any], Any], list, list[str]], list]


class WorkerDied(Gpt2jaError):
    """A worker process of the local pool ended without an answer (killed for memory, most often)."""


def pool_map(workers: int) -> "PoolMap":
    """The default :data:`MapParts`: a spawn process pool of up to ``workers`` processes per call."""
    return PoolMap(workers)


class PoolMap:
    """:func:`pool_map`'s mapper. It also takes ``on_done(result)``, called in this (the parent)
    process as each item finishes, in completion order: a stage's progress advances from
    there, never from the workers."""

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def __call__(
        self, fn: Callable[[Any], Any], items: list, names: list[str], on_done: Callable[[Any], None] | None = None
    ) -> list:
        if not items:
            return []
        results: list = [None] * len(items)
        # spawn, not fork: a forked child would share the parent's GCS client and its threads;
        # die_with_parent: a killed stage leaves no orphan workers
        pool = ProcessPoolExecutor(
            max_workers=min(self.workers, len(items)),
            mp_context=multiprocessing.get_context("spawn"),
            initializer=die_with_parent,
        )
        try:
            with pool:
                futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    if on_done is not None:
                        on_done(results[futures[future]])
        except BrokenProcessPool:
            raise WorkerDied(
                "a worker process died (killed for memory?); rerun the same command with fewer "
                "workers: finished parts are kept"
            ) from None
        return results


def map_with_progress(
    map_parts: MapParts, fn: Callable[[Any], Any], items: list, names: list[str], on_done: Callable[[Any], None]
) -> list:
    """``map_parts(fn, items, names)``, calling ``on_done`` per result: as each finishes when the
    mapper can say so (:class:`PoolMap`), else once all have (a Prefect or Dask mapper)."""
    if isinstance(map_parts, PoolMap):
        return map_parts(fn, items, names, on_done=on_done)
    results = map_parts(fn, items, names)
    for result in results:
        on_done(result)
    return results
