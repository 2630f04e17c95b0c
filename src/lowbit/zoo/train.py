"""Train a zoo model on Fashion-MNIST, reproducibly: ``python -m lowbit.zoo.train NAME [--epochs N] [--seed S]``.

Writes ``NAME.safetensors`` (the fp32 state dict) and ``NAME.json`` (the model card: test accuracy, recipe,
seed, versions, time) into ``--out`` (default: the package's ``zoo/weights`` folder, where the shipped weights
live). Same seed, same machine, same torch: the same weights.

The recipe is plain: SGD with Nesterov momentum 0.9, weight decay 5·10⁻⁴ (not on BN or biases), batch 128,
one-cycle learning rate peaking at ``--lr``, random horizontal flips for the convolutional models.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from safetensors.torch import save_file
from torch import nn

from lowbit.analysis.evaluation import accuracy as evaluate
from lowbit.zoo.data import fashion_mnist
from lowbit.zoo.models import BINARY_BUILDERS, MODEL_NAMES, build

WEIGHTS_DIR = Path(__file__).parent / "weights"
# epochs, peak learning rate, flip augmentation: chosen per model for a 2-core CPU budget
RECIPES = {
    "mlp": (15, 0.05, False),
    "lenet5": (15, 0.05, True),
    "resnet20": (4, 0.1, True),
    "mobilenetv2": (3, 0.1, True),
    # the binary networks' fp32 starting points (no shipped weights: train them here for `lowbit qat`)
    "bnn_mlp": (10, 0.05, False),
    "bnn_cnn": (5, 0.05, True),
}


def train(name: str, epochs: int, lr: float, flip: bool, seed: int, out: Path) -> dict[str, object]:
    """Train ``name`` and write its weights and card to ``out``; returns the card."""
    torch.manual_seed(seed)
    model = build(name)
    train_set, test_set = fashion_mnist("train"), fashion_mnist("test")
    images, labels = train_set.tensors
    test_images, test_labels = test_set.tensors
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, momentum=0.9, nesterov=True,
    )
    batch = 128
    steps_per_epoch = (len(labels) + batch - 1) // batch
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    started = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(f"train {name}", total=epochs * steps_per_epoch)
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(len(labels), generator=generator)
            for i in range(0, len(labels), batch):
                idx = order[i : i + batch]
                x, y = images[idx], labels[idx]
                if flip:
                    mirror = torch.rand(len(idx), generator=generator) < 0.5
                    x = torch.where(mirror.view(-1, 1, 1, 1), x.flip(-1), x)
                optimizer.zero_grad(set_to_none=True)
                loss_fn(model(x), y).backward()
                optimizer.step()
                schedule.step()
                progress.advance(task)
            accuracy = evaluate(model, test_images, test_labels)
            progress.console.print(f"{name} epoch {epoch + 1}/{epochs}: test accuracy {accuracy:.2f}%")
    card = {
        "name": name,
        "task": "Fashion-MNIST classification, 10 classes, input [N, 1, 28, 28] standardised (mean 0.2860, std 0.3530)",
        "accuracy": round(evaluate(model, test_images, test_labels), 2),
        "parameters": sum(p.numel() for p in model.parameters()),
        "recipe": {"epochs": epochs, "peak_lr": lr, "flip": flip, "batch": batch, "optimizer": "SGD nesterov 0.9",
                   "weight_decay": 5e-4, "schedule": "one-cycle"},
        "seed": seed,
        "command": f"python -m lowbit.zoo.train {name} --epochs {epochs} --lr {lr} --seed {seed}",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "train_seconds": round(time.perf_counter() - started, 1),
        "data": "Fashion-MNIST from the Debian package dataset-fashion-mnist (Zalando Research, MIT licence)",
    }
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / f"{name}.safetensors"))
    (out / f"{name}.json").write_text(json.dumps(card, indent=1) + "\n")
    return card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lowbit.zoo.train", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=MODEL_NAMES + tuple(BINARY_BUILDERS))
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    args = parser.parse_args(argv)
    epochs, lr, flip = RECIPES[args.name]
    card = train(args.name, args.epochs or epochs, args.lr or lr, flip, args.seed, args.out)
    sys.stdout.write(json.dumps(card, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
