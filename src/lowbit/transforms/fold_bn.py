"""Fold BatchNorm into the convolution or linear layer before it (docs/math.md Q5, the frozen form).

``W' = W · γ/σ`` per output channel and ``b' = (b − μ) · γ/σ + β`` with ``σ = sqrt(var + eps)``: the folded layer
computes exactly what conv/linear followed by BN (in eval mode) computed, up to float rounding, and the BN
disappears — so quantization sees the weights that really run.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    >>> _ = model[1].running_mean.uniform_(-1, 1), model[1].running_var.uniform_(0.5, 2)
    >>> folded = fold_bn(model)
    >>> [type(m).__name__ for m in folded.modules()][1:]
    ['Conv2d', 'ReLU']
    >>> x = torch.randn(2, 1, 8, 8)
    >>> torch.allclose(folded(x), model(x), atol=1e-6)
    True
"""

from __future__ import annotations

import copy
from collections import Counter

import torch
from torch import fx, nn

__all__ = ["fold_bn", "fold_bn_into", "modules_called_once", "replace_module"]

_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def fold_bn_into(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """A copy of ``layer`` (conv or linear) with ``bn``'s eval-mode affine map folded in (always with a bias).

    The copy carries BN's promise about its output as non-persistent buffers ``output_mean`` (β) and
    ``output_std`` (|γ|).

    Raises:
        ValueError: channel counts differ, or ``bn`` has no running statistics.
    """
    out_channels = layer.weight.shape[0]
    if bn.num_features != out_channels:
        raise ValueError(f"cannot fold {type(bn).__name__}({bn.num_features}) into a layer with {out_channels} outputs")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"cannot fold {type(bn).__name__} without running statistics (track_running_stats=False)")
    folded = copy.deepcopy(layer)
    std = torch.sqrt(bn.running_var.double() + bn.eps)
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(std)
    factor = gamma / std
    shape = (-1,) + (1,) * (layer.weight.ndim - 1)
    folded.weight = nn.Parameter((layer.weight.double() * factor.view(shape)).to(layer.weight.dtype))
    bias = layer.bias.double() if layer.bias is not None else torch.zeros_like(std)
    folded.bias = nn.Parameter(((bias - bn.running_mean.double()) * factor + beta).to(layer.weight.dtype))
    # BN promises its output is distributed ~ N(β, γ²) per channel: kept (not saved) for the transforms that
    # need the statistics after the BN is gone — high-bias absorption and analytic bias correction
    folded.register_buffer("output_mean", beta.to(layer.weight.dtype), persistent=False)
    folded.register_buffer("output_std", gamma.abs().to(layer.weight.dtype), persistent=False)
    return folded


def fold_bn(model: nn.Module, *, inplace: bool = False) -> fx.GraphModule:
    """A traced copy of ``model`` with every conv/linear → BatchNorm pair folded (the input model is untouched).

    A BN is folded only when its input is a conv/linear module called once, whose output feeds nothing else and
    whose parameters the graph does not read directly; other BNs stay.

    Args:
        inplace: skip the deep copy: the result shares the unchanged layers (and their weights) with ``model``,
            so no second copy of the weights is made; ``model`` must not be used afterwards.

    Raises:
        torch.fx.proxy.TraceError: if ``model`` cannot be traced symbolically.
    """
    gm = model if isinstance(model, fx.GraphModule) else fx.symbolic_trace(model)
    if not inplace:
        gm = copy.deepcopy(gm)
    modules = dict(gm.named_modules())
    once = set(modules_called_once(gm))
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BN):
            continue
        producer = node.args[0]
        if not (isinstance(producer, fx.Node) and producer.op == "call_module"):
            continue
        layer = modules.get(producer.target)
        # fold only a layer called once, whose output feeds nothing else and whose weight nobody else reads
        if not isinstance(layer, _FOLDABLE) or len(producer.users) != 1 or producer.target not in once:
            continue
        replace_module(gm, producer.target, fold_bn_into(layer, modules[node.target]))
        node.replace_all_uses_with(producer)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def modules_called_once(gm: fx.GraphModule) -> list[str]:
    """Targets of ``call_module`` nodes called exactly once and whose parameters no ``get_attr`` reads, in first-use
    order: the modules a transform may replace without changing another use of them."""
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    read = {str(n.target).rpartition(".")[0] for n in gm.graph.nodes if n.op == "get_attr"}
    return [t for t, count in calls.items() if count == 1 and t not in read]


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` at the dotted ``name`` inside ``root``."""
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)
