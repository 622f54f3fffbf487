"""Token shards → ``tf.data`` batches of ``(inputs, targets)`` for training and evaluation.

Reads what :mod:`gpt2ja.tokenization.shards` writes: GZIP TFRecord files of
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
does); the manifest is read through :mod:`gpt2ja.infra.storage`.

Without TensorFlow (the JAX backend): :func:`validation_batches` gives the
stream ``make_dataset(..., "validation", shuffle=False)`` gives, as numpy
arrays, read by :mod:`gpt2ja.model.records` through :mod:`gpt2ja.infra.storage` (so
``gs://`` and its emulator alike); :func:`iter_examples` and
:func:`verify_shards` use that reader too. The interleave they share
(:func:`interleave`) follows ``tf.data``'s rules record for record.

Example::

    manifest = read_manifest_checked("gs://bucket/shards/sp32k-1024", tokenizer=tok)
    ds = make_dataset("gs://bucket/shards/sp32k-1024", "train", batch_size=32,
                      num_input_pipelines=jax.process_count(), input_pipeline_id=jax.process_index())
    for inputs, targets in ds.take(10): ...
    val = validation_batches("gs://bucket/shards/sp32k-1024", 32)   # numpy, no TensorFlow
    inputs, targets = next(val)                                      # (32, seq_len) int32 each
    verify_shards("gs://bucket/shards/sp32k-1024")   # before a long run: reads every file once
"""

from __future__ import annotations

import os
import queue
import re
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from gpt2ja.infra import stage, storage
from gpt2ja.model.records import DataError, read_token_rows  # DataError lives with the reader; imported from here too
from gpt2ja.tokenization.shards import DTYPES, FEATURE, STAGE, import_tensorflow

if TYPE_CHECKING:
    from gpt2ja.tokenization.tokenizer import Tokenizer

AUTOTUNE = -1  # == tf.data.AUTOTUNE, spelled out so importing this module does not import TensorFlow
_CYCLE_LENGTH = 16  # TFRecord files read at once per input pipeline
_READ_BUFFER = 1 << 20  # bytes per TFRecord reader; larger reads pay off on gs://
_REQUIRED = ("seq_len", "example_len", "dtype", "feature", "compression", "vocab_size", "eos_id", "files")


def read_manifest_checked(shards_uri: str, tokenizer: "Tokenizer | str | None" = None) -> dict:
    """The shards' manifest; a DataError when it is missing, not a shards artifact, or made with another vocabulary.

    ``tokenizer`` (an object or an artifact URI) must have the shards'
    ``vocab_size`` and ``eos_id``: a model trained on ids from one tokenizer
    and sampled with another produces garbage, so the mismatch stops here.
    """
    manifest = stage.require(shards_uri, "shards", "build them with `gpt2ja shards`, or check the URI", DataError)
    missing = [k for k in _REQUIRED if k not in manifest]
    if manifest.get("stage") != STAGE or missing or manifest["dtype"] not in DTYPES:
        raise DataError(
            f"shards {shards_uri}: its {storage.MANIFEST} is not a shards manifest "
            f"(stage {manifest.get('stage')!r}, missing {missing or 'nothing'}); "
            "point at a directory written by `gpt2ja shards`"
        )
    if tokenizer is not None:
        name = tokenizer if isinstance(tokenizer, str) else getattr(tokenizer, "kind", "given") + " tokenizer"
        if isinstance(tokenizer, str):
            from gpt2ja.tokenization.tokenizer import Tokenizer, TokenizerError

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
                f"{manifest['eos_id']}) from {made_with}; {fix}"
            )
        built_with = (manifest.get("tokenizer") or {}).get("fingerprint")
        given = getattr(tokenizer, "fingerprint", None)
        if built_with and given and given != built_with:  # same size, another model: ids would mean other text
            raise DataError(
                f"tokenizer/shard mismatch: {name} (fingerprint {given[:12]}) is not the tokenizer shards "
                f"{shards_uri} were built with ({made_with}, fingerprint {built_with[:12]}), although both have "
                f"{manifest['vocab_size']} ids; {fix}"
            )
    return manifest


def _split_entries(manifest: dict, split: str) -> list[dict]:
    entries = [f for f in manifest["files"] if f.get("split") == split]
    if not entries:
        have = sorted({f.get("split") for f in manifest["files"]})
        raise DataError(
            f"shards {manifest['uri']}: no {split!r} split (it has {', '.join(have)}); "
            "use one of those or rebuild the shards with that split"
        )
    return entries


