# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] id="intro"
# # Chapter 01: scaled dot-product attention
#
# Every token in a sequence enters a transformer block as its own vector. **Attention is the step
# where a token reads the other tokens**: from the vectors themselves it works out how relevant
# each position is, turns those relevances into weights that add up to one, and takes the
# weighted average of what the positions have to offer. It is the only place in a block where
# information moves *between* positions; the feed-forward network (chapter 03) works on each
# position by itself.
#
# The whole chapter is one line of algebra:
#
# $$
# \operatorname{Attention}(Q, K, V) = \operatorname{softmax}\!\left(\frac{QK^\top}{\sqrt{d_k}}\right) V
# $$
#
# **The shape contract.** Leading axes (batch `B`, heads `H`) ride along untouched; attention
# only ever looks at the last two axes.
#
# | tensor | shape | what a row is |
# |---|---|---|
# | hidden states $X$ | `(T, d_model)` | one token |
# | queries $Q$ | `(T_q, d_k)` | what one position is looking for |
# | keys $K$ | `(T_k, d_k)` | what one position offers to be matched on |
# | values $V$ | `(T_k, d_v)` | what one position hands over |
# | scores $S$ | `(T_q, T_k)` | one query compared with every key |
# | mask $M$ (bool) | broadcasts to `(T_q, T_k)` | which keys that query may read (`True` = allow) |
# | weights $A$ | `(T_q, T_k)` | a probability distribution over the keys |
# | output $O$ | `(T_q, d_v)` | the mixture that query receives |
#
# **Map of this notebook.**
#
# 1. Queries, keys and values: three projections of the same hidden states
# 2. The score matrix: every query against every key; why a dot product (the Gaussian-kernel
#    view) and the score functions it replaced (additive, bilinear)
# 3. Why divide by $\sqrt{d_k}$: measured, not asserted, also at a real layer's initialisation
# 4. Masking: causal, right- and left-padding masks, and the row with nothing to attend to
# 5. Attention weights: the softmax over keys, where `exp` overflows and why shifting by the
#    maximum is exact, and heatmaps that mean something
# 6. Weighted values: the output is an average of value rows
# 7. The whole thing, checked against `torch.nn.functional.scaled_dot_product_attention`
# 8. The causal property: the future cannot leak into the past
# 9. Sizes in a real LLM: what the score matrix costs in memory and in FLOPs
# 10. Common mistakes, each one run next to the right version
# 11. Self-check, evidence card, and the exercises
#
# Every subtopic follows the same pattern: the idea in plain words, the formula, a worked example
# with real numbers, an implementation check (shapes first, then code), where it shows up in real
# models, and a common mistake run beside the right version. Cells that start with
# `# NBVAL_CHECK_OUTPUT` are claims: the test suite re-runs the notebook and fails if their output
# ever changes.

# %% id="setup"
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import helpers
from helpers.attention import (
    apply_mask,
    attention_scores,
    causal_mask,
    masked_softmax,
    padding_mask,
    scaled_dot_product_attention,
)
from helpers.plots import attention_heatmap, mask_grid

helpers.seed_everything(0)
device = helpers.get_device()
print("computing on:", device.type)


def randn(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard-normal numbers drawn on the CPU from their own seed, then moved to `device`.

    A GPU's random generator gives different numbers than the CPU's for the same seed; drawing on
    the CPU gives every machine the same inputs, so the printed results agree everywhere.
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=dtype).to(device)


def show(t: torch.Tensor, digits: int = 4) -> list:
    """A tensor as plain nested lists of rounded floats: no device, no dtype, no -0.0."""
    return (torch.round(t.detach().double().cpu(), decimals=digits) + 0.0).tolist()


def print_rows(name: str, t: torch.Tensor, digits: int = 4) -> None:
    print(f"{name} {tuple(t.shape)}:")
    for row in show(t, digits):
        print("   ", row)

# %% [markdown] id="qkv"
# ## 1. Queries, keys and values
#
# **Main idea.** Each token's hidden state is used in three roles. As a **query** it describes what
# this position is looking for. As a **key** it advertises what this position contains, so that other
# queries can match against it. As a **value** it is the content this position hands over once it
# has been matched. One vector cannot be good at all three jobs at once, so each role gets its own
# learned linear map of the same hidden state: the model learns separately *what to match on* and
# *what to pass along*.
#
# **Formula.** With hidden states $X \in \mathbb{R}^{T \times d_{\text{model}}}$ (one row per token):
#
# $$
# Q = X W_Q^\top, \qquad K = X W_K^\top, \qquad V = X W_V^\top,
# $$
#
# where $W_Q, W_K \in \mathbb{R}^{d_k \times d_{\text{model}}}$ and
# $W_V \in \mathbb{R}^{d_v \times d_{\text{model}}}$. The weights are stored the way
# `torch.nn.Linear` stores them, `(out_features, in_features)`, which is why they appear
# transposed. Queries and keys must share the width $d_k$ (they are compared by a dot product);
# values may have a different width $d_v$.
#
# **Worked example.** Three tokens with $d_{\text{model}} = 4$, projected to $d_k = d_v = 2$. Small
# integers, so you can redo every entry by hand: entry $(t, c)$ of $Q$ is the dot product of token
# $t$'s row of $X$ with row $c$ of $W_Q$.

# %% id="qkv-example"
# NBVAL_CHECK_OUTPUT
X = torch.tensor([[1., 0., 2., 0.],
                  [0., 1., 0., 1.],
                  [1., 1., 0., 0.]], device=device)  # (T, d_model) = (3, 4)
W_Q = torch.tensor([[1., 0., 0., 0.],
                    [0., 0., 1., 1.]], device=device)  # (d_k, d_model) = (2, 4)
W_K = torch.tensor([[0., 1., 0., 0.],
                    [1., 0., 1., 0.]], device=device)  # (d_k, d_model) = (2, 4)
W_V = torch.tensor([[1., 0., 1., 0.],
                    [0., 1., 0., 2.]], device=device)  # (d_v, d_model) = (2, 4)

Q = X @ W_Q.T  # (T, d_k) = (3, 2)
K = X @ W_K.T  # (T, d_k) = (3, 2)
V = X @ W_V.T  # (T, d_v) = (3, 2)
print_rows("Q", Q, 1)
print_rows("K", K, 1)
print_rows("V", V, 1)

# %% [markdown] id="qkv-check"
# Read row 0 of $Q$: token 0 is $x_0 = [1, 0, 2, 0]$; its dot product with $W_Q$'s first row
# $[1, 0, 0, 0]$ is 1 and with the second row $[0, 0, 1, 1]$ is 2, so $q_0 = [1, 2]$.
#
# **Implementation check.** Write the shapes before the code. With a batch of $B = 2$ sequences of
# $T = 5$ tokens, $d_{\text{model}} = 16$, $d_k = 8$ and $d_v = 12$ (all different on purpose, so a
# swapped axis cannot hide):
#
# - `x`: `(B, T, d_model)` = `(2, 5, 16)`
# - `W_Q`, `W_K`: `(d_k, d_model)` = `(8, 16)`; `W_V`: `(d_v, d_model)` = `(12, 16)`
# - `q`, `k`: `(B, T, d_k)` = `(2, 5, 8)`; `v`: `(B, T, d_v)` = `(2, 5, 12)`
#
# `x @ W.T` acts on the last axis only, so the batch axis comes along for free, and it is exactly
# what a bias-free `torch.nn.Linear` layer computes.

# %% id="qkv-shapes"
# NBVAL_CHECK_OUTPUT
B, T, d_model, d_k, d_v = 2, 5, 16, 8, 12
x = randn(B, T, d_model, seed=1)  # (B, T, d_model)
proj_q = torch.nn.Linear(d_model, d_k, bias=False).to(device)  # weight (d_k, d_model)
proj_k = torch.nn.Linear(d_model, d_k, bias=False).to(device)  # weight (d_k, d_model)
proj_v = torch.nn.Linear(d_model, d_v, bias=False).to(device)  # weight (d_v, d_model)

q = x @ proj_q.weight.T  # (B, T, d_k)
k = x @ proj_k.weight.T  # (B, T, d_k)
v = x @ proj_v.weight.T  # (B, T, d_v)
print("W_Q", tuple(proj_q.weight.shape), " W_V", tuple(proj_v.weight.shape))
print("q", tuple(q.shape), " k", tuple(k.shape), " v", tuple(v.shape))
print("x @ W.T is what nn.Linear computes:", torch.allclose(q, proj_q(x), atol=1e-6))

# %% [markdown] id="qkv-llm"
# **In real LLMs.** GPT-2 small has $d_{\text{model}} = 768$; the query projection for all 12 heads
# together is one $768 \to 768$ map (each head then takes its own 64 columns, chapter 02). GPT-2
# and nanoGPT fuse the three projections into one $768 \to 2304$ map and split its output into
# $Q$, $K$ and $V$ (nanoGPT's fused `nn.Linear` weight has shape `(2304, 768)`); Llama-family models
# keep separate `q_proj`, `k_proj`, `v_proj` layers without biases. Same arithmetic either way.
#
# **Common mistake: multiplying by $W$ instead of $W^\top$.** With the `nn.Linear` layout, `x @ W`
# is wrong. When $d_k \ne d_{\text{model}}$ torch refuses the product, which is the lucky case; when
# the weight happens to be square (as it is for the full 768-wide projection in GPT-2) the product
# runs and silently returns other numbers. The trap is real: the original GPT-2 checkpoints store
# their projections as `(in_features, out_features)`, the transpose of `nn.Linear`'s layout, so
# code that loads them into `nn.Linear` layers (nanoGPT's `from_pretrained`, for one) has to
# transpose them first.

# %% id="qkv-mistake"
# NBVAL_CHECK_OUTPUT
W_square = randn(4, 4, seed=2)  # (d_k, d_model) = (4, 4): a square weight
right = X @ W_square.T  # (3, 4)
wrong = X @ W_square  # (3, 4)  WRONG: treats the rows of W as its columns
print("square W: same shape", tuple(wrong.shape) == tuple(right.shape),
      "| same numbers", torch.allclose(wrong, right))
try:
    X @ W_Q  # (3, 4) @ (2, 4)  WRONG: the inner sizes 4 and 2 do not match
except RuntimeError:
    print("non-square W: RuntimeError, the product is refused")

# %% [markdown] id="scores"
# ## 2. The score matrix
#
# **Main idea.** To decide how much query $i$ should take from position $j$, compare the two
# vectors with a dot product: it is large when they point the same way and negative when they point
# apart. Doing that for every (query, key) pair at once is a single matrix product. The result has
# **one row per query and one column per key**; row $i$ is "how well does each key answer query $i$".
#
# **Formula.**
#
# $$
# S = \frac{QK^\top}{\sqrt{d_k}} \in \mathbb{R}^{T_q \times T_k}, \qquad
# S_{ij} = \frac{q_i \cdot k_j}{\sqrt{d_k}} = \frac{1}{\sqrt{d_k}} \sum_{c=1}^{d_k} Q_{ic} K_{jc}
# $$
#
# (Section 3 explains the $\sqrt{d_k}$.)
#
# **Worked example.** The scores of the three tokens from section 1, once with the double loop that
# the formula spells out and once with `helpers.attention.attention_scores`. Before scaling, query
# $q_0 = [1, 2]$ against key $k_0 = [0, 3]$ gives $0 + 6 = 6$, and $6 / \sqrt 2 \approx 4.2426$.

# %% id="scores-example"
# NBVAL_CHECK_OUTPUT
T_q, T_k, d_k = Q.shape[0], K.shape[0], Q.shape[1]
S_loop = torch.zeros(T_q, T_k, device=device)  # (T_q, T_k) = (3, 3)
for i in range(T_q):
    for j in range(T_k):
        S_loop[i, j] = sum(Q[i, c] * K[j, c] for c in range(d_k)) / math.sqrt(d_k)

S = attention_scores(Q, K)  # (T_q, T_k) = (3, 3)
print_rows("S", S)
print("loop and matrix product agree:", torch.allclose(S_loop, S))

# %% [markdown] id="scores-check"
# **Implementation check.** Queries and keys may come from sequences of different lengths (in
# cross-attention they do), so use $T_q = 3$, $T_k = 5$, $d_k = 8$:
#
# - `q`: `(B, T_q, d_k)` = `(2, 3, 8)`, `k`: `(B, T_k, d_k)` = `(2, 5, 8)`
# - `k.transpose(-2, -1)`: `(B, d_k, T_k)` = `(2, 8, 5)`; transpose the last two axes only, never
#   `k.T`, which would also reverse the batch axis
# - `scores`: `(B, T_q, T_k)` = `(2, 3, 5)`

