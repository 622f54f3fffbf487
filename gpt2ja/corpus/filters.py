"""Japanese quality filters of the clean stage: one small class per rule, named drop reasons.

Each filter answers ``filter(doc) -> (keep, reason)`` (datatrove's
``BaseFilter`` style); ``reason`` is the filter's ``name``, a snake_case string
that the clean stage counts in its manifest. Thresholds come from a
:class:`QualityConfig`; two presets are data in :data:`PRESETS` (``web``,
``literature``), and :func:`preset_for_source` says which one a source gets.
:func:`build_filters` turns a config into the ordered list, cheap filters
first, and :func:`first_failure` runs the list on one document, computing
each statistic at most once.

Filters expect text that went through :func:`gpt2ja.corpus.normalize.normalize`
(NFKC with Japanese exceptions): full-width ``！？`` are ASCII ``!?`` there and
half-width kana are full-width.

What is counted, and how, is in :mod:`gpt2ja.corpus.textstats`.

Speed (one core, the 25.8 M characters of aozora-bulk): about 6 M characters/s
for every filter of the literature preset (all run: it keeps nearly all), 8 M/s
for web (which stops early on its drops); the n-gram statistics take more than
half of it.

Example::

    >>> from gpt2ja.corpus.document import Document
    >>> doc = Document.new(source="web", url="https://example.jp/a", text="Hello, world. " * 40)
    >>> first_failure(doc, build_filters(PRESETS["web"]))
    'low_japanese_ratio'
"""

from __future__ import annotations

import re
from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gpt2ja.corpus.document import Document
from gpt2ja.corpus.textstats import MAX_SAMPLE, TextStats

__all__ = [
    "DEFAULT_SOURCE_PRESETS",
    "PRESETS",
    "DupLineCharFraction",
    "DupLineFraction",
    "DupNgramFraction",
    "DupParagraphCharFraction",
    "DupParagraphFraction",
    "Filter",
    "HighKatakanaRatio",
    "LongMaxSentence",
    "LongMeanSentence",
    "LowHiraganaRatio",
    "LowJapaneseRatio",
    "LowKanaRatio",
    "NgWords",
    "QualityConfig",
    "TextStats",
    "TooShort",
    "TopNgramFraction",
    "build_filters",
    "first_failure",
    "preset_for_source",
]


# --- configuration ---------------------------------------------------------------

Ratio = Annotated[float, Field(ge=0.0, le=1.0)]
NgramSize = Annotated[int, Field(ge=2, le=64)]


