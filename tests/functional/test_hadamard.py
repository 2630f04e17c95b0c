"""The fast Walsh–Hadamard transform against scipy's Hadamard matrices, and the random sign diagonal.

Oracle: ``scipy.linalg.hadamard(n)`` (Sylvester's construction, computed by scipy) divided by ``√n``, applied as a
float64 matrix product.
"""

import math

import pytest
import scipy.linalg
import torch
from hypothesis import given
from hypothesis import strategies as st

from lowbit.functional.hadamard import fwht, is_power_of_two, random_signs

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("n", [1, 2, 4, 8, 64, 512, 1024])
def test_fwht_equals_scipy_hadamard_product(n):
    """fwht(x) = x·H_n/√n in float64, for a batch of rows with leading dimensions."""
    x = torch.randn(2, 3, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    matrix = torch.from_numpy(scipy.linalg.hadamard(n).astype("float64")) / math.sqrt(n)
    torch.testing.assert_close(fwht(x), x @ matrix, rtol=0, atol=1e-12)


@given(st.integers(0, 9), st.integers(0, 2**31 - 1))
def test_fwht_is_orthonormal_and_its_own_inverse(k, seed):
    """‖fwht(x)‖ = ‖x‖ and fwht(fwht(x)) = x (float32, a few ulps)."""
    x = torch.randn(4, 2**k, generator=torch.Generator().manual_seed(seed))
    y = fwht(x)
    torch.testing.assert_close(y.norm(dim=1), x.norm(dim=1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fwht(y), x, rtol=1e-5, atol=1e-5)


def test_fwht_spreads_one_large_value():
    """A one-hot vector turns into a flat one of magnitude 1/√n: the property a 1-bit code needs."""
    y = fwht(torch.eye(16)[5] * 3.0)
    torch.testing.assert_close(y.abs(), torch.full((16,), 3.0 / 4.0))


@pytest.mark.parametrize("n", [3, 6, 100, 0])
def test_fwht_refuses_other_lengths(n):
    with pytest.raises(ValueError, match=f"power of two, got {n}"):
        fwht(torch.zeros(2, n))


def test_is_power_of_two():
    assert [n for n in range(-2, 70) if is_power_of_two(n)] == [1, 2, 4, 8, 16, 32, 64]
    assert not is_power_of_two(True) and not is_power_of_two(4.0)


def test_random_signs_are_balanced_and_follow_the_generator():
    """Only ±1, about half each (within 5 standard deviations), the same for the same generator state."""
    signs = random_signs((100, 1000), torch.Generator().manual_seed(3))
    assert signs.dtype == torch.float32 and set(signs.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(signs.sum())) <= 5 * math.sqrt(signs.numel())
    assert torch.equal(signs, random_signs((100, 1000), torch.Generator().manual_seed(3)))
    assert not torch.equal(signs, random_signs((100, 1000), torch.Generator().manual_seed(4)))
