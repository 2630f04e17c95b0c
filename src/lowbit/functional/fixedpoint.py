"""Integer requantization as gemmlowp and TFLite do it: a real multiplier stored as a Q31 integer and a shift.

An int8 kernel accumulates in int32 and must rescale the accumulator by a real ``m = s_in · s_w / s_out``
without touching floats. ``m`` is stored once as ``(m0, shift)`` with ``m ≈ m0 · 2^(shift − 31)``
(docs/math.md, eq. F1) and applied at run time by a rounding high multiply and a rounding shift (eq. F7).
These are readable reference kernels, bit-exact with TFLite's double-rounding ``MultiplyByQuantizedMultiplier``
wherever the C++ is defined (it is not when ``x · 2^shift`` overflows int32; see
:func:`multiply_by_quantized_multiplier`).

Integer arguments are Python ints or integer tensors holding int32 values; they broadcast against each other.
Every result is an int32 tensor. Intermediates are carried in int64, where none of them can wrap.

Example:
    >>> import torch
    >>> m0, shift = quantize_multiplier(0.00097656)
    >>> m0, shift
    (2147478150, -10)
    >>> multiply_by_quantized_multiplier(torch.tensor([10000, -10000, 3]), m0, shift)
    tensor([ 10, -10,   0], dtype=torch.int32)
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "INT32_MIN",
    "INT32_MAX",
    "quantize_multiplier",
    "saturating_rounding_doubling_high_mul",
    "rounding_divide_by_pot",
    "multiply_by_quantized_multiplier",
]

# The smallest int32: the bounds of the fixed-point arithmetic (gemmlowp's saturating ops).
INT32_MIN = -(2**31)
# The largest int32.
INT32_MAX = 2**31 - 1

IntLike = torch.Tensor | int


def _device(*values: object) -> torch.device | None:
    # Python ints join the first tensor's device, so mixing a scalar shift with a CUDA tensor just works.
    return next((v.device for v in values if isinstance(v, torch.Tensor)), None)


def _int_operand(name: str, value: object, low: int, high: int, device: torch.device | None) -> torch.Tensor:
    """``value`` as an int64 tensor after checking it is an integer (not float, not bool) in ``[low, high]``."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor or an int, got a {value.dtype} tensor")
        t = value.to(torch.int64)
        if t.numel() and (int(t.min()) < low or int(t.max()) > high):
            raise ValueError(
                f"{name} must hold values in {low}..{high}, got values in {int(t.min())}..{int(t.max())}"
            )
        return t
    # bool is an int subclass; True as an operand is a bug, not a 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer tensor or an int, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in {low}..{high}, got {value}")
    return torch.tensor(value, dtype=torch.int64, device=device)


def _broadcastable(**tensors: torch.Tensor) -> None:
    try:
        torch.broadcast_shapes(*(t.shape for t in tensors.values()))
    except RuntimeError:
        shapes = ", ".join(f"{name} {tuple(t.shape)}" for name, t in tensors.items())
        raise ValueError(f"{list(tensors)[-1]} does not broadcast: shapes {shapes}") from None


