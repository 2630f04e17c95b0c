"""Offline text: gensim's bundled Lee corpus (50 news documents with a 50×50 human similarity matrix), the
Pang & Lee polarity sentences, and sentences from the Python standard library's docstrings.

gensim ships these files as test data (the ``nlp`` extra installs it); nothing is downloaded.

Example:
    >>> docs, sims = lee_documents(), lee_similarities()
    >>> len(docs), sims.shape, float(sims[0, 0]), bool((sims == sims.T).all())
    (50, torch.Size([50, 50]), 1.0, True)
    >>> len(stdlib_sentences(100))
    100
"""

from __future__ import annotations

import importlib
import inspect
import re
import warnings
from pathlib import Path

import torch
from torch.utils.data import Dataset

__all__ = ["TextDataset", "lee_documents", "lee_similarities", "polarity_sentences", "stdlib_sentences", "TextDataNotFound"]

# Modules whose docstrings give the sentences: fixed, so the set is the same on every machine with Python 3.11.
_STDLIB_MODULES = ("json", "collections", "pathlib", "itertools", "functools", "re", "os", "subprocess", "argparse",
                   "logging", "datetime", "decimal", "fractions", "statistics", "random", "textwrap", "string",
                   "heapq", "bisect", "contextlib", "dataclasses", "enum", "typing", "shutil", "tempfile", "csv",
                   "sqlite3", "zipfile", "tarfile", "gzip", "hashlib", "hmac", "secrets", "uuid", "socket", "ssl",
                   "http.client", "urllib.parse", "email.message", "xml.etree.ElementTree", "unittest", "doctest",
                   "pdb", "inspect", "ast", "dis", "threading", "multiprocessing", "asyncio", "queue", "sched")


class TextDataset(Dataset):
    """Sentences with integer labels as a torch Dataset yielding ``(text, label)``.

    Example:
        >>> data = TextDataset(["good film", "dull plot"], [1, 0])
        >>> len(data), data[1]
        (2, ('dull plot', 0))
    """

    def __init__(self, texts: list[str], labels: list[int]) -> None:
        if len(texts) != len(labels):
            raise ValueError(f"TextDataset needs one label per text, got {len(texts)} texts and {len(labels)} labels")
        self.texts, self.labels = list(texts), list(labels)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> tuple[str, int]:
        return self.texts[index], self.labels[index]


class TextDataNotFound(FileNotFoundError):
    """gensim's test corpora are missing; the message says how to install them."""


def _gensim_file(name: str) -> Path:
    try:
        from gensim.test.utils import datapath
    except ImportError as err:
        raise TextDataNotFound(
            "the Lee and polarity corpora come with gensim's test data: pip install 'lowbit[nlp]' "
            "(make test installs it)"
        ) from err
    path = Path(datapath(name))
    if not path.is_file():
        raise TextDataNotFound(f"gensim is installed but its test file {path} is missing")
    return path


def lee_documents() -> list[str]:
    """The 50 Lee news documents (Lee, Pincombe & Welsh, 2005), in the order of the similarity matrix."""
    lines = _gensim_file("lee.cor").read_text(encoding="latin-1").splitlines()
    return [line.strip() for line in lines if line.strip()]


def lee_similarities() -> torch.Tensor:
    """The 50×50 mean human similarity judgements of the Lee documents (symmetric, 1 on the diagonal)."""
    rows = _gensim_file("similarities0-1.txt").read_text().splitlines()
    upper = torch.tensor([[float(v) for v in row.split("\t")] for row in rows if row.strip()], dtype=torch.float64)
    # the file holds the upper triangle; mirror it
    return torch.triu(upper) + torch.triu(upper, diagonal=1).T


def polarity_sentences() -> list[tuple[str, int]]:
    """200 movie-review sentences (Pang & Lee) as ``(text, label)``, label 1 positive and 0 negative."""
    out = []
    for line in _gensim_file("pang_lee_polarity.cor").read_text(encoding="latin-1").splitlines():
        label, _, text = line.partition(" ")
        if text.strip():
            out.append((text.strip(), 1 if label == "__label__pos" else 0))
    return out


def stdlib_sentences(count: int = 512) -> list[str]:
    """Up to ``count`` distinct English sentences (5 to 60 words) from standard-library docstrings, in a fixed order.

    Raises:
        ValueError: ``count`` < 1.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    seen: dict[str, None] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # typing.io / typing.re warn when their docs are read
        _collect(seen, count)
    return list(seen)


def _collect(seen: dict[str, None], count: int) -> None:
    for name in _STDLIB_MODULES:
        module = importlib.import_module(name)
        docs = [inspect.getdoc(module) or ""]
        docs += [inspect.getdoc(obj) or "" for _, obj in sorted(vars(module).items()) if callable(obj)
                 and getattr(obj, "__module__", None) == module.__name__]
        for doc in docs:
            text = " ".join(doc.split())
            for sentence in re.split(r"(?<=[.!?])\s+", text):
                words = sentence.split()
                if 5 <= len(words) <= 60 and sentence[0].isupper() and not any(c in sentence for c in "{}<>|"):
                    seen.setdefault(sentence, None)
                    if len(seen) >= count:
                        return
