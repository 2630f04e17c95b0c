"""ACIQ: an analytic clip from running moments, assuming a Laplace or Gaussian distribution.

Banner, Nahshan and Soudry (2019), "Post training 4-bit quantization of convolutional networks for
rapid-deployment": the clip ``α`` minimising clipping + rounding noise is a fixed multiple of the Laplace
scale ``b`` or the Gaussian ``σ`` for each bit width (docs/math.md, eq. 12). Only sums are kept, so memory
is a few numbers per channel.

Example:
    >>> import torch, lowbit
    >>> torch.manual_seed(0) and None
    >>> obs = ACIQObserver(lowbit.QuantSpec(bits=4), prior=Prior.GAUSSIAN)
    >>> obs.update(torch.randn(100_000))
    >>> 2.5 < float(obs._range()[1]) < 2.62   # 2.559·σ for N(0, 1)
    True
"""

from __future__ import annotations

import torch

from lowbit.functional.calibration import Prior, aciq_range
from lowbit.functional.histogram import row_moments
from lowbit.observers.base import Observer
from lowbit.spec import PerChannel, PerTensor, QuantSpec

__all__ = ["ACIQObserver", "Prior"]


class ACIQObserver(Observer):
    """Clip at ``μ ± α(bits)·b`` (Laplace) or ``μ ± α(bits)·σ`` (Gaussian), inside the observed range.

    ``μ``, ``σ`` and ``b = σ/√2`` come from pooled float64 sums, so the clip is the same however the data are
    split into batches (:func:`~lowbit.functional.calibration.aciq_range`).

    Args:
        spec: the grid (per tensor or per channel).
        prior: :class:`Prior`.

    Raises:
        ValueError: ``prior`` not a :class:`Prior`, or a per-group spec.
    """

    supports = (PerTensor, PerChannel)

    def __init__(self, spec: QuantSpec, prior: Prior = Prior.LAPLACE):
        super().__init__(spec)
        if not isinstance(prior, Prior):
            raise ValueError(f"ACIQObserver.prior must be a Prior, got {prior!r}")
        self.prior = prior
        for name in ("count", "total", "total_sq"):
            self.register_buffer(name, torch.empty(0, dtype=torch.float64))

    def _observe(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None:
        rows = self._rows(x)
        total, total_sq = row_moments(rows)
        n = torch.full_like(total, float(rows.shape[1]))
        if self.count.numel() == 0:
            self.count, self.total, self.total_sq = n, total, total_sq
        else:
            self.count += n
            self.total += total
            self.total_sq += total_sq

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = aciq_range(self.count, self.total, self.total_sq, self.prior, self.spec.bits)
        return self._inside_observed(lo.reshape(self.min_val.shape), hi.reshape(self.max_val.shape))
