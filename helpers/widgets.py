"""Interactive explorations for the theory notebooks: ipywidgets controls, each with a static figure.

Every exploration has three parts:

- a pure function computing what the picture shows (tested against torch and the chapters'
  reference functions): `scaled_softmax`, `exploration_mask`, `rope_pair_trace`;
- a static figure of a few fixed settings side by side (`*_figure`), which the executed notebook,
  nbval and the rendered site show without a running kernel;
- a live explorer (`*_explorer`): sliders and drop-downs that redraw one setting as a PNG image and a
  one-line readout (`Explorer.readout`, the text a learner, and the browser test, watch change).

    from helpers.widgets import softmax_explorer, softmax_figure
    softmax_figure(scores, d_k=64); plt.show()      # the static picture
    softmax_explorer(scores, d_k=64)                # the controls (needs a live kernel to move)
"""

from __future__ import annotations

import io
import math
from typing import Callable

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from .attention import causal_mask
from .plots import mask_grid
from .positions import apply_rope, rope_frequencies
from .shapes import ShapeError, fmt_shape

__all__ = [
    "SCALES", "MASK_KINDS", "PAD_SIDES", "Explorer",
    "scaled_softmax", "softmax_readout", "softmax_figure", "softmax_explorer",
    "exploration_mask", "mask_readout", "mask_figure", "mask_explorer",
    "rope_pair_trace", "rope_readout", "rope_figure", "rope_explorer",
]

# ---------------------------------------------------------------------------------------------
# The explorer: controls, a readout line and a picture, redrawn whenever a control moves
# ---------------------------------------------------------------------------------------------


WIDE = {"description_width": "initial"}  # controls show their whole name
DPI = 80  # the explorers' pictures: small PNGs, redrawn on every move of a control


class Explorer:
    """Controls above a readout line and a PNG picture; moving a control redraws both.

    `draw(ax, **values)` draws one setting on `ax` and returns the readout text. The picture is
    rendered to PNG bytes (no pyplot state, no Output widget), so the explorer also works, and is
    tested, without a kernel. In a notebook the explorer displays as its widget; its plain-text form
    says that the controls need a running kernel.
    """

    def __init__(self, title: str, controls: dict[str, widgets.ValueWidget],
                 draw: Callable[..., str], *, figsize: tuple[float, float] = (6.0, 3.0)) -> None:
        self.title, self.controls, self._draw, self._figsize = title, controls, draw, figsize
        self.readout = widgets.Label(layout=widgets.Layout(width="auto"))
        self.readout.add_class("course-readout")
        width, height = (round(DPI * size) for size in figsize)
        self.image = widgets.Image(format="png", layout=widgets.Layout(width=f"{width}px", height=f"{height}px"))
        self.widget = widgets.VBox([widgets.HTML(f"<b>{title}</b>"), widgets.HBox(list(controls.values())),
                                    self.readout, self.image])
        self.widget.add_class("course-explorer")
        for control in controls.values():
            control.observe(self._update, names="value")
        self._update()

    def values(self) -> dict[str, object]:
        return {name: control.value for name, control in self.controls.items()}

    def _update(self, change: object = None) -> None:
        fig = Figure(figsize=self._figsize)
        ax = fig.subplots()
        text = self._draw(ax, **self.values())
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=DPI)
        self.image.value = buffer.getvalue()
        self.readout.value = text

    def _repr_mimebundle_(self, **kwargs: object) -> dict:
        bundle = self.widget._repr_mimebundle_(**kwargs) or {}
        if isinstance(bundle, tuple):
            bundle = bundle[0]
        bundle = dict(bundle)
        bundle["text/plain"] = (f"{self.title}: live controls, shown when the notebook runs in JupyterLab "
                                f"(the static figure below shows fixed settings). Now: {self.readout.value}")
        return bundle


# ---------------------------------------------------------------------------------------------
# Chapter 01: softmax temperature and the 1/sqrt(d_k) scale on one row of scores
# ---------------------------------------------------------------------------------------------

