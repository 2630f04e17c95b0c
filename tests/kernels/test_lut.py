"""Bit-serial and look-up-table products of low-bit codes against int64 matrix products (exact)."""

import numba
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.functional.dorefa import dorefa_weight_codes
from lowbit.kernels.lut import bitserial_matmul, lut_matmul, pack_codes_bitplanes, pack_nibbles

TWO = min(2, numba.config.NUMBA_NUM_THREADS)


def _codes(gen, bits, *shape):
    return torch.randint(0, 1 << bits, shape, generator=gen)


@settings(max_examples=40)
@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 9), st.integers(1, 9), st.integers(1, 300),
       st.integers(0, 10_000))
def test_both_products_equal_the_integer_product(ba, bb, m, n, k, seed):
    gen = torch.Generator().manual_seed(seed)
    a, b = _codes(gen, ba, m, k), _codes(gen, bb, n, k)
    reference = a @ b.T
    serial = bitserial_matmul(pack_codes_bitplanes(a, ba), pack_codes_bitplanes(b, bb), k)
    table = lut_matmul(pack_nibbles(a), pack_nibbles(b), k)
    assert serial.dtype == table.dtype == torch.int64
    assert torch.equal(serial, reference) and torch.equal(table, reference)


@settings(max_examples=25)
@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 6), st.integers(1, 6), st.integers(1, 200),
       st.booleans(), st.integers(0, 10_000))
def test_zero_points_give_the_signed_product(ba, bb, m, n, k, per_row, seed):
    gen = torch.Generator().manual_seed(seed)
    a, b = _codes(gen, ba, m, k), _codes(gen, bb, n, k)
    if per_row:
        za, zb = _codes(gen, ba, m), _codes(gen, bb, n)
        reference = (a - za[:, None]) @ (b - zb[:, None]).T
    else:
        za, zb = int(_codes(gen, ba)), int(_codes(gen, bb))
        reference = (a - za) @ (b - zb).T
    serial = bitserial_matmul(pack_codes_bitplanes(a, ba), pack_codes_bitplanes(b, bb), k, za, zb)
    table = lut_matmul(pack_nibbles(a), pack_nibbles(b), k, zero_point_a=za, zero_point_b=zb)
    assert torch.equal(serial, reference) and torch.equal(table, reference)


@pytest.mark.parametrize("k", [1, 63, 64, 65, 129])
def test_eight_bit_activations_times_one_bit_weights(k):
    gen = torch.Generator().manual_seed(k)
    a, b = _codes(gen, 8, 5, k), _codes(gen, 1, 7, k)
    assert torch.equal(bitserial_matmul(pack_codes_bitplanes(a, 8), pack_codes_bitplanes(b, 1), k), a @ b.T)


def test_dorefa_odd_weight_codes():
    # module docstring: c = 2q − (2^k − 1), so Σ a·c = 2·Σ a·q − (2^k − 1)·Σ a
    gen = torch.Generator().manual_seed(7)
    bits, k = 2, 150
    c = dorefa_weight_codes(torch.randn(6, k, generator=gen), bits)[0].to(torch.int64)
    a = _codes(gen, bits, 4, k)
    levels = (1 << bits) - 1
    q = (c + levels) // 2
    product = 2 * bitserial_matmul(pack_codes_bitplanes(a, bits), pack_codes_bitplanes(q, bits), k)
    assert torch.equal(product - levels * a.sum(dim=1, keepdim=True), a @ c.T)


def test_layouts():
    codes = torch.zeros(2, 70, dtype=torch.int64)
    codes[0, 0], codes[0, 65], codes[1, 3] = 3, 2, 1
    planes = pack_codes_bitplanes(codes, 2).view(torch.int64)
    assert planes.shape == (2, 2, 2)
    assert planes[0].tolist() == [[1, 0], [8, 0]] and planes[1].tolist() == [[1, 2], [0, 0]]
    assert torch.equal(pack_codes_bitplanes(codes.T, 2, axis=0), pack_codes_bitplanes(codes, 2))
    nibbles = pack_nibbles(torch.tensor([[1, 2, 15]], dtype=torch.int8))
    assert nibbles.dtype == torch.uint8 and nibbles.tolist() == [[0x21, 0x0F]]


def test_threads_do_not_change_the_result():
    gen = torch.Generator().manual_seed(11)
    a, b = _codes(gen, 3, 40, 500), _codes(gen, 2, 30, 500)
    pa, pb, na, nb = pack_codes_bitplanes(a, 3), pack_codes_bitplanes(b, 2), pack_nibbles(a), pack_nibbles(b)
    assert torch.equal(bitserial_matmul(pa, pb, 500, 1, 2, threads=1), bitserial_matmul(pa, pb, 500, 1, 2,
                                                                                         threads=TWO))
    assert torch.equal(lut_matmul(na, nb, 500, threads=1), lut_matmul(na, nb, 500, threads=TWO))


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 4\) for bits=2, found 0..4"):
        pack_codes_bitplanes(torch.tensor([0, 4]), 2)
    with pytest.raises(ValueError, match="found -1..0"):
        pack_nibbles(torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="integer tensor, got torch.float32"):
        pack_codes_bitplanes(torch.tensor([1.0]), 2)
    with pytest.raises(ValueError, match="bits must be an int in 1..8, got 9"):
        pack_codes_bitplanes(torch.tensor([1]), 9)
    with pytest.raises(ValueError, match="at least one element"):
        pack_nibbles(torch.zeros(2, 0, dtype=torch.int64))
    a = pack_codes_bitplanes(torch.ones(3, 100, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match="do not hold k=300"):
        bitserial_matmul(a, a, 300)
    with pytest.raises(ValueError, match="a_planes must be a 3-D torch.uint64"):
        bitserial_matmul(a[0], a, 100)
    with pytest.raises(ValueError, match="zero_point_b must be an int or a 1-D integer tensor of 3 rows, got 0.5"):
        bitserial_matmul(a, a, 100, zero_point_b=0.5)
    n = pack_nibbles(torch.ones(3, 100, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"zero_point_a .* got torch.int64 of shape \(2,\)"):
        lut_matmul(n, n, 100, zero_point_a=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="b_nibbles has 49 bytes per row, not ceil\\(k/2\\) for k=99"):
        lut_matmul(n, n[:, :49].contiguous(), 99)
    with pytest.raises(ValueError, match="threads must be an int in"):
        lut_matmul(n, n, 100, threads=99)
