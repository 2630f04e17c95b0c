"""Range by extremes: the union of all batches' ranges, or an average of per-batch ranges.

Example:
    >>> import torch, lowbit
    >>> obs = MovingAverageMinMaxObserver(lowbit.QuantSpec(symmetric=False), averaging=Averaging.MEAN)
    >>> obs.update(torch.tensor([-1.0, 1.0])); obs.update(torch.tensor([-3.0, 5.0]))
    >>> obs._range()
    (tensor(-2., dtype=torch.float64), tensor(3., dtype=torch.float64))
"""

from __future__ import annotations

import enum

import torch

from lowbit.observers.base import Observer
from lowbit.spec import QuantSpec

__all__ = ["MinMaxObserver", "MovingAverageMinMaxObserver", "Averaging"]


class MinMaxObserver(Observer):
    """``[min, max]`` over every value seen: the union of all batches' ranges (per granularity).

    Example:
        >>> import torch, lowbit
        >>> obs = MinMaxObserver(lowbit.QuantSpec(bits=8, granularity=lowbit.PerChannel(0)))
        >>> obs.update(torch.tensor([[1.0, -2.0], [0.5, 0.25]]))
        >>> obs.calculate_qparams().scale
        tensor([0.0157, 0.0039])
    """

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.min_val, self.max_val


class Averaging(enum.Enum):
    """How :class:`MovingAverageMinMaxObserver` combines per-batch ranges.

    ``EMA``: ``r ← r + momentum · (r_batch − r)``, starting from the first batch. ``MEAN``: the plain mean of
    every batch's range.
    """

    EMA = "ema"
    MEAN = "mean"


class MovingAverageMinMaxObserver(Observer):
    """An average of per-batch ``[min, max]``: robust to a rare outlier batch, unlike the union.

    Args:
        spec: the grid.
        momentum: EMA weight of the newest batch, in (0, 1].
        averaging: :class:`Averaging`.

    Raises:
        ValueError: ``momentum`` outside (0, 1] or ``averaging`` not an :class:`Averaging`.

    Example:
        >>> import torch, lowbit
        >>> obs = MovingAverageMinMaxObserver(lowbit.QuantSpec(symmetric=False), momentum=0.5)
        >>> for hi in (1.0, 3.0):
        ...     obs.update(torch.tensor([0.0, hi]))
        >>> float(obs._range()[1])
        2.0
    """

    def __init__(self, spec: QuantSpec, momentum: float = 0.01, averaging: Averaging = Averaging.EMA):
        super().__init__(spec)
        if not isinstance(momentum, (int, float)) or not 0.0 < momentum <= 1.0:
            raise ValueError(f"MovingAverageMinMaxObserver.momentum must be in (0, 1], got {momentum!r}")
        if not isinstance(averaging, Averaging):
            raise ValueError(f"MovingAverageMinMaxObserver.averaging must be an Averaging, got {averaging!r}")
        self.momentum = float(momentum)
        self.averaging = averaging
        self.register_buffer("avg_min", torch.empty(0, dtype=torch.float64))
        self.register_buffer("avg_max", torch.empty(0, dtype=torch.float64))

    def _observe(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None:
        lo, hi = lo.to(torch.float64), hi.to(torch.float64)
        seen = int(self.batches)
        if seen == 0:
            self.avg_min, self.avg_max = lo.clone(), hi.clone()
            return
        weight = self.momentum if self.averaging is Averaging.EMA else 1.0 / (seen + 1)
        self.avg_min += weight * (lo - self.avg_min)
        self.avg_max += weight * (hi - self.avg_max)

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.avg_min, self.avg_max
