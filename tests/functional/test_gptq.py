"""GPTQ rounding: equals round-to-nearest without input correlation, beats it on the layer's own output error."""

import pytest
import torch

from lowbit.functional.affine import choose_qparams, quantize, reduce_minmax
from lowbit.functional.gptq import gptq_codes, hessian
from lowbit.spec import PerChannel, QuantSpec


def _grid(w, bits):
    spec = QuantSpec(bits=bits, granularity=PerChannel(0))
    qp = choose_qparams(*reduce_minmax(w, spec.granularity), spec)
    return qp, qp.scale.reshape(-1, 1).expand_as(w), qp.zero_point.reshape(-1, 1).expand_as(w), spec


def test_uncorrelated_inputs_give_round_to_nearest():
    torch.manual_seed(0)
    w = torch.randn(16, 40)
    qp, scale, zero, spec = _grid(w, 4)
    codes = gptq_codes(w, torch.diag(torch.rand(40) + 0.5), scale, zero, spec.qmin, spec.qmax, block=16)
    assert torch.equal(codes, quantize(w, qp).to(torch.int32))


@pytest.mark.parametrize("bits", [3, 4])
def test_output_error_on_correlated_inputs_is_below_round_to_nearest(bits):
    torch.manual_seed(1)
    mixing = torch.randn(64, 64)
    x = torch.randn(2048, 64) @ mixing  # strongly correlated features
    w = torch.randn(32, 64)
    qp, scale, zero, spec = _grid(w, bits)
    codes = gptq_codes(w, hessian(x), scale, zero, spec.qmin, spec.qmax, block=32)
    assert codes.min() >= spec.qmin and codes.max() <= spec.qmax
    nearest = quantize(w, qp).double()
    exact = x.double() @ w.double().T

    def error(c):
        return float(((x.double() @ ((c.double() - zero.double()) * scale.double()).T) - exact).pow(2).mean())

    assert error(codes) < 0.7 * error(nearest)  # independent float64 check of the objective GPTQ minimises


def test_bad_shapes_are_named():
    w = torch.randn(4, 5)
    _, scale, zero, spec = _grid(w, 4)
    with pytest.raises(ValueError, match="needs hess"):
        gptq_codes(w, torch.eye(4), scale, zero, spec.qmin, spec.qmax)
