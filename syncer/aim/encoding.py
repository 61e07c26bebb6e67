"""How Aim 3.29 encodes keys and values in its RocksDB chunks, byte for byte (pure: no I/O).

Mirrors ``aim.sdk.tracker.RunTracker`` and ``aim.storage.encoding`` for the columns of a v2
(metric) series: a point lives under ``seqs/v2/chunks/<hash>/<ctx>/<name>/<col>/<step key>``
with ``col`` in ``val``, ``step``, ``epoch``, ``time``.  The step key is a hash of the step:
writing the same step again overwrites the point, which makes writes idempotent.

Aim hashes a step through a C double, so steps beyond +-2**53 (``MAX_ABS_STEP``) would collide:
they are refused, not stored.

``compat.check_aim_compatibility`` checks these functions against Aim's own ones at start-up;
``IMPORT_ERROR`` is what importing Aim's encoding failed with (reported there).
"""

from __future__ import annotations

import hashlib
import operator
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# Steps are hashed by Aim through a C double: integers beyond 2**53 would collide.
MAX_ABS_STEP = 2**53

PATH_SENTINEL = b"\xfe"  # ends each element of an encoded key path

_HASH_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

IMPORT_ERROR: Exception | None = None
encode: Callable[[Any], bytes]
encode_path: Callable[[Any], bytes]
encode_key: Callable[[Any], bytes]
encode_tree: Callable[..., Any]  # (value, strict) -> [(key suffix, encoded value)]: a subtree's items
try:
    from aim.storage import encoding as _aim_encoding
    from aim.storage import treeutils as _treeutils
    from aim.storage.hashing import c_hash as _c_hash
    from aim.storage.hashing import hashing as _hashing
    from aim.storage.utils import ArrayFlag as _ArrayFlag
    from aim.storage.utils import ObjectFlag as _ObjectFlag

    _E: Any = _aim_encoding  # compiled (Cython): mypy sees none of its functions
    encode = _E.encode
    encode_path = _E.encode_path
    encode_key = _E.encode_key
    encode_tree = _treeutils.encode_tree
    _encode_int64 = _E.encode_int64
    _det_hash = _c_hash.det_hash
    _HASH_SALT = _hashing._HASH_UNIFORM_SALT
    ARRAY_FLAG: bytes = encode(_ArrayFlag)  # the root of an array (TreeArrayView.allocate)
    OBJECT_FLAG: bytes = encode(_ObjectFlag)  # the root of a dict (``run[...] = {}``)
    FLOAT_TAG: bytes = encode(0.0)[:1]
    INT_TAG: bytes = encode(0)[:1]
    NONE_ENC: bytes = encode(None)
except Exception as _e:  # reported with a clear message by check_aim_compatibility()
    IMPORT_ERROR = _e

_blake2b = hashlib.blake2b
_LITTLE = sys.byteorder == "little"


def step_key(step: int) -> bytes:
    """``encode_key(hash_auto(step)) + PATH_SENTINEL``: the key suffix of one point in a v2
    (metric) series array.  Same as ``aim.storage.hashing.hash_number`` without the call layers:
    ``blake2b(int64(det_hash(step)), salt)`` read as int64, encoded big-endian."""
    d = _blake2b(_encode_int64(_det_hash(step)), digest_size=8, salt=_HASH_SALT).digest()
    if _LITTLE:
        d = d[::-1]
    else:  # pragma: no cover
        d = int.from_bytes(d, sys.byteorder, signed=True).to_bytes(8, "big", signed=True)
    return PATH_SENTINEL + d + PATH_SENTINEL


_key_cache: dict[int, bytes] = {}
_KEY_CACHE_MAX = 65536  # bounded: ~8 MB; runs' metrics mostly share their steps


def step_keys(steps: list[int]) -> list[bytes]:
    """``[step_key(s) for s in steps]``, through a bounded cache."""
    cache = _key_cache
    get = cache.get
    out: list[bytes] = []
    append = out.append
    for s in steps:
        k = get(s)
        if k is None:
            k = step_key(s)
            if len(cache) >= _KEY_CACHE_MAX:
                cache.clear()
            cache[s] = k
        append(k)
    return out


def column_prefix(path: tuple[Any, ...], column: str) -> bytes:
    """The key prefix of one column (``val``, ``step``, ``epoch``, ``time``) of the series at
    ``path`` (``("seqs", "v2", "chunks", hash, ctx, name)``); a point's key adds its step key."""
    return encode_path(path) + encode_key(column) + PATH_SENTINEL


def encode_column(tag: bytes, arr: np.ndarray) -> list[bytes]:
    """``[encode(x) for x in arr]`` for float64 (``tag`` = float) or int64 (``tag`` = int)
    arrays: Aim encodes both as a type byte and 8 little-endian bytes."""
    n = len(arr)
    buf = np.empty((n, 9), dtype=np.uint8)
    buf[:, 0] = tag[0]
    buf[:, 1:] = arr.astype(arr.dtype.newbyteorder("<"), copy=False).view(np.uint8).reshape(n, 8)
    b = buf.tobytes()
    return [b[i : i + 9] for i in range(0, 9 * n, 9)]


