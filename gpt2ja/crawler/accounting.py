"""Named reasons for everything a crawl drops, kept in the crawler's stats.

Each drop is one log line (what, where, why) and one count under
``gpt2ja/drop/<reason>``; the manifest lists them all. Reasons are short
snake_case strings that tests assert on.
"""

from __future__ import annotations

import logging

from scrapy import exceptions as scrapy_exceptions
from scrapy.exceptions import IgnoreRequest
from scrapy.spidermiddlewares.httperror import HttpError
from twisted.internet.error import ConnectError, ConnectionRefusedError, DNSLookupError, TCPTimedOutError, TimeoutError
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseNeverReceived

logger = logging.getLogger("gpt2ja.crawl")


def _scrapy_exc(name: str) -> tuple[type, ...]:
    """Scrapy ≥ 2.14 wraps download failures in its own exception classes; older ones use Twisted's."""
    exc = getattr(scrapy_exceptions, name, None)
    return (exc,) if exc is not None else ()


TIMEOUTS = (TimeoutError, TCPTimedOutError, *_scrapy_exc("DownloadTimeoutError"))
DNS_ERRORS = (DNSLookupError, *_scrapy_exc("CannotResolveHostError"))
CONNECT_ERRORS = (ConnectionRefusedError, ConnectError, *_scrapy_exc("DownloadConnectionRefusedError"))
CANCELLED = _scrapy_exc("DownloadCancelledError")
DATA_LOSS = _scrapy_exc("ResponseDataLossError")
DROP_PREFIX = "gpt2ja/drop/"


def count(crawler, key: str, n: int = 1) -> None:
    crawler.stats.inc_value(key, n)


def drop(crawler, reason: str, where: str, detail: str = "") -> None:
    """Count one dropped page or document under ``reason`` and log it in one line."""
    crawler.stats.inc_value(DROP_PREFIX + reason)
    logger.warning("drop %s: %s%s", reason, where, f" ({detail})" if detail else "")


def failure_reason(failure: Failure) -> tuple[str, str]:
    """A download failure as (reason, detail): ``http_404``, ``robots_disallowed``, ``timeout``…"""
    exc = failure.value
    if failure.check(HttpError):
        return f"http_{exc.response.status}", ""
    if failure.check(IgnoreRequest):
        text = str(exc)
        if "robots.txt" in text:
            return "robots_disallowed", ""
        if text.startswith("redirect loop"):  # gpt2ja.crawler.middlewares.RedirectLoopMiddleware
            return "redirect_loop", text
        if "max redirections reached" in text:  # Scrapy's RedirectMiddleware past REDIRECT_MAX_TIMES
            return "too_many_redirects", ""
        if "during decompression" in text:  # HttpCompressionMiddleware: the body inflates past DOWNLOAD_MAXSIZE
            return "decompression_bomb", text
        return "ignored", text
    if failure.check(*TIMEOUTS):
        return "timeout", str(exc)
    if failure.check(*DNS_ERRORS):
        return "dns_error", str(exc)
    if failure.check(*CONNECT_ERRORS):
        return "connection_error", str(exc)
    if CANCELLED and failure.check(*CANCELLED):
        # Scrapy cancels a download that grows past DOWNLOAD_MAXSIZE
        return "too_large", str(exc)
    if DATA_LOSS and failure.check(*DATA_LOSS):
        return "truncated_response", str(exc)
    if failure.check(ResponseNeverReceived):
        # Scrapy cancels a download past DOWNLOAD_MAXSIZE this way, among others
        return "no_response", str(exc.reasons[0].value if getattr(exc, "reasons", None) else exc)
    return "download_error", f"{type(exc).__name__}: {exc}"


def drops(stats: dict) -> dict[str, int]:
    return {k[len(DROP_PREFIX) :]: v for k, v in sorted(stats.items()) if k.startswith(DROP_PREFIX)}


def http_statuses(stats: dict) -> dict[str, int]:
    prefix = "downloader/response_status_count/"
    return {k[len(prefix) :]: v for k, v in sorted(stats.items()) if k.startswith(prefix)}
