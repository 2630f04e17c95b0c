"""``lowbit.qat.fit``: a small, seeded training loop for QAT models — one process or DDP (gloo on CPU).

Under ``torch.distributed`` (started with ``torchrun``), every rank draws the same global batches and trains on
its contiguous slice of each; DDP averages the gradients, so with equal slices the update is the one-process
update on the global batch. BatchNorm statistics are per rank until frozen (as in plain DDP), and the moving-average
ranges of STE quantizers follow rank 0 (DDP broadcasts buffers). Only rank 0 shows progress and writes checkpoints.

Checkpoints are safetensors: ``epoch-N.safetensors`` holds the model's tensors and the optimizer's tensor state
(``optimizer.<param index>.<name>``), ``epoch-N.json`` the epoch, the metrics and the optimizer's other state.

Example:
    >>> import torch
    >>> from lowbit.flows.qat import prepare
    >>> torch.manual_seed(0) and None
    >>> x, y = torch.randn(256, 8), torch.randint(0, 4, (256,))
    >>> model = prepare(torch.nn.Sequential(torch.nn.Linear(8, 4)), "w4a4", "lsq", calibration=[x[:64]])
    >>> result = fit(model, (x, y), epochs=2, batch_size=64, lr=0.05, progress=False)
    >>> [round(h["loss"], 3) for h in result.history] == sorted(round(h["loss"], 3) for h in result.history)[::-1]
    True
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import distributed as dist
from torch import nn

from lowbit import comm
from lowbit.analysis.evaluation import accuracy
from lowbit.flows.qat import clip_latent_weights, freeze_bn, regularization
from lowbit.flows.qat_schedule import Schedule, TwoStage

__all__ = ["fit", "FitResult", "save_checkpoint", "load_checkpoint"]


@dataclass
class FitResult:
    """Per-epoch ``{"epoch", "loss", "accuracy" (when eval data was given), "seconds"}`` and the checkpoints written."""

    history: list[dict[str, float]] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    communication: dict[str, int] = field(default_factory=dict)
    """With ``gradient_compression``: this rank's ``bytes_sent``, ``bytes_uncompressed``, ``payload_bits`` and
    ``buckets`` over the whole run (:class:`lowbit.comm.CompressionHandle`)."""


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _batches(data: Any, batch_size: int, generator: torch.Generator) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled full batches of ``(inputs, targets)`` tensors (a trailing partial batch is dropped: every step
    has the same size, which DDP's averaging needs to equal the one-process update), or the user's iterable."""
    pair = _tensor_pair(data)
    if pair is not None:
        inputs, targets = pair
        order = torch.randperm(len(targets), generator=generator)
        for i in range(0, len(targets) - batch_size + 1, batch_size):
            index = order[i : i + batch_size]
            yield inputs[index], targets[index]
        return
    yield from data


def _default_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """SGD with momentum 0.9; weight decay only on weights (not on biases, BN, steps or clips)."""
    decay = [p for n, p in model.named_parameters() if p.requires_grad and n.endswith("weight") and p.ndim > 1]
    ids = {id(p) for p in decay}
    other = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    return torch.optim.SGD([{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}],
                           lr=lr, momentum=0.9)