def encode_column_array(tag: bytes, arr: np.ndarray) -> np.ndarray:
    """``encode_column`` as an (n, 9) uint8 array: row i is ``encode(arr[i])``."""
    n = len(arr)
    buf = np.empty((n, 9), dtype=np.uint8)
    buf[:, 0] = tag[0]
    buf[:, 1:] = arr.astype(arr.dtype.newbyteorder("<"), copy=False).view(np.uint8).reshape(n, 8)
    return buf


def step_key_array(steps: list[int]) -> np.ndarray:
    """``step_keys`` as an (n, 10) uint8 array."""
    return np.frombuffer(b"".join(step_keys(steps)), dtype=np.uint8).reshape(len(steps), STEP_KEY_LEN)


STEP_KEY_LEN = 10  # PATH_SENTINEL + 8 bytes of hash + PATH_SENTINEL
_VALUE_TYPE = 1  # RocksDB's kTypeValue: a put in a write batch's records


def _varint32(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def batch_rep(puts: list[tuple[bytes, bytes]], columns: list[tuple[bytes, np.ndarray, np.ndarray]]) -> bytes:
    """A RocksDB write batch, serialized (``WriteBatch(rep)``; the format of RocksDB's
    ``write_batch.cc``: sequence fixed64, count fixed32, then per put ``kTypeValue``, varint32 key
    length, key, varint32 value length, value), built with numpy: ``puts`` one by one, then for
    each column ``(prefix, keys, values)`` one put per row, key ``prefix + keys[i]`` and value
    ``values[i]`` (``keys`` (n, k) and ``values`` (n, v) uint8 arrays, or ``values`` (1, v): the
    same value for every row). The same bytes as ``WriteBatch.put`` in that order (checked by
    ``compat``), without a Python call per put."""
    parts = []
    count = len(puts)
    for key, value in puts:
        parts.append(bytes([_VALUE_TYPE]) + _varint32(len(key)) + key + _varint32(len(value)) + value)
    for prefix, keys, values in columns:
        n, klen = keys.shape
        head = bytes([_VALUE_TYPE]) + _varint32(len(prefix) + klen) + prefix
        vlen = values.shape[1]
        mid = _varint32(vlen)
        rec = np.empty((n, len(head) + klen + len(mid) + vlen), dtype=np.uint8)
        o = len(head)
        rec[:, :o] = np.frombuffer(head, dtype=np.uint8)
        rec[:, o : o + klen] = keys
        o += klen
        rec[:, o : o + len(mid)] = np.frombuffer(mid, dtype=np.uint8)
        rec[:, o + len(mid) :] = values
        parts.append(rec.tobytes())
        count += n
    return (0).to_bytes(8, "little") + count.to_bytes(4, "little") + b"".join(parts)


def encode_epochs(epochs: Sequence[int | None] | None, n: int) -> list[bytes]:
    """The ``epoch`` column of ``n`` points: ``None`` (no epochs) encodes every point as None."""
    if epochs is None:
        return [NONE_ENC] * n
    return [NONE_ENC if e is None else encode(operator.index(e)) for e in epochs]


def int_list(xs: Any, what: str) -> list[int]:
    """Python ints from a sequence of ints / numpy ints / integral floats; rejects the rest."""
    if type(xs) is list and all(type(x) is int for x in xs):  # already (the usual short chunk)
        return xs
    arr = np.asarray(xs)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a flat sequence")
    kind = arr.dtype.kind
    if kind in "iu":
        ints: list[int] = arr.tolist()
        return ints
    if kind == "f" and bool(np.all(np.isfinite(arr))) and bool(np.all(arr == np.floor(arr))):
        return [int(x) for x in arr.tolist()]
    if kind == "O":
        return [operator.index(x) for x in xs]
    raise ValueError(f"{what} must be integers (got {arr.dtype})")


def check_steps(steps: list[int], what: str) -> None:
    """Refuse steps Aim cannot key exactly (beyond +-2**53)."""
    for s in (min(steps), max(steps)):
        if not -MAX_ABS_STEP <= s <= MAX_ABS_STEP:
            raise ValueError(f"{what}: step {s} is beyond +-2**53, which Aim cannot key exactly")


def check_hash(run_hash: str) -> str:
    """``run_hash`` if it can name a run (a path element of every chunk), else ``ValueError``."""
    if not isinstance(run_hash, str) or not _HASH_RE.match(run_hash):
        raise ValueError(f"invalid Aim run hash {run_hash!r}: use 1-128 of [A-Za-z0-9_.-]")
    return run_hash
