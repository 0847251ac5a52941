# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] id="intro"
# # Chapter 03 exercises: the feed-forward network and mixture of experts
#
# You will write the position-wise MLP of a transformer block and its gated Llama variant, count
# what they cost next to attention, write a test that tells a token-independent layer from a
# token-mixing one, and build the router and forward pass of a mixture-of-experts layer:
#
# | # | exercise |
# |---|---|
# | 1 | `gelu(x, approximate="none")` |
# | 2 | `feed_forward(x, w1, b1, w2, b2)` |
# | 3 | `swiglu_ffn(x, w_gate, w_up, w_down)` |
# | 4 | counting: MLP against attention parameters, GPT-2 and Llama |
# | 5 | `is_token_independent(fn, x)` |
# | 6 | `top_k_route(router_logits, k)` |
# | 7 | `moe_forward(x, router_weight, experts, k)` |
# | 8 | MoE numbers: total and active parameters, balance loss, capacity |
#
# **How it works.** Write your answer in the cell marked `# YOUR CODE HERE` (delete the
# `raise NotImplementedError()` line), run it, then run the test cell below it. A visible test
# prints a line starting with ✓ when your answer is right; otherwise it stops with one sentence
# saying what is wrong. After each visible test sits a hidden test: it runs when the notebook is
# graded, with other shapes, seeds, model sizes and `float64` inputs, so make your functions general
# rather than fitted to the visible test.
#
# **Conventions** (the same in every chapter): tensors are `torch`; shapes are written `B` batch,
# `T` tokens, `d_model` model width, `d_ff` the FFN's hidden width, `n_experts` experts, `k` experts
# per token. Weights follow `torch.nn.Linear`: shape `(out_features, in_features)`, and a projection
# is `x @ W.T + b`; so `w1` is `(d_ff, d_model)` and `w2` is `(d_model, d_ff)`. Every function here
# acts on the last axis and must accept any leading axes: `(d_model,)`, `(T, d_model)`,
# `(B, T, d_model)`.
#
# Each exercise says what you may use. Calling `helpers.ffn` (this chapter's reference), or the torch
# built-in an exercise asks you to write, is refused by the checks and scores no points. Run the
# next cell first.

# %% id="setup"
import math

import torch
import torch.nn.functional as F

import helpers
import helpers.checks.ffn  # load the checks before any answer runs

helpers.seed_everything(0)
torch.set_printoptions(precision=4, sci_mode=False)

# %% [markdown] id="ex1"
# ## Exercise 1: GELU, both forms
#
# *Difficulty* ●○○○○ · *Importance* ●●●○○ · *Time* ~10 min · *Points*
#
# GELU weights its input by the probability that a standard normal variable is below it:
# $\operatorname{GELU}(x) = x\,\Phi(x)$. Write `gelu(x, approximate="none")`:
#
# $$
# \texttt{"none"}:\ \tfrac12 x \left(1 + \operatorname{erf}\!\left(\tfrac{x}{\sqrt 2}\right)\right)
# \qquad
# \texttt{"tanh"}:\ \tfrac12 x \left(1 + \tanh\!\left(\sqrt{2/\pi}\,\left(x + 0.044715\,x^3\right)\right)\right)
# $$
#
# | argument | meaning |
# |---|---|
# | `x` | a floating-point tensor of any shape |
# | `approximate` | `"none"` (exact, the default) or `"tanh"` (GPT-2's form) |
# | returns | the same shape and dtype as `x` |
#
# **You may use** `torch.erf`, `torch.tanh`, `math.sqrt`, `math.pi`. **Not allowed:** `F.gelu`,
# `torch.nn.GELU`, `helpers.ffn`.
#
# <details><summary>Hint: my values are off by up to 5e-4</summary>
#
# You returned the tanh form for `approximate="none"` (or the reverse). The two agree to about
# three decimals only; the check compares to float precision.
# </details>
#
# <details><summary>Hint: the test says erf takes x / sqrt(2)</summary>
#
# $\Phi(x) = \tfrac12\left(1 + \operatorname{erf}(x/\sqrt2)\right)$: `torch.erf(x / math.sqrt(2))`.
# </details>

# %% id="ex1-answer" kind="answer"
def gelu(x, approximate="none"):
    ### BEGIN SOLUTION
    if approximate == "tanh":
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
    ### END SOLUTION


# %% id="ex1-test" kind="test" points=1
from helpers.checks.ffn import check_gelu

check_gelu(gelu)

