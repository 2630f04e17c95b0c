"""INQ: the rule against a float64 loop over levels, exact exponents by fractions, exact freeze counts against numpy,
frozen weights bit-identical through SGD / Adam / AdamW, and the full loop ending with every weight in P."""

from collections.abc import Callable
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from lowbit.compress.inq import INQ, incremental_quantize, power_of_two_levels, quantize_power_of_two
from tests.compress.small_models import model_and_input, weights_of


pytestmark = pytest.mark.usefixtures("one_thread")  # small problems: threads only add noise


# ---------------------------------------------------------------------------------------------------- references


def reference_quantize(w: np.ndarray, n1: int, n2: int) -> np.ndarray:
    """The paper's intervals, level pair by level pair, in float64: [(α+β)/2, 3β/2) → β; below 2^(n2−1) → 0;
    from 1.5·2^n1 on → 2^n1 (saturation). Asserts the intervals assign every element exactly once."""
    a = np.abs(w.astype(np.float64))
    levels = [0.0] + [2.0**n for n in range(n2, n1 + 1)]
    out = np.full(a.shape, np.nan)
    hits = np.zeros(a.shape, dtype=int)
    below = a < levels[1] / 2
    out[below], hits[below] = 0.0, hits[below] + 1
    for alpha, beta in zip(levels, levels[1:]):
        inside = (a >= (alpha + beta) / 2) & (a < 1.5 * beta)
        out[inside], hits[inside] = beta, hits[inside] + 1
    above = a >= 1.5 * levels[-1]
    out[above], hits[above] = levels[-1], hits[above] + 1
    assert np.all(hits == 1)
    return np.where(np.signbit(w), -out, out)


def reference_levels(s: float, bits: int) -> tuple[int, int]:
    """n1 = the largest n with 2^n ≤ 4s/3, in exact rationals; n2 = n1 + 1 − 2^(b−1)/2."""
    target = Fraction(4) * Fraction(s) / 3
    n = 0
    while Fraction(2) ** n > target:
        n -= 1
    while Fraction(2) ** (n + 1) <= target:
        n += 1
    return n, n + 1 - (2 ** (bits - 1)) // 2


def in_levels(w: np.ndarray, n1: int, n2: int) -> np.ndarray:
    """Elementwise: w is 0 or ±2^n with n2 ≤ n ≤ n1 (frexp: 2^n = 0.5·2^(n+1))."""
    mantissa, exponent = np.frexp(np.abs(w.astype(np.float64)))
    return (w == 0) | ((mantissa == 0.5) & (exponent - 1 >= n2) & (exponent - 1 <= n1))


# --------------------------------------------------------------------------------------------------- pure math


@pytest.mark.parametrize(
    "s, bits, expected",
    [
        (1.0, 5, (0, -7)),  # 4/3 → 0
        (0.75, 5, (0, -7)),  # 4s/3 = 1 exactly
        (np.nextafter(0.75, 0.0), 5, (-1, -8)),
        (1.5, 3, (1, 0)),  # 4s/3 = 2 exactly
        (1.4999, 3, (0, -1)),
        (0.1, 2, (-3, -3)),  # 0.133 → 2^-3 = 0.125
        (0.09375, 4, (-3, -6)),  # 4s/3 = 0.125 exactly
        (5.0, 4, (2, -1)),  # 6.67 → 4
        (3.0 * 2.0**-40, 8, (-38, -101)),  # 4s/3 = 2^-38; 2^(8−1)/2 = 64
        (3.0 * 2.0**-1074, 2, (-1072, -1072)),  # subnormal s, 4s/3 = 2^-1072 exactly
        (np.finfo(np.float64).max / 2, 3, (1023, 1022)),
    ],
)
def test_levels_hand_picked(s: float, bits: int, expected: tuple[int, int]) -> None:
    assert power_of_two_levels(float(s), bits) == expected
    assert reference_levels(float(s), bits) == expected


def test_levels_match_exact_rationals() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([10.0 ** rng.uniform(-6, 3, 300), 0.75 * 2.0 ** np.arange(-20, 20)])
    values = np.concatenate([values, np.nextafter(values, 0.0), np.nextafter(values, np.inf)])
    for s in values:
        for bits in (2, 5, 8):
            assert power_of_two_levels(float(s), bits) == reference_levels(float(s), bits), (s, bits)


