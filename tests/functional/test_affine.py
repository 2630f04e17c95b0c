"""Uniform quantization: known vectors, hypothesis properties, granularities, degenerate inputs."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lowbit import PerChannel, PerGroup, PerTensor, QParams, QuantSpec, Rounding, ScaleKind
from lowbit.functional import choose_qparams, dequantize, fake_quantize, qparam_shape, quantize, reduce_minmax

UINT8_ASYM = QuantSpec(bits=8, signed=False, symmetric=False)


def test_asymmetric_uint8_known_vector():
    qp = choose_qparams(-1.0, 2.0, UINT8_ASYM)
    assert float(qp.scale) == pytest.approx(3 / 255, rel=1e-7)
    assert int(qp.zero_point) == 85


def test_tflite_choose_quantization_params_vector():
    # TFLite ChooseQuantizationParams(min=-10, max=30) for uint8: scale 0.156863, zero point 64.
    qp = choose_qparams(-10.0, 30.0, UINT8_ASYM)
    assert float(qp.scale) == pytest.approx(0.156863, abs=5e-7)
    assert int(qp.zero_point) == 64


def test_symmetric_scale_uses_qmax():
    qp = choose_qparams(-0.5, 2.54, QuantSpec(bits=8))
    assert float(qp.scale) == pytest.approx(2.54 / 127)
    assert int(qp.zero_point) == 0
    narrow = choose_qparams(-2.54, 1.0, QuantSpec(bits=8, narrow_range=True))
    assert float(narrow.scale) == pytest.approx(2.54 / 127)


def test_asymmetric_range_is_widened_to_contain_zero():
    # [2, 5] becomes [0, 5]: real 0 must be a code.
    qp = choose_qparams(2.0, 5.0, UINT8_ASYM)
    assert int(qp.zero_point) == 0 and float(qp.scale) == pytest.approx(5 / 255)
    qp = choose_qparams(-5.0, -2.0, UINT8_ASYM)
    assert int(qp.zero_point) == 255 and float(qp.scale) == pytest.approx(5 / 255)


@pytest.mark.parametrize("raw, expected", [(0.3, 0.25), (10.0, 8.0), (12.0, 16.0), (1.0, 1.0), (0.7, 0.5), (0.74, 1.0)])
def test_power_of_two_scale_rounds_log2(raw, expected):
    spec = QuantSpec(bits=8, scale_kind=ScaleKind.POWER_OF_TWO)
    qp = choose_qparams(-raw * 127, raw * 127, spec)
    assert float(qp.scale) == expected


def test_power_of_two_asymmetric_zero_point_stays_on_grid():
    spec = QuantSpec(bits=8, signed=False, symmetric=False, scale_kind=ScaleKind.POWER_OF_TWO)
    qp = choose_qparams(-10.0, 0.5, spec)  # 10.5/255 → 2^-5: the range no longer fits, the zero point clamps
    assert float(qp.scale) == 2**-5 and int(qp.zero_point) == 255


def test_empty_range_gets_unit_scale_and_zero_is_exact():
    for spec in (QuantSpec(), UINT8_ASYM):
        qp = choose_qparams(0.0, 0.0, spec)
        assert float(qp.scale) == 1.0
        assert float(dequantize(quantize(torch.zeros(3), qp), qp).abs().max()) == 0.0


def test_constant_tensor_is_exact():
    x = torch.full((4, 5), 3.7)
    for spec in (QuantSpec(), UINT8_ASYM):
        qp = choose_qparams(*reduce_minmax(x, PerTensor()), spec)
        assert torch.allclose(fake_quantize(x, qp), x, rtol=1e-6, atol=0)


def test_all_zero_channel_does_not_poison_others():
    w = torch.randn(4, 16)
    w[2] = 0.0  # the "zero-variance" depthwise channel
    spec = QuantSpec(bits=8, granularity=PerChannel(0))
    qp = choose_qparams(*reduce_minmax(w, spec.granularity), spec)
    y = fake_quantize(w, qp)
    assert torch.isfinite(y).all() and bool((y[2] == 0).all())
    assert float((y - w).abs().max()) <= float(qp.scale.max()) / 2 + 1e-7


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_inf_are_errors_never_silent(bad):
    x = torch.tensor([0.0, 1.0, bad])
    with pytest.raises(ValueError, match="NaN|Inf"):
        reduce_minmax(x, PerTensor())
    qp = choose_qparams(-1.0, 1.0, QuantSpec())
    with pytest.raises(ValueError, match="NaN|Inf"):
        quantize(x, qp)
    with pytest.raises(ValueError, match="NaN|Inf"):
        fake_quantize(x, qp)
    with pytest.raises(ValueError, match="NaN|Inf"):
        choose_qparams(0.0, bad, QuantSpec())


def test_lo_above_hi_is_an_error():
    with pytest.raises(ValueError, match="lo <= hi"):
        choose_qparams(1.0, -1.0, QuantSpec())


def test_qparams_must_fit_the_tensor():
    qp = choose_qparams(torch.zeros(3) - 1, torch.ones(3), QuantSpec(granularity=PerChannel(0)))
    with pytest.raises(ValueError, match="do not fit"):
        quantize(torch.zeros(4, 2), qp)
    with pytest.raises(ValueError, match="integer codes"):
        dequantize(torch.zeros(3, 2), qp)
    with pytest.raises(ValueError, match="floating"):
        quantize(torch.zeros(3, 2, dtype=torch.int32), qp)


def test_granularity_shapes_and_errors():
    assert qparam_shape((8, 3, 3, 3), PerChannel(0)) == (8,)
    assert qparam_shape((8, 3, 3, 3), PerChannel(-3)) == (3,)
    assert qparam_shape((8, 64), PerGroup(0, 16)) == (8, 4)
    assert qparam_shape((8, 4, 4), PerGroup(0, 8)) == (8, 2)
    with pytest.raises(ValueError, match="PerChannel.axis=2 is out of range"):
        qparam_shape((8, 64), PerChannel(2))
    with pytest.raises(ValueError, match="PerGroup.size=24 does not divide the 64 elements"):
        qparam_shape((8, 64), PerGroup(0, 24))


def _reference_quantize(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Float64 oracle of eq. 3 with explicit loops over qparam sets (no shared layout code)."""
    return torch.clamp(torch.round(x.double() / scale.double()) + zp.double(), qmin, qmax)


