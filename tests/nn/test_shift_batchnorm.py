"""Shift-based batch norm against torch's BatchNorm and a float64 formula reference (docs/math.md B5.3–B5.6)."""

import io

import numpy as np
import pytest
import torch
from torch import nn

from lowbit.nn.shift_batchnorm import ShiftBatchNorm1d, ShiftBatchNorm2d

BOUND = 2.0**1.25  # eq. B5.6: √2 (ap2 of γ) · √2 (ap2 of the inverse std) · 2^¼ (the variance estimate, under a sqrt)


def ap2_ref(v: np.ndarray) -> np.ndarray:
    """sign(v)·2^round(log2|v|) in float64 (ap2(0) = 0)."""
    v = np.asarray(v, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(v == 0, 0.0, np.sign(v) * 2.0 ** np.round(np.log2(np.abs(v))))


def shift_bn_ref(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    """Algorithm 3 in float64 over [N, C, ...]: μ, C = x − μ, σ̃² = mean(C·ap2(C)), y = C·ap2(ap2(γ)·(σ̃²+ε)^−½) + β."""
    axes = (0, *range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    centered = x - x.mean(axis=axes, keepdims=True)
    var = (centered * ap2_ref(centered)).mean(axis=axes, keepdims=True)
    xhat = centered * ap2_ref(1.0 / np.sqrt(var + eps))
    return xhat * ap2_ref(gamma).reshape(shape) + beta.reshape(shape)


def paired(bn: nn.Module, shift_cls):
    torch.manual_seed(0)
    with torch.no_grad():
        bn.weight.uniform_(-3.0, 3.0)
        bn.bias.normal_()
    return bn, shift_cls.from_batchnorm(bn)


@pytest.mark.parametrize(
    ("torch_cls", "shift_cls", "shape"),
    [(nn.BatchNorm1d, ShiftBatchNorm1d, (32, 6)), (nn.BatchNorm1d, ShiftBatchNorm1d, (8, 6, 7)),
     (nn.BatchNorm2d, ShiftBatchNorm2d, (8, 6, 5, 5))],
)
def test_training_output_is_within_the_power_of_two_bound_of_torch(torch_cls, shift_cls, shape):
    bn, sbn = paired(torch_cls(6), shift_cls)
    x = torch.randn(shape, dtype=torch.float64) * 3 + 1.5
    bn, sbn = bn.double(), sbn.double()
    view = (1, -1) + (1,) * (len(shape) - 2)
    with torch.no_grad():
        y_torch = bn(x) - bn.bias.view(view)
        y_shift = sbn(x) - sbn.bias.view(view)
    ratio = y_shift / y_torch
    assert bool((ratio >= 1 / BOUND).all()) and bool((ratio <= BOUND).all())  # same sign, bounded factor
    # ... and it is Algorithm 3 exactly, as computed independently:
    ref = shift_bn_ref(x.numpy(), bn.weight.detach().numpy(), bn.bias.detach().numpy(), bn.eps)
    torch.testing.assert_close(sbn(x).detach(), torch.from_numpy(ref), rtol=1e-12, atol=1e-12)


def test_equals_torch_exactly_when_gamma_and_the_std_are_powers_of_two():
    # Per channel c: x = μ_c ± 2^k_c (half each), so C = ±2^k, C·ap2(C) = C², σ̃² = σ² = 4^k; eps = 3·4^k makes
    # σ² + ε = 4^(k+1), an exact power of four, so 1/√(σ²+ε) = 2^−(k+1) is a power of two too.
    k = -2  # eps is one number per module, so every channel gets the same k
    mu = torch.tensor([0.75, -3.5, 10.0])
    signs = torch.tensor([1.0, -1.0]).repeat(16)[torch.randperm(32, generator=torch.Generator().manual_seed(0))]
    x = mu.view(1, 3, 1, 1) + signs.view(2, 1, 4, 4) * 2.0**k
    eps = 3 * 4.0**k
    bn = nn.BatchNorm2d(3, eps=eps)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, -4.0, 1.0]))
        bn.bias.copy_(torch.tensor([0.25, -1.5, 3.0]))
    sbn = ShiftBatchNorm2d.from_batchnorm(bn)
    y_shift = sbn(x)
    assert torch.equal(y_shift, bn(x))
    torch.testing.assert_close(sbn.running_mean, bn.running_mean, rtol=0, atol=1e-7)
    torch.testing.assert_close(sbn.running_var, bn.running_var, rtol=0, atol=1e-7)


