# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] id="intro"
# # Chapter 07 exercises: FLOPs, KV-cache memory, cached decoding, and the online softmax
#
# You will count what attention and the MLP cost, size the KV cache of real decoders, and write the
# two pieces that make long-context inference possible: a cached decoding step and FlashAttention's
# online softmax. Last, you put a decode step of a real model on the roofline of a real chip.
#
# | # | exercise |
# |---|---|
# | 1 | `attention_flops(d_model, n_heads, T, n_kv_heads=None)` |
# | 2 | `mlp_flops(d_model, d_ff, T, kind="gelu")` |
# | 3 | `kv_cache_bytes(n_layers, n_kv_heads, d_head, tokens, batch, dtype)` |
# | 4 | the KV cache of real decoders: MHA, GQA, MQA, a batch, a GPU |
# | 5 | `embed_new_tokens(ids, wte, wpe, cache_length)` |
# | 6 | `attend_with_cache(q, k_new, v_new, k_cache, v_cache)` |
# | 7 | `online_softmax_attention(q, k, v, block_size)` |
# | 8 | `decode_roofline(n_params, batch, bytes_per_param, peak_flops, bandwidth)` |
#
# **How it works.** Write your answer in the cell marked `# YOUR CODE HERE` (delete the
# `raise NotImplementedError()` line), run it, then run the test cell below it. A visible test
# prints a line starting with ✓ when your answer is right; otherwise it stops with one sentence
# saying what is wrong. After each visible test sits a hidden test: it runs when the notebook is
# graded, with other sizes, seeds and dtypes, so make your functions general rather than fitted to
# the visible test.
#
# **Conventions.** One multiply-add is **2 FLOPs**: a product of an `(m, k)` matrix with a `(k, n)`
# matrix costs `2 * m * k * n`. Only matrix products are counted (softmax, norms and activations are
# not), which is what `torch.utils.flop_counter.FlopCounterMode` counts: the checks' expected numbers
# are the ones it measures on the course's real modules. Shapes: `B` batch, `T` tokens, `H` query
# heads, `H_kv` key/value heads, `d_head = d_model / H`. Boolean masks use `True` = may attend.
#
# You may use chapter 01's `scaled_dot_product_attention` (imported below). Write the rest yourself:
# an answer that calls `helpers.complexity` or `helpers.blocks` (the reference and the shared model's
# cache), `F.scaled_dot_product_attention` (exercises 6 and 7) or a softmax (exercise 7) is refused by
# the checks and scores no points. Run the next cell first.

# %% id="setup"
import math

import torch

import helpers
import helpers.checks.complexity  # load the checks before any answer runs
from helpers.attention import (
    scaled_dot_product_attention,  # chapter 01's reference: you may use it
)

helpers.seed_everything(0)
torch.set_printoptions(precision=4, sci_mode=False)

# %% [markdown] id="ex1"
# ## Exercise 1: attention FLOPs, part by part
#
# *Difficulty* ●●○○○ · *Importance* ●●●●● · *Time* ~15 min · *Points*
#
# Write `attention_flops(d_model, n_heads, T, n_kv_heads=None)` for one self-attention layer on one
# sequence of `T` tokens, returning a dict of four ints:
#
# | key | what | matrix products |
# |---|---|---|
# | `"projections"` | Q, K and V from `x (T, d_model)` | `x @ W_Q.T` (W_Q: `d_model x d_model`), `x @ W_K.T`, `x @ W_V.T` (each `(n_kv_heads * d_head) x d_model`) |
# | `"scores"` | $QK^\top$ in every head | per head `(T, d_head) @ (d_head, T)` |
# | `"values"` | $AV$ in every head | per head `(T, T) @ (T, d_head)` |
# | `"output"` | the output projection | `(T, d_model) @ (d_model, d_model)` |
#
# `n_kv_heads=None` means `n_heads` (plain multi-head attention). Count the full `T x T` products
# (a dense kernel computes the masked scores too).
#
# <details><summary>Hint: every number is half the expected one</summary>
#
# A dot product of length `k` is `k` multiplies and `k` adds: `2k` FLOPs. An `(m, k) @ (k, n)` product
# has `m * n` of them.
# </details>
#
# <details><summary>Hint: right for MHA, wrong for GQA</summary>
#
# With `n_kv_heads < n_heads`, K and V have only `n_kv_heads * d_head` features each. Q keeps all
# `d_model`.
# </details>

