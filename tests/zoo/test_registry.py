import pytest
import torch
from safetensors.torch import save_file

from lowbit import zoo
from lowbit.zoo.models import MODEL_NAMES, build
from lowbit.zoo.train import evaluate, main


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_shipped_weights_reproduce_the_card_accuracy(name):
    entry = zoo.load(name)
    assert not entry.model.training
    images, labels = entry.test.tensors
    accuracy = evaluate(entry.model, images, labels)
    assert accuracy == pytest.approx(entry.card["accuracy"], abs=0.011)
    assert entry.card["accuracy"] > 85.0


def test_load_leaves_no_shared_state_between_calls():
    a, b = zoo.load("mlp"), zoo.load("mlp")
    with torch.no_grad():
        next(a.model.parameters()).zero_()
    assert float(next(b.model.parameters()).detach().abs().sum()) > 0


def test_load_weights_names_missing_unexpected_and_mismatched_keys(tmp_path):
    state = build("lenet5").state_dict()
    state["extra.weight"] = torch.zeros(1)
    state["0.weight"] = torch.zeros(6, 1, 3, 3)
    del state["11.bias"]
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    with pytest.raises(ValueError) as err:
        zoo.load_weights(build("lenet5"), path)
    text = str(err.value)
    assert "missing ['11.bias']" in text and "unexpected ['extra.weight']" in text and "0.weight: file" in text


def test_training_is_reproducible_under_a_seed(tmp_path):
    for out in ("a", "b"):
        assert main(["mlp", "--epochs", "1", "--seed", "3", "--out", str(tmp_path / out)]) == 0
    from safetensors.torch import load_file

    first, second = load_file(str(tmp_path / "a" / "mlp.safetensors")), load_file(str(tmp_path / "b" / "mlp.safetensors"))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_minilm_entry_has_text_data_and_its_card_reproduces():
    pytest.importorskip("transformers")
    from lowbit.analysis import similarity_spearman

    entry = zoo.load("minilm")
    assert "minilm" in zoo.available() and not entry.model.training
    assert len(entry.train) == 200 and {label for _, label in entry.train} == {0, 1}
    texts = [text for text, _ in entry.test]
    assert len(texts) == 50 and [label for _, label in entry.test] == list(range(50))
    measured = similarity_spearman(zoo.encode(entry.model, texts), zoo.lee_similarities())
    assert measured == pytest.approx(entry.card["spearman"], abs=1e-4)
