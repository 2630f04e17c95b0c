"""The ``lowbit`` Typer app, its top-level help, and the help texts that several commands share."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)
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
