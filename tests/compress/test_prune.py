"""Magnitude pruning: masks against numpy argsort oracles, masks that hold through SGD / Adam / AdamW, iteration."""

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from lowbit.compress import Pruner, PruneScope, magnitude_masks, prune_iteratively
from tests.compress.small_models import model_and_input, weights_of


pytestmark = pytest.mark.usefixtures("one_thread")  # small problems: threads only add noise




def oracle_layer(weight: np.ndarray, sparsity: float) -> np.ndarray:
    """Keep-mask by numpy: prune the round(s·n) first entries of a stable argsort of |w|."""
    keep = np.ones(weight.size, dtype=bool)
    keep[np.argsort(np.abs(weight).ravel(), kind="stable")[: round(sparsity * weight.size)]] = False
    return keep.reshape(weight.shape)


def oracle_global(weights: dict[str, np.ndarray], sparsity: float) -> dict[str, np.ndarray]:
    """One threshold: the k-th smallest |w| of the concatenation (float64); random weights have no ties."""
    flat = np.concatenate([np.abs(w).astype(np.float64).ravel() for w in weights.values()])
    count = round(sparsity * flat.size)
    threshold = np.sort(flat)[count - 1] if count else -np.inf
    return {name: np.abs(w).astype(np.float64) > threshold for name, w in weights.items()}


SPARSITIES = [0.0, 0.5, 0.9, 0.99]


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_layer_masks_match_argsort_and_exact_counts(kind: str, sparsity: float) -> None:
    model, _ = model_and_input(kind)
    masks = magnitude_masks(model, sparsity)
    weights = weights_of(model)
    assert list(masks) == list(weights)
    for name, weight in weights.items():
        mask = masks[name]
        assert mask.dtype == torch.bool and mask.shape == weight.shape
        assert int(mask.sum()) == weight.size - round(sparsity * weight.size)
        np.testing.assert_array_equal(mask.numpy(), oracle_layer(weight, sparsity))
        # second oracle: the kept set is exactly torch.topk of |w| with n − k largest
        kept = weight.size - round(sparsity * weight.size)
        top = torch.topk(torch.from_numpy(np.abs(weight)).reshape(-1), kept).indices
        assert set(top.tolist()) == set(np.flatnonzero(mask.numpy()).tolist())


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_global_masks_match_threshold_and_exact_count(kind: str, sparsity: float) -> None:
    model, _ = model_and_input(kind)
    masks = magnitude_masks(model, sparsity, scope="global")
    weights = weights_of(model)
    total = sum(w.size for w in weights.values())
    assert sum(int(m.sum()) for m in masks.values()) == total - round(sparsity * total)
    for name, expected in oracle_global(weights, sparsity).items():
        np.testing.assert_array_equal(masks[name].numpy(), expected)


def test_per_layer_dict_and_biases_untouched() -> None:
    model, _ = model_and_input("mlp")
    biases = [model[i].bias.detach().clone() for i in (0, 2, 4)]
    masks = magnitude_masks(model, {"0": 0.25, "4": 0.5})
    assert list(masks) == ["0", "4"]
    assert int(masks["0"].sum()) == 320 - 80 and int(masks["4"].sum()) == 24 - 12
    Pruner(model, masks).apply()
    for i, bias in zip((0, 2, 4), biases):
        assert torch.equal(model[i].bias, bias)
    assert int((model[2].weight == 0).sum()) == 0


def test_ties_broken_by_flat_index() -> None:
    layer = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -1.0, 2.0], [1.0, -2.0, 1.0]]))
    # the four |w| = 1 entries sit at flat indices 0, 1, 3, 5; pruning 3 removes the first three of them
    assert magnitude_masks(layer, 0.5)[""].reshape(-1).tolist() == [False, False, True, False, True, True]
    assert magnitude_masks(layer, 0.5, scope=PruneScope.GLOBAL)[""].reshape(-1).tolist() == [
        False, False, True, False, True, True
    ]


