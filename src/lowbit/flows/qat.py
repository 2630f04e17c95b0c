"""``lowbit.qat``: quantization-aware training — prepare a model, train it with any loop, convert it.

:func:`prepare` traces the model, puts a :class:`~lowbit.nn.qat_layers.QATLayer` (fake-quantized weight, the
following BatchNorm folded as in the whitepaper) where PTQ would put an integer layer, and a trainable activation
quantizer on every edge PTQ would quantize — the same names, the same edges, the same recipe (first/last-layer
precision, overrides) — then initialises the quantizers from calibration batches. Train it with
:func:`lowbit.qat.fit` or your own loop (add :func:`regularization` to the loss for PACT). :func:`convert` returns
the frozen model with integer weights and fixed activation qparams that the integer engine, ONNX export and
``save_quantized`` take — computing what the trained model computes in eval mode.

Example:
    >>> import torch, lowbit
    >>> torch.manual_seed(0) and None
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    >>> batches = [torch.randn(32, 8) for _ in range(4)]
    >>> qat_model = prepare(model, "w4a4", "lsq", calibration=batches)
    >>> loss = qat_model(batches[0]).square().mean(); loss.backward()       # any training loop
    >>> frozen = convert(qat_model)          # same values up to the bias on the integer accumulator's grid
    >>> bool(lowbit.analysis.sqnr(qat_model.eval()(batches[1]), frozen(batches[1])) > 30)
    True
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import fx, nn
from torch.nn import functional as F

from lowbit.analysis.evaluation import call
from lowbit.flows.ptq import (
    QuantizationSummary,
    _activation_quantizer,
    _fit_groups,
    _insert_quantizers,
    _plans,
    bind_accumulator_bias,
    progress_bar,
)
from lowbit.flows.placement import feeding_modules, keeps_grid, mark_sign_outputs
from lowbit.flows.qat_config import BINARY_KINDS, QATConfig
from lowbit.nn.binary_quant import (
    BinaryWeightQuantizer,
    FiveLevelWeightQuantizer,
    SignActivationQuantizer,
    SignQuantizer,
    TernaryWeightQuantizer,
    TTQWeightQuantizer,
    clip_latent_weights,
)
from lowbit.nn.fake_quant import (
    ActivationFakeQuantizer,
    DoReFaActivationQuantizer,
    DoReFaWeightQuantizer,
    LSQActivationQuantizer,
    LSQWeightQuantizer,
    PACTActivationQuantizer,
    QuantizerKind,
    STEActivationQuantizer,
    STEWeightQuantizer,
    WeightFakeQuantizer,
)
from lowbit.nn.qat_layers import QATLayer
from lowbit.recipes import Mode, Override, Recipe, WeightRounding, load_recipe
from lowbit.spec import PerTensor, QuantSpec
from lowbit.transforms.fold_bn import fold_bn_into, modules_called_once, replace_module

__all__ = ["QATConfig", "prepare", "initialize", "convert", "freeze_bn", "set_bits", "enable", "regularization",
           "QuantizerKind", "clip_latent_weights"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
def _weight_quantizer(kind: QuantizerKind, spec: QuantSpec, weight: torch.Tensor, config: QATConfig,
                      ) -> WeightFakeQuantizer:
    if kind is QuantizerKind.BNN:
        return BinaryWeightQuantizer(scaled=False, stochastic=config.stochastic)
    if kind in (QuantizerKind.XNOR, QuantizerKind.BWN):
        return BinaryWeightQuantizer(scaled=True)
    if kind is QuantizerKind.TWN:
        return TernaryWeightQuantizer()
    if kind is QuantizerKind.FIVE_LEVEL:
        return FiveLevelWeightQuantizer()
    if kind is QuantizerKind.TTQ:
        return TTQWeightQuantizer(weight)
    if kind is QuantizerKind.LSQ:
        return LSQWeightQuantizer(spec, weight)
    if kind is QuantizerKind.DOREFA:
        return DoReFaWeightQuantizer(spec)
    return STEWeightQuantizer(spec)


def _activation_factory(config: QATConfig) -> Callable[..., nn.Module]:
    def make(recipe: Recipe, spec: QuantSpec | None, label: str, model_input: bool = False) -> nn.Module:
        spec = spec or recipe.activation
        assert spec is not None
        kind = config.activation_quantizer
        if kind is QuantizerKind.SIGN:  # binary edges; the 8-bit edges of first and last layers observe ranges
            return SignActivationQuantizer(spec, label) if spec.bits <= 2 else STEActivationQuantizer(
                spec, label, config.momentum)
        if kind is QuantizerKind.LSQ:
            return LSQActivationQuantizer(spec, label)
        if kind is QuantizerKind.PACT:
            return PACTActivationQuantizer(spec, label, decay=config.pact_decay)
        if kind is QuantizerKind.DOREFA:
            return DoReFaActivationQuantizer(spec, label, config.momentum)
        return STEActivationQuantizer(spec, label, config.momentum)

    return make


def _bn_after(gm: fx.GraphModule) -> dict[str, fx.Node]:
    """Layer name → the BatchNorm node that alone reads its output (the pairs :func:`~lowbit.transforms.fold_bn`
    folds)."""
    modules = dict(gm.named_modules())
    once = set(modules_called_once(gm))
    pairs = {}
    for node in gm.graph.nodes:
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, _BN) or bn.running_var is None:  # no running statistics: nothing to fold (as PTQ)
            continue
        producer = node.args[0]
        if isinstance(producer, fx.Node) and producer.op == "call_module" and len(producer.users) == 1 \
                and producer.target in once and isinstance(modules.get(producer.target), (nn.Linear, nn.Conv1d, nn.Conv2d)):
            pairs[str(producer.target)] = node
    return pairs


def _check_recipe(recipe: Recipe, config: QATConfig) -> None:
    if recipe.mode not in (Mode.STATIC, Mode.WEIGHT_ONLY):
        raise ValueError(f"QAT trains static or weight-only recipes, got recipe {recipe.name!r} with mode "
                         f"{recipe.mode.value}")
    if recipe.transforms.any or recipe.weight_rounding is not WeightRounding.NEAREST:
        raise ValueError(f"recipe {recipe.name!r}: transforms and learned rounding are post-training steps; "
                         "QAT trains the weights instead")
    if recipe.mode is Mode.STATIC:
        _check_edge_spec(recipe.activation, config, "Recipe.activation")


def _check_edge_spec(spec: QuantSpec | None, config: QATConfig, where: str) -> None:
    """LSQ, PACT and DoReFa grids are stored as an asymmetric, full-range, per-tensor grid with an integer zero
    point; other activation specs cannot hold them."""
    if spec is None or config.activation_quantizer in (QuantizerKind.STE, QuantizerKind.SIGN):
        return
    if spec.symmetric or spec.narrow_range or not isinstance(spec.granularity, PerTensor):
        raise ValueError(f"{where}: {config.activation_quantizer.value} activations need an asymmetric per-tensor "
                         f"spec without narrow range (their signed or unsigned grid becomes its integer zero point), "
                         f"got {spec!r}")


def prepare(model: nn.Module, recipe: str | Recipe | None = None, quantizer: str | QuantizerKind | QATConfig = "lsq", *,
            calibration: Iterable[Any] | None = None, inplace: bool = False, progress: bool = False,
            ) -> fx.GraphModule:
    """A trainable copy of ``model`` with fake quantizers for ``recipe``, initialised from ``calibration``.

    Args:
        model: a trained float model (traceable by ``torch.fx``).
        recipe: a preset (``"w4a4"``, ``"w2a2"``, …), a recipe file or a :class:`Recipe` (static or weight-only);
            None: the quantizer's default (:meth:`QATConfig.default_recipe`: ``w4a4``, or binary/ternary weights
            with 8-bit first and last layers).
        quantizer: ``"ste"``, ``"lsq"``, ``"pact"``, ``"dorefa"``, a binary/ternary rule (``"bnn"``, ``"xnor"``,
            ``"bwn"``, ``"twn"``, ``"ttq"``, ``"five-level"``; :mod:`lowbit.nn.binary_quant`) or a
            :class:`QATConfig`.
        calibration: batches that initialise the activation quantizers (LSQ steps, PACT clips, STE ranges).
        inplace: reuse ``model``'s memory (it is then changed).
        progress: a progress bar while initialising.

    Returns:
        A ``torch.fx.GraphModule`` in training mode, carrying ``lowbit_recipe`` and ``lowbit_qat``.

    Raises:
        ValueError: a recipe QAT cannot train, an untraceable model, or a static recipe without calibration.
    """
    config = quantizer if isinstance(quantizer, QATConfig) else QATConfig.for_quantizer(quantizer)
    recipe = config.default_recipe() if recipe is None else load_recipe(recipe)
    _check_recipe(recipe, config)
    if recipe.mode is Mode.STATIC and calibration is None:
        raise ValueError(f"recipe {recipe.name!r} is static: pass calibration=batches to initialise the activation "
                         "quantizers")
    if not isinstance(model, nn.Module):
        raise ValueError(f"qat.prepare needs an nn.Module, got {type(model).__name__}")
    work = model if inplace else copy.deepcopy(model)
    try:
        gm = fx.symbolic_trace(work)
    except Exception as err:  # torch.fx raises many kinds of errors on untraceable code
        raise ValueError(f"QAT needs a model torch.fx can trace ({type(err).__name__}: {str(err)[:120]})") from None
    summary = QuantizationSummary(recipe.name, "qat", True)
    plans, pairs = _plans(gm, recipe), _bn_after(gm)
    quantized = {}
    for name, plan in plans.items():
        layer = gm.get_submodule(name)
        bn_node = pairs.get(name)
        bn = gm.get_submodule(bn_node.target) if bn_node is not None else None
        if plan.skip or plan.weight is None:
            summary.float_layers.append(f"{name} ({type(layer).__name__}, skipped by recipe)")
            if bn_node is not None:  # folded, as PTQ folds it: the converted model has PTQ's structure
                replace_module(gm, name, fold_bn_into(layer, bn))
                bn_node.replace_all_uses_with(bn_node.args[0])
                gm.graph.erase_node(bn_node)
            continue
        _check_edge_spec(plan.activation if recipe.mode is Mode.STATIC else None, config, f"layer {name}")
        spec = _fit_groups(plan.weight, layer.weight.shape, name, summary)
        start = layer.weight
        if bn is not None:  # LSQ starts from the folded weight it will quantize (DoReFa ignores the start)
            start = fold_bn_into(layer, bn).weight.detach()
        kind = config.weight_quantizer
        if (kind is QuantizerKind.DOREFA and spec.bits >= 8) or (kind in BINARY_KINDS and spec.bits > 3):
            # DoReFa and the binary rules keep first and last layers out of their low-bit rule; at 8 bits the
            # min/max grid serves them (a DoReFa 8-bit weight would need a 9-bit grid)
            kind = QuantizerKind.STE
        weight_quantizer = _weight_quantizer(kind, spec, layer.weight if kind in BINARY_KINDS else start, config)
        replace_module(gm, name, QATLayer(layer, weight_quantizer, bn, config.gradient_bits))
        if bn_node is not None:
            bn_node.replace_all_uses_with(bn_node.args[0])
            gm.graph.erase_node(bn_node)
        summary.quantized[name] = spec.bits
        quantized[name] = plan
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    if recipe.mode is Mode.STATIC:
        _insert_quantizers(gm, recipe, summary, quantized, make=_activation_factory(config))
        if config.activation_quantizer is QuantizerKind.SIGN:
            _sign_binary_inputs(gm)
            _refuse_signs_of_relu(gm)
            mark_sign_outputs(gm)
        _bind_input_quantizers(gm)
        if config.weight_quantizer is QuantizerKind.XNOR:
            _wire_input_scale_maps(gm)
        initialize(gm, calibration or [], progress)
    gm.lowbit_recipe = recipe  # type: ignore[assignment]
    gm.lowbit_qat = config  # type: ignore[assignment]
    gm.quantization_summary = summary  # type: ignore[assignment]
    return gm.train()


def _bind_input_quantizers(gm: fx.GraphModule) -> None:
    """Tell each QAT layer which quantizer feeds it, found as :func:`~lowbit.flows.placement.input_scales` finds
    it after conversion: both then add the same bias."""
    feeding = feeding_modules(gm)
    for name, layer in gm.named_modules():
        if isinstance(layer, QATLayer):
            quantizer = feeding.get(name)
            layer.bind_input_quantizer(quantizer if isinstance(quantizer, ActivationFakeQuantizer) else None)


def _sign_binary_inputs(gm: fx.GraphModule) -> None:
    """Every layer with binary or ternary weights reads signs (BNN): an edge PTQ's rule gave the 8-bit grid of the
    8-bit first layer that produces it becomes a sign edge (the last layer still reads the signs it is fed)."""
    names = {id(m): n for n, m in gm.named_modules()}
    for name, source in feeding_modules(gm).items():
        layer = gm.get_submodule(name)
        binary = isinstance(layer, QATLayer) and layer.weight_quantizer.spec.bits <= 3
        if binary and isinstance(source, ActivationFakeQuantizer) and not isinstance(source, SignActivationQuantizer):
            replace_module(gm, names[id(source)], SignActivationQuantizer(label=source.label))


_RELUS = (nn.ReLU, nn.ReLU6)


def _refuse_signs_of_relu(gm: fx.GraphModule) -> None:
    """A sign edge after a ReLU sees only values ≥ 0: every sign is +1, and the layer it feeds learns nothing."""
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        edge = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(edge, SignActivationQuantizer) or not isinstance(node.args[0], fx.Node):
            continue
        source = node.args[0]
        relu = (source.op == "call_module" and isinstance(modules.get(source.target), _RELUS)) or (
            source.op == "call_function" and source.target in (F.relu, F.relu6, torch.relu)) or (
            source.op == "call_method" and source.target == "relu")
        if relu:
            raise ValueError(f"lowbit.qat: the sign activation {edge.label} reads the output of {source.name} (a "
                             "ReLU): every value there is ≥ 0, so every sign would be +1 and the next layer could "
                             "learn nothing. Binary networks put nn.Hardtanh (or no activation) before their binary "
                             "layers; see lowbit.zoo.models.bnn_mlp / bnn_cnn")


def _wire_input_scale_maps(gm: fx.GraphModule) -> None:
    """XNOR-Net: a binary layer fed by a sign edge also reads that edge's real input, for its scale map ``K``."""
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        layer = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(layer, QATLayer) or not isinstance(layer.weight_quantizer, BinaryWeightQuantizer):
            continue
        chain, source = [], node.args[0]
        while isinstance(source, fx.Node) and keeps_grid(source, modules):  # e.g. max pooling after the sign
            chain.append(source)
            source = source.args[0]
        edge = modules.get(source.target) if isinstance(source, fx.Node) and source.op == "call_module" else None
        if not isinstance(edge, SignActivationQuantizer):
            continue
        layer.use_input_scale_map()
        # the real values at the layer's input: the same grid-keeping ops applied before the sign (max pooling
        # and sign commute, so the binary path is unchanged)
        real = source.args[0]
        with gm.graph.inserting_before(node):
            for op in reversed(chain):
                real = gm.graph.node_copy(op, lambda arg, op=op, real=real: real if arg is op.args[0] else arg)
        node.args = (node.args[0], real)
    gm.graph.lint()
    gm.recompile()


