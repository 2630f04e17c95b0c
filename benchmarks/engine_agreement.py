"""The integer engine against its two references, on the full Fashion-MNIST test set, for every zoo CNN.

- Engine (``FLOAT`` requantization) vs lowbit's fake-quant simulation: top-1 agreement and the largest logit
  difference with the W8A8 recipe (float logits), and the LSB difference with quantized logits.
- Engine ``FLOAT`` vs ONNX Runtime running ``lowbit.export.export_onnx``'s model, and engine ``FIXED_POINT`` vs
  ``FLOAT``. Here the recipe quantizes the logits too (``quantize_output=True``), so every output is a code and
  differences count in LSBs of the output grid.

Calibration: lowbit's 512 seeded training images. Writes benchmarks/results/engine_agreement.{json,md}.
Run: ``.venv/bin/python benchmarks/engine_agreement.py`` (about 10 minutes).
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import torch

import lowbit
from lowbit.engine import Requant, lower
from lowbit.export import export_onnx, ort_session
from lowbit.jobs import calibration_batches
from lowbit.nn import ActivationQuantizer
from lowbit.zoo import load
from lowbit.zoo.data import fashion_mnist

RESULTS = Path(__file__).parent / "results"
MODELS = ("lenet5", "resnet20", "mobilenetv2")


def _batched(fn, images: torch.Tensor, size: int = 500) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([torch.as_tensor(fn(images[i : i + size])) for i in range(0, len(images), size)])


def main() -> None:
    images, _ = fashion_mnist("test").tensors
    calibration = calibration_batches(512)
    rows = []
    for name in MODELS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = lowbit.quantize(load(name).model, "w8a8", calibration=calibration, progress=False)
            coded = lowbit.quantize(load(name).model, lowbit.Recipe(quantize_output=True), calibration=calibration,
                                    progress=False)
        engine, simulated = _batched(lower(q, images[:1]), images), _batched(q, images)
        step = float([m for m in coded.modules() if isinstance(m, ActivationQuantizer)][-1].scale)
        floating = _batched(lower(coded, images[:1], Requant.FLOAT), images)
        fixed = _batched(lower(coded, images[:1], Requant.FIXED_POINT), images)
        with tempfile.TemporaryDirectory() as folder:
            session = ort_session(export_onnx(coded, images[:1], Path(folder) / "m.onnx"))
            ort = _batched(lambda x, s=session: s.run(None, {"input_0": x.numpy()})[0], images)
        simulated_codes = _batched(coded, images)
        sim_lsb = ((floating - simulated_codes).abs() / step).round()
        ort_lsb = ((floating - ort).abs() / step).round()
        fixed_lsb = ((floating - fixed).abs() / step).round()
        row = {"model": name, "images": len(images),
               "engine_vs_simulation_top1_agreement": round(float((engine.argmax(1) == simulated.argmax(1)).float().mean()), 5),
               "engine_vs_simulation_max_logit_diff": round(float((engine - simulated).abs().max()), 4),
               "engine_vs_simulation_max_lsb": int(sim_lsb.max()),
               "engine_vs_simulation_values_differing": float((sim_lsb > 0).float().mean()),
               "engine_vs_ort_max_lsb": int(ort_lsb.max()), "engine_vs_ort_values_differing": float((ort_lsb > 0).float().mean()),
               "fixed_vs_float_max_lsb": int(fixed_lsb.max()), "fixed_vs_float_values_differing": float((fixed_lsb > 0).float().mean())}
        rows.append(row)
        print(json.dumps(row), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "engine_agreement.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["| model | engine = simulation top-1 | max logit diff | engine vs simulation, coded logits: max LSB "
             "(values differing) | engine vs ORT: max LSB (values differing) | FIXED_POINT vs FLOAT: max LSB "
             "(values differing) |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {100 * r['engine_vs_simulation_top1_agreement']:.2f}% | "
              f"{r['engine_vs_simulation_max_logit_diff']:.3f} | {r['engine_vs_simulation_max_lsb']} "
              f"({100 * r['engine_vs_simulation_values_differing']:.3f}%) | {r['engine_vs_ort_max_lsb']} "
              f"({100 * r['engine_vs_ort_values_differing']:.3f}%) | {r['fixed_vs_float_max_lsb']} "
              f"({100 * r['fixed_vs_float_values_differing']:.3f}%) |" for r in rows]
    (RESULTS / "engine_agreement.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
