"""GPT-2 sizes as data, and the one config object that describes a model.

A preset fixes the shape of the network (layers, width, heads, MLP width, the
default context, dropout); the vocabulary comes from the tokenizer and the
context length from the shards, so one preset serves every tokenizer::

    cfg = ModelConfig.from_preset("small", vocab_size=tok.vocab_size, context_length=manifest["seq_len"])
    cfg.padded_vocab_size      # 32000 → 32000, 50257 → 50304: the embedding has this many rows
    param_count(cfg)           # 110,418,432 for a 32,000-id vocabulary at 1,024 positions

Vocabulary padding. The token embedding (and the tied output layer) has
``padded_vocab_size`` rows, the tokenizer's size rounded up to a multiple of
64: matrix shapes that are multiples of 64 keep GPU tensor cores and TPU MXUs
busy (nanoGPT measured ~25% on the 50,257 → 50,304 change). The extra ids are
never produced by the tokenizer, so they are never targets; generation and
evaluation mask their logits to -inf, so they are never sampled or scored.

The shapes follow OpenAI's GPT-2 (``n_layer``, ``n_embd``, ``n_head``, MLP width
4 × ``n_embd``) and keras-hub's ``gpt2_presets.py``; ``tiny`` and ``mini`` are
ours, for CPU demos and tests.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gpt2ja.infra.errors import Gpt2jaError

VOCAB_MULTIPLE = 64

# name → {"config": shape, "metadata": words for people}. ``context_length`` is
# the preset's default (OpenAI's n_ctx); training uses the shards' seq_len.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "config": {
            "num_layers": 2,
            "hidden_dim": 128,
            "num_heads": 2,
            "intermediate_dim": 512,
            "context_length": 128,
            "dropout": 0.0,
        },
        "metadata": {"description": "2 layers, 128 wide: the CPU demo, trains in minutes"},
    },
    "micro": {
        "config": {
            "num_layers": 4,
            "hidden_dim": 256,
            "num_heads": 4,
            "intermediate_dim": 1024,
            "context_length": 256,
            "dropout": 0.0,
        },
        "metadata": {"description": "4 layers, 256 wide: between tiny and mini, for CPU budgets of an hour or two"},
    },
    "mini": {
        "config": {
            "num_layers": 6,
            "hidden_dim": 384,
            "num_heads": 6,
            "intermediate_dim": 1536,
            "context_length": 512,
            "dropout": 0.1,
        },
        "metadata": {"description": "6 layers, 384 wide: a real model on a laptop or one small GPU"},
    },
    "small": {
        "config": {
            "num_layers": 12,
            "hidden_dim": 768,
            "num_heads": 12,
            "intermediate_dim": 3072,
            "context_length": 1024,
            "dropout": 0.1,
        },
        "metadata": {"description": "GPT-2 small, the 117M family (124M with the 50,257-id GPT-2 vocabulary)"},
    },
    "medium": {
        "config": {
            "num_layers": 24,
            "hidden_dim": 1024,
            "num_heads": 16,
            "intermediate_dim": 4096,
            "context_length": 1024,
            "dropout": 0.1,
        },
        "metadata": {"description": "GPT-2 medium, the 345M family (355M with the GPT-2 vocabulary)"},
    },
    "large": {
        "config": {
            "num_layers": 36,
            "hidden_dim": 1280,
            "num_heads": 20,
            "intermediate_dim": 5120,
            "context_length": 1024,
            "dropout": 0.1,
        },
        "metadata": {"description": "GPT-2 large, the 774M family"},
    },
    "xl": {
        "config": {
            "num_layers": 48,
            "hidden_dim": 1600,
            "num_heads": 25,
            "intermediate_dim": 6400,
            "context_length": 1024,
            "dropout": 0.1,
        },
        "metadata": {"description": "GPT-2 XL, the 1.5B family"},
    },
}


class ModelError(Gpt2jaError, ValueError):
    """A model that cannot be built or loaded: one line naming the thing and the fix."""


def padded_vocab(vocab_size: int, multiple: int = VOCAB_MULTIPLE) -> int:
    """``vocab_size`` rounded up to a multiple of ``multiple`` (50,257 → 50,304)."""
    return -(-vocab_size // multiple) * multiple


class ModelConfig(BaseModel):
    """The shape of one GPT-2 model; stored in a run's ``hparams.json`` under ``"model"``.

    Example::

        >>> cfg = ModelConfig.from_preset("tiny", vocab_size=257, context_length=64)
        >>> cfg.padded_vocab_size, cfg.head_dim
        (320, 64)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: str | None = Field(None, description="the preset this shape came from, for people")
    vocab_size: int = Field(ge=2, le=2**31 - 1, description="the tokenizer's vocab size (ids 0..vocab_size-1)")
    num_layers: int = Field(ge=1, le=256, description="transformer blocks")
    hidden_dim: int = Field(ge=8, le=65536, description="residual stream width (n_embd)")
    num_heads: int = Field(ge=1, le=1024, description="attention heads; must divide hidden_dim")
    intermediate_dim: int = Field(ge=8, description="MLP width (4 × hidden_dim in GPT-2)")
    context_length: int = Field(ge=2, le=65536, description="positions (learned position embeddings)")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout on embeddings, attention and MLP")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "ModelConfig":
        if self.hidden_dim % self.num_heads:
            raise ValueError(f"hidden_dim {self.hidden_dim} is not divisible by num_heads {self.num_heads}")
        return self

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the token embedding: ``vocab_size`` rounded up to a multiple of 64."""
        return padded_vocab(self.vocab_size)

    @property
    def head_dim(self) -> int:
        return self.hidden_dim // self.num_heads

    @classmethod
    def from_preset(
        cls, name: str, *, vocab_size: int, context_length: int | None = None, dropout: float | None = None
    ) -> "ModelConfig":
        """The preset ``name`` with the tokenizer's ``vocab_size`` (and the shards' ``context_length``)."""
        if name not in PRESETS:
            raise ModelError(f"unknown model preset {name!r}; use one of {', '.join(PRESETS)}")
        shape = dict(PRESETS[name]["config"])
        if context_length is not None:
            shape["context_length"] = context_length
        if dropout is not None:
            shape["dropout"] = dropout
        return cls(preset=name, vocab_size=vocab_size, **shape)


def param_count(cfg: ModelConfig) -> int:
    """Trainable parameters of the model ``cfg`` builds (padded vocabulary, tied output layer).

    Per block: two LayerNorms (2·2H), attention QKV + output (4H² + 4H), MLP
    (2·H·I + I + H); plus token (V_padded·H) and position (T·H) embeddings and
    the final LayerNorm (2H). The output layer reuses the token embedding.
    """
    h, i, layers = cfg.hidden_dim, cfg.intermediate_dim, cfg.num_layers
    block = 4 * h + (4 * h * h + 4 * h) + (2 * h * i + i + h)
    return cfg.padded_vocab_size * h + cfg.context_length * h + layers * block + 2 * h


def preset_param_counts(vocab_size: int) -> dict[str, int]:
    """``{preset: parameters}`` for a tokenizer of ``vocab_size`` ids at each preset's default context."""
    return {name: param_count(ModelConfig.from_preset(name, vocab_size=vocab_size)) for name in PRESETS}


def training_memory_bytes(cfg: ModelConfig, micro_batch: int, *, mixed_precision: bool = False) -> int:
    """A rough peak of memory for training ``cfg`` with ``micro_batch`` sequences per device.

    Weights, gradient accumulators and gradients (4 bytes each) plus AdamW's two
    moments: 20 bytes per parameter. Activations kept for the backward pass per
    layer and token (Korthikanti et al. 2022, without recomputation):
    ``34·H + 5·heads·T`` bytes in 16-bit precision, twice that in fp32; plus the
    logits (B·T·V at 4 bytes, twice: values and gradient). An estimate to stop
    hopeless runs early, not a promise.
    """
    n = param_count(cfg)
    t, h = cfg.context_length, cfg.hidden_dim
    width = 2 if mixed_precision else 4
    per_token_layer = 34 * h + 5 * cfg.num_heads * t
    activations = micro_batch * t * cfg.num_layers * per_token_layer * width // 2
    logits = 2 * micro_batch * t * cfg.padded_vocab_size * 4
    return 20 * n + activations + logits


def host_memory_bytes() -> int | None:
    """Physical memory of this machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
