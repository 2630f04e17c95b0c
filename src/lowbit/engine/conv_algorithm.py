"""A convolution algorithm per conv layer of a Program (issue #12): Winograd, FFT, direct or im2col on the codes.

:meth:`lowbit.engine.Program.set_conv_algorithm` records ``op["algorithm"]`` on chosen conv layers; both the
reference kernels and the fast runner then compute those layers' accumulators with
:func:`lowbit.kernels.conv.conv2d` on the centred codes, in float64. The transforms leave the products of Winograd
and FFT a little off the integers (F(4×4,3×3)'s ``G`` holds 1/24, FFT works in complex floats), so the result is
rounded to the nearest integer, after checking every value lies within 1/4 of one: float64 error far below that
means the rounded accumulator *is* the integer sum, the same integers as the direct convolution (tests compare).
A layer whose float64 result drifts further raises instead of returning a wrong integer.

Example:
    >>> import torch
    >>> x, w = torch.randint(-128, 128, (1, 2, 6, 6)).double(), torch.randint(-127, 128, (3, 2, 3, 3)).double()
    >>> acc = integer_conv(x, w, (1, 1), (1, 1), "winograd_4x4_3x3", where="demo")
    >>> torch.equal(acc, torch.nn.functional.conv2d(x, w, padding=1))
    True
"""

from __future__ import annotations

from typing import Any

import torch

from lowbit.kernels.conv import Algorithm, conv2d, fft_size, fft_weight, winograd_weight

__all__ = ["eligibility", "integer_conv", "PreparedFilters"]

_WINOGRAD = {Algorithm.WINOGRAD_2x2_3x3: 2, Algorithm.WINOGRAD_4x4_3x3: 4}
_TOLERANCE = 0.25  # a float64 accumulator farther than this from an integer is not trusted


def eligibility(op: dict[str, Any], weight_shape: tuple[int, ...], algorithm: Algorithm) -> str | None:
    """Why ``algorithm`` cannot run conv ``op`` (None when it can): 2-D, no groups or dilation; Winograd also
    needs 3×3 filters and stride 1."""
    if op.get("op") != "conv" or len(weight_shape) != 4:
        return "not a 2-D convolution"
    if op["groups"] != 1 or tuple(op["dilation"]) != (1, 1):
        return f"groups={op['groups']}, dilation={tuple(op['dilation'])} (the algorithms need 1 and (1, 1))"
    if op.get("bit_kernel"):
        return "a binary layer (it runs on the bit kernels)"
    if algorithm in _WINOGRAD and (tuple(weight_shape[2:]) != (3, 3) or tuple(op["stride"]) != (1, 1)):
        return f"{algorithm.value} needs 3×3 filters and stride 1, got {tuple(weight_shape[2:])}, {tuple(op['stride'])}"
    return None


class PreparedFilters:
    """A layer's filters transformed once per algorithm (and, for FFT, per image size)."""

    def __init__(self, w: torch.Tensor, algorithm: Algorithm, padding: tuple[int, int]) -> None:
        self.w, self.algorithm, self.padding = w, algorithm, padding
        self.cache: dict[tuple[int, ...], torch.Tensor] = {}

    def get(self, x_shape: tuple[int, ...]) -> torch.Tensor | None:
        if self.algorithm in _WINOGRAD:
            key: tuple[int, ...] = ()
            if key not in self.cache:
                self.cache[key] = winograd_weight(self.w, _WINOGRAD[self.algorithm])
            return self.cache[key]
        if self.algorithm is Algorithm.FFT:
            key = fft_size(x_shape, tuple(self.w.shape), self.padding)
            if key not in self.cache:
                self.cache[key] = fft_weight(self.w, key)  # type: ignore[arg-type]
            return self.cache[key]
        return None


def integer_conv(x: torch.Tensor, w: torch.Tensor, stride: tuple[int, int], padding: tuple[int, int],
                 algorithm: Algorithm | str, where: str, prepared: PreparedFilters | None = None) -> torch.Tensor:
    """``Σ x·w`` over centred codes (float64 holding integers) by ``algorithm``, rounded to the integers.

    Raises:
        ArithmeticError: a value farther than 1/4 from an integer (float64 could not carry the sums exactly).
    """
    algorithm = Algorithm(algorithm)
    x, w = x.to(torch.float64), w.to(torch.float64)
    spectra = prepared.get(tuple(x.shape)) if prepared is not None else None
    y = conv2d(x, w, None, stride, padding, algorithm, prepared=spectra)
    rounded = torch.round(y)
    if y.numel() and float((y - rounded).abs().max()) > _TOLERANCE:
        raise ArithmeticError(f"{where}: {algorithm.value} in float64 strayed {float((y - rounded).abs().max()):.3f} "
                              "from the integer sums; run this layer with the direct convolution")
    return rounded
