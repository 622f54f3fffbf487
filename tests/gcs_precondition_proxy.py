"""An HTTP proxy that adds GCS generation preconditions in front of the emulator (uploads and deletes).

gcp-storage-emulator ignores ``ifGenerationMatch`` on uploads: an upload with
``ifGenerationMatch=0`` onto an existing object answers 200 and overwrites it
(seen with gcp-storage-emulator 2026.7.19: a second create-only write of
``gs://b1/x/a.txt`` returned 200 and the object then held the second content;
its source has no ``ifGenerationMatch`` handling at all).  Real GCS answers 412
and keeps the object, and ``storage.open(..., create_only=True)`` depends on
that.  This proxy sits between the real google-cloud-storage client and the
emulator, forwards every request unchanged, and for object uploads carrying
``ifGenerationMatch`` first asks the emulator for the object's current
generation, answering 412 in GCS's JSON error format when the condition fails.

Where the client puts the object name (checked by logging requests):

* multipart upload (files up to 8 MiB): ``POST /upload/storage/v1/b/B/o?
  uploadType=multipart&ifGenerationMatch=0`` with a ``multipart/related`` body
  whose first part is the JSON metadata holding ``"name"``;
* resumable upload (larger files): the initiating ``POST ...?uploadType=
  resumable&ifGenerationMatch=0`` has a JSON body holding ``"name"``; the
  chunks follow as ``PUT ...&upload_id=...`` (to the proxy, because the
  emulator builds the session URL from the ``Host`` header we pass through);
* media upload: ``?uploadType=media&name=...``.

Real GCS also re-checks a resumable upload's precondition when it completes;
checking at initiation is enough for these single-writer tests.
"""

from __future__ import annotations

import http.client
import json
import threading
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}
_PRECONDITION_MESSAGE = "At least one of the pre-conditions you specified did not hold."


