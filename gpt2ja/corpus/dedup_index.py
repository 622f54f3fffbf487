"""The persistent dedup index: what earlier cleans kept, so that a refresh dedups only its new documents.

``dedup: {engine: sharded, index: auto}`` makes the clean stage keep, beside the
corpus, the part of the sharded engine's work (:mod:`gpt2ja.corpus.lsh_index`) that a
later clean needs to dedup against the documents kept so far without reading
their text again. One folder per corpus, one immutable version per indexed clean::

    {root}/dedup-index/{corpus}/          ("auto": beside {root}/clean/{corpus})
        v1/                               what the first indexed clean kept
            _MANIFEST.json                stage "dedup-index", written last (gpt2ja.infra.stage.run_stage)
            records/dedup{P}.json|.npz    raw part P's dedup records (id, priority, exact key, title, url,
                                          length, kept) and MinHash signatures, as phase 1 wrote them
            runs/band{B}.rows             band B's rows (gpt2ja.corpus.lsh_rows.ROW) of the KEPT documents, sorted
            runs/exact.rows               exact-key rows of the kept documents, sorted
            runs/ids.rows                 id rows of every document that took part in dedup, sorted
            lengths.npy                   the kept documents' lengths (the corpus report's histogram)
        v2/                               the same for the NEXT clean's new documents only
        ...

Version N is the chain v1 … vN: each version holds only the documents its clean
kept, as *additional sorted runs*, never a rewrite of older rows. A version is
written once, under its lock, manifest last, and never changed; a refresh
writes nothing but its own documents' rows, and the bucket step of the next
clean reads the runs of every version together, merging them into its sort
(:func:`gpt2ja.corpus.lsh_rows.merge_sorted_runs`, memory bounded by
``max_rows_in_memory`` however many runs there are). The price is one run per
band per version to merge; compacting old versions into one is left to do.

Version N's manifest records what it consumed: the crawls (URI and a hash of
their file list) whose parts it cleaned; ``parts`` (the raw part numbers its
records hold) and ``next_part``, from which the next clean numbers its parts
(so raw part, record key and corpus part ``part-{P}`` share one number across
versions); ``corpus``: the corpus it belongs to, the corpus files its clean
wrote (path, bytes, sha256) and that clean's counts, so the corpus manifest of
any later version lists every file without reading one of them.

A reader takes the chain of versions that have a manifest (an unfinished newest
version has none: the next build replaces it) and verifies every file of each
against it, sha256 included (:func:`read_chain`); a damaged or missing version
is one line naming it. Build and lookup are tasks on the clean stage's runner
(local pool, Prefect task runner, Dask), memory per task bounded as in the engine.

Example::

    chain = read_chain("data/dedup-index/aozora")      # None before the first indexed clean
    chain.number, chain.base, chain.prior()["runs"]["band000"]
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from dataclasses import dataclass

import numpy as np

from gpt2ja.corpus.dedup import DedupConfig
from gpt2ja.corpus.lsh_index import RunTasks, bucket_uri
from gpt2ja.corpus.lsh_rows import ID, NEAR, ROW, groups, run_names
from gpt2ja.infra import stage, storage
from gpt2ja.infra.errors import Gpt2jaError

__all__ = [
    "DedupIndexError",
    "Chain",
    "resolve",
    "same_uri",
    "overlap",
    "read_chain",
    "publish_version",
    "index_part",
    "index_runs",
]

STAGE = "dedup-index"


class DedupIndexError(Gpt2jaError):
    """The dedup index is damaged, or does not match the corpus or the clean (one line)."""


def resolve(index: str, out: str) -> str:
    """The index folder of ``dedup.index``: ``auto`` is ``{root}/dedup-index/{corpus}`` for ``out`` =
    ``{root}/clean/{corpus}``; anything else is the folder itself."""
    if index != "auto":
        return index
    parent, _, corpus = out.rstrip("/").rpartition("/")
    root, _, clean = parent.rpartition("/")
    if clean != "clean" or not corpus:
        raise DedupIndexError(
            f"dedup.index auto: the corpus {out} is not {{root}}/clean/{{corpus}}, so its index "
            "has no default place; set dedup.index to a folder"
        )
    return storage.join(root or ".", "dedup-index", corpus)


def version_uri(index: str, number: int) -> str:
    return storage.join(index, f"v{number}")


def _norm(uri: str) -> str:
    return uri.rstrip("/") if storage.is_gcs(uri) else os.path.abspath(os.path.expanduser(uri))


def same_uri(a: str, b: str) -> bool:
    return storage.is_gcs(a) == storage.is_gcs(b) and _norm(a) == _norm(b)


def overlap(a: str, b: str) -> bool:
    """``a`` and ``b`` are one folder, or one holds the other."""
    if storage.is_gcs(a) != storage.is_gcs(b):
        return False
    sep = "/" if storage.is_gcs(a) else os.sep
    x, y = _norm(a), _norm(b)
    return x == y or x.startswith(y + sep) or y.startswith(x + sep)


# --------------------------------------------------------------------------- reading


@dataclass
class Chain:
    """The published versions v1 … vN of one index (their manifests, each with ``"uri"``)."""

    uri: str
    versions: list[dict]

    @property
    def number(self) -> int:
        return len(self.versions)

    @property
    def latest(self) -> dict:
        return self.versions[-1]

    @property
    def base(self) -> int:
        """The number the next clean gives its first raw part (every lower one is indexed)."""
        return int(self.latest["next_part"])

    def consumed(self) -> list[dict]:
        """The crawls the versions consumed: ``{"uri", "content", "version"}``, in order."""
        return [
            {**c, "uri": storage.resolve_ref(c["uri"], v["uri"]), "version": v["version"]}
            for v in self.versions
            for c in v["consumed"]
        ]

    def corpus_files(self) -> list[dict]:
        """Every corpus file the versions' cleans wrote (``{"path", "bytes", "sha256"}`` relative to the corpus)."""
        return [f for v in self.versions for f in v["corpus"]["files"]]

    def corpus_counts(self) -> list[dict]:
        return [v["corpus"]["counts"] for v in self.versions]

    def lengths(self) -> np.ndarray:
        return np.concatenate(
            [np.load(io.BytesIO(storage.read_bytes(storage.join(v["uri"], "lengths.npy")))) for v in self.versions]
        )

    def prior(self) -> dict:
        """What :func:`gpt2ja.corpus.lsh_index.find_duplicates_sharded` dedups against: plain data for the tasks."""
        runs: dict[str, list[str]] = {}
        for v in self.versions:
            for name in v["runs"]:
                runs.setdefault(name, []).append(storage.join(v["uri"], "runs", f"{name}.rows"))
        records = {str(p): storage.join(v["uri"], "records") for v in self.versions for p in v["parts"]}
        return {"base": self.base, "records": records, "runs": runs}


