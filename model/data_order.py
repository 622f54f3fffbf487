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

Example::

    ds = train_dataset("data/shards/sp32k-1024", global_batch=64, workers=2, worker=1,
                       start_example=restored_examples, seed=0)
    inputs, targets = next(iter(ds))          # (32, seq_len) each: rows 32..63 of the batch
"""

from __future__ import annotations

import json
import os

from model.data import AUTOTUNE, DataError, _READ_BUFFER, parse_examples, read_manifest_checked, shard_files
from tokenization.shards import import_tensorflow

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


def train_dataset(shards_uri: str, *, global_batch: int, workers: int = 1, worker: int = 0,
                  start_example: int = 0, seed: int = 0, shuffle_buffer: int = 10_000,
                  trace_dir: str | None = None, prefetch: int = AUTOTUNE):
    """This worker's ``(inputs, targets)`` batches, ``(global_batch / workers, seq_len)`` int32 each.

    Batch ``k`` holds this worker's rows of global batch ``k`` counted from
    ``start_example`` (examples of the global stream consumed before). With
    ``trace_dir``, each produced row's stream position and first ids are
    appended to ``{trace_dir}/worker{worker}.jsonl`` (an audit of the order;
    rows are traced when read, and reading runs ahead of training).
    """
    manifest = read_manifest_checked(shards_uri)
    files = shard_files(manifest, "train")
    counts = [int(f["examples"]) for f in manifest["files"] if f.get("split") == "train"]
    if global_batch < 1 or workers < 1 or not 0 <= worker < workers or global_batch % workers:
        raise DataError(f"train_dataset: global_batch {global_batch} must be a positive multiple of the "
                        f"{workers} workers and worker {worker} in 0..{workers - 1}; fix the arguments")
    total = sum(counts)
    if total == 0:
        raise DataError(f"shards {shards_uri}: the train split holds no example; rebuild the shards from a larger "
                        "corpus or with a shorter seq_len")
    if start_example < 0:
        raise DataError(f"train_dataset: start_example {start_example} must be ≥ 0")
    tf = import_tensorflow()
    compression, dtype, example_len = manifest["compression"], manifest["dtype"], manifest["example_len"]
    files_t = tf.constant(files)
    counts_t = tf.constant(counts, tf.int64)
    n_files, block = len(files), int(shuffle_buffer)
    n_groups = -(-n_files // GROUP)

    def read_group(group_files):
        return tf.data.Dataset.from_tensor_slices(group_files).interleave(
            lambda f: tf.data.TFRecordDataset(f, compression_type=compression, buffer_size=_READ_BUFFER),
            cycle_length=GROUP, block_length=1, num_parallel_calls=GROUP, deterministic=True)

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
            lambda g: ordered[g * GROUP:tf.minimum((g + 1) * GROUP, n_files)])
        stream = groups.flat_map(read_group).skip(block_start - skipped)

        def permute(k, records):
            key = tf.strings.join([tag, tf.strings.as_string(k)], separator=":")
            return tf.gather(records, _keyed_order(tf, key, tf.shape(records, out_type=tf.int64)[0]))

        blocks = stream.batch(block).enumerate(start=first_block).map(permute)
        return blocks.unbatch().skip(start - block_start)

    e0, r0 = divmod(start_example, total)
    stream = epoch(e0, r0).concatenate(
        tf.data.Dataset.range(e0 + 1, 1 << 62).flat_map(lambda e: epoch(e, 0)))
    rows = global_batch // workers
    lo = worker * rows
    stream = stream.enumerate(start=start_example)  # (global position, serialized record)
    ds = stream.batch(global_batch, drop_remainder=True).map(lambda pos, rec: (pos[lo:lo + rows], rec[lo:lo + rows]))

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


def _tracer(trace_dir: str, worker: int):
    path = os.path.join(trace_dir, f"worker{worker}.jsonl")
    os.makedirs(trace_dir, exist_ok=True)

    def write(pos, heads):
        with open(path, "a", encoding="utf-8") as f:
            for p, head in zip(pos.numpy().tolist(), heads.numpy().tolist()):
                f.write(json.dumps({"pos": p, "head": head}) + "\n")
        return len(pos)

    return write


def read_trace(trace_dir: str) -> dict[int, list[dict]]:
    """``{worker: [{"pos": …, "head": […]}, …]}`` from a ``trace_dir`` written by :func:`train_dataset`."""
    out: dict[int, list[dict]] = {}
    for name in sorted(os.listdir(trace_dir)):
        if name.startswith("worker") and name.endswith(".jsonl"):
            with open(os.path.join(trace_dir, name), encoding="utf-8") as f:
                out[int(name[6:-6])] = [json.loads(line) for line in f if line.strip()]
    return out
