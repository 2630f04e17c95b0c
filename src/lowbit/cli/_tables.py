"""The table that ``lowbit demo`` prints and writes: fp32 once per model, then each method."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _score(side: dict[str, Any]) -> str:
    """The quality figure of one side: accuracy for classifiers; Spearman and cosine for text models."""
    if "accuracy" in side:
        return f"{side['accuracy']:.2f}%"
    return f"ρ {side['spearman']:.4f}, cos {side['cosine']:.4f}"


def _delta(fp32: dict[str, Any], q: dict[str, Any]) -> str:
    key = "accuracy" if "accuracy" in q else "spearman"
    return f"{q[key] - fp32[key]:+.2f}" if key == "accuracy" else f"{q[key] - fp32[key]:+.4f}"


def _rows(results: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """model, method, score, Δ, bytes, × smaller, latency, backend — fp32 once per model, then each method."""
    rows, seen = [], set()
    for r in results:
        fp32, q = r["fp32"], r["quantized"]
        if r["model"] not in seen:
            seen.add(r["model"])
            rows.append((r["model"], "fp32", _score(fp32), "", f"{fp32['bytes']:,}", "1.0",
                         f"{fp32['latency_ms']:.2f}", fp32["backend"]))
        rows.append(("", _method(r), _score(q), _delta(fp32, q), f"{q['bytes']:,}",
                     f"{fp32['bytes'] / q['bytes']:.1f}", f"{q['latency_ms']:.2f}", q["backend"]))
    return rows


_COLUMNS = ("model", "method", "score", "Δ", "bytes", "× smaller", "latency ms", "backend")
_NOTE = ("score: test accuracy; for text models ρ = Spearman with human similarities and cos = mean cosine to "
         "fp32 embeddings. Latency: median of one batch of 32; 'simulation' runs fake quantization in float and is "
         "not a speed result (`lowbit export` and `lowbit lower` run the integers).")


def _print_results(results: list[dict[str, Any]]) -> None:
    table = Table(title=None)
    for column in _COLUMNS:
        table.add_column(column, justify="left" if column in ("model", "method", "backend") else "right")
    for row in _rows(results):
        table.add_row(*row)
    wide = Console(width=max(Console().width, 112))
    wide.print(table)
    wide.print(_NOTE, markup=False)


def _method(result: dict[str, Any]) -> str:
    return result["recipe"] + (f" ({result['observer']})" if result["observer"] else "")


def _markdown(results: list[dict[str, Any]]) -> str:
    lines = ["# lowbit demo: post-training quantization", "", "| " + " | ".join(_COLUMNS) + " |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(results)]
    return "\n".join(lines + ["", _NOTE]) + "\n"