# %% id="scores-shapes"
# NBVAL_CHECK_OUTPUT
q = randn(2, 3, 8, seed=3)  # (B, T_q, d_k)
k = randn(2, 5, 8, seed=4)  # (B, T_k, d_k)
k_t = k.transpose(-2, -1)  # (B, d_k, T_k)
scores = q @ k_t / math.sqrt(q.shape[-1])  # (B, T_q, T_k)
print("k^T", tuple(k_t.shape), "-> scores", tuple(scores.shape))
print("same as helpers.attention.attention_scores:", torch.allclose(scores, attention_scores(q, k), atol=1e-6))

# %% [markdown] id="scores-llm"
# **In real LLMs.** Every layer computes one score matrix per head per sequence. In a decoder's
# self-attention $T_q = T_k$ = the sequence length. In the cross-attention of an encoder-decoder
# model (T5, Whisper; chapter 05) the queries come from the output being written and the keys from
# the encoded input, so the matrix is rectangular. During generation with a KV cache (chapter 07)
# only the newest token asks a question: $T_q = 1$ row against all cached keys.
#
# **Common mistake: the product in the wrong order.** `k @ q.transpose(-2, -1)` produces the
# transpose, one row per *key*. With $T_q \ne T_k$ the shape gives it away; in self-attention
# ($T_q = T_k$) the shape looks fine and only the numbers are wrong. The softmax that follows then
# normalises over queries instead of keys.

# %% id="scores-mistake"
# NBVAL_CHECK_OUTPUT
wrong = k @ q.transpose(-2, -1) / math.sqrt(8)  # (B, T_k, T_q)  WRONG: rows are keys
print("rectangular: right", tuple(scores.shape), "wrong", tuple(wrong.shape))

q_sq, k_sq = randn(2, 4, 8, seed=5), randn(2, 4, 8, seed=6)  # (B, T, d_k) each, T_q = T_k = 4
right_sq = attention_scores(q_sq, k_sq)  # (B, T, T)
wrong_sq = k_sq @ q_sq.transpose(-2, -1) / math.sqrt(8)  # (B, T, T)  WRONG
print("square: same shape", wrong_sq.shape == right_sq.shape,
      "| same numbers", torch.allclose(wrong_sq, right_sq),
      "| it is the transpose", torch.allclose(wrong_sq, right_sq.transpose(-2, -1), atol=1e-6))

# %% [markdown] id="scores-kernel"
# ### Why a dot product: the Gaussian-kernel view
#
# **Main idea.** A natural way to say "key $j$ is relevant to query $i$" is "key $j$ is *close* to
# query $i$": weight each key by a Gaussian of its distance, $w_j \propto e^{-\frac12\|q - k_j\|^2}$,
# a kernel smoother. Expanding the square shows how close that is to the dot product:
#
# $$
# -\tfrac12 \|q - k\|^2 = q^\top k - \tfrac12 \|q\|^2 - \tfrac12 \|k\|^2 .
# $$
#
# Put that into a softmax over the keys. The term $-\frac12\|q\|^2$ is the same for every key of
# the row, a constant shift, so it **cancels** (section 5 shows the algebra of shifts). The term
# $-\frac12\|k_j\|^2$ changes from key to key and **does not cancel**:
#
# $$
# \operatorname{softmax}_j\!\big(-\tfrac12 \|q - k_j\|^2\big) = \operatorname{softmax}_j\!\big(q^\top k_j - \tfrac12 \|k_j\|^2\big),
# $$
#
# so dot-product attention equals Gaussian-kernel weighting **exactly when all keys have the same
# norm**. Otherwise the dot product favours long keys: a key twice as long scores twice as high,
# however far it points from the query. (With the $1/\sqrt{d_k}$ scale, the same identity holds
# with the kernel $e^{-\|q-k\|^2 / (2\sqrt{d_k})}$.) This reading of attention as a kernel
# smoother is worked out in Tsai et al. (2019), *Transformer Dissection*.
#
# **Worked example.** $q = [1, 0]$ and two keys: $k_0 = [1, 0]$ (the query itself) and
# $k_1 = [3, 0]$ (same direction, three times longer). Dot products $[1, 3]$ prefer $k_1$;
# distances $[0, 2]$ prefer $k_0$. Subtracting $\frac12\|k_j\|^2 = [0.5, 4.5]$ from the dot
# products gives $[0.5, -1.5]$, which ranks the keys like the distances do.

# %% id="scores-kernel-example"
# NBVAL_CHECK_OUTPUT
q_kern = torch.tensor([1., 0.], device=device)  # (d_k,)
k_kern = torch.tensor([[1., 0.], [3., 0.]], device=device)  # (T_k, d_k)
dots = k_kern @ q_kern  # (T_k,): q . k_j
neg_half_sq_dist = -0.5 * ((q_kern - k_kern) ** 2).sum(dim=-1)  # (T_k,): -1/2 |q - k_j|^2
key_term = 0.5 * (k_kern ** 2).sum(dim=-1)  # (T_k,): 1/2 |k_j|^2
print("q.k_j:", show(dots, 3), "-> softmax", show(torch.softmax(dots, dim=-1), 3))
print("-1/2 |q - k_j|^2:", show(neg_half_sq_dist, 3), "-> softmax", show(torch.softmax(neg_half_sq_dist, dim=-1), 3))
print("q.k_j - 1/2 |q|^2 - 1/2 |k_j|^2:", show(dots - 0.5 * q_kern @ q_kern - key_term, 3))
print("q.k_j - 1/2 |k_j|^2:", show(dots - key_term, 3), "-> softmax", show(torch.softmax(dots - key_term, dim=-1), 3))

# %% [markdown] id="scores-kernel-check"
# **Checked on random vectors** ($T_q = 4$ queries, $T_k = 6$ keys, $d_k = 8$, `float64`): the
# expansion holds for every pair; the Gaussian weights equal the softmax of $q^\top k - \frac12\|k\|^2$
# (the query's norm cancelled); they differ from plain dot-product weights while the key norms
# differ; and once every key is rescaled to the same norm, the two agree, with and without the
# $1/\sqrt{d_k}$ scale.

# %% id="scores-kernel-run"
# NBVAL_CHECK_OUTPUT
q_r = randn(4, 8, seed=60, dtype=torch.float64)  # (T_q, d_k)
k_r = randn(6, 8, seed=61, dtype=torch.float64)  # (T_k, d_k)
sq_dist = torch.cdist(q_r, k_r) ** 2  # (T_q, T_k): |q_i - k_j|^2
q_sq, k_sq = (q_r ** 2).sum(-1), (k_r ** 2).sum(-1)  # (T_q,), (T_k,)
print("-1/2|q-k|^2 = q.k - 1/2|q|^2 - 1/2|k|^2 for all pairs:",
      torch.allclose(-0.5 * sq_dist, q_r @ k_r.T - 0.5 * q_sq[:, None] - 0.5 * k_sq[None, :]))
gauss = torch.softmax(-0.5 * sq_dist, dim=-1)  # (T_q, T_k): Gaussian-kernel weights
print("Gaussian weights = softmax(q.k - 1/2|k|^2), |q|^2 cancelled:",
      torch.allclose(gauss, torch.softmax(q_r @ k_r.T - 0.5 * k_sq[None, :], dim=-1)))
print("key norms:", show(k_sq.sqrt(), 2))
print("Gaussian weights = softmax(q.k) with these keys:", torch.allclose(gauss, torch.softmax(q_r @ k_r.T, dim=-1)),
      "| largest difference in a weight:", round((gauss - torch.softmax(q_r @ k_r.T, dim=-1)).abs().max().item(), 2))
k_eq = k_r / k_r.norm(dim=-1, keepdim=True) * 2.5  # (T_k, d_k): every key rescaled to norm 2.5
print("keys rescaled to one norm, Gaussian = softmax(q.k):",
      torch.allclose(torch.softmax(-0.5 * torch.cdist(q_r, k_eq) ** 2, dim=-1), torch.softmax(q_r @ k_eq.T, dim=-1)))
tau = math.sqrt(8)  # the 1/sqrt(d_k) scale is a kernel width
print("and with the scale, exp(-|q-k|^2 / (2 sqrt d_k)) = softmax(q.k / sqrt d_k):",
      torch.allclose(torch.softmax(-torch.cdist(q_r, k_eq) ** 2 / (2 * tau), dim=-1), torch.softmax(q_r @ k_eq.T / tau, dim=-1)))

# %% [markdown] id="scores-kernel-llm"
# **In real LLMs.** Scores are plain scaled dot products, so a key's norm acts as a per-key bias:
# nothing forces keys to the same length. Some models normalise queries and keys before the
# product, which brings the dot product back to a comparison of directions: Swin Transformer V2
# uses cosine similarity (unit-norm $q$ and $k$, a learned temperature), and OLMo 2 applies
# RMSNorm to queries and keys ("QK-norm") to keep the scores from growing during training.
#
# **Common mistake: reading the score as a distance.** A high score means "aligned and long", not
# "close": in the worked example the query's own copy $k_0$ loses to a longer key $k_1$.

# %% [markdown] id="scores-alternatives"
# ### Other score functions: additive and bilinear
#
# **Main idea.** The dot product is one choice of score function among several that came before it.
#
# | score $s(q, k)$ | name | source |
# |---|---|---|
# | $v^\top \tanh(W_q q + W_k k)$ | additive | Bahdanau et al. (2015) |
# | $q^\top M k$ | bilinear ("general", multiplicative) | Luong et al. (2015) |
# | $q^\top k$, then $/\sqrt{d_k}$ | (scaled) dot product | Luong et al. (2015); Vaswani et al. (2017) |
#
# Additive attention scores each pair with a small one-hidden-layer network: for $T_q \times T_k$
# pairs it builds a $(T_q, T_k, d_a)$ tensor of hidden units before reducing it, where the dot
# product is one matrix multiply. Vaswani et al. (2017) note that without scaling, additive
# attention did better than dot-product attention at large $d_k$, which is what the
# $1/\sqrt{d_k}$ of section 3 repairs.
#
# The bilinear form is closer to the transformer than it looks. On hidden states, the score of
# tokens $i$ and $j$ is
#
# $$
# q_i^\top k_j = (W_Q x_i)^\top (W_K x_j) = x_i^\top \big(W_Q^\top W_K\big)\, x_j ,
# $$
#
# a bilinear form with $M = W_Q^\top W_K$, a $d_{\text{model}} \times d_{\text{model}}$ matrix of rank at
# most $d_k$, stored as two thin factors. The projections learn $M$; the dot product just evaluates it.
#
# **Worked example.** Section 1's three tokens: the bilinear form with $M = W_Q^\top W_K$ gives
# the same (unscaled) scores as $QK^\top$, and $M$ has rank 2 = $d_k$. Then additive scores for the
# same tokens with small random $W_q$, $W_k$ (hidden width $d_a = 3$) and $v$, once with a loop
# and once through the $(T_q, T_k, d_a)$ tensor; and what a full $M$ would cost for one GPT-2 head.

# %% id="scores-alternatives-run"
# NBVAL_CHECK_OUTPUT
from helpers.numerics import tolerances

M = W_Q.T @ W_K  # (d_model, d_model) = (4, 4): the bilinear form the projections learn
print_rows("M = W_Q^T W_K", M, 1)
print("rank of M:", torch.linalg.matrix_rank(M).item(), "| d_k:", W_Q.shape[0])
print("X M X^T equals Q K^T:", torch.allclose(X @ M @ X.T, Q @ K.T))

d_a = 3
W_a_q = randn(d_a, 2, seed=62, dtype=torch.float64)  # (d_a, d_k)
W_a_k = randn(d_a, 2, seed=63, dtype=torch.float64)  # (d_a, d_k)
v_a = randn(d_a, seed=64, dtype=torch.float64)  # (d_a,)
Q64, K64 = Q.double(), K.double()  # (T, d_k) each
hidden = torch.tanh((Q64 @ W_a_q.T)[:, None, :] + (K64 @ W_a_k.T)[None, :, :])  # (T_q, T_k, d_a)
additive = hidden @ v_a  # (T_q, T_k)
additive_loop = torch.tensor([[v_a @ torch.tanh(W_a_q @ Q64[i] + W_a_k @ K64[j]) for j in range(3)]
                              for i in range(3)], device=device)  # (T_q, T_k)
print("additive: hidden units", tuple(hidden.shape), "-> scores", tuple(additive.shape),
      "| loop agrees:", torch.allclose(additive, additive_loop))
print_rows("additive scores", additive, 3)



def symmetric(A: torch.Tensor) -> bool:
    """A equals its transpose up to rounding (entry (i, j) and (j, i) may be summed in another order)."""
    return torch.allclose(A, A.T, **tolerances(A.dtype, n=X.shape[-1], scale=A.abs().max().item()))


print("M symmetric:", symmetric(M), "| scores Q K^T symmetric:", symmetric(Q @ K.T),
      "| X X^T (no projections) symmetric:", symmetric(X @ X.T))

d_model_gpt2, d_head_gpt2 = 768, 64
print(f"one GPT-2 head: a full M has {d_model_gpt2 ** 2:,} entries; W_Q and W_K for the head have "
      f"{2 * d_head_gpt2 * d_model_gpt2:,}")

