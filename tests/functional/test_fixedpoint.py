"""lowbit.functional.fixedpoint against exact Python-integer and Fraction oracles (docs/math.md, eqs. F1–F8).

No oracle here uses torch or floats: multipliers are read with ``float.as_integer_ratio`` and every product,
quotient and rounding is done on unbounded Python ints, so the int64 tricks of the module are checked, not echoed.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lowbit.functional.fixedpoint import (
    INT32_MAX,
    INT32_MIN,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)

int32s = st.integers(INT32_MIN, INT32_MAX)
EXTREMES = [INT32_MIN, INT32_MIN + 1, -(2**30), -(2**15), -1, 0, 1, 2**15, 2**30, INT32_MAX - 1, INT32_MAX]


def round_half_away(v: Fraction) -> int:
    magnitude = math.floor(abs(v) + Fraction(1, 2))
    return magnitude if v >= 0 else -magnitude


def oracle_quantize_multiplier(m: float) -> tuple[int, int]:
    """Eqs. F1–F2 with the exponent found by exact comparison with powers of two, not by frexp."""
    if m == 0:
        return 0, 0
    v = Fraction(m)
    e = v.numerator.bit_length() - v.denominator.bit_length()
    while v >= Fraction(2) ** e:
        e += 1
    while v < Fraction(2) ** (e - 1):
        e -= 1
    m0 = round_half_away(v * Fraction(2) ** (31 - e))
    if m0 == 2**31:
        m0, e = 2**30, e + 1
    return (0, 0) if e < -31 else (m0, e)


def oracle_high_mul(a: int, b: int) -> int:
    """Eq. F5: round half up of a·b / 2^31 (ARM SQRDMULH), saturated."""
    if a == b == INT32_MIN:
        return INT32_MAX
    return math.floor(Fraction(a * b, 2**31) + Fraction(1, 2))


def oracle_high_mul_c(a: int, b: int) -> int:
    """Eq. F4 read literally, with C's truncating division written out on Python ints."""
    if a == b == INT32_MIN:
        return INT32_MAX
    t = a * b + (2**30 if a * b >= 0 else 1 - 2**30)
    return t // 2**31 if t >= 0 else -((-t) // 2**31)


def oracle_divide_by_pot(x: int, e: int) -> int:
    return round_half_away(Fraction(x, 2**e))


def oracle_multiply(x: int, m0: int, shift: int) -> int:
    """Eq. F7 on Python ints, with the documented saturation of x · 2^left."""
    shifted = min(max(x * 2 ** max(shift, 0), INT32_MIN), INT32_MAX)
    return oracle_divide_by_pot(oracle_high_mul(shifted, m0), max(-shift, 0))


def mbqm(x: int, m0: int, shift: int) -> int:
    return int(multiply_by_quantized_multiplier(x, m0, shift))


# --- quantize_multiplier -------------------------------------------------------------------------------------


GOLDEN_MULTIPLIERS = [
    (0.25, (1073741824, -1)),
    (0.75, (1610612736, 0)),
    (1.25, (1342177280, 1)),
    (2.0**-31, (1073741824, -30)),
    (2.0**-33, (0, 0)),
    (2.0**-32, (1073741824, -31)),
    (2.0**-32 - 2.0**-64, (1073741824, -31)),  # under 2^−32 yet kept: renormalised before the flush
    (math.nextafter(2.0**-32 - 2.0**-64, 0), (0, 0)),  # the largest flushed multiplier
    (0.0, (0, 0)),
    (1.0, (1073741824, 1)),
    (1 - 2.0**-40, (1073741824, 1)),  # q·2^31 rounds to 2^31: renormalised
    (0.5 + 2.0**-32, (2**30 + 1, 0)),  # q·2^31 = 2^30 + 1/2: away from zero, not to even
    (5e-324, (0, 0)),  # smallest subnormal
]


@pytest.mark.parametrize("m, expected", GOLDEN_MULTIPLIERS)
def test_quantize_multiplier_golden(m: float, expected: tuple[int, int]) -> None:
    got = quantize_multiplier(m)
    assert got == expected
    assert all(type(v) is int for v in got)


