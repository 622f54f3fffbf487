"""GPT-2 as a Keras 3 model on TensorFlow: KerasHub's backbone, a tied LM head, the loss.

The network is KerasHub's ``GPT2Backbone`` (pre-LayerNorm decoder blocks,
learned position embeddings, tanh-approximated GELU, final LayerNorm) built
from a :class:`~model.presets.ModelConfig` — never ``from_preset``, which would
download weights — wrapped in KerasHub's ``GPT2CausalLM`` with no preprocessor.
The LM head is the token embedding used in reverse (``ReversibleEmbedding``
with ``tie_weights=True``): logits = h · Eᵀ, one matrix for input and output,
as in GPT-2. Nothing here is our own layer: KerasHub's cover everything
GPT-2 needs. :func:`call_with_layer_caches` is ``GPT2CausalLM.call_with_cache``
over the same layers with one key and one value tensor per layer, the
fixed-size KV cache that :mod:`model.generate` decodes with (KerasHub's one
stacked tensor is copied whole at every token).

Shapes: token ids ``(B, T)`` int32 → logits ``(B, T, V_padded)`` float32
(cast from the compute dtype under mixed precision), ``T ≤ context_length``.

Example::

    cfg = ModelConfig.from_preset("tiny", vocab_size=257, context_length=64)
    lm = build_model(cfg)
    out = logits(lm, tf.zeros((2, 64), tf.int32))               # (2, 64, 320)
    loss = causal_lm_loss(out, targets)                          # mean NLL over targets ≥ 0
"""

from __future__ import annotations

import os

from model.presets import ModelConfig

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras_hub  # noqa: E402
import tensorflow as tf  # noqa: E402

IGNORE_ID = -1  # a target < 0 is not scored (no loss, no count)


def build_model(cfg: ModelConfig, *, dtype: str | None = None) -> "keras_hub.models.GPT2CausalLM":
    """A randomly initialised GPT-2 of shape ``cfg`` (GPT-2's init: N(0, 0.02), embeddings N(0, 0.01)).

    ``dtype`` is a Keras dtype policy name: None/"float32", or "mixed_bfloat16"
    / "mixed_float16" (variables stay float32, matmuls run in 16 bits). Build it
    inside ``strategy.scope()`` to place variables for a ``tf.distribute`` strategy;
    seed it with ``keras.utils.set_random_seed`` for reproducible weights.
    """
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=cfg.padded_vocab_size,
        num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        hidden_dim=cfg.hidden_dim,
        intermediate_dim=cfg.intermediate_dim,
        dropout=cfg.dropout,
        max_sequence_length=cfg.context_length,
        dtype=dtype,
    )
    # GPT2CausalLM's output layer is backbone.token_embedding(h, reverse=True):
    # the tied Eᵀ, no weights of its own.
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


def logits(lm, token_ids, *, training: bool = False):
    """``(B, T)`` int32 ids → ``(B, T, V_padded)`` float32 next-token logits (causal)."""
    ids = tf.convert_to_tensor(token_ids, tf.int32)
    out = lm({"token_ids": ids, "padding_mask": tf.ones_like(ids)}, training=training)
    return tf.cast(out, tf.float32)


def mask_padding(scores, vocab_size: int):
    """Logits ``(..., V_padded)`` with those of padding ids (``≥ vocab_size``) at -inf: never sampled or scored."""
    ids = tf.range(tf.shape(scores)[-1])
    return tf.where(ids < vocab_size, scores, tf.constant(float("-inf"), scores.dtype))


def token_nll(scores, targets):
    """Per-position negative log-likelihood in nats, 0 where ``targets < 0``.

    ``scores`` (B, T, V) float, ``targets`` (B, T) int → ((B, T) nll, (B, T) float mask).
    """
    targets = tf.convert_to_tensor(targets, tf.int32)
    mask = targets >= 0
    safe = tf.where(mask, targets, 0)  # an ignored target still needs a valid index
    nll = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe, logits=tf.cast(scores, tf.float32))
    weights = tf.cast(mask, tf.float32)
    return nll * weights, weights


def causal_lm_loss_sum(scores, targets):
    """(sum of NLL over scored targets, number of scored targets): the exact pieces of a masked mean.

    Training sums these over micro-batches and replicas before dividing, so the
    mean is over every scored token of the global batch however it is split.
    """
    nll, weights = token_nll(scores, targets)
    return tf.reduce_sum(nll), tf.reduce_sum(weights)


