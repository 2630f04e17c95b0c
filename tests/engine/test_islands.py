"""Float islands (LayerNorm, GELU, softmax …) and concatenation in lowered programs."""

import math
import warnings

import pytest
import torch
from torch import nn

import lowbit
from lowbit.engine import Program, Requant, lower
from lowbit.engine.kernels import concat
from lowbit.nn import ActivationQuantizer


class _Encoder(nn.Module):
    """A transformer-like block: quantized linears around float-only LayerNorm, GELU and softmax."""

    def __init__(self):
        super().__init__()
        self.fc, self.norm, self.act, self.out = nn.Linear(8, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 4)

    def forward(self, x):
        return torch.softmax(self.out(self.act(self.norm(self.fc(x)))), -1)


class _Branches(nn.Module):
    """Two convolution branches on different grids, concatenated along channels, then ReLU (and a convolution,
    ``head=True``)."""

    def __init__(self, head: bool):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 5, 1)
        self.c = nn.Conv2d(9, 2, 3) if head else nn.Identity()
        with torch.no_grad():
            self.b.weight *= 4  # a wider range, so a coarser grid than branch a's

    def forward(self, x):
        return self.c(torch.relu(torch.cat([self.a(x), self.b(x)], 1)))


def _quantize(model, shape, recipe="w8a8"):
    torch.manual_seed(0)
    calibration = [torch.randn(32, *shape) for _ in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lowbit.quantize(model.eval(), recipe, calibration=calibration, progress=False)


def test_float_islands_run_between_explicit_dequantize_and_quantize(tmp_path):
    torch.manual_seed(1)
    q = _quantize(_Encoder(), (8,))
    program = lower(q, torch.randn(1, 8))
    kinds = [(op["op"], op.get("fn")) for op in program.ops]
    assert kinds == [("quantize", None), ("linear", None), ("dequantize", None), ("float", "layer_norm"),
                     ("float", "gelu"), ("quantize", None), ("linear", None), ("dequantize", None),
                     ("float", "softmax")]
    x = torch.randn(200, 8)
    with torch.no_grad():
        simulated = q(x)
    engine = program(x)
    assert torch.allclose(engine.sum(-1), torch.ones(200))
    # integer sums vs the simulation's float32 ones: a near-tie code may move by one step before the softmax
    assert (engine - simulated).abs().max() < 0.02
    again = Program.load(program.save(tmp_path / "p"))
    assert torch.equal(again(x), engine)


@pytest.mark.parametrize("head", [False, True])
def test_concat_rescales_each_part_to_the_output_grid(head):
    torch.manual_seed(2)
    q = _quantize(_Branches(head), (3, 8, 8), lowbit.Recipe(quantize_output=True))
    program = lower(q, torch.randn(1, 3, 8, 8))
    concat = next(op for op in program.ops if op["op"] == "concat")
    assert len(set(concat["scales"])) == 2  # the branches really sit on different grids
    x = torch.randn(64, 3, 8, 8)
    with torch.no_grad():
        simulated = q(x)
    engine = program(x)
    step = float([m for m in q.modules() if isinstance(m, ActivationQuantizer)][-1].scale)
    if not head:
        # a near-tie in a branch's own requantization (exact integer sum vs the simulation's float32 one) moves
        # that branch's code by one of its steps: up to ceil(coarse step / output step) output codes
        bound = max(math.ceil(s / concat["out"]["scale"]) for s in concat["scales"])
        lsb = ((engine - simulated).abs() / step).round()
        assert lsb.max() <= bound and (lsb > 0).float().mean() < 0.01
    program.fast = False
    assert torch.equal(program(x), engine)  # the fast runner gives the reference's integers


def test_concat_kernel_against_a_float64_formula():
    torch.manual_seed(3)
    a, b = torch.randint(0, 256, (2, 3, 5, 5)), torch.randint(-128, 128, (2, 4, 5, 5))
    parts = [(a, 0.05, 120), (b, 0.013, 0)]
    expected = torch.cat([torch.clamp(torch.round((q.double() - z) * (s / 0.03)) + 7, 0, 255) for q, s, z in parts], 1)
    floating = concat(parts, 1, 0.03, 7, 0, 255, Requant.FLOAT)
    fixed = concat(parts, 1, 0.03, 7, 0, 255, Requant.FIXED_POINT)
    assert (floating - expected).abs().max() <= 1 and (fixed - expected).abs().max() <= 1  # float32 vs float64 ties
    assert (floating != expected).float().mean() < 0.01 and (fixed - floating).abs().max() <= 1


def test_arithmetic_with_a_constant_is_a_float_island():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return 0.5 * self.fc(x) + 1

    q = _quantize(Scaled(), (4,))
    program = lower(q, torch.randn(1, 4))
    assert [op.get("params") for op in program.ops if op["op"] == "float"] == [{"constant": 0.5}, {"constant": 1.0}]
    x = torch.randn(8, 4)
    with torch.no_grad():
        assert torch.allclose(program(x), q(x), atol=1e-5)


def test_a_model_that_starts_with_flatten_lowers():
    q = _quantize(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), (3, 4))
    program = lower(q, torch.randn(1, 3, 4))
    assert [op["op"] for op in program.ops] == ["reshape", "quantize", "linear"]
    x = torch.randn(10, 3, 4)
    with torch.no_grad():
        assert torch.allclose(program(x), q(x), atol=1e-4)


def test_an_unknown_island_in_a_file_is_rejected(tmp_path):
    program = lower(_quantize(_Encoder(), (8,)), torch.randn(1, 8))
    program.ops[3]["fn"] = "exp"
    program.save(tmp_path / "p")
    with pytest.raises(ValueError, match="unknown float island 'exp'"):
        Program.load(tmp_path / "p")
