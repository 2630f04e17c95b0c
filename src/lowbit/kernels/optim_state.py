"""Fused 8-bit optimizer updates: dequantize → update → requantize each block in one pass over memory (issue #10).

The state of an 8-bit optimizer is one uint8 code per element and one float32 ``absmax`` per block of
``block_size`` elements (docs/math.md, eqs. 14–15). A step in plain torch decodes the whole state to float32,
runs the update rule in several passes and encodes it again: about 30 bytes of memory traffic per element. These
kernels do one block at a time in a numba ``prange``: each block is decoded, updated, its new ``absmax`` found and
its codes written while the block is still in cache — about 16 bytes per element (read ``p``, ``g`` and two codes,
write ``p`` and two codes). Blocks are independent, so the result does not depend on the thread count.

Encoding a value means finding the nearest code value (``torch.bucketize`` against the midpoints, as
:func:`lowbit.functional.codebook.quantize_blockwise` does). A binary search over 255 midpoints costs eight
dependent branches per value. Here the float's bits are mapped to an order-preserving 32-bit key; a 65536-entry
table indexed by the key's top 16 bits holds how many midpoints lie below that bucket and, when one midpoint
falls inside it, the low 16 bits of that midpoint's key. One load, one integer comparison and one add give
exactly the bucketize index for every finite value (:func:`nearest_code_table`).
The kernels run that lookup 16 values at a time with one vector gather (:mod:`lowbit.kernels._gather`).

Each kernel takes ``threads`` (numba's current thread count, read by the caller: reading it inside compiled code
would stop numba from caching the kernel) and splits the blocks into ``8·threads`` chunks.

All arithmetic is float32 in the order of the torch rules in :mod:`lowbit.optim.rules`; scalars arrive as float32.

Example:
    >>> import numpy as np
    >>> from lowbit.functional.codebook import create_dynamic_map
    >>> code = create_dynamic_map(signed=True).numpy()
    >>> table = nearest_code_table(code)
    >>> int(encode_one(np.float32(0.5), table)) == int(np.abs(code - 0.5).argmin())
    True
"""

from __future__ import annotations

import numba
import numpy as np

from lowbit.kernels._gather import LANES, decode16, encode16

__all__ = ["code_midpoints", "nearest_code_table", "encode_one", "adam_8bit", "momentum_8bit", "lion_8bit"]

_SIGN = np.uint32(0x80000000)
# error_model="numpy": a float division by zero gives inf/NaN instead of a Python ZeroDivisionError check, which
# would keep LLVM from vectorising the update loops.
# Loops index with unsigned integers, for which numba emits no negative-index wraparound (it cost a third of the
# encoder's time).
_JIT = dict(nogil=True, cache=True, boundscheck=False, error_model="numpy")


def code_midpoints(code: np.ndarray) -> np.ndarray:
    """Float32 midpoints between consecutive values of a sorted code: the bucketize boundaries."""
    code = np.asarray(code, dtype=np.float32)
    return ((code[1:] + code[:-1]) / np.float32(2)).astype(np.float32)


def _order_keys(bits: np.ndarray) -> np.ndarray:
    """Order-preserving uint32 keys of float32 bit patterns: ``u | 2^31`` if the sign is clear, ``~u`` if set."""
    return np.where(bits & _SIGN, ~bits, bits | _SIGN).astype(np.uint32)


def nearest_code_table(code: np.ndarray) -> np.ndarray:
    """The encoder's table: per 16-bit key bucket, ``count << 16 | threshold`` as uint32.

    Keys sort as the floats do, so ``count(mids < x)`` — the bucketize index — is ``count(mids < lo)`` for the
    lowest float ``lo`` of ``x``'s bucket, plus one if ``x`` is above the single midpoint inside the bucket.
    ``threshold`` is the low 16 bits of that midpoint's key (``x > mid`` exactly when its key's low bits are
    greater: same bucket, same high bits), or ``0xFFFF`` when no midpoint falls inside (no low bits are greater).
    Buckets of NaN patterns (and −inf) hold count 0.

    Raises:
        ValueError: a code with two midpoints in one bucket (values closer than about 0.4 % of their magnitude);
            the 8-bit dynamic and linear maps are far from that.

    Example:
        >>> t = nearest_code_table(np.array([-1.0, 0.0, 1.0], dtype=np.float32))
        >>> t.shape, t.dtype, int(t.max() >> 16)
        ((65536,), dtype('uint32'), 2)
    """
    mids = code_midpoints(code)
    buckets = np.arange(65536, dtype=np.uint32)
    lowest_keys = buckets << np.uint32(16)
    lowest = np.where(lowest_keys & _SIGN, lowest_keys & ~_SIGN, ~lowest_keys).astype(np.uint32).view(np.float32)
    counts = np.searchsorted(mids, lowest, side="left").astype(np.int64)
    mid_keys = _order_keys(mids.view(np.uint32))
    inside = np.bincount(mid_keys >> np.uint32(16), minlength=65536)
    if inside.max() > 1:
        raise ValueError("nearest_code_table: the code has two midpoints in one 16-bit key bucket; it is too dense "
                         "for the table encoder")
    thresholds = np.full(65536, 0xFFFF, dtype=np.int64)
    thresholds[mid_keys >> np.uint32(16)] = mid_keys & np.uint32(0xFFFF)
    table = (counts << 16) | thresholds
    # A bucket whose lowest pattern is NaN holds only NaNs and, at its top, −inf: count 0 and no threshold send
    # −inf to index 0.
    table[np.isnan(lowest)] = 0xFFFF
    return table.astype(np.uint32)


