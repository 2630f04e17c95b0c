"""Ternary bit-plane products against float64 products of the same {−1, 0, +1} matrices (exact integers)."""

import numba
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.functional.binary import twn_ternarize
from lowbit.kernels.binary import pack_signs
from lowbit.kernels.ternary import TernaryPacked, pack_ternary, ternary_matmul

TWO = min(2, numba.config.NUMBA_NUM_THREADS)


def _ternary(gen, *shape):
    return torch.randint(-1, 2, shape, generator=gen).float()


def _signs(x):
    return torch.where(x >= 0, 1.0, -1.0)


@settings(max_examples=40)
@given(st.integers(1, 9), st.integers(1, 9), st.integers(1, 300), st.integers(0, 10_000))
def test_every_operand_pairing_equals_the_float_product(m, n, k, seed):
    gen = torch.Generator().manual_seed(seed)
    ta, tb = _ternary(gen, m, k), _ternary(gen, n, k)
    xa, xb = torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen)
    xa[0, 0] = 0.0  # zero counts as +1 on the binary side
    cases = [
        (pack_ternary(ta), pack_ternary(tb), ta, tb),
        (pack_ternary(ta), pack_signs(xb), ta, _signs(xb)),
        (pack_signs(xa), pack_ternary(tb), _signs(xa), tb),
        (pack_signs(xa), pack_signs(xb), _signs(xa), _signs(xb)),
    ]
    for a, b, dense_a, dense_b in cases:
        product = ternary_matmul(a, b, k)
        assert product.dtype == torch.int32
        assert torch.equal(product.double(), dense_a.double() @ dense_b.double().T)


@pytest.mark.parametrize("k", [1, 63, 64, 65, 128, 1000])
def test_threads_do_not_change_the_result(k):
    gen = torch.Generator().manual_seed(k)
    a, b = pack_ternary(_ternary(gen, 33, k)), pack_ternary(_ternary(gen, 17, k))
    x = pack_signs(torch.randn(17, k, generator=gen))
    assert torch.equal(ternary_matmul(a, b, k, threads=1), ternary_matmul(a, b, k, threads=TWO))
    assert torch.equal(ternary_matmul(a, x, k, threads=1), ternary_matmul(a, x, k, threads=TWO))


def test_twn_weights_times_binary_activations():
    gen = torch.Generator().manual_seed(5)
    w, x = torch.randn(16, 200, generator=gen), torch.randn(8, 200, generator=gen)
    codes, alpha = twn_ternarize(w)
    product = ternary_matmul(pack_ternary(codes), pack_signs(x), 200)
    assert torch.equal(product.double(), codes.double() @ _signs(x).double().T)


def test_planes_layout():
    t = torch.zeros(2, 130)
    t[0, 0], t[0, 64], t[0, 129] = 1.0, -1.0, 1.0
    t[1, 63] = -1.0
    packed = pack_ternary(t.to(torch.int8))
    assert isinstance(packed, TernaryPacked)
    assert packed.signs.shape == packed.nonzero.shape == (2, 3)
    signs, nonzero = packed.signs.view(torch.int64), packed.nonzero.view(torch.int64)  # no uint64 arithmetic
    assert signs[0].tolist() == [1, 0, 2] and nonzero[0].tolist() == [1, 1, 2]
    assert signs[1].tolist() == [0, 0, 0] and nonzero[1].tolist() == [-(2**63), 0, 0]  # bit 63 only


def test_pack_along_another_axis():
    gen = torch.Generator().manual_seed(0)
    t = _ternary(gen, 70, 5)
    for moved, direct in zip(pack_ternary(t, axis=0), pack_ternary(t.T.contiguous())):
        assert torch.equal(moved, direct)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="only -1, 0, \\+1, found 2"):
        pack_ternary(torch.tensor([1, 2, 0]))
    with pytest.raises(ValueError, match="found nan"):
        pack_ternary(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="dtype torch.bool"):
        pack_ternary(torch.tensor([True]))
    with pytest.raises(ValueError, match="at least one element"):
        pack_ternary(torch.zeros(3, 0))
    a = pack_ternary(torch.zeros(2, 100))
    with pytest.raises(ValueError, match="do not hold k=300"):
        ternary_matmul(a, a, 300)
    with pytest.raises(ValueError, match="b must be a TernaryPacked"):
        ternary_matmul(a, torch.zeros(2, 2), 100)
    with pytest.raises(ValueError, match="a.signs .* and a.nonzero .* differ"):
        ternary_matmul(TernaryPacked(a.signs, a.nonzero[:1]), a, 100)
    with pytest.raises(ValueError, match="k must be a positive int"):
        ternary_matmul(a, a, 0)
    with pytest.raises(ValueError, match="threads must be an int in"):
        ternary_matmul(a, a, 100, threads=0)
