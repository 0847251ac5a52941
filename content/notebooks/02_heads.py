# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] id="intro"
# # Chapter 02: multi-head attention, and the GQA/MQA bridge
#
# One attention pattern per token is a tight budget. In "the cat that I saw yesterday sat", the
# word "sat" wants to know *who* sat (the cat, five tokens back) and *what came just before it*
# (yesterday) and perhaps *whether the sentence is a question*. A single softmax row has to
# spread one unit of weight over all of that. **Multi-head attention runs several attentions side
# by side, each on its own slice of the model's width**, so that one head can follow the
# subject while another follows the previous token, and then mixes what they found with one
# output projection.
#
# $$
# \operatorname{MultiHead}(X) = \operatorname{Concat}(\text{head}_0, \dots, \text{head}_{H-1})\, W_O^\top,
# \qquad \text{head}_h = \operatorname{softmax}\!\left(\frac{Q_h K_h^\top}{\sqrt{d_{\text{head}}}}\right) V_h
# $$
#
# **The shape contract.** The layer takes `(B, T, d_model)` and returns `(B, T, d_model)`; inside,
# every head works on `d_head = d_model / H` features.
#
# | tensor | shape | what it is |
# |---|---|---|
# | hidden states `x` | `(B, T, d_model)` | one row per token |
# | `q`, `k`, `v` after the projections | `(B, T, d_model)` | all heads' features side by side |
# | after `split_heads` | `(B, H, T, d_head)` | one `(T, d_head)` matrix per head |
# | scores, weights | `(B, H, T, T)` | one attention pattern per head |
# | heads' outputs | `(B, H, T, d_head)` | what each head read |
# | after `merge_heads` (concat) | `(B, T, d_model)` | the heads side by side again |
# | output `merged @ W_O.T` | `(B, T, d_model)` | mixed across heads |
#
# **Head numbering.** Heads are numbered from 0, as Python indexes them: head $h$, for
# $h = 0, \dots, H-1$, owns features $h\,d_{\text{head}} \dots (h+1)\,d_{\text{head}} - 1$. The exercises
# number them the same way, so "head 1" is always the second head.
#
# **Map of this notebook.**
#
# 1. A first loop with `torch.nn.MultiheadAttention`: shapes in, shapes out, and averaged weights
# 2. Splitting `d_model` into heads: `d_head = d_model / H`, why `.view` fails after a transpose, and
#    the reshape-without-transpose bug
# 3. Attention per head, concatenation and the output projection, checked against torch
# 4. What heads cost: the same parameters as one wide head
# 5. Specialization: two heads that visibly do different things, built from named `(out, in)` weight blocks
# 6. Grouped-query and multi-query attention: fewer key/value heads, and why checkpoints fix the grouping
# 7. What GQA and MQA save at a real model size: parameters and KV-cache bytes
# 8. The `MultiHeadAttention` module later chapters build on
# 9. Common mistakes, each one run next to the right version
# 10. Self-check, evidence card, and the exercises
#
# Each subtopic follows chapter 01's pattern: the idea in plain words, the formula, a worked example
# with real numbers, an implementation check (shapes first), where it shows up in real models, and
# a common mistake run beside the right version. Cells that start with `# NBVAL_CHECK_OUTPUT` are
# claims: the test suite re-runs the notebook and fails if their output ever changes.

# %% id="setup"
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import helpers
from helpers.attention import causal_mask, padding_mask, scaled_dot_product_attention
from helpers.heads import (
    MultiHeadAttention,
    attention_param_count,
    grouped_query_attention,
    kv_cache_elements_per_token,
    kv_head_for_query_head,
    merge_heads,
    multi_head_attention,
    repeat_kv,
    split_heads,
)
from helpers.specialization import trained_heads_experiment
from helpers.plots import attention_heatmap

helpers.seed_everything(0)
device = helpers.get_device()
print("computing on:", device.type)


