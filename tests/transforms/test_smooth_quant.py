"""SmoothQuant: exact function (traced and untraced models), balanced ranges, LayerNorm readers found, the recipe
path saves and loads, bad input named."""

import dataclasses

import pytest
import torch
from torch import fx, nn

import lowbit
from lowbit.nn import ChannelScale, QuantLinear
from lowbit.recipes import Recipe, Transforms, preset
from lowbit.transforms.smooth_quant import smooth_quant


class Block(nn.Module):
    """A post-LN transformer-like block: the LayerNorm output feeds q/k/v and the residual; a GELU feeds ``down``."""

    def __init__(self, dim=16, untraceable=False):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.up, self.down = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.untraceable = untraceable

    def forward(self, x):
        h = self.norm(x)
        if self.untraceable and float(h.detach().abs().sum()) < 0:  # data-dependent control flow: torch.fx cannot trace it
            h = -h
        attn = torch.softmax(self.q(h) @ self.k(h).transpose(-1, -2) / 4, -1) @ self.v(h)
        h = h + attn
        return h + self.down(nn.functional.gelu(self.up(h)))


def _block(untraceable=False):
    torch.manual_seed(0)
    block = Block(untraceable=untraceable).eval()
    with torch.no_grad():  # outlier channels after the LayerNorm, as in trained transformers
        block.norm.weight.copy_(torch.ones(16) + 30 * (torch.arange(16) % 7 == 0))
    return block


def _batches(n=3):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(4, 10, 16, generator=g) for _ in range(n)]


@pytest.mark.parametrize("traced", [True, False])
def test_function_is_kept_in_float64(traced):
    model = _block().double()
    model = fx.symbolic_trace(model) if traced else model
    batches = [b.double() for b in _batches()]
    smoothed, report = smooth_quant(model, batches, alpha=0.5)
    assert report.layers == ["q", "k", "v"]  # the LayerNorm's readers; not `up` (reads a sum) nor `down` (GELU)
    x = torch.randn(2, 10, 16, dtype=torch.float64)
    assert torch.allclose(smoothed(x), model(x), rtol=1e-10, atol=1e-10)
    assert sum(isinstance(m, ChannelScale) for m in smoothed.modules()) == 3
    if traced:  # the layers keep their names in a graph
        assert isinstance(smoothed.get_submodule("q"), nn.Linear)


def test_alpha_half_balances_activation_and_weight_ranges():
    model = _block()
    batches = _batches()
    smoothed, _ = smooth_quant(model, batches, alpha=0.5, include=("q",))
    scale, layer = smoothed.get_submodule("q")  # untraced: Sequential(ChannelScale, Linear)
    act = torch.cat([model.norm(b).reshape(-1, 16) for b in batches]).abs().amax(0)
    # max|x_j|/s_j = max|W_j|·s_j = sqrt(max|x_j|·max|W_j|): both sides meet in the geometric mean
    assert torch.allclose(act * scale.scale, layer.weight.abs().amax(0), rtol=1e-5)
    assert torch.allclose(act * scale.scale, (act * model.q.weight.abs().amax(0)).sqrt(), rtol=1e-5)


def test_smoothing_helps_static_w8a8_and_survives_save_and_load(tmp_path):
    model = _block(untraceable=True)  # quantized layer by layer
    batches = _batches()
    plain = preset("w8a8")
    smooth = dataclasses.replace(plain, transforms=Transforms(smoothquant=0.5))
    with pytest.warns(UserWarning, match="could not be traced"):
        q_plain = lowbit.quantize(model, plain, calibration=batches, progress=False)
    with pytest.warns(UserWarning, match="could not be traced"):
        q_smooth = lowbit.quantize(model, smooth, calibration=batches, progress=False)
    assert q_smooth.quantization_summary.smoothed == ["q", "k", "v"]
    assert q_smooth.quantization_summary.transforms[0].startswith("smoothquant (alpha 0.5): 3 layers")
    x = torch.randn(8, 10, 16, generator=torch.Generator().manual_seed(2))
    errors = [float((q(x) - model(x)).pow(2).mean()) for q in (q_plain, q_smooth)]
    assert errors[1] < errors[0]
    lowbit.save_quantized(q_smooth, tmp_path / "m", source="zoo:mlp")  # the architecture is passed back below
    with pytest.warns(UserWarning, match="could not be traced"):
        again = lowbit.load_quantized(tmp_path / "m", model=_block(untraceable=True))
    assert torch.equal(again(x), q_smooth(x))
    assert isinstance(again.get_submodule("q.1.1"), QuantLinear)  # Sequential(ChannelScale, (quantizer, layer))


def test_recipe_patterns_choose_other_layers_and_round_trip(tmp_path):
    recipe = dataclasses.replace(preset("w8a8"), transforms=Transforms(
        smoothquant=0.5, smoothquant_include=("*",), smoothquant_exclude=("k", "v")))
    recipe.save(tmp_path / "r.yaml")
    assert lowbit.recipes.load_recipe(tmp_path / "r.yaml") == recipe
    with pytest.warns(UserWarning, match="could not be traced"):
        q = lowbit.quantize(_block(untraceable=True), recipe, calibration=_batches(), progress=False)
    assert q.quantization_summary.smoothed == ["q", "up", "down"]


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="alpha must be in"):
        smooth_quant(_block(), _batches(), alpha=1.5)
    with pytest.raises(ValueError, match="no nn.Linear reads a LayerNorm output"):
        smooth_quant(nn.Sequential(nn.Linear(16, 4)), _batches())
    with pytest.raises(ValueError, match="needs calibration batches"):
        smooth_quant(_block(), [])
    with pytest.raises(ValueError, match="smoothquant must be null or an alpha"):
        Recipe(transforms=Transforms(smoothquant=True))
    with pytest.raises(ValueError, match="smoothquant_include must be a list of name patterns"):
        Transforms(smoothquant=0.5, smoothquant_include="q")
    with pytest.raises(ValueError, match="smoothquant needs calibration"):
        lowbit.flows.prepare(_block(), dataclasses.replace(preset("w8a8"), transforms=Transforms(smoothquant=0.5)))


@pytest.mark.parametrize("name", ["mlp", "lenet5", "resnet20", "mobilenetv2"])
def test_every_zoo_model_keeps_its_function_with_all_linear_layers_smoothed(name):
    from lowbit.zoo import load

    model = load(name).model.double().eval()
    images = load(name).test.tensors[0][:64].double()
    smoothed, report = smooth_quant(model, [images[:32]], alpha=0.5, include=("*",))
    assert report.layers  # every zoo model has at least its classifier
    with torch.no_grad():
        reference, result = model(images), smoothed(images)
    assert torch.allclose(result, reference, rtol=1e-5, atol=1e-5 * float(reference.abs().max()))
