"""Learned weight rounding on a quantized model: GPTQ or AdaRound, layer by layer, in execution order.

Each quantized layer keeps the grid its weight observer chose (scale and zero point); only the integer codes
change. Layers are visited in the order the model runs them, and each one sees the inputs it gets in the
quantized model (quantized activations, earlier layers already re-rounded), so later layers learn to absorb
what earlier ones still get wrong. The target of every layer is its float weight applied to those inputs.

- GPTQ (:func:`lowbit.functional.gptq.gptq_codes`) needs only the Hessian ``2·XᵀX``, accumulated over the
  calibration batches (per group for grouped and depthwise convolutions).
- AdaRound (:func:`lowbit.functional.adaround.adaround_codes`) keeps up to ``samples`` input samples per layer
  and optimises on mini-batches of them.

Only the part of the model up to the layer being rounded runs on each pass: a hook stops the forward there.

Example:
    >>> import torch, lowbit
    >>> from lowbit.flows.rounding import learn_rounding, float_weights
    >>> torch.manual_seed(0) and None
    >>> model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    >>> batches = [torch.randn(64, 16) for _ in range(4)]
    >>> recipe = lowbit.Recipe(mode="weight_only", weight=lowbit.QuantSpec(bits=3, granularity=lowbit.PerChannel(0)))
    >>> qmodel = lowbit.quantize(model, recipe, progress=False)
    >>> report = learn_rounding(qmodel, float_weights(model), batches, "gptq", progress=False)
    >>> sorted(report.layers), report.error_ratio < 1
    (['0', '2'], True)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from lowbit.analysis.evaluation import call
from lowbit.functional.adaround import adaround_codes
from lowbit.functional.affine import elementwise_qparams
from lowbit.functional.gptq import gptq_codes
from lowbit.nn.layers import QuantConv, QuantLinear
from lowbit.recipes import ROUNDING_OPTIONS, WeightRounding, _enum

__all__ = ["learn_rounding", "float_weights", "RoundingReport"]


@dataclass
class RoundingReport:
    """What :func:`learn_rounding` did: per layer, the layer-output squared error of the learned codes and of
    round-to-nearest on the captured inputs (the error GPTQ / AdaRound minimise)."""

    method: str
    layers: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (learned, nearest)

    @property
    def error_ratio(self) -> float:
        """Summed learned error over summed round-to-nearest error (below 1: the learned codes are better)."""
        nearest = sum(n for _, n in self.layers.values())
        return sum(e for e, _ in self.layers.values()) / nearest if nearest else 1.0


def float_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every Linear/Conv weight of a float ``model``, by qualified name — the targets for
    :func:`learn_rounding` (take them from the model as it was just before quantization, BN folded)."""
    return {name: m.weight.detach().clone() for name, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))}


class _Reached(Exception):
    """Raised by the capture hook: the rest of the forward is not needed."""


def _op(layer: QuantConv | QuantLinear) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if isinstance(layer, QuantLinear):
        return F.linear
    conv = F.conv1d if layer.dims == 1 else F.conv2d
    return functools.partial(conv, stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
                             groups=layer.groups)


def _columns(layer: QuantConv | QuantLinear, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as ``[groups, K, samples]``: the columns each group's weight rows ``[out_g, K]`` meet."""
    if isinstance(layer, QuantLinear):
        return x.reshape(-1, x.shape[-1]).T.unsqueeze(0)
    if layer.dims == 1:
        x = x.unsqueeze(2)
        kernel, dilation, padding, stride = ((1, layer.kernel_size[0]), (1, layer.dilation[0]),
                                             (0, layer.padding[0]), (1, layer.stride[0]))
    else:
        kernel, dilation, padding, stride = layer.kernel_size, layer.dilation, layer.padding, layer.stride
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # [N, C·k, L]
    per_group = cols.shape[1] // layer.groups
    return cols.reshape(x.shape[0], layer.groups, per_group, -1).permute(1, 2, 0, 3).reshape(
        layer.groups, per_group, -1)


class _Capture:
    """A forward pre-hook collecting one layer's inputs (GPTQ: their Hessian; AdaRound: the samples)."""

    def __init__(self, layer: QuantConv | QuantLinear, hessian: bool, samples: int):
        self.layer, self.want_hessian, self.samples = layer, hessian, samples
        self.hess: torch.Tensor | None = None
        self.count = 0
        self.inputs: list[torch.Tensor] = []

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0].detach().float()
        if self.want_hessian:
            for chunk in x.split(8):  # unfolded convolution inputs are large: a few samples at a time
                cols = _columns(self.layer, chunk)
                part = torch.einsum("gkn,gln->gkl", cols, cols).double()
                self.hess = part if self.hess is None else self.hess + part
                self.count += cols.shape[-1]
        kept = sum(len(t) for t in self.inputs)
        if kept < self.samples:
            self.inputs.append(x[: self.samples - kept].clone())
        raise _Reached


def _capture(model: nn.Module, layer: QuantConv | QuantLinear, batches: list[Any], hessian: bool,
             samples: int) -> _Capture:
    capture = _Capture(layer, hessian, samples)
    handle = layer.register_forward_pre_hook(capture)
    try:
        with torch.no_grad():
            for batch in batches:
                if not hessian and sum(len(t) for t in capture.inputs) >= samples:
                    break
                try:
                    call(model, batch)
                except _Reached:
                    continue
                raise ValueError("learn_rounding: a calibration batch never reached a quantized layer")
    finally:
        handle.remove()
    return capture


