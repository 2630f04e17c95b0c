"""PACT (Choi et al. 2018): activations clipped at a learned ``α`` and quantized uniformly (docs/math.md Q3).

Unsigned (after a ReLU): step ``α/(2^b − 1)``, codes ``[0, 2^b − 1]`` — the range ``[0, α]``. Signed (an edge that
carries negative values, e.g. a residual sum): step ``α/2^(b−1)``, codes ``[−2^(b−1), 2^(b−1) − 1]`` — the range
``[−α, α − step]``. Either way ``y = clamp(round(x/step), qmin, qmax) · step``, so a converted model computes the
same values with an integer zero point. Backward (straight-through, eq. Q3): ``∂y/∂x = 1`` where ``x`` is inside
the clip range, else 0; ``∂y/∂α = code/m`` where clipped (``m`` the step's divisor: 1 at the top of the unsigned
range, as in the paper), 0 inside.

Example:
    >>> import torch
    >>> x = torch.tensor([0.5, 3.0], requires_grad=True)
    >>> alpha = torch.tensor(2.0, requires_grad=True)
    >>> y = pact_fake_quantize(x, alpha, bits=2); y
    tensor([0.6667, 2.0000], grad_fn=<_PactBackward>)
    >>> y.sum().backward(); x.grad.tolist(), float(alpha.grad)
    ([1.0, 0.0], 1.0)
"""

from __future__ import annotations

import torch

__all__ = ["pact_fake_quantize", "pact_grid"]


def pact_grid(bits: int, signed: bool) -> tuple[int, int, int]:
    """``(qmin, qmax, m)`` of PACT's grid: the codes and the divisor with ``step = α/m``.

    Example:
        >>> pact_grid(4, False), pact_grid(4, True)
        ((0, 15, 15), (-8, 7, 8))
    """
    if not isinstance(bits, int) or not 1 <= bits <= 16 or (signed and bits < 2):
        raise ValueError(f"PACT bits must be in 1..16 (2..16 signed), got {bits!r}")
    if signed:
        half = 1 << (bits - 1)
        return -half, half - 1, half
    top = (1 << bits) - 1
    return 0, top, top


class _Pact(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: torch.Tensor, qmin: int, qmax: int,  # type: ignore[override]
                divisor: int) -> torch.Tensor:
        step = (alpha / divisor).to(x.dtype)
        codes = torch.round(x / step).clamp(qmin, qmax)
        ctx.save_for_backward(x, alpha, codes)
        ctx.bounds = (qmin, qmax, divisor)
        return codes * step

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        x, alpha, codes = ctx.saved_tensors
        qmin, qmax, divisor = ctx.bounds
        step = alpha.to(x.dtype) / divisor
        low, high = x <= qmin * step, x >= qmax * step
        inside = ~(low | high)
        # eq. Q3: y = code · α/m where clipped, so ∂y/∂α = code/m there; the STE gives 0 inside
        d_alpha = torch.where(inside, torch.zeros_like(codes), codes / divisor)
        return grad * inside.to(grad.dtype), (grad * d_alpha).sum().reshape(alpha.shape), None, None, None


def pact_fake_quantize(x: torch.Tensor, alpha: torch.Tensor, bits: int, signed: bool = False) -> torch.Tensor:
    """PACT's clip-and-quantize with a learned scalar ``alpha > 0`` (eq. Q3).

    Args:
        x: float tensor.
        alpha: scalar tensor, the clip level.
        bits: code width.
        signed: clip to ``[−α, α − step]`` instead of ``[0, α]``.
    """
    qmin, qmax, divisor = pact_grid(bits, signed)
    return _Pact.apply(x, alpha, qmin, qmax, divisor)
