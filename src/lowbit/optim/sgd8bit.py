"""SGD with an 8-bit momentum buffer (signed dynamic map, block-wise absmax; docs/math.md O2, O4).

Example:
    >>> import torch
    >>> from lowbit.optim import SGD8bit
    >>> w = torch.nn.Parameter(torch.zeros(5000))
    >>> opt = SGD8bit([w], lr=0.1, momentum=0.9)
    >>> for _ in range(100):
    ...     opt.zero_grad()
    ...     loss = (w - 1.0).square().sum()
    ...     loss.backward()
    ...     opt.step()
    >>> round(float(w.mean()), 3), opt.state[w]["momentum_buffer_codes"].dtype
    (1.0, torch.uint8)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numba
import numpy as np
import torch

from lowbit.kernels.optim_state import momentum_8bit
from lowbit.optim.blockwise import BlockwiseOptimizer
from lowbit.optim.rules import momentum_, momentum_scalars

__all__ = ["SGD8bit"]


class SGD8bit(BlockwiseOptimizer):
    """Drop-in ``torch.optim.SGD`` (with momentum) whose momentum buffer is stored in 8 bits.

    With ``momentum=0`` there is no state and the step is plain SGD. Param groups, schedulers, state_dict and
    closures work as in torch.

    Args:
        params: parameters, or dicts defining param groups.
        lr: learning rate (``>= 0``).
        momentum: ``μ`` in ``[0, 1)``.
        dampening: in ``[0, 1]``; the new gradient enters the buffer with weight ``1 − dampening``.
        weight_decay: L2 penalty added to the gradient (``>= 0``).
        nesterov: Nesterov momentum (needs ``momentum > 0`` and ``dampening = 0``, as in torch).
        block_size, min_8bit_size, state_bits, quant_map, backend: as :class:`~lowbit.optim.Adam8bit`.

    Raises:
        ValueError: naming the argument and its value.
    """

    STATES = (("momentum_buffer", True),)

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: float = 1e-3,
                 momentum: float = 0.9, dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False, *,
                 block_size: int = 256, min_8bit_size: int = 4096, state_bits: int = 8,
                 quant_map: str = "dynamic", backend: str = "auto") -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "dampening": dampening,
                                  "weight_decay": weight_decay, "nesterov": nesterov},
                         block_size=block_size, min_8bit_size=min_8bit_size, state_bits=state_bits,
                         quant_map=quant_map, backend=backend)

    def _check_rule_group(self, group: dict[str, Any]) -> None:
        momentum, dampening = group["momentum"], group["dampening"]
        if not (isinstance(momentum, (int, float)) and not isinstance(momentum, bool) and 0.0 <= momentum < 1.0):
            raise self._fail(f"momentum must be in [0, 1), got {momentum!r}")
        if not (isinstance(dampening, (int, float)) and not isinstance(dampening, bool) and 0.0 <= dampening <= 1.0):
            raise self._fail(f"dampening must be in [0, 1], got {dampening!r}")
        self._check_nonnegative(group, "weight_decay")
        if not isinstance(group["nesterov"], bool):
            raise self._fail(f"nesterov must be a bool, got {group['nesterov']!r}")
        if group["nesterov"] and (momentum <= 0 or dampening != 0):
            raise self._fail(f"nesterov=True needs momentum > 0 and dampening = 0, got momentum={momentum!r}, "
                             f"dampening={dampening!r}")

    def _init_state(self, p: torch.Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        if group["momentum"] == 0:
            state["step"] = 0  # plain SGD keeps no buffer
            return
        super()._init_state(p, group, state)

    def _update(self, p: torch.Tensor, group: dict[str, Any], state: dict[str, Any], index: int) -> None:
        if "momentum_buffer" in state or "momentum_buffer_codes" in state:
            super()._update(p, group, state, index)
            return
        if group["momentum"] != 0:
            raise self._fail(f"parameter {index} started with momentum=0 and has no buffer; momentum cannot be "
                             "switched on mid-run")
        grad = p.grad.detach()
        if group["weight_decay"] != 0:
            grad = grad + p.detach() * group["weight_decay"]
        p.detach().sub_(grad * float(group["lr"]))

    def _scalars(self, group: dict[str, Any], step: int) -> dict[str, Any]:
        return momentum_scalars(float(group["lr"]), group["momentum"], group["dampening"], group["weight_decay"],
                                group["nesterov"], step)

    def _rule(self, p: torch.Tensor, g: torch.Tensor, states: list[torch.Tensor], scalars: dict[str, Any]) -> None:
        momentum_(p, g, *states, **scalars)

    def _kernel(self, p, g, packed, scalars, block_size):  # noqa: D102 - see BlockwiseOptimizer
        ((codes, absmax, code),) = packed
        s = scalars
        return momentum_8bit(p, g, codes, absmax, code.numpy, code.table, block_size,
                             np.float32(s["lr"]), np.float32(s["momentum"]), np.float32(s["undamped"]),
                             np.float32(s["l2"]), s["first"], s["nesterov"], numba.get_num_threads())
