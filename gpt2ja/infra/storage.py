"""One small storage API over local paths and ``gs://bucket/prefix`` URIs.

Every pipeline stage reads and writes through this module, so a run works the
same on a laptop (local directories) and in the cloud (Google Cloud Storage).

Rules the pipeline relies on:

* Writes are atomic: readers see either the old object/file or the complete
  new one, never a half-written one.
* Every artifact directory ends with a ``_MANIFEST.json`` written last (and
  atomically).  Stages never write it themselves: :func:`gpt2ja.infra.stage.run_stage`
  locks the directory, verifies it, and publishes the manifest a build returns.

Example::

    from gpt2ja.infra import storage

    out = storage.join("gs://my-bucket/runs/r1", "shards")   # or a local path
    with storage.open(storage.join(out, "shard-00000.bin"), "wb") as f:
        f.write(b"...")
    files = [storage.file_info(u, root=out) for u in storage.list_files(out)]
    manifest = storage.build_manifest(
        stage="shard", config={"shard_size": 1024}, inputs=[input_manifest],
        counts={"shards": 1}, files=files, timings={"total_s": 1.2})

``google.cloud.storage`` is imported only when a ``gs://`` URI is used, so
local runs do not pay for it.  Set ``STORAGE_EMULATOR_HOST`` (e.g.
``http://127.0.0.1:9023``) to talk to a local GCS emulator instead of Google.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as _dt
import functools
import hashlib
import io
import json
import os
import posixpath
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any, Iterator

from gpt2ja.infra.errors import Gpt2jaError

__all__ = [
    "MANIFEST",
    "AlreadyExistsError",
    "GenerationMismatch",
    "StorageError",
    "build_manifest",
    "code_version",
    "delete",
    "delete_if_generation",
    "download_dir",
    "exists",
    "file_info",
    "fingerprint",
    "is_gcs",
    "join",
    "list_files",
    "list_sizes",
    "local_path",
    "open",
    "publish",
    "read_bytes",
    "read_generation",
    "read_manifest",
    "read_text",
    "relative_ref",
    "resolve_ref",
    "reset_client",
    "size",
    "upload_dir",
    "write_bytes",
    "write_if_generation",
    "write_manifest",
    "write_text",
]

MANIFEST = "_MANIFEST.json"

_GCS_SCHEME = "gs://"
# Files above this size are uploaded in resumable chunks of this size, so a
# dropped connection resends one chunk rather than the whole shard.  Must be a
# multiple of 256 KiB (a GCS requirement).
_CHUNK_SIZE = 8 * 1024 * 1024
_HASH_BLOCK = 1024 * 1024
# Parallel uploads/downloads in upload_dir/download_dir: GCS latency, not
# bandwidth, dominates for many small files.
_GCS_WORKERS = 8
_EMULATOR_PROJECT = "gpt2ja-test"
_CREDENTIALS_HINT = (
    "run `gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS "
    "to a service-account key that can access the bucket"
)


class StorageError(Gpt2jaError):
    """A storage operation failed; the message says what, where and what to do."""


class AlreadyExistsError(StorageError):
    """A create-only write found an object or file already at the destination."""


# --------------------------------------------------------------------------- URIs


def is_gcs(uri: str) -> bool:
    """Return True for ``gs://`` URIs, False for local paths."""
    return str(uri).startswith(_GCS_SCHEME)


def _split(uri: str) -> tuple[str, str]:
    """Split ``gs://bucket/some/key`` into ``("bucket", "some/key")``."""
    rest = uri[len(_GCS_SCHEME) :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"invalid GCS URI {uri!r}: no bucket name; write it as gs://BUCKET/PREFIX")
    return bucket, key.strip("/")


def _gcs_uri(bucket: str, key: str) -> str:
    return f"{_GCS_SCHEME}{bucket}/{key}" if key else f"{_GCS_SCHEME}{bucket}"


def _require_key(uri: str) -> tuple[str, str]:
    bucket, key = _split(uri)
    if not key:
        raise StorageError(f"{uri} names a bucket, not an object; add an object name, e.g. {uri.rstrip('/')}/file")
    return bucket, key


def _local(uri: str) -> str:
    return os.path.expanduser(os.fspath(uri))


