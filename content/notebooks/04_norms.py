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
# 1. The residual stream: old state plus a learned edit, the identity path, and the stream as shared
#    memory (the direct path $W_E \to W_U$ of a trained model behaves like a bigram table)
# 2. LayerNorm: one vector by hand, then tensors, checked against `torch.nn.LayerNorm`
# 3. Per token, not per batch: the wrong axis run beside the right one, with a batch of one
# 4. RMSNorm: the same vector, `torch.nn.RMSNorm`, its `eps=None` default, and why dropping the
#    re-centring costs little
# 5. Pre-LN and Post-LN: a diagram, a worked example with numbers, the two block equations checked
#    against `nn.TransformerEncoderLayer`, and two named variants (Sandwich-LN, DeepNorm)
# 6. A deep stack at initialization, as Xiong et al. (2020) measure it: the last layer's gradient
#    against depth $L = 6 \dots 48$ for both orders, over 5 seeds, with the fitted exponent; then
#    warm-up measured: 12-layer Post-LN and Pre-LN stacks trained with and without it
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
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter
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
from helpers.blocks import ModelConfig, TinyDecoder
from helpers.corpus import load_corpus, markov_chain
from helpers.depth import direct_path_logits, loglog_slope, stack_gradients, table_loss, warmup_runs
from helpers.tokenizers import course_chars
from helpers.training import bigram_loss, train, unigram_loss

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

# %% id="residual-picture"
fig, ax = plt.subplots(figsize=(8, 3.6))
parts = {"$x_0$ (input)": x0, "edit 1": edits[0], "edit 2": edits[1], "edit 3 (zero)": edits[2]}
up, down = [0.0] * 4, [0.0] * 4  # stacked bars: positive parts pile up, negative parts pile down
for (label, part), color in zip(parts.items(), ["gray", "tab:orange", "tab:green", "tab:purple"]):
    values = show(part, 2)
    bottoms = [u if v >= 0 else d for v, u, d in zip(values, up, down)]
    ax.bar(range(4), values, bottom=bottoms, color=color, edgecolor="k", label=label)
    up = [u + max(v, 0) for v, u in zip(values, up)]
    down = [d + min(v, 0) for v, d in zip(values, down)]
ax.scatter(range(4), show(stream[-1], 2), color="k", marker="D", zorder=3, label="$x_3$ (the stream after 3 edits)")
ax.axhline(0, color="k", lw=0.8)
ax.set(xticks=range(4), xlabel="feature", ylabel="value", title="the residual stream is a running sum")
ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
fig.tight_layout()
plt.show()

# %% [markdown] id="residual-picture-caption"
# *What to see:* each feature of $x_3$ (black diamond) is the height of its stacked bar: the input
# $x_0$ (gray) plus edit 1 (orange) plus edit 2 (green, pointing down on feature 1); the zero edit
# adds no bar, so the stream passes it unchanged.

# %% [markdown] id="residual-memory"
# **The residual stream as shared memory.** No sublayer talks to another directly: each one
# *reads* the stream (through its norm and its input matrices) and *writes* by adding to it. So
# every later layer can read what every earlier one wrote, and the embedding and the unembedding
# are connected by a path that skips every block: $x_0 = W_E[\text{token}]$ goes straight to
# $\text{logits} = \mathrm{norm}(x_0)\, W_U$ (plus whatever the blocks add). That **direct path**
# sees only the current token, so the best it can learn is a **bigram table**: the next token
# given this one. Below, the course's `TinyDecoder` (1 layer, $d_{\text{model}} = 32$, untied
# $W_E$ and $W_U$) trains for 200 steps on the course's character corpus (chapter 08's
# `helpers.training.train`); then `helpers.depth.direct_path_logits` reads off the $(V, V)$ table
# $\mathrm{norm}(W_E)\, W_U$ with every block skipped, and we score it as a bigram model on the
# validation text.

# %% id="residual-direct-path"
tok = course_chars()
train_ids, val_ids = torch.tensor(tok.encode(load_corpus("train"))), torch.tensor(tok.encode(load_corpus("val")))
V = tok.vocab_size
threads = torch.get_num_threads()
torch.set_num_threads(1)  # a model this small trains faster on one thread (chapter 08)
torch.manual_seed(0)
lm = TinyDecoder(ModelConfig(vocab_size=V, d_model=32, n_heads=4, n_layers=1, max_seq_len=32, tie_weights=False,
                             kernels="fused"))
history = train(lm, train_ids, val_ids, steps=200, batch_size=16, block_size=32, lr=1e-2, warmup=20,
                eval_every=200, eval_batches=4, seed=0, progress=False, device="cpu")
torch.set_num_threads(threads)
direct = direct_path_logits(lm).log_softmax(-1)  # (V, V): row = current character, column = next
losses = {"uniform (ln V)": math.log(V), "unigram counts": unigram_loss(train_ids, val_ids, V),
          "direct path W_E -> norm -> W_U": table_loss(direct, val_ids),
          "bigram counts": bigram_loss(train_ids, val_ids, V), "whole model (validation batches)": history.val_loss[-1]}
for name, loss in losses.items():
    print(f"{name:>34}: {loss:.2f} nats per character")
pairs = torch.bincount(train_ids[:-1] * V + train_ids[1:], minlength=V * V).view(V, V)  # (V, V) bigram counts
frequent = pairs.sum(1).argsort(descending=True)[:10]  # the 10 most frequent current characters
agree = direct.argmax(1)[frequent] == pairs.argmax(1)[frequent]  # (10,)
for c, ok in zip(frequent.tolist(), agree.tolist()):
    print(f"after {tok.decode([c])!r}: bigram table's top next {tok.decode([pairs[c].argmax().item()])!r}, "
          f"direct path's {tok.decode([direct[c].argmax().item()])!r}", "(same)" if ok else "")

