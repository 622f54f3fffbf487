"""The sampling study: decoding methods against human text, at several prompt lengths (Holtzman et al., 2020).

The seed project noticed, without measuring, that top-p gives more natural
but less context-related text than top-k, and that top-k should shrink as the
context grows. This study measures both on one trained run:

1. **Prompts.** ``prompts`` documents of the evaluation texts (the longest
   enough, in a fixed hash order) are cut at one point per document, the first
   sentence end after the longest context; the prompt for context length ``L``
   is the ``L`` characters before the cut, the human continuation the
   ``continuation_chars`` characters after it. Every context length shares the
   cut, so only the amount of context changes.
2. **Decoding.** Each method of the grid continues every prompt once per seed
   (greedy once: it has no randomness) up to ``continuation_chars`` characters
   (or end of text), with :func:`gpt2ja.model.generate.generate`.
3. **Scoring.** Every continuation, and the human one, is scored by the model
   twice: after its prompt (``EOS prompt continuation``) and alone (``EOS
   continuation``); only the continuation's tokens count, each seeing up to the
   model's context (sliding windows as in :mod:`gpt2ja.model.evaluate`).
4. **Metrics** per (context length, method, seed) over the ``prompts``
   continuations: :func:`gpt2ja.studies.metrics.text_metrics` (distinct-n, rep-n,
   repetition, Zipf, self-BLEU-4, prompt overlap), plus perplexity per token and
   bits per character of the continuation given the prompt, and the
   **context gain** ``(log p(c | prompt) − log p(c)) / ln 2 / characters`` in
   bits per character (how much more likely the prompt makes the continuation:
   a relevance measure). Seeds are averaged; their range is the noise.

Each (context, method, seed) cell is a small JSON file under ``work`` keyed by
a fingerprint of the run, the prompts and the settings: an interrupted study
reuses the cells it finished.

Example::

    cfg = load_config("configs/studies/sampling.yaml", SamplingStudyConfig)
    run_sampling_study("data/bulk/runs/tiny-sp8k", cfg)
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gpt2ja.infra import storage
from gpt2ja.infra.stage import require
from gpt2ja.model.evaluate import DEFAULT_BATCH_SIZE
from gpt2ja.studies.common import StudyError, require_unique, slug
from gpt2ja.studies.common import say as default_say
from gpt2ja.studies.metrics import text_metrics

VERSION = 1
LN2 = math.log(2.0)
CLOSERS = "」』）)】〕"  # a cut just before one of these would split a quotation


class Method(BaseModel):
    """One decoding setting: greedy, or temperature → top-k → top-p sampling (0 and 1 turn k and p off)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="its label in tables and plots, e.g. 'top-p 0.95'")
    greedy: bool = False
    top_k: int = Field(0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    temperature: float = Field(1.0, gt=0)

    @property
    def family(self) -> str:
        """``greedy``, ``pure`` (plain sampling), ``top-k``, ``top-p`` or ``other`` (a combination)."""
        if self.greedy:
            return "greedy"
        if self.temperature != 1.0 or (self.top_k and self.top_p < 1):
            return "other"
        if self.top_k:
            return "top-k"
        return "top-p" if self.top_p < 1 else "pure"

    def sampling(self) -> dict:
        return {"greedy": self.greedy, "top_k": self.top_k, "top_p": self.top_p, "temperature": self.temperature}


class SamplingStudyConfig(BaseModel):
    """Everything the sampling study does; ``configs/studies/sampling.yaml`` is the default.

    Example::

        SamplingStudyConfig(texts=["data/studies/vocab/clean/aozora-bulk/validation"], prompts=40,
                            context_lengths=[8, 32, 128, 512], continuation_chars=128, seeds=[0, 1, 2],
                            methods=[{"name": "greedy", "greedy": True}, {"name": "top-k 40", "top_k": 40}])
    """

    model_config = ConfigDict(extra="forbid")

    texts: list[str] = Field(min_length=1, description="evaluation texts: clean corpus split folders or .txt files")
    prompts: int = Field(40, ge=2, le=100_000, description="documents, one prompt (per context length) each")
    context_lengths: list[int] = Field(default_factory=lambda: [8, 32, 128, 512], min_length=1)
    continuation_chars: int = Field(128, ge=8, le=100_000, description="characters generated after each prompt")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    methods: list[Method] = Field(min_length=1)
    work: str | None = Field(None, description="where finished cells are kept (default {run}/sampling-study)")
    score_batch_size: int = Field(DEFAULT_BATCH_SIZE, ge=1, le=4096)
    out: str = Field("docs/studies", description="the report's folder")
    name: str = Field("sampling", pattern=r"^[A-Za-z0-9._-]+$", description="{out}/{name}.md, .csv, -*.png")

    @field_validator("context_lengths")
    @classmethod
    def _lengths(cls, value: list[int]) -> list[int]:
        if any(v < 1 for v in value) or len(set(value)) != len(value):
            raise ValueError(f"context lengths must be distinct and ≥ 1 character, got {value}")
        return sorted(value)

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[Method]) -> list[Method]:
        names = [m.name for m in value]
        require_unique(names, "method")
        slugs = [slug(n) for n in names]
        if len(set(slugs)) != len(slugs):
            raise ValueError("two method names give the same file name; make them differ in letters or digits")
        return value

    @model_validator(mode="after")
    def _seeds(self) -> "SamplingStudyConfig":
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        return self


