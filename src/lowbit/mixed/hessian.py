"""Hessian traces of the loss with respect to each layer's weight, by Hutchinson's estimator (HAWQ-V2).

For a symmetric ``H`` and a random vector ``v`` with independent ±1 entries (Rademacher), ``E[vᵀHv] = Tr(H)``:
the off-diagonal terms vanish because ``E[vᵢvⱼ] = 0`` for ``i ≠ j`` and ``vᵢ² = 1``. ``Hv`` costs one extra
backward pass through the gradient (Pearlmutter's trick: the gradient of ``gᵀv`` with ``v`` held fixed), so the
trace of a layer's block of the Hessian never needs the block itself. One draw of ``v`` for all layers at once
gives every layer's estimate: the block-diagonal parts of ``vᵀHv`` separate by layer.

The loss is averaged over the batches (the Hessian of the mean loss is the mean of the batch Hessians), and the
estimate averages ``samples`` draws per batch. Its standard error falls as one over the square root of the
draws. The off-diagonal entries of ``H`` make up its variance: those within the layer's block, and, since one
draw serves all layers, those between the layer and the others.

Example:
    >>> import torch
    >>> from torch import nn
    >>> torch.manual_seed(0)
    <torch._C.Generator object at ...>
    >>> layer = nn.Linear(3, 2)
    >>> x, y = torch.randn(16, 3), torch.randn(16, 2)
    >>> loss = lambda model, batch: ((model(batch[0]) - batch[1]) ** 2).sum(1).mean()
    >>> traces = hutchinson_traces(layer, {"weight": layer.weight}, [(x, y)], loss, samples=200)
    >>> exact = float(2 * 2 * (x ** 2).sum(1).mean())  # ∂²/∂W² of Σ‖Wx − y‖²/n: 2·x xᵀ per output row
    >>> abs(traces["weight"] - exact) / exact < 0.1
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["hutchinson_traces"]


def hutchinson_traces(model: nn.Module, params: Mapping[str, torch.Tensor], batches: Iterable[Any],
                      loss_fn: Callable[[nn.Module, Any], torch.Tensor], samples: int = 32, seed: int = 0,
                      ) -> dict[str, float]:
    """``Tr(∂²L/∂θ²)`` for each tensor ``θ`` of ``params``, with ``L`` the mean of ``loss_fn`` over ``batches``.

    Args:
        model: the model ``loss_fn`` calls (its mode is left as it is; use eval mode for BatchNorm statistics).
        params: name → parameter of ``model`` (``requires_grad`` is set for the duration).
        batches: what ``loss_fn(model, batch)`` takes, read once.
        loss_fn: a scalar loss for one batch, twice differentiable in ``params``.
        samples: Rademacher draws per batch.
        seed: seeds the draws (the estimate is deterministic under it).

    Returns:
        name → the trace estimate (float64 arithmetic in the average).

    Raises:
        ValueError: no params, ``samples < 1``, or no batches.
    """
    if not params:
        raise ValueError("hutchinson_traces: params is empty")
    if samples < 1:
        raise ValueError(f"hutchinson_traces: samples must be >= 1, got {samples}")
    names, tensors = list(params), list(params.values())
    previous = [t.requires_grad for t in tensors]
    generator = torch.Generator().manual_seed(seed)
    totals = dict.fromkeys(names, 0.0)
    count = 0
    try:
        for t in tensors:
            t.requires_grad_(True)
        for batch in batches:
            loss = loss_fn(model, batch)
            grads = torch.autograd.grad(loss, tensors, create_graph=True, allow_unused=True)
            # a gradient that does not depend on any parameter (the loss is linear there) has a zero Hessian block
            live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
            for draw in range(samples):
                vs = [torch.randint(0, 2, t.shape, generator=generator).to(t.dtype).mul_(2).sub_(1) for t in tensors]
                if not live:
                    continue
                hvs = torch.autograd.grad([grads[i] for i in live], tensors, grad_outputs=[vs[i] for i in live],
                                          retain_graph=draw < samples - 1, allow_unused=True)
                for name, v, hv in zip(names, vs, hvs):
                    if hv is not None:
                        totals[name] += float((v.double() * hv.double()).sum())
            count += 1
    finally:
        for t, flag in zip(tensors, previous):
            t.requires_grad_(flag)
    if count == 0:
        raise ValueError("hutchinson_traces: no batches")
    return {name: total / (count * samples) for name, total in totals.items()}