# %% id="residual-direct-claims"
# NBVAL_CHECK_OUTPUT
print("the direct path alone beats the unigram counts (it uses the current token):",
      losses["direct path W_E -> norm -> W_U"] < losses["unigram counts"])
print("the direct path is no better than the bigram counts (it sees nothing else):",
      losses["direct path W_E -> norm -> W_U"] > losses["bigram counts"])
print("its top next character agrees with the bigram table's for at least 6 of the 10 most frequent characters:",
      agree.sum().item() >= 6)

# %% [markdown] id="residual-direct-read"
# The direct path sits between the unigram and the bigram baselines: it has learned part of a
# bigram table, written into $W_E$ and $W_U$, while the attention and MLP edits supply the rest
# (the whole model does better). Interpretability work reads trained GPT-2 the same way (Elhage
# et al., "A Mathematical Framework for Transformer Circuits", 2021: the zero-layer path
# $W_U W_E$ approximates bigram statistics).

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
# **A convention that differs from torch's: the unbiased variance.** `torch.var` and `Tensor.var`
# divide by $d - 1$ by default; `torch.nn.LayerNorm` divides by $d$. Dividing by $d - 1$ is a real
# convention, not a bug in itself: the Annotated Transformer's `LayerNorm` uses `x.std(-1)`
# (unbiased) and adds $\varepsilon$ to the standard deviation, and a model trained that way
# expects it. It becomes a mistake when your code must match `torch.nn.LayerNorm` or a checkpoint
# trained with it. For $d = 4$ every output is $\sqrt{3/4} \approx 0.866$ times torch's; for
# $d = 768$ the difference is only about $0.07\,\%$, which is why it slips through eyeball tests
# and then fails a comparison with torch.

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
# **Another convention that differs from torch's: $\varepsilon$ outside the square root**
# (the Annotated Transformer's $(x - \mu) / (\sigma + \varepsilon)$). For an ordinary token the
# two versions agree to several digits, so nothing looks wrong when you load a torch-trained model. For a nearly constant token (variance
# $10^{-6}$, not rare for padding or a freshly initialized embedding) the difference is large:
# $\sqrt{10^{-6} + 10^{-5}} \approx 0.0033$ against $\sqrt{10^{-6}} + 10^{-5} \approx 0.00101$.

# %% id="ln-mistake-eps"
# NBVAL_CHECK_OUTPUT
flat = vec([0.5, 0.5, 0.5, 0.5]) + 1e-3 * vec([-1.0, 1.0, -1.0, 1.0])  # std 1e-3
inside = (flat - flat.mean()) / torch.sqrt(flat.var(correction=0) + 1e-5)
outside = (flat - flat.mean()) / (torch.sqrt(flat.var(correction=0)) + 1e-5)  # WRONG
print("eps inside (torch):", show(inside), "| eps outside (another convention):", show(outside))

# %% [markdown] id="per-token"
# ## 3. Per token, not per batch
#
# **Main idea.** LayerNorm's statistics come from one token's own features, so a token's output
# does not depend on the other tokens in its sequence or the other sequences in its batch. Taking
# the statistics over the batch axis instead is BatchNorm, the norm of convolutional networks. In a
# language model it causes three problems. In training, a token's output depends on the other
# sequences of its batch (and a batch of one has batch variance 0, so the output collapses to
# $\beta$). At generation BatchNorm does *not* use the batch: in eval mode it uses **running
# statistics** averaged over the training batches, so a batch of one works, but then a token is
# normalized by statistics of other text, not by its own. And statistics over the **sequence** axis
# mix future tokens into past ones.
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

bn = nn.BatchNorm1d(6, dtype=torch.float64).to(device)  # expects (B, C, T): channels = features
for seed in range(20):  # "training": every batch updates the running mean and variance
    bn(randn(8, 6, 4, seed=100 + seed, dtype=torch.float64) * 2 + 1)
