"""Model surgery on float models: BatchNorm folding, cross-layer equalization, high-bias absorption, bias
correction, outlier channel splitting and SmoothQuant. (Learned weight rounding changes a quantized model's
codes, not the float model: it lives in :mod:`lowbit.flows.rounding`.)

Each transform is a verb the user calls; each returns the changed traced model and, except ``fold_bn``, a small
report of what it changed.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    >>> equalized, report = equalize(model)
    >>> report.pairs, report.converged
    ([('0', '3')], True)
"""

from lowbit.transforms.absorb_bias import AbsorbReport, absorb_bias
from lowbit.transforms.correct_bias import BiasCorrection, BiasCorrectionReport, correct_bias
from lowbit.transforms.equalize import EqualizeReport, equalize
from lowbit.transforms.fold_bn import fold_bn, fold_bn_into, modules_called_once, replace_module
from lowbit.transforms.pairs import Pair, find_pairs
from lowbit.transforms.smooth_quant import SmoothReport, smooth_quant
from lowbit.transforms.split_outliers import SplitReport, split_outliers

__all__ = ["fold_bn", "fold_bn_into", "modules_called_once", "replace_module", "equalize", "EqualizeReport",
           "absorb_bias", "AbsorbReport", "correct_bias", "BiasCorrection", "BiasCorrectionReport", "find_pairs",
           "Pair", "split_outliers", "SplitReport", "smooth_quant", "SmoothReport"]
