"""Approximate powers of two and shift products, the arithmetic of the BNN paper's shift-based training.

Courbariaux, Hubara et al. 2016 ("Binarized Neural Networks", Algorithms 3 and 4; docs/math.md B5) replace the
multiplies of batch normalization and AdaMax by binary shifts:

- ``ap2(x) = sign(x) · 2^round(log2|x|)``, the *approximate power of two*, with ``ap2(0) = 0`` (eq. B5.1);
- ``shift_mul(x, y) = x · ap2(y)``, the paper's ``x ≪≫ y``: a left or right shift of ``x`` by ``round(log2|y|)``
  places, with ``y``'s sign (eq. B5.2).

``round`` is taken in the log domain, so ``ap2(x)`` is the power of two nearer to ``x`` by *ratio*: it changes
``|x|`` by a factor in ``[2^−½, 2^½]``. The tie ``log2|x| = k + ½`` means ``|x| = √2 · 2^k``, an irrational number
that no floating-point value equals, so the rule has no ties to break. lowbit decides it exactly, from the binary
mantissa, rather than through a rounded ``log2`` that could fall on the wrong side of ``k + ½``.

Gradients: ``ap2`` is piecewise constant, so its true derivative is 0 almost everywhere. :func:`ap2` returns a value
detached from autograd (a plain quantizer, like ``torch.round``); :func:`ap2_ste` is the training version with the
identity (straight-through) gradient, the choice of the BNN paper's code, justified because ``ap2(x) ≈ x`` within
that factor. :func:`shift_mul` is differentiable: ``∂/∂x = ap2(y)`` exactly and ``∂/∂y = x`` straight through.

Example:
    >>> import torch
    >>> ap2(torch.tensor([0.0, 3.0, -5.0, 0.7, 1.5, 8.0]))
    tensor([ 0.,  4., -4.,  0.5,  2.,  8.])
    >>> shift_mul(torch.tensor([3.0, 3.0]), torch.tensor([0.3, -6.0]))   # 3·2^−2, 3·(−2^3)
    tensor([  0.7500, -24.0000])
"""

from __future__ import annotations

import math

import torch

from lowbit.functional.ste import masked_ste

__all__ = ["ap2", "ap2_ste", "shift_mul"]


def _smallest_mantissa_rounding_up(precision: int) -> float:
    """The smallest ``p``-bit mantissa ``m ∈ [½, 1)`` with ``m ≥ 1/√2``, i.e. ``k/2^p`` with ``2k² ≥ 2^(2p)``.

    Integer arithmetic, so the threshold is exact: no float approximation of ``1/√2`` sits in the comparison.
    """
    target = 1 << (2 * precision - 1)  # k ≥ 2^p/√2  ⇔  k² ≥ 2^(2p−1)
    k = math.isqrt(target)
    if k * k < target:  # always true: 2^(2p−1) is not a square
        k += 1
    return k / (1 << precision)  # exact in float64 for p ≤ 53


# float64 has the widest mantissa of torch's float types, so one threshold serves them all: every float16,
# bfloat16 and float32 mantissa is also a float64 mantissa, and for any float64 m, m ≥ _SQRT_HALF_UP ⇔ m ≥ 1/√2.
_SQRT_HALF_UP = _smallest_mantissa_rounding_up(53)

_F64_BIAS = 1023
_F64_MANTISSA_BITS = 52
_F64_MIN_SUBNORMAL_EXP = -1074


def _pow2_float64(n: torch.Tensor) -> torch.Tensor:
    """``2^n`` in float64, built from its bit pattern, so it is exact (including subnormals): inf above 2^1023,
    0 below 2^−1074.

    ``torch.ldexp`` multiplies by ``pow(2, n)`` in the *default* dtype (float32), which loses float64 exponents.
    """
    n = n.to(torch.int64)
    normal_bits = (n + _F64_BIAS).clamp(1, 2046) << _F64_MANTISSA_BITS
    subnormal_bits = torch.ones_like(n) << (n - _F64_MIN_SUBNORMAL_EXP).clamp(0, _F64_MANTISSA_BITS - 1)
    bits = torch.where(n >= 1 - _F64_BIAS, normal_bits, subnormal_bits)
    value = bits.view(torch.float64)
    value = torch.where(n > _F64_BIAS, math.inf, value)
    return torch.where(n < _F64_MIN_SUBNORMAL_EXP, 0.0, value)


