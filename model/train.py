"""Training: shards + a preset → a run directory with checkpoints that resume exactly.

One optimizer step reads one batch of ``batch_tokens`` tokens from the shards,
split into ``accumulation_steps`` micro-batches of ``micro_batch`` sequences
(summed over replicas); each replica sums the gradient of the summed NLL of its
micro-batches, the replicas' sums are all-reduced once, divided by the number of
scored targets in the whole batch (an exact masked mean however the batch is
split), clipped by their global norm and applied by AdamW (weight decay on
matmul kernels only; warmup then cosine decay: see :mod:`model.optim`).

Exact resume: a checkpoint holds the model, AdamW's moments and step counter
(hence the learning-rate schedule), our step counter, every dropout layer's
random state and the ``tf.data`` iterator (its position and shuffle buffers);
a run started again with the same config continues from the newest checkpoint
and, with ``deterministic=True``, ends with the same weights as a run that was
never interrupted. Distributed input is fed as one plain per-host iterator
(which TensorFlow can checkpoint; a ``tf.distribute`` iterator cannot) and each
replica takes its rows of the host batch.

Strategies: ``default`` (CPU or one GPU), ``mirrored`` (all local GPUs),
``multi_worker`` (``TF_CONFIG``; every worker saves its own data iterator),
``tpu`` (``tpu`` names the TPU; data and run on ``gs://``). The tests exercise
``default``, ``mirrored`` over two logical CPUs and ``multi_worker`` with two
worker processes on 127.0.0.1; GPUs and TPUs have not been available here.

Run directory: written locally; for a ``gs://`` run it is staged in a local
cache directory and uploaded with :func:`infra.storage.upload_dir` after each
checkpoint and at the end (old checkpoints are deleted remotely too), and
downloaded first when the run is resumed. The chief trains as the build of
the train stage (:func:`infra.stage.run_stage`): it holds the run's lock (a
second ``train`` of the same run gets :class:`infra.stage.LockHeld`), and the
run's ``_MANIFEST.json`` is written last, once every file is in place; the
other hosts of a multi-worker job neither lock nor write a manifest.

Example::

    cfg = TrainConfig(data="data/shards/sp32k-1024", run="data/runs/r1", preset="small",
                      batch_tokens=524_288, micro_batch=16, steps=20_000, learning_rate=6e-4)
    train(cfg)
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from infra import stage, storage
from infra.errors import Gpt2jaError
from model import runs
from model.distribute import StrategyError, make_strategy, worker_info
from model.optim import lr_schedule, make_optimizer
from model.presets import ModelConfig, ModelError, host_memory_bytes, param_count, training_memory_bytes

log = logging.getLogger("gpt2ja.train")

STAGE = "train"


class TrainError(Gpt2jaError, ValueError):
    """A training run that cannot start or continue: one line naming the thing and the fix."""


class TrainConfig(BaseModel):
    """Everything that defines a training run; stored in the run's ``hparams.json`` under ``"train"``.

    Example::

        TrainConfig(data="data/shards/demo", run="data/runs/demo", preset="tiny",
                    batch_tokens=8192, micro_batch=32, steps=300, learning_rate=1e-3, warmup_steps=30)
    """

    model_config = ConfigDict(extra="forbid")

    data: str = Field(description="shards URI (a `gpt2ja shards` artifact), local or gs://")
    run: str = Field(description="run directory URI, local or gs://; an existing run is resumed")
    preset: str | None = Field(None, description="model preset (tiny, mini, small, medium, large, xl); "
                                                 "omit with init_from to keep that run's model")
    init_from: str | None = Field(None, description="start from this run's newest weights (fresh optimizer)")
    tokenizer: str | None = Field(None, description="tokenizer URI; default: the one the shards were built with")
    dropout: float | None = Field(None, ge=0.0, lt=1.0, description="override the preset's dropout")

    batch_tokens: int = Field(524_288, ge=1, description="global batch in tokens per optimizer step")
    micro_batch: int = Field(8, ge=1, description="sequences per forward/backward pass, summed over replicas")
    steps: int = Field(ge=1, description="optimizer steps in total (a resumed run continues to this)")

    learning_rate: float = Field(6e-4, gt=0, le=1.0, description="peak learning rate")
    warmup_steps: int = Field(100, ge=0, description="linear warmup from 0 to the peak")
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="cosine decay ends at peak × this")
    weight_decay: float = Field(0.1, ge=0.0, le=1.0, description="AdamW decoupled decay on matmul kernels only")
    beta1: float = Field(0.9, ge=0.0, lt=1.0)
    beta2: float = Field(0.95, ge=0.0, lt=1.0)
    epsilon: float = Field(1e-8, gt=0.0)
    clip_norm: float = Field(1.0, ge=0.0, description="clip the global gradient norm to this (0 = off)")

    seed: int = Field(0, ge=0, description="weights, dropout and data order")
    deterministic: bool = Field(False, description="deterministic TF ops (bitwise-repeatable, slower)")
    shuffle_buffer: int = Field(10_000, ge=1, description="examples in the shuffle buffer (saved in checkpoints)")

    checkpoint_every: int = Field(1000, ge=1, description="steps between checkpoints (and one at the end)")
    keep_checkpoints: int = Field(3, ge=1, description="keep the newest K checkpoints")
    eval_every: int = Field(500, ge=1, description="steps between validation losses")
    eval_batches: int = Field(20, ge=0, description="validation micro-batches per evaluation (0 = none)")
    log_every: int = Field(10, ge=1, description="steps between progress lines / metrics.jsonl entries")

    strategy: Literal["default", "mirrored", "multi_worker", "tpu"] = "default"
    tpu: str | None = Field(None, description="TPU name or grpc:// address for strategy tpu ('' = this TPU VM)")
    mixed_precision: Literal["off", "bf16", "fp16"] = Field(
        "off", description="bf16 on TPU and Ampere+ GPUs, fp16 (with loss scaling) on older GPUs")
    jit_compile: bool = Field(False, description="compile the training step with XLA")
    steps_per_execution: int = Field(1, ge=1, description="optimizer steps per tf.function call")

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.preset is None and self.init_from is None:
            raise ValueError("choose a model: preset (tiny, mini, small, medium, large, xl) or init_from a run")
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps {self.warmup_steps} must be fewer than steps {self.steps}")
        return self

    def accumulation_steps(self, seq_len: int) -> int:
        """Micro-batches per optimizer step: ``batch_tokens / (micro_batch × seq_len)``, which must be whole."""
        per_micro = self.micro_batch * seq_len
        if self.batch_tokens % per_micro:
            near = max(1, round(self.batch_tokens / per_micro)) * per_micro
            raise TrainError(f"batch_tokens {self.batch_tokens:,} is not a multiple of micro_batch × seq_len = "
                             f"{self.micro_batch} × {seq_len} = {per_micro:,}; use batch_tokens {near:,}")
        return self.batch_tokens // per_micro

    def fingerprint_config(self) -> dict:
        """What defines the run's result (the run URI itself and logging cadence do not)."""
        skip = {"run", "log_every"}
        return {k: v for k, v in self.model_dump().items() if k not in skip}


