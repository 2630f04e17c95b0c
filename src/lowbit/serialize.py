"""Save and load quantized models without pickle: ``model.safetensors`` + ``lowbit.json`` in a folder.

The safetensors file holds the integer weight codes — bit-packed below 8 bits
(:mod:`lowbit.functional.packing`), binary ±1 weights at one bit each — with their qparams, the float biases and the frozen activation qparams;
calibration statistics are not saved. ``lowbit.json`` records the format, the recipe and where the
architecture comes from (``zoo:NAME`` or ``path/to/file.py:factory``), so :func:`load_quantized` rebuilds the
same structure and fills it. The bytes on disk are what :func:`folder_bytes` reports.

Example:
    >>> import tempfile, torch, lowbit
    >>> from lowbit.zoo import build
    >>> q = lowbit.quantize(build("mlp").eval(), "w4-g128", progress=False)
    >>> folder = save_quantized(q, tempfile.mkdtemp(), source="zoo:mlp")
    >>> folder_bytes(folder) < 266_610 * 4 / 6          # fp32 would be ~1.07 MB; 4-bit codes + scales
    True
    >>> again = load_quantized(folder)
    >>> x = torch.randn(2, 1, 28, 28)
    >>> torch.equal(q(x), again(x))
    True
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lowbit.flows.ptq import _prepare, bind_accumulator_bias
from lowbit.functional.packing import pack, unpack
from lowbit.nn.binary_quant import SignQuantizer
from lowbit.nn.layers import QuantConv, QuantLinear
from lowbit.recipes import Recipe
from lowbit.transforms.fold_bn import replace_module

__all__ = ["save_quantized", "load_quantized", "folder_bytes", "build_from_source", "FORMAT", "COMPRESSED_FILE",
           "save_compressed", "load_compressed", "is_compressed", "compressed_file"]

# The format tag saved in every quantized model's metadata.
FORMAT = "lowbit-quantized/1"
_WEIGHTS, _META = "model.safetensors", "lowbit.json"
COMPRESSED_FILE = "model.lbdc"  # Deep Compression's file (lowbit.compress.container)


def build_from_source(source: str) -> nn.Module:
    """An (untrained) architecture from ``zoo:NAME`` or ``path/to/file.py:factory``.

    Raises:
        ValueError: a source of another form, a missing file, or a factory that is not there.
    """
    if source.startswith("zoo:"):
        from lowbit.zoo.registry import architecture

        return architecture(source[4:])
    path, sep, factory = source.rpartition(":")
    if not sep or not path.endswith(".py"):
        raise ValueError(f"model source must be 'zoo:NAME' or 'path/to/file.py:factory', got {source!r}")
    if not Path(path).is_file():
        raise ValueError(f"model source file {path} does not exist")
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, factory, None)):
        raise ValueError(f"{path} has no callable {factory!r}")
    model = getattr(module, factory)()
    if not isinstance(model, nn.Module):
        raise ValueError(f"{source} returned {type(model).__name__}, not an nn.Module")
    return model


def _calibration_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the observers inside activation quantizers (calibration statistics, never saved)."""
    from lowbit.nn.activation import ActivationQuantizer

    keys: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, ActivationQuantizer) and module.observer is not None:
            prefix = f"{name}.observer." if name else "observer."
            keys |= {prefix + k for k in module.observer.state_dict()}
    return keys


def _saved_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, object]]]:
    """Tensors to write (observer statistics left out, sub-byte codes packed) and the packing records."""
    skip = _calibration_keys(model)
    state = {k: v for k, v in model.state_dict().items() if k not in skip}
    packed: dict[str, dict[str, object]] = {}
    for name, module in model.named_modules():
        if isinstance(module, (QuantLinear, QuantConv)) and module.weight_spec.bits < 8:
            key = f"{name}.weight_q" if name else "weight_q"
            spec = module.weight_spec
            codes = state.pop(key)
            if bool(codes.abs().eq(1).all()):  # binary weights (±1 on a 2-bit grid): one bit each, 1 ↦ +1
                state[key + ".packed"] = pack(codes.gt(0).to(torch.int32), 1, False)
                packed[key] = {"bits": 1, "signed": False, "signs": True, "shape": list(codes.shape)}
                continue
            state[key + ".packed"] = pack(codes, spec.bits, spec.signed)
            packed[key] = {"bits": spec.bits, "signed": spec.signed, "shape": list(module.weight_q.shape)}
    return {k: v.contiguous() for k, v in state.items()}, packed


def save_quantized(model: nn.Module, folder: str | Path, source: str) -> Path:
    """Write ``model`` (from :func:`lowbit.quantize`) into ``folder``; returns the folder.

    Args:
        model: a quantized model (it carries its recipe).
        folder: created if missing; existing files of the same names are replaced.
        source: where the architecture comes from: ``zoo:NAME`` or ``path/to/file.py:factory``.

    Raises:
        ValueError: a model that did not come from :func:`lowbit.quantize`, or unfrozen activation quantizers.
    """
    recipe = getattr(model, "lowbit_recipe", None)
    if not isinstance(recipe, Recipe):
        raise ValueError("save_quantized needs a model returned by lowbit.quantize (it records the recipe)")
    from lowbit.nn.activation import ActivationQuantizer

    unfrozen = [n for n, m in model.named_modules() if isinstance(m, ActivationQuantizer) and not m.dynamic
                and not m.frozen]
    if unfrozen:
        raise ValueError(f"activation quantizers not calibrated: {', '.join(unfrozen[:5])}")
    build_from_source(source)  # fail now, not at load time, on a source that cannot be rebuilt
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state, packed = _saved_state(model)
    save_file(state, str(folder / _WEIGHTS))
    meta = {"format": FORMAT, "source": source, "recipe": recipe.to_dict(), "packed": packed}
    summary = getattr(model, "quantization_summary", None)
    if getattr(summary, "smoothed", None):
        meta["smoothed"] = list(summary.smoothed)  # layers SmoothQuant changed: load rebuilds their structure
    if getattr(summary, "splits", None):
        meta["splits"] = dict(summary.splits)  # channels outlier splitting duplicated: load grows the layers again
    signs = [name for name, module in model.named_modules() if isinstance(module, SignQuantizer)]
    if signs:
        meta["sign_edges"] = signs  # a binary network's sign activations: no recipe grid describes them
    (folder / _META).write_text(json.dumps(meta, indent=1) + "\n")
    return folder


