"""The shared model's fused attention path (chapter 08): torch's F.scaled_dot_product_attention gives the
same outputs and gradients as the course's attention, for every mask, score bias and model variant."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from helpers import blocks
from helpers.attention import causal_mask
from helpers.blocks import Attention, ModelConfig, TinyDecoder, attend, fused_attend
from helpers.numerics import assert_close
from helpers.shapes import ShapeError
from helpers.training import lm_loss

DTYPES = [torch.float32, torch.float64]
B, H, T_Q, T_K, D = 2, 3, 5, 7, 4  # distinct sizes: a swapped axis cannot pass


def _qkv(dtype: torch.dtype, T_q: int = T_Q, T_k: int = T_K, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    make = lambda T: torch.randn(B, H, T, D, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()  # noqa: E731
    return make(T_q), make(T_k), make(T_k)


def _masks() -> dict[str, torch.Tensor | None]:
    gen = torch.Generator().manual_seed(1)
    lengths = torch.tensor([T_K, 3])
    padding = (torch.arange(T_K) < lengths[:, None])[:, None, None, :]  # (B, 1, 1, T_k)
    blocked_row = torch.ones(T_Q, T_K, dtype=torch.bool)
    blocked_row[2] = False  # query 2 may attend to nothing: zeros, not NaN
    return {
        "none": None,
        "causal-offset": torch.ones(T_Q, T_K, dtype=torch.bool).tril(T_K - T_Q),  # (T_q, T_k): a cached prefix
        "key-padding": padding,
        "padding-and-causal-offset": padding & torch.ones(T_Q, T_K, dtype=torch.bool).tril(T_K - T_Q),
        "random": torch.rand(B, H, T_Q, T_K, generator=gen) < 0.6,
        "row-fully-blocked": blocked_row,
    }


def _bias(dtype: torch.dtype) -> torch.Tensor:
    """A learned-looking relative bias (1, H, T_q, T_k), as T5's or ALiBi's, with a gradient."""
    gen = torch.Generator().manual_seed(2)
    return torch.randn(1, H, T_Q, T_K, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()


def _compare(course_inputs, fused_inputs, course_out, fused_out, dtype, n):
    assert_close(fused_out, course_out, n=n)
    g = torch.randn_like(course_out)
    course_grads = torch.autograd.grad(course_out, course_inputs, g)
    fused_grads = torch.autograd.grad(fused_out, fused_inputs, g)
    for got, expected in zip(fused_grads, course_grads):
        assert_close(got, expected, n=n)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask_name", list(_masks()))
@pytest.mark.parametrize("with_bias", [False, True], ids=["no-bias", "bias"])
def test_fused_attend_equals_the_course_attention_forward_and_backward(dtype, mask_name, with_bias):
    mask = _masks()[mask_name]
    q, k, v = _qkv(dtype)
    bias = _bias(dtype) if with_bias else None
    inputs = (q, k, v) + ((bias,) if with_bias else ())
    course, weights = attend(q, k, v, mask, bias)
    fused, none = attend(q, k, v, mask, bias, fused=True)
    assert weights.shape == (B, H, T_Q, T_K) and none is None
    _compare(inputs, inputs, course, fused, dtype, n=T_K * D)
    if mask_name == "row-fully-blocked":
        assert torch.equal(fused[:, :, 2], torch.zeros_like(fused[:, :, 2]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_square_causal_mask_takes_is_causal_and_gives_the_same_numbers(dtype):
    q, k, v = _qkv(dtype, T_q=6, T_k=6)
    mask = causal_mask(6)
    with mock.patch.object(blocks.F, "scaled_dot_product_attention",
                           wraps=torch.nn.functional.scaled_dot_product_attention) as spy:
        fused = fused_attend(q, k, v, mask)
    assert spy.call_args.kwargs == {"is_causal": True}  # the kernel's own causal path, no mask tensor
    course, _ = attend(q, k, v, mask)
    _compare((q, k, v), (q, k, v), course, fused, dtype, n=6 * D)


def test_fused_attend_names_bad_shapes_and_dtypes():
    q, k, v = _qkv(torch.float32)
    with pytest.raises(ShapeError, match=r"\(2, 3, 5, 7\)"):
        fused_attend(q, k, v, torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        fused_attend(q, k, v, torch.ones(T_Q, T_K))
    with pytest.raises(ShapeError, match="bias must broadcast"):
        fused_attend(q, k, v, None, torch.zeros(2, T_Q, T_K))
    with pytest.raises(ShapeError, match="d_head"):
        fused_attend(q, k[..., :3], v)


# ------------------------------------------------------------------------------------------------
# The sublayer and the model
# ------------------------------------------------------------------------------------------------


def _pair(config: ModelConfig, dtype: torch.dtype, seed: int = 0):
    """Two models with the same weights, one per attention path."""
    torch.manual_seed(seed)
    course = TinyDecoder(config).to(dtype)
    fused = TinyDecoder(ModelConfig(**{**vars(config), "kernels": "fused"})).to(dtype)
    fused.load_state_dict(course.state_dict())
    return course, fused


MODEL_VARIANTS = {
    "pre-layernorm-gelu": {},
    "post-rmsnorm-swiglu": dict(norm_placement="post", norm="rmsnorm", ffn="swiglu"),
    "gqa": dict(n_heads=4, n_kv_heads=2),
    "mqa": dict(n_heads=4, n_kv_heads=1),
    "no-positions": dict(positions="none"),
    "bidirectional": dict(causal=False),
    "untied-ffn-bias": dict(tie_weights=False, bias=True),
    # chapter 06's position methods: added to the input, rotating q and k, or biasing the scores
    "sinusoidal": dict(positions="sinusoidal"),
    "rope-half": dict(positions="rope"),
    "rope-interleaved-gqa": dict(positions="rope", rope_pairs="interleaved", n_heads=4, n_kv_heads=2),
    "alibi": dict(positions="alibi"),
    "relative": dict(positions="relative"),
    "relative-bidirectional": dict(positions="relative", causal=False),
    # chapter 05's block variants
    "parallel": dict(block="parallel"),
    "moe": dict(ffn="moe"),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", list(MODEL_VARIANTS))
def test_fused_model_equals_the_course_model_logits_and_gradients(dtype, variant):
    config = ModelConfig(**{"vocab_size": 23, "d_model": 16, "n_heads": 2, "n_layers": 2, "max_seq_len": 16,
                            **MODEL_VARIANTS[variant]})
    course, fused = _pair(config, dtype)
    ids = torch.randint(0, 23, (3, 11), generator=torch.Generator().manual_seed(4))
    with mock.patch.object(blocks.F, "scaled_dot_product_attention",
                           wraps=torch.nn.functional.scaled_dot_product_attention) as spy:
        fused_logits = fused(ids)
    assert spy.call_count == config.n_layers  # the fused model really runs the kernel, once per layer
    with mock.patch.object(blocks.F, "scaled_dot_product_attention", side_effect=AssertionError("fused")):
        course_logits = course(ids)  # ... and the default path never does
    n = config.d_model * 11
    assert_close(fused_logits, course_logits, n=n)
    lm_loss(course_logits, ids).backward()
    lm_loss(fused_logits, ids).backward()
    for (name, p_fused), p_course in zip(fused.named_parameters(), course.parameters()):
        assert_close(p_fused.grad, p_course.grad, n=n, msg=lambda m, name=name: f"{name}: {m}")


def test_fused_model_falls_back_to_the_course_path_when_weights_are_asked_for():
    config = ModelConfig(vocab_size=23, d_model=16, n_heads=2, n_layers=2, max_seq_len=16)
    course, fused = _pair(config, torch.float64)
    ids = torch.randint(0, 23, (2, 9), generator=torch.Generator().manual_seed(5))
    with mock.patch.object(blocks.F, "scaled_dot_product_attention", side_effect=AssertionError("fused")):
        logits, weights = fused(ids, return_weights=True)
    expected_logits, expected_weights = course(ids, return_weights=True)
    assert len(weights) == 2 and weights[0].shape == (2, 2, 9, 9)
    assert_close(logits, expected_logits, n=16 * 9)
    for got, expected in zip(weights, expected_weights):
        assert_close(got, expected, n=16 * 9)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_cross_attention_with_a_padding_mask_equals_the_course_path(dtype):
    config = ModelConfig(vocab_size=10, d_model=12, n_heads=3, n_kv_heads=1)
    torch.manual_seed(0)
    course = Attention(config).to(dtype)
    fused = Attention(ModelConfig(**{**vars(config), "kernels": "fused"})).to(dtype)
    fused.load_state_dict(course.state_dict())
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 4, 12, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    source = torch.randn(2, 9, 12, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    mask = (torch.arange(9) < torch.tensor([9, 5])[:, None])[:, None, None, :]  # (B, 1, 1, T_src)
    expected, weights = course(x, mask, source=source)
    got, none = fused(x, mask, source=source, need_weights=False)
    assert none is None and weights.shape == (2, 3, 4, 9)
    _compare((x, source), (x, source), expected, got, dtype, n=12 * 9)
    same, w = fused(x, mask, source=source)  # weights asked for: the course path
    assert_close(w, weights, n=12 * 9)


def test_config_names_the_attention_choices():
    with pytest.raises(ValueError, match="'course', 'fused'"):
        ModelConfig(vocab_size=10, kernels="flash")
    assert ModelConfig(vocab_size=10).kernels == "course"  # the chapters' own attention by default
