"""8-bit optimizers (issue #10): state bytes and step time on a 10M-parameter model, training curves on Fashion-MNIST.

Parts:

- ``memory``: bytes of optimizer state after one step, read from the state tensors, for ``torch.optim.Adam``,
  lowbit's ``Adam8bit`` (blocks of 256 and 2048) and bitsandbytes' ``Adam8bit`` where installed, on an MLP
  784-2048-2048-2048-10 (10.0M parameters).
- ``speed``: median time of ``optimizer.step()`` on that model with fixed gradients, at 1 and 2 threads (torch and
  numba set alike), rounds interleaved so that drift hits every optimizer alike: ``torch.optim.Adam(foreach=True)``
  (the baseline of the ratio), ``torch.optim.Adam`` (default), lowbit's fused kernel, lowbit's torch path, and
  bitsandbytes' CPU ``Adam8bit``.
- ``train``: a zoo architecture (ResNet-20 by default; ``--model mlp``, the 784-300-100-10 MLP, has no BatchNorm
  to hide exploding weights) from scratch on Fashion-MNIST (batch 128, lr 1e-3, 2 epochs, seeds 0–2) with
  ``torch.optim.Adam``, ``Adam8bit`` and ``Adam8bit(quant_map="linear")`` (the ablation), cosine learning rate
  to 0 (``--schedule constant`` keeps 1e-3); training loss every 20 steps, test loss and accuracy after each epoch. ``--device cuda`` runs it on a GPU (the 8-bit optimizer then takes
  its torch path; on CPU the fused kernel).

Writes benchmarks/results/optim8bit_{memory,speed,train_<model>}.{json,md} and optim8bit_train_<model>.png. Run:
``.venv/bin/python benchmarks/optim8bit.py --part memory|speed|train|all [--model resnet20|mlp] [--device cpu|cuda]
[--seeds 3] [--first-seed 0] [--epochs 2]`` (memory and speed: ~3 minutes on 2 cores; train: ~2.5 hours on 2 CPU cores, minutes on a GPU).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import numba
import torch
import torch.nn.functional as F

from lowbit.optim import Adam8bit
from lowbit.zoo.data import fashion_mnist
from lowbit.zoo.registry import architecture

RESULTS = Path(__file__).parent / "results"


def _mlp_10m() -> torch.nn.Module:
    torch.manual_seed(0)
    layers = [torch.nn.Linear(784, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 2048), torch.nn.ReLU(),
              torch.nn.Linear(2048, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 10)]
    return torch.nn.Sequential(*layers)


def _bnb_adam8bit():
    try:
        import bitsandbytes as bnb
    except ImportError:
        return None
    return lambda params: bnb.optim.Adam8bit(params, lr=1e-3)


def _state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in the optimizer state, whatever its layout (torch's, lowbit's, bitsandbytes')."""
    return sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
               if isinstance(v, torch.Tensor))


def _optimizers(include_torch_path: bool) -> dict:
    makers = {
        "torch Adam (foreach)": lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True),
        "torch Adam (default)": lambda ps: torch.optim.Adam(ps, lr=1e-3),
        "lowbit Adam8bit (fused kernel)": lambda ps: Adam8bit(ps, lr=1e-3),
        "lowbit Adam8bit, block 2048": lambda ps: Adam8bit(ps, lr=1e-3, block_size=2048),
    }
    if include_torch_path:
        makers["lowbit Adam8bit (torch path)"] = lambda ps: Adam8bit(ps, lr=1e-3, backend="torch")
    if _bnb_adam8bit() is not None:
        makers["bitsandbytes Adam8bit (CPU)"] = _bnb_adam8bit()
    return makers


def _with_gradients(model: torch.nn.Module) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(1)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=generator) * 1e-2
    return model


def part_memory() -> dict:
    model = _mlp_10m()
    parameters = sum(p.numel() for p in model.parameters())
    rows = []
    for name, make in _optimizers(include_torch_path=False).items():
        if "default" in name:
            continue
        optimizer = make(_with_gradients(model).parameters())
        optimizer.step()
        rows.append({"optimizer": name, "state_bytes": _state_bytes(optimizer)})
        del optimizer
    base = rows[0]["state_bytes"]
    for row in rows:
        row["vs_torch_adam"] = round(row["state_bytes"] / base, 4)
        row["bytes_per_parameter"] = round(row["state_bytes"] / parameters, 3)
    return {"parameters": parameters, "rows": rows}


