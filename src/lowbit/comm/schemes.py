"""What each gradient-compression scheme puts on the wire, and how a receiver reads it back (docs/math.md §14).

A scheme turns one rank's flat float32 gradient into a uint8 *payload* (the bytes handed to the all-gather) and
reads any rank's payload back into floats. Per-block float32 numbers travel in front of the codes:

| scheme | payload | bits per element (block 512) |
|---|---|---|
| ``onebit`` | a scale per block, the 1-bit signs of its random rotation (DRIVE) | 1.06 (+ short blocks' padding) |
| ``onebit``, ``rotate=False`` | mean ``|x|`` per block, 1-bit signs | 1.06 |
| ``qsgd`` | 2-norm per block, Elias-gamma levels (variable length) | ≈ 2–3 at s = 16 |
| ``terngrad`` | 2-bit ternary codes; the scalers travel in a max all-reduce | 2.06 |
| ``dorefa`` | ``max|x|`` per block, k-bit codes | k + 0.06 |
| ``fp16`` / ``bf16`` / ``fp32`` | the cast values | 16 / 16 / 32 |

Example:
    >>> import torch
    >>> scheme = make_scheme("onebit", block=4)
    >>> payload, local, bits = scheme.encode(torch.tensor([0.5, -1.0, 0.25, 0.0]), None, None, key=7)
    >>> payload.numel(), bits, scheme.decode(payload, 4, None, key=7).tolist() == local.tolist()
    (5, 36, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lowbit.functional import gradient_codes as G
from lowbit.functional.elias import elias_bits, elias_decode, elias_encode
from lowbit.functional.packing import pack_lanes, unpack_lanes

__all__ = ["Scheme", "OneBit", "QSGD", "TernGrad", "DoReFa", "Cast", "SCHEMES", "make_scheme"]


def _as_bytes(values: torch.Tensor) -> torch.Tensor:
    return values.contiguous().view(torch.uint8).reshape(-1)


def _floats(payload: torch.Tensor, count: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The first ``count`` values of ``dtype`` at the front of a payload (copied: a slice may be misaligned)."""
    size = torch.empty((), dtype=dtype).element_size()
    return payload[: count * size].clone().view(dtype)


def _blocks(numel: int, block: int, segments: Sequence[int] | None) -> int:
    """Blocks of a gradient of ``numel`` values (each segment cut on its own)."""
    return G.block_count(numel, block, segments)


