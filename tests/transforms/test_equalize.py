"""Cross-layer equalization: hand-derived scales, function preservation on every zoo CNN, ReLU6 handling."""

import copy

import pytest
import torch
from torch import nn

from lowbit.transforms import equalize
from lowbit.transforms.equalize import consumer_ranges, producer_ranges
from lowbit.zoo import load


def test_two_layer_relu_network_gets_the_hand_derived_scales():
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 2, bias=False)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[4.0, 0.0], [0.0, 1.0]]))  # output ranges r1 = (4, 1)
        model[2].weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 0.5]]))  # input-column ranges r2 = (1, 2)
    equalized, report = equalize(model)
    # s = sqrt(r1 · r2) / r2 = (2, 1/sqrt(2)): W1 rows divided by s, W2 columns multiplied by s
    root2 = 2.0**0.5
    assert torch.allclose(equalized.get_submodule("0").weight, torch.tensor([[2.0, 0.0], [0.0, root2]],
                                                                            dtype=torch.float64))
    assert torch.allclose(equalized.get_submodule("2").weight,
                          torch.tensor([[2.0, root2], [-2.0, root2 / 4]], dtype=torch.float64))
    assert report.pairs == [("0", "2")] and report.converged and report.sweeps == 2  # the second sweep moves nothing


@pytest.mark.parametrize("name", ["mlp", "lenet5", "resnet20", "mobilenetv2"])
def test_equalization_keeps_every_zoo_model_s_function(name):
    model = load(name).model.double()
    equalized, report = equalize(model)
    x = torch.randn(8, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = model(x), equalized(x)
    assert ((got - expected).abs().max() / expected.abs().max()) < 1e-10
    assert report.converged
    if name == "mobilenetv2":  # every pair inside a block is joined by a ReLU6: skipped and said so
        assert not report.pairs and any("ReLU6" in reason for reason in report.skipped)
    else:
        assert report.pairs
    _assert_balanced(equalized, report.pairs)


def _assert_balanced(model, pairs):
    """At convergence no scale moves (s = 1), i.e. every live channel has the same range in both layers of each
    pair — also where a layer sits in two pairs (chains, depthwise)."""
    for producer, consumer in pairs:
        r1 = producer_ranges(model.get_submodule(producer)).double()
        r2 = consumer_ranges(model.get_submodule(consumer)).double()
        alive = (r1 > 0) & (r2 > 0)
        assert torch.allclose(r1[alive], r2[alive], rtol=1e-4), (producer, consumer)


def test_relu6_replaced_on_request_and_depthwise_chains_balanced():
    model = load("mobilenetv2").model.double()
    equalized, report = equalize(model, relu6="relu")
    assert report.pairs and report.relu6_replaced and report.converged
    # the float reference: the same network with those ReLU6 replaced by ReLU by hand
    reference = copy.deepcopy(model)
    for name in report.relu6_replaced:
        parent, _, child = name.rpartition(".")
        setattr(reference.get_submodule(parent), child, nn.ReLU())
    x = torch.randn(4, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(equalized(x), reference(x), rtol=1e-9, atol=1e-9)
    depthwise = [(p, c) for p, c in report.pairs if equalized.get_submodule(c).groups > 1]
    assert depthwise  # expand → depthwise pairs are equalized too
    _assert_balanced(equalized, report.pairs)


def test_bad_arguments_and_untraceable_models_are_named():
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="relu6"):
        equalize(model, relu6="clip")

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else x  # data-dependent control flow: not traceable

    with pytest.raises(ValueError, match="Branchy cannot be traced"):
        equalize(Branchy())
