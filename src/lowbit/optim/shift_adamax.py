"""Shift-based AdaMax (Courbariaux, Hubara et al. 2016, Algorithm 4; docs/math.md B5).

AdaMax (Kingma & Ba 2015, §7.1) with its two multiplies by real factors turned into binary shifts, where
``ap2(v) = sign(v)·2^round(log2|v|)`` (:mod:`lowbit.functional.shift`). At step ``t``, for a gradient ``g``:

    g   ← g + λ·θ                                  (optional L2 weight decay, as torch.optim.Adamax)
    m   ← β1·m + (1 − β1)·g                        (first moment, as AdaMax)
    u   ← max(β2·u, |g| + ε)                       (infinity norm, as torch.optim.Adamax)
    θ   ← θ − ap2(α / (1 − β1^t)) · (m / ap2(u))   (eq. B5.7)

The step size ``α/(1 − β1^t)`` is one power of two per tensor (a shift), and dividing by ``ap2(u)`` is a shift per
element; this is the rule of the paper's ``(α ≪≫ (1 − β1^t)) · (m ≪≫ u^−1)`` as its authors' code applies it.
``ε`` sits inside the max, as in ``torch.optim.Adamax``, so ``u ≥ ε > 0`` and ``m/ap2(u)`` is finite. Each ``ap2``
changes its factor by at most ``√2``, so every element of the update is within a factor ``2`` of
``torch.optim.Adamax``'s for the same ``m`` and ``u`` (eq. B5.8), and equal to it when ``α/(1 − β1^t)`` and ``u`` are
powers of two.

With BNN latent weights: this optimizer does not clip. Clip after each step, where the binary layers are known::

    opt.step()
    with torch.no_grad():
        for w in latent_binary_weights:
            w.clamp_(-1.0, 1.0)        # BNN: keep the real-valued weights in [−1, 1]

and give those weights their own param group if they need their own learning rate.

Example:
    >>> import torch
    >>> torch.manual_seed(0) and None
    >>> w = torch.zeros(3, requires_grad=True)
    >>> opt = ShiftAdamax([w], lr=2**-4)
    >>> target = torch.tensor([0.5, -1.0, 2.0])
    >>> for _ in range(200):
    ...     opt.zero_grad()
    ...     loss = (w - target).square().sum()
    ...     loss.backward()
    ...     opt.step()
    >>> bool(loss < 1e-2)
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from lowbit.functional.shift import ap2

__all__ = ["ShiftAdamax"]


def _ap2_scalar(value: float) -> float:
    """``ap2`` of one Python float, through the tensor rule so both use one definition (exact in float64)."""
    return float(ap2(torch.tensor(value, dtype=torch.float64)))


def _check_hyperparameters(lr: Any, betas: Any, eps: Any, weight_decay: Any) -> None:
    def is_number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if not (is_number(lr) and lr > 0):
        raise ValueError(f"ShiftAdamax: lr must be a finite number > 0, got {lr!r}")
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"ShiftAdamax: betas must be a pair (beta1, beta2), got {betas!r}")
    for name, beta in zip(("betas[0]", "betas[1]"), betas, strict=True):
        if not (is_number(beta) and 0.0 <= beta < 1.0):
            raise ValueError(f"ShiftAdamax: {name} must be in [0, 1), got {beta!r}")
    if not (is_number(eps) and eps >= 0):
        raise ValueError(f"ShiftAdamax: eps must be a finite number >= 0, got {eps!r}")
    if not (is_number(weight_decay) and weight_decay >= 0):
        raise ValueError(f"ShiftAdamax: weight_decay must be a finite number >= 0, got {weight_decay!r}")


class ShiftAdamax(torch.optim.Optimizer):
    """AdaMax whose learning-rate and bias-correction multiply, and whose division by ``u``, are shifts (eq. B5.7).

    A drop-in ``torch.optim.Optimizer``: param groups (each may set its own ``lr``, ``betas``, ``eps``,
    ``weight_decay``), ``zero_grad``, ``state_dict``/``load_state_dict`` and ``step(closure)``. Per parameter the
    state is ``step`` (an int), ``exp_avg`` (``m``) and ``exp_inf`` (``u``), in the parameter's dtype; the names
    are ``torch.optim.Adamax``'s.

    Args:
        params: parameters to optimize, or dicts defining param groups.
        lr: ``α``, the learning rate (``> 0``). The default ``2**-9 ≈ 0.00195`` is the power of two nearest to
            ``torch.optim.Adamax``'s ``0.002``, so the two start from the same step size.
        betas: ``(β1, β2)``, decay rates of the first moment and of the infinity norm, each in ``[0, 1)``.
        eps: added to ``|g|`` inside the max (``>= 0``); with ``0`` an element whose gradients have all been zero
            gets no update instead of ``0/0``.
        weight_decay: ``λ`` of the L2 penalty added to the gradient (``>= 0``).

    Raises:
        ValueError: naming the argument and its value, for ``lr <= 0``, ``betas`` outside ``[0, 1)``, negative
            ``eps`` or ``weight_decay``, or any of them not a finite number.

    Example:
        >>> p = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
        >>> opt = ShiftAdamax([p], lr=0.01)      # step 1: ap2(0.01 / 0.1) = 2^-3, m/ap2(u) = sign(g)·0.1/ap2(1)
        >>> p.grad = torch.tensor([1.0, -1.0])
        >>> opt.step()
        >>> p.detach()
        tensor([ 0.9875, -0.9875])
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: float = 2**-9,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        _check_hyperparameters(lr, betas, eps, weight_decay)
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group, checking its own hyper-parameters (a group's ``lr`` can be wrong too).

        Raises:
            ValueError: as the constructor, for the group's values.
        """
        merged = {**self.defaults, **param_group}  # the values the group will hold, checked before it is added
        _check_hyperparameters(merged["lr"], merged["betas"], merged["eps"], merged["weight_decay"])
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:  # type: ignore[override]
        """One update of every parameter with a gradient (eq. B5.7).

        Args:
            closure: re-evaluates the model and returns the loss; it runs with gradients enabled, before the update.

        Returns:
            The closure's loss, or None without a closure.

        Raises:
            RuntimeError: for a sparse gradient (AdaMax's max has no sparse form here).
            ValueError: if a group's hyper-parameters were edited to invalid values.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            # Learning-rate schedulers edit groups in place, so check what this step will really use.
            _check_hyperparameters(group["lr"], group["betas"], group["eps"], group["weight_decay"])
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("ShiftAdamax does not support sparse gradients")
                self._update(p, group["lr"], beta1, beta2, group["eps"], group["weight_decay"])
        return loss

    def _update(self, p: torch.Tensor, lr: float, beta1: float, beta2: float, eps: float,
                weight_decay: float) -> None:
        grad = p.grad
        if weight_decay != 0:
            grad = grad.add(p, alpha=weight_decay)
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_inf"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        exp_avg, exp_inf = state["exp_avg"], state["exp_inf"]
        exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
        torch.maximum(exp_inf.mul_(beta2), grad.abs().add_(eps), out=exp_inf)
        # One shift for the whole tensor: α and the bias correction 1/(1 − β1^t) merged, then rounded once.
        step_size = _ap2_scalar(lr / (1.0 - beta1 ** state["step"]))
        shift = ap2(exp_inf)
        # m/ap2(u) is a shift per element. u = 0 only when eps = 0 and every gradient so far was 0 (then m = 0
        # too, up to underflow): no update rather than 0/0.
        update = torch.where(shift > 0, exp_avg / shift, torch.zeros_like(exp_avg))
        p.add_(update, alpha=-step_size)
