"""``ActivationQuantizer``: one quantized tensor edge — observed during calibration, fake-quantized after.

Modes: *calibrating* (observe, pass the float values through), *static* (fixed qparams, after :meth:`freeze`),
*dynamic* (qparams from each batch's own range at run time). Switching modes is a verb the flow calls, never a
side effect of ``forward``.

Example:
    >>> import torch
    >>> from lowbit import QuantSpec
    >>> from lowbit.observers import MinMaxObserver
    >>> spec = QuantSpec(bits=8, signed=False, symmetric=False)
    >>> q = ActivationQuantizer(spec, MinMaxObserver(spec))
    >>> q.calibrating = True
    >>> _ = q(torch.tensor([0.0, 2.0]))
    >>> q.freeze(); q.calibrating = False
    >>> q(torch.tensor([1.0, 5.0]))          # 5.0 saturates at the calibrated 2.0
    tensor([0.9961, 2.0000])
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from lowbit.functional.affine import choose_qparams, fake_quantize, reduce_minmax
from lowbit.observers.base import Observer
from lowbit.spec import PerChannel, QParams, QuantSpec

__all__ = ["ActivationQuantizer"]


class ActivationQuantizer(nn.Module):
    """Quantize the tensor passing through: static (calibrated) or dynamic (per batch).

    Args:
        spec: the activation grid.
        observer: range estimator for static quantization (unused when ``dynamic``).
        dynamic: choose qparams from every batch at run time.
        label: where this edge is (e.g. "output of conv1"), used in error messages.
        per_token: dynamic only: every row along the last dimension (a token's hidden vector) gets its own
            qparams, instead of one per tensor.

    Raises:
        ValueError: static without an observer, or ``per_token`` without ``dynamic``.
    """

    def __init__(self, spec: QuantSpec, observer: Observer | None = None, dynamic: bool = False, label: str = "",
                 per_token: bool = False):
        super().__init__()
        if not dynamic and observer is None:
            raise ValueError("ActivationQuantizer: static quantization needs an observer")
        if per_token and not dynamic:
            raise ValueError("ActivationQuantizer: per_token needs dynamic=True")
        self.per_token = per_token
        self._row_spec = dataclasses.replace(spec, granularity=PerChannel(0))
        self.spec = spec
        self.observer = observer
        self.dynamic = dynamic
        self.label = label
        self.calibrating = False
        self.bypass = False  # set by calibration when no tensor ever reached this edge
        self.register_buffer("scale", torch.empty(0))
        self.register_buffer("zero_point", torch.empty(0, dtype=torch.int32))

    @property
    def frozen(self) -> bool:
        return self.scale.numel() > 0

    def qparams(self) -> QParams:
        """The frozen qparams (static mode)."""
        if not self.frozen:
            raise RuntimeError("ActivationQuantizer has no qparams yet: calibrate, then freeze()")
        return QParams(self.scale, self.zero_point, self.spec)

    def freeze(self) -> None:
        """Fix the qparams from the observer's statistics."""
        if self.observer is None:
            raise RuntimeError("a dynamic ActivationQuantizer has nothing to freeze")
        qp = self.observer.calculate_qparams()
        self.scale, self.zero_point = qp.scale, qp.zero_point

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bypass or not isinstance(x, torch.Tensor):  # e.g. an int from shape arithmetic
            return x
        if self.dynamic and self.per_token:
            rows = x.reshape(-1, x.shape[-1])
            qp = choose_qparams(*reduce_minmax(rows.detach(), self._row_spec.granularity), self._row_spec)
            return fake_quantize(rows, qp).reshape(x.shape)
        if self.dynamic:
            qp = choose_qparams(*reduce_minmax(x.detach(), self.spec.granularity), self.spec)
            return fake_quantize(x, qp)
        if self.calibrating:
            assert self.observer is not None
            try:
                self.observer.update(x)
            except ValueError as err:
                raise ValueError(f"activation quantizer at {self.label or 'an edge'}: {err}") from err
            return x
        return fake_quantize(x, self.qparams())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # qparams start empty and take their shape at freeze(); a checkpoint brings them already frozen
        for name in ("scale", "zero_point"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        mode = "dynamic" if self.dynamic else ("calibrating" if self.calibrating else "static")
        mode += ", per token" if self.per_token else ""
        return f"bits={self.spec.bits}, {mode}"
