"""2-D convolution (cross-correlation, as ``torch.nn.functional.conv2d``) by five algorithms (docs/math.md W1–W5).

- ``DIRECT``: one GEMM per filter tap: ``y += W[:, :, i, j] · x[:, :, i::s, j::s]``, ``r²`` products of
  ``(K, C) × (C, N·H_out·W_out)``.
- ``IM2COL``: every receptive field copied into a column, then one ``(K, C·r²) × (C·r², N·H_out·W_out)`` GEMM.
- ``WINOGRAD_2x2_3x3`` / ``WINOGRAD_4x4_3x3``: minimal filtering F(m×m, 3×3) (:mod:`.cook_toom`): each ``α×α``
  input tile (``α = m + 2``) is transformed (``Bᵀ d B``), multiplied element-wise with the transformed filters
  (``G g Gᵀ``) — summed over channels, which makes it ``α²`` GEMMs of ``(K, C) × (C, tiles)`` — and transformed
  back (``Aᵀ M A``) into an ``m×m`` output tile: ``α²`` multiplications per tile and channel pair instead of
  ``9m²`` (2.25× fewer for F(2,3), 4× for F(4,3)). Stride 1 only.
- ``FFT``: the correlation as a product of 2-D real FFTs of the padded image and the filter, summed over
  channels (a batched complex GEMM per frequency), then cropped and subsampled for the stride.

Every algorithm computes in the input's dtype and uses ``torch.matmul`` for its products, so timings compare the
algorithms, not two GEMM libraries. Groups and dilation are not supported (``groups=1``, ``dilation=1``).

Example:
    >>> import torch
    >>> x, w = torch.randn(1, 2, 6, 6, dtype=torch.float64), torch.randn(3, 2, 3, 3, dtype=torch.float64)
    >>> ref = torch.nn.functional.conv2d(x, w, padding=1)
    >>> all(torch.allclose(conv2d(x, w, padding=1, algorithm=a), ref) for a in Algorithm)
    True
"""

from __future__ import annotations

import enum

import torch
from torch.nn import functional as F

from lowbit.kernels.conv.cook_toom import winograd_matrices

__all__ = ["Algorithm", "conv2d", "winograd_weight", "fft_weight", "fft_size", "multiplications"]


class Algorithm(enum.Enum):
    """How :func:`conv2d` computes."""

    DIRECT = "direct"
    IM2COL = "im2col"
    WINOGRAD_2x2_3x3 = "winograd_2x2_3x3"
    WINOGRAD_4x4_3x3 = "winograd_4x4_3x3"
    FFT = "fft"


_TILE = {Algorithm.WINOGRAD_2x2_3x3: 2, Algorithm.WINOGRAD_4x4_3x3: 4}


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(not isinstance(v, int) or v < 0 for v in pair):
        raise ValueError(f"conv2d: {name} must be an int >= 0 or a pair of them, got {value!r}")
    return pair  # type: ignore[return-value]


def _output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _check(x: torch.Tensor, w: torch.Tensor, stride: tuple[int, int]) -> None:
    if x.dim() != 4 or w.dim() != 4 or x.shape[1] != w.shape[1]:
        raise ValueError(f"conv2d: need x (N, C, H, W) and w (K, C, kh, kw) with the same C, got {tuple(x.shape)} "
                         f"and {tuple(w.shape)}")
    if min(stride) < 1:
        raise ValueError(f"conv2d: stride must be >= 1, got {stride}")


def _direct(x: torch.Tensor, w: torch.Tensor, stride: tuple[int, int], oh: int, ow: int) -> torch.Tensor:
    n, c = x.shape[:2]
    k, _, kh, kw = w.shape
    out = x.new_zeros(k, n * oh * ow)
    for i in range(kh):
        for j in range(kw):
            window = x[:, :, i:i + stride[0] * (oh - 1) + 1:stride[0], j:j + stride[1] * (ow - 1) + 1:stride[1]]
            out += torch.matmul(w[:, :, i, j], window.permute(1, 0, 2, 3).reshape(c, -1))
    return out.view(k, n, oh, ow).permute(1, 0, 2, 3)


def _im2col(x: torch.Tensor, w: torch.Tensor, stride: tuple[int, int], oh: int, ow: int) -> torch.Tensor:
    n = x.shape[0]
    k = w.shape[0]
    columns = F.unfold(x, w.shape[2:], stride=stride)  # (N, C·kh·kw, oh·ow)
    out = torch.matmul(w.reshape(k, -1), columns)  # (N, K, oh·ow)
    return out.view(n, k, oh, ow)


def winograd_weight(w: torch.Tensor, m: int) -> torch.Tensor:
    """The transformed filters ``G g Gᵀ`` of F(m×m, 3×3) as ``(α², K, C)``: computed once per layer."""
    _, g, _ = winograd_matrices(m, 3, dtype=w.dtype)
    alpha = m + 2
    # two GEMMs over all filters at once: (K·C·3, 3) × (3, α), then the other filter axis
    rows = torch.tensordot(w, g, dims=([2], [1]))  # (K, C, 3 columns, α rows)
    u = torch.tensordot(rows, g, dims=([2], [1]))  # (K, C, α, α)
    return u.permute(2, 3, 0, 1).reshape(alpha * alpha, w.shape[0], w.shape[1])


