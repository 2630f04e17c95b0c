"""Relative sparse indices: exact round trips, filler counts derived by hand, and the paper's Fig. 2."""

import math

import numpy as np
import pytest
import torch

from lowbit.compress.sparse_index import decode_relative, encode_relative, pack_gaps, unpack_gaps


def expected_fillers(positions: list[int], index_bits: int) -> int:
    """Fillers by the rule 'a gap d > 2^b needs ceil(d / 2^b) − 1 jumps of 2^b first', gaps from −1."""
    total, previous = 0, -1
    for p in positions:
        total += math.ceil((p - previous) / 2**index_bits) - 1
        previous = p
    return total


def round_trip(mask: torch.Tensor, index_bits: int) -> None:
    weights = torch.randn(mask.shape, generator=torch.Generator().manual_seed(1)) * mask  # pruned: zeros
    gaps, is_filler = encode_relative(mask, index_bits)
    kept = torch.nonzero(mask.reshape(-1)).reshape(-1).tolist()
    assert int(is_filler.sum()) == expected_fillers(kept, index_bits)
    assert gaps.size == len(kept) + int(is_filler.sum())
    assert gaps.size == 0 or (gaps.min() >= 1 and gaps.max() <= 2**index_bits)
    assert np.all(gaps[is_filler] == 2**index_bits)
    # stored stream: one packed gap and one value per entry (fillers store the pruned zero found there)
    data = pack_gaps(gaps, index_bits)
    assert len(data) == (gaps.size * index_bits + 7) // 8
    positions = decode_relative(unpack_gaps(data, index_bits, count=gaps.size), index_bits, numel=mask.numel())
    values = weights.reshape(-1)[torch.from_numpy(positions)]
    assert positions[~is_filler].tolist() == kept
    assert not mask.reshape(-1)[torch.from_numpy(positions[is_filler])].any(), "fillers sit on pruned positions"
    assert torch.all(values[torch.from_numpy(is_filler)] == 0)
    rebuilt = torch.zeros(mask.numel()).index_put_((torch.from_numpy(positions),), values).view(mask.shape)
    assert torch.equal(rebuilt, weights)


@pytest.mark.parametrize("index_bits", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("density", [0.0, 0.005, 0.05, 0.3, 0.9, 1.0])
def test_round_trip_random_masks(index_bits, density):
    generator = torch.Generator().manual_seed(int(density * 1000) + index_bits)
    mask = torch.rand((37, 53), generator=generator) < density
    round_trip(mask, index_bits)


def test_all_kept_and_all_pruned():
    gaps, is_filler = encode_relative(torch.ones(10, dtype=torch.bool), index_bits=1)
    assert gaps.tolist() == [1] * 10 and not is_filler.any()
    gaps, is_filler = encode_relative(torch.zeros(3, 4, dtype=torch.bool), index_bits=4)
    assert gaps.size == 0 and is_filler.size == 0
    assert pack_gaps(gaps, 4) == b"" and unpack_gaps(b"", 4, count=0).size == 0
    assert decode_relative(gaps, 4, numel=12).size == 0


def test_gap_that_overflows_many_times():
    mask = torch.zeros(1000, dtype=torch.bool)
    mask[-1] = True  # d = 1000 from −1: 249 jumps of 4, then 4
    gaps, is_filler = encode_relative(mask, index_bits=2)
    assert int(is_filler.sum()) == 249 == math.ceil(1000 / 4) - 1
    assert gaps.tolist() == [4] * 250
    assert decode_relative(gaps, 2, numel=1000)[-1] == 999
    round_trip(mask, 2)


def test_gap_of_exactly_the_maximum_needs_no_filler():
    gaps, is_filler = encode_relative([7, 15, 24], index_bits=3)  # d = 8, 8, 9
    assert gaps.tolist() == [8, 8, 8, 1] and is_filler.tolist() == [False, False, True, False]


def test_paper_figure_2():
    # Fig. 2: 3-bit relative indices; weights 3.4, 0.9, 1.7 at 1, 4, 15; 15 − 4 = 11 > 8 so a filler zero is
    # stored at 4 + 8 = 12 (diff row 1, 3, 8, 3 in the paper, whose first gap counts from 0 instead of −1).
    weights = torch.zeros(16)
    weights[[1, 4, 15]] = torch.tensor([3.4, 0.9, 1.7])
    gaps, is_filler = encode_relative(weights != 0, index_bits=3)
    assert gaps.tolist() == [2, 3, 8, 3]
    assert is_filler.tolist() == [False, False, True, False]
    positions = decode_relative(gaps, 3, numel=16)
    assert positions.tolist() == [1, 4, 12, 15]
    assert weights[torch.from_numpy(positions)].tolist() == pytest.approx([3.4, 0.9, 0.0, 1.7])


def test_positions_input_forms_agree():
    positions = [0, 9, 10, 100]
    ref = encode_relative(np.array(positions), 3)
    for form in (positions, torch.tensor(positions), np.array(positions, dtype=np.uint16)):
        out = encode_relative(form, 3)
        assert np.array_equal(out[0], ref[0]) and np.array_equal(out[1], ref[1])
    mask = np.zeros(101, dtype=bool)
    mask[positions] = True
    assert np.array_equal(encode_relative(mask, 3)[0], ref[0])
    assert encode_relative([], 3)[0].size == 0


def test_pack_layout_lsb_first():
    # fields gap − 1 = 0, 3, 7, 2 at 3 bits, each least significant bit first: 000 110 111 010, cut into bytes
    # read least significant bit first: 00011011 → 0xd8, 1010(0000) → 0x05
    data = pack_gaps([1, 4, 8, 3], index_bits=3)
    bits = "".join(format(v, "03b")[::-1] for v in [0, 3, 7, 2])
    assert data == bytes(int(bits[i : i + 8].ljust(8, "0")[::-1], 2) for i in range(0, len(bits), 8))
    assert data == bytes([0xD8, 0x05])


def test_errors():
    with pytest.raises(ValueError, match="index_bits"):
        encode_relative([1], index_bits=0)
    with pytest.raises(ValueError, match="index_bits"):
        encode_relative([1], index_bits=9)
    with pytest.raises(ValueError, match="strictly ascending"):
        encode_relative([3, 3], index_bits=2)
    with pytest.raises(ValueError, match="strictly ascending"):
        encode_relative([5, 2], index_bits=2)
    with pytest.raises(ValueError, match="non-negative"):
        encode_relative([-1, 2], index_bits=2)
    with pytest.raises(ValueError, match="1-D"):
        encode_relative(np.array([[1, 2]]), index_bits=2)
    with pytest.raises(ValueError, match="integers"):
        encode_relative(np.array([1.0]), index_bits=2)
    with pytest.raises(ValueError, match="gaps must be in 1..4"):
        decode_relative([1, 5], index_bits=2, numel=10)
    with pytest.raises(ValueError, match="gaps must be in 1..4"):
        pack_gaps([0], index_bits=2)
    with pytest.raises(ValueError, match="numel"):
        decode_relative([4, 4], index_bits=2, numel=7)
    with pytest.raises(ValueError, match="numel"):
        decode_relative([1], index_bits=2, numel=-1)
    with pytest.raises(ValueError, match="bytes"):
        unpack_gaps(b"\x00", index_bits=3, count=3)
    with pytest.raises(ValueError, match="count"):
        unpack_gaps(b"\x00", index_bits=3, count=-1)
