"""The AVX-512 LLVM micro-kernel itself: other register blocks, the work split, stores that stay inside ``out``."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lowbit.kernels import _xor_popcount_llvm as llvm_kernel

kernel = llvm_kernel.load()
needs_kernel = pytest.mark.skipif(kernel is None, reason="this CPU lacks AVX-512 VPOPCNTQ: numba runs instead")


def _words(rows, words, seed):
    return np.random.default_rng(seed).integers(0, 2**63, size=(rows, words), dtype=np.int64).view(np.uint64)


def _reference(a, b, k):
    """k − 2·popcount(a XOR b) through numpy's bit unpacking: independent of both kernels."""
    bits = np.unpackbits((a[:, None, :] ^ b[None, :, :]).view(np.uint8), axis=-1)
    return (k - 2 * bits.sum(axis=-1, dtype=np.int64)).astype(np.int32)


@needs_kernel
@pytest.mark.parametrize(("rows", "vecs"), [(1, 2), (3, 6)])
def test_other_register_blocks_agree(rows, vecs):
    other = llvm_kernel.compile_kernel(rows, vecs)
    a, b = _words(11, 9, 0), _words(50, 9, 1)
    assert np.array_equal(other(a, b, 9 * 64, threads=1), _reference(a, b, 9 * 64))
    assert np.array_equal(kernel(a, b, 9 * 64, threads=1), _reference(a, b, 9 * 64))


@needs_kernel
def test_stores_stay_inside_the_rows_and_columns_asked_for():
    # rows 5..12 of a 20×37 output: nothing before, after, or in the masked columns 37..63 of the last panel
    a, b, k, words, n = _words(20, 3, 2), _words(37, 3, 3), 150, 3, 37
    sentinel = np.int32(-123456)
    out = np.full(20 * n + 64, sentinel, dtype=np.int32)
    panels = -(-n // kernel.panel)
    packed = llvm_kernel._aligned(panels * words * kernel.panel)
    kernel._pack(b.ctypes.data, n, words, packed.ctypes.data)
    kernel._gemm(a.ctypes.data, packed.ctypes.data, out.ctypes.data, n, words, k, 5, 13, 0, panels, 1)
    grid = out[:20 * n].reshape(20, n)
    assert np.array_equal(grid[5:13], _reference(a[5:13], b, k))
    assert (grid[:5] == sentinel).all() and (grid[13:] == sentinel).all() and (out[20 * n:] == sentinel).all()


@given(st.integers(1, 500), st.integers(1, 40), st.integers(1, 4))
def test_the_split_covers_every_output_once(m, panels, threads):
    covered = np.zeros((m, panels), dtype=int)
    for r0, r1, p0, p1 in llvm_kernel._split(m, 6, panels, threads):
        assert r0 % 6 == 0 or r0 == m
        covered[r0:r1, p0:p1] += 1
    assert (covered == 1).all()


def test_blocks_that_cannot_fit_the_registers_are_refused():
    with pytest.raises(ValueError, match="fit 32 zmm registers"):
        llvm_kernel.build_ir(8, 4)
    with pytest.raises(ValueError, match="even vecs"):
        llvm_kernel.build_ir(2, 3)
