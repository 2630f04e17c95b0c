"""Ops on packed signs against float64 references: the threshold packing of an accumulator and max pooling."""

import math

import numba
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from lowbit.kernels import maxpool_signs, pack_channels, pack_signs, pack_threshold
from lowbit.kernels.sign_ops import maxpool_output_size, pack_at_least, thresholds_for

TWO = min(2, numba.config.NUMBA_NUM_THREADS)


def _expected(values, offset):
    """The signs of values + offset, compared in exact rational terms (float64 holds both exactly here)."""
    total = values.double() + offset.double().reshape(-1, values.shape[1]).repeat(
        values.shape[0] // offset.reshape(-1, values.shape[1]).shape[0], 1)
    return pack_signs(torch.where(total >= 0, 1.0, -1.0))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.sampled_from([1, 5, 63, 64, 65, 128, 130]), st.sampled_from([1, 2, 4]),
       st.booleans(), st.integers(0, 10_000))
def test_integer_accumulators_against_their_offsets(rows_per_period, channels, period, halves, seed):
    gen = torch.Generator().manual_seed(seed)
    values = torch.randint(-50, 50, (rows_per_period * period, channels), generator=gen, dtype=torch.int32)
    offset = torch.randint(-50, 50, (period, channels), generator=gen).double()
    if halves:  # a ternary layer's halved bias: x.5 offsets, never equal to an integer sum
        offset += 0.5
    expected = _expected(values, offset)
    assert torch.equal(pack_threshold(values, offset if period > 1 else offset[0]), expected)
    assert torch.equal(pack_threshold(values, offset, threads=TWO), expected)


def test_float_accumulators_compare_exactly_and_nan_is_minus_one():
    values = torch.tensor([[1.0, -(2.0**-100), 0.0, float("nan"), 2.0**-30, 1.0]], dtype=torch.float32)
    offset = torch.tensor([-1.0, 2.0**-100, 0.0, 5.0, -(2.0**-30), -1.0 - 2.0**-40], dtype=torch.float64)
    # 1 − 1 ≥ 0, −2⁻¹⁰⁰ + 2⁻¹⁰⁰ ≥ 0, 0 ≥ 0, NaN → 0, 2⁻³⁰ − 2⁻³⁰ ≥ 0, and 1 − (1 + 2⁻⁴⁰) < 0 although a
    # float32 sum would round it to 0
    assert pack_threshold(values, offset).tolist() == [[0b010111]]
    assert pack_threshold(values).tolist() == [[0b110101]]


def test_offsets_beyond_int32_keep_the_comparison_exact():
    values = torch.tensor([[2**31 - 1, -(2**31), 0]], dtype=torch.int32)
    offset = torch.tensor([-(2.0**31), 2.0**31 - 1, 1e300], dtype=torch.float64)
    assert thresholds_for(offset, torch.int32).dtype == torch.int64
    assert pack_threshold(values, offset).tolist() == [[0b100]]  # 2³¹−1 − 2³¹ < 0; −2³¹ + 2³¹ − 1 < 0; 1e300 ≥ 0
    assert pack_threshold(values, -offset).tolist() == [[0b001]]  # only 2³¹−1 + 2³¹ ≥ 0
    assert pack_at_least(values, thresholds_for(offset, torch.int32)).tolist() == [[0b100]]


def test_pack_threshold_rejects_bad_input():
    with pytest.raises(ValueError, match="values must be a 2-D int32 or float32 tensor, got torch.int64"):
        pack_threshold(torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"offset must be \(C,\) or \(S, C\) .* got \(4,\)"):
        pack_threshold(torch.zeros(2, 3, dtype=torch.int32), torch.zeros(4))
    with pytest.raises(ValueError, match=r"S dividing the 5 rows .* got \(2, 3\)"):
        pack_threshold(torch.zeros(5, 3, dtype=torch.int32), torch.zeros(2, 3))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 2), st.sampled_from([1, 64, 70]), st.integers(1, 9), st.integers(1, 9), st.integers(1, 3),
       st.integers(1, 3), st.integers(1, 3), st.integers(0, 1), st.integers(1, 2), st.booleans(),
       st.integers(0, 10_000))
def test_maxpool_of_packed_signs_is_the_max_of_the_signs(n, c, h, w, kh, kw, stride, padding, dilation, ceil,
                                                         seed):
    assume(padding <= kh // 2 and padding <= kw // 2)  # PyTorch's own limit on padding
    assume(h + 2 * padding >= dilation * (kh - 1) + 1 and w + 2 * padding >= dilation * (kw - 1) + 1)
    gen = torch.Generator().manual_seed(seed)
    signs = torch.where(torch.randn(n, c, h, w, generator=gen) > 0.8, 1.0, -1.0)  # mostly −1: ORs matter
    expected = F.max_pool2d(signs.double(), (kh, kw), stride, padding, dilation, ceil_mode=ceil)
    pooled = maxpool_signs(pack_channels(signs), (kh, kw), stride, padding, dilation, ceil, threads=TWO)
    assert torch.equal(pooled, pack_channels(expected))


@pytest.mark.parametrize("size,kernel,stride,padding,dilation", [(7, 2, 2, 0, 1), (7, 3, 2, 1, 1), (8, 3, 3, 1, 2),
                                                                 (5, 2, 3, 1, 1), (6, 1, 4, 0, 1)])
@pytest.mark.parametrize("ceil", [False, True])
def test_maxpool_output_size_follows_pytorch(size, kernel, stride, padding, dilation, ceil):
    out = F.max_pool2d(torch.zeros(1, 1, size, size), kernel, stride, padding, dilation, ceil_mode=ceil)
    assert maxpool_output_size(size, kernel, stride, padding, dilation, ceil) == out.shape[-1]


def test_pack_channels_is_pack_signs_along_channels():
    x = torch.randn(2, 70, 3, 4)
    assert torch.equal(pack_channels(x), pack_signs(x, axis=1))  # the axis moves last: (N, H, W, words)
    assert torch.equal(pack_channels(x.half()), pack_channels(x.half().float()))
    assert math.prod(pack_channels(x).shape) == 2 * 3 * 4 * 2