def _activation_quantizers(model: nn.Module) -> list[ActivationFakeQuantizer]:
    """The edge quantizers (not the fallbacks inside DoReFa's)."""
    found = [m for m in model.modules() if isinstance(m, ActivationFakeQuantizer)]
    inner = {id(m.fallback) for m in found if isinstance(m, DoReFaActivationQuantizer)}
    return [m for m in found if id(m) not in inner]


@torch.no_grad()
def initialize(model: nn.Module, batches: Iterable[Any], progress: bool = False) -> int:
    """Run ``batches`` through ``model`` (eval mode, activations passing through unquantized) so every activation
    quantizer sets its starting step, clip or range from the data; returns the number of batches.

    Raises:
        ValueError: no batches, or a batch the model cannot take.
    """
    batches = list(batches)
    if not batches:
        raise ValueError("QAT initialisation got no batches: pass calibration=batches")
    _reestimate_bn(model, batches)
    quantizers = _activation_quantizers(model)
    was_training = model.training
    model.eval()
    for q in quantizers:
        q.start()
        q.initializing = True
    try:
        _run(model, batches, progress, "initialising QAT")
    finally:
        for q in quantizers:
            q.initializing = False
        model.train(was_training)
    seen = len(batches)
    for q in quantizers:
        try:
            q.finish()
        except RuntimeError:
            warnings.warn(f"lowbit.qat: no tensor reached {q.label}; left unquantized", stacklevel=2)
            q.enabled = False
    return seen


