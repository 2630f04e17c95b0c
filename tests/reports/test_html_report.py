"""The HTML report in a real browser, and its per-layer facts against independent recomputation.

Headless Chromium (Debian's ``chromium``; ``make test`` installs it) opens the report with a fresh profile and
every network request sent to a dead proxy, prints the DOM it built, and takes a screenshot. The per-layer numbers
are checked against float64 formulas computed here from the float model (BN-folded, as quantization does) and the
quantized layer's integer codes.
"""

import json
import shutil
import subprocess

import numpy as np
import pytest
from typer.testing import CliRunner

from lowbit.cli import app
from lowbit.jobs import run_ptq
from lowbit.nn.layers import QuantConv, QuantLinear
from lowbit.reports.html import build_report, render_html, write_report
from lowbit.serialize import load_quantized
from lowbit.transforms import fold_bn
from lowbit.zoo import load

pytestmark = pytest.mark.usefixtures("one_thread")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def result_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lenet5")
    run_ptq("zoo:lenet5", "w8a8", calib=128, out=folder, eval_samples=300)
    write_report(folder)
    return folder


def _chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "profile"
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
               "--no-first-run", "--disable-background-networking", "--proxy-server=127.0.0.1:9",
               "--proxy-bypass-list=<-loopback>", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make test installs it)")
def test_report_opens_in_chromium_with_every_section_and_draws_something(result_dir, tmp_path):
    """The browser's DOM holds the summary, layer table and one histogram image per layer; the screenshot is not
    blank (many distinct colours, not one flat page)."""
    page = (result_dir / "report.html").as_uri()
    dom = _chromium(tmp_path, "--dump-dom", page)
    assert dom.returncode == 0, dom.stderr[-2000:]
    layers = json.loads((result_dir / "layers.json").read_text())["layers"]
    for section in ('id="summary"', 'id="layers"', 'id="errors"', 'id="histograms"'):
        assert section in dom.stdout
    assert dom.stdout.count("<img") == len(layers) == 5  # LeNet-5: 2 convs, 3 linears
    assert dom.stdout.count("<tr>") >= 1 + 2 + 1 + len(layers)
    shot = tmp_path / "shot.png"
    done = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2000", page)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    import matplotlib.image

    pixels = matplotlib.image.imread(str(shot))[..., :3]
    colours = np.unique((pixels.reshape(-1, 3) * 255).astype(np.uint8), axis=0)
    assert pixels.std() > 0.05 and len(colours) > 50


def test_report_is_self_contained(result_dir):
    """No script and no link or image outside the file: the page needs no network."""
    page = (result_dir / "report.html").read_text()
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert page.count("data:image/png;base64,") == 5


def test_per_layer_facts_match_independent_recomputation(result_dir):
    """Weight SQNR from the folded float weights and the dequantized codes (float64 here), the weight grid's range
    from scale and zero point, and histograms that count every weight."""
    rows = {r["name"]: r for r in json.loads((result_dir / "layers.json").read_text())["layers"]}
    qmodel = load_quantized(result_dir)
    folded = dict(fold_bn(load("lenet5").model.eval()).named_modules())
    for name, layer in qmodel.named_modules():
        if not isinstance(layer, (QuantLinear, QuantConv)):
            continue
        row = rows[name]
        w = folded[name].weight.detach().double()
        codes = layer.weight_q.double()
        shape = [-1] + [1] * (codes.dim() - 1)
        scale, zp = layer.weight_scale.double().reshape(shape), layer.weight_zero_point.double().reshape(shape)
        w_hat = (codes - zp) * scale
        expected = 10 * np.log10(float(w.square().sum()) / float((w - w_hat).square().sum()))
        assert row["weight_sqnr_db"] == pytest.approx(expected, abs=0.02)
        spec = layer.weight_spec
        assert row["weight_range"][1] == pytest.approx(float((scale * (spec.qmax - zp)).max()))
        assert sum(row["weight_histogram"]["counts"]) == w.numel()
        assert row["weight_bits"] == 8 and row["shape"] == list(w.shape)
        clip = row["clip_range"]
        assert clip is not None and clip[0] <= 0 <= clip[1] and row["output_sqnr_db"] > 10


def test_summary_names_the_backend_and_matches_result_json(result_dir):
    """report.json's summary carries result.json's numbers and the backend that measured each side."""
    result = json.loads((result_dir / "result.json").read_text())
    report = json.loads((result_dir / "report.json").read_text())
    sides = report["summary"]["sides"]
    assert sides["fp32"] == result["fp32"] and sides["quantized"]["backend"] == "simulation"
    assert sides["quantized"]["accuracy"] == result["quantized"]["accuracy"]


