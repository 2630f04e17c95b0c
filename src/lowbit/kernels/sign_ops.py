"""Ops on packed signs, so a binary network's activations stay bits from layer to layer (CATALOG §6, B4).

A sign edge after a layer is a threshold of its accumulator: ``+1`` where ``acc + b ≥ 0``. :func:`pack_threshold`
writes that comparison straight into packed words (the layout of :func:`lowbit.kernels.pack_signs` along the last
axis), with a per-channel — or per position and channel — offset ``b``, so the ±1 floats are never formed.
:func:`maxpool_signs` pools packed pixels: the maximum of ±1 values is +1 exactly when one of them is, so a window's
maximum is the OR of its words (max pooling's padding never wins, and a padded word of 0s changes no OR).

Example:
    >>> import torch
    >>> pack_threshold(torch.tensor([[3, -2, 0]], dtype=torch.int32), torch.tensor([-4.0, 2.0, 0.0])).tolist()
    [[6]]
    >>> pixels = torch.tensor([[[[1], [2]], [[0], [4]]]], dtype=torch.uint64)  # (N, H, W, words) = (1, 2, 2, 1)
    >>> maxpool_signs(pixels, 2).tolist()
    [[[[7]]]]
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from lowbit.kernels.ternary import _numba_threads

__all__ = ["pack_threshold", "pack_at_least", "thresholds_for", "maxpool_signs", "maxpool_output_size"]

_WORD = 64


@numba.njit(parallel=True, nogil=True, cache=True, boundscheck=False)
def _pack_at_least(values, thresholds, out):  # pragma: no cover - compiled
    # bit c of a row: values[r, c] >= thresholds[r mod S, c]. Values and thresholds of one dtype, and a fixed
    # count of 64 per full word, let LLVM turn each word into vector compares (6× a per-bit loop here)
    rows, channels = values.shape
    period = thresholds.shape[0]
    full = channels // _WORD
    for r in numba.prange(rows):
        o = r % period
        for w in range(full):
            first = w * _WORD
            acc = np.uint64(0)
            for j in range(_WORD):
                acc |= np.uint64(values[r, first + j] >= thresholds[o, first + j]) << np.uint64(j)
            out[r, w] = acc
        if full < out.shape[1]:
            first = full * _WORD
            acc = np.uint64(0)
            for c in range(first, channels):
                acc |= np.uint64(values[r, c] >= thresholds[o, c]) << np.uint64(c - first)
            out[r, full] = acc


def thresholds_for(offset: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The thresholds :func:`pack_at_least` compares values of ``dtype`` with so that the bits are
    ``v + offset ≥ 0``: ``v ≥ −o``, and for integers ``v ≥ ceil(−o)`` (int32, or int64 past int32's range).

    Example:
        >>> thresholds_for(torch.tensor([-4.0, 2.5]), torch.int32).tolist()
        [4, -2]
    """
    negated = -offset.detach().to(torch.float64)
    if dtype == torch.int32:
        ceiling = torch.ceil(negated)
        if bool((ceiling.abs() < 2**31 - 1).all()):
            return ceiling.to(torch.int32)
        # thresholds past int32 compare in int64; beyond ±2⁴⁰ they all pass or all fail alike
        return ceiling.clamp(-(2**40), 2**40).to(torch.int64)
    return negated  # float32 values against float64 thresholds: the comparison is exact


