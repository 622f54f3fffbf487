"""The filesystem layer under :mod:`gpt2ja.infra.storage`: local paths and ``gs://bucket/prefix`` through fsspec.

Every URI resolves to an fsspec filesystem and a path on it: fsspec's
``LocalFileSystem`` for local paths, gcsfs's ``GCSFileSystem`` for ``gs://``.
Listing, sizes, existence, reading and streaming, uploads and downloads (single
files and whole directories) and deletes go through that filesystem, so the two
backends share one code path.

What stays on the ``google-cloud-storage`` client, and why:

* the generation preconditions: ``create_only`` uploads (``ifGenerationMatch=0``),
  :func:`read_generation`, :func:`write_if_generation` and
  :func:`delete_if_generation`.  The stage locks (gpt2ja.infra.stage) need them;
  gcsfs offers create-only writes only as an experimental ``mode="create"`` and
  has no conditional write or delete against a given generation, nor a read
  that returns the generation it read.  The locks' calls keep their request
  counts (read_generation two, write_if_generation and delete_if_generation
  one; benchmarks/storage_bench.py counts them).

What fsspec does not do, and this module does itself:

* Atomic local writes: bytes go to a temp file beside the destination,
  fsync'd, then renamed (``create_only``: hard-linked, which fails when the
  destination exists).  On GCS an object becomes visible only when its one
  upload completes, so a local temp file staged and uploaded once is atomic.
* ``GCSFileSystem`` is built with ``use_listings_cache=False``: other
  processes (stage workers, a resumed run) write the same prefixes, and a
  cached listing would hide their files.
* ``gcsfs.core.GCSFileSystem`` is used, not ``gcsfs.GCSFileSystem``: the latter
  (gcsfs's "extended" filesystem, the default unless
  GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false) first asks the Storage Control API,
  over gRPC, for each bucket's layout.  Against gcp-storage-emulator that call
  fails ("WARNING:gcsfs:Could not determine bucket type for bucket name bk:
  Timeout of 60.0s exceeded, last exception: 503 failed to connect to all
  addresses; ... Ssl handshake failed (TSI_PROTOCOL_FAILURE)", gcsfs
  2026.10.1), and since an unknown layout is not cached, every call waits it
  out again: a 5-byte pipe_file took 77 s, the cat_file after it 50 s.  The
  core filesystem speaks only the JSON API, as the client does.

* Reads pinned to a generation (:func:`open`): gcsfs's file object keeps the
  generation it is opened with but does not send it with its ranged reads, so
  ``_PinnedObject`` asks ``cat_file`` for each range of that generation.
  gcp-storage-emulator ignores ``generation=`` on reads (it serves the current
  object), so the tests check that the parameter is sent, not GCS's 404.

Requests per call, as benchmarks/storage_bench.py counts them: read_bytes,
write_bytes, list_files and a small file_info are one each; exists, size and
open ask gcsfs's ``info``, which sends the object lookup and a one-entry
listing (is it a "directory"?) at once, so they cost one round trip but two
requests where the client answered an existing object with one.

``STORAGE_EMULATOR_HOST`` (e.g. ``http://127.0.0.1:9023``) points both the
filesystem and the client at a local GCS emulator, with anonymous credentials
(``token="anon"``, ``AnonymousCredentials``); without it both use Application
Default Credentials (``token="google_default"``: a missing login fails at once,
where gcsfs's default would fall back to anonymous access).  gcsfs itself reads
STORAGE_EMULATOR_HOST on every request; it is passed as ``endpoint_url`` instead,
so a cached filesystem keeps the address it was built for, and the cache is
keyed on the variable, as the client's is.  gcsfs and google-cloud-storage are imported only when a
``gs://`` URI is used, so local runs do not pay for them.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import mimetypes
import os
import posixpath
import shutil
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
    "delete",
    "delete_if_generation",
    "download_dir",
    "exists",
    "file_info",
    "is_gcs",
    "join",
    "list_files",
    "list_sizes",
    "local_path",
    "one_line",
    "open",
    "publish",
    "read_bytes",
    "read_bytes_or_none",
    "read_generation",
    "read_text",
    "relative_ref",
    "resolve_ref",
    "reset_client",
    "size",
    "upload_dir",
    "write_bytes",
    "write_if_generation",
    "write_text",
]

# The manifest's name: upload_dir/download_dir copy manifests last (gpt2ja.infra.manifest writes and reads them).
MANIFEST = "_MANIFEST.json"

_GCS_SCHEME = "gs://"
# Files above this size are uploaded in resumable chunks of this size, so a
# dropped connection resends one chunk rather than the whole shard.  Must be a
# multiple of 256 KiB (a GCS requirement).  Reads stream in blocks of this size.
_CHUNK_SIZE = 8 * 1024 * 1024
_HASH_BLOCK = 1024 * 1024
# Parallel uploads/downloads/deletes in upload_dir/download_dir/delete: GCS
# latency, not bandwidth, dominates for many small files.
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


class GenerationMismatch(StorageError):
    """A conditional write or delete found another generation of the object than the one it named."""


# --------------------------------------------------------------------------- URIs (pure)


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


# ---------------------------------------------------------------------- filesystems and the client

_client = None
_client_env: tuple[str | None, str | None] | None = None
_gcsfs = None
_gcsfs_env: tuple[str | None, str | None, int] | None = None
_local_fs = None
_client_lock = threading.Lock()


def _env() -> tuple[str | None, str | None]:
    return os.environ.get("STORAGE_EMULATOR_HOST"), os.environ.get("GOOGLE_CLOUD_PROJECT")


def _gcs_client():
    """Return the cached ``google.cloud.storage.Client`` (generation preconditions only).

    The cache is keyed on STORAGE_EMULATOR_HOST/GOOGLE_CLOUD_PROJECT so that
    changing them (tests pointing at an emulator) yields a fresh client.
    """
    global _client, _client_env
    env = _env()
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
            except StorageError:
                raise
            except Exception as err:  # google.auth.exceptions.DefaultCredentialsError and friends
                raise StorageError(
                    f"cannot create a Google Cloud Storage client ({one_line(err)}); {_CREDENTIALS_HINT}"
                ) from err
            _client_env = env
        return _client


def _gcs_filesystem():
    """Return the cached ``gcsfs.core.GCSFileSystem`` for the current environment and process.

    Keyed like :func:`_gcs_client`, and on the process id: the filesystem's
    HTTP session belongs to fsspec's event-loop thread, which a forked child
    does not inherit.
    """
    global _gcsfs, _gcsfs_env
    emulator, project = _env()
    key = (emulator, project, os.getpid())
    with _client_lock:
        if _gcsfs is None or _gcsfs_env != key:
            from gcsfs.core import GCSFileSystem

            # No listings cache: other processes write the same prefixes.
            common: dict[str, Any] = {"use_listings_cache": False, "skip_instance_cache": True}
            try:
                if emulator:
                    _require_emulator(emulator)
                    endpoint = emulator if "://" in emulator else f"http://{emulator}"
                    _gcsfs = GCSFileSystem(
                        project=project or _EMULATOR_PROJECT, token="anon", endpoint_url=endpoint, **common
                    )
                else:
                    # google_default: Application Default Credentials or a clear failure now, never
                    # gcsfs's silent fallback to anonymous access (token=None).
                    kwargs = {"project": project} if project else {}
                    _gcsfs = GCSFileSystem(token="google_default", **kwargs, **common)
            except StorageError:
                raise
            except Exception as err:  # google.auth.exceptions.DefaultCredentialsError and friends
                raise StorageError(
                    f"cannot connect to Google Cloud Storage ({one_line(err)}); {_CREDENTIALS_HINT}"
                ) from err
            _gcsfs_env = key
        return _gcsfs


def _local_filesystem():
    global _local_fs
    if _local_fs is None:
        from fsspec.implementations.local import LocalFileSystem

        _local_fs = LocalFileSystem()
    return _local_fs


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
    """Drop the cached GCS client and filesystem; the next ``gs://`` call builds new ones."""
    global _client, _client_env, _gcsfs, _gcsfs_env
    with _client_lock:
        _client = None
        _client_env = None
        _gcsfs = None
        _gcsfs_env = None


