"""Peer comparison for data-free-quantization transforms: NNCF's bias correction under per-tensor int8 weights.

NNCF 3.4 has no cross-layer equalization for the PyTorch backend (its channel alignment is OpenVINO-only), but it
does have fast bias correction. This runs ``nncf.quantize`` with per-tensor weights (as lowbit's
``w8a8-pertensor``), activations per-tensor asymmetric (preset mixed, lowbit's scheme), with bias correction off
and on, on Fashion-MNIST MobileNetV2 and on its rescaled twin (benchmarks/twin.py, the same seed as
benchmarks/dfq.py). Calibration: the same 512 seeded training images as lowbit's real-data rows.

    .venv-peers/bin/python benchmarks/peers/nncf_dfq.py --out benchmarks/results/peers_nncf_dfq.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nncf
import torch
from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters
from nncf_ptq import Wrapped  # NNCF's hook storage would be called as a layer of a bare Sequential
from peer_run import correct, percent

from lowbit import zoo
from lowbit.jobs import calibration_batches
from lowbit.zoo.data import fashion_mnist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from twin import rescaled_twin  # noqa: E402

SEED = 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--eval-samples", type=int, default=None)
    args = p.parse_args()
    torch.manual_seed(SEED)
    images, labels = fashion_mnist("test").tensors
    if args.eval_samples:
        images, labels = images[: args.eval_samples], labels[: args.eval_samples]
    batches = calibration_batches(512)
    original = zoo.load("mobilenetv2").model.eval()
    rows = []
    for label, model in (("mobilenetv2", original), ("rescaled twin", rescaled_twin(original, SEED))):
        fp32 = percent(correct(model, images, labels))
        for bias_correction in (False, True):
            advanced = AdvancedQuantizationParameters(
                weights_quantization_params=QuantizationParameters(per_channel=False),
                disable_bias_correction=not bias_correction)
            quantized = nncf.quantize(Wrapped(model).eval(), nncf.Dataset(batches),
                                      preset=nncf.QuantizationPreset.MIXED, advanced_parameters=advanced)
            accuracy = percent(correct(quantized, images, labels))
            rows.append({"model": label, "fp32": fp32, "bias_correction": bias_correction, "accuracy": accuracy})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    report = {"peer": "nncf", "version": nncf.__version__, "torch": torch.__version__,
              "config": "nncf.quantize, preset MIXED, weights per-tensor (QuantizationParameters(per_channel=False)), "
                        "fast bias correction off/on, 512 calibration images", "rows": rows}
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
