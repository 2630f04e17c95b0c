"""Gradient compression as a DDP communication hook: encode, all-gather the codes, decode and average.

:func:`register` installs the hook on a ``DistributedDataParallel`` model. For each gradient bucket, every rank:

1. adds its error-feedback residual, if enabled (G6: ``e = g + r``; after encoding, ``r = β·(e − decode(code(e)))``,
   ``β`` the feedback fraction: 1 carries the whole error, Seide's form and ``onebit``'s default);
2. for TernGrad, max-reduces the per-block scalers so that every rank encodes and decodes with the same ones;
3. encodes the bucket into a uint8 payload (:mod:`lowbit.comm.schemes`) and all-gathers the payloads (lengths
   first when they vary, as QSGD's do);
4. decodes every rank's payload and averages them in rank order. Every rank decodes the same bytes in the same
   order, so every rank ends with the same gradient bit for bit, and the replicas stay identical. Randomness a
   receiver must share with the sender (onebit's rotation) is seeded by :func:`payload_key` of the seed, the
   sender's rank and the exchange's index, which every rank counts alike (DDP exchanges the same buckets in the
   same order on every rank).

The collectives are blocking: the hook returns a finished future. That costs DDP's overlap of communication
with the backward pass, and keeps the hook the same for every backend (gloo, NCCL, MPI).

The handle counts what this rank hands to collectives (``bytes_sent``) and what the plain fp32 all-reduce DDP
does by default would have handed (``bytes_uncompressed``: 4 bytes per gradient element).

Example (one process, a world of one):
    >>> import os, tempfile, torch, torch.distributed as dist
    >>> store = os.path.join(tempfile.mkdtemp(), "store")
    >>> dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    >>> model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(256, 4))
    >>> handle = register(model, "onebit")
    >>> model(torch.randn(8, 256)).square().mean().backward()
    >>> handle.bytes_uncompressed, handle.bytes_sent, round(handle.ratio, 1)  # 1028 values: 3 scales, 129 sign bytes
    (4112, 141, 29.2)
    >>> dist.destroy_process_group()
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from lowbit.comm.schemes import Scheme, make_scheme

__all__ = ["CompressionHandle", "register", "payload_key"]

# One stream of random numbers per (seed, rank): far apart so that seed s on rank 1 is not seed s + 1 on rank 0.
_RANK_STRIDE = 1_000_003


def payload_key(seed: int, rank: int, exchange: int) -> int:
    """The key of the payload ``rank`` sends in its ``exchange``-th bucket exchange (counted from 0) under ``seed``:
    a 64-bit number mixed from the three by numpy's SeedSequence: under one seed, every rank and exchange gets a
    stream of its own.

    Example:
        >>> payload_key(0, 1, 5) == payload_key(0, 1, 5) != payload_key(0, 0, 5)
        True
    """
    words = [seed % 2**64, rank, exchange]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0])


class CompressionHandle:
    """The state of one registered hook: scheme, residuals, generator and the byte counters.

    Attributes:
        scheme: the :class:`~lowbit.comm.schemes.Scheme` in use.
        error_feedback: the fraction ``β`` of each step's compression error carried into the next (0: none).
        bytes_sent: bytes this rank handed to collectives (payloads, lengths, shared scalers).
        bytes_uncompressed: bytes a plain fp32 all-reduce would have handed (4 per gradient element).
        payload_bits: the bits of information in this rank's payloads: their bytes less the padding of each
            payload's last byte (for ``qsgd``, the Elias-coded bit count plus 32 per block norm).
        buckets: gradient buckets exchanged.
    """

    def __init__(self, scheme: Scheme, error_feedback: float, seed: int, group: dist.ProcessGroup | None) -> None:
        self.scheme, self.error_feedback, self.seed, self.group = scheme, error_feedback, seed, group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        self.residuals: dict[int, torch.Tensor] = {}  # id(parameter) → its flat residual
        self.generator: torch.Generator | None = None
        # bucket exchanges so far: the payload keys' counter, the same on every rank; reset_counters leaves it
        self.exchanges = 0
        self.reset_counters()

    def reset_counters(self) -> None:
        """Set the byte, bit and bucket counters to zero (residuals and random state stay)."""
        self.bytes_sent = self.bytes_uncompressed = self.payload_bits = self.buckets = 0

    @property
    def ratio(self) -> float:
        """``bytes_uncompressed / bytes_sent``: how many times fewer bytes than fp32 all-reduce."""
        return self.bytes_uncompressed / self.bytes_sent if self.bytes_sent else float("nan")

    def _generator(self, device: torch.device) -> torch.Generator:
        if self.generator is None:
            self.generator = torch.Generator(device=device).manual_seed(self.seed + _RANK_STRIDE * self.rank)
        return self.generator

    def exchange(self, gradient: torch.Tensor, parameters: list[torch.Tensor]) -> torch.Tensor:
        """The average over ranks of the decoded codes of ``gradient``, a bucket holding the gradients of
        ``parameters`` one after another, as float32."""
        x = gradient.detach().to(torch.float32).reshape(-1)
        if self.error_feedback:
            x = x + self._residual(parameters, x)
        segments = [p.numel() for p in parameters]
        scalers = self.scheme.scalers(x, segments)
        if scalers is not None:
            dist.all_reduce(scalers, op=dist.ReduceOp.MAX, group=self.group)
            self.bytes_sent += scalers.numel() * scalers.element_size()
        keys = [payload_key(self.seed, rank, self.exchanges) for rank in range(self.world)]
        self.exchanges += 1
        payload, local, bits = self.scheme.encode(x, self._generator(x.device), scalers, segments, keys[self.rank])
        if self.error_feedback:
            residual = x - local
            # an overflowed step (inf or NaN, as a GradScaler provokes on purpose) is one the optimizer skips:
            # keep the residual it had, or every later step would inherit the NaN
            if bool(torch.isfinite(residual).all()):
                self._keep_residual(parameters, residual if self.error_feedback == 1 else self.error_feedback * residual)
        self.payload_bits += bits
        total = torch.zeros_like(x)
        for rank, received in enumerate(self._all_gather(payload)):
            # this rank's own codes are already decoded: `local` is decode(payload), bit for bit (tests)
            total += local if rank == self.rank else self.scheme.decode(received, x.numel(), scalers, segments,
                                                                        keys[rank])
        self.bytes_uncompressed += 4 * x.numel()
        self.buckets += 1
        return total / self.world

    def _residual(self, parameters: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """The residuals of ``parameters`` laid out as in the bucket (zeros for a parameter not seen yet).

        Residuals are kept per parameter, not per bucket: DDP rebuilds its buckets after the first step, in the
        order gradients became ready, and a residual kept by position would land on other parameters.
        """
        pieces = [self.residuals.get(id(p), torch.zeros(p.numel(), device=x.device)) for p in parameters]
        return torch.cat(pieces) if pieces else torch.zeros_like(x)

    def _keep_residual(self, parameters: list[torch.Tensor], residual: torch.Tensor) -> None:
        for p, piece in zip(parameters, residual.split([p.numel() for p in parameters])):
            self.residuals[id(p)] = piece

    def _all_gather(self, payload: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's payload in rank order; variable lengths are exchanged first and the payloads padded."""
        length = payload.numel()
        if self.scheme.variable_size:
            lengths = [torch.zeros(1, dtype=torch.int64, device=payload.device) for _ in range(self.world)]
            dist.all_gather(lengths, torch.tensor([length], device=payload.device), group=self.group)
            self.bytes_sent += 8
            sizes = [int(n) for n in lengths]
            payload = torch.cat([payload, payload.new_zeros(max(sizes) - length)])
        else:
            sizes = [length] * self.world
        gathered = [torch.empty_like(payload) for _ in range(self.world)]
        dist.all_gather(gathered, payload, group=self.group)
        self.bytes_sent += payload.numel()
        return [g[:n] for g, n in zip(gathered, sizes)]


