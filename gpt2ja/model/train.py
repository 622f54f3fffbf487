"""Training: shards + a preset → a run directory with checkpoints that resume exactly.

One optimizer step reads one batch of ``batch_tokens`` tokens from the shards,
split into ``accumulation_steps`` micro-batches of ``micro_batch`` sequences
(summed over replicas); each replica sums the gradient of the summed NLL of its
micro-batches, the replicas' sums are all-reduced once, divided by the number of
scored targets in the whole batch (an exact masked mean however the batch is
split), clipped by their global norm and applied by AdamW (weight decay on
matmul kernels only; warmup then cosine decay: see :mod:`gpt2ja.model.optim`).

Exact resume: a checkpoint holds the model, AdamW's moments and step counter
(hence the learning-rate schedule), our step counter, every dropout layer's
random state and ``examples``, the run's position in the global training
order of :mod:`gpt2ja.model.data_order` (a pure function of the shards, the seed and
``shuffle_buffer``). A run started again with the same config continues from
the newest checkpoint and, with ``deterministic=True``, ends with the same
weights as a run that was never interrupted. The position does not depend on
the topology: a run checkpointed on 2 hosts resumes on 1 (or 1 on 2) at the
same example, every global batch is the same examples, and within an epoch
none is seen twice or skipped. Each host reads the global stream and keeps its
rows of every global batch; each replica takes its rows of the host batch.

Backends (``backend``): ``tensorflow`` with a strategy, ``default`` (CPU or
one GPU), ``mirrored`` (all local GPUs), ``multi_worker`` (``TF_CONFIG``; one
process per host, the chief writes), ``tpu`` (``tpu`` names the TPU; data and
run on ``gs://``); or ``jax`` (:mod:`gpt2ja.model.trainer_jax`: every local device,
``jax.distributed`` across hosts, no TensorFlow needed). Both write the same
checkpoints (:mod:`gpt2ja.model.checkpoint`) and logs. The tests exercise
``default``, ``mirrored`` over two logical CPUs and ``multi_worker`` with two
worker processes on 127.0.0.1 (with resumes from 2 to 1 and 1 to 2 workers),
and JAX on one and two CPU devices and as two processes; GPUs and TPUs have
not been available here.

Run directory: written locally; a ``gs://`` run is staged in a local
directory and copied up as it trains (:class:`gpt2ja.model.run_sync.RunSync`): its
logs at every log step (TensorBoard and ``metrics.jsonl`` follow it before the
first checkpoint), each checkpoint's files once, its index after them (old
checkpoints are deleted remotely too); it is downloaded first when the run is
resumed. The chief trains as the build of the train stage
(:func:`gpt2ja.infra.stage.run_stage`): it holds the run's lock (a second ``train`` of
the same run gets :class:`gpt2ja.infra.stage.LockHeld`), and the run's
``_MANIFEST.json`` is written last, once every file is in place; the other
hosts of a multi-worker job neither lock nor write a manifest.

Code: this module holds the config and :func:`train` (inputs checked and the
fingerprint computed before any backend starts, then the session under the
train stage); :mod:`gpt2ja.model.trainer` (TensorFlow) and :mod:`gpt2ja.model.trainer_jax`
hold the parts it runs: ``start_runtime`` (strategy or devices),
``build_session`` (model, optimizer, data, resume), ``make_steps`` (the
compiled steps and checkpoints), and the backend-neutral ``run_loop`` of
:mod:`gpt2ja.model.trainer` (logging, evaluation, checkpoints, then the manifest).

Example::

    cfg = TrainConfig(data="data/shards/sp32k-1024", run="data/runs/r1", preset="small",
                      batch_tokens=524_288, micro_batch=16, steps=20_000, learning_rate=6e-4)
    train(cfg)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gpt2ja.infra import stage, storage
from gpt2ja.infra.errors import Gpt2jaError
from gpt2ja.model import runs
from gpt2ja.model.presets import ModelConfig, ModelError, host_memory_bytes, param_count, training_memory_bytes

log = logging.getLogger("gpt2ja.train")

STAGE = "train"


class TrainError(Gpt2jaError, ValueError):
    """A training run that cannot start or continue: one line naming the thing and the fix."""


class TrainPaused(Exception):
    """Raised by the loop at ``stop_at``: the build ends without a manifest (the run is not finished)."""


class TrainConfig(BaseModel):
    """Everything that defines a training run; stored in the run's ``hparams.json`` under ``"train"``.

    Example::

        TrainConfig(data="data/shards/demo", run="data/runs/demo", preset="tiny",
                    batch_tokens=8192, micro_batch=32, steps=300, learning_rate=1e-3, warmup_steps=30)
    """

    model_config = ConfigDict(extra="forbid")

    data: str = Field(description="shards URI (a `gpt2ja shards` artifact), local or gs://")
    run: str = Field(description="run directory URI, local or gs://; an existing run is resumed")
    preset: str | None = Field(
        None,
        description="model preset (tiny, micro, mini, small, medium, large, xl); "
        "omit with init_from to keep that run's model",
    )
    init_from: str | None = Field(None, description="start from this run's newest weights (fresh optimizer)")
    tokenizer: str | None = Field(None, description="tokenizer URI; default: the one the shards were built with")
    dropout: float | None = Field(None, ge=0.0, lt=1.0, description="override the preset's dropout")

    batch_tokens: int = Field(524_288, ge=1, description="global batch in tokens per optimizer step")
    micro_batch: int = Field(8, ge=1, description="sequences per forward/backward pass, summed over replicas")
    steps: int = Field(ge=1, description="optimizer steps in total (a resumed run continues to this)")
    stop_at: int | None = Field(
        None,
        ge=1,
        description="pause after this step (checkpointed, no manifest): the "
        "schedule stays that of `steps`, and the same command without it continues",
    )

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
    shuffle_buffer: int = Field(
        10_000,
        ge=1,
        description="examples per block of the data order that is shuffled as one (gpt2ja.model.data_order)",
    )
    trace_examples: str | None = Field(
        None,
        description="a local directory: each host appends the stream "
        "position and first ids of every example it reads (an audit of the order)",
    )

    checkpoint_every: int = Field(1000, ge=1, description="steps between checkpoints (and one at the end)")
    keep_checkpoints: int = Field(3, ge=1, description="keep the newest K checkpoints")
    eval_every: int = Field(500, ge=1, description="steps between validation losses")
    eval_batches: int = Field(20, ge=0, description="validation micro-batches per evaluation (0 = none)")
    log_every: int = Field(10, ge=1, description="steps between progress lines / metrics.jsonl entries")
    eval_sample_tokens: int = Field(
        32,
        ge=0,
        le=4096,
        description="tokens of the text sample written to "
        "TensorBoard at each evaluation, continuing a fixed validation prompt (0 = off)",
    )
    tensorboard_by_tokens: bool = Field(
        True, description="also write TensorBoard's scalars under tokens_seen/ with the tokens seen as their step"
    )

    backend: Literal["tensorflow", "jax"] = Field(
        "tensorflow",
        description="tensorflow (tf.distribute strategies, the CPU default) or jax (one jitted "
        "step over every local device, jax.distributed across hosts; GPUs and Cloud TPU)",
    )
    strategy: Literal["default", "mirrored", "multi_worker", "tpu"] = Field(
        "default",
        description="the TensorFlow backend's tf.distribute strategy (jax: ignored, every local device is used)",
    )
    tpu: str | None = Field(None, description="TPU name or grpc:// address for strategy tpu ('' = this TPU VM)")
    mixed_precision: Literal["off", "bf16", "fp16"] = Field(
        "off", description="bf16 on TPU and Ampere+ GPUs, fp16 (with loss scaling) on older GPUs"
    )
    jit_compile: bool = Field(False, description="compile the training step with XLA")
    steps_per_execution: int = Field(1, ge=1, description="optimizer steps per tf.function call")
    override: bool = Field(
        False,
        description="resume although settings that change the optimisation differ "
        "from the run's; the change is recorded in its hparams history",
    )

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.preset is None and self.init_from is None:
            raise ValueError("choose a model: preset (tiny, micro, mini, small, medium, large, xl) or init_from a run")
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps {self.warmup_steps} must be fewer than steps {self.steps}")
        return self

    def accumulation_steps(self, seq_len: int) -> int:
        """Micro-batches per optimizer step: ``batch_tokens / (micro_batch × seq_len)``, which must be whole."""
        per_micro = self.micro_batch * seq_len
        if self.batch_tokens % per_micro:
            near = max(1, round(self.batch_tokens / per_micro)) * per_micro
            raise TrainError(
                f"batch_tokens {self.batch_tokens:,} is not a multiple of micro_batch × seq_len = "
                f"{self.micro_batch} × {seq_len} = {per_micro:,}; use batch_tokens {near:,}"
            )
        return self.batch_tokens // per_micro

    def fingerprint_config(self) -> dict:
        """What defines the run's result (the run URI itself, logging cadence and TensorBoard extras do not)."""
        skip = {
            "run",
            "log_every",
            "override",
            "eval_sample_tokens",
            "tensorboard_by_tokens",
            "trace_examples",
            "stop_at",
        }
        out = {k: v for k, v in self.model_dump().items() if k not in skip}
        if out["backend"] == "tensorflow":  # the default, and every run made before the field existed
            del out["backend"]
        return out


