import pytest
import torch
from torch import nn

from lowbit import PerChannel, PerGroup, QuantSpec
from lowbit.functional import dequantize
from lowbit.nn import ActivationQuantizer, QuantLinear, WeightObserver, quantize_weight
from lowbit.observers import MinMaxObserver


@pytest.mark.parametrize("spec", [QuantSpec(bits=4), QuantSpec(bits=4, granularity=PerChannel(0)),
                                  QuantSpec(bits=3, granularity=PerGroup(0, 16))])
def test_mse_weight_clipping_never_loses_to_minmax(spec):
    torch.manual_seed(0)
    w = torch.distributions.StudentT(3.0).sample((32, 64))  # heavy tails: clipping pays off
    errors = {}
    for observer in WeightObserver:
        q, qp = quantize_weight(w, spec, observer)
        errors[observer] = float((dequantize(q, qp) - w).square().sum())
    assert errors[WeightObserver.MSE] <= errors[WeightObserver.MINMAX]
    assert errors[WeightObserver.MSE] < 0.9 * errors[WeightObserver.MINMAX]


def test_quant_linear_drops_the_float_weight_and_keeps_the_layer_unchanged():
    layer = nn.Linear(8, 4)
    before = layer.weight.detach().clone()
    q = QuantLinear.from_float(layer, QuantSpec(bits=8, granularity=PerChannel(0)))
    assert torch.equal(layer.weight, before)
    names = {n for n, _ in q.named_parameters()} | {n for n, _ in q.named_buffers()}
    assert names == {"bias", "weight_q", "weight_scale", "weight_zero_point"}
    assert q.weight_q.dtype == torch.int8


def test_activation_quantizer_modes():
    spec = QuantSpec(bits=8, signed=False, symmetric=False)
    static = ActivationQuantizer(spec, MinMaxObserver(spec), label="edge")
    with pytest.raises(RuntimeError, match="calibrate, then freeze"):
        static(torch.ones(2))
    static.calibrating = True
    x = torch.tensor([0.0, 1.0, 3.0])
    assert static(x) is x  # calibration passes values through untouched
    static.calibrating = False
    static.freeze()
    assert static.frozen and float(static(torch.tensor([10.0]))) == pytest.approx(3.0)
    dynamic = ActivationQuantizer(spec, dynamic=True)
    y = torch.tensor([0.0, 100.0])
    assert torch.equal(dynamic(y), y)  # each batch gets its own range: the extremes are exact
    with pytest.raises(ValueError, match="needs an observer"):
        ActivationQuantizer(spec)
    static.calibrating = True
    with pytest.raises(ValueError, match="activation quantizer at edge: .*NaN"):
        static(torch.tensor([float("nan")]))


def test_per_token_dynamic_quantization_gives_each_row_its_own_range():
    spec = QuantSpec(bits=8, signed=False, symmetric=False)
    q = ActivationQuantizer(spec, dynamic=True, per_token=True)
    x = torch.tensor([[[0.0, 1.0, 2.0], [0.0, 100.0, 200.0]]])  # two tokens with ranges 100x apart
    y = q(x)
    assert float((y[0, 0] - x[0, 0]).abs().max()) <= 2 / 255 / 2 + 1e-6  # the small token keeps its own step
    assert float((y[0, 1] - x[0, 1]).abs().max()) <= 200 / 255 / 2 + 1e-4
    per_tensor = ActivationQuantizer(spec, dynamic=True)(x)
    assert float((per_tensor[0, 0] - x[0, 0]).abs().max()) > 0.2  # one range for both loses the small token
    with pytest.raises(ValueError, match="per_token needs dynamic"):
        ActivationQuantizer(spec, MinMaxObserver(spec), per_token=True)
