"""Binary and ternary codes with their scales: BNN/BinaryConnect, XNOR-Net/BWN, TWN, TTQ (CATALOG §6).

- ``binarize``: ``sign(x)`` with ``sign(0) = +1``, or stochastically ``+1`` with probability
  ``hard_sigmoid(x) = clip((x + 1)/2, 0, 1)``; :func:`lowbit.functional.ste.sign_ste` is its STE (htanh window).
- XNOR-Net: ``α = mean|W|`` per output channel minimises ``‖W − α·sign(W)‖²``; the input scale map ``K`` is the
  channel mean of ``|I|`` convolved with a ``1/(kh·kw)`` box kernel at the layer's stride and padding.
- TWN: ``Δ = 0.7·mean|W|``, codes ``{−1, 0, +1}`` (``|w| > Δ``), ``α = mean(|W| where |W| > Δ)``.
- TTQ: codes by a threshold ``t·max|W|`` and two learned scales, ``W_p`` for positive codes and ``W_n`` for
  negative ones; the latent weights' gradient is scaled by ``W_p``, 1 and ``W_n`` on the three parts.
- Five levels ``{−2, −1, 0, 1, 2}·α``: thresholds ``α/2`` and ``3α/2`` (nearest level) and ``α = Σ|w||t| / Σt²``,
  alternated to a fixed point (docs/math.md B6).

Example:
    >>> import torch
    >>> binarize(torch.tensor([-0.5, 0.0, 2.0]))
    tensor([-1.,  1.,  1.])
    >>> codes, alpha = twn_ternarize(torch.tensor([[0.1, -0.9, 1.1, 0.05]]))
    >>> codes.tolist(), round(float(alpha), 4)
    ([[0.0, -1.0, 1.0, 0.0]], 1.0)
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = ["binarize", "xnor_weight_scale", "xnor_input_scale", "twn_threshold", "twn_ternarize", "ttq_quantize",
           "five_level_quantize", "xnor_row_scale"]

TWN_THRESHOLD_FACTOR = 0.7  # Li & Liu 2016: Δ* ≈ 0.7·E|W| for uniform or normal weights


def binarize(x: torch.Tensor, stochastic: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """``±1`` codes of ``x`` (same dtype): deterministic sign (``sign(0) = +1``) or stochastic with
    ``P(+1) = clip((x + 1)/2, 0, 1)`` (BinaryConnect).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> binarize(torch.full((10000,), 0.5), stochastic=True, generator=g).mean().item() > 0.45   # E = 2·0.75 − 1
        True
    """
    if not stochastic:
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
    p = ((x + 1) / 2).clamp(0, 1)
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return torch.where(u < p, 1.0, -1.0).to(x.dtype)


def _channel_dims(w: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(1, w.ndim))


def xnor_weight_scale(w: torch.Tensor) -> torch.Tensor:
    """XNOR-Net's ``α = mean|W|`` per output channel (dim 0), shaped to broadcast against ``w``.

    Example:
        >>> xnor_weight_scale(torch.tensor([[1.0, -3.0], [0.5, 0.5]])).flatten().tolist()
        [2.0, 0.5]
    """
    if w.ndim < 2:
        raise ValueError(f"xnor_weight_scale needs a weight with an output-channel dim, got shape {tuple(w.shape)}")
    return w.abs().mean(dim=_channel_dims(w), keepdim=True)


def xnor_input_scale(x: torch.Tensor, kernel_size: tuple[int, int], stride: int | tuple[int, int] = 1,
                     padding: int | tuple[int, int] = 0) -> torch.Tensor:
    """XNOR-Net's ``K = (mean_c |I|) * k`` with the box kernel ``k = 1/(kh·kw)``: ``[N, 1, H', W']``, one scale per
    output position of a ``kernel_size`` convolution at ``stride`` and ``padding`` (zero padding counts as 0).

    Example:
        >>> x = torch.ones(1, 3, 4, 4)
        >>> xnor_input_scale(x, (3, 3), padding=1)[0, 0, 0, 0].item()      # a corner sees 4 of 9 taps
        0.4444444477558136
    """
    if x.ndim != 4:
        raise ValueError(f"xnor_input_scale needs [N, C, H, W] inputs, got shape {tuple(x.shape)}")
    a = x.abs().mean(dim=1, keepdim=True)
    kh, kw = kernel_size
    box = torch.full((1, 1, kh, kw), 1.0 / (kh * kw), dtype=x.dtype, device=x.device)
    return F.conv2d(a, box, stride=stride, padding=padding)


def twn_threshold(w: torch.Tensor, per_channel: bool = False) -> torch.Tensor:
    """TWN's ``Δ = 0.7·mean|W|`` (per tensor, or per output channel shaped to broadcast)."""
    if per_channel:
        return TWN_THRESHOLD_FACTOR * xnor_weight_scale(w)
    return TWN_THRESHOLD_FACTOR * w.abs().mean()


