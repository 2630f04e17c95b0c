"""Adam and AdamW with 8-bit block-wise state (Dettmers et al., "8-bit Optimizers via Block-wise Quantization", 2022).

Adam keeps two float32 numbers per parameter; here the first moment is stored against the signed dynamic map and
the second against the unsigned one, one uint8 code each plus one float32 ``absmax`` per block of 256: 2.03 bytes
per parameter instead of 8 (docs/math.md O4). The update rule is torch.optim.Adam's / AdamW's (eq. O1).

Example:
    >>> import torch
    >>> from lowbit.optim import Adam8bit
    >>> torch.manual_seed(0) and None
    >>> model = torch.nn.Linear(100, 100)         # weight: 10000 elements, 8-bit state; bias: 100, float32
    >>> opt = Adam8bit(model.parameters(), lr=1e-2)
    >>> x = torch.randn(64, 100)
    >>> for _ in range(50):
    ...     opt.zero_grad()
    ...     loss = (model(x) - x).square().mean()
    ...     loss.backward()
    ...     opt.step()
    >>> bool(loss < 0.05), sorted(opt.state[model.weight])
    (True, ['block_size', 'exp_avg_absmax', 'exp_avg_codes', 'exp_avg_sq_absmax', 'exp_avg_sq_codes', 'quant_map', 'step'])
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numba
import numpy as np
import torch

from lowbit.kernels.optim_state import adam_8bit
from lowbit.optim.blockwise import BlockwiseOptimizer
from lowbit.optim.rules import adam_, adam_scalars

__all__ = ["Adam8bit", "AdamW8bit"]

_f32 = np.float32


class Adam8bit(BlockwiseOptimizer):
    """Drop-in ``torch.optim.Adam`` whose two moments are stored in 8 bits (eq. O1, O4).

    Param groups (each may set any argument below except ``backend``), ``zero_grad``, learning-rate schedulers,
    ``state_dict``/``load_state_dict`` (resuming gives bit-identical steps) and ``step(closure)`` work as in torch.
    With DDP each rank keeps its own state, as with torch's optimizers.

    Args:
        params: parameters, or dicts defining param groups.
        lr: learning rate (``>= 0``).
        betas: ``(β1, β2)`` in ``[0, 1)``.
        eps: added to ``√v̂`` (``>= 0``).
        weight_decay: L2 penalty added to the gradient (``>= 0``); :class:`AdamW8bit` decays the weights instead.
        block_size: elements per ``absmax`` block (256; 2048 halves the scale overhead at some precision).
        min_8bit_size: parameters with fewer elements keep float32 state (biases, norms: tiny, and sensitive).
        state_bits: ``8``, or ``32`` to keep a group's state in float32 (e.g. embeddings).
        quant_map: ``"dynamic"`` (the dynamic tree map) or ``"linear"`` (evenly spaced, the ablation).
        backend: ``"auto"`` (fused numba kernel for contiguous float32 CPU parameters, torch elsewhere),
            ``"numba"`` (that kernel, or an error) or ``"torch"`` (decode, torch rule, encode: any device).

    Raises:
        ValueError: naming the argument and its value.
    """

    STATES = (("exp_avg", True), ("exp_avg_sq", False))
    _DECOUPLED = False

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0, *,
                 block_size: int = 256, min_8bit_size: int = 4096, state_bits: int = 8,
                 quant_map: str = "dynamic", backend: str = "auto") -> None:
        super().__init__(params, {"lr": lr, "betas": tuple(betas) if isinstance(betas, list) else betas, "eps": eps,
                                  "weight_decay": weight_decay},
                         block_size=block_size, min_8bit_size=min_8bit_size, state_bits=state_bits,
                         quant_map=quant_map, backend=backend)

    def _check_rule_group(self, group: dict[str, Any]) -> None:
        self._check_betas(group["betas"])
        self._check_nonnegative(group, "eps", "weight_decay")

    def _scalars(self, group: dict[str, Any], step: int) -> dict[str, Any]:
        return adam_scalars(float(group["lr"]), group["betas"], group["eps"], group["weight_decay"],
                            self._DECOUPLED, step)

    def _rule(self, p: torch.Tensor, g: torch.Tensor, states: list[torch.Tensor], scalars: dict[str, Any]) -> None:
        adam_(p, g, *states, **scalars)

    def _kernel(self, p, g, packed, scalars, block_size):  # noqa: D102 - see BlockwiseOptimizer
        (m_codes, m_absmax, m_map), (v_codes, v_absmax, v_map) = packed
        s = scalars
        return adam_8bit(p, g, m_codes, m_absmax, v_codes, v_absmax, m_map.numpy, m_map.table, v_map.numpy,
                         v_map.table, block_size, _f32(s["beta1"]), _f32(s["rest1"]),
                         _f32(s["beta2"]), _f32(s["rest2"]), _f32(s["step_size"]), _f32(s["inv_bias_root"]),
                         _f32(s["eps"]), _f32(s["l2"]), _f32(s["decay"]), numba.get_num_threads())


class AdamW8bit(Adam8bit):
    """Drop-in ``torch.optim.AdamW`` with 8-bit moments: weight decay multiplies the weights by ``1 − lr·λ``.

    Arguments as :class:`Adam8bit`; ``weight_decay`` defaults to ``1e-2`` as in torch.

    Example:
        >>> p = torch.nn.Parameter(torch.ones(4))
        >>> opt = AdamW8bit([p], lr=0.1, weight_decay=0.5)
        >>> p.grad = torch.zeros(4)
        >>> opt.step(); p.detach()                  # zero gradient: only the decay 1 − 0.1·0.5 acts
        tensor([0.9500, 0.9500, 0.9500, 0.9500])
    """

    _DECOUPLED = True

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 **options: Any) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, **options)
