"""Growing histograms: binning against numpy, exact merging on growth."""

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from lowbit.functional.histogram import add_to_histogram, empty_histogram, regrid, row_moments, split_signed


def _numpy_signed_hist(x: np.ndarray, width: float, bins: int) -> tuple[np.ndarray, np.ndarray]:
    edges = np.linspace(0.0, width, bins + 1)
    pos, _ = np.histogram(x[x >= 0], bins=edges)
    neg, _ = np.histogram(-x[x < 0], bins=edges)
    return pos, neg


def test_binning_matches_numpy_per_tensor_and_per_channel():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 50_000)).astype(np.float32) * np.array([[0.1], [1.0], [7.0]], dtype=np.float32)
    width = np.abs(x).max(axis=1).astype(np.float64)
    for rows, w in ((x, width), (x[1:2], width[1:2])):
        counts = empty_histogram(rows.shape[0], 256)
        add_to_histogram(torch.from_numpy(rows), torch.from_numpy(w), counts)
        pos, neg = split_signed(counts)
        for c in range(rows.shape[0]):
            ref_pos, ref_neg = _numpy_signed_hist(rows[c].astype(np.float64), float(w[c]), 256)
            # numpy's negative bins are closed on the other side, and it corrects values on edges: allow a few to move
            assert np.abs(pos[c].numpy() - ref_pos).sum() <= 4
            assert np.abs(neg[c].numpy() - ref_neg).sum() <= 4
            assert pos[c].sum() + neg[c].sum() == rows.shape[1]


def test_many_channels_use_the_row_parallel_kernel_with_same_result():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.standard_normal((64, 1000)).astype(np.float32))
    width = x.abs().amax(1).double()
    counts = empty_histogram(64, 128)
    add_to_histogram(x, width, counts)
    for c in (0, 31, 63):
        one = empty_histogram(1, 128)
        add_to_histogram(x[c : c + 1], width[c : c + 1], one)
        assert torch.equal(one[0], counts[c])


@given(st.integers(1, 7), st.integers(0, 2**31 - 1))
def test_growth_by_whole_factor_equals_histogram_on_wide_range(factor, seed):
    # Counting on [0, w] then merging k:1 equals counting directly on [0, k·w] (same edges, coarser).
    rng = np.random.default_rng(seed)
    bins = 64
    w = 2.0**-3  # a power of two keeps edges exact, so the comparison is exact
    x = ((rng.random(5000) * 2 - 1) * w).astype(np.float32)
    fine = empty_histogram(1, bins)
    add_to_histogram(torch.from_numpy(x[None]), torch.tensor([w], dtype=torch.float64), fine)
    merged = regrid(fine, torch.tensor([factor]))
    wide = empty_histogram(1, bins)
    add_to_histogram(torch.from_numpy(x[None]), torch.tensor([w * factor], dtype=torch.float64), wide)
    if factor & (factor - 1) == 0:
        assert torch.equal(merged, wide)
    else:  # non-power-of-two widths make edges inexact in float: allow a handful of edge values to move
        assert int((merged - wide).abs().sum()) <= 10
    assert int(merged.sum()) == 5000


def test_all_zero_rows_land_in_bin_zero():
    counts = empty_histogram(2, 16)
    add_to_histogram(torch.zeros(2, 10), torch.zeros(2, dtype=torch.float64), counts)
    pos, neg = split_signed(counts)
    assert pos[:, 0].tolist() == [10, 10] and int(pos.sum()) == 20 and int(neg.sum()) == 0


def test_row_moments_against_float64():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, 10_001)).astype(np.float32) * 3 + 1
    s, s2 = row_moments(torch.from_numpy(x))
    xd = x.astype(np.float64)
    assert np.allclose(s.numpy(), xd.sum(1), rtol=1e-12)
    assert np.allclose(s2.numpy(), (xd**2).sum(1), rtol=1e-12)


def test_non_finite_values_stay_inside_the_array():
    # callers validate data; the kernel must still never index outside the counts (bounds checks are off)
    counts = empty_histogram(1, 8)
    bad = torch.tensor([[float("nan"), float("inf"), -float("inf"), 1e30, -1e30, 0.5]])
    add_to_histogram(bad, torch.tensor([1.0], dtype=torch.float64), counts)
    assert int(counts.sum()) == 6
    assert int(counts[0, 0]) == 2 and int(counts[0, -1]) == 3  # -inf, -1e30 | +inf, 1e30, NaN
    tiny = empty_histogram(1, 8)
    add_to_histogram(torch.tensor([[1e-37, -1e-37]]), torch.tensor([1e-37], dtype=torch.float64), tiny)
    assert int(tiny.sum()) == 2
