"""Per-layer sensitivity measures against independent float64 references and the real PTQ path.

The references quantize weights with the "w8" rule written out here (per output row, symmetric, narrow range,
min/max: ``scale = max|w_row| / (2^(b−1) − 1)``, codes rounded half to even and clipped to ``±(2^(b−1) − 1)``)
and compute outputs, SQNR, KL and entropies in float64 numpy; exact Hessian traces come from
``torch.autograd.functional.hessian``.
"""

import copy
import dataclasses
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

import lowbit
from lowbit.mixed import MEASURES, Subject, prepare_subject, sensitivity
from lowbit.recipes import Override, Recipe, preset
from lowbit.spec import PerChannel, QuantSpec

pytestmark = pytest.mark.usefixtures("one_thread")

BITS = (2, 3, 4, 6, 8)


# --- independent references ---------------------------------------------------------------------------------


def w8_codes(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Codes and per-row scales of ``w`` (float64) under the w8 rule at ``bits``."""
    qmax = 2 ** (bits - 1) - 1
    rows = w.reshape(w.shape[0], -1)
    amax = np.abs(rows).max(axis=1)
    scale = np.where(amax > 0, amax / qmax, 1.0).reshape((-1,) + (1,) * (w.ndim - 1))
    codes = np.clip(np.round(w / scale), -qmax, qmax)  # np.round rounds half to even
    return codes, scale


def w8_dequantized(w: np.ndarray, bits: int) -> np.ndarray:
    codes, scale = w8_codes(w, bits)
    return codes * scale


def w8_codes_float32(w: np.ndarray, bits: int) -> np.ndarray:
    """The same rule with the division in float32 (as docs/math.md eq. 3 specifies), so codes that sit within
    float32 rounding of a half-way point come out as the library's do: for exact code counts (entropy)."""
    qmax = 2 ** (bits - 1) - 1
    w32 = w.astype(np.float32)
    amax = np.abs(w32.astype(np.float64).reshape(w.shape[0], -1)).max(axis=1)
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32).reshape((-1,) + (1,) * (w.ndim - 1))
    return np.clip(np.round(w32 / scale), -qmax, qmax)


def entropy_bits(codes: np.ndarray) -> float:
    _, counts = np.unique(codes, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def mlp_numpy(params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Linear → ReLU → Linear in float64."""
    h = np.maximum(x @ params["0.weight"].T + params["0.bias"], 0.0)
    return h @ params["2.weight"].T + params["2.bias"]


def float64_params(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().double().numpy().copy() for k, v in model.state_dict().items()}


def sqnr_db(reference: list[np.ndarray], outputs: list[np.ndarray]) -> float:
    signal = sum(float(np.square(r).sum()) for r in reference)
    noise = sum(float(np.square(r - o).sum()) for r, o in zip(reference, outputs))
    return 10 * math.log10(signal / noise)


# --- fixtures -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 5)).eval()
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(20, 16, generator=g) for _ in range(3)]
    return model, batches


def quantized_outputs(model, batches, layer, bits):
    """Outputs (float64 numpy) with only ``layer``'s weight replaced by its w8 quantization at ``bits``."""
    params = float64_params(model)
    params[f"{layer}.weight"] = w8_dequantized(params[f"{layer}.weight"], bits)
    return [mlp_numpy(params, x.double().numpy()) for x in batches]


# --- SQNR ---------------------------------------------------------------------------------------------------


def test_sqnr_matches_a_float64_reference(mlp):
    model, batches = mlp
    table = sensitivity(model, "sqnr", batches, bits=BITS, recipe="w8")
    assert table.measure == "sqnr" and table.unit == "dB"
    assert list(table.values) == ["0", "2"]
    reference = [mlp_numpy(float64_params(model), x.double().numpy()) for x in batches]
    for layer in ("0", "2"):
        assert set(table.values[layer]) == set(BITS)
        for bits in BITS:
            expected = sqnr_db(reference, quantized_outputs(model, batches, layer, bits))
            assert table.values[layer][bits] == pytest.approx(expected, abs=2e-3), (layer, bits)
            # the allocator's loss is the noise-to-signal power ratio
            assert table.loss[layer][bits] == pytest.approx(10 ** (-expected / 10), rel=5e-4), (layer, bits)
            assert table.loss[layer][bits] == pytest.approx(10 ** (-table.values[layer][bits] / 10), rel=1e-9)
        # more bits, less noise (by roughly 6 dB a bit from 4 bits up)
        row = [table.values[layer][b] for b in BITS]
        assert row == sorted(row)
        assert table.values[layer][8] - table.values[layer][4] > 18


def test_sqnr_leaves_the_model_unchanged(mlp):
    model, batches = mlp
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sensitivity(model, "sqnr", batches[:1], bits=(2,))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_infinite_sqnr_for_weights_on_the_grid():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    with torch.no_grad():
        signs = torch.where(torch.rand(3, 4) < 0.5, -1.0, 1.0)
        signs[:, 0] = 1.0  # every row reaches |w| = 1: codes ±qmax, scale 1/qmax, an exact grid at any bits
        model[0].weight.copy_(signs)
    table = sensitivity(model, "sqnr", [torch.randn(8, 4)], bits=(2, 4, 8))
    for bits in (2, 4, 8):
        assert table.values["0"][bits] == math.inf
        assert table.loss["0"][bits] == 0.0
        assert math.isfinite(table.values["2"][bits])
    data = table.to_dict()
    assert data["values"]["0"] == {"2": None, "4": None, "8": None}
    assert data["loss"]["0"] == {"2": 0.0, "4": 0.0, "8": 0.0}
    assert all(isinstance(v, float) for v in data["values"]["2"].values())
    assert data["measure"] == "sqnr" and data["unit"] == "dB"


# --- KL -----------------------------------------------------------------------------------------------------


def test_kl_matches_a_float64_reference(mlp):
    model, batches = mlp
    table = sensitivity(model, "kl", batches, bits=(2, 4, 8), recipe="w8")
    assert table.unit == "nats"
    reference = [mlp_numpy(float64_params(model), x.double().numpy()) for x in batches]
    for layer in ("0", "2"):
        for bits in (2, 4, 8):
            outputs = quantized_outputs(model, batches, layer, bits)
            total = sum(float((np.exp(log_softmax(r)) * (log_softmax(r) - log_softmax(o))).sum())
                        for r, o in zip(reference, outputs))
            expected = total / sum(r.shape[0] for r in reference)
            assert expected > 0
            assert table.values[layer][bits] >= 0.0
            assert table.values[layer][bits] == pytest.approx(expected, rel=1e-3), (layer, bits)
            assert table.loss[layer][bits] == table.values[layer][bits]
        assert table.values[layer][2] > table.values[layer][4] > table.values[layer][8]


def test_kl_is_zero_for_weights_on_the_grid():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, -1.0], [1.0, 1.0]]))
    table = sensitivity(model, "kl", [torch.randn(6, 2)], bits=(2, 3))
    assert table.values["0"] == {2: 0.0, 3: 0.0}


