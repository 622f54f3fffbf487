"""The TensorFlow-free data path (model.fingerprint, model.records, the numpy pipelines) held to TensorFlow's.

Every comparison is exact (``np.array_equal``) against the live TensorFlow
path it replaces: ``tf.strings.to_hash_bucket_fast``, ``TFRecordDataset`` +
``parse_example``, :func:`gpt2ja.model.data_order.train_dataset` and
:func:`gpt2ja.model.data.make_dataset`'s validation stream. The shards are written by
the real shard writer from a synthetic corpus (documents of 1–240 characters,
the bytes tokenizer), small enough to build in seconds:

* ``many``: seq_len 16, 35 train files (three groups of 16) and 20 validation
  files (more than the interleave's 16 slots), uint16, GZIP;
* ``int32``: the same corpus with ids stored as int32, 3 + 2 files;
* ``none``: ``many`` gunzipped (compression "" in its manifest);
* ``sparse``: seq_len 64 over 20 train files of a tiny corpus: several files
  hold no example at all.

One test runs the numpy pipelines in a subprocess where ``import tensorflow``
(and ``google_crc32c``) fail.
"""

from __future__ import annotations

import gc
import gzip
import hashlib
import inspect
import json
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from gpt2ja.corpus.document import Document
from gpt2ja.infra import storage
from gpt2ja.model.data import (
    DataError,
    iter_examples,
    make_dataset,
    parse_examples,
    read_manifest_checked,
    validation_batches,
    verify_shards,
)
from gpt2ja.model.data_order import _keyed_order, read_trace, train_batches, train_dataset
from gpt2ja.model.fingerprint import HASH_BUCKETS, K2, fingerprint64, fingerprint64_py, hash_bucket_fast, keyed_order
from gpt2ja.model.records import crc32c, crc32c_rows, parse_bytes_feature, read_records, read_token_rows
from gpt2ja.tokenization.bytes_tokenizer import ByteTokenizer
from gpt2ja.tokenization.shards import ShardsConfig, import_tensorflow, pack_tokens, serialize_example, write_shards
from tests.assertions import one_line_error
from tests.corpora import write_clean_corpus

tf = import_tensorflow()
REPO = Path(__file__).resolve().parent.parent
TEXT = "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。"


def _documents(n: int, split: str, seed: int, longest: int = 8) -> list[Document]:
    rng = random.Random(seed)
    return [
        Document.new(
            source="test",
            url=f"{split}/{i}",
            text=TEXT[: rng.randrange(1, longest + 1)] * rng.randrange(1, 31) + str(i),
        )
        for i in range(n)
    ]


def _gunzipped(src: str, dest: Path) -> str:
    """A copy of shards ``src`` with every file uncompressed (compression "" in the manifest)."""
    shutil.copytree(src, dest)
    for path in dest.glob("*.tfrecord"):
        path.write_bytes(gzip.decompress(path.read_bytes()))
    manifest = storage.read_manifest(str(dest))
    manifest.pop("uri")
    storage.write_manifest(str(dest), {**manifest, "compression": ""})
    return str(dest)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("records")
    corpus = write_clean_corpus(root / "clean", _documents(600, "train", 1), _documents(240, "validation", 2))
    tiny = write_clean_corpus(root / "tiny", _documents(30, "train", 3, longest=2), _documents(12, "validation", 4))
    tok = ByteTokenizer().save(str(root / "bytes"))
    out = {
        "many": write_shards(
            corpus,
            tok,
            str(root / "many"),
            ShardsConfig(seq_len=16, num_shards={"train": 35, "validation": 20}, workers=1),
        ),
        "int32": write_shards(
            corpus,
            tok,
            str(root / "int32"),
            ShardsConfig(seq_len=16, num_shards={"train": 3, "validation": 2}, workers=1, dtype="int32"),
        ),
        "sparse": write_shards(
            tiny,
            tok,
            str(root / "sparse"),
            ShardsConfig(seq_len=64, num_shards={"train": 20, "validation": 4}, workers=1),
        ),
    }
    out["none"] = _gunzipped(out["many"], root / "none")
    return out


def _counts(uri: str, split: str) -> list[int]:
    return [f["examples"] for f in read_manifest_checked(uri)["files"] if f["split"] == split]


