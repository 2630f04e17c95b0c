"""Layers with integer weights: ``QuantLinear`` and ``QuantConv`` (1-D/2-D, grouped and depthwise).

A layer is built from a float layer by :meth:`from_float`: the weight is quantized once (codes in the spec's
integer dtype, plus qparams) and the float weight is dropped. ``forward`` runs in simulation — the codes are
dequantized and the float op runs — so results equal what integer hardware computes up to float summation order.

Example:
    >>> import torch
    >>> from lowbit import QuantSpec, PerChannel
    >>> conv = torch.nn.Conv2d(3, 8, 3, groups=1)
    >>> q = QuantConv.from_float(conv, QuantSpec(bits=4, granularity=PerChannel(0)))
    >>> int(q.weight_q.min()) >= -8 and int(q.weight_q.max()) <= 7
    True
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from lowbit.functional.affine import accumulator_bias, choose_qparams, dequantize, qparam_rows, qparam_shape, quantize, reduce_minmax
from lowbit.functional.calibration import mse_range_rows
from lowbit.spec import QParams, QuantSpec

__all__ = ["WeightObserver", "quantize_weight", "QuantLinear", "QuantConv"]


class WeightObserver(enum.Enum):
    """How a weight's range is chosen: its min/max, or the clip minimising the exact quantization MSE."""

    MINMAX = "minmax"
    MSE = "mse"


def quantize_weight(weight: torch.Tensor, spec: QuantSpec, observer: WeightObserver = WeightObserver.MINMAX,
                    ) -> tuple[torch.Tensor, QParams]:
    """Integer codes and qparams of ``weight`` under ``spec``.

    ``MSE`` searches the clip per qparam set (per tensor, channel or group) on the exact values.

    Example:
        >>> q, qp = quantize_weight(torch.tensor([[0.5, -1.0]]), QuantSpec(bits=8))
        >>> q.tolist(), round(float(qp.scale), 6)
        ([[64, -127]], 0.007874)
    """
    w = weight.detach().to(torch.float32)
    if observer is WeightObserver.MSE:
        lo, hi = mse_range_rows(qparam_rows(w, spec.granularity), spec)
        shape = qparam_shape(w.shape, spec.granularity)
        qp = choose_qparams(lo.reshape(shape), hi.reshape(shape), spec)
    else:
        qp = choose_qparams(*reduce_minmax(w, spec.granularity), spec)
    return quantize(w, qp), qp


def accumulator_output(op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, input_scale: float,
                       codes: torch.Tensor, qp: QParams, bias: torch.Tensor | None) -> torch.Tensor:
    """A layer's output computed from its integer accumulator, as integer execution computes it:
    ``(op(x/s_x, q_w − z_w) + bias codes) · s_x·s_w`` with the sums exact in float64.

    A sign edge reads only the sign of this value, so an accumulator of exactly 0 must give exactly 0 (→ +1), which
    float sums of dequantized products do not guarantee (docs/math.md B7).

    Args:
        op: the layer's product on float tensors (``F.linear`` or a bound convolution).
        codes / qp: the weight codes and their per-tensor or per-channel (axis 0) qparams.
        bias: the float bias (put on the accumulator grid here), or None.
    """
    x_codes = torch.round(x.detach().to(torch.float64) / input_scale)
    shape = [-1] + [1] * (codes.dim() - 1)
    zero_point = qp.zero_point.to(torch.float64)
    w = codes.to(torch.float64) - (zero_point.reshape(shape) if zero_point.numel() > 1 else zero_point)
    acc = op(x_codes, w)
    step = torch.tensor(input_scale, dtype=torch.float32) * qp.scale.reshape(-1).to(torch.float32)
    channel = [1, -1] + [1] * (acc.dim() - 2) if codes.dim() > 2 else [-1]
    if bias is not None:
        acc = acc + accumulator_bias(bias, input_scale, qp.scale)[0].to(torch.float64).reshape(channel)
    return (acc * step.to(torch.float64).reshape(channel)).to(x.dtype)


