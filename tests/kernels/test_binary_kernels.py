"""Packed ±1 products against float matrix products of the same signs (exact integers)."""

import numba
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.kernels import _xor_popcount_llvm, binary_matmul, pack_signs
from lowbit.kernels.binary import binary_backend


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


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 40), st.integers(1, 80), st.integers(1, 1100), st.integers(0, 10_000))
def test_blocks_panels_and_word_tails_of_every_size(m, n, k, seed):
    # M, N across several 6-row blocks and 32-column panels with ragged ends; K across 64- and 512-bit boundaries
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen)
    assert torch.equal(binary_matmul(pack_signs(a), pack_signs(b), k).double(), _signs(a) @ _signs(b).T)


@pytest.mark.parametrize(("m", "n", "k"), [(1, 1, 1), (6, 32, 64), (7, 33, 63), (5, 31, 511), (13, 65, 5000),
                                           (2, 200, 4097), (70, 3, 129)])
def test_shapes_at_the_block_edges(m, n, k):
    torch.manual_seed(m * n + k)
    a, b = torch.randn(m, k), torch.randn(n, k)
    assert torch.equal(binary_matmul(pack_signs(a), pack_signs(b), k).double(), _signs(a) @ _signs(b).T)


def test_all_equal_and_all_opposite_signs_give_plus_and_minus_k():
    a = pack_signs(torch.ones(3, 700))
    b = pack_signs(torch.cat([torch.ones(1, 700), -torch.ones(1, 700)]))
    assert binary_matmul(a, b, 700).tolist() == [[700, -700]] * 3


@pytest.mark.parametrize("k", [1, 63, 64, 65, 128, 1000])
def test_threads_do_not_change_the_result(k):
    torch.manual_seed(k)
    a, b = pack_signs(torch.randn(33, k)), pack_signs(torch.randn(17, k))
    assert torch.equal(binary_matmul(a, b, k, threads=1), binary_matmul(a, b, k))


@pytest.mark.parametrize(("m", "n", "k"), [(50, 40, 300), (7, 300, 1000)])
def test_two_threads_split_rows_or_columns_and_agree(m, n, k, monkeypatch):
    # rows are cut when there are more row blocks than column panels, else panels; force a split at this size
    monkeypatch.setattr(_xor_popcount_llvm, "_WORK_PER_THREAD", 1)
    torch.manual_seed(k)
    a, b = torch.randn(m, k), torch.randn(n, k)
    one = binary_matmul(pack_signs(a), pack_signs(b), k, threads=1)
    assert torch.equal(binary_matmul(pack_signs(a), pack_signs(b), k, threads=2), one)
    assert torch.equal(one.double(), _signs(a) @ _signs(b).T)


def test_a_threads_argument_leaves_numbas_setting_as_it_was(monkeypatch):
    # the product runs its jobs on numba's pool, setting its thread count for the call only
    monkeypatch.setattr(_xor_popcount_llvm, "_WORK_PER_THREAD", 1)
    before = numba.get_num_threads()
    a = pack_signs(torch.randn(40, 200))
    binary_matmul(a, a, 200, threads=numba.config.NUMBA_NUM_THREADS)
    binary_matmul(a, a, 200, threads=1)
    assert numba.get_num_threads() == before


def test_the_portable_kernel_gives_the_same_integers(monkeypatch):
    torch.manual_seed(1)
    a, b, k = pack_signs(torch.randn(45, 777)), pack_signs(torch.randn(70, 777)), 777
    fast = binary_matmul(a, b, k)
    monkeypatch.setattr(_xor_popcount_llvm, "load", lambda: None)
    assert binary_backend() == "numba"
    assert torch.equal(binary_matmul(a, b, k), fast)
    assert torch.equal(binary_matmul(a, b, k, threads=1), fast)


def test_the_backend_is_named():
    name = binary_backend()
    assert name == "numba" or name.startswith("llvm-avx512 (")


def test_bit_layout_is_element_j_in_bit_j():
    x = -torch.ones(2, 130)
    x[0, 0] = x[0, 63] = x[0, 64] = x[1, 129] = 1.0
    words = pack_signs(x).view(torch.int64)  # read the bits without uint64 arithmetic
    assert pack_signs(x).shape == (2, 3)
    assert int(words[0, 0]) == 1 - 2**63  # bits 0 and 63 (two's complement view)
    assert int(words[0, 1]) == 1 and int(words[0, 2]) == 0
    assert int(words[1, 2]) == 2 and int(words[1, 0]) == 0


@settings(max_examples=30)
@given(st.integers(1, 5), st.integers(1, 200), st.sampled_from([torch.float32, torch.float64, torch.float16,
                                                                  torch.bfloat16]), st.integers(0, 10_000))
def test_every_bit_is_the_sign_of_its_element_and_padding_is_zero(rows, k, dtype, seed):
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(seed)).to(dtype)
    x[0, 0] = -0.0  # ≥ 0: bit 1
    words = pack_signs(x).numpy()
    bits = (words[:, :, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)  # [row, word, bit]
    bits = bits.reshape(rows, -1).astype(bool)
    assert np.array_equal(bits[:, :k], (x.float() >= 0).numpy()) and not bits[:, k:].any()


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
    with pytest.raises(ValueError, match="threads must be in"):
        binary_matmul(a, a, 100, threads=0)