def test_per_channel_matches_a_loop_over_channels():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 7) * torch.tensor([0.1, 1.0, 10.0, 0.01, 3.0]).view(1, 5, 1)
    spec = QuantSpec(bits=6, signed=False, symmetric=False, granularity=PerChannel(1))
    qp = choose_qparams(*reduce_minmax(x, spec.granularity), spec)
    q = quantize(x, qp)
    shape = (1, 5, 1)
    assert torch.equal(q.double(), _reference_quantize(x, qp.scale.view(shape), qp.zero_point.view(shape), 0, 63))
    for c in range(5):
        sub = x[:, c, :]
        one = choose_qparams(sub.min(), sub.max(), QuantSpec(bits=6, signed=False, symmetric=False))
        assert torch.equal(quantize(sub, one), q[:, c, :])
        assert float(one.scale) == float(qp.scale[c]) and int(one.zero_point) == int(qp.zero_point[c])


def test_per_group_matches_a_loop_over_groups():
    torch.manual_seed(1)
    w = torch.randn(6, 4, 8)  # each channel: 32 elements, 4 groups of 8 in memory order
    spec = QuantSpec(bits=4, granularity=PerGroup(axis=1, size=8))
    qp = choose_qparams(*reduce_minmax(w, spec.granularity), spec)
    assert qp.scale.shape == (4, 6 * 8 // 8)
    q = quantize(w, qp)
    moved = w.movedim(1, 0).reshape(4, -1)
    q_moved = q.movedim(1, 0).reshape(4, -1)
    for c in range(4):
        for g in range(6):
            block = moved[c, g * 8 : (g + 1) * 8]
            one = choose_qparams(block.min(), block.max(), QuantSpec(bits=4))
            assert torch.equal(quantize(block, one), q_moved[c, g * 8 : (g + 1) * 8])
    assert torch.equal(dequantize(q, qp), fake_quantize(w, qp))


finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False, width=32)


def _valid_spec(bits, signed, symmetric, narrow, kind):
    try:
        return QuantSpec(bits=bits, signed=signed, symmetric=symmetric, narrow_range=narrow, scale_kind=kind)
    except ValueError:
        return None


specs = st.builds(
    _valid_spec, st.integers(2, 16), st.booleans(), st.booleans(), st.booleans(), st.sampled_from(list(ScaleKind))
).filter(lambda s: s is not None)


@given(st.lists(finite, min_size=1, max_size=64), specs)
def test_codes_inside_grid_and_zero_exact(values, spec):
    x = torch.tensor(values, dtype=torch.float32)
    qp = choose_qparams(*reduce_minmax(x, PerTensor()), spec)
    q = quantize(x, qp)
    assert q.dtype == spec.code_dtype
    assert int(q.min()) >= spec.qmin and int(q.max()) <= spec.qmax
    zero = dequantize(quantize(torch.zeros(1), qp), qp)
    if spec.symmetric and not spec.signed:
        assert float(zero) == 0.0  # unsigned symmetric keeps zero at code 0
    elif not spec.symmetric or spec.signed:
        assert float(zero) == 0.0


@given(st.lists(finite, min_size=1, max_size=64), specs)
def test_error_within_half_step_inside_range(values, spec):
    x = torch.tensor(values, dtype=torch.float32)
    qp = choose_qparams(*reduce_minmax(x, PerTensor()), spec)
    x_hat = dequantize(quantize(x, qp), qp).double()
    scale = float(qp.scale)
    lo = scale * (spec.qmin - int(qp.zero_point))
    hi = scale * (spec.qmax - int(qp.zero_point))
    inside = (x.double() >= lo) & (x.double() <= hi)
    err = (x_hat - x.double()).abs()[inside]
    # half a step, plus float32 rounding of x/scale and of the product scale·(q − z)
    bound = scale / 2 + 4 * 2**-23 * (abs(lo) + abs(hi) + scale)
    assert err.numel() == 0 or float(err.max()) <= bound


