import math

import numpy as np
import pytest
import torch

from lowbit.analysis import cosine, max_abs_error, mse, sqnr


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
