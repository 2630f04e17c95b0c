"""SmoothQuant (Xiao et al. 2023; docs/math.md eq. T9): move activation outliers into the weights.

Transformer activations have a few input channels with values far larger than the rest; one per-tensor scale
for the whole activation then leaves the other channels a handful of levels. For a Linear ``y = W·x`` and
per-channel factors ``s``, ``y = (W·diag(s)) · (x / s)``: the function is unchanged. With
``s_j = max|x_j|^α / max|W[:, j]|^(1−α)`` the outlier channels are divided down and their weights grow, which
per-channel weight quantization absorbs. ``α`` (0…1) sets how much of the difficulty moves to the weights.

The division ``x / s`` runs as a :class:`~lowbit.nn.scale.ChannelScale` in front of the layer, before its
input quantizer. Folding it into a preceding LayerNorm is only exact when nothing else reads that LayerNorm's
output; in post-LN transformers such as BERT/MiniLM the residual path reads it too, so lowbit keeps the
multiply explicit. In a traced graph it is a node before the layer (the layer keeps its name); in a model quantized
layer by layer the layer becomes ``Sequential(ChannelScale, Linear)``, so its name gains ``.1``.

Example:
    >>> import torch
    >>> from torch import nn
    >>> torch.manual_seed(0) and None
    >>> model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 4)).eval()
    >>> batches = [torch.randn(32, 8) * torch.tensor([50.0] + [1.0] * 7)]   # one outlier input channel
    >>> smoothed, report = smooth_quant(model, batches, alpha=0.5, include=("0",))   # default: after LayerNorms
    >>> report.layers
    ['0']
    >>> x = batches[0]
    >>> bool(torch.allclose(smoothed(x), model(x), rtol=1e-5, atol=1e-4))
    True
    >>> [round(r) for r in report.outlier_ratio["0"]]      # max/median of |x| per channel: before, after
    [82, 9]
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from lowbit.analysis.evaluation import call, run_with_input_hooks
from lowbit.nn.scale import ChannelScale
from lowbit.transforms.fold_bn import modules_called_once, replace_module

__all__ = ["smooth_quant", "SmoothReport", "smoothing_factors", "apply_smoothing"]


@dataclass
class SmoothReport:
    """Layers smoothed, and per layer the outlier ratio ``max_j max|x_j| / median_j max|x_j|`` of its input
    channels before and after."""

    alpha: float
    layers: list[str] = field(default_factory=list)
    outlier_ratio: dict[str, tuple[float, float]] = field(default_factory=dict)


def smoothing_factors(act_max: torch.Tensor, weight_max: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s_j = act_max_j^α / weight_max_j^(1−α)``; channels with a zero on either side keep ``s = 1``.

    Example:
        >>> smoothing_factors(torch.tensor([16.0, 1.0, 0.0]), torch.tensor([1.0, 4.0, 2.0]), 0.5).tolist()  # float64
        [4.0, 0.5, 1.0]
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"smooth_quant: alpha must be in [0, 1], got {alpha}")
    a, w = act_max.double(), weight_max.double()
    s = a.pow(alpha) / w.pow(1 - alpha)
    ok = (a > 0) & (w > 0) & torch.isfinite(s)
    return torch.where(ok, s, torch.ones_like(s))  # float64: the caller casts to the layer's dtype


def _linear_layers(model: nn.Module) -> list[str]:
    names = (modules_called_once(model) if isinstance(model, fx.GraphModule)
             else [n for n, _ in model.named_modules()])
    return [n for n in names if n and isinstance(model.get_submodule(n), nn.Linear)]


@torch.no_grad()
def _reading_layernorm(model: nn.Module, names: list[str], batch: Any) -> list[str]:
    """The layers among ``names`` whose input is a LayerNorm's output tensor itself (same storage, shape, strides).

    The outputs are held until the pass ends, so no later tensor can reuse their memory and match by accident."""
    produced: list[torch.Tensor] = []
    readers: list[str] = []

    def remember(_: nn.Module, __: Any, out: torch.Tensor) -> None:
        produced.append(out)

    def same(x: torch.Tensor, y: torch.Tensor) -> bool:
        return x.data_ptr() == y.data_ptr() and x.shape == y.shape and x.stride() == y.stride()

    def check(name: str):
        def hook(_: nn.Module, args: tuple[Any, ...]) -> None:
            if any(same(args[0], out) for out in produced) and name not in readers:
                readers.append(name)
        return hook

    handles = [m.register_forward_hook(remember) for m in model.modules() if isinstance(m, nn.LayerNorm)]
    handles += [model.get_submodule(n).register_forward_pre_hook(check(n)) for n in names]
    try:
        call(model, batch)
    finally:
        for h in handles:
            h.remove()
    return [n for n in names if n in readers]


def _targets(model: nn.Module, include: Sequence[str] | None, exclude: Sequence[str], batch: Any) -> list[str]:
    linear = _linear_layers(model)
    if include is None:
        chosen = _reading_layernorm(model, linear, batch)
    else:
        chosen = [n for n in linear if any(fnmatch.fnmatchcase(n, p) for p in include)]
    return [n for n in chosen if not any(fnmatch.fnmatchcase(n, p) for p in exclude)]


@torch.no_grad()
def _input_maxima(model: nn.Module, names: list[str], batches: Iterable[Any]) -> dict[str, torch.Tensor]:
    maxima: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(_: nn.Module, args: tuple[Any, ...]) -> None:
            m = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0)
            maxima[name] = m if name not in maxima else torch.maximum(maxima[name], m)
        return record

    run_with_input_hooks(model, batches, {model.get_submodule(n): hook(n) for n in names})
    return maxima


def apply_smoothing(model: nn.Module, names: list[str], factors: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Put a :class:`ChannelScale` ``1/s`` in front of each named Linear and scale its weight columns by ``s``
    (``factors`` ``None``: ``s = 1``, the structure only, for loading saved weights). Changes ``model`` in place
    and returns it (a recompiled graph for a traced model)."""
    layers = {n: model.get_submodule(n) for n in names}
    for name, layer in layers.items():
        s = (factors[name] if factors is not None else torch.ones(layer.in_features)).to(layer.weight.dtype)
        with torch.no_grad():
            layer.weight.mul_(s)
        scale = ChannelScale(1.0 / s)
        if isinstance(model, fx.GraphModule):
            node = next(n for n in model.graph.nodes if n.op == "call_module" and n.target == name)
            target = f"{name.replace('.', '_')}_smooth"
            model.add_submodule(target, scale)
            with model.graph.inserting_before(node):
                scaled = model.graph.call_module(target, (node.args[0],))
            node.args = (scaled,) + tuple(node.args[1:])
        else:
            replace_module(model, name, nn.Sequential(scale, layer))
    if isinstance(model, fx.GraphModule):
        model.graph.lint()
        model.recompile()
    return model


