# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] id="intro"
# # Chapter 03: the feed-forward network, and mixture of experts
#
# A transformer block does two different jobs, one after the other. **Attention** (chapters 01
# and 02) moves information *between* positions: each token reads the others. The **feed-forward
# network** (FFN, also called the MLP) then works on *each position by itself*: the same small
# two-layer network is applied to every token's vector, with no look at its neighbours. Most of a
# block's parameters live here, and in a mixture-of-experts (MoE) model this is the part that is
# split into many experts, of which each token uses only a few.
#
# $$
# \operatorname{FFN}(x) = W_2\,\phi(W_1 x + b_1) + b_2, \qquad x \in \mathbb{R}^{d_{\text{model}}},\;
# W_1 \in \mathbb{R}^{d_{ff} \times d_{\text{model}}},\; W_2 \in \mathbb{R}^{d_{\text{model}} \times d_{ff}}
# $$
#
# **The shape contract.** The FFN acts on the last axis only; every leading axis rides along.
#
# | tensor | shape | what it is |
# |---|---|---|
# | input $X$ | `(B, T, d_model)` | one vector per token |
# | hidden $H = \phi(X W_1^\top + b_1)$ | `(B, T, d_ff)` | `d_ff` (usually $4 d_{\text{model}}$) activations per token |
# | output $H W_2^\top + b_2$ | `(B, T, d_model)` | same shape as the input, added to the residual stream |
# | router logits (MoE) | `(B, T, n_experts)` | one score per expert per token |
# | routing weights, expert indices | `(B, T, k)` each | the k experts a token uses, and how much of each |
#
# **Map of this notebook.**
#
# 1. The position-wise MLP: two projections and a nonlinearity
# 2. The expansion ratio, and the FFN as a key-value memory
# 3. Activations: ReLU, GELU (exact and tanh) and SiLU
# 4. Gated FFNs: SwiGLU and its $8/3$ width
# 5. Parameter count: the MLP is two thirds of a GPT-2 block
# 6. Token independence: the FFN never mixes positions
# 7. Mixture of experts: routing, total vs active parameters, load balance, capacity, serving cost
# 8. Common mistakes, self-check and evidence card
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
from helpers.attention import causal_mask, scaled_dot_product_attention
from helpers.ffn import (
    FeedForward,
    MoEFFN,
    SwiGLUFFN,
    block_param_counts,
    capacity_keep,
    expert_capacity,
    feed_forward,
    ffn_param_count,
    gelu,
    load_balancing_loss,
    moe_forward,
    moe_param_count,
    relu,
    silu,
    swiglu_ffn,
    swiglu_width,
    token_influence,
    top_k_route,
)

helpers.seed_everything(0)
device = helpers.get_device()
print("computing on:", device.type)


def randn(*shape: int, seed: int, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> torch.Tensor:
    """Standard-normal numbers drawn on the CPU from their own seed, then moved to `device`.

    A GPU's generator gives other numbers than the CPU's for the same seed; drawing on the CPU gives
    every machine the same inputs, so the printed results agree everywhere.
    """
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=generator, dtype=dtype) * scale).to(device)


def show(t: torch.Tensor, digits: int = 4) -> list:
    """A tensor as plain nested lists of rounded floats: no device, no dtype, no -0.0."""
    return (torch.round(t.detach().double().cpu(), decimals=digits) + 0.0).tolist()


# %% [markdown] id="mlp"
# ## 1. The position-wise MLP
#
# **Main idea.** After attention has gathered information from other positions into each token's
# vector, the FFN *processes* it: it expands the vector to a wider hidden layer, applies a
# nonlinearity elementwise, and projects back to $d_{\text{model}}$. It uses the same weights at every
# position, like a $1 \times 1$ convolution over the sequence. The nonlinearity in the middle is the
# point: without it, the two projections would multiply into a single linear map.
#
# **Formula.** For one token $x \in \mathbb{R}^{d_{\text{model}}}$, and in batched code with
# `nn.Linear`-layout weights:
#
# $$
# h = \phi(W_1 x + b_1) \in \mathbb{R}^{d_{ff}}, \qquad y = W_2 h + b_2 \in \mathbb{R}^{d_{\text{model}}}
# \qquad\Longleftrightarrow\qquad
# \texttt{y = phi(x @ W1.T + b1) @ W2.T + b2}
# $$
#
# **Worked example.** $d_{\text{model}} = 2$, $d_{ff} = 4$, ReLU, small integers so every entry can be
# checked by hand. Token $x = [1, -2]$: the pre-activations are $W_1 x + b_1 = [1, -2, -1, 3] + [0, 1, 0, -1]
# = [1, -1, -1, 2]$; ReLU keeps $[1, 0, 0, 2]$; then $W_2 h + b_2 = [1 + 0 + 0 + 2,\; 1 - 0 + 0 - 2] +
# [0.5, 0] = [3.5, -1]$.

# %% id="mlp-example"
# NBVAL_CHECK_OUTPUT
W1 = torch.tensor([[1., 0.], [0., 1.], [1., 1.], [1., -1.]], device=device)  # (d_ff, d_model) = (4, 2)
b1 = torch.tensor([0., 1., 0., -1.], device=device)  # (d_ff,)
W2 = torch.tensor([[1., 1., 1., 1.], [1., -1., 1., -1.]], device=device)  # (d_model, d_ff) = (2, 4)
b2 = torch.tensor([0.5, 0.], device=device)  # (d_model,)
x_tok = torch.tensor([1., -2.], device=device)  # (d_model,)

pre = x_tok @ W1.T + b1  # (d_ff,)
hidden = pre.clamp(min=0)  # (d_ff,): ReLU
y_tok = hidden @ W2.T + b2  # (d_model,)
print("pre-activation", show(pre), "-> hidden", show(hidden), "-> output", show(y_tok))
print("helpers.ffn.feed_forward:", show(feed_forward(x_tok, W1, b1, W2, b2, activation="relu")))

# %% [markdown] id="mlp-check"
# **Implementation check.** Shapes first, with sizes that are all different: $B = 2$, $T = 5$,
# $d_{\text{model}} = 6$, $d_{ff} = 24$:
#
# - `x`: `(B, T, d_model)` = `(2, 5, 6)`
# - `W1`: `(d_ff, d_model)` = `(24, 6)`; `x @ W1.T + b1`: `(B, T, d_ff)` = `(2, 5, 24)`
# - `W2`: `(d_model, d_ff)` = `(6, 24)`; output: `(B, T, d_model)` = `(2, 5, 6)`
#
# `helpers.ffn.FeedForward` holds the weights in two `nn.Linear` layers; it must equal
# `nn.Sequential(Linear, GELU, Linear)` built from the same layers.

# %% id="mlp-shapes"
# NBVAL_CHECK_OUTPUT
torch.manual_seed(0)
mlp = FeedForward(d_model=6, d_ff=24).to(device)  # fc1 (24, 6), fc2 (6, 24)
x = randn(2, 5, 6, seed=1)  # (B, T, d_model)
hidden = F.gelu(x @ mlp.fc1.weight.T + mlp.fc1.bias)  # (B, T, d_ff)
out = mlp(x)  # (B, T, d_model)
oracle = torch.nn.Sequential(mlp.fc1, torch.nn.GELU(), mlp.fc2)
print("x", tuple(x.shape), "-> hidden", tuple(hidden.shape), "-> out", tuple(out.shape))
print("fc1.weight", tuple(mlp.fc1.weight.shape), " fc2.weight", tuple(mlp.fc2.weight.shape))
print("same as nn.Sequential(Linear, GELU, Linear):", torch.allclose(out, oracle(x), atol=1e-6))

