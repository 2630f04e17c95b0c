"""lowbit: make neural networks smaller and faster by quantization and compression, and show what it cost.

The vocabulary is one equation, ``x ≈ scale · (q − zero_point)`` (docs/math.md, eq. 1).

Example:
    >>> import torch, lowbit
    >>> spec = lowbit.QuantSpec(bits=4, granularity=lowbit.PerChannel(axis=0))
    >>> w = torch.tensor([[0.5, -1.0], [0.02, 0.01]])
    >>> qp = lowbit.F.choose_qparams(*lowbit.F.reduce_minmax(w, spec.granularity), spec)
    >>> lowbit.F.quantize(w, qp)
    tensor([[ 3, -7],
            [ 7,  4]], dtype=torch.int8)
"""

from lowbit import analysis, functional, observers, qat
from lowbit.flows import quantize
from lowbit.recipes import Mode, ObserverKind, Override, Recipe, Transforms, load_recipe, preset
from lowbit.serialize import load_compressed, load_quantized, save_quantized
from lowbit import functional as F
from lowbit.spec import (
    Granularity,
    PerChannel,
    PerGroup,
    PerTensor,
    QParams,
    QuantSpec,
    Rounding,
    ScaleKind,
)

__version__ = "0.1.0"

__all__ = [
    "F",
    "analysis",
    "functional",
    "observers",
    "qat",
    "Granularity",
    "PerChannel",
    "PerGroup",
    "PerTensor",
    "QParams",
    "QuantSpec",
    "Rounding",
    "ScaleKind",
    "quantize",
    "Recipe",
    "Transforms",
    "Override",
    "Mode",
    "ObserverKind",
    "load_recipe",
    "preset",
    "save_quantized",
    "load_quantized",
    "load_compressed",
]
