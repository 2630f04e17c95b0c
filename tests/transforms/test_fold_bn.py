import pytest
import torch
from torch import nn

from lowbit.transforms import fold_bn, fold_bn_into


def _randomize_bn(bn: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=g))
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) * 2 + 0.1)
        bn.weight.copy_(torch.randn(bn.num_features, generator=g))
        bn.bias.copy_(torch.randn(bn.num_features, generator=g))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    "layer, bn, shape",
    [
        (lambda b: nn.Conv2d(3, 8, 3, bias=b), nn.BatchNorm2d(8), (2, 3, 9, 9)),
        (lambda b: nn.Conv2d(8, 8, 3, groups=8, bias=b), nn.BatchNorm2d(8), (2, 8, 9, 9)),
        (lambda b: nn.Conv1d(4, 6, 5, bias=b), nn.BatchNorm1d(6), (2, 4, 20)),
        (lambda b: nn.Linear(5, 7, bias=b), nn.BatchNorm1d(7), (6, 5)),
    ],
)
def test_folding_preserves_the_function_against_float64(layer, bn, shape, bias):
    torch.manual_seed(0)
    model = nn.Sequential(layer(bias), bn).eval()
    _randomize_bn(bn, 1)
    folded = fold_bn(model)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    x = torch.randn(*shape)
    reference = model.double()(x.double())
    assert torch.allclose(folded(x).double(), reference, rtol=1e-5, atol=1e-5)


def test_original_model_is_untouched_and_shared_outputs_are_not_folded():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # the conv output is used twice: folding would change the second use

    model = Shared().eval()
    _randomize_bn(model.bn, 2)
    folded = fold_bn(model)
    assert isinstance(folded.bn, nn.BatchNorm2d)
    x = torch.randn(1, 1, 4, 4)
    assert torch.allclose(folded(x), model(x))
    plain = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2)).eval()
    fold_bn(plain)
    assert isinstance(plain[1], nn.BatchNorm2d)


def test_mismatched_bn_is_an_error():
    with pytest.raises(ValueError, match="BatchNorm2d\\(4\\) into a layer with 8 outputs"):
        fold_bn_into(nn.Conv2d(1, 8, 1), nn.BatchNorm2d(4))


def test_a_layer_called_twice_is_not_folded():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.bn = nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2)

        def forward(self, x):
            return self.bn(self.c(x)) + self.c(x)

    model = Twice().eval()
    _randomize_bn(model.bn, 3)
    x = torch.randn(1, 1, 4, 4)
    assert torch.allclose(fold_bn(model)(x), model(x))
