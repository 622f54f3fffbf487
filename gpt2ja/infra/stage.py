"""The stage contract: every stage's output is built through :func:`run_stage`.

A manifest must never lie: when ``{out}/_MANIFEST.json`` exists, every file it
lists is there with its recorded size and checksum, and the files were built
from the config and inputs its fingerprint names. One function keeps that
promise for every stage, so it is written (and tested) once::

    run_stage("shards", out, fingerprint=fp, build=build, inputs=[corpus, tokenizer])

      refuse an output that is, holds, or sits inside one of its inputs
        │
      lock the output ─ held by a live writer → wait (wait_s), else LockHeld: one line naming it
        │               its holder is dead or silent → taken over, and the log says so
      verify the output against ``fingerprint`` (sizes; sha256 with ``deep``)
        │ verified → skipped (released, nothing written)
      check() → may refuse: the old artifact stays published as it was
        │
      withdraw the old manifest: from here on the directory is partial, never "complete"
        │
      build() → the new manifest    the stage writes its files (resuming from what verifies)
        │
      verify the built files against it; remove files it does not list
        │
      publish: _MANIFEST.json written last, atomically; the inputs named relative to it
        │
      release

The lock is a file ``.{name}.lock`` beside the output: locally it is held with
``flock`` (the kernel frees it when its process dies, so a crashed writer never
blocks anyone) and holds the holder's host, pid, start time and heartbeat for the
message a second writer gets. On ``gs://`` it is an object created with
``ifGenerationMatch=0`` (exactly one creator wins, server side) and renewed with
the generation it last wrote; a lock whose heartbeat is older than ``stale_s``,
or whose holder on this host is gone, is taken over with the same precondition,
so two takers cannot both win. A holder that finds its lock renewed by someone
else has lost it and publishes nothing.

Example::

    from gpt2ja.infra import stage, storage

    def build() -> dict:
        storage.write_text(storage.join(out, "a.txt"), "あ")
        files = [storage.file_info(storage.join(out, "a.txt"), root=out)]
        return storage.build_manifest(stage="demo", config=cfg, counts={}, files=files, timings={})

    outcome = stage.run_stage("demo", out, fingerprint=storage.fingerprint(cfg), build=build)
    outcome.skipped   # True on the second call
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from gpt2ja.infra import storage
from gpt2ja.infra.errors import Gpt2jaError

__all__ = [
    "LockHeld",
    "Outcome",
    "OutputLock",
    "StageError",
    "check_inputs",
    "input_uri",
    "lock_uri",
    "require",
    "run_stage",
    "verify",
]

#: seconds between heartbeats of a held lock, and the age after which a lock
#: without heartbeat counts as abandoned (overridable for tests and slow links)
HEARTBEAT_S = float(os.environ.get("GPT2JA_LOCK_HEARTBEAT_S", "10"))
STALE_S = float(os.environ.get("GPT2JA_LOCK_STALE_S", "120"))
#: how long a second writer waits for the holder by default (0: refuse at once)
WAIT_S = float(os.environ.get("GPT2JA_LOCK_WAIT_S", "0"))
#: outputs that may live inside an input: a run's evaluations and exports are its own subfolders
#: (``eval/``, ``eval-heldout/``, ``export/hf``…), which its manifest never lists
DERIVED = {"train": ("eval", "export")}
_LOCAL_LOCK_BYTES = 1024
SCRATCH = "gpt2ja"  # scratch dirs are gpt2ja-{what}-{pid}-{random} (see scratch_dir)


class StageError(Gpt2jaError, RuntimeError):
    """A stage refused its output, its inputs, its config or a damaged artifact (one line); retrying would not help.

    The flows (:mod:`gpt2ja.flows.stages`) raise it too, as ``"{stage}: …"``, and do not retry it.
    """


class LockHeld(StageError):
    """Another writer holds the output's lock."""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _age_s(stamp: str | None) -> float:
    try:
        then = _dt.datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return float("inf")
    return (_dt.datetime.now(_dt.timezone.utc) - then).total_seconds()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def lock_uri(out: str) -> str:
    """Where the lock of the output ``out`` lives: ``.{name}.lock`` beside it."""
    if storage.is_gcs(out):
        parent, _, name = out.rstrip("/").rpartition("/")
        if parent in ("gs:/", "gs:"):
            raise StageError(f"output {out} is a bucket; give a folder inside it, e.g. {out.rstrip('/')}/data")
        return f"{parent}/.{name}.lock"
    path = os.path.abspath(os.path.expanduser(out))
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.lock")


