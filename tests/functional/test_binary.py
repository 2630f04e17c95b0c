"""Binary and ternary codes against their papers' definitions, computed independently in float64."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lowbit.functional.binary import (
    binarize,
    ttq_quantize,
    twn_ternarize,
    twn_threshold,
    xnor_input_scale,
    xnor_weight_scale,
)


@given(st.lists(st.floats(-10, 10, allow_nan=False, width=32), min_size=1, max_size=64))
def test_deterministic_binarize_is_sign_with_zero_positive(values):
    x = torch.tensor(values)
    assert binarize(x).tolist() == [1.0 if v >= 0 else -1.0 for v in values]


@pytest.mark.parametrize("value", [-1.5, -0.5, 0.0, 0.3, 2.0])
def test_stochastic_binarize_follows_the_hard_sigmoid(value):
    x = torch.full((200_000,), value, dtype=torch.float64)
    codes = binarize(x, stochastic=True, generator=torch.Generator().manual_seed(1))
    p = min(max((value + 1) / 2, 0.0), 1.0)
    assert set(codes.unique().tolist()) <= {-1.0, 1.0}
    assert abs(float(codes.mean()) - (2 * p - 1)) < 0.01
    again = binarize(x, stochastic=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(codes, again)


def test_xnor_weight_scale_minimises_the_binary_approximation_error():
    torch.manual_seed(0)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    alpha = xnor_weight_scale(w).flatten()
    grid = torch.linspace(0.01, 2.0, 4000, dtype=torch.float64)
    for c in range(4):
        errors = ((w[c].reshape(1, -1) - grid.reshape(-1, 1) * torch.sign(w[c]).reshape(1, -1)) ** 2).sum(1)
        assert abs(float(grid[errors.argmin()]) - float(alpha[c])) < 1e-3


def test_xnor_input_scale_is_the_box_filtered_channel_mean():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    k = xnor_input_scale(x, (3, 3), stride=2, padding=1)
    a = torch.nn.functional.pad(x.abs().mean(1), (1, 1, 1, 1))
    for n in range(2):
        for i in range(k.shape[2]):
            for j in range(k.shape[3]):
                window = a[n, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3]
                assert abs(float(k[n, 0, i, j]) - float(window.sum()) / 9) < 1e-12


def test_twn_codes_threshold_and_scale():
    torch.manual_seed(2)
    w = torch.randn(5, 40, dtype=torch.float64)
    codes, alpha = twn_ternarize(w)
    delta = 0.7 * w.abs().mean()
    assert float(twn_threshold(w)) == pytest.approx(float(delta))
    assert torch.equal(codes, torch.where(w > delta, 1.0, torch.where(w < -delta, -1.0, 0.0)).double())
    # α = mean |W| over the support minimises ‖W − α·T‖² for the chosen T
    grid = torch.linspace(0.01, 3.0, 6000, dtype=torch.float64)
    errors = ((w.reshape(1, -1) - grid.reshape(-1, 1) * codes.reshape(1, -1)) ** 2).sum(1)
    assert abs(float(grid[errors.argmin()]) - float(alpha)) < 1e-3
    per_channel, alphas = twn_ternarize(w, per_channel=True)
    for c in range(5):
        row_delta = 0.7 * w[c].abs().mean()
        support = w[c].abs() > row_delta
        assert torch.equal(per_channel[c] != 0, support)
        assert float(alphas[c, 0]) == pytest.approx(float(w[c].abs()[support].mean()))


def test_ttq_gradients_match_the_paper():
    torch.manual_seed(3)
    w = torch.randn(50, dtype=torch.float64, requires_grad=True)
    wp = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    wn = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(50, dtype=torch.float64)
    (ttq_quantize(w, wp, wn, threshold=0.1) * upstream).sum().backward()
    delta = 0.1 * float(w.detach().abs().max())
    pos, neg = w.detach() > delta, w.detach() < -delta
    # Zhu et al. 2017, eqs. 7–8: W_p and W_n gather their parts' gradients (W_n's value is −W_n there); the
    # latent gradient is scaled by W_p, 1 and W_n
    assert float(wp.grad) == pytest.approx(float(upstream[pos].sum()))
    assert float(wn.grad) == pytest.approx(-float(upstream[neg].sum()))
    expected = torch.where(pos, 0.8 * upstream, torch.where(neg, 0.6 * upstream, upstream))
    assert torch.allclose(w.grad, expected)
    with pytest.raises(ValueError, match="threshold"):
        ttq_quantize(w, wp, wn, threshold=1.5)