bn.eval()  # generation: the running statistics are used, not the batch's
at_generation = bn(one.transpose(1, 2)).transpose(1, 2)[0, 0]  # the batch of one, token 0
by_formula = (one[0, 0] - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
print("BatchNorm in eval mode, batch of one, token 0:", show(at_generation, 3))
print("  = (x - running_mean) / sqrt(running_var + eps):", torch.allclose(at_generation, by_formula),
      "| collapsed to beta = 0:", torch.allclose(at_generation, torch.zeros_like(at_generation)))

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

# %% id="norms-picture"
x8 = vec([1.0, 3.0, 5.0, 7.0, 2.0, 6.0, 4.0, 8.0])  # one token, d_model = 8
ones8 = torch.ones(8, dtype=torch.float64, device=device)
panels = {"the token x": x8, "LayerNorm(x): centred, then scaled": layer_norm(x8, ones8, 0 * ones8),
          "RMSNorm(x): only scaled": rms_norm(x8, ones8)}
fig, axes = plt.subplots(1, 3, figsize=(12, 3), sharey=True)
for ax, (title, v) in zip(axes, panels.items()):
    values = show(v, 3)
    ax.bar(range(8), values, color=["tab:red" if value < 0 else "tab:blue" for value in values])
    ax.axhline(0, color="k", lw=0.8)
    ax.axhline(sum(values) / 8, color="tab:green", linestyle="--", label=f"mean {sum(values) / 8:.2f}")
    rms_value = math.sqrt(sum(value * value for value in values) / 8)
    ax.set(title=f"{title}\nRMS {rms_value:.2f}", xlabel="feature")
    ax.legend(fontsize=8, loc="upper left")
plt.show()

# %% [markdown] id="norms-picture-caption"
# *What to see:* LayerNorm moves the token's mean to 0 (half the features turn negative, red) and
# its spread to 1; RMSNorm keeps every sign and the shape of the bars and only shrinks them until
# the RMS is 1, so its mean stays positive.

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
# **Why dropping the re-centring costs little** (Zhang and Sennrich, 2019, "Root Mean Square Layer
# Normalization"). Their argument: what makes LayerNorm useful is **re-scaling invariance**: the
# output does not change when a token, or the weight matrix that produced it, is scaled, so the next
# layer sees a fixed size whatever the earlier weights do. RMSNorm keeps that. Re-centring adds
# invariance to a shift shared by all features, and on the vectors a network actually normalizes
# the per-token mean is small next to the RMS (for $d$ roughly independent features, of order
# $1/\sqrt{d}$ of it), so subtracting it changes little. Measured below on the stream of a
# 6-block Pre-LN stack (section 5's blocks, random weights): the mean as a fraction of the RMS, how
# far RMSNorm's output is from LayerNorm's, and the scaling invariance of both.

# %% id="rms-recentering"
# NBVAL_CHECK_OUTPUT
torch.manual_seed(14)
stack = [nn.TransformerEncoderLayer(64, 4, 256, dropout=0.0, batch_first=True, norm_first=True,
                                    dtype=torch.float64).to(device).eval() for _ in range(6)]
h = randn(4, 16, 64, seed=15, dtype=torch.float64)  # (B, T, d_model)
with torch.no_grad():
    for layer in stack:
        h = layer(h)  # (B, T, d_model): the Pre-LN residual stream after 6 blocks
ones64 = torch.ones(64, dtype=torch.float64, device=device)
mean_over_rms = (h.mean(-1).abs() / h.pow(2).mean(-1).sqrt()).mean().item()
ln_out, rms_out = layer_norm(h, ones64, 0 * ones64), rms_norm(h, ones64)
print(f"|mean| / RMS per token, averaged: {mean_over_rms:.3f}   (1 / sqrt(d) = {1 / math.sqrt(64):.3f})")
print(f"RMSNorm vs LayerNorm output, mean |difference| per feature: {(ln_out - rms_out).abs().mean().item():.3f}"
      f"  (outputs have RMS 1)")
W = randn(64, 64, seed=16, dtype=torch.float64) / 8  # a weight matrix that writes the normalized input
print("scale W by 3: LayerNorm(h W) unchanged:", torch.allclose(layer_norm(h @ (3 * W), ones64, 0 * ones64),
                                                                  layer_norm(h @ W, ones64, 0 * ones64), atol=1e-6),
      "| RMSNorm(h W) unchanged:", torch.allclose(rms_norm(h @ (3 * W), ones64, 0.0), rms_norm(h @ W, ones64, 0.0)))
print("add 5 to every feature: LayerNorm unchanged:", torch.allclose(layer_norm(h + 5, ones64, 0 * ones64), ln_out),
      "| RMSNorm unchanged:", torch.allclose(rms_norm(h + 5, ones64), rms_out))

# %% [markdown] id="rms-mistake-text"
# So on real streams the two norms give nearly the same vectors, and both keep the scaling
# invariance that Zhang and Sennrich single out; RMSNorm saves one reduction per token (they report
# 7 % to 64 % faster runs across their models). It loses only the shift invariance, which matters
# when tokens carry a large common offset, as the `+ 5` line shows.
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
# The diagram below draws one block of each kind: the stream runs up the middle, the norms
# (green) sit on the side branch in Pre-LN and on the stream itself in Post-LN.

# %% id="blocks-diagram"
def draw_block(ax, title, boxes, branches):
    """boxes: (x, y, label, color), x = 0 on the stream, x = 1 on the side branch.
    branches: for each sublayer, the y where it leaves the stream, its boxes' y, and the y of its "+"."""
    ax.set(xlim=(-1.4, 2.2), ylim=(-0.6, 7.6), title=title)
    ax.axis("off")
    ax.annotate("", xy=(0, 7.3), xytext=(0, -0.4), arrowprops={"arrowstyle": "->", "lw": 2, "color": "gray"})
    ax.text(-0.15, -0.5, "x in", ha="right")
    ax.text(-0.15, 7.2, "x out", ha="right")
    for leave, ys, plus in branches:
        stops = [(0, leave)] + [(1, y) for y in ys] + [(0, plus)]
        for (x0, y0), (x1, y1) in zip(stops, stops[1:]):
            ax.annotate("", xy=(x1, y1 - 0.3 if x1 == 1 else y1), xytext=(x0, y0 + 0.3 if x0 == 1 else y0),
                        arrowprops={"arrowstyle": "->", "color": "k"})
    for x_pos, y_pos, label, color in boxes:
        ax.text(x_pos, y_pos, label, ha="center", va="center", bbox={"boxstyle": "round", "fc": color, "ec": "k"})


fig, axes = plt.subplots(1, 2, figsize=(10, 5))
norm_color, sub_color, add_color = "#b6e3b6", "#cfe2ff", "white"
draw_block(axes[0], "Pre-LN (GPT-2, Llama): norm on the branch", [
    (1, 1.0, "norm1", norm_color), (1, 2.0, "attention", sub_color), (0, 2.8, "+", add_color),
    (1, 4.0, "norm2", norm_color), (1, 5.0, "FFN", sub_color), (0, 5.8, "+", add_color),
    (0, 6.7, "final norm (once, after the last block)", norm_color)], [(0.2, (1.0, 2.0), 2.8), (3.2, (4.0, 5.0), 5.8)])
draw_block(axes[1], "Post-LN (2017 Transformer, BERT): norm on the stream", [
    (1, 1.3, "attention", sub_color), (0, 2.1, "+", add_color), (0, 2.9, "norm1", norm_color),
    (1, 4.5, "FFN", sub_color), (0, 5.3, "+", add_color), (0, 6.1, "norm2", norm_color)],
    [(0.2, (1.3,), 2.1), (3.5, (4.5,), 5.3)])
fig.tight_layout()
plt.show()

# %% [markdown] id="blocks-diagram-caption"
# *What to see:* in Pre-LN the gray stream from "x in" to "x out" passes only through additions, so
# an untouched identity path runs through every block (and one final norm is needed at the end); in
# Post-LN the stream itself passes through norm1 and norm2, so every path from output to input
# crosses a norm.

# %% [markdown] id="blocks-check-text"
# **Worked example with numbers: one Pre-LN and one Post-LN block.** One token,
# $x = [1, 3, 5, 7]$, $\gamma = 1$, $\beta = 0$, and two stand-in sublayers simple enough to
# follow by hand: "attention" $a(h) = 0.5\,h$ reversed, $[h_4, h_3, h_2, h_1]/2$ (one token attends
# only to itself, so attention is a linear map of it), and "FFN" $f(h) = \mathrm{ReLU}(h)$. Every
# intermediate is printed, and the end results are checked against `pre_ln_block` and
# `post_ln_block`.

# %% id="blocks-worked"
# NBVAL_CHECK_OUTPUT
x1 = vec([[1.0, 3.0, 5.0, 7.0]])  # (T, d_model) = (1, 4)
ones4 = torch.ones(4, dtype=torch.float64, device=device)
ln = lambda h: layer_norm(h, ones4, 0 * ones4)  # gamma = 1, beta = 0
a = lambda h: 0.5 * h.flip(-1)  # stand-in attention: (T, 4) -> (T, 4)
f = torch.relu  # stand-in FFN
print("Pre-LN:  norm1(x)            =", show(ln(x1)[0], 3))
h = x1 + a(ln(x1))
print("         x + a(norm1(x))     =", show(h[0], 3))
print("         norm2(that)         =", show(ln(h)[0], 3))
pre_out = h + f(ln(h))
print("         + f(norm2(that))    =", show(pre_out[0], 3), " <- raw stream, RMS", round(pre_out.pow(2).mean().sqrt().item(), 3))
print("Post-LN: x + a(x)            =", show((x1 + a(x1))[0], 3))
h = ln(x1 + a(x1))
print("         norm1(that)         =", show(h[0], 3))
print("         that + f(that)      =", show((h + f(h))[0], 3))
post_out = ln(h + f(h))
print("         norm2(that)         =", show(post_out[0], 3), " <- normalized, RMS", round(post_out.pow(2).mean().sqrt().item(), 3))
print("equal to pre_ln_block / post_ln_block:", torch.allclose(pre_out, pre_ln_block(x1, a, f, ln, ln)),
      torch.allclose(post_out, post_ln_block(x1, a, f, ln, ln)))

# %% [markdown] id="blocks-torch-text"
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
# **Two named variants, computed below.** **Sandwich-LN** (CogView, Ding et al. 2021; Gemma 2's
# layout) adds a second norm on the sublayer's *output*: $x \leftarrow x + \mathrm{norm}_{out}(F(\mathrm{norm}_{in}(x)))$;
# the identity path stays intact, and no edit can be larger than the norm lets it. **DeepNorm**
# (DeepNet, Wang et al. 2022) keeps Post-LN but up-weights the stream before the add,
# $x \leftarrow \mathrm{norm}(\alpha x + F(x))$, and scales down some initial weights by $\beta$;
# for a decoder-only model of $N$ layers $\alpha = (2N)^{1/4}$ and $\beta = (8N)^{-1/4}$. With it
# they trained Post-LN-style models of 1000 layers.
#
# **Common mistakes.** Post-LN written as `x + norm1(attn(x))` normalizes only the edit, before the
# add; the stream is then never normalized. Pre-LN written with the second line as
# `x = ffn(norm2(x))` drops the final residual, and with it the identity path: a zero sublayer now
# erases the token. Both run without an error; section 7 shows their numbers.

# %% id="blocks-variants"
# NBVAL_CHECK_OUTPUT
attn, ffn, norm1, norm2 = sublayers_of(pre_layer)


def sandwich_block(x, attn, ffn, norm1, norm2, out1, out2):
    x = x + out1(attn(norm1(x)))  # (..., T, d_model): a norm on the edit as well
    return x + out2(ffn(norm2(x)))


def deepnorm_block(x, attn, ffn, norm1, norm2, alpha):
    x = norm1(alpha * x + attn(x))  # (..., T, d_model): Post-LN with the stream up-weighted
    return norm2(alpha * x + ffn(x))


zero = torch.zeros_like
ones16, zeros16 = torch.ones(16, dtype=torch.float64, device=device), torch.zeros(16, dtype=torch.float64, device=device)
out_norm = lambda h: layer_norm(h, ones16, zeros16)  # the output norms, at init: gamma = 1, beta = 0
print("sandwich, zero sublayers -> returns x exactly:", torch.equal(sandwich_block(x, zero, zero, norm1, norm2, out_norm, out_norm), x))
print("deepnorm with alpha = 1 == post_ln_block:", torch.allclose(deepnorm_block(x, attn, ffn, norm1, norm2, 1.0),
                                                              post_ln_block(x, attn, ffn, norm1, norm2)))
edit = ffn(norm2(x))
print("sandwich: the FFN edit's RMS per token, raw vs after its output norm:",
      round(edit.pow(2).mean(-1).sqrt().mean().item(), 3), "vs",
      round(out_norm(edit).pow(2).mean(-1).sqrt().mean().item(), 3))
for N in (6, 48, 1000):
    print(f"DeepNorm, decoder-only, N = {N:>4}: alpha = (2N)^(1/4) = {(2 * N) ** 0.25:.3f}, beta = (8N)^(-1/4) = {(8 * N) ** -0.25:.3f}")

# %% [markdown] id="deep"
# ## 6. A deep stack at initialization
#
# **Main idea.** Where the norm sits decides how gradients reach the layers of a deep stack *before
# any training*. Xiong et al. (2020, "On Layer Normalization in the Transformer Architecture")
# analyse exactly this moment. Their Theorem 1 bounds the gradient of the last layer's second FFN
# matrix $W^2$:
#
# $$
# \text{Post-LN:}\ \Big\|\frac{\partial \mathcal{L}}{\partial W^{2,L}}\Big\|_F = O\big(d\sqrt{\ln d}\big),
# \qquad
# \text{Pre-LN:}\ \Big\|\frac{\partial \mathcal{L}}{\partial W^{2,L}}\Big\|_F = O\Big(d\sqrt{\tfrac{\ln d}{L}}\Big).
# $$
#
# Post-LN's last-layer gradient does not depend on the depth $L$; Pre-LN's shrinks like
# $1/\sqrt{L}$. The reason for Pre-LN (their Lemmas 2 and 3): the raw stream is a running sum of
# edits, so $\lVert x_L\rVert$ grows like $\sqrt{L}$, and the final norm divides every gradient
# that flows back through it by about $\lVert x_L\rVert / \sqrt{d}$.
#
# **The experiment, set up as the paper does.** `helpers.depth.stack_gradients` builds $L$ blocks
# from `nn.TransformerEncoderLayer`'s sublayers (ReLU MLP, dropout 0) put together with
# `pre_ln_block` or `post_ln_block`; every weight matrix is **Xavier-normal**, every bias **zero**,
# every LayerNorm $\gamma = 1$, $\beta = 0$; a Pre-LN stack ends with its final LayerNorm. A Xavier
# linear readout to 64 classes and a **cross-entropy** loss against random labels give one backward
# pass. Per layer it records $\lVert\partial\mathcal{L}/\partial W^2\rVert_F$ and, separately, the
# gradient norm of **all the block's non-norm parameters** (attention and MLP weights and biases).
# $d_{\text{model}} = 64$, 4 heads, $d_{ff} = 256$, $T = 16$, $B = 4$, $L \in \{6, 12, 24, 48\}$,
# **5 seeds** per $(L, \text{order})$ (weights and data both drawn from the seed), all in `float64`.
# `tests/test_depth.py` checks the stack against `nn.TransformerEncoder` and the init against
# Xavier's variance.

# %% id="deep-build"
DEPTHS, SEEDS = (6, 12, 24, 48), range(5)
runs = {(L, order): [stack_gradients(L, order, seed=s, d_model=64, n_heads=4, d_ff=256, T=16, B=4) for s in SEEDS]
        for L in DEPTHS for order in ("pre", "post")}


def over_seeds(L, order, pick):
    """(mean, standard deviation) over the seeds of a scalar picked from each run."""
    values = torch.tensor([pick(run) for run in runs[(L, order)]], dtype=torch.float64)  # (seeds,)
    return values.mean().item(), values.std().item()

# %% id="deep-figures"
# NBVAL_CHECK_OUTPUT
print("last layer's gradient norm at init, mean ± standard deviation over 5 seeds")
print(f"{'L':>3} | {'Pre-LN W2':>15} {'Pre-LN non-norm':>16} | {'Post-LN W2':>15} {'Post-LN non-norm':>17}")
for L in DEPTHS:
    cols = [over_seeds(L, order, lambda r, key=key: getattr(r, key)[-1].item())
            for order in ("pre", "post") for key in ("w2", "non_norm")]
    print(f"{L:>3} | " + " ".join(f"{m:>8.3f} ± {s:.3f}" for m, s in cols[:2]) + " | "
          + " ".join(f"{m:>8.3f} ± {s:.3f}" for m, s in cols[2:]))
slopes = {}
for order in ("pre", "post"):
    for key in ("w2", "non_norm"):
        means = [over_seeds(L, order, lambda r: getattr(r, key)[-1].item())[0] for L in DEPTHS]
        slopes[(order, key)] = loglog_slope(DEPTHS, means)
        print(f"fitted slope of log(last-layer {key}) against log(L), {order}-LN: {slopes[(order, key)]:+.2f}")
print("Theorem 1 predicts: Pre-LN -0.50, Post-LN 0.00")
print()
print("first layer's W2 gradient / last layer's, mean over seeds:")
for order in ("pre", "post"):
    print(f"  {order + '-LN':>7}:", "  ".join(f"L={L}: {over_seeds(L, order, lambda r: (r.w2[0] / r.w2[-1]).item())[0]:.2f}"
                                       for L in DEPTHS))
print("residual-stream norm after the last block (seed 0):",
      {f"{order}, L={L}": round(runs[(L, order)][0].stream[-1].item(), 1) for order in ("pre", "post") for L in (6, 48)})
print("cross-entropy at init, seed 0 (ln 64 = 4.16):",
      {f"{order}, L={L}": round(runs[(L, order)][0].loss, 2) for order in ("pre", "post") for L in (6, 48)})

# %% id="deep-plot"
fig, axes = plt.subplots(1, 3, figsize=(17, 4.2))
for order, color in (("pre", "tab:blue"), ("post", "tab:red")):
    stats = [over_seeds(L, order, lambda r: r.w2[-1].item()) for L in DEPTHS]
    axes[0].errorbar(DEPTHS, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", color=color, capsize=3,
                     label=f"{order}-LN (fitted slope {slopes[(order, 'w2')]:+.2f})")
    profile = torch.stack([run.w2 for run in runs[(48, order)]]).mean(0)  # (48,): mean over seeds
    axes[1].semilogy(range(1, 49), profile.numpy(), color=color, label=f"{order}-LN, L = 48")
    stream_rms = torch.stack([run.stream_sq for run in runs[(48, order)]]).mean(0).sqrt()  # (49,): sqrt(E||x_l||^2)
    axes[2].plot(range(49), stream_rms.numpy(), color=color, label=f"{order}-LN")
band_low = [math.sqrt((1 + l / 2) * 64) for l in range(49)]  # Lemma 2: (1 + l/2) d <= E||x_l||^2 <= (1 + 3l/2) d
band_high = [math.sqrt((1 + 3 * l / 2) * 64) for l in range(49)]
axes[2].fill_between(range(49), band_low, band_high, color="tab:blue", alpha=0.12,
                     label=r"Lemma 2, Pre-LN: $\sqrt{(1 + l/2)\,d}$ to $\sqrt{(1 + 3l/2)\,d}$")
axes[2].set(xlabel="layer l (0 = input)", ylabel=r"$\sqrt{\mathrm{mean}\ \|x_l\|^2}$ over tokens and seeds",
            title="residual-stream norm, L = 48")
reference = [over_seeds(6, "pre", lambda r: r.w2[-1].item())[0] * (6 / L) ** 0.5 for L in DEPTHS]
axes[0].plot(DEPTHS, reference, "k:", label=r"$\propto 1/\sqrt{L}$")
axes[0].set(xscale="log", yscale="log", xticks=DEPTHS, xticklabels=[str(L) for L in DEPTHS], xlabel="depth L",
            ylabel=r"$\|\partial \mathcal{L} / \partial W^2\|_F$ of the last layer",
            title="last layer's W2 gradient against depth (5 seeds, ±1 sd)")
axes[1].set(xlabel="layer", ylabel=r"$\|\partial \mathcal{L} / \partial W^2\|_F$ (mean of 5 seeds)",
            title="W2 gradient of every layer, L = 48")
axes[0].xaxis.set_minor_formatter(NullFormatter())  # the depths are labelled; no 2x10^1, 3x10^1 between them
for ax in axes[:2]:  # log-scaled gradient axes: plain decimals, major ticks only
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
for ax in axes:
    ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown] id="deep-plot-caption"
