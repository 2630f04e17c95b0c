"""Weights held at fixed values, element by element, through training: the machinery behind
:class:`~lowbit.compress.prune.Pruner` (pruned weights held at 0) and :class:`~lowbit.compress.inq.INQ` (quantized
weights held at their powers of two).

Masking the gradient is not enough: momentum and weight decay move a weight whose gradient is 0, and optimizer
state accumulated before holding would carry on. So a hold registers, per weight, a gradient hook that zeros the
gradient at held positions and, per optimizer, a step post-hook that writes the held values back and zeros the
optimizer's per-element state (SGD ``momentum_buffer``, Adam ``exp_avg``/``exp_avg_sq``/``max_exp_avg_sq``) there.
With zero gradient and zero state at a held position, the next update there is zero for SGD and Adam(W), and the
write-back undoes weight decay; the held values stay bit for bit.

Example:
    >>> import torch
    >>> from lowbit.compress import Pruner
    >>> model = torch.nn.Linear(4, 2)
    >>> isinstance(Pruner(model, {"": torch.ones(2, 4, dtype=torch.bool)}), WeightHold)
    True
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = ["WeightHold"]


class WeightHold:
    """Base of a hold: subclasses say which weights (:meth:`_names`), where (:meth:`_held_mask`) and what
    (:meth:`_write_held`); this class keeps it.

    Weights are looked up by module name (:meth:`_weight`) at every use, so after a weight's values are replaced
    the hold acts on the new ones; replacing a weight's ``nn.Parameter`` *object* needs ``detach()`` then
    ``attach(new_optimizer)``, since the gradient hooks live on the parameter tensors.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._optimizers: list[torch.optim.Optimizer] = []
        self._grad_handles: list[RemovableHandle] = []
        self._step_handles: list[RemovableHandle] = []

    def _weight(self, name: str) -> torch.Tensor:
        return self.model.get_submodule(name).weight

    def _names(self) -> list[str]:
        """Names of the modules whose ``.weight`` is held."""
        raise NotImplementedError

    def _held_mask(self, name: str) -> torch.Tensor:
        """Bool mask of the held positions of that module's weight."""
        raise NotImplementedError

    def _write_held(self) -> None:
        """Write the held values into the weights (called under ``torch.no_grad``)."""
        raise NotImplementedError

    def _mask_grad(self, name: str, grad: torch.Tensor) -> torch.Tensor:
        # masked_fill, not grad * mask: a NaN or inf gradient at a held position must not leak through as NaN.
        return grad.masked_fill(self._held_mask(name), 0)

    def _zero_state(self, optimizer: torch.optim.Optimizer) -> None:
        # Every per-element state tensor has the parameter's shape; scalars such as Adam's `step` do not and are
        # left alone.
        for name in self._names():
            held = self._held_mask(name)
            for value in optimizer.state.get(self._weight(name), {}).values():
                if isinstance(value, torch.Tensor) and value.shape == held.shape:
                    value.masked_fill_(held, 0)

    @torch.no_grad()
    def apply(self) -> None:
        """Write the held values into the weights, and zero gradients and attached optimizers' state there."""
        self._write_held()
        for name in self._names():
            grad = self._weight(name).grad
            if grad is not None:
                grad.masked_fill_(self._held_mask(name), 0)
        for optimizer in self._optimizers:
            self._zero_state(optimizer)

    def attach(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Hold the weights during training: mask gradients, and clean up after every ``optimizer.step()``.

        Registers a gradient hook on each weight (once, however many optimizers are attached) and, for
        ``optimizer``, a step post-hook (see the module docstring); then calls :meth:`apply`, which also clears
        state the optimizer built up before. With those, held weights are bit-identical after any number of steps
        of SGD (momentum, Nesterov, weight decay), Adam or AdamW. Without an optimizer only gradients are masked:
        enough for plain SGD without weight decay, not more.

        Args:
            optimizer: the optimizer that trains the model, or None. Attaching the same one twice is a no-op.
        """
        if not self._grad_handles:
            for name in self._names():
                weight = self._weight(name)
                if weight.requires_grad:
                    self._grad_handles.append(weight.register_hook(partial(self._mask_grad, name)))
        if optimizer is not None and all(optimizer is not o for o in self._optimizers):
            self._optimizers.append(optimizer)
            self._step_handles.append(optimizer.register_step_post_hook(self._after_step))
        self.apply()

    def _after_step(self, optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        with torch.no_grad():
            self._write_held()
            self._zero_state(optimizer)

    def detach(self) -> None:
        """Remove every hook :meth:`attach` registered; the hold's state stays and :meth:`apply` still works."""
        for handle in self._grad_handles + self._step_handles:
            handle.remove()
        self._grad_handles.clear()
        self._step_handles.clear()
        self._optimizers.clear()