# %% id="ex1-hidden" kind="test" points=2
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_gelu(gelu, seed=5, dtype=torch.float64, B=3, T=4, d=9)
check_gelu(gelu, seed=13, dtype=torch.float32, B=1, T=8, d=2)
### END HIDDEN TESTS

# %% [markdown] id="ex2"
# ## Exercise 2: the feed-forward network
#
# *Difficulty* ●○○○○ · *Importance* ●●●●● · *Time* ~10 min · *Points*
#
# Write the GPT-2 MLP: expand each token to `d_ff` hidden units, apply GELU (exact), project back.
#
# $$
# \operatorname{FFN}(x) = W_2\,\operatorname{GELU}(W_1 x + b_1) + b_2
# \qquad\text{in code: } \texttt{gelu(x @ w1.T + b1) @ w2.T + b2}
# $$
#
# | argument | shape |
# |---|---|
# | `x` | `(..., d_model)` |
# | `w1`, `b1` | `(d_ff, d_model)`, `(d_ff,)` |
# | `w2`, `b2` | `(d_model, d_ff)`, `(d_model,)` |
# | returns | `(..., d_model)`, the dtype of `x` |
#
# **You may use** `F.gelu` (exact form, its default), `F.linear`, `@`, or your `gelu` from
# exercise 1. **Not allowed:** `helpers.ffn`.
#
# <details><summary>Hint: the test says the activation is after the second projection</summary>
#
# The nonlinearity sits *between* the two projections, on the `d_ff` hidden units. The block's
# output is a linear map of them: no GELU after `w2`.
# </details>
#
# <details><summary>Hint: RuntimeError "mat1 and mat2 shapes cannot be multiplied (… and 11x6)"</summary>
#
# With the `nn.Linear` layout, a projection is `x @ w.T`, not `x @ w`.
# </details>

# %% id="ex2-answer" kind="answer"
def feed_forward(x, w1, b1, w2, b2):
    ### BEGIN SOLUTION
    hidden = F.gelu(x @ w1.T + b1)  # (..., d_ff)
    return hidden @ w2.T + b2  # (..., d_model)
    ### END SOLUTION


# %% id="ex2-test" kind="test" points=1
from helpers.checks.ffn import check_feed_forward

check_feed_forward(feed_forward)

# %% id="ex2-hidden" kind="test" points=2
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_feed_forward(feed_forward, seed=5, dtype=torch.float64, B=3, T=4, d_model=5, d_ff=8)
check_feed_forward(feed_forward, seed=19, dtype=torch.float32, B=1, T=2, d_model=12, d_ff=3)
### END HIDDEN TESTS

# %% [markdown] id="ex3"
# ## Exercise 3: SwiGLU
#
# *Difficulty* ●●○○○ · *Importance* ●●●●○ · *Time* ~10 min · *Points*
#
# Llama, Mistral and most recent open models replace the MLP by a gated one with three bias-free
# matrices: one branch (the **gate**) goes through SiLU, the other (**up**) stays linear, their
# elementwise product is projected back (**down**):
#
# $$
# \operatorname{SwiGLU}(x) = W_{\text{down}}\left(\operatorname{SiLU}(W_{\text{gate}}\,x) \odot W_{\text{up}}\,x\right),
# \qquad \operatorname{SiLU}(z) = z\,\sigma(z)
# $$
#
# | argument | shape |
# |---|---|
# | `x` | `(..., d_model)` |
# | `w_gate`, `w_up` | `(d_ff, d_model)` each |
# | `w_down` | `(d_model, d_ff)` |
# | returns | `(..., d_model)` |
#
# **You may use** `F.silu`, `torch.sigmoid`, `@`. **Not allowed:** `helpers.ffn`.
#
# <details><summary>Hint: the test says gate and up are swapped</summary>
#
# Both branches have the same shape, so nothing crashes. SiLU goes on `x @ w_gate.T`; `x @ w_up.T`
# is multiplied in unchanged. A model trained one way and run the other gives wrong outputs.
# </details>

# %% id="ex3-answer" kind="answer"
def swiglu_ffn(x, w_gate, w_up, w_down):
    ### BEGIN SOLUTION
    gate = F.silu(x @ w_gate.T)  # (..., d_ff)
    up = x @ w_up.T  # (..., d_ff)
    return (gate * up) @ w_down.T  # (..., d_model)
    ### END SOLUTION


# %% id="ex3-test" kind="test" points=1
from helpers.checks.ffn import check_swiglu_ffn

