"""The CPU recipe study: for one fixed budget of training time, which shape, vocabulary, batch and schedule win?

Every candidate trains for the same wall-clock budget on the same machine, on
the whole train split of one corpus from which an author is held out (kept
out of the tokenizers' training text too), and is scored in bits per
character on the validation text and on the held-out author, beside PPMd
order 8 alone and primed with training text (``gpt2ja eval``'s baselines)::

    source ─crawl files─► {root}/raw/files/{crawl_id} ─clean (author → validation)─► {corpus}
    {corpus}/train ─► {root}/tokenizers/{name}
    {corpus} + tokenizer ─► {root}/shards/{tokenizer}-{seq_len}
    candidate ─calibration_steps steps─► {root}/calibration/{name}    tokens/s on this machine
              ─► {root}/plan/{name}.json     steps = budget × tokens/s ÷ batch_tokens (fixed once written)
              ─► {root}/runs/{name}-s{seed} ─► eval-validation, eval-heldout
    ─► {out}/{name}.md, {name}.csv, {name}-loss.png (training loss against minutes)

A budget in time, not in tokens, is the question a CPU user has ("what do I
get from two hours?"): a wider model, a larger vocabulary or a longer
sequence costs tokens per second, and the study charges that cost. The steps
are fixed from a short calibration run, once, in ``{root}/plan/``: a rerun
resumes the same schedule whatever the machine's load is then; the report
gives each run's measured training time beside the budget.

Example::

    cfg = load_config("configs/studies/recipe.yaml", RecipeStudyConfig)
    run_recipe_study(cfg, command="gpt2ja study recipe --config configs/studies/recipe.yaml")
"""

from __future__ import annotations

import csv
import io
import json
import math
import shlex
import statistics
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gpt2ja.infra import storage
from gpt2ja.model.baselines import DEFAULT_PRIME_CHARS
from gpt2ja.model.evaluate import DEFAULT_BATCH_SIZE
from gpt2ja.studies.common import StudyError, check_shape, require_unique
from gpt2ja.studies.common import say as default_say
from gpt2ja.studies.report import machine, pyplot, save_png
from gpt2ja.studies.vocab import TokenizerSpec, _stage_errors, training_clock, training_speed
from gpt2ja.studies.vocab_data import ensure_corpus, ensure_eval_texts, eval_split
from gpt2ja.studies.vocab_report import HELDOUT, VALIDATION

PLAN_VERSION = 1
# TrainConfig fields a candidate sets itself (train_options may not override them).
_OWN_FIELDS = {
    "data",
    "run",
    "preset",
    "steps",
    "batch_tokens",
    "micro_batch",
    "learning_rate",
    "warmup_steps",
    "min_lr_ratio",
    "dropout",
    "seed",
    "eval_batches",
    "checkpoint_every",
    "log_every",
    "keep_checkpoints",
    "init_from",
    "tokenizer",
    "stop_at",
}


