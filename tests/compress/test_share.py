"""k-means weight sharing: centroid gradients against a dense layer's, pruned zeros and codes that hold through
training, centroids against scikit-learn's KMeans from the same linear start."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from lowbit.compress.share import SharedWeight, share_weights, shared_layers, unshare_weights


pytestmark = pytest.mark.usefixtures("one_thread")  # small problems: threads only add noise


def pruned_(module: nn.Module, fraction: float, seed: int = 0) -> nn.Module:
    """Zero a random ``fraction`` of every Linear/Conv2d weight in place (a stand-in for magnitude pruning)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Linear | nn.Conv2d):
                m.weight.masked_fill_(torch.rand(m.weight.shape, generator=generator) < fraction, 0.0)
    return module


def mlp(dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4)).to(dtype)


def cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 5, 3), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 4 * 4, 3))


def table_of(centroids: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.zeros(1, dtype=centroids.dtype), centroids.detach()])


# --- gradients -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [1, 2, 4, 6])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_centroid_gradient_is_the_cluster_sum_of_the_dense_weight_gradient(bits, dtype):
    model = pruned_(nn.Sequential(nn.Linear(24, 16)).to(dtype), 0.5, seed=bits)
    layers = share_weights(model, bits=bits)
    layer = layers["0"]
    # the dense oracle: a plain Linear holding the same (shared) values
    dense = nn.Linear(24, 16).to(dtype)
    with torch.no_grad():
        dense.weight.copy_(model[0].weight)
        dense.bias.copy_(model[0].bias)
    assert not parametrize.is_parametrized(dense)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(10, 24, generator=generator).to(dtype)
    target = torch.randn(10, 16, generator=generator).to(dtype)
    ((model(x) - target) ** 2).sum().backward()
    ((dense(x) - target) ** 2).sum().backward()

    codes = layer.codes.reshape(-1)
    expected = torch.zeros(2**bits, dtype=dtype).scatter_add_(0, codes, dense.weight.grad.reshape(-1))[1:]
    assert layer.centroids.grad.shape == (2**bits - 1,)
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(layer.centroids.grad, expected, **tol)
    # the same through bincount with weights, in float64 (a second, independent reduction)
    by_count = np.bincount(codes.numpy(), weights=dense.weight.grad.reshape(-1).double().numpy(), minlength=2**bits)
    np.testing.assert_allclose(layer.centroids.grad.double().numpy(), by_count[1:], **tol)
    torch.testing.assert_close(model[0].bias.grad, dense.bias.grad, rtol=0, atol=0)
    # the gradient is not trivially zero (the test could fail)
    assert float(expected.abs().sum()) > 0


def test_conv_centroid_gradient_matches_the_dense_conv():
    model = pruned_(cnn(), 0.6, seed=3)
    layers = share_weights(model, bits=3)
    assert list(layers) == ["0", "3"]
    dense = cnn()
    dense.load_state_dict({"0.weight": model[0].weight.detach(), "0.bias": model[0].bias.detach(),
                           "3.weight": model[3].weight.detach(), "3.bias": model[3].bias.detach()})
    x = torch.randn(6, 2, 6, 6, generator=torch.Generator().manual_seed(2))
    model(x).square().sum().backward()
    dense(x).square().sum().backward()
    for name in layers:
        codes = layers[name].codes.reshape(-1)
        grad = dense.get_submodule(name).weight.grad.reshape(-1)
        expected = torch.zeros(8).scatter_add_(0, codes, grad)[1:]
        torch.testing.assert_close(layers[name].centroids.grad, expected, rtol=1e-5, atol=1e-5)


# --- training keeps the structure -------------------------------------------------------------------------------


