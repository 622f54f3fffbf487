"""The data stages on a Dask cluster: one Prefect task per part, the same bytes as the local run.

A raw crawl of the bundled mirror's Aozora zips (48 works in 6 raw parts) goes
through the ``pipeline`` flow twice into the same root: once with the default
task runner (each stage's own process pool), once with the clean stage on a
Dask LocalCluster that ``DaskTaskRunner`` starts itself (``n_workers: 2``) and
the shards stage on a running Dask LocalCluster of 2 worker processes started
by the test (``task_runner.address``). Every file of the clean corpus and the
shards, and the tokenizer's model, must be byte-identical; manifests and shard
completion records are compared without their timings. Then an up-to-date
stage skips without starting a cluster, and deleted shards are rebuilt alone
(on Dask, then on threads). About 2 min on 2 cores shared with a training job
(Prefect's test server, cold Dask workers importing Prefect and TensorFlow).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest

from gpt2ja.flows.config import ConfigError, validate_config
from gpt2ja.infra import storage
from tests import procs
from tests.net import free_port

REPO = Path(__file__).resolve().parent.parent
CARDS = REPO / "examples" / "aozora-mirror" / "cards"
# The fields of manifests and shard completion records that say when and how fast, not what.
TIMING_FIELDS = ("created_at", "timings", "seconds", "build_id")
# The tokenizer's own files (its tokenizer.json, hence its manifest, records the training time).
TOKENIZER_FILES = ("spm.model", "spm.vocab")


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=procs.STARTUP_LIMIT_S):
        yield


@pytest.fixture(scope="module")
def dask_cluster():
    """A running Dask cluster (2 worker processes, one thread each), reached by its tcp:// address.

    Its client is not the process's default one: ``DaskTaskRunner`` would use a
    default client instead of the address or cluster it is given.
    """
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield cluster, client


def _config(root: Path) -> dict:
    """Crawl (6 raw parts of 8 works), clean, tokenizer, shards (4 + 2); no train section."""
    return {
        "root": str(root),
        "corpus": "mirror",
        "tokenizer_name": "sp3000",
        "dataset": "sp3000-64",
        "crawl": [{"source": "files", "directory": str(CARDS), "crawl_id": "mirror", "part_docs": 8}],
        "clean": {"workers": 1, "split": {"validation_fraction": 0.2}},
        "tokenizer": {"kind": "sentencepiece", "vocab_size": 3000},
        "shards": {"seq_len": 64, "num_shards": {"train": 4, "validation": 2}, "workers": 1},
    }


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in TIMING_FIELDS}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _snapshot(uri: str) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``uri``; JSON records hashed without their timings."""
    root = Path(uri)
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.suffix == ".json" and (path.name == storage.MANIFEST or path.parent.name == "_work"):
            data = json.dumps(_without_timings(json.loads(data)), sort_keys=True).encode()
        out[path.relative_to(root).as_posix()] = hashlib.sha256(data).hexdigest()
    return out


PARTS = ("clean-filter-", "clean-write-", "shards-train-", "shards-validation-")  # the part tasks' names


def _task_run_names() -> list[str]:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return sorted(r.name for r in client.read_task_runs(limit=200))