# %% [markdown] id="mlp-llm"
# **In real LLMs.** GPT-2 calls these layers `mlp.c_fc` ($768 \to 3072$) and `mlp.c_proj`
# ($3072 \to 768$); BERT calls them `intermediate.dense` and `output.dense`; Llama has three,
# `gate_proj`, `up_proj` and `down_proj` (section 4). In every case the block computes
# `x = x + mlp(norm(x))`: the FFN's output is an *edit* added to the residual stream (chapter 04).
#
# **Common mistake: the activation after the second projection.** `gelu(W2 (W1 x + b1) + b2)` has no
# nonlinearity between the two matrices, so they collapse into one linear map $W_2 W_1$, and its
# outputs can never go below GELU's minimum of about $-0.17$, whereas the FFN's output is an unbounded
# edit to the residual stream. Both symptoms, computed:

# %% id="mlp-mistake"
# NBVAL_CHECK_OUTPUT
W1g, b1g, W2g, b2g = mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias
right = feed_forward(x, W1g, b1g, W2g, b2g)  # (B, T, d_model)
wrong = F.gelu((x @ W1g.T + b1g) @ W2g.T + b2g)  # WRONG: the activation comes last
inner = (x @ W1g.T + b1g) @ W2g.T + b2g  # the part before the misplaced GELU...
W_merged, b_merged = W2g @ W1g, W2g @ b1g + b2g  # ...is one linear map (d_model, d_model)
print("inner part is a single linear map:", torch.allclose(inner, x @ W_merged.T + b_merged, atol=1e-5))
print("smallest output, right:", round(right.min().item(), 3), "| wrong:", round(wrong.min().item(), 3),
      "| GELU's minimum:", round(gelu(torch.tensor(-0.7518)).item(), 3))

# %% [markdown] id="ratio"
# ## 2. The expansion ratio, and the FFN as a memory
#
# **Main idea.** The hidden layer is wider than the model: $d_{ff} = 4\,d_{\text{model}}$ in the
# original transformer, GPT-2 and BERT. A useful way to read the FFN (Geva et al., 2021, "Transformer
# feed-forward layers are key-value memories"): each row $k_j$ of $W_1$ is a **key**, a pattern
# the hidden unit $j$ detects in the token's vector; each column $v_j$ of $W_2$ is a **value**, the
# vector that unit writes into the output. The output is a sum of values, each weighted by how
# strongly its key fired. A wider $d_{ff}$ means more key-value pairs: more patterns the layer can
# store.
#
# **Formula.**
#
# $$
# y = \sum_{j=1}^{d_{ff}} \phi(k_j \cdot x + b_{1,j})\; v_j + b_2,
# \qquad k_j = W_1[j, :],\quad v_j = W_2[:, j].
# $$
#
# **Worked example.** The ReLU token of section 1 again: units 0 and 3 fired with strengths 1 and 2,
# so the output is $1 \cdot v_0 + 2 \cdot v_3 + b_2 = [1, 1] + 2\,[1, -1] + [0.5, 0] = [3.5, -1]$.

# %% id="ratio-memory"
# NBVAL_CHECK_OUTPUT
as_sum = b2.clone()
for j in range(W1.shape[0]):
    strength = torch.relu(W1[j] @ x_tok + b1[j])  # how strongly key j fires
    if strength > 0:
        print(f"unit {j}: key {show(W1[j], 1)} fires {strength.item():.1f} -> writes {strength.item():.1f} x value {show(W2[:, j], 1)}")
    as_sum = as_sum + strength * W2[:, j]  # (d_model,)
print("sum of values:", show(as_sum), "| the FFN's output:", show(y_tok), "| allclose:", torch.allclose(as_sum, y_tok))

# the same reading for the GELU FFN of section 1 on a whole batch: 24 keys, 24 values
memory = mlp.fc2.bias.expand(2, 5, 6).clone()  # (B, T, d_model): start from b2
for j in range(mlp.fc1.weight.shape[0]):  # d_ff = 24 key-value pairs
    strength = F.gelu(x @ mlp.fc1.weight[j] + mlp.fc1.bias[j])  # (B, T): how strongly key j fires per token
    memory = memory + strength[..., None] * mlp.fc2.weight[:, j]  # (B, T, d_model): add value j, weighted
print("batch (2, 5, 6): sum over 24 weighted values == FeedForward output (allclose):",
      torch.allclose(memory, mlp(x), atol=1e-6))

# %% [markdown] id="ratio-table"
# **In real LLMs.** The ratio $d_{ff} / d_{\text{model}}$ of a few published models (gated models
# use about $8/3$ or more, for the reason in section 4):

# %% id="ratio-models"
# NBVAL_CHECK_OUTPUT
models = [  # (name, d_model, d_ff, FFN type)
    ("Transformer base (2017)", 512, 2048, "ReLU"),
    ("BERT-base", 768, 3072, "GELU"),
    ("GPT-2 small", 768, 3072, "GELU (tanh)"),
    ("GPT-3 175B", 12288, 49152, "GELU"),
    ("Llama-2 7B", 4096, 11008, "SwiGLU"),
    ("Mistral 7B / Mixtral expert", 4096, 14336, "SwiGLU"),
]
print(f"{'model':<28} {'d_model':>7} {'d_ff':>6} {'ratio':>6}  FFN")
for name, d_model, d_ff, kind in models:
    print(f"{name:<28} {d_model:>7} {d_ff:>6} {d_ff / d_model:>6.3f}  {kind}")

# %% [markdown] id="ratio-mistake"
# **Common mistake: reading $d_{ff}$ off the model width.** "$d_{ff} = 4 d_{\text{model}}$" is a
# convention, not a law: Llama-2 7B's hidden width is 11008, not $4 \times 4096 = 16384$. Read it
# from the configuration (`intermediate_size` in Hugging Face configs, `n_inner` in GPT-2's, where
# `None` means $4 d_{\text{model}}$). The cell runs the wrong reading: for a SwiGLU FFN (three
# $d_{\text{model}} \times d_{ff}$ matrices) it overstates every layer, and Meta's rule (two thirds of
# $4 d_{\text{model}}$, rounded up to a multiple of 256) gives the real 11008.

# %% id="ratio-mistake-run"
# NBVAL_CHECK_OUTPUT
d_model_7b, layers_7b, d_ff_7b = 4096, 32, 11008
wrong_d_ff = 4 * d_model_7b  # WRONG: the 4x convention applied to Llama-2 7B
print("d_ff read as 4 * d_model:", wrong_d_ff, "| config's intermediate_size:", d_ff_7b)
rule = math.ceil(2 / 3 * 4 * d_model_7b / 256) * 256  # 2/3 of 4 d_model = 10922.7, up to a multiple of 256
print("2/3 * 4 * 4096 =", round(2 / 3 * 4 * d_model_7b, 1), "-> rounded up to a multiple of 256:", rule)
per_layer = lambda d_ff: 3 * d_model_7b * d_ff  # gate, up, down: no biases
print(f"SwiGLU FFN parameters per layer: right {per_layer(d_ff_7b):,}, wrong {per_layer(wrong_d_ff):,}")
print(f"over 32 layers the wrong reading adds {layers_7b * (per_layer(wrong_d_ff) - per_layer(d_ff_7b)) / 1e9:.2f} "
      f"billion parameters to a 6.74-billion-parameter model")

