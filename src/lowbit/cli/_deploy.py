"""The commands that run a quantized model for real: ``export`` (QDQ ONNX for ONNX Runtime), ``lower`` (an integer
engine program) and ``bench`` (their speed against fp32)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from lowbit.cli._app import _CALIB_HELP, _JSON_HELP, _MODEL_HELP, _WEIGHTS_HELP, app
from lowbit.cli._support import (
    _check_file,
    _check_recipe,
    _check_runs,
    _check_source,
    _fail,
    _input_shape,
    _is_bad_input,
    _positive_list,
    _run_job,
)


@app.command("export")
def export(
    model: str = typer.Option(..., help="a folder written by `lowbit quantize` (static or weight-only, 8-bit)"),
    out: Path = typer.Option(Path("model.onnx"), help="the ONNX file to write"),
    input_shape: str = typer.Option("1,1,28,28", help="example input shape, comma-separated (batch stays dynamic)"),
    as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """Export a saved quantized model to ONNX (QDQ), which ONNX Runtime runs with integer kernels.

    \b
    Examples:
      lowbit quantize --model zoo:lenet5 --out q
      lowbit export --model q --out q.onnx --json
      lowbit export --model q --out q.onnx --input-shape 1,1,28,28
    """
    from lowbit.export import export_onnx
    from lowbit.serialize import load_quantized

    shape = _input_shape(input_shape)
    net = _run_job(lambda: load_quantized(model), option=("--model", model))

    def job() -> Path:
        import torch

        try:
            return export_onnx(net, torch.zeros(shape), out)
        except Exception as error:
            if not _is_bad_input(error):
                _check_runs(net, shape, input_shape)  # exits 2 when the shape was the problem
            raise

    path = _run_job(job, option=("--model", model), status=f"exporting {model}")
    result = {"model": model, "path": str(path), "bytes": path.stat().st_size}
    typer.echo(json.dumps(result) if as_json else f"wrote {path} ({result['bytes']:,} bytes)")


@app.command("lower")
def lower_command(
    model: str = typer.Option(..., help="a folder written by `lowbit quantize` (a static integer recipe)"),
    out: Path = typer.Option(Path("program"), help="the folder to write the engine program to"),
    input_shape: str = typer.Option("1,1,28,28", help="example input shape, comma-separated"),
    mode: str = typer.Option("float", help="requantization: float (ONNX Runtime's rule) or fixed_point (gemmlowp)"),
    conv_algorithm: str = typer.Option(None, "--conv-algorithm", help="compute every conv layer it can run by "
                                       "winograd_2x2_3x3, winograd_4x4_3x3, fft, direct or im2col (same integers)"),
    as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """Lower a saved quantized model to an integer-only engine program (bit-exact integer kernels) and save it.

    \b
    Examples:
      lowbit quantize --model zoo:resnet20 --out q
      lowbit lower --model q --out q/program --json
      lowbit lower --model q --out q/program --mode fixed_point \\
          --conv-algorithm winograd_2x2_3x3
    """
    from lowbit.engine import Requant, lower
    from lowbit.kernels.conv import Algorithm
    from lowbit.serialize import load_quantized

    shape = _input_shape(input_shape)
    if mode not in {m.value for m in Requant}:
        _fail(f"--mode must be one of {', '.join(m.value for m in Requant)}, got {mode!r}")
    algorithms = ["default", *(a.value for a in Algorithm)]
    if conv_algorithm is not None and conv_algorithm not in algorithms:
        _fail(f"--conv-algorithm {conv_algorithm!r} is not one of {', '.join(algorithms)}")
    net = _run_job(lambda: load_quantized(model), option=("--model", model))

    def job() -> dict[str, Any]:
        import torch

        _check_runs(net, shape, input_shape)  # first: lowering on a wrong shape fails deep in torch.fx, noisily
        program = lower(net, torch.zeros(shape), mode=Requant(mode))
        switched = program.set_conv_algorithm(conv_algorithm) if conv_algorithm else []
        path = program.save(out)
        _, slow_reason = program.fast_runner
        return {"model": model, "path": str(path), "ops": len(program.ops), "mode": mode,
                "fast_runner": slow_reason is None, "why_reference": slow_reason, "conv_algorithm": conv_algorithm,
                "conv_layers_switched": switched}

    result = _run_job(job, option=("--model", model), status=f"lowering {model}")
    typer.echo(json.dumps(result) if as_json else f"wrote {result['path']}: {result['ops']} ops"
               + ("" if result["fast_runner"] else f" (reference kernels: {result['why_reference']})"))


@app.command()
def bench(
    model: str = typer.Option(..., help=_MODEL_HELP),
    recipe: str = typer.Option("w8a8", help="a static or weight-only 8-bit preset, or a recipe file"),
    weights: Path = typer.Option(None, help=_WEIGHTS_HELP),
    calib: int = typer.Option(256, min=1, help=_CALIB_HELP),
    batch: str = typer.Option("1,8", help="batch sizes to time, comma-separated"),
    threads: str = typer.Option("1,2", help="thread counts, comma-separated"),
    rounds: int = typer.Option(3, min=1, help="fresh processes per measurement (the median is kept)"),
    as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """Time fp32 PyTorch, fp32 ONNX Runtime and the int8 model in ONNX Runtime and lowbit's engine.

    Each measurement runs in its own process; the engine is timed for static recipes. A spinner shows on stderr.

    \b
    Examples:
      lowbit bench --model zoo:resnet20 --recipe w8a8 --json
      lowbit bench --model zoo:lenet5 --batch 1,32 --threads 1 --rounds 5
    """
    from lowbit.jobs import run_bench

    _check_source(model)
    _check_file("--weights", weights)
    _check_recipe(recipe)
    batches = _positive_list(batch, "--batch", "1,8")
    counts = _positive_list(threads, "--threads", "1,2")
    result = _run_job(lambda: run_bench(model, recipe, calib=calib, weights=weights, batches=batches,
                                        threads=counts, rounds=rounds),
                      warn=False, status=f"timing {model} ({len(batches) * len(counts)} cells × {rounds} rounds)")
    if as_json:
        typer.echo(json.dumps(result))
        return
    table = Table(title=f"{model} ({result['recipe']}): median ms, each in its own process")
    engine = result["engine"] is None
    columns = ["batch", "threads", "pytorch fp32", "onnxruntime fp32", "onnxruntime int8"]
    for column in columns + ["lowbit engine int8"] * engine + ["ORT int8 vs best fp32"]:
        table.add_column(column, justify="right")
    for c in result["cells"]:
        table.add_row(str(c["batch"]), str(c["threads"]), f"{c['pytorch-fp32']:.2f}", f"{c['onnxruntime-fp32']:.2f}",
                      f"{c['onnxruntime-int8']:.2f}", *([f"{c['engine-int8']:.2f}"] * engine),
                      f"{c['speedup_vs_best_fp32']:.2f}×")
    Console().print(table)
    if not engine:
        Console().print(f"engine not timed: {result['engine']}", markup=False)
    sizes = result["bytes"]
    Console().print(f"ONNX bytes: fp32 {sizes['onnxruntime-fp32']:,}, int8 {sizes['onnxruntime-int8']:,} "
                    f"({sizes['onnxruntime-fp32'] / sizes['onnxruntime-int8']:.1f}× smaller)", markup=False)
