"""numba kernels behind the histogram and moment statistics (private: call them through their wrappers).

Why numba: a histogram is a scatter, and torch's scatter (``bincount``) costs several times more; fusing the
moments ACIQ needs into one pass avoids four temporaries. Both are parallel over this machine's threads.
"""

from __future__ import annotations

import numba
import numpy as np

# fastmath without "nnan"/"ninf": the clamps below must keep their meaning for NaN/Inf products, or a bad value
# would become an out-of-range index (bounds checks are off for speed).
_FAST = {"contract", "arcp", "reassoc", "nsz", "afn"}

# Interleaved sub-histograms per thread: consecutive values that hit the same bin would otherwise wait on
# each other's increment (a store-to-load dependency); four independent copies hide that latency.
_LANES = 4


@numba.njit(inline="always", fastmath=_FAST)
def _bin(x, sc, offset, top):  # pragma: no cover - compiled
    # floor(x·sc) + bins clamped to [0, 2·bins − 1]. Written as selects on comparisons, which are false for NaN,
    # so NaN lands in the top bin (numba's min/max would pass NaN through to the index).
    v = np.floor(x * sc) + offset
    v = v if v < top else top
    v = v if v > np.float32(0.0) else np.float32(0.0)
    return np.int32(v)


@numba.njit(parallel=True, nogil=True, cache=True, boundscheck=False, fastmath=_FAST)
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
    for t in numba.prange(threads):
        start = min(n, t * chunk)
        stop = min(n, start + chunk)
        whole = start + (stop - start) // _LANES * _LANES
        h = out[t]
        for j in range(start, whole, _LANES):
            for lane in range(_LANES):
                h[lane, _bin(flat[j + lane], sc, offset, top)] += 1
        for j in range(whole, stop):
            h[0, _bin(flat[j], sc, offset, top)] += 1


@numba.njit(parallel=True, nogil=True, cache=True, boundscheck=False, fastmath=_FAST)
def signed_histogram_rows(rows, scales, out):  # pragma: no cover - compiled
    """Count row ``c`` of ``rows`` into ``out[c, :]`` with that row's ``scales[c]``; one thread per row."""
    channels, length = rows.shape
    bins2 = out.shape[1]
    offset = np.float32(bins2 // 2)
    top = np.float32(bins2 - 1)
    for c in numba.prange(channels):
        sc = np.float32(scales[c])
        h = out[c]
        for j in range(length):
            h[_bin(rows[c, j], sc, offset, top)] += 1


@numba.njit(parallel=True, nogil=True, cache=True, boundscheck=False, fastmath=_FAST)
def row_moments(rows, out):  # pragma: no cover - compiled
    """Per row: ``out[c] = (Σx, Σx²)`` accumulated in float64, one pass."""
    channels, length = rows.shape
    for c in numba.prange(channels):
        s = 0.0
        s2 = 0.0
        for j in range(length):
            v = np.float64(rows[c, j])
            s += v
            s2 += v * v
        out[c, 0] = s
        out[c, 1] = s2


@numba.njit(parallel=True, nogil=True, cache=True, boundscheck=False)
def fake_quantize_per_tensor(x, scale, zero_point, qmin, qmax, out):  # pragma: no cover - compiled
    """``out = (clamp(rint(x/scale) + zp, qmin, qmax) − zp)·scale`` in float32, one pass; False if x had NaN/Inf.

    Same IEEE float32 operations in the same order as the torch path (true division, round half to even), so
    the results are bit-identical; no fastmath, which could reorder or contract them.
    """
    n = x.shape[0]
    s = np.float32(scale)
    zp = np.float32(zero_point)
    lo = np.float32(qmin)
    hi = np.float32(qmax)
    bad = 0
    for i in numba.prange(n):
        v = x[i]
        if not np.isfinite(v):
            bad += 1
        q = np.rint(v / s) + zp
        q = lo if q < lo else (hi if q > hi else q)
        out[i] = (q - zp) * s
    return bad == 0