# ----------------------------------------------------------------- the entry


class Plan(NamedTuple):
    """What :func:`train` settles before TensorFlow starts: the checked inputs and the run's fingerprint."""

    manifest: dict  # the shards' manifest
    tok: Any  # their tokenizer (gpt2ja.tokenization.tokenizer.Tokenizer)
    tok_uri: str
    seq_len: int
    accum: int  # micro-batches per optimizer step (TrainConfig.accumulation_steps)
    model_cfg: ModelConfig
    init_prefix: str | None  # init_from's newest checkpoint
    input_manifests: list[dict]  # shards, tokenizer: what the fingerprint and the run's manifest name
    fp: str  # the run's fingerprint


def train(
    cfg: TrainConfig,
    *,
    progress: Callable[[str], None] | None = print,
    on_log: Callable[[int, dict], None] | None = None,
) -> str:
    """Train (or resume) the run ``cfg.run``; returns its URI once ``cfg.steps`` are done.

    ``progress`` receives the human progress lines (default: print); ``on_log``
    receives ``(step, metrics)`` at every log step (a flow reports progress
    with it). A run whose manifest matches this config and verifies is not
    trained again. Another process training the same run: :class:`gpt2ja.infra.stage.LockHeld`.
    """
    say = progress or (lambda line: None)
    plan = _plan(cfg)  # inputs, checked before anything heavy

    def nothing_to_do() -> str:
        say(f"run {cfg.run} is complete ({cfg.steps} steps, fingerprint {plan.fp[:12]}): nothing to do")
        return cfg.run

    if not stage.verify(cfg.run, plan.fp)[1]:  # finished: said before TensorFlow starts (checked again under the lock)
        return nothing_to_do()
    # before the train stage takes the run over (and withdraws a finished run's manifest): a run of
    # other shards or another model is refused untouched
    _check_resumable(cfg.run, cfg.data, plan.manifest, plan.model_cfg, cfg)

    from gpt2ja.model import trainer

    impl = trainer
    if cfg.backend == "jax":
        from gpt2ja.model import trainer_jax as impl
    rt = impl.start_runtime(cfg)
    _check_memory(plan.model_cfg, rt, cfg)

    finished: dict = {}

    def session() -> dict | None:
        """Train this host's part from the newest checkpoint to ``cfg.steps``; the chief returns the manifest."""
        s = impl.build_session(cfg, rt, plan, say)
        built = trainer.run_loop(cfg, rt, plan, s, impl.make_steps(cfg, rt, plan, s), say=say, on_log=on_log)
        finished["checkpoint"] = runs.latest_checkpoint(s.local)
        return built

    try:
        if not rt.chief:  # another host of a multi-worker job: the chief holds the run's lock and writes its manifest
            session()
            return cfg.run
        outcome = stage.run_stage(
            STAGE,
            cfg.run,
            fingerprint=plan.fp,
            build=session,
            inputs=[cfg.data, plan.tok_uri],
            prune=False,
            log=progress,
        )
    except TrainPaused as paused:
        say(str(paused))
        return cfg.run
    if outcome.skipped:  # another process finished it while this one started
        return nothing_to_do()
    say(f"run {cfg.run}: {cfg.steps:,} steps done, newest checkpoint {finished['checkpoint']}")
    return cfg.run