class Candidate(BaseModel):
    """One recipe: a model shape on a tokenizer's shards with a batch and a learning-rate schedule."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$", description="its run directory, e.g. micro-sp8k")
    preset: str
    tokenizer: str = Field(description="the name of one of the study's tokenizers")
    seq_len: int = Field(256, ge=8, le=8192)
    batch_tokens: int = Field(ge=1, description="tokens per optimizer step")
    micro_batch: int = Field(ge=1)
    learning_rate: float = Field(gt=0, le=1)
    warmup_fraction: float = Field(0.05, ge=0, lt=1, description="warmup steps ÷ steps")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="the cosine decay ends at peak × this")
    dropout: float | None = Field(None, ge=0, lt=1, description="default: the preset's")

    @model_validator(mode="after")
    def _check(self) -> "Candidate":
        check_shape(self.preset, self.batch_tokens, self.micro_batch, self.seq_len, f"candidate {self.name}: ")
        return self


class RecipeStudyConfig(BaseModel):
    """Everything the recipe study does; ``configs/studies/recipe.yaml`` is the default."""

    model_config = ConfigDict(extra="forbid")

    root: str = Field(description="where the study's artifacts go (local or gs://)")
    source: str = Field(description="a folder of .txt/.zip/.jsonl texts (the `files` source)")
    crawl_id: str = Field("aozora-bulk", pattern=r"^[A-Za-z0-9._-]+$")
    corpus: str = Field(description="the clean corpus URI the study builds (or finds) with the author held out")
    holdout_author: str = Field(min_length=1, description="every work of this author is kept out of training")
    holdout_aliases: list[str] = Field(default_factory=list)
    validation_fraction: float = Field(0.05, ge=0.0, le=0.5)
    clean_workers: int = Field(2, ge=1, le=256)

    tokenizers: list[TokenizerSpec] = Field(min_length=1)
    tokenizer_sample_sentences: int = Field(200_000, ge=1)
    tokenizer_threads: int = Field(2, ge=1, le=256)
    num_shards: int = Field(16, ge=1, le=1024)
    shard_workers: int = Field(1, ge=1, le=256)

    candidates: list[Candidate] = Field(min_length=1)
    budget_minutes: float = Field(
        gt=0,
        description="training time of every candidate (calibration and "
        "evaluation not counted): the proxy runs that rank them",
    )
    final_minutes: float | None = Field(
        None,
        gt=0,
        description="the best candidate trained once more for this "
        "long (seed seeds[0], steps from its calibration): "
        "the study's result; none: the ranking only",
    )
    calibration_steps: int = Field(
        6,
        ge=3,
        description="steps of the calibration run (the first two, which build the step function, are not timed)",
    )
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    winner_seeds: list[int] = Field(
        default_factory=list,
        description="more seeds for the best candidate once all have run: the noise of the result that counts",
    )
    checkpoints: int = Field(8, ge=1, description="checkpoints per run (an interrupted run resumes from the last)")
    log_every: int = Field(20, ge=1)
    train_options: dict[str, Any] = Field(
        default_factory=dict, description="other TrainConfig fields, e.g. jit_compile: true"
    )

    eval_characters: int = Field(100_000, ge=100, description="characters of each evaluation text")
    eval_chunk_chars: int = Field(5_000, ge=50, description="at most this much of each document")
    eval_stride: int | None = Field(None, ge=1)
    eval_batch_size: int = Field(DEFAULT_BATCH_SIZE, ge=1)
    prime_chars: int = Field(DEFAULT_PRIME_CHARS, ge=0, description="training text that primes PPMd in the baselines")

    out: str = Field("docs/studies")
    name: str = Field("recipe", pattern=r"^[A-Za-z0-9._-]+$")

    @field_validator("tokenizers")
    @classmethod
    def _unique_tokenizers(cls, value: list[TokenizerSpec]) -> list[TokenizerSpec]:
        require_unique([t.name for t in value], "tokenizer")
        return value

    @field_validator("candidates")
    @classmethod
    def _unique_candidates(cls, value: list[Candidate]) -> list[Candidate]:
        require_unique([c.name for c in value], "candidate")
        return value

    @model_validator(mode="after")
    def _check(self) -> "RecipeStudyConfig":
        names = {t.name for t in self.tokenizers}
        for cand in self.candidates:
            if cand.tokenizer not in names:
                raise ValueError(
                    f"candidate {cand.name}: tokenizer {cand.tokenizer!r} is not one of the study's "
                    f"tokenizers ({', '.join(sorted(names))})"
                )
        from gpt2ja.model.train import TrainConfig

        bad = sorted(set(self.train_options) - (set(TrainConfig.model_fields) - _OWN_FIELDS))
        if bad:
            raise ValueError(
                f"train_options {', '.join(bad)}: not a TrainConfig field the study leaves open "
                "(each candidate sets its shape, batch, schedule and steps)"
            )
        return self

    @property
    def holdout_names(self) -> list[str]:
        return [self.holdout_author, *self.holdout_aliases]

    def tokenizer(self, name: str) -> TokenizerSpec:
        return next(t for t in self.tokenizers if t.name == name)


def run_name(cand: Candidate, seed: int, final: bool = False) -> str:
    return f"{cand.name}-{'final-' if final else ''}s{seed}"


def final_steps(cfg: RecipeStudyConfig, cand: Candidate, plan: dict) -> int:
    """The final run's steps: ``final_minutes`` at the candidate's calibrated tokens/s (fixed with its plan)."""
    return max(1, math.floor((cfg.final_minutes or 0) * 60 * plan["tokens_per_s"] / cand.batch_tokens))


def _train_config(
    cfg: RecipeStudyConfig,
    cand: Candidate,
    shards: str,
    run: str,
    steps: int,
    seed: int,
    checkpoints: int | None = None,
):
    from gpt2ja.model.train import TrainConfig

    checkpoints = checkpoints or cfg.checkpoints
    warmup = min(steps - 1, max(1 if steps > 1 else 0, round(cand.warmup_fraction * steps)))
    return TrainConfig(
        **{
            **cfg.train_options,
            "data": shards,
            "run": run,
            "preset": cand.preset,
            "steps": steps,
            "batch_tokens": cand.batch_tokens,
            "micro_batch": cand.micro_batch,
            "learning_rate": cand.learning_rate,
            "warmup_steps": warmup,
            "min_lr_ratio": cand.min_lr_ratio,
            "dropout": cand.dropout,
            "seed": seed,
            "eval_batches": 0,
            "checkpoint_every": max(1, math.ceil(steps / checkpoints)),
            "keep_checkpoints": 1,
            "log_every": max(1, min(cfg.log_every, steps)),
        }
    )


def train_command(cand: Candidate, shards: str, run: str, steps: int, seed: int, train_options: dict) -> str:
    """The ``gpt2ja train`` command line that trains ``cand`` as the study did."""
    warmup = min(steps - 1, max(1 if steps > 1 else 0, round(cand.warmup_fraction * steps)))
    parts = [
        "gpt2ja",
        "train",
        "--data",
        shards,
        "--run",
        run,
        "--preset",
        cand.preset,
        "--steps",
        str(steps),
        "--batch-tokens",
        str(cand.batch_tokens),
        "--micro-batch",
        str(cand.micro_batch),
        "--learning-rate",
        f"{cand.learning_rate:g}",
        "--warmup-steps",
        str(warmup),
    ]
    sets = {
        "seed": seed,
        "min_lr_ratio": cand.min_lr_ratio,
        **({"dropout": cand.dropout} if cand.dropout is not None else {}),
        "eval_batches": 0,
        **train_options,
    }
    for key, value in sets.items():
        parts += ["--set", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    return " ".join(shlex.quote(p) for p in parts)


def _plan(cfg: RecipeStudyConfig, cand: Candidate, shards: str, say: Callable[[str], None]) -> dict:
    """Steps for the budget, from a calibration run's tokens/s; written once to ``{root}/plan/{name}.json``.

    The plan's key is the candidate, its shards' fingerprint and the budget:
    a rerun with the same key keeps the steps (the run resumes the same
    schedule) whatever the machine's speed is then.
    """
    from gpt2ja.model.evaluate import read_metrics
    from gpt2ja.model.train import train

    shards_fp = (storage.read_manifest(shards) or {}).get("fingerprint")
    key = {
        "version": PLAN_VERSION,
        "candidate": cand.model_dump(),
        "shards": shards_fp,
        "budget_minutes": cfg.budget_minutes,
        "train_options": cfg.train_options,
    }
    uri = storage.join(cfg.root, "plan", f"{cand.name}.json")
    if storage.exists(uri):
        try:
            plan = json.loads(storage.read_text(uri))
        except ValueError:
            plan = {}
        if plan.get("key") == key:
            return plan
    calib = storage.join(cfg.root, "calibration", cand.name)
    storage.delete(calib)  # a calibration of other settings, or one cut short
    tcfg = _train_config(cfg, cand, shards, calib, cfg.calibration_steps, cfg.seeds[0])
    train(tcfg.model_copy(update={"log_every": 1, "checkpoint_every": cfg.calibration_steps}), progress=lambda _: None)
    rates = [m["tokens_per_s"] for m in read_metrics(calib) if m.get("tokens_per_s") and m["step"] > 2]
    if not rates:
        raise StudyError(
            f"candidate {cand.name}: the calibration run {calib} logged no tokens/s; raise calibration_steps"
        )
    tokens_per_s = statistics.median(rates)
    steps = max(1, math.floor(cfg.budget_minutes * 60 * tokens_per_s / cand.batch_tokens))
    plan = {"key": key, "tokens_per_s": round(tokens_per_s, 1), "steps": steps, "machine": machine()}
    storage.write_text(uri, json.dumps(plan, ensure_ascii=False, indent=2, sort_keys=True) + "\n")
    storage.delete(calib)
    say(
        f"plan {cand.name}: {tokens_per_s:,.0f} tokens/s in calibration → {steps:,} steps of "
        f"{cand.batch_tokens:,} tokens for {cfg.budget_minutes:g} min"
    )
    return plan


def prepare(cfg: RecipeStudyConfig, say: Callable[[str], None] = default_say) -> tuple[dict, dict]:
    """The corpus, the evaluation texts, each tokenizer and its shards (each skipped when complete).

    Returns ``(texts, shards)``: ``{"validation"|"heldout": uri}`` and ``{(tokenizer, seq_len): shards uri}``.
    """
    from gpt2ja.tokenization.shards import ShardsConfig, write_shards
    from gpt2ja.tokenization.train import train_tokenizer

    with _stage_errors("corpus"):
        corpus = ensure_corpus(cfg, say)
        texts = ensure_eval_texts(cfg, corpus, say)
    shards: dict[tuple[str, int], str] = {}
    for cand in cfg.candidates:
        spec = cfg.tokenizer(cand.tokenizer)
        tok_uri = storage.join(cfg.root, "tokenizers", spec.name)
        key = (spec.name, cand.seq_len)
        if key in shards:
            continue
        with _stage_errors(f"tokenizer {spec.name}"):
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
        shards[key] = storage.join(cfg.root, "shards", f"{spec.name}-{cand.seq_len}")
        with _stage_errors(f"shards {spec.name}-{cand.seq_len}"):
            write_shards(
                cfg.corpus,
                tok_uri,
                shards[key],
                ShardsConfig(
                    seq_len=cand.seq_len,
                    workers=cfg.shard_workers,
                    num_shards={"train": cfg.num_shards, "validation": 1},
                ),
            )
    return texts, shards


def run_recipe_study(
    cfg: RecipeStudyConfig, *, command: str = "gpt2ja study recipe", say: Callable[[str], None] = default_say
) -> dict[str, str]:
    """Run (or resume) the study and write its report; returns ``{"markdown", "csv"}`` URIs."""
    texts, shards = prepare(cfg, say)
    plans = {}
    for cand in cfg.candidates:
        with _stage_errors(f"calibration {cand.name}"):
            plans[cand.name] = _plan(cfg, cand, shards[(cand.tokenizer, cand.seq_len)], say)
    say("plan: " + "; ".join(f"{c.name} {plans[c.name]['steps']:,} steps" for c in cfg.candidates))

    rows = []
    for cand in cfg.candidates:
        for seed in cfg.seeds:
            rows.append(_train_and_score(cfg, cand, seed, shards, plans, texts, say))
    best = next(c for c in cfg.candidates if c.name == summarise(rows)[0]["candidate"])
    for seed in cfg.winner_seeds:
        if seed not in cfg.seeds:
            say(f"winner {best.name}: seed {seed}")
            rows.append(_train_and_score(cfg, best, seed, shards, plans, texts, say))
    if cfg.final_minutes:
        steps = final_steps(cfg, best, plans[best.name])
        say(
            f"final {best.name}: {steps:,} steps of {best.batch_tokens:,} tokens for {cfg.final_minutes:g} min "
            f"(seed {cfg.seeds[0]}; interrupt and rerun the same command to resume)"
        )
        rows.append(_train_and_score(cfg, best, cfg.seeds[0], shards, plans, texts, say, final=True))
    return write_report(cfg, rows, texts, command=command, machine_line=plans[cfg.candidates[0].name]["machine"])


def _train_and_score(
    cfg: RecipeStudyConfig,
    cand: Candidate,
    seed: int,
    shards: dict,
    plans: dict,
    texts: dict[str, str],
    say: Callable[[str], None],
    final: bool = False,
) -> dict:
    """Train (or find) the run of ``cand`` with ``seed``, evaluate it on both texts; its CSV row.

    ``final``: the run of ``final_minutes``, checkpointed about every 5 minutes of
    its training (a long run is the one most likely to be interrupted).
    """
    from gpt2ja.model.evaluate import read_metrics, write_evaluation
    from gpt2ja.model.presets import ModelConfig, param_count
    from gpt2ja.model.train import train

    data = shards[(cand.tokenizer, cand.seq_len)]
    steps = final_steps(cfg, cand, plans[cand.name]) if final else plans[cand.name]["steps"]
    checkpoints = max(cfg.checkpoints, math.ceil((cfg.final_minutes or 0) / 5)) if final else cfg.checkpoints
    counts = storage.read_manifest(data)["counts"]["splits"]["train"]
    spec = cfg.tokenizer(cand.tokenizer)
    model_cfg = ModelConfig.from_preset(cand.preset, vocab_size=spec.size, context_length=cand.seq_len)
    name = run_name(cand, seed, final)
    run_uri = storage.join(cfg.root, "runs", name)
    with _stage_errors(f"run {name}"):
        train(_train_config(cfg, cand, data, run_uri, steps, seed, checkpoints), progress=say)
        figures = {}
        for which, uri in texts.items():
            out = storage.join(run_uri, f"eval-{which}")
            write_evaluation(
                run_uri,
                [eval_split(uri)],
                out,
                stride=cfg.eval_stride,
                batch_size=cfg.eval_batch_size,
                prime_chars=cfg.prime_chars,
            )
            figures[which] = json.loads(storage.read_text(storage.join(out, "eval.json")))
    tokens_per_s, seconds, loss = training_speed(read_metrics(run_uri), cand.batch_tokens)
    val, held = figures[VALIDATION], figures[HELDOUT]
    hb = held.get("baselines") or {}
    row = {
        "stage": "final" if final else "proxy",
        "candidate": cand.name,
        "seed": seed,
        "preset": cand.preset,
        "tokenizer": spec.name,
        "vocab_size": spec.size,
        "seq_len": cand.seq_len,
        "batch_tokens": cand.batch_tokens,
        "learning_rate": cand.learning_rate,
        "warmup_fraction": cand.warmup_fraction,
        "min_lr_ratio": cand.min_lr_ratio,
        "params": param_count(model_cfg),
        "steps": steps,
        "train_tokens": steps * cand.batch_tokens,
        "epochs": round(steps * cand.batch_tokens / max(1, counts["examples"] * cand.seq_len), 3),
        "calibration_tokens_per_s": plans[cand.name]["tokens_per_s"],
        "tokens_per_s": round(tokens_per_s, 1) if tokens_per_s else None,
        "train_minutes": round(seconds / 60, 2) if seconds else None,
        "final_train_loss": round(loss, 4) if loss is not None else None,
        "bpc_validation": val["bits_per_character"],
        "bpc_heldout": held["bits_per_character"],
        "ppmd_heldout": hb.get("ppmd_order8_bits_per_character"),
        "ppmd_primed_heldout": hb.get("ppmd_order8_primed_bits_per_character"),
        "ppmd_validation": (val.get("baselines") or {}).get("ppmd_order8_bits_per_character"),
        "run": run_uri,
        "command": train_command(cand, data, run_uri, steps, seed, cfg.train_options),
    }
    say(
        f"run {name}: {val['bits_per_character']:.4f} bits/char on validation, {held['bits_per_character']:.4f} "
        f"on {cfg.holdout_author} (PPMd alone {row['ppmd_heldout']}, primed {row['ppmd_primed_heldout']})"
    )
    return row


# ----------------------------------------------------------------- the report

COLUMNS = [
    "stage",
    "candidate",
    "seed",
    "preset",
    "tokenizer",
    "vocab_size",
    "seq_len",
    "batch_tokens",
    "learning_rate",
    "warmup_fraction",
    "min_lr_ratio",
    "params",
    "steps",
    "train_tokens",
    "epochs",
    "calibration_tokens_per_s",
    "tokens_per_s",
    "train_minutes",
    "final_train_loss",
    "bpc_validation",
    "bpc_heldout",
    "ppmd_heldout",
    "ppmd_primed_heldout",
    "ppmd_validation",
    "run",
    "command",
]


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def summarise(rows: list[dict]) -> list[dict]:
    """One entry per candidate, best held-out bits/char first: mean over seeds and the seeds' spread."""
    by: dict[str, list[dict]] = {}
    for row in rows:
        by.setdefault(row["candidate"], []).append(row)
    out = []
    for name, group in by.items():
        held = [r["bpc_heldout"] for r in group]
        out.append(
            {
                **group[0],
                "bpc_heldout": _mean(held),
                "spread": max(held) - min(held),
                "bpc_validation": _mean([r["bpc_validation"] for r in group]),
                "seeds": len(group),
            }
        )
    return sorted(out, key=lambda r: r["bpc_heldout"])


