"""The fast Walsh–Hadamard transform and random Hadamard rotations (docs/math.md §14, G8).

``H_n`` is the Sylvester-ordered ``n × n`` Hadamard matrix (``H_1 = [1]``, ``H_2n = [[H_n, H_n], [H_n, −H_n]]``,
the order of ``scipy.linalg.hadamard``), and ``H_n/√n`` is orthonormal, symmetric and its own inverse. A *random
Hadamard rotation* multiplies by a diagonal of random signs ``D`` first: ``y = (H_n/√n)·D·x``. Whatever ``x`` looks
like (one large value, a run of zeros), the coordinates of ``y`` are spread almost like Gaussian ones, which is
what a 1-bit code needs (Ailon & Chazelle 2009; used for gradients by Suresh et al. 2017 and DRIVE, Vargaftik et
al. 2021). :func:`fwht` takes ``n·log₂ n`` additions instead of the ``n²`` of a matrix product.

Example:
    >>> import torch
    >>> fwht(torch.tensor([1.0, 0.0, 0.0, 0.0])).tolist()       # one large value spreads evenly
    [0.5, 0.5, 0.5, 0.5]
    >>> x = torch.randn(3, 8, dtype=torch.float64)
    >>> torch.allclose(fwht(fwht(x)), x)                         # its own inverse
    True
"""

from __future__ import annotations

import torch

__all__ = ["is_power_of_two", "fwht", "random_signs"]


def is_power_of_two(n: int) -> bool:
    """True for 1, 2, 4, 8, …"""
    return isinstance(n, int) and not isinstance(n, bool) and n >= 1 and n & (n - 1) == 0


def fwht(x: torch.Tensor) -> torch.Tensor:
    """``x·(H_n/√n)`` over the last dimension, whose length ``n`` must be a power of two (``H_n`` symmetric).

    Raises:
        ValueError: a last dimension that is not a power of two, naming it.
    """
    n = x.shape[-1]
    if not is_power_of_two(n):
        raise ValueError(f"fwht: the last dimension must be a power of two, got {n}")
    y = x.reshape(-1, n)
    half = 1
    while half < n:
        # butterflies of span `half`: (a, b) → (a + b, a − b), a and b `half` apart inside each run of 2·half
        pairs = y.reshape(-1, n // (2 * half), 2, half)
        a, b = pairs[:, :, 0], pairs[:, :, 1]
        y = torch.stack((a + b, a - b), dim=2)
        half *= 2
    return (y * n ** -0.5).reshape(x.shape)


def random_signs(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """A float32 tensor of independent ±1, each with probability ½, drawn from ``generator`` on its device (the
    ``D`` of a random Hadamard rotation: the same CPU generator state gives the same signs on every process; a
    CUDA generator's numbers can depend on the GPU model, so processes that must agree draw on the CPU)."""
    bits = torch.randint(0, 2, shape, generator=generator, dtype=torch.int8, device=generator.device)
    return bits.to(torch.float32) * 2 - 1
