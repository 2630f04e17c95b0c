"""Costs of a bit allocation (model bytes, MACs, BOPs) by hand count and closed form, and the mixed recipe through
the real PTQ path."""

import dataclasses
import json
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import lowbit
from lowbit.mixed import (
    bops_cost,
    fixed_bytes,
    layer_macs,
    mixed_recipe,
    model_bytes,
    prepare_subject,
    size_budget,
    size_cost,
)
from lowbit.recipes import Override, Recipe, preset
from lowbit.spec import PerChannel

pytestmark = pytest.mark.usefixtures("one_thread")


def conv_linear(bn: bool = False) -> nn.Module:
    """Conv2d(3, 4, 3) [→ BN] → ReLU → Flatten → Linear(64, 5) on 6×6 inputs: 108 and 320 weights."""
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 4, 3, bias=not bn)] + ([nn.BatchNorm2d(4)] if bn else []) + [
        nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5)]
    model = nn.Sequential(*layers)
    if bn:
        with torch.no_grad():
            model[1].running_mean.uniform_(-1, 1)
            model[1].running_var.uniform_(0.5, 2)
    return model.eval()


def hand_bytes(bits: dict[str, int], names: tuple[str, str]) -> int:
    """conv_linear's size by hand: packed codes per layer, float32 biases (4 + 5; a folded BN leaves only the
    conv's new bias), a float32 scale and an int32 zero point per output channel (4 + 5)."""
    conv, linear = names
    codes = math.ceil(108 * bits[conv] / 8) + math.ceil(320 * bits[linear] / 8)
    return codes + 4 * (4 + 5) + 8 * (4 + 5)


def stored_bytes(qmodel: nn.Module) -> int:
    """What the quantized model actually holds (its state_dict), with the codes packed at their bits."""
    bits = qmodel.quantization_summary.quantized
    total = 0
    for key, value in qmodel.state_dict().items():
        layer, _, field = key.rpartition(".")
        if field == "weight_q":
            total += math.ceil(value.numel() * bits[layer] / 8)
        else:
            assert value.dtype in (torch.float32, torch.int32), key
            total += 4 * value.numel()
    return total


# --- sizes --------------------------------------------------------------------------------------------------


def test_size_cost_is_weights_times_bits():
    subject = prepare_subject(conv_linear(), "w8", bits=(2, 3, 8))
    assert size_cost(subject) == {"0": {2: 216, 3: 324, 8: 864}, "3": {2: 640, 3: 960, 8: 2560}}
    fixed = prepare_subject(conv_linear(), "w4a8", bits=(2, 3))  # first and last layer fixed at 8 bits
    assert size_cost(fixed) == {"0": {8: 864}, "3": {8: 2560}}


@pytest.mark.parametrize("bits", [{"0": 3, "3": 5}, {"0": 8, "3": 2}, {"0": 7, "3": 7}])
def test_model_bytes_by_hand(bits):
    subject = prepare_subject(conv_linear(), "w8", bits=(2, 3, 5, 7, 8))
    assert model_bytes(subject, bits) == hand_bytes(bits, ("0", "3"))
    assert fixed_bytes(subject) == 4 * 9 + 8 * 9
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = lowbit.quantize(conv_linear(), mixed_recipe("w8", bits), progress=False)
    assert stored_bytes(qmodel) == hand_bytes(bits, ("0", "3"))


def test_model_bytes_with_a_folded_batchnorm():
    # the BN's parameters and running statistics are folded away; the conv gains a 4-float bias. The folded
    # conv's non-persistent BN-statistics buffers (output_mean, output_std) are not stored anywhere
    bits = {"0": 3, "4": 5}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = lowbit.quantize(conv_linear(bn=True), mixed_recipe("w8", bits), progress=False)
    assert stored_bytes(qmodel) == hand_bytes(bits, ("0", "4"))
    subject = prepare_subject(conv_linear(bn=True), "w8", bits=(3, 5))
    assert model_bytes(subject, bits) == hand_bytes(bits, ("0", "4"))


def test_fixed_bytes_with_per_group_qparams():
    # w4-g128: one scale and zero point per 128 weights of a row; a layer whose rows 128 does not divide falls
    # back to per-channel
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 256), nn.ReLU(), nn.Linear(256, 8)).eval()
    subject = prepare_subject(model, "w4-g128", bits=(2, 4))
    assert isinstance(subject.specs["0"].granularity, PerChannel)
    floats = 256 + 8  # biases
    qparams = 256 + 8 * (256 // 128)
    assert fixed_bytes(subject) == 4 * floats + 8 * qparams
    assert model_bytes(subject, {"0": 2, "2": 4}) == 100 * 256 * 2 // 8 + 256 * 8 * 4 // 8 + 4 * floats + 8 * qparams


# --- MACs and BOPs ------------------------------------------------------------------------------------------


def macs_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), nn.ReLU(),  # 9×9 → 5×5
        nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=6, bias=False),  # depthwise, dilated: 5×5 → 5×5
        nn.Flatten(), nn.Linear(6 * 5 * 5, 7),
    ).eval()