# %% [markdown] id="scores-alternatives-llm"
# **In real LLMs.** Every GPT-style and Llama-style model uses the scaled dot product; additive
# attention belongs to the recurrent translation models of 2015. The bilinear reading survives in
# interpretability work, which studies each head's $W_Q^\top W_K$ as one matrix (the "QK circuit"
# of Elhage et al., 2021, *A Mathematical Framework for Transformer Circuits*).
#
# **Common mistake: assuming scores are symmetric.** $M = W_Q^\top W_K$ is not a symmetric matrix
# (queries and keys have their own projections), so how much token $i$ wants to read token $j$ is
# not how much $j$ wants to read $i$: $S \ne S^\top$. Only without projections ($M = I$, the score
# $x_i^\top x_j$) would it be symmetric, and "sat" could never look for its subject without the
# subject looking back just as hard. The cell above checks it.

# %% [markdown] id="scaling"
# ## 3. Why divide by $\sqrt{d_k}$
#
# **Main idea.** Suppose the entries of a query and a key are independent, with mean 0 and
# variance 1. Their dot product adds up $d_k$ such products, so its **variance** is $d_k$ and its
# **standard deviation**, the typical distance of a score from 0, is $\sqrt{d_k}$: when
# $d_k = 1024$ the variance is 1024 and the scores spread about 32 either side of zero. A softmax
# over numbers that far apart puts almost all the weight on the largest one. Attention turns into
# a hard "pick one key", and the gradient through the softmax nearly vanishes, so the model cannot
# learn to spread its attention. Dividing by $\sqrt{d_k}$ removes the growth with the width: the
# variance of the scaled score no longer depends on $d_k$.
#
# Unit variance is a modelling assumption, not what a fresh layer gives: the cell after the
# measurement below shows that `nn.Linear`'s default initialisation and GPT-2's
# $\mathcal N(0, 0.02^2)$ both give queries and keys a variance of about $1/3$. What the argument
# needs is only that the variance of $q \cdot k$ grows in proportion to $d_k$, and that holds for
# any per-entry variance.
#
# **Formula.** For independent zero-mean, unit-variance entries,
#
# $$
# \operatorname{Var}(q \cdot k) = \sum_{c=1}^{d_k} \operatorname{Var}(q_c k_c)
#   = \sum_{c=1}^{d_k} \mathbb{E}[q_c^2]\,\mathbb{E}[k_c^2] = d_k,
# \qquad
# \operatorname{Var}\!\left(\frac{q \cdot k}{\sqrt{d_k}}\right) = \frac{d_k}{d_k} = 1 .
# $$
#
# **Worked example.** Multiplying scores by a constant sharpens the softmax. The scores $[1, 2, 3]$
# give a soft distribution; the same scores times 8 (which is what forgetting the scale does when
# $d_k = 64$, since $\sqrt{64} = 8$) give nearly all the weight to the last key.

# %% id="scaling-example"
# NBVAL_CHECK_OUTPUT
row = torch.tensor([1., 2., 3.], device=device)  # (T_k,) = (3,)
print("softmax([1, 2, 3])      =", show(torch.softmax(row, dim=-1)))
print("softmax([1, 2, 3] * 8)  =", show(torch.softmax(row * 8, dim=-1)))

# %% [markdown] id="scaling-measure"
# **Measured.** For each $d_k$ in 4, 16, 64, 256, 1024, draw 10,000 random (query, key) pairs with
# unit-variance entries and measure the variance of the dot product: raw, divided by $\sqrt{d_k}$
# (right), and divided by $d_k$ (a common slip). The measurement runs in `float64` so that its
# printed digits do not depend on the machine.

# %% id="scaling-variance"
# NBVAL_CHECK_OUTPUT
dims = [4, 16, 64, 256, 1024]
n_pairs = 10_000
var_raw, var_sqrt, var_dk = [], [], []
print(f"{'d_k':>5} | {'Var(q.k)':>9} {'/ d_k':>6} {'std(q.k)':>9} {'sqrt d_k':>9} | {'Var(q.k / sqrt d_k)':>19} | "
      f"{'Var(q.k / d_k)':>14}")
for n, d in enumerate(dims):
    q = randn(n_pairs, d, seed=100 + n, dtype=torch.float64)  # (N, d_k)
    k = randn(n_pairs, d, seed=200 + n, dtype=torch.float64)  # (N, d_k)
    dots = (q * k).sum(dim=-1)  # (N,): one dot product per pair
    var_raw.append(dots.var().item())
    var_sqrt.append((dots / math.sqrt(d)).var().item())
    var_dk.append((dots / d).var().item())
    print(f"{d:>5} | {var_raw[-1]:>9.1f} {var_raw[-1] / d:>6.2f} {dots.std().item():>9.1f} {math.sqrt(d):>9.1f} | "
          f"{var_sqrt[-1]:>19.2f} | {var_dk[-1]:>14.5f}")

# %% [markdown] id="scaling-init"
# The raw variance tracks $d_k$ (the ratio column stays near 1) and its standard deviation tracks
# $\sqrt{d_k}$: at $d_k = 1024$ a variance of about 1024 is a spread of about 32. The scaled
# variance stays near 1, and dividing by $d_k$ overshoots to $1/d_k$.
#
# **What a freshly initialised projection really gives.** The table drew $q$ and $k$ with variance
# 1. A real layer computes $q = x W_Q^\top$ from hidden states $x$ that a normalisation layer has
# brought to about unit variance (chapter 04). Entry $c$ of $q$ is $\sum_{i=1}^{d_{\text{model}}} W_{ci}\, x_i$,
# so with independent zero-mean weights of variance $\sigma_W^2$,
#
# $$
# \operatorname{Var}(q_c) = d_{\text{model}}\, \sigma_W^2\, \operatorname{Var}(x_i),
# \qquad
# \operatorname{Var}(q \cdot k) = d_k\, \operatorname{Var}(q_c)\, \operatorname{Var}(k_c).
# $$
#
# - `nn.Linear` draws its weights uniformly from $[-1/\sqrt{d_{\text{model}}},\ 1/\sqrt{d_{\text{model}}}]$
#   (Kaiming-uniform with $a = \sqrt 5$), a variance of $\sigma_W^2 = 1/(3\, d_{\text{model}})$, so
#   $\operatorname{Var}(q_c) = 1/3$;
# - GPT-2 draws them from $\mathcal N(0, 0.02^2)$, so $\operatorname{Var}(q_c) = 768 \times 0.0004 \approx 0.31$
#   at $d_{\text{model}} = 768$.
#
# Both are about 3 times below the unit variance of the table, and the dot product, a sum of
# products of two such entries, about 9 to 11 times below $d_k$. The cell measures it at GPT-2 small's size
# ($d_{\text{model}} = 768$, one head of $d_k = 64$) on 4,096 unit-variance inputs.

# %% id="scaling-init-run"
# NBVAL_CHECK_OUTPUT
d_model, d_k, n_tokens = 768, 64, 4096
x_in = randn(n_tokens, d_model, seed=150, dtype=torch.float64)  # (N, d_model): unit-variance inputs
torch.manual_seed(151)  # nn.Linear draws its initial weights from the global generator
inits = {
    "nn.Linear default": [torch.nn.Linear(d_model, d_k, bias=False, dtype=torch.float64).weight for _ in range(2)],
    "GPT-2, N(0, 0.02)": [0.02 * randn(d_k, d_model, seed=152 + i, dtype=torch.float64) for i in range(2)],
}
print(f"{'init':<18} | {'Var(x)':>6} | {'Var(q_c)':>8} {'Var(k_c)':>8} {'predicted':>9} | "
      f"{'Var(q.k)':>8} {'unit-variance case':>18} | {'Var(q.k / sqrt d_k)':>19}")
for name, (w_q_init, w_k_init) in inits.items():
    w_q_init, w_k_init = w_q_init.detach().to(device), w_k_init.detach().to(device)  # (d_k, d_model) each
    q_init, k_init = x_in @ w_q_init.T, x_in.flip(0) @ w_k_init.T  # (N, d_k) each; k from other tokens
    predicted = d_model * (1 / (3 * d_model) if name.startswith("nn") else 0.02**2)
    dots = (q_init * k_init).sum(dim=-1)  # (N,): one query-key pair per row
    print(f"{name:<18} | {x_in.var().item():>6.2f} | {q_init.var().item():>8.2f} {k_init.var().item():>8.2f} "
          f"{predicted:>9.2f} | {dots.var().item():>8.2f} {d_k:>18} | {(dots / math.sqrt(d_k)).var().item():>19.2f}")

# %% [markdown] id="scaling-softmax-text"
# So at initialisation the scaled scores of a real layer have a variance of about 0.1, not 1: the
# attention of a fresh model is close to uniform, and training grows the weights from there. The
# $1/\sqrt{d_k}$ scale still does its job, which is to make that starting point the same for
# every head width; the idealised "variance 1" of the formula is the cleanest case of it.
#
# Now the consequence for the softmax. Take 16 random keys and 2,000 random queries per $d_k$, and
# measure for each query row of weights: the largest weight (1 means one key takes everything), the
# entropy $-\sum_j A_{ij} \log A_{ij}$ (0 for a one-hot row, $\log 16 \approx 2.773$ for a uniform
# one), and the size of the softmax's gradient: for one row of scores $s$ and its weights
# $a = \operatorname{softmax}(s)$ the Jacobian is $\partial a / \partial s = \operatorname{diag}(a) - a a^\top$,
# and its (Frobenius) norm is 0 for a one-hot row: no learning signal passes through it.

# %% id="scaling-softmax"
# NBVAL_CHECK_OUTPUT
n_queries, n_keys = 2_000, 16
variants = {"none": lambda d: 1.0, "sqrt": lambda d: 1 / math.sqrt(d), "d_k": lambda d: 1 / d}
stats = {name: {"max": [], "entropy": [], "grad": []} for name in variants}
for n, d in enumerate(dims):
    q = randn(n_queries, d, seed=300 + n, dtype=torch.float64)  # (N, d_k)
    k = randn(n_keys, d, seed=400 + n, dtype=torch.float64)  # (T_k, d_k)
    dots = q @ k.T  # (N, T_k)
    for name, scale in variants.items():
        a = torch.softmax(dots * scale(d), dim=-1)  # (N, T_k)
        jacobian = torch.diag_embed(a) - a[:, :, None] * a[:, None, :]  # (N, T_k, T_k)
        stats[name]["max"].append(a.max(dim=-1).values.mean().item())
        stats[name]["entropy"].append(torch.special.entr(a).sum(dim=-1).mean().item())
        stats[name]["grad"].append(jacobian.flatten(1).norm(dim=-1).mean().item())

print(f"{'':>5} | {'mean largest weight':^20} | {'mean entropy (max 2.773)':^24} | {'gradient size':^13}")
print(f"{'d_k':>5} | {'none':>6}{'sqrt':>7}{'d_k':>7} | {'none':>8}{'sqrt':>8}{'d_k':>8} | {'none':>6}{'sqrt':>7}")
for n, d in enumerate(dims):
    mx = [stats[name]["max"][n] for name in variants]
    en = [stats[name]["entropy"][n] for name in variants]
    gr = [stats[name]["grad"][n] for name in ("none", "sqrt")]
    print(f"{d:>5} | {mx[0]:>6.3f}{mx[1]:>7.3f}{mx[2]:>7.3f} | {en[0]:>8.3f}{en[1]:>8.3f}{en[2]:>8.3f} | "
          f"{gr[0]:>6.3f}{gr[1]:>7.3f}")

# %% [markdown] id="scaling-plot-text"
# Without the scale, the largest weight climbs towards 1, the entropy falls towards 0 and the
# gradient shrinks towards 0 as $d_k$ grows. With it, all three stay put. Dividing by $d_k$ goes
# the other way: the weights drift towards uniform ($1/16 = 0.0625$, entropy $2.773$), so
# attention cannot prefer any key. The same numbers as pictures:

# %% id="scaling-plot"
fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
axes[0].loglog(dims, var_raw, "o-", label="no scale")
axes[0].loglog(dims, var_sqrt, "s-", label=r"$/\sqrt{d_k}$")
axes[0].loglog(dims, var_dk, "^-", label=r"$/d_k$")
axes[0].loglog(dims, dims, "k:", label=r"$d_k$ (theory)")
axes[0].set(title="variance of the scores", xlabel=r"$d_k$")
labels = {"none": "no scale", "sqrt": r"$/\sqrt{d_k}$", "d_k": r"$/d_k$"}
for name, marker in zip(variants, "os^"):
    axes[1].semilogx(dims, stats[name]["max"], marker + "-", label=labels[name])
    axes[2].semilogx(dims, stats[name]["entropy"], marker + "-", label=labels[name])