def _tf_batches(ds, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.numpy(), y.numpy()) for x, y in ds.take(n)]


def _np_batches(batches, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    with batches:
        return [next(batches) for _ in range(n)]


def _assert_same(ours, theirs) -> None:
    assert len(ours) == len(theirs)
    for k, ((x, y), (u, v)) in enumerate(zip(ours, theirs)):
        assert x.dtype == y.dtype == np.int32 and x.shape == u.shape, k
        assert np.array_equal(x, u) and np.array_equal(y, v), f"batch {k} differs"


# ----------------------------------------------------------------- Fingerprint64


def test_fingerprint_pins():
    # tf.strings.to_hash_bucket_fast's docstring (gen_string_ops.string_to_hash_bucket_fast): the documented vector.
    assert hash_bucket_fast(["Hello", "TensorFlow", "2.x"], 3).tolist() == [0, 2, 2]
    assert fingerprint64_py(b"") == K2 == int(fingerprint64([b""])[0])
    # Values TensorFlow 2.21 gave: data_order's keys, a multi-byte key, and an epoch's file order.
    assert hash_bucket_fast(["0:3", "0:3:17:9123", "吾輩は猫である"], HASH_BUCKETS).tolist() == [
        1191673466245329895,
        2889452610628215336,
        757430871252389006,
    ]
    assert keyed_order("0:0", 8).tolist() == [5, 6, 0, 7, 4, 2, 3, 1]
    assert hash_bucket_fast([], 7).dtype == np.int64 and keyed_order("0:0", 0).tolist() == []


@pytest.mark.slow
def test_fingerprint_equals_tensorflow_on_every_length():
    """Thousands of random strings of every length 0..300 (ASCII, and multi-byte UTF-8 up to 1,200 bytes)."""
    rng = random.Random(7)
    alphabets = ["abcxyz0123456789:-", "あいう吾輩猫。ｱ漢字", "😀𠮷é"]  # 1-, 3- and 2/4-byte characters
    keys = [b"".join(rng.choice(a).encode() for _ in range(n)) for n in range(301) for a in alphabets for _ in range(3)]
    keys += [bytes(rng.randrange(256) for _ in range(n)) for n in range(301)]  # any byte, not only UTF-8
    assert len(keys) > 3000 and max(map(len, keys)) > 1000
    for buckets in (HASH_BUCKETS, 3, 1_000_003, 2**62 + 7):
        expected = tf.strings.to_hash_bucket_fast(tf.constant(keys), buckets).numpy()
        assert np.array_equal(hash_bucket_fast(keys, buckets), expected), buckets
    ours = fingerprint64(keys)
    assert ours.tolist() == [fingerprint64_py(k) for k in keys]  # the numpy path and the plain-Python one
    strings = [k.decode() for k in keys[: 40 * 9]]  # str keys hash as their UTF-8 bytes
    assert np.array_equal(fingerprint64(strings), ours[: len(strings)])


@pytest.mark.parametrize("prefix", ["0:3", "5:0:17", "-1:12", "123456789:0"])
def test_keyed_order_equals_data_orders(prefix):
    for n in (0, 1, 9, 10, 11, 100, 1000, 25_000):
        assert np.array_equal(keyed_order(prefix, n), _keyed_order(tf, prefix, n).numpy()), n


# ----------------------------------------------------------------- the TFRecord reader


def test_crc32c_numpy_table_equals_the_c_extension():
    google_crc32c = pytest.importorskip("google_crc32c")
    rng = np.random.default_rng(0)
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    for width in (0, 1, 8, 77, 258):
        rows = rng.integers(0, 256, (50, width), dtype=np.uint8)
        assert crc32c_rows(rows).tolist() == [google_crc32c.value(r.tobytes()) for r in rows]


@pytest.mark.parametrize("name", ["many", "int32", "none"])
@pytest.mark.slow
def test_reader_equals_tf_data_record_for_record(shards, name):
    uri = shards[name]
    manifest = read_manifest_checked(uri)
    for entry in manifest["files"]:
        path = storage.join(uri, entry["path"])
        theirs = [r.numpy() for r in tf.data.TFRecordDataset(path, compression_type=manifest["compression"])]
        assert list(read_records(path, manifest["compression"])) == theirs
        rows = list(
            read_token_rows(
                path, compression=manifest["compression"], dtype=manifest["dtype"], example_len=manifest["example_len"]
            )
        )
        assert all(r.dtype == np.dtype({"uint16": "<u2", "int32": "<i4"}[manifest["dtype"]]) for r in rows)
        ours = np.concatenate(rows) if rows else np.zeros((0, manifest["example_len"]))
        expected = parse_examples(tf.constant(theirs), dtype=manifest["dtype"]).numpy() if theirs else ours
        assert len(ours) == entry["examples"] and np.array_equal(ours, expected)
    assert verify_shards(uri)["examples"] == manifest["counts"]["examples"]
    if name == "none":
        assert [e.tolist() for e in iter_examples(uri, "train")] == [
            e.tolist() for e in iter_examples(shards["many"], "train")
        ]


@pytest.mark.parametrize("block", [1, 7, 97, 4096])
def test_records_across_blocks_and_gzip_members(shards, tmp_path, monkeypatch, block):
    """Tiny read blocks put records across block edges; two gzip members split one record (TensorFlow reads on)."""
    from gpt2ja.model import records

    src = storage.join(shards["many"], "train-00001-of-00035.tfrecord")
    raw = gzip.decompress(Path(src).read_bytes())
    two = tmp_path / "two-members.tfrecord"
    two.write_bytes(gzip.compress(raw[:1001]) + gzip.compress(raw[1001:]))
    flat = tmp_path / "flat.tfrecord"
    flat.write_bytes(raw)
    expected = [r.numpy() for r in tf.data.TFRecordDataset(src, compression_type="GZIP")]
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(two), compression_type="GZIP")] == expected
    monkeypatch.setattr(records, "BLOCK", block)
    for path, compression in ((src, "GZIP"), (str(two), "GZIP"), (str(flat), "")):
        assert list(read_records(path, compression)) == expected, path


