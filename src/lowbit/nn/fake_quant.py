"""Trainable fake quantizers for quantization-aware training: STE (observed ranges), LSQ, PACT, DoReFa.

Weight quantizers map a float weight to its fake-quantized value in ``forward`` and to integer codes with
qparams in ``export``; activation quantizers sit on tensor edges, are initialised from data
(``observe`` → ``finish``) and ``export`` their grid as qparams of the edge's asymmetric spec with an integer zero
point — so :func:`lowbit.qat.convert` produces the same values with integer arithmetic (docs/math.md Q1–Q4).
Switching anything (bits, enabled, initialising) is a verb the flow calls, never a side effect of ``forward``.

Example:
    >>> import torch
    >>> from lowbit import QuantSpec
    >>> q = LSQActivationQuantizer(QuantSpec(bits=4, signed=False, symmetric=False))
    >>> q.observe(torch.tensor([0.0, 1.0, 3.0])); q.finish()
    >>> float(q.step.detach()), bool(q.signed)             # 2·mean|x|/sqrt(15)
    (0.6885303854942322, False)
"""

from __future__ import annotations

import dataclasses
import enum

import torch
from torch import nn

from lowbit.functional.affine import choose_qparams, fake_quantize, qparam_shape, quantize, reduce_minmax
from lowbit.functional.calibration import mse_range_rows
from lowbit.functional.dorefa import dorefa_activation, dorefa_weight, dorefa_weight_codes
from lowbit.functional.lsq import lsq_fake_quantize, lsq_grad_scale, lsq_initial_step
from lowbit.functional.pact import pact_fake_quantize, pact_grid
from lowbit.observers.minmax import MovingAverageMinMaxObserver
from lowbit.spec import PerChannel, PerTensor, QParams, QuantSpec

__all__ = ["QuantizerKind", "STEWeightQuantizer", "LSQWeightQuantizer", "DoReFaWeightQuantizer",
           "STEActivationQuantizer", "LSQActivationQuantizer", "PACTActivationQuantizer",
           "DoReFaActivationQuantizer", "WeightFakeQuantizer", "ActivationFakeQuantizer"]

# values kept per edge while initialising PACT's clip (a sample is enough for the MSE search)
_PACT_SAMPLE = 1 << 18
_PACT_PER_BATCH = 1 << 15  # so that later calibration batches count too
_MIN_STEP = 1e-8


class QuantizerKind(enum.Enum):
    """The QAT quantizer families (CATALOG §5) and the binary/ternary rules (§6, :mod:`lowbit.nn.binary_quant`)."""

    STE = "ste"
    LSQ = "lsq"
    PACT = "pact"
    DOREFA = "dorefa"
    BNN = "bnn"  # sign weights, sign activations
    XNOR = "xnor"  # α·sign weights, sign activations with the input scale map K
    BWN = "bwn"  # α·sign weights, activations as the recipe says (none in its default recipe)
    TWN = "twn"
    TTQ = "ttq"
    FIVE_LEVEL = "five-level"
    SIGN = "sign"  # the activation rule of BNN and XNOR-Net


def _positive(t: torch.Tensor) -> torch.Tensor:
    """A learned step or clip kept positive (an optimizer step could push it through zero)."""
    return t.clamp(min=_MIN_STEP)


def _bits_of(spec: QuantSpec, bits: int) -> QuantSpec:
    return dataclasses.replace(spec, bits=bits)