# %% [markdown] id="activations"
# ## 3. Activations: ReLU, GELU and SiLU
#
# **Main idea.** The nonlinearity decides which hidden units pass their signal on. **ReLU** cuts
# every negative pre-activation to zero. **GELU** weights its input by the probability that a
# standard normal variable lies below it, a smooth version of ReLU that lets small negative values
# through slightly. **SiLU** (also called swish) multiplies the input by its sigmoid; its curve is close to
# GELU's. GELU has an exact form (with the error function) and a tanh approximation that GPT-2 used
# because it was faster to compute at the time.
#
# **Formulas.** With $\Phi$ the standard normal CDF and $\sigma$ the logistic sigmoid:
#
# $$
# \operatorname{ReLU}(x) = \max(x, 0), \qquad
# \operatorname{GELU}(x) = x\,\Phi(x) = \tfrac12 x\left(1 + \operatorname{erf}\tfrac{x}{\sqrt 2}\right), \qquad
# \operatorname{SiLU}(x) = x\,\sigma(x),
# $$
# $$
# \operatorname{GELU}_{\tanh}(x) = \tfrac12 x\left(1 + \tanh\!\left(\sqrt{2/\pi}\,(x + 0.044715\,x^3)\right)\right).
# $$
#
# **Worked example.** Values at a few points. At $x = 1$: $\Phi(1) \approx 0.8413$, so
# $\operatorname{GELU}(1) \approx 0.8413$; $\sigma(1) \approx 0.7311$, so $\operatorname{SiLU}(1) \approx 0.7311$.

# %% id="activations-table"
# NBVAL_CHECK_OUTPUT
points = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0], device=device)  # (7,)
print(f"{'x':>10}", "".join(f"{p:>8.1f}" for p in points.tolist()))
for name, values in [("ReLU", relu(points)), ("GELU", gelu(points)), ("GELU tanh", gelu(points, "tanh")),
                     ("SiLU", silu(points))]:
    print(f"{name:>10}", "".join(f"{v:>8.4f}" for v in show(values)))

# %% [markdown] id="activations-plot-text"
# The three curves agree for large $|x|$ (they pass large positive inputs unchanged and kill large
# negative ones) and differ around zero, where GELU and SiLU are smooth and dip below zero.

# %% id="activations-plot"
grid = torch.linspace(-4, 4, 401)  # (401,), on the CPU for plotting
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for name, fn, style in [("ReLU", relu, "-"), ("GELU", gelu, "-"), ("SiLU", silu, "-"),
                        ("GELU (tanh)", lambda t: gelu(t, "tanh"), ":")]:
    axes[0].plot(grid, fn(grid), style, label=name)
axes[0].set(title="activations", xlabel="x", ylim=(-1, 4))
axes[0].axhline(0, color="grey", linewidth=0.5)
axes[0].legend()
axes[1].plot(grid, gelu(grid) - gelu(grid, "tanh"))
axes[1].set(title="GELU exact minus tanh approximation", xlabel="x")
fig.tight_layout()
plt.show()

# %% [markdown] id="activations-plot-caption"
# *What to see:* ReLU, GELU and SiLU agree for large positive $x$ and differ near 0, where GELU and
# SiLU dip slightly below zero; on the right, GELU's tanh approximation is within $5 \times 10^{-4}$
# of the exact GELU over the whole range.

# %% [markdown] id="activations-check"
# **Implementation check.** `helpers.ffn.gelu` against `torch.nn.functional.gelu`, both forms, in
# float32 and float64, on 20,001 points in $[-10, 10]$: the largest difference is at the level of
# float rounding. The two *forms* differ by much more: about $5 \times 10^{-4}$.

# %% id="activations-vs-torch"
# NBVAL_CHECK_OUTPUT
for dtype in (torch.float32, torch.float64):
    grid_d = torch.linspace(-10, 10, 20_001, dtype=dtype, device=device)  # (20001,)
    for form in ("none", "tanh"):
        diff = (gelu(grid_d, form) - F.gelu(grid_d, approximate=form)).abs().max().item()
        print(f"{dtype!s:>13} {form:>4}: matches F.gelu: {diff < (1e-6 if dtype == torch.float32 else 1e-12)}")
grid_d = torch.linspace(-10, 10, 20_001, dtype=torch.float64, device=device)
gap = (gelu(grid_d) - gelu(grid_d, "tanh")).abs()
print(f"largest gap between the forms: {gap.max().item():.2e} at x = {grid_d[gap.argmax()].item():.2f}")

# %% [markdown] id="activations-llm"
# **In real LLMs.** The 2017 transformer, T5 and OPT use ReLU; BERT uses exact GELU; GPT-2 and GPT-3
# use the tanh approximation (Hugging Face calls it `gelu_new` or `gelu_pytorch_tanh`); Llama,
# Mistral, Qwen and most recent open models use SiLU inside SwiGLU (next section).
#
# **Common mistake: the wrong GELU for a checkpoint.** A model trained with the tanh form and run
# with the exact one (or the reverse) does not crash: every activation is off by up to $5 \times 10^{-4}$,
# the difference compounds over the layers, and the outputs drift slightly from the reference
# implementation. When a port of a model does not match its reference to float precision, the
# activation variant is one of the first things to compare.

# %% [markdown] id="swiglu"
# ## 4. Gated FFNs: SwiGLU and its $8/3$ width
#
# **Main idea.** A gated linear unit computes *two* projections of the token: one goes through the
# activation and acts as a **gate**, the other (**up**) stays linear, and their elementwise product is
# projected back (**down**). The gate decides, per hidden unit, how much of the linear signal passes.
# With SiLU as the gate's activation this is **SwiGLU** (Shazeer, 2020, "GLU variants improve
# transformer"), used with no biases in Llama, Mistral, Qwen and many others.
#
# **Formula.**
#
# $$
# \operatorname{SwiGLU}(x) = W_{\text{down}}\left(\operatorname{SiLU}(W_{\text{gate}}\,x) \odot W_{\text{up}}\,x\right),
# \qquad W_{\text{gate}}, W_{\text{up}} \in \mathbb{R}^{d_{ff} \times d_{\text{model}}},\;
# W_{\text{down}} \in \mathbb{R}^{d_{\text{model}} \times d_{ff}}.
# $$
#
# Three matrices instead of two: to keep the parameter count of a plain $4 d_{\text{model}}$ MLP,
#
# $$
# 3\,d_{\text{model}}\,d_{ff} = 2\,d_{\text{model}} \cdot 4\,d_{\text{model}}
# \quad\Longrightarrow\quad d_{ff} = \tfrac{8}{3}\,d_{\text{model}},
# $$
#
# which Llama then rounds up to a multiple of 256: $\tfrac83 \cdot 4096 = 10922.7 \to 11008$.
#
# **Worked example.** One token, $d_{\text{model}} = 2$, $d_{ff} = 2$: gate pre-activations $[2, -1]$
# give $\operatorname{SiLU} = [2\sigma(2), -\sigma(-1)] \approx [1.7616, -0.2689]$; up is $[1, 3]$;
# their product $[1.7616, -0.8068]$; $W_{\text{down}} = I$ returns it unchanged.

