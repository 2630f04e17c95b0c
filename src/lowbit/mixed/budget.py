"""What a bit allocation costs, and the recipe that carries it out.

Two budgets:

- **model bytes**: a layer with ``n`` weights at ``b`` bits stores ``⌈n·b/8⌉`` bytes of packed codes.
  Everything else is fixed by the recipe: the other stored tensors at float32, and a float32 scale plus an int32
  zero point per qparam set (channel or group). :func:`model_bytes` adds them up; under a byte budget the
  allocator's cost is each layer's code bytes and its limit the budget less the fixed part, so the budget holds
  exactly. Under a mean-bits budget the cost is code bits.
- **BOPs** (bit operations, Baskin et al. / HAWQ): ``MACs × b_w × b_a`` per layer and sample, with ``b_a`` the
  recipe's activation bits (32 when activations stay float).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from lowbit.mixed.sensitivity import prepare_subject
    >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    >>> subject = prepare_subject(model, "w8", bits=(2, 4, 8))
    >>> size_cost(subject)["0"]                          # 128 weights
    {2: 256, 4: 512, 8: 1024}
    >>> model_bytes(subject, {"0": 4, "2": 8}) == 64 + 64 + 4 * (16 + 4) + 8 * (16 + 4)
    True
    >>> mixed_recipe("w8", {"0": 4, "2": 8}).plan("0").weight.bits
    4
"""

from __future__ import annotations

import dataclasses
import glob
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from lowbit.analysis.evaluation import call
from lowbit.recipes import Mode, Override, Recipe, load_recipe
from lowbit.functional.affine import qparam_shape

__all__ = ["size_cost", "bops_cost", "layer_macs", "fixed_bytes", "model_bytes", "size_budget", "mixed_recipe"]

_QPARAM_BYTES = 8  # a float32 scale and an int32 zero point per channel or group


def size_cost(subject: Any, unit: str = "bits") -> dict[str, dict[int, int]]:
    """Layer → bits → what its packed weight codes take: ``weights × bits`` bits, or (``unit="bytes"``) that
    rounded up to whole bytes, as :func:`model_bytes` counts them."""
    if unit not in ("bits", "bytes"):
        raise ValueError(f"unit must be 'bits' or 'bytes', got {unit!r}")
    per_byte = 8 if unit == "bytes" else 1
    return {name: {b: -(-subject.layer(name).weight.numel() * b // per_byte) for b in candidates}
            for name, candidates in subject.candidates.items()}


def layer_macs(subject: Any, example: Any) -> dict[str, int]:
    """Multiply-accumulates of each candidate layer for one sample, counted from its output on ``example``.

    A convolution's output element costs ``C_in/groups × kernel area`` MACs, a linear one ``in_features``.
    """
    counts: dict[str, int] = {}
    handles = []
    for name in subject.candidates:
        layer = subject.layer(name)

        def hook(module: nn.Module, args: tuple, out: torch.Tensor, name: str = name) -> None:
            per_output = module.weight[0].numel()  # C_in/groups × kernel, or in_features
            counts[name] = counts.get(name, 0) + out.numel() // out.shape[0] * per_output

        handles.append(layer.register_forward_hook(hook))
    try:
        with torch.no_grad():
            call(subject.model, example)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in subject.candidates if n not in counts]
    if missing:
        raise ValueError(f"layers not called on the example input: {', '.join(missing)}")
    return counts


def bops_cost(subject: Any, example: Any) -> dict[str, dict[int, int]]:
    """Layer → bits → ``MACs × b_w × b_a`` per sample, with ``b_a`` the recipe's activation bits (32 without)."""
    recipe = subject.recipe
    activation_bits = recipe.activation.bits if recipe.mode in (Mode.STATIC, Mode.DYNAMIC) and recipe.activation \
        else 32
    macs = layer_macs(subject, example)
    return {name: {b: macs[name] * b * activation_bits for b in candidates}
            for name, candidates in subject.candidates.items()}


def fixed_bytes(subject: Any) -> int:
    """Bytes that do not depend on the chosen bits: every stored tensor (the state dict: parameters and
    persistent buffers) other than the candidates' weights at 4 bytes per value, plus each candidate layer's
    qparams."""
    weights = {id(subject.layer(name).weight) for name in subject.candidates}
    other = sum(t.numel() for t in subject.model.state_dict(keep_vars=True).values()
                if id(t) not in weights and t.is_floating_point())
    qparams = sum(math.prod(qparam_shape(subject.layer(name).weight.shape, spec.granularity))
                  for name, spec in subject.specs.items())
    return 4 * other + _QPARAM_BYTES * qparams


def model_bytes(subject: Any, bits: Mapping[str, int]) -> int:
    """The model's size with ``bits`` per candidate layer: packed codes (each layer rounded up to whole bytes)
    plus :func:`fixed_bytes`."""
    codes = sum(-(-subject.layer(name).weight.numel() * bits[name] // 8) for name in subject.candidates)
    return codes + fixed_bytes(subject)


def size_budget(subject: Any, budget_bytes: int | None = None, budget_avg_bits: float | None = None,
                ) -> tuple[dict[str, dict[int, int]], int]:
    """The allocator's costs and limit for one size budget.

    ``budget_bytes``: costs are each layer's code bytes and the limit is ``budget_bytes − fixed_bytes``, so an
    allocation within it has :func:`model_bytes` ≤ ``budget_bytes``. ``budget_avg_bits``: costs are code bits and
    the limit ``⌊budget_avg_bits × weights⌋``.

    Raises:
        ValueError: not exactly one budget, or one that is not a positive number (bools included).
    """
    if (budget_bytes is None) == (budget_avg_bits is None):
        raise ValueError("give exactly one budget: budget_bytes or budget_avg_bits")
    if budget_avg_bits is not None:
        if isinstance(budget_avg_bits, bool) or not isinstance(budget_avg_bits, (int, float)) \
                or not budget_avg_bits > 0:
            raise ValueError(f"budget_avg_bits must be > 0, got {budget_avg_bits!r}")
        total = sum(subject.layer(name).weight.numel() for name in subject.candidates)
        return size_cost(subject, "bits"), math.floor(budget_avg_bits * total)
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes <= 0:
        raise ValueError(f"budget_bytes must be a positive int, got {budget_bytes!r}")
    return size_cost(subject, "bytes"), budget_bytes - fixed_bytes(subject)


def mixed_recipe(base: str | Recipe, bits: Mapping[str, int], name: str | None = None) -> Recipe:
    """``base`` with one override per layer setting its weight bits (the rest of each layer's spec as ``base``
    plans it). Layer names are matched literally (``glob.escape``).

    Raises:
        ValueError: a bit width outside 2..16, or a base without integer weights.
    """
    recipe = load_recipe(base)
    if recipe.weight is None:
        raise ValueError(f"mixed precision needs a recipe with integer weights; {recipe.name!r} has none")
    overrides = []
    names = list(bits)
    for i, (layer, b) in enumerate(bits.items()):
        if isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= 16:
            raise ValueError(f"bits[{layer!r}] must be an int in 2..16, got {b!r}")
        planned = recipe.plan(layer, first=i == 0, last=i == len(names) - 1).weight or recipe.weight
        overrides.append(Override(include=(glob.escape(layer),), weight=dataclasses.replace(planned, bits=b)))
    return dataclasses.replace(recipe, name=name or f"{recipe.name}-mixed", overrides=(*recipe.overrides, *overrides))
