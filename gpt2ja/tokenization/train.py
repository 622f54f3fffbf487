"""Train a tokenizer on the train split of a clean corpus and publish it as an artifact.

    {root}/clean/{corpus}/  ──train_tokenizer──►  {root}/tokenizers/{name}/

How documents become sentencepiece training "sentences": each line of a
document's text (the corpus keeps paragraphs as lines) is one sentence; blank
lines are skipped; a line longer than ``max_sentence_chars`` is cut after a
"。" (or, failing that, hard) into pieces of at most that many characters, so
sentencepiece never silently drops a long paragraph (it skips sentences over
``max_sentence_length`` bytes, which is set to 8 × ``max_sentence_chars``).
Newlines are therefore never inside a training sentence; they are one
user-defined token (see :mod:`gpt2ja.tokenization.spm`).

Sampling is done here, not by sentencepiece: the train split is streamed once
through a reservoir of ``sample_sentences`` sentences drawn with
``random.Random(seed)``, written (in corpus order) to a temp file, and
sentencepiece trains on exactly that file (``input_sentence_size=0``). Memory is
bounded by the sample, and the same corpus, config and sentencepiece version give
a byte-identical model. (Sentencepiece's own ``input_sentence_size`` +
``shuffle_input_sentence`` sampling gives a different sample in every process,
even after ``set_random_generator_seed``; checked with sentencepiece 0.2.3.)

Skipping and safety: the artifact's fingerprint is the training config plus the
corpus manifest's fingerprint; an output whose manifest matches is returned
untouched. Everything is built in a temp dir and published at the end, manifest
last, so a failure never leaves a complete-looking artifact.

Example::

    uri = train_tokenizer("data/clean/aozora", "sentencepiece", 32000, "data/tokenizers/sp32k")
    Tokenizer.load(uri).stats["chars_per_token"]   # e.g. 1.9
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gpt2ja.corpus.jsonl import list_parts, read_documents
from gpt2ja.infra import storage
from gpt2ja.infra.progress import progress
from gpt2ja.infra.stage import require, run_stage
from gpt2ja.tokenization.tokenizer import KINDS, Tokenizer, TokenizerError, tokenizer_class

log = logging.getLogger(__name__)

CONFIG_VERSION = 1
DEFAULT_SAMPLE_SENTENCES = 1_000_000
DEFAULT_SEED = 0
DEFAULT_CHARACTER_COVERAGE = 0.9995
DEFAULT_MAX_SENTENCE_CHARS = 2048
DEFAULT_NUM_THREADS = 4
DEFAULT_MODEL_TYPE = "unigram"
_SENTENCE_END = "。"
_EVAL_BATCH = 64


# ----------------------------------------------------------------- sentences


def training_sentences(text: str, max_chars: int = DEFAULT_MAX_SENTENCE_CHARS) -> Iterator[str]:
    """The training sentences of one document: its non-blank lines, long ones cut to ``max_chars``.

    >>> list(training_sentences("一行目。\\n\\n二行目。三行目。", max_chars=4))
    ['一行目。', '二行目。', '三行目。']
    """
    for line in text.split("\n"):
        if not line.strip():
            continue
        if len(line) <= max_chars:
            yield line
        else:
            yield from _cut(line, max_chars)


def _cut(line: str, max_chars: int) -> Iterator[str]:
    start = 0
    while len(line) - start > max_chars:
        end = line.rfind(_SENTENCE_END, start, start + max_chars)
        end = end + 1 if end >= start else start + max_chars  # after the last "。" that fits, else hard
        yield line[start:end]
        start = end
    if start < len(line):
        yield line[start:]


class Reservoir:
    """A uniform sample of ``k`` items from a stream of unknown length (Algorithm R), seeded.

    ``sample()`` returns the kept items in stream order, so the result depends
    only on the stream, ``k`` and ``seed``.
    """

    def __init__(self, k: int, seed: int) -> None:
        self.k = k
        self.seen = 0
        self._rng = random.Random(seed)
        self._items: list[tuple[int, Any]] = []

    def add(self, item: Any) -> None:
        if self.seen < self.k:
            self._items.append((self.seen, item))
        else:
            j = self._rng.randrange(self.seen + 1)
            if j < self.k:
                self._items[j] = (self.seen, item)
        self.seen += 1

    def sample(self) -> list[Any]:
        return [item for _, item in sorted(self._items, key=lambda pair: pair[0])]


# ----------------------------------------------------------------- the stage's settings


class TokenizerConfig(BaseModel):
    """The tokenizer stage's settings (``gpt2ja tokenizer train``, the pipeline's ``tokenizer:`` section).

    Example::

        TokenizerConfig(corpus="data/clean/aozora", out="data/tokenizers/sp16k", vocab_size=16000)
    """

    model_config = ConfigDict(extra="forbid")

    corpus: str = Field(description="a clean corpus directory (its train split is used)")
    out: str = Field(description="where the tokenizer goes, e.g. data/tokenizers/sp16k")
    kind: Literal["bytes", "sentencepiece", "mecab+sentencepiece"] = Field(
        "sentencepiece", description="tokenizer family: bytes, sentencepiece or mecab+sentencepiece"
    )
    vocab_size: int | None = Field(
        None, ge=1, le=1_000_000, description="pieces, 1,000 to 64,000 (bytes: 257); required for sentencepiece"
    )
    model_type: Literal["unigram", "bpe"] = Field(DEFAULT_MODEL_TYPE, description="sentencepiece kinds: unigram or bpe")
    sample_sentences: int = Field(
        DEFAULT_SAMPLE_SENTENCES,
        ge=1,
        description="train on a seeded uniform sample of this many sentences "
        "(sentencepiece's time grows with it: 200,000 serves 8k–16k)",
    )
    seed: int = Field(DEFAULT_SEED, ge=0, description="seed of the sentence sample")
    character_coverage: float = Field(
        DEFAULT_CHARACTER_COVERAGE, ge=0.98, le=1.0, description="sentencepiece's share of characters kept as pieces"
    )
    max_sentence_chars: int = Field(
        DEFAULT_MAX_SENTENCE_CHARS, ge=16, description="longer lines are cut into pieces of at most this many"
    )
    num_threads: int = Field(DEFAULT_NUM_THREADS, ge=1, description="sentencepiece training threads")

    @model_validator(mode="after")
    def _sentencepiece_needs_a_size(self) -> "TokenizerConfig":
        if self.kind != "bytes" and self.vocab_size is None:
            raise ValueError("vocab_size is required for sentencepiece kinds (e.g. --vocab-size 16000)")
        return self

    def settings(self) -> dict:
        """The keyword arguments of :func:`train_tokenizer`."""
        return self.model_dump(exclude={"corpus", "out", "kind", "vocab_size"})


def run_tokenizer(cfg: TokenizerConfig) -> tuple[str, bool]:
    """Train (or find up to date) the tokenizer of ``cfg``; returns its URI and whether it was skipped."""
    return _train(cfg.corpus, cfg.kind, cfg.vocab_size, cfg.out, **cfg.settings())


# ----------------------------------------------------------------- training


def train_tokenizer(
    corpus_uri: str,
    kind: str,
    vocab_size: int | None,
    out_uri: str,
    *,
    model_type: str = DEFAULT_MODEL_TYPE,
    sample_sentences: int = DEFAULT_SAMPLE_SENTENCES,
    seed: int = DEFAULT_SEED,
    character_coverage: float = DEFAULT_CHARACTER_COVERAGE,
    max_sentence_chars: int = DEFAULT_MAX_SENTENCE_CHARS,
    num_threads: int = DEFAULT_NUM_THREADS,
) -> str:
    """Train a ``kind`` tokenizer on ``{corpus_uri}/train``, publish it at ``out_uri`` and return ``out_uri``.

    ``kind`` is ``bytes`` (``vocab_size`` must be 257 or None), ``sentencepiece``
    or ``mecab+sentencepiece`` (``model_type`` ``unigram`` or ``bpe``). Skips the
    work when ``out_uri`` already holds an artifact with the same fingerprint.
    Bad input raises :class:`TokenizerError` with one line naming the artifact.
    """
    return _train(
        corpus_uri,
        kind,
        vocab_size,
        out_uri,
        model_type=model_type,
        sample_sentences=sample_sentences,
        seed=seed,
        character_coverage=character_coverage,
        max_sentence_chars=max_sentence_chars,
        num_threads=num_threads,
    )[0]


def tokenizer_config(
    kind: str,
    vocab_size: int | None,
    *,
    model_type: str,
    sample_sentences: int,
    seed: int,
    character_coverage: float,
    max_sentence_chars: int,
    num_threads: int,
    where: str,
) -> dict:
    """The fingerprinted training config; checks every value (TokenizerError naming ``where``)."""
    if kind not in KINDS:
        tokenizer_class(kind, where=where)  # raises the one-line error
    if kind == "bytes":
        if vocab_size not in (None, 257):
            raise TokenizerError(
                f"{where}: the bytes kind has a fixed vocab size of 257 (256 bytes + <|endoftext|>), "
                f"not {vocab_size}; pass --vocab-size 257"
            )
        return {"version": CONFIG_VERSION, "kind": kind, "vocab_size": 257}
    from gpt2ja.tokenization.spm import MODEL_TYPES, N_META_PIECES

    if model_type not in MODEL_TYPES:
        raise TokenizerError(f"{where}: unknown model type {model_type!r}; use one of {', '.join(MODEL_TYPES)}")
    if not isinstance(vocab_size, int) or vocab_size <= N_META_PIECES:
        raise TokenizerError(
            f"{where}: vocab size {vocab_size} is too small for byte fallback, which needs "
            f"{N_META_PIECES} fixed pieces plus the corpus's characters; "
            "pass --vocab-size 1000 or more"
        )
    if not 0.98 <= character_coverage <= 1.0:  # sentencepiece's own bounds
        raise TokenizerError(
            f"{where}: character_coverage {character_coverage} is outside 0.98–1.0; use e.g. 0.9995 for Japanese"
        )
    if sample_sentences < 1 or max_sentence_chars < 16 or num_threads < 1:
        raise TokenizerError(
            f"{where}: sample_sentences, max_sentence_chars (>= 16) and num_threads must be "
            "positive; fix the tokenizer config"
        )
    config = {
        "version": CONFIG_VERSION,
        "kind": kind,
        "vocab_size": vocab_size,
        "model_type": model_type,
        "sample_sentences": sample_sentences,
        "seed": seed,
        "character_coverage": character_coverage,
        "max_sentence_chars": max_sentence_chars,
        "num_threads": num_threads,
    }
    if kind == "mecab+sentencepiece":
        config["segmenter"] = "mecab/unidic-lite"
    return config


def _train(corpus_uri: str, kind: str, vocab_size: int | None, out_uri: str, **settings: Any) -> tuple[str, bool]:
    """``train_tokenizer``; also says whether it skipped (for the CLI summary)."""
    started = time.monotonic()
    where = f"tokenizer {out_uri}"
    config = tokenizer_config(kind, vocab_size, where=where, **settings)
    corpus_manifest = _corpus_manifest(corpus_uri)
    fp = storage.fingerprint(config, [corpus_manifest])
    outcome = run_stage(
        "tokenizer",
        out_uri,
        fingerprint=fp,
        inputs=[corpus_uri],
        log=log.warning,
        build=lambda: _build(corpus_uri, kind, out_uri, config, corpus_manifest, where, started),
    )
    if outcome.skipped:
        log.info("%s is up to date (fingerprint %s); skipping", out_uri, fp[:12])
        return out_uri, True
    log.info(
        "%s: %s tokenizer, vocab %d, %.3f chars/token on validation",
        out_uri,
        kind,
        outcome.manifest["counts"]["vocab_size"],
        outcome.manifest["stats"]["chars_per_token"] or 0.0,
    )
    return out_uri, False


def _build(
    corpus_uri: str, kind: str, out_uri: str, config: dict, corpus_manifest: dict, where: str, started: float
) -> dict:
    """Train and write the tokenizer's files into ``out_uri``; its manifest (run_stage writes it)."""
    train_dir = storage.join(corpus_uri, "train")
    if not list_parts(train_dir):
        raise _empty(corpus_uri, "has no train/part-*.jsonl.gz")
    cls = tokenizer_class(kind, where=where)
    provenance = {"config": config, "corpus": {"uri": corpus_uri, "fingerprint": corpus_manifest["fingerprint"]}}
    timings: dict[str, float] = {}
    counts: dict[str, int] = {}
    if kind == "bytes":
        if not any(doc.text.strip() for doc in read_documents(train_dir)):
            raise _empty(corpus_uri, "has no text in its train split")
        tok = cls(**provenance)
    else:
        model, counts, timings = _train_sentencepiece(train_dir, config, corpus_uri, corpus_manifest, where)
        tok = cls(model, **provenance)
    timings["training_s"] = sum(timings.values())
    t0 = time.monotonic()
    with progress(_split_documents(corpus_manifest, "validation"), "tokenizer: validation", "docs") as bar:
        validation = evaluate(
            tok,
            storage.join(corpus_uri, "validation"),
            num_threads=config.get("num_threads", 1),
            on_document=bar.advance,
        )
    timings["validation_s"] = time.monotonic() - t0
    tok.stats = {
        "chars_per_token": validation["chars_per_token"],
        "validation": validation,
    }
    if kind == "mecab+sentencepiece":
        from gpt2ja.tokenization.mecab import Segmenter

        tok.stats["segmenter"] = Segmenter.info()
    tok.counts = {
        **counts,
        "validation_documents": validation["documents"],
        "validation_characters": validation["characters"],
        "validation_tokens": validation["tokens"],
    }
    timings["total_s"] = time.monotonic() - started
    tok.timings = {k: round(v, 3) for k, v in timings.items()}
    return tok.write_files(out_uri)


