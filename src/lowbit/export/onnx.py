"""Export a quantized model to ONNX in QDQ form, which ONNX Runtime fuses into integer kernels.

Weights are stored as integer initializers (int8 codes, per-channel or per-tensor) followed by
``DequantizeLinear``; each activation quantizer becomes ``QuantizeLinear → DequantizeLinear`` with its frozen
scale and zero point (a grid narrower than 8 bits — e.g. from 4-bit QAT — rides in the 8-bit pair behind a
``Clip`` to its range: correct values, but ONNX Runtime then runs those layers as float ops, not fused integer
kernels); a layer's bias becomes int32 codes on the grid ``s_x · s_w`` (what an integer kernel adds to
its accumulator) when the layer's input comes from a quantizer. Everything else is exported by PyTorch's
TorchScript-based exporter as float ops — the float islands between quantizers.

The exporter swaps lowbit's modules for export twins in a copy of the model, so the model itself is untouched.

Example:
    >>> import tempfile, torch, lowbit
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval()
    >>> q = lowbit.quantize(model, "w8a8", calibration=[torch.randn(32, 8)], progress=False)
    >>> path = export_onnx(q, torch.randn(1, 8), tempfile.mkdtemp() + "/model.onnx")
    >>> session = ort_session(path)
    >>> out = session.run(None, {"input_0": torch.randn(5, 8).numpy()})[0]
    >>> out.shape
    (5, 4)
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from lowbit.flows.placement import input_scales
from lowbit.functional.affine import accumulator_bias
from lowbit.nn.activation import ActivationQuantizer
from lowbit.nn.layers import QuantConv, QuantLinear
from lowbit.spec import PerChannel, PerTensor
from lowbit.transforms.fold_bn import replace_module

__all__ = ["export_onnx", "export_float_onnx", "ort_session", "OPSET", "IR_VERSION"]

# Per-axis DequantizeLinear needs opset 13; 17 is what ONNX Runtime 1.31's QDQ fusions are tested with.
OPSET = 17
# onnx 1.23 writes IR version 14 by default, which onnxruntime 1.31 rejects; 8 is what opset 17 needs.
IR_VERSION = 8


class _Dequantize(torch.autograd.Function):
    """``DequantizeLinear`` of constant integer codes (weights: int8; biases: int32), per tensor or along ``axis``."""

    @staticmethod
    def forward(ctx: Any, codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int,
                ) -> torch.Tensor:
        shape = [1] * codes.dim()
        if scale.numel() > 1:
            shape[axis] = -1
        return (codes.to(torch.float32) - zero_point.reshape(shape).to(torch.float32)) * scale.reshape(shape)

    @staticmethod
    def symbolic(g: Any, codes: Any, scale: Any, zero_point: Any, axis: int) -> Any:
        return g.op("DequantizeLinear", codes, scale, zero_point, axis_i=axis)


class _ExportQDQ(nn.Module):
    def __init__(self, quantizer: ActivationQuantizer) -> None:
        super().__init__()
        spec = quantizer.spec
        if spec.bits > 8 or quantizer.scale.numel() != 1:
            raise ValueError(f"export_onnx supports per-tensor activation quantizers of up to 8 bits; "
                             f"{quantizer.label} is {spec.bits}-bit with {quantizer.scale.numel()} scales")
        self.scale, self.zero_point = float(quantizer.scale), int(quantizer.zero_point)
        self.signed = spec.signed
        # a grid narrower than 8 bits travels in an 8-bit QDQ pair; a Clip to its range saturates as it does
        self.clip = None if spec.bits == 8 else tuple(
            float(torch.tensor(code - self.zero_point, dtype=torch.float32) * quantizer.scale) for code in (spec.qmin, spec.qmax))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.clip is not None:
            x = x.clamp(*self.clip)
        # PyTorch's exporter writes this op as QuantizeLinear → DequantizeLinear with a (u)int8 zero point
        qmin, qmax = (-128, 127) if self.signed else (0, 255)
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, qmin, qmax)


class _ExportLayer(nn.Module):
    """A QuantConv/QuantLinear as ``DequantizeLinear(int8 codes)`` → float conv/linear with an int32 bias."""

    def __init__(self, layer: QuantConv | QuantLinear, name: str, input_scale: float | None) -> None:
        super().__init__()
        spec = layer.weight_spec
        if spec.bits > 8 or not isinstance(spec.granularity, (PerTensor, PerChannel)) or (
                isinstance(spec.granularity, PerChannel) and spec.granularity.axis != 0):
            raise ValueError(f"export_onnx supports weights of up to 8 bits per tensor or per output channel; layer "
                             f"{name} has {spec.bits}-bit weights, {spec.granularity}")
        self.layer = layer
        dtype = torch.int8 if spec.signed else torch.uint8
        self.register_buffer("codes", layer.weight_q.to(dtype))
        self.register_buffer("scale", layer.weight_scale.reshape(-1).to(torch.float32))
        self.register_buffer("zero_point", layer.weight_zero_point.reshape(-1).to(dtype))
        self.int_bias = layer.bias is not None and input_scale is not None and bool((self.zero_point == 0).all())
        if self.int_bias:
            # an integer kernel adds the bias to its accumulator, whose step is s_x · s_w (per output channel)
            try:
                codes, bias_scale = accumulator_bias(layer.bias, input_scale, self.scale)
            except ValueError as err:
                raise ValueError(f"layer {name}: {err}") from err
            self.register_buffer("bias_codes", codes)
            self.register_buffer("bias_scale", bias_scale)
            self.register_buffer("bias_zero_point", torch.zeros_like(self.bias_codes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = _Dequantize.apply(self.codes, self.scale, self.zero_point, 0)
        layer = self.layer
        if self.int_bias:
            bias = _Dequantize.apply(self.bias_codes, self.bias_scale, self.bias_zero_point, 0)
        else:
            bias = None if layer.bias is None else layer.bias
        if isinstance(layer, QuantLinear):
            return nn.functional.linear(x, weight, bias)
        conv = nn.functional.conv1d if layer.dims == 1 else nn.functional.conv2d
        return conv(x, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups)


def _export_twin(model: nn.Module) -> nn.Module:
    twin = copy.deepcopy(model).eval()
    scales = input_scales(twin)
    for name, module in list(twin.named_modules()):
        if isinstance(module, (QuantConv, QuantLinear)):
            replace_module(twin, name, _ExportLayer(module, name, scales.get(name)))
        elif isinstance(module, ActivationQuantizer) and not module.bypass:
            if module.dynamic:
                raise ValueError(f"export_onnx does not export dynamic quantization yet ({module.label}); "
                                 "use a static or weight-only recipe")
            if not module.frozen:
                raise ValueError(f"activation quantizer {module.label} is not calibrated")
            replace_module(twin, name, _ExportQDQ(module))
    if isinstance(twin, fx.GraphModule):
        twin.recompile()
    return twin


def export_float_onnx(model: nn.Module, example_inputs: torch.Tensor | tuple, path: str | Path) -> Path:
    """Write an fp32 model as ONNX with the same conventions as :func:`export_onnx` (names, dynamic batch, IR
    version) — the baseline it is compared with."""
    return _export(model, example_inputs, Path(path))


def export_onnx(qmodel: nn.Module, example_inputs: torch.Tensor | tuple, path: str | Path) -> Path:
    """Write ``qmodel`` (from :func:`lowbit.quantize`, static or weight-only, up to 8 bits) as a QDQ ONNX model.

    Inputs are named ``input_0``, ``input_1``, …, outputs ``output_0``, …; the batch dimension is dynamic. Codes
    narrower than 8 bits travel in int8 (an activation grid gets a Clip to its narrower range).

    Raises:
        ValueError: a layer or quantizer the QDQ format cannot carry here (more than 8 bits, per-group,
            per-channel activations, dynamic), named.
    """
    return _export(_export_twin(qmodel), example_inputs, Path(path))


def _export(twin: nn.Module, example_inputs: torch.Tensor | tuple, path: Path) -> Path:
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    with torch.no_grad():
        outputs = twin(*inputs)
    count = len(outputs) if isinstance(outputs, (tuple, list)) else 1
    input_names = [f"input_{i}" for i in range(len(inputs))]
    output_names = [f"output_{i}" for i in range(count)]
    axes = {name: {0: "batch"} for name in input_names + output_names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(twin, inputs, str(path), dynamo=False, opset_version=OPSET, input_names=input_names,
                          output_names=output_names, dynamic_axes=axes, do_constant_folding=True)
    model = onnx.load(str(path))
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def ort_session(path: str | Path, threads: int | None = None, optimized_path: str | Path | None = None) -> Any:
    """An ONNX Runtime CPU session for ``path`` with all graph optimisations (QDQ fusion included).

    Args:
        threads: intra-op threads (``None``: ONNX Runtime's default).
        optimized_path: also write the optimised graph there (to check which integer kernels it fused).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
