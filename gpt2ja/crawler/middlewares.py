"""Downloader middlewares of the gpt2ja crawler."""

from __future__ import annotations

import logging
from urllib.parse import urljoin, urlsplit

from scrapy import signals
from scrapy.exceptions import IgnoreRequest
from w3lib.url import canonicalize_url, safe_url_string

logger = logging.getLogger(__name__)


class CrawlDelayMiddleware:
    """Honour the ``Crawl-delay`` of robots.txt.

    Scrapy's RobotsTxtMiddleware only answers allowed/forbidden. This one listens
    to its ``robots_parsed`` signal, remembers the delay asked for by each host,
    and raises that host's download-slot delay to it. AutoThrottle is told not to
    lower it again (``autothrottle_dont_adjust_delay``).
    """

    def __init__(self, crawler):
        self.crawler = crawler
        self.user_agent = crawler.settings.get("ROBOTSTXT_USER_AGENT") or crawler.settings.get("USER_AGENT")
        self.delays: dict[str, float] = {}
        crawler.signals.connect(self.robots_parsed, signal=signals.robots_parsed)

    @classmethod
    def from_crawler(cls, crawler):
        return cls(crawler)

    def robots_parsed(self, robotparser, request):
        delay = robotparser.crawl_delay(self.user_agent) if hasattr(robotparser, "crawl_delay") else None
        if delay:
            netloc = urlsplit(request.url).netloc
            self.delays[netloc] = float(delay)
            logger.info("robots.txt of %s asks for Crawl-delay %.1f s: honoured", netloc, delay)

    def process_request(self, request, spider=None):
        delay = self.delays.get(urlsplit(request.url).netloc)
        if not delay:
            return None
        request.meta["autothrottle_dont_adjust_delay"] = True
        downloader = self.crawler.engine.downloader
        slot = downloader.slots.get(downloader.get_slot_key(request))
        if slot is not None and slot.delay < delay:
            slot.delay = delay
            slot.randomize_delay = False  # a Crawl-delay is a minimum, not an average
        return None


REDIRECT_STATUSES = (301, 302, 303, 307, 308)


class RedirectLoopMiddleware:
    """Refuse a redirect back to an address already on the request's own redirect chain.

    Scrapy's ``RedirectMiddleware`` follows a loop (A → A, or A → B → A) until
    the dupefilter silently drops the repeated request: the page is then counted
    nowhere. Ordered just above it (601: responses pass middlewares from high to
    low), this one sees the 3xx first and raises ``IgnoreRequest("redirect loop
    …")``, which the spider's errback counts as ``redirect_loop``. A chain that
    never repeats but is too long ends in Scrapy's own "max redirections reached"
    (``too_many_redirects``).
    """

    def process_response(self, request, response, spider=None):
        location = response.headers.get(b"Location")
        if response.status not in REDIRECT_STATUSES or not location:
            return response
        target = canonicalize_url(safe_url_string(urljoin(request.url, location.decode("latin-1"))))
        chain = [*request.meta.get("redirect_urls", []), request.url]
        if target in {canonicalize_url(url) for url in chain}:
            raise IgnoreRequest(f"redirect loop: {' → '.join(chain)} → {target}")
        return response
