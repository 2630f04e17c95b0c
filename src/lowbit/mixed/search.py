"""The mixed-precision verb: measure sensitivity, allocate bits under a budget, return a recipe.

:func:`choose_bits` runs the three steps a user would otherwise chain by hand — :func:`lowbit.mixed.sensitivity`,
:func:`lowbit.mixed.allocate` on the costs of :mod:`lowbit.mixed.budget`, and
:func:`lowbit.mixed.budget.mixed_recipe` — and, when asked, returns the whole Pareto frontier for plots. The
recipe it returns is an ordinary :class:`lowbit.Recipe` with one override per layer, so :func:`lowbit.quantize`
and the QAT flow (:func:`lowbit.qat.prepare`) apply it unchanged.

Example:
    >>> import torch
    >>> from torch import nn
    >>> torch.manual_seed(0)
    <torch._C.Generator object at ...>
    >>> model = nn.Sequential(nn.Linear(16, 256), nn.ReLU(), nn.Linear(256, 4)).eval()
    >>> result = choose_bits(model, "sqnr", [torch.randn(64, 16)], bits=(2, 3, 4, 8), budget_avg_bits=3.5)
    >>> result.allocation.bits, result.avg_bits <= 3.5
    ({'0': 3, '2': 4}, True)
    >>> from lowbit import quantize
    >>> quantize(model, result.recipe).quantization_summary.quantized
    {'0': 3, '2': 4}
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from lowbit.mixed.allocate import Allocation, allocate, budget_sweep, pareto_frontier
from lowbit.mixed.budget import bops_cost, mixed_recipe, model_bytes, size_budget
from lowbit.mixed.sensitivity import SensitivityTable, Subject, _inputs, prepare_subject, sensitivity
from lowbit.recipes import Recipe

__all__ = ["MixedPrecision", "choose_bits", "average_bits"]


@dataclass
class MixedPrecision:
    """What :func:`choose_bits` decided.

    Attributes:
        recipe: the base recipe with per-layer weight bits.
        allocation: the chosen bits, their cost (code bits, or BOPs per sample) and predicted loss.
        table: the sensitivity table the choice minimised.
        frontier: every Pareto-optimal allocation under the same cost (increasing cost, decreasing loss), when
            asked for; else empty.
        budget: ``{"kind": "bytes" | "avg_bits" | "bops", "value": …, "cost_limit": …}``.
        predicted_bytes: :func:`lowbit.mixed.budget.model_bytes` of the allocation.
        avg_bits: mean weight bits over the candidate layers, weighted by weight count.
        cost: the allocator's costs, ``{layer: {bits: cost}}`` (code bytes, code bits or BOPs per sample, by
            budget kind).
        subject: the prepared model the table was measured on (for :func:`model_bytes` of other allocations).
    """

    recipe: Recipe
    allocation: Allocation
    table: SensitivityTable
    frontier: list[Allocation]
    budget: dict[str, Any]
    predicted_bytes: int
    avg_bits: float
    cost: dict[str, dict[int, int]] = field(default_factory=dict)
    subject: Subject | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"measure": self.table.measure, "budget": dict(self.budget), "bits": dict(self.allocation.bits),
                "predicted_loss": self.allocation.loss, "cost": self.allocation.cost,
                "predicted_bytes": self.predicted_bytes, "avg_bits": round(self.avg_bits, 4),
                "sensitivity_seconds": round(self.table.seconds, 3), "frontier_points": len(self.frontier)}

    def pareto(self, count: int = 32) -> dict[str, Any] | None:
        """JSON-ready points for a size/loss plot: up to ``count`` frontier points (:func:`budget_sweep`), every
        layer at one width (``uniform``, for comparison; a layer whose recipe fixes its width keeps it) and the
        ``chosen`` allocation, each with its ``cost``, predicted ``loss`` and model ``bytes``; ``unit`` names the
        cost (the budget's kind). None when the costs or the subject were not kept."""
        if not self.cost or self.subject is None:
            return None

        def point(bits: dict[str, int], cost: int, loss: float, **extra: Any) -> dict[str, Any]:
            return {"bits": dict(bits), "cost": int(cost), "loss": float(loss),
                    "bytes": model_bytes(self.subject, bits), **extra}

        loss = self.table.loss
        uniform = []
        for width in sorted({b for row in self.cost.values() for b in row}):
            bits = {n: width if width in row else next(iter(row)) for n, row in self.cost.items()}
            uniform.append(point(bits, sum(self.cost[n][b] for n, b in bits.items()),
                                 sum(loss[n][b] for n, b in bits.items()), width=width))
        sweep = [point(a.bits, a.cost, a.loss) for a in budget_sweep(loss, self.cost, count)]
        return {"measure": self.table.measure, "unit": self.budget["kind"], "cost_limit": self.budget["cost_limit"],
                "sweep": sweep, "uniform": uniform,
                "chosen": point(self.allocation.bits, self.allocation.cost, self.allocation.loss)}


def average_bits(subject: Subject, bits: dict[str, int]) -> float:
    """Weight bits per weight over the candidate layers."""
    counts = {name: subject.layer(name).weight.numel() for name in subject.candidates}
    return sum(counts[n] * bits[n] for n in counts) / sum(counts.values())


def choose_bits(model: nn.Module, measure: str = "sqnr", batches: Iterable[Any] | None = None, *,
                recipe: str | Recipe = "w8", bits: Sequence[int] = (2, 3, 4, 6, 8), budget_bytes: int | None = None,
                budget_avg_bits: float | None = None, budget_bops: int | None = None, samples: int = 16,
                seed: int = 0, frontier: bool = False, progress: bool = False) -> MixedPrecision:
    """Per-layer weight bits for ``model`` minimising ``measure``'s total loss under one budget.

    Args:
        model: the trained float model.
        measure: ``"sqnr"``, ``"kl"``, ``"hessian"`` or ``"entropy"`` (:mod:`lowbit.mixed.sensitivity`).
        batches: calibration inputs (or ``(inputs, labels)`` pairs), also zero-shot ones; a BOPs budget needs at
            least one, to count MACs.
        recipe: the base recipe (its weight spec, observer, activations and first/last-layer bits).
        bits: the candidate weight bit widths.
        budget_bytes: the model's size limit in bytes (:func:`lowbit.mixed.budget.model_bytes`).
        budget_avg_bits: the mean weight bits limit over the chosen layers.
        budget_bops: the limit on ``Σ MACs × b_w × b_a`` per sample.
        samples, seed: Hutchinson draws per batch and their seed (``hessian``).
        frontier: also compute the whole Pareto frontier (for plots). It can hold hundreds of thousands of points
            on a 50-layer model: seconds and about a gigabyte.
        progress: progress bars on stderr.

    Raises:
        ValueError: not exactly one budget, a budget below the cheapest allocation (naming both), and the errors
            of :func:`lowbit.mixed.sensitivity.sensitivity`.
    """
    given = [k for k, v in (("budget_bytes", budget_bytes), ("budget_avg_bits", budget_avg_bits),
                            ("budget_bops", budget_bops)) if v is not None]
    if len(given) != 1:
        raise ValueError("give exactly one budget (budget_bytes, budget_avg_bits or budget_bops), got "
                         f"{given or 'none'}")
    data = list(batches) if batches is not None else None
    subject = prepare_subject(model, recipe, bits)
    if budget_bops is not None:
        if not data:
            raise ValueError("a BOPs budget needs batches: MACs are counted on the first one")
        if isinstance(budget_bops, bool) or not isinstance(budget_bops, int) or budget_bops <= 0:
            raise ValueError(f"budget_bops must be a positive int, got {budget_bops!r}")
        cost, limit, kind, value = bops_cost(subject, _inputs(data[0])), budget_bops, "bops", budget_bops
    else:
        cost, limit = size_budget(subject, budget_bytes, budget_avg_bits)
        kind, value = ("bytes", budget_bytes) if budget_bytes is not None else ("avg_bits", budget_avg_bits)
    cheapest = sum(min(row.values()) for row in cost.values())
    if limit < cheapest:  # before the measure, which can take minutes
        floor = model_bytes(subject, {n: min(c) for n, c in subject.candidates.items()})
        unit = {"bops": "BOPs", "bytes": "code bytes", "avg_bits": "code bits"}[kind]
        raise ValueError(f"{given[0]}={value} is below the cheapest allocation (all layers at their fewest bits: "
                         f"{floor} bytes, {cheapest} {unit})")
    table = sensitivity(subject, measure, data, samples=samples, seed=seed, progress=progress)
    allocation = allocate(table.loss, cost, limit)
    points = pareto_frontier(table.loss, cost) if frontier else []
    return MixedPrecision(mixed_recipe(subject.recipe, allocation.bits), allocation, table, points,
                          {"kind": kind, "value": value, "cost_limit": limit}, model_bytes(subject, allocation.bits),
                          average_bits(subject, allocation.bits), cost, subject)