def _describe(holder: dict | None, stage: str, out: str) -> str:
    if not holder:
        return f"{stage} {out} is being built by another process (its lock has no readable holder yet)"
    return (
        f"{holder.get('stage', stage)} {out} is being built by pid {holder.get('pid')} on host "
        f"{holder.get('host')} since {holder.get('started')} (heartbeat {holder.get('heartbeat')})"
    )


class OutputLock:
    """The exclusive lock of one output directory (local ``flock`` file, or a ``gs://`` object).

    Use :func:`run_stage`; this class is public for the tests and for stages
    that hold a lock across processes (the crawl's child process).
    """

    def __init__(
        self,
        out: str,
        stage: str,
        *,
        stale_s: float | None = None,
        heartbeat_s: float | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.out, self.stage, self.uri = out, stage, lock_uri(out)
        self.stale_s = STALE_S if stale_s is None else stale_s
        self.heartbeat_s = HEARTBEAT_S if heartbeat_s is None else heartbeat_s
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.info = {
            "stage": stage,
            "out": out,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": _now(),
            "heartbeat": _now(),
            "token": uuid.uuid4().hex,
            "released": False,
        }
        self.lost = False
        self._fd: int | None = None
        self._generation: int | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # ---------------------------------------------------------------- acquire / release

    def acquire(self, wait_s: float | None = None) -> "OutputLock":
        """Take the lock, waiting up to ``wait_s`` seconds for a live holder; else :class:`LockHeld`."""
        wait_s = WAIT_S if wait_s is None else wait_s
        deadline = time.monotonic() + wait_s
        delay = 0.2
        while True:
            holder = self._try()
            if holder is None:
                break
            if time.monotonic() >= deadline:
                raise LockHeld(
                    f"{_describe(holder, self.stage, self.out)}; wait for it to finish (or pass a longer "
                    f"wait), or stop that process: {self._fix()}"
                )
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, 2.0)
        self._beat = threading.Thread(target=self._heartbeat, name=f"lock-{self.stage}", daemon=True)
        self._beat.start()
        return self

    def _fix(self) -> str:
        if storage.is_gcs(self.uri):
            return (
                f"a lock without heartbeat for {self.stale_s:.0f} s is taken over by itself, or delete "
                f"{self.uri} if that machine is gone"
            )
        return "the lock frees itself when that process ends"

    def release(self) -> None:
        """Give the lock back (idempotent)."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        if self._fd is not None:
            with contextlib.suppress(OSError):
                self._write_local({**self.info, "released": True, "heartbeat": _now()})
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        elif self._generation is not None:
            with contextlib.suppress(storage.StorageError):
                storage.delete_if_generation(self.uri, self._generation)
            self._generation = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def check(self) -> None:
        """Raise :class:`StageError` when the lock was lost (another writer took it over): publish nothing."""
        if self.lost:
            raise StageError(
                f"{self.stage} {self.out}: another writer took over this build's lock {self.uri} "
                "(no heartbeat reached it in time); nothing was published, rerun the stage"
            )

    # ---------------------------------------------------------------- local: flock

    def _try(self) -> dict | None:
        """None when taken; else the holder's record (or {} when unreadable)."""
        return self._try_gcs() if storage.is_gcs(self.uri) else self._try_local()

    def _try_local(self) -> dict | None:
        import fcntl

        os.makedirs(os.path.dirname(self.uri), exist_ok=True)
        fd = os.open(self.uri, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return self._read_local() or {}
        previous = self._read_local()
        self._fd = fd
        self._write_local(self.info)
        if previous and not previous.get("released", True):
            self.log(
                f"{self.stage} {self.out}: took over the lock of pid {previous.get('pid')} on host "
                f"{previous.get('host')} (started {previous.get('started')}): that process is gone; "
                "its partial output is checked and resumed or rebuilt"
            )
        return None

    def _read_local(self) -> dict | None:
        try:
            with open(self.uri, "rb") as f:
                return json.loads(f.read().decode("utf-8").strip() or "null")
        except (OSError, ValueError):
            return None

    def _write_local(self, info: dict) -> None:
        data = json.dumps(info, sort_keys=True).encode("utf-8")
        os.pwrite(self._fd, data.ljust(_LOCAL_LOCK_BYTES), 0)  # one write of a fixed size: never a torn record
        os.ftruncate(self._fd, _LOCAL_LOCK_BYTES)

    # ---------------------------------------------------------------- gs://: generation preconditions

    def _encode(self) -> bytes:
        return json.dumps(self.info, sort_keys=True).encode("utf-8")

    def _try_gcs(self) -> dict | None:
        for _ in range(3):
            try:
                self._generation = storage.write_if_generation(self.uri, self._encode(), 0)
                return None
            except storage.GenerationMismatch:
                pass
            current = storage.read_generation(self.uri)
            if current is None:
                continue  # released between the two requests: try to create it again
            data, generation = current
            try:
                holder = json.loads(data.decode("utf-8"))
            except ValueError:
                holder = {}
            if not self._abandoned(holder):
                return holder
            try:
                self._generation = storage.write_if_generation(self.uri, self._encode(), generation)
            except storage.GenerationMismatch:
                continue  # another taker (or the holder's heartbeat) came first: look again
            self.log(
                f"{self.stage} {self.out}: took over the lock {self.uri} of pid {holder.get('pid')} on host "
                f"{holder.get('host')} (last heartbeat {holder.get('heartbeat')}): that writer is gone"
            )
            return None
        return holder

    def _abandoned(self, holder: dict) -> bool:
        if holder.get("host") == self.info["host"] and isinstance(holder.get("pid"), int):
            if not _pid_alive(holder["pid"]):
                return True
        return _age_s(holder.get("heartbeat")) > self.stale_s

    # ---------------------------------------------------------------- heartbeat

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self.info["heartbeat"] = _now()
            try:
                if self._fd is not None:
                    self._write_local(self.info)
                elif self._generation is not None:
                    self._generation = storage.write_if_generation(self.uri, self._encode(), self._generation)
            except storage.GenerationMismatch:
                self.lost = True
                self._generation = None
                return
            except (OSError, storage.StorageError):
                continue  # a passing failure: the next beat tries again


# -------------------------------------------------------------------- inputs


def _norm(uri: str) -> str:
    if storage.is_gcs(uri):
        return uri.rstrip("/")
    return os.path.abspath(os.path.expanduser(uri))


def _inside(child: str, parent: str) -> str | None:
    """The path of ``child`` below ``parent`` ("" when equal), or None when it is not inside."""
    c, p = _norm(child), _norm(parent)
    if storage.is_gcs(c) != storage.is_gcs(p):
        return None
    sep = "/" if storage.is_gcs(c) else os.sep
    if c == p:
        return ""
    return c[len(p) + 1 :] if c.startswith(p + sep) else None


def check_inputs(stage: str, out: str, inputs: Iterable[str]) -> None:
    """Refuse an output that is one of its inputs, holds one, or sits inside one (one line).

    The one exception is a run's derived folders (``eval/``, ``eval-NAME/``,
    ``export/``), which live inside the run by design and are never listed by its manifest.
    """
    for uri in inputs:
        below = _inside(out, uri)
        if below == "":
            raise StageError(
                f"{stage}: the output {out} is its input {uri}; give --out a directory of its own "
                "(writing there would replace the input's manifest)"
            )
        if below is not None:
            manifest = storage.read_manifest(uri) or {}
            first = below.split("/")[0].split(os.sep)[0]
            if not any(first == d or first.startswith(d + "-") for d in DERIVED.get(manifest.get("stage"), ())):
                raise StageError(
                    f"{stage}: the output {out} is inside its input {uri}; give --out a directory outside it"
                )
        if _inside(uri, out) is not None:
            raise StageError(
                f"{stage}: the output {out} holds its input {uri}; give --out a directory of its own "
                "(rebuilding it would delete the input)"
            )


def require(uri: str, what: str, fix: str, error: type[Gpt2jaError] = StageError) -> dict:
    """The manifest of the input artifact ``uri`` (a ``what``: "corpus", "run"…), or ``error`` in one line.

    Every stage asks for its inputs here, so a missing, unfinished or unreadable
    input reads the same everywhere: ``{what} {uri} has no _MANIFEST.json: …; {fix}``.
    """
    try:
        manifest = storage.read_manifest(uri)
    except storage.StorageError as err:
        raise error(f"{what} {uri}: {err}") from None
    if manifest is None or not manifest.get("fingerprint"):
        raise error(f"{what} {uri} has no {storage.MANIFEST}: it is missing or unfinished; {fix}")
    return manifest


# -------------------------------------------------------------------- verify


def verify(
    out: str, fingerprint: str | None = None, *, deep: bool = False, manifest: dict | None = None
) -> tuple[dict | None, list[str]]:
    """``(manifest, problems)``: what is wrong with the artifact at ``out``; no problems means it verifies.

    Checks that a manifest is there, that its fingerprint is ``fingerprint``
    (when given), and that every file it lists exists with its recorded size
    (one listing); with ``deep`` also each file's sha256 (reads everything).
    """
    manifest = storage.read_manifest(out) if manifest is None else manifest
    if manifest is None:
        return None, [f"{out} has no {storage.MANIFEST}"]
    if fingerprint is not None and manifest.get("fingerprint") != fingerprint:
        return manifest, [f"{out} was built with another config or other inputs"]
    problems = []
    sizes = {_rel(u, out): n for u, n in storage.list_sizes(out).items()}
    for entry in manifest.get("files", []):
        path, expected = entry.get("path"), entry.get("bytes")
        if path not in sizes:
            problems.append(f"{path} is missing")
        elif expected is not None and sizes[path] != expected:
            problems.append(f"{path} has {sizes[path]:,} bytes, the manifest says {expected:,}")
        elif deep and entry.get("sha256"):
            actual = storage.file_info(storage.join(out, path), root=out)["sha256"]
            if actual != entry["sha256"]:
                problems.append(f"{path} does not match its sha256 in the manifest")
    return manifest, [f"{out}: {p}" for p in problems] if problems else []


def _rel(uri: str, out: str) -> str:
    if storage.is_gcs(uri):
        return uri[len(out.rstrip("/")) + 1 :]
    return os.path.relpath(uri, os.path.abspath(os.path.expanduser(out))).replace(os.sep, "/")


# -------------------------------------------------------------------- run


@dataclass
class Outcome:
    """What :func:`run_stage` did: ``skipped`` (verified up to date) or built; the manifest either way."""

    uri: str
    skipped: bool
    manifest: dict
    notes: list[str] = field(default_factory=list)


def run_stage(
    stage: str,
    out: str,
    *,
    fingerprint: str,
    build: Callable[[], dict],
    inputs: Sequence[str] = (),
    deep: bool = False,
    wait_s: float | None = None,
    prune: bool = True,
    keep: Sequence[str] = (),
    replace: bool | str = True,
    log: Callable[[str], None] | None = None,
    check: Callable[[], None] | None = None,
) -> Outcome:
    """Build ``out`` once under its lock, or skip it when it verifies; see the module docstring.

    ``build()`` writes the stage's files into ``out`` (it may reuse files of an
    earlier, interrupted build there: it must verify them by checksum) and
    returns the manifest (:func:`storage.build_manifest`) without writing it.
    ``prune`` removes files under ``out`` that the manifest does not list, except
    below the ``keep`` prefixes. ``replace`` False (or a message) refuses to
    rebuild over a verified artifact made with another fingerprint. ``check()``, called
    under the lock before anything is changed, may refuse the build (raise): the artifact
    that was published stays so.
    """
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    check_inputs(stage, out, inputs)
    lock = OutputLock(out, stage, log=say)
    lock.acquire(wait_s)
    try:
        manifest, problems = verify(out, fingerprint, deep=deep)
        if not problems:
            return Outcome(out, True, manifest)
        if manifest is not None and replace is not True and manifest.get("fingerprint") != fingerprint:
            raise StageError(
                replace
                if isinstance(replace, str)
                else f"{stage}: {out} holds an artifact built with another config; choose another output "
                "(or delete that directory)"
            )
        if check is not None:
            check()
        notes = []
        if manifest is not None and manifest.get("fingerprint") == fingerprint:
            notes = problems  # damaged: say what, then rebuild (a resume re-checks every file it reuses)
            say(f"{stage}: rebuilding: " + "; ".join(problems))
        _withdraw(out)
        _sweep(out)
        seen = _builds(stage, inputs)
        _failpoint(stage)
        new = build()
        lock.check()
        if _builds(stage, inputs) != seen:
            raise StageError(
                f"{stage}: an input of {out} was rebuilt while this stage read it "
                f"({', '.join(inputs)}); nothing was published, rerun the stage"
            )
        new = _publish(stage, out, new, fingerprint, prune=prune, keep=keep)
        lock.check()
        return Outcome(out, False, new, notes)
    finally:
        lock.release()


def _sweep(out: str) -> None:
    """Remove what killed writers left: temp files in ``out`` (we hold its lock) and scratch dirs of dead pids."""
    local = storage.local_path(out)
    if local is not None and os.path.isdir(local):
        for dirpath, _dirs, names in os.walk(local):
            for name in names:
                if name.startswith(".") and name.endswith(".tmp"):  # storage's in-flight writes
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(dirpath, name))
    root = tempfile.gettempdir()
    with contextlib.suppress(OSError):
        for entry in os.scandir(root):
            parts = entry.name.split("-")
            if (
                entry.name.startswith(SCRATCH + "-")
                and len(parts) > 3
                and parts[2].isdigit()
                and not _pid_alive(int(parts[2]))
            ):
                shutil.rmtree(entry.path, ignore_errors=True)


