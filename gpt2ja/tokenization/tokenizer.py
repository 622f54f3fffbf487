"""The tokenizer every stage imports: the interface of :mod:`gpt2ja.tokenization.base` with all its kinds loaded.

Importing this module registers every kind (``bytes``, ``sentencepiece``, ``mecab+sentencepiece``), so that
:meth:`Tokenizer.load` reads any artifact::

    tok = Tokenizer.load("data/tokenizers/sp32k")      # or gs://bucket/tokenizers/sp32k
    ids = tok.encode("吾輩は猫である。")
    assert tok.decode(ids) == "吾輩は猫である。"
"""

from __future__ import annotations

from gpt2ja.tokenization.base import (
    EOS,
    FORMAT,
    KINDS,
    STAGE,
    TOKENIZER_JSON,
    Tokenizer,
    TokenizerError,
    tokenizer_class,
)
from gpt2ja.tokenization.bytes_tokenizer import ByteTokenizer
from gpt2ja.tokenization.spm import MecabSentencePieceTokenizer, SentencePieceTokenizer

__all__ = [
    "EOS",
    "FORMAT",
    "KINDS",
    "STAGE",
    "TOKENIZER_JSON",
    "ByteTokenizer",
    "MecabSentencePieceTokenizer",
    "SentencePieceTokenizer",
    "Tokenizer",
    "TokenizerError",
    "tokenizer_class",
]
