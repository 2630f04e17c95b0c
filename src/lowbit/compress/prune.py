"""Deep Compression's magnitude pruning (Han et al., 2015; 2016, §2) with masks that hold through training.

Three pieces, pure math first:

- :func:`magnitude_masks` ranks weights by ``|w|`` and returns boolean keep-masks (True = kept) for the
  ``.weight`` of every included module; biases are never pruned.
- :class:`Pruner` owns the masks for a model: :meth:`Pruner.apply` zeros the pruned weights and
  :meth:`Pruner.attach` makes them *stay* zero while an optimizer trains — the gradient is masked, and after every
  ``optimizer.step()`` the pruned weights and the optimizer's state at pruned positions (momentum, Adam moments)
  are zeroed, so neither momentum nor (decoupled) weight decay can move a pruned weight.
- :func:`prune_iteratively` is the paper's prune → retrain loop over increasing target sparsities.

Counting rule: a layer (``scope="layer"``) or the whole set of included weights (``scope="global"``) with ``n``
weights keeps exactly ``n − round(sparsity · n)`` of them (Python's ``round``: half to even). Ties among equal
magnitudes are broken by position — a stable sort, so of two equal ``|w|`` the one with the lower flat
(row-major) index is pruned first; globally, positions are ordered by module (``named_modules`` order), then
flat index.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from lowbit.compress import Pruner, magnitude_masks
    >>> layer = nn.Linear(4, 2)
    >>> with torch.no_grad():
    ...     _ = layer.weight.copy_(torch.tensor([[0.1, -0.5, 0.3, 0.0], [2.0, -0.2, 0.4, -1.0]]))
    >>> masks = magnitude_masks(layer, 0.5)
    >>> masks[""].int().tolist()
    [[0, 1, 0, 0], [1, 0, 1, 1]]
    >>> pruner = Pruner(layer, masks)
    >>> pruner.apply()
    >>> pruner.sparsity().overall
    0.5
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import torch
from torch import nn

from lowbit.compress.hold import WeightHold

__all__ = ["PruneScope", "Sparsity", "magnitude_masks", "Pruner", "prune_iteratively"]


class PruneScope(StrEnum):
    """Which weights share one magnitude ranking.

    ``LAYER``: each module's weight on its own, each losing its ``sparsity`` fraction. ``GLOBAL``: all included
    weights together under one threshold, so layers with many small weights lose more. A plain string with the
    value (``"layer"``) is accepted wherever a ``PruneScope`` is.
    """

    LAYER = "layer"
    GLOBAL = "global"


@dataclass(frozen=True)
class Sparsity:
    """Measured fraction of weights that are exactly zero.

    Attributes:
        layers: module name → zeros / numel of that module's ``.weight``.
        overall: total zeros / total numel over those weights.
    """

    layers: dict[str, float]
    overall: float


def _check_scope(scope: PruneScope | str) -> PruneScope:
    try:
        return PruneScope(scope)
    except ValueError:
        raise ValueError(f"scope must be one of {[s.value for s in PruneScope]}, got {scope!r}") from None


def _check_sparsity(value: object, name: str) -> float:
    # bool is a number subclass; True as a sparsity is a bug. 1.0 would prune everything and leave no model.
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a float in [0, 1), got {value!r}")
    return float(value)


def _included(model: nn.Module, include: tuple[type[nn.Module], ...]) -> dict[str, torch.Tensor]:
    return {
        name: module.weight
        for name, module in model.named_modules()
        if isinstance(module, include) and isinstance(getattr(module, "weight", None), torch.Tensor)
    }


def _scores(weight: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
    """Flat ranking keys, smallest pruned first: ``|w|``, with positions ``previous`` already prunes at -1."""
    # cpu float64 holds every fp16 / bf16 / fp32 magnitude exactly, so keys compare as the weights' own values.
    score = weight.detach().abs().reshape(-1).cpu().double()
    if previous is not None:
        score = torch.where(previous.reshape(-1).cpu().bool(), score, -1.0)  # |w| >= 0, so -1 ranks first
    return score


def magnitude_masks(
    model: nn.Module,
    sparsity: float | Mapping[str, float],
    scope: PruneScope | str = PruneScope.LAYER,
    include: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d),
    *,
    previous: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Keep-masks that prune the smallest-magnitude weights of the included modules.

    Args:
        model: the model; every module that is an instance of ``include`` and has a ``.weight`` tensor is ranked.
        sparsity: fraction of weights to prune, in ``[0, 1)``. With ``scope="layer"`` a mapping gives one
            sparsity per module name; only those modules get masks.
        scope: ``"layer"`` (each weight ranked on its own) or ``"global"`` (one ranking, one threshold, over all).
        include: module types whose ``.weight`` is pruned. Biases are never pruned.
        previous: masks of an earlier pruning stage. The positions they prune are ranked first, so the new masks
            are subsets of them (no weight is revived) and the exact counts still hold.

    Returns:
        module name → bool tensor of the weight's shape and device, True where the weight is kept. A weight of
        ``n`` elements (or, globally, all ``n`` included elements) keeps exactly ``n − round(sparsity · n)``.

    Raises:
        ValueError: a sparsity outside ``[0, 1)``, an unknown ``scope``, a mapping naming a module that is not
            included (or a mapping with ``scope="global"``), ``previous`` naming an unknown module or with a wrong
            shape, or a sparsity that prunes fewer weights than ``previous`` already does.

    Example:
        >>> model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> masks = magnitude_masks(model, {"0": 0.5})  # 9 weights: round(4.5) = 4 pruned (half to even)
        >>> list(masks), int(masks["0"].sum())
        (['0'], 5)
    """
    scope = _check_scope(scope)
    weights = _included(model, include)
    if isinstance(sparsity, Mapping):
        if scope is PruneScope.GLOBAL:
            raise ValueError("sparsity must be one float with scope='global', got a mapping of per-layer values")
        unknown = sorted(set(sparsity) - set(weights))
        if unknown:
            raise ValueError(f"sparsity names modules that are not included: {unknown}; included: {list(weights)}")
        targets = {name: _check_sparsity(s, f"sparsity[{name!r}]") for name, s in sparsity.items()}
    else:
        targets = dict.fromkeys(weights, _check_sparsity(sparsity, "sparsity"))
    previous = dict(previous or {})
    for name, mask in previous.items():
        if name not in weights:
            raise ValueError(f"previous names a module that is not included: {name!r}")
        if tuple(mask.shape) != tuple(weights[name].shape):
            raise ValueError(
                f"previous[{name!r}] must have the weight's shape {tuple(weights[name].shape)}, got {tuple(mask.shape)}"
            )

    def already(name: str) -> int:
        return int((~previous[name].bool()).sum()) if name in previous else 0

    masks = {name: torch.ones(weights[name].shape, dtype=torch.bool) for name in targets}
    if scope is PruneScope.LAYER:
        for name, fraction in targets.items():
            count = round(fraction * masks[name].numel())
            if count < already(name):
                raise ValueError(
                    f"sparsity[{name!r}]={fraction} prunes {count} weights, fewer than the {already(name)} already pruned"
                )
            # A stable sort: among equal keys the lower flat index is pruned first (the module docstring's rule).
            order = torch.sort(_scores(weights[name], previous.get(name)), stable=True).indices
            masks[name].view(-1)[order[:count]] = False
        return {name: mask.to(weights[name].device) for name, mask in masks.items()}

    # Global: one stable ranking over the concatenated keys, in named_modules order, then split back.
    names = list(targets)
    if not names:
        return {}
    score = torch.cat([_scores(weights[name], previous.get(name)) for name in names])
    count = round(targets[names[0]] * score.numel())
    pruned_before = sum(already(name) for name in names)
    if count < pruned_before:
        raise ValueError(
            f"sparsity={targets[names[0]]} prunes {count} weights, fewer than the {pruned_before} already pruned"
        )
    keep = torch.ones(score.numel(), dtype=torch.bool)
    keep[torch.sort(score, stable=True).indices[:count]] = False
    parts = torch.split(keep, [masks[name].numel() for name in names])
    return {name: part.view(weights[name].shape).to(weights[name].device) for name, part in zip(names, parts)}


