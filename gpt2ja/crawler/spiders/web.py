"""The ``web`` spider: seed pages and sitemaps → same-domain pages → main text.

Links are followed only within the domains of the seeds (and sitemaps), as
deep as ``DEPTH_LIMIT`` and for as many pages as ``CLOSESPIDER_PAGECOUNT``.
Each HTML page is decoded explicitly (see :mod:`gpt2ja.crawler.extract.web`), its main
content extracted with trafilatura, and kept when it is Japanese (enough kana).
Documents are known by their canonical URL (``<link rel=canonical>`` when the
page gives one on the same site), so two URLs of one page give one document.

Example::

    gpt2ja crawl web --seed https://example.jp/ --max-pages 200 --root data
"""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit

import scrapy
from scrapy.http import HtmlResponse
from scrapy.linkextractors import LinkExtractor
from scrapy.utils.sitemap import Sitemap, sitemap_urls_from_robots

from gpt2ja.corpus.document import Document, canonical_url
from gpt2ja.crawler import accounting
from gpt2ja.crawler.extract.web import PageRejected, decode_html, page_from_html

NON_HTML_EXTENSIONS = [
    "zip",
    "gz",
    "pdf",
    "jpg",
    "jpeg",
    "png",
    "gif",
    "webp",
    "svg",
    "mp3",
    "mp4",
    "css",
    "js",
    "ico",
    "woff",
    "woff2",
    "ttf",
    "xml",
    "json",
    "exe",
    "dmg",
    "iso",
]


class WebSpider(scrapy.Spider):
    """Crawl same-domain pages from ``start_urls`` and ``sitemap_urls``."""

    name = "web"

    def __init__(self, start_urls: str | list[str] = "", sitemap_urls: str | list[str] = "", **kwargs):
        super().__init__(**kwargs)
        split = lambda v: [u.strip() for u in (v.split(",") if isinstance(v, str) else v) if u.strip()]  # noqa: E731
        self.start_urls = split(start_urls)
        self.sitemap_urls = split(sitemap_urls)
        if not self.start_urls and not self.sitemap_urls:
            raise ValueError("the web spider needs a seed URL or a sitemap URL")
        self.allowed_domains = sorted({urlsplit(u).hostname for u in self.start_urls + self.sitemap_urls})
        # Same-site filtering is by host name below: LinkExtractor's allow_domains compares host:port.
        self.links = LinkExtractor(deny_extensions=NON_HTML_EXTENSIONS)

    @classmethod
    def from_crawler(cls, crawler, *args, **kwargs):
        spider = super().from_crawler(crawler, *args, **kwargs)
        spider.min_kana_ratio = crawler.settings.getfloat("GPT2JA_MIN_KANA_RATIO", 0.05)
        return spider

    async def start(self):
        for url in self.sitemap_urls:
            yield scrapy.Request(url, callback=self.parse_sitemap, errback=self.on_error)
        for url in self.start_urls:
            yield scrapy.Request(url, callback=self.parse_page, errback=self.on_error)

    def parse_sitemap(self, response):
        if response.url.endswith("/robots.txt"):
            for url in sitemap_urls_from_robots(response.text, base_url=response.url):
                yield scrapy.Request(url, callback=self.parse_sitemap, errback=self.on_error)
            return
        try:
            sitemap = Sitemap(response.body)
        except Exception as exc:  # lxml raises several kinds for a broken XML file
            accounting.drop(self.crawler, "bad_sitemap", response.url, str(exc))
            return
        for entry in sitemap:
            loc = entry.get("loc")
            if not loc:
                continue
            callback = self.parse_sitemap if sitemap.type == "sitemapindex" else self.parse_page
            yield scrapy.Request(urljoin(response.url, loc), callback=callback, errback=self.on_error)

    def parse_page(self, response):
        content_type = response.headers.get(b"Content-Type", b"").decode("latin-1")
        if content_type and "html" not in content_type.lower():
            accounting.drop(self.crawler, "not_html", response.url, content_type)
            return
        if not response.body.strip():
            accounting.drop(self.crawler, "empty_page", response.url)
            return
        try:
            html, encoding, source = decode_html(response.body, content_type, response.url)
        except PageRejected as exc:
            accounting.drop(self.crawler, exc.reason, response.url, str(exc).split(": ", 1)[-1])
            return
        # Follow links of every readable page, kept or not (a menu page links the articles),
        # from the explicitly decoded HTML rather than Scrapy's cp1252 guess.
        decoded = HtmlResponse(response.url, body=response.body, encoding=encoding, headers=response.headers)
        for link in self.links.extract_links(decoded):
            if not self._same_site(link.url):
                continue
            yield scrapy.Request(link.url, callback=self.parse_page, errback=self.on_error)
        try:
            page = page_from_html(html, response.url, encoding, source)
        except PageRejected as exc:
            accounting.drop(self.crawler, exc.reason, response.url, str(exc).split(": ", 1)[-1])
            return
        if page.kana_ratio < self.min_kana_ratio:
            accounting.drop(self.crawler, "not_japanese", response.url, f"kana ratio {page.kana_ratio:.3f}")
            return
        url = response.url
        if page.canonical_url:
            candidate = urljoin(response.url, page.canonical_url)
            if self._same_site(candidate):
                url = candidate
        yield Document.new(
            source="web",
            url=canonical_url(url),
            text=page.text,
            title=page.title,
            author=page.author,
            license=page.meta.get("license", ""),
            meta={
                "fetched_url": response.url,
                "encoding": page.encoding,
                "encoding_source": page.encoding_source,
                "kana_ratio": page.kana_ratio,
                "depth": response.meta.get("depth", 0),
                **{k: v for k, v in page.meta.items() if k != "license"},
            },
        )

    def _same_site(self, url: str) -> bool:
        host = urlsplit(url).hostname or ""
        return any(host == d or host.endswith("." + d) for d in self.allowed_domains)

    def on_error(self, failure):
        reason, detail = accounting.failure_reason(failure)
        accounting.drop(self.crawler, reason, failure.request.url, detail)
