"""Chapter 07's references against oracles nobody here wrote: torch's FlopCounterMode on the real
modules, .nbytes of real caches, full recomputation, and F.scaled_dot_product_attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from helpers import blocks, complexity
from helpers.attention import causal_mask, padding_mask
from helpers.blocks import CHOICES, KVCache, ModelConfig, TinyDecoder, cached_causal_mask, cached_forward, generate
from helpers.ffn import FeedForward, SwiGLUFFN
from helpers.numerics import assert_close, close
from helpers.shapes import ShapeError


def counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def counted_by_op(fn) -> dict[str, int]:
    with FlopCounterMode(display=False) as counter:
        fn()
    return {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}


# ------------------------------------------------------------------------------------------------
# FLOP counters against torch's flop counter on the real modules
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_heads, n_kv_heads", [(4, 4), (6, 2), (6, 1)], ids=["MHA", "GQA", "MQA"])
@pytest.mark.parametrize("B, T", [(1, 1), (2, 7), (3, 33)])
def test_attention_flops_match_the_flop_counter(n_heads, n_kv_heads, B, T):
    config = ModelConfig(vocab_size=11, d_model=48, n_heads=n_heads, n_kv_heads=n_kv_heads)
    attn = blocks.Attention(config)
    x = torch.randn(B, T, 48)
    ops = counted_by_op(lambda: attn(x, causal_mask(T)))
    got = complexity.attention_flops(48, n_heads, T, n_kv_heads=n_kv_heads, batch=B)
    assert ops["aten.mm"] == got["projections"] + got["output"]  # the four nn.Linear layers
    assert ops["aten.bmm"] == got["scores"] + got["values"]  # Q Kᵀ and A V
    assert got["total"] == sum(ops.values())
    assert got["scores"] == got["values"] == 2 * B * n_heads * T * T * (48 // n_heads)


def test_attention_flops_of_a_decoding_step_match_the_flop_counter():
    config = ModelConfig(vocab_size=11, d_model=32, n_heads=4, n_kv_heads=2)
    attn = blocks.Attention(config)
    cache = blocks.LayerCache()
    with torch.no_grad():
        attn(torch.randn(2, 9, 32), cached_causal_mask(9, 9), cache=cache)  # prefill 9 tokens
        got = counted(lambda: attn(torch.randn(2, 1, 32), cached_causal_mask(1, 10), cache=cache))
    assert got == complexity.attention_flops(32, 4, 1, T_k=10, n_kv_heads=2, batch=2)["total"]


@pytest.mark.parametrize("kind", ["gelu", "swiglu"])
def test_mlp_flops_match_the_flop_counter(kind):
    ffn = FeedForward(24, 80, activation="gelu", bias=True) if kind == "gelu" else SwiGLUFFN(24, 80)
    x = torch.randn(3, 5, 24)
    assert counted(lambda: ffn(x)) == complexity.mlp_flops(24, 80, 5, kind=kind, batch=3)


CONFIGS = [
    ModelConfig(vocab_size=97, d_model=32, n_heads=4, n_layers=2),
    ModelConfig(vocab_size=50, d_model=48, n_heads=6, n_kv_heads=2, n_layers=3, ffn="swiglu", d_ff=72,
                norm="rmsnorm", tie_weights=False),
    ModelConfig(vocab_size=31, d_model=16, n_heads=2, n_layers=1, norm_placement="post", positions="none", bias=True),
]


@pytest.mark.parametrize("config", CONFIGS, ids=["gpt2-like", "llama-like", "post-ln"])
@pytest.mark.parametrize("B, T", [(1, 12), (2, 5)])
def test_model_flops_match_the_flop_counter_forward_and_backward(config, B, T):
    torch.manual_seed(0)
    model = TinyDecoder(config)
    ids = torch.randint(0, config.vocab_size, (B, T))
    assert counted(lambda: model(ids)) == complexity.model_flops(config, T, batch=B)
    assert counted(lambda: model(ids).sum().backward()) == complexity.model_flops(config, T, batch=B, training=True)
    assert complexity.flops_per_token(config, T) * T == complexity.model_flops(config, T)


def test_training_is_three_forwards_and_per_token_cost_grows_with_T():
    config = CONFIGS[0]
    assert complexity.model_flops(config, 64, training=True) == 3 * complexity.model_flops(config, 64)
    costs = [complexity.flops_per_token(config, T) for T in (1, 16, 256)]
    assert costs == sorted(costs) and costs[0] < costs[-1]


def test_decode_step_flops_match_the_flop_counter():
    config = CONFIGS[1]
    torch.manual_seed(0)
    model = TinyDecoder(config)
    cache = KVCache(config.n_layers)
    with torch.no_grad():
        cached_forward(model, torch.randint(0, 50, (1, 6)), cache)
        got = counted(lambda: cached_forward(model, torch.randint(0, 50, (1, 1)), cache))
    assert got == complexity.decode_step_flops(config, 6)
    # prefill of P tokens costs P decode steps' linear work plus the quadratic part
    assert complexity.decode_step_flops(config, 0) == complexity.model_flops(config, 1)


def test_crossover_is_where_attention_first_costs_as_much_as_the_mlp():
    gpt2 = ModelConfig(vocab_size=50257, d_model=768, n_heads=12, n_layers=12, max_seq_len=1024)
    assert complexity.attention_mlp_crossover(gpt2) == 1536  # (2 * 3072 - 2 * 768 - 2 * 768) / 2
    for config in (gpt2, CONFIGS[0], CONFIGS[1]):
        T = complexity.attention_mlp_crossover(config)
        def attn(t, c=config):
            return complexity.attention_flops(c.d_model, c.n_heads, t, n_kv_heads=c.kv_heads)["total"]

        def mlp(t, c=config):
            return complexity.mlp_flops(c.d_model, c.ffn_width, t, kind=c.ffn)

        assert attn(T) >= mlp(T) and (T == 1 or attn(T - 1) < mlp(T - 1))


def test_counters_refuse_bad_arguments():
    with pytest.raises(ValueError, match="T must be a positive int"):
        complexity.attention_flops(64, 4, 0)
    with pytest.raises(ShapeError, match="not divisible by n_kv_heads"):
        complexity.attention_flops(64, 4, 8, n_kv_heads=3)
    with pytest.raises(ValueError, match="kind must be 'gelu' or 'swiglu'"):
        complexity.mlp_flops(64, 256, 8, kind="relu")
    with pytest.raises(TypeError, match="config must be a ModelConfig"):
        complexity.model_flops({"d_model": 64}, 8)


# ------------------------------------------------------------------------------------------------
# Memory counters against .nbytes of real tensors
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, size", [(torch.float32, 4), (torch.float16, 2), (torch.bfloat16, 2),
                                         (torch.float64, 8), (torch.int8, 1)])
def test_bytes_per_element(dtype, size):
    assert complexity.bytes_per_element(dtype) == size == torch.empty(3, dtype=dtype).nbytes // 3


def test_score_bytes_is_the_nbytes_of_the_weights():
    q, k = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8)
    _, weights = blocks.attend(q, k, torch.randn(2, 3, 7, 8))
    assert complexity.score_bytes(2, 3, 5, 7) == weights.nbytes
    assert complexity.score_bytes(2, 3, 5, 7, torch.float16) == weights.half().nbytes


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["MHA", "GQA", "MQA"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_kv_cache_bytes_is_the_nbytes_of_a_real_cache(n_kv_heads, dtype):
    config = ModelConfig(vocab_size=40, d_model=32, n_heads=4, n_kv_heads=n_kv_heads, n_layers=3)
    model = TinyDecoder(config).to(dtype)
    cache = KVCache(config.n_layers)
    with torch.no_grad():
        cached_forward(model, torch.randint(0, 40, (2, 5)), cache)
        cached_forward(model, torch.randint(0, 40, (2, 1)), cache)
    assert cache.nbytes == complexity.kv_cache_bytes(3, n_kv_heads, 8, 6, batch=2, dtype=dtype)
    assert cache[0].k.shape == (2, n_kv_heads, 6, 8)  # the H_kv heads are cached, not the repeated H


def test_kv_cache_bytes_of_the_seeds_example_is_two_gib():
    assert complexity.kv_cache_bytes(32, 32, 128, 4096, dtype=torch.float16) == 2 * 2**30
    assert complexity.kv_cache_bytes(32, 8, 128, 4096, dtype=torch.float16) == 2**29  # GQA: 4x less
    assert complexity.kv_cache_bytes(32, 32, 128, 0) == 0
    with pytest.raises(TypeError, match="torch.dtype"):
        complexity.kv_cache_bytes(32, 32, 128, 4096, dtype="fp16")


# ------------------------------------------------------------------------------------------------
# Tiled attention (online softmax) against exact attention
# ------------------------------------------------------------------------------------------------


def exact(q, k, v, mask=None):
    """torch's fused attention; rows with no allowed key are zeros in chapter 01's convention."""
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if mask is not None:
        has_key = mask.expand(*q.shape[:-1], k.shape[-2]).any(dim=-1, keepdim=True)
        out = torch.where(has_key, out, torch.zeros((), dtype=out.dtype))
    return out


@pytest.mark.parametrize("block_size", [1, 3, 5, 16, 64])
@pytest.mark.parametrize("T_q, T_k, causal", [(13, 13, False), (4, 13, False), (17, 9, False),
                                              (13, 13, True), (4, 13, True)])
def test_tiled_attention_equals_exact_attention(block_size, T_q, T_k, causal):
    gen = torch.Generator().manual_seed(block_size * 100 + T_q)
    q = torch.randn(2, 3, T_q, 8, generator=gen, dtype=torch.float64)
    k = torch.randn(2, 3, T_k, 8, generator=gen, dtype=torch.float64)
    v = torch.randn(2, 3, T_k, 6, generator=gen, dtype=torch.float64)
    mask = cached_causal_mask(T_q, T_k) if causal else None
    got = complexity.tiled_attention(q, k, v, causal=causal, block_size=block_size)
    assert_close(got, exact(q, k, v, mask), n=T_k)


def test_tiled_attention_with_padding_masks_and_fully_masked_rows():
    torch.manual_seed(1)
    q, k, v = torch.randn(3, 2, 10, 4), torch.randn(3, 2, 10, 4), torch.randn(3, 2, 10, 4)
    mask = padding_mask([10, 3, 0], 10)[:, None] & causal_mask(10)  # (3, 1, 10, 10): sequence 2 all blocked
    for block_size in (1, 4, 7, 10):
        got = complexity.tiled_attention(q, k, v, mask, block_size=block_size)
        assert not torch.isnan(got).any()
        assert_close(got, exact(q, k, v, mask), n=10)
        assert torch.equal(got[2], torch.zeros_like(got[2]))
    # a key-padding mask with a size-1 query axis, combined with causal=True
    pad = padding_mask([6, 10, 2], 10)[:, None]  # (3, 1, 1, 10)
    assert_close(complexity.tiled_attention(q, k, v, pad, causal=True, block_size=3),
                 exact(q, k, v, pad & causal_mask(10)), n=10)


def test_tiled_attention_survives_scores_that_overflow_exp():
    q = torch.full((1, 1, 6, 4), 30.0)
    k = torch.randn(1, 1, 6, 4, generator=torch.Generator().manual_seed(0)) * 30  # scores up to ~1e3
    v = torch.randn(1, 1, 6, 4)
    assert not torch.isinf(torch.exp(q @ k.transpose(-2, -1) / 2)).logical_not().all()  # naive exp overflows
    assert_close(complexity.tiled_attention(q, k, v, block_size=2), exact(q, k, v), n=6)


def test_tiled_attention_never_materialises_the_score_matrix():
    """The largest matmul result it creates is one (block x block) tile, by the flop counter's shapes."""
    q, k, v = (torch.randn(1, 1, 64, 8) for _ in range(3))
    shapes = []

    class Spy(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            if isinstance(result, torch.Tensor) and result.dim() >= 2:
                shapes.append(tuple(result.shape[-2:]))
            return result

    with Spy():
        complexity.tiled_attention(q, k, v, causal=True, block_size=16)
    assert max(a * b for a, b in shapes) <= 64 * 8  # an output-sized buffer at most, never 64 x 64
    assert (64, 64) not in shapes


def test_tiled_attention_refuses_bad_inputs():
    q = torch.randn(2, 5, 4)
    with pytest.raises(ShapeError, match="must share"):
        complexity.tiled_attention(q, torch.randn(2, 6, 3), torch.randn(2, 6, 4))
    with pytest.raises(ValueError, match="block_size must be a positive int"):
        complexity.tiled_attention(q, q, q, block_size=0)
    with pytest.raises(ShapeError, match="does not broadcast"):
        complexity.tiled_attention(q, q, q, torch.ones(4, 4, dtype=torch.bool))


# ------------------------------------------------------------------------------------------------
# The KV cache: cached decoding equals full recomputation
# ------------------------------------------------------------------------------------------------


def make_model(seed: int = 0, **fields) -> TinyDecoder:
    """A model with weights large enough that the greedy choice is never a near-tie."""
    torch.manual_seed(seed)
    config = ModelConfig(**{"vocab_size": 37, "d_model": 32, "n_heads": 4, "n_layers": 2, "max_seq_len": 40, **fields})
    model = TinyDecoder(config).double()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    return model.eval()


POSITIONS = CHOICES["positions"]  # every method the shared model has, including chapter 06's once merged


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("heads", [(4, None), (4, 2), (4, 1)], ids=["MHA", "GQA", "MQA"])
def test_cached_logits_equal_full_recomputation(positions, heads):
    model = make_model(positions=positions, n_heads=heads[0], n_kv_heads=heads[1])
    ids = torch.randint(0, 37, (2, 11), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(ids)  # (2, 11, V)
        cache = KVCache(2)
        pieces = [cached_forward(model, ids[:, :5], cache)]  # prefill 5, then 1, 1, then 4 at once
        pieces += [cached_forward(model, ids[:, t:t + 1], cache) for t in (5, 6)]
        pieces.append(cached_forward(model, ids[:, 7:], cache))
    assert len(cache) == 11 and cache[1].length == 11
    assert_close(torch.cat(pieces, dim=1), full, n=32)


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("prompt_length", [1, 6])
def test_cached_greedy_generation_gives_the_recomputed_tokens(positions, prompt_length):
    model = make_model(seed=1, positions=positions, n_kv_heads=2, ffn="swiglu", norm="rmsnorm")
    prompt = torch.randint(0, 37, (3, prompt_length), generator=torch.Generator().manual_seed(5))
    fast = generate(model, prompt, 20, use_cache=True, temperature=0)
    slow = generate(model, prompt, 20, use_cache=False, temperature=0)
    assert fast.shape == (3, prompt_length + 20)
    assert torch.equal(fast, slow)
    assert torch.equal(fast[:, :prompt_length], prompt)


def test_post_ln_model_caches_exactly_too():
    model = make_model(seed=2, norm_placement="post")
    prompt = torch.randint(0, 37, (1, 4), generator=torch.Generator().manual_seed(0))
    assert torch.equal(generate(model, prompt, 12, temperature=0), generate(model, prompt, 12, False, temperature=0))


def test_sampling_is_repeatable_with_a_seeded_generator_and_respects_top_k():
    model = make_model(seed=4)
    prompt = torch.zeros(4, 2, dtype=torch.long)
    draws = [generate(model, prompt, 15, temperature=1.5, top_k=3, generator=torch.Generator().manual_seed(9))
             for _ in range(2)]
    assert torch.equal(draws[0], draws[1])
    uncached = generate(model, prompt, 15, False, temperature=1.5, top_k=3, generator=torch.Generator().manual_seed(9))
    assert torch.equal(draws[0], uncached)
    # with top_k = 1 sampling is greedy whatever the temperature
    greedy = generate(model, prompt, 15, temperature=0)
    assert torch.equal(generate(model, prompt, 15, temperature=5.0, top_k=1, generator=torch.Generator()), greedy)
    # every sampled token is among the 3 most likely at its step
    seq = draws[0]
    with torch.no_grad():
        logits = model(seq[:, :-1])[:, 1:]  # (4, 15, V): the logits that chose tokens 2 ..
    top3 = logits.topk(3, dim=-1).indices
    assert (top3 == seq[:, 2:, None]).any(dim=-1).all()


def test_learned_positions_past_max_seq_len_are_a_clear_error():
    model = make_model(positions="learned", max_seq_len=10)
    with pytest.raises(ValueError, match="max_seq_len = 10"):
        generate(model, torch.zeros(1, 4, dtype=torch.long), 7)
    cache = KVCache(2)
    with torch.no_grad():
        cached_forward(model, torch.zeros(1, 10, dtype=torch.long), cache)
        with pytest.raises(ValueError, match="cannot process position 10"):
            cached_forward(model, torch.zeros(1, 1, dtype=torch.long), cache)
    assert len(generate(model, torch.zeros(1, 4, dtype=torch.long), 6)[0]) == 10  # exactly full is fine


def test_position_offset_matters():
    """Feeding the new token at the wrong position (offset off by one) changes the logits."""
    model = make_model(positions="learned")
    ids = torch.randint(0, 37, (1, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(ids)[:, -1]
        cache = KVCache(2)
        cached_forward(model, ids[:, :5], cache)
        cache.tokens -= 1  # pretend one fewer token is cached: the new token lands at position 4
        wrong = cached_forward(model, ids[:, 5:], cache)[:, -1]
    assert not torch.allclose(wrong, full, atol=1e-3)


def test_cache_mask_is_bottom_right_while_is_causal_is_top_left():
    T_q, T_k = 3, 7
    mask = cached_causal_mask(T_q, T_k)
    assert mask.tolist() == [[True] * 5 + [False] * 2, [True] * 6 + [False], [True] * 7]
    assert torch.equal(cached_causal_mask(5, 5), causal_mask(5))
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, T, 4, generator=gen) for T in (T_q, T_k, T_k))
    ours, _ = blocks.attend(q, k, v, mask)
    assert_close(ours, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), n=T_k)
    top_left = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert_close(top_left, F.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(T_q, T_k, dtype=torch.bool).tril()))
    assert not torch.allclose(top_left, ours, atol=1e-3)  # is_causal hides the newest keys from new queries
    with pytest.raises(ShapeError, match="T_q <= T_k"):
        cached_causal_mask(4, 3)


