"""A local stand-in for the few Hugging Face Hub endpoints that ``HfApi.create_repo`` + ``upload_folder`` call.

Found by pointing ``HF_ENDPOINT`` at a server that recorded every request
(huggingface_hub 1.x/2.x): ``POST /api/repos/create``, ``POST /api/validate-yaml``
(sent when the upload has a README.md: its metadata, checked here by
:func:`metadata_errors`, a few of the Hub's rules), ``POST
/api/models/{repo}/preupload/{revision}`` (answered "regular" for every file,
so no LFS or Xet transfer is attempted) and ``POST
/api/models/{repo}/commit/{revision}`` (NDJSON: a header line, then one
``{"key": "file", "value": {"path", "content" (base64), "encoding"}}`` line
per file). Anything else is recorded and answered 404. Bound to 127.0.0.1.

Example::

    with HubServer() as hub:
        os.environ["HF_ENDPOINT"] = hub.url
        ...
        hub.requests        # [("POST", "/api/repos/create", {...}), ...]
        hub.files           # {"config.json": b"...", ...}: what the commit uploaded
        hub.validated       # the README.md texts sent to /api/validate-yaml
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

#: the licence ids the Hub accepts that a gpt2ja export can derive (the Hub's list is longer)
HUB_LICENSES = {
    "other",
    "unknown",
    "apache-2.0",
    "mit",
    "cc0-1.0",
    "pddl",
    "cc-by-2.0",
    "cc-by-2.5",
    "cc-by-3.0",
    "cc-by-4.0",
    "cc-by-sa-3.0",
    "cc-by-sa-4.0",
    "cc-by-nc-2.0",
    "cc-by-nc-3.0",
    "cc-by-nc-4.0",
    "cc-by-nd-4.0",
    "cc-by-nc-nd-3.0",
    "cc-by-nc-nd-4.0",
    "cc-by-nc-sa-2.0",
    "cc-by-nc-sa-3.0",
    "cc-by-nc-sa-4.0",
}


def metadata_errors(readme: str) -> list[str]:
    """Some of the Hub's checks of a model card's YAML header: it parses, a known licence, ``other`` named."""
    import yaml

    m = re.match(r"^---\n(.*?)\n---\n", readme, re.S)
    if not m:
        return ["no YAML metadata header"]
    meta = yaml.safe_load(m.group(1)) or {}
    errors = []
    if meta.get("license") not in HUB_LICENSES:
        errors.append(f"license {meta.get('license')!r} is not a Hub licence id")
    if meta.get("license") == "other" and not re.fullmatch(r"[a-z0-9.-]+", str(meta.get("license_name", ""))):
        errors.append("license other needs a license_name of lowercase letters, digits, '-' and '.'")
    for key in ("language", "tags", "datasets", "metrics"):
        if key in meta and not isinstance(meta[key], (list, str)):
            errors.append(f"{key} must be a list")
    return errors


class HubServer:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, object]] = []
        self.headers: list[dict] = []
        self.files: dict[str, bytes] = {}
        self.commits: list[dict] = []
        self.validated: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    data = gzip.decompress(data)
                return data

            def _reply(self, status: int, value: object) -> None:
                body = json.dumps(value).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                hub.requests.append(("GET", self.path, None))
                hub.headers.append({k.lower(): v for k, v in self.headers.items()})
                self._reply(404, {"error": "not found"})

            def do_POST(self) -> None:
                raw = self._body()
                path = self.path.split("?")[0]
                hub.headers.append({k.lower(): v for k, v in self.headers.items()})
                if path == "/api/repos/create":
                    value = json.loads(raw)
                    hub.requests.append(("POST", path, value))
                    repo = f"{value.get('organization') or 'user'}/{value['name']}"
                    return self._reply(200, {"url": f"{hub.url}/{repo}", "name": repo})
                if path == "/api/validate-yaml":
                    value = json.loads(raw)
                    hub.requests.append(("POST", path, value))
                    hub.validated.append(value["content"])
                    errors = metadata_errors(value["content"])
                    return self._reply(
                        400 if errors else 200, {"errors": [{"message": e} for e in errors], "warnings": []}
                    )
                if "/preupload/" in path:
                    value = json.loads(raw)
                    hub.requests.append(("POST", path, value))
                    return self._reply(
                        200,
                        {
                            "files": [
                                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                for f in value["files"]
                            ]
                        },
                    )
                if "/commit/" in path:
                    lines = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
                    hub.requests.append(("POST", path, lines))
                    for line in lines:
                        if line.get("key") == "header":
                            hub.commits.append(line["value"])
                        elif line.get("key") == "file":
                            hub.files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                    repo = path.split("/api/models/", 1)[1].split("/commit/")[0]
                    return self._reply(
                        200,
                        {"commitUrl": f"{hub.url}/{repo}/commit/{'0' * 40}", "commitOid": "0" * 40, "success": True},
                    )
                hub.requests.append(("POST", path, raw[:200]))
                self._reply(404, {"error": "not found"})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "HubServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
