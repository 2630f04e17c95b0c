"""Error metrics between a reference tensor and its approximation, computed in float64.

Example:
    >>> import torch
    >>> x = torch.tensor([1.0, -2.0, 3.0])
    >>> round(sqnr(x, x + 0.1), 2)   # 10·log10(14 / 0.03)
    26.69
    >>> sqnr(x, x)
    inf
"""

from __future__ import annotations

import math

import torch

__all__ = ["sqnr", "mse", "cosine", "max_abs_error", "spearman"]


def _pair(x: torch.Tensor, x_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.shape != x_hat.shape:
        raise ValueError(f"shapes differ: x {tuple(x.shape)} vs x_hat {tuple(x_hat.shape)}")
    if x.numel() == 0:
        raise ValueError("metrics need non-empty tensors")
    return x.detach().to(torch.float64).reshape(-1), x_hat.detach().to(torch.float64).reshape(-1)


def sqnr(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: ``10·log10(‖x‖² / ‖x − x̂‖²)`` (docs/math.md, eq. 16).

    Returns ``inf`` for an exact approximation and ``-inf`` for a zero signal with non-zero error.
    """
    a, b = _pair(x, x_hat)
    signal, noise = float(a.square().sum()), float((a - b).square().sum())
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def mse(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Mean squared error.

    Example:
        >>> mse(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 2.0]))
        0.5
    """
    a, b = _pair(x, x_hat)
    return float((a - b).square().mean())


def cosine(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Cosine similarity of the flattened tensors (1.0 for two zero tensors, 0.0 if only one is zero).

    Example:
        >>> cosine(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]))
        0.0
    """
    a, b = _pair(x, x_hat)
    na, nb = float(a.norm()), float(b.norm())
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(a @ b) / (na * nb)


def max_abs_error(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Largest absolute elementwise difference.

    Example:
        >>> max_abs_error(torch.tensor([1.0, 2.0]), torch.tensor([1.5, 2.0]))
        0.5
    """
    a, b = _pair(x, x_hat)
    return float((a - b).abs().max())


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of ``x``, ties sharing the mean of the ranks they span (the usual convention for Spearman)."""
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(1, len(x) + 1, dtype=x.dtype)
    _, inverse, counts = torch.unique(x, return_inverse=True, return_counts=True)
    # every member of a tie group gets the group's mean rank
    sums = torch.zeros(len(counts), dtype=x.dtype).index_add_(0, inverse, ranks)
    return (sums / counts.to(x.dtype))[inverse]


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman's rank correlation of the flattened tensors (Pearson correlation of their tie-averaged ranks).

    Raises:
        ValueError: different shapes, fewer than two elements, or a constant input (the correlation is undefined).

    Example:
        >>> spearman(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([10.0, 20.0, 20.0, 40.0]))
        0.9486832980505138
    """
    a, b = _pair(x, y)
    if a.numel() < 2:
        raise ValueError(f"spearman needs at least two elements, got {a.numel()}")
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(ra.norm() * rb.norm())
    if denominator == 0.0:
        raise ValueError("spearman is undefined for a constant input")
    return float(ra @ rb) / denominator
