"""The sharded dedup engine (``dedup.engine: sharded``) against the memory engine, on real Aozora texts.

Same drops as the memory engine when there is no chain; the documented
difference on a chain; the external sort (tiny ``max_rows_in_memory``) gives
the same result, its runs read from disk by blocks and its candidate pairs
spilled past their budget; a bucket task's peak memory does not grow with the
corpus; a local pool and a Dask LocalCluster write the same bytes; an
interrupted dedup resumes from its ``_work`` files.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpt2ja.corpus.clean import CleanConfig, run_clean
from gpt2ja.corpus.dedup import DedupConfig, signature
from gpt2ja.corpus.jsonl import read_documents
from gpt2ja.corpus.lsh_index import ROW, _rows_uri, merge_sorted_runs
from gpt2ja.corpus.lsh_rows import NEAR, PAIR, PairSink, RunFile, save_array
from gpt2ja.infra import storage
from tests.test_clean import doc, outputs, raw_crawl, work_text
from tests.test_dedup import edit_sentences

TIMING_FIELDS = ("created_at", "timings", "build_id")


class InProcess:
    """A ``map_parts`` that runs every part here, in order, and remembers the names it ran."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.names: list[str] = []
        self.results: dict[str, object] = {}
        self.fail_on = fail_on

    def __call__(self, fn, items, names):
        out = []
        for item, name in zip(items, names):
            if self.fail_on and name.startswith(self.fail_on):
                raise RuntimeError(f"interrupted at {name}")
            self.names.append(name)
            out.append(fn(item))
            self.results[name] = out[-1]
        return out


def _titles(out: str) -> list[str]:
    return sorted(d.title for d in read_documents([storage.join(out, s) for s in ("train", "validation")]))


def _corpus_files(out: str) -> dict[str, bytes]:
    """Every output file; the manifest without its timings."""
    files = outputs(out)
    manifest = json.loads(files.pop("_MANIFEST.json"))
    files["_MANIFEST.json"] = json.dumps(
        {k: v for k, v in manifest.items() if k not in TIMING_FIELDS}, sort_keys=True
    ).encode()
    return files


def _clean(raws: list[str], out: Path, engine: str, map_parts=None, workers: int = 1, **dedup) -> dict:
    cfg = CleanConfig(inputs=raws, out=str(out), workers=workers, dedup={"engine": engine, **dedup})
    run_clean(cfg, map_parts=map_parts if map_parts is not None else (InProcess() if workers == 1 else None))
    return storage.read_manifest(str(out))


@pytest.fixture(scope="module")
def no_chains(tmp_path_factory):
    """Three crawls: originals, whitespace copies, lightly edited copies, an id repeat (no chains)."""
    root = tmp_path_factory.mktemp("nochain")
    titles = ["羅生門", "鼻", "蜘蛛の糸", "ごん狐", "手袋を買いに", "よだかの星"]
    old = raw_crawl(root, "old", [[doc(t) for t in titles[:3]], [doc(t) for t in titles[3:]]])
    new = raw_crawl(
        root,
        "new",
        [
            [
                doc(
                    "羅生門",
                    work_text("羅生門").replace("。", "。\n"),
                    url="https://m.example/r",
                    fetched_at="2026-11-20T00:00:00Z",
                ),
                doc(
                    "鼻",
                    edit_sentences(work_text("鼻"), 0.05),
                    url="https://m.example/h",
                    fetched_at="2026-11-20T00:00:00Z",
                ),
                doc(
                    "ごん狐",
                    edit_sentences(work_text("ごん狐"), 0.05, seed=3),
                    url="https://m.example/g",
                    fetched_at="2026-10-01T00:00:00Z",
                ),
            ],  # older than the original: the edited copy is kept
            [
                doc(
                    "ごん狐",
                    edit_sentences(work_text("ごん狐"), 0.05, seed=3),
                    url="https://m.example/g2",
                    fetched_at="2026-11-21T00:00:00Z",
                ),  # an exact copy of the kept edit
                doc("蜘蛛の糸", fetched_at="2026-11-25T00:00:00Z"),  # the same id as the old one
                doc("〔雨ニモマケズ〕", fetched_at="2026-11-25T00:00:00Z"),
            ],
        ],
    )
    return root, [new, old]