class QualityConfig(BaseModel):
    """Thresholds of the quality filters; ``None`` (or an empty dict) turns a filter off.

    Every threshold must be chosen: start from a preset and override, which
    validates the result::

        >>> cfg = QualityConfig.preset("web", min_chars=200)
        >>> cfg.min_chars, cfg.min_hiragana_ratio
        (200, 0.2)
        >>> QualityConfig.preset("web", min_hiragana_ratio=1.5)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        pydantic_core._pydantic_core.ValidationError: 1 validation error for QualityConfig
        min_hiragana_ratio
          Input should be less than or equal to 1 ...
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_chars: int | None = Field(ge=1, description="Drop (too_short) below this many non-whitespace characters.")
    min_japanese_ratio: Ratio | None = Field(
        description="Drop (low_japanese_ratio) when hiragana+katakana+kanji+Japanese punctuation "
        "are less than this share of the non-whitespace characters."
    )
    min_hiragana_ratio: Ratio | None = Field(
        description="Drop (low_hiragana_ratio) when hiragana are less than this share."
    )
    min_kana_ratio: Ratio | None = Field(
        description="Drop (low_kana_ratio) when hiragana+katakana are less than this share "
        "(tells Japanese from Chinese where katakana-only texts must stay)."
    )
    max_katakana_ratio: Ratio | None = Field(
        description="Drop (high_katakana_ratio) when katakana are more than this share."
    )
    max_mean_sentence_chars: float | None = Field(
        ge=1, description="Drop (long_mean_sentence) when sentences are longer than this on average."
    )
    max_sentence_chars: int | None = Field(
        ge=1, description="Drop (long_max_sentence) when one sentence is longer than this."
    )
    max_dup_line_fraction: Ratio | None = Field(
        description="Drop (dup_line_fraction) when more than this share of the non-empty lines repeat an earlier one."
    )
    max_dup_line_char_fraction: Ratio | None = Field(
        description="Drop (dup_line_char_fraction) when repeated lines hold more than this share of the characters."
    )
    max_dup_paragraph_fraction: Ratio | None = Field(
        description="Drop (dup_paragraph_fraction) when more than this share of the paragraphs repeat an earlier one."
    )
    max_dup_paragraph_char_fraction: Ratio | None = Field(
        description="Drop (dup_paragraph_char_fraction) when repeated paragraphs hold more than this share "
        "of the characters."
    )
    max_top_ngram_fraction: dict[NgramSize, Ratio] = Field(
        description="n → limit: drop (top_ngram_fraction) when the most frequent character n-gram "
        "covers more than this share of the characters."
    )
    max_dup_ngram_fraction: dict[NgramSize, Ratio] = Field(
        description="n → limit: drop (dup_ngram_fraction) when repeats of earlier character n-grams "
        "cover more than this share of the characters."
    )
    ngram_sample_chars: int = Field(
        ge=1_000,
        le=MAX_SAMPLE,
        description="n-gram statistics look at most at this many characters (four evenly spaced windows).",
    )
    ng_words: list[str] = Field(
        default_factory=list, description="Words whose share of the text is limited; empty turns ng_words off."
    )
    max_ng_word_fraction: Ratio | None = Field(
        default=None, description="Drop (ng_words) when ng_words cover more than this share of the characters."
    )

    @model_validator(mode="after")
    def _ng_words_need_a_limit(self) -> "QualityConfig":
        if self.ng_words and self.max_ng_word_fraction is None:
            raise ValueError(
                "ng_words is set but max_ng_word_fraction is not; give the largest share of "
                "characters the words may cover (0 drops any document that contains one)"
            )
        if any(not word for word in self.ng_words):
            raise ValueError("ng_words contains an empty word; remove it")
        return self

    @classmethod
    def preset(cls, name: str, **overrides: object) -> "QualityConfig":
        """The named preset of :data:`PRESETS` with ``overrides`` applied and validated."""
        if name not in PRESETS:
            raise ValueError(f"unknown quality preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
        return cls.model_validate({**PRESETS[name].model_dump(), **overrides})


# Where the numbers come from.
#
# web — the Swallow corpus rules (Okazaki et al. 2024, "Building a Large Japanese
# Web Corpus for Large Language Models", quality filtering): at least 400
# characters, hiragana ≥ 0.2, katakana ≤ 0.5, Japanese characters ≥ 0.5, mean
# sentence ≤ 90 characters, longest sentence ≤ 200 characters. Repetition:
# Gopher (Rae et al. 2021, table A1) — duplicate paragraphs 0.30, characters in
# duplicate lines 0.20 and paragraphs 0.20 — with the duplicate-line share taken
# from FineWeb-2's jpn_Jpan config, 0.375 (Gopher: 0.30).
#   n-grams: Gopher and FineWeb-2 count WORD n-grams (FineWeb-2 jpn_Jpan: top
# {2: 0.121, 3: 0.129, 4: 0.145}, duplicate {5: 0.307 … 10: 0.223}); we count
# CHARACTER n-grams (the clean stage has no segmenter). A Japanese word is about
# two characters, so a word n-gram is a character 2n-gram, and short character
# n-grams (した, ている) recur in any prose: a word limit is applied to the
# character n-gram twice as long. We keep the ends of FineWeb-2's ranges —
# top {4 (word 2): 0.121, 8 (word 4): 0.145}, duplicate {10 (word 5): 0.307,
# 20 (word 10): 0.223} — two sizes of each instead of three to six, for speed.
# Checked on the 1,857 aozora-bulk works that pass the web length and
# character-ratio rules (clean human prose): every limit is above the 99.5th
# percentile of its statistic (99.5th / 99.9th: top 4-gram 0.101 / 0.205, top
# 8-gram 0.049 / 0.107, duplicate 10-gram 0.174 / 0.282, duplicate 20-gram
# 0.081 / 0.110); together they drop 5 of the 1,857 (songs with refrains, a
# text ruled with "-----"), while a page that repeats one line or phrase goes
# far past them.
#
# literature — Aozora Bunko prose and poetry; calibrated on aozora-bulk (2,058
# works) so that it drops only the three English translations in it (see
# tests/test_filters.py). Against web: poems are short (the shortest work has
# 25 characters); kanbun-style and children's katakana texts (宮沢賢治's
# 〔雨ニモマケズ〕, 新美南吉's katakana tales: 0 hiragana, up to 94 % katakana)
# turn off the hiragana floor and katakana ceiling, and a kana floor
# (hiragana + katakana ≥ 0.1; the lowest Japanese work, a theatre chronology,
# has 0.28) tells Japanese from Chinese instead; the Japanese share may be 0.4
# (〔聖なる窓〕 mixes English lines, 0.46); sentence length has no ceiling
# (泉鏡花 writes 760-character sentences) and the mean only a loose one (the
# highest is 162) to catch unpunctuated dumps; repetition limits sit above the
# refrains of songs and children's poems (月夜のでんしんばしらの軍歌, デパートの窓:
# duplicate 10-grams up to 0.64, top 8-gram up to 0.46) and still catch a text
# that repeats one line throughout (> 0.9).
_PRESET_VALUES: dict[str, dict[str, object]] = {
    "web": {
        "min_chars": 400,
        "min_japanese_ratio": 0.5,
        "min_hiragana_ratio": 0.2,
        "min_kana_ratio": None,
        "max_katakana_ratio": 0.5,
        "max_mean_sentence_chars": 90,
        "max_sentence_chars": 200,
        "max_dup_line_fraction": 0.375,
        "max_dup_line_char_fraction": 0.2,
        "max_dup_paragraph_fraction": 0.3,
        "max_dup_paragraph_char_fraction": 0.2,
        "max_top_ngram_fraction": {4: 0.121, 8: 0.145},
        "max_dup_ngram_fraction": {10: 0.307, 20: 0.223},
        "ngram_sample_chars": 20_000,
    },
    "literature": {
        "min_chars": 20,
        "min_japanese_ratio": 0.4,
        "min_hiragana_ratio": None,
        "min_kana_ratio": 0.1,
        "max_katakana_ratio": None,
        "max_mean_sentence_chars": 300,
        "max_sentence_chars": None,
        "max_dup_line_fraction": 0.6,
        "max_dup_line_char_fraction": 0.6,
        "max_dup_paragraph_fraction": 0.6,
        "max_dup_paragraph_char_fraction": 0.3,
        "max_top_ngram_fraction": {4: 0.6, 8: 0.6},
        "max_dup_ngram_fraction": {10: 0.8, 20: 0.7},
        "ngram_sample_chars": 20_000,
    },
}
PRESETS: dict[str, QualityConfig] = {name: QualityConfig(**values) for name, values in _PRESET_VALUES.items()}

# Which preset a Document.source gets unless the run config says otherwise.
DEFAULT_SOURCE_PRESETS: dict[str, str] = {"aozora": "literature", "files": "literature", "web": "web"}


def preset_for_source(source: str, mapping: dict[str, str] | None = None) -> str:
    """The preset name for documents of ``source``: ``mapping`` (source → preset)
    first, then :data:`DEFAULT_SOURCE_PRESETS`.

    Example::

        >>> preset_for_source("aozora"), preset_for_source("blog", {"blog": "web"})
        ('literature', 'web')
    """
    table = {**DEFAULT_SOURCE_PRESETS, **(mapping or {})}
    if source not in table:
        raise ValueError(
            f"no quality preset for source {source!r}; map it to a preset in the clean config's source_presets "
            f"(mapped sources: {', '.join(sorted(table))})"
        )
    # The name is not checked against PRESETS: a run config may define its own presets.
    return table[source]


# --- filters -----------------------------------------------------------------------


class Filter:
    """One quality rule. ``filter(doc)`` answers ``(keep, reason)``; ``reason`` is
    :attr:`name` when the document is dropped, ``None`` when it is kept.

    Subclasses implement :meth:`check` on a :class:`TextStats`, so that
    :func:`first_failure` can share one statistics object among all filters.
    """

    name: ClassVar[str]

    def check(self, stats: TextStats) -> bool:
        """True to keep."""
        raise NotImplementedError

    def filter(self, doc: Document) -> tuple[bool, str | None]:
        keep = self.check(TextStats(doc.text))
        return keep, None if keep else self.name

    def __repr__(self) -> str:
        fields = ", ".join(f"{key}={value!r}" for key, value in vars(self).items() if not key.startswith("_"))
        return f"{type(self).__name__}({fields})"


class _AtLeast(Filter):
    def __init__(self, minimum: float) -> None:
        self.minimum = minimum

    def measure(self, stats: TextStats) -> float:
        raise NotImplementedError

    def check(self, stats: TextStats) -> bool:
        return self.measure(stats) >= self.minimum


class _AtMost(Filter):
    def __init__(self, maximum: float) -> None:
        self.maximum = maximum

    def measure(self, stats: TextStats) -> float:
        raise NotImplementedError

    def check(self, stats: TextStats) -> bool:
        return self.measure(stats) <= self.maximum


class TooShort(_AtLeast):
    """Fewer non-whitespace characters than ``minimum``.

    >>> TooShort(5).filter(Document.new(source="web", url="u", text="猫　だ。"))
    (False, 'too_short')
    """

    name = "too_short"

    def measure(self, stats: TextStats) -> float:
        return stats.counted


class LowJapaneseRatio(_AtLeast):
    """Japanese characters (kana, kanji, Japanese punctuation) below ``minimum``."""

    name = "low_japanese_ratio"

    def measure(self, stats: TextStats) -> float:
        return stats.ratio(stats.japanese)


class LowHiraganaRatio(_AtLeast):
    """Hiragana below ``minimum``: Chinese, lists of names, tables, kanbun."""

    name = "low_hiragana_ratio"

    def measure(self, stats: TextStats) -> float:
        return stats.ratio(stats.hiragana)


class LowKanaRatio(_AtLeast):
    """Hiragana + katakana below ``minimum``: Chinese (or Japanese made only of kanji)."""

    name = "low_kana_ratio"

    def measure(self, stats: TextStats) -> float:
        return stats.ratio(stats.hiragana + stats.katakana)


class HighKatakanaRatio(_AtMost):
    """Katakana above ``maximum``: product lists, keyword stuffing."""

    name = "high_katakana_ratio"

    def measure(self, stats: TextStats) -> float:
        return stats.ratio(stats.katakana)


class NgWords(_AtMost):
    """Listed words covering more than ``maximum`` of the characters."""

    name = "ng_words"

    def __init__(self, words: list[str], maximum: float) -> None:
        super().__init__(maximum)
        self.words = list(words)
        # Longest first, so that a word containing another is matched whole.
        self._pattern = re.compile("|".join(map(re.escape, sorted(set(words), key=len, reverse=True))))

    def measure(self, stats: TextStats) -> float:
        return stats.ratio(sum(map(len, self._pattern.findall(stats.text))))


class LongMeanSentence(_AtMost):
    """Mean sentence length (non-whitespace characters) above ``maximum``:
    text without sentence ends (menus, tag clouds, tables)."""

    name = "long_mean_sentence"

    def measure(self, stats: TextStats) -> float:
        lengths = stats.sentence_lengths
        return float(lengths.mean()) if len(lengths) else 0.0


class LongMaxSentence(_AtMost):
    """One sentence longer than ``maximum`` non-whitespace characters."""

    name = "long_max_sentence"

    def measure(self, stats: TextStats) -> float:
        lengths = stats.sentence_lengths
        return float(lengths.max()) if len(lengths) else 0.0


class DupLineFraction(_AtMost):
    """Share of non-empty lines that repeat an earlier line above ``maximum``."""

    name = "dup_line_fraction"

    def measure(self, stats: TextStats) -> float:
        lines = stats.lines
        return stats.line_repeats[0] / len(lines) if lines else 0.0


class DupLineCharFraction(_AtMost):
    """Share of characters in repeated lines above ``maximum``."""

    name = "dup_line_char_fraction"

    def measure(self, stats: TextStats) -> float:
        return stats.line_repeats[1] / max(1, stats.line_chars)


class DupParagraphFraction(_AtMost):
    """Share of paragraphs that repeat an earlier paragraph above ``maximum``."""

    name = "dup_paragraph_fraction"

    def measure(self, stats: TextStats) -> float:
        paragraphs = stats.paragraphs
        return stats.paragraph_repeats[0] / len(paragraphs) if paragraphs else 0.0


class DupParagraphCharFraction(_AtMost):
    """Share of characters in repeated paragraphs above ``maximum``."""

    name = "dup_paragraph_char_fraction"

    def measure(self, stats: TextStats) -> float:
        return stats.paragraph_repeats[1] / max(1, stats.paragraph_chars)


class _NgramFilter(Filter):
    def __init__(self, limits: dict[int, float], sample_chars: int) -> None:
        self.limits = dict(sorted(limits.items()))
        self.sample_chars = sample_chars

    def fraction(self, stats: TextStats, n: int) -> float:
        raise NotImplementedError

    def measure(self, stats: TextStats) -> dict[int, float]:
        return {n: self.fraction(stats, n) for n in self.limits}

    def check(self, stats: TextStats) -> bool:
        return all(self.fraction(stats, n) <= limit for n, limit in self.limits.items())


class TopNgramFraction(_NgramFilter):
    """The most frequent character n-gram covers more than its limit, for some n."""

    name = "top_ngram_fraction"

    def fraction(self, stats: TextStats, n: int) -> float:
        return stats.top_ngram_fraction(n, self.sample_chars)


class DupNgramFraction(_NgramFilter):
    """Repeated character n-grams cover more than their limit, for some n."""

    name = "dup_ngram_fraction"

    def fraction(self, stats: TextStats, n: int) -> float:
        return stats.dup_ngram_fraction(n, self.sample_chars)


def build_filters(cfg: QualityConfig) -> list[Filter]:
    """The filters ``cfg`` turns on, in the order they run: cheapest first, so that
    most drops are decided before the costly n-gram statistics are computed.

    Example::

        >>> [f.name for f in build_filters(PRESETS["literature"])][:3]
        ['too_short', 'low_japanese_ratio', 'low_kana_ratio']
    """
    candidates: list[Filter | None] = [
        TooShort(cfg.min_chars) if cfg.min_chars is not None else None,
        LowJapaneseRatio(cfg.min_japanese_ratio) if cfg.min_japanese_ratio is not None else None,
        LowHiraganaRatio(cfg.min_hiragana_ratio) if cfg.min_hiragana_ratio is not None else None,
        LowKanaRatio(cfg.min_kana_ratio) if cfg.min_kana_ratio is not None else None,
        HighKatakanaRatio(cfg.max_katakana_ratio) if cfg.max_katakana_ratio is not None else None,
        LongMeanSentence(cfg.max_mean_sentence_chars) if cfg.max_mean_sentence_chars is not None else None,
        LongMaxSentence(cfg.max_sentence_chars) if cfg.max_sentence_chars is not None else None,
        DupLineFraction(cfg.max_dup_line_fraction) if cfg.max_dup_line_fraction is not None else None,
        DupLineCharFraction(cfg.max_dup_line_char_fraction) if cfg.max_dup_line_char_fraction is not None else None,
        DupParagraphFraction(cfg.max_dup_paragraph_fraction) if cfg.max_dup_paragraph_fraction is not None else None,
        DupParagraphCharFraction(cfg.max_dup_paragraph_char_fraction)
        if cfg.max_dup_paragraph_char_fraction is not None
        else None,
        NgWords(cfg.ng_words, cfg.max_ng_word_fraction or 0.0) if cfg.ng_words else None,
        TopNgramFraction(cfg.max_top_ngram_fraction, cfg.ngram_sample_chars) if cfg.max_top_ngram_fraction else None,
        DupNgramFraction(cfg.max_dup_ngram_fraction, cfg.ngram_sample_chars) if cfg.max_dup_ngram_fraction else None,
    ]
    return [f for f in candidates if f is not None]


def first_failure(doc: Document, filters: list[Filter]) -> str | None:
    """The name of the first filter that drops ``doc``, or None to keep it.

    The filters share one :class:`TextStats`, so each statistic is computed at
    most once, and only when a filter still needs it.
    """
    stats = TextStats(doc.text)
    for f in filters:
        if not f.check(stats):
            return f.name
    return None