# %% id="swiglu-example"
# NBVAL_CHECK_OUTPUT
x2 = torch.tensor([1., 1.], device=device)  # (d_model,)
W_gate = torch.tensor([[1., 1.], [-2., 1.]], device=device)  # (d_ff, d_model): gate pre-act [2, -1]
W_up = torch.tensor([[1., 0.], [1., 2.]], device=device)  # (d_ff, d_model): up [1, 3]
W_down = torch.eye(2, device=device)  # (d_model, d_ff)
print("silu(gate):", show(silu(x2 @ W_gate.T)), " up:", show(x2 @ W_up.T))
print("swiglu_ffn:", show(swiglu_ffn(x2, W_gate, W_up, W_down)))

# %% [markdown] id="swiglu-check"
# **Implementation check.** `helpers.ffn.SwiGLUFFN` against the same formula written with torch's
# own layers and `F.silu`, and the parameter counts: a bias-free SwiGLU with
# $d_{ff} = \tfrac83 d_{\text{model}}$ holds exactly as many parameters as a bias-free GELU MLP with
# $d_{ff} = 4 d_{\text{model}}$ (for $d_{\text{model}} = 768$: $d_{ff} = 2048$ against 3072).

# %% id="swiglu-shapes"
# NBVAL_CHECK_OUTPUT
torch.manual_seed(0)
d_model = 768
glu = SwiGLUFFN(d_model, swiglu_width(d_model)).to(device)  # gate, up (2048, 768); down (768, 2048)
x = randn(2, 3, d_model, seed=2)  # (B, T, d_model)
oracle = glu.down(F.silu(glu.gate(x)) * glu.up(x))  # (B, T, d_model)
print("gate", tuple(glu.gate.weight.shape), "up", tuple(glu.up.weight.shape), "down", tuple(glu.down.weight.shape))
print("out", tuple(glu(x).shape), "| same as torch layers + F.silu:", torch.allclose(glu(x), oracle, atol=1e-5))
print("SwiGLU d_ff = 2048:", ffn_param_count(d_model, 2048, gated=True, bias=False),
      "| GELU d_ff = 3072:", ffn_param_count(d_model, 3072, bias=False))
print("Llama widths:", {d: swiglu_width(d, multiple_of=256) for d in (4096, 5120, 8192)})

# %% [markdown] id="swiglu-mistake"
# **In real LLMs.** Llama-2 7B: $4096 \to 11008$ with `gate_proj`, `up_proj`, `down_proj`; Llama-2
# 70B and Llama 3 pick their widths by other multipliers (28672 for $d_{\text{model}} = 8192$), and
# GeGLU (GELU as the gate) appears in Gemma and T5 v1.1.
#
# **Common mistake: gate and up swapped.** `silu(up x) * (gate x)` has the same shapes, so nothing
# crashes. For a model trained from scratch it would only be a renaming: the network could learn
# either way. For pretrained weights it is a bug: the checkpoint's `gate_proj` was trained to sit
# inside the SiLU.

# %% id="swiglu-mistake-run"
# NBVAL_CHECK_OUTPUT
right = swiglu_ffn(x, glu.gate.weight, glu.up.weight, glu.down.weight)  # (B, T, d_model)
wrong = (F.silu(x @ glu.up.weight.T) * (x @ glu.gate.weight.T)) @ glu.down.weight.T  # WRONG: swapped
print("same outputs:", torch.allclose(right, wrong, atol=1e-5),
      "| relative difference:", round(((wrong - right).norm() / right.norm()).item(), 2))

# %% [markdown] id="params"
# ## 5. Parameter count: where a block's weights are
#
# **Main idea.** Count the weights and you see where the model's capacity sits. Standard multi-head
# attention has four $d_{\text{model}} \times d_{\text{model}}$ projections ($W_Q, W_K, W_V, W_O$; the
# number of heads does not change this, heads only split $d_{\text{model}}$). A plain MLP has two
# matrices of $d_{\text{model}} \times d_{ff}$; with $d_{ff} = 4 d_{\text{model}}$ that is
# $8 d_{\text{model}}^2$, **twice attention**, so about two thirds of a block.
#
# **Formulas** (with biases; drop the second term of each without them):
#
# $$
# P_{\text{attn}} = 4 d_{\text{model}}^2 + 4 d_{\text{model}}, \qquad
# P_{\text{MLP}} = 2\, d_{\text{model}} d_{ff} + (d_{ff} + d_{\text{model}}), \qquad
# P_{\text{SwiGLU}} = 3\, d_{\text{model}} d_{ff}.
# $$
#
# **Worked example: GPT-2 small** ($d_{\text{model}} = 768$, $d_{ff} = 3072$, 12 heads, biases on):

# %% id="params-gpt2"
# NBVAL_CHECK_OUTPUT
gpt2 = block_param_counts(768, 3072)
share = gpt2["mlp"] / (gpt2["mlp"] + gpt2["attention"])
print(f"attention: 4 * 768^2 + 4 * 768         = {gpt2['attention']:>9,}")
print(f"MLP:       2 * 768 * 3072 + 3072 + 768 = {gpt2['mlp']:>9,}")
print(f"MLP share of the block (norms left out): {share:.4f}  (2/3 = {2 / 3:.4f})")
layer_norms = 2 * 2 * 768  # two LayerNorms per block, weight and bias each
embeddings = 50257 * 768 + 1024 * 768  # tokens and learned positions (the output layer is tied)
total = embeddings + 12 * (gpt2["attention"] + gpt2["mlp"] + layer_norms) + 2 * 768
print(f"whole GPT-2 small: {total:,} parameters, of which MLPs {12 * gpt2['mlp'] / total:.1%}")

# %% [markdown] id="params-plot-text"
# **In real LLMs.** The same split for a few configurations. Llama-2 7B has no biases and a SwiGLU
# MLP of width 11008: its MLP is twice its attention too. (With grouped-query attention, chapter 02,
# the attention share shrinks further, since $W_K$ and $W_V$ get smaller.)

# %% id="params-plot"
configs = {"GPT-2 small": (768, 3072, False, True), "GPT-2 XL": (1600, 6400, False, True),
           "Llama-2 7B": (4096, 11008, True, False), "Llama-2 13B": (5120, 13824, True, False)}
fig, ax = plt.subplots(figsize=(8, 3))
for row, (name, (d_model, d_ff, gated, bias)) in enumerate(configs.items()):
    counts = block_param_counts(d_model, d_ff, gated=gated, bias=bias)
    total_block = counts["attention"] + counts["mlp"]
    ax.barh(row, counts["attention"] / total_block, color="#4c72b0", label="attention" if row == 0 else None)
    ax.barh(row, counts["mlp"] / total_block, left=counts["attention"] / total_block, color="#dd8452",
            label="MLP" if row == 0 else None)
    ax.text(0.98, row, f"MLP {counts['mlp'] / total_block:.1%}", ha="right", va="center", color="white")
ax.set_yticks(range(len(configs)), list(configs))
ax.set(xlabel="share of one block's parameters (norms left out)", xlim=(0, 1))
ax.legend(loc="lower left", fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown] id="params-plot-caption"
# *What to see:* in every model the MLP holds about two thirds of a block's parameters (66.7 % with
# GPT-2's 4x MLP, 66.8 to 66.9 % with Llama-2's SwiGLU) and attention the remaining third.