def causal_lm_loss(scores, targets):
    """Mean next-token NLL (nats) over targets ≥ 0; targets < 0 (:data:`IGNORE_ID`) are not counted.

    ``scores`` (B, T, V) are the logits at each input position, ``targets`` (B, T)
    the next ids (the shards give ``inputs = w[:-1]``, ``targets = w[1:]``).
    """
    total, count = causal_lm_loss_sum(scores, targets)
    return total / tf.maximum(count, 1.0)


def token_embedding(lm):
    """The one ``(V_padded, H)`` matrix that embeds tokens and (transposed) produces logits."""
    return lm.backbone.token_embedding.embeddings


def dropout_rng_states(lm) -> list:
    """The random-state variables of every dropout layer, in a fixed order.

    Keras keeps each Dropout's seed in a ``SeedGenerator`` whose state is not a
    weight, so ``tf.train.Checkpoint`` misses it; training checkpoints these
    explicitly so a resumed run draws the same dropout masks as an unbroken one.
    """
    states = []
    for layer in lm.backbone._flatten_layers(include_self=True, recursive=True):
        gen = getattr(layer, "seed_generator", None)
        if gen is not None:
            states.append(gen.state.value if hasattr(gen.state, "value") else gen.state)
    return states


def describe(lm) -> str:
    """One line: layers, width, heads, vocabulary, context and parameter count."""
    b = lm.backbone
    return (f"GPT-2 {b.num_layers} layers × {b.hidden_dim} wide, {b.num_heads} heads, "
            f"{b.vocabulary_size:,} ids, {b.max_sequence_length} positions, {lm.count_params():,} parameters")



def empty_layer_caches(lm, batch, length: int) -> tuple:
    """Zeroed keys and values for :func:`call_with_layer_caches`: ``2 × layers`` tensors of ``(B, C, H, D)``."""
    b = lm.backbone
    shape = [batch, length, b.num_heads, b.hidden_dim // b.num_heads]
    return tuple(tf.zeros(shape, lm.compute_dtype) for _ in range(2 * b.num_layers))


def call_with_layer_caches(lm, token_ids, caches: tuple, index):
    """``GPT2CausalLM.call_with_cache`` with one key and one value tensor per layer: ``(logits, caches)``.

    ``token_ids`` ``(B, T)`` are the positions ``index … index + T - 1``;
    ``caches`` is ``(k_0, …, k_{L-1}, v_0, …, v_{L-1})``, each ``(B, C, H, D)``,
    and comes back with those positions written. KerasHub's own method keeps
    one ``(B, L, 2, C, H, D)`` tensor: every step slices each layer's keys and
    values out of it and stacks them back, a copy of the whole cache per
    token (and more in graph mode). Here each tensor is only updated in place
    at ``index`` (under XLA, a loop-carried buffer) and read by attention.
    The layers are KerasHub's own (their sublayers called in
    ``TransformerDecoder``'s pre-LayerNorm order, at inference: no dropout);
    ``tests/test_model.py`` checks the logits against ``call_with_cache``.
    """
    from keras import ops

    b = lm.backbone
    layers = b.transformer_layers
    tokens = b.token_embedding(token_ids)
    x = b.embeddings_add((tokens, b.position_embedding(tokens, start_index=index)))
    length, steps = caches[0].shape[1], tf.shape(token_ids)[1]
    # position index + t sees the cache's positions ≤ index + t: (1, T, C)
    mask = (tf.range(length)[None, :] <= index + tf.range(steps)[:, None])[None]
    keys, values = list(caches[:len(layers)]), list(caches[len(layers):])
    for i, layer in enumerate(layers):
        attention = layer._self_attention_layer
        h = layer._self_attention_layer_norm(x)
        keys[i] = ops.slice_update(keys[i], [0, index, 0, 0], attention._key_dense(h))
        values[i] = ops.slice_update(values[i], [0, index, 0, 0], attention._value_dense(h))
        out, _ = attention._compute_attention(query=attention._query_dense(h), key=keys[i], value=values[i],
                                              attention_mask=mask, training=False)
        x = x + attention._output_dense(out)
        h = layer._feedforward_layer_norm(x)
        x = x + layer._feedforward_output_dense(layer._feedforward_intermediate_dense(h))
    x = b.layer_norm(x)
    return b.token_embedding(x, reverse=True), tuple(keys + values)
