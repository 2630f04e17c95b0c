"""choose_bits: budgets respected, the allocation optimal against brute force over every combination, and the
recipe it returns applied by PTQ and QAT."""

import itertools
import math
import warnings

import pytest
import torch
from torch import nn

import lowbit
from lowbit import qat
from lowbit.mixed import average_bits, choose_bits, mixed_recipe, prepare_subject
from lowbit.nn.qat_layers import QATLayer

pytestmark = pytest.mark.usefixtures("one_thread")

BITS = (2, 4, 8)
WEIGHTS = {"0": 8 * 24, "2": 24 * 16, "4": 16 * 4}  # also the MACs per sample of each Linear
FIXED_BYTES = 4 * (24 + 16 + 4) + 8 * (24 + 16 + 4)  # float32 biases; a scale and a zero point per output


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    g = torch.Generator().manual_seed(1)
    return model, [torch.randn(16, 8, generator=g) for _ in range(2)]


def hand_bytes(bits):
    return sum(math.ceil(WEIGHTS[n] * b / 8) for n, b in bits.items()) + FIXED_BYTES


def combos(candidates=BITS):
    names = list(WEIGHTS)
    for choice in itertools.product(candidates, repeat=len(names)):
        yield dict(zip(names, choice))


def total_loss(table, bits):
    return sum(table.loss[n][b] for n, b in bits.items())


def best_within(table, fits):
    """The least predicted loss (and the allocations reaching it) among the combinations ``fits`` accepts."""
    feasible = [(total_loss(table, bits), bits) for bits in combos() if fits(bits)]
    assert feasible
    least = min(loss for loss, _ in feasible)
    return least, [bits for loss, bits in feasible if math.isclose(loss, least, rel_tol=1e-12, abs_tol=1e-300)]


# --- budgets and optimality ---------------------------------------------------------------------------------


@pytest.mark.parametrize("measure", ["sqnr", "kl", "entropy"])
@pytest.mark.parametrize("avg", [2.0, 3.0, 4.6, 6.5, 8.0])
def test_average_bits_budget_is_respected_and_optimal(problem, measure, avg):
    model, batches = problem
    result = choose_bits(model, measure, batches, bits=BITS, budget_avg_bits=avg)
    bits = result.allocation.bits
    assert list(bits) == list(WEIGHTS)
    total = sum(WEIGHTS.values())
    mean = sum(WEIGHTS[n] * b for n, b in bits.items()) / total
    assert result.avg_bits == pytest.approx(mean, rel=1e-12)
    assert mean <= avg
    assert result.allocation.cost == sum(WEIGHTS[n] * b for n, b in bits.items())
    assert result.predicted_bytes == hand_bytes(bits)
    assert result.budget == {"kind": "avg_bits", "value": avg, "cost_limit": math.floor(avg * total)}
    least, winners = best_within(result.table, lambda c: sum(WEIGHTS[n] * b for n, b in c.items()) <= avg * total)
    assert result.allocation.loss == pytest.approx(least, rel=1e-12, abs=1e-300)
    assert bits in winners
    assert result.allocation.loss == pytest.approx(total_loss(result.table, bits), rel=1e-12, abs=1e-300)


@pytest.mark.parametrize("codes", [170, 333, 500])
def test_byte_budget_is_respected(problem, codes):
    model, batches = problem
    budget = FIXED_BYTES + codes
    result = choose_bits(model, "sqnr", batches, bits=BITS, budget_bytes=budget)
    assert result.predicted_bytes == hand_bytes(result.allocation.bits)
    assert result.predicted_bytes <= budget
    assert result.budget["kind"] == "bytes" and result.budget["value"] == budget
    # optimal under the allocator's documented bound: 8 bits a byte above the fixed part, less 7 bits a layer
    # set aside for rounding each layer's codes up to whole bytes
    least, _ = best_within(result.table, lambda c: sum(WEIGHTS[n] * b for n, b in c.items()) <= 8 * codes - 7 * 3)
    assert result.allocation.loss == pytest.approx(least, rel=1e-12, abs=1e-300)


