"""Deep Compression as one verb: prune → retrain → share weights (k-means) → fine-tune centroids → encode.

:func:`deep_compress` runs the pipeline of Han et al. (2016) on a trained model with the user's training data
and returns the compressed model, the file's bytes (:mod:`lowbit.compress.container`) and the paper-style size
table (:func:`size_table`), every figure measured on the encoded bytes.

Example:
    >>> import torch
    >>> from torch import nn
    >>> torch.manual_seed(0)
    <torch._C.Generator object at ...>
    >>> model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    >>> x, y = torch.randn(256, 16), torch.randint(0, 4, (256,))
    >>> result = deep_compress(model, (x, y), sparsity=0.8, bits=3, source="demo", progress=False)
    >>> result.table["total"]["weights_kept"] < 0.25, len(result.data) == result.table["total"]["file"]
    (True, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from lowbit.compress.container import encode_model, encoded_layers, read_header
from lowbit.compress.encoding import EncodedLayer
from lowbit.compress.prune import PruneScope, prune_iteratively
from lowbit.compress.share import share_weights, shared_layers
from lowbit.flows.qat_train import fit
from lowbit.functional.codebook import check_shared_bits

__all__ = ["CompressionResult", "deep_compress", "plain_state", "size_table"]


@dataclass
class CompressionResult:
    """What :func:`deep_compress` produced: the model (still shared: its layers train centroids; bake the values in
    with :func:`lowbit.compress.unshare_weights`), the file bytes, the size table,
    and one record per training stage (pruning steps, then centroid fine-tuning)."""

    model: nn.Module
    data: bytes
    table: dict[str, Any]
    stages: list[dict[str, Any]] = field(default_factory=list)


def _default_index_bits(module: nn.Module) -> int:
    return 8 if isinstance(module, nn.Conv2d) else 5  # the paper's widths: 8 for conv, 5 for fully connected


def plain_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, tuple[torch.Tensor, torch.Tensor, int]]]:
    """The state dict ``model`` has without its sharing parametrizations, and ``{key: (codes, centroids, bits)}``
    of its shared weights (see :mod:`lowbit.compress.share`)."""
    layers = shared_layers(model)
    shared = {f"{name}.weight": (layer.codes.clone(), layer.centroids.detach().clone(), layer.bits)
              for name, layer in layers.items()}
    # Renamed in place rather than through a deepcopy: removing a parametrization from a copy deletes the
    # property from the generated class the copy shares with ``model``.
    renamed = {f"{name}.parametrizations.weight.original": name for name in layers}
    dropped = {f"{name}.parametrizations.weight.0.codes" for name in layers}
    state = {}
    for key, tensor in model.state_dict().items():
        if key in renamed:
            name = renamed[key]
            state[f"{name}.weight"] = layers[name].module.weight.detach().clone()
        elif key not in dropped:
            state[key] = tensor
    return state, shared


def size_table(shared: dict[str, tuple[torch.Tensor, torch.Tensor, int]], layers: dict[str, EncodedLayer],
               data: bytes) -> dict[str, Any]:
    """Deep Compression's Tables 2–5 for the shared weights ``shared`` (as :func:`plain_state` gives them), their
    encodings ``layers`` (:func:`lowbit.compress.container.encoded_layers`) and the file ``data`` holding them.

    Per shared layer: ``weights``, ``weights_kept`` (fraction of non-zero codes), ``code_bits``, ``index_bits``
    (fixed widths after pruning + quantization), ``code_bits_huffman``/``index_bits_huffman`` (average bits per
    stored entry after Huffman, tables included) and bytes at each stage (``fp32``, ``pruned``, ``quantized``,
    ``huffman``, ``stored``). ``total`` sums them and adds ``raw``, the bytes of the other tensors as the file
    stores them (read from its header), to every stage but ``fp32`` (which counts them at 4 bytes per value);
    ``file`` is ``len(data)`` (header included); ``ratios`` are ``fp32 / stage``.
    """
    header, _ = read_header(data)
    rows: dict[str, Any] = {}
    kept = 0
    for key, encoded in layers.items():
        codes, _, bits = shared[key]
        fields, entries = encoded.fields, max(encoded.fields["entries"], 1)
        nonzero = int((codes != 0).sum())
        kept += nonzero
        huffman_codes = fields.get("code_nbits", 0) + 8 * fields["code_table_bytes"]
        huffman_gaps = fields.get("gap_nbits", 0) + 8 * fields["gap_table_bytes"]
        rows[key] = {"weights": codes.numel(), "weights_kept": round(nonzero / max(codes.numel(), 1), 4),
                     "entries": fields["entries"], "code_bits": bits, "index_bits": fields["index_bits"],
                     "code_bits_huffman": round(huffman_codes / entries, 2) if fields["huffman"] else None,
                     "index_bits_huffman": round(huffman_gaps / entries, 2) if fields["huffman"] else None,
                     **encoded.stage_bytes}
    raw_entries = [e for e in header["tensors"] if e["kind"] == "raw"]
    raw = sum(e["bytes"] for e in raw_entries)
    raw_fp32 = sum(4 * math.prod(e["shape"]) for e in raw_entries)
    total: dict[str, Any] = {"weights": sum(r["weights"] for r in rows.values())}
    total["weights_kept"] = round(kept / max(total["weights"], 1), 4)
    total["fp32"] = sum(r["fp32"] for r in rows.values()) + raw_fp32
    for stage in ("pruned", "quantized", "huffman", "stored"):
        total[stage] = sum(r[stage] for r in rows.values()) + raw
    total.update(raw=raw, file=len(data))
    total["ratios"] = {stage: round(total["fp32"] / total[stage], 2) for stage in ("pruned", "quantized", "huffman",
                                                                                  "file")}
    return {"layers": rows, "total": total}


def _check_layer_names(model: nn.Module, names: dict[str, int], field: str, include: tuple[type, ...], low: int,
                       ) -> None:
    modules = dict(model.named_modules())
    for name, value in names.items():
        if not isinstance(modules.get(name), include):
            raise ValueError(f"{field} names {name!r}, which is not a Linear/Conv2d layer of the model")
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 8:
            raise ValueError(f"{field}[{name!r}] must be an int in {low}..8, got {value!r}")


def _round_biases_to_half(model: nn.Module, include: tuple[type, ...]) -> None:
    """Biases to their nearest float16 values where float16 can hold them (``|b| ≤ 65504``); a bias tensor with a
    larger value stays float32 (and is stored so)."""
    with torch.no_grad():
        for module in model.modules():
            bias = getattr(module, "bias", None)
            if isinstance(module, include) and bias is not None and bool((bias.abs() <= 65504).all()):
                bias.copy_(bias.to(torch.float16).to(bias.dtype))


def deep_compress(
    model: nn.Module,
    train_data: Any,
    *,
    sparsity: float,
    bits: int | dict[str, int],
    source: str,
    scope: PruneScope | str = PruneScope.GLOBAL,
    prune_steps: int = 3,
    epochs_per_step: int = 1,
    finetune_epochs: int = 1,
    lr: float = 0.01,
    centroid_lr: float = 1e-4,
    index_bits: dict[str, int] | None = None,
    batch_size: int = 128,
    seed: int = 0,
    half_biases: bool = True,
    progress: bool = True,
) -> CompressionResult:
    """Compress a trained model in place with Deep Compression and encode it.

    Pruning reaches ``sparsity`` in ``prune_steps`` steps that each prune the same fraction of the remaining
    weights (``1 − (1 − sparsity)^(i/prune_steps)``), each followed by
    ``epochs_per_step`` epochs of SGD (momentum 0.9, ``lr`` decayed by a cosine over the step's epochs, set per
    epoch) with the masks holding
    (:func:`lowbit.compress.prune_iteratively`). Every Linear/Conv2d weight (or those ``bits`` names) is then
    shared with ``2^bits − 1`` linear-initialised k-means centroids plus the zero
    (:func:`lowbit.compress.share_weights`), and every trainable tensor but the unshared weights — centroids,
    biases, batch-norm parameters — is fine-tuned ``finetune_epochs`` epochs with Adam at ``centroid_lr`` (a
    centroid's gradient sums over thousands of weights, so its scale varies by layer: Adam's per-parameter step
    suits it).

    Args:
        model: trained float model; modified in place (it ends shared).
        train_data: ``(inputs, targets)`` or anything :func:`lowbit.qat.fit` takes.
        sparsity: overall fraction of pruned weights in ``[0, 1)``.
        bits: code width for every Linear/Conv2d weight (1..8), or ``{layer name: bits}`` (layers not named stay
            unshared: pruned, stored raw, frozen during fine-tuning).
        source: the architecture name written into the file (``zoo:mlp``), to rebuild it when loading.
        scope: ``"global"`` (one magnitude threshold for all layers, the default) or ``"layer"``.
        index_bits: gap width per layer name; default 8 for conv and 5 for linear layers, as in the paper.
        finetune_epochs: 0 skips centroid fine-tuning.
        half_biases: round the Linear/Conv2d biases to float16 values at the end, which the file then stores in
            2 bytes each; the returned model has the rounded biases. The change is ≤ 2⁻¹¹ relative for
            ``|b| ≥ 2⁻¹⁴`` (float16's normal range) and ≤ 2⁻²⁵ absolute below; a bias tensor with a value beyond
            65504 stays float32.

    Returns:
        A :class:`CompressionResult` whose ``data`` decodes (:func:`lowbit.compress.decode_model`) to exactly the
        returned model's state.

    Raises:
        ValueError: bad ``sparsity``, ``bits``, ``prune_steps`` or epochs (named).
    """
    for name, value, low in (("prune_steps", prune_steps, 1), ("epochs_per_step", epochs_per_step, 0),
                             ("finetune_epochs", finetune_epochs, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if isinstance(sparsity, bool) or not isinstance(sparsity, int | float) or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    include = (nn.Linear, nn.Conv2d)
    if isinstance(bits, dict):
        _check_layer_names(model, bits, "bits", include, 1)
    else:
        check_shared_bits(bits)
    _check_layer_names(model, index_bits or {}, "index_bits", include, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    losses: dict[int, float] = {}

    def retrain(net: nn.Module, step: int) -> None:
        for epoch in range(epochs_per_step):
            # a cosine decay over each step's epochs, set per epoch (the pruner holds this optimizer throughout)
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs_per_step))
            history = fit(net, train_data, 1, optimizer=optimizer, batch_size=batch_size,
                          seed=seed + 100 * step + epoch, progress=progress).history
            losses[step] = round(history[-1]["loss"], 4)

    # Each step prunes the same fraction of the weights still kept, so later steps, which cut into larger
    # weights, take fewer of them: 1 − (1 − S)^(i/n).
    targets = [1 - (1 - sparsity) ** ((i + 1) / prune_steps) for i in range(prune_steps)]
    targets[-1] = sparsity  # exact, whatever the rounding
    records = prune_iteratively(model, targets, retrain, scope, optimizer=optimizer, include=include)
    stages: list[dict[str, Any]] = [
        {"stage": f"prune {r['stage'] + 1}/{prune_steps}", "target": round(r["target"], 4),
         "sparsity": round(r["sparsity"], 4), "loss": losses.get(r["stage"])} for r in records]
    share_weights(model, bits, include=include, seed=seed)
    if finetune_epochs:
        # layers left unshared (a dict of bits not naming them) stay as pruned: frozen while centroids train
        frozen = [m.weight for m in model.modules() if isinstance(m, include) and m.weight.requires_grad
                  and not parametrize.is_parametrized(m, "weight")]
        for weight in frozen:
            weight.requires_grad_(False)
        tuner = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=centroid_lr)
        history = fit(model, train_data, finetune_epochs, optimizer=tuner, batch_size=batch_size, seed=seed + 1000,
                      progress=progress).history
        for weight in frozen:
            weight.requires_grad_(True)
        stages.append({"stage": "fine-tune centroids", "loss": round(history[-1]["loss"], 4)})
    if half_biases:
        _round_biases_to_half(model, include)
    model.eval()
    modules = dict(model.named_modules())
    widths = {f"{name}.weight": (index_bits or {}).get(name, _default_index_bits(modules[name]))
              for name in shared_layers(model)}
    state, shared = plain_state(model)
    layers = encoded_layers(shared, widths)
    data = encode_model(state, shared, source, widths, layers=layers)
    return CompressionResult(model, data, size_table(shared, layers, data), stages)
