"""Winograd minimal-filtering matrices ``Aᵀ, G, Bᵀ`` for F(m, r), derived from interpolation points (docs/math.md W1–W3).

A linear convolution ``s = g * h`` of a length-``r`` filter and a length-``m`` signal is a polynomial product of
degree ``α − 1`` (``α = m + r − 1``). Toom–Cook evaluates both polynomials at ``α`` points (``∞`` meaning "the
leading coefficient"), multiplies the ``α`` values pairwise, and interpolates:
``s = V⁻¹ [(E_r g) ⊙ (E_m h)]``, with ``E_k`` the ``α × k`` evaluation matrix and ``V`` the ``α × α`` one. The
correlation a convolution layer computes, ``y_j = Σ_i g_i d_{i+j}``, is the transpose of that map in ``h``:

    y = E_mᵀ [(E_r g) ⊙ (V⁻ᵀ d)],   so   Aᵀ = E_mᵀ,  G = E_r,  Bᵀ = V⁻ᵀ          (W1)

``α`` multiplications instead of ``m·r``. A diagonal factor can move between ``G`` and ``Bᵀ`` without changing the
product; each row of ``Bᵀ`` is scaled to the smallest integers, so integer inputs transform into integers
(what an int8 Winograd kernel needs) and the fractions end up in ``G``. Arithmetic is exact (``Fraction``).

Example:
    >>> at, g, bt = winograd_matrices(2, 3)          # points 0, 1, −1, ∞ (Lavin & Gray's F(2,3))
    >>> bt.tolist()
    [[1.0, 0.0, -1.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, -1.0, 1.0, 0.0], [0.0, -1.0, 0.0, 1.0]]
    >>> g.tolist()
    [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]]
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

__all__ = ["DEFAULT_POINTS", "winograd_fractions", "winograd_matrices"]

# The finite points beside ∞: small integers and their inverses keep the transforms' entries small.
DEFAULT_POINTS = (0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2), 3, -3)
INFINITY = None

Matrix = list[list[Fraction]]


def _evaluation(points: list[Fraction | None], k: int) -> Matrix:
    """Rows ``[1, p, …, p^{k−1}]`` per finite point; ``[0, …, 0, 1]`` for ∞ (the leading coefficient)."""
    return [[Fraction(int(j == k - 1)) for j in range(k)] if p is INFINITY else [p**j for j in range(k)]
            for p in points]


def _inverse(matrix: Matrix) -> Matrix:
    """Gauss–Jordan inverse over the rationals."""
    n = len(matrix)
    work = [row[:] + [Fraction(int(i == j)) for j in range(n)] for i, row in enumerate(matrix)]
    for col in range(n):
        pivot = next(r for r in range(col, n) if work[r][col] != 0)
        work[col], work[pivot] = work[pivot], work[col]
        lead = work[col][col]
        work[col] = [v / lead for v in work[col]]
        for r in range(n):
            if r != col and work[r][col] != 0:
                factor = work[r][col]
                work[r] = [a - factor * b for a, b in zip(work[r], work[col])]
    return [row[n:] for row in work]


def _transpose(matrix: Matrix) -> Matrix:
    return [list(col) for col in zip(*matrix)]


def winograd_fractions(m: int, r: int, points: tuple | None = None) -> tuple[Matrix, Matrix, Matrix]:
    """Exact ``(Aᵀ, G, Bᵀ)`` of F(m, r) (shapes ``m×α``, ``α×r``, ``α×α``) from ``α − 1`` finite points and ∞.

    Raises:
        ValueError: sizes below 1, too few points, or repeated points.
    """
    if m < 1 or r < 1:
        raise ValueError(f"winograd: m and r must be >= 1, got m={m}, r={r}")
    alpha = m + r - 1
    finite = [Fraction(p) for p in (points if points is not None else DEFAULT_POINTS)][: alpha - 1]
    if len(finite) < alpha - 1 or len(set(finite)) != len(finite):
        raise ValueError(f"winograd: F({m},{r}) needs {alpha - 1} distinct finite points, got {points!r}")
    chosen: list[Fraction | None] = [*finite, INFINITY]
    a_t = _transpose(_evaluation(chosen, m))
    g = _evaluation(chosen, r)
    b_t = _transpose(_inverse(_evaluation(chosen, alpha)))
    for i, row in enumerate(b_t):
        # row i of Bᵀ times c and row i of G divided by c: the same products, integer input transform
        c = Fraction(math.lcm(*(v.denominator for v in row)), math.gcd(*(v.numerator for v in row)))
        b_t[i] = [v * c for v in row]
        g[i] = [v / c for v in g[i]]
    return a_t, g, b_t


def winograd_matrices(m: int, r: int, points: tuple | None = None, dtype: torch.dtype = torch.float64,
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`winograd_fractions` as tensors of ``dtype``."""
    return tuple(torch.tensor([[float(v) for v in row] for row in mat], dtype=dtype)  # type: ignore[return-value]
                 for mat in winograd_fractions(m, r, points))