def test_byte_budget_is_optimal_when_the_codes_fill_whole_bytes(problem):
    # every layer here holds a multiple of 8 weights, so its codes fill whole bytes at any bit width and the
    # per-layer rounding the allocator sets aside never happens: a budget equal to an allocation's exact size
    # should allow that allocation
    model, batches = problem
    uniform = dict.fromkeys(WEIGHTS, 4)
    budget = hand_bytes(uniform)
    result = choose_bits(model, "sqnr", batches, bits=BITS, budget_bytes=budget)
    least, _ = best_within(result.table, lambda c: hand_bytes(c) <= budget)
    assert least <= total_loss(result.table, uniform)
    assert result.allocation.loss == pytest.approx(least, rel=1e-12, abs=1e-300)


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.55, 1.0])
def test_bops_budget_is_respected_and_optimal(problem, fraction):
    model, batches = problem
    bops = {n: {b: WEIGHTS[n] * b * 32 for b in BITS} for n in WEIGHTS}  # weight-only "w8": float activations
    low = sum(row[2] for row in bops.values())
    high = sum(row[8] for row in bops.values())
    budget = int(low + fraction * (high - low))
    result = choose_bits(model, "sqnr", batches, bits=BITS, budget_bops=budget)
    bits = result.allocation.bits
    cost = sum(bops[n][b] for n, b in bits.items())
    assert result.allocation.cost == cost
    assert cost <= budget
    assert result.budget == {"kind": "bops", "value": budget, "cost_limit": budget}
    least, winners = best_within(result.table, lambda c: sum(bops[n][b] for n, b in c.items()) <= budget)
    assert result.allocation.loss == pytest.approx(least, rel=1e-12, abs=1e-300)
    assert bits in winners


def test_more_budget_never_increases_the_loss(problem):
    model, batches = problem
    losses, used = [], []
    for avg in [2.0 + 0.25 * i for i in range(25)]:
        result = choose_bits(model, "sqnr", batches[:1], bits=BITS, budget_avg_bits=avg)
        losses.append(result.allocation.loss)
        used.append(result.avg_bits)
    assert all(a >= b for a, b in zip(losses, losses[1:]))
    assert losses[0] > losses[-1]
    assert used[0] == 2.0 and used[-1] == 8.0


def test_the_hessian_measure_is_deterministic_under_its_seed(problem):
    model, batches = problem
    one = choose_bits(model, "hessian", batches, bits=BITS, budget_avg_bits=4.0, samples=2, seed=3)
    two = choose_bits(model, "hessian", batches, bits=BITS, budget_avg_bits=4.0, samples=2, seed=3)
    assert one.table.values == two.table.values and one.allocation == two.allocation


# --- the frontier -------------------------------------------------------------------------------------------


def test_frontier(problem):
    model, batches = problem
    avg = 4.6
    result = choose_bits(model, "sqnr", batches, bits=BITS, budget_avg_bits=avg, frontier=True)
    points = result.frontier
    assert points
    costs = [p.cost for p in points]
    losses = [p.loss for p in points]
    assert all(a < b for a, b in zip(costs, costs[1:]))
    assert all(a > b for a, b in zip(losses, losses[1:]))
    limit = math.floor(avg * sum(WEIGHTS.values()))
    best = min(p.loss for p in points if p.cost <= limit)
    assert result.allocation.loss == pytest.approx(best, rel=1e-12)
    # each point is an allocation with its own cost and loss, and no combination beats it in both
    every = [(sum(WEIGHTS[n] * b for n, b in c.items()), total_loss(result.table, c)) for c in combos()]
    for p in points:
        assert p.cost == sum(WEIGHTS[n] * b for n, b in p.bits.items())
        assert p.loss == pytest.approx(total_loss(result.table, p.bits), rel=1e-12)
        assert not any(c <= p.cost and v < p.loss * (1 - 1e-12) for c, v in every)
    assert points[0].cost == 2 * sum(WEIGHTS.values()) and points[-1].cost == 8 * sum(WEIGHTS.values())
    assert choose_bits(model, "sqnr", batches, bits=BITS, budget_avg_bits=avg).frontier == []
    assert result.to_dict()["frontier_points"] == len(points)


