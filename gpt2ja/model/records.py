"""The shards' TFRecord files read without TensorFlow: framing, CRCs, gzip and the one-feature Example.

What :mod:`gpt2ja.tokenization.shards` writes, and what ``tf.data.TFRecordDataset``
+ ``tf.io.parse_example`` read back, decoded here with the standard library
and numpy (the JAX backend runs where TensorFlow is not installed). A file is
a GZIP (or ZLIB, or uncompressed: the manifest's ``compression``) stream of
records, each framed as::

    uint64 length | uint32 masked_crc32c(length) | data[length] | uint32 masked_crc32c(data)

(little-endian; ``masked(c) = ((c >> 15) | (c << 17)) + 0xa282ead8``). Both
CRCs are checked, with ``google_crc32c`` when its C extension is there, else
with a numpy table that checks many records at once. ``data`` is one
serialized ``tf.train.Example`` whose bytes feature ``tokens`` holds the ids.

Speed comes from the shards' regularity: the records of a file all have the
same length, so a decompressed block is cut into an ``(n, stride)`` uint8
matrix at once (:func:`read_record_runs`) instead of record by record, and an
Example written by the shard writer has a fixed prefix before its ids, so
the ids are a column slice of that matrix. Records that are not laid out
that way (another writer's field order, other features) go through a small
parser of the protobuf wire format (:func:`parse_bytes_feature`) and give
the same ids. Memory is bounded: one file is read in blocks of about 1 MiB.

Any damage (a CRC mismatch, a cut-off stream or record, an Example without
the feature) is a one-line :class:`DataError` naming the file and the fix.

Example::

    for rows in read_token_rows("data/shards/sp/train-00000-of-00064.tfrecord", compression="GZIP",
                                dtype="uint16", example_len=1025):
        ...                               # (n, 1025) uint16 ids, in file order
    [parse_bytes_feature(r, "tokens") for r in read_records(uri, "GZIP")]   # the same ids, as bytes
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

import numpy as np

from gpt2ja.infra import storage
from gpt2ja.infra.errors import Gpt2jaError
from gpt2ja.tokenization.shards import DTYPES, FEATURE

BLOCK = 1 << 20  # bytes read (compressed) and decompressed per step
_HEADER = struct.Struct("<QI")  # length, masked crc of the length
_MASK_DELTA = 0xA282EAD8
_DEFAULT_FIX = "delete it and rebuild the shards with `gpt2ja shards`"
_WBITS = {"GZIP": 16 + zlib.MAX_WBITS, "ZLIB": zlib.MAX_WBITS}
_NONE = ("", "NONE", None)


class DataError(Gpt2jaError, ValueError):
    """Shards that cannot be read or do not fit: one line naming the artifact and the fix."""


# ----------------------------------------------------------------- CRC32C (Castagnoli)


def _table() -> np.ndarray:
    """The 256-entry byte table of the reflected CRC-32C polynomial 0x82F63B78."""
    crc = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        crc = np.where(crc & 1, (crc >> np.uint32(1)) ^ np.uint32(0x82F63B78), crc >> np.uint32(1))
    return crc.astype(np.uint32)


_TABLE = _table()


def crc32c_rows(rows: np.ndarray) -> np.ndarray:
    """CRC-32C of every row of an ``(n, L)`` uint8 matrix → ``(n,)`` uint32, in numpy (no C extension needed).

    One table step per byte column, each over all ``n`` rows: ``L`` numpy
    operations instead of ``n·L`` Python ones, so it is the fast fallback
    for many equal-length records.

    Example::

        crc32c_rows(np.frombuffer(b"123456789", np.uint8)[None])    # array([0xe3069283])
    """
    crc = np.full(rows.shape[0], 0xFFFFFFFF, np.uint32)
    for j in range(rows.shape[1]):
        crc = _TABLE[(crc & np.uint32(0xFF)) ^ rows[:, j]] ^ (crc >> np.uint32(8))
    return crc ^ np.uint32(0xFFFFFFFF)


def _c_crc32c():
    try:
        import google_crc32c
    except ImportError:
        return None
    return google_crc32c.value if getattr(google_crc32c, "implementation", "") == "c" else None


_crc32c_c = _c_crc32c()  # None where the C extension is missing: crc32c_rows does the work


def crc32c(data: bytes) -> int:
    """CRC-32C of ``data`` (``google_crc32c`` when it is importable with its C extension, else numpy)."""
    if _crc32c_c is not None:
        return _crc32c_c(bytes(data))
    return int(crc32c_rows(np.frombuffer(bytes(data), np.uint8)[None])[0])


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC of ``data``: the CRC rotated right by 15 bits plus 0xa282ead8 (mod 2^32)."""
    return _mask(crc32c(data))


