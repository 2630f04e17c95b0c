"""Learned Step Size Quantization (LSQ, Esser et al. 2020): a quantizer whose step is trained (docs/math.md Q2).

Forward ``x̂ = clamp(round(x / s), qmin, qmax) · s`` — the arithmetic of :func:`lowbit.functional.affine.fake_quantize`
with zero point 0 (true division, round half to even), so a converted model computes the same values. Backward
(eq. Q2): ``∂x̂/∂x = 1`` where ``qmin ≤ x/s ≤ qmax`` else 0; ``∂x̂/∂s = round(x/s) − x/s`` inside, ``qmin`` or
``qmax`` where clipped, times the step-gradient scale ``g = 1/sqrt(N · qmax)``.

Example:
    >>> import torch
    >>> x = torch.tensor([0.26, 0.9, -2.0], requires_grad=True)
    >>> s = torch.tensor(0.25, requires_grad=True)
    >>> y = lsq_fake_quantize(x, s, -4, 3, grad_scale=1.0); y
    tensor([ 0.2500,  0.7500, -1.0000], grad_fn=<_LearnedStepBackward>)
    >>> y.sum().backward(); x.grad.tolist(), round(float(s.grad), 4)
    ([1.0, 0.0, 0.0], -1.04)
"""

from __future__ import annotations

import math

import torch

__all__ = ["lsq_fake_quantize", "lsq_grad_scale", "lsq_initial_step"]


class _LearnedStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int,  # type: ignore[override]
                grad_scale: float) -> torch.Tensor:
        s = step.to(x.dtype)
        v = x / s
        rounded = torch.round(v)
        y = rounded.clamp(qmin, qmax) * s
        ctx.save_for_backward(v, rounded)
        ctx.bounds, ctx.grad_scale, ctx.step_shape = (qmin, qmax), grad_scale, step.shape
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        v, rounded = ctx.saved_tensors
        qmin, qmax = ctx.bounds
        low, high = v <= qmin, v >= qmax
        inside = ~(low | high)
        grad_x = grad * inside.to(grad.dtype)
        # eq. Q2: the step's gradient — the rounding error inside, the clipped code outside
        d_step = torch.where(low, float(qmin), torch.where(high, float(qmax), rounded - v))
        grad_step = (grad * d_step).sum_to_size(ctx.step_shape) * ctx.grad_scale
        return grad_x, grad_step, None, None, None


def lsq_fake_quantize(x: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int, grad_scale: float
                      ) -> torch.Tensor:
    """LSQ's quantizer: ``clamp(round(x/step), qmin, qmax) · step`` with the paper's gradients (eq. Q2).

    Args:
        x: float tensor.
        step: positive steps broadcastable to ``x`` (a scalar per tensor, ``[C, 1, …]`` per channel).
        qmin, qmax: the code range (``qmin ≤ 0 ≤ qmax``).
        grad_scale: multiplies the step's gradient: :func:`lsq_grad_scale`.

    Returns:
        The fake-quantized tensor, differentiable in ``x`` and ``step``.
    """
    return _LearnedStep.apply(x, step, qmin, qmax, grad_scale)


def lsq_grad_scale(elements: int, qmax: int) -> float:
    """The paper's step-gradient scale ``1/sqrt(N · Qp)``: ``N`` elements share the step, ``Qp = qmax``.

    Example:
        >>> lsq_grad_scale(1024, 7) == 1 / math.sqrt(1024 * 7)
        True
    """
    if elements < 1 or qmax < 1:
        raise ValueError(f"lsq_grad_scale needs elements >= 1 and qmax >= 1, got {elements}, {qmax}")
    return 1.0 / math.sqrt(elements * qmax)


@torch.no_grad()
def lsq_initial_step(x: torch.Tensor, qmax: int, dims: tuple[int, ...] | None = None) -> torch.Tensor:
    """The paper's initial step ``2 · mean|x| / sqrt(Qp)``, over ``dims`` (all of ``x`` when None; ``keepdim``).

    Example:
        >>> float(lsq_initial_step(torch.tensor([1.0, -3.0]), 4))
        2.0
    """
    mean = x.detach().abs().mean() if dims is None else x.detach().abs().mean(dim=dims, keepdim=True)
    return (2.0 * mean / math.sqrt(qmax)).clamp(min=torch.finfo(torch.float32).tiny).to(torch.float32)
