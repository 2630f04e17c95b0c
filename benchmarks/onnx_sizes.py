"""Bytes on disk of every zoo CNN as fp32 ONNX and as lowbit's W8A8 QDQ ONNX (``lowbit.export``).

Writes benchmarks/results/onnx_sizes.{json,md}. Run: ``.venv/bin/python benchmarks/onnx_sizes.py`` (~1 minute).
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import lowbit
from lowbit.export import export_float_onnx, export_onnx
from lowbit.jobs import calibration_batches
from lowbit.zoo import load
from lowbit.zoo.models import MODEL_NAMES

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    batches = calibration_batches(256)
    rows = []
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in MODEL_NAMES:
            model = load(name).model
            q = lowbit.quantize(model, "w8a8", calibration=batches, progress=False)
            fp32 = export_float_onnx(model, batches[0][:1], Path(folder) / f"{name}-fp32.onnx").stat().st_size
            int8 = export_onnx(q, batches[0][:1], Path(folder) / f"{name}-int8.onnx").stat().st_size
            rows.append({"model": name, "fp32_bytes": fp32, "int8_bytes": int8, "ratio": round(fp32 / int8, 2)})
            print(json.dumps(rows[-1]))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "onnx_sizes.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["| model | fp32 ONNX bytes | lowbit W8A8 ONNX bytes | × smaller |", "|---|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['fp32_bytes']:,} | {r['int8_bytes']:,} | {r['ratio']:.2f} |" for r in rows]
    (RESULTS / "onnx_sizes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
