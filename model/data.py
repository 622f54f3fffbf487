"""Token shards → ``tf.data`` batches of ``(inputs, targets)`` for training and evaluation.

Reads what :mod:`tokenization.shards` writes: GZIP TFRecord files of
``tf.train.Example`` with one bytes feature ``tokens`` = ``seq_len + 1`` raw
little-endian ids (uint16 or int32, from the manifest). A batch is::

    inputs  = tokens[:, :-1]   # (B, seq_len) int32
    targets = tokens[:, 1:]    # (B, seq_len) int32, the next id of every input position

The pipeline: the manifest's files in its fixed order → ``shard`` by input
pipeline (each host of a multi-host job reads disjoint files) → shuffle files →
repeat → ``interleave`` over TFRecord readers → shuffle records → batch
(``drop_remainder``, so shapes are static for XLA/TPU) → parse → prefetch.
Parsing happens on whole batches (one ``parse_example`` + ``decode_raw`` per
batch), which keeps reading far ahead of training.

``gs://`` URIs are read directly by TensorFlow's GCS filesystem (what a TPU VM
does); the manifest is read through :mod:`infra.storage`.

Example::

    manifest = read_manifest_checked("gs://bucket/shards/sp32k-1024", tokenizer=tok)
    ds = make_dataset("gs://bucket/shards/sp32k-1024", "train", batch_size=32,
                      num_input_pipelines=jax.process_count(), input_pipeline_id=jax.process_index())
    for inputs, targets in ds.take(10): ...
    verify_shards("gs://bucket/shards/sp32k-1024")   # before a long run: reads every file once
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from infra import stage, storage
from infra.errors import Gpt2jaError
from tokenization.shards import DTYPES, FEATURE, STAGE, import_tensorflow

if TYPE_CHECKING:
    from tokenization.tokenizer import Tokenizer

AUTOTUNE = -1  # == tf.data.AUTOTUNE, spelled out so importing this module does not import TensorFlow
_CYCLE_LENGTH = 16  # TFRecord files read at once per input pipeline
_READ_BUFFER = 1 << 20  # bytes per TFRecord reader; larger reads pay off on gs://
_REQUIRED = ("seq_len", "example_len", "dtype", "feature", "compression", "vocab_size", "eos_id", "files")


class DataError(Gpt2jaError, ValueError):
    """Shards that cannot be read or do not fit: one line naming the artifact and the fix."""


def read_manifest_checked(shards_uri: str, tokenizer: "Tokenizer | str | None" = None) -> dict:
    """The shards' manifest; a DataError when it is missing, not a shards artifact, or made with another vocabulary.

    ``tokenizer`` (an object or an artifact URI) must have the shards'
    ``vocab_size`` and ``eos_id``: a model trained on ids from one tokenizer
    and sampled with another produces garbage, so the mismatch stops here.
    """
    manifest = stage.require(shards_uri, "shards", "build them with `gpt2ja shards`, or check the URI", DataError)
    missing = [k for k in _REQUIRED if k not in manifest]
    if manifest.get("stage") != STAGE or missing or manifest["dtype"] not in DTYPES:
        raise DataError(f"shards {shards_uri}: its {storage.MANIFEST} is not a shards manifest "
                        f"(stage {manifest.get('stage')!r}, missing {missing or 'nothing'}); "
                        "point at a directory written by `gpt2ja shards`")
    if tokenizer is not None:
        name = tokenizer if isinstance(tokenizer, str) else getattr(tokenizer, "kind", "given") + " tokenizer"
        if isinstance(tokenizer, str):
            from tokenization.tokenizer import Tokenizer, TokenizerError

            try:
                tokenizer = Tokenizer.load(tokenizer)
            except (TokenizerError, storage.StorageError) as err:
                raise DataError(str(err)) from None
        made_with = (manifest.get("tokenizer") or {}).get("uri")
        made_with = stage.input_uri(manifest, made_with) if made_with else "another tokenizer"
        fix = "use that tokenizer or rebuild the shards with `gpt2ja shards --tokenizer ...`"
        if (tokenizer.vocab_size, tokenizer.eos_id) != (manifest["vocab_size"], manifest["eos_id"]):
            raise DataError(
                f"tokenizer/shard mismatch: {name} has vocab size {tokenizer.vocab_size} (eos_id {tokenizer.eos_id}) "
                f"but shards {shards_uri} hold ids of vocab size {manifest['vocab_size']} (eos_id "
                f"{manifest['eos_id']}) from {made_with}; {fix}")
        built_with = (manifest.get("tokenizer") or {}).get("fingerprint")
        given = getattr(tokenizer, "fingerprint", None)
        if built_with and given and given != built_with:  # same size, another model: ids would mean other text
            raise DataError(
                f"tokenizer/shard mismatch: {name} (fingerprint {given[:12]}) is not the tokenizer shards "
                f"{shards_uri} were built with ({made_with}, fingerprint {built_with[:12]}), although both have "
                f"{manifest['vocab_size']} ids; {fix}")
    return manifest


def shard_files(manifest: dict, split: str) -> list[str]:
    """The URIs of ``split``'s TFRecord files, in the manifest's (fixed) order."""
    entries = [f for f in manifest["files"] if f.get("split") == split]
    if not entries:
        have = sorted({f.get("split") for f in manifest["files"]})
        raise DataError(f"shards {manifest['uri']}: no {split!r} split (it has {', '.join(have)}); "
                        "use one of those or rebuild the shards with that split")
    return [_tf_readable(manifest, f) for f in entries]


def _tf_readable(manifest: dict, entry: dict) -> str:
    """Where TensorFlow reads one listed file: its URI, or a verified local copy when gs:// is an emulator.

    TensorFlow's own GCS filesystem reads ``gs://`` directly (as on a TPU VM)
    but cannot be pointed at ``STORAGE_EMULATOR_HOST``; against an emulator the
    file is copied once to a local cache named by its sha256 (checked on copy).
    """
    uri = storage.join(manifest["uri"], entry["path"])
    if not storage.is_gcs(uri) or not os.environ.get("STORAGE_EMULATOR_HOST") or not entry.get("sha256"):
        return uri
    local = os.path.join(tempfile.gettempdir(), "gpt2ja-emulated-gcs", entry["sha256"] + ".tfrecord")
    if not os.path.exists(local):
        tmp = f"{local}.{os.getpid()}.part"
        os.makedirs(os.path.dirname(local), exist_ok=True)
        _download(uri, tmp)
        if storage.file_info(tmp)["sha256"] != entry["sha256"]:
            os.unlink(tmp)
            raise DataError(f"shards file {uri} does not match the sha256 in its manifest; rebuild the shards")
        os.replace(tmp, local)
    return local


def _download(uri: str, path: str) -> None:
    with storage.open(uri, "rb") as src, open(path, "wb") as dst:
        for block in iter(lambda: src.read(1 << 20), b""):
            dst.write(block)


def parse_examples(serialized, *, dtype: str):
    """(B,) serialized Examples → (B, example_len) int32 ids (a TensorFlow op, usable inside ``map``)."""
    import tensorflow as tf  # already imported by the caller; plain import so autograph can trace it
    raw = tf.io.parse_example(serialized, {FEATURE: tf.io.FixedLenFeature([], tf.string)})[FEATURE]
    ids = tf.io.decode_raw(raw, {"uint16": tf.uint16, "int32": tf.int32}[dtype], little_endian=True)
    return tf.cast(ids, tf.int32)


def make_dataset(shards_uri: str, split: str, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 deterministic: bool = True, repeat: bool = True, num_input_pipelines: int = 1,
                 input_pipeline_id: int = 0, shuffle_buffer: int = 10_000, prefetch: int = AUTOTUNE):
    """A ``tf.data.Dataset`` of ``(inputs, targets)``, each ``(batch_size, seq_len)`` int32.

    ``targets`` is ``inputs`` shifted left by one (both are slices of one
    ``seq_len + 1`` window). Input pipeline ``input_pipeline_id`` of
    ``num_input_pipelines`` reads every ``num_input_pipelines``-th file, so
    hosts never read the same example. With ``deterministic=True`` and a fixed
    ``seed`` the order of batches is the same on every run.
    """
    manifest = read_manifest_checked(shards_uri)
    files = shard_files(manifest, split)
    if batch_size < 1 or num_input_pipelines < 1 or not 0 <= input_pipeline_id < num_input_pipelines:
        raise DataError(f"make_dataset: batch_size {batch_size} must be ≥ 1 and input_pipeline_id "
                        f"{input_pipeline_id} in 0..{num_input_pipelines - 1}; fix the arguments")
    if len(files) < num_input_pipelines:
        raise DataError(f"shards {shards_uri}: the {split} split has {len(files)} files, fewer than the "
                        f"{num_input_pipelines} input pipelines (some would read nothing); rebuild the shards "
                        f"with num_shards[{split!r}] ≥ {num_input_pipelines}")
    tf = import_tensorflow()
    dtype, example_len = manifest["dtype"], manifest["example_len"]
    compression = manifest["compression"]
    own = len(files[input_pipeline_id::num_input_pipelines])

    ds = tf.data.Dataset.from_tensor_slices(files)  # the manifest's order: the same on every host
    ds = ds.shard(num_input_pipelines, input_pipeline_id)  # before interleave: disjoint files per host
    if shuffle:
        ds = ds.shuffle(own, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type=compression, buffer_size=_READ_BUFFER),
        cycle_length=min(own, _CYCLE_LENGTH), block_length=1, num_parallel_calls=AUTOTUNE,
        deterministic=deterministic)
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)  # serialized records: small

    def to_pair(serialized):
        ids = tf.ensure_shape(parse_examples(serialized, dtype=dtype), [batch_size, example_len])
        return ids[:, :-1], ids[:, 1:]  # (B, seq_len) each

    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.map(to_pair, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    options = tf.data.Options()
    options.deterministic = deterministic
    return ds.with_options(options).prefetch(prefetch)


# ----------------------------------------------------------------- helpers that name broken files


def tf_message(err) -> str:
    text = re.sub(r"\{\{function_node[^}]*\}\}", "", getattr(err, "message", str(err)))
    text = re.sub(r"\[Op:[^\]]*\].*$", "", text, flags=re.S)
    return " ".join(text.replace("'", "").split())[:200]


def _file_examples(uri: str, manifest: dict, batch: int = 1024) -> Iterator[np.ndarray]:
    """The ``(n, example_len)`` int32 batches of one file, in file order; a broken file is a DataError naming it."""
    tf = import_tensorflow()
    ds = tf.data.TFRecordDataset(uri, compression_type=manifest["compression"]).batch(batch)
    ds = ds.map(lambda s: parse_examples(s, dtype=manifest["dtype"]))
    it = iter(ds)
    while True:
        try:
            ids = next(it).numpy()
        except StopIteration:
            return
        except tf.errors.OpError as err:
            raise DataError(
                f"shards file {uri} is corrupt, truncated or missing ({tf_message(err)}); delete it and "
                f"{storage.join(manifest['uri'], storage.MANIFEST)}, then rerun `gpt2ja shards` with the same "
                "arguments: only that shard is rebuilt") from None
        if ids.shape[1] != manifest["example_len"]:
            raise DataError(f"shards file {uri} holds examples of {ids.shape[1]} ids, its manifest says "
                            f"{manifest['example_len']}; rebuild the shards")
        yield ids


def iter_examples(shards_uri: str, split: str, shard: int | None = None) -> Iterator[np.ndarray]:
    """Every example of ``split`` (or of its file number ``shard``) as a ``(seq_len + 1,)`` int32 array, in order."""
    manifest = read_manifest_checked(shards_uri)
    files = shard_files(manifest, split)
    for uri in files if shard is None else [files[shard]]:
        for ids in _file_examples(uri, manifest):
            yield from ids


def verify_shards(shards_uri: str) -> dict:
    """Read every file once; a DataError names the first corrupt, truncated or miscounted one.

    Returns ``{"files": n, "examples": n}``. Run it before a long training job:
    TensorFlow reports a damaged record deep inside the input pipeline, mid-run.
    """
    manifest = read_manifest_checked(shards_uri)
    total = 0
    for entry in manifest["files"]:
        uri = storage.join(manifest["uri"], entry["path"])
        n = sum(len(ids) for ids in _file_examples(uri, manifest))
        if n != entry.get("examples", n):
            raise DataError(f"shards file {uri} has {n} examples, its manifest says {entry['examples']}: it was "
                            f"replaced or damaged; delete it and {storage.MANIFEST}, then rerun `gpt2ja shards`")
        total += n
    return {"files": len(manifest["files"]), "examples": total}
