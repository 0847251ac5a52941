# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] id="intro"
# # Chapter 04: the residual stream, LayerNorm, RMSNorm, Pre-LN and Post-LN
#
# Attention (chapters 01 and 02) and the feed-forward network (chapter 03) compute **edits**. This
# chapter is about the two things that decide how those edits are applied. The **residual stream**
# carries each token's state from block to block, and every sublayer adds its edit to it:
# *carry the old state, add a learned edit*. A **norm** (LayerNorm or RMSNorm) rescales each
# token's vector to a standard size before a sublayer reads it (Pre-LN) or after the edit has been
# added (Post-LN). Where the norm sits changes how a deep stack behaves before training even starts.
#
# | piece | equation | shape |
# |---|---|---|
# | residual connection | $x_{l+1} = x_l + F_l(x_l)$ | `(B, T, d_model)` in and out |
# | LayerNorm | $\dfrac{x - \mu}{\sqrt{\sigma^2 + \varepsilon}} \odot \gamma + \beta$, statistics per token | `(..., d_model)` in and out; $\mu, \sigma^2$: `(..., 1)` |
# | RMSNorm | $\dfrac{x}{\sqrt{\operatorname{mean}(x^2) + \varepsilon}} \odot \gamma$ | `(..., d_model)` in and out |
# | Pre-LN block | $x \leftarrow x + \mathrm{attn}(\mathrm{norm}_1(x));\ x \leftarrow x + \mathrm{ffn}(\mathrm{norm}_2(x))$ | GPT-2, Llama |
# | Post-LN block | $x \leftarrow \mathrm{norm}_1(x + \mathrm{attn}(x));\ x \leftarrow \mathrm{norm}_2(x + \mathrm{ffn}(x))$ | 2017 Transformer, BERT |
#
# **Map of this notebook.**
#
# 1. The residual stream: old state plus a learned edit, and the identity path
# 2. LayerNorm: one vector by hand, then tensors, checked against `torch.nn.LayerNorm`
# 3. Per token, not per batch: the wrong axis run beside the right one, with a batch of one
# 4. RMSNorm: the same vector, `torch.nn.RMSNorm`, and its `eps=None` default
# 5. Pre-LN and Post-LN: the two block equations, checked against `nn.TransformerEncoderLayer`
# 6. A deep stack at initialization: gradient norm and residual-stream norm per layer, 24 and 48 layers
# 7. Common mistakes, each one run next to the right version
# 8. Self-check, evidence card, and the exercises
#
# Each subtopic follows the same pattern: the idea in plain words, the formula, a worked example
# with real numbers, an implementation check (shapes first, then code), where it shows up in real
# models, and a common mistake run beside the right version. Cells that start with
# `# NBVAL_CHECK_OUTPUT` are claims: the test suite re-runs the notebook and fails if their output
# ever changes.

# %% id="setup"
import math

import matplotlib.pyplot as plt
import torch
from torch import nn

import helpers
from helpers.norms import (
    LayerNorm,
    layer_norm,
    post_ln_block,
    pre_ln_block,
    residual_norms,
    rms_norm,
)

helpers.seed_everything(0)
device = helpers.get_device()
print("computing on:", device.type)


def randn(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard-normal numbers drawn on the CPU from their own seed, then moved to `device`,
    so that every machine computes on the same inputs."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=dtype).to(device)


def show(t: torch.Tensor, digits: int = 4) -> list:
    """A tensor as plain nested lists of rounded floats: no device, no dtype, no -0.0."""
    return (torch.round(t.detach().double().cpu(), decimals=digits) + 0.0).tolist()


def vec(values, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype, device=device)

# %% [markdown] id="residual"
# ## 1. The residual stream
#
# **Main idea.** Each token's vector $x \in \mathbb{R}^{d_{\text{model}}}$ travels through the
# whole model along one path, the **residual stream**. A sublayer (attention, the MLP) does not
# replace that vector: it reads it, computes an **edit**, and the edit is *added* back. So the
# stream after $L$ sublayers is the input plus the sum of all edits. If a sublayer has nothing
# useful to add it can output zero, and the token passes through untouched: the **identity path**.
# That path is also what carries gradients from the loss straight back to the first layers.
#
# **Formula.**
#
# $$
# x_{l+1} = x_l + F_l(x_l) \quad\Longrightarrow\quad x_L = x_0 + \sum_{l=0}^{L-1} F_l(x_l),
# \qquad \frac{\partial x_{l+1}}{\partial x_l} = I + \frac{\partial F_l}{\partial x_l}.
# $$
#
# **Worked example.** One token with $d_{\text{model}} = 4$ and three edits. The stream is a running
# sum, so the last state equals the input plus all the edits.

# %% id="residual-sum"
# NBVAL_CHECK_OUTPUT
x0 = vec([1.0, 0.0, 2.0, 0.0])  # (d_model,) = (4,)
edits = [vec([0.5, 0.0, 0.0, 1.0]), vec([0.0, -1.0, 0.0, 0.0]), vec([0.0, 0.0, 0.0, 0.0])]
stream = [x0]
for edit in edits:
    stream.append(stream[-1] + edit)  # x_{l+1} = x_l + F_l(x_l)
for l, state in enumerate(stream):
    print(f"x_{l} =", show(state, 2))
print("x_3 == x_0 + sum of edits:", torch.equal(stream[-1], x0 + sum(edits)))
print("the zero edit left the stream unchanged:", torch.equal(stream[3], stream[2]))

# %% [markdown] id="residual-identity-text"
# **Implementation check: the identity path.** A block whose sublayers output zero must return
# its input exactly. With `helpers.norms.pre_ln_block` (section 5 writes it out) and sublayers
# whose last weights are zero, the output equals the input bit for bit. The Jacobian of one
# residual sublayer, $I + \partial F / \partial x$, shows the same thing for gradients: with small
# weights it is the identity plus a small correction.

# %% id="residual-identity"
# NBVAL_CHECK_OUTPUT
B, T, d_model, d_ff = 2, 5, 8, 32
x = randn(B, T, d_model, seed=1)  # (B, T, d_model)
mlp = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model)).to(device)
with torch.no_grad():
    mlp[2].weight.zero_()
    mlp[2].bias.zero_()  # the MLP now outputs zeros: (B, T, d_model)
