"""Training across topologies: worker processes on 127.0.0.1, and resumes from 2 workers to 1 and 1 to 2.

The shards carry example ids: every document is exactly one example (a
4-digit id, then Japanese filler, 32 bytes + EOS = seq_len + 1 ids with the
bytes tokenizer), so the first four ids of a row name it. Each run writes a
trace (``trace_examples``) of the stream position and first ids of every row
its hosts read; the test counts ids from the traces of the rows that the
optimizer steps consumed (positions below the segment's final ``examples``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections import Counter
from pathlib import Path

import pytest

from gpt2ja.corpus.document import Document
from gpt2ja.corpus.jsonl import ShardWriter
from gpt2ja.infra import storage
from gpt2ja.tokenization.bytes_tokenizer import ByteTokenizer
from gpt2ja.tokenization.shards import ShardsConfig, write_shards
from tests import procs
from tests.net import free_ports

tf = pytest.importorskip("tensorflow")

from gpt2ja.model import checkpoint, runs  # noqa: E402
from gpt2ja.model.data_order import read_trace, train_dataset  # noqa: E402
from gpt2ja.model.train import TrainConfig, train  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SEQ_LEN = 32
DOCS = 40  # train examples: one epoch
FILLER = "吾輩は猫である。名."  # 9 three-byte characters and a dot: 28 bytes after a 4-digit id

WORKER_SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ["TF_CONFIG"] = sys.argv[2]          # before TensorFlow starts: the cluster and this task
    from gpt2ja.model.train import TrainConfig, train
    train(TrainConfig(**json.loads(sys.argv[1])), progress=None)
""")


@pytest.fixture(scope="module")
def id_shards(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("id-shards")
    corpus = str(root / "clean")
    for split, n in (("train", DOCS), ("validation", 4)):
        with ShardWriter(storage.join(corpus, split)) as out:
            for i in range(n):
                text = f"{i:04d}{FILLER}"
                assert len(text.encode()) == SEQ_LEN
                out.write(Document.new(source="test", url=f"{split}/{i}", text=text))
    files = [storage.file_info(u, root=corpus) for u in storage.list_files(corpus)]
    storage.write_manifest(
        corpus, storage.build_manifest(stage="clean", config={"test": "topology"}, counts={}, files=files, timings={})
    )
    tok = ByteTokenizer().save(str(root / "tokenizer"))
    return write_shards(
        corpus,
        tok,
        str(root / "shards"),
        ShardsConfig(seq_len=SEQ_LEN, num_shards={"train": 3, "validation": 2}, workers=1),
    )


def example_id(head: list[int]) -> int:
    return int(bytes(head).decode("ascii"))


def config(shards: str, run: Path | str, trace: Path, **kw) -> TrainConfig:
    base = dict(
        data=shards,
        run=str(run),
        preset="tiny",
        dropout=0.0,
        batch_tokens=8 * SEQ_LEN,
        micro_batch=8,
        steps=4,
        learning_rate=3e-3,
        warmup_steps=1,
        checkpoint_every=4,
        eval_batches=0,
        log_every=1,
        shuffle_buffer=16,
        seed=5,
        trace_examples=str(trace),
    )
    return TrainConfig(**{**base, **kw})


def train_on(workers: int, cfg: TrainConfig) -> None:
    """``cfg`` on ``workers`` worker processes (multi_worker), or in this process when 1."""
    if workers == 1:
        train(cfg, progress=None)
        return
    cfg = cfg.model_copy(update={"strategy": "multi_worker"})
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(workers)]}
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    procs_ = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WORKER_SCRIPT,
                cfg.model_dump_json(),
                json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for i in range(workers)
    ]
    outputs = []
    try:
        outputs = [p.communicate() for p in procs_]
    finally:
        for p in procs_:
            procs.kill_group(p)
    for p, (_, err) in zip(procs_, outputs):
        assert p.returncode == 0, err[-3000:]


def consumed(trace: Path, start: int, end: int) -> dict[int, tuple[int, int]]:
    """``{position: (example id, worker)}`` of the rows at stream positions ``[start, end)`` in a trace."""
    rows: dict[int, tuple[int, int]] = {}
    for worker, lines in read_trace(str(trace)).items():
        for line in lines:
            if start <= line["pos"] < end:
                assert line["pos"] not in rows, f"position {line['pos']} read by two workers"
                rows[line["pos"]] = (example_id(line["head"]), worker)
    return rows


def losses(run: Path | str) -> dict[int, float]:
    text = storage.read_text(storage.join(str(run), runs.METRICS))
    return {r["step"]: r["loss"] for r in map(json.loads, text.splitlines())}


