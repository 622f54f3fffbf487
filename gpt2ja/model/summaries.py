"""TensorBoard for a training run: the layout, the scalars, the HParams record and the text samples.

TensorBoard draws one line per *run* (a folder of event files) and one chart
per *tag*, so training and validation loss share a chart when two runs write
the same tag. The run's ``tensorboard/`` folder is laid out that way (the
layout of Keras's own TensorBoard callback and of the HParams tutorial)::

    tensorboard/              HParams: the experiment (hparams_config) and this run's settings (hparams)
    tensorboard/train/        loss, lr, grad_norm, tokens_per_s                    at every log step
    tensorboard/validation/   loss, bits_per_character, bits_per_byte (scalars),
                              sample (text: a continuation of a fixed validation prompt)  at every evaluation

The step is the optimizer step. With ``tensorboard_by_tokens`` every scalar is
written a second time under ``tokens_seen/<tag>`` with the tokens seen
(``step × batch_tokens``) as its step: TensorBoard's x axis can only be the
step, the relative time or the wall time, and a tag prefix gives the token axis
charts of their own (a section "tokens_seen") that still overlay train and
validation and compare runs of different batch sizes. A second run folder
would instead put token-axis and step-axis lines on the same chart.

The files are written with the ``tensorboard`` package alone (its protobufs,
the scalar/text/HParams plugins' summary builders, its record framing), never
TensorFlow: the TensorFlow and the JAX trainer write them alike, and a JAX
machine needs no TensorFlow. They hold what ``tf.summary`` wrote before: float32
scalar tensors, string text tensors, the HParams plugin's summaries at step 0
(``tests/test_tensorboard.py`` compares the two record by record).

Bits per character and per byte: the validation loss is a mean NLL in nats per
scored token; as in :func:`gpt2ja.model.evaluate.bits_per_character`, ``bits = nats /
ln 2`` and ``bits_per_character = bits / characters``, here with the tokens,
characters and UTF-8 bytes of the validation rows that are scored (counted once,
:func:`count_text`). The EOS targets between documents are scored by the
validation loss and have no characters, so these figures include the cost of
predicting document ends, and each row starts without context: a training-time
guide; ``gpt2ja eval`` (text only, sliding window) gives the figures that compare
models. In a multi-worker run the counts are the chief's share of the rows.

Example::

    board = TensorBoard("data/runs/r1/tensorboard", batch_tokens=8192, by_tokens=True)
    board.hparams(run_hparams(cfg, model_cfg, seq_len=1024, accum=4, replicas=1, tokenizer="bytes",
                              parameters=798_208))
    board.write(100, {"loss": 5.1, "lr": 1e-3, "val_loss": 5.3, "val_bits_per_character": 7.6},
                sample=("吾輩は", "猫である。"))
    board.close()
"""

from __future__ import annotations

import itertools
import os
import re
import socket
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from gpt2ja.model.evaluate import LN2

if TYPE_CHECKING:
    from gpt2ja.model.presets import ModelConfig
    from gpt2ja.model.train import TrainConfig
    from gpt2ja.tokenization.tokenizer import Tokenizer

TRAIN_RUN = "train"
VALIDATION_RUN = "validation"
TOKENS_PREFIX = "tokens_seen/"
SAMPLE_TAG = "sample"
#: metrics.jsonl key → (sub-run, tag): training and validation write the same tag ``loss`` in their own runs
TAGS = {
    "loss": (TRAIN_RUN, "loss"),
    "lr": (TRAIN_RUN, "lr"),
    "grad_norm": (TRAIN_RUN, "grad_norm"),
    "tokens_per_s": (TRAIN_RUN, "tokens_per_s"),
    "val_loss": (VALIDATION_RUN, "loss"),
    "val_bits_per_character": (VALIDATION_RUN, "bits_per_character"),
    "val_bits_per_byte": (VALIDATION_RUN, "bits_per_byte"),
}
PROMPT_CHARS = 16  # characters of the sample prompt taken from the validation data
_MAX_EDGE = 4  # a UTF-8 character has at most 4 bytes: the partial pieces at a row's edges


