"""Training schedules for QAT: progressive bit-width lowering and two-stage (weights first, then activations).

A schedule is applied at the start of every epoch — by :func:`lowbit.qat.fit`, or by your own loop calling
``schedule.apply(model, epoch)``. It only calls the verbs :func:`~lowbit.flows.qat.set_bits` and
:func:`~lowbit.flows.qat.enable`.

Example:
    >>> ProgressiveBits((8, 4), epochs_per_stage=2).bits_at(0), ProgressiveBits((8, 4), 2).bits_at(5)
    (8, None)
    >>> TwoStage(activation_epoch=1).activations_at(0)
    False
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lowbit.flows.qat import enable, set_bits

__all__ = ["Schedule", "ProgressiveBits", "TwoStage"]


class Schedule:
    """Something applied to a QAT model at the start of each epoch."""

    def apply(self, model: nn.Module, epoch: int) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class ProgressiveBits(Schedule):
    """Train at ``widths[0]`` bits for ``epochs_per_stage`` epochs, then ``widths[1]``, …, then the recipe's own
    bits (e.g. ``(8, 4)`` on a 2-bit recipe trains 8 → 4 → 2). A quantizer never goes below its recipe's bits,
    so 8-bit first and last layers stay at 8.

    Raises:
        ValueError: widths not decreasing integers in 2..8, or ``epochs_per_stage < 1``.
    """

    widths: tuple[int, ...] = (8, 4)
    epochs_per_stage: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(self.widths))
        if not self.widths or any(not isinstance(b, int) or not 2 <= b <= 8 for b in self.widths) or \
                list(self.widths) != sorted(self.widths, reverse=True):
            raise ValueError(f"ProgressiveBits.widths must be decreasing ints in 2..8, got {self.widths!r}")
        if not isinstance(self.epochs_per_stage, int) or self.epochs_per_stage < 1:
            raise ValueError(f"ProgressiveBits.epochs_per_stage must be an int >= 1, got {self.epochs_per_stage!r}")

    def bits_at(self, epoch: int) -> int | None:
        """The width trained in ``epoch`` (None: the recipe's)."""
        stage = epoch // self.epochs_per_stage
        return self.widths[stage] if stage < len(self.widths) else None

    def apply(self, model: nn.Module, epoch: int) -> None:
        set_bits(model, self.bits_at(epoch))


@dataclass(frozen=True)
class TwoStage(Schedule):
    """Quantize only the weights before ``activation_epoch``, weights and activations from then on.

    Raises:
        ValueError: ``activation_epoch < 0``.
    """

    activation_epoch: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.activation_epoch, int) or self.activation_epoch < 0:
            raise ValueError(f"TwoStage.activation_epoch must be an int >= 0, got {self.activation_epoch!r}")

    def activations_at(self, epoch: int) -> bool:
        return epoch >= self.activation_epoch

    def apply(self, model: nn.Module, epoch: int) -> None:
        enable(model, weights=True, activations=self.activations_at(epoch))
