"""numba kernels behind the histogram and moment statistics (private: call them through their wrappers).

Why numba: a histogram is a scatter, and torch's scatter (``bincount``) costs several times more; fusing the
moments ACIQ needs into one pass avoids four temporaries. Both are parallel over this machine's threads.
"""

from __future__ import annotations

import numba
import numpy as np

# Interleaved sub-histograms per thread: consecutive values that hit the same bin would otherwise wait on
# each other's increment (a store-to-load dependency); four independent copies hide that latency.
_LANES = 4


@numba.njit(parallel=True, nogil=True, cache=True, boundscheck=False, fastmath=True)
def signed_histogram_chunks(flat, scale, out):  # pragma: no cover - compiled
    """Count ``flat`` into ``out[t, lane, :]`` (thread ``t``), signed bins: index ``floor(x·scale) + bins``.

    ``out`` has shape ``[threads, LANES, 2·bins]``; index ``bins + i`` is the positive bin ``i`` and
    ``bins − 1 − i`` the negative bin ``i`` (by magnitude). Values beyond ``±bins/scale`` land in the end bins.
    """
    threads = out.shape[0]
    bins2 = out.shape[2]
    n = flat.shape[0]
    chunk = (n + threads - 1) // threads
    chunk = (chunk + _LANES - 1) // _LANES * _LANES
    sc = np.float32(scale)
    offset = np.float32(bins2 // 2)
    top = np.float32(bins2 - 1)
    zero = np.float32(0.0)
    for t in numba.prange(threads):
        start = min(n, t * chunk)
        stop = min(n, start + chunk)
        whole = start + (stop - start) // _LANES * _LANES
        h = out[t]
        for j in range(start, whole, _LANES):
            for lane in range(_LANES):
                v = min(max(np.floor(flat[j + lane] * sc) + offset, zero), top)
                h[lane, np.int32(v)] += 1
        for j in range(whole, stop):
            v = min(max(np.floor(flat[j] * sc) + offset, zero), top)
            h[0, np.int32(v)] += 1


@numba.njit(parallel=True, nogil=True, cache=True, boundscheck=False, fastmath=True)
def signed_histogram_rows(rows, scales, out):  # pragma: no cover - compiled
    """Count row ``c`` of ``rows`` into ``out[c, :]`` with that row's ``scales[c]``; one thread per row."""
    channels, length = rows.shape
    bins2 = out.shape[1]
    offset = np.float32(bins2 // 2)
    top = np.float32(bins2 - 1)
    zero = np.float32(0.0)
    for c in numba.prange(channels):
        sc = np.float32(scales[c])
        h = out[c]
        for j in range(length):
            v = min(max(np.floor(rows[c, j] * sc) + offset, zero), top)
            h[np.int32(v)] += 1


@numba.njit(parallel=True, nogil=True, cache=True, boundscheck=False, fastmath=True)
def row_moments(rows, out):  # pragma: no cover - compiled
    """Per row: ``out[c] = (Σx, Σx², Σ|x − mean|)`` in float64 (two passes: the mean first)."""
    channels, length = rows.shape
    for c in numba.prange(channels):
        s = 0.0
        s2 = 0.0
        for j in range(length):
            v = np.float64(rows[c, j])
            s += v
            s2 += v * v
        mean = s / length
        dev = 0.0
        for j in range(length):
            dev += abs(np.float64(rows[c, j]) - mean)
        out[c, 0] = s
        out[c, 1] = s2
        out[c, 2] = dev
