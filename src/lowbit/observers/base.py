"""The observer contract: ``update(x)`` accumulates bounded statistics, ``calculate_qparams()`` returns QParams.

Observers are ``nn.Module`` s so their statistics live in buffers (saved with a model's ``state_dict``) and so
they can sit in a model's forward pass, where ``forward(x)`` observes ``x`` and returns it unchanged. They hold
state only; every rule that turns statistics into a range is a pure function in ``lowbit.functional``.

Example:
    >>> import torch, lowbit
    >>> from lowbit.observers import MinMaxObserver
    >>> obs = MinMaxObserver(lowbit.QuantSpec(bits=8, signed=False, symmetric=False))
    >>> obs.calculate_qparams()
    Traceback (most recent call last):
    ...
    RuntimeError: MinMaxObserver has observed no data yet: call update(x) with calibration batches first
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.functional.affine import choose_qparams, qparam_rows, qparam_shape, reduce_minmax
from lowbit.spec import PerChannel, PerGroup, PerTensor, QParams, QuantSpec

__all__ = ["Observer"]

_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


class Observer(nn.Module):
    """Base class. Subclasses implement :meth:`_observe` and :meth:`_range`.

    Args:
        spec: the grid the qparams are for; its granularity decides what is reduced.

    Raises:
        ValueError: if ``spec`` is not a QuantSpec or its granularity is not supported by the subclass.
    """

    supports: tuple[type, ...] = (PerTensor, PerChannel, PerGroup)

    def __init__(self, spec: QuantSpec):
        super().__init__()
        if not isinstance(spec, QuantSpec):
            raise ValueError(f"{type(self).__name__}.spec must be a QuantSpec, got {spec!r}")
        if not isinstance(spec.granularity, self.supports):
            names = ", ".join(t.__name__ for t in self.supports)
            raise ValueError(
                f"{type(self).__name__} supports granularity {names}; got spec.granularity={spec.granularity!r}"
            )
        self.spec = spec
        self.register_buffer("batches", torch.zeros((), dtype=torch.int64))
        # float64 whatever the data: a float16 first batch must not cap the range of later float32 batches
        self.register_buffer("min_val", torch.empty(0, dtype=torch.float64))
        self.register_buffer("max_val", torch.empty(0, dtype=torch.float64))
        self._param_shape: tuple[int, ...] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Observe ``x`` and return it unchanged."""
        self.update(x)
        return x

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Accumulate statistics of one batch.

        Raises:
            ValueError: NaN/Inf, an empty or non-float tensor, or a batch whose qparam shape differs from the
                first batch's (e.g. a different channel count).
        """
        x = x.detach()
        lo, hi = reduce_minmax(x, self.spec.granularity)  # validates the data: finite, float, non-empty
        lo, hi = lo.to(torch.float64), hi.to(torch.float64)
        if float(torch.maximum(lo.abs(), hi.abs()).max()) > _FLOAT32_MAX:
            raise ValueError(f"{type(self).__name__} got values beyond the float32 range; scales are float32")
        shape = qparam_shape(x.shape, self.spec.granularity)
        if self._param_shape is None:
            self._param_shape = shape
            self.min_val, self.max_val = lo.clone(), hi.clone()
        elif shape != self._param_shape:
            raise ValueError(
                f"{type(self).__name__} first saw qparams of shape {self._param_shape}, now a batch of shape "
                f"{tuple(x.shape)} gives {shape}"
            )
        else:
            torch.minimum(self.min_val, lo, out=self.min_val)
            torch.maximum(self.max_val, hi, out=self.max_val)
        self._observe(x, lo, hi)
        self.batches += 1

    @torch.no_grad()
    def calculate_qparams(self) -> QParams:
        """QParams for ``self.spec`` from everything observed so far.

        Raises:
            RuntimeError: if no batch has been observed.
        """
        if int(self.batches) == 0:
            raise RuntimeError(
                f"{type(self).__name__} has observed no data yet: call update(x) with calibration batches first"
            )
        lo, hi = self._range()
        return choose_qparams(lo, hi, self.spec)

    def _observe(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Accumulate ``x`` (whose per-granularity range is ``lo, hi``)."""

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(lo, hi)`` to quantize, shaped like the qparams."""
        raise NotImplementedError

    def _inside_observed(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip ranges never reach beyond what was observed (and never invert)."""
        lo = torch.maximum(lo.to(torch.float64), self.min_val)
        hi = torch.minimum(hi.to(torch.float64), self.max_val)
        return lo, torch.maximum(hi, lo)

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as ``[channels, n]``: one row per qparam set (per-tensor is a single row)."""
        return qparam_rows(x, self.spec.granularity)

    def get_extra_state(self) -> dict[str, str]:
        """The spec travels with the statistics, so they are never read under another grid."""
        return {"spec": repr(self.spec)}

    def set_extra_state(self, state: dict[str, str]) -> None:
        if state.get("spec") != repr(self.spec):
            raise ValueError(
                f"{type(self).__name__} state was saved for spec {state.get('spec')}, not for {self.spec!r}"
            )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # Buffers start empty and take their shape from the first batch; take it from the checkpoint instead.
        for name, _ in list(self.named_buffers(recurse=False)):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if int(self.batches):
            self._param_shape = tuple(self.min_val.shape)
            self._check_loaded()

    def _check_loaded(self) -> None:
        """Subclasses check that loaded statistics fit their configuration."""

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}, batches={int(self.batches)}"