def _example(**features) -> bytes:
    kinds = {
        bytes: ("bytes_list", tf.train.BytesList),
        float: ("float_list", tf.train.FloatList),
        int: ("int64_list", tf.train.Int64List),
    }
    feature = {}
    for key, values in features.items():
        kind, cls = kinds[type(values[0]) if values else bytes]
        feature[key] = tf.train.Feature(**{kind: cls(value=values)})
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def test_example_parser_agrees_with_tensorflow(tmp_path):
    rng = random.Random(3)
    cases = [
        _example(tokens=[b"ab"]) + _example(tokens=[b"last wins"]),  # a map key twice: the last entry
        _example(tokens=[b"kept"]) + _example(other=[1, 2]),  # merged messages keep both features
        _example(tokens=[b""]),
        _example(tokens=[b"a", b"b"]),
        _example(tokens=[1]),
        _example(tokens=[1.5]),
        _example(tokens=[]),
        _example(other=[b"x"]),
        tf.train.Example(features=tf.train.Features(feature={"tokens": tf.train.Feature()})).SerializeToString(),
    ]
    for _ in range(200):  # other features around it, in random order and sizes
        extra = {
            f"f{i}": rng.choice(
                [
                    [rng.randrange(-9, 10**12) for _ in range(rng.randrange(5))],
                    [rng.random() for _ in range(rng.randrange(1, 5))],
                    [bytes(rng.randrange(256) for _ in range(rng.randrange(300)))],
                ]
            )
            for i in range(rng.randrange(4))
        }
        cases.append(_example(**extra, tokens=[bytes(rng.randrange(256) for _ in range(rng.randrange(400)))]))
    spec = {"tokens": tf.io.FixedLenFeature([], tf.string)}
    for record in cases:
        try:
            expected = tf.io.parse_example(tf.constant([record]), spec)["tokens"].numpy()[0]
        except tf.errors.InvalidArgumentError:
            expected = None
        try:
            ours = parse_bytes_feature(record, "tokens")
        except ValueError:
            ours = None
        assert ours == expected, record
    # Records of another writer (extra features, another layout): the general path gives TensorFlow's ids.
    path = str(tmp_path / "other.tfrecord")
    rows = np.random.default_rng(1).integers(0, 65536, (30, 9)).astype("<u2")
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for i, row in enumerate(rows):
            writer.write(_example(**({"id": [i]} if i % 2 else {}), tokens=[row.tobytes()]))
            writer.write(serialize_example(tf, row.tobytes()))  # and canonical ones in between
    ours = np.concatenate(list(read_token_rows(path, compression="GZIP", dtype="uint16", example_len=9)))
    assert np.array_equal(ours, np.repeat(rows, 2, axis=0))


