"""Bit-kernel accumulators for binary and ternary layers of a Program (the fast runner's kernels for them).

:func:`lowbit.engine.lower` marks a ``conv``/``linear`` op ``"bit_kernel": "binary"`` when its input is a sign edge
(codes ±1) and its weight codes are ±1 with zero point 0, ``"ternary"`` when they are in ``{−1, 0, 1}``. The
accumulator is then the XOR/popcount product of packed signs (:mod:`lowbit.kernels`) — the same integers as
``Σ x·w`` of the reference kernels, for any size: a ternary filter is the half-sum of two ±1 filters
``T = (B₊ + B₋)/2`` (zeros replaced by +1 and by −1), so a ternary convolution is two binary ones.

Example:
    >>> import torch
    >>> op = {"op": "linear", "weight": "w", "weight_zero_point": "z", "bit_kernel": "binary"}
    >>> tensors = {"w": torch.tensor([[1, -1, 1], [1, 1, -1]], dtype=torch.int32), "z": torch.zeros(2)}
    >>> accumulate = bit_accumulator(op, tensors)
    >>> accumulate(torch.tensor([[1.0, 1.0, -1.0]]))        # 1 − 1 − 1 and 1 + 1 + 1
    tensor([[-1.,  3.]])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from lowbit.kernels import binary_conv2d, binary_matmul, pack_conv_weight, pack_signs, pack_ternary, ternary_matmul

__all__ = ["bit_kernel_of", "bit_accumulator"]

Accumulate = Callable[[torch.Tensor], torch.Tensor]


def bit_kernel_of(weight_codes: torch.Tensor, weight_zero_point: torch.Tensor, input_grid: dict[str, Any] | None,
                  ) -> str | None:
    """``"binary"``, ``"ternary"`` or None: which bit kernel can compute a layer with these weights on this input."""
    if input_grid is None or not input_grid.get("sign") or bool(weight_zero_point.ne(0).any()):
        return None
    if bool(weight_codes.abs().eq(1).all()):
        return "binary"
    if bool(weight_codes.abs().le(1).all()):
        return "ternary"
    return None


def bit_accumulator(op: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Accumulate:
    """A function from the op's input (float ±1 codes) to its accumulator ``Σ x·w`` as float32, bias excluded.

    The weights are packed once here.
    """
    codes = tensors[op["weight"]].to(torch.float32)
    kind = op["bit_kernel"]
    if op["op"] == "linear":
        k = codes.shape[1]
        if kind == "binary":
            packed = pack_signs(codes)
            return lambda x: binary_matmul(pack_signs(x), packed, k).to(torch.float32)
        planes = pack_ternary(codes)
        return lambda x: ternary_matmul(pack_signs(x), planes, k).to(torch.float32)
    if codes.dim() != 4:
        raise ValueError(f"bit kernels run 2-D convolutions; {op.get('name')} has a {codes.dim() - 2}-D kernel")
    geometry = dict(stride=tuple(op["stride"]), padding=tuple(op["padding"]), dilation=tuple(op["dilation"]),
                    groups=op["groups"])
    if kind == "binary":
        weight = pack_conv_weight(codes, groups=op["groups"])
        return lambda x: binary_conv2d(x, weight, **geometry).to(torch.float32)
    # T = (B₊ + B₋)/2: both are ±1 filters; their sums have the same parity, so the half is exact
    plus = pack_conv_weight(torch.where(codes == 0, 1.0, codes), groups=op["groups"])
    minus = pack_conv_weight(torch.where(codes == 0, -1.0, codes), groups=op["groups"])
    return lambda x: ((binary_conv2d(x, plus, **geometry) + binary_conv2d(x, minus, **geometry)) // 2).to(
        torch.float32)
