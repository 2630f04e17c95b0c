"""Exact bit allocation: against brute force over every combination, the Pareto set by its pairwise definition."""

import itertools
import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.mixed.allocate import Allocation, allocate, budget_sweep, pareto_frontier

WIDTHS = [1, 2, 3, 4, 6, 8, 16]

# Arbitrary floats, plus decimals whose float sums depend on the order of addition (0.1 + 0.2 != 0.3).
any_losses = st.one_of(
    st.floats(0, 1e3, allow_nan=False, allow_infinity=False), st.sampled_from([0.0, 0.1, 0.2, 0.3, 0.7, 1.0])
)
# Multiples of 1/8 below 8: every sum is exact, so the optimum and its tie-break do not depend on the order.
exact_losses = st.integers(0, 64).map(lambda k: k / 8)


@st.composite
def instances(draw, losses=any_losses):
    sensitivity, cost = {}, {}
    for i in range(draw(st.integers(1, 5))):
        widths = draw(st.lists(st.sampled_from(WIDTHS), min_size=1, max_size=4, unique=True))
        sensitivity[f"layer{i}"] = {b: draw(losses) for b in widths}
        cost[f"layer{i}"] = {b: draw(st.integers(0, 50)) for b in widths}
    return sensitivity, cost


def fold(sensitivity, bits) -> float:
    """The loss of ``bits``: sensitivities added in layer order, one float64 addition at a time."""
    loss = 0.0
    for layer, b in bits.items():
        loss += sensitivity[layer][b]
    return loss


def brute_force(sensitivity, cost) -> list[tuple[dict, int, float]]:
    """Every allocation as ``(bits, cost, loss)``."""
    layers = list(sensitivity)
    out = []
    for combo in itertools.product(*(list(sensitivity[layer]) for layer in layers)):
        bits = dict(zip(layers, combo))
        out.append((bits, sum(cost[layer][b] for layer, b in bits.items()), fold(sensitivity, bits)))
    return out


def brute_pareto(points) -> set[tuple[int, float]]:
    """Distinct ``(cost, loss)`` pairs that no other pair matches or beats in both."""
    pairs = np.array(sorted({(c, loss) for _, c, loss in points}), dtype=object)
    cost, loss = pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.float64)
    weakly_better = (cost[:, None] <= cost[None, :]) & (loss[:, None] <= loss[None, :])
    np.fill_diagonal(weakly_better, False)  # pairs are distinct, so "weakly better and other" is "dominates"
    return {(int(c), float(v)) for c, v, dominated in zip(cost, loss, weakly_better.any(axis=0)) if not dominated}


def check_consistent(result: Allocation, sensitivity, cost):
    assert list(result.bits) == list(sensitivity)
    assert all(b in sensitivity[layer] for layer, b in result.bits.items())
    assert result.cost == sum(cost[layer][b] for layer, b in result.bits.items())
    assert result.loss == fold(sensitivity, result.bits)
    assert type(result.cost) is int and type(result.loss) is float
    assert all(type(b) is int for b in result.bits.values())


@settings(max_examples=60, deadline=None)
@given(instances(), st.data())
def test_allocate_matches_brute_force(instance, data):
    sensitivity, cost = instance
    points = brute_force(sensitivity, cost)
    costs = [c for _, c, _ in points]
    budget = data.draw(st.integers(min(costs), max(costs)), label="budget")
    result = allocate(sensitivity, cost, budget)
    check_consistent(result, sensitivity, cost)
    assert result.cost <= budget
    best = min(loss for _, c, loss in points if c <= budget)
    assert math.isclose(result.loss, best, rel_tol=1e-12, abs_tol=1e-12)


@settings(max_examples=60, deadline=None)
@given(instances(exact_losses), st.data())
def test_allocate_exact_loss_and_cheaper_on_ties(instance, data):
    sensitivity, cost = instance
    points = brute_force(sensitivity, cost)
    costs = [c for _, c, _ in points]
    budget = data.draw(st.integers(min(costs), max(costs) + 5), label="budget")
    result = allocate(sensitivity, cost, budget)
    check_consistent(result, sensitivity, cost)
    best = min(loss for _, c, loss in points if c <= budget)
    assert result.loss == best
    assert result.cost == min(c for _, c, loss in points if loss == best)


@settings(max_examples=60, deadline=None)
@given(instances())
def test_frontier_is_the_brute_force_pareto_set(instance):
    sensitivity, cost = instance
    frontier = pareto_frontier(sensitivity, cost)
    for point in frontier:
        check_consistent(point, sensitivity, cost)
    pairs = [(a.cost, a.loss) for a in frontier]
    assert all(c1 < c2 and l1 > l2 for (c1, l1), (c2, l2) in zip(pairs, pairs[1:]))
    points = brute_force(sensitivity, cost)
    assert set(pairs) == brute_pareto(points)
    assert len(pairs) == len(set(pairs))
    cheapest = min(c for _, c, _ in points)
    assert pairs[0] == (cheapest, min(loss for _, c, loss in points if c == cheapest))
    assert pairs[-1][1] == min(loss for _, _, loss in points)


