"""Peer comparison: torchao's standard static INT8 post-training quantization (PT2E) on lowbit's zoo models.

Measures fp32 and W8A8 top-1 accuracy (%) on the Fashion-MNIST test set, and the quantize + calibrate time, with
torchao's PT2E flow: ``torch.export`` -> ``prepare_pt2e(X86InductorQuantizer)`` -> calibration -> ``convert_pt2e``.
The default x86 config is int8 weights per-channel symmetric (PerChannelMinMaxObserver) and uint8 activations
per-tensor affine (HistogramObserver). Calibration uses the same seeded samples as lowbit and ONNX Runtime in the
main benchmark (``lowbit.jobs.calibration_batches``). The converted model runs its quantize/dequantize ops in eager
PyTorch: this compares accuracy, not speed. Nothing from lowbit's quantization code is used, only models and data.

Runs in its own venv (torch 2.13.0 CPU + torchao + lowbit, see the report / Makefile):
    .venv-peers/bin/python benchmarks/peers/torchao_ptq.py --models lenet5,resnet20,mobilenetv2 --calib 512 \
        --out benchmarks/results/peers_torchao.json [--eval-samples N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torchao
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
)

from lowbit import zoo
from lowbit.jobs import calibration_batches
from lowbit.zoo.data import fashion_mnist

CONFIG = ("X86InductorQuantizer + get_default_x86_inductor_quantization_config(): weights int8 per-channel symmetric "
          "(PerChannelMinMaxObserver), activations uint8 per-tensor affine (HistogramObserver), conv-bn folded")


@torch.no_grad()
def correct(model, images: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """Per test image: is it classified correctly (kept for the main benchmark's paired comparison)."""
    return torch.cat([model(images[i:i + batch]).argmax(1) == labels[i:i + batch] for i in range(0, len(labels), batch)])


def percent(hits: torch.Tensor) -> float:
    return round(100.0 * float(hits.float().mean()), 2)


def quantize(model: torch.nn.Module, batches: list[torch.Tensor]) -> torch.nn.Module:
    shapes = ({0: torch.export.Dim("batch")},)  # calibrate on 64, evaluate on 1000
    exported = torch.export.export(model, (batches[0],), dynamic_shapes=shapes).module()
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for b in batches:
            prepared(b)
    return convert_pt2e(prepared)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet5,resnet20,mobilenetv2")
    parser.add_argument("--calib", type=int, default=512)
    parser.add_argument("--eval-samples", type=int, default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    torch.manual_seed(0)
    images, labels = fashion_mnist("test").tensors
    if args.eval_samples is not None:
        images, labels = images[:args.eval_samples], labels[:args.eval_samples]
    batches = calibration_batches(args.calib)
    results = []
    for name in args.models.split(","):
        model = zoo.load(name).model.eval()
        fp32 = percent(correct(model, images, labels))
        start = time.perf_counter()
        quantized = quantize(model, batches)
        seconds = round(time.perf_counter() - start, 2)
        hits = correct(quantized, images, labels)
        w8a8 = percent(hits)
        print(f"{name}: fp32 {fp32:.2f}  w8a8 {w8a8:.2f}  ({seconds:.1f} s quantize+calibrate)", file=sys.stderr)
        results.append({"model": name, "fp32": fp32, "w8a8": w8a8, "seconds": seconds,
                        "correct": "".join("1" if h else "0" for h in hits.tolist())})

    report = {"peer": "torchao", "version": torchao.__version__, "torch": torch.__version__, "config": CONFIG,
              "label": "PT2E X86InductorQuantizer (per-channel, HistogramObserver)",
              "calib": args.calib, "eval_samples": len(labels), "results": results}
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
