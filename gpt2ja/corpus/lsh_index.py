"""The sharded duplicate engine of the clean stage (``dedup.engine: sharded``).

The memory engine (:class:`gpt2ja.corpus.dedup.Deduplicator`) holds every kept
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

A *row* (:mod:`gpt2ja.corpus.lsh_rows`) is ``(hi, lo, part, pos)``, 24 bytes: a band's
hash and number, the exact key or the id's hash, and the record's part and
position. Rows are sorted by ``(hi, lo, part, pos)``, so a bucket is a run of
adjacent rows in record-key order; each row is paired with
the up to ``bucket_window`` rows before it in its bucket (1 for the exact and
id groups, whose buckets are equivalence classes). Priority is not in the row:
who is kept is decided in step 4 from the exact ``(priority, key)`` of the
few documents that are in a pair, so rows stay fixed-width integers.

The verify step loads signatures part by part: the pairs of part ``p`` (the
part of the pair's older record key) are grouped by the other part, so a task
holds at most two parts' signatures (``part_docs × num_perm × 4`` bytes each,
1 MB for 2,000 × 128) plus its pairs.

Memory bounds, per task, none of them growing with the corpus: sign, one part's
records; bucket, ``max_rows_in_memory × 24`` bytes for sorting (about 3× that at
the peak of a sort), up to ``max_rows_in_memory / 4`` candidate pairs (17 bytes
each; more are spilled to local disk, :class:`~gpt2ja.corpus.lsh_rows.PairSink`) and,
when merging, a block of each run: runs are read by blocks, never
memory-mapped (:class:`~gpt2ja.corpus.lsh_rows.RunFile`); verify, two parts'
signatures plus the part's pairs. A worker process runs many tasks of a step;
its peak is the largest task's. Measured (``benchmarks/dedup_bench.py``), a
worker's peak stays flat from 100,000 to 1,000,000 documents.

The cluster step (one process, the driver) is the exception, by design: it holds
the confirmed edges, the documents in them (record key, meta, rank, union-find
parents), then the signatures of the near duplicates and of the documents they
are kept for (to report the similarity to the kept one), and the result itself
(every dropped key and every cluster member's meta): about 1.3 KB per document
in a confirmed pair, measured. Nothing is proportional to the documents that
have no duplicate.

Every task writes its files and then a small JSON marker; a rerun skips the
tasks whose marker and files exist (deleting a bucket file reruns that group
only). All outputs are sorted, so the files and the result are the same
whichever runner ran the tasks.

The result differs from the memory engine in one way: the memory engine
compares a document only with the documents it KEPT, so a chain A ≈ B ≈ C with
A ≉ C keeps A and C (B was dropped before C came); connected components drop
B and C, both as duplicates of A. Without chains both give the same drops.

With a *prior* index (:mod:`gpt2ja.corpus.dedup_index`, ``dedup.index``), the parts
below ``prior["base"]`` are documents an earlier clean kept: their rows come
from the index's sorted row files (merged into step 2's sort, never re-signed),
their signatures and records from its ``records/``. Pairs are kept only when
their later document is new (two indexed documents were settled before), and
step 4 never drops an indexed document: it is older than any new one, so it is
the one a component keeps.

Example::

    dropped, clusters, stats = find_duplicates_sharded(work, [0, 1, 2], DedupConfig(engine="sharded"), run)
"""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np

from gpt2ja.corpus.dedup import DedupConfig
from gpt2ja.corpus.lsh_rows import (
    EDGE,
    EXACT,
    ID,
    NEAR,
    PAIR,
    ROW,
    PairSink,
    UnionFind,
    band_hashes,
    groups,
    hex128,
    id_hex,
    load_array,
    merge_sorted_runs,
    open_runs,
    pairs_in_buckets,
    run_names,
    save_array,
    sort_externally,
)
from gpt2ja.infra import storage

__all__ = [
    "ROW",
    "EDGE",
    "band_hashes",
    "groups",
    "find_duplicates_sharded",
    "bucket_uri",
    "no_prior",
    "sign_part",
    "bucket_group",
    "verify_part",
    "merge_sorted_runs",
]

