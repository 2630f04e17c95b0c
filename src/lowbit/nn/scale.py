"""``ChannelScale``: multiply the last dimension by a fixed per-channel factor (what SmoothQuant puts in front of a
Linear layer, :func:`lowbit.transforms.smooth_quant`).

Example:
    >>> import torch
    >>> ChannelScale(torch.tensor([1.0, 0.5]))(torch.tensor([[4.0, 4.0]]))
    tensor([[4., 2.]])
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ChannelScale"]


class ChannelScale(nn.Module):
    """``x · scale`` with ``scale`` broadcast along the last dimension (features of a Linear input)."""

    scale: torch.Tensor

    def __init__(self, scale: torch.Tensor):
        super().__init__()
        if scale.dim() != 1:
            raise ValueError(f"ChannelScale needs a 1-D scale, got shape {tuple(scale.shape)}")
        self.register_buffer("scale", scale.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.to(x.dtype)

    def extra_repr(self) -> str:
        return f"channels={self.scale.numel()}"