# --- cross-check with the real PTQ path -------------------------------------------------------------------


@pytest.fixture(scope="module")
def conv_model():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 3 * 3, 5),
    )
    with torch.no_grad():
        for bn in (model[1], model[4]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.2, 3.0)
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(-0.3, 0.3)
    g = torch.Generator().manual_seed(2)
    return model.eval(), [torch.randn(4, 3, 8, 8, generator=g) for _ in range(2)]


def only(layer: str, bits: int) -> Recipe:
    """w8 with every layer but ``layer`` kept in float, and ``layer`` at ``bits``.

    The second override needs ``skip=False``: ``skip=None`` keeps what the first one chose (float)."""
    return dataclasses.replace(preset("w8"), overrides=(
        Override(include=("*",), skip=True),
        Override(include=(layer,), weight=QuantSpec(bits=bits, granularity=PerChannel(0), narrow_range=True),
                 skip=False),
    ))


@pytest.mark.parametrize("layer", ["0", "3", "7"])
def test_sqnr_equals_the_sqnr_of_the_ptq_model_with_one_quantized_layer(conv_model, layer):
    model, batches = conv_model
    bits = (3, 6)
    table = sensitivity(model, "sqnr", batches, bits=bits, recipe="w8")
    assert list(table.values) == ["0", "3", "7"]  # the folded model's layers keep the convs' and linear's names
    with torch.no_grad():
        reference = [model(x).double().numpy() for x in batches]
    for b in bits:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "kept in float" for the other layers
            qmodel = lowbit.quantize(model, only(layer, b), progress=False)
        assert qmodel.quantization_summary.quantized == {layer: b}
        with torch.no_grad():
            outputs = [qmodel(x).double().numpy() for x in batches]
        assert table.values[layer][b] == pytest.approx(sqnr_db(reference, outputs), abs=0.01), (layer, b)


def test_sqnr_on_a_bn_model_matches_a_float64_fold(conv_model):
    # the first conv with its BatchNorm folded by hand (float64), quantized by the reference rule
    model, batches = conv_model
    conv, bn = model[0], model[1]
    std = np.sqrt(bn.running_var.double().numpy() + bn.eps)
    factor = bn.weight.double().detach().numpy() / std
    folded = conv.weight.double().detach().numpy() * factor[:, None, None, None]
    bias = (conv.bias.double().detach().numpy() - bn.running_mean.double().numpy()) * factor \
        + bn.bias.double().detach().numpy()
    rest = copy.deepcopy(model[2:]).double()
    with torch.no_grad():
        def run(weight):
            outs = []
            for x in batches:
                y = F.conv2d(x.double(), torch.from_numpy(weight), torch.from_numpy(bias), padding=1)
                outs.append(rest(y).numpy())
            return outs

        reference, quantized = run(folded), run(w8_dequantized(folded, 4))
    table = sensitivity(model, "sqnr", batches, bits=(4,))
    assert table.values["0"][4] == pytest.approx(sqnr_db(reference, quantized), abs=2e-3)


