"""Binary/ternary quantizers and the TensorLayer-named layers against the papers' formulas."""

import pytest
import torch
from torch.nn import functional as F

from lowbit.functional.binary import five_level_quantize
from lowbit.nn import BinaryConv2d, BinaryLinear, DorefaConv2d, SignQuantizer, TernaryLinear
from lowbit.nn.binary_quant import (
    BinaryWeightQuantizer,
    FiveLevelWeightQuantizer,
    SignActivationQuantizer,
    TernaryWeightQuantizer,
    TTQWeightQuantizer,
    clip_latent_weights,
)
from lowbit.functional.affine import dequantize


def _sign(t):
    return torch.where(t >= 0, 1.0, -1.0)


def test_bnn_weights_are_signs_with_the_htanh_gradient():
    w = torch.tensor([[-1.5, -0.2, 0.0, 0.7, 2.0]], requires_grad=True)
    y = BinaryWeightQuantizer()(w)
    assert y.tolist() == [[-1.0, -1.0, 1.0, 1.0, 1.0]]
    y.sum().backward()
    assert w.grad.tolist() == [[0.0, 1.0, 1.0, 1.0, 0.0]]


def test_xnor_weight_gradient_is_one_over_n_plus_alpha_in_the_window():
    torch.manual_seed(0)
    w = (torch.randn(3, 8) * 0.8).requires_grad_()
    q = BinaryWeightQuantizer(scaled=True)
    g = torch.randn(3, 8)
    (q(w) * g).sum().backward()
    wd = w.detach()
    alpha = wd.abs().mean(1, keepdim=True)
    # d/dW of α·sign(W) with α = mean|W|: sign(W)·(Σ g·sign)/n + α·g·1_{|W|≤1}   (XNOR-Net eq. 7, full form)
    expected = _sign(wd) * (g * _sign(wd)).sum(1, keepdim=True) / 8 + alpha * g * (wd.abs() <= 1)
    assert torch.allclose(w.grad, expected, atol=1e-6)


def test_stochastic_binarisation_only_while_training():
    q = BinaryWeightQuantizer(stochastic=True)
    w = torch.full((20000,), 0.5)
    torch.manual_seed(0)
    assert abs(float(q(w).mean()) - 0.5) < 0.03  # E = 2·P(+1) − 1 = 2·0.75 − 1
    q.eval()
    assert torch.equal(q(w), torch.ones_like(w))


def test_latent_weights_are_clipped_after_a_step():
    layer = BinaryLinear(4, 3)
    with torch.no_grad():
        layer.weight.mul_(10)
    assert clip_latent_weights(torch.nn.Sequential(layer)) == 1
    assert float(layer.weight.detach().abs().max()) <= 1.0


def test_ternary_export_is_the_twn_rule():
    torch.manual_seed(1)
    w = torch.randn(6, 10)
    q = TernaryWeightQuantizer()
    codes, qp = q.export(w)
    delta = 0.7 * w.abs().mean()
    assert torch.equal(codes.float(), torch.where(w.abs() > delta, torch.sign(w), torch.zeros_like(w)))
    assert torch.allclose(qp.scale, w.abs()[w.abs() > delta].mean())
    assert torch.equal(dequantize(codes, qp), q(w))


def test_five_level_scale_is_optimal_against_a_brute_force_search():
    torch.manual_seed(2)
    w = torch.randn(4000, dtype=torch.float64)
    codes, alpha = five_level_quantize(w)
    error = ((w - alpha * codes) ** 2).sum()
    best = min(((w - a * torch.round(w / a).clamp(-2, 2)) ** 2).sum() for a in torch.linspace(0.3, 2.0, 1701))
    assert error <= best * (1 + 1e-4)
    assert set(codes.unique().tolist()) == {-2.0, -1.0, 0.0, 1.0, 2.0}