norm1, norm2 = LayerNorm(d_model).to(device), LayerNorm(d_model).to(device)
out = pre_ln_block(x, mlp, mlp, norm1, norm2)  # both sublayers are the zeroed MLP
print("output shape", tuple(out.shape), "| output == input exactly:", torch.equal(out, x))

torch.manual_seed(2)
small = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3)).double().to(device)
with torch.no_grad():
    for layer in (small[0], small[2]):
        layer.weight.mul_(0.1)
jacobian = torch.autograd.functional.jacobian(lambda v: v + small(v), vec([0.3, -0.2, 0.5]))  # (3, 3)
print("d(x + F(x))/dx =")
for row in show(jacobian, 3):
    print("   ", row)

# %% [markdown] id="residual-llm"
# **In real LLMs.** Every block of GPT-2 and Llama reads from and writes to one stream of width
# $d_{\text{model}}$ (768 for GPT-2 small, 4096 for Llama-2 7B); the embeddings are its first state
# and the unembedding reads its last. Interpretability work calls it the residual stream for this
# reason: every sublayer communicates through additions to it.
#
# **Common mistake: dropping the residual.** `x = attn(norm(x))` instead of `x = x + attn(norm(x))`
# throws the old state away. With a zero sublayer the token is then erased instead of kept.

# %% id="residual-mistake"
# NBVAL_CHECK_OUTPUT
wrong = mlp(norm2(mlp(norm1(x))))  # WRONG: no residual connections
print("without residuals, a zero sublayer erases the token: all zeros =", torch.equal(wrong, torch.zeros_like(x)))

# %% [markdown] id="layernorm"
# ## 2. LayerNorm
#
# **Main idea.** The stream's vectors can drift to any size and offset. LayerNorm takes **one token
# at a time**, subtracts the mean of its $d_{\text{model}}$ features and divides by their standard
# deviation, so every token enters the next sublayer with mean 0 and variance 1. Then a learned
# per-feature scale $\gamma$ and shift $\beta$ let the model choose the size it actually wants.
#
# **Formula.** For one token $x \in \mathbb{R}^{d}$:
#
# $$
# \mu = \frac{1}{d}\sum_{i=1}^{d} x_i, \qquad
# \sigma^2 = \frac{1}{d}\sum_{i=1}^{d} (x_i - \mu)^2, \qquad
# \hat x_i = \frac{x_i - \mu}{\sqrt{\sigma^2 + \varepsilon}}, \qquad
# y_i = \gamma_i \hat x_i + \beta_i .
# $$
#
# The variance divides by $d$ (the *biased* variance), and $\varepsilon$ (`1e-5` in
# `torch.nn.LayerNorm`) sits inside the square root: it keeps the division finite when a token is
# nearly constant.
#
# **Worked example.** $x = [1, 3, 5, 7]$: $\mu = 16/4 = 4$, deviations $[-3, -1, 1, 3]$,
# $\sigma^2 = (9 + 1 + 1 + 9)/4 = 5$, so $\hat x = [-3, -1, 1, 3]/\sqrt{5} \approx [-1.3416, -0.4472, 0.4472, 1.3416]$.
# With $\gamma = [1, 2, 1, 0.5]$ and $\beta = [0, 0, 1, 0]$ the output is $\gamma \odot \hat x + \beta$.
# The cell computes it three ways: by hand in plain Python, with `helpers.norms.layer_norm`, and with
# `torch.nn.LayerNorm`.

# %% id="ln-by-hand"
# NBVAL_CHECK_OUTPUT
values, eps = [1.0, 3.0, 5.0, 7.0], 1e-5
gamma_list, beta_list = [1.0, 2.0, 1.0, 0.5], [0.0, 0.0, 1.0, 0.0]
d = len(values)
mu = sum(values) / d
var = sum((v - mu) ** 2 for v in values) / d
by_hand = [(v - mu) / math.sqrt(var + eps) * g + b for v, g, b in zip(values, gamma_list, beta_list)]
print("mean", mu, "| biased variance", var, "| sqrt(var + eps)", round(math.sqrt(var + eps), 6))
print("by hand          ", [round(v, 4) for v in by_hand])

x, gamma, beta = vec(values), vec(gamma_list), vec(beta_list)  # (d_model,) each
print("helpers.norms    ", show(layer_norm(x, gamma, beta, eps)))
torch_ln = nn.LayerNorm(d, eps=eps, dtype=torch.float64).to(device)
with torch.no_grad():
    torch_ln.weight.copy_(gamma)
    torch_ln.bias.copy_(beta)
print("torch.nn.LayerNorm", show(torch_ln(x)))

# %% [markdown] id="ln-check"
# **Implementation check.** Shapes before code, for a batch $B = 2$, $T = 5$, $d_{\text{model}} = 16$:
#
# - `x`: `(B, T, d_model)` = `(2, 5, 16)`
# - `mean = x.mean(dim=-1, keepdim=True)`: `(B, T, 1)` = `(2, 5, 1)`, one mean per token
# - `var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)`: `(2, 5, 1)`
# - `(x - mean) / torch.sqrt(var + eps)`: `(2, 5, 16)`; `* gamma + beta` broadcasts `(16,)` over the tokens
#
# `keepdim=True` is what lets the `(B, T, 1)` statistics broadcast back against `(B, T, d_model)`.
# The properties to test: before $\gamma$ and $\beta$, every token has mean 0 and biased variance 1
# (exactly, with $\varepsilon = 0$); scaling a token by $a > 0$ or shifting all its features by the
# same constant does not change the output.