def scratch_dir(what: str) -> str:
    """A local scratch directory ``gpt2ja-{what}-{pid}-…`` in the system temp dir; the caller removes it.

    The pid in its name lets the next stage run remove it when this process was
    killed before it could (see :func:`_sweep`).
    """
    return tempfile.mkdtemp(prefix=f"{SCRATCH}-{what.replace('-', '_')}-{os.getpid()}-")


def _builds(stage: str, inputs: Sequence[str]) -> list:
    """Which build of each input this stage reads: a rebuild while it reads must not be published over."""
    seen = []
    for uri in inputs:
        manifest = storage.read_manifest(uri)
        seen.append(
            None
            if manifest is None
            else (manifest.get("fingerprint"), manifest.get("build_id"), manifest.get("created_at"))
        )
    return seen


def _failpoint(stage: str) -> None:
    """``GPT2JA_STAGE_HOLD=STAGE=PATH``: hold this stage, lock taken, until PATH exists (the chaos tests' pause).

    The stage says it is held by creating ``PATH.held``; nothing happens unless
    the variable names this stage.
    """
    name, _, path = os.environ.get("GPT2JA_STAGE_HOLD", "").partition("=")
    if name != stage or not path:
        return
    with open(path + ".held", "w", encoding="utf-8") as f:
        f.write(str(os.getpid()))
    while not os.path.exists(path):
        time.sleep(0.05)


