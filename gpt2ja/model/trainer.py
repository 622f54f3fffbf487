"""The parts of :func:`gpt2ja.model.train.train`: runtime, session, compiled steps, loop.

:func:`gpt2ja.model.train.train` checks the inputs and computes the run's fingerprint
(a :class:`gpt2ja.model.train_config.Plan`) before TensorFlow starts; then, in this order::

    start_runtime(cfg)                   TensorFlow's options, the strategy, this host's share of a batch
      │                                  (before the run's lock: a strategy that cannot start touches nothing)
    build_session(cfg, rt, plan)         local run dir → model + AdamW + step in the strategy's scope →
      │                                  data → checkpoint managers → restore (resume) or init_from → files
    make_train_step / make_eval_step     the compiled distributed step (gradient accumulation) and eval
      │
    run_loop(...)                        steps, progress lines, metrics.jsonl, TensorBoard (gpt2ja.model.summaries),
      │                                  validation, checkpoints (a gs:// run: gpt2ja.model.run_sync uploads as it goes)
    finish(...)                          the chief's run manifest (published last by the train stage)

The chief runs everything after ``start_runtime`` as the build of the train
stage (:func:`gpt2ja.infra.stage.run_stage`), under the run's lock; the other hosts of
a multi-worker job run the same session without lock or manifest. TensorFlow
and Keras are imported inside the functions, as in :mod:`gpt2ja.model.train`.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from gpt2ja.infra import storage
from gpt2ja.model import run_sync, runs, summaries
from gpt2ja.model.distribute import make_strategy, worker_info
from gpt2ja.model.optim import lr_schedule, make_optimizer
from gpt2ja.model.train_config import Plan, TrainConfig, TrainError, TrainPaused

__all__ = [
    "Runtime",
    "Session",
    "build_session",
    "finish",
    "make_eval_step",
    "make_train_step",
    "run_loop",
    "start_runtime",
]


class Runtime(NamedTuple):
    """The strategy and how a batch splits over its replicas (made before the run's lock is taken)."""

    strategy: Any  # tf.distribute strategy
    replicas: int  # replicas in sync, all hosts
    worker: int  # this host's index among the workers
    workers: int  # hosts
    chief: bool  # this host writes the run directory
    local_replicas: int  # replicas on this host
    per_replica: int  # sequences per replica per micro-batch
    accelerated: bool = False  # GPUs or TPUs (host memory is not what limits the model)
    platform: str = "cpu"  # JAX's platform name (cpu, gpu, tpu); the TensorFlow backend's is not asked


class Steps(NamedTuple):
    """What :func:`run_loop` drives, made by a backend (this module's :func:`make_steps`, or trainer_jax's)."""

    start: int  # optimizer steps done when the session starts
    train: Callable[[int], tuple]  # n → (loss sum, last loss, last grad norm) of n steps
    validation_loss: Callable[[], float] | None  # the mean NLL over eval_batches; None without validation
    save: Callable[[int], None]  # publish the checkpoint of that step (the chief's)
    sync: Callable[[], None]  # the Keras model's variables hold the training state


class Session(NamedTuple):
    """What one host trains with: built by :func:`build_session`, restored to the newest checkpoint."""

    local: str  # the run directory on this host (chief), or a scratch directory (other workers)
    lm: Any  # keras_hub GPT2CausalLM
    opt: Any  # AdamW (gpt2ja.model.optim)
    step: Any  # tf.Variable int64: optimizer steps done (checkpointed)
    examples: Any  # tf.Variable int64: examples of the global order consumed (checkpointed)
    train_ds: Any  # tf.data: (host_rows, seq_len) int32 pairs, host_rows = local_replicas × per_replica × accum
    iterator: Any  # a plain iterator over train_ds (from ``examples`` on)
    ckpt_dir: str  # {local}/checkpoints: gpt2ja.model.checkpoint files (model, optimizer, step, examples, rng)
    val_ds: Any  # tf.data: (local_replicas × per_replica, seq_len) pairs; None without validation
    board: Any  # gpt2ja.model.summaries.TensorBoard: the summary writers (chief); None on other hosts


def start_runtime(cfg: TrainConfig) -> Runtime:
    """Set TensorFlow's options, start the strategy and split the micro-batch over its replicas."""
    # Keras, then keras_hub (gpt2ja.model.gpt2), load before the strategy starts: the order train() always had
    from gpt2ja.model import backend

    backend.use("tensorflow")  # a BackendError's line is complete: it propagates as it is
    import keras  # noqa: F401
    import tensorflow as tf

    # Grappler's AddOpsRewrite turns gradient sums inside our nested while loops (steps ×
    # micro-batches) into TemporaryVariable ops that collide between loop iterations
    # ("AlreadyExistsError … AddOpsRewrite … tmp_var … iter:1", seen on CPU with tiny/128 and
    # batch 32). Turning that one optimiser pass off costs nothing measurable here.
    tf.config.optimizer.set_experimental_options({"arithmetic_optimization": False})

    from gpt2ja.model import gpt2  # noqa: F401

    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy = make_strategy(cfg.strategy, cfg.tpu)  # a StrategyError's line is complete
    replicas = strategy.num_replicas_in_sync
    worker, workers, chief = worker_info(strategy)
    if cfg.micro_batch % replicas:
        raise TrainError(
            f"micro_batch {cfg.micro_batch} is not divisible by the {replicas} replicas of strategy "
            f"{cfg.strategy}; use a multiple of {replicas}"
        )
    accelerated = bool(tf.config.list_physical_devices("GPU")) or cfg.strategy == "tpu"
    return Runtime(
        strategy=strategy,
        replicas=replicas,
        worker=worker,
        workers=workers,
        chief=chief,
        local_replicas=replicas // workers,
        per_replica=cfg.micro_batch // replicas,
        accelerated=accelerated,
    )


# ----------------------------------------------------------------- build


def build_session(cfg: TrainConfig, rt: Runtime, plan: Plan, say: Callable[[str], None]) -> Session:
    """Model, optimizer, data and checkpoints of this host, resumed from the newest checkpoint (or init_from)."""
    import keras
    import tensorflow as tf

    from gpt2ja.model import data as data_mod
    from gpt2ja.model import data_order, gpt2

    local = host_dir(cfg, rt)

    # ---- model, optimizer, data, checkpoint
    keras.utils.set_random_seed(cfg.seed)
    dtype = {"off": None, "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}[cfg.mixed_precision]
    with rt.strategy.scope():
        lm = gpt2.build_model(plan.model_cfg, dtype=dtype)
        opt = make_optimizer(cfg, lm)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        examples = tf.Variable(0, dtype=tf.int64, trainable=False, name="examples")
    ckpt_dir = os.path.join(local, runs.CHECKPOINT_DIR)

    at_step, at_example = resume_or_start(cfg, rt, plan, lm, opt, local, say)
    step.assign(at_step)
    examples.assign(at_example)

    # ---- the training data from this run's position; then validation data, TensorBoard
    train_ds = data_order.train_dataset(
        cfg.data,
        global_batch=plan.accum * cfg.micro_batch,
        workers=rt.workers,
        worker=rt.worker,
        start_example=int(examples.numpy()),
        seed=cfg.seed,
        shuffle_buffer=cfg.shuffle_buffer,
        trace_dir=cfg.trace_examples,
    )
    val_ds = None
    if cfg.eval_batches > 0 and any(f.get("split") == "validation" for f in plan.manifest["files"]):
        val_ds = data_mod.make_dataset(
            cfg.data,
            "validation",
            rt.local_replicas * rt.per_replica,
            shuffle=False,
            deterministic=True,
            num_input_pipelines=rt.workers,
            input_pipeline_id=rt.worker,
        )
    board = None
    if rt.chief:
        board = summaries.TensorBoard(
            os.path.join(local, runs.TENSORBOARD_DIR),
            batch_tokens=cfg.batch_tokens,
            by_tokens=cfg.tensorboard_by_tokens,
        )
    return Session(
        local=local,
        lm=lm,
        opt=opt,
        step=step,
        examples=examples,
        train_ds=train_ds,
        iterator=iter(train_ds),
        ckpt_dir=ckpt_dir,
        val_ds=val_ds,
        board=board,
    )


def host_dir(cfg: TrainConfig, rt: Runtime) -> str:
    """Where this host writes: the run's local directory (the chief; a gs:// run downloaded into it to resume),
    or a scratch directory of its own (the other hosts)."""
    local = runs.local_dir(cfg.run) if rt.chief else tempfile.mkdtemp(prefix=f"gpt2ja-worker{rt.worker}-")
    if storage.is_gcs(cfg.run):  # every host resumes from the bucket (where the chief's checkpoints are)
        runs.download(cfg.run, local)
    os.makedirs(local, exist_ok=True)
    return local


def resume_or_start(
    cfg: TrainConfig, rt: Runtime, plan: Plan, lm, opt, local: str, say: Callable[[str], None]
) -> tuple[int, int]:
    """Restore the newest checkpoint into ``lm`` and ``opt`` (or init_from's weights); ``(step, examples)``.

    Every host restores the chief's newest checkpoint: its own copy (the chief; any host of a gs:// run) or
    the run directory itself (a local run, which the hosts must share); only the chief writes the run's files.
    The dropout states come back only from a checkpoint of this backend (each draws its own stream).
    """
    from gpt2ja.model import checkpoint, data_order

    path = runs.latest_checkpoint(local if rt.chief or storage.is_gcs(cfg.run) else cfg.run)
    if path is None:
        if plan.init_prefix:
            runs.restore_weights(lm, plan.init_prefix, what=f"init_from {cfg.init_from}")
            say(f"initialised weights from {plan.init_prefix} (optimizer and data start fresh)")
        if rt.chief:
            runs.write_run_files(local, cfg, plan.model_cfg, plan.manifest, plan.tok, lm)
            runs.truncate_metrics(local, 0)  # lines of a session that died before its first checkpoint
        return 0, 0
    try:
        ckpt = checkpoint.load(path)
        checkpoint.assign_model(lm, ckpt)
        checkpoint.assign_optimizer(opt, ckpt)
        if ckpt.meta.get("backend") == cfg.backend:
            checkpoint.assign_rng(lm, ckpt)
    except checkpoint.CheckpointError as err:
        raise TrainError(f"run {cfg.run}: {err}") from None
    say(
        f"resuming run {cfg.run} from step {ckpt.step} at example {ckpt.examples:,} (epoch "
        f"{ckpt.examples / data_order.epoch_size(cfg.data):.2f})"
    )
    if rt.chief:
        runs.write_run_files(local, cfg, plan.model_cfg, plan.manifest, plan.tok, lm, resumed=ckpt.step)
        runs.truncate_metrics(local, ckpt.step)
    return ckpt.step, ckpt.examples


def save_checkpoint(cfg: TrainConfig, rt: Runtime, s: Session, step: int) -> None:
    """The chief publishes checkpoint ``step`` (:mod:`gpt2ja.model.checkpoint`); the other hosts write nothing."""
    from gpt2ja.model import checkpoint

    if rt.chief:
        checkpoint.save(
            s.ckpt_dir,
            step,
            checkpoint.state_arrays(s.lm, s.opt),
            examples=int(s.examples.numpy()),
            backend="tensorflow",
            keep=cfg.keep_checkpoints,
        )


# ----------------------------------------------------------------- compiled steps


def _rows(tensor, size: int, local_replicas: int):
    """This replica's ``size`` rows of the host batch ``tensor`` (inside a replica context)."""
    import tensorflow as tf

    ctx = tf.distribute.get_replica_context()
    local_id = ctx.replica_id_in_sync_group % local_replicas
    return tensor[local_id * size : (local_id + 1) * size]


def make_train_step(cfg: TrainConfig, rt: Runtime, plan: Plan, s: Session):
    """``train_chunk(iterator, n)``: ``n`` optimizer steps in one tf.function call → (loss sum, last loss, last norm).

    One step: each replica takes its ``per_replica × accum`` rows of the host batch,
    sums the gradients of the summed NLL of its ``accum`` micro-batches, the sums are
    all-reduced once, scaled to an exact masked mean, clipped and applied.
    """
    import tensorflow as tf

    from gpt2ja.model import gpt2

    lm, opt, step, examples, strategy = s.lm, s.opt, s.step, s.examples, rt.strategy
    global_batch = plan.accum * cfg.micro_batch
    accum, per_replica, seq_len, local_replicas = plan.accum, rt.per_replica, plan.seq_len, rt.local_replicas
    expected = float(cfg.batch_tokens)  # scored targets per step when none is ignored
    fp16 = cfg.mixed_precision == "fp16"

    def replica_step(inputs, targets):
        x = tf.reshape(_rows(inputs, per_replica * accum, local_replicas), [accum, per_replica, seq_len])
        y = tf.reshape(_rows(targets, per_replica * accum, local_replicas), [accum, per_replica, seq_len])
        variables = lm.trainable_variables

        def micro(i, grads, nll, count):
            with tf.GradientTape() as tape:
                total, n = gpt2.causal_lm_loss_sum(gpt2.logits(lm, x[i], training=True), y[i])
                objective = total / expected
                if fp16:
                    objective = opt.scale_loss(objective)
            g = tape.gradient(objective, variables)
            g = [tf.convert_to_tensor(t) for t in g]  # the embedding's gather gives IndexedSlices
            return i + 1, [a + b for a, b in zip(grads, g)], nll + total, count + n

        zeros = [tf.zeros(v.shape, tf.float32) for v in variables]
        # parallel_iterations=1: micro-batches are sequential anyway (and it bounds memory); with
        # TF's default of 10, Grappler's AddOpsRewrite puts TemporaryVariable ops in the loop body that
        # collide between iterations ("AlreadyExistsError ... tmp_var ... iter:1") on some batch shapes.
        _, grads, nll, count = tf.while_loop(
            lambda i, *_: i < accum,
            micro,
            (tf.constant(0), zeros, tf.constant(0.0), tf.constant(0.0)),
            parallel_iterations=1,
        )
        ctx = tf.distribute.get_replica_context()
        grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        nll, count = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [nll, count])
        correction = expected / tf.maximum(count, 1.0)  # exactly 1.0 unless targets were ignored
        grads = [g * correction for g in grads]
        scale = tf.cast(opt.dynamic_scale, tf.float32) if fp16 else tf.constant(1.0)
        norm = tf.linalg.global_norm(grads)
        if cfg.clip_norm > 0:
            grads, _ = tf.clip_by_global_norm(grads, cfg.clip_norm * scale, use_norm=norm)
        opt.apply(grads, variables)
        return nll / tf.maximum(count, 1.0), norm / scale

    if cfg.jit_compile:
        replica_step = tf.function(replica_step, jit_compile=True)

    @tf.function
    def train_chunk(it, n):
        loss_sum, loss, norm = tf.constant(0.0), tf.constant(0.0), tf.constant(0.0)
        for _ in tf.range(n):
            # one optimizer step after the other (the step reads and writes variables)
            tf.autograph.experimental.set_loop_options(parallel_iterations=1)
            inputs, targets = next(it)
            loss, norm = strategy.run(replica_step, args=(inputs, targets))
            loss = strategy.experimental_local_results(loss)[0]
            norm = strategy.experimental_local_results(norm)[0]
            step.assign_add(1)
            examples.assign_add(global_batch)
            loss_sum += loss
        return loss_sum, loss, norm

    return train_chunk


def make_eval_step(cfg: TrainConfig, rt: Runtime, s: Session) -> Callable[[], float] | None:
    """``validation_loss()``: the mean NLL per target over ``eval_batches`` validation micro-batches; None without."""
    if s.val_ds is None:
        return None
    import tensorflow as tf

    from gpt2ja.model import gpt2

    lm, strategy, per_replica, local_replicas = s.lm, rt.strategy, rt.per_replica, rt.local_replicas

    def replica_eval(inputs, targets):
        total, n = gpt2.causal_lm_loss_sum(
            gpt2.logits(lm, _rows(inputs, per_replica, local_replicas), training=False),
            _rows(targets, per_replica, local_replicas),
        )
        ctx = tf.distribute.get_replica_context()
        return ctx.all_reduce(tf.distribute.ReduceOp.SUM, [total, n])

    if cfg.jit_compile:
        replica_eval = tf.function(replica_eval, jit_compile=True)

    @tf.function
    def eval_chunk(it, n):
        total, count = tf.constant(0.0), tf.constant(0.0)
        for _ in tf.range(n):
            inputs, targets = next(it)
            t, c = strategy.run(replica_eval, args=(inputs, targets))
            total += strategy.experimental_local_results(t)[0]
            count += strategy.experimental_local_results(c)[0]
        return total, count

    def validation_loss() -> float:
        # a fresh iterator each time: the same eval_batches batches at every evaluation
        total, count = eval_chunk(iter(s.val_ds), tf.constant(cfg.eval_batches))
        return float(total) / max(float(count), 1.0)

    return validation_loss


# ----------------------------------------------------------------- the loop


def make_steps(cfg: TrainConfig, rt: Runtime, plan: Plan, s: Session) -> Steps:
    """The TensorFlow session's compiled steps and checkpoints, as :func:`run_loop` drives them."""
    import tensorflow as tf

    train_chunk = make_train_step(cfg, rt, plan, s)

    def train(n: int) -> tuple:
        try:
            return train_chunk(s.iterator, tf.constant(n, tf.int32))
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as err:  # a damaged shard, mid-run?
            if isinstance(err, tf.errors.InvalidArgumentError) and not re.search(r"record|parse|[Ee]xample", str(err)):
                raise  # not about the data: a bug, with its traceback
            raise _named_data_error(cfg, err) from None

    return Steps(
        start=int(s.step.numpy()),
        train=train,
        validation_loss=make_eval_step(cfg, rt, s),
        save=lambda step: save_checkpoint(cfg, rt, s, step),
        sync=lambda: None,
    )


def describe_run(cfg: TrainConfig, rt: Runtime, plan: Plan, lm) -> str:
    """The first line of a new run: the model, the batch, where it trains."""
    from gpt2ja.model import gpt2

    where = (
        f"strategy {cfg.strategy}, precision {cfg.mixed_precision}, XLA {'on' if cfg.jit_compile else 'off'}"
        if cfg.backend == "tensorflow"
        else f"JAX on {rt.replicas} {rt.platform} device(s), {rt.workers} process(es), precision {cfg.mixed_precision}"
    )
    return (
        f"training {gpt2.describe(lm)}; {cfg.steps:,} steps of {cfg.batch_tokens:,} tokens "
        f"({plan.accum} × {cfg.micro_batch} sequences of {plan.seq_len}) on {rt.replicas} replica(s), {where}"
    )


def run_loop(
    cfg: TrainConfig,
    rt: Runtime,
    plan: Plan,
    s,
    steps: Steps,
    *,
    say: Callable[[str], None],
    on_log: Callable[[int, dict], None] | None,
) -> dict | None:
    """Train from ``steps.start`` to ``cfg.steps``; then :func:`finish` (the chief's manifest, else None).

    Backend-neutral: ``s`` is either backend's session (``local``, ``lm``,
    ``board``, ``val_ds``); each ``steps.train`` call runs up to
    ``steps_per_execution`` steps, ending on the next log, evaluation or
    checkpoint step.
    """
    schedule = lr_schedule(cfg)
    metrics_path = os.path.join(s.local, runs.METRICS)
    start_step = steps.start
    if start_step == 0:
        say(describe_run(cfg, rt, plan, s.lm))
    validation_loss = steps.validation_loss
    has_validation = validation_loss is not None
    counts, sampler = None, None  # the chief's: validation text counts (bits/char) and text samples
    if rt.chief:
        s.board.hparams(
            summaries.run_hparams(
                cfg,
                plan.model_cfg,
                seq_len=plan.seq_len,
                accum=plan.accum,
                replicas=rt.replicas,
                tokenizer=plan.tok.kind,
                parameters=int(s.lm.count_params()),
            )
        )
        if has_validation:
            counts, prompt = summaries.from_validation(plan.tok, s.val_ds, cfg.eval_batches)
            if cfg.eval_sample_tokens:
                sampler = summaries.Sampler(s.lm, plan.tok, prompt, tokens=cfg.eval_sample_tokens, seed=cfg.seed)
    sync = run_sync.RunSync(s.local, cfg.run) if rt.chief and storage.is_gcs(cfg.run) else None
    marks = [cfg.log_every, cfg.checkpoint_every] + ([cfg.eval_every] if has_validation else [])
    window_start, window_step, window_loss = time.monotonic(), start_step, 0.0
    session_start, session_first = time.monotonic(), start_step
    current = start_step
    stop = min(cfg.steps, cfg.stop_at or cfg.steps)  # a planned pause before the end keeps the schedule of steps
    while current < stop:
        n = min([cfg.steps_per_execution, stop - current] + [m - current % m for m in marks])
        loss_sum, loss, norm = steps.train(n)
        window_loss += float(loss_sum)
        current += n
        record, sample = None, None
        if current % cfg.log_every == 0 or current == stop:
            now = time.monotonic()
            done = current - window_step
            tokens_s = done * cfg.batch_tokens / max(now - window_start, 1e-9)
            lr = float(schedule(current - 1))  # the rate the last step used
            record = {
                "step": current,
                "loss": window_loss / done,
                "lr": lr,
                "grad_norm": float(norm),
                "tokens_per_s": tokens_s,
                "tokens": current * cfg.batch_tokens,
            }
            rate = (current - session_first) / max(now - session_start, 1e-9)
            eta = (cfg.steps - current) / rate if rate > 0 else float("inf")
            say(
                f"step {current:>{len(str(cfg.steps))}}/{cfg.steps}  loss {record['loss']:.4f}  lr {lr:.2e}  "
                f"{tokens_s:,.0f} tok/s  ETA {_duration(eta)}"
            )
            window_start, window_step, window_loss = now, current, 0.0
        if has_validation and (current % cfg.eval_every == 0 or current == cfg.steps):
            val = validation_loss()
            record = {**(record or {"step": current}), "val_loss": val}
            said = f"{val / math.log(2):.4f} bits/token"
            if counts is not None and counts.characters:
                record["val_bits_per_character"] = counts.bits_per_character(val)
                record["val_bits_per_byte"] = counts.bits_per_byte(val)
                said += f", {record['val_bits_per_character']:.4f} bits/character"
            say(f"step {current}: validation loss {val:.4f} ({said})")
            if sampler is not None:
                started = time.monotonic()
                steps.sync()
                sample = sampler()
                window_start += time.monotonic() - started  # tokens_per_s stays the training's (as before samples)
        if record and rt.chief:
            with open(metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            s.board.write(current, record, sample)
            if sync is not None:
                sync.sync_logs()  # in the background: the bucket shows the logs before the first checkpoint
        if record and on_log:
            on_log(current, record)
        if current % cfg.checkpoint_every == 0 or current == stop:
            steps.save(current)
            if sync is not None:
                sync.sync_checkpoint()
    if current < cfg.steps:
        _pause(rt, s)
        if sync is not None:
            sync.close()
        raise TrainPaused(
            f"run {cfg.run} paused at step {current:,} of {cfg.steps:,} (stop_at {cfg.stop_at}), "
            f"checkpointed; the same command without stop_at continues it"
        )
    return finish(cfg, rt, plan, s, session_start, sync)


def _pause(rt: Runtime, s: Session) -> None:
    """Close what ``finish`` would close, without the manifest: the run is not finished."""
    if rt.chief:
        s.board.close()
    else:
        shutil.rmtree(s.local, ignore_errors=True)


def finish(
    cfg: TrainConfig, rt: Runtime, plan: Plan, s: Session, session_start: float, sync: run_sync.RunSync | None = None
) -> dict | None:
    """Every file in place; the chief's manifest goes to the run last (run_stage). Other hosts: None."""
    if not rt.chief:
        shutil.rmtree(s.local, ignore_errors=True)
        return None
    s.board.close()
    built = runs.build_run_manifest(s.local, cfg, plan.fp, plan.input_manifests, s.lm, time.monotonic() - session_start)
    if sync is not None:
        sync.close()  # every file in the bucket before run_stage publishes the manifest
    return built


# ----------------------------------------------------------------- helpers


def _named_data_error(cfg: TrainConfig, err) -> Exception:
    """The error a damaged shard gives mid-run, naming the file: TensorFlow's does not (it reads them interleaved)."""
    from gpt2ja.model import data as data_mod

    try:
        data_mod.verify_shards(cfg.data)  # reads every file once; the first damaged one is a DataError naming it
    except data_mod.DataError as named:
        return TrainError(f"{named}; the run's last checkpoint is kept, so the same command resumes it")
    return TrainError(
        f"reading shards {cfg.data} failed ({data_mod.tf_message(err)}); check them with "
        "`gpt2ja show` and rebuild them with `gpt2ja shards` if a file is damaged"
    )


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
