"""Reference integer kernels: plain torch, readable, the oracle for any faster path.

Codes travel as int32 tensors. Products are formed only between raw codes minus zero points and summed exactly:
the accumulator is computed in float64 (every partial sum is an integer below 2^53, so it is exact) and then
checked against the int32 range an integer kernel would use. Requantization has two modes:

- ``FLOAT``: ONNX Runtime's CPU rule — a float32 multiplier ``s_x·s_w/s_y`` (computed in float32), the float32
  accumulator times it, rounded half to even, plus the zero point, clamped;
- ``FIXED_POINT``: gemmlowp/TFLite — a Q31 multiplier and a shift (docs/math.md, F1–F8).

Example:
    >>> import torch
    >>> acc = torch.tensor([1000, -1000, 37])
    >>> requantize(acc, torch.tensor(0.01), 5, 0, 255, Requant.FLOAT).tolist()
    [15, 0, 5]
"""

from __future__ import annotations

import enum

import torch
from torch.nn import functional as F

from lowbit.engine.conv_algorithm import integer_conv
from lowbit.functional.fixedpoint import multiply_by_quantized_multiplier, quantize_multiplier

__all__ = ["Requant", "requantize", "check_int32", "conv_accumulate", "linear_accumulate", "add", "concat",
           "global_avg_pool",
           "avg_pool", "float_multiplier", "exact_in_float32", "FLOAT32_EXACT"]

# Every integer of magnitude below 2^24 is a float32, and so is every partial sum that stays below it.
FLOAT32_EXACT = 2**24

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


class Requant(enum.Enum):
    """How an int32 accumulator becomes an output code."""

    FLOAT = "float"
    FIXED_POINT = "fixed_point"


def check_int32(acc: torch.Tensor, where: str) -> torch.Tensor:
    """``acc`` as int64 after checking it fits int32, the accumulator integer hardware has.

    Raises:
        OverflowError: naming ``where`` and the extreme value.
    """
    lo, hi = float(acc.min()), float(acc.max())
    if lo < INT32_MIN or hi > INT32_MAX:
        raise OverflowError(f"{where}: int32 accumulator overflow (range {lo:.0f}..{hi:.0f})")
    return acc.to(torch.int64)


def float_multiplier(*factors: float | torch.Tensor, divide_by: float | torch.Tensor = 1.0) -> torch.Tensor:
    """``Π factors / divide_by`` in float32 arithmetic, as ONNX Runtime computes requantization scales."""
    result = torch.tensor(1.0, dtype=torch.float32)
    for f in factors:
        result = result * torch.as_tensor(f, dtype=torch.float32)
    return result / torch.as_tensor(divide_by, dtype=torch.float32)


def requantize(acc: torch.Tensor, multiplier: torch.Tensor, zero_point: int, qmin: int, qmax: int,
               mode: Requant) -> torch.Tensor:
    """Output codes ``clamp(round(acc · multiplier) + zero_point, qmin, qmax)`` under ``mode``.

    ``multiplier`` broadcasts against ``acc`` (one per output channel, or a scalar).
    """
    if mode is Requant.FLOAT:
        scaled = torch.round(acc.to(torch.float32) * multiplier.to(torch.float32)).to(torch.int64)
    else:
        m0, shift = quantize_multiplier(multiplier.to(torch.float64))
        scaled = multiply_by_quantized_multiplier(acc.to(torch.int64), m0, shift).to(torch.int64)
    return torch.clamp(scaled + zero_point, qmin, qmax).to(torch.int32)


def _centered(codes: torch.Tensor, zero_point: torch.Tensor | int, shape: list[int] | None = None) -> torch.Tensor:
    zp = torch.as_tensor(zero_point, dtype=torch.float64)
    if shape is not None and zp.numel() > 1:
        zp = zp.reshape(shape)
    return codes.to(torch.float64) - zp


def exact_in_float32(input_bound: int, w: torch.Tensor, w_zero_point: torch.Tensor, bias: torch.Tensor | None,
                     ) -> bool:
    """Whether float32 sums reproduce the integer accumulator exactly: ``max|x − z_x| · max_c Σ|w − z_w| + |b|``
    bounds every partial sum in any order, so below 2^24 no rounding can happen (docs/math.md, E1)."""
    centered = _centered(w, w_zero_point, [-1] + [1] * (w.dim() - 1)).abs().flatten(1).sum(1)
    bound = input_bound * float(centered.max()) + (float(bias.abs().max()) if bias is not None else 0.0)
    return bound < FLOAT32_EXACT