# *What to see:* on the left, on log-log axes, Post-LN's last-layer gradient (red) stays level
# from 6 to 48 layers while Pre-LN's (blue) falls parallel to the dotted $1/\sqrt{L}$ line; on the
# middle, inside one 48-layer stack, Pre-LN's gradients fall from the first layer to the last while
# Post-LN's stay within a narrow band; on the right, Post-LN's stream stays at $\sqrt{d} = 8$ while
# Pre-LN's grows like a square root of the depth, inside the shaded band of Xiong et al.'s Lemma 2
# (drawn for $d = 64$; the lemma bounds the expected *squared* norm, so the curves are the root of the
# mean squared token norm). Lemma 2's reason: each Pre-LN sublayer adds an edit that is
# uncorrelated with the stream at initialization, so squared norms add, and each layer adds between
# $d/2$ and $3d/2$ under the lemma's assumptions.

# %% [markdown] id="deep-read"
# **Reading the numbers.** The fitted exponents are what Theorem 1 says: about $-0.5$ for Pre-LN
# and about $0$ for Post-LN, for $W^2$ and for all non-norm parameters alike. The Post-LN stream sits
# at $\sqrt{d_{\text{model}}} = 8$ after every block (each norm resets every token to RMS 1); the
# Pre-LN stream grows with depth, and with it the factor $1/\lVert x_L\rVert$ of the final norm
# (Lemma 3), which multiplies the gradient of *every* layer alike.
#
# **Why Pre-LN's gradients fall toward the output.** The gradient reaching layer $l$'s output is
# $\partial\mathcal{L}/\partial x_L \cdot \prod_{k > l}(I + \partial F_k / \partial x_k)$: an
# early layer collects gradient through every later sublayer's branch as well as through the
# identity path, the last layer only through the identity. Each sublayer reads a normalized copy,
# so its own inputs are the same size at every depth, and the gradient of its $W^2$ is
# proportional to the gradient arriving at its output. So at depth the first layer's gradient is
# several times the last's (the ratio printed above grows with $L$).
#
# **Where this set-up differs from the paper's.** Xiong et al.'s theory is for a simplified block:
# $W_Q = W_K = 0$ (every query attends uniformly), one head, every matrix $d \times d$ (so
# $d_{ff} = d$), and its Theorem 1 is a bound that holds *with high probability* over the
# initialization, up to constants, not a prediction of a value. The stack here has random $W_Q, W_K$,
# 4 heads and $d_{ff} = 4d$, and averages 5 draws, so it tests the *scaling* in $L$, not the constants.
# Their Figure 3 is a different measurement again: expected gradient norms per layer, measured in
# their translation Transformers (encoder-decoders), not one stack with a random readout.
#
# In that figure Pre-LN's per-layer gradients look roughly constant across layers; their models have
# 6 layers. Here the first-to-last ratio is about 2 at 6
# layers, which on a log scale looks flat, and grows to about 6 at 48 layers. Larger gradients in the
# early layers of Pre-LN models are what NormFormer (Shleifer, Weston and Ott, 2021) measured in Pre-LN
# language models too ("gradients at early layers are much larger than at later layers"), and corrected
# with extra norms (after attention and after the FFN's activation) and a learned scale per attention
# head. The depth trend of the
# *last* layer, the theorem itself, holds at every depth measured. Note also what this experiment does
# not show: Post-LN's gradients are about the same at the first and the last layer here (ratio
# 0.9 to 1.1), not piled up at the output; the
# difference between the orders is how the last layer's gradient scales with $L$ (and, with the
# same learning rate, Post-LN's last layers take steps that do not shrink as the stack deepens).
#
# **Warm-up.** The paper argues that Post-LN's large, depth-independent gradients near the output
# are why it needs a learning-rate warm-up, and shows Pre-LN models that train without one. The
# training runs after the next cell measure it.
#
# **Common mistake: reading a Pre-LN stack without its final norm.** The readout then sees the raw
# stream, whose size grows with depth: the logits grow with it, the loss at initialization climbs
# with $L$ instead of staying near $\ln 64 + 0.5$ (the Xavier readout's logits have variance about
# 1), and the gradients are not the architecture's. Run below.

