"""Crawl extensions: a progress line while the crawl runs, and the artifact
manifest when it ends."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time

from scrapy import signals
from scrapy.http.request import NO_CALLBACK
from twisted.internet import task

from gpt2ja import __version__
from gpt2ja.corpus.document import utc_now
from gpt2ja.corpus.jsonl import list_parts, read_documents
from gpt2ja.crawler import accounting
from gpt2ja.crawler.warc_writer import WarcFiles, from_scrapy
from gpt2ja.infra import storage

logger = logging.getLogger("gpt2ja.crawl")


class ProgressLine:
    """The crawl's one status line: pages, documents, drops and the page rate.

    On a terminal (:func:`gpt2ja.infra.progress.mode` says ``bar``) it is one live line,
    redrawn in place; elsewhere a plain line every ``GPT2JA_PROGRESS_INTERVAL``
    seconds (``crawl aozora: 403 pages, 12 docs, 373 dropped, 121.0 pages/s``;
    :func:`gpt2ja.crawler.runner.crawl_in_subprocess` echoes those). An interval of 0,
    or ``GPT2JA_PROGRESS=0``, turns both off. At the end, always: the last line
    with the drops by reason, and where the log with every drop is.
    """

    def __init__(self, crawler, interval: float):
        self.crawler = crawler
        self.interval = interval
        self.log_file = crawler.settings.get("LOG_FILE")
        self.started = time.monotonic()
        self.loop: task.LoopingCall | None = None
        self.live = None  # the gpt2ja.infra.progress context while a live line is shown
        self.bar = None
        crawler.signals.connect(self.opened, signal=signals.spider_opened)
        crawler.signals.connect(self.closed, signal=signals.spider_closed)

    @classmethod
    def from_crawler(cls, crawler):
        return cls(crawler, crawler.settings.getfloat("GPT2JA_PROGRESS_INTERVAL", 10.0))

    def opened(self, spider):
        from gpt2ja.infra.progress import mode, progress

        self.started = time.monotonic()
        how = mode() if self.interval > 0 else "off"
        if how == "bar":
            self.live = progress(None, f"crawl {spider.name}", "pages")
            self.bar = self.live.__enter__()
            self.loop = task.LoopingCall(self.refresh)
            self.loop.start(0.25, now=True)
        elif how == "plain":
            self.loop = task.LoopingCall(self.report, spider)
            self.loop.start(self.interval, now=False)

    def counts(self) -> tuple[int, int, dict[str, int]]:
        stats = self.crawler.stats.get_stats()
        return (stats.get("response_received_count", 0), stats.get("item_scraped_count", 0), accounting.drops(stats))

    def line(self, spider) -> str:
        pages, docs, drops = self.counts()
        rate = pages / max(time.monotonic() - self.started, 1e-9)
        return f"crawl {spider.name}: {pages} pages, {docs} docs, {sum(drops.values())} dropped, {rate:.1f} pages/s"

    def refresh(self):
        pages, docs, drops = self.counts()
        self.bar.update(pages, info=f"{docs:,} docs, {sum(drops.values()):,} dropped")

    def report(self, spider):
        print(self.line(spider), file=sys.stderr, flush=True)

    def closed(self, spider, reason):
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        if self.live is not None:
            self.refresh()
            self.live.__exit__(None, None, None)
            self.live = None
        _, _, drops = self.counts()
        by_reason = ", ".join(f"{k} {v:,}" for k, v in sorted(drops.items(), key=lambda kv: (-kv[1], kv[0])))
        print(self.line(spider) + f" (closed: {reason})", file=sys.stderr, flush=True)
        if by_reason:
            print(f"crawl {spider.name}: dropped by reason: {by_reason}", file=sys.stderr, flush=True)
        if self.log_file:
            print(
                f"crawl {spider.name}: log (every drop, Scrapy's messages): {self.log_file}",
                file=sys.stderr,
                flush=True,
            )


class WarcArchive:
    """Stores the raw responses of the crawl as WARC files beside its documents (``GPT2JA_WARC``).

    What is stored: every 2xx response that Scrapy hands to a spider callback,
    caught on ``response_received``, which fires before the spider parses the
    response (so a stored document's responses are always on disk first). Not
    stored: robots.txt (Scrapy's own request, no callback), 4xx/5xx (they go to
    errbacks), 3xx (followed; the final response records the chain). The files,
    their layout and crash safety: :mod:`gpt2ja.crawler.warc_writer`. A URL already in
    the crawl's files is not stored twice (logged as ``already stored``; not a
    manifest count, since only a crawl resumed after a kill fetches again). A
    failure to write stops the crawl (no manifest): a WARC with holes would be a
    manifest that lies.
    """

    def __init__(self, crawler):
        from scrapy.exceptions import NotConfigured

        settings = crawler.settings
        if not settings.getbool("GPT2JA_WARC") or not settings.get("GPT2JA_OUT") or not settings.get("GPT2JA_STATE"):
            raise NotConfigured
        self.crawler = crawler
        self.alias = settings.getdict("GPT2JA_URL_ALIAS")
        prefix = settings.get("GPT2JA_WARC_PREFIX") or "crawl"
        info = {
            "software": f"gpt2ja-crawler/{__version__} (Scrapy, warcio)",
            "isPartOf": prefix,
            "robots": "obey" if settings.getbool("ROBOTSTXT_OBEY") else "ignore",
            "http-header-user-agent": settings.get("USER_AGENT") or "",
            "description": "every 2xx response handed to a spider callback; bodies as Scrapy received them "
            "(transfer and content codings undone, Content-Length the stored length)",
        }
        self.files = WarcFiles(
            settings.get("GPT2JA_OUT"),
            os.path.join(settings.get("GPT2JA_STATE"), "warc"),
            prefix,
            info=info,
            max_file_bytes=settings.getint("GPT2JA_WARC_FILE_BYTES"),
            max_record_bytes=settings.getint("DOWNLOAD_MAXSIZE") or (1 << 62),
        )
        self.failed: str | None = None
        self.closed_files: list[str] | None = None
        crawler.signals.connect(self.opened, signal=signals.spider_opened)
        crawler.signals.connect(self.received, signal=signals.response_received)
        crawler.signals.connect(self.closed, signal=signals.spider_closed)

    @classmethod
    def from_crawler(cls, crawler):
        return cls(crawler)

    def opened(self, spider):
        try:
            self.files.open()
        except (OSError, storage.StorageError) as exc:
            self._fail(
                f"cannot read the crawl's WARC files in {self.files.folder} ({exc}); check that folder "
                f"and {self.files.state_dir}, then rerun the same command"
            )
            return
        for note in self.files.notes:
            logger.warning("warc: %s", note)
        if self.files.published or self.files.stored:
            logger.info(
                "warc: %d responses already stored in %d file(s) by earlier sessions",
                len(self.files.stored),
                len(self.files.published),
            )

    def received(self, response, request, spider):
        if self.failed or request.callback is NO_CALLBACK or not 200 <= response.status < 300:
            return
        try:
            why = self.files.add(from_scrapy(response, request, utc_now(), self.alias))
        except (OSError, storage.StorageError) as exc:
            self._fail(
                f"cannot store {response.url} in the crawl's WARC file ({exc}); free disk space (or fix "
                f"{self.files.state_dir}) and rerun the same command: the crawl resumes"
            )
            return
        if why == "already_stored":
            self.crawler.stats.inc_value("gpt2ja/warc/already_stored")
        elif why is not None:
            self.crawler.stats.inc_value(WARC_NOT_STORED + why)
            logger.warning("warc: not stored (%s): %s", why, response.url)

    def _fail(self, message: str, stop: bool = True) -> None:
        """Log the failure and stop the crawl; the runner then forgets its JOBDIR, so the rerun fetches
        again what this session fetched and could not store (what is stored is not stored twice)."""
        self.failed = FAILED[self.files.out_uri] = message
        logger.error("warc: %s", message)
        if not stop:
            return
        engine = self.crawler.engine
        if hasattr(engine, "close_spider_async"):  # Scrapy >= 2.14
            from scrapy.utils.defer import deferred_from_coro

            deferred_from_coro(engine.close_spider_async(reason="warc_error"))
        else:
            engine.close_spider(self.crawler.spider, "warc_error")

    def close(self) -> list[str]:
        """Publish the file being filled; every WARC file of the crawl (idempotent)."""
        if self.closed_files is None:
            self.closed_files = []
            try:
                self.closed_files = [] if self.failed else self.files.close()
            except (OSError, storage.StorageError) as exc:  # the file stays in the state dir: the rerun publishes it
                self._fail(
                    f"cannot publish the WARC file to {self.files.folder} ({exc}); check that folder, then "
                    "rerun the same command",
                    stop=False,
                )
            already = self.crawler.stats.get_value("gpt2ja/warc/already_stored", 0)
            if already:
                logger.info("warc: %d responses fetched again were already stored (a resumed crawl)", already)
        return self.closed_files

    def closed(self, spider, reason):
        self.close()


def _warc_archive(crawler) -> WarcArchive | None:
    extensions = getattr(crawler, "extensions", None)
    return next((m for m in getattr(extensions, "middlewares", ()) if isinstance(m, WarcArchive)), None)


#: stats key prefix of responses the WARC did not store, by reason (``too_large``)
WARC_NOT_STORED = "gpt2ja/warc_not_stored/"
#: the manifest of each crawl that finished in this process, by output URI (a crawl runs once per process)
FINISHED: dict[str, dict] = {}
#: why a crawl that ended failed (nothing reachable), by output URI
FAILED: dict[str, str] = {}
#: close reasons of a complete crawl: the end of the frontier, or the --max-pages bound
COMPLETE = ("finished", "closespider_pagecount")
#: a file in the crawl's state dir while a session runs: found at the start of the next, the last one was killed
RUNNING = "session.running"


class CrawlManifest:
    """Counts what the crawl keeps and drops; makes the manifest when the crawl is complete.

    A crawl can take several sessions (interrupted, then resumed from its JOBDIR).
    Each session's counts are saved in the crawl's state directory; when a
    session ends with reason ``finished`` the manifest sums them all and is
    written last, atomically. An interrupted session writes no manifest, so
    the output stays marked as partial until the crawl is resumed to its end.
    """

    def __init__(self, crawler):
        self.crawler = crawler
        settings = crawler.settings
        self.out_uri = settings.get("GPT2JA_OUT")
        self.state_dir = settings.get("GPT2JA_STATE")
        self.config = settings.getdict("GPT2JA_CONFIG")
        self.started = time.time()
        crawler.signals.connect(self.item_scraped, signal=signals.item_scraped)
        crawler.signals.connect(self.item_dropped, signal=signals.item_dropped)
        crawler.signals.connect(self.closed, signal=signals.spider_closed)

    @classmethod
    def from_crawler(cls, crawler):
        return cls(crawler)

    def item_scraped(self, item, response, spider):
        self.crawler.stats.inc_value("gpt2ja/documents")
        self.crawler.stats.inc_value("gpt2ja/characters", len(item.text))

    def item_dropped(self, item, response, exception, spider):
        self.crawler.stats.inc_value(accounting.DROP_PREFIX + str(exception))

    def session_counts(self) -> dict:
        stats = self.crawler.stats.get_stats()
        warc = {k[len(WARC_NOT_STORED) :]: v for k, v in sorted(stats.items()) if k.startswith(WARC_NOT_STORED)}
        return {
            **({"warc_not_stored": warc} if warc else {}),
            "pages_fetched": stats.get("response_received_count", 0),
            "bytes_fetched": stats.get("downloader/response_bytes", 0),
            "documents": stats.get("gpt2ja/documents", 0),
            "characters": stats.get("gpt2ja/characters", 0),
            "drops": accounting.drops(stats),
            "http_status": accounting.http_statuses(stats),
            "robots_forbidden": stats.get("robotstxt/forbidden", 0),
            "seconds": round(time.time() - self.started, 3),
        }

    def closed(self, spider, reason):
        if not (self.out_uri and self.state_dir):
            return
        archive = _warc_archive(self.crawler)  # its last file is published before the manifest lists the files
        warc_files = archive.close() if archive is not None else []
        if archive is not None and archive.failed:
            reason = "warc_error"
        sessions_dir = os.path.join(self.state_dir, "sessions")
        os.makedirs(sessions_dir, exist_ok=True)
        n = len([f for f in os.listdir(sessions_dir) if f.endswith(".json")])
        session = {"reason": reason, **self.session_counts()}
        stats = self.crawler.stats.get_stats()
        errors = stats.get("downloader/exception_count", 0)
        if reason == "finished" and session["pages_fetched"] == 0 and errors:
            # nothing answered: a failure to retry, not a crawl that found nothing new
            session["reason"] = "unreachable"
            kinds = [
                k.rsplit("/", 1)[-1].rsplit(".", 1)[-1]
                for k in stats
                if k.startswith("downloader/exception_type_count/")
            ]
            FAILED[self.out_uri] = (
                f"no page could be fetched ({errors} connection error(s): "
                f"{', '.join(kinds) or 'see the log'}); check the addresses and the network, "
                "then rerun: nothing was marked complete"
            )
        with open(os.path.join(sessions_dir, f"{n:04d}.json"), "w", encoding="utf-8") as fh:
            json.dump(session, fh, ensure_ascii=False, indent=1)
        with contextlib.suppress(FileNotFoundError):  # this session closed: its state can be trusted
            os.unlink(os.path.join(self.state_dir, RUNNING))
        if session["reason"] not in COMPLETE:
            logger.warning(
                "crawl stopped (%s) after writing %d documents; rerun the same command to resume it",
                session["reason"],
                session["documents"],
            )
            return
        sessions = []
        for name in sorted(os.listdir(sessions_dir)):
            with open(os.path.join(sessions_dir, name), encoding="utf-8") as fh:
                sessions.append(json.load(fh))
        counts = sum_counts(sessions)
        # what is stored, counted from the parts: a killed session recorded no counts of its own
        counts["documents"] = counts["characters"] = 0
        for doc in read_documents(self.out_uri):
            counts["documents"] += 1
            counts["characters"] += len(doc.text)
        files = [storage.file_info(uri) for uri in list_parts(self.out_uri)]
        if archive is not None:
            files += [storage.file_info(uri, root=self.out_uri) for uri in warc_files]
            counts["warc"] = archive.files.summary()
        # published by gpt2ja.crawler.runner.run_crawl through gpt2ja.infra.stage.run_stage (verified, manifest last)
        FINISHED[self.out_uri] = storage.build_manifest(
            stage="crawl",
            config=self.config,
            counts=counts,
            files=files,
            timings={"seconds": counts.pop("seconds"), "sessions": len(sessions)},
            extra={"close_reasons": [s["reason"] for s in sessions]},
        )
        logger.info("crawl complete: %d documents in %s", counts["documents"], self.out_uri)


def sum_counts(sessions: list[dict]) -> dict:
    """Add up per-session counts (numbers, and dicts of numbers key by key)."""
    total: dict = {}
    for s in sessions:
        for key, value in s.items():
            if isinstance(value, dict):
                bucket = total.setdefault(key, {})
                for k, v in value.items():
                    bucket[k] = bucket.get(k, 0) + v
            elif isinstance(value, (int, float)):
                total[key] = total.get(key, 0) + value
    return total
