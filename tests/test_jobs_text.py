"""The main job on the text model: zoo:minilm scored by embedding agreement and the Lee human similarities."""

import json

import pytest
from typer.testing import CliRunner

from lowbit.cli import app
from lowbit.jobs import TextEvaluation, run_ptq
from lowbit.zoo import architecture

pytest.importorskip("transformers")


def test_static_w8a8_minilm_json_and_eval_round_trip(tmp_path):
    out = tmp_path / "q"
    result = CliRunner().invoke(app, ["quantize", "--model", "zoo:minilm", "--recipe", "w8a8", "--calib", "64",
                                      "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    fp32, q = data["fp32"], data["quantized"]
    assert set(fp32) == {"cosine", "spearman", "bytes", "latency_ms", "backend"} and fp32["cosine"] == 1.0
    assert q["cosine"] >= 0.99 and abs(q["spearman"] - fp32["spearman"]) <= 0.01
    assert q["bytes"] == sum((out / f).stat().st_size for f in ("model.safetensors", "lowbit.json")) < fp32["bytes"]
    assert (out / "result.json").is_file()  # for `lowbit report`
    rows = json.loads((out / "layers.json").read_text())["layers"]  # layer by layer: Sequential(quantizer, layer)
    assert len(rows) >= 36 and all(r["weight_sqnr_db"] > 30 and r["output_sqnr_db"] is not None for r in rows)
    again = CliRunner().invoke(app, ["eval", "--model", str(out), "--json"])
    assert again.exit_code == 0, again.output
    reloaded = json.loads(again.stdout.strip().splitlines()[-1])
    assert (reloaded["cosine"], reloaded["spearman"]) == (q["cosine"], q["spearman"])


def test_per_token_dynamic_minilm_keeps_the_human_ranking(tmp_path):
    result = run_ptq("zoo:minilm", "w8-dynamic-token", calib=32, out=tmp_path, eval_samples=64)
    assert result["quantized"]["cosine"] >= 0.998
    assert abs(result["quantized"]["spearman"] - result["fp32"]["spearman"]) <= 0.01


def test_text_calibration_is_seeded_disjoint_from_evaluation_and_bounded():
    evaluation = TextEvaluation(architecture("minilm"))
    first = evaluation.calibration(40)
    assert [b["input_ids"].shape[0] for b in first] == [32, 8]
    assert all(set(b) >= {"input_ids", "attention_mask"} for b in first)
    assert TextEvaluation(evaluation.reference).pool == evaluation.pool  # same seed, same order
    calibrated = set(evaluation.pool[: len(evaluation.pool) - 256])
    assert not calibrated & set(evaluation.texts)
    with pytest.raises(ValueError, match="calib must be 1..1815"):
        evaluation.calibration(5000)
