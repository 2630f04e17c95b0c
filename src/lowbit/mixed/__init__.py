"""Mixed precision: per-layer sensitivity and bit allocation under a budget (issue #9).

Three steps, also chained by :func:`choose_bits`: measure how much each layer suffers at each bit width
(:func:`sensitivity`: SQNR, KL divergence, Hessian trace or entropy), price each choice (:mod:`lowbit.mixed.budget`:
model bytes or BOPs), and pick the bits that minimise the total loss within the budget (:func:`allocate`, exact).
The result is a :class:`lowbit.Recipe` with per-layer overrides that :func:`lowbit.quantize` and the QAT flow use.

Example:
    >>> import torch
    >>> from torch import nn
    >>> torch.manual_seed(0)
    <torch._C.Generator object at ...>
    >>> model = nn.Sequential(nn.Linear(16, 256), nn.ReLU(), nn.Linear(256, 4)).eval()
    >>> choose_bits(model, "kl", [torch.randn(64, 16)], bits=(2, 4, 8), budget_avg_bits=3.0).allocation.bits
    {'0': 2, '2': 4}
"""

from lowbit.mixed.allocate import Allocation, allocate, budget_sweep, pareto_frontier
from lowbit.mixed.budget import (bops_cost, fixed_bytes, layer_macs, mixed_recipe, model_bytes, size_budget,
                                 size_cost)
from lowbit.mixed.hessian import hutchinson_traces
from lowbit.mixed.search import MixedPrecision, average_bits, choose_bits
from lowbit.mixed.sensitivity import MEASURES, SensitivityTable, Subject, prepare_subject, sensitivity

__all__ = ["Allocation", "allocate", "budget_sweep", "pareto_frontier", "size_cost", "bops_cost", "layer_macs", "fixed_bytes",
           "model_bytes", "size_budget", "mixed_recipe", "hutchinson_traces", "MixedPrecision", "choose_bits",
           "average_bits", "MEASURES", "SensitivityTable", "Subject", "prepare_subject", "sensitivity"]