def test_mixed_and_compression_sections_appear_when_the_job_ran_them():
    """A result with mixed-precision bits or compression stages gets those sections; one without does not."""
    base = {"model": "m", "recipe": "r", "fp32": {"accuracy": 1.0}, "quantized": {"accuracy": 1.0}}
    plain = render_html(build_report(base, None))
    assert 'id="mixed"' not in plain and 'id="compression"' not in plain and "layers.json missing" in plain
    full = render_html(build_report({**base, "mixed": {"bits": {"fc": 4}},
                                     "sizes": [{"stage": "huffman", "bytes": 10, "ratio": 40.0}]}, None))
    assert 'id="mixed"' in full and 'id="compression"' in full and "huffman" in full


def test_cli_report_json_and_missing_folder(result_dir, tmp_path):
    """`lowbit report DIR --json` prints the report's JSON; a folder without result.json exits 2 naming it."""
    runner = CliRunner()
    done = runner.invoke(app, ["report", str(result_dir), "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["summary"]["model"] == "zoo:lenet5"
    missing = runner.invoke(app, ["report", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "not found" in missing.output.replace("\n", "")


def test_layer_report_failure_is_recorded_not_fatal(tmp_path):
    """When per-layer facts cannot be gathered, layers.json says why and the report still renders."""
    (tmp_path / "result.json").write_text(json.dumps({"model": "m", "recipe": "r", "fp32": {"accuracy": 1.0},
                                                      "quantized": {"accuracy": 0.5}}))
    (tmp_path / "layers.json").write_text(json.dumps({"error": "RuntimeError('untraceable')"}))
    page = write_report(tmp_path)["html"].read_text()
    assert "untraceable" in page


def test_error_sources_separate_clipping_from_rounding():
    """A percentile observer cuts the activation range, a min/max one does not: only the first shows clipping
    error; weight quantization alone costs less than all sources together; the models are unchanged after."""
    import dataclasses
    import warnings

    import torch

    import lowbit
    from lowbit.recipes import load_recipe
    from lowbit.reports.error_sources import SOURCES, error_sources
    from lowbit.zoo.data import fashion_mnist

    batches = list(fashion_mnist("train").tensors[0][:256].split(64))
    clipping = {}
    for observer in ("minmax", "percentile"):
        spec = dataclasses.replace(load_recipe("w8a8"), activation_observer=observer)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = lowbit.quantize(load("lenet5").model, spec, calibration=batches, progress=False)
        before = q(batches[0])
        rows = {r["source"]: r["sqnr_db"] for r in error_sources(q, load("lenet5").model, batches[:2])}
        assert list(rows) == list(SOURCES)
        assert rows["weight quantization"] > rows["all"] and rows["requantization"] > rows["all"]
        assert torch.equal(q(batches[0]), before)  # hooks and weight swap are gone
        clipping[observer] = rows["clipping"]
    assert clipping["minmax"] > 60 > clipping["percentile"]


def test_mixed_precision_report_plots_the_sensitivity_it_chose_from(tmp_path):
    """quantize with mixed precision: layers.json keeps the sensitivity table, and the report draws it beside the
    chosen bits."""
    folder = tmp_path / "mixed"
    run_ptq("zoo:lenet5", "w8", calib=64, out=folder, eval_samples=200,
            mixed={"measure": "sqnr", "bits": (4, 8), "budget_avg_bits": 6.0})
    layers = json.loads((folder / "layers.json").read_text())
    assert set(layers["sensitivity"]["loss"]) == set(json.loads((folder / "result.json").read_text())["mixed"]["bits"])
    mixed = json.loads((folder / "result.json").read_text())["mixed"]
    pareto = layers["pareto"]
    assert pareto["chosen"]["bytes"] == mixed["predicted_bytes"] and pareto["chosen"]["bits"] == mixed["bits"]
    # every layer at 4 bits is the cheapest allocation and the sweep starts there; all at 8 loses the least
    (four, eight) = pareto["uniform"]
    assert pareto["sweep"][0]["cost"] == four["cost"] and pareto["sweep"][-1]["loss"] == eight["loss"]
    # the chosen allocation is the best the sweep knows of within the same budget
    within = [p["loss"] for p in pareto["sweep"] if p["cost"] <= pareto["cost_limit"]]
    assert pareto["chosen"]["loss"] <= min(within)
    page = write_report(folder)["html"].read_text()
    assert 'id="mixed"' in page and "id='sensitivity'" in page and "id='pareto'" in page