def pack_at_least(values: torch.Tensor, thresholds: torch.Tensor, threads: int | None = None) -> torch.Tensor:
    """Pack ``values ≥ thresholds`` along the last axis into ``uint64`` words: :func:`pack_threshold` with the
    thresholds computed once (:func:`thresholds_for`) — a frozen layer's choice.

    Args:
        values: ``(R, C)`` int32 or float32.
        thresholds: ``(C,)`` or ``(S, C)``, row ``r`` compared with ``thresholds[r mod S]``.
    """
    rows, channels = values.shape
    thresholds = thresholds.reshape(-1, channels)
    out = np.empty((rows, -(-channels // _WORD)), dtype=np.uint64)
    with _numba_threads(threads, "pack_at_least"):
        _pack_at_least(values.contiguous().numpy(), thresholds.contiguous().numpy(), out)
    return torch.from_numpy(out)


def pack_threshold(values: torch.Tensor, offset: torch.Tensor | None = None, threads: int | None = None,
                   ) -> torch.Tensor:
    """Pack ``values + offset ≥ 0`` along the last axis into ``uint64`` words (bit 1 = +1; bits past ``C`` are 0).

    Args:
        values: ``(R, C)`` int32 or float32 (an accumulator, rows = images or output positions).
        offset: ``(C,)`` added to every row, or ``(S, C)`` with row ``r`` taking ``offset[r mod S]`` (a conv's
            per-position padding correction plus its bias, ``S = H_out·W_out``); default 0.
        threads: numba threads for this call (default: numba's current setting).

    Returns:
        ``uint64`` ``(R, ceil(C/64))``. The comparison is exact (``v ≥ −o``, not a rounded sum); a NaN value
        compares false: bit 0 (−1), as ``torch.where(v >= 0, 1, -1)``.

    Raises:
        ValueError: ``values`` not 2-D int32/float32, or an offset whose shape does not fit.
    """
    if not isinstance(values, torch.Tensor) or values.dtype not in (torch.int32, torch.float32) or values.ndim != 2:
        got = f"{values.dtype} of shape {tuple(values.shape)}" if isinstance(values, torch.Tensor) else type(values)
        raise ValueError(f"pack_threshold: values must be a 2-D int32 or float32 tensor, got {got}")
    rows, channels = values.shape
    given = torch.zeros(1, channels) if offset is None else offset.detach()
    if given.ndim not in (1, 2) or given.shape[-1] != channels or (rows and rows % given.reshape(-1, channels)
                                                                   .shape[0]):
        raise ValueError(f"pack_threshold: offset must be (C,) or (S, C) with S dividing the {rows} rows and "
                         f"C={channels}, got {tuple(given.shape)}")
    offset = given.to(torch.float64).reshape(-1, channels)
    if offset.shape[0] == 1 and not bool(offset.any()):  # the plain sign: no thresholds to compute
        zeros = torch.zeros(1, channels, dtype=torch.int32 if values.dtype == torch.int32 else torch.float64)
        return pack_at_least(values, zeros, threads)
    return pack_at_least(values, thresholds_for(offset, values.dtype), threads)


@numba.njit(parallel=True, nogil=True, cache=True, boundscheck=False)
def _maxpool_or(x, kh, kw, sh, sw, ph, pw, dh, dw, out):  # pragma: no cover - compiled
    images, height, width, words = x.shape
    oh, ow = out.shape[1], out.shape[2]
    for r in numba.prange(images * oh):
        n = r // oh
        y = r % oh
        for xo in range(ow):
            for w in range(words):
                out[n, y, xo, w] = 0
            for i in range(kh):
                iy = y * sh - ph + i * dh
                if iy < 0 or iy >= height:
                    continue
                for j in range(kw):
                    ix = xo * sw - pw + j * dw
                    if ix < 0 or ix >= width:
                        continue
                    for w in range(words):
                        out[n, y, xo, w] |= x[n, iy, ix, w]


def maxpool_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool) -> int:
    """The output length of :func:`torch.nn.functional.max_pool2d` along one axis (PyTorch's rule, ceil mode
    included: a last window that would start in the right padding is dropped)."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def maxpool_signs(pixels: torch.Tensor, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
                  padding: int | tuple[int, int] = 0, dilation: int | tuple[int, int] = 1, ceil_mode: bool = False,
                  threads: int | None = None) -> torch.Tensor:
    """Max pooling of packed ±1 pixels ``(N, H, W, words)`` (``uint64``, channels packed in the words): the OR of
    each window, the same signs as ``F.max_pool2d`` of the ±1 values with these arguments.

    Raises:
        ValueError: pixels that are not 4-D ``uint64``, or an empty output.
    """
    if not isinstance(pixels, torch.Tensor) or pixels.dtype != torch.uint64 or pixels.ndim != 4:
        raise ValueError("maxpool_signs: pixels must be a 4-D uint64 tensor (N, H, W, words)")

    def pair(v: int | tuple[int, int]) -> tuple[int, int]:
        return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))

    kernel = pair(kernel_size)
    steps, pads, dilations = pair(kernel if stride is None else stride), pair(padding), pair(dilation)
    images, height, width, words = pixels.shape
    oh, ow = (maxpool_output_size(size, k, s, p, d, ceil_mode)
              for size, k, s, p, d in zip((height, width), kernel, steps, pads, dilations))
    if oh < 1 or ow < 1:
        raise ValueError(f"maxpool_signs: ({height}, {width}) pooled by {kernel} gives an empty output")
    out = np.empty((images, oh, ow, words), dtype=np.uint64)
    with _numba_threads(threads, "maxpool_signs"):
        _maxpool_or(pixels.contiguous().numpy(), *kernel, *steps, *pads, *dilations, out)
    return torch.from_numpy(out)
