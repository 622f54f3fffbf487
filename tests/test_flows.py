"""The Prefect flows over the bundled Aozora mirror: build, skip on rerun, rebuild a deleted stage.

One full pipeline run (about 40 s on 2 cores) is shared by the module; the other
runs only skip or rebuild the clean stage.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.config import ConfigError, load_config
from infra import storage

REPO = Path(__file__).resolve().parent.parent
STAGES = ("crawl", "clean", "tokenizer", "shards")


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield


def _uris(outcome: dict) -> dict:
    return {"crawl": outcome["crawl"][0]["uri"], **{s: outcome[s]["uri"] for s in STAGES[1:]}}


def _skipped(outcome: dict) -> dict:
    return {"crawl": outcome["crawl"][0]["skipped"], **{s: outcome[s]["skipped"] for s in STAGES[1:]}}


def _created(uris: dict) -> dict:
    return {s: storage.read_manifest(u)["created_at"] for s, u in uris.items()}


@pytest.fixture(scope="module")
def demo_config(tmp_path_factory):
    data = yaml.safe_load((REPO / "configs" / "pipeline-demo.yaml").read_text(encoding="utf-8"))
    data["root"] = str(tmp_path_factory.mktemp("pipeline") / "run")
    data["crawl"][0]["serve_mirror"] = str(REPO / "examples" / "aozora-mirror")
    path = tmp_path_factory.getbasetemp() / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return load_config(str(path))


@pytest.fixture(scope="module")
def first_run(prefect_harness, demo_config):
    from flows.pipeline import pipeline

    state = pipeline(demo_config, return_state=True)
    assert state.is_completed(), state
    outcome = state.result()
    uris = _uris(outcome)
    return {"outcome": outcome, "uris": uris, "created": _created(uris)}


def test_importing_the_flows_imports_no_heavy_library():
    code = ("import sys, flows.pipeline, flows.stages, flows.config; "
            "print(sorted(m for m in ('tensorflow', 'scrapy', 'fugashi', 'MeCab') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_pipeline_builds_every_stage_then_skips_them(first_run, demo_config):
    from flows.pipeline import pipeline

    assert not any(_skipped(first_run["outcome"]).values())
    assert first_run["uris"] == {"crawl": storage.join(demo_config.root, "raw", "aozora", "demo"),
                                 "clean": demo_config.clean_uri, "tokenizer": demo_config.tokenizer_uri,
                                 "shards": demo_config.shards_uri}
    manifests = {s: storage.read_manifest(u) for s, u in first_run["uris"].items()}
    assert manifests["crawl"]["counts"]["documents"] == 36  # as `make demo`: 48 cards, 12 with no readable edition
    assert manifests["crawl"]["counts"]["drops"]["no_edition_readable"] == 12
    assert manifests["clean"]["counts"]["splits"]["validation"]["documents"] > 0
    assert manifests["shards"]["counts"]["shards"] == 10

    state = pipeline(demo_config, return_state=True)
    assert state.is_completed()
    assert all(_skipped(state.result()).values())
    assert _created(first_run["uris"]) == first_run["created"]  # no stage rewrote its manifest

    from prefect import get_client

    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts()}
    assert {"crawl-aozora-demo", "clean-aozora-demo", "tokenizer-sp-unigram-3000", "shards-sp3000-128"} <= keys


@pytest.mark.slow
def test_deleted_clean_output_is_rebuilt_and_the_crawl_skipped(first_run, demo_config):
    from flows.pipeline import pipeline

    storage.delete(demo_config.clean_uri)
    outcome = pipeline(demo_config)
    assert _skipped(outcome) == {"crawl": True, "clean": False, "tokenizer": True, "shards": True}
    created = _created(first_run["uris"])
    assert created["crawl"] == first_run["created"]["crawl"]
    assert created["clean"] > first_run["created"]["clean"]  # rebuilt
    assert storage.read_manifest(demo_config.clean_uri)["fingerprint"] == \
        storage.read_manifest(first_run["uris"]["tokenizer"])["inputs"][0]["fingerprint"]


def test_a_refused_crawl_fails_at_once_with_one_line(prefect_harness, tmp_path):
    import time

    from flows.config import FilesCrawl
    from flows.stages import StageError, crawl_flow

    (tmp_path / "empty").mkdir()
    started = time.monotonic()
    with pytest.raises(StageError, match=r"^crawl: no usable text in .*empty"):
        crawl_flow(str(tmp_path / "run"), [FilesCrawl(directory=str(tmp_path / "empty"), crawl_id="none")])
    assert time.monotonic() - started < 5  # not retried: the first retry waits 5 s


@pytest.mark.parametrize("text, expected", [
    ("root: [unclosed", "not valid YAML at line 1"),
    ("- just\n- a list\n", "expected a mapping"),
    ("root: x\ncorpus: c\ntokenizer_name: t\ndataset: d\ncrawl: []\n"
     "tokenizer: {kind: sentencepiece, vocab_size: 3000}\nshards: {seq_len: 128}\n", "crawl:"),
    ("root: x\ncorpus: c\ntokenizer_name: t\ndataset: d\n"
     "crawl: [{source: files, directory: ., crawl_id: f}]\n"
     "tokenizer: {kind: sentencepiece, vocab_size: 3000}\nshards: {seq_len: 4}\n", "shards.seq_len:"),
    ("root: x\ncorpus: c\ntokenizer_name: t\ndataset: d\n"
     "crawl: [{source: aozora, crawl_id: a, root: y, start_urls: [http://mirror.local/]}]\n"
     "tokenizer: {kind: sentencepiece, vocab_size: 3000}\nshards: {seq_len: 128}\n", "root is set once"),
    ("root: x\ncorpus: c\ntokenizer_name: t\ndataset: d\n"
     "crawl: [{source: files, directory: ., crawl_id: f}]\nclean: {dedupe: {}}\n"
     "tokenizer: {kind: sentencepiece, vocab_size: 3000}\nshards: {seq_len: 128}\n", "unknown clean setting"),
])
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