class Pruner(WeightHold):
    """Masks for a model's weights, and the hooks that keep pruned weights at zero during training
    (:class:`~lowbit.compress.hold.WeightHold`: ``attach``, ``detach``, ``apply``).

    The masks (module name → bool keep-mask of the weight's shape) are the only state; weights are looked up by
    module name at every use, so after the weights are replaced — e.g. by k-means centroids — :meth:`apply` and
    :meth:`sparsity` act on the new values. Replacing a weight's ``nn.Parameter`` *object* needs
    ``detach()`` then ``attach(new_optimizer)``, since the gradient hooks live on the parameter tensors.

    Args:
        model: the model the names refer to.
        masks: module name → bool tensor of that module's ``.weight`` shape, True = kept.

    Raises:
        ValueError: a name that is not a module with a ``.weight`` tensor, or a mask that is not bool or has
            the wrong shape.

    Example:
        >>> model = nn.Linear(8, 4)
        >>> pruner = Pruner(model, magnitude_masks(model, 0.75))
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
        >>> pruner.attach(optimizer)  # zeros the pruned weights now, and keeps them zero
        >>> for _ in range(3):
        ...     optimizer.zero_grad()
        ...     model(torch.randn(5, 8)).square().sum().backward()
        ...     optimizer.step()
        >>> int((model.weight == 0).sum())
        24
        >>> pruner.detach()
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
        super().__init__(model)
        self._masks = {name: self._checked(name, mask) for name, mask in masks.items()}

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """Module name → current keep-mask (a copy of the mapping; the tensors are the pruner's own)."""
        return dict(self._masks)

    def _weight(self, name: str) -> torch.Tensor:
        try:
            module = self.model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"masks name {name!r}, which is not a module of the model") from None
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            raise ValueError(f"masks name {name!r}, a {type(module).__name__} without a .weight tensor")
        return weight

    def _checked(self, name: str, mask: torch.Tensor) -> torch.Tensor:
        weight = self._weight(name)
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise ValueError(f"masks[{name!r}] must be a bool tensor, got {getattr(mask, 'dtype', type(mask))}")
        if mask.shape != weight.shape:
            raise ValueError(f"masks[{name!r}] must have shape {tuple(weight.shape)}, got {tuple(mask.shape)}")
        return mask.to(weight.device)

    def _names(self) -> list[str]:
        return list(self._masks)

    def _held_mask(self, name: str) -> torch.Tensor:
        return ~self._masks[name]

    def _write_held(self) -> None:
        for name, mask in self._masks.items():
            self._weight(name).masked_fill_(~mask, 0)

    def update(self, masks: Mapping[str, torch.Tensor]) -> None:
        """Replace masks by smaller ones (iterative pruning) and apply them at once.

        Masks can only shrink: a pruned weight stays pruned, because its value and optimizer state are already
        gone and reviving it would restart it from zero, not from where pruning found it. Names left out keep
        their current masks; attached hooks read the new masks from here on.

        Args:
            masks: name → new keep-mask, for names this pruner already masks.

        Raises:
            ValueError: a name this pruner does not mask, a bad mask (see the constructor), or a mask that keeps
                a position the current mask prunes.
        """
        checked = {}
        for name, mask in masks.items():
            if name not in self._masks:
                raise ValueError(f"update names {name!r}, which this pruner does not mask; masked: {list(self._masks)}")
            mask = self._checked(name, mask)
            revived = int((mask & ~self._masks[name]).sum())
            if revived:
                raise ValueError(f"masks[{name!r}] would revive {revived} pruned weights; masks can only shrink")
            checked[name] = mask
        self._masks.update(checked)
        self.apply()

    @torch.no_grad()
    def sparsity(self) -> Sparsity:
        """Fraction of exactly-zero weights, measured on the current weights, per masked layer and overall."""
        zeros = {name: int((self._weight(name) == 0).sum()) for name in self._masks}
        sizes = {name: mask.numel() for name, mask in self._masks.items()}
        total = sum(sizes.values())
        return Sparsity(
            layers={name: zeros[name] / sizes[name] if sizes[name] else 0.0 for name in self._masks},
            overall=sum(zeros.values()) / total if total else 0.0,
        )


