"""Clip rules: ACIQ against the paper's table, entropy against an independent float64 TensorRT oracle."""

import numpy as np
import pytest
import torch
from scipy.stats import entropy as scipy_kl

from lowbit.functional.calibration import Prior, aciq_alpha, entropy_threshold, histogram_mse, histogram_quantile
from lowbit.spec import QuantSpec

# Banner, Nahshan & Soudry (2019), the published optimal clipping values per bit width.
LAPLACE = {2: 2.83, 3: 3.89, 4: 5.03, 5: 6.2, 6: 7.41, 7: 8.64, 8: 9.89}
GAUSSIAN = {1: 1.24, 2: 1.71, 3: 2.15, 4: 2.55, 5: 2.94, 6: 3.29, 7: 3.61, 8: 3.92}


@pytest.mark.parametrize("bits, alpha", LAPLACE.items())
def test_aciq_laplace_matches_paper(bits, alpha):
    assert aciq_alpha(Prior.LAPLACE, bits) == pytest.approx(alpha, abs=0.011)


@pytest.mark.parametrize("bits, alpha", GAUSSIAN.items())
def test_aciq_gaussian_matches_paper(bits, alpha):
    assert aciq_alpha(Prior.GAUSSIAN, bits) == pytest.approx(alpha, abs=0.011)


def trt_oracle(hist: np.ndarray, levels: int = 128, start: int = 128, zero_bin: bool = False) -> int:
    """TensorRT entropy calibration written from its description, in float64 with scipy's KL.

    Levels are filled by ceil boundaries: level k covers bins [ceil(k·i/levels), ceil((k+1)·i/levels)).
    Unless ``zero_bin``, the zero bin takes the next bin's count (NVIDIA's reference calibrator).
    """
    hist = hist.astype(np.float64).copy()
    if not zero_bin:
        hist[0] = hist[1]
    best_i, best = len(hist), np.inf
    for i in range(start, len(hist) + 1):
        p = hist[:i].copy()
        p[i - 1] += hist[i:].sum()
        q = np.zeros(i)
        for k in range(levels):
            a, b = -(-k * i // levels), -(-(k + 1) * i // levels)
            seg = hist[a:b]
            nz = seg > 0
            if nz.any():
                q[a:b][nz] = seg.sum() / nz.sum()
        kl = scipy_kl(p, q) if q.sum() > 0 else np.inf
        if kl < best:
            best_i, best = i, kl
    return best_i


@pytest.mark.parametrize("seed", [0, 1])
def test_entropy_threshold_equals_independent_oracle(seed):
    rng = np.random.default_rng(seed)
    data = np.concatenate([rng.standard_normal(200_000), rng.laplace(scale=3.0, size=2_000)])
    hist, _ = np.histogram(np.abs(data), bins=1024, range=(0, np.abs(data).max()))
    for zero_bin in (False, True):
        ours = entropy_threshold(torch.from_numpy(hist), levels=128, start=128, zero_bin=zero_bin)
        assert ours == trt_oracle(hist, 128, 128, zero_bin)
        assert 128 <= ours < 1024  # a heavy tail is clipped


def test_the_zero_spike_of_a_relu_does_not_drag_the_threshold_down():
    rng = np.random.default_rng(4)
    relu = np.maximum(rng.standard_normal(400_000), 0)  # half the values are exactly 0
    hist, edges = np.histogram(relu, bins=2048, range=(0, relu.max()))
    plain = entropy_threshold(torch.from_numpy(hist), zero_bin=True) * edges[1]
    suppressed = entropy_threshold(torch.from_numpy(hist)) * edges[1]
    assert suppressed > 2.5  # a sensible clip of a half-normal keeps beyond 2.5σ
    assert suppressed > plain


def test_entropy_threshold_low_bits_and_errors():
    rng = np.random.default_rng(2)
    hist, _ = np.histogram(np.abs(rng.standard_normal(50_000)), bins=512)
    assert entropy_threshold(torch.from_numpy(hist), levels=8, start=16) == trt_oracle(hist, 8, 16)
    with pytest.raises(ValueError, match="levels=128"):
        entropy_threshold(torch.ones(64), levels=128)
    with pytest.raises(ValueError, match="empty"):
        entropy_threshold(torch.zeros(256), levels=128)


def test_histogram_quantile_matches_numpy_quantile():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(400_000)
    width = np.abs(x).max()
    edges = np.linspace(0, width, 2049)
    pos = torch.from_numpy(np.histogram(x[x >= 0], edges)[0])
    neg = torch.from_numpy(np.histogram(-x[x < 0], edges)[0])
    for q in (0.0001, 0.01, 0.5, 0.99, 0.9999):
        assert histogram_quantile(pos, neg, width, q) == pytest.approx(np.quantile(x, q), abs=2 * width / 2048)


def test_histogram_mse_matches_direct_computation_on_centres():
    pos = torch.tensor([5, 0, 3, 1])
    neg = torch.tensor([2, 1, 0, 0])
    spec = QuantSpec(bits=2)
    lo, hi = torch.tensor([-1.0, -0.5]), torch.tensor([1.0, 0.5])
    got = histogram_mse(pos, neg, 1.0, lo, hi, spec)
    centres = np.array([-0.375, -0.125, 0.125, 0.625, 0.875])
    counts = np.array([1, 2, 5, 3, 1], dtype=np.float64)
    for k, clip in enumerate((1.0, 0.5)):
        s = np.float32(clip / 1)  # 2-bit signed: qmax = 1
        q = np.clip(np.round(centres.astype(np.float32) / s), -2, 1) * s
        ref = (counts * (q - centres) ** 2).sum() / counts.sum()
        assert float(got[k]) == pytest.approx(ref, rel=1e-6)
