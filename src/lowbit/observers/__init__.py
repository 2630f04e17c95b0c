"""Range estimation for calibration: each observer accumulates bounded statistics and returns QParams.

========================================  =================================================  ===========
observer                                  range rule                                          granularity
========================================  =================================================  ===========
:class:`MinMaxObserver`                   union of all batches' ranges                       all
:class:`MovingAverageMinMaxObserver`      EMA or mean of per-batch ranges                    all
:class:`PercentileObserver`               percentile of a growing histogram                  tensor, channel
:class:`EntropyObserver`                  TensorRT KL-divergence threshold                   tensor
:class:`MSEObserver`                      clip minimising histogram quantization MSE         tensor, channel
:class:`ACIQObserver`                     analytic Laplace/Gaussian clip from moments        tensor, channel
========================================  =================================================  ===========

Example:
    >>> import torch, lowbit
    >>> obs = lowbit.observers.MinMaxObserver(lowbit.QuantSpec(bits=8, signed=False, symmetric=False))
    >>> obs.update(torch.tensor([-1.0, 2.0]))
    >>> int(obs.calculate_qparams().zero_point)
    85
"""

from lowbit.observers.aciq import ACIQObserver, Prior
from lowbit.observers.base import Observer
from lowbit.observers.histogram import EntropyObserver, MSEObserver, PercentileObserver
from lowbit.observers.minmax import Averaging, MinMaxObserver, MovingAverageMinMaxObserver

__all__ = [
    "Observer",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "Averaging",
    "PercentileObserver",
    "EntropyObserver",
    "MSEObserver",
    "ACIQObserver",
    "Prior",
]