def join(uri: str, *parts: str) -> str:
    """Join path components onto a local path or a ``gs://`` URI.

    >>> join("gs://b/runs/", "r1", "shard.bin")
    'gs://b/runs/r1/shard.bin'
    >>> join("/data", "r1", "shard.bin")
    '/data/r1/shard.bin'
    """
    if not is_gcs(uri):
        return os.path.join(uri, *parts)
    out = uri.rstrip("/")
    for part in parts:
        # GCS has no absolute paths below a bucket: a leading "/" on a part
        # would only create an empty path segment, so strip it.
        part = part.strip("/")
        if part:
            out = f"{out}/{part}"
    return out


def relative_ref(target: str, base: str) -> str:
    """``target`` as a reference from the directory ``base``: relative when both are on one disk or bucket.

    Manifests refer to their inputs this way, so a root moved to another
    directory, or copied to ``gs://``, keeps its links; :func:`resolve_ref`
    undoes it. A target elsewhere (another bucket, local vs GCS) stays absolute.

    Example::

        relative_ref("data/clean/x", "data/datasets/x/sp8k")      # '../../../clean/x'
        relative_ref("gs://b/r/clean/x", "gs://b/r/datasets/x")   # '../../clean/x'
    """
    if is_gcs(target) != is_gcs(base):
        return target if is_gcs(target) else os.path.abspath(_local(target))
    if is_gcs(target):
        (tb, tk), (bb, bk) = _split(target), _split(base)
        if tb != bb:
            return target
        return posixpath.relpath("/" + tk.strip("/"), "/" + bk.strip("/"))
    return os.path.relpath(os.path.abspath(_local(target)), os.path.abspath(_local(base))).replace(os.sep, "/")


def resolve_ref(ref: str, base: str) -> str:
    """The URI that the reference ``ref`` written in the directory ``base`` names (see :func:`relative_ref`)."""
    if is_gcs(ref) or os.path.isabs(ref):
        return ref
    if is_gcs(base):
        bucket, key = _split(base)
        joined = posixpath.normpath(posixpath.join("/" + key.strip("/"), ref)).lstrip("/")
        return _gcs_uri(bucket, joined)
    return os.path.normpath(os.path.join(_local(base), ref))


def local_path(uri: str) -> str | None:
    """Return the on-disk path for a local URI, or None for ``gs://`` URIs."""
    return None if is_gcs(uri) else _local(uri)


# ---------------------------------------------------------------------- GCS client

_client = None
_client_env: tuple[str | None, str | None] | None = None
_client_lock = threading.Lock()


def _gcs_client():
    """Return the cached ``google.cloud.storage.Client``.

    The cache is keyed on STORAGE_EMULATOR_HOST/GOOGLE_CLOUD_PROJECT so that
    changing them (tests pointing at an emulator) yields a fresh client.
    """
    global _client, _client_env
    env = (os.environ.get("STORAGE_EMULATOR_HOST"), os.environ.get("GOOGLE_CLOUD_PROJECT"))
    with _client_lock:
        if _client is None or _client_env != env:
            from google.cloud import storage as gcs

            emulator, project = env
            try:
                if emulator:
                    from google.auth.credentials import AnonymousCredentials

                    _require_emulator(emulator)

                    _client = gcs.Client(project=project or _EMULATOR_PROJECT, credentials=AnonymousCredentials())
                elif project:
                    _client = gcs.Client(project=project)
                else:
                    _client = gcs.Client()
            except Exception as err:  # google.auth.exceptions.DefaultCredentialsError and friends
                raise StorageError(
                    f"cannot create a Google Cloud Storage client ({_one_line(err)}); {_CREDENTIALS_HINT}"
                ) from err
            _client_env = env
        return _client


def _require_emulator(address: str) -> None:
    """Fail at once, in one line, when STORAGE_EMULATOR_HOST does not answer (the client would retry ~2 minutes)."""
    import socket
    import urllib.parse

    parts = urllib.parse.urlsplit(address if "://" in address else f"http://{address}")
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=5):
            return
    except OSError as err:
        raise StorageError(
            f"cannot reach the GCS emulator at STORAGE_EMULATOR_HOST={address} "
            f"({err.strerror or err}); start it, or unset STORAGE_EMULATOR_HOST to use Google "
            "Cloud Storage"
        ) from None