# %% id="ex1-answer" kind="answer"
def attention_flops(d_model, n_heads, T, n_kv_heads=None):
    ### BEGIN SOLUTION
    if n_kv_heads is None:
        n_kv_heads = n_heads
    d_head = d_model // n_heads
    d_kv = n_kv_heads * d_head
    return {
        "projections": 2 * T * d_model * (d_model + 2 * d_kv),
        "scores": 2 * n_heads * T * T * d_head,
        "values": 2 * n_heads * T * T * d_head,
        "output": 2 * T * d_model * d_model,
    }
    ### END SOLUTION


# %% id="ex1-test" kind="test" points=2
from helpers.checks.complexity import check_attention_flops

check_attention_flops(attention_flops)

# %% id="ex1-hidden" kind="test" points=2
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_attention_flops(attention_flops, configs=((128, 8, 7, 4), (32, 2, 3, None), (5120, 40, 2048, 8), (64, 8, 5, 1)))
### END HIDDEN TESTS

# %% [markdown] id="ex2"
# ## Exercise 2: MLP FLOPs
#
# *Difficulty* ●○○○○ · *Importance* ●●●●○ · *Time* ~5 min · *Points*
#
# Write `mlp_flops(d_model, d_ff, T, kind="gelu")` for one FFN on `T` tokens (no batch). A GELU MLP
# (GPT-2) has two matrices, `d_model -> d_ff` and `d_ff -> d_model`; a SwiGLU MLP (Llama) has three:
# gate and up (`d_model -> d_ff`) and down (`d_ff -> d_model`). Biases and activations are not counted.
#
# <details><summary>Hint: right for GELU, wrong for SwiGLU</summary>
#
# SwiGLU's gate is a third full matrix: `silu(x @ W_gate.T) * (x @ W_up.T)`, then `@ W_down.T`.
# </details>

# %% id="ex2-answer" kind="answer"
def mlp_flops(d_model, d_ff, T, kind="gelu"):
    ### BEGIN SOLUTION
    matrices = 3 if kind == "swiglu" else 2
    return matrices * 2 * T * d_model * d_ff
    ### END SOLUTION


# %% id="ex2-test" kind="test" points=1
from helpers.checks.complexity import check_mlp_flops

check_mlp_flops(mlp_flops)

# %% id="ex2-hidden" kind="test" points=1
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_mlp_flops(mlp_flops, configs=((32, 96, 3, "swiglu"), (48, 192, 5, "gelu"), (5120, 13824, 7, "swiglu")))
### END HIDDEN TESTS

# %% [markdown] id="ex3"
# ## Exercise 3: the KV cache's memory
#
# *Difficulty* ●●○○○ · *Importance* ●●●●● · *Time* ~10 min · *Points*
#
# $$
# \text{bytes} = 2\ (K \text{ and } V) \times n_{\text{layers}} \times \text{batch} \times n_{kv} \times \text{tokens}
# \times d_{\text{head}} \times \text{bytes per element}
# $$
#
# Write `kv_cache_bytes(n_layers, n_kv_heads, d_head, tokens, batch, dtype)` returning an `int`.
# `dtype` is a torch dtype (`torch.float16`, `torch.bfloat16`, `torch.float32`, `torch.float64`, ...):
# take the bytes per element from it, e.g. `torch.empty((), dtype=dtype).element_size()` or
# `torch.finfo(dtype).bits // 8`.
#
# <details><summary>Hint: right for float16, wrong for float32</summary>
#
# 2 bytes per number holds for 16-bit dtypes only: float32 takes 4, float64 8.
# </details>

# %% id="ex3-answer" kind="answer"
def kv_cache_bytes(n_layers, n_kv_heads, d_head, tokens, batch, dtype):
    ### BEGIN SOLUTION
    size = torch.empty((), dtype=dtype).element_size()
    return 2 * n_layers * batch * n_kv_heads * tokens * d_head * size
    ### END SOLUTION


# %% id="ex3-test" kind="test" points=1
from helpers.checks.complexity import check_kv_cache_bytes

check_kv_cache_bytes(kv_cache_bytes)

# %% id="ex3-hidden" kind="test" points=2
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_kv_cache_bytes(kv_cache_bytes, configs=((80, 8, 128, 2048, 2, torch.float16), (3, 2, 5, 7, 1, torch.float64),
                                              (28, 4, 128, 100, 5, torch.float32)))
