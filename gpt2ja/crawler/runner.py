"""Run one crawl: typed config in, ``{root}/raw/{source}/{crawl_id}/`` out.

Each crawl runs in its own process because Twisted's reactor cannot be
restarted: :func:`run_crawl` runs in the calling process (the ``gpt2ja crawl``
command is such a process), :func:`crawl_in_subprocess` starts a fresh Python
for callers that live on (Prefect tasks, tests).

A crawl is resumable: Scrapy's JOBDIR (scheduler queue and seen-request
fingerprints on disk) lives in the crawl's state directory, so rerunning the
same command after an interruption fetches only what was not fetched yet. A
crawl whose output already has a manifest with the same fingerprint is skipped.

Example::

    cfg = CrawlConfig(source="aozora", start_urls=["http://127.0.0.1:8000/index_pages/person879.html"],
                      root="data", crawl_id="demo", polite=False)
    out_uri = run_crawl(cfg)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gpt2ja.crawler.warc_writer import DEFAULT_FILE_BYTES  # no Scrapy import there
from gpt2ja.infra import storage
from gpt2ja.infra.errors import Gpt2jaError
from gpt2ja.infra.stage import run_stage


def default_crawl_id() -> str:
    """Today's UTC date: rerunning a crawl the same day resumes it."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%d")


#: the default bound of a web crawl, in responses
WEB_MAX_PAGES = 1000


