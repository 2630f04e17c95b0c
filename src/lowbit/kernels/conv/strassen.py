"""Strassen's matrix product: 7 block products instead of 8 per level (docs/math.md W5).

With ``A = [[A11, A12], [A21, A22]]`` and ``B`` alike (Strassen 1969):

    M1 = (A11 + A22)(B11 + B22)   M2 = (A21 + A22) B11   M3 = A11 (B12 − B22)   M4 = A22 (B21 − B11)
    M5 = (A11 + A12) B22          M6 = (A21 − A11)(B11 + B12)                   M7 = (A12 − A22)(B21 + B22)
    C11 = M1 + M4 − M5 + M7   C12 = M3 + M5   C21 = M2 + M4   C22 = M1 − M2 + M3 + M6

Each level trades one product of half size for 18 additions of half-size blocks. Below ``cutoff`` (any dimension)
the product is ``torch.matmul``. An odd dimension is padded by one zero row or column, which the result drops.

Example:
    >>> import torch
    >>> a, b = torch.randn(70, 45, dtype=torch.float64), torch.randn(45, 33, dtype=torch.float64)
    >>> torch.allclose(strassen_matmul(a, b, cutoff=8), a @ b)
    True
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = ["strassen_matmul"]


def _even(t: torch.Tensor) -> torch.Tensor:
    """``t`` with a zero row and/or column appended where its size is odd."""
    return F.pad(t, (0, t.shape[1] % 2, 0, t.shape[0] % 2))


def strassen_matmul(a: torch.Tensor, b: torch.Tensor, cutoff: int = 128) -> torch.Tensor:
    """``a @ b`` for 2-D ``a`` (m×k) and ``b`` (k×n) by Strassen's recursion down to ``cutoff``.

    Raises:
        ValueError: not two matrices with matching inner size, or ``cutoff`` below 1.
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"strassen_matmul: need (m, k) and (k, n) matrices, got {tuple(a.shape)}, {tuple(b.shape)}")
    if not isinstance(cutoff, int) or cutoff < 1:
        raise ValueError(f"strassen_matmul: cutoff must be an int >= 1, got {cutoff!r}")
    return _strassen(a, b, cutoff)


def _strassen(a: torch.Tensor, b: torch.Tensor, cutoff: int) -> torch.Tensor:
    m, k = a.shape
    n = b.shape[1]
    if min(m, k, n) <= cutoff:
        return torch.matmul(a, b)
    pa, pb = _even(a), _even(b)
    h, hk, hn = pa.shape[0] // 2, pa.shape[1] // 2, pb.shape[1] // 2
    a11, a12, a21, a22 = pa[:h, :hk], pa[:h, hk:], pa[h:, :hk], pa[h:, hk:]
    b11, b12, b21, b22 = pb[:hk, :hn], pb[:hk, hn:], pb[hk:, :hn], pb[hk:, hn:]
    m1 = _strassen(a11 + a22, b11 + b22, cutoff)
    m2 = _strassen(a21 + a22, b11, cutoff)
    m3 = _strassen(a11, b12 - b22, cutoff)
    m4 = _strassen(a22, b21 - b11, cutoff)
    m5 = _strassen(a11 + a12, b22, cutoff)
    m6 = _strassen(a21 - a11, b11 + b12, cutoff)
    m7 = _strassen(a12 - a22, b21 + b22, cutoff)
    top = torch.cat([m1 + m4 - m5 + m7, m3 + m5], dim=1)
    bottom = torch.cat([m2 + m4, m1 - m2 + m3 + m6], dim=1)
    return torch.cat([top, bottom], dim=0)[:m, :n]
