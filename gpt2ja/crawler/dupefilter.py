"""A dupefilter that also treats the documents of earlier crawls as seen: the cheap half of a corpus refresh.

Scrapy's ``RFPDupeFilter`` drops a request whose fingerprint (method, canonical
URL, body) it has seen in this crawl (kept in the JOBDIR, so a resumed crawl
remembers). :class:`KnownDocumentsDupeFilter` adds the fingerprints of a GET of
every document URL in the crawls named by ``GPT2JA_KNOWN_CRAWLS``, read once when
the crawl opens, so an Aozora card page that already gave a document is not
fetched again while the author pages (start URLs, not documents) are, and so
new cards are found. Which crawls are known, and for which sources that is
sound, is decided by :mod:`gpt2ja.crawler.refresh`.

Enabled through the crawl's Scrapy settings (``CrawlConfig.settings``)::

    {"DUPEFILTER_CLASS": "gpt2ja.crawler.dupefilter.KnownDocumentsDupeFilter",
     "GPT2JA_KNOWN_CRAWLS": ["data/raw/aozora/demo"]}
"""

from __future__ import annotations

import logging

from scrapy import Request
from scrapy.dupefilters import RFPDupeFilter
from scrapy.utils.job import job_dir

from gpt2ja.corpus.jsonl import read_documents

logger = logging.getLogger("gpt2ja.crawl")


class KnownDocumentsDupeFilter(RFPDupeFilter):
    """``RFPDupeFilter`` plus the document URLs of earlier crawls (never written to this crawl's JOBDIR)."""

    def __init__(self, path=None, debug=False, *, fingerprinter=None, known_crawls=(), stats=None, url_alias=None):
        from gpt2ja.crawler.pipelines import aliased

        super().__init__(path, debug, fingerprinter=fingerprinter)
        self.stats = stats
        self.known: set[bytes] = set()
        back = {to: prefix for prefix, to in (url_alias or {}).items()}  # documents keep the site's address
        for doc in read_documents(list(known_crawls)):
            self.known.add(self.fingerprinter.fingerprint(Request(aliased(doc.url, back))))
        self.known_skipped = 0
        if known_crawls:
            logger.info(
                "known documents: %d URLs from %d earlier crawl(s) will not be fetched again",
                len(self.known),
                len(known_crawls),
            )

    @classmethod
    def from_crawler(cls, crawler):
        return cls(
            job_dir(crawler.settings),
            crawler.settings.getbool("DUPEFILTER_DEBUG"),
            fingerprinter=crawler.request_fingerprinter,
            known_crawls=crawler.settings.getlist("GPT2JA_KNOWN_CRAWLS"),
            stats=crawler.stats,
            url_alias=crawler.settings.getdict("GPT2JA_URL_ALIAS"),
        )

    def request_seen(self, request) -> bool:
        if self._fingerprint(request) in self.known:
            self.known_skipped += 1
            if self.stats is not None:
                self.stats.inc_value("gpt2ja/known_skipped")
            return True
        return super().request_seen(request)

    def close(self, reason: str) -> None:
        if self.known:
            logger.info("known documents: %d requests skipped", self.known_skipped)
        super().close(reason)