# ----------------------------------------------------------------- the training order


def _settings(total: int) -> list[dict]:
    return [
        dict(global_batch=8),  # the default shuffle_buffer (10,000) is more than an epoch
        dict(global_batch=8, shuffle_buffer=50, start_example=37, seed=3),  # mid-block
        dict(global_batch=6, shuffle_buffer=512, start_example=total // 2 + 5),  # mid-epoch
        dict(global_batch=4, shuffle_buffer=7, start_example=total - 3),  # a batch across the epoch's end
        dict(global_batch=10, shuffle_buffer=100, start_example=3 * total + 11, seed=-2),  # past several epochs
    ]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["many", "int32", "sparse"])
def test_train_batches_equal_train_dataset(shards, name):
    uri = shards[name]
    total = sum(_counts(uri, "train"))
    assert name != "sparse" or 0 in _counts(uri, "train")  # files without an example are read too
    settings = _settings(total)
    for kw in settings if name == "many" else settings[1::3]:  # the others: mid-block, and across an epoch's end
        n = (total + 2 * kw["global_batch"]) // kw["global_batch"] + 1  # into the next epoch
        ours = _np_batches(train_batches(uri, **kw), n)
        _assert_same(ours, _tf_batches(train_dataset(uri, **kw), n))
        # Each worker's rows, together, are the global batch.
        halves = [_np_batches(train_batches(uri, **kw, workers=2, worker=w), n) for w in (0, 1)]
        _assert_same(halves[1], _tf_batches(train_dataset(uri, **kw, workers=2, worker=1), n))
        for k, ((x, y), (x0, y0), (x1, y1)) in enumerate(zip(ours, *halves)):
            assert np.array_equal(x, np.concatenate([x0, x1])) and np.array_equal(y, np.concatenate([y0, y1])), k


