import math

import numpy as np
import pytest
import torch

from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.analysis import cosine, max_abs_error, mse, spearman, sqnr


def test_sqnr_against_numpy_formula():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(1000)
    noise = rng.standard_normal(1000) * 0.01
    ref = 10 * np.log10(np.sum(x**2) / np.sum(noise**2))
    assert sqnr(torch.from_numpy(x), torch.from_numpy(x + noise)) == pytest.approx(ref, rel=1e-12)


def test_sqnr_of_uniform_quantizer_is_about_6db_per_bit():
    # A full-scale uniform signal quantized with b bits has SQNR ≈ 6.02·b dB.
    x = torch.linspace(-1, 1, 100_001, dtype=torch.float64)
    for bits in (4, 8):
        step = 2 / (2**bits)
        x_hat = (torch.floor(x / step) + 0.5) * step
        assert sqnr(x, x_hat) == pytest.approx(6.02 * bits, abs=0.1)


def test_edge_cases():
    x = torch.tensor([1.0, 2.0])
    assert sqnr(x, x) == math.inf
    assert sqnr(torch.zeros(2), x) == -math.inf
    assert cosine(torch.zeros(2), torch.zeros(2)) == 1.0
    assert cosine(x, -x) == pytest.approx(-1.0)
    assert mse(x, x + 1) == 1.0
    assert max_abs_error(x, torch.tensor([1.0, -2.0])) == 4.0
    with pytest.raises(ValueError, match="shapes differ"):
        sqnr(x, torch.zeros(3))


@settings(deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(-3, 3)), min_size=3, max_size=60))
def test_spearman_equals_scipy_with_ties(pairs):
    scipy_stats = pytest.importorskip("scipy.stats")
    x = torch.tensor([float(a) for a, _ in pairs])
    y = torch.tensor([float(b) for _, b in pairs])
    if len(set(x.tolist())) < 2 or len(set(y.tolist())) < 2:
        with pytest.raises(ValueError, match="constant"):
            spearman(x, y)
        return
    assert spearman(x, y) == pytest.approx(scipy_stats.spearmanr(x.numpy(), y.numpy()).statistic, abs=1e-12)


def test_spearman_is_one_for_a_monotone_map_and_rejects_bad_input():
    x = torch.randn(50, dtype=torch.float64)
    assert spearman(x, x.exp()) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="shapes differ"):
        spearman(x, x[:3])
    with pytest.raises(ValueError, match="at least two"):
        spearman(x[:1], x[:1])
