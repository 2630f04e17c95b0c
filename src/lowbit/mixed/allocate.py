"""Exact bit allocation for mixed-precision quantization: one bit width per layer, least loss under a cost budget.

Each layer ``l`` has candidate bit widths ``b``, each with a predicted loss ``sensitivity[l][b]`` (e.g. a Hessian
trace times the quantization noise, HAWQ-V2) and an integer ``cost[l][b]`` (bits of weight storage, or BOPs).
The model's loss is modelled as the sum of its layers' sensitivities and its cost as the sum of their costs;
choosing one bit width per layer to minimise the loss with the cost at most a budget is the multiple-choice
knapsack problem. It is NP-hard in general, but dynamic programming over the Pareto set solves it exactly, and
fast for the sizes that occur (tens to hundreds of layers, a handful of bit widths).

After the first ``i`` layers the DP keeps the Pareto frontier of the partial allocations: those that no other
partial allocation beats in both cost and loss. The frontier after ``i + 1`` layers comes from adding each
candidate of layer ``i + 1`` to each frontier point, then dropping the dominated sums. This is exact because costs
and losses add: if partial allocation ``A`` has cost and loss no larger than ``B``, completing both with the same
choices for the remaining layers keeps ``A`` at least as good as ``B``, so a dominated partial allocation is never
needed for an optimal complete one. Rounding to float64 is monotone (``x <= y`` implies ``fl(x + s) <= fl(y + s)``), so
this holds for the float64 sums that are actually compared, and the result is optimal for them: no epsilon.

Each step is vectorised with numpy: the candidates (frontier cost + ``c_j``, frontier loss + ``s_j`` for every
choice ``j``) are sorted by ``(cost, loss)`` with a stable sort, a point is kept when its loss is strictly below
the running minimum (``np.minimum.accumulate``) of every cheaper point, and each kept point remembers its parent
and its choice, from which the bit widths are recovered by back-tracking. The frontier therefore has strictly
increasing costs and strictly decreasing losses.

With a budget (:func:`allocate`) two more prunings keep the frontier small, both exact:

- a point whose cost plus the least cost of the remaining layers exceeds the budget is dropped (costs are
  non-negative, so it can only get worse);
- among the points whose cost plus the *largest* cost of the remaining layers fits the budget, every completion
  is feasible, so the one with the least loss completes at least as well as the others with the same choices and
  they are dropped; those within a few ulps of its loss are kept, since rounding in the remaining additions could
  make them tie, and on a tie the cheaper one must win.

The second pruning only bites once the remaining layers' cost ranges are small, so :func:`allocate` adds the
layers in order of decreasing cost range (largest first), and its float64 sums are in that order; the reported
``loss`` is re-added in the given layer order, like :func:`pareto_frontier`'s. The two orders can differ in the
last bits, so on allocations whose losses agree to about 1e-16 relative the two functions may choose
differently; the choice is still deterministic.

Speed, measured on one core of a shared machine: 60 layers × 5 candidates with random sensitivities and costs of
300 to 2e6 weights times the bit width take about 5 ms per :func:`allocate` call, at any budget (without the
reordering and the second pruning, 0.4 to 3.5 s). The full :func:`pareto_frontier` of such an instance has 2e5
to 5e5 points: about 2 s for the DP and as long again to build the :class:`Allocation` objects (about 1 GB), so
prefer :func:`allocate` for a single budget.

Example:
    >>> sensitivity = {"conv": {2: 0.75, 4: 0.25, 8: 0.0}, "fc": {2: 0.5, 4: 0.125, 8: 0.0}}
    >>> cost = {"conv": {2: 20, 4: 40, 8: 80}, "fc": {2: 40, 4: 80, 8: 160}}  # 10 and 20 weights times bits
    >>> allocate(sensitivity, cost, budget=120)
    Allocation(bits={'conv': 4, 'fc': 4}, cost=120, loss=0.375)
    >>> [(a.cost, a.loss) for a in pareto_frontier(sensitivity, cost)]
    [(60, 1.25), (80, 0.75), (120, 0.375), (160, 0.125), (240, 0.0)]
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["Allocation", "allocate", "pareto_frontier", "budget_sweep"]

_INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class Allocation:
    """One bit width per layer, with its total cost and predicted loss.

    Attributes:
        bits: ``{layer: bit width}`` in the order the layers were given.
        cost: the sum of the chosen costs.
        loss: the sum of the chosen sensitivities (float64, added in the order the layers were given).
    """

    bits: dict[str, int]
    cost: int
    loss: float


@dataclass(frozen=True)
class _Problem:
    """Validated input, one entry per layer: name, bit widths, and their costs and losses as arrays."""

    layers: list[str]
    widths: list[list[int]]
    costs: list[np.ndarray]  # int64
    losses: list[np.ndarray]  # float64

    def reordered(self, order: list[int]) -> _Problem:
        return _Problem(*([field[i] for i in order] for field in (self.layers, self.widths, self.costs, self.losses)))


@dataclass(frozen=True)
class _Trace:
    """The DP's final frontier and, per layer, each kept point's parent (index in the previous frontier) and
    choice (index into the layer's candidates)."""

    cost: np.ndarray
    loss: np.ndarray
    parents: list[np.ndarray]
    choices: list[np.ndarray]

    def choices_of(self, points: np.ndarray) -> np.ndarray:
        """Choice indices ``(layers, len(points))`` of final frontier points, back-tracked from the last layer."""
        chosen = np.empty((len(self.choices), points.size), dtype=np.int64)
        for layer in range(len(self.choices) - 1, -1, -1):
            chosen[layer] = self.choices[layer][points]
            points = self.parents[layer][points]
        return chosen


def _integer(value: object) -> int | None:
    """``value`` as a Python int when it is an integer (Python or numpy) but not a bool, else None."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral | np.integer):
        return None
    return operator.index(value)


def _same_keys(sensitivity: Mapping, cost: Mapping, label: Callable[[object], str]) -> None:
    """Raise a ValueError naming the first key (``label(key)``) that only one of the two mappings has."""
    for key in sensitivity:
        if key not in cost:
            raise ValueError(f"{label(key)} is in sensitivity but not in cost")
    for key in cost:
        if key not in sensitivity:
            raise ValueError(f"{label(key)} is in cost but not in sensitivity")


def _validate(sensitivity: Mapping[str, Mapping[int, float]], cost: Mapping[str, Mapping[int, int]]) -> _Problem:
    for name, table in (("sensitivity", sensitivity), ("cost", cost)):
        if not isinstance(table, Mapping):
            raise ValueError(f"{name} must be a mapping {{layer: {{bits: value}}}}, got {type(table).__name__}")
    if not sensitivity and not cost:
        raise ValueError("sensitivity and cost must have at least one layer")
    _same_keys(sensitivity, cost, lambda layer: f"layer {layer!r}")

    problem = _Problem(layers=list(sensitivity), widths=[], costs=[], losses=[])
    largest_total = 0
    for layer in problem.layers:
        layer_loss, layer_cost = sensitivity[layer], cost[layer]
        for name, table in (("sensitivity", layer_loss), ("cost", layer_cost)):
            if not isinstance(table, Mapping):
                raise ValueError(f"{name}[{layer!r}] must be a mapping {{bits: value}}, got {type(table).__name__}")
        if not layer_loss and not layer_cost:
            raise ValueError(f"layer {layer!r} has no candidate bit widths")
        _same_keys(layer_loss, layer_cost, lambda bits, layer=layer: f"layer {layer!r}: bits={bits!r}")
        widths, costs, losses = [], [], []
        for bits, s in layer_loss.items():
            width = _integer(bits)
            if width is None or not 0 <= width <= _INT64_MAX:
                raise ValueError(f"layer {layer!r}: bit widths must be non-negative integers, got {bits!r}")
            c = _integer(layer_cost[bits])
            if c is None or c < 0:
                raise ValueError(
                    f"layer {layer!r}, bits={width}: cost must be a non-negative integer, got {layer_cost[bits]!r}"
                )
            if isinstance(s, bool | np.bool_) or not isinstance(s, numbers.Real) or not math.isfinite(s):
                raise ValueError(f"layer {layer!r}, bits={width}: sensitivity must be a finite number, got {s!r}")
            widths.append(width)
            costs.append(c)
            losses.append(float(s))
        largest_total += max(costs)
        # Checked in Python ints as we go, before an int64 array could hold (or a sum wrap around) a bad value.
        if largest_total > _INT64_MAX:
            raise ValueError(f"the largest possible total cost exceeds int64: {largest_total} up to layer {layer!r}")
        problem.widths.append(widths)
        problem.costs.append(np.array(costs, dtype=np.int64))
        problem.losses.append(np.array(losses, dtype=np.float64))
    return problem


def _pareto_step(cost: np.ndarray, loss: np.ndarray, c: np.ndarray, s: np.ndarray, limit: int | None):
    """One DP step: the frontier of ``(cost + c_j, loss + s_j)`` over frontier points and choices ``j``, keeping
    only sums with cost <= ``limit``. Returns ``(cost, loss, parent, choice)`` of the new frontier."""
    # One block per choice j: the frontier shifted by (c_j, s_j). The frontier is sorted by cost, so the sums
    # within the limit are a prefix of each block, found by binary search.
    c_list, s_list = c.tolist(), s.tolist()
    if limit is None:
        sizes = [cost.size] * len(c_list)
    else:
        sizes = [int(np.searchsorted(cost, limit - cj, side="right")) if cj <= limit else 0 for cj in c_list]
    starts = np.cumsum([0, *sizes[:-1]])
    cand_cost = np.concatenate([cost[:m] + cj for m, cj in zip(sizes, c_list)])
    cand_loss = np.concatenate([loss[:m] + sj for m, sj in zip(sizes, s_list)])
    # Each block is sorted by cost, and numpy's stable sort of int64 is a timsort that merges such runs (n log k
    # rather than n log n). Stability makes exact ties in (cost, loss) resolve by choice, then parent.
    order = np.argsort(cand_cost, kind="stable")
    sorted_cost, sorted_loss = cand_cost[order], cand_loss[order]
    # A run of equal costs (common: layers of equal size that swap bit widths) is one group: only its least loss
    # can stay (the first occurrence), and only if strictly below the loss of every cheaper sum.
    first = np.empty(sorted_cost.size, dtype=bool)
    first[0] = True
    np.not_equal(sorted_cost[1:], sorted_cost[:-1], out=first[1:])
    group_start = np.flatnonzero(first)
    group_min = np.minimum.reduceat(sorted_loss, group_start)
    best_before = np.empty_like(group_min)
    best_before[0] = np.inf
    best_before[1:] = np.minimum.accumulate(sorted_loss)[group_start[1:] - 1]
    if group_start.size == sorted_cost.size:  # no equal costs: every sum is its own group
        keep = np.flatnonzero(group_min < best_before)
    else:
        group = np.cumsum(first) - 1
        at_min = np.flatnonzero(sorted_loss == group_min[group])
        first_at_min = at_min[np.r_[True, group[at_min[1:]] != group[at_min[:-1]]]]
        keep = first_at_min[group_min < best_before]
    kept = order[keep]
    choice = np.searchsorted(starts, kept, side="right") - 1
    return sorted_cost[keep], sorted_loss[keep], kept - starts[choice], choice


def _pareto_dp(problem: _Problem, budget: int | None) -> _Trace:
    """The Pareto DP over the layers in the problem's order: the full Pareto set without a budget; with one, a
    frontier whose last point is the optimum (see the module docstring for the two prunings)."""
    count = len(problem.layers)
    # What the layers after layer i add at least and at most: suffix sums, exact in Python ints.
    least_after, most_after, loss_after = [0] * count, [0] * count, [0.0] * count
    for i in range(count - 2, -1, -1):
        least_after[i] = least_after[i + 1] + int(problem.costs[i + 1].min())
        most_after[i] = most_after[i + 1] + int(problem.costs[i + 1].max())
        loss_after[i] = loss_after[i + 1] + float(np.abs(problem.losses[i + 1]).max())

    cost, loss = np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.float64)
    parents: list[np.ndarray] = []
    choices: list[np.ndarray] = []
    for i, (c, s) in enumerate(zip(problem.costs, problem.losses)):
        limit = None if budget is None else budget - least_after[i]
        cost, loss, parent, choice = _pareto_step(cost, loss, c, s, limit)
        if budget is not None:
            # Sums so cheap that every completion fits: keep the last (least loss) and the ones within the rounding
            # slack of its loss. Each remaining addition moves a difference of two sums by at most one ulp of the
            # largest magnitude reached, bounded here with a factor 2 to spare.
            free = int(np.searchsorted(cost, budget - most_after[i], side="right"))
            if free > 1:
                reach = 2.0 * (max(abs(float(loss[0])), abs(float(loss[free - 1]))) + loss_after[i])
                slack = 2.0 * (count - 1 - i) * float(np.spacing(reach))
                drop = int(np.count_nonzero(loss[: free - 1] > loss[free - 1] + slack))  # losses decrease
                cost, loss, parent, choice = cost[drop:], loss[drop:], parent[drop:], choice[drop:]
        parents.append(parent)
        choices.append(choice)
    return _Trace(cost=cost, loss=loss, parents=parents, choices=choices)


def pareto_frontier(
    sensitivity: Mapping[str, Mapping[int, float]], cost: Mapping[str, Mapping[int, int]]
) -> list[Allocation]:
    """Every Pareto-optimal allocation: none other has lower-or-equal cost and lower loss, or lower cost and equal.

    Args:
        sensitivity: ``{layer: {bits: predicted loss}}``; finite numbers, normally >= 0 (the algorithm does not
            need the sign). The layers' order is the order of every result's ``bits``.
        cost: ``{layer: {bits: cost}}`` with the same layers and, per layer, the same bit widths; non-negative
            integers (Python or numpy, not bool) whose largest possible total fits in int64.

    Returns:
        The frontier by strictly increasing cost with strictly decreasing loss. The first allocation is the
        cheapest (with the least loss among the cheapest), the last reaches the global minimum loss (at the least
        cost among those). Of allocations equal in both cost and loss one is returned, deterministically. Losses
        are float64 sums in the given layer order, and optimal for exactly those sums.

    Raises:
        ValueError: no layers, a layer without candidates, layers or bit widths that differ between the two
            mappings, a bit width or cost that is negative or not an integer, a sensitivity that is
            not a finite number, or a largest possible total cost beyond int64.

    Example:
        >>> sensitivity = {"a": {4: 1.0, 8: 0.0}, "b": {4: 2.0, 8: 0.0}}
        >>> cost = {"a": {4: 4, 8: 8}, "b": {4: 4, 8: 8}}
        >>> [(f.bits, f.cost, f.loss) for f in pareto_frontier(sensitivity, cost)]
        [({'a': 4, 'b': 4}, 8, 3.0), ({'a': 4, 'b': 8}, 12, 1.0), ({'a': 8, 'b': 8}, 16, 0.0)]
    """
    problem = _validate(sensitivity, cost)
    trace = _pareto_dp(problem, budget=None)
    chosen = trace.choices_of(np.arange(trace.cost.size))
    # Bit widths looked up per layer as arrays, then one dict per point: the frontier can hold 1e5+ points.
    bits = np.stack([np.array(widths, dtype=np.int64)[row] for widths, row in zip(problem.widths, chosen)], axis=1)
    return [
        Allocation(bits=dict(zip(problem.layers, row)), cost=c, loss=loss)
        for row, c, loss in zip(bits.tolist(), trace.cost.tolist(), trace.loss.tolist())
    ]


def allocate(
    sensitivity: Mapping[str, Mapping[int, float]], cost: Mapping[str, Mapping[int, int]], budget: int
) -> Allocation:
    """The allocation with the least total loss whose total cost is at most ``budget`` (exactly optimal).

    Args:
        sensitivity: ``{layer: {bits: predicted loss}}``, as in :func:`pareto_frontier`.
        cost: ``{layer: {bits: cost}}``, as in :func:`pareto_frontier`.
        budget: the largest total cost allowed, in the units of ``cost``; an integer (Python or numpy, not bool).

    Returns:
        The least-loss allocation within the budget; among equal losses, the cheapest (then a deterministic one).
        It is the last point of :func:`pareto_frontier` with cost <= ``budget``, except that the DP adds the
        losses in its own layer order (see the module docstring), which can matter for losses equal to ~1e-16.

    Raises:
        ValueError: invalid ``sensitivity`` or ``cost`` (as in :func:`pareto_frontier`), a ``budget`` that is not
            an integer, or a ``budget`` below the minimum achievable cost (every layer at its cheapest width).

    Example:
        >>> sensitivity = {"a": {4: 1.0, 8: 0.0}, "b": {4: 2.0, 8: 0.0}}
        >>> allocate(sensitivity, {"a": {4: 4, 8: 8}, "b": {4: 4, 8: 8}}, budget=13)
        Allocation(bits={'a': 4, 'b': 8}, cost=12, loss=1.0)
    """
    problem = _validate(sensitivity, cost)
    limit = _integer(budget)
    if limit is None:
        raise ValueError(f"budget must be an integer, got {budget!r}")
    minimum = sum(int(c.min()) for c in problem.costs)
    if limit < minimum:
        raise ValueError(f"budget={limit} is below the minimum achievable cost {minimum}")
    # Every total fits in int64, so a larger budget means the same and keeps the comparisons in int64.
    limit = min(limit, _INT64_MAX)
    # Largest cost range first: the "every completion fits" pruning then narrows the frontier soonest.
    order = sorted(range(len(problem.layers)), key=lambda i: -int(problem.costs[i].max() - problem.costs[i].min()))
    trace = _pareto_dp(problem.reordered(order), budget=limit)
    chosen_in_order = trace.choices_of(np.array([trace.cost.size - 1]))[:, 0].tolist()
    chosen = [0] * len(order)
    for position, layer in enumerate(order):
        chosen[layer] = chosen_in_order[position]
    loss = 0.0
    for layer_loss, j in zip(problem.losses, chosen):  # in the given layer order, like pareto_frontier
        loss += float(layer_loss[j])
    return Allocation(
        bits={layer: widths[j] for layer, widths, j in zip(problem.layers, problem.widths, chosen)},
        cost=sum(int(c[j]) for c, j in zip(problem.costs, chosen)),
        loss=loss,
    )


def budget_sweep(
    sensitivity: Mapping[str, Mapping[int, float]], cost: Mapping[str, Mapping[int, int]], count: int = 32
) -> list[Allocation]:
    """Up to ``count`` points of the Pareto frontier: :func:`allocate` at budgets evenly spaced from the cheapest
    allocation's cost to the dearest's, duplicates dropped. Each point is optimal for its budget; unlike
    :func:`pareto_frontier` the work and memory stay bounded on models with many layers (for plots).

    Args:
        sensitivity, cost: as in :func:`allocate`.
        count: budgets to try, >= 2.

    Returns:
        The distinct allocations by increasing cost (and so non-increasing loss).

    Raises:
        ValueError: ``count`` below 2, and the errors of :func:`allocate`.

    Example:
        >>> sensitivity = {"a": {4: 1.0, 8: 0.0}, "b": {4: 2.0, 8: 0.0}}
        >>> cost = {"a": {4: 4, 8: 8}, "b": {4: 4, 8: 8}}
        >>> [(f.cost, f.loss) for f in budget_sweep(sensitivity, cost, count=5)]
        [(8, 3.0), (12, 1.0), (16, 0.0)]
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 2:
        raise ValueError(f"budget_sweep: count must be an int >= 2, got {count!r}")
    problem = _validate(sensitivity, cost)
    low = sum(int(c.min()) for c in problem.costs)
    high = sum(int(c.max()) for c in problem.costs)
    budgets = sorted({low + (high - low) * i // (count - 1) for i in range(count)})
    points: list[Allocation] = []
    for budget in budgets:
        point = allocate(sensitivity, cost, budget)
        if not points or (point.cost, point.loss) != (points[-1].cost, points[-1].loss):
            points.append(point)
    return points