def fit(model: nn.Module, train_data: Any, epochs: int = 1, *, optimizer: torch.optim.Optimizer | None = None,
        lr: float = 0.01, weight_decay: float = 0.0, batch_size: int = 128,
        eval_data: tuple[torch.Tensor, torch.Tensor] | None = None, loss_fn: nn.Module | None = None,
        seed: int = 0, schedule: Schedule | Sequence[Schedule] = (), freeze_bn_after: int | None = None,
        checkpoint_dir: str | Path | None = None, progress: bool = True,
        gradient_compression: str | Mapping[str, Any] | None = None) -> FitResult:
    """Train ``model`` (e.g. from :func:`lowbit.qat.prepare`) for ``epochs``; returns the per-epoch history and
    leaves ``model`` in eval mode.

    Args:
        train_data: ``(inputs, targets)`` tensors or a ``TensorDataset`` (shuffled with ``seed``, batches of
            ``batch_size`` — the global batch under DDP), or any re-iterable of ``(inputs, targets)`` batches.
        optimizer: default SGD (momentum 0.9) with a cosine learning rate from ``lr`` to 0 over all steps.
        eval_data: ``(inputs, targets)`` scored (top-1 %) after every epoch.
        loss_fn: default cross-entropy; PACT's penalty (:func:`lowbit.qat.regularization`) is added to it.
        schedule: :class:`~lowbit.flows.qat_schedule.Schedule` s applied at the start of every epoch.
        freeze_bn_after: freeze BatchNorm statistics (:func:`lowbit.qat.freeze_bn`) after this many steps
            (0: from the start).
        checkpoint_dir: write a checkpoint after every epoch (rank 0).
        gradient_compression: under DDP, a :mod:`lowbit.comm` scheme name or ``{"scheme": name, **options}``
            (e.g. ``{"scheme": "qsgd", "levels": 16}``) registered on the DDP model; ``result.communication``
            then holds its byte counts.

    Raises:
        ValueError: bad arguments (naming them), or a global batch the DDP world cannot split evenly.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"fit: epochs must be an int >= 1, got {epochs!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"fit: batch_size must be an int >= 1, got {batch_size!r}")
    if freeze_bn_after is not None and (not isinstance(freeze_bn_after, int) or freeze_bn_after < 0):
        raise ValueError(f"fit: freeze_bn_after must be None or an int >= 0, got {freeze_bn_after!r}")
    rank, world = _world()
    if world > 1 and batch_size % world:
        raise ValueError(f"fit: batch_size {batch_size} does not split evenly over {world} processes")
    if gradient_compression is not None and world == 1:
        raise ValueError(f"fit: gradient_compression={gradient_compression!r} needs DDP (torch.distributed with more "
                         "than one process)")
    schedules = [schedule] if isinstance(schedule, Schedule) else list(schedule)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    net: nn.Module = model
    handle = None
    if world > 1:
        # a weights-first stage leaves activation quantizers' parameters without gradients for a while
        unused = any(isinstance(s, TwoStage) for s in schedules)
        net = nn.parallel.DistributedDataParallel(model, find_unused_parameters=unused)
        if gradient_compression is not None:
            spec = ({"scheme": gradient_compression} if isinstance(gradient_compression, str)
                    else dict(gradient_compression))
            handle = comm.register(net, **spec)
    own = optimizer is None  # the default comes with its cosine schedule; a user's optimizer is left as given
    optimizer = optimizer or _default_optimizer(model, lr, weight_decay)
    steps_per_epoch = _count_steps(train_data, batch_size)
    scheduler = None
    if own and steps_per_epoch:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    result, step = FitResult(), 0
    if freeze_bn_after == 0:
        freeze_bn(model)
    with _Progress(progress and rank == 0, epochs * (steps_per_epoch or 0)) as bar:
        for epoch in range(epochs):
            for s in schedules:
                s.apply(model, epoch)
            net.train()
            started, total, count = time.perf_counter(), 0.0, 0
            for inputs, targets in _batches(train_data, batch_size, generator):
                if world > 1:
                    if len(targets) % world:
                        raise ValueError(f"fit: a batch of {len(targets)} does not split evenly over {world} "
                                         "processes (DDP's average would not be the global batch's mean)")
                    inputs, targets = inputs.tensor_split(world)[rank], targets.tensor_split(world)[rank]
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(net(inputs), targets)
                (loss + regularization(model)).backward()
                optimizer.step()
                clip_latent_weights(model)  # BinaryConnect: latent binary weights stay in [−1, 1]
                if scheduler is not None:
                    scheduler.step()
                step += 1
                if freeze_bn_after is not None and step == freeze_bn_after:
                    freeze_bn(model)
                total, count = total + float(loss.detach()), count + 1
                bar.advance(f"epoch {epoch + 1}/{epochs} loss {total / count:.4f}")
            if count == 0:
                raise ValueError(f"fit: epoch {epoch + 1} had no batch (fewer samples than batch_size {batch_size}, "
                                 "or a one-shot iterable that is already spent)")
            record: dict[str, float] = {"epoch": epoch + 1, "loss": total / max(count, 1),
                                        "seconds": round(time.perf_counter() - started, 2)}
            if eval_data is not None:
                record["accuracy"] = round(accuracy(model, *eval_data), 2)
            result.history.append(record)
            if checkpoint_dir is not None and rank == 0:
                path = save_checkpoint(model, optimizer, Path(checkpoint_dir) / f"epoch-{epoch + 1}", record)
                result.checkpoints.append(str(path))
    model.eval()
    if handle is not None:
        result.communication = {"bytes_sent": handle.bytes_sent, "bytes_uncompressed": handle.bytes_uncompressed,
                                "payload_bits": handle.payload_bits, "buckets": handle.buckets}
    return result


def _tensor_pair(data: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(inputs, targets)`` when ``data`` is that pair of tensors or a ``TensorDataset`` of it, else None."""
    if isinstance(data, torch.utils.data.TensorDataset):
        data = data.tensors
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return data[0], data[1]
    return None


