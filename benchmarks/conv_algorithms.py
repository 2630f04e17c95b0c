"""Fast convolution algorithms (issue #12): time, float error, int8 Winograd, Strassen; one thread.

Parts:

- ``time``: median time of ``lowbit.kernels.conv.conv2d`` per algorithm and of ``torch.nn.functional.conv2d``
  (oneDNN) for kernel sizes 3, 5, 7, 11 and images 14, 28, 56 (32 → 32 channels, batch 1, "same" padding), plus
  the target case, 64 → 64 channels at 56×56 with a 3×3 filter: Winograd with its filters transformed once
  (``prepared``, as an inference engine keeps them) and with the transform inside every call. All lowbit
  algorithms use ``torch.matmul`` for their products. Rounds are interleaved so drift hits every algorithm
  alike; ratios are within one run.
- ``error``: float32 result vs the float64 ``conv2d`` of the same values, per algorithm (64 channels, 56×56, 3×3,
  Gaussian data): max and RMS error relative to the output's RMS.
- ``int8``: F(2×2,3×3) and F(4×4,3×3) on int8 codes. In the spatial domain the integer result is exact; the bit
  widths its transforms need are reported. In the transformed domain (int8 after the transform), the error is
  compared with direct int8 convolution, both against the float64 convolution of the unquantized values.
- ``strassen``: ``strassen_matmul`` (cutoffs 64, 128, 256) vs ``torch.matmul`` for square sizes 128–2048.

Writes benchmarks/results/conv_algorithms.{json,md} and conv_algorithms_time.png. Run:
``.venv/bin/python benchmarks/conv_algorithms.py [--part time|error|int8|strassen|all]`` (about 5 minutes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lowbit.kernels.conv import (Algorithm, conv2d, fft_size, fft_weight, range_growth, strassen_matmul,
                                 winograd_conv2d_codes, winograd_conv2d_transformed_int8, winograd_weight)

RESULTS = Path(__file__).parent / "results"
WINOGRAD = {Algorithm.WINOGRAD_2x2_3x3: 2, Algorithm.WINOGRAD_4x4_3x3: 4}


def _median_ms(jobs: dict, rounds: int, repeat: int) -> dict[str, float]:
    """Median milliseconds per job, rounds interleaved across jobs (each job warmed up once)."""
    for job in jobs.values():
        job()
    samples: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(rounds):
        for name, job in jobs.items():
            for _ in range(repeat):
                start = time.perf_counter()
                job()
                samples[name].append(time.perf_counter() - start)
    return {name: round(1e3 * statistics.median(s), 3) for name, s in samples.items()}


def _jobs(x: torch.Tensor, w: torch.Tensor, pad: int) -> dict:
    jobs = {"torch conv2d (oneDNN)": lambda: F.conv2d(x, w, padding=pad)}
    for algorithm in Algorithm:
        if algorithm in WINOGRAD:
            if w.shape[2] != 3:
                continue
            u = winograd_weight(w, WINOGRAD[algorithm])
            jobs[f"{algorithm.value} (prepared)"] = (
                lambda a=algorithm, u=u: conv2d(x, w, padding=pad, algorithm=a, prepared=u))
        if algorithm is Algorithm.FFT:
            spectra = fft_weight(w, fft_size(tuple(x.shape), tuple(w.shape), (pad, pad)))
            jobs["fft (prepared)"] = lambda s=spectra: conv2d(x, w, padding=pad, algorithm=Algorithm.FFT, prepared=s)
        if algorithm is Algorithm.DIRECT and w.shape[2] > 7:
            continue  # r² GEMMs: 121 small products at 11×11 take seconds and show nothing new
        jobs[algorithm.value] = lambda a=algorithm: conv2d(x, w, padding=pad, algorithm=a)
    return jobs


def part_time(rounds: int) -> dict:
    torch.manual_seed(0)
    target_x, target_w = torch.randn(1, 64, 56, 56), torch.randn(64, 64, 3, 3)
    target = _median_ms(_jobs(target_x, target_w, 1), rounds, 3)
    sweep = []
    for size in (14, 28, 56):
        for kernel in (3, 5, 7, 11):
            x, w = torch.randn(1, 32, size, size), torch.randn(32, 32, kernel, kernel)
            times = _median_ms(_jobs(x, w, kernel // 2), rounds, 2)
            sweep.append({"image": size, "kernel": kernel, "ms": times})
            print(f"image {size}, kernel {kernel}: {times}", flush=True)
    return {"target": {"shape": "1×64×56×56, 64 filters 3×3, padding 1", "ms": target,
                       "winograd_2x2_vs_im2col_prepared": round(target["im2col"] / target["winograd_2x2_3x3 (prepared)"], 2),
                       "winograd_2x2_vs_im2col_unprepared": round(target["im2col"] / target["winograd_2x2_3x3"], 2)},
            "sweep": sweep}


def part_error() -> dict:
    torch.manual_seed(1)
    x, w = torch.randn(1, 64, 56, 56), torch.randn(64, 64, 3, 3) / 24
    reference = F.conv2d(x.double(), w.double(), padding=1)
    scale = float(reference.square().mean().sqrt())
    rows = {}
    results = {"torch conv2d (oneDNN)": F.conv2d(x, w, padding=1)}
    results.update({a.value: conv2d(x, w, padding=1, algorithm=a) for a in Algorithm})
    for name, y in results.items():
        error = (y.double() - reference).abs()
        rows[name] = {"max_relative": float(error.max()) / scale, "rms_relative": float(error.square().mean().sqrt()) / scale}
    return {"shape": "1×64×56×56 ⊛ 64×64×3×3, Gaussian, float32 vs float64", "rows": rows}


def _int8_direct(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 (per-tensor input, per-channel weights), exact integer convolution, dequantized."""
    sx = x.abs().max() / 127
    sw = w.abs().amax(dim=(1, 2, 3), keepdim=True) / 127
    qx, qw = torch.round(x / sx).clamp(-127, 127), torch.round(w / sw).clamp(-127, 127)
    return F.conv2d(qx, qw, padding=1) * sx * sw.view(1, -1, 1, 1)


