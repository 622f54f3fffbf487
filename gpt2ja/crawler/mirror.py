"""Serve a local mirror (a directory laid out like the site) on 127.0.0.1.

Used by ``make demo`` for the bundled Aozora slice, by the tests (a real HTTP
server for a real crawl), and by the crawl benchmark. Every request is recorded
(path, status, time) so tests can check what the crawler fetched.

Example::

    with MirrorServer("examples/aozora-mirror") as server:
        print(server.url("/index_pages/person879.html"))
"""

from __future__ import annotations

import functools
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer


class RecordingHandler(SimpleHTTPRequestHandler):
    """A static-file handler that records each request and stays quiet on stderr."""

    extensions_map = {
        **SimpleHTTPRequestHandler.extensions_map,
        ".zip": "application/zip",
        ".html": "text/html",
        ".txt": "text/plain",
    }

    def log_request(self, code="-", size="-"):
        self.server.requests.append((self.path, int(code) if str(code).isdigit() else code, time.monotonic()))

    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        pass


class MirrorServer:
    """A threaded static HTTP server on 127.0.0.1 (a free port unless one is given)."""

    def __init__(self, directory: str, port: int = 0, handler: type[SimpleHTTPRequestHandler] = RecordingHandler):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), functools.partial(handler, directory=directory))
        self.httpd.daemon_threads = True
        self.httpd.requests = []
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def requests(self) -> list[tuple[str, int, float]]:
        """(path, status, monotonic time) of every request served so far."""
        return self.httpd.requests

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> "MirrorServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "MirrorServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