axes[1].set(title="mean largest weight (16 keys)", xlabel=r"$d_k$", ylim=(0, 1.05))
axes[2].axhline(math.log(n_keys), color="k", linestyle=":", label="uniform")
axes[2].set(title="mean entropy of a row", xlabel=r"$d_k$")
for ax in axes:
    ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown] id="scaling-plot-caption"
# *What to see:* without scaling (blue) the score variance grows like $d_k$ (on the dotted line),
# the largest weight heads toward 1 and the entropy toward 0: the softmax saturates. Dividing by
# $\sqrt{d_k}$ (orange) holds all three flat at every width; dividing by $d_k$ (green) squeezes the
# weights toward uniform.

# %% [markdown] id="scaling-llm"
# **Implementation check.** The scale depends on the width of one query, `q.shape[-1]` ($d_k$, the
# *per-head* width in a multi-head layer), never on $d_{\text{model}}$ or on the sequence length.
# Scores keep their shape: `(..., T_q, T_k)` before and after the division.
#
# **In real LLMs.** GPT-2 has $d_k = 64$ per head, so the factor is $1/8$; Llama-2 7B has
# $d_k = 128$, factor $1/\sqrt{128} \approx 0.088$. `torch.nn.functional.scaled_dot_product_attention`
# applies $1/\sqrt{d_k}$ by default (its `scale` argument overrides it). A few models, T5 for one,
# leave the division out of the attention code and fold the factor into how $W_Q$ is initialised;
# the effect on the score variance at the start of training is the same.
#
# **Common mistake.** Forgetting the scale (weights saturate, gradients die) or dividing by $d_k$
# (weights go flat). Both are visible in the table above, and both run again in section 10.

# %% [markdown] id="explore-softmax"
# ### Explore: temperature and the scale on one row of scores
#
# One query against eight keys, $d_k = 64$: the raw scores $q \cdot k_j$ spread about
# $\sqrt{64} = 8$ either side of zero. Choose the scale (none, $1/\sqrt{d_k}$, $1/d_k$) and a
# **temperature** $\tau$, and watch the row of weights $\operatorname{softmax}(s \cdot \text{scale} / \tau)$.
# Dividing by a temperature is the same operation as the scale: $1/\sqrt{d_k}$ *is* a temperature
# of $\sqrt{d_k}$, chosen so that the scores have variance 1. The readout line gives the largest
# weight and the row's entropy (at most $\log 8 \approx 2.079$, a uniform row). The controls move
# in JupyterLab with a running kernel; the figure under them shows four fixed settings.

# %% id="explore-softmax-widget"
from helpers.widgets import softmax_explorer, softmax_figure

q_row = randn(64, seed=21)  # (d_k,) = (64,): one query
k_rows = randn(8, 64, seed=22)  # (T_k, d_k) = (8, 64)
row_scores = (k_rows @ q_row).cpu()  # (T_k,) = (8,): raw scores, no scale yet
softmax_explorer(row_scores, d_k=64)

# %% id="explore-softmax-figure"
softmax_figure(row_scores, d_k=64)
plt.show()

# %% [markdown] id="explore-softmax-caption"
# *What to see:* without the scale one key takes nearly all the weight; $1/\sqrt{d_k}$ keeps a
# spread of weights that still prefers some keys; $1/d_k$ flattens the row towards the dotted
# uniform line; and a temperature below 1 sharpens the scaled row again. Moving the temperature
# slider walks continuously between these pictures.

# %% [markdown] id="masking"
# ## 4. Masking
#
# **Main idea.** Not every query may read every key. A **causal** mask stops a position from
# reading later positions: a language model that predicts token $i+1$ must not see it. A
# **padding** mask hides the filler tokens that make sequences of different lengths fit one batch
# tensor. In this course a mask is a boolean tensor with **`True` = may attend** and
# **`False` = blocked**, the same convention as `torch.nn.functional.scaled_dot_product_attention`.
# Blocked scores become $-\infty$ **before** the softmax: $e^{-\infty} = 0$, so blocked keys get
# exactly zero weight and the remaining weights are renormalised over the allowed keys.
#
# **Formula.**
#
# $$
# \tilde S_{ij} = \begin{cases} S_{ij} & \text{if } M_{ij} \text{ (allowed)} \\ -\infty & \text{otherwise} \end{cases}
# \qquad
# M^{\text{causal}}_{ij} = [\, j \le i \,],
# \qquad
# M^{\text{pad}}_{b,ij} = [\, j < L_b \,]
# $$
#
# where $L_b$ is the number of real tokens in sequence $b$. Equivalently, add a bias that is $0$ on
# allowed pairs and $-\infty$ on blocked ones: $\operatorname{softmax}(S + \text{bias})$.
#
# **Worked example.** The causal rule for four positions, written with nothing but Python loops:
# query position `i` may read key position `j` exactly when `j <= i`.

# %% id="causal-loops"
# NBVAL_CHECK_OUTPUT
seq_len = 4
loop_rows = []
for query_pos in range(seq_len):
    row = []
    for key_pos in range(seq_len):
        if key_pos <= query_pos:
            row.append("allow")
        else:
            row.append("block")
    loop_rows.append(row)
    print(row)

# %% [markdown] id="causal-helpers-text"
# The same mask as a tensor, from `helpers.attention.causal_mask`: `True` on and below the diagonal.
# Row $i$ is query $i$; the first token can read only itself, the last one reads everything.

# %% id="causal-helpers"
# NBVAL_CHECK_OUTPUT
mask4 = causal_mask(4, device=device)  # (T, T) = (4, 4), bool
print("shape", tuple(mask4.shape), "dtype", mask4.dtype)
for row in mask4.tolist():
    print(row)
as_words = [["allow" if allowed else "block" for allowed in row] for row in mask4.tolist()]
print("same as the loops:", as_words == loop_rows)

# %% [markdown] id="masking-apply-text"
# Apply it to a $4 \times 4$ score matrix: `apply_mask` puts $-\infty$ above the diagonal, and the
# softmax turns every $-\infty$ into an exact 0. Row 1 keeps scores $[1, 3]$, so its weights are
# $e^1/(e^1 + e^3) \approx 0.1192$ and $e^3/(e^1 + e^3) \approx 0.8808$.

# %% id="masking-example"
# NBVAL_CHECK_OUTPUT
S4 = torch.tensor([[2., 1., 0., 3.],
                   [1., 3., 2., 0.],
                   [0., 2., 1., 1.],
                   [1., 1., 2., 2.]], device=device)  # (T_q, T_k) = (4, 4)
print_rows("masked scores", apply_mask(S4, mask4), 1)  # (4, 4), -inf where blocked
print_rows("weights", masked_softmax(S4, mask4))  # (4, 4)

# %% [markdown] id="padding-text"
# **Padding.** Two sequences of lengths 3 and 5 share a batch padded to $T = 5$.
# `padding_mask(lengths, T)` returns shape `(B, 1, T_k)`: one row of allowed keys per sequence,
# with a size-1 query axis that broadcasts against scores `(B, T_q, T_k)`, so every query of that
# sequence ignores the same padded keys. Masks combine with `&`: a key is allowed only if both masks
# allow it.
#
# **Implementation check.**
#
# - scores: `(B, T_q, T_k)` = `(2, 5, 5)`
# - causal mask: `(T_q, T_k)` = `(5, 5)`, broadcast over the batch
# - padding mask: `(B, 1, T_k)` = `(2, 1, 5)`, broadcast over the queries
# - `padding & causal`: `(B, T_q, T_k)` = `(2, 5, 5)`
# - for per-head scores `(B, H, T_q, T_k)` add a head axis: `padding_mask(lengths, T)[:, None]`,
#   shape `(B, 1, 1, T_k)`

# %% id="padding-mask"
# NBVAL_CHECK_OUTPUT
pad = padding_mask([3, 5], 5, device=device)  # (B, 1, T_k) = (2, 1, 5)
causal5 = causal_mask(5, device=device)  # (T_q, T_k) = (5, 5)
both = pad & causal5  # (B, T_q, T_k) = (2, 5, 5)
print("padding", tuple(pad.shape), pad.tolist())
print("padding & causal", tuple(both.shape), "; sequence 0 (length 3):")
for row in both[0].tolist():
    print("   ", row)

# %% id="masking-grids"
fig, axes = plt.subplots(1, 3, figsize=(11, 3))
mask_grid(causal5, ax=axes[0], title="causal (5, 5)")
mask_grid(pad[0].expand(5, 5), ax=axes[1], title="padding, length 3 (broadcast)")
mask_grid(both[0], ax=axes[2], title="padding & causal")
fig.tight_layout()
plt.show()

# %% [markdown] id="masking-grids-caption"
# *What to see:* blue cells are allowed, gray cells blocked: the causal mask blocks everything right
# of the diagonal, the padding mask blocks the same padded key columns for every query, and their
# combination blocks the union of both.

# %% [markdown] id="padding-left-text"
# **Left padding.** The masks above pad on the *right*: real tokens first, filler after. Batched
# generation pads on the *left* instead, so that the last column holds every sequence's newest
# token: one step of generation reads the logits at position $T-1$ for the whole batch and appends
# the next tokens in one new column (Hugging Face tokenizers have `padding_side="left"` for this).
# The left-padding mask is the right-padding one read backwards: sequence $b$'s real tokens are the
# last $L_b$ positions, so key $j$ is allowed when $j \ge T - L_b$, which is
# `padding_mask(lengths, T).flip(-1)`.
#
# Combined with the causal mask this creates something right padding never does. With right
# padding, every query may read key 0, a real token. With left padding, query $i$ may read only
# keys $j \le i$, and for the padded positions at the front those keys are all padding: **rows with
# no allowed key at all**.
#
# - left-padding mask: `(B, 1, T_k)` = `(2, 1, 5)`, `True` from position $T - L_b$ on
# - `left & causal`: `(B, T_q, T_k)` = `(2, 5, 5)`

# %% id="padding-left"
# NBVAL_CHECK_OUTPUT
lengths = [3, 5]
left_pad = padding_mask(lengths, 5, device=device).flip(-1)  # (B, 1, T_k) = (2, 1, 5): real tokens last
both_left = left_pad & causal5  # (B, T_q, T_k) = (2, 5, 5)
print("left padding", tuple(left_pad.shape), left_pad.tolist())
print("left padding & causal", tuple(both_left.shape), "; sequence 0 (2 padding tokens, then 3 real):")
for i, row in enumerate(both_left[0].tolist()):
    print(f"    query {i}: {row}  allowed keys: {sum(row)}")
print("rows with no allowed key, (sequence, query): right padding",
      [(b, i) for b in range(2) for i in range(5) if not both[b, i].any()],
      "| left padding", [(b, i) for b in range(2) for i in range(5) if not both_left[b, i].any()])

# %% [markdown] id="fully-blocked-text"
# **A row with nothing to attend to.** Rows 0 and 1 of sequence 0 above: **every key in the row is
# blocked**. The naive softmax of a row of $-\infty$ computes $-\infty - (-\infty)$ and returns NaN, and one
# NaN spreads through every later layer and into the loss. `helpers.attention.masked_softmax`
# defines this case instead: **a fully blocked row gets all-zero weights, so its output is zeros,
# not NaN** (the padded position is ignored downstream anyway).

# %% id="fully-blocked"
# NBVAL_CHECK_OUTPUT
T = 5
left_mask = both_left[0]  # (T_q, T_k) = (5, 5): sequence 0, two padding tokens on the left
print("allowed keys per query:", left_mask.sum(dim=-1).tolist())

s = randn(T, T, seed=7)  # (T_q, T_k)
v = randn(T, 3, seed=8)  # (T_k, d_v)
naive = torch.softmax(apply_mask(s, left_mask), dim=-1)  # (T_q, T_k)  WRONG for blocked rows
safe = masked_softmax(s, left_mask)  # (T_q, T_k)
print("naive weights, rows 0-1:", show(naive[:2], 3))
print("helpers weights, rows 0-1:", show(safe[:2], 3))
print("naive output has NaN:", torch.isnan(naive @ v).any().item(),
      "| helpers output has NaN:", torch.isnan(safe @ v).any().item())
print("helpers output rows 0-1:", show(safe[:2] @ v, 3))

# %% [markdown] id="fully-blocked-torch-text"
# **What torch does with such a row.** The same left-padded batch through
# `F.scaled_dot_product_attention`. With the torch version this course pins (2.13.0) it returns
# **zeros** for the fully blocked rows, exactly like `helpers`: its reference path uses a "safe"
# softmax that sets rows whose scores are all $-\infty$ to zero (the change came with pytorch/pytorch
# pull request 133882; earlier releases returned NaN, see issue 103749). That is a property of the
# version, not a documented promise, so this course writes the rule into `masked_softmax` rather
# than relying on it. And it is not true of every torch function: `nn.MultiheadAttention` returns
# NaN for those rows on its default path (which computes the weights it returns), and zeros when it
# takes the fast path (inference mode, `need_weights=False`), which calls the same kernels.