def reset_client() -> None:
    """Drop the cached GCS client; the next ``gs://`` call builds a new one."""
    global _client, _client_env
    with _client_lock:
        _client = None
        _client_env = None


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:300] + ("..." if len(text) > 300 else "")


@contextlib.contextmanager
def _gcs_errors(uri: str, action: str) -> Iterator[None]:
    """Translate google-cloud errors raised inside the block into StorageError."""
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc

    try:
        yield
    except gexc.PreconditionFailed as err:
        raise AlreadyExistsError(
            f"cannot {action}: {uri} already exists and create_only=True; delete it first or write to a new path"
        ) from err
    except gexc.NotFound as err:
        raise StorageError(f"cannot {action}: not found: {uri}; check the bucket and prefix") from err
    except (gexc.Forbidden, gexc.Unauthorized, auth_exc.GoogleAuthError) as err:
        raise StorageError(f"cannot {action} {uri}: permission denied ({_one_line(err)}); {_CREDENTIALS_HINT}") from err
    except gexc.GoogleAPIError as err:
        raise StorageError(
            f"cannot {action} {uri}: {_one_line(err)}; retry later, the client already retried transient errors"
        ) from err
    except Exception as err:
        import requests  # a dependency of google-cloud-storage

        # Network failures surface as requests' exceptions, which are not
        # GoogleAPIError; anything else is a bug and propagates unchanged.
        if isinstance(err, (ConnectionError, requests.exceptions.RequestException)):
            raise StorageError(
                f"cannot {action} {uri}: cannot reach Cloud Storage ({_one_line(err)}); "
                "check the network or STORAGE_EMULATOR_HOST"
            ) from err
        raise


@contextlib.contextmanager
def _local_errors(path: str, action: str) -> Iterator[None]:
    try:
        yield
    except FileExistsError as err:
        raise AlreadyExistsError(
            f"cannot {action}: {path} already exists and create_only=True; delete it first or write to a new path"
        ) from err
    except FileNotFoundError as err:
        raise StorageError(f"cannot {action}: not found: {err.filename or path}; check the path") from err
    except PermissionError as err:
        raise StorageError(
            f"cannot {action} {err.filename or path}: permission denied; check the file's owner and mode"
        ) from err
    except IsADirectoryError as err:
        raise StorageError(f"cannot {action} {path}: it is a directory; pass a file path") from err
    except OSError as err:
        raise StorageError(
            f"cannot {action} {err.filename or path}: {err.strerror or err}; check the disk and path"
        ) from err


def _blob(uri: str):
    bucket, key = _require_key(uri)
    return _gcs_client().bucket(bucket).blob(key)


# ------------------------------------------------------------------ queries


def exists(uri: str) -> bool:
    """Return True if ``uri`` is an existing file/object or a non-empty "directory".

    On GCS a "directory" exists when at least one object lies under ``uri/``;
    ``gs://bucket`` exists when the bucket does.
    """
    if not is_gcs(uri):
        return os.path.exists(_local(uri))
    bucket, key = _split(uri)
    client = _gcs_client()
    with _gcs_errors(uri, "check"):
        if not key:
            return client.bucket(bucket).exists()
        if client.bucket(bucket).blob(key).exists():
            return True
        return any(True for _ in client.list_blobs(bucket, prefix=key + "/", max_results=1))


def _is_temp_name(name: str) -> bool:
    # Temp files of in-flight local writes (see _local_temp) and the lock files of
    # gpt2ja.infra.stage (``.NAME.lock`` beside an output): never artifacts.
    return name.startswith(".") and (name.endswith(".tmp") or name.endswith(".lock"))


def list_files(uri: str, recursive: bool = True) -> list[str]:
    """Return the sorted URIs of files under the directory/prefix ``uri``.

    Non-recursive listing returns only direct children.  A missing directory,
    or a ``uri`` that names a file, gives ``[]``.  ``gs://b/run1`` lists
    ``gs://b/run1/...`` but not ``gs://b/run10/...``.
    """
    if not is_gcs(uri):
        root = _local(uri)
        if not os.path.isdir(root):
            return []
        out: list[str] = []
        with _local_errors(root, "list"):
            if recursive:
                for dirpath, _dirs, names in os.walk(root):
                    out.extend(os.path.join(dirpath, n) for n in names if not _is_temp_name(n))
            else:
                with os.scandir(root) as entries:
                    out.extend(os.path.join(root, e.name) for e in entries if e.is_file() and not _is_temp_name(e.name))
        return sorted(out)

    return sorted(list_sizes(uri, recursive=recursive))


