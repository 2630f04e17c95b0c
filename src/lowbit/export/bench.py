"""Time fp32 PyTorch, fp32 ONNX Runtime and int8 ONNX Runtime fairly: one fresh process per measurement.

PyTorch's and ONNX Runtime's idle thread pools spin and steal cores from each other, and the spread from one
process to the next is large on small machines; so every candidate is timed in its own process (``python -m
lowbit.export.bench --worker …``), candidates interleaved, several rounds, and the median of the per-process
medians is reported.

Example:
    >>> ms, runs = median_ms(lambda: sum(range(1000)), min_seconds=0.01, min_runs=5)
    >>> ms > 0 and runs >= 5
    True
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Candidate", "median_ms", "wall_times", "time_candidates"]


@dataclass(frozen=True)
class Candidate:
    """What to time: ``kind`` ``"torch"`` (``target`` a model source, ``zoo:NAME`` or ``file.py:factory``; weights
    do not change speed, so the architecture is built untrained), ``"torch-best"`` (the same with BatchNorm folded
    and channels-last images: PyTorch's fastest fp32 path here), ``"engine"`` (``target`` a saved
    :class:`lowbit.engine.Program` folder) or ``"ort"`` (``target`` an ONNX file)."""

    kind: str
    target: str
    feed: str | None = None  # an .npz of named inputs (ONNX Runtime only), used instead of random inputs


def wall_times(call: Callable[[], object], min_seconds: float = 1.5, min_runs: int = 15, warmup: int = 3,
               ) -> list[float]:
    """Wall times of ``call()`` in seconds, at least ``min_runs`` of them over at least ``min_seconds``, after
    ``warmup`` untimed calls."""
    for _ in range(warmup):
        call()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < min_runs or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t)
    return samples


def median_ms(call: Callable[[], object], min_seconds: float = 1.5, min_runs: int = 15, warmup: int = 3,
              ) -> tuple[float, int]:
    """Median wall time of ``call()`` in ms over at least ``min_runs`` runs and ``min_seconds``, after warm-up."""
    samples = wall_times(call, min_seconds, min_runs, warmup)
    return 1000.0 * statistics.median(samples), len(samples)


def _worker(kind: str, target: str, batch: int, threads: int, shape: tuple[int, ...], feed_path: str = "-") -> float:
    import torch

    if kind in ("torch", "torch-best", "engine"):
        torch.set_num_threads(threads)
        x = torch.randn(batch, *shape)
        if kind == "engine":
            from lowbit.engine import Program

            model: Callable[[torch.Tensor], object] = Program.load(target)
        else:
            from lowbit.serialize import build_from_source

            model = build_from_source(target).eval()
            if kind == "torch-best":
                from lowbit.transforms import fold_bn

                model = fold_bn(model)
                if x.dim() == 4:
                    model, x = model.to(memory_format=torch.channels_last), x.contiguous(
                        memory_format=torch.channels_last)
        with torch.no_grad():
            return median_ms(lambda: model(x))[0]
    from lowbit.export.onnx import ort_session

    session = ort_session(target, threads=threads)
    if feed_path != "-":
        import numpy as np

        feed = dict(np.load(feed_path))
    else:
        feed = {session.get_inputs()[0].name: torch.randn(batch, *shape).numpy()}
    return median_ms(lambda: session.run(None, feed))[0]


def time_candidates(candidates: dict[str, Candidate], shape: tuple[int, ...], batch: int, threads: int,
                    rounds: int = 3) -> dict[str, float]:
    """Median ms per candidate for one (batch, threads) cell, each measurement in a fresh process.

    Raises:
        RuntimeError: a worker failed (its stderr is in the message).
    """
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, c in candidates.items():
            done = subprocess.run([sys.executable, "-m", "lowbit.export.bench", "--worker", c.kind, c.target,
                                   str(batch), str(threads), ",".join(map(str, shape)), c.feed or "-"],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"timing {name} failed: {done.stderr.strip()[-800:]}")
            samples[name].append(json.loads(done.stdout.strip().splitlines()[-1])["ms"])
            time.sleep(0.3)  # let the previous process's threads go quiet
    return {name: round(statistics.median(values), 3) for name, values in samples.items()}


def _main() -> None:
    parser = argparse.ArgumentParser(description="time one candidate in this process (used by time_candidates)")
    parser.add_argument("--worker", nargs=6, metavar=("KIND", "TARGET", "BATCH", "THREADS", "SHAPE", "FEED"),
                        required=True)
    kind, target, batch, threads, shape, feed = parser.parse_args().worker
    ms = _worker(kind, target, int(batch), int(threads), tuple(int(d) for d in shape.split(",") if d), feed)
    sys.stdout.write(json.dumps({"ms": round(ms, 4)}) + "\n")  # the worker's answer to time_candidates


if __name__ == "__main__":
    _main()
