"""Binary and ternary quantizers for training with :mod:`lowbit.qat`: BNN, XNOR-Net/BWN, TWN, TTQ, five levels.

Weight quantizers keep a real-valued *latent* weight that the optimizer updates and show the layer its binary or
ternary value; they are scale-invariant (the codes do not change when ``W`` is scaled), so a following BatchNorm is
applied after quantization and folded into the per-channel scale at conversion, as for DoReFa
(:class:`~lowbit.nn.qat_layers.QATLayer`). Codes are stored on the 2-bit narrow grid ``{−1, 0, 1}`` (binary codes
use only ``±1``), the five-level codes on the 3-bit narrow grid.

:class:`SignActivationQuantizer` is BNN's activation: ``sign(x)`` (``sign(0) = +1``) with the gradient passed
where ``|x| ≤ 1`` (STE through htanh). It converts to :class:`SignQuantizer`, the frozen edge the integer engine
lowers to a threshold on the accumulator and the bit kernels run packed.

Example:
    >>> import torch
    >>> q = BinaryWeightQuantizer(scaled=True)           # XNOR-Net / BWN: α·sign(W), α = mean|W| per channel
    >>> q(torch.tensor([[0.5, -1.5], [0.2, 0.0]]))
    tensor([[ 1.0000, -1.0000],
            [ 0.1000,  0.1000]])
    >>> codes, qp = q.export(torch.tensor([[0.5, -1.5], [0.2, 0.0]]))
    >>> codes.tolist(), qp.scale.tolist()
    ([[1, -1], [1, 1]], [1.0, 0.10000000149011612])
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.functional.binary import binarize, five_level_quantize, ttq_quantize, twn_ternarize, xnor_weight_scale
from lowbit.functional.ste import masked_ste, sign_ste
from lowbit.nn.activation import ActivationQuantizer
from lowbit.nn.fake_quant import ActivationFakeQuantizer, WeightFakeQuantizer
from lowbit.spec import PerChannel, PerTensor, QParams, QuantSpec

__all__ = ["BINARY_GRID", "BinaryWeightQuantizer", "TernaryWeightQuantizer", "FiveLevelWeightQuantizer",
           "TTQWeightQuantizer", "SignActivationQuantizer", "SignQuantizer", "clip_latent_weights"]

BINARY_GRID = QuantSpec(bits=2, narrow_range=True)  # {−1, 0, 1}: ±1 codes, and TWN's zero
_FIVE_GRID = QuantSpec(bits=3, narrow_range=True)  # {−3..3}: the five levels use −2..2
_TTQ_GRID = QuantSpec(bits=8, narrow_range=True)


def _per_channel(spec: QuantSpec) -> QuantSpec:
    return QuantSpec(bits=spec.bits, narrow_range=True, granularity=PerChannel(0))


def _qparams(scale: torch.Tensor, spec: QuantSpec) -> QParams:
    scale = scale.detach().to(torch.float32).reshape(-1) if scale.numel() > 1 else scale.detach().to(torch.float32).reshape(())
    # a zero weight tensor has α = 0; any positive scale represents its zero codes
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    grid = _per_channel(spec) if scale.numel() > 1 else spec
    return QParams(scale, torch.zeros_like(scale, dtype=torch.int32), grid)


class _LatentWeightQuantizer(WeightFakeQuantizer):
    """Binary/ternary rules: scale-invariant, fixed bit width, optional clipping of the latent weight."""

    scale_invariant = True

    def __init__(self, spec: QuantSpec, clip: float | None):
        super().__init__(spec)
        if clip is not None and not clip > 0:
            raise ValueError(f"latent weight clip must be None or > 0, got {clip!r}")
        self.clip = clip

    def set_bits(self, bits: int) -> None:
        if bits != self.spec.bits:
            raise ValueError(f"{type(self).__name__} has a fixed grid of {self.spec.bits} bits; set_bits({bits}) "
                             "cannot change it (leave binary layers out of progressive schedules)")

    @torch.no_grad()
    def clip_(self, w: torch.Tensor) -> None:
        """Clip the latent weight in place after an optimizer step (BinaryConnect keeps it in ``[−1, 1]``)."""
        if self.clip is not None:
            w.clamp_(-self.clip, self.clip)

    def extra_repr(self) -> str:
        clip = f", clip={self.clip}" if self.clip is not None else ""
        return f"{type(self).__name__.removesuffix('WeightQuantizer').lower()}{clip}" + (
            "" if self.enabled else ", disabled")


class BinaryWeightQuantizer(_LatentWeightQuantizer):
    """BinaryConnect/BNN ``sign(W)`` (``scaled=False``) or XNOR-Net/BWN ``α·sign(W)`` with ``α = mean|W|`` per output
    channel (``scaled=True``); gradient straight through where ``|W| ≤ 1`` (and through ``α``: XNOR-Net's
    ``1/n + α·1_{|W|≤1}``).

    Args:
        scaled: XNOR-Net's per-channel ``α`` (else every channel's step is 1).
        stochastic: BinaryConnect's stochastic binarisation in training mode (``P(+1) = hard_sigmoid(W)``);
            deterministic ``sign`` in eval mode and at export.
        clip: the latent weights are kept in ``[−clip, clip]`` by :func:`clip_latent_weights` (BNN: 1).
    """

    def __init__(self, scaled: bool = False, stochastic: bool = False, clip: float | None = 1.0):
        super().__init__(BINARY_GRID, clip)
        self.scaled, self.stochastic = scaled, stochastic

    def fake_quantize(self, w: torch.Tensor) -> torch.Tensor:
        if self.stochastic and self.training:
            signs = masked_ste(w, binarize(w.detach(), stochastic=True), w.detach().abs() <= 1)
        else:
            signs = sign_ste(w)
        return signs * xnor_weight_scale(w) if self.scaled else signs

    def scale(self, w: torch.Tensor) -> torch.Tensor:
        if self.scaled:
            return xnor_weight_scale(w.detach()).reshape(-1).to(torch.float32)
        return torch.ones((), dtype=torch.float32)

    def export(self, w: torch.Tensor) -> tuple[torch.Tensor, QParams]:
        codes = binarize(w.detach()).to(torch.int8)
        return codes, _qparams(self.scale(w), self.spec)


class TernaryWeightQuantizer(_LatentWeightQuantizer):
    """TWN: codes ``{−1, 0, +1}`` above ``Δ = 0.7·mean|W|``, ``α = mean(|W| > Δ)``, straight-through gradient.

    Args:
        per_channel: ``Δ`` and ``α`` per output channel instead of per tensor.
        clip: optional latent clipping (TWN trains without it: None).
    """

    def __init__(self, per_channel: bool = False, clip: float | None = None):
        super().__init__(BINARY_GRID, clip)
        self.per_channel = per_channel

    def _codes(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return twn_ternarize(w.detach(), self.per_channel)

    def fake_quantize(self, w: torch.Tensor) -> torch.Tensor:
        codes, alpha = self._codes(w)
        return masked_ste(w, codes * alpha)

    def scale(self, w: torch.Tensor) -> torch.Tensor:
        return _qparams(self._codes(w)[1], self.spec).scale

    def export(self, w: torch.Tensor) -> tuple[torch.Tensor, QParams]:
        codes, alpha = self._codes(w)
        return codes.to(torch.int8), _qparams(alpha, self.spec)


class FiveLevelWeightQuantizer(TernaryWeightQuantizer):
    """Five levels ``{−2, −1, 0, 1, 2}·α`` (:func:`~lowbit.functional.binary.five_level_quantize`), stored on the
    3-bit narrow grid; straight-through gradient."""

    def __init__(self, per_channel: bool = False, clip: float | None = None):
        _LatentWeightQuantizer.__init__(self, _FIVE_GRID, clip)
        self.per_channel = per_channel

    def _codes(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return five_level_quantize(w.detach(), self.per_channel)


class TTQWeightQuantizer(_LatentWeightQuantizer):
    """TTQ: ``W_p`` above ``Δ = threshold·max|W|``, ``−W_n`` below ``−Δ``, else 0, with ``W_p`` and ``W_n`` learned
    (:func:`~lowbit.functional.binary.ttq_quantize`). They start as the mean magnitude of each side of ``weight``.

    The two scales differ, so no single-scale grid holds ``{−W_n, 0, W_p}`` exactly: conversion stores them on the
    8-bit narrow grid with step ``max(W_p, W_n)/127`` (each level within 1/254 of its value, relative to the larger),
    and the layer's eval mode computes with those stored values, so the converted model equals it.
    """

    def __init__(self, weight: torch.Tensor, threshold: float = 0.05, clip: float | None = None):
        super().__init__(_TTQ_GRID, clip)
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"TTQ threshold must be in [0, 1), got {threshold!r}")
        self.threshold = threshold
        w = weight.detach()
        delta = threshold * w.abs().max()
        pos, neg = w[w > delta], w[w < -delta]
        start = w.abs().mean().clamp(min=1e-8)
        self.wp = nn.Parameter((pos.mean() if pos.numel() else start).reshape(()).clone())
        self.wn = nn.Parameter((-neg.mean() if neg.numel() else start).reshape(()).clone())

    def fake_quantize(self, w: torch.Tensor) -> torch.Tensor:
        values = ttq_quantize(w, self.wp.abs(), self.wn.abs(), self.threshold)
        if self.training:
            return values
        # eval mode computes with the stored levels, so the converted layer gives the same values
        step = self.scale(w).to(w.dtype)
        return masked_ste(values, torch.round(values.detach() / step).clamp(-self.spec.qmax, self.spec.qmax) * step)

    def scale(self, w: torch.Tensor) -> torch.Tensor:
        top = torch.maximum(self.wp.detach().abs(), self.wn.detach().abs()).to(torch.float32)
        return (top / self.spec.qmax).clamp(min=torch.finfo(torch.float32).tiny)

    @torch.no_grad()
    def export(self, w: torch.Tensor) -> tuple[torch.Tensor, QParams]:
        step = self.scale(w)
        values = ttq_quantize(w.detach(), self.wp.abs(), self.wn.abs(), self.threshold).to(torch.float32)
        codes = torch.round(values / step).clamp(-self.spec.qmax, self.spec.qmax)
        return codes.to(torch.int8), QParams(step.reshape(()), torch.zeros((), dtype=torch.int32), self.spec)

    def extra_repr(self) -> str:
        return f"ttq, threshold={self.threshold}" + ("" if self.enabled else ", disabled")


@torch.no_grad()
def clip_latent_weights(model: nn.Module) -> int:
    """Clip every latent binary/ternary weight that asks for it (call after each optimizer step; ``lowbit.qat.fit``
    does); returns how many were clipped."""
    count = 0
    for module in model.modules():
        quantizer = getattr(module, "weight_quantizer", None)
        weight = getattr(module, "weight", None)
        if isinstance(quantizer, _LatentWeightQuantizer) and quantizer.clip is not None and weight is not None:
            quantizer.clip_(weight)
            count += 1
    return count


class SignActivationQuantizer(ActivationFakeQuantizer):
    """BNN's activation ``sign(x)`` (``sign(0) = +1``), gradient 1 where ``|x| ≤ 1`` (htanh STE).

    Its grid is fixed (codes ``±1`` with step 1 on the 2-bit narrow grid), so initialisation has nothing to learn.
    """

    def __init__(self, spec: QuantSpec = BINARY_GRID, label: str = ""):
        if spec.bits != 2 or not spec.symmetric or not spec.signed or not isinstance(spec.granularity, PerTensor):
            raise ValueError(f"SignActivationQuantizer stores ±1 on the 2-bit symmetric per-tensor grid, got {spec!r}")
        super().__init__(BINARY_GRID, label)

    def _observe(self, x: torch.Tensor) -> None:
        pass  # a fixed grid: only the base records that data reached the edge

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        return sign_ste(x)

    def set_bits(self, bits: int) -> None:
        if bits != 2:
            raise ValueError(f"a sign activation is binary; set_bits({bits}) cannot change it")

    def current_step(self) -> float | None:
        return 1.0

    def export(self) -> QParams:
        return QParams(torch.tensor(1.0), torch.tensor(0, dtype=torch.int32), BINARY_GRID)


class SignQuantizer(ActivationQuantizer):
    """The frozen sign edge: ``+1`` where ``x ≥ 0``, else ``−1`` (codes on the 2-bit narrow grid, step 1).

    Unlike rounding to that grid, ``0`` maps to ``+1``: the integer engine lowers it to ``acc ≥ 0`` on the
    producing layer's accumulator.

    Example:
        >>> SignQuantizer()(torch.tensor([-0.2, 0.0, 3.0]))
        tensor([-1.,  1.,  1.])
    """

    def __init__(self, label: str = ""):
        super().__init__(BINARY_GRID, dynamic=True, label=label)
        self.dynamic = False  # static: fixed qparams, no observer needed
        self.scale, self.zero_point = torch.tensor(1.0), torch.tensor(0, dtype=torch.int32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bypass or not isinstance(x, torch.Tensor):
            return x
        return binarize(x)

    def freeze(self) -> None:
        pass  # nothing to calibrate

    def extra_repr(self) -> str:
        return "sign"
