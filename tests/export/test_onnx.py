"""ONNX (QDQ) export, run by ONNX Runtime as the independent client."""

import collections
import warnings

import numpy as np
import onnx
import pytest
import torch

import lowbit
from lowbit.export import IR_VERSION, export_onnx, ort_session
from lowbit.nn import ActivationQuantizer, QuantConv
from lowbit.zoo import load
from lowbit.zoo.data import fashion_mnist


@pytest.fixture(scope="module")
def fashion():
    images, labels = fashion_mnist("test").tensors
    train = fashion_mnist("train").tensors[0]
    return images[:1000], labels[:1000], list(train[:256].split(64))


def _quantize(model, recipe, calibration):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lowbit.quantize(model, recipe, calibration=calibration, progress=False)


def test_two_layers_agree_with_onnxruntime_within_one_lsb(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 32)).eval()
    calibration = [torch.randn(256, 64) for _ in range(4)]
    q = _quantize(model, lowbit.Recipe(quantize_output=True), calibration)
    path = export_onnx(q, calibration[0][:1], tmp_path / "mlp.onnx")
    x = torch.randn(4096, 64)
    out = ort_session(path).run(None, {"input_0": x.numpy()})[0]
    with torch.no_grad():
        reference = q(x).numpy()
    step = float([m for m in q.modules() if isinstance(m, ActivationQuantizer)][-1].scale)
    lsb = np.abs(out - reference) / step
    # ORT requantizes with a float multiplier and rounds the int32 bias: ties may land one code apart
    assert lsb.max() <= 1.0 + 1e-4
    assert (lsb > 0.5).mean() < 0.01


@pytest.mark.parametrize("name, convs, adds", [("lenet5", 2, 0), ("resnet20", 21, 9), ("mobilenetv2", 22, 4)])
def test_zoo_cnn_runs_fused_integer_kernels_in_onnxruntime(name, convs, adds, fashion, tmp_path):
    images, labels, calibration = fashion
    q = _quantize(load(name).model, "w8a8", calibration)
    path = export_onnx(q, images[:1], tmp_path / f"{name}.onnx")
    saved = onnx.load(str(path))
    assert saved.ir_version == IR_VERSION and saved.graph.input[0].name == "input_0"
    session = ort_session(path, optimized_path=tmp_path / "optimized.onnx")
    kernels = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    assert kernels["QLinearConv"] == convs == sum(isinstance(m, QuantConv) for m in q.modules())
    assert kernels["QLinearAdd"] == adds and kernels["Conv"] == 0
    out = np.concatenate([session.run(None, {"input_0": images[i : i + 250].numpy()})[0] for i in range(0, 1000, 250)])
    assert session.run(None, {"input_0": images[:1].numpy()})[0].shape == (1, 10)  # dynamic batch
    with torch.no_grad():
        reference = q(images).numpy()
    agree = (out.argmax(1) == reference.argmax(1)).mean()
    assert agree >= 0.99
    ort_accuracy, lowbit_accuracy = (out.argmax(1) == labels.numpy()).mean(), (reference.argmax(1) == labels.numpy()).mean()
    assert abs(ort_accuracy - lowbit_accuracy) <= 0.005


def test_file_is_about_four_times_smaller_than_fp32_onnx(fashion, tmp_path):
    images, _, calibration = fashion
    model = load("resnet20").model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (images[:1],), str(tmp_path / "fp32.onnx"), dynamo=False, opset_version=17)
    q = _quantize(model, "w8a8", calibration)
    int8 = export_onnx(q, images[:1], tmp_path / "int8.onnx")
    ratio = (tmp_path / "fp32.onnx").stat().st_size / int8.stat().st_size
    assert 3.0 < ratio < 4.1


def test_weight_only_model_exports_dequantized_weights(fashion, tmp_path):
    images, _, calibration = fashion
    q = _quantize(load("lenet5").model, "w8", calibration)
    path = export_onnx(q, images[:1], tmp_path / "w8.onnx")
    out = ort_session(path).run(None, {"input_0": images[:64].numpy()})[0]
    with torch.no_grad():
        assert np.allclose(out, q(images[:64]).numpy(), atol=1e-4)
    initializers = {i.data_type for i in onnx.load(str(path)).graph.initializer}
    assert onnx.TensorProto.INT8 in initializers


GROUPS_OF_5 = lowbit.Recipe("g5", lowbit.Mode.WEIGHT_ONLY, lowbit.QuantSpec(bits=4, granularity=lowbit.PerGroup(0, 5)),
                            None)


@pytest.mark.parametrize("recipe, message", [(GROUPS_OF_5, "weights of up to 8 bits per tensor or per output channel"),
                                             ("w8-dynamic", "dynamic quantization")])
def test_formats_qdq_cannot_carry_here_are_named(recipe, message, fashion, tmp_path):
    images, _, calibration = fashion
    q = _quantize(load("lenet5").model, recipe, calibration)
    with pytest.raises(ValueError, match=message):
        export_onnx(q, images[:1], tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_minilm_exports_and_runs_int8_matmuls_in_onnxruntime(tmp_path):
    pytest.importorskip("transformers")
    entry = load("minilm")
    model, sentences = entry.model, __import__("lowbit").zoo.stdlib_sentences(64)
    q = _quantize(model, "w8a8", [model.tokenize(sentences[i : i + 32]) for i in (0, 32)])
    tokens = model.tokenize([text for text, _ in entry.test][:8], max_length=128)
    example = (tokens["input_ids"], tokens["attention_mask"])
    path = export_onnx(q, example, tmp_path / "minilm.onnx")
    session = ort_session(path, optimized_path=tmp_path / "optimized.onnx")
    kernels = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    assert kernels["MatMulIntegerToFloat"] == 36  # every encoder Linear runs as an int8 GEMM
    out = session.run(None, {"input_0": example[0].numpy(), "input_1": example[1].numpy()})[0]
    with torch.no_grad():
        reference = model(*example).numpy()
    cosine = (out * reference).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.mean() >= 0.99
