"""deep_compress on a tiny model: the file decodes to exactly the model's state, the size table adds up, the
stage records measure the sparsity reached, and bad arguments are refused."""

import pytest
import torch
from torch import nn

from lowbit.compress.container import decode_model
from lowbit.compress.share import shared_layers
from lowbit.flows.compress import deep_compress, plain_state

STAGES = ("fp32", "pruned", "quantized", "huffman", "stored")


pytestmark = pytest.mark.usefixtures("one_thread")  # small problems: threads only add noise


def tiny() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(96, 1, 6, 6, generator=g), torch.randint(0, 3, (96,), generator=g)


def compress(model: nn.Module, **overrides):
    kwargs = dict(sparsity=0.75, bits=3, source="tiny", prune_steps=2, epochs_per_step=1, finetune_epochs=1,
                  batch_size=32, progress=False)
    kwargs.update(overrides)
    return deep_compress(model, data(), **kwargs)


@pytest.fixture(scope="module")
def result():
    return compress(tiny())


def test_the_file_decodes_to_exactly_the_models_state(result):
    source, decoded = decode_model(result.data)
    state, shared = plain_state(result.model)
    assert source == "tiny"
    assert list(decoded) == list(state)
    for key, tensor in state.items():
        assert decoded[key].dtype == tensor.dtype and decoded[key].shape == tensor.shape
        assert torch.equal(decoded[key].view(-1).view(torch.uint8), tensor.contiguous().view(-1).view(torch.uint8))
    assert set(shared) == {"0.weight", "3.weight"}
    # a fresh architecture loaded from the file computes what the compressed model computes
    fresh = tiny().eval()
    fresh.load_state_dict(decoded)
    x = data()[0][:16]
    with torch.no_grad():
        assert torch.equal(fresh(x), result.model(x))


def test_the_model_ends_shared_with_the_pruned_fraction_at_code_zero(result):
    layers = shared_layers(result.model)
    assert list(layers) == ["0", "3"] and all(layer.bits == 3 for layer in layers.values())
    total = sum(layer.codes.numel() for layer in layers.values())
    zeros = sum(int((layer.codes == 0).sum()) for layer in layers.values())
    assert total == 36 + 192
    assert zeros == round(0.75 * total)
    for layer in layers.values():
        weight = layer.module.weight.detach()
        assert torch.equal(weight == 0, layer.codes == 0)
        assert torch.unique(weight[weight != 0]).numel() <= 7


def test_stage_records_measure_the_sparsity_reached(result):
    n = 36 + 192
    assert [s["stage"] for s in result.stages] == ["prune 1/2", "prune 2/2", "fine-tune centroids"]
    first, last, tune = result.stages
    assert first["target"] == round(1 - 0.25**0.5, 4) == 0.5
    assert first["sparsity"] == round(round(0.5 * n) / n, 4)
    assert last["target"] == 0.75 and last["sparsity"] == round(round(0.75 * n) / n, 4)
    assert all(isinstance(s["loss"], float) and s["loss"] > 0 for s in result.stages)


def test_the_size_table_adds_up(result):
    table, layers = result.table, result.table["layers"]
    state, shared = plain_state(result.model)
    assert set(layers) == {"0.weight", "3.weight"}
    # biases end rounded to float16 values (half_biases), which the file stores in 2 bytes each
    raw_tensors = [t for k, t in state.items() if k not in shared]
    assert all(torch.equal(t.half().float(), t) for t in raw_tensors)
    raw = sum(2 * t.numel() for t in raw_tensors)
    assert table["total"]["raw"] == raw == 2 * (4 + 3)
    for stage in STAGES:
        fp32_raw = 4 * (4 + 3) if stage == "fp32" else raw
        assert table["total"][stage] == sum(row[stage] for row in layers.values()) + fp32_raw
    assert table["total"]["file"] == len(result.data)
    assert table["total"]["weights"] == 36 + 192
    assert table["total"]["weights_kept"] == pytest.approx(0.25, abs=1e-4)
    for key, row in layers.items():
        codes = shared[key][0]
        assert row["weights"] == codes.numel()
        assert row["fp32"] == 4 * codes.numel()
        assert row["weights_kept"] == round(float((codes != 0).float().mean()), 4)
        assert row["code_bits"] == 3
        assert row["stored"] == min(row["quantized"], row["huffman"])
    assert layers["0.weight"]["index_bits"] == 8 and layers["3.weight"]["index_bits"] == 5  # conv 8, fc 5
    for stage, ratio in table["total"]["ratios"].items():
        assert ratio == round(table["total"]["fp32"] / table["total"][stage], 2)
    # the file holds the stored sections plus the header and the raw tensors
    assert len(result.data) > table["total"]["stored"]


def test_no_training_and_index_bits_override():
    result = compress(tiny(), epochs_per_step=0, finetune_epochs=0, index_bits={"0": 2, "3": 1})
    assert [s["stage"] for s in result.stages] == ["prune 1/2", "prune 2/2"]
    assert all(s["loss"] is None for s in result.stages)
    assert result.table["layers"]["0.weight"]["index_bits"] == 2
    assert result.table["layers"]["3.weight"]["index_bits"] == 1
    _, decoded = decode_model(result.data)
    state, _ = plain_state(result.model)
    assert all(torch.equal(decoded[k], v) for k, v in state.items())


@pytest.mark.parametrize("name, value", [("prune_steps", 0), ("prune_steps", True), ("prune_steps", 1.5),
                                         ("epochs_per_step", -1), ("epochs_per_step", 1.0),
                                         ("finetune_epochs", -1), ("finetune_epochs", None)])
def test_bad_counts_are_refused_before_anything_changes(name, value):
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=name):
        compress(model, **{name: value})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("sparsity", [1.0, -0.1, 1.5])
def test_bad_sparsity_is_refused_before_anything_changes(sparsity):
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError):
        compress(model, sparsity=sparsity)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("sparsity", [1.0, -0.1, 1.5])
def test_bad_sparsity_is_named(sparsity):
    with pytest.raises(ValueError, match="sparsity"):
        compress(tiny(), sparsity=sparsity)


@pytest.mark.parametrize("bits", [0, 9, {"0": 9}, {"1": 3}])
def test_bad_bits_are_refused(bits):
    with pytest.raises(ValueError, match="bits"):
        compress(tiny(), bits=bits, epochs_per_step=0, finetune_epochs=0)


def test_bad_bits_are_refused_before_anything_changes():
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="bits"):
        compress(model, bits=9)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_layers_a_bits_dict_leaves_unshared_keep_their_pruned_zeros_through_fine_tuning():
    model = tiny()
    result = compress(model, bits={"0": 3}, finetune_epochs=2)
    linear = model[3].weight.detach()
    assert list(shared_layers(model)) == ["0"]
    assert int((model[0].weight == 0).sum()) + int((linear == 0).sum()) == round(0.75 * (36 + 192))
    _, state = decode_model(result.data)
    assert torch.equal(state["3.weight"], linear)  # stored raw, as it was pruned


@pytest.mark.parametrize("overrides, message", [
    ({"bits": {"9": 3}}, "bits names '9'"),
    ({"bits": {"0": 9}}, r"bits\['0'\] must be an int in 1..8, got 9"),
    ({"index_bits": {"typo": 2}}, "index_bits names 'typo'"),
    ({"index_bits": {"3": 0}}, r"index_bits\['3'\] must be an int in 1..8, got 0"),
])
def test_layer_dicts_are_checked_before_any_training(overrides, message):
    model = tiny()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=message):
        compress(model, **overrides)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # nothing pruned yet