def test_cache_refuses_mismatched_inputs():
    model = make_model()
    with pytest.raises(TypeError, match=r"KVCache\(2\)"):
        cached_forward(model, torch.zeros(1, 2, dtype=torch.long), KVCache(3))
    layer = blocks.LayerCache()
    layer.update(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4))
    with pytest.raises(ShapeError, match="must match it in B, H_kv and d_head"):
        layer.update(torch.randn(1, 4, 1, 4), torch.randn(1, 4, 1, 4))
    with pytest.raises(ValueError, match="causal=True"):
        cached_forward(make_model(causal=False), torch.zeros(1, 2, dtype=torch.long), KVCache(2))
    with pytest.raises(ShapeError, match="prompt_ids must be integer ids"):
        generate(model, torch.zeros(3, dtype=torch.long), 2)


# ------------------------------------------------------------------------------------------------
# The exercises' functional versions of one cached step
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("H, H_kv", [(4, 4), (6, 2), (3, 1)])
@pytest.mark.parametrize("T_past, T_new", [(0, 5), (7, 1), (4, 3)])
def test_attend_with_cache_equals_recomputing_the_whole_sequence(H, H_kv, T_past, T_new):
    gen = torch.Generator().manual_seed(H * 10 + T_past)
    T = T_past + T_new
    q_all = torch.randn(2, H, T, 5, generator=gen, dtype=torch.float64)
    k_all = torch.randn(2, H_kv, T, 5, generator=gen, dtype=torch.float64)
    v_all = torch.randn(2, H_kv, T, 5, generator=gen, dtype=torch.float64)
    full = F.scaled_dot_product_attention(q_all, k_all, v_all, is_causal=True, enable_gqa=True)  # (2, H, T, 5)
    out, k_cat, v_cat = complexity.attend_with_cache(q_all[:, :, T_past:], k_all[:, :, T_past:], v_all[:, :, T_past:],
                                                     k_all[:, :, :T_past], v_all[:, :, :T_past])
    assert_close(out, full[:, :, T_past:], n=T)
    assert torch.equal(k_cat, k_all) and torch.equal(v_cat, v_all)  # copies: exact