# %% id="ln-shapes"
# NBVAL_CHECK_OUTPUT
x = randn(2, 5, 16, seed=3, dtype=torch.float64) * 4 + 2  # (B, T, d_model)
gamma, beta = randn(16, seed=4, dtype=torch.float64), randn(16, seed=5, dtype=torch.float64)  # (d_model,)
mean = x.mean(dim=-1, keepdim=True)  # (B, T, 1)
print("x", tuple(x.shape), "| mean", tuple(mean.shape), "| output", tuple(layer_norm(x, gamma, beta).shape))

torch_ln = nn.LayerNorm(16, dtype=torch.float64).to(device)
with torch.no_grad():
    torch_ln.weight.copy_(gamma)
    torch_ln.bias.copy_(beta)
print("equals torch.nn.LayerNorm with the same gamma, beta:", torch.allclose(layer_norm(x, gamma, beta), torch_ln(x)))

ones, zeros = torch.ones_like(gamma), torch.zeros_like(beta)
x_hat = layer_norm(x, ones, zeros, eps=0.0)  # (B, T, d_model), before gamma and beta
print("per-token mean all 0 (to 1e-12):", x_hat.mean(-1).abs().max().item() < 1e-12)
print("per-token biased variance all 1:", torch.allclose(x_hat.var(-1, correction=0), torch.ones(2, 5, dtype=torch.float64)))
print("scale a token by 7 -> same output:", torch.allclose(layer_norm(7 * x, gamma, beta, 0.0), layer_norm(x, gamma, beta, 0.0)))
print("shift a token by 5 -> same output:", torch.allclose(layer_norm(x + 5, gamma, beta), layer_norm(x, gamma, beta)))

# %% [markdown] id="ln-llm"
# **In real LLMs.** BERT and the original Transformer use LayerNorm after each sublayer (Post-LN,
# section 5; BERT with $\varepsilon = 10^{-12}$), GPT-2 before each sublayer plus once at the end
# (`ln_f`, $\varepsilon = 10^{-5}$). A LayerNorm over $d$ features has $2d$ parameters; GPT-2
# small's 25 LayerNorms hold $25 \cdot 2 \cdot 768 = 38{,}400$ of its 124 million.
#
# **Common mistake 1: the unbiased variance.** `torch.var` and `Tensor.var` divide by $d - 1$ by
# default. LayerNorm divides by $d$. For $d = 4$ every output is $\sqrt{3/4} \approx 0.866$ times the
# right one; for $d = 768$ the error is only about $0.07\,\%$, which is exactly why it slips through
# eyeball tests and then fails a comparison with torch.

# %% id="ln-mistake-unbiased"
# NBVAL_CHECK_OUTPUT
x4 = vec([1.0, 3.0, 5.0, 7.0])
right = (x4 - x4.mean()) / torch.sqrt(x4.var(correction=0) + 1e-5)
wrong = (x4 - x4.mean()) / torch.sqrt(x4.var() + 1e-5)  # WRONG: torch.var's default divides by d - 1
print("right  ", show(right))
print("wrong  ", show(wrong), " ratio", round((wrong / right)[0].item(), 4))
x768 = randn(768, seed=6, dtype=torch.float64)
ratio = ((x768 - x768.mean()) / x768.std() / ((x768 - x768.mean()) / x768.std(correction=0)))[0].item()
print("d = 768: wrong / right =", round(ratio, 5))

# %% [markdown] id="ln-mistake-eps-text"
# **Common mistake 2: $\varepsilon$ outside the square root.** For an ordinary token the two
# versions agree to several digits, so nothing looks wrong. For a nearly constant token (variance
# $10^{-6}$, not rare for padding or a freshly initialized embedding) the difference is large:
# $\sqrt{10^{-6} + 10^{-5}} \approx 0.0033$ against $\sqrt{10^{-6}} + 10^{-5} \approx 0.00101$.

# %% id="ln-mistake-eps"
# NBVAL_CHECK_OUTPUT
flat = vec([0.5, 0.5, 0.5, 0.5]) + 1e-3 * vec([-1.0, 1.0, -1.0, 1.0])  # std 1e-3
inside = (flat - flat.mean()) / torch.sqrt(flat.var(correction=0) + 1e-5)
outside = (flat - flat.mean()) / (torch.sqrt(flat.var(correction=0)) + 1e-5)  # WRONG
print("eps inside (right):", show(inside), "| eps outside (wrong):", show(outside))

# %% [markdown] id="per-token"
# ## 3. Per token, not per batch
#
# **Main idea.** LayerNorm's statistics come from one token's own features, so a token's output
# does not depend on the other tokens in its sequence or the other sequences in its batch. Taking
# the statistics over the batch axis instead is BatchNorm, the norm of convolutional networks. In a
# language model it breaks three things: with a **batch of one** (generation) every feature's
# batch variance is 0 and the output collapses to $\beta$; the same sentence gives different outputs
# in different batches; and statistics over the **sequence** axis mix future tokens into past ones.
#
# **Formula.** Right: $\mu_{b,t} = \frac{1}{d}\sum_i x_{b,t,i}$ (one per token). Wrong (batch axis):
# $\mu_{t,i} = \frac{1}{B}\sum_b x_{b,t,i}$, which for $B = 1$ is $x_{0,t,i}$ itself.

# %% id="per-token-batch-of-one"
# NBVAL_CHECK_OUTPUT
def norm_over_batch(x, eps=1e-5):  # WRONG: statistics over dim 0, the batch axis
    mean = x.mean(dim=0, keepdim=True)  # (1, T, d_model)
    var = x.var(dim=0, keepdim=True, correction=0)  # (1, T, d_model)
    return (x - mean) / torch.sqrt(var + eps)


