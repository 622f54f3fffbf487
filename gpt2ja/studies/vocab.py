"""The vocabulary study: one corpus, one model shape, the same number of training characters, several tokenizers.

The seed project guessed, without measuring, that a 117M model may do better
with a vocabulary smaller than GPT-2's 50k. This study trains the same model
shape on the same text with each tokenizer and compares them where
vocabularies can be compared: bits per character (and per UTF-8 byte) of raw
text, on the validation split and on the works of an author none of the
models (nor tokenizers) saw.

Every step is a pipeline stage writing an artifact with a manifest under
``root``, so a rerun skips what is complete and an interrupted study continues
where it stopped (a training run resumes from its newest checkpoint)::

    source ─crawl files─► {root}/raw/files/{crawl_id}
           ─clean (held-out author → validation)─► {corpus}
    {corpus}/train ─► {root}/tokenizers/{name}                     one per tokenizer
    {corpus}/train ─paragraph chunks sampled by hash─► {root}/pool   the same text for every model
    {corpus}/validation ─► {root}/eval-texts/{validation,heldout}  the same text for every evaluation
    pool + tokenizer ─► {root}/shards/{name}-{seq_len}
    shards ─► {root}/runs/{name}-s{seed}   steps = train_characters ÷ (batch_tokens × characters per token)
    run ─► {run}/eval-validation, {run}/eval-heldout               bits/char, bits/byte
    ─► {out}/{name}.md, {name}-bpc.png, {name}.csv

Characters per token are measured on the pool (the very text the models train
on, end-of-text ids included), so ``steps × batch_tokens`` tokens hold
``train_characters`` characters for every tokenizer.

Example::

    cfg = load_config("configs/studies/vocab.yaml", VocabStudyConfig)
    run_vocab_study(cfg, command="gpt2ja study vocab --config configs/studies/vocab.yaml")
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gpt2ja.infra import storage
from gpt2ja.model.evaluate import DEFAULT_BATCH_SIZE
from gpt2ja.studies.common import StudyError, check_shape, require_unique
from gpt2ja.studies.common import say as default_say
from gpt2ja.studies.report import machine
from gpt2ja.studies.vocab_data import ensure_corpus, ensure_eval_texts, ensure_pool, eval_split
from gpt2ja.studies.vocab_report import HELDOUT, VALIDATION, write_report
from gpt2ja.tokenization.train import DEFAULT_MODEL_TYPE

# Fields of TrainConfig the study sets itself (train_options may not override them).
_STUDY_TRAIN_FIELDS = {
    "data",
    "run",
    "preset",
    "steps",
    "batch_tokens",
    "micro_batch",
    "learning_rate",
    "warmup_steps",
    "seed",
    "eval_batches",
    "checkpoint_every",
    "log_every",
    "keep_checkpoints",
    "init_from",
    "tokenizer",
}


class TokenizerSpec(BaseModel):
    """One tokenizer of the study: a name (its artifact and run directories) and what to train."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$", description="artifact name, e.g. sp16k")
    kind: Literal["bytes", "sentencepiece", "mecab+sentencepiece"]
    vocab_size: int | None = Field(None, ge=257, le=65_536, description="ids (bytes: 257, or leave it out)")
    model_type: Literal["unigram", "bpe"] = DEFAULT_MODEL_TYPE
    seeds: list[int] | None = Field(None, min_length=1, description="training seeds; default: the study's seeds")
    character_coverage: float | None = Field(
        None,
        gt=0.5,
        le=1.0,
        description="sentencepiece: share of the text whose characters get pieces (the rest is "
        "byte fallback); default 0.9995, which needs ~4,400 ids on aozora-bulk",
    )
    sample_sentences: int | None = Field(
        None,
        ge=1,
        description="sentences sampled to train this tokenizer; default: tokenizer_sample_sentences "
        "(MeCab pre-segmentation needs more text for the same number of pieces)",
    )

    @model_validator(mode="after")
    def _size(self) -> "TokenizerSpec":
        if self.kind == "bytes" and self.vocab_size not in (None, 257):
            raise ValueError(f"tokenizer {self.name}: the bytes kind has 257 ids; drop vocab_size")
        if self.kind != "bytes" and self.vocab_size is None:
            raise ValueError(f"tokenizer {self.name}: {self.kind} needs vocab_size (e.g. 16000)")
        return self

    @property
    def size(self) -> int:
        return 257 if self.kind == "bytes" else int(self.vocab_size)


