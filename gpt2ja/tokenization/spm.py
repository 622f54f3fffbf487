"""The ``sentencepiece`` and ``mecab+sentencepiece`` kinds (unigram or BPE).

Both kinds are one ``spm.model`` at inference: the MeCab kind differs only in
how its *training* text was prepared (see :mod:`gpt2ja.tokenization.mecab`), so
encoding and decoding never need MeCab.

Fixed id layout (every vocabulary size, both model types)::

    0        <unk>           never produced: byte fallback covers every character
    1        <|endoftext|>   control token = eos_id (decodes as "")
    2        "\\n"            user-defined: a newline is always its own token
    3..258   <0x00>..<0xFF>  byte fallback pieces
    259..    learned pieces (space is "▁" inside pieces, as usual in sentencepiece)

Why these trainer options (the corpus is NFKC-normalised by the clean stage):
``normalization_rule_name="identity"`` (never normalise twice),
``add_dummy_prefix=False`` and ``remove_extra_whitespaces=False`` (spaces are
text, kept exactly), ``byte_fallback=True`` (no ``<unk>``), ``split_digits=True``,
``user_defined_symbols=["\\n"]`` (a newline is one token with the fixed id 2 and
never merges with its neighbours; training sentences are lines, so without the
symbol it would still round-trip, but as the anonymous byte piece ``<0x0A>``;
identity normalisation matters too: the default ``nmt_nfkc`` rule turns a tab
into a space and drops control characters such as U+0001).

Exactness: sentencepiece writes a space as U+2581 "▁" and decodes every "▁"
back to a space, so a literal "▁" in text would come back as " ". ``encode``
therefore emits a literal "▁" as its three UTF-8 byte pieces, which decode to
"▁"; everything else is sentencepiece's own encoding.
"""

from __future__ import annotations

import io
import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as model_pb2

from gpt2ja.tokenization.base import EOS, Tokenizer, TokenizerError

log = logging.getLogger(__name__)