def _withdraw(out: str) -> None:
    """Delete the old manifest: the directory is partial from now until the new one is written."""
    uri = storage.join(out, storage.MANIFEST)
    if storage.exists(uri):
        storage.delete(uri)


def _publish(stage: str, out: str, manifest: dict, fingerprint: str, *, prune: bool, keep: Sequence[str]) -> dict:
    if not isinstance(manifest, dict) or manifest.get("fingerprint") != fingerprint:
        raise StageError(
            f"{stage}: the build of {out} returned a manifest for another fingerprint; "
            "this is a bug in the stage, please report it"
        )
    manifest = dict(manifest)
    manifest.pop("uri", None)
    manifest["inputs"] = [
        {**i, "uri": storage.relative_ref(i["uri"], out)} if i.get("uri") else i for i in manifest.get("inputs", [])
    ]
    manifest["refs"] = "relative"  # input URIs are relative to this manifest's folder (storage.resolve_ref)
    manifest["build_id"] = uuid.uuid4().hex  # tells two builds with one fingerprint apart (see _builds)
    _, problems = verify(out, fingerprint, manifest=manifest)
    if problems:
        raise StageError(
            f"{stage}: the files just built do not match their manifest ({'; '.join(problems)}); "
            "nothing was published, rerun the stage"
        )
    if prune:
        listed = {f["path"] for f in manifest.get("files", [])}
        for uri in storage.list_files(out):
            rel = _rel(uri, out)
            if rel not in listed and rel != storage.MANIFEST and not any(rel.startswith(k) for k in keep):
                storage.delete(uri)
    storage.write_manifest(out, manifest)
    manifest["uri"] = out
    return manifest


def input_uri(manifest: dict, ref: str) -> str:
    """Resolve a URI recorded in ``manifest`` (read by :func:`storage.read_manifest`) to one usable from here."""
    if manifest.get("refs") == "relative":
        return storage.resolve_ref(ref, manifest["uri"])
    return ref