def test_eval_uses_the_running_statistics():
    bn, sbn = paired(nn.BatchNorm2d(3, eps=1e-3), ShiftBatchNorm2d)
    with torch.no_grad():
        sbn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        sbn.running_var.copy_(torch.tensor([0.3, 2.5, 7.0]))
    sbn.eval()
    before = {k: v.clone() for k, v in sbn.state_dict().items()}
    x = torch.randn(1, 3, 4, 4)  # one sample: batch statistics would be degenerate
    y = sbn(x).detach().double().numpy()
    rm, rv = sbn.running_mean.double().numpy(), sbn.running_var.double().numpy()
    gamma, beta = sbn.weight.detach().double().numpy(), sbn.bias.detach().double().numpy()
    shape = (1, 3, 1, 1)
    inv = ap2_ref(1.0 / np.sqrt(rv + 1e-3)).reshape(shape)
    expected = (x.double().numpy() - rm.reshape(shape)) * inv * ap2_ref(gamma).reshape(shape) + beta.reshape(shape)
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)
    assert all(torch.equal(v, before[k]) for k, v in sbn.state_dict().items())


def test_eval_equals_torch_exactly_when_running_var_plus_eps_is_a_power_of_four():
    bn = nn.BatchNorm2d(3, eps=2.0**-4).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.5, -1.25, 2.0]))
        bn.running_var.copy_(torch.tensor([4.0, 0.25, 16.0]) - 2.0**-4)  # + eps = 4, 1/4, 16
        bn.weight.copy_(torch.tensor([2.0, -0.5, 0.125]))
        bn.bias.copy_(torch.tensor([1.0, 0.0, -2.5]))
    sbn = ShiftBatchNorm2d.from_batchnorm(bn)
    x = torch.randint(-64, 64, (4, 3, 3, 3)).float() / 8  # few significant bits: every product is exact
    assert torch.equal(sbn(x), bn(x))


def test_without_running_stats_eval_uses_the_batch():
    sbn = ShiftBatchNorm2d(2, track_running_stats=False)
    x = torch.randn(4, 2, 3, 3)
    assert sbn.running_mean is None
    assert torch.equal(sbn.eval()(x), sbn.train()(x))


def test_running_variance_is_the_unbiased_shift_estimate():
    bn, sbn = paired(nn.BatchNorm1d(5, momentum=1.0), ShiftBatchNorm1d)  # momentum 1: running = this batch
    x = torch.randn(64, 5, dtype=torch.float64) * 2 - 1
    bn, sbn = bn.double(), sbn.double()
    bn(x), sbn(x)
    torch.testing.assert_close(sbn.running_mean, bn.running_mean)
    centered = x - x.mean(0)
    expected = (centered * torch.from_numpy(ap2_ref(centered.numpy()))).mean(0) * 64 / 63
    torch.testing.assert_close(sbn.running_var, expected, rtol=1e-12, atol=0)
    ratio = sbn.running_var / bn.running_var
    assert bool((ratio >= 2**-0.5).all()) and bool((ratio <= 2**0.5).all())


def test_cumulative_average_when_momentum_is_none():
    bn, sbn = paired(nn.BatchNorm1d(3, momentum=None), ShiftBatchNorm1d)
    for seed in range(3):
        x = torch.randn(16, 3, generator=torch.Generator().manual_seed(seed)) + seed
        bn(x), sbn(x)
    assert sbn.num_batches_tracked.item() == 3
    torch.testing.assert_close(sbn.running_mean, bn.running_mean)


