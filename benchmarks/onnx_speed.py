"""Int8 speed in ONNX Runtime: lowbit's QDQ export against fp32 (PyTorch and ONNX Runtime) and ORT's own quantizer.

Models: the zoo ``resnet20`` (Fashion-MNIST, 1×28×28) and a ResNet-style network at a realistic size (a 3→64
stem and four basic blocks of 64 channels at 56×56; random weights — speed does not depend on them). For each:
fp32 PyTorch (eager, and with BatchNorm folded and channels-last images — its fastest path here), fp32 ONNX
Runtime, lowbit W8A8 exported with ``lowbit.export_onnx``, and the model ONNX Runtime's own ``quantize_static``
makes from the same fp32 export and the same calibration batches (QDQ, per-channel int8 weights, uint8
activations). Batch 1 and 8, 1 and 2 threads.

Every (backend, model, batch, threads) cell is timed in its own process: PyTorch's and ONNX Runtime's idle thread
pools spin and would steal the two cores from each other. Median of repeated runs after warm-up in each process,
then the median over three processes per backend (interleaved).

Writes benchmarks/results/onnx_speed.{json,md}. Run: ``.venv/bin/python benchmarks/onnx_speed.py`` (~8 minutes).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

RESULTS = Path(__file__).parent / "results"
BATCHES = (1, 8)
THREADS = (1, 2)
# Process-to-process spread on this machine is up to ±30% (measured: 1.9–3.4 ms for one model): every cell is
# timed in ROUNDS fresh processes per backend, interleaved, and the median of their medians is reported.
ROUNDS = 3


class _Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
        self.conv2, self.bn2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


class ResNet56x56(nn.Module):
    """3→64 stem and four 64-channel basic blocks at 56×56, average pool, 10 logits (0.93 GMAC per image)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        self.blocks = nn.Sequential(*[_Block(64) for _ in range(4)])
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


def build(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    """The fp32 model in eval mode and its per-sample input shape."""
    if name == "resnet20":
        from lowbit.zoo import load

        return load("resnet20").model, (1, 28, 28)
    torch.manual_seed(0)
    model = ResNet56x56()
    for m in model.modules():  # BN statistics as a trained network would have them, so folding is realistic
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval(), (3, 56, 56)


def calibration(name: str, shape: tuple[int, ...]) -> list[torch.Tensor]:
    if name == "resnet20":
        from lowbit.jobs import calibration_batches

        return calibration_batches(256)
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(16, *shape, generator=generator) for _ in range(4)]