check_swiglu_ffn(swiglu_ffn)

# %% id="ex3-hidden" kind="test" points=2
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_swiglu_ffn(swiglu_ffn, seed=5, dtype=torch.float64, B=3, T=4, d_model=5, d_ff=8)
check_swiglu_ffn(swiglu_ffn, seed=29, dtype=torch.float32, B=2, T=1, d_model=3, d_ff=10)
### END HIDDEN TESTS

# %% [markdown] id="ex4"
# ## Exercise 4: count MLP parameters and compare them with attention
#
# *Difficulty* ●●○○○ · *Importance* ●●●●● · *Time* ~15 min · *Points*
#
# Answer with numbers (Python ints or floats), computed by hand or with arithmetic in the cell, not
# by building layers. Standard multi-head attention has four `(d_model, d_model)` projections
# $W_Q, W_K, W_V, W_O$ (the number of heads does not change the count); layer norms are left out.
#
# **GPT-2 small**: `d_model = 768`, `d_ff = 3072`, 12 heads, biases on every linear layer, GELU MLP.
#
# 1. `gpt2_mlp`: parameters of one block's MLP (weights and biases).
# 2. `gpt2_attention`: parameters of one block's attention (weights and biases).
# 3. `gpt2_mlp_share`: the MLP's share of the two, `gpt2_mlp / (gpt2_mlp + gpt2_attention)`.
#
# **Llama-2 7B**: `d_model = 4096`, `d_ff = 11008`, 32 heads, no biases anywhere, SwiGLU MLP.
#
# 4. `llama_mlp`: parameters of one block's SwiGLU MLP.
# 5. `llama_attention`: parameters of one block's attention.
# 6. `llama_mlp_over_attention`: `llama_mlp / llama_attention`.
#
# **The SwiGLU width.**
#
# 7. `swiglu_d_ff`: a bias-free SwiGLU MLP should have exactly as many parameters as a bias-free GELU
#    MLP with `d_ff = 4 d_model`. What is its `d_ff` for `d_model = 768`?
#
# <details><summary>Hint: my GPT-2 MLP count is 3840 short</summary>
#
# $3840 = 3072 + 768$: the biases. `fc1` adds one bias per hidden unit, `fc2` one per output.
# </details>
#
# <details><summary>Hint: question 7</summary>
#
# Set $3\,d_{\text{model}}\,d_{ff} = 2\,d_{\text{model}}\,(4\,d_{\text{model}})$ and solve for $d_{ff}$.
# </details>

# %% id="ex4-answer" kind="answer"
gpt2_mlp = None
gpt2_attention = None
gpt2_mlp_share = None
llama_mlp = None
llama_attention = None
llama_mlp_over_attention = None
swiglu_d_ff = None
### BEGIN SOLUTION
gpt2_mlp = 2 * 768 * 3072 + 3072 + 768
gpt2_attention = 4 * 768 * 768 + 4 * 768
gpt2_mlp_share = gpt2_mlp / (gpt2_mlp + gpt2_attention)
llama_mlp = 3 * 4096 * 11008
llama_attention = 4 * 4096 * 4096
llama_mlp_over_attention = llama_mlp / llama_attention
swiglu_d_ff = 8 * 768 // 3
### END SOLUTION

# %% id="ex4-test" kind="test" points=2
from helpers.checks.ffn import check_param_counts

check_param_counts(gpt2_mlp=gpt2_mlp, gpt2_attention=gpt2_attention, gpt2_mlp_share=gpt2_mlp_share,
                   llama_mlp=llama_mlp, llama_attention=llama_attention,
                   llama_mlp_over_attention=llama_mlp_over_attention, swiglu_d_ff=swiglu_d_ff)

# %% id="ex4-hidden" kind="test" points=1
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
_unanswered = [_n for _n, _v in {"gpt2_mlp": gpt2_mlp, "gpt2_attention": gpt2_attention, "gpt2_mlp_share": gpt2_mlp_share, "llama_mlp": llama_mlp, "llama_attention": llama_attention, "llama_mlp_over_attention": llama_mlp_over_attention, "swiglu_d_ff": swiglu_d_ff}.items() if _v is None]
assert not _unanswered, f"no answer yet for {', '.join(_unanswered)}: assign each a value and run its cell"
_d, _f, _L, _Lf = 768, 3072, 4096, 11008
assert int(gpt2_mlp) == _d * _f + _f + _f * _d + _d
assert int(gpt2_attention) == 4 * (_d * _d + _d)
assert abs(float(gpt2_mlp_share) - 2 / 3) < 1e-3
assert int(llama_mlp) == 3 * _L * _Lf and int(llama_attention) == 4 * _L**2
assert abs(float(llama_mlp_over_attention) - 3 * _Lf / (4 * _L)) < 1e-3
assert int(swiglu_d_ff) == 2 * 4 * _d // 3
### END HIDDEN TESTS

