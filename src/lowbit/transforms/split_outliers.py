"""Outlier channel splitting (OCS, Zhao et al. 2019; docs/math.md eq. T6).

In a pair ``producer → f → consumer`` with ``f`` element-wise per channel, the consumer's input channel ``i``
can be duplicated: the producer computes channel ``i`` twice (its row copied) and the consumer reads each copy
with half the weights, ``W₂[:, i]/2 · x_i + W₂[:, i]/2 · x_i = W₂[:, i] · x_i``. Halving is exact in binary
floating point, so the function is kept. Splitting the channel that holds the consumer's largest |weight|
shrinks the range its quantizer must cover; repeating it until ``expand_ratio`` more channels exist moves the
range down step by step.

Example:
    >>> import torch
    >>> from torch import fx, nn
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU6(), nn.Linear(8, 2)).eval()
    >>> with torch.no_grad():
    ...     model[2].weight[0, 3] = 10.0                      # one outlier weight
    >>> split, report = split_outliers(model, expand_ratio=0.25)   # two more channels for eight
    >>> report.split                                      # channel 3, then 3 again (its copy is channel 8)
    {'2': [3, 3]}
    >>> [round(float(w), 2) for w in split.get_submodule("2").weight.detach()[0, [3, 8, 9]]]
    [2.5, 5.0, 2.5]
    >>> x = torch.randn(5, 4)
    >>> bool(torch.allclose(split(x), model(x), atol=1e-6))
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from lowbit.transforms.fold_bn import replace_module
from lowbit.transforms.pairs import find_pairs, folded_graph, groups

__all__ = ["split_outliers", "SplitReport", "apply_splits"]


@dataclass
class SplitReport:
    """Consumer → the input channels split, in order (an index can repeat: a copy split again), and pairs left."""

    split: dict[str, list[int]] = field(default_factory=dict)
    producers: dict[str, str] = field(default_factory=dict)  # consumer → its producer
    skipped: list[str] = field(default_factory=list)


def _grown(layer: nn.Module, out_rows: torch.Tensor | None, in_columns: torch.Tensor | None) -> nn.Module:
    """A copy of ``layer`` whose output channels are ``out_rows`` (indices, repeats allowed) and whose input
    channels are ``in_columns`` of the old weight."""
    weight = layer.weight.detach()
    if out_rows is not None:
        weight = weight[out_rows]
    if in_columns is not None:
        weight = weight[:, in_columns]
    bias = None if layer.bias is None else layer.bias.detach()
    if bias is not None and out_rows is not None:
        bias = bias[out_rows]
    if isinstance(layer, nn.Linear):
        new: nn.Module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    else:
        new = type(layer)(weight.shape[1], weight.shape[0], layer.kernel_size, layer.stride, layer.padding,
                          layer.dilation, 1, bias is not None, layer.padding_mode)
    new = new.to(weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    for name in ("output_mean", "output_std"):  # BN statistics follow the duplicated channels
        stat = getattr(layer, name, None)
        if stat is not None:
            new.register_buffer(name, stat[out_rows] if out_rows is not None else stat.clone(), persistent=False)
    return new.train(layer.training)


@torch.no_grad()
def apply_splits(gm: fx.GraphModule, producer: str, consumer: str, channels: list[int]) -> None:
    """Split ``consumer``'s input ``channels`` in order (each halves the column and appends its copy; the producer
    gains the matching output row), in place on ``gm``."""
    first, second = gm.get_submodule(producer), gm.get_submodule(consumer)
    rows = list(range(first.weight.shape[0]))
    column_scale = torch.ones(len(rows), dtype=torch.float64)
    for channel in channels:
        rows.append(rows[channel])
        column_scale[channel] /= 2
        column_scale = torch.cat([column_scale, column_scale[channel : channel + 1]])
    rows_t = torch.tensor(rows)
    new_first = _grown(first, rows_t, None)
    new_second = _grown(second, None, rows_t)  # column j of the new consumer reads original channel rows[j]
    shape = (1, -1) + (1,) * (new_second.weight.dim() - 2)
    new_second.weight.copy_((new_second.weight.double() * column_scale.view(shape)).to(new_second.weight.dtype))
    replace_module(gm, producer, new_first)
    replace_module(gm, consumer, new_second)


def split_outliers(model: nn.Module, expand_ratio: float = 0.05, *, inplace: bool = False,
                   ) -> tuple[fx.GraphModule, SplitReport]:
    """Split the consumer channels holding the largest weights until each pair has ``expand_ratio`` more channels.

    BatchNorm is folded first. Grouped or depthwise layers are left (a copied channel would need its own input
    too) and listed.

    Raises:
        ValueError: ``expand_ratio`` outside (0, 1], or a model torch.fx cannot trace.
    """
    if not 0.0 < expand_ratio <= 1.0:
        raise ValueError(f"split_outliers: expand_ratio must be in (0, 1], got {expand_ratio!r}")
    gm = folded_graph(model, inplace, "split_outliers")  # a BatchNorm between the layers would be duplicated too
    report = SplitReport()
    pairs, report.skipped = find_pairs(gm, relu6=True)  # duplication, unlike scaling, passes any per-channel op
    for pair in pairs:
        first, second = gm.get_submodule(pair.producer), gm.get_submodule(pair.consumer)
        if groups(first) != 1 or groups(second) != 1:
            report.skipped.append(f"{pair.producer} → {pair.consumer}: grouped or depthwise")
            continue
        channels = first.weight.shape[0]
        extra = math.ceil(expand_ratio * channels)
        ranges = second.weight.detach().abs().transpose(0, 1).reshape(channels, -1).amax(1).double()
        chosen: list[int] = []
        for _ in range(extra):  # the channel holding the largest weight now, halved each time it is chosen
            i = int(torch.argmax(ranges))
            chosen.append(i)
            ranges[i] /= 2
            ranges = torch.cat([ranges, ranges[i : i + 1]])
        apply_splits(gm, pair.producer, pair.consumer, chosen)
        report.split[pair.consumer] = chosen
        report.producers[pair.consumer] = pair.producer
    gm.recompile()
    return gm, report
