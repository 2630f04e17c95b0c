"""Gradient compression for data-parallel training, as torch.distributed DDP communication hooks (issue #11).

``register(ddp_model, scheme, **options)`` makes a ``DistributedDataParallel`` model exchange compressed
gradients: ``onebit`` (signs of a randomly rotated block + its scale, DRIVE, with error feedback), ``qsgd``
(stochastic levels, Elias-coded), ``terngrad`` (ternary with shared scalers), ``dorefa`` (k-bit with noise), and ``fp16``/``bf16``/``fp32`` casts.
The returned handle counts the bytes handed to collectives. See docs/math.md §14 and :mod:`lowbit.comm.hook`.
"""

from lowbit.comm.hook import CompressionHandle, register
from lowbit.comm.schemes import SCHEMES, Scheme, make_scheme

__all__ = ["register", "CompressionHandle", "Scheme", "SCHEMES", "make_scheme"]
