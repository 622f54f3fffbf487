"""Pytest plugin: a real GCS emulator for storage tests.

Registered from tests/conftest.py with ``pytest_plugins = ["tests.conftest_gcs"]``.

Fixtures:

* ``gcs_emulator`` (session): starts ``python -m gcp_storage_emulator start``
  the way a user would, on a free port, in memory, with a default bucket, and
  points ``STORAGE_EMULATOR_HOST`` at it for the rest of the session.
* ``storage_root``: parametrized over a local tmp dir and a fresh
  ``gs://bucket/prefix`` on the emulator, so one test covers both backends.
* ``gcs_precondition_proxy`` / ``gcs_proxy_root``: the emulator behind
  tests/gcs_precondition_proxy.py, which enforces ``ifGenerationMatch`` like
  real GCS (the emulator does not).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from tests.gcs_precondition_proxy import PreconditionProxy
from tests.net import free_port

BUCKET = "gpt2ja-test-bucket"
_START_TIMEOUT_S = 30.0


def _wait_for_port(port: int, proc: subprocess.Popen, log_path: str) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(log_path, encoding="utf-8", errors="replace") as f:
                log = f.read()[-2000:]
            raise RuntimeError(f"gcp_storage_emulator exited with code {proc.returncode}:\n{log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)  # waiting for the port is the only sleep
    raise RuntimeError(f"gcp_storage_emulator did not open port {port} within {_START_TIMEOUT_S:.0f}s")


class Emulator:
    def __init__(self, host: str, bucket: str) -> None:
        self.host = host  # the value of STORAGE_EMULATOR_HOST
        self.bucket = bucket


@pytest.fixture(scope="session")
def gcs_emulator():
    """A running gcp-storage-emulator; STORAGE_EMULATOR_HOST points at it."""
    pytest.importorskip("gcp_storage_emulator", reason="install the dev extras: pip install -e '.[dev]'")
    from gpt2ja.infra import storage

    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="gcs-emulator-", suffix=".log", delete=False)
    cmd = [
        sys.executable,
        "-m",
        "gcp_storage_emulator",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--in-memory",
        "--default-bucket",
        BUCKET,
    ]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, proc, log.name)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
            # Never route emulator traffic through a configured HTTP proxy.
            mp.setenv("NO_PROXY", ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1", "localhost"])))
            storage.reset_client()
            yield Emulator(f"http://127.0.0.1:{port}", BUCKET)
        storage.reset_client()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        os.unlink(log.name)


@pytest.fixture(params=["local", "gcs"])
def storage_root(request, tmp_path):
    """A fresh empty root: a local directory, or ``gs://bucket/<unique prefix>`` on the emulator."""
    if request.param == "local":
        yield str(tmp_path / "root")
        return
    emulator = request.getfixturevalue("gcs_emulator")
    # One bucket for the session; a unique prefix per test keeps tests independent.
    yield f"gs://{emulator.bucket}/t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def gcs_precondition_proxy(gcs_emulator):
    """A PreconditionProxy in front of the session's emulator."""
    proxy = PreconditionProxy(gcs_emulator.host).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def gcs_proxy_root(gcs_emulator, gcs_precondition_proxy, monkeypatch):
    """``gs://bucket/<unique prefix>`` reached through the precondition-enforcing proxy."""
    from gpt2ja.infra import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_precondition_proxy.url)
    gcs_precondition_proxy.requests.clear()
    gcs_precondition_proxy.rejected.clear()
    gcs_precondition_proxy.uploads.clear()
    gcs_precondition_proxy.refused.clear()
    # The client cache is keyed on STORAGE_EMULATOR_HOST, so the next call
    # builds a client for the proxy and, after monkeypatch undoes the change,
    # one for the emulator again.
    yield f"gs://{gcs_emulator.bucket}/p-{uuid.uuid4().hex[:12]}"
    storage.reset_client()
