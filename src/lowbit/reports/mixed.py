"""Plots for mixed precision: sensitivity per layer and bit width, and the Pareto frontier of size and loss.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from torch import nn
    >>> from lowbit.mixed import choose_bits
    >>> torch.manual_seed(0)
    <torch._C.Generator object at ...>
    >>> model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4)).eval()
    >>> result = choose_bits(model, "sqnr", [torch.randn(64, 16)], bits=(2, 4, 8), budget_avg_bits=4.0)
    >>> folder = Path(tempfile.mkdtemp())
    >>> plot_sensitivity(result.table, folder / "s.png").stat().st_size > 1000
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_sensitivity", "plot_pareto"]

_MAX_POINTS = 2000


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server or in CI
    import matplotlib.pyplot as plt

    return plt


def plot_sensitivity(table: Any, path: str | Path, title: str = "") -> Path:
    """One line per bit width: each layer's loss (log scale) in layer order; written as PNG to ``path``.

    Args:
        table: a :class:`lowbit.mixed.SensitivityTable`.
        path: the PNG file to write (its folder must exist).
        title: put before the measure's name in the title.
    """
    plt = _pyplot()
    layers = list(table.loss)
    widths = sorted({b for row in table.loss.values() for b in row})
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(layers) + 2), 4.2))
    floor = min((v for row in table.loss.values() for v in row.values() if v > 0), default=1e-12) / 10
    for b in widths:
        xs = [i for i, name in enumerate(layers) if b in table.loss[name]]
        ys = [max(table.loss[layers[i]][b], floor) for i in xs]  # a zero loss would vanish from a log axis
        ax.plot(xs, ys, marker="o", markersize=3, label=f"{b} bits")
    ax.set_yscale("log")
    ax.set_xticks(range(len(layers)), layers, rotation=90, fontsize=6)
    ax.set_ylabel(f"loss ({table.measure})")
    ax.set_title(f"{title + ': ' if title else ''}{table.measure} sensitivity per layer ({table.seconds:.1f} s)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_pareto(frontier: Sequence[Any], subject: Any, path: str | Path,
                measured: Sequence[tuple[int, float, float]] = (),
                uniform: Mapping[int, tuple[int, float]] | None = None, title: str = "") -> Path:
    """The frontier's predicted loss against model bytes, with measured accuracies on a second axis.

    Args:
        frontier: :class:`lowbit.mixed.Allocation` s in increasing cost (:func:`lowbit.mixed.pareto_frontier`).
        subject: the :class:`lowbit.mixed.Subject` they allocate (for :func:`lowbit.mixed.model_bytes`).
        path: the PNG file to write.
        measured: ``(bytes, predicted loss, accuracy %)`` of allocations that were quantized and evaluated.
        uniform: bits → ``(bytes, accuracy %)`` of uniform allocations, for comparison.
    """
    from lowbit.mixed.budget import model_bytes

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    # a 50-layer frontier has ~10⁵ points: a few thousand draw the same curve
    shown = list(frontier)[:: max(1, len(frontier) // _MAX_POINTS)] + list(frontier)[-1:]
    sizes = [model_bytes(subject, a.bits) / 1024 for a in shown]
    ax.step(sizes, [max(a.loss, 1e-12) for a in shown], where="post", color="tab:blue", label="Pareto frontier")
    if measured:
        ax.plot([m[0] / 1024 for m in measured], [max(m[1], 1e-12) for m in measured], "o", color="tab:blue")
    ax.set_yscale("log")
    ax.set_xlabel("model KiB")
    ax.set_ylabel("predicted loss", color="tab:blue")
    if measured or uniform:
        right = ax.twinx()
        if measured:
            right.plot([m[0] / 1024 for m in measured], [m[2] for m in measured], "s", color="tab:red",
                       label="mixed, measured")
        if uniform:
            right.plot([u[0] / 1024 for u in uniform.values()], [u[1] for u in uniform.values()], "^",
                       color="tab:gray", label="uniform, measured")
            for b, (size, acc) in uniform.items():
                right.annotate(f"W{b}", (size / 1024, acc), fontsize=7)
        right.set_ylabel("accuracy %", color="tab:red")
        right.legend(loc="lower right", fontsize=7)
    ax.legend(loc="upper right", fontsize=7)
    ax.set_title(title or "mixed precision: size against predicted loss")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
