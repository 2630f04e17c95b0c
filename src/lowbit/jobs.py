"""The main job, shared by the CLI, ``make demo`` and the benchmarks: quantize a model, measure both sides.

:func:`run_ptq` loads a model (``zoo:NAME`` with its shipped weights, or ``file.py:factory`` with ``weights``),
draws a seeded calibration subset (Fashion-MNIST training images; standard-library sentences for ``zoo:minilm``),
quantizes, saves, and measures both sides — accuracy on the test set (embedding agreement for ``minilm``), bytes
on disk and latency, saying which backend produced the latency.

Example:
    >>> import tempfile
    >>> result = run_ptq("zoo:lenet5", "w8a8", calib=128, out=tempfile.mkdtemp(), eval_samples=1000)
    >>> sorted(result), result["quantized"]["backend"]
    (['calibration', 'fp32', 'model', 'observer', 'quantized', 'recipe', 'transforms'], 'simulation')
    >>> abs(result["fp32"]["accuracy"] - result["quantized"]["accuracy"]) < 1.5
    True
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.analysis.evaluation import accuracy, fp32_bytes, latency_ms
from lowbit.flows.ptq import quantize
from lowbit.recipes import Mode, ObserverKind, Recipe, load_recipe
from lowbit.serialize import build_from_source, folder_bytes, save_quantized

__all__ = ["load_model", "run_ptq", "run_qat", "run_compress", "run_bench", "calibration_batches", "backend_of", "measure", "evaluation_for",
           "ImageEvaluation", "TextEvaluation"]

# Latency is measured on one batch of this size: per-sample cost at a realistic serving batch.
LATENCY_BATCH = 32


def load_model(source: str, weights: str | Path | None = None) -> nn.Module:
    """A trained fp32 model in eval mode: ``zoo:NAME`` (shipped weights) or ``file.py:factory`` + ``weights``.

    Raises:
        ValueError: bad source, missing weights for a file model, or weights that do not match (keys named).
    """
    if source.startswith("zoo:"):
        from lowbit.zoo import load

        return load(source[4:]).model
    model = build_from_source(source)
    if weights is None:
        raise ValueError(f"--weights is required for {source} (a .safetensors or .pt state dict)")
    path = Path(weights)
    if path.suffix == ".safetensors":
        from lowbit.zoo.registry import load_weights

        load_weights(model, path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"weights file {path} does not match the model: missing {missing}, unexpected {unexpected}")
    return model.eval()


def calibration_batches(count: int, batch: int = 64, seed: int = 0) -> list[torch.Tensor]:
    """``count`` Fashion-MNIST training images (a seeded random subset) in batches of ``batch``."""
    from lowbit.zoo.data import fashion_mnist

    if count < 1:
        raise ValueError(f"calib must be >= 1 sample, got {count}")
    images = fashion_mnist("train").tensors[0]
    chosen = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:count]]
    return list(chosen.split(batch))


def measure(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, size: int, backend: str,
            ) -> dict[str, Any]:
    """Accuracy (%), ``size`` in bytes, latency of one batch of :data:`LATENCY_BATCH`, and the backend's name."""
    return {
        "accuracy": round(accuracy(model, images, labels), 2),
        "bytes": size,
        "latency_ms": round(latency_ms(model, images[:LATENCY_BATCH]), 3),
        "backend": backend,
    }


class ImageEvaluation:
    """Fashion-MNIST classifiers: calibrate on a seeded training subset, score top-1 accuracy on the test set."""

    def __init__(self, eval_samples: int | None = None) -> None:
        from lowbit.zoo.data import fashion_mnist

        self.images, self.labels = fashion_mnist("test").tensors
        if eval_samples is not None:
            self.images, self.labels = self.images[:eval_samples], self.labels[:eval_samples]

    def calibration(self, count: int) -> list[torch.Tensor]:
        return calibration_batches(count)

    def measure(self, model: nn.Module, size: int, backend: str) -> dict[str, Any]:
        try:
            return measure(model, self.images, self.labels, size, backend)
        except RuntimeError as err:  # torch reports wrong input shapes as RuntimeError
            raise ValueError(f"the model cannot run on Fashion-MNIST test inputs of shape "
                             f"{tuple(self.images.shape[1:])}: {err}") from err


# Sentences held out of calibration to score text models (with the 50 Lee documents).
TEXT_EVAL_SENTENCES = 256


