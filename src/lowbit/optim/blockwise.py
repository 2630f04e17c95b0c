"""The machinery shared by the 8-bit optimizers: state layout, the two update paths, checks, state_dict.

Per parameter, each state tensor ``name`` (``exp_avg``, ``exp_avg_sq``, ``momentum_buffer``) is stored as

- ``name + "_codes"``: uint8, shaped like the parameter, indices into the state's code (signed map for first
  moments and momentum, unsigned for second moments), and
- ``name + "_absmax"``: float32, one scale per block of ``block_size`` elements (the last block may be short),

or, for a parameter with fewer than ``min_8bit_size`` elements or in a group with ``state_bits=32``, as a plain
float32 tensor ``name``. ``step`` is an int; 8-bit state also records the ``block_size`` and ``quant_map`` its codes
were written with, so that changing either later is an error rather than a silent misreading. A state_dict therefore holds only tensors, ints, floats, strings and
bools: ``torch.save`` writes no custom class and ``torch.load(..., weights_only=True)`` reads it back.

A step decodes, updates and re-encodes each block (docs/math.md O4). On CPU with float32 parameters this is one
fused numba kernel (:mod:`lowbit.kernels.optim_state`); elsewhere the rule of :mod:`lowbit.optim.rules` runs on
the decoded state with :func:`~lowbit.functional.codebook.dequantize_blockwise` and
:func:`~lowbit.functional.codebook.quantize_blockwise`. Both paths give the same bits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch

from lowbit.functional.codebook import dequantize_blockwise, quantize_blockwise
from lowbit.optim.state_maps import QUANT_MAPS, StateMap, state_map

__all__ = ["BlockwiseOptimizer", "BACKENDS"]

BACKENDS = ("auto", "numba", "torch")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class BlockwiseOptimizer(torch.optim.Optimizer):
    """Base of :class:`~lowbit.optim.Adam8bit` and its siblings; subclasses name their states and rules.

    Subclasses set ``STATES`` (``(name, signed)`` pairs), and implement ``_check_rule_group(group)`` (raise
    ValueError naming a bad hyper-parameter), ``_scalars(group, step)`` (the rule's scalars as floats),
    ``_rule(p, g, states, scalars)`` (the torch rule, in place on float32 tensors) and
    ``_kernel(p, g, packed, scalars, block_size)`` (the fused numba call on numpy views; returns the number of
    non-finite blocks). ``packed`` is a list of ``(codes, absmax, StateMap)`` in ``STATES`` order.
    """

    STATES: ClassVar[tuple[tuple[str, bool], ...]] = ()

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], defaults: dict[str, Any], *,
                 block_size: int, min_8bit_size: int, state_bits: int, quant_map: str, backend: str) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"{type(self).__name__}: backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        defaults = {**defaults, "block_size": block_size, "min_8bit_size": min_8bit_size, "state_bits": state_bits,
                    "quant_map": quant_map}
        self._check_group(defaults)
        super().__init__(params, defaults)

    # ---- checks -------------------------------------------------------------------------------------------------
    def _fail(self, message: str) -> ValueError:
        return ValueError(f"{type(self).__name__}: {message}")

    def _check_group(self, group: dict[str, Any]) -> None:
        lr = group["lr"]
        lr = float(lr) if isinstance(lr, torch.Tensor) and lr.numel() == 1 else lr
        if not (_is_number(lr) and lr >= 0):
            raise self._fail(f"lr must be a finite number >= 0, got {group['lr']!r}")
        if not (_is_int(group["block_size"]) and group["block_size"] >= 1):
            raise self._fail(f"block_size must be a positive int (256 or 2048 are usual), got {group['block_size']!r}")
        if not (_is_int(group["min_8bit_size"]) and group["min_8bit_size"] >= 0):
            raise self._fail(f"min_8bit_size must be an int >= 0, got {group['min_8bit_size']!r}")
        if group["state_bits"] not in (8, 32) or isinstance(group["state_bits"], bool):
            raise self._fail(f"state_bits must be 8 or 32, got {group['state_bits']!r}")
        if group["quant_map"] not in QUANT_MAPS:
            raise self._fail(f"quant_map must be one of {QUANT_MAPS}, got {group['quant_map']!r}")
        self._check_rule_group(group)

    def _check_rule_group(self, group: dict[str, Any]) -> None:
        raise NotImplementedError

    def _check_betas(self, betas: Any) -> None:
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise self._fail(f"betas must be a pair (beta1, beta2), got {betas!r}")
        for name, beta in zip(("betas[0]", "betas[1]"), betas, strict=True):
            if not (_is_number(beta) and 0.0 <= beta < 1.0):
                raise self._fail(f"{name} must be in [0, 1), got {beta!r}")

    def _check_nonnegative(self, group: dict[str, Any], *names: str) -> None:
        for name in names:
            if not (_is_number(group[name]) and group[name] >= 0):
                raise self._fail(f"{name} must be a finite number >= 0, got {group[name]!r}")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group after checking the values it will hold (a group may set any hyper-parameter,
        ``state_bits=32`` to keep its state in float32, e.g. for embeddings).

        Raises:
            ValueError: naming the hyper-parameter and its value.
        """
        self._check_group({**self.defaults, **param_group})
        super().add_param_group(param_group)

    # ---- the step -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:  # type: ignore[override]
        """Update every parameter that has a gradient.

        Args:
            closure: re-evaluates the model and returns the loss; it runs with gradients enabled, before the update.

        Returns:
            The closure's loss, or None without a closure.

        Raises:
            RuntimeError: for a sparse gradient.
            ValueError: a group's hyper-parameters edited to invalid values, a state that does not fit its
                parameter (e.g. ``block_size`` changed after the first step), or a NaN/Inf reaching the 8-bit state
                (8-bit codes cannot hold it; the error names the parameter, and its state is left non-finite).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        index = 0
        for group in self.param_groups:
            # Learning-rate schedulers edit groups in place, so check what this step will really use.
            self._check_group(group)
            for p in group["params"]:
                index += 1
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                state = self.state[p]
                if not state:
                    self._init_state(p, group, state)
                state["step"] += 1
                self._update(p, group, state, index - 1)
        return loss

    def _is_8bit(self, p: torch.Tensor, group: dict[str, Any]) -> bool:
        return group["state_bits"] == 8 and p.numel() >= group["min_8bit_size"]

    def _init_state(self, p: torch.Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        state["step"] = 0
        blocks = -(-p.numel() // group["block_size"])
        if self._is_8bit(p, group):
            # What the codes mean, recorded with them: a block size or map changed later is refused, not misread.
            state["block_size"], state["quant_map"] = group["block_size"], group["quant_map"]
        for name, _ in self.STATES:
            if self._is_8bit(p, group):
                # Codes 0 with absmax 0 decode to zeros whatever code 0 means.
                state[name + "_codes"] = torch.zeros(p.shape, dtype=torch.uint8, device=p.device)
                state[name + "_absmax"] = torch.zeros(blocks, dtype=torch.float32, device=p.device)
            else:
                state[name] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)

    def _update(self, p: torch.Tensor, group: dict[str, Any], state: dict[str, Any], index: int) -> None:
        scalars = self._scalars(group, state["step"])
        packed = self.STATES and self.STATES[0][0] + "_codes" in state
        if packed:
            self._check_packed(p, group, state, index)
        grad = p.grad
        if packed and self._fast(p, grad):
            maps = [state_map(group["quant_map"], signed) for _, signed in self.STATES]
            arrays = [(state[name + "_codes"].view(-1).numpy(), state[name + "_absmax"].numpy(), code)
                      for (name, _), code in zip(self.STATES, maps, strict=True)]
            bad = self._kernel(p.detach().view(-1).numpy(), grad.detach().contiguous().view(-1).numpy(), arrays,
                               scalars, group["block_size"])
            if bad:
                raise self._non_finite(index, state["step"])
            return
        work = p.detach() if p.dtype == torch.float32 else p.detach().float()
        g32 = grad.detach().float()
        if packed:
            maps = [state_map(group["quant_map"], signed).on(p.device) for _, signed in self.STATES]
            states = [dequantize_blockwise(state[name + "_codes"], state[name + "_absmax"], code, group["block_size"])
                      for (name, _), code in zip(self.STATES, maps, strict=True)]
        else:
            states = [state[name] for name, _ in self.STATES]
        self._rule(work, g32, states, scalars)
        if work is not p:
            p.copy_(work)
        if packed:
            for (name, _), values, code in zip(self.STATES, states, maps, strict=True):
                if not bool(torch.isfinite(values).all()):
                    state[name + "_absmax"].fill_(math.nan)
                    raise self._non_finite(index, state["step"])
                codes, absmax = quantize_blockwise(values, code, group["block_size"])
                state[name + "_codes"].copy_(codes)
                state[name + "_absmax"].copy_(absmax)

    def _fast(self, p: torch.Tensor, grad: torch.Tensor) -> bool:
        eligible = (p.device.type == "cpu" and p.dtype == torch.float32 and grad.dtype == torch.float32
                    and p.is_contiguous())
        if self.backend == "numba" and not eligible:
            raise self._fail("backend='numba' needs contiguous float32 parameters and gradients on the CPU, got "
                             f"{p.dtype} on {p.device} (use backend='auto' to fall back to torch)")
        return eligible and self.backend != "torch"

    def _check_packed(self, p: torch.Tensor, group: dict[str, Any], state: dict[str, Any], index: int) -> None:
        for key in ("block_size", "quant_map"):
            if state.get(key) != group[key]:
                raise self._fail(f"parameter {index}: its 8-bit state was written with {key}={state.get(key)!r}, "
                                 f"the group now says {key}={group[key]!r}; {key} cannot change after the first step")
        blocks = -(-p.numel() // group["block_size"])
        for name, _ in self.STATES:
            codes, absmax = state[name + "_codes"], state[name + "_absmax"]
            if codes.shape != p.shape or codes.dtype != torch.uint8:
                raise self._fail(f"parameter {index}: {name}_codes must be uint8 of shape {tuple(p.shape)}, got "
                                 f"{codes.dtype} of shape {tuple(codes.shape)}")
            if absmax.shape != (blocks,) or absmax.dtype != torch.float32:
                raise self._fail(f"parameter {index}: {name}_absmax must be float32 of shape ({blocks},) for "
                                 f"block_size={group['block_size']}, got {absmax.dtype} of shape "
                                 f"{tuple(absmax.shape)} (was block_size changed after the first step?)")

    def _non_finite(self, index: int, step: int) -> ValueError:
        return self._fail(f"NaN or Inf reached the 8-bit state of parameter {index} at step {step}: the gradient or "
                          "the update is not finite, and 8-bit codes cannot hold it (the state is left NaN)")

    # ---- what subclasses provide --------------------------------------------------------------------------------
    def _scalars(self, group: dict[str, Any], step: int) -> dict[str, Any]:
        raise NotImplementedError

    def _rule(self, p: torch.Tensor, g: torch.Tensor, states: list[torch.Tensor], scalars: dict[str, Any]) -> None:
        raise NotImplementedError

    def _kernel(self, p: Any, g: Any, packed: list[tuple[Any, Any, StateMap]], scalars: dict[str, Any],
                block_size: int) -> int:
        raise NotImplementedError

    # ---- state ----------------------------------------------------------------------------------------------------
    def state_bytes(self) -> int:
        """Bytes held by the optimizer state tensors (codes, scales, float32 states); ``step`` counters excluded.

        Example:
            >>> from lowbit.optim import Adam8bit
            >>> opt = Adam8bit([torch.nn.Parameter(torch.zeros(8192))])
            >>> opt.param_groups[0]["params"][0].grad = torch.ones(8192)
            >>> opt.step(); opt.state_bytes()      # 2 × (8192 codes + 32 absmax · 4 bytes)
            16640
        """
        return sum(v.numel() * v.element_size() for s in self.state.values() for v in s.values()
                   if isinstance(v, torch.Tensor))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state_dict from :meth:`state_dict`; resuming then gives bit-identical steps.

        torch's loader casts every floating state tensor to its parameter's dtype, and mangles strings; the codes,
        scales and float32 states are restored with their own dtypes instead (a bf16 model must not round its
        float32 scales), and the recorded ``quant_map`` as the string it was.
        """
        super().load_state_dict(state_dict)
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        for saved_id, p in zip(saved_ids, params, strict=True):
            for key, value in state_dict["state"].get(saved_id, {}).items():
                if isinstance(value, torch.Tensor):
                    self.state[p][key] = value.detach().to(device=p.device, copy=True)
                else:  # torch's loader turns a string into a generator of its characters
                    self.state[p][key] = value
