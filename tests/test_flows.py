"""The Prefect flows over the bundled Aozora mirror: every stage built, skipped on rerun, rebuilt when deleted,
and resumed after a SIGKILL in the middle of the shards stage.

One full pipeline run (configs/demo.yaml with a 10-step tiny model; about 2 min on
2 cores, Prefect's test server included) is shared by the module; the other runs skip
most stages. The whole module takes about 3.5 min.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from gpt2ja.flows.config import ConfigError, load_config
from gpt2ja.infra import storage
from tests import procs

REPO = Path(__file__).resolve().parent.parent
DATA_STAGES = ("crawl", "clean", "tokenizer", "shards")
MODEL_STAGES = ("train", "evaluate", "export")
STAGES = DATA_STAGES + MODEL_STAGES
# The demo's choices, with a 10-step run: the tests check the machinery, not the model.
FAST_TRAIN = {
    "steps": 10,
    "warmup_steps": 2,
    "log_every": 5,
    "eval_every": 10,
    "checkpoint_every": 10,
    "eval_batches": 2,
}


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=procs.STARTUP_LIMIT_S):
        yield


def _uris(outcome: dict) -> dict:
    return {"crawl": outcome["crawl"][0]["uri"], **{s: outcome[s]["uri"] for s in STAGES[1:]}}


def _skipped(outcome: dict) -> dict:
    return {"crawl": outcome["crawl"][0]["skipped"], **{s: outcome[s]["skipped"] for s in STAGES[1:]}}


def _created(uris: dict) -> dict:
    return {s: storage.read_manifest(u)["created_at"] for s, u in uris.items()}


@pytest.fixture(scope="module")
def demo_config_path(tmp_path_factory):
    data = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    data["root"] = str(tmp_path_factory.mktemp("pipeline") / "run")
    data["crawl"][0]["serve_mirror"] = str(REPO / "examples" / "aozora-mirror")
    data["crawl"][0]["progress_interval"] = 0
    data["train"].update(FAST_TRAIN)
    path = tmp_path_factory.getbasetemp() / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def demo_config(demo_config_path):
    return load_config(str(demo_config_path))


@pytest.fixture(scope="module")
def first_run(prefect_harness, demo_config):
    from gpt2ja.flows.pipeline import pipeline

    state = pipeline(demo_config, return_state=True)
    assert state.is_completed(), state
    outcome = state.result()
    uris = _uris(outcome)
    evaluation = {
        name: Path(demo_config.eval_uri, name).read_text(encoding="utf-8") for name in ("eval.json", "samples.jsonl")
    }
    return {"outcome": outcome, "uris": uris, "created": _created(uris), "evaluation": evaluation}


@pytest.mark.slow
def test_importing_the_flows_imports_no_heavy_library():
    code = (
        "import sys, gpt2ja.flows.pipeline, gpt2ja.flows.stages, gpt2ja.flows.config, "
        "gpt2ja.flows.artifacts, gpt2ja.demo; "
        "print(sorted(m for m in ('tensorflow', 'keras', 'torch', 'transformers', 'scrapy', 'fugashi', 'MeCab') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_demo_config_is_the_demo():
    """configs/demo.yaml makes the choices the README shows: sp unigram 3000, seq 128, tiny 120 steps, 3 samples."""
    from gpt2ja.demo import demo_config as load_demo

    cfg = load_demo("data/demo")
    assert (cfg.tokenizer.kind, cfg.tokenizer.model_type, cfg.tokenizer.vocab_size) == (
        "sentencepiece",
        "unigram",
        3000,
    )
    assert (cfg.shards.seq_len, cfg.train.preset, cfg.train.steps, cfg.train.batch_tokens) == (128, "tiny", 120, 2048)
    assert (cfg.generate.prompts, cfg.generate.num, cfg.generate.top_k, cfg.generate.top_p) == (
        ["ある日の暮方の事である。"],
        3,
        40,
        0.9,
    )
    assert (cfg.run_uri, cfg.eval_uri, cfg.export_uri) == (
        "data/demo/runs/tiny-demo",
        "data/demo/runs/tiny-demo/eval",
        "data/demo/runs/tiny-demo/export/hf",
    )
    assert Path(cfg.crawl[0].serve_mirror).resolve() == REPO / "examples" / "aozora-mirror"


@pytest.mark.slow
def test_pipeline_builds_every_stage_then_skips_them(first_run, demo_config):
    from gpt2ja.flows.pipeline import pipeline

    assert not any(_skipped(first_run["outcome"]).values())
    assert first_run["uris"] == {
        "crawl": storage.join(demo_config.root, "raw", "aozora", "demo"),
        "clean": demo_config.clean_uri,
        "tokenizer": demo_config.tokenizer_uri,
        "shards": demo_config.shards_uri,
        "train": demo_config.run_uri,
        "evaluate": demo_config.eval_uri,
        "export": demo_config.export_uri,
    }
    manifests = {s: storage.read_manifest(u) for s, u in first_run["uris"].items()}
    assert manifests["crawl"]["counts"]["documents"] == 36  # as `make demo`: 48 cards, 12 with no readable edition
    assert manifests["crawl"]["counts"]["drops"]["no_edition_readable"] == 12
    # documents keep the mirror's site address, whatever port it was served on: ids and split are stable
    from gpt2ja.corpus.jsonl import read_documents

    urls = [d.url for d in read_documents(first_run["uris"]["crawl"])]
    assert len(urls) == 36 and all(u.startswith("http://mirror.local/cards/") for u in urls)
    assert manifests["clean"]["counts"]["splits"]["validation"]["documents"] > 0
    assert manifests["shards"]["counts"]["shards"] == 10
    assert manifests["train"]["counts"]["steps"] == 10
    # each stage's manifest names the one before it as its input
    for stage, before in (("tokenizer", "clean"), ("train", "shards"), ("evaluate", "train"), ("export", "train")):
        assert manifests[before]["fingerprint"] in [i["fingerprint"] for i in manifests[stage]["inputs"]], stage

    result = json.loads(Path(demo_config.eval_uri, "eval.json").read_text(encoding="utf-8"))
    assert 0 < result["bits_per_character"] < 20 and 0 < result["bits_per_byte"] < result["bits_per_character"]
    assert result["characters"] == manifests["clean"]["counts"]["splits"]["validation"]["characters"]
    samples = [json.loads(line) for line in Path(demo_config.eval_uri, "samples.jsonl").read_text().splitlines()]
    assert [(s["prompt"], s["top_k"], s["top_p"], s["max_chars"]) for s in samples] == [
        ("ある日の暮方の事である。", 40, 0.9, 60)
    ] * 3
    assert all(0 < len(s["text"]) <= 60 for s in samples) and len({s["text"] for s in samples}) == 3
    assert {"eval.json", "samples.jsonl", "loss.png", "report.md"} <= {
        f["path"] for f in manifests["evaluate"]["files"]
    }
    assert manifests["export"]["max_logit_diff"] < 1e-4
    assert {"config.json", "model.safetensors"} <= {f["path"] for f in manifests["export"]["files"]}

    started = time.monotonic()
    state = pipeline(demo_config, return_state=True)
    assert state.is_completed()
    assert all(_skipped(state.result()).values())
    assert _created(first_run["uris"]) == first_run["created"]  # no stage rewrote its manifest
    assert time.monotonic() - started < 60  # no model loaded, no crawl process started

    from prefect import get_client

    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts()}
    assert {
        "crawl-aozora-demo",
        "clean-aozora-demo",
        "tokenizer-sp-unigram-3000",
        "shards-sp3000-128",
        "train-tiny-demo",
        "train-tiny-demo-loss-curve",
        "evaluate-tiny-demo",
        "samples-tiny-demo",
        "export-tiny-demo",
        "pipeline-run",
    } <= keys


@pytest.mark.slow
def test_deleted_or_partial_outputs_are_rebuilt_and_the_rest_skipped(first_run, demo_config):
    from gpt2ja.flows.pipeline import pipeline

    storage.delete(demo_config.clean_uri)  # deleted
    storage.delete(storage.join(demo_config.eval_uri, storage.MANIFEST))  # partial (no manifest)
    outcome = pipeline(demo_config)
    assert _skipped(outcome) == {
        "crawl": True,
        "clean": False,
        "tokenizer": True,
        "shards": True,
        "train": True,
        "evaluate": False,
        "export": True,
    }
    created = _created(first_run["uris"])
    assert created["crawl"] == first_run["created"]["crawl"]
    assert created["clean"] > first_run["created"]["clean"]  # rebuilt
    assert (
        storage.read_manifest(demo_config.clean_uri)["fingerprint"]
        == storage.read_manifest(first_run["uris"]["tokenizer"])["inputs"][0]["fingerprint"]
    )
    assert created["evaluate"] > first_run["created"]["evaluate"]
    # the same checkpoint, texts and seed: the same figures and samples
    assert {
        name: Path(demo_config.eval_uri, name).read_text(encoding="utf-8") for name in ("eval.json", "samples.jsonl")
    } == first_run["evaluation"]


def _shard_files(uri: str) -> dict[str, os.stat_result]:
    return {p.name: p.stat() for p in Path(uri).glob("*.tfrecord")}


# Runs `python -m gpt2ja.flows.pipeline CONFIG` unchanged, with one audit hook (PEP 578) that only watches
# file opens: when the shards stage opens the corpus's validation part while every train shard is
# finished (their completion records exist), the process writes READY and waits there to be killed.
HOLD = """
import os, runpy, sys, time