def _mask(crc):
    """Masks an int or a uint32 array (TFRecord: a CRC of CRCs stays distinguishable)."""
    if isinstance(crc, np.ndarray):
        crc = crc.astype(np.uint32)
        return ((crc >> np.uint32(15)) | (crc << np.uint32(17))) + np.uint32(_MASK_DELTA)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def _data_crcs(buf: bytes, rows: np.ndarray, first: int, stride: int, n: int) -> np.ndarray:
    """Masked CRCs of ``rows`` (``(k, n)``, record data at ``first + j·stride`` of ``buf``) → ``(k,)`` uint32."""
    if _crc32c_c is not None:
        value = _crc32c_c
        raw = [value(buf[o : o + n]) for o in range(first, first + len(rows) * stride, stride)]
        return _mask(np.array(raw, np.uint32))
    return _mask(crc32c_rows(rows))


# ----------------------------------------------------------------- framing


def _broken(uri: str, detail: str, fix: str) -> DataError:
    return DataError(f"shards file {uri} is corrupt, truncated or missing ({detail}); {fix}")


def _blocks(uri: str, compression: str | None, fix: str) -> Iterator[bytes]:
    """The decompressed bytes of ``uri`` in blocks of at most about :data:`BLOCK` (bounded memory)."""
    if compression not in _NONE and compression not in _WBITS:
        raise DataError(
            f"shards file {uri}: compression {compression!r} is not one of GZIP, ZLIB or none; "
            "fix the manifest or rebuild the shards"
        )
    try:
        with storage.open(uri, "rb") as f:
            if compression in _NONE:
                while block := f.read(BLOCK):
                    yield block
                return
            inflate = zlib.decompressobj(_WBITS[compression])
            pending = b""  # compressed bytes not yet given to ``inflate``
            while True:
                if not pending:
                    pending = f.read(BLOCK)
                    if not pending:
                        break
                if inflate.eof:  # the last member ended and bytes follow: another member (gzip allows several)
                    inflate = zlib.decompressobj(_WBITS[compression])
                out = inflate.decompress(pending, BLOCK)
                pending = inflate.unused_data if inflate.eof else inflate.unconsumed_tail
                while len(out) == BLOCK and not pending and not inflate.eof:  # output held back by the limit
                    yield out
                    out = inflate.decompress(b"", BLOCK)
                if out:
                    yield out
            if tail := inflate.flush():
                yield tail
            if not inflate.eof:
                raise _broken(uri, f"the {compression} stream ends early", fix)
    except zlib.error as err:
        raise _broken(uri, f"bad {compression} data: {err}", fix) from None
    except (storage.StorageError, OSError) as err:
        raise _broken(uri, " ".join(str(err).split())[:200], fix) from None


