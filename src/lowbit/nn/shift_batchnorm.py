"""Shift-based batch normalization (Courbariaux, Hubara et al. 2016, Algorithm 3; docs/math.md B5).

Per channel, over the batch and spatial positions, with ``x ≪≫ y = x · ap2(y)`` (:mod:`lowbit.functional.shift`):

    μ  = mean(x)                              (the mean, as in batch norm)
    C  = x − μ                                (centred input)
    σ̃² = mean(C ≪≫ C)                         (eq. B5.3: each square C² becomes C · ap2(C))
    x̂  = C ≪≫ (σ̃² + ε)^−½                     (eq. B5.4: a shift instead of a divide)
    y  = x̂ ≪≫ γ + β                           (eq. B5.5)

``β`` is batch norm's learned offset, an add with no multiply to replace. Every factor a shift replaces is off by
at most ``√2`` and the variance by at most ``√2``, so ``y − β`` is within a factor ``2^(5/4) ≈ 2.38`` of
``torch.nn.BatchNorm``'s, with the same sign (eq. B5.6). When ``γ`` and ``σ² + ε`` are exact powers of two and
four and ``C`` is ± a power of two, the two agree exactly.

In eval mode (with running statistics) ``σ̃²`` and ``μ`` are the running estimates: ``y = (x − μ_run) ≪≫
(σ²_run + ε)^−½ ≪≫ γ + β``. The running variance is updated like torch's, with the shift estimate ``σ̃²`` times
``n/(n − 1)``, so a converted ``nn.BatchNorm``'s statistics mean the same thing here.

Training goes through autograd: each ``ap2`` passes its gradient straight through (``ap2_ste``), so ``γ``, ``β``
and the input all get gradients.

Example:
    >>> import torch
    >>> bn = ShiftBatchNorm1d(1)
    >>> bn(torch.tensor([[1.0], [3.0]])).detach()        # μ = 2, σ̃² = 1, ap2(1/√(1 + 1e−5)) = 1
    tensor([[-1.],
            [ 1.]])
    >>> bn.running_mean, bn.running_var                 # 0.9·0 + 0.1·2, 0.9·1 + 0.1·(1·2/1)
    (tensor([0.2000]), tensor([1.1000]))
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lowbit.functional.shift import shift_mul

__all__ = ["ShiftBatchNorm1d", "ShiftBatchNorm2d"]


class _ShiftBatchNorm(nn.Module):
    """Shared body of :class:`ShiftBatchNorm1d` and :class:`ShiftBatchNorm2d` (same state names as torch's BN)."""

    _input_dims: tuple[int, ...] = ()
    _float_type: type[nn.Module] = nn.Module

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        # Validate here, not at forward time: a bad config should fail where it is written.
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"{type(self).__name__}: num_features must be a positive int, got {num_features!r}")
        if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
            raise ValueError(f"{type(self).__name__}: eps must be a finite number >= 0, got {eps!r}")
        if momentum is not None and not (isinstance(momentum, (int, float)) and 0.0 <= momentum <= 1.0):
            raise ValueError(f"{type(self).__name__}: momentum must be in [0, 1] or None, got {momentum!r}")
        self.num_features = num_features
        self.eps = float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.affine = affine
        self.track_running_stats = track_running_stats
        factory = {"device": device, "dtype": dtype}
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features, **factory))
            self.bias = nn.Parameter(torch.zeros(num_features, **factory))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, no batches seen (as ``nn.BatchNorm``)."""
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1.0)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Reset the running statistics and set ``γ = 1``, ``β = 0``."""
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim not in self._input_dims:
            dims = " or ".join(f"{d}-D" for d in self._input_dims)
            raise ValueError(f"{type(self).__name__} expects {dims} input, got shape {tuple(x.shape)}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}({self.num_features}) got {x.shape[1]} channels in input of "
                             f"shape {tuple(x.shape)}")

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var_shift: torch.Tensor, count: int) -> None:
        # Bookkeeping for inference, not part of the shift arithmetic: torch's update rule, so that the statistics
        # copied by from_batchnorm and the ones accumulated here are the same kind of estimate.
        self.num_batches_tracked.add_(1)
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var_shift * (count / (count - 1))
        self.running_mean.mul_(1.0 - momentum).add_(mean.to(self.running_mean.dtype), alpha=momentum)
        self.running_var.mul_(1.0 - momentum).add_(unbiased.to(self.running_var.dtype), alpha=momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize ``x`` per channel (dim 1) with shifts in place of multiplies (eqs. B5.3–B5.5).

        Args:
            x: ``[N, C]`` or ``[N, C, L]`` for the 1-D module, ``[N, C, H, W]`` for the 2-D one.

        Returns:
            ``y`` of ``x``'s shape: batch statistics in training mode (or without running statistics), the running
            ones in eval mode.

        Raises:
            ValueError: on a wrong number of dimensions or channels, or one value per channel in training.
        """
        self._check_input(x)
        dims = (0, *range(2, x.ndim))
        shape = (1, self.num_features) + (1,) * (x.ndim - 2)
        use_batch_stats = self.training or not self.track_running_stats
        if use_batch_stats:
            count = x.numel() // self.num_features
            if count < 2 and self.training:
                raise ValueError(f"{type(self).__name__} needs more than 1 value per channel when training, got "
                                 f"input of shape {tuple(x.shape)}")
            mean = x.mean(dim=dims)
            centered = x - mean.view(shape)
            var = shift_mul(centered, centered).mean(dim=dims)  # eq. B5.3
            if self.training and self.track_running_stats:
                self._update_running_stats(mean.detach(), var.detach(), count)
        else:
            centered = x - self.running_mean.view(shape)
            var = self.running_var
        y = shift_mul(centered, torch.rsqrt(var + self.eps).view(shape))  # eq. B5.4
        if self.affine:
            y = shift_mul(y, self.weight.view(shape)) + self.bias.view(shape)  # eq. B5.5
        return y

    @classmethod
    def from_batchnorm(cls, bn: nn.Module) -> _ShiftBatchNorm:
        """A shift-based copy of a torch BatchNorm: same hyper-parameters, ``γ``, ``β``, running statistics,
        batch count, dtype, device and train/eval mode. The state-dict keys are torch's, so the copy's
        ``state_dict()`` also loads back into an ``nn.BatchNorm``.

        Args:
            bn: an ``nn.BatchNorm1d`` for :class:`ShiftBatchNorm1d`, an ``nn.BatchNorm2d`` for
                :class:`ShiftBatchNorm2d`.

        Returns:
            A new module; ``bn`` is not changed and shares no storage with it.

        Raises:
            ValueError: if ``bn`` is not the matching BatchNorm type.

        Example:
            >>> bn = torch.nn.BatchNorm2d(3, eps=1e-3).eval()
            >>> sbn = ShiftBatchNorm2d.from_batchnorm(bn)
            >>> sbn.eps, sbn.training, torch.equal(sbn.running_var, bn.running_var)
            (0.001, False, True)
        """
        if not isinstance(bn, cls._float_type):
            raise ValueError(f"{cls.__name__}.from_batchnorm needs an nn.{cls._float_type.__name__}, "
                             f"got {type(bn).__name__}")
        tensors = [*bn.parameters(recurse=False), *bn.buffers(recurse=False)]
        floats = [t for t in tensors if t.is_floating_point()]
        device = tensors[0].device if tensors else None
        dtype = floats[0].dtype if floats else None
        shift_bn = cls(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                       track_running_stats=bn.track_running_stats, device=device, dtype=dtype)
        shift_bn.load_state_dict(bn.state_dict())  # copies values, so nothing is shared with bn
        if bn.affine:
            shift_bn.weight.requires_grad_(bn.weight.requires_grad)
            shift_bn.bias.requires_grad_(bn.bias.requires_grad)
        return shift_bn.train(bn.training)


class ShiftBatchNorm1d(_ShiftBatchNorm):
    """Shift-based batch norm over ``[N, C]`` or ``[N, C, L]`` inputs; arguments as ``nn.BatchNorm1d``.

    Args:
        num_features: ``C``, the channel count (dim 1).
        eps: added to the variance before the inverse square root (``>= 0``).
        momentum: weight of the new batch in the running statistics, in ``[0, 1]``; None for a cumulative average.
        affine: learn ``γ`` (applied as a shift, ``ap2(γ)``) and ``β``.
        track_running_stats: keep running statistics and use them in eval mode.
        device: where the parameters and buffers live.
        dtype: their floating-point dtype.

    Raises:
        ValueError: naming the argument, for a non-positive ``num_features``, a negative or non-finite ``eps``, or
            a ``momentum`` outside ``[0, 1]``.

    Example:
        >>> bn = ShiftBatchNorm1d(4)
        >>> y = bn(torch.randn(8, 4, 5))
        >>> y.shape, bn.num_batches_tracked.item()
        (torch.Size([8, 4, 5]), 1)
    """

    _input_dims = (2, 3)
    _float_type = nn.BatchNorm1d


class ShiftBatchNorm2d(_ShiftBatchNorm):
    """Shift-based batch norm over ``[N, C, H, W]`` inputs; arguments as ``nn.BatchNorm2d``, and Args and Raises
    as :class:`ShiftBatchNorm1d`.

    Example:
        >>> bn = ShiftBatchNorm2d(3)
        >>> x = torch.randn(4, 3, 6, 6, requires_grad=True)
        >>> bn(x).square().sum().backward()
        >>> x.grad.shape, bn.weight.grad.shape
        (torch.Size([4, 3, 6, 6]), torch.Size([3]))
    """

    _input_dims = (4,)
    _float_type = nn.BatchNorm2d