@pytest.mark.slow
def test_without_chains_the_sharded_engine_drops_what_the_memory_engine_drops(no_chains, tmp_path):
    root, raws = no_chains
    memory = _clean(raws, tmp_path / "memory", "memory")
    sharded = _clean(raws, tmp_path / "sharded", "sharded")
    assert (
        memory["counts"]["drops"]
        == sharded["counts"]["drops"]
        == {"duplicate_id": 1, "exact_duplicate": 2, "near_duplicate": 2}
    )
    for stat in ("documents", "kept", "exact_duplicate", "near_duplicate", "clusters"):
        assert memory["dedup"][stat] == sharded["dedup"][stat], stat
    assert sharded["dedup"]["engine"] == "sharded" and "engine" not in memory["dedup"]
    # the same documents, the same bytes: only the manifest's config and the report's stats line differ
    m, s = outputs(str(tmp_path / "memory")), outputs(str(tmp_path / "sharded"))
    assert sorted(m) == sorted(s)
    assert [k for k in m if m[k] != s[k]] == ["_MANIFEST.json", "report.md"]
    kept = {d.title: d for d in read_documents([str(tmp_path / "sharded" / sp) for sp in ("train", "validation")])}
    assert kept["ごん狐"].url == "https://m.example/g" and kept["羅生門"].fetched_at.startswith("2026-11-01")


def _chain() -> list[str]:
    """A ≈ B ≈ C, A ≉ C: three overlapping windows of one text, each shifted by a ninth."""
    text = "".join(work_text("羅生門").split())
    n = len(text) * 3 // 4
    d = n // 9
    return [text[i * d : i * d + n] for i in range(3)]


def test_a_chain_is_one_component_in_the_sharded_engine(tmp_path):
    a, b, c = _chain()
    cfg = DedupConfig()
    j = {
        k: float(np.mean(signature(x, cfg) == signature(y, cfg)))
        for k, (x, y) in {"ab": (a, b), "bc": (b, c), "ac": (a, c)}.items()
    }
    assert j["ab"] >= 0.7 and j["bc"] >= 0.7 and j["ac"] < 0.7, j
    raw = raw_crawl(
        tmp_path,
        "chain",
        [
            [
                doc("A", a, url="https://c.example/a", fetched_at="2026-01-01T00:00:00Z"),
                doc("B", b, url="https://c.example/b", fetched_at="2026-02-01T00:00:00Z"),
            ],
            [doc("C", c, url="https://c.example/c", fetched_at="2026-03-01T00:00:00Z")],
        ],
    )
    memory = _clean([raw], tmp_path / "memory", "memory")
    sharded = _clean([raw], tmp_path / "sharded", "sharded")
    # memory: C is compared with the KEPT documents only (A), so it stays; components drop it with B
    assert _titles(str(tmp_path / "memory")) == ["A", "C"] and memory["counts"]["drops"] == {"near_duplicate": 1}
    assert _titles(str(tmp_path / "sharded")) == ["A"] and sharded["counts"]["drops"] == {"near_duplicate": 2}
    report = Path(tmp_path / "sharded" / "report.md").read_text(encoding="utf-8")
    assert "| A | B (near, " in report and "C (near, " in report  # C reported with its similarity to A (< 0.7)


