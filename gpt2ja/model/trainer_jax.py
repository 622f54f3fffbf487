"""The JAX backend of :func:`~gpt2ja.model.train.train`: same model, data order, schedule, checkpoints; no TensorFlow.

What differs from :mod:`gpt2ja.model.trainer` (TensorFlow) is how a step runs; what
it computes is the same: the KerasHub GPT-2 built from the same preset, AdamW
from :func:`gpt2ja.model.optim.make_optimizer` (decay on the matmul kernels only, the
warmup-cosine schedule of its own step counter), the summed NLL of every
micro-batch of the global batch divided by the scored targets (an exact masked
mean however the batch is split), global-norm clipping as
``tf.clip_by_global_norm`` does it (``g · c / max(‖g‖, c)``), the global data
order of :mod:`gpt2ja.model.data_order` read without TensorFlow
(:func:`gpt2ja.model.data_order.train_batches`), and :mod:`gpt2ja.model.checkpoint` files.

One optimizer step is one call of one jitted function::

    step(trainable, non_trainable, optimizer, inputs, targets)        inputs, targets: (accum, micro, T) int32
      lax.scan over the accum micro-batches:
        value_and_grad of GPT2CausalLM.stateless_call(..., training=True)  (dropout from the non-trainable
        seed states, which the scan carries: the same masks on a resume)   → gradients summed in float32
      × expected / scored, clip, AdamW.stateless_apply                     → new trainable, non-trainable, optimizer
    donate_argnums=(0, 1, 2): the step overwrites the state's buffers in place (no second copy of the weights)

Precision: ``mixed_precision: bf16`` is Keras' ``mixed_bfloat16`` policy
(float32 variables and optimizer, bfloat16 matmuls and activations; logits
cast to float32 for the loss). Attention: with dropout 0 (``tiny``, ``micro``,
``mini``, or ``--set dropout=0``) Keras' MultiHeadAttention calls
``keras.ops.dot_product_attention``, on JAX ``jax.nn.dot_product_attention``
(XLA's fused attention; cuDNN's with ``keras.config.enable_flash_attention()``
where it accepts the mask); with attention dropout > 0 it computes the scores
explicitly to drop some of them (the presets from ``small`` up have 0.1).

Devices: every device JAX sees. With more than one,
``keras.distribution.DataParallel`` replicates the variables and each batch
is split along its micro-batch axis (XLA inserts the gradient all-reduce).
Several hosts: every host runs the same command; ``jax.distributed`` is
started from ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and
``JAX_PROCESS_ID`` when they are set, or by JAX's own detection on a Cloud TPU
slice that lists several hosts in ``TPU_WORKER_HOSTNAMES`` (and anywhere with
``GPT2JA_JAX_DISTRIBUTED=auto``: SLURM, Open MPI, a TPU VM that does not set it);
each host reads the global stream and keeps its rows of every global batch
(the rule of :mod:`gpt2ja.model.data_order`), and process 0 is the chief that writes
the run directory. Tested here on JAX's CPU build, one and two devices.

Example::

    cfg = TrainConfig(data="data/shards/sp8k-1024", run="data/runs/r1", preset="small", backend="jax",
                      mixed_precision="bf16", batch_tokens=524_288, micro_batch=16, steps=20_000)
    gpt2ja.model.train.train(cfg)      # dispatches here
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple

from gpt2ja.model import backend, checkpoint, runs, summaries
from gpt2ja.model.data import DataError
from gpt2ja.model.optim import make_optimizer
from gpt2ja.model.train_config import Plan, TrainConfig, TrainError
from gpt2ja.model.trainer import Runtime, Steps, host_dir, resume_or_start

__all__ = ["JaxSession", "build_session", "make_steps", "start_runtime"]

_DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


class JaxSession(NamedTuple):
    """What one host trains with: the Keras model (for its structure) and the state as JAX arrays."""

    local: str  # the run directory on this host (chief), or a scratch directory (other hosts)
    lm: Any  # keras_hub GPT2CausalLM (its variables hold the state at checkpoints and samples)
    opt: Any  # AdamW (gpt2ja.model.optim), built for lm's trainable variables
    state: dict  # {"trainable", "non_trainable", "optimizer"}: lists of jax arrays, the live state
    start: int  # optimizer steps done (from the checkpoint)
    examples: int  # examples of the global order consumed at ``start``
    train_ds: Any  # gpt2ja.model.data_order.train_batches: this host's (rows, seq_len) numpy pairs
    val_ds: list | None  # the eval_batches validation batches, each scored at every evaluation
    ckpt_dir: str
    board: Any  # gpt2ja.model.summaries.TensorBoard (chief), None on other hosts
    mesh: Any  # the devices as one "batch" axis (batches are split along it); None on one device


def _start_distributed() -> None:
    """``jax.distributed.initialize`` for a job of several hosts: from the environment, or a TPU slice's own."""
    import jax

    given = [os.environ.get(k) for k in _DISTRIBUTED_ENV]
    if any(given):
        if not all(given):
            raise TrainError(
                f"set all of {', '.join(_DISTRIBUTED_ENV)} for a JAX job of several hosts (set: "
                f"{', '.join(k for k, v in zip(_DISTRIBUTED_ENV, given) if v)})"
            )
        try:  # CPU hosts (the tests) exchange gradients through gloo; GPUs and TPUs ignore the setting
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        except (AttributeError, ValueError):
            pass
        jax.distributed.initialize(coordinator_address=given[0], num_processes=int(given[1]), process_id=int(given[2]))
    elif "," in os.environ.get("TPU_WORKER_HOSTNAMES", "") or os.environ.get("GPT2JA_JAX_DISTRIBUTED") == "auto":
        jax.distributed.initialize()  # a Cloud TPU slice (or a cluster JAX detects: SLURM, Open MPI, …)


