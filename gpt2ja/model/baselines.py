"""Compression baselines: what PPMd, gzip and xz spend on the text a model is evaluated on.

A language model is a compressor (an arithmetic coder driven by it spends its
bits per character), so the honest floor for "has it learned anything" is a
good general-purpose compressor on the same characters. Four figures, each as
bits per character and per UTF-8 byte:

* **PPMd order 8** (``pyppmd.Ppmd7Encoder``, variant H as in 7-Zip): a
  context-mixing-free but strong text model, the classic baseline for
  character-level language models. It sees only the evaluated text.
* **PPMd order 8, primed**: the same encoder first reads a sample of the run's
  training text (:func:`training_sample`), then the evaluated text; only the
  bytes it emits for the evaluated text count. This is the fair comparison for
  a model that has read its training data.
* **gzip -9** and **xz -9e**, for orientation (their container headers, about
  20 and 60 bytes, are counted; they matter only for very short texts).

The text measured is exactly the characters the model scores: the evaluated
texts concatenated (``"".join(texts)``; the model scores each after an EOS, and
the EOS is context, not scored). The compressors see the texts as one stream,
so they may use one text as context for the next, which the model may not: a
small advantage to the baseline, never to the model.

Priming costs one pass, with nothing cached. PPMd's state cannot be saved
(``pyppmd`` encoders do not pickle or copy), but its output is a stream: one
encoder reads the prime, the bytes it has emitted so far are noted, then it
reads the text and is flushed; the text's cost is everything emitted after the
note, the final flush included (the same accounting as the unprimed figure,
whose stream also ends with a flush). This equals ``len(compress(prime +
text)) - len(compress(prime))`` up to the range coder's flush: the second form
is smaller by the 5 bytes the prime-alone stream spends on its own flush (plus
at most a byte or two the coder holds back at the boundary; tested). A second
evaluation therefore costs the same one pass; there is no cache to go stale.

Memory. PPMd keeps its whole model in a fixed arena and restarts from scratch
when the arena is full, which would silently throw the priming away. Order 8
on Japanese UTF-8 needs about 5 bytes of arena per input byte (measured: a
4,000,000-character Aozora sample, 11.6 MB, grows the model to between 48 and
64 MiB; at 48 MiB its output already differs). The arena is therefore
``8 × (prime + text bytes)``, at least 256 MiB (room for about 4× the default
prime) and at most 2 GiB; the output does not depend on the arena's size while
the model fits, so the figures do not change with it.

Example::

    prime = training_sample("data/runs/tiny", 4_000_000, exclude=texts)
    figures = compression_baselines("".join(texts), prime)
    figures["ppmd_order8_bits_per_character"], figures["ppmd_order8_primed_bits_per_character"]
    verdict(5.69, figures)   # ["The model (5.690 bits/character) beats PPMd order 8 alone (…)", …]
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
from collections.abc import Iterable
from dataclasses import dataclass

from gpt2ja.infra import storage

PPMD_ORDER = 8
DEFAULT_PRIME_CHARS = 4_000_000
MIN_PPMD_MEMORY = 256 << 20  # bytes: the default prime (≈12 MB of UTF-8) needs ≈64 MiB
MAX_PPMD_MEMORY = 2 << 30  # beyond this the arena is not worth reserving next to a loaded model
PPMD_MEMORY_PER_BYTE = 8  # arena bytes per input byte: ≈5 measured, with a margin
PRIME_SALT = "gpt2ja-ppmd-prime-v1"  # which training documents the sample takes (a hash of their id)
PRIME_MARGIN = 1.25  # sample a little more than needed so the hash's variance rarely leaves it short


@dataclass
class Prime:
    """A sample of a run's training text for priming PPMd, or why there is none.

    ``text`` is None when the run's training text was not found (``missing``
    says why, in words) or priming was turned off.
    """

    text: str | None
    source: str | None = None  # the training split it came from
    documents: int = 0
    missing: str | None = None

    @property
    def characters(self) -> int:
        return len(self.text) if self.text is not None else 0


# ----------------------------------------------------------------- compressed sizes (bytes)


def ppmd_memory(nbytes: int) -> int:
    """The PPMd arena for a stream of ``nbytes``: ``8 × nbytes`` between 256 MiB and 2 GiB (see the module doc)."""
    return min(max(MIN_PPMD_MEMORY, PPMD_MEMORY_PER_BYTE * nbytes), MAX_PPMD_MEMORY)


def ppmd_size(data: bytes, *, order: int = PPMD_ORDER, memory: int = MIN_PPMD_MEMORY) -> int:
    """Bytes of ``data`` compressed by PPMd (variant H) of ``order`` with a ``memory``-byte arena, flush included."""
    import pyppmd

    enc = pyppmd.Ppmd7Encoder(order, memory)
    return len(enc.encode(data)) + len(enc.flush())


def ppmd_primed_size(prime: bytes, data: bytes, *, order: int = PPMD_ORDER, memory: int = MIN_PPMD_MEMORY) -> int:
    """Bytes PPMd emits for ``data`` after it has read ``prime`` (one stream; the final flush counted)."""
    import pyppmd

    enc = pyppmd.Ppmd7Encoder(order, memory)
    enc.encode(prime)  # what it emits here is the prime's cost: not counted
    return len(enc.encode(data)) + len(enc.flush())


def gzip_size(data: bytes) -> int:
    """Bytes of ``data`` as a gzip file at level 9 (header and trailer included; no timestamp)."""
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def xz_size(data: bytes) -> int:
    """Bytes of ``data`` as an .xz file at preset 9 | extreme (container included)."""
    return len(lzma.compress(data, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME))


def compression_baselines(text: str, prime: Prime | None = None) -> dict:
    """The baseline figures of ``text`` (bits per character and per UTF-8 byte), flat, for ``eval.json``.

    Keys: ``ppmd_order8_bits_per_character`` / ``_per_byte``, the same with
    ``_primed`` (None without a prime), ``gzip_…``, ``xz_…``, and what was
    measured: ``characters``, ``bytes``, ``prime_characters``, ``prime_bytes``,
    ``prime_documents``, ``prime_source``, ``prime_sha256``, ``prime_missing``
    (why there is no primed figure), ``ppmd_order``, ``ppmd_memory_bytes``.
    """
    data = text.encode("utf-8")
    chars, nbytes = len(text), len(data)
    primed = prime.text.encode("utf-8") if prime is not None and prime.text is not None else None
    memory = ppmd_memory(nbytes + (len(primed) if primed is not None else 0))
    sizes = {
        "ppmd_order8": ppmd_size(data, memory=memory),
        "ppmd_order8_primed": (ppmd_primed_size(primed, data, memory=memory) if primed is not None else None),
        "gzip": gzip_size(data),
        "xz": xz_size(data),
    }
    out: dict = {"characters": chars, "bytes": nbytes, "ppmd_order": PPMD_ORDER, "ppmd_memory_bytes": memory}
    for name, size in sizes.items():
        out[f"{name}_compressed_bytes"] = size
        out[f"{name}_bits_per_character"] = 8 * size / chars if size is not None and chars else None
        out[f"{name}_bits_per_byte"] = 8 * size / nbytes if size is not None and nbytes else None
    out.update(
        {
            "prime_characters": prime.characters if prime else 0,
            "prime_bytes": len(primed) if primed is not None else 0,
            "prime_documents": prime.documents if prime else 0,
            "prime_source": prime.source if prime else None,
            "prime_sha256": hashlib.sha256(primed).hexdigest() if primed is not None else None,
            "prime_missing": (prime.missing if prime else "no priming sample given") if primed is None else None,
        }
    )
    return out


# ----------------------------------------------------------------- the priming sample


def training_split(run_uri: str) -> tuple[str | None, str]:
    """The training split of the clean corpus a run was trained on, or None and why not (in words).

    The chain: ``{run}/hparams.json`` names its shards (``data.uri``), the
    shards' manifest names its corpus (``corpus.uri``, resolved with
    :func:`gpt2ja.infra.stage.input_uri`), and the corpus holds ``train/part-*.jsonl.gz``.
    """
    from gpt2ja.corpus.jsonl import list_parts
    from gpt2ja.infra import stage
    from gpt2ja.model import runs
    from gpt2ja.model.presets import ModelError

    try:
        hparams = runs.read_hparams(run_uri)
    except ModelError as err:
        return None, str(err)
    shards = runs.data_uri(hparams, run_uri)
    if not shards:
        return None, f"{run_uri}/{runs.HPARAMS} does not name the shards it was trained on"
    try:
        manifest = storage.read_manifest(shards)
    except storage.StorageError as err:
        return None, f"the run's shards {shards}: {err}"
    if manifest is None:
        return None, f"the run's shards {shards} are not here (no {storage.MANIFEST})"
    ref = (manifest.get("corpus") or {}).get("uri")
    if not ref:
        return None, f"the run's shards {shards} do not name their corpus"
    train = storage.join(stage.input_uri(manifest, ref), "train")
    try:
        found = list_parts(train)
    except storage.StorageError as err:
        return None, f"the training split {train}: {err}"
    if not found:
        return None, f"the training split {train} holds no documents here"
    return train, ""


def training_sample(run_uri: str, chars: int = DEFAULT_PRIME_CHARS, *, exclude: Iterable[str] = ()) -> Prime:
    """About ``chars`` characters of the run's training text, spread over the whole training split.

    Documents are taken in corpus order when a hash of their id (salted with
    ``PRIME_SALT``) falls below ``1.25 × chars / (training characters)``, so
    the sample is spread over every part (not the first works of the first
    authors) and the same run always gives the same sample; each is followed by
    a newline, and the last one is cut at ``chars``; when chance leaves the
    sample short, the documents the hash passed over fill it, in corpus order
    (a second read of the split). A document whose text is
    one of ``exclude`` (the evaluated texts) is left out. A training split
    smaller than ``chars`` is taken whole. When the training text cannot be
    found the Prime says why (``missing``) instead of raising: the unprimed
    figures are still worth having.
    """
    from gpt2ja.corpus.jsonl import ShardError, read_documents
    from gpt2ja.corpus.split import id_fraction

    if chars <= 0:
        return Prime(None, missing="priming turned off (prime characters 0)")
    split, why = training_split(run_uri)
    if split is None:
        return Prime(None, missing=why)
    corpus = split.rsplit("/", 1)[0]
    try:
        total = (
            (((storage.read_manifest(corpus) or {}).get("counts") or {}).get("splits") or {})
            .get("train", {})
            .get("characters")
        )
    except storage.StorageError:
        total = None
    take = min(1.0, PRIME_MARGIN * chars / total) if total else 1.0
    skip = {hashlib.sha256(t.encode("utf-8")).digest() for t in exclude}
    pieces: list[str] = []
    have = 0
    try:
        # first the documents the hash picks; if chance left the sample short, the others, in order, fill it
        for picked in (True, False) if take < 1.0 else (True,):
            for doc in read_documents(split):
                if take < 1.0 and (id_fraction(doc.id, PRIME_SALT) < take) != picked:
                    continue
                if not doc.text or hashlib.sha256(doc.text.encode("utf-8")).digest() in skip:
                    continue
                pieces.append((doc.text + "\n")[: chars - have])
                have += len(pieces[-1])
                if have >= chars:
                    break
            if have >= chars:
                break
    except (ShardError, storage.StorageError) as err:
        return Prime(None, source=split, missing=f"the training split {split} cannot be read ({err})")
    if not have:
        return Prime(None, source=split, missing=f"the training split {split} has no text outside the evaluated texts")
    return Prime("".join(pieces), source=split, documents=len(pieces))


# ----------------------------------------------------------------- words


def compare(bits_per_character: float | None, figures: dict) -> dict:
    """``figures`` with ``model_beats_ppmd_order8`` and ``model_beats_ppmd_order8_primed`` (None: no figure)."""

    def beats(key: str) -> bool | None:
        other = figures.get(key)
        return None if other is None or bits_per_character is None else bool(bits_per_character < other)

    return {
        **figures,
        "model_beats_ppmd_order8": beats("ppmd_order8_bits_per_character"),
        "model_beats_ppmd_order8_primed": beats("ppmd_order8_primed_bits_per_character"),
    }


def verdict(bits_per_character: float | None, figures: dict) -> list[str]:
    """Plain sentences: does the model beat PPMd order 8 alone, and primed with training text?"""
    if bits_per_character is None:
        return ["No characters were scored: nothing to compare."]

    def sentence(key: str, what: str) -> str:
        other = figures[key]
        word = "beats" if bits_per_character < other else "does not beat"
        return f"The model ({bits_per_character:.3f} bits/character) {word} {what} ({other:.3f} bits/character)."

    lines = [sentence("ppmd_order8_bits_per_character", "PPMd order 8 alone")]
    if figures.get("ppmd_order8_primed_bits_per_character") is not None:
        lines.append(
            sentence(
                "ppmd_order8_primed_bits_per_character",
                f"PPMd order 8 primed with {figures['prime_characters']:,} characters of its training text",
            )
        )
    else:
        lines.append(f"No primed PPMd figure: {figures.get('prime_missing') or 'no priming sample'}.")
    return lines


def report_markdown(result: dict) -> list[str]:
    """Markdown lines for ``report.md``: a table of the model against the baselines, then the verdict."""
    b = result["baselines"]

    def num(value) -> str:
        return "-" if value is None else f"{value:.4f}"

    primed = (
        f"PPMd order 8 primed ({b['prime_characters']:,} training characters)"
        if b.get("ppmd_order8_primed_bits_per_character") is not None
        else "PPMd order 8 primed (no sample)"
    )
    rows = [
        ("this model", result.get("bits_per_character"), result.get("bits_per_byte")),
        ("PPMd order 8", b["ppmd_order8_bits_per_character"], b["ppmd_order8_bits_per_byte"]),
        (primed, b.get("ppmd_order8_primed_bits_per_character"), b.get("ppmd_order8_primed_bits_per_byte")),
        ("gzip -9", b["gzip_bits_per_character"], b["gzip_bits_per_byte"]),
        ("xz -9e", b["xz_bits_per_character"], b["xz_bits_per_byte"]),
    ]
    lines = [
        "## Compression baselines",
        "",
        f"The same {b['characters']:,} characters ({b['bytes']:,} UTF-8 bytes), the texts concatenated.",
        "",
        "| coder | bits per character | bits per byte |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {num(c)} | {num(by)} |" for name, c, by in rows]
    lines += [""] + verdict(result.get("bits_per_character"), b)
    if b.get("prime_source"):
        lines.append(
            f"Priming sample: {b['prime_characters']:,} characters from {b['prime_documents']:,} documents "
            f"of `{b['prime_source']}`."
        )
    lines.append("")
    return lines
