"""QATLayer's BatchNorm folding (whitepaper) against float64 references, and export against eval mode."""

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lowbit.functional.affine import choose_qparams, fake_quantize, reduce_minmax
from lowbit.nn.fake_quant import (
    DoReFaWeightQuantizer,
    LSQActivationQuantizer,
    LSQWeightQuantizer,
    PACTActivationQuantizer,
    STEActivationQuantizer,
    STEWeightQuantizer,
)
from lowbit.nn.qat_layers import QATLayer
from lowbit.spec import PerChannel, QuantSpec

W4 = QuantSpec(bits=4, granularity=PerChannel(0))
A4 = QuantSpec(bits=4, signed=False, symmetric=False)


def _conv_bn(seed=0):
    torch.manual_seed(seed)
    conv, bn = nn.Conv2d(3, 6, 3, padding=1, bias=True).double(), nn.BatchNorm2d(6).double()
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(-1.5, 1.5), bn.bias.uniform_(-0.3, 0.3)  # a negative γ too
    return conv, bn


def _layer(conv, bn, quantizer):
    return QATLayer(conv, quantizer, bn).double()


def test_frozen_fold_without_quantization_is_conv_then_eval_bn():
    conv, bn = _conv_bn()
    q = STEWeightQuantizer(W4)
    q.enabled = False
    layer = _layer(conv, bn, q)
    layer.freeze_bn()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    reference = bn.eval()(conv(x))
    assert torch.allclose(layer.train()(x), reference, atol=1e-12)
    assert torch.allclose(layer.eval()(x), reference, atol=1e-12)


def test_training_fold_without_quantization_is_conv_then_batch_statistics_bn():
    conv, bn = _conv_bn(1)
    q = STEWeightQuantizer(W4)
    q.enabled = False
    layer = _layer(conv, bn, q).train()
    reference_bn = copy.deepcopy(bn).train()
    x = torch.randn(8, 3, 6, 6, dtype=torch.float64)
    assert torch.allclose(layer(x), reference_bn(conv(x)), atol=1e-10)
    assert torch.allclose(layer.bn.running_mean, reference_bn.running_mean, atol=1e-12)
    assert torch.allclose(layer.bn.running_var, reference_bn.running_var, atol=1e-12)


def test_training_fold_with_quantization_is_the_whitepapers_corrected_form():
    conv, bn = _conv_bn(2)
    layer = _layer(conv, bn, STEWeightQuantizer(W4)).train()
    x = torch.randn(8, 3, 6, 6, dtype=torch.float64)
    std = torch.sqrt(bn.running_var + bn.eps)
    factor = bn.weight / std
    w_fold = conv.weight * factor.view(-1, 1, 1, 1)
    w_q = fake_quantize(w_fold.detach(), choose_qparams(*reduce_minmax(w_fold.detach(), W4.granularity), W4))
    # Krishnamoorthi 2018, fig. 8: quantize W·γ/σ (running σ), then y = (σ/σ_B)·conv(x, w_q)·… via batch statistics
    raw = F.conv2d(x, w_q, None, padding=1) / factor.view(1, -1, 1, 1) + conv.bias.view(1, -1, 1, 1)
    mean, var = raw.mean(dim=(0, 2, 3)), raw.var(dim=(0, 2, 3), unbiased=False)
    expected = (raw - mean.view(1, -1, 1, 1)) / torch.sqrt(var + bn.eps).view(1, -1, 1, 1) * bn.weight.view(1, -1, 1, 1) \
        + bn.bias.view(1, -1, 1, 1)
    assert torch.allclose(layer(x), expected, atol=1e-10)


@pytest.mark.parametrize("make", [lambda w: STEWeightQuantizer(W4), lambda w: LSQWeightQuantizer(W4, w),
                                  lambda w: DoReFaWeightQuantizer(QuantSpec(bits=2))])
def test_to_quantized_computes_what_eval_mode_computes(make):
    conv, bn = _conv_bn(3)
    layer = _layer(conv, bn, make(conv.weight.detach())).eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    frozen = layer.float().to_quantized()
    assert frozen.weight_spec.granularity == PerChannel(0)
    assert torch.equal(frozen(x.float()), layer(x.float()))  # bit for bit, DoReFa's per-channel scales included


def test_linear_without_bn_exports_the_fake_quantized_weight_exactly():
    torch.manual_seed(4)
    linear = nn.Linear(16, 5)
    layer = QATLayer(linear, LSQWeightQuantizer(W4, linear.weight.detach()))
    frozen = layer.to_quantized()
    assert torch.equal(frozen.dequantized_weight(), layer.weight_quantizer(layer.weight).detach())


def test_bad_layers_are_named():
    with pytest.raises(ValueError, match="wraps Linear, Conv1d or Conv2d"):
        QATLayer(nn.ReLU(), STEWeightQuantizer(W4))
    with pytest.raises(ValueError, match="BatchNorm"):
        QATLayer(nn.Conv2d(1, 4, 3), STEWeightQuantizer(W4), nn.BatchNorm2d(5))
    with pytest.raises(ValueError, match="symmetric per-tensor or per-channel"):
        LSQWeightQuantizer(QuantSpec(bits=4, symmetric=False), torch.ones(2, 2))


@pytest.mark.parametrize("cls", [LSQActivationQuantizer, PACTActivationQuantizer, STEActivationQuantizer])
@pytest.mark.parametrize("signed", [False, True])
def test_activation_export_is_an_integer_zero_point_on_the_edge_spec(cls, signed):
    torch.manual_seed(5)
    q = cls(A4, "edge")
    data = torch.randn(4096) if signed else torch.rand(4096) * 3
    q.initializing = True
    q(data)
    q.initializing = False
    q.finish()
    assert bool(q.signed) == signed
    qp = q.export()
    x = torch.randn(2000) * 4
    # what the ActivationQuantizer of a converted model computes: the same values
    assert torch.equal(fake_quantize(x, qp), q.eval().fake_quantize(x).detach())


def test_uninitialised_activation_quantizer_says_so():
    with pytest.raises(RuntimeError, match="never initialised"):
        LSQActivationQuantizer(A4, "output of conv1")(torch.ones(2))


def test_a_channel_with_zero_gamma_stays_finite_and_outputs_beta():
    conv, bn = _conv_bn(6)
    with torch.no_grad():
        bn.weight[2] = 0.0
    layer = _layer(conv, bn, STEWeightQuantizer(W4)).train()
    y = layer(torch.randn(4, 3, 8, 8, dtype=torch.float64))
    assert bool(torch.isfinite(y).all())
    assert torch.allclose(y[:, 2], torch.full_like(y[:, 2], float(bn.bias[2].detach())))
