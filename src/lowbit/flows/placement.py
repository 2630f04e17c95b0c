"""Where activation quantizers go in a traced graph: every tensor edge that integer hardware would hold as codes.

Rule (static mode): a tensor is quantized once, right after its producer, when it is the output of a quantized
layer or of a join (residual add, concat) — after a ReLU/ReLU6/Hardtanh that is its only user, fused as a clamp — or of a
re-quantizing op (average pooling, GELU, …), or the input of a quantized layer or join that is not yet on
an integer grid. Ops that keep values on the grid they received (max pooling, ReLU, flatten, reshape) pass the
qparams through and get no quantizer of their own. Dynamic mode quantizes only the inputs of quantized layers.
A tensor that only becomes the model's output (directly or through grid-keeping ops) is not quantized unless
asked: it is read as float, so integer execution dequantizes the last accumulator instead of re-quantizing it.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.nn import functional as F

from lowbit.nn.activation import ActivationQuantizer
from lowbit.nn.binary_quant import SignActivationQuantizer, SignQuantizer
from lowbit.nn.layers import QuantConv, QuantLinear
from lowbit.nn.qat_layers import QATLayer

__all__ = ["Placement", "place_quantizers", "keeps_grid", "input_scales", "feeding_modules", "mark_sign_outputs"]

QUANT_LAYERS = (QuantLinear, QuantConv, QATLayer)  # QAT layers sit where their quantized form will
# clamps: ReLU, ReLU6 and Hardtanh (the binary networks' activation) of codes are clamped codes
_FUSABLE_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
_FUSABLE_FUNCTIONS = {F.relu, F.relu6, torch.relu, F.hardtanh}
# keep the codes' grid: max/relu/reshape of codes are codes with the same scale and zero point
_GRID_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.MaxPool1d, nn.MaxPool2d, nn.Flatten, nn.Identity, nn.Dropout)
_GRID_FUNCTIONS = {F.relu, F.relu6, torch.relu, F.hardtanh, torch.flatten, torch.reshape, F.max_pool1d, F.max_pool2d,
                   operator.getitem}
_GRID_METHODS = {"view", "reshape", "flatten", "relu", "contiguous", "permute", "transpose", "squeeze", "unsqueeze",
                 "size"}
# supported ops whose output lands off the grid and is re-quantized
_REQUANT_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.GELU, nn.Hardswish,
                    nn.Sigmoid, nn.Tanh, nn.SiLU)
_JOIN_FUNCTIONS = {operator.add, torch.add, torch.cat}
_JOIN_METHODS = {"add"}


@dataclass
class Placement:
    """Nodes after which a quantizer goes, and the leaf modules that stay float and are not supported."""

    after: list[fx.Node] = field(default_factory=list)
    float_modules: list[str] = field(default_factory=list)


def _is_quant_layer(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    return node.op == "call_module" and isinstance(modules.get(node.target), QUANT_LAYERS)


def _is_join(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in _JOIN_FUNCTIONS) or (
        node.op == "call_method" and node.target in _JOIN_METHODS
    )


def keeps_grid(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` maps codes to codes on the grid it received (max pooling, ReLU, flatten, reshape, …)."""
    if node.op == "call_module":
        return isinstance(modules.get(node.target), _GRID_MODULES)
    if node.op == "call_function":
        return node.target in _GRID_FUNCTIONS
    return node.op == "call_method" and node.target in _GRID_METHODS


def _is_fusable_activation(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(node.target), _FUSABLE_MODULES)
    return node.op == "call_function" and node.target in _FUSABLE_FUNCTIONS


def _tensor_inputs(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda a: found.append(a) or a)
    return list(dict.fromkeys(found))


