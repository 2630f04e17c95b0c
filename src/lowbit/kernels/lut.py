"""Products of low-bit integer codes: bit-serial popcount and a nibble-pair look-up table (CATALOG §6).

Unsigned codes ``a ∈ [0, 2^ba)`` and ``b ∈ [0, 2^bb)`` are sums of their bit planes, ``a = Σ_i 2^i·a_i``, so
(DoReFa-Net, Zhou et al. 2016, eq. 3)::

    a·b = Σ_k a[k]·b[k] = Σ_i Σ_j 2^(i+j) · popcount(a_i AND b_j)

:func:`pack_codes_bitplanes` packs plane ``i`` like :func:`lowbit.kernels.pack_signs` (element ``64·w + j`` in
bit ``j`` of word ``w``, bits past ``K`` zero, which add nothing to an AND), and :func:`bitserial_matmul` runs
the ``ba·bb`` popcount passes. :func:`lut_matmul` is the table alternative: two 4-bit codes per byte, one
``256 × 256`` table of ``lo·lo + hi·hi`` per byte pair, one load per two products.

Signed codes are unsigned ones minus a zero point (``x ≈ scale·(q − zero_point)``, docs/math.md eq. 1)::

    Σ_k (a − z_a)(b − z_b) = Σ a·b − z_b·Σ_k a − z_a·Σ_k b + K·z_a·z_b

so both products take ``zero_point_a`` / ``zero_point_b`` (an int, or one per row) and correct with row sums.
DoReFa's odd weight codes ``c = 2q − (2^k − 1)`` give ``q = (c + 2^k − 1)/2`` in ``[0, 2^k)``, and
``Σ a·c = 2·Σ a·q − (2^k − 1)·Σ a``.

Example:
    >>> import torch
    >>> a, b = torch.tensor([[3, 1, 2]]), torch.tensor([[1, 2, 3], [0, 3, 3]])
    >>> bitserial_matmul(pack_codes_bitplanes(a, 2), pack_codes_bitplanes(b, 2), 3)
    tensor([[11,  9]])
    >>> lut_matmul(pack_nibbles(a), pack_nibbles(b), 3, zero_point_b=2)
    tensor([[-1, -3]])
"""

from __future__ import annotations

from collections.abc import Callable

import numba
import numpy as np
import torch

from lowbit.kernels.binary import _popcount, pack_signs
from lowbit.kernels.ternary import _numba_threads

__all__ = ["pack_codes_bitplanes", "bitserial_matmul", "pack_nibbles", "lut_matmul"]

_WORD = 64
_MAX_PLANES = 8  # bit-serial cost grows with ba·bb; beyond 8 bits an int8/int16 GEMM is the better tool
_NIBBLE = 4


def _check_codes(codes: torch.Tensor, bits: int, caller: str, max_bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= max_bits:
        raise ValueError(f"{caller}: bits must be an int in 1..{max_bits}, got {bits!r}")
    if not isinstance(codes, torch.Tensor) or codes.dtype == torch.bool or codes.is_floating_point() \
            or codes.is_complex():
        got = codes.dtype if isinstance(codes, torch.Tensor) else type(codes)
        raise ValueError(f"{caller}: codes must be an integer tensor, got {got}")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= 1 << bits):
        raise ValueError(f"{caller}: codes must lie in [0, {1 << bits}) for bits={bits}, found "
                         f"{int(codes.min())}..{int(codes.max())} (shift signed codes into range and pass the shift "
                         f"as a zero point)")


