"""DoReFa-Net (Zhou et al. 2016): k-bit weights, activations and gradients (docs/math.md Q4).

- ``quantize_k(r) = round(r · (2^k − 1)) / (2^k − 1)`` on ``[0, 1]``, straight-through. Computed as
  ``round(r / s) · s`` with ``s = 1/(2^k − 1)`` in the input's dtype — for float32, the arithmetic of
  :func:`lowbit.functional.affine.fake_quantize`, so converted models compute the same values.
- Weights, ``k > 1``: ``2 · quantize_k(tanh(w) / (2 max|tanh w|) + 1/2) − 1`` — odd multiples of
  ``1/(2^k − 1)`` in ``[−1, 1]``. ``k = 1``: ``sign(w) · E|w|`` (sign(0) = +1), gradient straight through.
- Activations: ``quantize_k(clamp(x, 0, 1))``; gradient 1 inside ``[0, 1]``.
- Gradients: ``dr ↦ 2·max|dr| · (quantize_k(dr/(2·max|dr|) + 1/2 + N) − 1/2)`` with noise
  ``N ~ (U − 1/2)/(2^k − 1)``, ``max`` per sample (over every dimension but the first).

Example:
    >>> import torch
    >>> dorefa_weight(torch.tensor([-2.0, 0.1, 3.0]), bits=2)
    tensor([-1.0000,  0.3333,  1.0000])
    >>> dorefa_activation(torch.tensor([-0.5, 0.4, 2.0]), bits=2)
    tensor([0.0000, 0.3333, 1.0000])
"""

from __future__ import annotations

import torch

from lowbit.functional.ste import masked_ste

__all__ = ["quantize_k", "dorefa_weight", "dorefa_activation", "dorefa_gradient", "dorefa_gradient_codes",
           "dorefa_gradient_values", "dorefa_weight_codes", "quantize_gradient_ste"]


def _levels(bits: int) -> int:
    if not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ValueError(f"DoReFa bits must be in 1..16, got {bits!r}")
    return (1 << bits) - 1


def _step(bits: int, dtype: torch.dtype) -> torch.Tensor:
    """``1/(2^k − 1)`` in ``dtype``: float32 inputs use the float32 step a converted model's scale holds."""
    return torch.tensor(1.0 / _levels(bits), dtype=dtype)


def quantize_k(r: torch.Tensor, bits: int) -> torch.Tensor:
    """``round(r/s)·s`` with ``s = 1/(2^k − 1)`` for ``r`` in ``[0, 1]``; identity gradient.

    Example:
        >>> quantize_k(torch.tensor([0.2, 0.5, 0.9]), 2)
        tensor([0.3333, 0.6667, 1.0000])
    """
    step = _step(bits, r.dtype)
    return masked_ste(r, torch.round(r.detach() / step) * step)


def dorefa_weight_codes(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """DoReFa's weight as integer codes and a step: ``(codes, step)`` with weight ``= codes · step``.

    ``k > 1``: codes are the odd integers ``2q − (2^k − 1)`` and ``step = 1/(2^k − 1)`` (a signed
    ``k+1``-bit narrow grid, only odd codes used). ``k = 1``: codes ``±1`` and ``step = E|w|``.

    Example:
        >>> dorefa_weight_codes(torch.tensor([-2.0, 0.1, 3.0]), 2)[0].tolist()
        [-3, 1, 3]
    """
    levels = _levels(bits)
    w = w.detach()
    if bits == 1:
        return torch.where(w >= 0, 1, -1).to(torch.int32), w.abs().mean().to(torch.float32)
    t = torch.tanh(w)
    r = t / (2 * t.abs().max().clamp(min=torch.finfo(t.dtype).tiny)) + 0.5
    q = torch.round(r / _step(bits, r.dtype))
    return (2 * q - levels).to(torch.int32), _step(bits, torch.float32)


def dorefa_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """DoReFa's k-bit weight (module docstring), differentiable through ``tanh`` and the STE."""
    if bits == 1:
        scale = w.detach().abs().mean()
        return masked_ste(w, torch.where(w.detach() >= 0, scale, -scale))
    t = torch.tanh(w)
    r = t / (2 * t.abs().max().clamp(min=torch.finfo(t.dtype).tiny)) + 0.5
    codes, step = dorefa_weight_codes(w, bits)
    value = (codes.to(w.dtype) * step.to(w.dtype))
    # forward: exactly codes·step; backward: d(2·quantize_k(r) − 1)/dw = 2 · dr/dw (STE through the rounding)
    return masked_ste(2 * r - 1, value)


def dorefa_activation(x: torch.Tensor, bits: int) -> torch.Tensor:
    """``quantize_k(clamp(x, 0, 1))``, gradient 1 inside ``[0, 1]`` and 0 outside."""
    xd = x.detach()
    step = _step(bits, x.dtype)
    value = torch.round(xd.clamp(0, 1) / step) * step
    return masked_ste(x, value, (xd >= 0) & (xd <= 1))


class _GradientQuantizer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, bits: int, generator: torch.Generator | None) -> torch.Tensor:  # type: ignore[override]
        ctx.bits, ctx.generator = bits, generator
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return dorefa_gradient(grad, ctx.bits, ctx.generator), None, None


def dorefa_gradient_codes(rows: torch.Tensor, bits: int, generator: torch.Generator | None = None,
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """DoReFa's gradient codes of a ``(rows, n)`` matrix, one ``max|·|`` per row: ``(codes, peaks)``.

    ``codes = round(clamp(r/(2·peak) + 1/2 + N, 0, 1)·(2^k − 1))`` as int32 and ``peaks`` of shape ``(rows, 1)``;
    :func:`dorefa_gradient_values` turns them back into the gradient.
    """
    levels = _levels(bits)
    peak = rows.abs().amax(dim=1, keepdim=True).clamp(min=torch.finfo(rows.dtype).tiny)
    noise = (torch.rand(rows.shape, generator=generator, dtype=rows.dtype, device=rows.device) - 0.5) / levels
    r = rows / (2 * peak) + 0.5 + noise
    return torch.round(r.clamp(0, 1) * levels).to(torch.int32), peak


def dorefa_gradient_values(codes: torch.Tensor, peaks: torch.Tensor, bits: int) -> torch.Tensor:
    """``2·peak·(q/(2^k − 1) − 1/2)``: the gradient DoReFa's codes stand for (``peaks`` broadcast over ``codes``)."""
    return 2 * peaks * (codes.to(peaks.dtype) / _levels(bits) - 0.5)


def dorefa_gradient(dr: torch.Tensor, bits: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """DoReFa's stochastic k-bit gradient quantization of ``dr`` (module docstring); no autograd.

    Example:
        >>> g = torch.tensor([[0.5, -1.0, 0.25]])
        >>> dorefa_gradient(g, 8, torch.Generator().manual_seed(0)).sub(g).abs().max() < 2 / 255
        tensor(True)
    """
    flat = dr.reshape(dr.shape[0], -1) if dr.ndim > 1 else dr.reshape(1, -1)
    codes, peak = dorefa_gradient_codes(flat, bits, generator)
    return dorefa_gradient_values(codes, peak, bits).reshape(dr.shape)


def quantize_gradient_ste(x: torch.Tensor, bits: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Identity forward; the gradient flowing back through it is quantized by :func:`dorefa_gradient`."""
    return _GradientQuantizer.apply(x, bits, generator)

