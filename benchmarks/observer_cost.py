"""Observer cost: time of ``update`` per 1M-element batch, as a ratio to ``x.aminmax()`` on the same tensor.

Target (issue #2): every observer ≤ 5× except the MSE search; the entropy observer's memory flat over 1000
batches. Writes benchmarks/results/observer_cost.{json,md}.

Run: ``make bench`` or ``.venv/bin/python benchmarks/observer_cost.py [--repeats N]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from lowbit import PerChannel, QuantSpec
from lowbit.observers import (
    ACIQObserver,
    EntropyObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    PercentileObserver,
)

RESULTS = Path(__file__).parent / "results"
N = 1_000_000


def _time(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` in seconds (after two warm-up calls, which also trigger JIT compilation)."""
    fn()
    fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--memory-batches", type=int, default=1000)
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(N)
    x_channels = torch.randn(256, N // 256)  # per-channel case: 256 channels of 3906 values (axis 0)
    observers = {
        "MinMax": lambda s: MinMaxObserver(s),
        "MovingAverageMinMax": lambda s: MovingAverageMinMaxObserver(s),
        "Percentile": lambda s: PercentileObserver(s),
        "Entropy": lambda s: EntropyObserver(s),
        "ACIQ": lambda s: ACIQObserver(s),
        "MSE (histogram + search at calculate_qparams)": lambda s: MSEObserver(s),
    }
    rows = []
    for granularity, data in (("per-tensor", x), ("per-channel", x_channels)):
        spec = QuantSpec(bits=8) if granularity == "per-tensor" else QuantSpec(bits=8, granularity=PerChannel(0))
        for name, make in observers.items():
            if name == "Entropy" and granularity == "per-channel":
                continue
            obs = make(spec)
            # baseline and candidate timed alternately in the same run, on the same tensor
            base = _time(lambda d=data: d.aminmax(), args.repeats)
            cost = _time(lambda o=obs, d=data: o.update(d), args.repeats)
            rows.append({"observer": name, "granularity": granularity, "update_ms": cost * 1e3,
                         "aminmax_ms": base * 1e3, "ratio": cost / base})
            print(f"{name:48s} {granularity:12s} {cost * 1e3:8.3f} ms  aminmax {base * 1e3:6.3f} ms  {cost / base:6.1f}x")

    obs = EntropyObserver(QuantSpec(bits=8))
    batch = torch.randn(100_000)
    buffer_bytes, rss = [], []
    for i in range(args.memory_batches):
        obs.update(batch * (1 + i / 100))  # a growing range forces repeated re-binning
        if i in (0, 9, 99, args.memory_batches - 1):
            buffer_bytes.append(sum(b.numel() * b.element_size() for b in obs.buffers()))
            rss.append(_rss_bytes())
    memory = {"batches": args.memory_batches, "buffer_bytes_after_1_10_100_all": buffer_bytes,
              "rss_bytes_after_1_10_100_all": rss}
    print("entropy observer buffers (bytes) after 1/10/100/all batches:", buffer_bytes)
    print("process RSS (MiB) after 1/10/100/all batches:", [round(r / 2**20, 1) for r in rss])

    meta = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "elements": N, "repeats": args.repeats}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "observer_cost.json").write_text(json.dumps({"meta": meta, "rows": rows, "memory": memory}, indent=1))
    lines = ["| observer | granularity | update (ms) | aminmax (ms) | ratio |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['observer']} | {r['granularity']} | {r['update_ms']:.3f} | {r['aminmax_ms']:.3f} | "
              f"{r['ratio']:.1f}× |" for r in rows]
    lines += ["", f"Entropy observer buffers after 1/10/100/{args.memory_batches} batches: "
              f"{', '.join(str(b) for b in buffer_bytes)} bytes; process RSS "
              f"{', '.join(f'{r / 2**20:.1f}' for r in rss)} MiB."]
    (RESULTS / "observer_cost.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
