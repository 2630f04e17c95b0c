"""Vector k-means: the codebooks of product quantization (:mod:`lowbit.compress.product`).

Written like :func:`lowbit.functional.codebook.kmeans_1d`: float64 inside, deterministic under a seed, empty
clusters keep their centroid, stop when assignments repeat; k-means++ (greedy, as scikit-learn) or random
initialisation, best of ``restarts`` runs.

Example:
    >>> import torch
    >>> x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.0, 5.2]])
    >>> centroids, labels = kmeans_vectors(x, clusters=2, seed=0)
    >>> sorted(labels.tolist()) == [0, 0, 1, 1] and bool(labels[0] == labels[1])
    True
"""

from __future__ import annotations

import math
from enum import StrEnum

import torch

__all__ = ["VectorInit", "kmeans_vectors"]

class VectorInit(StrEnum):
    """How :func:`kmeans_vectors` places its first centroids.

    ``KMEANS_PLUS_PLUS`` is greedy k-means++ (Arthur & Vassilvitskii, 2007, as scikit-learn runs it): the first
    centroid is a uniformly drawn row; each next one is the best, by resulting inertia, of ``2 + ⌊ln k⌋`` rows
    drawn with probability proportional to their squared distance to the nearest centroid so far. ``RANDOM``
    (Forgy) takes ``k`` distinct rows in random order. A plain string with the value (``"kmeans++"``) is accepted
    wherever a ``VectorInit`` is.
    """

    KMEANS_PLUS_PLUS = "kmeans++"
    RANDOM = "random"


def _check_positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_iterations(iterations: object) -> int:
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be a non-negative int, got {iterations!r}")
    return iterations


def _check_seed(seed: object) -> int:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed must be an int or None, got {seed!r}")
    return 0 if seed is None else seed


def _check_init(init: VectorInit | str) -> VectorInit:
    try:
        return VectorInit(init)
    except ValueError:
        raise ValueError(f"init must be one of {[m.value for m in VectorInit]}, got {init!r}") from None


