"""Hutchinson's trace estimator against the exact Hessian blocks from torch.autograd.functional.hessian."""

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from lowbit.mixed.hessian import hutchinson_traces

pytestmark = pytest.mark.usefixtures("one_thread")

LAYERS = ("0.weight", "2.weight")


def small_problem(batches=3, size=32):
    """Linear(6, 8) → Tanh → Linear(8, 3) in float64 with cross-entropy on fixed random inputs, labelled by the
    model's own predictions (as the ``hessian`` sensitivity measure labels unlabelled data).

    With such labels the Hessian blocks are dominated by their Gauss–Newton part, so their traces stand well
    above the off-diagonal mass (and the cross terms with the other layer, which a joint draw adds to the
    variance): at 800 draws per batch the estimate's standard error is about 2% of the trace (computed from the
    exact per-batch Hessians), so 10% is about five standard errors.
    """
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    g = torch.Generator().manual_seed(3)
    inputs = [torch.randn(size, 6, generator=g, dtype=torch.float64) for _ in range(batches)]
    with torch.no_grad():
        return model, [(x, model(x).argmax(-1)) for x in inputs]


def cross_entropy(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


def exact_trace(model, name, batches):
    """Tr of the Hessian block of ``name``'s flattened weight, for the mean of the per-batch losses."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    shape = params[name].shape

    def mean_loss(flat):
        swapped = {**params, name: flat.view(shape)}
        return sum(F.cross_entropy(functional_call(model, swapped, (x,)), y) for x, y in batches) / len(batches)

    hessian = torch.autograd.functional.hessian(mean_loss, params[name].flatten().clone())
    assert hessian.shape == (shape.numel(), shape.numel())
    return float(torch.trace(hessian))


def weights(model, names=LAYERS):
    found = dict(model.named_parameters())
    return {n: found[n] for n in names}


@pytest.mark.parametrize("seed", [0, 3])
def test_hutchinson_within_ten_percent_of_the_exact_trace(seed):
    model, batches = small_problem()
    exact = {n: exact_trace(model, n, batches) for n in LAYERS}
    assert all(t > 0.1 for t in exact.values())  # a trace far from 0, so a relative bound means something
    estimate = hutchinson_traces(model, weights(model), batches, cross_entropy, samples=800, seed=seed)
    assert set(estimate) == set(LAYERS)
    for name in LAYERS:
        assert abs(estimate[name] - exact[name]) <= 0.1 * abs(exact[name]), (name, estimate[name], exact[name])


def test_one_layer_alone_also_matches_its_exact_trace():
    model, batches = small_problem()
    exact = exact_trace(model, "0.weight", batches)
    estimate = hutchinson_traces(model, weights(model, ["0.weight"]), batches, cross_entropy, samples=400, seed=1)
    assert abs(estimate["0.weight"] - exact) <= 0.1 * exact


def test_linear_regression_trace_in_closed_form():
    # ∂²/∂W² of mean ‖Wx − y‖² over a batch: 2·E[x xᵀ] for each output row, so Tr = 2·rows·E‖x‖²
    torch.manual_seed(0)
    layer = nn.Linear(4, 3).double()
    g = torch.Generator().manual_seed(5)
    batches = [(torch.randn(20, 4, generator=g, dtype=torch.float64), torch.randn(20, 3, generator=g,
                                                                                  dtype=torch.float64))
               for _ in range(2)]
    exact = sum(2 * 3 * float(x.square().sum(1).mean()) for x, _ in batches) / len(batches)

    def mse(model, batch):
        return (model(batch[0]) - batch[1]).square().sum(1).mean()

    estimate = hutchinson_traces(layer, {"w": layer.weight}, batches, mse, samples=300, seed=0)["w"]
    assert abs(estimate - exact) <= 0.1 * exact
    # the bias block is 2·I per output: every Rademacher draw gives the trace exactly (no off-diagonal terms)
    bias = hutchinson_traces(layer, {"b": layer.bias}, batches, mse, samples=3, seed=0)["b"]
    assert bias == pytest.approx(2 * 3, rel=1e-12)


def test_deterministic_under_a_seed_and_varies_with_it():
    model, batches = small_problem(batches=2, size=8)
    first = hutchinson_traces(model, weights(model), batches, cross_entropy, samples=4, seed=7)
    again = hutchinson_traces(model, weights(model), batches, cross_entropy, samples=4, seed=7)
    other = hutchinson_traces(model, weights(model), batches, cross_entropy, samples=4, seed=8)
    assert first == again
    assert first != other


def test_batches_are_read_from_an_iterator_once():
    model, batches = small_problem(batches=2, size=8)
    from_list = hutchinson_traces(model, weights(model), batches, cross_entropy, samples=3, seed=0)
    from_iter = hutchinson_traces(model, weights(model), iter(batches), cross_entropy, samples=3, seed=0)
    assert from_list == from_iter


def test_a_block_where_the_loss_is_linear_is_zero():
    # loss = Σ outputs: linear in the last bias (its gradient is a constant), nonlinear in the first weight
    model, batches = small_problem(batches=2, size=8)

    def total(m, batch):
        return m(batch[0]).sum()

    params = dict(model.named_parameters())
    alone = hutchinson_traces(model, {"b": params["2.bias"]}, batches, total, samples=5, seed=0)
    assert alone == {"b": 0.0}
    mixed = hutchinson_traces(model, {"w": params["0.weight"], "b": params["2.bias"]}, batches, total, samples=5,
                              seed=0)
    assert mixed["b"] == 0.0
    assert mixed["w"] != 0.0  # tanh makes the first layer's block non-zero
    # and the first layer's estimate matches its exact trace for this loss too
    shape = params["0.weight"].shape
    detached = {k: v.detach() for k, v in params.items()}

    def mean_total(flat):
        swapped = {**detached, "0.weight": flat.view(shape)}
        return sum(functional_call(model, swapped, (x,)).sum() for x, _ in batches) / len(batches)

    exact = float(torch.trace(torch.autograd.functional.hessian(mean_total, detached["0.weight"].flatten().clone())))
    many = hutchinson_traces(model, {"w": params["0.weight"]}, batches, total, samples=1000, seed=0)["w"]
    assert abs(many - exact) <= 0.1 * abs(exact) + 1e-9


def test_requires_grad_flags_are_restored():
    model, batches = small_problem(batches=1, size=8)
    params = dict(model.named_parameters())
    params["0.weight"].requires_grad_(False)
    params["2.weight"].requires_grad_(True)
    hutchinson_traces(model, weights(model), batches, cross_entropy, samples=2)
    assert params["0.weight"].requires_grad is False
    assert params["2.weight"].requires_grad is True
    assert all(p.grad is None for p in model.parameters())  # torch.autograd.grad, not backward


def test_requires_grad_restored_after_an_error():
    model, batches = small_problem(batches=1, size=8)
    for p in model.parameters():
        p.requires_grad_(False)

    def broken(m, batch):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        hutchinson_traces(model, weights(model), batches, broken, samples=2)
    assert not any(p.requires_grad for p in model.parameters())


def test_errors():
    model, batches = small_problem(batches=1, size=8)
    with pytest.raises(ValueError, match="params is empty"):
        hutchinson_traces(model, {}, batches, cross_entropy)
    for samples in (0, -1):
        with pytest.raises(ValueError, match="samples"):
            hutchinson_traces(model, weights(model), batches, cross_entropy, samples=samples)
    with pytest.raises(ValueError, match="no batches"):
        hutchinson_traces(model, weights(model), [], cross_entropy)
    with pytest.raises(ValueError, match="no batches"):
        hutchinson_traces(model, weights(model), iter([]), cross_entropy)
