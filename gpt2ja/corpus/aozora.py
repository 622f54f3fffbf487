"""Remove Aozora Bunko notation from the decoded text of an Aozora ``.txt`` file.

Pure text functions: no I/O, no HTML, no Unicode normalisation (NFKC happens
later, in the clean stage). Decoding bytes and reading zips/XHTML live in
:mod:`gpt2ja.crawler.extract.aozora`.

What is removed (see https://www.aozora.gr.jp/annotation/ for the notation):

* the header: title/author lines, then the ``-------`` block that explains the
  notation (``【テキスト中に現れる記号について】``, or an early ``［表記について］``
  list closed by one rule); title, author and other roles go to ``header``;
* the footer: the first line starting with ``底本：`` (or a ``［＃本文終わり］``
  line, or a rule followed by the typist's ``●入力者注`` glossary) and
  everything after it;
* ruby ``《…》`` and every ``｜`` (Aozora's converter never prints ``｜``: it only
  marks where a ruby base starts); the base is kept;
* annotations ``［＃…］``; a line made only of annotations disappears;
  ``5［＃「5」はローマ数字、1-13-25］`` puts the coded character (Ⅴ) in place;
* gaiji ``※［＃…］``: replaced by the character when the note gives a JIS X 0213
  men-ku-ten or a ``U+XXXX`` code point, dropped otherwise;
* accent notation ``〔cafe'〕`` → ``café`` (Aozora's accent table); brackets with
  nothing to convert (``〔雨ニモマケズ〕``) stay as they are.

Example::

    >>> body = strip_notation("羅生門\\n芥川龍之介\\n\\n　下人《げにん》が［＃「下人」に傍点］\\n\\n底本：…\\n")
    >>> body.title, body.author, body.text
    ('羅生門', '芥川龍之介', '　下人が')
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = [
    "AozoraBody",
    "NOTATION_MARK",
    "convert_accents",
    "gaiji_char",
    "jis_x0213_char",
    "parse_header",
    "strip_inline",
    "strip_notation",
    "tidy_lines",
]

# Stands where notation was removed, until tidy_lines() decides whether the line
# it sits on was made only of notation (then the whole line goes). NUL never
# occurs in Aozora text, and both the .txt and the XHTML path use the same mark,
# so both editions are tidied by the same rule.
NOTATION_MARK = "\x00"

_RULE = re.compile(r"^-{10,}\s*$")
_FOOTER_START = re.compile(r"^(底本：|［＃本文終わり］)")
_OLD_NOTATION_BLOCK = ("［表記について］", "【表記について】")
_TRANSCRIBER_NOTES = ("●入力者注", "［入力者注］", "【入力者注】")
_RUBY = re.compile(r"《[^《》\n]+》")
# A ｜ marks where the base of a later ruby on the same line starts.
_RUBY_BAR = re.compile(r"｜(?=[^｜《》\n]*《[^《》\n]+》)")
_KUTEN = re.compile(r"(?<![\d-])([12])-(\d{1,2})-(\d{1,2})(?![\d-])")
_UCS = re.compile(r"U\+([0-9A-Fa-f]{4,6})")
_REFERENCE_CODE = re.compile(r"［＃「([^「」［］\n]+)」は[^「」［］\n]*?(?<![\d-])([12])-(\d{1,2})-(\d{1,2})］")
_ACCENT_SPAN = re.compile(r"〔([^〔〕\n]*)〕")

# Aozora's accent decomposition table (accent_separation.html, as implemented by
# aozora2html's accent_table.yml): letter + mark → the JIS X 0213 character.
_ACCENTS: dict[str, str] = {
    **{f"{a}`": b for a, b in zip("AEIOUaeiou", "ÀÈÌÒÙàèìòù")},
    **{f"{a}'": b for a, b in zip("AEIOUYaeiouy", "ÁÉÍÓÚÝáéíóúý")},
    **{f"{a}^": b for a, b in zip("AEIOUaeiou", "ÂÊÎÔÛâêîôû")},
    **{f"{a}:": b for a, b in zip("AEIOUaeiouy", "ÄËÏÖÜäëïöüÿ")},
    **{f"{a}~": b for a, b in zip("ANOano", "ÃÑÕãñõ")},
    **{f"{a}_": b for a, b in zip("AEIOUaeiou", "ĀĒĪŌŪāēīōū")},
    "A&": "Å",
    "a&": "å",
    "s&": "ß",
    "AE&": "Æ",
    "ae&": "æ",
    "OE&": "Œ",
    "oe&": "œ",
    "C,": "Ç",
    "c,": "ç",
    "O/": "Ø",
    "o/": "ø",
    "!@": "¡",
    "?@": "¿",
}

# Header lines that name someone other than the author (aozora2html's rules).
_EDITOR_TRANSLATOR = re.compile(r"編訳$")
_TRANSLATOR = re.compile(r"訳$")
_EDITOR = re.compile(r"(校訂|編|編集)$")


@dataclass
class AozoraBody:
    """The body of an Aozora text with its notation removed.

    ``header`` holds every header line (``lines``) and the roles found in them
    (``title``, ``author``, ``subtitle``, ``original_title``, ``translator``…);
    ``counts`` says how much notation of each kind was found.
    """

    title: str
    author: str
    text: str
    counts: dict[str, int] = field(default_factory=dict)
    header: dict[str, Any] = field(default_factory=dict)


def strip_notation(text: str) -> AozoraBody:
    """Split an Aozora text into header, body and footer, and clean the body.

    ``text`` is the decoded ``.txt`` (CRLF or LF). The result keeps the line
    structure: LF endings, no trailing whitespace, no leading/trailing blank
    lines, indentation ``　`` kept.

    Example::

        >>> strip_notation("鼻\\n芥川龍之介\\n\\n　禅智内供《ぜんちないぐ》の鼻と云えば\\n").text
        '　禅智内供の鼻と云えば'
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    header_lines, body_start, rule_closed = _split_header(lines)
    body_lines = _cut_footer(lines[body_start:])
    counts: dict[str, int] = {}
    body = tidy_lines(strip_inline("\n".join(body_lines), counts))
    header = parse_header([tidy_lines(strip_inline(line, {})) for line in header_lines])
    if not rule_closed:
        header["unclosed_rule_block"] = True
    return AozoraBody(
        title=header.get("title", ""),
        author=header.get("author", ""),
        text=body,
        counts=counts,
        header=header,
    )