def prune_iteratively(
    model: nn.Module,
    targets: Sequence[float],
    train: Callable[[nn.Module, int], None],
    scope: PruneScope | str = PruneScope.LAYER,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    include: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d),
) -> list[dict[str, object]]:
    """Deep Compression's prune → retrain loop (Han et al., 2015, §3.3) over increasing target sparsities.

    Stage ``i``: masks for ``targets[i]`` ranked with the previous stage's pruned positions first (so no pruned
    weight ever comes back and the exact counts of :func:`magnitude_masks` hold), applied, then ``train(model,
    i)``. The caller trains with its own loop and optimizer; passing that same ``optimizer`` here lets the masks
    hold through its momentum and weight decay for the whole loop (see :meth:`Pruner.attach`). Without it only
    gradients are masked during training (enough for plain SGD). Either way the masks are re-applied after each
    stage, and all hooks are removed on return, leaving the last masks applied.

    Args:
        model: the model to prune in place.
        targets: sparsities in ``[0, 1)``, non-decreasing.
        train: ``train(model, stage_index)`` retrains the model after each pruning step.
        scope: ``"layer"`` or ``"global"``, as in :func:`magnitude_masks`.
        optimizer: the optimizer ``train`` steps, or None.
        include: module types whose ``.weight`` is pruned.

    Returns:
        One record per stage: ``{"stage": i, "target": t, "sparsity": overall measured after training,
        "layers": {name: measured}, "masks": {name: keep-mask}}``.

    Raises:
        ValueError: a target outside ``[0, 1)``, targets that decrease, or an unknown ``scope``.

    Example:
        >>> model = nn.Linear(10, 10)
        >>> records = prune_iteratively(model, [0.5, 0.8], train=lambda m, stage: None)
        >>> [(r["target"], r["sparsity"]) for r in records]
        [(0.5, 0.5), (0.8, 0.8)]
    """
    targets = [_check_sparsity(t, f"targets[{i}]") for i, t in enumerate(targets)]
    for i in range(1, len(targets)):
        if targets[i] < targets[i - 1]:
            raise ValueError(f"targets must be non-decreasing, got {targets[i - 1]} then {targets[i]} at {i}")
    scope = _check_scope(scope)
    records: list[dict[str, object]] = []
    pruner: Pruner | None = None
    try:
        for stage, target in enumerate(targets):
            previous = pruner.masks if pruner is not None else None
            masks = magnitude_masks(model, target, scope, include, previous=previous)
            if pruner is None:
                pruner = Pruner(model, masks)
                pruner.attach(optimizer)
            else:
                pruner.update(masks)
            train(model, stage)
            pruner.apply()  # a stage ends with its masks in force, whatever train did
            measured = pruner.sparsity()
            record = {"stage": stage, "target": target, "sparsity": measured.overall, "layers": measured.layers}
            records.append({**record, "masks": pruner.masks})
    finally:
        if pruner is not None:
            pruner.detach()
    return records