@dataclass
class Prompt:
    """One document cut once: ``contexts[L]`` is the ``L`` characters before the cut."""

    doc: int
    cut: int
    contexts: dict[int, str]
    human: str


def cut_point(text: str, start: int, room: int) -> int:
    """The first position ≥ ``start`` right after a "。" (and not before a closing bracket), else ``start``.

    ``room`` characters must remain after it.

    >>> cut_point("あいう。えお。かきくけこ", 2, 3)
    4
    """
    for i in range(max(start, 1), len(text) - room + 1):
        if text[i - 1] == "。" and text[i] not in CLOSERS:
            return i
    return start


def select_prompts(texts: Sequence[str], cfg: SamplingStudyConfig) -> list[Prompt]:
    """``cfg.prompts`` prompts from the texts long enough (hash order: stable, unrelated to corpus order)."""
    longest = max(cfg.context_lengths)
    need = longest + cfg.continuation_chars
    order = sorted(
        (i for i, t in enumerate(texts) if len(t) >= need),
        key=lambda i: hashlib.sha256(texts[i].encode("utf-8")).hexdigest(),
    )
    if len(order) < cfg.prompts:
        raise StudyError(
            f"texts {', '.join(cfg.texts)}: {len(order)} documents have the {need:,} characters a "
            f"prompt needs (longest context {longest} + continuation {cfg.continuation_chars}), "
            f"{cfg.prompts} were asked for; lower prompts or context_lengths, or add texts"
        )
    out = []
    for i in order[: cfg.prompts]:
        text = texts[i]
        cut = cut_point(text, longest, cfg.continuation_chars)
        out.append(
            Prompt(
                doc=i,
                cut=cut,
                contexts={L: text[cut - L : cut] for L in cfg.context_lengths},
                human=text[cut : cut + cfg.continuation_chars],
            )
        )
    return out


# ----------------------------------------------------------------- the model side


