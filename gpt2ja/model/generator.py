"""The decoder behind :func:`gpt2ja.model.generate.generate`: the sampling filters and :class:`Generator`.

The module docstring of :mod:`gpt2ja.model.generate` describes both (the filters' order and semantics, the KV
cache, the chunks and the sliding window). The JAX backend's :class:`gpt2ja.model.generate_jax.JaxGenerator`
subclasses :class:`Generator` and registers itself for ``jax``; :mod:`gpt2ja.model.generate` imports both, so
``Generator(...)`` imported from there is the JAX one under ``KERAS_BACKEND=jax``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from gpt2ja.model.presets import ModelError


def check_sampling(*, temperature: float, top_k: int, top_p: float, greedy: bool = False) -> None:
    """One clear line for sampling settings outside their range."""
    if not greedy and not temperature > 0:
        raise ModelError(f"temperature {temperature} must be > 0 (use greedy for argmax decoding)")
    if top_k < 0:
        raise ModelError(f"top_k {top_k} must be ≥ 0 (0 turns top-k off)")
    if not 0 < top_p <= 1:
        raise ModelError(f"top_p {top_p} must be in (0, 1] (1 turns top-p off)")


_INT32_MIN = -(2**31)
#: on a CPU, a one-row decoding step of a model this large runs faster in graph mode than under XLA (see Generator)
CPU_MATVEC_PARAMS = 20_000_000


def filter_logits(scores, temperature, top_k, top_p, *, full_sort: bool = False):
    """Temperature, then top-k, then top-p on ``(B, V)`` float logits; removed tokens get -inf.

    ``temperature`` > 0, ``top_k`` ≥ 0 (0 = off), ``top_p`` in (0, 1] (1 = off),
    scalars or tensors (k and p may change without retracing; XLA-friendly).
    Both filters find their threshold by bisection on the float bits
    (:func:`_kth_largest_key`, :func:`_top_p_keep`): a fixed number of
    compare-and-sum passes over the row, no sort and no scatter, so the whole
    sampling step compiles with XLA on a CPU too. ``full_sort`` sorts each row
    instead (:func:`_filter_sorted`, the reference the tests compare with).
    Both keep the same tokens, up to the order of floating-point sums at a
    cumulative probability within rounding of ``1 - top_p``.
    """
    import tensorflow as tf

    scores = tf.cast(scores, tf.float32) / tf.cast(temperature, tf.float32)
    if full_sort:
        return _filter_sorted(scores, top_k, top_p)
    neg_inf = tf.constant(float("-inf"), tf.float32)
    k = tf.minimum(tf.cast(top_k, tf.int32), tf.shape(scores)[-1])

    def top_k_only():
        keys = _ordered_keys(scores)
        return tf.where(keys < _kth_largest_key(keys, k), neg_inf, scores)  # ties at the k-th value are kept

    scores = tf.cond(k > 0, top_k_only, lambda: scores)
    p = tf.cast(top_p, tf.float32)
    return tf.cond(p < 1.0, lambda: tf.where(_top_p_keep(scores, p), scores, neg_inf), lambda: scores)


def _ordered_keys(scores):
    """float32 → int32 in the same order (-0.0 equal to 0.0, -inf the lowest): comparisons as integers."""
    import tensorflow as tf

    bits = tf.bitcast(tf.where(tf.equal(scores, 0.0), 0.0, scores), tf.int32)
    return tf.where(bits < 0, tf.bitwise.bitwise_xor(bits, tf.constant(2**31 - 1, tf.int32)), bits)


def _kth_largest_key(keys, k):
    """``(B, 1)``: the k-th largest of each row of int32 ``keys`` (1 ≤ k ≤ V), by 32 halvings of the int32 range.

    Invariant: at least k keys are ≥ ``lo`` and fewer than k are ≥ ``hi``; when
    ``hi = lo + 1``, ``lo`` is the k-th largest key itself.
    """
    import tensorflow as tf

    keys = tf.cast(keys, tf.int64)
    batch = tf.shape(keys)[0]

    def halve(lo, hi):
        mid = (lo + hi) // 2
        enough = tf.reduce_sum(tf.cast(keys >= mid, tf.int32), axis=-1, keepdims=True) >= k
        return tf.where(enough, mid, lo), tf.where(enough, hi, mid)

    lo, _ = tf.while_loop(
        lambda lo, hi: True,
        halve,
        (tf.fill([batch, 1], tf.constant(_INT32_MIN, tf.int64)), tf.fill([batch, 1], tf.constant(2**31, tf.int64))),
        maximum_iterations=32,
    )
    return tf.cast(lo, tf.int32)


def _top_p_keep(scores, p):
    """Which tokens top-p keeps, without sorting the row: ``(B, V)`` bool.

    Hugging Face's rule: sort ascending (ties: lower id first), drop the tokens
    whose cumulative probability is ≤ ``1 - p``, keep the largest. The float32
    bits of a probability are monotone in it, so the cumulative up to a token
    is the mass of every token whose bits are ≤ its own. Bisection on those
    bits (30 halvings of [0, bits of 1.0]) finds the smallest probability
    ``t`` whose mass up to and including it exceeds ``1 - p``: every token
    below ``t`` is dropped, every token above kept, and within the tie group
    at ``t`` (equal probabilities, lower id first) the j-th is dropped while
    ``mass below t + j · t ≤ 1 - p``. All shapes are static (XLA).
    """
    import tensorflow as tf

    probs = tf.nn.softmax(scores, axis=-1)  # removed tokens: 0
    bits = tf.bitcast(probs, tf.int32)  # ≥ 0, monotone in probs
    batch, vocab = tf.shape(scores)[0], tf.shape(scores)[-1]
    allowed = 1.0 - p

    def halve(lo, hi, below):
        mid = lo + (hi - lo) // 2
        mass = tf.reduce_sum(tf.where(bits <= mid, probs, 0.0), axis=-1, keepdims=True)
        over = mass > allowed
        return tf.where(over, lo, mid), tf.where(over, mid, hi), tf.where(over, below, mass)

    # mass(bits ≤ lo) = below ≤ 1 - p < mass(bits ≤ hi); hi ends as the boundary probability's bits
    _, hi, below = tf.while_loop(
        lambda *_: True,
        halve,
        (tf.fill([batch, 1], -1), tf.fill([batch, 1], 0x3F800000), tf.zeros([batch, 1])),
        maximum_iterations=30,
    )
    tie = tf.equal(bits, hi)
    rank = tf.cumsum(tf.cast(tie, tf.float32), axis=-1)  # 1, 2, … by id
    keep = (bits > hi) | (tie & (below + rank * tf.bitcast(hi, tf.float32) > allowed))
    # the largest probability (the last id among equals) is always kept, also where the row's mass ≤ 1 - p
    ids = tf.range(vocab)[None, :]
    top = tf.equal(bits, tf.reduce_max(bits, axis=-1, keepdims=True))
    return keep | tf.equal(ids, tf.reduce_max(tf.where(top, ids, -1), axis=-1, keepdims=True))


def _filter_sorted(scores, top_k, top_p):
    """:func:`filter_logits` by one full sort of each row (static shapes: XLA-friendly)."""
    import tensorflow as tf

    neg_inf = tf.constant(float("-inf"), tf.float32)
    vocab = tf.shape(scores)[-1]
    # One stable ascending sort serves both filters (ties: lower id first, as Hugging Face's TopP sorts):
    # the k-th largest is read from it, and the top-k survivors keep their order in it (whatever top-k
    # removes lies below them). The top-p verdicts go back to id order by a scatter, not a second sort:
    # 8 × 8,000 logits, one sort instead of three: 4.5 vs 6.7 ms a call on this 2-core CPU.
    order = tf.argsort(scores, axis=-1, direction="ASCENDING", stable=True)  # (B, V)
    ascending = tf.gather(scores, order, batch_dims=1)

    # top-k: the k-th largest value is the threshold
    k = tf.minimum(tf.cast(top_k, tf.int32), vocab)
    kth = tf.gather(ascending, vocab - tf.maximum(k, 1), axis=-1)[:, None]  # (B, 1)
    kth = tf.where(k > 0, kth, neg_inf)
    scores = tf.where(scores < kth, neg_inf, scores)
    ascending = tf.where(ascending < kth, neg_inf, ascending)

    # top-p over the top-k survivors (softmax renormalises them); the largest is always kept
    cumulative = tf.cumsum(tf.nn.softmax(ascending, axis=-1), axis=-1)
    drop_sorted = (cumulative <= 1.0 - tf.cast(top_p, tf.float32)) & (tf.range(vocab) < vocab - 1)[None, :]
    rows = tf.broadcast_to(tf.range(tf.shape(scores)[0])[:, None], tf.shape(order))
    drop = tf.scatter_nd(tf.stack([rows, order], axis=-1), tf.cast(drop_sorted, tf.int32), tf.shape(scores)) > 0
    drop = drop & (tf.cast(top_p, tf.float32) < 1.0)
    return tf.where(drop, neg_inf, scores)


def prefill_length(index: int, context: int) -> int:
    """Positions a prefill computes for a buffer filled up to ``index``: the next power of two ≥ 16, at most
    the context (a few shapes, so a few traces; a 32-id prompt costs 32 positions, not the whole context)."""
    return min(context, max(16, 1 << max(0, index - 1).bit_length()))


@dataclass
class Sample:
    prompt: str
    text: str  # the generated continuation (prompt not included; cut at max_chars)
    ids: list[int]  # the token ids generated (EOS not included; may run past max_chars)
    stopped: str  # "eos", "max_chars" or "max_tokens"


class Generator:
    """Compiled decoding for one model; reuse it to avoid retracing between calls.

    ``jit_compile=None`` (auto) compiles with XLA where it is faster: every
    decoder on a GPU or TPU; on a CPU, greedy decoding and sampling alike (the
    filters need no sort or scatter: :func:`filter_logits`), except a batch of
    one row on a model of :data:`CPU_MATVEC_PARAMS` parameters or more. XLA's
    CPU backend runs that step's matrix-vector products on one thread, where
    graph mode uses every core (peer_bench, 2-core CPU, 200 new tokens:
    ``mini`` top-p 0.99 batch 1 231 vs 174 tokens/s and batch 8 616 vs 507 with
    XLA; ``small`` batch 1 greedy 38 with XLA vs 55 without). True or False
    forces one way.

    The KV cache is one key and one value tensor per layer
    (:func:`gpt2ja.model.gpt2.call_with_layer_caches`), updated in place at each
    step, not KerasHub's single stacked tensor (copied whole every token):
    batch 8, 200 new tokens, 2-core CPU, ``mini`` greedy 719 → 1,423 and
    ``small`` 138 → 280 tokens/s.

    On the JAX backend ``Generator(...)`` is a
    :class:`gpt2ja.model.generate_jax.JaxGenerator`: the same loop (:meth:`generate_ids`)
    around jitted JAX pieces. The loop's two compiled steps are :meth:`_fill` and
    :meth:`_chunk`; the rest of this class is TensorFlow's.
    """

    #: the subclass ``Generator(...)`` gives on another Keras backend, by backend name (each registers itself)
    by_backend: ClassVar[dict[str, type[Generator]]] = {}

    def __init_subclass__(cls, keras_backend: str | None = None, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if keras_backend is not None:
            Generator.by_backend[keras_backend] = cls

    def __new__(cls, *args, **kwargs):
        from gpt2ja.model import backend

        if cls is Generator:
            cls = Generator.by_backend.get(backend.loaded() or "", Generator)
        return super().__new__(cls)

    def __init__(self, lm, *, vocab_size: int, eos_id: int, jit_compile: bool | None = None) -> None:
        import tensorflow as tf

        self.lm, self.vocab_size, self.eos_id = lm, vocab_size, eos_id
        self.context = lm.backbone.max_sequence_length
        accelerator = bool(tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("TPU"))
        self.jit_compile = jit_compile  # None: auto (see above)
        self._prefill = tf.function(self._prefill_fn, jit_compile=accelerator if jit_compile is None else jit_compile)
        self._accelerator = accelerator
        self._decoders: dict[tuple[bool, bool, bool], Callable] = {}

    # ------------------------------------------------------------ compiled pieces

    def _prefill_fn(self, buffer):
        """Keys and values of every position of ``buffer`` (B, T ≤ C) in a cache of C positions."""
        import tensorflow as tf

        from gpt2ja.model import gpt2

        caches = gpt2.empty_layer_caches(self.lm, tf.shape(buffer)[0], self.context)
        return gpt2.call_with_layer_caches(self.lm, buffer, caches, 0)[1]

    def _xla(self, batch: int) -> bool:
        """Whether the decoder of a ``batch``-row call compiles with XLA (see the class's docstring)."""
        if self.jit_compile is not None:
            return self.jit_compile
        return self._accelerator or batch > 1 or self.lm.count_params() < CPU_MATVEC_PARAMS

    def _decoder(self, use_cache: bool, greedy: bool, xla: bool):
        key = (use_cache, greedy, xla)
        if key not in self._decoders:
            import tensorflow as tf

            self._decoders[key] = tf.function(self._make_decode(use_cache, greedy), jit_compile=xla)
        return self._decoders[key]

    def _make_decode(self, use_cache: bool, greedy: bool):
        import tensorflow as tf

        from gpt2ja.model import gpt2

        lm, context, eos, vocab = self.lm, self.context, self.eos_id, self.vocab_size

        def decode(buffer, fixed, cache, index, n, done, t, seed, temperature, top_k, top_p):
            """Up to ``n`` steps writing positions index, index+1, …; stops early when every row is done."""

            def cond(i, buffer, cache, index, done, t):
                return (i < n) & tf.logical_not(tf.reduce_all(done))

            weights = gpt2.decoding_weights(lm) if use_cache else None  # once per call, outside the loop

            def body(i, buffer, cache, index, done, t):
                pos = index - 1  # the last filled position predicts the next one
                if use_cache:
                    last = tf.gather(buffer, tf.reshape(pos, [1]), axis=1)  # (B, 1)
                    out, cache = gpt2.call_with_layer_caches(lm, last, cache, pos, weights)
                    scores = out[:, 0, :]  # (B, V_padded)
                else:
                    scores = tf.gather(gpt2.logits(lm, buffer), pos, axis=1)  # full pass (B, C, V) → (B, V)
                scores = gpt2.mask_padding(tf.cast(scores, tf.float32), vocab)
                if greedy:
                    picked = tf.argmax(scores, axis=-1, output_type=tf.int32)
                else:
                    warped = filter_logits(scores, temperature, top_k, top_p)
                    picked = tf.random.stateless_categorical(warped, 1, seed=tf.stack([seed, t]), dtype=tf.int32)[:, 0]
                column = tf.equal(tf.range(context), index)[None, :]  # (1, C)
                forced = tf.reduce_any(fixed & column, axis=1)  # (B,) still in the prompt
                current = tf.reduce_sum(tf.where(column, buffer, 0), axis=1)
                picked = tf.where(forced, current, picked)
                picked = tf.where(done, eos, picked)
                buffer = tf.where(column, picked[:, None], buffer)
                done = done | (~forced & tf.equal(picked, eos))
                return i + 1, buffer, cache, index + 1, done, t + 1

            _, buffer, cache, index, done, t = tf.while_loop(
                cond, body, (tf.constant(0), buffer, cache, index, done, t)
            )
            return buffer, cache, index, done, t

        return decode

    def _no_cache(self):
        """The decoder's cache argument when the cache is not used (a full pass per token)."""
        import tensorflow as tf

        return tf.zeros([1])

    def _fill(self, buffer: np.ndarray):
        """The cache of ``buffer`` (B, T ≤ C): every layer's keys and values at its positions."""
        import tensorflow as tf

        return self._prefill(tf.constant(buffer))

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
        """Up to ``n`` decoding steps from position ``index``: ``(buffer, cache, index, t)`` after them.

        ``sampling`` is ``(seed, temperature, top_k, top_p)``; ``t`` counts the
        steps of the whole call (each step's random draw depends on it).
        """
        import tensorflow as tf

        seed, temperature, top_k, top_p = sampling
        decode = self._decoder(use_cache, greedy, self._xla(len(buffer)))
        new_buffer, cache, new_index, _, new_t = decode(
            tf.constant(buffer),
            tf.constant(fixed),
            cache,
            tf.constant(index, tf.int32),
            tf.constant(n, tf.int32),
            tf.constant(done),
            tf.constant(t, tf.int32),
            tf.constant(seed, tf.int32),
            tf.constant(temperature, tf.float32),
            tf.constant(top_k, tf.int32),
            tf.constant(top_p, tf.float32),
        )
        return new_buffer.numpy(), cache, int(new_index), int(new_t)

    # ------------------------------------------------------------ the loop

    def generate_ids(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        greedy: bool = False,
        seed: int = 0,
        use_cache: bool = True,
        keep: int | None = None,
        chunk: int = 32,
        stop: Callable[[int, list[int]], bool] | None = None,
    ) -> list[tuple[list[int], str]]:
        """New ids for each prompt (a non-empty id list, usually starting with EOS) and why each stopped.

        ``stop(row, ids)`` is asked after each chunk; True ends that row ("max_chars").
        """
        check_sampling(temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy)
        c = self.context
        keep = keep if keep is not None else c // 2
        if not 1 <= keep < c:
            raise ModelError(f"keep {keep} must be between 1 and the context {c} - 1")
        if any(len(p) == 0 for p in prompts):
            raise ModelError("every prompt needs at least one id (start it with the EOS id)")
        rows = [list(p)[-(c - 1) :] for p in prompts]  # leave room for one new token
        batch = len(rows)
        buffer = np.zeros((batch, c), np.int32)
        fixed = np.zeros((batch, c), bool)
        for b, ids in enumerate(rows):
            buffer[b, : len(ids)] = ids
            fixed[b, : len(ids)] = True
        index = min(len(r) for r in rows)
        out: list[list[int]] = [[] for _ in rows]
        reason: list[str | None] = [None] * batch
        cache = self._no_cache()  # replaced by the prefill when the cache is used
        stale, t = True, 0
        sampling = (seed % (2**31), float(temperature), int(min(top_k, 2**31 - 1)), float(top_p))
        while any(r is None for r in reason):
            if index == c:  # the window is full: keep its last `keep` tokens
                buffer = np.concatenate([buffer[:, c - keep :], np.zeros((batch, c - keep), np.int32)], axis=1)
                fixed = np.concatenate([fixed[:, c - keep :], np.zeros((batch, c - keep), bool)], axis=1)
                index, stale = keep, True
            if use_cache and stale:
                # only the filled positions: the decoder writes position index - 1 onwards before reading it
                cache, stale = self._fill(buffer[:, : prefill_length(index, c)]), False
            n = min(chunk, c - index)
            done = np.array([r is not None for r in reason])
            buffer, cache, new_index, t = self._chunk(
                use_cache, greedy, buffer, fixed, cache, index, n, done, t, sampling
            )
            for b in range(batch):
                for p in range(index, new_index):
                    if reason[b] is not None:
                        break
                    if fixed[b, p]:
                        continue
                    token = int(buffer[b, p])
                    if token == self.eos_id:
                        reason[b] = "eos"
                        break
                    out[b].append(token)
                    if len(out[b]) >= max_new_tokens:
                        reason[b] = "max_tokens"
                if reason[b] is None and stop is not None and stop(b, out[b]):
                    reason[b] = "max_chars"
            index = new_index
        return [(ids, r) for ids, r in zip(out, reason)]
