"""Integer engine speed against fp32 PyTorch on every zoo CNN and a ResNet at a realistic size.

Candidates, each timed in its own process (``lowbit.export.bench``), interleaved, median of ROUNDS processes:

- ``torch-fp32``: the fp32 model as a user holds it (eager, BatchNorm unfolded, NCHW images);
- ``torch-best``: PyTorch's fastest fp32 path here — BatchNorm folded and channels-last images for oneDNN;
- ``engine``: ``lowbit.engine.lower`` of the W8A8 model (``FLOAT`` requantization), saved and loaded back, run by
  its fast runner — the same integers as the float64 reference kernels (tests/engine).

The issue's target: the engine is not slower than the fp32 PyTorch model. Ratios > 1 mean the engine is faster.
Writes benchmarks/results/engine_speed.{json,md}. Run: ``.venv/bin/python benchmarks/engine_speed.py`` (~15 min).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path


sys.path.insert(0, str(Path(__file__).parent))

RESULTS = Path(__file__).parent / "results"
ZOO = ("mlp", "lenet5", "resnet20", "mobilenetv2")
BATCHES, THREADS, ROUNDS = (1, 8, 32), (1, 2), 3


def program_for(name: str, folder: Path) -> tuple[str, tuple[int, ...]]:
    """Save the engine program of ``name``'s W8A8 model under ``folder``; return (fp32 source, input shape)."""
    import lowbit
    from lowbit.engine import lower

    if name in ZOO:
        from lowbit.jobs import calibration_batches
        from lowbit.zoo import load

        model, shape, batches, source = load(name).model, (1, 28, 28), calibration_batches(512), f"zoo:{name}"
    else:
        from onnx_speed import build, calibration

        (model, shape), source = build(name), f"{Path(__file__).parent.resolve() / 'onnx_speed.py'}:ResNet56x56"
        batches = calibration(name, shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = lowbit.quantize(model, "w8a8", calibration=batches, progress=False)
    program = lower(qmodel, batches[0][:1])
    assert program.fast_runner[0] is not None, program.fast_runner[1]
    program.save(folder / name)
    return source, shape


def main() -> None:
    from lowbit.export.bench import Candidate, time_candidates

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(ZOO) + ",resnet56x56")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)), help="batch sizes, comma-separated")
    args = parser.parse_args()
    batches = tuple(int(b) for b in args.batches.split(","))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            source, shape = program_for(name, Path(tmp))
            candidates = {"torch-fp32": Candidate("torch", source), "torch-best": Candidate("torch-best", source),
                          "engine": Candidate("engine", str(Path(tmp) / name))}
            for batch in batches if name in ZOO else [b for b in batches if b <= 8]:
                for threads in THREADS:
                    cell = {"model": name, "batch": batch, "threads": threads,
                            **time_candidates(candidates, shape, batch, threads, rounds=args.rounds)}
                    cell["engine_vs_fp32"] = round(cell["torch-fp32"] / cell["engine"], 2)
                    cell["engine_vs_best"] = round(cell["torch-best"] / cell["engine"], 2)
                    rows.append(cell)
                    print(json.dumps(cell), file=sys.stderr)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "engine_speed.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["| model | batch | threads | fp32 PyTorch ms | fp32 PyTorch, folded + channels-last ms | engine ms | "
             "engine speed-up vs fp32 | vs folded + channels-last |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['batch']} | {r['threads']} | {r['torch-fp32']:.3f} | {r['torch-best']:.3f} | "
              f"{r['engine']:.3f} | {r['engine_vs_fp32']:.2f}× | {r['engine_vs_best']:.2f}× |" for r in rows]
    (RESULTS / "engine_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
