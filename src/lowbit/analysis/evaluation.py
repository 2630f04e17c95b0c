"""Measure a model without changing it: top-1 accuracy, embedding agreement, latency, and bytes on disk.

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

__all__ = ["accuracy", "latency_ms", "fp32_bytes", "mean_cosine", "similarity_spearman", "call", "run_with_input_hooks"]

# A model input as lowbit's flows accept it: one tensor, a tuple of positional inputs, or a dict of keyword inputs.
Batch = torch.Tensor | tuple | dict


def call(model: nn.Module, batch: Batch):
    """``model(batch)``, ``model(*batch)`` or ``model(**batch)`` according to the batch's form.

    Raises:
        ValueError: a batch of another kind, named.
    """
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    raise ValueError(f"a batch must be a tensor, a tuple of inputs or a dict, got {type(batch).__name__}")


def run_with_input_hooks(model: nn.Module, batches, hooks: dict[nn.Module, object]) -> None:
    """Run every batch through ``model`` with ``hooks[m](m, args)`` seeing each input of module ``m``; the hooks
    are removed afterwards, also when a batch fails."""
    handles = [m.register_forward_pre_hook(fn) for m, fn in hooks.items()]
    try:
        for batch in batches:
            call(model, batch)
    finally:
        for h in handles:
            h.remove()


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
def latency_ms(model: nn.Module, example: Batch, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of one call on ``example`` (a tensor, tuple or dict batch) in milliseconds, after warm-up."""
    model.eval()
    for _ in range(warmup):
        call(model, example)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        call(model, example)
        samples.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(samples)


def fp32_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s state dict written as safetensors (the float baseline's size on disk)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        return path.stat().st_size


def mean_cosine(reference: torch.Tensor, approximation: torch.Tensor) -> float:
    """Mean over rows of the cosine similarity between two ``[N, D]`` embedding matrices (float64).

    Example:
        >>> mean_cosine(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
        0.853553...
    """
    if reference.shape != approximation.shape or reference.dim() != 2:
        raise ValueError(f"mean_cosine needs two [N, D] matrices of one shape, got {tuple(reference.shape)} "
                         f"and {tuple(approximation.shape)}")
    a, b = reference.detach().double(), approximation.detach().double()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=1).mean())


def similarity_spearman(embeddings: torch.Tensor, human: torch.Tensor) -> float:
    """Spearman correlation between the pairwise cosine similarities of ``embeddings`` ``[N, D]`` and a human
    ``[N, N]`` similarity matrix, over the N·(N−1)/2 distinct pairs (the diagonal says nothing).

    Example:
        >>> e = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
        >>> similarity_spearman(e, torch.tensor([[1.0, 0.8, 0.1], [0.8, 1.0, 0.3], [0.1, 0.3, 1.0]]))
        1.0
    """
    from lowbit.analysis.metrics import spearman

    n = len(embeddings)
    if human.shape != (n, n):
        raise ValueError(f"human similarities must be [{n}, {n}] for {n} embeddings, got {tuple(human.shape)}")
    unit = torch.nn.functional.normalize(embeddings.detach().double(), dim=1)
    rows, cols = torch.triu_indices(n, n, offset=1)
    return spearman((unit @ unit.T)[rows, cols], human.double()[rows, cols])
