"""Gradient codes (onebit, QSGD, TernGrad, DoReFa), the Elias gamma coder and lane packing, against oracles here.

Oracles: float64 block statistics computed in this file; unbiasedness of the stochastic codes checked by the mean of
many draws against ``x`` within five standard errors of the empirical per-element variance; DoReFa's gradient
formula written out from the paper; Elias codes built as Python bit strings from the definition and packed least
significant bit first by a loop here; lane packing against the older, independent :func:`pack`.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lowbit.functional import gradient_codes as G
from lowbit.functional.dorefa import dorefa_gradient
from lowbit.functional.elias import elias_bits, elias_decode, elias_encode
from lowbit.functional.packing import pack, pack_lanes, unpack, unpack_lanes

pytestmark = pytest.mark.usefixtures("one_thread")

DRAWS = 4000


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _blocks64(x: torch.Tensor, block: int) -> list[np.ndarray]:
    """``x`` as float64 numpy blocks of ``block`` elements, the last one short."""
    flat = x.detach().double().reshape(-1).numpy()
    return [flat[i:i + block] for i in range(0, flat.size, block)]


def _assert_unbiased(draws: torch.Tensor, x: torch.Tensor, slack: float) -> None:
    """``|mean − x| ≤ 5·sqrt(var/n) + slack`` per element, ``draws`` of shape ``(n, numel)``."""
    d = draws.double()
    mean, var = d.mean(dim=0), d.var(dim=0)
    bound = 5 * (var / d.shape[0]).sqrt() + slack
    err = (mean - x.double()).abs()
    assert bool((err <= bound).all()), f"worst excess {float((err - bound).max()):.3g}"


# ---------------------------------------------------------------- onebit


@pytest.mark.parametrize("n,block", [(1, 4), (10, 4), (512, 512), (1000, 64), (1001, 128)])
def test_onebit_signs_and_scales_match_float64_reference(n, block):
    """onebit signs are x ≥ 0 (0 counts as +) and scales the float64 mean |x| per block, short last block included."""
    x = torch.randn(n, generator=_gen(n))
    x[::7] = 0.0
    signs, scales = G.onebit_encode(x, block)
    assert signs.dtype == torch.uint8 and scales.dtype == torch.float32
    assert signs.tolist() == [1 if v >= 0 else 0 for v in x.tolist()]
    reference = np.array([np.abs(b).mean() for b in _blocks64(x, block)])
    np.testing.assert_allclose(scales.numpy(), reference, rtol=2e-6, atol=0)


def test_onebit_zero_counts_as_positive():
    """onebit maps 0.0 and -0.0 to sign bit 1 (the documented convention)."""
    signs, scales = G.onebit_encode(torch.tensor([0.0, -0.0, -1.0]), 3)
    assert signs.tolist() == [1, 1, 0]
    assert scales.tolist() == [pytest.approx(1 / 3)]


def test_onebit_decode_values():
    """onebit_decode gives +scale for sign 1 and −scale for sign 0 per block; oracle: a Python loop."""
    x = torch.randn(203, generator=_gen(3))
    block = 16
    signs, scales = G.onebit_encode(x, block)
    got = G.onebit_decode(signs, scales, block)
    expected = [float(scales[i // block]) if signs[i] else -float(scales[i // block]) for i in range(x.numel())]
    assert got.tolist() == expected


# ---------------------------------------------------------------- QSGD


def test_qsgd_unbiased():
    """The mean of 4000 QSGD decodes approaches x within 5 standard errors (empirical variance); oracle: x itself."""
    x = torch.randn(64, generator=_gen(1))
    x[5] = 0.0
    levels, block = 4, x.numel()
    signed, norms = G.qsgd_encode(x.repeat(DRAWS), levels, block, _gen(2))
    draws = G.qsgd_decode(signed, norms, levels, block).view(DRAWS, -1)
    _assert_unbiased(draws, x, slack=1e-5 * float(x.norm()))


@pytest.mark.parametrize("levels", [1, 4, 16, 255])
@pytest.mark.parametrize("n,block", [(100, 32), (777, 128), (5, 512)])
def test_qsgd_levels_norms_and_signs(levels, n, block):
    """QSGD levels are integers in [−s, s], |l| is floor or ceil of s|x|/‖x‖ (float64), sign(l) = sign(x), norms
    equal the float64 block norm."""
    x = torch.randn(n, generator=_gen(n + levels)) * torch.rand(n, generator=_gen(7)) * 3
    signed, norms = G.qsgd_encode(x, levels, block, _gen(0))
    assert signed.dtype == torch.int32 and signed.shape == (n,)
    assert int(signed.abs().max()) <= levels
    blocks = _blocks64(x, block)
    np.testing.assert_allclose(norms.numpy(), [np.linalg.norm(b) for b in blocks], rtol=2e-6)
    ratio = np.concatenate([levels * np.abs(b) / np.linalg.norm(b) for b in blocks])
    magnitude = signed.abs().numpy()
    assert (magnitude >= np.floor(ratio * (1 - 1e-5))).all()
    assert (magnitude <= np.ceil(ratio * (1 + 1e-5))).all()
    nonzero = signed != 0
    assert torch.equal(torch.sign(signed[nonzero]).float(), torch.sign(x[nonzero]))


def test_qsgd_zero_block():
    """A QSGD block of zeros has norm 0, levels 0 and decodes to exactly 0 while other blocks are unaffected."""
    x = torch.randn(40, generator=_gen(4))
    x[8:16] = 0.0
    signed, norms = G.qsgd_encode(x, 8, 8, _gen(1))
    assert float(norms[1]) == 0.0 and signed[8:16].tolist() == [0] * 8
    decoded = G.qsgd_decode(signed, norms, 8, 8)
    assert decoded[8:16].tolist() == [0.0] * 8
    assert bool((norms[[0, 2, 3, 4]] > 0).all())


# ---------------------------------------------------------------- TernGrad


@pytest.mark.parametrize("widen", [1.0, 1.5])
def test_terngrad_unbiased(widen):
    """The mean of 4000 TernGrad decodes approaches x within 5 standard errors, with the block max as scaler or a
    larger shared one; oracle: x itself."""
    x = torch.randn(64, generator=_gen(11))
    x[3] = 0.0
    block = x.numel()
    repeated = x.repeat(DRAWS)
    scalers = G.block_absmax(repeated, block) * widen
    codes = G.terngrad_encode(repeated, scalers, block, _gen(12))
    draws = G.terngrad_decode(codes, scalers, block).view(DRAWS, -1)
    _assert_unbiased(draws, x, slack=1e-6 * float(x.abs().max()))


def test_terngrad_codes_and_signs():
    """TernGrad codes are int8 in {−1, 0, 1}, nonzero codes carry sign(x), x = 0 gives 0, and the block max always
    survives when the scaler equals it (probability 1)."""
    x = torch.randn(1000, generator=_gen(13))
    x[::9] = 0.0
    block = 100
    scalers = G.block_absmax(x, block)
    codes = G.terngrad_encode(x, scalers, block, _gen(14))
    assert codes.dtype == torch.int8
    assert set(codes.tolist()) <= {-1, 0, 1}
    nonzero = codes != 0
    assert torch.equal(codes[nonzero].float(), torch.sign(x[nonzero]))
    assert codes[x == 0].tolist() == [0] * int((x == 0).sum())
    peaks = x.abs().view(-1, block).argmax(dim=1) + torch.arange(0, 1000, block)
    assert torch.equal(codes[peaks].float(), torch.sign(x[peaks]))


def test_terngrad_scaler_below_block_max_raises():
    """A TernGrad scaler below its block's max |x|, or a wrong number of scalers, raises ValueError."""
    x = torch.randn(20, generator=_gen(15))
    scalers = G.block_absmax(x, 10)
    with pytest.raises(ValueError, match="scalers"):
        G.terngrad_encode(x, scalers * torch.tensor([1.0, 0.99]), 10, _gen(0))
    with pytest.raises(ValueError, match="scalers"):
        G.terngrad_encode(x, scalers[:1], 10, _gen(0))


