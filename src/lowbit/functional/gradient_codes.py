"""Gradient codes for data-parallel training: 1-bit sign, QSGD, TernGrad, DoReFa (docs/math.md §14, G1–G5).

Every function takes a flat float gradient ``x`` cut into blocks of ``block`` elements (the last may be short)
and returns integer codes plus one float32 number per block; the matching ``*_decode`` gives back the float
gradient the codes stand for. Randomness comes only from the ``generator`` passed in, so a seeded run is
repeatable. No communication happens here (:mod:`lowbit.comm` moves the codes).

- ``onebit``: ``sign(x)`` (0 counts as +) and the block's mean ``|x|`` (G1). Biased; error feedback repairs it.
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

import torch

from lowbit.functional.dorefa import dorefa_gradient_codes, dorefa_gradient_values

__all__ = ["block_rows", "block_absmax", "onebit_encode", "onebit_decode", "qsgd_encode", "qsgd_decode",
           "terngrad_encode", "terngrad_decode", "dorefa_encode", "dorefa_decode"]


def _check_block(block: int) -> None:
    if not isinstance(block, int) or isinstance(block, bool) or block < 1:
        raise ValueError(f"block must be an int >= 1, got {block!r}")


def block_rows(x: torch.Tensor, block: int) -> torch.Tensor:
    """``x`` flattened and zero-padded to a ``(blocks, block)`` matrix, one block per row."""
    _check_block(block)
    flat = x.reshape(-1)
    return torch.cat([flat, flat.new_zeros(-flat.numel() % block)]).view(-1, block)


def _block_sizes(numel: int, block: int, device: torch.device) -> torch.Tensor:
    """Elements in each block: ``block`` everywhere but the last, which holds the rest."""
    sizes = torch.full((-(-numel // block),), block, dtype=torch.float32, device=device)
    if numel % block:
        sizes[-1] = numel % block
    return sizes


def _per_element(values: torch.Tensor, block: int, numel: int) -> torch.Tensor:
    """A per-block vector repeated over each block's elements (``numel`` of them)."""
    _check_block(block)
    return values.repeat_interleave(block)[:numel]


def block_absmax(x: torch.Tensor, block: int) -> torch.Tensor:
    """``max |x|`` of every block, float32."""
    return block_rows(x, block).abs().amax(dim=1).to(torch.float32)


def onebit_encode(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(signs, scales)``: uint8 1 where ``x ≥ 0`` else 0, and each block's mean ``|x|`` in float32 (G1)."""
    rows = block_rows(x, block).to(torch.float32)
    scales = rows.abs().sum(dim=1) / _block_sizes(x.numel(), block, x.device)
    return (x.reshape(-1) >= 0).to(torch.uint8), scales


def onebit_decode(signs: torch.Tensor, scales: torch.Tensor, block: int) -> torch.Tensor:
    """``+scale`` where the sign bit is 1, ``−scale`` where it is 0."""
    magnitude = _per_element(scales, block, signs.numel())
    return torch.where(signs.bool(), magnitude, -magnitude)


def _check_levels(levels: int) -> None:
    if not isinstance(levels, int) or isinstance(levels, bool) or not 1 <= levels <= 2**15:
        raise ValueError(f"QSGD levels must be an int in 1..32768, got {levels!r}")


def qsgd_encode(x: torch.Tensor, levels: int, block: int, generator: torch.Generator | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(signed levels, norms)``: int32 ``sign(x)·⌊s·|x|/‖x‖ + u⌋`` and each block's float32 2-norm (G2).

    A block of zeros has norm 0 and sends level 0 everywhere.
    """
    _check_levels(levels)
    rows = block_rows(x, block).to(torch.float32)
    norms = rows.norm(dim=1)
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    ratio = rows.abs() / safe[:, None] * levels
    uniform = torch.rand(ratio.shape, generator=generator, dtype=torch.float32, device=x.device)
    # ratio ≤ s, and ratio + u < s + 1: the floor never passes s
    magnitude = torch.floor(ratio + uniform).clamp(max=levels)
    signed = torch.where(rows < 0, -magnitude, magnitude).reshape(-1)[: x.numel()]
    return signed.to(torch.int32), norms


def qsgd_decode(signed_levels: torch.Tensor, norms: torch.Tensor, levels: int, block: int) -> torch.Tensor:
    """``‖x‖·l/s`` per element: the unbiased estimate of ``x``."""
    _check_levels(levels)
    return signed_levels.to(torch.float32) * _per_element(norms / levels, block, signed_levels.numel())


def terngrad_encode(x: torch.Tensor, scalers: torch.Tensor, block: int,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Ternary codes in ``{−1, 0, 1}`` (int8): ``sign(x)`` with probability ``|x|/m`` (G4).

    Args:
        scalers: one ``m`` per block with ``m ≥ max|x|`` of that block (in data-parallel training, the maximum
            over every worker's block, so that all workers decode with the same scaler).

    Raises:
        ValueError: a scaler below its block's ``max|x|``: the probability would exceed 1 and bias the code.
    """
    rows = block_rows(x, block).to(torch.float32)
    peaks = rows.abs().amax(dim=1)
    if scalers.shape != peaks.shape or bool((scalers < peaks).any()):
        raise ValueError("terngrad_encode: scalers must give one value per block, each >= the block's max |x|")
    safe = torch.where(scalers > 0, scalers, torch.ones_like(scalers))
    chance = rows.abs() / safe[:, None]
    keep = torch.rand(chance.shape, generator=generator, dtype=torch.float32, device=x.device) < chance
    return (torch.sign(rows) * keep).reshape(-1)[: x.numel()].to(torch.int8)


def terngrad_decode(ternary: torch.Tensor, scalers: torch.Tensor, block: int) -> torch.Tensor:
    """``m·t`` per element."""
    return ternary.to(torch.float32) * _per_element(scalers, block, ternary.numel())


def dorefa_encode(x: torch.Tensor, bits: int, block: int, generator: torch.Generator | None = None,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes, peaks)``: DoReFa's k-bit gradient codes in ``0..2^k − 1`` (int32) and each block's ``max|x|``."""
    codes, peaks = dorefa_gradient_codes(block_rows(x, block).to(torch.float32), bits, generator)
    return codes.reshape(-1)[: x.numel()], peaks.reshape(-1)


def dorefa_decode(codes: torch.Tensor, peaks: torch.Tensor, bits: int, block: int) -> torch.Tensor:
    """``2·peak·(q/(2^k − 1) − 1/2)`` per element."""
    return dorefa_gradient_values(codes.reshape(1, -1), _per_element(peaks, block, codes.numel())[None], bits)[0]
