"""The ``lowbit`` command: parse arguments, call the library, print or write results — no math here.

Results go to stdout (one JSON object with ``--json``); progress and logs go to stderr.

Example:
    >>> from typer.testing import CliRunner
    >>> result = CliRunner().invoke(app, ["list"])
    >>> result.exit_code, "w8a8" in result.output, "zoo:resnet20" in result.output
    (0, True, True)
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="lowbit: quantize and compress PyTorch models, and show what it cost.", no_args_is_help=True)
err = Console(stderr=True)


@app.callback()
def _main() -> None:
    """lowbit command line."""


def _fail(message: str) -> None:
    err.print(f"[red]lowbit:[/red] {message}", markup=True, highlight=False)
    raise typer.Exit(2)


@app.command("list")
def list_things() -> None:
    """List zoo models, recipe presets and observers."""
    from lowbit.recipes import PRESETS, ObserverKind
    from lowbit.zoo import available

    typer.echo("models:    " + ", ".join(f"zoo:{n}" for n in available()))
    typer.echo("recipes:   " + ", ".join(PRESETS))
    typer.echo("observers: " + ", ".join(k.value for k in ObserverKind))


@app.command()
def quantize(
    model: str = typer.Option(..., help="zoo:NAME or path/to/file.py:factory"),
    recipe: str = typer.Option("w8a8", help="a preset name or a .yaml/.json recipe file"),
    observer: str = typer.Option(None, help="activation observer, replacing the recipe's"),
    calib: int = typer.Option(512, min=1, help="calibration samples (Fashion-MNIST train, seeded subset)"),
    out: Path = typer.Option(Path("lowbit-out"), help="folder for the quantized model"),
    weights: Path = typer.Option(None, help="weights for a file model (.safetensors, or .pt loaded weights_only)"),
    equalize: bool = typer.Option(False, "--equalize", help="cross-layer equalization before quantizing"),
    relu6_to_relu: bool = typer.Option(False, "--relu6-to-relu",
                                       help="with --equalize: replace ReLU6 inside pairs by ReLU (DFQ)"),
    absorb_bias: bool = typer.Option(False, "--absorb-bias", help="high-bias absorption (BN statistics)"),
    correct_bias: str = typer.Option(None, "--correct-bias", help="bias correction: analytic or empirical"),
    zero_shot: int = typer.Option(None, "--zero-shot", min=1,
                                  help="calibrate on N zero-shot (ZeroQ) samples distilled from the model: no data"),
    split_outliers: float = typer.Option(None, "--split-outliers", min=0.0, max=1.0,
                                         help="outlier channel splitting: grow each layer pair by this ratio"),
    smoothquant: float = typer.Option(None, "--smoothquant", min=0.0, max=1.0,
                                      help="SmoothQuant alpha for Linear layers after a LayerNorm (transformers)"),
    rounding: str = typer.Option(None, "--rounding",
                                 help="weight rounding: nearest, gptq or adaround (learned on the calibration data)"),
    mixed: str = typer.Option(None, "--mixed", help="mixed precision: choose weight bits per layer by this "
                              "sensitivity measure (sqnr, kl, hessian, entropy) within a budget"),
    budget_bytes: int = typer.Option(None, "--budget-bytes", min=1,
                                     help="with --mixed: the model's tensor bytes limit (packed codes, scales, other "
                                     "tensors; the saved folder adds its metadata)"),
    budget_avg_bits: float = typer.Option(None, "--budget-avg-bits", min=0.0,
                                          help="with --mixed: the mean weight bits limit"),
    bits: str = typer.Option("2,3,4,6,8", "--bits", help="with --mixed: candidate weight bit widths"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object on stdout"),
) -> None:
    """Quantize a model after training, save it, and compare it with fp32 on the Fashion-MNIST test set.

    Example: lowbit quantize --model zoo:mobilenetv2 --recipe w8a8-pertensor --equalize --relu6-to-relu
    --correct-bias analytic --zero-shot 512 --json

    Example: lowbit quantize --model zoo:resnet20 --recipe w4a8 --rounding gptq --json

    Example: lowbit quantize --model zoo:minilm --recipe w8a8 --smoothquant 0.5 --json

    Example: lowbit quantize --model zoo:resnet20 --recipe w8 --mixed hessian --budget-avg-bits 3.4 --json
    """
    from lowbit.jobs import run_ptq
    from lowbit.recipes import ObserverKind, Transforms, WeightRounding, load_recipe

    if observer is not None and observer not in {k.value for k in ObserverKind}:
        _fail(f"--observer {observer!r} is not one of {', '.join(k.value for k in ObserverKind)}")
    if correct_bias is not None and correct_bias not in ("analytic", "empirical"):
        _fail(f"--correct-bias must be analytic or empirical, got {correct_bias!r}")
    if rounding is not None and rounding not in {k.value for k in WeightRounding}:
        _fail(f"--rounding {rounding!r} is not one of {', '.join(k.value for k in WeightRounding)}")
    try:
        spec = load_recipe(recipe)
        if equalize or relu6_to_relu or absorb_bias or correct_bias or smoothquant is not None or split_outliers:
            old = spec.transforms
            spec = dataclasses.replace(spec, transforms=Transforms(
                equalize=equalize or old.equalize, relu6_to_relu=relu6_to_relu or old.relu6_to_relu,
                absorb_bias=absorb_bias or old.absorb_bias, correct_bias=correct_bias or old.correct_bias,
                smoothquant=smoothquant if smoothquant is not None else old.smoothquant,
                split_outliers=split_outliers or old.split_outliers))
        if rounding is not None:
            spec = dataclasses.replace(spec, weight_rounding=rounding)
    except (ValueError, FileNotFoundError) as error:
        _fail(str(error))
    choice = _mixed_options(mixed, budget_bytes, budget_avg_bits, bits)
    _run_and_report(lambda: run_ptq(model, spec, calib=calib, out=out, observer=observer, weights=weights,
                                    progress=True, zero_shot=zero_shot, mixed=choice), as_json)


@app.command("sensitivity")
def sensitivity_command(
    model: str = typer.Option(..., help="zoo:NAME or path/to/file.py:factory"),
    measure: str = typer.Option("all", help="sqnr, kl, hessian, entropy, a comma list, or all"),
    bits: str = typer.Option("2,3,4,6,8", "--bits", help="candidate weight bit widths"),
    recipe: str = typer.Option("w8", help="the base recipe whose weight spec and observer are used"),
    calib: int = typer.Option(512, min=1, help="calibration samples (Fashion-MNIST train, seeded subset)"),
    weights: Path = typer.Option(None, help="weights for a file model (.safetensors, or .pt loaded weights_only)"),
    zero_shot: int = typer.Option(None, "--zero-shot", min=1, help="measure on N zero-shot samples instead of data"),
    plot: Path = typer.Option(None, "--plot", help="a folder for sensitivity_<measure>.png plots"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object on stdout"),
) -> None:
    """How much each layer suffers at each weight bit width, with only that layer quantized.

    Example: lowbit sensitivity --model zoo:resnet20 --measure sqnr,hessian --bits 2,4,8 --plot plots --json
    """
    from lowbit.jobs import run_sensitivity
    from lowbit.mixed import MEASURES

    measures = list(MEASURES) if measure == "all" else [m.strip() for m in measure.split(",") if m.strip()]
    unknown = [m for m in measures if m not in MEASURES]
    if unknown or not measures:
        _fail(f"--measure {measure!r}: use {', '.join(MEASURES)}, a comma list of them, or all")
    chosen = _bit_list(bits)
    result = _run_job(lambda: run_sensitivity(model, measures, chosen, recipe=recipe, calib=calib, weights=weights,
                                              zero_shot=zero_shot, plot=plot, progress=True))
    if as_json:
        typer.echo(json.dumps(result))
        return
    console = Console()
    for table in result["tables"]:
        widths = sorted({int(b) for row in table["values"].values() for b in row})
        view = Table(title=f"{result['model']}: {table['measure']} ({table['unit']}), {table['seconds']} s")
        view.add_column("layer")
        for b in widths:
            view.add_column(f"{b} bits", justify="right")
        for layer, row in table["values"].items():
            # a null figure is an infinite one (the layer's quantization left the output exact)
            view.add_row(layer, *(("inf" if row[str(b)] is None else f"{row[str(b)]:.4g}") if str(b) in row else ""
                                  for b in widths))
        console.print(view)
    for path in result["plots"]:
        typer.echo(f"plot: {path}")


def _bit_list(text: str, option: str = "--bits") -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        _fail(f"{option} must be comma-separated integers like 2,3,4,6,8, got {text!r}")
    if not values or any(not 2 <= b <= 16 for b in values):
        _fail(f"{option} must list bit widths in 2..16, got {text!r}")
    return values


def _mixed_options(measure: str | None, budget_bytes: int | None, budget_avg_bits: float | None,
                   bits: str) -> dict[str, Any] | None:
    """The keyword arguments of lowbit.mixed.choose_bits from quantize's options, or None without --mixed."""
    from lowbit.mixed import MEASURES

    if measure is None:
        if budget_bytes is not None or budget_avg_bits is not None:
            _fail("--budget-bytes and --budget-avg-bits need --mixed MEASURE")
        return None
    if measure not in MEASURES:
        _fail(f"--mixed {measure!r} is not one of {', '.join(MEASURES)}")
    if (budget_bytes is None) == (budget_avg_bits is None):
        _fail("--mixed needs exactly one budget: --budget-bytes N or --budget-avg-bits B")
    return {"measure": measure, "bits": _bit_list(bits), "budget_bytes": budget_bytes,
            "budget_avg_bits": budget_avg_bits}