def boundary_inputs(n1: int, n2: int, dtype: torch.dtype) -> torch.Tensor:
    """Every interval edge of the rule, its neighbours in ``dtype``, random magnitudes, saturation, zeros."""
    levels = [0.0] + [2.0**n for n in range(n2, n1 + 1)]
    edges = [(alpha + beta) / 2 for alpha, beta in zip(levels, levels[1:])] + [1.5 * beta for beta in levels[1:]]
    edge = torch.tensor(edges, dtype=torch.float64).to(dtype)
    rng = np.random.default_rng(n1 - n2)
    random = torch.from_numpy(2.0 ** rng.uniform(n2 - 3, n1 + 2, 400)).to(dtype)
    values = torch.cat(
        [
            edge,
            torch.nextafter(edge, torch.zeros_like(edge)),
            torch.nextafter(edge, torch.full_like(edge, float("inf"))),
            torch.tensor(levels + [2.0 ** (n1 + 5), float("inf"), 0.0], dtype=torch.float64).to(dtype),
            random,
        ]
    )
    return torch.cat([values, -values])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n1, n2", [(0, -7), (0, 0), (-3, -5), (4, -3), (-1, -8)])
def test_rule_matches_reference(dtype: torch.dtype, n1: int, n2: int) -> None:
    w = boundary_inputs(n1, n2, dtype)
    q = quantize_power_of_two(w, n1, n2)
    assert q.dtype == dtype and q.shape == w.shape
    expected = reference_quantize(w.double().numpy(), n1, n2)
    np.testing.assert_array_equal(q.double().numpy(), expected)
    assert torch.equal(quantize_power_of_two(w.reshape(-1, 2).t(), n1, n2), q.reshape(-1, 2).t())  # any layout


def test_rule_special_values() -> None:
    w = torch.tensor([float("nan"), float("-inf"), -0.0, 0.0])
    q = quantize_power_of_two(w, 1, -2)
    assert torch.isnan(q[0]) and q[1].item() == -2.0
    assert q[2].item() == 0.0 and torch.signbit(q[2]) and not torch.signbit(q[3])
    assert not quantize_power_of_two(torch.ones(3, requires_grad=True), 0, -1).requires_grad


@given(
    st.lists(st.floats(-4.0, 4.0, width=32), min_size=1, max_size=64),
    st.integers(-6, 2),
    st.integers(0, 6),
)
def test_rule_properties(values: list[float], n1: int, span: int) -> None:
    n2 = n1 - span
    w = torch.tensor(values, dtype=torch.float32)
    q = quantize_power_of_two(w, n1, n2)
    assert np.all(in_levels(q.numpy(), n1, n2))  # lands in P
    assert torch.equal(quantize_power_of_two(q, n1, n2), q)  # P is fixed
    assert torch.equal(quantize_power_of_two(-w, n1, n2), -q)  # odd
    order = torch.argsort(w, stable=True)
    assert torch.all(q[order].diff() >= 0)  # monotone


# --------------------------------------------------------------------------------------------------- INQ state




def oracle_newly_frozen(weight: np.ndarray, frozen: np.ndarray, portion: float) -> np.ndarray:
    """Flat indices to freeze: among free positions, order by (−|w|, index) with lexsort; take the missing count."""
    flat, done = np.abs(weight.astype(np.float64)).ravel(), frozen.ravel()
    free = np.flatnonzero(~done)
    order = free[np.lexsort((free, -flat[free]))]
    return order[: round(portion * flat.size) - int(done.sum())]


