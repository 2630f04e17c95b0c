"""Clip-range rules used by the observers, as pure functions of histograms and moments.

- :func:`entropy_threshold`: TensorRT's KL-divergence calibration (docs/math.md, eq. 11).
- :func:`histogram_quantile`: a quantile read off a signed histogram with linear interpolation in a bin.
- :func:`aciq_alpha`: the ACIQ clip (Banner et al., 2019) minimising the analytic clipping + rounding MSE
  for a Laplace or Gaussian prior (eq. 12).
- :func:`histogram_mse`: quantization MSE of a histogram for many candidate qparams at once.

Each observer's clip is one function here: :func:`percentile_range`, :func:`entropy_clip`, :func:`mse_range`
and :func:`aciq_range`; observers only accumulate the statistics they read.

Example:
    >>> round(aciq_alpha(Prior.LAPLACE, 4), 2)   # the paper's table: 5.03·b at 4 bits
    5.03
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math

import torch

from lowbit.functional.affine import choose_qparams, dequantize, quantize
from lowbit.spec import PerChannel, QParams, QuantSpec, Rounding

__all__ = [
    "Prior",
    "entropy_threshold",
    "entropy_clip",
    "histogram_quantile",
    "percentile_range",
    "aciq_alpha",
    "aciq_range",
    "histogram_mse",
    "mse_range",
    "mse_range_rows",
]


class Prior(enum.Enum):
    """The distribution ACIQ assumes for the data."""

    LAPLACE = "laplace"
    GAUSSIAN = "gaussian"


def entropy_threshold(counts: torch.Tensor, levels: int = 128, start: int = 128, zero_bin: bool = False) -> int:
    """The bin count ``i`` whose clip minimises ``KL(P‖Q)`` (TensorRT entropy calibration, eq. 11).

    For each candidate ``i`` in ``start … len(counts)``: ``P = counts[:i]`` with every count beyond folded into
    ``P[i−1]``; ``Q`` merges ``counts[:i]`` into ``levels`` groups (bin ``j`` joins group ``⌊j·levels/i⌋``),
    spreads each group's total evenly over its non-empty bins and is zero on empty ones. Both are normalised;
    a candidate where ``Q`` is zero under non-zero ``P`` has infinite divergence. Ties keep the smallest ``i``.
    The clip is the upper edge of bin ``i−1``: ``i · bin_width``.

    Unless ``zero_bin`` is True, the first bin's count is first replaced by the second's, as NVIDIA's reference
    calibrator for TensorRT does: the spike of exact zeros after a ReLU (often half of all values) would
    otherwise dominate both distributions and drive the threshold far too low.

    Args:
        counts: 1-D histogram of ``|x|`` (float or int).
        levels: quantized bins, ``2^(bits−1)`` for a signed grid.
        start: the first candidate (128 in TensorRT); raised to ``levels`` if smaller.
        zero_bin: keep the first bin's own count (the plain algorithm of the 2017 slides).

    Returns:
        The chosen ``i`` (number of bins kept).

    Raises:
        ValueError: an empty histogram or fewer bins than ``levels``.

    Example:
        >>> entropy_threshold(torch.ones(256), levels=128, start=128)   # uniform data: keep everything
        256
    """
    hist = counts.to(torch.float64).reshape(-1).clone()
    n = hist.numel()
    if n < levels or levels < 1:
        raise ValueError(f"entropy_threshold needs at least levels={levels} bins, got {n}")
    if hist.sum() <= 0:
        raise ValueError("entropy_threshold got an empty histogram")
    if not zero_bin and n > 1:
        hist[0] = hist[1]
    if hist.sum() <= 0:
        return n
    start = max(start, levels)
    if start > n:
        return n
    best_i, best_kl = n, math.inf
    # All candidates of a chunk at once, one row each (rows are the loop "for i in start…n" unrolled).
    for first in range(start, n + 1, _ENTROPY_CHUNK):
        i = torch.arange(first, min(n, first + _ENTROPY_CHUNK - 1) + 1)
        kl = _entropy_divergences(hist, i, levels)
        k = int(torch.argmin(kl))  # first minimum: ties keep the smallest i
        if float(kl[k]) < best_kl:
            best_i, best_kl = int(i[k]), float(kl[k])
    return best_i


_ENTROPY_CHUNK = 256


def _entropy_divergences(hist: torch.Tensor, i: torch.Tensor, levels: int) -> torch.Tensor:
    """``KL(P_i‖Q_i)`` for every candidate in ``i`` (``inf`` where ``Q`` is zero under ``P``)."""
    n = hist.numel()
    j = torch.arange(n)
    inside = j.unsqueeze(0) < i.unsqueeze(1)  # [candidates, n]
    counts = torch.where(inside, hist, 0.0)
    tail = torch.flip(torch.cumsum(torch.flip(hist, [0]), 0), [0])  # tail[b] = sum(hist[b:])
    p = counts.clone()
    last = (i - 1).unsqueeze(1)
    outliers = torch.where(i < n, tail[i.clamp(max=n - 1)], 0.0).unsqueeze(1)
    p.scatter_add_(1, last, outliers)
    group = torch.where(inside, j.unsqueeze(0) * levels // i.unsqueeze(1), 0)
    nonzero = (counts > 0).to(torch.float64)
    mass = torch.zeros(len(i), levels, dtype=torch.float64).scatter_add_(1, group, counts)
    filled = torch.zeros(len(i), levels, dtype=torch.float64).scatter_add_(1, group, nonzero)
    q = torch.where(nonzero > 0, mass.gather(1, group) / filled.gather(1, group).clamp(min=1), 0.0)
    p_n = p / p.sum(dim=1, keepdim=True)
    q_n = q / q.sum(dim=1, keepdim=True)
    support = p_n > 0
    ratio = torch.where(support, p_n / torch.where(support, q_n, 1.0), 1.0)
    kl = torch.where(support, p_n * torch.log(ratio), 0.0).sum(dim=1)
    return torch.where((support & (q_n == 0)).any(dim=1), math.inf, kl)


def histogram_quantile(pos: torch.Tensor, neg: torch.Tensor, width: float, q: float) -> float:
    """The ``q``-quantile (``0 ≤ q ≤ 1``) of the data a signed histogram counted over ``[−width, width]``.

    Bins are ordered from ``−width`` to ``width``; within the bin where the cumulative count crosses
    ``q · total`` the value is interpolated linearly.

    Example:
        >>> histogram_quantile(torch.tensor([1, 1, 1, 1]), torch.tensor([0, 0, 0, 0]), 1.0, 0.5)
        0.5
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile q must be in [0, 1], got {q!r}")
    bins = pos.numel()
    counts = torch.cat([torch.flip(neg.reshape(-1), [0]), pos.reshape(-1)]).to(torch.float64)
    total = float(counts.sum())
    if total <= 0:
        raise ValueError("histogram_quantile got an empty histogram")
    cdf = torch.cumsum(counts, 0)
    target = q * total
    j = int(torch.searchsorted(cdf, torch.tensor([target], dtype=torch.float64))[0].clamp(max=2 * bins - 1))
    before = float(cdf[j - 1]) if j > 0 else 0.0
    inside = (target - before) / float(counts[j]) if counts[j] > 0 else 0.0
    bin_width = width / bins
    return -width + (j + min(max(inside, 0.0), 1.0)) * bin_width