def _train_sentencepiece(
    train_dir: str, config: dict, corpus_uri: str, corpus_manifest: dict, where: str
) -> tuple[bytes, dict, dict]:
    """Sample, (segment,) check the vocab size, train: the model bytes, counts and timings."""
    from gpt2ja.tokenization.spm import train_model

    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix=f"gpt2ja-tok_train-{os.getpid()}-") as tmp:
        t0 = time.monotonic()
        with progress(_split_documents(corpus_manifest, "train"), "tokenizer: sample", "docs") as bar:
            sample, counts = _sample(_counted(read_documents(train_dir), bar), config)
        if not sample:
            raise _empty(corpus_uri, f"has no text in its train split ({counts['train_documents']} documents)")
        timings["sample_s"] = time.monotonic() - t0

        t0 = time.monotonic()
        segmenter, delimiter = None, ""
        if config["kind"] == "mecab+sentencepiece":
            from gpt2ja.tokenization.mecab import DELIMITER, Segmenter

            segmenter, delimiter = Segmenter(), DELIMITER
        chars: Counter = Counter()  # for the vocab-size check, as sentencepiece counts them
        sample_path = os.path.join(tmp, "sentences.txt")
        step = "segment (MeCab) and write" if segmenter else "write"
        with (
            open(sample_path, "w", encoding="utf-8") as f,
            progress(len(sample), f"tokenizer: {step} the sample", "sentences") as bar,
        ):
            for sentence in sample:
                chars.update(sentence)
                f.write((segmenter.segment(sentence) if segmenter else sentence) + "\n")
                bar.advance()
        del sample
        if segmenter:
            timings["mecab_s"] = time.monotonic() - t0
            counts["mecab_unsplit_sentences"] = segmenter.unsplit
        counts["distinct_characters"] = len(chars)
        _check_vocab(config, chars, corpus_uri, where)

        t0 = time.monotonic()
        # sentencepiece trains in one C++ call that reports nothing: a spinner and the elapsed time
        with progress(None, f"tokenizer: sentencepiece {config['model_type']} training", "steps") as bar:
            bar.update(
                info=f"{counts['sampled_sentences']:,} sentences, vocab "
                f"{config['vocab_size']:,} (one C++ call: no progress of its own)"
            )
            model = train_model(
                sample_path,
                where=f"{where} (corpus {corpus_uri})",
                vocab_size=config["vocab_size"],
                model_type=config["model_type"],
                character_coverage=config["character_coverage"],
                num_threads=config["num_threads"],
                max_sentence_length=8 * config["max_sentence_chars"],
                pretokenization_delimiter=delimiter,
            )
        timings["sentencepiece_s"] = time.monotonic() - t0
    return model, counts, timings