# No annotations: DDP compares them with the real classes, and `from __future__ import annotations` makes strings.
def _hook(handle, bucket):  # (CompressionHandle, dist.GradBucket) -> Future[Tensor]
    buffer, parameters = bucket.buffer(), bucket.parameters()
    if sum(p.numel() for p in parameters) != buffer.numel():
        raise RuntimeError(f"lowbit.comm: a gradient bucket of {buffer.numel()} values holds parameters of "
                           f"{sum(p.numel() for p in parameters)}; the hook cannot place error-feedback residuals")
    buffer.copy_(handle.exchange(buffer, parameters).view_as(buffer))
    future: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    future.set_result(buffer)
    return future


def _feedback_fraction(scheme: Scheme, error_feedback: bool | float | None) -> float:
    if error_feedback is None:
        return scheme.default_feedback
    if isinstance(error_feedback, (bool, np.bool_)):
        return float(error_feedback)
    if not isinstance(error_feedback, numbers.Real) or not 0 <= error_feedback <= 1:
        raise ValueError(f"register: error_feedback must be a bool or a fraction in [0, 1], got {error_feedback!r}")
    return float(error_feedback)


def register(ddp_model: DistributedDataParallel, scheme: str, *, seed: int = 0,
             error_feedback: bool | float | None = None,
             process_group: dist.ProcessGroup | None = None, **options: object) -> CompressionHandle:
    """Compress ``ddp_model``'s gradient exchange with ``scheme``; call before the first backward pass.

    Args:
        ddp_model: a ``torch.nn.parallel.DistributedDataParallel`` model.
        scheme: ``onebit``, ``qsgd``, ``terngrad``, ``dorefa``, ``fp16``, ``bf16`` or ``fp32``.
        seed: seeds each rank's random stream (with the rank), so a rerun draws the same codes.
        error_feedback: the fraction ``β`` in [0, 1] of each step's compression error carried into the next step
            (G6); ``True`` is 1 (the whole error, Seide et al.'s form), ``False`` is 0. Default: 1 for
            ``onebit`` (1-bit SGD with error feedback), 0 for the others, which are unbiased without it, and 0.25
            for ``onebit`` with ``rotate=False``: that code is biased, and with SGD momentum 0.9 full feedback
            lost 8–10 points on LeNet-5 where 0.25 lost about one (docs/benchmarks.md).
        process_group: the group to average over (default: the model's).
        options: the scheme's own: ``block`` (elements per scale, default 512; a power of two for ``onebit``'s
            rotation), ``rotate`` (onebit, default True), ``levels`` (qsgd, default 16), ``bits`` (dorefa: 1, 2,
            4 or 8, default 4), ``clip`` (terngrad, default 2.5).

    Returns:
        The :class:`CompressionHandle` with the byte counters.

    Raises:
        ValueError: a model that is not DDP, an unknown scheme or option, or a bad option value (named).
    """
    if not isinstance(ddp_model, DistributedDataParallel):
        raise ValueError(f"register: ddp_model must be a DistributedDataParallel model, got {type(ddp_model).__name__}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"register: seed must be an int, got {seed!r}")
    compressor = make_scheme(scheme, **options)
    feedback = _feedback_fraction(compressor, error_feedback)
    group = process_group if process_group is not None else getattr(ddp_model, "process_group", None)
    handle = CompressionHandle(compressor, feedback, seed, group)
    ddp_model.register_comm_hook(handle, _hook)
    return handle
