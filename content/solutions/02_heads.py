# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] id="intro"
# # Chapter 02 exercises: multi-head, grouped-query and multi-query attention
#
# You will split a model's width into heads, run attention in every head, put the heads back
# together, let several query heads share one key/value head, and count what each variant costs:
#
# | # | exercise |
# |---|---|
# | 1 | `split_heads(x, n_heads)` |
# | 2 | `merge_heads(x)` |
# | 3 | `multi_head_attention(x, w_q, w_k, w_v, w_o, n_heads, mask=None)` |
# | 4 | `grouped_query_attention(x, w_q, w_k, w_v, w_o, n_heads, n_kv_heads, mask=None)` |
# | 5 | `attention_param_count(d_model, n_heads, n_kv_heads=None, bias=False)` |
# | 6 | `kv_cache_elements_per_token(n_layers, n_kv_heads, d_head)` |
# | 7 | real model sizes: parameters and KV-cache bytes of MHA, GQA and MQA |
#
# **How it works.** Write your answer in the cell marked `# YOUR CODE HERE` (delete the
# `raise NotImplementedError()` line), run it, then run the test cell below it. A visible test
# prints a line starting with ✓ when your answer is right; otherwise it stops with one sentence
# saying what is wrong. After each visible test sits a hidden test: it runs when the notebook is
# graded, with other shapes, seeds, model sizes and `float64` inputs, so make your functions general
# rather than fitted to the visible test.
#
# **Conventions** (the same in every chapter): tensors are `torch`; shapes are written `B` batch,
# `T` tokens, `d_model` model width, `H` query heads, `H_kv` key/value heads, `d_head = d_model / H`
# the width of one head. Weights follow `torch.nn.Linear`: shape `(out_features, in_features)`, and a
# projection is `x @ W.T`. Boolean masks use `True` = may attend and `False` = blocked, exactly like
# `torch.nn.functional.scaled_dot_product_attention`, and broadcast against the per-head scores
# `(B, H, T, T)`: a causal mask `(T, T)` works as it is, a padding mask needs a head axis,
# `(B, 1, 1, T)` (chapter 01's `padding_mask(lengths, T)` is `(B, 1, T)`, made for scores `(B, T, T)`
# without a head axis: use `padding_mask(...)[:, None]`).
# `torch.nn.MultiheadAttention` reads boolean masks the other way round (`True` = blocked).
#
# You may use chapter 01's `scaled_dot_product_attention` (imported below from `helpers.attention`,
# so this chapter works even if chapter 01 does not yet). Write the rest yourself: an answer that
# calls `helpers.heads`, `torch.nn.MultiheadAttention` or `F.multi_head_attention_forward` (and, in
# exercise 4, `F.scaled_dot_product_attention`) is refused by the checks and scores no points.
# Run the next cell first.

# %% id="setup"
import torch

import helpers
import helpers.checks.heads  # load the checks before any answer runs
from helpers.attention import (
    scaled_dot_product_attention,  # chapter 01's reference: you may use it
)

helpers.seed_everything(0)
torch.set_printoptions(precision=4, sci_mode=False)

# %% [markdown] id="ex1"
# ## Exercise 1: split the model dimension into heads
#
# *Difficulty* ●●○○○ · *Importance* ●●●●● · *Time* ~10 min · *Points*
#
# Write `split_heads(x, n_heads)`. Head `h` owns the block of features
# `h*d_head .. (h+1)*d_head - 1` of every token, and the heads become a batch-like axis in front of
# the tokens:
#
# | argument | shape |
# |---|---|
# | `x` | `(B, T, d_model)` |
# | `n_heads` | `H`, an int dividing `d_model` |
# | returns | `(B, H, T, d_head)` with `result[b, h, t] == x[b, t, h*d_head:(h+1)*d_head]` |
#
# <details><summary>Hint: the shape is right but the test says a head holds pieces of several tokens</summary>
#
# `x.reshape(B, H, T, d_head)` keeps the memory order of `x`, which is token by token, so its
# "head 0" is the first few tokens chopped into rows. Split only the feature axis first,
# `(B, T, H, d_head)`, then swap the token and head axes with `transpose(1, 2)`.
# </details>
#
# <details><summary>Hint: head h gets features h, h + H, h + 2H, ...</summary>
#
# The last axis must be viewed as `(H, d_head)` (head-major), not `(d_head, H)`.
# </details>

