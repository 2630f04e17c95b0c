"""MiniLM end to end on real text: quantized embeddings against fp32 (issue #3 figures, measured in tests)."""

import warnings

import pytest
import torch

import lowbit
from lowbit.zoo import MiniLMEmbedder, encode, lee_documents, stdlib_sentences

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def setup():
    model = MiniLMEmbedder().eval()
    calibration = stdlib_sentences(128)
    texts = lee_documents()  # evaluation text differs from the calibration text
    return model, calibration, texts, encode(model, texts)


def _cosine(setup_tuple, recipe):
    fp32_model, calibration, texts, reference = setup_tuple
    batches = [fp32_model.tokenize(calibration[i : i + 32]) for i in range(0, len(calibration), 32)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BERT cannot be traced: quantized layer by layer, as warned
        q = lowbit.quantize(fp32_model, recipe, calibration=batches, progress=False)
    assert len(q.quantization_summary.quantized) == 37  # six blocks × (q, k, v, o, up, down) + the unused pooler
    return torch.nn.functional.cosine_similarity(reference, encode(q, texts, tokenizer_from=fp32_model)).mean()


def test_per_token_dynamic_int8_keeps_embeddings(setup):
    assert _cosine(setup, "w8-dynamic-token") >= 0.998


def test_static_w8a8_keeps_embeddings(setup):
    assert _cosine(setup, "w8a8") >= 0.99
