"""Per-layer facts of a quantized model, as plain JSON-ready data (issue #13): what the report shows.

For every quantized layer: its kind and weight shape, weight bits and granularity, the weight observer, the weight
grid's range, the SQNR of the quantized weight against the float one, the activation observer of its input with
the range it saw and the clip range it chose, the SQNR of the layer's output against the float model's, and
histograms of the float weights and of the input activations with the clip range.

The float model is BN-folded first (:func:`lowbit.transforms.fold_bn`), as quantization does, so each float layer
has the weights the quantized one was made from. Reading only: neither model changes.

Example:
    >>> import torch, lowbit
    >>> torch.manual_seed(0) and None
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval()
    >>> batches = [torch.randn(64, 8)]
    >>> q = lowbit.quantize(model, "w8a8", calibration=batches, progress=False)
    >>> rows = layer_report(q, model, batches)["layers"]
    >>> [r["name"] for r in rows], rows[0]["weight_bits"], rows[0]["weight_sqnr_db"] > 30
    (['0', '2'], 8, True)
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import fx, nn

from lowbit.analysis.evaluation import call
from lowbit.analysis.metrics import sqnr
from lowbit.analysis.weight_error import granularity_label
from lowbit.flows.placement import feeding_modules
from lowbit.nn import ActivationQuantizer
from lowbit.nn.layers import QuantConv, QuantLinear
from lowbit.transforms import fold_bn

__all__ = ["layer_report", "histogram", "batched_sqnr", "folded_float", "grid_range", "observed_range"]

BINS = 64
_SAMPLES = 200_000  # activation values kept per layer for its histogram


def histogram(values: torch.Tensor, clip: tuple[float, float] | None, bins: int = BINS) -> dict[str, Any]:
    """``{"edges", "counts", "clip"}`` of ``values`` over their own range widened to include ``clip``."""
    values = values.detach().reshape(-1).to(torch.float64)
    lo, hi = float(values.min()), float(values.max())
    if clip is not None:
        lo, hi = min(lo, clip[0]), max(hi, clip[1])
    if hi <= lo:
        hi = lo + 1.0
    counts = torch.histc(values, bins=bins, min=lo, max=hi)
    edges = torch.linspace(lo, hi, bins + 1)
    return {"edges": [round(float(e), 8) for e in edges], "counts": [int(c) for c in counts],
            "clip": None if clip is None else [float(clip[0]), float(clip[1])]}


def grid_range(scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int) -> tuple[float, float]:
    """The real range a grid covers: ``scale·(qmin − z) … scale·(qmax − z)`` (widest over channels)."""
    lo = (scale.to(torch.float64) * (qmin - zero_point.to(torch.float64))).min()
    hi = (scale.to(torch.float64) * (qmax - zero_point.to(torch.float64))).max()
    return float(lo), float(hi)


def observed_range(quantizer: ActivationQuantizer) -> tuple[float, float] | None:
    """The widest range the quantizer's observer saw during calibration; None when it keeps no statistics."""
    observer = quantizer.observer
    if observer is not None and getattr(observer, "min_val", torch.empty(0)).numel():
        return float(observer.min_val.min()), float(observer.max_val.max())
    return None


def _observer_facts(quantizer: ActivationQuantizer | None) -> dict[str, Any]:
    if quantizer is None or quantizer.bypass:
        return {"activation_observer": None, "observed_range": None, "clip_range": None, "activation_bits": None}
    observer = quantizer.observer
    observed = observed_range(quantizer)
    qp = quantizer.qparams()
    clip = grid_range(qp.scale, qp.zero_point, quantizer.spec.qmin, quantizer.spec.qmax) if quantizer.frozen else None
    return {"activation_observer": type(observer).__name__ if observer is not None else "dynamic",
            "observed_range": list(observed) if observed else None, "clip_range": list(clip) if clip else None,
            "activation_bits": quantizer.spec.bits}


def _run_hooked(model: nn.Module, batches, handles: list) -> None:
    """Run every batch through ``model`` without gradients, then remove the hook ``handles`` (also on failure)."""
    try:
        with torch.no_grad():
            for batch in batches:
                call(model, batch)
    finally:
        for h in handles:
            h.remove()


def _outputs(model: nn.Module, names: list[str], batches) -> dict[str, list[torch.Tensor]]:
    """The outputs of the named submodules over all batches (empty where a name is missing)."""
    modules = dict(model.named_modules())
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    _run_hooked(model, batches, [modules[n].register_forward_hook(lambda m, a, out, n=n: seen[n].append(out.detach()))
                                 for n in names if n in modules])
    return seen


