"""Packed ±1 products against float matrix products of the same signs (exact integers)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.kernels import binary_matmul, pack_signs


def _signs(x):
    return torch.where(x >= 0, 1.0, -1.0).double()


@settings(max_examples=40)
@given(st.integers(1, 9), st.integers(1, 9), st.integers(1, 300), st.integers(0, 10_000))
def test_binary_matmul_equals_the_float_product_of_signs(m, n, k, seed):
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen)
    a[0, 0] = 0.0  # zero counts as +1
    product = binary_matmul(pack_signs(a), pack_signs(b), k)
    assert product.dtype == torch.int32
    assert torch.equal(product.double(), _signs(a) @ _signs(b).T)


@pytest.mark.parametrize("k", [1, 63, 64, 65, 128, 1000])
def test_threads_do_not_change_the_result(k):
    torch.manual_seed(k)
    a, b = pack_signs(torch.randn(33, k)), pack_signs(torch.randn(17, k))
    assert torch.equal(binary_matmul(a, b, k, threads=1), binary_matmul(a, b, k))


def test_bit_layout_is_element_j_in_bit_j():
    x = -torch.ones(2, 130)
    x[0, 0] = x[0, 63] = x[0, 64] = x[1, 129] = 1.0
    words = pack_signs(x).view(torch.int64)  # read the bits without uint64 arithmetic
    assert pack_signs(x).shape == (2, 3)
    assert int(words[0, 0]) == 1 - 2**63  # bits 0 and 63 (two's complement view)
    assert int(words[0, 1]) == 1 and int(words[0, 2]) == 0
    assert int(words[1, 2]) == 2 and int(words[1, 0]) == 0


def test_pack_along_another_axis():
    torch.manual_seed(0)
    x = torch.randn(70, 5)
    assert torch.equal(pack_signs(x, axis=0), pack_signs(x.T.contiguous()))


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="float tensor"):
        pack_signs(torch.ones(3, dtype=torch.int32))
    with pytest.raises(ValueError, match="NaN"):
        pack_signs(torch.tensor([float("nan")]))
    a = pack_signs(torch.randn(2, 100))
    with pytest.raises(ValueError, match="do not both hold k=300"):
        binary_matmul(a, a, 300)
    with pytest.raises(ValueError, match="uint64"):
        binary_matmul(torch.zeros(2, 2), a, 100)
