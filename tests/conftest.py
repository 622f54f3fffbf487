"""Shared fixtures: the bundled Aozora mirror served by a real HTTP server, and crawl helpers."""

from __future__ import annotations

import atexit
import functools
import gzip
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from gpt2ja.crawler.mirror import MirrorServer, RecordingHandler

pytest_plugins = ["tests.conftest_gcs"]

# No network here: Prefect's telemetry would print an error line on every flow run.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# The suite's own Prefect home (its SQLite database and logs): a `make demo` or a user's flow runs beside the
# suite share nothing with it (a shared database is the one thing two ephemeral servers would contend for)
_PREFECT_HOME = tempfile.mkdtemp(prefix="gpt2ja-test-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)
# Prefect's temporary server (in `gpt2ja run`/`demo` subprocesses too) may take its time to start on a loaded machine
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "600")

REPO = Path(__file__).resolve().parent.parent
MIRROR = REPO / "examples" / "aozora-mirror"
AUTHORS = ("879", "81", "121", "74")


class TestSiteHandler(RecordingHandler):
    __test__ = False  # a handler, not a test class

    """The static handler plus the misbehaviours a crawler must survive:
    ``/slow/…`` answers after ``server.slow_seconds`` (a timeout), and
    ``/typeless/…`` serves a file with no Content-Type charset (an undeclared encoding)."""

    def do_GET(self):
        if self.path.startswith("/slow/"):
            time.sleep(self.server.slow_seconds)
        if self.path.startswith("/redirect/"):  # loop: → itself; pingpong: a ↔ b; chain/N: → chain/N+1, forever
            name = self.path[len("/redirect/") :]
            target = {"loop": "/redirect/loop", "ping": "/redirect/pong", "pong": "/redirect/ping"}.get(name)
            if target is None and name.startswith("chain/"):
                target = f"/redirect/chain/{int(name.split('/')[1]) + 1}"
            if target is not None:
                self.send_response(302)
                self.send_header("Location", target)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        if self.path == "/bomb.html":  # 64 MB of zeros, gzipped to ~64 KB: inflates past any sane limit
            body = _gzip_bomb()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.path.startswith("/typeless/"):
            path = self.translate_path(self.path)
            if os.path.isfile(path):
                with open(path, "rb") as fh:
                    body = fh.read()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
        super().do_GET()


@functools.cache
def _gzip_bomb() -> bytes:
    return gzip.compress(b"<html><body><p>" + bytes(64 * 1024 * 1024), compresslevel=9)


@pytest.fixture
def serve():
    """serve(directory) → a started MirrorServer on 127.0.0.1; stopped after the test."""
    servers = []

    def start(directory, slow_seconds: float = 5.0):
        server = MirrorServer(str(directory), handler=TestSiteHandler)
        server.httpd.slow_seconds = slow_seconds
        servers.append(server.start())
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def mirror_copy(tmp_path):
    """A private copy of the bundled mirror that a test may damage."""
    dst = tmp_path / "mirror"
    shutil.copytree(MIRROR, dst)
    return dst


def author_urls(server) -> list[str]:
    return [server.url(f"/index_pages/person{a}.html") for a in AUTHORS]
