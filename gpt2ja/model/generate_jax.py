"""Generation on the JAX backend: :mod:`gpt2ja.model.generate`'s loop around jitted JAX steps.

The sampling is :mod:`gpt2ja.model.generate`'s, step for step: padding ids → -inf,
temperature, top-k, top-p (Hugging Face's order, ties and rules), a draw from
what is left (``greedy``: the argmax); every row starts with EOS and its
prompt, rows step together from the shortest prompt's end, a full window keeps
its newest ``keep`` tokens and the cache is rebuilt. What differs is how the
steps run:

* the cache is KerasHub's own, one ``(B, layers, 2, C, heads, head_dim)``
  tensor, filled and read by ``GPT2CausalLM.call_with_cache`` (backend-neutral
  Keras); the prefill and each chunk of steps (a ``lax.while_loop``) are one
  ``jax.jit`` program each, the weights their arguments
  (:func:`gpt2ja.model.gpt2.stateless_jit`), all shapes static;
* the filters sort each row once (:func:`filter_logits`, the rule of
  :func:`gpt2ja.model.generator._filter_sorted`) instead of TensorFlow's bisection;
* the draw is ``jax.random.categorical`` under the key ``fold_in(key(seed),
  step)``: a seed repeats its samples, but they are not TensorFlow's (nor are
  TensorFlow's under XLA its CPU kernels'). Greedy decoding gives the same ids
  on both backends (``tests/test_backends.py``).

Example::

    gen = Generator(lm, vocab_size=tok.vocab_size, eos_id=tok.eos_id)   # a JaxGenerator under KERAS_BACKEND=jax
    gen.generate_ids([[tok.eos_id] + tok.encode("吾輩は")], max_new_tokens=20, top_k=40, seed=1)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gpt2ja.model.generator import Generator


def filter_logits(scores, temperature, top_k, top_p):
    """Temperature, then top-k, then top-p on ``(B, V)`` logits (jnp; traced values welcome); removed → -inf.

    One stable ascending sort per row serves both filters (ties: lower id
    first, as Hugging Face's top-p sorts): the k-th largest is read from it,
    top-p's cumulative runs over it, and its verdicts go back to id order
    through the inverse permutation. ``top_k = 0`` and ``top_p = 1`` are off.
    """
    import jax
    import jax.numpy as jnp

    scores = scores.astype(jnp.float32) / jnp.asarray(temperature, jnp.float32)
    vocab = scores.shape[-1]
    order = jnp.argsort(scores, axis=-1, stable=True)  # (B, V) ascending
    ascending = jnp.take_along_axis(scores, order, axis=-1)
    # top-k: the k-th largest value is the threshold (ties at it are kept)
    k = jnp.minimum(jnp.asarray(top_k, jnp.int32), vocab)
    kth = jnp.take(ascending, vocab - jnp.maximum(k, 1), axis=-1)[:, None]  # (B, 1)
    kth = jnp.where(k > 0, kth, -jnp.inf)
    scores = jnp.where(scores < kth, -jnp.inf, scores)
    ascending = jnp.where(ascending < kth, -jnp.inf, ascending)
    # top-p over the top-k survivors (softmax renormalises them); the largest is always kept
    p = jnp.asarray(top_p, jnp.float32)
    cumulative = jnp.cumsum(jax.nn.softmax(ascending, axis=-1), axis=-1)
    drop_sorted = (cumulative <= 1.0 - p) & (jnp.arange(vocab) < vocab - 1)[None, :]
    drop = jnp.take_along_axis(drop_sorted, jnp.argsort(order, axis=-1), axis=-1) & (p < 1.0)
    return jnp.where(drop, -jnp.inf, scores)


class JaxGenerator(Generator, keras_backend="jax"):
    """:class:`gpt2ja.model.generate.Generator` on the JAX backend (what ``Generator(...)`` gives there).

    ``jit_compile`` is accepted and ignored: every piece is jitted (XLA is
    JAX's only compiler). Reuse one generator: its programs are compiled per
    batch size, prefill length and decoding mode, once.
    """

    def __init__(self, lm, *, vocab_size: int, eos_id: int, jit_compile: bool | None = None) -> None:
        from gpt2ja.model import gpt2

        self.lm, self.vocab_size, self.eos_id = lm, vocab_size, eos_id
        self.context = lm.backbone.max_sequence_length
        self.jit_compile = True
        self._prefill = gpt2.stateless_jit(lm, self._prefill_fn)
        self._decoders: dict[tuple[bool, bool], Callable] = {}

    def _prefill_fn(self, buffer):
        """KerasHub's cache ``(B, layers, 2, C, heads, head_dim)`` holding ``buffer``'s keys and values (B, T ≤ C)."""
        import jax.numpy as jnp

        b = self.lm.backbone
        shape = (buffer.shape[0], b.num_layers, 2, self.context, b.num_heads, b.hidden_dim // b.num_heads)
        return self.lm.call_with_cache(buffer, jnp.zeros(shape, self.lm.compute_dtype), 0)[2]

    def _no_cache(self):
        import jax.numpy as jnp

        return jnp.zeros((1,), jnp.float32)

    def _fill(self, buffer: np.ndarray):
        return self._prefill(buffer)

    def _chunk(
        self,
        use_cache: bool,
        greedy: bool,
        buffer: np.ndarray,
        fixed: np.ndarray,
        cache,
        index: int,
        n: int,
        done: np.ndarray,
        t: int,
        sampling: tuple,
    ) -> tuple[np.ndarray, object, int, int]:
        key = (use_cache, greedy)
        if key not in self._decoders:
            from gpt2ja.model import gpt2

            self._decoders[key] = gpt2.stateless_jit(self.lm, self._make_decode(use_cache, greedy))
        seed, temperature, top_k, top_p = sampling
        new_buffer, cache, new_index, new_t = self._decoders[key](
            buffer,
            fixed,
            cache,
            np.int32(index),
            np.int32(n),
            done,
            np.int32(t),
            np.int32(seed),
            np.float32(temperature),
            np.int32(top_k),
            np.float32(top_p),
        )
        return np.asarray(new_buffer), cache, int(new_index), int(new_t)

    def _make_decode(self, use_cache: bool, greedy: bool):
        import jax
        import jax.numpy as jnp

        from gpt2ja.model import gpt2

        lm, context, eos, vocab = self.lm, self.context, self.eos_id, self.vocab_size

        def decode(buffer, fixed, cache, index, n, done, t, seed, temperature, top_k, top_p):
            """Up to ``n`` steps writing positions index, index+1, …; stops early when every row is done."""
            base = jax.random.key(seed)

            def cond(state):
                i, _, _, _, done, _ = state
                return (i < n) & ~jnp.all(done)

            def body(state):
                i, buffer, cache, index, done, t = state
                pos = index - 1  # the last filled position predicts the next one
                if use_cache:
                    last = jax.lax.dynamic_slice_in_dim(buffer, pos, 1, axis=1)  # (B, 1)
                    out, _, cache = lm.call_with_cache(last, cache, pos)
                    scores = out[:, 0, :]  # (B, V_padded)
                else:  # full pass (B, C, V)
                    scores = jax.lax.dynamic_index_in_dim(gpt2.logits(lm, buffer), pos, axis=1, keepdims=False)
                scores = gpt2.mask_padding(scores.astype(jnp.float32), vocab)
                if greedy:
                    picked = jnp.argmax(scores, axis=-1).astype(jnp.int32)
                else:
                    warped = filter_logits(scores, temperature, top_k, top_p)
                    picked = jax.random.categorical(jax.random.fold_in(base, t), warped, axis=-1).astype(jnp.int32)
                column = (jnp.arange(context) == index)[None, :]  # (1, C)
                forced = jnp.any(fixed & column, axis=1)  # (B,) still in the prompt
                current = jnp.sum(jnp.where(column, buffer, 0), axis=1)
                picked = jnp.where(forced, current, picked)
                picked = jnp.where(done, eos, picked)
                buffer = jnp.where(column, picked[:, None], buffer)
                done = done | (~forced & (picked == eos))
                return i + 1, buffer, cache, index + 1, done, t + 1

            _, buffer, cache, index, _, t = jax.lax.while_loop(
                cond, body, (jnp.int32(0), buffer, cache, index, done, t)
            )
            return buffer, cache, index, t

        return decode
