"""Signed magnitude histograms with a range that grows by whole factors (docs/math.md, eq. 10).

A histogram here is two count arrays per channel, ``pos`` for values ``≥ 0`` and ``neg`` for ``|x|`` of
values ``< 0``, each with ``bins`` equal bins over ``[0, width]`` (the top bin includes ``width``). When new
data exceed ``width``, the range grows by the smallest integer ``k`` that covers them and every ``k``
neighbouring bins merge into one: no count moves to a bin that does not contain its value, and memory stays
fixed however many batches arrive. ``pos + neg`` is the ``|x|`` histogram TensorRT's entropy calibration uses.

The binning kernel is compiled with numba (parallel over threads, one private histogram per thread) because
a histogram is a scatter, which torch only offers at several times the cost (``torch.bincount``).

Example:
    >>> import torch
    >>> pos, neg = empty_histogram(channels=1, bins=4)
    >>> add_to_histogram(torch.tensor([[0.1, 0.9, -0.5, 1.0]]), torch.tensor([1.0], dtype=torch.float64), pos, neg)
    >>> pos.tolist(), neg.tolist()
    ([[1, 0, 0, 2]], [[0, 0, 1, 0]])
    >>> regrid(pos, torch.tensor([2])).tolist()
    [[1, 2, 0, 0]]
"""

from __future__ import annotations

import numba
import numpy as np
import torch

__all__ = ["empty_histogram", "add_to_histogram", "regrid"]


def empty_histogram(channels: int, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zeroed ``(pos, neg)`` int64 count tensors of shape ``[channels, bins]``."""
    return torch.zeros(channels, bins, dtype=torch.int64), torch.zeros(channels, bins, dtype=torch.int64)


@numba.njit(parallel=True, nogil=True, cache=True, boundscheck=False)
def _bin_rows(rows: np.ndarray, inv_width: np.ndarray, pos: np.ndarray, neg: np.ndarray, threads: int) -> None:  # pragma: no cover
    # Row by row (one channel each); inside a row, chunks go to threads with private histograms, because
    # concurrent increments of a shared bin would race.
    channels, length = rows.shape
    bins = pos.shape[1]
    chunk = (length + threads - 1) // threads
    for c in range(channels):
        local_pos = np.zeros((threads, bins), np.int64)
        local_neg = np.zeros((threads, bins), np.int64)
        scale = inv_width[c] * bins
        for t in numba.prange(threads):
            start = t * chunk
            stop = min(length, start + chunk)
            for j in range(start, stop):
                v = rows[c, j]
                if v >= 0:
                    local_pos[t, min(np.int64(v * scale), bins - 1)] += 1
                else:
                    local_neg[t, min(np.int64(-v * scale), bins - 1)] += 1
        for t in range(threads):
            for b in range(bins):
                pos[c, b] += local_pos[t, b]
                neg[c, b] += local_neg[t, b]


@numba.njit(parallel=True, nogil=True, cache=True, boundscheck=False)
def _bin_many_rows(rows: np.ndarray, inv_width: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> None:  # pragma: no cover
    # Many channels: each thread owns whole rows, so no two threads touch the same histogram.
    channels, length = rows.shape
    bins = pos.shape[1]
    for c in numba.prange(channels):
        scale = inv_width[c] * bins
        for j in range(length):
            v = rows[c, j]
            if v >= 0:
                pos[c, min(np.int64(v * scale), bins - 1)] += 1
            else:
                neg[c, min(np.int64(-v * scale), bins - 1)] += 1


def add_to_histogram(rows: torch.Tensor, width: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> None:
    """Count ``rows[c]`` into ``pos[c]``/``neg[c]`` over ``[0, width[c]]`` in place (values beyond go to the top bin).

    Args:
        rows: ``[channels, n]`` float tensor (converted to contiguous float32).
        width: ``[channels]`` float64, each > 0 where the row holds a non-zero value.
        pos, neg: ``[channels, bins]`` int64 counts, updated in place.

    Raises:
        ValueError: mismatched shapes or non-int64 counts.
    """
    if rows.ndim != 2 or pos.shape != neg.shape or pos.shape[0] != rows.shape[0] or width.shape != rows.shape[:1]:
        raise ValueError(
            f"add_to_histogram: rows {tuple(rows.shape)}, width {tuple(width.shape)}, pos {tuple(pos.shape)} "
            f"and neg {tuple(neg.shape)} do not line up"
        )
    if pos.dtype != torch.int64 or neg.dtype != torch.int64:
        raise ValueError(f"add_to_histogram needs int64 counts, got {pos.dtype} and {neg.dtype}")
    data = rows.detach().to(torch.float32).contiguous().numpy()
    # A zero width only happens for an all-zero row: its values all fall in bin 0 whatever the scale.
    inv = torch.where(width > 0, 1.0 / width.clamp(min=1e-300), 0.0).to(torch.float64).numpy()
    threads = numba.get_num_threads()
    if rows.shape[0] < threads * 4:
        _bin_rows(data, inv, pos.numpy(), neg.numpy(), threads)
    else:
        _bin_many_rows(data, inv, pos.numpy(), neg.numpy())


def regrid(counts: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Counts over a range ``factor[c]`` times wider: bins ``[j·k, (j+1)·k)`` merge into bin ``j``.

    Args:
        counts: ``[channels, bins]`` int64.
        factor: ``[channels]`` positive ints.

    Example:
        >>> regrid(torch.tensor([[1, 2, 3, 4, 5]]), torch.tensor([3])).tolist()
        [[6, 9, 0, 0, 0]]
    """
    bins = counts.shape[1]
    target = torch.arange(bins).unsqueeze(0) // factor.to(torch.int64).unsqueeze(1)
    return torch.zeros_like(counts).scatter_add_(1, target, counts)
