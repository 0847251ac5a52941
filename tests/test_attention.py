"""helpers.attention against oracles nobody here wrote: torch's fused attention, closed forms, properties."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.attention import (
    apply_mask,
    attention_scores,
    causal_mask,
    masked_softmax,
    padding_mask,
    scaled_dot_product_attention,
)
from helpers.numerics import assert_close, close, tolerances
from helpers.shapes import ShapeError

DTYPES = [torch.float32, torch.float64]


def tol(dtype):
    # the course's one rule for float comparisons (torch's defaults for these short reductions)
    return tolerances(dtype)


def torch_weights(q, k, mask=None):
    """Attention weights from torch's own kernel: attend over the identity matrix as values."""
    eye = torch.eye(k.shape[-2], dtype=q.dtype).expand(*k.shape[:-1], k.shape[-2])
    return F.scaled_dot_product_attention(q, k, eye, attn_mask=mask)


def qkv(*lead, T_q=5, T_k=7, d_k=11, d_v=13, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    make = lambda *s: torch.randn(*lead, *s, generator=gen, dtype=torch.float64).to(dtype)  # noqa: E731
    return make(T_q, d_k), make(T_k, d_k), make(T_k, d_v)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lead", [(), (2,), (2, 3)], ids=["2-D", "3-D", "4-D"])
def test_matches_torch_without_mask(dtype, lead):
    q, k, v = qkv(*lead, dtype=dtype)
    out, weights = scaled_dot_product_attention(q, k, v)
    assert out.shape == (*lead, 5, 13) and weights.shape == (*lead, 5, 7)
    assert out.dtype == weights.dtype == dtype
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), **tol(dtype))
    torch.testing.assert_close(weights, torch_weights(q, k), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_torch_with_causal_mask(dtype):
    q, k, v = qkv(2, 3, T_q=6, T_k=6, dtype=dtype)
    mask = causal_mask(6)
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), **tol(dtype))
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), **tol(dtype))
    torch.testing.assert_close(weights, torch_weights(q, k, mask), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_torch_with_padding_and_fully_blocked_rows(dtype):
    q, k, v = qkv(3, dtype=dtype)
    mask = padding_mask([7, 3, 0], 7)  # the third sequence has no real key at all
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), **tol(dtype))
    torch.testing.assert_close(weights, torch_weights(q, k, mask), **tol(dtype))
    assert torch.equal(out[2], torch.zeros_like(out[2])) and torch.equal(weights[2], torch.zeros_like(weights[2]))


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    lead=st.lists(st.integers(1, 3), min_size=0, max_size=2),
    T_q=st.integers(1, 9), T_k=st.integers(1, 9), d_k=st.integers(1, 16), d_v=st.integers(1, 16),
    seed=st.integers(0, 2**16), double=st.booleans(),
)
def test_random_shapes_and_masks_match_torch(lead, T_q, T_k, d_k, d_v, seed, double):
    dtype = torch.float64 if double else torch.float32
    q, k, v = qkv(*lead, T_q=T_q, T_k=T_k, d_k=d_k, d_v=d_v, dtype=dtype, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    mask = torch.rand(*lead, T_q, T_k, generator=gen) < 0.6  # some rows may be fully blocked
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), **tol(dtype))
    torch.testing.assert_close(weights, torch_weights(q, k, mask), **tol(dtype))


def test_tiny_example_closed_form():
    """The chapter's hand example: scores [[1, 0, 1], [0, 1, 0]] after dividing by sqrt(4) = 2."""
    q = torch.tensor([[1.0, 0, 1, 0], [0, 2, 0, 0]], dtype=torch.float64)
    k = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1], [2, 0, 0, 0]], dtype=torch.float64)
    v = torch.tensor([[1.0, 0], [0, 1], [1, 1]], dtype=torch.float64)
    e = math.e
    expected_w = torch.tensor([[e, 1, e], [1, e, 1]], dtype=torch.float64)
    expected_w = expected_w / expected_w.sum(-1, keepdim=True)
    torch.testing.assert_close(attention_scores(q, k), torch.tensor([[1.0, 0, 1], [0, 1, 0]], dtype=torch.float64))
    out, weights = scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(weights, expected_w)
    torch.testing.assert_close(out, torch.tensor([[2 * e, e + 1], [2, e + 1]], dtype=torch.float64) / torch.tensor([[2 * e + 1], [e + 2]], dtype=torch.float64))


def test_weights_rows_sum_to_one_over_allowed_keys():
    q, k, v = qkv(2, dtype=torch.float64)
    mask = padding_mask([7, 4], 7)
    _, weights = scaled_dot_product_attention(q, k, v, mask)
    assert torch.all(weights[~mask.expand_as(weights)] == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 5, dtype=torch.float64))
    assert torch.all(weights >= 0)