def _aciq_mse(alpha: float, prior: Prior, bits: int) -> float:
    rounding = alpha**2 / (3.0 * 4.0**bits)  # uniform noise of 2^bits levels over [−α, α]
    if prior is Prior.LAPLACE:  # b = 1
        return 2.0 * math.exp(-alpha) + rounding
    # σ = 1: clipping noise of a standard normal beyond ±α
    clip = (alpha**2 + 1.0) * math.erfc(alpha / math.sqrt(2.0)) - math.sqrt(2.0 / math.pi) * alpha * math.exp(
        -(alpha**2) / 2.0
    )
    return clip + rounding


@functools.lru_cache(maxsize=64)
def aciq_alpha(prior: Prior, bits: int) -> float:
    """ACIQ's optimal clip in units of ``b`` (Laplace) or ``σ`` (Gaussian) for ``bits`` (eq. 12).

    Minimises ``E(α) = clipping noise + α²/(3·4^bits)`` by golden-section search on ``[0.01, 40]`` (the
    function is unimodal there). Published values: Laplace 2.83, 3.89, 5.03, 6.2, 7.41, 8.64, 9.89 and
    Gaussian 1.71, 2.15, 2.55, 2.94, 3.29, 3.61, 3.92 for 2…8 bits.

    Example:
        >>> round(aciq_alpha(Prior.GAUSSIAN, 8), 2)
        3.92
    """
    if not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ValueError(f"aciq_alpha bits must be an int in 1..16, got {bits!r}")
    lo, hi = 0.01, 40.0
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    for _ in range(200):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if _aciq_mse(a, prior, bits) < _aciq_mse(b, prior, bits):
            hi = b
        else:
            lo = a
    return (lo + hi) / 2.0


