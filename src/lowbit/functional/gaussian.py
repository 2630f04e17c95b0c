"""Moments of a clipped normal variable (docs/math.md, eq. T4): what a ReLU or ReLU6 makes of a BatchNorm output.

For ``z ~ N(μ, σ²)`` and ``y = clamp(z, a, b)``, with ``α = (a − μ)/σ``, ``β = (b − μ)/σ``, Φ the standard normal
CDF and φ its density:

    E[y] = a·Φ(α) + b·(1 − Φ(β)) + μ·(Φ(β) − Φ(α)) + σ·(φ(α) − φ(β))

(an infinite bound contributes nothing: ``a = −∞`` drops the first term, ``b = +∞`` the second).

Example:
    >>> import torch
    >>> mean = clipped_normal_mean(torch.tensor([0.0]), torch.tensor([1.0]), 0.0, float("inf"))
    >>> round(float(mean), 4)                 # E[ReLU(z)] for a standard normal: 1/sqrt(2π)
    0.3989
"""

from __future__ import annotations

import math

import torch

__all__ = ["clipped_normal_mean"]


def _cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.erfc(-x / math.sqrt(2.0))


def _pdf(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def clipped_normal_mean(mean: torch.Tensor, std: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``E[clamp(z, low, high)]`` for ``z ~ N(mean, std²)`` elementwise, in float64; ``std = 0`` gives the clamp
    of the mean. ``low``/``high`` may be ``∓inf``."""
    mu, sigma = mean.double(), std.double()
    degenerate = sigma <= 0
    safe = torch.where(degenerate, torch.ones_like(sigma), sigma)
    result = torch.zeros_like(mu)
    cdf_low, pdf_low = torch.zeros_like(mu), torch.zeros_like(mu)
    cdf_high, pdf_high = torch.ones_like(mu), torch.zeros_like(mu)
    if math.isfinite(low):
        alpha = (low - mu) / safe
        cdf_low, pdf_low = _cdf(alpha), _pdf(alpha)
        result = result + low * cdf_low
    if math.isfinite(high):
        beta = (high - mu) / safe
        cdf_high, pdf_high = _cdf(beta), _pdf(beta)
        result = result + high * (1.0 - cdf_high)
    result = result + mu * (cdf_high - cdf_low) + safe * (pdf_low - pdf_high)
    return torch.where(degenerate, torch.clamp(mu, low, high), result)
