"""The 8-bit optimizer state encoder (a 16-bit-bucket lookup table) against torch.bucketize, and the linear map.

The oracle of every encoding test is ``torch.bucketize(x, midpoints, right=False)`` with the midpoints computed
here in float32 from the code values, which is the documented meaning of "nearest code, ties go low"
(quantize_blockwise's definition); the table encoder never calls bucketize, so agreement is not circular.
"""

import numba
import numpy as np
import pytest
import torch

from lowbit.functional.codebook import create_dynamic_map, create_linear_map
from lowbit.kernels._gather import decode16, encode16
from lowbit.kernels.optim_state import code_midpoints, encode_one, nearest_code_table

pytestmark = pytest.mark.usefixtures("one_thread")

MAPS = {
    ("dynamic", True): lambda: create_dynamic_map(signed=True),
    ("dynamic", False): lambda: create_dynamic_map(signed=False),
    ("linear", True): lambda: create_linear_map(signed=True),
    ("linear", False): lambda: create_linear_map(signed=False),
}
MAP_IDS = [f"{kind}-{'signed' if signed else 'unsigned'}" for kind, signed in MAPS]


@numba.njit(cache=False)
def _encode_many(xs, table):
    """encode_one over an array (one compiled loop instead of 100k Python calls)."""
    out = np.empty(xs.shape[0], dtype=np.int64)
    for i in range(xs.shape[0]):
        out[i] = encode_one(xs[i], table)
    return out


def _midpoints(code: torch.Tensor) -> torch.Tensor:
    """Float32 midpoints as quantize_blockwise defines them (computed here, not by the module under test)."""
    code = code.to(torch.float32)
    return (code[1:] + code[:-1]) / 2


def _bucketize(x: np.ndarray, code: torch.Tensor) -> np.ndarray:
    return torch.bucketize(torch.from_numpy(x), _midpoints(code), right=False).numpy().astype(np.int64)


def _probes(code: torch.Tensor, signed: bool, seed: int) -> np.ndarray:
    """Every midpoint with both float32 neighbours, every code value, and 100k random floats including tiny
    magnitudes, subnormals and ±0."""
    mids = _midpoints(code).numpy()
    values = code.numpy()
    f32 = np.float32
    up = np.nextafter(mids, f32(np.inf), dtype=f32)
    down = np.nextafter(mids, f32(-np.inf), dtype=f32)
    rng = np.random.default_rng(seed)
    low = -1.0 if signed else 0.0
    uniform = rng.uniform(low, 1.0, 60_000).astype(f32)
    tiny = (10.0 ** rng.uniform(-9, -3, 40_000)).astype(f32)
    if signed:
        tiny *= rng.choice(np.array([-1, 1], dtype=f32), 40_000)
    specials = np.array([0.0, -0.0, 1.0, np.finfo(f32).tiny, np.finfo(f32).smallest_subnormal,
                         -np.finfo(f32).smallest_subnormal, 1e-30, -1e-30], dtype=f32)
    if not signed:
        specials = np.abs(specials)
    return np.concatenate([mids, up, down, values, np.nextafter(values, f32(np.inf), dtype=f32),
                           np.nextafter(values, f32(-np.inf), dtype=f32), uniform, tiny, specials]).astype(f32)


@pytest.mark.parametrize(("kind", "signed"), list(MAPS), ids=MAP_IDS)
def test_table_encoder_equals_bucketize(kind, signed):
    """encode_one(x) == bucketize(x, midpoints, right=False) on the midpoints themselves (ties go low), their
    float32 neighbours, every code value, and 100k random / tiny / ±0 values."""
    code = MAPS[(kind, signed)]()
    table = nearest_code_table(code.numpy())
    xs = _probes(code, signed, seed=hash((kind, signed)) % 2**32)
    got = _encode_many(xs, table)
    expected = _bucketize(xs, code)
    bad = np.flatnonzero(got != expected)
    assert bad.size == 0, f"{bad.size} mismatches, e.g. x={xs[bad[:5]]!r}: got {got[bad[:5]]}, want {expected[bad[:5]]}"
    # The probes really hit the tie-breaking cases: a midpoint itself goes to the lower index, its upper neighbour
    # to the higher one.
    n = len(code) - 1
    assert np.array_equal(got[:n], np.arange(n)) and np.array_equal(got[n:2 * n], np.arange(1, n + 1))


@pytest.mark.parametrize(("kind", "signed"), list(MAPS), ids=MAP_IDS)
def test_every_code_value_encodes_to_its_own_index(kind, signed):
    """A code value is its own nearest code (codes are distinct): the index array 0..len-1 comes back."""
    code = MAPS[(kind, signed)]().numpy()
    table = nearest_code_table(code)
    assert np.array_equal(_encode_many(code, table), np.arange(len(code)))


def test_encoder_beyond_the_code_range_clamps_to_the_ends():
    """Values outside [-1, 1], infinities included (absmax scaling never produces them, but the table covers every
    non-NaN float), go to the first or last index, as bucketize does."""
    code = create_dynamic_map(signed=True)
    table = nearest_code_table(code.numpy())
    big = np.finfo(np.float32).max
    xs = np.array([-np.inf, -big, -3.0, -1.0000001, 1.0000001, 7.0, big, np.inf], dtype=np.float32)
    assert _encode_many(xs, table).tolist() == _bucketize(xs, code).tolist() == [0, 0, 0, 0, 255, 255, 255, 255]


def test_code_midpoints_are_float32_means():
    """code_midpoints equals (a + b) / 2 computed in float32 by torch."""
    code = create_dynamic_map(signed=True)
    mids = code_midpoints(code.numpy())
    assert mids.dtype == np.float32 and np.array_equal(mids, _midpoints(code).numpy())


