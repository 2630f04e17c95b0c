"""Small models shared by the pruning and INQ tests: an MLP and a CNN with their inputs, and their weights."""

import numpy as np
import torch
from torch import nn


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.ReLU(), nn.Flatten())
        self.head = nn.Linear(6 * 2 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def model_and_input(kind: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    if kind == "mlp":
        return mlp(), torch.randn(32, 20)
    return SmallCNN(), torch.randn(32, 2, 6, 6)


def weights_of(model: nn.Module) -> dict[str, np.ndarray]:
    return {
        name: module.weight.detach().numpy().copy()
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear | nn.Conv2d)
    }
