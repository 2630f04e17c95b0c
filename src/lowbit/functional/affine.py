"""Uniform affine quantization: choose qparams, quantize, dequantize, fake-quantize.

The arithmetic is the one ONNX ``QuantizeLinear`` specifies and ONNX Runtime runs on CPU
(docs/math.md, eq. 3): ``q = clamp(round_half_even(x / scale) + zero_point, qmin, qmax)``, computed in float32
with a true division by ``scale`` — never a multiplication by a stored inverse. ``torch.fake_quantize_*``
multiplies by ``1/scale`` instead; the two agree except where that reciprocal moves ``x/scale`` across a
rounding tie (about one element in a million, one step apart; tests/functional/test_affine_vs_torch.py).

Example:
    >>> import torch, lowbit
    >>> from lowbit import functional as F
    >>> spec = lowbit.QuantSpec(bits=8, signed=False, symmetric=False)
    >>> qp = F.choose_qparams(torch.tensor(-1.0), torch.tensor(2.0), spec)
    >>> int(qp.zero_point), round(float(qp.scale) * 255, 6)
    (85, 3.0)
    >>> q = F.quantize(torch.tensor([-1.0, 0.0, 0.5, 2.0]), qp); q
    tensor([  0,  85, 127, 255], dtype=torch.uint8)
    >>> F.dequantize(q, qp)
    tensor([-1.0000,  0.0000,  0.4941,  2.0000])
"""

from __future__ import annotations

import math

import torch

from lowbit.functional import _kernels
from lowbit.functional.ste import masked_ste
from lowbit.spec import Granularity, PerChannel, PerGroup, PerTensor, QParams, QuantSpec, Rounding, ScaleKind

__all__ = ["choose_qparams", "quantize", "dequantize", "fake_quantize", "reduce_minmax", "qparam_shape", "qparam_rows",
           "accumulator_bias"]

# Smallest normal float32: a non-zero range never yields a zero or subnormal step (x / scale stays finite).
_MIN_SCALE = torch.finfo(torch.float32).tiny


def _axis(axis: int, ndim: int, where: str) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"{where}.axis={axis} is out of range for a tensor with {ndim} dimensions")
    return axis % ndim