class CrawlConfig(BaseModel):
    """One crawl. ``polite=False`` is for local mirrors only (no delays, more concurrency)."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["aozora", "web"] = Field(
        description="which spider: aozora (author/card pages) or web (seeds, sitemaps)"
    )
    start_urls: list[str] = Field(
        default_factory=list, description="aozora: author pages or card pages; web: seed pages"
    )
    sitemaps: list[str] = Field(
        default_factory=list, description="web: sitemap URLs (or robots.txt URLs listing sitemaps)"
    )
    root: str = Field("data", description="run root: a local directory or gs://bucket/prefix")
    crawl_id: str = Field(
        default_factory=default_crawl_id,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="names the output directory; the same id resumes an interrupted crawl",
    )
    editions: list[Literal["txt", "xhtml"]] = Field(
        default_factory=lambda: ["txt", "xhtml"], description="aozora: editions to fetch, preferred first"
    )
    polite: bool = Field(
        True, description="robots delays, AutoThrottle, 1 request at a time per domain; off only for local mirrors"
    )
    obey_robots: bool = Field(True, description="honour robots.txt (always on for polite crawls)")
    max_pages: int | None = Field(
        None,
        ge=0,
        description="stop after this many responses (0: no limit; "
        f"default {WEB_MAX_PAGES} for web, no limit for aozora)",
    )
    depth_limit: int = Field(4, ge=0, le=50, description="how many links deep from a start page (0: no limit)")
    download_delay: float = Field(1.0, ge=0, description="seconds between requests to one domain when polite (>= 1)")
    download_timeout: float = Field(30.0, gt=0, description="seconds before a request is given up")
    download_maxsize: int = Field(32 * 1024 * 1024, gt=0, description="bytes; larger responses are dropped")
    min_kana_ratio: float = Field(
        0.05, ge=0, le=1, description="web: pages with fewer hiragana+katakana are not Japanese"
    )
    min_chars: int = Field(25, ge=1, description="documents with fewer characters are dropped (too_short)")
    part_docs: int = Field(500, ge=1, description="documents per output part")
    progress_interval: float = Field(10.0, ge=0, description="seconds between progress lines (0: off)")
    contact: str = Field("", description="added to the User-Agent so site owners can reach you")
    state_dir: str | None = Field(
        None,
        description="local directory for the resumable state (default under the root, or ./.gpt2ja-state for gs://)",
    )
    warc: bool | None = Field(
        None,
        description="store the raw responses as WARC files in warc/ beside the documents "
        "(default: on for web, off for aozora)",
    )
    warc_file_bytes: int = Field(
        DEFAULT_FILE_BYTES,
        ge=1,
        description="a WARC file is closed and published when it reaches this many bytes (compressed)",
    )
    settings: dict = Field(default_factory=dict, description="extra Scrapy settings (advanced)")
    url_alias: dict[str, str] = Field(
        default_factory=dict,
        description="documents fetched from a URL under a key are recorded under its value "
        "(a local mirror on 127.0.0.1:PORT keeps the site's address, so document "
        "ids do not depend on the port)",
    )

    @model_validator(mode="after")
    def _check(self) -> "CrawlConfig":
        if self.max_pages is None:  # a web crawl is bounded unless asked otherwise; Aozora's site is finite
            self.max_pages = WEB_MAX_PAGES if self.source == "web" else 0
        if self.warc is None:  # web pages change and vanish: keep what was fetched; Aozora's files stay put
            self.warc = self.source == "web"
        if not self.start_urls and not self.sitemaps:
            raise ValueError("give at least one start URL (--start-url / --seed) or sitemap (--sitemap)")
        if self.polite and self.download_delay < 1.0:
            raise ValueError(
                "a polite crawl waits at least 1 s between requests to a domain "
                "(use polite=False only for a local mirror)"
            )
        if self.polite and not self.obey_robots:
            raise ValueError("a polite crawl honours robots.txt; set polite=False to change that")
        return self

    # -- derived paths -----------------------------------------------------------
    @property
    def out_uri(self) -> str:
        return storage.join(self.root, "raw", self.source, self.crawl_id)

    @property
    def state_path(self) -> str:
        if self.state_dir:
            return self.state_dir
        local = storage.local_path(self.root)
        if local is not None:
            return os.path.join(local, "_state", "crawl", self.source, self.crawl_id)
        digest = hashlib.sha256(self.out_uri.encode()).hexdigest()[:12]
        return os.path.join(".gpt2ja-state", "crawl", f"{self.source}-{self.crawl_id}-{digest}")

    @property
    def log_path(self) -> str:
        """The crawl's log (every drop, Scrapy's own messages), kept outside the artifact and its state.

        ``{root}/logs/crawl/{source}-{crawl_id}.log`` for a local root (the stage
        contract prunes unlisted files inside the output, and a fresh crawl
        deletes its state); beside the local state for gs:// roots. Sessions of
        one crawl append to it.
        """
        local = storage.local_path(self.root)
        if local is not None:
            return os.path.join(local, "logs", "crawl", f"{self.source}-{self.crawl_id}.log")
        digest = hashlib.sha256(self.out_uri.encode()).hexdigest()[:12]
        return os.path.join(".gpt2ja-state", "logs", "crawl", f"{self.source}-{self.crawl_id}-{digest}.log")

    def fingerprint_config(self) -> dict:
        """What defines the crawl's output: not where state lives, how chatty it is, the page limit
        of one session (raising it continues the same crawl), nor how WARC files are cut. ``warc`` is
        named only when on, so a crawl without WARC files keeps the fingerprint it had before the option."""
        exclude = {"state_dir", "progress_interval", "root", "max_pages", "warc_file_bytes"}
        return self.model_dump(exclude=exclude if self.warc else exclude | {"warc"})


def scrapy_settings(cfg: CrawlConfig) -> dict:
    """Scrapy settings for one crawl, on top of :mod:`gpt2ja.crawler.settings`."""
    s: dict = {
        "GPT2JA_OUT": cfg.out_uri,
        "GPT2JA_STATE": cfg.state_path,
        "GPT2JA_CONFIG": cfg.fingerprint_config(),
        "GPT2JA_PART_DOCS": cfg.part_docs,
        "GPT2JA_MIN_CHARS": cfg.min_chars,
        "GPT2JA_PROGRESS_INTERVAL": cfg.progress_interval,
        # Scrapy's own log (settings, middlewares, each drop, stats) goes to a file, not the terminal
        "LOG_FILE": cfg.log_path,
        "LOG_FILE_APPEND": True,
        "GPT2JA_MIN_KANA_RATIO": cfg.min_kana_ratio,
        "GPT2JA_URL_ALIAS": dict(cfg.url_alias),
        "JOBDIR": os.path.join(cfg.state_path, "jobdir"),
        "DEPTH_LIMIT": cfg.depth_limit,
        "CLOSESPIDER_PAGECOUNT": cfg.max_pages,
        "DOWNLOAD_TIMEOUT": cfg.download_timeout,
        "DOWNLOAD_MAXSIZE": cfg.download_maxsize,
        "DOWNLOAD_WARNSIZE": min(cfg.download_maxsize, 8 * 1024 * 1024),
        "ROBOTSTXT_OBEY": cfg.obey_robots,
        "GPT2JA_WARC": cfg.warc,
        "GPT2JA_WARC_FILE_BYTES": cfg.warc_file_bytes,
        "GPT2JA_WARC_PREFIX": f"{cfg.source}-{cfg.crawl_id}",
    }
    if cfg.contact:
        from gpt2ja.crawler.settings import USER_AGENT

        s["USER_AGENT"] = USER_AGENT.rstrip(")") + f"; contact: {cfg.contact})"
    if cfg.polite:
        s["DOWNLOAD_DELAY"] = cfg.download_delay
        s["AUTOTHROTTLE_START_DELAY"] = cfg.download_delay
    else:
        # A local mirror: no delays, several requests at once. robots.txt is still honoured.
        s.update(
            {
                "DOWNLOAD_DELAY": 0,
                "AUTOTHROTTLE_ENABLED": False,
                "CONCURRENT_REQUESTS": 16,
                "CONCURRENT_REQUESTS_PER_DOMAIN": 8,
                "RETRY_TIMES": 0,
            }
        )
    s.update(cfg.settings)
    return s


def spider_kwargs(cfg: CrawlConfig) -> dict:
    if cfg.source == "aozora":
        return {"start_urls": cfg.start_urls, "editions": list(cfg.editions)}
    return {"start_urls": cfg.start_urls, "sitemap_urls": cfg.sitemaps}


class CrawlError(Gpt2jaError):
    """A crawl that could not finish, or was refused (one line)."""


def run_crawl(cfg: CrawlConfig, *, fresh: bool = False) -> str:
    """Run the crawl in this process (once per process), under its lock; returns the output URI.

    Returns at once when the output verifies for this config. An output made
    with another config is refused, unless ``fresh``: then it and the crawl's
    state are deleted and the crawl starts over (a mirror served on a new port).
    """
    fp = storage.fingerprint(cfg.fingerprint_config())
    where = f"crawl {cfg.source}/{cfg.crawl_id}"

    def build() -> dict:
        if fresh:
            storage.delete(cfg.out_uri)
            storage.delete(cfg.state_path)
        os.makedirs(cfg.state_path, exist_ok=True)
        from scrapy.crawler import CrawlerProcess
        from scrapy.settings import Settings

        from gpt2ja.crawler import extensions
        from gpt2ja.crawler import settings as defaults

        settings = Settings()
        settings.setmodule(defaults, priority="project")
        settings.setdict({**scrapy_settings(cfg), **_after_a_kill(cfg, where)}, priority="cmdline")
        if fresh:  # a crawl from scratch: its log too
            settings.set("LOG_FILE_APPEND", False, priority="cmdline")
        os.makedirs(os.path.dirname(cfg.log_path) or ".", exist_ok=True)
        with open(os.path.join(cfg.state_path, extensions.RUNNING), "w", encoding="utf-8") as f:
            json.dump({"pid": os.getpid()}, f)
        errors = _ErrorsToStderr()  # the log file has everything; errors are shown as well
        logging.getLogger().addHandler(errors)
        try:
            process = CrawlerProcess(settings)
            process.crawl(cfg.source, **spider_kwargs(cfg))
            process.start()
        finally:
            logging.getLogger().removeHandler(errors)
        if cfg.out_uri in extensions.FAILED:  # its seen requests failed: forget them, so a rerun tries again
            shutil.rmtree(os.path.join(cfg.state_path, "jobdir"), ignore_errors=True)
            raise CrawlError(f"{where}: {extensions.FAILED.pop(cfg.out_uri)}")
        manifest = extensions.FINISHED.pop(cfg.out_uri, None)
        if manifest is None:
            raise CrawlError(
                f"{where} stopped before its end (see {cfg.log_path}); rerun the same command to resume it"
            )
        return manifest

    refuse = (
        f"{cfg.out_uri} already holds a finished crawl made with another config; "
        "choose another --crawl-id (or delete that directory)"
    )
    outcome = run_stage("crawl", cfg.out_uri, fingerprint=fp, build=build, replace=True if fresh else refuse)
    if outcome.skipped:
        print(f"{where}: already complete in {cfg.out_uri} (manifest matches); skipped", file=sys.stderr)
    return cfg.out_uri


class _ErrorsToStderr(logging.StreamHandler):
    """ERROR records on whatever ``sys.stderr`` is at the time (a live status line may have wrapped it)."""

    def __init__(self) -> None:
        super().__init__()
        self.setLevel(logging.ERROR)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler sets it once; the current sys.stderr is used instead
        pass


def _after_a_kill(cfg: CrawlConfig, where: str) -> dict:
    """Extra Scrapy settings when the last session was killed (its RUNNING file is still there), else {}.

    Scrapy's JOBDIR keeps the requests it has seen, but its queue of pending
    requests is saved only at a clean stop: after a SIGKILL the seen set is
    ahead of what was stored, and a resume would believe it is done. So the
    JOBDIR is dropped and the crawl starts again from its start URLs; documents
    already stored are not written twice (the dedup pipeline reads them) and,
    for Aozora, their card pages are not even fetched (the known-documents
    dupefilter, as in a refresh).
    """
    from gpt2ja.crawler import extensions
    from gpt2ja.crawler.refresh import SKIP_KNOWN_SOURCES, known_settings

    marker = os.path.join(cfg.state_path, extensions.RUNNING)
    if not os.path.exists(marker):
        return {}
    shutil.rmtree(os.path.join(cfg.state_path, "jobdir"), ignore_errors=True)
    print(
        f"{where}: the last session ended without closing (killed?); its request queue cannot be trusted, "
        "so the crawl starts again from its start URLs, keeping the documents already stored",
        file=sys.stderr,
    )
    if cfg.source not in SKIP_KNOWN_SOURCES:
        return {}
    known = list(cfg.settings.get("GPT2JA_KNOWN_CRAWLS", [])) + [cfg.out_uri]
    return known_settings(known)


def crawl_in_subprocess(
    cfg: CrawlConfig,
    *,
    timeout: float | None = None,
    env: dict | None = None,
    show_progress: bool = False,
    fresh: bool = False,
) -> str:
    """Run the crawl in a fresh Python process (the reactor cannot restart); returns the output URI.

    The child's output (its status lines and errors; Scrapy's log goes to
    :attr:`CrawlConfig.log_path`) is read line by line (never left to fill a
    pipe); with ``show_progress`` its progress lines are echoed to stderr.
    Raises RuntimeError with the last lines and the log's path when the process fails.
    """
    import collections
    import threading

    cmd = [sys.executable, "-m", "gpt2ja.crawler.runner", cfg.model_dump_json(), *(["--fresh"] if fresh else [])]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}
    )
    tail: collections.deque[str] = collections.deque(maxlen=15)

    def pump() -> None:
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            if show_progress and line.startswith(f"crawl {cfg.source}:"):
                print("  " + line.rstrip("\n"), file=sys.stderr, flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"crawl {cfg.source}/{cfg.crawl_id} did not finish in {timeout} s") from None
    except BaseException:  # Ctrl-C, or the caller's own time limit: the crawl must not outlive it
        proc.kill()
        proc.wait()
        raise
    reader.join()
    if proc.returncode != 0:
        said = [line for line in tail if line.startswith("error: ")]
        if proc.returncode == 1 and said:  # a refusal for people (a held lock, an unfinished crawl): no retry helps
            raise CrawlError(said[-1].removeprefix("error: "))
        lines = "\n".join(tail)
        raise RuntimeError(
            f"crawl {cfg.source}/{cfg.crawl_id} failed (exit {proc.returncode}; its log: {cfg.log_path}):\n{lines}"
        )
    return cfg.out_uri


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (1, 2) or argv[1:] not in ([], ["--fresh"]):
        raise SystemExit("usage: python -m gpt2ja.crawler.runner '<CrawlConfig as JSON>' [--fresh]")
    try:
        run_crawl(CrawlConfig.model_validate(json.loads(argv[0])), fresh=argv[1:] == ["--fresh"])
    except Gpt2jaError as err:
        print(f"error: {err}", flush=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