one = randn(1, 4, 6, seed=7, dtype=torch.float64)  # (B, T, d_model) = (1, 4, 6): a batch of one
ones6, zeros6 = torch.ones(6, dtype=torch.float64, device=device), torch.zeros(6, dtype=torch.float64, device=device)
print("per token, token 0:   ", show(layer_norm(one, ones6, zeros6)[0, 0], 3))
print("over the batch, token 0:", show(norm_over_batch(one)[0, 0], 3), "<- everything is beta = 0")

others = randn(3, 4, 6, seed=8, dtype=torch.float64)  # three other sequences
batch = torch.cat([one, others])  # (4, 4, 6): the same sequence, now in a batch of four
print("same sequence in another batch, per token: unchanged =",
      torch.equal(layer_norm(batch, ones6, zeros6)[0], layer_norm(one, ones6, zeros6)[0]))
print("same sequence in another batch, over the batch: unchanged =",
      torch.allclose(norm_over_batch(batch)[0], norm_over_batch(one)[0]))

# %% [markdown] id="per-token-leak-text"
# Statistics over the sequence axis (`dim=-2`) are worse in a decoder: they let the last token
# change the first token's output, a leak of the future that no causal mask can stop, because the
# norm runs outside attention.

# %% id="per-token-leak"
# NBVAL_CHECK_OUTPUT
seq = randn(1, 5, 6, seed=9, dtype=torch.float64)  # (B, T, d_model)
changed = seq.clone()
changed[0, -1] += 3.0  # change only the last token
over_seq = lambda t: (t - t.mean(-2, keepdim=True)) / torch.sqrt(t.var(-2, keepdim=True, correction=0) + 1e-5)
print("per token: token 0 unchanged =", torch.equal(layer_norm(seq, ones6, zeros6)[0, 0], layer_norm(changed, ones6, zeros6)[0, 0]))
print("over the sequence: token 0 unchanged =", torch.equal(over_seq(seq)[0, 0], over_seq(changed)[0, 0]))

# %% [markdown] id="rmsnorm"
# ## 4. RMSNorm
#
# **Main idea.** RMSNorm keeps only the rescaling half of LayerNorm: it divides each token by its
# root mean square and multiplies by $\gamma$. No mean is subtracted and there is no $\beta$. It
# is cheaper (one reduction instead of two) and in practice trains as well, which is why most
# recent LLMs use it.
#
# **Formula.**
#
# $$
# \mathrm{rms}(x) = \sqrt{\frac{1}{d}\sum_{i=1}^{d} x_i^2 + \varepsilon}, \qquad
# y_i = \frac{x_i}{\mathrm{rms}(x)}\,\gamma_i .
# $$
#
# **Worked example.** The same $x = [1, 3, 5, 7]$: $\operatorname{mean}(x^2) = (1 + 9 + 25 + 49)/4 = 21$,
# $\mathrm{rms} = \sqrt{21} \approx 4.5826$, so $x / \mathrm{rms} \approx [0.2182, 0.6547, 1.0911, 1.5275]$:
# all positive, because nothing was subtracted. With $\gamma = [1, 2, 1, 0.5]$ as before.

# %% id="rms-by-hand"
# NBVAL_CHECK_OUTPUT
eps = 1e-6
rms = math.sqrt(sum(v * v for v in values) / d + eps)
by_hand = [v / rms * g for v, g in zip(values, gamma_list)]
print("mean square", sum(v * v for v in values) / d, "| rms", round(rms, 6))
print("by hand        ", [round(v, 4) for v in by_hand])
x, gamma = vec(values), vec(gamma_list)
print("helpers.norms  ", show(rms_norm(x, gamma, eps)))
torch_rms = nn.RMSNorm(d, eps=eps, dtype=torch.float64).to(device)  # eps passed explicitly (see below)
with torch.no_grad():
    torch_rms.weight.copy_(gamma)
print("torch.nn.RMSNorm", show(torch_rms(x)))

# %% [markdown] id="rms-check"
# **Implementation check.** `x` `(B, T, d_model)` → `(x ** 2).mean(dim=-1, keepdim=True)` `(B, T, 1)` →
# `x / torch.sqrt(ms + eps) * gamma` `(B, T, d_model)`. Properties: each output token has RMS 1
# before $\gamma$; scaling a token does not change the output; shifting it does (only LayerNorm
# removes the mean); and for a token whose mean is already 0, RMSNorm and LayerNorm (without
# $\beta$) agree.
#
# **A trap when testing against torch.** `torch.nn.RMSNorm(d)` and `F.rms_norm` default to
# `eps=None`, which means `torch.finfo(dtype).eps`: about $1.2 \times 10^{-7}$ in `float32`, not the
# $10^{-6}$ of Llama's code or of `helpers.norms.rms_norm`. On an ordinary token the difference is
# invisible; on a token with a small norm it is not. Always pass `eps` explicitly.

# %% id="rms-properties"
# NBVAL_CHECK_OUTPUT
x = randn(2, 5, 16, seed=10, dtype=torch.float64) * 3 + 1  # (B, T, d_model)
ones16 = torch.ones(16, dtype=torch.float64, device=device)
y = rms_norm(x, ones16, eps=0.0)  # (B, T, d_model)
print("every token has RMS 1:", torch.allclose(y.pow(2).mean(-1).sqrt(), torch.ones(2, 5, dtype=torch.float64, device=device)))
print("scale a token by 7 -> same output:", torch.allclose(rms_norm(7 * x, ones16, 0.0), y))
print("shift a token by 5 -> same output:", torch.allclose(rms_norm(x + 5, ones16, 0.0), y))
centered = x - x.mean(-1, keepdim=True)
print("mean-0 token: RMSNorm == LayerNorm:", torch.allclose(rms_norm(centered, ones16, 0.0),
                                                              layer_norm(centered, ones16, 0 * ones16, 0.0)))

