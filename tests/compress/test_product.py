"""Product quantization: vector k-means against scikit-learn, lookup forward against F.linear, exact storage."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.compress.product import (
    ProductCodes,
    ProductLinear,
    VectorInit,
    kmeans_vectors,
    product_linear,
    product_quantize,
    product_quantize_linears,
)

sklearn_cluster = pytest.importorskip("sklearn.cluster")


pytestmark = pytest.mark.usefixtures("one_thread")  # small problems: threads only add noise


def inertia(x: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> float:
    return float(((x - centroids[labels]) ** 2).sum())


def blobs(seed: int) -> tuple[np.ndarray, int]:
    """Eight well-separated Gaussian clusters in 4-D: a well-posed problem with one clear optimum."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=5.0, size=(8, 4))
    return centers[rng.integers(8, size=400)] + rng.normal(size=(400, 4)), 8


def unstructured(kind: str, seed: int) -> tuple[np.ndarray, int]:
    """Data without true clusters, like weight sub-vectors: many local optima of similar inertia."""
    rng = np.random.default_rng(seed)
    if kind == "gauss2d":
        return rng.normal(size=(300, 2)), 8
    if kind == "laplace":
        return rng.laplace(size=(256, 4)) * 0.05, 16
    return rng.normal(size=(128, 8)) * rng.uniform(0.5, 2.0, size=8), 16  # columns of different scale


# ---------------------------------------------------------------------------------------------- kmeans_vectors


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("init", ["kmeans++", "random"])
def test_lloyd_matches_sklearn_from_the_same_start(seed, init):
    x, k = blobs(seed)
    start, _ = kmeans_vectors(torch.from_numpy(x), k, iterations=0, seed=seed, init=init)
    centroids, labels = kmeans_vectors(torch.from_numpy(x), k, iterations=300, seed=seed, init=init)
    km = sklearn_cluster.KMeans(k, init=start.numpy(), n_init=1, algorithm="lloyd", max_iter=300, tol=0.0).fit(x)
    np.testing.assert_allclose(centroids.numpy(), km.cluster_centers_, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(labels.numpy(), km.labels_)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_inertia_on_separated_clusters_matches_sklearn(seed):
    x, k = blobs(seed)
    centroids, labels = kmeans_vectors(torch.from_numpy(x), k, iterations=300, seed=seed, restarts=10)
    best = sklearn_cluster.KMeans(k, n_init=10, random_state=seed).fit(x).inertia_
    assert inertia(x, centroids.numpy(), labels.numpy()) <= 1.001 * best


def test_inertia_on_unstructured_data_is_within_one_percent_of_sklearn():
    # Without true clusters, two best-of-10 searches land in different local optima: ±2–3 % per data set in
    # either direction (sklearn against sklearn with another random_state does the same). On average over
    # nine data sets the gap must be under 1 %, and no single one may be worse by 5 %.
    ratios = []
    for kind in ("gauss2d", "laplace", "scaled"):
        for seed in range(3):
            x, k = unstructured(kind, seed)
            centroids, labels = kmeans_vectors(torch.from_numpy(x), k, iterations=300, seed=seed, restarts=10)
            best = sklearn_cluster.KMeans(k, n_init=10, random_state=seed).fit(x).inertia_
            ratios.append(inertia(x, centroids.numpy(), labels.numpy()) / best)
    assert np.mean(ratios) <= 1.01, ratios
    assert max(ratios) <= 1.05, ratios


def test_restarts_keep_the_least_inertia():
    x, k = unstructured("gauss2d", 4)
    t = torch.from_numpy(x)
    one = inertia(x, *(a.numpy() for a in kmeans_vectors(t, k, seed=5)))
    ten = inertia(x, *(a.numpy() for a in kmeans_vectors(t, k, seed=5, restarts=10)))
    assert ten <= one


def test_assignments_are_nearest_and_centroids_are_means():
    x = torch.randn(200, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    centroids, labels = kmeans_vectors(x, 6, iterations=500, seed=1)
    distances = torch.cdist(x, centroids)
    assert torch.equal(labels, distances.argmin(1))
    for j in range(6):
        torch.testing.assert_close(centroids[j], x[labels == j].mean(0), rtol=0, atol=1e-12)


def test_fewer_rows_than_clusters_duplicates_and_reproduces_every_row():
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0], [1.0, 2.0], [0.5, 0.25], [3.0, -1.0]])  # 3 distinct rows
    for init in VectorInit:
        for k in (3, 4, 7):
            centroids, labels = kmeans_vectors(x, k, init=init, seed=2)
            assert centroids.shape == (k, 2)
            assert torch.equal(centroids[labels], x)
            assert labels.unique().numel() == 3  # the surplus centroids receive nothing
            # every centroid is a row of x, and the empty ones kept their initial value
            assert all(bool((x == c).all(1).any()) for c in centroids)