OPTIMIZERS: dict[str, Callable[[nn.Module], torch.optim.Optimizer]] = {
    "sgd_nesterov": lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2, nesterov=True),
    "adam_l2": lambda m: torch.optim.Adam(m.parameters(), lr=1e-2, weight_decay=1e-2),
    "adamw": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=1e-2),
}


def train_steps(model: nn.Module, x: torch.Tensor, optimizer: torch.optim.Optimizer, steps: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        noise = torch.randn(x.shape, generator=generator)
        target = torch.randn(x.shape[0], 3, generator=generator)
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x + noise), target).backward()
        optimizer.step()


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("warm_steps", [0, 5])
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_masks_hold_through_optimizer(name: str, warm_steps: int, kind: str) -> None:
    model, x = model_and_input(kind)
    optimizer = OPTIMIZERS[name](model)
    # warm_steps > 0: momentum / Adam moments are nonzero at positions that are about to be pruned
    train_steps(model, x, optimizer, warm_steps, seed=1)
    masks = magnitude_masks(model, 0.7)
    pruner = Pruner(model, masks)
    pruner.attach(optimizer)
    before = {n: w.copy() for n, w in weights_of(model).items()}
    for n, mask in masks.items():  # attach cleared the state the warm-up left at pruned positions
        for value in optimizer.state.get(model.get_submodule(n).weight, {}).values():
            if value.shape == mask.shape:
                assert torch.all(value[~mask] == 0)
    train_steps(model, x, optimizer, 50, seed=2)
    for n, weight in weights_of(model).items():
        mask = masks[n].numpy()
        assert np.all(weight[~mask] == 0.0)
        assert np.mean(weight[mask] != before[n][mask]) > 0.9  # kept weights did train
        grad = model.get_submodule(n).weight.grad
        assert torch.all(grad[~masks[n]] == 0)
    pruned = sum(int((~m).sum()) for m in masks.values())
    assert pruner.sparsity().overall == pytest.approx(pruned / sum(m.numel() for m in masks.values()))
    pruner.detach()


def test_without_state_cleanup_momentum_moves_pruned_weights() -> None:
    """Control: the optimizer check above is sensitive — gradient masking alone lets old momentum leak."""
    model, x = model_and_input("mlp")
    optimizer = OPTIMIZERS["sgd_nesterov"](model)
    train_steps(model, x, optimizer, 5, seed=1)
    pruner = Pruner(model, magnitude_masks(model, 0.7))
    pruner.attach()  # gradient hooks only, no step hook for this optimizer
    train_steps(model, x, optimizer, 1, seed=2)
    assert any(np.any(w[~pruner.masks[n].numpy()] != 0) for n, w in weights_of(model).items())
    pruner.detach()


def test_detach_stops_masking() -> None:
    model, x = model_and_input("mlp")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner = Pruner(model, magnitude_masks(model, 0.5))
    pruner.attach(optimizer)
    train_steps(model, x, optimizer, 2, seed=1)
    assert pruner.sparsity().overall == pytest.approx(0.5, abs=0.01)
    pruner.detach()
    train_steps(model, x, optimizer, 2, seed=2)
    assert pruner.sparsity().overall < 0.1
    pruner.apply()  # masks outlive the hooks
    assert pruner.sparsity().overall == pytest.approx(0.5, abs=0.01)


def test_update_shrinks_and_refuses_revival() -> None:
    model, _ = model_and_input("mlp")
    first = magnitude_masks(model, 0.5)
    pruner = Pruner(model, first)
    pruner.apply()
    revived = {"0": first["0"].clone()}
    revived["0"].view(-1)[torch.nonzero(~first["0"].reshape(-1))[0]] = True
    with pytest.raises(ValueError, match="revive 1 pruned"):
        pruner.update(revived)
    with pytest.raises(ValueError, match="does not mask"):
        pruner.update({"1": first["0"]})
    second = magnitude_masks(model, 0.8, previous=pruner.masks)
    assert all(not torch.any(second[n] & ~first[n]) for n in first)
    pruner.update(second)
    assert pruner.sparsity().layers["0"] == pytest.approx(round(0.8 * 320) / 320)


