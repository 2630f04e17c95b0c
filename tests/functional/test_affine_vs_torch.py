"""Bit-exactness against torch's fake quantization, with its one documented arithmetic difference.

torch's CPU kernels compute ``x * (1/scale)``; lowbit (like ONNX QuantizeLinear) computes ``x / scale``. The
two differ only where the float32 reciprocal moves ``x/scale`` across a rounding tie; every such element is
checked to be exactly that case, one step apart. With a power-of-two scale the reciprocal is exact and the
outputs must match everywhere.
"""

import pytest
import torch

from lowbit import PerChannel, QParams, QuantSpec
from lowbit.functional import fake_quantize

N = 1_000_000


def _torch_rounding_differs(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    inv = torch.tensor(1.0, dtype=torch.float32) / scale
    return torch.round(x / scale) != torch.round(x * inv)


def _compare(ours, ref, x, scale_b):
    diff = ours != ref
    explained = _torch_rounding_differs(x, scale_b)
    assert bool((explained | ~diff).all()), "a mismatch that the reciprocal does not explain"
    # where they differ, they are exactly one step apart
    step = scale_b.expand_as(x)[diff]
    assert torch.allclose((ours[diff] - ref[diff]).abs(), step, rtol=1e-5, atol=2e-6)
    assert int(diff.sum()) <= 20 * x.numel() // N + 5
    return diff


@pytest.mark.parametrize("scale, zp, qmin, qmax", [(0.0235, 3, -128, 127), (3 / 255, 85, 0, 255), (0.1, 0, -8, 7)])
def test_per_tensor_values_and_gradients(scale, zp, qmin, qmax):
    torch.manual_seed(0)
    x = (torch.randn(N) * 3).requires_grad_()
    signed = qmin < 0
    spec = QuantSpec(bits=8 if qmax > 7 else 4, signed=signed, symmetric=False)
    qp = QParams(torch.tensor(scale, dtype=torch.float32), torch.tensor(zp, dtype=torch.int32), spec)
    ours = fake_quantize(x, qp)
    ours.sum().backward()
    our_grad = x.grad.clone()
    x.grad = None
    ref = torch.fake_quantize_per_tensor_affine(x, scale, zp, qmin, qmax)
    ref.sum().backward()
    diff = _compare(ours.detach(), ref.detach(), x.detach(), qp.scale)
    assert torch.equal(our_grad[~diff], x.grad[~diff])
    assert 0 < int((x.grad == 0).sum()) < N  # both clipped and unclipped elements were exercised


@pytest.mark.parametrize("scale", [2.0**-5, 2.0**-7, 0.5])
def test_power_of_two_scale_is_bit_exact_everywhere(scale):
    torch.manual_seed(1)
    x = torch.randn(N) * 2
    qp = QParams(torch.tensor(scale), torch.tensor(-5, dtype=torch.int32), QuantSpec(symmetric=False))
    ref = torch.fake_quantize_per_tensor_affine(x, scale, -5, -128, 127)
    assert torch.equal(fake_quantize(x, qp), ref)


@pytest.mark.parametrize("axis", [0, 1])
def test_per_channel_values_and_gradients(axis):
    torch.manual_seed(2)
    x = torch.randn(64, 48, 9) * torch.rand(1, 48, 1) * 4
    channels = x.shape[axis]
    scale = (torch.rand(channels) * 0.05 + 0.001).to(torch.float32)
    zp = torch.randint(-20, 20, (channels,), dtype=torch.int32)
    spec = QuantSpec(symmetric=False, granularity=PerChannel(axis))
    qp = QParams(scale, zp, spec)
    xs = x.clone().requires_grad_()
    ours = fake_quantize(xs, qp)
    ours.sum().backward()
    xr = x.clone().requires_grad_()
    ref = torch.fake_quantize_per_channel_affine(xr, scale, zp, axis, -128, 127)
    ref.sum().backward()
    shape = [channels if d == axis else 1 for d in range(x.ndim)]
    diff = _compare(ours.detach(), ref.detach(), x, scale.view(shape))
    assert torch.equal(xs.grad[~diff], xr.grad[~diff])