def part_speed(rounds: int, steps: int) -> dict:
    torch_threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()
    result = {"parameters": sum(p.numel() for p in _mlp_10m().parameters()), "rounds": rounds,
              "steps_per_round": steps, "threads": {}}
    # glibc serves allocations above its mmap threshold with fresh pages, which torch's foreach Adam then faults in
    # on every step (its temporaries are 17 MB per 2048x2048 layer). The threshold rises the first time such a
    # block is freed, as happens early in any training loop; freeing one here puts every optimizer in that state
    # (measured: foreach Adam takes 21 ms per step after it, 36 ms before, on one thread).
    block = torch.empty(30 * 2**20 // 4)
    del block
    for threads in (1, 2):
        torch.set_num_threads(threads)
        numba.set_num_threads(threads)
        makers = _optimizers(include_torch_path=True)
        runs = {}
        for name, make in makers.items():
            model = _with_gradients(_mlp_10m())
            runs[name] = (model, make(model.parameters()))
            for _ in range(2):  # warm-up: state allocation, numba compilation, allocator caches
                runs[name][1].step()
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(rounds):
            for name, (_, optimizer) in runs.items():
                repeat = 1 if "torch path" in name else steps
                for _ in range(repeat):
                    start = time.perf_counter()
                    optimizer.step()
                    times[name].append(time.perf_counter() - start)
        baseline = statistics.median(times["torch Adam (foreach)"])
        result["threads"][threads] = [
            {"optimizer": name, "median_ms": round(1e3 * statistics.median(t), 2),
             "vs_torch_adam_foreach": round(statistics.median(t) / baseline, 2), "samples": len(t)}
            for name, t in times.items()]
        del runs
    torch.set_num_threads(torch_threads)
    numba.set_num_threads(numba_threads)
    return result


TRAIN_OPTIMIZERS = {
    "torch Adam": lambda ps: torch.optim.Adam(ps, lr=1e-3),
    "Adam8bit (dynamic map)": lambda ps: Adam8bit(ps, lr=1e-3),
    "Adam8bit (linear map, ablation)": lambda ps: Adam8bit(ps, lr=1e-3, quant_map="linear"),
}


def _evaluate(model, images, labels, device) -> tuple[float, float]:
    model.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(images), 1000):
            x, y = images[i:i + 1000].to(device), labels[i:i + 1000].to(device)
            logits = model(x)
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
    model.train()
    return loss / len(images), 100.0 * correct / len(images)


def _train_one(name: str, model_name: str, seed: int, epochs: int, data, device: str, log_every: int,
               schedule: str) -> dict:
    """Train one model; a run whose loss or optimizer state stops being finite is recorded as diverged."""
    (train_x, train_y), (test_x, test_y) = data
    torch.manual_seed(seed)
    model = architecture(model_name).to(device).train()
    optimizer = TRAIN_OPTIMIZERS[name](model.parameters())
    # Cosine decay to 0 over the run: at a constant lr the last iterate's test accuracy swings by ±2 points from
    # one epoch to the next, too noisy for a 0.3-point comparison.
    steps_total = epochs * (len(train_x) // 128)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps_total) if schedule == "cosine"
                 else None)
    generator = torch.Generator().manual_seed(seed)
    curve, epochs_out, running, diverged = [], [], [], None
    step, start = 0, time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(len(train_x), generator=generator)
        epoch_losses = []
        for i in range(0, len(order) - 127, 128):
            index = order[i:i + 128]
            x, y = train_x[index].to(device), train_y[index].to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            value = float(loss.detach())
            try:
                if not math.isfinite(value):
                    raise FloatingPointError(f"loss {value}")
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
            except (FloatingPointError, ValueError) as error:  # ValueError: NaN/Inf reached the 8-bit state
                diverged = {"step": step, "reason": str(error)[:120]}
                break
            running.append(value)
            epoch_losses.append(value)
            step += 1
            if step % log_every == 0:
                curve.append([step, sum(running) / len(running)])
                running = []
        if diverged:
            epochs_out.append({"epoch": epoch + 1, "train_loss": math.inf, "test_loss": math.inf,
                               "test_accuracy": 10.0})
            break
        test_loss, accuracy = _evaluate(model, test_x, test_y, device)
        epochs_out.append({"epoch": epoch + 1, "train_loss": sum(epoch_losses) / len(epoch_losses),
                           "test_loss": test_loss, "test_accuracy": accuracy})
    eight_bit = sum(p.numel() for p in model.parameters() if "exp_avg_codes" in optimizer.state.get(p, {}))
    return {"optimizer": name, "seed": seed, "curve": curve, "epochs": epochs_out, "diverged": diverged,
            "seconds": round(time.perf_counter() - start, 1),
            "parameters_with_8bit_state": eight_bit, "parameters": sum(p.numel() for p in model.parameters())}


