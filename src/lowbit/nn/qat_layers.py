"""``QATLayer``: a Linear/Conv1d/Conv2d whose float weight is fake-quantized in every forward, with the
BatchNorm after it folded in during training as the whitepaper does (docs/math.md Q5).

With a BatchNorm (γ, β, running μ, σ) and its folding factor ``f = γ/σ`` per output channel:

- training, statistics not frozen: ``y = BN_batch(op(x, Q(W·f)) / f + b)`` — the weight is quantized *folded with
  the running statistics*, so the quantized weights do not jump with every batch; dividing by ``f`` and applying
  BatchNorm with the batch statistics gives ``(σ/σ_B)·op(x, Q(W·f)) + …``, the whitepaper's correction. BN updates
  its running statistics.
- statistics frozen (:meth:`freeze_bn`) or eval mode: ``y = op(x, Q(W·f)) + (β + (b − μ)·f)`` — exactly the
  folded inference layer that :meth:`export` hands to conversion.

A scale-invariant weight quantizer (DoReFa) quantizes ``W`` itself and BatchNorm follows it; conversion folds
``f`` into the per-channel scale.

Example:
    >>> import torch
    >>> from lowbit import QuantSpec, PerChannel
    >>> from lowbit.nn.fake_quant import STEWeightQuantizer
    >>> conv, bn = torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4)
    >>> layer = QATLayer(conv, STEWeightQuantizer(QuantSpec(bits=4, granularity=PerChannel(0))), bn).eval()
    >>> codes, qp, bias = layer.export()
    >>> codes.dtype, tuple(qp.scale.shape), bias.shape
    (torch.int8, (4,), torch.Size([4]))
"""

from __future__ import annotations

import copy
import dataclasses
import functools

import torch
from torch import nn
from torch.nn import functional as F

from lowbit.functional.affine import accumulator_bias
from lowbit.functional.binary import xnor_input_scale, xnor_row_scale
from lowbit.functional.dorefa import quantize_gradient_ste
from lowbit.functional.ste import masked_ste
from lowbit.nn.fake_quant import WeightFakeQuantizer
from lowbit.nn.layers import QuantConv, QuantLinear, accumulator_output
from lowbit.spec import PerChannel, QParams