@pytest.mark.parametrize("make_optimizer", [
    lambda params: torch.optim.Adam(params, lr=1e-2, weight_decay=1e-2),
    lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1),
    lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-2),
], ids=["adam", "adamw", "sgd-momentum"])
def test_training_moves_centroids_only_zeros_and_codes_hold(make_optimizer):
    model = pruned_(mlp(), 0.7)
    zero_before = {name: m.weight.detach() == 0 for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    bits = 3
    layers = share_weights(model, bits=bits)
    codes_before = {name: layer.codes.clone() for name, layer in layers.items()}
    centroids_before = {name: layer.centroids.detach().clone() for name, layer in layers.items()}
    optimizer = make_optimizer(model.parameters())
    generator = torch.Generator().manual_seed(5)
    for _ in range(6):
        x = torch.randn(16, 24, generator=generator)
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
    for name, layer in layers.items():
        weight = layer.module.weight.detach()
        assert torch.equal(layer.codes, codes_before[name])
        # code 0 exactly where the weight was pruned, and those stay +0.0 (bit pattern 0)
        assert torch.equal(layer.codes == 0, zero_before[name])
        assert torch.all(weight.view(torch.int32)[zero_before[name]] == 0)
        assert torch.equal(weight, table_of(layer.centroids)[layer.codes])
        kept_values = torch.unique(weight[weight != 0])
        assert kept_values.numel() <= 2**bits - 1
        assert not torch.equal(layer.centroids.detach(), centroids_before[name])  # training did move them


def test_trainable_parameters_are_centroids_and_biases():
    model = pruned_(mlp(), 0.5)
    share_weights(model, bits=4)
    shapes = sorted(tuple(p.shape) for p in model.parameters())
    assert shapes == sorted([(15,), (15,), (15,), (16,), (12,), (4,)])
    for m in model.modules():
        if isinstance(m, nn.Linear):
            assert isinstance(m.parametrizations.weight[0], SharedWeight)
            assert not m.parametrizations.weight[0].codes.requires_grad


# --- the clustering --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [1, 2, 3, 5])
def test_centroids_match_sklearn_kmeans_from_the_same_linear_start(bits):
    cluster = pytest.importorskip("sklearn.cluster")
    # Uniform weights (nn.Linear's default init): a linear start over Gaussian tails can leave a cluster empty
    # in some step, where the two differ by design (lowbit keeps the centroid, sklearn relocates it).
    torch.manual_seed(bits)
    layer = nn.Linear(64, 32)
    pruned_(layer, 0.5, seed=bits)
    model = nn.Sequential(layer)
    kept_mask = layer.weight.detach() != 0
    kept = layer.weight.detach()[kept_mask].double().numpy()
    k = 2**bits - 1
    init = np.linspace(kept.min(), kept.max(), k).reshape(-1, 1)
    reference = cluster.KMeans(n_clusters=k, init=init, n_init=1, tol=0.0, max_iter=300, algorithm="lloyd")
    reference.fit(kept.reshape(-1, 1))
    midpoints = (init[1:, 0] + init[:-1, 0]) / 2
    assert np.bincount(np.searchsorted(midpoints, kept), minlength=k).min() > 0  # no empty cluster at the start
    assert np.bincount(reference.labels_, minlength=k).min() > 0  # nor at the end
    assert reference.n_iter_ < 300

    layers = share_weights(model, bits=bits, iterations=300)
    centroids = layers["0"].centroids.detach()
    assert centroids.dtype == torch.float32
    expected = reference.cluster_centers_.reshape(-1)
    order = np.argsort(expected)
    np.testing.assert_allclose(centroids.double().numpy(), expected[order], rtol=1e-6, atol=1e-7)
    codes = layers["0"].codes
    assert torch.all(codes[~kept_mask] == 0)
    np.testing.assert_array_equal(codes[kept_mask].numpy() - 1, np.argsort(order)[reference.labels_])


def test_every_kept_weight_takes_its_nearest_centroid():
    model = pruned_(mlp(), 0.4)
    original = {name: m.weight.detach().clone() for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    for name, layer in share_weights(model, bits=4).items():
        kept = original[name] != 0
        centroids = layer.centroids.detach()
        distance = (original[name][kept].unsqueeze(1) - centroids.unsqueeze(0)).abs()
        chosen = distance.gather(1, (layer.codes[kept] - 1).unsqueeze(1)).squeeze(1)
        assert torch.all(chosen <= distance.min(dim=1).values + 1e-7)
        assert torch.all(layer.codes[kept] >= 1) and torch.all(layer.codes[~kept] == 0)


def test_few_distinct_values_are_reproduced_exactly():
    layer = nn.Linear(4, 3, bias=False)
    values = torch.tensor([[0.0, 0.25, -1.5, 0.25], [0.0, 0.0, -1.5, 0.25], [3.0, 0.0, 0.0, 0.0]])
    with torch.no_grad():
        layer.weight.copy_(values)
    model = nn.Sequential(layer)
    layers = share_weights(model, bits=3)  # 7 clusters for 3 distinct values
    assert torch.equal(model[0].weight.detach(), values)
    assert len(torch.unique(layers["0"].codes[values != 0])) == 3


def test_all_pruned_layer_has_all_zero_codes():
    model = nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.zero_()
    layers = share_weights(model, bits=2)
    assert torch.equal(layers["0"].codes, torch.zeros(4, 5, dtype=torch.int64))
    assert layers["0"].centroids.shape == (3,)
    assert torch.equal(model[0].weight.detach(), torch.zeros(4, 5))
    assert shared_layers(model)["0"].bits == 2


@pytest.mark.parametrize("bits", range(1, 9))
def test_at_most_two_to_the_bits_minus_one_values_and_bits_read_back(bits):
    model = nn.Sequential(nn.Linear(40, 30))
    pruned_(model, 0.3, seed=bits)
    layers = share_weights(model, bits=bits)
    weight = model[0].weight.detach()
    assert torch.unique(weight[weight != 0]).numel() <= 2**bits - 1
    assert int(layers["0"].codes.max()) <= 2**bits - 1
    assert layers["0"].bits == bits
    assert {name: layer.bits for name, layer in shared_layers(model).items()} == {"0": bits}


def test_per_layer_bits_share_only_the_named_layers():
    model = pruned_(mlp(), 0.5)
    before = model[2].weight.detach().clone()
    layers = share_weights(model, bits={"0": 2, "4": 5})
    assert list(layers) == ["0", "4"]
    assert layers["0"].centroids.shape == (3,) and layers["4"].centroids.shape == (31,)
    assert not parametrize.is_parametrized(model[2])
    assert torch.equal(model[2].weight.detach(), before)
    assert {name: layer.bits for name, layer in shared_layers(model).items()} == {"0": 2, "4": 5}
    assert torch.unique(model[0].weight.detach()).numel() <= 4  # three shared values and the zero


def test_include_selects_the_layer_types():
    model = pruned_(cnn(), 0.5)
    layers = share_weights(model, bits=2, include=(nn.Conv2d,))
    assert list(layers) == ["0"]
    assert not parametrize.is_parametrized(model[3])


# --- errors ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [0, 9, -1, True, 2.0, "3", None])
def test_bad_bits_are_refused_and_named(bits):
    model = mlp()
    with pytest.raises(ValueError, match="bits"):
        share_weights(model, bits=bits)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())


def test_bad_bits_in_a_dict_are_refused_before_any_layer_is_shared():
    model = mlp()
    with pytest.raises(ValueError, match="bits"):
        share_weights(model, bits={"0": 3, "2": 0})
    assert not any(parametrize.is_parametrized(m) for m in model.modules())


@pytest.mark.parametrize("name", ["1", "missing", ""])
def test_a_dict_naming_a_non_layer_is_refused(name):
    model = mlp()
    with pytest.raises(ValueError, match=repr(name)):
        share_weights(model, bits={name: 3})
    assert not any(parametrize.is_parametrized(m) for m in model.modules())


def test_sharing_twice_is_refused():
    model = pruned_(mlp(), 0.5)
    share_weights(model, bits=3)
    with pytest.raises(ValueError, match="already"):
        share_weights(model, bits=3)
    with pytest.raises(ValueError, match="already"):
        share_weights(model, bits={"2": 4})


# --- unsharing -------------------------------------------------------------------------------------------------


def test_unshare_bakes_the_current_shared_values_in():
    model = pruned_(mlp(), 0.6)
    layers = share_weights(model, bits=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(8, 24)).square().sum().backward()
    optimizer.step()
    expected = {name: table_of(layer.centroids)[layer.codes] for name, layer in layers.items()}
    x = torch.randn(5, 24)
    output = model(x).detach()
    assert unshare_weights(model) == 3
    assert shared_layers(model) == {}
    assert sorted(model.state_dict()) == sorted(mlp().state_dict())
    for name, values in expected.items():
        module = model.get_submodule(name)
        assert not parametrize.is_parametrized(module)
        assert isinstance(module.weight, nn.Parameter) and module.weight.requires_grad
        assert torch.equal(module.weight.detach(), values)
    assert torch.equal(model(x).detach(), output)
    assert unshare_weights(model) == 0


def test_assigning_a_shared_weight_is_refused_not_ignored():
    model = nn.Sequential(nn.Linear(4, 3))
    share_weights(model, bits=2)
    with pytest.raises(ValueError, match="cannot be assigned"):
        model[0].weight = torch.zeros(3, 4)
