"""Dynamic tree map and block-wise codes: the published construction, and bitsandbytes where installed."""

import math

import pytest
import torch

from lowbit.functional.codebook import create_dynamic_map, dequantize_blockwise, quantize_blockwise


def test_signed_map_shape_and_published_properties():
    m = create_dynamic_map(signed=True)
    assert m.shape == (256,) and m.dtype == torch.float32
    assert bool((m[1:] > m[:-1]).all()), "sorted and without duplicates"
    assert float(m[-1]) == 1.0 and float(m.abs().max()) == 1.0
    assert int((m == 0).sum()) == 1
    # symmetric apart from the extra +1: 127 negatives mirror 127 positives below 1
    pos, neg = m[(m > 0) & (m < 1)], -m[m < 0].flip(0)
    assert torch.equal(pos, neg) and pos.numel() == 127
    # decade d = 10^(i-6) holds 2^i values (the fraction gets one more bit per level)
    for i in range(7):
        lo, hi = 10.0 ** (i - 6) * 0.1, 10.0 ** (i - 6)
        assert int(((pos > lo) & (pos < hi)).sum()) == 2**i
    # smallest magnitude: the midpoint of [0.1, 1] times 1e-6
    assert float(pos.min()) == pytest.approx(0.55e-6, rel=1e-6)


def test_unsigned_map_doubles_the_fraction_per_level():
    m = create_dynamic_map(signed=False)
    assert m.shape == (256,) and float(m.min()) == 0.0 and float(m.max()) == 1.0
    inner = m[(m > 0) & (m < 1)]
    for i in range(7):
        lo, hi = 10.0 ** (i - 6) * 0.1, 10.0 ** (i - 6)
        assert int(((inner > lo) & (inner < hi)).sum()) == 2 ** (i + 1)


def test_unsigned_map_needs_every_value_bit_for_the_exponent():
    # with fewer exponent bits the unsigned construction does not fill 2^total_bits values
    with pytest.raises(ValueError, match="max_exponent_bits"):
        create_dynamic_map(signed=False, max_exponent_bits=5, total_bits=8)


def test_fewer_exponent_bits_add_linear_points_in_the_top_decade():
    m = create_dynamic_map(signed=True, max_exponent_bits=5, total_bits=8)
    assert m.shape == (256,)
    top = m[(m > 0.1) & (m < 1.0)]
    # level 4 holds 2^(4+7-5) = 64 points, plus 2^(7-5) - 1 = 3 extra points
    assert top.numel() == 64 + 3


@pytest.mark.parametrize(
    "kwargs", [{"total_bits": 9}, {"total_bits": 1}, {"max_exponent_bits": 8}, {"max_exponent_bits": 0}]
)
def test_bad_arguments_name_the_field(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        create_dynamic_map(**kwargs)


# unsigned maps exist only with max_exponent_bits = total_bits - 1 (see the ValueError test above)
MAP_ARGS = [(True, e, t) for e, t in [(7, 8), (5, 8), (4, 8), (3, 5), (2, 4), (4, 5)]]
MAP_ARGS += [(False, t - 1, t) for t in (8, 5, 4, 3)]


@pytest.mark.parametrize("signed, max_exponent_bits, total_bits", MAP_ARGS)
def test_equal_to_bitsandbytes_value_for_value(signed, max_exponent_bits, total_bits):
    bnb_functional = pytest.importorskip("bitsandbytes.functional")
    ours = create_dynamic_map(signed, max_exponent_bits, total_bits)
    theirs = bnb_functional.create_dynamic_map(signed, max_exponent_bits, total_bits)
    # bitsandbytes pads short codes with zeros up to 256 entries; drop exactly that padding
    padding = 256 - 2**total_bits
    zeros = (theirs == 0).nonzero().reshape(-1)
    keep = torch.ones(256, dtype=torch.bool)
    keep[zeros[:padding]] = False
    assert torch.equal(ours, theirs[keep])


def test_blockwise_round_trip_error_bound():
    torch.manual_seed(0)
    code = create_dynamic_map(signed=True)
    x = torch.randn(10_000) * torch.logspace(-3, 1, 10_000)
    codes, absmax = quantize_blockwise(x, code, block_size=256)
    assert codes.dtype == torch.uint8 and absmax.shape == (math.ceil(10_000 / 256),)
    y = dequantize_blockwise(codes, absmax, code, block_size=256)
    # nearest code: the error is at most half the widest gap of the code, times the block's absmax
    half_gap = float((code[1:] - code[:-1]).max()) / 2
    per_elem = absmax.repeat_interleave(256)[:10_000]
    # the signed map has +1 but not -1: a block's most negative value may sit a full half gap away
    assert bool(((y - x).abs() <= (half_gap + 1e-6) * per_elem).all())
    padded = torch.nn.functional.pad(x, (0, 40 * 256 - 10_000))
    assert torch.equal(absmax, padded.reshape(40, 256).abs().amax(1))


def test_blockwise_picks_the_nearest_code():
    torch.manual_seed(1)
    code = create_dynamic_map(signed=True)
    x = torch.randn(3000)
    codes, absmax = quantize_blockwise(x, code, block_size=2048)
    normalized = x / absmax.repeat_interleave(2048)[:3000]
    nearest = (normalized.unsqueeze(1) - code.unsqueeze(0)).abs().argmin(1)
    assert torch.equal(codes.long(), nearest)


def test_blockwise_all_zero_block_and_shape():
    code = create_dynamic_map(signed=True)
    x = torch.zeros(2, 300)
    x[1, 100] = 4.0
    codes, absmax = quantize_blockwise(x, code, block_size=256)
    assert codes.shape == (2, 300)
    assert float(absmax[0]) == 0.0
    y = dequantize_blockwise(codes, absmax, code, block_size=256)
    assert torch.equal(y, x)


def test_blockwise_errors():
    code = create_dynamic_map()
    with pytest.raises(ValueError, match="block_size"):
        quantize_blockwise(torch.zeros(4), code, block_size=0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        quantize_blockwise(torch.tensor([float("nan")]), code)
    with pytest.raises(ValueError, match="sorted"):
        quantize_blockwise(torch.zeros(4), code.flip(0))
    with pytest.raises(ValueError, match="absmax must have shape"):
        dequantize_blockwise(torch.zeros(300, dtype=torch.uint8), torch.zeros(1), code, 256)


def test_blockwise_error_no_worse_than_bitsandbytes():
    bnb_functional = pytest.importorskip("bitsandbytes.functional")
    torch.manual_seed(3)
    code = create_dynamic_map(signed=True)
    for x in (torch.randn(65_536), torch.randn(65_536) ** 3, torch.rand(65_536) * 1e-3):
        codes, absmax = quantize_blockwise(x, code, block_size=256)
        ours = dequantize_blockwise(codes, absmax, code, block_size=256)
        q, state = bnb_functional.quantize_blockwise(x, code=code, blocksize=256)
        theirs = bnb_functional.dequantize_blockwise(q, state)
        assert torch.equal(absmax, state.absmax)
        assert float((ours - x).square().sum()) <= float((theirs - x).square().sum()) * (1 + 1e-6)
