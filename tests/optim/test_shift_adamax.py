"""Shift-based AdaMax against a float64 AdaMax written here and against torch.optim.Adamax (docs/math.md B5.7–B5.8)."""

import io
import math

import numpy as np
import pytest
import torch

from lowbit.optim import ShiftAdamax


class ReferenceAdamax:
    """Kingma & Ba's AdaMax in float64 numpy, with torch's ε inside the max: u = max(β2·u, |g| + ε)."""

    def __init__(self, theta: np.ndarray, beta1: float, beta2: float, eps: float) -> None:
        self.theta = theta.astype(np.float64).copy()
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.m = np.zeros_like(self.theta)
        self.u = np.zeros_like(self.theta)
        self.t = 0

    def step(self, grad: np.ndarray, lr: float) -> None:
        self.t += 1
        self.m = self.beta1 * self.m + (1 - self.beta1) * grad
        self.u = np.maximum(self.beta2 * self.u, np.abs(grad) + self.eps)
        self.theta = self.theta - (lr / (1 - self.beta1**self.t)) * self.m / self.u


def power_of_two_gradients(shape, steps, seed):
    """Gradients whose magnitude per element is a fixed power of two (signs vary): with ε = 0 and β2 < 1 the
    infinity norm u = max(β2·u, |g|) is then |g| itself, a power of two."""
    rng = np.random.default_rng(seed)
    magnitude = 2.0 ** rng.integers(-6, 4, size=shape)
    return [magnitude * rng.choice([-1.0, 1.0], size=shape) for _ in range(steps)]


@pytest.mark.parametrize("beta1", [0.5, 0.75, 0.9])
def test_equals_reference_adamax_when_step_size_and_norm_are_powers_of_two(beta1):
    # Choosing lr_t = 2^-5·(1 − β1^t) each step (as a scheduler would) makes α/(1 − β1^t) = 2^-5 exactly.
    theta0 = np.random.default_rng(1).normal(size=(5, 4))
    p = torch.nn.Parameter(torch.from_numpy(theta0.copy()))
    opt = ShiftAdamax([p], betas=(beta1, 0.999), eps=0.0)
    ref = ReferenceAdamax(theta0, beta1, 0.999, eps=0.0)
    for t, grad in enumerate(power_of_two_gradients((5, 4), steps=25, seed=2), start=1):
        lr = 2.0**-5 * (1 - beta1**t)
        opt.param_groups[0]["lr"] = lr
        p.grad = torch.from_numpy(grad)
        opt.step()
        ref.step(grad, lr)
        if beta1 in (0.5, 0.75):  # β1·m and (1 − β1)·g are exact here: bit-exact whatever the operation order
            assert np.array_equal(p.detach().numpy(), ref.theta), t
        else:
            np.testing.assert_allclose(p.detach().numpy(), ref.theta, rtol=1e-14, atol=1e-15)


def stepwise_ratios(lr, grads, weight_decay=0.0, eps=1e-8):
    """Per-step updates of ShiftAdamax and torch.optim.Adamax fed the same gradients, as ratios."""
    theta0 = torch.randn(grads[0].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ours = torch.nn.Parameter(theta0.clone())
    theirs = torch.nn.Parameter(theta0.clone())
    opt_ours = ShiftAdamax([ours], lr=lr, weight_decay=weight_decay, eps=eps)
    opt_theirs = torch.optim.Adamax([theirs], lr=lr, weight_decay=weight_decay, eps=eps)
    ratios = []
    for g in grads:
        before_ours, before_theirs = ours.detach().clone(), theirs.detach().clone()
        ours.grad, theirs.grad = g.clone(), g.clone()
        opt_ours.step()
        opt_theirs.step()
        ratios.append((ours.detach() - before_ours) / (theirs.detach() - before_theirs))
    return torch.stack(ratios)


def test_general_lr_step_is_within_a_factor_two_of_torch_adamax():
    # Two ap2 factors, the step size and the infinity norm, each within √2 (eq. B5.8).
    g = torch.Generator().manual_seed(4)
    grads = [torch.randn(64, dtype=torch.float64, generator=g) * 10.0 ** torch.randint(-3, 3, (1,), generator=g)
             for _ in range(30)]
    for lr in (0.01, 0.003, 0.07):
        ratio = stepwise_ratios(lr, grads)
        assert bool((ratio >= 0.5 * (1 - 1e-9)).all()) and bool((ratio <= 2 * (1 + 1e-9)).all()), lr
        assert ratio.max() / ratio.min() > 1.05  # the rounding really happens


def test_only_the_step_size_is_rounded_when_the_norm_is_a_power_of_two():
    grads = [torch.from_numpy(x) for x in power_of_two_gradients((64,), steps=30, seed=5)]
    ratio = stepwise_ratios(0.01, grads, eps=0.0)
    assert bool((ratio >= 2**-0.5 * (1 - 1e-9)).all()) and bool((ratio <= 2**0.5 * (1 + 1e-9)).all())
    # one power of two per step for the whole tensor: every element has the same ratio
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-9, atol=0)