def read_chain(index: str) -> Chain | None:
    """The published versions of ``index``, each verified against its manifest (sha256 too); None when
    there is none yet. A version folder without a manifest after them is an unfinished build, which
    the next build replaces; anything else wrong is :class:`DedupIndexError`, one line."""
    fix = f"delete {index} so that the next clean rebuilds the corpus and its index from every input"
    versions: list[dict] = []
    while True:
        uri = version_uri(index, len(versions) + 1)
        try:
            manifest = storage.read_manifest(uri)
        except storage.StorageError as err:
            raise DedupIndexError(f"dedup index {uri}: {err}") from None
        if manifest is None:
            break
        _, problems = stage.verify(uri, deep=True, manifest=manifest)
        if problems:
            raise DedupIndexError(f"dedup index {uri} is damaged ({'; '.join(problems[:2])}); {fix}")
        previous = versions[-1] if versions else None
        if (
            manifest.get("stage") != STAGE
            or manifest.get("version") != len(versions) + 1
            or (manifest.get("previous") or {}).get("build_id") != (previous or {}).get("build_id")
        ):
            raise DedupIndexError(
                f"dedup index {uri} is not version {len(versions) + 1} built on "
                f"{previous['uri'] if previous else 'nothing'}; {fix}"
            )
        versions.append(manifest)
    if storage.exists(version_uri(index, len(versions) + 2)):
        raise DedupIndexError(
            f"dedup index {index}: v{len(versions) + 2} exists but v{len(versions) + 1} is unfinished or missing; {fix}"
        )
    return Chain(index, versions) if versions else None


# --------------------------------------------------------------------------- the build tasks


def index_part(args: tuple) -> dict:
    """One raw part's dedup records and signatures into the version's ``records/``, with a ``kept`` flag
    each; returns the kept documents' lengths."""
    work, part, records, dropped_pos = args
    meta = json.loads(storage.read_text(storage.join(work, f"dedup{part:05d}.json")))
    gone = set(dropped_pos)
    meta["kept"] = [i not in gone for i in range(len(meta["keys"]))]
    storage.write_text(storage.join(records, f"dedup{part:05d}.json"), json.dumps(meta, ensure_ascii=False))
    storage.write_bytes(
        storage.join(records, f"dedup{part:05d}.npz"), storage.read_bytes(storage.join(work, f"dedup{part:05d}.npz"))
    )
    return {
        "part": part,
        "records": len(meta["keys"]),
        "lengths": [m["chars"] for m, k in zip(meta["metas"], meta["kept"]) if k],
    }


def _read_rows(f, max_rows: int):
    """Whole rows from the binary file ``f``, at most ``max_rows`` at a time."""
    pending = b""
    while True:
        data = f.read(max_rows * ROW.itemsize)
        if not data:
            return
        data = pending + data
        cut = len(data) - len(data) % ROW.itemsize
        pending = data[cut:]
        yield np.frombuffer(data[:cut], ROW)