### END HIDDEN TESTS

# %% [markdown] id="ex4"
# ## Exercise 4: the KV cache of real decoders
#
# *Difficulty* ●●○○○ · *Importance* ●●●●● · *Time* ~10 min · *Points*
#
# The next (read-only) cell holds three real decoders, all caching in fp16 (2 bytes per number):
# Llama-2-7B (multi-head: 32 K/V heads), Llama-3-8B (grouped-query: 32 query heads share 8 K/V
# heads) and Falcon-7B (multi-query: 71 query heads share **one** K/V head of 64). Compute each
# answer **in code from these variables** (your `kv_cache_bytes` is welcome), not as a typed-in
# number: the hidden test runs your cells again with other sizes and expects the answers that follow.
#
# | variable | question |
# |---|---|
# | `kv_llama2_7b`, `kv_llama3_8b`, `kv_falcon_7b` | bytes of the whole model's KV cache for one sequence of that model's `context` tokens |
# | `kv_batch_llama3` | the same for Llama-3-8B serving `batch` sequences at once |
# | `max_batch_llama3` | how many full-length Llama-3-8B sequences fit in the cache memory of one GPU with `gpu_bytes` bytes, after the weights (`weight_bytes_llama3`) — a whole number |
# | `gqa_saving_llama3` | how many times smaller Llama-3-8B's cache is than it would be with one K/V head per query head |
#
# <details><summary>Hint: my GQA cache is 4 times too large</summary>
#
# The cache stores what the K/V heads produce: `n_kv_heads`, not `n_heads`, vectors per layer and token.
# </details>