def _combine(pieces: list[torch.Tensor], coefficients: list[float], out: torch.Tensor | None = None,
             ) -> torch.Tensor:
    """``Σ c·piece`` over the non-zero coefficients, written into ``out`` if given: a row of a transform matrix
    applied to whole slices (the first two terms in one pass)."""
    if out is not None and torch.is_grad_enabled() and any(p.requires_grad for p in pieces):
        return out.copy_(_combine(pieces, coefficients))  # autograd does not record out= arguments
    terms = [(piece, c) for piece, c in zip(pieces, coefficients) if c != 0]
    # a +1 term first lets the first two terms be one add (x2 − x1 instead of −x1, then + x2): one pass fewer
    terms.sort(key=lambda term: term[1] != 1)
    if not terms:
        return torch.zeros_like(pieces[0]) if out is None else out.zero_()
    (first, c0), rest = terms[0], terms[1:]
    if rest and c0 == 1:
        (second, c1), rest = rest[0], rest[1:]
        out = torch.add(first, second, alpha=c1, out=out)
    else:
        out = torch.mul(first, c0, out=out)
    for piece, c in rest:
        out.add_(piece, alpha=c)
    return out


def _strided(t: torch.Tensor, dim: int, offset: int, step: int, count: int) -> torch.Tensor:
    """Elements ``offset, offset + step, …`` (``count`` of them) along ``dim``: one entry of every tile."""
    index = [slice(None)] * t.dim()
    index[dim] = slice(offset, offset + step * (count - 1) + 1, step)
    return t[tuple(index)]


