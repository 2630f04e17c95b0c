"""Signed histograms with a range that grows by whole factors (docs/math.md, eq. 10).

A histogram here is one int64 array per channel of ``2·bins`` counts over ``[−width, width]``: index
``bins + i`` holds values in ``[i·Δ, (i+1)·Δ)`` and index ``bins − 1 − i`` values in ``[−(i+1)·Δ, −i·Δ)``,
``Δ = width/bins`` (values at ``±width`` land in the end bins). :func:`split_signed` reads it as ``pos`` and
``neg`` magnitude histograms; ``pos + neg`` is the ``|x|`` histogram TensorRT's entropy calibration uses.

``width`` is kept a little above every value counted (:func:`grow`), so each value sits inside its bin, never on
the closing edge. When new data reach ``width``, the range grows by the smallest integer ``k`` that puts them
inside and every ``k`` neighbouring magnitude bins merge into one: no count moves to a bin that does not contain
its value, and memory stays fixed however many batches arrive.

The binning kernels are compiled with numba (parallel over threads) because a histogram is a scatter, which
torch only offers at several times the cost (``torch.bincount``).

Example:
    >>> import torch
    >>> x = torch.tensor([[0.1, 0.9, -0.6, 1.0]])
    >>> counts, width = grow(empty_histogram(channels=1, bins=4), torch.zeros(1, dtype=torch.float64),
    ...                      x.abs().amax(1).double())
    >>> add_to_histogram(x, width, counts)
    >>> pos, neg = split_signed(counts)
    >>> pos.tolist(), neg.tolist()
    ([[1, 0, 0, 2]], [[0, 0, 1, 0]])
    >>> counts, width = grow(counts, width, torch.tensor([1.5], dtype=torch.float64))   # doubles the range
    >>> split_signed(counts)[0].tolist(), round(float(width[0]), 4)
    ([[1, 2, 0, 0]], 2.0)
"""

from __future__ import annotations

import threading

import numba
import numpy as np
import torch

from lowbit.functional import _kernels

__all__ = ["empty_histogram", "add_to_histogram", "split_signed", "grow", "regrid", "row_moments"]

_MARGIN = 1.0 + 2.0**-20


def empty_histogram(channels: int, bins: int) -> torch.Tensor:
    """Zeroed int64 signed counts of shape ``[channels, 2·bins]``."""
    return torch.zeros(channels, 2 * bins, dtype=torch.int64)


