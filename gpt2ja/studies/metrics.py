"""Text metrics of the sampling study, on characters: Japanese has no spaces, so a "token" here is a character.

Every metric takes plain strings (no model, no tokenizer), so a human
continuation and a generated one are measured the same way. Definitions:

* **distinct-n** (Li et al., 2016): distinct character n-grams ÷ all character
  n-grams, pooled over a set of texts. 1 when no n-gram repeats anywhere.
* **rep-n** (Welleck et al., 2020, "seq-rep-n"): per text, ``1 − distinct
  n-grams ÷ n-grams`` (the share of its n-grams that repeat an earlier one),
  averaged over the texts. 0 when nothing repeats.
* **repetition** (Holtzman et al., 2020, Table 1 "Repetition %"): the share of
  texts that *end* in a loop: their last characters are at least two whole
  copies of one block, covering at least ``min_span`` characters
  (:func:`repeated_tail`).
* **Zipf coefficient** (Holtzman et al., 2020): ``−slope`` of the least-squares
  line through (log rank, log frequency) of the characters of a set of texts,
  over the ``max_rank`` most frequent ones. Human text is near 1; larger means
  a steeper, less varied distribution.
* **self-BLEU-4** (Zhu et al., 2018, Texygen): BLEU-4 of each text against all
  the others of the set as references, averaged; character n-grams 1–4 with
  equal weights, clipped counts, the brevity penalty of the closest reference
  length, and zero matches smoothed as NLTK's ``method1`` (ε = 0.1). 1 when the
  texts are identical, near 0 when they share nothing.
* **prompt overlap** (relevance): the share of a continuation's distinct
  content characters (kanji and katakana, which carry most of the meaning in
  Japanese; hiragana are mostly grammar) that also occur in its prompt.

Example::

    >>> distinct_n(["あいうえお"], 1), rep_n(["ああああ"], 1)
    (1.0, 0.75)
    >>> repeated_tail("今日は晴れ。" + "猫が鳴く。" * 4)
    5
    >>> round(self_bleu(["吾輩は猫である。"] * 3), 6)
    1.0
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

REPETITION_MIN_SPAN = 16  # characters a looping tail must cover (two copies of "ね、" are not a loop)
ZIPF_MAX_RANK = 5000  # Holtzman et al. fit the 5,000 most frequent types
BLEU_EPSILON = 0.1  # NLTK SmoothingFunction().method1


def char_ngrams(text: str, n: int) -> list[str]:
    """The character n-grams of ``text`` in order (``len(text) - n + 1`` of them, none if shorter).

    >>> char_ngrams("猫である", 2)
    ['猫で', 'であ', 'ある']
    """
    if n < 1:
        raise ValueError(f"n {n} must be ≥ 1")
    return [text[i : i + n] for i in range(len(text) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float | None:
    """Distinct n-grams ÷ n-grams over all ``texts`` together; None when they hold no n-gram."""
    seen: set[str] = set()
    total = 0
    for text in texts:
        grams = char_ngrams(text, n)
        seen.update(grams)
        total += len(grams)
    return len(seen) / total if total else None


def rep_n(texts: Sequence[str], n: int) -> float | None:
    """Mean over texts of ``1 − distinct n-grams ÷ n-grams``; texts shorter than ``n`` are left out (None: all)."""
    values = []
    for text in texts:
        grams = char_ngrams(text, n)
        if grams:
            values.append(1.0 - len(set(grams)) / len(grams))
    return float(np.mean(values)) if values else None


def repeated_tail(text: str, min_span: int = REPETITION_MIN_SPAN) -> int:
    """The length of the shortest block that ``text`` ends by repeating, or 0 if it does not end in a loop.

    A loop: for some block length ``L``, the last ``s`` characters have period
    ``L`` (each equals the one ``L`` before it) with ``s ≥ 2L`` (two whole
    copies) and ``s ≥ min_span``. A text cut in the middle of a copy still
    counts: its tail is periodic whatever the phase.
    """
    n = len(text)
    for block in range(1, n // 2 + 1):
        run = 0  # trailing positions i with text[i] == text[i - block]
        i = n - 1
        while i - block >= 0 and text[i] == text[i - block]:
            run += 1
            i -= 1
        span = run + block
        if run >= block and span >= min_span:
            return block
    return 0


def repetition_rate(texts: Sequence[str], min_span: int = REPETITION_MIN_SPAN) -> float | None:
    """The share of ``texts`` that end in a loop (:func:`repeated_tail`); None for no texts."""
    if not texts:
        return None
    return sum(1 for t in texts if repeated_tail(t, min_span)) / len(texts)


def zipf_coefficient(texts: Sequence[str], max_rank: int = ZIPF_MAX_RANK) -> float | None:
    """``−slope`` of log frequency against log rank of the characters of ``texts`` (top ``max_rank`` ranks).

    None when fewer than 3 distinct characters occur (no line to fit).
    """
    counts = Counter()
    for text in texts:
        counts.update(text)
    freqs = np.array(sorted(counts.values(), reverse=True)[:max_rank], dtype=np.float64)
    if len(freqs) < 3:
        return None
    ranks = np.arange(1, len(freqs) + 1, dtype=np.float64)
    slope, _ = np.polyfit(np.log(ranks), np.log(freqs), 1)
    return float(-slope)


class _NgramTable:
    """For each n-gram of a set of texts, its two largest per-text counts and their owners.

    The best clip count against "every text but i" is then the largest count of
    another text: O(1) per n-gram instead of one pass per reference.
    """

    def __init__(self, counts: list[Counter]) -> None:
        self.top: dict[str, tuple[int, int, int]] = {}  # gram → (best count, its text, second best count)
        for i, c in enumerate(counts):
            for gram, k in c.items():
                best, owner, second = self.top.get(gram, (0, -1, 0))
                if k > best:
                    self.top[gram] = (k, i, best)
                elif k > second:
                    self.top[gram] = (best, owner, k)

    def max_except(self, gram: str, i: int) -> int:
        best, owner, second = self.top.get(gram, (0, -1, 0))
        return second if owner == i else best


def _bleu(matches: list[int], totals: list[int], hyp_len: int, ref_len: int) -> float:
    if hyp_len == 0 or any(t == 0 for t in totals):
        return 0.0
    logs = [math.log((m if m else BLEU_EPSILON) / t) for m, t in zip(matches, totals)]
    brevity = 1.0 if hyp_len > ref_len else math.exp(1.0 - ref_len / hyp_len)
    return brevity * math.exp(sum(logs) / len(logs))


def bleu(hypothesis: str, references: Sequence[str], max_n: int = 4) -> float:
    """Character BLEU-``max_n`` of ``hypothesis`` against ``references`` (see the module docstring).

    >>> bleu("吾輩は猫である。", ["吾輩は猫である。"])
    1.0
    """
    if not references:
        raise ValueError("BLEU needs at least one reference")
    matches, totals = [], []
    for n in range(1, max_n + 1):
        hyp = Counter(char_ngrams(hypothesis, n))
        refs = [Counter(char_ngrams(r, n)) for r in references]
        matches.append(sum(min(k, max(r.get(g, 0) for r in refs)) for g, k in hyp.items()))
        totals.append(sum(hyp.values()))
    return _bleu(matches, totals, len(hypothesis), _closest_length(len(hypothesis), [len(r) for r in references]))


def _closest_length(hyp_len: int, ref_lens: Sequence[int]) -> int:
    return min(ref_lens, key=lambda r: (abs(r - hyp_len), r))  # ties: the shorter, as NLTK


def self_bleu(texts: Sequence[str], max_n: int = 4) -> float | None:
    """Mean BLEU-``max_n`` of each text against all the others; None for fewer than two texts."""
    if len(texts) < 2:
        return None
    per_n = []
    for n in range(1, max_n + 1):
        counts = [Counter(char_ngrams(t, n)) for t in texts]
        per_n.append((counts, _NgramTable(counts)))
    lengths = [len(t) for t in texts]
    scores = []
    for i, text in enumerate(texts):
        matches, totals = [], []
        for counts, table in per_n:
            matches.append(sum(min(k, table.max_except(g, i)) for g, k in counts[i].items()))
            totals.append(sum(counts[i].values()))
        others = lengths[:i] + lengths[i + 1 :]
        scores.append(_bleu(matches, totals, len(text), _closest_length(len(text), others)))
    return float(np.mean(scores))


def is_content_character(ch: str) -> bool:
    """Kanji (CJK ideographs, 々) or katakana (not the long-vowel mark ー): the characters that carry content."""
    code = ord(ch)
    return (
        0x4E00 <= code <= 0x9FFF
        or 0x3400 <= code <= 0x4DBF
        or 0xF900 <= code <= 0xFAFF
        or ch == "々"
        or 0x30A1 <= code <= 0x30FA
    )


def prompt_overlap(prompt: str, continuation: str) -> float | None:
    """The share of the continuation's distinct content characters that occur in the prompt (None: it has none).

    >>> prompt_overlap("猫が庭で寝ている。", "猫は庭が好きだ。")
    0.6666666666666666
    """
    content = {ch for ch in continuation if is_content_character(ch)}
    if not content:
        return None
    return len(content & set(prompt)) / len(content)


def mean_overlap(prompts: Sequence[str], continuations: Sequence[str]) -> float | None:
    """:func:`prompt_overlap` averaged over pairs (pairs without content characters left out)."""
    values = [v for p, c in zip(prompts, continuations) if (v := prompt_overlap(p, c)) is not None]
    return float(np.mean(values)) if values else None


def text_metrics(texts: Sequence[str], prompts: Sequence[str] | None = None) -> dict[str, float | None]:
    """Every model-free metric of one set of continuations (and their prompts), by column name.

    Keys: ``distinct_1`` … ``distinct_4``, ``rep_1`` … ``rep_4``, ``repetition``
    (a share, not %), ``zipf``, ``self_bleu4``, ``overlap`` (with ``prompts``),
    ``chars`` (mean length in characters).
    """
    out: dict[str, float | None] = {}
    for n in range(1, 5):
        out[f"distinct_{n}"] = distinct_n(texts, n)
    for n in range(1, 5):
        out[f"rep_{n}"] = rep_n(texts, n)
    out["repetition"] = repetition_rate(texts)
    out["zipf"] = zipf_coefficient(texts)
    out["self_bleu4"] = self_bleu(texts)
    if prompts is not None:
        out["overlap"] = mean_overlap(prompts, texts)
    out["chars"] = float(np.mean([len(t) for t in texts])) if texts else None
    return out