def _split_documents(corpus_manifest: dict, split: str) -> int | None:
    """The documents of a corpus split, from its manifest (None when it does not say: a spinner then)."""
    n = ((corpus_manifest.get("counts") or {}).get("splits") or {}).get(split, {}).get("documents")
    return n if isinstance(n, int) else None


def _counted(docs: Iterable, bar) -> Iterator:
    """``docs``, advancing ``bar`` by one document and its UTF-8 bytes each."""
    for doc in docs:
        bar.advance(1, bytes=len(doc.text.encode("utf-8")))
        yield doc


def _corpus_manifest(corpus_uri: str) -> dict:
    return require(corpus_uri, "corpus", "build it with `gpt2ja clean`, or check the URI", TokenizerError)


def _empty(corpus_uri: str, what: str) -> TokenizerError:
    return TokenizerError(
        f"corpus {corpus_uri} {what}: nothing to train a tokenizer on; "
        "rebuild it with `gpt2ja clean` or pass a corpus with documents"
    )


def _sample(docs: Iterable, config: dict) -> tuple[list[str], dict[str, int]]:
    reservoir = Reservoir(config["sample_sentences"], config["seed"])
    documents = characters = 0
    for doc in docs:
        documents += 1
        characters += len(doc.text)
        for sentence in training_sentences(doc.text, config["max_sentence_chars"]):
            reservoir.add(sentence)
    sample = reservoir.sample()
    return sample, {
        "train_documents": documents,
        "train_characters": characters,
        "train_sentences": reservoir.seen,
        "sampled_sentences": len(sample),
    }