@pytest.mark.slow
def test_the_external_sort_gives_the_same_result(no_chains, tmp_path):
    root, raws = no_chains
    tiny, default = InProcess(), InProcess()
    _clean(raws, tmp_path / "tiny", "sharded", map_parts=tiny, max_rows_in_memory=16, bands_per_task=16)
    _clean(raws, tmp_path / "default", "sharded", map_parts=default)
    runs = {name: r["runs"] for name, r in tiny.results.items() if name.startswith("dedup-bucket-")}
    assert runs["dedup-bucket-bands000-015"] > 10, runs  # 16 bands × 14 documents in runs of 16 rows
    assert all(r["runs"] == 0 for n, r in default.results.items() if n.startswith("dedup-bucket-"))
    assert _corpus_files(str(tmp_path / "tiny")).keys() == _corpus_files(str(tmp_path / "default")).keys()
    t, d = outputs(str(tmp_path / "tiny")), outputs(str(tmp_path / "default"))
    assert [k for k in t if t[k] != d[k]] == ["_MANIFEST.json"]  # its timings
    assert _corpus_files(str(tmp_path / "tiny")) == _corpus_files(str(tmp_path / "default"))


@pytest.mark.slow
def test_merge_of_sorted_runs_equals_one_sort(tmp_path):
    rng = np.random.default_rng(0)
    rows = np.empty(5000, ROW)
    rows["hi"] = rng.integers(0, 50, len(rows))  # many equal keys: ties broken by part, pos
    rows["lo"] = rng.integers(0, 3, len(rows))
    rows["part"] = rng.integers(0, 4, len(rows))
    rows["pos"] = np.arange(len(rows))
    key = lambda r: r[np.lexsort((r["pos"], r["part"], r["lo"], r["hi"]))]  # noqa: E731
    runs = [key(rows[i::7]) for i in range(7)]
    for i, run in enumerate(runs):
        run.tofile(tmp_path / f"run{i}.rows")
    files = [RunFile(str(tmp_path / f"run{i}.rows")) for i in range(7)]  # the same runs, read by blocks
    assert [len(f) for f in files] == [len(r) for r in runs] and np.array_equal(files[3][10:20], runs[3][10:20])
    for max_rows in (16, 100, 10_000):
        for sources in (runs, files):
            chunks = list(merge_sorted_runs(sources, max_rows))
            assert all(len(c) <= max_rows for c in chunks) or max_rows < 2 * 7
            assert np.array_equal(np.concatenate(chunks), key(rows))


def test_spilled_candidate_pairs_come_out_as_the_held_ones(tmp_path):
    rng = np.random.default_rng(1)
    batches = []
    for _ in range(40):  # the same pair found again (in another band) across batches
        p = np.zeros(int(rng.integers(0, 60)), PAIR)
        for name, high in (("a_part", 9), ("a_pos", 5), ("b_part", 9), ("b_pos", 5)):
            p[name] = rng.integers(0, high, len(p))
        batches.append(p)
    every = np.unique(np.concatenate(batches))
    expected = [(int(part), every[every["a_part"] == part]) for part in np.unique(every["a_part"])]
    for budget in (2, 7, 100, 10_000):
        sink = PairSink(str(tmp_path), budget)
        for p in batches:
            sink.add(p)
        assert (len(sink.runs) > 10) == (budget <= 7)
        got = list(sink.by_part())
        assert [part for part, _ in got] == [part for part, _ in expected]
        assert all(np.array_equal(g, e) for (_, g), (_, e) in zip(got, expected)), budget


BUCKET_PEAK = r"""
import json, sys
from gpt2ja.corpus.lsh_index import bucket_group
def mb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024
try:
    open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS: the peak of the task alone
except OSError:
    pass
before = mb("VmRSS")
record = bucket_group(json.loads(sys.argv[1]))
print(json.dumps({"grew": mb("VmHWM") - before, "runs": record["runs"], "pairs": sum(record["pairs"].values())}))
"""


