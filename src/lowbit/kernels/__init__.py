"""Fast kernels: bit-packed XOR/popcount products for binary layers, ternary bit-planes, bit-serial and look-up
table products of low-bit codes, and ops on packed signs (issue #7; more kernels follow).

Example:
    >>> import torch
    >>> a, b = torch.tensor([[1.0, -1.0, 1.0]]), torch.tensor([[1.0, 1.0, -1.0], [1.0, -1.0, 1.0]])
    >>> binary_matmul(pack_signs(a), pack_signs(b), 3)
    tensor([[-1,  3]], dtype=torch.int32)
"""

from lowbit.kernels.binary import binary_backend, binary_matmul, pack_signs
from lowbit.kernels.binary_conv import (PackedBinaryWeight, binary_conv2d, conv_output_size, im2col_signs,
                                        pack_channels, pack_conv_weight, padding_correction)
from lowbit.kernels.lut import bitserial_matmul, lut_matmul, pack_codes_bitplanes, pack_nibbles
from lowbit.kernels.sign_ops import maxpool_signs, pack_threshold
from lowbit.kernels.ternary import TernaryPacked, pack_ternary, ternary_matmul

__all__ = ["pack_signs", "binary_matmul", "binary_backend", "PackedBinaryWeight", "pack_conv_weight",
           "binary_conv2d", "pack_channels", "im2col_signs", "padding_correction", "conv_output_size", "pack_threshold",
           "maxpool_signs", "TernaryPacked", "pack_ternary", "ternary_matmul", "pack_codes_bitplanes",
           "bitserial_matmul", "pack_nibbles", "lut_matmul"]
