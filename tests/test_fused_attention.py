"""The shared model's fast path (chapter 08, ModelConfig.kernels="fused"): one matmul for Q, K and V, torch's
F.scaled_dot_product_attention, F.layer_norm / F.rms_norm, F.gelu / F.silu give the same outputs and gradients
as the course's own functions, for every mask and score bias, every model kind (decoder, encoder,
encoder-decoder), position method, norm placement and type, block and FFN variant, GQA and the KV cache."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

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
    with mock.patch.object(F, "scaled_dot_product_attention",
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
    "parallel-rmsnorm-swiglu": dict(block="parallel", norm="rmsnorm", ffn="swiglu"),
    "moe": dict(ffn="moe"),
    "post-layernorm-gelu": dict(norm_placement="post"),
    "pre-rmsnorm-swiglu-gqa": dict(norm="rmsnorm", ffn="swiglu", n_heads=4, n_kv_heads=2),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", list(MODEL_VARIANTS))
def test_fused_model_equals_the_course_model_logits_and_gradients(dtype, variant):
    config = ModelConfig(**{"vocab_size": 23, "d_model": 16, "n_heads": 2, "n_layers": 2, "max_seq_len": 16,
                            **MODEL_VARIANTS[variant]})
    course, fused = _pair(config, dtype)
    ids = torch.randint(0, 23, (3, 11), generator=torch.Generator().manual_seed(4))
    with mock.patch.object(F, "scaled_dot_product_attention",
                           wraps=torch.nn.functional.scaled_dot_product_attention) as spy:
        fused_logits = fused(ids)
    assert spy.call_count == config.n_layers  # the fused model really runs the kernel, once per layer
    with mock.patch.object(F, "scaled_dot_product_attention", side_effect=AssertionError("fused")):
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
    with mock.patch.object(F, "scaled_dot_product_attention", side_effect=AssertionError("fused")):
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


# ------------------------------------------------------------------------------------------------
# The other model kinds, the KV cache, and proof that the fast path runs none of the course's functions
# ------------------------------------------------------------------------------------------------

KIND_VARIANTS = {
    "pre-layernorm-gelu": {},
    "post-layernorm-gelu": dict(norm_placement="post"),
    "pre-rmsnorm-swiglu-gqa": dict(norm="rmsnorm", ffn="swiglu", n_heads=4, n_kv_heads=2),
    "post-rmsnorm-moe": dict(norm_placement="post", norm="rmsnorm", ffn="moe"),
    "no-positions-untied-bias": dict(positions="none", tie_weights=False, bias=True),
}


def _kind_pair(config: ModelConfig, dtype: torch.dtype):
    torch.manual_seed(0)
    course = blocks.build_model(config).to(dtype)
    fused = blocks.build_model(replace(config, kernels="fused")).to(dtype)
    fused.load_state_dict(course.state_dict())
    return course, fused


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["encoder", "encoder-decoder"])
@pytest.mark.parametrize("variant", list(KIND_VARIANTS))
def test_fused_encoder_and_encoder_decoder_equal_the_course_models(dtype, kind, variant):
    """With key padding (sequence lengths 9 and 5 of 9 source tokens), values and every gradient."""
    config = ModelConfig(**{"vocab_size": 23, "d_model": 16, "n_heads": 2, "n_layers": 2, "max_seq_len": 16,
                            "kind": kind, **KIND_VARIANTS[variant]})
    course, fused = _kind_pair(config, dtype)
    gen = torch.Generator().manual_seed(7)
    src = torch.randint(0, 23, (2, 9), generator=gen)
    lengths = torch.tensor([9, 5])
    if kind == "encoder":
        args = (src, lengths)
        targets = torch.randint(0, 23, (2, 9), generator=gen)
    else:
        tgt = torch.randint(0, 23, (2, 6), generator=gen)
        args = (src, tgt, lengths)
        targets = torch.randint(0, 23, (2, 6), generator=gen)
    with mock.patch.object(F, "scaled_dot_product_attention",
                           wraps=torch.nn.functional.scaled_dot_product_attention) as spy:
        got = fused(*args)
    assert spy.call_count == config.n_layers * (1 if kind == "encoder" else 3)  # self, self + cross
    expected = course(*args)
    n = config.d_model * 9
    assert_close(got, expected, n=n)
    keep = (torch.arange(targets.shape[1]) < 5)[None]  # score only positions real in both sequences
    for logits in (expected, got):
        torch.nn.functional.cross_entropy(logits[keep.expand(2, -1)], targets[keep.expand(2, -1)]).backward()
    for (name, p_fused), p_course in zip(fused.named_parameters(), course.parameters()):
        assert_close(p_fused.grad, p_course.grad, n=n, msg=lambda m, name=name: f"{name}: {m}")


CACHE_VARIANTS = {
    "learned": {},
    "sinusoidal": dict(positions="sinusoidal"),
    "rope-gqa": dict(positions="rope", n_heads=4, n_kv_heads=2),
    "alibi": dict(positions="alibi"),
    "relative": dict(positions="relative"),
    "none-post-rmsnorm": dict(positions="none", norm_placement="post", norm="rmsnorm"),
}


@pytest.mark.parametrize("variant", list(CACHE_VARIANTS))
def test_fused_cached_decoding_equals_the_course_models_full_pass(variant):
    """A prefill of 5 tokens (is_causal), one token (no mask needed), then 3 tokens after the cache (the
    bottom-right causal mask): the fused cached logits equal the course model's one full pass."""
    config = ModelConfig(**{"vocab_size": 23, "d_model": 16, "n_heads": 2, "n_layers": 2, "max_seq_len": 16,
                            **CACHE_VARIANTS[variant]})
    course, fused = _pair(config, torch.float64)
    ids = torch.randint(0, 23, (2, 9), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        expected = course(ids)
        cache = blocks.KVCache(config.n_layers)
        got = torch.cat([blocks.cached_forward(fused, ids[:, :5], cache), blocks.cached_forward(fused, ids[:, 5:6], cache),
                         blocks.cached_forward(fused, ids[:, 6:], cache)], dim=1)
    assert_close(got, expected, n=16 * 9)
    prompt = ids[:, :3]
    assert torch.equal(blocks.generate(fused, prompt, 8, temperature=0, threads=1),
                       blocks.generate(course, prompt, 8, use_cache=False, temperature=0, threads=1))


def test_the_fast_path_runs_none_of_the_course_functions(unsealed):
    """Forward and backward of every model kind with the course's functions made to fail: the fast path
    really is another path (not the course path with a new name)."""
    from helpers import ffn, norms
    from helpers.blocks import decoder, encoders, fused, generation, kv_cache

    model_modules = (decoder, encoders, fused, generation, kv_cache)  # where the model's code looks names up
    unsealed(norms, ffn, *model_modules)

    model_names = ("scaled_dot_product_attention", "masked_softmax", "split_heads", "merge_heads", "decoder_forward",
                   "pre_ln_block", "post_ln_block", "decoder_block")
    course_functions = [(norms, "layer_norm"), (norms, "rms_norm"), (ffn, "feed_forward"), (ffn, "swiglu_ffn"),
                        *((m, name) for name in model_names for m in model_modules if hasattr(m, name))]
    assert {name for _, name in course_functions} >= set(model_names)  # each one is patched somewhere
    gen = torch.Generator().manual_seed(9)
    ids = torch.randint(0, 23, (2, 7), generator=gen)
    runs = []
    for kind, fields in (("decoder", {}), ("decoder", dict(norm="rmsnorm", ffn="swiglu", block="parallel")),
                         ("encoder", dict(norm_placement="post")), ("encoder-decoder", {})):
        config = ModelConfig(vocab_size=23, d_model=16, n_heads=2, n_layers=2, max_seq_len=16, kind=kind,
                             kernels="fused", **fields)
        model = blocks.build_model(config)
        runs.append((model, (ids, ids[:, :5]) if kind == "encoder-decoder" else (ids,)))
    with contextlib.ExitStack() as stack:
        for module, name in course_functions:
            stack.enter_context(mock.patch.object(module, name, side_effect=AssertionError(f"course {name} ran")))
        for model, args in runs:
            model(*args).sum().backward()
    assert all(p.grad is not None for model, _ in runs for p in model.parameters())