def _target(uri: str, *, object_only: bool = False):
    """``(filesystem, path on it)`` for ``uri``: ``bucket/key`` on GCS, the absolute path locally."""
    if is_gcs(uri):
        bucket, key = _require_key(uri) if object_only else _split(uri)
        return _gcs_filesystem(), f"{bucket}/{key}" if key else bucket
    return _local_filesystem(), os.path.abspath(_local(uri))


def one_line(err: BaseException) -> str:
    """``err`` as one line of at most 300 characters (server errors span lines)."""
    text = " ".join(str(err).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def _permission_denied(err: BaseException) -> bool:
    """True for gcsfs's answers to 401/403 (an OSError "Forbidden: ..." or an HttpError with that code)."""
    if isinstance(err, OSError) and str(err).startswith("Forbidden"):
        return True
    return getattr(err, "code", None) in (401, 403)


@contextlib.contextmanager
def _gcs_errors(uri: str, action: str) -> Iterator[None]:
    """Translate google-cloud and gcsfs errors raised inside the block into StorageError."""
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc

    try:
        yield
    except StorageError:
        raise
    except (gexc.PreconditionFailed, FileExistsError) as err:  # gcsfs answers 412 with FileExistsError
        raise AlreadyExistsError(
            f"cannot {action}: {uri} already exists and create_only=True; delete it first or write to a new path"
        ) from err
    except (gexc.NotFound, FileNotFoundError) as err:
        raise StorageError(f"cannot {action}: not found: {uri}; check the bucket and prefix") from err
    except (gexc.Forbidden, gexc.Unauthorized, auth_exc.GoogleAuthError) as err:
        raise StorageError(f"cannot {action} {uri}: permission denied ({one_line(err)}); {_CREDENTIALS_HINT}") from err
    except gexc.GoogleAPIError as err:
        raise StorageError(
            f"cannot {action} {uri}: {one_line(err)}; retry later, the client already retried transient errors"
        ) from err
    except Exception as err:
        import asyncio

        import requests  # a dependency of google-cloud-storage and gcsfs

        if _permission_denied(err):
            raise StorageError(
                f"cannot {action} {uri}: permission denied ({one_line(err)}); {_CREDENTIALS_HINT}"
            ) from err
        # Network failures surface as requests' or aiohttp's exceptions (gcsfs
        # retries them first) or as timeouts; anything else is a bug and
        # propagates unchanged.
        network = [ConnectionError, asyncio.TimeoutError, requests.exceptions.RequestException]
        with contextlib.suppress(ImportError):
            import aiohttp

            network.append(aiohttp.ClientError)
        if isinstance(err, tuple(network)):
            raise StorageError(
                f"cannot {action} {uri}: cannot reach Cloud Storage ({one_line(err)}); "
                "check the network or STORAGE_EMULATOR_HOST"
            ) from err
        http_error = type(err).__name__ == "HttpError" or str(err).startswith("Bad Request")
        if http_error or isinstance(err, OSError):  # gcsfs.retry.HttpError: any other status
            raise StorageError(
                f"cannot {action} {uri}: {one_line(err)}; retry later, gcsfs already retried transient errors"
            ) from err
        raise


@contextlib.contextmanager
def _local_errors(path: str, action: str) -> Iterator[None]:
    try:
        yield
    except StorageError:
        raise
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


def _errors(uri: str, action: str):
    return _gcs_errors(uri, action) if is_gcs(uri) else _local_errors(_local(uri), action)


def _blob(uri: str):
    bucket, key = _require_key(uri)
    return _gcs_client().bucket(bucket).blob(key)


def _content_type(uri: str) -> str:
    # From the destination's name, as the client does from a file's; compressed
    # files stay octet-stream (a Content-Type of their content would invite
    # transparent decompression on download).
    kind, encoding = mimetypes.guess_type(uri.rsplit("/", 1)[-1])
    return kind if kind and not encoding else "application/octet-stream"


# ------------------------------------------------------------------ queries


def exists(uri: str) -> bool:
    """Return True if ``uri`` is an existing file/object or a non-empty "directory".

    On GCS a "directory" exists when at least one object lies under ``uri/``;
    ``gs://bucket`` exists when the bucket does.
    """
    fs, path = _target(uri)
    with _errors(uri, "check"):
        return bool(fs.exists(path))


def _is_temp_name(name: str) -> bool:
    # Temp files of in-flight local writes (see _local_temp) and the lock files of
    # gpt2ja.infra.stage (``.NAME.lock`` beside an output): never artifacts.
    return name.startswith(".") and (name.endswith(".tmp") or name.endswith(".lock"))


def _raise_unless_gone(err: OSError) -> None:
    # fsspec's local walk: a directory removed while it walks is skipped; anything else (permissions) is an error.
    if not isinstance(err, FileNotFoundError):
        raise err


def list_files(uri: str, recursive: bool = True) -> list[str]:
    """Return the sorted URIs of files under the directory/prefix ``uri``.

    Non-recursive listing returns only direct children.  A missing directory,
    or a ``uri`` that names a file, gives ``[]``.  ``gs://b/run1`` lists
    ``gs://b/run1/...`` but not ``gs://b/run10/...``.
    """
    return sorted(list_sizes(uri, recursive=recursive))


def list_sizes(uri: str, recursive: bool = True) -> dict[str, int]:
    """``{file URI: size in bytes}`` under the directory/prefix ``uri`` (one listing request on GCS)."""
    gcs = is_gcs(uri)
    fs, path = _target(uri)
    base = path.rstrip("/") + "/"
    with _errors(uri, "list"):
        try:
            if recursive:
                entries = fs.find(path, detail=True, **({} if gcs else {"on_error": _raise_unless_gone}))
            else:
                entries = {e["name"]: e for e in fs.ls(path, detail=True)}
        except (FileNotFoundError, NotADirectoryError):
            return {}
    out = {}
    for name, info in entries.items():
        # Names ending in "/" are folder placeholders made by the console, not files.
        if not name.startswith(base) or name.endswith("/") or _is_temp_name(name.rsplit("/", 1)[-1]):
            continue
        if info.get("type") != "file" and not (info.get("islink") and os.path.isfile(name)):
            continue  # directories; locally, what is neither a file nor a link to one
        rel = name[len(base) :]
        out[join(uri, rel) if gcs else os.path.join(_local(uri), *rel.split("/"))] = int(info["size"])
    return out


def size(uri: str) -> int:
    """Return the size of a file/object in bytes."""
    fs, path = _target(uri, object_only=True)
    with _errors(uri, "stat"):
        info = fs.info(path)
    if is_gcs(uri) and info.get("type") != "file":  # a prefix with objects under it: no object of that name
        raise StorageError(f"cannot stat: not found: {uri}; check the bucket and prefix")
    return int(info["size"])


def _open_raw(uri: str, action: str) -> IO[bytes]:
    """A binary file object streaming ``uri``; on GCS pinned to the generation its metadata names."""
    fs, path = _target(uri, object_only=True)
    with _errors(uri, action):
        if not is_gcs(uri):
            return fs.open(path, "rb")
        info = fs.info(path)  # fail early and clearly when missing; learn the size and generation
        if info.get("type") != "file":
            raise FileNotFoundError(path)
    raw = _PinnedObject(fs, path, uri, int(info["size"]), info.get("generation"))
    return io.BufferedReader(raw, buffer_size=_CHUNK_SIZE)


class _PinnedObject(io.RawIOBase):
    """A GCS object read in ranges, each one of the generation it was opened at.

    An object overwritten while it is read then fails the read (GCS answers
    404 for a generation that is gone) instead of mixing versions.  Not
    gcsfs's own file object: ``fs.open(path, generation=...)`` keeps the
    generation, but its ranged reads do not send it (gcsfs 2026.10.1:
    ``GCSFile._fetch_range`` calls ``cat_file`` without it).
    """

    def __init__(self, fs, path: str, uri: str, size: int, generation: str | None) -> None:
        self._fs, self._path, self._uri, self._size, self._generation = fs, path, uri, size, generation
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        n = min(len(buffer), self._size - self._pos)
        if n <= 0:
            return 0
        with _gcs_errors(self._uri, "read"):
            data = self._fs.cat_file(self._path, start=self._pos, end=self._pos + n, generation=self._generation)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


class _HashingSink(io.RawIOBase):
    """A write-only file object that hashes and counts what it is given."""

    def __init__(self) -> None:
        import hashlib

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
        # One ranged GET of the first _CHUNK_SIZE bytes: an object shorter than that is all there, from one
        # generation, in one request (most manifest entries); a longer one is streamed, pinned, from the start.
        fs, path = _target(uri, object_only=True)
        with _gcs_errors(uri, "read"):
            try:
                first = fs.cat_file(path, start=0, end=_CHUNK_SIZE)
            except Exception as err:
                if "not satisfiable" not in str(err) and getattr(err, "code", None) != 416:
                    raise
                first = b""  # GCS answers 416 to a range of an empty object
        if len(first) < _CHUNK_SIZE:
            sink.write(first)
            return {"path": rel, "bytes": sink.count, "sha256": sink.sha.hexdigest()}
    with _open_raw(uri, "read") as f, _errors(uri, "read"):
        for block in iter(lambda: f.read(_HASH_BLOCK), b""):
            sink.write(block)
    return {"path": rel, "bytes": sink.count, "sha256": sink.sha.hexdigest()}


# ------------------------------------------------------------------ open / write

_MODES = {"r", "rb", "w", "wb"}


def open(uri: str, mode: str = "rb", *, create_only: bool = False):  # noqa: A001 - the API is storage.open
    """Open a local file or GCS object; use it as a context manager.

    Modes are ``r``, ``rb``, ``w``, ``wb``; text modes use UTF-8.  Reading a
    ``gs://`` object streams it in 8 MiB blocks (pinned to the generation seen
    when opening, so a concurrent overwrite fails the read instead of mixing
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
    raw = _open_raw(uri, "read")
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
    with _local_errors(local, "read"):
        nbytes = os.path.getsize(local)
    if not create_only:
        # gcsfs: one multipart request below 5 MiB, else a resumable upload in _CHUNK_SIZE chunks.
        fs, path = _target(uri, object_only=True)
        with _gcs_errors(uri, "upload to"):
            fs.put_file(local, path, chunksize=_CHUNK_SIZE, content_type=_content_type(uri))
        return
    # create_only needs ifGenerationMatch=0, which stays on the client (see the module docstring).
    from google.cloud.storage.retry import DEFAULT_RETRY

    blob = _blob(uri)
    if nbytes > _CHUNK_SIZE:
        blob.chunk_size = _CHUNK_SIZE
    # Retrying is safe: a create-only upload is guarded by ifGenerationMatch=0.
    with _gcs_errors(uri, "upload to"):
        blob.upload_from_filename(local, retry=DEFAULT_RETRY, if_generation_match=0)


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


def read_bytes_or_none(uri: str) -> bytes | None:
    """The whole content of a file/object, or None when it does not exist (one request on GCS)."""
    fs, path = _target(uri, object_only=True)
    with _errors(uri, "read"):
        try:
            return fs.cat_file(path)
        except FileNotFoundError:
            return None


def read_bytes(uri: str) -> bytes:
    """Return the whole content of a file/object."""
    fs, path = _target(uri, object_only=True)
    with _errors(uri, "read"):
        return fs.cat_file(path)


def read_text(uri: str) -> str:
    """Return the whole content of a file/object decoded as UTF-8."""
    data = read_bytes(uri)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise StorageError(f"cannot read {uri} as text: not valid UTF-8 at byte {err.start}; read it as bytes") from err


def write_bytes(uri: str, data: bytes, *, create_only: bool = False) -> None:
    """Atomically write ``data`` to ``uri`` (see :func:`open`)."""
    if is_gcs(uri) and not create_only:
        # One upload straight from memory: the object appears only when it is complete.
        fs, path = _target(uri, object_only=True)
        with _gcs_errors(uri, "upload to"):
            fs.pipe_file(path, bytes(data), chunksize=_CHUNK_SIZE, content_type=_content_type(uri))
        return
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
        # gcsfs runs its requests on one event-loop thread; these threads only
        # wait on it, so _GCS_WORKERS transfers are in flight at once.
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
    if not is_gcs(src):
        publish(src, dest)
        return
    fs, path = _target(src, object_only=True)
    dest = _local(dest)
    with _local_errors(dest, "download"):
        fd, tmp = _local_temp(dest)
        os.close(fd)
    try:
        with _gcs_errors(src, "download"):
            fs.get_file(path, tmp)
        with _local_errors(dest, "download"):
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)  # durable before the rename makes it visible
            finally:
                os.close(fd)
            _publish_local_temp(tmp, dest, False)
    finally:
        _remove_quietly(tmp)


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
    if is_gcs(uri) and not _split(uri)[1]:
        raise StorageError(f"refusing to delete the whole bucket {uri}; delete a prefix such as {uri.rstrip('/')}/run1")
    fs, path = _target(uri)
    if not is_gcs(uri):
        with _local_errors(path, "delete"):
            if os.path.islink(path):
                _remove_quietly(path)
            else:
                with contextlib.suppress(FileNotFoundError):
                    fs.rm(path, recursive=True)
        return

    def delete_one(name: str) -> None:
        # FileNotFoundError is "already gone": another deleter got there first,
        # or the bare key was never an object (the usual case for a prefix).
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(name)

    with _gcs_errors(uri, "delete"):
        names = [path] + [name for name in fs.find(path + "/") if name.startswith(path + "/")]
        # Deletes are one request each and latency-bound, so run several at once.
        with ThreadPoolExecutor(max_workers=_GCS_WORKERS) as pool:
            list(pool.map(delete_one, names))


# ------------------------------------------------------------------ conditional objects (GCS locks, on the client)


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
