"""A ``gs://`` run copied to its bucket as it trains (gpt2ja.model.run_sync), on the GCS emulator.

The bucket is reached through tests/gcs_precondition_proxy.py, a real HTTP
proxy that records the object name of every upload in order: the tests count
uploads per object and check their order (a checkpoint's index after its
files). The syncer tests write a staging directory by hand (no TensorFlow);
the training test runs the tiny preset on real shards for 8 steps, looks at the
bucket from its progress lines while it trains, resumes it from the bucket
alone and loads it back.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from gpt2ja.infra import storage
from gpt2ja.model import runs
from gpt2ja.model.run_sync import RunSync


def write(path: Path, data: bytes, *, append: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab" if append else "wb") as f:
        f.write(data)


def remote(run: str) -> dict[str, int]:
    """``{run-relative path: size}`` of the run's objects in the bucket."""
    return {uri[len(run) + 1 :]: size for uri, size in storage.list_sizes(run).items()}


def object_name(run: str, rel: str) -> str:
    return f"{run.split('/', 3)[3]}/{rel}"  # gs://bucket/p-…/r + rel → p-…/r/rel


def uploads(proxy, run: str) -> list[str]:
    """The run-relative paths uploaded through the proxy so far, in order."""
    prefix = object_name(run, "")
    return [name[len(prefix) :] for name in proxy.uploads if name.startswith(prefix)]


def staging(root: Path) -> Path:
    """A run's staging directory as training leaves it before its first log step."""
    write(root / runs.HPARAMS, b'{"model": {}}\n')
    write(root / runs.TOKENIZER_DIR / "tokenizer.json", b"{}")
    write(root / runs.TOKENIZER_DIR / storage.MANIFEST, b"{}")
    write(root / runs.TENSORBOARD_DIR / "train" / "events.out.tfevents.1.host.1.v2", b"header;")
    return root


def checkpoint(root: Path, step: int) -> None:
    """What training's save writes (gpt2ja.model.checkpoint, keep 1): the checkpoint's file, then the index naming it,
    then the older checkpoint pruned."""
    from gpt2ja.model import checkpoint as ckpt

    ckpt.save(
        str(root / runs.CHECKPOINT_DIR),
        step,
        {"model/w": np.full(250 + step, step, np.float32)},
        examples=8 * step,
        backend="jax",
        keep=1,
    )


def test_logs_go_up_when_they_change_and_each_checkpoint_file_once(gcs_proxy_root, gcs_precondition_proxy, tmp_path):
    run, proxy = f"{gcs_proxy_root}/r", gcs_precondition_proxy
    local = staging(tmp_path / "staging")
    metrics, events = local / runs.METRICS, local / runs.TENSORBOARD_DIR / "train" / "events.out.tfevents.1.host.1.v2"
    write(metrics, b'{"step": 1}\n')
    sync = RunSync(str(local), run, min_rewrite_s=0)
    sync.sync_logs()  # waits for the first round (started by the constructor); nothing changed since
    assert set(remote(run)) == {
        runs.HPARAMS,
        runs.METRICS,
        "tokenizer/tokenizer.json",
        "tokenizer/_MANIFEST.json",
        "tensorboard/train/events.out.tfevents.1.host.1.v2",
    }
    sent = uploads(proxy, run)
    assert sent.index("tokenizer/_MANIFEST.json") > sent.index("tokenizer/tokenizer.json")  # manifests last

    write(metrics, b'{"step": 2}\n', append=True)
    write(events, b"scalars;", append=True)
    sync.sync_logs()
    sync.sync_logs()  # waits for the round the first call started
    assert storage.read_text(storage.join(run, runs.METRICS)).splitlines() == ['{"step": 1}', '{"step": 2}']
    assert (
        storage.read_bytes(storage.join(run, "tensorboard/train/events.out.tfevents.1.host.1.v2")) == b"header;scalars;"
    )

    checkpoint(local, 2)
    sync.sync_checkpoint()
    checkpoint(local, 4)  # keep 1 prunes ckpt-2
    sync.sync_checkpoint()
    sync.close()

    counts = Counter(uploads(proxy, run))
    assert counts[runs.METRICS] == counts["tensorboard/train/events.out.tfevents.1.host.1.v2"] == 2
    assert counts[runs.HPARAMS] == counts["tokenizer/tokenizer.json"] == 1  # unchanged: not sent again
    for step in (2, 4):
        assert counts[f"checkpoints/ckpt-{step}.npz"] == 1
    assert counts["checkpoints/checkpoint"] == 2
    sent = uploads(proxy, run)
    last_index = len(sent) - 1 - sent[::-1].index("checkpoints/checkpoint")
    assert last_index > sent.index("checkpoints/ckpt-4.npz")  # the index after its file
    assert {rel for rel in remote(run) if rel.startswith("checkpoints/")} == {
        "checkpoints/checkpoint",
        "checkpoints/ckpt-4.npz",
    }

    # another machine resumes the run from the bucket: what it downloaded and never rewrites is not sent again
    other = tmp_path / "other"
    runs.download(run, str(other))
    before = len(uploads(proxy, run))
    checkpoint(other, 6)  # prunes the downloaded ckpt-4
    RunSync(str(other), run, min_rewrite_s=0).close()
    again = uploads(proxy, run)[before:]
    assert not [rel for rel in again if rel.startswith(("checkpoints/ckpt-4", "tensorboard/"))], again
    assert {"checkpoints/ckpt-6.npz", "checkpoints/checkpoint"} <= set(again)
    assert not any(rel.startswith("checkpoints/ckpt-4") for rel in remote(run))  # pruned there too


