"""Bucket rows of the sharded dedup engine: their layout, hashes, sorting, merging and pairing.

The building blocks shared by the engine's steps (:mod:`gpt2ja.corpus.lsh_index`) and
the persistent index that refreshes dedup against (:mod:`gpt2ja.corpus.dedup_index`).

A *row* is ``(hi, lo, part, pos)``, 24 bytes: for a band, ``hi`` is the 64-bit
hash of the band's ``rows`` signature values and ``lo`` the band's number; for
the exact group, ``(hi, lo)`` is the 128-bit :func:`~gpt2ja.corpus.dedup.exact_key`;
for the id group, a 128-bit hash of the document id. Documents that share
``(hi, lo)`` share a bucket. Rows are sorted by ``(hi, lo, part, pos)``, so a
bucket is a run of adjacent rows in record-key order, and any number of sorted
files of rows (*runs*) merge into one sorted stream (:func:`merge_sorted_runs`)
holding a bounded number of rows at a time. Run files are read a block at a
time (:class:`RunFile`), never memory-mapped: the pages of a map that were read
stay in the process's resident memory until it is unmapped, so merging a
group's runs through maps would make a task's peak grow with the corpus. The
candidate pairs of a group go through a :class:`PairSink`, which spills them
to local disk past its budget, for the same reason.

Example::

    rows = np.zeros(3, ROW); rows["hi"] = [7, 3, 7]; rows["pos"] = [0, 1, 2]
    pairs_in_buckets(sort_rows(rows), 0, window=1)   # one pair: (pos 0, pos 2), both in bucket 7
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable, Iterator

import numpy as np

from gpt2ja.corpus.dedup import DedupConfig
from gpt2ja.infra import storage

__all__ = [
    "ROW",
    "PAIR",
    "EDGE",
    "NEAR",
    "EXACT",
    "ID",
    "band_hashes",
    "hex128",
    "id_hex",
    "groups",
    "run_names",
    "save_array",
    "load_array",
    "sort_rows",
    "merge_sorted_runs",
    "sort_externally",
    "pairs_in_buckets",
    "open_runs",
    "RunFile",
    "PairSink",
    "UnionFind",
]

ROW = np.dtype([("hi", "<u8"), ("lo", "<u8"), ("part", "<u4"), ("pos", "<u4")])  # 24 bytes
PAIR = np.dtype([("a_part", "<u4"), ("a_pos", "<u4"), ("b_part", "<u4"), ("b_pos", "<u4"), ("kind", "u1")])
EDGE = np.dtype(PAIR.descr + [("same", "<u2")])  # same: signature slots equal (Jaccard = same / num_perm)
NEAR, EXACT, ID = 0, 1, 2  # the kind of a pair: shares a band; the same exact key; the same document id
_P = np.uint64(0x100000001B3)


# --------------------------------------------------------------------------- hashes and groups


def _fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer (wraps mod 2^64)."""
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return h