def test_embed_new_tokens_equals_the_rows_of_the_full_sequence():
    model = make_model(positions="learned")
    ids = torch.randint(0, 37, (2, 9), generator=torch.Generator().manual_seed(1))
    wte, wpe = model.tok_emb.weight.detach(), model.pos_emb.weight.detach()
    full = model.tok_emb(ids) + model.pos_emb(torch.arange(9))  # (2, 9, d_model) through nn.Embedding
    assert torch.equal(complexity.embed_new_tokens(ids[:, 6:], wte, wpe, 6), full[:, 6:].detach())
    with pytest.raises(ShapeError, match="T_max = 40 rows"):
        complexity.embed_new_tokens(ids, wte, wpe, 35)


# ------------------------------------------------------------------------------------------------
# Measuring memory
# ------------------------------------------------------------------------------------------------


def test_peak_tensor_bytes_counts_live_tensors_and_frees_dead_ones():
    def two_at_once():
        a = torch.ones(1000)  # 4000 bytes
        b = torch.ones(500, dtype=torch.float64)  # 4000 bytes
        return a.sum() + b.sum()

    def one_after_another():
        total = torch.ones(1000).sum()  # the 4000-byte tensor is freed before the next is made
        return total + torch.ones(1000).sum()

    assert complexity.peak_tensor_bytes(two_at_once)[1] >= 8000
    peak_seq = complexity.peak_tensor_bytes(one_after_another)[1]
    assert 4000 <= peak_seq < 8000
    x = torch.randn(64, 64)
    view, peak = complexity.peak_tensor_bytes(lambda: x.t()[:10])  # a view allocates nothing new
    assert peak == 0 and view.shape == (10, 64)