def quantize_multiplier(m: float | torch.Tensor) -> tuple[int, int] | tuple[torch.Tensor, torch.Tensor]:
    """Split a real multiplier into a Q31 mantissa and a power-of-two shift (docs/math.md, eqs. F1–F2).

    ``m = q · 2^e`` with ``q ∈ [1/2, 1)`` (``frexp``); ``m0 = round_half_away(q · 2^31)``, ``shift = e``. When
    ``q`` rounds up to 1 (``m0 = 2^31``, not an int32), ``m0`` is halved and ``shift`` incremented. Multipliers
    below ``2^−32 − 2^−64`` (``shift < −31`` after renormalising) are flushed to ``(0, 0)``, as TFLite does: a
    right shift past 31 would discard every bit anyway. ``0`` gives ``(0, 0)``. The relative error is at most
    ``2^−31`` (eq. F3).

    Args:
        m: a finite non-negative Python float (or int), or a float tensor of per-channel multipliers (any shape,
            usually 1-D; float16/bfloat16/float32 values are widened to float64 exactly).

    Returns:
        ``(m0, shift)`` as Python ints for a scalar ``m``; for a tensor, two int32 tensors shaped like ``m`` on
        its device (int32 is how TFLite stores per-channel multipliers and shifts). ``m0`` is 0 or in
        ``[2^30, 2^31)``.

    Raises:
        ValueError: ``m`` negative, NaN or Inf, or not a float / float tensor.

    Example:
        >>> quantize_multiplier(0.75), quantize_multiplier(1.25), quantize_multiplier(2.0**-33)
        ((1610612736, 0), (1342177280, 1), (0, 0))
        >>> m0, shift = quantize_multiplier(torch.tensor([0.25, 0.0, 3.0]))
        >>> m0, shift
        (tensor([1073741824,          0, 1610612736], dtype=torch.int32),
         tensor([-1,  0,  2], dtype=torch.int32))
    """
    if isinstance(m, torch.Tensor):
        return _quantize_multiplier_tensor(m)
    if not isinstance(m, (int, float)) or isinstance(m, bool):
        raise ValueError(f"m must be a float or a float tensor, got {m!r}")
    try:
        value = float(m)
    except OverflowError:  # a Python int beyond the float range
        raise ValueError(f"m must be finite, got {m!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"m must be a finite non-negative multiplier, got {m!r}")
    if value == 0.0:
        return 0, 0
    q, shift = math.frexp(value)  # value = q · 2^shift, q ∈ [1/2, 1)
    scaled = q * 2.0**31  # exact: scaling a double by a power of two
    m0 = math.floor(scaled)
    # Round half away from zero (scaled > 0). scaled − floor(scaled) is exact, so the tie test is exact too.
    m0 += int(scaled - m0 >= 0.5)
    if m0 == 2**31:  # q rounded up to 1: renormalise so m0 fits int32 (eq. F2)
        m0, shift = 2**30, shift + 1
    if shift < -31:  # flush: every bit would be shifted out (eq. F2)
        return 0, 0
    return m0, shift


def _quantize_multiplier_tensor(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Vectorised :func:`quantize_multiplier`, step for step the same as the scalar path."""
    if not m.is_floating_point():
        raise ValueError(f"m must be a float tensor of multipliers, got a {m.dtype} tensor")
    m64 = m.to(torch.float64)
    bad = ~(torch.isfinite(m64) & (m64 >= 0))
    if bool(bad.any()):
        raise ValueError(f"m must hold finite non-negative multipliers, got {m64[bad][:4].tolist()}")
    q, exponent = torch.frexp(m64)
    scaled = q * 2.0**31
    floor = torch.floor(scaled)
    m0 = (floor + (scaled - floor >= 0.5)).to(torch.int64)
    full = m0 == 2**31
    m0 = torch.where(full, 2**30, m0)
    shift = exponent.to(torch.int64) + full
    # frexp(0) is (0, 0) already; naming the zeros too keeps this correct on backends that disagree.
    dead = (shift < -31) | (m64 == 0)
    m0 = torch.where(dead, 0, m0)
    shift = torch.where(dead, 0, shift)
    return m0.to(torch.int32), shift.to(torch.int32)


def _high_mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Eq. F4 on validated int64 tensors holding int32 values; returns int64."""
    product = a * b  # |a·b| ≤ 2^62: exact in int64
    # The sign-dependent nudge plus truncation rounds a·b / 2^31 half up, exactly as ARM's SQRDMULH (eq. F5).
    nudge = torch.where(product >= 0, 2**30, 1 - 2**30)
    high = torch.div(product + nudge, 2**31, rounding_mode="trunc")
    # (−2^31)² / 2^31 = 2^31 is the one result that does not fit int32.
    return torch.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, high)


def _divide_by_pot(x: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    """Eq. F6 on validated int64 tensors; returns int64."""
    mask = (1 << exponent) - 1
    remainder = x & mask  # two's complement: the low bits, a non-negative value even for negative x
    # Negative x rounds down in ">>"; one more unit of threshold makes its ties go toward −∞ too, i.e. away from 0.
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def saturating_rounding_doubling_high_mul(a: IntLike, b: IntLike) -> torch.Tensor:
    """The high 32 bits of ``2·a·b``, rounded: gemmlowp's ``SaturatingRoundingDoublingHighMul`` (eq. F4).

    ``(a·b + nudge) / 2^31`` truncated toward zero, ``nudge = 2^30`` if ``a·b ≥ 0`` else ``1 − 2^30``; that is
    ``⌊(a·b + 2^30) / 2^31⌋``, round half *up* (eq. F5) — negative ties go toward zero, unlike
    :func:`rounding_divide_by_pot`. The only overflow, ``a = b = INT32_MIN``, saturates to ``INT32_MAX``.

    Args:
        a, b: integer tensors holding int32 values, or Python ints; they broadcast.

    Returns:
        int32 tensor of the broadcast shape.

    Raises:
        ValueError: a float/bool operand, or a value outside int32, naming ``a`` or ``b``.

    Example:
        >>> saturating_rounding_doubling_high_mul(torch.tensor([2**30, -(2**15), INT32_MIN]), 2**15)
        tensor([ 16384,      0, -32768], dtype=torch.int32)
        >>> saturating_rounding_doubling_high_mul(INT32_MIN, INT32_MIN)
        tensor(2147483647, dtype=torch.int32)
    """
    device = _device(a, b)
    a64 = _int_operand("a", a, INT32_MIN, INT32_MAX, device)
    b64 = _int_operand("b", b, INT32_MIN, INT32_MAX, device)
    _broadcastable(a=a64, b=b64)
    return _high_mul(a64, b64).to(torch.int32)


def rounding_divide_by_pot(x: IntLike, exponent: IntLike) -> torch.Tensor:
    """``x / 2^exponent`` rounded half away from zero, in integers: gemmlowp's ``RoundingDivideByPOT`` (eq. F6).

    Args:
        x: integer tensor holding int32 values, or a Python int.
        exponent: 0..31, a Python int or an integer tensor broadcastable to ``x`` (per-channel shifts).

    Returns:
        int32 tensor of the broadcast shape.

    Raises:
        ValueError: a float/bool operand, ``x`` outside int32, ``exponent`` outside 0..31, or shapes that do not
            broadcast; the message names the argument.

    Example:
        >>> rounding_divide_by_pot(torch.tensor([5, -5, 6, -6, 7]), 1)
        tensor([ 3, -3,  3, -3,  4], dtype=torch.int32)
        >>> rounding_divide_by_pot(torch.tensor([[100, 100]]), torch.tensor([2, 3]))
        tensor([[25, 13]], dtype=torch.int32)
    """
    device = _device(x, exponent)
    x64 = _int_operand("x", x, INT32_MIN, INT32_MAX, device)
    e64 = _int_operand("exponent", exponent, 0, 31, device)
    _broadcastable(x=x64, exponent=e64)
    return _divide_by_pot(x64, e64).to(torch.int32)


def multiply_by_quantized_multiplier(x: IntLike, m0: IntLike, shift: IntLike) -> torch.Tensor:
    """``x · m`` rounded, with ``m = m0 · 2^(shift − 31)`` from :func:`quantize_multiplier` (eq. F7).

    ``left = max(shift, 0)``, ``right = max(−shift, 0)``; the result is
    ``rounding_divide_by_pot(saturating_rounding_doubling_high_mul(x · 2^left, m0), right)``, TFLite's
    double-rounding ``MultiplyByQuantizedMultiplier``. It lies within 1 of ``x · m`` while ``|x · m| < 2^29``
    (eq. F8).

    Overflow: TFLite computes ``x · 2^left`` in int32, where overflow is undefined behaviour in C++. Here it is
    computed exactly and **saturated** to ``[INT32_MIN, INT32_MAX]`` before the high multiply, so an
    overflowing input gives ``≈ ±m0`` rather than a wrapped value; the true product is outside
    int32 then anyway. Where TFLite is defined the two agree bit for bit.

    Args:
        x: integer tensor holding int32 values (typically an int32 accumulator), or a Python int.
        m0: int32 Q31 mantissa(s), a Python int or an integer tensor broadcastable to ``x``.
        shift: power-of-two exponent(s) ``≥ −31``, a Python int or an integer tensor broadcastable to ``x``.
            All shifts from 31 up give the same result: every non-zero ``x`` saturates.

    Returns:
        int32 tensor of the broadcast shape.

    Raises:
        ValueError: a float/bool operand, ``x`` or ``m0`` outside int32, ``shift < −31`` or beyond int32, or
            shapes that do not broadcast; the message names the argument.

    Example:
        >>> acc = torch.tensor([[1000, -1000], [37, 37]])  # per-channel along the last axis
        >>> m0, shift = quantize_multiplier(torch.tensor([0.1, 2.5]))
        >>> multiply_by_quantized_multiplier(acc, m0, shift)
        tensor([[  100, -2500],
                [    4,    93]], dtype=torch.int32)
    """
    device = _device(x, m0, shift)
    x64 = _int_operand("x", x, INT32_MIN, INT32_MAX, device)
    m064 = _int_operand("m0", m0, INT32_MIN, INT32_MAX, device)
    s64 = _int_operand("shift", shift, -31, INT32_MAX, device)
    _broadcastable(x=x64, m0=m064, shift=s64)
    # From 2^31 on, |x| · 2^left ≥ 2^31 for every non-zero x: it saturates (or is exactly INT32_MIN), so a
    # larger left shift changes nothing; capping it keeps |x| · 2^left ≤ 2^62, exact in int64.
    left = s64.clamp(0, 31)
    right = (-s64).clamp(min=0)
    shifted = (x64 * (1 << left)).clamp(INT32_MIN, INT32_MAX)
    return _divide_by_pot(_high_mul(shifted, m064), right).to(torch.int32)
