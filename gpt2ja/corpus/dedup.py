"""Exact and near-duplicate detection for the clean stage (MinHash LSH over character n-grams).

The clean stage works in two halves. Workers compute one small
:class:`DedupRecord` per kept document (:func:`make_record`: an exact key and a
MinHash signature); then ONE sequential pass feeds every record, in
``(priority, key)`` order, to a :class:`Deduplicator`, which keeps the first
document of each duplicate cluster and names the reason for every other one:

- ``exact_duplicate``: the same text once all whitespace is removed
  (:func:`exact_key`, blake2b-128);
- ``near_duplicate``: an LSH candidate (datasketch ``MinHashLSH``, banding
  ``(bands, rows)``) whose estimated Jaccard similarity of character
  ``ngram``-gram sets (shingles) is at least ``threshold``.

Because the pass runs in ``(priority, key)`` order, the result does not depend
on the order records arrive in, and the clean stage passes
``priority = (fetched_at, source rank, id)`` so that the OLDEST copy of a text is
kept: a corpus refresh keeps the documents it already had.

Example::

    >>> cfg = DedupConfig()
    >>> (cfg.bands, cfg.rows), round(s_curve_threshold(cfg.bands, cfg.rows), 3)
    ((16, 8), 0.707)
    >>> text = "ある日の暮方の事である。一人の下人が、羅生門の下で雨やみを待っていた。"
    >>> old = DedupRecord("a", ("2024-01-01",), exact_key(text), signature(text, cfg))
    >>> new = DedupRecord("b", ("2025-01-01",), exact_key(text + "\\n"), signature(text, cfg))
    >>> deduplicate([new, old], cfg)
    {'b': ('exact_duplicate', 'a')}

Memory of the pass, per KEPT document (tracemalloc, 100,000 distinct documents,
``num_perm=128, bands=16, rows=8``, empty ``meta``): about 6.5 KB in all —

- its signature, ``num_perm × 4`` = 512 bytes, in one matrix grown by doubling
  (so up to twice that before the next growth);
- datasketch's LSH tables, about 5.5 KB: per band a 32-byte band key (a 65-byte
  ``bytes``), a dict entry and a Python ``set`` per bucket (~350 bytes a band);
- the id, exact-key and meta dict entries (~300 bytes plus ``meta`` itself).

So 1 million kept documents need about 6.5 GB for the pass. A dropped document
costs only its exact-key entry and its line in the cluster report.

That is ``engine: memory`` (the default). ``engine: sharded``
(:mod:`gpt2ja.corpus.lsh_index`) gets the same decisions from band buckets sorted
per task, with no index in memory, and differs only on chains: it drops a
whole connected component, where this pass keeps C of A ≈ B ≈ C, A ≉ C.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from datasketch import MinHash, MinHashLSH
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gpt2ja.corpus.document import Document

__all__ = [
    "DedupConfig",
    "DedupRecord",
    "Deduplicator",
    "candidate_probability",
    "choose_bands",
    "deduplicate",
    "exact_key",
    "make_record",
    "record_order",
    "s_curve_threshold",
    "shingle_hash",
    "shingles",
    "signature",
]

SCHEME = "affine32"  # datasketch ≥ 2.0 default permutation scheme: hash values are uint32
_EMPTY = np.uint32(0xFFFFFFFF)  # the value of an untouched MinHash slot
_M64 = (1 << 64) - 1
_P = 0x100000001B3  # odd multiplier of the n-gram polynomial hash (the 64-bit FNV prime)
_CHUNK = 8192  # shingles per step of the permutation: a (num_perm, 8192) uint32 buffer, 4 MB at 128


# --------------------------------------------------------------------------- banding


def s_curve_threshold(bands: int, rows: int) -> float:
    """The usual approximation of the Jaccard similarity where the banding's S-curve
    rises through 1/2: ``(1/b)^(1/r)`` (Leskovec, Rajaraman & Ullman, *Mining of
    Massive Datasets*, §3.4.2). At that point the candidate probability is in fact
    ``1-(1-1/b)^b`` (0.64 for b=16); the exact 1/2 crossing is
    ``(1-2^(-1/b))^(1/r)`` (0.674 for 16 × 8, against 0.707 here)."""
    return (1.0 / bands) ** (1.0 / rows)


def candidate_probability(jaccard: float, bands: int, rows: int) -> float:
    """Probability that two sets of Jaccard similarity ``jaccard`` share at least
    one band: ``1 - (1 - J^r)^b`` (the S-curve)."""
    return 1.0 - (1.0 - jaccard**rows) ** bands


def choose_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """The banding ``(bands, rows)`` that uses at least 90 % of the permutations and
    whose S-curve midpoint is closest to ``threshold`` (ties: more permutations).
    For ``threshold=0.7, num_perm=128`` it is ``(16, 8)``, midpoint 0.707."""
    best: tuple[float, int, int, int] | None = None
    for rows in range(1, num_perm + 1):
        for bands in range(1, num_perm // rows + 1):
            used = bands * rows
            if used < 0.9 * num_perm:
                continue
            score = (abs(s_curve_threshold(bands, rows) - threshold), -used, bands, rows)
            best = score if best is None or score < best else best
    assert best is not None  # bands = num_perm, rows = 1 always qualifies
    return best[2], best[3]


class DedupConfig(BaseModel):
    """Deduplication settings of the clean stage.

    ``bands``/``rows`` default to :func:`choose_bands` for ``threshold`` (16 × 8 for
    the defaults, S-curve midpoint 0.707). With ``verify`` on, LSH candidates are
    confirmed by the estimated Jaccard similarity, so the banding only has to
    find the pairs (its midpoint may sit below ``threshold``, never far above it).
    """

    model_config = ConfigDict(extra="forbid")

    exact: bool = Field(True, description="drop documents whose whitespace-free text is identical")
    near: bool = Field(True, description="drop near-duplicates found by MinHash LSH")
    ngram: int = Field(5, ge=1, le=32, description="shingle length in characters (of the whitespace-free text)")
    num_perm: int = Field(128, ge=8, le=1024, description="MinHash permutations (signature length)")
    bands: int | None = Field(None, ge=2, le=1024, description="LSH bands b; None: chosen for threshold")
    rows: int | None = Field(None, ge=1, le=1024, description="LSH rows per band r; None: chosen for threshold")
    threshold: float = Field(
        0.7, ge=0.05, le=0.99, description="Jaccard similarity above which a pair is a near duplicate"
    )
    seed: int = Field(1, ge=0, le=2**32 - 1, description="seed of the MinHash permutations")
    verify: bool = Field(True, description="confirm LSH candidates by estimated Jaccard ≥ threshold")
    engine: Literal["memory", "sharded"] = Field(
        "memory",
        description="memory: one sequential pass with the whole LSH index in one process (~6.5 KB per "
        "kept document); sharded: band buckets sorted per task on the stage's runner, "
        "no index in memory (gpt2ja.corpus.lsh_index); clusters are connected components",
    )
    bucket_window: int = Field(
        16,
        ge=1,
        le=1024,
        description="sharded: each document is compared with up to this many documents before it in a band's bucket",
    )
    bands_per_task: int = Field(
        4, ge=1, le=1024, description="sharded: bands bucketed by one task (does not change the result)"
    )
    max_rows_in_memory: int = Field(
        4_000_000,
        ge=16,
        le=2**31,
        description="sharded: bucket rows (24 bytes) a "
        "task sorts in memory; more are sorted in runs on local disk and merged "
        "(does not change the result)",
    )
    index: str | None = Field(
        None,
        description="sharded: a persistent index of what earlier cleans kept "
        "(gpt2ja.corpus.dedup_index): 'auto' ({root}/dedup-index/{corpus}) or a folder; a clean then "
        "reads only the inputs no index version consumed and dedups them against it",
    )

    @model_validator(mode="after")
    def _index_needs_sharded(self) -> "DedupConfig":
        if self.index is not None and self.engine != "sharded":
            raise ValueError(
                "dedup: index needs engine: sharded (the memory engine's index lives in one process "
                "and is never stored); set dedup.engine: sharded, or drop dedup.index"
            )
        return self

    @model_validator(mode="after")
    def _banding(self) -> "DedupConfig":
        if (self.bands is None) != (self.rows is None):
            raise ValueError("dedup: give both bands and rows, or neither (then they are chosen for threshold)")
        if self.bands is None:
            self.bands, self.rows = choose_bands(self.threshold, self.num_perm)
        assert self.rows is not None
        if self.bands * self.rows > self.num_perm:
            raise ValueError(
                f"dedup: bands × rows = {self.bands} × {self.rows} = {self.bands * self.rows} exceeds "
                f"num_perm = {self.num_perm}; lower them or raise num_perm"
            )
        mid = s_curve_threshold(self.bands, self.rows)
        if mid > self.threshold + 0.05 or (not self.verify and mid < self.threshold - 0.05):
            hint = choose_bands(self.threshold, self.num_perm)
            raise ValueError(
                f"dedup: bands={self.bands}, rows={self.rows} find pairs from Jaccard ≈ {mid:.2f}, "
                f"inconsistent with threshold={self.threshold}"
                + ("" if self.verify else " (verify is off, so the banding alone decides)")
                + f"; use bands={hint[0]}, rows={hint[1]} or leave both unset"
            )
        return self

    @property
    def s_curve(self) -> float:
        """The Jaccard similarity at which this banding finds half of the pairs."""
        return s_curve_threshold(self.bands, self.rows)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- keys and signatures


def _compact(text: str) -> str:
    """The text with every whitespace character removed (line breaks, U+3000 too)."""
    return "".join(text.split())


def exact_key(text: str) -> str:
    """blake2b-128 (hex) of the normalised text with all whitespace removed."""
    return hashlib.blake2b(_compact(text).encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def shingles(text: str, ngram: int) -> list[str]:
    """The character n-grams of the whitespace-free text; a shorter text is one shingle."""
    s = _compact(text)
    if len(s) < ngram:
        return [s]
    return [s[i : i + ngram] for i in range(len(s) - ngram + 1)]


def shingle_hash(shingle: str) -> int:
    """32-bit hash of one shingle: a polynomial over its code points mod 2^64, mixed by
    the MurmurHash3 64-bit finalizer, high half. This is the scalar twin of the
    vectorised hash inside :func:`signature`; pass it as ``MinHash(hashfunc=...)``
    to get the same hash values from datasketch."""
    h = len(shingle)
    for ch in shingle:
        h = (h * _P + ord(ch)) & _M64
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _M64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & _M64
    h ^= h >> 33
    return h >> 32


def _shingle_hashes(text: str, ngram: int) -> np.ndarray:
    """(n_shingles,) uint32: :func:`shingle_hash` of every shingle, vectorised."""
    cp = np.frombuffer(_compact(text).encode("utf-32-le", "surrogatepass"), dtype="<u4").astype(np.uint64)
    n = min(ngram, len(cp))  # a text shorter than ngram is one shingle
    m = len(cp) - n + 1
    h = np.full(m, n, dtype=np.uint64)
    for k in range(n):  # wraps mod 2^64, as intended
        h = h * np.uint64(_P) + cp[k : k + m]
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return (h >> np.uint64(32)).astype(np.uint32)


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer: datasketch's affine32 pre-mix of every input hash."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


@functools.lru_cache(maxsize=8)
def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's own affine32 permutation parameters, as (num_perm, 1) columns."""
    a, b = MinHash(num_perm=num_perm, seed=seed, scheme=SCHEME).permutations
    return a.reshape(-1, 1), b.reshape(-1, 1)