def _check_vocab(config: dict, chars: Counter, corpus_uri: str, where: str) -> None:
    from gpt2ja.tokenization.spm import N_META_PIECES, required_characters

    needed = required_characters(chars, config["character_coverage"])
    minimum = N_META_PIECES + needed
    if config["vocab_size"] < minimum:
        raise TokenizerError(
            f"{where}: vocab size {config['vocab_size']} is too small for corpus {corpus_uri}: byte fallback needs "
            f"{N_META_PIECES} fixed pieces plus the {needed} characters that cover "
            f"{config['character_coverage']:.2%} of its text, at least {minimum}; "
            f"pass --vocab-size {minimum} or more"
        )


# ----------------------------------------------------------------- evaluation


def evaluate(
    tok: Tokenizer, split_uri: str, num_threads: int = 1, on_document: Callable[[], Any] | None = None
) -> dict[str, Any]:
    """Characters (and UTF-8 bytes) per token over every document of ``split_uri``.

    ``byte_fallback_tokens`` counts byte pieces (text the vocabulary does not
    cover); ``chars_per_token`` is None for an empty or missing split.
    ``on_document()`` is called per document read (a progress bar's advance).
    """
    byte_ids = getattr(tok, "byte_ids", None)
    documents = characters = nbytes = tokens = fallback = 0
    batch: list[str] = []

    def flush() -> None:
        nonlocal tokens, fallback
        for ids in tok.encode_batch(batch, num_threads=num_threads):
            tokens += len(ids)
            if byte_ids is not None:
                lo, hi = byte_ids.start, byte_ids.stop
                fallback += sum(1 for i in ids if lo <= i < hi)
        batch.clear()

    for doc in read_documents(split_uri):
        if on_document is not None:
            on_document()
        documents += 1
        characters += len(doc.text)
        nbytes += len(doc.text.encode("utf-8"))
        batch.append(doc.text)
        if len(batch) >= _EVAL_BATCH:
            flush()
    flush()
    if not documents:
        log.warning("%s has no documents: characters per token not measured", split_uri)
    return {
        "split": split_uri,
        "documents": documents,
        "characters": characters,
        "bytes": nbytes,
        "tokens": tokens,
        "chars_per_token": round(characters / tokens, 4) if tokens else None,
        "bytes_per_token": round(nbytes / tokens, 4) if tokens else None,
        "byte_fallback_tokens": fallback if byte_ids is not None else None,
    }


