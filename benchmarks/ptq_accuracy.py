"""Post-training quantization accuracy: lowbit against ONNX Runtime's quantizer and torchao, same models, same data.

Every method sees the same fp32 model (lowbit's zoo weights) and the same 512 calibration images
(``lowbit.jobs.calibration_batches``: a seeded subset of the Fashion-MNIST training set) and is scored on the full
Fashion-MNIST test set (10,000 images). Peers:

- ONNX Runtime ``quantize_static``: the fp32 model exported to ONNX, QDQ format, per-channel int8 weights, uint8
  asymmetric activations, MinMax, Entropy (at its defaults and with 2048 bins) and Percentile calibration; scored
  by an ONNX Runtime session.
- torchao's PT2E static int8 flow (and NNCF when it installs) run by ``benchmarks/peers/*.py`` in the separate
  environment ``.venv-peers`` (same torch pin; ``make peers`` builds it). Skipped, and said so, when it is absent.

MiniLM (``zoo:minilm``): mean cosine between fp32 and quantized sentence embeddings (Lee documents + held-out
standard-library sentences) and the Spearman correlation with the Lee human similarities, for lowbit's recipes and
PyTorch's own ``torch.ao.quantization.quantize_dynamic`` int8.

Writes benchmarks/results/ptq_accuracy.{json,md}. Run: ``.venv/bin/python benchmarks/ptq_accuracy.py``
(about 20 minutes on 2 cores; ``--models lenet5 --no-minilm`` for a quick look).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from lowbit.jobs import TextEvaluation, calibration_batches, run_ptq
from lowbit.zoo import load
from lowbit.zoo.data import fashion_mnist

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
# each peer run: (script in benchmarks/peers, extra arguments)
PEER_RUNS = (("torchao_ptq.py", ()), ("nncf_ptq.py", ()), ("nncf_ptq.py", ("--preset", "mixed")))
CALIB = 512
# (recipe, observer): lowbit's methods in the table; W8A8 static per-channel is the one compared with the peers
LOWBIT_METHODS = (("w8a8", "minmax"), ("w8a8", "entropy"), ("w8a8", "mse"), ("w8a8", "percentile"),
                  ("w8a8-pertensor", "minmax"), ("w8-dynamic", None), ("w4-g128", None))
# ONNX Runtime's calibration methods. Its Entropy default (128 histogram bins, 128 quantized bins) leaves one
# candidate threshold, the full range, so it equals MinMax (measured: identical scales); quantize_static does not
# pass a bin count on, so the 2048-bin run (the TensorRT setting of the algorithm it implements) uses ORT's own
# create_calibrator and hands the ranges to quantize_static through its calibration cache.
ORT_METHODS = (("MinMax", "MinMax", {}), ("Entropy", "Entropy, defaults", {}),
               ("Entropy", "Entropy, 2048 bins", {"num_bins": 2048, "num_quantized_bins": 128}),
               ("Percentile", "Percentile 99.999", {}))
# lowbit's method in the paired comparison with each peer: static W8A8, per-channel weights, min/max ranges
HEADLINE = ("w8a8", "minmax")
MINILM_RECIPES = ("w8-dynamic", "w8-dynamic-token", "w8a8", "w8")


def lowbit_rows(models: list[str], workdir: Path) -> list[dict]:
    rows = []
    for name in models:
        fp32 = None
        for recipe, observer in LOWBIT_METHODS:
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = run_ptq(f"zoo:{name}", recipe, calib=CALIB, out=workdir / f"{name}-{recipe}-{observer}",
                            observer=observer, fp32=fp32)
            fp32 = r["fp32"]
            rows.append({"model": name, "library": "lowbit", "method": recipe + (f" ({observer})" if observer else ""),
                         "fp32": fp32["accuracy"], "accuracy": r["quantized"]["accuracy"],
                         "seconds": round(time.perf_counter() - start, 1)})
            if (recipe, observer) == HEADLINE:
                rows[-1]["correct"] = _lowbit_correct(Path(r["quantized"]["path"]))
            print(f"lowbit {name} {rows[-1]['method']}: {rows[-1]['accuracy']:.2f}", file=sys.stderr)
    return rows


@torch.no_grad()
def _lowbit_correct(folder: Path) -> np.ndarray:
    """Per test image: does the saved lowbit model classify it correctly (for the paired comparison)."""
    from lowbit.serialize import load_quantized

    images, labels = fashion_mnist("test").tensors
    model = load_quantized(folder).eval()
    return torch.cat([model(images[i : i + 1000]).argmax(1) == labels[i : i + 1000]
                      for i in range(0, len(labels), 1000)]).numpy()


def mcnemar(a: np.ndarray, b: np.ndarray) -> dict:
    """Paired comparison of two classifiers on one test set: images only ``a`` gets right, only ``b`` gets right,
    and the exact two-sided McNemar p-value (binomial on the discordant images)."""
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n, k = only_a + only_b, min(only_a, only_b)
    p = 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)
    return {"only_lowbit": only_a, "only_peer": only_b, "p_value": round(p, 4)}


class CalibrationReader:
    """ONNX Runtime's calibration reader over lowbit's calibration batches (the same images, the same order)."""

    def __init__(self, batches: list[torch.Tensor], input_name: str) -> None:
        self.feeds = iter([{input_name: b.numpy()} for b in batches])

    def get_next(self):
        return next(self.feeds, None)

    def rewind(self) -> None:  # ORT >= 1.16 may ask for it
        pass


def _ort_correct(path: Path, images: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    logits = [session.run(None, {name: images[i : i + 1000].numpy()})[0] for i in range(0, len(labels), 1000)]
    return np.argmax(np.concatenate(logits), axis=1) == labels.numpy()


def _percent(correct: np.ndarray) -> float:
    return round(100.0 * float(correct.mean()), 2)


def onnxruntime_rows(models: list[str], workdir: Path) -> list[dict]:
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.shape_inference import quant_pre_process

    images, labels = fashion_mnist("test").tensors
    batches = calibration_batches(CALIB)
    rows = []
    for name in models:
        model = load(name).model
        fp32_path, prepped = workdir / f"{name}.onnx", workdir / f"{name}-prep.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(model, (batches[0][:1],), str(fp32_path), dynamo=False, opset_version=17,
                              input_names=["x"], output_names=["logits"],
                              dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}})
        quant_pre_process(str(fp32_path), str(prepped))  # ORT's recommended shape inference + graph clean-up
        fp32 = _percent(_ort_correct(prepped, images, labels))
        for method, label, options in ORT_METHODS:
            start = time.perf_counter()
            out, cache = workdir / f"{name}-{label}.onnx", None
            if options:  # calibrator settings quantize_static does not pass on: its own calibrator, then its cache
                cache = workdir / f"{name}-{label}.json"
                calibrator = create_calibrator(prepped, augmented_model_path=str(workdir / "augmented.onnx"),
                                               calibrate_method=getattr(CalibrationMethod, method),
                                               extra_options=options)
                calibrator.collect_data(CalibrationReader(batches, "x"))
                save_tensors_data(calibrator.compute_data(), cache)
            quantize_static(str(prepped), str(out), CalibrationReader(batches, "x"), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=getattr(CalibrationMethod, method), calibration_cache_path=cache)
            rows.append({"model": name, "library": f"onnxruntime {onnxruntime.__version__}",
                         "method": f"quantize_static QDQ per-channel ({label})", "fp32": fp32,
                         "correct": (correct := _ort_correct(out, images, labels)), "accuracy": _percent(correct),
                         "seconds": round(time.perf_counter() - start, 1)})
            print(f"onnxruntime {name} {label}: {rows[-1]['accuracy']:.2f}", file=sys.stderr)
    return rows


def peer_rows(models: list[str], workdir: Path) -> tuple[list[dict], list[str]]:
    """Rows from the peer scripts run in ``.venv-peers``, and notes on what was skipped."""
    if not PEERS_PYTHON.exists():
        return [], [f"torchao/NNCF skipped: {PEERS_PYTHON} is missing (build it with `make peers`)"]
    rows, notes = [], []
    for script, extra in PEER_RUNS:
        path = Path(__file__).parent / "peers" / script
        out = workdir / f"{path.stem}{'-'.join(('',) + extra)}.json"
        done = subprocess.run([str(PEERS_PYTHON), str(path), "--models", ",".join(models), "--calib", str(CALIB),
                               "--out", str(out), *extra], cwd=ROOT)
        if done.returncode != 0:
            notes.append(f"{script} {' '.join(extra)} failed (exit {done.returncode}); see its stderr")
            continue
        report = json.loads(out.read_text())
        for r in report["results"]:
            rows.append({"model": r["model"], "library": f"{report['peer']} {report['version']}",
                         "method": report["label"], "config": report["config"], "fp32": r["fp32"],
                         "accuracy": r["w8a8"],
                         "seconds": r.get("seconds"), "correct": np.array([c == "1" for c in r["correct"]])})
    return rows, notes


def minilm_rows(workdir: Path) -> list[dict]:
    rows = []
    fp32 = None
    for recipe in MINILM_RECIPES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = run_ptq("zoo:minilm", recipe, calib=128, out=workdir / f"minilm-{recipe}", fp32=fp32)
        fp32 = r["fp32"]
        rows.append({"library": "lowbit", "method": recipe, "cosine": r["quantized"]["cosine"],
                     "spearman": r["quantized"]["spearman"], "fp32_spearman": fp32["spearman"]})
        print(f"lowbit minilm {recipe}: {rows[-1]}", file=sys.stderr)
    # PyTorch's own dynamic int8 quantization of every nn.Linear, scored the same way
    reference = load("minilm").model
    evaluation = TextEvaluation(reference)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        qmodel = torch.ao.quantization.quantize_dynamic(copy.deepcopy(reference), {torch.nn.Linear}, torch.qint8)
    scored = evaluation.measure(qmodel, 0, "pytorch-fbgemm")
    rows.append({"library": f"torch {torch.__version__}", "method": "quantize_dynamic int8 (Linear)",
                 "cosine": scored["cosine"], "spearman": scored["spearman"], "fp32_spearman": fp32["spearman"]})
    print(f"torch minilm quantize_dynamic: {rows[-1]}", file=sys.stderr)
    return rows


def _markdown(image_rows: list[dict], paired: list[dict], text_rows: list[dict], notes: list[str]) -> str:
    lines = ["| model | library | method | fp32 % | quantized % | Δ points |", "|---|---|---|---:|---:|---:|"]
    for r in sorted(image_rows, key=lambda r: r["model"]):
        lines.append(f"| {r['model']} | {r['library']} | {r['method']} | {r['fp32']:.2f} | {r['accuracy']:.2f} | "
                     f"{r['accuracy'] - r['fp32']:+.2f} |")
    if paired:
        lines += ["", "| model | lowbit − peer (points) | peer | images only lowbit gets right | only the peer | "
                  "McNemar p |", "|---|---:|---|---:|---:|---:|"]
        lines += [f"| {p['model']} | {p['difference_points']:+.2f} | {p['peer']} | {p['only_lowbit']} | "
                  f"{p['only_peer']} | {p['p_value']:.3f} |" for p in paired]
    if text_rows:
        lines += ["", "| MiniLM | method | mean cosine to fp32 | Spearman (fp32) |", "|---|---|---:|---:|"]
        lines += [f"| {r['library']} | {r['method']} | {r['cosine']:.4f} | {r['spearman']:.4f} "
                  f"({r['fp32_spearman']:.4f}) |" for r in text_rows]
    return "\n".join(lines + [""] + notes) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet5,resnet20,mobilenetv2")
    parser.add_argument("--no-minilm", action="store_true", help="skip the MiniLM part")
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        image_rows = lowbit_rows(models, workdir) + onnxruntime_rows(models, workdir)
        extra, notes = peer_rows(models, workdir)
        image_rows += extra
        text_rows = [] if args.no_minilm else minilm_rows(workdir)
    paired = _paired(image_rows)
    for r in image_rows:
        r.pop("correct", None)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ptq_accuracy.json").write_text(json.dumps({"calibration_samples": CALIB, "images": image_rows,
                                                           "paired": paired, "minilm": text_rows, "notes": notes},
                                                          indent=1) + "\n")
    text = _markdown(image_rows, paired, text_rows, notes)
    (RESULTS / "ptq_accuracy.md").write_text(text)
    print(text)


def _paired(rows: list[dict]) -> list[dict]:
    """lowbit's headline W8A8 against every peer row that kept per-image results, model by model."""
    out = []
    for lb in (r for r in rows if r["library"] == "lowbit" and "correct" in r):
        for peer in (r for r in rows if r["model"] == lb["model"] and r["library"] != "lowbit" and "correct" in r):
            out.append({"model": lb["model"], "lowbit": lb["method"], "peer": f"{peer['library']} {peer['method']}",
                        "difference_points": round(lb["accuracy"] - peer["accuracy"], 2),
                        **mcnemar(lb["correct"], peer["correct"])})
    return out


if __name__ == "__main__":
    main()