def test_five_level_quantizer_exports_its_values():
    torch.manual_seed(3)
    w = torch.randn(5, 7)
    q = FiveLevelWeightQuantizer(per_channel=True)
    codes, qp = q.export(w)
    assert int(codes.abs().max()) == 2 and qp.spec.bits == 3
    assert torch.allclose(dequantize(codes, qp), q(w))


def test_ttq_eval_values_are_the_exported_grid():
    torch.manual_seed(4)
    w = torch.randn(8, 8)
    q = TTQWeightQuantizer(w)
    assert float(q.wp) > 0 and float(q.wn) > 0
    train_values = q(w)
    assert set(train_values.unique().tolist()) == {-float(q.wn), 0.0, float(q.wp)}
    q.eval()
    codes, qp = q.export(w)
    assert torch.equal(dequantize(codes, qp), q(w))
    assert float((q(w) - train_values).abs().max()) <= float(qp.scale) / 2 + 1e-7


def test_sign_edges_train_and_freeze_as_sign():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 3.0], requires_grad=True)
    q = SignActivationQuantizer()
    y = q.fake_quantize(x)
    y.sum().backward()
    assert y.tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0] and x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
    assert SignQuantizer()(x.detach()).tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0]


def test_binary_conv2d_is_the_float_conv_of_signs():
    torch.manual_seed(5)
    layer = BinaryConv2d(3, 4, 3, padding=1, stride=2)
    x = torch.randn(2, 3, 7, 7)
    expected = F.conv2d(_sign(x), _sign(layer.weight), layer.bias, stride=2, padding=1)
    assert torch.allclose(layer(x), expected, atol=1e-5)


def test_xnor_conv2d_scales_by_alpha_and_k():
    torch.manual_seed(6)
    layer = BinaryConv2d(3, 4, 3, padding=1, bias=False, xnor=True)
    x = torch.randn(2, 3, 6, 6)
    alpha = layer.weight.detach().abs().mean((1, 2, 3)).reshape(1, -1, 1, 1)
    k = F.conv2d(x.abs().mean(1, keepdim=True), torch.full((1, 1, 3, 3), 1 / 9), padding=1)
    expected = F.conv2d(_sign(x), _sign(layer.weight.detach()), padding=1) * alpha * k
    assert torch.allclose(layer(x), expected, atol=1e-5)


def test_xnor_linear_uses_the_row_mean():
    torch.manual_seed(7)
    layer = BinaryLinear(6, 3, xnor=True)
    x = torch.randn(4, 6)
    alpha = layer.weight.detach().abs().mean(1)
    expected = (_sign(x) @ _sign(layer.weight.detach()).T) * alpha * x.abs().mean(1, keepdim=True) + layer.bias
    assert torch.allclose(layer(x), expected, atol=1e-5)


def test_ternary_and_dorefa_layers():
    torch.manual_seed(8)
    ternary = TernaryLinear(10, 4, bias=False)
    x = torch.randn(3, 10)
    w = ternary.weight.detach()
    delta = 0.7 * w.abs().mean()
    alpha = w.abs()[w.abs() > delta].mean()
    assert torch.allclose(ternary(x), x @ (alpha * torch.sign(w) * (w.abs() > delta)).T, atol=1e-5)
    dorefa = DorefaConv2d(2, 3, 3, weight_bits=1, activation_bits=2, bias=False)
    x = torch.rand(1, 2, 5, 5) * 1.5
    xq = torch.round(x.clamp(0, 1) * 3) / 3
    wq = _sign(dorefa.weight.detach()) * dorefa.weight.detach().abs().mean()
    assert torch.allclose(dorefa(x), F.conv2d(xq, wq), atol=1e-5)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="ternary rule"):
        TernaryLinear(3, 2, rule="tnw")
    with pytest.raises(ValueError, match="weight_bits"):
        DorefaConv2d(2, 2, 3, weight_bits=0)
    with pytest.raises(ValueError, match="fixed grid"):
        BinaryWeightQuantizer().set_bits(4)
    with pytest.raises(ValueError, match="clip"):
        BinaryWeightQuantizer(clip=0.0)