# ----------------------------------------------------------------- CLI


def summary(tok: Tokenizer, uri: str, *, skipped: bool = False) -> str:
    """One paragraph about a trained tokenizer: kind, vocab, characters per token, training time."""
    cfg, stats, counts = tok.config, tok.stats, tok.counts
    val = stats.get("validation") or {}
    kind = tok.kind + (f" ({cfg['model_type']})" if cfg.get("model_type") else "")
    cpt = stats.get("chars_per_token")
    text = f"{kind} tokenizer at {uri}: vocab size {tok.vocab_size:,}, eos_id {tok.eos_id}; " + (
        f"{cpt:.3f} characters per token on the validation split "
        f"({val.get('documents', 0):,} documents, {val.get('characters', 0):,} characters)"
        if cpt
        else "characters per token not measured (the validation split is empty)"
    )
    if val.get("byte_fallback_tokens") is not None and val.get("tokens"):
        text += f", {val['byte_fallback_tokens'] / val['tokens']:.3%} of tokens byte fallback"
    seconds = ((storage.read_manifest(uri) or {}).get("timings") or {}).get("training_s", 0.0)  # not in the files:
    text += f"; trained in {seconds:.1f} s"  # a timing in tokenizer.json would make every build's bytes differ
    if counts.get("sampled_sentences") is not None:
        text += (
            f" on {counts['sampled_sentences']:,} of {counts.get('train_sentences', 0):,} training sentences "
            f"(seed {cfg.get('seed')})"
        )
    text += "."
    if skipped:
        text += " Already up to date (manifest fingerprint matches): nothing was retrained."
    return text