# %% id="ex1-answer" kind="answer"
def split_heads(x, n_heads):
    ### BEGIN SOLUTION
    B, T, d_model = x.shape
    d_head = d_model // n_heads
    return x.reshape(B, T, n_heads, d_head).transpose(1, 2)  # (B, T, H, d_head) -> (B, H, T, d_head)
    ### END SOLUTION


# %% id="ex1-test" kind="test" points=1
from helpers.checks.heads import check_split_heads

check_split_heads(split_heads)

# %% id="ex1-hidden" kind="test" points=1
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_split_heads(split_heads, seed=5, dtype=torch.float64, B=3, T=7, H=4, d_head=2)
check_split_heads(split_heads, seed=11, dtype=torch.float32, B=1, T=2, H=6, d_head=5)
### END HIDDEN TESTS

# %% [markdown] id="ex2"
# ## Exercise 2: merge the heads back
#
# *Difficulty* ●●○○○ · *Importance* ●●●●● · *Time* ~10 min · *Points*
#
# Write `merge_heads(x)`, the inverse of `split_heads`: the heads' outputs side by side
# (the "concat" of the multi-head formula).
#
# | argument | shape |
# |---|---|
# | `x` | `(B, H, T, d_head)` |
# | returns | `(B, T, H * d_head)` with `result[b, t, h*d_head:(h+1)*d_head] == x[b, h, t]` |
#
# `merge_heads(split_heads(x, H))` must give back `x` exactly.
#
# <details><summary>Hint: RuntimeError "view size is not compatible with input tensor's size and stride"</summary>
#
# After `transpose(1, 2)` the tensor's memory is no longer laid out in `(B, T, H, d_head)` order, and
# `.view` refuses to reinterpret it. Use `.reshape(...)` (which copies when it must), or
# `.contiguous().view(...)`.
# </details>
#
# <details><summary>Hint: the test says each output row mixes several tokens</summary>
#
# Move the head axis back behind the token axis (`transpose(1, 2)`) *before* flattening the last two axes.
# </details>

# %% id="ex2-answer" kind="answer"
def merge_heads(x):
    ### BEGIN SOLUTION
    B, H, T, d_head = x.shape
    return x.transpose(1, 2).reshape(B, T, H * d_head)  # (B, T, H, d_head) -> (B, T, d_model)
    ### END SOLUTION


# %% id="ex2-test" kind="test" points=1
from helpers.checks.heads import check_merge_heads

check_merge_heads(merge_heads)

# %% id="ex2-hidden" kind="test" points=1
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_merge_heads(merge_heads, seed=5, dtype=torch.float64, B=3, T=7, H=4, d_head=2)
check_merge_heads(merge_heads, seed=11, dtype=torch.float32, B=1, T=2, H=6, d_head=5)
### END HIDDEN TESTS

