"""Outlier channel splitting: exact function, hand-checked halving, zoo models, bad input."""

import pytest
import torch
from torch import nn

from lowbit.transforms import fold_bn
from lowbit.transforms.split_outliers import apply_splits, split_outliers
from lowbit.zoo import load


def test_the_outlier_weight_is_halved_and_its_channel_duplicated():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    with torch.no_grad():
        model[2].weight.copy_(torch.tensor([[1.0, -8.0, 0.5, 2.0], [0.25, 3.0, -1.0, 1.0]]))
    split, report = split_outliers(model, expand_ratio=0.5)  # two more channels
    assert report.split == {"2": [1, 1]} and report.producers == {"2": "0"}
    second = split.get_submodule("2").weight
    # channel 1 split: (−4, −4); then channel 1 again: (−2, −4, −2) — columns 1, 4 (copy), 5 (copy of the copy)
    assert second[0].tolist() == [1.0, -2.0, 0.5, 2.0, -4.0, -2.0]
    assert second[1].tolist() == [0.25, 0.75, -1.0, 1.0, 1.5, 0.75]
    first = split.get_submodule("0")
    assert torch.equal(first.weight[4], model[0].weight[1]) and torch.equal(first.bias[5], model[0].bias[1])
    x = torch.randn(6, 3, dtype=torch.float64)
    assert torch.allclose(split(x), model(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["mlp", "lenet5", "resnet20", "mobilenetv2"])
def test_splitting_keeps_every_zoo_model_s_function(name):
    model = load(name).model.double()
    split, report = split_outliers(model, expand_ratio=0.1)
    x = torch.randn(4, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(split(x), model(x), rtol=1e-9, atol=1e-9)
    if name == "mobilenetv2":  # every pair there has a depthwise side
        assert any("depthwise" in s for s in report.skipped)
    else:
        assert report.split
    folded = fold_bn(model)
    for consumer in report.split:  # the consumer's largest weight never grows, and shrinks unless tied
        before = folded.get_submodule(consumer).weight.abs().max()
        assert split.get_submodule(consumer).weight.abs().max() <= before


def test_replaying_a_plan_rebuilds_the_same_model():
    model = load("lenet5").model
    split, report = split_outliers(model, expand_ratio=0.1)
    from torch import fx

    replay = fx.symbolic_trace(load("lenet5").model)
    for consumer, chosen in report.split.items():
        apply_splits(replay, report.producers[consumer], consumer, chosen)
    replay.recompile()
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(replay(x), split(x))


def test_bad_ratio_is_named():
    with pytest.raises(ValueError, match="expand_ratio must be in"):
        split_outliers(nn.Sequential(nn.Linear(2, 2)), expand_ratio=0)


def test_recipe_splits_before_quantizing_and_the_plan_is_replayed_on_load(tmp_path):
    import dataclasses

    import lowbit
    from lowbit.recipes import Transforms, preset

    model = load("lenet5").model.eval()
    batches = [torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(0))]
    recipe = dataclasses.replace(preset("w8a8-pertensor"), transforms=Transforms(split_outliers=0.1))
    q = lowbit.quantize(model, recipe, calibration=batches, progress=False)
    summary = q.quantization_summary
    assert summary.transforms[0].startswith("split_outliers: ") and summary.splits
    consumer, plan = next(iter(summary.splits.items()))
    grown = q.get_submodule(plan["producer"]).weight_q.shape[0]
    assert grown == model.get_submodule(plan["producer"]).weight.shape[0] + len(plan["channels"])
    lowbit.save_quantized(q, tmp_path / "m", source="zoo:lenet5")
    again = lowbit.load_quantized(tmp_path / "m")
    assert torch.equal(again(batches[0]), q(batches[0]))
    with pytest.raises(ValueError, match="split_outliers must be null or an expand ratio"):
        Transforms(split_outliers=2.0)
