"""Japanese quality filters of the clean stage: one small class per rule, named drop reasons.

Each filter answers ``filter(doc) -> (keep, reason)`` (datatrove's
``BaseFilter`` style); ``reason`` is the filter's ``name``, a snake_case string
that the clean stage counts in its manifest. Thresholds come from a
:class:`QualityConfig`; two presets are data in :data:`PRESETS` (``web``,
``literature``), and :func:`preset_for_source` says which one a source gets.
:func:`build_filters` turns a config into the ordered list, cheap filters
first, and :func:`first_failure` runs the list on one document, computing
each statistic at most once.

Filters expect text that went through :func:`corpus.normalize.normalize`
(NFKC with Japanese exceptions): full-width ``！？`` are ASCII ``!?`` there and
half-width kana are full-width.

What is counted (one pass over the code points, with a lookup table):

* **counted characters**, the denominator of every ratio and the unit of every
  length: all characters except whitespace (``str.isspace``: spaces, U+3000,
  tabs, line breaks). Indentation and blank lines neither dilute the ratios
  nor lengthen sentences.
* **hiragana**: U+3041-U+309F (with ゝゞ and the voiced marks).
* **katakana**: U+30A1-U+30FA, U+30FC-U+30FF (ー, ヽヾ, ヿ) and U+31F0-U+31FF.
  ``・`` (U+30FB) and ``゠`` (U+30A0) are punctuation.
* **kanji**: CJK unified ideographs U+4E00-U+9FFF, extension A U+3400-U+4DBF,
  compatibility U+F900-U+FAFF, the supplementary ideographic planes
  U+20000-U+323AF (where JIS X 0213 gaiji land), and ``々〆〇〻``.
* **Japanese punctuation**: U+3001-U+3004 (、。〃〄), U+3008-U+301F (brackets
  「」『』【】〈〉《》, 〜, 〝〟), U+3030-U+3035 (〰 and the kunoji 〳〴〵),
  U+303C-U+303F, ``・゠``, and ``― … ‥ ※`` (U+2015, U+2026, U+2025, U+203B).
* **Japanese characters** = hiragana + katakana + kanji + Japanese punctuation.
* **sentences**: text between ``。 ! ?`` (and ``！？`` for unnormalised input)
  or line breaks; a sentence's length is its counted characters, the delimiter
  excluded; empty sentences (``!?``, blank lines) are not sentences.
* **lines** and **paragraphs** (blocks separated by an empty line) are compared
  with surrounding whitespace stripped; empty ones are ignored.
* **character n-grams** run over the counted characters (whitespace removed, so
  that ``。\\n　`` at every paragraph end is not a "repeated 3-gram"), on at
  most ``ngram_sample_chars`` of them: longer texts are measured on four
  evenly spaced windows. Repetition is a property of a stretch of text;
  measured over a whole 300,000-character novel, the share of repeated
  10-grams grows with length alone, and cost grows with it too.

Speed (one core, the 25.8 M characters of aozora-bulk): about 6 M characters/s
for every filter of the literature preset (all run: it keeps nearly all), 8 M/s
for web (which stops early on its drops); the n-gram statistics take more than
half of it.

Example::

    >>> from corpus.document import Document
    >>> doc = Document.new(source="web", url="https://example.jp/a", text="Hello, world. " * 40)
    >>> first_failure(doc, build_filters(PRESETS["web"]))
    'low_japanese_ratio'
"""

from __future__ import annotations

import re
from functools import cached_property
from typing import Annotated, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from corpus.document import Document

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

# --- character classes --------------------------------------------------------

OTHER, SPACE, HIRAGANA, KATAKANA, KANJI, PUNCT = range(6)


def _class_table() -> np.ndarray:
    """Class of every BMP code point (uint8); supplementary ones are handled apart."""
    table = np.full(0x10000, OTHER, dtype=np.uint8)
    for code in range(0x3001):
        if chr(code).isspace():
            table[code] = SPACE
    table[0x3041:0x30A0] = HIRAGANA
    table[0x30A1:0x30FB] = KATAKANA
    table[0x30FC:0x3100] = KATAKANA
    table[0x31F0:0x3200] = KATAKANA
    for lo, hi in ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF)):
        table[lo : hi + 1] = KANJI
    for lo, hi in ((0x3001, 0x3004), (0x3008, 0x301F), (0x3030, 0x3035), (0x303C, 0x303F)):
        table[lo : hi + 1] = PUNCT
    for code in (0x3005, 0x3006, 0x3007, 0x303B):  # 々 〆 〇 〻 behave as kanji
        table[code] = KANJI
    for code in (0x30A0, 0x30FB, 0x2015, 0x2025, 0x2026, 0x203B):  # ゠ ・ ― ‥ … ※
        table[code] = PUNCT
    return table