class TextEvaluation:
    """Sentence-embedding models (``minilm``): calibrate on standard-library sentences; score the mean cosine to
    the fp32 embeddings (the Lee documents plus held-out sentences) and the Spearman correlation of the Lee
    documents' similarities with the human judgements.
    """

    def __init__(self, reference: nn.Module, eval_samples: int | None = None, seed: int = 0) -> None:
        from lowbit.zoo.text import lee_documents, lee_similarities, stdlib_sentences

        pool = stdlib_sentences(100_000)  # every sentence there is, in a fixed order
        order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed)).tolist()
        self.pool = [pool[i] for i in order]
        held_out = self.pool[-min(eval_samples or TEXT_EVAL_SENTENCES, TEXT_EVAL_SENTENCES):]
        self.reference, self.documents, self.human = reference, lee_documents(), lee_similarities()
        self.texts = self.documents + held_out
        self._reference_embeddings: torch.Tensor | None = None

    def calibration(self, count: int) -> list[dict[str, torch.Tensor]]:
        available = len(self.pool) - TEXT_EVAL_SENTENCES
        if not 1 <= count <= available:
            raise ValueError(f"calib must be 1..{available} sentences for a text model, got {count}")
        chosen = self.pool[:count]
        return [self.reference.tokenize(chosen[i : i + 32]) for i in range(0, count, 32)]

    def measure(self, model: nn.Module, size: int, backend: str) -> dict[str, Any]:
        from lowbit.analysis.evaluation import mean_cosine, similarity_spearman
        from lowbit.zoo.minilm import encode

        if self._reference_embeddings is None:
            self._reference_embeddings = encode(self.reference, self.texts)
        embeddings = encode(model, self.texts, tokenizer_from=self.reference)
        example = self.reference.tokenize(self.documents[:LATENCY_BATCH])
        return {
            "cosine": round(mean_cosine(self._reference_embeddings, embeddings), 5),
            "spearman": round(similarity_spearman(embeddings[: len(self.documents)], self.human), 4),
            "bytes": size,
            # a batch of 32 documents takes about a second: fewer repeats than for the small image models
            "latency_ms": round(latency_ms(model, example, repeats=5, warmup=1), 3),
            "backend": backend,
        }


def evaluation_for(source: str, fp32_model: nn.Module | None = None, eval_samples: int | None = None,
                   ) -> ImageEvaluation | TextEvaluation:
    """How to calibrate and score the model from ``source``: text models (``zoo:minilm``) by embedding
    agreement with ``fp32_model`` (rebuilt from the zoo when not given), everything else by Fashion-MNIST
    accuracy."""
    from lowbit.zoo.registry import TEXT_MODELS, architecture

    if source.startswith("zoo:") and source[4:] in TEXT_MODELS:
        return TextEvaluation(fp32_model if fp32_model is not None else architecture(source[4:]), eval_samples)
    return ImageEvaluation(eval_samples)


# What actually runs: fp16/bf16 recipes execute in that dtype in PyTorch; integer recipes are simulated in float.
_BACKENDS = {Mode.FP16: "pytorch-fp16", Mode.BF16: "pytorch-bf16"}


def backend_of(recipe: Recipe) -> str:
    """The name of what executes a model quantized with ``recipe`` (reported next to every latency)."""
    return _BACKENDS.get(recipe.mode, "simulation")


def calibration_data(model: str, float_model: nn.Module, evaluation: ImageEvaluation | TextEvaluation, calib: int,
                     zero_shot: int | None, progress: bool) -> tuple[list[Any], str]:
    """Calibration batches and where they came from: ``calib`` samples of data (``"data:N"``) or ``zero_shot``
    samples distilled from ``float_model``'s BatchNorm statistics (``"zero-shot:N"``)."""
    if zero_shot is None:
        return evaluation.calibration(calib), f"data:{calib}"
    from lowbit.flows.zero_shot import zero_shot_data

    example = evaluation.calibration(1)[0]
    if not isinstance(example, torch.Tensor):
        raise ValueError(f"--zero-shot distils image-like tensor inputs; {model} takes {type(example).__name__}")
    return zero_shot_data(float_model, zero_shot, tuple(example.shape[1:]), progress=progress), \
        f"zero-shot:{zero_shot}"


