"""Aozora Bunko files (bytes) → clean text: the .txt, its .zip, or the XHTML edition.

The .txt of a work and its XHTML edition give the same ``text``, ``title`` and
``author``: the .txt goes through :func:`gpt2ja.corpus.aozora.strip_notation`, the XHTML
is rendered element by element so that what the converter made of each notation
ends up exactly as the .txt path leaves it (``<br />`` is a line end, ruby keeps
its base, gaiji images become characters, editor notes vanish, block ``div``\\ s
start a new line like the annotation lines they come from).

Example::

    >>> doc = extract_path("examples/aozora-mirror/cards/000879/files/127_ruby_150.zip")
    >>> doc.title, doc.author, doc.edition
    ('羅生門', '芥川龍之介', 'txt')
    >>> doc.text.splitlines()[0][:13]
    '\u3000ある日の暮方の事である。'
"""

from __future__ import annotations

import io
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lxml.etree
import lxml.html

from gpt2ja.corpus.aozora import NOTATION_MARK, gaiji_char, jis_x0213_char, strip_notation, tidy_lines
from gpt2ja.crawler.extract import ExtractError

__all__ = [
    "AozoraText",
    "decode_sjis",
    "extract_path",
    "from_txt",
    "from_xhtml",
    "from_zip",
]

_CP932_STRAY_BYTES = re.compile("[\u0080\uf8f0-\uf8f3]")
_UTF8_BOM = b"\xef\xbb\xbf"
_DECLARED_CHARSET = re.compile(rb"""(?:encoding|charset)\s*=\s*["']?([A-Za-z0-9_.:-]+)""")
_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")
_GAIJI_PNG = re.compile(r"(?<!\d)([12])-(\d{2})-(\d{2})\.png$")
_UCS_PNG = re.compile(r"/u([0-9a-fA-F]{4,6})\.png$")
# Inline markup whose text is notation, not prose: kunten marks (返り点,
# 訓点送り仮名) are ［＃…］ annotations in the .txt and are removed there too.
_NOTATION_CLASSES = frozenset({"kaeriten", "okurigana"})
_SKIPPED_TAGS = frozenset({"rt", "rp", "script", "style"})
# What a damaged or unusual zip raises inside zipfile (truncated data, bad CRC,
# unsupported compression, encryption, …).
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    EOFError,
    zlib.error,
    NotImplementedError,
    RuntimeError,
    OSError,
)
_SUFFIXES = {".txt": "txt", ".zip": "zip", ".html": "xhtml", ".xhtml": "xhtml", ".htm": "xhtml"}


@dataclass
class AozoraText:
    """One Aozora work as clean text.

    ``edition`` is ``"txt"`` (from a .txt or .zip) or ``"xhtml"``; ``encoding``
    the codec that decoded the bytes; ``counts`` the notation found (see
    :func:`gpt2ja.corpus.aozora.strip_notation`); ``meta`` the source name, header
    roles (subtitle, translator…) and, for zips, the member read.
    """

    title: str
    author: str
    text: str
    edition: str
    encoding: str
    counts: dict[str, int] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def decode_sjis(data: bytes, where: str) -> tuple[str, str]:
    """Decode Shift_JIS bytes strictly: cp932 first, then shift_jis_2004.

    cp932 covers what Aozora files use most (NEC/IBM extensions such as ①, Ⅱ,
    髙, 﨑); shift_jis_2004 covers JIS X 0213 characters that cp932 lacks.
    Returns ``(text, codec)``; never inserts U+FFFD.

    Example::

        >>> decode_sjis("①～Ⅱ".encode("cp932"), "x.txt")
        ('①～Ⅱ', 'cp932')

    Raises :class:`ExtractError` naming ``where`` and the offset of the first
    byte that neither codec accepts.
    """
    text, bad = _decode_cp932(data)
    if text is not None:
        return text, "cp932"
    try:
        return data.decode("shift_jis_2004"), "shift_jis_2004"
    except UnicodeDecodeError as error:
        raise ExtractError(
            f"{where}: not Shift_JIS text: byte 0x{data[bad]:02X} at offset {bad} is invalid in cp932 "
            f"(shift_jis_2004 fails at offset {error.start}); "
            "check that the file is a complete, unconverted Aozora download"
        ) from None


