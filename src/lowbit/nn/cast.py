"""``CastModel``: run a model in float16 or bfloat16 while keeping its float32 call signature.

Example:
    >>> import torch
    >>> m = CastModel(torch.nn.Linear(4, 2), torch.bfloat16)
    >>> m.inner.weight.dtype, m(torch.zeros(1, 4)).dtype
    (torch.bfloat16, torch.float32)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["CastModel"]


def _cast(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    if isinstance(value, (tuple, list)):
        return type(value)(_cast(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _cast(v, dtype) for k, v in value.items()}
    return value


class CastModel(nn.Module):
    """Parameters and floating inputs in ``dtype``; floating outputs back to float32."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        if dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"CastModel dtype must be float16 or bfloat16, got {dtype}")
        self.dtype = dtype
        self.inner = model.to(dtype)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.inner(*_cast(args, self.dtype), **_cast(kwargs, self.dtype))
        return _cast(out, torch.float32)