def test_to_dict(problem):
    model, batches = problem
    result = choose_bits(model, "kl", batches, bits=BITS, budget_avg_bits=4.0)
    data = result.to_dict()
    assert data["measure"] == "kl"
    assert data["bits"] == result.allocation.bits
    assert data["predicted_bytes"] == hand_bytes(result.allocation.bits)
    assert data["budget"]["kind"] == "avg_bits" and data["budget"]["value"] == 4.0
    assert data["avg_bits"] == pytest.approx(result.avg_bits, abs=1e-4)


def test_average_bits(problem):
    model, _ = problem
    subject = prepare_subject(model, "w8", bits=BITS)
    assert average_bits(subject, {"0": 2, "2": 4, "4": 8}) == (192 * 2 + 384 * 4 + 64 * 8) / 640


# --- errors -------------------------------------------------------------------------------------------------


def test_exactly_one_budget(problem):
    model, batches = problem
    with pytest.raises(ValueError, match="exactly one budget.*none"):
        choose_bits(model, "sqnr", batches)
    with pytest.raises(ValueError, match="exactly one budget.*budget_bytes.*budget_avg_bits"):
        choose_bits(model, "sqnr", batches, budget_bytes=2000, budget_avg_bits=4.0)
    with pytest.raises(ValueError, match="exactly one budget"):
        choose_bits(model, "sqnr", batches, budget_avg_bits=4.0, budget_bops=10**6)


def test_a_budget_below_the_cheapest_allocation(problem):
    model, batches = problem
    cheapest = hand_bytes(dict.fromkeys(WEIGHTS, 2))
    with pytest.raises(ValueError, match="budget_avg_bits=1.5 is below the cheapest") as err:
        choose_bits(model, "sqnr", batches, bits=BITS, budget_avg_bits=1.5)
    assert f"{cheapest} bytes" in str(err.value)
    assert f"{2 * 640} code bits" in str(err.value)
    with pytest.raises(ValueError, match=f"budget_bytes={cheapest - 1} is below the cheapest") as err:
        choose_bits(model, "sqnr", batches, bits=BITS, budget_bytes=cheapest - 1)
    assert f"{cheapest} bytes" in str(err.value)
    low_bops = 640 * 2 * 32
    with pytest.raises(ValueError, match=f"budget_bops={low_bops - 1} is below the cheapest") as err:
        choose_bits(model, "sqnr", batches, bits=BITS, budget_bops=low_bops - 1)
    assert f"{low_bops} BOPs" in str(err.value)
    # exactly the cheapest is allowed
    assert choose_bits(model, "sqnr", batches, bits=BITS, budget_bops=low_bops).allocation.bits == dict.fromkeys(
        WEIGHTS, 2)


def test_unknown_measure_lists_the_measures(problem):
    model, batches = problem
    with pytest.raises(ValueError, match="sqnr, kl, hessian, entropy"):
        choose_bits(model, "mse", batches, budget_avg_bits=4.0)


def test_bops_budget_needs_batches_and_a_positive_int(problem):
    model, batches = problem
    for data in (None, []):
        with pytest.raises(ValueError, match="BOPs budget needs batches"):
            choose_bits(model, "entropy", data, budget_bops=10**6)
    for bad in (0, -3, 2.5e6, True):
        with pytest.raises(ValueError, match="budget_bops must be a positive int"):
            choose_bits(model, "sqnr", batches, budget_bops=bad)


def test_entropy_needs_no_batches(problem):
    model, _ = problem
    result = choose_bits(model, "entropy", None, bits=BITS, budget_avg_bits=4.0)
    assert result.avg_bits <= 4.0


# --- the recipe in PTQ and QAT ------------------------------------------------------------------------------


