"""``lowbit.quantize``: post-training quantization of a trained model, as one verb.

Steps: trace the model (``torch.fx``), fold BatchNorm, swap Linear/Conv1d/Conv2d for layers with integer
weights per the recipe, place activation quantizers on the tensor edges (:mod:`lowbit.flows.placement`),
calibrate them on the given batches, freeze. Models that cannot be traced (e.g. Hugging Face transformers) are
quantized layer by layer instead: each Linear/Conv quantizes its own input, and "first" and "last" layer mean
first and last declared (the order of execution is unknown without a trace). The user's model is never modified
unless ``inplace=True``.

Example:
    >>> import torch, lowbit
    >>> torch.manual_seed(0) and None
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval()
    >>> batches = [torch.randn(32, 8) for _ in range(4)]
    >>> qmodel = lowbit.quantize(model, "w8a8", calibration=batches, progress=False)
    >>> x = batches[0]                  # inside the calibrated ranges (fresh samples may saturate)
    >>> lowbit.analysis.sqnr(model(x), qmodel(x)) > 35
    True
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from lowbit.analysis.evaluation import call
from lowbit.flows.placement import input_scales, mark_sign_outputs, place_quantizers
from lowbit.nn.activation import ActivationQuantizer
from lowbit.nn.cast import CastModel
from lowbit.nn.layers import QuantConv, QuantLinear, WeightObserver
from lowbit.observers import (
    ACIQObserver,
    EntropyObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    Observer,
    PercentileObserver,
)
from lowbit.flows.rounding import float_weights, learn_rounding
from lowbit.recipes import Mode, ObserverKind, Recipe, WeightRounding, load_recipe
from lowbit.functional.affine import qparam_shape
from lowbit.spec import PerChannel, PerGroup, QuantSpec
from lowbit.transforms import BiasCorrection, absorb_bias, correct_bias, equalize
from lowbit.transforms.smooth_quant import apply_smoothing, smooth_quant
from lowbit.transforms.split_outliers import apply_splits, split_outliers
from lowbit.transforms.fold_bn import fold_bn, modules_called_once, replace_module

__all__ = ["quantize", "prepare", "QuantizationSummary", "make_observer", "calibrate", "bind_accumulator_bias",
           "weight_plans", "weight_observer_of", "quantizable_layers"]

_OBSERVERS = {
    ObserverKind.MINMAX: MinMaxObserver,
    ObserverKind.MOVING_AVERAGE: MovingAverageMinMaxObserver,
    ObserverKind.PERCENTILE: PercentileObserver,
    ObserverKind.ENTROPY: EntropyObserver,
    ObserverKind.MSE: MSEObserver,
    ObserverKind.ACIQ: ACIQObserver,
}
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


@dataclass
class QuantizationSummary:
    """What :func:`quantize` did: the recipe, quantized layers with their bits, and what stayed float."""

    recipe: str
    mode: str
    graph: bool
    quantized: dict[str, int] = field(default_factory=dict)
    activation_quantizers: int = 0
    float_layers: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    transforms: list[str] = field(default_factory=list)  # what the recipe's transforms changed, one line each
    smoothed: list[str] = field(default_factory=list)  # layers SmoothQuant put a ChannelScale in front of
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)  # consumer → {"producer", "channels"} (OCS)


def make_observer(kind: ObserverKind, spec: QuantSpec, options: dict[str, Any] | None = None) -> Observer:
    """An observer of ``kind`` for ``spec`` (options passed to its constructor)."""
    return _OBSERVERS[kind](spec, **(options or {}))


def _weight_observer(kind: ObserverKind) -> WeightObserver:
    if kind not in (ObserverKind.MINMAX, ObserverKind.MSE):
        raise ValueError(f"Recipe.weight_observer must be minmax or mse for weights, got {kind.value}")
    return WeightObserver(kind.value)


def _layer_names(model: nn.Module) -> list[str]:
    """Linear/Conv layers to quantize, in first-use order for a traced graph (declaration order otherwise).

    In a graph only layers called as modules qualify: a layer inside another leaf module (e.g. the projection of
    ``nn.MultiheadAttention``) or one whose weight the graph reads directly (tied weights) stays float.
    """
    if not isinstance(model, fx.GraphModule):
        return [name for name, m in model.named_modules() if isinstance(m, _LAYERS)]
    return [t for t in modules_called_once(model) if isinstance(model.get_submodule(t), _LAYERS)]


def _plans(root: nn.Module, recipe: Recipe) -> dict[str, Any]:
    names = _layer_names(root)
    return {name: recipe.plan(name, first=i == 0, last=i == len(names) - 1) for i, name in enumerate(names)}


def weight_plans(root: nn.Module, recipe: Recipe) -> dict[str, QuantSpec]:
    """The weight spec each Linear/Conv layer of ``root`` gets under ``recipe`` (first/last-layer bits, overrides
    and per-group fallback applied), in first-use order; layers the recipe keeps in float are left out.

    ``root`` is the model as the swap sees it: :func:`lowbit.transforms.fold_bn`'s graph when it can be traced.
    """
    return {name: _fit_groups(plan.weight, root.get_submodule(name).weight.shape, name, None)
            for name, plan in _plans(root, recipe).items() if not plan.skip and plan.weight is not None}


def quantizable_layers(root: nn.Module) -> list[str]:
    """The Linear/Conv layers a recipe can quantize, in first-use order (the first and last are those a recipe's
    ``first_last_bits`` applies to, whether or not the recipe skips them)."""
    return _layer_names(root)


def weight_observer_of(recipe: Recipe) -> WeightObserver:
    """The weight observer ``recipe`` names (min/max or MSE; others are errors naming the field)."""
    return _weight_observer(recipe.weight_observer)


def _swap_layers(root: nn.Module, recipe: Recipe, summary: QuantizationSummary, wrap_input: bool) -> None:
    plans = _plans(root, recipe)
    observer = _weight_observer(recipe.weight_observer)
    for name, module in root.named_modules():
        if isinstance(module, _LAYERS) and name not in plans and name:
            summary.float_layers.append(f"{name} ({type(module).__name__}, not called as a module)")
    for i, (name, plan) in enumerate(plans.items()):
        layer = root.get_submodule(name)
        if plan.skip or plan.weight is None:
            summary.float_layers.append(f"{name} ({type(layer).__name__}, skipped by recipe)")
            continue
        factory = QuantLinear if isinstance(layer, nn.Linear) else QuantConv
        spec = _fit_groups(plan.weight, layer.weight.shape, name, summary)
        try:
            new: nn.Module = factory.from_float(layer, spec, observer)
        except ValueError as err:
            raise ValueError(f"layer {name!r}: {err}") from None
        if wrap_input and recipe.mode in (Mode.STATIC, Mode.DYNAMIC):
            quantizer = _activation_quantizer(recipe, plan.activation, f"input of {name}", model_input=i == 0)
            new = nn.Sequential(quantizer, new)
        replace_module(root, name, new)
        summary.quantized[name] = spec.bits


def _fit_groups(spec: QuantSpec, shape: torch.Size, name: str, summary: QuantizationSummary | None) -> QuantSpec:
    """Per-group specs fall back to per-channel on layers whose channels the group size does not divide."""
    if not isinstance(spec.granularity, PerGroup):
        return spec
    try:
        qparam_shape(shape, spec.granularity)
        return spec
    except ValueError:
        if summary is not None:  # None: the caller only needs the spec (the swap notes it later)
            summary.notes.append(f"{name}: group size {spec.granularity.size} does not divide its channels; "
                                 "per-channel")
        return dataclasses.replace(spec, granularity=PerChannel(spec.granularity.axis))


def _activation_quantizer(recipe: Recipe, spec: QuantSpec | None, label: str, model_input: bool = False,
                          ) -> ActivationQuantizer:
    spec = spec or recipe.activation
    assert spec is not None
    dynamic = recipe.mode is Mode.DYNAMIC
    kind = recipe.input_observer if model_input else recipe.activation_observer
    options = recipe.observer_options if kind is recipe.activation_observer else {}
    observer = None if dynamic else make_observer(kind, spec, options)
    return ActivationQuantizer(spec, observer, dynamic=dynamic, label=label, per_token=recipe.per_token)


def _edge_spec(node: fx.Node, plans: dict[str, Any], recipe: Recipe) -> QuantSpec | None:
    """The activation spec of an edge: its producing layer's plan (through a fused ReLU), else the plan of the
    first layer that consumes it, else the recipe's."""
    source = node.args[0] if node.op == "call_module" and node.target not in plans and node.args else node
    if isinstance(source, fx.Node) and source.op == "call_module" and source.target in plans:
        return plans[source.target].activation
    for user in node.users:
        if user.op == "call_module" and user.target in plans:
            return plans[user.target].activation
    return recipe.activation