part, ready, config = os.environ["HOLD_PART"], os.environ["HOLD_READY"], os.environ["HOLD_CONFIG"]
records = os.environ["HOLD_RECORDS"].split(os.pathsep)


def hold(event, args):
    if (event == "open" and isinstance(args[0], str) and os.path.abspath(args[0]) == part
            and all(os.path.exists(r) for r in records)):
        with open(ready, "w"):
            pass
        while True:
            time.sleep(60)


sys.addaudithook(hold)
sys.argv = ["gpt2ja.flows.pipeline", config]
runpy.run_module("gpt2ja.flows.pipeline", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
def test_a_pipeline_killed_in_the_shards_stage_resumes_with_only_the_missing_shards(
    first_run, demo_config, demo_config_path, tmp_path
):
    """SIGKILL the pipeline (a real process) after the train shards are written and before the validation ones.

    The rerun must skip crawl, clean and tokenizer, keep the 8 finished shard files
    untouched (same inode and mtime), write the 2 missing ones, and end with the
    same shard bytes and manifest as the uninterrupted run.
    """
    from prefect.settings import PREFECT_API_URL

    from gpt2ja.flows.pipeline import pipeline

    shards = Path(demo_config.shards_uri)
    reference = storage.read_manifest(str(shards))
    reference_bytes = {p.name: p.read_bytes() for p in shards.glob("*.tfrecord")}
    storage.delete(str(shards))

    part = next(Path(demo_config.clean_uri, "validation").glob("part-*.jsonl.gz"))
    ready = tmp_path / "ready"
    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "TMPDIR": str(tmp_path),
        "HOLD_PART": str(part.resolve()),
        "HOLD_READY": str(ready),
        "HOLD_CONFIG": str(demo_config_path),
        "HOLD_RECORDS": os.pathsep.join(str(shards / "_work" / f"train-{i:05d}.json") for i in range(8)),
    }
    log = tmp_path / "pipeline.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", HOLD], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        while not ready.exists() and proc.poll() is None:
            time.sleep(0.05)
        assert ready.exists(), f"the pipeline never reached the validation shards:\n{log.read_text()[-3000:]}"
        killed_at = _shard_files(str(shards))
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert sorted(killed_at) == [f"train-{i:05d}-of-00008.tfrecord" for i in range(8)]  # some, not all
    assert storage.read_manifest(str(shards)) is None  # partial: no manifest

    outcome = pipeline(demo_config)
    assert _skipped(outcome) == {
        "crawl": True,
        "clean": True,
        "tokenizer": True,
        "shards": False,
        "train": True,
        "evaluate": True,
        "export": True,
    }
    after = _shard_files(str(shards))
    for name, st in killed_at.items():  # the finished shards were kept, not rewritten
        assert (after[name].st_ino, after[name].st_mtime_ns) == (st.st_ino, st.st_mtime_ns), name
    assert sorted(set(after) - set(killed_at)) == [
        "validation-00000-of-00002.tfrecord",
        "validation-00001-of-00002.tfrecord",
    ]
    assert {p.name: p.read_bytes() for p in shards.glob("*.tfrecord")} == reference_bytes
    manifest = storage.read_manifest(str(shards))
    assert (manifest["fingerprint"], manifest["files"], manifest["counts"]) == (
        reference["fingerprint"],
        reference["files"],
        reference["counts"],
    )