def test_terngrad_zero_block():
    """A TernGrad block of zeros (scaler 0) encodes and decodes to zeros."""
    x = torch.cat([torch.zeros(10), torch.ones(10)])
    scalers = G.block_absmax(x, 10)
    codes = G.terngrad_encode(x, scalers, 10, _gen(0))
    assert codes[:10].tolist() == [0] * 10
    assert G.terngrad_decode(codes, scalers, 10)[:10].tolist() == [0.0] * 10


# ---------------------------------------------------------------- DoReFa


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("n,block", [(1, 8), (333, 64), (1024, 512)])
def test_dorefa_codes_in_range_and_within_one_step(bits, n, block):
    """DoReFa codes lie in 0..2^k−1, peaks equal the block max |x|, and decoded values are within one step
    2·peak/(2^k−1) of x (float64 oracle)."""
    x = torch.randn(n, generator=_gen(n + bits))
    codes, peaks = G.dorefa_encode(x, bits, block, _gen(bits))
    assert codes.shape == (n,)
    assert int(codes.min()) >= 0 and int(codes.max()) <= 2**bits - 1
    np.testing.assert_array_equal(peaks.numpy(), [np.abs(b).max() for b in _blocks64(x, block)])
    decoded = G.dorefa_decode(codes, peaks, bits, block).double()
    step = 2 * peaks.double().repeat_interleave(block)[:n] / (2**bits - 1)
    assert bool(((decoded - x.double()).abs() <= step * (1 + 1e-5)).all())


