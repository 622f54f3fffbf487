"""TensorBoard of a training run, read back with TensorBoard's own event reader.

A tiny run (bytes tokenizer, one repeated Japanese text, 4 steps, evaluation at
steps 2 and 4) writes ``tensorboard/{train,validation}`` and the HParams record
at ``tensorboard/``; the text counts that turn the validation loss into bits
per character are checked on their own first, without TensorFlow's training.
"""

from __future__ import annotations

import json
import math

import pytest

from tokenization.bytes_tokenizer import ByteTokenizer

tf = pytest.importorskip("tensorflow")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402

from model import runs, summaries  # noqa: E402
from model.train import train  # noqa: E402
from tests.test_model_train import SEQ_LEN, TEXT, config, make_shards  # noqa: E402


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
    return [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]


@pytest.mark.slow
def test_a_tiny_run_writes_the_tensorboard_layout(tmp_path):
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
    for acc, tag, key in ((tr, "loss", "loss"), (va, "loss", "val_loss"),
                          (va, "bits_per_character", "val_bits_per_character")):
        got = _scalars(acc, tag)
        assert [s for s, _ in got] == [2, 4], tag
        assert [v for _, v in got] == pytest.approx([rows[s][key] for s in (2, 4)], rel=1e-6), tag

    # bits: the validation loss (nats/token) × tokens/character (or byte) of the scored rows ÷ ln 2
    for (_, loss), (_, bpc), (_, bpb) in zip(*(_scalars(va, t) for t in ("loss", "bits_per_character",
                                                                          "bits_per_byte"))):
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
    samples = [(e.step, tf.make_ndarray(e.tensor_proto).item().decode("utf-8")) for e in va.Tensors("sample")]
    assert [s for s, _ in samples] == [2, 4]
    for _, text in samples:
        prompt, _, continuation = text.removeprefix("**").partition("**")
        assert prompt and prompt in TEXT * 2 and continuation.strip(), text

    # HParams at tensorboard/ itself: the experiment (settings and metrics) and this run's values
    root = _events(board)
    content = root.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metrics = {(m.name.group, m.name.tag) for m in experiment.metric_infos}
    assert metrics == {("train", "loss"), ("validation", "loss"), ("validation", "bits_per_character"),
                       ("validation", "bits_per_byte")}
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    hp = start.hparams
    assert {h.name for h in experiment.hparam_infos} == set(hp)
    assert hp["preset"].string_value == "tiny" and hp["tokenizer"].string_value == "bytes"
    assert hp["schedule"].string_value == "warmup_cosine" and hp["mixed_precision"].string_value == "off"
    numbers = {k: hp[k].number_value for k in ("seq_len", "vocab_size", "padded_vocab_size", "batch_tokens",
                                               "micro_batch", "steps", "learning_rate", "warmup_steps")}
    assert numbers == {"seq_len": SEQ_LEN, "vocab_size": 257, "padded_vocab_size": 320, "batch_tokens": 256,
                       "micro_batch": 8, "steps": 4, "learning_rate": pytest.approx(3e-3), "warmup_steps": 2}
    assert hp["num_layers"].number_value >= 1 and hp["parameters"].number_value > 10_000

    # the switches: no samples, no token axis; the run's fingerprint does not depend on them
    quiet = tmp_path / "quiet"
    train(config(shards, quiet, steps=2, warmup_steps=1, eval_every=2, log_every=2, checkpoint_every=2,
                 eval_sample_tokens=0, tensorboard_by_tokens=False), progress=None)
    tags = set(_events(quiet / runs.TENSORBOARD_DIR / "validation").Tags()["tensors"])
    assert tags == {"loss", "bits_per_character", "bits_per_byte"}
    assert cfg.fingerprint_config() == cfg.model_copy(update={"eval_sample_tokens": 0}).fingerprint_config()