@pytest.mark.slow
def test_an_epoch_is_every_example_once_and_resumes_match(shards):
    uri = shards["many"]
    total = sum(_counts(uri, "train"))
    everything = np.concatenate([e[None] for e in iter_examples(uri, "train")])
    flat = np.concatenate(
        [
            np.concatenate([x, y[:, -1:]], 1)
            for x, y in _np_batches(train_batches(uri, global_batch=9, shuffle_buffer=300), 2 * total // 9)
        ]
    )
    first = flat[:total]
    assert np.array_equal(np.unique(first, axis=0), np.unique(everything, axis=0))  # the same multiset of rows
    assert np.array_equal(first[np.lexsort(first.T[::-1])], everything[np.lexsort(everything.T[::-1])])
    assert not np.array_equal(first[:100], flat[total : total + 100])  # the next epoch in another order
    for start in (1, 299, 300, 301, total - 1, total, total + 450):  # every resume continues the same stream
        again = _np_batches(train_batches(uri, global_batch=9, shuffle_buffer=300, start_example=start), 4)
        rows = np.concatenate([np.concatenate([x, y[:, -1:]], 1) for x, y in again])
        assert np.array_equal(rows, flat[start : start + 36]), start


@pytest.mark.slow
def test_trace_lines_equal(shards, tmp_path):
    uri, n = shards["many"], 40
    for w in (0, 1):
        kw = dict(global_batch=8, workers=2, worker=w, shuffle_buffer=64, start_example=13)
        _tf_batches(train_dataset(uri, **kw, trace_dir=str(tmp_path / "tf")), n)
        _np_batches(train_batches(uri, **kw, trace_dir=str(tmp_path / "np")), n)
    ours, theirs = read_trace(str(tmp_path / "np")), read_trace(str(tmp_path / "tf"))
    assert sorted(ours) == sorted(theirs) == [0, 1]
    for w in (0, 1):  # both read ahead of what was taken: the first n batches' lines are what they have in common
        assert len(ours[w]) >= n * 4 and len(theirs[w]) >= n * 4
        assert ours[w][: n * 4] == theirs[w][: n * 4]
        assert [line["pos"] for line in ours[w][:8]] == [13 + w * 4 + i for i in range(4)] + [
            21 + w * 4 + i for i in range(4)
        ]
    lines = (tmp_path / "np" / "worker0.jsonl").read_text().splitlines()[:3]
    assert lines == (tmp_path / "tf" / "worker0.jsonl").read_text().splitlines()[:3]  # the same bytes per line


def test_argument_errors_match(shards):
    uri = shards["many"]
    for kw, words in (
        (dict(global_batch=7, workers=2), "positive multiple"),
        (dict(global_batch=8, worker=1), "worker 1 in 0..0"),
        (dict(global_batch=8, start_example=-1), "start_example -1"),
    ):
        with pytest.raises(DataError) as ours:
            train_batches(uri, **kw)
        with pytest.raises(DataError) as theirs:
            train_dataset(uri, **kw)
        assert one_line_error(ours, words).replace("train_batches", "train_dataset") == str(theirs.value)
    with pytest.raises(DataError) as excinfo:
        validation_batches(uri, 2, num_input_pipelines=21)
    one_line_error(excinfo, uri, "20 files", "21 input pipelines")


# ----------------------------------------------------------------- the validation stream


@pytest.mark.slow
@pytest.mark.parametrize("name, batch, pipelines", [("many", 4, 1), ("many", 3, 3), ("int32", 5, 2), ("sparse", 2, 1)])
def test_validation_batches_equal_make_dataset(shards, name, batch, pipelines):
    """Past the first repeat, and with more files than slots (``many``: 20 files, cycle 16) or empty ones."""
    uri = shards[name]
    counts = _counts(uri, "validation")
    for pid in sorted({0, pipelines - 1}):
        own = sum(counts[pid::pipelines])
        n = 2 * own // batch + 3  # beyond the second pass over this pipeline's files
        ours = _np_batches(validation_batches(uri, batch, num_input_pipelines=pipelines, input_pipeline_id=pid), n)
        theirs = _tf_batches(
            make_dataset(
                uri,
                "validation",
                batch,
                shuffle=False,
                deterministic=True,
                repeat=True,
                num_input_pipelines=pipelines,
                input_pipeline_id=pid,
            ),
            n,
        )
        _assert_same(ours, theirs)


# ----------------------------------------------------------------- damage, threads, no TensorFlow


def _damaged(src: str, dest: Path, damage) -> tuple[str, Path]:
    shutil.copytree(src, dest)
    victim = dest / "train-00002-of-00035.tfrecord"
    victim.write_bytes(damage(victim.read_bytes()))
    return str(dest), victim


def _flip(at: int):
    return lambda data: data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1 :]