@pytest.mark.parametrize("position", range(6))
def test_causal_output_never_sees_the_future(position):
    """Changing token `position` (its key and value) leaves every earlier output unchanged."""
    q, k, v = qkv(2, T_q=6, T_k=6)
    out, _ = scaled_dot_product_attention(q, k, v, causal_mask(6))
    k2, v2 = k.clone(), v.clone()
    k2[:, position] += 10.0
    v2[:, position] -= 10.0
    out2, _ = scaled_dot_product_attention(q, k2, v2, causal_mask(6))
    assert close(out[:, :position], out2[:, :position], n=6)
    assert not close(out[:, position:], out2[:, position:], n=6)


def test_without_mask_the_future_leaks():
    """The property above is a real test: it fails on attention without the causal mask."""
    q, k, v = qkv(1, T_q=6, T_k=6)
    k2 = k.clone()
    k2[:, 5] += 10.0
    out, _ = scaled_dot_product_attention(q, k, v)
    out2, _ = scaled_dot_product_attention(q, k2, v)
    assert not close(out[:, :5], out2[:, :5], n=6)


def test_no_nan_in_gradient_of_fully_blocked_rows():
    scores = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, False, True, False], [False] * 4, [True] * 4])
    masked_softmax(scores, mask).sum().backward()
    assert torch.isfinite(scores.grad).all()
    assert torch.all(scores.grad[:, 1] == 0)


def test_masks():
    assert causal_mask(4).tolist() == [
        [True, False, False, False],
        [True, True, False, False],
        [True, True, True, False],
        [True, True, True, True],
    ]
    assert causal_mask(4).dtype == torch.bool
    assert torch.equal(causal_mask(5), torch.ones(5, 5, dtype=torch.bool).tril())
    assert padding_mask([3, 1], 4).tolist() == [[[True, True, True, False]], [[True, False, False, False]]]
    assert padding_mask(torch.tensor([2]), 2).shape == (1, 1, 2)


def test_apply_mask_sets_minus_infinity_and_keeps_input():
    scores = torch.randn(2, 4, 4)
    before = scores.clone()
    masked = apply_mask(scores, causal_mask(4))
    assert torch.equal(scores, before)
    assert torch.all(torch.isneginf(masked[:, ~causal_mask(4)]))
    assert torch.equal(masked[:, causal_mask(4)], scores[:, causal_mask(4)])


def test_masked_softmax_without_mask_is_softmax():
    scores = torch.randn(3, 5, 7)
    assert_close(masked_softmax(scores), torch.softmax(scores, -1), n=7)


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: attention_scores(torch.randn(2, 5, 11), torch.randn(2, 7, 12)), ShapeError, ["(2, 5, 11)", "(2, 7, 12)", "d_k = 11"]),
        (lambda: attention_scores(torch.randn(11), torch.randn(7, 11)), ShapeError, ["(..., T_q, d_k)", "(11,)"]),
        (lambda: attention_scores(torch.randn(2, 5, 11), torch.randn(3, 7, 11)), ShapeError, ["leading axes (2,)", "(3, 7, 11)"]),
        (lambda: attention_scores(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long)), TypeError, ["floating-point", "torch.int64"]),
        (lambda: scaled_dot_product_attention(torch.randn(2, 5, 4), torch.randn(2, 7, 4), torch.randn(2, 6, 3)), ShapeError, ["T_k = 7", "(2, 6, 3)"]),
        (lambda: scaled_dot_product_attention(torch.randn(5, 4), torch.randn(7, 4), torch.randn(7, 3, dtype=torch.float64)), TypeError, ["torch.float32", "torch.float64"]),
        (lambda: scaled_dot_product_attention(torch.randn(2, 5, 4), torch.randn(2, 7, 4), torch.randn(2, 7, 3), torch.ones(5, 7)), TypeError, ["bool", "torch.float32"]),
        (lambda: scaled_dot_product_attention(torch.randn(2, 5, 4), torch.randn(2, 7, 4), torch.randn(2, 7, 3), torch.ones(5, 6, dtype=torch.bool)), ShapeError, ["(5, 6)", "(2, 5, 7)"]),
        (lambda: masked_softmax(torch.randn(5, 7), torch.ones(3, 5, 7, dtype=torch.bool)), ShapeError, ["(3, 5, 7)", "(5, 7)"]),
        (lambda: causal_mask(0), ValueError, ["positive int", "0"]),
        (lambda: padding_mask([3, 9], 5), ValueError, ["0..5", "[3, 9]"]),
        (lambda: padding_mask([[3]], 5), ShapeError, ["(B,)", "(1, 1)"]),
        (lambda: attention_scores([[1.0]], torch.randn(1, 1)), TypeError, ["torch.Tensor", "list"]),
    ],
)
def test_bad_input_names_expected_and_received_shapes(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value), (word, str(info.value))