@pytest.mark.slow
def test_the_generate_flow_samples_what_the_evaluation_sampled(first_run, demo_config):
    """The on-demand flow and the evaluate stage share gpt2ja.model.generate: same run, settings and seed, same text."""
    from prefect import get_client

    from gpt2ja.flows.stages import generate_flow

    assert generate_flow(demo_config.run_uri, demo_config.generate) == {"uri": demo_config.run_uri, "samples": 3}
    with get_client(sync_client=True) as client:
        [artifact] = [a for a in client.read_artifacts() if a.key == "generate-tiny-demo"]
    evaluated = [json.loads(line) for line in first_run["evaluation"]["samples.jsonl"].splitlines()]
    for sample in evaluated:
        assert sample["prompt"] + sample["text"] in artifact.data


@pytest.mark.slow
def test_a_run_trained_on_other_shards_is_refused(prefect_harness, first_run, demo_config, tmp_path):
    """The train stage would otherwise 'resume' a finished run on new data and call it trained."""
    from gpt2ja.flows.stages import train_flow
    from gpt2ja.infra.stage import StageError

    run = tmp_path / "old-run"
    run.mkdir()
    (run / "hparams.json").write_text(json.dumps({"data": {"fingerprint": "0" * 64}}), encoding="utf-8")
    with pytest.raises(StageError, match=r"^train: run .*old-run was trained on other shards .*choose another run"):
        train_flow(demo_config.shards_uri, str(run), demo_config.train)