@pytest.mark.parametrize(
    "source, damage, words",
    [
        ("none", _flip(40), "record 0: the data's CRC does not match"),  # inside record 0's 52 bytes of data
        ("none", _flip(2 * 68), "record 2: the length's CRC"),  # record 2's length (68 bytes a record)
        ("none", lambda d: d[: len(d) - 5], "is cut off"),
        ("many", lambda d: d[: len(d) // 2], "GZIP stream ends early"),
        ("many", _flip(-6), "bad GZIP data"),  # the gzip trailer's own CRC
        ("many", lambda d: b"", "GZIP stream ends early"),
    ],
)
def test_a_damaged_file_is_one_line_naming_it(shards, tmp_path, source, damage, words):
    uri, victim = _damaged(shards[source], tmp_path / "copy", damage)
    fix = "rerun `gpt2ja shards` with the same arguments: only that shard is rebuilt"
    with pytest.raises(DataError) as excinfo:
        verify_shards(uri)
    one_line_error(excinfo, str(victim), "is corrupt, truncated or missing", words, fix)
    with pytest.raises(DataError) as excinfo:
        list(iter_examples(uri, "train", shard=2))
    one_line_error(excinfo, str(victim), words)
    batches = train_batches(uri, global_batch=64, shuffle_buffer=10)  # met mid-stream, in the reading thread
    with pytest.raises(DataError) as excinfo:
        for _ in range(1000):
            next(batches)
    one_line_error(excinfo, str(victim), words, fix)


def test_missing_or_misfit_files_are_named(shards, tmp_path):
    uri, victim = _damaged(shards["many"], tmp_path / "copy", lambda d: d)
    victim.unlink()
    with pytest.raises(DataError) as excinfo:
        verify_shards(uri)
    one_line_error(excinfo, str(victim), "missing", "not found")
    # A valid file of examples of another length: the message iter_examples always gave.
    with tf.io.TFRecordWriter(str(victim), options="GZIP") as writer:
        writer.write(serialize_example(tf, pack_tokens(range(5), "uint16")))
    with pytest.raises(DataError) as excinfo:
        list(iter_examples(uri, "train", shard=2))
    one_line_error(excinfo, str(victim), "holds examples of 5 ids, its manifest says 17", "rebuild the shards")


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "gpt2ja-prefetch" and t.is_alive()]


def test_the_reading_thread_dies_with_the_iterator(shards):
    before = len(_prefetch_threads())
    batches = train_batches(shards["many"], global_batch=8)
    next(batches)
    assert len(_prefetch_threads()) == before + 1
    batches.close()
    assert len(_prefetch_threads()) == before
    with pytest.raises(StopIteration):
        next(batches)
    batches = validation_batches(shards["many"], 4)
    next(batches)
    del batches  # garbage-collected: the thread stops within one read
    gc.collect()
    deadline = time.monotonic() + 10
    while len(_prefetch_threads()) > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(_prefetch_threads()) == before


def _digest(batches, n: int) -> str:
    h = hashlib.sha256()
    for _ in range(n):
        for a in next(batches):
            h.update(a.dtype.str.encode() + str(a.shape).encode() + a.tobytes())
    batches.close()
    return h.hexdigest()


NO_TF_SCRIPT = """
import hashlib, json, sys
from gpt2ja.model.data import validation_batches, verify_shards
from gpt2ja.model.data_order import train_batches
from gpt2ja.model import records
uri = sys.argv[1]
out = {"train": _digest(train_batches(uri, global_batch=8, workers=2, worker=1, shuffle_buffer=100, start_example=50,
                                      seed=4), 300),
       "validation": _digest(validation_batches(uri, 4, num_input_pipelines=2, input_pipeline_id=1), 200),
       "verify": verify_shards(uri), "c_crc": records._crc32c_c is not None,
       "tensorflow": "tensorflow" in sys.modules and getattr(sys.modules["tensorflow"], "__version__", None)}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_numpy_pipelines_run_where_tensorflow_cannot_be_imported(shards, tmp_path):
    blocked = tmp_path / "blocked"
    for name in ("tensorflow", "google_crc32c"):  # and the CRC extension: the numpy table checks the records
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ImportError('{name} is blocked in this test')\n")
    uri = shards["many"]
    # the digests this process gets (where both are importable; equal to TensorFlow's batches by the tests above)
    expected = {
        "train": _digest(
            train_batches(uri, global_batch=8, workers=2, worker=1, shuffle_buffer=100, start_example=50, seed=4), 300
        ),
        "validation": _digest(validation_batches(uri, 4, num_input_pipelines=2, input_pipeline_id=1), 200),
    }
    env = {"PYTHONPATH": f"{blocked}:{REPO}", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    script = inspect.getsource(_digest) + NO_TF_SCRIPT
    proc = subprocess.run(
        [sys.executable, "-c", script, uri], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    assert got["tensorflow"] is False and got["c_crc"] is False
    assert {k: got[k] for k in expected} == expected
    assert got["verify"] == verify_shards(uri)


@pytest.mark.slow
def test_gcs_reads_equal_local_ones(shards, gcs_emulator):
    uri = f"gs://{gcs_emulator.bucket}/records-test/int32"
    storage.upload_dir(shards["int32"], uri)
    total = sum(_counts(uri, "train"))
    kw = dict(global_batch=6, shuffle_buffer=40, start_example=total - 10)
    _assert_same(_np_batches(train_batches(uri, **kw), 20), _np_batches(train_batches(shards["int32"], **kw), 20))
    _assert_same(_np_batches(validation_batches(uri, 3), 50), _np_batches(validation_batches(shards["int32"], 3), 50))
    assert [e.tolist() for e in iter_examples(uri, "train")] == [
        e.tolist() for e in iter_examples(shards["int32"], "train")
    ]
