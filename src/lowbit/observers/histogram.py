"""Observers that keep a fixed-size signed histogram: percentile, entropy (KL) and MSE-optimal clipping.

Memory is ``2 × bins`` int64 counts per channel however many batches arrive: the range grows by whole
factors and neighbouring bins merge (:mod:`lowbit.functional.histogram`, docs/math.md eq. 10). The clip rules
are pure functions in :mod:`lowbit.functional.calibration`.

Example:
    >>> import torch, lowbit
    >>> torch.manual_seed(0) and None
    >>> obs = PercentileObserver(lowbit.QuantSpec(bits=8), percentile=99.0)
    >>> for _ in range(3):
    ...     obs.update(torch.randn(10_000))
    >>> 2.3 < float(obs._range()[1]) < 2.8   # the 99th percentile of |N(0,1)| is 2.58
    True
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lowbit.functional.calibration import entropy_clip, mse_range, percentile_range
from lowbit.functional.histogram import add_to_histogram, empty_histogram, grow, split_signed
from lowbit.observers.base import Observer
from lowbit.spec import PerChannel, PerTensor, QuantSpec

__all__ = ["PercentileObserver", "EntropyObserver", "MSEObserver"]


class _HistogramObserver(Observer):
    supports = (PerTensor, PerChannel)

    def __init__(self, spec: QuantSpec, bins: int = 2048):
        super().__init__(spec)
        if not isinstance(bins, int) or isinstance(bins, bool) or bins < 8:
            raise ValueError(f"{type(self).__name__}.bins must be an int >= 8, got {bins!r}")
        self.bins = bins
        self.register_buffer("counts", torch.empty(0, 2 * bins, dtype=torch.int64))
        self.register_buffer("width", torch.empty(0, dtype=torch.float64))

    @property
    def pos(self) -> torch.Tensor:
        """``[channels, bins]`` counts of values ``≥ 0`` by magnitude."""
        return split_signed(self.counts)[0]

    @property
    def neg(self) -> torch.Tensor:
        """``[channels, bins]`` counts of values ``< 0`` by magnitude."""
        return split_signed(self.counts)[1]

    def _observe(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None:
        reach = torch.maximum(lo.abs(), hi.abs()).reshape(-1)
        if self.width.numel() == 0:
            self.counts = empty_histogram(reach.numel(), self.bins)
            self.width = torch.zeros_like(reach)
        self.counts, self.width = grow(self.counts, self.width, reach)
        add_to_histogram(self._rows(x), self.width, self.counts)

    def _check_loaded(self) -> None:
        if self.counts.shape[-1] != 2 * self.bins:
            raise ValueError(
                f"{type(self).__name__} has bins={self.bins} but the loaded histogram has "
                f"{self.counts.shape[-1] // 2} bins per sign"
            )

    def _per_channel(self, clip: Callable[[int], tuple[float, float]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply ``clip(c) -> (lo, hi)`` per channel and keep the result inside the observed range."""
        pairs = [clip(c) for c in range(self.width.numel())]
        lo = torch.tensor([p[0] for p in pairs], dtype=torch.float64).reshape(self.min_val.shape)
        hi = torch.tensor([p[1] for p in pairs], dtype=torch.float64).reshape(self.max_val.shape)
        return self._inside_observed(lo, hi)


class PercentileObserver(_HistogramObserver):
    """Clip at a percentile of the data: ``|x|`` for a symmetric spec, both tails for an asymmetric one.

    Args:
        spec: the grid (per tensor or per channel).
        percentile: in (0, 100]; 99.99 keeps all but one value in ten thousand.
        bins: histogram bins per sign.

    Raises:
        ValueError: ``percentile`` out of range, ``bins`` < 8, or a per-group spec.
    """

    def __init__(self, spec: QuantSpec, percentile: float = 99.99, bins: int = 2048):
        super().__init__(spec, bins)
        if not isinstance(percentile, (int, float)) or not 0.0 < percentile <= 100.0:
            raise ValueError(f"PercentileObserver.percentile must be in (0, 100], got {percentile!r}")
        self.percentile = float(percentile)

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        pos, neg = self.pos, self.neg
        return self._per_channel(
            lambda c: percentile_range(pos[c], neg[c], float(self.width[c]), self.percentile, self.spec.symmetric)
        )


class EntropyObserver(_HistogramObserver):
    """TensorRT's entropy calibration: the ``|x|`` clip that minimises ``KL(P‖Q)`` (docs/math.md, eq. 11).

    ``2^(bits−1)`` quantized levels for a signed grid (128 for 8 bits: the magnitudes one sign of the grid holds)
    and ``2^bits`` for an unsigned one, whose codes all cover the magnitudes — as NVIDIA's reference calibrator
    for TensorRT counts them (with 128 levels, LeNet-5's first ReLU output was clipped at a fifth of its range and
    W8A8 lost 2.65 accuracy points instead of 0.17). Candidates start at ``start_bin`` (128) and run to all ``bins``. Per tensor.

    Raises:
        ValueError: a per-channel/group spec, or more levels than bins.

    Example:
        >>> import torch, lowbit
        >>> torch.manual_seed(0) and None
        >>> obs = EntropyObserver(lowbit.QuantSpec(bits=8))
        >>> obs.update(torch.randn(100_000))
        >>> 2.5 < float(obs._range()[1]) < 4.5   # clips the Gaussian tail well inside max|x| ≈ 4.3
        True
    """

    supports = (PerTensor,)

    def __init__(self, spec: QuantSpec, bins: int = 2048, start_bin: int = 128):
        super().__init__(spec, bins)
        self.levels = 2 ** (spec.bits - 1) if spec.signed else 2**spec.bits
        if self.levels > bins:
            raise ValueError(
                f"EntropyObserver needs bins >= {self.levels} quantized levels for bits={spec.bits}, got bins={bins}"
            )
        if not isinstance(start_bin, int) or not 1 <= start_bin <= bins:
            raise ValueError(f"EntropyObserver.start_bin must be an int in 1..{bins}, got {start_bin!r}")
        self.start_bin = start_bin

    def threshold(self) -> float:
        """The chosen clip of ``|x|`` (upper edge of the last kept bin)."""
        return entropy_clip((self.pos + self.neg)[0], float(self.width[0]), self.levels, self.start_bin)

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.threshold()
        return self._per_channel(lambda c: (-t, t))


class MSEObserver(_HistogramObserver):
    """Clip that minimises the quantization MSE of the observed histogram, by grid search.

    Candidates shrink the observed range by ``k / candidates`` for ``k = 1 … candidates`` (both ends for an
    asymmetric spec, ``max|x|`` for a symmetric one); each is scored through the real quantizer
    (:func:`~lowbit.functional.calibration.mse_range`).

    Raises:
        ValueError: ``candidates`` < 1, or a per-group spec.
    """

    def __init__(self, spec: QuantSpec, bins: int = 2048, candidates: int = 100):
        super().__init__(spec, bins)
        if not isinstance(candidates, int) or isinstance(candidates, bool) or candidates < 1:
            raise ValueError(f"MSEObserver.candidates must be a positive int, got {candidates!r}")
        self.candidates = candidates

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        pos, neg = self.pos, self.neg
        mins, maxs = self.min_val.reshape(-1), self.max_val.reshape(-1)
        return self._per_channel(
            lambda c: mse_range(pos[c], neg[c], float(self.width[c]), float(mins[c]), float(maxs[c]), self.spec,
                                self.candidates)
        )