def _per_row(spec: QuantSpec) -> QuantSpec:
    """``spec`` with one qparam set per row and round-to-nearest, for scoring many candidate ranges at once."""
    return dataclasses.replace(spec, granularity=PerChannel(axis=0), rounding=Rounding.NEAREST)


def histogram_mse(pos: torch.Tensor, neg: torch.Tensor, width: float, lo: torch.Tensor, hi: torch.Tensor,
                  spec: QuantSpec) -> torch.Tensor:
    """Quantization MSE of a signed histogram for each candidate range ``[lo[k], hi[k]]``.

    Each bin's count sits at the bin's centre; every candidate's qparams come from
    :func:`~lowbit.functional.affine.choose_qparams` and the values go through the real quantizer, so the
    error is exactly what ``spec`` would produce on those centres (rounding to nearest even when ``spec``
    rounds stochastically, so the search is deterministic).

    Returns:
        float64 tensor of MSEs, one per candidate.
    """
    bins = pos.numel()
    centres = (torch.arange(bins, dtype=torch.float64) + 0.5) * (width / bins)
    values = torch.cat([-torch.flip(centres, [0]), centres]).to(torch.float32)
    weights = torch.cat([torch.flip(neg.reshape(-1), [0]), pos.reshape(-1)]).to(torch.float64)
    keep = weights > 0
    values, weights = values[keep], weights[keep]
    channel_spec = _per_row(spec)
    qp: QParams = choose_qparams(lo, hi, channel_spec)
    grid = values.expand(lo.numel(), -1)
    error = dequantize(quantize(grid, qp), qp).to(torch.float64) - grid.to(torch.float64)
    return (error.square() * weights).sum(dim=1) / weights.sum()


def entropy_clip(magnitudes: torch.Tensor, width: float, levels: int, start: int = 128) -> float:
    """The ``|x|`` clip of :func:`entropy_threshold`: ``i · width / bins`` (0 for an all-zero histogram).

    Example:
        >>> entropy_clip(torch.ones(256), 2.0, levels=128)
        2.0
    """
    if width == 0:
        return 0.0
    return entropy_threshold(magnitudes, levels, start) * width / magnitudes.numel()


def percentile_range(pos: torch.Tensor, neg: torch.Tensor, width: float, percentile: float,
                     symmetric: bool) -> tuple[float, float]:
    """Clip range at ``percentile`` (0–100]: of ``|x|`` when ``symmetric``, else the two tails separately.

    Example:
        >>> percentile_range(torch.tensor([1, 1, 1, 1]), torch.tensor([4, 0, 0, 0]), 1.0, 100.0, True)
        (-1.0, 1.0)
    """
    if width == 0:
        return 0.0, 0.0
    q = percentile / 100.0
    if symmetric:
        t = histogram_quantile(pos + neg, torch.zeros_like(pos), width, q)
        return -t, t
    return histogram_quantile(pos, neg, width, 1.0 - q), histogram_quantile(pos, neg, width, q)


