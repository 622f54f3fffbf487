"""TensorBoard of a training run, read back with TensorBoard's own readers.

The writer (``gpt2ja.model.summaries.TensorBoard``) uses the ``tensorboard`` package
alone: it is checked in a subprocess where ``import tensorflow`` fails (a
blocker first on ``PYTHONPATH``) and in one where TensorFlow is installed but
must stay unimported, read back with ``EventAccumulator`` and the data provider
TensorBoard's server uses, and compared record by record with what
``tf.summary`` writes for the same calls. A tiny run (bytes tokenizer, one
repeated Japanese text, 4 steps, evaluation at steps 2 and 4) writes
``tensorboard/{train,validation}`` and the HParams record at ``tensorboard/``;
the text counts that turn the validation loss into bits per character are
checked on their own first, without training.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import math
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.util import tensor_util

from gpt2ja.model import runs, summaries
from gpt2ja.tokenization.bytes_tokenizer import ByteTokenizer
from tests import procs

REPO = Path(__file__).resolve().parent.parent
TEXT = "吾輩は猫である。名前はまだ無い。"  # tests.test_model_train.TEXT (that module needs TensorFlow to import)
HPARAMS = {"preset": "tiny", "num_layers": 2, "dropout": 0.0, "jit_compile": False, "learning_rate": 3e-3}
RECORDS = [
    (
        2,
        {
            "loss": 5.25,
            "lr": 1e-3,
            "grad_norm": 0.5,
            "tokens_per_s": 4096.0,
            "val_loss": 5.5,
            "val_bits_per_character": 7.75,
            "val_bits_per_byte": 2.5,
        },
        ("吾輩は", "猫で*ある。\n次"),
    ),
    (4, {"loss": 4.5, "lr": 5e-4, "grad_norm": None}, None),
]


def test_text_counts_leave_out_the_partial_characters_at_a_rows_edges():
    tok = ByteTokenizer()
    ids = tok.encode(TEXT)  # 16 characters of 3 bytes
    assert summaries.whole_characters(tok, ids) == (48, TEXT)
    # a window that starts 1 byte into "吾" and ends 2 bytes into "。": both partial characters are left out
    assert summaries.whole_characters(tok, ids[1:-1]) == (42, TEXT[1:-1])
    counts = summaries.count_text(tok, [[ids[1:-1], [tok.eos_id] + ids]])
    assert counts == (42 + 49, 14 + 16, 42 + 48)  # the EOS is a scored token without text
    nats = 1.5  # per token
    assert counts.bits_per_character(nats) == pytest.approx(nats / math.log(2) * 91 / 30)
    assert counts.bits_per_byte(nats) == pytest.approx(nats / math.log(2) * 91 / 90)
    # the prompt: the start of the first whole document in a row
    assert summaries.sample_prompt(tok, ids[4:] + [tok.eos_id] + ids, chars=5) == TEXT[:5]
    assert summaries.sample_prompt(tok, ids[1:], chars=3) == TEXT[1:4]
    assert summaries._markdown("a*b_c\nd") == "a\\*b\\_c  \nd"


def _events(folder) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    acc.Reload()
    return acc


def _scalars(acc: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]


def _texts(acc: EventAccumulator, tag: str) -> list[tuple[int, str]]:
    return [(e.step, tensor_util.make_ndarray(e.tensor_proto).item().decode("utf-8")) for e in acc.Tensors(tag)]


def _write(board: summaries.TensorBoard) -> None:
    board.hparams(HPARAMS)
    for step, record, sample in RECORDS:
        board.write(step, record, sample=sample)


# Writes RECORDS (argv[2], JSON) through gpt2ja.model.summaries in a fresh interpreter; prints its TensorFlow modules.
WRITE_SCRIPT = textwrap.dedent("""
    import json, sys
    from gpt2ja.model import summaries
    hparams, records = json.loads(sys.argv[2])
    board = summaries.TensorBoard(sys.argv[1], batch_tokens=256, by_tokens=True)
    board.hparams(hparams)
    for step, record, sample in records:
        board.write(step, record, sample=tuple(sample) if sample else None)
    board.close()
    print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow")))