def part_train(model_name: str, seeds: range, epochs: int, device: str, images: int, schedule: str) -> dict:
    train, test = tuple(t[:images] for t in fashion_mnist("train").tensors), fashion_mnist("test").tensors
    if device != "cpu":
        train = tuple(t.to(device) for t in train)
        test = tuple(t.to(device) for t in test)
    runs = []
    for seed in seeds:
        for name in TRAIN_OPTIMIZERS:
            runs.append(_train_one(name, model_name, seed, epochs, (train, test), device, 20, schedule))
            last = runs[-1]["epochs"][-1]
            note = f" — diverged at step {runs[-1]['diverged']['step']}" if runs[-1]["diverged"] else ""
            print(f"{name:34s} seed {seed}: train loss {last['train_loss']:.4f}, test loss {last['test_loss']:.4f}, "
                  f"accuracy {last['test_accuracy']:.2f} % ({runs[-1]['seconds']} s){note}", flush=True)
    return {"model": model_name, "device": device, "torch": torch.__version__, "epochs": epochs,
            "seeds": list(seeds), "train_images": images, "batch": 128, "lr": 1e-3, "schedule": schedule, "runs": runs,
            "summary": _train_summary(runs)}


def _train_summary(runs: list[dict]) -> list[dict]:
    rows = []
    for name in TRAIN_OPTIMIZERS:
        mine = [r["epochs"][-1] for r in runs if r["optimizer"] == name]
        rows.append({"optimizer": name,
                     **{key: statistics.mean(e[key] for e in mine)
                        for key in ("train_loss", "test_loss", "test_accuracy")},
                     "accuracy_per_seed": [round(e["test_accuracy"], 2) for e in mine]})
    base = rows[0]
    for row in rows:
        row["train_loss_vs_adam_%"] = round(100 * (row["train_loss"] / base["train_loss"] - 1), 2)
        row["test_loss_vs_adam_%"] = round(100 * (row["test_loss"] / base["test_loss"] - 1), 2)
        row["accuracy_vs_adam"] = round(row["test_accuracy"] - base["test_accuracy"], 2)
    return rows


