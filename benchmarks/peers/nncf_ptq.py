"""Peer comparison: NNCF's standard static INT8 post-training quantization (``nncf.quantize``) on lowbit's zoo models.

Measures fp32 and W8A8 top-1 accuracy (%) on the Fashion-MNIST test set, and the ``nncf.quantize`` time (calibration
included), with NNCF's PyTorch backend and its defaults: target device ANY, preset PERFORMANCE (weights int8
per-channel symmetric narrow-range, activations int8 per-tensor symmetric — unsigned after ReLU), activation ranges
the mean over calibration items of their min/max, fast bias correction on, first conv's weights 7-bit (overflow fix).
``--preset mixed`` makes activations per-tensor asymmetric (affine), the scheme lowbit and ONNX Runtime use.
Calibration uses the same seeded samples as lowbit and ONNX Runtime in the main benchmark
(``lowbit.jobs.calibration_batches``: a plain list of batches, so each batch of 64 is one NNCF "sample").
The result runs fake-quantize ops in eager PyTorch: this compares accuracy, not speed. Nothing from lowbit's
quantization code is used, only models and data.

Runs in its own venv (torch 2.13.0 CPU + nncf + lowbit, see the report / Makefile):
    .venv-peers/bin/python benchmarks/peers/nncf_ptq.py --models lenet5,resnet20,mobilenetv2 --calib 512 \
        --out benchmarks/results/peers_nncf.json [--preset mixed] [--eval-samples N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import nncf
import torch

from lowbit import zoo
from lowbit.jobs import calibration_batches
from lowbit.zoo.data import fashion_mnist


class Wrapped(torch.nn.Module):
    """NNCF adds a hook-storage child to the model: a top-level ``nn.Sequential`` (lenet5) would call it as a layer."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


@torch.no_grad()
def correct(model, images: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """Per test image: is it classified correctly (kept for the main benchmark's paired comparison)."""
    return torch.cat([model(images[i:i + batch]).argmax(1) == labels[i:i + batch] for i in range(0, len(labels), batch)])


def percent(hits: torch.Tensor) -> float:
    return round(100.0 * float(hits.float().mean()), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet5,resnet20,mobilenetv2")
    parser.add_argument("--calib", type=int, default=512)
    parser.add_argument("--eval-samples", type=int, default=None)
    parser.add_argument("--preset", choices=["default", "performance", "mixed"], default="default")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    torch.manual_seed(0)
    preset = None if args.preset == "default" else nncf.QuantizationPreset(args.preset)
    images, labels = fashion_mnist("test").tensors
    if args.eval_samples is not None:
        images, labels = images[:args.eval_samples], labels[:args.eval_samples]
    batches = calibration_batches(args.calib)
    results = []
    for name in args.models.split(","):
        model = Wrapped(zoo.load(name).model).eval()
        fp32 = percent(correct(model, images, labels))
        start = time.perf_counter()
        quantized = nncf.quantize(model, nncf.Dataset(batches), preset=preset)
        seconds = round(time.perf_counter() - start, 2)
        hits = correct(quantized, images, labels)
        w8a8 = percent(hits)
        print(f"{name}: fp32 {fp32:.2f}  w8a8 {w8a8:.2f}  ({seconds:.1f} s quantize+calibrate)", file=sys.stderr)
        results.append({"model": name, "fp32": fp32, "w8a8": w8a8, "seconds": seconds,
                        "correct": "".join("1" if h else "0" for h in hits.tolist())})

    acts = "per-tensor asymmetric (affine)" if args.preset == "mixed" else "per-tensor symmetric"
    config = (f"nncf.quantize(model, nncf.Dataset(batches), preset={args.preset}) on the torch backend: weights int8 "
              f"per-channel symmetric (narrow range, first conv 7-bit overflow fix), activations int8 {acts}, "
              "MEAN_MINMAX ranges, subset_size=300 (all 8 batches), fast_bias_correction=True, target_device=ANY")
    report = {"peer": "nncf", "version": nncf.__version__, "torch": torch.__version__, "config": config,
              "label": f"nncf.quantize, preset {args.preset} (per-channel, activations {acts.split(' (')[0]})",
              "calib": args.calib, "eval_samples": len(labels), "results": results}
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