def test_quantize_applies_the_chosen_bits(problem):
    model, batches = problem
    result = choose_bits(model, "sqnr", batches, bits=BITS, budget_avg_bits=4.6)
    assert len(set(result.allocation.bits.values())) > 1  # a mixed allocation
    assert result.recipe == mixed_recipe("w8", result.allocation.bits)
    qmodel = lowbit.quantize(model, result.recipe, progress=False)
    assert qmodel.quantization_summary.quantized == result.allocation.bits


def test_first_and_last_layers_stay_at_first_last_bits(problem):
    model, batches = problem
    result = choose_bits(model, "sqnr", batches, recipe="w4a8", bits=(2, 3), budget_avg_bits=8.0)
    assert result.allocation.bits["0"] == 8 and result.allocation.bits["4"] == 8
    assert result.allocation.bits["2"] == 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = lowbit.quantize(model, result.recipe, calibration=batches, progress=False)
    assert qmodel.quantization_summary.quantized == {"0": 8, "2": 3, "4": 8}


@pytest.mark.parametrize("quantizer", ["lsq", "ste"])
def test_qat_prepare_applies_the_chosen_bits(problem, quantizer):
    model, batches = problem
    bits = {"0": 6, "2": 3, "4": 5}
    recipe = mixed_recipe("w4a4", bits)
    prepared = qat.prepare(model, recipe, qat.QATConfig.for_quantizer(quantizer), calibration=batches)
    assert prepared.quantization_summary.quantized == bits
    for name, b in bits.items():
        layer = prepared.get_submodule(name)
        assert isinstance(layer, QATLayer)
        assert layer.weight_quantizer.spec.bits == b
    # and the converted model carries integer weights at those bits
    frozen = qat.convert(prepared)
    assert {n: frozen.get_submodule(n).weight_spec.bits for n in bits} == bits


def test_qat_prepare_with_a_choose_bits_recipe_on_a_bn_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2),
                          nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 3 * 3, 5)).eval()
    batches = [torch.randn(4, 3, 8, 8) for _ in range(2)]
    result = choose_bits(model, "sqnr", batches, recipe="w4a4", bits=(2, 3), budget_avg_bits=6.0)
    fixed = result.allocation.bits
    assert fixed == {"0": 8, "3": 3, "7": 8}  # w4a4 fixes its first and last layers at 8 bits ...
    prepared = qat.prepare(model, result.recipe, "lsq", calibration=batches)
    assert {n: prepared.get_submodule(n).weight_quantizer.spec.bits for n in fixed} == fixed
    result = choose_bits(model, "sqnr", batches, recipe="w8", bits=(2, 3, 4, 8), budget_avg_bits=3.5)
    bits = result.allocation.bits
    assert set(bits) == {"0", "3", "7"}  # ... w8 does not
    prepared = qat.prepare(model, result.recipe, "lsq", calibration=batches)
    assert prepared.quantization_summary.quantized == bits
    assert {n: prepared.get_submodule(n).weight_quantizer.spec.bits for n in bits} == bits


def test_pareto_points_keep_the_widths_a_recipe_fixes():
    """With first and last layers fixed at 8 bits by the recipe, "every layer at one width" still gives a point per
    candidate width (the fixed layers keep 8), and a result without its costs gives no points instead of failing."""
    import dataclasses

    from lowbit.recipes import load_recipe

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)).eval()
    recipe = dataclasses.replace(load_recipe("w8"), first_last_bits=8)
    result = choose_bits(model, "sqnr", [torch.randn(32, 16)], recipe=recipe, bits=(2, 4), budget_avg_bits=4.0)
    points = result.pareto()
    assert [p["width"] for p in points["uniform"]] == [2, 4, 8]
    assert points["uniform"][0]["bits"] == {"0": 8, "2": 2, "4": 8}
    assert all(p["bytes"] > 0 for p in points["sweep"] + points["uniform"])
    assert dataclasses.replace(result, cost={}).pareto() is None