def start_runtime(cfg: TrainConfig) -> Runtime:
    """Keras on JAX, ``jax.distributed`` for several hosts, the devices and how a micro-batch splits over them."""
    backend.use("jax")  # a BackendError's line is complete: it propagates as it is
    import jax

    if cfg.mixed_precision == "fp16":
        raise TrainError("mixed_precision fp16 (loss scaling) is the TensorFlow backend's; on JAX use bf16")
    _start_distributed()
    import keras

    devices = jax.devices()
    replicas, workers, worker = len(devices), jax.process_count(), jax.process_index()
    if cfg.micro_batch % replicas:
        raise TrainError(
            f"micro_batch {cfg.micro_batch} is not divisible by the {replicas} JAX devices; use a "
            f"multiple of {replicas}"
        )
    if replicas > 1:
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    platform = devices[0].platform
    return Runtime(
        strategy=None,
        replicas=replicas,
        worker=worker,
        workers=workers,
        chief=worker == 0,
        local_replicas=jax.local_device_count(),
        per_replica=cfg.micro_batch // replicas,
        accelerated=platform != "cpu",
        platform=platform,
    )


# ----------------------------------------------------------------- build


def build_session(cfg: TrainConfig, rt: Runtime, plan: Plan, say: Callable[[str], None]) -> JaxSession:
    """Model, optimizer, state, data and TensorBoard of this host, resumed from the newest checkpoint (or init_from)."""
    import keras

    from gpt2ja.model import data as data_mod
    from gpt2ja.model import data_order, gpt2

    local = host_dir(cfg, rt)
    keras.utils.set_random_seed(cfg.seed)
    lm = gpt2.build_model(plan.model_cfg, dtype="mixed_bfloat16" if cfg.mixed_precision == "bf16" else None)
    opt = make_optimizer(cfg, lm)
    start, examples = resume_or_start(cfg, rt, plan, lm, opt, local, say)

    state = {
        "trainable": [v.value for v in lm.trainable_variables],
        "non_trainable": [v.value for v in lm.non_trainable_variables],
        "optimizer": [v.value for v in opt.variables],
    }
    train_ds = data_order.train_batches(
        cfg.data,
        global_batch=plan.accum * cfg.micro_batch,
        workers=rt.workers,
        worker=rt.worker,
        start_example=examples,
        seed=cfg.seed,
        shuffle_buffer=cfg.shuffle_buffer,
        trace_dir=cfg.trace_examples,
    )
    val_ds = None
    if cfg.eval_batches > 0 and any(f.get("split") == "validation" for f in plan.manifest["files"]):
        stream = data_mod.validation_batches(
            cfg.data, cfg.micro_batch // rt.workers, num_input_pipelines=rt.workers, input_pipeline_id=rt.worker
        )
        val_ds = [next(stream) for _ in range(cfg.eval_batches)]
        stream.close()
    board = None
    if rt.chief:
        board = summaries.TensorBoard(
            os.path.join(local, runs.TENSORBOARD_DIR),
            batch_tokens=cfg.batch_tokens,
            by_tokens=cfg.tensorboard_by_tokens,
        )
    return JaxSession(
        local=local,
        lm=lm,
        opt=opt,
        state=state,
        start=start,
        examples=examples,
        train_ds=train_ds,
        val_ds=val_ds,
        ckpt_dir=os.path.join(local, runs.CHECKPOINT_DIR),
        board=board,
        mesh=_mesh(rt),
    )


