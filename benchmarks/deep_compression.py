"""Deep Compression, INQ and product quantization on Fashion-MNIST (issue #8).

Pipeline (``--part pipeline``): ``mlp`` (LeNet-300-100) and ``lenet5`` from the zoo's trained weights through
:func:`lowbit.jobs.run_compress` — pruning in three steps with retraining, k-means sharing, centroid fine-tuning,
Huffman coding — written to ``model.lbdc`` and *decoded from that file* for the accuracy. Sizes are bytes of
real encodings (the file's size for the total, the fp32 baseline being the state dict as safetensors). Each
stage's ratio stands next to Deep Compression's (Han et al., 2016, Tables 2 and 3: LeNet-300-100 and LeNet-5 on
MNIST); the paper's pruning figure is 1/kept (a parameter count), ours counts the stored fp32 values with
their indices and fillers. Then, on one thread, the decode time of the file (parse + Huffman decode + scatter +
``load_state_dict`` into an architecture built once outside the timed call; median of ≥ 21 runs) and the
inference time of the decoded model against the fp32 one (batch 64, medians over three alternating blocks): the
decoded model is a dense fp32 model, so they should match — Deep Compression saves storage and bandwidth, not
CPU arithmetic.

INQ (``--part inq``): 5-bit incremental network quantization (portions 50/75/87.5/100 %, one epoch of SGD per
portion, lr 10⁻³, momentum 0.9, weight decay 5·10⁻⁴) from the same trained weights; target: within 0.5 points.

Product quantization (``--part pq``): ``mlp``'s first two Linear layers replaced by
:class:`lowbit.compress.ProductLinear` (sub-vectors of 4 or 8, 64 or 256 codewords per sub-space), accuracy
without retraining, weight bytes.

Seeds fixed (0). Writes ``benchmarks/results/deep_compression.{json,md}``. Run: ``.venv/bin/python
benchmarks/deep_compression.py [--part pipeline|inq|pq|all]`` (~20 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lowbit.compress import decode_model, incremental_quantize, product_quantize_linears
from lowbit.export.bench import wall_times
from lowbit.flows.qat_train import fit
from lowbit.jobs import run_compress
from lowbit.serialize import build_from_source
from lowbit.zoo import load
from lowbit.zoo.data import fashion_mnist

RESULTS = Path(__file__).parent / "results"
SETTINGS = {"mlp": {"sparsity": 0.92, "bits": 5}, "lenet5": {"sparsity": 0.91, "bits": 5}}
TRAINING = {"prune_steps": 3, "epochs_per_step": 4, "finetune_epochs": 3}
# Deep Compression, Tables 2–3 (MNIST): weights kept and compression after pruning, P+Q, P+Q+Huffman.
PAPER = {"mlp": {"kept": 0.08, "pruned": 12.0, "quantized": 100 / 3.1, "huffman": 100 / 2.32},
         "lenet5": {"kept": 0.08, "pruned": 12.0, "quantized": 100 / 3.05, "huffman": 100 / 2.55}}


def _accuracy(model, images, labels) -> float:
    model.eval()
    with torch.no_grad():
        return round(100.0 * float((model(images).argmax(1) == labels).float().mean()), 2)


def _decode_ms(data: bytes, source: str) -> float:
    model = build_from_source(source)  # the architecture is built once, outside the timed call

    def decode() -> None:
        model.load_state_dict(decode_model(data)[1])

    return statistics.median(wall_times(decode, min_seconds=1.0, min_runs=21, warmup=2)) * 1e3


def _inference_ms(fp32, decoded, x) -> tuple[float, float]:
    sides = {"fp32": [], "decoded": []}
    with torch.no_grad():
        for _ in range(3):  # alternating blocks: both sides see the same machine state
            for name, model in (("fp32", fp32), ("decoded", decoded)):
                sides[name] += wall_times(lambda m=model: m(x), min_seconds=0.5, min_runs=41)
    return statistics.median(sides["fp32"]) * 1e3, statistics.median(sides["decoded"]) * 1e3


def pipeline_part() -> dict:
    from lowbit.serialize import load_compressed

    rows = {}
    images = fashion_mnist("test").tensors[0]
    for name, setting in SETTINGS.items():
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            result = run_compress(f"zoo:{name}", out=out, **setting, **TRAINING)
            data = Path(result["compressed"]["path"]).read_bytes()
            decoded = load_compressed(result["compressed"]["path"])
        result["seconds"] = round(time.perf_counter() - started, 1)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # decode and inference timed on one thread
        result["decode_ms"] = round(_decode_ms(data, f"zoo:{name}"), 2)
        fp32_ms, decoded_ms = _inference_ms(load(name).model.eval(), decoded, images[:64])
        torch.set_num_threads(threads)
        result["inference_ms"] = {"fp32": round(fp32_ms, 3), "decoded": round(decoded_ms, 3)}
        result["paper"] = PAPER[name]
        rows[name] = result
        print(name, json.dumps({k: result[k] for k in ("fp32", "compressed", "sizes", "decode_ms")}), flush=True)
    return rows


def inq_part() -> dict:
    train = fashion_mnist("train").tensors
    images, labels = fashion_mnist("test").tensors
    rows = {}
    for name in SETTINGS:
        model = load(name).model
        before = _accuracy(model, images, labels)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
        started = time.perf_counter()
        def retrain(net, stage, optimizer=optimizer) -> None:
            fit(net, train, 1, optimizer=optimizer, seed=stage, progress=False)

        records = incremental_quantize(model, 5, retrain, optimizer=optimizer)
        rows[name] = {"fp32": before, "inq_5bit": _accuracy(model, images, labels),
                      "portions": [r["portion"] for r in records], "quantized": records[-1]["quantized"],
                      "seconds": round(time.perf_counter() - started, 1)}
        print(name, json.dumps(rows[name]), flush=True)
    return rows


def pq_part() -> dict:
    images, labels = fashion_mnist("test").tensors
    rows = {}
    for subvector, clusters in ((4, 256), (8, 256), (4, 64)):
        model = load("mlp").model
        report = product_quantize_linears(model, subvector, clusters, include_names=["1", "3"], seed=0)
        fp32 = sum(s.fp32_bytes for s in report.layers.values())
        pq = sum(s.pq_bytes for s in report.layers.values())
        rows[f"d={subvector},k={clusters}"] = {"accuracy": _accuracy(model, images, labels), "fp32_bytes": fp32,
                                                "pq_bytes": pq, "ratio": round(fp32 / pq, 2)}
        print(subvector, clusters, json.dumps(rows[f"d={subvector},k={clusters}"]), flush=True)
    rows["fp32_accuracy"] = _accuracy(load("mlp").model, images, labels)
    return rows


def _table(results: dict) -> str:
    lines = []
    if "pipeline" in results:
        lines += ["## Deep Compression (file decoded for the accuracy)", "",
                  "| model | fp32 % | compressed % | Δ | fp32 bytes (safetensors) | file bytes | × | pruned × (paper: 1/kept) | "
                  "P+Q × (paper) | P+Q+H × (paper) | decode ms | inference ms fp32 / decoded |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, r in results["pipeline"].items():
            sizes = {s["stage"]: s["ratio"] for s in r["sizes"]}
            paper = r["paper"]
            lines.append(
                f"| {name} | {r['fp32']['accuracy']:.2f} | {r['compressed']['accuracy']:.2f} | "
                f"{r['compressed']['accuracy'] - r['fp32']['accuracy']:+.2f} | {r['fp32']['bytes']:,} | "
                f"{r['compressed']['bytes']:,} | {r['fp32']['bytes'] / r['compressed']['bytes']:.1f} | "
                f"{sizes['pruned']:.1f} ({paper['pruned']:.0f}) | {sizes['quantized']:.1f} ({paper['quantized']:.0f}) | "
                f"{sizes['huffman']:.1f} ({paper['huffman']:.0f}) | {r['decode_ms']:.1f} | "
                f"{r['inference_ms']['fp32']:.3f} / {r['inference_ms']['decoded']:.3f} |")
        for name, r in results["pipeline"].items():
            lines += ["", f"### {name}: per layer", "",
                      "| layer | weights | kept % | code bits | code bits (H) | index bits | index bits (H) | fp32 B | "
                      "pruned B | P+Q B | P+Q+H B |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for layer, row in r["table"]["layers"].items():
                lines.append(f"| {layer} | {row['weights']:,} | {100 * row['weights_kept']:.1f} | {row['code_bits']} | "
                             f"{row['code_bits_huffman']} | {row['index_bits']} | {row['index_bits_huffman']} | "
                             f"{row['fp32']:,} | {row['pruned']:,} | {row['quantized']:,} | {row['huffman']:,} |")
            total = r["table"]["total"]
            lines.append(f"| total (+ {total['raw']:,} B raw biases; file {total['file']:,} B) | {total['weights']:,} | "
                         f"{100 * total['weights_kept']:.1f} | | | | | {total['fp32']:,} | {total['pruned']:,} | "
                         f"{total['quantized']:,} | {total['huffman']:,} |")
    if "inq" in results:
        lines += ["", "## INQ, 5 bits", "", "| model | fp32 % | INQ % | Δ | s |", "|---|---:|---:|---:|---:|"]
        for name, r in results["inq"].items():
            lines.append(f"| {name} | {r['fp32']:.2f} | {r['inq_5bit']:.2f} | {r['inq_5bit'] - r['fp32']:+.2f} | "
                         f"{r['seconds']} |")
    if "pq" in results:
        lines += ["", f"## Product quantization of mlp's first two Linear layers (no retraining; fp32 "
                  f"{results['pq']['fp32_accuracy']:.2f} %)", "",
                  "| setting | accuracy % | fp32 B | PQ B | × |", "|---|---:|---:|---:|---:|"]
        for key, r in results["pq"].items():
            if key != "fp32_accuracy":
                lines.append(f"| {key} | {r['accuracy']:.2f} | {r['fp32_bytes']:,} | {r['pq_bytes']:,} | {r['ratio']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=("pipeline", "inq", "pq", "all"), default="all")
    args = parser.parse_args()
    torch.manual_seed(0)
    results = {}
    for part, run in (("pipeline", pipeline_part), ("inq", inq_part), ("pq", pq_part)):
        if args.part in (part, "all"):
            results[part] = run()
    RESULTS.mkdir(exist_ok=True)
    stem = "deep_compression" if args.part == "all" else f"deep_compression_{args.part}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    table = _table(results)
    (RESULTS / f"{stem}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
