"""Manifests and fingerprints: what a stage built, from what, with which settings.

Every artifact directory ends with a ``_MANIFEST.json`` written last (and
atomically).  Stages never write it themselves: :func:`gpt2ja.infra.stage.run_stage`
locks the directory, verifies it, and publishes the manifest a build returns.
The files go through :mod:`gpt2ja.infra.fs`; callers reach these names as
``storage.<name>`` too (gpt2ja.infra.storage re-exports them).

Example::

    from gpt2ja.infra import storage

    files = [storage.file_info(u, root=out) for u in storage.list_files(out)]
    manifest = storage.build_manifest(
        stage="shard", config={"shard_size": 1024}, inputs=[input_manifest],
        counts={"shards": 1}, files=files, timings={"total_s": 1.2})
    storage.write_manifest(out, manifest)
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import os
import subprocess
from typing import Any

from gpt2ja.infra.fs import MANIFEST, StorageError, join, one_line, read_bytes_or_none, write_text

__all__ = [
    "MANIFEST",
    "build_manifest",
    "code_version",
    "fingerprint",
    "read_manifest",
    "write_manifest",
]


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
    data = read_bytes_or_none(uri)
    if data is None:
        return None
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StorageError(
            f"corrupt manifest {uri}: {one_line(err)}; delete it so the stage rebuilds this directory"
        ) from err
    if not isinstance(manifest, dict):
        raise StorageError(
            f"corrupt manifest {uri}: expected a JSON object, got {type(manifest).__name__}; "
            "delete it so the stage rebuilds this directory"
        )
    manifest["uri"] = dir_uri
    return manifest
