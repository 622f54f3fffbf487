"""Incremental crawls for a corpus refresh: which crawl runs next, and what it may skip.

The crawls of one configured crawl (``source`` + ``crawl_id``) live side by side::

    {root}/raw/{source}/{crawl_id}/                      the base crawl (what ``pipeline`` crawls)
    {root}/raw/{source}/{crawl_id}.refresh-{refresh_id}/ one per refresh: what was new then

The clean stage reads them all (:func:`corpus_inputs`). A document fetched again
by a later crawl has the same id (source + canonical URL) and is dropped there as
``duplicate_id``, the oldest fetch kept; copies under other URLs go as exact or
near duplicates. That makes any refresh correct; what makes it cheap is the
skipping below.

What a refresh crawl skips (:data:`SKIP_KNOWN_SOURCES`): for ``aozora``, every
card page that already gave a document in an earlier crawl, through
:class:`gpt2ja.crawler.dupefilter.KnownDocumentsDupeFilter`. Author pages (the start
URLs) are not documents, so they are fetched again and new cards are found;
cards that gave no document before (a timeout, a broken zip) are tried again.
``web`` is crawled in full every time: its documents are pages whose links
lead on, and skipping them would hide the pages that are new. ``files`` are
read again (local, cheap).

Example::

    plan = plan_refresh("data", "aozora", "demo", "20260105T040000Z")
    plan.crawl_id, plan.known      # ('demo.refresh-20260105T040000Z', ['data/raw/aozora/demo'])
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime, timezone

from gpt2ja.infra import storage

REFRESH_MARK = ".refresh-"
REFRESH_ID = r"^[A-Za-z0-9_-]+$"
#: Sources whose documents are leaves (nothing new is reached through them), so known ones may be skipped.
SKIP_KNOWN_SOURCES = ("aozora",)
DUPEFILTER = "gpt2ja.crawler.dupefilter.KnownDocumentsDupeFilter"


def default_refresh_id() -> str:
    """The UTC time to the second, e.g. ``20260105T040000Z`` (sorts in time order)."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


@dataclass(frozen=True)
class Crawl:
    """One crawl directory: finished when its manifest is there; ``documents`` from that manifest."""

    crawl_id: str
    uri: str
    finished: bool
    documents: int = 0
    manifest: dict | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class RefreshPlan:
    """What a refresh runs for one configured crawl.

    ``crawl_id`` is the crawl to run (the base id when no base crawl is finished yet);
    ``known`` the earlier crawls whose documents it skips; ``done`` says the crawl
    of this refresh id is already finished (nothing to run).
    """

    crawl_id: str
    base: bool
    known: list[str]
    done: bool = False
    resume: bool = False


def crawl_history(root: str, source: str, crawl_id: str) -> list[Crawl]:
    """The base crawl and its refresh crawls under ``{root}/raw/{source}``, base first, then by refresh id."""
    parent = storage.join(root, "raw", source)
    prefix = (storage.local_path(parent) or parent).rstrip("/") + "/"  # what list_files returns starts so
    ids = set()
    for uri in storage.list_files(parent):
        name = uri[len(prefix) :].split("/", 1)[0] if uri.startswith(prefix) else ""
        if name == crawl_id or name.startswith(crawl_id + REFRESH_MARK):
            ids.add(name)
    out = []
    for name in sorted(ids, key=lambda n: (n != crawl_id, n)):
        uri = storage.join(parent, name)
        manifest = storage.read_manifest(uri)
        documents = int(((manifest or {}).get("counts") or {}).get("documents", 0))
        out.append(Crawl(name, uri, manifest is not None, documents, manifest))
    return out


def plan_refresh(root: str, source: str, crawl_id: str, refresh_id: str) -> RefreshPlan:
    """Decide the crawl a refresh runs (see the module docstring); pure but for reading manifests."""
    if not re.match(REFRESH_ID, refresh_id):
        raise ValueError(
            f"refresh id {refresh_id!r}: use letters, digits, '-' and '_' only "
            "(default: the UTC time, e.g. 20260105T040000Z)"
        )
    history = crawl_history(root, source, crawl_id)
    finished = [c for c in history if c.finished]
    if not any(c.crawl_id == crawl_id for c in finished):  # no base crawl yet: this refresh makes it
        return RefreshPlan(crawl_id=crawl_id, base=True, known=[])
    known = [c.uri for c in finished if c.documents] if source in SKIP_KNOWN_SOURCES else []
    unfinished = [c for c in history if not c.finished]
    if unfinished:  # an interrupted refresh: resume it before starting another
        return RefreshPlan(crawl_id=unfinished[-1].crawl_id, base=False, known=known, resume=True)
    this = f"{crawl_id}{REFRESH_MARK}{refresh_id}"
    if any(c.crawl_id == this for c in finished):
        return RefreshPlan(crawl_id=this, base=False, known=[], done=True)
    return RefreshPlan(crawl_id=this, base=False, known=known)


def known_settings(known: list[str]) -> dict:
    """The Scrapy settings that make a crawl skip the documents of the ``known`` crawls ({} for none)."""
    return {"DUPEFILTER_CLASS": DUPEFILTER, "GPT2JA_KNOWN_CRAWLS": list(known)} if known else {}


def corpus_inputs(root: str, crawls: list[tuple[str, str]]) -> list[str]:
    """The crawl directories a clean over ``crawls`` ((source, crawl_id) pairs) reads after refreshes.

    Every finished crawl with documents: the base and each refresh. A configured
    crawl with none finished yet contributes its base URI (the clean stage then
    names it as missing).
    """
    out = []
    for source, crawl_id in crawls:
        found = [c.uri for c in crawl_history(root, source, crawl_id) if c.finished and c.documents]
        out.extend(found or [storage.join(root, "raw", source, crawl_id)])
    return out


def mirror_port(crawls: list[Crawl]) -> int | None:
    """The port the newest finished crawl served its mirror on (its start URLs record it), or None."""
    for c in reversed(crawls):
        urls = ((c.manifest or {}).get("config") or {}).get("start_urls") or []
        if c.finished and urls:
            return urllib.parse.urlsplit(urls[0]).port
    return None
