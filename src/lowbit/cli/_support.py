"""The command line's plumbing: how it exits (2 for bad input, 1 for a failure, never a traceback), how it runs
library work, and the checks that turn bad option values into exit 2 before any work starts."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.text import Text
from typer.exceptions import TyperException

# progress, warnings and messages: stdout carries only results
err = Console(stderr=True)

T = TypeVar("T")


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
    return _positive_list(text, "--input-shape", "1,1,28,28")


def _check_runs(model: Any, shape: tuple[int, ...], text: str) -> None:
    """Exit 2 naming ``--input-shape`` when ``model`` cannot run on an input of that shape (the shape is the bad
    input); return when it can (a later failure is then a genuine one)."""
    import torch

    try:
        with torch.no_grad():
            model(torch.zeros(shape))
    except Exception as error:  # noqa: BLE001 - whatever the model raises on the wrong shape
        _fail(f"--input-shape {text!r}: the model cannot run on an input of shape {shape}: {error}")
