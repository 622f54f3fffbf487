"""The one record that travels from the crawler to the tokenizer.

A :class:`Document` is written as one JSON object per line in gzip-compressed
JSON Lines shards (``part-00000.jsonl.gz``). Stages add keys to ``meta``; they
never change the meaning of a field.

Example::

    >>> doc = Document.new(source="aozora", url="https://www.aozora.gr.jp/cards/000879/card127.html",
    ...                    title="羅生門", author="芥川 竜之介", text="ある日の暮方の事である。")
    >>> doc.id == document_id("aozora", "https://www.aozora.gr.jp/cards/000879/card127.html")
    True
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit, urlunsplit

FIELDS = ("id", "source", "url", "title", "author", "text", "license", "fetched_at", "meta")


def canonical_url(url: str) -> str:
    """The URL a document is known by: scheme and host lower-cased, fragment dropped,
    default ports removed. Query strings are kept (they can select content)."""
    parts = urlsplit(url.strip())
    if not parts.scheme:  # a local path
        return url.strip()
    host = (parts.hostname or "").lower()
    port = parts.port
    if port and not ((parts.scheme == "http" and port == 80) or (parts.scheme == "https" and port == 443)):
        host = f"{host}:{port}"
    path = parts.path or "/"
    return urlunsplit((parts.scheme.lower(), host, path, parts.query, ""))


def document_id(source: str, url_or_path: str) -> str:
    """Stable id: the first 16 bytes of sha256(source + NUL + canonical URL), hex."""
    key = f"{source}\0{canonical_url(url_or_path)}".encode("utf-8")
    return hashlib.sha256(key).hexdigest()[:32]


def utc_now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass
class Document:
    """One text with its provenance.

    ``text`` is UTF-8 with LF line endings; ``license`` is a short note or URL;
    ``fetched_at`` is an ISO-8601 UTC timestamp; ``meta`` is a free dict.
    """

    id: str
    source: str
    url: str
    title: str = ""
    author: str = ""
    text: str = ""
    license: str = ""
    fetched_at: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def new(cls, *, source: str, url: str, text: str, **kwargs: Any) -> "Document":
        """A Document whose id is derived from ``source`` and ``url`` (see :func:`document_id`)."""
        kwargs.setdefault("fetched_at", utc_now())
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        return cls(id=document_id(source, url), source=source, url=url, text=text, **kwargs)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Document":
        missing = [k for k in ("id", "source", "url", "text") if k not in data]
        if missing:
            raise ValueError(f"not a Document record: missing {', '.join(missing)}")
        known = {k: data[k] for k in FIELDS if k in data}
        known.setdefault("meta", {})
        return cls(**known)

    @classmethod
    def from_json(cls, line: str) -> "Document":
        return cls.from_dict(json.loads(line))