def list_sizes(uri: str, recursive: bool = True) -> dict[str, int]:
    """``{file URI: size in bytes}`` under the directory/prefix ``uri`` (one listing request on GCS)."""
    if not is_gcs(uri):
        sizes = {}
        for path in list_files(uri, recursive=recursive):
            with contextlib.suppress(FileNotFoundError):  # removed since the listing
                sizes[path] = os.stat(path).st_size
        return sizes
    bucket, key = _split(uri)
    prefix = key + "/" if key else None
    with _gcs_errors(uri, "list"):
        blobs = _gcs_client().list_blobs(bucket, prefix=prefix, delimiter=None if recursive else "/")
        # Names ending in "/" are folder placeholders made by the console, not files.
        return {
            _gcs_uri(bucket, b.name): int(b.size)
            for b in blobs
            if not b.name.endswith("/") and not _is_temp_name(b.name.rsplit("/", 1)[-1])
        }


def size(uri: str) -> int:
    """Return the size of a file/object in bytes."""
    if not is_gcs(uri):
        path = _local(uri)
        with _local_errors(path, "stat"):
            return os.stat(path).st_size
    bucket, key = _require_key(uri)
    with _gcs_errors(uri, "stat"):
        blob = _gcs_client().bucket(bucket).get_blob(key)
    if blob is None:
        raise StorageError(f"cannot stat: not found: {uri}; check the bucket and prefix")
    return int(blob.size)


class _HashingSink(io.RawIOBase):
    """A write-only file object that hashes and counts what it is given."""

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[override]
        self.sha.update(b)
        self.count += len(b)
        return len(b)


def file_info(uri: str, *, root: str | None = None) -> dict:
    """Return ``{"path", "bytes", "sha256"}`` for one file, streaming its content.

    ``path`` is the name relative to ``root`` when given (use the artifact
    directory so manifests list e.g. ``"sub/shard-0.bin"``), else the base name.
    """
    if root is not None:
        if is_gcs(uri):
            base = root.rstrip("/") + "/"
            if not uri.startswith(base):
                raise StorageError(f"file_info: {uri} is not under root {root}; pass the directory that contains it")
            rel = uri[len(base) :]
        else:
            rel = os.path.relpath(_local(uri), _local(root)).replace(os.sep, "/")
            if rel.startswith("../"):
                raise StorageError(f"file_info: {uri} is not under root {root}; pass the directory that contains it")
    else:
        rel = uri.rstrip("/").rsplit("/", 1)[-1] if is_gcs(uri) else os.path.basename(_local(uri))

    sink = _HashingSink()
    if is_gcs(uri):
        blob = _blob(uri)
        with _gcs_errors(uri, "read"):
            blob.download_to_file(sink)
    else:
        path = _local(uri)
        with _local_errors(path, "read"), builtins.open(path, "rb") as f:
            for block in iter(lambda: f.read(_HASH_BLOCK), b""):
                sink.write(block)
    return {"path": rel, "bytes": sink.count, "sha256": sink.sha.hexdigest()}


# ------------------------------------------------------------------ open / write

_MODES = {"r", "rb", "w", "wb"}


def open(uri: str, mode: str = "rb", *, create_only: bool = False):  # noqa: A001 - the API is storage.open
    """Open a local file or GCS object; use it as a context manager.

    Modes are ``r``, ``rb``, ``w``, ``wb``; text modes use UTF-8.  Reading a
    ``gs://`` object streams it in chunks (pinned to the generation seen when
    opening, so a concurrent overwrite fails the read instead of mixing
    versions).

    Writing is atomic: bytes go to a temporary local file and are published
    only when the block exits normally; if it raises, nothing is published and
    the temporary file is removed.  With ``create_only=True`` publishing raises
    AlreadyExistsError when the destination exists (and leaves it untouched).
    Uploads to GCS stage through a temp file in ``$TMPDIR``.

    Example::

        with storage.open("gs://bucket/run/notes.txt", "w") as f:
            f.write("こんにちは")
    """
    if mode not in _MODES:
        raise ValueError(f"storage.open: unsupported mode {mode!r}; use one of r, rb, w, wb")
    if mode.startswith("r"):
        if create_only:
            raise ValueError("storage.open: create_only applies to write modes (w, wb) only")
        return _open_read(uri, text=mode == "r")
    return _open_write(uri, text=mode == "w", create_only=create_only)


