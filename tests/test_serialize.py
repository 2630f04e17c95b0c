import json

import pytest
import torch

import lowbit
from lowbit.serialize import build_from_source, folder_bytes, load_quantized, save_quantized
from lowbit.zoo.models import build


@pytest.mark.parametrize("recipe", ["w8a8", "w8-dynamic", "w4-g128", "w4a8", "fp16", "bf16"])
def test_round_trip_runs_identically(recipe, tmp_path):
    torch.manual_seed(0)
    model = build("resnet20").eval()
    calib = [torch.randn(4, 1, 28, 28)]
    q = lowbit.quantize(model, recipe, calibration=calib, progress=False)
    save_quantized(q, tmp_path, source="zoo:resnet20")
    again = load_quantized(tmp_path)
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(q(x), again(x))


def test_files_are_really_smaller_and_codes_packed(tmp_path):
    torch.manual_seed(0)
    model = build("mlp").eval()
    params = sum(p.numel() for p in model.parameters())
    sizes = {}
    for recipe in ("w8", "w4-g128", "fp16"):
        folder = save_quantized(lowbit.quantize(model, recipe, progress=False), tmp_path / recipe, source="zoo:mlp")
        sizes[recipe] = folder_bytes(folder)
    assert sizes["fp16"] == pytest.approx(params * 2, rel=0.02)
    assert sizes["w8"] < params * 1.05 and sizes["w4-g128"] < params * 0.56
    meta = json.loads((tmp_path / "w4-g128" / "lowbit.json").read_text())
    assert meta["packed"]["1.weight_q"] == {"bits": 4, "signed": True, "shape": [300, 784]}


def test_user_factory_source(tmp_path):
    src = tmp_path / "mine.py"
    src.write_text("import torch\ndef make():\n    return torch.nn.Sequential(torch.nn.Linear(4, 3))\n")
    model = build_from_source(f"{src}:make")
    q = lowbit.quantize(model, "w8", progress=False)
    save_quantized(q, tmp_path / "out", source=f"{src}:make")
    x = torch.randn(2, 4)
    assert torch.equal(load_quantized(tmp_path / "out")(x), q(x))


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="needs a model returned by lowbit.quantize"):
        save_quantized(torch.nn.Linear(2, 2), tmp_path, source="zoo:mlp")
    with pytest.raises(ValueError, match="'zoo:NAME' or 'path/to/file.py:factory'"):
        build_from_source("resnet20")
    with pytest.raises(ValueError, match="unknown zoo model 'vgg'"):
        build_from_source("zoo:vgg")
    with pytest.raises(ValueError, match="is not a lowbit quantized model"):
        load_quantized(tmp_path)
    q = lowbit.quantize(build("mlp").eval(), "w8", progress=False)
    save_quantized(q, tmp_path / "m", source="zoo:mlp")
    with pytest.raises(ValueError, match="does not match the model: missing"):
        load_quantized(tmp_path / "m", model=build("lenet5"))


def test_a_user_layer_named_observer_is_saved(tmp_path):
    src = tmp_path / "named.py"
    src.write_text("import torch\nclass M(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                   "        self.observer = torch.nn.Linear(4, 4)\n    def forward(self, x):\n"
                   "        return self.observer(x)\ndef make():\n    return M()\n")
    model = build_from_source(f"{src}:make")
    q = lowbit.quantize(model, "w8a8", calibration=[torch.randn(8, 4)], progress=False)
    save_quantized(q, tmp_path / "out", source=f"{src}:make")
    x = torch.randn(2, 4)
    assert torch.equal(load_quantized(tmp_path / "out")(x), q(x))


def test_loading_into_a_wider_model_names_the_mismatch(tmp_path):
    small = tmp_path / "small.py"
    small.write_text("import torch\ndef make():\n    return torch.nn.Sequential(torch.nn.Linear(4, 3))\n"
                     "def wide():\n    return torch.nn.Sequential(torch.nn.Linear(4, 5))\n")
    q = lowbit.quantize(build_from_source(f"{small}:make"), "w8", progress=False)
    save_quantized(q, tmp_path / "out", source=f"{small}:make")
    with pytest.raises(ValueError, match="shape mismatch"):
        load_quantized(tmp_path / "out", model=build_from_source(f"{small}:wide"))


def test_layers_that_gained_a_bias_load_back(tmp_path):
    import dataclasses
    import warnings

    from torch import nn

    import lowbit
    from lowbit.recipes import Transforms, preset

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3, bias=False)).eval()
    with torch.no_grad():
        model[1].bias.fill_(4.0)  # high biases: absorption moves them into the bias-less second layer
    recipe = dataclasses.replace(preset("w8a8"), transforms=Transforms(absorb_bias=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = lowbit.quantize(model, recipe, calibration=[torch.randn(32, 6)], progress=False)
    assert q.get_submodule("3").bias is not None
    folder = lowbit.save_quantized(q, tmp_path / "m", source="zoo:mlp")
    again = lowbit.load_quantized(folder, model=nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(),
                                                               nn.Linear(8, 3, bias=False)).eval())
    x = torch.randn(4, 6)
    assert torch.equal(again(x), q(x))
