"""The demo's WARC: the bundled Aozora mirror (``examples/aozora-mirror``) as a web archive.

``configs/warc-demo.yaml`` crawls ``examples/warc/aozora-mirror.warc.gz``, made by::

    python -m gpt2ja.crawler.warc make-demo examples/warc/aozora-mirror.warc.gz

Every HTML page of the mirror (author pages and card pages in UTF-8, the XHTML
editions in Shift_JIS) becomes a ``response`` record at its site address
``http://mirror.local/…``, served as ``text/html`` with no charset, as a bare
static server would (the XHTML files declare theirs in ``<meta>``); its
``robots.txt`` is a ``text/plain`` response (dropped: ``not_html``) and one
missing author page a 404 (``http_404``). The text zips are left out (they
would only be ``not_html``). Dates and record ids are derived from the paths, so
the archive's records are the same on every run (one gzip member per record).
"""

from __future__ import annotations

import io
import os
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

MIRROR = Path(__file__).resolve().parents[2] / "examples" / "aozora-mirror"
SITE = "http://mirror.local"
DATE = datetime(2026, 1, 1, tzinfo=timezone.utc)
MISSING = "/index_pages/person0.html"


def _record_id(url: str) -> str:
    return f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, url)}>"


def mirror_pages(mirror: Path = MIRROR) -> list[tuple[str, str, bytes]]:
    """``[(url, content type, body)]`` of the mirror's HTML pages and robots.txt, in path order."""
    pages = []
    for path in sorted(p for p in mirror.rglob("*") if p.is_file()):
        rel = path.relative_to(mirror).as_posix()
        if path.suffix == ".html":
            pages.append((f"{SITE}/{rel}", "text/html", path.read_bytes()))
        elif rel == "robots.txt":
            pages.append((f"{SITE}/{rel}", "text/plain", path.read_bytes()))
    return pages


def write_warc(out: str, pages: list[tuple[str, str, bytes]], missing: list[str] = ()) -> None:
    """A gzip WARC at ``out``: a ``warcinfo`` record, then one 200 response per page and a 404 per missing URL."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    os.makedirs(os.path.dirname(os.path.abspath(out)) or ".", exist_ok=True)
    with open(out, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        info = writer.create_warcinfo_record(
            os.path.basename(out), {"software": "gpt2ja crawler.warc_demo", "description": "examples/aozora-mirror"}
        )
        info.rec_headers.replace_header("WARC-Date", DATE.strftime("%Y-%m-%dT%H:%M:%SZ"))
        info.rec_headers.replace_header("WARC-Record-ID", _record_id(f"warcinfo:{os.path.basename(out)}"))
        writer.write_record(info)
        answers = [(url, "200 OK", ctype, body) for url, ctype, body in pages]
        answers += [(url, "404 Not Found", "text/html", b"<html><body>Not Found</body></html>") for url in missing]
        for i, (url, status, ctype, body) in enumerate(answers):
            headers = StatusAndHeaders(
                status, [("Content-Type", ctype), ("Content-Length", str(len(body)))], protocol="HTTP/1.1"
            )
            date = (DATE + timedelta(seconds=i + 1)).strftime("%Y-%m-%dT%H:%M:%SZ")
            writer.write_record(
                writer.create_warc_record(
                    url,
                    "response",
                    payload=io.BytesIO(body),
                    http_headers=headers,
                    warc_headers_dict={"WARC-Date": date, "WARC-Record-ID": _record_id(url)},
                )
            )


def make_demo(out: str, mirror: Path = MIRROR) -> str:
    """Write the demo archive of ``mirror`` to ``out``; returns ``out``."""
    write_warc(out, mirror_pages(mirror), [SITE + MISSING])
    return out


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[0] != "make-demo":
        raise SystemExit("usage: python -m gpt2ja.crawler.warc make-demo OUT.warc.gz")
    make_demo(argv[1])
    print(f"wrote {argv[1]} ({os.path.getsize(argv[1]):,} bytes)", file=sys.stderr)
