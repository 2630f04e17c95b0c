"""``lower(qmodel, example_inputs) -> Program``: a frozen static model from :func:`lowbit.quantize` as integer ops.

The only bridge from ``nn`` back to the engine: it reads the traced graph, integer weights and frozen qparams.
A layer or join followed by its activation quantizer (through a fused ReLU/ReLU6) becomes one op that requantizes
straight to that quantizer's grid, the ReLU becoming the output clamp; grid-keeping ops (max pooling, flatten,
reshape, ReLU) act on codes; a layer whose output is the model's output returns the dequantized accumulator.

Example:
    >>> import torch, lowbit
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval()
    >>> q = lowbit.quantize(model, "w8a8", calibration=[torch.randn(64, 8)], progress=False)
    >>> program = lower(q, torch.randn(1, 8))
    >>> [op["op"] for op in program.ops]
    ['quantize', 'linear', 'linear']
    >>> x = torch.randn(5, 8)
    >>> bool((program(x) - q(x)).abs().max() < 0.05)
    True
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn import functional as F

from lowbit.engine.bits import bit_kernel_of
from lowbit.engine.kernels import Requant, exact_in_float32
from lowbit.engine.program import Program
from lowbit.functional.affine import accumulator_bias
from lowbit.nn.activation import ActivationQuantizer
from lowbit.nn.binary_quant import SignQuantizer
from lowbit.nn.layers import QuantConv, QuantLinear

__all__ = ["lower"]

_RELU = (nn.ReLU, F.relu, torch.relu)
_RELU6 = (nn.ReLU6, F.relu6)
_HARDTANH = (nn.Hardtanh, F.hardtanh)
_ADD = (operator.add, torch.add)
_MUL = (operator.mul, torch.mul)
_CAT = (torch.cat, torch.concat)
_RESHAPE_METHODS = {"view", "reshape", "flatten"}
_PASS_MODULES = (nn.Identity, nn.Dropout)
# float islands: element-wise or normalising ops run in float32 between a dequantize and the next quantize
_ISLAND_MODULES = {nn.GELU: "gelu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.Softmax: "softmax",
                   nn.LogSoftmax: "log_softmax", nn.LayerNorm: "layer_norm"}
_ISLAND_FUNCTIONS = {F.gelu: "gelu", torch.sigmoid: "sigmoid", torch.tanh: "tanh", F.softmax: "softmax",
                     torch.softmax: "softmax", F.log_softmax: "log_softmax"}


def _grid(q: ActivationQuantizer) -> dict[str, Any]:
    spec = q.spec
    if q.scale.numel() != 1:
        raise ValueError(f"lower supports per-tensor activation grids; {q.label} has {q.scale.numel()} scales")
    grid = {"scale": float(q.scale), "zero_point": int(q.zero_point), "qmin": spec.qmin, "qmax": spec.qmax}
    if isinstance(q, SignQuantizer):
        # codes ±1 by the sign of the value (0 ↦ +1), not by rounding: the op thresholds its accumulator at 0
        grid.update(sign=True, qmin=-1, qmax=1)
    return grid


class _Lowering:
    def __init__(self, gm: fx.GraphModule, mode: Requant) -> None:
        self.gm, self.mode = gm, mode
        self.modules = dict(gm.named_modules())
        self.ops: list[dict[str, Any]] = []
        self.tensors: dict[str, torch.Tensor] = {}
        self.values: dict[fx.Node, dict[str, Any]] = {}  # node → {"name", "grid" (None for float)}
        self.absorbed: set[fx.Node] = set()
        self.dequantized: dict[str, str] = {}  # code value → its float twin, made once

    # --- helpers ---------------------------------------------------------------------------------------------

    def _module(self, node: fx.Node) -> nn.Module | None:
        return self.modules.get(node.target) if node.op == "call_module" else None

    def _is(self, node: fx.Node, kinds: tuple) -> bool:
        module = self._module(node)
        if module is not None:
            return isinstance(module, tuple(k for k in kinds if isinstance(k, type)))
        return node.op == "call_function" and node.target in kinds

    def _describe(self, node: fx.Node) -> str:
        module = self._module(node)
        return f"{node.target} ({type(module).__name__})" if module is not None else f"{node.name} ({node.target})"

    def _codes(self, node: fx.Node, consumer: fx.Node) -> dict[str, Any]:
        value = self.values[node]
        if value["grid"] is None:
            raise ValueError(f"lower: {self._describe(consumer)} needs integer codes but its input {node.name} is "
                             "float (lower needs a static recipe, with every quantized layer's input on a grid)")
        return value

    def _output_grid(self, node: fx.Node, sign_ok: bool = False) -> tuple[dict[str, Any] | None, fx.Node | None]:
        """The grid (with a fused ReLU/ReLU6/Hardtanh clamp) ``node`` requantizes to, and the node that then holds
        it. Only layers threshold their accumulator for a sign edge (``sign_ok``)."""
        holder = self._quantized_next(node)
        if holder is None:
            return None, None
        grid = _grid(self._module(holder))  # type: ignore[arg-type]
        if grid.get("sign") and not sign_ok:
            raise ValueError(f"lower: a sign edge ({holder.name}) after {self._describe(node)} is not supported; "
                             "put sign edges after layers")
        clamp = holder.args[0] if holder.args[0] is not node else None  # the lone ReLU/ReLU6/Hardtanh between them
        if clamp is not None:
            low, high = self._clamp_range(clamp)
            if grid.get("sign"):  # sign(clamp(v)) = sign(v) when the clamp keeps 0 inside
                if not low < 0 <= high:
                    raise ValueError(f"lower: {self._describe(clamp)} before the sign edge {holder.name} makes every "
                                     "code +1; binary networks use Hardtanh")
            else:
                grid["qmin"] = max(grid["qmin"], grid["zero_point"] + self._code(low, grid))
                grid["qmax"] = min(grid["qmax"], grid["zero_point"] + self._code(high, grid))
            self.absorbed.add(clamp)
        self.absorbed.add(holder)
        return grid, holder

    def _emit(self, op: dict[str, Any], node: fx.Node, grid: dict[str, Any] | None, holder: fx.Node | None) -> None:
        op["y"] = node.name
        self.ops.append(op)
        value = {"name": node.name, "grid": grid}
        self.values[node] = value
        if holder is not None:  # the quantizer after the op (the fused ReLU between them has no other user)
            self.values[holder] = value

    # --- ops -------------------------------------------------------------------------------------------------

    def layer(self, node: fx.Node, layer: QuantConv | QuantLinear) -> None:
        x = self._codes(node.args[0], node)
        spec = layer.weight_spec
        if layer.weight_zero_point.numel() > 1 and spec.granularity.axis != 0:  # type: ignore[union-attr]
            raise ValueError(f"lower: {node.target} has per-channel weights along axis {spec.granularity.axis}")
        if layer.weight_q.numel() != 0 and layer.weight_scale.numel() not in (1, layer.weight_q.shape[0]):
            raise ValueError(f"lower: {node.target} has per-group weights; lower supports per tensor or channel")
        prefix = str(node.target)
        self.tensors[f"{prefix}.weight"] = layer.weight_q.to(torch.int32)
        self.tensors[f"{prefix}.weight_scale"] = layer.weight_scale.reshape(-1).to(torch.float32)
        self.tensors[f"{prefix}.weight_zero_point"] = layer.weight_zero_point.reshape(-1).to(torch.int32)
        op: dict[str, Any] = {"op": "conv" if isinstance(layer, QuantConv) else "linear", "name": prefix,
                              "x": x["name"], "in_scale": x["grid"]["scale"],
                              "in_zero_point": x["grid"]["zero_point"], "weight": f"{prefix}.weight",
                              "weight_scale": f"{prefix}.weight_scale",
                              "weight_zero_point": f"{prefix}.weight_zero_point", "bias": None}
        if layer.bias is not None:
            codes, _ = accumulator_bias(layer.bias, x["grid"]["scale"], layer.weight_scale)
            self.tensors[f"{prefix}.bias"] = codes
            op["bias"] = f"{prefix}.bias"
        grid_in = x["grid"]
        input_bound = max(grid_in["zero_point"] - grid_in["qmin"], grid_in["qmax"] - grid_in["zero_point"])
        op["exact_float32"] = exact_in_float32(input_bound, self.tensors[f"{prefix}.weight"],
                                               self.tensors[f"{prefix}.weight_zero_point"],
                                               self.tensors.get(f"{prefix}.bias"))
        if isinstance(layer, QuantConv):
            op.update(stride=list(layer.stride), padding=list(layer.padding), dilation=list(layer.dilation),
                      groups=layer.groups)
        bit_kernel = bit_kernel_of(layer.weight_q, layer.weight_zero_point, grid_in)
        if bit_kernel is not None and (isinstance(layer, QuantLinear) or layer.dims == 2):
            op["bit_kernel"] = bit_kernel  # the fast runner multiplies packed bits (lowbit.engine.bits)
        grid, holder = self._output_grid(node, sign_ok=True)
        op["out"] = grid
        self._emit(op, node, grid, holder)

    def add(self, node: fx.Node) -> None:
        operands = [arg for arg in node.args[:2] if isinstance(arg, fx.Node)]
        if len(operands) < 2 or any(self.values[arg]["grid"] is None for arg in operands) or self._quantized_next(
                node) is None:
            self.arithmetic(node, "add")  # a float operand or a float result: add the dequantized values
            return
        a, b = (self._codes(arg, node) for arg in node.args[:2])
        grid, holder = self._output_grid(node)
        op = {"op": "add", "a": a["name"], "b": b["name"], "a_scale": a["grid"]["scale"],
              "a_zero_point": a["grid"]["zero_point"], "b_scale": b["grid"]["scale"],
              "b_zero_point": b["grid"]["zero_point"], "out": grid}
        self._emit(op, node, grid, holder)

    def concat(self, node: fx.Node) -> None:
        parts = node.args[0]
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        if not isinstance(parts, (list, tuple)) or not all(isinstance(p, fx.Node) for p in parts) or not isinstance(
                dim, int):
            raise ValueError(f"lower: {self._describe(node)} needs a list of tensors and a constant dim")
        if any(self.values[p]["grid"] is None for p in parts) or self._quantized_next(node) is None:
            self.island(node, "cat", {"dim": dim}, args=tuple(parts))
            return
        grid, holder = self._output_grid(node)
        values = [self.values[p] for p in parts]
        op = {"op": "concat", "args": [v["name"] for v in values], "dim": dim,
              "scales": [v["grid"]["scale"] for v in values], "zero_points": [v["grid"]["zero_point"] for v in values],
              "out": grid}
        self._emit(op, node, grid, holder)

    def _clamp_range(self, node: fx.Node) -> tuple[float, float]:
        """The float interval a ReLU, ReLU6 or Hardtanh clamps to."""
        if self._is(node, _RELU):
            return 0.0, float("inf")
        if self._is(node, _RELU6):
            return 0.0, 6.0
        module = self._module(node)
        if module is not None:
            return float(module.min_val), float(module.max_val)  # type: ignore[union-attr]
        low = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", -1.0)
        high = node.args[2] if len(node.args) > 2 else node.kwargs.get("max_val", 1.0)
        return float(low), float(high)  # type: ignore[arg-type]

    @staticmethod
    def _code(value: float, grid: dict[str, Any]) -> int:
        """``round(value / scale)`` (a clamp bound on the grid; infinite bounds stay outside it)."""
        if value == float("inf"):
            return grid["qmax"] - grid["zero_point"]
        if value == float("-inf"):
            return grid["qmin"] - grid["zero_point"]
        return round(value / grid["scale"])

    def _is_clamp(self, node: fx.Node) -> bool:
        return self._is(node, _RELU) or self._is(node, _RELU6) or self._is(node, _HARDTANH)

    def _quantized_next(self, node: fx.Node) -> fx.Node | None:
        """The frozen quantizer ``node`` feeds (through a lone ReLU/ReLU6/Hardtanh), without absorbing it."""
        users = list(node.users)
        if len(users) == 1 and self._is_clamp(users[0]):
            users = list(users[0].users)
        quantizer = self._module(users[0]) if len(users) == 1 else None
        if isinstance(quantizer, ActivationQuantizer) and quantizer.frozen and not (quantizer.bypass or
                                                                                     quantizer.dynamic):
            return users[0]
        return None

    def _float(self, node: fx.Node) -> str:
        """The name of ``node``'s value as float32: itself, or a dequantize of its codes (emitted once)."""
        value = self.values[node]
        if value["grid"] is None:
            return value["name"]
        if value["name"] not in self.dequantized:
            name = f"{value['name']}_float"
            self.ops.append({"op": "dequantize", "x": value["name"], "y": name, "scale": value["grid"]["scale"],
                             "zero_point": value["grid"]["zero_point"]})
            self.dequantized[value["name"]] = name
        return self.dequantized[value["name"]]

    def island(self, node: fx.Node, fn: str, params: dict[str, Any] | None = None,
               tensors: dict[str, torch.Tensor | None] | None = None, args: tuple | None = None) -> None:
        """A float op on dequantized inputs (``args``, default all of the node's); its result is float until a
        quantizer puts it back on a grid."""
        args = node.args if args is None else args
        if not all(isinstance(arg, fx.Node) for arg in args):
            raise ValueError(f"lower: {self._describe(node)} with a constant operand is not supported")
        op: dict[str, Any] = {"op": "float", "fn": fn, "args": [self._float(arg) for arg in args], "y": node.name,
                              "params": params or {}, "tensors": {}}
        for role, tensor in (tensors or {}).items():
            if tensor is not None:
                self.tensors[f"{node.target}.{role}"] = tensor.detach().to(torch.float32).contiguous()
                op["tensors"][role] = f"{node.target}.{role}"
        self.ops.append(op)
        self.values[node] = {"name": node.name, "grid": None}

    def arithmetic(self, node: fx.Node, fn: str) -> None:
        """Float ``add``/``mul`` of two values, or of one value and a Python number."""
        tensors = tuple(arg for arg in node.args if isinstance(arg, fx.Node))
        numbers = [arg for arg in node.args if isinstance(arg, (int, float)) and not isinstance(arg, bool)]
        if len(tensors) == 1 and len(numbers) == 1 and len(node.args) == 2 and not node.kwargs:
            self.island(node, fn, {"constant": float(numbers[0])}, args=tensors)
        else:
            self.island(node, fn)

    def island_module(self, node: fx.Node, module: nn.Module) -> None:
        fn = _ISLAND_MODULES[type(module)]
        if fn == "layer_norm":
            self.island(node, fn, {"normalized_shape": list(module.normalized_shape), "eps": module.eps},
                        {"weight": module.weight, "bias": module.bias})
        elif fn in ("softmax", "log_softmax"):
            if module.dim is None:
                raise ValueError(f"lower: {self._describe(node)} needs an explicit dim")
            self.island(node, fn, {"dim": module.dim})
        elif fn == "gelu":
            self.island(node, fn, {"approximate": module.approximate})
        else:
            self.island(node, fn)

    def island_function(self, node: fx.Node) -> None:
        fn = _ISLAND_FUNCTIONS[node.target]
        params: dict[str, Any] = {}
        if fn in ("softmax", "log_softmax"):
            dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
            if not isinstance(dim, int):
                raise ValueError(f"lower: {self._describe(node)} needs a constant integer dim")
            params["dim"] = dim
        elif fn == "gelu":
            params["approximate"] = node.kwargs.get("approximate", "none")
        self.island(node, fn, params, args=node.args[:1])

    def pool(self, node: fx.Node, module: nn.Module) -> None:
        x = self._codes(node.args[0], node)
        grid, holder = self._output_grid(node)
        if grid is None:
            raise ValueError(f"lower: {self._describe(node)} has no output quantizer")
        common = {"x": x["name"], "in_scale": x["grid"]["scale"], "in_zero_point": x["grid"]["zero_point"],
                  "out": grid}
        if isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1)):
            self._emit({"op": "global_avgpool", **common}, node, grid, holder)
        elif isinstance(module, nn.AvgPool2d) and module.count_include_pad and not module.ceil_mode:
            pair = nn.modules.utils._pair
            stride = module.stride if module.stride is not None else module.kernel_size
            self._emit({"op": "avgpool", "kernel_size": list(pair(module.kernel_size)), "stride": list(pair(stride)),
                        "padding": list(pair(module.padding)), **common}, node, grid, holder)
        else:
            raise ValueError(f"lower: unsupported pooling {self._describe(node)}")

    def same_grid(self, node: fx.Node, op: dict[str, Any] | None) -> None:
        """An op on codes that keeps their grid (or a pass-through when ``op`` is None)."""
        source = self.values[node.args[0]]
        if op is None:
            self.values[node] = source
            return
        if source["grid"] is None and op["op"] != "reshape":
            raise ValueError(f"lower: {self._describe(node)} on a float value is not supported")
        op.update(x=source["name"], y=node.name)
        self.ops.append(op)
        self.values[node] = {"name": node.name, "grid": source["grid"]}

    def quantizer(self, node: fx.Node, quantizer: ActivationQuantizer) -> None:
        source = self.values[node.args[0]]
        if quantizer.bypass:
            self.values[node] = source
            return
        if quantizer.dynamic or not quantizer.frozen:
            raise ValueError(f"lower needs frozen static activation quantizers; {quantizer.label} is "
                             f"{'dynamic' if quantizer.dynamic else 'not calibrated'}")
        if isinstance(quantizer, SignQuantizer) and source["grid"] is not None and source["grid"].get("sign"):
            self.values[node] = source  # already signs (e.g. a sign edge after max pooling of signs)
            return
        if source["grid"] is not None:
            raise ValueError(f"lower: {quantizer.label} re-quantizes codes; not supported")
        grid = _grid(quantizer)
        self.ops.append({"op": "quantize", "x": source["name"], "y": node.name, "out": grid})
        self.values[node] = {"name": node.name, "grid": grid}

    def run(self, example_inputs: tuple) -> Program:
        ShapeProp(self.gm).propagate(*example_inputs)
        inputs, outputs = [], []
        for node in self.gm.graph.nodes:
            if node in self.absorbed:
                continue
            module = self._module(node)
            if node.op == "placeholder":
                inputs.append(node.name)
                self.values[node] = {"name": node.name, "grid": None}
            elif node.op == "output":
                results = node.args[0] if isinstance(node.args[0], (tuple, list)) else (node.args[0],)
                for result in results:
                    value = self.values[result]
                    if value["grid"] is not None:
                        name = f"{value['name']}_float"
                        self.ops.append({"op": "dequantize", "x": value["name"], "y": name,
                                         "scale": value["grid"]["scale"], "zero_point": value["grid"]["zero_point"]})
                        outputs.append(name)
                    else:
                        outputs.append(value["name"])
            elif isinstance(module, (QuantConv, QuantLinear)):
                self.layer(node, module)
            elif isinstance(module, ActivationQuantizer):
                self.quantizer(node, module)
            elif self._is(node, _ADD) or (node.op == "call_method" and node.target == "add"):
                self.add(node)
            elif node.op == "call_function" and node.target in _CAT:
                self.concat(node)
            elif self._is(node, _MUL) or (node.op == "call_method" and node.target == "mul"):
                self.arithmetic(node, "mul")
            elif module is not None and type(module) in _ISLAND_MODULES:
                self.island_module(node, module)
            elif node.op == "call_function" and node.target in _ISLAND_FUNCTIONS:
                self.island_function(node)
            elif isinstance(module, (nn.AdaptiveAvgPool2d, nn.AvgPool2d)):
                self.pool(node, module)
            elif isinstance(module, nn.MaxPool2d) or (node.op == "call_function" and node.target is F.max_pool2d):
                self.maxpool(node, module)
            elif self._is_clamp(node):
                self.relu(node)
            elif isinstance(module, _PASS_MODULES):
                self.same_grid(node, None)
            elif isinstance(module, nn.Flatten) or (node.op == "call_function" and node.target is torch.flatten) or (
                    node.op == "call_method" and node.target in _RESHAPE_METHODS):
                shape = list(node.meta["tensor_meta"].shape[1:])
                self.same_grid(node, {"op": "reshape", "shape": shape})
            elif node.op == "call_function" and node.target is getattr or (
                    node.op == "call_method" and node.target == "size"):
                continue  # shape arithmetic: the reshape op records the resulting shape
            else:
                raise ValueError(f"lower: unsupported op {self._describe(node)}; quantize it with a static recipe "
                                 "or keep it out of the lowered model")
        return Program(self.ops, self.tensors, inputs, outputs, self.mode)

    def maxpool(self, node: fx.Node, module: nn.Module | None) -> None:
        if module is None:
            raise ValueError(f"lower: functional max pooling {node.name} is not supported; use nn.MaxPool2d")
        pair = nn.modules.utils._pair
        stride = module.stride if module.stride is not None else module.kernel_size
        params = {"kernel_size": list(pair(module.kernel_size)), "stride": list(pair(stride)),
                  "padding": list(pair(module.padding)), "dilation": list(pair(module.dilation)),
                  "ceil_mode": bool(module.ceil_mode)}
        if self.values[node.args[0]]["grid"] is None:
            self.island(node, "max_pool2d", params)
        else:
            self.same_grid(node, {"op": "maxpool", **params})

    def relu(self, node: fx.Node) -> None:
        """ReLU, ReLU6 or Hardtanh: a clamp of codes (a float island on float values)."""
        source = self.values[node.args[0]]
        grid = source["grid"]
        low, high = self._clamp_range(node)
        if grid is None:
            if self._is(node, _HARDTANH):
                self.island(node, "hardtanh", {"min_val": low, "max_val": high})
            else:
                self.island(node, "relu6" if self._is(node, _RELU6) else "relu")
            return
        if grid.get("sign"):
            if not low < 0 <= high:
                raise ValueError(f"lower: {self._describe(node)} on signs is not a sign")
            self.same_grid(node, None)  # a clamp keeping 0 inside leaves ±1 codes as they are
            return
        self.same_grid(node, {"op": "clamp", "min": max(grid["qmin"], grid["zero_point"] + self._code(low, grid)),
                              "max": min(grid["qmax"], grid["zero_point"] + self._code(high, grid))})


def lower(qmodel: nn.Module, example_inputs: torch.Tensor | tuple, mode: Requant = Requant.FLOAT) -> Program:
    """The integer :class:`~lowbit.engine.Program` of ``qmodel`` (static recipe, traced by :func:`lowbit.quantize`).

    Raises:
        ValueError: a model that was not traced (quantized layer by layer), a float value where codes are needed,
            or an unsupported op — naming the module.
    """
    if not isinstance(qmodel, fx.GraphModule):
        raise ValueError("lower needs a model quantized in graph mode (lowbit.quantize traced it); this one was "
                         "quantized layer by layer")
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    return _Lowering(qmodel, mode).run(inputs)
