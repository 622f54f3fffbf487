"""The ``aozora`` spider: author pages → card pages → the text zip and the XHTML edition.

Aozora Bunko's structure (https://www.aozora.gr.jp/):

* author page ``/index_pages/personN.html`` links every card as ``../cards/NNNNNN/cardM.html``;
* a card page links the ruby/txt zip (``./files/<stem>.zip``) and, for many works,
  an XHTML edition (``./files/<W>_<M>.html``).

One card gives one Document, whose text comes from the zip's Shift_JIS .txt when
it can be read and from the XHTML edition otherwise. When both are fetched
(the default) the two extractions are compared and ``meta.editions_agree`` says
whether they gave the same text. The editions are fetched one after the other
(the request for the second carries what the first gave), so a card yields
exactly one item and a resumed crawl (JOBDIR) holds every pending step on disk.

Example::

    scrapy crawl aozora -a start_urls=http://127.0.0.1:8000/index_pages/person879.html
    # or: gpt2ja crawl aozora --start-url http://127.0.0.1:8000/index_pages/person879.html --root data
"""

from __future__ import annotations

import re
from dataclasses import asdict

import scrapy

from gpt2ja.corpus.document import Document
from gpt2ja.crawler import accounting
from gpt2ja.crawler.extract import ExtractError
from gpt2ja.crawler.extract import aozora as extract

CARD_RE = re.compile(r"/cards/(?P<person>\d{6})/card(?P<work>\d+)\.html$")
AUTHOR_RE = re.compile(r"/index_pages/person(?P<person>\d+)\.html$")
ZIP_RE = re.compile(r"\.zip$", re.IGNORECASE)
XHTML_RE = re.compile(r"files/\d+_\d+\.html?$", re.IGNORECASE)
PUBLIC_DOMAIN = "public domain; Aozora Bunko file terms: https://www.aozora.gr.jp/guide/kijyunn.html"
EDITIONS = ("txt", "xhtml")


def _header_value(response, label: str) -> str:
    """The text of the card-table cell whose header reads ``label`` (e.g. '作品名：')."""
    cell = response.xpath(f"//td[@class='header'][normalize-space(.)='{label}']/following-sibling::td[1]")
    return " ".join(t.strip() for t in cell.xpath(".//text()").getall() if t.strip())


def parse_card(response) -> dict:
    """What a card page says about its work: title, author, edition links, bibliographic data."""
    m = CARD_RE.search(response.url)
    links = [response.urljoin(h) for h in response.xpath("//a/@href").getall()]
    zip_url = next((u for u in links if ZIP_RE.search(u)), None)
    xhtml_url = next((u for u in links if XHTML_RE.search(u)), None)
    cc = response.xpath("//a[contains(@href, 'creativecommons.org/licenses/')]/@href").get()
    author = response.xpath(
        "//td[@class='header'][normalize-space(.)='著者名：']/following-sibling::td[1]//a/text()"
    ).get() or _header_value(response, "作家名：")
    return {
        "card_url": response.url,
        "person_id": m.group("person") if m else "",
        "work_id": m.group("work") if m else "",
        "title": _header_value(response, "作品名："),
        "author": author.strip(),
        "zip_url": zip_url,
        "xhtml_url": xhtml_url,
        "license": cc or PUBLIC_DOMAIN,
        "kana_style": _header_value(response, "文字遣い種別："),
        "first_published": _header_value(response, "初出："),
        "source_book": _header_value(response, "底本："),
    }