def mse_range(pos: torch.Tensor, neg: torch.Tensor, width: float, lo: float, hi: float, spec: QuantSpec,
              candidates: int = 100) -> tuple[float, float]:
    """The range among ``k/candidates · [lo, hi]``, ``k = 1 … candidates``, with the least :func:`histogram_mse`.

    A symmetric spec shrinks ``±max(|lo|, |hi|)``; an asymmetric one shrinks ``[min(lo, 0), max(hi, 0)]``.
    Ties keep the narrowest range.
    """
    if lo == hi == 0.0:
        return 0.0, 0.0
    shrink = torch.arange(1, candidates + 1, dtype=torch.float64) / candidates
    if spec.symmetric:
        reach = max(abs(lo), abs(hi))
        lo_k, hi_k = -reach * shrink, reach * shrink
    else:
        lo_k, hi_k = min(lo, 0.0) * shrink, max(hi, 0.0) * shrink
    best = int(torch.argmin(histogram_mse(pos, neg, width, lo_k, hi_k, spec)))
    return float(lo_k[best]), float(hi_k[best])


def aciq_range(count: torch.Tensor, total: torch.Tensor, total_sq: torch.Tensor, prior: Prior,
               bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``μ ± α(bits)·b`` (Laplace) or ``μ ± α(bits)·σ`` (Gaussian) from pooled sums (eq. 12).

    ``μ = Σx/n`` and ``σ² = Σx²/n − μ²`` come from float64 sums, so the result does not depend on how the data
    were split into batches; the Laplace scale is its moment estimate ``b = σ/√2`` (a Laplace variance is
    ``2b²``) for the same reason.

    Example:
        >>> lo, hi = aciq_range(torch.tensor([4.0]), torch.tensor([0.0]), torch.tensor([8.0]), Prior.GAUSSIAN, 8)
        >>> round(float(hi), 3)   # σ = √2, α = 3.924·σ
        5.549
    """
    mean = total / count
    sigma = (total_sq / count - mean.square()).clamp(min=0).sqrt()
    spread = sigma / math.sqrt(2.0) if prior is Prior.LAPLACE else sigma
    alpha = aciq_alpha(prior, bits) * spread
    return mean - alpha, mean + alpha


def mse_range_rows(rows: torch.Tensor, spec: QuantSpec, candidates: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``[R, n]`` data, the range ``k/candidates · [lo, hi]`` with the least exact quantization MSE.

    The data-exact counterpart of :func:`mse_range` for tensors small enough to keep (weights): every candidate
    is scored on the real values through the real quantizer, all rows at once.

    Example:
        >>> w = torch.tensor([[1.0] + [0.3] * 31])    # one outlier: clipping it lowers the total error
        >>> lo, hi = mse_range_rows(w, QuantSpec(bits=2), candidates=10)
        >>> float(hi[0]) < 1.0
        True
    """
    data = rows.detach().to(torch.float32)
    lo, hi = data.amin(dim=1).double(), data.amax(dim=1).double()
    if spec.symmetric:
        reach = torch.maximum(lo.abs(), hi.abs())
        lo, hi = -reach, reach
    else:
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    channel_spec = _per_row(spec)
    best_err = torch.full_like(lo, math.inf)
    best_lo, best_hi = lo.clone(), hi.clone()
    for k in range(1, candidates + 1):
        shrink = k / candidates
        qp = choose_qparams(lo * shrink, hi * shrink, channel_spec)
        err = (dequantize(quantize(data, qp), qp) - data).double().square().sum(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_lo = torch.where(better, lo * shrink, best_lo)
        best_hi = torch.where(better, hi * shrink, best_hi)
    return best_lo, best_hi
