"""Item pipelines: every Document a spider yields goes through these, in the
order of ``ITEM_PIPELINES`` in :mod:`gpt2ja.crawler.settings`.

A pipeline returns the item or raises ``DropItem(reason)``; the reason is a
short snake_case string, counted by :class:`gpt2ja.crawler.extensions.CrawlManifest`.
"""

from __future__ import annotations

from scrapy.exceptions import DropItem

from gpt2ja.corpus.document import Document, canonical_url, document_id
from gpt2ja.corpus.jsonl import ShardWriter, read_documents


class ValidatePipeline:
    """Drops documents with no text; normalises line endings (LF)."""

    def __init__(self, min_chars: int):
        self.min_chars = min_chars

    @classmethod
    def from_crawler(cls, crawler):
        return cls(crawler.settings.getint("GPT2JA_MIN_CHARS", 1))

    def process_item(self, item: Document, spider=None) -> Document:
        item.text = item.text.replace("\r\n", "\n").replace("\r", "\n").strip("\n")
        if not item.text.strip():
            raise DropItem("empty_text")
        if len(item.text) < self.min_chars:
            raise DropItem("too_short")
        return item


def aliased(url: str, alias: dict[str, str]) -> str:
    """``url`` with the first matching prefix (a key of ``alias``) replaced by its value.

    >>> aliased("http://127.0.0.1:8123/cards/1.html", {"http://127.0.0.1:8123": "http://mirror.local"})
    'http://mirror.local/cards/1.html'
    """
    for prefix, to in alias.items():
        if url.startswith(prefix):
            return to + url[len(prefix) :]
    return url


class AliasPipeline:
    """Records a document fetched from an aliased address under the site's own (``CrawlConfig.url_alias``).

    The id is made again from the new URL; the address it was fetched from stays in ``meta["fetched_url"]``.
    """

    def __init__(self, alias: dict[str, str]):
        self.alias = dict(alias)

    @classmethod
    def from_crawler(cls, crawler):
        return cls(crawler.settings.getdict("GPT2JA_URL_ALIAS"))

    def process_item(self, item: Document, spider=None) -> Document:
        url = aliased(item.url, self.alias)
        if url != item.url:
            item.meta["fetched_url"] = item.url
            item.url, item.id = url, document_id(item.source, url)
        return item


class DedupPipeline:
    """Drops a document whose id (source + canonical URL) was already written,
    in this crawl session or an earlier session of the same crawl."""

    def __init__(self, out_uri: str | None):
        self.out_uri = out_uri
        self.seen: set[str] = set()

    @classmethod
    def from_crawler(cls, crawler):
        return cls(crawler.settings.get("GPT2JA_OUT"))

    def open_spider(self, spider=None):
        if self.out_uri:  # a resumed crawl: what earlier sessions wrote
            self.seen.update(doc.id for doc in read_documents(self.out_uri))

    def process_item(self, item: Document, spider=None) -> Document:
        if item.id in self.seen:
            raise DropItem("duplicate_url")
        self.seen.add(item.id)
        item.meta.setdefault("canonical_url", canonical_url(item.url))
        return item


class ShardWriterPipeline:
    """Writes Documents to ``{root}/raw/{source}/{crawl_id}/part-NNNNN.jsonl.gz``.

    Parts are published whole, every ``GPT2JA_PART_DOCS`` documents and when the
    spider closes for any reason, so an interrupted crawl keeps what it wrote.
    """

    def __init__(self, out_uri: str | None, part_docs: int):
        self.out_uri = out_uri
        self.part_docs = part_docs
        self.writer: ShardWriter | None = None

    @classmethod
    def from_crawler(cls, crawler):
        return cls(crawler.settings.get("GPT2JA_OUT"), crawler.settings.getint("GPT2JA_PART_DOCS", 500))

    def open_spider(self, spider=None):
        if self.out_uri:
            self.writer = ShardWriter(self.out_uri, max_docs=self.part_docs)

    def process_item(self, item: Document, spider=None) -> Document:
        if self.writer is not None:
            self.writer.write(item)
        return item

    def close_spider(self, spider=None):
        if self.writer is not None:
            self.writer.close()