def twn_ternarize(w: torch.Tensor, per_channel: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """TWN's codes ``{−1, 0, +1}`` (float, ``w``'s dtype) and ``α = mean(|W| over |W| > Δ)``.

    ``α`` is per tensor (a scalar) or per output channel (broadcastable); a channel with nothing above ``Δ``
    gets ``α = 0``.
    """
    delta = twn_threshold(w, per_channel)
    above = w.abs() > delta
    codes = torch.where(above, torch.sign(w), torch.zeros_like(w))
    if per_channel:
        dims = _channel_dims(w)
        count = above.sum(dim=dims, keepdim=True)
        alpha = (w.abs() * above).sum(dim=dims, keepdim=True) / count.clamp(min=1)
    else:
        count = above.sum()
        alpha = (w.abs() * above).sum() / count.clamp(min=1)
    return codes, alpha.to(w.dtype)


class _TrainedTernary(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: torch.Tensor, wp: torch.Tensor, wn: torch.Tensor, threshold: float):  # type: ignore[override]
        delta = threshold * w.detach().abs().max()
        pos, neg = w > delta, w < -delta
        ctx.save_for_backward(pos, neg, wp, wn)
        return torch.where(pos, wp.to(w.dtype), torch.where(neg, -wn.to(w.dtype), torch.zeros_like(w)))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        pos, neg, wp, wn = ctx.saved_tensors
        # TTQ eq. 8: the latent weights' gradient is scaled by W_p, 1 and W_n on the three parts
        scale = torch.where(pos, wp.to(grad.dtype), torch.where(neg, wn.to(grad.dtype), torch.ones_like(grad)))
        grad_wp = (grad * pos).sum().reshape(wp.shape)
        # the value there is −W_n, so its exact derivative carries the sign the paper's eq. 7 leaves implicit
        grad_wn = -(grad * neg).sum().reshape(wn.shape)
        return grad * scale, grad_wp, grad_wn, None


def ttq_quantize(w: torch.Tensor, wp: torch.Tensor, wn: torch.Tensor, threshold: float = 0.05) -> torch.Tensor:
    """TTQ (Zhu et al. 2017): ``W_p`` where ``w > Δ``, ``−W_n`` where ``w < −Δ``, else 0, with
    ``Δ = threshold·max|w|``; gradients to ``w`` (scaled), ``W_p`` and ``W_n`` (the sums over their parts).

    Example:
        >>> w = torch.tensor([0.5, -0.02, -1.0], requires_grad=True)
        >>> wp, wn = torch.tensor(0.7, requires_grad=True), torch.tensor(0.4, requires_grad=True)
        >>> y = ttq_quantize(w, wp, wn); y
        tensor([ 0.7000,  0.0000, -0.4000], grad_fn=<_TrainedTernaryBackward>)
        >>> y.sum().backward(); w.grad.tolist(), float(wp.grad), float(wn.grad)
        ([0.699999988079071, 1.0, 0.4000000059604645], 1.0, -1.0)
    """
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"ttq_quantize threshold must be in [0, 1), got {threshold!r}")
    return _TrainedTernary.apply(w, wp, wn, threshold)


def xnor_row_scale(x: torch.Tensor) -> torch.Tensor:
    """XNOR-Net's input scale for a fully connected layer: ``K = mean|x|`` over the features of each row
    (``[..., 1]``), the 1-D case of :func:`xnor_input_scale` (a box kernel covering the whole input).

    Example:
        >>> xnor_row_scale(torch.tensor([[1.0, -3.0], [0.0, 2.0]])).flatten().tolist()
        [2.0, 1.0]
    """
    return x.abs().mean(dim=-1, keepdim=True)


FIVE_LEVEL_ITERATIONS = 30


def five_level_quantize(w: torch.Tensor, per_channel: bool = False,
                        iterations: int = FIVE_LEVEL_ITERATIONS) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes ``{−2, −1, 0, 1, 2}`` and the scale ``α`` minimising ``‖W − α·T‖²`` (docs/math.md B6).

    For a fixed ``α`` the best codes are the nearest levels (thresholds ``α/2`` and ``3α/2``); for fixed codes the
    best ``α = Σ|w|·|t| / Σt²``. Starting from ``α = mean|W|`` the two steps alternate; each can only lower the
    error, so it settles on a fixed point (in a few steps for normal or uniform weights).

    Args:
        per_channel: one ``α`` per output channel (dim 0, broadcastable) instead of one per tensor.
        iterations: the number of alternations (a cap; it stops earlier once the codes repeat).

    Returns:
        ``(codes, α)``: codes as floats in ``w``'s dtype; a channel of zeros gets ``α = 0``.

    Example:
        >>> codes, alpha = five_level_quantize(torch.tensor([[0.1, -1.0, 2.1, 0.9]]))
        >>> codes.tolist(), round(float(alpha), 3)
        ([[0.0, -1.0, 2.0, 1.0]], 1.017)
    """
    if iterations < 1:
        raise ValueError(f"five_level_quantize iterations must be >= 1, got {iterations!r}")
    dims = _channel_dims(w) if per_channel else tuple(range(w.ndim))
    a = w.detach().abs().to(torch.float64)
    alpha = a.mean(dim=dims, keepdim=True)
    levels = None
    for _ in range(iterations):
        safe = torch.where(alpha > 0, alpha, torch.ones_like(alpha))
        new = torch.round(a / safe).clamp(0, 2)  # nearest of 0, α, 2α (half-to-even at α/2 and 3α/2)
        if levels is not None and torch.equal(new, levels):
            break
        levels = new
        weight = (levels * levels).sum(dim=dims, keepdim=True)
        alpha = (a * levels).sum(dim=dims, keepdim=True) / weight.clamp(min=1)
    assert levels is not None
    codes = (levels * torch.sign(w.detach())).to(w.dtype)
    alpha = alpha if per_channel else alpha.reshape(())
    return codes, alpha.to(w.dtype)
