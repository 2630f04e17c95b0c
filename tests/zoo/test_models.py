import pytest
import torch
from torch import nn

from lowbit.zoo.models import MODEL_NAMES, build


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_models_map_images_to_ten_logits(name):
    torch.manual_seed(0)
    model = build(name).eval()
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_parameter_counts_of_the_classic_architectures():
    count = {n: sum(p.numel() for p in build(n).parameters()) for n in MODEL_NAMES}
    assert count["mlp"] == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
    assert count["lenet5"] == (6 * 25 + 6) + (16 * 6 * 25 + 16) + (400 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
    assert 260_000 < count["resnet20"] < 280_000  # the paper's 0.27 M


def test_resnet20_has_19_convs_and_mobilenet_has_depthwise_relu6_bn():
    convs = [m for m in build("resnet20").modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 19  # 1 stem + 9 blocks × 2, plus the FC = 20 weight layers
    mobile = list(build("mobilenetv2").modules())
    assert any(isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1 for m in mobile)
    assert any(isinstance(m, nn.ReLU6) for m in mobile) and any(isinstance(m, nn.BatchNorm2d) for m in mobile)


def test_unknown_model_lists_known_names():
    with pytest.raises(ValueError, match="known: mlp, lenet5, resnet20, mobilenetv2"):
        build("vgg16")