def test_a_log_changed_again_too_soon_waits_for_a_later_round_or_the_checkpoint(
    gcs_proxy_root, gcs_precondition_proxy, tmp_path
):
    run, proxy = f"{gcs_proxy_root}/r", gcs_precondition_proxy
    local = staging(tmp_path / "staging")
    sync = RunSync(str(local), run, min_rewrite_s=3600)  # GCS: about one write per second to one object
    write(local / runs.METRICS, b'{"step": 1}\n')
    sync.sync_logs()
    sync.sync_logs()
    assert storage.exists(storage.join(run, runs.METRICS))  # a new file goes up at once
    write(local / runs.METRICS, b'{"step": 2}\n', append=True)
    sync.sync_logs()
    sync.sync_logs()
    assert Counter(uploads(proxy, run))[runs.METRICS] == 1
    sync.sync_checkpoint()  # a checkpoint sends every change: the bucket then holds the run as of that step
    assert Counter(uploads(proxy, run))[runs.METRICS] == 2
    assert len(storage.read_text(storage.join(run, runs.METRICS)).splitlines()) == 2
    sync.close()


def test_a_failed_upload_is_raised_by_the_next_sync_as_one_line(gcs_proxy_root, gcs_precondition_proxy, tmp_path):
    run, proxy = f"{gcs_proxy_root}/r", gcs_precondition_proxy
    local = staging(tmp_path / "staging")
    write(local / runs.METRICS, b'{"step": 1}\n')
    proxy.refused.add(object_name(run, runs.METRICS))  # the bucket answers 403, as without write permission
    sync = RunSync(str(local), run)  # its first round fails in the background
    with pytest.raises(storage.StorageError) as caught:
        sync.sync_logs()
    message = str(caught.value)
    assert "\n" not in message and f"run {run}: uploading {runs.METRICS} failed" in message
    assert "permission denied" in message and "resume" in message
    proxy.refused.clear()
    sync.close()
    assert storage.exists(storage.join(run, runs.METRICS))


def test_readers_fetch_into_their_own_cache_and_name_a_checkpoint_whose_files_are_gone(gcs_emulator, tmp_path):
    run = f"gs://{gcs_emulator.bucket}/fetch-{uuid.uuid4().hex[:8]}/r"
    storage.upload_dir(str(staging(tmp_path / "staging")), run)
    cache = Path(runs.fetch(run))
    assert cache == Path(runs.cache_dir(run)) != Path(runs.local_dir(run))  # never training's staging directory
    assert not (cache / runs.CHECKPOINT_DIR / "checkpoint").exists()  # before the first checkpoint: nothing to load

    checkpoint(tmp_path / "staging", 2)
    storage.upload_dir(str(tmp_path / "staging"), run)
    runs.fetch(run)
    assert sorted(p.name for p in (cache / runs.CHECKPOINT_DIR).iterdir()) == ["checkpoint", "ckpt-2.npz"]

    storage.delete(storage.join(run, runs.CHECKPOINT_DIR, "ckpt-2.npz"))
    shutil.rmtree(cache)
    with pytest.raises(storage.StorageError) as caught:
        runs.fetch(run)
    assert "\n" not in str(caught.value) and "names checkpoint ckpt-2.npz, which is not in the bucket" in str(
        caught.value
    )
    shutil.rmtree(cache)