@numba.njit(inline="always", **_JIT)
def _encode(u, table):
    """Index of the code value nearest the float32 whose bit pattern is ``u`` (uint32); ties go low."""
    key = u ^ (np.uint32(np.int32(u) >> np.int32(31)) | np.uint32(0x80000000))  # u | 2^31, or ~u if negative
    entry = table[key >> np.uint32(16)]
    return (entry >> np.uint32(16)) + np.uint32((key & np.uint32(0xFFFF)) > (entry & np.uint32(0xFFFF)))


@numba.njit(**_JIT)
def encode_one(x, table):
    """:func:`_encode` of one float32 (for tests and the example above)."""
    box = np.empty(1, dtype=np.float32)
    box[0] = x
    return _encode(box.view(np.uint32)[0], table)


@numba.njit(inline="always", **_JIT)
def _chunks(blocks, threads):
    """``(chunks, blocks per chunk)``: the prange runs over ``8·threads`` chunks of whole blocks."""
    chunks = min(blocks, threads * 8)
    return chunks, (blocks + chunks - 1) // chunks


@numba.njit(inline="always", **_JIT)
def _extent(block, block_size, n):
    """``(start, stop, size)`` of ``block`` in a flat tensor of ``n`` elements (the last block may be short)."""
    start = block * block_size
    stop = min(n, start + block_size)
    return start, stop, stop - start


@numba.njit(inline="always", **_JIT)
def _store_block(values, bits, size, codes, absmax, block, table):
    """Encode ``values[:size]`` (a block already updated) into ``codes`` (the block's slice) and ``absmax[block]``.

    Returns 1 when the block holds NaN or Inf; its ``absmax`` is then stored as NaN, never as finite garbage.
    """
    # The largest magnitude as an integer max over the bits with the sign cleared: for finite floats these
    # integers sort as the magnitudes do, and every NaN or Inf lands at or above 0x7F800000.
    top = np.uint32(0)
    for j in range(np.uint64(size)):
        top = max(top, bits[j] & np.uint32(0x7FFFFFFF))
    if top >= np.uint32(0x7F800000):
        absmax[block] = np.float32(np.nan)
        return 1
    box = np.empty(1, dtype=np.uint32)
    box[0] = top
    largest = box.view(np.float32)[0]
    absmax[block] = largest
    # Dividing by 1 where absmax is 0 keeps zeros at 0, as quantize_blockwise does.
    divisor = largest if largest > np.float32(0.0) else np.float32(1.0)
    for j in range(np.uint64(size)):
        values[j] = values[j] / divisor
    whole = size - size % LANES
    for j in range(0, whole, LANES):
        encode16(bits, j, codes, table)
    for j in range(whole, size):
        codes[j] = np.uint8(_encode(bits[j], table))
    return 0


@numba.njit(inline="always", **_JIT)
def _decode_block(codes, size, code, scale, out):
    """``out[:size] = code[codes] · scale`` for one block's codes (dequantize_blockwise of one block)."""
    whole = size - size % LANES
    for j in range(0, whole, LANES):
        decode16(codes, j, code, scale, out[j:])
    for j in range(whole, size):
        out[j] = code[codes[j]] * scale


@numba.njit(inline="always", **_JIT)
def _gradient(p, g, size, l2, out):
    """The gradient the rule sees for one block's ``p`` and ``g``: ``g`` itself or ``g + l2·p`` written into ``out``."""
    if l2 == np.float32(0.0):
        return g
    for j in range(np.uint64(size)):
        out[j] = g[j] + l2 * p[j]
    return out[:size]


@numba.njit(inline="always", **_JIT)
def _adam_block(p, g, m, v, size, beta1, rest1, beta2, rest2, step_size, inv_bias_root, eps, decay):
    for j in range(np.uint64(size)):
        gj = g[j]
        mj = beta1 * m[j] + rest1 * gj
        vj = beta2 * v[j] + rest2 * (gj * gj)
        m[j] = mj
        v[j] = vj
        p[j] = p[j] * decay - step_size * (mj / (np.sqrt(vj) * inv_bias_root + eps))