def load_quantized(folder: str | Path, model: nn.Module | None = None) -> nn.Module:
    """The quantized model saved in ``folder``, ready to run.

    Args:
        folder: written by :func:`save_quantized`.
        model: the float architecture to fill (its weights do not matter); default: rebuilt from the source.

    Raises:
        ValueError: not a lowbit folder, another format version, or tensors that do not match the structure
            (keys named).
    """
    folder = Path(folder)
    if not (folder / _META).is_file() or not (folder / _WEIGHTS).is_file():
        raise ValueError(f"{folder} is not a lowbit quantized model (needs {_META} and {_WEIGHTS})")
    meta = json.loads((folder / _META).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{folder / _META}: format {meta.get('format')!r}, this lowbit reads {FORMAT!r}")
    recipe = Recipe.from_dict(meta["recipe"], where=str(folder / _META))
    structure, _ = _prepare(model if model is not None else build_from_source(meta["source"]), recipe, False,
                            None, True, smoothed=meta.get("smoothed"), splits=meta.get("splits"))
    for name in meta.get("sign_edges", []):
        replace_module(structure, name, SignQuantizer(getattr(structure.get_submodule(name), "label", name)))
    state = load_file(str(folder / _WEIGHTS))
    for key, info in meta.get("packed", {}).items():
        state[key] = unpack(state.pop(key + ".packed"), int(info["bits"]), bool(info["signed"]), tuple(info["shape"]))
        if info.get("signs"):
            state[key] = state[key].to(torch.int8) * 2 - 1  # bits back to ±1 codes
    _add_gained_biases(structure, state)
    own = {k: v for k, v in structure.state_dict().items() if k not in _calibration_keys(structure)}
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    # activation qparams are empty until frozen, so only other tensors must agree in shape
    wrong = sorted(k for k in set(own) & set(state) if own[k].numel() and own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(f"{folder / _WEIGHTS} does not match the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, shape mismatch {wrong[:5]}")
    structure.load_state_dict(state, strict=False)
    bind_accumulator_bias(structure)  # the integer-grid bias follows from the loaded scales (not stored twice)
    structure.lowbit_source = meta["source"]  # where the architecture came from: decides how it is evaluated
    return structure


def _add_gained_biases(structure: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give a bias to each layer that gained one before it was saved (bias absorption and bias correction add a
    bias to layers built without one), so the saved tensors fit."""
    for name, module in structure.named_modules():
        key = f"{name}.bias" if name else "bias"
        if isinstance(module, (QuantConv, QuantLinear)) and module.bias is None and key in state:
            module.bias = nn.Parameter(torch.zeros_like(state[key]), requires_grad=False)


def folder_bytes(folder: str | Path) -> int:
    """Bytes of the files :func:`save_quantized` wrote (what the model costs on disk)."""
    folder = Path(folder)
    return sum((folder / name).stat().st_size for name in (_WEIGHTS, _META))


def save_compressed(data: bytes, folder: str | Path) -> Path:
    """Write a Deep Compression file (:func:`lowbit.compress.container.encode_model`'s bytes) as
    ``folder/model.lbdc``; returns the file's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / COMPRESSED_FILE
    path.write_bytes(data)
    return path


def compressed_file(path: str | Path) -> Path:
    """The ``.lbdc`` file ``path`` names: itself, or ``model.lbdc`` inside a folder (which may not exist)."""
    path = Path(path)
    return path / COMPRESSED_FILE if path.is_dir() else path


def is_compressed(path: str | Path) -> bool:
    """Whether ``path`` is a ``.lbdc`` file or a folder holding ``model.lbdc``."""
    file = compressed_file(path)
    return file.is_file() and file.suffix == ".lbdc"


def load_compressed(path: str | Path) -> nn.Module:
    """The fp32 model decoded from a Deep Compression file (or a folder holding ``model.lbdc``), in eval mode.

    The architecture is rebuilt from the source the file names; every tensor is filled bit for bit.

    Raises:
        ValueError: not a compressed file, a corrupt one, or tensors that do not match the architecture (named).
    """
    from lowbit.compress.container import decode_model

    file = compressed_file(path)
    if not file.is_file():
        raise ValueError(f"{path} is not a lowbit compressed model (needs {COMPRESSED_FILE})")
    source, state = decode_model(file.read_bytes())
    model = build_from_source(source)
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if (own[k].shape, own[k].dtype) != (state[k].shape, state[k].dtype))
    if missing or unexpected or wrong:
        raise ValueError(f"{file} does not match {source}: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                         f"shape or dtype mismatch {wrong[:5]}")
    model.load_state_dict(state)
    model.lowbit_source = source
    return model.eval()