def verdict(best: dict, spread: float) -> str:
    """A sentence: does the best candidate beat PPMd order 8 alone on the held-out author by more than ``spread``?"""
    ppmd, primed = best.get("ppmd_heldout"), best.get("ppmd_primed_heldout")
    if ppmd is None:
        return "No PPMd figure was computed for the held-out text."
    gap = ppmd - best["bpc_heldout"]
    if gap > spread:
        head = (
            f"The best candidate, {best['candidate']}, beats PPMd order 8 alone on the held-out author by "
            f"{gap:.3f} bits/char ({best['bpc_heldout']:.3f} vs {ppmd:.3f}), more than the seed spread "
            f"({spread:.3f})."
        )
    elif gap > 0:
        head = (
            f"The best candidate, {best['candidate']}, is {gap:.3f} bits/char below PPMd order 8 alone on the "
            f"held-out author ({best['bpc_heldout']:.3f} vs {ppmd:.3f}), not more than the seed spread "
            f"({spread:.3f}): not a clear win."
        )
    else:
        head = (
            f"No candidate beats PPMd order 8 alone on the held-out author: the best, {best['candidate']}, "
            f"gives {best['bpc_heldout']:.3f} bits/char against {ppmd:.3f}."
        )
    if primed is not None:
        behind = best["bpc_heldout"] - primed
        head += (
            f" PPMd primed with training text gives {primed:.3f}: {behind:+.3f} to go."
            if behind > 0
            else f" It beats PPMd primed with training text ({primed:.3f}) too, by {-behind:.3f}."
        )
    return head


