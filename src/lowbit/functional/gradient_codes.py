"""Gradient codes for data-parallel training: 1-bit sign (plain or rotated), QSGD, TernGrad, DoReFa (docs/math.md §14).

Every function takes a flat float gradient ``x`` cut into blocks of ``block`` elements (the last may be short;
with ``segments``, each segment is cut on its own: :func:`layout`) and returns integer codes plus one float32 number per block; the matching ``*_decode`` gives back the float
gradient the codes stand for. Randomness comes only from the ``generator`` passed in, so a seeded run is
repeatable. No communication happens here (:mod:`lowbit.comm` moves the codes).

- ``onebit``: ``sign(x)`` (0 counts as +) and the block's mean ``|x|`` (G1). Biased; error feedback repairs it.
- ``rotated_onebit``: DRIVE's 1-bit code, the signs of a random Hadamard rotation of each block and the scale
  that leaves the error orthogonal to the block, nearly unbiased over the rotation (G8); the rotation's signs
  come from a generator both sides share.
- ``qsgd``: levels ``l = ⌊s·|x|/‖x‖₂ + u⌋`` with ``u ~ U[0, 1)``, sent as ``sign·l`` with the block's norm;
  ``E[‖x‖₂·sign·l/s] = x`` (G2).
- ``terngrad``: ``t = sign(x)·Bernoulli(|x|/m)`` with a scaler ``m ≥ max|x|`` per block, shared by all workers;
  ``E[m·t] = x`` (G4).
- ``dorefa``: DoReFa-Net's k-bit gradient, per block instead of per sample (:mod:`lowbit.functional.dorefa`, G5).

Example:
    >>> import torch
    >>> x = torch.tensor([0.5, -1.0, 0.25, 0.0])
    >>> signs, scales = onebit_encode(x, block=2)
    >>> signs.tolist(), scales.tolist(), onebit_decode(signs, scales, block=2).tolist()
    ([1, 0, 1, 1], [0.75, 0.125], [0.75, -0.75, 0.125, 0.125])
    >>> g = torch.Generator().manual_seed(0)
    >>> levels, norms = qsgd_encode(x, levels=4, block=4, generator=g)
    >>> levels.abs().max() <= 4, norms.tolist() == [float(x.norm())]
    (tensor(True), True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from lowbit.functional.dorefa import dorefa_gradient_codes, dorefa_gradient_values
from lowbit.functional.hadamard import fwht, is_power_of_two, random_signs

__all__ = ["Layout", "layout", "block_rows", "block_absmax", "clip_to_std", "onebit_encode", "onebit_decode",
           "block_count", "rotated_code_count", "rotated_lengths", "rotation_diagonal", "rotated_onebit_encode", "rotated_onebit_decode",
           "qsgd_encode", "qsgd_decode", "terngrad_encode", "terngrad_decode", "dorefa_encode", "dorefa_decode"]


def _check_block(block: int) -> None:
    if not isinstance(block, int) or isinstance(block, bool) or block < 1:
        raise ValueError(f"block must be an int >= 1, got {block!r}")


class Layout(NamedTuple):
    """Where each element of a flat gradient sits in the ``(rows, block)`` matrix of blocks.

    ``positions[i]`` is element ``i``'s index in the flattened padded matrix; ``counts[r]`` is how many real
    elements row ``r`` holds (the rest is zero padding).
    """

    positions: torch.Tensor
    counts: torch.Tensor
    rows: int
    block: int


def layout(numel: int, block: int, segments: Sequence[int] | None = None,
           device: torch.device | str = "cpu") -> Layout:
    """Blocks of ``block`` elements that never straddle a segment boundary.

    ``segments`` are the sizes of consecutive pieces of the flat gradient (in a DDP bucket: its parameters), each
    cut into its own blocks, the last of each possibly short. Default: one segment. A block then never mixes two
    layers, whose gradients can differ in scale by orders of magnitude.

    Example:
        >>> lay = layout(7, 4, [5, 2])
        >>> lay.positions.tolist(), lay.counts.tolist(), lay.rows
        ([0, 1, 2, 3, 4, 8, 9], [4.0, 1.0, 2.0], 3)
    """
    _check_block(block)
    sizes = torch.tensor(_segment_sizes(numel, segments), dtype=torch.int64)
    per_segment = (sizes + block - 1) // block
    first_row = torch.cumsum(per_segment, 0) - per_segment
    first_element = torch.cumsum(sizes, 0) - sizes
    owner = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
    positions = first_row[owner] * block + torch.arange(numel) - first_element[owner]
    rows = int(per_segment.sum())
    counts = torch.full((rows,), float(block))
    used = per_segment > 0
    counts[(first_row + per_segment - 1)[used]] = (sizes - (per_segment - 1) * block)[used].to(torch.float32)
    return Layout(positions.to(device), counts.to(device), rows, block)


def _segment_sizes(numel: int, segments: Sequence[int] | None) -> list[int]:
    """The segments' sizes (one segment of ``numel`` by default), checked to be >= 0 and to add up to ``numel``."""
    sizes = [numel] if segments is None else [int(size) for size in segments]
    if any(size < 0 for size in sizes) or sum(sizes) != numel:
        raise ValueError(f"segments must be sizes >= 0 adding up to {numel}, got {sizes}")
    return sizes


