"""Non-uniform codes: the 8-bit dynamic tree map and block-wise quantization against any sorted code.

A code is a sorted 1-D float32 tensor of values in ``[−1, 1]``; a tensor is stored as indices into it plus one
float32 ``absmax`` per block (docs/math.md, eqs. 14–15). The dynamic tree map (Dettmers, "8-Bit Approximations
for Parallelism in Deep Learning", 2016) is reproduced value for value as bitsandbytes builds it, so 8-bit
optimizer state written by lowbit means the same numbers as bitsandbytes'.

A learned code comes from :func:`kmeans_1d`, the scalar k-means of Deep Compression's weight sharing (Han et
al., 2016, §3): each weight is replaced by the index of its cluster's centroid.

Example:
    >>> import torch
    >>> code = create_dynamic_map(signed=True)
    >>> len(code), round(float(code[0]), 6), float(code[-1])
    (256, -0.992969, 1.0)
    >>> x = torch.tensor([0.5, -0.01, 0.0, 2.0])
    >>> codes, absmax = quantize_blockwise(x, code, block_size=256)
    >>> dequantize_blockwise(codes, absmax, code, block_size=256)
    tensor([ 0.4953, -0.0104,  0.0000,  2.0000])
"""

from __future__ import annotations

from enum import StrEnum

import torch

__all__ = ["create_dynamic_map", "create_linear_map", "quantize_blockwise", "dequantize_blockwise", "KMeansInit", "kmeans_1d",
           "check_shared_bits", "lookup_with_zero"]


def _segment_midpoints(count: int) -> torch.Tensor:
    """Midpoints of ``count`` equal segments of ``[0.1, 1]``, computed in float32 as the published map is."""
    edges = torch.linspace(0.1, 1.0, count + 1, dtype=torch.float32)
    return (edges[:-1] + edges[1:]) / 2.0