class AozoraSpider(scrapy.Spider):
    """Crawl Aozora Bunko from author pages (or card pages) given as ``start_urls``.

    Arguments (``-a`` on the scrapy command line, or keyword arguments):
    ``start_urls`` (comma-separated or a list), ``editions`` ("txt,xhtml", "txt" or "xhtml":
    which editions to fetch, in order of preference).
    """

    name = "aozora"

    def __init__(self, start_urls: str | list[str] = "", editions: str | list[str] = "txt,xhtml", **kwargs):
        super().__init__(**kwargs)
        self.start_urls = [
            u.strip() for u in (start_urls.split(",") if isinstance(start_urls, str) else start_urls) if u.strip()
        ]
        wanted = editions.split(",") if isinstance(editions, str) else list(editions)
        self.editions = [e.strip() for e in wanted if e.strip()]
        bad = [e for e in self.editions if e not in EDITIONS]
        if bad or not self.editions:
            raise ValueError(f"editions must be a list from {EDITIONS}, got {editions!r}")
        if not self.start_urls:
            raise ValueError("the aozora spider needs at least one start URL (an author page or a card page)")

    async def start(self):
        for url in self.start_urls:
            callback = self.parse_card if CARD_RE.search(url) else self.parse_author
            yield scrapy.Request(url, callback=callback, errback=self.on_page_error)

    # -- pages -----------------------------------------------------------------
    def parse_author(self, response):
        cards = 0
        for href in response.xpath("//a/@href").getall():
            url = response.urljoin(href)
            if CARD_RE.search(url):
                cards += 1
                yield scrapy.Request(url, callback=self.parse_card, errback=self.on_page_error)
        if not cards:
            accounting.drop(self.crawler, "no_card_links", response.url, "not an Aozora author page?")

    def parse_card(self, response):
        card = parse_card(response)
        urls = {"txt": card["zip_url"], "xhtml": card["xhtml_url"]}
        plan = [(e, urls[e]) for e in self.editions if urls[e]]
        if not plan:
            accounting.drop(self.crawler, "no_text_link", response.url, "the card links no zip or XHTML edition")
            return
        yield self._edition_request(card, plan, results={})

    def _edition_request(self, card: dict, plan: list, results: dict) -> scrapy.Request:
        (edition, url), rest = plan[0], plan[1:]
        return scrapy.Request(
            url,
            callback=self.parse_edition,
            errback=self.on_edition_error,
            cb_kwargs={"card": card, "edition": edition, "rest": rest, "results": results},
        )

    def parse_edition(self, response, card, edition, rest, results):
        where = response.url
        try:
            got = (
                extract.from_zip(response.body, where) if edition == "txt" else extract.from_xhtml(response.body, where)
            )
        except ExtractError as exc:
            reason = "bad_zip" if edition == "txt" and "zip" in str(exc).lower() else "undecodable"
            accounting.drop(self.crawler, reason, where, str(exc))
        else:
            results = {**results, edition: asdict(got)}
        yield from self._next(card, rest, results)

    def on_edition_error(self, failure):
        kw = failure.request.cb_kwargs
        reason, detail = accounting.failure_reason(failure)
        accounting.drop(self.crawler, reason, failure.request.url, detail)
        yield from self._next(kw["card"], kw["rest"], kw["results"])

    def on_page_error(self, failure):
        reason, detail = accounting.failure_reason(failure)
        accounting.drop(self.crawler, reason, failure.request.url, detail)

    # -- the document ----------------------------------------------------------
    def _next(self, card, rest, results):
        if rest:
            yield self._edition_request(card, rest, results)
            return
        chosen = next((e for e in self.editions if e in results), None)
        if chosen is None:
            accounting.drop(self.crawler, "no_edition_readable", card["card_url"])
            return
        text = results[chosen]
        meta = {
            "edition": chosen,
            "edition_url": card["zip_url"] if chosen == "txt" else card["xhtml_url"],
            "encoding": text["encoding"],
            "notation": text["counts"],
            "person_id": card["person_id"],
            "work_id": card["work_id"],
            "kana_style": card["kana_style"],
            "first_published": card["first_published"],
            "source_book": card["source_book"],
            "aozora_notation_removed": True,
        }
        if len(results) == 2:
            meta["editions_agree"] = results["txt"]["text"] == results["xhtml"]["text"]
            if not meta["editions_agree"]:
                self.logger.warning("txt and XHTML editions differ: %s", card["card_url"])
        yield Document.new(
            source="aozora",
            url=card["card_url"],
            text=text["text"],
            title=card["title"] or text["title"],
            author=card["author"] or text["author"],
            license=card["license"],
            meta=meta,
        )
