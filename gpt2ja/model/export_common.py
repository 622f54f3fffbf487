"""What the Hugging Face export (:mod:`gpt2ja.model.export`) and its model card (:mod:`gpt2ja.model.model_card`)
share: the export's error, the name of the tokenizer copy and the ``generation_config.json`` it writes."""

from __future__ import annotations

from gpt2ja.model.presets import ModelError

TOKENIZER_COPY = "gpt2ja_tokenizer"


class ExportError(ModelError):
    """An export that cannot be written or does not reproduce the run: one line naming the run and the fix."""


def generation_config(cfg, eos_id: int) -> dict:
    """``generation_config.json``: ``gpt2ja generate``'s sampling defaults, padding ids suppressed.

    No ``max_length``: ``max_new_tokens`` is half the context (our generator's
    default ``keep``), so a prompt of up to half the context plus the new tokens
    fits the position embedding (transformers cannot slide the window as ours does).
    """
    from gpt2ja.model.generate import DEFAULT_SAMPLING

    return {
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "pad_token_id": eos_id,
        "suppress_tokens": list(range(cfg.vocab_size, cfg.padded_vocab_size)),
        "do_sample": True,
        "temperature": float(DEFAULT_SAMPLING["temperature"]),
        "top_k": int(DEFAULT_SAMPLING["top_k"]),  # 0: off, in transformers as in ours
        "top_p": float(DEFAULT_SAMPLING["top_p"]),
        "max_new_tokens": max(1, cfg.context_length // 2),
    }