def read_record_runs(uri: str, compression: str | None = "GZIP", *, fix: str = _DEFAULT_FIX) -> Iterator[np.ndarray]:
    """The records of one TFRecord file as ``(k, n)`` uint8 matrices of ``k`` records of ``n`` bytes, in file order.

    Consecutive records of equal length come as one matrix (a shard file is
    one length throughout, so blocks of thousands of records). Every length
    and data CRC is checked; damage is a :class:`DataError` naming ``uri``
    and ending with ``fix``. The matrices are read-only views of the
    decompressed block.

    Example::

        sum(len(run) for run in read_record_runs(uri, "GZIP"))    # the file's record count
    """
    buf, pos, index = b"", 0, 0  # undone bytes, where the next record starts, its number in the file
    for block in _blocks(uri, compression, fix):
        buf = buf[pos:] + block if pos < len(buf) else block
        pos = 0
        while len(buf) - pos >= _HEADER.size:
            n, length_crc = _HEADER.unpack_from(buf, pos)
            if _mask(crc32c(buf[pos : pos + 8])) != length_crc:
                raise _broken(uri, f"record {index}: the length's CRC does not match", fix)
            stride = n + 16
            k = (len(buf) - pos) // stride
            if k == 0:
                break  # the record continues in the next block
            run = np.frombuffer(buf, np.uint8, count=k * stride, offset=pos).reshape(k, stride)
            same = (np.ascontiguousarray(run[:, :12]) == run[0, :12]).all(axis=1)  # length and its CRC
            k = int(np.argmin(same)) if not same.all() else k  # stop at the first record of another length
            run = run[:k]
            rows = run[:, 12 : 12 + n]
            stored = np.ascontiguousarray(run[:, 12 + n :]).view("<u4")[:, 0]
            bad = np.flatnonzero(_data_crcs(buf, rows, pos + 12, stride, n) != stored)
            if len(bad):
                raise _broken(uri, f"record {index + int(bad[0])}: the data's CRC does not match", fix)
            yield rows
            pos += k * stride
            index += k
    if pos < len(buf):
        raise _broken(uri, f"record {index} is cut off after {len(buf) - pos} bytes", fix)


def read_records(uri: str, compression: str | None = "GZIP", *, fix: str = _DEFAULT_FIX) -> Iterator[bytes]:
    """Every record of one TFRecord file as ``bytes``, in file order (what ``tf.data.TFRecordDataset`` yields).

    Example::

        first = next(read_records("data/shards/sp/validation-00000-of-00004.tfrecord"))
    """
    for run in read_record_runs(uri, compression, fix=fix):
        data = run.tobytes()
        n = run.shape[1]
        for i in range(0, len(data), n) if n else range(len(run)):
            yield data[i : i + n]


# ----------------------------------------------------------------- tf.train.Example


