"""Gradient compression (issue #11): bytes per step and accuracy of LeNet-5 on Fashion-MNIST under DDP.

Each setting trains LeNet-5 from the same seed with ``examples/ddp_compressed.py`` under ``torchrun`` on this
machine (gloo, one thread per process): global batch 128, SGD momentum 0.9, lr 0.05 with cosine decay, all
60,000 training images, the same number of epochs for every setting. ``none`` is DDP's own fp32 all-reduce,
the baseline. Bytes are what rank 0 handed to collectives per step (payloads, QSGD's lengths, TernGrad's
scalers), against the 4 bytes per gradient value that fp32 all-reduce hands over.

Writes benchmarks/results/gradient_compression.{json,md}. Run:
``.venv/bin/python benchmarks/gradient_compression.py [--processes 2 4] [--epochs 2] [--seeds 0 1]``
(about 40 minutes on 2 cores); ``--only onebit`` re-measures the settings whose label holds the word and keeps the
other rows of the earlier result. ``--codec-time`` instead times onebit's encoder and decoder, plain and rotated,
on one thread (benchmarks/results/gradient_codec_time.{json,md}).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
EXAMPLE = ROOT / "examples" / "ddp_compressed.py"

SETTINGS = {
    "fp32 all-reduce (DDP default)": ("none", []),
    "fp16": ("fp16", []),
    "onebit + error feedback (rotated, default)": ("onebit", []),
    "onebit, rotated, no error feedback": ("onebit", ["error_feedback=false"]),
    "onebit + full error feedback, not rotated": ("onebit", ["rotate=false", "error_feedback=true"]),
    "onebit + damped feedback (β = 0.25), not rotated": ("onebit", ["rotate=false", "error_feedback=0.25"]),
    "onebit, not rotated, no error feedback": ("onebit", ["rotate=false", "error_feedback=false"]),
    "qsgd s=16": ("qsgd", ["levels=16"]),
    "terngrad": ("terngrad", []),
    "terngrad, no clipping": ("terngrad", ["clip=none"]),
    "dorefa 4-bit": ("dorefa", ["bits=4"]),
}
BASELINE = "fp32 all-reduce (DDP default)"
ONEBIT = "onebit + error feedback (rotated, default)"
# the targets: times fewer bytes than fp32 all-reduce
TARGET_RATIO = {ONEBIT: 25, "terngrad": 14, "qsgd s=16": 6}
WITHIN_ONE_POINT = (ONEBIT, "qsgd s=16", "terngrad")


def run_one(scheme: str, options: list[str], processes: int, epochs: int, seed: int) -> dict:
    """One torchrun of the example; returns its result.json with the wall time added."""
    torchrun = Path(sys.executable).with_name("torchrun")
    with tempfile.TemporaryDirectory() as out:
        command = [str(torchrun), "--standalone", f"--nproc_per_node={processes}", str(EXAMPLE), "--scheme", scheme,
                   "--epochs", str(epochs), "--seed", str(seed), "--out", out]
        for option in options:
            command += ["--option", option]
        started = time.perf_counter()
        done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
        result = json.loads((Path(out) / "result.json").read_text())
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    return result


def _steps(result: dict, processes: int) -> int:
    return 60000 // 128 * result["epochs"]


def measure(processes: list[int], epochs: int, seeds: list[int], only: list[str] | None = None,
            previous: dict | None = None) -> dict:
    """Train every setting (or those whose label contains one of ``only``) and tabulate; with ``only``, the other
    rows come from ``previous`` when it has the same epochs and seeds (runs are deterministic per seed)."""
    rows = []
    def chosen(label: str) -> bool:
        return not only or any(word in label for word in only)

    if only and previous is not None and (previous["epochs"], previous["seeds"]) == (epochs, seeds):
        # keep every earlier row except those measured again now
        rows = [r for r in previous["rows"] if r["setting"] in SETTINGS
                and not (r["processes"] in processes and chosen(r["setting"]))]
    # every process count needs its baseline, kept or measured: checked before any run, not after all of them
    missing = [w for w in processes if not chosen(BASELINE)
               and not any(r["processes"] == w and r["setting"] == BASELINE for r in rows)]
    if missing:
        raise SystemExit(f"no {BASELINE!r} row for {missing} processes: add it to --only, or keep an earlier "
                         "result of the same --epochs and --seeds in --out")
    for world in processes:
        for label, (scheme, options) in SETTINGS.items():
            if not chosen(label):
                continue
            runs = [run_one(scheme, options, world, epochs, seed) for seed in seeds]
            accuracy = [r["history"][-1]["accuracy"] for r in runs]
            sent = runs[0]["communication"]
            steps = _steps(runs[0], world)
            bytes_per_step = sent["bytes_sent"] / steps if sent else None
            fp32_per_step = sent["bytes_uncompressed"] / steps if sent else None
            rows.append({"processes": world, "setting": label, "scheme": scheme, "options": options,
                         "accuracy": accuracy, "mean_accuracy": round(statistics.mean(accuracy), 2),
                         "bytes_per_step": bytes_per_step, "fp32_bytes_per_step": fp32_per_step,
                         "payload_bits_per_step": sent["payload_bits"] / steps if sent else None,
                         "wall_seconds": [r["wall_seconds"] for r in runs]})
            print(f"{world} processes, {label}: accuracy {accuracy}, bytes/step {bytes_per_step}", flush=True)
    order = list(SETTINGS)
    rows.sort(key=lambda r: (r["processes"], order.index(r["setting"])))
    for row in rows:
        base = next(r for r in rows if r["processes"] == row["processes"] and r["setting"] == BASELINE)
        fp32 = next((r["fp32_bytes_per_step"] for r in rows if r["fp32_bytes_per_step"]), None)
        row["bytes_per_step"] = row["bytes_per_step"] if row["bytes_per_step"] is not None else fp32
        row["times_fewer_bytes"] = round(fp32 / row["bytes_per_step"], 2)
        row["accuracy_vs_fp32"] = round(row["mean_accuracy"] - base["mean_accuracy"], 2)
    return {"model": "lenet5", "epochs": epochs, "seeds": seeds, "global_batch": 128, "rows": rows}


def table(result: dict) -> str:
    lines = [f"LeNet-5 on Fashion-MNIST, {result['epochs']} epochs, global batch 128, seeds {result['seeds']} "
             "(accuracy: mean over seeds; bytes: rank 0, per step).", "",
             "| processes | setting | bytes / step | × fewer than fp32 | target | test accuracy % | vs fp32 |",
             "|---:|---|---:|---:|---|---:|---:|"]
    for row in result["rows"]:
        target = TARGET_RATIO.get(row["setting"])
        mark = f"≥ {target}× {'✔' if row['times_fewer_bytes'] >= target else '✘'}" if target else ""
        delta = row["accuracy_vs_fp32"]
        if row["setting"] in WITHIN_ONE_POINT:
            delta = f"{delta:+.2f} {'✔' if delta >= -1.0 else '✘'}"
        elif row["setting"] != BASELINE:
            delta = f"{delta:+.2f}"
        else:
            delta = ""
        lines.append(f"| {row['processes']} | {row['setting']} | {row['bytes_per_step']:,.0f} | "
                     f"{row['times_fewer_bytes']:.1f}× | {mark} | {row['mean_accuracy']:.2f} | {delta} |")
    return "\n".join(lines) + "\n"


def codec_time(repeats: int = 7) -> dict:
    """Median seconds of onebit's encode (with the sender's own decode, as the hook needs it) and of one decode,
    plain and rotated, on LeNet-5's bucket and on one 4M-value bucket; one thread."""
    import torch

    from lowbit.comm.schemes import make_scheme
    from lowbit.zoo.models import build

    torch.set_num_threads(1)
    lenet = [p.numel() for p in build("lenet5").parameters()]
    rows = []
    for label, segments in [("LeNet-5 (61,706 values, 10 parameters)", lenet), ("4,194,304 values", [2**22])]:
        x = torch.randn(sum(segments), generator=torch.Generator().manual_seed(0))
        for rotate in (False, True):
            scheme = make_scheme("onebit", rotate=rotate)
            encode, decode = [], []
            for key in range(repeats):
                started = time.perf_counter()
                payload, _, _ = scheme.encode(x, None, None, segments, key)
                encode.append(time.perf_counter() - started)
                started = time.perf_counter()
                scheme.decode(payload, x.numel(), None, segments, key)
                decode.append(time.perf_counter() - started)
            rows.append({"bucket": label, "rotate": rotate, "values": x.numel(),
                         "encode_seconds": statistics.median(encode), "decode_seconds": statistics.median(decode)})
    return {"threads": 1, "repeats": repeats, "rows": rows}


