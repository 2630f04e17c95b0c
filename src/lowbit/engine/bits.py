"""Bit kernels for binary and ternary layers of a Program, and the plan that keeps their activations packed.

:func:`lowbit.engine.lower` marks a ``conv``/``linear`` op ``"bit_kernel": "binary"`` when its input is a sign edge
(codes ±1) and its weight codes are ±1 with zero point 0, ``"ternary"`` when they are in ``{−1, 0, 1}``. The
accumulator is then the XOR/popcount product of packed signs (:mod:`lowbit.kernels`) — the same integers as
``Σ x·w`` of the reference kernels, for any size: a ternary filter is the half-sum of two ±1 filters
``T = (B₊ + B₋)/2`` (zeros replaced by +1 and by −1), so a ternary convolution is two binary ones.

Between such layers the activations stay bits (:func:`plan_packed`): a layer whose output is a sign edge writes
``acc + bias ≥ 0`` straight into packed words (:func:`lowbit.kernels.pack_threshold`), max pooling ORs words
(:func:`lowbit.kernels.maxpool_signs`), a flatten joins the pixels' words, and the next bit layer multiplies them
as they are. Three layouts of a packed value, all ``uint64`` with ``ceil(C/64)`` words per group of ``C``
channels (the bits past ``C`` are 0):

- ``pixels``: ``(N, H, W, words)`` — an image, logically ``(N, C, H, W)``;
- ``rows``: ``(..., words)`` — a linear layer's output, logically ``(..., C)``;
- ``flat``: ``(N, S·words)`` — a flattened image, logically ``(N, C·S)`` in ``(C, H, W)`` order. The linear layer
  that reads it permutes and packs its weight columns position-major once, with the same gaps, and its binary
  product then counts the ``S·64·words − C·S`` gap bits as agreements, which it subtracts.

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
from dataclasses import dataclass
from typing import Any

import torch

from lowbit.kernels import (binary_conv2d, binary_matmul, conv_output_size, im2col_signs, pack_conv_weight,
                            pack_signs, pack_ternary, pack_threshold, padding_correction, ternary_matmul)

__all__ = ["bit_kernel_of", "bit_accumulator", "SignLayout", "plan_packed", "BitProduct", "pack_signs_of"]

Accumulate = Callable[[torch.Tensor], torch.Tensor]
_WORD = 64


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


@dataclass(frozen=True)
class SignLayout:
    """How a packed sign value is laid out (module docstring): ``kind`` is ``"pixels"``, ``"rows"`` or ``"flat"``;
    ``channels`` is ``C``, the bits used in each group of words."""

    kind: str
    channels: int


def _candidate(op: dict[str, Any], tensors: dict[str, torch.Tensor], layouts: dict[str, SignLayout],
               ) -> SignLayout | None:
    """The layout ``op``'s output would have as packed signs, or None when it cannot be written packed."""
    kind = op["op"]
    if kind in ("conv", "linear") and op["out"] is not None and op["out"].get("sign"):
        channels = tensors[op["weight"]].shape[0]
        if kind == "linear":
            return SignLayout("rows", channels)
        return SignLayout("pixels", channels) if tensors[op["weight"]].dim() == 4 else None
    source = layouts.get(op.get("x", ""))
    if source is None:
        return None
    if kind == "maxpool" and source.kind == "pixels":
        return source
    if kind == "reshape" and len(op["shape"]) == 1:  # a flatten of each image
        if source.kind == "pixels":
            return SignLayout("flat", source.channels)
        if source.kind == "rows" and op["shape"] == [source.channels]:
            return source
    return None


def _reads_packed(reader: dict[str, Any], layout: SignLayout, tensors: dict[str, torch.Tensor],
                  packed: dict[str, SignLayout]) -> bool:
    """Whether ``reader`` can take its input ``x`` packed in ``layout``."""
    kind = reader["op"]
    if kind in ("maxpool", "reshape"):
        return reader["y"] in packed  # it passes the bits on
    if not reader.get("bit_kernel"):
        return False
    if kind == "conv":
        return layout.kind == "pixels" and reader["groups"] == 1
    k = tensors[reader["weight"]].shape[1]
    if layout.kind == "flat":
        return k % layout.channels == 0
    return layout.kind == "rows" and k == layout.channels


def plan_packed(program: Any) -> dict[str, SignLayout]:
    """The values of ``program`` held as packed signs by the fast runner, with their layouts.

    A value is packed when a sign edge (or a max pooling or flatten of packed signs) produces it, it is not an
    output, and every op that reads it can read bits: a bit-kernel layer, or a max pooling or flatten whose own
    output is packed.
    """
    tensors = program.tensors
    candidates: dict[str, SignLayout] = {}
    for op in program.ops:
        layout = _candidate(op, tensors, candidates)
        if layout is not None:
            candidates[op["y"]] = layout
    readers: dict[str, list[dict[str, Any]]] = {}
    for op in program.ops:
        for name in [op[k] for k in ("x", "a", "b") if k in op] + list(op.get("args", [])):
            readers.setdefault(name, []).append(op)
    packed: dict[str, SignLayout] = {}
    for op in reversed(program.ops):  # a reader's verdict can depend on its own output: decide those first
        name, layout = op["y"], candidates.get(op["y"])
        if layout is None or name in program.outputs or not readers.get(name):
            continue
        if all(reader.get("x") == name and _reads_packed(reader, layout, tensors, packed)
               for reader in readers[name]):
            packed[name] = layout
    for op in program.ops:  # a pooling or flatten whose input stayed float writes floats as well
        if op["op"] in ("maxpool", "reshape") and op["y"] in packed and op["x"] not in packed:
            del packed[op["y"]]
    return packed