# %% id="deep-mistake"
# NBVAL_CHECK_OUTPUT
print(f"{'L':>3} | {'Pre-LN with its final norm':^30} | {'WRONG: without it':^30}")
print(f"{'':>3} | {'loss':>8} {'last-layer W2 grad':>20} | {'loss':>8} {'last-layer W2 grad':>20}")
for L in DEPTHS:
    right = runs[(L, "pre")][0]
    wrong = stack_gradients(L, "pre", seed=0, d_model=64, n_heads=4, d_ff=256, T=16, B=4, final_norm=False)
    print(f"{L:>3} | {right.loss:>8.2f} {right.w2[-1].item():>20.3f} | {wrong.loss:>8.2f} {wrong.w2[-1].item():>20.3f}")
print("ln(64) =", round(math.log(64), 2))

# %% [markdown] id="warmup-text"
# **Warm-up, measured.** Four runs of the course's own `TinyDecoder` with **12 layers**
# ($d_{\text{model}} = 32$, 4 heads, GPT-2's initialization), Post-LN and Pre-LN, each trained with
# and without a linear learning-rate warm-up, all else equal: the same initial weights per placement,
# the same batches, chapter 08's loop (`helpers.training.train`: AdamW with Adam's
# $\beta = (0.9, 0.999)$, gradient clipping at 1, cosine decay after the warm-up), peak learning
# rate $2\times10^{-2}$, 100 steps of $16 \times 32$ tokens, warm-up over the first 70 steps or none.
# The data is chapter 00's Markov language (`helpers.corpus.markov_chain`, 26 letters): its entropy
# rate is the floor any model can reach, its letter frequencies alone (unigram entropy) are what a
# model that ignores the previous letter reaches. `helpers.depth.warmup_runs` returns the four
# histories (`warmup_experiment`, the four final losses, is what `tests/test_depth.py` checks on two
# seeds); about 13 CPU-seconds in all.

