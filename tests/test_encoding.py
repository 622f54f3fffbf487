"""Decoding a user's own text files: never guess when two Japanese encodings both decode the bytes."""

from __future__ import annotations

import pytest

from gpt2ja.crawler.extract import ExtractError
from gpt2ja.crawler.extract.aozora import from_zip
from gpt2ja.crawler.files import AmbiguousEncoding, crawl_files, decode_text
from gpt2ja.infra import storage
from tests.corpora import ZIPS

TEXTS = {
    "short": "今日は良い天気ですね。散歩に行きましょう。",
    "long": "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。" * 20,
    "ascii and a few kana": "Hello world, this is a test. あいう",
    "one kana": "あ",
    "kanji only": "東京都千代田区",
    "cp932 extensions": "①～Ⅱ 髙橋さんの話です。",
    "JIS X 0213": "𠮷野家の「鷗外」を読む。",
}


def _encodable() -> list[tuple[str, str]]:
    pairs = []
    for name, text in TEXTS.items():
        for codec in ("utf-8", "cp932", "shift_jis_2004", "euc_jp"):
            try:
                text.encode(codec)
            except UnicodeEncodeError:
                continue  # e.g. ① is not in EUC-JP
            pairs.append((name, codec))
    return pairs


@pytest.mark.parametrize("name,codec", _encodable())
def test_each_encoding_decodes_back_to_its_text(name, codec):
    text = TEXTS[name]
    data = text.encode(codec)
    got, used = decode_text(data, name)
    assert got == text
    assert used == codec or {used, codec} <= {"cp932", "shift_jis_2004"}  # one family: cp932 is named first


def paragraphs(limit: int = 450) -> list[str]:
    """Every paragraph of up to ``limit`` characters of the bundled works: short files, the hard case."""
    out = []
    for path in ZIPS:
        for para in from_zip(path.read_bytes(), path.name).text.split("\n"):
            if 10 <= len(para.strip()) <= limit:
                out.append(para.strip())
    return out


def test_short_euc_jp_paragraphs_are_never_decoded_as_mojibake():
    """Each short EUC-JP paragraph is decoded right or refused as ambiguous, never kept as Shift_JIS mojibake."""
    seen = right = ambiguous = also_sjis = 0
    for para in paragraphs():
        try:
            data = para.encode("euc_jp")
        except UnicodeEncodeError:
            continue
        if para.isascii():
            continue
        seen += 1
        try:
            data.decode("shift_jis_2004")
            also_sjis += 1  # the hard case: Shift_JIS decodes these bytes too
        except UnicodeDecodeError:
            pass
        try:
            text, codec = decode_text(data, "p.txt")
        except AmbiguousEncoding:
            ambiguous += 1
            continue
        assert (text, codec) == (para, "euc_jp"), para
        right += 1
    assert seen >= 150 and also_sjis >= 20 and right >= 0.95 * seen, (seen, also_sjis, right, ambiguous)


def test_too_little_evidence_is_dropped_as_ambiguous_encoding(tmp_path):
    src = tmp_path / "mine"
    src.mkdir()
    (src / "kana.txt").write_bytes("ｱｲ".encode("cp932"))  # half-width katakana, or one EUC-JP kanji?
    (src / "good.txt").write_bytes(TEXTS["short"].encode("euc_jp"))
    (src / "binary.txt").write_bytes(b"\xff\xfe\x00\x81")
    out = crawl_files(str(src), str(tmp_path / "root"), "c")
    counts = storage.read_manifest(out)["counts"]
    assert counts["documents"] == 1
    assert counts["drops"] == {"ambiguous_encoding": 1, "undecodable": 1}
    with pytest.raises(ExtractError, match="not UTF-8"):
        decode_text(b"\xff\xfe\x00\x81", "binary.txt")