tiny = torch.full((1, 8), 1e-3, device=device)  # a float32 token with a small norm
default_eps = nn.RMSNorm(8).to(device)  # eps=None -> torch.finfo(torch.float32).eps
print("nn.RMSNorm default eps:", default_eps.eps, "-> uses", f"{torch.finfo(torch.float32).eps:.3g}")
print("default eps vs eps=1e-6 on the tiny token:", show(default_eps(tiny)[0, :1], 4), "vs",
      show(rms_norm(tiny, torch.ones(8, device=device), 1e-6)[0, :1], 4))

# %% [markdown] id="rms-llm"
# **In real LLMs.** Llama (all generations), Mistral, Qwen and Gemma use RMSNorm in the Pre-LN
# position; Llama-2 7B has $2 \cdot 32 + 1 = 65$ of them with 4096 parameters each. T5's "LayerNorm"
# is also RMS-style: it scales without subtracting the mean and has no bias. The $\varepsilon$ is
# a config field (`rms_norm_eps`, $10^{-6}$ or $10^{-5}$), so an implementation that hard-codes
# another value, or inherits torch's `None`, drifts from the checkpoint it loads.
#
# **Common mistake: subtracting the mean.** That turns RMSNorm into LayerNorm without $\beta$: every
# token's output gets mean 0, and the numbers no longer match the model's.

# %% id="rms-mistake"
# NBVAL_CHECK_OUTPUT
x4 = vec([1.0, 3.0, 5.0, 7.0])
centered = x4 - x4.mean()
wrong = centered / torch.sqrt(centered.pow(2).mean() + 1e-6)  # WRONG: subtracts the mean first
print("right", show(rms_norm(x4, torch.ones(4, dtype=torch.float64, device=device))), "mean",
      round(rms_norm(x4, torch.ones(4, dtype=torch.float64, device=device)).mean().item(), 4))
print("wrong", show(wrong), "mean", round(wrong.mean().item(), 4) + 0.0)

# %% [markdown] id="blocks"
# ## 5. Pre-LN and Post-LN
#
# **Main idea.** A block has two sublayers, attention and the feed-forward network, each with a
# residual connection and a norm. The only question is where the norm goes.
#
# - **Post-LN** (the 2017 Transformer, BERT): add the edit, then normalize the sum. The stream
#   itself is normalized after every sublayer, so there is no untouched identity path from the
#   output back to the input.
# - **Pre-LN** (GPT-2, Llama and nearly every LLM since): normalize a *copy* of the stream for the
#   sublayer to read, and add the edit to the raw stream. The identity path is intact; the stream
#   is never normalized inside the stack, so the model needs **one final norm** after the last
#   block (GPT-2's `ln_f`), outside every block.
#
# **Formula.**
#
# $$
# \text{Pre-LN:}\quad x \leftarrow x + \mathrm{attn}(\mathrm{norm}_1(x)),\quad x \leftarrow x + \mathrm{ffn}(\mathrm{norm}_2(x))
# \qquad
# \text{Post-LN:}\quad x \leftarrow \mathrm{norm}_1(x + \mathrm{attn}(x)),\quad x \leftarrow \mathrm{norm}_2(x + \mathrm{ffn}(x))
# $$
#
# `helpers.norms.pre_ln_block(x, attn, ffn, norm1, norm2)` and `post_ln_block(...)` take the four
# pieces as callables, so the code reads like the equations:
#
# ```python
# x = x + attn(norm1(x))          # Pre-LN              x = norm1(x + attn(x))   # Post-LN
# x = x + ffn(norm2(x))                                 x = norm2(x + ffn(x))
# ```
#
# **Implementation check against torch.** `nn.TransformerEncoderLayer` implements both:
# `norm_first=True` is Pre-LN, `norm_first=False` (the default) is Post-LN. With dropout 0, in
# eval mode, its own attention, MLP and norm parameters handed to our block functions as
# callables give the same output; each order compared with the *other* layer does not.

# %% id="blocks-vs-torch"
# NBVAL_CHECK_OUTPUT
def sublayers_of(layer):
    """The pieces of an nn.TransformerEncoderLayer as callables (B, T, d_model) -> (B, T, d_model)."""
    attn = lambda h: layer.self_attn(h, h, h, need_weights=False)[0]
    ffn = lambda h: layer.linear2(layer.activation(layer.linear1(h)))
    norm1 = lambda h: layer_norm(h, layer.norm1.weight, layer.norm1.bias, layer.norm1.eps)
    norm2 = lambda h: layer_norm(h, layer.norm2.weight, layer.norm2.bias, layer.norm2.eps)
    return attn, ffn, norm1, norm2


def encoder_layer(norm_first, seed):
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=4, dim_feedforward=32, dropout=0.0, batch_first=True,
                                       norm_first=norm_first, dtype=torch.float64).to(device).eval()
    with torch.no_grad():  # give norm1 and norm2 their own gamma and beta
        for norm in (layer.norm1, layer.norm2):
            norm.weight.copy_(1 + 0.3 * torch.randn(16, dtype=torch.float64))
            norm.bias.copy_(0.3 * torch.randn(16, dtype=torch.float64))
    return layer


x = randn(2, 5, 16, seed=11, dtype=torch.float64)  # (B, T, d_model)
pre_layer, post_layer = encoder_layer(True, 12), encoder_layer(False, 12)
print("pre_ln_block  == TransformerEncoderLayer(norm_first=True): ",
      torch.allclose(pre_ln_block(x, *sublayers_of(pre_layer)), pre_layer(x)))
print("post_ln_block == TransformerEncoderLayer(norm_first=False):",
      torch.allclose(post_ln_block(x, *sublayers_of(post_layer)), post_layer(x)))
print("swapped: pre vs norm_first=False:", torch.allclose(pre_ln_block(x, *sublayers_of(post_layer)), post_layer(x)),
      "| post vs norm_first=True:", torch.allclose(post_ln_block(x, *sublayers_of(pre_layer)), pre_layer(x)))

