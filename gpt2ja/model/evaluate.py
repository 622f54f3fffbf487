"""Bits per character and per UTF-8 byte on raw text: the numbers that compare models across vocabularies.

Token perplexity depends on the tokenizer (a bytes model predicts three easy
tokens per kanji, a 32k sentencepiece model one hard one), so models are
compared on the text itself: the total negative log-likelihood of a text, in
bits, divided by its characters (or bytes). A text is scored as one document
the way training saw documents: ``EOS text`` (the EOS is context, not scored),
every token of the text is predicted once.

Sliding window. Texts longer than the context ``C`` are scored in windows that
start every ``stride`` tokens; each window scores only the targets that no
earlier window scored, so the first window's targets see ``1…C`` tokens of
context and every later target sees at least ``C - stride`` (with the default
``stride = C // 2``, at least half a context). Padding ids' logits are masked
(-inf): probabilities are over the tokenizer's real ids.

Example::

    result = bits_per_character(lm, tok, ["吾輩は猫である。", "名前はまだ無い。"])
    result["bits_per_character"], result["bits_per_byte"], result["token_perplexity"]
    s = score(lm, tok, "吾輩は猫である。")
    s.tokens[:3]   # [("吾", -5.1), ("輩", -7.9), ...]  (piece, natural-log probability)

Beside the model's figures, every evaluation gives the same characters'
compression baselines (:mod:`gpt2ja.model.baselines`: PPMd order 8 alone and primed
with a sample of the run's training text, gzip, xz) under ``baselines`` in
``eval.json``, and says whether the model beats PPMd.

The evaluate stage (:func:`write_evaluation`, built through
:func:`gpt2ja.infra.stage.run_stage`: locked, manifest last) puts the figures, sampled
continuations, the loss curve and a Markdown report in ``{run}/eval/`` with a
manifest, and skips itself when that manifest matches and verifies (same run,
texts and settings).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from gpt2ja.infra import stage, storage
from gpt2ja.infra.progress import progress
from gpt2ja.model import baselines
from gpt2ja.model.presets import ModelError

LN2 = math.log(2.0)
STAGE = "evaluate"
STAGE_VERSION = 2  # 2: eval.json has the compression baselines
EVAL_DIR = "eval"  # {run}/eval/: the evaluate stage's artifact
SAMPLES = "samples.jsonl"
LOSS_PNG = "loss.png"
REPORT = "report.md"
DEFAULT_BATCH_SIZE = 8  # windows per forward pass
#: the baseline figures repeated in the stage's manifest (all of them are in eval.json)
BASELINE_KEYS = (
    "ppmd_order8_bits_per_character",
    "ppmd_order8_primed_bits_per_character",
    "gzip_bits_per_character",
    "xz_bits_per_character",
    "prime_characters",
)

log = logging.getLogger("gpt2ja.evaluate")


class EvaluateConfig(BaseModel):
    """The evaluate stage's settings (``gpt2ja eval``, the pipeline's ``evaluate:`` section).

    Example::

        EvaluateConfig(run="data/runs/tiny", texts=["data/clean/aozora/validation"], prime_chars=0)
    """

    model_config = ConfigDict(extra="forbid")

    run: str = Field(description="a run directory")
    texts: list[str] = Field(min_length=1, description="held-out text: .txt files or clean-corpus split folders")
    context: int | None = Field(None, ge=2, description="tokens per scoring window (default: the model's context)")
    stride: int | None = Field(None, ge=1, description="sliding-window stride in tokens (default: half the context)")
    batch_size: int = Field(
        DEFAULT_BATCH_SIZE, ge=1, le=4096, description="windows per forward pass (speed only, not fingerprinted)"
    )
    prime_chars: int = Field(
        baselines.DEFAULT_PRIME_CHARS,
        ge=0,
        description="characters of the run's training text that prime the PPMd baseline (0: no primed figure)",
    )
    backend: str | None = Field(
        None, description="tensorflow or jax (default: KERAS_BACKEND, else tensorflow where it is installed, else jax)"
    )


@dataclass
class Window:
    text: int  # index of the text
    start: int  # position in the text's sequence [EOS, ids...] of the first input
    inputs: list[int]  # ≤ C ids
    targets: list[int]  # same length; -1 where this window does not score the target


def windows(seq: Sequence[int], context: int, stride: int, text: int = 0) -> list[Window]:
    """The scoring windows of one sequence ``[EOS, ids…]``: each target (positions 1…N-1) scored exactly once."""
    if not 0 < stride <= context:
        raise ModelError(f"stride {stride} must be between 1 and the context {context}")
    out: list[Window] = []
    n = len(seq)
    scored_upto, start = 0, 0  # targets seq[1..scored_upto] are done
    while scored_upto < n - 1:
        end = min(start + context, n - 1)  # the window predicts seq[start+1 .. end]
        targets = [seq[j] if j > scored_upto else -1 for j in range(start + 1, end + 1)]
        out.append(Window(text, start, list(seq[start:end]), targets))
        scored_upto = end
        start += stride
    return out


class _Scorer:
    """Batches windows through one compiled forward pass of fixed shape (batch, C), on this process's backend.

    The pass is written once with ``keras.ops``; TensorFlow runs it as a
    ``tf.function``, JAX as a jitted stateless call (:func:`gpt2ja.model.gpt2.stateless_jit`).
    """

    def __init__(self, lm, vocab_size: int, context: int, batch_size: int) -> None:
        from keras import ops

        from gpt2ja.model import backend, gpt2

        self.context, self.batch_size = context, batch_size

        def logprobs(inputs, targets):
            scores = gpt2.mask_padding(gpt2.logits(lm, inputs), vocab_size)  # (B, C, V)
            logp = ops.log_softmax(scores, axis=-1)
            picked = ops.take_along_axis(logp, ops.maximum(targets, 0)[..., None], axis=-1)[..., 0]  # (B, C)
            return ops.where(targets >= 0, picked, ops.zeros_like(picked))

        if backend.loaded() == "jax":
            self.fn = gpt2.stateless_jit(lm, logprobs)
        else:
            import tensorflow as tf

            self.fn = tf.function(logprobs, input_signature=[tf.TensorSpec([batch_size, context], tf.int32)] * 2)

    def run(self, wins: list[Window], advance: Callable[..., Any] | None = None) -> list[np.ndarray]:
        """Per window, the log-probabilities (nats) of its targets (0 where not scored).

        ``advance(n, tokens=…)`` is called after each batch (a progress bar's).
        """
        out = []
        for i in range(0, len(wins), self.batch_size):
            chunk = wins[i : i + self.batch_size]
            inputs = np.zeros((self.batch_size, self.context), np.int32)
            targets = np.full((self.batch_size, self.context), -1, np.int32)
            for row, w in enumerate(chunk):
                inputs[row, : len(w.inputs)] = w.inputs
                targets[row, : len(w.targets)] = w.targets
            lp = np.asarray(self.fn(inputs, targets), np.float64)
            out.extend(lp[row, : len(w.targets)] for row, w in enumerate(chunk))
            if advance is not None:
                advance(len(chunk), tokens=sum(t >= 0 for w in chunk for t in w.targets))
        return out


def _context_and_stride(lm, context: int | None, stride: int | None) -> tuple[int, int]:
    limit = lm.backbone.max_sequence_length
    context = context or limit
    if not 2 <= context <= limit:
        raise ModelError(f"context {context} must be between 2 and the model's {limit} positions")
    return context, stride or max(1, context // 2)


def token_logprobs(
    lm,
    tokenizer,
    texts: Sequence[str],
    *,
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    show: str | None = None,
) -> list[tuple[list[int], np.ndarray]]:
    """For each text, its token ids and each token's log-probability (nats) under sliding-window scoring.

    ``show``: a label for a progress bar over the windows (None: no bar).
    """
    context, stride = _context_and_stride(lm, context, stride)
    seqs = [[tokenizer.eos_id] + tokenizer.encode(t) for t in texts]
    wins = [w for i, seq in enumerate(seqs) for w in windows(seq, context, stride, i)]
    scorer = _Scorer(lm, tokenizer.vocab_size, context, batch_size)
    per_text: list[list[float]] = [[] for _ in seqs]
    if show is None:
        scored = scorer.run(wins)
    else:  # the first batch also compiles the forward pass: the bar waits at 0 meanwhile
        with progress(len(wins), show, "windows") as bar:
            scored = scorer.run(wins, bar.advance)
    for w, lp in zip(wins, scored):
        per_text[w.text].extend(float(v) for v, t in zip(lp, w.targets) if t >= 0)
    return [(seq[1:], np.asarray(lp, np.float64)) for seq, lp in zip(seqs, per_text)]


def bits_per_character(
    lm,
    tokenizer,
    texts: Sequence[str],
    *,
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict:
    """Bits per character and per UTF-8 byte of ``texts`` (summed over all), token perplexity, and the counts.

    ``bits = total NLL (nats) / ln 2``; ``bits_per_character = bits / characters``
    (Python ``len``: code points of the text, not tokens); ``bits_per_byte =
    bits / len(text.encode("utf-8"))``; ``token_perplexity = exp(NLL / tokens)``.
    """
    context, stride = _context_and_stride(lm, context, stride)
    scored = token_logprobs(
        lm, tokenizer, texts, context=context, stride=stride, batch_size=batch_size, show="eval: score"
    )
    nats = -sum(float(lp.sum()) for _, lp in scored)
    tokens = sum(len(ids) for ids, _ in scored)
    chars = sum(len(t) for t in texts)
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    bits = nats / LN2
    return {
        "texts": len(texts),
        "characters": chars,
        "bytes": nbytes,
        "tokens": tokens,
        "nll_nats": nats,
        "bits": bits,
        "bits_per_character": bits / chars if chars else None,
        "bits_per_byte": bits / nbytes if nbytes else None,
        "bits_per_token": bits / tokens if tokens else None,
        "token_perplexity": math.exp(nats / tokens) if tokens else None,
        "tokens_per_character": tokens / chars if chars else None,
        "context": context,
        "stride": stride,
        "min_context": context - stride,
    }


@dataclass
class Score:
    """Per-token log-probabilities of one text (natural log) and their total."""

    tokens: list[tuple[str, float]]  # (piece as decoded text, log-probability)
    ids: list[int]
    total: float  # sum of log-probabilities (nats)

    @property
    def bits(self) -> float:
        return -self.total / LN2


def score(lm, tokenizer, text: str, *, context: int | None = None, stride: int | None = None) -> Score:
    """Every token of ``text`` with its log-probability given the text before it (and an EOS before that).

    A piece is ``tokenizer.decode([id])``: a byte that is part of a multi-byte
    character shows as U+FFFD.
    """
    [(ids, lp)] = token_logprobs(lm, tokenizer, [text], context=context, stride=stride, batch_size=1)
    pieces = [(tokenizer.decode([i]), float(v)) for i, v in zip(ids, lp)]
    return Score(tokens=pieces, ids=list(ids), total=float(lp.sum()))


# ----------------------------------------------------------------- runs and files


def read_texts(uris: Iterable[str]) -> list[str]:
    """Texts from URIs: a ``.txt`` file is one text; a clean-corpus directory (or split) gives its documents' texts."""
    from gpt2ja.corpus.jsonl import ShardError, list_parts, read_documents

    texts: list[str] = []
    for uri in uris:
        try:
            if uri.endswith((".jsonl", ".jsonl.gz")) or list_parts(uri):
                texts.extend(doc.text for doc in read_documents(uri))
            else:
                texts.append(storage.read_text(uri))
        except (storage.StorageError, ShardError, UnicodeDecodeError) as err:
            raise ModelError(
                f"evaluation text {uri}: {err}; give UTF-8 .txt files or a clean corpus split directory"
            ) from None
    if not any(texts):
        raise ModelError(f"evaluation texts {', '.join(uris)} hold no text")
    return texts


def with_baselines(
    result: dict, run_uri: str, texts: Sequence[str], prime_chars: int = baselines.DEFAULT_PRIME_CHARS
) -> dict:
    """``result`` with ``baselines``: the compression figures of the scored characters (:mod:`gpt2ja.model.baselines`).

    The texts are measured as the model scored them (their characters,
    concatenated); PPMd is primed with ``prime_chars`` characters of the run's
    training split (0: not primed) and the evaluated texts are kept out of
    that sample.
    """
    with progress(None, "eval: compression baselines", "texts") as bar:
        bar.update(info="PPMd order 8, gzip, xz (C calls: no progress of their own)")
        prime = baselines.training_sample(run_uri, prime_chars, exclude=texts)
        if prime.text is None:
            log.warning("evaluation of %s: no primed PPMd figure: %s", run_uri, prime.missing)
        figures = baselines.compression_baselines("".join(texts), prime)
    return {**result, "baselines": baselines.compare(result.get("bits_per_character"), figures)}


def evaluate_run(
    run_uri: str,
    text_uris: Sequence[str],
    *,
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    prime_chars: int = baselines.DEFAULT_PRIME_CHARS,
    write: bool = True,
) -> dict:
    """Score ``text_uris`` with the run's newest checkpoint; writes ``{run}/eval.json`` and returns its content.

    The content includes the compression baselines (:func:`with_baselines`;
    ``prime_chars`` characters of training text prime PPMd, 0: not primed).
    """
    from gpt2ja.model import runs

    if prime_chars < 0:
        raise ModelError(f"prime characters {prime_chars} must be 0 (no priming) or more")
    run = runs.load_run(run_uri)
    texts = read_texts(text_uris)
    result = bits_per_character(run.model, run.tokenizer, texts, context=context, stride=stride, batch_size=batch_size)
    result = {
        "run": run_uri,
        "checkpoint": run.checkpoint.rsplit("/", 1)[-1],
        "step": run.step,
        "texts_from": list(text_uris),
        "tokenizer": run.hparams.get("tokenizer", {}),
        **result,
    }
    result = with_baselines(result, run_uri, texts, prime_chars)
    if write:
        storage.write_text(
            storage.join(run_uri, runs.EVAL_JSON),
            json.dumps(result, indent=2, ensure_ascii=False, sort_keys=True) + "\n",
        )
    return result


# ----------------------------------------------------------------- the evaluate stage


def read_metrics(run_uri: str) -> list[dict]:
    """The run's ``metrics.jsonl`` records (one per logged step); empty when there is none."""
    from gpt2ja.model import runs

    try:
        text = storage.read_text(storage.join(run_uri, runs.METRICS))
    except storage.StorageError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def loss_curve_png(metrics: Sequence[dict], title: str = "") -> bytes:
    """A PNG of the training loss (and validation loss) per step, in nats; the same metrics give the same bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    train = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    val = [(m["step"], m["val_loss"]) for m in metrics if "val_loss" in m]
    if train:
        ax.plot(*zip(*train), color="#4a7ab8", label="training loss")
    if val:
        ax.plot(*zip(*val), "o-", color="#d08030", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(title or "Loss")
    ax.grid(alpha=0.3)
    if train or val:
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no timestamp: reruns give identical files
    plt.close(fig)
    return buf.getvalue()


def write_evaluation(
    run_uri: str,
    text_uris: Sequence[str],
    out_uri: str,
    *,
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    prompts: Sequence[str] = (),
    sampling: dict | None = None,
    prime_chars: int = baselines.DEFAULT_PRIME_CHARS,
) -> str:
    """The evaluate stage: figures, samples, loss curve and report in ``out_uri``, manifest last; returns ``out_uri``.

    Writes ``eval.json`` (:func:`evaluate_run`'s figures, with the compression
    baselines: ``prime_chars`` characters of training text prime PPMd),
    ``samples.jsonl`` (one line per continuation of ``prompts``, with the
    ``sampling`` settings given to :func:`gpt2ja.model.generate.generate`),
    ``loss.png`` and ``report.md``. Skipped when ``out_uri`` holds a manifest
    with the same fingerprint (the run's manifest, the texts (URIs and content)
    and the settings, ``prime_chars`` included) whose files verify. Built
    through :func:`gpt2ja.infra.stage.run_stage`: under ``out_uri``'s lock (another
    writer: :class:`gpt2ja.infra.stage.LockHeld`), manifest last. The run must be
    finished (have its manifest). Bad input raises ModelError (one line).

    Example::

        write_evaluation("data/demo/runs/tiny-demo", ["data/demo/clean/aozora-demo/validation"],
                         "data/demo/runs/tiny-demo/eval", prompts=["ある日の暮方の事である。"],
                         sampling={"num": 3, "max_chars": 60, "top_k": 40, "top_p": 0.9, "seed": 0})
    """
    from gpt2ja.model import runs
    from gpt2ja.model.generate import DEFAULT_SAMPLING, check_sampling, generate

    started = time.monotonic()
    if out_uri.rstrip("/") == run_uri.rstrip("/"):
        raise ModelError(
            f"evaluation of {run_uri}: give it a directory of its own (e.g. {run_uri}/{EVAL_DIR}), "
            "not the run itself (it has the run's manifest)"
        )
    # the samples' settings, the study's defaults filled in (they enter the fingerprint and samples.jsonl)
    sampling = {**DEFAULT_SAMPLING, **(sampling or {})} if prompts else dict(sampling or {})
    if prime_chars < 0:
        raise ModelError(f"prime characters {prime_chars} must be 0 (no priming) or more")
    if prompts:  # bad settings fail now, not after the scoring
        check_sampling(
            temperature=sampling["temperature"],
            top_k=sampling["top_k"],
            top_p=sampling["top_p"],
            greedy=sampling.get("greedy", False),
        )
    run_manifest = stage.require(run_uri, "run", "finish it (rerun the train stage) before evaluating it", ModelError)
    texts = read_texts(text_uris)
    digest = hashlib.sha256("\0".join(texts).encode("utf-8")).hexdigest()
    config = {
        "version": STAGE_VERSION,
        "texts": list(text_uris),
        "texts_sha256": digest,
        "context": context,
        "stride": stride,
        "prompts": list(prompts),
        "prime_chars": prime_chars,
        "sampling": sampling,
    }  # defaults filled in: new defaults make new samples
    fp = storage.fingerprint(config, [run_manifest])

    def build() -> dict:
        for name in (runs.EVAL_JSON, SAMPLES, LOSS_PNG, REPORT):  # what an earlier evaluation may have left
            storage.delete(storage.join(out_uri, name))
        run = runs.load_run(run_uri)
        figures = bits_per_character(
            run.model, run.tokenizer, texts, context=context, stride=stride, batch_size=batch_size
        )
        result = {
            "run": run_uri,
            "checkpoint": run.checkpoint.rsplit("/", 1)[-1],
            "step": run.step,
            "texts_from": list(text_uris),
            "tokenizer": run.hparams.get("tokenizer", {}),
            **figures,
        }
        result = with_baselines(result, run_uri, texts, prime_chars)
        samples = generate(run.model, run.tokenizer, list(prompts), **sampling) if prompts else []
        rows = [
            {"prompt": s.prompt, "text": s.text, "stopped": s.stopped, "tokens": len(s.ids), **sampling}
            for s in samples
        ]
        metrics = read_metrics(run_uri)

        storage.write_text(
            storage.join(out_uri, runs.EVAL_JSON),
            json.dumps(result, indent=2, ensure_ascii=False, sort_keys=True) + "\n",
        )
        storage.write_text(
            storage.join(out_uri, SAMPLES),
            "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows),
        )
        if metrics:
            storage.write_bytes(storage.join(out_uri, LOSS_PNG), loss_curve_png(metrics, f"{run_uri} (training)"))
        storage.write_text(storage.join(out_uri, REPORT), _report(result, rows, sampling, metrics))
        files = [
            storage.file_info(storage.join(out_uri, name), root=out_uri)
            for name in (runs.EVAL_JSON, SAMPLES, LOSS_PNG, REPORT)
            if metrics or name != LOSS_PNG
        ]
        counts = {k: result[k] for k in ("texts", "characters", "bytes", "tokens")}
        counts["samples"] = len(rows)
        return storage.build_manifest(
            stage=STAGE,
            config=config,
            inputs=[run_manifest],
            counts=counts,
            files=files,
            timings={"seconds": round(time.monotonic() - started, 3)},
            extra={
                "results": {
                    k: result[k]
                    for k in (
                        "bits_per_character",
                        "bits_per_byte",
                        "bits_per_token",
                        "token_perplexity",
                        "tokens_per_character",
                    )
                }
                | {k: result["baselines"][k] for k in BASELINE_KEYS},
                "step": run.step,
                "checkpoint": result["checkpoint"],
            },
        )

    # prune=False: ``out_uri`` may be any folder; only the files named above are this stage's
    outcome = stage.run_stage(
        STAGE, out_uri, fingerprint=fp, build=build, inputs=[run_uri], prune=False, log=log.warning
    )
    if outcome.skipped:
        log.info("%s is up to date (fingerprint %s); skipping", out_uri, fp[:12])
    return out_uri


def _report(result: dict, samples: list[dict], sampling: dict, metrics: list[dict]) -> str:
    """``report.md``: the figures, the loss curve and the samples with their settings."""

    def num(value, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    lines = [
        f"# Evaluation of {result['run']}",
        "",
        f"Checkpoint `{result['checkpoint']}` (step {result['step']:,}), scored on "
        f"{', '.join(f'`{t}`' for t in result['texts_from'])}: {result['texts']:,} texts, "
        f"{result['characters']:,} characters, {result['bytes']:,} UTF-8 bytes, {result['tokens']:,} tokens; "
        f"windows of {result['context']} tokens every {result['stride']} "
        f"(every target after the first window sees ≥ {result['min_context']} tokens).",
        "",
        "| measure | value |",
        "|---|---|",
        f"| bits per character | {num(result['bits_per_character'], '.4f')} |",
        f"| bits per byte | {num(result['bits_per_byte'], '.4f')} |",
        f"| token perplexity | {num(result['token_perplexity'], '.2f')} |",
        f"| tokens per character | {num(result['tokens_per_character'], '.4f')} |",
        "",
    ]
    if "baselines" in result:
        lines += baselines.report_markdown(result)
    if metrics:
        train = [m for m in metrics if "loss" in m]
        val = [m for m in metrics if "val_loss" in m]
        lines += ["## Training", "", f"![loss curve]({LOSS_PNG})", ""]
        if train:
            lines.append(
                f"Training loss {train[0]['loss']:.4f} at step {train[0]['step']:,} → "
                f"{train[-1]['loss']:.4f} at step {train[-1]['step']:,}."
            )
        if val:
            lines.append(
                f"Validation loss {val[-1]['val_loss']:.4f} at step {val[-1]['step']:,} "
                f"({val[-1]['val_loss'] / LN2:.4f} bits per token)."
            )
        lines.append("")
    if samples:
        settings = ", ".join(f"{k} {v}" for k, v in sorted(sampling.items()))
        lines += ["## Samples", "", f"Sampling settings: {settings or 'defaults'}.", ""]
        for i, s in enumerate(samples, 1):
            lines += [
                f"{i}. prompt `{s['prompt']}`, stopped: {s['stopped']}",
                "",
                "```text",
                s["prompt"] + s["text"],
                "```",
                "",
            ]
    return "\n".join(lines)