def _relative_rms(y: torch.Tensor, reference: torch.Tensor, scale: float) -> float:
    return float((y - reference).square().mean().sqrt()) / scale


def part_int8() -> dict:
    rows = []
    for seed in range(3):
        torch.manual_seed(seed)
        x, w = torch.randn(1, 32, 28, 28, dtype=torch.float64), torch.randn(32, 32, 3, 3, dtype=torch.float64)
        reference = F.conv2d(x, w, padding=1)
        scale = float(reference.square().mean().sqrt())
        row = {"seed": seed, "int8 direct": _relative_rms(_int8_direct(x, w), reference, scale)}
        for m in (2, 4):
            y = winograd_conv2d_transformed_int8(x, w, m, padding=1)
            row[f"F({m}x{m},3x3) int8 transformed"] = _relative_rms(y, reference, scale)
        rows.append(row)
    qx = torch.randint(-127, 128, (1, 32, 28, 28)).double()
    qw = torch.randint(-127, 128, (32, 32, 3, 3)).double()
    spatial = {}
    for m in (2, 4):
        acc, widths = winograd_conv2d_codes(qx, qw, m, padding=1)
        spatial[f"F({m}x{m},3x3)"] = {"exact": bool(torch.equal(acc, F.conv2d(qx, qw, padding=1))),
                                     "worst_case_growth": range_growth(m), **widths}
    return {"transformed_rms_relative_error": rows, "spatial": spatial}


def part_strassen(rounds: int) -> dict:
    rows = []
    for size in (128, 256, 512, 1024, 2048):
        a, b = torch.randn(size, size), torch.randn(size, size)
        jobs = {"torch.matmul": lambda a=a, b=b: torch.matmul(a, b)}
        for cutoff in (64, 128, 256):
            if cutoff < size:
                jobs[f"strassen cutoff {cutoff}"] = lambda a=a, b=b, c=cutoff: strassen_matmul(a, b, c)
        times = _median_ms(jobs, rounds if size < 2048 else 2, 1)
        error = float((strassen_matmul(a.double(), b.double(), 64) - a.double() @ b.double()).abs().max())
        rows.append({"size": size, "ms": times, "float64_max_error_cutoff_64": error})
        print(f"strassen {size}: {times}", flush=True)
    return {"rows": rows}