def index_runs(args: tuple) -> dict:
    """One bucket group's rows of the documents this version indexes, from the clean's sorted bucket
    file (this run's documents only) into the version's ``runs/``: one file per band (the rows of
    kept documents), ``exact`` (kept), ``ids`` (all but the id repeats). Filtering keeps the order."""
    work, group, version, gone, gone_id, max_rows = args
    names = run_names(group)
    drop = gone_id if group["kind"] == ID else gone  # sorted int64 refs: part << 32 | pos
    counts = dict.fromkeys(names, 0)
    with contextlib.ExitStack() as stack:
        outs = {n: stack.enter_context(storage.open(storage.join(version, "runs", f"{n}.rows"), "wb")) for n in names}
        src = stack.enter_context(storage.open(bucket_uri(work, group["label"]), "rb"))
        for rows in _read_rows(src, max_rows):
            refs = (rows["part"].astype(np.int64) << 32) | rows["pos"].astype(np.int64)
            rows = rows[~np.isin(refs, drop)]
            if group["kind"] == NEAR:
                for band, name in zip(range(*group["bands"]), names):
                    mine = rows[rows["lo"] == band]
                    outs[name].write(mine.tobytes())
                    counts[name] += len(mine)
            else:
                outs[names[0]].write(rows.tobytes())
                counts[names[0]] += len(rows)
    return counts


# --------------------------------------------------------------------------- publishing a version


def _refs(keys) -> np.ndarray:
    """Record keys ``"PPPPP:NNNNNNN"`` as sorted int64 refs ``part << 32 | pos``."""
    refs = (key.split(":") for key in keys)
    return np.array(sorted((int(part) << 32) | int(pos) for part, pos in refs), dtype=np.int64)


def publish_version(
    index: str,
    chain: Chain | None,
    *,
    work: str,
    parts: list[int],
    dropped: dict,
    dedup: DedupConfig,
    clean_config: dict,
    consumed: list[tuple[str, dict, str]],
    corpus: str,
    corpus_files: list[dict],
    corpus_counts: dict,
    corpus_report: dict,
    run: RunTasks,
) -> dict:
    """Publish version N+1 (N: ``chain``'s) through the stage contract; its manifest.

    ``parts``: this clean's raw part numbers (its records in ``work``); ``dropped``: its
    ``{record key: (reason, kept key)}``; ``consumed``: ``(crawl URI, manifest, content hash)`` of the
    crawls it cleaned; ``corpus_files``, ``corpus_counts``: what it added to ``corpus``;
    ``corpus_report``: its drop examples, largest clusters and dedup stats (the report of that
    corpus version, written again from here when only its manifest is missing).
    """
    number = 1 + (chain.number if chain else 0)
    out = version_uri(index, number)
    base = chain.base if chain else 0
    previous = [chain.latest] if chain else []
    config = {"version": number, "base": base, "clean": clean_config, "consumed": [c for _, _, c in consumed]}
    fp = storage.fingerprint(config, previous + [m for _, m, _ in consumed])
    started = time.time()

    def build() -> dict:
        gone = _refs(dropped)
        gone_id = _refs(k for k, (reason, _) in dropped.items() if reason == "duplicate_id")
        by_part: dict[int, list[int]] = {p: [] for p in parts}
        for key in dropped:
            part, pos = key.split(":")
            by_part[int(part)].append(int(pos))
        records = storage.join(out, "records")
        done = run(
            index_part,
            [(work, p, records, by_part[p]) for p in parts],
            [f"index-records-{p:05d}" for p in parts],
            "clean: index records",
        )
        plan = groups(dedup) if parts else []  # no part: no bucket file, no rows
        rows = run(
            index_runs,
            [(work, g, out, gone, gone_id, dedup.max_rows_in_memory) for g in plan],
            [f"index-runs-{g['label']}" for g in plan],
            "clean: index runs",
        )
        lengths = np.array(sorted(n for d in done for n in d["lengths"]), dtype=np.uint32)
        buf = io.BytesIO()
        np.save(buf, lengths, allow_pickle=False)
        storage.write_bytes(storage.join(out, "lengths.npy"), buf.getvalue())
        files = [storage.file_info(u, root=out) for u in storage.list_files(out)]
        row_counts = {name: n for r in rows for name, n in r.items()}
        counts = {
            "parts": len(parts),
            "records": sum(d["records"] for d in done),
            "documents": len(lengths),
            "rows": dict(sorted(row_counts.items())),
        }
        extra = {
            "version": number,
            "previous": {"version": number - 1, "build_id": chain.latest["build_id"]} if chain else None,
            "parts": list(parts),
            "next_part": max([base, *(p + 1 for p in parts)]),
            "runs": sorted(row_counts),
            "consumed": [{"uri": storage.relative_ref(u, out), "content": c} for u, _, c in consumed],
            "corpus": {
                "uri": storage.relative_ref(corpus, out),
                "files": corpus_files,
                "counts": corpus_counts,
                "report": corpus_report,
            },
        }
        return storage.build_manifest(
            stage=STAGE,
            config=config,
            inputs=previous + [m for _, m, _ in consumed],
            counts=counts,
            files=files,
            timings={"seconds": round(time.time() - started, 3)},
            extra=extra,
        )

    inputs = [p["uri"] for p in previous] + [u for u, _, _ in consumed]
    return stage.run_stage(STAGE, out, fingerprint=fp, build=build, inputs=inputs, deep=True).manifest