MODEL_FILE = "spm.model"
VOCAB_FILE = "spm.vocab"
META_SPACE = "\u2581"  # "▁": sentencepiece's stand-in for a space
UNK_ID, EOS_ID, NEWLINE_ID = 0, 1, 2
BYTE_IDS = range(3, 259)
N_META_PIECES = 3 + 256  # <unk>, <|endoftext|>, "\n", 256 byte pieces
MODEL_TYPES = ("unigram", "bpe")


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece model with the id layout and options above.

    Example::

        tok = SentencePieceTokenizer(open("spm.model", "rb").read())
        tok.decode(tok.encode("吾輩は▁猫\\n")) == "吾輩は▁猫\\n"   # True
    """

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes, **provenance: Any) -> None:
        super().__init__(**provenance)
        self._proto_bytes = model_proto
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        if self._sp.id_to_piece(EOS_ID) != EOS or not self._sp.is_control(EOS_ID):
            raise TokenizerError(
                f"{self.kind} model: id {EOS_ID} is not the control token {EOS}; "
                "it was not trained by gpt2ja, train it with `gpt2ja tokenizer train`"
            )
        # The byte pieces that spell a literal "▁" (see the module docstring).
        self._meta_space_ids = [self._sp.piece_to_id(f"<0x{b:02X}>") for b in META_SPACE.encode("utf-8")]

    def __getstate__(self) -> dict:
        # Picklable for worker processes: the processor is rebuilt from the proto bytes.
        return {k: v for k, v in self.__dict__.items() if k != "_sp"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._sp = spm.SentencePieceProcessor(model_proto=self._proto_bytes)

    @property
    def vocab_size(self) -> int:
        return self._sp.vocab_size()

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def byte_ids(self) -> range:
        """Ids of the byte-fallback pieces (a measure of text the vocabulary does not cover)."""
        return BYTE_IDS

    def encode(self, text: str) -> list[int]:
        if META_SPACE not in text:
            return self._sp.encode(text)
        ids: list[int] = []
        for i, part in enumerate(text.split(META_SPACE)):
            if i:
                ids.extend(self._meta_space_ids)
            if part:
                ids.extend(self._sp.encode(part))
        return ids

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        texts = list(texts)
        out = self._sp.encode(texts, num_threads=num_threads)
        for i, text in enumerate(texts):
            if META_SPACE in text:
                out[i] = self.encode(text)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        ids = list(ids)
        try:
            return self._sp.decode(ids)
        except (IndexError, ValueError, RuntimeError, TypeError):
            raise TokenizerError(
                f"{self.kind} tokenizer: an id is out of range 0–{self.vocab_size - 1}; "
                "the ids come from a different tokenizer"
            ) from None

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(token_id)

    def pieces(self, text: str) -> list[str]:
        """The pieces of ``text`` (for people and tests; ``encode`` is what stages use)."""
        return [self._sp.id_to_piece(i) for i in self.encode(text)]

    def options(self) -> dict[str, Any]:
        proto = self.model_proto()
        t, n = proto.trainer_spec, proto.normalizer_spec
        return {
            "model_type": model_pb2.TrainerSpec.ModelType.Name(t.model_type).lower(),
            "vocab_size": t.vocab_size,
            "character_coverage": round(t.character_coverage, 6),
            "byte_fallback": t.byte_fallback,
            "split_digits": t.split_digits,
            "split_by_whitespace": t.split_by_whitespace,
            "user_defined_symbols": list(t.user_defined_symbols),
            "pretokenization_delimiter": t.pretokenization_delimiter,
            "max_sentence_length": t.max_sentence_length,
            "max_sentencepiece_length": t.max_sentencepiece_length,
            "num_threads": t.num_threads,
            "normalization_rule_name": n.name,
            "add_dummy_prefix": n.add_dummy_prefix,
            "remove_extra_whitespaces": n.remove_extra_whitespaces,
            "escape_whitespaces": n.escape_whitespaces,
            "sentencepiece_version": spm.__version__,
        }

    def model_proto(self) -> model_pb2.ModelProto:
        proto = model_pb2.ModelProto()
        proto.ParseFromString(self._proto_bytes)
        return proto

    def files(self) -> dict[str, bytes]:
        return {MODEL_FILE: self._proto_bytes, VOCAB_FILE: vocab_tsv(self.model_proto()).encode("utf-8")}

    @classmethod
    def from_files(cls, meta: dict, read: Any) -> "SentencePieceTokenizer":
        return cls(read(MODEL_FILE))


class MecabSentencePieceTokenizer(SentencePieceTokenizer):
    """Same model format; trained on MeCab-segmented text so no piece crosses a word boundary.

    Nothing here imports MeCab: segmentation happens in training only
    (:mod:`gpt2ja.tokenization.mecab`, through ``pretokenization_delimiter``).
    """

    kind = "mecab+sentencepiece"


# ----------------------------------------------------------------- training


def trainer_options(
    *,
    vocab_size: int,
    model_type: str,
    character_coverage: float,
    num_threads: int,
    max_sentence_length: int,
    pretokenization_delimiter: str = "",
) -> dict[str, Any]:
    """The sentencepiece trainer arguments (see the module docstring for why each is set)."""
    options = dict(
        model_type=model_type,
        vocab_size=vocab_size,
        character_coverage=character_coverage,
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=False,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        user_defined_symbols=["\n"],
        unk_id=UNK_ID,
        eos_id=EOS_ID,
        eos_piece=EOS,
        bos_id=-1,
        pad_id=-1,
        # The sample is made (deterministically) by gpt2ja; sentencepiece's own
        # reservoir sampling differs from run to run even with a fixed seed.
        input_sentence_size=0,
        shuffle_input_sentence=False,
        max_sentence_length=max_sentence_length,
        # Results depend on the thread count (EM sums in a different order), so
        # it is a config value, never the machine's core count.
        num_threads=num_threads,
        minloglevel=2,
    )
    if pretokenization_delimiter:
        options["pretokenization_delimiter"] = pretokenization_delimiter
    return options


def train_model(sample_path: str, *, where: str, **options: Any) -> bytes:
    """Train on the sentences of ``sample_path`` (one per line); returns a reproducible ModelProto.

    Run-specific values that sentencepiece records (the input path) are
    cleared, so the same sample and options give byte-identical models.
    ``where`` names the artifact in errors.
    """
    writer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(input=sample_path, model_writer=writer, **trainer_options(**options))
    except RuntimeError as err:
        raise TokenizerError(f"{where}: {_explain(str(err), options)}") from None
    proto = model_pb2.ModelProto()
    proto.ParseFromString(writer.getvalue())
    proto.trainer_spec.ClearField("input")
    proto.trainer_spec.model_prefix = ""
    return proto.SerializeToString()


def _explain(message: str, options: dict) -> str:
    message = " ".join(message.split())
    vocab = options["vocab_size"]
    high = re.search(r"Vocabulary size too high \(\d+\)\. Please set it to a value <= (\d+)", message)
    if high:
        return (
            f"vocab size {vocab} is more than sentencepiece can build from this text (at most {high.group(1)}); "
            f"pass --vocab-size {high.group(1)} or less, or train on a larger corpus"
        )
    low = re.search(r"Vocabulary size is smaller than required_chars\. \d+ vs (\d+)", message)
    if low:
        return (
            f"vocab size {vocab} is too small: byte fallback and the required characters need at least "
            f"{low.group(1)}; pass --vocab-size {low.group(1)} or more"
        )
    return f"sentencepiece training failed ({message}); check the corpus and the tokenizer options"


def required_characters(counts: Counter, coverage: float) -> int:
    """How many characters sentencepiece must keep as pieces: the most frequent
    ones until ``coverage`` of all character occurrences is reached (its own rule)."""
    total = sum(counts.values())
    kept = covered = 0
    for _char, n in counts.most_common():
        if total and covered / total >= coverage:
            break
        covered += n
        kept += 1
    return kept


def minimum_vocab_size(counts: Counter, coverage: float) -> int:
    """The smallest vocabulary that byte fallback plus the required characters fit in."""
    return N_META_PIECES + required_characters(counts, coverage)


def vocab_tsv(proto: model_pb2.ModelProto) -> str:
    """``id, piece, score, type`` per line; backslash, tab, newline and CR in pieces escaped."""
    types = {v: k.lower() for k, v in model_pb2.ModelProto.SentencePiece.Type.items()}
    table = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
    lines = ["id\tpiece\tscore\ttype"]
    for i, p in enumerate(proto.pieces):
        lines.append(f"{i}\t{p.piece.translate(table)}\t{p.score:.6g}\t{types[p.type]}")
    return "\n".join(lines) + "\n"
