"""High-bias absorption and bias correction against hand-derived numbers and independent measurements."""

import pytest
import torch
from torch import nn

from lowbit.functional.affine import dequantize
from lowbit.functional.gaussian import clipped_normal_mean
from lowbit.nn.layers import quantize_weight
from lowbit.spec import PerChannel, QuantSpec
from lowbit.transforms import BiasCorrection, absorb_bias, correct_bias, equalize, fold_bn


def _with_bn(beta, gamma, width=3):
    model = nn.Sequential(nn.Linear(4, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, 2)).eval()
    with torch.no_grad():
        model[1].bias.copy_(torch.tensor(beta))
        model[1].weight.copy_(torch.tensor(gamma))
    return model


def test_absorption_moves_mean_minus_three_sigma_and_is_exact_above_it():
    model = _with_bn([10.0, 0.0, 5.0], [1.0, 2.0, -1.0])
    with torch.no_grad():
        model[0].weight.zero_(), model[0].bias.zero_()  # the pre-activation is exactly β: always above c
    folded = fold_bn(model)
    before = folded.get_submodule("3").bias.clone()
    absorbed, report = absorb_bias(folded)
    # c = max(0, β − 3|γ|) = (7, 0, 2); the consumer gains W₂ · c
    c = torch.tensor([7.0, 0.0, 2.0])
    assert report.absorbed == {"0": 2}
    assert torch.allclose(absorbed.get_submodule("0").bias, torch.tensor([3.0, 0.0, 3.0]))
    assert torch.allclose(absorbed.get_submodule("3").bias, before + absorbed.get_submodule("3").weight @ c)
    x = torch.randn(5, 4)
    with torch.no_grad():
        assert torch.allclose(absorbed(x), model(x), atol=1e-5)


def test_absorption_skips_padded_consumers_and_pairs_without_statistics():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(2, 2, 1)).eval()
    _, report = absorb_bias(fold_bn(model))
    assert report.absorbed == {}
    assert any("pads with zeros" in s for s in report.skipped)
    assert any("no BatchNorm statistics on 3" in s for s in report.skipped)
    with pytest.raises(ValueError, match="traced"):
        absorb_bias(model)


@pytest.mark.parametrize("low, high", [(0.0, float("inf")), (0.0, 6.0), (float("-inf"), float("inf")), (-1.0, 2.0)])
def test_clipped_normal_mean_against_monte_carlo(low, high):
    mean, std = torch.tensor([-1.0, 0.0, 2.5, 5.0]), torch.tensor([0.5, 1.0, 2.0, 3.0])
    samples = mean + std * torch.randn(2_000_000, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    clipped = samples.clamp(low, high)
    # five standard errors of the Monte-Carlo mean
    bound = 5 * clipped.std(0) / clipped.shape[0] ** 0.5 + 1e-12
    assert ((clipped_normal_mean(mean, std, low, high) - clipped.mean(0)).abs() <= bound).all()
    assert torch.equal(clipped_normal_mean(torch.tensor([7.0]), torch.tensor([0.0]), 0.0, 6.0),
                       torch.tensor([6.0], dtype=torch.float64))


def test_empirical_correction_zeroes_the_mean_output_error_on_its_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    batches = [torch.randn(64, 16) + 1.0 for _ in range(4)]
    spec = QuantSpec(bits=3, granularity=PerChannel(0))
    corrected, report = correct_bias(fold_bn(model), spec, mode=BiasCorrection.EMPIRICAL, calibration=batches)
    assert set(report.corrected) == {"0", "2"}
    # independent check: the quantized second layer, fed the float first layer's outputs, errs by zero on average
    hidden = torch.relu(model[0](torch.cat(batches))).detach()
    layer = corrected.get_submodule("2")
    q, qp = quantize_weight(layer.weight, spec)
    quantized = hidden @ dequantize(q, qp).T + layer.bias
    float_out = model[2](hidden)
    uncorrected = hidden @ dequantize(q, qp).T + model[2].bias
    assert (quantized - float_out).mean(0).abs().max() < 1e-4
    assert (uncorrected - float_out).mean(0).abs().max() > 100 * (quantized - float_out).mean(0).abs().max()


def test_analytic_correction_matches_the_empirical_one_on_normal_data():
    torch.manual_seed(1)
    beta, gamma = torch.randn(32), torch.rand(32) + 0.5
    model = _with_bn(beta.tolist(), gamma.tolist(), width=32)
    model[3] = nn.Linear(32, 8)
    analytic_model, report = correct_bias(fold_bn(model), QuantSpec(bits=3, granularity=PerChannel(0)))
    assert list(report.corrected) == ["3"] and report.skipped == [
        "0: its input comes from input_1, which no BatchNorm statistics describe"]
    # data whose BN output really is N(β, γ²): the measured correction must agree with the formula's
    z = beta + gamma * torch.randn(200_000, 32)
    folded = fold_bn(model)
    with torch.no_grad():
        folded.get_submodule("0").weight.zero_()
        folded.get_submodule("0").bias.zero_()
    fed = [z[i : i + 50_000] for i in range(0, 200_000, 50_000)]

    class Shifted(nn.Module):  # inputs are the pre-activation values themselves
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner.get_submodule("3")(torch.relu(x))

    measured = Shifted(folded)
    from lowbit.transforms.correct_bias import expected_inputs_empirical

    means = expected_inputs_empirical(measured, fed)["inner.3"]
    assert torch.allclose(means, clipped_normal_mean(beta, gamma, 0.0, float("inf")), atol=0.02)
    # and the bias change is ε · E[x] with those measured means
    layer = folded.get_submodule("3")
    q, qp = quantize_weight(layer.weight, QuantSpec(bits=3, granularity=PerChannel(0)))
    measured_shift = (dequantize(q, qp).double() - layer.weight.double()) @ means
    applied = layer.bias.double() - analytic_model.get_submodule("3").bias.double()
    assert torch.allclose(applied, measured_shift, atol=0.01) and applied.abs().max() > 0.01


def test_transforms_chain_on_a_zoo_model_keeps_it_close():
    from lowbit.zoo import load

    model = load("resnet20").model.eval()
    equalized, _ = equalize(model)
    absorbed, report = absorb_bias(equalized)
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        drift = (absorbed(x) - model(x)).abs().max() / model(x).abs().max()
    assert drift < 0.05, (drift, report)
