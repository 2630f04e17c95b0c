"""Fast kernels: bit-packed XNOR/popcount products for binary layers (issue #7; more kernels follow).

Example:
    >>> import torch
    >>> a, b = torch.tensor([[1.0, -1.0, 1.0]]), torch.tensor([[1.0, 1.0, -1.0], [1.0, -1.0, 1.0]])
    >>> binary_matmul(pack_signs(a), pack_signs(b), 3)
    tensor([[-1,  3]], dtype=torch.int32)
"""

from lowbit.kernels.binary import binary_matmul, pack_signs

__all__ = ["pack_signs", "binary_matmul"]
