"""Quantized modules: activation quantizers on tensor edges and layers with integer weights.

Example:
    >>> import torch
    >>> from lowbit import QuantSpec, PerChannel
    >>> layer = QuantLinear.from_float(torch.nn.Linear(4, 2), QuantSpec(bits=8, granularity=PerChannel(0)))
    >>> layer.weight_q.dtype, layer(torch.zeros(3, 4)).shape
    (torch.int8, torch.Size([3, 2]))
"""

from lowbit.nn.activation import ActivationQuantizer
from lowbit.nn.binary_layers import (
    BinaryConv2d,
    BinaryDense,
    BinaryLinear,
    DorefaConv2d,
    DorefaDense,
    DorefaLinear,
    TernaryConv2d,
    TernaryDense,
    TernaryLinear,
)
from lowbit.nn.binary_quant import SignQuantizer
from lowbit.nn.layers import QuantConv, QuantLinear, WeightObserver, quantize_weight
from lowbit.nn.scale import ChannelScale

__all__ = ["ActivationQuantizer", "QuantLinear", "QuantConv", "WeightObserver", "quantize_weight", "ChannelScale",
           "SignQuantizer", "BinaryConv2d", "BinaryLinear", "BinaryDense", "TernaryConv2d", "TernaryLinear",
           "TernaryDense", "DorefaConv2d", "DorefaLinear", "DorefaDense"]