def smooth_quant(model: nn.Module, batches: Iterable[Any], alpha: float = 0.5, include: Sequence[str] | None = None,
                 exclude: Sequence[str] = (), inplace: bool = False) -> tuple[nn.Module, SmoothReport]:
    """Smooth the Linear layers chosen by ``include`` and not matching an ``exclude`` pattern (``fnmatch``).

    Args:
        model: a float model, traced (``fx.GraphModule``) or not.
        batches: calibration inputs (what :func:`lowbit.calibrate` takes); their per-channel maxima set ``s``.
        alpha: migration strength in ``[0, 1]`` (0.5 in the paper for most models).
        include: name patterns; ``None`` (default): the Linear layers that read a LayerNorm's output, as in the
            paper (a transformer's query/key/value and first feed-forward layer). Those inputs carry the outlier
            channels; the other Linear inputs (attention context, GELU output) are better left alone (measured on
            MiniLM, docs/benchmarks.md).
        inplace: change ``model`` instead of a copy.

    Raises:
        ValueError: ``alpha`` outside ``[0, 1]``, no matching Linear, or a layer no batch reached (named); the
            model is not changed then.
    """
    smoothing_factors(torch.ones(1), torch.ones(1), alpha)  # validates alpha before any work
    batches = list(batches)
    if not batches:
        raise ValueError("smooth_quant: needs calibration batches")
    names = _targets(model, include, exclude, batches[0])
    if not names:
        which = "reads a LayerNorm output" if include is None else f"matches include={tuple(include)}"
        raise ValueError(f"smooth_quant: no nn.Linear {which} (exclude={tuple(exclude)})")
    maxima = _input_maxima(model, names, batches)
    unreached = [n for n in names if n not in maxima]
    if unreached:
        raise ValueError(f"smooth_quant: no calibration batch reached {', '.join(unreached[:5])}")
    work = model if inplace else copy.deepcopy(model)
    report = SmoothReport(alpha, list(names))
    factors = {}
    for name in names:
        weight_max = work.get_submodule(name).weight.detach().abs().amax(0)
        factors[name] = smoothing_factors(maxima[name], weight_max, alpha)
        act, after = maxima[name], maxima[name] / factors[name]
        report.outlier_ratio[name] = (float(act.max() / act.median().clamp_min(1e-12)),
                                      float(after.max() / after.median().clamp_min(1e-12)))
    return apply_smoothing(work, names, factors), report