SCALES = ("none", "1/sqrt(d_k)", "1/d_k")


def _scale_factor(fn: str, scale: str, d_k: int) -> float:
    if isinstance(d_k, bool) or not isinstance(d_k, int) or d_k < 1:
        raise ValueError(f"{fn}: d_k must be a positive int; got {d_k!r}")
    if scale not in SCALES:
        raise ValueError(f"{fn}: scale must be one of {SCALES}; got {scale!r}")
    return {"none": 1.0, "1/sqrt(d_k)": 1.0 / math.sqrt(d_k), "1/d_k": 1.0 / d_k}[scale]


def _require_row(fn: str, scores: torch.Tensor) -> torch.Tensor:
    if not isinstance(scores, torch.Tensor) or not scores.is_floating_point():
        raise TypeError(f"{fn}: scores must be a float tensor (T_k,); got {type(scores).__name__}")
    if scores.ndim != 1 or scores.shape[0] < 2:
        raise ShapeError(f"{fn}: scores must be one row (T_k,) with T_k >= 2; got {fmt_shape(scores.shape)}")
    return scores


def scaled_softmax(scores: torch.Tensor, d_k: int, *, scale: str = "1/sqrt(d_k)",
                   temperature: float = 1.0) -> torch.Tensor:
    """(T_k,) weights = softmax(scores * factor / temperature); factor 1, 1/sqrt(d_k) or 1/d_k."""
    fn = "scaled_softmax"
    factor = _scale_factor(fn, scale, d_k)
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature > 0:
        raise ValueError(f"{fn}: temperature must be a positive number; got {temperature!r}")
    return torch.softmax(_require_row(fn, scores) * (factor / temperature), dim=-1)  # (T_k,)


def softmax_readout(weights: torch.Tensor) -> str:
    """The largest weight and the entropy of a row (its maximum is log T_k, a uniform row)."""
    entropy = torch.special.entr(weights.double()).sum().item()
    return (f"largest weight {weights.max().item():.3f} on key {int(weights.argmax())} | entropy "
            f"{entropy:.3f} of at most {math.log(weights.shape[0]):.3f}")


def _draw_softmax(ax, scores: torch.Tensor, d_k: int, scale: str, temperature: float) -> str:
    weights = scaled_softmax(scores, d_k, scale=scale, temperature=temperature)  # (T_k,)
    keys = range(weights.shape[0])
    ax.bar(keys, weights.detach().cpu().numpy(), color="#4c72b0")
    ax.axhline(1 / weights.shape[0], color="k", linestyle=":", linewidth=1)
    ax.set(ylim=(0, 1.02), xlabel="key", ylabel="weight", xticks=list(keys),
           title=f"scale {scale}, temperature {temperature:.3g}")
    return f"scale {scale}, temperature {temperature:.3g}: {softmax_readout(weights)}"


def softmax_figure(scores: torch.Tensor, d_k: int,
                   settings: tuple[tuple[str, float], ...] = (("none", 1.0), ("1/sqrt(d_k)", 1.0),
                                                               ("1/d_k", 1.0), ("1/sqrt(d_k)", 0.3))):
    """The static picture: one bar chart of softmax weights per (scale, temperature) setting."""
    _require_row("softmax_figure", scores)
    fig, axes = plt.subplots(1, len(settings), figsize=(3.2 * len(settings), 2.9), sharey=True)
    for ax, (scale, temperature) in zip(axes, settings):
        _draw_softmax(ax, scores, d_k, scale, temperature)
        ax.set_title(f"{scale}, T = {temperature:.3g}", fontsize=10)
    fig.suptitle(f"one row of {scores.shape[0]} raw scores (d_k = {d_k}); dotted line = uniform")
    fig.tight_layout()
    return fig