""")


def _write_in_subprocess(logdir: Path, blocker: Path | None) -> list[str]:
    path = [str(blocker)] if blocker else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path + [str(REPO)]), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = procs.run(
        [sys.executable, "-c", WRITE_SCRIPT, str(logdir), json.dumps([HPARAMS, RECORDS])], cwd=REPO, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def _check_board(board: Path) -> None:
    """What WRITE_SCRIPT wrote, as EventAccumulator reads it."""
    tr, va, root = _events(board / "train"), _events(board / "validation"), _events(board)
    assert set(tr.Tags()["tensors"]) == {
        "loss",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "tokens_seen/loss",
        "tokens_seen/lr",
        "tokens_seen/grad_norm",
        "tokens_seen/tokens_per_s",
    }
    assert set(va.Tags()["tensors"]) == {
        "loss",
        "bits_per_character",
        "bits_per_byte",
        "sample",
        "tokens_seen/loss",
        "tokens_seen/bits_per_character",
        "tokens_seen/bits_per_byte",
    }
    assert _scalars(tr, "loss") == [(2, 5.25), (4, 4.5)]
    assert _scalars(tr, "lr") == [(2, pytest.approx(1e-3)), (4, pytest.approx(5e-4))]
    assert _scalars(tr, "grad_norm") == [(2, 0.5)]  # None is not written
    assert _scalars(tr, "tokens_seen/loss") == [(512, 5.25), (1024, 4.5)]
    assert _scalars(va, "bits_per_character") == [(2, 7.75)]
    assert tr.SummaryMetadata("loss").plugin_data.plugin_name == "scalars"
    assert tensor_util.make_ndarray(tr.Tensors("loss")[0].tensor_proto).dtype == np.float32
    assert _texts(va, "sample") == [(2, "**吾輩は**猫で\\*ある。  \n次")]
    assert va.SummaryMetadata("sample").plugin_data.plugin_name == "text"
    content = root.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {h.name for h in experiment.hparam_infos} == set(HPARAMS)
    assert {(m.name.group, m.name.tag) for m in experiment.metric_infos} == {
        ("train", "loss"),
        ("validation", "loss"),
        ("validation", "bits_per_character"),
        ("validation", "bits_per_byte"),
    }
    hp = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]
    ).session_start_info.hparams
    assert hp["preset"].string_value == "tiny" and hp["num_layers"].number_value == 2
    assert hp["jit_compile"].HasField("bool_value") and not hp["jit_compile"].bool_value
    assert hp["learning_rate"].number_value == pytest.approx(3e-3)
    assert [e.step for e in root.Tensors("_hparams_/session_start_info")] == [0]


@pytest.mark.parametrize("tensorflow", ["blocked", "installed"])
def test_the_writer_imports_no_tensorflow(tmp_path, tensorflow):
    """With ``import tensorflow`` failing, and with TensorFlow installed: the same files, no TensorFlow module."""
    blocker = None
    if tensorflow == "blocked":
        blocker = tmp_path / "blocker"
        (blocker / "tensorflow").mkdir(parents=True)
        (blocker / "tensorflow" / "__init__.py").write_text('raise ImportError("no TensorFlow on this machine")\n')
    elif importlib.util.find_spec("tensorflow") is None:
        pytest.skip("TensorFlow is not installed: the blocked case covers it")
    board = tmp_path / "tensorboard"
    assert _write_in_subprocess(board, blocker) == []
    _check_board(board)
    names = {
        os.path.basename(f).split(".")[:3] == ["events", "out", "tfevents"]
        for f in glob.glob(str(board / "**" / "events*"), recursive=True)
    }
    assert names == {True}


def test_a_reader_sees_each_write_at_once(tmp_path):
    board = summaries.TensorBoard(str(tmp_path), batch_tokens=100, by_tokens=False)
    try:
        board.hparams(HPARAMS)
        assert "_hparams_/experiment" in _events(tmp_path).PluginTagToContent("hparams")
        board.write(1, {"loss": 3.0})
        assert _scalars(_events(tmp_path / "train"), "loss") == [(1, 3.0)]
        board.write(2, {"loss": 2.0, "val_loss": 2.5}, sample=("", "猫"))
        assert _scalars(_events(tmp_path / "train"), "loss") == [(1, 3.0), (2, 2.0)]
        va = _events(tmp_path / "validation")
        assert _scalars(va, "loss") == [(2, 2.5)] and _texts(va, "sample") == [(2, "猫")]
        assert "tokens_seen/loss" not in va.Tags()["tensors"]
    finally:
        board.close()
    board.close()  # twice is harmless
    # a resumed run opens new files in the same folders, in the same process and second: both are read
    again = summaries.TensorBoard(str(tmp_path), batch_tokens=100, by_tokens=False)
    again.write(3, {"loss": 1.0})
    again.close()
    assert _scalars(_events(tmp_path / "train"), "loss") == [(1, 3.0), (2, 2.0), (3, 1.0)]


def test_the_data_provider_shows_the_runs(tmp_path):
    """TensorBoard's server reads through a data provider: runs ``.``, ``train``, ``validation``, by plugin."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer

    board = summaries.TensorBoard(str(tmp_path), batch_tokens=256, by_tokens=True)
    _write(board)
    board.close()
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(tmp_path))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(tmp_path))
    ctx = context.RequestContext()
    listed = provider.list_scalars(ctx, experiment_id="", plugin_name="scalars")
    assert set(listed) == {"train", "validation"}
    assert {"loss", "tokens_seen/loss", "bits_per_byte"} <= set(listed["validation"])
    read = provider.read_scalars(ctx, experiment_id="", plugin_name="scalars", downsample=100)
    assert [(p.step, p.value) for p in read["train"]["loss"]] == [(2, 5.25), (4, 4.5)]
    assert [(p.step, p.value) for p in read["train"]["tokens_seen/loss"]] == [(512, 5.25), (1024, 4.5)]
    texts = provider.read_tensors(ctx, experiment_id="", plugin_name="text", downsample=100)
    [(step, value)] = [(p.step, p.numpy.item().decode()) for p in texts["validation"]["sample"]]
    assert step == 2 and value.startswith("**吾輩は**")
    hparams = provider.list_tensors(ctx, experiment_id="", plugin_name="hparams")
    assert set(hparams) == {"."} and set(hparams["."]) == {"_hparams_/experiment", "_hparams_/session_start_info"}