#: ``run(fn, items, names, desc)`` → ``[fn(item) for item in items]``, run wherever the clean stage
#: runs its parts (:data:`gpt2ja.infra.parallel.MapParts` with a progress bar).
RunTasks = Callable[[Callable[[Any], Any], list, list[str], str], list]


def no_prior() -> dict:
    """A prior index with nothing in it (the first version of an index): every part is new."""
    return {"base": 0, "records": {}, "runs": {}}


# --------------------------------------------------------------------------- paths


def _dir(work: str) -> str:
    return storage.join(work, "dedup")


def _rows_uri(work: str, label: str, part: int) -> str:
    return storage.join(_dir(work), "rows", label, f"{part:05d}.npy")


def bucket_uri(work: str, label: str) -> str:
    """Step 2's sorted rows of one group (of this run's parts only, when there is a prior index)."""
    return storage.join(_dir(work), "buckets", f"{label}.rows")


def _pairs_uri(work: str, label: str, part: int) -> str:
    return storage.join(_dir(work), "pairs", label, f"{part:05d}.npy")


def _edges_uri(work: str, part: int) -> str:
    return storage.join(_dir(work), "edges", f"{part:05d}.npy")


def _marker(work: str, name: str) -> str:
    return storage.join(_dir(work), "done", f"{name}.json")


def _meta(where: str, part: int) -> dict:
    """The dedup records of ``part`` in ``where``: the clean's work folder, or an index version's records/."""
    return json.loads(storage.read_text(storage.join(where, f"dedup{part:05d}.json")))


def _sigs(where: str, part: int) -> np.ndarray:
    with np.load(io.BytesIO(storage.read_bytes(storage.join(where, f"dedup{part:05d}.npz")))) as npz:
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
            hexes = meta["exacts"] if g["kind"] == EXACT else [id_hex(m["id"]) for m in meta["metas"]]
            rows = np.empty(n, ROW)
            rows["hi"], rows["lo"] = hex128(hexes)
            rows["part"], rows["pos"] = part, pos
        save_array(_rows_uri(work, g["label"], part), rows)
    record = {"part": part, "documents": n}
    storage.write_text(_marker(work, f"sign{part:05d}"), json.dumps(record))
    return record


# --------------------------------------------------------------------------- step 2: bucket


#: rows paired at a time: the pairing's temporaries (about 64 bytes a row) stay small whatever the chunk
PAIR_STEP = 1 << 16


