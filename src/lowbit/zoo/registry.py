"""``lowbit.zoo.load(name)``: a trained reference model with its data and model card.

Example:
    >>> entry = load("lenet5")
    >>> entry.card["accuracy"] > 85, entry.model.training, len(entry.test)
    (True, False, 10000)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import nn
from torch.utils.data import Dataset

from lowbit.zoo.data import fashion_mnist
from lowbit.zoo.models import MODEL_NAMES, build

__all__ = ["ZooEntry", "load", "available", "WEIGHTS_DIR", "load_weights"]

WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass
class ZooEntry:
    """A reference model (fp32, eval mode), its preprocessed train/test data and its card.

    ``train``/``test`` yield ``(input, label)`` already preprocessed for ``model``; ``card`` holds the fp32 test
    accuracy and how the weights were made.
    """

    name: str
    model: nn.Module
    train: Dataset
    test: Dataset
    card: dict[str, Any] = field(default_factory=dict)


def available() -> tuple[str, ...]:
    """Names :func:`load` accepts."""
    return MODEL_NAMES


def load_weights(model: nn.Module, path: Path) -> nn.Module:
    """Load a safetensors state dict into ``model`` strictly.

    Raises:
        ValueError: missing or unexpected keys, or shape mismatches, each named.
    """
    state = load_file(str(path))
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        details = [f"missing {missing}" if missing else "", f"unexpected {unexpected}" if unexpected else "",
                   "shape mismatch " + ", ".join(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                                                 for k in wrong) if wrong else ""]
        raise ValueError(f"weights file {path} does not match the model: " + "; ".join(d for d in details if d))
    model.load_state_dict(state)
    return model


def load(name: str) -> ZooEntry:
    """The trained model ``name`` (one of :func:`available`) with Fashion-MNIST train/test sets.

    Raises:
        ValueError: unknown name.
        FileNotFoundError: shipped weights missing (the message names ``python -m lowbit.zoo.train NAME``).
        lowbit.zoo.data.DatasetNotFound: Fashion-MNIST not installed.
    """
    model = build(name)  # validates the name
    weights, card_file = WEIGHTS_DIR / f"{name}.safetensors", WEIGHTS_DIR / f"{name}.json"
    if not weights.is_file():
        raise FileNotFoundError(f"no weights for {name!r} at {weights}; train them with python -m lowbit.zoo.train {name}")
    load_weights(model, weights).eval()
    card = json.loads(card_file.read_text()) if card_file.is_file() else {}
    return ZooEntry(name, model, fashion_mnist("train"), fashion_mnist("test"), card)