def _insert_quantizers(gm: fx.GraphModule, recipe: Recipe, summary: QuantizationSummary,
                       plans: dict[str, Any], make: Callable[..., nn.Module] | None = None) -> None:
    """Put a quantizer after every edge :func:`place_quantizers` chooses, named ``act_quant_{i}`` in that order.

    ``make(recipe, spec, label, model_input=…)`` builds each one (default: an :class:`ActivationQuantizer`); QAT
    passes its trainable quantizers, so a converted QAT model has the names and edges of a PTQ one."""
    make = make or _activation_quantizer
    placement = place_quantizers(gm, dynamic=recipe.mode is Mode.DYNAMIC, quantize_output=recipe.quantize_output)
    for i, node in enumerate(placement.after):
        name = f"act_quant_{i}"
        quantizer = make(recipe, _edge_spec(node, plans, recipe), f"output of {node.name}",
                         model_input=node.op == "placeholder")
        gm.add_submodule(name, quantizer)
        with gm.graph.inserting_after(node):
            q = gm.graph.call_module(name, (node,))
        node.replace_all_uses_with(q, delete_user_cb=lambda user, q=q: user is not q)
    summary.activation_quantizers = len(placement.after)
    summary.float_layers += placement.float_modules
    gm.graph.lint()
    gm.recompile()


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Any], progress: bool = True) -> int:
    """Run ``batches`` through ``model`` with every static :class:`ActivationQuantizer` observing, then freeze.

    Returns:
        The number of batches seen.

    Raises:
        ValueError: no batches, a batch of the wrong kind, or bad activations (NaN/Inf) — naming the batch and edge.
    """
    quantizers = [m for m in model.modules() if isinstance(m, ActivationQuantizer) and not m.dynamic]
    for q in quantizers:
        q.calibrating = True
    seen = 0
    try:
        for seen, batch in enumerate(progress_bar(batches, progress), start=1):
            try:
                call(model, batch)
            except (ValueError, RuntimeError) as err:  # torch reports wrong input shapes as RuntimeError
                raise ValueError(f"calibration batch {seen} ({_describe(batch)}): {err}") from err
    finally:
        for q in quantizers:
            q.calibrating = False
    if seen == 0:
        raise ValueError("calibration got no batches: pass a non-empty iterable of inputs")
    unused = [q.label for q in quantizers if q.observer is not None and int(q.observer.batches) == 0]
    if unused:
        warnings.warn("lowbit.calibrate: no tensor reached " + ", ".join(unused) + "; left unquantized",
                      stacklevel=2)
    for q in quantizers:
        if q.observer is not None and int(q.observer.batches) == 0:
            q.bypass = True
        else:
            q.freeze()
    bind_accumulator_bias(model)
    return seen


