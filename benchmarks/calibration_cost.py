"""Calibration cost: time to calibrate resnet20 on 512 samples with each observer, vs one fp32 pass over them.

Writes benchmarks/results/calibration_cost.{json,md}. Run: ``.venv/bin/python benchmarks/calibration_cost.py``.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from pathlib import Path

import torch

import lowbit
from lowbit.flows import calibrate, prepare
from lowbit.jobs import calibration_batches
from lowbit.recipes import ObserverKind
from lowbit.zoo import load

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    torch.manual_seed(0)
    model = load("resnet20").model
    batches = calibration_batches(512)
    with torch.no_grad():
        for b in batches[:2]:
            model(b)  # warm-up
        start = time.perf_counter()
        for b in batches:
            model(b)
        fp32 = time.perf_counter() - start
    rows = []
    for kind in ObserverKind:
        recipe = dataclasses.replace(lowbit.preset("w8a8"), activation_observer=kind)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepared = prepare(model, recipe)
        start = time.perf_counter()
        calibrate(prepared, batches, progress=False)  # observing every batch, then computing qparams (freeze)
        seconds = time.perf_counter() - start
        rows.append({"observer": kind.value, "seconds": round(seconds, 3), "ratio_to_fp32_pass": round(seconds / fp32, 1)})
        print(f"{kind.value:16s} {seconds:7.2f} s  {seconds / fp32:6.1f}x one fp32 pass ({fp32:.2f} s)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "calibration_cost.json").write_text(json.dumps({"fp32_pass_seconds": round(fp32, 3), "rows": rows},
                                                              indent=1))
    lines = ["| observer | calibrate (s) | × one fp32 pass |", "|---|---:|---:|"]
    lines += [f"| {r['observer']} | {r['seconds']:.2f} | {r['ratio_to_fp32_pass']:.1f} |" for r in rows]
    lines += ["", f"One fp32 pass over the 512 samples (8 batches of 64): {fp32:.2f} s."]
    (RESULTS / "calibration_cost.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
