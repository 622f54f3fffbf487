"""A ``gs://`` run copied to its bucket as it trains: :class:`RunSync`.

Training writes a ``gs://`` run into a local staging directory
(:func:`gpt2ja.model.runs.local_dir`); the chief's ``RunSync`` copies it up file by
file, each file only when it changed since its last upload (it remembers
``path → (size, mtime_ns)`` of what it sent)::

    sync_logs()         at every log step, in a background thread: metrics.jsonl, the TensorBoard event
                        files, hparams.json and the tokenizer copy; returns without waiting for them
    sync_checkpoint()   after every checkpoint, on the calling thread: the new checkpoint's files (once each),
                        every changed log, then the index checkpoints/checkpoint, then the checkpoints the
                        training pruned (keep_checkpoints) are deleted from the bucket too
    close()             the same as a checkpoint, then the threads stop (the run's files are final)

So TensorBoard (``--logdir gs://…/runs/r1/tensorboard``: the event files keep
their relative paths) and readers of ``metrics.jsonl`` follow the run from its
first log step, and ``gpt2ja eval/generate/export`` (:func:`gpt2ja.model.runs.load_run`)
read its newest checkpoint while it trains: the index goes up only after the
files it names, and at a checkpoint the bucket holds the whole run as of that
step (what :func:`gpt2ja.model.runs.download` resumes from). The run's manifest is not
the syncer's: the train stage publishes it last (:func:`gpt2ja.infra.stage.run_stage`).

Design notes:

* One log round at a time: ``sync_logs`` first waits for the previous round,
  so a slow bucket holds the loop back by at most one round, and a failed
  upload is raised by the next call as one line (training stops; the same
  command resumes it from the newest checkpoint in the bucket).
* The logs only grow while the loop runs (lines and event records are
  appended), so an upload sends the first ``size`` bytes seen when the step
  asked for it: whole lines and records, never half of one appended since.
* GCS takes about one write per second to one object name: a log uploaded less
  than ``min_rewrite_s`` ago waits for a later log step's round (the bucket lags
  by about the longer of ``min_rewrite_s`` and one log interval); checkpoints
  and ``close`` send every change.
* Checkpoint files are never rewritten under their name and event files are
  named by host, process and time: on a resumed run those that the bucket
  already holds at the same size (just downloaded) are not sent again.

Example::

    sync = RunSync("/tmp/gpt2ja-runs/3f…", "gs://bucket/runs/r1")
    sync.sync_logs()          # after a metrics.jsonl line and its TensorBoard scalars are written
    sync.sync_checkpoint()    # after gpt2ja.model.checkpoint.save
    sync.close()              # at the end
"""

from __future__ import annotations

import os
import time
from concurrent.futures import Future, ThreadPoolExecutor

from gpt2ja.infra import storage
from gpt2ja.model import runs

#: seconds before a changed log is uploaded again (GCS: about one write per second per object)
MIN_REWRITE_S = 2.0
INDEX = f"{runs.CHECKPOINT_DIR}/checkpoint"
_CHECKPOINTS = runs.CHECKPOINT_DIR + "/"
_CHECKPOINT_FILES = f"{runs.CHECKPOINT_DIR}/{runs.CHECKPOINT_NAME}-"
_IMMUTABLE = (_CHECKPOINT_FILES, runs.TENSORBOARD_DIR + "/")  # never rewritten under their name (see above)
_WORKERS = 8  # parallel uploads: for many small files GCS latency, not bandwidth, dominates

Stamp = tuple[int, int]  # (size, mtime_ns) of a local file