PORTIONS = [0.2, 0.5, 0.75, 0.875, 0.9, 1.0]


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_step_freezes_exact_counts_largest_first(kind: str) -> None:
    model, x = model_and_input(kind)
    start = weights_of(model)
    inq = INQ(model, bits=5)
    assert inq.levels == {n: reference_levels(float(np.abs(w).max()), 5) for n, w in start.items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    inq.attach(optimizer)
    frozen = {n: np.zeros(w.shape, dtype=bool) for n, w in start.items()}
    for stage, portion in enumerate(PORTIONS):
        before = weights_of(model)
        expected = {n: oracle_newly_frozen(w, frozen[n], portion) for n, w in before.items()}
        inq.step(portion)
        after = weights_of(model)
        for n, w in after.items():
            newly = np.zeros(w.size, dtype=bool)
            newly[expected[n]] = True
            frozen[n] |= newly.reshape(w.shape)
            np.testing.assert_array_equal(inq.frozen[n].numpy(), frozen[n])
            assert int(frozen[n].sum()) == round(portion * w.size)
            n1, n2 = inq.levels[n]
            np.testing.assert_array_equal(w.ravel()[newly], reference_quantize(before[n].ravel()[newly], n1, n2))
            np.testing.assert_array_equal(w[~frozen[n]], before[n][~frozen[n]])  # free weights untouched
        assert inq.frozen_fraction().layers == {n: round(portion * w.size) / w.size for n, w in after.items()}
        for step in range(3):  # retrain a little so the next ranking is of moved weights
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x), torch.full((32, 3), 0.1 * (stage + step))).backward()
            optimizer.step()
    inq.detach()
    for n, w in weights_of(model).items():
        assert np.all(in_levels(w, *inq.levels[n]))
    assert inq.quantized_fraction() == 1.0


def test_ties_broken_by_flat_index() -> None:
    layer = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -1.0, 0.5], [1.0, -0.5, 1.0]]))
    inq = INQ(layer, bits=3)
    inq.step(0.5)  # four |w| = 1 at flat 0, 1, 3, 5: the first three are frozen
    assert inq.frozen[""].reshape(-1).tolist() == [True, True, False, True, False, False]
    inq.step(4 / 6)  # then flat 5
    assert inq.frozen[""].reshape(-1).tolist() == [True, True, False, True, False, True]


def test_many_ties_follow_lexsort() -> None:
    """Hundreds of equal magnitudes: torch's unstable sort would reorder them (a sensitivity check on the tie rule)."""
    layer = nn.Linear(30, 20, bias=False)
    values = np.random.default_rng(3).choice([0.25, -0.25, 0.5, -0.5, 1.0], size=(20, 30)).astype(np.float32)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(values))
    inq = INQ(layer, bits=4)
    frozen = np.zeros(values.shape, dtype=bool)
    for portion in PORTIONS:
        newly = oracle_newly_frozen(values, frozen, portion)
        frozen.ravel()[newly] = True
        inq.step(portion)
        np.testing.assert_array_equal(inq.frozen[""].numpy(), frozen)


def test_stage_ends_with_frozen_values_whatever_train_did() -> None:
    model, _ = model_and_input("mlp")

    def train(m: nn.Module, stage: int) -> None:  # writes to every weight, bypassing gradients and optimizers
        with torch.no_grad():
            for module in m.modules():
                if isinstance(module, nn.Linear):
                    module.weight.mul_(1.01)

    records = incremental_quantize(model, 5, train, (0.5, 1.0))
    assert records[0]["quantized"] == pytest.approx(records[0]["frozen"]) and records[0]["frozen"] == 0.5
    assert records[1]["quantized"] == 1.0


def test_same_portion_is_noop_and_bfloat16_weights() -> None:
    model, _ = model_and_input("mlp")
    model = model.to(torch.bfloat16)
    inq = INQ(model, bits=4)
    inq.step(0.5)
    frozen = inq.frozen
    inq.step(0.5)
    assert all(torch.equal(frozen[n], m) for n, m in inq.frozen.items())
    inq.step(1.0)
    for n, module in model.named_modules():
        if isinstance(module, nn.Linear):
            assert module.weight.dtype == torch.bfloat16
            assert np.all(in_levels(module.weight.double().detach().numpy(), *inq.levels[n]))


# ----------------------------------------------------------------------------------------------- through training

OPTIMIZERS: dict[str, Callable[[nn.Module], torch.optim.Optimizer]] = {
    "sgd_momentum": lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2),
    "adam": lambda m: torch.optim.Adam(m.parameters(), lr=1e-2, weight_decay=1e-2),
    "adamw": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=1e-2),
}