def split_signed(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pos, neg)`` magnitude histograms ``[..., bins]`` of signed ``counts`` (``neg`` is a copy)."""
    bins = counts.shape[-1] // 2
    return counts[..., bins:], counts[..., :bins].flip(-1)


def add_to_histogram(rows: torch.Tensor, width: torch.Tensor, counts: torch.Tensor) -> None:
    """Count ``rows[c]`` into ``counts[c]`` over ``[−width[c], width[c]]`` in place (values beyond: end bins).

    Args:
        rows: ``[channels, n]`` float tensor (converted to contiguous float32). Callers validate the data:
            ``±Inf`` land in the end bins and NaN in the top bin, never outside the array.
        width: ``[channels]`` float64, each > 0 where the row holds a non-zero value (see :func:`grow`).
        counts: ``[channels, 2·bins]`` int64, contiguous.

    Raises:
        ValueError: mismatched shapes, or counts that are not contiguous int64.
    """
    if rows.ndim != 2 or counts.ndim != 2 or counts.shape[0] != rows.shape[0] or width.shape != rows.shape[:1]:
        raise ValueError(
            f"add_to_histogram: rows {tuple(rows.shape)}, width {tuple(width.shape)} and counts "
            f"{tuple(counts.shape)} do not line up"
        )
    if counts.dtype != torch.int64 or not counts.is_contiguous():
        raise ValueError(f"add_to_histogram needs contiguous int64 counts, got {counts.dtype}")
    data = rows.detach().to(torch.float32).contiguous().numpy()
    bins = counts.shape[1] // 2
    # A zero width only happens for an all-zero row: its values all fall in the bin at 0 whatever the scale.
    # The kernel multiplies in float32, so the scale must be a finite float32 (a width of 1e-37 would overflow).
    scales = torch.where(width > 0, bins / width.clamp(min=1e-300), 0.0)
    scales = scales.clamp(max=float(torch.finfo(torch.float32).max)).to(torch.float64).numpy()
    threads = numba.get_num_threads()
    if rows.shape[0] < threads * 4:
        # few rows: split each row across threads, each with private interleaved histograms
        scratch = _scratch(threads, bins)
        for c in range(rows.shape[0]):
            scratch.fill(0)
            _kernels.signed_histogram_chunks(data[c], scales[c], scratch)
            counts[c] += torch.from_numpy(scratch.sum(axis=(0, 1), dtype=np.int64))
    else:
        _kernels.signed_histogram_rows(data, scales, counts.numpy())


def grow(counts: torch.Tensor, width: torch.Tensor, reach: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Widen each channel's range so that ``reach[c]·(1 + 2⁻²⁰) ≤ width[c]``, merging bins by a whole factor (eq. 10).

    The margin keeps the largest value strictly inside the top bin even in the kernel's float32 arithmetic
    (float32 resolves 2⁻²³), so it never sits on a closing edge that a later merge would misplace. A channel's
    first non-zero ``reach`` sets ``width = reach·(1 + 2⁻²⁰)``; later, a wider reach multiplies ``width`` by
    ``k = ⌈reach·(1 + 2⁻²⁰)/width⌉`` and merges every ``k`` magnitude bins (:func:`regrid`).

    Args:
        counts: ``[channels, 2·bins]`` int64.
        width: ``[channels]`` float64, 0 for a channel that has seen only zeros.
        reach: ``[channels]`` float64 ``max|x|`` of the new data.

    Returns:
        ``(counts, width)``, new tensors (the inputs are not modified).
    """
    target = reach.to(torch.float64).reshape(width.shape) * _MARGIN
    width = torch.where((width == 0) & (target > 0), target, width)
    need = (width > 0) & (target > width)
    if not bool(need.any()):
        return counts, width
    factor = torch.where(need, torch.ceil(target / width.clamp(min=1e-300)), 1.0)
    factor = torch.where(width * factor < target, factor + 1, factor)  # guard a product rounded down
    return regrid(counts, factor.to(torch.int64)), width * factor


_local = threading.local()


def _scratch(threads: int, bins: int) -> np.ndarray:
    # Reused between calls (one per Python thread, so concurrent callers never share it): a fresh 128 KiB array
    # is a new mmap, and its page faults cost about a sixth of a 1M-element update.
    buffers = _local.__dict__.setdefault("buffers", {})
    key = (threads, bins)
    if key not in buffers:
        buffers[key] = np.zeros((threads, _kernels._LANES, 2 * bins), np.int32)
    return buffers[key]


def _merge_magnitudes(counts: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    bins = counts.shape[1]
    target = torch.arange(bins).unsqueeze(0) // factor.to(torch.int64).unsqueeze(1)
    return torch.zeros_like(counts).scatter_add_(1, target, counts)


def regrid(counts: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Signed counts over a range ``factor[c]`` times wider: magnitude bins ``[j·k, (j+1)·k)`` merge into ``j``.

    Args:
        counts: ``[channels, 2·bins]`` int64.
        factor: ``[channels]`` positive ints.

    Example:
        >>> counts = torch.tensor([[0, 0, 0, 0, 0, 1, 2, 3, 4, 5]])   # 5 bins per sign, positives only
        >>> split_signed(regrid(counts, torch.tensor([3])))[0].tolist()
        [[6, 9, 0, 0, 0]]
    """
    pos, neg = split_signed(counts)
    return torch.cat([_merge_magnitudes(neg, factor).flip(-1), _merge_magnitudes(pos, factor)], dim=-1)


def row_moments(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``[channels, n]``: ``Σx`` and ``Σx²`` accumulated in float64, in one fused pass.

    Example:
        >>> [t.tolist() for t in row_moments(torch.tensor([[1.0, 3.0], [-2.0, 2.0]]))]
        [[4.0, 0.0], [10.0, 8.0]]
    """
    if rows.ndim != 2 or rows.shape[1] == 0:
        raise ValueError(f"row_moments needs a non-empty [channels, n] tensor, got shape {tuple(rows.shape)}")
    out = np.zeros((rows.shape[0], 2), np.float64)
    _kernels.row_moments(rows.detach().to(torch.float32).contiguous().numpy(), out)
    result = torch.from_numpy(out)
    return result[:, 0].clone(), result[:, 1].clone()