def run_sensitivity(model: str, measures: Sequence[str], bits: Sequence[int] = (2, 3, 4, 6, 8),
                    recipe: str | Recipe = "w8", calib: int = 512, weights: str | Path | None = None,
                    zero_shot: int | None = None, plot: str | Path | None = None, progress: bool = False,
                    ) -> dict[str, Any]:
    """Per-layer sensitivity tables of ``model`` (:func:`lowbit.mixed.sensitivity`) on calibration batches.

    The Hessian measure's labels are the fp32 model's predictions (the batches carry none). ``plot``: a folder
    that receives ``sensitivity_<measure>.png`` per measure.

    Returns:
        ``{"model", "recipe", "bits", "calibration", "tables": [SensitivityTable.to_dict(), …], "plots": [paths]}``
    """
    from lowbit.mixed import prepare_subject, sensitivity

    spec = load_recipe(recipe)
    float_model = load_model(model, weights)
    batches, source = calibration_data(model, float_model, evaluation_for(model, float_model), calib, zero_shot,
                                       progress)
    subject = prepare_subject(float_model, spec, bits)
    tables = [sensitivity(subject, measure, batches, progress=progress) for measure in measures]
    plots: list[str] = []
    if plot is not None:
        from lowbit.reports import plot_sensitivity

        folder = Path(plot)
        folder.mkdir(parents=True, exist_ok=True)
        plots = [str(plot_sensitivity(t, folder / f"sensitivity_{t.measure}.png", title=model)) for t in tables]
    return {"model": model, "recipe": spec.name, "bits": sorted(set(bits)), "calibration": source,
            "tables": [t.to_dict() for t in tables], "plots": plots}


def run_ptq(model: str, recipe: str | Recipe, calib: int = 512, out: str | Path = "lowbit-out",
            observer: str | None = None, weights: str | Path | None = None, eval_samples: int | None = None,
            progress: bool = False, fp32: dict[str, Any] | None = None, zero_shot: int | None = None,
            mixed: dict[str, Any] | None = None) -> dict[str, Any]:
    """Quantize ``model`` with ``recipe`` (activation observer optionally replaced), save to ``out``, measure.

    ``mixed``: keyword arguments of :func:`lowbit.mixed.choose_bits` (``measure``, ``bits`` and one budget); the
    recipe's weight bits are then chosen per layer on the calibration batches, and the result gains ``"mixed"``
    (:meth:`lowbit.mixed.MixedPrecision.to_dict`: the bits chosen per layer, the budget, the predicted bytes).

    ``fp32`` reuses the baseline's measurements from an earlier call on the same model (the demo does, once per
    model) instead of measuring it again. ``zero_shot``: calibrate on that many samples distilled from the
    model's BatchNorm statistics (:func:`lowbit.flows.zero_shot.zero_shot_data`) instead of training data.

    Returns:
        ``{"model", "recipe", "observer", "calibration", "transforms", "fp32": {...}, "quantized": {...}}``
        (``calibration`` says which data calibrated: ``"data:N"`` or ``"zero-shot:N"``; ``transforms`` lists what
        the recipe's transforms changed; ``observer`` is null unless the
        recipe is static: only static recipes calibrate activations); each side holds ``accuracy``
        (Fashion-MNIST test, %; for ``zoo:minilm`` instead ``cosine``, the mean cosine between fp32 and quantized
        sentence embeddings, and ``spearman`` on the Lee similarities — see :class:`TextEvaluation`), ``bytes`` (file size of the saved model), ``latency_ms`` (median of one batch of
        32) and ``backend`` (what ran: ``pytorch-fp32`` for the baseline; ``pytorch-fp16``/``pytorch-bf16`` for
        float recipes, which really run in that dtype; ``simulation`` for integer recipes — fake quantization in
        float, not a speed result).
    """
    spec = load_recipe(recipe)
    if observer is not None:
        spec = dataclasses.replace(spec, activation_observer=ObserverKind(observer))
    float_model = load_model(model, weights)
    evaluation = evaluation_for(model, float_model, eval_samples)
    if fp32 is None:
        fp32 = evaluation.measure(float_model, fp32_bytes(float_model), "pytorch-fp32")
    batches, source = calibration_data(model, float_model, evaluation, calib, zero_shot, progress)
    chosen = None
    if mixed is not None:
        from lowbit.mixed import choose_bits

        chosen = choose_bits(float_model, batches=batches, recipe=spec, progress=progress, **mixed)
        spec = chosen.recipe
    qmodel = quantize(float_model, spec, calibration=batches, progress=progress)
    folder = save_quantized(qmodel, out, source=model)
    quantized = evaluation.measure(qmodel, folder_bytes(folder), backend_of(spec))
    quantized["path"] = str(folder)
    # only static recipes calibrate activations: elsewhere no observer had any say in the result
    observer_used = spec.activation_observer.value if spec.mode is Mode.STATIC else None
    result = {"model": model, "recipe": spec.name, "observer": observer_used, "calibration": source,
              "transforms": list(qmodel.quantization_summary.transforms), "fp32": fp32,
              "quantized": quantized}
    if chosen is not None:
        result["mixed"] = chosen.to_dict()
    write_result(folder, result, qmodel, float_model, batches,
                 sensitivity=chosen.table.to_dict() if chosen is not None else None,
                 pareto=chosen.pareto if chosen is not None else None)
    return result