def conv_accumulate(x: torch.Tensor, x_zero_point: int, w: torch.Tensor, w_zero_point: torch.Tensor,
                    bias: torch.Tensor | None, stride: tuple, padding: tuple, dilation: tuple, groups: int,
                    where: str, exact: bool = False, algorithm: str | None = None) -> torch.Tensor:
    """int32 accumulator of a convolution on codes: ``Σ (q_x − z_x)(q_w − z_w) + bias``.

    Padding is with the input zero point (a real zero), i.e. zero after centring. ``exact=True`` (allowed only
    when :func:`exact_in_float32` holds) sums in float32 with PyTorch's fast convolution and returns the same
    integers as float32 values; otherwise the sum is float64, then checked against int32. ``algorithm`` (a
    :class:`lowbit.kernels.conv.Algorithm` value) computes the sum by that algorithm in float64, rounded to the
    integers (:mod:`lowbit.engine.conv_algorithm`).
    """
    conv = F.conv1d if w.dim() == 3 else F.conv2d
    shape = [-1] + [1] * (w.dim() - 1)
    if algorithm is not None:
        acc = integer_conv(_centered(x, x_zero_point), _centered(w, w_zero_point, shape), tuple(stride),
                           tuple(padding), algorithm, where)
        if bias is not None:
            acc = acc + bias.to(torch.float64).reshape(1, -1, 1, 1)
        acc = check_int32(acc, where)
        return acc.to(torch.float32) if exact else acc  # exact: the integers held as float32, as below
    if exact:  # float32 sums are exact here (see exact_in_float32): the fast path, same integers
        acc32 = conv(x.to(torch.float32) - x_zero_point, (w.to(torch.float32) - w_zero_point.reshape(shape)), None,
                     stride, padding, dilation, groups)
        if bias is not None:
            acc32 = acc32 + bias.to(torch.float32).reshape([1, -1] + [1] * (w.dim() - 2))
        return acc32
    acc = conv(_centered(x, x_zero_point), _centered(w, w_zero_point, shape), None, stride, padding, dilation, groups)
    if bias is not None:
        acc = acc + bias.to(torch.float64).reshape([1, -1] + [1] * (w.dim() - 2))
    return check_int32(acc, where)


def linear_accumulate(x: torch.Tensor, x_zero_point: int, w: torch.Tensor, w_zero_point: torch.Tensor,
                      bias: torch.Tensor | None, where: str, exact: bool = False) -> torch.Tensor:
    """int32 accumulator of ``x · Wᵀ`` on codes, plus the int32 bias (``exact``: as :func:`conv_accumulate`)."""
    if exact:
        acc32 = (x.to(torch.float32) - x_zero_point) @ (w.to(torch.float32) - w_zero_point.reshape(-1, 1)).T
        return acc32 + bias.to(torch.float32) if bias is not None else acc32
    acc = _centered(x, x_zero_point) @ _centered(w, w_zero_point, [-1, 1]).T
    if bias is not None:
        acc = acc + bias.to(torch.float64)
    return check_int32(acc, where)


def add(a: torch.Tensor, a_scale: float, a_zero_point: int, b: torch.Tensor, b_scale: float, b_zero_point: int,
        out_scale: float, out_zero_point: int, qmin: int, qmax: int, mode: Requant) -> torch.Tensor:
    """Codes of ``a + b`` on the output grid (each input rescaled to it)."""
    if mode is Requant.FLOAT:  # ONNX Runtime's QLinearAdd: two float32 ratios, one rounding
        ra, rb = float_multiplier(a_scale, divide_by=out_scale), float_multiplier(b_scale, divide_by=out_scale)
        total = (a - a_zero_point).to(torch.float32) * ra + (b - b_zero_point).to(torch.float32) * rb
        return torch.clamp(torch.round(total).to(torch.int64) + out_zero_point, qmin, qmax).to(torch.int32)
    # TFLite: both inputs shifted left 20 bits and brought to twice the larger scale, then one output multiplier
    left_shift, twice_max = 20, 2.0 * max(a_scale, b_scale)
    terms = []
    for codes, scale, zp in ((a, a_scale, a_zero_point), (b, b_scale, b_zero_point)):
        m0, shift = quantize_multiplier(scale / twice_max)
        terms.append(multiply_by_quantized_multiplier((codes.to(torch.int64) - zp) * (1 << left_shift), m0, shift))
    m0, shift = quantize_multiplier(twice_max / ((1 << left_shift) * out_scale))
    scaled = multiply_by_quantized_multiplier(terms[0] + terms[1], m0, shift)
    return torch.clamp(scaled.to(torch.int64) + out_zero_point, qmin, qmax).to(torch.int32)


def concat(parts: list[tuple[torch.Tensor, float, int]], dim: int, out_scale: float, out_zero_point: int,
           qmin: int, qmax: int, mode: Requant) -> torch.Tensor:
    """Codes of ``cat`` of ``(codes, scale, zero_point)`` parts on one output grid, each part rescaled to it."""
    return torch.cat([requantize(codes.to(torch.int64) - zp, float_multiplier(scale, divide_by=out_scale),
                                 out_zero_point, qmin, qmax, mode) for codes, scale, zp in parts], dim)


def global_avg_pool(x: torch.Tensor, in_scale: float, in_zero_point: int, out_scale: float, out_zero_point: int,
                    qmin: int, qmax: int, mode: Requant) -> torch.Tensor:
    """Codes of the mean over all spatial positions: an integer sum, then one requantization."""
    count = x[0, 0].numel()
    total = (x.to(torch.int64) - in_zero_point).flatten(2).sum(-1, keepdim=True)
    out = requantize(total, float_multiplier(in_scale, divide_by=float_multiplier(out_scale, count)),
                     out_zero_point, qmin, qmax, mode)
    return out.reshape(*x.shape[:2], *([1] * (x.dim() - 2)))


def avg_pool(x: torch.Tensor, kernel_size: tuple, stride: tuple, padding: tuple, in_scale: float,
             in_zero_point: int, out_scale: float, out_zero_point: int, qmin: int, qmax: int,
             mode: Requant) -> torch.Tensor:
    """Codes of a 2-D average pool (padding counted, as PyTorch's default): window sums, then requantization."""
    count = kernel_size[0] * kernel_size[1]
    total = F.avg_pool2d(_centered(x, in_zero_point), kernel_size, stride, padding, divisor_override=1)
    return requantize(total.round().to(torch.int64),
                      float_multiplier(in_scale, divide_by=float_multiplier(out_scale, count)),
                      out_zero_point, qmin, qmax, mode)