def randn(*shape: int, seed: int, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> torch.Tensor:
    """Standard-normal numbers drawn on the CPU from their own seed, then moved to `device`
    (the same numbers on every machine)."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=generator, dtype=dtype) * scale).to(device)


def show(t: torch.Tensor, digits: int = 3) -> list:
    """A tensor as nested lists of rounded floats: no device, no dtype, no -0.0."""
    return (torch.round(t.detach().double().cpu(), decimals=digits) + 0.0).tolist()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> str:
    """The largest absolute difference, printed as 'below 1e-12' etc. so the text is machine-independent."""
    d = (a - b).abs().max().item()
    for bound in (1e-12, 1e-9, 1e-6, 1e-4):
        if d < bound:
            return f"below {bound:g}"
    return f"{d:.3g}"

# %% [markdown] id="first-loop"
# ## 1. A first loop with `torch.nn.MultiheadAttention`
#
# **Main idea.** Before opening the box, run it. `torch.nn.MultiheadAttention` with `embed_dim=8`
# and `num_heads=2` takes 4 tokens of width 8 and gives back 4 tokens of width 8: the layer never
# changes the shape of the residual stream, which is what lets a transformer stack dozens of them.
# `batch_first=True` makes it read `(B, T, d_model)` like the rest of this course (its default is
# `(T, B, d_model)`). Self-attention passes the same tensor as query, key and value.

# %% id="first-loop-shapes"
# NBVAL_CHECK_OUTPUT
mha = torch.nn.MultiheadAttention(embed_dim=8, num_heads=2, batch_first=True).to(device)
tokens = randn(1, 4, 8, seed=1)  # (B, T, d_model) = (1, 4, 8)
output, attention = mha(tokens, tokens, tokens)  # query, key, value
print("tokens_shape:", tuple(tokens.shape))
print("output_shape:", tuple(output.shape))
print("attention_shape:", tuple(attention.shape))

# %% [markdown] id="first-loop-averaged"
# **Why is the attention `(1, 4, 4)` when there are two heads?** Each head computes its own
# `(4, 4)` pattern, but by default `nn.MultiheadAttention` returns their **average over the heads**
# (`average_attn_weights=True`), a single summary map. Ask for `average_attn_weights=False` to get
# one pattern per head, `(B, H, T, T)`; the average of those is exactly what came back above. The
# helpers in this course always return the per-head weights, since averaging hides the very thing
# heads are for (section 5 shows two heads whose average looks like neither).

# %% id="first-loop-per-head"
# NBVAL_CHECK_OUTPUT
_, per_head = mha(tokens, tokens, tokens, average_attn_weights=False)  # (B, H, T, T)
print("per-head weights:", tuple(per_head.shape))
print("their mean over heads equals the default output:", torch.allclose(per_head.mean(dim=1), attention, atol=1e-6))
print("every row of every head sums to 1:", torch.allclose(per_head.sum(dim=-1), torch.ones(1, 2, 4, device=device)))

# %% [markdown] id="first-loop-mask"
# **Its mask means the opposite of ours.** `nn.MultiheadAttention` reads a boolean `attn_mask` or
# `key_padding_mask` as **`True` = blocked**, while this course (and
# `F.scaled_dot_product_attention`) uses `True` = may attend. Converting is `~mask`. Passing our
# causal mask unchanged blocks the past and allows the future, which the next cell shows on the
# first token: it should read only itself.

# %% id="first-loop-mask-run"
# NBVAL_CHECK_OUTPUT
ours = causal_mask(4, device=device)  # (T, T), True = may attend
_, right = mha(tokens, tokens, tokens, attn_mask=~ours)  # torch wants True = blocked
_, wrong = mha(tokens, tokens, tokens, attn_mask=ours)  # WRONG: blocks exactly what should be allowed
print("token 0 reads keys, converted mask:", [j for j in range(4) if right[0, 0, j] > 0])
print("token 0 reads keys, unconverted mask:", [j for j in range(4) if wrong[0, 0, j] > 0])

# %% [markdown] id="split"
# ## 2. Splitting the model dimension into heads
#
# **Main idea.** The projections $Q = XW_Q^\top$, $K$, $V$ produce `d_model` features per token, as
# in chapter 01. Multi-head attention does not add features; it **cuts the existing ones into $H$
# blocks of $d_{\text{head}} = d_{\text{model}} / H$** and gives each block to one head. Head $h$
# compares queries and keys using only its own $d_{\text{head}}$ features, so each head can learn its
# own notion of "relevant". To run all heads in one batched matrix product, the head axis is moved
# in front of the token axis: `(B, T, d_model)` → `(B, T, H, d_head)` → `(B, H, T, d_head)`.
#
# **Formula.** For token $t$ and head $h$,
#
# $$
# (Q_h)_{t} = Q_{t,\; h d_{\text{head}} : (h+1) d_{\text{head}}}, \qquad d_{\text{head}} = \frac{d_{\text{model}}}{H},
# \qquad S_h = \frac{Q_h K_h^\top}{\sqrt{d_{\text{head}}}} \in \mathbb{R}^{T \times T}.
# $$
#
# **Worked example: GPT-2 small.** $d_{\text{model}} = 768$ and $H = 12$ give
# $d_{\text{head}} = 64$. For a sequence of $T = 128$ tokens, each head computes a $128 \times 128$
# score matrix from $64$-wide queries and keys, scaled by $1/\sqrt{64} = 1/8$.

# %% id="split-gpt2"
# NBVAL_CHECK_OUTPUT
d_model, n_heads, T = 768, 12, 128
d_head = d_model // n_heads
print("d_head =", d_model, "/", n_heads, "=", d_head, "| scale 1/sqrt(d_head) =", 1 / math.sqrt(d_head))
x = randn(1, T, d_model, seed=2)  # (B, T, d_model)
q = split_heads(x, n_heads)  # (B, H, T, d_head)
scores = q @ q.transpose(-2, -1) / math.sqrt(d_head)  # (B, H, T, T)
print("x", tuple(x.shape), "-> heads", tuple(q.shape), "-> scores", tuple(scores.shape))
print("one head's score matrix:", tuple(scores[0, 0].shape), "=", scores[0, 0].numel(), "entries;",
      n_heads, "heads:", scores[0].numel(), "entries per sequence and layer")

# %% [markdown] id="split-tiny-text"
# **A split you can read.** Give a tiny sequence ($B = 1$, $T = 3$, $d_{\text{model}} = 6$) features
# that spell out where they came from: feature $c$ of token $t$ holds $10t + c$. With $H = 2$ heads
# of width 3, head 0 must hold features 0–2 of every token and head 1 features 3–5.

# %% id="split-tiny"
# NBVAL_CHECK_OUTPUT
x_tiny = (10 * torch.arange(3)[:, None] + torch.arange(6)[None, :]).float()[None].to(device)  # (1, 3, 6)
print("x (B, T, d_model) =", tuple(x_tiny.shape), show(x_tiny[0], 0))
heads_tiny = split_heads(x_tiny, 2)  # (B, H, T, d_head) = (1, 2, 3, 3)
for h in range(2):
    print(f"head {h}:", show(heads_tiny[0, h], 0))
print("merge_heads gives x back:", torch.equal(merge_heads(heads_tiny), x_tiny))

# %% [markdown] id="split-check"
# **Implementation check.** Shapes first, with every size different ($B = 2$, $T = 5$,
# $H = 3$, $d_{\text{head}} = 4$, so $d_{\text{model}} = 12$):
#
# - `x`: `(B, T, d_model)` = `(2, 5, 12)`
# - `x.view(B, T, H, d_head)`: `(2, 5, 3, 4)`, splitting only the last axis
# - `.transpose(1, 2)`: `(B, H, T, d_head)` = `(2, 3, 5, 4)`
# - back: `.transpose(1, 2)` to `(2, 5, 3, 4)`, then `.reshape(B, T, d_model)` to `(2, 5, 12)`.
#
# **Why `.view` refuses after a transpose.** A tensor is a block of memory plus *strides*: how many
# elements to step in memory to move one place along each axis. `.transpose` only swaps two strides,
# it moves no data, so the result is no longer laid out row after row (`is_contiguous()` is `False`).
# `.view` never copies: it can only reinterpret memory whose order already matches the new shape,
# so merging the token and head axes of a transposed tensor raises a `RuntimeError`.
# `.contiguous()` copies the data into the transposed order, after which `.view` works, and
# `.reshape` does exactly that (a view when it can, a copy when it must). The attention output is
# a fresh `(B, H, T, d_head)` tensor, so merging it back always hits this case.

# %% id="split-shapes"
# NBVAL_CHECK_OUTPUT
x = randn(2, 5, 12, seed=3)  # (B, T, d_model)
step = x.view(2, 5, 3, 4)  # (B, T, H, d_head)
heads = step.transpose(1, 2)  # (B, H, T, d_head)
print("view:", tuple(step.shape), "-> transpose:", tuple(heads.shape), "| contiguous:", heads.is_contiguous())
print("same as split_heads:", torch.equal(heads, split_heads(x, 3)))
attended = heads.contiguous()  # (B, H, T, d_head), laid out in memory like attention's output
back = attended.transpose(1, 2)  # (B, T, H, d_head): strides swapped, no data moved
print("attended strides", attended.stride(), "-> after transpose", back.stride(),
      "| contiguous:", back.is_contiguous())
try:
    back.view(2, 5, 12)  # WRONG: view cannot merge axes whose memory is out of order
except RuntimeError as error:
    print("view after transpose: RuntimeError:", str(error).split(".")[0])
merged_view = back.contiguous().view(2, 5, 12)  # (B, T, d_model): copy into order, then view
merged = back.reshape(2, 5, 12)  # (B, T, d_model): reshape copies when it must
print("contiguous().view:", tuple(merged_view.shape), "| reshape:", tuple(merged.shape),
      "| both give x back:", torch.equal(merged_view, x) and torch.equal(merged, x))

# %% [markdown] id="split-mistake"
# **Common mistake: reshaping straight to `(B, H, T, d_head)`.** It has the right number of
# elements, so `x.reshape(B, H, T, d_head)` runs and gives the right shape. But a reshape keeps the
# memory order, which is token by token: its "head 0" is the first tokens' features chopped into
# rows of 3. On the readable example, the wrong head 0 contains `[0, 1, 2], [3, 4, 5], [10, 11, 12]`:
# all six features of token 0 and half of token 1.

# %% id="split-mistake-run"
# NBVAL_CHECK_OUTPUT
wrong_heads = x_tiny.reshape(1, 2, 3, 3)  # (B, H, T, d_head)  WRONG: no transpose
print("right head 0:", show(heads_tiny[0, 0], 0))
print("wrong head 0:", show(wrong_heads[0, 0], 0))
print("same shape:", wrong_heads.shape == heads_tiny.shape, "| same numbers:", torch.equal(wrong_heads, heads_tiny))

# %% [markdown] id="split-llm"
# **In real LLMs.** GPT-2 small: 12 heads of 64 ($d_{\text{model}} = 768$); GPT-2 XL: 25 heads of 64
# (1600); Llama-2-7B: 32 heads of 128 (4096); Llama-2-70B: 64 heads of 128 (8192). $d_{\text{head}}$
# stays at 64 or 128 across sizes; wider models get more heads. nanoGPT's
# `CausalSelfAttention` does exactly this split with `k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)`.

# %% [markdown] id="heads"
# ## 3. Attention per head, concatenation and the output projection
#
# **Main idea.** Once split, the heads are just a batch axis: chapter 01's
# `scaled_dot_product_attention` runs on `(B, H, T, d_head)` tensors and returns one output and one
# weight pattern per head. `merge_heads` puts the heads' outputs side by side again
# (`(B, T, d_model)`), and **the output projection $W_O$ mixes them**: without it, output feature
# block $h$ would only ever contain what head $h$ read.
#
# **Formula.** Writing $W_O = [\,W_O^{(0)} \mid W_O^{(1)} \mid \dots \mid W_O^{(H-1)}\,]$ as column
# blocks of width $d_{\text{head}}$, the concatenation followed by $W_O$ is a sum over heads:
#
# $$
# \operatorname{Concat}(\text{head}_0, \dots, \text{head}_{H-1})\, W_O^\top
#   = \sum_{h=0}^{H-1} \text{head}_h \, \big(W_O^{(h)}\big)^\top .
# $$
#
# Each head writes its own contribution into the full `d_model`-wide output, and the contributions add up.
#
# **Worked example.** $B = 2$, $T = 5$, $H = 3$, $d_{\text{head}} = 4$, in `float64`: the
# concat-then-project output of `helpers.heads.multi_head_attention` against the sum of per-head
# contributions, computed with a loop over heads.

# %% id="heads-example"
# NBVAL_CHECK_OUTPUT
B, T, H, d_head = 2, 5, 3, 4
d_model = H * d_head
x = randn(B, T, d_model, seed=4, dtype=torch.float64)  # (B, T, d_model)
w_q, w_k, w_v, w_o = (randn(d_model, d_model, seed=5 + i, dtype=torch.float64, scale=d_model ** -0.5)
                      for i in range(4))  # (d_model, d_model) each, nn.Linear layout
out, weights = multi_head_attention(x, w_q, w_k, w_v, w_o, H)  # (B, T, d_model), (B, H, T, T)
print("out", tuple(out.shape), "weights", tuple(weights.shape))

total = torch.zeros_like(out)  # (B, T, d_model)
for h in range(H):
    block = slice(h * d_head, (h + 1) * d_head)  # this head's rows of W_Q/W_K/W_V, columns of W_O
    head_out, _ = scaled_dot_product_attention(x @ w_q[block].T, x @ w_k[block].T, x @ w_v[block].T)  # (B, T, d_head)
    total += head_out @ w_o[:, block].T  # (B, T, d_model): head h's contribution
print("concat then W_O equals the sum of per-head contributions: difference", max_diff(out, total))

# %% [markdown] id="heads-torch-text"
# **Implementation check against torch.** `nn.MultiheadAttention` stores $W_Q$, $W_K$, $W_V$
# stacked in one `in_proj_weight` of shape `(3 d_model, d_model)` and $W_O$ as `out_proj.weight`.
# Copy our weights in (no biases), ask for per-head weights, and compare. A causal mask goes in as
# `~mask`.

# %% id="heads-torch"
# NBVAL_CHECK_OUTPUT
torch_mha = torch.nn.MultiheadAttention(d_model, H, bias=False, batch_first=True, dtype=torch.float64).to(device)
with torch.no_grad():
    torch_mha.in_proj_weight.copy_(torch.cat([w_q, w_k, w_v]))  # (3 d_model, d_model)
    torch_mha.out_proj.weight.copy_(w_o)  # (d_model, d_model)
    t_out, t_weights = torch_mha(x, x, x, attn_mask=~causal_mask(T, device=device), average_attn_weights=False)
out, weights = multi_head_attention(x, w_q, w_k, w_v, w_o, H, causal_mask(T, device=device))
print("in_proj_weight", tuple(torch_mha.in_proj_weight.shape), "out_proj.weight", tuple(torch_mha.out_proj.weight.shape))
print("output vs torch:", max_diff(out, t_out), "| per-head weights vs torch:", max_diff(weights, t_weights))

# %% [markdown] id="heads-mistake"
# **In real LLMs.** GPT-2 fuses the three input projections into one layer (`c_attn`, 768 → 2304)
# and calls the output projection `c_proj`; Llama names them `q_proj`, `k_proj`, `v_proj`, `o_proj`.
# Either way it is four `d_model`-wide linear maps around a batched attention.
#
# **Common mistake: forgetting $W_O$.** Returning the merged heads directly still gives
# `(B, T, d_model)`, so nothing crashes, and the layer loses a quarter of its parameters and the only
# place where the heads' findings meet. The symptom: output feature block $h$ depends on head $h$
# alone. Zero head 1's value projection and see which blocks of the output move.

# %% id="heads-mistake-run"
# NBVAL_CHECK_OUTPUT
def no_output_projection(x, w_q, w_k, w_v, w_o, n_heads):
    heads, _ = scaled_dot_product_attention(split_heads(x @ w_q.T, n_heads), split_heads(x @ w_k.T, n_heads),
                                            split_heads(x @ w_v.T, n_heads))  # (B, H, T, d_head)
    return merge_heads(heads)  # (B, T, d_model)  WRONG: W_O never applied


w_v_silenced = w_v.clone()
w_v_silenced[d_head:2 * d_head] = 0  # head 1 now reads zeros
for name, fn in [("right", lambda wv: multi_head_attention(x, w_q, w_k, wv, w_o, H)[0]),
                 ("no W_O", lambda wv: no_output_projection(x, w_q, w_k, wv, w_o, H))]:
    moved = (fn(w_v) - fn(w_v_silenced)).abs().amax(dim=(0, 1))  # (d_model,): change per output feature
    print(f"{name:>6}: output blocks changed by silencing head 1:",
          [bool(moved[h * d_head:(h + 1) * d_head].max() > 1e-12) for h in range(H)])

# %% [markdown] id="cost"
# ## 4. What heads cost
#
# **Main idea.** Splitting into heads is free in parameters and almost free in arithmetic: the four
# projections are `d_model x d_model` whatever $H$ is, and the score computation does
# $B \cdot H \cdot T^2 \cdot d_{\text{head}} = B \cdot T^2 \cdot d_{\text{model}}$ multiply-adds
# whatever $H$ is. What grows with $H$ is the number of $T \times T$ score matrices (memory, if they
# are stored) and the number of distinct attention patterns.
#
# **Formula.** Without biases, for multi-head attention,
#
# $$
# N_{\text{params}} = \underbrace{d_{\text{model}}^2}_{W_Q} + \underbrace{d_{\text{model}}^2}_{W_K}
#   + \underbrace{d_{\text{model}}^2}_{W_V} + \underbrace{d_{\text{model}}^2}_{W_O} = 4\, d_{\text{model}}^2 ,
# $$
#
# plus $4\, d_{\text{model}}$ when every projection has a bias.

# %% id="cost-table"
# NBVAL_CHECK_OUTPUT
d_model, T, B = 768, 1024, 1
print(f"{'H':>3} {'d_head':>6} {'params':>10} {'score mult-adds':>16} {'score entries':>14}")
for H in [1, 2, 4, 12, 24]:
    print(f"{H:>3} {d_model // H:>6} {attention_param_count(d_model, H):>10,} "
          f"{B * H * T * T * (d_model // H):>16,} {B * H * T * T:>14,}")
print("GPT-2 small, with biases:", f"{attention_param_count(768, 12, bias=True):,}", "= 4 * 768^2 + 4 * 768")

# %% [markdown] id="cost-torch"
# The count agrees with the parameters torch allocates:

# %% id="cost-torch-run"
# NBVAL_CHECK_OUTPUT
for bias in (False, True):
    module = torch.nn.MultiheadAttention(768, 12, bias=bias, batch_first=True, device="meta")  # no memory used
    print(f"bias={bias}: nn.MultiheadAttention has {sum(p.numel() for p in module.parameters()):,} parameters,"
          f" attention_param_count says {attention_param_count(768, 12, bias=bias):,}")

# %% [markdown] id="specialize"
# ## 5. Specialization: heads that do different things
#
# **Main idea.** Nothing in the architecture tells a head what to look for; training finds it. Trained
# models contain heads that attend to the previous token, heads that attend to earlier copies of the
# current token, heads that follow syntax. To *see* two heads doing different things without training
# a model, build their weights by hand on the sentence "the cat sat on the mat":
#
# - every token's hidden state is `[position code (6) | word code (5) | 0]`, 12 features;
# - **head 0** (features 0–5 of Q, K, V) is a **previous-token head**: its query for position $i$ is
#   the position code of $i-1$, its keys are the position codes;
# - **head 1** (features 6–11) is a **same-word head**: queries and keys are both the word code, so
#   a token attends to every earlier occurrence of its own word (and itself);
# - head 0's values are the word codes (so it carries the previous *word*), head 1's values are the
#   position codes (so it carries *where* the same word occurred).
#
# Both heads run in *one* call of `multi_head_attention` with a causal mask; $W_O$ is the identity.
#
# **Reading an `(out, in)` weight.** Every weight here has `nn.Linear`'s layout,
# `(out_features, in_features)`, and $y = x W^\top$ means $y_r = \sum_c W[r, c]\, x_c$: **row $r$ of
# $W$ makes output feature $r$, column $c$ says how much of input feature $c$ goes into it.** So a
# block `W[rows, cols]` reads "these output features are computed from those input features". The
# rows of $W_Q$, $W_K$, $W_V$ are their output features, and `split_heads` hands rows
# $h\,d_{\text{head}} \dots (h+1)\,d_{\text{head}} - 1$ to head $h$ (heads are numbered from 0 here
# and in the exercises). The cell names each block before filling it:
#
# | block | rows (out): whose features | columns (in): which part of $x$ | filled with |
# |---|---|---|---|
# | `w_q[HEAD0, POS]` | head 0's queries | position code | `gap * previous`: row $r$ reads column $r+1$ |
# | `w_k[HEAD0, POS]` | head 0's keys | position code | identity |
# | `w_v[HEAD0_WORD, WORD]` | head 0's values | word code | identity |
# | `w_q[HEAD1_WORD, WORD]` | head 1's queries | word code | `gap *` identity |
# | `w_k[HEAD1_WORD, WORD]` | head 1's keys | word code | identity |
# | `w_v[HEAD1, POS]` | head 1's values | position code | identity |
#
# Why `previous` has its ones at `[r, r + 1]`: query feature $r$ of token $i$ is
# $\sum_c \text{previous}[r, c]\, x_{i,c} = x_{i, r+1}$, which is 1 exactly when $i = r + 1$. So token
# $i$'s query is the one-hot code of position $i - 1$, and it matches the key of token $i - 1$.

# %% id="specialize-build"
# NBVAL_CHECK_OUTPUT
words = ["the", "cat", "sat", "on", "the", "mat"]
vocab = sorted(set(words))  # ['cat', 'mat', 'on', 'sat', 'the']
T, H, d_head = len(words), 2, 6
d_model = H * d_head
gap = 6.0 * math.sqrt(d_head)  # a matching query/key pair scores 6 after the 1/sqrt(d_head) scale

n_vocab = len(vocab)

# Input features of x, the `in` (column) index of every weight:
POS = slice(0, T)  # features 0..5: one-hot code of the position
WORD = slice(T, T + n_vocab)  # features 6..10: one-hot code of the word (feature 11 stays 0)
# Output features of W_Q, W_K, W_V, the `out` (row) index: head h owns rows h*d_head .. (h+1)*d_head - 1
HEAD0 = slice(0, d_head)  # rows 0..5
HEAD1 = slice(d_head, 2 * d_head)  # rows 6..11
HEAD0_WORD = slice(0, n_vocab)  # the first 5 rows of head 0, wide enough for a word code
HEAD1_WORD = slice(d_head, d_head + n_vocab)  # the first 5 rows of head 1

x = torch.zeros(1, T, d_model, dtype=torch.float64)  # (B, T, d_model)
x[0, :, POS] = torch.eye(T, dtype=torch.float64)  # token i has a 1 at feature i
x[0, :, WORD] = torch.eye(n_vocab, dtype=torch.float64)[[vocab.index(w) for w in words]]  # (T, n_vocab)

identity_pos = torch.eye(T, dtype=torch.float64)  # (T, T)
identity_word = torch.eye(n_vocab, dtype=torch.float64)  # (n_vocab, n_vocab)
previous = torch.diag(torch.ones(T - 1, dtype=torch.float64), diagonal=1)  # (T, T): previous[r, r + 1] = 1

w_q, w_k, w_v = (torch.zeros(d_model, d_model, dtype=torch.float64) for _ in range(3))  # (out, in) each
w_q[HEAD0, POS] = gap * previous  # head 0 asks "who is at position i - 1?"
w_k[HEAD0, POS] = identity_pos  # head 0's key for token j: "I am at position j"
w_v[HEAD0_WORD, WORD] = identity_word  # head 0 hands over the word
w_q[HEAD1_WORD, WORD] = gap * identity_word  # head 1 asks "who is my word?"
w_k[HEAD1_WORD, WORD] = identity_word  # head 1's key for token j: "I am word w_j"
w_v[HEAD1, POS] = identity_pos  # head 1 hands over the position
w_o = torch.eye(d_model, dtype=torch.float64)  # (out, in): keep both heads' findings side by side
x, w_q, w_k, w_v, w_o = (t.to(device) for t in (x, w_q, w_k, w_v, w_o))

print("w_q[HEAD0, POS] / gap (row r reads column r + 1):")
for row in (w_q[HEAD0, POS] / gap).int().tolist():
    print("   ", row)
print("token 3's head-0 query / gap:", (x[0, 3] @ w_q[HEAD0].T / gap).int().tolist(), "= the code of position 2")

out, weights = multi_head_attention(x, w_q, w_k, w_v, w_o, H, causal_mask(T, device=device))  # (1, T, 12), (1, 2, T, T)
for i, word in enumerate(words):
    prev = [words[j] + f"@{j}" for j in range(T) if weights[0, 0, i, j] > 0.5]
    same = [words[j] + f"@{j}" for j in range(T) if weights[0, 1, i, j] > 0.25]
    print(f"{word:>3}@{i}: head 0 reads {prev}, head 1 reads {same}")

# %% [markdown] id="specialize-formula-text"
# **The per-head formula.** Head $h$ uses its own slice of rows of each projection,
# $W_Q^{(h)} = W_Q[h\,d_{\text{head}} : (h+1)\,d_{\text{head}},\ :]$ (likewise $W_K^{(h)}$, $W_V^{(h)}$), and
#
# $$
# \mathrm{head}_h = \operatorname{softmax}\!\Big(\frac{(X W_Q^{(h)\top})(X W_K^{(h)\top})^\top}{\sqrt{d_{\text{head}}}} + M\Big)\, X W_V^{(h)\top},
# \qquad
# \mathrm{MHA}(X) = [\mathrm{head}_0, \dots, \mathrm{head}_{H-1}]\, W_O^\top .
# $$
#
# The cell computes each head with that formula, one at a time, checks it against the single call
# above, and asserts the patterns the heads were built for: head 0's weight sits on the diagonal
# just below the main one (query $i$ reads key $i-1$), head 1's on the keys with the same word.

# %% id="specialize-formula"
# NBVAL_CHECK_OUTPUT
allowed = causal_mask(T, device=device)  # (T, T), True = may attend
per_head = []
for h in range(H):
    rows = slice(h * d_head, (h + 1) * d_head)
    q_h, k_h, v_h = x[0] @ w_q[rows].T, x[0] @ w_k[rows].T, x[0] @ w_v[rows].T  # (T, d_head) each
    scores_h = (q_h @ k_h.T / math.sqrt(d_head)).masked_fill(~allowed, float("-inf"))  # (T, T)
    weights_h = torch.softmax(scores_h, dim=-1)  # (T, T)
    assert torch.allclose(weights_h, weights[0, h]), h
    per_head.append(weights_h @ v_h)  # (T, d_head)
assert torch.allclose(torch.cat(per_head, dim=-1) @ w_o.T, out[0])  # concatenate, then W_O
print("per-head formula, one head at a time == one multi_head_attention call: True")

sub_diagonal = torch.diagonal(weights[0, 0], offset=-1)  # weights[0, 0, i, i - 1] for i = 1..T-1
assert (sub_diagonal > 0.98).all()  # key i-1 scores 6, the other i keys 0: e^6 / (e^6 + 5) = 0.988 at worst (query 5)
print("head 0: weight on key i-1 for queries 1..5:", show(sub_diagonal, 3))
same_word = torch.tensor([[words[i] == words[j] and j <= i for j in range(T)] for i in range(T)], device=device)
share_same_word = (weights[0, 1] * same_word).sum(-1)  # (T,): weight on keys holding the query's own word
assert (share_same_word > 0.98).all()  # the same bound: at most 5 other keys, each e^6 times weaker
print("head 1: share of each query's weight on keys with its own word:", show(share_same_word, 3))


# The same weights as pictures: head 0 is a sub-diagonal (one step back), head 1 is the diagonal
# plus the second "the" reaching back to the first. The third panel is what
# `nn.MultiheadAttention` returns by default, the head average: it looks like neither head.

# %% id="specialize-plot"
fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
attention_heatmap(weights[0, 0], query_labels=words, key_labels=words, ax=axes[0], annotate=True,
                  title="head 0: previous token")
attention_heatmap(weights[0, 1], query_labels=words, key_labels=words, ax=axes[1], annotate=True,
                  title="head 1: same word")
attention_heatmap(weights[0].mean(dim=0), query_labels=words, key_labels=words, ax=axes[2], annotate=True,
                  title="average over heads (nn.MultiheadAttention default)")
fig.tight_layout()
plt.show()

# %% [markdown] id="specialize-plot-caption"
# *What to see:* head 0 puts its weight one below the diagonal (the previous token), head 1 on
# matching words (the two "the" tokens share 0.50 / 0.50); the average over heads, what
# `nn.MultiheadAttention` returns by default, blurs both patterns into half weights, so inspect
# heads one at a time.

# %% [markdown] id="specialize-output"
# With $W_O$ the identity, the output keeps both findings side by side. Output features 0–4 (head
# 0's block) hold the word code of the *previous* token; features 6–11 (head 1's block) hold the
# position code averaged over the tokens with the same word, so the second "the" reads a mean
# position of 2.0: its word also stood at position 0. A later layer can read "the word before me was `the`" straight off the
# residual stream. (The first token has no previous one; head 0 falls back on the only key it may
# read, itself.)

# %% id="specialize-output-run"
# NBVAL_CHECK_OUTPUT
positions = torch.arange(T, dtype=torch.float64, device=device)
for i, word in enumerate(words):
    previous_word = vocab[out[0, i, :len(vocab)].argmax().item()]  # head 0's block
    same_word_position = (out[0, i, T:] * positions).sum().item()  # head 1's block: mean position
    print(f"{word:>3}@{i}: previous word {previous_word!r:<6} | mean position of '{word}' so far {same_word_position:.1f}")

# %% [markdown] id="specialize-trained-text"
# **Specialization in a trained model.** The heads above were wired by hand. Does training find such
# heads by itself? `helpers.specialization.trained_heads_experiment` trains the course's shared model (2
# layers of 4 heads, $d_{\text{model}} = 64$, RoPE) for 300 steps on windows of $T = 48$ characters
# of the course corpus (about 5 s), then reads every head's weights on validation text and
# measures two things per head:
#
# - the **previous-token score** $\frac{1}{T-1}\sum_{i \ge 1} A_{i,\,i-1}$, the mean weight on the key
#   just before the query (`previous_token_scores`; a head that spreads evenly over its $i + 1$
#   visible keys scores about 0.07 here);
# - the **mean attention distance** $\sum_j A_{ij}\,(i - j)$, how far back the head reads on average
#   (an evenly spread head: $i / 2$, about 14 positions over queries 8 to 47).

# %% id="specialize-trained"
found = trained_heads_experiment(seed=0)
print(f"validation loss: {found['val_init']:.2f} at initialization -> {found['val_trained']:.2f} after 300 steps")
print(f"best previous-token head: layer {found['best_layer']:.0f}, head {found['best_head']:.0f}, score "
      f"{found['prev_trained']:.2f} (before training: best {found['prev_init']:.2f}; an evenly spread head "
      f"{found['uniform']:.2f}; the other 7 heads: mean {found['others_trained']:.2f})")
print(f"that head's largest weight is on the previous character for {found['top_is_previous']:.0%} of the queries")
print("previous-token score, layer x head:", [[round(v, 2) for v in row] for row in found["scores"].tolist()])
print("mean attention distance, layer x head:", [[round(v, 1) for v in row] for row in found["distance"].tolist()],
      f"(evenly spread: {found['uniform_distance']:.1f})")

# %% [markdown] id="specialize-trained-caption"
# Nobody told any head where to look, yet after 300 steps one head puts about half of its weight on
# the previous character, more than six times what an evenly spread head gives it, and the heads differ
# several-fold in how far back they read: some stay within a character or two, others reach back
# across the word. Every head reads far more locally than an evenly spread one. The specialization
# is real but partial after so short a run: by the criterion below the best head is not yet a clean
# positional head. `tests/test_specialization.py` asserts these orderings on two seeds.

# %% [markdown] id="specialize-llm"
# **In real LLMs.** Interpretability work on GPT-2 small finds previous-token heads and "induction
# heads" (which combine a previous-token head in one layer with a copy head in the next to continue
# repeated text). Voita et al. (2019, "Analyzing Multi-Head Self-Attention: Specialized Heads Do the
# Heavy Lifting, the Rest Can Be Pruned") call a head *positional* when, at least 90 % of the time,
# its largest weight falls on the same relative position, and find such heads (previous or next
# token) in the encoders of their translation models; they also find that pruning 38 of the 48
# encoder heads of their English-Russian model costs only 0.15 BLEU. Many heads are redundant, which
# is one motivation for sharing keys and values across heads (next section).
#
# **Common mistake: reading one averaged map.** The averaged map above suggests every token spreads its
# attention over two keys; no head does that. Ask for `average_attn_weights=False`, and plot heads one by one.

# %% [markdown] id="gqa"
# ## 6. Grouped-query and multi-query attention
#
# **Main idea.** During generation a decoder caches every layer's keys and values for all earlier
# tokens (chapter 07), and for long contexts that cache, not the weights, fills the GPU. **Grouped-query
# attention (GQA) keeps all $H$ query heads but computes only $H_{kv} < H$ key/value heads**; each
# K/V head is shared by a group of $H / H_{kv}$ consecutive query heads. Multi-query attention (MQA)
# is the extreme $H_{kv} = 1$: one key and one value head for everyone. Plain multi-head attention is
# $H_{kv} = H$. The cache, and the $W_K$, $W_V$ projections, shrink by $H / H_{kv}$.
#
# **Formula.** With $d_{\text{head}} = d_{\text{model}} / H$: $W_K, W_V \in
# \mathbb{R}^{(H_{kv} d_{\text{head}}) \times d_{\text{model}}}$, and query head $h$ reads
#
# $$
# g(h) = \left\lfloor \frac{h}{H / H_{kv}} \right\rfloor, \qquad
# \text{head}_h = \operatorname{softmax}\!\left(\frac{Q_h K_{g(h)}^\top}{\sqrt{d_{\text{head}}}}\right) V_{g(h)} .
# $$
#
# **Worked example.** $H = 8$ query heads. The mapping for $H_{kv} = 8$ (MHA), $4$, $2$ (GQA) and
# $1$ (MQA), and the shapes of $W_K$ for $d_{\text{model}} = 64$ ($d_{\text{head}} = 8$):

# %% id="gqa-mapping"
# NBVAL_CHECK_OUTPUT
H, d_model = 8, 64
d_head = d_model // H
for H_kv in [8, 4, 2, 1]:
    mapping = [kv_head_for_query_head(h, H, H_kv) for h in range(H)]
    print(f"H_kv = {H_kv}: query heads 0..7 read K/V heads {mapping}; W_K is {(H_kv * d_head, d_model)}")

# %% [markdown] id="gqa-check-text"
# **Implementation check.** $B = 2$, $T = 5$, $H = 6$, $H_{kv} = 2$, $d_{\text{head}} = 4$
# ($d_{\text{model}} = 24$):
#
# - `q = split_heads(x @ W_Q.T, H)`: `(B, H, T, d_head)` = `(2, 6, 5, 4)`
# - `k = split_heads(x @ W_K.T, H_kv)`: `(B, H_kv, T, d_head)` = `(2, 2, 5, 4)`, from `W_K` `(8, 24)`
# - `repeat_kv(k, H // H_kv)` = `k.repeat_interleave(3, dim=1)`: `(2, 6, 5, 4)`, heads `[k0, k0, k0, k1, k1, k1]`
# - then exactly multi-head attention: weights `(2, 6, 5, 5)`, output `(2, 5, 24)`
#
# torch's fused kernel does the same grouping when asked with `enable_gqa=True`: give it 6 query heads
# and 2 K/V heads and it maps query head $h$ to K/V head $h // 3$. The next cell checks
# `grouped_query_attention` against it, and checks that GQA with $H_{kv} = H$ is plain MHA.

# %% id="gqa-check"
# NBVAL_CHECK_OUTPUT
B, T, H, H_kv, d_head = 2, 5, 6, 2, 4
d_model, d_kv = H * d_head, H_kv * d_head
x = randn(B, T, d_model, seed=20, dtype=torch.float64)  # (B, T, d_model)
w_q, w_o = (randn(d_model, d_model, seed=21 + i, dtype=torch.float64, scale=d_model ** -0.5) for i in range(2))
w_k, w_v = (randn(d_kv, d_model, seed=23 + i, dtype=torch.float64, scale=d_model ** -0.5) for i in range(2))
mask = causal_mask(T, device=device)
out, weights = grouped_query_attention(x, w_q, w_k, w_v, w_o, H, H_kv, mask)  # (B, T, d_model), (B, H, T, T)

q = split_heads(x @ w_q.T, H)  # (B, H, T, d_head)
k, v = split_heads(x @ w_k.T, H_kv), split_heads(x @ w_v.T, H_kv)  # (B, H_kv, T, d_head) each
print("q", tuple(q.shape), "k", tuple(k.shape), "repeat_kv(k)", tuple(repeat_kv(k, H // H_kv).shape))
fused = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)  # (B, H, T, d_head)
print("output vs F.scaled_dot_product_attention(enable_gqa=True):", max_diff(out, merge_heads(fused) @ w_o.T))

w_k_full = w_k.view(H_kv, d_head, d_model).repeat_interleave(H // H_kv, dim=0).reshape(d_model, d_model)
w_v_full = w_v.view(H_kv, d_head, d_model).repeat_interleave(H // H_kv, dim=0).reshape(d_model, d_model)
mha_out, _ = multi_head_attention(x, w_q, w_k_full, w_v_full, w_o, H, mask)
print("GQA = MHA with each K/V head's weights repeated for its group:", max_diff(out, mha_out))
print("GQA with H_kv = H is MHA:",
      torch.equal(grouped_query_attention(x, w_q, w_k_full, w_v_full, w_o, H, H, mask)[0], mha_out))

# %% [markdown] id="gqa-layout"
# **Why $h // (H/H_{kv})$ is the layout.** Nothing in the mathematics prefers one grouping: any
# rule that gives every K/V head $H/H_{kv}$ query heads is as expressive as any other. What fixes the
# rule is **how trained weights are stored**. A checkpoint holds $W_K$ as one
# `(H_kv * d_head, d_model)` matrix whose rows $g\,d_{\text{head}} \dots (g+1)\,d_{\text{head}} - 1$ are
# K/V head $g$, and $W_Q$ as `(H * d_head, d_model)` with query head $h$ in rows
# $h\,d_{\text{head}} \dots$. During training the model's code decided which query heads met which K/V
# head, and the weights learned to fit that pairing. Llama's code (Hugging Face's `repeat_kv`) expands
# `(B, H_kv, T, d)` to `(B, H_kv, n_rep, T, d)` and flattens the two head axes, so the copies of K/V
# head $g$ land next to each other, at positions $g \cdot n_{\text{rep}} \dots (g+1) \cdot n_{\text{rep}} - 1$:
# query heads $g \cdot \text{group} \dots (g+1) \cdot \text{group} - 1$ read K/V head $g$. That is
# `repeat_interleave` along the head axis, torch's `enable_gqa=True`, and the grouping of the GQA paper
# (Ainslie et al., 2023), where each group of consecutive query heads shares one K/V head.
#
# The cell shows three things on the weights of `gqa-check`, treated as a checkpoint stored the
# Llama way: the expand-and-flatten form equals `repeat_interleave` (and not `repeat`); code that
# pairs heads by `h % H_kv` gives **other outputs** from those same weights; and the `h % H_kv` rule
# loses nothing in expressiveness, because moving query head blocks (rows of $W_Q$ and the matching
# columns of $W_O$) to where that rule expects them gives back the right outputs exactly.

# %% id="gqa-layout-run"
# NBVAL_CHECK_OUTPUT
group = H // H_kv
expanded = k[:, :, None].expand(B, H_kv, group, T, d_head).reshape(B, H, T, d_head)  # (B, H, T, d_head)
print("expand-and-flatten (Llama's repeat_kv) equals repeat_interleave:", torch.equal(expanded, repeat_kv(k, group)),
      "| equals repeat:", torch.equal(expanded, k.repeat(1, group, 1, 1)))


def gqa_modulo(x, w_q, w_k, w_v, w_o):
    """GQA written with the other pairing: query head h reads K/V head h % H_kv."""
    q_m = split_heads(x @ w_q.T, H)  # (B, H, T, d_head)
    k_m, v_m = split_heads(x @ w_k.T, H_kv), split_heads(x @ w_v.T, H_kv)  # (B, H_kv, T, d_head)
    heads_m, _ = scaled_dot_product_attention(q_m, k_m.repeat(1, group, 1, 1), v_m.repeat(1, group, 1, 1), mask)
    return merge_heads(heads_m) @ w_o.T  # (B, T, d_model)


print("h % H_kv code on the checkpoint's weights vs the right output:", max_diff(gqa_modulo(x, w_q, w_k, w_v, w_o), out))
# The query head at position g * group + r (K/V head g, r-th in its group) moves to r * H_kv + g,
# where h % H_kv reads K/V head g: permute W_Q's row blocks and W_O's column blocks the same way.
new_pos = [r * H_kv + g for g in range(H_kv) for r in range(group)]  # new_pos[h]: where head h goes
old_head = [new_pos.index(p) for p in range(H)]  # old_head[p]: which head now sits at position p
rows_q = torch.cat([torch.arange(h * d_head, (h + 1) * d_head) for h in old_head]).to(device)  # (d_model,)
w_q_perm, w_o_perm = w_q[rows_q], w_o[:, rows_q]  # (d_model, d_model) each
print("query heads moved to", new_pos, "-> h % H_kv reads K/V heads", [p % H_kv for p in range(H)])
print("h % H_kv code on the permuted weights vs the right output:",
      max_diff(gqa_modulo(x, w_q_perm, w_k, w_v, w_o_perm), out))

# %% [markdown] id="gqa-mistake"
# **Common mistake: pairing heads by `h % H_kv` when the weights were stored for `h // (H / H_kv)`.**
# `k.repeat(1, 3, 1, 1)` lays the heads out as `[k0, k1, k0, k1, k0, k1]`: query heads 0, 2, 4 share
# a K/V head instead of 0, 1, 2. As a design it would be fine (the cell above trained nothing and
# still matched the right outputs after permuting heads); as code that loads a Llama-layout checkpoint,
# or that must agree with `enable_gqa`, it is wrong: every query head meets keys it was never trained
# with. It runs, the shapes are right, and with MQA ($H_{kv} = 1$) or MHA ($H_{kv} = H$) the two
# mappings even agree, so only a real group exposes it.

# %% id="gqa-mistake-run"
# NBVAL_CHECK_OUTPUT
print("right (repeat_interleave):", [kv_head_for_query_head(h, H, H_kv) for h in range(H)])
print("wrong (repeat):           ", [h % H_kv for h in range(H)])
wrong_heads, _ = scaled_dot_product_attention(q, k.repeat(1, 3, 1, 1), v.repeat(1, 3, 1, 1), mask)  # WRONG
print("wrong output vs torch's enable_gqa:", max_diff(merge_heads(wrong_heads) @ w_o.T, merge_heads(fused) @ w_o.T))
for n_kv in (1, H):  # the mappings agree here, which is why tests need 1 < H_kv < H
    print(f"H_kv = {n_kv}: the two mappings agree:",
          [h // (H // n_kv) for h in range(H)] == [h % n_kv for h in range(H)])

# %% [markdown] id="gqa-llm"
# **In real LLMs.** MQA was introduced for fast decoding (Shazeer, 2019) and used in PaLM and
# Falcon-7B. GQA (Ainslie et al., 2023) is the common compromise: Llama-2-70B uses 64 query heads
# with 8 K/V heads, Llama-3-8B and Mistral-7B use 32 query heads with 8 K/V heads, while Llama-2-7B
# still uses plain MHA (32 and 32). Hugging Face's Llama code expands the K/V heads with a
# `repeat_kv` function that is `repeat_interleave` along the head axis, the $h // (H/H_{kv})$ mapping.

# %% [markdown] id="savings"
# ## 7. What GQA and MQA save at a real model size
#
# **Main idea.** Put numbers on it: the attention of Llama-2-7B ($d_{\text{model}} = 4096$, 32
# layers, 32 heads of 128) as MHA, as GQA with 8 K/V heads, and as MQA. The query and output
# projections do not change; $W_K$ and $W_V$ shrink, and so does the KV cache.
#
# **Formula.** Per token, the cache holds one key and one value vector per K/V head per layer:
#
# $$
# \text{KV elements per token} = 2 \cdot n_{\text{layers}} \cdot H_{kv} \cdot d_{\text{head}},
# \qquad \text{bytes} = \text{elements} \times \text{tokens} \times \text{sequences} \times \text{bytes per element}.
# $$

# %% id="savings-table"
# NBVAL_CHECK_OUTPUT
n_layers, d_model, n_heads, context, fp16 = 32, 4096, 32, 4096, 2
d_head = d_model // n_heads
KiB, MiB, GiB = 2**10, 2**20, 2**30
rows = []
print(f"{'variant':<12} {'H_kv':>4} | {'attn params/layer':>17} {'all layers':>13} | "
      f"{'KV/token':>9} {'KV/sequence':>11} {'sequences in 40 GiB':>19}")
for name, n_kv in [("MHA", 32), ("GQA", 8), ("MQA", 1)]:
    params = attention_param_count(d_model, n_heads, n_kv)
    per_token = kv_cache_elements_per_token(n_layers, n_kv, d_head) * fp16  # bytes
    per_sequence = per_token * context  # bytes for one 4096-token sequence
    rows.append((name, params, per_sequence))
    print(f"{name:<12} {n_kv:>4} | {params:>17,} {params * n_layers:>13,} | "
          f"{per_token / KiB:>6g} KiB {per_sequence / MiB:>7g} MiB {40 * GiB // per_sequence:>19,}")
print("GQA's cache is", rows[0][2] // rows[1][2], "times smaller than MHA's; MQA's", rows[0][2] // rows[2][2], "times")
print(f"attention parameters saved by GQA: {1 - rows[1][1] / rows[0][1]:.1%} per layer")

# %% [markdown] id="savings-plot-text"
# The cache grows linearly with the context; the gap between the variants is a constant factor of
# $H / H_{kv}$ at every length. The horizontal line is the 13.5 GB (about 12.6 GiB) that
# Llama-2-7B's fp16 *weights* take.

# %% id="savings-plot"
contexts = [512, 1024, 2048, 4096, 8192, 16384, 32768]
fig, ax = plt.subplots(figsize=(7, 4))
for name, n_kv, marker in [("MHA (32 K/V heads)", 32, "o"), ("GQA (8)", 8, "s"), ("MQA (1)", 1, "^")]:
    per_token = kv_cache_elements_per_token(n_layers, n_kv, d_head) * fp16
    ax.plot(contexts, [per_token * c / GiB for c in contexts], marker + "-", label=name)
ax.axhline(6.74e9 * 2 / GiB, color="k", linestyle=":", label="Llama-2-7B weights, fp16")
ax.set(xscale="log", yscale="log", xlabel="tokens in the cache (one sequence)", ylabel="KV cache (GiB)",
       title="KV cache of a 32-layer, d_model 4096 decoder in fp16")
ax.legend()
plt.show()

# %% [markdown] id="savings-plot-caption"
# *What to see:* on log-log axes the three cache sizes are parallel lines (each grows linearly with
# the tokens); GQA's sits 4 times and MQA's 32 times below MHA's, and MHA's cache overtakes the size
# of the model's own fp16 weights (dotted) at the longest context.

# %% [markdown] id="savings-llm"
# **Does sharing hurt?** A little: the GQA paper reports quality close to MHA with speed close to
# MQA, and that an MHA checkpoint can be converted to GQA by *mean-pooling* the K/V heads of each
# group and briefly continuing training. That is why GQA with 8 K/V heads became a default for large
# open models.
#
# **Common mistake: using $H$ instead of $H_{kv}$ for the cache.** Counting one K and V per *query*
# head gives the MHA number for every variant and hides the saving; the exercise checks recognise it.

# %% [markdown] id="module"
# ## 8. The `MultiHeadAttention` module
#
# Later chapters build transformer blocks from `helpers.heads.MultiHeadAttention(d_model, n_heads,
# n_kv_heads=None)`: four bias-free `nn.Linear` layers named as in Llama (`q_proj`, `k_proj`, `v_proj`,
# `o_proj`), whose `forward(x, mask=None)` calls the functions of this chapter and returns
# `(out, weights)`.
#
# **Masks for heads.** The scores are `(B, H, T, T)`. A causal mask `(T, T)` broadcasts as it is. A
# padding mask from chapter 01 is `(B, 1, T)`: lined up against `(B, H, T, T)` from the right, its
# batch axis would land on the *head* axis, so it needs a head axis first, `mask[:, None]`, shape
# `(B, 1, 1, T)`. The helpers refuse the `(B, 1, T)` form with a message saying so.

# %% id="module-run"
# NBVAL_CHECK_OUTPUT
helpers.seed_everything(0)
attn = MultiHeadAttention(d_model=64, n_heads=8, n_kv_heads=2).to(device)
print(attn)
x = randn(2, 6, 64, seed=30)  # (B, T, d_model)
pad = padding_mask([6, 4], 6, device=device)  # (B, 1, T): sequence 1 has 2 padding tokens
mask = causal_mask(6, device=device) & pad[:, None]  # (T, T) & (B, 1, 1, T) -> (B, 1, T, T)
out, weights = attn(x, mask)
print("out", tuple(out.shape), "weights", tuple(weights.shape), "| mask", tuple(mask.shape))
print("parameters:", sum(p.numel() for p in attn.parameters()), "=", attention_param_count(64, 8, 2))
print("weight on padded keys of sequence 1:", weights[1, :, :, 4:].sum().item())
try:
    attn(x, pad)  # WRONG: (B, 1, T) without the head axis
except ValueError as error:
    print("(B, 1, T) mask refused:", str(error).split(";")[-1].strip())

# %% [markdown] id="mistakes"
# ## 9. Common mistakes
#
# Every wrong version below runs without an error and most keep the right shapes; that is what makes
# them dangerous. The exercise checks recognise each one and name it. Two remain to be run (the others
# ran in their sections): scaling by $\sqrt{d_{\text{model}}}$ instead of $\sqrt{d_{\text{head}}}$, and
# returning head-averaged weights.
#
# **Scaling by $\sqrt{d_{\text{model}}}$.** The scale belongs to the width of the vectors being
# compared, one head's $d_{\text{head}}$. Dividing by $\sqrt{d_{\text{model}}} = \sqrt{H}\sqrt{d_{\text{head}}}$
# shrinks every score by $\sqrt{H}$ and flattens the attention: the entropy of the rows goes up.

# %% id="mistake-scale-run"
# NBVAL_CHECK_OUTPUT
B, T, H, d_head = 1, 8, 16, 8
d_model = H * d_head
x = randn(B, T, d_model, seed=40, dtype=torch.float64)
w_q, w_k, w_v, w_o = (randn(d_model, d_model, seed=41 + i, dtype=torch.float64, scale=d_model ** -0.5 * 2)
                      for i in range(4))
_, right_w = multi_head_attention(x, w_q, w_k, w_v, w_o, H)  # (B, H, T, T)
q, k = split_heads(x @ w_q.T, H), split_heads(x @ w_k.T, H)  # (B, H, T, d_head)
wrong_w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d_model), dim=-1)  # WRONG: sqrt(d_model)
entropy = lambda w: torch.special.entr(w).sum(dim=-1).mean().item()
print(f"mean row entropy: right {entropy(right_w):.3f}, sqrt(d_model) {entropy(wrong_w):.3f}, "
      f"uniform {math.log(T):.3f}")
print(f"mean largest weight: right {right_w.amax(dim=-1).mean().item():.3f}, "
      f"sqrt(d_model) {wrong_w.amax(dim=-1).mean().item():.3f}")

# %% [markdown] id="mistake-averaged"
# **Returning head-averaged weights.** `weights.mean(dim=1)` is what `nn.MultiheadAttention` returns
# by default, shape `(B, T, T)`. Code downstream that expects `(B, H, T, T)` (per-head heatmaps,
# the entropy per head of chapter 09, pruning a head) either breaks or silently reads the average.

# %% id="mistake-averaged-run"
# NBVAL_CHECK_OUTPUT
averaged = right_w.mean(dim=1)  # (B, T, T)  WRONG for this course's functions
print("per head", tuple(right_w.shape), "| averaged", tuple(averaged.shape))
per_head_entropy = torch.special.entr(right_w).sum(dim=-1).mean(dim=-1)[0]  # (H,)
print("entropy per head ranges", round(per_head_entropy.min().item(), 2), "to", round(per_head_entropy.max().item(), 2),
      "| the average map's entropy:", round(torch.special.entr(averaged).sum(dim=-1).mean().item(), 2))

# %% [markdown] id="mistakes-summary"
# | mistake | symptom you can print | the fix | section |
# |---|---|---|---|
# | `x.reshape(B, H, T, d_head)` | right shape, a "head" holds several tokens | `view(B, T, H, d_head).transpose(1, 2)` | 2 |
# | heads split along the wrong axis | head $h$ holds features $h, h+H, \dots$ | view the features as `(H, d_head)` | checks |
# | `.view` after `transpose` | RuntimeError: view size is not compatible | `.reshape` or `.contiguous().view` | 2 |
# | no output projection | output block $h$ depends on head $h$ only | `merged @ W_O.T` | 3 |
# | `h % H_kv` K/V pairing on Llama-layout weights | other outputs than `enable_gqa`; hidden when $H_{kv} \in \{1, H\}$ | `repeat_interleave` (the stored layout) | 6 |
# | $\sqrt{d_{\text{model}}}$ scale | flatter rows, higher entropy | $\sqrt{d_{\text{head}}}$ | 9 |
# | head-averaged weights | `(B, T, T)` instead of `(B, H, T, T)` | `average_attn_weights=False` | 1, 9 |
# | `nn.MultiheadAttention` mask passed unconverted | tokens read the future, not the past | `~mask` | 1 |
# | padding mask `(B, 1, T)` against `(B, H, T, T)` | batch lined up with heads | `mask[:, None]` | 8 |
# | $H$ instead of $H_{kv}$ in the cache size | no saving from GQA | count K/V heads | 7 |

# %% [markdown] id="self-check"
# ## 10. Self-check
#
# **Q1.** $d_{\text{model}} = 1024$, $H = 16$. What is $d_{\text{head}}$, the shape of `q` after
# `split_heads` for $B = 2$, $T = 50$, and by what is each score divided?
#
# <details><summary>Answer</summary>
#
# $d_{\text{head}} = 64$; `q` is `(2, 16, 50, 64)`; scores are divided by $\sqrt{64} = 8$.
# </details>
#
# **Q2.** Why does `x.reshape(B, H, T, d_head)` run without an error, and what is in its "head 0"?
#
# <details><summary>Answer</summary>
#
# It has the same number of elements as `x`, and a reshape keeps memory order (token by token). Its
# head 0 is the first $T / H$ tokens' full feature vectors cut into rows, not feature block 0 of every token.
# </details>
#
# **Q3.** How many parameters do the attention projections of one GPT-2 small layer have, with biases?
#
# <details><summary>Answer</summary>
#
# $4 \cdot 768^2 + 4 \cdot 768 = 2{,}362{,}368$, the same whether there are 1 or 12 heads.
# </details>
#
# **Q4.** With $H = 8$ and $H_{kv} = 2$, which K/V heads do query heads 1 and 5 read? And with the
# `h % H_kv` pairing? Why is that pairing wrong for a Llama checkpoint, when it is not a worse design?
#
# <details><summary>Answer</summary>
#
# Right: $1 // (8/2) = 0$ and $5 // 4 = 1$. Wrong: $1 \bmod 2 = 1$ and $5 \bmod 2 = 1$. Head 5 agrees
# by coincidence, head 1 does not: compare the whole mapping, `[0, 0, 0, 0, 1, 1, 1, 1]` against
# `[0, 1, 0, 1, 0, 1, 0, 1]`. A model trained with the modulo pairing would work as well, but a
# checkpoint's weights were trained with the consecutive grouping (Llama's `repeat_kv`), so reading
# them with the other pairing matches query heads with K/V heads they never met in training.
# </details>
#
# **Q5.** What does `nn.MultiheadAttention` return as attention weights by default, and how do you get
# one pattern per head?
#
# <details><summary>Answer</summary>
#
# The average over heads, `(B, T, T)`. Pass `need_weights=True, average_attn_weights=False` for
# `(B, H, T, T)`.
# </details>
#
# **Q6.** A 32-layer model with $d_{\text{head}} = 128$ moves from 32 to 8 K/V heads. By what factor
# does the KV cache shrink, and what happens to the $W_Q$ and $W_O$ parameters?
#
# <details><summary>Answer</summary>
#
# By $32 / 8 = 4$ (2 GiB → 512 MiB for one 4096-token fp16 sequence). $W_Q$ and $W_O$ do not change:
# GQA keeps every query head.
# </details>
#
# **Q7.** You have a padding mask of shape `(B, 1, T)` and per-head scores `(B, H, T, T)`. What goes
# wrong if you apply it as it is when $B = H$?
#
# <details><summary>Answer</summary>
#
# Broadcasting aligns shapes from the right, so the mask's batch axis lines up with the head axis:
# head $h$ of every sequence uses sequence $h$'s padding. No error is raised. Use `mask[:, None]`.
# </details>

# %% [markdown] id="evidence-card"
# ## Evidence card
#
# What you can now show, and the cell that shows it (cells marked `# NBVAL_CHECK_OUTPUT` are checked
# by the test suite):
#
# | you can show | where |
# |---|---|
# | `nn.MultiheadAttention` keeps `(B, T, d_model)`; its default weights are the head average | §1, `first-loop-shapes`, `first-loop-per-head` |
# | its bool masks mean the opposite of ours | §1, `first-loop-mask-run` |
# | `d_head = d_model / H`; one `T x T` score matrix per head (768 / 12 = 64, 128 x 128) | §2, `split-gpt2` |
# | split and merge are inverses; reshape without transpose is a different tensor | §2, `split-tiny`, `split-mistake-run` |
# | concat + $W_O$ is a sum of per-head contributions; equals `nn.MultiheadAttention` | §3, `heads-example`, `heads-torch` |
# | without $W_O$ the heads never mix | §3, `heads-mistake-run` |
# | attention parameters are $4 d_{\text{model}}^2$ whatever $H$ is | §4, `cost-table`, `cost-torch-run` |
# | two heads in one layer doing different jobs, and an average that hides both | §5, `specialize-build`, `specialize-plot` |
# | the per-head formula, one head at a time, equals the one call; the head patterns asserted | §5, `specialize-formula` |
# | the GQA mapping $h // (H/H_{kv})$, equal to torch's `enable_gqa`; `h % H_kv` is not | §6, `gqa-mapping`, `gqa-check`, `gqa-mistake-run` |
# | Llama's `repeat_kv` is `repeat_interleave`; `h % H_kv` is as expressive but misreads stored weights | §6, `gqa-layout-run` |
# | `.view` fails after a transpose; `.contiguous().view` and `.reshape` work | §2, `split-shapes` |
# | reading `(out, in)` weight blocks: a previous-token head built from named pieces | §5, `specialize-build` |
# | parameters and KV-cache bytes of MHA, GQA and MQA at Llama-2-7B size | §7, `savings-table`, `savings-plot` |
# | the module later chapters use, and masks with a head axis | §8, `module-run` |

# %% [markdown] id="next"
# ## Next: the exercises
#
# Open [`exercises/02_heads/02_heads.ipynb`](../exercises/02_heads/02_heads.ipynb). You will write
# `split_heads`, `merge_heads`, `multi_head_attention` (matching `nn.MultiheadAttention`) and
# `grouped_query_attention`, count the parameters of the four projections, and compute the KV-cache
# saving of GQA and MQA at a real model size.