# %% id="warmup-run"
warm = warmup_runs(seed=0)
chain = markov_chain(n_states=26, seed=0, sharpness=3.0)
floors = {"entropy rate": warm["entropy_rate"], "unigram entropy": chain.unigram_entropy(), "ln V": warm["uniform"]}
RUN_NAMES = {"post_no_warmup": "Post-LN, no warm-up", "post_warmup": "Post-LN, warm-up",
             "pre_no_warmup": "Pre-LN, no warm-up", "pre_warmup": "Pre-LN, warm-up"}
for key, label in RUN_NAMES.items():
    run = warm[key]
    print(f"{label:>20}: final validation loss {run.val_loss[-1]:.3f} nats, largest gradient norm {max(run.grad_norm):.1f}")
print(", ".join(f"{name} {value:.3f}" for name, value in floors.items()))
gentler = warmup_runs(seed=0, lr=1.5e-2, runs=[("post", False)])["post_no_warmup"]  # one more run, lower peak lr
print(f"Post-LN, no warm-up, peak lr 1.5e-2 instead: final validation loss {gentler.val_loss[-1]:.3f} nats")

# %% id="warmup-claims"
# NBVAL_CHECK_OUTPUT
finals = {key: warm[key].val_loss[-1] for key in RUN_NAMES}
print("Post-LN without warm-up ends at least 0.3 nats above each of the other three:",
      all(finals["post_no_warmup"] > finals[k] + 0.3 for k in finals if k != "post_no_warmup"))
