"""Two writers on one output, started as users start them (the CLI, in processes of their own).

For every pair of writers that can meet on one output, one is held inside its
stage with its lock taken (``GPT2JA_STAGE_HOLD``, gpt2ja/infra/stage.py) while the
other starts: the second refuses with one line naming the holder (or, told to
wait, waits and then builds), and the artifact that is published verifies
against its manifest byte for byte (sha256 of every file).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpt2ja.infra import stage, storage
from tests.corpora import ZIPS

pytestmark = pytest.mark.slow


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "gpt2ja", *args]


@pytest.fixture
def procs():
    """Popen objects started by a test; killed if the test ends before them."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()


def _hold(procs, cmd: list[str], name: str, gate: Path, env: dict | None = None) -> subprocess.Popen:
    """Start ``cmd`` and return once its stage ``name`` holds its lock (it waits there for ``gate``)."""
    env = {**os.environ, **(env or {}), "GPT2JA_STAGE_HOLD": f"{name}={gate}"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    procs.append(proc)
    held = Path(str(gate) + ".held")
    while not held.exists():
        if proc.poll() is not None:
            pytest.fail(f"{cmd} ended before its stage was held:\n{proc.stdout.read()}")
        time.sleep(0.05)
    return proc


def _finish(proc: subprocess.Popen, gate: Path) -> str:
    gate.touch()
    out, _ = proc.communicate()
    assert proc.returncode == 0, out
    return out


def _refused(cmd: list[str], holder: subprocess.Popen) -> str:
    """Run ``cmd`` to its end: it must refuse in one line that names the holder's pid."""
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "GPT2JA_LOCK_WAIT_S": "0"})
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 1, done.stderr
    assert len(errors) == 1 and f"is being built by pid {holder.pid}" in errors[0], done.stderr
    assert "Traceback" not in done.stderr
    return errors[0]