# %% [markdown] id="final-norm-text"
# **The final norm of a Pre-LN stack is outside the layers.** `nn.TransformerEncoder(layer, n,
# norm=nn.LayerNorm(d))` applies that norm once, after the last Pre-LN layer. Three `pre_ln_block`s
# followed by one `layer_norm` reproduce it; without the final norm the output's size is whatever
# the stream grew to.

# %% id="final-norm"
# NBVAL_CHECK_OUTPUT
torch.manual_seed(13)
layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True, norm_first=True, dtype=torch.float64)
encoder = nn.TransformerEncoder(layer, num_layers=3, norm=nn.LayerNorm(16, dtype=torch.float64),
                                enable_nested_tensor=False).to(device).eval()
h = x
for sub in encoder.layers:
    h = pre_ln_block(h, *sublayers_of(sub))  # (B, T, d_model)
final = layer_norm(h, encoder.norm.weight, encoder.norm.bias, encoder.norm.eps)
print("3 x pre_ln_block + final layer_norm == nn.TransformerEncoder:", torch.allclose(final, encoder(x)))
print("without the final norm:", torch.allclose(h, encoder(x)),
      "| mean token norm before / after it:", round(h.norm(dim=-1).mean().item(), 2), "/",
      round(final.norm(dim=-1).mean().item(), 2))

# %% [markdown] id="blocks-llm"
# **In real LLMs.** BERT: Post-LN, trained with a learning-rate warmup. GPT-2 moved the LayerNorm to
# the input of each sub-block and added `ln_f`; Llama does the same with RMSNorm. Some recent models
# put a norm on the sublayer's *output* as well (Gemma 2 normalizes both the input and the output
# of each sublayer), which is a third layout, not either of these two.
#
# **Common mistakes.** Post-LN written as `x + norm1(attn(x))` normalizes only the edit, before the
# add; the stream is then never normalized. Pre-LN written with the second line as
# `x = ffn(norm2(x))` drops the final residual, and with it the identity path: a zero sublayer now
# erases the token. Both run without an error; section 7 shows their numbers.

# %% [markdown] id="deep"
# ## 6. A deep stack at initialization
#
# **Main idea.** Where the norm sits decides how signals and gradients travel through a deep stack
# *before any training*. In Pre-LN the raw stream is a running sum of edits, so its size grows with
# depth, while each sublayer still reads a normalized copy; gradients reach every layer through the
# identity path. In Post-LN the stream is renormalized after every sublayer, so its size is pinned,
# and every gradient from the loss back to layer $l$ passes through the norms of all the later
# sublayers. Xiong et al. (2020, "On Layer Normalization in the Transformer Architecture") show that
# at initialization Post-LN's gradients are largest for the layers near the output, which is why it
# needs a learning-rate warmup, and that Pre-LN's are smaller and not concentrated there.
#
# **The experiment.** Stacks of $L = 24$ and $L = 48$ blocks with $d_{\text{model}} = 64$, 4 heads,
# an MLP of width 256, $T = 16$ tokens, $B = 4$ sequences, built from plain torch
# (`nn.MultiheadAttention` and an `nn.Sequential` MLP) and put together with `pre_ln_block` or
# `post_ln_block`. Both orders get **the same weights** (same seed). A Pre-LN stack ends with its
# final LayerNorm. The loss is the mean squared error against a fixed random target. For each layer
# we record the **gradient norm of its parameters** and the **residual-stream norm after it** (mean
# token L2 norm, `helpers.norms.residual_norms`). Everything is computed in `float64`, so the
# printed figures are the same on every machine.