def shard_files(manifest: dict, split: str) -> list[str]:
    """Where TensorFlow reads ``split``'s TFRecord files, in the manifest's (fixed) order."""
    return [_tf_readable(manifest, f) for f in _split_entries(manifest, split)]


def file_uris(manifest: dict, split: str) -> list[str]:
    """The URIs of ``split``'s TFRecord files, in the manifest's order (read by :mod:`gpt2ja.model.records`)."""
    return [storage.join(manifest["uri"], f["path"]) for f in _split_entries(manifest, split)]


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


def make_dataset(
    shards_uri: str,
    split: str,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    deterministic: bool = True,
    repeat: bool = True,
    num_input_pipelines: int = 1,
    input_pipeline_id: int = 0,
    shuffle_buffer: int = 10_000,
    prefetch: int = AUTOTUNE,
):
    """A ``tf.data.Dataset`` of ``(inputs, targets)``, each ``(batch_size, seq_len)`` int32.

    ``targets`` is ``inputs`` shifted left by one (both are slices of one
    ``seq_len + 1`` window). Input pipeline ``input_pipeline_id`` of
    ``num_input_pipelines`` reads every ``num_input_pipelines``-th file, so
    hosts never read the same example. With ``deterministic=True`` and a fixed
    ``seed`` the order of batches is the same on every run.
    """
    manifest = read_manifest_checked(shards_uri)
    files = shard_files(manifest, split)
    _check_pipelines("make_dataset", shards_uri, split, len(files), batch_size, num_input_pipelines, input_pipeline_id)
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
        cycle_length=min(own, _CYCLE_LENGTH),
        block_length=1,
        num_parallel_calls=AUTOTUNE,
        deterministic=deterministic,
    )
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


def _check_pipelines(
    who: str,
    shards_uri: str,
    split: str,
    n_files: int,
    batch_size: int,
    num_input_pipelines: int,
    input_pipeline_id: int,
) -> None:
    if batch_size < 1 or num_input_pipelines < 1 or not 0 <= input_pipeline_id < num_input_pipelines:
        raise DataError(
            f"{who}: batch_size {batch_size} must be ≥ 1 and input_pipeline_id "
            f"{input_pipeline_id} in 0..{num_input_pipelines - 1}; fix the arguments"
        )
    if n_files < num_input_pipelines:
        raise DataError(
            f"shards {shards_uri}: the {split} split has {n_files} files, fewer than the "
            f"{num_input_pipelines} input pipelines (some would read nothing); rebuild the shards "
            f"with num_shards[{split!r}] ≥ {num_input_pipelines}"
        )


# ----------------------------------------------------------------- without TensorFlow: numpy streams

PREFETCH = 4  # batches read ahead by a numpy pipeline's thread


def validation_batches(
    shards_uri: str, batch_size: int, *, num_input_pipelines: int = 1, input_pipeline_id: int = 0
) -> "Prefetched":
    """``make_dataset(shards_uri, "validation", batch_size, shuffle=False, repeat=True, ...)`` without TensorFlow.

    An endless iterator of ``(inputs, targets)``, ``(batch_size, seq_len)``
    int32 numpy arrays each, equal batch for batch to that ``tf.data``
    stream: this pipeline's files (every ``num_input_pipelines``-th from
    ``input_pipeline_id``) repeated, read by :func:`interleave` with a cycle
    of ``min(own files, 16)`` (when a file ends its slot takes the next file
    of the repeated list), cut into batches. Reading runs ahead in one
    daemon thread; ``close()`` stops it.

    Example::

        val = validation_batches("data/shards/sp32k-1024", 32)
        inputs, targets = next(val)      # (32, seq_len) int32 each; targets[:, :-1] == inputs[:, 1:]
        val.close()
    """
    manifest = read_manifest_checked(shards_uri)
    uris = file_uris(manifest, "validation")
    _check_pipelines(
        "validation_batches", shards_uri, "validation", len(uris), batch_size, num_input_pipelines, input_pipeline_id
    )
    own = uris[input_pipeline_id::num_input_pipelines]
    read = file_reader(manifest)
    seen = [0]  # rows read so far: a pass over files that hold none would loop forever

    def counted(uri: str) -> Iterator[np.ndarray]:
        for rows in read(uri):
            seen[0] += len(rows)
            yield rows

    def repeated() -> Iterator[str]:
        while True:
            yield from own
            if not seen[0]:  # every file has been opened and read once by now (see interleave)
                raise DataError(
                    f"shards {shards_uri}: the validation files of input pipeline {input_pipeline_id} "
                    f"({', '.join(own)}) hold no example; rebuild the shards (verify_shards names "
                    "a damaged one) or use fewer input pipelines"
                )

    rows = interleave(repeated(), min(len(own), _CYCLE_LENGTH), counted)
    return Prefetched(pairs(rebatch(rows, batch_size)))


