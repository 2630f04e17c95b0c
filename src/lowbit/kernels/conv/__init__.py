"""Fast convolution algorithms (issue #12): im2col, Winograd F(2×2,3×3) and F(4×4,3×3), FFT, direct, Strassen.

``conv2d(x, w, bias, stride, padding, algorithm=Algorithm.X)`` equals ``torch.nn.functional.conv2d`` for every
algorithm (within floating-point error, docs/math.md W1–W5); the Winograd matrices are derived from their
interpolation points (:mod:`.cook_toom`); :mod:`.quantized_winograd` runs Winograd on integer codes.

Example:
    >>> import torch
    >>> x, w = torch.randn(1, 4, 8, 8), torch.randn(2, 4, 3, 3)
    >>> y = conv2d(x, w, padding=1, algorithm="winograd_4x4_3x3")
    >>> torch.allclose(y, torch.nn.functional.conv2d(x, w, padding=1), atol=1e-4)
    True
"""

from lowbit.kernels.conv.algorithms import (Algorithm, conv2d, fft_size, fft_weight, multiplications,
                                            winograd_weight)
from lowbit.kernels.conv.cook_toom import winograd_fractions, winograd_matrices
from lowbit.kernels.conv.quantized_winograd import (range_growth, winograd_conv2d_codes,
                                                    winograd_conv2d_transformed_int8)
from lowbit.kernels.conv.strassen import strassen_matmul

__all__ = ["Algorithm", "conv2d", "multiplications", "winograd_weight", "fft_weight", "fft_size", "winograd_fractions", "winograd_matrices",
           "range_growth", "winograd_conv2d_codes", "winograd_conv2d_transformed_int8", "strassen_matmul"]