def _run(model: nn.Module, batches: list[Any], progress: bool, description: str) -> None:
    for seen, batch in enumerate(progress_bar(batches, progress, description), start=1):
        try:
            call(model, batch)
        except (ValueError, RuntimeError) as err:
            raise ValueError(f"QAT initialisation batch {seen}: {err}") from err


@torch.no_grad()
def _reestimate_bn(model: nn.Module, batches: list[Any]) -> None:
    """Recompute the running statistics of BatchNorms that follow a scale-invariant weight rule (DoReFa).

    Such a rule changes the layer's output scale (DoReFa's weights fill [−1, 1] whatever the float weights'
    size), so the float model's statistics no longer fit, and eval-mode layers would blow activations up by
    that factor, layer after layer. One pass with batch statistics (activation quantizers off) averages the
    right ones over the batches."""
    layers = [m for m in model.modules() if isinstance(m, QATLayer) and m.bn is not None
              and m.weight_quantizer.scale_invariant and m.weight_quantizer.enabled and not bool(m.bn_frozen)]
    if not layers:
        return
    quantizers = [q for q in _activation_quantizers(model) if q.enabled]
    was_training, momenta = model.training, [m.bn.momentum for m in layers]
    model.eval()
    for m in layers:
        m.bn.reset_running_stats()
        m.bn.momentum = None  # a cumulative average over the batches
        m.train()
    for q in quantizers:
        q.enabled = False
    try:
        _run(model, batches, False, "")
    finally:
        for m, momentum in zip(layers, momenta):
            m.bn.momentum = momentum
        for q in quantizers:
            q.enabled = True
        model.train(was_training)


