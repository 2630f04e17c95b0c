"""Binary convolution on packed bits against float64 ``F.conv2d`` of the same signs with zero padding (exact)."""

import numba
import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from lowbit.kernels.binary import pack_signs
from lowbit.kernels.binary_conv import PackedBinaryWeight, _pack_channels, binary_conv2d, pack_conv_weight

TWO = min(2, numba.config.NUMBA_NUM_THREADS)


def _signs(x):
    return torch.where(x >= 0, 1.0, -1.0).double()


def _reference(x, w, stride=1, padding=0, dilation=1, groups=1):
    return F.conv2d(_signs(x), _signs(w), stride=stride, padding=padding, dilation=dilation, groups=groups)


def _random(gen, *shape):
    t = torch.randn(*shape, generator=gen)
    t.view(-1)[0] = 0.0  # zero counts as +1
    return t


@settings(max_examples=30)
@given(st.integers(1, 3), st.sampled_from([1, 3, 17, 63, 64, 65, 100, 128]), st.integers(1, 5),
       st.integers(1, 9), st.integers(1, 9), st.integers(1, 3), st.integers(1, 3), st.integers(1, 2),
       st.integers(0, 2), st.integers(1, 2), st.integers(0, 10_000))
def test_equals_the_float_convolution_of_signs(n, c_in, c_out, h, w, kh, kw, stride, padding, dilation, seed):
    assume(h + 2 * padding >= dilation * (kh - 1) + 1 and w + 2 * padding >= dilation * (kw - 1) + 1)
    gen = torch.Generator().manual_seed(seed)
    x, weight = _random(gen, n, c_in, h, w), _random(gen, c_out, c_in, kh, kw)
    out = binary_conv2d(x, weight, stride, padding, dilation)
    assert out.dtype == torch.int32
    assert torch.equal(out.double(), _reference(x, weight, stride, padding, dilation))


@pytest.mark.parametrize("c_in", [3, 64, 100, 128])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("padding", [0, 1, 2])
def test_batches_strides_and_paddings(c_in, stride, padding):
    gen = torch.Generator().manual_seed(c_in * 10 + stride * 3 + padding)
    x, weight = _random(gen, 4, c_in, 10, 7), _random(gen, 6, c_in, 3, 3)
    assert torch.equal(binary_conv2d(x, weight, stride, padding).double(), _reference(x, weight, stride, padding))


def test_rectangular_stride_padding_dilation_pairs():
    gen = torch.Generator().manual_seed(1)
    x, weight = _random(gen, 2, 70, 11, 9), _random(gen, 3, 70, 3, 2)
    out = binary_conv2d(x, weight, stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    assert torch.equal(out.double(), _reference(x, weight, (2, 1), (1, 2), (1, 2)))


@pytest.mark.parametrize("groups", [2, 3])
def test_groups(groups):
    gen = torch.Generator().manual_seed(groups)
    x, weight = _random(gen, 2, 6 * groups, 8, 8), _random(gen, 2 * groups, 6, 3, 3)
    out = binary_conv2d(x, weight, padding=1, groups=groups)
    assert torch.equal(out.double(), _reference(x, weight, padding=1, groups=groups))


def test_a_packed_weight_is_reused_across_input_sizes():
    gen = torch.Generator().manual_seed(2)
    weight = _random(gen, 8, 64, 3, 3)
    packed = pack_conv_weight(weight)
    assert isinstance(packed, PackedBinaryWeight)
    assert packed.words.shape == (1, 8, 9) and packed.tap_sums.shape == (8, 3, 3) and packed.out_channels == 8
    for size in (14, 7, 14):
        x = _random(gen, 3, 64, size, size)
        assert torch.equal(binary_conv2d(x, packed, padding=1).double(), _reference(x, weight, padding=1))
    assert len(packed._corrections) == 2  # one padding correction per input size


def test_padding_is_zero_not_a_sign():
    # all +1 input and weights: an interior output sums 9 taps, a corner only the 4 inside the image
    out = binary_conv2d(torch.ones(1, 1, 3, 3), torch.ones(1, 1, 3, 3), padding=1)
    assert out[0, 0].tolist() == [[4, 6, 4], [6, 9, 6], [4, 6, 4]]


@pytest.mark.parametrize("c_in", [1, 63, 64, 65, 130])
def test_the_channel_packer_has_the_layout_of_pack_signs(c_in):
    gen = torch.Generator().manual_seed(c_in)
    x = _random(gen, 3, c_in, 5, 4)
    words = np.empty((3, 20, -(-c_in // 64)), dtype=np.uint64)
    assert _pack_channels(x.numpy().reshape(3, c_in, 20), words) == 0
    assert torch.equal(torch.from_numpy(words).reshape(3, 5, 4, -1), pack_signs(x, axis=1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes(dtype):
    gen = torch.Generator().manual_seed(4)
    x, weight = _random(gen, 2, 5, 6, 6).to(dtype), _random(gen, 3, 5, 3, 3)
    assert torch.equal(binary_conv2d(x, weight, padding=1).double(), _reference(x, weight, padding=1))


def test_threads_do_not_change_the_result():
    gen = torch.Generator().manual_seed(3)
    x, packed = _random(gen, 5, 96, 12, 12), pack_conv_weight(_random(gen, 16, 96, 3, 3))
    assert torch.equal(binary_conv2d(x, packed, padding=1, threads=1),
                       binary_conv2d(x, packed, padding=1, threads=TWO))


def test_bad_input_is_named():
    x, weight = torch.randn(1, 4, 5, 5), torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match="x must be a 4-D float tensor"):
        binary_conv2d(x.to(torch.int32), weight)
    with pytest.raises(ValueError, match="x must be a 4-D float tensor"):
        binary_conv2d(x[0], weight)
    with pytest.raises(ValueError, match="weight must be a 4-D float tensor"):
        binary_conv2d(x, weight[0])
    with pytest.raises(ValueError, match="x has 3 channels, the weight expects 4"):
        binary_conv2d(x[:, :3], weight)
    with pytest.raises(ValueError, match="stride must be an int ≥ 1 .* got 0"):
        binary_conv2d(x, weight, stride=0)
    with pytest.raises(ValueError, match="padding must be an int ≥ 0 .* got 'same'"):
        binary_conv2d(x, weight, padding="same")
    with pytest.raises(ValueError, match=r"dilation must .* got \(1, -1\)"):
        binary_conv2d(x, weight, dilation=(1, -1))
    with pytest.raises(ValueError, match="empty output"):
        binary_conv2d(x, weight, dilation=3)
    with pytest.raises(ValueError, match="groups must be a positive int dividing C_out=2, got 3"):
        pack_conv_weight(weight, groups=3)
    with pytest.raises(ValueError, match="groups=2 does not match the packed weight's groups=1"):
        binary_conv2d(x, pack_conv_weight(weight), groups=2)
    with pytest.raises(ValueError, match="threads must be an int in"):
        binary_conv2d(x, weight, threads=0)
    with pytest.raises(ValueError, match="NaN"):
        binary_conv2d(torch.full((1, 4, 5, 5), float("nan")), weight)
