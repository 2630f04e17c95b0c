"""Floating low-precision casts: fp16, bf16 and fp8 (E4M3, E5M2), and the fake-cast used to simulate them.

Every cast rounds to nearest, ties to even (docs/math.md, eq. P4), except ``Bf16Rounding.TRUNCATE``, which keeps
the top 16 bits of the float32 pattern (eq. P6). Any floating dtype is accepted: float16, bfloat16 and fp8 reach
float32 exactly, float64 by round-to-odd (eq. P9), so the final cast is the only rounding. torch's own float64
casts round twice (float64 → float32 → target) and can land one step off (measured on torch 2.13, CPU; below).
Results are detached from autograd in every mode.

Example:
    >>> import torch
    >>> x = torch.tensor([1 + 2**-8 + 2**-9, 500.0, float("inf")])
    >>> to_bf16(x), to_bf16(x, Bf16Rounding.TRUNCATE)
    (tensor([  1.0078, 500.0000,      inf], dtype=torch.bfloat16), tensor([  1., 500.,  inf], dtype=torch.bfloat16))
    >>> to_fp8(x)  # saturating, as ONNX Cast with saturate=1
    tensor([  1.0000, 448.0000, 448.0000], dtype=torch.float8_e4m3fn)
    >>> y = torch.tensor([1 + 2**-8 + 2**-40], dtype=torch.float64)
    >>> y.to(torch.bfloat16).item(), to_bf16(y).item()  # torch rounds twice; this module once
    (1.0, 1.0078125)
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

import torch

__all__ = ["FloatFormat", "Bf16Rounding", "to_fp16", "to_bf16", "to_fp8", "cast", "round_trip"]


class _Layout(NamedTuple):
    exponent_bits: int
    mantissa_bits: int
    has_infinity: bool  # False for E4M3 "fn": its all-ones exponent is an ordinary binade but for one NaN code
    dtype: torch.dtype


class FloatFormat(enum.Enum):
    """A binary floating format: sign, ``e`` exponent bits, ``m`` stored mantissa bits (docs/math.md, eq. P1).

    ``FP8_E4M3`` is the OCP "fn" variant (``torch.float8_e4m3fn``): no infinities, largest finite 448, NaN only at
    ``S.1111.111``. ``FP8_E5M2`` is IEEE-like: infinities and NaNs at the all-ones exponent, largest finite 57344.

    Example:
        >>> f = FloatFormat.FP8_E4M3
        >>> f.exponent_bits, f.mantissa_bits, f.bias, f.max_finite
        (4, 3, 7, 448.0)
        >>> f.smallest_normal, f.smallest_subnormal, f.dtype
        (0.015625, 0.001953125, torch.float8_e4m3fn)
        >>> FloatFormat.BF16.max_finite
        3.3895313892515355e+38
    """

    FP16 = "fp16"
    BF16 = "bf16"
    FP8_E4M3 = "fp8_e4m3"
    FP8_E5M2 = "fp8_e5m2"

    @property
    def exponent_bits(self) -> int:
        """Width ``e`` of the exponent field."""
        return _LAYOUTS[self].exponent_bits

    @property
    def mantissa_bits(self) -> int:
        """Width ``m`` of the stored mantissa (the leading 1 of normals is implicit)."""
        return _LAYOUTS[self].mantissa_bits

    @property
    def has_infinity(self) -> bool:
        """Whether the format encodes ±inf (all but ``FP8_E4M3``)."""
        return _LAYOUTS[self].has_infinity

    @property
    def dtype(self) -> torch.dtype:
        """The torch dtype that stores the format."""
        return _LAYOUTS[self].dtype

    @property
    def bias(self) -> int:
        """Exponent bias ``2^(e−1) − 1`` (eq. P2)."""
        return (1 << (self.exponent_bits - 1)) - 1

    @property
    def max_finite(self) -> float:
        """Largest finite value (eq. P3)."""
        top = (1 << self.exponent_bits) - 1  # all-ones exponent field
        if self.has_infinity:  # the top binade holds inf/NaN; the largest significand of the next one is usable
            return (2.0 - 2.0 ** -self.mantissa_bits) * 2.0 ** (top - 1 - self.bias)
        # fn: the top binade is ordinary except its last code, which is NaN.
        return (2.0 - 2.0 ** (1 - self.mantissa_bits)) * 2.0 ** (top - self.bias)

    @property
    def smallest_normal(self) -> float:
        """``2^(1 − bias)`` (eq. P2)."""
        return 2.0 ** (1 - self.bias)

    @property
    def smallest_subnormal(self) -> float:
        """``2^(1 − bias − m)``, the spacing of the subnormals (eq. P2)."""
        return 2.0 ** (1 - self.bias - self.mantissa_bits)


_LAYOUTS = {
    FloatFormat.FP16: _Layout(5, 10, True, torch.float16),
    FloatFormat.BF16: _Layout(8, 7, True, torch.bfloat16),
    FloatFormat.FP8_E4M3: _Layout(4, 3, False, torch.float8_e4m3fn),
    FloatFormat.FP8_E5M2: _Layout(5, 2, True, torch.float8_e5m2),
}


class Bf16Rounding(enum.Enum):
    """How float32 becomes bfloat16: ``NEAREST_EVEN`` (eq. P5, as ``Tensor.to(torch.bfloat16)``) or ``TRUNCATE``.

    ``TRUNCATE`` keeps the top 16 bits of the float32 pattern, i.e. rounds toward zero (eq. P6): cheaper in
    hardware, but biased toward zero, with errors up to one bf16 step instead of half a step.
    """

    NEAREST_EVEN = "nearest_even"
    TRUNCATE = "truncate"


_FP8 = (FloatFormat.FP8_E4M3, FloatFormat.FP8_E5M2)
_HIGH_HALF = -0x10000  # 0xFFFF0000 as a signed int32
_QUIET_BIT = 0x00400000  # top mantissa bit of float32: set, it keeps a NaN a NaN after the low bits are dropped


def _check_tensor(x: object, where: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{where}: x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{where}: x must be a floating tensor, got {x.dtype}")
    # torch would pass an identity gradient through some casts and none through the bit-level ones; detaching
    # everywhere makes the contract one rule (training uses the STEs of lowbit.functional.ste).
    return x.detach()


def _to_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` as float32: exact for every floating dtype but float64, which is rounded to odd (eq. P9).

    Round-to-odd leaves a sticky trace of the dropped bits in the last float32 bit, so the second rounding (to at
    most 22 significand bits, all our formats) is the correct one, to nearest even or toward zero; plain
    float64 → float32 rounding can manufacture a tie that the second rounding then breaks the wrong way.
    """
    if x.dtype != torch.float64:
        return x.to(torch.float32)
    nearest = x.to(torch.float32)
    wide = nearest.to(torch.float64)
    inexact = wide != x  # True for NaN too, harmless: a NaN with bit 0 set is still NaN
    # |nearest| > |x| iff RNE went away from zero (overflow to inf included; inf − inf is NaN, so not for inf).
    away = (wide - x).mul_(wide) > 0
    # The magnitude lives in the low 31 bits for either sign: minus 1 steps toward zero (truncation), then
    # or-ing 1 into an inexact result makes it the odd neighbour.
    bits = nearest.view(torch.int32) - away.to(torch.int32)
    return bits.bitwise_or_(inexact.to(torch.int32)).view(torch.float32)