@settings(deadline=None)
@given(st.floats(min_value=0, max_value=2.0**100, allow_nan=False, allow_infinity=False))
def test_quantize_multiplier_matches_exact_oracle(m: float) -> None:
    m0, shift = quantize_multiplier(m)
    assert (m0, shift) == oracle_quantize_multiplier(m)
    if m0:
        assert 2**30 <= m0 < 2**31
        # eq. F3: relative error at most 2^−31
        assert abs(Fraction(m0) * Fraction(2) ** (shift - 31) - Fraction(m)) <= Fraction(m) / 2**31


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_quantize_multiplier_tensor_matches_scalar(dtype: torch.dtype) -> None:
    values = [g[0] for g in GOLDEN_MULTIPLIERS] + [1 - 2.0**-20, 3.3e-5, 0.1, 7.0, 1e20, 1e-40]
    m = torch.tensor(values, dtype=dtype)
    m0, shift = quantize_multiplier(m)
    assert m0.dtype == torch.int32 and shift.dtype == torch.int32 and m0.shape == m.shape
    expected = [quantize_multiplier(v) for v in m.tolist()]  # the values as stored in dtype
    assert list(zip(m0.tolist(), shift.tolist())) == expected


# --- saturating_rounding_doubling_high_mul -------------------------------------------------------------------


def test_high_mul_extremes_and_ties() -> None:
    pairs = [(a, b) for a in EXTREMES for b in EXTREMES] + [(2**15, 3 * 2**15), (-(2**15), 3 * 2**15)]
    a = torch.tensor([p[0] for p in pairs], dtype=torch.int32)
    b = torch.tensor([p[1] for p in pairs], dtype=torch.int32)
    got = saturating_rounding_doubling_high_mul(a, b)
    assert got.dtype == torch.int32
    assert got.tolist() == [oracle_high_mul(x, y) for x, y in pairs]
    assert int(saturating_rounding_doubling_high_mul(INT32_MIN, INT32_MIN)) == INT32_MAX
    # a·b = ±2^30 is a tie: +1/2 goes up to 1, −1/2 goes up to 0 (round half up, eq. F5)
    assert saturating_rounding_doubling_high_mul(torch.tensor([2**15, -(2**15)]), 2**15).tolist() == [1, 0]


def test_high_mul_random_pairs() -> None:
    rng = random.Random(0)
    pairs = [(rng.randint(INT32_MIN, INT32_MAX), rng.randint(INT32_MIN, INT32_MAX)) for _ in range(20000)]
    pairs += [(rng.choice(EXTREMES), rng.randint(INT32_MIN, INT32_MAX)) for _ in range(2000)]
    a = torch.tensor([p[0] for p in pairs], dtype=torch.int32)
    b = torch.tensor([p[1] for p in pairs], dtype=torch.int32)
    assert saturating_rounding_doubling_high_mul(a, b).tolist() == [oracle_high_mul(x, y) for x, y in pairs]


@settings(deadline=None)
@given(int32s, int32s)
def test_high_mul_property(a: int, b: int) -> None:
    assert oracle_high_mul(a, b) == oracle_high_mul_c(a, b)  # eq. F5 is eq. F4
    assert int(saturating_rounding_doubling_high_mul(a, b)) == oracle_high_mul(a, b)
    assert int(saturating_rounding_doubling_high_mul(torch.tensor([a]), torch.tensor([b]))[0]) == oracle_high_mul(a, b)


# --- rounding_divide_by_pot ----------------------------------------------------------------------------------


@pytest.mark.parametrize("exponent", range(32))
def test_divide_by_pot_every_exponent(exponent: int) -> None:
    rng = random.Random(exponent)
    values = list(EXTREMES) + [2, -2, 3, -3]
    for k in range(-4, 4):  # ties k·2^e + 2^(e−1) and their neighbours
        tie = k * 2**exponent + (2 ** (exponent - 1) if exponent else 0)
        values += [v for v in (tie - 1, tie, tie + 1) if INT32_MIN <= v <= INT32_MAX]
    values += [rng.randint(INT32_MIN, INT32_MAX) for _ in range(3000)]
    near = min(2 ** (exponent + 2), INT32_MAX)  # a few multiples of 2^e, where every remainder matters
    values += [rng.randint(-near, near) for _ in range(1000)]
    x = torch.tensor(values, dtype=torch.int32)
    got = rounding_divide_by_pot(x, exponent)
    assert got.dtype == torch.int32
    assert got.tolist() == [oracle_divide_by_pot(v, exponent) for v in values]