def test_gradients_flow_to_input_gamma_and_beta():
    bn, sbn = paired(nn.BatchNorm2d(4), ShiftBatchNorm2d)
    bn, sbn = bn.double(), sbn.double()
    x = (torch.randn(6, 4, 5, 5, dtype=torch.float64) * 2 + 1).requires_grad_()
    x_torch = x.detach().clone().requires_grad_()
    g = torch.randn(6, 4, 5, 5, dtype=torch.float64)
    sbn(x).backward(g)
    bn(x_torch).backward(g)
    for grad in (x.grad, sbn.weight.grad, sbn.bias.grad):
        assert grad is not None and bool(grad.isfinite().all())
    torch.testing.assert_close(sbn.bias.grad, bn.bias.grad)  # y = ... + β: the same sum in both
    # ∂y/∂γ straight through ap2(γ) is x̂ = C·ap2(1/√(σ̃²+ε)), computed independently:
    xn = x.detach().numpy()
    centered = xn - xn.mean(axis=(0, 2, 3), keepdims=True)
    var = (centered * ap2_ref(centered)).mean(axis=(0, 2, 3), keepdims=True)
    xhat = centered * ap2_ref(1 / np.sqrt(var + sbn.eps))
    np.testing.assert_allclose(sbn.weight.grad.numpy(), (g.numpy() * xhat).sum(axis=(0, 2, 3)), rtol=1e-10)
    # y depends on x only through x − mean(x), so each channel's input gradient sums to zero ...
    torch.testing.assert_close(x.grad.sum(dim=(0, 2, 3)), torch.zeros(4, dtype=torch.float64), atol=1e-9, rtol=0)
    # ... and it points where batch norm's does.
    assert torch.nn.functional.cosine_similarity(x.grad.flatten(), x_torch.grad.flatten(), dim=0) > 0.9


def test_from_batchnorm_copies_state_and_shares_nothing():
    bn = nn.BatchNorm2d(3, eps=1e-3, momentum=0.3).double()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.5, -2.0, 0.375]))
        bn.bias.copy_(torch.tensor([0.1, 0.2, 0.3]))
    bn(torch.randn(4, 3, 2, 2, dtype=torch.float64))
    bn.eval()
    sbn = ShiftBatchNorm2d.from_batchnorm(bn)
    assert (sbn.eps, sbn.momentum, sbn.affine, sbn.track_running_stats, sbn.training) == (1e-3, 0.3, True, True, False)
    assert sbn.weight.dtype == torch.float64
    for key, value in bn.state_dict().items():
        assert torch.equal(sbn.state_dict()[key], value), key
    with torch.no_grad():
        bn.weight.zero_()
        bn.running_mean.add_(1.0)
    assert sbn.weight.tolist() == [1.5, -2.0, 0.375] and not torch.equal(sbn.running_mean, bn.running_mean)
    back = nn.BatchNorm2d(3).double()
    buf = io.BytesIO()
    torch.save(sbn.state_dict(), buf)
    buf.seek(0)
    back.load_state_dict(torch.load(buf, weights_only=True))  # same keys as torch's BN
    assert torch.equal(back.running_var, sbn.running_var)


def test_from_batchnorm_without_affine_or_running_stats():
    sbn = ShiftBatchNorm1d.from_batchnorm(nn.BatchNorm1d(4, affine=False, track_running_stats=False))
    assert sbn.weight is None and sbn.running_var is None
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [3.0, 6.0, 3.0, 0.0]])
    assert sbn(x).tolist() == [[-1.0, -1.0, 0.0, 1.0], [1.0, 1.0, 0.0, -1.0]]  # C·ap2(1/√(C²+ε)) = ±1 or 0


def test_from_batchnorm_rejects_the_wrong_type():
    with pytest.raises(ValueError, match="nn.BatchNorm2d, got BatchNorm1d"):
        ShiftBatchNorm2d.from_batchnorm(nn.BatchNorm1d(3))
    with pytest.raises(ValueError, match="nn.BatchNorm1d, got Linear"):
        ShiftBatchNorm1d.from_batchnorm(nn.Linear(3, 3))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"num_features": 0}, "num_features must be a positive int, got 0"),
     ({"num_features": 3, "eps": -1.0}, "eps must be a finite number >= 0, got -1.0"),
     ({"num_features": 3, "momentum": 1.5}, r"momentum must be in \[0, 1\] or None, got 1.5")],
)
def test_bad_configuration_is_rejected_when_built(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ShiftBatchNorm2d(**kwargs)


def test_bad_inputs_name_the_shape():
    with pytest.raises(ValueError, match=r"expects 4-D input, got shape \(2, 3\)"):
        ShiftBatchNorm2d(3)(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="got 5 channels"):
        ShiftBatchNorm1d(3)(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        ShiftBatchNorm1d(3)(torch.zeros(1, 3))