# %% id="deep-build"
class Block(nn.Module):
    """One transformer block from plain torch, with the norm placement chosen by `order`."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, order: str) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))
        self.norm1, self.norm2 = LayerNorm(d_model), LayerNorm(d_model)
        self.block = pre_ln_block if order == "pre" else post_ln_block

    def self_attention(self, h: torch.Tensor) -> torch.Tensor:
        return self.attn(h, h, h, need_weights=False)[0]  # (B, T, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x, self.self_attention, self.ffn, self.norm1, self.norm2)  # (B, T, d_model)


def deep_stack_at_init(n_layers: int, order: str, d_model: int = 64, n_heads: int = 4, T: int = 16, B: int = 4):
    """(gradient norm per layer (L,), residual-stream norm before the first and after each layer (L + 1,))."""
    torch.manual_seed(0)  # the same weights for both orders
    blocks = nn.ModuleList(Block(d_model, n_heads, 4 * d_model, order) for _ in range(n_layers))
    blocks = blocks.to(device=device, dtype=torch.float64)
    x = randn(B, T, d_model, seed=1, dtype=torch.float64)  # (B, T, d_model)
    target = randn(B, T, d_model, seed=2, dtype=torch.float64)  # (B, T, d_model)
    h = x
    for block in blocks:
        h = block(h)  # (B, T, d_model)
    if order == "pre":
        h = layer_norm(h, torch.ones_like(h[0, 0]), torch.zeros_like(h[0, 0]))  # the final norm, outside the blocks
    ((h - target) ** 2).mean().backward()
    grad_norms = torch.stack([torch.cat([p.grad.flatten() for p in block.parameters()]).norm() for block in blocks])
    with torch.no_grad():
        stream_norms = residual_norms(x, list(blocks))  # (L + 1,)
    return grad_norms.cpu(), stream_norms.cpu()


results = {(L, order): deep_stack_at_init(L, order) for L in (24, 48) for order in ("pre", "post")}

# %% id="deep-figures"
# NBVAL_CHECK_OUTPUT
print(f"{'':>12} | {'gradient norm':^33} | {'residual-stream norm':^32}")
print(f"{'L, order':>12} | {'first':>8} {'last':>8} {'first/last':>14} | {'input':>7} {'middle':>7} {'last':>7} {'last/in':>8}")
for (L, order), (grads, stream) in results.items():
    print(f"{L:>3}, {order + '-LN':>7} | {grads[0].item():>8.3f} {grads[-1].item():>8.3f} {(grads[0] / grads[-1]).item():>14.2f} | "
          f"{stream[0].item():>7.2f} {stream[L // 2].item():>7.2f} {stream[-1].item():>7.2f} {(stream[-1] / stream[0]).item():>8.2f}")
print("sqrt(d_model) =", math.sqrt(64))
for L in (24, 48):
    ratio = results[(L, "post")][0][-1] / results[(L, "pre")][0][-1]
    print(f"L = {L}: last layer's gradient norm, Post-LN / Pre-LN = {ratio.item():.2f}")

# %% id="deep-plot"
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for (L, order), (grads, stream) in results.items():
    style = {"color": "tab:blue" if order == "pre" else "tab:red", "linestyle": "-" if L == 48 else "--",
             "label": f"{order}-LN, L = {L}"}
    axes[0].semilogy(range(1, L + 1), grads.numpy(), **style)
    axes[1].plot(range(L + 1), stream.numpy(), **style)
axes[0].set(title="gradient norm of each layer's parameters at init", xlabel="layer", ylabel="norm")
axes[1].axhline(math.sqrt(64), color="k", linestyle=":", label=r"$\sqrt{d_{model}}$")
axes[1].set(title="residual-stream norm after each layer (mean token L2)", xlabel="layer (0 = input)")
for ax in axes:
    ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown] id="deep-read"
# **Reading the figures.** (The first 24 blocks of the 48-layer stacks are the 24-layer stacks, same
# seed, so in the right panel the dashed curves lie under the solid ones.) The Post-LN stream stays at $\sqrt{d_{\text{model}}} = 8$ after every
# layer: each norm (with $\gamma = 1$, $\beta = 0$ at init) sets every token to RMS 1. The Pre-LN
# stream keeps growing as edits pile up, roughly like the square root of the depth. The gradients
# go the other way round. Post-LN's are largest at the **last** layers (first/last below 1) and, at
# the last layer, about three to four times larger than Pre-LN's: the large near-output gradients
# that make Post-LN unstable without warmup. Pre-LN's gradients do not pile up at the output: each
# later layer's edit is a smaller part of an ever larger stream, so the first layers get the larger
# share, and the last layer's gradient shrinks as the stack gets deeper.
#
# **In real LLMs.** This is why deep models moved to Pre-LN: they train with larger learning
# rates and little or no warmup. The price is the growing stream (and the final norm it needs);
# chapter 09 measures these per-layer ratios on a trained model.
#
# **Common mistake.** Reading the gradient of a deep Pre-LN stack without its final norm: the
# loss then sees the raw, growing stream, and the picture changes. The final norm is part of the
# architecture, not an afterthought.

# %% [markdown] id="common-mistakes"
# ## 7. Common mistakes
#
# Each wrong version below runs without an error. One setup serves them all: a token batch
# `(B, T, d_model)` = `(2, 5, 16)` in `float64`, and the Pre-LN layer of section 5.

# %% id="mistakes-norms"
# NBVAL_CHECK_OUTPUT
x = randn(2, 5, 16, seed=20, dtype=torch.float64) * 2 + 1  # (B, T, d_model)
x[0, 1] = 1e-3 * randn(16, seed=21, dtype=torch.float64)  # one nearly constant token
g, b = randn(16, seed=22, dtype=torch.float64), randn(16, seed=23, dtype=torch.float64)
right = layer_norm(x, g, b)


def max_error(wrong):
    return f"{(wrong - right).abs().max().item():.3g}"


mean, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True, correction=0)
print("unbiased variance:  ", max_error((x - mean) / torch.sqrt(x.var(-1, keepdim=True) + 1e-5) * g + b))
print("eps outside sqrt:   ", max_error((x - mean) / (torch.sqrt(var) + 1e-5) * g + b))
print("over the batch axis:", max_error((x - x.mean(0)) / torch.sqrt(x.var(0, correction=0) + 1e-5) * g + b))
print("forgot gamma, beta: ", max_error((x - mean) / torch.sqrt(var + 1e-5)))
rms_right = rms_norm(x, g)
print("RMSNorm minus mean: ", f"{((x - mean) / torch.sqrt(var + 1e-6) * g - rms_right).abs().max().item():.3g}")

# %% id="mistakes-blocks"
# NBVAL_CHECK_OUTPUT
attn, ffn, norm1, norm2 = sublayers_of(pre_layer)
x = randn(2, 5, 16, seed=24, dtype=torch.float64)  # (B, T, d_model)
right_pre, right_post = pre_ln_block(x, attn, ffn, norm1, norm2), post_ln_block(x, attn, ffn, norm1, norm2)
h = x + attn(norm1(x))
no_final_residual = ffn(norm2(h))  # WRONG Pre-LN: x = ffn(norm2(x))
h = x + norm1(attn(x))
norm_before_add = h + norm2(ffn(h))  # WRONG Post-LN: x + norm(attn(x))
print("Pre-LN without the final residual, max error:", round((no_final_residual - right_pre).abs().max().item(), 3))
print("Post-LN normalizing before the add, max error:", round((norm_before_add - right_post).abs().max().item(), 3))


def unnormalized(out):  # undo norm2's gamma and beta: a Post-LN output then has variance 1 per token
    return ((out - pre_layer.norm2.bias) / pre_layer.norm2.weight).var(-1, correction=0)[0]


print("per-token variance after undoing norm2's gamma, beta, right:", show(unnormalized(right_post), 2))
print("per-token variance after undoing norm2's gamma, beta, wrong:", show(unnormalized(norm_before_add), 2))


def pre_ln_without_final_residual(x, attn, ffn, norm1, norm2):  # WRONG
    x = x + attn(norm1(x))
    return ffn(norm2(x))


zero = torch.zeros_like  # a sublayer with nothing to add
print("zero sublayers: right Pre-LN returns x:", torch.equal(pre_ln_block(x, zero, zero, norm1, norm2), x),
      "| without the final residual it returns zeros:",
      torch.equal(pre_ln_without_final_residual(x, zero, zero, norm1, norm2), torch.zeros_like(x)))

# %% [markdown] id="mistakes-summary"
# | mistake | symptom you can print | the fix |
# |---|---|---|
# | statistics over the batch axis | a batch of one gives $\beta$ everywhere; outputs depend on the batch | `dim=-1` |
# | statistics over the sequence axis | a later token changes an earlier token's output | `dim=-1` |
# | unbiased variance (`torch.var` default) | every output $\sqrt{(d-1)/d}$ times too small | `correction=0`, or divide by $d$ |
# | $\varepsilon$ outside the square root | only nearly constant tokens are wrong, by a lot | `torch.sqrt(var + eps)` |
# | forgetting $\gamma$ / $\beta$ | matches torch only at initialization | `x_hat * gamma + beta` |
# | RMSNorm subtracting the mean | outputs have mean 0; LayerNorm without $\beta$ | divide `x` itself |
# | `nn.RMSNorm` with its default `eps=None` | small-norm tokens differ from the model's | pass `eps` explicitly |
# | Post-LN normalizing before the add | the stream is never normalized: undoing $\gamma$, $\beta$ does not give variance 1 | `norm1(x + attn(x))` |
# | Pre-LN forgetting the final residual | a zero sublayer erases the token | `x = x + ffn(norm2(x))` |
# | Pre-LN stack without a final norm | the output's size grows with depth | one norm after the last block |

# %% [markdown] id="self-check"
# ## 8. Self-check
#
# Try to answer before opening each answer.
#
# **Q1.** A batch `(B, T, d_model) = (8, 512, 768)` goes through LayerNorm. How many means does it
# compute, and along which axis?
#
# <details><summary>Answer</summary>
#
# $8 \times 512 = 4096$, one per token, each over the token's 768 features (`dim=-1`).
#
# </details>
#
# **Q2.** What is LayerNorm of $x = [2, 2, 2, 2]$ with $\gamma = 1$, $\beta = 0$, and why does $\varepsilon$ matter here?
#
# <details><summary>Answer</summary>
#
# $[0, 0, 0, 0]$: the deviations are 0 and the variance is 0, so without $\varepsilon$ it would be $0/0$.
# $\varepsilon$ inside the square root makes it $0/\sqrt{\varepsilon} = 0$.
#
# </details>
#
# **Q3.** Which of the two norms is unchanged when you add 5 to every feature of a token? Which when
# you multiply the token by 5?
#
# <details><summary>Answer</summary>
#
# Adding: only LayerNorm (it subtracts the mean). Multiplying by a positive number: both (up to $\varepsilon$).
#
# </details>
#
# **Q4.** Write the Pre-LN and Post-LN blocks in two lines each.
#
# <details><summary>Answer</summary>
#
# Pre-LN: `x = x + attn(norm1(x)); x = x + ffn(norm2(x))`. Post-LN: `x = norm1(x + attn(x)); x = norm2(x + ffn(x))`.
#
# </details>
#
# **Q5.** Why does a Pre-LN model need a norm after its last block, and a Post-LN model not?
#
# <details><summary>Answer</summary>
#
# Pre-LN never normalizes the stream itself, only the copies the sublayers read, so the last block's
# output has whatever size the stream grew to. A Post-LN block already ends with a norm.
#
# </details>
#
# **Q6.** You compare your RMSNorm with `torch.nn.RMSNorm(d)` and see differences only on tokens with
# a small norm. What is going on?
#
# <details><summary>Answer</summary>
#
# `nn.RMSNorm`'s default `eps` is `None`, i.e. `torch.finfo(dtype).eps`, not your $10^{-6}$. Pass
# `eps=1e-6` to both.
#
# </details>
#
# **Q7.** In a Pre-LN block, both sublayers output zeros. What does the block return? And in Post-LN?
#
# <details><summary>Answer</summary>
#
# Pre-LN returns its input exactly (the identity path). Post-LN returns `norm2(norm1(x))`, a
# normalized copy, not the input.
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
# | the residual stream is the input plus a running sum of edits; a zero sublayer is the identity | §1, `residual-sum`, `residual-identity` |
# | LayerNorm of one vector by hand equals `helpers` and `nn.LayerNorm` | §2, `ln-by-hand` |
# | per-token mean 0 and biased variance 1; invariance to scaling and shifting a token | §2, `ln-shapes` |
# | unbiased variance and $\varepsilon$ outside the root give wrong numbers | §2, `ln-mistake-unbiased`, `ln-mistake-eps` |
# | batch statistics break with a batch of one and depend on the batch; sequence statistics leak | §3, `per-token-batch-of-one`, `per-token-leak` |
# | RMSNorm by hand equals `helpers` and `nn.RMSNorm` (with `eps` passed); its default `eps` differs | §4, `rms-by-hand`, `rms-properties` |
# | `pre_ln_block` / `post_ln_block` equal `nn.TransformerEncoderLayer(norm_first=True/False)` | §5, `blocks-vs-torch` |
# | a Pre-LN stack's final norm sits outside the layers | §5, `final-norm` |
# | at init, Post-LN's gradients peak at the last layers and its stream stays at $\sqrt{d}$; Pre-LN's stream grows | §6, `deep-figures`, `deep-plot` |
# | the catalogued mistakes by their printed symptoms | §7, `mistakes-norms`, `mistakes-blocks` |

# %% [markdown] id="next"
# ## Next: the exercises
#
# Open [`exercises/04_norms/04_norms.ipynb`](../exercises/04_norms/04_norms.ipynb). You will
# normalize a vector by hand, write `layer_norm` and `rms_norm` matching torch, write the Pre-LN
# and Post-LN block equations from given sublayers, and measure the residual stream of a stack.
# Each exercise has a visible check that names the mistake if your output matches one of those in
# section 7.
