"""Normalisation and the Japanese quality filters of the clean stage.

Each filter gets one text it keeps and one it drops, with the exact reason;
the presets are checked on real Aozora works from the bundled mirror (the
literature preset keeps 宮沢賢治's all-katakana 〔雨ニモマケズ〕, which a web
hiragana floor drops).

Calibration on ../shared/aozora-bulk (2,058 works; /tmp probe, not committed):
the literature preset drops 3 works, all for low_japanese_ratio, and all
English: PROFESSOR TAKEMATU OKADA (寺田寅彦), Buying Mittens and Afterlife
(OKUBO Yu's translations). The web preset drops 557 (27 %), mostly for
long_max_sentence (314) and too_short (176): it is not meant for literature.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest
from pydantic import ValidationError

from gpt2ja.corpus.document import Document
from gpt2ja.corpus.filters import (
    PRESETS,
    DupLineCharFraction,
    DupLineFraction,
    DupNgramFraction,
    DupParagraphCharFraction,
    DupParagraphFraction,
    HighKatakanaRatio,
    LongMaxSentence,
    LongMeanSentence,
    LowHiraganaRatio,
    LowJapaneseRatio,
    LowKanaRatio,
    NgWords,
    QualityConfig,
    TextStats,
    TooShort,
    TopNgramFraction,
    build_filters,
    first_failure,
    preset_for_source,
)
from gpt2ja.corpus.normalize import KEPT_BY_NFKC, PROTECTED, normalize
from gpt2ja.crawler.extract.aozora import from_zip

MIRROR = Path(__file__).resolve().parent.parent / "examples" / "aozora-mirror"
AME_NIMO_MAKEZU = MIRROR / "cards/000081/files/45630_txt_23610.zip"
RASHOMON = MIRROR / "cards/000879/files/127_ruby_150.zip"

# Real prose (芥川龍之介「羅生門」, the first three paragraphs, about 470 characters), normalised.
PROSE = (
    "\u3000ある日の暮方の事である。一人の下人が、羅生門の下で雨やみを待っていた。\n"
    "\u3000広い門の下には、この男のほかに誰もいない。ただ、所々丹塗の剥げた、大きな円柱に、"
    "蟋蟀が一匹とまっている。羅生門が、朱雀大路にある以上は、この男のほかにも、"
    "雨やみをする市女笠や揉烏帽子が、もう二三人はありそうなものである。"
    "それが、この男のほかには誰もいない。\n"
    "\u3000何故かと云うと、この二三年、京都には、地震とか辻風とか火事とか饑饉とか云う災がつづいて起った。"
    "そこで洛中のさびれ方は一通りではない。旧記によると、仏像や仏具を打砕いて、その丹がついたり、"
    "金銀の箔がついたりした木を、路ばたにつみ重ねて、薪の料に売っていたと云う事である。"
    "洛中がその始末であるから、羅生門の修理などは、元より誰も捨てて顧る者がなかった。"
    "するとその荒れ果てたのをよい事にして、狐狸が棲む。盗人が棲む。"
    "とうとうしまいには、引取り手のない死人を、この門へ持って来て、棄てて行くと云う習慣さえ出来た。"
    "そこで、日の目が見えなくなると、誰でも気味を悪るがって、"
    "この門の近所へは足ぶみをしない事になってしまったのである。"
)
CHINESE = "我们今天去公园散步。天气很好，阳光明媚，孩子们在草地上玩耍。老人坐在长椅上看报纸，年轻人在湖边跑步。"
ENGLISH = "The quick brown fox jumps over the lazy dog, and then it rests in the shade of an old tree. "


def doc(text: str, source: str = "web") -> Document:
    return Document.new(source=source, url=f"https://example.jp/{abs(hash(text))}", text=text)


def aozora_doc(path: Path) -> Document:
    work = from_zip(path.read_bytes(), str(path))
    return Document.new(source="aozora", url=str(path), title=work.title, text=normalize(work.text))


# --- normalize --------------------------------------------------------------------


def test_nfkc_folds_width_and_compatibility_forms():
    assert normalize("ＡＢＣ１２３") == "ABC123"
    assert normalize("ｶﾞｷﾞﾊﾟ") == "ガギパ"
    assert normalize("㈱と㌔") == "(株)とキロ"
    assert normalize("本当！？（笑）") == "本当!?(笑)"
    assert normalize("ＡＢＣ ｶﾞ！①") == "ABC ガ!1"  # the full-width shortcut and full NFKC on one line


def test_dakuten_survive_composed():
    assert normalize("がぎぐげご") == "がぎぐげご"
    assert [len(normalize(c)) for c in "がパ"] == [1, 1]  # never decomposed (no NFD/NFKD)
    assert normalize("か\u3099") == "が"  # a combining mark is composed


def test_ellipses_are_kept():
    assert normalize("そうか…‥") == "そうか…‥"
    assert unicodedata.normalize("NFKC", "…") == "..."  # what the exception prevents


def test_wave_dash_becomes_jis_wave_dash_not_ascii_tilde():
    assert normalize("10時\uff5e12時") == "10時\u301c12時"
    assert normalize("\u301c") == "\u301c"


def test_ideographic_space_is_kept_at_line_start_and_inside_lines():
    assert normalize("\u3000吾輩は猫である。\n\u3000名前は？\u3000まだ無い。") == (
        "\u3000吾輩は猫である。\n\u3000名前は?\u3000まだ無い。"
    )
    assert normalize("行末の空白\u3000\u3000\n次") == "行末の空白\n次"  # trailing ones go


def test_kunoji_becomes_the_unicode_repetition_mark():
    assert normalize("雨がしと／＼降る。ツク／″＼思った。") == "雨がしと〳〵降る。ツク〴〵思った。"


def test_spacing_voiced_marks_are_not_split_into_space_and_combining_mark():
    assert normalize("あ゛゜´¨￣") == "あ゛゜´¨￣"
    assert unicodedata.normalize("NFKC", "゛") == " \u3099"  # what the exception prevents


def test_japanese_punctuation_is_left_alone():
    assert all(unicodedata.normalize("NFKC", c) == c for c in KEPT_BY_NFKC)
    assert normalize(KEPT_BY_NFKC) == KEPT_BY_NFKC
    assert normalize("「はい」『いいえ』、。") == "「はい」『いいえ』、。"
    assert set(PROTECTED) & set(KEPT_BY_NFKC) == set()


def test_lines_are_tidied():
    raw = "\r\n\r\n\u3000一行目。  \r\n二行目\u2028三行目\r\r\r\r\n四行目\t\n\n\n"
    assert normalize(raw) == "\u3000一行目。\n二行目\n三行目\n\n四行目"


def test_no_neologdn_style_deletions():
    assert normalize("わーーーい〜〜 ABC DEF") == "わーーーい〜〜 ABC DEF"


def test_noncharacters_are_removed():
    assert normalize("あ\ufdd0い\ufdefう") == "あいう"


def test_normalize_is_idempotent_on_a_real_work():
    text = aozora_doc(RASHOMON).text
    assert normalize(text) == text
    assert text.startswith("\u3000ある日の暮方の事である。")


# --- statistics ---------------------------------------------------------------------


def test_character_classes_and_denominator():
    stats = TextStats("\u3000ひらがなカタカナ漢字々、。・\n𠮷野家ABC ー")
    # counted = all but whitespace (U+3000, LF, space)
    assert stats.counted == 4 + 4 + 3 + 3 + 3 + 3 + 1
    assert (stats.hiragana, stats.katakana, stats.kanji) == (4, 4 + 1, 3 + 3)
    assert stats.japanese == stats.counted - 3  # everything but ABC


def test_lone_surrogates_do_not_break_the_statistics():
    assert TextStats("あ\udc80い").counted == 3


def test_sentences_split_on_japanese_and_ascii_ends_and_lines():
    assert TextStats(normalize("本当！？嘘?そう。\n行末なし\n\n")).sentence_lengths.tolist() == [2, 1, 2, 4]


def test_ngram_statistics_read_a_bounded_sample():
    stats = TextStats("あいうえおかきくけこ" * 10_000)
    assert len(stats.ngram_sample(4_000)) == 4_000
    # each 4-gram starts every 10 characters: its occurrences cover 4 in 10
    assert stats.top_ngram_fraction(4, 4_000) == pytest.approx(0.4)


# --- each filter: one keep, one drop ----------------------------------------------


def test_too_short():
    assert TooShort(20).filter(doc(PROSE)) == (True, None)
    assert TooShort(20).filter(doc("吾輩は猫である。\n\n\u3000名前は")) == (False, "too_short")


def test_low_japanese_ratio():
    assert LowJapaneseRatio(0.5).filter(doc(PROSE)) == (True, None)
    assert LowJapaneseRatio(0.5).filter(doc(ENGLISH + "（日本語の注）")) == (False, "low_japanese_ratio")


def test_low_hiragana_ratio():
    assert LowHiraganaRatio(0.2).filter(doc(PROSE)) == (True, None)
    assert LowHiraganaRatio(0.2).filter(doc(CHINESE)) == (False, "low_hiragana_ratio")


def test_low_kana_ratio():
    assert LowKanaRatio(0.1).filter(doc("雨ニモマケズ\n風ニモマケズ\n雪ニモ夏ノ暑サニモマケヌ")) == (True, None)
    assert LowKanaRatio(0.1).filter(doc(CHINESE)) == (False, "low_kana_ratio")


def test_high_katakana_ratio():
    assert HighKatakanaRatio(0.5).filter(doc(PROSE)) == (True, None)
    stuffed = "スマートフォンケース アイフォンカバー タブレットケース バッテリーチャージャー 送料無料"
    assert HighKatakanaRatio(0.5).filter(doc(stuffed)) == (False, "high_katakana_ratio")


def test_long_mean_sentence():
    assert LongMeanSentence(90).filter(doc(PROSE)) == (True, None)
    menu = "トップページ 会社概要 採用情報 お問い合わせ サイトマップ プライバシーポリシー " * 3
    assert LongMeanSentence(90).filter(doc(menu)) == (False, "long_mean_sentence")


def test_long_max_sentence():
    assert LongMaxSentence(200).filter(doc(PROSE)) == (True, None)
    rambling = PROSE + "そして彼は歩き、" * 30 + "門の下に立った。"
    assert LongMaxSentence(200).filter(doc(rambling)) == (False, "long_max_sentence")


def test_dup_line_fraction():
    assert DupLineFraction(0.375).filter(doc("ホーム\n新着情報\n本文です。")) == (True, None)
    nav = "ホーム\nログイン\n新着情報\nホーム\nログイン\n新着情報\n本文です。"  # 3 of 7 lines repeat
    assert DupLineFraction(0.375).filter(doc(nav)) == (False, "dup_line_fraction")


def test_dup_line_char_fraction():
    notice = "この記事は会員限定です。続きを読むにはログインしてください。"
    text = "\n".join([notice, "一", "二", "三", "四", "五", "六", "七", "八", notice])  # 1 of 10 lines repeats
    assert DupLineFraction(0.375).filter(doc(text)) == (True, None)
    assert DupLineCharFraction(0.2).filter(doc(text)) == (False, "dup_line_char_fraction")
    assert DupLineCharFraction(0.2).filter(doc(PROSE)) == (True, None)


def test_dup_paragraph_fraction():
    assert DupParagraphFraction(0.3).filter(doc("広告です。\n\n本文一。\n\n本文二。")) == (True, None)
    ads = "広告です。\n\n本文一。\n\n広告です。\n\n本文二。\n\n広告です。"  # 2 of 5 repeat
    assert DupParagraphFraction(0.3).filter(doc(ads)) == (False, "dup_paragraph_fraction")


def test_dup_paragraph_char_fraction():
    block = "この商品は送料無料でお届けします。\nご注文は二十四時間受け付けています。"
    text = "\n\n".join([block, "一", "二", "三", "四", block])  # 1 of 6 paragraphs repeats
    assert DupParagraphFraction(0.3).filter(doc(text)) == (True, None)
    assert DupParagraphCharFraction(0.2).filter(doc(text)) == (False, "dup_paragraph_char_fraction")
    assert DupParagraphCharFraction(0.2).filter(doc(PROSE)) == (True, None)


def test_top_ngram_fraction():
    web = PRESETS["web"]
    top = TopNgramFraction(web.max_top_ngram_fraction, web.ngram_sample_chars)
    assert top.filter(doc(PROSE)) == (True, None)
    stuffed = "格安航空券なら当サイト。格安航空券の予約、格安航空券の比較、格安航空券の最安値。格安航空券を探すなら今。"
    assert top.filter(doc(stuffed)) == (False, "top_ngram_fraction")


def test_dup_ngram_fraction():
    web = PRESETS["web"]
    dup = DupNgramFraction(web.max_dup_ngram_fraction, web.ngram_sample_chars)
    assert dup.filter(doc(PROSE)) == (True, None)
    sentences = [
        "今日は晴れて暖かい一日でした。",
        "駅前の店で新しい本を買いました。",
        "夕方から友人と映画を見に行きました。",
    ]
    copied = "".join(sentences * 2)  # every sentence twice: half the text repeats
    assert dup.measure(TextStats(copied))[20] == pytest.approx(0.5, abs=0.02)
    assert dup.filter(doc(copied)) == (False, "dup_ngram_fraction")


def test_ng_words():
    ng = NgWords(["死ね", "殺す"], maximum=0.0)
    assert ng.filter(doc(PROSE)) == (True, None)
    assert ng.filter(doc(PROSE + "お前なんか死ね。")) == (False, "ng_words")
    assert NgWords(["死ね"], maximum=0.05).filter(doc(PROSE + "死ね")) == (True, None)  # 2 of ~470 characters


# --- presets ---------------------------------------------------------------------------


def test_presets_validate_and_round_trip():
    assert set(PRESETS) == {"web", "literature"}
    for cfg in PRESETS.values():
        assert QualityConfig.model_validate(cfg.model_dump()) == cfg
        assert QualityConfig.model_validate_json(cfg.model_dump_json()) == cfg  # as a manifest stores it
    assert PRESETS["web"].min_chars == 400 and PRESETS["web"].min_hiragana_ratio == 0.2
    assert PRESETS["web"].max_katakana_ratio == 0.5 and PRESETS["web"].min_japanese_ratio == 0.5
    assert PRESETS["web"].max_dup_line_fraction == 0.375


def test_a_bad_threshold_names_the_field():
    with pytest.raises(ValidationError) as error:
        QualityConfig.preset("web", min_hiragana_ratio=1.5)
    assert error.value.errors()[0]["loc"] == ("min_hiragana_ratio",)
    with pytest.raises(ValidationError) as error:
        QualityConfig.preset("literature", max_top_ngram_fraction={4: 1.5})
    assert error.value.errors()[0]["loc"][0] == "max_top_ngram_fraction"
    with pytest.raises(ValidationError, match="min_hiragana_ration"):
        QualityConfig.preset("web", min_hiragana_ration=0.1)  # a typo is not silently ignored


def test_ng_words_need_a_limit():
    with pytest.raises(ValidationError, match="max_ng_word_fraction"):
        QualityConfig.preset("web", ng_words=["死ね"])
    cfg = QualityConfig.preset("web", ng_words=["死ね"], max_ng_word_fraction=0.0)
    assert "ng_words" in [f.name for f in build_filters(cfg)]
    assert "ng_words" not in [f.name for f in build_filters(PRESETS["web"])]


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown quality preset 'poetry'"):
        QualityConfig.preset("poetry")


def test_preset_for_source():
    assert [preset_for_source(s) for s in ("aozora", "files", "web")] == ["literature", "literature", "web"]
    assert preset_for_source("aozora", {"aozora": "web"}) == "web"
    assert preset_for_source("aozora", {"blog": "web"}) == "literature"  # a mapping extends the defaults
    with pytest.raises(ValueError, match="no quality preset for source 'forum'"):
        preset_for_source("forum")
    assert preset_for_source("news", {"news": "strict"}) == "strict"  # a run config may define its own presets


def test_filter_order_is_one_visible_list_cheap_first():
    assert [f.name for f in build_filters(PRESETS["web"])] == [
        "too_short",
        "low_japanese_ratio",
        "low_hiragana_ratio",
        "high_katakana_ratio",
        "long_mean_sentence",
        "long_max_sentence",
        "dup_line_fraction",
        "dup_line_char_fraction",
        "dup_paragraph_fraction",
        "dup_paragraph_char_fraction",
        "top_ngram_fraction",
        "dup_ngram_fraction",
    ]
    literature = [f.name for f in build_filters(PRESETS["literature"])]
    assert "low_hiragana_ratio" not in literature and "low_kana_ratio" in literature
    assert "long_max_sentence" not in literature


def test_first_failure_stops_at_the_first_failing_filter():
    filters = build_filters(PRESETS["web"])
    assert first_failure(doc("Hello."), filters) == "too_short"  # also not Japanese: the cheap rule answers
    assert first_failure(doc(PROSE), filters) is None


# --- non-Japanese documents and real works ------------------------------------------------


@pytest.mark.parametrize("preset", ["web", "literature"])
def test_english_is_dropped_as_not_japanese(preset):
    assert first_failure(doc(ENGLISH * 8), build_filters(PRESETS[preset])) == "low_japanese_ratio"


def test_chinese_without_kana_is_dropped():
    chinese = doc(CHINESE * 10)
    assert first_failure(chinese, build_filters(PRESETS["web"])) == "low_hiragana_ratio"
    assert first_failure(chinese, build_filters(PRESETS["literature"])) == "low_kana_ratio"


def test_literature_keeps_refrains_but_not_one_line_repeated():
    literature = build_filters(PRESETS["literature"])
    song = "ドッテテドッテテ、ドッテテド、\n電信ばしらの軍隊は\nはやさせかいにたぐいなし\n" * 2
    assert first_failure(doc(song, "aozora"), literature) is None
    assert first_failure(doc("同じ文をただ繰り返している。" * 30, "aozora"), literature) == "dup_ngram_fraction"
    assert first_failure(doc("あはは" * 100, "aozora"), literature) == "top_ngram_fraction"
    assert first_failure(doc("同じ行です。\n" * 30, "aozora"), literature) == "dup_line_fraction"


def test_ame_nimo_makezu_is_kept_by_literature_and_dropped_by_a_web_hiragana_floor():
    poem = aozora_doc(AME_NIMO_MAKEZU)
    assert poem.text.startswith("雨ニモマケズ\n風ニモマケズ")
    assert first_failure(poem, build_filters(PRESETS["literature"])) is None
    assert LowHiraganaRatio(PRESETS["web"].min_hiragana_ratio).filter(poem) == (False, "low_hiragana_ratio")


@pytest.mark.parametrize("preset", ["web", "literature"])
def test_real_prose_passes_every_filter(preset):
    assert first_failure(aozora_doc(RASHOMON), build_filters(PRESETS[preset])) is None