def _run_job(job: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run a job: bad input exits 2 with its message, and warnings go to stderr."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = job()
    except (ValueError, FileNotFoundError) as error:
        _fail(str(error))
    for w in caught:
        err.print(f"warning: {w.message}", highlight=False, markup=False)
    return result


def _run_and_report(job: Callable[[], dict[str, Any]], as_json: bool) -> None:
    """Run a quantize-like job; bad input exits 2 with its message, warnings go to stderr, and the result is
    printed as one JSON object or as the results table."""
    result = _run_job(job)
    if as_json:
        typer.echo(json.dumps(result))
        return
    _print_results([result])


@app.command()
def qat(
    model: str = typer.Option(..., help="zoo:NAME or path/to/file.py:factory (an image classifier)"),
    recipe: str = typer.Option(None, help="a preset name (w4a4, w2a2, …) or a .yaml/.json recipe file "
                               "[default: the quantizer's own: w4a4, w1a1 for bnn/xnor, weight-only for bwn/twn/…]"),
    quantizer: str = typer.Option("lsq", help="ste, lsq, pact, dorefa, or a binary/ternary rule: bnn, xnor, bwn, "
                                  "twn, ttq, five-level"),
    epochs: int = typer.Option(1, min=1, help="training epochs"),
    out: Path = typer.Option(Path("lowbit-out"), help="folder for the converted model"),
    calib: int = typer.Option(512, min=1, help="images that initialise the quantizers"),
    train_samples: int = typer.Option(None, "--train-samples", min=1, help="training images (default: all 60000)"),
    lr: float = typer.Option(0.01, min=0.0, help="peak learning rate (SGD momentum 0.9, cosine)"),
    batch_size: int = typer.Option(128, "--batch-size", min=1, help="global batch size"),
    seed: int = typer.Option(0, help="seed for data order and initialisation"),
    weights: Path = typer.Option(None, help="weights for a file model (.safetensors, or .pt loaded weights_only)"),
    freeze_bn_after: int = typer.Option(None, "--freeze-bn-after", min=0, help="freeze BatchNorm after N steps"),
    gradient_bits: int = typer.Option(None, "--gradient-bits", min=1, max=16, help="DoReFa gradient bits"),
    progressive: str = typer.Option(None, help="train at these widths first, an epoch each, e.g. 8,4"),
    two_stage: int = typer.Option(None, "--two-stage", min=0, help="quantize activations from this epoch on"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object on stdout"),
) -> None:
    """Quantization-aware training: fine-tune a model with fake quantizers, convert, save, compare with fp32.

    Example: lowbit qat --model zoo:lenet5 --recipe w4a4 --quantizer lsq --epochs 1 --out lenet5-w4a4 --json

    Example: lowbit qat --model zoo:resnet20 --recipe w2a2 --quantizer pact --epochs 3 --progressive 8,4
    --freeze-bn-after 2000

    Example: lowbit qat --model zoo:bnn_mlp --quantizer bnn --epochs 2 --lr 0.001 --out bnn-mlp
    """
    from lowbit.jobs import run_qat

    try:
        widths = tuple(int(b) for b in progressive.split(",")) if progressive else ()
    except ValueError:
        _fail(f"--progressive must be comma-separated bit widths like 8,4, got {progressive!r}")
    _run_and_report(lambda: run_qat(model, recipe, quantizer, epochs, out, calib=calib, train_samples=train_samples,
                                    lr=lr, batch_size=batch_size, seed=seed, weights=weights,
                                    freeze_bn_after=freeze_bn_after, gradient_bits=gradient_bits,
                                    progressive=widths, two_stage=two_stage, progress=True), as_json)


@app.command()
def compress(
    model: str = typer.Option(..., help="zoo:NAME or path/to/file.py:factory (an image classifier)"),
    sparsity: float = typer.Option(0.92, min=0.0, max=0.999, help="fraction of weights pruned"),
    bits: int = typer.Option(5, min=1, max=8, help="bits per shared weight (2^bits − 1 centroids and the zero)"),
    out: Path = typer.Option(Path("lowbit-out"), help="folder for model.lbdc"),
    scope: str = typer.Option("global", help="pruning threshold: global (one for all layers) or layer"),
    prune_steps: int = typer.Option(3, min=1, help="pruning steps, each followed by retraining"),
    epochs: int = typer.Option(2, min=0, help="retraining epochs after each pruning step"),
    finetune_epochs: int = typer.Option(2, min=0, help="epochs of centroid fine-tuning"),
    train_samples: int = typer.Option(None, min=1, help="training images used (seeded subset; default all)"),
    seed: int = typer.Option(0),
    weights: Path = typer.Option(None, help="weights for a file model (.safetensors, or .pt loaded weights_only)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object on stdout"),
) -> None:
    """Deep Compression: prune, retrain, share weights by k-means, fine-tune, Huffman-code; write model.lbdc.

    The accuracy reported is that of the model decoded from the written file.

    Example: lowbit compress --model zoo:mlp --sparsity 0.92 --bits 5 --out mlp-dc --json
    """
    from lowbit.jobs import run_compress

    if scope not in ("global", "layer"):
        _fail(f"--scope must be global or layer, got {scope!r}")
    try:
        result = run_compress(model, sparsity, bits, out, scope=scope, prune_steps=prune_steps,
                              epochs_per_step=epochs, finetune_epochs=finetune_epochs, train_samples=train_samples,
                              seed=seed, weights=weights, progress=not as_json)
    except (ValueError, FileNotFoundError) as error:
        _fail(str(error))
    if as_json:
        typer.echo(json.dumps(result))
        return
    fp32, small = result["fp32"], result["compressed"]
    typer.echo(f"fp32        {fp32['accuracy']:.2f} %  {fp32['bytes']:>10,} bytes")
    typer.echo(f"compressed  {small['accuracy']:.2f} %  {small['bytes']:>10,} bytes  "
               f"({fp32['bytes'] / small['bytes']:.1f}x smaller)  {small['path']}")
    for size in result["sizes"]:
        typer.echo(f"  after {size['stage']:<10} {size['bytes']:>10,} bytes  {size['ratio']:>6.2f}x")


@app.command("eval")
def evaluate(
    model: str = typer.Option(..., help="a folder written by `lowbit quantize` or `lowbit compress` (or its .lbdc "
                                        "file), or zoo:NAME for the fp32 model"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object on stdout"),
) -> None:
    """Evaluate a saved quantized or compressed model (or a zoo model): Fashion-MNIST accuracy, or embedding
    agreement for minilm."""
    from lowbit.analysis import fp32_bytes
    from lowbit.jobs import backend_of, evaluation_for, load_model
    from lowbit.serialize import compressed_file, folder_bytes, is_compressed, load_compressed, load_quantized

    try:
        if model.startswith("zoo:"):
            net = load_model(model)
            size, backend, source = fp32_bytes(net), "pytorch-fp32", model
        elif is_compressed(model):
            net = load_compressed(model)
            size, backend, source = compressed_file(model).stat().st_size, "pytorch-fp32 (decoded)", net.lowbit_source
        else:
            net = load_quantized(model)
            size, backend, source = folder_bytes(model), backend_of(net.lowbit_recipe), net.lowbit_source
        result = {"model": model, **evaluation_for(source, net if source == model else None).measure(net, size, backend)}
    except (ValueError, FileNotFoundError) as error:
        _fail(str(error))
    typer.echo(json.dumps(result) if as_json else "  ".join(f"{k}={v}" for k, v in result.items()))


def _input_shape(text: str) -> tuple[int, ...]:
    """``--input-shape`` parsed: positive integers separated by commas (exits 2 otherwise)."""
    try:
        shape = tuple(int(d) for d in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        _fail(f"--input-shape must be positive integers separated by commas, got {text!r}")
    return shape


@app.command("report")
def report(
    folder: Path = typer.Argument(..., help="a folder written by `lowbit quantize --out FOLDER`"),
    as_json: bool = typer.Option(False, "--json", help="print the report's content as one JSON object"),
) -> None:
    """Write FOLDER/report.html (self-contained: plots inlined, no network) and FOLDER/report.json: the summary
    (fp32 against quantized, and which backend measured it), the per-layer table and the histograms.

    Example: lowbit quantize --model zoo:resnet20 --recipe w8a8 --out out/r20 && lowbit report out/r20
    """
    from lowbit.reports.html import write_report

    try:
        paths = write_report(folder)
    except (ValueError, FileNotFoundError) as error:
        _fail(str(error))
    if as_json:
        typer.echo(paths["json"].read_text())
        return
    typer.echo(f"wrote {paths['html']} and {paths['json']}")


@app.command("export")
def export(
    model: str = typer.Option(..., help="a folder written by `lowbit quantize` (static or weight-only, 8-bit)"),
    out: Path = typer.Option(Path("model.onnx"), help="the ONNX file to write"),
    input_shape: str = typer.Option("1,1,28,28", help="example input shape, comma-separated (batch stays dynamic)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object on stdout"),
) -> None:
    """Export a saved quantized model to ONNX (QDQ), which ONNX Runtime runs with integer kernels."""
    import torch

    from lowbit.export import export_onnx
    from lowbit.serialize import load_quantized

    shape = _input_shape(input_shape)
    try:
        net = load_quantized(model)
        path = export_onnx(net, torch.zeros(shape), out)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        _fail(str(error))
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
    as_json: bool = typer.Option(False, "--json", help="print one JSON object on stdout"),
) -> None:
    """Lower a saved quantized model to an integer-only engine program (bit-exact integer kernels) and save it.

    Example: lowbit quantize --model zoo:resnet20 --out q && lowbit lower --model q --out q/program --json
    """
    import torch

    from lowbit.engine import Requant, lower
    from lowbit.serialize import load_quantized

    shape = _input_shape(input_shape)
    if mode not in {m.value for m in Requant}:
        _fail(f"--mode must be one of {', '.join(m.value for m in Requant)}, got {mode!r}")
    try:
        program = lower(load_quantized(model), torch.zeros(shape), mode=Requant(mode))
        switched = program.set_conv_algorithm(conv_algorithm) if conv_algorithm else []
        path = program.save(out)
    except (ValueError, FileNotFoundError) as error:
        _fail(str(error))
    _, slow_reason = program.fast_runner
    result = {"model": model, "path": str(path), "ops": len(program.ops), "mode": mode,
              "fast_runner": slow_reason is None, "why_reference": slow_reason, "conv_algorithm": conv_algorithm,
              "conv_layers_switched": switched}
    typer.echo(json.dumps(result) if as_json else f"wrote {path}: {len(program.ops)} ops"
               + ("" if slow_reason is None else f" (reference kernels: {slow_reason})"))


@app.command()
def bench(
    model: str = typer.Option(..., help="zoo:NAME or path/to/file.py:factory"),
    recipe: str = typer.Option("w8a8", help="a static or weight-only 8-bit preset, or a recipe file"),
    weights: Path = typer.Option(None, help="weights for a file model"),
    calib: int = typer.Option(256, min=1, help="calibration samples"),
    batch: str = typer.Option("1,8", help="batch sizes, comma-separated"),
    threads: str = typer.Option("1,2", help="thread counts, comma-separated"),
    rounds: int = typer.Option(3, min=1, help="fresh processes per measurement (the median is kept)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object on stdout"),
) -> None:
    """Time fp32 PyTorch, fp32 ONNX Runtime, the int8 model in ONNX Runtime and in lowbit's integer engine (static
    recipes), each in its own process."""
    from lowbit.jobs import run_bench

    try:
        batches, counts = (tuple(int(v) for v in text.split(",")) for text in (batch, threads))
    except ValueError:
        _fail(f"--batch and --threads take comma-separated integers, got {batch!r} and {threads!r}")
    if any(v < 1 for v in batches + counts):
        _fail(f"--batch and --threads must be positive, got {batch!r} and {threads!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = run_bench(model, recipe, calib=calib, weights=weights, batches=batches, threads=counts,
                               rounds=rounds)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        _fail(str(error))
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
         "not a speed result (the integer engine and ONNX Runtime arrive with issue #4).")


def _print_results(results: list[dict[str, Any]]) -> None:
    table = Table(title=None)
    for column in _COLUMNS:
        table.add_column(column, justify="left" if column in ("model", "method", "backend") else "right")
    for row in _rows(results):
        table.add_row(*row)
    wide = Console(width=max(Console().width, 112))
    wide.print(table)
    wide.print(_NOTE, markup=False)


DEMO_MODELS = ("zoo:lenet5", "zoo:resnet20", "zoo:mobilenetv2")
# fp16 is left out of the demo: this CPU has no fast fp16 convolution (resnet20 runs 20x slower than in fp32)
DEMO_METHODS = (("w8a8", "minmax"), ("w8a8", "entropy"), ("w8a8-pertensor", "minmax"), ("w8-dynamic", None),
                ("w4-g128", None))


@app.command()
def demo(
    out: Path = typer.Option(Path("lowbit-demo"), help="folder for the models, demo.json and demo.md"),
    calib: int = typer.Option(512, min=1, help="calibration samples"),
    as_json: bool = typer.Option(False, "--json", help="print the results as JSON instead of a table"),
) -> None:
    """The main job: quantize the bundled models with the main recipes and compare them with fp32."""
    from lowbit.jobs import run_ptq

    results = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for model in DEMO_MODELS:
            fp32 = None
            for recipe, observer in DEMO_METHODS:
                err.print(f"{model}: {recipe}" + (f" ({observer})" if observer else ""), highlight=False)
                name = f"{model[4:]}-{recipe}" + (f"-{observer}" if observer else "")
                results.append(run_ptq(model, recipe, calib=calib, out=out / name, observer=observer, fp32=fp32))
                fp32 = results[-1]["fp32"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "demo.md").write_text(_markdown(results))
    if as_json:
        typer.echo(json.dumps(results))
    else:
        _print_results(results)
        err.print(f"wrote {out / 'demo.json'} and {out / 'demo.md'}", highlight=False)


def _method(result: dict[str, Any]) -> str:
    return result["recipe"] + (f" ({result['observer']})" if result["observer"] else "")


def _markdown(results: list[dict[str, Any]]) -> str:
    lines = ["# lowbit demo: post-training quantization", "", "| " + " | ".join(_COLUMNS) + " |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(results)]
    return "\n".join(lines + ["", _NOTE]) + "\n"


@app.command()
def weights(
    bits: str = typer.Option("8,4,2", help="Bit widths to try, comma-separated."),
    group_size: int = typer.Option(128, min=1, help="Elements per group for per-group quantization."),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON instead of a table."),
) -> None:
    """SQNR of the real MiniLM model's Linear weights at several widths and granularities."""
    from lowbit.analysis import weight_sqnr_table
    from lowbit.spec import PerChannel, PerGroup, PerTensor
    from lowbit.zoo import MiniLMNotInstalled, minilm_linear_weights

    widths = list(_bit_list(bits))
    try:
        tensors = minilm_linear_weights()
    except MiniLMNotInstalled as error:
        _fail(str(error))
    rows = weight_sqnr_table(tensors, widths, (PerTensor(), PerChannel(0), PerGroup(0, group_size)))
    if as_json:
        typer.echo(json.dumps([r.__dict__ for r in rows], default=list))
        return
    cells: dict[tuple[int, str], list[float]] = defaultdict(list)
    for r in rows:
        cells[(r.bits, r.granularity)].append(r.sqnr_db)
    labels = list(dict.fromkeys(r.granularity for r in rows))
    table = Table()
    table.add_column("bits", justify="right")
    for g in labels:
        table.add_column(g, justify="right")
    for b in widths:
        table.add_row(str(b), *(f"{statistics.fmean(cells[(b, g)]):.1f} [{min(cells[(b, g)]):.1f}]" for g in labels))
    Console().print(f"MiniLM-L6: SQNR (dB) of its {len(tensors)} Linear weights — mean [worst layer]", markup=False)
    Console().print(table)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
