"""``QATConfig``: which quantizer rules :func:`lowbit.qat.prepare` puts on weights and activations.

Example:
    >>> QATConfig.for_quantizer("pact")
    QATConfig(weight_quantizer=<QuantizerKind.STE: 'ste'>, activation_quantizer=<QuantizerKind.PACT: 'pact'>, gradient_bits=None, pact_decay=0.0001, momentum=0.01, stochastic=False)
    >>> QATConfig.for_quantizer("bnn").default_recipe().name
    'w1a1'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lowbit.nn.binary_quant import BINARY_GRID
from lowbit.nn.fake_quant import QuantizerKind
from lowbit.recipes import Mode, Recipe, load_recipe
from lowbit.spec import PerChannel, QuantSpec

__all__ = ["QATConfig", "BINARY_KINDS"]

# the weight and activation quantizers each --quantizer choice means (PACT is an activation rule: its weights use
# the min/max STE quantizer, so PACT vs STE compares the activation rules alone)
_DEFAULT_PAIRS = {
    QuantizerKind.STE: (QuantizerKind.STE, QuantizerKind.STE),
    QuantizerKind.LSQ: (QuantizerKind.LSQ, QuantizerKind.LSQ),
    QuantizerKind.PACT: (QuantizerKind.STE, QuantizerKind.PACT),
    QuantizerKind.DOREFA: (QuantizerKind.DOREFA, QuantizerKind.DOREFA),
    QuantizerKind.BNN: (QuantizerKind.BNN, QuantizerKind.SIGN),
    QuantizerKind.XNOR: (QuantizerKind.XNOR, QuantizerKind.SIGN),
    QuantizerKind.BWN: (QuantizerKind.BWN, QuantizerKind.STE),
    QuantizerKind.TWN: (QuantizerKind.TWN, QuantizerKind.STE),
    QuantizerKind.TTQ: (QuantizerKind.TTQ, QuantizerKind.STE),
    QuantizerKind.FIVE_LEVEL: (QuantizerKind.FIVE_LEVEL, QuantizerKind.STE),
}
# weight rules with a fixed binary/ternary grid: they apply to layers the recipe gives <= 3 bits (first and last
# layers at first_last_bits get the min/max STE rule)
BINARY_KINDS = frozenset({QuantizerKind.BNN, QuantizerKind.XNOR, QuantizerKind.BWN, QuantizerKind.TWN,
                          QuantizerKind.TTQ, QuantizerKind.FIVE_LEVEL})
_WEIGHT_GRID = QuantSpec(bits=2, narrow_range=True, granularity=PerChannel(0))
# the recipe each family trains by default: binary activations for BNN/XNOR-Net, real ones for the weight-only
# rules (their papers keep activations in float); first and last layers at 8 bits
_DEFAULT_RECIPES = {
    QuantizerKind.BNN: Recipe("w1a1", Mode.STATIC, _WEIGHT_GRID, BINARY_GRID, first_last_bits=8),
    QuantizerKind.XNOR: Recipe("w1a1", Mode.STATIC, _WEIGHT_GRID, BINARY_GRID, first_last_bits=8),
    QuantizerKind.BWN: Recipe("w1", Mode.WEIGHT_ONLY, _WEIGHT_GRID, None, first_last_bits=8),
    QuantizerKind.TWN: Recipe("w2-ternary", Mode.WEIGHT_ONLY, _WEIGHT_GRID, None, first_last_bits=8),
    QuantizerKind.TTQ: Recipe("w2-ternary", Mode.WEIGHT_ONLY, _WEIGHT_GRID, None, first_last_bits=8),
    QuantizerKind.FIVE_LEVEL: Recipe("w3-five-level", Mode.WEIGHT_ONLY, QuantSpec(bits=3, narrow_range=True,
                                                                                 granularity=PerChannel(0)),
                                     None, first_last_bits=8),
}


@dataclass(frozen=True)
class QATConfig:
    """How a model was prepared for QAT (kept on the model as ``lowbit_qat``).

    Args:
        weight_quantizer / activation_quantizer: :class:`QuantizerKind` (PACT is activations only).
        gradient_bits: DoReFa gradient quantization of every quantized layer's output gradient; None: off.
        pact_decay: PACT's L2 coefficient on α.
        momentum: the moving-average weight of the STE activation ranges.
        stochastic: BNN/BinaryConnect's stochastic binarisation of weights in training mode.

    Raises:
        ValueError: naming the field and the value.
    """

    weight_quantizer: QuantizerKind = QuantizerKind.LSQ
    activation_quantizer: QuantizerKind = QuantizerKind.LSQ
    gradient_bits: int | None = None
    pact_decay: float = 1e-4
    momentum: float = 0.01
    stochastic: bool = False

    def __post_init__(self) -> None:
        for name in ("weight_quantizer", "activation_quantizer"):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, QuantizerKind(value))
            except ValueError:
                raise ValueError(f"QATConfig.{name}: {value!r} is not one of "
                                 f"{', '.join(k.value for k in QuantizerKind)}") from None
        if self.weight_quantizer in (QuantizerKind.PACT, QuantizerKind.SIGN):
            raise ValueError(f"QATConfig.weight_quantizer: {self.weight_quantizer.value} is an activation rule; use "
                             "ste, lsq, dorefa or a binary/ternary rule for weights")
        if self.activation_quantizer in BINARY_KINDS:
            raise ValueError(f"QATConfig.activation_quantizer: {self.activation_quantizer.value} is a weight rule; "
                             "binary activations are 'sign'")
        if self.stochastic and self.weight_quantizer is not QuantizerKind.BNN:
            raise ValueError(f"QATConfig.stochastic is BNN's stochastic binarisation; weight_quantizer is "
                             f"{self.weight_quantizer.value}")
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
        if kind is QuantizerKind.SIGN:
            raise ValueError("quantizer 'sign' is an activation rule; the binary networks are 'bnn' and 'xnor'")
        weights, activations = _DEFAULT_PAIRS[kind]
        return cls(weights, activations, **options)

    def default_recipe(self) -> Recipe:
        """The recipe :func:`lowbit.qat.prepare` uses when none is given: ``w4a4`` for the uniform rules, binary
        or ternary weights (codes on the 2-bit narrow grid ``{−1, 0, 1}``, five levels on the 3-bit one) with
        8-bit first and last layers for the binary/ternary rules — sign activations for BNN and XNOR-Net."""
        return _DEFAULT_RECIPES.get(self.weight_quantizer) or load_recipe("w4a4")
