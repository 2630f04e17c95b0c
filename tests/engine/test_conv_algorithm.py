"""Per-layer convolution algorithms in the integer engine: the integers must not change.

The oracle is the same program with the engine's own convolution (float64 reference sums, or float32 where they
are provably exact): choosing Winograd, FFT, direct or im2col for a layer may change how its accumulator is
computed, never its value, so the outputs must be equal bit for bit, on the reference kernels and on the fast
runner alike.
"""

import warnings

import pytest
import torch

import lowbit
from lowbit.engine import Program, lower
from lowbit.engine.conv_algorithm import integer_conv
from lowbit.zoo import load
from lowbit.zoo.data import fashion_mnist

pytestmark = pytest.mark.usefixtures("one_thread")

ALGORITHMS = ["winograd_2x2_3x3", "winograd_4x4_3x3", "fft", "direct", "im2col"]


@pytest.fixture(scope="module")
def programs():
    images = fashion_mnist("test").tensors[0][:6]
    calibration = list(fashion_mnist("train").tensors[0][:128].split(64))
    built = {}
    for name in ("resnet20", "lenet5"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = lowbit.quantize(load(name).model, "w8a8", calibration=calibration, progress=False)
        built[name] = lower(q, images[:1])
    return built, images


def _outputs(program: Program, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    program.fast = True
    fast = program(images)
    program.fast = False
    reference = program(images)
    program.fast = True
    return fast, reference


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_gives_the_engine_integers(programs, algorithm, monkeypatch):
    """resnet20 (3×3 convs, strides 1 and 2) and lenet5 (5×5 convs): outputs equal the default program's, on
    the fast runner and on the reference kernels, with every eligible layer switched (and really computed by the
    algorithm: the calls are counted)."""
    import lowbit.engine.conv_algorithm as module

    calls = []
    original = module.conv2d
    monkeypatch.setattr(module, "conv2d", lambda *a, **k: calls.append(a[5]) or original(*a, **k))
    built, images = programs
    for name, program in built.items():
        expected_fast, expected_reference = _outputs(program, images)
        chosen = program.set_conv_algorithm(algorithm)
        try:
            if algorithm.startswith("winograd") and name == "lenet5":
                assert chosen == []  # 5×5 filters: Winograd F(m, 3) cannot run them
            else:
                assert chosen
            calls.clear()
            fast, reference = _outputs(program, images)
            assert program.fast_runner[0] is not None, program.fast_runner[1]
            assert len(calls) == 2 * len(chosen) and {a.value for a in calls} <= {algorithm}
            assert torch.equal(fast, expected_fast) and torch.equal(reference, expected_reference), (name, algorithm)
        finally:
            program.set_conv_algorithm("default")


def test_winograd_skips_strided_layers_and_refuses_them_by_name(programs):
    """With no names given, only eligible layers are switched; a named ineligible layer raises, saying why."""
    program = programs[0]["resnet20"]
    convs = {op["name"]: op for op in program.ops if op["op"] == "conv"}
    chosen = program.set_conv_algorithm("winograd_2x2_3x3")
    try:
        strided = [n for n, op in convs.items() if tuple(op["stride"]) != (1, 1)]
        assert strided and not set(strided) & set(chosen)
        assert all(convs[n]["algorithm"] == "winograd_2x2_3x3" for n in chosen)
        with pytest.raises(ValueError, match="stride"):
            program.set_conv_algorithm("winograd_4x4_3x3", [strided[0]])
        with pytest.raises(ValueError, match="no conv layers named"):
            program.set_conv_algorithm("fft", ["not-a-layer"])
        with pytest.raises(ValueError, match="algorithm must be"):
            program.set_conv_algorithm("winograd_8x8")
    finally:
        program.set_conv_algorithm("default")
    assert not any("algorithm" in op for op in program.ops)


def test_the_choice_is_saved_with_the_program(programs, tmp_path):
    """save/load keeps each layer's algorithm, and the loaded program gives the same outputs."""
    program, images = programs[0]["lenet5"], programs[1]
    chosen = program.set_conv_algorithm("fft")
    try:
        expected = program(images)
        loaded = Program.load(program.save(tmp_path / "p"))
        assert [op["name"] for op in loaded.ops if op.get("algorithm") == "fft"] == chosen
        assert torch.equal(loaded(images), expected)
    finally:
        program.set_conv_algorithm("default")


def test_integer_conv_refuses_sums_float64_cannot_carry():
    """Codes near 2^40 make FFT's float64 products stray from the integers: an error, never a wrong integer."""
    torch.manual_seed(0)
    x = torch.randint(-(2**40), 2**40, (1, 8, 12, 12)).double()
    w = torch.randint(-(2**12), 2**12, (4, 8, 3, 3)).double()
    with pytest.raises(ArithmeticError, match="strayed"):
        integer_conv(x, w, (1, 1), (1, 1), "fft", where="layer1")


def test_integer_conv_equals_direct_integer_convolution_on_int8_codes():
    """All five algorithms on random int8 codes (centred), strides and paddings: exactly F.conv2d's integers."""
    torch.manual_seed(1)
    x = torch.randint(-128, 128, (2, 16, 11, 9)).double()
    w = torch.randint(-127, 128, (8, 16, 3, 3)).double()
    for stride, padding in [((1, 1), (1, 1)), ((2, 2), (0, 1))]:
        expected = torch.nn.functional.conv2d(x, w, stride=stride, padding=padding)
        for algorithm in ALGORITHMS:
            if algorithm.startswith("winograd") and stride != (1, 1):
                continue
            assert torch.equal(integer_conv(x, w, stride, padding, algorithm, where="t"), expected), algorithm