# %% [markdown] id="params-mistake"
# **Implementation check.** `ffn_param_count` must equal what torch allocates:
# `sum(p.numel() for p in module.parameters())` for `FeedForward` and `SwiGLUFFN`.
#
# **Common mistake: forgetting the biases.** For GPT-2 the share barely moves ($0.6666$ against
# exactly $2/3$), but every count is off, and the gap grows with the number of layers. Measured
# against the modules themselves:

# %% id="params-mistake-run"
# NBVAL_CHECK_OUTPUT
with torch.device("meta"):  # shapes without storage: counting needs no memory
    gelu_mlp = FeedForward(768, 3072)
    llama_mlp = SwiGLUFFN(4096, 11008)
print("FeedForward(768, 3072) holds", f"{sum(p.numel() for p in gelu_mlp.parameters()):,}",
      "| formula with biases", f"{ffn_param_count(768, 3072):,}",
      "| without (WRONG)", f"{2 * 768 * 3072:,}")
print("SwiGLUFFN(4096, 11008) holds", f"{sum(p.numel() for p in llama_mlp.parameters()):,}",
      "| formula", f"{ffn_param_count(4096, 11008, gated=True, bias=False):,}")

# %% [markdown] id="independence"
# ## 6. Token independence: the FFN never mixes positions
#
# **Main idea.** The FFN is applied to every position separately, with the same weights: output $t$
# is a function of token $t$ alone. So a change to one token changes exactly one output, and
# shuffling the tokens shuffles the outputs the same way. Everything one token learns from another
# has to pass through attention.
#
# **Formula.** For $X = [x_1, \dots, x_T]$,
#
# $$
# \operatorname{FFN}(X)_t = f(x_t) \quad\Longrightarrow\quad
# \frac{\partial\, \operatorname{FFN}(X)_i}{\partial x_j} = 0 \text{ for } i \ne j, \qquad
# \operatorname{FFN}(X_{\pi}) = \operatorname{FFN}(X)_{\pi} \text{ for every permutation } \pi .
# $$
#
# **Worked example: perturb one token.** Change token 2 of a 5-token sequence and list which
# outputs moved, for the FFN and for self-attention on the same input.

# %% id="independence-perturb"
# NBVAL_CHECK_OUTPUT
torch.manual_seed(0)
mlp = FeedForward(6, 24).to(device)
x = randn(1, 5, 6, seed=3)  # (B, T, d_model)


def self_attention(t):
    return scaled_dot_product_attention(t, t, t)[0]  # (B, T, d_model): Q = K = V = t, for the demonstration


x_moved = x.clone()
x_moved[:, 2] += 1.0  # change token 2 only
for name, layer in [("FFN", mlp), ("self-attention", self_attention)]:
    change = (layer(x_moved) - layer(x)).abs().amax(dim=-1)[0]  # (T,): largest change per output
    print(f"{name:>15}: outputs that changed {[t for t in range(5) if change[t] > 0]}, "
          f"largest change elsewhere {change[[0, 1, 3, 4]].max().item():.3g}")

# %% [markdown] id="independence-grid-text"
# **All positions at once.** `helpers.ffn.token_influence(fn, x)` perturbs each token $j$ in turn and
# records how much each output $i$ moved: entry $[i, j]$. For the FFN only the diagonal is nonzero,
# and the off-diagonal entries are exactly 0.0, not just small. Self-attention fills the matrix;
# causal attention fills the lower triangle (output $i$ reads tokens $j \le i$).

# %% id="independence-grid"
# NBVAL_CHECK_OUTPUT
x = randn(2, 6, 6, seed=4)  # (B, T, d_model)
layers = {
    "FFN": mlp,
    "self-attention": self_attention,
    "causal attention": lambda t: scaled_dot_product_attention(t, t, t, causal_mask(6, device=device))[0],
}
influence = {name: token_influence(layer, x) for name, layer in layers.items()}  # (T, T) each
off_diagonal = ~torch.eye(6, dtype=torch.bool)
for name, grid in influence.items():
    print(f"{name:>16}: largest off-diagonal change {grid[off_diagonal].max().item():.3g}, "
          f"outputs moved per perturbed token {(grid > 0).sum(dim=0).tolist()}")

# %% id="independence-plot"
fig, axes = plt.subplots(1, 3, figsize=(11, 3.3))
for ax, (name, grid) in zip(axes, influence.items()):
    ax.imshow((grid > 0).numpy(), cmap="Blues", vmin=0, vmax=1.3)
    ax.set(title=name, xlabel="perturbed token j", ylabel="output i")
    for i in range(6):
        for j in range(6):
            ax.text(j, i, "x" if grid[i, j] > 0 else "", ha="center", va="center")
fig.suptitle("which outputs change when one token changes (x = changed)")
fig.tight_layout()
plt.show()

# %% [markdown] id="independence-plot-caption"
# *What to see:* changing token $j$ moves only output $j$ through the FFN (the diagonal), every
# output through self-attention (the full grid), and only outputs $j$ and later through causal
# attention (the lower triangle).

# %% [markdown] id="independence-check"
# **Implementation check.** Because the FFN is position-wise, batch and sequence axes can be
# flattened into one axis of $B \cdot T$ tokens and the result reshaped back. Real implementations
# (and MoE layers, section 7) do exactly that. The permutation property holds bit for bit.

# %% id="independence-flatten"
# NBVAL_CHECK_OUTPUT
x = randn(2, 6, 6, seed=5)  # (B, T, d_model)
flat_out = mlp(x.reshape(-1, 6)).reshape(2, 6, 6)  # (B*T, d_model) -> (B, T, d_model)
perm = torch.tensor([3, 0, 5, 1, 4, 2], device=device)
print("(B, T, d) and (B*T, d) agree:", torch.allclose(mlp(x), flat_out, atol=1e-6))
print("FFN(x[:, perm]) == FFN(x)[:, perm] exactly:", torch.equal(mlp(x[:, perm]), mlp(x)[:, perm]))

# %% [markdown] id="independence-mistake"
# **In real LLMs.** Because each token is processed alone, the FFN of a KV-cached decoder (chapter 07)
# only runs on the new token: the earlier tokens' FFN outputs never change. It is also why MoE can
# send different tokens of one sentence to different experts: Mixtral 8x7B's router picks 2 of its
# 8 expert FFNs for every token separately, in each of its 32 layers.
#
# **Common mistake: "the MLP mixes tokens".** It does not, and the test above can tell: the FFN's
# influence matrix is diagonal. What *does* mix tokens is an MLP applied along the **token axis**
# (the "token-mixing" MLP of MLP-Mixer, or the bug of transposing before the FFN). The same
# perturbation test catches it at once:

# %% id="independence-mistake-run"
# NBVAL_CHECK_OUTPUT
torch.manual_seed(0)
token_mlp = FeedForward(6, 24).to(device)  # weights sized for T = 6 tokens, not for d_model
along_tokens = lambda t: token_mlp(t.transpose(-2, -1)).transpose(-2, -1)  # WRONG axis: an MLP over tokens mixes them
x = randn(2, 6, 6, seed=6)  # (B, T, d_model) with T = d_model = 6, so the shapes do not complain
for name, layer in [("FFN on d_model (right)", mlp), ("MLP along tokens", along_tokens)]:
    grid = token_influence(layer, x)
    print(f"{name:>22}: token-independent {bool((grid[off_diagonal] == 0).all())}, "
          f"outputs moved per perturbed token {(grid > 0).sum(dim=0).tolist()}")