@pytest.mark.slow
def test_a_bucket_tasks_peak_memory_does_not_grow_with_the_corpus(tmp_path):
    """One group of 60 and of 600 parts (120,000 and 1.2 M rows, as many pairs) at the same
    max_rows_in_memory, each in a fresh process: memory-mapped runs and held pairs grew by ~90 MB."""
    group = {"label": "bands000-003", "kind": NEAR, "bands": [0, 4]}
    cfg = DedupConfig(engine="sharded", max_rows_in_memory=50_000).model_dump_json()
    peaks = []
    for parts in (60, 600):
        work = str(tmp_path / str(parts))
        rng = np.random.default_rng(0)
        for part in range(parts):
            rows = np.zeros(2000, ROW)
            rows["hi"] = rng.integers(0, parts * 1000, len(rows))  # about one pair a row
            rows["part"], rows["pos"] = part, np.arange(len(rows))
            save_array(_rows_uri(work, group["label"], part), rows)
        args = json.dumps([work, group, list(range(parts)), cfg, [], 0])
        out = subprocess.run(
            [sys.executable, "-c", BUCKET_PEAK, args],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
            check=True,
        )
        peaks.append(json.loads(out.stdout))
    small, large = peaks
    assert small["runs"] >= 2 and large["runs"] >= 20 and large["pairs"] > 1_000_000, peaks
    assert large["grew"] < small["grew"] + 8, peaks  # MB


def test_an_interrupted_dedup_resumes_after_a_bucket_file_is_deleted(no_chains, tmp_path):
    root, raws = no_chains
    reference = _clean(raws, tmp_path / "reference", "sharded")
    cfg = CleanConfig(inputs=raws, out=str(tmp_path / "out"), workers=1, dedup={"engine": "sharded"})
    with pytest.raises(RuntimeError, match="interrupted at dedup-verify-00001"):
        run_clean(cfg, map_parts=InProcess(fail_on="dedup-verify-00001"))
    buckets = sorted(Path(tmp_path / "out" / "_work").glob("*/dedup/buckets/*.rows"))
    assert [p.name for p in buckets] == [
        "bands000-003.rows",
        "bands004-007.rows",
        "bands008-011.rows",
        "bands012-015.rows",
        "exact.rows",
        "ids.rows",
    ]
    buckets[1].unlink()
    again = InProcess()
    run_clean(cfg, map_parts=again)
    assert [n for n in again.names if not n.startswith("write-")] == ["dedup-bucket-bands004-007"] + [
        f"dedup-verify-{i:05d}" for i in range(1, 4)
    ]  # 0 had finished
    assert _corpus_files(cfg.out) == {
        **_corpus_files(str(tmp_path / "reference")),
        "_MANIFEST.json": _corpus_files(cfg.out)["_MANIFEST.json"],
    }
    assert storage.read_manifest(cfg.out)["counts"] == reference["counts"]


def test_memory_engine_fingerprint_is_unchanged_by_the_new_settings():
    base = CleanConfig(inputs=[], out="x").fingerprint_config()
    assert "engine" not in base["dedup"] and "max_rows_in_memory" not in base["dedup"]
    tuned = CleanConfig(inputs=[], out="x", dedup={"max_rows_in_memory": 64, "bands_per_task": 2})
    assert tuned.fingerprint_config() == base
    sharded = CleanConfig(inputs=[], out="x", dedup={"engine": "sharded"}).fingerprint_config()
    assert sharded != base and sharded["dedup"]["engine"] == "sharded"


@pytest.fixture(scope="module")
def dask_cluster():
    """A running Dask cluster (2 worker processes, one thread each), as in tests/test_dask.py."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client


@pytest.mark.slow
def test_local_pool_and_dask_cluster_write_the_same_bytes(no_chains, dask_cluster, tmp_path):
    root, raws = no_chains
    client = dask_cluster
    ran: list[str] = []

    def on_dask(fn, items, names):
        ran.extend(names)
        return client.gather(client.map(fn, items, key=[f"{n}-{id(items)}" for n in names]))

    _clean(raws, tmp_path / "pool", "sharded", workers=2)  # the stage's own spawn pool of 2 processes
    _clean(raws, tmp_path / "dask", "sharded", map_parts=on_dask)
    assert {n.rsplit("-", 1)[0] for n in ran} >= {"dedup-sign", "dedup-bucket-bands000", "dedup-verify"}
    pool, dask = _corpus_files(str(tmp_path / "pool")), _corpus_files(str(tmp_path / "dask"))
    assert sorted(pool) == sorted(dask)
    assert [k for k in pool if pool[k] != dask[k]] == []