def _varint(b: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if i >= len(b):
            raise ValueError("a varint runs past the end")
        c = b[i]
        i += 1
        result |= (c & 0x7F) << shift
        if c < 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ValueError("a varint is longer than 10 bytes")


def _fields(b: bytes) -> Iterator[tuple[int, int, bytes | int]]:
    """``(field number, wire type, value)`` of a serialized message; ``value`` is bytes for LEN fields."""
    i = 0
    while i < len(b):
        key, i = _varint(b, i)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise ValueError("field number 0")
        if wire == 0:
            value, i = _varint(b, i)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if i + size > len(b):
                raise ValueError("a fixed-width field runs past the end")
            value, i = b[i : i + size], i + size
        elif wire == 2:
            size, i = _varint(b, i)
            if i + size > len(b):
                raise ValueError("a length-delimited field runs past the end")
            value, i = b[i : i + size], i + size
        else:
            raise ValueError(f"wire type {wire} (groups are not used by tf.train.Example)")
        yield field, wire, value


def _messages(b: bytes, number: int) -> Iterator[bytes]:
    for field, wire, value in _fields(b):
        if field == number:
            if wire != 2:
                raise ValueError(f"field {number} has wire type {wire}, not a message")
            yield value


def parse_bytes_feature(serialized: bytes, name: str) -> bytes:
    """The single value of bytes feature ``name`` in one serialized ``tf.train.Example``.

    ``Example.features`` (1) → ``Features.feature`` (1, map entries: key 1,
    value 2) → ``Feature.bytes_list`` (1) → ``BytesList.value`` (1). Protobuf
    rules: repeated occurrences of a message merge (parsing their
    concatenation is merging), a map key given twice keeps its last entry.
    What ``tf.io.parse_example`` with ``FixedLenFeature([], tf.string)``
    refuses (missing feature, another kind, not exactly one value) raises
    ``ValueError``.

    Example::

        parse_bytes_feature(serialize_example(tf, b"\\x01\\x00"), "tokens")    # b"\\x01\\x00"
    """
    features = b"".join(_messages(serialized, 1))
    key, found = name.encode(), None
    for entry in _messages(features, 1):
        entry_key, value = b"", b""
        for field, wire, v in _fields(entry):
            if field in (1, 2) and wire != 2:
                raise ValueError(f"a feature map entry's field {field} has wire type {wire}")
            if field == 1:
                entry_key = v
            elif field == 2:
                value += v  # a message given twice: merged
        if entry_key == key:
            found = value
    if found is None:
        raise ValueError(f"no feature {name!r}")
    kind, body = None, b""
    for field, wire, v in _fields(found):
        if field in (1, 2, 3):  # bytes_list, float_list, int64_list: a oneof, the last one set wins
            if wire != 2:
                raise ValueError(f"feature {name!r}'s field {field} has wire type {wire}")
            body = body + v if kind == field else v
            kind = field
    if kind != 1:
        raise ValueError(
            f"feature {name!r} is {({2: 'a float list', 3: 'an int64 list'}).get(kind, 'empty')}, not bytes"
        )
    values = list(_messages(body, 1))
    if len(values) != 1:
        raise ValueError(f"feature {name!r} has {len(values)} values, not 1")
    return values[0]


def _varint_bytes(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def example_prefix(name: str, size: int) -> bytes:
    """The bytes before the value in the canonical encoding of an Example whose one feature ``name`` is ``size`` bytes.

    What ``tf.train.Example(...).SerializeToString()`` writes (and
    :func:`gpt2ja.tokenization.shards.serialize_example` produces), built from the
    inside out: each message is its tag, its length, its body. A record that
    is this prefix followed by ``size`` bytes holds exactly those bytes as
    ``name``.

    Example::

        example_prefix("tokens", 130)
        # b'\\n\\x96\\x01\\n\\x93\\x01\\n\\x06tokens\\x12\\x88\\x01\\n\\x85\\x01\\n\\x82\\x01'  (23 bytes)
    """
    key = name.encode()
    heads = [b"\x0a" + _varint_bytes(size)]  # BytesList.value (field 1)
    inner = len(heads[0]) + size
    heads.append(b"\x0a" + _varint_bytes(inner))  # Feature.bytes_list (field 1)
    inner += len(heads[-1])
    heads.append(b"\x0a" + _varint_bytes(len(key)) + key + b"\x12" + _varint_bytes(inner))  # map entry: key 1, value 2
    inner += len(heads[-1])
    heads.append(b"\x0a" + _varint_bytes(inner))  # Features.feature (field 1)
    inner += len(heads[-1])
    heads.append(b"\x0a" + _varint_bytes(inner))  # Example.features (field 1)
    return b"".join(reversed(heads))


# ----------------------------------------------------------------- token rows


def read_token_rows(
    uri: str, *, compression: str | None, dtype: str, example_len: int, feature: str = FEATURE, fix: str = _DEFAULT_FIX
) -> Iterator[np.ndarray]:
    """One shard file's examples as ``(k, example_len)`` arrays of the stored dtype (``<u2`` or ``<i4``), in file order.

    Records written by the shard writer are sliced out of the record matrix
    (their Example prefix checked byte for byte); others are parsed one by
    one. An example of another length is a :class:`DataError`.

    Example::

        ids = np.concatenate(list(read_token_rows(uri, compression="GZIP", dtype="uint16", example_len=65)))
        ids.astype(np.int32)              # (examples, 65): what iter_examples yields row by row
    """
    np_dtype = np.dtype(DTYPES[dtype])
    size = example_len * np_dtype.itemsize
    prefix = np.frombuffer(example_prefix(feature, size), np.uint8)
    index = 0
    for run in read_record_runs(uri, compression, fix=fix):
        k, n = run.shape
        if n == len(prefix) + size and (run[:, : len(prefix)] == prefix).all():
            data = run[:, len(prefix) :]
        else:
            values = []
            for j in range(k):
                try:
                    values.append(parse_bytes_feature(run[j].tobytes(), feature))
                except ValueError as err:
                    raise _broken(
                        uri,
                        f"record {index + j} is not a tf.train.Example with one bytes feature {feature!r}: {err}",
                        fix,
                    ) from None
            bad = next((v for v in values if len(v) != size), None)
            if bad is not None:
                ids = len(bad) / np_dtype.itemsize
                raise DataError(
                    f"shards file {uri} holds examples of {ids:g} ids, its manifest says {example_len}; "
                    "rebuild the shards"
                )
            data = np.frombuffer(b"".join(values), np.uint8).reshape(k, size)
        yield np.ascontiguousarray(data).view(np_dtype)
        index += k
