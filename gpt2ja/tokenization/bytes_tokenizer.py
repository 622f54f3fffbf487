"""The ``bytes`` kind: UTF-8 bytes as ids 0–255, then the special tokens.

The seed project's first model: no training, no unknown text, about 3 ids per
Japanese character (characters per token ≈ 1/3 on kana and kanji).

Example::

    >>> tok = ByteTokenizer()
    >>> tok.encode("猫"), tok.eos_id, tok.vocab_size
    ([231, 140, 171], 256, 257)
    >>> tok.decode([231, 140, 171, 256])
    '猫'
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gpt2ja.tokenization.base import EOS, Tokenizer, TokenizerError


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes 0–255 plus ``<|endoftext|>`` = 256 (vocab size 257)."""

    kind = "bytes"

    @property
    def vocab_size(self) -> int:
        return 257

    @property
    def eos_id(self) -> int:
        return 256

    def encode(self, text: str) -> list[int]:
        try:
            return list(text.encode("utf-8"))
        except UnicodeEncodeError as err:  # a lone surrogate: not text
            raise TokenizerError(
                f"bytes tokenizer: cannot encode {text[max(0, err.start - 10) : err.end + 10]!r}: "
                "it holds a lone surrogate (not valid Unicode); fix the input text"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        try:
            data = bytes(i for i in ids if i != 256)
        except ValueError:
            raise TokenizerError(
                "bytes tokenizer: an id is out of range 0–256; the ids come from a different tokenizer"
            ) from None
        return data.decode("utf-8", errors="replace")

    def options(self) -> dict[str, Any]:
        return {"encoding": "utf-8", "special_tokens": [EOS]}

    def files(self) -> dict[str, bytes]:
        return {}  # tokenizer.json says it all

    @classmethod
    def from_files(cls, meta: dict, read: Any) -> "ByteTokenizer":
        return cls()