def test_gradient_code_dtypes_match_docstrings():
    """Encoders return the code dtypes their docstrings state: onebit uint8, qsgd int32, terngrad int8, dorefa int32."""
    x = torch.randn(50, generator=_gen(16))
    assert G.onebit_encode(x, 8)[0].dtype == torch.uint8
    assert G.qsgd_encode(x, 4, 8, _gen(0))[0].dtype == torch.int32
    assert G.terngrad_encode(x, G.block_absmax(x, 8), 8, _gen(0)).dtype == torch.int8
    # dorefa_encode's docstring: "(codes, peaks): DoReFa's k-bit gradient codes in 0..2^k − 1 (int32)"
    assert G.dorefa_encode(x, 4, 8, _gen(0))[0].dtype == torch.int32


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_dorefa_unbiased(bits):
    """The mean of 4000 DoReFa decodes approaches x within 5 standard errors; oracle: x itself."""
    x = torch.randn(64, generator=_gen(17))
    block = x.numel()
    codes, peaks = G.dorefa_encode(x.repeat(DRAWS), bits, block, _gen(18))
    draws = G.dorefa_decode(codes, peaks, bits, block).view(DRAWS, -1)
    _assert_unbiased(draws, x, slack=1e-5 * float(x.abs().max()))


def _dorefa_paper(dr: torch.Tensor, bits: int, generator: torch.Generator) -> torch.Tensor:
    """DoReFa-Net's gradient quantizer as written in the paper, in float32, max per sample (first dimension):
    ``2·max|dr|·(quantize_k(dr/(2·max|dr|) + 1/2 + N(k)) − 1/2)``, ``N = (U − 1/2)/(2^k − 1)``,
    ``quantize_k(r) = round(r·(2^k − 1))/(2^k − 1)``."""
    n = 2**bits - 1
    noise = (torch.rand(dr.shape, generator=generator, dtype=dr.dtype) - 0.5) / n
    m = dr.abs().amax(dim=tuple(range(1, dr.ndim)), keepdim=True)
    r = dr / (2 * m) + 0.5 + noise
    return 2 * m * (torch.round(r * n) / n - 0.5)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("shape", [(3, 7), (4, 3, 5, 5), (1, 1000)])
def test_dorefa_gradient_matches_paper_formula(bits, shape):
    """dorefa_gradient equals the paper's per-sample formula written here, fed the same seeded torch.rand draws."""
    dr = torch.randn(shape, generator=_gen(19)) * torch.arange(1, shape[0] + 1).view(-1, *[1] * (len(shape) - 1))
    got = dorefa_gradient(dr, bits, _gen(20))
    expected = _dorefa_paper(dr, bits, _gen(20))
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)


# ---------------------------------------------------------------- determinism and arguments


ENCODERS = {
    "qsgd": lambda x, g: G.qsgd_encode(x, 8, 64, g)[0],
    "terngrad": lambda x, g: G.terngrad_encode(x, G.block_absmax(x, 64), 64, g),
    "dorefa": lambda x, g: G.dorefa_encode(x, 2, 64, g)[0],
}


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_codes_are_deterministic_per_seed(name):
    """The same generator seed gives the same codes; another seed gives different ones (stochastic encoders)."""
    x = torch.randn(1000, generator=_gen(21))
    encode = ENCODERS[name]
    assert torch.equal(encode(x, _gen(5)), encode(x, _gen(5)))
    assert not torch.equal(encode(x, _gen(5)), encode(x, _gen(6)))