def plot_time(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = result["sweep"]
    sizes = sorted({row["image"] for row in sweep})
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4), sharey=False)
    for ax, size in zip(axes, sizes):
        rows = [r for r in sweep if r["image"] == size]
        names = sorted({n for r in rows for n in r["ms"]})
        for name in names:
            points = [(r["kernel"], r["ms"][name]) for r in rows if name in r["ms"]]
            ax.plot(*zip(*points), marker="o", label=name)
        ax.set_title(f"{size}×{size}, 32→32 channels")
        ax.set_xlabel("kernel size")
        ax.set_ylabel("ms (one thread)")
        ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(result: dict) -> str:
    lines = []
    if "time" in result:
        t = result["time"]["target"]
        lines += [f"**Target case** ({t['shape']}, one thread, median ms):", "", "| algorithm | ms | vs im2col |",
                  "|---|---:|---:|"]
        for name, ms in t["ms"].items():
            lines.append(f"| {name} | {ms:.2f} | {t['ms']['im2col'] / ms:.2f}× |")
        lines += ["", "**Sweep** (32→32 channels, batch 1, median ms):", "",
                  "| image | kernel | " + " | ".join(sorted(result["time"]["sweep"][0]["ms"])) + " |"]
        names = sorted(result["time"]["sweep"][0]["ms"])
        lines.append("|---:|---:|" + "---:|" * len(names))
        for row in result["time"]["sweep"]:
            cells = [f"{row['ms'][n]:.2f}" if n in row["ms"] else "" for n in names]
            lines.append(f"| {row['image']} | {row['kernel']} | " + " | ".join(cells) + " |")
    if "error" in result:
        lines += ["", f"**Float error** ({result['error']['shape']}; relative to the output RMS):", "",
                  "| algorithm | max | RMS |", "|---|---:|---:|"]
        for name, e in result["error"]["rows"].items():
            lines.append(f"| {name} | {e['max_relative']:.2e} | {e['rms_relative']:.2e} |")
    if "int8" in result:
        lines += ["", "**int8** (RMS error relative to the float64 output RMS, 32→32 channels 28×28, 3 seeds):", "",
                  "| seed | " + " | ".join(k for k in result["int8"]["transformed_rms_relative_error"][0] if k != "seed")
                  + " |", "|---:|" + "---:|" * (len(result["int8"]["transformed_rms_relative_error"][0]) - 1)]
        for row in result["int8"]["transformed_rms_relative_error"]:
            lines.append(f"| {row['seed']} | " + " | ".join(f"{v:.4f}" for k, v in row.items() if k != "seed") + " |")
        lines += ["", "| spatial-domain integer Winograd | exact | input transform bits | weight transform bits |"
                  " sum bits | worst-case input growth |", "|---|---|---:|---:|---:|---:|"]
        for name, s in result["int8"]["spatial"].items():
            lines.append(f"| {name} | {s['exact']} | {s['input_transform_bits']} | {s['weight_transform_bits']} | "
                         f"{s['product_sum_bits']} | {s['worst_case_growth']['input']:.0f}× |")
    if "strassen" in result:
        lines += ["", "**Strassen** (square float32 matrices, one thread, median ms):", ""]
        names = sorted({n for r in result["strassen"]["rows"] for n in r["ms"]})
        lines += ["| size | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
        for row in result["strassen"]["rows"]:
            lines.append(f"| {row['size']} | " + " | ".join(f"{row['ms'][n]:.1f}" if n in row["ms"] else ""
                                                            for n in names) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["time", "error", "int8", "strassen", "all"], default="all")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    parts = ["time", "error", "int8", "strassen"] if args.part == "all" else [args.part]
    path = RESULTS / "conv_algorithms.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    for part in parts:
        if part == "time":
            result["time"] = part_time(args.rounds)
            plot_time(result["time"], RESULTS / "conv_algorithms_time.png")
        elif part == "error":
            result["error"] = part_error()
        elif part == "int8":
            result["int8"] = part_int8()
        else:
            result["strassen"] = part_strassen(args.rounds)
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    (RESULTS / "conv_algorithms.md").write_text(table(result))
    print(table(result))


if __name__ == "__main__":
    main()
