"""The integer engine against independent clients: ONNX Runtime (FLOAT requantization) and lowbit's simulation."""

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import lowbit
from lowbit.engine import Program, Requant, lower
from lowbit.engine.kernels import add, requantize
from lowbit.export import export_onnx, ort_session
from lowbit.functional.fixedpoint import multiply_by_quantized_multiplier, quantize_multiplier
from lowbit.nn import ActivationQuantizer
from lowbit.zoo import load
from lowbit.zoo.data import fashion_mnist


@pytest.fixture(scope="module")
def fashion():
    images, labels = fashion_mnist("test").tensors
    return images[:500], list(fashion_mnist("train").tensors[0][:256].split(64))


def _quantize(model, recipe, calibration):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lowbit.quantize(model, recipe, calibration=calibration, progress=False)


def test_float_mode_equals_onnxruntime_codes_bit_for_bit(fashion, tmp_path):
    images, calibration = fashion
    # quantized logits make the last op's output codes comparable: every value is k · scale
    q = _quantize(load("resnet20").model, lowbit.Recipe(quantize_output=True), calibration)
    program = lower(q, images[:1], mode=Requant.FLOAT)
    engine = program(images)
    ort = torch.from_numpy(ort_session(export_onnx(q, images[:1], tmp_path / "r.onnx")).run(
        None, {"input_0": images.numpy()})[0])
    step = float([m for m in q.modules() if isinstance(m, ActivationQuantizer)][-1].scale)
    lsb = ((engine - ort).abs() / step).round()
    assert lsb.max() <= 1 and (lsb > 0).float().mean() <= 0.001  # the bound; measured: 0 differ


def test_engine_matches_simulation_on_fashion_mnist(fashion):
    images, calibration = fashion
    for name in ("lenet5", "mobilenetv2"):
        q = _quantize(load(name).model, "w8a8", calibration)
        engine = lower(q, images[:1])(images)
        with torch.no_grad():
            simulated = q(images)
        # exact integer sums vs float32 ones: a code can move by one at a near-tie and flip a close decision;
        # the full-test-set agreement is measured in benchmarks/engine_agreement.py
        assert (engine.argmax(1) == simulated.argmax(1)).float().mean() >= 0.99


def test_fixed_point_and_float_requantization_differ_by_at_most_one_code():
    torch.manual_seed(0)
    acc = torch.randint(-2**24, 2**24, (100_000,))
    multiplier = torch.tensor(3.7e-6)
    a = requantize(acc, multiplier, 3, -128, 127, Requant.FLOAT)
    b = requantize(acc, multiplier, 3, -128, 127, Requant.FIXED_POINT)
    assert (a - b).abs().max() <= 1
    m0, shift = quantize_multiplier(float(multiplier))
    expected = torch.clamp(multiply_by_quantized_multiplier(acc, m0, shift) + 3, -128, 127)
    assert torch.equal(b.to(torch.int64), expected.to(torch.int64))


def test_add_rescales_both_inputs_to_the_output_grid():
    a = torch.randint(0, 256, (1000,), dtype=torch.int32)
    b = torch.randint(0, 256, (1000,), dtype=torch.int32)
    exact = (0.02 * (a.double() - 100) + 0.05 * (b.double() - 30)) / 0.06 + 128
    for mode in Requant:
        out = add(a, 0.02, 100, b, 0.05, 30, 0.06, 128, 0, 255, mode)
        assert (out.double() - exact.round().clamp(0, 255)).abs().max() <= 1


def test_fixed_point_engine_stays_within_one_code_of_float_mode(fashion):
    images, calibration = fashion
    q = _quantize(load("lenet5").model, lowbit.Recipe(quantize_output=True), calibration)
    step = float([m for m in q.modules() if isinstance(m, ActivationQuantizer)][-1].scale)
    floating = lower(q, images[:1], mode=Requant.FLOAT)(images)
    fixed = lower(q, images[:1], mode=Requant.FIXED_POINT)(images)
    # one code on the way can move downstream codes: bound the logits by a few output steps
    assert ((floating - fixed).abs() / step).max() <= 3


def test_overflow_of_the_int32_accumulator_is_caught():
    from lowbit.engine.kernels import linear_accumulate

    x = torch.full((1, 140_000), 127, dtype=torch.int32)  # 127² · 140,000 > 2³¹
    w = torch.full((1, 140_000), 127, dtype=torch.int32)
    with pytest.raises(OverflowError, match="fc: int32 accumulator overflow"):
        linear_accumulate(x, 0, w, torch.zeros(1, dtype=torch.int32), None, "fc")