def test_divide_by_pot_per_channel_exponent() -> None:
    rng = random.Random(1)
    x = torch.tensor([[rng.randint(INT32_MIN, INT32_MAX) for _ in range(32)] for _ in range(50)], dtype=torch.int32)
    exponents = torch.arange(32, dtype=torch.int32)
    got = rounding_divide_by_pot(x, exponents)
    expected = [[int(rounding_divide_by_pot(int(v), e)) for e, v in enumerate(row)] for row in x.tolist()]
    assert got.tolist() == expected


# --- multiply_by_quantized_multiplier ------------------------------------------------------------------------


def test_multiply_golden() -> None:
    assert mbqm(10000, *quantize_multiplier(0.00097656)) == 10


def test_multiply_saturates_shifted_input() -> None:
    # x · 2^2 = 2^32 saturates to INT32_MAX before the high multiply by 1/2 (m0 = 2^30): ≈ 2^30, not 2^31.
    assert mbqm(2**30, 2**30, 2) == 2**30
    assert mbqm(-(2**30), 2**30, 2) == -(2**30)
    assert mbqm(5, 2**30, 1000) == mbqm(5, 2**30, 31) == 2**30  # shifts past 31 change nothing
    assert mbqm(-1, 2**30, 1000) == mbqm(-1, 2**30, 31) == -(2**30)
    assert mbqm(0, 2**30, 1000) == 0


@settings(deadline=None)
@given(int32s, int32s, st.integers(-31, 40))
def test_multiply_matches_integer_pipeline(x: int, m0: int, shift: int) -> None:
    assert mbqm(x, m0, shift) == oracle_multiply(x, m0, shift)


def check_close_to_exact(x: int, m: float) -> None:
    """Eq. F8 and its two consequences, for an x · 2^left that does not saturate."""
    exact = Fraction(x) * Fraction(m)
    got = mbqm(x, *quantize_multiplier(m))
    assert abs(got - exact) < Fraction(3, 2)
    assert abs(got - round_half_away(exact)) <= 1
    if abs(exact) < 2**29:
        assert abs(got - exact) < 1  # got is ⌊x·m⌋ or ⌈x·m⌉


@settings(deadline=None)
@given(st.floats(min_value=0, max_value=1, exclude_min=True, exclude_max=True), st.integers(-(2**24), 2**24))
def test_multiply_below_one_moderate_x(m: float, x: int) -> None:
    check_close_to_exact(x, m)


@settings(deadline=None)
@given(st.floats(min_value=0, max_value=1, exclude_min=True, exclude_max=True), int32s)
def test_multiply_below_one_any_int32(m: float, x: int) -> None:
    # m ∈ [1 − 2^−32, 1) quantizes to shift = 1, and x · 2 saturates for |x| ≥ 2^30 (see the next test).
    assume(abs(x) * 2 ** max(quantize_multiplier(m)[1], 0) <= INT32_MAX)
    check_close_to_exact(x, m)


def test_multiply_just_below_one_saturates() -> None:
    # A documented trap, TFLite's too: m = 1 − 2^−40 is (2^30, shift 1), so INT32_MAX · 2 saturates first.
    assert quantize_multiplier(1 - 2.0**-40) == (2**30, 1)
    assert mbqm(INT32_MAX, 2**30, 1) == 2**30


@settings(deadline=None)
@given(st.floats(min_value=1, max_value=2.0**20, allow_nan=False), st.data())
def test_multiply_above_one_is_within_one_of_exact(m: float, data: st.DataObject) -> None:
    bound = INT32_MAX // 2 ** quantize_multiplier(m)[1]  # no saturation of x · 2^shift
    check_close_to_exact(data.draw(st.integers(-bound, bound), label="x"), m)


