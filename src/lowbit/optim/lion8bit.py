"""Lion with an 8-bit first moment (Chen et al. 2023; docs/math.md O3, O4).

Lion keeps one state, the momentum ``m``, and steps by the sign of an interpolation of ``m`` and the gradient, so
every coordinate moves by exactly ``lr``; a learning rate 3–10× below AdamW's is usual.

Example:
    >>> import torch
    >>> from lowbit.optim import Lion8bit
    >>> p = torch.nn.Parameter(torch.zeros(3))
    >>> opt = Lion8bit([p], lr=0.01)
    >>> p.grad = torch.tensor([1.0, -2.0, 0.0])
    >>> opt.step(); p.detach()
    tensor([-0.0100,  0.0100,  0.0000])
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numba
import numpy as np
import torch

from lowbit.kernels.optim_state import lion_8bit
from lowbit.optim.blockwise import BlockwiseOptimizer
from lowbit.optim.rules import lion_, lion_scalars

__all__ = ["Lion8bit"]


class Lion8bit(BlockwiseOptimizer):
    """Lion whose momentum is stored in 8 bits (signed dynamic map). torch has no Lion: the float32 rule is
    :func:`lowbit.optim.rules.lion_`, used for small tensors and ``state_bits=32`` groups.

    Args:
        params: parameters, or dicts defining param groups.
        lr: learning rate (``>= 0``).
        betas: ``(β1, β2)`` in ``[0, 1)``: β1 mixes the update direction, β2 the momentum.
        weight_decay: decoupled decay, ``p ← (1 − lr·λ)·p`` (``>= 0``).
        block_size, min_8bit_size, state_bits, quant_map, backend: as :class:`~lowbit.optim.Adam8bit`.

    Raises:
        ValueError: naming the argument and its value.
    """

    STATES = (("exp_avg", True),)

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: float = 1e-4,
                 betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0, *, block_size: int = 256,
                 min_8bit_size: int = 4096, state_bits: int = 8, quant_map: str = "dynamic",
                 backend: str = "auto") -> None:
        super().__init__(params, {"lr": lr, "betas": tuple(betas) if isinstance(betas, list) else betas,
                                  "weight_decay": weight_decay},
                         block_size=block_size, min_8bit_size=min_8bit_size, state_bits=state_bits,
                         quant_map=quant_map, backend=backend)

    def _check_rule_group(self, group: dict[str, Any]) -> None:
        self._check_betas(group["betas"])
        self._check_nonnegative(group, "weight_decay")

    def _scalars(self, group: dict[str, Any], step: int) -> dict[str, Any]:
        return lion_scalars(float(group["lr"]), group["betas"], group["weight_decay"])

    def _rule(self, p: torch.Tensor, g: torch.Tensor, states: list[torch.Tensor], scalars: dict[str, Any]) -> None:
        lion_(p, g, *states, **scalars)

    def _kernel(self, p, g, packed, scalars, block_size):  # noqa: D102 - see BlockwiseOptimizer
        ((codes, absmax, code),) = packed
        s = {k: np.float32(v) for k, v in scalars.items()}
        return lion_8bit(p, g, codes, absmax, code.numpy, code.table, block_size, s["lr"],
                         s["beta1"], s["rest1"], s["beta2"], s["rest2"], s["decay"], numba.get_num_threads())
