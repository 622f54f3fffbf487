"""``tf.distribute`` strategies by name, and which host this process is.

``default`` is the CPU or the one visible GPU; ``mirrored`` all local GPUs
(or CPU devices, as in the tests); ``multi_worker`` reads the cluster from
``TF_CONFIG`` (one process per host, the chief writes the run directory);
``tpu`` connects to the TPU named by ``tpu`` ("" on a TPU VM).

Example::

    strategy = make_strategy("mirrored")
    worker, workers, chief = worker_info(strategy)     # (0, 1, True) on one host
"""

from __future__ import annotations

from gpt2ja.infra.errors import Gpt2jaError


class StrategyError(Gpt2jaError, ValueError):
    """A strategy that cannot be set up: one line naming it and the fix."""


def make_strategy(kind: str, tpu: str | None = None):
    """The ``tf.distribute`` strategy named ``kind``: default, mirrored, multi_worker or tpu."""
    import tensorflow as tf

    if kind == "default":
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind != "tpu":
        raise StrategyError(f"unknown strategy {kind!r}; use default, mirrored, multi_worker or tpu")
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError) as err:
        raise StrategyError(
            f"strategy tpu: no TPU reachable as {tpu or 'this VM'!r} ({err}); run on a TPU VM "
            "or set tpu to the TPU's name"
        ) from None
    return tf.distribute.TPUStrategy(resolver)


def worker_info(strategy) -> tuple[int, int, bool]:
    """(this host's index, number of hosts, whether this host is the chief that writes the run directory)."""
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 0, 1, True
    resolver = strategy.cluster_resolver
    spec = resolver.cluster_spec().as_dict() if resolver else {}
    if not spec:
        return 0, 1, True
    chiefs = len(spec.get("chief", []))
    index = resolver.task_id + (chiefs if resolver.task_type == "worker" else 0)
    return index, chiefs + len(spec.get("worker", [])), index == 0