class BitProduct:
    """The integer accumulator of a bit-kernel layer, from packed signs (``layout``) or float ±1 codes (None).

    ``product(x)`` returns ``(acc, correction, shape)``: ``acc`` int32 ``(R, C_out)`` (one row per image, or per
    output position of a convolution), ``correction`` None or int32 ``(S, C_out)`` to add to row ``r`` at
    ``r mod S`` (padded taps, flatten gaps), and the logical leading shape of the rows (``(N, H_out, W_out)`` for
    a convolution). ``acc + correction`` is ``factor ×`` the accumulator ``Σ x·w``: 2 for a ternary convolution,
    the sum of its two binary halves, whose halving is left to the reader (it is exact there).
    """

    def __init__(self, op: dict[str, Any], tensors: dict[str, torch.Tensor], layout: SignLayout | None) -> None:
        codes = tensors[op["weight"]].to(torch.float32)
        self.conv = op["op"] == "conv"
        self.ternary = op["bit_kernel"] == "ternary"
        self.layout = layout
        self.factor = 2 if self.conv and self.ternary else 1
        self.gap = None
        if self.conv:
            self.geometry = (tuple(op["stride"]), tuple(op["padding"]), tuple(op["dilation"]))
            self.channels = codes.shape[1]
            self.k = codes.shape[1] * codes.shape[2] * codes.shape[3]
            halves = [torch.where(codes == 0, 1.0, codes), torch.where(codes == 0, -1.0, codes)] if self.ternary \
                else [codes]
            self.weights = [pack_conv_weight(half) for half in halves]
            self.corrections: dict[tuple[int, int], torch.Tensor] = {}
            return
        out_channels, self.k = codes.shape
        if layout is not None and layout.kind == "flat":
            # columns (C, S) → (S, C): each position's C channels packed in their own words, as the pixels are
            positions = self.k // layout.channels
            rows = codes.reshape(out_channels, layout.channels, positions).transpose(1, 2)
            rows = rows.reshape(out_channels * positions, layout.channels)
            words = -(-layout.channels // _WORD)
            if self.ternary:
                planes = pack_ternary(rows)
                self.weight = type(planes)(*(p.reshape(out_channels, positions * words) for p in planes))
            else:
                self.weight = pack_signs(rows).reshape(out_channels, positions * words)
                self.gap = torch.full((1, out_channels), self.k - positions * words * _WORD, dtype=torch.int32)
            self.k = positions * words * _WORD
        else:
            self.weight = pack_ternary(codes) if self.ternary else pack_signs(codes)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, ...]]:
        if not self.conv:
            lead = tuple(x.shape[:-1])
            rows = x.reshape(-1, x.shape[-1]) if self.layout is not None else pack_signs(x.reshape(-1, x.shape[-1]))
            matmul = ternary_matmul if self.ternary else binary_matmul
            return matmul(rows, self.weight, self.k), self.gap, lead
        pixels = x if self.layout is not None else pack_signs_of(x, conv=True)
        images, height, width, _ = pixels.shape
        cols = im2col_signs(pixels, self.channels, self.weights[0].kernel_size, *self.geometry)
        acc = binary_matmul(cols, self.weights[0].words[0], self.k)
        if self.ternary:
            acc += binary_matmul(cols, self.weights[1].words[0], self.k)
        oh, ow = conv_output_size(height, width, self.weights[0].kernel_size, *self.geometry)
        return acc, self._correction(height, width, oh, ow), (images, oh, ow)

    def _correction(self, height: int, width: int, oh: int, ow: int) -> torch.Tensor | None:
        """The padding correction in the accumulator's row order, ``(H_out·W_out, C_out)``, once per input size."""
        if self.geometry[1] == (0, 0):
            return None
        if (height, width) not in self.corrections:
            parts = [padding_correction(w, height, width, *self.geometry) for w in self.weights]
            total = sum(parts[1:], parts[0])[0].permute(1, 2, 0).reshape(oh * ow, -1).contiguous()
            self.corrections[(height, width)] = total
        return self.corrections[(height, width)]


def pack_signs_of(values: torch.Tensor, conv: bool) -> torch.Tensor:
    """The signs of float32 codes or accumulators packed along channels (``v ≥ 0`` ↦ +1, NaN ↦ −1): pixels
    ``(N, H, W, words)`` from a convolution's ``(N, C, H, W)`` — the fast runner holds images channels-last, so
    the permuted view is contiguous and this is one pass — or rows ``(..., words)`` from ``(..., C)``."""
    rows = values.permute(0, 2, 3, 1) if conv else values
    return pack_threshold(rows.reshape(-1, rows.shape[-1])).reshape(*rows.shape[:-1], -1)
