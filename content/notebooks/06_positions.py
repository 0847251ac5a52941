# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] id="intro"
# # Chapter 06: where a token stands — learned, sinusoidal, relative bias, ALiBi, RoPE
#
# Chapter 00 proved that attention without positions is **permutation-equivariant**: shuffle the
# tokens and the outputs come out shuffled the same way, so "dog bites man" and "man bites dog"
# look alike to it. Every transformer therefore injects order somewhere. There are three places,
# and each method of this chapter uses one of them:
#
# | method | where | formula | used by |
# |---|---|---|---|
# | learned absolute | added to the input | $h_p = e_{\text{token}} + P_p$, a trained table $P$ `(T_max, d_model)` | GPT-2, BERT |
# | sinusoidal absolute | added to the input | $\mathrm{PE}(p, 2i) = \sin(p w_i)$, $\mathrm{PE}(p, 2i{+}1) = \cos(p w_i)$ | 2017 Transformer |
# | T5 relative bias | added to the scores | $S_{ij} \mathrel{+}= b_h[\mathrm{bucket}(j - i)]$, learned | T5, Flan-T5 |
# | ALiBi | added to the scores | $S_{ij} \mathrel{+}= -m_h\,\lvert i - j\rvert$, fixed slopes | BLOOM, MPT |
# | RoPE | rotates $q$ and $k$ | $q_i \leftarrow R(i)\,q_i$, $k_j \leftarrow R(j)\,k_j$ | Llama, Mistral, Qwen, GPT-NeoX |
#
# **Map of this notebook.**
#
# 1. Why attention needs positions: the permutation test on the course's model, with each method
# 2. Learned absolute positions: a table, and what happens past its last row
# 3. Sinusoidal positions: the table, its dot products, and $\mathrm{PE}(p + k)$ as a fixed rotation of $\mathrm{PE}(p)$
# 4. Relative biases: T5's buckets and ALiBi's slopes
# 5. RoPE: rotations of 2-D pairs, scores that depend only on the offset, two pair layouts
# 6. One new token at position $t$: every method at an offset (what chapter 07's KV cache needs)
# 7. Length behaviour, measured: one tiny decoder per method and seed, trained at 32 characters, read at 256;
#    then RoPE stretched by position interpolation, NTK-aware scaling, YaRN and Llama 3's rule
# 8. Common mistakes, self-check, evidence card, and the exercises
#
# Each subtopic follows the same pattern: the idea in plain words, the formula, a worked example
# with real numbers, an implementation check, where it shows up in real models, and a common
# mistake run beside the right version. Cells that start with `# NBVAL_CHECK_OUTPUT` are claims:
# the test suite re-runs the notebook and fails if their output ever changes.

# %% id="setup"
import math
import time
from dataclasses import replace

import matplotlib.pyplot as plt
import numpy as np
import torch

import helpers
from helpers.attention import causal_mask, scaled_dot_product_attention
from helpers.blocks import ModelConfig, TinyDecoder, attend, model_param_count
from helpers.heads import merge_heads, repeat_kv
from helpers.positions import (
    alibi_bias,
    alibi_slopes,
    apply_rope,
    learned_positions,
    relative_position_bucket,
    rope_frequencies,
    rope_permutation,
    rope_wavelength,
    sinusoidal_shift,
    sinusoidal_table,
)

helpers.seed_everything(0)
device = helpers.get_device()
print("computing on:", device.type)


def randn(*shape: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Standard-normal numbers drawn on the CPU from their own seed (the same on every machine)."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def show(t: torch.Tensor, digits: int = 4) -> list:
    """A tensor as plain nested lists of rounded floats: no device, no dtype, no -0.0."""
    return (torch.round(t.detach().double().cpu(), decimals=digits) + 0.0).tolist()


METHODS = ("none", "learned", "sinusoidal", "rope", "alibi", "relative")

# %% [markdown] id="why"
# ## 1. Why attention needs positions
#
# **Main idea.** A score $q_i \cdot k_j$ compares two tokens' *contents*; nothing in it says
# where they stand. Permute the tokens and every score moves along with its pair, so the output
# rows are permuted too: $f(PX) = P f(X)$. A causal mask already breaks this (token $i$ sees only
# $0..i$), but an encoder, or any attention without a mask, is blind to order unless we add
# positions.
#
# **Worked example: the course's model.** An encoder-style `TinyDecoder` (`causal=False`) with
# each value of `ModelConfig.positions`. We feed nine token ids, then the same ids shuffled, and
# ask whether the logits are just the shuffled logits. Only `positions="none"` is equivariant.

# %% id="why-permutation"
# NBVAL_CHECK_OUTPUT
ids = torch.tensor([[5, 17, 3, 3, 28, 9, 11, 0, 21]])  # (B, T) = (1, 9)
perm = torch.tensor([3, 0, 8, 1, 5, 2, 7, 4, 6])  # a shuffle of the 9 positions


def tiny(positions: str, *, causal: bool = True, seed: int = 0, **overrides) -> TinyDecoder:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=32, d_model=16, n_heads=4, n_layers=2, max_seq_len=16,
                         positions=positions, causal=causal, **overrides)
    return TinyDecoder(config).double().eval()


for method in METHODS:
    model = tiny(method, causal=False)
    with torch.no_grad():
        same = torch.allclose(model(ids[:, perm]), model(ids)[:, perm], atol=1e-12)
    print(f"positions={method!r:13} permutation-equivariant: {same}")

# %% [markdown] id="why-llm"
# **In real LLMs.** Every model of the table in the introduction adds one of these. A decoder with
# *no* position method at all ("NoPE") still learns some order from its causal mask alone, and
# section 7 measures how well that works on our corpus.
#
# **Common mistake: positions added after attention.** Adding the position vectors to attention's
# *output* leaves the scores blind to order: each token's output then depends on the *set* of
# other tokens, not on their order. Below, torch's own attention layer (no mask); we swap tokens 1
# and 2 and look at token 0's output. With positions added after attention it does not change;
# with positions added to the input it does.

# %% id="why-after-attention"
# NBVAL_CHECK_OUTPUT
torch.manual_seed(1)
layer = torch.nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True, dtype=torch.float64).eval()
x = randn(1, 9, 16, seed=2)  # (B, T, d_model)
pe = sinusoidal_table(9, 16, dtype=torch.float64)  # (T, d_model)
swap = torch.tensor([0, 2, 1, 3, 4, 5, 6, 7, 8])  # tokens 1 and 2 trade places
with torch.no_grad():
    for name, f in [("attn(x) + PE   (WRONG)", lambda h: layer(h) + pe), ("attn(x + PE)   (right)", lambda h: layer(h + pe))]:
        unchanged = torch.allclose(f(x[:, swap])[:, 0], f(x)[:, 0], atol=1e-12)
        print(name, "token 0's output ignores the order of tokens 1 and 2:", unchanged)

# %% [markdown] id="learned"
# ## 2. Learned absolute positions
#
# **Main idea.** Give every position $p = 0 .. T_{\max} - 1$ its own trainable vector $P_p$ and
# add it to the token's embedding before the first block. It is the simplest method, and the
# model can learn any position pattern it likes, but only for positions it has a row for.
#
# **Formula.** $h_p = E[\text{id}_p] + P_p$ with $P \in \mathbb{R}^{T_{\max} \times d_{\text{model}}}$:
# $T_{\max} \cdot d_{\text{model}}$ parameters.
#
# **Worked example.** GPT-2 small has $T_{\max} = 1024$ and $d_{\text{model}} = 768$. The course's
# `model_param_count` shows what the table costs in our tiny model, against the same model
# without it.

# %% id="learned-count"
# NBVAL_CHECK_OUTPUT
print("GPT-2 small's position table:", 1024 * 768, "parameters")
config = ModelConfig(vocab_size=32, d_model=16, n_heads=4, n_layers=2, max_seq_len=16)
for method in METHODS:
    extra = model_param_count(replace(config, positions=method)) - model_param_count(replace(config, positions="none"))
    print(f"positions={method!r:13} extra parameters: {extra}")