@given(specs, st.integers(0, 2**16 - 1), st.floats(1e-3, 1e3))
def test_dequantize_then_quantize_is_identity_on_grid_values(spec, seed, scale):
    qp = choose_qparams(-scale * (spec.qmax - spec.qmin) / 2, scale * (spec.qmax - spec.qmin) / 2, spec)
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(spec.qmin, spec.qmax + 1, (64,), generator=g).to(spec.code_dtype)
    assert torch.equal(quantize(dequantize(q, qp), qp), q)


@given(st.lists(finite, min_size=1, max_size=64), specs)
def test_fake_quantize_is_idempotent_and_equals_dequantize_quantize(values, spec):
    x = torch.tensor(values, dtype=torch.float32)
    qp = choose_qparams(*reduce_minmax(x, PerTensor()), spec)
    once = fake_quantize(x, qp)
    assert torch.equal(once, dequantize(quantize(x, qp), qp))
    assert torch.equal(fake_quantize(once, qp), once)


def test_round_half_to_even_everywhere():
    qp = QParams(torch.tensor(1.0), torch.tensor(0, dtype=torch.int32), QuantSpec())
    x = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5])
    assert quantize(x, qp).tolist() == [-2, -2, 0, 0, 2, 2]


def test_stochastic_rounding_is_unbiased_and_reproducible():
    spec = QuantSpec(bits=8, rounding=Rounding.STOCHASTIC)
    qp = QParams(torch.tensor(0.5), torch.tensor(0, dtype=torch.int32), spec)
    x = torch.full((200_000,), 0.3)  # 0.6 steps: floor(0.6 + u) is 1 with probability 0.6
    q1 = quantize(x, qp, generator=torch.Generator().manual_seed(7))
    q2 = quantize(x, qp, generator=torch.Generator().manual_seed(7))
    assert torch.equal(q1, q2)
    assert set(q1.unique().tolist()) == {0, 1}
    mean = float(dequantize(q1, qp).double().mean())
    # binomial std of the mean: 0.5·sqrt(0.24/200000) ≈ 5.5e-4; 6 std is far beyond chance
    assert abs(mean - 0.3) < 6 * 0.5 * math.sqrt(0.24 / 200_000)


def test_fake_quantize_gradient_is_one_inside_zero_outside():
    qp = choose_qparams(-1.0, 1.0, QuantSpec(bits=4))  # step 1/7, codes -8..7 reach -8/7
    x = torch.tensor([-1.2, -1.1, 0.0, 0.99, 1.05, 1.2], requires_grad=True)
    fake_quantize(x, qp).sum().backward()
    # -1.2/step = -8.4 → -8 inside; -1.1 → -7.7 → -8 inside; 1.05 → 7.35 → 7 inside; 1.2 → 8.4 → 8 clipped
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_fake_quantize_keeps_the_input_dtype(dtype):
    torch.manual_seed(3)
    x = (torch.randn(1000) * 2).to(dtype)
    qp = choose_qparams(-2.0, 2.0, QuantSpec(bits=6))
    y = fake_quantize(x, qp)
    assert y.dtype == dtype
    if dtype == torch.float64:  # computed in float64 throughout
        assert torch.equal(y, _reference_quantize(x, qp.scale, qp.zero_point, -32, 31) * qp.scale.double())
    else:  # computed in float32, rounded back to the input dtype once
        assert torch.equal(y, dequantize(quantize(x, qp), qp).to(dtype))


def test_stochastic_rounding_keeps_grid_values_and_is_unbiased_at_16_bits():
    spec = QuantSpec(bits=16, rounding=Rounding.STOCHASTIC)
    qp = QParams(torch.tensor(1.0), torch.tensor(0, dtype=torch.int32), spec)
    g = torch.Generator().manual_seed(0)
    on_grid = torch.full((1_000_000,), 30000.0)
    assert bool((quantize(on_grid, qp, generator=g) == 30000).all())
    near = torch.full((1_000_000,), 30000.25)
    mean = float(quantize(near, qp, generator=g).double().mean())
    assert abs(mean - 30000.25) < 6 * math.sqrt(0.25 * 0.75 / 1_000_000)


@pytest.mark.parametrize("bits, signed, symmetric", [(8, False, False), (8, True, True), (4, True, False)])
def test_fused_kernel_path_is_bit_identical_to_the_torch_path(bits, signed, symmetric):
    torch.manual_seed(11)
    x = torch.randn(3, 70, 100) * 3  # above the fused path's size threshold
    spec = QuantSpec(bits=bits, signed=signed, symmetric=symmetric)
    qp = choose_qparams(-2.0, 5.0, spec)
    fused = fake_quantize(x, qp)
    reference = fake_quantize(x.clone().requires_grad_(), qp).detach()  # autograd forces the torch path
    assert torch.equal(fused, reference)
    x[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        fake_quantize(x, qp)
