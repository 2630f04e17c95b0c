"""The rescaled twin of a zoo model: the same function with channel ranges spread over four decades.

Used by benchmarks/dfq.py and the peers' DFQ runs (plain torch, nothing from lowbit's quantization code).
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn

__all__ = ["relu_variant", "rescaled_twin"]


def relu_variant(model: nn.Module) -> fx.GraphModule:
    """``model`` with every ReLU6 replaced by ReLU (what DFQ does to MobileNetV2 before equalizing)."""
    gm = fx.symbolic_trace(copy.deepcopy(model))
    for name, module in list(gm.named_modules()):
        if isinstance(module, nn.ReLU6):
            parent, _, child = name.rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, child, nn.ReLU())
    gm.recompile()
    return gm


@torch.no_grad()
def rescaled_twin(model: nn.Module, seed: int) -> fx.GraphModule:
    """The ReLU variant with per-channel scales 10^U(−2, 2) pushed through every conv → BN → ReLU → conv chain."""
    gm = relu_variant(model)
    modules = dict(gm.named_modules())
    generator = torch.Generator().manual_seed(seed)
    for node in gm.graph.nodes:
        bn = next(iter(node.users)) if node.op == "call_module" and len(node.users) == 1 else None
        if bn is None or not isinstance(modules.get(node.target), nn.Conv2d) or not isinstance(
                modules.get(bn.target), nn.BatchNorm2d) or len(bn.users) != 1:
            continue
        relu = next(iter(bn.users))
        if not isinstance(modules.get(relu.target), nn.ReLU) or len(relu.users) != 1:
            continue
        consumer = modules.get(next(iter(relu.users)).target)
        if not isinstance(consumer, nn.Conv2d):
            continue
        norm = modules[bn.target]
        scale = 10.0 ** (torch.rand(norm.num_features, generator=generator, dtype=torch.float64) * 4 - 2)
        norm.weight.copy_(norm.weight.double() / scale)  # BN output (and so ReLU output) divided by s
        norm.bias.copy_(norm.bias.double() / scale)
        groups = consumer.groups
        view = consumer.weight.double().reshape(groups, consumer.out_channels // groups, -1,
                                                consumer.weight[0, 0].numel())
        view = view * scale.reshape(groups, 1, -1, 1)
        consumer.weight.copy_(view.reshape(consumer.weight.shape))
    return gm