def plot_train(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    colours = dict(zip(TRAIN_OPTIMIZERS, ("black", "tab:blue", "tab:red"), strict=True))
    for run in (r for r in result["runs"] if r["curve"]):
        steps, losses = zip(*run["curve"], strict=True)
        label = run["optimizer"] if run["seed"] == result["seeds"][0] else None
        ax.plot(steps, losses, color=colours[run["optimizer"]], alpha=0.7, linewidth=1, label=label)
    ax.set_xlabel("step (batch 128)")
    ax.set_ylabel("training loss (mean of 20 steps)")
    ax.set_yscale("log")
    ax.set_title(f"{result['model']} on Fashion-MNIST, seeds {result['seeds'][0]}–{result['seeds'][-1]}, "
                 f"{result['device']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _write(name: str, result: dict, table: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"optim8bit_{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / f"optim8bit_{name}.md").write_text(table)
    print(table)


def memory_table(result: dict) -> str:
    lines = [f"Optimizer state after one step, MLP 784-2048-2048-2048-10 ({result['parameters']:,} parameters).", "",
             "| optimizer | state bytes | bytes / parameter | vs torch Adam |", "|---|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['optimizer']} | {r['state_bytes']:,} | {r['bytes_per_parameter']} | "
                     f"{100 * r['vs_torch_adam']:.1f} % |")
    return "\n".join(lines) + "\n"


def speed_table(result: dict) -> str:
    lines = [f"optimizer.step() on {result['parameters']:,} parameters, median of {result['rounds']} interleaved "
             f"rounds × {result['steps_per_round']} steps (torch path: 1 step per round).", "",
             "| optimizer | threads | median ms | vs torch Adam (foreach) |", "|---|---:|---:|---:|"]
    for threads, rows in result["threads"].items():
        for r in rows:
            lines.append(f"| {r['optimizer']} | {threads} | {r['median_ms']} | {r['vs_torch_adam_foreach']}× |")
    return "\n".join(lines) + "\n"


def _loss(value: float) -> str:
    return f"{value:.4f}" if value < 1e3 else f"{value:.2e}"  # a diverged run's loss is astronomically large


def _percent(value: float) -> str:
    return f"{value:+.2f} %" if abs(value) < 1e4 else f"{value:+.1e} %"


def train_table(result: dict) -> str:
    seeds = result["seeds"]
    lines = [f"{result['model']} from scratch on Fashion-MNIST ({result['train_images']:,} training images), "
             f"{result['epochs']} epochs, batch {result['batch']}, lr {result['lr']} ({result['schedule']}), "
             f"seeds {seeds[0]}–{seeds[-1]}, "
             f"on {result['device']} (torch {result['torch']}); means over seeds, last epoch.",
             "", "| optimizer | train loss | vs Adam | test loss | vs Adam | accuracy % | vs Adam | per seed |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in result["summary"]:
        lines.append(f"| {r['optimizer']} | {_loss(r['train_loss'])} | {_percent(r['train_loss_vs_adam_%'])} | "
                     f"{_loss(r['test_loss'])} | {_percent(r['test_loss_vs_adam_%'])} | {r['test_accuracy']:.2f} | "
                     f"{r['accuracy_vs_adam']:+.2f} | {', '.join(map(str, r['accuracy_per_seed']))} |")
    diverged = [f"{r['optimizer']} seed {r['seed']} at step {r['diverged']['step']}" for r in result["runs"]
                if r["diverged"]]
    if diverged:
        lines += ["", "Diverged (loss or state not finite; counted as loss inf, accuracy 10 %): " + "; ".join(diverged)]
    run = result["runs"][1]
    lines += ["", f"Parameters with 8-bit state: {run['parameters_with_8bit_state']:,} of {run['parameters']:,} "
                  "(tensors under 4096 elements keep float32 state)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["memory", "speed", "train", "all"], default="all")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="resnet20", help="zoo architecture trained from scratch (resnet20, mlp)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--schedule", choices=["cosine", "constant"], default="cosine")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train", type=int, default=60000, help="training images used (a fixed prefix)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="write the train results here instead of results/")
    args = parser.parse_args()
    if args.out is not None:
        global RESULTS
        RESULTS = args.out
    if args.part in ("memory", "all"):
        result = part_memory()
        _write("memory", result, memory_table(result))
    if args.part in ("speed", "all"):
        result = part_speed(args.rounds, args.steps)
        _write("speed", result, speed_table(result))
    if args.part in ("train", "all"):
        seeds = range(args.first_seed, args.first_seed + args.seeds)
        result = part_train(args.model, seeds, args.epochs, args.device, args.train, args.schedule)
        tag = (f"train_{args.model}" + (f"_seeds{seeds[0]}-{seeds[-1]}" if args.first_seed else "")
               + ("_constant" if args.schedule == "constant" else ""))
        _write(tag, result, train_table(result))
        plot_train(result, RESULTS / f"optim8bit_{tag}.png")


if __name__ == "__main__":
    main()
