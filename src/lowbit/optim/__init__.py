"""Optimizers for low-precision training.

:class:`Adam8bit`, :class:`AdamW8bit`, :class:`SGD8bit` and :class:`Lion8bit` are drop-in ``torch.optim``
optimizers whose state is stored block-wise in 8 bits against the dynamic tree map (docs/math.md §13): Adam's
8 bytes of state per parameter become 2.03. :class:`ShiftAdamax` is the BNN paper's shift-based AdaMax
(docs/math.md B5): AdaMax whose step size and division by the infinity norm are powers of two.

Example:
    >>> import torch, lowbit.optim
    >>> opt = lowbit.optim.ShiftAdamax([torch.nn.Parameter(torch.zeros(2))])
    >>> opt.defaults["lr"] == 2**-9
    True
    >>> lowbit.optim.Adam8bit([torch.nn.Parameter(torch.zeros(2))]).defaults["block_size"]
    256
"""

from lowbit.optim.adam8bit import Adam8bit, AdamW8bit
from lowbit.optim.blockwise import BlockwiseOptimizer
from lowbit.optim.lion8bit import Lion8bit
from lowbit.optim.sgd8bit import SGD8bit
from lowbit.optim.shift_adamax import ShiftAdamax

__all__ = ["Adam8bit", "AdamW8bit", "SGD8bit", "Lion8bit", "BlockwiseOptimizer", "ShiftAdamax"]
