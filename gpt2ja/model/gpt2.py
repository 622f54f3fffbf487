"""GPT-2 as a Keras 3 model on TensorFlow or JAX: KerasHub's backbone, a tied LM head, the loss.

The network is KerasHub's ``GPT2Backbone`` (pre-LayerNorm decoder blocks,
learned position embeddings, tanh-approximated GELU, final LayerNorm) built
from a :class:`~gpt2ja.model.presets.ModelConfig` — never ``from_preset``, which would
download weights — wrapped in KerasHub's ``GPT2CausalLM`` with no preprocessor.
The LM head is the token embedding used in reverse (``ReversibleEmbedding``
with ``tie_weights=True``): logits = h · Eᵀ, one matrix for input and output,
as in GPT-2. Training and scoring run KerasHub's layers as they are.

Backends. The model, the forward pass and the loss are written with
``keras.ops`` and run on whichever backend :mod:`gpt2ja.model.backend` chose for the
process (on TensorFlow they are the ops they always were:
``sparse_categorical_crossentropy`` is ``tf.nn.sparse_softmax_cross_entropy_with_logits``).
Importing this module imports no TensorFlow. On JAX, :func:`stateless_jit`
compiles a function of the model with its weights as arguments of the program.
The TensorFlow generator's one-token decoding step is ours,
:func:`call_with_layer_caches` (TensorFlow only, imported when called):
KerasHub's weights and LayerNorm/feed-forward sublayers, with the attention
written out over one key and one value tensor per layer (KerasHub's
``call_with_cache`` copies its one stacked cache whole and transposes it at
every token); tests check it against ``call_with_cache`` and the full forward
pass. The JAX generator (:mod:`gpt2ja.model.generate_jax`) runs KerasHub's
``call_with_cache`` itself.

Shapes: token ids ``(B, T)`` int32 → logits ``(B, T, V_padded)`` float32
(cast from the compute dtype under mixed precision), ``T ≤ context_length``.

Example::

    cfg = ModelConfig.from_preset("tiny", vocab_size=257, context_length=64)
    lm = build_model(cfg)
    out = logits(lm, np.zeros((2, 64), np.int32))                # (2, 64, 320)
    loss = causal_lm_loss(out, targets)                          # mean NLL over targets ≥ 0
"""

from __future__ import annotations

import os
from collections.abc import Callable

from gpt2ja.model.presets import ModelConfig

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras_hub  # noqa: E402
from keras import ops  # noqa: E402

IGNORE_ID = -1  # a target < 0 is not scored (no loss, no count)


