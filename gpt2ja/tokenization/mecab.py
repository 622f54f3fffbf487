"""MeCab word segmentation of the *training* text of the ``mecab+sentencepiece`` kind.

fugashi with unidic-lite splits each training sentence into words; the words
are joined with :data:`DELIMITER` and sentencepiece is trained with
``pretokenization_delimiter=DELIMITER``, so no learned piece crosses a word
boundary ("食べ|て|い|まし|た" never yields a piece "ました"). The model alone
then encodes and decodes: MeCab is needed in training only, and is imported
only when a :class:`Segmenter` is made.

A consequence for vocabulary size: candidate pieces are substrings of single
words, so fewer exist, and a unigram model may not reach a large vocabulary
(on aozora-bulk's 330k training lines, 25,005 pieces at most; on a
100k-line sample, 16,105). Training then stops with a one-line error giving
the largest size possible; BPE reaches 32k there.

Example::

    >>> seg = Segmenter()
    >>> seg.segment("食べていました。").split(DELIMITER)
    ['食べ', 'て', 'い', 'まし', 'た', '。']
"""

from __future__ import annotations

import os
from typing import Any

# A private-use character, which clean text practically never holds (where it does, it
# only adds a boundary in training). Sentencepiece removes it from the training text;
# encoding treats it as an ordinary character, so it still round-trips.
DELIMITER = "\ue000"


class Segmenter:
    """MeCab (fugashi + unidic-lite, named explicitly so a full UniDic install cannot change results)."""

    def __init__(self) -> None:
        try:
            import fugashi
            import unidic_lite
        except ImportError as err:
            from gpt2ja.tokenization.tokenizer import TokenizerError

            raise TokenizerError(
                f"mecab+sentencepiece training needs fugashi and unidic-lite ({err}); "
                "install them: pip install fugashi unidic-lite"
            ) from None
        dicdir = unidic_lite.DICDIR
        self._tagger = fugashi.Tagger(f'-d "{dicdir}" -r "{os.path.join(dicdir, "mecabrc")}"')
        self.unsplit = 0  # sentences MeCab could not reproduce exactly (kept whole)

    def words(self, sentence: str) -> list[str]:
        """The words of ``sentence``, each with the whitespace before it; they join back to ``sentence``."""
        words = [w.white_space + w.surface for w in self._tagger(sentence)]
        joined = "".join(words)
        if joined == sentence:
            return words
        if sentence.startswith(joined):  # MeCab drops trailing whitespace
            return words + [sentence[len(joined) :]]
        self.unsplit += 1
        return [sentence]

    def segment(self, sentence: str) -> str:
        """``sentence`` with :data:`DELIMITER` between MeCab words."""
        return DELIMITER.join(self.words(sentence))

    @staticmethod
    def info() -> dict[str, Any]:
        from importlib.metadata import version

        return {
            "segmenter": "mecab",
            "fugashi": version("fugashi"),
            "dictionary": "unidic-lite",
            "dictionary_version": version("unidic-lite"),
            "delimiter": DELIMITER,
        }