def test_table_rejects_two_midpoints_in_one_bucket():
    """1.00005 and 1.00015 share their float32 key's top 16 bits (a bucket spans ~0.0078 near 1), so the
    one-threshold-per-bucket table cannot represent the code."""
    with pytest.raises(ValueError, match="two midpoints"):
        nearest_code_table(np.array([1.0, 1.0001, 1.0002], dtype=np.float32))


def test_table_accepts_midpoints_in_adjacent_buckets():
    """Control for the rejection above: values 1.0, 1.01, 1.02 put their midpoints in different buckets, and
    the table then encodes exactly like bucketize."""
    code = torch.tensor([1.0, 1.01, 1.02])
    table = nearest_code_table(code.numpy())
    xs = np.linspace(0.99, 1.03, 4001, dtype=np.float32)
    assert np.array_equal(_encode_many(xs, table), _bucketize(xs, code))


def test_signed_linear_map():
    """Signed 8-bit linear map: 255 values k/127 for k = -127..127 (float64 then rounded), exactly 0 in it,
    symmetric, equally spaced."""
    code = create_linear_map(signed=True)
    expected = (np.arange(-127, 128, dtype=np.float64) / 127).astype(np.float32)
    assert code.dtype == torch.float32 and code.shape == (255,)
    assert np.array_equal(code.numpy(), expected)
    assert float(code[127]) == 0.0 and int((code == 0).sum()) == 1
    assert torch.equal(code, -code.flip(0))
    # Equal spacing up to the float32 rounding of the two endpoints of each step (half an ulp of 1.0 each).
    steps = np.diff(code.numpy().astype(np.float64))
    np.testing.assert_allclose(steps, 1 / 127, rtol=0, atol=float(np.finfo(np.float32).eps))


def test_unsigned_linear_map():
    """Unsigned 8-bit linear map: the 256 values k/255 (float64 then rounded), from exactly 0 to exactly 1."""
    code = create_linear_map(signed=False)
    expected = (np.arange(256, dtype=np.float64) / 255).astype(np.float32)
    assert code.dtype == torch.float32 and np.array_equal(code.numpy(), expected)
    assert float(code[0]) == 0.0 and float(code[-1]) == 1.0


@pytest.mark.parametrize("bits", [2, 3, 5])
def test_linear_map_other_widths(bits):
    """Narrower widths follow the same k/steps formula: 2^bits - 1 signed values, 2^bits unsigned."""
    steps = 2 ** (bits - 1) - 1
    signed = create_linear_map(signed=True, total_bits=bits).numpy()
    unsigned = create_linear_map(signed=False, total_bits=bits).numpy()
    assert np.array_equal(signed, (np.arange(-steps, steps + 1) / steps).astype(np.float32))
    assert np.array_equal(unsigned, (np.arange(2**bits) / (2**bits - 1)).astype(np.float32))


@pytest.mark.parametrize("bits", [1, 9, True, 8.0])
def test_linear_map_rejects_bad_widths(bits):
    """total_bits outside 2..8 or not an int is refused with the value named."""
    with pytest.raises(ValueError, match="total_bits"):
        create_linear_map(signed=True, total_bits=bits)


@numba.njit(cache=False)
def _encode16_many(bits, table):
    """encode16 over an array whose length is a multiple of 16."""
    codes = np.zeros(bits.shape[0], dtype=np.uint8)
    for start in range(0, bits.shape[0], 16):
        encode16(bits, start, codes, table)
    return codes


@numba.njit(cache=False)
def _decode16_many(codes, code, scale):
    out = np.zeros(codes.shape[0], dtype=np.float32)
    for start in range(0, codes.shape[0], 16):
        decode16(codes, start, code, scale, out[start:])
    return out


@pytest.mark.parametrize(("kind", "signed"), list(MAPS), ids=MAP_IDS)
def test_gather_encoder_equals_bucketize(kind, signed):
    """The 16-lane gather encoder the fused kernels use gives bucketize's index on the same probes as the scalar
    encoder, plus ±inf; a NaN gets the scalar encoder's index (the kernels flag such blocks before encoding)."""
    code = MAPS[(kind, signed)]()
    table = nearest_code_table(code.numpy())
    xs = _probes(code, signed, seed=7)
    xs = np.concatenate([xs, np.array([np.inf, -np.inf] if signed else [np.inf, 0.0], dtype=np.float32)])
    xs = np.concatenate([xs, np.zeros(-len(xs) % 16, dtype=np.float32)])
    got = _encode16_many(xs.view(np.uint32), table).astype(np.int64)
    expected = _bucketize(xs, code)
    bad = np.flatnonzero(got != expected)
    assert bad.size == 0, f"{bad.size} mismatches, e.g. x={xs[bad[:5]]!r}: got {got[bad[:5]]}, want {expected[bad[:5]]}"
    nans = np.full(16, np.nan, dtype=np.float32)
    nans[::2] = -nans[::2]
    assert np.array_equal(_encode16_many(nans.view(np.uint32), table), _encode_many(nans, table))


def test_gather_decoder_equals_indexing():
    """decode16 gives code[codes] · scale in float32, lane for lane, for every code index."""
    code = create_dynamic_map(signed=True).numpy()
    codes = np.random.default_rng(3).permutation(np.tile(np.arange(256, dtype=np.uint8), 3))
    scale = np.float32(0.0371)
    assert np.array_equal(_decode16_many(codes, code, scale), code[codes] * scale)
