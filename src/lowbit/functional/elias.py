"""Elias gamma coding of signed integers, the variable-length code QSGD sends its levels in (docs/math.md G3).

A level ``v`` is written as the gamma code of ``m = |v| + 1``: ``⌊log₂ m⌋`` zero bits, then the ``⌊log₂ m⌋ + 1``
bits of ``m``, most significant first. A sign bit (1 for negative) follows when ``v ≠ 0``. So 0 costs one bit,
±1 and ±2 four bits, ±3 to ±6 six. Bits fill bytes least significant first, as in :mod:`lowbit.functional.packing`;
the last byte is zero-padded. The coder is a sequential bit writer in numba; its decoder is the oracle of its tests.

Example:
    >>> import numpy as np
    >>> levels = np.array([0, 1, -2, 0, 5], dtype=np.int32)
    >>> stream = elias_encode(levels)
    >>> int(elias_bits(levels)), stream.size
    (16, 2)
    >>> elias_decode(stream, 5).tolist()
    [0, 1, -2, 0, 5]
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["elias_bits", "elias_encode", "elias_decode"]

_JIT = dict(nogil=True, cache=True, boundscheck=False)


def elias_bits(levels: np.ndarray) -> int:
    """Bits of the code of ``levels``: ``2⌊log₂(|v| + 1)⌋ + 1`` each, plus one sign bit per non-zero."""
    magnitude = np.abs(np.asarray(levels, dtype=np.int64)) + 1
    width = np.floor(np.log2(magnitude)).astype(np.int64)
    # float64 log2 rounds up just below large powers of two (m = 2^49 − 1): correct to the integer ⌊log₂ m⌋
    width -= (np.right_shift(magnitude, width) == 0).astype(np.int64)
    width += (np.right_shift(magnitude, width + 1) > 0).astype(np.int64)
    return int((2 * width + 1).sum() + np.count_nonzero(levels))


@numba.njit(**_JIT)
def _width(m):
    """``⌊log₂ m⌋`` for ``m ≥ 1``."""
    width = 0
    while m >> (width + 1):
        width += 1
    return width


@numba.njit(**_JIT)
def _encode(levels, out):
    position = 0
    for i in range(levels.shape[0]):
        v = np.int64(levels[i])
        m = abs(v) + 1
        width = _width(m)
        position += width  # the zero prefix: out is zero-filled
        for k in range(width, -1, -1):
            if (m >> k) & 1:
                out[position >> 3] |= np.uint8(1 << (position & 7))
            position += 1
        if v != 0:
            if v < 0:
                out[position >> 3] |= np.uint8(1 << (position & 7))
            position += 1
    return position


@numba.njit(**_JIT)
def _decode(stream, count, out):
    position, limit = 0, stream.shape[0] * 8
    for i in range(count):
        width = 0
        while position < limit and not (stream[position >> 3] >> (position & 7)) & 1:
            width += 1
            position += 1
        if position + width >= limit or width > 62:
            return -1
        m = np.int64(0)
        for _ in range(width + 1):
            m = (m << 1) | ((stream[position >> 3] >> (position & 7)) & 1)
            position += 1
        v = m - 1
        if v != 0:
            if position >= limit:
                return -1
            if (stream[position >> 3] >> (position & 7)) & 1:
                v = -v
            position += 1
        out[i] = v
    return position


def elias_encode(levels: np.ndarray) -> np.ndarray:
    """The gamma-coded bit stream of integer ``levels`` (any shape, read flat) as uint8 bytes."""
    flat = np.ascontiguousarray(np.asarray(levels).reshape(-1), dtype=np.int64)
    out = np.zeros((elias_bits(flat) + 7) // 8, dtype=np.uint8)
    _encode(flat, out)
    return out


def elias_decode(stream: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` levels of a stream written by :func:`elias_encode`, as int64.

    Raises:
        ValueError: a stream that ends before ``count`` levels (truncated or not a gamma stream).
    """
    stream = np.ascontiguousarray(stream, dtype=np.uint8)
    out = np.zeros(count, dtype=np.int64)
    if _decode(stream, count, out) < 0:
        raise ValueError(f"elias_decode: {stream.size} bytes end before {count} levels were read")
    return out
