"""helpers.widgets: the explorations compute what torch and the chapters' references compute, and the
explorers redraw (readout and picture) when a control moves, without a kernel."""

from __future__ import annotations

import math

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from helpers.attention import causal_mask, padding_mask  # noqa: E402
from helpers.numerics import assert_close  # noqa: E402
from helpers.positions import rope_angles  # noqa: E402
from helpers.widgets import (  # noqa: E402
    MASK_KINDS,
    exploration_mask,
    mask_explorer,
    mask_figure,
    rope_explorer,
    rope_figure,
    rope_pair_trace,
    scaled_softmax,
    softmax_explorer,
    softmax_figure,
)

SCORES = torch.tensor([3.0, -1.0, 8.0, 0.5, 6.0, -4.0, 2.0, 7.5])  # (T_k,) = (8,): raw q.k with d_k = 64


@pytest.mark.parametrize("scale, factor", [("none", 1.0), ("1/sqrt(d_k)", 1 / 8), ("1/d_k", 1 / 64)])
@pytest.mark.parametrize("temperature", [0.3, 1.0, 4.0])
def test_scaled_softmax_matches_torch(scale, factor, temperature):
    got = scaled_softmax(SCORES, 64, scale=scale, temperature=temperature)
    assert_close(got, torch.nn.functional.softmax(SCORES * factor / temperature, dim=0), n=8)
    assert_close(got.sum(), torch.tensor(1.0), n=8)


def test_temperature_sharpens_and_flattens():
    entropy = [torch.special.entr(scaled_softmax(SCORES, 64, temperature=t)).sum().item() for t in (0.1, 1.0, 10.0)]
    assert entropy[0] < entropy[1] < entropy[2] < math.log(8)


@pytest.mark.parametrize("bad, error", [
    (dict(scores=SCORES, d_k=0), ValueError), (dict(scores=SCORES, d_k=64, scale="sqrt"), ValueError),
    (dict(scores=SCORES, d_k=64, temperature=0.0), ValueError), (dict(scores=SCORES[None], d_k=64), Exception),
    (dict(scores=torch.arange(4), d_k=4), TypeError),
])
def test_scaled_softmax_refuses_bad_input(bad, error):
    with pytest.raises(error):
        scaled_softmax(**bad)


@pytest.mark.parametrize("T, n_pad", [(6, 0), (6, 2), (5, 4)])
def test_right_padding_masks_match_the_chapter_references(T, n_pad):
    pad = padding_mask([T - n_pad], T)[0].expand(T, T)  # (T, T) from (1, 1, T)
    assert torch.equal(exploration_mask("padding", T, n_pad), pad)
    assert torch.equal(exploration_mask("causal", T, n_pad), causal_mask(T))
    assert torch.equal(exploration_mask("padding & causal", T, n_pad), pad & causal_mask(T))
    assert exploration_mask("none", T, n_pad).all()


def test_left_padding_blocks_whole_rows():
    mask = exploration_mask("padding & causal", 6, 2, "left")  # (6, 6)
    assert mask.sum(dim=-1).tolist() == [0, 0, 1, 2, 3, 4]
    assert torch.equal(mask, exploration_mask("padding", 6, 2, "left") & causal_mask(6))
    assert torch.equal(exploration_mask("padding", 6, 2, "left"), exploration_mask("padding", 6, 2).flip(-1))


@pytest.mark.parametrize("bad", [dict(kind="diagonal", T=4, n_pad=0), dict(kind="causal", T=4, n_pad=4),
                                 dict(kind="causal", T=0, n_pad=0), dict(kind="causal", T=4, n_pad=1, side="top")])
def test_exploration_mask_refuses_bad_input(bad):
    with pytest.raises(ValueError):
        exploration_mask(**bad)


@pytest.mark.parametrize("pair, d_head, base", [(0, 16, 10000.0), (3, 16, 10000.0), (7, 16, 500.0), (10, 64, 1e6)])
def test_rope_pair_trace_is_the_closed_form_rotation(pair, d_head, base):
    trace = rope_pair_trace(pair, 50, d_head, base)  # (51, 2)
    angles = rope_angles(51, d_head, base=base)[:, pair]  # (51,): p * theta_k
    assert_close(trace, torch.stack([angles.cos(), angles.sin()], dim=-1), n=4)
    assert_close(trace.norm(dim=-1), torch.ones(51, dtype=torch.float64), n=4)


def test_rope_pair_trace_refuses_bad_input():
    for bad in (dict(pair=8, position=1), dict(pair=0, position=-1), dict(pair=True, position=1)):
        with pytest.raises(ValueError):
            rope_pair_trace(**bad)


def test_static_figures_draw_one_panel_per_setting():
    for fig, panels in ((softmax_figure(SCORES, 64), 4), (mask_figure(), 4), (rope_figure(), 4)):
        assert len(fig.axes) == panels
        plt.close(fig)
    fig = softmax_figure(SCORES, 64)
    heights = [patch.get_height() for patch in fig.axes[1].patches]  # the 1/sqrt(d_k), T = 1 panel
    assert_close(torch.tensor(heights, dtype=torch.float32), scaled_softmax(SCORES, 64), n=8)
    plt.close(fig)


def test_softmax_explorer_redraws_when_the_slider_moves():
    explorer = softmax_explorer(SCORES, 64)
    before_text, before_png = explorer.readout.value, bytes(explorer.image.value)
    assert before_png.startswith(b"\x89PNG")
    expected = scaled_softmax(SCORES, 64, temperature=1.0)
    assert f"largest weight {expected.max().item():.3f}" in before_text
    explorer.controls["temperature"].value = 0.2
    sharp = scaled_softmax(SCORES, 64, temperature=0.2)
    assert f"largest weight {sharp.max().item():.3f}" in explorer.readout.value
    assert bytes(explorer.image.value) != before_png
    explorer.controls["scale"].value = "none"
    assert "scale none, temperature 0.2" in explorer.readout.value


def test_mask_explorer_counts_blocked_rows():
    explorer = mask_explorer(6)
    assert "allowed keys per query [1, 2, 3, 4, 4, 4]" in explorer.readout.value  # 2 padding on the right
    explorer.controls["side"].value = "left"
    assert "allowed keys per query [0, 0, 1, 2, 3, 4] | rows with nothing to attend to: 2" in explorer.readout.value
    explorer.controls["n_pad"].value = 0
    explorer.controls["kind"].value = "none"
    assert "[6, 6, 6, 6, 6, 6]" in explorer.readout.value
    assert set(explorer.controls["kind"].options) == set(MASK_KINDS)


def test_rope_explorer_reports_the_angle():
    explorer = rope_explorer(16)
    explorer.controls["pair"].value = 2
    explorer.controls["position"].value = 40
    theta = 10000.0 ** (-2 * 2 / 16)
    assert f"angle {40 * theta:.3f} rad" in explorer.readout.value


def test_explorer_plain_text_says_it_needs_a_kernel():
    bundle = softmax_explorer(SCORES, 64)._repr_mimebundle_()
    assert "live controls" in bundle["text/plain"] and "JupyterLab" in bundle["text/plain"]
