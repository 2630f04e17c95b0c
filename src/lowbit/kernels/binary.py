"""Bit-packed ±1 matrices and their product by XOR and popcount (CATALOG §6, docs/math.md B4).

``pack_signs`` stores ``x ≥ 0`` as bit 1 and ``x < 0`` as bit 0, 64 values per ``uint64`` word along the packed
axis, element ``64·w + j`` in bit ``j`` of word ``w``; the bits past ``K`` in the last word are 0. For two such
rows, ``a·b = K − 2·popcount(a XOR b)``: equal signs add 1, different signs subtract 1, and the zero padding is
equal in both rows, so it never counts.

``binary_matmul`` runs an AVX-512 micro-kernel written in LLVM IR (``_xor_popcount_llvm``, compiled for this CPU at
the first call) where the CPU has ``VPOPCNTQ``, and a portable numba kernel elsewhere; :func:`binary_backend` names
the one in use. Both give the same integers.

Example:
    >>> import torch
    >>> pack_signs(torch.tensor([[1.0, -2.0, 0.0]]))
    tensor([[5]], dtype=torch.uint64)
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from lowbit.kernels import _xor_popcount_llvm

__all__ = ["pack_signs", "binary_matmul", "binary_backend"]

_WORD = 64


def pack_signs(x: torch.Tensor, axis: int = -1) -> torch.Tensor:
    """Pack the signs of ``x`` along ``axis`` into ``uint64`` words (``x ≥ 0`` ↦ bit 1, i.e. +1).

    Returns:
        ``uint64`` tensor with ``axis`` moved last and ``ceil(K/64)`` words there.

    Raises:
        ValueError: a non-float ``x``, NaN, or an empty packed axis.
    """
    if not x.is_floating_point():
        raise ValueError(f"pack_signs needs a float tensor, got {x.dtype}")
    moved = x.detach().movedim(axis, -1)
    if moved.dtype == torch.bfloat16:  # numpy has no bfloat16; every bfloat16 is exact in float32
        moved = moved.float()
    values = moved.numpy()  # numpy's NaN test, comparison and packbits are single passes, several × torch's here
    if np.isnan(values).any():
        raise ValueError("pack_signs got NaN: its sign is undefined")
    k = values.shape[-1]
    if k == 0:
        raise ValueError("pack_signs needs at least one element along the packed axis")
    words = -(-k // _WORD)
    bits = (values >= 0).reshape(-1, k)
    if k % _WORD:  # the bits past K in the last word are 0
        bits = np.concatenate([bits, np.zeros((bits.shape[0], words * _WORD - k), dtype=bool)], axis=1)
    # bit j of word w is element 64·w + j: little-endian bit order within bytes, bytes little-endian in words
    packed = np.packbits(bits, axis=-1, bitorder="little").view("<u8")
    return torch.from_numpy(np.ascontiguousarray(packed.reshape(*values.shape[:-1], words)))


@intrinsic
def _popcount(typingctx, x):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """LLVM's ``ctpop`` on a 64-bit word (one POPCNT instruction on x86-64)."""
    signature = types.uint64(types.uint64)

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        fn = builder.module.declare_intrinsic("llvm.ctpop", [ir.IntType(64)])
        return builder.call(fn, args)

    return signature, codegen


@numba.njit(parallel=True, nogil=True, cache=True, boundscheck=False)
def _xor_popcount_gemm(a, b, k, out):  # pragma: no cover - compiled
    m, words = a.shape
    n = b.shape[0]
    for i in numba.prange(m):
        for j in range(n):
            count = 0
            for w in range(words):
                count += _popcount(a[i, w] ^ b[j, w])
            out[i, j] = k - 2 * count


def binary_backend() -> str:
    """The kernel :func:`binary_matmul` runs on this machine (compiling it on first use).

    Returns:
        ``"llvm-avx512 (<cpu>, <rows>x<cols> block)"`` for the LLVM micro-kernel, ``"numba"`` for the portable one.

    Example:
        >>> binary_backend().split()[0] in ("llvm-avx512", "numba")
        True
    """
    kernel = _xor_popcount_llvm.load()
    return "numba" if kernel is None else kernel.backend


def binary_matmul(a_packed: torch.Tensor, b_packed: torch.Tensor, k: int, threads: int | None = None,
                  ) -> torch.Tensor:
    """``A @ B.T`` of ±1 matrices given packed (``A``: M×K, ``B``: N×K, both by :func:`pack_signs` along K) — int32.

    Args:
        k: the unpacked length ``K`` (the words hold ``ceil(K/64)·64`` bits).
        threads: threads for this call (default: numba's current setting, ``numba.get_num_threads()``).

    Raises:
        ValueError: not 2-D ``uint64`` inputs, word counts that differ or do not fit ``k``, ``threads`` outside
            ``1..numba.config.NUMBA_NUM_THREADS``.
    """
    for name, t in (("a_packed", a_packed), ("b_packed", b_packed)):
        if t.dtype != torch.uint64 or t.ndim != 2:
            raise ValueError(f"binary_matmul: {name} must be a 2-D uint64 tensor from pack_signs, got {t.dtype} "
                             f"of shape {tuple(t.shape)}")
    words = a_packed.shape[1]
    if b_packed.shape[1] != words or not (words - 1) * _WORD < k <= words * _WORD:
        raise ValueError(f"binary_matmul: {words} and {b_packed.shape[1]} words do not both hold k={k} bits")
    if threads is not None and not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"binary_matmul: threads must be in 1..{numba.config.NUMBA_NUM_THREADS}, got {threads}")
    a, b = a_packed.contiguous().numpy(), b_packed.contiguous().numpy()
    kernel = _xor_popcount_llvm.load()
    if kernel is not None:
        return torch.from_numpy(kernel(a, b, k, numba.get_num_threads() if threads is None else threads))
    out = np.empty((a.shape[0], b.shape[0]), dtype=np.int32)
    previous = numba.get_num_threads()
    if threads is not None:
        numba.set_num_threads(threads)
    try:
        _xor_popcount_gemm(a, b, np.int32(k), out)
    finally:
        numba.set_num_threads(previous)
    return torch.from_numpy(out)