def to_fp16(x: torch.Tensor) -> torch.Tensor:
    """Cast to IEEE half precision, round to nearest even (eq. P4); ``|x| ≥ 65520`` overflows to ±inf (eq. P7).

    Args:
        x: floating tensor of any dtype (float64 is rounded once, eq. P9).

    Returns:
        A ``torch.float16`` tensor of the same shape. NaN stays NaN.

    Raises:
        ValueError: if ``x`` is not a floating tensor.

    Example:
        >>> to_fp16(torch.tensor([1 + 2**-11, 1 + 3 * 2**-11, 65519.0, 65520.0]))
        tensor([1.0000, 1.0020, 65504.0000, inf], dtype=torch.float16)
    """
    return _to_float32(_check_tensor(x, "to_fp16")).to(torch.float16)


def to_bf16(x: torch.Tensor, rounding: Bf16Rounding = Bf16Rounding.NEAREST_EVEN) -> torch.Tensor:
    """Cast to bfloat16, the top 16 bits of float32: same exponent range, 8 significand bits.

    Args:
        x: floating tensor of any dtype (float64 is rounded once, eq. P9).
        rounding: ``NEAREST_EVEN`` (eq. P5; ``|x| ≥ 2^128·(1 − 2^−9)`` overflows to ±inf) or ``TRUNCATE``
            (eq. P6; never overflows).

    Returns:
        A ``torch.bfloat16`` tensor of the same shape. NaN stays NaN in both modes (its payload is not kept).

    Raises:
        ValueError: if ``x`` is not a floating tensor or ``rounding`` is not a :class:`Bf16Rounding`.

    Example:
        >>> x = torch.tensor([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-7 + 2**-8)])
        >>> to_bf16(x)
        tensor([ 1.0000,  1.0156, -1.0156], dtype=torch.bfloat16)
        >>> to_bf16(x, Bf16Rounding.TRUNCATE)
        tensor([ 1.0000,  1.0078, -1.0078], dtype=torch.bfloat16)
    """
    x = _check_tensor(x, "to_bf16")
    if not isinstance(rounding, Bf16Rounding):
        raise ValueError(f"to_bf16: rounding must be a Bf16Rounding, got {rounding!r}")
    x32 = _to_float32(x)
    if rounding is Bf16Rounding.NEAREST_EVEN:
        return x32.to(torch.bfloat16)
    bits = x32.view(torch.int32)
    # A NaN whose payload sits only in the low 16 bits would become inf once they are cut: quieten it first
    # (docs/math.md, eq. P6).
    bits = torch.where(torch.isnan(x32), bits | _QUIET_BIT, bits)
    # The masked pattern is a bf16 value, so this last conversion is exact.
    return (bits & _HIGH_HALF).view(torch.float32).to(torch.bfloat16)


