"""Attention heatmaps with subword labels, as images for TensorBoard and as PNG files."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Figures are built with matplotlib's object API and the Agg canvas: no pyplot global state,
# no display needed, nothing to close.


def _draw(ax, attn: np.ndarray, src_labels: Sequence[str], tgt_labels: Sequence[str], title: str):
    ax.imshow(attn, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(src_labels)), labels=src_labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(tgt_labels)), labels=tgt_labels, fontsize=7)
    ax.set_xlabel("source")
    ax.set_ylabel("target")
    ax.set_title(title, fontsize=9)


def heatmap(
    attn: np.ndarray, src_labels: Sequence[str], tgt_labels: Sequence[str], title: str = ""
) -> Figure:
    """One (T, S) attention matrix: rows are target subwords, columns source subwords."""
    rows, cols = attn.shape
    fig = Figure(figsize=(max(3.0, 0.28 * cols + 1.5), max(2.5, 0.24 * rows + 1.5)), dpi=100)
    _draw(fig.add_subplot(), attn, src_labels, tgt_labels, title)
    fig.tight_layout()
    return fig


def head_grid(
    attn: np.ndarray, src_labels: Sequence[str], tgt_labels: Sequence[str], title: str = ""
) -> Figure:
    """(N, T, S) attention of N heads as a grid of labelled heatmaps."""
    num_heads, rows, cols = attn.shape
    grid_cols = math.ceil(math.sqrt(num_heads))
    grid_rows = math.ceil(num_heads / grid_cols)
    cell_w, cell_h = max(3.0, 0.28 * cols + 1.5), max(2.5, 0.24 * rows + 1.5)
    fig = Figure(figsize=(cell_w * grid_cols, cell_h * grid_rows), dpi=80)
    for head in range(num_heads):
        ax = fig.add_subplot(grid_rows, grid_cols, head + 1)
        _draw(ax, attn[head], src_labels, tgt_labels, f"{title} head {head}".strip())
    fig.tight_layout()
    return fig


def to_image(fig: Figure) -> np.ndarray:
    """Render a figure to an (H, W, 3) uint8 array."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_png(fig: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig).print_png(str(path))