def test_peak_tensor_bytes_of_naive_attention_holds_the_score_matrix():
    q = k = v = torch.randn(1, 2, 128, 8)
    (_, weights), peak = complexity.peak_tensor_bytes(lambda: blocks.attend(q, k, v))
    assert peak >= weights.nbytes == complexity.score_bytes(1, 2, 128)
    _, tiled_peak = complexity.peak_tensor_bytes(lambda: complexity.tiled_attention(q, k, v, block_size=16))
    assert tiled_peak < complexity.score_bytes(1, 2, 128) / 4


def test_peak_tensor_bytes_agrees_with_the_operating_systems_peak_rss():
    """The oracle is the kernel: VmHWM (peak resident memory) of a fresh process, reset just before the call."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak RSS")
    from tools.bench_complexity import MEMORY_CHILD, ROOT

    done = subprocess.run([sys.executable, "-c", MEMORY_CHILD, "naive", "1024", "1"], capture_output=True,
                          text=True, cwd=ROOT, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0 and "Permission denied" in done.stderr:
        pytest.skip("this system does not let a process reset its peak RSS")
    assert done.returncode == 0, done.stderr
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert measured["tensor_peak_bytes"] >= 2 * complexity.score_bytes(1, 4, 1024)  # scores and weights
    assert abs(measured["rss_peak_bytes"] - measured["tensor_peak_bytes"]) < 0.15 * measured["tensor_peak_bytes"]


@pytest.mark.parametrize("fields", [{"kernels": "fused"}, {"block": "parallel"}, {"ffn": "moe"}],
                         ids=["fused-attention", "parallel-block", "moe"])
def test_cache_works_with_the_other_chapters_switches(fields):
    model = make_model(seed=6, n_kv_heads=2, **fields)
    ids = torch.randint(0, 37, (2, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = model(ids)
        cache = KVCache(2)
        cached = torch.cat([cached_forward(model, ids[:, :6], cache), cached_forward(model, ids[:, 6:7], cache),
                            cached_forward(model, ids[:, 7:], cache)], dim=1)
    assert_close(cached, full, n=32)
    prompt = ids[:, :3]
    assert torch.equal(generate(model, prompt, 10, temperature=0), generate(model, prompt, 10, False, temperature=0))


# ---------------------------------------------------------------------------------------------
# The roofline, real chips and Llama-3-8B (issue 26 item 1)
# ---------------------------------------------------------------------------------------------


def test_roofline_closed_forms():
    P, B = 989.4e12, 3.35e12  # H100 SXM, bf16 dense, from NVIDIA's data sheet
    assert close(torch.tensor(complexity.ridge_intensity(P, B), dtype=torch.float64),
                 torch.tensor(295.34328358208955, dtype=torch.float64))
    assert complexity.attainable_flops(1.0, P, B) == B and complexity.attainable_flops(1e4, P, B) == P
    assert complexity.roofline_time(2e12, 1e9, P, B) == 2e12 / P  # compute-bound: the arithmetic sets the time
    assert complexity.roofline_time(2e9, 1e9, P, B) == 1e9 / B  # memory-bound: the bytes do
    assert complexity.decode_floor_seconds(16e9, 2e12) == 8e-3
    assert complexity.arithmetic_intensity(6.0, 3.0) == 2.0
    with pytest.raises(ValueError, match="bandwidth must be a finite number > 0"):
        complexity.ridge_intensity(P, 0)


@pytest.mark.parametrize("peak, bandwidth, size", [(989.4e12, 3.35e12, 2), (312e12, 2.039e12, 2),
                                                   (624e12, 2.039e12, 1), (19.5e12, 1.555e12, 4), (400e12, 2e12, 2)])
def test_crossover_batch_is_the_first_compute_bound_batch(peak, bandwidth, size):
    """At the crossover batch the step's compute time reaches its memory time; one sequence fewer, it does not."""
    n = 7_000_000_000
    b = complexity.decode_crossover_batch(peak, bandwidth, size)
    compute, memory = (lambda batch: 2 * n * batch / peak), n * size / bandwidth
    assert compute(b) >= memory * (1 - 1e-12) and compute(b - 1) < memory
    r = complexity.decode_roofline(n, b - 1, size, peak, bandwidth)
    assert r["seconds"] == memory and r["crossover_batch"] == b
    assert complexity.decode_roofline(n, 4 * b, size, peak, bandwidth)["seconds"] == compute(4 * b)


