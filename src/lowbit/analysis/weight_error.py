"""How much each weight tensor loses when quantized: SQNR per tensor, bit width and granularity.

Example:
    >>> import torch
    >>> from lowbit import PerChannel, PerTensor
    >>> torch.manual_seed(0) and None
    >>> w = torch.randn(16, 64) * torch.logspace(-2, 0, 16).unsqueeze(1)   # channels of very different scale
    >>> rows = weight_sqnr_table({"fc": w}, bits=(4,), granularities=(PerTensor(), PerChannel(0)))
    >>> [(r.granularity, r.bits) for r in rows]
    [('per-tensor', 4), ('per-channel', 4)]
    >>> rows[1].sqnr_db > rows[0].sqnr_db      # per-channel scales follow each channel
    True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from lowbit.analysis.metrics import sqnr
from lowbit.functional.affine import choose_qparams, fake_quantize, qparam_shape, reduce_minmax
from lowbit.spec import Granularity, PerChannel, PerGroup, PerTensor, QuantSpec

__all__ = ["WeightSQNR", "weight_sqnr_table", "granularity_label"]


@dataclass(frozen=True)
class WeightSQNR:
    """One row: a tensor quantized symmetrically (min/max range) at ``bits`` with ``granularity``."""

    name: str
    shape: tuple[int, ...]
    bits: int
    granularity: str
    sqnr_db: float


def granularity_label(granularity: Granularity) -> str:
    """Short human label: ``per-tensor``, ``per-channel``, ``per-group-128``."""
    if isinstance(granularity, PerTensor):
        return "per-tensor"
    if isinstance(granularity, PerChannel):
        return "per-channel"
    assert isinstance(granularity, PerGroup)
    return f"per-group-{granularity.size}"


def weight_sqnr_table(
    weights: Mapping[str, torch.Tensor],
    bits: Iterable[int] = (8, 4, 2),
    granularities: Iterable[Granularity] = (PerTensor(), PerChannel(0), PerGroup(0, 128)),
) -> list[WeightSQNR]:
    """SQNR of every weight at every bit width and granularity (symmetric signed grid, min/max range).

    Granularities that do not fit a tensor (a group size that does not divide its rows) are skipped for it.

    Args:
        weights: name → float tensor.
        bits: widths to try (2..16).
        granularities: :class:`~lowbit.spec.PerTensor` / ``PerChannel`` / ``PerGroup`` instances.

    Returns:
        Rows in the order weights × bits × granularities.
    """
    rows: list[WeightSQNR] = []
    bit_list, gran_list = list(bits), list(granularities)
    for name, w in weights.items():
        w = w.detach().to(torch.float32)
        for b in bit_list:
            for g in gran_list:
                try:
                    qparam_shape(w.shape, g)
                except ValueError:
                    continue
                spec = QuantSpec(bits=b, granularity=g)
                qp = choose_qparams(*reduce_minmax(w, g), spec)
                rows.append(WeightSQNR(name, tuple(w.shape), b, granularity_label(g), sqnr(w, fake_quantize(w, qp))))
    return rows
