"""Pack integer codes of 1..8 bits densely into bytes, and back (docs/math.md, eq. 18).

Codes are offset to unsigned (``u = q − qmin``), written as ``bits``-bit fields one after another, least
significant bit first, and the bit stream is cut into bytes (the last byte zero-padded). ``n`` codes take
``⌈n·bits/8⌉`` bytes: 4-bit weights really are half the size of int8 ones on disk.

Example:
    >>> import torch
    >>> q = torch.tensor([-8, 7, 0, -1, 3], dtype=torch.int8)
    >>> packed = pack(q, bits=4, signed=True)
    >>> packed.tolist(), packed.numel()
    ([240, 120, 11], 3)
    >>> unpack(packed, bits=4, signed=True, shape=q.shape)
    tensor([-8,  7,  0, -1,  3], dtype=torch.int8)
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["pack", "unpack", "packed_size"]


def _check(bits: int) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an int in 1..8, got {bits!r}")


def packed_size(numel: int, bits: int) -> int:
    """Bytes needed for ``numel`` codes of ``bits`` bits."""
    _check(bits)
    return (numel * bits + 7) // 8


def pack(codes: torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    """``codes`` (any integer dtype and shape, values on the ``bits``-bit grid) as a flat uint8 tensor.

    Raises:
        ValueError: bits outside 1..8, non-integer codes, or a code outside the grid.
    """
    _check(bits)
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise ValueError(f"pack needs integer codes, got {codes.dtype}")
    low = -(1 << (bits - 1)) if signed else 0
    values = codes.reshape(-1).to(torch.int64) - low
    if values.numel() and (int(values.min()) < 0 or int(values.max()) >= 1 << bits):
        raise ValueError(f"codes outside the {'signed' if signed else 'unsigned'} {bits}-bit grid")
    u = values.numpy().astype(np.uint8)
    # one row of `bits` bits per code, least significant first, then the rows concatenated into a bit stream
    stream = ((u[:, None] >> np.arange(bits, dtype=np.uint8)) & 1).reshape(-1)
    return torch.from_numpy(np.packbits(stream, bitorder="little"))


def unpack(packed: torch.Tensor, bits: int, signed: bool, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack`: codes of ``shape`` in int8 (signed) or uint8 (unsigned).

    Raises:
        ValueError: bits outside 1..8, non-uint8 input, or too few bytes for ``shape``.
    """
    _check(bits)
    if packed.dtype != torch.uint8:
        raise ValueError(f"unpack needs uint8 bytes, got {packed.dtype}")
    numel = int(np.prod(shape)) if len(shape) else 1
    if packed.numel() < packed_size(numel, bits):
        raise ValueError(f"{packed.numel()} bytes cannot hold {numel} codes of {bits} bits")
    stream = np.unpackbits(packed.reshape(-1).numpy(), bitorder="little")[: numel * bits].reshape(numel, bits)
    u = (stream.astype(np.int64) << np.arange(bits)).sum(axis=1)
    low = -(1 << (bits - 1)) if signed else 0
    dtype = torch.int8 if signed else torch.uint8
    return torch.from_numpy(u + low).to(dtype).reshape(shape)