def _inputs(quantizers: dict[str, ActivationQuantizer], model: nn.Module, batches) -> dict[str, torch.Tensor]:
    """A sample (at most ``_SAMPLES`` values) of what flows into each feeding quantizer, before quantization."""
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in quantizers}
    _run_hooked(model, batches, [q.register_forward_pre_hook(lambda m, args, n=n: seen[n].append(args[0].detach()
                                                                                                .reshape(-1)))
                                 for n, q in quantizers.items()])
    out = {}
    for name, parts in seen.items():
        if parts:
            flat = torch.cat(parts)
            step = max(1, math.ceil(flat.numel() / _SAMPLES))
            out[name] = flat[::step]
    return out


def batched_sqnr(reference: list[torch.Tensor] | None, approximation: list[torch.Tensor] | None) -> float | None:
    """``sqnr`` (docs/math.md eq. 16) over all batches at once — batches may differ in shape, as sentences do —
    rounded to 0.01 dB; None when the outputs cannot be paired."""
    if not reference or not approximation or len(reference) != len(approximation):
        return None
    if any(a.shape != b.shape for a, b in zip(reference, approximation)):
        return None
    signal = sum(float(a.double().square().sum()) for a in reference)
    noise = sum(float((a.double() - b.double()).square().sum()) for a, b in zip(reference, approximation))
    if noise == 0.0:
        return math.inf
    return round(10.0 * math.log10(signal / noise), 2) if signal > 0 else -math.inf


def folded_float(float_model: nn.Module) -> nn.Module:
    """A BN-folded copy of ``float_model``, as quantization sees it; a plain copy when it cannot be traced (a
    transformer has no BN to fold)."""
    try:
        return fold_bn(copy.deepcopy(float_model).eval())
    except Exception:  # noqa: BLE001 - tracing failures come in many types
        return copy.deepcopy(float_model).eval()


def layer_report(qmodel: nn.Module, float_model: nn.Module, batches) -> dict[str, Any]:
    """``{"layers": [row per quantized layer], "weight_observer": kind}`` for a model from ``lowbit.quantize``.

    Each row: ``name``, ``kind``, ``shape``, ``weight_bits``, ``granularity``, ``weight_range`` (the grid's),
    ``weight_sqnr_db``, ``activation_observer``, ``activation_bits``, ``observed_range``, ``clip_range``,
    ``output_sqnr_db`` (None where the float model has no layer of that name), ``weight_histogram`` and
    ``activation_histogram`` (:func:`histogram`, with the clip range).
    """
    recipe = getattr(qmodel, "lowbit_recipe", None)
    folded = folded_float(float_model)
    float_modules = dict(folded.named_modules())
    modules = dict(qmodel.named_modules())
    layers = {name: m for name, m in modules.items() if isinstance(m, (QuantLinear, QuantConv))}
    if isinstance(qmodel, fx.GraphModule):
        feeders = feeding_modules(qmodel)
        float_names = {name: name for name in layers}
    else:  # quantized layer by layer: each layer became Sequential(ActivationQuantizer, QuantX) under its name
        feeders = {name: modules.get(name[: -len(".1")] + ".0") for name in layers if name.endswith(".1")}
        float_names = {name: name[: -len(".1")] if name.endswith(".1") and name not in float_modules else name
                       for name in layers}
    quantizers = {n: q for n, q in feeders.items() if isinstance(q, ActivationQuantizer)}
    names = list(layers)
    quantized_out = _outputs(qmodel, names, batches)
    float_by_name = _outputs(folded, list(float_names.values()), batches)
    float_out = {name: float_by_name.get(float_names[name], []) for name in names}
    samples = _inputs(quantizers, qmodel, batches)
    rows = []
    for name, layer in layers.items():
        spec = layer.weight_spec
        dequantized = layer.dequantized_weight().detach()
        reference = float_modules.get(float_names[name])
        float_weight = reference.weight.detach() if reference is not None and hasattr(reference, "weight") else None
        weight_range = grid_range(layer.weight_scale, layer.weight_zero_point, spec.qmin, spec.qmax)
        row: dict[str, Any] = {
            "name": name, "kind": "conv" if isinstance(layer, QuantConv) else "linear",
            "shape": list(dequantized.shape), "weight_bits": spec.bits, "granularity": granularity_label(spec.granularity),
            "weight_range": list(weight_range),
            "weight_sqnr_db": (round(float(sqnr(float_weight, dequantized)), 2)
                               if float_weight is not None and float_weight.shape == dequantized.shape else None),
            **_observer_facts(quantizers.get(name)),
        }
        row["output_sqnr_db"] = batched_sqnr(float_out.get(name), quantized_out.get(name))
        row["weight_histogram"] = histogram(float_weight if float_weight is not None else dequantized, weight_range)
        sample = samples.get(name)
        row["activation_histogram"] = (histogram(sample, tuple(row["clip_range"]) if row["clip_range"] else None)
                                       if sample is not None and sample.numel() else None)
        rows.append(row)
    observer = getattr(recipe, "weight_observer", None)
    return {"layers": rows, "weight_observer": getattr(observer, "value", observer)}