def plot_losses(rows: list[dict]):
    """Training loss (nats/token) against minutes of training, one line per run: what each budget bought.

    Minutes are the training loop's time summed from ``metrics.jsonl`` (each record's
    steps at its tokens/s), so a run resumed after an interruption plots as one line.
    Losses of different tokenizers are per token of each: compare their ends with
    the bits/char of the table, not their heights.
    """
    from gpt2ja.model.evaluate import read_metrics

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=100)
    for row in rows:
        clock = training_clock(read_metrics(row["run"]), row["batch_tokens"])
        points = [(seconds / 60, m["loss"]) for seconds, m in clock if m.get("loss") is not None]
        xs, ys = [x for x, _ in points], [y for _, y in points]
        ax.plot(
            xs,
            ys,
            label=f"{row['candidate']} {'final ' if row.get('stage') == 'final' else ''}s{row['seed']}",
            linewidth=1.2,
        )
    ax.set_xlabel("minutes of training")
    ax.set_ylabel("training loss (nats per token of its tokenizer)")
    ax.set_title("Recipe study: training loss within the budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _final_section(cfg: RecipeStudyConfig, final: dict, best: dict, spread: float) -> list[str]:
    """The report's head when the winner also ran for ``final_minutes``: its figures, PPMd, its command."""
    return [
        f"## The winner, {final['candidate']}, for {cfg.final_minutes:g} minutes",
        "",
        "**" + verdict(final, spread).replace("The best candidate", "The final run of the best candidate") + "**",
        "",
        "| run | steps | epochs | tokens/s | minutes | train loss | bits/char validation | bits/char held-out |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {final['candidate']} for {cfg.final_minutes:g} min | {final['steps']:,} | {final['epochs']:.2f} | "
        f"{final['tokens_per_s'] or 0:,.0f} | {final['train_minutes'] or 0:.2f} | {final['final_train_loss']} | "
        f"{final['bpc_validation']:.3f} | {final['bpc_heldout']:.3f} |",
        f"| {best['candidate']} for {cfg.budget_minutes:g} min (mean of {best['seeds']} seeds) | {best['steps']:,} | "
        f"{best['epochs']:.2f} | {best['tokens_per_s'] or 0:,.0f} | {best['train_minutes'] or 0:.2f} | "
        f"{best['final_train_loss']} | {best['bpc_validation']:.3f} | {best['bpc_heldout']:.3f} |",
        "",
        f"The seed spread ({spread:.3f} bits/char) is measured on the {cfg.budget_minutes:g}-minute runs.",
        "",
        "The final run by one command (the same data, steps, schedule and seed; a new `--run` trains it again):",
        "",
        "```sh",
        final["command"],
        "```",
        "",
    ]


def write_report(
    cfg: RecipeStudyConfig, rows: list[dict], texts: dict[str, str], *, command: str, machine_line: str
) -> dict[str, str]:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k) for k in COLUMNS})
    csv_uri = storage.join(cfg.out, f"{cfg.name}.csv")
    storage.write_text(csv_uri, buf.getvalue())

    final = next((r for r in rows if r.get("stage") == "final"), None)
    summary = summarise([r for r in rows if r.get("stage") != "final"])
    multi = [s for s in summary if s["seeds"] > 1]
    spread = max((s["spread"] for s in multi), default=0.0)
    chars = {k: storage.read_manifest(v)["counts"]["characters"] for k, v in texts.items()}
    best = summary[0]
    title = cfg.final_minutes if final else cfg.budget_minutes
    lines = [
        f"# Recipe study: the best model {title:g} minutes of CPU training buy",
        "",
        "```sh",
        command,
        "```",
        "",
        f"Machine: {machine_line}",
        "",
        f"Every candidate trains for the same time budget ({cfg.budget_minutes:g} min, steps fixed from a "
        f"{cfg.calibration_steps}-step calibration run) on the train split of `{cfg.corpus}`, from which "
        f"{cfg.holdout_author} is held out (as from the tokenizers' training text). Bits per character on "
        f"{chars[VALIDATION]:,} characters of validation text (other authors) and {chars[HELDOUT]:,} of "
        f"{cfg.holdout_author}; PPMd order 8 on the same characters, alone and primed with "
        f"{cfg.prime_chars:,} characters of training text.",
        "",
    ]
    if final:
        lines += _final_section(cfg, final, best, spread)
        lines += [f"## The ranking: every candidate for {cfg.budget_minutes:g} minutes", ""]
    lines += [
        "**" + verdict(best, spread) + "**",
        "",
        "| candidate | preset | tokenizer | seq | batch tokens | lr | params | steps | epochs | tokens/s | "
        "minutes | train loss | bits/char validation | bits/char held-out |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in summary:
        held = f"{s['bpc_heldout']:.3f}" + (f" ± {s['spread'] / 2:.3f}" if s["seeds"] > 1 else "")
        lines.append(
            f"| {s['candidate']} | {s['preset']} | {s['tokenizer']} | {s['seq_len']} | "
            f"{s['batch_tokens']:,} | {s['learning_rate']:g} | {s['params'] / 1e6:.2f} M | {s['steps']:,} | "
            f"{s['epochs']:.2f} | {s['tokens_per_s'] or 0:,.0f} | {s['train_minutes'] or 0:.2f} | "
            f"{s['final_train_loss']} | {s['bpc_validation']:.3f} | {held} |"
        )
    lines += [
        "",
        f"PPMd order 8 on the same texts, bits/char: validation {_fmt(best.get('ppmd_validation'))}, "
        f"held-out {_fmt(best.get('ppmd_heldout'))} alone and {_fmt(best.get('ppmd_primed_heldout'))} primed.",
        "",
    ]
    if multi:
        lines += [
            f"Noise: the largest difference between seeds of one candidate is {spread:.3f} bits/char "
            f"({', '.join(s['candidate'] for s in multi)}); differences smaller than that are not results.",
            "",
        ]
    else:
        lines += ["Noise: each candidate ran with one seed; the report cannot tell small differences from noise.", ""]
    png_uri = storage.join(cfg.out, f"{cfg.name}-loss.png")
    save_png(plot_losses(rows), png_uri)
    lines += [
        f"![training loss against minutes of training]({cfg.name}-loss.png)",
        "",
        "Training loss per logged step against the training loop's minutes (from each run's "
        "`metrics.jsonl`); losses are per token of each run's tokenizer, so only the table's bits/char "
        "compare candidates of different vocabularies.",
        "",
    ]
    lines += (
        [
            "The winner's run by one command (the same data, steps, schedule and seed; a new `--run` trains it again):",
            "",
            "```sh",
            best["command"],
            "```",
            "",
        ]
        if not final
        else []
    )
    lines += [
        "## What it does not show",
        "",
        f"- One ranking budget ({cfg.budget_minutes:g} min) on one machine: a longer budget favours larger "
        "models; the order of the candidates can change with the budget"
        + (f" (only the winner ran for {cfg.final_minutes:g} min)." if final else "."),
        "- Time, not tokens, is held fixed: a machine with another balance of matmul speed and per-op "
        "overhead (a GPU) charges the candidates differently.",
        "- Steps come from a short calibration run; the measured minutes in the table show how well that "
        "predicted the run on a machine whose load changed.",
        "",
    ]
    md_uri = storage.join(cfg.out, f"{cfg.name}.md")
    storage.write_text(md_uri, "\n".join(lines))
    return {"markdown": md_uri, "csv": csv_uri, "png_loss": png_uri}
