"""Deployment formats: ONNX (QDQ) export of quantized models and an ONNX Runtime session helper.

Example:
    >>> from lowbit.export import export_onnx, ort_session
    >>> callable(export_onnx) and callable(ort_session)
    True
"""

from lowbit.export.bench import Candidate, time_candidates
from lowbit.export.onnx import IR_VERSION, OPSET, export_float_onnx, export_onnx, ort_session

__all__ = ["export_onnx", "export_float_onnx", "ort_session", "OPSET", "IR_VERSION", "Candidate", "time_candidates"]