@pytest.mark.parametrize("config", [
    dict(vocab_size=50, d_model=32, n_heads=4, n_kv_heads=2, d_ff=40, n_layers=3, norm="rmsnorm", ffn="swiglu",
         positions="rope", tie_weights=False),
    dict(vocab_size=37, d_model=24, n_heads=3, n_layers=2, bias=True, max_seq_len=20),
    dict(vocab_size=37, d_model=24, n_heads=6, n_kv_heads=1, n_layers=1, ffn="swiglu", positions="sinusoidal",
         bias=True),
])
def test_decoder_param_count_is_the_models(config):
    c = ModelConfig(**config)
    assert complexity.decoder_param_count(c) == sum(p.numel() for p in TinyDecoder(c).parameters())


def test_llama3_8b_parameter_count_is_the_published_one():
    """Meta's Llama-3-8B checkpoint holds 8,030,261,248 parameters (32 layers, d 4096, 32 heads, 8 K/V heads,
    d_ff 14336, V 128256, untied head)."""
    llama = ModelConfig(vocab_size=128256, d_model=4096, n_heads=32, n_kv_heads=8, d_ff=14336, n_layers=32,
                        norm="rmsnorm", ffn="swiglu", positions="rope", tie_weights=False, max_seq_len=8192)
    assert complexity.decoder_param_count(llama) == 8_030_261_248


