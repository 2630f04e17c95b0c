"""Binary convolution: ±1 activations and weights, im2col on packed bits, XOR/popcount GEMM (CATALOG §6, B4).

The product is ``F.conv2d(sign(x), sign(w))`` with ``sign(0) = +1`` and **zero** padding, exactly, as int32:

1. Pack the input's signs along channels, in the layout of ``pack_signs(x, axis=1)``: every pixel becomes
   ``ceil(C/64)`` words, so a kernel tap is a run of whole words, never a float.
2. im2col on those bits: the row of an output position is its ``kh·kw`` taps' channel bits laid end to end
   (tap ``t`` at bits ``t·C … t·C + C − 1``), so ``K = C·kh·kw`` bits with no gaps when ``C`` is not a multiple of
   64 (a tap then straddles words and is shifted in). The weight is packed once in the same order
   (:func:`pack_conv_weight`).
3. :func:`lowbit.kernels.binary_matmul` of the rows with the packed filters.

Padding. A bit is ±1 and cannot hold the padding's 0, so padded taps are written as bits 0 (−1). Each channel
there contributes ``−sign(w)`` instead of 0, and the exact result is::

    conv = binary_matmul(...) + Σ_{taps of this output position that fall on padding} Σ_c sign(w[o, c, tap])

The correction depends only on the output position and channel, not on the input's values, so it is one
single-channel convolution of the padding indicator with the per-tap weight sums, computed once per input size
and cached on the :class:`PackedBinaryWeight`.

Example:
    >>> import torch
    >>> x = torch.tensor([[[[1.0, -2.0], [0.5, 3.0]]]])
    >>> w = torch.tensor([[[[1.0, -1.0], [-1.0, 1.0]]]])
    >>> binary_conv2d(x, w, padding=1)
    tensor([[[[ 1, -2,  1],
              [ 0,  2, -2],
              [-1,  0,  1]]]], dtype=torch.int32)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numba
import numpy as np
import torch
from torch.nn import functional as F

from lowbit.kernels.binary import binary_matmul, pack_signs
from lowbit.kernels.ternary import _numba_threads

__all__ = ["PackedBinaryWeight", "pack_conv_weight", "binary_conv2d", "pack_channels", "im2col_signs",
           "padding_correction", "conv_output_size"]

_WORD = 64


@dataclass(frozen=True, eq=False)  # tensors have no single truth value: compare packed weights by identity
class PackedBinaryWeight:
    """A conv weight's signs packed once for :func:`binary_conv2d` (build it with :func:`pack_conv_weight`).

    Example: a ``(64, 64, 3, 3)`` weight gives ``words`` of shape ``(1, 64, 9)`` — one group, 64 filters,
    ``64·3·3 = 576`` bits in 9 words — and ``tap_sums`` of shape ``(64, 3, 3)``.

    Attributes:
        words: ``uint64`` ``(groups, out_channels/groups, ceil(K/64))``, ``K = in_channels/groups·kh·kw``, each
            filter's bits in im2col order (tap-major, channel-minor).
        tap_sums: int64 ``(out_channels, kh, kw)``, ``Σ_c sign(w[o, c, i, j])`` — what a padded tap subtracts.
        in_channels: the input channels of the whole layer (``groups ×`` a filter's channels).
        kernel_size: ``(kh, kw)``.
        groups: as in :func:`torch.nn.functional.conv2d`.
    """

    words: torch.Tensor
    tap_sums: torch.Tensor
    in_channels: int
    kernel_size: tuple[int, int]
    groups: int
    # padding corrections per (height, width, stride, padding, dilation): a cache, not part of the value
    _corrections: dict[tuple[int, ...], torch.Tensor] = field(default_factory=dict, init=False, repr=False,
                                                              compare=False)

    @property
    def out_channels(self) -> int:
        return self.tap_sums.shape[0]


def pack_conv_weight(weight: torch.Tensor, groups: int = 1) -> PackedBinaryWeight:
    """Pack the signs of a conv weight ``(C_out, C_in/groups, kh, kw)`` (``w ≥ 0`` ↦ +1) for :func:`binary_conv2d`.

    Raises:
        ValueError: a weight that is not a 4-D float tensor, NaN, or ``groups`` that does not divide ``C_out``.
    """
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point() or weight.ndim != 4:
        got = f"{weight.dtype} of shape {tuple(weight.shape)}" if isinstance(weight, torch.Tensor) else type(weight)
        raise ValueError(f"pack_conv_weight: weight must be a 4-D float tensor (C_out, C_in/groups, kh, kw), "
                         f"got {got}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or weight.shape[0] % groups:
        raise ValueError(f"pack_conv_weight: groups must be a positive int dividing C_out={weight.shape[0]}, "
                         f"got {groups!r}")
    out_channels, channels, kh, kw = weight.shape
    weight = weight.detach()
    # (C_out, kh, kw, C) flattened is the im2col row order: tap-major, channel-minor
    rows = weight.permute(0, 2, 3, 1).reshape(groups, out_channels // groups, kh * kw * channels)
    signs = torch.where(weight >= 0, 1, -1).to(torch.int64)
    return PackedBinaryWeight(words=pack_signs(rows), tap_sums=signs.sum(dim=1), in_channels=channels * groups,
                              kernel_size=(kh, kw), groups=groups)


@numba.njit(parallel=True, nogil=True, cache=True, boundscheck=False)
def _pack_channels(x, out):  # pragma: no cover - compiled
    # x: (N, C, H·W) float, out: (N, H·W, words) — the layout of pack_signs(x, axis=1), read along contiguous
    # pixels instead of gathering 64 strided channels per word (the packing was most of a layer's time)
    # returns the number of NaNs seen, so the NaN check costs no second pass over x
    images, channels, pixels = x.shape
    words = out.shape[2]
    nans = 0
    for task in numba.prange(images * words):
        n = task // words
        first = (task % words) * _WORD
        acc = np.zeros(pixels, dtype=np.uint64)
        local_nans = 0
        for c in range(first, min(channels, first + _WORD)):
            shift = np.uint64(c - first)
            for p in range(pixels):
                value = x[n, c, p]
                acc[p] |= np.uint64(value >= 0) << shift
                local_nans += value != value
        out[n, :, task % words] = acc
        nans += local_nans
    return nans


@numba.njit(parallel=True, nogil=True, cache=True, boundscheck=False)
def _im2col_bits(xw, channels, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, out):  # pragma: no cover - compiled
    images, height, width, words_per_pixel = xw.shape
    out_words = out.shape[1]
    for r in numba.prange(images * oh):
        n = r // oh
        y = r % oh
        for x in range(ow):
            row = r * ow + x
            for i in range(kh):
                iy = y * sh - ph + i * dh
                if iy < 0 or iy >= height:
                    continue  # padding: its bits stay 0 (−1) and the correction term accounts for them
                for j in range(kw):
                    ix = x * sw - pw + j * dw
                    if ix < 0 or ix >= width:
                        continue
                    start = (i * kw + j) * channels
                    for c in range(words_per_pixel):
                        word = xw[n, iy, ix, c]
                        pos = start + c * _WORD
                        idx = pos >> 6
                        shift = pos & 63
                        # the word's bits past C are 0 (_pack_channels), so OR-ing a whole word never disturbs
                        # the next tap; a shift of 0 (C a multiple of 64) is a plain copy
                        out[row, idx] |= word << np.uint64(shift)
                        if shift != 0 and idx + 1 < out_words:
                            out[row, idx + 1] |= word >> np.uint64(_WORD - shift)


def _pair(value: int | tuple[int, int], name: str, least: int) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not (isinstance(pair, tuple | list) and len(pair) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= least for v in pair)):
        raise ValueError(f"binary_conv2d: {name} must be an int ≥ {least} or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def conv_output_size(height: int, width: int, kernel_size: tuple[int, int], stride: tuple[int, int] = (1, 1),
                     padding: tuple[int, int] = (0, 0), dilation: tuple[int, int] = (1, 1)) -> tuple[int, int]:
    """``(H_out, W_out)`` of :func:`torch.nn.functional.conv2d` (floor rule) for pairs of kernel and geometry.

    Example:
        >>> conv_output_size(28, 28, (3, 3), (2, 2), (1, 1))
        (14, 14)
    """
    return tuple((size + 2 * p - d * (k - 1) - 1) // s + 1  # type: ignore[return-value]
                 for size, k, s, p, d in zip((height, width), kernel_size, stride, padding, dilation))


def padding_correction(packed: PackedBinaryWeight, height: int, width: int, stride: tuple[int, int],
                       padding: tuple[int, int], dilation: tuple[int, int]) -> torch.Tensor:
    """What the product of :func:`im2col_signs` rows misses at padded taps: ``Σ`` of ``tap_sums`` over the taps of
    each output position that fall on padding, int32 ``(1, C_out, H_out, W_out)`` (module docstring), cached."""
    key = (height, width, *stride, *padding, *dilation)
    if key not in packed._corrections:
        on_padding = F.pad(torch.zeros(1, 1, height, width, dtype=torch.float64),
                           (padding[1], padding[1], padding[0], padding[0]), value=1.0)
        # small integers in float64 (|sum| ≤ C·kh·kw ≪ 2^53): the convolution is exact
        total = F.conv2d(on_padding, packed.tap_sums.to(torch.float64).unsqueeze(1), stride=stride,
                         dilation=dilation)
        packed._corrections[key] = total.round().to(torch.int32)
    return packed._corrections[key]


def pack_channels(x: torch.Tensor, threads: int | None = None) -> torch.Tensor:
    """The signs of an ``(N, C, H, W)`` float image packed along channels, pixel-major: ``uint64``
    ``(N, H, W, ceil(C/64))``, the layout of ``pack_signs(x, axis=1)`` (``x ≥ 0`` ↦ bit 1, bits past ``C`` 0).

    Raises:
        ValueError: ``x`` not a 4-D float tensor, or NaN in it.

    Example:
        >>> pack_channels(torch.tensor([[[[1.0]], [[-1.0]], [[0.0]]]])).tolist()
        [[[[5]]]]
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim != 4:
        got = f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x)
        raise ValueError(f"pack_channels: x must be a 4-D float tensor (N, C, H, W), got {got}")
    # the packer reads float32/float64 arrays; a sign survives the cast from half precision
    dense = x.detach().to(x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32).contiguous()
    images, channels, height, width = dense.shape
    pixels = np.empty((images, height * width, -(-channels // _WORD)), dtype=np.uint64)
    with _numba_threads(threads, "pack_channels"):
        if _pack_channels(dense.numpy().reshape(images, channels, height * width), pixels):
            raise ValueError("pack_channels got NaN in x: its sign is undefined")
    return torch.from_numpy(pixels.reshape(images, height, width, -1))


def im2col_signs(pixels: torch.Tensor, channels: int, kernel_size: tuple[int, int], stride: tuple[int, int] = (1, 1),
                 padding: tuple[int, int] = (0, 0), dilation: tuple[int, int] = (1, 1), threads: int | None = None,
                 ) -> torch.Tensor:
    """The im2col rows of packed pixels: ``uint64`` ``(N·H_out·W_out, ceil(C·kh·kw/64))``, taps end to end with no
    gaps (module docstring); padded taps are bits 0 (−1), which :func:`padding_correction` makes up for.

    Args:
        pixels: ``(N, H, W, ceil(C/64))`` from :func:`pack_channels` (or a layer that writes packed signs).
        channels: ``C``, the bits used in each pixel's words.

    Raises:
        ValueError: pixels that are not 4-D ``uint64``, a word count that does not hold ``channels``, an empty output.
    """
    if not isinstance(pixels, torch.Tensor) or pixels.dtype != torch.uint64 or pixels.ndim != 4:
        raise ValueError("im2col_signs: pixels must be a 4-D uint64 tensor (N, H, W, words) from pack_channels")
    images, height, width, words = pixels.shape
    if not (words - 1) * _WORD < channels <= words * _WORD:
        raise ValueError(f"im2col_signs: {words} words per pixel do not hold channels={channels}")
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    oh, ow = conv_output_size(height, width, kernel_size, stride, padding, dilation)
    if oh < 1 or ow < 1 or images == 0:
        raise ValueError(f"im2col_signs: input ({images}, {height}, {width}) with kernel {kernel_size}, padding "
                         f"{padding} and dilation {dilation} gives an empty output ({images}, {oh}, {ow})")
    cols = np.zeros((images * oh * ow, -(-channels * kh * kw // _WORD)), dtype=np.uint64)
    with _numba_threads(threads, "im2col_signs"):
        _im2col_bits(pixels.contiguous().numpy(), channels, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, cols)
    return torch.from_numpy(cols)


def binary_conv2d(x: torch.Tensor, weight: torch.Tensor | PackedBinaryWeight, stride: int | tuple[int, int] = 1,
                  padding: int | tuple[int, int] = 0, dilation: int | tuple[int, int] = 1, groups: int = 1,
                  threads: int | None = None) -> torch.Tensor:
    """``F.conv2d(sign(x), sign(weight), stride, padding, dilation, groups)`` with ±1 bits, exact, as int32.

    Args:
        x: ``(N, C_in, H, W)`` float activations (or their ±1 signs); ``x ≥ 0`` counts as +1.
        weight: a float weight ``(C_out, C_in/groups, kh, kw)`` (its signs are packed on every call), or a
            :class:`PackedBinaryWeight` packed once by :func:`pack_conv_weight` (a frozen layer's choice).
        stride, padding, dilation: ints or ``(h, w)`` pairs as in :func:`torch.nn.functional.conv2d`; padding is
            zeros (neither +1 nor −1).
        groups: as in ``conv2d``; must equal the packed weight's ``groups`` when ``weight`` is packed.
        threads: numba threads for this call (default: numba's current setting).

    Returns:
        int32 ``(N, C_out, H_out, W_out)``.

    Raises:
        ValueError: ``x`` not a 4-D float tensor or NaN, channels that do not match the weight, a bad stride,
            padding, dilation, groups or ``threads``, or an empty output.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim != 4:
        got = f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x)
        raise ValueError(f"binary_conv2d: x must be a 4-D float tensor (N, C_in, H, W), got {got}")
    packed = weight if isinstance(weight, PackedBinaryWeight) else pack_conv_weight(weight, groups)
    if groups != packed.groups:
        raise ValueError(f"binary_conv2d: groups={groups!r} does not match the packed weight's "
                         f"groups={packed.groups}")
    if x.shape[1] != packed.in_channels:
        raise ValueError(f"binary_conv2d: x has {x.shape[1]} channels, the weight expects {packed.in_channels}")
    stride, padding, dilation = _pair(stride, "stride", 1), _pair(padding, "padding", 0), _pair(dilation, "dilation", 1)
    images, _, height, width = x.shape
    kh, kw = packed.kernel_size
    oh, ow = conv_output_size(height, width, packed.kernel_size, stride, padding, dilation)
    if oh < 1 or ow < 1 or images == 0:
        raise ValueError(f"binary_conv2d: input {tuple(x.shape)} with kernel {packed.kernel_size}, padding {padding} "
                         f"and dilation {dilation} gives an empty output ({images}, {oh}, {ow})")
    channels = packed.in_channels // packed.groups
    k = channels * kh * kw
    parts = []
    for g in range(packed.groups):
        try:
            pixels = pack_channels(x[:, g * channels:(g + 1) * channels], threads)
        except ValueError as error:
            raise ValueError(f"binary_conv2d: {error}") from None
        cols = im2col_signs(pixels, channels, packed.kernel_size, stride, padding, dilation, threads)
        parts.append(binary_matmul(cols, packed.words[g], k, threads=threads))
    product = (parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)).reshape(images, oh, ow, -1)
    out = torch.empty(images, packed.out_channels, oh, ow, dtype=torch.int32)
    if padding == (0, 0):
        return out.copy_(product.permute(0, 3, 1, 2))
    # one pass from the GEMM's (N, H_out, W_out, C_out) order to NCHW, adding the padding correction on the way
    return torch.add(product.permute(0, 3, 1, 2), padding_correction(packed, height, width, stride, padding,
                                                                     dilation), out=out)