# %% [markdown] id="learned-limit"
# The 16 × 16 = 256 learned parameters are the table; T5's relative bias costs 32 buckets × 4 heads
# = 128, shared by all layers; sinusoidal positions, RoPE and ALiBi cost nothing.
#
# **Implementation check: the table's last row.** With `max_seq_len = 16` the table has rows for
# positions 0..15. A 16-token sequence runs; position 16 has no row, and the model says so rather
# than silently reading garbage: a learned table cannot even *run* past its length. (Section 7
# gives a table spare rows that training never reaches, and measures what they are worth.)

# %% id="learned-error"
# NBVAL_CHECK_OUTPUT
model = tiny("learned")
print("16 tokens ->", tuple(model(torch.zeros(1, 16, dtype=torch.long)).shape))
try:
    model(torch.zeros(1, 17, dtype=torch.long))
except ValueError as error:
    print(type(error).__name__ + ":", error)
try:
    learned_positions(model.pos_emb.weight, 1, offset=16)  # one new token at position 16, as a cache asks
except ValueError as error:
    print(type(error).__name__ + ":", error)

# %% [markdown] id="sinusoidal"
# ## 3. Sinusoidal positions
#
# **Main idea.** Instead of learning the table, write it down: each pair of columns is a clock
# hand turning at its own speed. Pair 0 turns one radian per position, the last pair about
# $1/10000$ radian. Fast pairs tell neighbours apart, slow pairs tell distant regions apart, and
# the table exists for every position, including ones never seen in training.
#
# **Formula.**
#
# $$
# \mathrm{PE}(p, 2i) = \sin(p\, w_i), \qquad \mathrm{PE}(p, 2i+1) = \cos(p\, w_i), \qquad
# w_i = 10000^{-2i/d_{\text{model}}} .
# $$
#
# **Worked example.** $d_{\text{model}} = 4$: two pairs with $w_0 = 1$ and $w_1 = 10000^{-2/4} = 0.01$.
# At $p = 2$ the row is $[\sin 2, \cos 2, \sin 0.02, \cos 0.02] \approx [0.9093, -0.4161, 0.02, 0.9998]$.
# The cell computes rows 0..2 by hand with `math` and with `helpers.positions.sinusoidal_table`.

# %% id="sin-by-hand"
# NBVAL_CHECK_OUTPUT
for p in range(3):
    by_hand = [math.sin(p * 1.0), math.cos(p * 1.0), math.sin(p * 0.01), math.cos(p * 0.01)]
    print(f"p = {p}  by hand", [round(v, 4) for v in by_hand])
print("helpers ", show(sinusoidal_table(3, 4, dtype=torch.float64)))

# %% [markdown] id="sin-pictures"
# **Two pictures.** Left: the table for 64 positions and 64 columns; the left columns flicker
# (fast pairs), the right ones barely change (slow pairs). Right: the dot products
# $\mathrm{PE}(p) \cdot \mathrm{PE}(p')$ of every pair of positions. They depend only on $p - p'$
# (constant along diagonals) and are largest on the diagonal: nearby positions look alike.