@pytest.fixture(scope="module")
def two_runs(prefect_harness, dask_cluster, tmp_path_factory):
    """The pipeline (crawl, clean, tokenizer, shards) run locally, then on Dask into the same root."""
    from distributed import get_task_stream

    from gpt2ja.flows.pipeline import pipeline

    cluster, client = dask_cluster
    root = tmp_path_factory.mktemp("dask") / "run"
    local = validate_config(_config(root), "local")
    data = _config(root)
    data["task_runner"] = {"kind": "dask", "n_workers": 2}  # clean: a LocalCluster its runner starts and stops
    data["shards"]["task_runner"] = {"kind": "dask", "address": cluster.scheduler_address}  # shards: the running one
    dask = validate_config(data, "dask")
    stages = {"clean": local.clean_uri, "tokenizer": local.tokenizer_uri, "shards": local.shards_uri}

    started = time.monotonic()
    first = pipeline(local)
    seconds = {"local": time.monotonic() - started}
    snapshots = {"local": {s: _snapshot(u) for s, u in stages.items()}}
    names = {"local": _task_run_names()}
    for uri in stages.values():
        shutil.rmtree(uri)

    started = time.monotonic()
    with get_task_stream(client=client) as stream:
        second = pipeline(dask)
    seconds["dask"] = time.monotonic() - started
    snapshots["dask"] = {s: _snapshot(u) for s, u in stages.items()}
    names["dask"] = sorted((Counter(_task_run_names()) - Counter(names["local"])).elements())
    print(f"pipeline: local {seconds['local']:.1f} s, dask {seconds['dask']:.1f} s")
    return {
        "config": dask,
        "outcomes": (first, second),
        "snapshots": snapshots,
        "names": names,
        "stream": stream.data,
        "workers": set(cluster.scheduler_info["workers"]),
    }


@pytest.mark.slow
def test_the_dask_run_writes_the_same_bytes_as_the_local_run(two_runs):
    local, dask = (
        {**run, "tokenizer": {k: v for k, v in run["tokenizer"].items() if k in TOKENIZER_FILES}}
        for run in (two_runs["snapshots"]["local"], two_runs["snapshots"]["dask"])
    )
    assert len(local["clean"]) >= 6 and len(local["shards"]) == 6 + 6 + 1  # parts, report, shards, records
    assert sorted(local["tokenizer"]) == sorted(TOKENIZER_FILES)
    for stage in ("clean", "tokenizer", "shards"):
        assert sorted(dask[stage]) == sorted(local[stage]), stage
        differ = [name for name in local[stage] if dask[stage][name] != local[stage][name]]
        assert not differ, f"{stage}: these files differ between the local and the Dask run: {differ}"
    first, second = two_runs["outcomes"]
    assert not any(first[s]["skipped"] for s in ("clean", "tokenizer", "shards"))
    assert second["crawl"][0]["skipped"] and not any(second[s]["skipped"] for s in ("clean", "tokenizer", "shards"))


@pytest.mark.slow
def test_each_part_is_one_prefect_task_run_on_the_dask_workers(two_runs):
    names = two_runs["names"]
    assert not [n for n in names["local"] if n.startswith(PARTS)]  # the packages' own pools
    assert [n for n in names["dask"] if n.startswith(PARTS[:2])] == [f"clean-filter-{i:05d}" for i in range(6)] + [
        f"clean-write-{i:05d}" for i in range(6)
    ]
    assert [n for n in names["dask"] if n.startswith(PARTS[2:])] == [f"shards-train-{i:05d}" for i in range(4)] + [
        f"shards-validation-{i:05d}" for i in range(2)
    ]
    # the shards ran on the test's cluster (the clean parts on the LocalCluster their runner started)
    assert len(two_runs["stream"]) == 6 and {t["worker"] for t in two_runs["stream"]} <= two_runs["workers"]


