"""Data-parallel training with compressed gradients: ``torchrun --nproc_per_node=2 examples/ddp_compressed.py``.

Every rank builds the same LeNet-5 (seeded), and ``lowbit.qat.fit`` trains it on Fashion-MNIST under
DistributedDataParallel (gloo on CPU). Each rank takes its slice of every global batch of 128, and the gradients
travel compressed with the chosen :mod:`lowbit.comm` scheme:

    torchrun --nproc_per_node=4 examples/ddp_compressed.py --scheme qsgd --option levels=16 --epochs 2

Rank 0 prints the test accuracy and the bytes sent against plain fp32 all-reduce. ``--out DIR`` also writes
``DIR/result.json`` (rank 0) and every rank's final weights to ``DIR/rank<R>.safetensors``.
``--scheme none`` trains with DDP's own fp32 all-reduce, the baseline.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import distributed as dist

from lowbit.flows.qat_train import fit
from lowbit.zoo.data import fashion_mnist
from lowbit.zoo.models import build


def _option(text: str) -> tuple[str, object]:
    """``name=value``: ``true``/``false`` as a bool, ``none`` as None, else an int or a float where it parses."""
    name, _, value = text.partition("=")
    words = {"true": True, "false": False, "none": None}
    if value.lower() in words:
        return name, words[value.lower()]
    for kind in (int, float):
        try:
            return name, kind(value)
        except ValueError:
            pass
    return name, value


def run(scheme: str, options: dict, epochs: int, images: int, batch_size: int, lr: float, seed: int) -> dict:
    """Train LeNet-5 on this rank; returns the history, the test accuracy and this rank's byte counts."""
    torch.manual_seed(seed)
    model = build("lenet5")
    x, y = fashion_mnist("train").tensors
    test = fashion_mnist("test").tensors
    compression = None if scheme == "none" else {"scheme": scheme, "seed": seed, **options}
    result = fit(model, (x[:images], y[:images]), epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                 eval_data=test, progress=False, gradient_compression=compression)
    return {"model": model, "history": result.history, "communication": result.communication}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scheme", default="onebit", help="onebit, qsgd, terngrad, dorefa, fp16, bf16, fp32, none")
    parser.add_argument("--option", action="append", default=[], type=_option, help="NAME=VALUE, e.g. levels=16")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--images", type=int, default=60000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    rank, world = dist.get_rank(), dist.get_world_size()
    done = run(args.scheme, dict(args.option), args.epochs, args.images, args.batch_size, args.lr, args.seed)
    summary = {"scheme": args.scheme, "options": dict(args.option), "processes": world, "epochs": args.epochs,
               "history": done["history"], "communication": done["communication"]}
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        weights = {k: v.contiguous() for k, v in done["model"].state_dict().items()}
        save_file(weights, str(args.out / f"rank{rank}.safetensors"))
        if rank == 0:
            (args.out / "result.json").write_text(json.dumps(summary, indent=1))
    if rank == 0:
        sent = done["communication"]
        ratio = f", {sent['bytes_uncompressed'] / sent['bytes_sent']:.1f}x fewer bytes" if sent else ""
        print(f"{args.scheme} on {world} processes: test accuracy {done['history'][-1]['accuracy']:.2f}%{ratio}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