def strip_inline(text: str, counts: dict[str, int]) -> str:
    """Remove gaiji, annotations, ruby and accent notation; count what was found.

    Removed annotations leave :data:`NOTATION_MARK`; pass the result through
    :func:`tidy_lines` to drop annotation-only lines and the marks.

    Example::

        >>> strip_inline("所々｜丹塗《にぬり》の", {})
        '所々丹塗の'
    """
    # Order matters: a gaiji note is itself ［＃…］, so gaiji go before
    # annotations, and so do the coded references that put a character in
    # place; an annotation may quote ruby, so annotations go before ruby;
    # accents are matched on what the reader sees, so they come last.
    text = _replace_bracketed(text, "※［＃", lambda note: _gaiji_replacement(note, counts))
    text = _substitute_references(text, counts)
    text = _replace_bracketed(text, "［＃", lambda note: _annotation_replacement(note, counts))
    unclosed = text.count("［＃")
    if unclosed:
        # A typo such as ［＃「…」に傍点」 never closes; it stays, counted.
        _bump(counts, "annotation_unclosed", unclosed)
    text = _strip_ruby(text, counts)
    return _ACCENT_SPAN.sub(lambda m: _accent_replacement(m.group(1), counts), text)


def tidy_lines(text: str) -> str:
    """Drop lines made only of removed notation, strip trailing whitespace and
    leading/trailing blank lines. Shared by the .txt and the XHTML path so that
    both editions end up with the same line structure.

    Example::

        >>> tidy_lines("\\n\\x00\\n　本文\\x00  \\n\\n")
        '　本文'
    """
    kept = []
    for line in text.split("\n"):
        if NOTATION_MARK in line and not line.replace(NOTATION_MARK, "").strip():
            continue
        kept.append(line.replace(NOTATION_MARK, "").rstrip())
    while kept and not kept[0]:
        kept.pop(0)
    while kept and not kept[-1]:
        kept.pop()
    return "\n".join(kept)


def gaiji_char(note: str) -> str | None:
    """The character a gaiji note stands for, or None when it gives no code.

    ``note`` is the note with or without its wrapping (``※［＃…］`` in a .txt,
    ``※(…)`` in an XHTML ``alt``). A JIS X 0213 men-ku-ten wins over ``U+XXXX``
    (as in Aozora's own converter); notes marked 非0213外字, or that describe
    a glyph made of two ※ characters, are not mapped by men-ku-ten.

    Example::

        >>> gaiji_char("※［＃「特のへん＋廴＋聿」、第3水準1-87-71］")
        '犍'
        >>> gaiji_char("※［＃「てへん＋劣」、U+6318、ページ数-行数］")
        '挘'
        >>> gaiji_char("※［＃「口＋世」、ページ数-行数］") is None
        True
    """
    desc = note.replace("「※」は", "").replace("「※」の", "")
    if desc.startswith("※"):
        desc = desc[1:]
    if "非0213外字" not in desc and desc.count("※") < 2:
        match = _KUTEN.search(desc)
        if match:
            char = jis_x0213_char(*(int(g) for g in match.groups()))
            if char:
                return char
    match = _UCS.search(desc)
    if match:
        code = int(match.group(1), 16)
        if 0 < code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF:
            return chr(code)
    return None


