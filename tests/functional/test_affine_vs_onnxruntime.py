"""ONNX Runtime's QuantizeLinear / DequantizeLinear are the deployment oracle: codes must match bit for bit."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from lowbit import PerChannel, QuantSpec
from lowbit.functional import choose_qparams, dequantize, quantize, reduce_minmax


def _session(op: str, in_type: int, out_type: int, scale: np.ndarray, zp: np.ndarray, axis: int | None, rank: int):
    zp_type = TensorProto.UINT8 if zp.dtype == np.uint8 else TensorProto.INT8
    attrs = {} if axis is None else {"axis": axis}
    node = helper.make_node(op, ["x", "s", "z"], ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", in_type, [None] * rank)],
        [helper.make_tensor_value_info("y", out_type, [None] * rank)],
        initializer=[
            helper.make_tensor("s", TensorProto.FLOAT, scale.shape, scale.reshape(-1).tolist()),
            helper.make_tensor("z", zp_type, zp.shape, zp.reshape(-1).tolist()),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("signed", [True, False])
def test_per_tensor_quantize_and_dequantize_match_ort(signed):
    torch.manual_seed(0)
    x = torch.randn(400_000) * 2 + 0.3
    spec = QuantSpec(bits=8, signed=signed, symmetric=False)
    qp = choose_qparams(*reduce_minmax(x[:1000], spec.granularity), spec)  # narrow calibration: real clipping
    np_dtype = np.int8 if signed else np.uint8
    out_type = TensorProto.INT8 if signed else TensorProto.UINT8
    zp = np.array(int(qp.zero_point), dtype=np_dtype)
    q_ort = _session("QuantizeLinear", TensorProto.FLOAT, out_type, qp.scale.numpy(), zp, None, 1).run(
        None, {"x": x.numpy()}
    )[0]
    q = quantize(x, qp)
    assert np.array_equal(q.numpy(), q_ort)
    deq_ort = _session("DequantizeLinear", out_type, TensorProto.FLOAT, qp.scale.numpy(), zp, None, 1).run(
        None, {"x": q_ort}
    )[0]
    assert np.array_equal(dequantize(q, qp).numpy(), deq_ort)


def test_per_channel_quantize_matches_ort():
    torch.manual_seed(1)
    w = torch.randn(32, 16, 3, 3) * torch.rand(32, 1, 1, 1) * 3
    spec = QuantSpec(bits=8, granularity=PerChannel(0), narrow_range=True)
    qp = choose_qparams(*reduce_minmax(w, spec.granularity), spec)
    zp = qp.zero_point.numpy().astype(np.int8)
    q_ort = _session("QuantizeLinear", TensorProto.FLOAT, TensorProto.INT8, qp.scale.numpy(), zp, 0, 4).run(
        None, {"x": w.numpy()}
    )[0]
    assert np.array_equal(quantize(w, qp).numpy(), q_ort)