class Scheme:
    """One way of compressing a gradient. Subclasses set ``name`` and implement :meth:`encode`/:meth:`decode`.

    ``variable_size``: payloads differ in length between ranks (their lengths are exchanged first).
    ``shares_scalers``: :meth:`scalers` gives per-block numbers that all ranks max-reduce before encoding.
    ``default_feedback``: the error-feedback fraction ``β`` the hook uses when none is given (G6): 0 for the
    unbiased codes.
    """

    name = "scheme"
    variable_size = False
    shares_scalers = False
    default_feedback = 0.0

    def scalers(self, x: torch.Tensor, segments: Sequence[int] | None = None) -> torch.Tensor | None:
        """Numbers every rank must agree on before encoding (max-reduced across ranks), or None."""
        return None

    def encode(self, x: torch.Tensor, generator: torch.Generator | None, scalers: torch.Tensor | None,
               segments: Sequence[int] | None = None, key: int = 0) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(payload, local, bits)``: the uint8 bytes to send, the float32 gradient they stand for, and the bits
        of information in the payload (its bytes less the padding of the last one). ``segments``: the sizes of
        the bucket's parameters, whose blocks are cut separately (:func:`lowbit.functional.gradient_codes.layout`).
        ``generator``: the sender's own random stream. ``key``: a number the sender and every receiver agree on
        for this payload (the hook derives it from the seed, the sender's rank and the exchange), the seed of
        randomness both sides need (onebit's rotation); schemes without such randomness ignore it.
        """
        raise NotImplementedError

    def decode(self, payload: torch.Tensor, numel: int, scalers: torch.Tensor | None,
               segments: Sequence[int] | None = None, key: int = 0) -> torch.Tensor:
        """The float32 gradient (``numel`` values) a payload stands for; ``key`` as the sender's :meth:`encode`."""
        raise NotImplementedError


@dataclass(frozen=True)
class OneBit(Scheme):
    """One bit per value and one float32 scale per block: 1-bit SGD (Seide et al. 2014).

    ``rotate=True`` (default): DRIVE (Vargaftik et al. 2021, G8). Each block is turned by a random Hadamard
    rotation drawn from the payload's ``key`` (on the CPU, so that every device draws the same signs), and the
    signs of the rotated block travel with the scale ``‖x‖₂²/‖y‖₁``, which leaves the error orthogonal to the
    block (nearly unbiased over the rotation). The rotation spreads a block's few large values over all of its
    coordinates, so one scale fits them all. ``block`` must be a power of two; a segment's short last block is
    padded to the next power of two, and the padding's signs travel too.

    ``rotate=False``: the scaled sign of Karimireddy et al. 2019 (G1), ``sign(x)`` and the block's mean ``|x|``.
    About half the compute, but biased: with full error feedback and momentum it lost 8–10 points here
    (docs/benchmarks.md), so its default feedback is damped (:attr:`default_feedback`).
    """

    block: int = 512
    rotate: bool = True
    name = "onebit"

    def __post_init__(self) -> None:
        if not isinstance(self.rotate, bool):
            raise ValueError(f"onebit: rotate must be True or False, got {self.rotate!r}")
        (G._check_rotation_block if self.rotate else G._check_block)(self.block)

    @property
    def default_feedback(self) -> float:  # type: ignore[override]
        # full feedback for the rotated code; the plain one's measured best damping (docs/benchmarks.md)
        return 1.0 if self.rotate else 0.25

    def _diagonal(self, numel, segments, key, device):
        # drawn on the CPU: a CUDA generator's stream for one seed can differ between GPU models
        generator = torch.Generator().manual_seed(key)
        return G.rotation_diagonal(numel, self.block, generator, segments).to(device)

    def encode(self, x, generator, scalers, segments=None, key=0):
        if not self.rotate:
            signs, scales = G.onebit_encode(x, self.block, segments)
            local = G.onebit_decode(signs, scales, self.block, segments)
        else:
            diagonal = self._diagonal(x.numel(), segments, key, x.device)
            signs, scales = G.rotated_onebit_encode(x, self.block, diagonal, segments)
            local = G.rotated_onebit_decode(signs, scales, self.block, diagonal, x.numel(), segments)
        payload = torch.cat([_as_bytes(scales), pack_lanes(signs, 1)])
        return payload, local, 32 * scales.numel() + signs.numel()

    def decode(self, payload, numel, scalers, segments=None, key=0):
        blocks = _blocks(numel, self.block, segments)
        scales = _floats(payload, blocks)
        if not self.rotate:
            return G.onebit_decode(unpack_lanes(payload[4 * blocks:], 1, numel), scales, self.block, segments)
        signs = unpack_lanes(payload[4 * blocks:], 1, G.rotated_code_count(numel, self.block, segments))
        diagonal = self._diagonal(numel, segments, key, payload.device)
        return G.rotated_onebit_decode(signs, scales, self.block, diagonal, numel, segments)


@dataclass(frozen=True)
class QSGD(Scheme):
    """QSGD (Alistarh et al. 2017): ``s`` stochastic levels of ``|x|/‖x‖₂`` per block, Elias-gamma coded (G2, G3).

    The Elias stream is built on the CPU (a sequential bit writer); on a GPU the levels make one round trip.
    """

    levels: int = 16
    block: int = 512
    name = "qsgd"
    variable_size = True

    def __post_init__(self) -> None:
        G._check_block(self.block)
        G._check_levels(self.levels)

    def encode(self, x, generator, scalers, segments=None, key=0):
        signed, norms = G.qsgd_encode(x, self.levels, self.block, generator, segments)
        levels = signed.cpu().numpy()
        stream = torch.from_numpy(elias_encode(levels)).to(x.device)
        payload = torch.cat([_as_bytes(norms), stream])
        bits = 32 * norms.numel() + elias_bits(levels)
        return payload, G.qsgd_decode(signed, norms, self.levels, self.block, segments), bits

    def decode(self, payload, numel, scalers, segments=None, key=0):
        blocks = _blocks(numel, self.block, segments)
        stream = payload[4 * blocks:].cpu().numpy()
        signed = torch.from_numpy(elias_decode(stream, numel).astype(np.int32)).to(payload.device)
        return G.qsgd_decode(signed, _floats(payload, blocks), self.levels, self.block, segments)


@dataclass(frozen=True)
class TernGrad(Scheme):
    """TernGrad (Wen et al. 2017): ``{−1, 0, 1}·m`` with the block scaler ``m`` max-reduced across ranks (G4).

    ``clip``: first clip each block to ``clip·σ`` (its standard deviation), as the paper does (c = 2.5): a few
    outliers would otherwise set ``m`` and leave almost every other value at 0. ``None`` sends the unclipped,
    exactly unbiased code.
    """

    block: int = 512
    clip: float | None = 2.5
    name = "terngrad"
    shares_scalers = True

    def __post_init__(self) -> None:
        G._check_block(self.block)
        if self.clip is not None and (isinstance(self.clip, bool) or not isinstance(self.clip, (int, float))
                                      or not self.clip > 0):
            raise ValueError(f"terngrad: clip must be a number > 0 or None, got {self.clip!r}")

    def _clipped(self, x, segments):
        return x if self.clip is None else G.clip_to_std(x, float(self.clip), self.block, segments)

    def scalers(self, x, segments=None):
        return G.block_absmax(self._clipped(x, segments), self.block, segments)

    def encode(self, x, generator, scalers, segments=None, key=0):
        ternary = G.terngrad_encode(self._clipped(x, segments), scalers, self.block, generator, segments)
        payload = pack_lanes((ternary + 1).to(torch.uint8), 2)
        return payload, G.terngrad_decode(ternary, scalers, self.block, segments), 2 * x.numel()

    def decode(self, payload, numel, scalers, segments=None, key=0):
        ternary = unpack_lanes(payload, 2, numel).to(torch.int8) - 1
        return G.terngrad_decode(ternary, scalers, self.block, segments)


@dataclass(frozen=True)
class DoReFa(Scheme):
    """DoReFa-Net's k-bit gradient with uniform noise, ``max|x|`` per block (G5); ``bits`` in 1, 2, 4, 8."""

    bits: int = 4
    block: int = 512
    name = "dorefa"

    def __post_init__(self) -> None:
        G._check_block(self.block)
        if self.bits not in (1, 2, 4, 8):
            raise ValueError(f"dorefa: bits must be 1, 2, 4 or 8 (whole fields per byte), got {self.bits!r}")

    def encode(self, x, generator, scalers, segments=None, key=0):
        codes, peaks = G.dorefa_encode(x, self.bits, self.block, generator, segments)
        payload = torch.cat([_as_bytes(peaks), pack_lanes(codes.to(torch.uint8), self.bits)])
        bits = 32 * peaks.numel() + self.bits * x.numel()
        return payload, G.dorefa_decode(codes, peaks, self.bits, self.block, segments), bits

    def decode(self, payload, numel, scalers, segments=None, key=0):
        blocks = _blocks(numel, self.block, segments)
        codes = unpack_lanes(payload[4 * blocks:], self.bits, numel)
        return G.dorefa_decode(codes, _floats(payload, blocks), self.bits, self.block, segments)


@dataclass(frozen=True)
class Cast(Scheme):
    """The gradient cast to ``fp16``, ``bf16`` or ``fp32`` (round to nearest even): references, not codes."""

    dtype: str = "fp16"

    def __post_init__(self) -> None:
        if self.dtype not in _CASTS:
            raise ValueError(f"cast: dtype must be one of {sorted(_CASTS)}, got {self.dtype!r}")

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.dtype

    def encode(self, x, generator, scalers, segments=None, key=0):
        cast = x.to(_CASTS[self.dtype])
        payload = _as_bytes(cast)
        return payload, cast.to(torch.float32), 8 * payload.numel()

    def decode(self, payload, numel, scalers, segments=None, key=0):
        return _floats(payload, numel, _CASTS[self.dtype]).to(torch.float32)


_CASTS = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}

# The schemes make_scheme knows, by name.
SCHEMES = {
    "onebit": OneBit,
    "qsgd": QSGD,
    "terngrad": TernGrad,
    "dorefa": DoReFa,
    "fp16": lambda: Cast("fp16"),
    "bf16": lambda: Cast("bf16"),
    "fp32": lambda: Cast("fp32"),
}


def make_scheme(name: str, **options: object) -> Scheme:
    """The scheme called ``name`` with its options (``block``, ``levels`` for qsgd, ``bits`` for dorefa).

    Raises:
        ValueError: an unknown scheme or an option it does not take, naming both.
    """
    if name not in SCHEMES:
        raise ValueError(f"scheme must be one of {sorted(SCHEMES)}, got {name!r}")
    try:
        return SCHEMES[name](**options)  # type: ignore[operator]
    except TypeError:
        raise ValueError(f"scheme {name!r} does not take the options {sorted(options)}") from None