# %% [markdown] id="ex3"
# ## Exercise 3: multi-head attention from weights
#
# *Difficulty* ●●●○○ · *Importance* ●●●●● · *Time* ~20 min · *Points*
#
# $$
# \operatorname{MultiHead}(X) = \operatorname{Concat}(\text{head}_1, \dots, \text{head}_H)\, W_O^\top,
# \qquad \text{head}_h = \operatorname{Attention}(Q_h, K_h, V_h),
# $$
#
# where $Q = XW_Q^\top$ is split into heads $Q_h$ of width $d_{\text{head}}$ (and likewise $K$, $V$),
# and every head divides its scores by $\sqrt{d_{\text{head}}}$. Write
# `multi_head_attention(x, w_q, w_k, w_v, w_o, n_heads, mask=None)` returning `(output, weights)`:
#
# | argument | shape |
# |---|---|
# | `x` | `(B, T, d_model)` |
# | `w_q`, `w_k`, `w_v`, `w_o` | `(d_model, d_model)` each, `nn.Linear` layout, no biases |
# | `mask` | `None` or bool broadcastable to `(B, H, T, T)`, True = may attend |
# | returns | `output (B, T, d_model)`, `weights (B, H, T, T)`: one pattern **per head** |
#
# The result must equal `torch.nn.MultiheadAttention(d_model, n_heads, bias=False, batch_first=True)`
# holding `in_proj_weight = cat([w_q, w_k, w_v])` and `out_proj.weight = w_o`, called with
# `attn_mask=~mask` and `average_attn_weights=False`. Use `scaled_dot_product_attention` from
# chapter 01 (imported in the setup cell) and your functions from exercises 1 and 2, or write it
# in one piece.
#
# <details><summary>Hint: my weights have shape (B, T, T)</summary>
#
# `nn.MultiheadAttention` averages the weights over the heads by default; this function returns
# every head's pattern, `(B, H, T, T)`. Do not take a mean over the head axis.
# </details>
#
# <details><summary>Hint: the weights are right but the output is not</summary>
#
# After the heads are merged back to `(B, T, d_model)` the output projection still has to run:
# `merged @ w_o.T`.
# </details>
#
# <details><summary>Hint: the weights are a little too flat</summary>
#
# Each head scales its scores by $1/\sqrt{d_{\text{head}}}$ (its own query width), not
# $1/\sqrt{d_{\text{model}}}$. Chapter 01's function does this for you when you give it per-head
# tensors.
# </details>