def _count_steps(data: Any, batch_size: int) -> int | None:
    pair = _tensor_pair(data)
    if pair is not None:
        return len(pair[1]) // batch_size
    return len(data) if hasattr(data, "__len__") else None


class _Progress:
    """A rich progress bar on stderr (or nothing)."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled, total

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import Progress

            self._bar = Progress(console=Console(stderr=True), transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task("training", total=self.total or None)
        return self

    def advance(self, description: str) -> None:
        if self.enabled:
            self._bar.update(self._task, advance=1, description=description)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._bar.__exit__(*exc)


def save_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer | None, stem: str | Path,
                    metrics: dict[str, float] | None = None) -> Path:
    """Write ``stem.safetensors`` (model and optimizer tensors) and ``stem.json``; returns the safetensors path."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    # the widths quantizers train at now (a progressive schedule lowers them): steps are only right at these
    meta: dict[str, Any] = {"metrics": metrics or {}, "optimizer": None, "bits": _current_bits(model)}
    if optimizer is not None:
        state = optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for index, entry in state["state"].items():
            for name, value in entry.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optimizer.{index}.{name}"] = value.detach().contiguous().clone()
                else:
                    scalars.setdefault(str(index), {})[name] = value
        meta["optimizer"] = {"param_groups": state["param_groups"], "scalars": scalars}
    text = json.dumps(meta, indent=1, default=_json_value) + "\n"  # fails before anything is written
    path = stem.with_suffix(".safetensors")
    save_file(tensors, str(path))
    stem.with_suffix(".json").write_text(text)
    return path


def _json_value(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()  # e.g. a tensor learning rate
    raise ValueError(f"save_checkpoint: optimizer state {value!r} ({type(value).__name__}) cannot be written as JSON")


def _current_bits(model: nn.Module) -> dict[str, int]:
    from lowbit.nn.fake_quant import ActivationFakeQuantizer, DoReFaWeightQuantizer, WeightFakeQuantizer

    bits = {}
    for name, m in model.named_modules():
        if isinstance(m, DoReFaWeightQuantizer):
            bits[name] = m.bits
        elif isinstance(m, (WeightFakeQuantizer, ActivationFakeQuantizer)):
            bits[name] = m.spec.bits
    return bits


def load_checkpoint(model: nn.Module, path: str | Path, optimizer: torch.optim.Optimizer | None = None,
                    ) -> dict[str, float]:
    """Restore what :func:`save_checkpoint` wrote into ``model`` (and ``optimizer``); returns the metrics.

    Raises:
        ValueError: a checkpoint whose tensors do not match the model (keys named).
    """
    path = Path(path)
    tensors = load_file(str(path))
    meta = json.loads(path.with_suffix(".json").read_text())
    modules = dict(model.named_modules())
    for name, bits in meta.get("bits", {}).items():
        if name in modules:
            modules[name].set_bits(bits)  # the widths the steps were saved at, before the steps are loaded
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if optimizer is not None and meta.get("optimizer"):
        entries: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                entries.setdefault(int(index), {})[name] = value
        for index, scalars in meta["optimizer"]["scalars"].items():
            entries.setdefault(int(index), {}).update(scalars)
        optimizer.load_state_dict({"state": entries, "param_groups": meta["optimizer"]["param_groups"]})
    return meta["metrics"]
