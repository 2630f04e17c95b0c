"""Data-free quantization on Fashion-MNIST MobileNetV2: equalization, bias absorption, bias correction, zero-shot data.

Two models:
- ``mobilenetv2``: the zoo model as trained here;
- ``rescaled twin``: the same function with per-channel scales ``10^U(−2, 2)`` pushed between consecutive layers
  (each BatchNorm's γ and β divided by ``s``, the next layer's input channels multiplied by ``s``; the ReLU6
  between them replaced by ReLU so the scale passes through). Its float accuracy is checked equal to the ReLU
  variant's. It has the wildly different channel ranges that ImageNet-trained MobileNetV2 has and that the small
  Fashion-MNIST training did not produce.

For each: W8A8 with per-tensor weights, plain → + equalize → + absorb_bias → + correct_bias (analytic) → the same
calibrated on zero-shot data (no training data touched at all); W6A8 per-tensor plain and with the full
pipeline (where weight error, and so bias correction, matters more); per-channel W8A8 for reference, calibrated
on real and on zero-shot data.

Writes benchmarks/results/dfq.{json,md}. Run: ``.venv/bin/python benchmarks/dfq.py`` (~10 minutes).
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import torch
from torch import nn

import lowbit
from lowbit.flows.zero_shot import zero_shot_data
from lowbit.jobs import calibration_batches
from lowbit.recipes import Transforms, preset
from lowbit.spec import QuantSpec
from lowbit.zoo import load
from lowbit.zoo.data import fashion_mnist
from twin import relu_variant, rescaled_twin

RESULTS = Path(__file__).parent / "results"
CALIBRATION, ZERO_SHOT, SEED = 512, 512, 0


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        predictions = torch.cat([model(images[i : i + 1000]).argmax(1) for i in range(0, len(images), 1000)])
    return round(100.0 * float((predictions == labels).float().mean()), 2)


def quantized(model: nn.Module, recipe, batches) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lowbit.quantize(model, recipe, calibration=batches, progress=False)


def rows_for(label: str, model: nn.Module, float_model: nn.Module, images, labels, real, distilled) -> list[dict]:
    per_tensor = preset("w8a8-pertensor")
    w6 = dataclasses.replace(per_tensor, name="w6a8-pertensor", weight=QuantSpec(bits=6, narrow_range=True))
    steps = [("plain", Transforms()),
             ("+ equalize", Transforms(equalize=True, relu6_to_relu=True)),
             ("+ absorb_bias", Transforms(equalize=True, relu6_to_relu=True, absorb_bias=True)),
             ("+ correct_bias (analytic)", Transforms(equalize=True, relu6_to_relu=True, absorb_bias=True,
                                                      correct_bias="analytic"))]
    rows = [{"model": label, "recipe": "fp32", "steps": "float (as given)", "calibration": "-",
             "accuracy": accuracy(float_model, images, labels)}]
    if float_model is not model:
        rows.append({"model": label, "recipe": "fp32", "steps": "float, ReLU6 → ReLU", "calibration": "-",
                     "accuracy": accuracy(model, images, labels)})
    for recipe in (per_tensor, w6):
        for name, transforms in steps if recipe is per_tensor else (steps[0], steps[-1]):
            q = quantized(model, dataclasses.replace(recipe, transforms=transforms), real)
            rows.append({"model": label, "recipe": recipe.name, "steps": name, "calibration": f"data:{CALIBRATION}",
                         "accuracy": accuracy(q, images, labels), "transforms": q.quantization_summary.transforms})
        full = dataclasses.replace(recipe, transforms=steps[-1][1])
        rows.append({"model": label, "recipe": recipe.name, "steps": "full pipeline, no data at all",
                     "calibration": f"zero-shot:{ZERO_SHOT}",
                     "accuracy": accuracy(quantized(model, full, distilled), images, labels)})
    for name, batches in ((f"data:{CALIBRATION}", real), (f"zero-shot:{ZERO_SHOT}", distilled)):
        rows.append({"model": label, "recipe": "w8a8 (per-channel)", "steps": "plain", "calibration": name,
                     "accuracy": accuracy(quantized(model, preset("w8a8"), batches), images, labels)})
    return rows


def main() -> None:
    torch.manual_seed(SEED)
    images, labels = fashion_mnist("test").tensors
    real = calibration_batches(CALIBRATION)
    original = load("mobilenetv2").model.eval()
    twin = rescaled_twin(original, SEED)
    relu = relu_variant(original)
    checks = {"twin_equals_relu_variant_max_abs_logit_diff": float((twin(images[:500]) - relu(images[:500]))
                                                                  .abs().max().detach())}
    rows = []
    for label, model, float_model in (("mobilenetv2", original, original), ("rescaled twin", twin, relu)):
        distilled = zero_shot_data(model, ZERO_SHOT, (1, 28, 28), batch_size=64, seed=SEED, progress=False)
        rows += rows_for(label, model, float_model, images, labels, real, distilled)
        for row in rows[-12:]:
            print(json.dumps({k: v for k, v in row.items() if k != "transforms"}), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dfq.json").write_text(json.dumps({"checks": checks, "rows": rows}, indent=1) + "\n")
    lines = ["| model | recipe | steps | calibration | accuracy % |", "|---|---|---|---|---:|"]
    lines += [f"| {r['model']} | {r['recipe']} | {r['steps']} | {r['calibration']} | {r['accuracy']:.2f} |"
              for r in rows]
    lines += ["", f"Twin vs ReLU variant, largest logit difference on 500 test images: "
                  f"{checks['twin_equals_relu_variant_max_abs_logit_diff']:.2e}"]
    (RESULTS / "dfq.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