@settings(max_examples=60, deadline=None)
@given(instances(exact_losses), st.integers(2, 7))
def test_budget_sweep_points_are_on_the_brute_force_frontier(instance, count):
    sensitivity, cost = instance
    sweep = budget_sweep(sensitivity, cost, count)
    points = brute_force(sensitivity, cost)
    pareto = brute_pareto(points)
    pairs = [(a.cost, a.loss) for a in sweep]
    assert 1 <= len(pairs) <= count and set(pairs) <= pareto
    assert all(c1 < c2 and l1 > l2 for (c1, l1), (c2, l2) in zip(pairs, pairs[1:]))
    assert pairs[0] == min(pareto) and pairs[-1][1] == min(loss for _, _, loss in points)  # both ends reached
    for point in sweep:
        check_consistent(point, sensitivity, cost)


def test_budget_sweep_rejects_a_bad_count():
    with pytest.raises(ValueError, match="count must be an int >= 2, got 1"):
        budget_sweep({"a": {4: 1.0}}, {"a": {4: 4}}, count=1)


@settings(max_examples=60, deadline=None)
@given(instances(exact_losses))
def test_budget_at_a_frontier_point(instance):
    sensitivity, cost = instance
    frontier = pareto_frontier(sensitivity, cost)
    for previous, point in zip([None, *frontier], frontier):
        at = allocate(sensitivity, cost, point.cost)
        assert (at.cost, at.loss) == (point.cost, point.loss)
        if previous is not None:
            below = allocate(sensitivity, cost, point.cost - 1)
            assert (below.cost, below.loss) == (previous.cost, previous.loss)


def test_rounding_tie_resolves_to_the_cheaper():
    # 0.1 + 0.2 = 0.30000000000000004 > 0.3, yet both give 1.3 once 1.0 is added: a tie made by rounding. The
    # dearer partial sum 0.3 is the better one before the last layer; the cheaper must still win at the end.
    sensitivity = {"a": {2: 0.1, 4: 0.3}, "b": {2: 0.2, 4: 0.0}, "c": {8: 1.0}}
    cost = {"a": {2: 5, 4: 0}, "b": {2: 0, 4: 10}, "c": {8: 0}}
    assert (0.1 + 0.2) + 1.0 == 0.3 + 1.0
    assert allocate(sensitivity, cost, 14) == Allocation(bits={"a": 2, "b": 2, "c": 8}, cost=5, loss=1.3)
    assert allocate(sensitivity, cost, 15) == Allocation(bits={"a": 2, "b": 4, "c": 8}, cost=15, loss=1.1)


def test_doc_example_and_layer_order():
    sensitivity = {"conv": {2: 0.75, 4: 0.25, 8: 0.0}, "fc": {2: 0.5, 4: 0.125, 8: 0.0}}
    cost = {"conv": {2: 20, 4: 40, 8: 80}, "fc": {2: 40, 4: 80, 8: 160}}
    assert allocate(sensitivity, cost, 120) == Allocation(bits={"conv": 4, "fc": 4}, cost=120, loss=0.375)
    assert allocate(sensitivity, cost, 10**30).bits == {"conv": 8, "fc": 8}  # any budget beyond int64 is fine
    # fc has the larger cost range and is searched first, but the result keeps the given order
    assert list(allocate(sensitivity, cost, 60).bits) == ["conv", "fc"]


def test_numpy_integers_accepted():
    sensitivity = {"x": {np.int64(4): np.float32(0.5), 8: 0.0}}
    cost = {"x": {np.int64(4): np.int32(4), 8: np.uint64(8)}}
    assert allocate(sensitivity, cost, np.int64(7)) == Allocation(bits={"x": 4}, cost=4, loss=0.5)