def to_fp8(x: torch.Tensor, fmt: FloatFormat = FloatFormat.FP8_E4M3, saturate: bool = True) -> torch.Tensor:
    """Cast to an 8-bit float, round to nearest even (eq. P4).

    Args:
        x: floating tensor of any dtype (float64 is rounded once, eq. P9).
        fmt: ``FloatFormat.FP8_E4M3`` or ``FloatFormat.FP8_E5M2``.
        saturate: True clamps to ``±max_finite`` before rounding (eq. P8), for finite values and ±inf alike,
            as ONNX ``Cast`` with ``saturate=1`` does for both formats. False is ``Tensor.to(fmt.dtype)`` as is;
            measured on torch 2.13 (CPU): E4M3 saturates anyway (finite overflow and ±inf give ±448, never NaN
            — ONNX ``saturate=0`` would give NaN), E5M2 rounds to nearest even with IEEE overflow
            (``|x| ≥ 61440`` and ±inf give ±inf).

    Returns:
        A tensor of ``fmt.dtype`` with the shape of ``x``. NaN stays NaN.

    Raises:
        ValueError: if ``x`` is not floating, ``fmt`` not an fp8 :class:`FloatFormat` or ``saturate`` not a bool.

    Example:
        >>> x = torch.tensor([0.3, 1e5, float("-inf")])
        >>> to_fp8(x, FloatFormat.FP8_E5M2)
        tensor([ 3.1250e-01,  5.7344e+04, -5.7344e+04], dtype=torch.float8_e5m2)
        >>> to_fp8(x, FloatFormat.FP8_E5M2, saturate=False)
        tensor([0.3125,    inf,   -inf], dtype=torch.float8_e5m2)
    """
    x = _check_tensor(x, "to_fp8")
    if fmt not in _FP8:
        raise ValueError(f"to_fp8: fmt must be FloatFormat.FP8_E4M3 or FloatFormat.FP8_E5M2, got {fmt!r}")
    if not isinstance(saturate, bool):
        raise ValueError(f"to_fp8: saturate must be a bool, got {saturate!r}")
    x32 = _to_float32(x)
    if saturate:  # max_finite is a float32: clamping, then rounding saturates (docs/math.md, eq. P8); NaN passes
        x32 = x32.clamp(-fmt.max_finite, fmt.max_finite)
    return x32.to(fmt.dtype)