@contextlib.contextmanager
def _open_read(uri: str, *, text: bool) -> Iterator[IO]:
    if is_gcs(uri):
        blob = _blob(uri)
        with _gcs_errors(uri, "read"):
            blob.reload()  # fail early and clearly when missing; learn the generation
            raw = blob.open("rb", if_generation_match=blob.generation)
    else:
        path = _local(uri)
        with _local_errors(path, "read"):
            raw = builtins.open(path, "rb")
    f = io.TextIOWrapper(raw, encoding="utf-8") if text else raw
    with f:
        yield f


def _local_temp(path: str) -> tuple[int, str]:
    """Create a temp file next to ``path`` (same filesystem, so rename is atomic)."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkstemp(dir=parent, prefix=f".{os.path.basename(path)}.", suffix=".tmp")


def _umask_mode() -> int:
    # mkstemp creates 0600 files; published files should get the usual mode.
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _publish_local_temp(tmp: str, path: str, create_only: bool) -> None:
    """Atomically move the finished temp file ``tmp`` to ``path``."""
    os.chmod(tmp, _umask_mode())
    if not create_only:
        os.replace(tmp, path)
        return
    # link() fails if ``path`` exists, which makes create-only atomic even
    # between processes; rename() would silently overwrite.
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError as err:
        raise StorageError(
            f"cannot publish {path} create-only: this filesystem does not support hard links ({err.strerror}); "
            "write without create_only or use another filesystem"
        ) from err
    os.unlink(tmp)


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


@contextlib.contextmanager
def _open_write(uri: str, *, text: bool, create_only: bool) -> Iterator[IO]:
    gcs = is_gcs(uri)
    if gcs:
        _require_key(uri)
        fd, tmp = tempfile.mkstemp(prefix="gpt2ja-upload-", suffix=".tmp")
    else:
        path = _local(uri)
        with _local_errors(path, "write"):
            fd, tmp = _local_temp(path)
    try:
        f = os.fdopen(fd, "w" if text else "wb", **({"encoding": "utf-8"} if text else {}))
        with f:
            yield f
            if not f.closed:
                f.flush()
                if not gcs:
                    # Durable before the rename makes it visible: a crash must
                    # not leave a published but empty file.
                    os.fsync(f.fileno())
        if gcs:
            _upload_file(tmp, uri, create_only)
        else:
            with _local_errors(path, "publish"):
                _publish_local_temp(tmp, path, create_only)
    finally:
        _remove_quietly(tmp)


def _upload_file(local: str, uri: str, create_only: bool) -> None:
    """Upload one complete local file; GCS makes it visible only when complete."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    blob = _blob(uri)
    with _local_errors(local, "read"):
        nbytes = os.path.getsize(local)
    if nbytes > _CHUNK_SIZE:
        blob.chunk_size = _CHUNK_SIZE
    # Retrying is safe either way: an unconditional upload rewrites the same
    # bytes; a create-only upload is guarded by ifGenerationMatch=0.
    kwargs: dict[str, Any] = {"retry": DEFAULT_RETRY}
    if create_only:
        kwargs["if_generation_match"] = 0
    with _gcs_errors(uri, "upload to"):
        blob.upload_from_filename(local, **kwargs)


def publish(local_path: str, uri: str, *, create_only: bool = False) -> None:
    """Atomically copy (local) or upload (GCS) the local file ``local_path`` to ``uri``."""
    src = _local(local_path)
    if not os.path.isfile(src):
        raise StorageError(f"cannot publish {src}: not a file; check the source path")
    if is_gcs(uri):
        _upload_file(src, uri, create_only)
        return
    dest = _local(uri)
    with _local_errors(dest, "publish"):
        fd, tmp = _local_temp(dest)
        try:
            with os.fdopen(fd, "wb") as out, builtins.open(src, "rb") as inp:
                shutil.copyfileobj(inp, out, _HASH_BLOCK)
                out.flush()
                os.fsync(out.fileno())
            _publish_local_temp(tmp, dest, create_only)
        finally:
            _remove_quietly(tmp)