def jis_x0213_char(plane: int, row: int, cell: int) -> str | None:
    """The Unicode text of JIS X 0213 plane-row-cell, or None if unassigned.

    Python's ``euc_jis_2004`` codec holds the mapping: plane 1 is the two bytes
    (0xA0+row, 0xA0+cell), plane 2 the three bytes (0x8F, 0xA0+row, 0xA0+cell).
    A few cells map to two code points (e.g. か + combining mark).

    Example::

        >>> jis_x0213_char(1, 87, 71)
        '犍'
    """
    if plane not in (1, 2) or not (1 <= row <= 94 and 1 <= cell <= 94):
        return None
    raw = bytes([0xA0 + row, 0xA0 + cell])
    if plane == 2:
        raw = b"\x8f" + raw
    try:
        return raw.decode("euc_jis_2004")
    except UnicodeDecodeError:
        return None


def convert_accents(segment: str) -> tuple[str, int]:
    """Apply Aozora's accent table to the inside of one ``〔…〕``.

    Returns the converted text and the number of accented letters made.

    Example::

        >>> convert_accents("cafe'")
        ('café', 1)
    """
    out: list[str] = []
    made = 0
    i = 0
    while i < len(segment):
        for width in (3, 2):
            accented = _ACCENTS.get(segment[i : i + width])
            if accented:
                out.append(accented)
                made += 1
                i += width
                break
        else:
            out.append(segment[i])
            i += 1
    return "".join(out), made


def parse_header(lines: list[str]) -> dict[str, Any]:
    """Name the roles of the header lines (title first, then subtitle, author…).

    Follows Aozora's converter: a line in Latin letters after the title is the
    original title; a line ending in 訳 / 編訳 / 編・編集・校訂 names a
    translator / editor-translator / editor, and the author is the line before
    it; otherwise the last line is the author.

    Example::

        >>> parse_header(["編輯後記", "『青空』記事", "梶井基次郎"])["subtitle"]
        '『青空』記事'
    """
    lines = [line for line in lines if line]
    header: dict[str, Any] = {"lines": list(lines)}
    if not lines:
        return header
    header["title"] = lines[0]
    middle = lines[1:]
    # The last line names a person; when it is a translator or editor, the
    # line before it is the author. What lies between is (original) subtitle.
    if middle:
        last = middle.pop()
        role = _person_role(last)
        if role != "author" and middle:
            header["author"] = middle.pop()
        header[role] = last
    if middle and _is_latin_line(middle[0]):
        header["original_title"] = middle.pop(0)
    if middle:
        header["subtitle"] = middle.pop(0)
    if middle:
        header["original_subtitle"] = middle.pop(0)
    if middle:
        header["other"] = middle
    return header


# --- helpers -----------------------------------------------------------------


def _split_header(lines: list[str]) -> tuple[list[str], int, bool]:
    """Header lines, the index where the body starts, and whether a notation
    block that was opened was also closed."""
    end = 0
    while end < len(lines) and lines[end].strip() and not _RULE.match(lines[end]):
        end += 1
    header = lines[:end]
    start, closed = end, True
    i = _skip_blank(lines, end)
    if i < len(lines) and _RULE.match(lines[i]):
        closing = _next_rule(lines, i + 1)
        start, closed = (closing + 1, True) if closing >= 0 else (i + 1, False)
    # Some early texts explain their notation in a ［表記について］ list that
    # only a closing rule ends (with or without the usual block before it).
    i = _skip_blank(lines, start)
    if i < len(lines) and lines[i].startswith(_OLD_NOTATION_BLOCK):
        closing = _next_rule(lines, i + 1)
        if closing >= 0:
            start = closing + 1
    return header, start, closed


def _cut_footer(lines: list[str]) -> list[str]:
    for i, line in enumerate(lines):
        if _FOOTER_START.match(line) or (_RULE.match(line) and _starts_transcriber_notes(lines, i + 1)):
            return lines[:i]
    return lines


def _starts_transcriber_notes(lines: list[str], index: int) -> bool:
    """A rule followed by ●入力者注 starts the typist's glossary, placed between
    the work and the 底本 footer in some texts; it is not part of the work."""
    i = _skip_blank(lines, index)
    return i < len(lines) and lines[i].startswith(_TRANSCRIBER_NOTES)


