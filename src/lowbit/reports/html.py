"""A self-contained HTML report of a quantization result, and the same content as JSON (issue #13).

``write_report(folder)`` reads what ``lowbit quantize --out folder`` saved beside the model:

- ``result.json``: the job's result (fp32 against quantized accuracy, bytes, latency, and the backend that measured
  them);
- ``layers.json``: per-layer facts from :func:`lowbit.reports.layers.layer_report`.

It writes ``report.json`` and ``report.html``. The HTML embeds its plots as base64 PNG and carries its own CSS:
no script, no network, one file to mail around. Sections (element ids): ``summary``, ``layers``, ``errors`` (each source of error alone), ``histograms``,
and, when the job ran them, ``mixed`` (bits chosen per layer) and ``compression`` (bytes per stage).

Example:
    >>> import json, tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> result = {"model": "zoo:demo", "recipe": "w8a8", "fp32": {"accuracy": 90.0, "bytes": 4000, "latency_ms": 1.0,
    ...           "backend": "pytorch-fp32"}, "quantized": {"accuracy": 89.5, "bytes": 1000, "latency_ms": 1.2,
    ...           "backend": "simulation"}}
    >>> _ = (folder / "result.json").write_text(json.dumps(result))
    >>> paths = write_report(folder)
    >>> sorted(p.name for p in paths.values()), 'id="summary"' in paths["html"].read_text()
    (['report.html', 'report.json'], True)
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

__all__ = ["write_report", "build_report", "render_html"]

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:70em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.note{color:#666;font-size:.9em}.fig{display:inline-block;margin:.5em}
"""


def build_report(result: dict[str, Any], layers: dict[str, Any] | None) -> dict[str, Any]:
    """The report's content as JSON-ready data: summary, per-layer rows (histograms kept), mixed, compression."""
    metric = "accuracy" if "accuracy" in result.get("fp32", {}) else "cosine"
    sides = {side: result[side] for side in ("fp32", "quantized", "compressed") if side in result}
    recipe = result.get("recipe")
    if recipe is None and "sizes" in result:
        recipe = f"deep compression ({result.get('sparsity', 0):.0%} sparse, {result.get('bits')}-bit shared weights)"
    summary = {"model": result.get("model"), "recipe": recipe, "observer": result.get("observer"),
               "calibration": result.get("calibration"), "transforms": result.get("transforms", []),
               "metric": metric, "sides": sides}
    report: dict[str, Any] = {"summary": summary, "layers": (layers or {}).get("layers", []),
                              "weight_observer": (layers or {}).get("weight_observer")}
    for key in ("sensitivity", "pareto"):
        if layers is not None and key in layers:
            report[key] = layers[key]
    if layers is not None and "error_sources" in layers:
        report["error_sources"] = layers["error_sources"]
    if layers is not None and "error" in layers:
        report["layers_error"] = layers["error"]
    if "mixed" in result:
        report["mixed"] = result["mixed"]
    if "sizes" in result:
        report["compression"] = result["sizes"]
    return report


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_cell(v) for v in value) + "]"
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _pyplot():
    """matplotlib's pyplot on the ``Agg`` backend (no display), imported when a plot is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    """``fig`` as base64 PNG for an ``<img src="data:…">``; the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    _pyplot().close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _histogram_png(row: dict[str, Any]) -> str:
    """Weights and input activations of one layer, clip range marked: a base64 PNG."""
    plt = _pyplot()
    panels = [("weights (float)", row.get("weight_histogram")), ("input activations", row.get("activation_histogram"))]
    fig, axes = plt.subplots(1, 2, figsize=(8, 2.4))
    for ax, (title, hist) in zip(axes, panels):
        ax.set_title(f"{row['name']}: {title}", fontsize=9)
        if not hist:
            ax.text(0.5, 0.5, "not quantized", ha="center", va="center", transform=ax.transAxes)
            continue
        edges, counts = hist["edges"], hist["counts"]
        ax.bar(edges[:-1], counts, width=[b - a for a, b in zip(edges[:-1], edges[1:])], align="edge", color="#4a7ebb")
        ax.set_yscale("log")
        if hist.get("clip"):
            for x in hist["clip"]:
                ax.axvline(x, color="#d62728", linestyle="--", linewidth=1)
    fig.tight_layout()
    return _png(fig)