# %% [markdown] id="moe"
# ## 7. Mixture of experts
#
# **Main idea.** Replace the one FFN by $n$ FFNs (the **experts**) and a small linear **router**. For
# each token the router scores every expert; the token is sent to its $k$ best experts only, and their
# outputs are mixed with weights from the router. The layer then holds $n$ times the FFN parameters,
# but each token pays for only $k$ of them: **more parameters without more compute per token**. Since
# the FFN is token-independent (section 6), different tokens of one sequence can go to different
# experts without any change elsewhere in the block.
#
# **Formula.** Router logits $z = W_r x \in \mathbb{R}^{n}$; the top-$k$ set $S$ of $z$;
#
# $$
# w_e = \frac{e^{z_e}}{\sum_{e' \in S} e^{z_{e'}}}\ (e \in S), \qquad
# \operatorname{MoE}(x) = \sum_{e \in S} w_e\, \operatorname{expert}_e(x).
# $$
#
# The softmax runs over the **k chosen logits** (Mixtral's convention). Some models write it as a
# softmax over all $n$ experts, then top-$k$, then a renormalisation of the $k$ probabilities to sum
# to 1: the same numbers, since the common denominator cancels.
#
# **Worked example.** One token, 4 experts, logits $[2.0, 1.0, 0.5, -1.0]$, $k = 2$: experts 0 and 1,
# with weights $e^2 / (e^2 + e^1) \approx 0.7311$ and $0.2689$.

# %% id="moe-route"
# NBVAL_CHECK_OUTPUT
logits = torch.tensor([[2.0, 1.0, 0.5, -1.0]], device=device)  # (T, n_experts) = (1, 4)
weights, chosen = top_k_route(logits, k=2)  # (T, k), (T, k)
print("experts", chosen.tolist(), "weights", show(weights))
probs = torch.softmax(logits, dim=-1)  # (T, n_experts): all experts
top = probs.gather(-1, chosen)  # (T, k)
print("softmax over all, then top-k:", show(top), "sum", round(top.sum().item(), 4))
print("... renormalised:", show(top / top.sum(-1, keepdim=True)), "= the softmax over the chosen k")

# %% [markdown] id="moe-check"
# **Implementation check.** Shapes for $B = 2$, $T = 5$, $d_{\text{model}} = 6$, $n = 4$ experts of
# width $d_{ff} = 9$, $k = 2$:
#
# - router weight `(n_experts, d_model)` = `(4, 6)`; logits `(B, T, n_experts)` = `(2, 5, 4)`
# - weights and expert indices `(B, T, k)` = `(2, 5, 2)`
# - flatten to `(N, d_model)` = `(10, 6)`; expert $e$ runs on the $n_e$ tokens routed to it, `(n_e, 6)`
# - output `(B, T, d_model)` = `(2, 5, 6)`
#
# `helpers.ffn.moe_forward` runs each expert once on its own tokens. The oracle is the slow, obvious
# version: run every expert on every token and keep the chosen ones. With $k = n$ and equal router
# logits every weight is $1/n$, so the layer is the plain mean of the experts.

# %% id="moe-forward"
# NBVAL_CHECK_OUTPUT
torch.manual_seed(0)
moe = MoEFFN(d_model=6, d_ff=9, n_experts=4, k=2, gated=False).to(device)
x = randn(2, 5, 6, seed=7)  # (B, T, d_model)
weights, chosen = top_k_route(moe.router(x), 2)  # (B, T, k) each
all_outputs = torch.stack([expert(x) for expert in moe.experts], dim=-2)  # (B, T, n_experts, d_model)
picked = all_outputs.gather(-2, chosen[..., None].expand(2, 5, 2, 6))  # (B, T, k, d_model)
dense = (weights[..., None] * picked).sum(dim=-2)  # (B, T, d_model)
print("weights", tuple(weights.shape), "indices", tuple(chosen.shape), "out", tuple(moe(x).shape))
print("sparse moe_forward == dense loop over experts:", torch.allclose(moe(x), dense, atol=1e-6))
print("tokens per expert:", torch.bincount(chosen.flatten(), minlength=4).tolist())
zero_router = torch.zeros(4, 6, device=device)  # equal logits for every expert
mean_of_experts = torch.stack([expert(x) for expert in moe.experts]).mean(dim=0)  # (B, T, d_model)
print("k = n, equal logits -> mean of the experts:",
      torch.allclose(moe_forward(x, zero_router, list(moe.experts), k=4), mean_of_experts, atol=1e-6))

# %% [markdown] id="moe-mistake"
# **Common mistake: weights that are not renormalised.** Taking the top-$k$ of a softmax over all
# experts and using those probabilities directly gives weights that sum to less than 1 (0.83 in the
# example above), so the layer's output shrinks by a token-dependent factor. This is the catalogued
# mistake for Mixtral-style routing. Beware: a few models do it on purpose (Switch Transformer with
# $k = 1$, where renormalising would make every weight 1 and leave the router without a gradient;
# Qwen-MoE's `norm_topk_prob=False`). What matters is using the convention the weights were trained with.

# %% id="moe-mistake-run"
# NBVAL_CHECK_OUTPUT
probs = torch.softmax(moe.router(x), dim=-1)  # (B, T, n_experts)
unnormalised = probs.gather(-1, chosen)  # (B, T, k)  WRONG for this convention
print("weight sums, right:", show(weights.sum(-1)[0], 3))
print("weight sums, wrong:", show(unnormalised.sum(-1)[0], 3))
wrong_out = (unnormalised[..., None] * picked).sum(dim=-2)  # (B, T, d_model)
print("output norm ratio wrong / right per token:", show((wrong_out.norm(dim=-1) / dense.norm(dim=-1))[0], 3))

# %% [markdown] id="moe-params"
# **Total vs active parameters.** A token uses the router and $k$ experts, so the compute per token
# follows the **active** count; the memory must hold the **total**. Mixtral 8x7B: 32 layers, 8 SwiGLU
# experts of width 14336 per layer, $k = 2$, grouped-query attention with 8 key/value heads of width
# 128, vocabulary 32000, untied embeddings. Its paper reports 46.7B parameters of which 12.9B are
# active; both follow from the shapes:

# %% id="moe-params-mixtral"
# NBVAL_CHECK_OUTPUT
d_model, d_ff, n_layers, n_experts, k, vocab = 4096, 14336, 32, 8, 2, 32000
layer_experts = moe_param_count(d_model, d_ff, n_experts, k)  # experts + router of one layer
attention_gqa = 2 * d_model * d_model + 2 * d_model * (8 * 128)  # W_Q, W_O full; W_K, W_V for 8 KV heads
norms = 2 * d_model  # two RMSNorm weights per layer
outside = 2 * vocab * d_model + d_model  # embedding, output layer, final norm
total = n_layers * (attention_gqa + layer_experts["total"] + norms) + outside
active = n_layers * (attention_gqa + layer_experts["active"] + norms) + outside
print(f"one layer's experts + router: total {layer_experts['total']:,}, active {layer_experts['active']:,}")
print(f"Mixtral 8x7B: total {total / 1e9:.1f}B, active per token {active / 1e9:.1f}B "
      f"({active / total:.0%} of the weights do the work for any one token)")
print(f"weights in bfloat16: {2 * total / 1e9:.1f} GB to hold, while computing like a {active / 1e9:.0f}B dense model")

