import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lowbit.functional.packing import pack, packed_size, unpack


@given(st.integers(1, 8), st.booleans(), st.integers(0, 300), st.integers(0, 2**31 - 1))
def test_round_trip_and_size(bits, signed, n, seed):
    low = -(1 << (bits - 1)) if signed else 0
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(low, low + (1 << bits), (n,), generator=g)
    packed = pack(codes, bits, signed)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_size(n, bits) == (n * bits + 7) // 8
    assert torch.equal(unpack(packed, bits, signed, (n,)).to(torch.int64), codes)


def test_bit_layout_against_an_independent_loop():
    codes = [5, 0, 7, 2, 6, 1, 3]  # unsigned 3-bit
    bitstream = "".join(format(c, "03b")[::-1] for c in codes)  # least significant bit first
    expected = [int(bitstream[i : i + 8].ljust(8, "0")[::-1], 2) for i in range(0, len(bitstream), 8)]
    assert pack(torch.tensor(codes), 3, signed=False).tolist() == expected


def test_errors():
    with pytest.raises(ValueError, match="outside the signed 4-bit grid"):
        pack(torch.tensor([8]), 4, signed=True)
    with pytest.raises(ValueError, match="bits must be an int in 1..8"):
        pack(torch.tensor([1]), 9, signed=False)
    with pytest.raises(ValueError, match="cannot hold"):
        unpack(torch.zeros(1, dtype=torch.uint8), 4, True, (3,))
    with pytest.raises(ValueError, match="integer codes"):
        pack(torch.tensor([1.0]), 4, True)
    zeros = pack(torch.zeros(2, 3, dtype=torch.int64), 1, signed=False)
    assert zeros.tolist() == [0] and np.array_equal(unpack(zeros, 1, False, (2, 3)).numpy(), np.zeros((2, 3)))