def train_steps(
    model: nn.Module, x: torch.Tensor, optimizer: torch.optim.Optimizer, steps: int, seed: int, reload_at: int = -1
) -> None:
    generator = torch.Generator().manual_seed(seed)
    for step in range(steps):
        noise = torch.randn(x.shape, generator=generator)
        target = torch.randn(x.shape[0], 3, generator=generator)
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x + noise), target).backward()
        optimizer.step()
        if step == reload_at:  # new state tensor objects mid-run: the hooks must look them up again
            optimizer.load_state_dict(optimizer.state_dict())


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("warm_steps", [0, 5])
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_frozen_bit_identical_through_optimizer(name: str, warm_steps: int, kind: str) -> None:
    model, x = model_and_input(kind)
    optimizer = OPTIMIZERS[name](model)
    train_steps(model, x, optimizer, warm_steps, seed=1)  # warm: momentum / moments nonzero where we freeze
    inq = INQ(model, bits=5)
    inq.attach(optimizer)
    inq.step(0.75)
    masks = {n: m.numpy() for n, m in inq.frozen.items()}
    before = weights_of(model)
    train_steps(model, x, optimizer, 20, seed=2, reload_at=9)
    for n, weight in weights_of(model).items():
        frozen = masks[n]
        assert weight[frozen].tobytes() == before[n][frozen].tobytes()  # bit-identical
        assert np.mean(weight[~frozen] != before[n][~frozen]) > 0.9  # free weights did train
        param = model.get_submodule(n).weight
        assert torch.all(param.grad[inq.frozen[n]] == 0)
        for value in optimizer.state[param].values():
            if value.shape == param.shape:
                assert torch.all(value[inq.frozen[n]] == 0)
    inq.detach()


def test_without_step_hook_momentum_and_decay_move_frozen_weights() -> None:
    """Control: the check above is sensitive — masking gradients alone lets weight decay and momentum through."""
    model, x = model_and_input("mlp")
    optimizer = OPTIMIZERS["sgd_momentum"](model)
    train_steps(model, x, optimizer, 5, seed=1)
    inq = INQ(model, bits=5)
    inq.attach()  # gradient hooks only
    inq.step(0.75)
    before = weights_of(model)
    train_steps(model, x, optimizer, 1, seed=2)
    assert any(
        np.any(w[inq.frozen[n].numpy()] != before[n][inq.frozen[n].numpy()]) for n, w in weights_of(model).items()
    )
    inq.detach()


def test_detach_removes_hooks_and_apply_restores() -> None:
    model, x = model_and_input("mlp")
    optimizer = OPTIMIZERS["adam"](model)
    inq = INQ(model, bits=4)
    inq.attach(optimizer)
    inq.attach(optimizer)  # twice: no second hook
    inq.step(0.5)
    quantized = weights_of(model)
    train_steps(model, x, optimizer, 2, seed=1)
    inq.detach()
    train_steps(model, x, optimizer, 2, seed=2)
    masks = {n: m.numpy() for n, m in inq.frozen.items()}
    for n, w in weights_of(model).items():
        assert np.mean(w[masks[n]] != quantized[n][masks[n]]) > 0.9  # no hook holds them now
        assert torch.any(model.get_submodule(n).weight.grad[inq.frozen[n]] != 0)  # gradient hook gone too
    inq.apply()  # masks and values outlive the hooks
    for n, w in weights_of(model).items():
        np.testing.assert_array_equal(w[masks[n]], quantized[n][masks[n]])


# -------------------------------------------------------------------------------------------------- the loop


