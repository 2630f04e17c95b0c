"""Pure quantization math on tensors: no state, no ``nn.Module`` (also importable as ``lowbit.F``).

Submodules: :mod:`~lowbit.functional.affine` (uniform quantization), :mod:`~lowbit.functional.ste`
(straight-through estimators), :mod:`~lowbit.functional.formats` (fp16/bf16/fp8),
:mod:`~lowbit.functional.fixedpoint` (gemmlowp/TFLite integer requantization) and
:mod:`~lowbit.functional.codebook` (dynamic tree map, block-wise codes).

Example:
    >>> import torch, lowbit
    >>> qp = lowbit.F.choose_qparams(-1.0, 1.0, lowbit.QuantSpec(bits=8))
    >>> lowbit.F.quantize(torch.tensor([0.5]), qp)
    tensor([64], dtype=torch.int8)
"""

from lowbit.functional import codebook, fixedpoint, formats, ste
from lowbit.functional.affine import (
    choose_qparams,
    dequantize,
    fake_quantize,
    qparam_shape,
    quantize,
    reduce_minmax,
)

__all__ = [
    "choose_qparams",
    "quantize",
    "dequantize",
    "fake_quantize",
    "reduce_minmax",
    "qparam_shape",
    "ste",
    "formats",
    "fixedpoint",
    "codebook",
]
