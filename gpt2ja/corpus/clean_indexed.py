"""The clean stage with a persistent dedup index (``dedup: {engine: sharded, index: auto}``).

A refresh adds a crawl; without an index the clean stage reads every crawl
again and dedups all of it. With one (:mod:`gpt2ja.corpus.dedup_index`), the clean:

1. reads the index's chain v1 … vN (verified) and finds the inputs no version
   consumed: only their raw parts are listed and read, numbered from vN's
   ``next_part`` on. A consumed crawl is never opened (its manifest is read:
   the stage fingerprint and a check that its files are the ones indexed);
2. runs phase 1 (clean, filter, sign) over those parts;
3. dedups them against the index plus each other (:mod:`gpt2ja.corpus.lsh_index` with
   the index as *prior*): the documents already kept are older than any new
   one, so a new document that repeats one is dropped (``duplicate_id``,
   ``exact_duplicate``, ``near_duplicate``) and an indexed one never is;
4. appends the survivors to the corpus as new parts ``{split}/part-{P}`` (P: the
   raw part's number, so the names are those a clean from scratch over all
   inputs gives); the earlier versions' files are neither read nor rewritten;
5. publishes index version N+1 (this clean's records and sorted rows, the
   corpus files it wrote, its counts), then the corpus manifest: every file of
   every version (sizes and checksums carried from the index), the counts
   summed over versions, and ``dedup_index``: the version it was deduplicated
   ``against`` and the one it ``produced``.

A kill at any point leaves either the old corpus version's files with no
corpus manifest (the rerun redoes what is missing, resuming phase 1 per part)
or index N+1 published and the corpus manifest missing (the rerun finds no
new input and writes the manifest from the index). The first indexed clean (no
index yet) is a clean from scratch that also publishes v1.

Decisions differ from a clean from scratch over all inputs only where a new
document reaches a dropped old one through a chain (A kept, A' dropped in v1,
A'' ≈ A' but ≉ A: the index keeps only what v1 kept, so A'' stays, as the
memory engine would decide) or was fetched no later than an indexed copy (the
indexed one stays; from scratch, a tie in fetch time goes by id). Tested: the
same documents kept, in the same bytes, as from scratch.

Example::

    cfg = CleanConfig(inputs=[base, refresh], out="data/clean/aozora", dedup={"engine": "sharded", "index": "auto"})
    run_clean(cfg)    # reads only `refresh` when the index already holds `base`
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time

from gpt2ja.corpus.clean_parts import STEPS, CleanConfig, CleanError, filter_parts, summarize, task_runner, write_parts
from gpt2ja.corpus.dedup_index import Chain, overlap, publish_version, read_chain, resolve, same_uri
from gpt2ja.corpus.jsonl import PART_RE, list_parts
from gpt2ja.corpus.lsh_index import find_duplicates_sharded, no_prior
from gpt2ja.corpus.report import TOP_CLUSTERS, write_report
from gpt2ja.corpus.split import SPLITS
from gpt2ja.infra import storage
from gpt2ja.infra.parallel import MapParts, pool_map
from gpt2ja.infra.stage import require, run_stage


def input_content(manifest: dict) -> str:
    """A crawl's identity as the index records it: sha256 of its files' checksums."""
    return hashlib.sha256(json.dumps([f["sha256"] for f in manifest.get("files", [])]).encode()).hexdigest()


def _clean_config(cfg: CleanConfig) -> dict:
    """What must not change between index versions: the settings that decide what a document becomes."""
    config = cfg.fingerprint_config()
    config = {**config, "dedup": {k: v for k, v in config["dedup"].items() if k != "index"}}
    return json.loads(json.dumps(config))  # as a manifest holds it (string keys, lists)


def _difference(old, new, path: str = "") -> str:
    """The first setting that differs, e.g. ``dedup.threshold: 0.7 → 0.8``."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                return _difference(old.get(key), new.get(key), f"{path}.{key}" if path else key)
    return f"{path}: {json.dumps(old, ensure_ascii=False)[:60]} → {json.dumps(new, ensure_ascii=False)[:60]}"


def _sum(counts: list[dict]) -> dict:
    """Counts of several cleans added up (numbers, and dicts of numbers: splits, drops)."""
    out: dict = {}
    for c in counts:
        for key, value in c.items():
            out[key] = _sum([out.get(key, {}), value]) if isinstance(value, dict) else out.get(key, 0) + value
    return out


def _part_number(uri: str) -> int:
    return int(PART_RE.match(uri.rsplit("/", 1)[-1]).group("index"))


def _rel(uri: str, root: str) -> str:
    if storage.is_gcs(uri):
        return uri[len(root.rstrip("/")) + 1 :]
    return os.path.relpath(uri, os.path.abspath(os.path.expanduser(root))).replace(os.sep, "/")