@pytest.mark.slow
def test_a_refused_crawl_fails_at_once_with_one_line(prefect_harness, tmp_path):
    from gpt2ja.flows.config import FilesCrawl
    from gpt2ja.flows.stages import crawl_flow
    from gpt2ja.infra.stage import StageError

    (tmp_path / "empty").mkdir()
    started = time.monotonic()
    with pytest.raises(StageError, match=r"^crawl: no usable text in .*empty"):
        crawl_flow(str(tmp_path / "run"), [FilesCrawl(directory=str(tmp_path / "empty"), crawl_id="none")])
    assert time.monotonic() - started < 5  # not retried: the first retry waits 5 s


@pytest.mark.slow
def test_evaluating_an_unfinished_run_is_one_line(prefect_harness, tmp_path):
    from gpt2ja.flows.config import EvaluateSection
    from gpt2ja.flows.stages import evaluate_flow
    from gpt2ja.infra.stage import StageError

    (tmp_path / "run").mkdir()
    with pytest.raises(StageError, match=r"^evaluate: run .*run has no _MANIFEST.json: .*rerun the train stage"):
        evaluate_flow(str(tmp_path / "run"), [str(tmp_path / "run")], str(tmp_path / "run" / "eval"), EvaluateSection())


BASE = (
    "root: x\ncorpus: c\ntokenizer_name: t\ndataset: d\n"
    "crawl: [{source: files, directory: ., crawl_id: f}]\n"
    "tokenizer: {kind: sentencepiece, vocab_size: 3000}\nshards: {seq_len: 128}\n"
)
TRAIN = "train: {preset: tiny, steps: 10, warmup_steps: 2}\n"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("root: [unclosed", "not valid YAML at line 1"),
        ("- just\n- a list\n", "expected a mapping"),
        (
            "root: x\ncorpus: c\ntokenizer_name: t\ndataset: d\ncrawl: []\n"
            "tokenizer: {kind: sentencepiece, vocab_size: 3000}\nshards: {seq_len: 128}\n",
            "crawl:",
        ),
        (BASE.replace("seq_len: 128", "seq_len: 4"), "shards.seq_len:"),
        (
            "root: x\ncorpus: c\ntokenizer_name: t\ndataset: d\n"
            "crawl: [{source: aozora, crawl_id: a, root: y, start_urls: [http://mirror.local/]}]\n"
            "tokenizer: {kind: sentencepiece, vocab_size: 3000}\nshards: {seq_len: 128}\n",
            "root is set once",
        ),
        (BASE + "clean: {dedupe: {}}\n", "unknown clean setting"),
        (BASE + TRAIN, "run: required with a train section"),
        (BASE + "run: r\ntrain: {preset: tiny, steps: 10, warmup_steps: 2, run: elsewhere}\n", "set by the pipeline"),
        (BASE + "run: r\ntrain: {preset: tiny, warmup_steps: 2}\n", "train: steps: required but missing"),
        (BASE + "run: r\ntrain: {preset: tiny, steps: 10, warmup_steps: 10}\n", "must be fewer than steps"),
        (BASE + "run: r\ntrain: {preset: tiny, steps: 10, warmup_steps: 2, stepz: 3}\n", "unknown train setting"),
        (BASE + "evaluate: {}\n", "evaluate: needs a train section"),
        (BASE + "run: r\n" + TRAIN + "generate: {prompts: [a]}\n", "add an evaluate section"),
        (BASE + "run: r\n" + TRAIN + "evaluate: {}\ngenerate: {prompts: [a], top_p: 0}\n", "generate.top_p:"),
        (BASE + "run: r\n" + TRAIN + "export: {format: onnx}\n", "export.format:"),
    ],
)
def test_a_bad_config_gives_one_clear_line(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    msg = str(err.value)
    assert msg.startswith(f"config {path}: ") and expected in msg and "\n" not in msg, msg


def test_a_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(str(tmp_path / "nope.yaml"))
