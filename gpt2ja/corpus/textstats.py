"""Text statistics for the quality filters, each computed at most once per document.

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
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

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
MAX_SAMPLE = 1 << _POSITION_BITS
_HASH_MASK = np.uint64(((1 << 64) - 1) ^ (MAX_SAMPLE - 1))
_POSITIONS = np.arange(MAX_SAMPLE, dtype=np.uint64)


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
                hashes = (
                    self._hashes(head, max_chars)[:count] * shift + self._hashes(tail, max_chars)[head : head + count]
                )
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
                    where = keyed[starts[top] : starts[top] + sizes[top]] & np.uint64(MAX_SAMPLE - 1)
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
                repeats = (keyed[1:][groups[1:] == groups[:-1]] & np.uint64(MAX_SAMPLE - 1)).astype(np.int64)
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