def ap2(x: torch.Tensor) -> torch.Tensor:
    """Approximate power of two, ``sign(x) · 2^round(log2|x|)`` (docs/math.md eq. B5.1); no gradient.

    Zeros (either sign), infinities and NaN are returned unchanged. A finite ``|x| ≥ √2 · 2^emax`` rounds to
    ``2^(emax+1)``, which overflows the dtype to ``±inf``, as any multiply past the range would.

    Args:
        x: floating-point tensor of any shape (float16, bfloat16, float32 or float64).

    Returns:
        A tensor of ``x``'s shape and dtype whose non-zero finite entries are signed powers of two, with
        ``|ap2(x)| / |x| ∈ [2^−½, 2^½]``. It is detached from autograd; use :func:`ap2_ste` in training.

    Raises:
        ValueError: if ``x`` is not a floating-point tensor.

    Example:
        >>> ap2(torch.tensor([1.4142, 1.4143, -0.25, 1e-3]))   # √2 ≈ 1.41421 is the boundary between 1 and 2
        tensor([ 1.0000,  2.0000, -0.2500,  0.0010])
        >>> ap2(torch.tensor([1e-3])).item() == 2.0 ** -10
        True
    """
    if not x.is_floating_point():
        raise ValueError(f"ap2 needs a floating-point tensor x, got dtype {x.dtype}")
    xd = x.detach()
    # |x| = m·2^e with m ∈ [½, 1): log2|x| = e + log2(m), log2(m) ∈ [−1, 0), which rounds to 0 iff m ≥ 1/√2.
    mantissa, exponent = torch.frexp(xd.to(torch.float64))
    exponent = exponent.to(torch.int64) - (mantissa.abs() < _SQRT_HALF_UP).to(torch.int64)
    result = torch.copysign(_pow2_float64(exponent), mantissa).to(x.dtype)
    # frexp leaves 0, ±inf and NaN without a meaningful exponent: they are their own approximation.
    return torch.where(torch.isfinite(xd) & (xd != 0), result, xd)


def ap2_ste(x: torch.Tensor) -> torch.Tensor:
    """:func:`ap2` forward; identity gradient (straight-through), since ``ap2(x) ≈ x`` within a factor ``√2``.

    Args:
        x: floating-point tensor.

    Returns:
        ``ap2(x)``, attached to ``x``'s autograd graph with ``∂ap2_ste(x)/∂x := 1``.

    Raises:
        ValueError: if ``x`` is not a floating-point tensor.

    Example:
        >>> x = torch.tensor([3.0, -0.3], requires_grad=True)
        >>> y = ap2_ste(x); y.detach()
        tensor([ 4.0000, -0.2500])
        >>> y.sum().backward(); x.grad
        tensor([1., 1.])
    """
    return masked_ste(x, ap2(x))


def shift_mul(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The paper's ``x ≪≫ y = x · ap2(y)``: shift ``x`` by ``round(log2|y|)`` binary places (eq. B5.2).

    The product with a power of two is exact in floating point (short of overflow or underflow), so this equals
    ``torch.ldexp(x, k)`` times ``sign(y)`` with ``k = round(log2|y|)``. Differentiable: ``x`` gets ``ap2(y)``
    times the incoming gradient (the exact derivative) and ``y`` gets ``x`` times it (straight through ``ap2``).

    Args:
        x: floating-point tensor, the value shifted.
        y: floating-point tensor broadcastable with ``x``, whose approximate power of two is the shift.

    Returns:
        ``x · ap2(y)`` with the broadcast shape of ``x`` and ``y``.

    Raises:
        ValueError: if ``y`` is not a floating-point tensor.

    Example:
        >>> shift_mul(torch.tensor([5.0, 5.0, 5.0]), torch.tensor([0.0, 2.5, -0.7]))
        tensor([ 0.0000, 10.0000, -2.5000])
    """
    return x * ap2_ste(y)
