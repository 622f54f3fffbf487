"""The sharded duplicate engine of the clean stage (``dedup.engine: sharded``).

The memory engine (:class:`corpus.dedup.Deduplicator`) holds every kept
document's signature and LSH tables in one process: about 6.5 KB a kept
document. This engine keeps no index in memory at all. It follows the
bucket-sort design of large web-corpus pipelines (datatrove's MinHash steps,
as used for FineWeb), in four steps over the dedup records that phase 1 of the
clean stage already wrote (``dedup{i}.json`` and ``dedup{i}.npz`` per part)::

    1 sign     per part     signature → band hashes; one row file per (group, part)
    2 bucket   per group    all parts' rows of a group of bands, sorted (external sort
                            past max_rows_in_memory) → bucket file + candidate pairs
    3 verify   per part     candidate pairs whose older document is in this part:
                            estimated Jaccard from the two signatures → edges
    4 cluster  once         union-find over the edges; the oldest of each
                            component is kept

A *row* is ``(hi, lo, part, pos)``, 24 bytes: for a band, ``hi`` is the 64-bit
hash of the band's ``rows`` signature values and ``lo`` the band's number; for
the exact group, ``(hi, lo)`` is the 128-bit :func:`~corpus.dedup.exact_key`;
for the id group, a 128-bit hash of the document id. Documents that share
``(hi, lo)`` share a bucket. Rows are sorted by ``(hi, lo, part, pos)``, so a
bucket is a run of adjacent rows in record-key order; each row is paired with
the up to ``bucket_window`` rows before it in its bucket (1 for the exact and
id groups, whose buckets are equivalence classes). Priority is not in the row:
who is kept is decided in step 4 from the exact ``(priority, key)`` of the
few documents that are in a pair, so rows stay fixed-width integers.

The verify step loads signatures part by part: the pairs of part ``p`` (the
part of the pair's older record key) are grouped by the other part, so a task
holds at most two parts' signatures (``part_docs × num_perm × 4`` bytes each,
1 MB for 2,000 × 128) plus its pairs.

Memory bounds, per task: sign, one part's records; bucket,
``max_rows_in_memory × 24`` bytes for sorting (about 3× that at the peak of a
sort), plus the group's unique candidate pairs (17 bytes each); verify, two
parts' signatures plus the part's pairs; cluster, the confirmed edges, the
documents in them (priority, meta) and the signatures of the near duplicates
and the documents they are kept for (to report the similarity to the kept one).
Nothing is proportional to the documents that have no duplicate.

Every task writes its files and then a small JSON marker; a rerun skips the
tasks whose marker and files exist (deleting a bucket file reruns that group
only). All outputs are sorted, so the files and the result are the same
whichever runner ran the tasks.

The result differs from the memory engine in one way: the memory engine
compares a document only with the documents it KEPT, so a chain A ≈ B ≈ C with
A ≉ C keeps A and C (B was dropped before C came); connected components drop
B and C, both as duplicates of A. Without chains both give the same drops.

Example::

    dropped, clusters, stats = find_duplicates_sharded(work, [0, 1, 2], DedupConfig(engine="sharded"), run)
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from corpus.dedup import DedupConfig
from infra import storage

__all__ = ["ROW", "EDGE", "band_hashes", "groups", "find_duplicates_sharded",
           "sign_part", "bucket_group", "verify_part", "merge_sorted_runs"]

ROW = np.dtype([("hi", "<u8"), ("lo", "<u8"), ("part", "<u4"), ("pos", "<u4")])  # 24 bytes
PAIR = np.dtype([("a_part", "<u4"), ("a_pos", "<u4"), ("b_part", "<u4"), ("b_pos", "<u4"), ("kind", "u1")])
EDGE = np.dtype(PAIR.descr + [("same", "<u2")])  # same: signature slots equal (Jaccard = same / num_perm)
NEAR, EXACT, ID = 0, 1, 2  # the kind of a pair: shares a band; the same exact key; the same document id
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_P = np.uint64(0x100000001B3)

#: ``run(fn, items, names, desc)`` → ``[fn(item) for item in items]``, run wherever the clean stage
#: runs its parts (:data:`corpus.clean.MapParts` with a progress bar).
RunTasks = Callable[[Callable[[Any], Any], list, list[str], str], list]


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


def _hex128(hexes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    hi = np.array([int(x[:16], 16) for x in hexes], dtype=np.uint64)
    lo = np.array([int(x[16:32], 16) for x in hexes], dtype=np.uint64)
    return hi, lo


def _id_hex(doc_id: str) -> str:
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


# --------------------------------------------------------------------------- paths


def _dir(work: str) -> str:
    return storage.join(work, "dedup")


def _rows_uri(work: str, label: str, part: int) -> str:
    return storage.join(_dir(work), "rows", label, f"{part:05d}.npy")


def _bucket_uri(work: str, label: str) -> str:
    return storage.join(_dir(work), "buckets", f"{label}.rows")


def _pairs_uri(work: str, label: str, part: int) -> str:
    return storage.join(_dir(work), "pairs", label, f"{part:05d}.npy")


def _edges_uri(work: str, part: int) -> str:
    return storage.join(_dir(work), "edges", f"{part:05d}.npy")


def _marker(work: str, name: str) -> str:
    return storage.join(_dir(work), "done", f"{name}.json")


def _save(uri: str, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    storage.write_bytes(uri, buf.getvalue())


def _load(uri: str) -> np.ndarray:
    return np.load(io.BytesIO(storage.read_bytes(uri)), allow_pickle=False)


def _meta(work: str, part: int) -> dict:
    return json.loads(storage.read_text(storage.join(work, f"dedup{part:05d}.json")))


def _sigs(work: str, part: int) -> np.ndarray:
    with np.load(io.BytesIO(storage.read_bytes(storage.join(work, f"dedup{part:05d}.npz")))) as npz:
        return npz["sigs"]


# --------------------------------------------------------------------------- step 1: sign


def sign_part(args: tuple) -> dict:
    """Step 1 for one part: its rows for every group, then its marker."""
    work, part, cfg_json = args
    cfg = DedupConfig.model_validate_json(cfg_json)
    meta = _meta(work, part)
    n = len(meta["keys"])
    pos = np.arange(n, dtype=np.uint32)
    for g in groups(cfg):
        if g["kind"] == NEAR:
            first, end = g["bands"]
            h = band_hashes(_sigs(work, part), cfg.bands, cfg.rows)[:, first:end]  # (n, end - first)
            rows = np.empty((n, end - first), ROW)
            rows["hi"] = h
            rows["lo"] = np.arange(first, end, dtype=np.uint64)
            rows["part"] = part
            rows["pos"] = pos[:, None]
            rows = rows.reshape(-1)
        else:
            hexes = meta["exacts"] if g["kind"] == EXACT else [_id_hex(m["id"]) for m in meta["metas"]]
            rows = np.empty(n, ROW)
            rows["hi"], rows["lo"] = _hex128(hexes)
            rows["part"], rows["pos"] = part, pos
        _save(_rows_uri(work, g["label"], part), rows)
    record = {"part": part, "documents": n}
    storage.write_text(_marker(work, f"sign{part:05d}"), json.dumps(record))
    return record


# --------------------------------------------------------------------------- step 2: bucket


def _sort(rows: np.ndarray) -> np.ndarray:
    return rows[np.lexsort((rows["pos"], rows["part"], rows["lo"], rows["hi"]))]


def _upto(rows: np.ndarray, bound: np.void) -> int:
    """How many leading rows of the sorted ``rows`` are ≤ ``bound`` in ``(hi, lo, part, pos)`` order."""
    hi, lo, part, pos = (bound[f] for f in ("hi", "lo", "part", "pos"))
    le = (rows["hi"] < hi) | ((rows["hi"] == hi) & ((rows["lo"] < lo) | ((rows["lo"] == lo) & (
        (rows["part"] < part) | ((rows["part"] == part) & (rows["pos"] <= pos))))))
    return int(np.count_nonzero(le))


def merge_sorted_runs(runs: list[np.ndarray], max_rows: int) -> Iterator[np.ndarray]:
    """Sorted chunks of the union of the sorted ``runs`` (e.g. memory-mapped files), holding about
    ``max_rows`` rows at a time: a block of each run; everything up to the smallest block end
    that still has rows behind it is final, so it is sorted and given out."""
    block = max(1, max_rows // (2 * len(runs)))
    at = [0] * len(runs)
    while True:
        heads = [(i, np.asarray(r[at[i]: at[i] + block])) for i, r in enumerate(runs) if at[i] < len(r)]
        if not heads:
            return
        open_ends = [h[-1] for i, h in heads if at[i] + len(h) < len(runs[i])]
        bound = min(open_ends, key=lambda v: (int(v["hi"]), int(v["lo"]), int(v["part"]), int(v["pos"]))) \
            if open_ends else None
        taken = []
        for i, h in heads:
            k = len(h) if bound is None else _upto(h, bound)
            taken.append(h[:k])
            at[i] += k
        yield _sort(np.concatenate(taken))


def _sorted_chunks(work: str, label: str, parts: list[int], max_rows: int, tmp: str,
                   stats: dict) -> Iterator[np.ndarray]:
    """The group's rows from every part in sorted chunks: in memory when they fit in ``max_rows``,
    else sorted runs of ``max_rows`` rows spilled to local ``tmp`` and merged (an external sort)."""
    buf: list[np.ndarray] = []
    held = 0
    runs: list[str] = []

    def spill() -> None:
        nonlocal buf, held
        path = os.path.join(tmp, f"run{len(runs):05d}.npy")
        np.save(path, _sort(np.concatenate(buf)))
        runs.append(path)
        buf, held = [], 0

    for part in parts:
        rows = _load(_rows_uri(work, label, part))
        for start in range(0, len(rows), max_rows):
            piece = rows[start: start + max_rows]
            if held + len(piece) > max_rows and buf:
                spill()
            buf.append(piece)
            held += len(piece)
    stats["runs"] = len(runs) + (1 if runs and buf else 0)
    if not runs:
        if buf:
            yield _sort(np.concatenate(buf))
        return
    if buf:
        spill()
    yield from merge_sorted_runs([np.load(p, mmap_mode="r") for p in runs], max_rows)


def _pairs(arr: np.ndarray, start: int, window: int) -> np.ndarray:
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


def bucket_group(args: tuple) -> dict:
    """Step 2 for one group: sort its rows from all parts into its bucket file, and write its
    candidate pairs partitioned by the part of their older record; then its marker."""
    work, group, parts, cfg_json = args
    cfg = DedupConfig.model_validate_json(cfg_json)
    label, kind = group["label"], group["kind"]
    window = cfg.bucket_window if kind == NEAR else 1  # exact and id buckets are equivalence classes
    stats: dict = {}
    found: list[np.ndarray] = []
    carry = np.empty(0, ROW)
    total = 0
    with tempfile.TemporaryDirectory(prefix=f"dedup-{label}-") as tmp, \
            storage.open(_bucket_uri(work, label), "wb") as out:
        for chunk in _sorted_chunks(work, label, parts, cfg.max_rows_in_memory, tmp, stats):
            out.write(chunk.tobytes())
            total += len(chunk)
            arr = np.concatenate([carry, chunk])
            found.append(_pairs(arr, len(carry), window))
            carry = arr[-window:]
    pairs = np.unique(np.concatenate(found)) if found else np.empty(0, PAIR)  # one pair found in several bands
    pairs["kind"] = kind
    counts = {}
    for part in np.unique(pairs["a_part"]).tolist():
        mine = pairs[pairs["a_part"] == part]
        _save(_pairs_uri(work, label, part), mine)
        counts[str(part)] = len(mine)
    record = {"label": label, "rows": total, "runs": stats.get("runs", 0), "pairs": counts}
    storage.write_text(_marker(work, label), json.dumps(record))
    return record


# --------------------------------------------------------------------------- step 3: verify


def verify_part(args: tuple) -> dict:
    """Step 3 for one part: the equal signature slots of each of its pairs; near pairs under the
    threshold (when ``verify`` is on) are rejected. Edges file, then marker."""
    work, part, labels, cfg_json = args
    cfg = DedupConfig.model_validate_json(cfg_json)
    pairs = [_load(_pairs_uri(work, label, part)) for label in labels]
    pairs = np.unique(np.concatenate(pairs)) if pairs else np.empty(0, PAIR)
    edges = np.empty(len(pairs), EDGE)
    for name in PAIR.names:
        edges[name] = pairs[name]
    edges["same"] = 0
    if cfg.near and len(pairs):
        mine = _sigs(work, part)
        for other in np.unique(pairs["b_part"]).tolist():  # one other part's signatures at a time
            sel = pairs["b_part"] == other
            theirs = mine if other == part else _sigs(work, other)
            edges["same"][sel] = np.count_nonzero(mine[pairs["a_pos"][sel]] == theirs[pairs["b_pos"][sel]], axis=1)
    near = edges["kind"] == NEAR
    keep = ~near | (edges["same"] / cfg.num_perm >= cfg.threshold) if cfg.verify else np.ones(len(edges), bool)
    _save(_edges_uri(work, part), edges[keep])
    record = {"part": part, "lsh_candidates": int(near.sum()), "rejected_by_verify": int((~keep).sum()),
              "edges": int(keep.sum())}
    storage.write_text(_marker(work, f"edges{part:05d}"), json.dumps(record))
    return record


# --------------------------------------------------------------------------- step 4: cluster


class _UnionFind:
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

    def components(self, members: list[int]) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for m in members:
            out.setdefault(self.find(m), []).append(m)
        return out


def _cluster(work: str, parts: list[int], cfg: DedupConfig, verify_stats: list[dict],
             documents: int) -> tuple[dict, list[dict], dict]:
    edges = [_load(_edges_uri(work, p)) for p in parts]
    edges = np.concatenate(edges) if edges else np.empty(0, EDGE)
    a = (edges["a_part"].astype(np.int64) << 32) | edges["a_pos"]  # a document ref: part << 32 | pos
    b = (edges["b_part"].astype(np.int64) << 32) | edges["b_pos"]
    nodes = np.unique(np.concatenate([a, b]))  # only documents that are in some edge
    ia, ib = np.searchsorted(nodes, a).tolist(), np.searchsorted(nodes, b).tolist()
    kinds = edges["kind"].tolist()
    # what step 4 needs of those documents, read one part's records at a time
    info: list[dict] = [None] * len(nodes)  # type: ignore[list-item]
    node_parts = (nodes >> 32).astype(np.int64)
    for part in np.unique(node_parts).tolist():
        meta = _meta(work, part)
        lo, hi = np.searchsorted(node_parts, [part, part + 1])
        for n in range(lo, hi):
            pos = int(nodes[n] & 0xFFFFFFFF)
            info[n] = {"key": meta["keys"][pos], "order": (tuple(meta["prios"][pos]), meta["keys"][pos]),
                       "meta": meta["metas"][pos]}

    def oldest(members: list[int]) -> list[int]:
        return sorted(members, key=lambda m: info[m]["order"])

    dropped: dict[str, tuple[str, str]] = {}
    # the same document id: the oldest fetch stays, the others never take part in dedup
    ids = _UnionFind(len(nodes))
    for x, y, k in zip(ia, ib, kinds):
        if k == ID:
            ids.union(x, y)
    gone = set()
    for members in ids.components(range(len(nodes))).values():
        if len(members) > 1:
            first, *rest = oldest(members)
            for m in rest:
                dropped[info[m]["key"]] = ("duplicate_id", info[first]["key"])
                gone.add(m)
    exact = _UnionFind(len(nodes))  # exact copies, the id duplicates among them too (equality is transitive)
    for x, y, k in zip(ia, ib, kinds):
        if k == EXACT:
            exact.union(x, y)
    live = [n for n in range(len(nodes)) if n not in gone]
    uf = _UnionFind(len(nodes))
    for members in exact.components(live).values():
        for m in members[1:]:
            uf.union(members[0], m)
    for x, y, k in zip(ia, ib, kinds):
        if k == NEAR and x not in gone and y not in gone:
            uf.union(x, y)
    found = []
    for members in uf.components(live).values():
        if len(members) > 1:
            first, *rest = oldest(members)
            found.append((first, rest))
    # the estimated Jaccard of each near duplicate to its kept document (as the memory engine reports)
    need = sorted({m for first, rest in found for m in [first, *rest]
                   if exact.find(m) != exact.find(first) or m == first})
    sig: dict[int, np.ndarray] = {}
    if cfg.near and need:
        need_parts = (nodes[need] >> 32).tolist()
        for part in sorted(set(need_parts)):
            sigs = _sigs(work, part)
            for m, p in zip(need, need_parts):
                if p == part:
                    sig[m] = sigs[int(nodes[m] & 0xFFFFFFFF)]
    counts = {"exact_duplicate": 0, "near_duplicate": 0}
    clusters = []
    for first, rest in sorted(found, key=lambda fr: (-len(fr[1]), info[fr[0]]["order"])):
        members = []
        for m in rest:
            if exact.find(m) == exact.find(first):
                reason, jac = "exact_duplicate", 1.0
            else:
                reason = "near_duplicate"
                jac = float(np.count_nonzero(sig[m] == sig[first])) / cfg.num_perm if cfg.near else 1.0
            counts[reason] += 1
            dropped[info[m]["key"]] = (reason, info[first]["key"])
            members.append({"key": info[m]["key"], "reason": reason, "jaccard": round(jac, 4),
                            "meta": info[m]["meta"]})
        clusters.append({"kept": info[first]["key"], "meta": info[first]["meta"], "size": 1 + len(rest),
                         "members": members})
    deduped = documents - len(gone)
    stats = {
        "engine": "sharded",
        "documents": deduped,
        "kept": deduped - counts["exact_duplicate"] - counts["near_duplicate"],
        **counts,
        "lsh_candidates": sum(v["lsh_candidates"] for v in verify_stats),
        "rejected_by_verify": sum(v["rejected_by_verify"] for v in verify_stats),
        "clusters": len(clusters),
        "num_perm": cfg.num_perm, "bands": cfg.bands, "rows": cfg.rows, "threshold": cfg.threshold,
        "s_curve_threshold": round(cfg.s_curve, 4),
        "bucket_window": cfg.bucket_window,
    }
    return dropped, clusters, stats


# --------------------------------------------------------------------------- the engine


def find_duplicates_sharded(work: str, parts: list[int], cfg: DedupConfig, run: RunTasks,
                            documents: int) -> tuple[dict, list[dict], dict]:
    """Steps 1–4 over the dedup records of ``parts`` in ``work`` (``documents`` records in all);
    the same kind of result as
    :func:`corpus.clean.find_duplicates` (``{dropped key: (reason, kept key)}``, clusters, stats).

    Each step runs only the tasks whose marker or files are missing, checked from the last
    step back: finished work is reused, whatever deleted the rest.
    """
    cfg_json = cfg.model_dump_json()
    plan = groups(cfg)
    labels = [g["label"] for g in plan]

    def has_marker(name: str) -> dict | None:
        uri = _marker(work, name)
        return json.loads(storage.read_text(uri)) if storage.exists(uri) else None

    verify_todo = [p for p in parts if not (storage.exists(_edges_uri(work, p)) and has_marker(f"edges{p:05d}"))]
    if verify_todo:
        bucket_done = {}
        for label in labels:
            rec = has_marker(label)
            if rec is not None and storage.exists(_bucket_uri(work, label)) and \
                    all(storage.exists(_pairs_uri(work, label, int(p))) for p in rec["pairs"]):
                bucket_done[label] = rec
        bucket_todo = [g for g in plan if g["label"] not in bucket_done]
        if bucket_todo:
            sign_todo = [p for p in parts if not (has_marker(f"sign{p:05d}") and all(
                storage.exists(_rows_uri(work, label, p)) for label in labels))]
            run(sign_part, [(work, p, cfg_json) for p in sign_todo], [f"dedup-sign-{p:05d}" for p in sign_todo],
                "clean: dedup sign")
            for rec in run(bucket_group, [(work, g, parts, cfg_json) for g in bucket_todo],
                           [f"dedup-bucket-{g['label']}" for g in bucket_todo], "clean: dedup bucket"):
                bucket_done[rec["label"]] = rec
        run(verify_part, [(work, p, [lb for lb in labels if str(p) in bucket_done[lb]["pairs"]], cfg_json)
                          for p in verify_todo],
            [f"dedup-verify-{p:05d}" for p in verify_todo], "clean: dedup verify")
    verify_stats = [has_marker(f"edges{p:05d}") for p in parts]
    return _cluster(work, parts, cfg, verify_stats, documents)  # type: ignore[arg-type]