def signature(text: str, cfg: DedupConfig) -> np.ndarray:
    """MinHash of the text's character ``cfg.ngram``-grams: (num_perm,) uint32.

    Equal to ``MinHash(cfg.num_perm, seed=cfg.seed, hashfunc=shingle_hash)`` after
    ``update_batch(shingles(text, cfg.ngram))`` (datasketch's default affine32
    scheme), computed with numpy instead of a Python call per shingle: 25-30 MB/s
    of UTF-8 Japanese on one core, where datasketch's own ``update_batch`` with
    its default SHA-1 hash gives 1.7 MB/s (SHA-1 alone caps it at 2.4 MB/s).
    Shingles are hashed by their code points (:func:`shingle_hash`), which
    numpy can do for all windows at once.
    """
    a, b = _permutations(cfg.num_perm, cfg.seed)
    hv = _fmix32(_shingle_hashes(text, cfg.ngram))  # (n_shingles,) uint32
    out = np.full(cfg.num_perm, _EMPTY, dtype=np.uint32)
    buf = np.empty((cfg.num_perm, min(_CHUNK, len(hv))), dtype=np.uint32)
    for start in range(0, len(hv), _CHUNK):
        chunk = hv[None, start : start + _CHUNK]  # (1, c)
        part = buf[:, : chunk.shape[1]]  # (num_perm, c): a_k * h + b_k mod 2^32
        np.multiply(a, chunk, out=part)
        np.add(part, b, out=part)
        np.minimum(out, part.min(axis=1), out=out)
    return out