class PreconditionProxy:
    """Forward HTTP to ``upstream`` ("http://host:port"), enforcing ifGenerationMatch on uploads.

    ``requests`` records ``(method, path)`` of everything forwarded, ``uploads``
    the object name of every upload in the order they came (one per upload,
    however many chunks), and ``rejected`` the object names answered with 412.
    Uploads of the object names in ``refused`` are answered 403, as GCS does
    without write permission.
    """

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.requests: list[tuple[str, str]] = []
        self.rejected: list[str] = []
        self.uploads: list[str] = []
        self.refused: set[str] = set()
        self.conditional = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="gcs-precondition-proxy", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "PreconditionProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # -- upstream helpers -------------------------------------------------

    def forward(self, method: str, path: str, headers: dict[str, str], body: bytes | None):
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.reason, resp.getheaders(), resp.read()
        finally:
            conn.close()

    def current_generation(self, bucket: str, name: str) -> int | None:
        """The object's generation according to the emulator, or None if absent."""
        status, _reason, _headers, body = self.forward(
            "GET", f"/storage/v1/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}", {}, None
        )
        if status == 404:
            return None
        if status != 200:
            raise RuntimeError(f"proxy: emulator answered {status} when asked about {bucket}/{name}")
        return int(json.loads(body)["generation"])

    # -- request handling --------------------------------------------------

    def _handler_class(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format, *args):  # keep pytest output clean
                pass

            def _body(self) -> bytes | None:
                length = self.headers.get("Content-Length")
                if length is not None:
                    return self.rfile.read(int(length))
                if (self.headers.get("Transfer-Encoding") or "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return None

            def _reply(self, status: int, reason: str, headers, body: bytes) -> None:
                self.send_response(status, reason)
                for key, value in headers:
                    if key.lower() not in _HOP_BY_HOP | {"content-length", "server", "date"}:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def _handle(self) -> None:
                body = self._body()
                proxy.requests.append((self.command, self.path))
                uploading = self._upload_name(body)
                if uploading is not None:
                    proxy.uploads.append(uploading)
                    if uploading in proxy.refused:
                        self._forbidden(uploading)
                        return
                if "ifGenerationMatch=" in self.path:
                    # check and write as one step, as GCS does: two racing conditional
                    # writes (lock takers) must not both see the condition hold
                    with proxy.conditional:
                        self._handle_checked(body)
                    return
                self._handle_checked(body)

            def _handle_checked(self, body: bytes | None) -> None:
                rejection = self._precondition_failure(body)
                if rejection is not None:
                    proxy.rejected.append(rejection)
                    error = {
                        "error": {
                            "code": 412,
                            "message": _PRECONDITION_MESSAGE,
                            "errors": [
                                {
                                    "message": _PRECONDITION_MESSAGE,
                                    "domain": "global",
                                    "reason": "conditionNotMet",
                                    "locationType": "header",
                                    "location": "If-Match",
                                }
                            ],
                        }
                    }
                    payload = json.dumps(error).encode()
                    self._reply(
                        412, "Precondition Failed", [("Content-Type", "application/json; charset=UTF-8")], payload
                    )
                    return
                # Host is passed through so the emulator's resumable session
                # URLs point back at the proxy.
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                if body is not None:
                    headers["Content-Length"] = str(len(body))
                self._reply(*proxy.forward(self.command, self.path, headers, body))

            def _forbidden(self, name: str) -> None:
                """GCS's answer to an upload without write permission (its JSON error format)."""
                message = f"the caller does not have storage.objects.create access to {name}"
                error = {
                    "error": {
                        "code": 403,
                        "message": message,
                        "errors": [{"message": message, "domain": "global", "reason": "forbidden"}],
                    }
                }
                self._reply(
                    403, "Forbidden", [("Content-Type", "application/json; charset=UTF-8")], json.dumps(error).encode()
                )

            def _upload_name(self, body: bytes | None) -> str | None:
                """The object name when this request starts an upload (not a resumable upload's later chunks)."""
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                segments = parts.path.split("/")
                if self.command != "POST" or segments[1:4] != ["upload", "storage", "v1"] or "upload_id" in query:
                    return None
                return self._object_name(query, body)

            def _precondition_failure(self, body: bytes | None) -> str | None:
                """Return the object name when this upload's ifGenerationMatch does not hold."""
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                segments = parts.path.split("/")
                # /upload/storage/v1/b/{bucket}/o
                is_upload = (
                    self.command == "POST"
                    and len(segments) == 7
                    and segments[1:4] == ["upload", "storage", "v1"]
                    and segments[4] == "b"
                    and segments[6] == "o"
                )
                # DELETE /storage/v1/b/{bucket}/o/{name}
                is_delete = (
                    self.command == "DELETE"
                    and len(segments) == 7
                    and segments[1:3] == ["storage", "v1"]
                    and segments[5] == "o"
                )
                if "ifGenerationMatch" not in query or "upload_id" in query or not (is_upload or is_delete):
                    return None
                expected = int(query["ifGenerationMatch"][0])
                if is_delete:
                    segments = ["", "upload", *segments[1:]]  # the bucket where an upload has it
                    name = unquote(parts.path.split("/")[6])
                else:
                    name = self._object_name(query, body)
                if name is None:
                    return None
                current = proxy.current_generation(segments[5], name)
                holds = current is None if expected == 0 else current == expected
                return None if holds else name

            def _object_name(self, query, body: bytes | None) -> str | None:
                if "name" in query:
                    return query["name"][0]
                upload_type = query.get("uploadType", [""])[0]
                if not body:
                    return None
                if upload_type == "resumable":
                    return json.loads(body).get("name")
                if upload_type == "multipart":
                    header = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
                    message = BytesParser().parsebytes(header + body)
                    first = message.get_payload()[0]
                    return json.loads(first.get_payload(decode=True)).get("name")
                return None

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        return Handler
