"""Model surgery that keeps the float function: BatchNorm folding (more transforms arrive with issue #5).

Example:
    >>> from lowbit.transforms import fold_bn
    >>> callable(fold_bn)
    True
"""

from lowbit.transforms.fold_bn import fold_bn, fold_bn_into, modules_called_once, replace_module

__all__ = ["fold_bn", "fold_bn_into", "modules_called_once", "replace_module"]