def _verifies(out: str) -> dict:
    manifest, problems = stage.verify(out, deep=True)
    assert problems == [], problems
    return manifest


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """Two text folders, their crawls, two clean corpora and two tokenizers, built once for the module."""
    from gpt2ja.corpus.clean import CleanConfig, run_clean
    from gpt2ja.crawler.files import crawl_files
    from gpt2ja.tokenization.train import train_tokenizer

    base = tmp_path_factory.mktemp("world")
    dirs = {}
    for name, zips in (("all", ZIPS), ("half", ZIPS[: len(ZIPS) // 2])):
        d = base / "text" / name
        d.mkdir(parents=True)
        for z in zips:
            shutil.copy(z, d / z.name)
        dirs[name] = str(d)
    root = str(base / "root")
    raw = {name: crawl_files(d, root, f"c-{name}") for name, d in dirs.items()}
    # ids of a files crawl hash the file's path (a temp dir here): a large validation share keeps that split
    # non-empty whatever the path (the shards need one)
    clean = {
        name: run_clean(
            CleanConfig(
                inputs=[raw[name]],
                out=str(base / "root" / "clean" / name),
                workers=1,
                split={"validation_fraction": 0.3},
            )
        )
        for name in raw
    }
    toks = {
        "bytes": train_tokenizer(clean["all"], "bytes", None, str(base / "root" / "tokenizers" / "bytes")),
        "sp": train_tokenizer(clean["all"], "sentencepiece", 3000, str(base / "root" / "tokenizers" / "sp")),
    }
    return {"base": base, "root": root, "dirs": dirs, "raw": raw, "clean": clean, "tokenizers": toks}


def test_two_crawls_of_files_into_one_output(world, procs, tmp_path):
    gate = tmp_path / "go"
    first = _hold(
        procs, _cli("crawl", "files", world["dirs"]["all"], "--root", str(tmp_path), "--crawl-id", "x"), "crawl", gate
    )
    _refused(_cli("crawl", "files", world["dirs"]["half"], "--root", str(tmp_path), "--crawl-id", "x"), first)
    _finish(first, gate)
    manifest = _verifies(str(tmp_path / "raw" / "files" / "x"))
    assert manifest["config"]["directory"] == world["dirs"]["all"]
    assert manifest["counts"]["documents"] == len(ZIPS)


def test_two_cleans_with_other_inputs_into_one_output(world, procs, tmp_path):
    out, gate = str(tmp_path / "clean"), tmp_path / "go"
    first = _hold(procs, _cli("clean", "--in", world["raw"]["half"], "--out", out, "--workers", "1"), "clean", gate)
    _refused(_cli("clean", "--in", world["raw"]["all"], "--out", out, "--workers", "1"), first)
    _finish(first, gate)
    manifest = _verifies(out)
    assert [stage.input_uri(manifest, i["uri"]) for i in manifest["inputs"]] == [world["raw"]["half"]]
    assert manifest["counts"]["documents_in"] == len(ZIPS) // 2


def test_a_waiting_writer_builds_after_the_first_and_its_artifact_verifies(world, procs, tmp_path):
    out, gate = str(tmp_path / "clean"), tmp_path / "go"
    first = _hold(procs, _cli("clean", "--in", world["raw"]["half"], "--out", out, "--workers", "1"), "clean", gate)
    second = subprocess.Popen(
        _cli("clean", "--in", world["raw"]["all"], "--out", out, "--workers", "1"),
        env={**os.environ, "GPT2JA_LOCK_WAIT_S": "600"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    procs.append(second)
    _finish(first, gate)
    log, _ = second.communicate()
    assert second.returncode == 0, log
    manifest = _verifies(out)
    assert manifest["counts"]["documents_in"] == len(ZIPS)  # the second writer's build, whole


def test_two_tokenizer_trainings_into_one_output(world, procs, tmp_path):
    out, gate = str(tmp_path / "tok"), tmp_path / "go"
    first = _hold(
        procs,
        _cli("tokenizer", "train", "--corpus", world["clean"]["all"], "--vocab-size", "3000", "--out", out),
        "tokenizer",
        gate,
    )
    _refused(_cli("tokenizer", "train", "--corpus", world["clean"]["all"], "--kind", "bytes", "--out", out), first)
    _finish(first, gate)
    assert _verifies(out)["counts"]["vocab_size"] == 3000


def test_two_shards_with_other_tokenizers_into_one_output(world, procs, tmp_path):
    out, gate = str(tmp_path / "shards"), tmp_path / "go"
    corpus, toks = world["clean"]["all"], world["tokenizers"]
    first = _hold(
        procs,
        _cli(
            "shards", "--corpus", corpus, "--tokenizer", toks["sp"], "--seq-len", "64", "--out", out, "--workers", "1"
        ),
        "shards",
        gate,
    )
    _refused(
        _cli(
            "shards",
            "--corpus",
            corpus,
            "--tokenizer",
            toks["bytes"],
            "--seq-len",
            "64",
            "--out",
            out,
            "--workers",
            "1",
        ),
        first,
    )
    _finish(first, gate)
    manifest = _verifies(out)
    assert stage.input_uri(manifest, manifest["tokenizer"]["uri"]) == toks["sp"]
    assert manifest["tokenizer"]["kind"] == "sentencepiece"


def test_a_rebuilt_input_is_not_published_over(world, procs, tmp_path):
    """A stage and a rerun of the stage before it: shards reading a corpus that clean rebuilds meanwhile."""
    corpus = str(tmp_path / "clean")
    shutil.copytree(world["clean"]["all"], corpus)
    out, gate = str(tmp_path / "shards"), tmp_path / "go"
    reader = _hold(
        procs,
        _cli(
            "shards",
            "--corpus",
            corpus,
            "--tokenizer",
            world["tokenizers"]["bytes"],
            "--seq-len",
            "64",
            "--out",
            out,
            "--workers",
            "1",
        ),
        "shards",
        gate,
    )
    rebuilt = subprocess.run(
        _cli(
            "clean",
            "--in",
            world["raw"]["half"],
            "--out",
            corpus,
            "--workers",
            "1",
            "--set",
            "split.validation_fraction=0.3",
        ),
        capture_output=True,
        text=True,
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    gate.touch()
    log, _ = reader.communicate()
    assert reader.returncode == 1 and "was rebuilt while this stage read it" in log, log
    assert storage.read_manifest(out) is None  # nothing published from a corpus that changed underneath
    _verifies(corpus)


def test_outputs_equal_to_an_input_are_refused_and_the_input_is_kept(world, tmp_path):
    crawl, corpus = str(tmp_path / "raw"), str(tmp_path / "clean")
    shutil.copytree(world["raw"]["half"], crawl)
    shutil.copytree(world["clean"]["all"], corpus)
    before = {uri: storage.read_manifest(uri) for uri in (crawl, corpus)}
    for cmd in (
        _cli("clean", "--in", crawl, "--out", crawl),
        _cli(
            "shards",
            "--corpus",
            corpus,
            "--tokenizer",
            world["tokenizers"]["bytes"],
            "--seq-len",
            "64",
            "--out",
            corpus,
        ),
    ):
        done = subprocess.run(cmd, capture_output=True, text=True)
        assert done.returncode == 1 and "is its input" in done.stderr and "Traceback" not in done.stderr
    for uri, manifest in before.items():
        assert storage.read_manifest(uri) == manifest
        _verifies(uri)


def test_a_damaged_shard_is_rebuilt_not_re_recorded(world, tmp_path):
    """A shard damaged after the fact, the manifest deleted, the stage rerun: the file is rebuilt."""
    from gpt2ja.tokenization.shards import ShardsConfig, write_shards

    out = str(tmp_path / "shards")
    cfg = ShardsConfig(seq_len=64, workers=1)
    write_shards(world["clean"]["all"], world["tokenizers"]["bytes"], out, cfg)
    good = _verifies(out)
    victim = os.path.join(out, good["files"][0]["path"])
    data = bytearray(Path(victim).read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    Path(victim).write_bytes(bytes(data))
    os.unlink(os.path.join(out, storage.MANIFEST))
    write_shards(world["clean"]["all"], world["tokenizers"]["bytes"], out, cfg)
    again = _verifies(out)
    assert again["files"][0]["sha256"] == good["files"][0]["sha256"]  # rebuilt to the same bytes


def test_two_pipelines_on_one_root(procs, tmp_path):
    """A scheduled refresh meeting a run started from the UI: two `gpt2ja run` of one config at once."""
    from tests.corpora import data_pipeline_config

    path = data_pipeline_config(tmp_path)
    gate = tmp_path / "go"
    first = _hold(procs, _cli("run", str(path)), "clean", gate)  # its crawl is published; its clean is held
    _refused(_cli("run", str(path)), first)
    _finish(first, gate)
    root = tmp_path / "root"
    for uri in (
        f"{root}/raw/aozora/demo",
        f"{root}/clean/aozora-demo",
        f"{root}/tokenizers/sp-unigram-3000",
        f"{root}/datasets/aozora-demo/sp3000-128",
    ):
        _verifies(uri)
    again = subprocess.run(_cli("run", str(path)), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "skipped (up to date): crawl, clean, tokenizer, shards" in again.stdout + again.stderr