# --------------------------------------------------------------------------- the pass


@dataclass
class DedupRecord:
    """What the sequential pass needs of one document: ``key`` (document id),
    ``priority`` (sort key: the lowest is kept), ``exact`` (:func:`exact_key`),
    ``sig`` (:func:`signature`, or None to skip near-duplicate detection), and
    ``meta`` (title, url, chars: only for the report)."""

    key: str
    priority: tuple
    exact: str
    sig: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def make_record(doc: Document, text: str, cfg: DedupConfig, priority: tuple) -> DedupRecord:
    """The record of ``doc`` whose cleaned, normalised text is ``text`` (worker side)."""
    return DedupRecord(
        key=doc.id,
        priority=priority,
        exact=exact_key(text),
        sig=signature(text, cfg) if cfg.near else None,
        meta={"title": doc.title, "url": doc.url, "chars": len(text)},
    )


def record_order(rec: DedupRecord) -> tuple:
    """The order of the pass: ``(priority, key)``."""
    return (rec.priority, rec.key)


class Deduplicator:
    """The sequential duplicate pass: feed records in :func:`record_order`.

    The first record of a cluster is kept; :meth:`add` says why a later one is
    dropped and which kept document it duplicates. Only kept documents enter the
    indexes, so a chain A ≈ B ≈ C with A ≉ C keeps C.

    Example::

        dedup = Deduplicator(cfg)
        for rec in sorted(records, key=record_order):
            reason, kept = dedup.add(rec)
        report = dedup.clusters()[:20]
    """

    def __init__(self, cfg: DedupConfig):
        self.cfg = cfg
        self._lsh = MinHashLSH(num_perm=cfg.num_perm, params=(cfg.bands, cfg.rows))
        self._perms = MinHash(num_perm=cfg.num_perm, seed=cfg.seed, scheme=SCHEME).permutations
        self._sigs = np.empty((1024, cfg.num_perm), dtype=np.uint32)  # row i: i-th kept signature
        self._nsig = 0
        self._row: dict[str, int] = {}  # kept key → row in _sigs (near on) or -1
        self._exact: dict[str, str] = {}  # exact key → the first document with it
        self._dropped: dict[str, tuple[str, float]] = {}  # dropped key → (kept key, jaccard)
        self._meta: dict[str, dict] = {}  # kept key → meta
        self._members: dict[str, list[dict]] = {}  # kept key → its dropped duplicates
        self._last: tuple | None = None
        self._counts = {
            "documents": 0,
            "kept": 0,
            "exact_duplicate": 0,
            "near_duplicate": 0,
            "lsh_candidates": 0,
            "rejected_by_verify": 0,
        }

    def add(self, rec: DedupRecord) -> tuple[str | None, str | None]:
        """``(None, None)`` when ``rec`` is kept, else ``(reason, kept_key)``."""
        order = record_order(rec)
        if self._last is not None and order <= self._last:
            raise ValueError(
                f"dedup: record {rec.key!r} arrived out of (priority, key) order or twice; "
                "sort the records with record_order (deduplicate() does)"
            )
        if rec.key in self._row or rec.key in self._dropped:
            raise ValueError(f"dedup: document {rec.key!r} was added twice; document ids must be unique")
        self._last = order
        self._counts["documents"] += 1
        if self.cfg.exact:
            first = self._exact.setdefault(rec.exact, rec.key)
            if first != rec.key:
                if first in self._dropped:  # an exact copy of a near duplicate: same verdict
                    kept, jac = self._dropped[first]
                    return self._drop(rec, "near_duplicate", kept, jac)
                return self._drop(rec, "exact_duplicate", first, 1.0)
        row = -1
        if self.cfg.near and rec.sig is not None:
            sig = np.asarray(rec.sig, dtype=np.uint32)
            if sig.shape != (self.cfg.num_perm,):
                raise ValueError(
                    f"dedup: signature of {rec.key!r} has shape {sig.shape}, expected ({self.cfg.num_perm},)"
                )
            mh = MinHash(seed=self.cfg.seed, hashvalues=sig, permutations=self._perms, scheme=SCHEME)
            best = self._best_match(sig, self._lsh.query(mh))
            if best is not None:
                return self._drop(rec, "near_duplicate", best[1], best[0])
            row = self._nsig
            self._nsig += 1
            if row == len(self._sigs):
                self._sigs = np.concatenate([self._sigs, np.empty_like(self._sigs)])
            self._sigs[row] = sig
            self._lsh.insert(rec.key, mh, check_duplication=False)
        self._row[rec.key] = row
        self._meta[rec.key] = rec.meta
        self._counts["kept"] += 1
        return None, None

    def _best_match(self, sig: np.ndarray, candidates: list[str]) -> tuple[float, str] | None:
        """The kept candidate most similar to ``sig`` (ties: the earliest kept)."""
        self._counts["lsh_candidates"] += len(candidates)
        if not candidates:
            return None
        rows = np.array([self._row[c] for c in candidates])
        jac = np.count_nonzero(self._sigs[rows] == sig, axis=1) / self.cfg.num_perm  # MinHash.jaccard
        best = None
        for j, row, key in zip(jac.tolist(), rows.tolist(), candidates):
            if self.cfg.verify and j < self.cfg.threshold:
                self._counts["rejected_by_verify"] += 1
                continue
            if best is None or (j, -row) > (best[0], -best[1]):
                best = (j, row, key)
        return None if best is None else (best[0], best[2])

    def _drop(self, rec: DedupRecord, reason: str, kept: str, jaccard: float) -> tuple[str, str]:
        self._counts[reason] += 1
        self._dropped[rec.key] = (kept, jaccard)
        self._members.setdefault(kept, []).append(
            {"key": rec.key, "reason": reason, "jaccard": round(jaccard, 4), "meta": rec.meta}
        )
        return reason, kept

    def clusters(self) -> list[dict]:
        """Duplicate clusters, largest first (ties: order of the kept document):
        ``{"kept", "meta", "size", "members": [{"key", "reason", "jaccard", "meta"}]}``,
        ``jaccard`` being the estimated similarity to the kept document (1.0 for exact)."""
        order = {key: i for i, key in enumerate(self._row)}
        found = sorted(self._members.items(), key=lambda kv: (-len(kv[1]), order[kv[0]]))
        return [{"kept": k, "meta": self._meta[k], "size": 1 + len(m), "members": m} for k, m in found]

    def stats(self) -> dict:
        """Counts of the pass and the banding it used (for the manifest)."""
        return {
            **self._counts,
            "clusters": len(self._members),
            "num_perm": self.cfg.num_perm,
            "bands": self.cfg.bands,
            "rows": self.cfg.rows,
            "threshold": self.cfg.threshold,
            "s_curve_threshold": round(self.cfg.s_curve, 4),
            "signature_bytes": int(self._counts["kept"] * self.cfg.num_perm * 4) if self.cfg.near else 0,
        }


def deduplicate(records: Iterable[DedupRecord], cfg: DedupConfig) -> dict[str, tuple[str, str]]:
    """Run the pass over ``records`` in ``(priority, key)`` order:
    ``{dropped_key: (reason, kept_key)}``. Independent of the input order."""
    dedup = Deduplicator(cfg)
    dropped: dict[str, tuple[str, str]] = {}
    for rec in sorted(records, key=record_order):
        reason, kept = dedup.add(rec)
        if reason is not None:
            dropped[rec.key] = (reason, kept)  # type: ignore[assignment]
    return dropped
