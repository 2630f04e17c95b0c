"""Optimizers for low-precision training.

:class:`ShiftAdamax` is the BNN paper's shift-based AdaMax (docs/math.md B5): AdaMax whose step size and division by
the infinity norm are powers of two.

Example:
    >>> import torch, lowbit.optim
    >>> opt = lowbit.optim.ShiftAdamax([torch.nn.Parameter(torch.zeros(2))])
    >>> opt.defaults["lr"] == 2**-9
    True
"""

from lowbit.optim.shift_adamax import ShiftAdamax

__all__ = ["ShiftAdamax"]