def block_count(numel: int, block: int, segments: Sequence[int] | None = None) -> int:
    """``layout(numel, block, segments).rows``, counted without building the layout.

    Example:
        >>> block_count(7, 4, [5, 2]), rotated_code_count(7, 4, [5, 2])   # blocks of 4, 1, 2 values
        (3, 7)
    """
    _check_block(block)
    return sum(-(-size // block) for size in _segment_sizes(numel, segments))


def rotated_code_count(numel: int, block: int, segments: Sequence[int] | None = None) -> int:
    """How many signs the rotated code sends: ``rotated_lengths(layout(...)).sum()``, counted without the layout."""
    _check_block(block)
    total = 0
    for size in _segment_sizes(numel, segments):
        full, rest = divmod(size, block)
        total += full * block + (1 << (rest - 1).bit_length() if rest else 0)
    return total


def _layout(x: torch.Tensor | int, block: int, segments: Sequence[int] | None, device=None) -> Layout:
    numel = x if isinstance(x, int) else x.numel()
    return layout(numel, block, segments, device if device is not None else getattr(x, "device", "cpu"))


def block_rows(x: torch.Tensor, block: int, segments: Sequence[int] | None = None) -> torch.Tensor:
    """``x`` flattened into a zero-padded ``(blocks, block)`` matrix, one block per row (see :func:`layout`)."""
    return _rows(x, _layout(x, block, segments))


def _rows(x: torch.Tensor, lay: Layout) -> torch.Tensor:
    """:func:`block_rows` for a layout already computed (encoders need it twice: rows, then back to elements)."""
    padded = x.new_zeros(lay.rows * lay.block)
    padded[lay.positions] = x.reshape(-1)
    return padded.view(lay.rows, lay.block)


def _flat(rows: torch.Tensor, lay: Layout) -> torch.Tensor:
    """The real elements of a ``(blocks, block)`` matrix, in the flat gradient's order."""
    return rows.reshape(-1)[lay.positions]


def _per_element(values: torch.Tensor, block: int, numel: int, segments: Sequence[int] | None) -> torch.Tensor:
    """A per-block vector spread over each block's elements (``numel`` of them)."""
    lay = _layout(numel, block, segments, values.device)
    if values.numel() != lay.rows:
        raise ValueError(f"{values.numel()} per-block values for {lay.rows} blocks")
    return values.repeat_interleave(block)[lay.positions]


def block_absmax(x: torch.Tensor, block: int, segments: Sequence[int] | None = None) -> torch.Tensor:
    """``max |x|`` of every block, float32."""
    return block_rows(x, block, segments).abs().amax(dim=1).to(torch.float32)


def onebit_encode(x: torch.Tensor, block: int, segments: Sequence[int] | None = None,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(signs, scales)``: uint8 1 where ``x ≥ 0`` else 0, and each block's mean ``|x|`` in float32 (G1)."""
    lay = _layout(x, block, segments)
    rows = _rows(x, lay).to(torch.float32)
    scales = rows.abs().sum(dim=1) / lay.counts
    return (x.reshape(-1) >= 0).to(torch.uint8), scales


def onebit_decode(signs: torch.Tensor, scales: torch.Tensor, block: int,
                  segments: Sequence[int] | None = None) -> torch.Tensor:
    """``+scale`` where the sign bit is 1, ``−scale`` where it is 0."""
    magnitude = _per_element(scales, block, signs.numel(), segments)
    return torch.where(signs.bool(), magnitude, -magnitude)


def _check_rotation_block(block: int) -> None:
    _check_block(block)
    if not is_power_of_two(block):
        raise ValueError(f"a rotated code needs a power-of-two block, got {block!r}")


def rotated_lengths(lay: Layout) -> torch.Tensor:
    """Each block's rotated length: its element count rounded up to a power of two (int64, one per block).

    A short block (the end of a segment) is zero-padded to that length before the rotation; the rotated vector
    is dense, so every padded coordinate costs a code too.
    """
    return (2 ** torch.ceil(torch.log2(lay.counts.double()))).to(torch.int64)


def rotation_diagonal(numel: int, block: int, generator: torch.Generator,
                      segments: Sequence[int] | None = None) -> torch.Tensor:
    """The random ±1 diagonal ``D`` of every block's rotation, a float32 ``(blocks, block)`` matrix on the
    generator's device (G8)."""
    _check_rotation_block(block)
    return random_signs((block_count(numel, block, segments), block), generator)


def _rotate_rows(rows: torch.Tensor, lengths: torch.Tensor, diagonal: torch.Tensor, inverse: bool) -> torch.Tensor:
    """``(H/√P)·D`` (or its inverse ``D·(H/√P)``) on the first ``P`` entries of each row, ``P`` the row's length."""
    out = torch.zeros_like(rows)
    for length in lengths.unique().tolist():
        idx = (lengths == length).nonzero().squeeze(1)
        part, signs = rows[idx, :length], diagonal[idx, :length]
        out[idx, :length] = fwht(part) * signs if inverse else fwht(part * signs)
    return out


def _sent_mask(lay: Layout, lengths: torch.Tensor) -> torch.Tensor:
    return torch.arange(lay.block, device=lengths.device)[None, :] < lengths[:, None]


def rotated_onebit_encode(x: torch.Tensor, block: int, diagonal: torch.Tensor,
                          segments: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(signs, scales)`` of DRIVE's 1-bit code (G8): per block, ``y = (H/√P)·D·x``, uint8 ``[y ≥ 0]`` for all ``P``
    rotated coordinates (blocks in order), and the float32 scale ``‖x‖₂²/‖y‖₁`` at which ``⟨x̂, x⟩ = ‖x‖₂²`` (0 for
    a block of zeros): the decoded block is nearly unbiased over the random ``D`` (exactly so for a uniformly
    random rotation; the Hadamard one is close, measured in tests).

    Example:
        >>> import torch
        >>> D = rotation_diagonal(4, 4, torch.Generator().manual_seed(0))
        >>> signs, scales = rotated_onebit_encode(torch.tensor([0.0, 3.0, 0.0, 0.0]), 4, D)
        >>> rotated_onebit_decode(signs, scales, 4, D, 4).tolist()   # one large value: decoded exactly
        [0.0, 3.0, 0.0, 0.0]
    """
    _check_rotation_block(block)
    lay = _layout(x, block, segments)
    rows = _rows(x, lay).to(torch.float32)
    lengths = rotated_lengths(lay).to(x.device)
    rotated = _rotate_rows(rows, lengths, diagonal, inverse=False)
    l1 = rotated.abs().sum(dim=1)
    scales = torch.where(l1 > 0, rows.square().sum(dim=1) / torch.where(l1 > 0, l1, 1.0), 0.0)
    return (rotated >= 0)[_sent_mask(lay, lengths)].to(torch.uint8), scales


def rotated_onebit_decode(signs: torch.Tensor, scales: torch.Tensor, block: int, diagonal: torch.Tensor,
                          numel: int, segments: Sequence[int] | None = None) -> torch.Tensor:
    """The ``numel`` float32 values ``D·(H/√P)·(±scale)`` stand for; the padding's coordinates are dropped."""
    _check_rotation_block(block)
    lay = _layout(numel, block, segments, signs.device)
    lengths = rotated_lengths(lay).to(signs.device)
    mask = _sent_mask(lay, lengths)
    if signs.numel() != int(lengths.sum()) or scales.numel() != lay.rows:
        raise ValueError(f"rotated_onebit_decode: {signs.numel()} signs and {scales.numel()} scales for "
                         f"{int(lengths.sum())} rotated coordinates in {lay.rows} blocks")
    codes = torch.zeros(lay.rows, block, device=signs.device)
    codes[mask] = signs.to(torch.float32) * 2 - 1
    return _flat(_rotate_rows(codes * scales[:, None], lengths, diagonal, inverse=True), lay)


def _check_levels(levels: int) -> None:
    if not isinstance(levels, int) or isinstance(levels, bool) or not 1 <= levels <= 2**15:
        raise ValueError(f"QSGD levels must be an int in 1..32768, got {levels!r}")


def qsgd_encode(x: torch.Tensor, levels: int, block: int, generator: torch.Generator | None = None,
                segments: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(signed levels, norms)``: int32 ``sign(x)·⌊s·|x|/‖x‖ + u⌋`` and each block's float32 2-norm (G2).

    A block of zeros has norm 0 and sends level 0 everywhere.
    """
    _check_levels(levels)
    lay = _layout(x, block, segments)
    rows = _rows(x, lay).to(torch.float32)
    norms = rows.norm(dim=1)
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    ratio = rows.abs() / safe[:, None] * levels
    uniform = torch.rand(ratio.shape, generator=generator, dtype=torch.float32, device=x.device)
    # ratio ≤ s, and ratio + u < s + 1: the floor never passes s
    magnitude = torch.floor(ratio + uniform).clamp(max=levels)
    signed = _flat(torch.where(rows < 0, -magnitude, magnitude), lay)
    return signed.to(torch.int32), norms


def qsgd_decode(signed_levels: torch.Tensor, norms: torch.Tensor, levels: int, block: int,
                segments: Sequence[int] | None = None) -> torch.Tensor:
    """``‖x‖·l/s`` per element: the unbiased estimate of ``x``."""
    _check_levels(levels)
    return signed_levels.to(torch.float32) * _per_element(norms / levels, block, signed_levels.numel(), segments)


def clip_to_std(x: torch.Tensor, c: float, block: int, segments: Sequence[int] | None = None) -> torch.Tensor:
    """``x`` clipped to ``[−c·σ, c·σ]`` with ``σ`` the standard deviation of each block (TernGrad's §3.4, G4).

    Example:
        >>> clip_to_std(torch.tensor([1.0, -1.0, 1.0, -1.0, 10.0]), 1.0, block=5).tolist()
        [1.0, -1.0, 1.0, -1.0, 4.0]
    """
    lay = _layout(x, block, segments)
    rows = _rows(x, lay).to(torch.float32)
    mean = rows.sum(dim=1) / lay.counts
    # padding zeros add mean² each to Σ(x − mean)²; take them back out
    spread = (rows - mean[:, None]).square().sum(dim=1) - (block - lay.counts) * mean.square()
    limit = _per_element(c * (spread.clamp(min=0) / lay.counts).sqrt(), block, x.numel(), segments)
    return torch.maximum(torch.minimum(x.reshape(-1).to(torch.float32), limit), -limit)


def terngrad_encode(x: torch.Tensor, scalers: torch.Tensor, block: int,
                    generator: torch.Generator | None = None, segments: Sequence[int] | None = None) -> torch.Tensor:
    """Ternary codes in ``{−1, 0, 1}`` (int8): ``sign(x)`` with probability ``|x|/m`` (G4).

    Args:
        scalers: one ``m`` per block with ``m ≥ max|x|`` of that block (in data-parallel training, the maximum
            over every worker's block, so that all workers decode with the same scaler).

    Raises:
        ValueError: a scaler below its block's ``max|x|``: the probability would exceed 1 and bias the code.
    """
    lay = _layout(x, block, segments)
    rows = _rows(x, lay).to(torch.float32)
    peaks = rows.abs().amax(dim=1)
    if scalers.shape != peaks.shape or bool((scalers < peaks).any()):
        raise ValueError("terngrad_encode: scalers must give one value per block, each >= the block's max |x|")
    safe = torch.where(scalers > 0, scalers, torch.ones_like(scalers))
    chance = rows.abs() / safe[:, None]
    keep = torch.rand(chance.shape, generator=generator, dtype=torch.float32, device=x.device) < chance
    return _flat(torch.sign(rows) * keep, lay).to(torch.int8)


def terngrad_decode(ternary: torch.Tensor, scalers: torch.Tensor, block: int,
                    segments: Sequence[int] | None = None) -> torch.Tensor:
    """``m·t`` per element."""
    return ternary.to(torch.float32) * _per_element(scalers, block, ternary.numel(), segments)


def dorefa_encode(x: torch.Tensor, bits: int, block: int, generator: torch.Generator | None = None,
                  segments: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes, peaks)``: DoReFa's k-bit gradient codes in ``0..2^k − 1`` (int32) and each block's ``max|x|``."""
    lay = _layout(x, block, segments)
    codes, peaks = dorefa_gradient_codes(_rows(x, lay).to(torch.float32), bits, generator)
    return _flat(codes, lay), peaks.reshape(-1)


def dorefa_decode(codes: torch.Tensor, peaks: torch.Tensor, bits: int, block: int,
                  segments: Sequence[int] | None = None) -> torch.Tensor:
    """``2·peak·(q/(2^k − 1) − 1/2)`` per element."""
    return dorefa_gradient_values(codes.reshape(1, -1), _per_element(peaks, block, codes.numel(), segments)[None], bits)[0]