# %% id="ex4-sizes"
# Read-only: the sizes the questions use.
llama2_7b = {"n_layers": 32, "n_heads": 32, "n_kv_heads": 32, "d_head": 128, "context": 4096}
llama3_8b = {"n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "d_head": 128, "context": 8192}
falcon_7b = {"n_layers": 32, "n_heads": 71, "n_kv_heads": 1, "d_head": 64, "context": 2048}
bytes_per_element = 2  # fp16
batch = 16
gpu_bytes = 80 * 2**30  # an 80 GiB GPU
weight_bytes_llama3 = 16 * 10**9  # 8 billion parameters in bf16, 2 bytes each

# %% id="ex4-answer" kind="answer"
kv_llama2_7b = None
kv_llama3_8b = None
kv_falcon_7b = None
kv_batch_llama3 = None
max_batch_llama3 = None
gqa_saving_llama3 = None
### BEGIN SOLUTION


def one_sequence(model):
    return (2 * model["n_layers"] * model["n_kv_heads"] * model["d_head"] * model["context"]
            * bytes_per_element)


kv_llama2_7b = one_sequence(llama2_7b)
kv_llama3_8b = one_sequence(llama3_8b)
kv_falcon_7b = one_sequence(falcon_7b)
kv_batch_llama3 = batch * kv_llama3_8b
max_batch_llama3 = (gpu_bytes - weight_bytes_llama3) // kv_llama3_8b
gqa_saving_llama3 = llama3_8b["n_heads"] / llama3_8b["n_kv_heads"]
### END SOLUTION
print(f"one sequence: Llama-2-7B {kv_llama2_7b} B, Llama-3-8B {kv_llama3_8b} B, Falcon-7B {kv_falcon_7b} B")

# %% id="ex4-test" kind="test" points=2
from helpers.checks.complexity import check_kv_cache_numbers

check_kv_cache_numbers(kv_llama2_7b=kv_llama2_7b, kv_llama3_8b=kv_llama3_8b, kv_falcon_7b=kv_falcon_7b,
                       kv_batch_llama3=kv_batch_llama3, max_batch_llama3=max_batch_llama3,
                       gqa_saving_llama3=gqa_saving_llama3)

# %% id="ex4-hidden" kind="test" points=1
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
_unanswered = [_n for _n, _v in {"kv_llama2_7b": kv_llama2_7b, "kv_llama3_8b": kv_llama3_8b, "kv_falcon_7b": kv_falcon_7b, "kv_batch_llama3": kv_batch_llama3, "max_batch_llama3": max_batch_llama3, "gqa_saving_llama3": gqa_saving_llama3}.items() if _v is None]
assert not _unanswered, f"no answer yet for {', '.join(_unanswered)}: assign each a value and run its cell"
assert int(kv_llama2_7b) == 2 * 2**30 and int(kv_llama3_8b) == 2**30 and int(kv_falcon_7b) == 16 * 2**20
assert int(kv_batch_llama3) == 16 * 2**30 and int(max_batch_llama3) == 65
assert abs(float(gqa_saving_llama3) - 4) < 1e-9
from helpers.checks.complexity import recheck_kv_cache_numbers

recheck_kv_cache_numbers()
### END HIDDEN TESTS

# %% [markdown] id="ex5"
# ## Exercise 5: new tokens at the right position
#
# *Difficulty* ●●○○○ · *Importance* ●●●●○ · *Time* ~10 min · *Points*
#
# With a KV cache, the model sees only the new tokens in each step, but a model with learned
# positions must still add the row of each token's *true* position. Write
# `embed_new_tokens(ids, wte, wpe, cache_length)`:
#
# | argument | shape |
# |---|---|
# | `ids` | `(B, T)` ids of the new tokens |
# | `wte` | `(V, d_model)` token embeddings |
# | `wpe` | `(T_max, d_model)` learned position embeddings |
# | `cache_length` | how many tokens are already cached (an int, 0 for the prompt) |
# | returns | `(B, T, d_model)`: token `t` of `ids` gets `wte[ids[:, t]] + wpe[cache_length + t]` |
#
# <details><summary>Hint: the test says the offset is off by one</summary>
#
# Positions count from 0. With `cache_length` tokens cached at positions `0 .. cache_length - 1`, the
# next token is at position `cache_length`.
# </details>

# %% id="ex5-answer" kind="answer"
def embed_new_tokens(ids, wte, wpe, cache_length):
    ### BEGIN SOLUTION
    T = ids.shape[1]
    return wte[ids] + wpe[cache_length:cache_length + T]  # (B, T, d_model) + (T, d_model)
    ### END SOLUTION


# %% id="ex5-test" kind="test" points=1
from helpers.checks.complexity import check_embed_new_tokens

check_embed_new_tokens(embed_new_tokens)

# %% id="ex5-hidden" kind="test" points=1
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_embed_new_tokens(embed_new_tokens, seed=5, dtype=torch.float64, B=3, V=13, d_model=5, T_max=16)
### END HIDDEN TESTS

# %% [markdown] id="ex6"
# ## Exercise 6: one attention step with a KV cache
#
# *Difficulty* ●●●●○ · *Importance* ●●●●● · *Time* ~25 min · *Points*
#
# Write `attend_with_cache(q, k_new, v_new, k_cache, v_cache)`: `T_new` new tokens attend to the
# `T_past` cached ones and to themselves. Return the output and the grown cache.
#
# | argument | shape |
# |---|---|
# | `q` | `(B, H, T_new, d_head)`: the new tokens' queries |
# | `k_new`, `v_new` | `(B, H_kv, T_new, d_head)`: the new tokens' keys and values |
# | `k_cache`, `v_cache` | `(B, H_kv, T_past, d_head)`; `T_past` may be 0 |
# | returns | `out (B, H, T_new, d_head)`, `k_all`, `v_all (B, H_kv, T_past + T_new, d_head)` |
#
# Three rules: (1) append the new keys and values to the cache *before* attending, so each new token
# sees itself; (2) the cache keeps the `H_kv` heads — repeat them to `H` (query head `h` reads K/V head
# `h // (H / H_kv)`) only for the attention; (3) the causal mask is **bottom-right aligned**: new query
# `i` is token `T_past + i` and may attend to keys `0 .. T_past + i`. (torch's `is_causal=True` aligns
# top-left, which is wrong here.) `F.scaled_dot_product_attention` is not allowed; chapter 01's
# `scaled_dot_product_attention(q, k, v, mask)` is.
#
# <details><summary>Hint: the test says the mask is aligned top-left</summary>
#
# `torch.ones(T_new, T_k).tril()` lets query 0 see key 0 only. Shift the diagonal by the number of
# cached tokens: `torch.ones(T_new, T_k, dtype=torch.bool, device=q.device).tril(diagonal=T_k - T_new)`.
# </details>
#
# <details><summary>Hint: the test says the returned cache has H heads</summary>
#
# Repeat into new variables for the attention and return the concatenated `H_kv`-head tensors.
# </details>

# %% id="ex6-answer" kind="answer"
def attend_with_cache(q, k_new, v_new, k_cache, v_cache):
    ### BEGIN SOLUTION
    k_all = torch.cat([k_cache, k_new], dim=2)  # (B, H_kv, T_k, d_head)
    v_all = torch.cat([v_cache, v_new], dim=2)  # (B, H_kv, T_k, d_head)
    group = q.shape[1] // k_all.shape[1]
    k = k_all.repeat_interleave(group, dim=1)  # (B, H, T_k, d_head)
    v = v_all.repeat_interleave(group, dim=1)  # (B, H, T_k, d_head)
    T_new, T_k = q.shape[2], k_all.shape[2]
    mask = torch.ones(T_new, T_k, dtype=torch.bool, device=q.device).tril(diagonal=T_k - T_new)  # (T_new, T_k)
    out, _ = scaled_dot_product_attention(q, k, v, mask)  # (B, H, T_new, d_head)
    return out, k_all, v_all
    ### END SOLUTION


# %% id="ex6-test" kind="test" points=2
from helpers.checks.complexity import check_attend_with_cache

check_attend_with_cache(attend_with_cache)

# %% id="ex6-hidden" kind="test" points=3
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_attend_with_cache(attend_with_cache, seed=5, dtype=torch.float64, B=1, H=8, H_kv=4, d_head=3, T_past=6)
check_attend_with_cache(attend_with_cache, seed=17, dtype=torch.float32, B=3, H=4, H_kv=1, d_head=2, T_past=2)
### END HIDDEN TESTS

# %% [markdown] id="ex7"
# ## Exercise 7: the online softmax over blocks
#
# *Difficulty* ●●●●○ · *Importance* ●●●●○ · *Time* ~25 min · *Points*
#
# Write `online_softmax_attention(q, k, v, block_size)` returning exact
# $\operatorname{softmax}(QK^\top/\sqrt{d_{\text{head}}})V$ — without ever holding more than
# `block_size` keys' scores. `q (..., T_q, d_head)`, `k (..., T_k, d_head)`, `v (..., T_k, d_v)`, no
# mask; `block_size` need not divide `T_k`. Keep the input's dtype. For every query keep a running
# max $m$, a running sum $\ell$ and an accumulated output, and for each block of keys:
#
# $$
# m' = \max(m, \max_j s_j), \quad
# \ell' = e^{m - m'} \ell + \sum_j e^{s_j - m'}, \quad
# \text{acc}' = e^{m - m'} \text{acc} + \sum_j e^{s_j - m'} v_j ;
# \qquad \text{at the end: } \text{acc} / \ell .
# $$
#
# Start from $m = -\infty$, $\ell = 0$, $\text{acc} = 0$ ($e^{-\infty} = 0$ handles the first block). No
# softmax, `logsumexp` or `F.scaled_dot_product_attention`: the point is the running statistics.
#
# <details><summary>Hint: the test says the running sum is not rescaled</summary>
#
# $\ell$ was summed as $e^{s - m_{\text{old}}}$; before adding the new block's $e^{s - m'}$ it must be
# multiplied by $e^{m_{\text{old}} - m'}$ — like the accumulated output.
# </details>
#
# <details><summary>Hint: NaN with large scores</summary>
#
# $e^{s}$ overflows for $s$ above about 88 (float32) or 709 (float64). Subtract the running max first.
# </details>

# %% id="ex7-answer" kind="answer"
def online_softmax_attention(q, k, v, block_size):
    ### BEGIN SOLUTION
    scale = 1 / math.sqrt(q.shape[-1])
    m = torch.full((*q.shape[:-1], 1), float("-inf"), dtype=q.dtype, device=q.device)  # (..., T_q, 1)
    l = q.new_zeros((*q.shape[:-1], 1))  # (..., T_q, 1)
    acc = q.new_zeros((*q.shape[:-1], v.shape[-1]))  # (..., T_q, d_v)
    for start in range(0, k.shape[-2], block_size):
        s = q @ k[..., start:start + block_size, :].transpose(-2, -1) * scale  # (..., T_q, block)
        m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))  # (..., T_q, 1)
        p = torch.exp(s - m_new)  # (..., T_q, block)
        c = torch.exp(m - m_new)  # (..., T_q, 1)
        l = c * l + p.sum(dim=-1, keepdim=True)
        acc = c * acc + p @ v[..., start:start + block_size, :]  # (..., T_q, d_v)
        m = m_new
    return acc / l
    ### END SOLUTION


