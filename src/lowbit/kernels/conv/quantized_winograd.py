"""Winograd on integer codes: exact in the spatial domain with wider integers, or int8 in the transformed domain.

Two ways to run F(m×m, 3×3) on a quantized layer (docs/math.md W4):

- **spatial** (:func:`winograd_conv2d_codes`): the int8 codes (centred on their zero points) are transformed
  exactly. ``Bᵀ`` is integer (:mod:`.cook_toom`), so ``V = Bᵀ d B`` is integer but up to ``‖Bᵀ‖∞²`` times
  wider than ``d`` (4× for F(2,3): 10 bits for codes in ±127, 11 with −128; 100× for F(4,3): 15 bits).
  ``G`` holds fractions with common denominator ``c``, so ``(cG) g (cG)ᵀ = c²U`` is integer. The result
  ``Aᵀ M A / c²`` equals the direct integer convolution exactly; the cost is the wider operands, which
  :func:`range_growth` and the returned bit widths state.
- **transformed** (:func:`winograd_conv2d_transformed_int8`): ``U`` and ``V`` are quantized to int8 after the
  transform (symmetric, one scale per tile position, and per output channel for ``U``), so the products are
  int8 × int8 as on integer hardware, and the transform's range growth turns into rounding error.

Example:
    >>> import torch
    >>> x = torch.randint(-127, 128, (1, 2, 6, 6)).to(torch.float64)
    >>> w = torch.randint(-127, 128, (3, 2, 3, 3)).to(torch.float64)
    >>> acc, widths = winograd_conv2d_codes(x, w, m=2, padding=1)
    >>> torch.equal(acc, torch.nn.functional.conv2d(x, w, padding=1)), widths["input_transform_bits"] <= 10
    (True, True)
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from lowbit.kernels.conv.cook_toom import winograd_fractions, winograd_matrices

__all__ = ["range_growth", "winograd_conv2d_codes", "winograd_conv2d_transformed_int8", "bits_for"]


def _integer_matrices(m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """``(Aᵀ, c·G, Bᵀ, c)`` in float64 with ``c`` the common denominator of ``G`` (all three then integer)."""
    a_t, g, b_t = winograd_fractions(m, 3)
    c = math.lcm(*(v.denominator for row in g for v in row))
    as_tensor = lambda mat, f=1: torch.tensor([[float(v * f) for v in row] for row in mat], dtype=torch.float64)  # noqa: E731
    return as_tensor(a_t), as_tensor(g, c), as_tensor(b_t), c


def range_growth(m: int) -> dict[str, float]:
    """Worst-case growth of F(m×m, 3×3)'s transforms: ``max|Bᵀ d B| / max|d| = ‖Bᵀ‖∞²`` and
    ``max|(cG) g (cG)ᵀ| / max|g| = ‖cG‖∞²`` (``‖·‖∞``: the largest absolute row sum), and ``c``."""
    _, cg, b_t, c = _integer_matrices(m)
    row_sum = lambda t: float(t.abs().sum(dim=1).max())  # noqa: E731
    return {"input": row_sum(b_t) ** 2, "weight": row_sum(cg) ** 2, "weight_denominator": c}


def bits_for(value: float) -> int:
    """Bits of the signed integer type that holds ``±value``."""
    return int(math.ceil(math.log2(value + 1))) + 1 if value > 0 else 1


def _tiled_conv(x: torch.Tensor, m: int, padding: int, input_transform, u: torch.Tensor, a_t: torch.Tensor,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """F(m×m, 3×3) in float64 on gathered ``α×α`` tiles: ``(y before dividing, V, Σ_c U ⊙ V, tiles)``.

    ``input_transform`` maps the tiles ``(N, C, th, tw, α, α)`` to ``V``; ``u`` is the transformed filters
    ``(K, C, α, α)``. A readable reference (one small matrix product per tile), not the fast path of
    :mod:`.algorithms`.
    """
    alpha = m + 2
    x = x.to(torch.float64)
    x = F.pad(x, (padding,) * 4) if padding else x
    oh, ow = x.shape[2] - 2, x.shape[3] - 2
    n, k = x.shape[0], u.shape[0]
    th, tw = -(-oh // m), -(-ow // m)
    # pad bottom/right so the last tiles are whole (their extra outputs are cropped)
    x = F.pad(x, (0, tw * m + 2 - x.shape[3], 0, th * m + 2 - x.shape[2]))
    v = input_transform(x.unfold(2, alpha, m).unfold(3, alpha, m))
    product = torch.einsum("kcab,nchwab->knhwab", u, v)  # Σ_c U ⊙ V for every tile
    y = (a_t @ product @ a_t.T).permute(1, 0, 2, 4, 3, 5).reshape(n, k, th * m, tw * m)[:, :, :oh, :ow]
    return y, v, product, n * th * tw


def winograd_conv2d_codes(x: torch.Tensor, w: torch.Tensor, m: int, padding: int = 0,
                          ) -> tuple[torch.Tensor, dict[str, int]]:
    """The exact integer convolution of centred codes ``x`` and ``w`` (float64 holding integers) by F(m×m, 3×3).

    Returns:
        ``(accumulator, widths)``: the accumulator equals ``conv2d(x, w, padding=padding)`` exactly (float64
        integers; every intermediate stays below 2^53 for int8 codes), and the signed bit widths the transformed
        input, transformed weights and transformed-domain sums need.

    Raises:
        ValueError: a filter other than 3×3, or non-integer values.
    """
    if w.shape[2:] != (3, 3):
        raise ValueError(f"winograd_conv2d_codes: needs 3×3 filters, got {tuple(w.shape[2:])}")
    if not all(bool(torch.isfinite(t).all()) and torch.equal(t, t.round()) for t in (x, w)):
        raise ValueError("winograd_conv2d_codes: x and w must hold integer codes")
    a_t, cg, b_t, c = _integer_matrices(m)
    u = cg @ w.to(torch.float64) @ cg.T  # c²·U, integer
    y, v, product, tiles = _tiled_conv(x, m, padding, lambda t: b_t @ t @ b_t.T, u, a_t)
    widths = {"input_transform_bits": bits_for(float(v.abs().max())),
              "weight_transform_bits": bits_for(float(u.abs().max())),
              "product_sum_bits": bits_for(float(product.abs().max())), "tiles": tiles, "alpha": m + 2,
              "channels": x.shape[1]}
    return y / (c * c), widths


def _symmetric_int8(t: torch.Tensor, dims: tuple[int, ...], bits: int) -> torch.Tensor:
    """``t`` fake-quantized to signed ``bits`` with one symmetric scale per index of the dims not reduced."""
    top = (1 << (bits - 1)) - 1
    peak = t.abs().amax(dim=dims, keepdim=True).clamp(min=torch.finfo(t.dtype).tiny)
    scale = peak / top
    return torch.clamp(torch.round(t / scale), -top, top) * scale


def winograd_conv2d_transformed_int8(x: torch.Tensor, w: torch.Tensor, m: int, padding: int = 0,
                                     bits: int = 8) -> torch.Tensor:
    """F(m×m, 3×3) with ``U = G g Gᵀ`` and ``V = Bᵀ d B`` quantized to signed ``bits`` after the transform.

    ``V`` gets one scale per tile position ``(ξ, ν)``; ``U`` one per tile position and output channel. The sums
    and the output transform are float64, so the error measured is the transformed-domain rounding alone.
    """
    a_t, g, b_t = winograd_matrices(m, 3)
    u = _symmetric_int8(g @ w.to(torch.float64) @ g.T, (1,), bits)  # (K, C, α, α): scale per (k, ξ, ν)
    # V: (N, C, th, tw, α, α), one scale per (ξ, ν)
    y, _, _, _ = _tiled_conv(x, m, padding, lambda t: _symmetric_int8(b_t @ t @ b_t.T, (0, 1, 2, 3), bits), u, a_t)
    return y
