"""Frozen binary/ternary models through the engine: the packed bit kernels give the reference kernels' integers."""

import pytest
import torch
from torch import nn

from lowbit import qat
from lowbit.engine import Program, lower
from lowbit.engine.bits import bit_accumulator


def _model(hidden, channels):
    return nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.Hardtanh(),
                         nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.Hardtanh(),
                         nn.MaxPool2d(2),
                         nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.BatchNorm2d(channels),
                         nn.Hardtanh(), nn.Flatten(),
                         nn.Linear(channels * 4, hidden), nn.BatchNorm1d(hidden), nn.Hardtanh(),
                         nn.Linear(hidden, 10))


def _frozen(weights, hidden=70, channels=20, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(48, 1, 8, 8)
    config = qat.QATConfig(weights, "sign")
    model = qat.prepare(_model(hidden, channels), qat.QATConfig.for_quantizer("bnn").default_recipe(), config,
                        calibration=[x])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        model(x).logsumexp(1).mean().backward()
        opt.step()
        qat.clip_latent_weights(model)
    return qat.convert(model.eval()), x


@pytest.mark.parametrize("weights,kernel", [("bnn", "binary"), ("twn", "ternary")])
@pytest.mark.parametrize("hidden,channels", [(70, 20), (130, 64)])
def test_packed_kernels_equal_the_reference_kernels(weights, kernel, hidden, channels):
    frozen, x = _frozen(weights, hidden, channels)
    program = lower(frozen, x[:1])
    kernels = [op.get("bit_kernel") for op in program.ops if op["op"] in ("conv", "linear")]
    assert kernels == [None, kernel, kernel, kernel, None]  # 8-bit first and last layers
    assert program.fast_runner[1] is None
    fast = program(x)
    program.fast = False
    assert torch.equal(fast, program(x))
    # and the engine computes what the converted model computes (its last layer dequantizes in another order)
    assert torch.allclose(fast, frozen(x), atol=1e-5)
    assert torch.equal(fast.argmax(1), frozen(x).argmax(1))


def test_a_saved_program_keeps_its_bit_kernels(tmp_path):
    frozen, x = _frozen("bnn")
    program = lower(frozen, x[:1])
    loaded = Program.load(program.save(tmp_path / "bnn"))
    assert [op.get("bit_kernel") for op in loaded.ops] == [op.get("bit_kernel") for op in program.ops]
    assert torch.equal(loaded(x), program(x))


def test_ternary_conv_is_the_half_sum_of_two_binary_convs():
    torch.manual_seed(1)
    codes = torch.randint(-1, 2, (6, 5, 3, 3), dtype=torch.int32)
    op = {"op": "conv", "weight": "w", "weight_zero_point": "z", "bit_kernel": "ternary", "stride": [2, 1],
          "padding": [1, 2], "dilation": [1, 1], "groups": 1}
    x = torch.where(torch.randn(2, 5, 7, 9) >= 0, 1.0, -1.0)
    acc = bit_accumulator(op, {"w": codes, "z": torch.zeros(6)})(x)
    expected = torch.nn.functional.conv2d(x.double(), codes.double(), stride=(2, 1), padding=(1, 2))
    assert torch.equal(acc.double(), expected)