def test_twelve_layers_against_vectorised_brute_force():
    rng = np.random.default_rng(0)
    widths = [2, 4, 8]
    # repeated layer sizes make many allocations cost the same (equal-size layers swapping widths)
    sizes = rng.choice([300, 1200, 4608, 36864, 147456], size=12)
    sensitivity = {f"l{i}": {b: float(rng.exponential() * 4.0**-b * n) for b in widths} for i, n in enumerate(sizes)}
    cost = {f"l{i}": {b: int(n) * b for b in widths} for i, n in enumerate(sizes)}
    total_cost, total_loss = np.zeros(()), np.zeros(())
    for layer in sensitivity:  # left fold in layer order: axis i is layer i's choice
        total_cost = total_cost[..., None] + np.array([cost[layer][b] for b in widths])
        total_loss = total_loss[..., None] + np.array([sensitivity[layer][b] for b in widths])
    total_cost, total_loss = total_cost.ravel(), total_loss.ravel()
    assert total_loss.size == 3**12
    lo, hi = int(total_cost.min()), int(total_cost.max())
    for budget in [lo, lo + 1, lo + (hi - lo) // 7, (lo + hi) // 2, hi - 12345, hi]:
        result = allocate(sensitivity, cost, budget)
        check_consistent(result, sensitivity, cost)
        fits = total_cost <= budget
        best = total_loss[fits].min()
        assert result.cost <= budget
        assert math.isclose(result.loss, best, rel_tol=1e-12)
        if result.loss == best:  # the sums agree to the last bit (nearly always): then the cheapest must win
            assert result.cost == total_cost[fits & (total_loss == best)].min()
    frontier = pareto_frontier(sensitivity, cost)
    assert frontier[-1].loss == total_loss.min() and frontier[0].cost == lo


def test_sixty_layers_is_fast():
    rng = np.random.default_rng(1)
    widths = [2, 3, 4, 6, 8]
    sizes = np.exp(rng.uniform(np.log(300), np.log(2e6), 60)).astype(int)
    scales = rng.exponential(size=60) * sizes  # one per layer: more bits always lose less
    sensitivity = {f"l{i}": {b: float(scale * 4.0**-b) for b in widths} for i, scale in enumerate(scales)}
    cost = {f"l{i}": {b: int(n) * b for b in widths} for i, n in enumerate(sizes)}
    lo, hi = sum(min(c.values()) for c in cost.values()), sum(max(c.values()) for c in cost.values())
    start = time.perf_counter()
    for budget in [lo, (3 * lo + hi) // 4, (lo + hi) // 2, hi]:
        result = allocate(sensitivity, cost, budget)
        assert lo <= result.cost <= budget
    assert time.perf_counter() - start < 5.0  # about 0.02 s; generous for a loaded machine
    assert allocate(sensitivity, cost, hi).bits == {layer: 8 for layer in sensitivity}


@pytest.mark.parametrize(
    ("sensitivity", "cost", "match"),
    [
        ({}, {}, "at least one layer"),
        ({"a": {4: 1.0}}, {"b": {4: 1}}, "'a' is in sensitivity but not in cost"),
        ({"a": {4: 1.0}}, {"a": {4: 1}, "b": {4: 1}}, "'b' is in cost but not in sensitivity"),
        ({"a": {4: 1.0}}, {"a": {8: 1}}, "layer 'a': bits=4 is in sensitivity but not in cost"),
        ({"a": {4: 1.0}}, {"a": {4: 1, 8: 2}}, "layer 'a': bits=8 is in cost but not in sensitivity"),
        ({"a": {}}, {"a": {}}, "layer 'a' has no candidate"),
        ({"a": {4: 1.0}}, {"a": {4: -1}}, r"layer 'a', bits=4: cost must be a non-negative integer, got -1"),
        ({"a": {4: 1.0}}, {"a": {4: 3.0}}, r"layer 'a', bits=4: cost .* got 3\.0"),
        ({"a": {4: 1.0}}, {"a": {4: True}}, r"layer 'a', bits=4: cost .* got True"),
        ({"a": {4: float("nan")}}, {"a": {4: 1}}, "layer 'a', bits=4: sensitivity must be a finite number, got nan"),
        ({"a": {4: float("inf")}}, {"a": {4: 1}}, "layer 'a', bits=4: sensitivity .* got inf"),
        ({"a": {4: True}}, {"a": {4: 1}}, "layer 'a', bits=4: sensitivity .* got True"),
        ({"a": {4.0: 1.0}}, {"a": {4.0: 1}}, "bit widths must be non-negative integers, got 4.0"),
        ({"a": {True: 1.0}}, {"a": {True: 1}}, "bit widths must be non-negative integers, got True"),
        ({"a": {4: 1.0}, "b": {4: 1.0}}, {"a": {4: 2**62}, "b": {4: 2**62}}, "exceeds int64"),
        ([("a", {4: 1.0})], {"a": {4: 1}}, "sensitivity must be a mapping"),
    ],
)
def test_invalid_input(sensitivity, cost, match):
    with pytest.raises(ValueError, match=match):
        pareto_frontier(sensitivity, cost)
    with pytest.raises(ValueError, match=match):
        allocate(sensitivity, cost, 10**6)


def test_invalid_budget():
    sensitivity = {"a": {4: 1.0, 8: 0.0}, "b": {4: 2.0, 8: 0.0}}
    cost = {"a": {4: 4, 8: 8}, "b": {4: 3, 8: 6}}
    with pytest.raises(ValueError, match="budget=6 is below the minimum achievable cost 7"):
        allocate(sensitivity, cost, 6)
    with pytest.raises(ValueError, match="budget=-1 is below the minimum achievable cost 7"):
        allocate(sensitivity, cost, -1)
    for bad in (7.0, True, "7", None):
        with pytest.raises(ValueError, match="budget must be an integer"):
            allocate(sensitivity, cost, bad)
    assert allocate(sensitivity, cost, 7).bits == {"a": 4, "b": 4}