def build_model(cfg: ModelConfig, *, dtype: str | None = None) -> "keras_hub.models.GPT2CausalLM":
    """A randomly initialised GPT-2 of shape ``cfg`` (GPT-2's init: N(0, 0.02), embeddings N(0, 0.01)).

    ``dtype`` is a Keras dtype policy name: None/"float32", or "mixed_bfloat16"
    / "mixed_float16" (variables stay float32, matmuls run in 16 bits). On
    TensorFlow, build it inside ``strategy.scope()`` to place variables for a
    ``tf.distribute`` strategy; seed it with ``keras.utils.set_random_seed`` for
    reproducible weights.
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
    """``(B, T)`` int32 ids → ``(B, T, V_padded)`` float32 next-token logits (causal), a backend tensor."""
    ids = ops.convert_to_tensor(token_ids, "int32")
    out = lm({"token_ids": ids, "padding_mask": ops.ones_like(ids)}, training=training)
    return ops.cast(out, "float32")


def mask_padding(scores, vocab_size: int):
    """Logits ``(..., V_padded)`` with those of padding ids (``≥ vocab_size``) at -inf: never sampled or scored."""
    scores = ops.convert_to_tensor(scores)
    real = ops.arange(scores.shape[-1]) < vocab_size  # (V_padded,): the width is static
    return ops.where(real, scores, ops.full_like(scores, float("-inf")))


def token_nll(scores, targets):
    """Per-position negative log-likelihood in nats, 0 where ``targets < 0``.

    ``scores`` (B, T, V) float, ``targets`` (B, T) int → ((B, T) nll, (B, T) float mask).
    """
    targets = ops.convert_to_tensor(targets, "int32")
    mask = targets >= 0
    safe = ops.where(mask, targets, 0)  # an ignored target still needs a valid index
    nll = ops.sparse_categorical_crossentropy(safe, ops.cast(scores, "float32"), from_logits=True)
    weights = ops.cast(mask, "float32")
    return nll * weights, weights


def causal_lm_loss_sum(scores, targets):
    """(sum of NLL over scored targets, number of scored targets): the exact pieces of a masked mean.

    Training sums these over micro-batches and replicas before dividing, so the
    mean is over every scored token of the global batch however it is split.
    """
    nll, weights = token_nll(scores, targets)
    return ops.sum(nll), ops.sum(weights)


def causal_lm_loss(scores, targets):
    """Mean next-token NLL (nats) over targets ≥ 0; targets < 0 (:data:`IGNORE_ID`) are not counted.

    ``scores`` (B, T, V) are the logits at each input position, ``targets`` (B, T)
    the next ids (the shards give ``inputs = w[:-1]``, ``targets = w[1:]``).
    """
    total, count = causal_lm_loss_sum(scores, targets)
    return total / ops.maximum(count, 1.0)


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
    return (
        f"GPT-2 {b.num_layers} layers × {b.hidden_dim} wide, {b.num_heads} heads, "
        f"{b.vocabulary_size:,} ids, {b.max_sequence_length} positions, {lm.count_params():,} parameters"
    )


def stateless_jit(lm, fn: Callable, **jit_options) -> Callable:
    """``fn(*args)`` compiled with ``jax.jit`` (JAX backend), the model's variables passed in at each call.

    ``fn`` uses ``lm`` as usual (``logits(lm, ids)``, ``lm.call_with_cache``):
    inside the compiled program its variables read the values given as
    arguments (a ``keras.StatelessScope``), so the weights are inputs of the
    program, not constants folded into it (a model's worth of constants per
    program, and stale ones after ``assign``). Every call passes the variables'
    current values; ``fn`` must not update them. ``jit_options`` go to ``jax.jit``.

    Example::

        forward = stateless_jit(lm, lambda ids: logits(lm, ids))
        forward(np.zeros((2, 64), np.int32))                      # a jax.Array (2, 64, 320)
    """
    import jax
    import keras

    variables = list(lm.variables)

    def run(values, *args):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return fn(*args)

    compiled = jax.jit(run, **jit_options)

    def call(*args):
        return compiled([v.value for v in variables], *args)

    return call


# ----------------------------------------------------------------- TensorFlow's decoding step


def empty_layer_caches(lm, batch, length: int) -> tuple:
    """Zeroed keys and values for :func:`call_with_layer_caches`: ``2 × layers`` tensors of ``(B, H, C, D)``."""
    import tensorflow as tf

    b = lm.backbone
    shape = [batch, b.num_heads, length, b.hidden_dim // b.num_heads]
    return tuple(tf.zeros(shape, lm.compute_dtype) for _ in range(2 * b.num_layers))


def call_with_layer_caches(lm, token_ids, caches: tuple, index, weights: list | None = None):
    """``GPT2CausalLM.call_with_cache`` with one key and one value tensor per layer: ``(logits, caches)``.

    ``token_ids`` ``(B, T)`` are the positions ``index … index + T - 1``;
    ``caches`` is ``(k_0, …, k_{L-1}, v_0, …, v_{L-1})``, each ``(B, H, C, D)``,
    and comes back with those positions written. What differs from KerasHub's
    method, for a one-token step's sake (its weights are KerasHub's, read as
    they are; ``tests/test_model.py`` checks the logits against
    ``call_with_cache`` and against the full forward pass):

    * KerasHub keeps one ``(B, L, 2, C, H, D)`` tensor: every step slices each
      layer's keys and values out of it and stacks them back, a copy of the
      whole cache per token. Here each tensor is only updated at ``index`` (in
      place under XLA, a loop-carried buffer).
    * Heads before positions, so attention multiplies the cache as it lies
      (``transpose_b``) where KerasHub's einsums transpose every layer's cache
      on every token.
    * Query, key and value in one 2-D matmul against the three kernels side
      by side, and the output projection as a 2-D matmul: on the CPU a
      batched einsum costs about twice a plain matmul at one row. The joined
      matrices are ``weights`` (:func:`decoding_weights`): a decoding loop
      makes them once, outside the loop, and passes them to every step.
    * The tied LM head without transposing the embedding (:func:`reverse_embedding`).

    Inference only: no dropout, as KerasHub's at ``training=False``. TensorFlow only.
    """
    import tensorflow as tf

    b = lm.backbone
    layers = b.transformer_layers
    heads, width = b.num_heads, b.hidden_dim
    depth = width // heads
    tokens = b.token_embedding(token_ids)
    x = b.embeddings_add((tokens, b.position_embedding(tokens, start_index=index)))
    batch, steps, length = tf.shape(token_ids)[0], tf.shape(token_ids)[1], caches[0].shape[2]
    # position index + t sees the cache's positions ≤ index + t: (1, 1, T, C)
    mask = (tf.range(length)[None, :] <= index + tf.range(steps)[:, None])[None, None]
    keys, values = list(caches[: len(layers)]), list(caches[len(layers) :])
    weights = weights if weights is not None else decoding_weights(lm)
    for i, layer in enumerate(layers):
        kernel, bias, out_kernel, out_bias = weights[i]
        h = tf.reshape(layer._self_attention_layer_norm(x), [-1, width])
        qkv = tf.reshape(tf.matmul(h, kernel) + bias, [batch, steps, 3, heads, depth])
        q, k, v = (tf.transpose(qkv[:, :, j], [0, 2, 1, 3]) for j in range(3))  # (B, H, T, D)
        keys[i] = ops.slice_update(keys[i], [0, 0, index, 0], k)
        values[i] = ops.slice_update(values[i], [0, 0, index, 0], v)
        scores = tf.matmul(q * tf.cast(depth**-0.5, q.dtype), keys[i], transpose_b=True)  # (B, H, T, C)
        probs = tf.nn.softmax(tf.where(mask, scores, tf.cast(float("-inf"), scores.dtype)), axis=-1)
        attended = tf.reshape(tf.transpose(tf.matmul(probs, values[i]), [0, 2, 1, 3]), [-1, width])
        x = x + tf.reshape(tf.matmul(attended, out_kernel) + out_bias, [batch, steps, width])
        h = layer._feedforward_layer_norm(x)
        x = x + layer._feedforward_output_dense(layer._feedforward_intermediate_dense(h))
    x = b.layer_norm(x)
    return reverse_embedding(b.token_embedding, x), tuple(keys + values)


def decoding_weights(lm) -> list:
    """Per layer, KerasHub's attention projections as 2-D matrices in the compute dtype: the ``(d, 3d)``
    query|key|value kernel, its bias, the ``(d, d)`` output kernel and its bias (for :func:`call_with_layer_caches`)."""
    import tensorflow as tf

    dtype, out = lm.compute_dtype, []
    for layer in lm.backbone.transformer_layers:
        attention = layer._self_attention_layer
        width = attention._query_dense.kernel.shape[0]
        parts = [attention._query_dense, attention._key_dense, attention._value_dense]
        kernel = tf.concat([tf.reshape(tf.cast(p.kernel, dtype), [width, -1]) for p in parts], axis=1)
        bias = tf.concat([tf.reshape(tf.cast(p.bias, dtype), [-1]) for p in parts], axis=0)
        proj = attention._output_dense
        out.append((kernel, bias, tf.reshape(tf.cast(proj.kernel, dtype), [-1, width]), tf.cast(proj.bias, dtype)))
    return out


def reverse_embedding(embedding, x):
    """``embedding(x, reverse=True)``, the tied LM head, without transposing the embedding matrix.

    KerasHub's ``ReversibleEmbedding`` computes ``x · transpose(E)``, a
    transposed copy of the whole ``(V, d)`` matrix in its graph (24.8 MB at
    8,064 × 768), and multiplies as a batched matmul; here one 2-D
    ``matmul(…, transpose_b=True)`` reads ``E`` as it is. (Not timed alone: it
    it is part of the decoding step measured in docs/speed.md.)
    An untied, soft-capped or recast head goes through KerasHub's own call.
    """
    import tensorflow as tf

    if not embedding.tie_weights or embedding.reverse_dtype is not None or embedding.logit_soft_cap is not None:
        return embedding(x, reverse=True)
    table = tf.cast(embedding.embeddings, x.dtype)
    rows = tf.reshape(x, [-1, x.shape[-1]])  # a 2-D matmul: cheaper than a batched one here
    return tf.reshape(tf.matmul(rows, table, transpose_b=True), tf.concat([tf.shape(x)[:-1], [-1]], 0))
