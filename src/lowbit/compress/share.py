"""Trained quantization: k-means weight sharing with centroid fine-tuning (Han et al., 2016, §3).

Each layer's kept (non-zero) weights are clustered into ``2^bits − 1`` shared values by
:func:`lowbit.functional.codebook.kmeans_1d`; code 0 is reserved for the exact zero of pruned weights (and for
the filler entries of the sparse index, see :mod:`~lowbit.compress.sparse_index`), so every stored weight is a
``bits``-bit code. The layer's weight becomes a function of its codebook — ``table = [0, c_1, …, c_{2^b−1}]``,
``W = table[codes]`` — through :mod:`torch.nn.utils.parametrize`, so training updates the centroids, not the
weights: the gradient of a centroid is the sum of the gradients of the weights sharing it (backward of a gather
is a scatter-add), the paper's fine-tuning rule (Eq. 3). The codes never change, and pruned weights stay exactly
zero because their code points at the fixed 0.

Example:
    >>> import torch
    >>> from torch import nn
    >>> torch.manual_seed(0)
    <torch._C.Generator object at ...>
    >>> model = nn.Sequential(nn.Linear(8, 4))
    >>> layers = share_weights(model, bits=2)
    >>> torch.unique(model[0].weight).numel() <= 2**2   # three shared values (and maybe no zero)
    True
    >>> loss = model(torch.randn(5, 8)).square().sum()
    >>> loss.backward()
    >>> layers["0"].centroids.grad.shape                  # one gradient per shared value, not per weight
    torch.Size([3])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from lowbit.functional.codebook import KMeansInit, check_shared_bits, kmeans_1d, lookup_with_zero

__all__ = ["SharedWeight", "SharedLayer", "share_weights", "shared_layers", "unshare_weights"]


class SharedWeight(nn.Module):
    """Parametrization ``centroids ↦ [0, *centroids][codes]`` of a layer's weight (codes fixed, int64 buffer)."""

    def __init__(self, codes: torch.Tensor, centroids: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("codes", codes)
        self._initial = centroids  # what right_inverse hands to parametrize as the trainable tensor

    def forward(self, centroids: torch.Tensor) -> torch.Tensor:
        return lookup_with_zero(centroids, self.codes)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        if self._initial is None:  # assigning layer.weight = t later cannot be mapped back to centroids
            raise ValueError("a shared weight cannot be assigned; set its centroids "
                             "(module.parametrizations.weight.original) or unshare_weights first")
        initial, self._initial = self._initial, None
        return initial


@dataclass(frozen=True)
class SharedLayer:
    """A shared layer as its file stores it: ``codes`` (shaped like the weight; 0 = zero) and ``centroids``."""

    module: nn.Module
    bits: int

    @property
    def codes(self) -> torch.Tensor:
        return self.module.parametrizations.weight[0].codes

    @property
    def centroids(self) -> nn.Parameter:
        return self.module.parametrizations.weight.original


def share_weights(
    model: nn.Module,
    bits: int | dict[str, int],
    init: KMeansInit | str = KMeansInit.LINEAR,
    *,
    include: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d),
    iterations: int = 50,
    seed: int = 0,
) -> dict[str, SharedLayer]:
    """Cluster every included layer's non-zero weights into ``2^bits − 1`` shared values, in place.

    Build the optimizer *after* this call: the layers' trainable tensors are now their centroids.

    Args:
        model: a (pruned or dense) model; zero weights are treated as pruned and stay zero.
        bits: code width for every layer, or ``{layer name: bits}`` (layers not named are left alone).
        init: k-means initialisation (linear over ``[min, max]`` is the paper's).
        include: module types whose ``.weight`` is shared.
        iterations: maximum Lloyd iterations.
        seed: seed of the random initialisation.

    Returns:
        ``{layer name: SharedLayer}`` in module order.

    Raises:
        ValueError: bad ``bits`` (named), a layer already shared, or a named layer that is missing or not included.
    """
    per_layer = bits if isinstance(bits, dict) else None
    if per_layer is None:
        check_shared_bits(bits)
    modules = dict(model.named_modules())
    if per_layer is not None:
        for name, width in per_layer.items():
            check_shared_bits(width)
            if not isinstance(modules.get(name), include):
                raise ValueError(f"bits names layer {name!r}, which is not a {'/'.join(t.__name__ for t in include)}"
                                 " of the model")
    shared: dict[str, SharedLayer] = {}
    for name, module in modules.items():
        if not isinstance(module, include):
            continue
        width = per_layer.get(name) if per_layer is not None else bits
        if width is None:
            continue
        if parametrize.is_parametrized(module, "weight"):
            raise ValueError(f"layer {name!r} already has a weight parametrization (shared twice?)")
        weight = module.weight.detach()
        kept = weight != 0
        codes = torch.zeros(weight.shape, dtype=torch.int64)
        if bool(kept.any()):
            centroids, assignment = kmeans_1d(weight[kept], (1 << width) - 1, init, iterations, seed=seed)
            codes[kept] = assignment + 1
        else:  # an all-pruned layer: codes all 0; its centroids are never used
            centroids = weight.new_zeros((1 << width) - 1)
        parametrize.register_parametrization(module, "weight", SharedWeight(codes, centroids.to(weight.dtype)),
                                             unsafe=True)
        shared[name] = SharedLayer(module, width)
    return shared


def shared_layers(model: nn.Module) -> dict[str, SharedLayer]:
    """The layers of ``model`` whose weight is a :class:`SharedWeight`, in module order."""
    found = {}
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            chain = module.parametrizations.weight
            if len(chain) == 1 and isinstance(chain[0], SharedWeight):
                width = max(1, int(chain.original.numel() + 1).bit_length() - 1)
                found[name] = SharedLayer(module, width)
    return found


def unshare_weights(model: nn.Module) -> int:
    """Bake every shared weight back into a plain parameter (the current shared values); returns how many."""
    layers = shared_layers(model)
    for layer in layers.values():
        parametrize.remove_parametrizations(layer.module, "weight", leave_parametrized=True)
    return len(layers)