def closed_form_macs() -> dict[str, int]:
    def conv_out(size, kernel, stride, padding, dilation=1):
        return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1

    h1 = conv_out(9, 3, 2, 1)
    h2 = conv_out(h1, 3, 1, 2, dilation=2)
    return {"0": 6 * h1 * h1 * (4 // 2) * 3 * 3, "2": 6 * h2 * h2 * (6 // 6) * 3 * 3, "4": (6 * h2 * h2) * 7}


def test_layer_macs_closed_form():
    expected = closed_form_macs()
    assert expected == {"0": 2700, "2": 1350, "4": 1050}
    subject = prepare_subject(macs_model(), "w8", bits=(4,))
    for batch in (1, 3):  # per sample, whatever the batch size
        assert layer_macs(subject, torch.randn(batch, 4, 9, 9)) == expected


@pytest.mark.parametrize("recipe, activation_bits", [("w8a8", 8), ("w8", 32), ("w8-dynamic", 8)])
def test_bops_cost(recipe, activation_bits):
    subject = prepare_subject(macs_model(), recipe, bits=(2, 4, 8))
    macs = closed_form_macs()
    expected = {name: {b: macs[name] * b * activation_bits for b in (2, 4, 8)} for name in macs}
    assert bops_cost(subject, torch.randn(2, 4, 9, 9)) == expected


def test_bops_cost_with_low_bit_activations():
    recipe = dataclasses.replace(preset("w4a4"), first_last_bits=None)
    subject = prepare_subject(macs_model(), recipe, bits=(2, 3))
    macs = closed_form_macs()
    assert bops_cost(subject, torch.randn(1, 4, 9, 9)) == {n: {2: m * 2 * 4, 3: m * 3 * 4} for n, m in macs.items()}


# --- budgets ------------------------------------------------------------------------------------------------


def test_size_budget_values():
    subject = prepare_subject(conv_linear(), "w8", bits=(2, 4))
    cost, limit = size_budget(subject, budget_avg_bits=3.0)
    assert cost == {"0": {2: 216, 4: 432}, "3": {2: 640, 4: 1280}} and limit == 3 * 428
    assert size_budget(subject, budget_avg_bits=2.5)[1] == math.floor(2.5 * 428)
    assert size_budget(subject, budget_avg_bits=0.001)[1] == 0
    fixed = 4 * 9 + 8 * 9
    cost, limit = size_budget(subject, budget_bytes=fixed + 61)
    assert cost == {"0": {2: 27, 4: 54}, "3": {2: 80, 4: 160}} and limit == 61
    # exact: an allocation is within the limit if and only if the model's bytes are within the budget
    for b0 in range(2, 17):
        for b1 in range(2, 17):
            within = -(-108 * b0 // 8) + -(-320 * b1 // 8) <= limit
            assert within == (hand_bytes({"0": b0, "3": b1}, ("0", "3")) <= fixed + 61)


@pytest.mark.parametrize("kwargs, match", [
    ({}, "exactly one budget"),
    ({"budget_bytes": 1000, "budget_avg_bits": 4.0}, "exactly one budget"),
    ({"budget_bytes": 0}, "budget_bytes must be a positive int"),
    ({"budget_bytes": -5}, "budget_bytes must be a positive int"),
    ({"budget_bytes": 1000.0}, "budget_bytes must be a positive int"),
    ({"budget_bytes": True}, "budget_bytes must be a positive int"),
    ({"budget_avg_bits": 0.0}, "budget_avg_bits must be > 0"),
    ({"budget_avg_bits": -1}, "budget_avg_bits must be > 0"),
    ({"budget_avg_bits": math.nan}, "budget_avg_bits must be > 0"),
])
def test_size_budget_errors(kwargs, match):
    subject = prepare_subject(conv_linear(), "w8", bits=(2, 4))
    with pytest.raises(ValueError, match=match):
        size_budget(subject, **kwargs)


def test_size_budget_refuses_a_bool_average():
    # budget_bytes (and choose_bits' budget_bops) refuse bools; True must not be read as 1 bit a weight
    subject = prepare_subject(conv_linear(), "w8", bits=(2, 4))
    with pytest.raises(ValueError, match="budget_avg_bits"):
        size_budget(subject, budget_avg_bits=True)


# --- the mixed recipe ---------------------------------------------------------------------------------------


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4)).eval()


def test_quantize_applies_the_mixed_recipe():
    bits = {"0": 3, "2": 6, "4": 2}
    model = mlp()
    qmodel = lowbit.quantize(model, mixed_recipe("w8", bits), progress=False)
    assert qmodel.quantization_summary.quantized == bits
    assert qmodel.quantization_summary.recipe == "w8-mixed"
    for name, b in bits.items():
        w = model.get_submodule(name).weight.detach().double().numpy()
        qmax = 2 ** (b - 1) - 1
        scale = np.abs(w).max(axis=1, keepdims=True) / qmax
        expected = np.clip(np.round(w / scale), -qmax, qmax) * scale
        got = qmodel.get_submodule(name).dequantized_weight().double().numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_mixed_recipe_over_first_last_bits():
    recipe = mixed_recipe("w4a8", {"0": 6, "2": 3, "4": 5}, name="mine")
    assert recipe.name == "mine"
    base = preset("w4a8")
    for name, b, first, last in (("0", 6, True, False), ("2", 3, False, False), ("4", 5, False, True)):
        plan = recipe.plan(name, first=first, last=last)
        assert plan.weight == dataclasses.replace(base.weight, bits=b)
        assert plan.activation == base.plan(name, first=first, last=last).activation  # activations untouched
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = lowbit.quantize(mlp(), recipe, calibration=[torch.randn(8, 8)], progress=False)
    assert qmodel.quantization_summary.quantized == {"0": 6, "2": 3, "4": 5}


def test_mixed_recipe_keeps_the_base_overrides():
    base = dataclasses.replace(preset("w8"), overrides=(Override(include=("2",), skip=True),))
    recipe = mixed_recipe(base, {"0": 4, "4": 5})
    assert recipe.overrides[0] == base.overrides[0]
    assert recipe.plan("2").skip
    assert recipe.plan("0").weight.bits == 4 and recipe.plan("4").weight.bits == 5
    assert recipe.plan("other").weight.bits == 8


def test_mixed_recipe_round_trips_through_dict_and_json():
    bits = {"0": 3, "2": 6, "4": 2}
    recipe = mixed_recipe("w4a8", bits)
    again = Recipe.from_dict(json.loads(json.dumps(recipe.to_dict())))
    assert again == recipe
    names = ["0", "2", "4", "other"]
    for i, name in enumerate(names):
        first, last = i == 0, i == len(names) - 1
        assert again.plan(name, first=first, last=last) == recipe.plan(name, first=first, last=last)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = lowbit.quantize(mlp(), again, calibration=[torch.randn(8, 8)], progress=False)
    assert qmodel.quantization_summary.quantized == bits


def test_layer_names_are_matched_literally():
    # unescaped, "blocks[0]" would be a pattern matching "blocks0" (and not itself), "a*" every name from "a",
    # "x?" any two-letter name from "x"
    bits = {"blocks0": 6, "blocks[0]": 4, "ab": 5, "a*": 3, "xy": 7, "x?": 2}
    recipe = mixed_recipe("w8", bits)
    for name, b in bits.items():
        assert recipe.plan(name).weight.bits == b, name
    assert recipe.plan("abc").weight.bits == 8
    assert recipe.plan("blocks1").weight.bits == 8
    again = Recipe.from_dict(recipe.to_dict())
    assert {name: again.plan(name).weight.bits for name in bits} == bits


def test_mixed_recipe_through_quantize_with_bracketed_names():
    class Blocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.add_module("blocks[0]", nn.Linear(4, 6))
            self.add_module("blocks0", nn.Linear(6, 3))

        def forward(self, x):
            return self.blocks0(torch.relu(getattr(self, "blocks[0]")(x)))

    model = Blocks().eval()
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    bits = {"blocks[0]": 3, "blocks0": 5}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = lowbit.quantize(model, mixed_recipe("w8", bits), progress=False)
    assert names == ["blocks[0]", "blocks0"]
    assert dict(sorted(qmodel.quantization_summary.quantized.items())) == dict(sorted(bits.items()))


@pytest.mark.parametrize("b", [1, 17, 0, True, 2.5, "4", None])
def test_bad_bits_name_the_layer(b):
    with pytest.raises(ValueError, match=r"bits\['conv1'\]"):
        mixed_recipe("w8", {"ok": 4, "conv1": b})


def test_a_float_base_is_refused():
    for name in ("fp16", "bf16"):
        with pytest.raises(ValueError, match="integer weights"):
            mixed_recipe(name, {"0": 4})