print("Post-LN without warm-up stays within 0.2 nats of the unigram entropy (it never uses the previous letter):",
      abs(finals["post_no_warmup"] - floors["unigram entropy"]) < 0.2)
print("with warm-up, Pre-LN ends within 0.3 nats of the entropy rate:", finals["pre_warmup"] < floors["entropy rate"] + 0.3)
print("at peak lr 1.5e-2 Post-LN without warm-up learns the transitions (ends below the unigram entropy - 0.5):",
      gentler.val_loss[-1] < floors["unigram entropy"] - 0.5)

# %% id="warmup-plot"
fig, ax = plt.subplots(figsize=(9, 4.2))
styles = {"post_no_warmup": ("tab:red", "-"), "post_warmup": ("tab:red", "--"),
          "pre_no_warmup": ("tab:blue", "-"), "pre_warmup": ("tab:blue", "--")}
for key, label in RUN_NAMES.items():
    color, ls = styles[key]
    loss = torch.tensor(warm[key].train_loss)  # (steps,)
    smooth = torch.nn.functional.avg_pool1d(loss[None, None], 5, 1)[0, 0]  # (steps - 4,): running mean of 5
    ax.plot(range(5, len(loss) + 1), smooth.numpy(), color=color, ls=ls, label=label)
for (name, value), ls in zip(floors.items(), (":", "-.", (0, (1, 3)))):
    ax.axhline(value, color="gray", ls=ls, lw=1, label=f"{name} {value:.2f}")
ax.set(xlabel="update step", ylabel="training loss (running mean of 5), nats",
       title="12 layers, peak lr 2e-2: warm-up over 70 steps or none")
ax.legend(fontsize=8, ncol=2)
plt.show()