def _winograd(x: torch.Tensor, w: torch.Tensor, m: int, oh: int, ow: int,
              u: torch.Tensor | None = None) -> torch.Tensor:
    # The transforms run on whole slices of the image (entry a of every tile at once) rather than on gathered
    # tiles: α·α vector combinations instead of a tiny matrix product per tile and channel. One copy first makes
    # the image channels-last and de-interleaves columns, (…, tiles, m) → (…, m, tiles), so every slice is
    # contiguous and the GEMMs read (tiles, C) × (C, K), the faster orientation here (1.2 ms against 1.6 ms for
    # 64 channels at 56×56).
    a_t, _, b_t = (mat.tolist() for mat in winograd_matrices(m, 3, dtype=torch.float64))
    alpha = m + 2
    n, c = x.shape[:2]
    k = w.shape[0]
    th, tw = -(-oh // m), -(-ow // m)
    x = F.pad(x, (0, (tw + 1) * m - x.shape[3], 0, th * m + 2 - x.shape[2]))
    x = x.view(n, c, -1, tw + 1, m).permute(0, 2, 4, 3, 1).contiguous()  # (N, H', m, tw + 1, C)
    rows = [_strided(x, 1, a, m, th) for a in range(alpha)]  # row a of every tile row: (N, th, m, tw + 1, C)
    v = x.new_empty(alpha, alpha, n, th, tw, c)
    for i in range(alpha):
        t_i = _combine(rows, b_t[i])  # row i of Bᵀ d
        cols = [t_i[:, :, b % m, b // m:b // m + tw] for b in range(alpha)]  # column b of every tile
        for j in range(alpha):
            _combine(cols, b_t[j], out=v[i, j])  # (Bᵀ d B)[i, j] of every tile
    u = winograd_weight(w, m) if u is None else u
    product = torch.matmul(v.view(alpha * alpha, n * th * tw, c), u.transpose(1, 2))  # (α², tiles, K)
    product = product.view(alpha, alpha, n, th, tw, k)
    y = x.new_empty(n, th, m, tw, m, k)
    for p in range(m):
        s_p = _combine(list(product), a_t[p])  # row p of Aᵀ M: (α, N, th, tw, K)
        for q in range(m):
            _combine(list(s_p), a_t[q], out=y[:, :, p, :, q])
    # NCHW values in channels-last memory: a view, no copy
    return y.view(n, th * m, tw * m, k).permute(0, 3, 1, 2)[:, :, :oh, :ow]


def fft_size(x_shape: tuple[int, ...], w_shape: tuple[int, ...], padding: tuple[int, int] = (0, 0)) -> tuple[int, int]:
    """The FFT size of the full linear convolution: padded image plus filter, minus one, per axis."""
    return x_shape[2] + 2 * padding[0] + w_shape[2] - 1, x_shape[3] + 2 * padding[1] + w_shape[3] - 1


def fft_weight(w: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The filters' spectra for :func:`conv2d` with ``algorithm=FFT``, as ``(fh, fw, C, K)``: computed once per
    layer and image size (``size`` from :func:`fft_size`)."""
    # correlation = convolution with the flipped filter
    return torch.fft.rfft2(w.flip(-1, -2), s=size).permute(2, 3, 1, 0).contiguous()


def _fft(x: torch.Tensor, w: torch.Tensor, stride: tuple[int, int], oh: int, ow: int,
         spectra: torch.Tensor | None = None) -> torch.Tensor:
    n, c, h, width = x.shape
    k, _, kh, kw = w.shape
    size = (h + kh - 1, width + kw - 1)
    spectra = fft_weight(w, size) if spectra is None else spectra
    fx = torch.fft.rfft2(x, s=size).permute(2, 3, 0, 1).contiguous()  # (fh, fw, N, C)
    # Σ_c X[n, c, f] · W[k, c, f] for every frequency f: a batch of (N, C) × (C, K) complex GEMMs
    spectrum = torch.matmul(fx, spectra).permute(2, 3, 0, 1)
    full = torch.fft.irfft2(spectrum, s=size)
    valid = full[:, :, kh - 1:h, kw - 1:width]  # where the filter lies inside the (padded) image
    return valid[:, :, ::stride[0], ::stride[1]][:, :, :oh, :ow]


def conv2d(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None, stride: int | tuple[int, int] = 1,
           padding: int | tuple[int, int] = 0, algorithm: Algorithm | str = Algorithm.IM2COL,
           prepared: torch.Tensor | None = None) -> torch.Tensor:
    """``torch.nn.functional.conv2d(x, w, bias, stride, padding)`` computed by ``algorithm``.

    ``prepared``: the filters transformed once and reused, as a layer's weights do not change between calls:
    ``winograd_weight(w, m)`` for Winograd (about a third of the convolution's time at 64 channels, 56×56), or
    ``fft_weight(w, fft_size(x.shape, w.shape, padding))`` for FFT (the spectra of 64×64 filters at 60×60 take
    longer than the convolution itself).

    Raises:
        ValueError: bad shapes, strides or paddings; Winograd with a filter other than 3×3 or a stride above 1.
    """
    algorithm = Algorithm(algorithm)
    stride, padding = _pair(stride, "stride"), _pair(padding, "padding")
    _check(x, w, stride)
    kh, kw = w.shape[2:]
    oh, ow = _output_size(x.shape[2], kh, stride[0], padding[0]), _output_size(x.shape[3], kw, stride[1], padding[1])
    if oh < 1 or ow < 1:
        raise ValueError(f"conv2d: a {kh}×{kw} filter does not fit the padded {tuple(x.shape[2:])} image")
    if x.shape[0] == 0:  # an empty batch: nothing to transform (the FFT and tile reshapes need elements)
        y = x.new_zeros(0, w.shape[0], oh, ow)
        return y if bias is None else y + bias.view(1, -1, 1, 1)
    x = F.pad(x, (padding[1], padding[1], padding[0], padding[0])) if any(padding) else x
    if algorithm in _TILE:
        if (kh, kw) != (3, 3) or stride != (1, 1):
            raise ValueError(f"conv2d: {algorithm.value} needs a 3×3 filter and stride 1, got {kh}×{kw}, {stride}")
        alpha = _TILE[algorithm] + 2
        if prepared is not None and tuple(prepared.shape) != (alpha * alpha, w.shape[0], w.shape[1]):
            raise ValueError(f"conv2d: prepared must be winograd_weight(w, {_TILE[algorithm]}) of shape "
                             f"{(alpha * alpha, w.shape[0], w.shape[1])}, got {tuple(prepared.shape)}")
        y = _winograd(x, w, _TILE[algorithm], oh, ow, prepared)
    elif algorithm is Algorithm.FFT:
        size = (x.shape[2] + kh - 1, x.shape[3] + kw - 1)
        expected = (size[0], size[1] // 2 + 1, w.shape[1], w.shape[0])
        if prepared is not None and tuple(prepared.shape) != expected:
            raise ValueError(f"conv2d: prepared must be fft_weight(w, {size}) of shape {expected}, got "
                             f"{tuple(prepared.shape)}")
        y = _fft(x, w, stride, oh, ow, prepared)
    elif algorithm is Algorithm.DIRECT:
        y = _direct(x, w, stride, oh, ow)
    else:
        y = _im2col(x, w, stride, oh, ow)
    return y if bias is None else y + bias.view(1, -1, 1, 1)


def multiplications(algorithm: Algorithm | str, n: int, c: int, k: int, oh: int, ow: int, r: int = 3) -> int:
    """Multiplications of the products only (transforms excluded): ``N·K·C·r²·H·W`` for direct and im2col,
    ``N·K·C·α²·⌈H/m⌉·⌈W/m⌉`` for Winograd (docs/math.md W2)."""
    algorithm = Algorithm(algorithm)
    if algorithm in _TILE:
        m = _TILE[algorithm]
        return n * k * c * (m + r - 1) ** 2 * (-(-oh // m)) * (-(-ow // m))
    return n * k * c * r * r * oh * ow
