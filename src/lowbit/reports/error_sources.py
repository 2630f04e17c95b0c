"""Where a quantized model's error comes from: each source of error enabled alone (issue #13).

The simulation (fake quantization) model is run with one source of error at a time, everything else left in
float, and its output is compared with the float model's (BN-folded, as quantization does) by the SQNR over all
batches. The sources:

- ``input quantization``: only the quantizer on the model's input;
- ``weight quantization``: only the weights (every activation quantizer off);
- ``requantization``: every other activation quantizer rounds to its grid's step, without clamping (the rounding
  an integer kernel's output requantization does);
- ``clipping``: every other activation quantizer clamps to its grid's range, without rounding, but only values
  inside the range calibration observed (the part the observer chose to cut: next to nothing for min/max
  observers, whose grid only rounds the range's ends to the zero point);
- ``saturation``: the same clamp on values outside the observed range (data calibration never showed);
- ``all``: the quantized model as it is.

Requantization, clipping and saturation together are what the activation quantizers do. A source that costs
nothing gives an infinite SQNR. Neither model is changed: the sources are switched with forward hooks and a
temporary weight swap, removed before returning.

Example:
    >>> import torch, lowbit
    >>> torch.manual_seed(0) and None
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval()
    >>> batches = [torch.randn(64, 8)]
    >>> q = lowbit.quantize(model, "w8a8", calibration=batches, progress=False)
    >>> rows = {r["source"]: r["sqnr_db"] for r in error_sources(q, model, batches)}
    >>> rows["clipping"] > 60, rows["weight quantization"] > rows["all"]  # min/max observers cut (almost) nothing
    (True, True)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import fx, nn

from lowbit.analysis.evaluation import call
from lowbit.nn import ActivationQuantizer
from lowbit.nn.layers import QuantConv, QuantLinear
from lowbit.reports.layers import batched_sqnr, folded_float, grid_range, observed_range

__all__ = ["SOURCES", "error_sources"]

SOURCES = ("input quantization", "weight quantization", "requantization", "clipping", "saturation", "all")


def _input_quantizers(qmodel: nn.Module, quantizers: list[ActivationQuantizer]) -> set[int]:
    """ids of the quantizers that read a model input directly (the first one for a model quantized by layer)."""
    if isinstance(qmodel, fx.GraphModule):
        modules = dict(qmodel.named_modules())
        found = {id(modules[n.target]) for n in qmodel.graph.nodes if n.op == "call_module"
                 and isinstance(modules.get(n.target), ActivationQuantizer)
                 and any(isinstance(a, fx.Node) and a.op == "placeholder" for a in n.args)}
        if found:
            return found
    return {id(quantizers[0])} if quantizers else set()


def _behaviour(q: ActivationQuantizer, mode: str):
    """The output a quantizer gives in ``mode``: ``off``, ``full``, ``round``, ``clip`` or ``saturate``."""
    if mode == "full":
        return None
    if mode == "off" or q.scale.numel() != 1:
        return lambda x: x  # per-channel activation grids are left out of the split (rare)
    qp = q.qparams()
    step = float(qp.scale.reshape(-1)[0])
    lo, hi = grid_range(qp.scale, qp.zero_point, q.spec.qmin, q.spec.qmax)
    # no statistics kept: treat the grid's range as what calibration saw
    seen_lo, seen_hi = observed_range(q) or (lo, hi)

    def apply(x: torch.Tensor) -> torch.Tensor:
        if mode == "round":
            return torch.round(x / step) * step
        inside = (x >= seen_lo) & (x <= seen_hi)
        clamped = x.clamp(lo, hi)
        return torch.where(inside, clamped, x) if mode == "clip" else torch.where(inside, x, clamped)

    return apply


@contextlib.contextmanager
def _switched(qmodel: nn.Module, float_weights: dict[str, torch.Tensor], quantize_weights: bool,
              input_mode: str, other_mode: str) -> Iterator[None]:
    quantizers = [m for m in qmodel.modules() if isinstance(m, ActivationQuantizer) and m.frozen and not m.bypass]
    inputs = _input_quantizers(qmodel, quantizers)
    handles = []
    for q in quantizers:
        behaviour = _behaviour(q, input_mode if id(q) in inputs else other_mode)
        if behaviour is not None:
            handles.append(q.register_forward_hook(lambda m, args, out, f=behaviour: f(args[0])))
    swapped = []
    if not quantize_weights:
        for name, layer in qmodel.named_modules():
            if isinstance(layer, (QuantLinear, QuantConv)) and name in float_weights:
                layer.dequantized_weight = lambda w=float_weights[name]: w  # instance attribute shadows the method
                swapped.append(layer)
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for layer in swapped:
            del layer.dequantized_weight


def _outputs(model: nn.Module, batches) -> list[torch.Tensor]:
    with torch.no_grad():
        return [call(model, batch).detach() for batch in batches]


def error_sources(qmodel: nn.Module, float_model: nn.Module, batches) -> list[dict[str, Any]]:
    """``[{"source", "sqnr_db"}]`` for :data:`SOURCES`: the model output's SQNR against the float model's with
    that source of error alone (module docstring). The model outputs must be tensors (logits, embeddings)."""
    folded = folded_float(float_model)
    float_modules = dict(folded.named_modules())
    float_weights = {}
    for name, layer in qmodel.named_modules():
        if isinstance(layer, (QuantLinear, QuantConv)):
            source = float_modules.get(name) or float_modules.get(name.removesuffix(".1"))
            if source is not None and getattr(source, "weight", None) is not None:
                if source.weight.shape == layer.weight_q.shape:
                    float_weights[name] = source.weight.detach()
    reference = _outputs(folded, batches)
    settings = {"input quantization": (False, "full", "off"), "weight quantization": (True, "off", "off"),
                "requantization": (False, "off", "round"), "clipping": (False, "off", "clip"),
                "saturation": (False, "off", "saturate")}
    rows = []
    for source, (weights, input_mode, other_mode) in settings.items():
        with _switched(qmodel, float_weights, weights, input_mode, other_mode):
            rows.append({"source": source, "sqnr_db": batched_sqnr(reference, _outputs(qmodel, batches))})
    rows.append({"source": "all", "sqnr_db": batched_sqnr(reference, _outputs(qmodel, batches))})
    return rows