def bind_accumulator_bias(model: nn.Module) -> None:
    """Put every layer's bias on its accumulator grid ``s_x · s_w`` where its input's frozen scale is known, as
    integer execution adds it (:meth:`lowbit.nn.layers.QuantConv.bind_input_scale`)."""
    scales = input_scales(model)
    for name, module in model.named_modules():
        if isinstance(module, (QuantConv, QuantLinear)):
            module.bind_input_scale(scales.get(name))
    if isinstance(model, fx.GraphModule):
        mark_sign_outputs(model)


def _describe(batch: Any) -> str:
    if isinstance(batch, torch.Tensor):
        return f"shape {tuple(batch.shape)}"
    if isinstance(batch, dict):
        return ", ".join(f"{k}: {_describe(v)}" for k, v in batch.items())
    if isinstance(batch, (tuple, list)):
        return ", ".join(_describe(v) for v in batch)
    return type(batch).__name__


def progress_bar(batches: Iterable[Any], enabled: bool, description: str = "calibrating") -> Iterable[Any]:
    """``batches`` with a transient rich progress bar on stderr when ``enabled``."""
    if not enabled:
        yield from batches
        return
    from rich.console import Console
    from rich.progress import Progress

    total = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        for batch in batches:
            yield batch
            bar.advance(task)


def prepare(model: nn.Module, recipe: str | Recipe = "w8a8", *, inplace: bool = False,
            calibration: Iterable[Any] | None = None, weights_follow: bool = False) -> nn.Module:
    """Everything :func:`quantize` does except calibration: the recipe's transforms, integer weights in place,
    activation quantizers placed but not yet frozen (static recipes then need :func:`calibrate`).

    Args:
        calibration: batches for empirical bias correction (``recipe.transforms.correct_bias="empirical"``) and
            SmoothQuant (``recipe.transforms.smoothquant``).
        weights_follow: the weights will be loaded afterwards (:func:`lowbit.load_quantized`): apply only the
            structural part of the transforms (ReLU6 → ReLU), not the bias correction, which needs the real weights.

    Raises:
        ValueError: unknown recipe, a layer the recipe's weight spec cannot quantize, transforms on a model that
            cannot be traced, or empirical bias correction without calibration batches.
    """
    return _prepare(model, load_recipe(recipe), inplace, calibration, weights_follow)[0]