def softmax_explorer(scores: torch.Tensor, d_k: int) -> Explorer:
    """A scale drop-down and a temperature slider over one row of raw scores q·k."""
    _require_row("softmax_explorer", scores)
    controls = {
        "scale": widgets.Dropdown(options=SCALES, value="1/sqrt(d_k)", description="scale", style=WIDE),
        "temperature": widgets.FloatLogSlider(value=1.0, base=10, min=-1, max=1, step=0.05,
                                              description="temperature", style=WIDE),
    }
    return Explorer("Softmax of one row of scores",
                    controls, lambda ax, scale, temperature: _draw_softmax(ax, scores, d_k, scale, temperature))


# ---------------------------------------------------------------------------------------------
# Chapter 01: mask type and padding length on the mask picture
# ---------------------------------------------------------------------------------------------

MASK_KINDS = ("causal", "padding", "padding & causal", "none")
PAD_SIDES = ("right", "left")


def exploration_mask(kind: str, T: int, n_pad: int, side: str = "right") -> torch.Tensor:
    """(T, T) bool, True = may attend: the `kind` mask of one sequence with `n_pad` padding tokens.

    Right padding puts the padding keys last (real tokens 0..T-n_pad-1), left padding first.
    """
    fn = "exploration_mask"
    if kind not in MASK_KINDS:
        raise ValueError(f"{fn}: kind must be one of {MASK_KINDS}; got {kind!r}")
    if side not in PAD_SIDES:
        raise ValueError(f"{fn}: side must be one of {PAD_SIDES}; got {side!r}")
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"{fn}: T must be a positive int; got {T!r}")
    if isinstance(n_pad, bool) or not isinstance(n_pad, int) or not 0 <= n_pad < T:
        raise ValueError(f"{fn}: n_pad must be an int in 0..{T - 1} (at least one real token); got {n_pad!r}")
    positions = torch.arange(T)  # (T,)
    real = positions < T - n_pad if side == "right" else positions >= n_pad  # (T_k,)
    padding = real[None, :].expand(T, T)  # (T_q, T_k): every query ignores the same keys
    everything = torch.ones(T, T, dtype=torch.bool)  # (T_q, T_k)
    return {"none": everything, "causal": causal_mask(T), "padding": padding.clone(),
            "padding & causal": padding & causal_mask(T)}[kind]  # (T, T)


def mask_readout(mask: torch.Tensor) -> str:
    """Allowed keys per query, and how many rows have nothing to attend to."""
    allowed = mask.sum(dim=-1)  # (T_q,)
    empty = int((allowed == 0).sum())
    return f"allowed keys per query {allowed.tolist()} | rows with nothing to attend to: {empty}"


def _draw_mask(ax, kind: str, T: int, n_pad: int, side: str) -> str:
    mask = exploration_mask(kind, T, n_pad, side)  # (T, T)
    mask_grid(mask, ax=ax, title=f"{kind}, {n_pad} padding on the {side}")
    return f"{kind}, {n_pad} padding token(s) on the {side}: {mask_readout(mask)}"


def mask_figure(T: int = 6, settings: tuple[tuple[str, int, str], ...] = (
        ("causal", 0, "right"), ("padding", 2, "right"), ("padding & causal", 2, "right"),
        ("padding & causal", 2, "left"))):
    """The static picture: one mask grid per (kind, n_pad, side) setting."""
    fig, axes = plt.subplots(1, len(settings), figsize=(3.3 * len(settings), 3.4))
    for ax, (kind, n_pad, side) in zip(axes, settings):
        _draw_mask(ax, kind, T, n_pad, side)
        ax.set_title(f"{kind}\n{n_pad} padding, {side}", fontsize=10)
    fig.tight_layout()
    return fig


def mask_explorer(T: int = 6) -> Explorer:
    """Drop-downs for the mask kind and the padding side, a slider for the padding length."""
    controls = {
        "kind": widgets.Dropdown(options=MASK_KINDS, value="padding & causal", description="mask", style=WIDE),
        "n_pad": widgets.IntSlider(value=2, min=0, max=T - 1, description="padding", style=WIDE),
        "side": widgets.Dropdown(options=PAD_SIDES, value="right", description="pad on", style=WIDE),
    }
    return Explorer("The mask picture", controls,
                    lambda ax, kind, n_pad, side: _draw_mask(ax, kind, T, n_pad, side), figsize=(4.2, 3.6))