# The keyword options each format's cast accepts, so cast() can reject a misplaced one by name.
_OPTIONS = {FloatFormat.FP16: (), FloatFormat.BF16: ("rounding",), **{f: ("saturate",) for f in _FP8}}


def cast(x: torch.Tensor, fmt: FloatFormat, **options: Any) -> torch.Tensor:
    """Cast ``x`` to ``fmt``: :func:`to_fp16`, :func:`to_bf16` or :func:`to_fp8` by format.

    Args:
        x: floating tensor.
        fmt: a :class:`FloatFormat`.
        **options: ``rounding=`` for ``BF16``, ``saturate=`` for the fp8 formats, nothing for ``FP16``.

    Returns:
        A tensor of ``fmt.dtype``.

    Raises:
        ValueError: if ``fmt`` is not a :class:`FloatFormat`, an option does not apply to ``fmt``, or the
            target cast rejects ``x`` or an option value.

    Example:
        >>> cast(torch.tensor([1000.0]), FloatFormat.FP8_E4M3, saturate=True)
        tensor([448.], dtype=torch.float8_e4m3fn)
        >>> cast(torch.tensor([1.0]), FloatFormat.FP16, saturate=True)
        Traceback (most recent call last):
        ...
        ValueError: cast: option 'saturate' does not apply to FloatFormat.FP16 (accepted: none)
    """
    if not isinstance(fmt, FloatFormat):
        raise ValueError(f"cast: fmt must be a FloatFormat, got {fmt!r}")
    for name in options:
        if name not in _OPTIONS[fmt]:
            accepted = ", ".join(_OPTIONS[fmt]) or "none"
            raise ValueError(f"cast: option {name!r} does not apply to {fmt} (accepted: {accepted})")
    if fmt is FloatFormat.FP16:
        return to_fp16(x)
    if fmt is FloatFormat.BF16:
        return to_bf16(x, **options)
    return to_fp8(x, fmt, **options)


def round_trip(x: torch.Tensor, fmt: FloatFormat, **options: Any) -> torch.Tensor:
    """``cast(x, fmt, **options)`` read back as float32: the fake-cast for simulation and error measurement.

    Every value of every format is a float32, so reading back is exact and the error is the cast's alone:
    relative error at most ``2^−(m+1)`` in the normal range (eq. P4), below ``2^−m`` for bf16 truncation (eq. P6).
    Like every cast here, the result is detached from autograd; training wraps it in an STE
    (:mod:`lowbit.functional.ste`).

    Args:
        x, fmt, **options: as for :func:`cast`.

    Returns:
        A float32 tensor of the shape of ``x`` (float64 input too).

    Raises:
        ValueError: as :func:`cast`.

    Example:
        >>> round_trip(torch.tensor([3.14159, 1e-3]), FloatFormat.BF16)
        tensor([3.1406e+00, 9.9945e-04])
    """
    return cast(x, fmt, **options).to(torch.float32)
