"""Log dropped items as one short line (reason and URL), not the whole document."""

import logging

from scrapy.logformatter import LogFormatter


class OneLineDrops(LogFormatter):
    def dropped(self, item, exception, response, spider=None):
        return {
            "level": logging.WARNING,
            "msg": "drop %(reason)s: %(url)s",
            "args": {"reason": str(exception), "url": getattr(item, "url", "?")},
        }

    def scraped(self, item, response, spider=None):
        return {
            "level": logging.DEBUG,
            "msg": "scraped %(url)s (%(chars)d chars)",
            "args": {"url": getattr(item, "url", "?"), "chars": len(getattr(item, "text", ""))},
        }
