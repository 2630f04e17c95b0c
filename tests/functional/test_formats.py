"""lowbit.functional.formats against oracles built here (docs/math.md, eqs. P1–P9), never from torch's casts.

bf16: integer arithmetic on float32 bit patterns; fp16: numpy; fp8 and float64 inputs: the nearest value in a
table of every code decoded from sign, exponent, mantissa and bias, ties to the even code; saturation: ORT.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.functional.formats import Bf16Rounding, FloatFormat, cast, round_trip, to_bf16, to_fp8, to_fp16

E4M3, E5M2, BF16, FP16 = FloatFormat.FP8_E4M3, FloatFormat.FP8_E5M2, FloatFormat.BF16, FloatFormat.FP16
FP8 = [E4M3, E5M2]
ALL = [FP16, BF16, E4M3, E5M2]


# ---------------------------------------------------------------- oracles (independent of the code under test)
def fp8_table(e: int, m: int, fn: bool) -> np.ndarray:
    """All 256 values of an 8-bit float, by code, in float64 (eq. P1); NaN codes hold NaN."""
    bias, top = 2 ** (e - 1) - 1, 2**e - 1
    values = np.empty(256)
    for code in range(256):
        s, E, M = code >> 7, (code >> m) & top, code & (2**m - 1)
        if E == top and (not fn or M == 2**m - 1):
            v = np.nan if (fn or M) else np.inf  # fn: only S.1111.111 is NaN; IEEE-like: inf at M = 0
        elif E == 0:
            v = M * 2.0 ** (1 - bias - m)  # subnormal
        else:
            v = (1 + M / 2**m) * 2.0 ** (E - bias)
        values[code] = -v if s else v
    return values


with np.errstate(invalid="ignore"):  # widening the NaN patterns warns
    TABLES = {  # every code's value, by code
        E4M3: fp8_table(4, 3, fn=True),
        E5M2: fp8_table(5, 2, fn=False),
        BF16: (np.arange(65536, dtype=np.uint32) << 16).view(np.float32).astype(np.float64),
        FP16: np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float64),
    }
SIGN_SHIFT = {E4M3: 7, E5M2: 7, BF16: 15, FP16: 15}


def positive_finite(fmt: FloatFormat) -> np.ndarray:
    """Values of the codes 0, 1, … up to the largest finite one; increasing in all four formats."""
    table = TABLES[fmt][: 1 << SIGN_SHIFT[fmt]]
    return table[: int(np.argmax(~np.isfinite(table)))]


def rne_codes(x: np.ndarray, fmt: FloatFormat) -> np.ndarray:
    """Code of the value nearest to each ``x`` (float64, ``|x| ≤ max``), ties to the even code (eq. P4)."""
    pos, a = positive_finite(fmt), np.abs(x.astype(np.float64))
    hi = np.clip(np.searchsorted(pos, a), 0, len(pos) - 1)
    lo = np.maximum(hi - 1, 0)
    d_lo, d_hi = a - pos[lo], pos[hi] - a  # exact: Sterbenz, since consecutive values differ by at most 2x
    pick = np.where(d_lo < d_hi, lo, np.where(d_hi < d_lo, hi, np.where(lo % 2 == 0, lo, hi)))
    return pick | (np.signbit(x).astype(np.int64) << SIGN_SHIFT[fmt])


def trunc_codes(x: np.ndarray, fmt: FloatFormat) -> np.ndarray:
    """Code of the largest-magnitude value not above ``|x|``, with the sign of ``x`` (eq. P6)."""
    pos = positive_finite(fmt)
    pick = np.searchsorted(pos, np.abs(x.astype(np.float64)), side="right") - 1
    return pick | (np.signbit(x).astype(np.int64) << SIGN_SHIFT[fmt])


def bf16_rne_bits(f32: np.ndarray) -> np.ndarray:
    """bf16 round to nearest even on the float32 pattern (eq. P5), in uint64 arithmetic so nothing wraps."""
    b = f32.view(np.uint32).astype(np.uint64)
    return (b + 0x7FFF + ((b >> 16) & 1)) >> 16


def codes(t: torch.Tensor) -> np.ndarray:
    """Bit patterns of a 8- or 16-bit float tensor as non-negative int64."""
    if t.element_size() == 1:
        return t.view(torch.uint8).numpy().astype(np.int64)
    return t.view(torch.int16).numpy().view(np.uint16).astype(np.int64)


def assert_codes(got: torch.Tensor, want: np.ndarray, x: np.ndarray) -> None:
    """Same bit patterns where ``x`` is a number; a NaN (any pattern) where it is NaN."""
    nan = np.isnan(x)
    assert torch.isnan(got.float()).numpy()[nan].all(), "NaN input must give NaN"
    bad = np.flatnonzero((codes(got) != want) & ~nan)
    assert bad.size == 0, f"{bad.size} mismatches, e.g. x={x[bad[:5]]} got={codes(got)[bad[:5]]} want={want[bad[:5]]}"


RNG = np.random.default_rng(20240611)


def float32_patterns(n: int) -> np.ndarray:
    """Random float32 bit patterns plus ties, near-ties, subnormals, ±0, ±inf, NaNs and the extremes."""
    rand = RNG.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    high = RNG.integers(0, 2**16, n // 4, dtype=np.uint64).astype(np.uint32) << 16
    ties = np.concatenate([high | 0x8000, high | 0x7FFF, high | 0x8001, high | 0x0001, high | 0xFFFF])
    subnormal = RNG.integers(0, 0x800000, n // 8, dtype=np.uint64).astype(np.uint32)
    special = np.array([0, 0x80000000, 0x7F800000, 0xFF800000, 0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F8000,
                        0x7F800001, 0xFF800001, 0x7FC00000, 0x7FFF0000, 0x00008000, 0x00018000], dtype=np.uint32)
    bits = np.concatenate([rand, ties, subnormal, subnormal | 0x80000000, special])
    return bits.view(np.float32)


def in_range(fmt: FloatFormat, n: int = 100_000) -> np.ndarray:
    """float32 inputs with ``|x| ≤ max``: log-uniform, every midpoint (tie) and its neighbours, every value."""
    pos = positive_finite(fmt)
    mx = pos[-1]
    logs = RNG.uniform(np.log2(pos[1] / 8), np.log2(mx), n)
    mids = ((pos[:-1] + pos[1:]) / 2).astype(np.float32)  # m + 1 bits: exact in float32
    near = [np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, np.float32(0))]
    mags = np.concatenate([np.exp2(logs).astype(np.float32), mids, *near, pos.astype(np.float32)])
    mags = mags[mags <= mx]
    signs = np.where(RNG.random(mags.size) < 0.5, -1, 1).astype(np.float32)
    return np.concatenate([mags * signs, np.array([0.0, -0.0], np.float32)])


def near_ties64(fmt: FloatFormat, n: int = 50_000) -> np.ndarray:
    """float64 values a hair off a midpoint of ``fmt``: rounding them to float32 first manufactures a tie."""
    pos = positive_finite(fmt)
    x = RNG.choice((pos[:-1] + pos[1:]) / 2, n) * (1 + np.exp2(RNG.uniform(-50, -26, n)) * RNG.choice([-1, 1], n))
    x = x[np.abs(x) <= pos[-1]]
    return x * RNG.choice([-1, 1], x.size)


# ---------------------------------------------------------------- FloatFormat
@pytest.mark.parametrize("fmt", ALL)
def test_format_constants_match_the_table_of_codes(fmt):
    pos, table = positive_finite(fmt), TABLES[fmt]
    assert fmt.max_finite == pos[-1]
    assert fmt.smallest_subnormal == pos[1]
    assert fmt.smallest_normal == pos[1 << fmt.mantissa_bits]  # first code with exponent field 1
    assert fmt.has_infinity == bool(np.isinf(table).any())
    assert pos[fmt.bias << fmt.mantissa_bits] == 1.0  # exponent field == bias encodes 2^0
    assert 1 + fmt.exponent_bits + fmt.mantissa_bits == 8 * torch.empty(0, dtype=fmt.dtype).element_size()
    info = torch.finfo(fmt.dtype)
    assert (fmt.max_finite, fmt.smallest_normal, 2.0**-fmt.mantissa_bits) == (info.max, info.tiny, info.eps)


def test_format_constants_known_values():
    assert [f.max_finite for f in ALL] == [65504.0, 2.0**127 * (2 - 2.0**-7), 448.0, 57344.0]
    assert [f.smallest_subnormal for f in ALL] == [2.0**-24, 2.0**-133, 2.0**-9, 2.0**-16]
    assert [f.dtype for f in ALL] == [torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2]


# ---------------------------------------------------------------- bf16
def test_bf16_nearest_even_matches_bit_oracle():
    x = float32_patterns(1 << 20)
    assert_codes(to_bf16(torch.from_numpy(x)), bf16_rne_bits(x).astype(np.int64), x)


@settings(deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=64))
def test_bf16_nearest_even_property(patterns):
    x = np.array(patterns, dtype=np.uint32).view(np.float32)
    assert_codes(to_bf16(torch.from_numpy(x), Bf16Rounding.NEAREST_EVEN), bf16_rne_bits(x).astype(np.int64), x)


def test_bf16_truncate_matches_mask_oracle():
    x = float32_patterns(1 << 20)
    want = (x.view(np.uint32) & np.uint32(0xFFFF0000)) >> 16
    assert_codes(to_bf16(torch.from_numpy(x), Bf16Rounding.TRUNCATE), want.astype(np.int64), x)


def test_bf16_truncate_keeps_nan_whose_payload_is_in_the_low_bits():
    x = np.array([0x7F800001, 0xFF80FFFF], dtype=np.uint32)
    assert np.isinf((x & 0xFFFF0000).view(np.float32)).all()  # plain masking would give inf
    assert torch.isnan(to_bf16(torch.from_numpy(x.view(np.float32)), Bf16Rounding.TRUNCATE).float()).all()


def test_bf16_truncate_and_nearest_even_differ_and_overflow():
    x = torch.tensor([1 + 2**-8 + 2**-9, -(1 + 2**-8 + 2**-9)])
    assert to_bf16(x).float().tolist() == [1 + 2**-7, -(1 + 2**-7)]
    assert to_bf16(x, Bf16Rounding.TRUNCATE).float().tolist() == [1.0, -1.0]  # toward zero
    big = torch.tensor([3.4028234e38, 2.0**128 * (1 - 2.0**-9), np.nextafter(np.float32(2.0**128 * (1 - 2.0**-9)), 0)])
    assert to_bf16(big).float().tolist() == [float("inf"), float("inf"), BF16.max_finite]  # eq. P7
    assert to_bf16(big, Bf16Rounding.TRUNCATE).float().tolist() == [BF16.max_finite] * 3


# ---------------------------------------------------------------- fp16
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fp16_matches_numpy(dtype):
    # numpy converts float64 to float16 in one rounding, so it is also the oracle for eq. P9 here.
    x = float32_patterns(1 << 20) if dtype is np.float32 else np.append(near_ties64(FP16), RNG.normal(0, 1e3, 9999))
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).view(np.uint16).astype(np.int64)
    assert_codes(to_fp16(torch.from_numpy(x)), want, x)


# ---------------------------------------------------------------- fp8
@pytest.mark.parametrize("saturate", [True, False])
@pytest.mark.parametrize("fmt", FP8)
def test_fp8_in_range_matches_table_oracle(fmt, saturate):
    x = in_range(fmt)
    assert_codes(to_fp8(torch.from_numpy(x), fmt, saturate=saturate), rne_codes(x, fmt), x)


@settings(deadline=None)
@given(fmt=st.sampled_from(FP8), data=st.data())
def test_fp8_in_range_property(fmt, data):
    mx = fmt.max_finite
    x = np.array(data.draw(st.lists(st.floats(-mx, mx, width=32), min_size=1, max_size=64)), dtype=np.float32)
    assert_codes(to_fp8(torch.from_numpy(x), fmt), rne_codes(x, fmt), x)


@pytest.mark.parametrize("fmt", FP8)
def test_fp8_saturate_at_and_beyond_max(fmt):
    mx = np.float32(fmt.max_finite)
    half_step = np.float32(2.0 ** (np.floor(np.log2(mx)) - fmt.mantissa_bits - 1))
    over = np.array([mx, np.nextafter(mx, np.float32(np.inf)), mx + half_step, mx + 2 * half_step, 1e6, 3e38, np.inf],
                    dtype=np.float32)
    got = to_fp8(torch.from_numpy(np.concatenate([over, -over])), fmt).float()
    assert got.tolist() == [fmt.max_finite] * 7 + [-fmt.max_finite] * 7


def test_fp8_without_saturation_is_torch_cast_as_measured():
    # torch 2.13 CPU: E4M3 saturates on its own (never NaN); E5M2 overflows to inf from the midpoint 61440 on.
    x = torch.tensor([464.0, 470.0, 480.0, 1e6, float("inf"), -float("inf")])
    assert to_fp8(x, E4M3, saturate=False).float().tolist() == [448.0] * 5 + [-448.0]
    y = torch.tensor([61439.0, 61440.0, 1e6, float("inf"), -float("inf")])
    assert to_fp8(y, E5M2, saturate=False).float().tolist() == [57344.0] + [float("inf")] * 3 + [-float("inf")]
    z = torch.from_numpy(float32_patterns(1 << 16))
    for fmt in FP8:
        assert torch.equal(to_fp8(z, fmt, saturate=False).view(torch.uint8), z.to(fmt.dtype).view(torch.uint8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("saturate", [True, False])
@pytest.mark.parametrize("fmt", FP8)
def test_fp8_nan_stays_nan(fmt, saturate, dtype):
    x = torch.tensor([float("nan"), -float("nan"), 1.0], dtype=dtype)
    assert torch.isnan(to_fp8(x, fmt, saturate=saturate).float()).tolist() == [True, True, False]


@pytest.mark.parametrize("fmt", FP8)
def test_fp8_saturate_matches_onnxruntime(fmt):
    ort, helper = pytest.importorskip("onnxruntime"), pytest.importorskip("onnx.helper")
    f32, to = 1, (17 if fmt is E4M3 else 19)  # TensorProto.FLOAT, FLOAT8E4M3FN, FLOAT8E5M2
    nodes = [helper.make_node("Cast", ["x"], ["q"], to=to, saturate=1), helper.make_node("Cast", ["q"], ["y"], to=f32)]
    io = [helper.make_tensor_value_info(n, f32, [None]) for n in ("x", "y")]
    model = helper.make_model(helper.make_graph(nodes, "cast", io[:1], io[1:]),
                              opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.concatenate([in_range(fmt, 10_000), float32_patterns(1 << 16)])
    np.testing.assert_array_equal(to_fp8(torch.from_numpy(x), fmt).float().numpy(), session.run(None, {"x": x})[0])


# ---------------------------------------------------------------- float64 inputs: one rounding (eq. P9)
@pytest.mark.parametrize("fmt", ALL)
def test_float64_rounds_once(fmt):
    x = near_ties64(fmt)
    want = rne_codes(x, fmt)
    assert_codes(cast(torch.from_numpy(x), fmt), want, x)
    # The measured torch behaviour documented in the module: its direct float64 cast rounds twice.
    direct = torch.from_numpy(x).to(fmt.dtype)
    assert (codes(direct) != want).any()


def test_float64_bf16_truncate():
    x = np.concatenate([near_ties64(BF16), [-np.nextafter(1 + 2.0**-7, 0), 2.0**-140 * (1 - 2.0**-30)]])
    assert_codes(to_bf16(torch.from_numpy(x), Bf16Rounding.TRUNCATE), trunc_codes(x, BF16), x)


def test_float64_known_double_rounding_case_and_extremes():
    y = torch.tensor([1 + 2**-8 + 2**-40], dtype=torch.float64)
    assert y.to(torch.bfloat16).item() == 1.0  # torch: float64 → float32 is 1 + 2^−8, a tie, then to even
    assert to_bf16(y).item() == 1 + 2**-7
    x = torch.tensor([1e300, -1e300, 1e-300, -1e-300, float("inf"), float("nan")], dtype=torch.float64)
    assert to_bf16(x).float().tolist()[:5] == [float("inf"), -float("inf"), 0.0, -0.0, float("inf")]
    assert torch.signbit(to_bf16(x)).tolist()[:4] == [False, True, False, True]
    assert to_bf16(x, Bf16Rounding.TRUNCATE).float().tolist()[:2] == [BF16.max_finite, -BF16.max_finite]
    assert to_fp8(x, E4M3).float().tolist()[:5] == [448.0, -448.0, 0.0, -0.0, 448.0]
    assert to_fp16(x).float().isnan().tolist() == [False] * 5 + [True]


# ---------------------------------------------------------------- round_trip
@settings(deadline=None)
@given(fmt=st.sampled_from(ALL), data=st.data())
def test_round_trip_relative_error_in_normal_range(fmt, data):
    mag = data.draw(st.floats(fmt.smallest_normal, fmt.max_finite, width=32))
    x = torch.tensor([mag, -mag])
    y = round_trip(x, fmt)
    assert y.dtype == torch.float32
    err = (y.double() - x.double()).abs()
    assert (err <= 2.0 ** -(fmt.mantissa_bits + 1) * x.double().abs()).all()  # eq. P4


@settings(deadline=None)
@given(st.floats(BF16.smallest_normal, BF16.max_finite, width=32))
def test_round_trip_truncate_error(mag):
    x = torch.tensor([mag, -mag])
    y = round_trip(x, BF16, rounding=Bf16Rounding.TRUNCATE).double()
    assert ((y.abs() <= x.double().abs()) & ((y - x.double()).abs() < 2.0**-7 * x.double().abs())).all()


@settings(deadline=None)
@given(fmt=st.sampled_from(ALL), data=st.data())
def test_round_trip_absolute_error_below_normal_range(fmt, data):
    x = torch.tensor([data.draw(st.floats(-fmt.smallest_normal, fmt.smallest_normal, width=32))])
    assert float((round_trip(x, fmt).double() - x.double()).abs()) <= fmt.smallest_subnormal / 2


@pytest.mark.parametrize("fmt", ALL)
def test_round_trip_shape_dtype_and_no_autograd(fmt):
    for x in (torch.randn(3, 4, dtype=torch.float64), torch.empty(0, 5), torch.randn(2, dtype=torch.bfloat16)):
        y = round_trip(x, fmt)
        assert y.dtype == torch.float32 and y.shape == x.shape and cast(x, fmt).dtype == fmt.dtype
    w = torch.randn(4, 3, requires_grad=True)
    options = [{"rounding": r} for r in Bf16Rounding] if fmt is BF16 else [{}]
    assert not any(round_trip(w, fmt, **o).requires_grad or round_trip(w.t(), fmt, **o).requires_grad for o in options)


def test_cast_dispatches_with_options_and_narrow_inputs_are_exact():
    x = torch.from_numpy(float32_patterns(4096))
    assert (codes(cast(x, FP16)) == codes(to_fp16(x))).all()
    assert (codes(cast(x, BF16, rounding=Bf16Rounding.TRUNCATE)) == codes(to_bf16(x, Bf16Rounding.TRUNCATE))).all()
    assert (codes(cast(x, E5M2, saturate=False)) == codes(to_fp8(x, E5M2, saturate=False))).all()
    assert (codes(cast(x, E4M3)) == codes(to_fp8(x, E4M3))).all()
    for narrow in (x.half(), x.bfloat16()):  # float16/bfloat16 → float32 is exact: no second rounding
        assert (codes(to_fp8(narrow)) == codes(to_fp8(narrow.float()))).all()


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("call", [to_fp16, to_bf16, to_fp8, lambda x: cast(x, BF16), lambda x: round_trip(x, E5M2)])
@pytest.mark.parametrize("bad", [torch.tensor([1, 2]), torch.tensor([True]), torch.zeros(2, dtype=torch.complex64)])
def test_non_floating_input_is_rejected(call, bad):
    with pytest.raises(ValueError, match=r"x must be a floating tensor, got torch\."):
        call(bad)
    with pytest.raises(ValueError, match="x must be a torch.Tensor, got list"):
        call([1.0])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda x: to_fp8(x, BF16), r"fmt must be .*got <FloatFormat.BF16"),
        (lambda x: to_fp8(x, "fp8_e4m3"), "fmt must be .*got 'fp8_e4m3'"),
        (lambda x: to_fp8(x, E4M3, saturate=1), "saturate must be a bool, got 1"),
        (lambda x: to_bf16(x, "truncate"), "rounding must be a Bf16Rounding, got 'truncate'"),
        (lambda x: cast(x, "bf16"), "fmt must be a FloatFormat, got 'bf16'"),
        (lambda x: cast(x, FP16, saturate=True), "option 'saturate' does not apply to FloatFormat.FP16"),
        (lambda x: cast(x, BF16, saturate=True), "option 'saturate' does not apply to FloatFormat.BF16"),
        (lambda x: round_trip(x, E4M3, rounding=Bf16Rounding.TRUNCATE), "option 'rounding' does not apply"),
    ],
)
def test_bad_arguments_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call(torch.ones(2))
