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

from lowbit.functional.calibration import Prior, aciq_alpha
from lowbit.functional.histogram import row_moments
from lowbit.observers.base import Observer
from lowbit.spec import PerChannel, PerTensor, QuantSpec

__all__ = ["ACIQObserver", "Prior"]


class ACIQObserver(Observer):
    """Clip at ``μ ± α(bits)·b`` (Laplace) or ``μ ± α(bits)·σ`` (Gaussian), inside the observed range.

    ``b`` is the mean absolute deviation from each batch's mean (pooled over batches); ``σ`` and ``μ`` come
    from pooled float64 sums, so they are exact whatever the batch sizes.

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
        for name in ("count", "total", "total_sq", "total_absdev"):
            self.register_buffer(name, torch.empty(0, dtype=torch.float64))

    def _observe(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None:
        rows = self._rows(x)
        total, total_sq, absdev = row_moments(rows)
        n = torch.full_like(total, float(rows.shape[1]))
        if self.count.numel() == 0:
            self.count, self.total, self.total_sq, self.total_absdev = n, total, total_sq, absdev
        else:
            self.count += n
            self.total += total
            self.total_sq += total_sq
            self.total_absdev += absdev

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.total / self.count
        if self.prior is Prior.LAPLACE:
            spread = self.total_absdev / self.count
        else:
            spread = (self.total_sq / self.count - mean.square()).clamp(min=0).sqrt()
        alpha = aciq_alpha(self.prior, self.spec.bits) * spread
        shape = self.min_val.shape
        lo = torch.maximum((mean - alpha).reshape(shape), self.min_val.double())
        hi = torch.minimum((mean + alpha).reshape(shape), self.max_val.double())
        return lo, torch.maximum(hi, lo)
