"""SmoothQuant on MiniLM (all-MiniLM-L6-v2): static W8A8, cosine of the sentence embeddings to fp32.

Recipe ``w8a8``: weights int8 per output channel, every Linear input int8 per-tensor asymmetric with min/max
ranges calibrated on 256 standard-library sentences (MiniLM cannot be traced, so each Linear quantizes its own
input). SmoothQuant runs on the same sentences, on the Linear layers that read a LayerNorm output (query, key,
value, first feed-forward layer). Scored on the Lee corpus documents plus 256 held-out sentences: mean cosine to
the fp32 embeddings and Spearman correlation of the Lee document similarities with human judgements.

Ablations show where the remaining error sits: the second feed-forward layer (its input is a GELU output) kept in
float, and SmoothQuant applied to that layer too.

Writes benchmarks/results/smoothquant.{json,md}. Run: ``HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/smoothquant.py``
(~20 minutes on 2 cores).
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lowbit  # noqa: E402
from lowbit.jobs import evaluation_for, load_model  # noqa: E402
from lowbit.recipes import Override, Transforms, preset  # noqa: E402
from lowbit.transforms.smooth_quant import smooth_quant  # noqa: E402

RESULTS = Path(__file__).parent / "results"
CALIBRATION, ALPHAS = 256, (0.5, 0.65, 0.8)
FFN_DOWN = Override(include=("*output.dense",), exclude=("*attention*",), skip=True)


def main() -> None:
    model = load_model("zoo:minilm")
    evaluation = evaluation_for("zoo:minilm", model)
    batches = evaluation.calibration(CALIBRATION)
    base = preset("w8a8")

    def score(label: str, float_model, recipe) -> dict:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = lowbit.quantize(float_model, recipe, calibration=batches, progress=False)
        measured = evaluation.measure(q, 0, "simulation")
        row = {"setting": label, "cosine": measured["cosine"], "spearman": measured["spearman"],
               "transforms": list(q.quantization_summary.transforms)}
        print(json.dumps(row), flush=True)
        return row

    fp32 = evaluation.measure(model, 0, "pytorch-fp32")
    rows = [{"setting": "fp32", "cosine": fp32["cosine"], "spearman": fp32["spearman"], "transforms": []},
            score("w8a8", model, base)]
    for alpha in ALPHAS:
        rows.append(score(f"w8a8 + smoothquant {alpha}", model,
                          dataclasses.replace(base, transforms=Transforms(smoothquant=alpha))))
    best = max(rows[2:], key=lambda r: r["cosine"])
    alpha = float(best["setting"].rsplit(" ", 1)[1])
    rows.append(score("w8a8, second feed-forward layer float (ablation)", model,
                      dataclasses.replace(base, overrides=(FFN_DOWN,))))
    rows.append(score(f"w8a8 + smoothquant {alpha}, second feed-forward layer float (ablation)", model,
                      dataclasses.replace(base, overrides=(FFN_DOWN,), transforms=Transforms(smoothquant=alpha))))
    both, _ = smooth_quant(model, batches, alpha, include=("*query", "*key", "*value", "*intermediate.dense",
                                                            "*output.dense"), exclude=("*attention.output.dense",))
    rows.append(score(f"w8a8 + smoothquant {alpha} also on the second feed-forward layer", both, base))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "smoothquant.json").write_text(json.dumps({"calibration": CALIBRATION, "rows": rows}, indent=1) + "\n")
    lines = ["| MiniLM, static | mean cosine to fp32 | Spearman (Lee) |", "|---|---:|---:|"]
    lines += [f"| {r['setting']} | {r['cosine']:.5f} | {r['spearman']:.4f} |" for r in rows]
    (RESULTS / "smoothquant.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
