"""Learned weight rounding on Fashion-MNIST MobileNetV2: round-to-nearest vs GPTQ vs AdaRound.

Weight-only quantization with per-channel (narrow, symmetric) grids, at 4 and 3 bits, so the weight codes are the
only thing that differs between rows. Every method uses the same grid (min/max per output channel) and the same
512 calibration images; accuracy on the full test set. ``error ratio`` is the layer-output squared error of the
learned codes over round-to-nearest's, summed over layers, on the calibration inputs (what both methods minimise).

Writes benchmarks/results/learned_rounding.{json,md}. Run: ``.venv/bin/python benchmarks/learned_rounding.py``
(~30 minutes on 2 cores; AdaRound runs its default 1000 steps per layer).
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import torch

import lowbit
from lowbit.jobs import calibration_batches
from lowbit.recipes import Mode, Recipe
from lowbit.spec import PerChannel, QuantSpec
from lowbit.zoo import load
from lowbit.zoo.data import fashion_mnist

RESULTS = Path(__file__).parent / "results"
MODEL, CALIBRATION, BITS = "mobilenetv2", 512, (4, 3)


def accuracy(model, images, labels) -> float:
    with torch.no_grad():
        predictions = torch.cat([model(images[i : i + 1000]).argmax(1) for i in range(0, len(images), 1000)])
    return round(100.0 * float((predictions == labels).float().mean()), 2)


def main() -> None:
    torch.manual_seed(0)
    images, labels = fashion_mnist("test").tensors
    model = load(MODEL).model.eval()
    batches = calibration_batches(CALIBRATION)
    fp32 = accuracy(model, images, labels)
    rows = [{"model": MODEL, "bits": 32, "rounding": "fp32", "accuracy": fp32}]
    for bits in BITS:
        spec = QuantSpec(bits=bits, granularity=PerChannel(0), narrow_range=True)
        for rounding in ("nearest", "gptq", "adaround"):
            recipe = Recipe(f"w{bits}", Mode.WEIGHT_ONLY, spec, None, weight_rounding=rounding)
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                q = lowbit.quantize(model, recipe, calibration=batches, progress=False)
            seconds = time.perf_counter() - start
            line = next((t for t in q.quantization_summary.transforms if t.startswith("rounding")), "")
            ratio = float(line.split("error ")[1].split("×")[0]) if line else 1.0
            rows.append({"model": MODEL, "bits": bits, "rounding": rounding, "accuracy": accuracy(q, images, labels),
                         "error_ratio": ratio, "seconds": round(seconds, 1)})
            print(json.dumps(rows[-1]), flush=True)
    for bits in BITS:
        by = {r["rounding"]: r["accuracy"] for r in rows if r["bits"] == bits}
        loss = fp32 - by["nearest"]
        for method in ("gptq", "adaround"):
            recovered = (by[method] - by["nearest"]) / loss if loss > 0 else None
            rows.append({"model": MODEL, "bits": bits, "rounding": f"{method}: share of nearest's loss recovered",
                         "accuracy": None if recovered is None else round(recovered, 2)})
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "learned_rounding.json").write_text(json.dumps({"calibration": CALIBRATION, "rows": rows}, indent=1)
                                                   + "\n")
    lines = ["| model | weights | rounding | accuracy % | layer-output error vs nearest | seconds |",
             "|---|---|---|---:|---:|---:|"]
    for r in rows:
        if "share" in r["rounding"]:
            continue
        weights = "fp32" if r["bits"] == 32 else f"int{r['bits']} per-channel"
        lines.append(f"| {r['model']} | {weights} | {r['rounding']} | {r['accuracy']:.2f} | "
                     f"{r.get('error_ratio', '-')} | {r.get('seconds', '-')} |")
    lines += ["", "Share of round-to-nearest's accuracy loss recovered (target ≥ 0.5):", ""]
    for r in rows:
        if "share" in r["rounding"]:
            shown = "no loss to recover" if r["accuracy"] is None else f"{r['accuracy']:.2f}"
            lines.append(f"- int{r['bits']}, {r['rounding'].split(':')[0]}: {shown}")
    (RESULTS / "learned_rounding.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
