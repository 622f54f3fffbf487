"""Our tokenizers as Hugging Face fast tokenizers (``tokenizer.json``), checked id for id before they ship.

``AutoTokenizer.from_pretrained(export_dir)`` then gives the ids the model was
trained on. The ``tokenizers`` pipeline is built from the artifact itself:

* ``sentencepiece`` and ``mecab+sentencepiece`` with a unigram model (MeCab is
  used at training time only, so both are one ``spm.model`` at inference): a
  ``Unigram`` model with sentencepiece's pieces and scores and byte fallback,
  no normaliser but space → "▁" (our models use identity normalisation and no
  dummy prefix), pre-tokenisers that do what the trainer options do: "\\n" is
  its own piece (a user-defined symbol), "▁" starts a new piece
  (``split_by_whitespace``), every digit is its own piece (``split_digits``);
  the decoder turns "▁" back into spaces and fuses byte pieces into characters.
* ``bytes``: every character is unknown to an empty ``BPE``, so byte fallback
  spells it as its UTF-8 bytes ``<0x00>``…``<0xFF>`` = ids 0–255.
* ``<|endoftext|>`` is the eos (and bos/pad) special token, and a post-processor
  (``TemplateProcessing``) puts it in front of every text, as training puts it
  at every document start and ``gpt2ja generate`` before every prompt:
  ``tokenizer("吾輩")["input_ids"] == [eos_id] + our ids`` (pairs: ``eos A eos B``,
  two documents). ``add_special_tokens=False`` gives our ids alone.
* Padding. The pad token is the same ``<|endoftext|>`` (GPT-2's convention;
  the vocabulary has no spare id: a 320-id sentencepiece model fills every row
  of the embedding). A pad is told from the document start by the attention
  mask, which the tokenizer always returns (``model_input_names``), never by
  its id: ``transformers`` itself refuses to infer a mask from pad ids when pad
  = eos, and the leading eos must be attended to. Padding is on the left
  (decoder-only generation continues at the right end; GPT-2 in transformers
  derives position ids from the mask) and so is truncation (a prompt cut to
  ``max_length`` keeps its document start and its last tokens, the ones the
  continuation depends on, as our generator keeps the newest tokens).
* ``model_max_length`` is the model's context; ``tokenizer_class`` is
  ``PreTrainedTokenizerFast``, a name transformers 4.x (the class itself) and
  5.x (an alias of ``TokenizersBackend``) both load. 5.x would write
  ``TokenizersBackend``, which 4.x does not know.

Two inputs differ on purpose, and are said in the export's README: our
tokenizers treat the literal text "<|endoftext|>" as ordinary characters
(transformers makes it the special token, as users of GPT-2 expect), and our
sentencepiece kinds spell a literal "▁" (U+2581) as byte pieces so that it
decodes to itself (the fast tokenizer reads it as a space marker, like
sentencepiece itself). sentencepiece BPE models have no faithful ``tokenizers``
equivalent verified here (sentencepiece merges by piece score, not by a merge
list), so :func:`build` refuses them with one line and the export ships our
artifact only.

Example::

    fast = build(Tokenizer.load("data/tokenizers/sp16k"), context_length=1024)
    save(fast, "out")                         # tokenizer.json, tokenizer_config.json
    mismatches(tok, AutoTokenizer.from_pretrained("out"))   # [] or the texts that differ
"""

from __future__ import annotations

from gpt2ja.infra.errors import Gpt2jaError
from gpt2ja.tokenization.tokenizer import EOS

# Texts the export checks id for id: kana, kanji, rare kanji, half-width kana, Latin, digits, runs of
# spaces and tabs, ideographic spaces, newlines, emoji and a character outside the BMP (byte fallback).
CHECK_TEXTS = (
    "吾輩は猫である。名前はまだ無い。",
    "どこで生れたかとんと見当がつかぬ。\n何でも薄暗いじめじめした所で\n\nニャーニャー泣いていた事だけは記憶している。",
    "　ある日の暮方の事である。一人の下人が、羅生門の下で雨やみを待っていた。",
    "ｶﾀｶﾅ と ＡＢＣ、12345 個の 3.14 と 2026年11月28日",
    "GPT-2  is   a model;\tthe tab\tand  spaces  stay.",
    "🍣🍺 は絵文字、𠮷 は BMP の外、鬱 と 麤 は稀な漢字。",
    "  leading and trailing spaces  ",
    "「括弧」『二重』（丸）〈山〉《ルビ》……――",
    "\n",
    "a",
)