class VocabStudyConfig(BaseModel):
    """Everything the vocabulary study does; ``configs/studies/vocab.yaml`` is the default.

    Example::

        VocabStudyConfig(root="data/studies/vocab", source="../shared/aozora-bulk",
                         corpus="data/studies/vocab/clean/aozora-bulk", holdout_author="梶井基次郎",
                         tokenizers=[{"name": "bytes", "kind": "bytes"},
                                     {"name": "sp8k", "kind": "sentencepiece", "vocab_size": 8000}],
                         train_characters=250_000, batch_tokens=2048, micro_batch=8)
    """

    model_config = ConfigDict(extra="forbid")

    root: str = Field(description="where the study's artifacts go (local or gs://)")
    source: str = Field(description="a folder of .txt/.zip/.jsonl texts (the `files` source)")
    crawl_id: str = Field("aozora-bulk", pattern=r"^[A-Za-z0-9._-]+$", description="{root}/raw/files/{crawl_id}")
    corpus: str = Field(description="the clean corpus URI the study builds (or finds) with the author held out")
    holdout_author: str = Field(min_length=1, description="every work of this author is kept out of training")
    holdout_aliases: list[str] = Field(default_factory=list, description="other spellings of the author's name")
    validation_fraction: float = Field(0.05, ge=0.0, le=0.5, description="share of the other works in validation")
    clean_workers: int = Field(2, ge=1, le=256)

    tokenizers: list[TokenizerSpec] = Field(min_length=1)
    tokenizer_sample_sentences: int = Field(50_000, ge=1, description="sentences sampled to train each tokenizer")
    tokenizer_threads: int = Field(2, ge=1, le=256)

    preset: str = Field("mini", description="model preset; the same shape for every tokenizer")
    seq_len: int = Field(256, ge=8, le=8192)
    train_characters: int = Field(ge=1_000, description="characters of text every model trains on")
    batch_tokens: int = Field(ge=1, description="tokens per optimizer step (the same for every tokenizer)")
    micro_batch: int = Field(ge=1)
    learning_rate: float = Field(1e-3, gt=0, le=1)
    warmup_fraction: float = Field(0.1, ge=0, lt=1, description="warmup steps ÷ steps")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    checkpoint_every: int = Field(100, ge=1, description="steps between checkpoints (an interrupted run resumes)")
    log_every: int = Field(10, ge=1)
    train_options: dict[str, Any] = Field(
        default_factory=dict, description="other TrainConfig fields, e.g. mixed_precision: bf16"
    )

    pool_margin: float = Field(
        1.3, ge=1.0, le=100.0, description="pool characters ÷ train_characters (above 1: no text is seen twice)"
    )
    pool_chunk_chars: int = Field(2000, ge=100, description="paragraphs are grouped into chunks of at most this")
    num_shards: int = Field(4, ge=1, le=1024)
    shard_workers: int = Field(1, ge=1, le=256)

    eval_characters: int = Field(30_000, ge=100, description="characters of each evaluation text")
    eval_chunk_chars: int = Field(1000, ge=50, description="at most this much of each document (more documents)")
    eval_stride: int | None = Field(None, ge=1, description="sliding-window stride (default: half the context)")
    eval_batch_size: int = Field(DEFAULT_BATCH_SIZE, ge=1)

    out: str = Field("docs/studies", description="the report's folder")
    name: str = Field("vocab", pattern=r"^[A-Za-z0-9._-]+$", description="{out}/{name}.md, .csv, -bpc.png")

    @field_validator("tokenizers")
    @classmethod
    def _unique(cls, value: list[TokenizerSpec]) -> list[TokenizerSpec]:
        require_unique([t.name for t in value], "tokenizer")
        return value

    @model_validator(mode="after")
    def _check(self) -> "VocabStudyConfig":
        check_shape(self.preset, self.batch_tokens, self.micro_batch, self.seq_len)
        from gpt2ja.model.train import TrainConfig

        bad = sorted(set(self.train_options) - (set(TrainConfig.model_fields) - _STUDY_TRAIN_FIELDS))
        if bad:
            raise ValueError(
                f"train_options {', '.join(bad)}: not a TrainConfig field the study leaves open "
                "(it sets data, run, preset, steps, batch and seed itself)"
            )
        from pydantic import ValidationError

        try:  # the values too, now rather than after the tokenizers are trained
            TrainConfig(
                **{**self.train_options, "data": "-", "run": "-", "preset": self.preset, "steps": 2, "warmup_steps": 0}
            )
        except ValidationError as err:
            first = err.errors()[0]
            raise ValueError(f"train_options.{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
        return self

    @property
    def holdout_names(self) -> list[str]:
        return [self.holdout_author, *self.holdout_aliases]

    def seeds_of(self, spec: TokenizerSpec) -> list[int]:
        return spec.seeds or self.seeds


# ----------------------------------------------------------------- the study


def run_name(spec: TokenizerSpec, seed: int) -> str:
    return f"{spec.name}-s{seed}"


def steps_for(cfg: VocabStudyConfig, chars_per_step: float) -> int:
    """Optimizer steps that hold ``train_characters`` characters at ``chars_per_step`` characters per step."""
    return max(1, math.ceil(cfg.train_characters / chars_per_step))


def run_vocab_study(
    cfg: VocabStudyConfig, *, command: str = "gpt2ja study vocab", say: Callable[[str], None] = default_say
) -> dict[str, str]:
    """Run (or resume) the study and write its report; returns ``{"markdown", "png", "csv"}`` URIs.

    Stage errors (a bad corpus, tokenizer, shards or run) are raised as one-line
    :class:`StudyError` naming the stage.
    """
    from gpt2ja.model.evaluate import write_evaluation
    from gpt2ja.model.presets import ModelConfig, param_count
    from gpt2ja.model.train import TrainConfig, train
    from gpt2ja.tokenization.shards import ShardsConfig, write_shards
    from gpt2ja.tokenization.tokenizer import Tokenizer
    from gpt2ja.tokenization.train import train_tokenizer

    with _stage_errors("corpus"):
        corpus = ensure_corpus(cfg, say)
        pool = ensure_pool(cfg, corpus, say)
        texts = ensure_eval_texts(cfg, corpus, say)
    pool_manifest = storage.read_manifest(pool)
    plan = []
    for spec in cfg.tokenizers:
        tok_uri = storage.join(cfg.root, "tokenizers", spec.name)
        with _stage_errors(f"tokenizer {spec.name}"):
            say(f"tokenizer {spec.name}: {spec.kind} {spec.size:,}")
            coverage = {"character_coverage": spec.character_coverage} if spec.character_coverage else {}
            train_tokenizer(
                cfg.corpus,
                spec.kind,
                spec.size,
                tok_uri,
                model_type=spec.model_type,
                sample_sentences=spec.sample_sentences or cfg.tokenizer_sample_sentences,
                num_threads=cfg.tokenizer_threads,
                **coverage,
            )
        shards_uri = storage.join(cfg.root, "shards", f"{spec.name}-{cfg.seq_len}")
        with _stage_errors(f"shards {spec.name}"):
            write_shards(
                pool,
                tok_uri,
                shards_uri,
                ShardsConfig(seq_len=cfg.seq_len, workers=cfg.shard_workers, num_shards={"train": cfg.num_shards}),
            )
        train_counts = storage.read_manifest(shards_uri)["counts"]["splits"]["train"]
        chars = pool_manifest["counts"]["characters"]
        steps = steps_for(cfg, cfg.batch_tokens * chars / train_counts["tokens"])
        for seed in cfg.seeds_of(spec):
            plan.append((spec, seed, tok_uri, shards_uri, steps, train_counts))
    say("plan: " + "; ".join(f"{run_name(s, seed)} {steps:,} steps" for s, seed, _, _, steps, _ in plan))

    rows = []
    for spec, seed, tok_uri, shards_uri, steps, train_counts in plan:
        name = run_name(spec, seed)
        run_uri = storage.join(cfg.root, "runs", name)
        warmup = min(steps - 1, max(1 if steps > 1 else 0, round(cfg.warmup_fraction * steps)))
        with _stage_errors(f"run {name}"):
            train(
                TrainConfig(
                    **{
                        **cfg.train_options,
                        "data": shards_uri,
                        "run": run_uri,
                        "preset": cfg.preset,
                        "steps": steps,
                        "batch_tokens": cfg.batch_tokens,
                        "micro_batch": cfg.micro_batch,
                        "learning_rate": cfg.learning_rate,
                        "warmup_steps": warmup,
                        "seed": seed,
                        "eval_batches": 0,
                        "checkpoint_every": cfg.checkpoint_every,
                        "keep_checkpoints": 1,
                        "log_every": min(cfg.log_every, steps),
                    }
                ),
                progress=say,
            )
            figures = {}
            for which, uri in texts.items():
                out = storage.join(run_uri, f"eval-{which}")
                write_evaluation(
                    run_uri, [eval_split(uri)], out, stride=cfg.eval_stride, batch_size=cfg.eval_batch_size
                )
                figures[which] = json.loads(storage.read_text(storage.join(out, "eval.json")))
            say(
                f"run {name}: {figures[VALIDATION]['bits_per_character']:.4f} bits/char on validation, "
                f"{figures[HELDOUT]['bits_per_character']:.4f} on {cfg.holdout_author}"
            )
        model_cfg = ModelConfig.from_preset(cfg.preset, vocab_size=spec.size, context_length=cfg.seq_len)
        tok = Tokenizer.load(tok_uri)
        rows.append(
            _row(
                cfg,
                spec,
                seed,
                run_uri,
                steps,
                train_counts,
                pool_manifest,
                figures,
                model_cfg,
                param_count(model_cfg),
                tok,
            )
        )
    return write_report(cfg, rows, corpus, pool_manifest, texts, command=command)


def _people_errors() -> tuple[type, ...]:
    """The errors the stages raise for people: one line naming the artifact and the fix."""
    from gpt2ja.corpus.jsonl import ShardError
    from gpt2ja.model.backend import BackendError
    from gpt2ja.model.data import DataError
    from gpt2ja.model.distribute import StrategyError
    from gpt2ja.model.presets import ModelError
    from gpt2ja.model.train import TrainError
    from gpt2ja.tokenization.shards import ShardsError
    from gpt2ja.tokenization.tokenizer import TokenizerError

    return (
        ShardError,
        BackendError,
        DataError,
        StrategyError,
        ModelError,
        TrainError,
        ShardsError,
        TokenizerError,
        storage.StorageError,
    )


class _stage_errors:
    """Turn a stage's one-line errors (and the data stages' ``SystemExit("error: …")``) into a StudyError.

    A bad ``train_options`` value (pydantic's ValidationError) becomes one line
    too; anything else is a bug and keeps its traceback.
    """

    def __init__(self, stage: str) -> None:
        self.stage = stage

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        from pydantic import ValidationError

        if exc is None or isinstance(exc, StudyError):
            return False
        if isinstance(exc, SystemExit) and isinstance(exc.code, str):
            raise StudyError(f"{self.stage}: {exc.code.removeprefix('error: ')}") from None
        if isinstance(exc, ValidationError):
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise StudyError(
                f"{self.stage}: train_options.{field}: {first['msg']}; fix train_options in the study config"
            ) from None
        if isinstance(exc, _people_errors()):
            raise StudyError(f"{self.stage}: {exc}") from None
        return False


def _results_machine(cfg: VocabStudyConfig, name: str, run_uri: str) -> str:
    """The machine the run's numbers come from: recorded once per trained run in ``{root}/results/{name}.json``."""
    uri = storage.join(cfg.root, "results", f"{name}.json")
    fp = (storage.read_manifest(run_uri) or {}).get("fingerprint")
    try:
        record = json.loads(storage.read_text(uri))
        if record.get("run_fingerprint") == fp:
            return record["machine"]
    except (storage.StorageError, ValueError, KeyError):
        pass
    record = {"run": run_uri, "run_fingerprint": fp, "machine": machine()}
    storage.write_text(uri, json.dumps(record, ensure_ascii=False, indent=2, sort_keys=True) + "\n")
    return record["machine"]


def training_clock(metrics: list[dict], batch_tokens: int) -> list[tuple[float, dict]]:
    """(seconds of training so far, record) for each of a run's timed metrics.jsonl records.

    Each record covers the steps since the one before at its ``tokens_per_s``;
    the seconds are their running sum: the training loop's time, across
    resumed sessions (a resumed run is one clock).
    """
    out, seconds, previous = [], 0.0, 0
    for m in metrics:
        if m.get("tokens_per_s"):
            seconds += (m["step"] - previous) * batch_tokens / m["tokens_per_s"]
            previous = m["step"]
            out.append((seconds, m))
    return out


def training_speed(metrics: list[dict], batch_tokens: int) -> tuple[float | None, float | None, float | None]:
    """(tokens/s, seconds, last training loss) from a run's metrics.jsonl records (:func:`training_clock`).

    tokens/s is the median of the records after the first, whose window
    includes building the step function.
    """
    clock = training_clock(metrics, batch_tokens)
    if not clock:
        return None, None, None
    rates = [m["tokens_per_s"] for _, m in clock]
    return statistics.median(rates[1:] or rates), clock[-1][0], clock[-1][1].get("loss")


def _row(cfg, spec, seed, run_uri, steps, counts, pool_manifest, figures, model_cfg, params, tok) -> dict:
    from gpt2ja.model.evaluate import read_metrics

    name = run_name(spec, seed)
    chars = pool_manifest["counts"]["characters"]
    tokens_per_s, seconds, loss = training_speed(read_metrics(run_uri), cfg.batch_tokens)
    embedding = model_cfg.padded_vocab_size * model_cfg.hidden_dim + model_cfg.context_length * model_cfg.hidden_dim
    trained_tokens = steps * cfg.batch_tokens
    val, held = figures[VALIDATION], figures[HELDOUT]
    return {
        "tokenizer": spec.name,
        "kind": spec.kind,
        "vocab_size": spec.size,
        "seed": seed,
        "run": run_uri,
        "chars_per_token": round(chars / max(1, counts["tokens"] - counts["documents"]), 4),
        "chars_per_token_validation": (tok.stats or {}).get("chars_per_token"),
        "steps": steps,
        "batch_tokens": cfg.batch_tokens,
        "train_tokens": trained_tokens,
        "train_characters": round(trained_tokens * chars / counts["tokens"]),
        "epochs": round(trained_tokens / max(1, counts["examples"] * cfg.seq_len), 3),
        "embedding_params": embedding,
        "non_embedding_params": params - embedding,
        "params": params,
        "tokens_per_s": round(tokens_per_s, 1) if tokens_per_s else None,
        "train_seconds": round(seconds, 1) if seconds else None,
        "final_train_loss": round(loss, 4) if loss is not None else None,
        "bpc_validation": val["bits_per_character"],
        "bpb_validation": val["bits_per_byte"],
        "token_ppl_validation": val["token_perplexity"],
        "bpc_heldout": held["bits_per_character"],
        "bpb_heldout": held["bits_per_byte"],
        "machine": _results_machine(cfg, name, run_uri),
    }