class TextCounts(NamedTuple):
    """Tokens, characters and UTF-8 bytes of the scored validation rows: the ratio that converts the loss."""

    tokens: int
    characters: int
    bytes: int

    def bits_per_character(self, nats_per_token: float) -> float | None:
        return nats_per_token / LN2 * self.tokens / self.characters if self.characters else None

    def bits_per_byte(self, nats_per_token: float) -> float | None:
        return nats_per_token / LN2 * self.tokens / self.bytes if self.bytes else None


def whole_characters(tokenizer: "Tokenizer", ids: list[int]) -> tuple[int, str]:
    """The tokens of ``ids`` that decode to whole characters, counted, and their text.

    A row of a shard is a window of the token stream: with byte pieces (the
    bytes tokenizer, sentencepiece's byte fallback) it may start or end inside a
    character, which decodes to U+FFFD; up to 3 such tokens at each edge are left
    out of both counts, so the ratio is the text's own.
    """
    lo, hi = 0, len(ids)
    text = tokenizer.decode(ids)
    while lo < hi and lo < _MAX_EDGE - 1 and text.startswith("\ufffd"):
        lo += 1
        text = tokenizer.decode(ids[lo:hi])
    while hi > lo and len(ids) - hi < _MAX_EDGE - 1 and text.endswith("\ufffd"):
        hi -= 1
        text = tokenizer.decode(ids[lo:hi])
    return hi - lo, text


def count_text(tokenizer: "Tokenizer", targets: Iterable[Any]) -> TextCounts:
    """Tokens, characters and bytes of the target rows (arrays of ids) that the validation loss scores."""
    tokens = chars = nbytes = 0
    for rows in targets:
        for row in rows:
            n, text = whole_characters(tokenizer, [int(i) for i in row])
            tokens, chars, nbytes = tokens + n, chars + len(text), nbytes + len(text.encode("utf-8"))
    return TextCounts(tokens, chars, nbytes)


def sample_prompt(tokenizer: "Tokenizer", ids: list[int], chars: int = PROMPT_CHARS) -> str:
    """The first ``chars`` characters of a document in a validation row (after its first EOS, if any)."""
    ids = [int(i) for i in ids]
    if tokenizer.eos_id in ids[:-1]:
        ids = ids[ids.index(tokenizer.eos_id) + 1 :]  # a document's start, as the sample will begin (EOS + prompt)
        ids = ids[: ids.index(tokenizer.eos_id)] if tokenizer.eos_id in ids else ids
    return whole_characters(tokenizer, ids)[1][:chars].strip()


def from_validation(tokenizer: "Tokenizer", val_ds: Iterable[tuple[Any, Any]], batches: int) -> tuple[TextCounts, str]:
    """The counts of the first ``batches`` validation batches (what an evaluation scores) and a sample prompt.

    ``val_ds`` is any iterable of ``(inputs, targets)`` batches, unshuffled so that every evaluation sees
    the same ones: a ``tf.data.Dataset`` (tensors with ``.numpy()``) from the TensorFlow trainer, an
    iterator of numpy (or JAX) arrays from the JAX one. It is iterated once here: pass a fresh iterator,
    not the one the evaluation itself will use. In a multi-worker run this is the chief's share of the
    batches (each host reads its own files).
    """
    pairs = [(_numpy(inputs), _numpy(targets)) for inputs, targets in itertools.islice(val_ds, batches)]
    counts = count_text(tokenizer, (targets for _, targets in pairs))
    return counts, (sample_prompt(tokenizer, pairs[0][0][0]) if pairs else "")


def _numpy(batch: Any) -> np.ndarray:
    """A batch as a numpy array: TensorFlow tensors through ``.numpy()``, numpy and JAX arrays as they are."""
    return np.asarray(batch.numpy() if hasattr(batch, "numpy") else batch)