def test_first_step_with_weight_decay_is_within_the_bound():
    g = torch.randn(32, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    ratio = stepwise_ratios(0.02, [g], weight_decay=0.1)
    assert bool((ratio >= 0.5).all()) and bool((ratio <= 2).all())


def regression_problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g) + 0.5
    torch.manual_seed(0)
    return torch.nn.Linear(8, 1), x, y


def test_trains_a_small_regression_to_low_loss():
    model, x, y = regression_problem()
    opt = ShiftAdamax(model.parameters(), lr=2**-5)
    start = torch.nn.functional.mse_loss(model(x), y).item()
    for _ in range(400):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
    assert start > 1.0 and loss.item() < 1e-4


def test_state_dict_round_trip_gives_bit_identical_next_steps():
    model, x, y = regression_problem()
    opt = ShiftAdamax([{"params": [model.weight]}, {"params": [model.bias], "lr": 2**-7}], lr=2**-5,
                      weight_decay=1e-3)

    def closure_for(m, o):
        def closure():
            o.zero_grad()
            loss = torch.nn.functional.mse_loss(m(x), y)
            loss.backward()
            return loss
        return closure

    for _ in range(7):
        opt.step(closure_for(model, opt))
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    clone = torch.nn.Linear(8, 1)
    clone.load_state_dict(saved["model"])
    opt_clone = ShiftAdamax([{"params": [clone.weight]}, {"params": [clone.bias]}], lr=1.0)
    opt_clone.load_state_dict(saved["opt"])
    assert opt_clone.param_groups[1]["lr"] == 2**-7 and opt_clone.state[clone.weight]["step"] == 7
    for _ in range(10):
        loss = opt.step(closure_for(model, opt))
        loss_clone = opt_clone.step(closure_for(clone, opt_clone))
        assert loss.item() == loss_clone.item()
        assert torch.equal(model.weight, clone.weight) and torch.equal(model.bias, clone.bias)


def test_closure_runs_once_with_gradients_and_its_loss_is_returned():
    p = torch.nn.Parameter(torch.tensor([2.0]))
    opt = ShiftAdamax([p], lr=0.1)
    calls = []

    def closure():
        calls.append(torch.is_grad_enabled())
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == 4.0
    assert calls == [True]
    assert opt.step() is None


def test_param_groups_use_their_own_learning_rate():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = ShiftAdamax([{"params": [a]}, {"params": [b], "lr": 0.05}], lr=0.01)
    a.grad = torch.tensor([1.0, -1.0])
    b.grad = torch.tensor([1.0, -1.0])
    opt.step()
    # step 1: m = 0.1·g, u = |g| + ε → ap2(u) = 1; step size ap2(lr/0.1): ap2(0.1) = 1/8, ap2(0.5) = 1/2
    assert a.tolist() == pytest.approx([-0.1 / 8, 0.1 / 8], rel=1e-6)
    assert b.tolist() == pytest.approx([-0.1 / 2, 0.1 / 2], rel=1e-6)


def test_parameters_without_gradients_are_left_alone():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = ShiftAdamax([a, b])
    a.grad = torch.ones(2)
    opt.step()
    assert b.tolist() == [1.0, 1.0] and b not in opt.state and opt.state[a]["step"] == 1


def test_zero_gradients_with_zero_eps_give_no_update():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = ShiftAdamax([p], eps=0.0)
    p.grad = torch.zeros(2)
    opt.step()
    assert p.tolist() == [1.0, 2.0]


def test_sparse_gradients_are_refused():
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.zeros(3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        ShiftAdamax([p]).step()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"lr": 0.0}, "lr must be a finite number > 0, got 0.0"),
     ({"lr": -1e-3}, "lr must be a finite number > 0, got -0.001"),
     ({"lr": math.nan}, "lr must be a finite number > 0, got nan"),
     ({"betas": (1.0, 0.999)}, r"betas\[0\] must be in \[0, 1\), got 1.0"),
     ({"betas": (0.9, -0.1)}, r"betas\[1\] must be in \[0, 1\), got -0.1"),
     ({"betas": (0.9,)}, r"betas must be a pair \(beta1, beta2\), got \(0.9,\)"),
     ({"eps": -1e-8}, "eps must be a finite number >= 0, got -1e-08"),
     ({"weight_decay": -0.1}, "weight_decay must be a finite number >= 0, got -0.1")],
)
def test_bad_hyperparameters_name_the_argument_and_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ShiftAdamax([torch.nn.Parameter(torch.zeros(1))], **kwargs)


def test_bad_param_groups_are_refused_when_added_or_edited():
    opt = ShiftAdamax([torch.nn.Parameter(torch.zeros(1))])
    with pytest.raises(ValueError, match="lr must be a finite number > 0, got -1"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))], "lr": -1})
    assert len(opt.param_groups) == 1
    opt.param_groups[0]["lr"] = 0.0
    with pytest.raises(ValueError, match="got 0.0"):
        opt.step()
