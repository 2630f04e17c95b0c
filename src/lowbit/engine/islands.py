"""Float islands: the few float ops a Program may run between an explicit dequantize and quantize.

Softmax, LayerNorm, GELU and friends have no integer kernel in lowbit's engine; a model that needs them runs
them in float32 on dequantized values, and the next activation quantizer brings the result back onto a grid.
Each island op is named by ``fn`` and carries only JSON parameters and named tensors, so a saved Program stays
free of pickled code.

Example:
    >>> import torch
    >>> run_island({"fn": "softmax", "params": {"dim": -1}}, [torch.zeros(1, 4)], {}).tolist()
    [[0.25, 0.25, 0.25, 0.25]]
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F

__all__ = ["ISLANDS", "run_island", "island_tensors"]


def _layer_norm(args: list[torch.Tensor], params: dict[str, Any], tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    return F.layer_norm(args[0], params["normalized_shape"], tensors.get("weight"), tensors.get("bias"),
                        params["eps"])


ISLANDS = {
    "relu": lambda args, p, t: F.relu(args[0]),
    "relu6": lambda args, p, t: F.relu6(args[0]),
    "hardtanh": lambda args, p, t: F.hardtanh(args[0], p["min_val"], p["max_val"]),
    "gelu": lambda args, p, t: F.gelu(args[0], approximate=p.get("approximate", "none")),
    "sigmoid": lambda args, p, t: torch.sigmoid(args[0]),
    "tanh": lambda args, p, t: torch.tanh(args[0]),
    "softmax": lambda args, p, t: F.softmax(args[0], p["dim"]),
    "log_softmax": lambda args, p, t: F.log_softmax(args[0], p["dim"]),
    "layer_norm": _layer_norm,
    "max_pool2d": lambda args, p, t: F.max_pool2d(args[0], p["kernel_size"], p["stride"], p["padding"],
                                                  p["dilation"], p["ceil_mode"]),
    # a second operand that is a Python number travels as params["constant"]
    "add": lambda args, p, t: args[0] + (args[1] if len(args) > 1 else p["constant"]),
    "mul": lambda args, p, t: args[0] * (args[1] if len(args) > 1 else p["constant"]),
    "cat": lambda args, p, t: torch.cat(args, p["dim"]),
}


def run_island(op: dict[str, Any], args: list[torch.Tensor], tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """Apply the island ``op['fn']`` to float32 ``args``; ``tensors`` maps the op's tensor roles to values."""
    return ISLANDS[op["fn"]](args, op.get("params", {}), tensors)


def island_tensors(op: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The op's tensor roles (e.g. a LayerNorm's ``weight``) resolved to the program's tensors."""
    return {role: tensors[name] for role, name in op.get("tensors", {}).items()}