def create_dynamic_map(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> torch.Tensor:
    """The dynamic tree code: ``2^total_bits`` sorted float32 values in ``[−1, 1]`` (docs/math.md, eq. 13).

    A code's bits read: sign (if ``signed``), a run of zeros whose length ``e`` is the decimal exponent, an
    indicator 1, then linear fraction bits. Exponent level ``i = 0 … max_exponent_bits−1`` covers the decade
    ``10^(i − max_exponent_bits + 1)`` with the midpoints of ``2^(i + total_bits − 1 − max_exponent_bits)`` equal
    segments of ``[0.1, 1]`` (twice as many when unsigned: the sign bit becomes a fraction bit). When the exponent
    cannot use all non-sign bits, ``2^(total_bits − 1 − max_exponent_bits) − 1`` more midpoints fill the top
    decade. ``0`` and ``1`` complete the code.

    bitsandbytes pads codes shorter than 256 with zeros so its uint8 kernels can index them; this function
    returns exactly ``2^total_bits`` values (the padding carries no information).

    Args:
        signed: values in ``[−1, 1]`` (e.g. Adam's first moment) or ``[0, 1]`` (second moment).
        max_exponent_bits: the longest zero run, i.e. how many decades below 1 are covered.
        total_bits: bits per code, 2..8.

    Returns:
        Sorted float32 tensor of ``2^total_bits`` values.

    Raises:
        ValueError: ``total_bits`` outside 2..8, ``max_exponent_bits`` outside 1..total_bits−1, or an unsigned
            map with ``max_exponent_bits < total_bits − 1`` (the construction then yields fewer than
            ``2^total_bits`` values; bitsandbytes fails an assertion there).

    Example:
        >>> m = create_dynamic_map(signed=False)
        >>> len(m), float(m[0]), round(float(m[1]), 12), float(m[-1])
        (256, 0.0, 3.25e-07, 1.0)
    """
    if not isinstance(total_bits, int) or not 2 <= total_bits <= 8:
        raise ValueError(f"total_bits must be an int in 2..8, got {total_bits!r}")
    if not isinstance(max_exponent_bits, int) or not 1 <= max_exponent_bits <= total_bits - 1:
        raise ValueError(f"max_exponent_bits must be an int in 1..{total_bits - 1}, got {max_exponent_bits!r}")
    if not signed and max_exponent_bits != total_bits - 1:
        raise ValueError(
            f"an unsigned dynamic map needs max_exponent_bits = total_bits - 1 = {total_bits - 1}, "
            f"got max_exponent_bits={max_exponent_bits}"
        )
    # One bit is reserved for the sign even when unsigned: the unsigned map spends it on a doubled fraction.
    value_bits = total_bits - 1
    parts: list[torch.Tensor] = []

    def add(magnitudes: torch.Tensor, decade: float) -> None:
        parts.append(decade * magnitudes)
        if signed:
            parts.append(-decade * magnitudes)

    for level in range(max_exponent_bits):
        fraction_bits = level + value_bits - max_exponent_bits + (0 if signed else 1)
        add(_segment_midpoints(2**fraction_bits), 10.0 ** (level - max_exponent_bits + 1))
    spare = 2 ** (value_bits - max_exponent_bits) - 1
    if spare > 0:
        # Codes whose exponent run is all zeros with no indicator bit: extra points in the top decade.
        add(_segment_midpoints(spare), 10.0 ** 0)
    values = torch.cat(parts + [torch.tensor([0.0, 1.0])])
    return torch.sort(values).values


def create_linear_map(signed: bool = True, total_bits: int = 8) -> torch.Tensor:
    """Evenly spaced code values: the plain linear map that 8-bit optimizer state is compared against.

    Signed: ``2^total_bits − 1`` values from −1 to 1, an odd count so that 0 is a code value (an all-zero state
    stays exactly zero); unsigned: ``2^total_bits`` values from 0 to 1. Near zero its step is ``2/(2^bits − 2)``, so
    the small second moments of rarely-updated weights round to 0 — the failure the dynamic map avoids (Dettmers
    et al., "8-bit Optimizers via Block-wise Quantization", 2022, §4 ablation: a linear map diverges).

    Raises:
        ValueError: ``total_bits`` outside 2..8.

    Example:
        >>> create_linear_map(signed=True, total_bits=2)
        tensor([-1.,  0.,  1.])
        >>> len(create_linear_map(signed=False)), float(create_linear_map(signed=False)[1])
        (256, 0.003921568859368563)
    """
    if isinstance(total_bits, bool) or not isinstance(total_bits, int) or not 2 <= total_bits <= 8:
        raise ValueError(f"total_bits must be an int in 2..8, got {total_bits!r}")
    # Integers over the step count rather than linspace, whose float32 interpolation misses 0 by about 4e-9.
    steps = 2 ** (total_bits - 1) - 1 if signed else 2**total_bits - 1
    first = -steps if signed else 0
    return torch.arange(first, steps + 1, dtype=torch.float64).div(steps).to(torch.float32)


def _check_block_args(code: torch.Tensor, block_size: int) -> None:
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    if code.ndim != 1 or code.numel() < 2 or code.numel() > 256:
        raise ValueError(f"code must be a 1-D tensor of 2..256 values, got shape {tuple(code.shape)}")
    if not bool((code[1:] >= code[:-1]).all()):
        raise ValueError("code must be sorted ascending")


def quantize_blockwise(
    x: torch.Tensor, code: torch.Tensor, block_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-wise absmax quantization of ``x`` against ``code`` (docs/math.md, eq. 14).

    ``x`` is read flat in blocks of ``block_size`` (the last one may be short); each block is divided by its
    largest magnitude and every value is replaced by the index of the nearest code value. A value exactly
    halfway between two code values takes the lower index. An all-zero block has ``absmax = 0`` and maps to
    the code value nearest 0.

    Args:
        x: float tensor, any shape.
        code: sorted float32 code (e.g. :func:`create_dynamic_map`).
        block_size: elements per block (256 or 2048 for 8-bit optimizers).

    Returns:
        ``(codes, absmax)``: uint8 indices shaped like ``x`` and float32 ``absmax`` of ``ceil(numel/block_size)``.

    Raises:
        ValueError: bad ``block_size`` or ``code``, a non-float ``x``, or NaN/Inf in ``x``.

    Example:
        >>> code = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0])
        >>> quantize_blockwise(torch.tensor([4.0, -1.1, 0.9, 1.0]), code, block_size=2)
        (tensor([4, 1, 4, 4], dtype=torch.uint8), tensor([4., 1.]))
    """
    _check_block_args(code, block_size)
    if not x.is_floating_point():
        raise ValueError(f"quantize_blockwise needs a floating tensor, got {x.dtype}")
    flat = x.detach().reshape(-1).to(torch.float32)
    if not bool(torch.isfinite(flat).all()):
        raise ValueError("quantize_blockwise got NaN or Inf values")
    blocks = -(-flat.numel() // block_size)
    padded = torch.nn.functional.pad(flat, (0, blocks * block_size - flat.numel())).view(blocks, block_size)
    absmax = padded.abs().amax(dim=1)
    # Dividing by 1 where absmax is 0 keeps zeros at 0 instead of producing NaN.
    normalized = padded / torch.where(absmax > 0, absmax, 1.0).unsqueeze(1)
    code32 = code.to(torch.float32)
    midpoints = (code32[1:] + code32[:-1]) / 2
    indices = torch.bucketize(normalized, midpoints, right=False)
    return indices.reshape(-1)[: flat.numel()].to(torch.uint8).view(x.shape), absmax


def dequantize_blockwise(
    codes: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, block_size: int = 256
) -> torch.Tensor:
    """Float32 values ``code[codes] · absmax[block]`` shaped like ``codes`` (docs/math.md, eq. 15).

    Raises:
        ValueError: bad ``block_size`` or ``code``, non-uint8 codes, or an ``absmax`` of the wrong length.

    Example:
        >>> code = torch.tensor([-1.0, 0.0, 1.0])
        >>> dequantize_blockwise(torch.tensor([0, 2, 1], dtype=torch.uint8), torch.tensor([3.0, 5.0]), code, 2)
        tensor([-3.,  3.,  0.])
    """
    _check_block_args(code, block_size)
    if codes.dtype != torch.uint8:
        raise ValueError(f"codes must be uint8, got {codes.dtype}")
    blocks = -(-codes.numel() // block_size)
    if absmax.shape != (blocks,):
        raise ValueError(f"absmax must have shape ({blocks},) for {codes.numel()} codes, got {tuple(absmax.shape)}")
    values = code.to(torch.float32)[codes.reshape(-1).long()]
    scales = absmax.to(torch.float32).repeat_interleave(block_size)[: codes.numel()]
    return (values * scales).view(codes.shape)


class KMeansInit(StrEnum):
    """How :func:`kmeans_1d` places its first centroids (Han et al., 2016, §3.2).

    ``LINEAR`` spaces them evenly over ``[min, max]`` — the paper's choice, since it keeps centroids on the few
    large weights that matter most. ``DENSITY`` puts them at the quantiles ``(i + ½)/k`` of the values (the
    centres of ``k`` equal-probability bins), ``RANDOM`` (Forgy) at ``k`` distinct values of randomly drawn
    samples. A plain string with the value (``"linear"``) is accepted wherever a ``KMeansInit`` is.
    """

    LINEAR = "linear"
    DENSITY = "density"
    RANDOM = "random"


def _kmeans_init(x: torch.Tensor, clusters: int, init: KMeansInit, seed: int) -> torch.Tensor:
    """Initial centroids (float64, sorted ascending) for the flat float64 values ``x``."""
    if init is KMeansInit.LINEAR:
        return torch.linspace(float(x.min()), float(x.max()), clusters, dtype=torch.float64)
    if init is KMeansInit.DENSITY:
        # Quantiles by linear interpolation between order statistics (numpy's default method); torch.quantile
        # would refuse inputs of more than 2^24 values.
        ordered = torch.sort(x).values
        at = (torch.arange(clusters, dtype=torch.float64) + 0.5) / clusters * (x.numel() - 1)
        low = at.floor().long()
        high = torch.clamp(low + 1, max=x.numel() - 1)
        return torch.lerp(ordered[low], ordered[high], at - low)
    generator = torch.Generator().manual_seed(seed)
    drawn = x[torch.randperm(x.numel(), generator=generator)]
    distinct, inverse = torch.unique(drawn, return_inverse=True)
    if distinct.numel() < clusters:
        raise ValueError(f"init='random' needs at least clusters={clusters} distinct values, got {distinct.numel()}")
    # Forgy on samples, skipping repeats: each distinct value enters at its first draw, in draw order.
    first_draw = torch.full((distinct.numel(),), x.numel()).scatter_reduce(
        0, inverse, torch.arange(x.numel()), reduce="amin"
    )
    return torch.sort(distinct[torch.argsort(first_draw)[:clusters]]).values


def _nearest(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest sorted centroid for every value; a value halfway between two takes the lower one."""
    # In 1-D the Voronoi cells are the intervals between midpoints, so a binary search replaces k distances.
    midpoints = (centroids[1:] + centroids[:-1]) / 2
    return torch.searchsorted(midpoints, x, right=False)