def _read_bytes(uri: str, *, missing_ok: bool) -> bytes | None:
    if is_gcs(uri):
        from google.api_core.exceptions import NotFound

        blob = _blob(uri)
        with _gcs_errors(uri, "read"):
            try:
                return blob.download_as_bytes()
            except NotFound:
                if missing_ok:
                    return None
                raise
    path = _local(uri)
    with _local_errors(path, "read"):
        try:
            with builtins.open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            if missing_ok:
                return None
            raise


def read_bytes(uri: str) -> bytes:
    """Return the whole content of a file/object."""
    return _read_bytes(uri, missing_ok=False)  # type: ignore[return-value]


def read_text(uri: str) -> str:
    """Return the whole content of a file/object decoded as UTF-8."""
    data = read_bytes(uri)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise StorageError(f"cannot read {uri} as text: not valid UTF-8 at byte {err.start}; read it as bytes") from err


def write_bytes(uri: str, data: bytes, *, create_only: bool = False) -> None:
    """Atomically write ``data`` to ``uri`` (see :func:`open`)."""
    with open(uri, "wb", create_only=create_only) as f:
        f.write(data)


def write_text(uri: str, text: str, *, create_only: bool = False) -> None:
    """Atomically write ``text`` as UTF-8 to ``uri`` (see :func:`open`)."""
    write_bytes(uri, text.encode("utf-8"), create_only=create_only)


# ------------------------------------------------------------------ directories


def _manifest_last(rel_paths: list[str]) -> list[str]:
    """Order files so manifests come last, the top-level one very last.

    A reader that sees a manifest may then trust that everything it lists is
    already in place, even while a copy is still running.
    """
    data = sorted(p for p in rel_paths if p.rsplit("/", 1)[-1] != MANIFEST)
    manifests = sorted((p for p in rel_paths if p.rsplit("/", 1)[-1] == MANIFEST), key=lambda p: (-p.count("/"), p))
    return data + manifests


def _run_batches(func, items: list, parallel: bool) -> None:
    """Run ``func`` over items; manifests (the tail) strictly after the rest."""
    data = [i for i in items if i[0].rsplit("/", 1)[-1] != MANIFEST]
    manifests = items[len(data) :]
    if parallel and len(data) > 1:
        with ThreadPoolExecutor(max_workers=_GCS_WORKERS) as pool:
            # list() re-raises the first failure.
            list(pool.map(lambda item: func(*item), data))
    else:
        for item in data:
            func(*item)
    for item in manifests:
        func(*item)


def upload_dir(local_dir: str, uri: str, *, create_only: bool = False) -> list[str]:
    """Copy every file under ``local_dir`` to ``uri`` (a local dir or GCS prefix).

    Each file is published atomically and ``_MANIFEST.json`` files go last, so
    the destination counts as complete only once everything is there.  Returns
    the sorted destination URIs.
    """
    src_root = _local(local_dir)
    if not os.path.isdir(src_root):
        raise StorageError(f"cannot upload {src_root}: not a directory; check the source path")
    rels = [os.path.relpath(p, src_root).replace(os.sep, "/") for p in list_files(src_root, recursive=True)]
    items = [(os.path.join(src_root, rel), join(uri, *rel.split("/"))) for rel in _manifest_last(rels)]
    _run_batches(lambda src, dest: publish(src, dest, create_only=create_only), items, parallel=is_gcs(uri))
    return sorted(dest for _src, dest in items)


def _download_one(src: str, dest: str) -> None:
    if is_gcs(src):
        blob = _blob(src)
        with open(dest, "wb") as f, _gcs_errors(src, "download"):
            blob.download_to_file(f)
    else:
        publish(src, dest)