# %% id="ex7-test" kind="test" points=2
from helpers.checks.complexity import check_online_softmax_attention

check_online_softmax_attention(online_softmax_attention)

# %% id="ex7-hidden" kind="test" points=3
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_online_softmax_attention(online_softmax_attention, seed=5, dtype=torch.float32, B=3, T_q=4, T_k=13, d_head=5,
                               d_v=2, block_sizes=(5, 2, 13))
check_online_softmax_attention(online_softmax_attention, seed=23, dtype=torch.float64, B=1, T_q=7, T_k=6, d_head=3,
                               d_v=4, block_sizes=(4, 6, 1))
### END HIDDEN TESTS

# %% [markdown] id="ex8"
# ## Exercise 8: a decode step on the roofline of a real chip
#
# *Difficulty* ●●○○○ · *Importance* ●●●●● · *Time* ~10 min · *Points*
#
# Write `decode_roofline(n_params, batch, bytes_per_param, peak_flops, bandwidth)` for one decode step
# of `batch` sequences through a model's `n_params` weights, each stored in `bytes_per_param` bytes, on
# a chip with `peak_flops` FLOP/s and `bandwidth` bytes/s (the KV cache is left out). Return a dict:
#
# | key | what |
# |---|---|
# | `"intensity"` | the step's FLOPs per byte moved (a float) |
# | `"seconds"` | the shortest time the chip needs for the step, on the roofline (a float) |
# | `"crossover_batch"` | the smallest whole batch at which the step is compute-bound: its intensity reaches the ridge `peak_flops / bandwidth` (an int) |
#
# Each weight is used in one multiply-add (2 FLOPs) per sequence of the batch, and read from memory once
# per step. Arithmetic and memory traffic overlap: the step takes as long as the slower of the two.
# Example: Llama-3-8B (8,030,261,248 weights) in bf16 on an H100 SXM (989.4e12 FLOP/s, 3.35e12 bytes/s) at
# batch 1: intensity 1.0 FLOP/byte, about 4.8 ms, compute-bound from batch 296.
#
# <details><summary>Hint: my intensity does not change with the batch</summary>
#
# The weights are read once per step, however many sequences the step serves: the bytes are
# `n_params * bytes_per_param`, while the FLOPs grow with the batch.
# </details>
#
# <details><summary>Hint: my time is microseconds, not milliseconds</summary>
#
# FLOPs / peak is the arithmetic alone. At small batches the chip waits for the weights to arrive:
# `max(flops / peak_flops, bytes / bandwidth)`.
# </details>

