"""Ternary matrices as two bit-planes and their products by AND, XOR and popcount (CATALOG §6, docs/math.md B3–B4).

A ternary matrix ``T ∈ {−1, 0, +1}`` (TWN/TTQ codes) is stored as two planes packed like
:func:`lowbit.kernels.pack_signs`, 64 values per ``uint64`` word along the packed axis, element ``64·w + j`` in
bit ``j`` of word ``w``:

- ``signs``: bit 1 where ``t = +1`` (0 where ``t = −1`` *and* where ``t = 0``),
- ``nonzero``: bit 1 where ``t ≠ 0``; the bits past ``K`` are 0 in both planes.

For two ternary rows with ``m = nonzero_a & nonzero_b`` (the positions where the product is not 0) and
``d = signs_a ^ signs_b`` (the positions where the signs differ)::

    a·b = popcount(m & ~d) − popcount(m & d) = popcount(m) − 2·popcount(m & d)

A ±1 row (from ``pack_signs``) is the special case ``nonzero = all ones in K``, so a ternary × binary product
uses ``m = nonzero`` of the ternary side alone. The bits past ``K`` are 0 in every mask, so ``K`` never enters
the sum — unlike the pure binary product, where they must be equal in both operands.

Example:
    >>> import torch
    >>> w = pack_ternary(torch.tensor([[1.0, 0.0, -1.0], [0.0, -1.0, -1.0]]))
    >>> w.signs.tolist(), w.nonzero.tolist()
    ([[1], [0]], [[5], [6]])
    >>> ternary_matmul(w, w, 3)
    tensor([[2, 1],
            [1, 2]], dtype=torch.int32)
    >>> from lowbit.kernels.binary import pack_signs
    >>> ternary_matmul(w, pack_signs(torch.tensor([[1.0, 1.0, 1.0]])), 3)
    tensor([[ 0],
            [-2]], dtype=torch.int32)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import numba
import numpy as np
import torch

from lowbit.kernels.binary import _popcount, binary_matmul, pack_signs

__all__ = ["TernaryPacked", "pack_ternary", "ternary_matmul"]

_WORD = 64


class TernaryPacked(NamedTuple):
    """The two bit-planes of a ternary matrix, each ``uint64`` with the packed axis last (``ceil(K/64)`` words).

    Example: ``pack_ternary(t)`` for ``t`` of shape ``(M, K)`` gives ``signs`` and ``nonzero`` of shape
    ``(M, ceil(K/64))``; ``signs`` is 0 wherever ``nonzero`` is 0.
    """

    signs: torch.Tensor
    nonzero: torch.Tensor


@contextmanager
def _numba_threads(threads: int | None, caller: str) -> Iterator[None]:
    """Run the enclosed numba kernels on ``threads`` threads, restoring the previous setting afterwards."""
    previous = numba.get_num_threads()
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) \
                or not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
            raise ValueError(f"{caller}: threads must be an int in 1..{numba.config.NUMBA_NUM_THREADS}, "
                             f"got {threads!r}")
        numba.set_num_threads(threads)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def pack_ternary(t: torch.Tensor, axis: int = -1) -> TernaryPacked:
    """Pack a ternary tensor (values in ``{−1, 0, +1}``, float or integer) into its sign and nonzero planes.

    Args:
        t: the codes, e.g. the first output of :func:`lowbit.functional.binary.twn_ternarize`.
        axis: the axis to pack (the reduction axis ``K`` of a later product); it is moved last.

    Returns:
        :class:`TernaryPacked` of two ``uint64`` tensors shaped like ``t`` with ``axis`` moved last and
        ``ceil(K/64)`` words there.

    Raises:
        ValueError: a value other than −1, 0, +1 (NaN included), a bool or complex tensor, or an empty axis.
    """
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"pack_ternary: t must hold the numbers -1, 0, +1, got dtype {t.dtype}")
    if t.ndim == 0 or t.shape[axis] == 0:
        raise ValueError(f"pack_ternary: t needs at least one element along axis={axis}, got shape {tuple(t.shape)}")
    t = t.detach()
    valid = (t == 0) | (t == 1) | (t == -1)
    if not bool(valid.all()):
        bad = t[~valid].flatten()[0].item()
        raise ValueError(f"pack_ternary: t must hold only -1, 0, +1, found {bad!r}")
    # pack_signs sets a bit where its input is ≥ 0; shifting by −1/2 turns "t = +1" and "t ≠ 0" into that test
    # (the values are exact in float32) and inherits its layout and its zero bits past K
    t = t.to(torch.float32)
    return TernaryPacked(signs=pack_signs(t - 0.5, axis), nonzero=pack_signs(t.abs() - 0.5, axis))


@numba.njit(parallel=True, nogil=True, cache=True, boundscheck=False)
def _ternary_gemm(sa, ma, sb, mb, out):  # pragma: no cover - compiled
    m, words = sa.shape
    n = sb.shape[0]
    for i in numba.prange(m):
        for j in range(n):
            # uint64 counters: numba would widen an int64 += uint64 sum to float64
            both = np.uint64(0)
            differ = np.uint64(0)
            for w in range(words):
                mask = ma[i, w] & mb[j, w]
                both += _popcount(mask)
                differ += _popcount(mask & (sa[i, w] ^ sb[j, w]))
            out[i, j] = np.int64(both) - 2 * np.int64(differ)


@numba.njit(parallel=True, nogil=True, cache=True, boundscheck=False)
def _ternary_binary_gemm(st, mt, sb, out):  # pragma: no cover - compiled
    m, words = st.shape
    n = sb.shape[0]
    for i in numba.prange(m):
        # the mask is the ternary row's alone, so its popcount is shared by every column
        nonzero = np.uint64(0)
        for w in range(words):
            nonzero += _popcount(mt[i, w])
        for j in range(n):
            differ = np.uint64(0)
            for w in range(words):
                differ += _popcount(mt[i, w] & (st[i, w] ^ sb[j, w]))
            out[i, j] = np.int64(nonzero) - 2 * np.int64(differ)


def _as_numpy_planes(x: TernaryPacked | torch.Tensor, name: str, k: int) -> tuple[np.ndarray, ...]:
    """Validate one operand; a ternary one gives (signs, nonzero), a binary one gives (signs,)."""
    planes = tuple(x) if isinstance(x, TernaryPacked) else (x,)
    for plane in planes:
        if not isinstance(plane, torch.Tensor) or plane.dtype != torch.uint64 or plane.ndim != 2:
            got = f"{plane.dtype} of shape {tuple(plane.shape)}" if isinstance(plane, torch.Tensor) else type(plane)
            raise ValueError(f"ternary_matmul: {name} must be a TernaryPacked of 2-D uint64 planes (pack_ternary) "
                             f"or a 2-D uint64 tensor (pack_signs), got {got}")
    if len(planes) == 2 and planes[0].shape != planes[1].shape:
        raise ValueError(f"ternary_matmul: {name}.signs {tuple(planes[0].shape)} and {name}.nonzero "
                         f"{tuple(planes[1].shape)} differ in shape")
    words = planes[0].shape[1]
    if not (words - 1) * _WORD < k <= words * _WORD:
        raise ValueError(f"ternary_matmul: {name} has {words} words per row, which do not hold k={k} bits")
    return tuple(plane.contiguous().numpy() for plane in planes)


def ternary_matmul(a: TernaryPacked | torch.Tensor, b: TernaryPacked | torch.Tensor, k: int,
                   threads: int | None = None) -> torch.Tensor:
    """``A @ B.T`` for ternary or ±1 matrices packed along ``K`` (``A``: M×K, ``B``: N×K) — exact, int32.

    Each operand is either a :class:`TernaryPacked` (from :func:`pack_ternary`) or a ``uint64`` tensor of ±1
    signs (from :func:`lowbit.kernels.pack_signs`): ternary × ternary, ternary weights × binary activations,
    binary × ternary and (handed to :func:`lowbit.kernels.binary_matmul`) binary × binary.

    Args:
        a: the left operand, M rows.
        b: the right operand, N rows, packed along the same ``K``.
        k: the unpacked length ``K``.
        threads: numba threads for this call (default: numba's current setting).

    Returns:
        int32 tensor ``(M, N)``.

    Raises:
        ValueError: operands that are not packed planes, word counts that do not hold ``k``, or a bad ``threads``.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"ternary_matmul: k must be a positive int, got {k!r}")
    pa, pb = _as_numpy_planes(a, "a", k), _as_numpy_planes(b, "b", k)
    if len(pa) == 1 and len(pb) == 1:
        return binary_matmul(a, b, k, threads=threads)
    out = np.empty((pa[0].shape[0], pb[0].shape[0]), dtype=np.int32)
    with _numba_threads(threads, "ternary_matmul"):
        if len(pa) == 2 and len(pb) == 2:
            _ternary_gemm(pa[0], pa[1], pb[0], pb[1], out)
        elif len(pa) == 2:
            _ternary_binary_gemm(pa[0], pa[1], pb[0], out)
        else:
            # binary × ternary is the transpose of ternary × binary: write it through a transposed view
            _ternary_binary_gemm(pb[0], pb[1], pa[0], out.T)
    return torch.from_numpy(out)
