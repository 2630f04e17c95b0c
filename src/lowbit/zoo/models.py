"""Reference image classifiers for 1×28×28 inputs (Fashion-MNIST), built from plain ``torch.nn`` layers.

- ``mlp``: LeNet-300-100 (Deep Compression's fully-connected baseline), 266,610 parameters.
- ``lenet5``: LeCun's LeNet-5 with ReLU and max pooling, 61,706 parameters.
- ``resnet20``: the CIFAR ResNet-20 of He et al. (3 stages × 3 basic blocks, 16/32/64 channels) with a 1×1
  projection where the shape changes, on 28×28 inputs: 0.27 M parameters.
- ``mobilenetv2``: a small MobileNetV2 (inverted residuals, depthwise 3×3 convolutions, BN, ReLU6, linear
  bottlenecks) — the architecture whose per-tensor quantization collapses without equalization.

Example:
    >>> import torch
    >>> model = build("resnet20")
    >>> model(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    >>> sum(p.numel() for p in build("mlp").parameters())
    266610
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["build", "MODEL_NAMES", "ResNet20", "MobileNetV2Small", "BINARY_BUILDERS", "bnn_mlp", "bnn_cnn"]


def _mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 300), nn.ReLU(),
        nn.Linear(300, 100), nn.ReLU(),
        nn.Linear(100, 10),
    )


def _lenet5() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, 10),
    )


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(y + self.shortcut(x))


class ResNet20(nn.Module):
    """ResNet-20 (He et al. 2016, CIFAR variant) for 1-channel 28×28 inputs."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        blocks: list[nn.Module] = []
        cin = 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                blocks.append(_BasicBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.layers(self.stem(x)))))


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),  # linear bottleneck: no activation
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class MobileNetV2Small(nn.Module):
    """A small MobileNetV2 (Sandler et al. 2018) for 1-channel 28×28 inputs: 28 → 14 → 7 spatially."""

    # (expansion t, output channels c, repeats n, first stride s), as in the paper's Table 2
    # (the paper's ImageNet table shortened for 28×28 inputs and a 2-core training budget)
    CONFIG = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 2, 1))

    def __init__(self, num_classes: int = 10, last_channels: int = 256):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        blocks: list[nn.Module] = []
        cin = 16
        for t, c, n, s in self.CONFIG:
            for i in range(n):
                blocks.append(_InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Conv2d(cin, last_channels, 1, bias=False), nn.BatchNorm2d(last_channels), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(last_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.head(self.features(self.stem(x))))))


def _binary_block(layer: nn.Module, width: int, conv: bool) -> list[nn.Module]:
    # BN then Hardtanh after every hidden layer: the BN folds into the layer, and the sign edge a binary network
    # puts after the Hardtanh sees sign(BN(y)) (BNN's block); the fp32 twin trains with Hardtanh itself
    return [layer, nn.BatchNorm2d(width) if conv else nn.BatchNorm1d(width), nn.Hardtanh()]


def bnn_mlp(hidden: int = 1024, layers: int = 2) -> nn.Module:
    """BNN's MLP (Courbariaux et al. 2016 use 3 × 4096 on MNIST): ``layers`` hidden layers of ``hidden`` units."""
    blocks: list[nn.Module] = [nn.Flatten()]
    width = 784
    for _ in range(layers):
        blocks += _binary_block(nn.Linear(width, hidden), hidden, conv=False)
        width = hidden
    return nn.Sequential(*blocks, nn.Linear(width, 10))


def bnn_cnn(channels: int = 32) -> nn.Module:
    """A small VGG-style CNN for binary networks: two 3×3 conv pairs of ``channels`` and ``2·channels`` filters
    with max pooling, a 256-unit hidden layer."""
    c1, c2 = channels, 2 * channels
    return nn.Sequential(
        *_binary_block(nn.Conv2d(1, c1, 3, padding=1), c1, conv=True),
        *_binary_block(nn.Conv2d(c1, c1, 3, padding=1), c1, conv=True), nn.MaxPool2d(2),
        *_binary_block(nn.Conv2d(c1, c2, 3, padding=1), c2, conv=True),
        *_binary_block(nn.Conv2d(c2, c2, 3, padding=1), c2, conv=True), nn.MaxPool2d(2),
        nn.Flatten(),
        *_binary_block(nn.Linear(c2 * 49, 256), 256, conv=False),
        nn.Linear(256, 10),
    )


# architectures for binary/ternary networks (issue #7): no shipped weights — benchmarks/binary_nets.py trains them
BINARY_BUILDERS: dict[str, Callable[[], nn.Module]] = {"bnn_mlp": bnn_mlp, "bnn_cnn": bnn_cnn}

_BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "mlp": _mlp,
    "lenet5": _lenet5,
    "resnet20": ResNet20,
    "mobilenetv2": MobileNetV2Small,
}
MODEL_NAMES = tuple(_BUILDERS)


def build(name: str) -> nn.Module:
    """A freshly initialised model by name (weights random; :func:`lowbit.zoo.load` gives trained ones).

    Raises:
        ValueError: unknown name, listing the known ones.
    """
    if name in BINARY_BUILDERS:
        return BINARY_BUILDERS[name]()
    if name not in _BUILDERS:
        raise ValueError(f"unknown zoo model {name!r}; known: {', '.join(MODEL_NAMES + tuple(BINARY_BUILDERS))}")
    return _BUILDERS[name]()