def pack_codes_bitplanes(codes: torch.Tensor, bits: int, axis: int = -1) -> torch.Tensor:
    """Split unsigned integer codes into ``bits`` bit planes, each packed along ``axis`` into ``uint64`` words.

    Args:
        codes: integer codes in ``[0, 2^bits)``.
        bits: the code width (1..8); plane ``i`` holds bit ``i`` (weight ``2^i``).
        axis: the reduction axis ``K`` to pack; it is moved last.

    Returns:
        ``uint64`` tensor ``(bits, *rest, ceil(K/64))``: ``out[i]`` is plane ``i`` of ``codes`` with ``axis`` moved
        last (so a matrix ``(M, K)`` gives ``(bits, M, words)``).

    Raises:
        ValueError: a non-integer tensor, codes outside ``[0, 2^bits)``, ``bits`` outside 1..8, an empty axis.
    """
    _check_codes(codes, bits, "pack_codes_bitplanes", _MAX_PLANES)
    if codes.ndim == 0 or codes.shape[axis] == 0:
        raise ValueError(f"pack_codes_bitplanes: codes need at least one element along axis={axis}, "
                         f"got shape {tuple(codes.shape)}")
    codes = codes.detach().to(torch.int64)
    # pack_signs sets a bit where its input is ≥ 0: bit − 1/2 turns "bit i is set" into that test
    return torch.stack([pack_signs(((codes >> i) & 1).to(torch.float32) - 0.5, axis) for i in range(bits)])


def pack_nibbles(codes: torch.Tensor, axis: int = -1) -> torch.Tensor:
    """Pack unsigned codes of up to 4 bits two per byte along ``axis`` for :func:`lut_matmul`.

    Element ``2·c`` goes to the low nibble of byte ``c``, element ``2·c + 1`` to the high nibble; an odd ``K`` leaves
    the last high nibble 0 (a code 0 adds nothing to a product).

    Returns:
        ``uint8`` tensor shaped like ``codes`` with ``axis`` moved last and ``ceil(K/2)`` bytes there.

    Raises:
        ValueError: a non-integer tensor, codes outside ``[0, 16)``, or an empty axis.
    """
    _check_codes(codes, _NIBBLE, "pack_nibbles", _NIBBLE)
    if codes.ndim == 0 or codes.shape[axis] == 0:
        raise ValueError(f"pack_nibbles: codes need at least one element along axis={axis}, "
                         f"got shape {tuple(codes.shape)}")
    moved = codes.detach().movedim(axis, -1).to(torch.uint8)
    if moved.shape[-1] % 2:
        moved = torch.cat([moved, moved.new_zeros(*moved.shape[:-1], 1)], dim=-1)
    return (moved[..., 0::2] | (moved[..., 1::2] << _NIBBLE)).contiguous()


def _nibble_pair_table() -> np.ndarray:
    """``table[x, y] = lo(x)·lo(y) + hi(x)·hi(y)`` for bytes ``x, y`` of two nibbles each."""
    byte = np.arange(256, dtype=np.int32)
    lo, hi = byte & 15, byte >> _NIBBLE
    # int16 holds the largest entry (2·15·15 = 450) and halves the table to 128 KiB, so it stays in L2
    return (lo[:, None] * lo[None, :] + hi[:, None] * hi[None, :]).astype(np.int16)


_TABLE = _nibble_pair_table()


@numba.njit(parallel=True, nogil=True, cache=True, boundscheck=False)
def _bitserial_gemm(a, b, out):  # pragma: no cover - compiled
    planes_a, m, words = a.shape
    planes_b, n = b.shape[0], b.shape[1]
    for i in numba.prange(m):
        for j in range(n):
            total = 0
            for p in range(planes_a):
                for q in range(planes_b):
                    # uint64 counter: numba would widen an int64 += uint64 sum to float64
                    count = np.uint64(0)
                    for w in range(words):
                        count += _popcount(a[p, i, w] & b[q, j, w])
                    total += np.int64(count) << (p + q)
            out[i, j] = total


@numba.njit(parallel=True, nogil=True, cache=True, boundscheck=False)
def _plane_row_sums(planes, out):  # pragma: no cover - compiled
    bits, m, words = planes.shape
    for i in numba.prange(m):
        total = 0
        for p in range(bits):
            count = np.uint64(0)
            for w in range(words):
                count += _popcount(planes[p, i, w])
            total += np.int64(count) << p
        out[i] = total


