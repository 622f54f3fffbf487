"""One small storage API over local paths and ``gs://bucket/prefix`` URIs.

Every pipeline stage reads and writes through this module, so a run works the
same on a laptop (local directories) and in the cloud (Google Cloud Storage).
It gathers two modules under one name:

* :mod:`gpt2ja.infra.fs`: the filesystem layer, on fsspec (fsspec's local
  filesystem for paths, gcsfs for ``gs://``): exists, list_files, list_sizes,
  size, file_info, open, read/write, publish, upload_dir, download_dir,
  delete; and, on the google-cloud-storage client, the generation
  preconditions the locks need (create-only writes, read_generation,
  write_if_generation, delete_if_generation).  Its docstring says why.
* :mod:`gpt2ja.infra.manifest`: manifests and fingerprints (build_manifest,
  write_manifest, read_manifest, fingerprint, code_version).

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

Set ``STORAGE_EMULATOR_HOST`` (e.g. ``http://127.0.0.1:9023``) to talk to a
local GCS emulator instead of Google.
"""

from __future__ import annotations

from gpt2ja.infra.fs import (
    MANIFEST,
    AlreadyExistsError,
    GenerationMismatch,
    StorageError,
    delete,
    delete_if_generation,
    download_dir,
    exists,
    file_info,
    is_gcs,
    join,
    list_files,
    list_sizes,
    local_path,
    open,
    publish,
    read_bytes,
    read_generation,
    read_text,
    relative_ref,
    reset_client,
    resolve_ref,
    size,
    upload_dir,
    write_bytes,
    write_if_generation,
    write_text,
)
from gpt2ja.infra.manifest import build_manifest, code_version, fingerprint, read_manifest, write_manifest

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
