"""helpers.plots draws exactly the numbers it is given, labels its axes, and refuses what is not a matrix."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display needed

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from helpers.attention import causal_mask  # noqa: E402
from helpers.plots import attention_heatmap, mask_grid  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def weights_3x5() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.softmax(torch.randn(3, 5, generator=gen), dim=-1)  # (T_q, T_k) = (3, 5)


def texts(labels) -> list[str]:
    return [t.get_text() for t in labels]


def test_heatmap_draws_the_weights_with_rows_as_queries():
    w = weights_3x5().requires_grad_()  # a tensor still attached to a graph is fine
    ax = attention_heatmap(w)
    image = ax.images[0]
    np.testing.assert_allclose(np.asarray(image.get_array()), w.detach().numpy(), rtol=1e-6)
    assert image.get_array().shape == (3, 5)  # 3 query rows, 5 key columns
    assert image.get_clim() == (0.0, 1.0)
    assert ax.get_xlabel() == "key position" and ax.get_ylabel() == "query position"
    assert texts(ax.get_xticklabels()) == ["0", "1", "2", "3", "4"]
    assert len(ax.figure.axes) == 2  # the heatmap and its colorbar


def test_heatmap_applies_token_labels_title_and_annotations():
    queries, keys = ["a", "b", "c"], ["the", "cat", "sat", "on", "mat"]
    w = weights_3x5()
    ax = attention_heatmap(w.numpy(), query_labels=queries, key_labels=keys, title="demo", annotate=True)
    assert texts(ax.get_yticklabels()) == queries and texts(ax.get_xticklabels()) == keys
    assert ax.get_xlabel() == "key" and ax.get_ylabel() == "query" and ax.get_title() == "demo"
    assert texts(ax.texts) == [f"{x:.2f}" for x in w.flatten().tolist()]


def test_heatmap_draws_on_a_given_axes_and_accepts_half_precision():
    _, (left, right) = plt.subplots(1, 2)
    ax = attention_heatmap(weights_3x5().to(torch.bfloat16), ax=right)
    assert ax is right and not left.images and right.images


@pytest.mark.parametrize("bad", [torch.rand(2, 3, 4), torch.rand(5), np.float64(0.5)], ids=["3-D", "1-D", "0-D"])
def test_heatmap_refuses_anything_but_a_matrix(bad):
    expected = "(" + ", ".join(str(d) for d in np.shape(bad)) + ("," if np.ndim(bad) == 1 else "") + ")"
    with pytest.raises(ValueError, match="must be 2-D") as info:
        attention_heatmap(bad)
    assert f"got shape {expected}" in str(info.value)


def test_heatmap_refuses_labels_of_the_wrong_length():
    with pytest.raises(ValueError, match="2 key labels for 5 key positions"):
        attention_heatmap(weights_3x5(), key_labels=["a", "b"])


def test_mask_grid_shows_allowed_and_blocked_cells():
    mask = causal_mask(4)
    ax = mask_grid(mask, title="causal")
    np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), mask.int().numpy())
    expected = ["allow" if j <= i else "block" for i in range(4) for j in range(4)]
    assert texts(ax.texts) == expected
    assert ax.get_xlabel() == "key position" and ax.get_ylabel() == "query position"
    assert ax.get_title() == "causal"


def test_mask_grid_refuses_non_matrices_and_non_boolean_masks():
    with pytest.raises(ValueError, match=r"got shape \(2, 1, 4\)"):
        mask_grid(torch.ones(2, 1, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="boolean"):
        mask_grid(torch.ones(4, 4))
