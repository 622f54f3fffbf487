"""Where the data stages run their parts: a Prefect task runner chosen in config.

The clean and shards stages split their work into parts (a raw part to clean, a
part to write, a shard to encode). With ``kind: local`` (the default) the
package functions run the parts in their own process pool, exactly as
``gpt2ja clean`` and ``gpt2ja shards`` do. Any other kind makes each part one
Prefect task run on a task runner::

    kind       runner                                                  n_workers (default: the stage's `workers`)
    threads    prefect ThreadPoolTaskRunner                            threads
    processes  prefect ProcessPoolTaskRunner                           processes on this machine
    dask       prefect_dask DaskTaskRunner: with `address`, a running   LocalCluster worker processes
               scheduler (any Dask cluster); without, a LocalCluster   (one thread each; not with `address`)
               started for the stage and stopped after it

Set on the ``clean`` and ``shards`` sections, or once at the top level of the
pipeline config for both::

    task_runner: {kind: dask, address: tcp://10.0.0.5:8786}
    shards: {seq_len: 1024, task_runner: {kind: dask, n_workers: 8}}   # a section's own wins

The outputs are byte-identical whichever runner builds them (each part's files
depend only on the part; results come back in part order; tested on a Dask
LocalCluster), so the runner is not part of any fingerprint. The workers of a
remote Dask cluster need this package installed and the run root on storage
they all reach (``gs://``). Nothing starts when a stage is up to date.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gpt2ja.infra.errors import Gpt2jaError

# tcp://host:port or tls://host:port; host a name, an IPv4 address or a [bracketed] IPv6 address
_ADDRESS_RE = re.compile(r"^(tcp|tls)://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):(\d{1,5})$")


class TaskRunnerError(Gpt2jaError, RuntimeError):
    """The task runner cannot start or lost a worker (one line: what, where, what to do)."""


class TaskRunnerConfig(BaseModel):
    """Where a data stage runs its parts (see the module docstring).

    Example::

        TaskRunnerConfig()                                             # the package's own process pool
        TaskRunnerConfig(kind="dask", n_workers=4)                     # a LocalCluster of 4 processes
        TaskRunnerConfig(kind="dask", address="tcp://10.0.0.5:8786")   # a running Dask cluster
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["local", "threads", "processes", "dask"] = Field(
        "local",
        description="local: the stage's own process pool; threads / processes / dask: one Prefect task "
        "per part on that task runner",
    )
    address: str | None = Field(
        None,
        description="dask: the scheduler of a running cluster, tcp://host:port "
        "(omit: start a LocalCluster for the stage)",
    )
    n_workers: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="threads, processes or LocalCluster workers (default: the stage's workers setting)",
    )
    connect_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="dask: give up reaching the scheduler after this many seconds"
    )

    @field_validator("address")
    @classmethod
    def _tcp_address(cls, value: str | None) -> str | None:
        if value is not None:
            m = _ADDRESS_RE.match(value)
            if not m or not 0 < int(m.group(3)) < 65536:
                raise ValueError(
                    f"{value!r} is not a Dask scheduler address; write tcp://host:port, "
                    "e.g. tcp://10.0.0.5:8786 (the address `dask scheduler` prints)"
                )
        return value

    @model_validator(mode="after")
    def _fields_of_the_kind(self) -> "TaskRunnerConfig":
        if self.address is not None and self.kind != "dask":
            raise ValueError(f"address is for kind dask, not {self.kind}; set kind: dask or drop address")
        if self.n_workers is not None and self.kind == "local":
            raise ValueError(
                "n_workers is not used by kind local (the stage's own pool): set the stage's "
                "workers instead, or choose kind threads, processes or dask"
            )
        if self.n_workers is not None and self.address is not None:
            raise ValueError(
                f"n_workers: the cluster at {self.address} has its own workers; drop n_workers, "
                "or drop address to start a LocalCluster of n_workers processes"
            )
        return self

    def describe(self, workers: int) -> str:
        """Where the parts run, in words (for the logs)."""
        n = self.n_workers or workers
        return {
            "local": f"a local pool of {workers} process(es)",
            "threads": f"{n} thread(s)",
            "processes": f"{n} process(es)",
            "dask": f"the Dask cluster at {self.address}"
            if self.address
            else f"a Dask LocalCluster of {n} process(es)",
        }[self.kind]


