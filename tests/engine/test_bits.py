"""Frozen binary/ternary models through the engine: the packed bit kernels give the reference kernels' integers."""

import pytest
import torch
from torch import nn

from lowbit import qat
from lowbit.engine import Program, lower
from lowbit.engine.bits import SignLayout, bit_accumulator, plan_packed


def _model(hidden, channels):
    return nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.Hardtanh(),
                         nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.Hardtanh(),
                         nn.MaxPool2d(2),
                         nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.BatchNorm2d(channels),
                         nn.Hardtanh(), nn.Flatten(),
                         nn.Linear(channels * 4, hidden), nn.BatchNorm1d(hidden), nn.Hardtanh(),
                         nn.Linear(hidden, 10))


def _frozen(weights, hidden=70, channels=20, seed=0, model=None):
    torch.manual_seed(seed)
    x = torch.randn(48, 1, 8, 8)
    config = qat.QATConfig(weights, "sign")
    model = qat.prepare(model or _model(hidden, channels), qat.QATConfig.for_quantizer("bnn").default_recipe(),
                        config, calibration=[x])
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
    # signs stay bits from the first layer to the flatten; the hidden layer's signs feed the 8-bit last layer
    layouts = [plan_packed(program).get(op["y"]) for op in program.ops]
    assert [layout.kind if layout else None for layout in layouts] == [
        None, "pixels", "pixels", "pixels", "pixels", "flat", None, None]
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


def _op(kind, x, y, **fields):
    return {"op": kind, "x": x, "y": y, **fields}


def test_the_plan_keeps_floats_where_a_reader_cannot_take_bits():
    sign = {"sign": True, "scale": 1.0, "zero_point": 0, "qmin": -1, "qmax": 1}
    conv = dict(stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=1, out=sign, bit_kernel="binary")
    tensors = {"c": torch.ones(8, 8, 3, 3), "g": torch.ones(8, 4, 3, 3), "l": torch.ones(4, 8 * 9),
               "l7": torch.ones(4, 70)}
    ops = [
        _op("conv", "in", "a", weight="c", **conv),              # read by a grouped conv: floats
        _op("conv", "a", "b", weight="g", **{**conv, "groups": 2}),  # which can still write bits
        _op("conv", "b", "c1", weight="c", **conv),              # read by a max pooling that stays packed
        _op("maxpool", "c1", "d"),
        _op("reshape", "d", "e", shape=[72]),                    # flattened for a linear layer of K = 8·9
        _op("linear", "e", "f", weight="l", out=sign, bit_kernel="binary"),
        _op("conv", "b", "h", weight="c", **conv),               # flattened into 70 columns, 70 % 8 ≠ 0
        _op("reshape", "h", "i", shape=[70]),
        _op("linear", "i", "j", weight="l7", out=sign, bit_kernel="binary"),
    ]
    program = type("P", (), {"ops": ops, "tensors": tensors, "outputs": ["f", "j"]})()
    plan = plan_packed(program)
    assert plan == {"b": SignLayout("pixels", 8), "c1": SignLayout("pixels", 8), "d": SignLayout("pixels", 8),
                    "e": SignLayout("flat", 8)}


def test_a_grouped_binary_conv_between_packed_layers():
    block = [nn.BatchNorm2d(16), nn.Hardtanh()]
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), *block, nn.Conv2d(16, 16, 3, padding=1, groups=4), *block,
                          nn.Conv2d(16, 16, 3, padding=(0, 1)), *block, nn.MaxPool2d(2, ceil_mode=True), nn.Flatten(),
                          nn.Linear(16 * 3 * 4, 10))
    frozen, x = _frozen("bnn", model=model)
    program = lower(frozen, x[:1])
    assert [op.get("bit_kernel") for op in program.ops if op["op"] == "conv"] == [None, "binary", "binary"]
    # bits only between the grouped convolution and the next: a grouped one packs its float input itself, and the
    # pooled signs feed the 8-bit last layer
    assert list(plan_packed(program).values()) == [SignLayout("pixels", 16)]
    fast = program(x)
    program.fast = False
    assert torch.equal(fast, program(x))