# %% [markdown] id="warmup-caption"
# *What to see:* Post-LN without warm-up (solid red) starts to learn, then blows up after about 15 steps
# at the full learning rate (its loss climbs back towards $\ln V$) and settles on the unigram line: it
# keeps the letter frequencies and never learns the transitions again. With warm-up (dashed red) the same Post-LN stack
# learns the transitions. Pre-LN learns with or without warm-up, but without it (solid blue) it is
# slower and ends well above the run with warm-up (dashed blue), the best of the four.
#
# **What this shows, and what it does not.** At this learning rate only Post-LN *fails* without
# warm-up, as Xiong et al. predict; but warm-up also helps the Pre-LN stack here, which is why Pre-LN
# language models still use it in practice (GPT-3 warms up over its first 375 million tokens, Llama 2
# over its first 2000 steps). And the failure is a matter of learning rate, not a law: at a peak of
# $1.5\times10^{-2}$ the same Post-LN stack trains without warm-up (the last line of `warmup-run`).
# A deep Post-LN stack trains in a narrower range of learning rates, and warm-up widens that range
# (`tests/test_depth.py` checks the four outcomes on seeds 0 and 1).

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
# | unbiased variance (`torch.var` default; differs from torch's LayerNorm convention) | every output $\sqrt{(d-1)/d}$ times torch's | `correction=0`, or divide by $d$ |
# | $\varepsilon$ outside the square root (differs from torch's convention) | only nearly constant tokens differ, by a lot | `torch.sqrt(var + eps)` |
# | forgetting $\gamma$ / $\beta$ | matches torch only at initialization | `x_hat * gamma + beta` |
# | RMSNorm subtracting the mean | outputs have mean 0; LayerNorm without $\beta$ | divide `x` itself |
# | `nn.RMSNorm` with its default `eps=None` | small-norm tokens differ from the model's | pass `eps` explicitly |
# | Post-LN normalizing before the add | the stream is never normalized: undoing $\gamma$, $\beta$ does not give variance 1 | `norm1(x + attn(x))` |
# | Pre-LN forgetting the final residual | a zero sublayer erases the token | `x = x + ffn(norm2(x))` |
# | Pre-LN stack without a final norm | the output's size grows with depth; the loss at init grows with $L$ (`deep-mistake`) | one norm after the last block |

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
#
# **Q8.** In `warmup-run`, the 12-layer Post-LN stack trained without warm-up ends near 2.78 nats,
# the unigram entropy of the Markov language. What has it learned, and what has it not?
#
# <details><summary>Answer</summary>
#
# The letter frequencies and nothing else: 2.78 is the loss of the best prediction that ignores the
# previous letter. The entropy rate (1.23) needs the transition table, which the runs with warm-up
# learn. At the full learning rate from the first step, its curve starts to fall, then blows up after
# about 15 steps; with a gentler peak ($1.5\times10^{-2}$) the same stack trains without warm-up.
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
# | the residual stream is the input plus a running sum of edits; a zero sublayer is the identity | §1, `residual-sum`, `residual-identity`, `residual-picture` |
# | the direct path $W_E \to$ norm $\to W_U$ of a trained model scores between the unigram and bigram baselines | §1, `residual-direct-path`, `residual-direct-claims` |
# | LayerNorm of one vector by hand equals `helpers` and `nn.LayerNorm` | §2, `ln-by-hand` |
# | per-token mean 0 and biased variance 1; invariance to scaling and shifting a token | §2, `ln-shapes` |
# | unbiased variance and $\varepsilon$ outside the root give wrong numbers | §2, `ln-mistake-unbiased`, `ln-mistake-eps` |
# | batch statistics depend on the batch; at generation BatchNorm uses running statistics; sequence statistics leak | §3, `per-token-batch-of-one`, `per-token-leak` |
# | RMSNorm by hand equals `helpers` and `nn.RMSNorm` (with `eps` passed); its default `eps` differs | §4, `rms-by-hand`, `rms-properties` |
# | what LayerNorm and RMSNorm do to one token's vector | §4, `norms-picture` |
# | on a real stream the mean is small next to the RMS, so RMSNorm ≈ LayerNorm; both are scale-invariant | §4, `rms-recentering` |
# | one Pre-LN and one Post-LN block computed by hand; where the norm sits | §5, `blocks-worked`, `blocks-diagram` |
# | Sandwich-LN keeps the identity path; DeepNorm with $\alpha = 1$ is Post-LN | §5, `blocks-variants` |
# | `pre_ln_block` / `post_ln_block` equal `nn.TransformerEncoderLayer(norm_first=True/False)` | §5, `blocks-vs-torch` |
# | a Pre-LN stack's final norm sits outside the layers | §5, `final-norm` |
# | at init the last layer's $W^2$ gradient is flat in $L$ for Post-LN and falls like $L^{-1/2}$ for Pre-LN (Theorem 1) | §6, `deep-figures`, `deep-plot` |
# | a Pre-LN stack read without its final norm: the loss at init grows with depth | §6, `deep-mistake` |
# | Pre-LN's stream norm grows inside Lemma 2's band; Post-LN's stays at $\sqrt{d}$ | §6, `deep-plot` |
# | at a peak learning rate where the other three train, a 12-layer Post-LN stack without warm-up learns only the letter frequencies; warm-up rescues it | §6, `warmup-run`, `warmup-claims`, `warmup-plot` |
# | the catalogued mistakes by their printed symptoms | §7, `mistakes-norms`, `mistakes-blocks` |

# %% [markdown] id="next"
# ## Next: the exercises
#
# Open [`exercises/04_norms/04_norms.ipynb`](../exercises/04_norms/04_norms.ipynb). You will
# normalize a vector by hand, write `layer_norm` and `rms_norm` matching torch, write the Pre-LN
# and Post-LN block equations from given sublayers, and measure the residual stream of a stack.
# Each exercise has a visible check that names the mistake if your output matches one of those in
# section 7.
