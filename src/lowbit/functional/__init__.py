"""Pure quantization math on tensors: no state, no ``nn.Module`` (also importable as ``lowbit.F``).

Submodules: :mod:`~lowbit.functional.affine` (uniform quantization), :mod:`~lowbit.functional.ste`
(straight-through estimators), :mod:`~lowbit.functional.formats` (fp16/bf16/fp8),
:mod:`~lowbit.functional.fixedpoint` (gemmlowp/TFLite integer requantization),
:mod:`~lowbit.functional.codebook` (dynamic tree map, block-wise codes), and the range rules observers use:
:mod:`~lowbit.functional.histogram` (growing histograms) and :mod:`~lowbit.functional.calibration`
(entropy, percentile, ACIQ, MSE).

Example:
    >>> import torch, lowbit
    >>> qp = lowbit.F.choose_qparams(-1.0, 1.0, lowbit.QuantSpec(bits=8))
    >>> lowbit.F.quantize(torch.tensor([0.5]), qp)
    tensor([64], dtype=torch.int8)
"""

from lowbit.functional import calibration, codebook, fixedpoint, formats, histogram, ste
from lowbit.functional.affine import (
    choose_qparams,
    dequantize,
    fake_quantize,
    qparam_shape,
    quantize,
    reduce_minmax,
)
from lowbit.functional.codebook import create_dynamic_map, dequantize_blockwise, quantize_blockwise
from lowbit.functional.formats import Bf16Rounding, FloatFormat, cast, round_trip, to_bf16, to_fp8, to_fp16

__all__ = [
    "choose_qparams",
    "quantize",
    "dequantize",
    "fake_quantize",
    "reduce_minmax",
    "qparam_shape",
    "FloatFormat",
    "Bf16Rounding",
    "cast",
    "round_trip",
    "to_fp16",
    "to_bf16",
    "to_fp8",
    "create_dynamic_map",
    "quantize_blockwise",
    "dequantize_blockwise",
    "ste",
    "formats",
    "fixedpoint",
    "codebook",
    "calibration",
    "histogram",
]
