"""GPTQ error-compensating rounding (Frantar et al. 2022; docs/math.md eq. T7).

Quantizing a linear map ``W`` column by column, the rounding error of column ``j`` is pushed onto the columns
not yet quantized so that the layer's output on the calibration inputs moves as little as possible. With
``H = 2·X·Xᵀ`` (inputs ``X`` as columns, damped by ``λ·mean(diag H)``) and ``U`` the upper Cholesky factor of
``H⁻¹``:

    q_j = quant(w_j),   e_j = (w_j − deq(q_j)) / U_jj,   w_k ← w_k − e_j · U_jk   for k > j

Columns are processed in blocks; the updates inside a block are applied at once to the rest (the "lazy batch"
form, same arithmetic). With ``H`` diagonal nothing propagates and GPTQ equals round-to-nearest (tested).

Example:
    >>> import torch
    >>> w = torch.tensor([[0.33, 0.26], [-0.62, 0.11]])
    >>> scale = torch.full((2, 2), 0.2)
    >>> zero = torch.zeros(2, 2, dtype=torch.int32)
    >>> gptq_codes(w, torch.eye(2), scale, zero, -7, 7).tolist()        # H = I: plain rounding
    [[2, 1], [-3, 1]]
    >>> h = torch.tensor([[1.0, 0.9], [0.9, 1.0]])                      # correlated inputs: errors move on
    >>> gptq_codes(w, h, scale, zero, -7, 7).tolist()
    [[2, 1], [-3, 0]]
"""

from __future__ import annotations

import torch

__all__ = ["gptq_codes", "hessian"]


def hessian(inputs: torch.Tensor) -> torch.Tensor:
    """``2·XᵀX / n`` in float64 for inputs ``[n, features]`` (the samples are rows here)."""
    x = inputs.double().reshape(-1, inputs.shape[-1])
    return 2.0 * x.T @ x / max(x.shape[0], 1)


def gptq_codes(weight: torch.Tensor, hess: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int,
               qmax: int, block: int = 128, damp: float = 0.01) -> torch.Tensor:
    """Integer codes of ``weight`` ``[rows, cols]`` chosen by GPTQ for the input Hessian ``hess`` ``[cols, cols]``.

    ``scale`` and ``zero_point`` give every weight's grid (``[rows, cols]``, e.g. a per-channel scale expanded
    along the columns); they are fixed beforehand, GPTQ only chooses the codes.

    Raises:
        ValueError: shapes that do not agree, or a non-positive ``damp``.
    """
    rows, cols = weight.shape
    if hess.shape != (cols, cols) or scale.shape != weight.shape or zero_point.shape != weight.shape:
        raise ValueError(f"gptq_codes: weight {tuple(weight.shape)} needs hess ({cols}, {cols}) and scale/zero_point "
                         f"{tuple(weight.shape)}, got {tuple(hess.shape)}, {tuple(scale.shape)}, "
                         f"{tuple(zero_point.shape)}")
    if damp <= 0:
        raise ValueError(f"gptq_codes: damp must be > 0, got {damp}")
    w = weight.double().clone()
    h = hess.double().clone()
    dead = torch.diagonal(h) == 0  # inputs that are always zero: their weights do not matter, keep them harmless
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.diagonal(h).mean() * torch.eye(cols, dtype=torch.float64)
    upper = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    s, z = scale.double(), zero_point.double()
    codes = torch.empty(rows, cols, dtype=torch.float64)
    for start in range(0, cols, block):
        end = min(start + block, cols)
        part, errors = w[:, start:end].clone(), torch.zeros(rows, end - start, dtype=torch.float64)
        u = upper[start:end, start:end]
        for j in range(end - start):
            col = start + j
            q = torch.clamp(torch.round(part[:, j] / s[:, col]) + z[:, col], qmin, qmax)
            codes[:, col] = q
            error = (part[:, j] - (q - z[:, col]) * s[:, col]) / u[j, j]
            part[:, j:] -= error.unsqueeze(1) * u[j, j:].unsqueeze(0)
            errors[:, j] = error
        w[:, end:] -= errors @ upper[start:end, end:]
    return codes.to(torch.int32)