@numba.njit(parallel=True, **_JIT)
def adam_8bit(p, g, m_codes, m_absmax, v_codes, v_absmax, m_code, m_table, v_code, v_table,
              block_size, beta1, rest1, beta2, rest2, step_size, inv_bias_root, eps, l2, decay, threads):
    """One Adam/AdamW step over flat float32 ``p`` and ``g`` with 8-bit block-wise ``m`` and ``v`` (rules.adam).

    ``rest1 = 1 − β1`` and ``rest2 = 1 − β2`` (rounded once from float64, as torch rounds the same scalars),
    ``l2`` is Adam's weight decay added to the gradient, ``decay`` AdamW's factor ``1 − lr·λ`` on ``p``;
    ``step_size = lr / (1 − β1^t)`` and ``inv_bias_root = 1 / sqrt(1 − β2^t)``. Returns the number of blocks
    whose new state is not finite.
    """
    n, blocks = p.shape[0], m_absmax.shape[0]
    chunks, per_chunk = _chunks(blocks, threads)
    bad = np.zeros(chunks, dtype=np.int64)
    for chunk in numba.prange(chunks):
        m_new = np.empty(block_size, dtype=np.float32)
        v_new = np.empty(block_size, dtype=np.float32)
        grads = np.empty(block_size, dtype=np.float32)
        m_bits, v_bits = m_new.view(np.uint32), v_new.view(np.uint32)
        for block in range(chunk * per_chunk, min(blocks, (chunk + 1) * per_chunk)):
            start, stop, size = _extent(block, block_size, n)
            pb, mc, vc = p[start:stop], m_codes[start:stop], v_codes[start:stop]
            _decode_block(mc, size, m_code, m_absmax[block], m_new)
            _decode_block(vc, size, v_code, v_absmax[block], v_new)
            gb = _gradient(pb, g[start:stop], size, l2, grads)
            _adam_block(pb, gb, m_new, v_new, size, beta1, rest1, beta2, rest2, step_size, inv_bias_root, eps, decay)
            bad[chunk] += _store_block(m_new, m_bits, size, mc, m_absmax, block, m_table)
            bad[chunk] += _store_block(v_new, v_bits, size, vc, v_absmax, block, v_table)
    return bad.sum()


@numba.njit(inline="always", **_JIT)
def _momentum_block(p, g, b, size, lr, momentum, undamped, first, nesterov):
    for j in range(np.uint64(size)):
        gj = g[j]
        bj = gj if first else momentum * b[j] + undamped * gj
        b[j] = bj
        p[j] = p[j] - lr * (gj + momentum * bj if nesterov else bj)


@numba.njit(parallel=True, **_JIT)
def momentum_8bit(p, g, codes, absmax, code, table, block_size, lr, momentum, undamped, l2, first, nesterov,
                  threads):
    """One SGD-with-momentum step (torch.optim.SGD's rule, rules.momentum) with an 8-bit momentum buffer.

    ``undamped = 1 − dampening``; ``first`` is True on the buffer's first step, where torch sets the buffer to the
    gradient itself. Returns the number of blocks whose new buffer is not finite.
    """
    n, blocks = p.shape[0], absmax.shape[0]
    chunks, per_chunk = _chunks(blocks, threads)
    bad = np.zeros(chunks, dtype=np.int64)
    for chunk in numba.prange(chunks):
        buf = np.empty(block_size, dtype=np.float32)
        grads = np.empty(block_size, dtype=np.float32)
        bits = buf.view(np.uint32)
        for block in range(chunk * per_chunk, min(blocks, (chunk + 1) * per_chunk)):
            start, stop, size = _extent(block, block_size, n)
            pb, cb = p[start:stop], codes[start:stop]
            _decode_block(cb, size, code, absmax[block], buf)
            gb = _gradient(pb, g[start:stop], size, l2, grads)
            _momentum_block(pb, gb, buf, size, lr, momentum, undamped, first, nesterov)
            bad[chunk] += _store_block(buf, bits, size, cb, absmax, block, table)
    return bad.sum()


@numba.njit(inline="always", **_JIT)
def _lion_block(p, g, m, size, lr, beta1, rest1, beta2, rest2, decay):
    one, zero = np.float32(1.0), np.float32(0.0)
    for j in range(np.uint64(size)):
        c = beta1 * m[j] + rest1 * g[j]
        sign = one if c > zero else (-one if c < zero else zero)
        p[j] = p[j] * decay - lr * sign
        m[j] = beta2 * m[j] + rest2 * g[j]


@numba.njit(parallel=True, **_JIT)
def lion_8bit(p, g, codes, absmax, code, table, block_size, lr, beta1, rest1, beta2, rest2, decay, threads):
    """One Lion step (rules.lion) with an 8-bit first moment. Returns the number of non-finite blocks."""
    n, blocks = p.shape[0], absmax.shape[0]
    chunks, per_chunk = _chunks(blocks, threads)
    bad = np.zeros(chunks, dtype=np.int64)
    for chunk in numba.prange(chunks):
        buf = np.empty(block_size, dtype=np.float32)
        bits = buf.view(np.uint32)
        for block in range(chunk * per_chunk, min(blocks, (chunk + 1) * per_chunk)):
            start, stop, size = _extent(block, block_size, n)
            cb = codes[start:stop]
            _decode_block(cb, size, code, absmax[block], buf)
            _lion_block(p[start:stop], g[start:stop], buf, size, lr, beta1, rest1, beta2, rest2, decay)
            bad[chunk] += _store_block(buf, bits, size, cb, absmax, block, table)
    return bad.sum()