# %% id="ex8-answer" kind="answer"
def decode_roofline(n_params, batch, bytes_per_param, peak_flops, bandwidth):
    ### BEGIN SOLUTION
    flops = 2 * n_params * batch  # one multiply-add per weight and sequence
    moved = n_params * bytes_per_param  # every weight read once per step
    ridge = peak_flops / bandwidth  # FLOP/byte where the two roofs meet
    return {"intensity": flops / moved,
            "seconds": max(flops / peak_flops, moved / bandwidth),
            "crossover_batch": math.ceil(ridge * bytes_per_param / 2)}  # 2 batch / bytes_per_param >= ridge
    ### END SOLUTION


# %% id="ex8-test" kind="test" points=2
from helpers.checks.complexity import check_decode_roofline

check_decode_roofline(decode_roofline)

# %% id="ex8-hidden" kind="test" points=1
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_decode_roofline(decode_roofline, configs=((1_000_000_000, 3, 2, 400e12, 2e12), (13_015_864_320, 256, 2, 989.4e12, 3.35e12),
                                                (7_000_000_000, 100, 4, 156e12, 2.039e12), (3_000_000_000, 1024, 1, 1978.9e12, 3.35e12)))
### END HIDDEN TESTS

# %% [markdown] id="outro"
# ## Done
#
# With every visible test passing you can price a transformer: its FLOPs per layer and per token,
# the memory of its scores and of its KV cache for MHA, GQA and MQA, and you have written the two
# pieces that make long contexts affordable, and you can tell from a chip's two peaks whether a decode
# step waits for arithmetic or for memory. The shared model's `helpers.blocks.KVCache`,
# `cached_forward` and `generate` package exercises 5 and 6 for the whole model, and
# `helpers.complexity.tiled_attention` extends exercise 7 with masks and causal block skipping. To see
# all your points, including the hidden tests, grade the whole notebook (see the README's learner
# section).