def bucket_group(args: tuple) -> dict:
    """Step 2 for one group: sort its rows from all parts (and the prior index's runs) into its
    bucket file, and write its candidate pairs partitioned by the part of their older record;
    then its marker. The bucket file holds this run's rows only (parts from ``base`` on), and
    only pairs whose later record is one of them are kept. Memory: the sort's (about 3 ×
    ``max_rows`` rows) and up to ``max_rows / 4`` pairs (:class:`~gpt2ja.corpus.lsh_rows.PairSink`)."""
    work, group, parts, cfg_json, prior_runs, base = args
    cfg = DedupConfig.model_validate_json(cfg_json)
    label, kind = group["label"], group["kind"]
    window = cfg.bucket_window if kind == NEAR else 1  # exact and id buckets are equivalence classes
    stats: dict = {}
    carry = np.empty(0, ROW)
    total = 0
    with (
        tempfile.TemporaryDirectory(prefix=f"dedup-{label}-") as tmp,
        storage.open(bucket_uri(work, label), "wb") as out,
    ):
        sink = PairSink(tmp, cfg.max_rows_in_memory // 4)
        prior = open_runs(prior_runs, tmp)
        rows = (load_array(_rows_uri(work, label, part)) for part in parts)
        for chunk in sort_externally(rows, cfg.max_rows_in_memory, tmp, stats, prior):
            for start in range(0, len(chunk), PAIR_STEP):
                piece = chunk[start : start + PAIR_STEP]
                mine = piece[piece["part"] >= base] if prior_runs else piece
                out.write(mine.tobytes())
                total += len(mine)
                arr = np.concatenate([carry, piece])
                pairs = pairs_in_buckets(arr, len(carry), window)
                sink.add(pairs[pairs["b_part"] >= base] if prior_runs else pairs)
                carry = arr[-window:].copy()
            chunk = piece = mine = arr = None  # let this chunk go before the next is made
        counts = {}
        for part, mine in sink.by_part():
            mine["kind"] = kind
            save_array(_pairs_uri(work, label, part), mine)
            counts[str(part)] = len(mine)
    record = {"label": label, "rows": total, "runs": stats.get("runs", 0), "pairs": counts}
    storage.write_text(_marker(work, label), json.dumps(record))
    return record


# --------------------------------------------------------------------------- step 3: verify


def verify_part(args: tuple) -> dict:
    """Step 3 for one part: the equal signature slots of each of its pairs; near pairs under the
    threshold (when ``verify`` is on) are rejected. Edges file, then marker. ``records`` is the
    folder of the part's signatures when the part is in the prior index (None: the work folder)."""
    work, part, labels, cfg_json, records = args
    cfg = DedupConfig.model_validate_json(cfg_json)
    pairs = [load_array(_pairs_uri(work, label, part)) for label in labels]
    pairs = np.unique(np.concatenate(pairs)) if pairs else np.empty(0, PAIR)
    edges = np.empty(len(pairs), EDGE)
    for name in PAIR.names:
        edges[name] = pairs[name]
    edges["same"] = 0
    if cfg.near and len(pairs):
        mine = _sigs(records or work, part)
        for other in np.unique(pairs["b_part"]).tolist():  # one other part's signatures at a time
            sel = pairs["b_part"] == other  # the later record: always a part of this run's
            theirs = mine if other == part else _sigs(work, other)
            edges["same"][sel] = np.count_nonzero(mine[pairs["a_pos"][sel]] == theirs[pairs["b_pos"][sel]], axis=1)
    near = edges["kind"] == NEAR
    keep = ~near | (edges["same"] / cfg.num_perm >= cfg.threshold) if cfg.verify else np.ones(len(edges), bool)
    save_array(_edges_uri(work, part), edges[keep])
    record = {
        "part": part,
        "lsh_candidates": int(near.sum()),
        "rejected_by_verify": int((~keep).sum()),
        "edges": int(keep.sum()),
    }
    storage.write_text(_marker(work, f"edges{part:05d}"), json.dumps(record))
    return record


# --------------------------------------------------------------------------- step 4: cluster


def _documents(nodes: np.ndarray, work: str, records: dict, base: int) -> tuple[list, list, list[int]]:
    """The record key, meta and rank (0 = oldest) of each document ``nodes`` names, read one part's
    records at a time. Rank orders by ``(indexed first, priority, record key)``: an indexed document
    is older than any new one, whatever its fetch time."""
    n = len(nodes)
    keys: list[str] = [""] * n
    metas: list[dict] = [{}] * n
    orders: list[tuple] = [()] * n
    node_parts = nodes >> 32
    for part in np.unique(node_parts).tolist():
        meta = _meta(records.get(str(part), work), part)
        lo, hi = np.searchsorted(node_parts, [part, part + 1])
        for i, pos in zip(range(lo, hi), (nodes[lo:hi] & 0xFFFFFFFF).tolist()):
            keys[i], metas[i] = meta["keys"][pos], meta["metas"][pos]
            orders[i] = (0 if part < base else 1, tuple(meta["prios"][pos]), keys[i])
    rank = [0] * n
    for r, i in enumerate(sorted(range(n), key=orders.__getitem__)):
        rank[i] = r
    return keys, metas, rank


def _jaccards(
    near: list[tuple[int, int]], nodes: np.ndarray, work: str, records: dict, num_perm: int
) -> dict[int, float]:
    """``{d: estimated Jaccard of d and k}`` for the near duplicates ``d`` kept for ``k`` (``near``:
    ``(d, k)``, indices into ``nodes``), as the memory engine reports it. Holds the signatures of those documents only,
    copied out of each part's array as it is read, and lets them go before the result is built."""
    need = np.array(sorted({x for pair in near for x in pair}), dtype=np.int64)
    need_parts = nodes[need] >> 32  # sorted, as nodes are
    sig = np.empty((0, num_perm), np.uint32)
    for part in np.unique(need_parts).tolist():
        sigs = _sigs(records.get(str(part), work), part)
        if not sig.size:
            sig = np.empty((len(need), sigs.shape[1]), sigs.dtype)
        lo, hi = np.searchsorted(need_parts, [part, part + 1])
        sig[lo:hi] = sigs[nodes[need[lo:hi]] & 0xFFFFFFFF]
    dup = np.searchsorted(need, [d for d, _ in near])  # rows of sig
    kept = np.searchsorted(need, [k for _, k in near])
    same = np.concatenate(
        [np.count_nonzero(sig[dup[i : i + 4096]] == sig[kept[i : i + 4096]], axis=1) for i in range(0, len(near), 4096)]
        or [np.empty(0, np.int64)]
    )  # (len(near),)
    return dict(zip((d for d, _ in near), (same / num_perm).tolist()))


def _cluster(
    work: str, parts: list[int], cfg: DedupConfig, verify_stats: list[dict], documents: int, prior: dict
) -> tuple[dict, list[dict], dict]:
    """Step 4, in the driver. It holds, for the documents in some edge only: the edges as arrays,
    each document's record key, meta, rank and three union-find parents (most of it the key and
    meta that the result returns anyway), then the signatures (``num_perm × 4`` bytes each) of
    the near duplicates and of the documents kept for them, let go before the result is built."""
    base, records = prior["base"], prior["records"]
    edges = [load_array(_edges_uri(work, p)) for p in parts]
    edges = np.concatenate(edges) if edges else np.empty(0, EDGE)
    a = (edges["a_part"].astype(np.int64) << 32) | edges["a_pos"]  # a document ref: part << 32 | pos
    b = (edges["b_part"].astype(np.int64) << 32) | edges["b_pos"]
    nodes = np.unique(np.concatenate([a, b]))  # only documents that are in some edge
    ia, ib, kinds = np.searchsorted(nodes, a), np.searchsorted(nodes, b), edges["kind"]
    del edges, a, b
    keys, metas, rank = _documents(nodes, work, records, base)
    old = ((nodes >> 32) < base).tolist()

    def oldest(members: list[int]) -> list[int]:
        return sorted(members, key=rank.__getitem__)

    def links(kind: int):
        return zip(ia[kinds == kind].tolist(), ib[kinds == kind].tolist())

    n = len(nodes)
    dropped: dict[str, tuple[str, str]] = {}
    # the same document id: the oldest fetch stays, the others never take part in dedup
    ids = UnionFind(n)
    for x, y in links(ID):
        ids.union(x, y)
    gone = set()
    for members in ids.components(range(n)).values():
        if len(members) > 1:
            first, *rest = oldest(members)
            for m in rest:
                if not old[m]:  # an indexed document was settled by the clean that indexed it
                    dropped[keys[m]] = ("duplicate_id", keys[first])
                    gone.add(m)
    del ids
    exact = UnionFind(n)  # exact copies, the id duplicates among them too (equality is transitive)
    for x, y in links(EXACT):
        exact.union(x, y)
    live = [m for m in range(n) if m not in gone]
    uf = UnionFind(n)
    for members in exact.components(live).values():
        for m in members[1:]:
            uf.union(members[0], m)
    for x, y in links(NEAR):
        if x not in gone and y not in gone:
            uf.union(x, y)
    found = []
    for members in uf.components(live).values():
        if len(members) > 1:
            first, *rest = oldest(members)
            rest = [m for m in rest if not old[m]]
            if rest:
                found.append((first, rest))
    del uf, live
    near = [(m, first) for first, rest in found for m in rest if exact.find(m) != exact.find(first)]
    jaccard = _jaccards(near, nodes, work, records, cfg.num_perm) if cfg.near else {}
    counts = {"exact_duplicate": 0, "near_duplicate": 0}
    clusters = []
    for first, rest in sorted(found, key=lambda fr: (-len(fr[1]), rank[fr[0]])):
        members = []
        for m in rest:
            if exact.find(m) == exact.find(first):
                reason, jac = "exact_duplicate", 1.0
            else:
                reason, jac = "near_duplicate", jaccard.get(m, 1.0)
            counts[reason] += 1
            dropped[keys[m]] = (reason, keys[first])
            members.append({"key": keys[m], "reason": reason, "jaccard": round(jac, 4), "meta": metas[m]})
        clusters.append({"kept": keys[first], "meta": metas[first], "size": 1 + len(rest), "members": members})
    deduped = documents - len(gone)
    stats = {
        "engine": "sharded",
        "documents": deduped,
        "kept": deduped - counts["exact_duplicate"] - counts["near_duplicate"],
        **counts,
        "lsh_candidates": sum(v["lsh_candidates"] for v in verify_stats),
        "rejected_by_verify": sum(v["rejected_by_verify"] for v in verify_stats),
        "clusters": len(clusters),
        "num_perm": cfg.num_perm,
        "bands": cfg.bands,
        "rows": cfg.rows,
        "threshold": cfg.threshold,
        "s_curve_threshold": round(cfg.s_curve, 4),
        "bucket_window": cfg.bucket_window,
    }
    return dropped, clusters, stats


# --------------------------------------------------------------------------- the engine


def find_duplicates_sharded(
    work: str, parts: list[int], cfg: DedupConfig, run: RunTasks, documents: int, prior: dict | None = None
) -> tuple[dict, list[dict], dict]:
    """Steps 1–4 over the dedup records of ``parts`` in ``work`` (``documents`` records in all);
    the same kind of result as
    :func:`gpt2ja.corpus.clean_parts.find_duplicates` (``{dropped key: (reason, kept key)}``, clusters, stats).

    ``prior``: the index this run dedups against (:meth:`gpt2ja.corpus.dedup_index.Chain.prior`, or
    :func:`no_prior` for the first version of an index): then the bucket files stay complete
    until the end, for the next index version to be made from them.

    Each step runs only the tasks whose marker or files are missing, checked from the last
    step back: finished work is reused, whatever deleted the rest.
    """
    cfg_json = cfg.model_dump_json()
    plan = groups(cfg)
    labels = [g["label"] for g in plan]
    index = prior or no_prior()
    base, records, runs = index["base"], index["records"], index["runs"]

    def has_marker(name: str) -> dict | None:
        uri = _marker(work, name)
        return json.loads(storage.read_text(uri)) if storage.exists(uri) else None

    def done_buckets() -> dict:
        done = {}
        for label in labels:
            rec = has_marker(label)
            if (
                rec is not None
                and storage.exists(bucket_uri(work, label))
                and all(storage.exists(_pairs_uri(work, label, int(p))) for p in rec["pairs"])
            ):
                done[label] = rec
        return done

    def to_verify(buckets: dict) -> list[int]:  # this run's parts, then the indexed parts that have pairs
        old = sorted({int(p) for rec in buckets.values() for p in rec["pairs"] if int(p) < base})
        return list(parts) + old

    def verified(p: int) -> bool:
        return storage.exists(_edges_uri(work, p)) and has_marker(f"edges{p:05d}") is not None

    bucket_done = done_buckets() if prior is not None else {}
    verify_todo = [p for p in to_verify(bucket_done) if not verified(p)]
    if verify_todo or (prior is not None and len(bucket_done) < len(plan)):
        bucket_done = done_buckets()
        bucket_todo = [g for g in plan if g["label"] not in bucket_done]
        if bucket_todo:
            sign_todo = [
                p
                for p in parts
                if not (
                    has_marker(f"sign{p:05d}") and all(storage.exists(_rows_uri(work, label, p)) for label in labels)
                )
            ]
            run(
                sign_part,
                [(work, p, cfg_json) for p in sign_todo],
                [f"dedup-sign-{p:05d}" for p in sign_todo],
                "clean: dedup sign",
            )
            jobs = [
                (work, g, parts, cfg_json, [u for name in run_names(g) for u in runs.get(name, [])], base)
                for g in bucket_todo
            ]
            for rec in run(
                bucket_group, jobs, [f"dedup-bucket-{g['label']}" for g in bucket_todo], "clean: dedup bucket"
            ):
                bucket_done[rec["label"]] = rec
        verify_todo = [p for p in to_verify(bucket_done) if not verified(p)]
        run(
            verify_part,
            [
                (work, p, [lb for lb in labels if str(p) in bucket_done[lb]["pairs"]], cfg_json, records.get(str(p)))
                for p in verify_todo
            ],
            [f"dedup-verify-{p:05d}" for p in verify_todo],
            "clean: dedup verify",
        )
    verify_parts = to_verify(bucket_done)
    verify_stats = [has_marker(f"edges{p:05d}") for p in verify_parts]
    return _cluster(work, verify_parts, cfg, verify_stats, documents, index)  # type: ignore[arg-type]
