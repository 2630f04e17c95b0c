"""The user's verbs: :func:`quantize` (post-training quantization) and :func:`calibrate`.

Example:
    >>> from lowbit import flows
    >>> callable(flows.quantize)
    True
"""

from lowbit.flows.ptq import QuantizationSummary, calibrate, make_observer, prepare, quantize

__all__ = ["quantize", "prepare", "calibrate", "make_observer", "QuantizationSummary"]