def _mesh(rt: Runtime):
    """Every device on one axis, ``batch``, as keras.distribution.DataParallel lays them (None on one device)."""
    if rt.replicas == 1:
        return None
    import jax
    import numpy as np
    from jax.sharding import Mesh

    return Mesh(np.asarray(jax.devices()), ("batch",))


# ----------------------------------------------------------------- the jitted steps


def _loss_sum(logits, targets):
    """(sum of NLL over targets ≥ 0, their count) in float32: :func:`gpt2ja.model.gpt2.causal_lm_loss_sum` in jnp.

    Its own because Keras' JAX ``sparse_categorical_crossentropy`` one-hot encodes the targets: a
    ``(B, T, V)`` float32 tensor, 3.3 GB for 16 × 1024 targets over GPT-2's 50,304 ids, per micro-batch.
    Here the target's logit is gathered (``take_along_axis``) beside one ``logsumexp``.
    """
    import jax
    import jax.numpy as jnp

    logits = logits.astype(jnp.float32)
    mask = targets >= 0
    safe = jnp.where(mask, targets, 0)
    picked = jnp.take_along_axis(logits, safe[..., None], axis=-1)[..., 0]
    nll = (jax.nn.logsumexp(logits, axis=-1) - picked) * mask
    return jnp.sum(nll), jnp.sum(mask.astype(jnp.float32))


def make_step(cfg: TrainConfig, lm, opt, *, accum: int) -> Callable:
    """``step(trainable, non_trainable, optimizer, inputs, targets) → (…state, loss, grad norm)``, jitted, donating."""
    import jax
    import jax.numpy as jnp

    expected = float(cfg.batch_tokens)  # scored targets per step when none is ignored
    clip = float(cfg.clip_norm)

    def objective(trainable, non_trainable, x, y):
        out, non_trainable = lm.stateless_call(
            trainable, non_trainable, {"token_ids": x, "padding_mask": jnp.ones_like(x)}, training=True
        )
        total, n = _loss_sum(out, y)
        return total / expected, (non_trainable, total, n)

    grad = jax.value_and_grad(objective, has_aux=True)

    def step(trainable, non_trainable, optimizer, inputs, targets):
        def micro(carry, batch):  # one micro-batch: (micro, T) ids and targets
            grads, non_trainable, nll, count = carry
            (_, (non_trainable, total, n)), g = grad(trainable, non_trainable, *batch)
            grads = [a + b.astype(jnp.float32) for a, b in zip(grads, g)]
            return (grads, non_trainable, nll + total, count + n), None

        zeros = [jnp.zeros(v.shape, jnp.float32) for v in trainable]
        carry = (zeros, non_trainable, jnp.float32(0.0), jnp.float32(0.0))
        (grads, non_trainable, nll, count), _ = jax.lax.scan(micro, carry, (inputs, targets), length=accum)
        correction = expected / jnp.maximum(count, 1.0)  # exactly 1.0 unless targets were ignored
        grads = [g * correction for g in grads]
        norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in grads))
        if clip > 0:
            grads = [g * (clip / jnp.maximum(norm, clip)) for g in grads]
        trainable, optimizer = opt.stateless_apply(optimizer, grads, trainable)
        return trainable, non_trainable, optimizer, nll / jnp.maximum(count, 1.0), norm

    return jax.jit(step, donate_argnums=(0, 1, 2))


def make_eval(lm) -> Callable:
    """``evaluate(trainable, non_trainable, inputs, targets) → (NLL sum, scored targets)``, jitted (no dropout)."""
    import jax
    import jax.numpy as jnp

    def evaluate(trainable, non_trainable, x, y):
        out, _ = lm.stateless_call(
            trainable, non_trainable, {"token_ids": x, "padding_mask": jnp.ones_like(x)}, training=False
        )
        return _loss_sum(out, y)

    return jax.jit(evaluate)


