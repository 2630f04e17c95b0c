"""Mixed-precision PTQ against uniform weight bits on Fashion-MNIST ``resnet20`` and ``mobilenetv2`` (issue #9).

Base recipe ``w8`` with its bits replaced: weight-only, per-channel symmetric narrow-range codes, min/max ranges,
BatchNorm folded (as :func:`lowbit.quantize` does). Candidates {2, 3, 4, 6, 8} bits for every layer. The four
sensitivity measures read the same 512 calibration images (``lowbit.jobs.calibration_batches``, seeded; labels
for the Hessian are the fp32 model's predictions, as with zero-shot data); each is timed.

For each measure the allocator (exact, :func:`lowbit.mixed.allocate`) chooses bits:

- at the bytes of uniform W4 (:func:`lowbit.mixed.budget.model_bytes`, the same count for both), and
- at smaller budgets: 85 % and 75 % of uniform W4's code bits (3.4 and 3.0 bits per weight on average).

Each allocation is quantized with :func:`lowbit.quantize` and evaluated on all 10,000 test images. Targets: at
W4's size ≥ 1 point above uniform W4, or at uniform W4's accuracy ≥ 15 % smaller. Plots: sensitivity per layer
and bit width, and the Pareto frontier of (bytes, predicted loss) with the measured points.

Writes ``benchmarks/results/mixed_precision.{json,md}`` and ``mixed_precision_<model>_{sensitivity,pareto}.png``.
Run: ``.venv/bin/python benchmarks/mixed_precision.py [--models resnet20 mobilenetv2] [--test N]``
(about 13 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch

from lowbit import quantize
from lowbit.analysis.evaluation import accuracy
from lowbit.jobs import calibration_batches, load_model
from lowbit.mixed import MEASURES, allocate, choose_bits, model_bytes, prepare_subject, size_budget
from lowbit.mixed.budget import mixed_recipe
from lowbit.mixed.search import average_bits
from lowbit.recipes import Mode, Recipe, load_recipe
from lowbit.reports.mixed import plot_pareto, plot_sensitivity
from lowbit.spec import QuantSpec
from lowbit.zoo.data import fashion_mnist

RESULTS = Path(__file__).parent / "results"
BITS = (2, 3, 4, 6, 8)
SHARES = (1.0, 0.85, 0.75)  # of uniform W4's code bits
# the base recipes: "w8" (per-channel), and the same with one scale per tensor, where uniform W4 loses more
BASES = {"per-channel": load_recipe("w8"),
         "per-tensor": Recipe("w8-pertensor-weights", Mode.WEIGHT_ONLY, QuantSpec(bits=8, narrow_range=True), None)}


def _evaluate(model, recipe, images, labels) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = quantize(model, recipe, progress=False)
    return round(accuracy(quantized, images, labels), 2)


def run_model(name: str, images: torch.Tensor, labels: torch.Tensor, samples: int, base: str) -> dict:
    recipe = BASES[base]
    model = load_model(f"zoo:{name}")
    batches = calibration_batches(512, 128)
    subject = prepare_subject(model, recipe, BITS)
    weights = sum(subject.layer(n).weight.numel() for n in subject.candidates)
    out: dict = {"model": name, "fp32": round(accuracy(model, images, labels), 2), "layers": len(subject.candidates),
                 "weights": weights, "uniform": {}, "mixed": {}, "seconds": {}}
    for b in BITS:
        uniform = {n: b for n in subject.candidates}
        out["uniform"][b] = {"bytes": model_bytes(subject, uniform),
                             "accuracy": _evaluate(model, mixed_recipe(recipe, uniform), images, labels)}
        print(name, "uniform", b, out["uniform"][b], flush=True)
    w4_bytes = out["uniform"][4]["bytes"]
    for measure in MEASURES:
        choice = choose_bits(model, measure, batches, recipe=recipe, bits=BITS, budget_bytes=w4_bytes, samples=samples,
                             frontier=True)
        table = choice.table
        out["seconds"][measure] = round(table.seconds, 2)
        rows = []
        for share in SHARES:
            # W4's bytes exactly; smaller budgets as mean bits per weight
            cost, limit = size_budget(subject, budget_bytes=w4_bytes) if share == 1.0 else \
                size_budget(subject, budget_avg_bits=4.0 * share)
            allocation = allocate(table.loss, cost, limit)
            acc = _evaluate(model, mixed_recipe(recipe, allocation.bits), images, labels)
            rows.append({"share_of_w4": share, "bytes": model_bytes(subject, allocation.bits),
                         "avg_bits": round(average_bits(subject, allocation.bits), 3), "accuracy": acc,
                         "predicted_loss": allocation.loss, "bits": allocation.bits})
            print(name, measure, share, rows[-1]["bytes"], rows[-1]["avg_bits"], acc, flush=True)
        out["mixed"][measure] = rows
        RESULTS.mkdir(exist_ok=True)
        plot_sensitivity(table, RESULTS / f"mixed_precision{_suffix(base)}_{name}_sensitivity_{measure}.png", title=name)
        measured = [(r["bytes"], r["predicted_loss"], r["accuracy"]) for r in rows]
        plot_pareto(choice.frontier, subject, RESULTS / f"mixed_precision{_suffix(base)}_{name}_pareto_{measure}.png",
                    measured=measured, uniform={b: (u["bytes"], u["accuracy"]) for b, u in out["uniform"].items()},
                    title=f"{name}, {measure}")
    return out


def _suffix(base: str) -> str:
    return "" if base == "per-channel" else f"_{base.replace('-', '')}"


def _table(results: list[dict], base: str) -> str:
    lines = [f"Weight-only PTQ ({base} weights, min/max, BatchNorm folded); candidates 2/3/4/6/8 bits; accuracy % "
             "on the Fashion-MNIST test images; size = model bytes against uniform W4's.", ""]
    for r in results:
        uniform = {int(b): u for b, u in r["uniform"].items()}  # JSON keys are strings
        w4 = uniform[4]
        lines += [f"### {r['model']} (fp32 {r['fp32']}, {r['layers']} layers, {r['weights']} weights)", "",
                  "| allocation | bytes | size | avg bits | accuracy | vs uniform W4 |", "|---|---:|---:|---:|---:|---:|"]
        for b, u in uniform.items():
            lines.append(f"| uniform W{b} | {u['bytes']} | {u['bytes'] / w4['bytes']:.3f} | {b} | {u['accuracy']} | "
                         f"{u['accuracy'] - w4['accuracy']:+.2f} |")
        for measure, rows in r["mixed"].items():
            for row in rows:
                lines.append(f"| {measure}, {int(100 * row['share_of_w4'])} % of W4's code bits | {row['bytes']} | "
                             f"{row['bytes'] / w4['bytes']:.3f} | {row['avg_bits']} | {row['accuracy']} | "
                             f"{row['accuracy'] - w4['accuracy']:+.2f} |")
        lines += ["", "| measure | seconds |", "|---|---:|"]
        lines += [f"| {m} | {s} |" for m, s in r["seconds"].items()]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "mobilenetv2"])
    parser.add_argument("--test", type=int, default=10000, help="test images (a prefix of the test set)")
    parser.add_argument("--samples", type=int, default=16, help="Hutchinson draws per batch")
    parser.add_argument("--base", choices=tuple(BASES), default="per-channel", help="the base recipe's weights")
    parser.add_argument("--table-only", action="store_true", help="rewrite the .md table from the saved JSON")
    args = parser.parse_args()
    stem = f"mixed_precision{_suffix(args.base)}"
    if args.table_only:
        saved = json.loads((RESULTS / f"{stem}.json").read_text())
        (RESULTS / f"{stem}.md").write_text(_table(saved["results"], args.base))
        return
    torch.manual_seed(0)
    images, labels = fashion_mnist("test").tensors
    images, labels = images[: args.test], labels[: args.test]
    start = time.time()
    results = [run_model(name, images, labels, args.samples, args.base) for name in args.models]
    payload = {"base": args.base, "test_images": len(labels), "bits": BITS, "shares": SHARES, "results": results,
               "seconds": round(time.time() - start, 1)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(payload, indent=1) + "\n")
    (RESULTS / f"{stem}.md").write_text(_table(results, args.base))
    print(_table(results, args.base))


if __name__ == "__main__":
    main()