def _distances(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """``(n, k)`` Euclidean distances, summed from differences so that a row equal to a centroid is exactly 0.

    (The matmul form ``|x|² − 2x·c + |c|²`` cancels: two rows an ulp apart could then swap clusters, and a row
    could miss its own codeword.)
    """
    return torch.cdist(x, centroids, compute_mode="donot_use_mm_for_euclid_dist")


def _nearest(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid of every row; ties go to the lower index (``argmin``'s first minimum).

    The square root is monotone, so the nearest centroid is that of the squared distance; only distances that
    round to the same float64 root count as a tie.
    """
    return _distances(x, centroids).argmin(1)


def _init_kmeans_plus_plus(x: torch.Tensor, clusters: int, generator: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    trials = 2 + int(math.log(clusters))
    chosen = [int(torch.randint(n, (1,), generator=generator))]
    closest = _distances(x, x[chosen])[:, 0].square()
    for _ in range(1, clusters):
        cumulative = torch.cumsum(closest, 0)
        total = cumulative[-1]
        if total > 0:
            # Draw with probability ∝ D²: the first row whose running sum exceeds u. A row already at distance 0
            # adds nothing to the sum and is never drawn; u rounding up to the total maps to the last positive row.
            u = torch.rand(trials, generator=generator, dtype=torch.float64) * total
            last_positive = int(torch.nonzero(closest).max())
            candidates = torch.searchsorted(cumulative, u, right=True).clamp(max=last_positive)
            to_candidates = _distances(x, x[candidates]).square()
            potentials = torch.minimum(closest.unsqueeze(1), to_candidates).sum(0)
            pick = int(potentials.argmin())
            chosen.append(int(candidates[pick]))
            closest = torch.minimum(closest, to_candidates[:, pick])
        else:
            # Every row already is a centroid (fewer distinct rows than clusters): the surplus are duplicates.
            chosen.append(int(torch.randint(n, (1,), generator=generator)))
    return x[chosen].clone()


def _init_random(x: torch.Tensor, clusters: int, generator: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    drawn = x[torch.randperm(n, generator=generator)]
    distinct, inverse = torch.unique(drawn, dim=0, return_inverse=True)
    # Each distinct row enters at its first draw, in draw order (Forgy on samples, skipping repeats).
    first_draw = torch.full((distinct.shape[0],), n).scatter_reduce(0, inverse, torch.arange(n), reduce="amin")
    picked = drawn[torch.sort(first_draw).values[:clusters]]
    if picked.shape[0] < clusters:
        # Fewer distinct rows than clusters: the surplus repeat rows in draw order.
        picked = torch.cat([picked, drawn[torch.arange(clusters - picked.shape[0]) % n]])
    return picked.clone()


def kmeans_vectors(
    x: torch.Tensor,
    clusters: int,
    iterations: int = 50,
    seed: int | None = None,
    init: VectorInit | str = VectorInit.KMEANS_PLUS_PLUS,
    restarts: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on the rows of ``x``: the codebook of one product-quantization sub-space.

    Each iteration assigns every row to its nearest centroid (squared Euclidean distance) and moves every
    centroid to the mean of its rows; it stops after ``iterations`` updates or as soon as an assignment repeats.
    A cluster that receives no row keeps its previous centroid. Computed in float64 on the CPU.

    Fewer distinct rows than ``clusters`` (``n < k`` included) is allowed, not an error: the initialisation
    first takes every distinct row, and the surplus centroids duplicate rows. Ties go to the lower index, so a
    duplicate never receives a row and every row is reproduced exactly — what product quantization with
    ``k ≥ out`` needs. The surplus still costs codebook storage.

    Args:
        x: float tensor ``(n, d)``, ``n ≥ 1``, ``d ≥ 1``.
        clusters: number of centroids ``k ≥ 1``.
        iterations: maximum number of centroid updates, ``≥ 0`` (0 returns the initial centroids).
        seed: seed of the initialisation's draws; ``None`` means 0, so results never depend on global RNG state.
        init: a :class:`VectorInit` or its string value, ``"kmeans++"`` (default) or ``"random"``.
        restarts: independent runs (initialisation + Lloyd), ``≥ 1``; the one with the least inertia
            ``Σ‖x − c‖²`` is returned, the earliest on a tie (scikit-learn's ``n_init``). The runs draw from one
            generator in turn, so ``restarts=r`` begins with the ``restarts=1`` run.

    Returns:
        ``(centroids, assignments)``: ``(k, d)`` centroids in the dtype of ``x`` and int64 ``(n,)`` indices of
        the nearest centroid of each row (ties to the lower index).

    Raises:
        ValueError: ``x`` not a 2-D floating tensor with at least one row and column, NaN or Inf in it,
            ``clusters`` / ``iterations`` / ``restarts`` not a valid int, a non-int ``seed``, or an unknown ``init``.

    Example:
        >>> x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [10.0, 0.0], [10.0, 1.0]])
        >>> centroids, idx = kmeans_vectors(x, clusters=2, seed=0)
        >>> sorted(centroids.tolist()), bool(idx[0] == idx[1] != idx[2] == idx[3])
        ([[0.0, 0.5], [10.0, 0.5]], True)
        >>> kmeans_vectors(x[:1], clusters=3)[1]     # n < k: surplus centroids duplicate rows, stay empty
        tensor([0])
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim != 2:
        raise ValueError(
            f"x must be a 2-D floating tensor (n, d), got {getattr(x, 'dtype', type(x))} "
            f"of shape {tuple(getattr(x, 'shape', ()))}"
        )
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"x must have at least one row and one column, got shape {tuple(x.shape)}")
    _check_positive_int(clusters, "clusters")
    _check_iterations(iterations)
    _check_positive_int(restarts, "restarts")
    mode = _check_init(init)
    generator = torch.Generator().manual_seed(_check_seed(seed))
    data = x.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(data).all()):
        raise ValueError("kmeans_vectors got NaN or Inf values")
    best: tuple[float, torch.Tensor, torch.Tensor] | None = None
    for _ in range(restarts):
        centroids, assignments = _lloyd(data, clusters, iterations, mode, generator)
        inertia = float((data - centroids[assignments]).square().sum())
        if best is None or inertia < best[0]:
            best = (inertia, centroids, assignments)
    assert best is not None
    return best[1].to(dtype=x.dtype, device=x.device), best[2].to(x.device)


def _lloyd(
    data: torch.Tensor, clusters: int, iterations: int, mode: VectorInit, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One run of :func:`kmeans_vectors` on float64 CPU ``data``: initialisation, then Lloyd's iterations."""
    if mode is VectorInit.KMEANS_PLUS_PLUS:
        centroids = _init_kmeans_plus_plus(data, clusters, generator)
    else:
        centroids = _init_random(data, clusters, generator)
    previous: torch.Tensor | None = None
    for _ in range(iterations):
        assignments = _nearest(data, centroids)
        if previous is not None and torch.equal(assignments, previous):
            break
        counts = torch.bincount(assignments, minlength=clusters).unsqueeze(1)
        sums = torch.zeros_like(centroids).index_add_(0, assignments, data)
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        previous = assignments
    return centroids, _nearest(data, centroids)
