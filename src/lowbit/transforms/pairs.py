"""Consecutive layer pairs in a traced graph: a conv/linear whose output reaches exactly one next conv/linear
through ops that commute with a positive per-channel scale (docs/math.md, eq. T1).

Cross-layer equalization, high-bias absorption and outlier channel splitting all move something from one layer
of such a pair to the next; this module finds the pairs once and says why other layers are not in one.

Example:
    >>> import torch
    >>> from torch import fx, nn
    >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1), nn.ReLU6(), nn.Conv2d(2, 2, 1))
    >>> pairs, skipped = find_pairs(fx.symbolic_trace(model))
    >>> [(p.producer, p.consumer, p.activations) for p in pairs]
    [('0', '2', ('relu',))]
    >>> skipped
    ['2 → 4: ReLU6 clips at 6, which a channel scale would move (pass relu6="relu" to replace it)']
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.nn import functional as F

from lowbit.transforms.fold_bn import fold_bn, modules_called_once

__all__ = ["Pair", "find_pairs", "LAYERS", "input_channel_view", "groups", "input_channels", "folded_graph"]

LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)
# ops through which a positive per-channel scale passes unchanged: f(x / s) = f(x) / s for s > 0
_EQUIVARIANT_MODULES = {nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu", nn.Identity: "identity", nn.Dropout: "identity",
                        nn.MaxPool1d: "maxpool", nn.MaxPool2d: "maxpool", nn.AvgPool1d: "avgpool",
                        nn.AvgPool2d: "avgpool", nn.AdaptiveAvgPool1d: "avgpool", nn.AdaptiveAvgPool2d: "avgpool"}
_EQUIVARIANT_FUNCTIONS = {F.relu: "relu", torch.relu: "relu", F.leaky_relu: "leaky_relu", F.max_pool2d: "maxpool",
                          F.avg_pool2d: "avgpool"}
_RELU6 = {nn.ReLU6, F.relu6}


@dataclass(frozen=True)
class Pair:
    """``producer`` → ``activations`` (names of the ops between) → ``consumer``; ``between`` are their nodes."""

    producer: str
    consumer: str
    activations: tuple[str, ...]
    between: tuple[fx.Node, ...]


def _kind(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """The equivariant op ``node`` is (``relu6`` included, for the caller to accept or not), or None."""
    if node.op == "call_module":
        module = modules.get(node.target)
        if type(module) in _RELU6:
            return "relu6"
        return _EQUIVARIANT_MODULES.get(type(module))  # type: ignore[arg-type]
    if node.op == "call_function":
        if node.target in _RELU6:
            return "relu6"
        return _EQUIVARIANT_FUNCTIONS.get(node.target)  # type: ignore[arg-type]
    if node.op == "call_method" and node.target == "relu":
        return "relu"
    return None


def _layer(node: fx.Node, modules: dict[str, nn.Module], once: set[str]) -> nn.Module | None:
    if node.op != "call_module" or node.target not in once:
        return None
    module = modules.get(node.target)
    return module if type(module) in LAYERS else None


def find_pairs(gm: fx.GraphModule, relu6: bool = False) -> tuple[list[Pair], list[str]]:
    """Every producer → consumer pair of conv/linear modules in ``gm``, and why other layers are in none.

    A pair needs: both layers called once; the producer's output used only by the chain of equivariant ops
    (ReLU, LeakyReLU, max/average pooling, identity, dropout — and ReLU6 when ``relu6``) that ends at the consumer's
    input; channel counts that match.
    """
    modules = dict(gm.named_modules())
    once = set(modules_called_once(gm))
    pairs: list[Pair] = []
    skipped: list[str] = []
    for node in gm.graph.nodes:
        if _layer(node, modules, once) is None:
            continue
        current, kinds, between = node, [], []
        while True:
            users = list(current.users)
            if len(users) != 1:
                if len(users) > 1:
                    skipped.append(f"{node.target}: its output feeds {len(users)} ops")
                break
            user = users[0]
            consumer = _layer(user, modules, once)
            if consumer is not None and user.args and user.args[0] is current:
                producer = modules[node.target]
                if producer.weight.shape[0] != input_channels(consumer):
                    skipped.append(f"{node.target} → {user.target}: channel counts differ")
                elif "relu6" in kinds and not relu6:
                    skipped.append(f"{node.target} → {user.target}: ReLU6 clips at 6, which a channel scale would "
                                   'move (pass relu6="relu" to replace it)')
                else:
                    pairs.append(Pair(str(node.target), str(user.target), tuple(kinds), tuple(between)))
                break
            kind = _kind(user, modules)
            if kind is None or not user.args or user.args[0] is not current or _extra_tensor_args(user):
                break
            kinds.append(kind)
            between.append(user)
            current = user
    return pairs, skipped


def _extra_tensor_args(node: fx.Node) -> bool:
    return any(isinstance(a, fx.Node) for a in list(node.args[1:]) + list(node.kwargs.values()))


def input_channels(layer: nn.Module) -> int:
    """Input features of a linear layer, input channels of a convolution."""
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def groups(layer: nn.Module) -> int:
    """A convolution's groups; 1 for a linear layer."""
    return 1 if isinstance(layer, nn.Linear) else layer.groups


def folded_graph(model: nn.Module, inplace: bool, verb: str) -> fx.GraphModule:
    """``fold_bn(model)`` for a transform that needs the graph; an untraceable model is a ValueError naming it.

    Raises:
        ValueError: ``model`` cannot be traced (``verb`` says which transform needed it).
    """
    try:
        return fold_bn(model, inplace=inplace)
    except Exception as err:  # torch.fx raises several error types for untraceable code
        raise ValueError(f"{verb} needs a model torch.fx can trace, to find which layers feed which; "
                         f"{type(model).__name__} cannot be traced ({type(err).__name__}: {err})"[:400]) from err


def input_channel_view(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """``weight`` ([out, in/groups, …]) viewed as ``[groups, out/groups, in/groups, k]``: index ``[g, :, j]`` holds
    every weight that reads input channel ``g · in/groups + j``."""
    out = weight.shape[0]
    per_group_in = weight.shape[1]
    return weight.reshape(groups, out // groups, per_group_in, -1)