def codec_table(result: dict) -> str:
    lines = [f"onebit's codec on one thread, median of {result['repeats']} (encode includes the sender's own "
             "decode, which the hook keeps for error feedback).", "",
             "| bucket | code | encode ms | decode ms | encode ns/value | decode ns/value |",
             "|---|---|---:|---:|---:|---:|"]
    for row in result["rows"]:
        code = "rotated (default)" if row["rotate"] else "plain (rotate=False)"
        e, d, n = row["encode_seconds"], row["decode_seconds"], row["values"]
        lines.append(f"| {row['bucket']} | {code} | {e * 1e3:.1f} | {d * 1e3:.1f} | {e / n * 1e9:.0f} | "
                     f"{d / n * 1e9:.0f} |")
    return "\n".join(lines) + "\n"


def write_results(out: Path, result: dict, markdown: str) -> None:
    """``out``.json and ``out``.md (the table, also printed)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown)
    print(markdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=RESULTS / "gradient_compression")
    parser.add_argument("--only", nargs="+", help="re-measure only the settings whose label contains one of these "
                        "words; the other rows are kept from --out's earlier JSON")
    parser.add_argument("--codec-time", action="store_true", help="time onebit's codec instead of training")
    args = parser.parse_args()
    if args.codec_time:
        timed = codec_time()
        write_results(RESULTS / "gradient_codec_time", timed, codec_table(timed))
        return
    earlier = args.out.with_suffix(".json")
    previous = json.loads(earlier.read_text()) if args.only and earlier.exists() else None
    result = measure(args.processes, args.epochs, args.seeds, args.only, previous)
    write_results(args.out, result, table(result))


if __name__ == "__main__":
    main()