@pytest.mark.slow
def test_an_up_to_date_stage_skips_and_a_deleted_shard_is_rebuilt_alone(two_runs):
    from gpt2ja.flows.runners import TaskRunnerConfig
    from gpt2ja.flows.stages import clean_flow, shards_flow

    config = two_runs["config"]
    shards = Path(config.shards_uri)
    reference = _snapshot(str(shards))
    raw = two_runs["outcomes"][1]["crawl"][0]["uri"]
    names = Counter(_task_run_names())
    assert clean_flow([raw], config.clean_uri, config.clean) == {"uri": config.clean_uri, "skipped": True}
    assert not [n for n in Counter(_task_run_names()) - names if n.startswith(PARTS)]  # no part, no cluster
    kept = {p.name: p.stat().st_mtime_ns for p in shards.glob("*.tfrecord")}
    (shards / "train-00002-of-00004.tfrecord").unlink()
    (shards / storage.MANIFEST).unlink()
    names = Counter(_task_run_names())
    outcome = shards_flow(config.clean_uri, config.tokenizer_uri, config.shards_uri, config.shards)
    assert outcome == {"uri": config.shards_uri, "skipped": False}
    assert [n for n in Counter(_task_run_names()) - names if n.startswith(PARTS)] == ["shards-train-00002"]
    assert _snapshot(str(shards)) == reference
    after = {p.name: p.stat().st_mtime_ns for p in shards.glob("*.tfrecord")}
    assert {n for n in kept if n != "train-00002-of-00004.tfrecord" and after[n] != kept[n]} == set()

    # the same on Prefect's thread pool runner
    (shards / "validation-00001-of-00002.tfrecord").unlink()
    (shards / storage.MANIFEST).unlink()
    names = Counter(_task_run_names())
    threads = config.shards.model_copy(update={"task_runner": TaskRunnerConfig(kind="threads", n_workers=2)})
    assert not shards_flow(config.clean_uri, config.tokenizer_uri, config.shards_uri, threads)["skipped"]
    assert [n for n in Counter(_task_run_names()) - names if n.startswith(PARTS)] == ["shards-validation-00001"]
    assert _snapshot(str(shards)) == reference


@pytest.mark.parametrize(
    "task_runner, expected",
    [
        ({"kind": "spark"}, "task_runner.kind: must be one of 'local', 'threads', 'processes' or 'dask', got 'spark'"),
        (
            {"kind": "dask", "address": "10.0.0.5:8786"},
            "task_runner.address: '10.0.0.5:8786' is not a Dask scheduler address; write tcp://host:port",
        ),
        ({"kind": "dask", "address": "tcp://10.0.0.5"}, "is not a Dask scheduler address; write tcp://host:port"),
        ({"kind": "dask", "address": "tcp://10.0.0.5:8786", "n_workers": 2}, "has its own workers; drop n_workers"),
        ({"kind": "threads", "address": "tcp://10.0.0.5:8786"}, "address is for kind dask, not threads"),
        ({"kind": "local", "n_workers": 4}, "n_workers is not used by kind local"),
    ],
)
def test_a_bad_task_runner_gives_one_clear_line(tmp_path, task_runner, expected):
    for where in ("top", "shards"):
        data = _config(tmp_path)
        if where == "top":
            data["task_runner"] = task_runner
        else:
            data["shards"]["task_runner"] = task_runner
        with pytest.raises(ConfigError) as err:
            validate_config(data, "run.yaml")
        msg = str(err.value)
        prefix = "config run.yaml: " + ("shards." if where == "shards" else "")
        assert msg.startswith(prefix + "task_runner") and expected in msg and "\n" not in msg, msg


@pytest.mark.slow
def test_an_unreachable_dask_scheduler_is_one_line(prefect_harness, tmp_path):
    from gpt2ja.crawler.files import crawl_files
    from gpt2ja.flows.config import CleanSection
    from gpt2ja.flows.stages import clean_flow
    from gpt2ja.infra.stage import StageError

    raw = crawl_files(str(CARDS), root=str(tmp_path), crawl_id="mirror", part_docs=8)
    address = f"tcp://127.0.0.1:{free_port()}"
    settings = CleanSection(workers=1, task_runner={"kind": "dask", "address": address, "connect_timeout_s": 2})
    started = time.monotonic()
    with pytest.raises(StageError) as err:
        clean_flow([raw], str(tmp_path / "clean"), settings)
    msg = str(err.value)
    assert (
        msg.startswith(f"clean: cannot reach the Dask scheduler at {address} (")
        and "fix task_runner.address" in msg
        and "\n" not in msg
    ), msg
    assert time.monotonic() - started < 30