def build_task_runner(cfg: TaskRunnerConfig, workers: int):
    """The Prefect task runner of ``cfg`` (not started), or None for ``kind: local``.

    ``workers`` is the stage's own worker count: the size of a pool or LocalCluster
    when ``cfg.n_workers`` is not set.

    Example::

        with build_task_runner(TaskRunnerConfig(kind="threads"), workers=4) as runner:
            runner.submit(some_task, {"x": 1}).result()
    """
    n = cfg.n_workers or workers
    if cfg.kind == "local":
        return None
    if cfg.kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=n)
    if cfg.kind == "processes":
        try:
            from prefect.task_runners import ProcessPoolTaskRunner
        except ImportError:
            raise TaskRunnerError(
                "task_runner kind processes needs a Prefect with ProcessPoolTaskRunner: "
                "pip install -U prefect, or choose kind local or dask"
            ) from None
        return ProcessPoolTaskRunner(max_workers=n)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise TaskRunnerError("task_runner kind dask needs prefect-dask: pip install 'prefect-dask>=0.3'") from None
    client_kwargs = {"timeout": f"{cfg.connect_timeout_s}s"}
    if cfg.address:
        return DaskTaskRunner(address=cfg.address, client_kwargs=client_kwargs)
    # processes, one thread each: the parts are CPU-bound Python (the GIL) and TensorFlow writers;
    # the scheduler's HTTP server (dashboard) on a free port: two clusters would fight over the fixed 8787
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={"n_workers": n, "processes": True, "threads_per_worker": 1, "dashboard_address": ":0"},
        client_kwargs=client_kwargs,
    )


class PartMapper:
    """A ``map_parts`` for :func:`gpt2ja.corpus.clean.run_clean` and :func:`gpt2ja.tokenization.shards.write_shards`.

    Each call ``mapper(fn, items, names)`` submits one run of ``task`` per item
    (``task(stage=…, fn=fn, item=item, name=f"{stage}-{name}")``, which returns
    ``fn(item)``) to the runner of ``cfg``, waits for all of them, and returns
    their results in the order of ``items``; a failed part raises its error once
    every part has finished. The runner starts on the first call, so a stage that
    skips starts no cluster, and stops when the ``with`` block ends.

    Example::

        with PartMapper(TaskRunnerConfig(kind="dask", n_workers=2), part_task, "clean", workers=2) as map_parts:
            run_clean(cfg, map_parts=map_parts)
    """

    def __init__(self, cfg: TaskRunnerConfig, task, stage: str, workers: int) -> None:
        self.cfg, self.task, self.stage, self.workers = cfg, task, stage, workers
        self._runner = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "PartMapper":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the runner (a LocalCluster it started goes with it)."""
        self._runner = None
        self._stack.close()

    def _start(self):
        if self._runner is None:
            runner = build_task_runner(self.cfg, self.workers)
            if runner is None:
                raise TaskRunnerError(
                    "task_runner kind local runs the parts in the stage's own pool; there is nothing to map them on"
                )
            self._stack.enter_context(runner)
            if self.cfg.kind == "dask":
                try:
                    runner.client  # connect now (or start the LocalCluster): a failure is one line here
                except OSError as err:  # a timeout or a refused connection
                    where = f"the Dask scheduler at {self.cfg.address}" if self.cfg.address else "a Dask LocalCluster"
                    raise TaskRunnerError(
                        f"cannot reach {where} ({_first_line(err)}); start it (`dask scheduler` "
                        "and `dask worker ADDRESS`) or fix task_runner.address"
                    ) from None
            self._runner = runner
        return self._runner

    def __call__(self, fn: Callable[[Any], Any], items: list, names: list[str]) -> list:
        if not items:
            return []
        from prefect.futures import wait

        runner = self._start()
        _logger().info(
            "%s: %d part(s) of %s on %s",
            self.stage,
            len(items),
            fn.__name__.strip("_"),
            self.cfg.describe(self.workers),
        )
        futures = [
            runner.submit(self.task, {"stage": self.stage, "fn": fn, "item": item, "name": f"{self.stage}-{name}"})
            for item, name in zip(items, names)
        ]
        wait(futures)  # every part finishes (and writes its completion record) before an error is raised
        results = []
        for name, future in zip(names, futures):
            try:
                results.append(future.result())
            except Exception as err:  # noqa: BLE001 - a lost worker becomes one line; a part's own error passes
                if type(err).__name__ in ("KilledWorker", "BrokenProcessPool"):
                    raise TaskRunnerError(
                        f"a worker died while running {self.stage}-{name} (killed for memory?); "
                        "rerun: finished parts are kept; give the workers more memory or use "
                        "fewer per machine"
                    ) from None
                raise
        return results


def _logger():
    """The run's logger inside a flow or task run (the UI shows it), else the module's."""
    import logging

    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("gpt2ja.runners")


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]
