"""Relative sparse indices with filler zeros, as Deep Compression stores pruned weights (Han et al., 2016, §2).

A pruned tensor is read flat (row-major) and only its kept weights are stored, each with the *gap* from the
previous stored position instead of its absolute position, so a gap fits in ``index_bits`` bits (the paper uses
8 for conv and 5 for fully connected layers).

Convention (``B = 2^index_bits``):

- positions ``p_0 < p_1 < …`` are measured from a virtual ``p_{-1} = −1``; a gap is ``d_i = p_i − p_{i−1} ≥ 1``.
- a gap ``d`` in ``1 … B`` is stored as the field ``d − 1`` (``0 … B − 1``), so no code is wasted on ``d = 0``.
- a gap ``d > B`` is split with filler entries: jumps of exactly ``B`` landing on positions that are not kept
  (their weight is a pruned zero) until the rest is ``≤ B``. That is ``ceil(d / B) − 1`` fillers, each storing
  the value 0 — the paper's "pad filler zero" (Fig. 2). The decoder needs no flag: it scatters every entry's
  value, and a filler's value is 0 anyway.

The paper's Fig. 2 measures the first gap from 0 (position 1 has gap 1) and so cannot place a weight at
position 0; measuring from −1 can, and moves only that first gap by one.

Example (Fig. 2: 3-bit gaps, kept weights at 1, 4 and 15; 15 − 4 = 11 > 8 needs a filler at 12):
    >>> gaps, filler = encode_relative([1, 4, 15], index_bits=3)
    >>> gaps.tolist(), filler.tolist()
    ([2, 3, 8, 3], [False, False, True, False])
    >>> decode_relative(gaps, index_bits=3, numel=16).tolist()
    [1, 4, 12, 15]
    >>> data = pack_gaps(gaps, index_bits=3)
    >>> len(data), unpack_gaps(data, index_bits=3, count=4).tolist()
    (2, [2, 3, 8, 3])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lowbit.functional.packing import pack, unpack

__all__ = ["encode_relative", "decode_relative", "pack_gaps", "unpack_gaps"]


def _check_bits(index_bits: int) -> int:
    # 1..8: the paper's widths, and what lowbit.functional.packing stores densely.
    if isinstance(index_bits, bool) or not isinstance(index_bits, int) or not 1 <= index_bits <= 8:
        raise ValueError(f"index_bits must be an int in 1..8, got {index_bits!r}")
    return 1 << index_bits


def _as_array(x: torch.Tensor | np.ndarray | Sequence[int], name: str) -> np.ndarray:
    array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if array.size == 0 and array.dtype.kind == "f":
        array = array.astype(np.int64)  # np.asarray([]) is float64: an empty list is still valid input
    if array.dtype.kind not in "iub":
        raise ValueError(f"{name} must be integers or a boolean mask, got dtype {array.dtype}")
    return array


def _check_gaps(gaps: torch.Tensor | np.ndarray | Sequence[int], jump: int, index_bits: int) -> np.ndarray:
    array = _as_array(gaps, "gaps")
    if array.ndim != 1 or array.dtype == np.bool_:
        raise ValueError(f"gaps must be a 1-D integer array, got shape {tuple(array.shape)} and dtype {array.dtype}")
    gap = array.astype(np.int64)
    if gap.size and (int(gap.min()) < 1 or int(gap.max()) > jump):
        bad = int(gap[(gap < 1) | (gap > jump)][0])
        raise ValueError(f"gaps must be in 1..{jump} for index_bits={index_bits}, got {bad}")
    return gap


def encode_relative(
    positions: torch.Tensor | np.ndarray | Sequence[int], index_bits: int
) -> tuple[np.ndarray, np.ndarray]:
    """Gap stream of the kept positions, with filler entries where a gap exceeds ``2^index_bits``.

    Args:
        positions: strictly ascending non-negative flat positions of the kept weights (1-D integers), or a
            boolean mask of any shape (True = kept), read flat in row-major order.
        index_bits: bits per stored gap, 1..8.

    Returns:
        ``(gaps, is_filler)``, one entry per stored value: int64 gaps in ``1 … 2^index_bits`` (store ``gap − 1``,
        see :func:`pack_gaps`) and a bool array marking fillers, whose stored value must be 0. The positions of
        the entries are ``cumsum(gaps) − 1`` (:func:`decode_relative`).

    Raises:
        ValueError: bad ``index_bits``, non-integer input, or positions not 1-D, negative or not strictly
            ascending.

    Example:
        >>> mask = torch.tensor([[True, False, False], [False, False, True]])
        >>> [a.tolist() for a in encode_relative(mask, index_bits=1)]
        [[1, 2, 2, 1], [False, True, True, False]]
    """
    jump = _check_bits(index_bits)
    array = _as_array(positions, "positions")
    if array.dtype == np.bool_:
        kept = np.flatnonzero(array).astype(np.int64)
    else:
        if array.ndim != 1:
            raise ValueError(f"positions must be 1-D (or pass a boolean mask), got shape {tuple(array.shape)}")
        kept = array.astype(np.int64)
        if kept.size and int(kept[0]) < 0:
            raise ValueError(f"positions must be non-negative, got {int(kept[0])}")
    gap = np.diff(kept, prepend=np.int64(-1))
    if kept.size and int(gap.min()) < 1:
        i = int(np.argmin(gap))
        raise ValueError(f"positions must be strictly ascending, got {int(kept[i - 1])} then {int(kept[i])}")
    # Each gap d becomes ceil(d / B) entries: ceil(d / B) − 1 fillers of exactly B, then the remainder in 1..B.
    entries = (gap + jump - 1) // jump
    owner = np.repeat(np.arange(kept.size), entries)
    start = np.cumsum(entries) - entries
    is_filler = np.arange(owner.size) - start[owner] < entries[owner] - 1
    gaps = np.where(is_filler, jump, gap[owner] - (entries[owner] - 1) * jump)
    return gaps.astype(np.int64), is_filler


def decode_relative(gaps: torch.Tensor | np.ndarray | Sequence[int], index_bits: int, numel: int) -> np.ndarray:
    """Inverse of :func:`encode_relative`: the flat position of every entry, fillers included (int64).

    Scatter the stored values into ``numel`` zeros at these positions to rebuild the pruned tensor; fillers
    write their stored 0 onto a pruned position.

    Raises:
        ValueError: bad ``index_bits`` or ``numel``, gaps not 1-D integers in ``1 … 2^index_bits``, or positions
            reaching past ``numel``.

    Example:
        >>> decode_relative([1, 2, 2, 1], index_bits=1, numel=6).tolist()
        [0, 2, 4, 5]
    """
    jump = _check_bits(index_bits)
    if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
        raise ValueError(f"numel must be a non-negative int, got {numel!r}")
    positions = np.cumsum(_check_gaps(gaps, jump, index_bits)) - 1
    if positions.size and int(positions[-1]) >= numel:
        raise ValueError(f"gaps reach position {int(positions[-1])}, beyond numel={numel}")
    return positions


def pack_gaps(gaps: torch.Tensor | np.ndarray | Sequence[int], index_bits: int) -> bytes:
    """Store each gap as the ``index_bits``-bit field ``gap − 1``, densely (``ceil(n·index_bits / 8)`` bytes).

    Fields follow :func:`lowbit.functional.packing.pack`: one after another, least significant bit first.

    Raises:
        ValueError: bad ``index_bits``, or gaps not 1-D integers in ``1 … 2^index_bits``.

    Example:
        >>> pack_gaps([1, 2, 2, 1], index_bits=1).hex()
        '06'
    """
    fields = torch.from_numpy(_check_gaps(gaps, _check_bits(index_bits), index_bits) - 1)
    return pack(fields, bits=index_bits, signed=False).numpy().tobytes()


def unpack_gaps(data: bytes, index_bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_gaps`: ``count`` int64 gaps.

    Raises:
        ValueError: bad ``index_bits`` or ``count``, or ``data`` too short for ``count`` fields.

    Example:
        >>> unpack_gaps(bytes([6]), index_bits=1, count=4).tolist()
        [1, 2, 2, 1]
    """
    _check_bits(index_bits)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be a non-negative int, got {count!r}")
    packed = torch.from_numpy(np.frombuffer(bytes(data), dtype=np.uint8).copy())
    fields = unpack(packed, bits=index_bits, signed=False, shape=(count,))
    return fields.numpy().astype(np.int64) + 1
