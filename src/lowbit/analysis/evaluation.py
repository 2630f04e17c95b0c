"""Measure a model without changing it: top-1 accuracy, latency, and the bytes of its weights on disk.

Example:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> with torch.no_grad():
    ...     _ = model[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
    >>> accuracy(model, torch.tensor([[1.0, 0, 0, 0], [0, 2.0, 0, 0]]), torch.tensor([0, 0]))
    50.0
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

__all__ = ["accuracy", "latency_ms", "fp32_bytes"]


@torch.no_grad()
def accuracy(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> float:
    """Top-1 accuracy in percent over ``inputs`` (evaluated in batches, model in eval mode).

    Raises:
        ValueError: inputs and labels of different lengths, or no samples.
    """
    if len(inputs) != len(labels) or len(labels) == 0:
        raise ValueError(f"accuracy needs as many labels as inputs (> 0), got {len(inputs)} and {len(labels)}")
    model.eval()
    correct = 0
    for i in range(0, len(labels), batch):
        correct += int((model(inputs[i : i + batch]).argmax(dim=1) == labels[i : i + batch]).sum())
    return 100.0 * correct / len(labels)


@torch.no_grad()
def latency_ms(model: nn.Module, example: torch.Tensor, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of ``model(example)`` in milliseconds, after ``warmup`` calls."""
    model.eval()
    for _ in range(warmup):
        model(example)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(example)
        samples.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(samples)


def fp32_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s state dict written as safetensors (the float baseline's size on disk)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        return path.stat().st_size
