"""Behavioural tests for gpt2ja/infra/storage.py on local paths and on the GCS emulator.

Most tests take ``storage_root`` (tests/conftest_gcs.py) and so run twice: on a
local tmp dir and on ``gs://bucket/prefix`` served by gcp-storage-emulator.
Create-only on GCS is tested through tests/gcs_precondition_proxy.py because
the emulator does not enforce ``ifGenerationMatch``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re

import pytest

from gpt2ja.infra import fs, stage, storage
from gpt2ja.infra.storage import AlreadyExistsError, StorageError, join


def _one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text, f"error message spans lines: {text!r}"
    return text


# ---------------------------------------------------------------- paths


def test_join_and_is_gcs():
    assert storage.is_gcs("gs://b/p") and not storage.is_gcs("/data/p")
    assert join("gs://b/runs/", "r1", "/x.bin") == "gs://b/runs/r1/x.bin"
    assert join("gs://b", "x") == "gs://b/x"
    assert join("/data", "r1", "x.bin") == os.path.join("/data", "r1", "x.bin")
    assert storage.local_path("gs://b/x") is None
    assert storage.local_path("/data/x") == "/data/x"


# ---------------------------------------------------------------- read/write


def test_write_read_text_and_bytes(storage_root):
    text_uri = join(storage_root, "a", "hello.txt")
    storage.write_text(text_uri, "こんにちは、世界\n")
    assert storage.read_text(text_uri) == "こんにちは、世界\n"
    with storage.open(text_uri, "r") as f:
        assert f.read() == "こんにちは、世界\n"

    data = bytes(range(256)) * 10
    bin_uri = join(storage_root, "b.bin")
    storage.write_bytes(bin_uri, data)
    assert storage.read_bytes(bin_uri) == data
    with storage.open(bin_uri) as f:  # default mode is rb, streamed on GCS
        assert f.read(10) == data[:10]
        assert f.read() == data[10:]
    assert storage.size(bin_uri) == len(data)

    storage.write_bytes(bin_uri, b"replaced")  # plain writes overwrite
    assert storage.read_bytes(bin_uri) == b"replaced"


def test_exists(storage_root):
    uri = join(storage_root, "d", "x.txt")
    assert not storage.exists(uri)
    assert not storage.exists(join(storage_root, "d"))
    storage.write_text(uri, "x")
    assert storage.exists(uri)
    assert storage.exists(join(storage_root, "d"))  # a "directory" with files exists
    assert not storage.exists(join(storage_root, "d", "y.txt"))


def test_list_files_recursive_sorted(storage_root):
    assert storage.list_files(storage_root) == []
    for rel in ["b.txt", "a.txt", "sub/z.txt", "sub/deeper/y.txt"]:
        storage.write_text(join(storage_root, *rel.split("/")), rel)
    # A sibling whose name extends the prefix must not be listed.
    storage.write_text(storage_root + "-sibling.txt", "no")

    expected = [join(storage_root, *r.split("/")) for r in ["a.txt", "b.txt", "sub/deeper/y.txt", "sub/z.txt"]]
    assert storage.list_files(storage_root) == sorted(expected)
    assert storage.list_files(storage_root, recursive=False) == [
        join(storage_root, "a.txt"),
        join(storage_root, "b.txt"),
    ]
    assert storage.list_files(join(storage_root, "missing")) == []


def test_failed_write_publishes_nothing(storage_root):
    uri = join(storage_root, "atomic.bin")
    with pytest.raises(RuntimeError, match="boom"):
        with storage.open(uri, "wb") as f:
            f.write(b"half of it")
            raise RuntimeError("boom")
    assert not storage.exists(uri)
    assert storage.list_files(storage_root) == []

    # An existing file keeps its old content when a rewrite fails.
    storage.write_bytes(uri, b"old")
    with pytest.raises(RuntimeError):
        with storage.open(uri, "wb") as f:
            f.write(b"new")
            raise RuntimeError("boom")
    assert storage.read_bytes(uri) == b"old"
    if storage.local_path(storage_root):  # no temp files left beside it
        assert os.listdir(storage.local_path(storage_root)) == ["atomic.bin"]


def test_open_rejects_bad_modes(storage_root):
    with pytest.raises(ValueError):
        storage.open(join(storage_root, "x"), "a")
    with pytest.raises(ValueError):
        storage.open(join(storage_root, "x"), "rb", create_only=True)


def test_missing_file_errors_name_the_uri(storage_root):
    uri = join(storage_root, "nope.txt")
    for call in (storage.read_bytes, storage.size, storage.file_info):
        with pytest.raises(StorageError) as info:
            call(uri)
        assert uri in _one_line(info.value) and "not found" in str(info.value)
    with pytest.raises(StorageError):
        with storage.open(uri, "rb"):
            pass


def test_local_create_only(tmp_path):
    uri = str(tmp_path / "once" / "x.txt")
    storage.write_text(uri, "first", create_only=True)
    with pytest.raises(AlreadyExistsError) as info:
        storage.write_text(uri, "second", create_only=True)
    assert uri in _one_line(info.value)
    assert storage.read_text(uri) == "first"
    src = tmp_path / "src.txt"
    src.write_text("third")
    with pytest.raises(AlreadyExistsError):
        storage.publish(str(src), uri, create_only=True)
    assert storage.read_text(uri) == "first"
    assert os.listdir(tmp_path / "once") == ["x.txt"]  # the temp file is gone


def test_local_publish_permissions(tmp_path):
    # Temp files are created 0600; the published file must get the usual mode.
    uri = str(tmp_path / "mode.txt")
    storage.write_text(uri, "x")
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(uri).st_mode & 0o777 == 0o666 & ~mask


# ---------------------------------------------------------------- directories


def test_upload_download_dir_round_trip(storage_root, tmp_path):
    src = tmp_path / "src"
    files = {
        "top.txt": b"top",
        "a/one.bin": b"\x00\x01",
        "a/b/c/deep.txt": "深い".encode(),
        storage.MANIFEST: b"{}",
    }
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)

    dest = join(storage_root, "artifact")
    uploaded = storage.upload_dir(str(src), dest)
    assert uploaded == sorted(join(dest, *rel.split("/")) for rel in files)
    assert storage.list_files(dest) == uploaded

    out = tmp_path / "out"
    downloaded = storage.download_dir(dest, str(out))
    assert downloaded == sorted(str(out.joinpath(*rel.split("/"))) for rel in files)
    for rel, data in files.items():
        assert (out / rel).read_bytes() == data


def test_upload_dir_writes_manifest_last(tmp_path, monkeypatch):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for rel in ["z.bin", storage.MANIFEST, "sub/" + storage.MANIFEST, "sub/a.bin"]:
        (src / rel).write_text(rel)
    order = []
    real_publish = fs.publish
    monkeypatch.setattr(  # upload_dir lives in gpt2ja.infra.fs and calls its publish
        fs, "publish", lambda s, d, **kw: (order.append(os.path.relpath(s, src)), real_publish(s, d, **kw))
    )
    storage.upload_dir(str(src), str(tmp_path / "dest"))
    assert order == ["sub/a.bin", "z.bin", "sub/" + storage.MANIFEST, storage.MANIFEST]


def test_download_dir_of_nothing_raises(storage_root, tmp_path):
    with pytest.raises(StorageError) as info:
        storage.download_dir(join(storage_root, "missing"), str(tmp_path / "out"))
    assert join(storage_root, "missing") in _one_line(info.value)


def test_delete_prefix(storage_root):
    run1 = join(storage_root, "run1")
    for rel in ["a.txt", "sub/b.txt"]:
        storage.write_text(join(run1, *rel.split("/")), rel)
    keep = join(storage_root, "run10", "c.txt")
    storage.write_text(keep, "keep")

    storage.delete(run1)
    assert storage.list_files(run1) == []
    assert not storage.exists(run1)
    assert storage.read_text(keep) == "keep"  # run10 is not under run1

    storage.delete(run1)  # already gone: no error
    storage.delete(keep)  # a single file
    assert storage.list_files(storage_root) == []


def test_file_info(storage_root):
    data = b"gpt2ja" * 1000
    root = join(storage_root, "art")
    uri = join(root, "sub", "f.bin")
    storage.write_bytes(uri, data)
    assert storage.file_info(uri) == {"path": "f.bin", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert storage.file_info(uri, root=root)["path"] == "sub/f.bin"
    empty = join(root, "empty.bin")
    storage.write_bytes(empty, b"")
    assert storage.file_info(empty) == {"path": "empty.bin", "bytes": 0, "sha256": hashlib.sha256(b"").hexdigest()}
    assert storage.read_bytes(empty) == b"" and storage.size(empty) == 0
    with storage.open(empty) as f:
        assert f.read() == b""


# ---------------------------------------------------------------- manifests


def test_fingerprint_stable_and_sensitive():
    a = storage.fingerprint({"lr": 0.1, "layers": 12, "data": {"x": 1, "y": [1, 2]}})
    b = storage.fingerprint({"data": {"y": [1, 2], "x": 1}, "layers": 12, "lr": 0.1})
    assert a == b and re.fullmatch(r"[0-9a-f]{64}", a)
    assert storage.fingerprint({"lr": 0.2, "layers": 12, "data": {"x": 1, "y": [1, 2]}}) != a
    inp1, inp2 = {"fingerprint": "f1"}, {"fingerprint": "f2"}
    assert storage.fingerprint({"k": 1}, [inp1]) != storage.fingerprint({"k": 1}, [inp2])
    assert storage.fingerprint({"k": 1}, [inp1]) != storage.fingerprint({"k": 1})
    with pytest.raises(StorageError):
        storage.fingerprint({"k": 1}, [None])


def test_code_version():
    import gpt2ja

    version = storage.code_version()
    assert re.fullmatch(re.escape(gpt2ja.__version__) + r"(\+g[0-9a-f]{4,40})?", version), version


def test_manifest_write_read_verify(storage_root):
    upstream = join(storage_root, "tokenized")
    assert storage.read_manifest(upstream) is None
    up_config = {"vocab": 32000}
    up_manifest = storage.build_manifest(
        stage="tokenize", config=up_config, counts={"docs": 3}, files=[], timings={"total_s": 0.5}
    )
    assert storage.write_manifest(upstream, up_manifest) == join(upstream, storage.MANIFEST)
    up_read = storage.read_manifest(upstream)
    assert up_read["uri"] == upstream
    assert {k: v for k, v in up_read.items() if k != "uri"} == up_manifest

    out = join(storage_root, "shards")
    config = {"shard_size": 1024, "seed": 0}
    fp = storage.fingerprint(config, [up_read])
    assert stage.verify(out, fp)[1]  # nothing there yet

    storage.write_bytes(join(out, "shard-0.bin"), b"\x01\x02")
    assert stage.verify(out, fp)[1]  # files but no manifest: partial
    files = [storage.file_info(u, root=out) for u in storage.list_files(out)]
    manifest = storage.build_manifest(
        stage="shard",
        config=config,
        inputs=[up_read],
        counts={"shards": 1},
        files=files,
        timings={"total_s": 1.0},
        extra={"notes": "テスト"},
    )
    assert manifest["fingerprint"] == fp
    assert manifest["inputs"] == [{"uri": upstream, "fingerprint": up_manifest["fingerprint"]}]
    assert manifest["code_version"] == storage.code_version()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", manifest["created_at"])
    storage.write_manifest(out, manifest)

    assert stage.verify(out, fp)[1] == []
    assert stage.verify(out, storage.fingerprint({**config, "seed": 1}, [up_read]))[1]
    assert storage.read_manifest(out)["notes"] == "テスト"
    with pytest.raises(ValueError):
        storage.build_manifest(stage="x", config={}, counts={}, files=[], timings={}, extra={"stage": "y"})


def test_corrupt_manifest_names_the_file(storage_root):
    d = join(storage_root, "broken")
    storage.write_text(join(d, storage.MANIFEST), '{"stage": "shard", ')
    with pytest.raises(StorageError) as info:
        storage.read_manifest(d)
    assert join(d, storage.MANIFEST) in _one_line(info.value)
    with pytest.raises(StorageError):
        stage.verify(d, "whatever")
    storage.write_text(join(d, storage.MANIFEST), "[1, 2]")
    with pytest.raises(StorageError, match="expected a JSON object"):
        storage.read_manifest(d)


# ---------------------------------------------------------------- GCS specifics


def test_emulator_ignores_generation_preconditions(gcs_emulator):
    # Why the proxy exists: the emulator answers 200 to ifGenerationMatch=0
    # uploads onto existing objects and overwrites them.
    uri = f"gs://{gcs_emulator.bucket}/emulator-precondition-probe.txt"
    storage.write_text(uri, "first")
    try:
        storage.write_text(uri, "second", create_only=True)
    except AlreadyExistsError:
        pytest.skip("gcp-storage-emulator now enforces ifGenerationMatch; tests/gcs_precondition_proxy.py can go")
    assert storage.read_text(uri) == "second"


def test_gcs_create_only_multipart(gcs_proxy_root, gcs_precondition_proxy):
    uri = join(gcs_proxy_root, "once.txt")
    storage.write_text(uri, "first", create_only=True)
    with pytest.raises(AlreadyExistsError) as info:
        storage.write_text(uri, "second", create_only=True)
    assert uri in _one_line(info.value)
    assert storage.read_text(uri) == "first"
    assert gcs_precondition_proxy.rejected == [uri.split("/", 3)[3]]
    assert any("uploadType=multipart" in path for _m, path in gcs_precondition_proxy.requests)

    storage.write_text(uri, "overwrite")  # without create_only the object is replaced
    assert storage.read_text(uri) == "overwrite"


def test_gcs_create_only_resumable(gcs_proxy_root, gcs_precondition_proxy, monkeypatch, tmp_path):
    # Files above 8 MiB go through a resumable upload; with a 4 MiB chunk size
    # this one takes three chunked PUTs through the proxy.
    monkeypatch.setattr(fs, "_CHUNK_SIZE", 4 * 1024 * 1024)
    big = tmp_path / "big.bin"
    first = os.urandom(1024) * (9 * 1024)
    big.write_bytes(first)
    uri = join(gcs_proxy_root, "big.bin")

    storage.publish(str(big), uri, create_only=True)
    big.write_bytes(b"\xff" * len(first))
    with pytest.raises(AlreadyExistsError):
        storage.publish(str(big), uri, create_only=True)
    assert storage.file_info(uri)["sha256"] == hashlib.sha256(first).hexdigest()
    posts = [p for m, p in gcs_precondition_proxy.requests if m == "POST" and "uploadType=resumable" in p]
    chunks = [p for m, p in gcs_precondition_proxy.requests if m == "PUT" and "upload_id=" in p]
    assert len(posts) == 2 and len(chunks) == 3


def test_gcs_upload_dir_create_only(gcs_proxy_root, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text("a")
    (src / storage.MANIFEST).write_text("{}")
    storage.upload_dir(str(src), gcs_proxy_root, create_only=True)
    with pytest.raises(AlreadyExistsError):
        storage.upload_dir(str(src), gcs_proxy_root, create_only=True)


def test_gcs_uri_errors(gcs_emulator):
    with pytest.raises(StorageError, match="names a bucket"):
        storage.read_bytes(f"gs://{gcs_emulator.bucket}")
    with pytest.raises(StorageError, match="refusing to delete the whole bucket"):
        storage.delete(f"gs://{gcs_emulator.bucket}/")
    with pytest.raises(StorageError) as info:
        storage.read_bytes("gs://no-such-bucket-gpt2ja/x.txt")
    assert "gs://no-such-bucket-gpt2ja/x.txt" in _one_line(info.value)


def test_gcs_client_follows_emulator_env(gcs_emulator, monkeypatch):
    client = fs._gcs_client()
    assert fs._gcs_client() is client  # cached
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "other-project")
    other = fs._gcs_client()
    assert other is not client and other.project == "other-project"
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT")
    assert fs._gcs_client().project == "gpt2ja-test"


def test_manifest_json_is_readable(storage_root):
    d = join(storage_root, "m")
    storage.write_manifest(d, {"stage": "x", "fingerprint": "f", "名前": "値"})
    text = storage.read_text(join(d, storage.MANIFEST))
    assert "名前" in text and text.endswith("\n")  # UTF-8, not \u escapes
    assert json.loads(text)["stage"] == "x"


@pytest.mark.parametrize(
    "exc_name, expected",
    [
        ("Forbidden", "gcloud auth application-default login"),
        ("Unauthorized", "GOOGLE_APPLICATION_CREDENTIALS"),
        ("NotFound", "check the bucket and prefix"),
        ("PreconditionFailed", "already exists"),
        ("ServiceUnavailable", "retry later"),
    ],
)
def test_gcs_error_messages(exc_name, expected):
    # Real GCS answers these; the emulator never does (it has no auth).
    from google.api_core import exceptions as gexc

    uri = "gs://bucket/run/x.bin"
    with pytest.raises(StorageError) as info:
        with fs._gcs_errors(uri, "read"):
            raise getattr(gexc, exc_name)("multi\nline server text")
    assert uri in _one_line(info.value) and expected in str(info.value)
    assert isinstance(info.value, AlreadyExistsError) == (exc_name == "PreconditionFailed")


def test_an_emulator_that_does_not_answer_is_one_quick_line(monkeypatch):
    """STORAGE_EMULATOR_HOST at a closed port: one StorageError naming it, not minutes of retries."""
    from tests.net import free_port

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{free_port()}")
    storage.reset_client()
    try:
        with pytest.raises(storage.StorageError, match="cannot reach the GCS emulator") as err:
            storage.read_manifest("gs://bucket/prefix")
        assert "\n" not in str(err.value)  # checked before the client's own retries (about 2 minutes) begin
    finally:
        monkeypatch.undo()
        storage.reset_client()


# ---------------------------------------------------------------- the fsspec layer (gpt2ja/infra/fs.py)


def test_storage_names_are_the_fs_and_manifest_ones():
    from gpt2ja.infra import manifest

    for name in storage.__all__:
        source = manifest if name in manifest.__all__ and name != "MANIFEST" else fs
        assert getattr(storage, name) is getattr(source, name), name


def test_modules_import_in_any_order_without_a_cycle():
    # manifest imports fs, storage imports both, fs imports neither: each works as the first import.
    import subprocess
    import sys

    for first in ("gpt2ja.infra.manifest", "gpt2ja.infra.fs", "gpt2ja.infra.storage"):
        code = f"import {first}; from gpt2ja.infra import storage; storage.read_manifest"
        subprocess.run([sys.executable, "-c", code], check=True)


def test_gcs_filesystem_follows_emulator_env(gcs_emulator, monkeypatch):
    from gcsfs.core import GCSFileSystem
    from gcsfs.extended_gcsfs import ExtendedGcsFileSystem

    filesystem = fs._gcs_filesystem()
    assert fs._gcs_filesystem() is filesystem  # cached
    # The plain JSON-API filesystem (the extended one asks a gRPC API the emulator lacks), anonymous, uncached listings.
    assert type(filesystem) is GCSFileSystem and not isinstance(filesystem, ExtendedGcsFileSystem)
    assert filesystem._location == gcs_emulator.host
    assert filesystem.credentials.token == "anon" and not filesystem.dircache.use_listings_cache
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "other-project")
    other = fs._gcs_filesystem()
    assert other is not filesystem and other.project == "other-project"
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT")
    assert fs._gcs_filesystem().project == "gpt2ja-test"


def _gcsfs_error(kind: str) -> BaseException:
    import aiohttp
    from gcsfs.retry import HttpError

    return {
        # what gcsfs.retry.validate_response raises for each status
        "403": OSError("Forbidden: http://host/upload/storage/v1/b/bucket/o\nthe caller does not have access"),
        "401": HttpError({"code": 401, "message": "Invalid Credentials"}),
        "404": FileNotFoundError("http://host/download/storage/v1/b/bucket/o/run%2Fx.bin?alt=media"),
        "412": FileExistsError("http://host/upload/storage/v1/b/bucket/o"),
        "503": HttpError({"code": 503, "message": "Service Unavailable\nplease retry"}),
        "network": aiohttp.ClientConnectionError("Cannot connect to host storage.googleapis.com:443"),
    }[kind]


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("403", "gcloud auth application-default login"),
        ("401", "permission denied"),
        ("404", "check the bucket and prefix"),
        ("412", "already exists"),
        ("503", "retry later"),
        ("network", "check the network or STORAGE_EMULATOR_HOST"),
    ],
)
def test_gcsfs_error_messages(kind, expected):
    uri = "gs://bucket/run/x.bin"
    with pytest.raises(StorageError) as info:
        with fs._gcs_errors(uri, "read"):
            raise _gcsfs_error(kind)
    assert uri in _one_line(info.value) and expected in str(info.value)
    assert isinstance(info.value, AlreadyExistsError) == (kind == "412")


def test_gcsfs_bugs_are_not_storage_errors():
    with pytest.raises(KeyError):
        with fs._gcs_errors("gs://bucket/x", "read"):
            raise KeyError("size")


def test_gcs_upload_refused_is_one_line(gcs_proxy_root, gcs_precondition_proxy, tmp_path):
    uri = join(gcs_proxy_root, "refused.bin")
    gcs_precondition_proxy.refused.add(uri.split("/", 3)[3])
    src = tmp_path / "refused.bin"
    src.write_bytes(b"x")
    for write in (lambda: storage.write_bytes(uri, b"x"), lambda: storage.publish(str(src), uri)):
        with pytest.raises(StorageError) as info:
            write()
        assert uri in _one_line(info.value) and "permission denied" in str(info.value)
    assert not storage.exists(uri)


def test_gcs_bucket_exists(gcs_emulator):
    assert storage.exists(f"gs://{gcs_emulator.bucket}")
    assert not storage.exists("gs://no-such-bucket-gpt2ja")
    assert storage.list_files("gs://no-such-bucket-gpt2ja/x") == []


def test_gcs_content_type_from_the_name(gcs_emulator):
    root = f"gs://{gcs_emulator.bucket}/content-type"
    storage.write_text(join(root, "m.json"), "{}")
    storage.write_bytes(join(root, "d.jsonl.gz"), b"\x1f\x8b")
    filesystem = fs._gcs_filesystem()
    assert filesystem.info(f"{gcs_emulator.bucket}/content-type/m.json")["contentType"] == "application/json"
    assert (
        filesystem.info(f"{gcs_emulator.bucket}/content-type/d.jsonl.gz")["contentType"] == "application/octet-stream"
    )
    storage.delete(root)


def test_gcs_reads_stream_in_blocks_and_large_uploads_resume(
    gcs_proxy_root, gcs_precondition_proxy, monkeypatch, tmp_path
):
    # 6 MiB: above gcsfs's 5 MiB simple-upload limit, so publish makes a resumable upload in 1 MiB chunks;
    # reading it back streams 1 MiB blocks, one ranged GET each.
    monkeypatch.setattr(fs, "_CHUNK_SIZE", 1024 * 1024)
    data = os.urandom(1024) * (6 * 1024)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    uri = join(gcs_proxy_root, "big.bin")
    storage.publish(str(src), uri)
    resumable = [p for m, p in gcs_precondition_proxy.requests if m == "POST" and "uploadType=resumable" in p]
    chunks = [p for p in resumable if "upload_id=" in p]  # gcsfs POSTs its chunks to the session URL
    assert len(resumable) - len(chunks) == 1 and len(chunks) == 6
    assert storage.size(uri) == len(data)

    gcs_precondition_proxy.requests.clear()
    with storage.open(uri) as f:
        head = f.read(10)
        rest = b"".join(iter(lambda: f.read(1024 * 1024), b""))
    assert head + rest == data
    media = [p for m, p in gcs_precondition_proxy.requests if m == "GET" and "alt=media" in p]
    assert len(media) >= 6 and all("generation=" in p for p in media)  # pinned to the generation it opened
    assert storage.file_info(uri)["sha256"] == hashlib.sha256(data).hexdigest()


def test_local_listing_skips_temp_and_lock_files(tmp_path):
    root = tmp_path / "art"
    (root / "sub").mkdir(parents=True)
    (root / "a.bin").write_bytes(b"aa")
    (root / "sub" / ".a.bin.x1.tmp").write_bytes(b"in flight")
    (root / ".out.lock").write_bytes(b"")
    (root / "sub" / "b.bin").write_bytes(b"b")
    os.symlink(root / "a.bin", root / "link.bin")
    assert storage.list_sizes(str(root)) == {
        str(root / "a.bin"): 2,
        str(root / "link.bin"): 2,
        str(root / "sub" / "b.bin"): 1,
    }
    assert storage.list_files(str(root), recursive=False) == [str(root / "a.bin"), str(root / "link.bin")]
    assert storage.list_files(str(root / "a.bin")) == []  # a file is not a directory


def test_local_relative_paths_stay_relative(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage.write_text(os.path.join("rel", "x.txt"), "x")
    assert storage.list_files("rel") == [os.path.join("rel", "x.txt")]
    assert storage.read_text(os.path.join("rel", "x.txt")) == "x"
    storage.delete("rel")
    assert not storage.exists("rel")


def test_no_credentials_is_one_line_with_the_fix(monkeypatch, tmp_path):
    """Without the emulator and without Application Default Credentials: one StorageError saying how to log in."""
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-such-key.json"))
    storage.reset_client()
    try:
        for call in (lambda: storage.read_bytes("gs://bucket/x"), lambda: storage.read_generation("gs://bucket/x")):
            with pytest.raises(StorageError, match="gcloud auth application-default login") as info:
                call()
            _one_line(info.value)
    finally:
        monkeypatch.undo()
        storage.reset_client()