# --- entropy ------------------------------------------------------------------------------------------------


def test_entropy_of_the_codes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    with torch.no_grad():
        model[0].weight.normal_(0, 0.1)
    table = sensitivity(model, "entropy", None, bits=BITS)
    assert table.unit == "bits per weight"
    for layer in ("0", "2"):
        w = model.get_submodule(layer).weight.detach().double().numpy()
        h16 = entropy_bits(w8_codes_float32(w, 16))
        assert h16 > 7  # nearly every 16-bit code is distinct
        for bits in BITS:
            hb = entropy_bits(w8_codes_float32(w, bits))
            assert hb <= bits
            assert table.values[layer][bits] == pytest.approx(hb, abs=1e-9), (layer, bits)
            assert table.loss[layer][bits] == pytest.approx((h16 - hb) / h16, abs=1e-9), (layer, bits)
    gaussian = [table.loss["0"][b] for b in BITS]
    assert all(v >= 0 for v in gaussian)
    assert gaussian == sorted(gaussian, reverse=True)
    assert gaussian[0] > gaussian[-1]


def test_entropy_needs_no_batches_and_other_measures_do(mlp):
    model, _ = mlp
    assert sensitivity(model, "entropy", bits=(4,)).values["0"][4] > 0
    for measure in ("sqnr", "kl", "hessian"):
        with pytest.raises(ValueError, match=f"the {measure} measure needs batches"):
            sensitivity(model, measure, None, bits=(4,))
        with pytest.raises(ValueError, match="needs batches"):
            sensitivity(model, measure, [], bits=(4,))


def test_unknown_measure_lists_the_measures(mlp):
    model, batches = mlp
    with pytest.raises(ValueError, match="sqnr, kl, hessian, entropy") as err:
        sensitivity(model, "snr", batches)
    assert "'snr'" in str(err.value)
    assert MEASURES == ("sqnr", "kl", "hessian", "entropy")


def test_model_returning_a_tuple_is_an_error():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            y = self.fc(x)
            return y, y

    with pytest.raises(ValueError, match="one tensor"):
        sensitivity(Pair().eval(), "sqnr", [torch.randn(2, 3)], bits=(4,))


# --- Hessian ------------------------------------------------------------------------------------------------