# %% [markdown] id="ex5"
# ## Exercise 5: a test for token independence
#
# *Difficulty* ●●●○○ · *Importance* ●●●●○ · *Time* ~15 min · *Points*
#
# The FFN is applied to every position separately: output $i$ depends on token $i$ and on nothing
# else. Attention is the opposite. Write a function that tells them apart by experiment:
#
# `is_token_independent(fn, x) -> bool`
#
# | argument | meaning |
# |---|---|
# | `fn` | a layer: takes `(B, T, d_model)`, returns `(B, T, d_model)` |
# | `x` | an input `(B, T, d_model)` to probe it with |
# | returns | `True` if changing any one token `j` leaves the output at every position `i != j` unchanged, else `False` |
#
# The check runs your function on eight layers it builds: three that are token-independent (an FFN,
# a SwiGLU FFN, a LayerNorm) and five that mix tokens, some of them only slightly or only between
# two far-apart positions. A function that always says `True` (or always `False`) fails.
#
# **You may use** anything in torch (`clone`, `torch.allclose`, `torch.equal`, ...). **Not
# allowed:** `helpers.ffn`'s `token_influence`. Do not modify `x` in place: change a copy.
#
# <details><summary>Hint: it returns False for an FFN</summary>
#
# The perturbed token's own output *does* change. Compare only the other positions.
# </details>
#
# <details><summary>Hint: it returns True for causal self-attention</summary>
#
# In a causal layer nobody reads the last token, so perturbing only the last token shows nothing.
# Perturb every position `j` in turn (a loop over `T` is fine).
# </details>
#
# <details><summary>Hint: permuting the tokens</summary>
#
# Attention without position information is permutation-equivariant too, so permuting the tokens
# cannot tell it from an FFN. Perturb one token at a time instead.
# </details>

# %% id="ex5-answer" kind="answer"
def is_token_independent(fn, x):
    ### BEGIN SOLUTION
    base = fn(x)  # (B, T, d_model)
    T = x.shape[1]
    for j in range(T):
        moved = x.clone()
        moved[:, j] += 1.0  # change token j in every sequence
        out = fn(moved)  # (B, T, d_model)
        others = [i for i in range(T) if i != j]
        if not torch.allclose(out[:, others], base[:, others]):
            return False
    return True
    ### END SOLUTION


# %% id="ex5-test" kind="test" points=2
from helpers.checks.ffn import check_token_independence_test

check_token_independence_test(is_token_independent)

# %% id="ex5-hidden" kind="test" points=2
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_token_independence_test(is_token_independent, seed=5, dtype=torch.float64, B=3, T=7, d_model=4)
check_token_independence_test(is_token_independent, seed=41, dtype=torch.float32, B=1, T=3, d_model=8)
### END HIDDEN TESTS

# %% [markdown] id="ex6"
# ## Exercise 6: the top-k router
#
# *Difficulty* ●●○○○ · *Importance* ●●●●○ · *Time* ~10 min · *Points*
#
# A mixture-of-experts layer scores every expert for every token (the router logits), keeps the
# `k` best experts of each token, and weights them with a softmax over **those k logits only**
# (Mixtral's convention), so each token's weights sum to 1.
#
# `top_k_route(router_logits, k) -> (weights, expert_indices)`
#
# | argument | shape |
# |---|---|
# | `router_logits` | `(..., n_experts)` |
# | `k` | an int, `1 <= k <= n_experts` |
# | returns `weights` | `(..., k)`, the dtype of the logits, each row summing to 1 |
# | returns `expert_indices` | `(..., k)`, `torch.int64`, largest logit first (as `torch.topk` returns them) |
#
# **You may use** `torch.topk`, `torch.softmax`, `torch.sort`. **Not allowed:** `helpers.ffn`.
#
# <details><summary>Hint: my weights sum to less than 1</summary>
#
# A softmax over all experts, then keeping the k largest probabilities, leaves out the other
# experts' share. Take the softmax over the k chosen logits, or divide the k probabilities by
# their sum: both give the same numbers.
# </details>

