"""``QATConfig``: which quantizer rules :func:`lowbit.qat.prepare` puts on weights and activations.

Example:
    >>> QATConfig.for_quantizer("pact")
    QATConfig(weight_quantizer=<QuantizerKind.STE: 'ste'>, activation_quantizer=<QuantizerKind.PACT: 'pact'>, gradient_bits=None, pact_decay=0.0001, momentum=0.01)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lowbit.nn.fake_quant import QuantizerKind

__all__ = ["QATConfig"]

# the weight and activation quantizers each --quantizer choice means (PACT is an activation rule: its weights use
# the min/max STE quantizer, so PACT vs STE compares the activation rules alone)
_DEFAULT_PAIRS = {
    QuantizerKind.STE: (QuantizerKind.STE, QuantizerKind.STE),
    QuantizerKind.LSQ: (QuantizerKind.LSQ, QuantizerKind.LSQ),
    QuantizerKind.PACT: (QuantizerKind.STE, QuantizerKind.PACT),
    QuantizerKind.DOREFA: (QuantizerKind.DOREFA, QuantizerKind.DOREFA),
}


@dataclass(frozen=True)
class QATConfig:
    """How a model was prepared for QAT (kept on the model as ``lowbit_qat``).

    Args:
        weight_quantizer / activation_quantizer: :class:`QuantizerKind` (PACT is activations only).
        gradient_bits: DoReFa gradient quantization of every quantized layer's output gradient; None: off.
        pact_decay: PACT's L2 coefficient on α.
        momentum: the moving-average weight of the STE activation ranges.

    Raises:
        ValueError: naming the field and the value.
    """

    weight_quantizer: QuantizerKind = QuantizerKind.LSQ
    activation_quantizer: QuantizerKind = QuantizerKind.LSQ
    gradient_bits: int | None = None
    pact_decay: float = 1e-4
    momentum: float = 0.01

    def __post_init__(self) -> None:
        for name in ("weight_quantizer", "activation_quantizer"):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, QuantizerKind(value))
            except ValueError:
                raise ValueError(f"QATConfig.{name}: {value!r} is not one of "
                                 f"{', '.join(k.value for k in QuantizerKind)}") from None
        if self.weight_quantizer is QuantizerKind.PACT:
            raise ValueError("QATConfig.weight_quantizer: PACT clips activations; use ste, lsq or dorefa for weights")
        if self.gradient_bits is not None and (not isinstance(self.gradient_bits, int) or not 1 <= self.gradient_bits <= 16):
            raise ValueError(f"QATConfig.gradient_bits must be None or an int in 1..16, got {self.gradient_bits!r}")
        if not self.pact_decay >= 0:
            raise ValueError(f"QATConfig.pact_decay must be >= 0, got {self.pact_decay!r}")
        if not 0 < self.momentum <= 1:
            raise ValueError(f"QATConfig.momentum must be in (0, 1], got {self.momentum!r}")

    @classmethod
    def for_quantizer(cls, quantizer: str | QuantizerKind, **options: Any) -> QATConfig:
        """The config ``--quantizer`` names: ste, lsq and dorefa on weights and activations alike; pact on
        activations with the STE rule on weights."""
        try:
            kind = QuantizerKind(quantizer)
        except ValueError:
            raise ValueError(f"quantizer {quantizer!r} is not one of {', '.join(k.value for k in QuantizerKind)}") from None
        weights, activations = _DEFAULT_PAIRS[kind]
        return cls(weights, activations, **options)
