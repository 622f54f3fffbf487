"""Aozora text extraction: notation removal, decoding, and the key promise that
the .txt (in its zip) and the XHTML edition of a work give the same text."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import pytest

from gpt2ja.corpus.aozora import gaiji_char, strip_notation
from gpt2ja.crawler.extract import ExtractError
from gpt2ja.crawler.extract.aozora import decode_sjis, extract_path, from_txt, from_xhtml, from_zip

MIRROR = Path(__file__).resolve().parent.parent / "examples" / "aozora-mirror"
XHTML_FILES = sorted(MIRROR.glob("cards/*/files/*.html"))
ZIP_FILES = sorted(MIRROR.glob("cards/*/files/*.zip"))
CARD_ZIP_LINK = re.compile(r'href="\./files/([^"/]+\.zip)"')


def _zip_on_card(xhtml: Path) -> Path:
    """The text zip that the work's card page links, next to the XHTML it also links."""
    work_id = xhtml.name.split("_")[0]
    card = xhtml.parent.parent / f"card{work_id}.html"
    page = card.read_text(encoding="utf-8")
    assert f'href="./files/{xhtml.name}"' in page, f"{card} does not link {xhtml.name}"
    (zip_name,) = set(CARD_ZIP_LINK.findall(page))
    return xhtml.parent / zip_name


def _sjis_text(*lines: str) -> bytes:
    return "\r\n".join(lines).encode("cp932")


# --- the two editions agree ----------------------------------------------------


def test_mirror_has_the_expected_files():
    assert len(XHTML_FILES) == 16
    assert len(ZIP_FILES) == 48


@pytest.mark.parametrize("xhtml", XHTML_FILES, ids=lambda p: p.stem)
def test_txt_and_xhtml_editions_give_the_same_text(xhtml):
    zip_path = _zip_on_card(xhtml)
    txt = extract_path(str(zip_path))
    html = extract_path(str(xhtml))
    assert (txt.edition, html.edition) == ("txt", "xhtml")
    assert (html.title, html.author) == (txt.title, txt.author)
    assert html.text == txt.text


def test_xhtml_gaiji_images_become_characters():
    doc = extract_path(str(MIRROR / "cards/000879/files/92_14545.html"))
    assert doc.text.count("犍陀多") == 17
    assert doc.counts["gaiji_mapped"] == 17
    assert doc.encoding == "cp932"


# --- every zip of the mirror -------------------------------------------------------


@pytest.mark.parametrize("zip_path", ZIP_FILES, ids=lambda p: p.stem)
def test_every_mirror_zip_extracts_clean(zip_path):
    doc = extract_path(str(zip_path))
    assert doc.text.strip()
    assert doc.title and doc.author
    for leftover in ("《", "》", "［＃", "｜", "\ufffd", "底本：", "【テキスト中に現れる記号について】", "\r", "\x00"):
        assert leftover not in doc.text, leftover
    assert not re.search(r"(?m)^-{10,}", doc.text)
    assert all(line == line.rstrip() for line in doc.text.split("\n"))
    assert doc.text == doc.text.strip("\n")


# --- decoding ------------------------------------------------------------------------


def test_cp932_only_characters_decode():
    text = "①～Ⅱ㈱髙﨑"
    assert decode_sjis(text.encode("cp932"), "x.txt") == (text, "cp932")
    # 0x8160 is FULLWIDTH TILDE in cp932 (WAVE DASH U+301C in plain Shift_JIS).
    assert decode_sjis(b"\x81\x60", "x.txt") == ("\uff5e", "cp932")


def test_shift_jis_2004_is_the_fallback():
    data = "犍陀多".encode("shift_jis_2004")
    with pytest.raises(UnicodeDecodeError):
        data.decode("cp932")
    assert decode_sjis(data, "x.txt") == ("犍陀多", "shift_jis_2004")


@pytest.mark.parametrize("data", [b"abc\x81\x20def", b"abc\xffdef"], ids=["bad-trail-byte", "stray-single-byte"])
def test_undecodable_bytes_name_the_file_and_offset(data):
    with pytest.raises(ExtractError, match=r"^broken\.txt: .*offset 3\b") as raised:
        decode_sjis(data, "broken.txt")
    assert "\n" not in str(raised.value)
    with pytest.raises(ExtractError, match=r"broken\.txt"):
        from_txt(data, "broken.txt")


# --- zips and paths --------------------------------------------------------------------