# %% [markdown] id="balance"
# **Load balance.** Nothing in the task loss asks the router to spread tokens. An expert that gets
# more tokens gets more gradient, improves, and attracts even more tokens; experts the router never
# picks get no gradient at all and stay useless ("dead experts"). Switch Transformer adds an
# auxiliary loss that is smallest when routing is even:
#
# $$
# \mathcal{L}_{\text{bal}} = n \sum_{i=1}^{n} f_i\,P_i, \qquad
# f_i = \frac{\#\{\text{assignments to } i\}}{N k}, \qquad
# P_i = \frac1N \sum_{t=1}^{N} \operatorname{softmax}(z_t)_i .
# $$
#
# $f$ is counted (no gradient); $P$ carries the gradient and pushes probability away from the
# over-used experts. Perfectly even routing gives $n \cdot n \cdot \tfrac1n \cdot \tfrac1n = 1$;
# everything on one expert gives $n$.
#
# **Worked example.** 8 tokens, top-1 over 4 experts with counts $(5, 1, 1, 1)$ and mean router
# probabilities $P = (0.55, 0.15, 0.15, 0.15)$:
# $4\,(\tfrac58 \cdot 0.55 + 3 \cdot \tfrac18 \cdot 0.15) = 4\,(0.34375 + 0.05625) = 1.6$.

# %% id="balance-example"
# NBVAL_CHECK_OUTPUT
P = torch.tensor([0.55, 0.15, 0.15, 0.15], device=device)
routed = torch.tensor([0, 0, 0, 0, 0, 1, 2, 3], device=device)[:, None]  # (N, k) = (8, 1)
print("skewed:", round(load_balancing_loss(P.log().expand(8, 4), routed).item(), 4))
even = torch.arange(8, device=device).remainder(4)[:, None]  # two tokens per expert
print("even routing, uniform router:", round(load_balancing_loss(torch.zeros(8, 4, device=device), even).item(), 4))
collapsed = torch.tensor([[9.0, 0.0, 0.0, 0.0]], device=device).expand(8, 4)
print("all on expert 0:", round(load_balancing_loss(collapsed, torch.zeros(8, 1, dtype=torch.long, device=device)).item(), 2))

# %% [markdown] id="balance-train-text"
# **A toy training run, with and without the balance loss.** A MoE layer with 4 GELU experts and
# $k = 2$ learns a fixed nonlinear map of 256 random tokens. We start its router biased on purpose,
# so that every token picks experts 0 and 1, as happens when hidden states share a strong common
# direction. Same seed, same data, 100 Adam steps, once with the task loss alone and once with
# $0.3 \cdot \mathcal{L}_{\text{bal}}$ added (a toy-sized coefficient; Switch used 0.01 in large
# models). The run is tiny, so it runs on the CPU, where its numbers are the same on every machine.

# %% id="balance-train"
# NBVAL_CHECK_OUTPUT
def train_toy_moe(balance_coef: float, steps: int = 100) -> tuple[MoEFFN, list[int], float]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tensors this small train several times faster on one thread
    try:
        return _train_toy_moe(balance_coef, steps)
    finally:
        torch.set_num_threads(threads)


def _train_toy_moe(balance_coef: float, steps: int) -> tuple[MoEFFN, list[int], float]:
    helpers.seed_everything(0)
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randn(256, 8, generator=gen)  # (N, d_model)
    tokens[:, 0] = tokens[:, 0].abs() + 1  # feature 0 is positive for every token...
    target = torch.sin(2 * tokens @ torch.randn(8, 8, generator=gen).T)  # (N, d_model): what to learn
    layer = MoEFFN(8, 16, n_experts=4, k=2, gated=False)
    with torch.no_grad():  # ...and the router reads it as "experts 0 and 1, please"
        layer.router.weight[:, 0] += torch.tensor([3.0, 3.0, -3.0, -3.0])
    optimizer = torch.optim.Adam(layer.parameters(), lr=2e-2)
    for _ in range(steps):
        logits = layer.router(tokens)  # (N, n_experts)
        _, chosen = top_k_route(logits, 2)  # (N, k)
        task = (layer(tokens) - target).pow(2).mean()
        loss = task + balance_coef * load_balancing_loss(logits, chosen)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        _, chosen = top_k_route(layer.router(tokens), 2)
        task = (layer(tokens) - target).pow(2).mean().item()
    return layer, torch.bincount(chosen.flatten(), minlength=4).tolist(), task


runs = {"task loss only": train_toy_moe(0.0), "with balance loss": train_toy_moe(0.3)}
for name, (_, histogram, task) in runs.items():
    print(f"{name:>17}: assignments per expert {histogram}, final task loss {task:.3f}")

# %% id="balance-plot"
fig, axes = plt.subplots(1, 2, figsize=(9, 3), sharey=True)
for ax, (name, (_, histogram, task)) in zip(axes, runs.items()):
    ax.bar(range(4), histogram, color=["#4c72b0", "#4c72b0", "#dd8452", "#dd8452"])
    ax.axhline(256 * 2 / 4, color="k", linestyle=":", label="even")
    ax.set(title=f"{name} (task loss {task:.3f})", xlabel="expert", xticks=range(4))
axes[0].set_ylabel("tokens routed (k = 2)")
axes[0].legend()
fig.tight_layout()
plt.show()

# %% [markdown] id="balance-plot-caption"
# *What to see:* without the balance loss the router sends every token to experts 0 and 1 and
# experts 2 and 3 receive none; with it all four experts receive tokens, closer to the even share
# (dotted).

# %% [markdown] id="capacity"
# Without the balance loss experts 2 and 3 never receive a token, so they never receive a gradient:
# half the layer's parameters are dead weight. With it the router learns to use all four, and the
# task loss is lower too.
#
# **Capacity and dropped tokens.** To run experts as fixed-size batches (on several devices, with
# static shapes), Switch Transformer and GShard give each expert a fixed number of slots:
#
# $$
# \text{capacity} = \left\lceil c \cdot \frac{N\,k}{n} \right\rceil,
# $$
#
# with $c$ the **capacity factor** (1.0 to 2.0 in practice). Assignments beyond an expert's capacity
# are **dropped**: the expert does not process that token, and the token passes the layer through the
# residual connection only. Balanced routing drops little; the collapsed router of the first run drops
# half of everything:

# %% id="capacity-table"
# NBVAL_CHECK_OUTPUT
print(f"{'capacity factor':>15} {'slots':>6} | dropped assignments: {'task loss only':>14} {'with balance':>13}")
for factor in (1.0, 1.25, 1.5, 2.0):
    slots = expert_capacity(256, 4, k=2, capacity_factor=factor)
    dropped = []
    for layer, _, _ in runs.values():
        gen = torch.Generator().manual_seed(1)
        tokens = torch.randn(256, 8, generator=gen)
        tokens[:, 0] = tokens[:, 0].abs() + 1  # the same tokens as in training
        _, chosen = top_k_route(layer.router(tokens).detach(), 2)
        dropped.append(int((~capacity_keep(chosen, 4, slots)).sum()))
    print(f"{factor:>15} {slots:>6} | {'':>20} {dropped[0]:>14} {dropped[1]:>13}")

