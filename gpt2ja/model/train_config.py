"""What a training run is: its config (:class:`TrainConfig`, stored in the run's ``hparams.json``), its errors, the
:class:`Plan` that :func:`gpt2ja.model.train.train` settles before a backend starts, and the settings a resume must
not change (:data:`GUARDED`). :mod:`gpt2ja.model.train`, both trainers and :mod:`gpt2ja.model.runs` import it."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gpt2ja.infra.errors import Gpt2jaError
from gpt2ja.model.presets import ModelConfig

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