_CLASS = _class_table()
_SUPPLEMENTARY_KANJI = (0x20000, 0x323AF)
# 。 ! ? ！ ？ and the line break end a sentence.
_SENTENCE_END = np.zeros(0x10000, dtype=bool)
_SENTENCE_END[[0x3002, 0x21, 0x3F, 0xFF01, 0xFF1F, 0x0A]] = True
# n-gram hashing: a 64-bit polynomial hash whose low 15 bits are then replaced by
# the position, so that one plain sort groups equal n-grams in text order.
_HASH_BASE = np.uint64(0x9E3779B97F4A7C15)
_POSITION_BITS = 15
_MAX_SAMPLE = 1 << _POSITION_BITS
_HASH_MASK = np.uint64(((1 << 64) - 1) ^ (_MAX_SAMPLE - 1))
_POSITIONS = np.arange(_MAX_SAMPLE, dtype=np.uint64)


class TextStats:
    """The statistics the filters read, computed lazily and at most once per text.

    Example::

        >>> stats = TextStats("　吾輩は猫である。名前はまだ無い。")
        >>> stats.counted, stats.hiragana, stats.kanji, stats.sentence_lengths.tolist()
        (16, 8, 6, [7, 7])
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self._ngram_samples: dict[int, np.ndarray] = {}
        self._ngram_cache: dict[tuple[str, int, int], float] = {}
        self._hash_cache: dict[tuple[int, int], np.ndarray] = {}

    @cached_property
    def codes(self) -> np.ndarray:
        """The code points, (len(text),) uint32."""
        # surrogatepass: a lone surrogate (from a lenient decoder) is counted as OTHER, not an error.
        return np.frombuffer(self.text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)

    @cached_property
    def wide(self) -> bool:
        """Whether the text has code points beyond the BMP (the tables cover the BMP)."""
        return bool(len(self.codes)) and int(self.codes.max()) > 0xFFFF

    @cached_property
    def classes(self) -> np.ndarray:
        """The class of each code point (OTHER, SPACE, HIRAGANA…), (len(text),) uint8."""
        codes = self.codes
        classes = _CLASS[codes & 0xFFFF]
        if self.wide:
            wide = codes > 0xFFFF
            lo, hi = _SUPPLEMENTARY_KANJI
            classes[wide] = np.where((codes[wide] >= lo) & (codes[wide] <= hi), KANJI, OTHER)
        return classes

    @cached_property
    def class_counts(self) -> np.ndarray:
        return np.bincount(self.classes, minlength=6)

    @property
    def counted(self) -> int:
        """Characters that are not whitespace: the denominator of every ratio."""
        return int(len(self.codes) - self.class_counts[SPACE])

    @property
    def hiragana(self) -> int:
        return int(self.class_counts[HIRAGANA])

    @property
    def katakana(self) -> int:
        return int(self.class_counts[KATAKANA])

    @property
    def kanji(self) -> int:
        return int(self.class_counts[KANJI])

    @property
    def japanese(self) -> int:
        counts = self.class_counts
        return int(counts[HIRAGANA] + counts[KATAKANA] + counts[KANJI] + counts[PUNCT])

    def ratio(self, count: int) -> float:
        counted = self.counted
        return count / counted if counted else 0.0

    @cached_property
    def sentence_lengths(self) -> np.ndarray:
        """Counted characters of each non-empty sentence, in order, (n_sentences,) int."""
        codes = self.codes
        ends = _SENTENCE_END[codes & 0xFFFF]
        if self.wide:
            ends &= codes <= 0xFFFF
        inside = (self.classes != SPACE) & ~ends
        cumulative = np.concatenate(([0], np.cumsum(inside)))
        breaks = np.flatnonzero(ends)
        starts = np.concatenate(([0], breaks + 1))
        stops = np.concatenate((breaks, [len(self.codes)]))
        lengths = cumulative[stops] - cumulative[starts]
        return lengths[lengths > 0]

    @cached_property
    def lines(self) -> list[str]:
        return [line for line in map(str.strip, self.text.split("\n")) if line]

    @cached_property
    def paragraphs(self) -> list[str]:
        return [block for block in map(str.strip, self.text.split("\n\n")) if block]

    @cached_property
    def line_chars(self) -> int:
        return sum(map(len, self.lines))

    @cached_property
    def paragraph_chars(self) -> int:
        return sum(map(len, self.paragraphs))

    @cached_property
    def line_repeats(self) -> tuple[int, int]:
        """(lines that repeat an earlier line, their characters)."""
        return _repeats(self.lines)

    @cached_property
    def paragraph_repeats(self) -> tuple[int, int]:
        """(paragraphs that repeat an earlier paragraph, their characters)."""
        return _repeats(self.paragraphs)

    def ngram_sample(self, max_chars: int) -> np.ndarray:
        """The counted characters (whitespace removed), at most ``max_chars`` of them:
        four evenly spaced windows when the text is longer. (≤ max_chars,) uint64."""
        sample = self._ngram_samples.get(max_chars)
        if sample is None:
            chars = self.codes[self.classes != SPACE].astype(np.uint64)
            if len(chars) > max_chars:
                width = max_chars // 4
                starts = np.linspace(0, len(chars) - width, 4).astype(np.int64)
                chars = np.concatenate([chars[start : start + width] for start in starts])
            sample = self._ngram_samples[max_chars] = chars
        return sample

    def _hashes(self, n: int, max_chars: int) -> np.ndarray:
        """64-bit polynomial hash of every n-gram of the sample, (len - n + 1,) uint64.

        H(xy) = H(x)·B^|y| + H(y), so an n-gram hash is built from two cached
        shorter ones: the sizes a filter list asks for (4, 8, 10, 20…) share work."""
        key = (n, max_chars)
        hashes = self._hash_cache.get(key)
        if hashes is None:
            if n == 1:
                hashes = self.ngram_sample(max_chars)
            else:
                tail = n // 2
                head = n - tail
                count = len(self.ngram_sample(max_chars)) - n + 1
                shift = np.uint64(pow(int(_HASH_BASE), tail, 1 << 64))
                hashes = self._hashes(head, max_chars)[:count] * shift + self._hashes(tail, max_chars)[head : head + count]
            self._hash_cache[key] = hashes
        return hashes

    def _sorted_ngrams(self, n: int, max_chars: int) -> np.ndarray:
        """Hash of each n-gram of the sample, low bits replaced by its position, sorted:
        equal n-grams end up next to each other, in text order."""
        hashes = self._hashes(n, max_chars)
        keyed = hashes & _HASH_MASK
        keyed |= _POSITIONS[: len(hashes)]
        keyed.sort()
        return keyed

    def top_ngram_fraction(self, n: int, max_chars: int) -> float:
        """Share of the sample's characters covered by its most frequent character
        n-gram (Gopher's "top n-gram" rule, on characters). Overlapping occurrences
        are counted once: a run of forty ``…`` covers forty characters, not 4 × 37."""
        key = ("top", n, max_chars)
        if key not in self._ngram_cache:
            length = len(self.ngram_sample(max_chars))
            value = 0.0
            if length > n:
                keyed = self._sorted_ngrams(n, max_chars)
                groups = keyed >> np.uint64(_POSITION_BITS)
                # Runs of equal hashes in the sorted keys are the distinct n-grams.
                starts = np.concatenate(([0], np.flatnonzero(groups[1:] != groups[:-1]) + 1))
                sizes = np.diff(np.append(starts, len(groups)))
                top = int(np.argmax(sizes))
                if sizes[top] > 1:
                    where = keyed[starts[top] : starts[top] + sizes[top]] & np.uint64(_MAX_SAMPLE - 1)
                    value = _covered(where.astype(np.int64), n, length) / length
            self._ngram_cache[key] = value
        return self._ngram_cache[key]

    def dup_ngram_fraction(self, n: int, max_chars: int) -> float:
        """Share of the sample's characters inside a repeat of an earlier character
        n-gram (Gopher's "duplicate n-gram" rule on characters; first occurrences
        are not counted, overlapping repeats are counted once)."""
        key = ("dup", n, max_chars)
        if key not in self._ngram_cache:
            length = len(self.ngram_sample(max_chars))
            if length < n + 1:
                value = 0.0
            else:
                keyed = self._sorted_ngrams(n, max_chars)
                groups = keyed >> np.uint64(_POSITION_BITS)
                repeats = (keyed[1:][groups[1:] == groups[:-1]] & np.uint64(_MAX_SAMPLE - 1)).astype(np.int64)
                value = _covered(repeats, n, length) / length if len(repeats) else 0.0
            self._ngram_cache[key] = value
        return self._ngram_cache[key]


def _repeats(items: list[str]) -> tuple[int, int]:
    """(how many items repeat an earlier one, their characters)."""
    unique = set(items)
    return len(items) - len(unique), sum(map(len, items)) - sum(map(len, unique))


def _covered(starts: np.ndarray, n: int, length: int) -> int:
    """How many of ``length`` positions lie in some [start, start + n)."""
    edges = np.bincount(starts, minlength=length + n) - np.bincount(starts + n, minlength=length + n)
    return int(np.count_nonzero(np.cumsum(edges)[:length]))


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
        ge=1_000, le=_MAX_SAMPLE,
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
            raise ValueError("ng_words is set but max_ng_word_fraction is not; give the largest share of "
                             "characters the words may cover (0 drops any document that contains one)")
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
        lines = stats.lines
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
        paragraphs = stats.paragraphs
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
