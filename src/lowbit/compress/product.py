"""Product quantization of ``nn.Linear`` weights (Jégou et al., 2011; Gong et al., 2014; Wu et al., 2016).

A weight ``W`` (``out × in``) is cut along its input dimension into ``S = in / d`` sub-spaces of width ``d``.
In sub-space ``s`` the ``out`` sub-vectors ``W[o, s·d:(s+1)·d]`` are clustered by k-means into a codebook
``C_s`` (``k × d``), and each row keeps only the index of its nearest codeword:

- reconstruction: ``Ŵ[o, s·d:(s+1)·d] = C_s[codes[o, s]]``;
- storage: ``out · S`` codes of ``ceil(log2 k)`` bits, packed, plus ``S · k · d`` float32 codebook entries
  (:meth:`ProductCodes.nbytes`);
- product (Wu et al., 2016, §3.1): with ``x_s = x[s·d:(s+1)·d]`` and the table ``T[s, j] = x_s · C_s[j]``
  (``S · k · d`` multiply-adds, one batched matmul), ``y[o] = Σ_s T[s, codes[o, s]] + b[o]`` — a gather and a
  sum per output instead of ``in`` multiply-adds. :class:`ProductLinear` computes exactly this.

:func:`lowbit.functional.vector_kmeans.kmeans_vectors` is the vector k-means behind it (re-exported here).

Example:
    >>> import torch
    >>> from torch import nn
    >>> torch.manual_seed(0) and None
    >>> layer = nn.Linear(8, 6)
    >>> pq = product_quantize(layer.weight, subvector=2, clusters=6)   # k ≥ out: every row is a codeword
    >>> pq.codes.shape, pq.codebooks.shape, pq.bits_per_code
    (torch.Size([6, 4]), torch.Size([4, 6, 2]), 3)
    >>> bool(torch.equal(pq.reconstruct(), layer.weight.detach()))
    True
    >>> pq.nbytes(), layer.weight.numel() * 4      # 6·4 codes · 3 bits = 9 bytes, + 4·6·2 float32 = 192 bytes
    (201, 192)
    >>> q = ProductLinear.from_linear(layer, subvector=4, clusters=2, seed=0)
    >>> q
    ProductLinear(in_features=8, out_features=6, subvector=4, clusters=2, bias=True)
    >>> x = torch.randn(3, 8)
    >>> bool(torch.allclose(q(x), nn.functional.linear(x, q.product_codes().reconstruct(), q.bias), atol=1e-6))
    True
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from lowbit.functional.vector_kmeans import (
    VectorInit,
    _check_init,
    _check_iterations,
    _check_positive_int,
    _check_seed,
    kmeans_vectors,
)

__all__ = [
    "VectorInit",
    "kmeans_vectors",
    "ProductCodes",
    "product_quantize",
    "product_linear",
    "ProductLinear",
    "LayerSummary",
    "ProductReport",
    "product_quantize_linears",
]

@dataclass(frozen=True, eq=False)
class ProductCodes:
    """A product-quantized weight: one codebook per input sub-space and one code per (row, sub-space).

    Attributes:
        codebooks: float32 ``(S, k, d)``; ``codebooks[s, j]`` is codeword ``j`` of sub-space ``s``.
        codes: int64 ``(out, S)`` in ``[0, k)``.
        in_features: ``S · d``, the weight's number of columns.

    Example — a 2 × 4 weight as two sub-spaces of width 2 with two codewords each:
        >>> pc = ProductCodes(
        ...     codebooks=torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [-1.0, 1.0]]]),
        ...     codes=torch.tensor([[0, 1], [1, 1]]),
        ...     in_features=4,
        ... )
        >>> pc.reconstruct()
        tensor([[ 1.,  2., -1.,  1.],
                [ 3.,  4., -1.,  1.]])
        >>> pc.bits_per_code, pc.nbytes()     # 4 codes · 1 bit → 1 byte, + 8 float32 → 32 bytes
        (1, 33)
    """

    codebooks: torch.Tensor
    codes: torch.Tensor
    in_features: int

    def __post_init__(self) -> None:
        if not isinstance(self.codebooks, torch.Tensor) or self.codebooks.ndim != 3:
            raise ValueError(f"codebooks must be a 3-D tensor (S, k, d), got {type(self.codebooks).__name__} "
                             f"of shape {tuple(getattr(self.codebooks, 'shape', ()))}")
        if self.codebooks.dtype != torch.float32:
            raise ValueError(f"codebooks must be float32, got {self.codebooks.dtype}")
        subspaces, clusters, width = self.codebooks.shape
        if not isinstance(self.codes, torch.Tensor) or self.codes.dtype != torch.int64 or self.codes.ndim != 2:
            raise ValueError(f"codes must be a 2-D int64 tensor (out, S), got {getattr(self.codes, 'dtype', None)} "
                             f"of shape {tuple(getattr(self.codes, 'shape', ()))}")
        if self.codes.shape[1] != subspaces:
            raise ValueError(f"codes must have S={subspaces} columns (one per codebook), got {self.codes.shape[1]}")
        if isinstance(self.in_features, bool) or not isinstance(self.in_features, int):
            raise ValueError(f"in_features must be an int, got {self.in_features!r}")
        if self.in_features != subspaces * width:
            raise ValueError(f"in_features must be S·d = {subspaces}·{width} = {subspaces * width}, "
                             f"got {self.in_features}")
        if self.codes.numel() and (int(self.codes.min()) < 0 or int(self.codes.max()) >= clusters):
            raise ValueError(f"codes must lie in [0, {clusters}), got values in "
                             f"[{int(self.codes.min())}, {int(self.codes.max())}]")

    @property
    def subvector(self) -> int:
        """``d``, the width of a sub-space."""
        return self.codebooks.shape[2]

    @property
    def clusters(self) -> int:
        """``k``, the codewords per sub-space."""
        return self.codebooks.shape[1]

    @property
    def bits_per_code(self) -> int:
        """``ceil(log2 k)``: 0 for ``k = 1`` (the single codeword needs no index)."""
        return (self.clusters - 1).bit_length()

    def nbytes(self) -> int:
        """Honest storage: ``ceil(out · S · ceil(log2 k) / 8) + 4 · S · k · d`` bytes.

        The codes are packed bit-tight and rounded up to whole bytes once for the whole array; the codebooks are
        float32. Shapes (a few integers of header) are not counted; a bias is not part of the weight.
        """
        return (self.codes.numel() * self.bits_per_code + 7) // 8 + self.codebooks.numel() * 4

    def reconstruct(self) -> torch.Tensor:
        """``Ŵ`` (``out × in``, float32): ``Ŵ[o, s·d:(s+1)·d] = C_s[codes[o, s]]``."""
        subspaces = torch.arange(self.codebooks.shape[0], device=self.codes.device)
        return self.codebooks[subspaces.unsqueeze(0), self.codes].reshape(self.codes.shape[0], self.in_features)


def _check_subvector(subvector: object, in_features: int) -> int:
    _check_positive_int(subvector, "subvector")
    if in_features % subvector:
        raise ValueError(f"subvector={subvector} must divide in_features={in_features}")
    return subvector


def product_quantize(
    weight: torch.Tensor,
    subvector: int,
    clusters: int,
    iterations: int = 50,
    seed: int | None = None,
    init: VectorInit | str = VectorInit.KMEANS_PLUS_PLUS,
) -> ProductCodes:
    """Product-quantize a 2-D weight: :func:`kmeans_vectors` on each sub-space of ``subvector`` columns.

    Args:
        weight: float ``(out, in)`` tensor (an ``nn.Linear`` weight).
        subvector: ``d``, the sub-space width; must divide ``in``. ``d = 1`` is per-column scalar k-means.
        clusters: ``k`` codewords per sub-space. ``k ≥ out`` reproduces every row exactly.
        iterations, seed, init: as in :func:`kmeans_vectors`; every sub-space uses the same ``seed``.

    Returns:
        :class:`ProductCodes` with float32 codebooks and int64 codes on ``weight``'s device.

    Raises:
        ValueError: ``weight`` not a 2-D floating tensor, ``subvector`` not a positive int dividing ``in``, or
            an invalid ``clusters``, ``iterations``, ``seed`` or ``init``.

    Example:
        >>> w = torch.tensor([[1.0, 2.0, 0.0], [1.1, 2.0, 5.0], [9.0, 9.0, 5.0]])
        >>> pc = product_quantize(w, subvector=1, clusters=2)
        >>> pc.reconstruct()
        tensor([[1.0500, 2.0000, 0.0000],
                [1.0500, 2.0000, 5.0000],
                [9.0000, 9.0000, 5.0000]])
        >>> product_quantize(w, subvector=2, clusters=2)
        Traceback (most recent call last):
        ...
        ValueError: subvector=2 must divide in_features=3
    """
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point() or weight.ndim != 2:
        raise ValueError(f"weight must be a 2-D floating tensor (out, in), got {getattr(weight, 'dtype', None)} "
                         f"of shape {tuple(getattr(weight, 'shape', ()))}")
    out_features, in_features = weight.shape
    _check_subvector(subvector, in_features)
    _check_positive_int(clusters, "clusters")
    _check_iterations(iterations)
    _check_seed(seed)
    _check_init(init)
    if out_features == 0:
        raise ValueError("weight must have at least one row, got shape (0, ...)")
    data = weight.detach().to(device="cpu", dtype=torch.float64)
    books, codes = [], []
    for block in torch.split(data, subvector, dim=1):
        centroids, assignments = kmeans_vectors(block, clusters, iterations=iterations, seed=seed, init=init)
        books.append(centroids)
        codes.append(assignments)
    return ProductCodes(
        codebooks=torch.stack(books).to(device=weight.device, dtype=torch.float32),
        codes=torch.stack(codes, dim=1).to(weight.device),
        in_features=in_features,
    )


def product_linear(
    x: torch.Tensor, codebooks: torch.Tensor, codes: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x · Ŵᵀ + b`` by table lookup, never forming ``Ŵ``.

    For ``x`` of shape ``(…, S·d)``: the tables ``T[…, s, j] = x_s · C_s[j]`` are one batched matmul
    ``(S, N, d) @ (S, d, k)``; then ``y[…, o] = Σ_s T[…, s, codes[o, s]]`` is one gather-and-sum
    (``embedding_bag`` with ``mode="sum"`` over the flattened tables, so no ``(N, out, S)`` intermediate is
    built). Differentiable in ``x``, ``codebooks`` and ``bias``.

    Example:
        >>> books = torch.tensor([[[1.0], [2.0]], [[0.0], [-1.0]]])      # S = 2, k = 2, d = 1
        >>> product_linear(torch.tensor([[3.0, 5.0]]), books, torch.tensor([[1, 1], [0, 0]]))
        tensor([[1., 3.]])
    """
    subspaces, clusters, width = codebooks.shape
    if x.shape[-1] != subspaces * width:
        raise ValueError(f"x must have {subspaces * width} features in its last dimension, got {x.shape[-1]}")
    batch = x.shape[:-1]
    parts = x.reshape(-1, subspaces, width).transpose(0, 1)                        # (S, N, d)
    tables = torch.bmm(parts, codebooks.transpose(1, 2))                           # (S, N, k)
    flat = tables.transpose(1, 2).reshape(subspaces * clusters, -1)                # row s·k + j: T[:, s, j]
    offsets = torch.arange(subspaces, device=codes.device) * clusters
    y = nn.functional.embedding_bag(codes + offsets, flat, mode="sum").T           # (N, out)
    if bias is not None:
        y = y + bias
    return y.reshape(*batch, codes.shape[0])


