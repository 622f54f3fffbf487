"""The stage contract (gpt2ja/infra/stage.py): locks, verified skips, publish last, relocatable references."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from gpt2ja.infra import stage, storage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _builder(out: str, texts: dict[str, str], config: dict, calls: list | None = None, started=None, go=None):
    """A tiny stage: writes ``texts`` into ``out``; returns (fingerprint, build)."""
    fp = storage.fingerprint(config)

    def build() -> dict:
        if calls is not None:
            calls.append(1)
        for name, text in texts.items():
            storage.write_text(storage.join(out, name), text)
            if started is not None:
                started.set()
                go.wait(30)
        files = [storage.file_info(storage.join(out, n), root=out) for n in texts]
        return storage.build_manifest(
            stage="demo", config=config, counts={"files": len(files)}, files=files, timings={}
        )

    return fp, build


def test_build_then_verified_skip_then_rebuild_of_a_damaged_file(storage_root):
    out = storage.join(storage_root, "a")
    calls: list = []
    fp, build = _builder(out, {"x.txt": "あいう", "sub/y.txt": "えお"}, {"n": 1}, calls)
    first = stage.run_stage("demo", out, fingerprint=fp, build=build)
    assert not first.skipped and first.manifest["refs"] == "relative"
    assert stage.run_stage("demo", out, fingerprint=fp, build=build).skipped
    assert len(calls) == 1
    # a file cut short after the fact: the skip check sees the size and rebuilds, naming the file
    storage.write_text(storage.join(out, "x.txt"), "あ")
    lines: list[str] = []
    again = stage.run_stage("demo", out, fingerprint=fp, build=build, log=lines.append)
    assert not again.skipped and len(calls) == 2
    assert "x.txt has 3 bytes, the manifest says 9" in lines[0]
    # same size, other bytes: only --verify (deep) reads the checksums
    storage.write_text(storage.join(out, "x.txt"), "かきく")
    assert stage.run_stage("demo", out, fingerprint=fp, build=build).skipped
    deep = stage.run_stage("demo", out, fingerprint=fp, build=build, deep=True, log=lines.append)
    assert not deep.skipped and "x.txt does not match its sha256" in lines[-1]
    assert storage.read_text(storage.join(out, "x.txt")) == "あいう"
    assert stage.verify(out, fp, deep=True)[1] == []


def test_a_failed_build_leaves_no_manifest_and_no_lock(tmp_path):
    out = str(tmp_path / "a")
    fp, build = _builder(out, {"x.txt": "1"}, {"n": 1})
    stage.run_stage("demo", out, fingerprint=fp, build=build)

    def broken() -> dict:
        storage.write_text(storage.join(out, "x.txt"), "half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        stage.run_stage("demo", out, fingerprint=storage.fingerprint({"n": 2}), build=broken)
    assert storage.read_manifest(out) is None  # withdrawn before the first byte changed
    fp2, build2 = _builder(out, {"x.txt": "2"}, {"n": 2})
    assert not stage.run_stage("demo", out, fingerprint=fp2, build=build2).skipped  # the lock was released


def test_unlisted_files_are_pruned_and_keep_prefixes_stay(tmp_path):
    out = str(tmp_path / "a")
    storage.write_text(storage.join(out, "old-part.txt"), "from an earlier layout")
    storage.write_text(storage.join(out, "_work", "state.json"), "{}")
    fp, build = _builder(out, {"x.txt": "1"}, {"n": 1})
    stage.run_stage("demo", out, fingerprint=fp, build=build, keep=("_work/",))
    assert sorted(os.listdir(out)) == ["_MANIFEST.json", "_work", "x.txt"]


def test_a_second_writer_gets_one_line_naming_the_holder_or_waits(tmp_path):
    out = str(tmp_path / "a")
    started, go = threading.Event(), threading.Event()
    fp, slow = _builder(out, {"x.txt": "1"}, {"n": 1}, started=started, go=go)
    result: dict = {}
    t = threading.Thread(
        target=lambda: result.setdefault("first", stage.run_stage("demo", out, fingerprint=fp, build=slow))
    )
    t.start()
    assert started.wait(30)
    calls: list = []
    _, counted = _builder(out, {"x.txt": "1"}, {"n": 1}, calls)
    with pytest.raises(stage.LockHeld) as err:
        stage.run_stage("demo", out, fingerprint=fp, build=counted, wait_s=0)
    message = str(err.value)
    assert f"pid {os.getpid()}" in message and "since" in message and "\n" not in message
    # a waiting writer gets the lock when the first is done and finds the output up to date
    waiter = threading.Thread(
        target=lambda: result.setdefault(
            "second", stage.run_stage("demo", out, fingerprint=fp, build=counted, wait_s=60)
        )
    )
    waiter.start()
    go.set()
    t.join(60)
    waiter.join(60)
    assert not result["first"].skipped and result["second"].skipped and calls == []


def test_the_lock_of_a_killed_writer_is_taken_over_and_said_so(tmp_path):
    out = str(tmp_path / "a")
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {REPO!r})
        from gpt2ja.infra import stage
        stage.OutputLock({out!r}, "demo").acquire()
        print("locked", flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(stage.LockHeld, match=f"pid {proc.pid}"):
            stage.OutputLock(out, "demo").acquire(wait_s=0)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    lines: list[str] = []
    lock = stage.OutputLock(out, "demo", log=lines.append).acquire(wait_s=0)
    lock.release()
    assert len(lines) == 1 and f"took over the lock of pid {proc.pid}" in lines[0] and "gone" in lines[0]


def test_outputs_that_are_or_hold_or_sit_inside_an_input_are_refused(tmp_path):
    root = str(tmp_path)
    inp = os.path.join(root, "clean", "c")
    fp, build = _builder(inp, {"x.txt": "1"}, {"n": 1})
    stage.run_stage("clean", inp, fingerprint=fp, build=build)
    for out, words in (
        (inp, "is its input"),
        (os.path.join(inp, "sub"), "is inside its input"),
        (os.path.join(root, "clean"), "holds its input"),
    ):
        with pytest.raises(stage.StageError, match=words):
            stage.run_stage("shards", out, fingerprint=fp, build=build, inputs=[inp])
    assert storage.read_manifest(inp)["stage"] == "demo"  # untouched
    # a run's evaluation lives inside the run by design
    run = os.path.join(root, "runs", "r")
    rfp, rbuild = _builder(run, {"hparams.json": "{}"}, {"n": 1})
    manifest = rbuild()
    manifest["stage"] = "train"
    stage.run_stage("train", run, fingerprint=rfp, build=lambda: manifest)
    stage.check_inputs("evaluate", os.path.join(run, "eval"), [run])
    with pytest.raises(stage.StageError, match="inside its input"):
        stage.check_inputs("evaluate", os.path.join(run, "checkpoints"), [run])


def test_input_references_are_relative_and_resolve_after_a_move(tmp_path):
    root = tmp_path / "one"
    inp, out = str(root / "clean" / "c"), str(root / "datasets" / "c" / "t")
    fp, build = _builder(inp, {"x.txt": "1"}, {"n": 1})
    stage.run_stage("clean", inp, fingerprint=fp, build=build)
    m_in = storage.read_manifest(inp)

    def shards() -> dict:
        storage.write_text(storage.join(out, "y.txt"), "2")
        return storage.build_manifest(
            stage="shards",
            config={},
            inputs=[m_in],
            counts={},
            files=[storage.file_info(storage.join(out, "y.txt"), root=out)],
            timings={},
            extra={"corpus": {"uri": storage.relative_ref(inp, out)}},
        )

    stage.run_stage("shards", out, fingerprint=storage.fingerprint({}, [m_in]), build=shards, inputs=[inp])
    os.rename(root, tmp_path / "two")
    moved = storage.read_manifest(str(tmp_path / "two" / "datasets" / "c" / "t"))
    assert moved["inputs"][0]["uri"] == "../../../clean/c"
    assert stage.input_uri(moved, moved["inputs"][0]["uri"]) == str(tmp_path / "two" / "clean" / "c")
    assert storage.read_manifest(stage.input_uri(moved, moved["corpus"]["uri"]))["stage"] == "demo"


@pytest.mark.parametrize(
    "target,base,ref",
    [
        ("gs://b/r/clean/x", "gs://b/r/datasets/x/t", "../../../clean/x"),
        ("gs://other/clean/x", "gs://b/r/datasets/x", "gs://other/clean/x"),
        ("gs://b/r/runs/a", "gs://b/r/runs/a/eval", ".."),
    ],
)
def test_gcs_references(target, base, ref):
    assert storage.relative_ref(target, base) == ref
    assert storage.resolve_ref(ref, base) == target


def test_gcs_lock_one_holder_takeover_of_a_silent_one_and_a_lost_lock(gcs_proxy_root):
    out = storage.join(gcs_proxy_root, "shards", "s")
    first = stage.OutputLock(out, "shards", heartbeat_s=3600).acquire(wait_s=0)
    holder = json.loads(storage.read_bytes(stage.lock_uri(out)))
    assert holder["pid"] == os.getpid() and holder["stage"] == "shards"
    with pytest.raises(stage.LockHeld, match="is being built by pid"):
        stage.OutputLock(out, "shards").acquire(wait_s=0)
    # two machines racing for a lock whose holder went silent: exactly one wins (ifGenerationMatch)
    silent = {**holder, "host": "elsewhere", "heartbeat": "2026-01-01T00:00:00Z"}  # no pid check: another host
    first._generation = storage.write_if_generation(stage.lock_uri(out), json.dumps(silent).encode(), first._generation)
    lines: list[str] = []
    takers = [stage.OutputLock(out, "shards", stale_s=60, heartbeat_s=3600, log=lines.append) for _ in range(4)]
    won, errors = [], []

    def take(lock):
        try:
            won.append(lock.acquire(wait_s=0))
        except stage.LockHeld as err:
            errors.append(err)

    threads = [threading.Thread(target=take, args=(t,)) for t in takers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(won) == 1 and len(errors) == 3 and len(lines) == 1 and "took over the lock" in lines[0]
    # the silent first holder finds its lock renewed by another at its next heartbeat: it publishes nothing
    first.heartbeat_s = 0.01
    first._stop.clear()
    first._heartbeat()
    assert first.lost
    with pytest.raises(stage.StageError, match="took over this build's lock"):
        first.check()
    won[0].release()
    assert storage.read_generation(stage.lock_uri(out)) is None


def test_what_a_killed_writer_left_is_swept_by_the_next_run(tmp_path):
    """Temp files in the output and scratch dirs of dead processes go; a live process's scratch stays."""
    import tempfile

    out = str(tmp_path / "a")
    os.makedirs(os.path.join(out, "sub"))
    leftover = os.path.join(out, "sub", ".part-00001.jsonl.gz.x1y2.tmp")
    open(leftover, "w").close()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = tempfile.mkdtemp(prefix=f"gpt2ja-shards-{dead.pid}-")
    mine = stage.scratch_dir("shards")
    try:
        fp, build = _builder(out, {"x.txt": "1"}, {"n": 1})
        stage.run_stage("demo", out, fingerprint=fp, build=build)
        assert not os.path.exists(leftover) and not os.path.exists(gone) and os.path.isdir(mine)
    finally:
        for d in (gone, mine):
            if os.path.isdir(d):
                os.rmdir(d)