def _sensitivity_png(table: dict[str, Any], chosen: dict[str, int]) -> str:
    """Each layer's loss per candidate bit width (log scale), the chosen width circled: a base64 PNG."""
    plt = _pyplot()
    loss = table["loss"]
    layers = list(loss)
    widths = sorted({int(b) for per in loss.values() for b in per})
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(layers)), 3.2))
    for bits in widths:
        ax.plot(range(len(layers)), [loss[n].get(str(bits), loss[n].get(bits)) for n in layers], marker=".",
                label=f"{bits} bits")
    picked = [(i, loss[n].get(str(chosen[n]), loss[n].get(chosen[n]))) for i, n in enumerate(layers) if n in chosen]
    if picked:
        ax.scatter(*zip(*picked), s=80, facecolors="none", edgecolors="black", label="chosen")
    ax.set_yscale("symlog", linthresh=1e-6)
    ax.set_xticks(range(len(layers)), layers, rotation=90, fontsize=6)
    ax.set_ylabel(f"loss ({table.get('measure')})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _pareto_png(pareto: dict[str, Any]) -> str:
    """The budget's cost (model bytes, or BOPs for a BOPs budget) against predicted loss: the frontier of optimal
    allocations, every layer at one width, and the chosen allocation: a base64 PNG."""
    plt = _pyplot()
    # the sweep is optimal in the budget's own cost; drawn against bytes, a BOPs frontier would zigzag
    x, label = ("cost", "BOPs per sample") if pareto.get("unit") == "bops" else ("bytes", "model bytes")
    fig, ax = plt.subplots(figsize=(6, 3.4))
    sweep = pareto["sweep"]
    ax.plot([p[x] for p in sweep], [p["loss"] for p in sweep], marker=".", drawstyle="steps-post",
            label="optimal under each budget")
    for p in pareto["uniform"]:
        ax.scatter([p[x]], [p["loss"]], marker="s", color="#999999")
        ax.annotate(f"all {p.get('width')}-bit", (p[x], p["loss"]), fontsize=7, xytext=(4, 4),
                    textcoords="offset points")
    chosen = pareto["chosen"]
    ax.scatter([chosen[x]], [chosen["loss"]], s=90, facecolors="none", edgecolors="#d62728", linewidths=2,
               label="chosen", zorder=3)
    ax.set_yscale("symlog", linthresh=1e-6)
    ax.set_xlabel(label)
    ax.set_ylabel(f"predicted loss ({pareto.get('measure')})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def render_html(report: dict[str, Any]) -> str:
    """The report as one HTML page (plots inlined)."""
    s = report["summary"]
    metric = s["metric"]
    parts = [f"<h1>lowbit report: {html.escape(str(s['model']))}, {html.escape(str(s['recipe']))}</h1>",
             '<h2 id="summary">Summary</h2>',
             _table(["", metric, "bytes", "latency ms", "measured by"],
                    [[side, v.get(metric), v.get("bytes"), v.get("latency_ms"), v.get("backend")]
                     for side, v in s["sides"].items()]),
             f"<p class='note'>observer: {_cell(s['observer'])}; calibration: {_cell(s['calibration'])}; "
             f"transforms: {_cell(s['transforms'] or None)}. \"simulation\" means fake quantization in float: an "
             "accuracy result, not a speed one.</p>"]
    rows = report["layers"]
    parts.append('<h2 id="layers">Layers</h2>')
    if rows:
        parts.append(_table(
            ["layer", "kind", "shape", "weight bits", "granularity", "weight SQNR dB", "activation observer",
             "observed range", "clip range", "output SQNR dB"],
            [[r["name"], r["kind"], "×".join(map(str, r["shape"])), r["weight_bits"], r["granularity"], r["weight_sqnr_db"],
              r["activation_observer"], r["observed_range"], r["clip_range"], r["output_sqnr_db"]] for r in rows]))
        parts.append(f"<p class='note'>weight observer: {_cell(report.get('weight_observer'))}. Output SQNR: each "
                     "layer's output in the quantized model against the same layer in the BN-folded float model, "
                     "on the calibration batches (errors of earlier layers included).</p>")
    else:
        parts.append(f"<p class='note'>no per-layer data ({_cell(report.get('layers_error', 'layers.json missing'))})"
                     "</p>")
    if report.get("error_sources"):
        rows_e = report["error_sources"]
        parts += ['<h2 id="errors">Error sources</h2>',
                  _table(["source (alone)", "output SQNR dB"], [[r["source"], r["sqnr_db"]] for r in rows_e]),
                  "<p class='note'>each source of error switched on alone, everything else float; the model output "
                  "against the float model's. Lower SQNR: more error. ∞: that source costs nothing.</p>"]
    parts.append('<h2 id="histograms">Histograms</h2><p class="note">log counts; dashed red: the range the grid '
                 "covers (the observer's clip for activations)</p>")
    parts += [f"<div class='fig'><img alt='{html.escape(r['name'])}' src='data:image/png;base64,"
              f"{_histogram_png(r)}'></div>" for r in rows]
    if "mixed" in report:
        bits = report["mixed"].get("bits", {})
        parts += ['<h2 id="mixed">Mixed precision</h2>',
                  _table(["layer", "weight bits"], [[name, b] for name, b in bits.items()])]
        if report.get("sensitivity"):
            parts.append(f"<div class='fig' id='sensitivity'><img alt='sensitivity' src='data:image/png;base64,"
                         f"{_sensitivity_png(report['sensitivity'], bits)}'></div>")
        if report.get("pareto"):
            parts.append(f"<div class='fig' id='pareto'><img alt='pareto' src='data:image/png;base64,"
                         f"{_pareto_png(report['pareto'])}'></div><p class='note'>Pareto: each point of the line is "
                         "the allocation with the least predicted loss for its budget (the sum of the layers' "
                         "sensitivities the allocator minimises, not a measured accuracy); grey squares put every "
                         "layer at one width (where the recipe lets it); the circle is the allocation this job chose and measured.</p>")
    if "compression" in report:
        parts += ['<h2 id="compression">Compression stages</h2>',
                  _table(["stage", "bytes", "ratio"], [[r.get("stage"), r.get("bytes"), r.get("ratio")]
                                                       for r in report["compression"]])]
    body = "\n".join(parts)
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>lowbit report</title>"
            f"<style>{_CSS}</style></head><body>{body}</body></html>")


def write_report(folder: str | Path) -> dict[str, Path]:
    """Write ``report.json`` and ``report.html`` into ``folder`` from its ``result.json`` (and ``layers.json``).

    Raises:
        FileNotFoundError: no ``result.json`` in ``folder`` (it is what ``lowbit quantize --out`` writes).
    """
    folder = Path(folder)
    result_path = folder / "result.json"
    if not result_path.is_file():
        raise FileNotFoundError(f"{result_path} not found: run `lowbit quantize --out {folder}` first")
    result = json.loads(result_path.read_text())
    layers_path = folder / "layers.json"
    layers = json.loads(layers_path.read_text()) if layers_path.is_file() else None
    report = build_report(result, layers)
    paths = {"json": folder / "report.json", "html": folder / "report.html"}
    paths["json"].write_text(json.dumps(report, indent=1))
    paths["html"].write_text(render_html(report))
    return paths
