"""Read models and tensors, never change them: error metrics and quantization-error tables.

Example:
    >>> import torch, lowbit
    >>> lowbit.analysis.cosine(torch.tensor([1.0, 1.0]), torch.tensor([2.0, 2.0]))
    1.0
"""

from lowbit.analysis.evaluation import accuracy, fp32_bytes, latency_ms, mean_cosine, similarity_spearman
from lowbit.analysis.metrics import cosine, max_abs_error, mse, spearman, sqnr
from lowbit.analysis.weight_error import WeightSQNR, granularity_label, weight_sqnr_table

__all__ = [
    "sqnr",
    "mse",
    "cosine",
    "max_abs_error",
    "spearman",
    "WeightSQNR",
    "weight_sqnr_table",
    "granularity_label",
    "accuracy",
    "latency_ms",
    "fp32_bytes",
    "mean_cosine",
    "similarity_spearman",
]