# %% id="fully-blocked-torch"
# NBVAL_CHECK_OUTPUT
print("torch", torch.__version__.split("+")[0])
q_l, k_l, v_l = randn(2, 5, 8, seed=26), randn(2, 5, 8, seed=27), randn(2, 5, 3, seed=28)  # (B, T, d)
ours, _ = scaled_dot_product_attention(q_l, k_l, v_l, both_left)  # (B, T, d_v)
theirs = F.scaled_dot_product_attention(q_l, k_l, v_l, attn_mask=both_left)  # (B, T, d_v)
print("F.scaled_dot_product_attention, sequence 0, rows 0-1:", show(theirs[0, :2], 3))
print("NaN anywhere:", torch.isnan(theirs).any().item(), "| equals helpers everywhere:", torch.allclose(ours, theirs, atol=1e-5))

torch.manual_seed(29)
torch_mha = torch.nn.MultiheadAttention(8, 1, batch_first=True).to(device)  # one head; reads True = blocked


def nan_rows(out):
    return [[i for i in range(5) if torch.isnan(out[b, i]).any()] for b in range(2)]  # per sequence


default_out, _ = torch_mha(q_l, q_l, q_l, attn_mask=~both_left)  # (B, T, d_model)
torch_mha.eval()
with torch.inference_mode():
    fast_out, _ = torch_mha(q_l, q_l, q_l, attn_mask=~both_left, need_weights=False)  # (B, T, d_model)
print("nn.MultiheadAttention rows with NaN per sequence, default path:", nan_rows(default_out),
      "| fast path:", nan_rows(fast_out))

# %% [markdown] id="masking-llm"
# **In real LLMs.** Every GPT-style decoder applies the causal mask in every layer; BERT-style
# encoders use only padding masks. GPT-2's Hugging Face implementation stores the causal mask as a
# lower-triangular boolean buffer of shape `(1, 1, 1024, 1024)` (its context length) in each of its
# attention layers and slices the top-left `(T, T)` corner for a sequence of $T$ tokens. Hugging Face's `attention_mask` (1 = real token, 0 = padding)
# points the same way as our `True` = allow, but **`torch.nn.MultiheadAttention` and
# `torch.nn.Transformer` read a boolean mask the other way round (`True` = blocked)**. Moving a mask
# between the two conventions means `~mask`; forgetting it is the inverted-mask bug of section 10.
#
# **Common mistake.** The NaN row above, and, in section 10, filling blocked scores with 0, masking
# after the softmax, an inverted mask and a causal mask that blocks the diagonal.

# %% [markdown] id="explore-masks"
# ### Explore: mask type and padding length
#
# One sequence of six positions. Pick the mask (causal, padding, both, or none), how many of the
# six tokens are padding, and on which side the padding sits. The readout counts the keys each
# query may read and the rows with nothing to attend to, the rows `masked_softmax` must turn into
# zeros rather than NaN. The figure under the controls shows four fixed settings.

# %% id="explore-masks-widget"
from helpers.widgets import mask_explorer, mask_figure

mask_explorer(T=6)

# %% id="explore-masks-figure"
mask_figure(T=6)
plt.show()

# %% [markdown] id="explore-masks-caption"
# *What to see:* padding on the right removes the last columns for every query; combined with the
# causal mask, it leaves a triangle that stops at the last real token. Put the same two padding
# tokens on the **left** and the first two rows turn entirely grey: those queries have nothing to
# attend to, the fully blocked rows of the left-padding example above.

# %% [markdown] id="weights"
# ## 5. Attention weights
#
# **Main idea.** Scores are arbitrary real numbers. The softmax, taken **along the key axis**,
# turns each query's row into a probability distribution over the keys: every weight is
# non-negative, blocked keys get exactly 0, and each row sums to 1. A large weight means "this query
# takes most of its information from that key".
#
# **Formula.**
#
# $$
# A_{ij} = \frac{\exp(\tilde S_{ij})}{\sum_{j'=1}^{T_k} \exp(\tilde S_{ij'})},
# \qquad A_{ij} \ge 0, \qquad \sum_{j=1}^{T_k} A_{ij} = 1 .
# $$
#
# **Shifting a row does not change its softmax.** For any constant $c$ subtracted from every
# score of a row $z$, the factor $e^{-c}$ appears once in the numerator and once in every term of
# the denominator, and cancels:
#
# $$
# \operatorname{softmax}(z - c)_j = \frac{e^{z_j - c}}{\sum_{j'} e^{z_{j'} - c}}
#   = \frac{e^{-c}\, e^{z_j}}{e^{-c} \sum_{j'} e^{z_{j'}}} = \operatorname{softmax}(z)_j .
# $$
#
# Implementations take $c = \max_j z_j$: every exponent is then $\le 0$, so no $e^{\cdot}$ exceeds 1,
# and the largest term is $e^0 = 1$, so the denominator is at least 1. Without the shift, $\exp$
# overflows as soon as one score passes $\ln(\text{largest float})$: about **88.72 in float32**
# (and bfloat16, which has float32's exponent range) and only about **11.09 in float16**. Both
# thresholds are computed in the cell after the worked example.
#
# **Worked example.** $[1, 2, 3]$ by hand: $e^1 \approx 2.7183$, $e^2 \approx 7.3891$,
# $e^3 \approx 20.0855$, total $\approx 30.1929$, so the weights are $\approx [0.0900, 0.2447, 0.6652]$.

# %% id="weights-example"
# NBVAL_CHECK_OUTPUT
row = [1.0, 2.0, 3.0]
exps = [math.exp(s) for s in row]
total = sum(exps)
print("exp:", [round(e, 4) for e in exps], " total:", round(total, 4))
print("by hand:      ", [round(e / total, 4) for e in exps])
print("torch.softmax:", show(torch.softmax(torch.tensor(row, device=device), dim=-1)))


# %% [markdown] id="weights-overflow-text"
# **Where `exp` overflows.** The largest finite number of a dtype is `torch.finfo(dtype).max`; its
# natural log is the largest score whose exponential still fits. Just below it `exp` is finite,
# just above it `exp` returns `inf`, and then $\infty / \infty$ is NaN.

# %% id="weights-overflow"
# NBVAL_CHECK_OUTPUT
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    largest = torch.finfo(dtype).max
    limit = math.log(largest)  # the largest x with exp(x) <= largest
    x_below = torch.tensor(limit - 0.05, dtype=dtype, device=device)  # rounded to the dtype's grid
    x_above = torch.tensor(limit + 0.05, dtype=dtype, device=device)
    print(f"{str(dtype):<14} max {largest:.4g}  ln(max) = {limit:.2f} | "
          f"exp({x_below.item():.3f}) finite: {torch.isfinite(torch.exp(x_below)).item()!s:<5} | "
          f"exp({x_above.item():.3f}) = {torch.exp(x_above).item()}")

big = torch.tensor([1000., 1001., 1002.], device=device)  # same gaps as [1, 2, 3], shifted by 999
naive = torch.exp(big) / torch.exp(big).sum()  # WRONG: exp(1000) overflows to inf, inf / inf = nan
print("scores [1000, 1001, 1002], naive exp:", show(naive), "| torch.softmax:", show(torch.softmax(big, dim=-1)))
hot = torch.tensor([80., 90.], device=device)  # float32 is fine at 80, not at 90
print("scores [80, 90] in float32, naive exp:", show(torch.exp(hot) / torch.exp(hot).sum()))

# %% [markdown] id="weights-shift-text"
# **The shift, checked.** Subtracting any constant leaves the weights unchanged (up to rounding),
# and subtracting the row's maximum gives a softmax written with `exp` alone that agrees with
# `torch.softmax` even where the naive version overflowed.

# %% id="weights-shift"
# NBVAL_CHECK_OUTPUT
z = randn(4, 6, seed=25, dtype=torch.float64) * 3  # (T_q, T_k): four rows of scores
for c in (-50.0, 7.0, 300.0):
    print(f"c = {c:g}: softmax(z - c) equals softmax(z):",
          torch.allclose(torch.softmax(z - c, dim=-1), torch.softmax(z, dim=-1)))


def stable_softmax(scores):
    shifted = scores - scores.amax(dim=-1, keepdim=True)  # (..., T_k): every entry <= 0
    e = torch.exp(shifted)  # (..., T_k): entries in (0, 1], the largest is exactly 1
    return e / e.sum(dim=-1, keepdim=True)


print("max-shifted exp on [1000, 1001, 1002]:", show(stable_softmax(big)),
      "| equals torch.softmax:", torch.allclose(stable_softmax(big), torch.softmax(big, dim=-1)))
print("max-shifted exp on random rows equals torch.softmax:", torch.allclose(stable_softmax(z), torch.softmax(z, dim=-1)))

# %% [markdown] id="weights-rows-text"
# **Implementation check.**
#
# - scores and weights: `(B, T_q, T_k)` = `(2, 3, 5)`, the softmax keeps the shape
# - `weights.sum(dim=-1)`: `(B, T_q)` = `(2, 3)`, all ones (one sum per query)
#
# Here with a padding mask (sequence 0 has 2 real keys, sequence 1 has 5): the blocked keys carry
# exactly zero weight, and every row still sums to 1 over the keys that are left.

# %% id="weights-rows-sum"
# NBVAL_CHECK_OUTPUT
scores = randn(2, 3, 5, seed=9)  # (B, T_q, T_k)
weights = masked_softmax(scores, padding_mask([2, 5], 5, device=device))  # (B, T_q, T_k)
row_sums = weights.sum(dim=-1)  # (B, T_q)
print("weights", tuple(weights.shape), "-> row sums", tuple(row_sums.shape), show(row_sums))
print("every row sums to 1:", torch.allclose(row_sums, torch.ones_like(row_sums)))
print("no negative weight:", bool((weights >= 0).all()))
print("weight on padded keys of sequence 0:", weights[0, :, 2:].sum().item())

# %% [markdown] id="weights-patterns-text"
# **Heatmaps that mean something.** Random weights make random pictures, so build two attention
# patterns by hand on the sentence "the cat sat on the mat". Trained models learn both.
#
# - **Previous-token attention.** Give each key a one-hot code of its position ("I am at position
#   $j$"), and make query $i$ the code of position $i-1$ ("I want position $i - 1$"), scaled so that
#   the matching score is 6 and every other score 0. With the causal mask, the first token has only
#   itself to read.
# - **Same-word attention.** Queries and keys are one-hot codes of the word itself, with no mask:
#   each token attends to every occurrence of its own word, so the two "the"s share their weight.
#
# For the previous-token pattern, the values are one-hot codes of the words, so each output row says
# which word that position received.

# %% id="weights-patterns"
# NBVAL_CHECK_OUTPUT
tokens = ["the", "cat", "sat", "on", "the", "mat"]
vocab = sorted(set(tokens))  # ['cat', 'mat', 'on', 'sat', 'the']
T, n_vocab, gap = len(tokens), len(vocab), 6.0

position_code = torch.eye(T, device=device)  # (T, T): row j is the one-hot code of position j
q_prev = torch.zeros(T, T, device=device)  # (T, d_k) with d_k = T
q_prev[1:] = position_code[:-1] * gap * math.sqrt(T)  # query i asks for position i - 1
word_code = torch.eye(n_vocab, device=device)[[vocab.index(t) for t in tokens]]  # (T, n_vocab)

out_prev, w_prev = scaled_dot_product_attention(
    q_prev, position_code, word_code, causal_mask(T, device=device))  # (T, n_vocab), (T, T)
for i, token in enumerate(tokens):
    j = max(i - 1, 0)
    print(f"{i} {token:>3} receives {vocab[out_prev[i].argmax().item()]!r:<6} (weight {w_prev[i, j].item():.2f} on key {j})")

q_same = word_code * gap * math.sqrt(n_vocab)  # (T, d_k) with d_k = n_vocab
out_same, w_same = scaled_dot_product_attention(q_same, word_code, word_code)  # (T, n_vocab), (T, T)
print("same-word weights of the first 'the':", show(w_same[0], 2))

# %% id="weights-heatmaps"
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
attention_heatmap(w_prev, query_labels=tokens, key_labels=tokens, ax=axes[0], annotate=True,
                  title="previous-token attention (causal)")
attention_heatmap(w_same, query_labels=tokens, key_labels=tokens, ax=axes[1], annotate=True,
                  title="same-word attention (no mask)")
fig.tight_layout()
plt.show()

# %% [markdown] id="weights-heatmaps-caption"
# *What to see:* left, each query puts almost all its weight on the key just before it (a
# previous-token pattern; the first token has only itself); right, each word attends to itself, and
# the two "the" tokens split their weight 0.50 / 0.50 between each other.

# %% [markdown] id="weights-causal-text"
# A causal heatmap from random queries and keys ($T = 6$, $d_k = 8$): everything above the diagonal
# is exactly 0, the first row is $[1, 0, \dots, 0]$ because the first token can only read itself,
# and later rows spread their weight over more keys.