def _check(cfg: CleanConfig, chain: Chain, contents: list[str], before: dict | None) -> None:
    """Refuse (one line) what the index and this clean disagree on; reads manifests and listings only."""
    index, fix = (
        chain.uri,
        f"delete {chain.uri} so that the next clean rebuilds the corpus and its index from every input",
    )
    latest = chain.latest
    if latest["config"]["clean"] != _clean_config(cfg):
        raise CleanError(
            f"clean settings differ from those dedup index {index} was built with "
            f"({_difference(latest['config']['clean'], _clean_config(cfg))}); the corpus's documents "
            f"were cleaned with the old ones: restore them, or {fix}"
        )
    owner = storage.resolve_ref(latest["corpus"]["uri"], latest["uri"])
    if not same_uri(owner, cfg.out):
        raise CleanError(
            f"dedup index {index} belongs to the corpus {owner}, not {cfg.out}; give each corpus its own "
            "dedup.index (auto puts it beside the corpus)"
        )
    built = ((before or {}).get("dedup_index") or {}).get("build_id")
    if before is not None and built not in {v["build_id"] for v in chain.versions}:
        raise CleanError(f"corpus {cfg.out} was built without dedup index {index} (or from another one); {fix}")
    for c in chain.consumed():
        match = [i for i, uri in enumerate(cfg.inputs) if same_uri(uri, c["uri"])]
        if not match:
            raise CleanError(
                f"crawl {c['uri']}, cleaned into dedup index v{c['version']}, is not among the inputs; "
                f"an indexed corpus keeps every document it has: add it back, or {fix}"
            )
        if c["content"] != contents[match[0]]:
            raise CleanError(
                f"crawl {c['uri']} changed since dedup index v{c['version']} cleaned it; put new "
                f"documents in a new crawl (a refresh), or {fix}"
            )
    sizes = {_rel(u, cfg.out): n for s in SPLITS for u, n in storage.list_sizes(storage.join(cfg.out, s)).items()}
    for f in chain.corpus_files():
        if sizes.get(f["path"]) != f["bytes"]:
            found = "missing" if f["path"] not in sizes else f"{sizes[f['path']]:,} bytes, not {f['bytes']:,}"
            raise CleanError(
                f"corpus {cfg.out}: {f['path']}, recorded by dedup index {index}, is {found}; "
                f"the corpus and its index disagree: {fix}"
            )


def run_clean_indexed(cfg: CleanConfig, map_parts: MapParts | None = None) -> str:
    """:func:`gpt2ja.corpus.clean.run_clean` with ``dedup.index`` (see the module docstring); returns ``cfg.out``."""
    started = time.time()
    index = resolve(cfg.dedup.index, cfg.out)  # type: ignore[arg-type]
    if overlap(index, cfg.out):
        raise CleanError(
            f"dedup.index {index} and the corpus {cfg.out} overlap; give the index a folder of its "
            "own (auto: {root}/dedup-index/{corpus})"
        )
    manifests = [
        require(uri, "crawl", "finish (resume) that crawl first, or drop it from --in", CleanError)
        for uri in cfg.inputs
    ]
    contents = [input_content(m) for m in manifests]
    config = {**cfg.fingerprint_config(), "inputs_content": hashlib.sha256(json.dumps(contents).encode()).hexdigest()}
    fp = storage.fingerprint(config, manifests)
    found: dict = {}

    def check() -> None:  # under the lock, before the corpus manifest is withdrawn: a refusal changes nothing
        found["chain"] = chain = read_chain(index)
        if chain is not None:
            _check(cfg, chain, contents, storage.read_manifest(cfg.out))

    def build() -> dict:
        chain = found["chain"]
        consumed = [c["uri"] for c in chain.consumed()] if chain else []
        new = [
            (u, m, c)
            for u, m, c in zip(cfg.inputs, manifests, contents)
            if not any(same_uri(u, old) for old in consumed)
        ]
        # work files hold part numbers and pairs with that index version: an attempt over another is not resumed
        key = hashlib.sha256(f"{fp}:{chain.latest['build_id'] if chain else ''}".encode()).hexdigest()
        work = storage.join(cfg.out, "_work", key[:16])
        read, timings = 0, {}
        if new:  # else the index already holds this corpus version: a kill came before its manifest
            chain, read, timings = _add_version(cfg, index, chain, new, work, map_parts or pool_map(cfg.workers))
        assert chain is not None
        counts = _sum(chain.corpus_counts())
        _refuse_empty(cfg, counts)
        produced = chain.latest
        # what the clean that made the newest version found, as its manifest holds it (the same report again)
        made = json.loads(json.dumps(produced["corpus"]["report"], sort_keys=True))
        report = write_report(
            cfg.out,
            counts,
            [{"examples": made["examples"]}],
            made["clusters"],
            made["dedup"],
            cfg,
            sorted(chain.lengths().tolist()),
        )
        storage.delete(work)
        return storage.build_manifest(
            stage="clean",
            config=config,
            inputs=manifests,
            counts=counts,
            files=chain.corpus_files() + [storage.file_info(u, root=cfg.out) for u in report],
            timings={**timings, "total_s": round(time.time() - started, 3)},
            extra={
                "steps": list(STEPS),
                "dedup": made["dedup"],
                "dedup_index": {
                    "uri": storage.relative_ref(index, cfg.out),
                    "produced": f"v{chain.number}",
                    "against": f"v{chain.number - 1}" if chain.number > 1 else None,
                    "build_id": produced["build_id"],
                    "inputs_read": [storage.relative_ref(u, cfg.out) for u, _, _ in new],
                    "documents_read": read,
                },
            },
        )

    outcome = run_stage("clean", cfg.out, fingerprint=fp, build=build, inputs=cfg.inputs, keep=("_work/",), check=check)
    if outcome.skipped:
        print(f"clean: {cfg.out} is complete for these inputs and config; skipped", file=sys.stderr)
    return cfg.out


