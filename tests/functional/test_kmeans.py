"""Scalar k-means (Deep Compression weight sharing) against scikit-learn's Lloyd from the same start."""

import numpy as np
import pytest
import torch

from lowbit.functional.codebook import KMeansInit, kmeans_1d

sklearn_cluster = pytest.importorskip("sklearn.cluster")


def mixture(n: int, seed: int) -> np.ndarray:
    """Weights-like data: a peak at 0 and two shoulders, as a pruned-then-retrained layer looks."""
    rng = np.random.default_rng(seed)
    parts = [rng.normal(0.0, 0.05, n // 2), rng.normal(-0.3, 0.1, n // 4), rng.normal(0.35, 0.1, n - 3 * (n // 4))]
    return rng.permutation(np.concatenate(parts))


def sklearn_lloyd(x: np.ndarray, start: np.ndarray, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    km = sklearn_cluster.KMeans(
        n_clusters=start.size, init=start.reshape(-1, 1), n_init=1, algorithm="lloyd", max_iter=iterations, tol=0.0
    )
    km.fit(x.reshape(-1, 1))
    return km.cluster_centers_.ravel(), km.labels_


def test_linear_init_is_evenly_spaced():
    x = mixture(1000, 0)
    start, _ = kmeans_1d(torch.from_numpy(x), clusters=8, iterations=0)
    np.testing.assert_allclose(start.numpy(), np.linspace(x.min(), x.max(), 8), rtol=0, atol=1e-12)
    assert np.allclose(np.diff(start.numpy()), (x.max() - x.min()) / 7)


def test_density_init_is_the_quantiles():
    x = mixture(1001, 1)
    start, _ = kmeans_1d(torch.from_numpy(x), clusters=5, init="density", iterations=0)
    np.testing.assert_allclose(start.numpy(), np.quantile(x, (np.arange(5) + 0.5) / 5), rtol=0, atol=1e-12)


def test_random_init_is_seeded_distinct_samples():
    x = mixture(500, 2)
    a, _ = kmeans_1d(torch.from_numpy(x), clusters=6, init=KMeansInit.RANDOM, iterations=0, seed=3)
    b, _ = kmeans_1d(torch.from_numpy(x), clusters=6, init="random", iterations=0, seed=3)
    c, _ = kmeans_1d(torch.from_numpy(x), clusters=6, init="random", iterations=0, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert np.isin(a.numpy(), x).all() and torch.unique(a).numel() == 6
    assert bool((a[1:] > a[:-1]).all())
    # seed None is seed 0, never the global RNG
    torch.manual_seed(123)
    d, _ = kmeans_1d(torch.from_numpy(x), clusters=6, init="random", iterations=0)
    assert torch.equal(d, kmeans_1d(torch.from_numpy(x), clusters=6, init="random", iterations=0, seed=0)[0])
    # distinct values even when most samples repeat
    few = torch.tensor([1.0] * 50 + [2.0, 3.0])
    assert kmeans_1d(few, clusters=3, init="random", iterations=0)[0].tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("init", ["linear", "density", "random"])
@pytest.mark.parametrize("clusters", [2, 4, 8, 16])
@pytest.mark.parametrize("iterations", [1, 5, 50])
def test_matches_sklearn_lloyd(init, clusters, iterations):
    x = mixture(3000, clusters + iterations)
    values = torch.from_numpy(x)
    start, _ = kmeans_1d(values, clusters, init=init, iterations=0, seed=7)
    centroids, assignments = kmeans_1d(values, clusters, init=init, iterations=iterations, seed=7)
    ref_centroids, ref_labels = sklearn_lloyd(x, start.numpy(), iterations)
    # sklearn moves empty clusters to far points, lowbit keeps them: the comparison needs none to occur
    assert np.bincount(ref_labels, minlength=clusters).min() > 0
    np.testing.assert_allclose(centroids.numpy(), ref_centroids, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(assignments.numpy(), ref_labels)


def test_converged_result_is_a_lloyd_fixed_point():
    x = torch.from_numpy(mixture(2000, 9)).float().reshape(40, 50)
    centroids, assignments = kmeans_1d(x, clusters=16)
    assert centroids.dtype == torch.float32 and assignments.dtype == torch.int64 and assignments.shape == x.shape
    assert bool((centroids[1:] >= centroids[:-1]).all())
    # brute force nearest centroid
    brute = (x.reshape(-1, 1).double() - centroids.double()).abs().argmin(dim=1).reshape(x.shape)
    assert torch.equal(assignments, brute)
    for k in range(16):
        members = x[assignments == k].double()
        if members.numel():
            assert float(centroids[k]) == pytest.approx(float(members.mean()), abs=1e-6)


def test_empty_cluster_keeps_its_centroid():
    # linear start 0, 5, 10: no value is nearest 5, so that centroid stays put while the others move
    x = torch.tensor([0.0, 0.5, 1.0, 9.0, 10.0], dtype=torch.float64)
    centroids, assignments = kmeans_1d(x, clusters=3)
    assert centroids.tolist() == pytest.approx([0.5, 5.0, 9.5])
    assert assignments.tolist() == [0, 0, 0, 2, 2]


def test_more_clusters_than_distinct_values():
    centroids, assignments = kmeans_1d(torch.tensor([1.0, 1.0, 2.0]), clusters=4)
    assert centroids.tolist() == pytest.approx([1.0, 4 / 3, 5 / 3, 2.0])
    assert assignments.tolist() == [0, 0, 3]
    centroids, assignments = kmeans_1d(torch.tensor([3.0, 3.0, 3.0]), clusters=2)
    assert centroids.tolist() == [3.0, 3.0] and assignments.tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="distinct"):
        kmeans_1d(torch.tensor([1.0, 1.0, 2.0]), clusters=3, init="random")


def test_tie_goes_to_the_lower_centroid():
    # start 0, 1, 2 (linear over [0, 2]); 0.5 is halfway between 0 and 1
    _, assignments = kmeans_1d(torch.tensor([0.0, 0.5, 2.0]), clusters=3, iterations=0)
    assert assignments.tolist() == [0, 0, 2]


def test_errors():
    good = torch.tensor([0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="NaN"):
        kmeans_1d(torch.tensor([0.0, float("nan")]), clusters=2)
    with pytest.raises(ValueError, match="Inf"):
        kmeans_1d(torch.tensor([0.0, float("inf")]), clusters=2)
    with pytest.raises(ValueError, match="floating"):
        kmeans_1d(torch.tensor([1, 2]), clusters=2)
    with pytest.raises(ValueError, match="empty"):
        kmeans_1d(torch.tensor([]), clusters=2)
    with pytest.raises(ValueError, match="clusters"):
        kmeans_1d(good, clusters=0)
    with pytest.raises(ValueError, match="clusters"):
        kmeans_1d(good, clusters=True)
    with pytest.raises(ValueError, match="iterations"):
        kmeans_1d(good, clusters=2, iterations=-1)
    with pytest.raises(ValueError, match="init must be one of"):
        kmeans_1d(good, clusters=2, init="kmeans++")
    with pytest.raises(ValueError, match="seed"):
        kmeans_1d(good, clusters=2, seed=1.5)