def from_txt(data: bytes, where: str) -> AozoraText:
    """Clean text from the bytes of an Aozora .txt (Shift_JIS, CRLF, notation).

    Bytes are decoded by :func:`decode_sjis`; a file that starts with a UTF-8
    BOM (a re-saved copy, never an Aozora download) is read as strict UTF-8.

    Example::

        >>> doc = from_txt("鼻\\r\\n芥川龍之介\\r\\n\\r\\n　禅智内供《ぜんちないぐ》\\r\\n".encode("cp932"), "hana.txt")
        >>> doc.title, doc.text
        ('鼻', '　禅智内供')
    """
    if data.startswith(_UTF8_BOM):
        text, encoding = _decode_strict(data[len(_UTF8_BOM) :], "utf-8", where), "utf-8-sig"
    else:
        text, encoding = decode_sjis(data, where)
    body = strip_notation(text)
    if not body.text:
        raise ExtractError(
            f"{where}: no body text after removing the Aozora header and footer; check that it is an Aozora text"
        )
    return AozoraText(
        title=body.title,
        author=body.author,
        text=body.text,
        edition="txt",
        encoding=encoding,
        counts=body.counts,
        meta={"source": where, "header": body.header},
    )


def from_zip(data: bytes, where: str) -> AozoraText:
    """Clean text from an Aozora text zip: reads its .txt member, ignores images.

    When a zip holds several .txt files the largest is the work (the others are
    readme-like extras) and ``meta["other_txt"]`` lists them.

    Example::

        >>> from_zip(Path("examples/aozora-mirror/cards/000879/files/92_ruby_164.zip").read_bytes(), "92.zip").title
        '蜘蛛の糸'
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = [m for m in archive.infolist() if m.filename.lower().endswith(".txt") and not m.is_dir()]
            if not members:
                names = ", ".join(archive.namelist()) or "nothing"
                raise ExtractError(
                    f"{where}: zip holds no .txt file (it holds {names}); "
                    "download the text zip of the work, not an image or XHTML archive"
                )
            members.sort(key=lambda m: m.file_size, reverse=True)
            raw = archive.read(members[0])
    except _ZIP_ERRORS as error:
        raise ExtractError(
            f"{where}: unreadable zip ({error}); the download is truncated or corrupt, fetch it again"
        ) from None
    doc = from_txt(raw, f"{where}!{members[0].filename}")
    doc.meta["source"] = where
    doc.meta["member"] = members[0].filename
    if len(members) > 1:
        doc.meta["other_txt"] = [m.filename for m in members[1:]]
    return doc


def from_xhtml(data: bytes, where: str) -> AozoraText:
    """Clean text from an Aozora XHTML edition (``cards/NNNNNN/files/W_M.html``).

    Title from ``h1.title``, author from ``h2.author``, text from
    ``div.main_text``; the result equals what :func:`from_txt` gives for the
    .txt of the same work.

    Example::

        >>> doc = from_xhtml(Path("examples/aozora-mirror/cards/000879/files/92_14545.html").read_bytes(), "92.html")
        >>> doc.title, doc.edition, doc.encoding
        ('蜘蛛の糸', 'xhtml', 'cp932')
    """
    text, encoding = _decode_declared(data, where)
    root = _parse_html(text, where)
    main = _first_by_class(root, "div", "main_text")
    if main is None:
        raise ExtractError(
            f'{where}: no <div class="main_text">; this is not an Aozora XHTML edition '
            "(use the card's text zip instead)"
        )
    counts: dict[str, int] = {}
    body = tidy_lines(_render_children(main, counts))
    if not body:
        raise ExtractError(
            f'{where}: <div class="main_text"> is empty; check that the file is a complete Aozora XHTML edition'
        )
    header = _xhtml_header(root)
    return AozoraText(
        title=header.get("title", ""),
        author=header.get("author", ""),
        text=body,
        edition="xhtml",
        encoding=encoding,
        counts=counts,
        meta={"source": where, "header": header},
    )


def extract_path(path: str) -> AozoraText:
    """Extract a local Aozora file, choosing the reader by suffix
    (.txt, .zip, .html/.xhtml/.htm).

    Example::

        >>> extract_path("examples/aozora-mirror/cards/000121/files/4722_13229.html").title
        '売られていった靴'
    """
    file = Path(path)
    kind = _SUFFIXES.get(file.suffix.lower())
    if kind is None:
        raise ExtractError(
            f"{path}: unknown file type {file.suffix or '(no suffix)'!r}; expected .txt, .zip, .html, .xhtml or .htm"
        )
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise ExtractError(f"{path}: no such file; check the path") from None
    except OSError as error:
        raise ExtractError(
            f"{path}: cannot read the file ({error.strerror}); check the path and its permissions"
        ) from None
    reader = {"txt": from_txt, "zip": from_zip, "xhtml": from_xhtml}[kind]
    return reader(data, path)


# --- decoding ----------------------------------------------------------------


def _decode_cp932(data: bytes) -> tuple[str | None, int]:
    """The cp932 text, or None and the offset of the first byte it rejects.

    Python's cp932 also accepts five single bytes that no Shift_JIS text holds
    (0x80, 0xA0, 0xFD-0xFF → U+0080, U+F8F0-U+F8F3): they are refused too, so
    that binary junk cannot pass for text."""
    try:
        text = data.decode("cp932")
    except UnicodeDecodeError as error:
        return None, error.start
    stray = _CP932_STRAY_BYTES.search(text)
    if stray:
        # Every cp932 character re-encodes to as many bytes as it came from.
        return None, len(text[: stray.start()].encode("cp932"))
    return text, -1


def _decode_strict(data: bytes, codec: str, where: str) -> str:
    try:
        return data.decode(codec)
    except UnicodeDecodeError as error:
        raise ExtractError(
            f"{where}: not {codec} text: byte 0x{data[error.start]:02X} at offset {error.start} is invalid; "
            "check the charset the file declares"
        ) from None


def _decode_declared(data: bytes, where: str) -> tuple[str, str]:
    """Decode with the charset the page declares; Shift_JIS (what Aozora declares)
    is decoded as cp932, then shift_jis_2004."""
    match = _DECLARED_CHARSET.search(data[:2048])
    declared = match.group(1).decode("ascii").lower().replace("_", "-") if match else "shift-jis"
    if declared in ("utf-8", "utf8"):
        start = len(_UTF8_BOM) if data.startswith(_UTF8_BOM) else 0
        return _decode_strict(data[start:], "utf-8", where), "utf-8"
    if declared in ("euc-jp", "euc-jis-2004", "euc-jisx0213"):
        return _decode_strict(data, "euc_jis_2004", where), "euc_jis_2004"
    return decode_sjis(data, where)


def _parse_html(text: str, where: str) -> lxml.html.HtmlElement:
    # lxml refuses str input that carries an encoding declaration; the bytes are
    # already decoded, so the declaration has done its job.
    text = _XML_DECLARATION.sub("", text.replace("\r\n", "\n").replace("\r", "\n"), count=1)
    try:
        return lxml.html.document_fromstring(text)
    except (lxml.etree.ParserError, ValueError) as error:
        raise ExtractError(
            f"{where}: cannot parse the HTML ({error}); check that the file is a complete XHTML page"
        ) from None


# --- XHTML rendering ---------------------------------------------------------


class _Lines:
    """Collects rendered text and knows whether the current line is empty, so
    that block elements can start on a new line without adding blank lines."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.at_line_start = True

    def text(self, value: str | None) -> None:
        # Newlines in the page source are formatting (aozora2html writes CRLF
        # after every <br />); only <br /> and blocks make lines.
        value = (value or "").replace("\n", "")
        if value:
            self.parts.append(value)
            self.at_line_start = False

    def line_break(self) -> None:
        self.parts.append("\n")
        self.at_line_start = True

    def mark(self) -> None:
        self.parts.append(NOTATION_MARK)

    def start_line(self) -> None:
        if not self.at_line_start:
            self.line_break()