__all__ = ["QATLayer"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


class QATLayer(nn.Module):
    """A layer trained with its weight fake-quantized (and a following BatchNorm folded, see the module docstring).

    Args:
        layer: the float ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` (copied; not modified).
        weight_quantizer: a :class:`~lowbit.nn.fake_quant.WeightFakeQuantizer`.
        bn: the BatchNorm that read this layer's output (copied), or None.
        gradient_bits: DoReFa gradient quantization of the gradient flowing back into this layer's output.

    Raises:
        ValueError: another layer type, a padding mode other than zeros, or a BatchNorm that does not fit.
    """

    def __init__(self, layer: nn.Module, weight_quantizer: WeightFakeQuantizer, bn: nn.Module | None = None,
                 gradient_bits: int | None = None):
        super().__init__()
        if not isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            raise ValueError(f"QATLayer wraps Linear, Conv1d or Conv2d, got {type(layer).__name__}")
        if isinstance(layer, (nn.Conv1d, nn.Conv2d)) and layer.padding_mode != "zeros":
            raise ValueError(f"QATLayer supports padding_mode='zeros', got {layer.padding_mode!r}")
        if bn is not None and (not isinstance(bn, _BN) or bn.num_features != layer.weight.shape[0]
                               or bn.running_var is None):
            raise ValueError(f"QATLayer folds a BatchNorm with running statistics over its "
                             f"{layer.weight.shape[0]} outputs, got {bn!r}")
        self.kind = "linear" if isinstance(layer, nn.Linear) else ("conv1d" if isinstance(layer, nn.Conv1d) else "conv2d")
        self.weight = nn.Parameter(layer.weight.detach().clone())
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())
        if self.kind != "linear":
            self.stride, self.padding, self.dilation, self.groups = layer.stride, layer.padding, layer.dilation, layer.groups
            self.kernel_size = layer.kernel_size
        self.weight_quantizer = weight_quantizer
        self.bn = None if bn is None else copy.deepcopy(bn)
        self.gradient_bits = gradient_bits
        self.register_buffer("bn_frozen", torch.tensor(False))
        self.input_scale_map = False  # XNOR-Net's K: set by prepare, read from forward's scale_source
        self.sign_output = False  # feeds a sign edge: eval output from the exact accumulator (set by prepare)
        self.bind_input_quantizer(None)

    def bind_input_quantizer(self, quantizer: nn.Module | None) -> None:
        """The activation quantizer that feeds this layer (set by :func:`lowbit.qat.prepare`): with it, the bias
        is added on the accumulator grid ``s_x · s_w`` as integer execution adds it (straight-through gradient),
        so training and the converted model compute the same values. Held outside the module tree (it is not
        this layer's state)."""
        self.__dict__["_input_quantizer"] = quantizer

    def _on_grid(self, bias: torch.Tensor | None, weight_scale: torch.Tensor) -> torch.Tensor | None:
        quantizer = self.__dict__.get("_input_quantizer")
        input_step = quantizer.current_step() if quantizer is not None else None
        if bias is None or input_step is None:
            return bias
        try:
            codes, step = accumulator_bias(bias.detach().to(torch.float32), input_step, weight_scale)
        except ValueError:  # too large for int32 on that grid: the converted layer keeps the float bias too
            return bias
        return masked_ste(bias, (codes.to(torch.float32) * step).to(bias.dtype))

    def _op(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, k: torch.Tensor | None = None,
            ) -> torch.Tensor:
        if self.kind == "linear":
            y = F.linear(x, w, None if k is not None else b)
        else:
            conv = F.conv1d if self.kind == "conv1d" else F.conv2d
            y = conv(x, w, None if k is not None else b, self.stride, self.padding, self.dilation, self.groups)
        if k is None:
            return y
        y = y * k  # XNOR-Net: the binary product scaled by K at each output position
        return y if b is None else y + self._channel_view(b, y.ndim, 1 if self.kind != "linear" else y.ndim - 1)

    def input_scale(self, source: torch.Tensor) -> torch.Tensor:
        """XNOR-Net's ``K`` for the real input ``source`` of this layer (before binarisation): the box-filtered
        channel mean of ``|source|`` for a 2-D convolution, the row mean for a linear layer."""
        if self.kind == "linear":
            return xnor_row_scale(source)
        return xnor_input_scale(source, self.kernel_size, self.stride, self.padding)

    def use_input_scale_map(self) -> None:
        """Scale outputs by XNOR-Net's ``K`` of the ``scale_source`` passed to :meth:`forward`.

        Raises:
            ValueError: a Conv1d, or a dilated or grouped convolution (XNOR-Net defines K for plain ones).
        """
        if self.kind == "conv1d" or (self.kind == "conv2d" and (self.dilation != (1, 1) or self.groups != 1)):
            raise ValueError(f"XNOR-Net's input scale map needs a plain Linear or Conv2d, got {self.extra_repr()}")
        self.input_scale_map = True

    def _channel_view(self, t: torch.Tensor, ndim: int, dim: int) -> torch.Tensor:
        return t.reshape([-1 if d == dim else 1 for d in range(ndim)])

    def _factor(self) -> torch.Tensor:
        """BN's ``γ/σ`` with the running statistics (eq. Q5)."""
        assert self.bn is not None
        std = torch.sqrt(self.bn.running_var + self.bn.eps)
        gamma = self.bn.weight if self.bn.weight is not None else torch.ones_like(std)
        return gamma / std

    def _folded_bias(self, factor: torch.Tensor) -> torch.Tensor:
        assert self.bn is not None
        bias = self.bias if self.bias is not None else torch.zeros_like(factor)
        beta = self.bn.bias if self.bn.bias is not None else torch.zeros_like(factor)
        return beta + (bias - self.bn.running_mean) * factor

    def freeze_bn(self) -> None:
        """Use the running statistics from now on (and stop updating them)."""
        self.bn_frozen.fill_(True)

    def forward(self, x: torch.Tensor, scale_source: torch.Tensor | None = None) -> torch.Tensor:
        """``scale_source``: the real input before binarisation, for XNOR-Net's ``K`` (when ``input_scale_map``)."""
        k = self.input_scale(scale_source) if self.input_scale_map and scale_source is not None else None
        op = functools.partial(self._op, k=k)
        quantize = self.weight_quantizer
        on = quantize.enabled
        if self.bn is None:
            bias = self._on_grid(self.bias, quantize.scale(self.weight)) if on else self.bias
            y = op(x, quantize(self.weight), bias)
        else:
            batch_stats = self.training and not bool(self.bn_frozen)
            factor = self._factor()
            weight_view = self._channel_view(factor, self.weight.ndim, 0)
            if quantize.scale_invariant:
                w_q = quantize(self.weight)
                if batch_stats:
                    y = self.bn(op(x, w_q, self.bias))
                else:
                    bias, folded = self._folded_bias(factor), w_q * weight_view
                    if on:
                        step = quantize.scale(self.weight)
                        bias = self._on_grid(bias, self._invariant_scale(step, factor))
                        # the converted layer's values: ±codes · (step·|f|) per channel, bit for bit
                        step_view = step if step.numel() == 1 else self._channel_view(step, w_q.ndim, 0)
                        codes = torch.round(w_q.detach() / step_view.to(w_q.dtype))
                        signed = codes * self._channel_view(torch.sign(factor.detach()), codes.ndim, 0)
                        exact = signed * self._channel_view(self._invariant_scale(step, factor), codes.ndim, 0)
                        folded = masked_ste(folded, exact.to(folded.dtype))
                    y = op(x, folded, bias)
            else:
                w_fold = self.weight * weight_view
                w_q = quantize(w_fold)
                if batch_stats:
                    # a channel with γ = 0 has a zero folded weight and outputs β: divide it by 1, not 0
                    safe = torch.where(factor == 0, torch.ones_like(factor), factor)
                    y = op(x, w_q, None) / self._channel_view(safe, x.ndim, 1)
                    if self.bias is not None:
                        y = y + self._channel_view(self.bias, y.ndim, 1)
                    y = self.bn(y)  # batch statistics; updates the running ones
                else:
                    bias = self._folded_bias(factor)
                    y = op(x, w_q, self._on_grid(bias, quantize.scale(w_fold.detach())) if on else bias)
        if self.sign_output and on and k is None and not (self.training and not bool(self.bn_frozen)):
            y = self._accumulator_exact(x, y)
        return y if self.gradient_bits is None else quantize_gradient_ste(y, self.gradient_bits)

    def _accumulator_exact(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``y`` with its forward value from the integer accumulator of the converted layer (a sign edge reads it:
        an exact 0 must stay 0); the gradient still flows through ``y``."""
        quantizer = self.__dict__.get("_input_quantizer")
        input_step = quantizer.current_step() if quantizer is not None else None
        if input_step is None:
            return y
        codes, qp, bias = self.export()
        exact = accumulator_output(lambda a, w: self._op(a, w, None), x, input_step, codes, qp, bias)
        return masked_ste(y, exact.to(y.dtype))

    @torch.no_grad()
    def export(self) -> tuple[torch.Tensor, QParams, torch.Tensor | None]:
        """``(codes, qparams, bias)`` of the inference layer (BatchNorm folded), as eval mode computes it."""
        quantize = self.weight_quantizer
        if self.bn is None:
            codes, qp = quantize.export(self.weight)
            return codes, qp, None if self.bias is None else self.bias.detach().clone()
        factor = self._factor().detach()
        bias = self._folded_bias(factor).detach().to(torch.float32)
        if not quantize.scale_invariant:
            codes, qp = quantize.export(self.weight * self._channel_view(factor, self.weight.ndim, 0))
            return codes, qp, bias
        codes, qp = quantize.export(self.weight)
        # W_q·f per channel: the channel's scale is step·|f|; a negative f flips the (symmetric) codes
        sign = torch.where(factor < 0, -1, 1).to(torch.int32)
        codes = (codes.to(torch.int32) * self._channel_view(sign, codes.ndim, 0)).to(codes.dtype)
        scale = self._invariant_scale(qp.scale, factor)
        spec = dataclasses.replace(qp.spec, granularity=PerChannel(0))
        return codes, QParams(scale, torch.zeros_like(scale, dtype=torch.int32), spec), bias

    @staticmethod
    def _invariant_scale(step: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        """Per-channel scale of a scale-invariant weight with BN's factor folded in after quantization."""
        scale = step.detach().to(torch.float32) * factor.detach().abs().to(torch.float32)
        return scale.clamp(min=torch.finfo(torch.float32).tiny).reshape(-1)  # γ = 0: a zero channel, a valid scale

    def to_quantized(self) -> QuantLinear | QuantConv:
        """The frozen layer with integer weights that computes what eval mode computes.

        Raises:
            ValueError: an XNOR-Net layer (its ``K`` is a float per-position multiplier integer layers do not carry).
        """
        if self.input_scale_map:
            raise ValueError("an XNOR-Net layer scales its output by the float input map K at every position; integer "
                             "layers cannot hold it — evaluate the trained model in eval mode, or train 'bnn'/'bwn'")
        codes, qp, bias = self.export()
        out_features = self.weight.shape[0]
        if self.kind == "linear":
            layer: QuantLinear | QuantConv = QuantLinear(self.weight.shape[1], out_features, bias)
        else:
            cls = nn.Conv1d if self.kind == "conv1d" else nn.Conv2d
            template = cls(self.weight.shape[1] * self.groups, out_features, self.kernel_size, self.stride,
                           self.padding, self.dilation, self.groups, bias=False, device="meta")
            layer = QuantConv(template)
            layer.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        layer.set_codes(codes, qp)
        return layer

    def extra_repr(self) -> str:
        grad = f", gradient_bits={self.gradient_bits}" if self.gradient_bits else ""
        scale_map = ", input scale map K" if self.input_scale_map else ""
        return (f"{self.kind}, weight={tuple(self.weight.shape)}, bn={'folded' if self.bn is not None else 'none'}"
                f"{grad}{scale_map}")