class ProductLinear(nn.Module):
    """A Linear layer stored as product-quantization codes; its forward is :func:`product_linear`.

    ``codebooks`` (``S × k × d``) and ``bias`` are parameters — fine-tuning the codewords with the codes fixed
    (Wu et al., 2016, §3.3) works through the lookup; ``codes`` (``out × S``, int64) is a buffer.

    Example:
        >>> layer = ProductLinear.from_linear(nn.Linear(6, 4), subvector=3, clusters=4)
        >>> layer(torch.zeros(2, 5, 6)).shape
        torch.Size([2, 5, 4])
    """

    def __init__(self, codes: ProductCodes, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        if not isinstance(codes, ProductCodes):
            raise ValueError(f"codes must be a ProductCodes, got {type(codes).__name__}")
        out_features = codes.codes.shape[0]
        if bias is not None and tuple(bias.shape) != (out_features,):
            raise ValueError(f"bias must have shape ({out_features},), got {tuple(bias.shape)}")
        self.in_features = codes.in_features
        self.out_features = out_features
        self.codebooks = nn.Parameter(codes.codebooks.detach().clone())
        self.register_buffer("codes", codes.codes.detach().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(torch.float32).clone())

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        subvector: int,
        clusters: int,
        iterations: int = 50,
        seed: int | None = None,
        init: VectorInit | str = VectorInit.KMEANS_PLUS_PLUS,
    ) -> ProductLinear:
        """Product-quantize ``linear.weight`` (:func:`product_quantize`) and keep its bias in float32.

        Raises:
            ValueError: ``linear`` not an ``nn.Linear``, or an argument :func:`product_quantize` rejects.
        """
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        codes = product_quantize(linear.weight, subvector, clusters, iterations=iterations, seed=seed, init=init)
        return cls(codes, linear.bias)

    def product_codes(self) -> ProductCodes:
        """The current codebooks and codes as a :class:`ProductCodes` (detached float32 copies)."""
        return ProductCodes(self.codebooks.detach().float().clone(), self.codes.clone(), self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return product_linear(x, self.codebooks, self.codes, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"subvector={self.codebooks.shape[2]}, clusters={self.codebooks.shape[1]}, bias={self.bias is not None}"
        )


@dataclass(frozen=True)
class LayerSummary:
    """One replaced layer's weight storage and error.

    Attributes:
        fp32_bytes: ``4 · out · in``, the float32 weight.
        pq_bytes: :meth:`ProductCodes.nbytes` — packed codes plus float32 codebooks.
        relative_error: ``‖W − Ŵ‖_F / ‖W‖_F`` (0 for an all-zero weight, which reconstructs exactly).

    The bias stays float32 either way and is counted in neither.
    """

    fp32_bytes: int
    pq_bytes: int
    relative_error: float

    @property
    def ratio(self) -> float:
        """Compression ratio ``fp32_bytes / pq_bytes``."""
        return self.fp32_bytes / self.pq_bytes


@dataclass(frozen=True)
class ProductReport:
    """What :func:`product_quantize_linears` did.

    Attributes:
        layers: qualified name → :class:`LayerSummary`, for every Linear replaced by a :class:`ProductLinear`.
        skipped: qualified name → reason, for included Linears left as they were.
    """

    layers: dict[str, LayerSummary] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def product_quantize_linears(
    model: nn.Module,
    subvector: int,
    clusters: int,
    include_names: Sequence[str] | None = None,
    iterations: int = 50,
    seed: int | None = None,
    init: VectorInit | str = VectorInit.KMEANS_PLUS_PLUS,
) -> ProductReport:
    """Replace ``nn.Linear`` modules of ``model`` in place by :class:`ProductLinear`.

    A Linear whose ``in_features`` is not divisible by ``subvector`` is skipped, and so is the ``out_proj`` of an
    ``nn.MultiheadAttention`` (which reads its weight directly, not through ``forward``); both are recorded in
    :attr:`ProductReport.skipped`.

    Args:
        model: the model, changed in place; it must not itself be a Linear.
        subvector, clusters, iterations, seed, init: as in :func:`product_quantize`, the same for every layer.
        include_names: qualified module names or ``fnmatch`` patterns (``"encoder.*"``); ``None`` means every
            Linear. Each must match at least one Linear.

    Returns:
        a :class:`ProductReport`.

    Raises:
        ValueError: ``model`` is an ``nn.Linear``, an include pattern matches no Linear, or an invalid argument.

    Example:
        >>> torch.manual_seed(0) and None
        >>> model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> report = product_quantize_linears(model, subvector=4, clusters=4, seed=0)
        >>> report.skipped
        {'4': 'in_features=3 is not divisible by subvector=4'}
        >>> {name: (s.fp32_bytes, s.pq_bytes) for name, s in report.layers.items()}  # '2': codebooks outweigh W
        {'0': (512, 264), '2': (96, 130)}
        >>> report.layers['2'].relative_error < 1e-7 < report.layers['0'].relative_error   # k=4 ≥ out=3: exact
        True
        >>> type(model[0]).__name__, type(model[4]).__name__
        ('ProductLinear', 'Linear')
    """
    if isinstance(model, nn.Linear):
        raise ValueError("model must contain the Linear layers, not be one: wrap it or use ProductLinear.from_linear")
    _check_positive_int(subvector, "subvector")
    _check_positive_int(clusters, "clusters")
    _check_iterations(iterations)
    _check_seed(seed)
    _check_init(init)
    modules = dict(model.named_modules())
    linears = [name for name, module in modules.items() if isinstance(module, nn.Linear)]
    if include_names is None:
        chosen = linears
    else:
        if isinstance(include_names, str):
            raise ValueError(f"include_names must be a sequence of names or patterns, got the string {include_names!r}")
        unmatched = [p for p in include_names if not any(fnmatch.fnmatchcase(n, p) for n in linears)]
        if unmatched:
            raise ValueError(f"include_names entries match no nn.Linear: {unmatched}; Linear layers: {linears}")
        chosen = [n for n in linears if any(fnmatch.fnmatchcase(n, p) for p in include_names)]
    report = ProductReport()
    for name in chosen:
        linear = modules[name]
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name]
        if isinstance(parent, nn.MultiheadAttention):
            report.skipped[name] = "nn.MultiheadAttention reads its out_proj weight directly"
            continue
        if linear.in_features % subvector:
            report.skipped[name] = f"in_features={linear.in_features} is not divisible by subvector={subvector}"
            continue
        layer = ProductLinear.from_linear(linear, subvector, clusters, iterations=iterations, seed=seed, init=init)
        codes = layer.product_codes()
        weight = linear.weight.detach().double()
        error = torch.linalg.norm(weight - codes.reconstruct().double().to(weight.device))
        norm = torch.linalg.norm(weight)
        report.layers[name] = LayerSummary(
            fp32_bytes=weight.numel() * 4,
            pq_bytes=codes.nbytes(),
            relative_error=float(error / norm) if norm > 0 else 0.0,
        )
        setattr(parent, child, layer)
    return report