def kmeans_1d(
    values: torch.Tensor,
    clusters: int,
    init: KMeansInit | str = KMeansInit.LINEAR,
    iterations: int = 50,
    seed: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on scalars: the shared weights of Deep Compression (Han et al., 2016, §3).

    Each iteration assigns every value to its nearest centroid and moves every centroid to the mean of its
    values; it stops after ``iterations`` updates or as soon as an assignment repeats (the centroids are then a
    fixed point). A cluster that receives no value keeps its previous centroid. Computed in float64.

    Centroids are kept sorted ascending. In 1-D, Lloyd's step preserves their order (each new centroid lies
    inside its own interval between midpoints), so this is the order of the initialisation too, and equal to
    what an unsorted Lloyd would give from the same start.

    Args:
        values: float tensor of any shape (e.g. a layer's kept weights); read flat.
        clusters: number of centroids ``k ≥ 1`` (``2^bits`` for ``bits``-bit indices). More clusters than
            distinct values are allowed with ``LINEAR`` and ``DENSITY``: the surplus centroids stay empty or
            coincide (a single distinct value gives ``k`` equal centroids, every value in cluster 0).
        init: a :class:`KMeansInit` or its string value.
        iterations: maximum number of centroid updates, ``≥ 0`` (0 returns the initial centroids).
        seed: seed of the ``RANDOM`` draw; ``None`` means 0, so results never depend on global RNG state.

    Returns:
        ``(centroids, assignments)``: ``k`` centroids sorted ascending, in the dtype of ``values``, and int64
        indices shaped like ``values`` (``centroids[assignments]`` is the shared-weight tensor). Ties between
        two centroids go to the lower index.

    Raises:
        ValueError: non-float or empty ``values``, NaN or Inf in them, ``clusters`` or ``iterations`` not a valid
            int, an unknown ``init``, a non-int ``seed``, or ``RANDOM`` with fewer distinct values than
            ``clusters``.

    Example:
        >>> w = torch.tensor([-1.0, -0.9, 0.1, 0.2, 0.3, 2.0])
        >>> centroids, idx = kmeans_1d(w, clusters=3)
        >>> centroids, idx
        (tensor([-0.9500,  0.2000,  2.0000]), tensor([0, 0, 1, 1, 1, 2]))
    """
    if not isinstance(values, torch.Tensor) or not values.is_floating_point():
        raise ValueError(f"kmeans_1d needs a floating tensor, got {getattr(values, 'dtype', type(values))}")
    if values.numel() == 0:
        raise ValueError("kmeans_1d needs at least one value, got an empty tensor")
    if isinstance(clusters, bool) or not isinstance(clusters, int) or clusters < 1:
        raise ValueError(f"clusters must be a positive int, got {clusters!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be a non-negative int, got {iterations!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed must be an int or None, got {seed!r}")
    try:
        mode = KMeansInit(init)
    except ValueError:
        raise ValueError(f"init must be one of {[m.value for m in KMeansInit]}, got {init!r}") from None
    x = values.detach().reshape(-1).to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("kmeans_1d got NaN or Inf values")
    centroids = _kmeans_init(x, clusters, mode, 0 if seed is None else seed)
    previous: torch.Tensor | None = None
    for _ in range(iterations):
        assignments = _nearest(x, centroids)
        if previous is not None and torch.equal(assignments, previous):
            break
        counts = torch.bincount(assignments, minlength=clusters)
        sums = torch.bincount(assignments, weights=x, minlength=clusters)
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        # A no-op in exact arithmetic (see above); guards the searchsorted precondition against rounding.
        centroids = torch.sort(centroids).values
        previous = assignments
    assignments = _nearest(x, centroids)
    return centroids.to(values.dtype), assignments.view(values.shape)


def check_shared_bits(bits: object, name: str = "bits") -> int:
    """``bits`` for a shared-weight code (1..8: ``2^bits − 1`` centroids plus the zero), or ValueError naming it."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"{name} must be an int in 1..8 (2^bits − 1 shared values plus zero), got {bits!r}")
    return bits


def lookup_with_zero(centroids: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """``[0, *centroids][codes]``: Deep Compression's shared weight, code 0 being the exact zero of a pruned weight.

    Differentiable in ``centroids``: the backward of the gather sums the gradients of the weights sharing a
    centroid (docs/math.md C2.1).

    Example:
        >>> lookup_with_zero(torch.tensor([-0.5, 0.25]), torch.tensor([[0, 2], [1, 2]]))
        tensor([[ 0.0000,  0.2500],
                [-0.5000,  0.2500]])
    """
    return torch.cat([centroids.new_zeros(1), centroids.reshape(-1)])[codes]
