"""Binary and ternary networks on Fashion-MNIST: accuracy against fp32 of the same architecture trained as long,
and the speed of packed inference through the integer engine against fp32 PyTorch.

Accuracy (``--part accuracy``): the zoo's ``bnn_mlp`` (784-1024-1024-10) and ``bnn_cnn`` (32/64-channel VGG-style)
are trained in fp32 from scratch (Adam, constant lr 10⁻³, batch 128, seed 0); from those weights the fp32
baseline trains on for the same number of epochs, and each rule — BWN, TWN, TTQ, five levels (real activations),
BNN and XNOR-Net (binary activations) — starts from them through ``lowbit.qat.prepare`` and trains as many epochs
with the same loop. First and last layers stay at
8 bits (lowbit's default). The accuracy is that of the converted integer model (XNOR-Net: of the trained model in
eval mode — its input scale map K is a float multiplier no integer layer carries), on the full test set.

Speed (``--part speed``): a BNN (and a TWN-weight network on sign activations) is converted and lowered
(:func:`lowbit.engine.lower`); the engine's fast runner multiplies packed bits (:mod:`lowbit.engine.bits`). It is
timed against the same architecture in fp32 PyTorch, batch 64, in three alternating blocks of runs per side
(medians), at 1 and 2 threads (torch and numba set alike). Weights need
not be trained for timing; the models are calibrated on real images so the activations are realistic.
Architectures: ``bnn_cnn`` at 64 channels, ``bnn_mlp`` 3 × 4096 (BNN's MNIST MLP).

Writes benchmarks/results/binary_nets_{accuracy,speed}.{json,md}. Run: ``.venv/bin/python benchmarks/binary_nets.py
[--part accuracy|speed|seeds|all] [--epochs E] [--train N] [--seeds S --rules R ...]`` (accuracy, 2 epochs: ~45
minutes on 2 cores; speed: ~3; seeds, 3 seeds of four rules: ~65).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import numba
import torch

from lowbit import qat
from lowbit.engine import lower
from lowbit.export.bench import wall_times
from lowbit.zoo.data import fashion_mnist
from lowbit.zoo.models import bnn_cnn, bnn_mlp

RESULTS = Path(__file__).parent / "results"
LR, BATCH = 1e-3, 128
RULES = [("BWN (α·sign weights)", "bwn"), ("TWN", "twn"), ("TTQ", "ttq"), ("five levels", "five-level"),
         ("BNN (W1A1)", "bnn"), ("XNOR-Net (W1A1, α and K)", "xnor")]


def accuracy(model, images, labels) -> float:
    model.eval()
    with torch.no_grad():
        predictions = torch.cat([model(images[i : i + 1000]).argmax(1) for i in range(0, len(images), 1000)])
    return round(100.0 * float((predictions == labels).float().mean()), 2)


def _fit(model, train, epochs: int, seed: int = 0) -> dict:
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)  # constant rate: the same for every row
    started = time.perf_counter()
    history = qat.fit(model, train, epochs=epochs, optimizer=optimizer, batch_size=BATCH, seed=seed,
                      progress=False).history
    return {"seconds": round(time.perf_counter() - started, 1), "final_loss": round(history[-1]["loss"], 4)}


def _data(train_count: int) -> tuple:
    """Test images and labels, the first ``train_count`` training pairs, and 512 calibration images."""
    images, labels = fashion_mnist("test").tensors
    train_images, train_labels = fashion_mnist("train").tensors
    train = (train_images[:train_count], train_labels[:train_count])
    return images, labels, train, [train_images[i : i + 128] for i in range(0, 512, 128)]


def accuracy_part(epochs: int, train_count: int) -> None:
    images, labels, train, calibration = _data(train_count)
    results = {}
    for name, build in (("bnn_mlp", bnn_mlp), ("bnn_cnn", bnn_cnn)):
        torch.manual_seed(0)
        fp32 = build()
        row = {"method": "fp32 (start point)", **_fit(fp32, train, epochs)}
        row["accuracy"] = accuracy(fp32, images, labels)
        rows = [row]
        print(name, json.dumps(row), flush=True)
        # The baseline every rule is compared with: fp32 trained as many epochs in total as the rules are.
        continued = copy.deepcopy(fp32)
        row = {"method": "fp32 (baseline)", **_fit(continued, train, epochs)}
        row["accuracy"] = accuracy(continued, images, labels)
        rows.append(row)
        print(name, json.dumps(row), flush=True)
        for label, kind in RULES:
            torch.manual_seed(0)
            model = qat.prepare(copy.deepcopy(fp32), None, kind, calibration=calibration)
            row = {"method": label, "rule": kind, **_fit(model, train, epochs)}
            row["accuracy_fake_quant"] = accuracy(model, images, labels)
            row["accuracy"] = row["accuracy_fake_quant"] if kind == "xnor" else accuracy(qat.convert(model), images,
                                                                                          labels)
            rows.append(row)
            print(name, json.dumps(row), flush=True)
        results[name] = rows
    _write("binary_nets_accuracy", {"epochs": epochs, "train_images": train_count, "lr": LR, "batch": BATCH,
                                    "models": results}, _accuracy_table(results, epochs, train_count))


def seeds_part(epochs: int, train_count: int, rules: list[str], seeds: int) -> None:
    """The rules' fine-tuning repeated under ``seeds`` seeds (data order and stochastic parts) from one fp32 start
    point, to tell which gaps between rules are larger than the spread a seed alone causes."""
    images, labels, train, calibration = _data(train_count)
    results = {}
    for name, build in (("bnn_mlp", bnn_mlp), ("bnn_cnn", bnn_cnn)):
        torch.manual_seed(0)
        fp32 = build()
        _fit(fp32, train, epochs)
        results[name] = {}
        for kind in rules:
            scores = []
            for seed in range(seeds):
                torch.manual_seed(seed)
                model = qat.prepare(copy.deepcopy(fp32), None, kind, calibration=calibration)
                _fit(model, train, epochs, seed=seed)
                scores.append(accuracy(model, images, labels) if kind == "xnor"
                              else accuracy(qat.convert(model), images, labels))
                print(name, kind, seed, scores[-1], flush=True)
            results[name][kind] = scores
    lines = [f"Each rule fine-tunes {epochs} epochs from one fp32 start point ({epochs} epochs, seed 0) under seeds "
             f"0..{seeds - 1}; top-1 % on the 10000 test images.", "",
             "| model | rule | mean % | min | max | per seed |", "|---|---|---:|---:|---:|---|"]
    for name, rows in results.items():
        for kind, scores in rows.items():
            lines.append(f"| {name} | {kind} | {statistics.mean(scores):.2f} | {min(scores):.2f} | {max(scores):.2f} "
                         f"| {', '.join(f'{v:.2f}' for v in scores)} |")
    _write("binary_nets_seeds", {"epochs": epochs, "train_images": train_count, "seeds": seeds, "models": results},
           "\n".join(lines) + "\n")


def _accuracy_table(results: dict, epochs: int, train_count: int) -> str:
    lines = [f"fp32 is trained {epochs} epochs from scratch (start point); the baseline and every rule then train "
             f"{epochs} more from those weights ({train_count} images, same loop and seed); top-1 % of the converted "
             "model (XNOR-Net: the trained model) on the 10000 test images.", "",
             "| model | method | accuracy % | vs fp32 | s (training) |", "|---|---|---:|---:|---:|"]
    for name, rows in results.items():
        fp32 = rows[1]["accuracy"]  # the baseline with the same total epochs
        for r in rows:
            lines.append(f"| {name} | {r['method']} | {r['accuracy']:.2f} | {r['accuracy'] - fp32:+.2f} | "
                         f"{r['seconds']} |")
    return "\n".join(lines) + "\n"


def _alternating_blocks_ms(fp32, program, x, repeats: int, blocks: int = 3) -> tuple[float, float, float]:
    """Median ms of each, from ``blocks`` alternating blocks of runs per side. Within a block each side runs in its
    steady state, as a user runs it: one call at a time alternately would let PyTorch's spinning OpenMP workers
    take the second core from the engine's threads. Alternating the blocks spreads a slow spell of this shared
    machine over both sides."""
    base: list[float] = []
    packed: list[float] = []
    for _ in range(blocks):
        base += wall_times(lambda: fp32(x), 0.0, -(-repeats // blocks), 2)
        packed += wall_times(lambda: program(x), 0.0, -(-repeats // blocks), 2)
    fp32_ms, packed_ms = 1e3 * statistics.median(base), 1e3 * statistics.median(packed)
    return round(fp32_ms, 3), round(packed_ms, 3), round(fp32_ms / packed_ms, 2)


def speed_part(repeats: int) -> None:
    train_images = fashion_mnist("train").tensors[0]
    calibration = [train_images[i : i + 128] for i in range(0, 512, 128)]
    x = train_images[:64]
    rows = []
    bnn = qat.QATConfig.for_quantizer("bnn")
    twn = qat.QATConfig("twn", "sign")  # ternary weights on binary activations: the two-plane kernels
    for name, build, config in (("bnn_cnn (64 ch), BNN", lambda: bnn_cnn(64), bnn),
                                ("bnn_cnn (64 ch), TWN weights, sign activations", lambda: bnn_cnn(64), twn),
                                ("bnn_mlp (3 × 4096), BNN", lambda: bnn_mlp(4096, 3), bnn)):
        torch.manual_seed(0)
        fp32 = build().eval()
        frozen = qat.convert(qat.prepare(copy.deepcopy(fp32), bnn.default_recipe(), config,
                                         calibration=calibration).eval())
        program = lower(frozen, x[:1])
        kernels = [op.get("bit_kernel") for op in program.ops if op["op"] in ("conv", "linear")]
        assert program.fast_runner[1] is None, program.fast_runner[1]
        agree = float((program(x).argmax(1) == frozen(x).argmax(1)).float().mean())
        for threads in (1, 2):
            torch.set_num_threads(threads)
            numba.set_num_threads(threads)
            with torch.no_grad():
                fp32_ms, packed_ms, speedup = _alternating_blocks_ms(fp32, program, x, repeats)
            row = {"model": name, "threads": threads, "batch": 64, "fp32_torch_ms": fp32_ms,
                   "packed_engine_ms": packed_ms, "speedup": speedup,
                   "layers": kernels, "top1_agreement_with_simulation": agree}
            rows.append(row)
            print(json.dumps(row), flush=True)
    lines = ["Batch 64; fp32 PyTorch and the engine timed in three alternating blocks each, medians; fp32 PyTorch "
             "vs the integer engine running the converted network (packed "
             "XOR/popcount kernels for the binary and ternary layers, activations packed between them, 8-bit first "
             "and last layers).", "",
             "| model | threads | fp32 torch ms | packed engine ms | speed-up |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['threads']} | {r['fp32_torch_ms']} | {r['packed_engine_ms']} | {r['speedup']}× |"
              for r in rows]
    _write("binary_nets_speed", {"rows": rows}, "\n".join(lines) + "\n")


def _write(stem: str, payload: dict, table: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(payload, indent=1) + "\n")
    (RESULTS / f"{stem}.md").write_text(table)
    print(table)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=("accuracy", "speed", "seeds", "all"), default="all")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per rule (--part seeds)")
    parser.add_argument("--rules", nargs="+", default=["twn", "ttq", "bnn", "xnor"], help="rules (--part seeds)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train", type=int, default=60000, help="training images used (a fixed prefix)")
    parser.add_argument("--repeats", type=int, default=41)
    args = parser.parse_args()
    if args.part in ("speed", "all"):
        speed_part(args.repeats)
    if args.part in ("accuracy", "all"):
        accuracy_part(args.epochs, args.train)
    if args.part == "seeds":
        seeds_part(args.epochs, args.train, args.rules, args.seeds)


if __name__ == "__main__":
    main()