def test_empty_clusters_keep_their_initial_centroid():
    x = torch.tensor([[0.0], [0.0], [1.0]])
    start, _ = kmeans_vectors(x, 4, iterations=0)
    centroids, labels = kmeans_vectors(x, 4, iterations=20)
    used = set(labels.tolist())
    for j in set(range(4)) - used:
        assert torch.equal(centroids[j], start[j])


def test_random_init_takes_distinct_rows():
    x = torch.cat([torch.zeros(50, 2), torch.eye(2)])  # 3 distinct rows, one of them 50 times
    start, _ = kmeans_vectors(x, 3, iterations=0, init="random", seed=7)
    assert torch.unique(start, dim=0).shape[0] == 3


def test_kmeans_is_deterministic_and_ignores_the_global_rng():
    x = torch.randn(120, 4, generator=torch.Generator().manual_seed(3))
    for init in ("kmeans++", "random"):
        torch.manual_seed(1)
        a = kmeans_vectors(x, 8, seed=11, init=init)
        torch.manual_seed(2)
        b = kmeans_vectors(x, 8, seed=11, init=init)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert torch.equal(kmeans_vectors(x, 8, init=init)[0], kmeans_vectors(x, 8, seed=0, init=init)[0])
        assert not torch.equal(kmeans_vectors(x, 8, iterations=0, seed=12, init=init)[0], a[0])
    assert a[0].dtype == torch.float32 and a[1].dtype == torch.int64


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"x": torch.zeros(4)}, "x must be a 2-D floating tensor"),
        ({"x": torch.zeros(4, 2, dtype=torch.int64)}, "x must be a 2-D floating tensor"),
        ({"x": torch.zeros(0, 2)}, "at least one row"),
        ({"x": torch.tensor([[float("nan")]])}, "NaN or Inf"),
        ({"clusters": 0}, "clusters must be a positive int, got 0"),
        ({"clusters": True}, "clusters must be a positive int, got True"),
        ({"iterations": -1}, "iterations must be a non-negative int, got -1"),
        ({"seed": 1.5}, "seed must be an int or None, got 1.5"),
        ({"init": "kmeans"}, "init must be one of .* got 'kmeans'"),
        ({"restarts": 0}, "restarts must be a positive int, got 0"),
    ],
)
def test_kmeans_rejects_bad_arguments(kwargs, match):
    args = {"x": torch.zeros(4, 2), "clusters": 2} | kwargs
    with pytest.raises(ValueError, match=match):
        kmeans_vectors(**args)


# ---------------------------------------------------------------------------------------------- product_quantize


