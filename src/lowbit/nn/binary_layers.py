"""Layer names users of TensorLayer expect — ``BinaryConv2d``, ``TernaryConv2d``, ``DorefaConv2d`` and their
``Linear`` (``Dense``) twins — as thin conveniences over :class:`~lowbit.nn.qat_layers.QATLayer` and the quantizers
of :mod:`lowbit.nn.binary_quant` and :mod:`lowbit.nn.fake_quant`: the same rules :func:`lowbit.qat.prepare` puts
into a float model, for people who write the binary model by hand.

- ``Binary*``: sign of the input and sign of the weights (BNN); ``xnor=True`` adds XNOR-Net's ``α`` per output
  channel and the input scale map ``K``.
- ``Ternary*``: ternary weights (``rule="twn"``, ``"ttq"`` or ``"five-level"``), real inputs.
- ``Dorefa*``: DoReFa ``weight_bits`` weights and ``activation_bits`` inputs ``quantize_k(clip(x, 0, 1))``.

Train them with any loop (or :func:`lowbit.qat.fit`, which also calls :func:`~lowbit.nn.binary_quant.clip_latent_weights`
after each step). To convert and run a binary model in bits, build it from float layers and use
:func:`lowbit.qat.prepare` / :func:`lowbit.qat.convert` — conversion needs the graph these layers hide.

Example:
    >>> import torch
    >>> layer = BinaryConv2d(3, 8, 3, padding=1)
    >>> y = layer(torch.randn(2, 3, 5, 5)); tuple(y.shape)
    (2, 8, 5, 5)
    >>> bool((layer.weight_quantizer(layer.weight).abs() == 1).all())     # ±1 weights
    True
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.functional.dorefa import dorefa_activation
from lowbit.nn.binary_quant import (
    BinaryWeightQuantizer,
    FiveLevelWeightQuantizer,
    SignActivationQuantizer,
    TernaryWeightQuantizer,
    TTQWeightQuantizer,
)
from lowbit.nn.fake_quant import DoReFaWeightQuantizer, WeightFakeQuantizer
from lowbit.nn.qat_layers import QATLayer
from lowbit.spec import QuantSpec

__all__ = ["BinaryConv2d", "BinaryLinear", "BinaryDense", "TernaryConv2d", "TernaryLinear", "TernaryDense",
           "DorefaConv2d", "DorefaLinear", "DorefaDense"]

_TERNARY_RULES = ("twn", "ttq", "five-level")


def _ternary(rule: str, weight: torch.Tensor) -> WeightFakeQuantizer:
    if rule == "twn":
        return TernaryWeightQuantizer()
    if rule == "ttq":
        return TTQWeightQuantizer(weight)
    if rule == "five-level":
        return FiveLevelWeightQuantizer()
    raise ValueError(f"ternary rule must be one of {', '.join(_TERNARY_RULES)}, got {rule!r}")


def _check_bits(name: str, bits: int, high: int) -> None:
    if not isinstance(bits, int) or not 1 <= bits <= high:
        raise ValueError(f"{name} must be an int in 1..{high}, got {bits!r}")


class _BinaryInput(QATLayer):
    def _setup(self, xnor: bool) -> None:
        self.input_quantizer = SignActivationQuantizer(label="input")
        if xnor:
            self.use_input_scale_map()

    def forward(self, x: torch.Tensor, scale_source: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(self.input_quantizer.fake_quantize(x), scale_source=x)


class BinaryConv2d(_BinaryInput):
    """A Conv2d with sign inputs and sign weights (BNN); ``xnor=True``: XNOR-Net's ``α`` and ``K``.

    Args:
        stochastic: BinaryConnect's stochastic weight binarisation in training mode.
        clip: the latent weights' clip (BNN: 1).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], stride: int = 1,
                 padding: int = 0, bias: bool = True, *, xnor: bool = False, stochastic: bool = False,
                 clip: float | None = 1.0):
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        super().__init__(conv, BinaryWeightQuantizer(scaled=xnor, stochastic=stochastic, clip=clip))
        self._setup(xnor)


class BinaryLinear(_BinaryInput):
    """A Linear with sign inputs and sign weights (BNN); ``xnor=True``: XNOR-Net's ``α`` and row scale ``K``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, xnor: bool = False,
                 stochastic: bool = False, clip: float | None = 1.0):
        linear = nn.Linear(in_features, out_features, bias=bias)
        super().__init__(linear, BinaryWeightQuantizer(scaled=xnor, stochastic=stochastic, clip=clip))
        self._setup(xnor)


class TernaryConv2d(QATLayer):
    """A Conv2d with ternary weights (``rule``: ``"twn"``, ``"ttq"`` or ``"five-level"``) and real inputs."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], stride: int = 1,
                 padding: int = 0, bias: bool = True, *, rule: str = "twn"):
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        super().__init__(conv, _ternary(rule, conv.weight))


class TernaryLinear(QATLayer):
    """A Linear with ternary weights (``rule``: ``"twn"``, ``"ttq"`` or ``"five-level"``) and real inputs."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, rule: str = "twn"):
        linear = nn.Linear(in_features, out_features, bias=bias)
        super().__init__(linear, _ternary(rule, linear.weight))


class _DorefaInput(QATLayer):
    def _setup(self, activation_bits: int) -> None:
        _check_bits("activation_bits", activation_bits, 16)
        self.activation_bits = activation_bits

    def forward(self, x: torch.Tensor, scale_source: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(dorefa_activation(x, self.activation_bits))


def _dorefa_weights(bits: int) -> DoReFaWeightQuantizer:
    _check_bits("weight_bits", bits, 15)
    return DoReFaWeightQuantizer(QuantSpec(bits=bits, signed=bits > 1))


class DorefaConv2d(_DorefaInput):
    """A Conv2d with DoReFa ``weight_bits`` weights and ``activation_bits`` inputs (``quantize_k(clip(x, 0, 1))``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], stride: int = 1,
                 padding: int = 0, bias: bool = True, *, weight_bits: int = 1, activation_bits: int = 3):
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        super().__init__(conv, _dorefa_weights(weight_bits))
        self._setup(activation_bits)


class DorefaLinear(_DorefaInput):
    """A Linear with DoReFa ``weight_bits`` weights and ``activation_bits`` inputs."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, weight_bits: int = 1,
                 activation_bits: int = 3):
        linear = nn.Linear(in_features, out_features, bias=bias)
        super().__init__(linear, _dorefa_weights(weight_bits))
        self._setup(activation_bits)


# TensorLayer's names for the fully connected twins
BinaryDense, TernaryDense, DorefaDense = BinaryLinear, TernaryLinear, DorefaLinear
