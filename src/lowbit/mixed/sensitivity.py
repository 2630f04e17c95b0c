"""How much each layer suffers at each weight bit width: four measures, each a table over (layer, bits).

Every measure quantizes one layer's weights at a time, exactly as post-training quantization would (the recipe's
spec with its bits replaced, its weight observer, on the BatchNorm-folded model :func:`lowbit.quantize` builds),
while every other layer stays in float32. Each table has the measure's own figure (``values``) and the
``loss`` the allocator minimises: non-negative, smaller is better, and treated as additive over layers.

- ``sqnr``: SQNR in dB of the model's output (docs/math.md M1). Loss: the noise-to-signal power ratio
  ``10^(−SQNR/10)``; independent noises add their powers.
- ``kl``: the mean KL divergence ``KL(softmax(fp32) ‖ softmax(quantized))`` of the outputs (ZeroQ, Cai et al.
  2020); it needs no labels, so zero-shot data (:func:`lowbit.flows.zero_shot.zero_shot_data`) works. Loss: the KL.
- ``hessian``: HAWQ-V2 (Dong et al. 2020): ``Tr(H)/n · ‖Q(W) − W‖²``, the second-order term of the loss change,
  with ``Tr(H)`` of the cross-entropy's Hessian in that layer's weights by Hutchinson's estimator
  (:mod:`lowbit.mixed.hessian`). Labels come with the batches or, without them, are the fp32 model's predictions.
  ``values`` hold ``Tr(H)/n``, one per layer (the same for every bit width).
- ``entropy``: the Shannon entropy in bits of the layer's weight codes. Loss: the fraction of the layer's
  information the codes discard, ``(H₁₆ − H_b)/H₁₆``, against its 16-bit codes. This measure reads weights
  only, with no data.

Example:
    >>> import torch
    >>> from torch import nn
    >>> torch.manual_seed(0)
    <torch._C.Generator object at ...>
    >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    >>> table = sensitivity(model, "sqnr", [torch.randn(32, 8)], bits=(2, 8), recipe="w8")
    >>> list(table.values), table.values["0"][8] > table.values["0"][2] + 20
    (['0', '2'], True)
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from lowbit.analysis.evaluation import call
from lowbit.flows.ptq import quantizable_layers, weight_observer_of, weight_plans
from lowbit.functional.affine import dequantize
from lowbit.mixed.hessian import hutchinson_traces
from lowbit.nn.layers import quantize_weight
from lowbit.recipes import Mode, Recipe, load_recipe
from lowbit.spec import QuantSpec
from lowbit.transforms import fold_bn

__all__ = ["MEASURES", "Subject", "SensitivityTable", "prepare_subject", "sensitivity"]

# The sensitivity measures sensitivity() accepts.
MEASURES = ("sqnr", "kl", "hessian", "entropy")
_REFERENCE_BITS = 16  # the entropy measure's fine grid


@dataclass
class Subject:
    """The model as PTQ quantizes it, and the layers mixed precision chooses bits for.

    Attributes:
        model: the BatchNorm-folded float model (a copy; eval mode).
        specs: layer name → the recipe's weight spec for it (bits as the recipe says).
        candidates: layer name → the bit widths it may take (one, the recipe's, for a fixed first/last layer).
        recipe: the base recipe.
    """

    model: nn.Module
    specs: dict[str, QuantSpec]
    candidates: dict[str, tuple[int, ...]]
    recipe: Recipe

    def layer(self, name: str) -> nn.Module:
        return self.model.get_submodule(name)

    def quantized_weight(self, name: str, bits: int) -> torch.Tensor:
        """Layer ``name``'s weight quantized at ``bits`` and dequantized (float32)."""
        spec = dataclasses.replace(self.specs[name], bits=bits)
        q, qp = quantize_weight(self.layer(name).weight, spec, weight_observer_of(self.recipe))
        return dequantize(q, qp)

    @contextlib.contextmanager
    def swapped(self, name: str, weight: torch.Tensor) -> Iterator[None]:
        """Layer ``name`` computes with ``weight`` inside the block; its own weight is back afterwards."""
        param = self.layer(name).weight
        saved = param.data
        param.data = weight.to(saved.dtype)
        try:
            yield
        finally:
            param.data = saved


def _check_bits(bits: Sequence[int]) -> tuple[int, ...]:
    chosen = tuple(sorted(set(bits)))
    if not chosen or any(isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= 16 for b in chosen):
        raise ValueError(f"bits must be a non-empty list of ints in 2..16, got {list(bits)!r}")
    return chosen


def prepare_subject(model: nn.Module, recipe: str | Recipe, bits: Sequence[int]) -> Subject:
    """Fold ``model`` as :func:`lowbit.quantize` does and list each layer's candidate bit widths.

    The recipe's first and last layers keep ``recipe.first_last_bits`` when it is set; layers the recipe keeps in
    float are not candidates.

    Raises:
        ValueError: bad ``bits``, a recipe without integer weights (fp16/bf16), or a model with no layer to quantize.
    """
    base = load_recipe(recipe)
    chosen = _check_bits(bits)
    if base.mode in (Mode.FP16, Mode.BF16) or base.weight is None:
        raise ValueError(f"mixed precision needs a recipe with integer weights; {base.name!r} is {base.mode.value}")
    work = copy.deepcopy(model).eval()
    try:
        work = fold_bn(work, inplace=True)
    except Exception as err:  # torch.fx raises many kinds of errors; PTQ then also quantizes layer by layer
        warnings.warn(f"mixed precision: the model could not be traced ({type(err).__name__}); BatchNorm is not "
                      "folded", stacklevel=2)
    specs = weight_plans(work, base)
    if not specs:
        raise ValueError(f"the model has no Linear/Conv layer that recipe {base.name!r} quantizes")
    layers = quantizable_layers(work)  # first and last as PTQ counts them, skipped layers included
    ends = {layers[0], layers[-1]} if base.first_last_bits is not None else set()
    candidates = {name: (spec.bits,) if name in ends else chosen for name, spec in specs.items()}
    return Subject(work, specs, candidates, base)


@dataclass(frozen=True)
class SensitivityTable:
    """One measure over (layer, bits): ``values[layer][bits]`` is the measure's figure (``unit``),
    ``loss[layer][bits]`` what the allocator adds up and minimises; ``seconds`` is the time it took."""

    measure: str
    unit: str
    values: dict[str, dict[int, float]]
    loss: dict[str, dict[int, float]]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: infinite figures (a layer its quantization leaves exact) become null."""
        def clean(table: dict[str, dict[int, float]]) -> dict[str, dict[str, float | None]]:
            return {n: {str(b): (v if math.isfinite(v) else None) for b, v in row.items()} for n, row in table.items()}

        return {"measure": self.measure, "unit": self.unit, "seconds": round(self.seconds, 3),
                "values": clean(self.values), "loss": clean(self.loss)}


def _outputs(model: nn.Module, batches: Sequence[Any]) -> list[torch.Tensor]:
    with torch.no_grad():
        outs = []
        for batch in batches:
            out = call(model, _inputs(batch))
            if not isinstance(out, torch.Tensor):
                raise ValueError(f"sensitivity needs a model returning one tensor, got {type(out).__name__}")
            outs.append(out.detach().to(torch.float64))
        return outs


def _inputs(batch: Any) -> Any:
    """The model's input from a batch: a tensor, or the first item of an ``(inputs, labels)`` pair."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], torch.Tensor) \
            and not batch[1].is_floating_point():
        return batch[0]
    return batch


def _per_layer(subject: Subject, batches: Sequence[Any],
               score: Callable[[list[torch.Tensor], list[torch.Tensor]], tuple[float, float]],
               progress: bool) -> tuple[dict[str, dict[int, float]], dict[str, dict[int, float]]]:
    reference = _outputs(subject.model, batches)
    values: dict[str, dict[int, float]] = {}
    loss: dict[str, dict[int, float]] = {}
    for name in _progress(subject.candidates, progress):
        values[name], loss[name] = {}, {}
        for bits in subject.candidates[name]:
            with subject.swapped(name, subject.quantized_weight(name, bits)):
                values[name][bits], loss[name][bits] = score(reference, _outputs(subject.model, batches))
    return values, loss


def _sqnr(reference: list[torch.Tensor], outputs: list[torch.Tensor]) -> tuple[float, float]:
    signal = sum(float(r.square().sum()) for r in reference)
    noise = sum(float((r - o).square().sum()) for r, o in zip(reference, outputs))
    ratio = noise / signal if signal > 0 else (0.0 if noise == 0 else math.inf)
    return (-10 * math.log10(ratio) if ratio > 0 else math.inf), ratio


def _kl(reference: list[torch.Tensor], outputs: list[torch.Tensor]) -> tuple[float, float]:
    total, count = 0.0, 0
    for r, o in zip(reference, outputs):
        p_log, q_log = F.log_softmax(r.flatten(1), 1), F.log_softmax(o.flatten(1), 1)
        total += float((p_log.exp() * (p_log - q_log)).sum())
        count += r.shape[0]
    kl = max(total / count, 0.0)  # ≥ 0 exactly; rounding can leave −1e-17
    return kl, kl


def _entropy_bits(codes: torch.Tensor) -> float:
    counts = torch.unique(codes, return_counts=True)[1].to(torch.float64)
    p = counts / counts.sum()
    return float(-(p * p.log2()).sum())


def _entropy(subject: Subject) -> tuple[dict[str, dict[int, float]], dict[str, dict[int, float]]]:
    values: dict[str, dict[int, float]] = {}
    loss: dict[str, dict[int, float]] = {}
    observer = weight_observer_of(subject.recipe)
    for name, candidates in subject.candidates.items():
        weight = subject.layer(name).weight
        entropy = {b: _entropy_bits(quantize_weight(weight, dataclasses.replace(subject.specs[name], bits=b),
                                                    observer)[0]) for b in (*candidates, _REFERENCE_BITS)}
        reference = entropy[_REFERENCE_BITS]
        values[name] = {b: entropy[b] for b in candidates}
        loss[name] = {b: max(reference - entropy[b], 0.0) / reference if reference > 0 else 0.0 for b in candidates}
    return values, loss


def _hessian(subject: Subject, batches: Sequence[Any], samples: int, seed: int,
             ) -> tuple[dict[str, dict[int, float]], dict[str, dict[int, float]]]:
    model = subject.model
    labelled = list(_labelled(model, batches))

    def cross_entropy(m: nn.Module, pair: tuple[Any, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(call(m, pair[0]), pair[1])

    params = {name: subject.layer(name).weight for name in subject.candidates}
    traces = hutchinson_traces(model, params, labelled, cross_entropy, samples=samples, seed=seed)
    values: dict[str, dict[int, float]] = {}
    loss: dict[str, dict[int, float]] = {}
    for name, candidates in subject.candidates.items():
        weight = params[name].detach()
        mean_trace = traces[name] / weight.numel()
        values[name] = dict.fromkeys(candidates, mean_trace)
        # a trace estimate can come out slightly negative near a saddle; a loss increase cannot be negative here
        loss[name] = {b: max(mean_trace, 0.0) * float((subject.quantized_weight(name, b) - weight).double().square()
                                                        .sum()) for b in candidates}
    return values, loss


def _labelled(model: nn.Module, batches: Sequence[Any]) -> Iterator[tuple[Any, torch.Tensor]]:
    for batch in batches:
        inputs = _inputs(batch)
        if inputs is not batch:
            yield inputs, batch[1]
        else:
            with torch.no_grad():
                yield inputs, call(model, inputs).argmax(-1)


def _progress(items: Iterable[str], enabled: bool) -> Iterable[str]:
    if not enabled:
        return items
    from lowbit.flows.ptq import progress_bar

    return progress_bar(list(items), True, "sensitivity")


def sensitivity(model: nn.Module | Subject, measure: str, batches: Iterable[Any] | None = None,
                bits: Sequence[int] = (2, 3, 4, 6, 8), recipe: str | Recipe = "w8", *, samples: int = 16,
                seed: int = 0, progress: bool = False) -> SensitivityTable:
    """Per-layer sensitivity of ``model`` under ``measure`` for each candidate bit width.

    Args:
        model: a float model (folded here as PTQ folds it) or a :class:`Subject` from :func:`prepare_subject`.
        measure: one of :data:`MEASURES`.
        batches: model inputs, or ``(inputs, labels)`` pairs (labels are read by ``hessian`` only); not needed by
            ``entropy``. A few hundred samples are enough.
        bits: candidate weight bit widths (ignored when ``model`` is a Subject: its candidates hold).
        recipe: the base recipe whose weight spec and observer are used (default ``"w8"``: per-channel, min/max).
        samples: Hutchinson draws per batch (``hessian``).
        seed: seeds the Hutchinson draws.
        progress: a progress bar over the layers on stderr.

    Raises:
        ValueError: unknown measure (listing them), no batches for a measure that needs them, bad ``bits``.
    """
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {', '.join(MEASURES)}, got {measure!r}")
    subject = model if isinstance(model, Subject) else prepare_subject(model, recipe, bits)
    data = list(batches) if batches is not None else []
    if measure != "entropy" and not data:
        raise ValueError(f"the {measure} measure needs batches of model inputs")
    start = time.perf_counter()
    if measure == "sqnr":
        values, loss = _per_layer(subject, data, _sqnr, progress)
    elif measure == "kl":
        values, loss = _per_layer(subject, data, _kl, progress)
    elif measure == "hessian":
        values, loss = _hessian(subject, data, samples, seed)
    else:
        values, loss = _entropy(subject)
    units = {"sqnr": "dB", "kl": "nats", "hessian": "Tr(H)/n", "entropy": "bits per weight"}
    return SensitivityTable(measure, units[measure], values, loss, time.perf_counter() - start)