def _prepare(model: nn.Module, recipe: Recipe, inplace: bool, calibration: Iterable[Any] | None,
             weights_follow: bool, smoothed: list[str] | None = None, splits: dict[str, Any] | None = None,
             ) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """:func:`prepare`, also returning the float weights just before the swap when learned rounding needs them.

    ``smoothed`` / ``splits``: with ``weights_follow``, the layers SmoothQuant and outlier splitting changed when
    the model was saved (their structure is rebuilt; the values come with the weights)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"quantize needs an nn.Module, got {type(model).__name__}")
    work = model if inplace else copy.deepcopy(model)
    work.eval()
    if recipe.mode in (Mode.FP16, Mode.BF16):
        result: nn.Module = CastModel(work, torch.float16 if recipe.mode is Mode.FP16 else torch.bfloat16)
        result.quantization_summary = QuantizationSummary(recipe.name, recipe.mode.value, False)  # type: ignore[assignment]
        result.lowbit_recipe = recipe  # type: ignore[assignment]
        return result, {}
    try:
        result = fold_bn(work, inplace=True)  # work is already ours (a copy, or the user's with inplace=True)
        graph = True
    except Exception as err:  # torch.fx raises many kinds of errors on untraceable code
        warnings.warn(
            f"lowbit.quantize: the model could not be traced ({type(err).__name__}: {str(err)[:120]}); quantizing "
            "layer by layer — residual adds and concats are not quantized and BatchNorm is not folded",
            stacklevel=3,
        )
        result, graph = work, False
    summary = QuantizationSummary(recipe.name, recipe.mode.value, graph)
    if recipe.transforms.needs_graph and not graph:
        raise ValueError("the recipe's transforms (equalize, absorb_bias, correct_bias, split_outliers) need a "
                         "model torch.fx "
                         "can trace; this one cannot be traced")
    if recipe.transforms.any:
        result = _apply_transforms(result, recipe, summary, calibration, weights_follow, smoothed, splits)
    plans = _plans(result, recipe)
    learned = recipe.weight_rounding is not WeightRounding.NEAREST and not weights_follow
    reference = float_weights(result) if learned else {}
    _swap_layers(result, recipe, summary, wrap_input=not graph)
    if graph and recipe.mode in (Mode.STATIC, Mode.DYNAMIC):
        quantized = {k: v for k, v in plans.items() if k in summary.quantized}
        _insert_quantizers(result, recipe, summary, quantized)  # type: ignore[arg-type]
    if summary.float_layers:
        warnings.warn("lowbit.quantize: kept in float: " + ", ".join(summary.float_layers), stacklevel=3)
    result.quantization_summary = summary  # type: ignore[assignment]
    result.lowbit_recipe = recipe  # type: ignore[assignment]
    return result, reference


def _apply_transforms(gm: nn.Module, recipe: Recipe, summary: QuantizationSummary,
                      calibration: Iterable[Any] | None, weights_follow: bool,
                      smoothed: list[str] | None, splits: dict[str, Any] | None) -> nn.Module:
    """The recipe's float transforms on the folded graph (SmoothQuant also on an untraced model), each
    summarised in ``summary.transforms``."""
    steps = recipe.transforms
    if steps.equalize:
        gm, eq = equalize(gm, relu6="relu" if steps.relu6_to_relu else "skip", inplace=True)
        summary.transforms.append(f"equalize: {len(eq.pairs)} pairs in {eq.sweeps} sweeps"
                                  + (f", ReLU6 → ReLU at {len(eq.relu6_replaced)}" if eq.relu6_replaced else "")
                                  + (f", {len(eq.skipped)} layers not in a pair" if eq.skipped else ""))
    if steps.absorb_bias:
        gm, absorbed = absorb_bias(gm)
        summary.transforms.append(f"absorb_bias: {sum(absorbed.absorbed.values())} channels in "
                                  f"{len(absorbed.absorbed)} layers, {len(absorbed.skipped)} pairs skipped")
    if steps.split_outliers is not None:
        if weights_follow:
            for consumer, plan in (splits or {}).items():
                apply_splits(gm, plan["producer"], consumer, list(plan["channels"]))
            gm.recompile()
            summary.splits = dict(splits or {})
        else:
            gm, split = split_outliers(gm, steps.split_outliers, inplace=True)
            summary.splits = {c: {"producer": split.producers[c], "channels": ch} for c, ch in split.split.items()}
            summary.transforms.append(f"split_outliers: {sum(map(len, split.split.values()))} channels in "
                                      f"{len(split.split)} layers, {len(split.skipped)} left")
    if steps.correct_bias is not None and not weights_follow:
        if steps.correct_bias is BiasCorrection.EMPIRICAL and calibration is None:
            raise ValueError("recipe: transforms.correct_bias 'empirical' needs calibration batches")
        specs: dict[str, QuantSpec | None] = {}
        for name, plan in _plans(gm, recipe).items():
            specs[name] = None if plan.skip or plan.weight is None else _fit_groups(
                plan.weight, gm.get_submodule(name).weight.shape, name, None)
        gm, corrected = correct_bias(gm, specs, mode=steps.correct_bias,
                                     observer=_weight_observer(recipe.weight_observer), calibration=calibration)
        left = f", {len(corrected.skipped)} left ({'; '.join(corrected.skipped[:2])})" if corrected.skipped else ""
        summary.transforms.append(f"correct_bias ({steps.correct_bias.value}): {len(corrected.corrected)} layers"
                                  + left)
    if steps.smoothquant is not None:
        if weights_follow:
            gm = apply_smoothing(gm, list(smoothed or []))
            summary.smoothed = list(smoothed or [])
        else:
            if calibration is None:
                raise ValueError("recipe: transforms.smoothquant needs calibration batches")
            gm, smooth = smooth_quant(gm, calibration, steps.smoothquant, include=steps.smoothquant_include,
                                      exclude=steps.smoothquant_exclude, inplace=True)
            summary.smoothed = list(smooth.layers)
            worst = max(smooth.outlier_ratio.values(), key=lambda r: r[0])
            summary.transforms.append(f"smoothquant (alpha {steps.smoothquant}): {len(smooth.layers)} layers, "
                                      f"largest input outlier ratio {worst[0]:.0f} → {worst[1]:.0f}")
    return gm


def quantize(model: nn.Module, recipe: str | Recipe = "w8a8", calibration: Iterable[Any] | None = None, *,
             inplace: bool = False, progress: bool = True) -> nn.Module:
    """Quantize a trained ``model`` after training; returns a module with the same call signature.

    Args:
        model: an ``nn.Module`` in eval mode (it is put in eval mode).
        recipe: a preset name (``"w8a8"``, ``"w4-g128"``, …), a ``.yaml``/``.json`` file or a :class:`Recipe`.
        calibration: batches for static activation ranges — tensors, tuples of inputs, or dicts of keyword
            inputs (e.g. a tokenizer's output). Required for static recipes.
        inplace: reuse ``model``'s memory instead of copying it first (the model is then changed).
        progress: show a progress bar on stderr while calibrating.

    Returns:
        The quantized model; ``model.quantization_summary`` (:class:`QuantizationSummary`) says what was done.

    Raises:
        ValueError: unknown recipe, a static recipe without calibration data, or bad calibration data.
    """
    recipe = load_recipe(recipe)
    learned = recipe.weight_rounding is not WeightRounding.NEAREST
    if calibration is None and (recipe.mode is Mode.STATIC or learned):
        why = "is static" if recipe.mode is Mode.STATIC else f"learns its rounding ({recipe.weight_rounding.value})"
        raise ValueError(f"recipe {recipe.name!r} {why}: pass calibration=batches (a few hundred samples)")
    reread = recipe.transforms.correct_bias is BiasCorrection.EMPIRICAL or recipe.transforms.smoothquant is not None
    if calibration is not None and (reread or learned):
        calibration = list(calibration)  # read more than once: a transform or rounding, and calibration
    result, reference = _prepare(model, recipe, inplace, calibration, False)
    if recipe.mode is Mode.STATIC:
        assert calibration is not None
        calibrate(result, calibration, progress)
    if learned:
        assert calibration is not None
        rounded = learn_rounding(result, reference, calibration, recipe.weight_rounding, recipe.rounding_options,
                                 progress)
        result.quantization_summary.transforms.append(  # type: ignore[union-attr]
            f"rounding ({rounded.method}): {len(rounded.layers)} layers, layer-output error "
            f"{rounded.error_ratio:.2f}× round-to-nearest's")
    return result
