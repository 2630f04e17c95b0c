"""The update rules of the 8-bit optimizers, in plain torch on float32 tensors (docs/math.md §13, O1–O3).

Each rule updates ``p`` and its state tensors in place from the gradient ``g``. The 8-bit optimizers run a rule on
the decoded state (the *torch path*: any device, any dtype) or hand the same arithmetic, in the same order and
with the same float32 scalars, to a fused kernel in :mod:`lowbit.kernels.optim_state` (CPU float32). The tests
hold the two paths bit-identical.

Scalars arrive as Python floats computed in float64 (``1 − β``, ``lr/(1 − β1^t)``, ...); torch rounds each to
float32 once where it meets a float32 tensor, and the kernels receive the same rounded values.

Example:
    >>> import torch
    >>> p, g = torch.tensor([1.0]), torch.tensor([0.5])
    >>> m, v = torch.zeros(1), torch.zeros(1)
    >>> adam_(p, g, m, v, **adam_scalars(lr=0.1, betas=(0.9, 0.999), eps=0.0, weight_decay=0.0, decoupled=False,
    ...                                  step=1))
    >>> p, m, v        # the first Adam step moves by lr·sign(g)
    (tensor([0.9000]), tensor([0.0500]), tensor([0.0003]))
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["adam_scalars", "adam_", "momentum_scalars", "momentum_", "lion_scalars", "lion_"]


def _float32_reciprocal(value: float) -> float:
    """``1/value`` as torch divides a float32 tensor by a Python scalar: the scalar rounded to float32, then its
    float32 reciprocal, which multiplies (so the fused kernel and torch.optim.Adam scale ``√v`` identically)."""
    return float(np.float32(1.0) / np.float32(value))


def adam_scalars(lr: float, betas: tuple[float, float], eps: float, weight_decay: float, decoupled: bool,
                 step: int) -> dict[str, float]:
    """Step-``t`` scalars of Adam (``decoupled=False``, L2 added to the gradient) or AdamW (decay of ``p``)."""
    beta1, beta2 = betas
    return {"beta1": beta1, "rest1": 1.0 - beta1, "beta2": beta2, "rest2": 1.0 - beta2,
            "step_size": lr / (1.0 - beta1**step), "inv_bias_root": _float32_reciprocal(math.sqrt(1.0 - beta2**step)),
            "eps": eps,
            "l2": 0.0 if decoupled else weight_decay, "decay": 1.0 - lr * weight_decay if decoupled else 1.0}


def adam_(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, *, beta1: float, rest1: float,
          beta2: float, rest2: float, step_size: float, inv_bias_root: float, eps: float, l2: float,
          decay: float) -> None:
    """Adam/AdamW (Kingma & Ba 2015, Alg. 1; Loshchilov & Hutter 2019) as torch.optim.Adam/AdamW (eq. O1).

    ``m ← β1·m + (1−β1)·g``, ``v ← β2·v + (1−β2)·g²``, ``p ← decay·p − step_size · m / (√v · inv_bias_root + ε)``
    with ``step_size = lr/(1 − β1^t)`` and ``inv_bias_root = 1/√(1 − β2^t)``.
    """
    if l2 != 0.0:
        g = g + p * l2
    m.mul_(beta1).add_(g * rest1)
    v.mul_(beta2).add_((g * g) * rest2)
    # √v correctly rounded to float32, as the kernel's sqrt is: torch's vectorised float32 sqrt on CPU can be one
    # ulp off, which would let the two paths drift apart.
    denom = v.double().sqrt_().float().mul_(inv_bias_root).add_(eps)
    if decay != 1.0:
        p.mul_(decay)
    p.sub_(torch.div(m, denom).mul_(step_size))


def momentum_scalars(lr: float, momentum: float, dampening: float, weight_decay: float,
                     nesterov: bool, step: int) -> dict[str, float | bool]:
    """Step-``t`` scalars of SGD with momentum; ``first`` marks the step that starts the buffer."""
    return {"lr": lr, "momentum": momentum, "undamped": 1.0 - dampening, "l2": weight_decay, "first": step == 1,
            "nesterov": nesterov}


def momentum_(p: torch.Tensor, g: torch.Tensor, buf: torch.Tensor, *, lr: float, momentum: float, undamped: float,
              l2: float, first: bool, nesterov: bool) -> None:
    """SGD with momentum as torch.optim.SGD (eq. O2): the buffer starts as the gradient, then
    ``b ← μ·b + (1−dampening)·g``; the step is ``b`` or, with Nesterov, ``g + μ·b``."""
    if l2 != 0.0:
        g = g + p * l2
    if first:
        buf.copy_(g)
    else:
        buf.mul_(momentum).add_(g * undamped)
    direction = g + buf * momentum if nesterov else buf
    p.sub_(direction * lr)


def lion_scalars(lr: float, betas: tuple[float, float], weight_decay: float) -> dict[str, float]:
    """Scalars of Lion (no bias correction, so they do not depend on the step)."""
    beta1, beta2 = betas
    return {"lr": lr, "beta1": beta1, "rest1": 1.0 - beta1, "beta2": beta2, "rest2": 1.0 - beta2,
            "decay": 1.0 - lr * weight_decay}


def lion_(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, *, lr: float, beta1: float, rest1: float, beta2: float,
          rest2: float, decay: float) -> None:
    """Lion (Chen et al., "Symbolic Discovery of Optimization Algorithms", 2023, Alg. 2; eq. O3):
    ``p ← decay·p − lr·sign(β1·m + (1−β1)·g)``, then ``m ← β2·m + (1−β2)·g``."""
    direction = torch.sign(m * beta1 + g * rest1)
    if decay != 1.0:
        p.mul_(decay)
    p.sub_(direction * lr)
    m.mul_(beta2).add_(g * rest2)
