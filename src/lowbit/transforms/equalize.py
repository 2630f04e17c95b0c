"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization", docs/math.md eq. T2).

For a pair ``producer → f → consumer`` where ``f(x/s) = f(x)/s`` for every ``s > 0`` (ReLU and friends, T1),
dividing the producer's output channel ``i`` by ``s_i`` and multiplying the consumer's input channel ``i`` by
``s_i`` leaves the function unchanged. With ``r1_i`` the range of the producer's channel ``i`` and ``r2_i`` that
of the consumer's input channel ``i``, ``s_i = sqrt(r1_i · r2_i) / r2_i`` makes both ranges ``sqrt(r1_i · r2_i)``,
which maximises the pair's total per-tensor precision. Pairs share layers (a chain conv → dw conv → conv), so the
sweep repeats until no scale moves.

Example:
    >>> import torch
    >>> from torch import nn
    >>> torch.manual_seed(0) is not None
    True
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    >>> with torch.no_grad():
    ...     model[0].weight[:4] *= 100                       # four channels with a hundred times the range
    >>> equalized, report = equalize(model)
    >>> report.pairs
    [('0', '2')]
    >>> x = torch.randn(2, 3, 8, 8)
    >>> bool(torch.allclose(equalized(x), model(x), rtol=1e-4, atol=1e-4))
    True
    >>> r1 = producer_ranges(equalized.get_submodule("0"))   # each channel's range is now the same in both layers
    >>> bool(torch.allclose(r1, consumer_ranges(equalized.get_submodule("2")), rtol=1e-5))
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import fx, nn

from lowbit.transforms.fold_bn import replace_module
from lowbit.transforms.pairs import Pair, find_pairs, folded_graph, groups, input_channel_view

__all__ = ["equalize", "EqualizeReport", "producer_ranges", "consumer_ranges", "scale_pair"]


@dataclass
class EqualizeReport:
    """What :func:`equalize` did: the pairs it equalized, why other layers were left, the ReLU6s it replaced."""

    pairs: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    relu6_replaced: list[str] = field(default_factory=list)
    sweeps: int = 0
    converged: bool = False


def producer_ranges(layer: nn.Module) -> torch.Tensor:
    """Largest |weight| of each output channel."""
    return layer.weight.detach().abs().flatten(1).amax(1)


def consumer_ranges(layer: nn.Module) -> torch.Tensor:
    """Largest |weight| that reads each input channel (groups and depthwise included)."""
    view = input_channel_view(layer.weight.detach().abs(), groups(layer))
    return view.amax(dim=(1, 3)).reshape(-1)


@torch.no_grad()
def scale_pair(producer: nn.Module, consumer: nn.Module, scale: torch.Tensor) -> None:
    """Divide the producer's output channels by ``scale`` and multiply the consumer's input channels by it.

    The producer's BN statistics (``output_mean``/``output_std`` left by :func:`fold_bn`) follow its outputs.
    """
    shape = (-1,) + (1,) * (producer.weight.dim() - 1)
    producer.weight.copy_((producer.weight.double() / scale.view(shape)).to(producer.weight.dtype))
    if producer.bias is not None:
        producer.bias.copy_((producer.bias.double() / scale).to(producer.bias.dtype))
    for name in ("output_mean", "output_std"):
        stat = getattr(producer, name, None)
        if stat is not None:
            stat.copy_((stat.double() / scale).to(stat.dtype))
    count = groups(consumer)
    view = input_channel_view(consumer.weight.double(), count)
    scaled = view * scale.reshape(count, 1, view.shape[2], 1)
    consumer.weight.copy_(scaled.reshape(consumer.weight.shape).to(consumer.weight.dtype))


def _equalize_once(modules: dict[str, nn.Module], pairs: list[Pair]) -> float:
    """One sweep over ``pairs``; returns the largest |log s| applied."""
    largest = 0.0
    for pair in pairs:
        producer, consumer = modules[pair.producer], modules[pair.consumer]
        r1 = producer_ranges(producer).double()
        r2 = consumer_ranges(consumer).double()
        usable = (r1 > 0) & (r2 > 0)  # a dead channel keeps scale 1: there is nothing to balance
        scale = torch.where(usable, torch.sqrt(r1 * r2) / torch.where(usable, r2, 1.0), torch.ones_like(r1))
        scale_pair(producer, consumer, scale)
        largest = max(largest, float(scale.log().abs().max()))
    return largest


def _replace_relu6(gm: fx.GraphModule, pairs: list[Pair], report: EqualizeReport) -> None:
    for pair in pairs:
        for node in pair.between:
            if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.ReLU6):
                replace_module(gm, str(node.target), nn.ReLU())
                report.relu6_replaced.append(str(node.target))
            elif node.op == "call_function" and node.target is nn.functional.relu6:
                node.target = nn.functional.relu
                report.relu6_replaced.append(node.name)
    gm.recompile()


def equalize(model: nn.Module, *, relu6: Literal["skip", "relu"] = "skip", max_sweeps: int = 100,
             tolerance: float = 1e-6, inplace: bool = False) -> tuple[fx.GraphModule, EqualizeReport]:
    """Equalize every conv/linear pair of ``model`` (BatchNorm folded first); the float function is kept.

    Args:
        relu6: ``"skip"`` leaves pairs joined by a ReLU6 alone (listed in the report); ``"relu"`` replaces those
            ReLU6s by ReLU, as the DFQ paper does — this changes the float model where activations exceed 6.
        max_sweeps: sweeps over all pairs at most; stops earlier once no scale moves by more than ``tolerance``
            (as |log s|).
        inplace: as :func:`fold_bn`: share unchanged layers with ``model`` instead of copying it.

    Returns:
        The equalized traced model and an :class:`EqualizeReport`.

    Raises:
        ValueError: ``model`` cannot be traced; ``relu6`` is neither ``"skip"`` nor ``"relu"``; ``max_sweeps`` < 1.
    """
    if relu6 not in ("skip", "relu"):
        raise ValueError(f'equalize: relu6 must be "skip" or "relu", got {relu6!r}')
    if max_sweeps < 1:
        raise ValueError(f"equalize: max_sweeps must be >= 1, got {max_sweeps}")
    gm = folded_graph(model, inplace, "equalize")
    pairs, skipped = find_pairs(gm, relu6=relu6 == "relu")
    report = EqualizeReport(pairs=[(p.producer, p.consumer) for p in pairs], skipped=skipped)
    if relu6 == "relu":
        _replace_relu6(gm, pairs, report)
    modules = dict(gm.named_modules())
    for report.sweeps in range(1, max_sweeps + 1):
        if _equalize_once(modules, pairs) <= tolerance:
            report.converged = True
            break
    return gm, report
