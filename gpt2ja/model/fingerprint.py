"""TensorFlow's ``Fingerprint64`` in numpy: the hash behind the training order, without TensorFlow.

``tf.strings.to_hash_bucket_fast(s, n)`` is ``Fingerprint64(s) % n``, and
TensorFlow's ``Fingerprint64`` is FarmHash's ``Fingerprint64`` =
``farmhashna::Hash64`` (tsl/platform/fingerprint.h; "documented never to
change"). :mod:`gpt2ja.model.data_order` keys the order of files and of every
shuffle block with it, so the JAX backend, which runs where TensorFlow is not
installed, computes the same hashes here.

Two paths give the same values:

* :func:`fingerprint64_py`: one ``bytes`` at a time in plain Python ints (any
  length; the reference the tests hold the fast path to).
* :func:`fingerprint64`: many keys at once. Keys are grouped by byte length;
  each group is an ``(n, L)`` uint8 matrix whose 8-byte words are read as
  little-endian uint64 columns, and the hash runs on whole columns with
  numpy's wrap-around uint64 arithmetic (the C code's ``uint64_t``).
  Tens of thousands of short keys take milliseconds.

Example::

    hash_bucket_fast(["Hello", "TensorFlow", "2.x"], 3)     # array([0, 2, 2]), as in TensorFlow's docstring
    keyed_order("0:3", 5)                                    # the permutation data_order's epoch 3 gives 5 files
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

_M64 = (1 << 64) - 1
# FarmHash's primes between 2^63 and 2^64.
K0 = 0xC3A5C85C97CB3127
K1 = 0xB492B66FBE98F273
K2 = 0x9AE16A3B2F90404F
HASH_BUCKETS = (1 << 63) - 1  # data_order's bucket count: the fingerprint mod 2^63 - 1, as int64


# ----------------------------------------------------------------- plain Python (any length, one key)


def _rot(v: int, s: int) -> int:
    return v if s == 0 else ((v >> s) | (v << (64 - s))) & _M64


def _mix(v: int) -> int:
    return v ^ (v >> 47)


def _len16(u: int, v: int, mul: int) -> int:
    a = ((u ^ v) * mul) & _M64
    a ^= a >> 47
    b = ((v ^ a) * mul) & _M64
    b ^= b >> 47
    return (b * mul) & _M64


def _f64(s: bytes, i: int) -> int:
    return int.from_bytes(s[i : i + 8], "little")


def _f32(s: bytes, i: int) -> int:
    return int.from_bytes(s[i : i + 4], "little")


def _weak32(s: bytes, i: int, a: int, b: int) -> tuple[int, int]:
    w, x, y, z = _f64(s, i), _f64(s, i + 8), _f64(s, i + 16), _f64(s, i + 24)
    a = (a + w) & _M64
    b = _rot((b + a + z) & _M64, 21)
    c = a
    a = (a + x + y) & _M64
    b = (b + _rot(a, 44)) & _M64
    return (a + z) & _M64, (b + c) & _M64


def fingerprint64_py(s: bytes | str) -> int:
    """``Fingerprint64(s)`` as a Python int in ``[0, 2^64)``: farmhashna::Hash64 line by line.

    Example::

        fingerprint64_py(b"")        # 0x9ae16a3b2f90404f (k2: the empty string's hash)
    """
    s = s.encode() if isinstance(s, str) else bytes(s)
    n = len(s)
    if n <= 16:
        if n >= 8:
            mul = K2 + n * 2
            a = (_f64(s, 0) + K2) & _M64
            b = _f64(s, n - 8)
            c = (_rot(b, 37) * mul + a) & _M64
            d = ((_rot(a, 25) + b) * mul) & _M64
            return _len16(c, d, mul)
        if n >= 4:
            return _len16(n + (_f32(s, 0) << 3), _f32(s, n - 4), K2 + n * 2)
        if n > 0:
            y = s[0] + (s[n >> 1] << 8)
            z = n + (s[n - 1] << 2)
            return (_mix(((y * K2) ^ (z * K0)) & _M64) * K2) & _M64
        return K2
    mul = K2 + n * 2
    if n <= 32:
        a = (_f64(s, 0) * K1) & _M64
        b = _f64(s, 8)
        c = (_f64(s, n - 8) * mul) & _M64
        d = (_f64(s, n - 16) * K2) & _M64
        return _len16(
            (_rot((a + b) & _M64, 43) + _rot(c, 30) + d) & _M64, (a + _rot((b + K2) & _M64, 18) + c) & _M64, mul
        )
    if n <= 64:
        a = (_f64(s, 0) * K2) & _M64
        b = _f64(s, 8)
        c = (_f64(s, n - 8) * mul) & _M64
        d = (_f64(s, n - 16) * K2) & _M64
        y = (_rot((a + b) & _M64, 43) + _rot(c, 30) + d) & _M64
        z = _len16(y, (a + _rot((b + K2) & _M64, 18) + c) & _M64, mul)
        e = (_f64(s, 16) * mul) & _M64
        f = _f64(s, 24)
        g = ((y + _f64(s, n - 32)) * mul) & _M64
        h = ((z + _f64(s, n - 24)) * mul) & _M64
        return _len16(
            (_rot((e + f) & _M64, 43) + _rot(g, 30) + h) & _M64, (e + _rot((f + a) & _M64, 18) + g) & _M64, mul
        )
    seed = 81
    x = seed
    y = (seed * K1 + 113) & _M64
    z = (_mix((y * K2 + 113) & _M64) * K2) & _M64
    v = w = (0, 0)
    x = (x * K2 + _f64(s, 0)) & _M64
    last64 = n - 64
    for i in range(0, ((n - 1) // 64) * 64, 64):
        x = (_rot((x + y + v[0] + _f64(s, i + 8)) & _M64, 37) * K1) & _M64
        y = (_rot((y + v[1] + _f64(s, i + 48)) & _M64, 42) * K1) & _M64
        x ^= w[1]
        y = (y + v[0] + _f64(s, i + 40)) & _M64
        z = (_rot((z + w[0]) & _M64, 33) * K1) & _M64
        v = _weak32(s, i, (v[1] * K1) & _M64, (x + w[0]) & _M64)
        w = _weak32(s, i + 32, (z + w[1]) & _M64, (y + _f64(s, i + 16)) & _M64)
        z, x = x, z
    mul = K1 + ((z & 0xFF) << 1)
    i = last64
    w0 = (w[0] + ((n - 1) & 63)) & _M64
    v0 = (v[0] + w0) & _M64
    w0 = (w0 + v0) & _M64
    v, w = (v0, v[1]), (w0, w[1])
    x = (_rot((x + y + v[0] + _f64(s, i + 8)) & _M64, 37) * mul) & _M64
    y = (_rot((y + v[1] + _f64(s, i + 48)) & _M64, 42) * mul) & _M64
    x ^= (w[1] * 9) & _M64
    y = (y + v[0] * 9 + _f64(s, i + 40)) & _M64
    z = (_rot((z + w[0]) & _M64, 33) * mul) & _M64
    v = _weak32(s, i, (v[1] * mul) & _M64, (x + w[0]) & _M64)
    w = _weak32(s, i + 32, (z + w[1]) & _M64, (y + _f64(s, i + 16)) & _M64)
    z, x = x, z
    return _len16((_len16(v[0], w[0], mul) + _mix(y) * K0 + z) & _M64, (_len16(v[1], w[1], mul) + x) & _M64, mul)


# ----------------------------------------------------------------- numpy: many keys of one length at once

_U = np.uint64


def _vrot(v: np.ndarray, s: int) -> np.ndarray:
    return v if s == 0 else (v >> _U(s)) | (v << _U(64 - s))


def _vmix(v: np.ndarray) -> np.ndarray:
    return v ^ (v >> _U(47))


def _vlen16(u: np.ndarray, v: np.ndarray, mul) -> np.ndarray:
    a = (u ^ v) * mul
    a ^= a >> _U(47)
    b = (v ^ a) * mul
    b ^= b >> _U(47)
    return b * mul


def _v64(rows: np.ndarray, i: int) -> np.ndarray:
    """Column of little-endian uint64 words at byte ``i`` of each row: ``(n, L)`` uint8 → ``(n,)``."""
    return np.ascontiguousarray(rows[:, i : i + 8]).view("<u8")[:, 0].astype(_U)


def _v32(rows: np.ndarray, i: int) -> np.ndarray:
    return np.ascontiguousarray(rows[:, i : i + 4]).view("<u4")[:, 0].astype(_U)


def _vweak32(rows: np.ndarray, i: int, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = a + _v64(rows, i)
    b = _vrot(b + a + _v64(rows, i + 24), 21)
    c = a
    a = a + _v64(rows, i + 8) + _v64(rows, i + 16)
    b = b + _vrot(a, 44)
    return a + _v64(rows, i + 24), b + c


def _fingerprint_rows(rows: np.ndarray) -> np.ndarray:
    """``Fingerprint64`` of every row of an ``(n, L)`` uint8 matrix (keys of byte length ``L``) → ``(n,)`` uint64."""
    count, n = rows.shape
    k0, k1, k2 = _U(K0), _U(K1), _U(K2)
    if n == 0:
        return np.full(count, k2, _U)
    if n <= 16:
        mul = _U((K2 + n * 2) & _M64)
        if n >= 8:
            a = _v64(rows, 0) + k2
            b = _v64(rows, n - 8)
            return _vlen16(_vrot(b, 37) * mul + a, (_vrot(a, 25) + b) * mul, mul)
        if n >= 4:
            return _vlen16(_U(n) + (_v32(rows, 0) << _U(3)), _v32(rows, n - 4), mul)
        y = rows[:, 0].astype(_U) + (rows[:, n >> 1].astype(_U) << _U(8))
        z = _U(n) + (rows[:, n - 1].astype(_U) << _U(2))
        return _vmix((y * k2) ^ (z * k0)) * k2
    mul = _U((K2 + n * 2) & _M64)
    if n <= 32:
        a = _v64(rows, 0) * k1
        b = _v64(rows, 8)
        c = _v64(rows, n - 8) * mul
        d = _v64(rows, n - 16) * k2
        return _vlen16(_vrot(a + b, 43) + _vrot(c, 30) + d, a + _vrot(b + k2, 18) + c, mul)
    if n <= 64:
        a = _v64(rows, 0) * k2
        b = _v64(rows, 8)
        c = _v64(rows, n - 8) * mul
        d = _v64(rows, n - 16) * k2
        y = _vrot(a + b, 43) + _vrot(c, 30) + d
        z = _vlen16(y, a + _vrot(b + k2, 18) + c, mul)
        e = _v64(rows, 16) * mul
        f = _v64(rows, 24)
        g = (y + _v64(rows, n - 32)) * mul
        h = (z + _v64(rows, n - 24)) * mul
        return _vlen16(_vrot(e + f, 43) + _vrot(g, 30) + h, e + _vrot(f + a, 18) + g, mul)
    seed = 81
    y0 = (seed * K1 + 113) & _M64
    x = np.full(count, (seed * K2) & _M64, _U) + _v64(rows, 0)
    y = np.full(count, y0, _U)
    z = np.full(count, (_mix((y0 * K2 + 113) & _M64) * K2) & _M64, _U)
    v0 = v1 = w0 = w1 = np.zeros(count, _U)
    for i in range(0, ((n - 1) // 64) * 64, 64):
        x = _vrot(x + y + v0 + _v64(rows, i + 8), 37) * k1
        y = _vrot(y + v1 + _v64(rows, i + 48), 42) * k1
        x = x ^ w1
        y = y + v0 + _v64(rows, i + 40)
        z = _vrot(z + w0, 33) * k1
        v0, v1 = _vweak32(rows, i, v1 * k1, x + w0)
        w0, w1 = _vweak32(rows, i + 32, z + w1, y + _v64(rows, i + 16))
        z, x = x, z
    mul = _U(K1) + ((z & _U(0xFF)) << _U(1))  # (n,): one multiplier per key from here on
    i = n - 64
    w0 = w0 + _U((n - 1) & 63)
    v0 = v0 + w0
    w0 = w0 + v0
    x = _vrot(x + y + v0 + _v64(rows, i + 8), 37) * mul
    y = _vrot(y + v1 + _v64(rows, i + 48), 42) * mul
    x = x ^ (w1 * _U(9))
    y = y + v0 * _U(9) + _v64(rows, i + 40)
    z = _vrot(z + w0, 33) * mul
    v0, v1 = _vweak32(rows, i, v1 * mul, x + w0)
    w0, w1 = _vweak32(rows, i + 32, z + w1, y + _v64(rows, i + 16))
    z, x = x, z
    return _vlen16(_vlen16(v0, w0, mul) + _vmix(y) * k0 + z, _vlen16(v1, w1, mul) + x, mul)


def fingerprint64(keys: Sequence[str | bytes]) -> np.ndarray:
    """``Fingerprint64`` of each key → ``(len(keys),)`` uint64 (``str`` keys are hashed as UTF-8, like tf.string).

    Keys are grouped by byte length and each group is hashed as one matrix
    (:func:`_fingerprint_rows`); the result is in the keys' order.

    Example::

        fingerprint64(["0:3", "0:3:17:9123"])    # 2 uint64 fingerprints
    """
    data = [k.encode() if isinstance(k, str) else bytes(k) for k in keys]
    out = np.empty(len(data), _U)
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, d in enumerate(data):
        by_len[len(d)].append(i)
    for n, idx in by_len.items():
        rows = np.frombuffer(b"".join(data[i] for i in idx), np.uint8).reshape(len(idx), n)
        out[idx] = _fingerprint_rows(rows)
    return out


def hash_bucket_fast(keys: Sequence[str | bytes], num_buckets: int) -> np.ndarray:
    """``tf.strings.to_hash_bucket_fast(keys, num_buckets)``: ``Fingerprint64(key) % num_buckets`` → ``(n,)`` int64.

    Example::

        hash_bucket_fast(["Hello", "TensorFlow", "2.x"], 3)    # array([0, 2, 2])
    """
    if not 1 <= num_buckets <= HASH_BUCKETS:
        raise ValueError(f"hash_bucket_fast: num_buckets {num_buckets} must be in 1..{HASH_BUCKETS} (an int64 ≥ 1)")
    return (fingerprint64(keys) % _U(num_buckets)).astype(np.int64)


def _numbered_keys(prefix: bytes, lo: int, hi: int) -> np.ndarray:
    """``prefix + b":" + str(i)`` for i in ``[lo, hi)`` (one digit count) as an ``(hi - lo, L)`` uint8 matrix."""
    i = np.arange(lo, hi, dtype=np.int64)
    digits = len(str(lo))
    powers = 10 ** np.arange(digits - 1, -1, -1, dtype=np.int64)  # (digits,)
    tail = (i[:, None] // powers[None, :]) % 10 + ord("0")  # (n, digits)
    head = np.frombuffer(prefix + b":", np.uint8)
    return np.concatenate([np.broadcast_to(head, (len(i), len(head))), tail.astype(np.uint8)], axis=1)


def keyed_order(prefix: str, n: int) -> np.ndarray:
    """``argsort`` (stable) of ``to_hash_bucket_fast(f"{prefix}:{i}", 2^63 - 1)`` for i in 0..n-1 → ``(n,)`` int64.

    A fixed permutation of ``range(n)``, equal to :mod:`gpt2ja.model.data_order`'s
    ``_keyed_order`` (TensorFlow). The keys are built straight into byte
    matrices, one per digit count of ``i``, so no Python string is made per key.

    Example::

        keyed_order("0:3", 4)        # a permutation of [0, 1, 2, 3]
    """
    prefix_b = prefix.encode()
    buckets = np.empty(n, np.int64)
    lo = 0
    while lo < n:
        hi = min(n, 10 if lo == 0 else lo * 10)  # [0, 10), [10, 100), ...: one key length each
        buckets[lo:hi] = (_fingerprint_rows(_numbered_keys(prefix_b, lo, hi)) % _U(HASH_BUCKETS)).astype(np.int64)
        lo = hi
    return np.argsort(buckets, kind="stable")
