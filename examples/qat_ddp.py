"""Quantization-aware training on several processes: ``torchrun --nproc_per_node=2 examples/qat_ddp.py --out DIR``.

Every rank prepares the same LSQ W4A4 LeNet-5 (same calibration batches, so the same initial steps), then
``lowbit.qat.fit`` wraps it in DistributedDataParallel (gloo on CPU) and trains each rank on its half of every global
batch. Each rank writes its final weights to ``DIR/rank<R>.safetensors``; rank 0 also writes the converted model to
``DIR/model`` (``lowbit eval --model DIR/model`` scores it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import distributed as dist

import lowbit
from lowbit import qat
from lowbit.zoo import load
from lowbit.zoo.data import fashion_mnist


def prepared() -> torch.nn.Module:
    """The LSQ W4A4 LeNet-5 every rank starts from (same calibration batches, so the same initial steps)."""
    x, _ = fashion_mnist("train").tensors
    return qat.prepare(load("lenet5").model, "w4a4", "lsq", calibration=list(x[:256].split(64)))


def train(model: torch.nn.Module, images: int, batch_size: int, epochs: int) -> torch.nn.Module:
    """The run every rank does (and a one-process run reproduces): seeded, BatchNorm frozen from the start."""
    x, y = fashion_mnist("train").tensors
    qat.fit(model, (x[:images], y[:images]), epochs=epochs, batch_size=batch_size, lr=0.01, seed=0,
            freeze_bn_after=0, progress=False)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    model = train(prepared(), args.images, args.batch_size, args.epochs)
    rank = dist.get_rank()
    args.out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(args.out / f"rank{rank}.safetensors"))
    if rank == 0:
        lowbit.save_quantized(qat.convert(model), args.out / "model", source="zoo:lenet5")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