class Sampler:
    """A short continuation of one fixed prompt, made with :func:`gpt2ja.model.generate.generate` (compiled once).

    Sampled with the project's default settings (``DEFAULT_SAMPLING``) and a
    fixed seed, so two evaluations differ only because the model did. The
    generator is this process's backend's (:class:`gpt2ja.model.generate.Generator`).

    Example::

        sampler = Sampler(lm, tok, "吾輩は", tokens=40, seed=0)
        prompt, text = sampler()                          # with lm's variables
        prompt, text = sampler(weights=trainable_values)  # JAX: with these arrays; lm's variables untouched
    """

    def __init__(self, lm, tokenizer: "Tokenizer", prompt: str, *, tokens: int, seed: int) -> None:
        from gpt2ja.model.generate import Generator

        self.lm, self.tokenizer, self.prompt, self.tokens, self.seed = lm, tokenizer, prompt, tokens, seed
        self.generator = Generator(lm, vocab_size=tokenizer.vocab_size, eos_id=tokenizer.eos_id)

    def __call__(self, weights: list | None = None) -> tuple[str, str]:
        """``(prompt, continuation)``.

        ``weights`` (JAX backend only): values of ``lm.trainable_variables``, in
        that order, to sample with instead of the variables' own (the JAX
        trainer keeps its weights as arrays); the variables are not changed.
        """
        import contextlib

        import keras

        from gpt2ja.model.generate import generate

        scope = contextlib.nullcontext()
        if weights is not None:
            if keras.backend.backend() != "jax":
                raise ValueError("Sampler(weights=…) is for the JAX backend; on TensorFlow assign the variables")
            scope = keras.StatelessScope(state_mapping=list(zip(self.lm.trainable_variables, weights, strict=True)))
        with scope:  # the JAX generator reads each variable's value when it is called: these values in the scope
            [sample] = generate(
                self.lm,
                self.tokenizer,
                self.prompt,
                max_new_tokens=self.tokens,
                seed=self.seed,
                generator=self.generator,
            )
        return self.prompt, sample.text


def run_hparams(
    cfg: "TrainConfig",
    model_cfg: "ModelConfig",
    *,
    seq_len: int,
    accum: int,
    replicas: int,
    tokenizer: str,
    parameters: int,
) -> dict[str, bool | int | float | str]:
    """The settings the HParams dashboard shows for a run (its values must be bool, int, float or str)."""
    return {
        "preset": model_cfg.preset or "custom",
        "num_layers": model_cfg.num_layers,
        "hidden_dim": model_cfg.hidden_dim,
        "num_heads": model_cfg.num_heads,
        "intermediate_dim": model_cfg.intermediate_dim,
        "dropout": model_cfg.dropout,
        "vocab_size": model_cfg.vocab_size,
        "padded_vocab_size": model_cfg.padded_vocab_size,
        "parameters": parameters,
        "tokenizer": tokenizer,
        "seq_len": seq_len,
        "batch_tokens": cfg.batch_tokens,
        "micro_batch": cfg.micro_batch,
        "accumulation_steps": accum,
        "replicas": replicas,
        "strategy": cfg.strategy,
        "mixed_precision": cfg.mixed_precision,
        "jit_compile": cfg.jit_compile,
        "steps": cfg.steps,
        "schedule": "warmup_cosine",
        "learning_rate": cfg.learning_rate,
        "warmup_steps": cfg.warmup_steps,
        "min_lr_ratio": cfg.min_lr_ratio,
        "weight_decay": cfg.weight_decay,
        "beta1": cfg.beta1,
        "beta2": cfg.beta2,
        "clip_norm": cfg.clip_norm,
        "seed": cfg.seed,
        "init_from": cfg.init_from or "",
    }


def _markdown(text: str) -> str:
    """``text`` shown as itself by TensorBoard's Markdown text plugin: specials escaped, line breaks kept."""
    return re.sub(r"([\\`*_\[\]<>#|~])", r"\\\1", text).replace("\n", "  \n")


