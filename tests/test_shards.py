"""Token shards and their tf.data reader, on a small real corpus (the bundled Aozora mirror).

Every TensorFlow test lives in this file (importing TensorFlow costs seconds).
The corpus (48 works, ~120k characters) and two tokenizers (bytes, and a small
sentencepiece) are built once per module; shards use seq_len 64 and a few files
per split, so each write takes about a second.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from gpt2ja.corpus.document import Document
from gpt2ja.corpus.jsonl import read_documents
from gpt2ja.infra import storage
from gpt2ja.model.data import (
    AUTOTUNE,
    DataError,
    iter_examples,
    make_dataset,
    parse_examples,
    read_manifest_checked,
    shard_files,
    verify_shards,
)
from gpt2ja.tokenization.shards import (
    ShardsConfig,
    ShardsError,
    import_tensorflow,
    pack_tokens,
    serialize_example,
    shard_of,
    token_dtype,
    unpack_tokens,
    write_shards,
)
from gpt2ja.tokenization.tokenizer import Tokenizer
from gpt2ja.tokenization.train import train_tokenizer
from tests.assertions import one_line_error
from tests.corpora import mirror_split, write_clean_corpus

SEQ_LEN = 64
CFG = dict(seq_len=SEQ_LEN, num_shards={"train": 4, "validation": 2}, workers=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    train, validation = mirror_split()
    return write_clean_corpus(tmp_path_factory.mktemp("clean") / "mirror", train, validation)


@pytest.fixture(scope="module")
def tokenizers(corpus, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tokenizers")
    return {
        "bytes": train_tokenizer(corpus, "bytes", 257, str(root / "bytes")),
        "sentencepiece": train_tokenizer(corpus, "sentencepiece", 3000, str(root / "sp")),
    }


@pytest.fixture(scope="module")
def shards(corpus, tokenizers, tmp_path_factory) -> dict[str, str]:
    """name → shards URI: uint16 with both tokenizers, and int32 forced for the bytes tokenizer."""
    root = tmp_path_factory.mktemp("shards")
    return {
        "bytes": write_shards(corpus, tokenizers["bytes"], str(root / "bytes"), ShardsConfig(**CFG)),
        "sentencepiece": write_shards(corpus, tokenizers["sentencepiece"], str(root / "sp"), ShardsConfig(**CFG)),
        "bytes-int32": write_shards(
            corpus, tokenizers["bytes"], str(root / "int32"), ShardsConfig(**CFG, dtype="int32")
        ),
    }


def examples(uri: str, split: str, shard: int | None = None) -> list[tuple[int, ...]]:
    return [tuple(e.tolist()) for e in iter_examples(uri, split, shard)]


# ----------------------------------------------------------------- packing


@pytest.mark.parametrize("name", ["bytes", "sentencepiece"])
def test_packing_decodes_back_to_each_shards_documents(corpus, tokenizers, shards, name):
    tok = Tokenizer.load(tokenizers[name])
    uri = shards[name]
    manifest = read_manifest_checked(uri, tokenizer=tok)
    assert manifest["dtype"] == "uint16" and manifest["vocab_size"] == tok.vocab_size
    for split, n in CFG["num_shards"].items():
        docs = list(read_documents(storage.join(corpus, split)))
        assert manifest["counts"]["splits"][split]["documents"] == len(docs)
        dropped = 0
        for i in range(n):
            mine = [d for d in docs if shard_of(d.id, n) == i]  # corpus order
            expected = [t for d in mine for t in tok.encode(d.text) + [tok.eos_id]]
            rows = list(iter_examples(uri, split, shard=i))
            assert all(r.shape == (SEQ_LEN + 1,) and r.dtype == np.int32 for r in rows)
            # Disjoint windows of seq_len + 1: concatenated, they are the shard's stream minus its tail.
            stream = np.concatenate(rows).tolist() if rows else []
            assert stream == expected[: len(stream)]
            assert 0 <= len(expected) - len(stream) < SEQ_LEN + 1
            dropped += len(expected) - len(stream)
            # Split on EOS: every complete segment decodes to its document exactly.
            segments = np.split(np.array(stream), np.flatnonzero(np.array(stream) == tok.eos_id) + 1)
            texts = [tok.decode(seg[:-1].tolist()) for seg in segments[:-1]]
            assert texts == [d.text for d in mine[: len(texts)]]
        assert manifest["counts"]["splits"][split]["dropped_tokens"] == dropped


def test_manifest_lists_files_counts_and_inputs(corpus, tokenizers, shards):
    uri = shards["bytes"]
    manifest = read_manifest_checked(uri)
    names = [f["path"] for f in manifest["files"]]
    assert names == [f"train-{i:05d}-of-00004.tfrecord" for i in range(4)] + [
        f"validation-{i:05d}-of-00002.tfrecord" for i in range(2)
    ]
    for entry in manifest["files"]:
        info = storage.file_info(storage.join(uri, entry["path"]), root=uri)
        assert {k: entry[k] for k in info} == info  # sizes and checksums
        assert entry["examples"] == len(examples(uri, entry["split"], int(entry["path"].split("-")[1])))
    c = manifest["counts"]
    assert c["examples"] == sum(f["examples"] for f in manifest["files"]) > 0
    assert c["example_tokens"] == c["examples"] * (SEQ_LEN + 1)
    assert c["tokens"] == c["example_tokens"] + c["dropped_tokens"]
    assert (manifest["seq_len"], manifest["example_len"], manifest["feature"]) == (SEQ_LEN, SEQ_LEN + 1, "tokens")
    assert (manifest["vocab_size"], manifest["eos_id"], manifest["compression"]) == (257, 256, "GZIP")
    tok_fp = storage.read_manifest(tokenizers["bytes"])["fingerprint"]
    corpus_fp = storage.read_manifest(corpus)["fingerprint"]
    assert manifest["tokenizer"]["fingerprint"] == tok_fp and manifest["corpus"]["fingerprint"] == corpus_fp
    assert [i["fingerprint"] for i in manifest["inputs"]] == [tok_fp, corpus_fp]
    assert verify_shards(uri) == {"files": 6, "examples": c["examples"]}


def test_int32_ids_for_large_vocabularies(shards):
    assert [token_dtype(v) for v in (257, 32000, 65535, 65536, 70000)] == ["uint16"] * 3 + ["int32"] * 2
    with pytest.raises(ShardsError) as excinfo:
        token_dtype(70000, "uint16", where="shards out/x")
    one_line_error(excinfo, "shards out/x", "70,000", "int32")
    assert pack_tokens([1, 258], "uint16") == b"\x01\x00\x02\x01"  # little-endian
    assert pack_tokens([1, 65536], "int32") == b"\x01\x00\x00\x00\x00\x00\x01\x00"
    rows = np.array([[0, 1, 65535, 65536, 69999], [5, 4, 3, 2, 1]])
    tf = import_tensorflow()
    serialized = tf.constant([serialize_example(tf, pack_tokens(r, "int32")) for r in rows])
    assert (parse_examples(serialized, dtype="int32").numpy() == rows).all()
    assert unpack_tokens(pack_tokens(rows[0], "int32"), "int32").tolist() == rows[0].tolist()
    # The int32 path end to end (a 257-id tokenizer with dtype forced): the same ids as uint16.
    assert read_manifest_checked(shards["bytes-int32"])["dtype"] == "int32"
    assert examples(shards["bytes-int32"], "validation") == examples(shards["bytes"], "validation")


# ----------------------------------------------------------------- tf.data


def test_make_dataset_batches_shift_and_determinism(shards):
    uri = shards["bytes"]
    assert AUTOTUNE == import_tensorflow().data.AUTOTUNE
    everything = set(examples(uri, "train"))

    def take(seed, n=4):
        out = []
        for inputs, targets in make_dataset(uri, "train", 8, seed=seed, shuffle_buffer=256).take(n):
            assert inputs.shape == targets.shape == (8, SEQ_LEN)
            assert inputs.dtype.name == targets.dtype.name == "int32"
            x, y = inputs.numpy(), targets.numpy()
            assert (y[:, :-1] == x[:, 1:]).all()  # targets are inputs shifted by one
            for row in np.concatenate([x, y[:, -1:]], axis=1):
                assert tuple(row.tolist()) in everything
            out.append(x)
        return np.stack(out)

    first = take(seed=3)
    assert (take(seed=3) == first).all()
    assert not (take(seed=4) == first).all()
    # repeat=True never runs dry: more batches than one epoch holds.
    assert len(take(seed=0, n=len(everything) // 8 + 5)) == len(everything) // 8 + 5


@pytest.mark.slow
def test_input_pipelines_read_disjoint_files(shards):
    uri = shards["bytes"]
    files = shard_files(read_manifest_checked(uri), "train")
    seen = []
    for k in range(2):
        ds = make_dataset(uri, "train", 1, shuffle=False, repeat=False, num_input_pipelines=2, input_pipeline_id=k)
        rows = sorted(tuple(np.concatenate([x[0], y[0, -1:]]).tolist()) for x, y in ds.as_numpy_iterator())
        # pipeline k reads files k, k + 2, ... and nothing else
        assert rows == sorted(e for i in range(k, len(files), 2) for e in examples(uri, "train", i))
        seen.append(set(rows))
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    with pytest.raises(DataError) as excinfo:
        make_dataset(uri, "train", 1, num_input_pipelines=8, input_pipeline_id=0)
    one_line_error(excinfo, uri, "4 files", "8 input pipelines")


# ----------------------------------------------------------------- resume and skip


def test_rerun_rebuilds_only_unfinished_shards(corpus, tokenizers, shards, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(shards["bytes"], out)  # copy2: mtimes kept
    before = storage.read_manifest(str(out))
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    # An interrupted run: no manifest yet; shard 1 never finished (no record, no file);
    # shard 3's file was published but its record not written.
    (out / "_MANIFEST.json").unlink()
    (out / "_work" / "train-00001.json").unlink()
    (out / "train-00001-of-00004.tfrecord").unlink()
    (out / "train-00003-of-00004.tfrecord").unlink()
    write_shards(corpus, tokenizers["bytes"], str(out), ShardsConfig(**CFG))
    after = storage.read_manifest(str(out))
    changed = {p.name for p in out.rglob("*") if p.is_file() and p.stat().st_mtime_ns != mtimes.get(p.name)}
    assert changed == {
        "_MANIFEST.json",
        "train-00001-of-00004.tfrecord",
        "train-00001.json",
        "train-00003-of-00004.tfrecord",
        "train-00003.json",
    }
    volatile = ("created_at", "timings", "uri", "build_id")
    assert {k: v for k, v in after.items() if k not in volatile} == {
        k: v for k, v in before.items() if k not in volatile
    }  # same counts, files, checksums
    # A complete output is skipped: nothing is touched.
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    write_shards(corpus, tokenizers["bytes"], str(out), ShardsConfig(**CFG))
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def test_cli_prints_a_summary(corpus, tokenizers, tmp_path, capsys):
    out = str(tmp_path / "cli")
    from gpt2ja.cli import main

    argv = ["shards", "--corpus", corpus, "--tokenizer", tokenizers["bytes"], "--seq-len", "32", "--out", out]
    main([*argv, "--workers", "1"])
    text = capsys.readouterr().out.strip()
    assert "\n" not in text and "train" in text and "64 files" in text and "seq_len 32" in text and "uint16" in text
    main([*argv, "--workers", "1"])
    assert "Already up to date" in capsys.readouterr().out


# ----------------------------------------------------------------- GCS (emulator) and processes


@pytest.mark.slow
def test_gcs_output_with_two_worker_processes(corpus, tokenizers, shards, gcs_emulator, tmp_path):
    out = f"gs://{gcs_emulator.bucket}/shards-test"
    # Two spawned workers writing to GCS: the files are byte-identical to the local one-process build.
    assert write_shards(corpus, tokenizers["bytes"], out, ShardsConfig(**{**CFG, "workers": 2})) == out
    manifest = read_manifest_checked(out, tokenizer=tokenizers["bytes"])
    local = read_manifest_checked(shards["bytes"])
    assert manifest["files"] == local["files"] and manifest["counts"] == local["counts"]
    listed = {u.rsplit("/", 1)[-1] for u in storage.list_files(out, recursive=False)}
    assert listed == {f["path"] for f in local["files"]} | {"_MANIFEST.json"}
    assert len(storage.list_files(storage.join(out, "_work"))) == 6
    # TensorFlow reads gs:// itself (as on a TPU VM), but its GCS filesystem cannot be pointed at the
    # emulator: download the shards and read the local copy instead.
    copy = str(tmp_path / "downloaded")
    storage.download_dir(out, copy)
    assert examples(copy, "train") == examples(shards["bytes"], "train")
    x, y = next(iter(make_dataset(copy, "validation", 2, seed=1)))
    assert x.shape == (2, SEQ_LEN)


# ----------------------------------------------------------------- bad input


def test_empty_corpus_or_split(tokenizers, tmp_path):
    doc = Document.new(source="t", url="u1", text="吾輩は猫である。" * 40)
    cases = {
        "empty": ([], [], "train split"),
        "no-validation": ([doc], [], "validation split"),
    }
    for name, (train, validation, what) in cases.items():
        corpus = write_clean_corpus(tmp_path / name, train, validation)
        out = str(tmp_path / f"out-{name}")
        with pytest.raises(ShardsError) as excinfo:
            write_shards(corpus, tokenizers["bytes"], out, ShardsConfig(**CFG))
        one_line_error(excinfo, corpus, "no documents", what)
        assert not os.path.exists(out)  # nothing published
    # Without a validation split in num_shards, a train-only corpus is fine.
    corpus = str(tmp_path / "no-validation")
    out = write_shards(
        corpus,
        tokenizers["bytes"],
        str(tmp_path / "train-only"),
        ShardsConfig(seq_len=SEQ_LEN, num_shards={"train": 1}, workers=1),
    )
    assert [f["split"] for f in read_manifest_checked(out)["files"]] == ["train"]
    # Too little text for one example in a split: an error, and no manifest.
    tiny = write_clean_corpus(tmp_path / "tiny", [doc], [Document.new(source="t", url="u2", text="短い。")])
    with pytest.raises(ShardsError) as excinfo:
        write_shards(tiny, tokenizers["bytes"], str(tmp_path / "out-tiny"), ShardsConfig(**CFG))
    one_line_error(excinfo, tiny, "validation split", "not one example", "fewer shards")
    assert storage.read_manifest(str(tmp_path / "out-tiny")) is None


def test_missing_manifests(corpus, tokenizers, tmp_path):
    nothing = str(tmp_path / "nothing")
    cfg = ShardsConfig(**CFG)
    with pytest.raises(ShardsError) as excinfo:
        write_shards(nothing, tokenizers["bytes"], str(tmp_path / "a"), cfg)
    one_line_error(excinfo, f"corpus {nothing}", "no _MANIFEST.json", "gpt2ja clean")
    with pytest.raises(ShardsError) as excinfo:
        write_shards(corpus, nothing, str(tmp_path / "b"), cfg)
    one_line_error(excinfo, f"tokenizer {nothing}", "no _MANIFEST.json", "gpt2ja tokenizer train")
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")
    for call in (
        lambda: read_manifest_checked(nothing),
        lambda: make_dataset(nothing, "train", 2),
        lambda: verify_shards(nothing),
    ):
        with pytest.raises(DataError) as excinfo:
            call()
        one_line_error(excinfo, f"shards {nothing}", "no _MANIFEST.json", "gpt2ja shards")
    with pytest.raises(ValueError):
        ShardsConfig(seq_len=4)
    with pytest.raises(ValueError):
        ShardsConfig(seq_len=64, num_shards={"train": 2, "test": 1})


def test_tokenizer_shard_mismatch(tokenizers, shards):
    for tokenizer in (tokenizers["sentencepiece"], Tokenizer.load(tokenizers["sentencepiece"])):
        with pytest.raises(DataError) as excinfo:
            read_manifest_checked(shards["bytes"], tokenizer=tokenizer)
        one_line_error(excinfo, "mismatch", shards["bytes"], "vocab size 3000", "vocab size 257", tokenizers["bytes"])
    assert read_manifest_checked(shards["sentencepiece"], tokenizer=tokenizers["sentencepiece"])["vocab_size"] == 3000


def test_a_tokenizer_of_the_same_size_but_another_model_is_refused(corpus, tokenizers, shards, tmp_path):
    """Same vocabulary size, another model (BPE, not unigram): the ids would decode to other text."""
    other = train_tokenizer(corpus, "sentencepiece", 3000, str(tmp_path / "bpe"), model_type="bpe")
    for tokenizer in (other, Tokenizer.load(other)):
        with pytest.raises(DataError) as excinfo:
            read_manifest_checked(shards["sentencepiece"], tokenizer=tokenizer)
        one_line_error(excinfo, "is not the tokenizer", tokenizers["sentencepiece"], "both have 3000 ids")
    copy = str(tmp_path / "copy")  # a copy (as a run keeps one) is the same tokenizer
    Tokenizer.load(tokenizers["sentencepiece"]).save(copy)
    assert read_manifest_checked(shards["sentencepiece"], tokenizer=copy)["vocab_size"] == 3000


def test_truncated_tfrecord_is_named(shards, tmp_path):
    out = tmp_path / "damaged"
    shutil.copytree(shards["bytes"], out)
    victim = out / "train-00002-of-00004.tfrecord"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as excinfo:
        verify_shards(str(out))
    one_line_error(excinfo, str(victim), "corrupt, truncated", "rerun `gpt2ja shards`")
    with pytest.raises(DataError) as excinfo:
        list(iter_examples(str(out), "train", shard=2))
    one_line_error(excinfo, str(victim))
    assert examples(str(out), "train", shard=1) == examples(shards["bytes"], "train", shard=1)
    # A valid TFRecord file with the wrong number of examples (replaced by hand) is caught too.
    tf = import_tensorflow()
    with tf.io.TFRecordWriter(str(victim), options="GZIP") as writer:
        writer.write(serialize_example(tf, pack_tokens(range(SEQ_LEN + 1), "uint16")))
    assert read_manifest_checked(str(out))["files"][2]["examples"] != 1
    with pytest.raises(DataError) as excinfo:
        verify_shards(str(out))
    one_line_error(excinfo, str(victim), "has 1 examples, its manifest says")
