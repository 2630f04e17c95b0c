"""Integer-only execution: a frozen quantized model lowered to a Program of integer ops that runs bit-exactly.

Example:
    >>> import torch, lowbit
    >>> from lowbit.engine import Requant, lower
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).eval()
    >>> q = lowbit.quantize(model, "w8a8", calibration=[torch.randn(32, 4)], progress=False)
    >>> lower(q, torch.randn(1, 4), mode=Requant.FIXED_POINT)(torch.randn(3, 4)).shape
    torch.Size([3, 2])
"""

from lowbit.engine.kernels import Requant
from lowbit.engine.lower import lower
from lowbit.engine.program import Program

__all__ = ["lower", "Program", "Requant"]