def _normalised(logdir: Path) -> dict[str, list]:
    """Each event file's events without wall times, start times, source metadata or the tensors' encoding."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    out = {}
    for sub in ("", "train", "validation"):
        [path] = glob.glob(str(logdir / sub / "events*"))
        events = []
        for e in EventFileLoader(path).Load():
            e.wall_time = 0
            e.ClearField("source_metadata")  # tf.summary names its C++ writer; TensorBoard's own writer names none
            for v in e.summary.value:
                # tf.summary stores a float32 in tensor_content, tensorboard's builders in float_val: same value
                v.tensor.CopyFrom(tensor_util.make_tensor_proto(tensor_util.make_ndarray(v.tensor)))
                if v.metadata.plugin_data.plugin_name == "hparams":
                    data = plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
                    data.session_start_info.start_time_secs = 0
                    v.metadata.plugin_data.content = data.SerializeToString(deterministic=True)
            events.append(e)
        out[sub] = events
    return out


def test_the_records_are_those_tf_summary_wrote(tmp_path):
    """The same calls through ``tf.summary`` (the writer this module replaced) give the same events."""
    tf = pytest.importorskip("tensorflow")
    from tensorboard.plugins.hparams import api as hp

    ours = tmp_path / "ours"
    board = summaries.TensorBoard(str(ours), batch_tokens=256, by_tokens=True)
    _write(board)
    board.close()

    theirs = tmp_path / "tf"  # the previous TensorBoard class, verbatim in effect
    root = tf.summary.create_file_writer(str(theirs))
    sub = {name: tf.summary.create_file_writer(str(theirs / name)) for name in ("train", "validation")}
    with root.as_default():
        hp.hparams_config(
            hparams=[hp.HParam(name) for name in HPARAMS],
            metrics=[
                hp.Metric("loss", group="train", display_name="training loss"),
                hp.Metric("loss", group="validation", display_name="validation loss"),
                hp.Metric("bits_per_character", group="validation", display_name="validation bits/char"),
                hp.Metric("bits_per_byte", group="validation", display_name="validation bits/byte"),
            ],
        )
        hp.hparams(HPARAMS)
    for step, record, sample in RECORDS:
        for key, (run, tag) in summaries.TAGS.items():
            if record.get(key) is not None:
                with sub[run].as_default():
                    tf.summary.scalar(tag, record[key], step=step)
                    tf.summary.scalar(summaries.TOKENS_PREFIX + tag, record[key], step=step * 256)
        if sample is not None:
            with sub["validation"].as_default():
                shown = f"**{summaries._markdown(sample[0])}**{summaries._markdown(sample[1])}"
                tf.summary.text("sample", shown, step=step)
    for writer in (root, *sub.values()):
        writer.close()

    mine, reference = _normalised(ours), _normalised(theirs)
    for run in reference:
        assert len(mine[run]) == len(reference[run]), run
        for a, b in zip(mine[run], reference[run]):
            assert a == b, (run, a, b)


def test_from_validation_takes_any_iterable_of_pairs():
    """The JAX trainer passes a numpy iterator (no ``.take``); TensorFlow tensors come through ``.numpy()``."""
    tok = ByteTokenizer()
    ids = tok.encode(TEXT)
    row = np.array([tok.eos_id] + ids + [tok.eos_id] + ids[:15], dtype=np.int32)  # 65 ids
    batches = [(np.stack([row[:-1]] * 2), np.stack([row[1:]] * 2)) for _ in range(3)]
    counts, prompt = summaries.from_validation(tok, iter(batches), 2)  # 2 of the 3 batches
    assert prompt == TEXT[: summaries.PROMPT_CHARS]
    assert counts == summaries.count_text(tok, [targets for _, targets in batches[:2]])
    assert counts.tokens == 4 * 64 and counts.characters == 4 * (16 + 5)  # EOS scored; TEXT + 5 whole chars

    class Tensor:  # what a tf.data batch looks like to from_validation
        def __init__(self, array):
            self.array = array

        def numpy(self):
            return self.array

    wrapped = ((Tensor(x), Tensor(y)) for x, y in batches)
    assert summaries.from_validation(tok, wrapped, 2) == (counts, prompt)
    assert summaries.from_validation(tok, iter([]), 2) == ((0, 0, 0), "")


@pytest.mark.slow
def test_a_tiny_run_writes_the_tensorboard_layout(tmp_path):
    pytest.importorskip("tensorflow")
    from gpt2ja.model.train import train
    from tests.test_model_train import SEQ_LEN, config, make_shards

    shards = make_shards(tmp_path / "data")
    run = tmp_path / "run"
    cfg = config(shards, run, steps=4, eval_every=2, log_every=2, checkpoint_every=4)
    lines: list[str] = []
    train(cfg, progress=lines.append)
    board = run / runs.TENSORBOARD_DIR
    per_step = cfg.batch_tokens  # 256 tokens per optimizer step

    # training and validation: two TensorBoard runs with the same tag `loss` (one chart, two lines)
    tr, va = _events(board / "train"), _events(board / "validation")
    assert {"loss", "lr", "grad_norm", "tokens_per_s"} <= set(tr.Tags()["tensors"])
    assert {"loss", "bits_per_character", "bits_per_byte", "sample"} <= set(va.Tags()["tensors"])
    rows = {r["step"]: r for r in (json.loads(line) for line in (run / runs.METRICS).read_text().splitlines())}
    for acc, tag, key in (
        (tr, "loss", "loss"),
        (va, "loss", "val_loss"),
        (va, "bits_per_character", "val_bits_per_character"),
    ):
        got = _scalars(acc, tag)
        assert [s for s, _ in got] == [2, 4], tag
        assert [v for _, v in got] == pytest.approx([rows[s][key] for s in (2, 4)], rel=1e-6), tag

    # bits: the validation loss (nats/token) × tokens/character (or byte) of the scored rows ÷ ln 2
    for (_, loss), (_, bpc), (_, bpb) in zip(
        *(_scalars(va, t) for t in ("loss", "bits_per_character", "bits_per_byte"))
    ):
        assert bpc > 0 and bpb > 0
        assert bpc == pytest.approx(3 * bpb, rel=1e-5)  # every character of the text is 3 UTF-8 bytes
        tokens_per_byte = bpb / (loss / math.log(2))
        assert 1.0 < tokens_per_byte < 1.1  # 97 tokens (96 bytes + EOS) per document, edges left out
    assert any("bits/character" in line for line in lines)

    # the token axis: the same scalars under tokens_seen/, step = optimizer step × batch_tokens
    for acc, tag in ((tr, "loss"), (tr, "lr"), (va, "loss"), (va, "bits_per_character")):
        by_step, by_tokens = _scalars(acc, tag), _scalars(acc, summaries.TOKENS_PREFIX + tag)
        assert [(s * per_step, v) for s, v in by_step] == by_tokens, tag

    # text samples: a continuation of a prompt from the validation text, at each evaluation
    samples = _texts(va, "sample")
    assert [s for s, _ in samples] == [2, 4]
    for _, text in samples:
        prompt, _, continuation = text.removeprefix("**").partition("**")
        assert prompt and prompt in TEXT * 2 and continuation.strip(), text

    # HParams at tensorboard/ itself: the experiment (settings and metrics) and this run's values
    root = _events(board)
    content = root.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metrics = {(m.name.group, m.name.tag) for m in experiment.metric_infos}
    assert metrics == {
        ("train", "loss"),
        ("validation", "loss"),
        ("validation", "bits_per_character"),
        ("validation", "bits_per_byte"),
    }
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    hp = start.hparams
    assert {h.name for h in experiment.hparam_infos} == set(hp)
    assert hp["preset"].string_value == "tiny" and hp["tokenizer"].string_value == "bytes"
    assert hp["schedule"].string_value == "warmup_cosine" and hp["mixed_precision"].string_value == "off"
    numbers = {
        k: hp[k].number_value
        for k in (
            "seq_len",
            "vocab_size",
            "padded_vocab_size",
            "batch_tokens",
            "micro_batch",
            "steps",
            "learning_rate",
            "warmup_steps",
        )
    }
    assert numbers == {
        "seq_len": SEQ_LEN,
        "vocab_size": 257,
        "padded_vocab_size": 320,
        "batch_tokens": 256,
        "micro_batch": 8,
        "steps": 4,
        "learning_rate": pytest.approx(3e-3),
        "warmup_steps": 2,
    }
    assert hp["num_layers"].number_value >= 1 and hp["parameters"].number_value > 10_000

    # the switches: no samples, no token axis; the run's fingerprint does not depend on them
    quiet = tmp_path / "quiet"
    train(
        config(
            shards,
            quiet,
            steps=2,
            warmup_steps=1,
            eval_every=2,
            log_every=2,
            checkpoint_every=2,
            eval_sample_tokens=0,
            tensorboard_by_tokens=False,
        ),
        progress=None,
    )
    tags = set(_events(quiet / runs.TENSORBOARD_DIR / "validation").Tags()["tensors"])
    assert tags == {"loss", "bits_per_character", "bits_per_byte"}
    assert cfg.fingerprint_config() == cfg.model_copy(update={"eval_sample_tokens": 0}).fingerprint_config()