class _QuantWeightMixin(nn.Module):
    weight_q: torch.Tensor
    weight_scale: torch.Tensor
    weight_zero_point: torch.Tensor

    def _set_weight(self, weight: torch.Tensor, spec: QuantSpec, observer: WeightObserver) -> None:
        self.set_codes(*quantize_weight(weight, spec, observer))

    def set_codes(self, q: torch.Tensor, qp: QParams) -> None:
        """Hold the integer codes ``q`` with their qparams (e.g. from quantization-aware training).

        Raises:
            ValueError: codes off ``qp``'s grid, or qparams that do not fit the codes.
        """
        spec = qp.spec
        if q.is_floating_point() or int(q.min()) < spec.qmin or int(q.max()) > spec.qmax:
            raise ValueError(f"weight codes must be integers in [{spec.qmin}, {spec.qmax}], got {q.dtype} "
                             f"in [{q.min().item()}, {q.max().item()}]")
        dequantize(q.to(spec.code_dtype), qp)  # validates the qparams' shape against the codes
        q = q.to(spec.code_dtype)
        self.weight_spec = spec
        self.register_buffer("weight_q", q)
        self.register_buffer("weight_scale", qp.scale)
        self.register_buffer("weight_zero_point", qp.zero_point)

    def bind_input_scale(self, input_scale: float | None) -> None:
        """Add the bias as an integer kernel does: on the accumulator grid ``s_x · s_w`` of the frozen input scale.

        Integer execution (the engine, ONNX Runtime) rounds the bias to that grid; the simulation does the same
        once the input's scale is known, so both see one bias. ``None`` (or a bias too large for int32 there)
        keeps the float bias.
        """
        on_grid = None
        self.input_scale = input_scale
        if input_scale is not None and getattr(self, "bias", None) is not None:
            try:
                codes, step = accumulator_bias(self.bias, input_scale, self.weight_scale)
                on_grid = codes.to(torch.float32) * step
            except ValueError:
                on_grid = None
        self.register_buffer("bias_on_grid", on_grid, persistent=False)

    def _exact(self, x: torch.Tensor, op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor | None:
        """The accumulator-exact output when this layer feeds a sign edge (``sign_output``) and its input scale is
        bound; else None."""
        input_scale = getattr(self, "input_scale", None)
        if not getattr(self, "sign_output", False) or input_scale is None:
            return None
        return accumulator_output(op, x, input_scale, self.weight_q, self.weight_qparams(), getattr(self, "bias", None))

    def effective_bias(self, dtype: torch.dtype) -> torch.Tensor | None:
        """The bias the forward adds: on the accumulator grid once bound, else the float bias."""
        on_grid = getattr(self, "bias_on_grid", None)
        if on_grid is not None:
            return on_grid.to(dtype)
        bias = getattr(self, "bias", None)
        return None if bias is None else bias.to(dtype)

    def weight_qparams(self) -> QParams:
        return QParams(self.weight_scale, self.weight_zero_point, self.weight_spec)

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight the integer codes stand for."""
        return dequantize(self.weight_q, self.weight_qparams())


class QuantLinear(_QuantWeightMixin):
    """``y = x · dequantize(W_q)ᵀ + b`` with integer weight codes."""

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_float(cls, layer: nn.Linear, spec: QuantSpec,
                   observer: WeightObserver = WeightObserver.MINMAX) -> QuantLinear:
        """Quantize ``layer``'s weight; ``layer`` itself is not modified."""
        q = cls(layer.in_features, layer.out_features, layer.bias)
        q._set_weight(layer.weight, spec, observer)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        exact = self._exact(x, F.linear)
        if exact is not None:
            return exact
        return F.linear(x, self.dequantized_weight().to(x.dtype), self.effective_bias(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight_bits={self.weight_spec.bits}"


class QuantConv(_QuantWeightMixin):
    """A 1-D or 2-D convolution (any stride, padding, dilation, groups) with integer weight codes."""

    def __init__(self, layer: nn.Conv1d | nn.Conv2d):
        super().__init__()
        if layer.padding_mode != "zeros":
            raise ValueError(f"QuantConv supports padding_mode='zeros', got {layer.padding_mode!r}")
        self.dims = 1 if isinstance(layer, nn.Conv1d) else 2
        self.in_channels, self.out_channels = layer.in_channels, layer.out_channels
        self.kernel_size, self.stride, self.padding = layer.kernel_size, layer.stride, layer.padding
        self.dilation, self.groups = layer.dilation, layer.groups
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_float(cls, layer: nn.Conv1d | nn.Conv2d, spec: QuantSpec,
                   observer: WeightObserver = WeightObserver.MINMAX) -> QuantConv:
        """Quantize ``layer``'s weight; ``layer`` itself is not modified."""
        if not isinstance(layer, (nn.Conv1d, nn.Conv2d)):
            raise ValueError(f"QuantConv.from_float needs an nn.Conv1d or nn.Conv2d, got {type(layer).__name__}")
        q = cls(layer)
        q._set_weight(layer.weight, spec, observer)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = F.conv1d if self.dims == 1 else F.conv2d
        exact = self._exact(x, lambda x_, w_: conv(x_, w_, None, self.stride, self.padding, self.dilation, self.groups))
        if exact is not None:
            return exact
        return conv(x, self.dequantized_weight().to(x.dtype), self.effective_bias(x.dtype), self.stride, self.padding, self.dilation,
                    self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"groups={self.groups}, weight_bits={self.weight_spec.bits}")
