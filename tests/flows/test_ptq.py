"""PTQ flow: graph placement, modes, the user's model untouched, bad input named."""

import warnings

import pytest
import torch
from torch import nn

import lowbit
from lowbit.analysis import sqnr
from lowbit.nn import ActivationQuantizer, QuantConv, QuantLinear
from lowbit.recipes import Mode, Override, Recipe
from lowbit.zoo.models import build


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()


def _batches(n=4, shape=(32, 16)):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(*shape, generator=g) for _ in range(n)]


def test_user_model_is_untouched_and_result_is_close():
    model = _mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = _batches()
    q = lowbit.quantize(model, "w8a8", calibration=batches, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Linear]
    assert sqnr(model(batches[0]), q(batches[0])) > 35
    # fresh samples may fall outside the calibrated ranges and saturate: a looser bound
    fresh = torch.randn(64, 16, generator=torch.Generator().manual_seed(5)).clamp(-3, 3)
    assert sqnr(model(fresh), q(fresh)) > 20
    assert sum(isinstance(m, QuantLinear) for m in q.modules()) == 2


def test_inplace_shares_the_users_layers_instead_of_copying_them():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.Linear(32, 8)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LayerNorm stays float, as warned
        copied = lowbit.quantize(model, "w8", progress=False)
        shared = lowbit.quantize(model, "w8", progress=False, inplace=True)
    copied_norm = [m for m in copied.modules() if isinstance(m, nn.LayerNorm)][0]
    shared_norm = [m for m in shared.modules() if isinstance(m, nn.LayerNorm)][0]
    assert copied_norm is not model[1] and shared_norm is model[1]  # no second copy of the float weights
    x = torch.randn(4, 16)
    assert torch.equal(copied(x), shared(x))


def test_static_graph_of_resnet20_folds_bn_fuses_relu_and_quantizes_joins():
    model = build("resnet20").eval()
    q = lowbit.quantize(model, "w8a8", calibration=[torch.randn(4, 1, 28, 28)], progress=False)
    kinds = [type(m) for m in q.modules()]
    assert nn.BatchNorm2d not in kinds and nn.Conv2d not in kinds
    assert kinds.count(QuantConv) == 21 and kinds.count(QuantLinear) == 1
    summary = q.quantization_summary
    # input + stem + per block (conv1 out, conv2 out, add/relu out) + 2 shortcut convs + avgpool; the logits stay
    # float (the model's output), unless the recipe asks for them
    assert summary.activation_quantizers == 1 + 1 + 9 * 3 + 2 + 1
    asked = lowbit.quantize(model, lowbit.Recipe(quantize_output=True), calibration=[torch.randn(4, 1, 28, 28)],
                            progress=False)
    assert asked.quantization_summary.activation_quantizers == summary.activation_quantizers + 1
    adds = [n for n in q.graph.nodes if n.op == "call_function" and "add" in str(n.target)]
    for add in adds:  # both operands of every residual add are quantized tensors
        for arg in add.args:
            src = arg
            while src.op == "call_module" and not isinstance(q.get_submodule(src.target), (ActivationQuantizer,)):
                src = src.args[0]
            assert isinstance(q.get_submodule(src.target), ActivationQuantizer)


def test_dynamic_mode_quantizes_only_layer_inputs_per_batch():
    q = lowbit.quantize(_mlp(), "w8-dynamic", progress=False)
    quantizers = [m for m in q.modules() if isinstance(m, ActivationQuantizer)]
    assert len(quantizers) == 2 and all(m.dynamic for m in quantizers)
    x = torch.randn(8, 16)
    assert sqnr(_mlp()(x), q(x)) > 30


def test_weight_only_and_float_modes():
    model = _mlp()
    x = torch.randn(8, 16)
    w4 = lowbit.quantize(model, "w4-g128", progress=False)
    assert not any(isinstance(m, ActivationQuantizer) for m in w4.modules())
    assert any("per-channel" in n for n in w4.quantization_summary.notes)  # 16 and 32 inputs: no group of 128
    for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        cast = lowbit.quantize(model, name)
        assert next(cast.parameters()).dtype == dtype and cast(x).dtype == torch.float32
        assert sqnr(model(x), cast(x)) > 25


def test_overrides_skip_layers_and_first_last_precision():
    recipe = Recipe(name="mixed", mode=Mode.WEIGHT_ONLY, weight=lowbit.QuantSpec(bits=4), activation=None,
                    first_last_bits=8, overrides=(Override(include=("2",), skip=True),))
    with pytest.warns(UserWarning, match="kept in float: 2 .Linear, skipped by recipe"):
        q = lowbit.quantize(_mlp(), recipe, progress=False)
    assert q.quantization_summary.quantized == {"0": 8}
    assert isinstance(q.get_submodule("2"), nn.Linear)