def file_reader(manifest: dict) -> Callable[[str], Iterator[np.ndarray]]:
    """``uri → (k, example_len)`` row blocks of one file in the stored dtype, errors naming the file and the fix."""
    compression, dtype, example_len = manifest["compression"], manifest["dtype"], manifest["example_len"]
    fix = _rebuild_hint(manifest)
    return lambda uri: read_token_rows(uri, compression=compression, dtype=dtype, example_len=example_len, fix=fix)


def pairs(batches: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(B, seq_len + 1)`` id blocks → ``(inputs, targets)``, ``(B, seq_len)`` int32 each (contiguous)."""
    for ids in batches:  # fresh, writable arrays: never views of a reader's buffer
        yield np.array(ids[:, :-1], np.int32, order="C"), np.array(ids[:, 1:], np.int32, order="C")


class _Slot:
    """One open file of an interleave: its row blocks, read one block at a time."""

    def __init__(self, blocks: Iterator[np.ndarray]) -> None:
        self.blocks, self.rows, self.at = blocks, None, 0

    def available(self) -> int:
        """Rows buffered (reading the next block when none are); 0 once the file is exhausted."""
        while self.rows is None or self.at == len(self.rows):
            self.rows, self.at = next(self.blocks, None), 0
            if self.rows is None:
                return 0
        return len(self.rows) - self.at

    def take(self, n: int) -> np.ndarray:
        self.at += n
        return self.rows[self.at - n : self.at]


def interleave(
    files: Iterator[str], cycle_length: int, open_rows: Callable[[str], Iterator[np.ndarray]]
) -> Iterator[np.ndarray]:
    """``tf.data.Dataset.interleave(..., cycle_length, block_length=1)`` over row blocks: the same rows, same order.

    tf.data's rule, replayed: ``cycle_length`` slots visited in turn; a visit
    to an empty slot opens the next file there (and reads from it at once),
    a visit to an open one yields its next row and moves on, or, when the
    file is exhausted, empties the slot and moves on; it ends when no file
    is left and no slot is open. (``deterministic=True`` parallel interleave
    gives this order too.) Whole rounds, where every open slot has rows
    buffered and the next visit is slot 0, are cut as one ``(m · slots, L)``
    block instead of row by row. Yields non-empty ``(n, L)`` blocks.

    Example::

        rows = interleave(iter(uris), 16, file_reader(manifest))    # 16 files read one record each in turn
    """
    slots: list[_Slot | None] = [None] * cycle_length
    at, opened, exhausted = 0, 0, False  # the slot visited next; open slots; no file left
    while not exhausted or opened:
        if at == 0 and (exhausted or opened == cycle_length):
            live = [s for s in slots if s is not None]
            m = min(s.available() for s in live) if live else 0
            if m:  # m whole rounds: one row from each open slot in slot order, m times
                block = np.stack([s.take(m) for s in live], axis=1)  # (m, slots, L)
                yield block.reshape(m * len(live), *block.shape[2:])
                continue
        slot = slots[at]
        if slot is not None:
            if slot.available():
                yield slot.take(1)
            else:
                slots[at], opened = None, opened - 1
            at = (at + 1) % cycle_length
        elif not exhausted:
            uri = next(files, None)
            if uri is None:
                exhausted = True
            else:
                slots[at], opened = _Slot(iter(open_rows(uri))), opened + 1
        else:
            at = (at + 1) % cycle_length


def rebatch(blocks: Iterable[np.ndarray], size: int, *, partial: bool = False) -> Iterator[np.ndarray]:
    """Row blocks → blocks of exactly ``size`` rows (and, with ``partial``, the shorter rest at the end)."""
    parts, have = [], 0
    for block in blocks:
        while len(block):
            part, block = block[: size - have], block[size - have :]
            parts.append(part)
            have += len(part)
            if have == size:
                yield parts[0] if len(parts) == 1 else np.concatenate(parts)
                parts, have = [], 0
    if partial and have:
        yield np.concatenate(parts)


def skip(blocks: Iterable[np.ndarray], n: int) -> Iterator[np.ndarray]:
    """Row blocks without their first ``n`` rows (``Dataset.skip`` on the rows)."""
    for block in blocks:
        if n:
            if n >= len(block):
                n -= len(block)
                continue
            block, n = block[n:], 0
        yield block


_END = object()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _produce(source: Iterator, out: queue.Queue, stop: threading.Event) -> None:
    """The reading thread: ``source``'s items (then an end mark, or the error it raised) into ``out``."""

    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    try:
        for item in source:
            if not put(item):
                return
        put(_END)
    except BaseException as err:  # noqa: BLE001 - handed to the consumer, raised there
        put(_Failed(err))
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()  # ends the generators: open files are closed in this thread


class Prefetched:
    """An iterator over ``source`` read ahead by one daemon thread, ``depth`` items deep.

    The thread dies with the iterator: at the end of ``source``, on an error
    (raised again by ``next``, with its traceback), on :meth:`close`, on
    leaving a ``with`` block, or when the iterator is garbage-collected.

    Example::

        with Prefetched(pairs(rebatch(rows, 32))) as batches:
            inputs, targets = next(batches)
    """

    def __init__(self, source: Iterator, depth: int = PREFETCH) -> None:
        self._queue: queue.Queue = queue.Queue(max(1, depth))
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(
            target=_produce, args=(source, self._queue, self._stop), name="gpt2ja-prefetch", daemon=True
        )
        self._thread.start()

    def __iter__(self) -> "Prefetched":
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is _END or isinstance(item, _Failed):
            self._done = True
            self._thread.join()
            if item is _END:
                raise StopIteration
            raise item.error
        return item

    def close(self) -> None:
        """Stop the reading thread (it finishes the read in progress, then ends)."""
        self._done = True
        self._stop.set()
        while self._thread.is_alive():
            try:
                while True:
                    self._queue.get_nowait()  # a full queue: let a pending put see the stop
            except queue.Empty:
                pass
            self._thread.join(timeout=0.1)

    def __enter__(self) -> "Prefetched":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()  # no join here: the thread ends on its own within one read


# ----------------------------------------------------------------- helpers that name broken files


def tf_message(err) -> str:
    text = re.sub(r"\{\{function_node[^}]*\}\}", "", getattr(err, "message", str(err)))
    text = re.sub(r"\[Op:[^\]]*\].*$", "", text, flags=re.S)
    return " ".join(text.replace("'", "").split())[:200]


def _rebuild_hint(manifest: dict) -> str:
    return (
        f"delete it and {storage.join(manifest['uri'], storage.MANIFEST)}, then rerun `gpt2ja shards` with the "
        "same arguments: only that shard is rebuilt"
    )


def _file_examples(uri: str, manifest: dict, batch: int = 1024) -> Iterator[np.ndarray]:
    """The ``(n, example_len)`` int32 batches of one file, in file order; a broken file is a DataError naming it.

    Read by :mod:`gpt2ja.model.records` (no TensorFlow); ``n`` is ``batch`` but for the last.
    """
    yield from (ids.astype(np.int32) for ids in rebatch(file_reader(manifest)(uri), batch, partial=True))


def iter_examples(shards_uri: str, split: str, shard: int | None = None) -> Iterator[np.ndarray]:
    """Every example of ``split`` (or of its file number ``shard``) as a ``(seq_len + 1,)`` int32 array, in order."""
    manifest = read_manifest_checked(shards_uri)
    files = file_uris(manifest, split)
    for uri in files if shard is None else [files[shard]]:
        for ids in _file_examples(uri, manifest):
            yield from ids


def verify_shards(shards_uri: str) -> dict:
    """Read every file once; a DataError names the first corrupt, truncated or miscounted one.

    Returns ``{"files": n, "examples": n}``. Run it before a long training job:
    TensorFlow reports a damaged record deep inside the input pipeline, mid-run.
    Reads with :mod:`gpt2ja.model.records` (every CRC checked; no TensorFlow).
    """
    manifest = read_manifest_checked(shards_uri)
    total = 0
    for entry in manifest["files"]:
        uri = storage.join(manifest["uri"], entry["path"])
        n = sum(len(ids) for ids in _file_examples(uri, manifest))
        if n != entry.get("examples", n):
            raise DataError(
                f"shards file {uri} has {n} examples, its manifest says {entry['examples']}: it was "
                f"replaced or damaged; delete it and {storage.MANIFEST}, then rerun `gpt2ja shards`"
            )
        total += n
    return {"files": len(manifest["files"]), "examples": total}