@pytest.mark.parametrize("name", ["sgd_momentum", "adam"])
def test_incremental_quantize_ends_in_levels(name: str) -> None:
    model, x = model_and_input("cnn")
    start = weights_of(model)
    levels = {n: reference_levels(float(np.abs(w).max()), 3) for n, w in start.items()}
    optimizer = OPTIMIZERS[name](model)
    biases = {n: model.get_submodule(n).bias.detach().clone() for n in start}
    frozen_values: dict[str, dict[int, float]] = {n: {} for n in start}
    stages: list[int] = []

    def train(m: nn.Module, stage: int) -> None:
        stages.append(stage)
        for n, w in weights_of(m).items():  # record what each stage froze (values that must never change again)
            n1, n2 = levels[n]
            now = set(np.flatnonzero(in_levels(w, n1, n2)).tolist())
            for i in now - set(frozen_values[n]):
                frozen_values[n][i] = float(w.ravel()[i])
        for step in range(5):
            train_steps(m, x, optimizer, 1, seed=10 * stage + step)
            for n, w in weights_of(m).items():
                for i, value in frozen_values[n].items():
                    assert w.ravel()[i] == value

    records = incremental_quantize(model, 3, train, optimizer=optimizer)
    assert stages == [0, 1, 2, 3]
    assert [r["portion"] for r in records] == [0.5, 0.75, 0.875, 1.0]
    sizes = {n: w.size for n, w in start.items()}
    for record in records:
        counts = {n: round(record["portion"] * s) for n, s in sizes.items()}
        assert record["layers"] == {n: counts[n] / sizes[n] for n in sizes}
        assert record["frozen"] == pytest.approx(sum(counts.values()) / sum(sizes.values()))
        assert record["quantized"] >= record["frozen"]
    assert records[-1]["frozen"] == 1.0 and records[-1]["quantized"] == 1.0
    for n, w in weights_of(model).items():
        assert np.all(in_levels(w, *levels[n])), n
        assert len(np.unique(np.abs(w))) <= 1 + 2 ** (3 - 2)  # b = 3: {0, 2^n2, 2^n1}
    assert any(not torch.equal(model.get_submodule(n).bias, b) for n, b in biases.items())  # biases trained
    # hooks gone after the loop: one more step moves quantized weights off P
    train_steps(model, x, optimizer, 1, seed=99)
    assert not all(np.all(in_levels(w, *levels[n])) for n, w in weights_of(model).items())


def test_incremental_quantize_detaches_on_error() -> None:
    model, x = model_and_input("mlp")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def train(m: nn.Module, stage: int) -> None:
        raise RuntimeError("boom")

    levels = {n: reference_levels(float(np.abs(w).max()), 5) for n, w in weights_of(model).items()}
    with pytest.raises(RuntimeError, match="boom"):
        incremental_quantize(model, 5, train, optimizer=optimizer)
    assert all(np.mean(in_levels(w, *levels[n])) == 0.5 for n, w in weights_of(model).items())
    train_steps(model, x, optimizer, 1, seed=1)  # no hook left: frozen weights move off P
    assert all(np.mean(in_levels(w, *levels[n])) < 0.25 for n, w in weights_of(model).items())


def test_errors() -> None:
    model, _ = model_and_input("mlp")
    for bad in (1, 9, True, 4.0, "4"):
        with pytest.raises(ValueError, match=rf"bits must be an int in \[2, 8\], got {bad!r}"):
            INQ(model, bad)
    for bad in (0.0, -1.0, float("inf"), float("nan"), True):
        with pytest.raises(ValueError, match="max_abs must be a finite float > 0"):
            power_of_two_levels(bad, 4)
    with pytest.raises(ValueError, match="outside float64"):
        power_of_two_levels(5e-324, 4)
    with pytest.raises(ValueError, match="n2 <= n1"):
        quantize_power_of_two(torch.ones(2), -1, 0)
    with pytest.raises(ValueError, match="n1 must be an int"):
        quantize_power_of_two(torch.ones(2), 1.0, 0)
    with torch.no_grad():
        model[2].weight.zero_()
    with pytest.raises(ValueError, match="layer '2' has all-zero weights"):
        INQ(model, 4)
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="layer '2' has non-finite"):
        INQ(model, 4)
    with pytest.raises(ValueError, match="no module of types"):
        INQ(nn.ReLU(), 4)
    inq = INQ(nn.Linear(4, 4), 4)
    for bad in (0.0, 1.5, -0.5, True, float("nan")):
        with pytest.raises(ValueError, match=rf"portion must be a float in \(0, 1\], got {bad!r}"):
            inq.step(bad)
    inq.step(0.5)
    with pytest.raises(ValueError, match="portion must not decrease: got 0.25 after 0.5"):
        inq.step(0.25)
    train = lambda m, i: None  # noqa: E731
    layer = nn.Linear(4, 4)
    with pytest.raises(ValueError, match=r"portions\[1\] must be a float in \(0, 1\], got 1.5"):
        incremental_quantize(layer, 4, train, (0.5, 1.5))
    with pytest.raises(ValueError, match="portions must increase strictly, got 0.5 then 0.5 at 1"):
        incremental_quantize(layer, 4, train, (0.5, 0.5, 1.0))
    with pytest.raises(ValueError, match="portions must end at 1.0, got 0.75"):
        incremental_quantize(layer, 4, train, (0.5, 0.75))
    with pytest.raises(ValueError, match="portions must not be empty"):
        incremental_quantize(layer, 4, train, ())
