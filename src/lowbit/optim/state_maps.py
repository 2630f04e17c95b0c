"""The code values 8-bit optimizer state is stored against, cached per map, sign and device.

``"dynamic"`` is the dynamic tree map (signed for first moments, unsigned for second moments, docs/math.md eq. 13);
``"linear"`` the evenly spaced map, kept as the ablation that shows why the dynamic one is needed.

Example:
    >>> m = state_map("dynamic", signed=False)
    >>> len(m.values), float(m.values[0]), m.table.shape
    (256, 0.0, (65536,))
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from lowbit.functional.codebook import create_dynamic_map, create_linear_map
from lowbit.kernels.optim_state import nearest_code_table

__all__ = ["QUANT_MAPS", "StateMap", "state_map"]

QUANT_MAPS = ("dynamic", "linear")


@dataclass(frozen=True, eq=False)
class StateMap:
    """One code: ``values`` (sorted float32, CPU) and the kernels' encoder ``table`` (uint32, 65536 entries)."""

    values: torch.Tensor
    table: np.ndarray

    def on(self, device: torch.device) -> torch.Tensor:
        """The code values on ``device`` (a copy made once per device)."""
        return _values_on(self, torch.device(device))

    @property
    def numpy(self) -> np.ndarray:
        """The code values as a float32 numpy array sharing memory with :attr:`values`."""
        return self.values.numpy()


@functools.cache
def state_map(kind: str, signed: bool) -> StateMap:
    """The code of map ``kind`` (``"dynamic"`` or ``"linear"``), signed or unsigned, built once per process.

    Raises:
        ValueError: an unknown ``kind``.
    """
    if kind == "dynamic":
        values = create_dynamic_map(signed=signed)
    elif kind == "linear":
        values = create_linear_map(signed=signed)
    else:
        raise ValueError(f"quant_map must be one of {QUANT_MAPS}, got {kind!r}")
    values = values.contiguous()
    return StateMap(values, nearest_code_table(values.numpy()))


@functools.cache
def _values_on(code: StateMap, device: torch.device) -> torch.Tensor:
    return code.values.to(device)