# %% id="weights-causal"
w_causal = masked_softmax(attention_scores(randn(6, 8, seed=10), randn(6, 8, seed=11)),
                          causal_mask(6, device=device))  # (T_q, T_k) = (6, 6)
attention_heatmap(w_causal, annotate=True, title="random queries and keys, causal mask")
plt.show()

# %% [markdown] id="weights-causal-caption"
# *What to see:* every row sums to 1 and every weight above the diagonal is exactly 0 (the causal
# mask); with random queries and keys the allowed weight is spread unevenly, and row 0 can only put
# all of it on key 0.

# %% [markdown] id="weights-llm"
# **In real LLMs.** Interpretability work on trained models finds previous-token heads like the one
# built above (in GPT-2 small, for instance), and they are a building block of "induction heads",
# which copy what followed an earlier occurrence of the current token. Many LLMs also park a large
# share of their attention on the very first token (an "attention sink") when no key is relevant,
# since every row has to sum to 1 somewhere. Xiao et al. (2023, "Efficient Streaming Language Models
# with Attention Sinks") found that a sliding-window KV cache breaks down as soon as the first tokens
# are evicted, and that keeping the keys and values of just 4 initial tokens beside the window keeps
# Llama-2 and other models stable over streams of up to 4 million tokens. Chapter 09 measures the
# entropy of attention rows as a diagnostic.
#
# **What a weight can be at a real context length.** The last query of a causal row reads all $T$
# keys. Spread evenly, each key gets $1/T$; for one key to take half the row while the other $T - 1$
# tie at score 0, its scaled score must lead by $\ln(T - 1)$, since
# $e^{m} / (e^{m} + T - 1) = 	frac12 \iff m = \ln(T - 1)$. The cell computes both for GPT-2
# ($d_k = 64$, 1024 tokens), Llama-2 7B ($d_k = 128$, 4096) and Llama 3.1 8B ($d_k = 128$, 131,072),
# and measures the largest weight of rows of random unit-variance queries and keys at those sizes,
# with and without the $1/\sqrt{d_k}$ of section 2: scaled, the largest weight is 1.4 % of the row or
# less (tens of times the even share, but nowhere near the $\ln(T-1)$ lead a dominant key needs);
# unscaled, one key takes about two thirds of the row before anything is learned.

# %% id="weights-llm-numbers"
# NBVAL_CHECK_OUTPUT
for n, (name, d_k, T_ctx) in enumerate((("GPT-2", 64, 1024), ("Llama-2 7B", 128, 4096),
                                        ("Llama 3.1 8B", 128, 131_072))):
    q = randn(16, d_k, seed=500 + n, dtype=torch.float64)  # (N, d_k): 16 queries
    k = randn(T_ctx, d_k, seed=600 + n, dtype=torch.float64)  # (T, d_k): the whole context
    dots = q @ k.T  # (N, T)
    largest = {label: torch.softmax(dots * scale, dim=-1).amax(dim=-1).mean().item()
               for label, scale in (("scaled", 1 / math.sqrt(d_k)), ("unscaled", 1.0))}
    print(f"{name:12s} T = {T_ctx:>7,d}: even share 1/T = {1 / T_ctx:.1e}; half the row needs a lead of "
          f"ln(T-1) = {math.log(T_ctx - 1):.2f} | random q, k, mean largest weight: scaled "
          f"{largest['scaled']:.1e}, unscaled {largest['unscaled']:.2f}")

# %% [markdown] id="weights-mistake-text"
# **Common mistake: softmax over the wrong axis.** `torch.softmax(scores, dim=-2)` normalises each
# *column*: every key hands out a total weight of 1 across the queries, and the rows, which are what
# attention needs, sum to anything. (Calling `F.softmax(scores)` without `dim` is deprecated for the
# same reason: the axis must be chosen, and it is the key axis, `-1`.)

# %% id="weights-mistake"
# NBVAL_CHECK_OUTPUT
scores = randn(3, 5, seed=12, dtype=torch.float64)  # (T_q, T_k); float64: stable printed digits
right = torch.softmax(scores, dim=-1)  # (T_q, T_k)
wrong = torch.softmax(scores, dim=-2)  # (T_q, T_k)  WRONG: normalises over the queries
print("right: row sums", show(right.sum(dim=-1), 3), " column sums", show(right.sum(dim=-2), 3))
print("wrong: row sums", show(wrong.sum(dim=-1), 3), " column sums", show(wrong.sum(dim=-2), 3))

# %% [markdown] id="values"
# ## 6. Weighted values
#
# **Main idea.** Each query's output is the average of the value rows, weighted by that query's
# attention weights. Because the weights are non-negative and sum to 1, this is a **convex
# combination**: every coordinate of the output lies between the smallest and the largest value of
# that coordinate among the keys it reads. Attention is a soft lookup. A one-hot row of weights
# copies one value row exactly; a flat row returns the mean.
#
# **Formula.**
#
# $$
# O = A V \in \mathbb{R}^{T_q \times d_v}, \qquad o_i = \sum_{j=1}^{T_k} A_{ij}\, v_j .
# $$
#
# **Worked example.** Weights $[0.5, 0.25, 0.25]$ over the value rows $[3, 0]$, $[0, 3]$, $[1, 1]$
# (the $V$ of section 1): $0.5 \cdot [3, 0] + 0.25 \cdot [0, 3] + 0.25 \cdot [1, 1] = [1.75, 1.0]$.

# %% id="values-example"
# NBVAL_CHECK_OUTPUT
a = torch.tensor([0.5, 0.25, 0.25], device=device)  # (T_k,) = (3,): one query's weights
o_loop = sum(a[j] * V[j] for j in range(V.shape[0]))  # (d_v,) = (2,)
o_matmul = a @ V  # (T_k,) @ (T_k, d_v) -> (d_v,) = (2,)
print("by the sum:", show(o_loop), " by a @ V:", show(o_matmul))

# %% [markdown] id="values-check"
# **Implementation check.** $d_v$ need not equal $d_k$; use $d_v = 7$:
#
# - weights `A`: `(B, T_q, T_k)` = `(2, 3, 5)`
# - values `V`: `(B, T_k, d_v)` = `(2, 5, 7)`
# - output `A @ V`: `(B, T_q, d_v)` = `(2, 3, 7)`: the key axis is summed away
#
# Then the convex-combination property (each output coordinate within the range of the value
# column), and the two extremes: a one-hot row copies a value row, a uniform row gives the mean.

# %% id="values-convex"
# NBVAL_CHECK_OUTPUT
A = masked_softmax(randn(2, 3, 5, seed=13))  # (B, T_q, T_k)
Vb = randn(2, 5, 7, seed=14)  # (B, T_k, d_v)
O = A @ Vb  # (B, T_q, d_v)
print("A", tuple(A.shape), "@ V", tuple(Vb.shape), "-> O", tuple(O.shape))
low = Vb.min(dim=-2, keepdim=True).values  # (B, 1, d_v)
high = Vb.max(dim=-2, keepdim=True).values  # (B, 1, d_v)
print("every output inside its value column's range:", bool(((O >= low - 1e-6) & (O <= high + 1e-6)).all()))

one_hot = torch.eye(5, device=device)[[4, 0, 2]]  # (T_q, T_k) = (3, 5)
print("one-hot weights copy value rows 4, 0, 2:", torch.allclose(one_hot @ Vb[0], Vb[0, [4, 0, 2]], atol=1e-6))
uniform = torch.full((1, 5), 0.2, device=device)  # (1, T_k)
print("uniform weights give the mean:", torch.allclose(uniform @ Vb[0], Vb[0].mean(dim=0, keepdim=True), atol=1e-6))

# %% [markdown] id="values-llm"
# **In real LLMs.** Each head produces a `(T, d_head)` output, a weighted average of value vectors
# of width $d_{\text{head}}$: $768 / 12 = 64$ in GPT-2 small, $4096 / 32 = 128$ in Llama-2 7B. The
# heads are concatenated and mixed by an output projection $W_O$ (chapter 02), and the result is added to the residual stream
# (chapter 04). Since attention only averages, it moves information between positions but creates
# no new features on its own; the projections and the MLP do that.
#
# **Common mistake: transposed weights.** `A.transpose(-2, -1) @ V` runs whenever $T_q = T_k$, as in
# every self-attention layer, and returns the right shape with the wrong numbers. With a causal
# mask it is worse: transposed causal weights let early positions read later ones.

# %% id="values-mistake"
# NBVAL_CHECK_OUTPUT
A_causal = masked_softmax(randn(4, 4, seed=15), causal_mask(4, device=device))  # (T, T)
V4 = randn(4, 3, seed=16)  # (T_k, d_v)
right = A_causal @ V4  # (T_q, d_v)
wrong = A_causal.transpose(-2, -1) @ V4  # (T_q, d_v)  WRONG: row i now holds column i's weights
print("same shape:", right.shape == wrong.shape, "| same numbers:", torch.allclose(right, wrong))
print("keys that query 0 reads, right:", [j for j in range(4) if A_causal[0, j] > 0],
      " wrong:", [j for j in range(4) if A_causal.T[0, j] > 0])

# %% [markdown] id="full-attention"
# ## 7. The whole thing
#
# **Formula.** With the mask written as an additive bias $B_{ij} = 0$ where allowed and
# $-\infty$ where blocked:
#
# $$
# \operatorname{Attention}(Q, K, V, M) = \operatorname{softmax}\!\left(\frac{QK^\top}{\sqrt{d_k}} + B\right) V .
# $$
#
# `helpers.attention.scaled_dot_product_attention(q, k, v, mask=None)` is sections 2 to 6 in a row
# and returns `(output, weights)`.
#
# **Worked example.** The three tokens of section 1 end to end, with the causal mask. Token 0 can
# only read itself, so its output is exactly its own value row $[3, 0]$; token 1 mixes rows 0 and 1
# with weights $\approx [0.8930, 0.1070]$.

# %% id="full-example"
# NBVAL_CHECK_OUTPUT
O3, A3 = scaled_dot_product_attention(Q, K, V, causal_mask(3, device=device))  # (T, d_v), (T, T)
print_rows("weights A", A3)
print_rows("output O", O3)

# %% [markdown] id="full-vs-torch-text"
# **Against torch.** The same inputs through `torch.nn.functional.scaled_dot_product_attention`
# (its boolean `attn_mask` uses the same `True` = allow convention), with no mask, with the causal
# mask (both as a mask and as `is_causal=True`) and with a padding mask.
#
# **Implementation check.** `q`, `k`: `(B, T, d_k)` = `(2, 6, 8)`; `v`: `(B, T, d_v)` = `(2, 6, 10)`;
# masks `(T, T)` and `(B, 1, T)`; output `(B, T, d_v)` = `(2, 6, 10)`.
#
# The difference is printed as a comparison against a tolerance rather than as a number, because the
# last digits of float32 arithmetic differ between a laptop and a GPU.

# %% id="full-vs-torch"
# NBVAL_CHECK_OUTPUT
q, k, v = randn(2, 6, 8, seed=17), randn(2, 6, 8, seed=18), randn(2, 6, 10, seed=19)  # (B, T, d)
causal6 = causal_mask(6, device=device)  # (T, T)
pad6 = padding_mask([4, 6], 6, device=device)  # (B, 1, T)
cases = {
    "no mask": (None, {}),
    "causal": (causal6, {"attn_mask": causal6}),
    "is_causal": (causal6, {"is_causal": True}),
    "padding": (pad6, {"attn_mask": pad6}),
}
for name, (mask, torch_kwargs) in cases.items():
    ours, _ = scaled_dot_product_attention(q, k, v, mask)  # (B, T, d_v)
    theirs = F.scaled_dot_product_attention(q, k, v, **torch_kwargs)  # (B, T, d_v)
    diff = (ours - theirs).abs().max().item()
    print(f"{name:<9} shape {tuple(ours.shape)}  allclose {torch.allclose(ours, theirs, atol=1e-5)}"
          f"  max |diff| < 1e-5: {diff < 1e-5}")

# %% [markdown] id="full-weights-text"
# `F.scaled_dot_product_attention` returns **only the output**: its fast kernels (FlashAttention,
# chapter 07) never store the weight matrix. To see torch's weights anyway, attend over the identity
# matrix as values: row $i$ of $A I$ is row $i$ of $A$.

# %% id="full-weights"
# NBVAL_CHECK_OUTPUT
_, ours_w = scaled_dot_product_attention(q, k, v, pad6)  # (B, T_q, T_k)
identity = torch.eye(6, device=device).expand(2, 6, 6)  # (B, T_k, T_k) used as values
theirs_w = F.scaled_dot_product_attention(q, k, identity, attn_mask=pad6)  # (B, T_q, T_k)
print("weights", tuple(ours_w.shape), "match torch's:", torch.allclose(ours_w, theirs_w, atol=1e-5))