# %% id="sin-heatmaps"
table = sinusoidal_table(64, 64, dtype=torch.float64)  # (T, d_model)
gram = table @ table.T  # (T, T): PE(p) . PE(p')
fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
image = axes[0].imshow(table.numpy(), cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
axes[0].set(xlabel="column (2i: sin, 2i + 1: cos)", ylabel="position p",
            title="Sinusoidal table: fast pairs on the left, slow on the right")
fig.colorbar(image, ax=axes[0], fraction=0.046)
image = axes[1].imshow(gram.numpy(), cmap="viridis", aspect="auto")
axes[1].set(xlabel="position p'", ylabel="position p",
            title="PE(p) · PE(p'): constant along each diagonal, peak at p = p'")
fig.colorbar(image, ax=axes[1], fraction=0.046)
fig.tight_layout()
plt.show()

# %% [markdown] id="sin-heatmaps-caption"
# *What to see:* left, the columns oscillate fast on the left and slowly on the right (each pair has
# its own frequency); right, the dot product of two positions depends only on their distance: every
# diagonal has one colour, brightest on the main diagonal.

# %% [markdown] id="sin-shift"
# **Implementation check: $\mathrm{PE}(p + k)$ is a fixed linear map of $\mathrm{PE}(p)$.** The
# 2017 paper chose sinusoids because of the angle-addition formulas:
# $\sin(a + b) = \sin a \cos b + \cos a \sin b$ and $\cos(a + b) = \cos a \cos b - \sin a \sin b$.
# So shifting every position by $k$ rotates each pair by $k w_i$, the same rotation $M_k$ for every
# $p$. `sinusoidal_shift(k, d)` builds $M_k$; one matrix moves all 57 rows at once, and it is
# orthogonal. The diagonals of the Gram matrix above are constant for the same reason:
# $\mathrm{PE}(p)\cdot\mathrm{PE}(p') = \sum_i \cos((p - p') w_i)$.

# %% id="sin-shift-check"
# NBVAL_CHECK_OUTPUT
k = 7
M = sinusoidal_shift(k, 64)  # (d_model, d_model), float64
moved = table[:-k] @ M  # (57, d_model): every PE(p) times the same matrix
print("max |PE(p) M_7 - PE(p + 7)| over 57 positions:", f"{(moved - table[k:]).abs().max().item():.1e}")
print("M_7 orthogonal:", torch.allclose(M @ M.T, torch.eye(64, dtype=torch.float64), atol=1e-12))
print("PE(p)·PE(p') = sum_i cos((p - p') w_i):",
      torch.allclose(gram[10, 3], torch.cos(7 * rope_frequencies(64)).sum()))

# %% [markdown] id="sin-mistakes"
# **In real LLMs.** The original Transformer (and its many translation-model descendants) adds this
# table; today's decoders mostly use RoPE, which is the same family of frequencies applied as a
# rotation inside attention (section 5).
#
# **Common mistakes: sin and cos swapped, and the exponent $i/d$.** With sin and cos swapped,
# $\mathrm{PE}(0) = [1, 0, 1, 0, \dots]$ instead of $[0, 1, 0, 1, \dots]$ (a different, equally
# fixed table, but no longer the paper's or a checkpoint's). With the exponent $i/d$ instead of
# $2i/d$, the slowest pair turns 87 times too fast: its wavelength in positions drops from
# about 47 000 to about 540 (for $d_{\text{model}} = 64$), so distant positions start to look alike.

# %% id="sin-mistakes-run"
# NBVAL_CHECK_OUTPUT
d = 64
right = sinusoidal_table(1, d, dtype=torch.float64)[0]
swapped = torch.stack([torch.cos(torch.zeros(d // 2)), torch.sin(torch.zeros(d // 2))], -1).flatten()  # WRONG
print("PE(0) right  :", show(right[:6], 2), "...")
print("PE(0) swapped:", show(swapped[:6], 2), "...")
slowest = d // 2 - 1
print("slowest pair's wavelength, exponent 2i/d (right):", round(2 * math.pi * 10000 ** (2 * slowest / d)), "positions")
print("slowest pair's wavelength, exponent  i/d (WRONG):", round(2 * math.pi * 10000 ** (slowest / d)), "positions")
print("so the slowest pair turns", round(10000 ** (2 * slowest / d) / 10000 ** (slowest / d)), "times too fast")

# %% [markdown] id="sin-real"
# **In a real system: the 2017 Transformer's numbers.** Vaswani et al. (2017) used this table with
# base 10 000 and $d_{\text{model}} = 512$, so 256 pairs. Quoted from the paper: "the wavelengths form
# a geometric progression from $2\pi$ to $10000 \cdot 2\pi$", and they chose sinusoids because they
# "may allow the model to extrapolate to sequence lengths longer than the ones encountered during
# training" (section 7 measures that hope). Also quoted: "we multiply those weights by
# $\sqrt{d_{\text{model}}}$" (the embeddings, before the table is added). Computed below: the last
# pair's wavelength is a little under $10000 \cdot 2\pi$ (its exponent is $510/512$, not 1); the
# table's row norm is $\sqrt{d_{\text{model}}/2}$ at every position (each pair contributes
# $\sin^2 + \cos^2 = 1$); and beside the course's token embeddings (GPT-2's initialization, standard
# deviation 0.02, no $\sqrt{d}$ factor) an unscaled table is tens of times larger than the tokens it
# is added to. That mismatch is a real mistake, run in section 7.

# %% id="sin-real-run"
# NBVAL_CHECK_OUTPUT
d_2017 = 512
print("2017 Transformer: pairs =", d_2017 // 2, "| wavelength of pair 0 =", round(rope_wavelength(0, d_2017), 3),
      "| of pair 255 =", round(rope_wavelength(255, d_2017)), "| quoted limit 10000 * 2 pi =", round(10000 * 2 * math.pi))
print("row norm of PE(p) for d_model 512, p = 0, 1000, 50000:",
      [round(sinusoidal_table(1, d_2017, offset=p, dtype=torch.float64).norm().item(), 4) for p in (0, 1000, 50000)],
      "= sqrt(256) =", math.sqrt(256))
print("embedding scale in the paper: sqrt(d_model) =", round(math.sqrt(d_2017), 2))
table_rms = sinusoidal_table(256, 64, dtype=torch.float64).pow(2).mean().sqrt().item()  # 1/sqrt(2) for any d
print(f"the course's model (d_model 64, section 7): table entries' RMS {table_rms:.3f} against the token embeddings' "
      f"0.02 (GPT-2 init): {table_rms / 0.02:.0f}x larger; scaled by 0.03: {0.03 * table_rms:.3f}")

# %% [markdown] id="relative"
# ## 4. Relative biases: T5's buckets and ALiBi's slopes
#
# **Main idea.** What usually matters is not where a token stands but how far apart two tokens
# are. A relative method adds a bias that depends on the distance $j - i$ directly to the score of
# query $i$ and key $j$; no position vector enters the residual stream at all.
#
# **Formulas.** T5 learns one number per head for each *bucket* of distances:
# $S_{ij} \mathrel{+}= b_h[\mathrm{bucket}(j - i)]$. The first half of the buckets are exact
# distances $0, 1, \dots, n_b/2 - 1$; the rest cover distances up to `max_distance` on a log scale;
# everything further shares the last bucket. ALiBi learns nothing: head $h$ subtracts
# $m_h \lvert i - j\rvert$ with a fixed slope $m_h$; for $H$ heads (a power of two) the slopes are
# $r, r^2, \dots, r^H$ with $r = 2^{-8/H}$.
#
# **Worked example: buckets.** A decoder (only the past counts) with T5's defaults, 32 buckets and
# `max_distance` 128: distances 0..15 get their own bucket, 16..127 share 16 log-spaced buckets.

# %% id="t5-buckets"
# NBVAL_CHECK_OUTPUT
distances = torch.tensor([0, 1, 2, 15, 16, 20, 32, 64, 100, 127, 128, 1000])
buckets = relative_position_bucket(-distances)  # j - i = -distance: keys in the past
for dist, bucket in zip(distances.tolist(), buckets.tolist()):
    print(f"key {dist:4} tokens back -> bucket {bucket}")
print("future keys in a decoder -> bucket", relative_position_bucket(torch.tensor([1, 5])).tolist())
print("bidirectional (encoder): 1 back ->", int(relative_position_bucket(torch.tensor(-1), bidirectional=True)),
      "| 1 ahead ->", int(relative_position_bucket(torch.tensor(1), bidirectional=True)))

# %% [markdown] id="t5-picture"
# **Picture.** Left: the bucket of each distance (exact up to 15, then log-spaced, then flat past
# 128). Right: the bucket of every (query, key) pair of a 40-token encoder: constant along
# diagonals, the past in buckets 0..15, the future in 16..31.

# %% id="t5-plot"
far = torch.arange(0, 300)
pos = torch.arange(40)
fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
axes[0].step(far.numpy(), relative_position_bucket(-far).numpy(), where="post")
axes[0].axvline(128, color="gray", ls="--", lw=1)
axes[0].set(xlabel="distance back (tokens)", ylabel="bucket",
            title="T5 buckets: exact to 15, log-spaced to 128 (dashed), then one bucket")
image = axes[1].imshow(relative_position_bucket(pos[None, :] - pos[:, None], bidirectional=True).numpy(),
                       cmap="viridis")
axes[1].set(xlabel="key j", ylabel="query i", title="bucket(j - i) of a 40-token encoder: constant diagonals")
fig.colorbar(image, ax=axes[1], fraction=0.046)
fig.tight_layout()
plt.show()

# %% [markdown] id="t5-plot-caption"
# *What to see:* distances up to 15 get a bucket each, then the bucket boundaries spread out
# logarithmically up to 128 (dashed) and every longer distance shares the last bucket; on the right
# the bucket depends only on $j - i$, so each diagonal has one colour.

# %% [markdown] id="alibi"
# **Worked example: ALiBi's slopes.** For 8 heads $r = 2^{-1}$, so the slopes are
# $1/2, 1/4, \dots, 1/256$. For a head count that is not a power of two the paper takes the
# slopes of the largest power of two below it, then every other slope of twice as many heads;
# 6 heads get the 4 slopes of 4 heads and the 1st and 3rd of 8.

# %% id="alibi-slopes"
# NBVAL_CHECK_OUTPUT
print("8 heads:", [f"2^{round(math.log2(m))}" for m in alibi_slopes(8).tolist()])
print("6 heads:", [f"2^{round(math.log2(m))}" for m in alibi_slopes(6).tolist()])
print("bias of head 0 (m = 1/4) for 5 tokens of a 4-head model:")
for row in show(alibi_bias(alibi_slopes(4), torch.arange(5), torch.arange(5), dtype=torch.float64)[0], 2):
    print("   ", row)

# %% [markdown] id="alibi-picture"
# **Picture: the bias per head.** Four of eight heads of a 24-token decoder, with the causal mask
# applied (blocked keys white). Head 0 forgets quickly (steep), head 7 barely discounts distance:
# together they look at several ranges at once. The slopes differ 128-fold, so each head gets its
# own colour range (its own colour bar): on a shared one, heads 4 and 7 would be one flat colour.

# %% id="alibi-plot"
T = 24
bias = alibi_bias(alibi_slopes(8), torch.arange(T), torch.arange(T), dtype=torch.float64)  # (H, T, T)
fig, axes = plt.subplots(1, 4, figsize=(16, 3.6), layout="constrained")
for ax, h in zip(axes, (0, 2, 4, 7)):
    shown = bias[h].masked_fill(~causal_mask(T), float("nan"))  # (T, T), blocked keys NaN (drawn white)
    lowest = shown.nan_to_num(0.0).min().item()  # the most distant key's bias, -(T - 1) m_h
    image = ax.imshow(shown.numpy(), cmap="magma", vmin=lowest, vmax=0)
    ax.set(title=f"ALiBi head {h}: slope 2^-{h + 1}", xlabel="key j", ylabel="query i")
    fig.colorbar(image, ax=ax, fraction=0.046, label=f"bias added to the score (0 to {lowest:.3g})")
plt.show()

# %% [markdown] id="alibi-plot-caption"
# *What to see:* each head subtracts a penalty that grows linearly with the distance back, so every
# panel shows the same triangle; the colour bars differ: head 0 (slope 1/2) reaches $-11.5$ at 23
# tokens back and fades distant keys fast, head 7 (slope 1/256) only $-0.09$, hardly at all, so
# different heads see different ranges.

# %% [markdown] id="alibi-shift"
# **Implementation check: only the distance matters, and a row shift changes nothing.** Softmax
# ignores a constant added to a whole row, so BLOOM's implementation, which adds $m_h\, j$ (the
# key's position) instead of $-m_h (i - j)$, gives the same weights under a causal mask: the two
# differ by $m_h\, i$, constant along each row.

# %% id="alibi-bloom"
# NBVAL_CHECK_OUTPUT
q, k, v = randn(1, 8, T, 4, seed=3), randn(1, 8, T, 4, seed=4), randn(1, 8, T, 4, seed=5)  # (B, H, T, d_head)
slopes = alibi_slopes(8)
bloom = slopes[:, None, None] * torch.arange(T, dtype=torch.float64)[None, None, :]  # (H, 1, T): m_h * j
_, w_paper = attend(q, k, v, causal_mask(T), bias)
_, w_bloom = attend(q, k, v, causal_mask(T), bloom)
print("paper's -m|i-j| and BLOOM's m*j give the same weights:", torch.allclose(w_paper, w_bloom, atol=1e-12))

# %% [markdown] id="alibi-mistake"
# **In real LLMs.** T5 and Flan-T5 use the learned buckets (one table shared by all layers, as the
# course's model does); BLOOM and MPT use ALiBi. **Common mistake: the sign.** Adding $+m_h|i-j|$
# rewards distance. Give every key the same content score, and the right bias puts most of a
# query's weight on its nearest keys; the flipped one on the farthest.

# %% id="alibi-sign"
# NBVAL_CHECK_OUTPUT
flat = torch.zeros(1, 1, 8, 8, dtype=torch.float64)  # equal content scores
m = alibi_bias(alibi_slopes(1), torch.arange(8), torch.arange(8), dtype=torch.float64)  # (1, 8, 8), slope 1/256
steep = 64 * m  # a steep head (slope 1/4) so the effect is visible in 2 decimals
for name, b in [("right  -m|i-j|", steep), ("WRONG  +m|i-j|", -steep)]:
    weights = torch.softmax((flat + b).masked_fill(~causal_mask(8), float("-inf")), dim=-1)[0, 0, -1]
    print(name, "weights of the last query over keys 0..7:", show(weights, 2))

# %% [markdown] id="rope"
# ## 5. RoPE: rotate the queries and keys
#
# **Main idea.** Split each query and key into pairs of channels and treat each pair as a point in
# a plane. Rotate the pair of a token at position $p$ by the angle $p\,\theta_k$ (pair $k$ has its
# own speed $\theta_k$, the same frequencies as the sinusoidal table). A dot product of two rotated
# vectors only sees the *difference* of their angles, so the score of query $m$ and key $n$ depends
# on $m - n$: relative positions, with nothing added to the residual stream and nothing learned.
#
# **Formula.** For pair $k$ with values $(a, b)$ at position $p$:
#
# $$
# \begin{pmatrix} a' \\ b' \end{pmatrix} =
# \begin{pmatrix} \cos p\theta_k & -\sin p\theta_k \\ \sin p\theta_k & \cos p\theta_k \end{pmatrix}
# \begin{pmatrix} a \\ b \end{pmatrix}, \qquad \theta_k = \text{base}^{-2k/d_{\text{head}}},
# \qquad \langle R_m q, R_n k\rangle = \langle q, R_{n-m} k\rangle .
# $$
#
# **Two pair layouts.** Which channels form pair $k$ is a convention: **rotate-half**,
# $(k, k + d/2)$ (HF Llama, GPT-NeoX, `helpers.positions.apply_rope(pairs="half")`, the default),
# or **interleaved**, $(2k, 2k + 1)$ (GPT-J, Meta's original Llama code, `pairs="interleaved"`).
#
# **Picture: rotations in 2-D pairs.** One query vector of a 16-channel head, positions 0..7. The
# fast pair 0 turns one radian per position; pair 4 turns $10000^{-8/16} = 0.01$ radian, nearly
# standing still. The lengths never change.

# %% id="rope-picture"
d_head = 16
qv = torch.zeros(8, d_head, dtype=torch.float64)  # (T, d_head): the same vector at positions 0..7
qv[:, 0], qv[:, 8] = 1.0, 0.3  # pair 0 = channels (0, 8) in the rotate-half layout
qv[:, 4], qv[:, 12] = 1.0, 0.3  # pair 4 = channels (4, 12)
rotated = apply_rope(qv)  # (T, d_head)
fig, axes = plt.subplots(1, 2, figsize=(10, 4.8))
for ax, pair in zip(axes, (0, 4)):
    for p in range(8):
        a, b = rotated[p, pair].item(), rotated[p, pair + d_head // 2].item()
        ax.annotate("", xy=(a, b), xytext=(0, 0), arrowprops=dict(arrowstyle="->", color=plt.cm.viridis(p / 7)))
        ax.text(1.08 * a, 1.08 * b, str(p), fontsize=9, ha="center", va="center")
    ax.set(xlim=(-1.3, 1.3), ylim=(-1.3, 1.3), aspect="equal",
           title=f"pair {pair}: {rope_frequencies(d_head)[pair].item():.2f} rad per position",
           xlabel=f"channel {pair}", ylabel=f"channel {pair + d_head // 2}")
fig.suptitle("RoPE rotates each pair by p·θ_k (arrow p = position p): pair 0 spins, pair 4 barely moves")
fig.tight_layout()
plt.show()

# %% [markdown] id="rope-picture-caption"
# *What to see:* pair 0 turns 1 radian per position, so its arrows for positions 0 to 7 go all
# around the circle; pair 4 turns 0.01 radian, so its arrows nearly coincide: fast pairs resolve
# short distances, slow pairs long ones.

# %% [markdown] id="rope-offset"
# **Worked example: the relative-offset property, numerically.** One query and one key, placed at
# every pair of positions $m, n \in 0..7$. The score table is constant along each diagonal
# ($m - n$ fixed); the norms are unchanged; and the rotation at position 0 is the identity.

# %% id="rope-offset-check"
# NBVAL_CHECK_OUTPUT
q1, k1 = randn(1, 16, seed=6), randn(1, 16, seed=7)  # (1, d_head): one vector each
scores = torch.tensor([[(apply_rope(q1, m) * apply_rope(k1, n)).sum().item() for n in range(8)] for m in range(8)])
print("score(m, n) for m, n = 0..3:")
for row in show(scores[:4, :4], 3):
    print("   ", row)
print("constant along every diagonal:", all(torch.allclose(scores.diagonal(o), scores.diagonal(o)[:1].expand(8 - abs(o)),
                                                          atol=1e-12) for o in range(-7, 8)))
print("norm before, after rotating to position 1000:", round(q1.norm().item(), 6), round(apply_rope(q1, 1000).norm().item(), 6))
print("position 0 is not rotated:", torch.equal(apply_rope(q1, 0), q1))

# %% [markdown] id="rope-layouts"
# **Implementation check: the two layouts agree after a fixed permutation.** Interleaved channel
# $2k$ is rotate-half channel $k$ and $2k + 1$ is $k + d/2$. Permuting the channels of $q$ and $k$
# (in practice: the rows of $W_Q$ and $W_K$, per head, which is what checkpoint converters do)
# turns one convention into the other, and scores are unchanged by permuting both alike. Using the
# wrong layout *without* the permutation changes the scores: a silently different model.

# %% id="rope-layouts-check"
# NBVAL_CHECK_OUTPUT
perm16 = rope_permutation(16)
print("permutation:", perm16.tolist())
qs, ks = randn(6, 16, seed=8), randn(6, 16, seed=9)  # (T, d_head)
half_scores = apply_rope(qs, pairs="half") @ apply_rope(ks, pairs="half").T  # (T, T)
inter_scores = apply_rope(qs[:, perm16], pairs="interleaved") @ apply_rope(ks[:, perm16], pairs="interleaved").T
wrong_scores = apply_rope(qs, pairs="interleaved") @ apply_rope(ks, pairs="interleaved").T  # WRONG: no permutation
print("half == interleaved after permuting channels:", torch.allclose(half_scores, inter_scores, atol=1e-12))
print("half == interleaved without the permutation: ", torch.allclose(half_scores, wrong_scores, atol=1e-3))

# %% [markdown] id="rope-llm"
# **In real LLMs.** Llama 1-3, Mistral, Qwen, GPT-NeoX and most open decoders use RoPE inside
# every attention layer, with base 10 000 (Llama 2) or larger (Llama 3: 500 000, which slows
# every pair and stretches the longest wavelength; exercise 7 computes it). The course's model:
# `ModelConfig(positions="rope", rope_base=..., rope_pairs="half" | "interleaved")`; the rotation
# sits inside `Attention.forward`, after the projection and before the K/V heads are repeated.

# %% id="rope-wavelengths"
# NBVAL_CHECK_OUTPUT
for name, d, base in [("Llama 2 (d_head 128, base 10 000) ", 128, 10000.0), ("Llama 3 (d_head 128, base 500 000)", 128, 500000.0)]:
    print(name, "wavelengths in positions: pair 0 =", round(rope_wavelength(0, d, base), 2),
          "| pair 32 =", round(rope_wavelength(32, d, base)), "| pair 63 =", f"{rope_wavelength(63, d, base):.3g}")

# %% [markdown] id="rope-mistakes"
# **Common mistakes: rotating $v$, or rotating after the scores.** RoPE belongs to $q$ and $k$, the
# two vectors that meet in the scores. Shift every position by the same amount and a correct RoPE
# attention gives identical outputs (only offsets matter). Rotate $v$ as well and the output
# changes with the absolute position; rotate the *output* instead of $q$ and $k$ and the scores
# never see a position at all (the weights are those of attention without positions).

# %% id="rope-mistakes-run"
# NBVAL_CHECK_OUTPUT
qh, kh, vh = randn(1, 2, 6, 8, seed=10), randn(1, 2, 6, 8, seed=11), randn(1, 2, 6, 8, seed=12)  # (B, H, T, d_head)
mask = causal_mask(6)


def rope_attention(q, k, v, start, how="right"):
    if how == "after":  # WRONG: scores without positions, output rotated
        out, w = scaled_dot_product_attention(q, k, v, mask)
        return apply_rope(out, start), w
    rv = apply_rope(v, start) if how == "on_v" else v  # WRONG when how == "on_v"
    return scaled_dot_product_attention(apply_rope(q, start), apply_rope(k, start), rv, mask)


plain_weights = scaled_dot_product_attention(qh, kh, vh, mask)[1]
for how in ("right", "on_v", "after"):
    out0, w0 = rope_attention(qh, kh, vh, 0, how)
    out9, _ = rope_attention(qh, kh, vh, 9, how)
    print(f"{how:6} same output at positions 0..5 and 9..14: {torch.allclose(out0, out9, atol=1e-12)!s:5} | "
          f"weights equal no-position attention: {torch.allclose(w0, plain_weights, atol=1e-12)}")

# %% [markdown] id="explore-rope"
# ### Explore: the RoPE angle of one dimension pair
#
# Pick a pair $k$ of a 16-channel head and a position $p$: the arrow is where the unit vector
# $(1, 0)$ of that pair lands after RoPE, at the angle $p\,\theta_k$; the grey dots are positions
# $0..p$. The readout gives $\theta_k$, the angle in radians and in turns, and the wavelength
# $2\pi/\theta_k$. The controls move in JupyterLab with a running kernel; the figure under them
# shows four fixed settings.

# %% id="explore-rope-widget"
from helpers.widgets import rope_explorer, rope_figure

rope_explorer(d_head=16)

# %% id="explore-rope-figure"
rope_figure(d_head=16)
plt.show()

# %% [markdown] id="explore-rope-caption"
# *What to see:* pair 0 turns one radian per position, so by position 5 it has gone most of a turn
# and its dots circle the origin; pair 2 turns a tenth as fast, and even at position 40 has not
# finished its first turn; pair 6, $10000^{-12/16} \approx 0.001$ radian per position, has hardly
# left the blue start. Fast pairs tell near positions apart, slow pairs far ones.

# %% [markdown] id="offset"
# ## 6. One new token at position $t$
#
# A decoder that generates text feeds one new token at a time and keeps the keys and values of the
# earlier ones (chapter 07's KV cache). Every method must then compute, for the new token at
# position $t$, exactly what a full forward pass computes for it. So every function in
# `helpers.positions` takes an `offset` (or explicit positions):
#
# | method | the new token at position $t$ needs |
# |---|---|
# | learned, sinusoidal | row $t$ of the table: `learned_positions(P, 1, offset=t)`, `sinusoidal_table(1, d, offset=t)` |
# | RoPE | $q$ and $k$ rotated by $t$: `apply_rope(q, offset=t)`; the cached keys keep their own rotations |
# | ALiBi, T5 | the bias row of query $t$ against keys $0..t$: `model.position_bias([t], 0..t)`, shape `(H, 1, t + 1)` |
#
# **Implementation check.** The first attention layer of the course's model, for each method: the
# full pass over 7 tokens, against the last token alone at offset 6 with the six earlier keys and
# values. (Chapter 07 builds the cache; this is the position part of it.)

# %% id="offset-check"
# NBVAL_CHECK_OUTPUT
T = 7
x = randn(2, T, 16, seed=13)  # (B, T, d_model): the first block's input
for method in ("none", "rope", "alibi", "relative"):
    model = tiny(method, n_kv_heads=2)
    attn = model.blocks[0].attn
    full, _ = attn(x, causal_mask(T), bias=model.position_bias(torch.arange(T), torch.arange(T)))  # (B, T, d_model)
    q_old, k_old, v_old = attn.project(x[:, :-1])  # the cache: (B, H_kv, T - 1, d_head)
    _, k_old = attn.rotate(q_old, k_old, offset=0)
    q_new, k_new, v_new = attn.project(x[:, -1:])  # the new token
    q_new, k_new = attn.rotate(q_new, k_new, offset=T - 1)
    k_all = repeat_kv(torch.cat([k_old, k_new], dim=2), 2)  # (B, H, T, d_head)
    v_all = repeat_kv(torch.cat([v_old, v_new], dim=2), 2)
    heads, _ = attend(q_new, k_all, v_all, None, model.position_bias(torch.tensor([T - 1]), torch.arange(T)))
    one = attn.o_proj(merge_heads(heads))  # (B, 1, d_model)
    print(f"{method:9} new token at offset {T - 1} == full pass: {torch.allclose(one, full[:, -1:], atol=1e-12)}")
for method in ("learned", "sinusoidal"):
    model = tiny(method)
    print(f"{method:10} row at offset 6 == row 6 of the table:",
          torch.equal(model.position_rows(1, offset=6), model.position_rows(7)[6:]))

# %% [markdown] id="offset-mistake"
# **Common mistake: an offset that is off by one.** The new token is at position $t$ = the number
# of tokens already cached, not $t + 1$ (and not 0). With RoPE, an off-by-one query rotation
# shifts every score to the neighbouring offset.

# %% id="offset-mistake-run"
# NBVAL_CHECK_OUTPUT
model = tiny("rope")
attn = model.blocks[0].attn
with torch.no_grad():
    full = attn(x, causal_mask(T))[0][:, -1:]  # (B, 1, d_model): the last token in a full pass
    q_all, k_all, v_all = attn.project(x)
    _, k_all = attn.rotate(q_all, k_all, offset=0)
    for name, offset in [("offset = T - 1 (right)", T - 1), ("offset = T     (WRONG)", T), ("offset = 0     (WRONG)", 0)]:
        q_new = attn.project(x[:, -1:])[0]
        q_new, _ = attn.rotate(q_new, q_new, offset=offset)
        heads, _ = attend(q_new, k_all, v_all)
        print(name, "matches the full pass:", torch.allclose(attn.o_proj(merge_heads(heads)), full, atol=1e-12))

# %% [markdown] id="length"
# ## 7. Length behaviour, measured
#
# **Main idea.** A model is trained on sequences of some length $L$. What happens when it reads
# longer ones? A learned table has no trained rows past $L$. Sinusoidal positions and RoPE produce
# values (angles) never seen in training. ALiBi and T5's buckets only ever see distances, and T5
# sends every distance past `max_distance` into one bucket. Claims about extrapolation are easy to
# make; here we measure them, as Press et al. (2022) did for ALiBi's paper, in miniature.
#
# **Formula.** For a range of positions $R$ (say $[2L, 4L)$), the mean next-character loss over the
# $W$ evaluation windows and the positions in $R$, and the **rise** past twice the training length:
#
# $$
# \ell(R) = \frac{1}{W\,\lvert R\rvert} \sum_{w=1}^{W} \sum_{t \in R} -\log p_\theta(x_{w,t+1} \mid x_{w,0..t}),
# \qquad \text{rise} = \ell\big([2L, 8L)\big) - \ell\big([0, L)\big).
# $$
#
# A method that extrapolates has a rise near 0 (or below: more context helps); one that breaks has a
# clearly positive rise.
#
# **The experiment** (`helpers.extrapolation.length_experiment`). Copies of the same tiny decoder
# (2 layers, $d_{\text{model}} = 64$, 4 heads, the course's character tokenizer), one per position
# method, each trained by the course's training loop (`helpers.training.train`, chapter 08) for 300
# steps of 16 windows of only $L = 32$ characters, for **two seeds**. Each then reads the same 32
# validation windows of $8L = 256$ characters. Two details matter:
#
# * the learned table has 256 rows, so the model *runs* at 256, but only rows 0..31 were ever
#   trained (section 2 showed the other case: no row, no forward pass);
# * `sinusoidal` adds the table scaled by 0.03, so that its entries are about as large as the
#   token embeddings (section 3's `sin-real-run`); `sinusoidal-x1` adds the unscaled $\pm 1$ table,
#   the mistake, trained beside it.
#
# Four more rows reuse each seed's RoPE model to try the context-extension methods of the next
# subsection: `rope-pi` reads the long windows with positions multiplied by $L / T_{\text{eval}} = 1/8$
# (position interpolation, `ModelConfig(rope_scale=8)`), `rope-ntk` with the NTK-aware base, both
# with no further training; `rope-pi-tuned` trains 20 more steps at 256 characters with the
# interpolation on (Chen et al.'s recipe, in miniature) and `rope-tuned` the same 20 steps
# without it (the control). Everything runs on one thread; the cell prints its CPU time.

# %% id="length-train"
from helpers.extrapolation import LENGTH_METHODS, ROPE_VARIANTS, length_experiment, length_ranges

TRAIN_LEN, EVAL_LEN = 32, 256
threads = torch.get_num_threads()
if device.type == "cpu":
    torch.set_num_threads(1)
try:
    lengths = length_experiment(LENGTH_METHODS + ROPE_VARIANTS, seeds=(0, 1), train_len=TRAIN_LEN,
                                eval_len=EVAL_LEN, device=device)
finally:
    torch.set_num_threads(threads)
print(f"trained {2 * (len(LENGTH_METHODS) + 2)} models and evaluated {len(LENGTH_METHODS + ROPE_VARIANTS)} "
      f"methods x 2 seeds in {lengths['_cost']['cpu_seconds']:.0f} CPU-seconds")

# %% [markdown] id="length-table-text"
# **The table.** Mean loss (nats per character) on each range of positions, for each seed, and the
# rise. The numbers are measured, so they may differ in the last digits on another machine; the
# cell after it prints the orderings that must never change.

# %% id="length-table"
RANGES = [f"{a}-{b}" for a, b in length_ranges(TRAIN_LEN, EVAL_LEN)]
print(f"{'method':14}{'seed':>5}" + "".join(f"{r:>9}" for r in RANGES) + f"{'rise':>8}")
for method in LENGTH_METHODS + ROPE_VARIANTS:
    for seed, losses in lengths[method]["by_seed"].items():
        print(f"{method if seed == 0 else '':14}{seed:5}" + "".join(f"{losses[r]:9.3f}" for r in RANGES)
              + f"{lengths[method]['rise_by_seed'][seed]:+8.3f}")

# %% id="length-claims"
# NBVAL_CHECK_OUTPUT
rise = {m: list(lengths[m]["rise_by_seed"].values()) for m in LENGTH_METHODS + ROPE_VARIANTS}  # one per seed
past = {m: [b[RANGES[2]] / 3 + 2 * b[RANGES[3]] / 3 for b in lengths[m]["by_seed"].values()]  # loss on [2L, 8L)
        for m in ("rope", "rope-pi", "rope-pi-tuned", "rope-tuned")}
print("on both seeds:")
print("  RoPE's loss rises by more than 0.2 nats past 2L:            ", all(r > 0.2 for r in rise["rope"]))
print("  ALiBi's rises by less than 0.1 nats (flat):                 ", all(r < 0.1 for r in rise["alibi"]))
print("  learned's (untrained rows past L) rises by more than 0.1:   ", all(r > 0.1 for r in rise["learned"]))
print("  learned's loss jumps by more than 0.1 right after L:        ",
      all(b[RANGES[1]] > b[RANGES[0]] + 0.1 for b in lengths["learned"]["by_seed"].values()))
print("  no positions and T5's buckets rise less than RoPE:          ",
      all(max(n, t) < r - 0.1 for n, t, r in zip(rise["none"], rise["relative"], rise["rope"])))
print("  sinusoidal's rises more than ALiBi's:                       ",
      all(s > a + 0.05 for s, a in zip(rise["sinusoidal"], rise["alibi"])))
print("  the unscaled table is worse than the scaled one everywhere: ",
      all(lengths["sinusoidal-x1"]["by_seed"][s][r] > lengths["sinusoidal"]["by_seed"][s][r] + 0.3
          for s in (0, 1) for r in RANGES))
print("  interpolation alone (rope-pi) is worse than RoPE on [0, L): ",
      all(lengths["rope-pi"]["by_seed"][s][RANGES[0]] > lengths["rope"]["by_seed"][s][RANGES[0]] + 0.1 for s in (0, 1)))
print("  the NTK-aware base lowers RoPE's loss on [2L, 4L):          ",
      all(lengths["rope-ntk"]["by_seed"][s][RANGES[2]] < lengths["rope"]["by_seed"][s][RANGES[2]] - 0.05 for s in (0, 1)))
print("  rope-pi-tuned recovers > 0.1 nats of RoPE's loss past 2L:   ",
      all(t < r - 0.1 for t, r in zip(past["rope-pi-tuned"], past["rope"])))
print("  ... and the control, tuned without interpolation, more:     ",
      all(c < t for c, t in zip(past["rope-tuned"], past["rope-pi-tuned"])))

# %% [markdown] id="length-plot-text"
# **Pictures.** Left: the table as curves, the mean loss of each range of positions for each
# method (the line joins the means of the two seeds, the markers are the seeds themselves, so their
# spread is the seed noise); each step on the x axis doubles the positions covered. Right: loss by
# position for RoPE and its stretched variants, minus ALiBi's loss at the same position (the same
# windows, so what the text itself makes hard cancels out), averaged over the seeds and smoothed over
# 16 positions; 0 means "as good as ALiBi". The dashed lines mark $L$ and $2L$.

# %% id="length-plot"
fig, axes = plt.subplots(1, 2, figsize=(15, 4.8))
middles = list(range(len(RANGES)))  # one step per range; each range is twice as long as the one before
for method in LENGTH_METHODS:
    line = axes[0].plot(middles, list(lengths[method]["ranges"].values()), marker="o", label=method,
                        ls=":" if method == "sinusoidal-x1" else "-")[0]
    for by in lengths[method]["by_seed"].values():
        axes[0].plot(middles, list(by.values()), ls="none", marker="_", ms=12, color=line.get_color())
axes[0].set(xticks=middles, xticklabels=RANGES, xlabel="range of positions (L = 32)",
            ylabel="mean loss (nats per character)", title="Loss per range: two seeds (dashes), their mean (dots)")
kernel = np.ones(16) / 16
alibi_curve = np.array(lengths["alibi"]["curve"])
for method in ("rope", "rope-pi", "rope-ntk", "rope-pi-tuned", "rope-tuned", "sinusoidal", "learned"):
    gap = np.convolve(np.array(lengths[method]["curve"]) - alibi_curve, kernel, mode="valid")
    axes[1].plot(np.arange(len(gap)) + 8, gap, label=method, ls="--" if method in ("sinusoidal", "learned") else "-")
axes[1].axhline(0, color="black", lw=0.8)
axes[1].set(xlabel="position in the window", ylabel="loss minus ALiBi's (nats)",
            title="Loss by position minus ALiBi's, smoothed over 16 positions")
for ax, xs in zip(axes, [(0.5, 1.5), (TRAIN_LEN, 2 * TRAIN_LEN)]):  # L and 2L on each axis
    for x in xs:
        ax.axvline(x, color="gray", ls="--", lw=1)
    ax.legend(ncol=2, fontsize=9)
fig.tight_layout()
plt.show()

# %% [markdown] id="length-plot-caption"
# *What to see:* on the left, every method but learned improves or holds (within a few hundredths)
# from the first range to the second (more context helps); from $[2L, 4L)$ on, RoPE climbs highest, learned positions have jumped
# already at $L$ where their untrained rows begin, sinusoidal, T5's buckets and no positions drift up
# a little, and ALiBi stays level; the dotted unscaled sinusoidal table sits far above all of them at
# every range. On the right, RoPE's gap to ALiBi opens between $L$ and $2L$ and keeps widening; interpolation alone (`rope-pi`) is
# worse than ALiBi everywhere, inside $L$ too; the NTK-aware base keeps the gap smaller up to about
# $3L$; both short trainings at 256 close much of it, the one without interpolation more.

# %% [markdown] id="length-reading"
# **Reading the result.** The claims below are the orderings that `length-claims` checks on both
# seeds; the table gives the numbers.
#
# * **RoPE does not extrapolate; ALiBi does.** Up to about $2L$ RoPE holds, then its loss rises by
#   several tenths of a nat, while ALiBi's stays flat within the seed noise: Press et al.'s headline
#   in miniature. ALiBi's bias only grows more negative with distance, so a key farther back than any
#   seen in training is simply weighted less; under RoPE, a key at an offset never seen in training
#   gets a score from rotation angles the model was never trained to keep low.
# * **Learned positions degrade at once past $L$**: rows 32..255 of the table were never trained,
#   so the model reads noise as a position.
# * **Sinusoidal positions, at a sensible scale, degrade past $L$ too**, less than RoPE: the 2017
#   paper's hope of extrapolation does not hold here. At the paper's $\pm 1$ scale beside token
#   embeddings of standard deviation 0.02, the table drowns the tokens and the model is worse at
#   *every* position, inside $L$ included; that is the mistake, not a property of sinusoids (the
#   paper avoided it by multiplying the embeddings by $\sqrt{d_{\text{model}}}$).
# * **No positions and T5's buckets** rise a little, less than RoPE: neither ever sees a new angle
#   or row (a decoder without positions counts tokens through its causal mask; T5 sends every
#   distance past `max_distance` to one bucket), but attending over 8 times more keys than in
#   training still changes what the softmax averages.
# * **Interpolation needs training.** Read with positions squeezed by 8, RoPE's fastest pair turns
#   $1/8$ radian between neighbours instead of 1, an angle it never used for "the previous
#   character": the loss goes *up*, inside $L$ too. This is why the NTK-aware and YaRN rules below
#   leave the fast pairs alone, and why Chen et al. fine-tune after interpolating. With 20 steps at
#   256 characters the interpolated model recovers much of RoPE's loss past $2L$. But the control,
#   the same 20 steps without interpolation, recovers more: at this size (8 pairs per head, a
#   model that relearns in a few steps) direct training at the new length wins, unlike Chen et al.'s
#   7B-65B Llama models, where interpolation adapted in far fewer steps than extrapolation. We
#   report what we measured.

# %% [markdown] id="extension"
# ### Stretching RoPE past its training length: PI, NTK-aware scaling, YaRN, Llama 3
#
# Real decoders are pre-trained at one context length and then *extended*. Every method changes
# RoPE's angle per position $\theta_k = b^{-2k/d}$ (pair $k$, base $b$, $d = d_{\text{head}}$), by a
# factor $s = L'/L$ from the trained length $L$ to the new one $L'$. With the wavelength
# $\lambda_k = 2\pi/\theta_k$ (positions per turn) and $r_k = L/\lambda_k$ (turns within $L$):
#
# $$
# \begin{aligned}
# \text{PI (Chen et al. 2023):}\quad & \theta'_k = \theta_k / s
#   \quad\text{(every position read as } p/s\text{)}\\
# \text{NTK-aware (bloc97 2023):}\quad & \theta'_k = \big(b\, s^{d/(d-2)}\big)^{-2k/d}
#   \quad\text{(pair 0 unchanged, the last pair exactly } \theta_{d/2-1}/s\text{)}\\
# \text{YaRN (Peng et al. 2023):}\quad & \theta'_k = \big(1 - \gamma(r_k)\big)\,\frac{\theta_k}{s} + \gamma(r_k)\,\theta_k,
#   \quad \gamma(r) = \operatorname{clamp}\!\Big(\frac{r - \alpha}{\beta - \alpha}, 0, 1\Big),\ \alpha = 1,\ \beta = 32,\\
#   & \text{and logits } q\cdot k / (t\sqrt{d}) \text{ with } \sqrt{1/t} = 0.1 \ln s + 1\\
# \text{Llama 3.1:}\quad & \text{the same blend with } \gamma = \operatorname{clamp}\!\Big(\frac{r_k - 1}{4 - 1}, 0, 1\Big)
#   \text{ (low-frequency factor 1, high-frequency factor 4), } s = 8,\ L = 8192,\ b = 500\,000
# \end{aligned}
# $$
#
# PI slows every pair, so neighbours get closer angles (the loss of `rope-pi` above, inside $L$
# too). NTK-aware scaling raises the base instead: fast pairs stay as they were, slow pairs are
# interpolated. YaRN and Llama 3.1 make that split explicit: a pair that turns more than
# $\beta$ (or 4) times within $L$ is kept, one that turns less than $\alpha$ (or once) is
# interpolated by $s$, and pairs between are blended. A larger base alone, as Llama 3 uses for
# pre-training ($b = 500\,000$ against Llama 2's 10 000), slows the slow pairs so that fewer of
# them ever complete a turn inside the context.
#
# **Worked example at real sizes** (`helpers.positions.rope_scaled_frequencies`): Llama 2's heads
# ($d_{\text{head}} = 128$, base 10 000, $L = 4096$) stretched 8 times to 32 768 by each rule, and
# Llama 3.1's rule on Llama 3's base. The cell prints the wavelength of pairs 0, 16, 32, 48 and 63,
# the slowest pair's slow-down $\theta_{63}/\theta'_{63}$, and how many of the 64 pairs are kept
# as they were, interpolated by the full $s$, or blended.

# %% id="extension-run"
# NBVAL_CHECK_OUTPUT
from helpers.positions import rope_scaled_frequencies

cases = [("Llama 2, no scaling", dict(base=10000.0, method="none", factor=1.0, original_len=4096)),
         ("Llama 2 + PI, s = 8", dict(base=10000.0, method="pi", factor=8.0, original_len=4096)),
         ("Llama 2 + NTK, s = 8", dict(base=10000.0, method="ntk", factor=8.0, original_len=4096)),
         ("Llama 2 + YaRN, s = 8", dict(base=10000.0, method="yarn", factor=8.0, original_len=4096)),
         ("Llama 3 base 500000", dict(base=500000.0, method="none", factor=1.0, original_len=8192)),
         ("Llama 3.1 rope_scaling", dict(base=500000.0, method="llama3", factor=8.0, original_len=8192))]
print(f"{'wavelength of pair':24}" + "".join(f"{k:>10}" for k in (0, 16, 32, 48, 63)) + f"{'slowest':>10}"
      + "   pairs kept / scaled by s / blended")
for name, kw in cases:
    plain = rope_frequencies(128, kw["base"])  # (64,)
    scaled = rope_scaled_frequencies(128, **kw)  # (64,)
    ratio = plain / scaled  # (64,): 1 = kept, s = fully interpolated
    kept, full = int(torch.isclose(ratio, torch.tensor(1.0, dtype=torch.float64)).sum()), 0
    if kw["factor"] > 1:
        full = int(torch.isclose(ratio, torch.tensor(kw["factor"], dtype=torch.float64)).sum())
    wave = 2 * math.pi / scaled
    print(f"{name:24}" + "".join(f"{wave[k].item():10.4g}" for k in (0, 16, 32, 48, 63))
          + f"{ratio[63].item():10.3g}   {kept:2} / {full:2} / {64 - kept - full:2}")
print("YaRN's logit temperature for s = 8: sqrt(1/t) = 0.1 ln 8 + 1 =", round(0.1 * math.log(8) + 1, 4))
print("NTK-aware base for d = 128, s = 8: 10000 * 8^(128/126) =", round(10000 * 8 ** (128 / 126)))

# %% [markdown] id="extension-reading"
# *Reading it.* Without scaling, Llama 2's slowest pair has a wavelength of about 54 000 positions,
# longer than its 4096-token context, while pair 0 turns every $2\pi \approx 6.3$ positions (the
# column "slowest" is $\theta_{63}/\theta'_{63}$). PI
# multiplies *every* wavelength by 8, pair 0's included. NTK-aware scaling leaves pair 0 alone and
# slows the last pair by exactly 8. YaRN keeps the fast pairs (they turn more than 32 times in 4096
# positions), interpolates the slow ones by the full 8 and blends a band between. Llama 3's base of
# 500 000 already pushes the slowest wavelength to about $2.6 \times 10^6$ positions; Llama 3.1's
# rule again keeps the fast pairs and divides the slow ones by 8 (its configuration pairs factor 8 and
# an original length of 8192 with up to 131 072 positions, $16 \times 8192$: the factor is not simply
# the ratio of the lengths).
#
# **Published figures** (quoted, not computed here): Chen et al. (2023) extended LLaMA models from
# 2048 to up to 32 768 positions with position interpolation and fine-tuning of about 1000 steps;
# Peng et al. (2023) extended Llama 2 from 4096 to 128K positions with YaRN, $s = 32$
# ($4096 \times 32 = 131\,072$, computed); Llama 3 pre-trains with base 500 000 (Meta, "The Llama 3
# Herd of Models", 2024), and Llama 3.1's published configuration uses `rope_scaling` with factor 8,
# low_freq_factor 1, high_freq_factor 4 and original context 8192, the values in the cell; Press et
# al. (2022) report a 1.3B-parameter ALiBi model trained on 1024 tokens that matches, at 2048, the
# perplexity of a sinusoidal model trained on 2048, training 11 % faster. The miniature above is the
# same experiment at a size a laptop trains in seconds: ALiBi flat, RoPE rising, interpolation
# useful only with training.

# %% [markdown] id="mistakes"
# ## 8. Common mistakes, in one place
#
# | mistake | symptom | where it is run |
# |---|---|---|
# | positions added after attention | token outputs ignore the order of the others | §1 `why-after-attention` |
# | sin and cos swapped | $\mathrm{PE}(0) = [1, 0, 1, 0, \dots]$ | §3 `sin-mistakes-run` |
# | exponent $i/d$ instead of $2i/d$ | slowest wavelength ~540 instead of ~47 000 positions | §3 `sin-mistakes-run` |
# | ALiBi's sign flipped | weight moves to the farthest keys | §4 `alibi-sign` |
# | the other RoPE pair layout without the permutation | different scores: a different model | §5 `rope-layouts-check` |
# | RoPE applied to $v$ | outputs depend on absolute positions | §5 `rope-mistakes-run` |
# | RoPE applied after the scores | the scores never see a position | §5 `rope-mistakes-run` |
# | a cached position offset off by one | the new token's output differs from the full pass | §6 `offset-mistake-run` |
# | learned positions past the table | a `ShapeError` (here, on purpose) | §2 `learned-error` |
# | the sinusoidal table at $\pm 1$ beside embeddings of std 0.02 | the table drowns the tokens: worse at every position | §3 `sin-real-run`, §7 `length-claims` |
# | position interpolation without any training | squeezed fast pairs: worse loss, inside $L$ too | §7 `length-claims` |
#
# ## Self-check
#
# **Q1.** Why does a model without positions and without a causal mask give the same output for
# "dog bites man" and "man bites dog", up to the order of the rows?
#
# <details><summary>Answer</summary>
#
# Every score compares contents only, so permuting the tokens permutes the scores' rows and
# columns alike: the output is permuted the same way (permutation equivariance).
#
# </details>
#
# **Q2.** Which methods add something to the residual stream, which to the scores, and which
# rotate $q$ and $k$?
#
# <details><summary>Answer</summary>
#
# Learned and sinusoidal add vectors to the input; T5's relative bias and ALiBi add to the scores;
# RoPE rotates $q$ and $k$.
#
# </details>
#
# **Q3.** What is $\mathrm{PE}(0)$ for $d_{\text{model}} = 6$, and why can a model shift attention by
# $k$ positions with one linear map?
#
# <details><summary>Answer</summary>
#
# $[0, 1, 0, 1, 0, 1]$. $\mathrm{PE}(p + k) = \mathrm{PE}(p)\,M_k$ with $M_k$ a block rotation that
# depends on $k$ only (angle addition).
#
# </details>
#
# **Q4.** Why does RoPE rotate $q$ and $k$ but not $v$?
#
# <details><summary>Answer</summary>
#
# The rotations cancel to $R_{n-m}$ only inside the dot product $q \cdot k$; $v$ never meets
# another rotated vector, so rotating it would make the output depend on absolute positions.
#
# </details>
#
# **Q5.** A cached decoder has 41 tokens in its cache. At which position does it rotate the new
# token's query and key, and which ALiBi bias row does it need?
#
# <details><summary>Answer</summary>
#
# Position 41 (positions start at 0). The bias of query 41 against keys 0..41: $-m_h (41 - j)$, shape `(H, 1, 42)`.
#
# </details>
#
# **Q6.** What are ALiBi's slopes for 8 heads, and for 6?
#
# <details><summary>Answer</summary>
#
# $1/2, 1/4, \dots, 1/256$. For 6: $1/4, 1/16, 1/64, 1/256$, then $1/2, 1/8$.
#
# </details>
#
# **Q7.** Your model with learned positions was trained at 1024 tokens. What happens at 1025?
#
# <details><summary>Answer</summary>
#
# There is no row for position 1024: the forward pass cannot run (the course's model raises a
# `ShapeError`). Every other method at least runs; whether it predicts well is an empirical question,
# and section 7 measured it: a table with spare, untrained rows runs but degrades at once.
#
# </details>
#
# **Q8.** A RoPE model trained at 4096 tokens must read 32 768. Why does plain position
# interpolation ($p \to p/8$) hurt before any fine-tuning, and what do NTK-aware scaling and YaRN do
# differently?
#
# <details><summary>Answer</summary>
#
# PI slows every pair by 8, so the fast pairs, which tell neighbouring tokens apart, turn by angles
# the model never used for neighbours (section 7: `rope-pi` is worse even inside the training
# length). NTK-aware scaling raises the base so the fastest pair is unchanged and the slowest is
# slowed by exactly 8; YaRN (and Llama 3.1's rule) keep every pair that turns many times within the
# trained context and interpolate only those that turn less than about once.
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
# | without positions (and without a mask) the model is permutation-equivariant; every method breaks it | §1 `why-permutation` |
# | what each method costs in parameters; learned positions refuse positions past their table | §2 `learned-count`, `learned-error` |
# | the sinusoidal table by hand; $\mathrm{PE}(p + k) = \mathrm{PE}(p) M_k$ with one orthogonal $M_k$ | §3 `sin-by-hand`, `sin-shift-check` |
# | T5's buckets and ALiBi's slopes and biases; BLOOM's ALiBi form gives the same weights | §4 `t5-buckets`, `alibi-slopes`, `alibi-bloom` |
# | RoPE scores depend only on $m - n$; norms are kept; the two pair layouts agree after a permutation | §5 `rope-offset-check`, `rope-layouts-check` |
# | one new token at position $t$ gets exactly the full pass's output, for every method | §6 `offset-check` |
# | the 2017 Transformer's wavelengths and why its embeddings are scaled by $\sqrt{d_{\text{model}}}$ | §3 `sin-real-run` |
# | past twice the training length RoPE's loss rises and ALiBi's stays flat, on two seeds; learned and sinusoidal degrade | §7 `length-table`, `length-claims`, `length-plot` |
# | what PI, NTK-aware scaling, YaRN and Llama 3.1 do to each RoPE pair at real sizes; interpolation needs training | §7 `extension-run`, `length-claims` |

# %% [markdown] id="next"
# ## Next: the exercises
#
# Open [`exercises/06_positions/06_positions.ipynb`](../exercises/06_positions/06_positions.ipynb).
# You will write the sinusoidal table and put it where it belongs, RoPE in the rotate-half
# convention and inside attention with cached keys, a test of RoPE's relative-offset property,
# ALiBi's bias with the paper's slopes, and compute the wavelengths of RoPE's pairs. Each exercise
# has a visible check that names the mistake if your output matches one of those in section 8.
