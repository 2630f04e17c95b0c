"""Straight-through estimators: a non-differentiable forward with a chosen backward.

Every name ends in ``_ste``. The forward value is computed once and returned as is (never rebuilt as
``x + (y − x).detach()``, which is not bit-exact in floating point).

Example:
    >>> import torch
    >>> x = torch.tensor([0.4, 1.6], requires_grad=True)
    >>> round_ste(x).sum().backward()
    >>> x.grad
    tensor([1., 1.])
"""

from __future__ import annotations

import torch

__all__ = ["round_ste", "floor_ste", "clamp_ste", "sign_ste", "masked_ste"]


class _MaskedStraightThrough(torch.autograd.Function):
    """Return ``y``; send the incoming gradient to ``x`` where ``mask`` is True, zero elsewhere."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(mask)
        ctx.has_mask = mask is not None
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (mask,) = ctx.saved_tensors
        g = grad * mask.to(grad.dtype) if ctx.has_mask else grad
        return g, None, None


def masked_ste(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Forward ``y`` exactly; backward passes ``dL/dy`` to ``x`` where ``mask`` (all of it if None).

    Args:
        x: the differentiable input.
        y: the forward value, computed from ``x`` without autograd (same shape).
        mask: boolean tensor broadcastable to ``x``, or None for an identity gradient.

    Returns:
        ``y``, attached to ``x``'s graph.

    Example:
        >>> x = torch.tensor([0.2, 5.0], requires_grad=True)
        >>> y = masked_ste(x, x.detach().clamp(max=1.0), x.detach() <= 1.0)
        >>> y.sum().backward(); x.grad
        tensor([1., 0.])
    """
    return _MaskedStraightThrough.apply(x, y.detach(), mask)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even forward; identity gradient.

    Example:
        >>> round_ste(torch.tensor([0.5, 1.5, 2.5]))
        tensor([0., 2., 2.])
    """
    return masked_ste(x, torch.round(x.detach()))


def floor_ste(x: torch.Tensor) -> torch.Tensor:
    """Floor forward; identity gradient (stochastic rounding is ``floor_ste(x + u)``).

    Example:
        >>> floor_ste(torch.tensor([-0.5, 0.5]))
        tensor([-1.,  0.])
    """
    return masked_ste(x, torch.floor(x.detach()))


def clamp_ste(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Clamp forward; identity gradient everywhere (the clamp is skipped in the backward pass).

    Example:
        >>> x = torch.tensor([-3.0, 0.0, 3.0], requires_grad=True)
        >>> clamp_ste(x, -1.0, 1.0).sum().backward(); x.grad
        tensor([1., 1., 1.])
    """
    return masked_ste(x, x.detach().clamp(low, high))


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """``sign`` with ``sign(0) = +1`` forward; gradient 1 where ``|x| ≤ 1`` (STE through htanh), else 0.

    Example:
        >>> x = torch.tensor([-2.0, 0.0, 0.5], requires_grad=True)
        >>> y = sign_ste(x); y
        tensor([-1.,  1.,  1.], grad_fn=<_MaskedStraightThroughBackward>)
        >>> y.sum().backward(); x.grad
        tensor([0., 1., 1.])
    """
    xd = x.detach()
    return masked_ste(x, torch.where(xd >= 0, 1.0, -1.0).to(x.dtype), xd.abs() <= 1)
