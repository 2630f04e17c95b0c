"""What both peer scripts share: arguments, lowbit's models and data, scoring per image, the report file.

Each script supplies only how its library quantizes a model and how it describes its configuration. Only lowbit's
zoo, calibration batches and test data are used here, never its quantization code.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

import torch

from lowbit import zoo
from lowbit.jobs import calibration_batches
from lowbit.zoo.data import fashion_mnist


@torch.no_grad()
def correct(model, images: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """Per test image: is it classified correctly (kept for the main benchmark's paired comparison)."""
    return torch.cat([model(images[i:i + batch]).argmax(1) == labels[i:i + batch] for i in range(0, len(labels), batch)])


def percent(hits: torch.Tensor) -> float:
    return round(100.0 * float(hits.float().mean()), 2)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--models", default="lenet5,resnet20,mobilenetv2")
    p.add_argument("--calib", type=int, default=512)
    p.add_argument("--eval-samples", type=int, default=None)
    p.add_argument("--out", required=True)
    return p


def run(args: argparse.Namespace, quantize: Callable[[torch.nn.Module, list[torch.Tensor]], torch.nn.Module],
        report: dict, wrap: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m) -> None:
    """Quantize each model with ``quantize``, score fp32 and W8A8 on the test set, write ``report`` + results."""
    torch.manual_seed(0)
    images, labels = fashion_mnist("test").tensors
    if args.eval_samples is not None:
        images, labels = images[:args.eval_samples], labels[:args.eval_samples]
    batches = calibration_batches(args.calib)
    results = []
    for name in args.models.split(","):
        model = wrap(zoo.load(name).model).eval()
        fp32 = percent(correct(model, images, labels))
        start = time.perf_counter()
        quantized = quantize(model, batches)
        seconds = round(time.perf_counter() - start, 2)
        hits = correct(quantized, images, labels)
        w8a8 = percent(hits)
        print(f"{name}: fp32 {fp32:.2f}  w8a8 {w8a8:.2f}  ({seconds:.1f} s quantize+calibrate)", file=sys.stderr)
        results.append({"model": name, "fp32": fp32, "w8a8": w8a8, "seconds": seconds,
                        "correct": "".join("1" if h else "0" for h in hits.tolist())})
    report = {**report, "torch": torch.__version__, "calib": args.calib, "eval_samples": len(labels),
              "results": results}
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
