"""Zero-shot calibration data (ZeroQ, Cai et al. 2020; docs/math.md eq. T5): inputs distilled from the model.

A trained network's BatchNorm layers remember the mean and variance of what they saw. Starting from random
noise, ZeroQ optimises the inputs themselves so that every BN layer's batch statistics match its running ones:

    L(x) = Σ_BN ‖μ_batch(x) − μ_running‖₂ + ‖σ_batch(x) − σ_running‖₂

The result calibrates activation ranges without touching any real sample.

Example:
    >>> import torch
    >>> from torch import nn
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    >>> _ = model[1].running_mean.fill_(0.5)
    >>> batches = zero_shot_data(model, 8, (1, 12, 12), steps=200, batch_size=8, progress=False)
    >>> [tuple(b.shape) for b in batches]
    [(8, 1, 12, 12)]
    >>> noise = torch.randn(8, 1, 12, 12)
    >>> with torch.no_grad():                       # the BN-statistics mismatch, before and after distilling
    ...     before, after = _statistics_loss(model, noise), _statistics_loss(model, batches[0])
    >>> bool(after < before / 3)
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lowbit.flows.ptq import progress_bar

__all__ = ["zero_shot_data"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _statistics_loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    terms: list[torch.Tensor] = []

    def hook(bn: nn.Module, args: tuple) -> None:
        h = args[0]
        dims = [0] + list(range(2, h.dim()))
        mean, var = h.mean(dims), h.var(dims, unbiased=False)
        terms.append(torch.linalg.vector_norm(mean - bn.running_mean)
                     + torch.linalg.vector_norm(torch.sqrt(var + bn.eps) - torch.sqrt(bn.running_var + bn.eps)))

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, _BN)]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(terms).sum()


def zero_shot_data(model: nn.Module, n: int, input_shape: Sequence[int], *, steps: int = 500, batch_size: int = 32,
                   lr: float = 0.2, seed: int = 0, progress: bool = True) -> list[torch.Tensor]:
    """``n`` distilled inputs of shape ``input_shape`` (no batch axis), in batches of ``batch_size``.

    Each batch starts from N(0, 1) noise (seeded) and takes ``steps`` Adam steps on the BN-statistics loss; the
    model's parameters are not changed, and it is left in the mode it was in.

    Raises:
        ValueError: ``model`` has no BatchNorm layer with running statistics, or ``n``/``steps``/``batch_size``
            is not positive.
    """
    for field_name, value in (("n", n), ("steps", steps), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"zero_shot_data: {field_name} must be >= 1, got {value}")
    if not any(isinstance(m, _BN) and m.running_mean is not None for m in model.modules()):
        raise ValueError("zero_shot_data needs a model with BatchNorm running statistics (fold_bn removes them: "
                         "distil before folding)")
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    sizes = [min(batch_size, n - start) for start in range(0, n, batch_size)]
    batches: list[torch.Tensor] = []
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    schedule = [(size, step) for size in sizes for step in range(steps)]  # one entry per Adam step, for the bar
    try:
        for size, step in progress_bar(schedule, progress, "distilling zero-shot data"):
            if step == 0:  # a new batch starts from seeded noise
                x = torch.randn(size, *input_shape, generator=generator).requires_grad_(True)
                optimizer = torch.optim.Adam([x], lr=lr)
            optimizer.zero_grad()
            _statistics_loss(model, x).backward()
            optimizer.step()
            if step == steps - 1:
                batches.append(x.detach())
    finally:
        for p, flag in zip(model.parameters(), requires):
            p.requires_grad_(flag)
        model.train(was_training)
    return batches

