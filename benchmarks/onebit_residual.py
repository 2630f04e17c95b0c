"""Why onebit rotates (issue #11): the error-feedback residual and the training loss, simulated in one process.

``W`` workers are simulated in one process: each step splits the global batch of 128 into ``W`` slices, each
slice's gradient goes through :mod:`lowbit.comm`'s real ``onebit`` encoder with error feedback exactly as the
DDP hook applies it (``e = g + r``, ``r = β·(e − decode)``, a fresh payload key per worker and step), and the
decoded gradients are averaged before the optimizer step. LeNet-5, Fashion-MNIST, SGD (momentum 0.9 unless
stated), lr 0.05 with cosine decay, 2 epochs, as ``benchmarks/gradient_compression.py`` trains under ``torchrun``.

Recorded per setting: the ratio ``‖r‖/‖g‖`` (summed over workers) every 25 steps, the mean training loss per
100 steps and the final test accuracy. Writes benchmarks/results/onebit_residual.{json,md}. Run:
``.venv/bin/python benchmarks/onebit_residual.py [--workers 4] [--seed 0]`` (about 3 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from torch import nn

from gradient_compression import write_results  # benchmarks/, beside this script

from lowbit.analysis import accuracy
from lowbit.comm.hook import payload_key
from lowbit.comm.schemes import make_scheme
from lowbit.flows.qat_train import _batches
from lowbit.zoo.data import fashion_mnist
from lowbit.zoo.models import build

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"

# label: (rotate, β, momentum); rotate None is the fp32 average
SETTINGS = {
    "fp32": (None, 0.0, 0.9),
    "onebit, not rotated, full feedback": (False, 1.0, 0.9),
    "onebit, not rotated, damped feedback (β = 0.25)": (False, 0.25, 0.9),
    "onebit, rotated, full feedback (default)": (True, 1.0, 0.9),
    "fp32, no momentum": (None, 0.0, 0.0),
    "onebit, not rotated, full feedback, no momentum": (False, 1.0, 0.0),
}


def simulate(rotate: bool | None, beta: float, momentum: float, workers: int, seed: int, epochs: int) -> dict:
    """Train LeNet-5 with ``workers`` simulated ranks; returns the residual ratios, losses and accuracy."""
    torch.manual_seed(seed)
    model = build("lenet5")
    x, y = fashion_mnist("train").tensors
    test = fashion_mnist("test").tensors
    params = list(model.parameters())
    segments = [p.numel() for p in params]
    scheme = None if rotate is None else make_scheme("onebit", rotate=rotate)
    steps = len(y) // 128 * epochs
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=momentum)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    residuals = [torch.zeros(sum(segments)) for _ in range(workers)]
    generator, loss_fn = torch.Generator().manual_seed(seed), nn.CrossEntropyLoss()
    ratios, losses, window, step = [], [], [], 0
    for _ in range(epochs):
        model.train()
        for inputs, targets in _batches((x, y), 128, generator):
            decoded, loss, grad_norm, residual_norm = [], 0.0, 0.0, 0.0
            for rank, (xi, yi) in enumerate(zip(inputs.tensor_split(workers), targets.tensor_split(workers))):
                model.zero_grad(set_to_none=True)
                part = loss_fn(model(xi), yi)
                part.backward()
                loss += float(part.detach()) / workers
                g = torch.cat([p.grad.reshape(-1) for p in params])
                if scheme is None:
                    decoded.append(g)
                    continue
                e = g + residuals[rank]
                _, local, _ = scheme.encode(e, None, None, segments, payload_key(seed, rank, step))
                residuals[rank] = beta * (e - local)
                decoded.append(local)
                grad_norm += float(g.norm())
                residual_norm += float(residuals[rank].norm())
            average = torch.stack(decoded).mean(dim=0)
            for p, piece in zip(params, average.split(segments)):
                p.grad = piece.view_as(p).clone()
            optimizer.step()
            schedule.step()
            step += 1
            window.append(loss)
            if scheme is not None and step % 25 == 0:
                ratios.append(round(residual_norm / grad_norm, 3))
            if step % 100 == 0:
                losses.append(round(statistics.mean(window), 4))
                window = []
    return {"residual_over_gradient": ratios, "train_loss_per_100_steps": losses,
            "accuracy": round(accuracy(model, *test), 2)}


def table(result: dict) -> str:
    lines = [f"LeNet-5, {result['workers']} simulated workers, seed {result['seed']}, {result['epochs']} epochs, "
             "global batch 128, lr 0.05 cosine (one process; bytes as in gradient_compression.md).", "",
             "| setting | ‖r‖/‖g‖ median | ‖r‖/‖g‖ max | train loss, steps 1–100 / 101–200 / last 100 | "
             "test accuracy % |", "|---|---:|---:|---|---:|"]
    for label, row in result["rows"].items():
        ratios = row["residual_over_gradient"]
        median = f"{statistics.median(ratios):.2f}" if ratios else ""
        peak = f"{max(ratios):.2f}" if ratios else ""
        loss = row["train_loss_per_100_steps"]
        lines.append(f"| {label} | {median} | {peak} | {loss[0]:.3f} / {loss[1]:.3f} / {loss[-1]:.3f} | "
                     f"{row['accuracy']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "onebit_residual")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = {}
    for label, (rotate, beta, momentum) in SETTINGS.items():
        rows[label] = simulate(rotate, beta, momentum, args.workers, args.seed, args.epochs)
        print(label, rows[label]["accuracy"], flush=True)
    result = {"model": "lenet5", "workers": args.workers, "seed": args.seed, "epochs": args.epochs, "rows": rows}
    write_results(args.out, result, table(result))


if __name__ == "__main__":
    main()
