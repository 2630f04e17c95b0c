"""LSQ, PACT and DoReFa against reference implementations of the papers' formulas, written here in float64."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lowbit.functional.dorefa import (
    dorefa_activation,
    dorefa_gradient,
    dorefa_weight,
    dorefa_weight_codes,
    quantize_gradient_ste,
)
from lowbit.functional.lsq import lsq_fake_quantize, lsq_grad_scale, lsq_initial_step
from lowbit.functional.pact import pact_fake_quantize, pact_grid


def _lsq_reference(x, s, qmin, qmax, g, upstream):
    """LSQ (Esser et al. 2020), eqs. 1–3, element by element: value, dL/dx, dL/ds."""
    value, dx, ds = [], [], 0.0
    for xi, ui in zip(x.tolist(), upstream.tolist()):
        v = xi / s
        if v <= qmin:
            value.append(qmin * s); dx.append(0.0); ds += ui * qmin
        elif v >= qmax:
            value.append(qmax * s); dx.append(0.0); ds += ui * qmax
        else:
            r = float(torch.round(torch.tensor(v, dtype=torch.float64)))  # half to even, as torch
            value.append(r * s); dx.append(ui); ds += ui * (r - v)
    return value, dx, ds * g


@given(st.integers(0, 10_000), st.sampled_from([(-8, 7), (0, 15), (-2, 1), (-128, 127)]))
def test_lsq_value_and_gradients_match_the_paper(seed, grid):
    qmin, qmax = grid
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(64, generator=gen, dtype=torch.float64) * 2).requires_grad_()
    s = torch.tensor(0.37, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(64, generator=gen, dtype=torch.float64)
    g = lsq_grad_scale(64, qmax)
    y = lsq_fake_quantize(x, s, qmin, qmax, g)
    (y * upstream).sum().backward()
    value, dx, ds = _lsq_reference(x.detach(), 0.37, qmin, qmax, g, upstream)
    assert torch.allclose(y.detach(), torch.tensor(value, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(x.grad, torch.tensor(dx, dtype=torch.float64))
    assert math.isclose(float(s.grad), ds, rel_tol=1e-9, abs_tol=1e-12)


def test_lsq_per_channel_steps_get_their_own_gradient():
    torch.manual_seed(0)
    w = torch.randn(3, 5, dtype=torch.float64)
    steps = torch.tensor([0.1, 0.2, 0.4], dtype=torch.float64, requires_grad=True)
    lsq_fake_quantize(w, steps.view(3, 1), -8, 7, 1.0).sum().backward()
    for c in range(3):
        _, _, ds = _lsq_reference(w[c], float(steps[c].detach()), -8, 7, 1.0, torch.ones(5, dtype=torch.float64))
        assert math.isclose(float(steps.grad[c]), ds, rel_tol=1e-9, abs_tol=1e-12)


def test_lsq_grad_scale_and_initial_step_are_the_papers():
    assert lsq_grad_scale(9 * 64 * 64, 7) == 1 / math.sqrt(9 * 64 * 64 * 7)
    x = torch.tensor([[1.0, -2.0], [3.0, 0.0]])
    assert float(lsq_initial_step(x, 3)) == pytest.approx(2 * 1.5 / math.sqrt(3))
    assert lsq_initial_step(x, 3, dims=(1,)).flatten().tolist() == pytest.approx([2 * 1.5 / math.sqrt(3)] * 2)
    with pytest.raises(ValueError, match="elements >= 1"):
        lsq_grad_scale(0, 7)


@pytest.mark.parametrize("bits", [2, 4])
def test_pact_unsigned_matches_the_paper(bits):
    torch.manual_seed(bits)
    alpha_value = 1.7
    x = (torch.rand(500, dtype=torch.float64) * 3).requires_grad_()
    alpha = torch.tensor(alpha_value, dtype=torch.float64, requires_grad=True)
    y = pact_fake_quantize(x, alpha, bits)
    y.sum().backward()
    levels = 2**bits - 1
    # PACT eq. 1 and 3: y = round(clip(x, 0, α)·(2^k−1)/α)·α/(2^k−1); dy/dx = 1 on [0, α), dy/dα = 1 where x ≥ α
    clipped = x.detach().clamp(0, alpha_value)
    expected = torch.round(clipped * levels / alpha_value) * alpha_value / levels
    assert torch.allclose(y.detach(), expected, atol=1e-12)
    assert torch.equal(x.grad, ((x.detach() >= 0) & (x.detach() < alpha_value)).double())
    assert float(alpha.grad) == float((x.detach() >= alpha_value).sum())


def test_pact_signed_clips_to_its_grid_and_sends_code_over_divisor_to_alpha():
    x = torch.tensor([-5.0, -0.3, 0.2, 5.0], dtype=torch.float64, requires_grad=True)
    alpha = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    y = pact_fake_quantize(x, alpha, 3, signed=True)
    qmin, qmax, m = pact_grid(3, True)
    assert (qmin, qmax, m) == (-4, 3, 4)
    assert y.detach().tolist() == [-2.0, -0.5, 0.0, 1.5]  # step α/4 = 0.5; top code 3 → 1.5
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]
    assert float(alpha.grad) == pytest.approx(-4 / 4 + 3 / 4)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_dorefa_weight_is_the_papers_transform(bits):
    torch.manual_seed(bits)
    w = torch.randn(200, dtype=torch.float64) * 0.3
    n = 2**bits - 1
    t = torch.tanh(w)
    expected = 2 * torch.round((t / (2 * t.abs().max()) + 0.5) * n) / n - 1
    assert torch.allclose(dorefa_weight(w, bits), expected, atol=1e-12)
    codes, step = dorefa_weight_codes(w, bits)
    assert torch.allclose(codes.double() * float(step), expected, atol=1e-6)
    assert bool((codes % 2 != 0).all()) and int(codes.abs().max()) <= n  # odd codes on a (k+1)-bit narrow grid


def test_dorefa_weight_gradient_is_the_straight_through_derivative_of_the_normalisation():
    torch.manual_seed(0)
    w = (torch.randn(50, dtype=torch.float64) * 0.5).requires_grad_()
    upstream = torch.randn(50, dtype=torch.float64)
    (dorefa_weight(w, 3) * upstream).sum().backward()
    reference = w.detach().clone().requires_grad_()
    t = torch.tanh(reference)
    (((t / (2 * t.abs().max()) + 0.5) * 2 - 1) * upstream).sum().backward()  # rounding skipped (STE)
    assert torch.allclose(w.grad, reference.grad, atol=1e-12)


def test_dorefa_one_bit_weight_is_sign_times_mean_magnitude():
    w = torch.tensor([-0.5, 0.0, 0.25, 1.25], requires_grad=True)
    y = dorefa_weight(w, 1)
    assert y.detach().tolist() == [-0.5, 0.5, 0.5, 0.5]
    y.sum().backward()
    assert w.grad.tolist() == [1.0] * 4


def test_dorefa_activation_clips_to_unit_interval():
    x = torch.tensor([-1.0, 0.1, 0.45, 0.9, 1.5], dtype=torch.float64, requires_grad=True)
    y = dorefa_activation(x, 2)
    assert torch.allclose(y.detach(), torch.round(x.detach().clamp(0, 1) * 3) / 3)
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_dorefa_gradient_quantization_is_unbiased_and_on_its_grid():
    torch.manual_seed(0)
    dr = torch.randn(4, 30, dtype=torch.float64)
    draws = torch.stack([dorefa_gradient(dr, 4, torch.Generator().manual_seed(i)) for i in range(4000)])
    peak = dr.abs().amax(dim=1, keepdim=True)
    assert (draws.mean(0) - dr).abs().max() < 0.02 * float(peak.max())
    levels = (draws / (2 * peak) + 0.5) * 15  # each draw is 2·max·(q/15 − 1/2)
    assert torch.allclose(levels, levels.round(), atol=1e-9)


def test_gradient_quantizer_is_identity_forward():
    x = torch.randn(3, 4, requires_grad=True)
    y = quantize_gradient_ste(x, 6, torch.Generator().manual_seed(1))
    assert torch.equal(y, x)
    y.backward(torch.ones(3, 4))
    assert torch.allclose(x.grad, torch.ones(3, 4), atol=2 / 63)