def test_copy_bandwidth_is_a_rate():
    assert complexity.copy_bandwidth(4 * 2**20, repeat=2) > 1e8  # any machine copies more than 100 MB/s


# ---------------------------------------------------------------------------------------------
# FlashAttention's memory traffic (issue 26 item 2)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T_q, T_k, d, d_v, block, causal", [
    (100, 100, 8, 8, 16, False), (100, 100, 8, 8, 32, True), (64, 64, 16, 16, 64, False),
    (10, 23, 8, 5, 4, True), (37, 37, 4, 4, 8, True), (7, 12, 3, 6, 5, False),
])
def test_tiled_attention_traffic_measured_equals_the_count(T_q, T_k, d, d_v, block, causal):
    gen = torch.Generator().manual_seed(T_q + block)
    q, k, v = torch.randn(2, 3, T_q, d, generator=gen), torch.randn(2, 3, T_k, d, generator=gen), \
        torch.randn(2, 3, T_k, d_v, generator=gen)
    measured = complexity.count_attention_io(complexity.tiled_attention, q, k, v, block_size=block, causal=causal)
    assert measured == complexity.tiled_attention_io(T_q, T_k, d, block, d_v=d_v, causal=causal, batch_heads=6)


def test_the_traffic_counter_measures_rather_than_echoes():
    """The same counter on chapter 01's attention sees Q, K and V read once each: that algorithm's
    traffic lives in its T x T intermediates, which a tiled kernel never writes."""
    from helpers.attention import scaled_dot_product_attention

    q, k, v = (torch.randn(1, 2, 50, 8) for _ in range(3))
    plain = complexity.count_attention_io(lambda *a: scaled_dot_product_attention(*a)[0], q, k, v)
    assert plain["read"] == 3 * 2 * 50 * 8
    tiled = complexity.count_attention_io(complexity.tiled_attention, q, k, v, block_size=10)
    assert tiled["read"] == 2 * 50 * 8 + 2 * 2 * 50 * 8 * 5  # Q once, K and V once per query block