def test_save_load_round_trip_and_damaged_files(fashion, tmp_path):
    images, calibration = fashion
    q = _quantize(load("lenet5").model, "w8a8", calibration)
    program = lower(q, images[:1])
    folder = program.save(tmp_path / "p")
    again = Program.load(folder)
    assert torch.equal(again(images[:64]), program(images[:64]))
    data = (folder / "program.safetensors").read_bytes()
    (folder / "program.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        Program.load(folder)
    (folder / "program.safetensors").write_bytes(data)
    meta = json.loads((folder / "program.json").read_text())
    meta["ops"][1]["weight"] = "nowhere"
    (folder / "program.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="needs tensor 'nowhere'"):
        Program.load(folder)
    with pytest.raises(ValueError, match="not a lowbit program"):
        Program.load(tmp_path)


def test_unsupported_ops_and_models_are_named():
    class WithSoftplus(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.smooth, self.out = nn.Linear(8, 8), nn.Softplus(), nn.Linear(8, 2)

        def forward(self, x):
            return self.out(self.smooth(self.fc(x)))

    q = _quantize(WithSoftplus().eval(), "w8a8", [torch.randn(16, 8)])
    with pytest.raises(ValueError, match="smooth .Softplus"):
        lower(q, torch.randn(1, 8))
    weight_only = _quantize(nn.Sequential(nn.Linear(8, 2)).eval(), "w8", [torch.randn(4, 8)])
    with pytest.raises(ValueError, match="static recipe"):
        lower(weight_only, torch.randn(1, 8))
    assert np.isfinite(lower(_quantize(nn.Sequential(nn.Linear(8, 2)).eval(), "w8a8", [torch.randn(4, 8)]),
                             torch.randn(1, 8))(torch.randn(2, 8)).numpy()).all()


@pytest.mark.parametrize("name", ["mlp", "lenet5", "resnet20", "mobilenetv2"])
def test_fast_paths_give_the_reference_integers(fashion, name):
    images, calibration = fashion
    # quantized logits: every output is a code, so equal floats mean equal integers
    q = _quantize(load(name).model, lowbit.Recipe(quantize_output=True), calibration)
    for mode in Requant:
        program = lower(q, images[:1], mode=mode)
        assert all(op["exact_float32"] for op in program.ops if op["op"] in ("conv", "linear"))
        runner, why = program.fast_runner
        assert (runner is not None) == (mode is Requant.FLOAT), why
        program.fast = True  # FLOAT: the fast runner; FIXED_POINT: float32 sums inside the reference kernels
        fast = program(images[:64])
        program.fast = False  # float64 sums everywhere
        assert torch.equal(fast, program(images[:64]))


def test_fast_runner_refuses_a_layer_whose_sums_could_round():
    q = _quantize(nn.Sequential(nn.Linear(8, 4)).eval(), "w8a8", [torch.randn(16, 8)])
    program = lower(q, torch.randn(1, 8))
    program.ops[1]["exact_float32"] = False
    runner, why = program.fast_runner
    assert runner is None and "exact range" in why
    x = torch.randn(3, 8)
    assert torch.equal(program(x), lower(q, torch.randn(1, 8))(x))  # the reference kernels answer instead


def test_exactness_bound_refuses_sums_that_could_round():
    from lowbit.engine.kernels import FLOAT32_EXACT, exact_in_float32

    w = torch.full((2, 600), 127, dtype=torch.int32)
    zero = torch.zeros(2, dtype=torch.int32)
    assert 255 * 127 * 600 > FLOAT32_EXACT and not exact_in_float32(255, w, zero, None)
    assert exact_in_float32(255, w[:, :500], zero, None)  # 255 · 127 · 500 < 2^24
    assert not exact_in_float32(255, w[:, :500], zero, torch.tensor([2**24]))


@pytest.mark.parametrize("bits", [2, 4, 6])
def test_sub_8_bit_grids_lower_and_match_the_simulation(fashion, bits):
    from lowbit.spec import PerChannel, QuantSpec

    images, calibration = fashion
    recipe = lowbit.Recipe(weight=QuantSpec(bits=bits, granularity=PerChannel(0), narrow_range=True),
                           activation=QuantSpec(bits=bits, signed=False, symmetric=False), quantize_output=True)
    q = _quantize(load("lenet5").model, recipe, calibration)
    program = lower(q, images[:1])
    layers = [op for op in program.ops if op["op"] in ("conv", "linear")]
    assert all(op["out"] is None or op["out"]["qmax"] - op["out"]["qmin"] <= 2**bits - 1 for op in layers)
    limit = 2 ** (bits - 1) - 1
    assert all(int(program.tensors[op["weight"]].abs().max()) <= limit for op in layers)  # real b-bit codes
    engine = program(images)
    with torch.no_grad():
        simulated = q(images)
    step = float([m for m in q.modules() if isinstance(m, ActivationQuantizer)][-1].scale)
    lsb = ((engine - simulated).abs() / step).round()
    assert (lsb > 0).float().mean() <= 0.01 and (engine.argmax(1) == simulated.argmax(1)).float().mean() >= 0.99
    program.fast = False
    assert torch.equal(program(images), engine)