def test_weights_replaced_by_centroids_keep_masks() -> None:
    """k-means sharing replaces weight values (or the Parameter itself); only the masks decide what is zero."""
    model, x = model_and_input("mlp")
    masks = magnitude_masks(model, 0.6)
    pruner = Pruner(model, masks)
    pruner.attach(torch.optim.SGD(model.parameters(), lr=0.1))
    pruner.detach()
    with torch.no_grad():
        model[0].weight.copy_(torch.where(model[0].weight >= 0, 0.3, -0.3))  # in place: two centroids everywhere
    model[2].weight = nn.Parameter(torch.full((8, 16), 0.1))  # a new Parameter object
    pruner.apply()
    assert np.all(weights_of(model)["0"][~masks["0"].numpy()] == 0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    pruner.attach(optimizer)
    train_steps(model, x, optimizer, 10, seed=3)
    for n, weight in weights_of(model).items():
        assert np.all(weight[~masks[n].numpy()] == 0)


def test_errors() -> None:
    model, _ = model_and_input("mlp")
    for bad in (-0.1, 1.0, 1.5, True, "0.5", float("nan")):
        with pytest.raises(ValueError, match="sparsity must be a float in"):
            magnitude_masks(model, bad)
    with pytest.raises(ValueError, match="scope must be one of"):
        magnitude_masks(model, 0.5, scope="channel")
    with pytest.raises(ValueError, match="not included: \\['9'\\]"):
        magnitude_masks(model, {"9": 0.5})
    with pytest.raises(ValueError, match=r"sparsity\['0'\] must be"):
        magnitude_masks(model, {"0": 2.0})
    with pytest.raises(ValueError, match="scope='global'"):
        magnitude_masks(model, {"0": 0.5}, scope="global")
    with pytest.raises(ValueError, match="fewer than the"):
        magnitude_masks(model, 0.2, previous=magnitude_masks(model, 0.5))
    with pytest.raises(ValueError, match="not a module"):
        Pruner(model, {"7": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="must have shape"):
        Pruner(model, {"0": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="bool tensor"):
        Pruner(model, {"0": torch.ones(16, 20)})
    with pytest.raises(ValueError, match="non-decreasing"):
        prune_iteratively(model, [0.5, 0.3], train=lambda m, i: None)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_prune_iteratively_reaches_targets_and_never_revives(scope: str) -> None:
    model, x = model_and_input("cnn")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2)
    sizes = {n: w.size for n, w in weights_of(model).items()}
    total = sum(sizes.values())
    targets = [0.3, 0.6, 0.9]
    pruned_so_far: dict[str, np.ndarray] = {n: np.zeros(s, dtype=bool) for n, s in sizes.items()}
    stages: list[int] = []

    def train(m: nn.Module, stage: int) -> None:
        stages.append(stage)
        for step in range(8):
            train_steps(m, x, optimizer, 1, seed=10 * stage + step)
            for n, w in weights_of(m).items():  # every position ever pruned is still exactly zero
                assert np.all(w.ravel()[pruned_so_far[n]] == 0)

    def observe(m: nn.Module, stage: int) -> None:
        for n, w in weights_of(m).items():
            pruned_so_far[n] |= w.ravel() == 0
        train(m, stage)

    records = prune_iteratively(model, targets, observe, scope=scope, optimizer=optimizer)
    assert stages == [0, 1, 2]
    assert [r["target"] for r in records] == targets
    for record, target in zip(records, targets):
        if scope == "layer":
            expected = sum(round(target * s) for s in sizes.values()) / total
            for n, s in sizes.items():
                assert record["layers"][n] == pytest.approx(round(target * s) / s)
        else:
            expected = round(target * total) / total
        assert record["sparsity"] == pytest.approx(expected)
    for earlier, later in zip(records, records[1:]):
        assert all(not torch.any(later["masks"][n] & ~earlier["masks"][n]) for n in sizes)
    # hooks are gone after the loop: training now moves some pruned weights again
    zeros_before = sum(int((model.get_submodule(n).weight == 0).sum()) for n in sizes)
    train_steps(model, x, optimizer, 1, seed=99)
    assert sum(int((model.get_submodule(n).weight == 0).sum()) for n in sizes) < zeros_before