def write_result(folder: Path, result: dict[str, Any], qmodel: nn.Module, float_model: nn.Module,
                 batches: list[Any], sensitivity: dict[str, Any] | None = None,
                 pareto: Callable[[], dict[str, Any] | None] | None = None) -> None:
    """Save ``result.json`` and the per-layer facts ``layers.json`` (with the error-source breakdown of
    :func:`lowbit.reports.error_sources.error_sources` on the first 4 batches) beside the model, for
    ``lowbit report``.

    The per-layer facts need the observers' ranges, which only the model in memory holds. A model they cannot be
    gathered for (a warning says why) gets ``{"error": reason}`` instead. ``sensitivity``: the table mixed precision
    chose from; ``pareto``: a callable returning its Pareto points (:meth:`lowbit.mixed.MixedPrecision.pareto`),
    called inside the same guard, since the report is an extra and the model is already saved.
    """
    from lowbit.reports.error_sources import error_sources
    from lowbit.reports.layers import layer_report

    folder = Path(folder)
    (folder / "result.json").write_text(json.dumps(result, indent=1))
    try:
        layers = layer_report(qmodel, float_model, batches)
        layers["error_sources"] = error_sources(qmodel, float_model, batches[:4])
        if sensitivity is not None:  # the table mixed precision chose bits from
            layers["sensitivity"] = sensitivity
        points = pareto() if pareto is not None else None  # cost against predicted loss: the choice's frontier
        if points is not None:
            layers["pareto"] = points
    except Exception as error:  # noqa: BLE001 - the report is an extra; the quantized model is already saved
        warnings.warn(f"lowbit: no per-layer report for {result.get('model')}: {error!r}", stacklevel=2)
        layers = {"error": repr(error)}
    (folder / "layers.json").write_text(json.dumps(layers))