@pytest.mark.slow
def test_the_order_does_not_depend_on_the_worker_count(id_shards):
    """Worker w of W gets rows [w·g, (w+1)·g) of the same global batches; an epoch is every id once."""

    def ids(ds, batches):
        return [[example_id(r[:4]) for r in x.numpy().tolist()] for x, _ in ds.take(batches)]

    one = ids(train_dataset(id_shards, global_batch=8, shuffle_buffer=16, seed=5), 15)
    halves = [
        ids(train_dataset(id_shards, global_batch=8, workers=2, worker=w, shuffle_buffer=16, seed=5), 15)
        for w in (0, 1)
    ]
    assert [a + b for a, b in zip(*halves)] == one
    flat = [i for batch in one for i in batch]
    for epoch in range(3):
        assert sorted(flat[epoch * DOCS : (epoch + 1) * DOCS]) == list(range(DOCS))
    assert flat[:DOCS] != flat[DOCS : 2 * DOCS] != flat[2 * DOCS : 3 * DOCS]  # each epoch in its own order
    for start in (8, 32, 40, 56):  # resuming mid-block, at a block, at and after the epoch's end
        again = ids(train_dataset(id_shards, global_batch=8, start_example=start, shuffle_buffer=16, seed=5), 5)
        assert [i for batch in again for i in batch] == flat[start : start + 40]
    other = ids(train_dataset(id_shards, global_batch=8, shuffle_buffer=16, seed=6), 5)
    assert other != one[:5]


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local", "gcs"])
def test_resume_from_two_workers_to_one_and_back_sees_every_example_once(id_shards, tmp_path, where, request):
    """2 workers (steps 1–4) → 1 worker (5–8) → 2 workers (9–12): 96 examples, 2.4 epochs (pauses: stop_at).

    Against one uninterrupted worker: the same example at every stream position,
    every id once per epoch, one writer (the chief), and the same loss at every
    step within float noise (dropout off: the batches are the same, only the
    order of the all-reduce's sums differs; measured: equal to 2e-7 relative).
    The run root is a local directory (shared by the workers) or gs:// on the
    GCS emulator, where the workers resume from the bucket.
    """
    reference = tmp_path / "reference"
    train_on(1, config(id_shards, reference, tmp_path / "trace-ref", steps=12, checkpoint_every=12))

    run = tmp_path / "run"
    if where == "gcs":
        run = f"gs://{request.getfixturevalue('gcs_emulator').bucket}/topology-{uuid.uuid4().hex[:8]}/run"
    segments = [(2, 4), (1, 8), (2, 12)]
    for k, (workers, steps) in enumerate(segments):
        train_on(
            workers, config(id_shards, run, tmp_path / f"trace-{k}", steps=12, checkpoint_every=12, stop_at=steps)
        )  # planned pauses: the schedule stays that of 12 steps
    batch = 8
    seen: dict[int, tuple[int, int]] = {}
    start = 0
    for k, (workers, steps) in enumerate(segments):
        rows = consumed(tmp_path / f"trace-{k}", start, steps * batch)
        assert sorted(rows) == list(range(start, steps * batch)), f"segment {k}: a position skipped"
        assert {w for _, w in rows.values()} == set(range(workers))  # every worker trained on its rows
        seen.update(rows)
        start = steps * batch
    assert sorted(seen) == list(range(12 * batch))
    ids = [seen[p][0] for p in range(12 * batch)]
    for epoch in range(2):
        assert Counter(ids[epoch * DOCS : (epoch + 1) * DOCS]) == Counter(range(DOCS))
    assert len(set(ids[2 * DOCS :])) == 12 * batch - 2 * DOCS  # the third epoch's start: no repeat either
    ref = consumed(tmp_path / "trace-ref", 0, 12 * batch)
    assert ids == [ref[p][0] for p in range(12 * batch)]

    got, want = losses(run), losses(reference)
    assert sorted(got) == list(range(1, 13))  # one line per step: resumes truncate what a checkpoint lost
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=1e-5), (step, got[step], want[step])
    assert storage.read_manifest(str(run))["stage"] == "train"
    hparams = json.loads(storage.read_text(storage.join(str(run), runs.HPARAMS)))
    assert hparams["train"]["strategy"] == "multi_worker"
    ckpt = checkpoint.load(os.path.join(runs.fetch(str(run)), runs.CHECKPOINT_DIR, "ckpt-12.npz"))
    assert ckpt.examples == 12 * batch
