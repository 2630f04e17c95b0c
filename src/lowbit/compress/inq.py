"""Incremental Network Quantization (Zhou et al., ICLR 2017): weights become zero or powers of two, a portion at a time.

Each included layer's weight ends up in a set of values fixed when quantization starts (numbers are cited in the
code as "eq. INQ.N"). With ``s = max|W|`` of the layer's weight at that moment and ``b ≥ 2`` bits:

    n1 = ⌊log2(4s/3)⌋,   n2 = n1 + 1 − 2^(b−1)/2                       (eq. INQ.1; b = 5: n2 = n1 − 7)
    P  = {0} ∪ {±2^n : n2 ≤ n ≤ n1}                                       (eq. INQ.2)

``n1`` is the largest exponent with ``0.75·2^n1 ≤ s``, which also makes ``s < 1.5·2^n1``. A weight goes to the level
of ``P`` whose interval holds its magnitude; for adjacent non-negative levels ``α < β``:

    |w| ∈ [(α + β)/2, 3β/2)  →  β·sign(w),     |w| < 2^(n2−1)  →  0      (eq. INQ.3)

For ``β = 2^k > 2^n2`` the interval is ``[0.75·2^k, 1.5·2^k)``, for ``β = 2^n2`` it is ``[2^(n2−1), 1.5·2^n2)``: the
intervals tile ``[0, 1.5·2^n1)``, which holds every ``|w| ≤ s``; a midpoint goes to the larger level. Magnitudes from
``1.5·2^n1`` up (weights that grew past ``s`` while retraining) saturate at ``2^n1``.

The schedule (the paper's accumulated portions, by default 0.5, 0.75, 0.875, 1): at each step every layer freezes its
largest-magnitude weights that are not frozen yet, at their eq. INQ.3 values, until exactly ``round(portion · n)`` of
its ``n`` weights are frozen (eq. INQ.4; Python's ``round``, half to even; among equal magnitudes the lower flat,
row-major, index is frozen first). Then the caller retrains, and only unfrozen weights move. After the step at
portion 1 every weight is in ``P``.

- :func:`power_of_two_levels` and :func:`quantize_power_of_two` are the pure math of eqs. INQ.1–3.
- :class:`INQ` holds, per layer, ``(n1, n2)``, the frozen mask and the frozen values, and — as
  :class:`~lowbit.compress.prune.Pruner` does for pruned weights — hooks that keep frozen weights bit-identical
  through training: the gradient is zeroed at frozen positions, and after every ``optimizer.step()`` the frozen
  values are written back and the optimizer's per-element state (momentum, Adam moments) is zeroed there.
- :func:`incremental_quantize` is the paper's quantize → retrain loop.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from lowbit.compress.inq import INQ
    >>> layer = nn.Linear(4, 2, bias=False)
    >>> with torch.no_grad():
    ...     _ = layer.weight.copy_(torch.tensor([[0.875, -0.3125, 0.0625, 0.1875], [-0.625, 0.015625, 0.375, -0.125]]))
    >>> inq = INQ(layer, bits=4)
    >>> inq.levels  # s = 0.875: n1 = ⌊log2(7/6)⌋ = 0, n2 = 0 + 1 − 4 = −3, so P = {0, ±1/8, ±1/4, ±1/2, ±1}
    {'': (0, -3)}
    >>> inq.step(0.5)  # the 4 largest |w| of 8 are quantized and frozen; 0.375 is a midpoint and goes up
    >>> layer.weight.tolist()
    [[1.0, -0.25, 0.0625, 0.1875], [-0.5, 0.015625, 0.5, -0.125]]
    >>> inq.step(1.0)  # 0.0625 = 2^(n2−1) and 0.1875 are midpoints too
    >>> layer.weight.tolist()
    [[1.0, -0.25, 0.125, 0.25], [-0.5, 0.0, 0.5, -0.125]]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lowbit.compress.hold import WeightHold
from lowbit.compress.prune import _included

__all__ = ["FrozenFraction", "power_of_two_levels", "quantize_power_of_two", "INQ", "incremental_quantize"]

MAX_BITS = 8
# float64 holds 2^n exactly for n in [-1074, 1023]; n2 >= -1073 keeps the zero threshold 2^(n2-1) above 0.
_MIN_EXPONENT, _MAX_EXPONENT = -1073, 1023


def _check_bits(bits: object) -> int:
    # bool is an int subclass; True as a bit width is a bug. Past 8 bits the 2^(b-2) exponents outrun what INQ is
    # for (and, from b = 10 on, float32's range of powers of two).
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an int in [2, {MAX_BITS}], got {bits!r}")
    return bits


def _check_portion(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be a float in (0, 1], got {value!r}")
    return float(value)


def power_of_two_levels(max_abs: float, bits: int) -> tuple[int, int]:
    """The exponent range ``(n1, n2)`` of eq. INQ.1 for a layer with ``max|W| = max_abs`` and ``bits`` bits.

    ``n1`` is computed exactly (``3·2^(n1−2) ≤ max_abs < 3·2^(n1−1)``, compared without rounding), so a
    ``max_abs`` of exactly ``0.75·2^k`` gets ``n1 = k``.

    Args:
        max_abs: the largest weight magnitude of the layer, finite and > 0.
        bits: bit width ``b`` in ``[2, 8]``: ``2^(b−2)`` exponents, ``2^(b−1) + 1`` values in ``P`` with zero.

    Returns:
        ``(n1, n2)`` with ``n2 = n1 + 1 − 2^(b−2) ≤ n1``.

    Raises:
        ValueError: ``bits`` not an int in ``[2, 8]``, ``max_abs`` not finite and positive, or levels outside
            float64's powers of two (``n2 < −1073`` or ``n1 > 1023``).

    Example:
        >>> power_of_two_levels(1.0, 5)  # 4/3 → n1 = 0, n2 = 0 + 1 − 8
        (0, -7)
        >>> power_of_two_levels(0.75, 3), power_of_two_levels(0.7499, 3)  # 4s/3 = 1 exactly, and just below
        ((0, -1), (-1, -2))
    """
    bits = _check_bits(bits)
    if isinstance(max_abs, bool) or not isinstance(max_abs, int | float) or not 0.0 < max_abs < math.inf:
        raise ValueError(f"max_abs must be a finite float > 0, got {max_abs!r}")
    s = float(max_abs)
    # eq. INQ.1: log2 gives a first guess; the loops settle 3·2^(n1−2) ≤ s < 3·2^(n1−1) exactly, scaling s (a power
    # of two times s is exact, subnormal s included) rather than rounding 4s/3.
    n1 = math.floor(math.log2(s) + math.log2(4.0 / 3.0))
    while math.ldexp(s, 2 - n1) < 3.0:
        n1 -= 1
    while math.ldexp(s, 1 - n1) >= 3.0:
        n1 += 1
    n2 = n1 + 1 - 2 ** (bits - 2)
    if n2 < _MIN_EXPONENT or n1 > _MAX_EXPONENT:
        raise ValueError(f"max_abs={max_abs!r} with bits={bits} needs levels 2^{n2}..2^{n1}, outside float64")
    return n1, n2


def quantize_power_of_two(weight: torch.Tensor, n1: int, n2: int) -> torch.Tensor:
    """Each element to its value in ``P = {0} ∪ {±2^n : n2 ≤ n ≤ n1}`` by the intervals of eq. INQ.3.

    Computed in float64, where every level is exact, and returned in ``weight``'s dtype and device; a level below
    that dtype's smallest subnormal becomes 0 there. Magnitudes of ``1.5·2^n1`` and more (``inf`` included) give
    ``±2^n1``; NaN stays NaN; the sign of zero is kept.

    Args:
        weight: a floating-point tensor (not modified; no gradient flows through the result).
        n1: the largest exponent, at most 1023.
        n2: the smallest exponent, with ``−1073 ≤ n2 ≤ n1``.

    Returns:
        A new tensor of ``weight``'s shape, dtype and device.

    Raises:
        ValueError: ``n1`` or ``n2`` not ints, ``n2 > n1``, or either outside ``[−1073, 1023]``.

    Example:
        >>> w = torch.tensor([0.1, 0.124, 0.125, 0.3, -0.37, 0.38, 0.74, 0.75, 2.0])
        >>> quantize_power_of_two(w, n1=0, n2=-2).tolist()  # P = {0, ±0.25, ±0.5, ±1}; 2^(n2−1) = 0.125
        [0.0, 0.0, 0.25, 0.25, -0.25, 0.5, 0.5, 1.0, 1.0]
    """
    for name, value in (("n1", n1), ("n2", n2)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an int, got {value!r}")
    if not _MIN_EXPONENT <= n2 <= n1 <= _MAX_EXPONENT:
        raise ValueError(f"need {_MIN_EXPONENT} <= n2 <= n1 <= {_MAX_EXPONENT}, got n1={n1}, n2={n2}")
    w = weight.detach().double()
    a = w.abs()
    # a = m·2^e with m in [0.5, 1): a lies in [0.75·2^k, 1.5·2^k) for k = e if m >= 0.75, else k = e − 1 (eq. INQ.3
    # for adjacent nonzero levels), found without rounding. Clamping k to n2 covers [2^(n2−1), 0.75·2^n2).
    mantissa, exponent = torch.frexp(a)
    k = (exponent.long() - (mantissa < 0.75).long()).clamp(n2, n1)
    table = torch.tensor([math.ldexp(1.0, n) for n in range(n2, n1 + 1)], dtype=torch.float64, device=w.device)
    magnitude = table[k - n2]
    magnitude = torch.where(a < math.ldexp(1.0, n2 - 1), 0.0, magnitude)
    magnitude = torch.where(a >= math.ldexp(1.5, n1), math.ldexp(1.0, n1), magnitude)  # saturate, inf included
    magnitude = torch.where(a.isnan(), a, magnitude)
    return magnitude.copysign(w).to(weight.dtype)


@dataclass(frozen=True)
class FrozenFraction:
    """Fraction of weights that INQ has quantized and frozen.

    Attributes:
        layers: module name → frozen / numel of that module's ``.weight``.
        overall: total frozen / total numel over those weights.
    """

    layers: dict[str, float]
    overall: float


class INQ(WeightHold):
    """Per-layer power-of-two levels, frozen masks, and the hooks that keep frozen weights fixed while training
    (:class:`~lowbit.compress.hold.WeightHold`: ``attach``, ``detach``, ``apply``).

    ``(n1, n2)`` of every layer come from its weight when the ``INQ`` is built (eq. INQ.1) and never change. The
    frozen mask (True = quantized and frozen) only grows, through :meth:`step`; the frozen values are kept beside
    it, so the hooks restore them bit for bit whatever an optimizer's weight decay or momentum did. Weights are
    looked up by module name at every use; replacing a weight's ``nn.Parameter`` object needs ``detach()`` then
    ``attach(new_optimizer)``, since the gradient hooks live on the parameter tensors.

    Args:
        model: the model to quantize in place.
        bits: bit width ``b`` in ``[2, 8]`` for every layer.
        include: module types whose ``.weight`` is quantized. Biases are never quantized.

    Raises:
        ValueError: a bad ``bits``, no included module, or an included weight that is empty, all zero or
            not finite (no ``s`` to place the levels by), naming the layer.

    Example:
        >>> model = nn.Linear(8, 4)
        >>> inq = INQ(model, bits=5)
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
        >>> inq.attach(optimizer)
        >>> inq.step(0.75)  # 24 of 32 weights quantized and frozen
        >>> frozen = model.weight[inq.frozen[""]].clone()
        >>> for _ in range(3):
        ...     optimizer.zero_grad()
        ...     model(torch.randn(5, 8)).square().sum().backward()
        ...     optimizer.step()
        >>> torch.equal(model.weight[inq.frozen[""]], frozen), inq.frozen_fraction().overall
        (True, 0.75)
        >>> inq.detach()
    """

    def __init__(
        self, model: nn.Module, bits: int, include: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)
    ) -> None:
        super().__init__(model)
        self.bits = _check_bits(bits)
        weights = _included(model, include)
        if not weights:
            raise ValueError(f"model has no module of types {[t.__name__ for t in include]} with a .weight tensor")
        self._levels: dict[str, tuple[int, int]] = {}
        for name, weight in weights.items():
            if weight.numel() == 0:
                raise ValueError(f"layer {name!r} has an empty weight of shape {tuple(weight.shape)}")
            s = float(weight.detach().abs().max())
            if not math.isfinite(s):
                raise ValueError(f"layer {name!r} has non-finite weights (max|W| = {s})")
            if s == 0.0:
                raise ValueError(f"layer {name!r} has all-zero weights: max|W| = 0 places no power-of-two levels")
            self._levels[name] = power_of_two_levels(s, bits)
        self._frozen = {name: torch.zeros(w.shape, dtype=torch.bool, device=w.device) for name, w in weights.items()}
        self._values = {name: torch.zeros(w.shape, dtype=w.dtype, device=w.device) for name, w in weights.items()}
        self._portion = 0.0

    @property
    def levels(self) -> dict[str, tuple[int, int]]:
        """Module name → ``(n1, n2)``: the layer's values are ``{0} ∪ {±2^n : n2 ≤ n ≤ n1}``."""
        return dict(self._levels)

    @property
    def frozen(self) -> dict[str, torch.Tensor]:
        """Module name → bool mask, True where the weight is quantized and frozen (copies)."""
        return {name: mask.clone() for name, mask in self._frozen.items()}

    @property
    def portion(self) -> float:
        """The portion of the last :meth:`step`, 0.0 before the first."""
        return self._portion

    def step(self, portion: float) -> None:
        """Quantize and freeze the largest unfrozen weights so that ``round(portion · n)`` of each layer are frozen.

        Weights are ranked by their current magnitude (after retraining), largest first, ties by lower flat index
        (eq. INQ.4); each newly frozen weight takes its eq. INQ.3 value under the layer's ``(n1, n2)``. Frozen
        weights stay frozen at the values they had. Ends with :meth:`apply`.

        Args:
            portion: accumulated fraction of each layer to have frozen, in ``(0, 1]``, not below the last step's.

        Raises:
            ValueError: ``portion`` outside ``(0, 1]`` or below the previous step's.
        """
        portion = _check_portion(portion, "portion")
        if portion < self._portion:
            raise ValueError(f"portion must not decrease: got {portion} after {self._portion}")
        with torch.no_grad():
            for name, frozen in self._frozen.items():
                weight = self._weight(name)
                flat = frozen.view(-1)
                count = round(portion * flat.numel()) - int(flat.sum())
                # eq. INQ.4: cpu float64 holds every fp16 / bf16 / fp32 magnitude exactly; free positions are in
                # increasing flat index, and a stable descending sort keeps that order among equal magnitudes.
                free = torch.nonzero(~flat.cpu()).squeeze(1)
                score = weight.detach().reshape(-1).cpu().double().abs()[free]
                chosen = free[torch.sort(score, descending=True, stable=True).indices[:count]].to(flat.device)
                quantized = quantize_power_of_two(weight, *self._levels[name]).reshape(-1)
                self._values[name].view(-1)[chosen] = quantized[chosen]
                flat[chosen] = True
        self._portion = portion
        self.apply()

    def _names(self) -> list[str]:
        return list(self._frozen)

    def _held_mask(self, name: str) -> torch.Tensor:
        return self._frozen[name]

    def _write_held(self) -> None:
        for name, frozen in self._frozen.items():
            weight = self._weight(name)
            weight.copy_(torch.where(frozen, self._values[name], weight))

    def frozen_fraction(self) -> FrozenFraction:
        """Frozen / numel per layer and overall, counted on the masks."""
        counts = {name: int(mask.sum()) for name, mask in self._frozen.items()}
        sizes = {name: mask.numel() for name, mask in self._frozen.items()}
        return FrozenFraction(
            layers={name: counts[name] / sizes[name] for name in counts},
            overall=sum(counts.values()) / sum(sizes.values()),
        )

    @torch.no_grad()
    def quantized_fraction(self) -> float:
        """Fraction of all included weights whose current value lies in their layer's ``P``, measured on the weights.

        A value is in ``P`` exactly when eq. INQ.3 leaves it unchanged. At least :meth:`frozen_fraction` while the
        hooks hold; 1.0 after the step at portion 1.
        """
        inside = total = 0
        for name, (n1, n2) in self._levels.items():
            weight = self._weight(name)
            inside += int((quantize_power_of_two(weight, n1, n2) == weight).sum())
            total += weight.numel()
        return inside / total


