"""Bias correction (Nagel et al. 2019, docs/math.md eq. T4): remove the mean error that quantized weights add.

A layer with quantized weights ``W + ε`` outputs ``y + ε·x``; on average that is ``ε·E[x]`` per output channel,
a shift the next layers never expected. Subtracting it from the bias removes the mean error:

- ``analytic``: no data. ``E[x]`` comes from the BatchNorm statistics of the layer that produced ``x``
  (``N(μ, σ²)`` per channel, through its ReLU/ReLU6 as a clipped normal, then through linear ops such as average
  pooling and flatten);
- ``empirical``: ``E[x]`` is measured on calibration batches run through the float model.

The weight error ``ε`` is the one the recipe's weight quantizer will make (same spec, same observer), so after
this transform the quantized layer's bias is the corrected one. The float model itself then differs slightly.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from lowbit.spec import QuantSpec
    >>> from lowbit.transforms import fold_bn
    >>> torch.manual_seed(0) is not None
    True
    >>> model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4)).eval()
    >>> corrected, report = correct_bias(fold_bn(model), QuantSpec(bits=4), mode=BiasCorrection.ANALYTIC)
    >>> list(report.corrected)
    ['3']
    >>> report.skipped
    ['0: its input comes from input_1, which no BatchNorm statistics describe']
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from lowbit.functional.affine import dequantize
from lowbit.functional.gaussian import clipped_normal_mean
from lowbit.nn.layers import WeightObserver, quantize_weight
from lowbit.spec import QuantSpec
from lowbit.transforms.fold_bn import modules_called_once
from lowbit.transforms.pairs import LAYERS, groups, input_channel_view, input_channels

__all__ = ["BiasCorrection", "BiasCorrectionReport", "correct_bias", "expected_inputs_analytic",
           "expected_inputs_empirical"]


class BiasCorrection(enum.Enum):
    """Where ``E[x]`` comes from."""

    ANALYTIC = "analytic"
    EMPIRICAL = "empirical"


@dataclass
class BiasCorrectionReport:
    """Layer → largest |bias change|, and layers left alone with the reason."""

    corrected: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


# clamp bounds of the activations a clipped normal describes
_CLIPS = {nn.ReLU: (0.0, float("inf")), nn.ReLU6: (0.0, 6.0), nn.Identity: (float("-inf"), float("inf")),
          nn.Dropout: (float("-inf"), float("inf"))}
_CLIP_FUNCTIONS = {nn.functional.relu: (0.0, float("inf")), torch.relu: (0.0, float("inf")),
                   nn.functional.relu6: (0.0, 6.0)}
# linear ops that keep each channel's mean (per-channel averages; flatten repeats a channel over its positions)
_MEAN_KEEPING = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.Identity, nn.Dropout)


def _clip(node: fx.Node, modules: dict[str, nn.Module]) -> tuple[float, float] | None:
    if node.op == "call_module":
        return _CLIPS.get(type(modules.get(node.target)))  # type: ignore[arg-type]
    if node.op == "call_function":
        return _CLIP_FUNCTIONS.get(node.target)  # type: ignore[arg-type]
    return None


def _is_flatten(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    return (node.op == "call_module" and isinstance(modules.get(node.target), nn.Flatten)) or (
        node.op == "call_function" and node.target is torch.flatten) or (
        node.op == "call_method" and node.target == "flatten")


def _analytic_mean(node: fx.Node, modules: dict[str, nn.Module]) -> torch.Tensor | str:
    """``E[value of node]`` per channel from BN statistics, or why it cannot be had.

    A layer with BN statistics gives ``μ``; a ReLU/ReLU6 directly on it the clipped-normal mean; average pooling,
    flatten, identity and dropout keep each channel's mean; a residual add sums its operands' means.
    """
    if _is_producer(node, modules):
        return modules[node.target].output_mean.double()
    bounds = _clip(node, modules)
    if bounds is not None and isinstance(node.args[0], fx.Node) and _is_producer(node.args[0], modules):
        producer = modules[node.args[0].target]
        return clipped_normal_mean(producer.output_mean, producer.output_std, *bounds)
    if bounds is not None and bounds[0] == float("-inf") and bounds[1] == float("inf") or _is_flatten(
            node, modules) or (node.op == "call_module" and isinstance(modules.get(node.target), _MEAN_KEEPING)):
        return _analytic_mean(node.args[0], modules) if isinstance(node.args[0], fx.Node) else "a constant input"
    if node.op == "call_function" and node.target in (operator.add, torch.add) and len(node.args) == 2 and all(
            isinstance(a, fx.Node) for a in node.args):
        parts = [_analytic_mean(a, modules) for a in node.args]
        for part in parts:
            if isinstance(part, str):
                return part
        if parts[0].shape != parts[1].shape:  # type: ignore[union-attr]
            return "a residual add of differently shaped means"
        return parts[0] + parts[1]  # type: ignore[operator]
    return f"its input comes from {node.name}, which no BatchNorm statistics describe"


def _is_producer(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    return node.op == "call_module" and getattr(modules.get(node.target), "output_mean", None) is not None


def expected_inputs_analytic(gm: fx.GraphModule) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``E[x]`` per input channel of every conv/linear from BN statistics alone, and the layers it cannot serve.

    After a flatten a linear layer has ``channels × positions`` inputs; :func:`correct_bias` repeats each
    channel's mean over its positions.
    """
    modules = dict(gm.named_modules())
    means: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    once = set(modules_called_once(gm))
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target not in once or type(modules.get(node.target)) not in LAYERS:
            continue
        found = _analytic_mean(node.args[0], modules) if isinstance(node.args[0], fx.Node) else "a constant input"
        if isinstance(found, str):
            skipped.append(f"{node.target}: {found}")
        else:
            means[str(node.target)] = found
    return means, skipped