def test_multiply_per_channel_matches_scalar() -> None:
    rng = random.Random(2)
    m = torch.tensor([1e-7, 3.1e-4, 0.02, 0.5, 0.999, 1.0, 2.5, 100.0, 0.0, 2.0**-33], dtype=torch.float64)
    m0, shift = quantize_multiplier(m)
    x = torch.tensor([[rng.randint(-(2**20), 2**20) for _ in range(len(m))] for _ in range(40)], dtype=torch.int32)
    x[0] = INT32_MAX  # saturating row
    x[1] = INT32_MIN
    got = multiply_by_quantized_multiplier(x, m0, shift)
    assert got.dtype == torch.int32 and got.shape == x.shape
    scalar = [quantize_multiplier(v) for v in m.tolist()]
    expected = [[mbqm(v, *scalar[c]) for c, v in enumerate(row)] for row in x.tolist()]
    assert got.tolist() == expected
    # and along axis 0, with the qparams shaped [C, 1]
    got_t = multiply_by_quantized_multiplier(x.T.contiguous(), m0[:, None], shift[:, None])
    assert got_t.T.tolist() == expected


# --- errors --------------------------------------------------------------------------------------------------

F32 = torch.tensor([1.0])
I32 = torch.tensor([1], dtype=torch.int32)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: quantize_multiplier(-0.5), "m"),
        (lambda: quantize_multiplier(float("nan")), "m"),
        (lambda: quantize_multiplier(float("inf")), "m"),
        (lambda: quantize_multiplier(10**400), "m"),
        (lambda: quantize_multiplier("0.5"), "m"),
        (lambda: quantize_multiplier(True), "m"),
        (lambda: quantize_multiplier(torch.tensor([1, 2])), "m"),
        (lambda: quantize_multiplier(torch.tensor([0.5, -1.0])), "m"),
        (lambda: quantize_multiplier(torch.tensor([0.5, float("nan")])), "m"),
        (lambda: saturating_rounding_doubling_high_mul(F32, 1), "a"),
        (lambda: saturating_rounding_doubling_high_mul(1, F32.double()), "b"),
        (lambda: saturating_rounding_doubling_high_mul(2**31, 1), "a"),
        (lambda: saturating_rounding_doubling_high_mul(1, torch.tensor([2**40])), "b"),
        (lambda: saturating_rounding_doubling_high_mul(torch.tensor([True]), 1), "a"),
        (lambda: saturating_rounding_doubling_high_mul(torch.ones(3, dtype=torch.int32), I32.repeat(2)), "b"),
        (lambda: rounding_divide_by_pot(F32, 1), "x"),
        (lambda: rounding_divide_by_pot(1.5, 1), "x"),
        (lambda: rounding_divide_by_pot(1, 32), "exponent"),
        (lambda: rounding_divide_by_pot(1, -1), "exponent"),
        (lambda: rounding_divide_by_pot(1, 1.0), "exponent"),
        (lambda: rounding_divide_by_pot(I32, torch.tensor([0, 32])), "exponent"),
        (lambda: rounding_divide_by_pot(torch.ones(3, dtype=torch.int32), I32.repeat(2)), "exponent"),
        (lambda: multiply_by_quantized_multiplier(F32, 2**30, 0), "x"),
        (lambda: multiply_by_quantized_multiplier(True, 2**30, 0), "x"),
        (lambda: multiply_by_quantized_multiplier(1, 0.5, 0), "m0"),
        (lambda: multiply_by_quantized_multiplier(1, 2**31, 0), "m0"),
        (lambda: multiply_by_quantized_multiplier(1, 2**30, -32), "shift"),
        (lambda: multiply_by_quantized_multiplier(1, 2**30, F32), "shift"),
        (lambda: multiply_by_quantized_multiplier(1, 2**30, 2**40), "shift"),
    ],
)
def test_errors_name_the_argument(call, name: str) -> None:
    with pytest.raises(ValueError, match=rf"^{name} "):
        call()