# ----------------------------------------------------------------- the loop


def train(cfg: TrainConfig, *, progress: Callable[[str], None] | None = print,
          on_log: Callable[[int, dict], None] | None = None) -> str:
    """Train (or resume) the run ``cfg.run``; returns its URI once ``cfg.steps`` are done.

    ``progress`` receives the human progress lines (default: print); ``on_log``
    receives ``(step, metrics)`` at every log step (a flow reports progress
    with it). A run whose manifest matches this config and verifies is not
    trained again. Another process training the same run: :class:`infra.stage.LockHeld`.
    """
    from model import data as data_mod
    from tokenization.tokenizer import Tokenizer, TokenizerError

    say = progress or (lambda line: None)
    # ---- inputs, checked before anything heavy
    try:
        manifest = data_mod.read_manifest_checked(cfg.data)
        tok_ref = (manifest.get("tokenizer") or {}).get("uri")  # relative to the shards since refs: relative
        tok_uri = cfg.tokenizer or (stage.input_uri(manifest, tok_ref) if tok_ref else None)
        if cfg.init_from and not cfg.tokenizer:
            tok_uri = storage.join(cfg.init_from, runs.TOKENIZER_DIR)
        if not tok_uri:
            raise TrainError(f"shards {cfg.data} do not name their tokenizer; pass tokenizer=...")
        tok = Tokenizer.load(tok_uri)
        data_mod.read_manifest_checked(cfg.data, tok)
    except (data_mod.DataError, TokenizerError, storage.StorageError) as err:
        raise TrainError(str(err)) from None
    seq_len = manifest["seq_len"]
    accum = cfg.accumulation_steps(seq_len)

    model_cfg, init_prefix = _model_config(cfg, tok.vocab_size, seq_len)
    input_manifests = [manifest, storage.read_manifest(tok_uri) or {}]
    fp = storage.fingerprint({"train": cfg.fingerprint_config(), "model": model_cfg.model_dump()}, input_manifests)

    def nothing_to_do() -> str:
        say(f"run {cfg.run} is complete ({cfg.steps} steps, fingerprint {fp[:12]}): nothing to do")
        return cfg.run

    if not stage.verify(cfg.run, fp)[1]:  # finished: said before TensorFlow starts (checked again under the lock)
        return nothing_to_do()
    # before the train stage takes the run over (and withdraws a finished run's manifest): a run of
    # other shards or another model is refused untouched
    _check_resumable(cfg.run, cfg.data, manifest, model_cfg)

    import keras
    import tensorflow as tf

    # Grappler's AddOpsRewrite turns gradient sums inside our nested while loops (steps ×
    # micro-batches) into TemporaryVariable ops that collide between loop iterations
    # ("AlreadyExistsError … AddOpsRewrite … tmp_var … iter:1", seen on CPU with tiny/128 and
    # batch 32). Turning that one optimiser pass off costs nothing measurable here.
    tf.config.optimizer.set_experimental_options({"arithmetic_optimization": False})

    from model import gpt2

    schedule = lr_schedule(cfg)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    try:
        strategy = make_strategy(cfg.strategy, cfg.tpu)
    except StrategyError as err:
        raise TrainError(str(err)) from None
    replicas = strategy.num_replicas_in_sync
    worker, workers, chief = worker_info(strategy)
    local_replicas = replicas // workers
    if cfg.micro_batch % replicas:
        raise TrainError(f"micro_batch {cfg.micro_batch} is not divisible by the {replicas} replicas of strategy "
                         f"{cfg.strategy}; use a multiple of {replicas}")
    per_replica = cfg.micro_batch // replicas
    _check_memory(model_cfg, per_replica, cfg)

    finished: dict = {}

    def session() -> dict | None:
        """Train this host's part from the newest checkpoint to ``cfg.steps``; the chief returns the manifest."""
        local = runs.local_dir(cfg.run) if chief else tempfile.mkdtemp(prefix=f"gpt2ja-worker{worker}-")
        if chief and storage.is_gcs(cfg.run):
            runs.download(cfg.run, local)
        os.makedirs(local, exist_ok=True)

        # ---- model, optimizer, data, checkpoint
        keras.utils.set_random_seed(cfg.seed)
        dtype = {"off": None, "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}[cfg.mixed_precision]
        with strategy.scope():
            lm = gpt2.build_model(model_cfg, dtype=dtype)
            opt = make_optimizer(cfg, lm)
            step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        host_rows = local_replicas * per_replica * accum  # sequences per optimizer step on this host
        train_ds = data_mod.make_dataset(cfg.data, "train", host_rows, shuffle=True, seed=cfg.seed,
                                         deterministic=True, num_input_pipelines=workers, input_pipeline_id=worker,
                                         shuffle_buffer=cfg.shuffle_buffer)
        iterator = iter(train_ds)
        ckpt_dir = os.path.join(local, runs.CHECKPOINT_DIR)
        state = {"backbone": lm.backbone, "optimizer": opt, "step": step, "rng": gpt2.dropout_rng_states(lm)}
        if workers == 1:
            state["data"] = iterator
        ckpt = tf.train.Checkpoint(**state)
        manager = tf.train.CheckpointManager(ckpt, ckpt_dir, max_to_keep=cfg.keep_checkpoints,
                                             checkpoint_name=runs.CHECKPOINT_NAME)
        data_manager = None
        if workers > 1:  # each host's iterator reads its own files: one data checkpoint per host, written
            # straight to the run URI (TensorFlow writes gs:// itself) so that any machine can resume it
            data_dir = storage.join(cfg.run, runs.CHECKPOINT_DIR, f"data-worker{worker}")
            data_manager = tf.train.CheckpointManager(tf.train.Checkpoint(data=iterator), data_dir,
                                                      max_to_keep=cfg.keep_checkpoints, checkpoint_name="data")
        resumed = _restore(manager, data_manager, cfg.run)
        if resumed is None:
            if init_prefix:
                runs.restore_weights(lm, init_prefix, what=f"init_from {cfg.init_from}")
                say(f"initialised weights from {init_prefix} (optimizer and data start fresh)")
            if chief:
                _write_run_files(local, cfg, model_cfg, manifest, tok, lm)
        else:
            say(f"resuming run {cfg.run} from step {resumed}")
            if chief:
                _write_run_files(local, cfg, model_cfg, manifest, tok, lm, keep_tokenizer=True)
                runs.truncate_metrics(local, resumed)

        # ---- compiled steps
        expected = float(cfg.batch_tokens)  # scored targets per step when none is ignored
        fp16 = cfg.mixed_precision == "fp16"

        def rows(tensor, size):
            ctx = tf.distribute.get_replica_context()
            local_id = ctx.replica_id_in_sync_group % local_replicas
            return tensor[local_id * size:(local_id + 1) * size]

        def replica_step(inputs, targets):
            x = tf.reshape(rows(inputs, per_replica * accum), [accum, per_replica, seq_len])
            y = tf.reshape(rows(targets, per_replica * accum), [accum, per_replica, seq_len])
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
            _, grads, nll, count = tf.while_loop(lambda i, *_: i < accum, micro,
                                                 (tf.constant(0), zeros, tf.constant(0.0), tf.constant(0.0)),
                                                 parallel_iterations=1)
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
                loss_sum += loss
            return loss_sum, loss, norm

        def replica_eval(inputs, targets):
            total, n = gpt2.causal_lm_loss_sum(gpt2.logits(lm, rows(inputs, per_replica), training=False),
                                               rows(targets, per_replica))
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

        has_validation = cfg.eval_batches > 0 and any(f.get("split") == "validation" for f in manifest["files"])

        if has_validation:
            val_ds = data_mod.make_dataset(cfg.data, "validation", local_replicas * per_replica, shuffle=False,
                                           deterministic=True, num_input_pipelines=workers, input_pipeline_id=worker)

        def validation_loss() -> float:
            # a fresh iterator each time: the same eval_batches batches at every evaluation
            total, count = eval_chunk(iter(val_ds), tf.constant(cfg.eval_batches))
            return float(total) / max(float(count), 1.0)

        # ---- loop
        writer = tf.summary.create_file_writer(os.path.join(local, runs.TENSORBOARD_DIR)) if chief else None
        metrics_path = os.path.join(local, runs.METRICS)
        start_step = int(step.numpy())
        if start_step == 0:
            say(f"training {gpt2.describe(lm)}; {cfg.steps:,} steps of {cfg.batch_tokens:,} tokens "
                f"({accum} × {cfg.micro_batch} sequences of {seq_len}) on {replicas} replica(s), strategy "
                f"{cfg.strategy}, precision {cfg.mixed_precision}, XLA {'on' if cfg.jit_compile else 'off'}")
        marks = [cfg.log_every, cfg.checkpoint_every] + ([cfg.eval_every] if has_validation else [])
        window_start, window_step, window_loss = time.monotonic(), start_step, 0.0
        session_start, session_first = time.monotonic(), start_step
        current = start_step
        while current < cfg.steps:
            n = min([cfg.steps_per_execution, cfg.steps - current] + [m - current % m for m in marks])
            loss_sum, loss, norm = train_chunk(iterator, tf.constant(n, tf.int32))
            window_loss += float(loss_sum)
            current += n
            record = None
            if current % cfg.log_every == 0 or current == cfg.steps:
                now = time.monotonic()
                done = current - window_step
                tokens_s = done * cfg.batch_tokens / max(now - window_start, 1e-9)
                lr = float(schedule(current - 1))  # the rate the last step used
                record = {"step": current, "loss": window_loss / done, "lr": lr, "grad_norm": float(norm),
                          "tokens_per_s": tokens_s, "tokens": current * cfg.batch_tokens}
                rate = (current - session_first) / max(now - session_start, 1e-9)
                eta = (cfg.steps - current) / rate if rate > 0 else float("inf")
                say(f"step {current:>{len(str(cfg.steps))}}/{cfg.steps}  loss {record['loss']:.4f}  lr {lr:.2e}  "
                    f"{tokens_s:,.0f} tok/s  ETA {_duration(eta)}")
                window_start, window_step, window_loss = now, current, 0.0
            if has_validation and (current % cfg.eval_every == 0 or current == cfg.steps):
                val = validation_loss()
                record = {**(record or {"step": current}), "val_loss": val}
                say(f"step {current}: validation loss {val:.4f} ({val / math.log(2):.4f} bits/token)")
            if record and chief:
                with open(metrics_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
                with writer.as_default(step=current):
                    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "val_loss"):
                        if key in record:
                            tf.summary.scalar(key, record[key])
                writer.flush()
            if record and on_log:
                on_log(current, record)
            if current % cfg.checkpoint_every == 0 or current == cfg.steps:
                _save(manager, data_manager, current)
                if chief and storage.is_gcs(cfg.run):
                    runs.sync_up(local, cfg.run)

        # ---- finish: every file in place; the chief's manifest goes to the run last (run_stage)
        if not chief:
            shutil.rmtree(local, ignore_errors=True)
            return None
        writer.close()
        built = _run_manifest(local, cfg, fp, input_manifests, lm, time.monotonic() - session_start)
        if storage.is_gcs(cfg.run):
            runs.sync_up(local, cfg.run)
        finished["checkpoint"] = manager.latest_checkpoint
        return built

    if not chief:  # another host of a multi-worker job: the chief holds the run's lock and writes its manifest
        session()
        return cfg.run
    outcome = stage.run_stage(STAGE, cfg.run, fingerprint=fp, build=session, inputs=[cfg.data, tok_uri],
                              prune=False, log=progress)
    if outcome.skipped:  # another process finished it while this one started
        return nothing_to_do()
    say(f"run {cfg.run}: {cfg.steps:,} steps done, newest checkpoint {finished['checkpoint']}")
    return cfg.run


# ----------------------------------------------------------------- helpers


def _model_config(cfg: TrainConfig, vocab_size: int, seq_len: int) -> tuple[ModelConfig, str | None]:
    """The model to train and, with init_from, the checkpoint to start from."""
    if not cfg.init_from:
        try:
            return ModelConfig.from_preset(cfg.preset, vocab_size=vocab_size, context_length=seq_len,
                                           dropout=cfg.dropout), None
        except ModelError as err:
            raise TrainError(str(err)) from None
    hparams = runs.read_hparams(cfg.init_from)
    base = runs.model_config(hparams, run_uri=f"init_from {cfg.init_from}")
    if cfg.preset and base.preset != cfg.preset:
        raise TrainError(f"init_from {cfg.init_from} is a {base.preset} model, not {cfg.preset}; drop preset "
                         "or choose a run of that preset")
    if base.vocab_size != vocab_size:
        raise TrainError(f"init_from {cfg.init_from} has a {base.vocab_size}-id vocabulary but the shards "
                         f"{cfg.data} use {vocab_size}; build the shards with that run's tokenizer")
    if seq_len > base.context_length:
        raise TrainError(f"shards {cfg.data} have seq_len {seq_len}, longer than the {base.context_length} "
                         f"positions of init_from {cfg.init_from}; rebuild the shards with seq_len ≤ "
                         f"{base.context_length}")
    if cfg.dropout is not None:
        base = base.model_copy(update={"dropout": cfg.dropout})
    prefix = runs.latest_checkpoint(runs.fetch(cfg.init_from))
    if prefix is None:
        raise TrainError(f"init_from {cfg.init_from}: no checkpoint to start from; train that run first")
    return base, prefix


def _check_memory(model_cfg: ModelConfig, per_replica: int, cfg: TrainConfig) -> None:
    """Stop before building a model that cannot fit in this host's memory (CPU training only)."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU") or cfg.strategy == "tpu":
        return  # accelerator memory is checked by the runtime; we cannot ask it cheaply before allocating
    need = training_memory_bytes(model_cfg, per_replica, mixed_precision=cfg.mixed_precision != "off")
    have = host_memory_bytes()
    if have and need > have:
        raise TrainError(f"preset {model_cfg.preset} with micro_batch {cfg.micro_batch} needs about "
                         f"{need / 2**30:.1f} GiB to train ({param_count(model_cfg):,} parameters), this machine "
                         f"has {have / 2**30:.1f} GiB; use a smaller preset or micro_batch (with more "
                         "accumulation steps)")


def _check_resumable(run_uri: str, data_uri: str, manifest: dict, model_cfg: ModelConfig) -> None:
    """Refuse to resume a run started on other shards or with another model (one read of its hparams)."""
    try:
        hparams = json.loads(storage.read_text(storage.join(run_uri, runs.HPARAMS)))
    except storage.StorageError:
        return  # a new run
    except ValueError:
        raise TrainError(f"run {run_uri}: {runs.HPARAMS} is not valid JSON; the run is damaged: delete it or "
                         "choose another run URI") from None
    had = (hparams.get("data") or {}).get("fingerprint")
    if had and had != manifest.get("fingerprint"):
        raise TrainError(f"run {run_uri} was trained on other shards (fingerprint {had[:12]}, now "
                         f"{str(manifest.get('fingerprint'))[:12]} at {data_uri}); choose another run URI, or "
                         f"delete {run_uri} to train it again from scratch")
    old = hparams.get("model")
    if old != model_cfg.model_dump():
        raise TrainError(f"run {run_uri} was started with another model ({old}); resume it with the same "
                         "preset, data and dropout, or choose a new run URI")


def _restore(manager, data_manager, run_uri: str) -> int | None:
    """Restore the newest checkpoint; its step, or None for a fresh run."""
    import tensorflow as tf

    prefix = manager.latest_checkpoint
    if prefix is None:
        return None
    try:
        manager.checkpoint.restore(prefix).assert_existing_objects_matched()
        if data_manager is not None:
            step = runs.checkpoint_step(prefix)
            data_prefix = f"{data_manager.directory}/data-{step}"
            data_manager.checkpoint.restore(data_prefix).assert_existing_objects_matched()
    except (tf.errors.OpError, AssertionError, ValueError, IndexError, KeyError) as err:
        first = " ".join(str(err).split())[:200]
        raise TrainError(f"run {run_uri}: checkpoint {prefix} cannot be restored ({first}); it is damaged: delete "
                         f"its files to resume from the previous checkpoint") from None
    return runs.checkpoint_step(prefix)


def _save(manager, data_manager, step: int) -> None:
    if data_manager is not None:  # data first: a model checkpoint never lacks its data position
        data_manager.save(checkpoint_number=step)
    manager.save(checkpoint_number=step)


def _write_run_files(local: str, cfg: TrainConfig, model_cfg: ModelConfig, manifest: dict, tok, lm,
                     keep_tokenizer: bool = False) -> None:
    hparams = {
        "format": runs.FORMAT,
        "model": model_cfg.model_dump(),
        "train": cfg.model_dump(),
        "refs": "relative",  # data.uri is relative to the run directory (runs.data_uri); "train" is as given
        "data": {"uri": storage.relative_ref(cfg.data, cfg.run), "fingerprint": manifest.get("fingerprint"),
                 "seq_len": manifest["seq_len"], "vocab_size": manifest["vocab_size"], "eos_id": manifest["eos_id"]},
        "tokenizer": {"path": runs.TOKENIZER_DIR, "kind": tok.kind, "vocab_size": tok.vocab_size,
                      "eos_id": tok.eos_id},
        "padded_vocab_size": model_cfg.padded_vocab_size,
        "parameters": int(lm.count_params()),
        "code_version": storage.code_version(),
    }
    # atomically: a second train of this run reads it (_check_resumable) before it finds the run locked
    storage.write_text(os.path.join(local, runs.HPARAMS),
                       json.dumps(hparams, indent=2, ensure_ascii=False, sort_keys=True) + "\n")
    tok_dir = os.path.join(local, runs.TOKENIZER_DIR)
    if not (keep_tokenizer and storage.read_manifest(tok_dir)):
        tok.save(tok_dir)


def _run_manifest(local: str, cfg: TrainConfig, fp: str, inputs: list[dict], lm, seconds: float) -> dict:
    """The run's manifest (not written: the train stage publishes it last): what training wrote under ``local``.

    Paths are relative to the run directory; only training's own files are listed
    (:func:`runs.is_training_file`), so the run's ``eval/`` and ``export/`` can change without
    making the run unverifiable.
    """
    files = [storage.file_info(p, root=local) for p in storage.list_files(local)
             if runs.is_training_file(os.path.relpath(p, local).replace(os.sep, "/"))]
    counts = {"steps": cfg.steps, "tokens": cfg.steps * cfg.batch_tokens, "parameters": int(lm.count_params())}
    config = {"train": cfg.fingerprint_config()}
    manifest = storage.build_manifest(stage=STAGE, config=config, inputs=inputs, counts=counts, files=files,
                                      timings={"last_session_s": round(seconds, 3)})
    manifest["fingerprint"] = fp  # the fingerprint train() checks (includes the model shape)
    return manifest


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