def freeze_bn(model: nn.Module) -> int:
    """Stop BatchNorm statistics in every QAT layer (whitepaper: after some steps); returns how many froze."""
    layers = [m for m in model.modules() if isinstance(m, QATLayer) and m.bn is not None]
    for m in layers:
        m.freeze_bn()
    return len(layers)


def set_bits(model: nn.Module, bits: int | None = None, *, weights: bool = True, activations: bool = True) -> None:
    """Train at ``bits`` for now (progressive lowering): each quantizer runs at ``max(bits, its recipe bits)``;
    ``None`` returns every quantizer to its recipe's bits. LSQ steps are rescaled to keep their clip range.

    Raises:
        ValueError: bits outside 2..8.
    """
    if bits is not None and (not isinstance(bits, int) or not 2 <= bits <= 8):
        raise ValueError(f"set_bits: bits must be None or an int in 2..8, got {bits!r}")
    targets: list[Any] = []
    if weights:
        targets += [m for m in model.modules() if isinstance(m, WeightFakeQuantizer)]
    if activations:
        targets += _activation_quantizers(model)
    for q in targets:
        wanted = q.target_bits if bits is None else max(bits, q.target_bits)
        current = q.bits if isinstance(q, DoReFaWeightQuantizer) else q.spec.bits
        if wanted != current:
            q.set_bits(wanted)


