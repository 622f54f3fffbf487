"""Unicode and whitespace normalisation of the clean stage, decided once, here.

:func:`normalize` applies Unicode NFKC exactly once in the pipeline (the
tokenizer then uses identity normalisation, so ``decode(encode(t)) == t`` holds
on cleaned text). NFKC is what Japanese corpora expect: full-width ASCII becomes
ASCII (``ＡＢＣ１２３`` → ``ABC123``, ``！？（）`` → ``!?()``), half-width kana
become full-width with their voiced marks composed (``ｶﾞ`` → ``ガ``), and
compatibility forms are spelled out (``㈱`` → ``(株)``, ``㌔`` → ``キロ``,
``①`` → ``1``, ``Ⅱ`` → ``II``, ``‼`` → ``!!``). It is a composing form, so
dakuten survive (``がぎぐげご`` stays; NFD/NFKD, which split them, are never used).

NFKC is wrong for a few characters of Japanese prose. These exceptions were
found by running NFKC over the 2,058 works of ``aozora-bulk`` (25.8 million
characters) and listing every character it changes:

* ``…`` (U+2026, 110,485 uses) and ``‥`` (U+2025, 76) stay: NFKC makes them
  ``...`` / ``..``, three or two ASCII full stops that a Japanese sentence
  never contains (and that the sentence splitter would have to guess about).
* U+3000 (ideographic space, 264,465 uses) stays, everywhere: NFKC makes it an
  ASCII space. In Japanese it is the one-character-wide space of the text
  itself, not a word separator: 88 % of our uses indent a paragraph at the
  start of a line (the only paragraph mark Aozora texts have: a line that
  starts with ``「`` or without it is a continuation), the rest follow ``！？``
  (a typesetting rule), separate a speaker from the line in plays, or align
  poems and tables. An ASCII space would lose the indentation to any
  whitespace-collapsing step and, for sentencepiece, become a word boundary
  (``▁``) inside Japanese text. Keeping it everywhere, rather than only at line
  starts, keeps one character meaning one thing.
* the wave dash: cp932 decodes the JIS wave dash as U+FF5E ``～``, which NFKC
  would turn into ASCII ``~``; it is mapped to U+301C ``〜`` (the character
  JIS means, left alone by NFKC) first.
* the kunoji (くの字点, the long repetition mark of vertical writing): Aozora
  texts type it as ``／＼`` and, voiced, ``／″＼`` (4,317 uses in aozora-bulk,
  all of them this mark), which NFKC would make ``/\\`` and ``/′′\\``. They
  become the Unicode characters ``〳〵`` and ``〴〵``.
* spacing marks that NFKC turns into an ASCII space followed by a combining
  mark stay as they are: ``゛`` ``゜`` (U+309B/U+309C, the stand-alone voiced
  marks of JIS X 0208), ``´`` ``¨`` ``￣`` (JIS X 0208 row 1) and ``‾`` (JIS X
  0201's overline). After NFKC they would be a space (a word boundary) with a
  mark that belongs to no letter.

Left to NFKC on purpose (it does not change them, and tests assert it):
``「」『』、。〜・ー〃※〝〟―〳〵ゝゞヽヾ〈〉《》【】``.

Accepted NFKC changes that lose a little: circled and Roman numerals become
plain ones (``①`` → ``1``), ``⁉`` → ``!?``, ``″`` → ``′′`` outside a kunoji,
compatibility ideographs become their unified forms. They are rare (under
a hundred uses in aozora-bulk) and the plain forms are what web text uses.

Whitespace and lines: line endings become LF (CRLF, CR, U+2028, U+2029 and
U+0085 NEL); trailing whitespace is stripped on every line (leading
indentation is kept); three or more line breaks in a row become two (at most
one empty line between paragraphs); leading and trailing blank lines go. No
neologdn-style deletion of spaces between Japanese characters or of repeated
``〜``/``ー``: that changes the text, not its encoding.

Speed (one core, aozora-bulk): about 50 MB/s of UTF-8, 25 MB/s when every line
holds full-width ASCII; see :func:`_nfkc_line` for how.

Noncharacters U+FDD0-U+FDEF are removed: they are not text, and normalisation
uses them internally to protect the exceptions from NFKC.

Example::

    >>> normalize("ＡＢＣ１２３　ｶﾞ…～\\r\\n\\r\\n\\r\\n\\r\\n　次の段落。  ")
    'ABC123\\u3000ガ…〜\\n\\n\\u3000次の段落。'
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["KEPT_BY_NFKC", "PROTECTED", "normalize"]

# Characters NFKC would change but normalize() keeps (see the module docstring).
PROTECTED = "\u2026\u2025\u3000\u309b\u309c\u00b4\u00a8\uffe3\u203e"
# Characters NFKC leaves alone that Japanese prose depends on (asserted in tests).
KEPT_BY_NFKC = "「」『』、。〜・ー〃※〝〟―〳〵〴ゝゞヽヾ〈〉《》【】"

# Each protected character stands in for itself during NFKC as a noncharacter
# (U+FDD0…): NFKC leaves noncharacters alone and no real text contains them.
_SENTINELS = [chr(0xFDD0 + i) for i in range(len(PROTECTED))]
_NONCHARACTERS = re.compile("[\ufdd0-\ufdef]")
_LINE_BREAKS = re.compile("\r\n?|[\u2028\u2029\x85]")
_BLANK_LINES = re.compile("\n{3,}")
# Aozora's typed kunoji: the voiced one first, its ／…＼ contains the plain one's pieces.
_KUNOJI = (("／″＼", "〴〵"), ("／＼", "〳〵"))
_IDEOGRAPHIC_SPACE = PROTECTED.index("\u3000")
# Every character str.isspace() knows (all below U+3001), for rstrip(chars).
_WHITESPACE = "".join(char for char in map(chr, range(0x3001)) if char.isspace())
_is_nfkc = unicodedata.is_normalized
_nfkc = unicodedata.normalize
_FULLWIDTH_ASCII = re.compile("[\uff01-\uff5d]")  # ！ … ｝ (～ is already 〜)


def _to_ascii(match: re.Match[str]) -> str:
    return chr(ord(match.group()) - 0xFEE0)


def _nfkc_line(line: str) -> str:
    """NFKC of a line that failed the quick check.

    CPython's NFKC runs at ~4 M characters/s on Japanese text, its quick check
    (``is_normalized``) at hundreds of M/s, and most Japanese lines (kana, kanji,
    、。「」) pass the check. Of the rest, most only hold full-width ASCII
    (``！？（）１２``); mapping those by their fixed offset is NFKC's own mapping,
    and the line then usually passes the check. Whatever still fails (half-width
    kana, ①, ㈱…) goes through NFKC."""
    if _FULLWIDTH_ASCII.search(line):
        line = _FULLWIDTH_ASCII.sub(_to_ascii, line)
        if _is_nfkc("NFKC", line):
            return line
    return _nfkc("NFKC", line)


def normalize(text: str) -> str:
    """NFKC with the Japanese exceptions above, LF line ends, tidy blank lines.

    Idempotent: ``normalize(normalize(t)) == normalize(t)``.

    Example::

        >>> normalize("しと／＼降る雨　ﾊﾟﾗｿﾙ㈱\\n")
        'しと〳〵降る雨\\u3000パラソル(株)'
    """
    if _NONCHARACTERS.search(text):
        text = _NONCHARACTERS.sub("", text)
    if "\r" in text or "\u2028" in text or "\u2029" in text or "\x85" in text:
        text = _LINE_BREAKS.sub("\n", text)
    if "／" in text:
        for typed, mark in _KUNOJI:
            text = text.replace(typed, mark)
    text = text.replace("\uff5e", "\u301c")  # cp932's wave dash → JIS's 〜, before NFKC makes it "~"
    protected = [(char, sentinel) for char, sentinel in zip(PROTECTED, _SENTINELS) if char in text]
    for char, sentinel in protected:
        text = text.replace(char, sentinel)
    # NFKC line by line, and only on lines that need it (see _nfkc_line). A line
    # break never composes with a neighbour, so this equals NFKC of the whole
    # text. Trailing whitespace goes after NFKC, which can create it (NBSP → " ");
    # the protected U+3000 is a sentinel here, so it is named among the
    # whitespace to strip.
    strip = _WHITESPACE + _SENTINELS[_IDEOGRAPHIC_SPACE]
    text = "\n".join(
        [(line if _is_nfkc("NFKC", line) else _nfkc_line(line)).rstrip(strip) for line in text.split("\n")]
    )
    for char, sentinel in protected:
        text = text.replace(sentinel, char)
    if "\n\n\n" in text:
        text = _BLANK_LINES.sub("\n\n", text)
    return text.strip("\n")
