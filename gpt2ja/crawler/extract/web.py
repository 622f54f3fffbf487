"""Web pages → main text: Japanese charset handling, main-content extraction, language check.

Scrapy guesses cp1252 for pages that declare no charset, which turns Japanese
into mojibake. Here the bytes are decoded explicitly:

1. the charset of the HTTP ``Content-Type`` header, else a byte-order mark,
   else ``<meta charset>`` / ``<meta http-equiv>`` in the first 4 KB;
2. when none is declared, or the declared one does not decode the bytes
   strictly, detection restricted to the encodings Japanese pages use
   (UTF-8, cp932, EUC-JP), with charset-normalizer choosing among those that decode;
3. a page that no candidate decodes strictly is rejected (``bad_encoding``).

Main content comes from trafilatura (boilerplate, menus and footers removed).
A page is Japanese when hiragana + katakana make at least ``min_kana_ratio``
of its letters: kanji alone do not tell Japanese from Chinese.

Example::

    page = extract_page(body, "text/html; charset=Shift_JIS", "https://example.jp/a.html")
    page.text, page.encoding, page.kana_ratio
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field

from gpt2ja.crawler.extract import ExtractError

META_CHARSET_RE = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)
HEADER_CHARSET_RE = re.compile(r"charset\s*=\s*[\"']?([A-Za-z0-9_.:-]+)", re.IGNORECASE)
CANONICAL_RE = re.compile(r"""<link[^>]+rel=["']?canonical["']?[^>]*>""", re.IGNORECASE)
HREF_RE = re.compile(r"""href\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
CANDIDATES = ("utf_8", "cp932", "euc_jp")
# Labels that pages use for the encodings Python knows by other names. Pages
# labelled Shift_JIS are in practice Windows-31J (cp932: ①, ～, NEC and IBM extensions).
ALIASES = {
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "sjis": "cp932",
    "x-sjis": "cp932",
    "ms_kanji": "cp932",
    "windows-31j": "cp932",
    "csshiftjis": "cp932",
    "euc-jp": "euc_jp",
    "x-euc-jp": "euc_jp",
    "eucjp": "euc_jp",
    "cseucpkdfmtjapanese": "euc_jp",
}


class PageRejected(ExtractError):
    """A page that gives no document, with the named reason it is counted under."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class WebPage:
    text: str
    title: str
    author: str
    encoding: str
    encoding_source: str  # header, bom, meta, detected
    kana_ratio: float
    canonical_url: str | None
    meta: dict = field(default_factory=dict)


def _codec(label: str | None) -> str | None:
    if not label:
        return None
    label = label.strip().lower()
    label = ALIASES.get(label, label)
    try:
        return codecs.lookup(label).name
    except LookupError:
        return None


def declared_charset(body: bytes, content_type: str | None) -> tuple[str | None, str]:
    """The charset a page declares, and where: ``header``, ``bom``, ``meta`` or ``none``."""
    if content_type:
        m = HEADER_CHARSET_RE.search(content_type)
        if m and _codec(m.group(1)):
            return _codec(m.group(1)), "header"
    if body.startswith(codecs.BOM_UTF8):
        return "utf-8", "bom"
    m = META_CHARSET_RE.search(body[:4096])
    if m and _codec(m.group(1).decode("ascii", "replace")):
        return _codec(m.group(1).decode("ascii")), "meta"
    return None, "none"


def decode_html(body: bytes, content_type: str | None, where: str) -> tuple[str, str, str]:
    """Decode a page's bytes: returns (text, encoding, how it was chosen); ExtractError when nothing decodes."""
    declared, source = declared_charset(body, content_type)
    if declared:
        try:
            return body.decode(declared), declared, source
        except UnicodeDecodeError:
            pass  # a wrong label is common: fall through to detection
    decodable = []
    for enc in CANDIDATES:
        try:
            body.decode(enc)
            decodable.append(enc)
        except UnicodeDecodeError:
            continue
    if not decodable:
        raise PageRejected(
            "bad_encoding",
            f"{where}: not decodable as UTF-8, cp932 or EUC-JP"
            + (f" (declared {declared} does not fit either)" if declared else "")
            + "; the page is dropped",
        )
    if len(decodable) == 1 or "utf_8" in decodable:
        enc = "utf_8" if "utf_8" in decodable else decodable[0]
    else:
        from charset_normalizer import from_bytes

        best = from_bytes(body, cp_isolation=decodable).best()
        enc = best.encoding if best is not None else decodable[0]
    label = "detected" if not declared else f"detected (declared {declared} failed)"
    return body.decode(enc), codecs.lookup(enc).name, label


def kana_ratio(text: str) -> float:
    """Hiragana + katakana over all letters (punctuation, digits and spaces not counted)."""
    letters = kana = 0
    for ch in text:
        if ch.isalpha():
            letters += 1
            if "\u3041" <= ch <= "\u30ff" or "\uff66" <= ch <= "\uff9f":
                kana += 1
    return kana / letters if letters else 0.0


def canonical_link(html: str) -> str | None:
    m = CANONICAL_RE.search(html)
    if not m:
        return None
    href = HREF_RE.search(m.group(0))
    return href.group(1) if href else None


# Ruby (furigana): the readings (<rt>, and the <rp> brackets around them) are not part of the text, and
# trafilatura turns each <ruby>/<rb> element into a line of its own ("一人の\n下人\nが、"), which the
# clean stage then drops as short lines. The base text stays inline, as in the Aozora text editions.
_RUBY_READING_RE = re.compile(r"<(rt|rp)\b[^>]*>.*?</\1\s*>", re.S | re.I)
_RUBY_TAG_RE = re.compile(r"</?(?:ruby|rb|rtc)\b[^>]*>", re.I)


def without_ruby(html: str) -> str:
    """``html`` with ruby readings removed and the base text inline.

    ``<ruby><rb>下人</rb><rt>げにん</rt></ruby>`` → ``下人``.
    """
    if "<ruby" not in html and "<RUBY" not in html:
        return html
    return _RUBY_TAG_RE.sub("", _RUBY_READING_RE.sub("", html))


def main_text(html: str, url: str) -> dict:
    """trafilatura's main content and metadata of a decoded page; PageRejected when there is none."""
    import json

    import trafilatura

    if not html.strip():
        raise PageRejected("empty_page", f"{url}: empty page")
    html = without_ruby(html)
    result = trafilatura.extract(
        html,
        url=url,
        output_format="json",
        with_metadata=True,
        include_comments=False,
        include_tables=False,
        favor_precision=True,
    )
    data = json.loads(result) if result else {}
    if not (data.get("text") or "").strip():
        raise PageRejected("no_main_content", f"{url}: no main content found (navigation or boilerplate only)")
    return data


def extract_page(body: bytes, content_type: str | None, url: str) -> WebPage:
    """Decode a page and extract its main text with trafilatura.

    Raises PageRejected (one line naming the URL, and a named reason) when the page
    cannot be decoded or has no main content. The language check is left to the
    caller, which knows the threshold; :attr:`WebPage.kana_ratio` carries the figure.
    """
    html, encoding, source = decode_html(body, content_type, url)
    return page_from_html(html, url, encoding, source)


def page_from_html(html: str, url: str, encoding: str, source: str) -> WebPage:
    data = main_text(html, url)
    text = data["text"].strip()
    return WebPage(
        text=text,
        title=data.get("title") or "",
        author=data.get("author") or "",
        encoding=encoding,
        encoding_source=source,
        kana_ratio=round(kana_ratio(text), 4),
        canonical_url=canonical_link(html),
        meta={k: data[k] for k in ("date", "hostname", "license") if data.get(k)},
    )