def _only_feeds_output(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether every use of ``node`` ends in the graph output, passing only through grid-keeping ops."""
    return bool(node.users) and all(
        user.op == "output" or (keeps_grid(user, modules) and _only_feeds_output(user, modules))
        for user in node.users
    )


def place_quantizers(gm: fx.GraphModule, dynamic: bool, quantize_output: bool = False) -> Placement:
    """Decide quantizer positions for ``gm`` (whose layers were already swapped to quantized ones)."""
    placement = _place(gm, dynamic)
    if not quantize_output:
        modules = dict(gm.named_modules())
        placement.after = [n for n in placement.after if n.op == "placeholder" or not _only_feeds_output(n, modules)]
    return placement


def _place(gm: fx.GraphModule, dynamic: bool) -> Placement:
    modules = dict(gm.named_modules())
    placement = Placement()
    on_grid: set[fx.Node] = set()
    chosen: set[fx.Node] = set()

    def quantize_after(node: fx.Node) -> None:
        if node not in chosen:
            chosen.add(node)
            placement.after.append(node)
        on_grid.add(node)

    # shape arithmetic (x.shape[1] // 2 + 1) is Python numbers, not tensors: never quantized, never a join
    scalars: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr", "output"):
            continue
        inputs = _tensor_inputs(node)
        if (node.op == "call_function" and node.target is getattr) or (
            node.op == "call_method" and node.target == "size"
        ) or (inputs and node.op in ("call_function", "call_method") and all(i in scalars for i in inputs)):
            scalars.add(node)
            continue
        consumes = _is_quant_layer(node, modules) or (not dynamic and _is_join(node))
        if consumes:
            for arg in _tensor_inputs(node):
                if arg not in on_grid and arg.op != "get_attr":
                    quantize_after(arg)
        if dynamic:
            continue
        if _is_quant_layer(node, modules):
            users = list(node.users)
            if not (len(users) == 1 and _is_fusable_activation(users[0], modules)):
                quantize_after(node)  # else the activation's output is quantized as a grid-keeping op below
        elif _is_join(node):
            users = list(node.users)
            if not (len(users) == 1 and _is_fusable_activation(users[0], modules)):
                quantize_after(node)
        elif keeps_grid(node, modules):
            inputs = _tensor_inputs(node)
            source = inputs[0] if inputs else None
            fusing = source is not None and (_is_quant_layer(source, modules) or _is_join(source))
            if fusing and source not in on_grid:
                quantize_after(node)  # the fused ReLU of a layer or join: its output is the producer's output edge
            elif source in on_grid:
                on_grid.add(node)
        elif node.op == "call_module" and isinstance(modules.get(node.target), _REQUANT_MODULES):
            if any(i in on_grid for i in _tensor_inputs(node)):
                quantize_after(node)
        elif node.op == "call_module" and not isinstance(modules.get(node.target), QUANT_LAYERS):
            placement.float_modules.append(f"{node.target} ({type(modules[node.target]).__name__})")
    return placement


def feeding_modules(gm: fx.GraphModule) -> dict[str, nn.Module]:
    """Quantized layer name → the module whose output it reads, looking back through grid-keeping ops (max
    pooling, flatten, …): the quantizer that sets the layer's input grid, when there is one."""
    modules = dict(gm.named_modules())
    found = {}
    for node in gm.graph.nodes:
        if not _is_quant_layer(node, modules):
            continue
        source = node.args[0]
        while isinstance(source, fx.Node) and keeps_grid(source, modules):
            source = source.args[0]
        if isinstance(source, fx.Node) and source.op == "call_module":
            found[str(node.target)] = modules[source.target]
    return found


def mark_sign_outputs(gm: fx.GraphModule) -> int:
    """Set ``sign_output`` on every quantized layer whose output reaches a sign edge (through clamps and other
    grid-keeping ops): it then computes its eval output from the exact integer accumulator, so the sign of a
    zero is the engine's. Returns how many layers were marked."""
    modules = dict(gm.named_modules())
    marked = 0
    for node in gm.graph.nodes:
        edge = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(edge, (SignQuantizer, SignActivationQuantizer)):
            continue
        source = node.args[0]
        while isinstance(source, fx.Node) and keeps_grid(source, modules):
            source = source.args[0]
        if isinstance(source, fx.Node) and _is_quant_layer(source, modules):
            modules[source.target].sign_output = True
            marked += 1
    return marked


def input_scales(model: nn.Module) -> dict[str, float]:
    """Layer name → scale of the frozen activation quantizer feeding it (through grid-keeping ops), where a traced
    graph says; empty for a model quantized layer by layer."""
    if not isinstance(model, fx.GraphModule):
        return {}
    return {name: float(q.scale) for name, q in feeding_modules(model).items()
            if isinstance(q, ActivationQuantizer) and q.frozen and not q.bypass}