# ----------------------------------------------------------------- helpers


def _plan(cfg: TrainConfig) -> Plan:
    """Read and check the shards and their tokenizer, choose the model, compute the run's fingerprint."""
    from gpt2ja.model import data as data_mod
    from gpt2ja.tokenization.tokenizer import Tokenizer, TokenizerError

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
    return Plan(
        manifest=manifest,
        tok=tok,
        tok_uri=tok_uri,
        seq_len=seq_len,
        accum=accum,
        model_cfg=model_cfg,
        init_prefix=init_prefix,
        input_manifests=input_manifests,
        fp=fp,
    )


def _model_config(cfg: TrainConfig, vocab_size: int, seq_len: int) -> tuple[ModelConfig, str | None]:
    """The model to train and, with init_from, the checkpoint to start from."""
    if not cfg.init_from:
        try:
            return ModelConfig.from_preset(
                cfg.preset, vocab_size=vocab_size, context_length=seq_len, dropout=cfg.dropout
            ), None
        except ModelError as err:
            raise TrainError(str(err)) from None
    hparams = runs.read_hparams(cfg.init_from)
    base = runs.model_config(hparams, run_uri=f"init_from {cfg.init_from}")
    if cfg.preset and base.preset != cfg.preset:
        raise TrainError(
            f"init_from {cfg.init_from} is a {base.preset} model, not {cfg.preset}; drop preset "
            "or choose a run of that preset"
        )
    if base.vocab_size != vocab_size:
        raise TrainError(
            f"init_from {cfg.init_from} has a {base.vocab_size}-id vocabulary but the shards "
            f"{cfg.data} use {vocab_size}; build the shards with that run's tokenizer"
        )
    if seq_len > base.context_length:
        raise TrainError(
            f"shards {cfg.data} have seq_len {seq_len}, longer than the {base.context_length} "
            f"positions of init_from {cfg.init_from}; rebuild the shards with seq_len ≤ "
            f"{base.context_length}"
        )
    if cfg.dropout is not None:
        base = base.model_copy(update={"dropout": cfg.dropout})
    prefix = runs.latest_checkpoint(runs.fetch(cfg.init_from))
    if prefix is None:
        raise TrainError(f"init_from {cfg.init_from}: no checkpoint to start from; train that run first")
    return base, prefix