def download_dir(uri: str, local_dir: str) -> list[str]:
    """Copy every file under ``uri`` (GCS prefix or local dir) into ``local_dir``.

    Files are written atomically, manifests last.  Returns the sorted local
    paths.  Raises StorageError when nothing exists under ``uri``.
    """
    if not exists(uri):
        raise StorageError(f"cannot download {uri}: nothing there; check the bucket and prefix")
    dest_root = _local(local_dir)
    base = uri.rstrip("/") + "/" if is_gcs(uri) else None
    rels = []
    for src in list_files(uri, recursive=True):
        rels.append(src[len(base) :] if base else os.path.relpath(src, _local(uri)).replace(os.sep, "/"))
    items = [(join(uri, *rel.split("/")), os.path.join(dest_root, *rel.split("/"))) for rel in _manifest_last(rels)]
    _run_batches(_download_one, items, parallel=is_gcs(uri))
    os.makedirs(dest_root, exist_ok=True)
    return sorted(dest for _src, dest in items)


def delete(uri: str) -> None:
    """Delete a file/object or everything under a directory/prefix; missing is fine.

    ``gs://b/run1`` deletes the object ``run1`` and everything under ``run1/``
    but not ``run10/``.  Deleting a whole bucket is refused.
    """
    if not is_gcs(uri):
        path = _local(uri)
        with _local_errors(path, "delete"):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                _remove_quietly(path)
        return

    bucket_name, key = _split(uri)
    if not key:
        raise StorageError(f"refusing to delete the whole bucket {uri}; delete a prefix such as {uri.rstrip('/')}/run1")
    from google.api_core.exceptions import NotFound

    client = _gcs_client()
    bucket = client.bucket(bucket_name)

    def delete_one(name: str) -> None:
        # NotFound is "already gone": another deleter got there first, or the
        # bare `key` was never an object (the usual case for a prefix).
        with contextlib.suppress(NotFound):
            bucket.delete_blob(name)

    with _gcs_errors(uri, "delete"):
        names = [key] + [b.name for b in client.list_blobs(bucket_name, prefix=key + "/")]
        # Deletes are one request each and latency-bound, so run several at once.
        with ThreadPoolExecutor(max_workers=_GCS_WORKERS) as pool:
            list(pool.map(delete_one, names))


# ------------------------------------------------------------------ conditional objects (GCS locks)


class GenerationMismatch(StorageError):
    """A conditional write or delete found another generation of the object than the one it named."""


def read_generation(uri: str) -> tuple[bytes, int] | None:
    """``(content, generation)`` of a ``gs://`` object, or None when it does not exist.

    The generation is what :func:`write_if_generation` and
    :func:`delete_if_generation` compare against: GCS gives every write of an
    object a new one, so "still the version I read" is one request.
    """
    from google.api_core.exceptions import NotFound

    bucket, key = _require_key(uri)
    with _gcs_errors(uri, "read"):
        blob = _gcs_client().bucket(bucket).get_blob(key)
        if blob is None:
            return None
        generation = int(blob.generation)
        try:
            data = blob.download_as_bytes(if_generation_match=generation)
        except NotFound:  # deleted between the two requests
            return None
    return data, generation


def write_if_generation(uri: str, data: bytes, generation: int) -> int:
    """Write ``data`` to the ``gs://`` object only if its generation is ``generation`` (0: it must not exist).

    Returns the new generation; raises :class:`GenerationMismatch` when another
    writer got there first (GCS checks the condition atomically, server side).
    """
    from google.api_core import exceptions as gexc

    bucket, key = _require_key(uri)
    blob = _gcs_client().bucket(bucket).blob(key)
    try:
        with _gcs_errors(uri, "write"):
            try:
                blob.upload_from_string(data, if_generation_match=generation)
            except gexc.PreconditionFailed as err:
                raise GenerationMismatch(f"{uri} changed: it is no longer generation {generation}") from err
    except AlreadyExistsError as err:  # the emulator's proxy answers 412 like GCS
        raise GenerationMismatch(f"{uri} changed: it is no longer generation {generation}") from err
    return int(blob.generation)


def delete_if_generation(uri: str, generation: int) -> bool:
    """Delete the ``gs://`` object if it is still ``generation``; False when it changed or is gone."""
    from google.api_core import exceptions as gexc

    bucket, key = _require_key(uri)
    with _gcs_errors(uri, "delete"):
        try:
            _gcs_client().bucket(bucket).blob(key).delete(if_generation_match=generation)
        except (gexc.PreconditionFailed, gexc.NotFound):
            return False
    return True


# ------------------------------------------------------------------ manifests


