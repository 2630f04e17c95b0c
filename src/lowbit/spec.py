"""What a quantizer is: the grid (:class:`QuantSpec`), who shares a step (granularity) and the numbers (:class:`QParams`).

One equation everywhere (docs/math.md, eq. 1): ``x ≈ scale · (q − zero_point)``. ``scale`` is the float step,
never its inverse; ``zero_point`` is an integer on the grid ``[qmin, qmax]``.

Everything here is validated when it is built, so a bad configuration fails where it is written, naming the
field and the value, not at the first forward pass.

Example:
    >>> import lowbit
    >>> spec = lowbit.QuantSpec(bits=4, granularity=lowbit.PerChannel(axis=0))
    >>> spec.qmin, spec.qmax
    (-8, 7)
    >>> lowbit.QuantSpec(bits=8, narrow_range=True).qmin
    -127
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch

__all__ = [
    "ScaleKind",
    "Rounding",
    "PerTensor",
    "PerChannel",
    "PerGroup",
    "Granularity",
    "QuantSpec",
    "QParams",
]


class ScaleKind(enum.Enum):
    """How a scale may be chosen.

    ``FLOAT``: any positive float. ``POWER_OF_TWO``: ``scale = 2^k`` (dynamic fixed point, "fractional length"
    ``−k``), so rescaling becomes a shift; ``k = round(log2(float scale))`` (docs/math.md, eq. 5).
    """

    FLOAT = "float"
    POWER_OF_TWO = "power_of_two"


class Rounding(enum.Enum):
    """How ``x / scale`` becomes an integer.

    ``NEAREST`` rounds half to even, as ``torch.round`` and ONNX ``QuantizeLinear`` do (docs/math.md, eq. 3).
    ``STOCHASTIC`` is ``floor(x / scale + u)``, ``u ~ U[0, 1)``: unbiased in expectation (eq. 4).
    """

    NEAREST = "nearest"
    STOCHASTIC = "stochastic"


def _check_int(name: str, value: object, low: int, high: int | None = None) -> None:
    # bool is an int subclass; True as a bit width is a bug, not a 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"in {low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bounds}, got {value!r}")


@dataclass(frozen=True)
class PerTensor:
    """One scale and zero point for the whole tensor (per-layer quantization).

    Example:
        >>> PerTensor()
        PerTensor()
    """


@dataclass(frozen=True)
class PerChannel:
    """One scale and zero point per index of ``axis``; ``axis`` is the dimension that keeps its own qparams.

    For a ``Linear`` weight ``[out, in]`` or a ``Conv2d`` weight ``[out, in, kh, kw]``, ``PerChannel(axis=0)``
    gives every output channel its own step. Negative axes count from the end.

    Example:
        >>> PerChannel(axis=0)
        PerChannel(axis=0)
        >>> PerChannel(axis=1.5)
        Traceback (most recent call last):
        ...
        ValueError: PerChannel.axis must be an int, got 1.5
    """

    axis: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.axis, int) or isinstance(self.axis, bool):
            raise ValueError(f"PerChannel.axis must be an int, got {self.axis!r}")


@dataclass(frozen=True)
class PerGroup:
    """Per-channel along ``axis``, and within each channel one step per ``size`` consecutive elements.

    ``axis`` keeps its own qparams, as in :class:`PerChannel`; the remaining elements of each channel (in memory
    order, i.e. the other dimensions flattened) are cut into groups of ``size``. For a ``Linear`` weight
    ``[out, in]``, ``PerGroup(axis=0, size=128)`` gives qparams of shape ``[out, in // 128]`` — the layout of
    group-wise weight quantization. The flattened length must be a multiple of ``size``.

    Example:
        >>> PerGroup(axis=0, size=128)
        PerGroup(axis=0, size=128)
        >>> PerGroup(axis=0, size=0)
        Traceback (most recent call last):
        ...
        ValueError: PerGroup.size must be >= 1, got 0
    """

    axis: int = 0
    size: int = 128

    def __post_init__(self) -> None:
        if not isinstance(self.axis, int) or isinstance(self.axis, bool):
            raise ValueError(f"PerGroup.axis must be an int, got {self.axis!r}")
        _check_int("PerGroup.size", self.size, 1)


# Any of the three granularities: the type of QuantSpec.granularity.
Granularity = PerTensor | PerChannel | PerGroup


@dataclass(frozen=True)
class QuantSpec:
    """The integer grid and the rules for choosing its step.

    Args:
        bits: width of a code, 1..16.
        signed: grid ``[−2^(b−1), 2^(b−1)−1]`` if True, else ``[0, 2^b−1]`` (eq. 2).
        symmetric: zero point fixed at 0 and ``scale = max(|lo|, |hi|) / qmax``; otherwise the range
            ``[min(lo, 0), max(hi, 0)]`` is spread over the whole grid (eqs. 6–8).
        narrow_range: drop the lowest code (``[−127, 127]`` for signed 8 bits), so a signed grid is symmetric.
        granularity: :class:`PerTensor`, :class:`PerChannel` or :class:`PerGroup`.
        scale_kind: :class:`ScaleKind`.
        rounding: :class:`Rounding`.

    Raises:
        ValueError: naming the field and the value, for any field out of its domain.

    Example:
        >>> QuantSpec(bits=8, signed=False).qmax
        255
        >>> QuantSpec(bits=17)
        Traceback (most recent call last):
        ...
        ValueError: QuantSpec.bits must be in 1..16, got 17
    """

    bits: int = 8
    signed: bool = True
    symmetric: bool = True
    narrow_range: bool = False
    granularity: Granularity = field(default_factory=PerTensor)
    scale_kind: ScaleKind = ScaleKind.FLOAT
    rounding: Rounding = Rounding.NEAREST

    def __post_init__(self) -> None:
        _check_int("QuantSpec.bits", self.bits, 1, 16)
        for name in ("signed", "symmetric", "narrow_range"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"QuantSpec.{name} must be a bool, got {getattr(self, name)!r}")
        if not isinstance(self.granularity, (PerTensor, PerChannel, PerGroup)):
            raise ValueError(
                f"QuantSpec.granularity must be PerTensor(), PerChannel(axis) or PerGroup(axis, size), "
                f"got {self.granularity!r}"
            )
        if not isinstance(self.scale_kind, ScaleKind):
            raise ValueError(f"QuantSpec.scale_kind must be a ScaleKind, got {self.scale_kind!r}")
        if not isinstance(self.rounding, Rounding):
            raise ValueError(f"QuantSpec.rounding must be a Rounding, got {self.rounding!r}")
        if self.qmax <= self.qmin:
            raise ValueError(
                f"QuantSpec.narrow_range=True leaves a single code at bits={self.bits}; use bits >= 2"
            )
        if self.symmetric and self.narrow_range and not self.signed:
            raise ValueError(
                "QuantSpec.narrow_range=True with symmetric=True, signed=False would drop code 0, "
                "the symmetric zero point; use narrow_range=False or symmetric=False"
            )
        if self.symmetric and self.qmax <= 0:
            raise ValueError(
                f"QuantSpec.symmetric=True needs a positive qmax, but bits={self.bits}, signed={self.signed} "
                f"gives qmax={self.qmax}; use bits >= 2 (1-bit codes live in lowbit.functional.binary)"
            )

    @property
    def qmin(self) -> int:
        """Smallest code (eq. 2)."""
        low = -(1 << (self.bits - 1)) if self.signed else 0
        return low + 1 if self.narrow_range else low

    @property
    def qmax(self) -> int:
        """Largest code (eq. 2)."""
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def code_dtype(self) -> torch.dtype:
        """The smallest torch integer dtype that holds every code of the grid."""
        if self.bits <= 8:
            return torch.int8 if self.signed else torch.uint8
        if self.bits <= 15 or (self.bits == 16 and self.signed):
            return torch.int16
        return torch.int32


@dataclass(frozen=True, eq=False)
class QParams:
    """A scale and zero point for a spec: ``x ≈ scale · (q − zero_point)``.

    Shapes follow the granularity: ``()`` per tensor, ``[C]`` per channel, ``[C, G]`` per group.
    ``scale`` is stored as float32 and must be positive; ``zero_point`` is stored as int32 and must be on the grid.
    Python numbers and other float/integer dtypes are converted (a float zero point is an error).

    Example:
        >>> qp = QParams(0.5, 3, QuantSpec(signed=False))
        >>> qp.scale, qp.zero_point
        (tensor(0.5000), tensor(3, dtype=torch.int32))
        >>> QParams(torch.tensor(-1.0), torch.tensor(0, dtype=torch.int32), QuantSpec())
        Traceback (most recent call last):
        ...
        ValueError: QParams.scale must be finite and > 0, got min -1.0
    """

    scale: torch.Tensor
    zero_point: torch.Tensor
    spec: QuantSpec

    def __post_init__(self) -> None:
        if not isinstance(self.spec, QuantSpec):
            raise ValueError(f"QParams.spec must be a QuantSpec, got {self.spec!r}")
        scale, zero_point = self.scale, self.zero_point
        if isinstance(scale, (int, float)) and not isinstance(scale, bool):
            scale = torch.tensor(float(scale))
        if not (isinstance(scale, torch.Tensor) and scale.is_floating_point()):
            raise ValueError(f"QParams.scale must be a float tensor or number, got {_describe(self.scale)}")
        if isinstance(zero_point, int) and not isinstance(zero_point, bool):
            zero_point = torch.tensor(zero_point)
        if not isinstance(zero_point, torch.Tensor) or zero_point.is_floating_point() or zero_point.is_complex() \
                or zero_point.dtype == torch.bool:
            raise ValueError(f"QParams.zero_point must be an integer tensor or int, got {_describe(self.zero_point)}")
        # frozen dataclass: normalise the stored dtypes once, here
        object.__setattr__(self, "scale", scale.to(torch.float32))
        object.__setattr__(self, "zero_point", zero_point.to(torch.int32))
        if self.scale.shape != self.zero_point.shape:
            raise ValueError(
                f"QParams.scale shape {tuple(self.scale.shape)} differs from "
                f"zero_point shape {tuple(self.zero_point.shape)}"
            )
        if self.scale.numel() and not bool((torch.isfinite(self.scale) & (self.scale > 0)).all()):
            raise ValueError(f"QParams.scale must be finite and > 0, got min {self.scale.min().item()}")
        zp = zero_point
        if zp.numel() and (int(zp.min()) < self.spec.qmin or int(zp.max()) > self.spec.qmax):
            raise ValueError(
                f"QParams.zero_point must lie in [{self.spec.qmin}, {self.spec.qmax}], "
                f"got range [{int(zp.min())}, {int(zp.max())}]"
            )


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor"
    return repr(value)
