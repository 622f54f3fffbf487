"""The training order: one global stream of examples that no worker count changes.

A run's data position is one number, ``examples``: how many examples of the
global stream its optimizer steps have consumed (checkpointed with the
weights). The stream is a pure function of the shards' manifest, the seed and
``shuffle_buffer``; a global batch is the next ``global_batch`` examples of it,
and worker ``w`` of ``W`` trains on rows ``[w·g, (w+1)·g)`` of that batch
(``g = global_batch / W``). So a run checkpointed with 2 workers resumes with
1 (or 8) at the same example, sees no example twice and skips none within an
epoch, and its gradients are those of the same global batches, whatever the
topology; only the order of floating-point sums differs.

The stream, epoch by epoch (epoch ``e`` = examples ``[e·N, (e+1)·N)``)::

    train files ──sort by Fingerprint64(seed:e:file)──► permuted files
      │  groups of 16 consecutive files, read interleaved one record each
      │  (deterministic, the same on every host)
      ▼
    epoch stream ──blocks of shuffle_buffer examples──► each block permuted by
      Fingerprint64(seed:e:block:i)  ──►  the epoch's order

Both keys are TensorFlow's ``Fingerprint64`` (``tf.strings.to_hash_bucket_fast``,
documented never to change), so the order is the same on every machine and
TensorFlow version. Resuming at ``examples = n`` costs no replay: whole groups
before ``n``'s shuffle block are skipped by the manifest's per-file counts, and
at most one group plus one block is read and discarded.

Sharding rule (multi-worker, TPU slices): every host reads the whole stream
and keeps its rows of each global batch (``tf.data``'s "shard by data"), so the
hosts' inputs are disjoint and together complete, for any number of files.
Reading is the cheap part of training language models: a host decodes the
stream at the global rate (about 2 bytes per token), not its own share.

Two implementations give this stream: :func:`train_dataset` (``tf.data``,
for the TensorFlow backend) and :func:`train_batches` (numpy, no TensorFlow
import on its path, for the JAX backend): the same rows in the same order
from any ``start_example``, the same trace lines. The numpy one hashes with
:mod:`gpt2ja.model.fingerprint`, reads with :mod:`gpt2ja.model.records` and replays
``tf.data``'s interleave (:func:`gpt2ja.model.data.interleave`).

Example::

    ds = train_dataset("data/shards/sp32k-1024", global_batch=64, workers=2, worker=1,
                       start_example=restored_examples, seed=0)
    inputs, targets = next(iter(ds))          # (32, seq_len) each: rows 32..63 of the batch
    batches = train_batches("data/shards/sp32k-1024", global_batch=64, workers=2, worker=1,
                            start_example=restored_examples, seed=0)
    inputs, targets = next(batches)           # the same two arrays, as numpy int32
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator

import numpy as np

from gpt2ja.model.data import (
    _READ_BUFFER,
    AUTOTUNE,
    DataError,
    Prefetched,
    file_reader,
    file_uris,
    interleave,
    pairs,
    parse_examples,
    read_manifest_checked,
    rebatch,
    shard_files,
    skip,
)
from gpt2ja.model.fingerprint import keyed_order
from gpt2ja.tokenization.shards import import_tensorflow

GROUP = 16  # train files read interleaved at a time (also the read parallelism)
_HASH_BUCKETS = (1 << 63) - 1


def epoch_size(shards_uri: str) -> int:
    """Examples in one epoch of the train split (from the manifest's per-file counts)."""
    manifest = read_manifest_checked(shards_uri)
    return sum(int(f["examples"]) for f in manifest["files"] if f.get("split") == "train")


def _keyed_order(tf, prefix, n):
    """``argsort`` of Fingerprint64(prefix:i) for i in 0..n-1: a fixed permutation of ``range(n)``."""
    keys = tf.strings.join([prefix, tf.strings.as_string(tf.range(n, dtype=tf.int64))], separator=":")
    return tf.argsort(tf.strings.to_hash_bucket_fast(keys, _HASH_BUCKETS), stable=True)


def train_dataset(
    shards_uri: str,
    *,
    global_batch: int,
    workers: int = 1,
    worker: int = 0,
    start_example: int = 0,
    seed: int = 0,
    shuffle_buffer: int = 10_000,
    trace_dir: str | None = None,
    prefetch: int = AUTOTUNE,
):
    """This worker's ``(inputs, targets)`` batches, ``(global_batch / workers, seq_len)`` int32 each.

    Batch ``k`` holds this worker's rows of global batch ``k`` counted from
    ``start_example`` (examples of the global stream consumed before). With
    ``trace_dir``, each produced row's stream position and first ids are
    appended to ``{trace_dir}/worker{worker}.jsonl`` (an audit of the order;
    rows are traced when read, and reading runs ahead of training).
    """
    manifest, _, counts = _checked("train_dataset", shards_uri, global_batch, workers, worker, start_example)
    files = shard_files(manifest, "train")
    total = sum(counts)
    tf = import_tensorflow()
    compression, dtype, example_len = manifest["compression"], manifest["dtype"], manifest["example_len"]
    files_t = tf.constant(files)
    counts_t = tf.constant(counts, tf.int64)
    n_files, block = len(files), int(shuffle_buffer)
    n_groups = -(-n_files // GROUP)

    def read_group(group_files):
        return tf.data.Dataset.from_tensor_slices(group_files).interleave(
            lambda f: tf.data.TFRecordDataset(f, compression_type=compression, buffer_size=_READ_BUFFER),
            cycle_length=GROUP,
            block_length=1,
            num_parallel_calls=GROUP,
            deterministic=True,
        )

    def epoch(e, start):
        """Epoch ``e``'s examples from its position ``start`` on (tensors or Python ints)."""
        e, start = tf.cast(e, tf.int64), tf.cast(start, tf.int64)
        tag = tf.strings.join([str(seed), tf.strings.as_string(e)], separator=":")
        order = _keyed_order(tf, tag, n_files)
        ordered, ordered_counts = tf.gather(files_t, order), tf.gather(counts_t, order)
        group_of = tf.range(n_files, dtype=tf.int64) // GROUP
        group_end = tf.cumsum(tf.math.unsorted_segment_sum(ordered_counts, group_of, n_groups))
        first_block = start // block
        block_start = first_block * block  # where the block holding ``start`` begins
        g0 = tf.reduce_sum(tf.cast(group_end <= block_start, tf.int64))  # groups wholly before it: not read
        skipped = tf.concat([[0], group_end], 0)[g0]
        groups = tf.data.Dataset.range(g0, n_groups).map(
            lambda g: ordered[g * GROUP : tf.minimum((g + 1) * GROUP, n_files)]
        )
        stream = groups.flat_map(read_group).skip(block_start - skipped)

        def permute(k, records):
            key = tf.strings.join([tag, tf.strings.as_string(k)], separator=":")
            return tf.gather(records, _keyed_order(tf, key, tf.shape(records, out_type=tf.int64)[0]))

        blocks = stream.batch(block).enumerate(start=first_block).map(permute)
        return blocks.unbatch().skip(start - block_start)

    e0, r0 = divmod(start_example, total)
    stream = epoch(e0, r0).concatenate(tf.data.Dataset.range(e0 + 1, 1 << 62).flat_map(lambda e: epoch(e, 0)))
    rows = global_batch // workers
    lo = worker * rows
    stream = stream.enumerate(start=start_example)  # (global position, serialized record)
    ds = stream.batch(global_batch, drop_remainder=True).map(
        lambda pos, rec: (pos[lo : lo + rows], rec[lo : lo + rows])
    )

    def to_pair(pos, serialized):
        ids = tf.ensure_shape(parse_examples(serialized, dtype=dtype), [rows, example_len])
        if trace_dir is not None:
            written = tf.py_function(_tracer(trace_dir, worker), [pos, ids[:, :4]], tf.int64)
            with tf.control_dependencies([written]):
                ids = tf.identity(ids)
        return ids[:, :-1], ids[:, 1:]

    ds = ds.map(to_pair, num_parallel_calls=1 if trace_dir is not None else AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(prefetch)


def _checked(
    who: str, shards_uri: str, global_batch: int, workers: int, worker: int, start_example: int
) -> tuple[dict, list[str], list[int]]:
    """The manifest, the train files' URIs and example counts, after the checks both pipelines make."""
    manifest = read_manifest_checked(shards_uri)
    uris = file_uris(manifest, "train")  # a DataError when there is no train split
    counts = [int(f["examples"]) for f in manifest["files"] if f.get("split") == "train"]
    if global_batch < 1 or workers < 1 or not 0 <= worker < workers or global_batch % workers:
        raise DataError(
            f"{who}: global_batch {global_batch} must be a positive multiple of the "
            f"{workers} workers and worker {worker} in 0..{workers - 1}; fix the arguments"
        )
    if sum(counts) == 0:
        raise DataError(
            f"shards {shards_uri}: the train split holds no example; rebuild the shards from a larger "
            "corpus or with a shorter seq_len"
        )
    if start_example < 0:
        raise DataError(f"{who}: start_example {start_example} must be ≥ 0")
    return manifest, uris, counts


def train_batches(
    shards_uri: str,
    *,
    global_batch: int,
    workers: int = 1,
    worker: int = 0,
    start_example: int = 0,
    seed: int = 0,
    shuffle_buffer: int = 10_000,
    trace_dir: str | None = None,
) -> Prefetched:
    """:func:`train_dataset`'s batches as numpy, without TensorFlow: ``(inputs, targets)``, ``(g, seq_len)`` int32.

    ``g = global_batch / workers``. Bit-identical to ``train_dataset`` with
    the same arguments: batch ``k`` is this worker's rows of global batch
    ``k`` counted from ``start_example``, epochs roll over the same way, and
    ``trace_dir`` gets the same lines. An endless iterator; reading runs
    ahead by :data:`gpt2ja.model.data.PREFETCH` batches in one daemon thread, which
    ``close()`` (or garbage collection) stops.

    Example::

        batches = train_batches("data/shards/sp32k-1024", global_batch=64, start_example=restored_examples)
        inputs, targets = next(batches)       # (64, seq_len) int32 each
        batches.close()
    """
    manifest, files, counts = _checked("train_batches", shards_uri, global_batch, workers, worker, start_example)
    if shuffle_buffer < 1:
        raise DataError(f"train_batches: shuffle_buffer {shuffle_buffer} must be ≥ 1; fix the argument")
    rows = global_batch // workers
    lo = worker * rows
    write = _tracer(trace_dir, worker) if trace_dir is not None else None
    stream = _stream(
        shards_uri,
        files,
        counts,
        file_reader(manifest),
        start_example=start_example,
        seed=seed,
        block=int(shuffle_buffer),
    )

    def batches() -> Iterator[np.ndarray]:
        for k, batch in enumerate(rebatch(stream, global_batch)):
            mine = batch[lo : lo + rows]  # (g, example_len)
            if write is not None:
                first = start_example + k * global_batch + lo
                write(np.arange(first, first + rows), mine[:, :4])
            yield mine

    return Prefetched(pairs(batches()))


def _stream(
    shards_uri: str, files: list[str], counts: list[int], read, *, start_example: int, seed: int, block: int
) -> Iterator[np.ndarray]:
    """The global stream from ``start_example`` on, as row blocks (stored dtype): :func:`train_dataset`'s records."""
    total = sum(counts)
    n_files, n_groups = len(files), -(-len(files) // GROUP)
    counts_a = np.asarray(counts, np.int64)

    def epoch(e: int, start: int) -> Iterator[np.ndarray]:
        tag = f"{seed}:{e}"
        order = keyed_order(tag, n_files)
        ordered = [files[i] for i in order]
        group_end = np.cumsum([counts_a[order[g * GROUP : (g + 1) * GROUP]].sum() for g in range(n_groups)])
        first_block = start // block
        block_start = first_block * block  # where the block holding ``start`` begins
        g0 = int((group_end <= block_start).sum())  # groups wholly before it (by the manifest's counts): not read
        skipped = int(group_end[g0 - 1]) if g0 else 0
        groups = (interleave(iter(ordered[g * GROUP : (g + 1) * GROUP]), GROUP, read) for g in range(g0, n_groups))
        records = skip(itertools.chain.from_iterable(groups), block_start - skipped)

        def permuted() -> Iterator[np.ndarray]:
            for k, rows in enumerate(rebatch(records, block, partial=True), start=first_block):
                yield rows[keyed_order(f"{tag}:{k}", len(rows))]

        return skip(permuted(), start - block_start)

    e, start = divmod(start_example, total)
    while True:
        got = 0
        for rows in epoch(e, start):
            got += len(rows)
            yield rows
        if not got and not start:  # a whole epoch without a row: the files hold none, whatever the manifest says
            raise DataError(
                f"shards {shards_uri}: the train files hold no example although the manifest counts "
                f"{total}; run verify_shards to find the damaged or replaced files, then rebuild them"
            )
        e, start = e + 1, 0


def _append_trace(path: str, positions: list[int], heads: list[list[int]]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        for p, head in zip(positions, heads):
            f.write(json.dumps({"pos": p, "head": head}) + "\n")


def _tracer(trace_dir: str, worker: int):
    """``write(positions, heads)``, appending one line per row to ``{trace_dir}/worker{worker}.jsonl``.

    Takes tensors (``train_dataset``'s ``py_function``) or numpy arrays (``train_batches``).
    """
    path = os.path.join(trace_dir, f"worker{worker}.jsonl")
    os.makedirs(trace_dir, exist_ok=True)

    def write(pos, heads):
        pos, heads = (x.numpy() if hasattr(x, "numpy") else np.asarray(x) for x in (pos, heads))
        _append_trace(path, pos.tolist(), heads.tolist())
        return len(pos)

    return write


def read_trace(trace_dir: str) -> dict[int, list[dict]]:
    """``{worker: [{"pos": …, "head": […]}, …]}`` from a ``trace_dir`` written by :func:`train_dataset` or
    :func:`train_batches`."""
    out: dict[int, list[dict]] = {}
    for name in sorted(os.listdir(trace_dir)):
        if name.startswith("worker") and name.endswith(".jsonl"):
            with open(os.path.join(trace_dir, name), encoding="utf-8") as f:
                out[int(name[6:-6])] = [json.loads(line) for line in f if line.strip()]
    return out
