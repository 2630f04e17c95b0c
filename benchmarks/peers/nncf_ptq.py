"""Peer comparison: NNCF's standard static INT8 post-training quantization (``nncf.quantize``) on lowbit's zoo models.

Measures fp32 and W8A8 top-1 accuracy (%) on the Fashion-MNIST test set, and the ``nncf.quantize`` time (calibration
included), with NNCF's PyTorch backend and its defaults: target device ANY, preset PERFORMANCE (weights int8
per-channel symmetric narrow-range, activations int8 per-tensor symmetric — unsigned after ReLU), activation ranges
the mean over calibration items of their min/max, fast bias correction on, first conv's weights 7-bit (overflow fix).
``--preset mixed`` makes activations per-tensor asymmetric (affine), the scheme lowbit and ONNX Runtime use.
Calibration uses the same seeded samples as lowbit and ONNX Runtime in the main benchmark
(``lowbit.jobs.calibration_batches``: a plain list of batches, so each batch of 64 is one NNCF "sample").
The result runs fake-quantize ops in eager PyTorch: this compares accuracy, not speed. Nothing from lowbit's
quantization code is used, only models and data.

Runs in its own venv (torch 2.13.0 CPU + nncf + lowbit, see the report / Makefile):
    .venv-peers/bin/python benchmarks/peers/nncf_ptq.py --models lenet5,resnet20,mobilenetv2 --calib 512 \
        --out benchmarks/results/peers_nncf.json [--preset mixed] [--eval-samples N]
"""

from __future__ import annotations

import nncf
import torch
from peer_run import parser, run


class Wrapped(torch.nn.Module):
    """NNCF adds a hook-storage child to the model: a top-level ``nn.Sequential`` (lenet5) would call it as a layer."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--preset", choices=["default", "performance", "mixed"], default="default")
    args = p.parse_args()
    preset = None if args.preset == "default" else nncf.QuantizationPreset(args.preset)
    acts = "per-tensor asymmetric (affine)" if args.preset == "mixed" else "per-tensor symmetric"
    config = (f"nncf.quantize(model, nncf.Dataset(batches), preset={args.preset}) on the torch backend: weights int8 "
              f"per-channel symmetric (narrow range, first conv 7-bit overflow fix), activations int8 {acts}, "
              "MEAN_MINMAX ranges, subset_size=300 (all 8 batches), fast_bias_correction=True, target_device=ANY")
    report = {"peer": "nncf", "version": nncf.__version__, "config": config,
              "label": f"nncf.quantize, preset {args.preset} (per-channel, activations {acts.split(' (')[0]})"}
    run(args, lambda model, batches: nncf.quantize(model, nncf.Dataset(batches), preset=preset), report, wrap=Wrapped)


if __name__ == "__main__":
    main()