def qparam_shape(shape: torch.Size | tuple[int, ...], granularity: Granularity) -> tuple[int, ...]:
    """The shape of ``scale`` and ``zero_point`` for a tensor of ``shape``.

    Raises:
        ValueError: axis out of range, or a group size that does not divide a channel.

    Example:
        >>> qparam_shape((768, 384), PerGroup(axis=0, size=128))
        (768, 3)
    """
    if isinstance(granularity, PerTensor):
        return ()
    name = type(granularity).__name__
    if len(shape) == 0:
        raise ValueError(f"{name} needs a tensor with at least one dimension, got a scalar")
    axis = _axis(granularity.axis, len(shape), name)
    channels = shape[axis]
    if isinstance(granularity, PerChannel):
        return (channels,)
    per_channel = math.prod(shape) // channels if channels else 0
    if per_channel % granularity.size:
        raise ValueError(
            f"PerGroup.size={granularity.size} does not divide the {per_channel} elements of each channel "
            f"along axis {axis} of a tensor of shape {tuple(shape)}"
        )
    return (channels, per_channel // granularity.size)


class _Layout:
    """How a qparam tensor lines up with ``x``: ``view(x)`` and ``qparams(t)`` broadcast; ``restore`` undoes."""

    def __init__(self, shape: torch.Size, granularity: Granularity):
        self.shape = tuple(shape)
        self.granularity = granularity
        self.param_shape = qparam_shape(self.shape, granularity)
        if not isinstance(granularity, PerTensor):
            self.axis = _axis(granularity.axis, len(self.shape), type(granularity).__name__)

    def view(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.granularity, PerGroup):
            return x.movedim(self.axis, 0).reshape(*self.param_shape, self.granularity.size)
        return x

    def qparams(self, t: torch.Tensor) -> torch.Tensor:
        if isinstance(self.granularity, PerGroup):
            return t.unsqueeze(-1)
        if isinstance(self.granularity, PerChannel):
            return t.reshape([n if d == self.axis else 1 for d, n in enumerate(self.shape)])
        return t

    def restore(self, y: torch.Tensor) -> torch.Tensor:
        if isinstance(self.granularity, PerGroup):
            moved = (self.shape[self.axis],) + self.shape[: self.axis] + self.shape[self.axis + 1 :]
            return y.reshape(moved).movedim(0, self.axis)
        return y


def elementwise_qparams(shape: torch.Size | tuple[int, ...], qp: QParams) -> tuple[torch.Tensor, torch.Tensor]:
    """``scale`` and ``zero_point`` expanded to one value per element of a tensor of ``shape``.

    Example:
        >>> qp = QParams(torch.tensor([0.5, 0.25]), torch.zeros(2, dtype=torch.int32), QuantSpec(bits=4, granularity=PerChannel(0)))
        >>> elementwise_qparams((2, 3), qp)[0].tolist()
        [[0.5, 0.5, 0.5], [0.25, 0.25, 0.25]]
    """
    layout = _Layout(torch.Size(shape), qp.spec.granularity)
    if tuple(qp.scale.shape) != layout.param_shape:
        raise ValueError(f"QParams of shape {tuple(qp.scale.shape)} do not fit a tensor of shape {tuple(shape)} "
                         f"with {qp.spec.granularity!r} (expected {layout.param_shape})")
    grid = layout.view(torch.empty(shape, dtype=torch.float32))

    def spread(t: torch.Tensor) -> torch.Tensor:
        return layout.restore(layout.qparams(t).expand(grid.shape).contiguous())

    return spread(qp.scale), spread(qp.zero_point)


def _require_finite(x: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(x).all()):
        bad = "NaN" if bool(torch.isnan(x).any()) else "Inf"
        raise ValueError(f"{what} contains {bad}; quantization ranges must come from finite data")


def qparam_rows(x: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    """``x`` as ``[P, n]``: one row per qparam set, in the order of the flattened qparams.

    Example:
        >>> qparam_rows(torch.arange(8.0).reshape(2, 4), PerGroup(axis=0, size=2))
        tensor([[0., 1.],
                [2., 3.],
                [4., 5.],
                [6., 7.]])
    """
    if isinstance(granularity, PerTensor):
        return x.reshape(1, -1)
    layout = _Layout(x.shape, granularity)
    rows = layout.view(x) if isinstance(granularity, PerGroup) else x.movedim(layout.axis, 0)
    return rows.reshape(math.prod(layout.param_shape), -1)


def reduce_minmax(x: torch.Tensor, granularity: Granularity) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduce ``x`` to its ``(lo, hi)`` per granularity, shaped like the qparams (:func:`qparam_shape`).

    Raises:
        ValueError: for an empty tensor, a non-float tensor, or NaN/Inf in ``x``.

    Example:
        >>> x = torch.tensor([[1.0, -2.0], [3.0, 4.0]])
        >>> reduce_minmax(x, PerChannel(axis=0))
        (tensor([-2.,  3.]), tensor([1., 4.]))
    """
    if not x.is_floating_point():
        raise ValueError(f"reduce_minmax needs a floating tensor, got {x.dtype}")
    if x.numel() == 0:
        raise ValueError("reduce_minmax got an empty tensor: there is no range to observe")
    if isinstance(granularity, PerTensor):
        lo, hi = torch.aminmax(x)
    else:
        rows = qparam_rows(x, granularity)
        shape = qparam_shape(x.shape, granularity)
        # two reductions beat torch.aminmax(dim=...) several times over on CPU (torch 2.13)
        lo, hi = rows.amin(dim=-1).reshape(shape), rows.amax(dim=-1).reshape(shape)
    # NaN propagates through min/max and Inf lands in them, so checking the reduction checks the data.
    _require_finite(lo, "the observed tensor")
    _require_finite(hi, "the observed tensor")
    return lo, hi


def choose_qparams(lo: torch.Tensor | float, hi: torch.Tensor | float, spec: QuantSpec) -> QParams:
    """Scale and zero point that map ``[lo, hi]`` onto the grid of ``spec`` (docs/math.md, eqs. 5–8).

    Asymmetric: the range is widened to contain 0 (so real 0 is a code), ``scale = (hi − lo)/(qmax − qmin)``,
    ``zero_point = clamp(round(qmin − lo/scale))``. Symmetric: ``zero_point = 0``,
    ``scale = max(|lo|, |hi|)/qmax`` (unsigned symmetric uses ``max(hi, 0)``). An empty range (all zeros)
    gets ``scale = 1``. ``ScaleKind.POWER_OF_TWO`` rounds ``log2(scale)`` to the nearest integer.

    Args:
        lo, hi: range bounds, scalars or tensors shaped like the qparams.
        spec: the grid.

    Returns:
        :class:`QParams` with float32 scale and int32 zero point.

    Raises:
        ValueError: NaN/Inf bounds, ``lo > hi`` anywhere, or mismatched shapes.

    Example:
        >>> spec = QuantSpec(bits=8, signed=False, symmetric=False)
        >>> qp = choose_qparams(-10.0, 30.0, spec)  # TFLite's ChooseQuantizationParams(-10, 30)
        >>> round(float(qp.scale), 6), int(qp.zero_point)
        (0.156863, 64)
        >>> float(choose_qparams(-1.0, 38.4, QuantSpec(scale_kind=ScaleKind.POWER_OF_TWO)).scale)
        0.25
    """
    lo_t = torch.as_tensor(lo, dtype=torch.float64)
    hi_t = torch.as_tensor(hi, dtype=torch.float64)
    if lo_t.shape != hi_t.shape:
        raise ValueError(f"choose_qparams: lo shape {tuple(lo_t.shape)} differs from hi shape {tuple(hi_t.shape)}")
    _require_finite(lo_t, "choose_qparams lo")
    _require_finite(hi_t, "choose_qparams hi")
    if bool((lo_t > hi_t).any()):
        raise ValueError(f"choose_qparams needs lo <= hi, got lo={lo_t.tolist()} hi={hi_t.tolist()}")
    qmin, qmax = spec.qmin, spec.qmax
    if spec.symmetric:
        amax = torch.maximum(lo_t.abs(), hi_t.abs()) if spec.signed else hi_t.clamp(min=0)
        span = amax / qmax
    else:
        lo_t, hi_t = lo_t.clamp(max=0), hi_t.clamp(min=0)
        span = (hi_t - lo_t) / (qmax - qmin)
    scale = torch.where(span > 0, span, torch.ones_like(span)).to(torch.float32).clamp(min=_MIN_SCALE)
    if spec.scale_kind is ScaleKind.POWER_OF_TWO:
        scale = torch.exp2(torch.round(torch.log2(scale)))
    if spec.symmetric:
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
    else:
        zp = torch.round(qmin - lo_t / scale.to(torch.float64)).clamp(qmin, qmax)
        zero_point = zp.to(torch.int32)
    return QParams(scale, zero_point, spec)


def _check_qparams(x: torch.Tensor, qp: QParams) -> _Layout:
    layout = _Layout(x.shape, qp.spec.granularity)
    if tuple(qp.scale.shape) != layout.param_shape:
        raise ValueError(
            f"QParams of shape {tuple(qp.scale.shape)} do not fit a tensor of shape {tuple(x.shape)} with "
            f"{qp.spec.granularity!r} (expected {layout.param_shape})"
        )
    return layout


def _rounded_codes(
    x: torch.Tensor, qp: QParams, layout: _Layout, generator: torch.Generator | None
) -> torch.Tensor:
    """``round(x / scale) + zero_point`` before clamping, in float (eq. 3 / eq. 4), laid out by ``layout``."""
    if not x.is_floating_point():
        raise ValueError(f"quantize needs a floating tensor, got {x.dtype}")
    _require_finite(x, "the tensor to quantize")
    xv = layout.view(x if x.dtype in (torch.float32, torch.float64) else x.float())
    scaled = xv / layout.qparams(qp.scale).to(xv.dtype)
    if qp.spec.rounding is Rounding.STOCHASTIC:
        noise = torch.rand(scaled.shape, generator=generator, dtype=scaled.dtype, device=scaled.device)
        # floor(v + u) rounds the sum when u is near 1 and biases the result; comparing u with the exact
        # fraction v − floor(v) rounds up with probability exactly that fraction.
        low = torch.floor(scaled)
        rounded = low + (noise < scaled - low).to(scaled.dtype)
    else:
        rounded = torch.round(scaled)
    return rounded + layout.qparams(qp.zero_point).to(rounded.dtype)


def quantize(x: torch.Tensor, qp: QParams, generator: torch.Generator | None = None) -> torch.Tensor:
    """Integer codes of ``x`` (eq. 3), in ``qp.spec.code_dtype`` (int8/uint8 up to 8 bits).

    Args:
        x: float tensor.
        qp: qparams shaped for ``x`` (:func:`qparam_shape`).
        generator: random source for ``Rounding.STOCHASTIC`` (ignored for ``NEAREST``).

    Raises:
        ValueError: NaN/Inf in ``x``, a non-float ``x``, or qparams that do not fit ``x``.

    Example:
        >>> qp = choose_qparams(-1.0, 1.0, QuantSpec(bits=4))
        >>> quantize(torch.tensor([-1.0, 0.07, 0.5, 9.0]), qp)   # 0.5/(1/7) is 3.4999998 in float32
        tensor([-7,  0,  3,  7], dtype=torch.int8)
    """
    layout = _check_qparams(x, qp)
    codes = _rounded_codes(x, qp, layout, generator).clamp(qp.spec.qmin, qp.spec.qmax)
    return layout.restore(codes).to(qp.spec.code_dtype)


def dequantize(q: torch.Tensor, qp: QParams) -> torch.Tensor:
    """Float32 values ``scale · (q − zero_point)`` (eq. 1).

    Example:
        >>> qp = choose_qparams(-1.0, 1.0, QuantSpec(bits=4))
        >>> dequantize(torch.tensor([-7, 0, 7], dtype=torch.int8), qp)
        tensor([-1.,  0.,  1.])
    """
    if q.is_floating_point() or q.is_complex():
        raise ValueError(f"dequantize needs integer codes, got {q.dtype}")
    layout = _check_qparams(q, qp)
    centred = layout.view(q.to(torch.int32)) - layout.qparams(qp.zero_point)
    return layout.restore(centred.to(torch.float32) * layout.qparams(qp.scale))


def _fast_path(x: torch.Tensor, qp: QParams) -> bool:
    # The simulation's hot path: a per-tensor, round-to-nearest activation without autograd, on the CPU.
    return (
        x.dtype == torch.float32 and not x.requires_grad and x.device.type == "cpu" and x.numel() >= 4096
        and isinstance(qp.spec.granularity, PerTensor) and qp.spec.rounding is Rounding.NEAREST
    )


def _fake_quantize_fast(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """One fused pass (numba), bit-identical to the torch path below (tests/functional/test_affine.py)."""
    flat = x.contiguous().reshape(-1)
    out = torch.empty_like(flat)
    finite = _kernels.fake_quantize_per_tensor(flat.numpy(), float(qp.scale), int(qp.zero_point), qp.spec.qmin,
                                               qp.spec.qmax, out.numpy())
    if not finite:
        _require_finite(x, "the tensor to quantize")
    return out.view(x.shape)


def fake_quantize(x: torch.Tensor, qp: QParams, generator: torch.Generator | None = None) -> torch.Tensor:
    """``dequantize(quantize(x))`` in ``x``'s dtype, with a straight-through gradient (eq. 9).

    The gradient is 1 where ``round(x/scale) + zero_point`` lands inside ``[qmin, qmax]`` and 0 where it is
    clipped — the convention of ``torch.fake_quantize_per_tensor_affine``. For float32 ``x`` the values equal
    ``dequantize(quantize(x, qp), qp)`` bit for bit; float16/bfloat16 are computed in float32 and rounded back
    to their dtype once (a half-precision model stays half precision); float64 is computed in float64.

    Example:
        >>> qp = choose_qparams(-1.0, 1.0, QuantSpec(bits=4))
        >>> x = torch.tensor([0.1, 3.0], requires_grad=True)
        >>> y = fake_quantize(x, qp); y.sum().backward()
        >>> y.detach(), x.grad
        (tensor([0.1429, 1.0000]), tensor([1., 0.]))
    """
    layout = _check_qparams(x, qp)
    if _fast_path(x, qp):
        return _fake_quantize_fast(x, qp)
    with torch.no_grad():
        codes = _rounded_codes(x.detach(), qp, layout, generator)
        inside = (codes >= qp.spec.qmin) & (codes <= qp.spec.qmax)
        clamped = codes.clamp(qp.spec.qmin, qp.spec.qmax) - layout.qparams(qp.zero_point).to(codes.dtype)
        values = clamped * layout.qparams(qp.scale).to(codes.dtype)
        y = layout.restore(values).to(x.dtype)
        mask = layout.restore(inside)
    if not x.requires_grad:
        return y
    return masked_ste(x, y, mask)


def accumulator_bias(bias: torch.Tensor, input_scale: float, weight_scale: torch.Tensor,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """A float bias as int32 codes on the accumulator's grid ``s_x · s_w`` (one step per output channel).

    An integer conv/linear adds these codes to its int32 accumulator; the ONNX export and the integer engine use
    this one rule, so both add the same integers. The grid step is computed in float32, as ONNX Runtime does.

    Returns:
        ``(codes int32, step float32)``, both ``[out_channels]``.

    Raises:
        ValueError: a bias that does not fit int32 on that grid.

    Example:
        >>> accumulator_bias(torch.tensor([0.5, -0.25]), 0.1, torch.tensor([0.01, 0.02]))[0].tolist()
        [500, -125]
    """
    step = (torch.tensor(input_scale, dtype=torch.float32) * weight_scale.reshape(-1).to(torch.float32))
    step = step.expand(bias.shape[0]).contiguous()
    codes = torch.round(bias.detach().to(torch.float64) / step.to(torch.float64))
    if codes.abs().max() > 2**31 - 1:
        raise ValueError("the bias does not fit int32 on the accumulator grid s_x * s_w")
    return codes.to(torch.int32), step