def _put(array, mesh, axis: int, workers: int):
    """A host's numpy batch as a (global) device array: whole on one device, else split along ``axis`` over the
    devices of every host (each host holds its rows of every micro-batch: :mod:`gpt2ja.model.data_order`'s rule)."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    if mesh is None:
        return jax.device_put(array)
    sharding = NamedSharding(mesh, PartitionSpec(*([None] * axis), "batch"))
    if workers == 1:
        return jax.device_put(array, sharding)
    shape = list(array.shape)
    shape[axis] *= workers
    return jax.make_array_from_process_local_data(sharding, array, tuple(shape))


def make_steps(cfg: TrainConfig, rt: Runtime, plan: Plan, s: JaxSession) -> Steps:
    """The jitted step and evaluation, the checkpoints and the model sync, as :func:`~.trainer.run_loop` drives."""
    import jax.numpy as jnp
    import numpy as np

    accum, host_micro = plan.accum, cfg.micro_batch // rt.workers
    step = make_step(cfg, s.lm, s.opt, accum=accum)
    evaluate = make_eval(s.lm)
    done = {"examples": s.examples}  # the data position of the newest step, for its checkpoint
    global_batch = accum * cfg.micro_batch

    def next_batch():
        try:
            inputs, targets = next(s.train_ds)
        except DataError as err:
            raise TrainError(f"{err}; the run's last checkpoint is kept, so the same command resumes it") from None
        shape = (accum, host_micro, inputs.shape[-1])  # micro-batch i = this host's rows i·m … (i+1)·m - 1
        return (
            _put(np.ascontiguousarray(inputs.reshape(shape)), s.mesh, 1, rt.workers),
            _put(np.ascontiguousarray(targets.reshape(shape)), s.mesh, 1, rt.workers),
        )

    def train(n: int) -> tuple:
        st = s.state
        loss_sum, loss, norm = jnp.float32(0.0), None, None
        for _ in range(n):  # each call is dispatched asynchronously: reading the next batch overlaps the step
            inputs, targets = next_batch()
            st["trainable"], st["non_trainable"], st["optimizer"], loss, norm = step(
                st["trainable"], st["non_trainable"], st["optimizer"], inputs, targets
            )
            loss_sum = loss_sum + loss
            done["examples"] += global_batch
        return float(loss_sum), float(loss), float(norm)

    validation_loss = None
    if s.val_ds is not None:
        val = [(_put(x, s.mesh, 0, rt.workers), _put(y, s.mesh, 0, rt.workers)) for x, y in s.val_ds]

        def validation_loss() -> float:
            total, count = 0.0, 0.0
            for x, y in val:
                t, c = evaluate(s.state["trainable"], s.state["non_trainable"], x, y)
                total, count = total + float(t), count + float(c)
            return total / max(count, 1.0)

    def save(at: int) -> None:
        if not rt.chief:
            return
        st = s.state
        arrays = {
            **checkpoint.model_arrays(s.lm, _gather(st["trainable"])),
            **checkpoint.optimizer_arrays(s.opt, _gather(st["optimizer"])),
            **checkpoint.rng_arrays(_gather(_rng_values(s.lm, st["non_trainable"]))),
        }
        checkpoint.save(s.ckpt_dir, at, arrays, examples=done["examples"], backend="jax", keep=cfg.keep_checkpoints)

    def sync() -> None:
        """Copies of the state into the Keras variables (the step donates its own buffers): for samples."""
        for v, x in zip(s.lm.trainable_variables, s.state["trainable"]):
            v.assign(jnp.copy(x))
        for v, x in zip(s.lm.non_trainable_variables, s.state["non_trainable"]):
            v.assign(jnp.copy(x))

    return Steps(start=s.start, train=train, validation_loss=validation_loss, save=save, sync=sync)


def _rng_values(lm, non_trainable: list) -> list:
    """The dropout states among the non-trainable state, in :func:`gpt2ja.model.checkpoint.rng_variables` order."""
    index = {id(v): i for i, v in enumerate(lm.non_trainable_variables)}
    return [non_trainable[index[id(v)]] for v in checkpoint.rng_variables(lm)]


def _gather(arrays: list) -> list:
    """Host numpy copies of device arrays (replicated ones: this host's copy)."""
    import jax
    import numpy as np

    out = []
    for x in arrays:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            x = x.addressable_shards[0].data  # replicated state: every host holds all of it
        out.append(np.asarray(jax.device_get(x)))
    return out