@torch.no_grad()
def expected_inputs_empirical(model: nn.Module, batches: Iterable[Any]) -> dict[str, torch.Tensor]:
    """``E[x]`` per input channel (conv) or feature (linear) of every conv/linear, measured on ``batches``."""
    from lowbit.analysis.evaluation import run_with_input_hooks

    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str):
        def record(module: nn.Module, args: tuple) -> None:
            x = args[0].detach().double()
            if isinstance(module, nn.Linear):  # features on the last axis
                per_feature = x.reshape(-1, x.shape[-1]).T
            else:  # channels on axis 1
                per_feature = x.transpose(0, 1).reshape(x.shape[1], -1)
            sums[name] = sums.get(name, 0) + per_feature.sum(1)
            counts[name] = counts.get(name, 0) + per_feature.shape[1]
        return record

    run_with_input_hooks(model, batches, {m: hook(name) for name, m in model.named_modules() if type(m) in LAYERS})
    return {name: sums[name] / counts[name] for name in sums}


def _output_shift(layer: nn.Module, error: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """``ε · E[x]`` per output channel (zero padding ignored, as in the paper)."""
    count = groups(layer)
    view = input_channel_view(error.double(), count).sum(3)  # [g, out/g, in/g]: ε summed over the kernel
    return (view * mean.double().reshape(count, 1, -1)).sum(2).reshape(-1)


@torch.no_grad()
def correct_bias(model: fx.GraphModule, weight_spec: QuantSpec | Mapping[str, QuantSpec | None], *,
                 mode: BiasCorrection = BiasCorrection.ANALYTIC, observer: WeightObserver = WeightObserver.MINMAX,
                 calibration: Iterable[Any] | None = None) -> tuple[fx.GraphModule, BiasCorrectionReport]:
    """Subtract the expected quantization error ``ε·E[x]`` from every conv/linear bias, in place on ``model``.

    Args:
        model: a traced float model; for ``ANALYTIC``, its layers carry BN statistics (:func:`fold_bn`).
        weight_spec: the weight quantization to correct for — one spec, or one per layer name (``None``: leave
            the layer float, uncorrected).
        observer: the weight observer the quantization will use (the error depends on it).
        calibration: batches for ``EMPIRICAL``.

    Raises:
        ValueError: ``EMPIRICAL`` without calibration batches; an input that is not a GraphModule.
    """
    if not isinstance(model, fx.GraphModule):
        raise ValueError("correct_bias needs a traced model: pass the result of fold_bn or equalize")
    report = BiasCorrectionReport()
    if mode is BiasCorrection.EMPIRICAL:
        if calibration is None:
            raise ValueError("correct_bias: mode EMPIRICAL needs calibration batches")
        means, report.skipped = expected_inputs_empirical(model, calibration), []
    else:
        means, report.skipped = expected_inputs_analytic(model)
    for name, mean in means.items():
        layer = model.get_submodule(name)
        spec = weight_spec.get(name) if isinstance(weight_spec, Mapping) else weight_spec
        if spec is None:
            report.skipped.append(f"{name}: not quantized by the recipe")
            continue
        features = input_channels(layer)
        if mean.numel() != features and mean.numel() and features % mean.numel() == 0 and isinstance(layer,
                                                                                                       nn.Linear):
            mean = mean.repeat_interleave(features // mean.numel())  # flattened [C, H, W]: channel-major
        if mean.numel() != features:
            report.skipped.append(f"{name}: {mean.numel()} input means for {features} inputs")
            continue
        q, qp = quantize_weight(layer.weight, spec, observer)
        shift = _output_shift(layer, dequantize(q, qp).double() - layer.weight.double(), mean)
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0], dtype=layer.weight.dtype))
        layer.bias.copy_((layer.bias.double() - shift).to(layer.bias.dtype))
        report.corrected[name] = float(shift.abs().max())
    return model, report