def enable(model: nn.Module, *, weights: bool = True, activations: bool = True) -> None:
    """Switch weight and activation fake quantization on or off (two-stage training: weights first)."""
    for m in model.modules():
        if isinstance(m, WeightFakeQuantizer):
            m.enabled = weights
    for q in _activation_quantizers(model):
        if bool(q.initialized):
            q.enabled = activations


def regularization(model: nn.Module) -> torch.Tensor:
    """The sum of the quantizers' penalties (PACT's ``λ·α²``) to add to the training loss; 0 when none."""
    terms = [p for q in _activation_quantizers(model) if (p := q.penalty()) is not None]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def convert(model: nn.Module) -> fx.GraphModule:
    """The frozen quantized model: integer weights (BatchNorm folded) and fixed activation qparams.

    Layers whose converted grid differs from the recipe's (DoReFa weights need ``k+1`` bits, see
    :class:`~lowbit.nn.fake_quant.DoReFaWeightQuantizer`) get a per-layer override in the returned model's
    ``lowbit_recipe``, so :func:`lowbit.save_quantized` / :func:`lowbit.load_quantized` rebuild them.

    Raises:
        ValueError: a model not from :func:`prepare`, quantizers switched off, or quantizers not at their recipe's
            bits (finish a progressive schedule first).
    """
    recipe, config = getattr(model, "lowbit_recipe", None), getattr(model, "lowbit_qat", None)
    if not isinstance(recipe, Recipe) or not isinstance(config, QATConfig):
        raise ValueError("qat.convert needs a model returned by lowbit.qat.prepare")
    off = [n for n, m in model.named_modules() if isinstance(m, (WeightFakeQuantizer, ActivationFakeQuantizer))
           and not m.enabled and not (isinstance(m, ActivationFakeQuantizer) and not bool(m.initialized))]
    if off:
        raise ValueError(f"fake quantizers are switched off: {', '.join(off[:5])}; enable them (lowbit.qat.enable) "
                         "and train before converting")
    moved = [n for n, m in model.named_modules() if isinstance(m, WeightFakeQuantizer)
             and (m.bits if isinstance(m, DoReFaWeightQuantizer) else m.spec.bits) != m.target_bits]
    moved += [q.label for q in _activation_quantizers(model) if q.spec.bits != q.target_bits]
    if moved:
        raise ValueError(f"quantizers are not at their recipe's bits: {', '.join(moved[:5])}; call "
                         "lowbit.qat.set_bits(model, None) (the end of a progressive schedule) first")
    work = copy.deepcopy(model).eval()
    summary = QuantizationSummary(recipe.name, "qat", True, notes=[f"QAT: weights {config.weight_quantizer.value}, "
                                                                  f"activations {config.activation_quantizer.value}"])
    overrides = []
    for name, module in [(n, m) for n, m in work.named_modules() if isinstance(m, QATLayer)]:
        frozen = module.to_quantized()
        replace_module(work, name, frozen)
        summary.quantized[name] = frozen.weight_spec.bits
        if frozen.weight_spec != module.weight_quantizer.recipe_spec:  # DoReFa's grid: k+1 bits, BN per channel
            overrides.append(Override(include=(name,), weight=frozen.weight_spec))
    edges = _activation_quantizers(work)
    names = {id(m): n for n, m in work.named_modules()}
    for q in edges:
        if isinstance(q, SignActivationQuantizer):
            replace_module(work, names[id(q)], SignQuantizer(q.label))
            continue
        frozen_edge = _activation_quantizer(recipe, q.spec, q.label)
        if not bool(q.initialized) or not q.enabled:  # no tensor reached it: passes values through, as in PTQ
            frozen_edge.bypass = True
            replace_module(work, names[id(q)], frozen_edge)
            continue
        qp = q.export()
        frozen_edge.scale, frozen_edge.zero_point = qp.scale.clone(), qp.zero_point.clone()
        replace_module(work, names[id(q)], frozen_edge)
    summary.activation_quantizers = len(edges)
    bind_accumulator_bias(work)
    for attribute in ("lowbit_qat",):
        work.__dict__.pop(attribute, None)
    work.lowbit_recipe = dataclasses.replace(recipe, overrides=recipe.overrides + tuple(overrides))  # type: ignore[assignment]
    work.quantization_summary = summary  # type: ignore[assignment]
    return work