# %% [markdown] id="moe-llm"
# **In real LLMs.** Switch Transformer ($k = 1$, up to 2048 experts), GShard ($k = 2$), Mixtral 8x7B
# (8 experts, $k = 2$), DeepSeek-V3 (256 small routed experts, $k = 8$, plus one shared expert every
# token uses, and a bias-based balancing instead of an auxiliary loss), Qwen-MoE and OLMoE. Recent
# models often skip the capacity limit ("dropless" MoE) and handle uneven expert batches with
# grouped matrix multiplications.
#
# **Serving cost.** Compute per token follows the active parameters, but *memory* follows the total:
# all experts must be resident, because the next token may need any of them (Mixtral: about 93 GB of
# bfloat16 weights for 13B-model compute). At small batch sizes, decoding is limited by reading
# weights from memory, and each token reads $k$ experts; at large batch sizes nearly every expert is
# read at every step anyway. Large deployments spread experts over GPUs (expert parallelism), which
# adds an all-to-all exchange of tokens in every MoE layer, and uneven routing makes the busiest GPU
# set the pace: balance matters for speed, not only for learning.

# %% [markdown] id="mistakes"
# ## 8. Common mistakes
#
# | mistake | symptom you can print | the fix |
# |---|---|---|
# | activation after the second projection | two projections collapse into one linear map; outputs never below about $-0.17$ | $W_2\,\phi(W_1 x + b_1) + b_2$ |
# | tanh GELU where the checkpoint used exact (or the reverse) | outputs off by up to $5 \times 10^{-4}$ per activation | match the model's `hidden_act` |
# | gate and up swapped in SwiGLU | pretrained model's outputs change completely; shapes are fine | `silu(gate x) * (up x)` |
# | biases forgotten in a parameter count | counts short by $d_{ff} + d_{\text{model}}$ per MLP | count weights and biases |
# | "the MLP mixes tokens" | it does not: its influence matrix is diagonal | only attention moves information between positions |
# | FFN applied along the token axis | every output moves when any token moves | act on the last axis (`d_model`) |
# | routing weights not renormalised | weights sum to less than 1; outputs shrink | softmax over the chosen $k$ |
# | no balance loss | experts that never get a token, and no gradient to revive them | add $\alpha\, n \sum_i f_i P_i$ |

# %% [markdown] id="self-check"
# ## Self-check
#
# Try to answer before opening each answer.
#
# **Q1.** `x` has shape `(4, 128, 512)` and the FFN has $d_{ff} = 2048$. Give the shapes of `W1`, `W2`,
# the hidden activations and the output.
#
# <details><summary>Answer</summary>
#
# `W1` is `(2048, 512)`, `W2` is `(512, 2048)` (the `nn.Linear` layout), the hidden activations are
# `(4, 128, 2048)` and the output is `(4, 128, 512)`, the same as the input.
#
# </details>
#
# **Q2.** Why is there a nonlinearity between the two projections, and what happens without it?
#
# <details><summary>Answer</summary>
#
# Without it, $W_2(W_1 x + b_1) + b_2 = (W_2 W_1) x + (W_2 b_1 + b_2)$: a single linear map, no more
# expressive than one `(d_model, d_model)` matrix, whatever $d_{ff}$ is.
#
# </details>
#
# **Q3.** How many parameters does one GPT-2-small MLP have, and what share of the block is it?
#
# <details><summary>Answer</summary>
#
# $2 \cdot 768 \cdot 3072 + 3072 + 768 = 4{,}722{,}432$; attention has $4 \cdot 768^2 + 4 \cdot 768 =
# 2{,}362{,}368$, so the MLP is $0.6666 \approx 2/3$ of the block (norms left out).
#
# </details>
#
# **Q4.** Why is the SwiGLU width $\tfrac83 d_{\text{model}}$ rather than $4 d_{\text{model}}$?
#
# <details><summary>Answer</summary>
#
# SwiGLU has three matrices instead of two. Keeping the parameter count of a $4 d_{\text{model}}$
# MLP means $3 d_{\text{model}} d_{ff} = 8 d_{\text{model}}^2$, so $d_{ff} = \tfrac83 d_{\text{model}}$.
#
# </details>
#
# **Q5.** Token 3 of a sequence is changed. Which outputs of the FFN change? Which outputs of a causal
# attention layer?
#
# <details><summary>Answer</summary>
#
# FFN: only output 3. Causal attention: outputs 3, 4, 5, ... (every position that may read token 3),
# and never outputs 0, 1, 2.
#
# </details>
#
# **Q6.** A router gives logits $[1, 3, 2]$ and $k = 2$. Which experts, with which weights?
#
# <details><summary>Answer</summary>
#
# Experts 1 and 2 (largest logit first), weights $\operatorname{softmax}([3, 2]) = [e/(e+1), 1/(e+1)]
# \approx [0.731, 0.269]$.
#
# </details>
#
# **Q7.** A MoE layer has 64 experts, $k = 4$. By how much does it multiply the FFN parameters, and the
# FFN compute per token, compared with one expert?
#
# <details><summary>Answer</summary>
#
# Parameters: 64 times (plus the router). Compute per token: 4 times (plus the router's
# $d_{\text{model}} \times 64$ product). Memory follows the first number, speed mostly the second.
#
# </details>
#
# **Q8.** What is the balance loss at perfectly even routing, and what does a value near $n$ tell you?
#
# <details><summary>Answer</summary>
#
# 1 at even routing ($f_i = P_i = 1/n$). A value near $n$ means nearly everything goes to one expert:
# the router has collapsed.
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
# | the FFN computed by hand and by `feed_forward`; its shapes; equal to `nn.Sequential(Linear, GELU, Linear)` | §1, `mlp-example`, `mlp-shapes` |
# | the activation in the wrong place collapses the MLP into one linear map | §1, `mlp-mistake` |
# | the FFN output as a sum of value vectors weighted by key activations | §2, `ratio-memory` |
# | reading $d_{ff} = 4 d_{\text{model}}$ for Llama-2 7B gives 16384, not 11008 | §2, `ratio-mistake-run` |
# | ReLU, GELU (both forms) and SiLU values, plot, and `gelu` = `F.gelu` in float32 and float64 | §3, `activations-table`, `activations-plot`, `activations-vs-torch` |
# | SwiGLU by hand; the $8/3$ width; Llama's 11008; gate/up swap changes the output | §4, `swiglu-example`, `swiglu-shapes`, `swiglu-mistake-run` |
# | the MLP is about 2/3 of a GPT-2 block; counts equal what torch allocates | §5, `params-gpt2`, `params-plot`, `params-mistake-run` |
# | the FFN is token-independent (perturbation, influence matrix, permutation); attention and a token-axis MLP are not | §6, `independence-perturb`, `independence-grid`, `independence-flatten`, `independence-mistake-run` |
# | top-k routing, its two equal conventions, and the unnormalised mistake | §7, `moe-route`, `moe-mistake-run` |
# | sparse MoE = dense loop; $k = n$ with equal logits = mean of experts | §7, `moe-forward` |
# | Mixtral's 46.7B total and 12.9B active parameters, from its shapes | §7, `moe-params-mixtral` |
# | the balance loss by hand; a routing histogram with and without it; dropped tokens vs capacity | §7, `balance-example`, `balance-train`, `balance-plot`, `capacity-table` |

# %% [markdown] id="next"
# ## Next: the exercises
#
# Open [`exercises/03_ffn/03_ffn.ipynb`](../exercises/03_ffn/03_ffn.ipynb). You will write `gelu`,
# `feed_forward` and `swiglu_ffn`, count MLP against attention parameters for GPT-2 and Llama, write
# a test that tells a token-independent layer from a token-mixing one, and build `top_k_route` and
# `moe_forward`. Each exercise has a visible check that runs right away and names the mistake if
# your output matches one of those in section 8.