def test_tiled_traffic_is_theorem_2s_order():
    """With blocks of M / (4 d) rows, the K/V traffic is 8 N² d² / M (Dao et al. 2022, Theorem 2), and the
    standard algorithm's is 4 N d + 4 N² (their Algorithm 0)."""
    for N, d, M in ((1024, 64, 65536), (4096, 128, 131072), (2048, 64, 16384)):
        b = M // (4 * d)
        io = complexity.tiled_attention_io(N, N, d, b)
        assert io["read"] - N * d == 8 * N * N * d * d // M and io["written"] == 2 * N * d
        assert complexity.standard_attention_io(N, d)["total"] == 4 * N * d + 4 * N * N
        assert complexity.standard_attention_io(N, d)["total"] > io["total"]


# ---------------------------------------------------------------------------------------------
# Context length in practice (issue 26 item 5)
# ---------------------------------------------------------------------------------------------


def test_prefill_latency_times_every_length():
    c = ModelConfig(vocab_size=40, d_model=16, n_heads=2, n_layers=1, max_seq_len=32)
    times = complexity.prefill_latency(c, [4, 32], repeat=1)
    assert list(times) == [4, 32] and all(t > 0 for t in times.values())
    with pytest.raises(ValueError, match="needs max_seq_len >= it"):
        complexity.prefill_latency(c, [64])


def test_loss_by_visible_context_sees_only_the_window():
    """A model without attention or positions (embeddings to head: a bigram model) gives the same loss for
    every window; one layer of attention over learned positions does not."""
    ids = torch.randint(0, 30, (400,), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    bigram = TinyDecoder(ModelConfig(vocab_size=30, n_layers=0, positions="none"))
    losses = complexity.loss_by_visible_context(bigram, ids, (1, 4, 16), n_targets=64)
    assert close(torch.tensor(list(losses.values())), torch.full((3,), losses[1]), n=64)
    torch.manual_seed(0)
    reader = TinyDecoder(ModelConfig(vocab_size=30, n_layers=1, max_seq_len=16))
    losses = complexity.loss_by_visible_context(reader, ids, (1, 4, 16), n_targets=64)
    assert abs(losses[1] - losses[16]) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_a_readable_window_is_not_a_used_one(seed):
    """The trained character model uses its last few characters (w = 1 -> 4 lowers the loss by more than
    0.15 nats) and not the other 60 of its window (w = 64 is not 0.05 below w = 4). About 5 CPU-s a seed."""
    loss = complexity.context_use_experiment(seed)["loss"]
    assert loss[1] > loss[4] + 0.15
    assert loss[64] > loss[4] - 0.05
