"""Learned rounding on whole models: the unfolded columns match the convolution, the Hessian-based error equals the
error measured by running the layer, codes change but the grid does not, and bad input is named."""

import dataclasses

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import lowbit
from lowbit.flows.rounding import _columns, _output_error, _Capture, _Reached, float_weights, learn_rounding
from lowbit.nn import QuantConv, QuantLinear
from lowbit.recipes import Recipe, Transforms
from lowbit.spec import PerChannel, QuantSpec


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2, groups=8), nn.ReLU(),  # depthwise, strided, dilated
        nn.Conv2d(8, 12, 1, groups=4), nn.ReLU(),  # grouped pointwise
        nn.Flatten(), nn.Linear(12 * 4 * 4, 10)).eval()


def _batches(n=3):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(16, 3, 8, 8, generator=g) for _ in range(n)]


def _w3(rounding, mode="weight_only", **options):
    return Recipe(name="w3", mode=mode, weight=QuantSpec(bits=3, granularity=PerChannel(0), narrow_range=True),
                  activation=None if mode == "weight_only" else QuantSpec(bits=8, signed=False, symmetric=False),
                  weight_rounding=rounding, rounding_options=options)


@pytest.mark.parametrize("layer", [nn.Conv2d(6, 4, 3, stride=2, padding=1, groups=2),
                                   nn.Conv2d(4, 4, 3, dilation=2, padding=2, groups=4),
                                   nn.Conv1d(4, 6, 5, stride=2, padding=1), nn.Linear(7, 3)])
def test_grouped_columns_times_weight_rows_equal_the_layer(layer):
    q = (QuantLinear if isinstance(layer, nn.Linear) else QuantConv).from_float(layer, QuantSpec(bits=8))
    shape = {nn.Conv2d: (2, layer.in_channels if hasattr(layer, "in_channels") else 0, 9, 9),
             nn.Conv1d: (2, 4, 11), nn.Linear: (5, 7)}[type(layer)]
    x = torch.randn(*shape, dtype=torch.float64)
    cols = _columns(q, x)  # [groups, K, samples·positions], float64 throughout
    w = layer.weight.detach().double()
    groups = getattr(layer, "groups", 1)
    out = torch.einsum("gok,gkn->gon", w.reshape(groups, -1, cols.shape[1]), cols)
    ref = (F.linear(x, w) if isinstance(layer, nn.Linear) else
           (F.conv1d if isinstance(layer, nn.Conv1d) else F.conv2d)(x, w, None, layer.stride, layer.padding,
                                                                   layer.dilation, groups))
    # ref [N, out, *positions] → [out, N·positions] in the columns' order (samples, then positions)
    ref = ref.reshape(ref.shape[0], ref.shape[1], -1).permute(1, 0, 2).reshape(ref.shape[1], -1) \
        if not isinstance(layer, nn.Linear) else ref.T
    assert torch.allclose(out.reshape(ref.shape), ref, atol=1e-10)


def test_hessian_error_equals_the_error_of_running_the_layer():
    layer = nn.Conv2d(8, 8, 3, padding=1, groups=2)
    q = QuantConv.from_float(layer, QuantSpec(bits=3, granularity=PerChannel(0)))
    x = torch.randn(6, 8, 7, 7)
    with_hessian, plain = _Capture(q, True, 10), _Capture(q, False, 10)
    for capture in (with_hessian, plain):
        with pytest.raises(_Reached):  # the capture stops the forward on purpose
            capture(q, (x,))
    a = _output_error(q, layer.weight.detach(), q.weight_q, with_hessian)
    b = _output_error(q, layer.weight.detach(), q.weight_q, plain)
    assert a == pytest.approx(b, rel=1e-4)


@pytest.mark.parametrize("method", ["gptq", "adaround"])
def test_learned_codes_lower_the_output_error_and_keep_the_grid(method):
    model, batches = _net(), _batches()
    nearest = lowbit.quantize(model, _w3("nearest"), progress=False)
    learned = lowbit.quantize(model, _w3(method, steps=200), calibration=batches, progress=False)
    report = learned.quantization_summary.transforms[-1]
    assert report.startswith(f"rounding ({method}): 4 layers")
    x = torch.cat(batches)
    error = {k: float((m(x) - model(x)).pow(2).mean().detach()) for k, m in (("nearest", nearest), ("learned", learned))}
    assert error["learned"] < error["nearest"]
    for a, b in zip(nearest.modules(), learned.modules()):
        if isinstance(a, (QuantConv, QuantLinear)):
            assert torch.equal(a.weight_scale, b.weight_scale) and torch.equal(a.weight_zero_point, b.weight_zero_point)
            spec = b.weight_spec
            assert int(b.weight_q.min()) >= spec.qmin and int(b.weight_q.max()) <= spec.qmax
            if method == "adaround":  # AdaRound only chooses between the two grid points around each weight
                assert int((a.weight_q.int() - b.weight_q.int()).abs().max()) <= 1


def test_static_recipe_rounds_after_calibration_and_survives_save_and_load(tmp_path):
    model, batches = _net(), _batches()
    q = lowbit.quantize(model, _w3("gptq", mode="static"), calibration=batches, progress=False)
    lowbit.save_quantized(q, tmp_path / "m", source="zoo:mlp")  # the architecture is passed back below
    again = lowbit.load_quantized(tmp_path / "m", model=_net())
    x = batches[0]
    assert torch.equal(again(x), q(x))


def test_report_lists_every_layer_with_learned_error_below_nearest():
    model, batches = _net(), _batches()
    q = lowbit.quantize(model, _w3("nearest"), progress=False)
    report = learn_rounding(q, float_weights(model), batches, "gptq", progress=False)
    assert list(report.layers) == ["0", "2", "4", "7"]  # execution order
    assert all(learned <= nearest * 1.0001 for learned, nearest in report.layers.values())


def test_bad_input_is_named():
    model = _net()
    with pytest.raises(ValueError, match="learns its rounding"):
        lowbit.quantize(model, _w3("gptq"), progress=False)
    with pytest.raises(ValueError, match="weight_rounding"):
        _w3("greedy")
    with pytest.raises(ValueError, match="unknown key 'iterations'"):
        _w3("adaround", iterations=5)
    with pytest.raises(ValueError, match="do not combine"):
        dataclasses.replace(_w3("gptq"), transforms=Transforms(correct_bias="analytic"))
    q = lowbit.quantize(model, _w3("nearest"), progress=False)
    with pytest.raises(ValueError, match="no float reference weight for layer"):
        learn_rounding(q, {}, _batches(), "gptq", progress=False)