def test_batches_as_tuples_and_dicts():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x, y):
            return self.a(x) + self.b(y)

    model = TwoInputs().eval()
    pairs = [(torch.randn(8, 4), torch.randn(8, 4)) for _ in range(3)]
    q1 = lowbit.quantize(model, "w8a8", calibration=pairs, progress=False)
    q2 = lowbit.quantize(model, "w8a8", calibration=[{"x": a, "y": b} for a, b in pairs], progress=False)
    x, y = torch.randn(8, 4), torch.randn(8, 4)
    assert torch.equal(q1(x, y), q2(x, y))


def test_untraceable_model_falls_back_to_layer_by_layer_with_a_warning():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                return self.fc(x)
            return -self.fc(x)

    with pytest.warns(UserWarning, match="could not be traced"):
        q = lowbit.quantize(Branchy().eval(), "w8a8", calibration=[torch.randn(2, 4)], progress=False)
    assert isinstance(q.fc, nn.Sequential) and isinstance(q.fc[0], ActivationQuantizer)
    x = torch.randn(3, 4)
    assert sqnr(Branchy.forward(q, x), q(x)) == float("inf")


def test_unsupported_layers_are_named_in_a_warning():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2)).eval()
    with pytest.warns(UserWarning, match=r"kept in float: 1 \(LayerNorm\)"):
        lowbit.quantize(model, "w8a8", calibration=[torch.randn(4, 4)], progress=False)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"recipe": "w8a8"}, "is static: pass calibration=batches"),
        ({"recipe": "w8a8", "calibration": []}, "calibration got no batches"),
        ({"recipe": "w8a8", "calibration": [torch.full((2, 16), float("nan"))]},
         r"calibration batch 1 \(shape \(2, 16\)\): activation quantizer at output of input.*NaN"),
        ({"recipe": "w8a8", "calibration": ["text"]}, "must be a tensor, a tuple of inputs or a dict"),
        ({"recipe": "w9a9"}, "unknown recipe 'w9a9'"),
    ],
)
def test_bad_input_is_named(kwargs, message):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=message):
            lowbit.quantize(_mlp(), progress=False, **kwargs)


def test_wrong_input_shape_names_the_batch():
    with pytest.raises(ValueError, match=r"calibration batch 1 \(shape \(2, 5\)\): .*(mat1|shapes|size)"):
        lowbit.quantize(_mlp(), "w8a8", calibration=[torch.randn(2, 5)], progress=False)


def test_quantized_layers_match_a_float_layer_with_dequantized_weights():
    layer = nn.Conv2d(3, 6, 3, stride=2, padding=1, groups=3)
    spec = lowbit.QuantSpec(bits=4, granularity=lowbit.PerChannel(0))
    q = QuantConv.from_float(layer, spec)
    x = torch.randn(2, 3, 9, 9)
    ref = nn.functional.conv2d(x, lowbit.F.fake_quantize(layer.weight.detach(), q.weight_qparams()), layer.bias,
                               stride=2, padding=1, groups=3)
    assert torch.equal(q(x), ref)


# --- regressions found in review -------------------------------------------------------------------------


def test_layers_not_called_as_modules_stay_float():
    class Tricky(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)  # holds an out_proj Linear it reads itself
            self.fc = nn.Linear(8, 8)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            y, _ = self.attn(x, x, x)
            tied = nn.functional.linear(y, self.fc.weight)  # the graph reads fc.weight directly
            return self.head(tied + self.fc(y))

    model = Tricky().eval()
    with pytest.warns(UserWarning, match="attn.out_proj .NonDynamicallyQuantizableLinear, not called as a module"):
        q = lowbit.quantize(model, "w8a8", calibration=[torch.randn(2, 5, 8)], progress=False)
    assert list(q.quantization_summary.quantized) == ["head"]
    x = torch.randn(2, 5, 8)
    assert sqnr(model(x), q(x)) > 25


def test_shape_arithmetic_is_not_quantized():
    class Slice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 6)

        def forward(self, x):
            y = self.fc(x)
            return y[:, : y.shape[1] // 2 + 1]

    q = lowbit.quantize(Slice().eval(), "w8a8", calibration=[torch.randn(3, 4)], progress=False)
    assert q(torch.randn(2, 4)).shape == (2, 4)


def test_activation_overrides_apply_in_graph_mode():
    recipe = Recipe(name="a4", quantize_output=True,
                    overrides=(Override(include=("0",), activation=lowbit.QuantSpec(bits=4, signed=False,
                                                                                    symmetric=False)),))
    q = lowbit.quantize(_mlp(), recipe, calibration=_batches(), progress=False)
    bits = {m.label: m.spec.bits for m in q.modules() if isinstance(m, ActivationQuantizer)}
    assert bits["output of input_1"] == 4 and bits["output of _1"] == 4  # input of layer 0, its fused-ReLU output
    assert bits["output of _2"] == 8  # the model's output, quantized because the recipe asks


def test_a_layer_never_called_in_eager_mode_is_left_unquantized_with_a_warning():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.aux = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) if x.sum() > -1e9 else self.aux(x)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = lowbit.quantize(Branchy().eval(), "w8a8", calibration=[torch.randn(2, 4)], progress=False)
    assert any("no tensor reached input of aux" in str(w.message) for w in caught)
    assert q(torch.randn(2, 4)).shape == (2, 4)