# %% id="ex6-answer" kind="answer"
def top_k_route(router_logits, k):
    ### BEGIN SOLUTION
    top_logits, expert_indices = router_logits.topk(k, dim=-1)  # (..., k), (..., k)
    return torch.softmax(top_logits, dim=-1), expert_indices
    ### END SOLUTION


# %% id="ex6-test" kind="test" points=1
from helpers.checks.ffn import check_top_k_route

check_top_k_route(top_k_route)

# %% id="ex6-hidden" kind="test" points=2
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_top_k_route(top_k_route, seed=5, dtype=torch.float64, B=3, T=4, n_experts=6, k=2)
check_top_k_route(top_k_route, seed=31, dtype=torch.float32, B=2, T=9, n_experts=4, k=4)
### END HIDDEN TESTS

# %% [markdown] id="ex7"
# ## Exercise 7: the MoE forward pass
#
# *Difficulty* ●●●○○ · *Importance* ●●●●○ · *Time* ~20 min · *Points*
#
# Put a router in front of `n_experts` FFNs. Each token goes to its top-k experts and receives the
# weighted sum of their outputs:
#
# $$
# \operatorname{MoE}(x) = \sum_{e \in \operatorname{TopK}(x)} w_e(x)\,\operatorname{expert}_e(x),
# \qquad \text{router logits} = x\,W_r^\top
# $$
#
# `moe_forward(x, router_weight, experts, k)`
#
# | argument | shape / meaning |
# |---|---|
# | `x` | `(..., d_model)` |
# | `router_weight` | `(n_experts, d_model)` |
# | `experts` | a list of `n_experts` functions; `experts[e](tokens)` maps `(N, d_model)` to `(N, d_model)` |
# | `k` | experts per token |
# | returns | `(..., d_model)` |
#
# A real implementation runs each expert only on the tokens routed to it; running every expert on
# every token and keeping the chosen ones gives the same numbers and is fine here.
#
# **You may use** your `top_k_route` from exercise 6 or `helpers.ffn.top_k_route`, and anything in
# torch. **Not allowed:** `helpers.ffn.moe_forward` and `helpers.ffn.MoEFFN`.
#
# <details><summary>Hint: where do the tokens go?</summary>
#
# Flatten `x` to `(N, d_model)`. For each expert `e`, `torch.where(expert_indices == e)` gives the
# (token, slot) pairs routed to it; run the expert on those tokens, multiply by their weights
# `weights[token, slot]`, and add the result into those rows of the output (`index_add`).
# </details>
#
# <details><summary>Hint: each weight is paired with the wrong expert</summary>
#
# `weights[..., s]` belongs to `expert_indices[..., s]`; sorting one without the other breaks the pairs.
# </details>

# %% id="ex7-answer" kind="answer"
def moe_forward(x, router_weight, experts, k):
    ### BEGIN SOLUTION
    flat = x.reshape(-1, x.shape[-1])  # (N, d_model)
    top_logits, chosen = (flat @ router_weight.T).topk(k, dim=-1)  # (N, k), (N, k)
    weights = torch.softmax(top_logits, dim=-1)  # (N, k)
    out = torch.zeros_like(flat)  # (N, d_model)
    for e, expert in enumerate(experts):
        token, slot = torch.where(chosen == e)  # (n_e,), (n_e,)
        if len(token) > 0:
            out = out.index_add(0, token, weights[token, slot, None] * expert(flat[token]))
    return out.reshape(x.shape)  # (..., d_model)
    ### END SOLUTION


# %% id="ex7-test" kind="test" points=2
from helpers.checks.ffn import check_moe_forward

check_moe_forward(moe_forward)

# %% id="ex7-hidden" kind="test" points=2
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_moe_forward(moe_forward, seed=5, dtype=torch.float64, B=3, T=4, d_model=5, d_ff=7, n_experts=6, k=3)
check_moe_forward(moe_forward, seed=37, dtype=torch.float32, B=1, T=11, d_model=3, d_ff=2, n_experts=4, k=4)
### END HIDDEN TESTS