@numba.njit(parallel=True, nogil=True, cache=True, boundscheck=False)
def _lut_gemm(a, b, table, out):  # pragma: no cover - compiled
    m, nbytes = a.shape
    n = b.shape[0]
    for i in numba.prange(m):
        for j in range(n):
            total = 0
            for c in range(nbytes):
                total += table[a[i, c], b[j, c]]
            out[i, j] = total


def _zero_point(z: int | torch.Tensor, rows: int, name: str, caller: str) -> torch.Tensor:
    """A zero point as an int64 tensor that broadcasts over ``rows`` (a scalar, or one per row)."""
    if isinstance(z, torch.Tensor) and not z.is_floating_point() and z.dtype != torch.bool and not z.is_complex() \
            and z.ndim <= 1 and z.numel() in (1, rows):
        return z.detach().to(torch.int64).reshape(-1)
    if isinstance(z, int) and not isinstance(z, bool):
        return torch.tensor([z], dtype=torch.int64)
    got = f"{z.dtype} of shape {tuple(z.shape)}" if isinstance(z, torch.Tensor) else repr(z)
    raise ValueError(f"{caller}: {name} must be an int or a 1-D integer tensor of {rows} rows, got {got}")


def _apply_zero_points(acc: torch.Tensor, k: int, za: torch.Tensor, zb: torch.Tensor,
                       row_sums_a: Callable[[], torch.Tensor], row_sums_b: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``Σ(a − z_a)(b − z_b)`` from ``Σ a·b`` (module docstring); a row sum is computed only when it is needed."""
    if bool((zb != 0).any()):
        acc = acc - row_sums_a()[:, None] * zb[None, :]
    if bool((za != 0).any()):
        acc = acc - za[:, None] * row_sums_b()[None, :] + k * za[:, None] * zb[None, :]
    return acc


def _bitplane_row_sums(planes: np.ndarray) -> torch.Tensor:
    sums = np.empty(planes.shape[1], dtype=np.int64)
    _plane_row_sums(planes, sums)
    return torch.from_numpy(sums)


def _nibble_row_sums(packed: torch.Tensor) -> torch.Tensor:
    return ((packed & 15).to(torch.int64) + (packed >> _NIBBLE).to(torch.int64)).sum(dim=1)


def _check_packed(t: torch.Tensor, name: str, dtype: torch.dtype, ndim: int, caller: str, source: str) -> np.ndarray:
    if not isinstance(t, torch.Tensor) or t.dtype != dtype or t.ndim != ndim:
        got = f"{t.dtype} of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t)
        raise ValueError(f"{caller}: {name} must be a {ndim}-D {dtype} tensor from {source}, got {got}")
    return t.contiguous().numpy()


def _check_k(k: int, caller: str) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{caller}: k must be a positive int, got {k!r}")


def bitserial_matmul(a_planes: torch.Tensor, b_planes: torch.Tensor, k: int, zero_point_a: int | torch.Tensor = 0,
                     zero_point_b: int | torch.Tensor = 0, threads: int | None = None) -> torch.Tensor:
    """``(A − z_a) @ (B − z_b).T`` of integer codes given as bit planes (``A``: M×K, ``B``: N×K) — exact, int64.

    Args:
        a_planes: ``(ba, M, words)`` from :func:`pack_codes_bitplanes` of ``A``.
        b_planes: ``(bb, N, words)`` from :func:`pack_codes_bitplanes` of ``B``, packed along the same ``K``.
        k: the unpacked length ``K``.
        zero_point_a: subtracted from every code of ``A``: an int, or a 1-D integer tensor of ``M`` (one per row).
        zero_point_b: the same for ``B`` (``N`` rows).
        threads: numba threads for this call (default: numba's current setting).

    Returns:
        int64 tensor ``(M, N)``: ``Σ_i Σ_j 2^(i+j) popcount(a_i AND b_j)`` (module docstring), zero points applied.

    Raises:
        ValueError: planes that are not 3-D ``uint64``, more than 8 planes, word counts that do not hold ``k``,
            a bad zero point or ``threads``.
    """
    caller = "bitserial_matmul"
    _check_k(k, caller)
    a = _check_packed(a_planes, "a_planes", torch.uint64, 3, caller, "pack_codes_bitplanes")
    b = _check_packed(b_planes, "b_planes", torch.uint64, 3, caller, "pack_codes_bitplanes")
    for name, planes in (("a_planes", a), ("b_planes", b)):
        if not 1 <= planes.shape[0] <= _MAX_PLANES:
            raise ValueError(f"{caller}: {name} must hold 1..{_MAX_PLANES} bit planes, got {planes.shape[0]}")
        if not (planes.shape[2] - 1) * _WORD < k <= planes.shape[2] * _WORD:
            raise ValueError(f"{caller}: {name} has {planes.shape[2]} words per row, which do not hold k={k} bits")
    za = _zero_point(zero_point_a, a.shape[1], "zero_point_a", caller)
    zb = _zero_point(zero_point_b, b.shape[1], "zero_point_b", caller)
    out = np.empty((a.shape[1], b.shape[1]), dtype=np.int64)
    with _numba_threads(threads, caller):
        _bitserial_gemm(a, b, out)
        return _apply_zero_points(torch.from_numpy(out), k, za, zb, lambda: _bitplane_row_sums(a),
                                  lambda: _bitplane_row_sums(b))


def lut_matmul(a_nibbles: torch.Tensor, b_nibbles: torch.Tensor, k: int, zero_point_a: int | torch.Tensor = 0,
               zero_point_b: int | torch.Tensor = 0, threads: int | None = None) -> torch.Tensor:
    """``(A − z_a) @ (B − z_b).T`` of codes up to 4 bits by a nibble-pair product table — exact, int64.

    Args:
        a_nibbles: ``(M, ceil(K/2))`` ``uint8`` from :func:`pack_nibbles` of ``A``.
        b_nibbles: ``(N, ceil(K/2))`` ``uint8`` from :func:`pack_nibbles` of ``B``.
        k: the unpacked length ``K``.
        zero_point_a: subtracted from every code of ``A``: an int, or a 1-D integer tensor of ``M`` (one per row).
        zero_point_b: the same for ``B``.
        threads: numba threads for this call (default: numba's current setting).

    Returns:
        int64 tensor ``(M, N)``, equal to :func:`bitserial_matmul` of the same codes.

    Raises:
        ValueError: inputs that are not 2-D ``uint8``, byte counts that do not hold ``k``, a bad zero point or
            ``threads``.
    """
    caller = "lut_matmul"
    _check_k(k, caller)
    a = _check_packed(a_nibbles, "a_nibbles", torch.uint8, 2, caller, "pack_nibbles")
    b = _check_packed(b_nibbles, "b_nibbles", torch.uint8, 2, caller, "pack_nibbles")
    for name, packed in (("a_nibbles", a), ("b_nibbles", b)):
        if packed.shape[1] != -(-k // 2):
            raise ValueError(f"{caller}: {name} has {packed.shape[1]} bytes per row, not ceil(k/2) for k={k}")
    za = _zero_point(zero_point_a, a.shape[0], "zero_point_a", caller)
    zb = _zero_point(zero_point_b, b.shape[0], "zero_point_b", caller)
    out = np.empty((a.shape[0], b.shape[0]), dtype=np.int64)
    with _numba_threads(threads, caller):
        _lut_gemm(a, b, _TABLE, out)
    return _apply_zero_points(torch.from_numpy(out), k, za, zb, lambda: _nibble_row_sums(a_nibbles),
                              lambda: _nibble_row_sums(b_nibbles))
