"""AdaRound: learning whether each weight rounds up or down (Nagel et al. 2020; docs/math.md eq. T8).

Round-to-nearest minimises each weight's own error, not the layer's output error. AdaRound keeps every weight on
its grid cell ``[floor(w/s), floor(w/s) + 1]`` and learns which end to take, by optimising a soft choice
``h(V) ∈ [0, 1]`` per weight:

    w̃ = s · (clamp(floor(w/s) + h(V) + z, qmin, qmax) − z)
    h(V) = clamp(σ(V)·(ζ − γ) + γ, 0, 1),  ζ = 1.1, γ = −0.1
    loss = mean over samples and positions of ‖op(x, w) − op(x, w̃)‖² over output channels
           + λ · Σ (1 − |2h(V) − 1|^β)

``V`` starts where ``h(V)`` equals the fractional part of ``w/s`` (so the soft weight starts at the float weight).
The regulariser is off for the first ``warm_start`` fraction of the steps, then pushes every ``h`` to 0 or 1 while
``β`` decays from 20 to 2. The codes returned are ``floor(w/s) + [V ≥ 0] + z``, clamped.

Example:
    >>> import torch
    >>> gen = torch.Generator().manual_seed(0)
    >>> w = torch.randn(4, 16, generator=gen)
    >>> x = torch.randn(256, 16, generator=gen)
    >>> scale, zero = torch.full((4, 16), 0.5), torch.zeros(4, 16, dtype=torch.int32)
    >>> codes = adaround_codes(w, [x], torch.nn.functional.linear, scale, zero, -7, 7, steps=300, seed=0)
    >>> nearest = torch.clamp(torch.round(w / scale), -7, 7)
    >>> error = lambda q: float((x @ (q * scale - w).T).pow(2).mean())
    >>> error(codes.float()) < error(nearest)
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

__all__ = ["ZETA", "GAMMA", "rectified_sigmoid", "initial_logits", "rounding_regularizer", "annealed_beta",
           "adaround_codes"]

ZETA, GAMMA = 1.1, -0.1


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """``h(V) = clamp(σ(V)·(ζ − γ) + γ, 0, 1)``: reaches exactly 0 and 1 at finite ``V``.

    Example:
        >>> rectified_sigmoid(torch.tensor([-10.0, 0.0, 10.0])).tolist()
        [0.0, 0.5, 1.0]
    """
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def initial_logits(fraction: torch.Tensor) -> torch.Tensor:
    """``V`` with ``h(V) = fraction`` (fractions in ``[0, 1)``, kept off the clamped ends).

    Example:
        >>> round(float(rectified_sigmoid(initial_logits(torch.tensor(0.3)))), 6)
        0.3
    """
    p = ((fraction - GAMMA) / (ZETA - GAMMA)).clamp(1e-6, 1 - 1e-6)
    return torch.log(p / (1 - p))


def rounding_regularizer(v: torch.Tensor, beta: float) -> torch.Tensor:
    """``Σ 1 − |2h(V) − 1|^β``: zero when every ``h`` is 0 or 1, largest at ``h = 0.5``."""
    return (1 - (2 * rectified_sigmoid(v) - 1).abs().pow(beta)).sum()


def annealed_beta(step: int, steps: int, warm_start: float, start: float = 20.0, end: float = 2.0) -> float | None:
    """``β`` at ``step``: ``None`` during the warm start (no regulariser), then decaying from ``start`` to ``end``
    along a cosine.

    Example:
        >>> annealed_beta(0, 100, 0.2) is None, annealed_beta(20, 100, 0.2), annealed_beta(100, 100, 0.2)
        (True, 20.0, 2.0)
    """
    warm = int(warm_start * steps)
    if step < warm:
        return None
    progress = (step - warm) / max(steps - warm, 1)
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * progress))


def adaround_codes(weight: torch.Tensor, inputs: Sequence[torch.Tensor],
                   op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], scale: torch.Tensor,
                   zero_point: torch.Tensor, qmin: int, qmax: int, *, steps: int = 1000, batch_size: int = 32,
                   lr: float = 1e-2, reg: float = 0.01, warm_start: float = 0.2, seed: int = 0) -> torch.Tensor:
    """Integer codes of ``weight`` that AdaRound learns on ``inputs`` for the layer ``op(x, weight)``.

    Args:
        weight: the float weight, any shape ``op`` takes.
        inputs: the layer's input samples, as tensors batched on dim 0 (they are sampled in mini-batches).
        op: the layer without its bias, e.g. ``F.linear`` or a ``conv2d`` with its stride and padding bound.
        scale / zero_point: every weight's grid (``weight``'s shape); fixed, AdaRound only picks codes.
        qmin / qmax: the code range.
        steps / batch_size / lr: Adam on ``V``.
        reg / warm_start: the regulariser's weight ``λ`` and the share of steps without it.
        seed: for the mini-batch draws (the result is deterministic under it).

    Raises:
        ValueError: no inputs, or shapes that do not agree.
    """
    if scale.shape != weight.shape or zero_point.shape != weight.shape:
        raise ValueError(f"adaround_codes: scale/zero_point must have the weight's shape {tuple(weight.shape)}, got "
                         f"{tuple(scale.shape)} and {tuple(zero_point.shape)}")
    data = torch.cat([x.detach().float() for x in inputs]) if inputs else None
    if data is None or len(data) == 0:
        raise ValueError("adaround_codes: needs at least one input sample")
    w = weight.detach().float()
    s, z = scale.float(), zero_point.float()
    floor = torch.floor(w / s)
    v = initial_logits(w / s - floor).requires_grad_(True)
    optimizer = torch.optim.Adam([v], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for step in range(steps):
        x = data[torch.randint(len(data), (min(batch_size, len(data)),), generator=generator)]
        soft = (torch.clamp(floor + rectified_sigmoid(v) + z, qmin, qmax) - z) * s
        with torch.no_grad():
            target = op(x, w)
        loss = (op(x, soft) - target).pow(2).sum(1).mean()  # over channels; mean over samples, positions
        beta = annealed_beta(step, steps, warm_start)
        if beta is not None:
            loss = loss + reg * rounding_regularizer(v, beta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return torch.clamp(floor + (v.detach() >= 0).float() + z, qmin, qmax).to(torch.int32)