X10 = torch.linspace(-1, 1, 10)
BAD_CALLS = {
    "onebit block=0": (lambda: G.onebit_encode(X10, 0), "block"),
    "onebit block=True": (lambda: G.onebit_encode(X10, True), "block"),
    "onebit block=2.0": (lambda: G.onebit_encode(X10, 2.0), "block"),
    "qsgd block=0": (lambda: G.qsgd_encode(X10, 4, 0), "block"),
    "qsgd levels=0": (lambda: G.qsgd_encode(X10, 0, 4), "levels"),
    "qsgd levels=2**15+1": (lambda: G.qsgd_encode(X10, 2**15 + 1, 4), "levels"),
    "qsgd levels=4.0": (lambda: G.qsgd_encode(X10, 4.0, 4), "levels"),
    "qsgd_decode levels=0": (lambda: G.qsgd_decode(torch.zeros(10, dtype=torch.int32), torch.ones(3), 0, 4),
                             "levels"),
    "terngrad block=0": (lambda: G.terngrad_encode(X10, torch.ones(3), 0), "block"),
    "dorefa block=0": (lambda: G.dorefa_encode(X10, 2, 0), "block"),
    "dorefa bits=0": (lambda: G.dorefa_encode(X10, 0, 4), "bits"),
    "dorefa bits=17": (lambda: G.dorefa_encode(X10, 17, 4), "bits"),
    "block_absmax block=-1": (lambda: G.block_absmax(X10, -1), "block"),
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_arguments_raise_value_error(case):
    """Invalid block/levels/bits raise ValueError whose message names the argument."""
    call, word = BAD_CALLS[case]
    with pytest.raises(ValueError, match=word):
        call()


BAD_DECODES = {
    "onebit_decode": lambda: G.onebit_decode(torch.ones(10, dtype=torch.uint8), torch.ones(3), 0),
    "qsgd_decode": lambda: G.qsgd_decode(torch.ones(10, dtype=torch.int32), torch.ones(3), 4, 0),
    "terngrad_decode": lambda: G.terngrad_decode(torch.ones(10, dtype=torch.int8), torch.ones(3), 0),
    "dorefa_decode": lambda: G.dorefa_decode(torch.ones(10, dtype=torch.int32), torch.ones(3), 2, 0),
}


@pytest.mark.parametrize("name", sorted(BAD_DECODES))
def test_decoders_reject_block_zero(name):
    """The public decoders reject block=0 with a ValueError naming ``block``, as the encoders do."""
    with pytest.raises(ValueError, match="block"):
        BAD_DECODES[name]()


# ---------------------------------------------------------------- Elias gamma


def _elias_bitstring(values) -> str:
    """The Elias gamma code from its definition: m = |v| + 1, N = ⌊log₂ m⌋: '0'·N + bin(m), then a sign bit
    ('1' negative) when v ≠ 0."""
    out = []
    for v in values:
        m = abs(int(v)) + 1
        n = m.bit_length() - 1
        out.append("0" * n + bin(m)[2:])
        if v != 0:
            out.append("1" if v < 0 else "0")
    return "".join(out)


def _pack_lsb_first(bitstring: str) -> list[int]:
    """A '0'/'1' string into bytes, bit i of the stream at bit i % 8 of byte i // 8; last byte zero-padded."""
    out = [0] * ((len(bitstring) + 7) // 8)
    for i, bit in enumerate(bitstring):
        if bit == "1":
            out[i // 8] |= 1 << (i % 8)
    return out


def test_elias_docstring_costs():
    """Elias costs from the module docstring: 0 is 1 bit, ±1 and ±2 are 4, ±3..±6 are 6; oracle: the bit string."""
    for values, cost in [([0], 1), ([1], 4), ([-2], 4), ([3], 6), ([-6], 6), ([7], 8)]:
        assert elias_bits(np.array(values)) == cost == len(_elias_bitstring(values))


ELIAS_VALUES = st.lists(
    st.one_of(st.integers(-20, 20), st.integers(-(2**20), 2**20)), min_size=0, max_size=300)


@given(ELIAS_VALUES)
def test_elias_matches_definition_and_round_trips(values):
    """elias_bits is the length of the definition's bit string, the stream is that string packed LSB first, and
    elias_decode inverts elias_encode (int32 and int64 inputs)."""
    levels = np.array(values, dtype=np.int64)
    bitstring = _elias_bitstring(values)
    assert elias_bits(levels) == len(bitstring)
    stream = elias_encode(levels)
    assert stream.dtype == np.uint8
    assert stream.tolist() == _pack_lsb_first(bitstring)
    assert elias_decode(stream, len(values)).tolist() == values
    assert elias_encode(levels.astype(np.int32)).tolist() == stream.tolist()


def test_elias_round_trip_large_random_array():
    """A 20000-element random array mixing small levels and magnitudes up to 2**20 round-trips exactly."""
    rng = np.random.default_rng(0)
    levels = np.where(rng.random(20000) < 0.5, rng.integers(-3, 4, 20000), rng.integers(-(2**20), 2**20 + 1, 20000))
    stream = elias_encode(levels)
    assert stream.size == math.ceil(elias_bits(levels) / 8)
    np.testing.assert_array_equal(elias_decode(stream, levels.size), levels)


@pytest.mark.parametrize("k", [20, 40, 48, 49, 53, 62])
def test_elias_bits_just_below_powers_of_two(k):
    """elias_bits and the stream length match the definition for |v| + 1 = 2^k − 1 (just below a power of two),
    where ⌊log₂ m⌋ is k − 1; oracle: the bit string from the definition."""
    values = [2**k - 2, -(2**k - 2), 2**k - 1]
    levels = np.array(values, dtype=np.int64)
    bitstring = _elias_bitstring(values)
    assert elias_bits(levels) == len(bitstring)
    assert elias_encode(levels).tolist() == _pack_lsb_first(bitstring)
    assert elias_decode(elias_encode(levels), 3).tolist() == values


def test_elias_truncated_stream_raises():
    """elias_decode of a stream missing its last byte, or asked for more levels than encoded, raises ValueError."""
    levels = np.array([0, 5, -300, 2**20, 1, 0, -1], dtype=np.int64)
    stream = elias_encode(levels)
    with pytest.raises(ValueError):
        elias_decode(stream[:-1], levels.size)
    with pytest.raises(ValueError):
        elias_decode(stream, levels.size + 1)
    with pytest.raises(ValueError):
        elias_decode(np.zeros(0, dtype=np.uint8), 1)


def test_elias_empty():
    """Empty input: 0 bits, an empty stream, and decoding 0 levels from it gives an empty array."""
    empty = np.zeros(0, dtype=np.int64)
    assert elias_bits(empty) == 0
    assert elias_encode(empty).size == 0
    assert elias_decode(elias_encode(empty), 0).size == 0


# ---------------------------------------------------------------- lane packing


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("n", [0, 1, 3, 7, 9, 15, 1001])
def test_pack_lanes_equals_pack(bits, n):
    """pack_lanes gives the same bytes as the older pack(codes, bits, signed=False); unpack_lanes inverts it and
    agrees with unpack."""
    codes = torch.randint(0, 2**bits, (n,), generator=_gen(n * 10 + bits), dtype=torch.int64)
    lanes = pack_lanes(codes, bits)
    assert lanes.dtype == torch.uint8
    assert torch.equal(lanes, pack(codes, bits, signed=False))
    back = unpack_lanes(lanes, bits, n)
    assert back.dtype == torch.uint8
    assert torch.equal(back, codes.to(torch.uint8))
    assert torch.equal(back, unpack(lanes, bits, signed=False, shape=(n,)))


@given(st.sampled_from([1, 2, 4, 8]), st.data())
def test_pack_lanes_round_trip(bits, data):
    """unpack_lanes(pack_lanes(c)) == c for arbitrary codes of 1, 2, 4, 8 bits; oracle: the codes themselves."""
    values = data.draw(st.lists(st.integers(0, 2**bits - 1), max_size=100))
    codes = torch.tensor(values, dtype=torch.uint8)
    assert unpack_lanes(pack_lanes(codes, bits), bits, len(values)).tolist() == values


def test_lane_packing_rejects_bad_arguments():
    """bits outside (1, 2, 4, 8) and a too-short byte stream raise ValueError naming the problem."""
    with pytest.raises(ValueError, match="bits"):
        pack_lanes(torch.zeros(4, dtype=torch.uint8), 3)
    with pytest.raises(ValueError, match="bits"):
        unpack_lanes(torch.zeros(4, dtype=torch.uint8), 3, 4)
    with pytest.raises(ValueError, match="cannot hold"):
        unpack_lanes(torch.zeros(1, dtype=torch.uint8), 2, 5)