def prepare(model: str, folder: Path) -> dict[str, str]:
    """fp32 ONNX, lowbit int8 ONNX and ORT-quantized int8 ONNX for ``model``; returns backend → path."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import lowbit
    from lowbit.export import export_float_onnx, export_onnx

    net, shape = build(model)
    batches = calibration(model, shape)
    fp32 = export_float_onnx(net, batches[0][:1], folder / f"{model}-fp32.onnx")
    prepped = folder / f"{model}-prep.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quant_pre_process(str(fp32), str(prepped))
        qmodel = lowbit.quantize(net, "w8a8", calibration=batches, progress=False)
    lowbit_path = export_onnx(qmodel, batches[0][:1], folder / f"{model}-lowbit.onnx")

    from ptq_accuracy import CalibrationReader  # the same reader the accuracy benchmark hands to ORT

    ort_path = folder / f"{model}-ort.onnx"
    quantize_static(str(prepped), str(ort_path), CalibrationReader(batches, "input_0"), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    return {"torch-fp32": "", "torch-best": "", "ort-fp32": str(fp32), "ort-int8-lowbit": str(lowbit_path),
            "ort-int8-onnxruntime": str(ort_path)}


def minilm_rows(folder: Path) -> list[dict]:
    """MiniLM W8A8 (calibrated on 128 stdlib sentences) in ONNX Runtime vs fp32, batch 8 × 128 tokens."""
    import numpy as np

    import lowbit
    from lowbit.export import Candidate, export_float_onnx, export_onnx, ort_session, time_candidates
    from lowbit.zoo import load, stdlib_sentences

    entry = load("minilm")
    model, sentences = entry.model, stdlib_sentences(128)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = lowbit.quantize(model, "w8a8", calibration=[model.tokenize(sentences[i : i + 32]) for i in range(0, 128, 32)],
                            progress=False)
    documents = [text for text, _ in entry.test][:8]
    tokens = model.tokenizer(documents, padding="max_length", truncation=True, max_length=128, return_tensors="pt")
    example = (tokens["input_ids"], tokens["attention_mask"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fp32 = export_float_onnx(model, example, folder / "minilm-fp32.onnx")
        int8 = export_onnx(q, example, folder / "minilm-int8.onnx")
    feed = {"input_0": example[0].numpy(), "input_1": example[1].numpy()}
    np.savez(folder / "minilm-feed.npz", **feed)
    reference = ort_session(fp32).run(None, feed)[0]
    quantized = ort_session(int8).run(None, feed)[0]
    cosine = float(np.mean(np.sum(reference * quantized, 1) / np.linalg.norm(reference, axis=1)
                           / np.linalg.norm(quantized, axis=1)))
    candidates = {name: Candidate("ort", str(path), str(folder / "minilm-feed.npz"))
                  for name, path in (("ort-fp32", fp32), ("ort-int8-lowbit", int8))}
    rows = []
    for threads in THREADS:
        cell = time_candidates(candidates, (), 8, threads, rounds=ROUNDS)
        rows.append({"threads": threads, **cell, "speedup": round(cell["ort-fp32"] / cell["ort-int8-lowbit"], 2),
                     "cosine": round(cosine, 5), "bytes": {"fp32": fp32.stat().st_size, "int8": int8.stat().st_size}})
        print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def main() -> None:
    from lowbit.export.bench import Candidate, time_candidates

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20,resnet56x56")
    parser.add_argument("--no-minilm", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            paths = prepare(model, Path(tmp))
            sizes = {k: Path(v).stat().st_size for k, v in paths.items() if v}
            source = "zoo:resnet20" if model == "resnet20" else f"{Path(__file__).resolve()}:ResNet56x56"
            candidates = {k: Candidate("ort", v) if v else Candidate("torch" if k == "torch-fp32" else "torch-best", source)
                          for k, v in paths.items()}
            shape = build(model)[1]
            for batch in BATCHES:
                for threads in THREADS:
                    cell = {"model": model, "batch": batch, "threads": threads, "bytes": sizes,
                            **time_candidates(candidates, shape, batch, threads, rounds=ROUNDS)}
                    best_fp32 = min(cell["torch-fp32"], cell["torch-best"], cell["ort-fp32"])
                    cell["speedup_vs_best_fp32"] = round(best_fp32 / cell["ort-int8-lowbit"], 2)
                    cell["lowbit_vs_ort_quantizer"] = round(cell["ort-int8-onnxruntime"] / cell["ort-int8-lowbit"], 3)
                    rows.append(cell)
                    print(json.dumps(cell), file=sys.stderr)
        text_rows = minilm_rows(Path(tmp)) if not args.no_minilm else []
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "onnx_speed.json").write_text(json.dumps({"cnn": rows, "minilm": text_rows}, indent=1) + "\n")
    lines = ["| model | batch | threads | torch fp32 ms | torch fp32 folded + channels-last ms | ORT fp32 ms | "
             "lowbit int8 (ORT) ms | ORT quantize_static int8 ms | int8 speed-up vs best fp32 | lowbit vs ORT's int8 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['threads']} | {r['torch-fp32']:.2f} | {r['torch-best']:.2f} | "
                     f"{r['ort-fp32']:.2f} | "
                     f"{r['ort-int8-lowbit']:.2f} | {r['ort-int8-onnxruntime']:.2f} | "
                     f"{r['speedup_vs_best_fp32']:.2f}× | {r['lowbit_vs_ort_quantizer']:.3f} |")
    sizes = {r["model"]: r["bytes"] for r in rows}
    lines += ["", "File bytes: " + "; ".join(f"{m}: fp32 {s['ort-fp32']:,}, lowbit int8 {s['ort-int8-lowbit']:,} "
                                             f"({s['ort-fp32'] / s['ort-int8-lowbit']:.1f}× smaller), ORT int8 "
                                             f"{s['ort-int8-onnxruntime']:,}" for m, s in sizes.items())]
    if text_rows:
        lines += ["", "| MiniLM (batch 8, sequence 128) | threads | ORT fp32 ms | lowbit int8 (ORT) ms | speed-up | "
                  "mean cosine to fp32 |", "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| W8A8 static | {r['threads']} | {r['ort-fp32']:.1f} | {r['ort-int8-lowbit']:.1f} | "
                  f"{r['speedup']:.2f}× | {r['cosine']:.4f} |" for r in text_rows]
    (RESULTS / "onnx_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
