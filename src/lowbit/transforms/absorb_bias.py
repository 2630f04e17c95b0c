"""High-bias absorption (Nagel et al. 2019, docs/math.md eq. T3).

After equalization some channels carry large biases, which widen the activation range. For a pair
``producer → ReLU → consumer`` whose producer output is ~ N(μ, σ²) per channel (the statistics BatchNorm left,
see :func:`lowbit.transforms.fold_bn_into`), ``c = max(0, μ − 3σ)`` is below almost every value of the channel,
so ``ReLU(z − c) = ReLU(z) − c`` almost always: subtract ``c`` from the producer's bias and add ``W₂ · c`` to the
consumer's bias. The function changes only where ``z < c`` (probability ≤ 0.13% under the normal model). With
no activation between the layers the shift is exact for any ``c``, and ``c = μ`` centres the channel.

A consumer with zero padding would see the padded zeros as shifted values, so its border outputs would change:
such pairs are skipped and listed.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from lowbit.transforms import fold_bn
    >>> model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2)).eval()
    >>> with torch.no_grad():
    ...     _ = model[1].bias.copy_(torch.tensor([10.0, 0.0, 5.0])), model[1].weight.fill_(1.0)
    >>> absorbed, report = absorb_bias(fold_bn(model))
    >>> report.absorbed
    {'0': 2}
    >>> [round(v, 2) for v in absorbed.get_submodule("0").output_mean.tolist()]
    [3.0, 0.0, 3.0]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import fx, nn

from lowbit.transforms.pairs import find_pairs, groups, input_channel_view

__all__ = ["absorb_bias", "AbsorbReport"]

_SIGMAS = 3.0  # DFQ's choice: the shift stays below all but 0.13% of a normal channel's values


@dataclass
class AbsorbReport:
    """Producer → channels whose bias moved into the consumer, and pairs left alone (with the reason)."""

    absorbed: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def _has_padding(layer: nn.Module) -> bool:
    return not isinstance(layer, nn.Linear) and any(p != 0 for p in layer.padding)


@torch.no_grad()
def absorb_bias(model: fx.GraphModule) -> tuple[fx.GraphModule, AbsorbReport]:
    """Move each ReLU pair's high biases from producer to consumer, in place on ``model`` (a traced model whose
    producers carry BN statistics, as :func:`lowbit.transforms.fold_bn` or :func:`equalize` leave them).

    Raises:
        ValueError: ``model`` is not a traced ``GraphModule``.
    """
    if not isinstance(model, fx.GraphModule):
        raise ValueError("absorb_bias needs a traced model: pass the result of fold_bn or equalize")
    report = AbsorbReport()
    pairs, _ = find_pairs(model, relu6=False)
    for pair in pairs:
        producer, consumer = model.get_submodule(pair.producer), model.get_submodule(pair.consumer)
        where = f"{pair.producer} → {pair.consumer}"
        if set(pair.activations) - {"relu", "identity"}:
            report.skipped.append(f"{where}: {', '.join(pair.activations)} between (needs ReLU only)")
            continue
        if getattr(producer, "output_mean", None) is None or producer.bias is None:
            report.skipped.append(f"{where}: no BatchNorm statistics on {pair.producer}")
            continue
        if _has_padding(consumer):
            report.skipped.append(f"{where}: {pair.consumer} pads with zeros, a shift would change its borders")
            continue
        if "relu" in pair.activations:
            shift = torch.clamp(producer.output_mean.double() - _SIGMAS * producer.output_std.double(), min=0.0)
        else:  # nothing clips between the layers: any shift is exact, so centre the channel
            shift = producer.output_mean.double()
        if not bool((shift != 0).any()):
            continue
        count = groups(consumer)
        view = input_channel_view(consumer.weight.double(), count)  # [g, out/g, in/g, k]
        moved = (view.sum(3) * shift.reshape(count, 1, -1)).sum(2).reshape(-1)  # Σ over the inputs each reads
        if consumer.bias is None:
            consumer.bias = nn.Parameter(torch.zeros(consumer.weight.shape[0], dtype=consumer.weight.dtype))
        consumer.bias.copy_((consumer.bias.double() + moved).to(consumer.bias.dtype))
        producer.bias.copy_((producer.bias.double() - shift).to(producer.bias.dtype))
        producer.output_mean.copy_((producer.output_mean.double() - shift).to(producer.output_mean.dtype))
        report.absorbed[pair.producer] = int((shift != 0).sum())
    return model, report