def band_hashes(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64: a 64-bit hash of each band's ``rows`` signature values.

    Two documents share a band exactly when its values are equal, up to 64-bit
    collisions (about n² / 2^65 per band; the verify step rejects them).
    """
    n = len(sigs)
    cols = sigs[:, : bands * rows].astype(np.uint64).reshape(n, bands, rows)  # (n, b, r)
    h = np.broadcast_to(np.arange(1, bands + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15), (n, bands)).copy()
    for k in range(rows):
        h = h * _P + cols[:, :, k]
    return _fmix64(h)


def hex128(hexes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """128-bit hex strings as their (hi, lo) uint64 halves."""
    hi = np.array([int(x[:16], 16) for x in hexes], dtype=np.uint64)
    lo = np.array([int(x[16:32], 16) for x in hexes], dtype=np.uint64)
    return hi, lo


def id_hex(doc_id: str) -> str:
    """The 128-bit hash (hex) of a document id: the id group's bucket key."""
    return hashlib.blake2b(doc_id.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def groups(cfg: DedupConfig) -> list[dict]:
    """The bucket tasks of ``cfg``: ``{"label", "kind", "bands": [first, end)}``, near groups first."""
    out = []
    if cfg.near:
        for first in range(0, cfg.bands, cfg.bands_per_task):  # type: ignore[arg-type]
            end = min(first + cfg.bands_per_task, cfg.bands)  # type: ignore[type-var]
            out.append({"label": f"bands{first:03d}-{end - 1:03d}", "kind": NEAR, "bands": [first, end]})
    if cfg.exact:
        out.append({"label": "exact", "kind": EXACT, "bands": [0, 0]})
    out.append({"label": "ids", "kind": ID, "bands": [0, 0]})
    return out


def run_names(group: dict) -> list[str]:
    """The persistent index's sorted row files that hold ``group``'s buckets: one per band
    (``band000``…), so an index stays usable whatever ``bands_per_task`` groups them; ``exact``; ``ids``."""
    if group["kind"] == NEAR:
        return [f"band{b:03d}" for b in range(*group["bands"])]
    return [group["label"]]


# --------------------------------------------------------------------------- files


def save_array(uri: str, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    storage.write_bytes(uri, buf.getvalue())


def load_array(uri: str) -> np.ndarray:
    return np.load(io.BytesIO(storage.read_bytes(uri)), allow_pickle=False)


class RunFile:
    """A file of records of ``dtype`` back to back (a sorted run), sliced like an array:
    ``run[a:b]`` reads just those records from disk (``len(run)`` is their number).

    Unlike ``np.memmap``, what was read does not stay in the process's resident
    memory, so a merge of many runs holds only the blocks it is merging.
    """

    def __init__(self, path: str, dtype: np.dtype = ROW) -> None:
        self.path, self.dtype = path, np.dtype(dtype)
        self.n = os.path.getsize(path) // self.dtype.itemsize

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, s: slice) -> np.ndarray:
        start, stop, step = s.indices(self.n)
        assert step == 1, "RunFile: contiguous slices only"
        with open(self.path, "rb") as f:
            return np.fromfile(f, self.dtype, max(0, stop - start), offset=start * self.dtype.itemsize)


def open_runs(uris: list[str], tmp: str) -> list[RunFile]:
    """Raw sorted row files (``.rows``: rows back to back, no header), read by blocks (:class:`RunFile`).

    A local file is read where it lies; a ``gs://`` one is first streamed to the
    local ``tmp`` directory. Empty files are left out.
    """
    out = []
    for i, uri in enumerate(uris):
        path = storage.local_path(uri)
        if path is None:
            path = os.path.join(tmp, f"prior{i:05d}.rows")
            with storage.open(uri, "rb") as src, open(path, "wb") as dst:
                for block in iter(lambda: src.read(1 << 22), b""):
                    dst.write(block)
        if os.path.getsize(path):
            out.append(RunFile(path))
    return out


# --------------------------------------------------------------------------- sorting and merging


def sort_rows(rows: np.ndarray) -> np.ndarray:
    return rows[np.lexsort((rows["pos"], rows["part"], rows["lo"], rows["hi"]))]


def _upto(rows: np.ndarray, bound: np.void) -> int:
    """How many leading rows of the sorted ``rows`` are ≤ ``bound`` in ``(hi, lo, part, pos)`` order."""
    hi, lo, part, pos = (bound[f] for f in ("hi", "lo", "part", "pos"))
    le = (rows["hi"] < hi) | (
        (rows["hi"] == hi)
        & (
            (rows["lo"] < lo)
            | ((rows["lo"] == lo) & ((rows["part"] < part) | ((rows["part"] == part) & (rows["pos"] <= pos))))
        )
    )
    return int(np.count_nonzero(le))


def merge_sorted_runs(runs: list, max_rows: int) -> Iterator[np.ndarray]:
    """Sorted chunks of the union of the sorted ``runs`` (arrays or :class:`RunFile`), holding about
    ``max_rows`` rows at a time: a block of each run (``max_rows / 2`` rows in all); everything up
    to the smallest block end that still has rows behind it is final, so it is sorted and given out."""
    block = max(1, max_rows // (2 * max(1, len(runs))))
    at = [0] * len(runs)
    while True:
        heads = [(i, np.asarray(r[at[i] : at[i] + block])) for i, r in enumerate(runs) if at[i] < len(r)]
        if not heads:
            return
        open_ends = [h[-1] for i, h in heads if at[i] + len(h) < len(runs[i])]
        bound = (
            min(open_ends, key=lambda v: (int(v["hi"]), int(v["lo"]), int(v["part"]), int(v["pos"])))
            if open_ends
            else None
        )
        taken = []
        for i, h in heads:
            k = len(h) if bound is None else _upto(h, bound)
            taken.append(h[:k])
            at[i] += k
        yield sort_rows(np.concatenate(taken))


def sort_externally(
    arrays: Iterable[np.ndarray], max_rows: int, tmp: str, stats: dict, prior: list[RunFile]
) -> Iterator[np.ndarray]:
    """The rows of ``arrays`` (e.g. a group's row file of each part) in sorted chunks: in memory when
    they fit in ``max_rows``, else sorted runs of ``max_rows`` rows spilled to local ``tmp`` and
    merged (an external sort); the ``prior`` index's sorted runs are merged in too. The buffer is
    let go before it is sorted; a sort then holds about 3 × ``max_rows`` rows (the rows, the sort
    keys and order, the sorted copy), a merge about 1.5 ×. ``stats["runs"]``: the runs spilled."""
    buf: list[np.ndarray] = []
    held = 0
    runs: list[str] = []

    def take() -> np.ndarray:  # the buffer, sorted; the buffer itself let go first
        nonlocal held
        rows = np.concatenate(buf)
        buf.clear()
        held = 0
        return sort_rows(rows)

    def spill() -> None:
        path = os.path.join(tmp, f"run{len(runs):05d}.rows")
        take().tofile(path)
        runs.append(path)

    for rows in arrays:
        for start in range(0, len(rows), max_rows):
            piece = rows[start : start + max_rows]
            if held + len(piece) > max_rows and buf:
                spill()
            buf.append(piece)
            held += len(piece)
    if not runs and not prior:
        stats["runs"] = 0
        if buf:
            yield take()
        return
    if buf:  # the last run to disk too: the merge then holds only its blocks, whatever was left over
        spill()
    stats["runs"] = len(runs)
    yield from merge_sorted_runs([RunFile(p) for p in runs] + prior, max_rows)


def pairs_in_buckets(arr: np.ndarray, start: int, window: int) -> np.ndarray:
    """Pairs (earlier row, row) of the sorted ``arr`` in the same bucket, at most ``window`` apart,
    for the rows from ``start`` on (the rows before it were paired with an earlier chunk)."""
    out = []
    for d in range(1, window + 1):
        i = np.arange(max(start, d), len(arr))
        if not len(i):
            break
        a, b = arr[i - d], arr[i]
        same = (a["hi"] == b["hi"]) & (a["lo"] == b["lo"])
        if not same.any():
            continue
        p = np.empty(int(np.count_nonzero(same)), PAIR)
        p["a_part"], p["a_pos"] = a["part"][same], a["pos"][same]
        p["b_part"], p["b_pos"] = b["part"][same], b["pos"][same]
        p["kind"] = 0
        out.append(p)
    return np.concatenate(out) if out else np.empty(0, PAIR)


class PairSink:
    """A bucket group's candidate pairs: added as found, handed out unique and part by part
    (the part of their older record, ``a_part``), each part's sorted as ``np.unique`` sorts.

    At most about ``budget`` pairs (17 bytes each) are held: past it, the held pairs
    are made unique and written to local ``tmp`` as a sorted run. :meth:`by_part`
    then merges the runs a block of each at a time (``budget / 2`` pairs in all),
    handing out one part's pairs at a time: those are few whatever the corpus (the
    verify step holds them too), so nothing here grows with the corpus.

    Example::

        sink = PairSink(tmp, budget=1_000_000)
        sink.add(pairs_in_buckets(chunk, 0, 16))
        for part, pairs in sink.by_part(): ...
    """

    def __init__(self, tmp: str, budget: int) -> None:
        self.tmp, self.budget = tmp, max(2, budget)
        self.held: list[np.ndarray] = []
        self.count = 0
        self.runs: list[RunFile] = []

    def add(self, pairs: np.ndarray) -> None:
        if len(pairs):
            self.held.append(pairs)
            self.count += len(pairs)
        if self.count > self.budget:
            path = os.path.join(self.tmp, f"pairs{len(self.runs):05d}.bin")
            self._unique().tofile(path)
            self.runs.append(RunFile(path, PAIR))

    def _unique(self) -> np.ndarray:
        held, self.held, self.count = self.held, [], 0
        return np.unique(np.concatenate(held)) if held else np.empty(0, PAIR)  # one pair found in several bands

    def by_part(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(part, its unique pairs)`` in part order."""
        sources: list = self.runs + [self._unique()]  # sorted runs on disk, and the pairs still held
        block = max(1, self.budget // (2 * len(sources)))
        heads = [src[0:block] for src in sources]
        at = [len(h) for h in heads]
        while True:
            starts = [int(h["a_part"][0]) for h in heads if len(h)]
            if not starts:
                return
            part, pieces = min(starts), []
            for i, src in enumerate(sources):
                while len(heads[i]):
                    k = int(np.searchsorted(heads[i]["a_part"], part, side="right"))
                    pieces.append(heads[i][:k])
                    heads[i] = heads[i][k:]
                    if len(heads[i]) or at[i] >= len(src):
                        break
                    heads[i] = src[at[i] : at[i] + block]  # the block ended inside this part: read on
                    at[i] += len(heads[i])
            pairs = np.concatenate(pieces)
            yield part, pairs if len(sources) == 1 else np.unique(pairs)


# --------------------------------------------------------------------------- clustering


class UnionFind:
    """Union-find over 0..n-1 (path halving; the smaller root wins, so roots are deterministic)."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def components(self, members) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for m in members:
            out.setdefault(self.find(m), []).append(m)
        return out
