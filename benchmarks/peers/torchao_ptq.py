"""Peer comparison: torchao's standard static INT8 post-training quantization (PT2E) on lowbit's zoo models.

Measures fp32 and W8A8 top-1 accuracy (%) on the Fashion-MNIST test set, and the quantize + calibrate time, with
torchao's PT2E flow: ``torch.export`` -> ``prepare_pt2e(X86InductorQuantizer)`` -> calibration -> ``convert_pt2e``.
The default x86 config is int8 weights per-channel symmetric (PerChannelMinMaxObserver) and uint8 activations
per-tensor affine (HistogramObserver). Calibration uses the same seeded samples as lowbit and ONNX Runtime in the
main benchmark (``lowbit.jobs.calibration_batches``). The converted model runs its quantize/dequantize ops in eager
PyTorch: this compares accuracy, not speed. Nothing from lowbit's quantization code is used, only models and data.

Runs in its own venv (torch 2.13.0 CPU + torchao + lowbit, see the report / Makefile):
    .venv-peers/bin/python benchmarks/peers/torchao_ptq.py --models lenet5,resnet20,mobilenetv2 --calib 512 \
        --out benchmarks/results/peers_torchao.json [--eval-samples N]
"""

from __future__ import annotations

import torch
import torchao
from peer_run import parser, run
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
)

CONFIG = ("X86InductorQuantizer + get_default_x86_inductor_quantization_config(): weights int8 per-channel symmetric "
          "(PerChannelMinMaxObserver), activations uint8 per-tensor affine (HistogramObserver), conv-bn folded")


def quantize(model: torch.nn.Module, batches: list[torch.Tensor]) -> torch.nn.Module:
    shapes = ({0: torch.export.Dim("batch")},)  # calibrate on 64, evaluate on 1000
    exported = torch.export.export(model, (batches[0],), dynamic_shapes=shapes).module()
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for b in batches:
            prepared(b)
    return convert_pt2e(prepared)


def main() -> None:
    report = {"peer": "torchao", "version": torchao.__version__, "config": CONFIG,
              "label": "PT2E X86InductorQuantizer (per-channel, HistogramObserver)"}
    run(parser(__doc__.splitlines()[0]).parse_args(), quantize, report)


if __name__ == "__main__":
    main()
