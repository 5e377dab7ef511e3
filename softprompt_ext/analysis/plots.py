"""PNG heatmaps of a nearest-token readout and of prompt-to-prompt similarity (optional extra `plot`).

matplotlib is an optional dependency (`pip install softprompt-ext[plot]`): it is imported only when a
picture is asked for. Figures are drawn with matplotlib's object API on an Agg canvas -- never `pyplot` --
so making a PNG neither opens a window nor changes the backend of the user's own session.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from .readout import Neighbour

INSTALL_HINT = "pip install softprompt-ext[plot]"


def _figure(width: float, height: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(f"matplotlib is not installed; the PNG heatmaps need it: {INSTALL_HINT}") from None
    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def plot_readout(readout: list[list[Neighbour]], path: str | os.PathLike, title: str | None = None) -> str:
    """Heatmap of a readout: one row per prompt position, one column per neighbour rank.

    Colour is the cosine similarity; each cell is labelled with its token. Returns the path written.
    """
    if not readout or not readout[0]:
        raise ValueError("the readout is empty; there is nothing to plot.")
    k = max(len(row) for row in readout)
    scores = torch.full((len(readout), k), float("nan"))  # [P, k]
    for i, row in enumerate(readout):
        scores[i, : len(row)] = torch.tensor([n.score for n in row])
    figure = _figure(width=1.2 * k + 2.0, height=0.4 * len(readout) + 1.2)
    axes = figure.add_subplot()
    low = min(0.0, float(scores.nan_to_num(1.0).min()))  # cosines can be negative
    image = axes.imshow(scores.numpy(), cmap="viridis", vmin=low, vmax=1.0, aspect="auto")
    for i, row in enumerate(readout):
        for j, n in enumerate(row):
            colour = "black" if n.score > 0.6 else "white"  # legible on both ends of viridis
            axes.text(j, i, f"{_short(n.token)}\n{n.score:.2f}", ha="center", va="center", fontsize=7, color=colour)
    axes.set_xticks(range(k), [f"#{j + 1}" for j in range(k)])
    axes.set_yticks(range(len(readout)), [str(i) for i in range(len(readout))], fontsize=7)
    axes.set_xlabel("neighbour rank")
    axes.set_ylabel("prompt position")
    axes.set_title(title or "Nearest vocabulary tokens (cosine)", fontsize=10)
    figure.colorbar(image, ax=axes, label="cosine similarity")
    return _save(figure, path)


def plot_similarity(matrix: torch.Tensor, names: Sequence[str], path: str | os.PathLike, title: str | None = None) -> str:
    """Heatmap of a prompt-to-prompt similarity matrix `[N, N]` with N labels. Returns the path written."""
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] != len(names):
        raise ValueError(f"matrix has shape {tuple(matrix.shape)} for {len(names)} names; expected [N, N].")
    n = len(names)
    labels = [_short(os.path.basename(os.path.normpath(name)) or name, 24) for name in names]
    figure = _figure(width=0.6 * n + 3.0, height=0.6 * n + 2.0)
    axes = figure.add_subplot()
    image = axes.imshow(matrix.float().numpy(), cmap="magma", vmin=min(0.0, float(matrix.min())), vmax=1.0)
    if n <= 20:  # numbers stay readable up to about 20 x 20
        for i in range(n):
            for j in range(n):
                value = float(matrix[i, j])
                axes.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8,
                          color="black" if value > 0.6 else "white")
    axes.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=8)
    axes.set_yticks(range(n), labels, fontsize=8)
    axes.set_title(title or "Prompt similarity", fontsize=10)
    figure.colorbar(image, ax=axes, label="similarity")
    return _save(figure, path)


def _save(figure, path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    figure.savefig(path, format="png")
    return path


def _short(text: str, limit: int = 14) -> str:
    text = text.replace("\n", "\\n").replace("$", r"\$")  # `$` would start matplotlib mathtext
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"