def _render_children(element: lxml.html.HtmlElement, counts: dict[str, int]) -> str:
    out = _Lines()
    out.text(element.text)
    for child in element:
        _render(child, out, counts)
    return "".join(out.parts)


def _render(element: Any, out: _Lines, counts: dict[str, int]) -> None:
    """Render one element (and its tail) into ``out``."""
    tag = element.tag if isinstance(element.tag, str) else ""  # comments, PIs
    classes = set((element.get("class") or "").split()) if tag else set()
    if not tag or tag in _SKIPPED_TAGS:
        pass
    elif tag == "br":
        out.line_break()
    elif tag == "img":
        _render_img(element, classes, out, counts)
    elif tag == "span" and "notes" in classes:
        _render_note(element, out, counts)
    elif classes & _NOTATION_CLASSES:
        _bump(counts, "annotation")
        out.mark()
    elif tag == "div":
        _render_block(element, out, counts)
    else:
        if tag == "ruby":
            _bump(counts, "ruby")
        out.text(element.text)
        for child in element:
            _render(child, out, counts)
    out.text(element.tail)


def _render_block(element: Any, out: _Lines, counts: dict[str, int]) -> None:
    # A block div is what a one-line or ここから…ここで annotation became: the
    # annotation line itself vanished in the .txt, so the div only has to start
    # and end on a line boundary. An empty div (a page break) is notation only.
    out.start_line()
    before = len(out.parts)
    out.text(element.text)
    for child in element:
        _render(child, out, counts)
    if len(out.parts) == before:
        out.mark()
    out.start_line()