class WeightFakeQuantizer(nn.Module):
    """Base of weight quantizers. ``scale_invariant``: the quantized weight ignores the weight's scale (DoReFa),
    so BatchNorm is applied after quantization instead of folded in before."""

    scale_invariant = False

    def __init__(self, spec: QuantSpec):
        super().__init__()
        self.spec, self.target_bits, self.enabled = spec, spec.bits, True
        self.recipe_spec = spec  # what the recipe planned for this layer; conversion says where it differs

    def set_bits(self, bits: int) -> None:
        self.spec = _bits_of(self.spec, bits)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.fake_quantize(w) if self.enabled else w

    def fake_quantize(self, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def export(self, w: torch.Tensor) -> tuple[torch.Tensor, QParams]:
        """Integer codes of ``w`` and their qparams: ``dequantize`` gives what ``forward`` gives."""
        raise NotImplementedError

    def scale(self, w: torch.Tensor) -> torch.Tensor:
        """The step of ``w``'s grid now (``[C]`` per channel or a scalar), as :meth:`export` would give it."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"bits={self.spec.bits}" + ("" if self.enabled else ", disabled")


class STEWeightQuantizer(WeightFakeQuantizer):
    """The weight's own min/max every step on the recipe's grid; straight-through gradient (eq. 9)."""

    def _qparams(self, w: torch.Tensor) -> QParams:
        return choose_qparams(*reduce_minmax(w.detach(), self.spec.granularity), self.spec)

    def fake_quantize(self, w: torch.Tensor) -> torch.Tensor:
        return fake_quantize(w, self._qparams(w))

    def export(self, w: torch.Tensor) -> tuple[torch.Tensor, QParams]:
        qp = self._qparams(w)
        return quantize(w.detach(), qp), qp

    def scale(self, w: torch.Tensor) -> torch.Tensor:
        return self._qparams(w).scale


class LSQWeightQuantizer(WeightFakeQuantizer):
    """LSQ on a symmetric per-tensor or per-channel grid: a learned step per qparam set (eq. Q2).

    Raises:
        ValueError: an asymmetric or per-group spec.
    """

    def __init__(self, spec: QuantSpec, weight: torch.Tensor):
        super().__init__(spec)
        if not spec.symmetric or not isinstance(spec.granularity, (PerTensor, PerChannel)):
            raise ValueError(f"LSQ weights need a symmetric per-tensor or per-channel spec, got {spec!r}")
        shape = qparam_shape(weight.shape, spec.granularity)
        self._axis = None if isinstance(spec.granularity, PerTensor) else spec.granularity.axis % weight.ndim
        dims = None if self._axis is None else tuple(d for d in range(weight.ndim) if d != self._axis)
        self.step = nn.Parameter(lsq_initial_step(weight, spec.qmax, dims).reshape(shape))

    def _broadcast(self, step: torch.Tensor, ndim: int) -> torch.Tensor:
        if self._axis is None:
            return step
        return step.reshape([-1 if d == self._axis else 1 for d in range(ndim)])

    def fake_quantize(self, w: torch.Tensor) -> torch.Tensor:
        grad_scale = lsq_grad_scale(w.numel() // max(self.step.numel(), 1), self.spec.qmax)
        return lsq_fake_quantize(w, self._broadcast(_positive(self.step), w.ndim), self.spec.qmin, self.spec.qmax,
                                 grad_scale)

    @torch.no_grad()
    def export(self, w: torch.Tensor) -> tuple[torch.Tensor, QParams]:
        step = _positive(self.step.detach()).to(torch.float32)
        codes = torch.round(w.detach() / self._broadcast(step, w.ndim)).clamp(self.spec.qmin, self.spec.qmax)
        return codes.to(self.spec.code_dtype), QParams(step.clone(), torch.zeros_like(step, dtype=torch.int32),
                                                       self.spec)

    def scale(self, w: torch.Tensor) -> torch.Tensor:
        return _positive(self.step.detach()).to(torch.float32)

    @torch.no_grad()
    def set_bits(self, bits: int) -> None:
        old = self.spec.qmax
        super().set_bits(bits)
        self.step.mul_(old / self.spec.qmax)  # keep the clip range step·qmax


class DoReFaWeightQuantizer(WeightFakeQuantizer):
    """DoReFa's tanh-normalised k-bit weights (``k = 1``: ``sign(w)·E|w|``), eq. Q4.

    Exported codes sit on a signed ``k+1``-bit narrow grid (only odd codes are used: DoReFa's levels are odd
    multiples of ``1/(2^k − 1)``, which an integer zero point cannot express on ``k`` bits); ``k = 1`` on the
    2-bit grid ``{−1, 0, 1}``.
    """

    scale_invariant = True

    def __init__(self, spec: QuantSpec):
        bits = spec.bits
        super().__init__(QuantSpec(bits=max(bits + 1, 2), narrow_range=True))
        self.bits, self.target_bits, self.recipe_spec = bits, bits, spec

    def set_bits(self, bits: int) -> None:
        if not 1 <= bits <= 15:
            raise ValueError(f"DoReFa weights take 1..15 bits (stored on bits + 1), got {bits}")
        self.bits = bits
        self.spec = QuantSpec(bits=max(bits + 1, 2), narrow_range=True)

    def fake_quantize(self, w: torch.Tensor) -> torch.Tensor:
        return dorefa_weight(w, self.bits)

    def export(self, w: torch.Tensor) -> tuple[torch.Tensor, QParams]:
        codes, step = dorefa_weight_codes(w, self.bits)
        return codes.to(self.spec.code_dtype), QParams(step, torch.zeros((), dtype=torch.int32), self.spec)

    def scale(self, w: torch.Tensor) -> torch.Tensor:
        return dorefa_weight_codes(w, self.bits)[1]

    def extra_repr(self) -> str:
        return f"bits={self.bits}" + ("" if self.enabled else ", disabled")


class ActivationFakeQuantizer(nn.Module):
    """Base of activation quantizers: initialised from data, then trained.

    Args:
        spec: the edge's grid after conversion; must be asymmetric per tensor for the learned quantizers, whose
            signed or unsigned grid it then holds exactly with an integer zero point.
        label: where the edge is, for error messages.
    """

    def __init__(self, spec: QuantSpec, label: str = ""):
        super().__init__()
        if not isinstance(spec.granularity, PerTensor):
            raise ValueError(f"QAT activation quantizers are per tensor, got {spec.granularity!r}")
        self.spec, self.target_bits, self.label, self.enabled = spec, spec.bits, label, True
        self.initializing = False
        self.register_buffer("signed", torch.tensor(False))
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            return x
        if self.initializing:
            self.observe(x)
            return x
        if not self.enabled:
            return x
        if not bool(self.initialized):
            raise RuntimeError(f"QAT quantizer at {self.label or 'an edge'} was never initialised: "
                               "lowbit.qat.prepare(..., calibration=batches) initialises from data")
        return self.fake_quantize(x)

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Take in one initialisation batch; an edge that ever carries a negative value gets a signed grid."""
        self.signed |= bool(x.min() < 0)
        self._observe(x)

    def _observe(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def start(self) -> None:
        """Forget what an earlier initialisation observed (a second :func:`lowbit.qat.initialize` starts afresh)."""
        self.signed.fill_(False)
        self.initialized.fill_(False)
        self.enabled = True

    def finish(self) -> None:
        """End initialisation: set the learned parameters from what was observed."""
        self.initialized.fill_(True)

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def set_bits(self, bits: int) -> None:
        self.spec = _bits_of(self.spec, bits)

    def export(self) -> QParams:
        """This quantizer's grid as qparams of ``self.spec``."""
        raise NotImplementedError

    def current_step(self) -> float | None:
        """The grid step in use now (what :meth:`export` would give), or None while off or uninitialised."""
        if self.initializing or not self.enabled or not bool(self.initialized):
            return None
        return float(self.export().scale)

    def penalty(self) -> torch.Tensor | None:
        """A regularisation term to add to the loss (PACT's L2 on α), or None."""
        return None

    def _grid(self) -> tuple[int, int]:
        if bool(self.signed):
            half = 1 << (self.spec.bits - 1)
            return -half, half - 1
        return 0, (1 << self.spec.bits) - 1

    def _as_spec(self, step: torch.Tensor) -> QParams:
        """A symmetric grid ``codes · step`` (codes from :meth:`_grid`) as qparams of the asymmetric edge spec."""
        qmin, qmax = self._grid()
        if self.spec.symmetric or self.spec.qmax - self.spec.qmin != qmax - qmin:
            raise ValueError(f"activation at {self.label}: QAT needs an asymmetric {self.spec.bits}-bit edge spec "
                             f"without narrow range, got {self.spec!r}")
        zero_point = torch.tensor(self.spec.qmin - qmin, dtype=torch.int32)
        return QParams(step.detach().to(torch.float32).reshape(()).clone(), zero_point, self.spec)

    def extra_repr(self) -> str:
        sign = "signed" if bool(self.signed) else "unsigned"
        return f"bits={self.spec.bits}, {sign}" + ("" if self.enabled else ", disabled")


class STEActivationQuantizer(ActivationFakeQuantizer):
    """Ranges from a moving average of batch min/max (updated in training mode), straight-through gradient."""

    def __init__(self, spec: QuantSpec, label: str = "", momentum: float = 0.01):
        super().__init__(spec, label)
        self.observer = MovingAverageMinMaxObserver(spec, momentum=momentum)

    def _observe(self, x: torch.Tensor) -> None:
        self.observer.update(x)

    def start(self) -> None:
        super().start()
        self.observer = MovingAverageMinMaxObserver(self.spec, momentum=self.observer.momentum)

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.observer.update(x)
        return fake_quantize(x, self.observer.calculate_qparams())

    def set_bits(self, bits: int) -> None:
        super().set_bits(bits)
        self.observer.spec = self.spec

    def export(self) -> QParams:
        return self.observer.calculate_qparams()


class LSQActivationQuantizer(ActivationFakeQuantizer):
    """LSQ on activations: one learned step; unsigned grid where initialisation saw no negative value."""

    def __init__(self, spec: QuantSpec, label: str = ""):
        super().__init__(spec, label)
        self.step = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("abs_sum", torch.zeros((), dtype=torch.float64), persistent=False)
        self.register_buffer("count", torch.zeros((), dtype=torch.float64), persistent=False)

    @torch.no_grad()
    def start(self) -> None:
        super().start()
        self.abs_sum.zero_()
        self.count.zero_()

    def _observe(self, x: torch.Tensor) -> None:
        self.abs_sum += x.detach().abs().sum(dtype=torch.float64)
        self.count += x.numel()

    @torch.no_grad()
    def finish(self) -> None:
        if float(self.count) == 0:
            raise RuntimeError(f"no tensor reached the QAT quantizer at {self.label or 'an edge'} while initialising")
        _, qmax = self._grid()
        mean = (self.abs_sum / self.count).to(torch.float32)
        self.step.copy_(lsq_initial_step(mean.reshape(1), qmax).reshape(()))  # 2·mean|x|/sqrt(Qp)
        super().finish()

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        qmin, qmax = self._grid()
        per_sample = x.numel() // x.shape[0] if x.ndim > 1 else x.numel()
        return lsq_fake_quantize(x, _positive(self.step), qmin, qmax, lsq_grad_scale(per_sample, qmax))

    @torch.no_grad()
    def set_bits(self, bits: int) -> None:
        _, old = self._grid()
        super().set_bits(bits)
        self.step.mul_(old / self._grid()[1])  # keep the clip range

    def export(self) -> QParams:
        return self._as_spec(_positive(self.step.detach()))


class PACTActivationQuantizer(ActivationFakeQuantizer):
    """PACT: a learned clip ``α`` (eq. Q3), initialised to the MSE-optimal clip of the observed values.

    Args:
        decay: the L2 coefficient on ``α`` (:meth:`penalty`).
    """

    def __init__(self, spec: QuantSpec, label: str = "", decay: float = 1e-4):
        super().__init__(spec, label)
        if decay < 0:
            raise ValueError(f"PACT decay must be >= 0, got {decay!r}")
        self.decay = decay
        self.alpha = nn.Parameter(torch.tensor(1.0))
        self._sample: list[torch.Tensor] = []
        self._kept = 0

    def start(self) -> None:
        super().start()
        self._sample, self._kept = [], 0

    def _observe(self, x: torch.Tensor) -> None:
        flat = x.detach().reshape(-1).to(torch.float32)
        room = min(_PACT_SAMPLE - self._kept, _PACT_PER_BATCH)
        if room > 0:
            pick = flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(self._kept))[:room]]
            self._sample.append(pick)
            self._kept += pick.numel()

    @torch.no_grad()
    def finish(self) -> None:
        if not self._sample:
            raise RuntimeError(f"no tensor reached the QAT quantizer at {self.label or 'an edge'} while initialising")
        signed = bool(self.signed)
        data = torch.cat(self._sample).reshape(1, -1)
        data = data if signed else data.clamp(min=0)
        _, hi = mse_range_rows(data, QuantSpec(bits=self.spec.bits, signed=signed))
        qmin, qmax, divisor = pact_grid(self.spec.bits, signed)
        # the MSE search's symmetric grid has step hi/qmax; PACT's has step α/divisor
        alpha = float(hi[0]) / qmax * divisor if signed else float(hi[0])
        self.alpha.fill_(max(alpha, 1e-8))
        self._sample, self._kept = [], 0
        super().finish()

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        return pact_fake_quantize(x, _positive(self.alpha), self.spec.bits, bool(self.signed))

    def penalty(self) -> torch.Tensor | None:
        return self.decay * self.alpha.square() if self.enabled and self.decay else None

    def export(self) -> QParams:
        return self._as_spec(_positive(self.alpha.detach()) / pact_grid(self.spec.bits, bool(self.signed))[2])


class DoReFaActivationQuantizer(ActivationFakeQuantizer):
    """DoReFa's ``quantize_k(clamp(x, 0, 1))``. DoReFa assumes a bounded activation before it; an edge that
    carries negative values (the model input, a residual sum) falls back to moving-average ranges (STE)."""

    def __init__(self, spec: QuantSpec, label: str = "", momentum: float = 0.01):
        super().__init__(spec, label)
        self.fallback = STEActivationQuantizer(spec, label, momentum)

    def _observe(self, x: torch.Tensor) -> None:
        self.fallback.observe(x)

    def start(self) -> None:
        super().start()
        self.fallback.start()

    def finish(self) -> None:
        self.fallback.finish()
        super().finish()

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        if bool(self.signed):
            return self.fallback.fake_quantize(x)
        return dorefa_activation(x, self.spec.bits)

    def set_bits(self, bits: int) -> None:
        super().set_bits(bits)
        self.fallback.set_bits(bits)

    def export(self) -> QParams:
        if bool(self.signed):
            return self.fallback.export()
        step = torch.tensor(1.0 / ((1 << self.spec.bits) - 1), dtype=torch.float32)
        return QParams(step, torch.tensor(self.spec.qmin, dtype=torch.int32), self.spec)
