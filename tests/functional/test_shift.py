"""AP2 and shift products against float64 formula references (docs/math.md eq. B5.1, B5.2)."""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lowbit.functional.shift import ap2, ap2_ste, shift_mul

FLOAT_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def ap2_formula(v: float) -> float:
    """The paper's formula, sign(v)·2^round(log2|v|), in float64 through math.log2."""
    if v == 0:
        return 0.0
    return math.copysign(2.0 ** round(math.log2(abs(v))), v)


def ap2_exact(v: float) -> float:
    """The same rule decided in rational arithmetic: |v| = m·2^e rounds up to 2^e iff 2m² ≥ 1 (m ≥ 1/√2)."""
    if v == 0:
        return 0.0
    m, e = math.frexp(abs(v))
    k = e if 2 * Fraction(m) ** 2 >= 1 else e - 1
    return math.copysign(math.ldexp(1.0, k), v)


@given(st.lists(st.floats(-(2.0**100), 2.0**100, allow_nan=False, allow_subnormal=False, width=32), min_size=1,
                max_size=64))
def test_ap2_float32_matches_the_float64_formula(values):
    x = torch.tensor(values, dtype=torch.float32)
    assert ap2(x).tolist() == [ap2_formula(v) for v in x.tolist()]


@given(st.lists(st.floats(-1e300, 1e300, allow_nan=False, allow_infinity=False), min_size=1, max_size=64))
def test_ap2_float64_matches_the_exact_rule(values):
    x = torch.tensor(values, dtype=torch.float64)
    assert ap2(x).tolist() == [ap2_exact(v) for v in values]


def test_ap2_is_odd_and_changes_magnitudes_by_at_most_sqrt2():
    x = torch.randn(10_000, dtype=torch.float64) * torch.logspace(-20, 20, 10_000, dtype=torch.float64)
    y = ap2(x)
    assert torch.equal(ap2(-x), -y)
    ratio = y / x
    assert bool((ratio >= 2**-0.5).all()) and bool((ratio <= 2**0.5).all())
    log2 = torch.log2(y.abs())
    assert torch.equal(log2, log2.round())


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_exact_powers_of_two_are_unchanged(dtype):
    info = torch.finfo(dtype)
    # from the smallest subnormal, tiny·eps, to the largest power of two below max
    exponents = range(math.frexp(info.tiny * info.eps)[1] - 1, math.frexp(info.max)[1])
    values = [math.ldexp(1.0, k) for k in exponents]
    x = torch.tensor(values + [-v for v in values], dtype=torch.float64).to(dtype)
    assert bool((x != 0).all()) and bool(x.isfinite().all())
    assert torch.equal(ap2(x), x)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_the_sqrt2_boundary_is_decided_exactly(dtype):
    # The tie |x| = √2·2^k is irrational, so there are no ties: take the representable neighbours on both sides of
    # each boundary (within a few ulps) and compare with the rational rule.
    np_dtype = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}.get(dtype)
    values = []
    for k in range(-14, 15):  # inside float16's normal range
        b = math.sqrt(2) * 2.0**k
        if np_dtype is None:  # bfloat16: walk its grid in float32 units of 2^-7 relative
            base = torch.tensor(b, dtype=torch.bfloat16).float().item()
            ulp = math.ldexp(1.0, math.frexp(base)[1] - 8)
            values += [base + d * ulp for d in range(-3, 4)]
        else:
            c = np_dtype(b)
            lo = hi = c
            values.append(float(c))
            for _ in range(3):
                lo = np.nextafter(lo, np_dtype(0))
                hi = np.nextafter(hi, np_dtype(np.inf))
                values += [float(lo), float(hi)]
    x = torch.tensor(values, dtype=torch.float64).to(dtype)
    assert ap2(x).tolist() == [ap2_exact(v) for v in x.tolist()]


def test_zero_and_non_finite_values_are_their_own_approximation():
    x = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan])
    y = ap2(x)
    assert y[:4].tolist() == [0.0, 0.0, math.inf, -math.inf] and math.isnan(y[4].item())
    assert math.copysign(1.0, y[1].item()) == -1.0  # −0 keeps its sign


def test_subnormals_and_overflow():
    tiny = torch.tensor([2.0**-149, 3 * 2.0**-149, 2.0**-140 * 1.3], dtype=torch.float32)
    assert ap2(tiny).tolist() == [2.0**-149, 2.0**-147, 2.0**-140]
    big = torch.tensor([torch.finfo(torch.float32).max, 2.0**127 * 1.4], dtype=torch.float32)
    assert ap2(big).tolist() == [math.inf, 2.0**127]  # rounds to 2^128, past float32's range


def test_ap2_keeps_dtype_shape_and_rejects_integers():
    x = torch.randn(2, 3, 4, dtype=torch.bfloat16)
    y = ap2(x)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape
    with pytest.raises(ValueError, match="dtype torch.int64"):
        ap2(torch.tensor([1, 2]))


def test_ap2_is_detached_and_ap2_ste_passes_the_gradient_straight_through():
    x = torch.tensor([0.3, -5.0, 0.0], requires_grad=True)
    assert not ap2(x).requires_grad
    y = ap2_ste(x)
    assert y.tolist() == [0.25, -4.0, 0.0]
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert x.grad.tolist() == [1.0, 2.0, 3.0]


@given(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=8, max_size=8),
    st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32).filter(lambda v: v != 0), min_size=8, max_size=8),
)
def test_shift_mul_is_ldexp_by_the_rounded_log2(xs, ys):
    x = torch.tensor(xs, dtype=torch.float32)
    y = torch.tensor(ys, dtype=torch.float32)
    k = torch.tensor([round(math.log2(abs(v))) for v in y.tolist()])
    expected = torch.ldexp(x, k) * torch.sign(y)
    assert torch.equal(shift_mul(x, y), expected)


def test_shift_mul_by_zero_is_zero_and_broadcasts():
    x = torch.arange(6.0).view(2, 3)
    y = torch.tensor([0.0, 0.7, -3.0])
    assert shift_mul(x, y).tolist() == [[0.0, 0.5, -8.0], [0.0, 2.0, -20.0]]


def test_shift_mul_gradients():
    x = torch.tensor([3.0, -1.0], requires_grad=True)
    y = torch.tensor([0.7, 5.0], requires_grad=True)
    shift_mul(x, y).sum().backward()
    assert x.grad.tolist() == [0.5, 4.0]  # exact: ∂(x·ap2(y))/∂x = ap2(y)
    assert y.grad.tolist() == [3.0, -1.0]  # straight through ap2: ∂/∂y ≈ x