# %% [markdown] id="full-llm"
# **In real LLMs.** nanoGPT's attention calls `F.scaled_dot_product_attention(q, k, v, is_causal=True)`
# on tensors of shape `(B, H, T, d_head)` and keeps the explicit version (the one you just compared)
# as a fallback; production inference servers use the same math in fused kernels.
#
# **Common mistake: a float mask where a boolean one was meant.** torch's function *adds* a float
# `attn_mask` to the scores. `causal.float()` is 1.0 on allowed pairs and 0.0 on blocked ones: it
# adds 1 to the allowed scores and blocks nothing, so the future leaks. `helpers` refuses a
# non-boolean mask with a message instead.

# %% id="full-mistake"
# NBVAL_CHECK_OUTPUT
right_w = F.scaled_dot_product_attention(q, k, identity, attn_mask=causal6)  # (B, T, T)
wrong_w = F.scaled_dot_product_attention(q, k, identity, attn_mask=causal6.float())  # WRONG: additive
future = ~causal6  # (T, T): the pairs a causal mask blocks
print("any weight on future keys? bool mask:", bool((right_w[:, future] > 0).any()),
      "| float mask:", bool((wrong_w[:, future] > 0).any()))
try:
    scaled_dot_product_attention(q, k, v, causal6.float())
except TypeError as error:
    print("helpers:", str(error).split(". ")[0])

# %% [markdown] id="causal-property"
# ## 8. The causal property
#
# **Main idea.** In a decoder, output $i$ must depend only on positions $0, \dots, i$. During
# training all positions are computed in parallel and position $i$ is trained to predict token
# $i+1$, which is sitting in the same input: if the mask leaked, the model would learn to copy the
# answer instead of predicting it. The test is a perturbation: change the key and value of one
# position $p$; the outputs before $p$ must not move at all.
#
# **Formula.** $\dfrac{\partial o_i}{\partial k_p} = \dfrac{\partial o_i}{\partial v_p} = 0$ for all $p > i$,
# because $A_{ip} = 0$ exactly and $\tilde S_{ip} = -\infty$ whatever $k_p$ is.
#
# **Implementation check.** `q`, `k`, `v`: `(B, T, d)` = `(2, 6, 8)`; changed position $p = 4$;
# per-position change `(B, T)` = `(2, 6)`, reduced over the batch to `(T,)`.

# %% id="causal-property-check"
# NBVAL_CHECK_OUTPUT
T, p = 6, 4
q, k, v = randn(2, T, 8, seed=20), randn(2, T, 8, seed=21), randn(2, T, 8, seed=22)  # (B, T, d)
k2, v2 = k.clone(), v.clone()
k2[:, p] += 10 * randn(2, 8, seed=23)  # a very different key at position p
v2[:, p] += 10 * randn(2, 8, seed=24)  # and a very different value
mask = causal_mask(T, device=device)  # (T, T)


def changed_positions(mask):
    before, _ = scaled_dot_product_attention(q, k, v, mask)  # (B, T, d)
    after, _ = scaled_dot_product_attention(q, k2, v2, mask)  # (B, T, d)
    moved = (before != after).any(dim=-1).any(dim=0)  # (T,): did output t change in any sequence?
    return [t for t in range(T) if moved[t]]


print(f"changed key/value at position {p}")
print("causal mask: outputs that changed", changed_positions(mask))
print("causal mask: outputs before position", p, "bit-for-bit unchanged:", all(t >= p for t in changed_positions(mask)))
print("no mask (WRONG for a decoder): outputs that changed", changed_positions(None))

# %% [markdown] id="causal-property-llm"
# With the mask, only positions 4 and 5 (which are allowed to read position 4) change; without it,
# every position changes: the future leaks backwards.
#
# **In real LLMs.** This is also what makes the KV cache possible (chapter 07): since earlier
# outputs never depend on later tokens, the keys and values of a prefix can be computed once and
# reused while generating. Chapter 09 turns this perturbation into a leakage test for whole models,
# and adds a gradient-based version.

# %% [markdown] id="llm-scale"
# ## 9. Sizes in a real LLM
#
# GPT-2 small: $d_{\text{model}} = 768$, 12 heads, 12 layers, a context of 1024 tokens. The head
# width is $d_{\text{head}} = d_{\text{model}} / H$, and every head of every layer computes a
# $T \times T$ score matrix for every sequence in the batch.

# %% id="llm-scale-gpt2"
# NBVAL_CHECK_OUTPUT
d_model, n_heads, n_layers, context, batch = 768, 12, 12, 1024, 8
d_head = d_model // n_heads
print("d_head =", d_model, "/", n_heads, "=", d_head, "-> scale 1/sqrt(d_head) =", 1 / math.sqrt(d_head))

per_head = context * context  # entries of one (T, T) score matrix
per_layer = batch * n_heads * per_head  # (B, H, T, T) in one layer
all_layers = n_layers * per_layer  # kept for the backward pass during training
MiB, GiB = 2**20, 2**30
print(f"one head, one sequence: {context} x {context} = {per_head:,} entries = {per_head * 4 / MiB:g} MiB in float32")
print(f"one layer, batch {batch}: {per_layer:,} entries = {per_layer * 4 / MiB:g} MiB")
print(f"all {n_layers} layers: {all_layers:,} entries = {all_layers * 4 / GiB:g} GiB")

# %% [markdown] id="llm-scale-growth"
# The matrix grows with the square of the context: twice the tokens, four times the memory.

# %% id="llm-scale-table"
# NBVAL_CHECK_OUTPUT
for T in [1024, 2048, 4096, 8192, 32768]:
    print(f"T = {T:>6}: one head, one sequence, float32 score matrix = {T * T * 4 / MiB:>6g} MiB")

# %% [markdown] id="llm-scale-flops"
# ### FLOPs next to memory
#
# **Main idea.** The score matrix costs memory, and computing it costs arithmetic; both grow with
# $T^2$. Counting a multiply-add as 2 floating-point operations (FLOPs), per head and per sequence:
#
# $$
# \underbrace{QK^\top}_{(T_q, d_k)\,@\,(d_k, T_k)}: \; 2\, T_q T_k\, d_k \text{ FLOPs},
# \qquad
# \underbrace{A V}_{(T_q, T_k)\,@\,(T_k, d_v)}: \; 2\, T_q T_k\, d_v \text{ FLOPs},
# \qquad
# \text{scores: } T_q T_k \text{ numbers}.
# $$
#
# With $T_q = T_k = T$ and $d_k = d_v = d_{\text{head}}$ that is $4 T^2 d_{\text{head}}$ FLOPs
# against $T^2$ stored numbers: the arithmetic carries an extra factor $d_{\text{head}}$, the memory
# does not. (The scaling, the mask and the softmax add a few operations per score, $O(T^2)$, small
# next to these.) The cell checks the two matrix products against torch's own FLOP counter
# (`torch.utils.flop_counter.FlopCounterMode`, which counts what the kernels are asked to do), then
# puts numbers on GPT-2 small at its full context, beside the projections, whose cost grows only
# linearly in $T$: $2 \cdot T \cdot d_{\text{model}}^2$ FLOPs for each of $W_Q, W_K, W_V, W_O$.

# %% id="llm-scale-flops-run"
# NBVAL_CHECK_OUTPUT
from torch.utils.flop_counter import FlopCounterMode

T_small, d_k_small, d_v_small = 96, 64, 48
q_f, k_f = randn(1, T_small, d_k_small, seed=70), randn(1, T_small, d_k_small, seed=71)  # (1, T, d_k)
v_f = randn(1, T_small, d_v_small, seed=72)  # (1, T, d_v)
with FlopCounterMode(display=False) as counter:
    scores_f = q_f @ k_f.transpose(-2, -1)  # (1, T_q, T_k)
counted_scores = counter.get_total_flops()
with FlopCounterMode(display=False) as counter:
    torch.softmax(scores_f, dim=-1) @ v_f  # (1, T_q, d_v)
counted_values = counter.get_total_flops()
print(f"T = {T_small}, d_k = {d_k_small}, d_v = {d_v_small}: QK^T counted {counted_scores:,}, formula "
      f"{2 * T_small**2 * d_k_small:,} | AV counted {counted_values:,}, formula {2 * T_small**2 * d_v_small:,}")

per_head_flops = 2 * context**2 * d_head + 2 * context**2 * d_head  # QK^T and AV, one head, one sequence
per_layer_flops = n_heads * per_head_flops  # = 4 T^2 d_model
projection_flops = 4 * 2 * context * d_model**2  # W_Q, W_K, W_V, W_O on T tokens
print(f"GPT-2 small, T = {context}: one head {per_head_flops / 1e9:.3f} GFLOP for a score matrix of "
      f"{context**2:,} numbers ({context**2 * 4 / MiB:g} MiB in float32), {per_head_flops // context**2} FLOPs per score")
print(f"one layer, one sequence: attention core {per_layer_flops / 1e9:.2f} GFLOP, "
      f"projections {projection_flops / 1e9:.2f} GFLOP")
print(f"the core (4 T^2 d_model) overtakes the projections (8 T d_model^2) at T = 2 d_model = {2 * d_model}")

# %% [markdown] id="llm-scale-next"
# This quadratic cost is why the fast kernels never store the score matrix: FlashAttention
# computes the same output tile by tile with an online softmax, and during generation a KV cache
# avoids recomputing old keys and values. Both are chapter 07; splitting $d_{\text{model}}$ into
# heads is chapter 02.

# %% [markdown] id="common-mistakes"
# ## 10. Common mistakes
#
# Each wrong version below is complete and runs without an error: that is what makes it dangerous.
# Each one is run on the same inputs as the right version, and the cell prints the symptom that gives
# it away. One causal self-attention setup serves them all: $T = 5$, $d_k = 64$, in `float64` so
# the printed digits agree on every machine. The checks in the exercise notebook recognise these
# same mistakes and name them.

# %% id="mistakes-setup"
# NBVAL_CHECK_OUTPUT
T, d_k, d_v = 5, 64, 3
q = randn(T, d_k, seed=30, dtype=torch.float64)  # (T, d_k)
k = randn(T, d_k, seed=31, dtype=torch.float64)  # (T, d_k)
v = randn(T, d_v, seed=32, dtype=torch.float64)  # (T, d_v)
causal = causal_mask(T, device=device)  # (T, T)
raw = q @ k.T  # (T_q, T_k), not yet scaled
right_w = masked_softmax(raw / math.sqrt(d_k), causal)  # (T_q, T_k)
right_out = right_w @ v  # (T_q, d_v)


def leaks(attend):
    """Does changing the value at the last position change any earlier output?"""
    v_changed = v.clone()
    v_changed[-1] += 10.0
    return not torch.equal(attend(v)[:-1], attend(v_changed)[:-1])


def entropy(w):
    return show(torch.special.entr(w).sum(dim=-1), 2)  # one entropy per query row


print("right: row sums", show(right_w.sum(dim=-1), 3), "| leaks:", leaks(lambda v_: right_w @ v_))

# %% [markdown] id="mistake-axis"
# **1. Softmax over the query axis.** Symptom: the *columns* sum to 1 and the rows do not.

# %% id="mistake-axis-run"
# NBVAL_CHECK_OUTPUT
wrong_w = torch.softmax(apply_mask(raw / math.sqrt(d_k), causal), dim=-2)  # WRONG: dim=-2
print("row sums   ", show(wrong_w.sum(dim=-1), 3))
print("column sums", show(wrong_w.sum(dim=-2), 3))

# %% [markdown] id="mistake-no-scale"
# **2. Missing $1/\sqrt{d_k}$.** Symptom: with $d_k = 64$ the scores are 8 times too large, the
# rows are nearly one-hot and their entropy collapses.

# %% id="mistake-no-scale-run"
# NBVAL_CHECK_OUTPUT
wrong_w = masked_softmax(raw, causal)  # WRONG: no scaling
print("largest weight per row, right:", show(right_w.max(dim=-1).values, 3))
print("largest weight per row, wrong:", show(wrong_w.max(dim=-1).values, 3))
print("entropy per row, right:", entropy(right_w), " wrong:", entropy(wrong_w))

# %% [markdown] id="mistake-divide-dk"
# **3. Dividing by $d_k$ instead of $\sqrt{d_k}$.** Symptom: the weights go nearly uniform over the
# allowed keys ($1/(i+1)$ in row $i$), so the entropy approaches its maximum $\log(i+1)$.

# %% id="mistake-divide-dk-run"
# NBVAL_CHECK_OUTPUT
wrong_w = masked_softmax(raw / d_k, causal)  # WRONG: divides by d_k
print("last row, right:", show(right_w[-1], 3))
print("last row, wrong:", show(wrong_w[-1], 3), " uniform would be 0.2")
print("entropy per row, wrong:", entropy(wrong_w), " max:", [round(math.log(i + 1), 2) for i in range(T)])

# %% [markdown] id="mistake-after"
# **4. Mask applied after the softmax.** Symptom: rows no longer sum to 1 (the softmax already
# handed weight to the future keys that the mask then deletes), and because the future scores sit
# in the softmax's denominator, a later key still changes earlier outputs.

