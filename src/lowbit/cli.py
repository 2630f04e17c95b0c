"""The ``lowbit`` command: parse arguments, call the library, print or write results — no math here.

Example:
    >>> from typer.testing import CliRunner
    >>> result = CliRunner().invoke(app, ["--help"])
    >>> result.exit_code, "demo" in result.output
    (0, True)
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict

import typer
from rich.console import Console
from rich.table import Table

from lowbit.analysis import weight_sqnr_table
from lowbit.spec import PerChannel, PerGroup, PerTensor

app = typer.Typer(help="lowbit: quantize and compress PyTorch models, and show what it cost.", no_args_is_help=True)


@app.callback()
def _main() -> None:
    """lowbit command line."""


def _parse_bits(text: str) -> list[int]:
    try:
        bits = [int(b) for b in text.split(",") if b.strip()]
    except ValueError as err:
        raise typer.BadParameter(f"--bits must be comma-separated integers, got {text!r}") from err
    bad = [b for b in bits if not 2 <= b <= 16]
    if not bits or bad:
        raise typer.BadParameter(f"--bits must list widths in 2..16, got {text!r}")
    return bits


@app.command()
def demo(
    bits: str = typer.Option("8,4,2", help="Bit widths to try, comma-separated."),
    group_size: int = typer.Option(128, min=1, help="Elements per group for per-group quantization."),
    per_layer: bool = typer.Option(False, "--per-layer", help="Print every layer, not only the summary."),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON instead of tables."),
) -> None:
    """Quantize the real MiniLM model's Linear weights at several widths and granularities; print SQNR.

    The primitives on real data: symmetric signed grid, min/max range, fake-quantized in float (simulation).
    """
    from lowbit.zoo import MiniLMNotInstalled, minilm_linear_weights

    try:
        weights = minilm_linear_weights()
    except MiniLMNotInstalled as err:
        typer.echo(f"lowbit demo: {err}", err=True)
        raise typer.Exit(2) from err
    widths = _parse_bits(bits)
    rows = weight_sqnr_table(weights, widths, (PerTensor(), PerChannel(0), PerGroup(0, group_size)))
    if as_json:
        typer.echo(json.dumps([r.__dict__ for r in rows], indent=1, default=list))
        return
    console = Console()
    granularities = list(dict.fromkeys(r.granularity for r in rows))
    by_key: dict[tuple[int, str], list[float]] = defaultdict(list)
    for r in rows:
        by_key[(r.bits, r.granularity)].append(r.sqnr_db)
    console.print(f"MiniLM-L6: SQNR (dB) of its {len(weights)} Linear weights — mean [worst layer]", markup=False)
    table = Table()
    table.add_column("bits", justify="right")
    for g in granularities:
        table.add_column(g, justify="right")
    for b in widths:
        cells = []
        for g in granularities:
            values = by_key.get((b, g), [])
            cells.append(f"{statistics.fmean(values):.1f} [{min(values):.1f}]" if values else "—")
        table.add_row(str(b), *cells)
    console.print(table)
    console.print("symmetric signed grid, min/max range; simulation (fake quantization in float)")
    if per_layer:
        detail = Table(title="per layer (dB)")
        detail.add_column("layer")
        detail.add_column("shape")
        for b in widths:
            for g in granularities:
                detail.add_column(f"{b}b {g}", justify="right")
        per_name: dict[str, dict[tuple[int, str], float]] = defaultdict(dict)
        for r in rows:
            per_name[r.name][(r.bits, r.granularity)] = r.sqnr_db
        for name, cells in per_name.items():
            shape = "×".join(map(str, weights[name].shape))
            values = [cells.get((b, g), math.nan) for b in widths for g in granularities]
            detail.add_row(name, shape, *(f"{v:.1f}" for v in values))
        console.print(detail)


if __name__ == "__main__":  # pragma: no cover
    app()
