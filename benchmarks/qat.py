"""Quantization-aware training on Fashion-MNIST, from the zoo's fp32 weights: LSQ, PACT, STE, DoReFa vs PTQ.

Every QAT row runs ``lowbit.qat.prepare`` (512 calibration images) → ``fit`` (SGD momentum 0.9, cosine learning
rate from 0.01, batch 128, seed 0) → ``convert``; the accuracy reported is the *converted* model's (integer weights,
frozen activation grids) on the full test set. The fp32 row fine-tunes the float model with the same loop, which
is also the baseline of the per-epoch overhead ratio (same process, same thread count). PTQ rows use
``lowbit.quantize`` on the same calibration images: the presets (per-channel MSE weights, MSE activation ranges,
8-bit first and last layers) and plain min/max ranges.

Writes benchmarks/results/qat_<model><tag>.{json,md}. Run: ``.venv/bin/python benchmarks/qat.py [lenet5|resnet20]
[--epochs E] [--train N] [--only "W2A2 LSQ,W2A2 PACT"] [--tag=-long]`` (lenet5, 3 epochs: ~10 minutes on 2 cores;
resnet20, 2 epochs of 20000 images: ~35 minutes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import warnings
from pathlib import Path

import torch

import lowbit
from lowbit import qat
from lowbit.jobs import calibration_batches
from lowbit.recipes import ObserverKind, Recipe, load_recipe
from lowbit.spec import QuantSpec
from lowbit.zoo import load
from lowbit.zoo.data import fashion_mnist

RESULTS = Path(__file__).parent / "results"
CALIBRATION, LR, BATCH = 512, 0.01, 128
_A = dict(signed=False, symmetric=False)


def _dorefa(weight_bits: int, activation_bits: int) -> Recipe:
    # DoReFa's weight rule reads only the width; a 1-bit spec must be unsigned to exist as a QuantSpec
    weight = QuantSpec(bits=weight_bits, **_A) if weight_bits == 1 else QuantSpec(bits=weight_bits)
    return Recipe(f"w{weight_bits}a{activation_bits}", weight=weight, activation=QuantSpec(bits=activation_bits, **_A),
                  first_last_bits=8)


# (label, recipe, QAT config)
QAT_ROWS = [
    ("W4A4 LSQ", "w4a4", qat.QATConfig.for_quantizer("lsq")),
    ("W2A2 LSQ", "w2a2", qat.QATConfig.for_quantizer("lsq")),
    ("W2A2 PACT", "w2a2", qat.QATConfig.for_quantizer("pact")),
    ("W2A2 STE (fixed ranges)", "w2a2", qat.QATConfig.for_quantizer("ste")),
    ("DoReFa W1 A2 G32", _dorefa(1, 2), qat.QATConfig.for_quantizer("dorefa")),
    ("DoReFa W1 A2 G6", _dorefa(1, 2), qat.QATConfig.for_quantizer("dorefa", gradient_bits=6)),
    ("DoReFa W2 A4 G32", _dorefa(2, 4), qat.QATConfig.for_quantizer("dorefa")),
]


def accuracy(model, images, labels) -> float:
    model.eval()
    with torch.no_grad():
        predictions = torch.cat([model(images[i : i + 1000]).argmax(1) for i in range(0, len(images), 1000)])
    return round(100.0 * float((predictions == labels).float().mean()), 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", default="lenet5")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train", type=int, default=60000, help="training images used (a fixed prefix)")
    parser.add_argument("--only", default=None, help="comma-separated QAT row labels to run (no PTQ rows)")
    parser.add_argument("--tag", default="", help="suffix of the results files, e.g. -long")
    args = parser.parse_args()
    chosen = None if args.only is None else {label.strip() for label in args.only.split(",")}
    images, labels = fashion_mnist("test").tensors
    train_images, train_labels = fashion_mnist("train").tensors
    train = (train_images[: args.train], train_labels[: args.train])
    batches = calibration_batches(CALIBRATION)
    rows = [{"method": "fp32 (zoo weights)", "accuracy": accuracy(load(args.model).model, images, labels)}]

    def run(label, model, **fit_options):
        start = time.perf_counter()
        result = qat.fit(model, train, epochs=args.epochs, lr=LR, batch_size=BATCH, seed=0, progress=False,
                         **fit_options)
        seconds = [h["seconds"] for h in result.history]
        return {"method": label, "epochs": args.epochs, "seconds_per_epoch": round(sum(seconds) / len(seconds), 1),
                "final_loss": round(result.history[-1]["loss"], 4), "wall_seconds": round(time.perf_counter() - start, 1)}

    fp32_model = load(args.model).model.train()
    fp32_row = run("fp32 fine-tuned (same loop)", fp32_model)
    fp32_row["accuracy"] = accuracy(fp32_model, images, labels)
    rows.append(fp32_row)
    print(json.dumps(fp32_row), flush=True)
    for recipe in ("w4a4", "w2a2") if chosen is None else ():
        for observers in ("mse", "minmax"):
            spec = load_recipe(recipe)
            if observers == "minmax":
                spec = dataclasses.replace(spec, weight_observer=ObserverKind.MINMAX,
                                           activation_observer=ObserverKind.MINMAX)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                q = lowbit.quantize(load(args.model).model, spec, calibration=batches, progress=False)
            rows.append({"method": f"PTQ {recipe.upper()} ({observers} ranges)", "accuracy": accuracy(q, images, labels)})
            print(json.dumps(rows[-1]), flush=True)
    for label, recipe, config in QAT_ROWS:
        if chosen is not None and label not in chosen:
            continue
        model = qat.prepare(load(args.model).model, recipe, config, calibration=batches)
        row = run(label, model)
        row["accuracy_fake_quant"] = accuracy(model, images, labels)
        row["accuracy"] = accuracy(qat.convert(model), images, labels)
        row["overhead_vs_fp32"] = round(row["seconds_per_epoch"] / fp32_row["seconds_per_epoch"], 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    write(args.model + args.tag, train[1].numel(), rows)


def write(model: str, train: int, rows: list[dict]) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"qat_{model}.json").write_text(json.dumps({"model": model, "train_images": train, "lr": LR,
                                                            "batch": BATCH, "rows": rows}, indent=1) + "\n")
    fp32 = rows[0]["accuracy"]
    lines = [f"{model}, {train} training images, fp32 {fp32:.2f}%; accuracy of the converted (integer) model.", "",
             "| method | accuracy % | vs fp32 | fake-quant % | epochs | s/epoch | overhead vs fp32 epoch |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['accuracy']:.2f} | {r['accuracy'] - fp32:+.2f} | "
                     f"{r.get('accuracy_fake_quant', '-')} | {r.get('epochs', '-')} | {r.get('seconds_per_epoch', '-')} | "
                     f"{r.get('overhead_vs_fp32', '-')} |")
    (RESULTS / f"qat_{model}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