def incremental_quantize(
    model: nn.Module,
    bits: int,
    train: Callable[[nn.Module, int], None],
    portions: Sequence[float] = (0.5, 0.75, 0.875, 1.0),
    *,
    optimizer: torch.optim.Optimizer | None = None,
    include: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d),
) -> list[dict[str, object]]:
    """INQ's loop (Zhou et al., 2017, §2.3): for each accumulated portion, quantize and freeze, then retrain.

    Stage ``i``: :meth:`INQ.step` at ``portions[i]``, then ``train(model, i)``, then :meth:`INQ.apply` (a stage ends
    with its frozen values in force, whatever ``train`` did). ``train`` is called after the last step too, when every
    weight is frozen: biases and other modules (e.g. batch norm) can still adapt. Passing the ``optimizer`` that
    ``train`` steps keeps frozen weights bit-identical through its momentum and weight decay; without it only
    gradients are masked. All hooks are removed on return (or on an exception from ``train``).

    The schedule must end at 1.0, so the result is a fully quantized model; for a partial schedule use
    :class:`INQ` and :meth:`INQ.step` directly.

    Args:
        model: the model to quantize in place.
        bits: bit width in ``[2, 8]``; ``(n1, n2)`` per layer come from the weights before the first stage.
        train: ``train(model, stage_index)`` retrains the model after each step.
        portions: accumulated portions in ``(0, 1]``, strictly increasing, the last one 1.0.
        optimizer: the optimizer ``train`` steps, or None.
        include: module types whose ``.weight`` is quantized.

    Returns:
        One record per stage, measured after training: ``{"stage": i, "portion": p, "frozen": overall frozen
        fraction, "layers": {name: frozen fraction}, "quantized": fraction of weights in P}``.

    Raises:
        ValueError: an empty ``portions``, a portion outside ``(0, 1]``, portions that do not increase, a last
            portion other than 1.0, and any error of :class:`INQ`.

    Example:
        >>> model = nn.Linear(10, 10)
        >>> records = incremental_quantize(model, 4, train=lambda m, stage: None)
        >>> [(r["portion"], r["frozen"], r["quantized"]) for r in records][-1]
        (1.0, 1.0, 1.0)
        >>> [r["frozen"] for r in records]  # round(0.875 · 100) = 88 (half to even)
        [0.5, 0.75, 0.88, 1.0]
    """
    portions = [_check_portion(p, f"portions[{i}]") for i, p in enumerate(portions)]
    if not portions:
        raise ValueError("portions must not be empty")
    for i in range(1, len(portions)):
        if portions[i] <= portions[i - 1]:
            raise ValueError(f"portions must increase strictly, got {portions[i - 1]} then {portions[i]} at {i}")
    if portions[-1] != 1.0:
        raise ValueError(f"portions must end at 1.0, got {portions[-1]}; for a partial schedule use INQ.step")
    inq = INQ(model, bits, include)
    records: list[dict[str, object]] = []
    try:
        inq.attach(optimizer)
        for stage, portion in enumerate(portions):
            inq.step(portion)
            train(model, stage)
            inq.apply()
            measured = inq.frozen_fraction()
            records.append(
                {
                    "stage": stage,
                    "portion": portion,
                    "frozen": measured.overall,
                    "layers": measured.layers,
                    "quantized": inq.quantized_fraction(),
                }
            )
    finally:
        inq.detach()
    return records
