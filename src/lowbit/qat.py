"""``lowbit.qat``: quantization-aware training, as one namespace (the code lives in :mod:`lowbit.flows`).

``prepare(model, recipe, quantizer, calibration=…)`` → train (``fit`` or your own loop) → ``convert(model)``.

Example:
    >>> from lowbit import qat
    >>> sorted(k.value for k in qat.QuantizerKind)
    ['bnn', 'bwn', 'dorefa', 'five-level', 'lsq', 'pact', 'sign', 'ste', 'ttq', 'twn', 'xnor']
"""

from lowbit.flows.qat import (
    QATConfig,
    QuantizerKind,
    clip_latent_weights,
    convert,
    enable,
    freeze_bn,
    initialize,
    prepare,
    regularization,
    set_bits,
)
from lowbit.flows.qat_schedule import ProgressiveBits, Schedule, TwoStage
from lowbit.flows.qat_train import FitResult, fit, load_checkpoint, save_checkpoint

__all__ = ["QATConfig", "QuantizerKind", "prepare", "initialize", "convert", "freeze_bn", "set_bits", "enable",
           "regularization", "clip_latent_weights", "Schedule", "ProgressiveBits", "TwoStage", "fit", "FitResult", "save_checkpoint",
           "load_checkpoint"]