# %% id="ex3-answer" kind="answer"
def multi_head_attention(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    ### BEGIN SOLUTION
    B, T, d_model = x.shape
    d_head = d_model // n_heads
    q = (x @ w_q.T).reshape(B, T, n_heads, d_head).transpose(1, 2)  # (B, H, T, d_head)
    k = (x @ w_k.T).reshape(B, T, n_heads, d_head).transpose(1, 2)  # (B, H, T, d_head)
    v = (x @ w_v.T).reshape(B, T, n_heads, d_head).transpose(1, 2)  # (B, H, T, d_head)
    heads, weights = scaled_dot_product_attention(q, k, v, mask)  # (B, H, T, d_head), (B, H, T, T)
    merged = heads.transpose(1, 2).reshape(B, T, d_model)  # (B, T, d_model)
    return merged @ w_o.T, weights
    ### END SOLUTION


# %% id="ex3-test" kind="test" points=2
from helpers.checks.heads import check_multi_head_attention

check_multi_head_attention(multi_head_attention)

# %% id="ex3-hidden" kind="test" points=3
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_multi_head_attention(multi_head_attention, seed=5, dtype=torch.float64, B=3, T=7, H=4, d_head=2)
check_multi_head_attention(multi_head_attention, seed=13, dtype=torch.float32, B=1, T=3, H=8, d_head=5)
### END HIDDEN TESTS

# %% [markdown] id="ex4"
# ## Exercise 4: grouped-query attention
#
# *Difficulty* ●●●●○ · *Importance* ●●●●● · *Time* ~20 min · *Points*
#
# Keep `H` query heads but only `H_kv` key/value heads ($H_{kv}$ divides $H$). Query head $h$
# reads key/value head
#
# $$
# g(h) = \left\lfloor \frac{h}{H / H_{kv}} \right\rfloor ,
# $$
#
# so the first $H/H_{kv}$ query heads share K/V head 0, the next ones K/V head 1, and so on. With
# $H_{kv} = 1$ this is multi-query attention (MQA); with $H_{kv} = H$ it is exercise 3.
# Write `grouped_query_attention(x, w_q, w_k, w_v, w_o, n_heads, n_kv_heads, mask=None)`:
#
# | argument | shape |
# |---|---|
# | `x` | `(B, T, d_model)` |
# | `w_q`, `w_o` | `(d_model, d_model)` |
# | `w_k`, `w_v` | `(n_kv_heads * d_head, d_model)`, with `d_head = d_model // n_heads` |
# | `mask` | as in exercise 3 |
# | returns | `output (B, T, d_model)`, `weights (B, H, T, T)` |
#
# Do not call `F.scaled_dot_product_attention` here (its `enable_gqa=True` does the grouping for
# you); chapter 01's `scaled_dot_product_attention` is fine once every query head has its K and V.
#
# <details><summary>Hint: the test says query head h reads K/V head h % H_kv</summary>
#
# `k.repeat(1, group, 1, 1)` lays the K/V heads out as `[k0, k1, k0, k1, ...]`. You need
# `[k0, k0, ..., k1, k1, ...]`: `k.repeat_interleave(group, dim=1)`.
# </details>
#
# <details><summary>Hint: ShapeError "k must be (..., T_k, d_k) with the same leading axes"</summary>
#
# After splitting, `k` and `v` have `H_kv` heads and `q` has `H`. Repeat each K/V head
# `H // H_kv` times along the head axis so that all three have `H` heads. (Computing the scores
# yourself, the same mistake is a RuntimeError: "The size of tensor a (…) must match the size of
# tensor b (…)".)
# </details>

# %% id="ex4-answer" kind="answer"
def grouped_query_attention(x, w_q, w_k, w_v, w_o, n_heads, n_kv_heads, mask=None):
    ### BEGIN SOLUTION
    B, T, d_model = x.shape
    d_head = d_model // n_heads
    group = n_heads // n_kv_heads
    q = (x @ w_q.T).reshape(B, T, n_heads, d_head).transpose(1, 2)  # (B, H, T, d_head)
    k = (x @ w_k.T).reshape(B, T, n_kv_heads, d_head).transpose(1, 2)  # (B, H_kv, T, d_head)
    v = (x @ w_v.T).reshape(B, T, n_kv_heads, d_head).transpose(1, 2)  # (B, H_kv, T, d_head)
    k = k.repeat_interleave(group, dim=1)  # (B, H, T, d_head): query head h reads K/V head h // group
    v = v.repeat_interleave(group, dim=1)  # (B, H, T, d_head)
    heads, weights = scaled_dot_product_attention(q, k, v, mask)  # (B, H, T, d_head), (B, H, T, T)
    merged = heads.transpose(1, 2).reshape(B, T, d_model)  # (B, T, d_model)
    return merged @ w_o.T, weights
    ### END SOLUTION


# %% id="ex4-test" kind="test" points=2
from helpers.checks.heads import check_grouped_query_attention

check_grouped_query_attention(grouped_query_attention)

# %% id="ex4-hidden" kind="test" points=3
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_grouped_query_attention(grouped_query_attention, seed=5, dtype=torch.float64, B=2, T=7, H=8, H_kv=4, d_head=3)
check_grouped_query_attention(grouped_query_attention, seed=19, dtype=torch.float32, B=1, T=5, H=9, H_kv=3, d_head=2)
### END HIDDEN TESTS

# %% [markdown] id="ex5"
# ## Exercise 5: count the parameters of Q, K, V and the output projection
#
# *Difficulty* ●●○○○ · *Importance* ●●●●○ · *Time* ~10 min · *Points*
#
# Write `attention_param_count(d_model, n_heads, n_kv_heads=None, bias=False)` returning, as an
# `int`, the number of parameters in one attention layer's four projections:
#
# * $W_Q$ and $W_O$ are $d_{\text{model}} \times d_{\text{model}}$;
# * $W_K$ and $W_V$ are $(H_{kv} \cdot d_{\text{head}}) \times d_{\text{model}}$ with
#   $d_{\text{head}} = d_{\text{model}} / H$; `n_kv_heads=None` means `n_heads` (plain MHA);
# * `bias=True` gives **each** of the four projections a bias with one number per output feature
#   (as `nn.MultiheadAttention(bias=True)` and GPT-2 do).
#
# <details><summary>Hint: my count is right without bias and wrong with it</summary>
#
# A bias has `out_features` numbers: `d_model` for Q and for O, but `n_kv_heads * d_head` for K and
# for V, which is less than `d_model` in GQA.
# </details>
#
# <details><summary>Hint: right for MHA, wrong for GQA</summary>
#
# Only K and V shrink: the query and output projections keep all `d_model` outputs.
# </details>

# %% id="ex5-answer" kind="answer"
def attention_param_count(d_model, n_heads, n_kv_heads=None, bias=False):
    ### BEGIN SOLUTION
    if n_kv_heads is None:
        n_kv_heads = n_heads
    d_kv = n_kv_heads * (d_model // n_heads)
    count = 2 * d_model * d_model + 2 * d_kv * d_model
    if bias:
        count += 2 * d_model + 2 * d_kv
    return count
    ### END SOLUTION


# %% id="ex5-test" kind="test" points=1
from helpers.checks.heads import check_attention_param_count

check_attention_param_count(attention_param_count)

# %% id="ex5-hidden" kind="test" points=2
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_attention_param_count(attention_param_count, configs=((4096, 32, 8, False), (1024, 16, 4, True),
                                                            (96, 6, 3, True), (2048, 16, 1, False),
                                                            (48, 6, None, True)))
### END HIDDEN TESTS

# %% [markdown] id="ex6"
# ## Exercise 6: the KV cache, per token
#
# *Difficulty* ●○○○○ · *Importance* ●●●●○ · *Time* ~5 min · *Points*
#
# While a decoder generates, every layer keeps the keys and values of all earlier tokens so that it
# never recomputes them (chapter 07). Each token adds, in every layer, one key and one value vector
# of `d_head` numbers for each **key/value** head. Write `kv_cache_elements_per_token(n_layers,
# n_kv_heads, d_head)`: how many numbers (not bytes) the cache grows by per token, as an `int`.
#
# <details><summary>Hint: my answer is half the expected one</summary>
#
# Keys *and* values: two vectors per K/V head per layer.
# </details>

# %% id="ex6-answer" kind="answer"
def kv_cache_elements_per_token(n_layers, n_kv_heads, d_head):
    ### BEGIN SOLUTION
    return 2 * n_layers * n_kv_heads * d_head
    ### END SOLUTION


# %% id="ex6-test" kind="test" points=1
from helpers.checks.heads import check_kv_cache_elements_per_token

check_kv_cache_elements_per_token(kv_cache_elements_per_token)

# %% id="ex6-hidden" kind="test" points=1
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_kv_cache_elements_per_token(kv_cache_elements_per_token, configs=((80, 8, 128), (28, 4, 128), (3, 1, 5)))
### END HIDDEN TESTS

# %% [markdown] id="ex7"
# ## Exercise 7: what GQA and MQA save at a real model size
#
# *Difficulty* ●●○○○ · *Importance* ●●●●○ · *Time* ~10 min · *Points*
#
# The next (read-only) cell holds the sizes: the attention of Llama-2-7B (32 layers, $d_{\text{model}}
# = 4096$, 32 heads, multi-head), the same layer with 8 key/value heads (the GQA shape of Llama-3-8B
# and Mistral-7B) and with a single one (MQA), and GPT-2 small ($d_{\text{model}} = 768$, 12 heads,
# projections with biases). The cache holds one sequence of `context` tokens in fp16
# (`bytes_per_element = 2`). Compute each answer **in code from these variables** (your functions
# from exercises 5 and 6 are welcome), not as a typed-in number: the hidden test runs your cells again
# with other sizes and expects the answers that follow from them.
#
# | variable | question |
# |---|---|
# | `params_mha`, `params_gqa`, `params_mqa` | parameters of one layer's Q, K, V, O projections (no bias), with 32, 8 and 1 K/V heads |
# | `params_gpt2` | the same for one GPT-2 small layer, biases included |
# | `kv_bytes_mha`, `kv_bytes_gqa`, `kv_bytes_mqa` | bytes of the KV cache for the whole model (all layers), one sequence of `context` tokens |
# | `kv_saving_gqa` | how many times smaller GQA's cache is than MHA's |
#
# <details><summary>Hint: my GQA cache is as large as the MHA one</summary>
#
# The cache stores only what the K/V heads produce: `n_kv_heads`, not `n_heads`, vectors per layer.
# </details>

# %% id="ex7-sizes"
# Read-only: the sizes the questions use.
n_layers, d_model, n_heads = 32, 4096, 32  # Llama-2-7B
n_kv_heads_gqa, n_kv_heads_mqa = 8, 1
context, bytes_per_element = 4096, 2  # one sequence, fp16
gpt2_d_model, gpt2_n_heads = 768, 12

# %% id="ex7-answer" kind="answer"
params_mha = None
params_gqa = None
params_mqa = None
params_gpt2 = None
kv_bytes_mha = None
kv_bytes_gqa = None
kv_bytes_mqa = None
kv_saving_gqa = None
### BEGIN SOLUTION
d_head = d_model // n_heads
params_mha = 4 * d_model * d_model
params_gqa = 2 * d_model * d_model + 2 * (n_kv_heads_gqa * d_head) * d_model
params_mqa = 2 * d_model * d_model + 2 * (n_kv_heads_mqa * d_head) * d_model
params_gpt2 = 4 * gpt2_d_model * gpt2_d_model + 4 * gpt2_d_model
kv_bytes_mha = 2 * n_layers * n_heads * d_head * context * bytes_per_element
kv_bytes_gqa = 2 * n_layers * n_kv_heads_gqa * d_head * context * bytes_per_element
kv_bytes_mqa = 2 * n_layers * n_kv_heads_mqa * d_head * context * bytes_per_element
kv_saving_gqa = kv_bytes_mha / kv_bytes_gqa
### END SOLUTION
print(f"KV cache per sequence: MHA {kv_bytes_mha}, GQA {kv_bytes_gqa}, MQA {kv_bytes_mqa} bytes")

# %% id="ex7-test" kind="test" points=2
from helpers.checks.heads import check_real_model_numbers

check_real_model_numbers(params_mha=params_mha, params_gqa=params_gqa, params_mqa=params_mqa,
                         params_gpt2=params_gpt2, kv_bytes_mha=kv_bytes_mha, kv_bytes_gqa=kv_bytes_gqa,
                         kv_bytes_mqa=kv_bytes_mqa, kv_saving_gqa=kv_saving_gqa)

# %% id="ex7-hidden" kind="test" points=1
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
_unanswered = [_n for _n, _v in {"params_mha": params_mha, "params_gqa": params_gqa, "params_mqa": params_mqa, "params_gpt2": params_gpt2, "kv_bytes_mha": kv_bytes_mha, "kv_bytes_gqa": kv_bytes_gqa, "kv_bytes_mqa": kv_bytes_mqa, "kv_saving_gqa": kv_saving_gqa}.items() if _v is None]
assert not _unanswered, f"no answer yet for {', '.join(_unanswered)}: assign each a value and run its cell"
_d_head = 4096 // 32
assert int(params_mha) == 4 * 4096**2 and int(params_gqa) == 2 * 4096**2 + 2 * 8 * _d_head * 4096
assert int(params_mqa) == 2 * 4096**2 + 2 * _d_head * 4096 and int(params_gpt2) == 4 * 768**2 + 4 * 768
assert int(kv_bytes_mha) == 2 * 2**30 and int(kv_bytes_gqa) == 2**29 and int(kv_bytes_mqa) == 2**26
assert abs(float(kv_saving_gqa) - 4) < 1e-9
from helpers.checks.heads import recheck_real_model_numbers

recheck_real_model_numbers()
### END HIDDEN TESTS

# %% [markdown] id="outro"
# ## Done
#
# With every visible test passing you have written the attention layer that GPT-2, Llama and Mistral
# use, in all three variants. `helpers.heads.MultiHeadAttention` packages the same computation as an
# `nn.Module` for the blocks of chapter 05. Next: chapter 03, the feed-forward network. To see all
# your points, including the hidden tests, grade the whole notebook (see the README's learner section).