class EventFile:
    """One TensorBoard event file in ``folder``, written synchronously with the ``tensorboard`` package alone.

    The same records as a ``tf.summary`` file writer: a first event with the file version, then one
    event per summary value (``add``). ``flush`` hands the bytes to the operating system, so a reader
    sees every record written before it. TensorBoard's own ``EventFileWriter`` is not used: it reaches
    its folder through ``tensorboard.compat.tf``, which imports TensorFlow whenever it is installed,
    and it writes from a background thread. ``folder`` is a local path (the trainer's ``local`` run
    folder; ``gpt2ja.model.run_sync`` copies it to ``gs://``).
    """

    _serial = itertools.count()  # one process may open several files in one folder within a second

    def __init__(self, folder: str) -> None:
        from tensorboard.compat.proto import event_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter

        os.makedirs(folder, exist_ok=True)
        # the name tf.summary gives its files: TensorBoard reads every file whose name holds "tfevents"
        name = (
            f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(self._serial)}.v2"
        )
        self.path = os.path.join(folder, name)
        self._event = event_pb2.Event
        self._records = RecordWriter(open(self.path, "wb"))
        self._records.write(self._event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
        self.flush()

    def add(self, summary, step: int) -> None:
        """One event holding ``summary`` (a ``tensorboard.compat.proto.summary_pb2.Summary``) at ``step``."""
        self._records.write(self._event(wall_time=time.time(), step=step, summary=summary).SerializeToString())

    def flush(self) -> None:
        self._records.flush()

    def close(self) -> None:
        if not self._records.closed:
            self._records.close()


class TensorBoard:
    """The chief's event files: ``{logdir}``, ``{logdir}/train`` and ``{logdir}/validation``.

    Writes only at log and evaluation steps (what :func:`gpt2ja.model.trainer.run_loop`
    records in ``metrics.jsonl``), never per optimizer step. Written with the
    ``tensorboard`` package's protobuf builders (scalars, text, HParams) and
    :class:`EventFile`, never TensorFlow, so both training backends use it and a
    JAX machine needs no TensorFlow: TensorBoard reads the files exactly as it
    read ``tf.summary``'s (float32 scalars, string text tensors, the HParams
    plugin's raw summaries at step 0).
    """

    def __init__(self, logdir: str, *, batch_tokens: int, by_tokens: bool) -> None:
        self.batch_tokens, self.by_tokens = batch_tokens, by_tokens
        self.root = EventFile(logdir)
        self.runs = {name: EventFile(os.path.join(logdir, name)) for name in (TRAIN_RUN, VALIDATION_RUN)}

    def hparams(self, values: dict[str, bool | int | float | str]) -> None:
        """The HParams experiment (settings + the metrics it compares: their last values) and this run's values."""
        from tensorboard.plugins.hparams import summary_v2 as hp

        metrics = [
            hp.Metric("loss", group=TRAIN_RUN, display_name="training loss"),
            hp.Metric("loss", group=VALIDATION_RUN, display_name="validation loss"),
            hp.Metric("bits_per_character", group=VALIDATION_RUN, display_name="validation bits/char"),
            hp.Metric("bits_per_byte", group=VALIDATION_RUN, display_name="validation bits/byte"),
        ]
        # what hp.hparams_config / hp.hparams write through tf.summary: these raw summaries at step 0
        self.root.add(hp.hparams_config_pb(hparams=[hp.HParam(name) for name in values], metrics=metrics), step=0)
        self.root.add(hp.hparams_pb(values), step=0)
        self.root.flush()

    def write(self, step: int, record: dict, sample: tuple[str, str] | None = None) -> None:
        """The scalars of one ``metrics.jsonl`` record (see :data:`TAGS`) and a text sample, at ``step``."""
        from tensorboard.plugins.scalar.summary_v2 import scalar_pb
        from tensorboard.plugins.text.summary_v2 import text_pb

        for key, (run, tag) in TAGS.items():
            if record.get(key) is None:
                continue
            value = float(record[key])  # stored as float32, as tf.summary.scalar casts it
            self.runs[run].add(scalar_pb(tag, value), step=step)
            if self.by_tokens:
                self.runs[run].add(scalar_pb(TOKENS_PREFIX + tag, value), step=step * self.batch_tokens)
        if sample is not None:
            prompt, text = sample
            shown = f"**{_markdown(prompt)}**{_markdown(text)}" if prompt else _markdown(text)
            self.runs[VALIDATION_RUN].add(text_pb(SAMPLE_TAG, shown), step=step)
        for writer in self.runs.values():
            writer.flush()

    def close(self) -> None:
        for writer in (self.root, *self.runs.values()):
            writer.close()