def loop_reconstruct(codebooks: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """The definition, one sub-vector at a time: Ŵ[o, s·d:(s+1)·d] = C_s[codes[o, s]]."""
    subspaces, _, width = codebooks.shape
    out = torch.empty(codes.shape[0], subspaces * width)
    for o in range(codes.shape[0]):
        for s in range(subspaces):
            out[o, s * width : (s + 1) * width] = codebooks[s, codes[o, s]]
    return out


@pytest.mark.parametrize(("out", "inp", "d", "k"), [(12, 8, 2, 4), (7, 9, 3, 5), (5, 6, 6, 2), (16, 4, 1, 3)])
def test_codes_are_the_nearest_codeword_and_reconstruct_follows_the_definition(out, inp, d, k):
    w = torch.randn(out, inp, generator=torch.Generator().manual_seed(out * inp))
    pc = product_quantize(w, d, k, seed=0)
    assert pc.codebooks.shape == (inp // d, k, d) and pc.codebooks.dtype == torch.float32
    assert pc.codes.shape == (out, inp // d) and pc.codes.dtype == torch.int64
    assert torch.equal(pc.reconstruct(), loop_reconstruct(pc.codebooks, pc.codes))
    for s in range(inp // d):
        sub = w[:, s * d : (s + 1) * d].double()
        nearest = torch.cdist(sub, pc.codebooks[s].double()).argmin(1)
        assert torch.equal(pc.codes[:, s], nearest)


@pytest.mark.parametrize("init", ["kmeans++", "random"])
@pytest.mark.parametrize(("out", "inp", "d", "extra"), [(6, 8, 2, 0), (10, 12, 4, 3), (3, 5, 5, 1), (9, 9, 1, 0)])
def test_clusters_at_least_out_reconstruct_every_row_exactly(init, out, inp, d, extra):
    w = torch.randn(out, inp, generator=torch.Generator().manual_seed(inp))
    w[-1] = w[0]  # duplicate rows still reconstruct exactly
    pc = product_quantize(w, d, out + extra, seed=3, init=init)
    assert torch.equal(pc.reconstruct(), w)


def test_rows_an_ulp_apart_keep_their_own_codewords():
    # Large shared components and a tiny one that differs by one float32 ulp: the distance between the rows is
    # ~1e-10, far below the rounding of |x|² − 2x·c + |c|² (~1e-9 here), so only exact differences separate them.
    base = torch.full((4, 16), 1000.0)
    base[:, -1] = torch.tensor([1e-3, 2e-3, 3e-3, 4e-3])
    w = torch.cat([base, base.clone()])
    w[4:, -1] = torch.nextafter(w[4:, -1], torch.tensor(1.0))
    w = w[torch.randperm(8, generator=torch.Generator().manual_seed(0))]
    for init in VectorInit:
        assert torch.equal(product_quantize(w, 16, 8, init=init).reconstruct(), w)


def test_product_quantize_is_deterministic_under_a_seed():
    w = torch.randn(32, 16, generator=torch.Generator().manual_seed(9))
    a = product_quantize(w, 4, 8, seed=5, init="random")
    torch.manual_seed(123)
    b = product_quantize(w, 4, 8, seed=5, init="random")
    c = product_quantize(w, 4, 8, seed=6, init="random", iterations=0)
    assert torch.equal(a.codebooks, b.codebooks) and torch.equal(a.codes, b.codes)
    assert not torch.equal(a.codebooks, c.codebooks)


def test_nbytes_by_hand():
    # out=10, in=12, d=3 → S=4; k=5 → 3 bits. Codes: 10·4·3 = 120 bits = 15 bytes. Codebooks: 4·5·3 float32 = 240.
    pc = product_quantize(torch.randn(10, 12, generator=torch.Generator().manual_seed(0)), 3, 5)
    assert pc.bits_per_code == 3 and pc.nbytes() == 15 + 240
    # out=3, in=4, d=2 → S=2; k=3 → 2 bits. Codes: 3·2·2 = 12 bits → 2 bytes (rounded up once). Codebooks: 48.
    pc = product_quantize(torch.randn(3, 4, generator=torch.Generator().manual_seed(1)), 2, 3)
    assert pc.bits_per_code == 2 and pc.nbytes() == 2 + 48
    # k=1: a single codeword needs no index bits; k=256: 8 bits.
    assert product_quantize(torch.randn(4, 4), 2, 1).nbytes() == 0 + 2 * 1 * 2 * 4
    assert ProductCodes(torch.zeros(1, 256, 1), torch.zeros(3, 1, dtype=torch.int64), 1).bits_per_code == 8
    assert ProductCodes(torch.zeros(1, 257, 1), torch.zeros(3, 1, dtype=torch.int64), 1).bits_per_code == 9


@pytest.mark.parametrize("subvector", [3, 0, -2, 2.0, True])
def test_bad_subvector_is_rejected_by_name_and_value(subvector):
    with pytest.raises(ValueError, match=rf"subvector={subvector!r} must divide|subvector must be a positive int"):
        product_quantize(torch.randn(4, 8), subvector, 2)
    with pytest.raises(ValueError, match="subvector"):
        ProductLinear.from_linear(nn.Linear(8, 4), subvector, 2)


def test_product_quantize_rejects_bad_weights_and_clusters():
    with pytest.raises(ValueError, match="weight must be a 2-D floating tensor"):
        product_quantize(torch.randn(2, 3, 4), 1, 2)
    with pytest.raises(ValueError, match="clusters must be a positive int, got 0"):
        product_quantize(torch.randn(4, 4), 2, 0)
    with pytest.raises(ValueError, match="codes must lie in"):
        ProductCodes(torch.zeros(2, 3, 2), torch.full((4, 2), 3), 4)
    with pytest.raises(ValueError, match="in_features must be"):
        ProductCodes(torch.zeros(2, 3, 2), torch.zeros(4, 2, dtype=torch.int64), 5)


# ---------------------------------------------------------------------------------------------- ProductLinear


@pytest.mark.parametrize(
    ("batch", "inp", "out", "d", "k", "bias"),
    [((), 8, 5, 2, 4, True), ((3,), 12, 7, 3, 5, False), ((2, 4), 16, 9, 4, 16, True), ((2, 1, 3), 6, 1, 6, 2, True)],
)
def test_lookup_forward_equals_linear_on_the_reconstruction(batch, inp, out, d, k, bias):
    g = torch.Generator().manual_seed(inp * out)
    linear = nn.Linear(inp, out, bias=bias)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(out, inp, generator=g))
    layer = ProductLinear.from_linear(linear, d, k, seed=0)
    x = torch.randn(*batch, inp, generator=g)
    expected = F.linear(x, layer.product_codes().reconstruct(), layer.bias)
    y = layer(x)
    assert y.shape == (*batch, out)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


def test_lookup_gradients_match_the_reconstruction():
    g = torch.Generator().manual_seed(0)
    layer = ProductLinear.from_linear(nn.Linear(12, 6), 3, 4, seed=0)
    x = torch.randn(5, 12, generator=g, requires_grad=True)
    upstream = torch.randn(5, 6, generator=g)
    (layer(x) * upstream).sum().backward()
    ours = (x.grad, layer.codebooks.grad, layer.bias.grad)
    books = layer.codebooks.detach().clone().requires_grad_(True)
    bias = layer.bias.detach().clone().requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    weight = books[torch.arange(4).unsqueeze(0), layer.codes].reshape(6, 12)
    (F.linear(x2, weight, bias) * upstream).sum().backward()
    for a, b in zip(ours, (x2.grad, books.grad, bias.grad)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_product_linear_state_dict_round_trip_and_bad_input():
    layer = ProductLinear.from_linear(nn.Linear(8, 4), 2, 3, seed=0)
    assert set(layer.state_dict()) == {"codebooks", "codes", "bias"}
    fresh = ProductLinear(ProductCodes(torch.zeros(4, 3, 2), torch.zeros(4, 4, dtype=torch.int64), 8), torch.zeros(4))
    fresh.load_state_dict(layer.state_dict())
    x = torch.randn(2, 8)
    assert torch.equal(fresh(x), layer(x))
    with pytest.raises(ValueError, match="x must have 8 features in its last dimension, got 6"):
        layer(torch.randn(2, 6))
    with pytest.raises(ValueError, match="linear must be an nn.Linear, got Conv1d"):
        ProductLinear.from_linear(nn.Conv1d(2, 2, 1), 1, 2)


def test_product_linear_function_on_hand_values():
    books = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[2.0, 2.0], [-1.0, 0.0]]])  # S=2, k=2, d=2
    codes = torch.tensor([[0, 1], [1, 0], [1, 1]])  # rows: [1,0,-1,0], [0,1,2,2], [0,1,-1,0]
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert product_linear(x, books, codes, torch.tensor([0.0, 0.0, 10.0])).tolist() == [[-2.0, 16.0, 9.0]]


# ---------------------------------------------------------------------------------------------- whole models


def test_product_quantize_linears_replaces_in_place_and_reports():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 3))
    originals = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    report = product_quantize_linears(model, subvector=4, clusters=8, seed=0)
    assert report.skipped == {"4": "in_features=10 is not divisible by subvector=4"}
    assert list(report.layers) == ["0", "2"]
    assert isinstance(model[0], ProductLinear) and isinstance(model[2], ProductLinear)
    assert type(model[4]) is nn.Linear
    for name in ("0", "2"):
        w, layer, summary = originals[name], model.get_submodule(name), report.layers[name]
        pc = layer.product_codes()
        assert torch.equal(pc.codes, product_quantize(w, 4, 8, seed=0).codes)
        assert summary.fp32_bytes == w.numel() * 4
        assert summary.pq_bytes == pc.nbytes()
        expected = float(torch.linalg.norm(w.double() - pc.reconstruct().double()) / torch.linalg.norm(w.double()))
        assert summary.relative_error == pytest.approx(expected, rel=1e-12)
        assert 0 < summary.relative_error < 1
    # "0": S=4, k=8 → 12·4·3 bits = 18 bytes + 4·8·4·4 = 512 bytes
    assert report.layers["0"].pq_bytes == 18 + 512


def test_product_quantize_linears_include_names_and_attention():
    model = nn.ModuleDict(
        {"attn": nn.MultiheadAttention(8, 2), "enc": nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4)), "head": nn.Linear(4, 2)}
    )
    report = product_quantize_linears(model, 2, 4, include_names=["enc.*", "attn.out_proj"])
    assert list(report.layers) == ["enc.0", "enc.1"]
    assert list(report.skipped) == ["attn.out_proj"]
    assert type(model["head"]) is nn.Linear and type(model["attn"].out_proj) is not ProductLinear
    with pytest.raises(ValueError, match=r"include_names entries match no nn.Linear: \['decoder'\]"):
        product_quantize_linears(model, 2, 4, include_names=["decoder"])
    with pytest.raises(ValueError, match="include_names must be a sequence"):
        product_quantize_linears(model, 2, 4, include_names="head")
    with pytest.raises(ValueError, match="model must contain the Linear layers"):
        product_quantize_linears(nn.Linear(4, 4), 2, 4)
    with pytest.raises(ValueError, match="subvector must be a positive int, got 0"):
        product_quantize_linears(model, 0, 4)