def _skip_blank(lines: list[str], index: int) -> int:
    while index < len(lines) and not lines[index].strip():
        index += 1
    return index


def _next_rule(lines: list[str], index: int) -> int:
    for j in range(index, len(lines)):
        if _RULE.match(lines[j]):
            return j
    return -1


def _replace_bracketed(text: str, opener: str, replace: Callable[[str], str]) -> str:
    """Replace every ``opener…］`` (nesting ［］ allowed, never across a line)
    by ``replace(note)``, where ``note`` is what lies between ``［`` and ``］``.
    An unclosed opener is left as it is."""
    out: list[str] = []
    pos = 0
    while True:
        start = text.find(opener, pos)
        if start < 0:
            break
        inner_start = start + len(opener) - 1  # index of the ＃ after ［
        end = _matching_bracket(text, inner_start - 1)
        if end < 0:
            out.append(text[pos : start + len(opener)])
            pos = start + len(opener)
            continue
        out.append(text[pos:start])
        out.append(replace(text[inner_start:end]))
        pos = end + 1
    out.append(text[pos:])
    return "".join(out)


def _matching_bracket(text: str, open_index: int) -> int:
    depth = 0
    for i in range(open_index, len(text)):
        ch = text[i]
        if ch == "［":
            depth += 1
        elif ch == "］":
            depth -= 1
            if depth == 0:
                return i
        elif ch == "\n":
            return -1
    return -1


def _gaiji_replacement(note: str, counts: dict[str, int]) -> str:
    char = gaiji_char(note)
    if char is None:
        _bump(counts, "gaiji_dropped")
        return NOTATION_MARK
    _bump(counts, "gaiji_mapped")
    return char


def _substitute_references(text: str, counts: dict[str, int]) -> str:
    """``5［＃「5」はローマ数字、1-13-25］`` says the quoted text just before the
    note stands for a JIS X 0213 character: put the character in its place."""
    out: list[str] = []
    pos = 0
    for match in _REFERENCE_CODE.finditer(text):
        target, before = match.group(1), text[pos : match.start()]
        char = jis_x0213_char(*(int(g) for g in match.group(2, 3, 4)))
        if char and before.endswith(target):
            out.append(before[: -len(target)] + char)
            _bump(counts, "reference_mapped")
        else:
            out.append(text[pos : match.end()])
        pos = match.end()
    out.append(text[pos:])
    return "".join(out)


def _annotation_replacement(note: str, counts: dict[str, int]) -> str:
    _bump(counts, "annotation")
    body = note.lstrip("＃")
    if body.startswith("「"):
        _bump(counts, "annotation_reference")
    elif body.startswith(("ここから", "ここで")):
        _bump(counts, "annotation_block")
    elif body in ("改ページ", "改丁", "改段", "改見開き"):
        _bump(counts, "page_break")
    return NOTATION_MARK


def _strip_ruby(text: str, counts: dict[str, int]) -> str:
    text = _RUBY_BAR.sub("", text)
    text, found = _RUBY.subn("", text)
    if found:
        _bump(counts, "ruby", found)
    stray = text.count("｜")
    if stray:
        # Aozora's converter never prints ｜: it only marks where a ruby base starts.
        _bump(counts, "stray_ruby_bar", stray)
        text = text.replace("｜", "")
    return text


def _accent_replacement(inner: str, counts: dict[str, int]) -> str:
    converted, made = convert_accents(inner)
    if not made:
        return f"〔{inner}〕"
    _bump(counts, "accent", made)
    return converted


def _person_role(line: str) -> str:
    if _EDITOR.search(line):
        return "editor"
    if _EDITOR_TRANSLATOR.search(line):
        return "editor_translator"
    if _TRANSLATOR.search(line):
        return "translator"
    return "author"


def _is_latin_line(line: str) -> bool:
    """True for a line in ASCII, full-width ASCII symbols or Greek/Cyrillic:
    what Aozora's converter takes for an original (foreign) title."""
    for ch in line:
        try:
            code = int.from_bytes(ch.encode("cp932"), "big")
        except UnicodeEncodeError:
            return False
        if not (code <= 0x7F or 0x8140 <= code <= 0x8258 or 0x839F <= code <= 0x8491):
            return False
    return True


def _bump(counts: dict[str, int], key: str, by: int = 1) -> None:
    counts[key] = counts.get(key, 0) + by


_AOZORA_MARKS = re.compile(r"《[^》\n]+》|［＃[^］\n]+］|^底本：", re.MULTILINE)


def looks_like_aozora(text: str) -> bool:
    """Whether a text carries Aozora notation (ruby 《》, ［＃…］ notes or a 底本： footer)."""
    return _AOZORA_MARKS.search(text) is not None