def _check_memory(model_cfg: ModelConfig, rt, cfg: TrainConfig) -> None:
    """Stop before building a model that cannot fit in this host's memory (CPU training only)."""
    if rt.accelerated:
        return  # accelerator memory is checked by the runtime; we cannot ask it cheaply before allocating
    need = training_memory_bytes(model_cfg, rt.per_replica, mixed_precision=cfg.mixed_precision != "off")
    have = host_memory_bytes()
    if have and need > have:
        raise TrainError(
            f"preset {model_cfg.preset} with micro_batch {cfg.micro_batch} needs about "
            f"{need / 2**30:.1f} GiB to train ({param_count(model_cfg):,} parameters), this machine "
            f"has {have / 2**30:.1f} GiB; use a smaller preset or micro_batch (with more "
            "accumulation steps)"
        )


def _check_resumable(run_uri: str, data_uri: str, manifest: dict, model_cfg: ModelConfig, cfg: TrainConfig) -> None:
    """Refuse to resume a run started on other shards, with another model or other optimisation settings.

    One read of its hparams; ``cfg.override`` lets other settings through (they are recorded when it resumes).
    """
    try:
        hparams = json.loads(storage.read_text(storage.join(run_uri, runs.HPARAMS)))
    except storage.StorageError:
        return  # a new run
    except ValueError:
        raise TrainError(
            f"run {run_uri}: {runs.HPARAMS} is not valid JSON; the run is damaged: delete it or choose another run URI"
        ) from None
    had = (hparams.get("data") or {}).get("fingerprint")
    if had and had != manifest.get("fingerprint"):
        raise TrainError(
            f"run {run_uri} was trained on other shards (fingerprint {had[:12]}, now "
            f"{str(manifest.get('fingerprint'))[:12]} at {data_uri}); choose another run URI, or "
            f"delete {run_uri} to train it again from scratch"
        )
    old = hparams.get("model")
    if old != model_cfg.model_dump():
        raise TrainError(
            f"run {run_uri} was started with another model ({old}); resume it with the same "
            "preset, data and dropout, or choose a new run URI"
        )
    changed = changed_settings(hparams.get("train") or {}, cfg)
    if changed and not cfg.override:
        said = ", ".join(f"{k} {a!r} → {b!r}" for k, (a, b) in changed.items())
        raise TrainError(
            f"run {run_uri} was trained with other settings ({said}); resume it with the same ones, "
            "or pass --override to go on with the new ones (the change is recorded in the run's "
            f"{runs.HPARAMS} history)"
        )


#: settings whose change alters the optimisation of a run being resumed (steps may grow: it is recorded)
GUARDED = (
    "batch_tokens",
    "learning_rate",
    "warmup_steps",
    "min_lr_ratio",
    "weight_decay",
    "beta1",
    "beta2",
    "epsilon",
    "clip_norm",
    "seed",
    "shuffle_buffer",
    "dropout",
    "mixed_precision",
    "tokenizer",
    "init_from",
    "backend",
)


def changed_settings(before: dict, cfg: TrainConfig) -> dict[str, tuple]:
    """``{setting: (before, now)}`` for the :data:`GUARDED` settings that differ from a run's hparams."""
    now = cfg.model_dump()
    return {k: (before.get(k), now[k]) for k in GUARDED if k in before and before.get(k) != now[k]}