# %% id="mistake-after-run"
# NBVAL_CHECK_OUTPUT
wrong_w = torch.softmax(raw / math.sqrt(d_k), dim=-1) * causal  # WRONG: masks the weights afterwards
print("row sums", show(wrong_w.sum(dim=-1), 3))


def attend_after(k_):
    return (torch.softmax(q @ k_.T / math.sqrt(d_k), dim=-1) * causal) @ v  # (T_q, d_v)


k_changed = k.clone()
k_changed[-1] += 10.0
print("changing the last key changes earlier outputs:",
      not torch.equal(attend_after(k)[:-1], attend_after(k_changed)[:-1]))

# %% [markdown] id="mistake-zero"
# **5. Blocked scores filled with 0 instead of $-\infty$.** A score of 0 is an ordinary score:
# $e^0 = 1$. Symptom: blocked keys get weight, and the future leaks.

# %% id="mistake-zero-run"
# NBVAL_CHECK_OUTPUT
wrong_w = torch.softmax((raw / math.sqrt(d_k)).masked_fill(~causal, 0.0), dim=-1)  # WRONG: 0, not -inf
print("weight on blocked keys per row, right:", show((right_w * ~causal).sum(dim=-1), 3))
print("weight on blocked keys per row, wrong:", show((wrong_w * ~causal).sum(dim=-1), 3))
print("future leaks, right:", leaks(lambda v_: right_w @ v_), "| wrong:", leaks(lambda v_: wrong_w @ v_))

# %% [markdown] id="mistake-inverted"
# **6. Inverted mask** (`True` read as "blocked", as `nn.MultiheadAttention` does). Symptom: each
# token reads only the future and never itself; the last token has nothing to read.

# %% id="mistake-inverted-run"
# NBVAL_CHECK_OUTPUT
wrong_w = masked_softmax(raw / math.sqrt(d_k), ~causal)  # WRONG: the mask is inverted


def keys_read(w):
    return [[j for j in range(T) if w[i, j] > 0] for i in range(T)]


print("keys each query reads, right:", keys_read(right_w))
print("keys each query reads, wrong:", keys_read(wrong_w))

# %% [markdown] id="mistake-diagonal"
# **7. Causal mask with the diagonal blocked** (`tril(-1)` or `j < i` instead of `j <= i`).
# Symptom: no token reads itself, and the first token has no key at all, so its output is zeros
# (with a naive softmax, NaN).

# %% id="mistake-diagonal-run"
# NBVAL_CHECK_OUTPUT
strict = torch.ones(T, T, dtype=torch.bool, device=device).tril(-1)  # (T, T)  WRONG: diagonal blocked
wrong_w = masked_softmax(raw / math.sqrt(d_k), strict)
print("weight of each token on itself, right:", show(torch.diagonal(right_w), 3))
print("weight of each token on itself, wrong:", show(torch.diagonal(wrong_w), 3))
print("keys each query reads, wrong:", keys_read(wrong_w))
print("first output, wrong:", show(wrong_w[0] @ v, 3),
      "| naive softmax gives NaN:", torch.isnan(torch.softmax(apply_mask(raw, strict), dim=-1)[0]).all().item())

# %% [markdown] id="mistake-nan"
# **8. A fully blocked row giving NaN.** Symptom: NaN in the output, and then in everything computed
# from it. Section 4's left-padding case, once more: the naive softmax returns NaN for the padded
# rows, `masked_softmax` returns zeros, and the loss computed from the outputs stays finite.

# %% id="mistake-nan-run"
# NBVAL_CHECK_OUTPUT
real = (torch.arange(T, device=device) >= 2)[None, :] & causal  # (T, T): rows 0 and 1 fully blocked
naive_out = torch.softmax(apply_mask(raw / math.sqrt(d_k), real), dim=-1) @ v  # WRONG: NaN rows
safe_out = masked_softmax(raw / math.sqrt(d_k), real) @ v  # (T, d_v)
print("rows with NaN, naive:", [i for i in range(T) if torch.isnan(naive_out[i]).any()],
      "| helpers:", [i for i in range(T) if torch.isnan(safe_out[i]).any()])
print("a loss over all outputs, naive:", naive_out.pow(2).sum().item(),
      "| helpers is finite:", math.isfinite(safe_out.pow(2).sum().item()))

# %% [markdown] id="mistakes-summary"
# | mistake | symptom you can print | the fix |
# |---|---|---|
# | softmax over the query axis | columns sum to 1, rows do not | `dim=-1` |
# | missing $1/\sqrt{d_k}$ | near one-hot rows, entropy near 0 as $d_k$ grows | divide the scores by `math.sqrt(q.shape[-1])` |
# | dividing by $d_k$ | near-uniform rows | divide by $\sqrt{d_k}$ |
# | mask after the softmax | rows sum to less than 1; the future still moves earlier outputs | mask the scores, then softmax |
# | blocked scores set to 0 | blocked keys get weight; the future leaks | fill with $-\infty$ |
# | inverted mask | tokens read only the future; the last row is empty | `True` = allow, convert with `~mask` |
# | diagonal blocked | zero weight on itself; the first row is empty | `tril()` (keep the diagonal) |
# | naive softmax of a fully blocked row | NaN in outputs and loss | zeros for rows with no allowed key |

# %% [markdown] id="self-check"
# ## 11. Self-check
#
# Try to answer before opening each answer.
#
# **Q1.** Queries have shape `(2, 7, 16)` and keys `(2, 9, 16)`. What is the shape of the score matrix,
# and along which axis does the softmax run?
#
# <details><summary>Answer</summary>
#
# `(2, 7, 9)`, i.e. `(B, T_q, T_k)`: one row per query, one column per key. The softmax runs
# along the last axis (`dim=-1`, the keys), so each of the 7 rows is a distribution over 9 keys.
#
# </details>
#
# **Q2.** Why $\sqrt{d_k}$ and not $d_k$?
#
# <details><summary>Answer</summary>
#
# With unit-variance entries the dot product has variance $d_k$, i.e. standard deviation
# $\sqrt{d_k}$. Dividing by the standard deviation brings the scores back to variance 1.
# Dividing by $d_k$ leaves variance $1/d_k$: the scores shrink towards 0 and the weights towards
# uniform (section 3's table).
#
# </details>
#
# **Q3.** A boolean mask entry is `False`. What happens to that score, when, and what weight does the
# key end up with?
#
# <details><summary>Answer</summary>
#
# The pair is blocked: the score becomes $-\infty$ before the softmax, so the key gets weight
# exactly 0 and the other keys' weights are renormalised to sum to 1.
#
# </details>
#
# **Q4.** Write the causal mask for $T = 3$ as `True`/`False` rows.
#
# <details><summary>Answer</summary>
#
# `[True, False, False]`, `[True, True, False]`, `[True, True, True]`: query $i$ may read keys
# $0, \dots, i$ (on and below the diagonal).
#
# </details>
#
# **Q5.** What does `helpers.attention.masked_softmax` return for a query whose keys are all blocked,
# and why not just let the softmax run?
#
# <details><summary>Answer</summary>
#
# All-zero weights, so that query's output is zeros, not NaN. A plain softmax of a row of
# $-\infty$ computes $-\infty - (-\infty)$ = NaN, and NaN spreads to every later layer and to the
# loss. This happens for real with left padding plus a causal mask.
#
# </details>
#
# **Q6.** Every output row of attention lies "between" the value rows. Make that precise.
#
# <details><summary>Answer</summary>
#
# $o_i = \sum_j A_{ij} v_j$ with $A_{ij} \ge 0$ and $\sum_j A_{ij} = 1$: a convex combination of
# the value rows the query may read. Each coordinate of $o_i$ lies between the smallest and the
# largest value of that coordinate among those rows.
#
# </details>
#
# **Q7.** How would you show, with one experiment, that a decoder's attention does not leak the future?
#
# <details><summary>Answer</summary>
#
# Change the key and value (or the input token) at one position $p$ and compare the outputs:
# those before $p$ must be exactly unchanged (section 8). Without the mask they all change.
#
# </details>
#
# **Q8.** GPT-2 small, context 1024, 12 heads, batch 8: how many float32 bytes do the score matrices of
# one layer take?
#
# <details><summary>Answer</summary>
#
# $8 \times 12 \times 1024 \times 1024 = 100{,}663{,}296$ entries, times 4 bytes = 384 MiB per
# layer; 4.5 GiB for all 12 layers if they are kept for the backward pass.
#
# </details>
#
# **Q9.** Why may a softmax subtract the row's maximum without changing the result, and from which
# score on does a naive `exp` overflow in float16?
#
# <details><summary>Answer</summary>
#
# $\operatorname{softmax}(z - c) = \operatorname{softmax}(z)$ for any constant $c$: the factor
# $e^{-c}$ multiplies the numerator and every term of the denominator, and cancels. In float16,
# $\exp$ overflows past $\ln(65504) \approx 11.09$ (float32: $\approx 88.72$).
#
# </details>
#
# **Q10.** When does dot-product attention give the same weights as a Gaussian kernel
# $e^{-\frac12\|q - k_j\|^2}$, and what does the softmax cancel?
#
# <details><summary>Answer</summary>
#
# $-\frac12\|q - k_j\|^2 = q^\top k_j - \frac12\|q\|^2 - \frac12\|k_j\|^2$. The query term is the
# same for every key of the row and cancels; the key term does not. So the weights agree exactly
# when all keys have the same norm; otherwise the dot product favours longer keys.
#
# </details>

# %% [markdown] id="evidence-card"
# ## Evidence card
#
# What you can now show, and the cell that shows it (cell ids are stable; the test suite checks
# every cell marked `# NBVAL_CHECK_OUTPUT`):
#
# | you can show | where |
# |---|---|
# | Q, K, V are `x @ W.T` with `nn.Linear`-layout weights; their shapes for any $B$, $T$, $d_k$, $d_v$ | §1, `qkv-example`, `qkv-shapes` |
# | the score matrix has one row per query, shape `(..., T_q, T_k)` | §2, `scores-example`, `scores-shapes` |
# | $-\frac12\|q-k\|^2 = q^\top k - \frac12\|q\|^2 - \frac12\|k\|^2$; the softmax cancels the query term, not the key term, so dot product = Gaussian kernel only for equal key norms | §2, `scores-kernel-example`, `scores-kernel-run` |
# | additive and bilinear scores; $QK^\top = X (W_Q^\top W_K) X^\top$ with a rank-$d_k$ form | §2, `scores-alternatives-run` |
# | the raw score variance grows like $d_k$ and the $1/\sqrt{d_k}$ scale removes the growth; unscaled softmax saturates | §3, `scaling-variance`, `scaling-softmax`, `scaling-plot` |
# | fresh `nn.Linear` and GPT-2 projections give q and k a variance of about 1/3, not 1 | §3, `scaling-init-run` |
# | the causal allow/block pattern, written with loops and with `causal_mask` | §4, `causal-loops`, `causal-helpers` |
# | padding masks broadcast as `(B, 1, T_k)` and combine with `&` | §4, `padding-mask`, `masking-grids` |
# | left padding with a causal mask leaves the first rows with no allowed key | §4, `padding-left` |
# | a fully blocked query row gives zeros, not NaN, in `helpers` and in torch 2.13.0's `F.scaled_dot_product_attention` | §4, `fully-blocked`, `fully-blocked-torch`; §10, `mistake-nan-run` |
# | `exp` overflows past $\ln(\max)$: 88.72 in float32, 11.09 in float16; subtracting the row maximum changes nothing | §5, `weights-overflow`, `weights-shift` |
# | softmax rows are distributions; a constructed heatmap reads as a pattern | §5, `weights-rows-sum`, `weights-patterns`, `weights-heatmaps` |
# | each output row is a convex combination of value rows | §6, `values-example`, `values-convex` |
# | the step-by-step version equals `F.scaled_dot_product_attention` with and without masks | §7, `full-vs-torch`, `full-weights` |
# | the causal mask stops any leak from the future; no mask leaks | §8, `causal-property-check` |
# | the cost of the score matrix for GPT-2 small and how it grows with $T$ | §9, `llm-scale-gpt2`, `llm-scale-table` |
# | attention's FLOPs, $2T^2d_k + 2T^2d_v$ per head, checked against torch's FLOP counter, next to its memory | §9, `llm-scale-flops-run` |
# | eight common mistakes recognised by their printed symptom | §10, `mistake-*-run` |

# %% [markdown] id="next"
# ## Next: the exercises
#
# Open [`exercises/01_attention/01_attention.ipynb`](../exercises/01_attention/01_attention.ipynb).
# You will compute attention for tiny matrices by hand, then write `attention_scores`,
# `causal_mask`, `apply_mask`, `padding_mask`, `masked_softmax` and `scaled_dot_product_attention`
# yourself. Each exercise has a visible check that runs right away and names the mistake if your
# output matches one of those in section 10.