def _execution_order(model: nn.Module, batch: Any) -> list[tuple[str, QuantConv | QuantLinear]]:
    names = {m: n for n, m in model.named_modules() if isinstance(m, (QuantConv, QuantLinear))}
    order: list[nn.Module] = []
    handles = [m.register_forward_pre_hook(lambda m, _: order.append(m) if m not in order else None)
               for m in names]
    try:
        with torch.no_grad():
            call(model, batch)
    finally:
        for h in handles:
            h.remove()
    return [(names[m], m) for m in order]  # type: ignore[misc]


def _output_error(layer: QuantConv | QuantLinear, weight: torch.Tensor, codes: torch.Tensor,
                  capture: _Capture) -> float:
    """Mean squared layer-output error of ``codes`` against the float ``weight`` on the captured inputs."""
    scale, zero = elementwise_qparams(weight.shape, layer.weight_qparams())
    delta = (codes.float() - zero.float()) * scale - weight.float()
    if capture.hess is not None:  # Σ_groups tr(Δ·Σxxᵀ·Δᵀ) / n = mean ‖Δ·x‖² over every captured column
        d = delta.double().reshape(layer.groups if isinstance(layer, QuantConv) else 1, -1, capture.hess.shape[-1])
        return float(torch.einsum("gok,gkl,gol->", d, capture.hess, d)) / max(capture.count, 1)
    x = torch.cat(capture.inputs)[:256]
    return float(_op(layer)(x, delta).pow(2).sum(1).mean())


def _learned_codes(layer: QuantConv | QuantLinear, weight: torch.Tensor, capture: _Capture,
                   method: WeightRounding, options: dict[str, Any]) -> torch.Tensor:
    spec = layer.weight_spec
    scale, zero = elementwise_qparams(weight.shape, layer.weight_qparams())
    if method is WeightRounding.ADAROUND:
        return adaround_codes(weight, capture.inputs, _op(layer), scale, zero, spec.qmin, spec.qmax,
                              steps=options["steps"], batch_size=options["batch_size"], lr=options["lr"],
                              reg=options["reg"], warm_start=options["warm_start"], seed=options["seed"])
    assert capture.hess is not None
    groups = capture.hess.shape[0]
    rows = weight.reshape(groups, -1, capture.hess.shape[-1])
    hess = 2.0 * capture.hess / max(capture.count, 1)
    s, z = scale.reshape(rows.shape), zero.reshape(rows.shape)
    codes = [gptq_codes(rows[g], hess[g], s[g], z[g], spec.qmin, spec.qmax, options["block"], options["damp"])
             for g in range(groups)]
    return torch.stack(codes).reshape(weight.shape)


def learn_rounding(model: nn.Module, reference: dict[str, torch.Tensor], batches: Iterable[Any],
                   method: WeightRounding | str, options: dict[str, Any] | None = None,
                   progress: bool = True) -> RoundingReport:
    """Re-choose the integer weight codes of every quantized layer of ``model`` (changed in place).

    Args:
        model: a model from :func:`lowbit.prepare` / :func:`lowbit.quantize` (static recipes calibrated first,
            so each layer sees the quantized activations it will get).
        reference: the float weights by layer name (:func:`float_weights` of the folded float model).
        batches: calibration batches (inputs as :func:`lowbit.calibrate` takes them).
        method: ``"gptq"`` or ``"adaround"`` (``"nearest"`` changes nothing).
        options: :data:`lowbit.recipes.ROUNDING_OPTIONS` to override.
        progress: a progress bar over the layers.

    Raises:
        ValueError: an unknown method or option, no batches, or a quantized layer without a reference weight.
    """
    from lowbit.flows.ptq import progress_bar  # ptq runs this flow: import lazily

    method = _enum(WeightRounding, method, "learn_rounding: method")
    unknown = set(options or {}) - set(ROUNDING_OPTIONS)
    if unknown:
        raise ValueError(f"learn_rounding: unknown option(s) {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(ROUNDING_OPTIONS)})")
    options = {**ROUNDING_OPTIONS, **(options or {})}
    report = RoundingReport(method.value)
    if method is WeightRounding.NEAREST:
        return report
    batches = list(batches)
    if not batches:
        raise ValueError("learn_rounding: needs calibration batches")
    layers = _execution_order(model, batches[0])
    missing = [name for name, _ in layers if name not in reference]
    if missing:
        raise ValueError(f"learn_rounding: no float reference weight for layer(s) {', '.join(missing)}")
    for name, layer in progress_bar(layers, progress, f"rounding ({method.value})"):
        weight = reference[name].detach().float()
        capture = _capture(model, layer, batches, method is WeightRounding.GPTQ, options["samples"])
        codes = _learned_codes(layer, weight, capture, method, options)
        report.layers[name] = (_output_error(layer, weight, codes, capture),
                               _output_error(layer, weight, layer.weight_q, capture))
        layer.weight_q.copy_(codes.to(layer.weight_q.dtype))
    return report