#: the ``tokenizer_class`` written to tokenizer_config.json: loadable by transformers 4.x and 5.x
TOKENIZER_CLASS = "PreTrainedTokenizerFast"


class HFTokenizerError(Gpt2jaError, ValueError):
    """The tokenizer has no verified ``transformers`` equivalent (one line)."""


def _sentencepiece(tok):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    from gpt2ja.tokenization.spm import META_SPACE, UNK_ID

    sp = tok._sp
    model_type = tok.options().get("model_type")
    if model_type != "unigram":
        raise HFTokenizerError(
            f"{tok.kind} tokenizer: model type {model_type!r} has no "
            "verified transformers equivalent (only unigram); the export ships gpt2ja's "
            "tokenizer artifact only"
        )
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    fast = Tokenizer(models.Unigram(vocab, unk_id=UNK_ID, byte_fallback=True))
    fast.normalizer = normalizers.Replace(" ", META_SPACE)
    fast.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex("\n"), behavior="isolated"),
            pre_tokenizers.Metaspace(replacement=META_SPACE, prepend_scheme="never", split=True),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    fast.decoder = decoders.Sequence([decoders.Replace(META_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    return fast


def _bytes(tok):
    from tokenizers import Tokenizer, decoders, models

    vocab = {f"<0x{b:02X}>": b for b in range(256)}
    fast = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True))
    fast.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    return fast


def build(tok, context_length: int | None = None):
    """A ``PreTrainedTokenizerFast`` equivalent to ``tok`` (our Tokenizer); HFTokenizerError when there is none.

    ``context_length`` (the model's) becomes ``model_max_length``.
    """
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast

    if tok.kind in ("sentencepiece", "mecab+sentencepiece"):
        fast = _sentencepiece(tok)
    elif tok.kind == "bytes":
        fast = _bytes(tok)
    else:
        raise HFTokenizerError(f"tokenizer kind {tok.kind!r} has no transformers equivalent")
    fast.add_special_tokens([AddedToken(EOS, special=True, normalized=False)])
    if fast.token_to_id(EOS) != tok.eos_id:
        raise HFTokenizerError(
            f"{tok.kind} tokenizer: {EOS} would get id {fast.token_to_id(EOS)}, not our eos_id {tok.eos_id}"
        )
    # the document start, exactly as training saw it: (T,) → (1 + T,)
    fast.post_processor = processors.TemplateProcessing(
        single=f"{EOS} $A", pair=f"{EOS} $A {EOS} $B:1", special_tokens=[(EOS, tok.eos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=fast,
        eos_token=EOS,
        bos_token=EOS,
        pad_token=EOS,
        unk_token=None,
        model_max_length=context_length,
        padding_side="left",
        truncation_side="left",
        model_input_names=["input_ids", "attention_mask"],
        clean_up_tokenization_spaces=False,
    )


def save(fast, out_dir: str) -> None:
    """``fast.save_pretrained(out_dir)`` with :data:`TOKENIZER_CLASS` as its ``tokenizer_class``."""
    import json
    import os

    fast.save_pretrained(out_dir)
    path = os.path.join(out_dir, "tokenizer_config.json")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    config["tokenizer_class"] = TOKENIZER_CLASS
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, ensure_ascii=False, sort_keys=True)
        f.write("\n")


def mismatches(tok, hf, texts=CHECK_TEXTS) -> list[str]:
    """The texts whose ids (or decoded text) differ between ``tok`` and the transformers tokenizer ``hf``.

    With special tokens, ``hf`` must give the document start first: ``[eos_id] + ids``.
    """
    bad = []
    for text in texts:
        ids = tok.encode(text)
        if (
            hf.encode(text, add_special_tokens=False) != ids
            or hf(text)["input_ids"] != [tok.eos_id] + ids
            or hf.decode(ids) != tok.decode(ids)
        ):
            bad.append(text)
    return bad