# ---------------------------------------------------------------------------------------------
# Chapter 06: the RoPE angle of one dimension pair
# ---------------------------------------------------------------------------------------------


def rope_pair_trace(pair: int, position: int, d_head: int = 16, base: float = 10000.0) -> torch.Tensor:
    """(position + 1, 2) float64: where the unit vector (1, 0) in `pair` lands at positions 0..position.

    Computed with `helpers.positions.apply_rope` (rotate-half layout: pair k = channels k, k + d/2),
    so row p is (cos p·theta_k, sin p·theta_k).
    """
    fn = "rope_pair_trace"
    if isinstance(pair, bool) or not isinstance(pair, int) or not 0 <= pair < d_head // 2:
        raise ValueError(f"{fn}: pair must be an int in 0..{d_head // 2 - 1}; got {pair!r}")
    if isinstance(position, bool) or not isinstance(position, int) or position < 0:
        raise ValueError(f"{fn}: position must be a non-negative int; got {position!r}")
    x = torch.zeros(position + 1, d_head, dtype=torch.float64)  # (P, d_head): one vector per position
    x[:, pair] = 1.0  # the pair's first channel
    rotated = apply_rope(x, base=base)  # (P, d_head)
    return torch.stack([rotated[:, pair], rotated[:, pair + d_head // 2]], dim=-1)  # (P, 2)


def rope_readout(pair: int, position: int, d_head: int = 16, base: float = 10000.0) -> str:
    theta = rope_frequencies(d_head, base)[pair].item()
    angle = position * theta
    return (f"pair {pair}: theta = {theta:.4g} rad per position | position {position}: angle {angle:.3f} rad = "
            f"{angle / (2 * math.pi):.3f} turns | one turn every {2 * math.pi / theta:.4g} positions")


def _draw_rope(ax, pair: int, position: int, d_head: int, base: float) -> str:
    trace = rope_pair_trace(pair, position, d_head, base).numpy()  # (P, 2)
    ax.plot(trace[:, 0], trace[:, 1], ".", color="#bbbbbb", markersize=4)
    ax.annotate("", xy=tuple(trace[-1]), xytext=(0, 0), arrowprops=dict(arrowstyle="->", color="#c44e52", lw=2))
    ax.annotate("", xy=(1, 0), xytext=(0, 0), arrowprops=dict(arrowstyle="->", color="#4c72b0", lw=1))
    ax.set(xlim=(-1.25, 1.25), ylim=(-1.25, 1.25), aspect="equal", xlabel=f"channel {pair}",
           ylabel=f"channel {pair + d_head // 2}", title=f"pair {pair}, position {position}")
    return rope_readout(pair, position, d_head, base)


def rope_figure(d_head: int = 16, base: float = 10000.0,
                settings: tuple[tuple[int, int], ...] = ((0, 5), (2, 5), (2, 40), (6, 40))):
    """The static picture: the rotated vector (red) and its path (grey) per (pair, position) setting."""
    fig, axes = plt.subplots(1, len(settings), figsize=(3.2 * len(settings), 3.3))
    for ax, (pair, position) in zip(axes, settings):
        _draw_rope(ax, pair, position, d_head, base)
    fig.suptitle(f"RoPE (d_head = {d_head}, base {base:g}): blue = position 0, red = the given position")
    fig.tight_layout()
    return fig


def rope_explorer(d_head: int = 16, base: float = 10000.0) -> Explorer:
    """Sliders for the pair index and the position."""
    controls = {
        "pair": widgets.IntSlider(value=0, min=0, max=d_head // 2 - 1, description="pair k", style=WIDE),
        "position": widgets.IntSlider(value=3, min=0, max=100, description="position p", style=WIDE),
    }
    return Explorer("RoPE: the angle of one dimension pair", controls,
                    lambda ax, pair, position: _draw_rope(ax, pair, position, d_head, base), figsize=(3.8, 3.8))