def test_truncated_zip_raises_naming_it():
    data = (MIRROR / "cards/000879/files/127_ruby_150.zip").read_bytes()
    with pytest.raises(ExtractError, match=r"^127_ruby_150\.zip: .*truncated") as raised:
        from_zip(data[: len(data) // 2], "127_ruby_150.zip")
    assert "\n" not in str(raised.value)


def test_zip_images_are_ignored_and_a_zip_without_txt_raises():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("fig01.png", b"\x89PNG\r\n\x1a\n")
        archive.writestr("hana.txt", _sjis_text("鼻", "芥川龍之介", "", "　禅智内供《ぜんちないぐ》の鼻"))
    doc = from_zip(buffer.getvalue(), "hana.zip")
    assert (doc.title, doc.text, doc.meta["member"]) == ("鼻", "　禅智内供の鼻", "hana.txt")

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("fig01.png", b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ExtractError, match=r"^images\.zip: zip holds no \.txt"):
        from_zip(buffer.getvalue(), "images.zip")


def test_extract_path_rejects_missing_and_unknown_files(tmp_path):
    with pytest.raises(ExtractError, match=r"no such file"):
        extract_path(str(tmp_path / "missing.zip"))
    odd = tmp_path / "work.pdf"
    odd.write_bytes(b"%PDF")
    with pytest.raises(ExtractError, match=r"work\.pdf: unknown file type '\.pdf'"):
        extract_path(str(odd))


def test_xhtml_without_main_text_raises():
    page = b'<?xml version="1.0" encoding="Shift_JIS"?><html><body><p>x</p></body></html>'
    with pytest.raises(ExtractError, match=r"^page\.html: no <div class=\"main_text\">"):
        from_xhtml(page, "page.html")


# --- strip_notation on short texts --------------------------------------------------


def _body(*lines: str) -> str:
    return strip_notation("\n".join(["題", "作者", "", *lines])).text


def test_ruby_with_and_without_base_marker():
    body = strip_notation("題\n作者\n\n所々｜丹塗《にぬり》の剥《は》げた")
    assert body.text == "所々丹塗の剥げた"
    assert body.counts["ruby"] == 2


def test_forward_reference_annotation_is_removed():
    assert _body("その時［＃「その時」に傍点］、彼は") == "その時、彼は"


def test_block_annotation_lines_vanish():
    text = _body("前", "［＃ここから２字下げ］", "　中の行", "［＃ここで字下げ終わり］", "［＃改ページ］", "後")
    assert text == "前\n　中の行\n後"


def test_one_line_annotation_keeps_its_text():
    assert _body("［＃８字下げ］一［＃「一」は中見出し］", "", "　本文") == "一\n\n　本文"


def test_gaiji_by_men_ku_ten():
    # The code decides: 2-13-28 is U+63F7 揷 whatever the description says.
    assert gaiji_char("※［＃「てへん＋劣」、第4水準2-13-28］") == "揷" == "\u63f7"
    assert gaiji_char("※［＃「插」でつくりの縦棒が下に突き抜けている、第4水準2-13-28］") == "\u63f7"
    assert gaiji_char("※［＃「てへん＋劣」、1-84-77］") == "挘" == "\u6318"
    body = strip_notation("題\n作者\n\n｜※［＃「特のへん＋廴＋聿」、第3水準1-87-71］陀多《かんだた》")
    assert body.text == "犍陀多" == "\u728d陀多"
    assert body.counts["gaiji_mapped"] == 1


def test_gaiji_by_unicode_and_in_xhtml_alt_form():
    assert gaiji_char("※［＃「さんずい＋散」、U+6F75、36-13］") == "潵" == "\u6f75"
    assert gaiji_char("※(「特のへん＋廴＋聿」、第3水準1-87-71)") == "\u728d"


def test_unmappable_gaiji_is_dropped_with_its_mark():
    body = strip_notation("題\n作者\n\nあ※［＃「口＋世」、ページ数-行数］い※印")
    assert body.text == "あい※印"
    assert body.counts["gaiji_dropped"] == 1
    assert gaiji_char("※［＃「口＋世」、ページ数-行数］") is None


def test_footer_is_cut():
    text = _body("本文の終わり。", "", "", "底本：「全集」筑摩書房", "入力：誰か", "校正：誰か")
    assert text == "本文の終わり。"
    assert _body("本文", "［＃本文終わり］", "付録") == "本文"


def test_header_block_is_cut_and_title_author_read():
    body = strip_notation(
        "\r\n".join(
            [
                "羅生門",
                "芥川龍之介",
                "",
                "-------------------------------------------------------",
                "【テキスト中に現れる記号について】",
                "",
                "《》：ルビ",
                "（例）下人《げにん》",
                "-------------------------------------------------------",
                "",
                "　ある日の暮方の事である。",
                "",
                "底本：「芥川龍之介全集1」",
            ]
        )
    )
    assert (body.title, body.author, body.text) == ("羅生門", "芥川龍之介", "　ある日の暮方の事である。")


def test_header_without_block_and_with_subtitle():
    body = strip_notation("編輯後記\n『青空』記事\n梶井基次郎\n\n　本文。\n")
    assert (body.title, body.author, body.header["subtitle"], body.text) == (
        "編輯後記",
        "梶井基次郎",
        "『青空』記事",
        "　本文。",
    )


def test_translator_line_is_not_the_author():
    body = strip_notation("黒猫\nポー\n佐々木直次郎訳\n\n本文")
    assert (body.author, body.header["translator"]) == ("ポー", "佐々木直次郎訳")


def test_accent_notation():
    assert _body("〔cafe'〕と〔Glu:ckliche Reise !〕と〔ae&on〕") == "caféとGlückliche Reise !とæon"
    assert _body("〔雨ニモマケズ〕〔milieu 環境〕") == "〔雨ニモマケズ〕〔milieu 環境〕"


def test_line_structure_is_kept_and_nothing_is_normalised():
    assert _body("　一行目　 ", "", "二行目ｱ①", "", "") == "　一行目\n\n二行目ｱ①"