def hessian_problem():
    """Linear(6, 8) → Tanh → Linear(8, 3) in float64, inputs labelled by the model's own predictions (as in
    tests/mixed/test_hessian.py: Hutchinson's standard error is about 2% there at 800 draws per batch)."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double().eval()
    g = torch.Generator().manual_seed(3)
    inputs = [torch.randn(32, 6, generator=g, dtype=torch.float64) for _ in range(3)]
    with torch.no_grad():
        return model, [(x, model(x).argmax(-1)) for x in inputs]


def exact_mean_trace(model, layer, batches):
    params = {k: v.detach() for k, v in model.named_parameters()}
    name = f"{layer}.weight"
    shape = params[name].shape

    def mean_loss(flat):
        swapped = {**params, name: flat.view(shape)}
        return sum(F.cross_entropy(functional_call(model, swapped, (x,)), y) for x, y in batches) / len(batches)

    hessian = torch.autograd.functional.hessian(mean_loss, params[name].flatten().clone())
    return float(torch.trace(hessian)) / shape.numel()


def test_hessian_measure_against_the_exact_trace():
    model, batches = hessian_problem()
    table = sensitivity(model, "hessian", batches, bits=(2, 4), samples=800, seed=0)
    assert table.unit == "Tr(H)/n"
    for layer in ("0", "2"):
        exact = exact_mean_trace(model, layer, batches)
        assert exact > 0
        values = table.values[layer]
        assert set(values) == {2, 4} and values[2] == values[4]  # one figure per layer
        assert abs(values[2] - exact) <= 0.1 * exact, (layer, values[2], exact)
        w = model.get_submodule(layer).weight.detach().double().numpy()
        for bits in (2, 4):
            error = float(np.square(w8_dequantized(w, bits) - w).sum())
            assert table.loss[layer][bits] == pytest.approx(values[bits] * error, rel=1e-5), (layer, bits)
        assert table.loss[layer][2] > table.loss[layer][4]


def test_hessian_without_labels_uses_the_fp32_predictions():
    model, labelled = hessian_problem()
    model = model.float()
    inputs = [x.float() for x, _ in labelled]
    with torch.no_grad():
        predicted = [(x, model(x).argmax(-1)) for x in inputs]
    bare = sensitivity(model, "hessian", inputs, bits=(4,), samples=3, seed=5)
    explicit = sensitivity(model, "hessian", predicted, bits=(4,), samples=3, seed=5)
    assert bare.values == explicit.values
    assert bare.loss == explicit.loss
    # and other labels give another figure: the labels are read
    other = [(x, (y + 1) % 3) for x, y in predicted]
    assert sensitivity(model, "hessian", other, bits=(4,), samples=3, seed=5).values != bare.values


# --- prepare_subject ----------------------------------------------------------------------------------------


def four_layers():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 4)).eval()


def test_first_and_last_layers_keep_first_last_bits():
    subject = prepare_subject(four_layers(), "w4a8", bits=[6, 2, 4, 4])
    assert isinstance(subject, Subject)
    assert subject.candidates == {"0": (8,), "2": (2, 4, 6), "4": (2, 4, 6), "6": (8,)}
    assert {n: s.bits for n, s in subject.specs.items()} == {"0": 8, "2": 4, "4": 4, "6": 8}
    assert subject.recipe is preset("w4a8")
    # without first_last_bits every layer is a candidate
    assert prepare_subject(four_layers(), "w8", bits=(2, 8)).candidates == dict.fromkeys(["0", "2", "4", "6"],
                                                                                          (2, 8))


def test_a_sensitivity_over_a_subject_uses_its_candidates():
    model = four_layers()
    subject = prepare_subject(model, "w4a8", bits=(3, 5))
    table = sensitivity(subject, "sqnr", [torch.randn(8, 8)], bits=(2,))
    assert {n: tuple(row) for n, row in table.values.items()} == subject.candidates


def test_a_skipped_layer_is_not_a_candidate():
    recipe = dataclasses.replace(preset("w8"), overrides=(Override(include=("2",), skip=True),))
    subject = prepare_subject(four_layers(), recipe, bits=(2, 4))
    assert subject.candidates == {"0": (2, 4), "4": (2, 4), "6": (2, 4)}
    assert "2" not in subject.specs


def test_skipping_the_first_layer_does_not_fix_the_second():
    # PTQ plans first/last by position among all layers: with layer "0" kept in float, "2" is not the recipe's
    # first layer (it gets the recipe's 4 bits, not first_last_bits), so mixed precision should choose its bits
    recipe = dataclasses.replace(preset("w4a8"), overrides=(Override(include=("0",), skip=True),))
    model = four_layers()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        planned = lowbit.quantize(model, recipe, calibration=[torch.randn(8, 8)], progress=False)
    assert planned.quantization_summary.quantized == {"2": 4, "4": 4, "6": 8}
    subject = prepare_subject(model, recipe, bits=(2, 4, 6))
    assert subject.candidates == {"2": (2, 4, 6), "4": (2, 4, 6), "6": (8,)}


def test_float_recipes_are_refused(mlp):
    model, _ = mlp
    for name in ("fp16", "bf16"):
        with pytest.raises(ValueError, match="integer weights"):
            prepare_subject(model, name, bits=(4,))


@pytest.mark.parametrize("bits", [[1], [17], [], [True], [2.5], [4, 1], [0]])
def test_bad_bits_are_refused(mlp, bits):
    model, _ = mlp
    with pytest.raises(ValueError, match="bits"):
        prepare_subject(model, "w8", bits=bits)
    with pytest.raises(ValueError, match="bits"):
        sensitivity(model, "entropy", bits=bits)


def test_a_model_without_layers_is_refused():
    with pytest.raises(ValueError, match="no Linear/Conv layer"):
        prepare_subject(nn.Sequential(nn.ReLU()), "w8", bits=(4,))
    everything_float = dataclasses.replace(preset("w8"), overrides=(Override(skip=True),))
    with pytest.raises(ValueError, match="no Linear/Conv layer"):
        prepare_subject(four_layers(), everything_float, bits=(4,))


def test_subject_quantized_weight_and_swap(mlp):
    model, _ = mlp
    subject = prepare_subject(model, "w8", bits=(3,))
    w = subject.layer("0").weight.detach().double().numpy()
    q = subject.quantized_weight("0", 3)
    assert q.dtype == torch.float32
    np.testing.assert_allclose(q.double().numpy(), w8_dequantized(w, 3), rtol=1e-6, atol=1e-7)
    saved = subject.layer("0").weight.detach().clone()
    with pytest.raises(RuntimeError, match="inside"):
        with subject.swapped("0", q):
            assert torch.equal(subject.layer("0").weight.detach(), q)
            raise RuntimeError("inside")
    assert torch.equal(subject.layer("0").weight.detach(), saved)