def _render_img(element: Any, classes: set[str], out: _Lines, counts: dict[str, int]) -> None:
    if "gaiji" not in classes:
        _bump(counts, "illustration")
        out.mark()
        return
    char = gaiji_char(element.get("alt") or "") or _gaiji_from_src(element.get("src") or "")
    if char:
        _bump(counts, "gaiji_mapped")
        out.text(char)
    else:
        _bump(counts, "gaiji_dropped")
        out.mark()


def _gaiji_from_src(src: str) -> str | None:
    """Accented letters are drawn as ``gaiji/1-09/1-09-63.png`` with an alt that
    names the letter but gives no code: the file name is the men-ku-ten."""
    match = _GAIJI_PNG.search(src)
    if match:
        return jis_x0213_char(*(int(g) for g in match.groups()))
    match = _UCS_PNG.search(src)
    if match:
        code = int(match.group(1), 16)
        return chr(code) if 0 < code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF else None
    return None


def _render_note(element: Any, out: _Lines, counts: dict[str, int]) -> None:
    """``span.notes`` is an editor note (dropped, like the ［＃…］ it was) or a
    gaiji the converter could not draw: ``［＃「…」、U+6318、…］`` without its ※.
    The latter becomes its character when the note gives a code."""
    note = element.text_content()
    inner = note[2:-1] if note.startswith("［＃") and note.endswith("］") else note
    char = None if "［" in inner else gaiji_char(inner)
    if char:
        _bump(counts, "gaiji_mapped")
        out.text(char)
    else:
        _bump(counts, "annotation")
        out.mark()


def _xhtml_header(root: lxml.html.HtmlElement) -> dict[str, Any]:
    """Title, author and the other header roles from the page's h1/h2 lines,
    named as in :func:`gpt2ja.corpus.aozora.parse_header`."""
    header: dict[str, Any] = {}
    title = _first_by_class(root, "h1", "title")
    if title is not None:
        header["title"] = _inline_text(title)
    for h2 in root.iter("h2"):
        role = (h2.get("class") or "").strip().replace("-", "_")
        if role and role not in header:
            header[role] = _inline_text(h2)
    return header


def _inline_text(element: Any) -> str:
    return tidy_lines(_render_children(element, {}))


def _first_by_class(root: lxml.html.HtmlElement, tag: str, css_class: str) -> Any:
    for element in root.iter(tag):
        if css_class in (element.get("class") or "").split():
            return element
    return None


def _bump(counts: dict[str, int], key: str, by: int = 1) -> None:
    counts[key] = counts.get(key, 0) + by
