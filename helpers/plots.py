"""Pictures for the theory notebooks: attention weights as heatmaps, masks as allow/block grids.

Both functions take a 2-D torch tensor (on any device, with or without grad) or a NumPy array,
draw rows = queries and columns = keys, and return the matplotlib Axes they drew on:

    ax = attention_heatmap(weights[0], query_labels=tokens, key_labels=tokens, annotate=True)
    plt.show()
"""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap

from .shapes import fmt_shape

__all__ = ["attention_heatmap", "mask_grid"]

BLOCK_COLOR, ALLOW_COLOR = "#d9d9d9", "#4c72b0"


def _as_matrix(fn: str, name: str, x: object) -> np.ndarray:
    """A (T_q, T_k) NumPy array from a tensor or array; anything not 2-D is refused."""
    if hasattr(x, "detach"):  # a torch tensor: leave the graph and the GPU
        x = x.detach().cpu()
        x = x.float() if x.is_floating_point() else x  # NumPy has no bfloat16
        x = x.numpy()
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{fn}: {name} must be 2-D (T_q, T_k), one row per query; got shape "
                         f"{fmt_shape(arr.shape)}. Pick one matrix first, e.g. {name}[0] or {name}[0, 0]")
    return arr


def _label_axes(ax: Axes, shape: tuple[int, int], query_labels: Sequence[str] | None,
                key_labels: Sequence[str] | None) -> None:
    for labels, size, axis in ((query_labels, shape[0], "query"), (key_labels, shape[1], "key")):
        if labels is not None and len(labels) != size:
            raise ValueError(f"{len(labels)} {axis} labels for {size} {axis} positions")
    ax.set_xticks(range(shape[1]), key_labels if key_labels is not None else range(shape[1]),
                  rotation=45 if key_labels is not None else 0)
    ax.set_yticks(range(shape[0]), query_labels if query_labels is not None else range(shape[0]))
    ax.set_xlabel("key" if key_labels is not None else "key position")
    ax.set_ylabel("query" if query_labels is not None else "query position")


def attention_heatmap(weights, *, query_labels: Sequence[str] | None = None,
                      key_labels: Sequence[str] | None = None, ax: Axes | None = None,
                      title: str | None = None, annotate: bool = False) -> Axes:
    """Attention weights (T_q, T_k) as colours on a fixed 0..1 scale, with a colorbar.

    annotate=True writes each weight (2 decimals) in its cell: readable up to about 10 x 10.
    """
    w = _as_matrix("attention_heatmap", "weights", weights).astype(float)
    if ax is None:
        _, ax = plt.subplots(figsize=(0.5 * w.shape[1] + 2.5, 0.45 * w.shape[0] + 1.5))
    image = ax.imshow(w, cmap="viridis", vmin=0.0, vmax=1.0)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="weight")
    _label_axes(ax, w.shape, query_labels, key_labels)
    if annotate:
        for i, j in np.ndindex(*w.shape):
            ax.text(j, i, f"{w[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="black" if w[i, j] > 0.6 else "white")
    if title:
        ax.set_title(title)
    return ax


def mask_grid(mask, *, ax: Axes | None = None, title: str | None = None) -> Axes:
    """A boolean mask (T_q, T_k), True = may attend: allowed cells dark with "allow", blocked grey with "block"."""
    m = _as_matrix("mask_grid", "mask", mask)
    if m.dtype != bool:
        raise TypeError(f"mask_grid: mask must be boolean (True = may attend); got dtype {m.dtype}")
    if ax is None:
        _, ax = plt.subplots(figsize=(0.6 * m.shape[1] + 1.5, 0.45 * m.shape[0] + 1.2))
    ax.imshow(m.astype(int), cmap=ListedColormap([BLOCK_COLOR, ALLOW_COLOR]), vmin=0, vmax=1)
    _label_axes(ax, m.shape, None, None)
    for i, j in np.ndindex(*m.shape):
        ax.text(j, i, "allow" if m[i, j] else "block", ha="center", va="center", fontsize=7,
                color="white" if m[i, j] else "black")
    if title:
        ax.set_title(title)
    return ax
