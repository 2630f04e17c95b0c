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

__all__ = ["pack", "unpack", "packed_size", "pack_lanes", "unpack_lanes"]


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


def _check_lane(bits: int) -> int:
    if bits not in (1, 2, 4, 8):
        raise ValueError(f"lane packing needs bits in (1, 2, 4, 8), got {bits!r}")
    return 8 // bits


def pack_lanes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned ``bits``-bit codes (``bits`` in 1, 2, 4, 8) as flat uint8, in torch ops on the codes' device.

    The same layout as :func:`pack` with ``signed=False`` (least significant field first); written with tensor
    ops so that gradients on a GPU are packed where they are, for a collective on that device.

    Example:
        >>> pack_lanes(torch.tensor([1, 0, 1, 1, 0, 0, 0, 1, 1]), 1).tolist()
        [141, 1]
    """
    per_byte = _check_lane(bits)
    flat = codes.reshape(-1).to(torch.uint8)
    flat = torch.cat([flat, flat.new_zeros(-flat.numel() % per_byte)]).view(-1, per_byte)
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=flat.device)
    # fields never overlap, so the sum of the shifted fields is their bitwise or
    return (flat << shifts).sum(dim=1, dtype=torch.uint8)


def unpack_lanes(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_lanes`: the first ``numel`` codes as uint8.

    Raises:
        ValueError: bits not in 1, 2, 4, 8, or too few bytes for ``numel`` codes.
    """
    per_byte = _check_lane(bits)
    if packed.dtype != torch.uint8 or packed.numel() * per_byte < numel:
        raise ValueError(f"unpack_lanes: {packed.numel()} {packed.dtype} bytes cannot hold {numel} codes of "
                         f"{bits} bits")
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
    mask = (1 << bits) - 1
    return ((packed.reshape(-1, 1) >> shifts) & mask).reshape(-1)[:numel]