class RunSync:
    """Keeps the ``gs://`` run ``run_uri`` equal to its local staging directory ``local`` while it trains.

    Constructing it lists the bucket's copy once and starts the first log round
    (``hparams.json`` and the tokenizer copy go up before the first step).
    """

    def __init__(self, local: str, run_uri: str, *, min_rewrite_s: float = MIN_REWRITE_S) -> None:
        self.local, self.run_uri, self.min_rewrite_s = local, run_uri.rstrip("/"), min_rewrite_s
        self._sent: dict[str, Stamp] = {}  # run-relative path → stamp of the bytes last uploaded
        self._sent_at: dict[str, float] = {}  # run-relative path → time.monotonic() of that upload
        self._remote_checkpoints: set[str] = set()  # checkpoints/ckpt-* files in the bucket (pruned as locally)
        self._pool = ThreadPoolExecutor(_WORKERS, thread_name_prefix="gpt2ja-run-sync")
        self._background = ThreadPoolExecutor(1, thread_name_prefix="gpt2ja-run-sync-logs")
        self._round: Future | None = None
        self._closed = False
        self._seed()
        self.sync_logs()

    # ------------------------------------------------------------- the three calls

    def sync_logs(self) -> None:
        """Start uploading the logs changed since their last upload; returns once the previous round is done."""
        self._wait()
        now = time.monotonic()
        due = [
            (rel, stamp)
            for rel, stamp in self._local_files().items()
            if not rel.startswith(_CHECKPOINTS)
            and self._sent.get(rel) != stamp
            and (rel not in self._sent_at or now - self._sent_at[rel] >= self.min_rewrite_s)
        ]
        if due:
            self._round = self._background.submit(self._upload_all, due)

    def sync_checkpoint(self) -> None:
        """Upload the new checkpoint's files and every changed log, then the index; delete the pruned checkpoints."""
        self._wait()
        files = self._local_files()
        changed = [(rel, stamp) for rel, stamp in files.items() if rel != INDEX and self._sent.get(rel) != stamp]
        self._upload_all(changed)
        self._remote_checkpoints |= {rel for rel in self._sent if rel.startswith(_CHECKPOINT_FILES)}
        if INDEX in files and self._sent.get(INDEX) != files[INDEX]:
            self._upload(INDEX, files[INDEX])  # last: a reader never sees an index naming files not yet there
        pruned = sorted(rel for rel in self._remote_checkpoints if rel not in files)
        list(self._pool.map(self._delete, pruned))

    def close(self) -> None:
        """Upload what is left, as at a checkpoint, and stop the threads; for when training's files are final."""
        if self._closed:
            return
        try:
            self.sync_checkpoint()
        finally:
            self._closed = True
            self._background.shutdown()
            self._pool.shutdown()

    # ------------------------------------------------------------- helpers

    def _wait(self) -> None:
        """Wait for the running log round; its first failure is raised here (one line)."""
        if self._closed:
            raise RuntimeError(f"RunSync of {self.run_uri} is closed")  # a bug in the caller
        running, self._round = self._round, None
        if running is not None:
            running.result()

    def _seed(self) -> None:
        """What the bucket already holds: files just downloaded to resume, and the checkpoints to prune later."""
        base = self.run_uri + "/"
        remote = {uri[len(base) :]: size for uri, size in storage.list_sizes(self.run_uri).items()}
        self._remote_checkpoints = {rel for rel in remote if rel.startswith(_CHECKPOINT_FILES)}
        for rel, stamp in self._local_files().items():
            if rel.startswith(_IMMUTABLE) and remote.get(rel) == stamp[0]:
                self._sent[rel] = stamp

    def _local_files(self) -> dict[str, Stamp]:
        """``{run-relative path: (size, mtime_ns)}`` of what training wrote (:func:`runs.is_training_file`)."""
        files = {}
        for path in storage.list_files(self.local):
            rel = os.path.relpath(path, self.local).replace(os.sep, "/")
            if not runs.is_training_file(rel):
                continue
            try:
                st = os.stat(path)
            except FileNotFoundError:  # removed since the listing (a pruned checkpoint)
                continue
            files[rel] = (st.st_size, st.st_mtime_ns)
        return files

    def _upload_all(self, items: list[tuple[str, Stamp]]) -> None:
        """Upload ``items`` in parallel, manifests (the tokenizer copy's) after the files they list."""
        manifests = [item for item in items if item[0].rsplit("/", 1)[-1] == storage.MANIFEST]
        for batch in ([item for item in items if item not in manifests], manifests):
            list(self._pool.map(lambda item: self._upload(*item), batch))  # list(): the first failure is raised

    def _upload(self, rel: str, stamp: Stamp) -> None:
        """Upload one file (a log: its first ``stamp`` size bytes) and remember it; a failure is one line."""
        path = os.path.join(self.local, *rel.split("/"))
        uri = storage.join(self.run_uri, *rel.split("/"))
        try:
            if rel.startswith(_CHECKPOINTS):
                if not os.path.isfile(path):
                    return  # pruned since the listing
                storage.publish(path, uri)
            else:
                with open(path, "rb") as f:
                    data = f.read(stamp[0])  # the bytes there when the step asked: whole lines, whole events
                storage.write_bytes(uri, data)
        except FileNotFoundError:
            return
        except OSError as err:
            raise storage.StorageError(
                f"run {self.run_uri}: cannot read {path} to upload it ({err.strerror}); "
                "training stopped, check the local disk and rerun the same command "
                "to resume from the newest checkpoint in the bucket"
            ) from err
        except storage.StorageError as err:
            raise storage.StorageError(
                f"run {self.run_uri}: uploading {rel} failed ({err}); training stopped, "
                "rerun the same command to resume from the newest checkpoint in the "
                "bucket"
            ) from err
        self._sent[rel], self._sent_at[rel] = stamp, time.monotonic()

    def _delete(self, rel: str) -> None:
        storage.delete(storage.join(self.run_uri, *rel.split("/")))
        self._remote_checkpoints.discard(rel)
        self._sent.pop(rel, None)