def _canonical_default(obj: Any) -> Any:
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(
        f"fingerprint: config value of type {type(obj).__name__} is not JSON-serialisable; "
        "convert it to str, int, float, bool, list or dict"
    )


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_canonical_default)


def _input_fingerprint(manifest: dict) -> str:
    if not isinstance(manifest, dict) or not manifest.get("fingerprint"):
        raise StorageError(
            "fingerprint: an input manifest has no 'fingerprint'; build the input stage first "
            "(read_manifest returned None or an incomplete dict)"
        )
    return str(manifest["fingerprint"])


def fingerprint(config: dict, input_manifests: list[dict] = ()) -> str:
    """Return the sha256 hex of the canonical JSON of ``config`` plus the inputs' fingerprints.

    Key order in ``config`` does not matter; the order of ``input_manifests``
    does (inputs can play different roles).  Code changes are *not* part of the
    fingerprint: bump a version key in the stage's config when a change should
    invalidate existing outputs.
    """
    payload = {"config": config, "inputs": [_input_fingerprint(m) for m in input_manifests]}
    return hashlib.sha256(_canonical_json(payload).encode("utf-8")).hexdigest()


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Return the package version plus the short git commit, e.g. ``"0.1.0+g1a2b3c4"``.

    The commit is added only when running from a git checkout with at least one
    commit; otherwise (installed wheel, no git binary) just the version.
    """
    import gpt2ja

    version = gpt2ja.__version__
    # Only ask git about the checkout gpt2ja itself lives in, never an unrelated
    # repository that happens to contain an installed copy.
    root = os.path.dirname(os.path.dirname(os.path.abspath(gpt2ja.__file__)))
    if not os.path.exists(os.path.join(root, ".git")):
        return version
    try:
        out = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}+g{out}" if out else version


_MANIFEST_KEYS = (
    "stage",
    "config",
    "fingerprint",
    "inputs",
    "counts",
    "files",
    "code_version",
    "created_at",
    "timings",
)


def build_manifest(
    *,
    stage: str,
    config: dict,
    inputs: list[dict] = (),
    counts: dict,
    files: list[dict],
    timings: dict,
    extra: dict | None = None,
) -> dict:
    """Assemble a stage's manifest dict (write it with :func:`write_manifest`).

    ``inputs`` are the input stages' manifests as returned by
    :func:`read_manifest` (which adds their ``"uri"``), or plain
    ``{"uri", "fingerprint"}`` dicts.  ``extra`` keys are merged at the top
    level and must not collide with the standard keys.
    """
    inputs = list(inputs)
    manifest = {
        "stage": stage,
        "config": config,
        "fingerprint": fingerprint(config, inputs),
        "inputs": [{"uri": m.get("uri"), "fingerprint": _input_fingerprint(m)} for m in inputs],
        "counts": dict(counts),
        "files": list(files),
        "code_version": code_version(),
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "timings": dict(timings),
    }
    clash = sorted(set(extra or {}) & set(_MANIFEST_KEYS))
    if clash:
        raise ValueError(f"build_manifest: extra keys {clash} clash with standard manifest keys; rename them")
    manifest.update(extra or {})
    return manifest


def write_manifest(dir_uri: str, manifest: dict) -> str:
    """Atomically write ``{dir_uri}/_MANIFEST.json``; call it after every other file is written.

    Returns the manifest's URI.
    """
    uri = join(dir_uri, MANIFEST)
    text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False, default=_canonical_default) + "\n"
    write_text(uri, text)
    return uri


def read_manifest(dir_uri: str) -> dict | None:
    """Return the manifest of ``dir_uri`` with ``"uri": dir_uri`` added, or None when there is none.

    Raises StorageError naming the file when it is not valid JSON.
    """
    uri = join(dir_uri, MANIFEST)
    data = _read_bytes(uri, missing_ok=True)
    if data is None:
        return None
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StorageError(
            f"corrupt manifest {uri}: {_one_line(err)}; delete it so the stage rebuilds this directory"
        ) from err
    if not isinstance(manifest, dict):
        raise StorageError(
            f"corrupt manifest {uri}: expected a JSON object, got {type(manifest).__name__}; "
            "delete it so the stage rebuilds this directory"
        )
    manifest["uri"] = dir_uri
    return manifest