# %% [markdown] id="ex8"
# ## Exercise 8: MoE numbers
#
# *Difficulty* ●●○○○ · *Importance* ●●●○○ · *Time* ~15 min · *Points*
#
# Answer with numbers (Python ints or floats).
#
# **Total and active parameters.** Mixtral 8x7B has, in every layer, 8 SwiGLU experts with
# `d_model = 4096` and `d_ff = 14336`, no biases, and routes each token to `k = 2` of them.
#
# 1. `mixtral_total_expert_params`: the parameters of all 8 expert FFNs of one layer (leave the router out).
# 2. `mixtral_active_expert_params`: the expert parameters one token actually uses in one layer.
#
# **The balance loss.** Switch Transformer's auxiliary loss is
# $\mathcal{L}_{\text{bal}} = n\sum_{i=1}^{n} f_i P_i$, where $f_i$ is the fraction of tokens routed
# to expert $i$ and $P_i$ the router's softmax probability of expert $i$, averaged over the tokens.
# A batch of 8 tokens is routed top-1 over $n = 4$ experts: the experts receive **4, 2, 1, 1**
# tokens, and the mean router probabilities are $P = (0.4, 0.3, 0.2, 0.1)$.
#
# 3. `balance_loss`: $\mathcal{L}_{\text{bal}}$ for this batch.
# 4. `balanced_loss`: its value when routing is perfectly even ($f_i = P_i = 1/n$).
#
# **Capacity.** Each expert has $\lceil c \cdot \text{tokens} \cdot k / n \rceil$ slots, $c$ the
# capacity factor; assignments beyond an expert's slots are dropped (the token skips the layer
# through the residual connection).
#
# 5. `capacity`: slots per expert for the batch above with $c = 1.0$.
# 6. `dropped`: how many of the 8 tokens are dropped with that capacity?
# 7. `dropped_at_1_5`: and with $c = 1.5$?
#
# <details><summary>Hint: question 3</summary>
#
# $f = (4, 2, 1, 1) / 8$. Multiply each $f_i$ by $P_i$, add up, multiply by $n = 4$.
# </details>
#
# <details><summary>Hint: questions 6 and 7</summary>
#
# An expert with more tokens than slots serves the first ones and drops the rest; an expert with
# free slots drops nothing.
# </details>

# %% id="ex8-answer" kind="answer"
mixtral_total_expert_params = None
mixtral_active_expert_params = None
balance_loss = None
balanced_loss = None
capacity = None
dropped = None
dropped_at_1_5 = None
### BEGIN SOLUTION
mixtral_total_expert_params = 8 * 3 * 4096 * 14336
mixtral_active_expert_params = 2 * 3 * 4096 * 14336
balance_loss = 4 * (4 / 8 * 0.4 + 2 / 8 * 0.3 + 1 / 8 * 0.2 + 1 / 8 * 0.1)
balanced_loss = 1.0
capacity = math.ceil(1.0 * 8 * 1 / 4)
dropped = (4 - capacity) + max(2 - capacity, 0)
dropped_at_1_5 = 4 - math.ceil(1.5 * 8 / 4)
### END SOLUTION

# %% id="ex8-test" kind="test" points=2
from helpers.checks.ffn import check_moe_numbers

check_moe_numbers(mixtral_total_expert_params=mixtral_total_expert_params,
                  mixtral_active_expert_params=mixtral_active_expert_params,
                  balance_loss=balance_loss, balanced_loss=balanced_loss,
                  capacity=capacity, dropped=dropped, dropped_at_1_5=dropped_at_1_5)

# %% id="ex8-hidden" kind="test" points=1
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
_unanswered = [_n for _n, _v in {"mixtral_total_expert_params": mixtral_total_expert_params, "mixtral_active_expert_params": mixtral_active_expert_params, "balance_loss": balance_loss, "balanced_loss": balanced_loss, "capacity": capacity, "dropped": dropped, "dropped_at_1_5": dropped_at_1_5}.items() if _v is None]
assert not _unanswered, f"no answer yet for {', '.join(_unanswered)}: assign each a value and run its cell"
_expert = 3 * 4096 * 14336
assert int(mixtral_total_expert_params) == 8 * _expert and int(mixtral_active_expert_params) == 2 * _expert
assert abs(float(balance_loss) - 4 * sum(c / 8 * p for c, p in zip((4, 2, 1, 1), (0.4, 0.3, 0.2, 0.1)))) < 1e-6
assert abs(float(balanced_loss) - 1) < 1e-6
assert int(capacity) == 2 and int(dropped) == 2 and int(dropped_at_1_5) == 1
### END HIDDEN TESTS

# %% [markdown] id="outro"
# ## Done
#
# With every visible test passing you have written the second half of every transformer block and
# the routing of a mixture-of-experts layer. Next: chapter 04 wraps attention and the FFN in
# residual connections and normalization. To see all your points, including the hidden tests, grade
# the whole notebook (see the README's learner section).