class Scorer:
    """Log-likelihood of continuations after a prompt, with the sliding windows of :mod:`gpt2ja.model.evaluate`."""

    def __init__(self, lm, tokenizer, batch_size: int) -> None:
        from gpt2ja.model.evaluate import _Scorer  # the compiled fixed-shape forward pass that evaluation uses

        self.tok = tokenizer
        self.context = lm.backbone.max_sequence_length
        self.stride = max(1, self.context // 2)
        self.scorer = _Scorer(lm, tokenizer.vocab_size, self.context, batch_size)

    def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[tuple[float, int]]:
        """Per pair: (sum of the continuation tokens' log-probabilities in nats, number of those tokens)."""
        from gpt2ja.model.evaluate import Window, windows

        wins: list[Window] = []
        for i, (p, c) in enumerate(zip(prompts, continuations)):
            head = [self.tok.eos_id] + (self.tok.encode(p) if p else [])
            seq = head + self.tok.encode(c)
            for w in windows(seq, self.context, self.stride, i):
                # w.targets[t] is seq[w.start + 1 + t]: only the continuation's positions are scored
                targets = [y if w.start + 1 + t >= len(head) else -1 for t, y in enumerate(w.targets)]
                if any(y >= 0 for y in targets):
                    wins.append(Window(i, w.start, w.inputs, targets))
        totals = [[0.0, 0] for _ in prompts]
        for w, lp in zip(wins, self.scorer.run(wins)):
            scored = [v for v, y in zip(lp, w.targets) if y >= 0]
            totals[w.text][0] += float(sum(scored))
            totals[w.text][1] += len(scored)
        return [(t[0], t[1]) for t in totals]


def _cell_fingerprint(run_fp: str, prompts: list[str], humans: list[str], what: dict, cfg) -> str:
    body = {
        "version": VERSION,
        "run": run_fp,
        "prompts": prompts,
        "humans": humans,
        "what": what,
        "continuation_chars": cfg.continuation_chars,
    }
    return hashlib.sha256(json.dumps(body, ensure_ascii=False, sort_keys=True).encode()).hexdigest()


def _cell(uri: str, fp: str, make: Callable[[], dict]) -> dict:
    """A finished cell from ``uri`` when its fingerprint matches, else ``make()`` written there."""
    try:
        cell = json.loads(storage.read_text(uri))
        if cell.get("fingerprint") == fp:
            return cell
    except (storage.StorageError, ValueError):
        pass
    cell = {"fingerprint": fp, **make()}
    storage.write_text(uri, json.dumps(cell, ensure_ascii=False, sort_keys=True) + "\n")
    return cell


def cell_metrics(
    prompts: Sequence[str],
    texts: Sequence[str],
    cond: Sequence[tuple[float, int]],
    uncond: Sequence[tuple[float, int]],
    stopped: Sequence[str] | None = None,
) -> dict:
    """Every metric of one set of continuations: the text metrics plus the model's figures."""
    out = text_metrics(texts, prompts)
    chars = sum(len(t) for t in texts)
    nats = -sum(lp for lp, _ in cond)
    tokens = sum(n for _, n in cond)
    out["perplexity"] = math.exp(nats / tokens) if tokens else None
    out["bits_per_char"] = nats / LN2 / chars if chars else None
    out["context_gain"] = (sum(lp for lp, _ in cond) - sum(lp for lp, _ in uncond)) / LN2 / chars if chars else None
    out["eos"] = (sum(1 for s in stopped if s == "eos") / len(stopped)) if stopped else 0.0
    return out


def run_sampling_study(
    run_uri: str,
    cfg: SamplingStudyConfig,
    *,
    command: str = "gpt2ja study sampling",
    say: Callable[[str], None] = default_say,
) -> dict[str, str]:
    """Generate, score and measure every cell (reusing finished ones), then write the report; its URIs."""
    from gpt2ja.model import runs
    from gpt2ja.model.evaluate import read_texts
    from gpt2ja.model.generate import Generator, check_sampling, generate
    from gpt2ja.model.presets import ModelError
    from gpt2ja.studies.sampling_report import write_report

    try:
        for m in cfg.methods:
            check_sampling(temperature=m.temperature, top_k=m.top_k, top_p=m.top_p, greedy=m.greedy)
        run_manifest = require(run_uri, "run", "finish it (`gpt2ja train`) or pass a finished run", StudyError)
        texts = read_texts(cfg.texts)
        loaded = runs.load_run(run_uri)
    except (ModelError, storage.StorageError) as err:
        raise StudyError(str(err)) from None
    prompts = select_prompts(texts, cfg)
    lm, tok = loaded.model, loaded.tokenizer
    work = cfg.work or storage.join(run_uri, "sampling-study")
    gen = Generator(lm, vocab_size=tok.vocab_size, eos_id=tok.eos_id)
    scorer = Scorer(lm, tok, cfg.score_batch_size)
    humans = [p.human for p in prompts]
    rows = []
    say(
        f"sampling study on {run_uri} (step {loaded.step}): {len(prompts)} prompts × "
        f"{len(cfg.context_lengths)} context lengths × {len(cfg.methods)} methods, seeds {cfg.seeds}"
    )
    for L in cfg.context_lengths:
        contexts = [p.contexts[L] for p in prompts]

        def human_cell() -> dict:
            return {
                "texts": humans,
                "cond": scorer.score(contexts, humans),
                "uncond": scorer.score([""] * len(humans), humans),
            }

        fp = _cell_fingerprint(run_manifest["fingerprint"], contexts, humans, {"human": True}, cfg)
        cell = _cell(storage.join(work, f"c{L}-human.json"), fp, human_cell)
        rows.append(
            {
                "context": L,
                "method": "human",
                "family": "human",
                "seed": None,
                **cell_metrics(contexts, humans, cell["cond"], cell["uncond"]),
                **_prompt_tokens(tok, contexts, scorer.context),
            }
        )
        for m in cfg.methods:
            for seed in cfg.seeds[:1] if m.greedy else cfg.seeds:

                def method_cell(m=m, seed=seed) -> dict:
                    samples = generate(
                        lm,
                        tok,
                        contexts,
                        num=1,
                        max_chars=cfg.continuation_chars,
                        seed=seed,
                        generator=gen,
                        **m.sampling(),
                    )
                    outs = [s.text for s in samples]
                    return {
                        "texts": outs,
                        "stopped": [s.stopped for s in samples],
                        "cond": scorer.score(contexts, outs),
                        "uncond": scorer.score([""] * len(outs), outs),
                    }

                fp = _cell_fingerprint(
                    run_manifest["fingerprint"], contexts, humans, {**m.sampling(), "seed": seed}, cfg
                )
                cell = _cell(storage.join(work, f"c{L}-{slug(m.name)}-s{seed}.json"), fp, method_cell)
                rows.append(
                    {
                        "context": L,
                        "method": m.name,
                        "family": m.family,
                        "seed": seed,
                        "top_k": m.top_k,
                        "top_p": m.top_p,
                        "temperature": m.temperature,
                        **cell_metrics(contexts, cell["texts"], cell["cond"], cell["uncond"], cell["stopped"]),
                    }
                )
            last = [r for r in rows if r["method"] == m.name and r["context"] == L]
            say(
                f"context {L}: {m.name}: perplexity {_mean(last, 'perplexity'):.2f}, "
                f"distinct-4 {_mean(last, 'distinct_4'):.3f}, context gain {_mean(last, 'context_gain'):+.3f}"
            )
    examples = _examples(prompts, cfg, work)
    return write_report(run_uri, loaded, cfg, rows, prompts, examples, command=command)


def _mean(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.fmean(values) if values else float("nan")


def _prompt_tokens(tok, contexts: Sequence[str], window: int) -> dict:
    """Mean prompt length in tokens and the share of prompts the model's window cannot hold whole."""
    lengths = [1 + len(tok.encode(c)) for c in contexts]
    return {
        "prompt_tokens": statistics.fmean(lengths),
        "prompts_over_window": sum(1 for n in lengths if n > window - 1) / len(lengths),
    }


def _examples(prompts: list[Prompt], cfg: SamplingStudyConfig, work: str) -> list[dict]:
    """The first prompt's continuations at the longest context (seed = the first), for the report."""
    L = max(cfg.context_lengths)
    out = [{"method": "human", "text": prompts[0].human}]
    for m in cfg.methods:
        try:
            cell = json.loads(storage.read_text(storage.join(work, f"c{L}-{slug(m.name)}-s{cfg.seeds[0]}.json")))
            out.append({"method": m.name, "text": cell["texts"][0]})
        except (storage.StorageError, ValueError, KeyError, IndexError):
            continue
    return [{"prompt": prompts[0].contexts[L], **e} for e in out]