def training_subset(count: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` Fashion-MNIST training images and labels (a seeded random subset; all 60000 for None).

    Raises:
        ValueError: ``count`` outside ``1 … 60000``.
    """
    from lowbit.zoo.data import fashion_mnist

    images, labels = fashion_mnist("train").tensors
    count = len(labels) if count is None else count
    if not 1 <= count <= len(labels):
        raise ValueError(f"train_samples must be in 1..{len(labels)}, got {count}")
    chosen = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:count]
    return images[chosen], labels[chosen]


def run_qat(model: str, recipe: str | Recipe | None = None, quantizer: str = "lsq", epochs: int = 1,
            out: str | Path = "lowbit-out", calib: int = 512, train_samples: int | None = None, lr: float = 0.01,
            batch_size: int = 128, seed: int = 0, weights: str | Path | None = None,
            freeze_bn_after: int | None = None, gradient_bits: int | None = None,
            progressive: tuple[int, ...] = (), two_stage: int | None = None, eval_samples: int | None = None,
            progress: bool = False) -> dict[str, Any]:
    """Quantization-aware training of an image classifier on Fashion-MNIST, saved and measured like :func:`run_ptq`.

    ``prepare`` (initialised on ``calib`` seeded training images) → ``fit`` (``train_samples`` seeded training
    images, all by default) → ``convert`` → ``save_quantized`` to ``out``. Without a ``recipe``, the quantizer's
    default (:meth:`lowbit.qat.QATConfig.default_recipe`: ``w4a4``, or ``w1a1`` for BNN and XNOR-Net, …). ``progressive``: widths to train at
    first, one epoch each (:class:`lowbit.qat.ProgressiveBits`); ``two_stage``: the epoch from which activations
    are quantized (:class:`lowbit.qat.TwoStage`).

    Returns:
        :func:`run_ptq`'s shape — ``{"model", "recipe", "observer": null, "calibration", "transforms": [], "fp32",
        "quantized"}`` — plus ``"qat": {"quantizer", "epochs", "train_samples", "history"}``.

    Raises:
        ValueError: a text model, or bad options (named).
    """
    from lowbit import qat

    if model.startswith("zoo:minilm"):
        raise ValueError("lowbit qat trains image classifiers on Fashion-MNIST; zoo:minilm is a text model")
    config = qat.QATConfig.for_quantizer(quantizer, gradient_bits=gradient_bits)
    spec = config.default_recipe() if recipe is None else load_recipe(recipe)
    float_model = load_model(model, weights)
    evaluation = ImageEvaluation(eval_samples)
    fp32 = evaluation.measure(float_model, fp32_bytes(float_model), "pytorch-fp32")
    images, labels = training_subset(train_samples, seed)
    trainable = qat.prepare(float_model, spec, config, calibration=calibration_batches(calib, seed=seed),
                            progress=progress)
    schedules: list[qat.Schedule] = []
    if progressive:
        schedules.append(qat.ProgressiveBits(tuple(progressive), epochs_per_stage=1))
    if two_stage is not None:
        schedules.append(qat.TwoStage(two_stage))
    fitted = qat.fit(trainable, (images, labels), epochs, lr=lr, batch_size=batch_size, seed=seed,
                     schedule=schedules, freeze_bn_after=freeze_bn_after, progress=progress)
    frozen = qat.convert(trainable)
    folder = save_quantized(frozen, out, source=model)
    quantized = evaluation.measure(frozen, folder_bytes(folder), backend_of(spec))
    quantized["path"] = str(folder)
    result = {"model": model, "recipe": spec.name, "observer": None, "calibration": f"data:{calib}",
              "transforms": [], "fp32": fp32, "quantized": quantized,
              "qat": {"quantizer": quantizer, "weights": config.weight_quantizer.value,
                      "activations": config.activation_quantizer.value, "epochs": epochs,
                      "train_samples": len(labels), "history": fitted.history}}
    write_result(folder, result, frozen, float_model, calibration_batches(calib, seed=seed))
    return result


def run_compress(model: str, sparsity: float = 0.92, bits: int = 5, out: str | Path = "lowbit-out",
                 scope: str = "global", prune_steps: int = 3, epochs_per_step: int = 2, finetune_epochs: int = 2,
                 lr: float = 0.01, centroid_lr: float = 3e-4, train_samples: int | None = None,
                 batch_size: int = 128, seed: int = 0, weights: str | Path | None = None,
                 eval_samples: int | None = None, progress: bool = False) -> dict[str, Any]:
    """Deep Compression of an image classifier (:func:`lowbit.flows.compress.deep_compress`), written to
    ``out/model.lbdc``, then *decoded from that file* and measured.

    Returns:
        ``{"model", "sparsity", "bits", "fp32": {"accuracy", "bytes", …}, "compressed": {"accuracy", "bytes",
        "path", …}, "stages": [...], "sizes": [...], "table": size table}`` — ``compressed.bytes`` is the size of the file at
        ``path``; ``fp32.bytes`` that of the fp32 state dict as safetensors. ``stages``: one record per training
        stage (pruning steps, centroid fine-tuning); ``sizes``: the model's bytes after each encoding stage —
        ``fp32`` (raw float32), ``pruned`` (float32 values + sparse indices), ``quantized`` (fixed-width codes +
        indices + codebooks), ``huffman``, each with the other tensors (biases: 4 bytes each in ``fp32``, as the file stores them
        after) — with ``fp32 / bytes``; ``table``: the per-layer size table.

    Raises:
        ValueError: a text model, or bad options (named).
    """
    from lowbit.flows.compress import deep_compress
    from lowbit.serialize import load_compressed, save_compressed

    if model.startswith("zoo:minilm"):
        raise ValueError("lowbit compress retrains image classifiers on Fashion-MNIST; zoo:minilm is a text model")
    float_model = load_model(model, weights)
    evaluation = ImageEvaluation(eval_samples)
    fp32 = evaluation.measure(float_model, fp32_bytes(float_model), "pytorch-fp32")
    images, labels = training_subset(train_samples, seed)
    result = deep_compress(float_model, (images, labels), sparsity=sparsity, bits=bits,
                           source=model, scope=scope, prune_steps=prune_steps, epochs_per_step=epochs_per_step,
                           finetune_epochs=finetune_epochs, lr=lr, centroid_lr=centroid_lr, batch_size=batch_size,
                           seed=seed, progress=progress)
    path = save_compressed(result.data, out)
    decoded = load_compressed(path)  # what the user gets back, not the in-memory model
    compressed = evaluation.measure(decoded, path.stat().st_size, "pytorch-fp32 (decoded)")
    compressed["path"] = str(path)
    total = result.table["total"]
    sizes = [{"stage": stage, "bytes": total[stage], "ratio": round(total["fp32"] / total[stage], 2)}
             for stage in ("fp32", "pruned", "quantized", "huffman")]
    summary = {"model": model, "sparsity": sparsity, "bits": bits, "fp32": fp32, "compressed": compressed,
               "stages": result.stages, "sizes": sizes, "table": result.table}
    (path.parent / "result.json").write_text(json.dumps(summary, indent=1))  # for `lowbit report`
    return summary


def run_bench(model: str, recipe: str | Recipe = "w8a8", calib: int = 256, weights: str | Path | None = None,
              batches: tuple[int, ...] = (1, 8), threads: tuple[int, ...] = (1, 2), rounds: int = 3,
              ) -> dict[str, Any]:
    """Time fp32 PyTorch, fp32 ONNX Runtime, ``model`` quantized with ``recipe`` in ONNX Runtime (int8) and, when
    the recipe is static, the same model in lowbit's integer engine.

    Every measurement runs in its own process (see :mod:`lowbit.export.bench`).

    Returns:
        ``{"model", "recipe", "bytes": {"onnxruntime-fp32", "onnxruntime-int8"}, "engine": null or why it was not
        timed, "cells": [{"batch", "threads", "pytorch-fp32", "onnxruntime-fp32", "onnxruntime-int8",
        "engine-int8" (ms, static recipes), "speedup_vs_best_fp32"}]}``.

    Raises:
        ValueError: a model whose inputs are not one tensor, or a recipe the ONNX export cannot carry.
    """
    import tempfile

    from lowbit.export import Candidate, export_float_onnx, export_onnx, time_candidates

    spec = load_recipe(recipe)
    float_model = load_model(model, weights)
    batches_in = evaluation_for(model, float_model).calibration(calib)
    if not isinstance(batches_in[0], torch.Tensor):
        raise ValueError(f"bench times models with one tensor input; {model} takes {type(batches_in[0]).__name__}")
    qmodel = quantize(float_model, spec, calibration=batches_in, progress=False)
    example = batches_in[0][:1]
    with tempfile.TemporaryDirectory() as folder:
        fp32 = export_float_onnx(float_model, example, Path(folder) / "fp32.onnx")
        int8 = export_onnx(qmodel, example, Path(folder) / "int8.onnx")
        candidates = {"pytorch-fp32": Candidate("torch", model), "onnxruntime-fp32": Candidate("ort", str(fp32)),
                      "onnxruntime-int8": Candidate("ort", str(int8))}
        engine_note = None
        try:
            from lowbit.engine import lower

            lower(qmodel, example).save(Path(folder) / "program")
            candidates["engine-int8"] = Candidate("engine", str(Path(folder) / "program"))
        except ValueError as why:  # e.g. a weight-only recipe: nothing to run in integers end to end
            engine_note = str(why)
        cells = []
        for batch in batches:
            for count in threads:
                cell = {"batch": batch, "threads": count,
                        **time_candidates(candidates, tuple(example.shape[1:]), batch, count, rounds)}
                best = min(cell["pytorch-fp32"], cell["onnxruntime-fp32"])
                cell["speedup_vs_best_fp32"] = round(best / cell["onnxruntime-int8"], 2)
                cells.append(cell)
        sizes = {"onnxruntime-fp32": fp32.stat().st_size, "onnxruntime-int8": int8.stat().st_size}
    return {"model": model, "recipe": spec.name, "bytes": sizes, "engine": engine_note, "cells": cells}