# ----------------------------------------------------------------- training (TensorFlow)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    pytest.importorskip("tensorflow")
    from tests.test_model_train import make_shards

    return make_shards(tmp_path_factory.mktemp("gcs-run-data"))


@pytest.mark.slow
def test_a_gcs_run_is_readable_while_it_trains_and_resumes_from_the_bucket(
    shards, gcs_proxy_root, gcs_precondition_proxy
):
    """Logs in the bucket before the first checkpoint, each checkpoint file uploaded once (pruned ones deleted),
    the newest checkpoint loaded mid-run, a resume from the bucket alone, the run loaded after."""
    from gpt2ja.model.train import train
    from tests.test_model_train import SEQ_LEN, config

    run, proxy = f"{gcs_proxy_root}/r", gcs_precondition_proxy
    kw = dict(checkpoint_every=4, keep_checkpoints=1, eval_batches=0, log_every=1)
    seen: dict = {}

    def progress(line: str) -> None:  # said after a step trains, before its metrics line is written
        step = re.match(r"step\s+(\d+)/", line)
        if step and int(step.group(1)) == 3:  # step 2's sync waited for step 1's upload
            seen["before checkpoint"] = remote(run)
            seen["metrics"] = storage.read_text(storage.join(run, runs.METRICS))
        if step and int(step.group(1)) == 6:
            seen["loaded mid-run"] = runs.load_run(run).step

    train(config(shards, run, steps=8, **kw), progress=progress)
    early = seen["before checkpoint"]
    assert runs.METRICS in early and json.loads(seen["metrics"].splitlines()[0])["step"] == 1
    assert any(rel.startswith("tensorboard/train/events.out.tfevents.") for rel in early), early
    assert {runs.HPARAMS, "tokenizer/tokenizer.json"} <= set(early)
    assert not any(rel.startswith(runs.CHECKPOINT_DIR) for rel in early), early
    assert seen["loaded mid-run"] == 4

    local = Path(runs.local_dir(run))
    board = {p.relative_to(local).as_posix() for p in (local / runs.TENSORBOARD_DIR).rglob("*") if p.is_file()}
    assert board == {rel for rel in remote(run) if rel.startswith(runs.TENSORBOARD_DIR)}  # --logdir gs://…
    sent = uploads(proxy, run)
    assert sent.count("checkpoints/checkpoint") == 2  # at ckpt-4 and ckpt-8
    assert Counter(rel for rel in sent if rel.startswith("checkpoints/ckpt-")) == {
        f"checkpoints/ckpt-{step}.npz": 1 for step in (4, 8)
    }
    last_index = len(sent) - 1 - sent[::-1].index("checkpoints/checkpoint")
    assert all(sent.index(rel) < last_index for rel in sent if rel.startswith("checkpoints/ckpt-8"))
    assert not any(rel.startswith("checkpoints/ckpt-4") for rel in remote(run))  # keep_checkpoints=1

    shutil.rmtree(local)  # another machine: only the bucket has the run
    lines: list[str] = []
    train(config(shards, run, steps=10, **kw), progress=lines.append)
    assert any("from step 8" in line for line in lines), lines
    assert [
        r["step"] for r in map(json.loads, storage.read_text(storage.join(run, runs.METRICS)).splitlines())
    ] == list(range(1, 11))
    counts = Counter(uploads(proxy, run))
    assert all(n == 1 for rel, n in counts.items() if rel.startswith("checkpoints/ckpt-")), counts
    assert {rel for rel in remote(run) if rel.startswith("checkpoints/ckpt-")} == {
        rel for rel in counts if rel.startswith("checkpoints/ckpt-10")
    }
    assert storage.read_manifest(run)["stage"] == "train"

    shutil.rmtree(local)
    loaded = runs.load_run(run)
    assert loaded.step == 10 and loaded.config.context_length == SEQ_LEN and loaded.tokenizer.vocab_size == 257
    shutil.rmtree(runs.cache_dir(run))
