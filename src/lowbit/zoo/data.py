"""Offline image data: Fashion-MNIST from the Debian package ``dataset-fashion-mnist``, and scikit-learn's digits.

Nothing is downloaded. Fashion-MNIST is read from ``$LOWBIT_DATA`` if set, else
``/usr/share/datasets/fashion-mnist`` (the four IDX files, gzipped or not). A missing file is a
:class:`DatasetNotFound` that says how to install it.

Example:
    >>> train = fashion_mnist("train")
    >>> len(train), train[0][0].shape, int(train[0][1])
    (60000, torch.Size([1, 28, 28]), 9)
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

__all__ = ["DatasetNotFound", "fashion_mnist", "digits", "FASHION_MEAN", "FASHION_STD", "FASHION_CLASSES"]

DEFAULT_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
# Per-pixel mean and standard deviation of the 60,000 training images scaled to [0, 1].
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DatasetNotFound(FileNotFoundError):
    """A data set is not on this machine; the message says how to get it."""


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (big-endian header: magic with dtype code and rank, then one uint32 per dimension)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    rank = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=rank, offset=4).astype(np.int64)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path} holds {data.size} bytes, its header says {tuple(dims)}")
    return data.reshape(tuple(dims))


def _locate(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise DatasetNotFound(
        f"Fashion-MNIST file {stem}(.gz) not found in {folder}. Install it with "
        "`apt-get install dataset-fashion-mnist` (make demo / make test do), or point LOWBIT_DATA at a folder "
        "holding the four IDX files."
    )


def fashion_mnist(split: str, normalize: bool = True) -> TensorDataset:
    """Fashion-MNIST ``split`` ("train": 60,000 or "test": 10,000) as ``(image [1, 28, 28] float32, label)``.

    Args:
        split: "train" or "test".
        normalize: scale to [0, 1] then standardise with :data:`FASHION_MEAN` / :data:`FASHION_STD` (the zoo
            models expect this); False leaves values in [0, 1].

    Raises:
        ValueError: unknown split.
        DatasetNotFound: the files are missing.
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = Path(os.environ.get("LOWBIT_DATA", DEFAULT_FASHION_DIR))
    images_file, labels_file = (_locate(folder, stem) for stem in _FILES[split])
    images = torch.from_numpy(_read_idx(images_file).copy()).to(torch.float32).div_(255.0).unsqueeze(1)
    labels = torch.from_numpy(_read_idx(labels_file).astype(np.int64))
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images_file} has {images.shape[0]} images but {labels_file} has {labels.shape[0]} labels")
    if normalize:
        images = (images - FASHION_MEAN) / FASHION_STD
    return TensorDataset(images, labels)


def digits(split: str, test_fraction: float = 0.25, seed: int = 0) -> TensorDataset:
    """scikit-learn's 8×8 digits (1,797 images) as ``(image [1, 8, 8] float32 in [0, 1], label)``, split by seed.

    Example:
        >>> train, test = digits("train"), digits("test")
        >>> len(train) + len(test), train[0][0].shape
        (1797, torch.Size([1, 8, 8]))
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    cut = int(round(len(labels) * (1 - test_fraction)))
    chosen = order[:cut] if split == "train" else order[cut:]
    return TensorDataset(images[chosen], labels[chosen])
