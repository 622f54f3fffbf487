"""Downloader middlewares of the gpt2ja crawler."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from scrapy import signals

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