def _add_version(
    cfg: CleanConfig, index: str, chain: Chain | None, new: list[tuple[str, dict, str]], work: str, mapper: MapParts
) -> tuple[Chain, int, dict]:
    """Steps 2–5 over the ``new`` crawls ``(uri, manifest, content)``: their parts cleaned, deduplicated
    against ``chain``, appended to the corpus, and index version N+1 published. Returns the chain with
    it, the documents read and the timings. Crawls with no part make a version too (they are consumed)."""
    base = chain.base if chain else 0
    for s in SPLITS:  # a corpus made without this index is rebuilt whole; parts of an unfinished try go
        for uri in list_parts(storage.join(cfg.out, s)):
            if chain is None or _part_number(uri) >= base:
                storage.delete(uri)
    numbered = list(enumerate((p for u, _, _ in new for p in list_parts(u)), start=base))
    if not numbered and chain is None:
        raise CleanError(f"no raw parts in {', '.join(cfg.inputs)}: nothing to clean")
    t1 = time.time()
    results = filter_parts(cfg, work, numbered, [(u, m) for u, m, _ in new], mapper)
    t2 = time.time()
    indices = [i for i, _ in numbered]
    dropped, clusters, stats = {}, [], {}
    if indices:
        dropped, clusters, stats = find_duplicates_sharded(
            work,
            indices,
            cfg.dedup,
            task_runner(mapper),
            sum(r["docs_kept"] for r in results),
            prior=chain.prior() if chain else no_prior(),
        )
    t3 = time.time()
    added = summarize(results, dropped, write_parts(cfg, work, indices, dropped, mapper))
    _refuse_empty(cfg, _sum([*(chain.corpus_counts() if chain else []), added]))  # before the index moves on
    files = [
        storage.file_info(u, root=cfg.out)
        for s in SPLITS
        for u in list_parts(storage.join(cfg.out, s))
        if _part_number(u) >= base
    ]
    examples: dict = {}
    for r in results:  # the first example of each reason, in part order (as the report shows them)
        for reason, ex in r["examples"].items():
            examples.setdefault(reason, ex)
    version = publish_version(
        index,
        chain,
        work=work,
        parts=indices,
        dropped=dropped,
        dedup=cfg.dedup,
        clean_config=_clean_config(cfg),
        consumed=new,
        corpus=cfg.out,
        corpus_files=files,
        corpus_counts=added,
        run=task_runner(mapper),
        corpus_report={"examples": examples, "clusters": clusters[:TOP_CLUSTERS], "dedup": stats},
    )
    timings = {"filter_s": round(t2 - t1, 3), "dedup_s": round(t3 - t2, 3), "write_s": round(time.time() - t3, 3)}
    return Chain(index, [*(chain.versions if chain else []), version]), sum(r["docs_in"] for r in results), timings


def _refuse_empty(cfg: CleanConfig, counts: dict) -> None:
    if counts.get("documents_out", 0) == 0 and not cfg.allow_empty:
        top = ", ".join(f"{k} {v}" for k, v in sorted(counts.get("drops", {}).items(), key=lambda kv: -kv[1])[:4])
        raise CleanError(
            f"clean {cfg.out}: all {counts.get('documents_in', 0):,} documents were dropped "
            f"({top or 'none'}); check the inputs or loosen the filters, or pass --set allow_empty=true "
            "to publish it empty"
        )
