# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] id="intro"
# # Chapter 05: encoder, decoder, encoder-decoder: which block, which mask
#
# Chapters 01–04 built the parts: attention, heads, the FFN, the residual stream and its norms.
# This chapter assembles them into the three kinds of transformer, and the thing that tells them
# apart is almost only **the mask**: who may look at whom.
#
# | kind | self-attention mask | extra sublayer | reads | example |
# |---|---|---|---|---|
# | encoder-only | bidirectional: every real token | — | the whole input at once | BERT, RoBERTa, embedding models |
# | decoder-only | causal: itself and the past | — | the prefix, one new token at a time | GPT, Llama, Mistral |
# | encoder-decoder | bidirectional (encoder), causal (decoder) | cross-attention: decoder queries, encoder keys/values | a source, then writes a target | the 2017 Transformer, T5, BART, Whisper |
#
# **Map of this notebook.**
#
# 1. Encoder self-attention: bidirectional, with key padding
# 2. Decoder self-attention: causal, and the influence matrix of an encoder block next to a decoder block
# 3. Cross-attention: queries from one sequence, keys and values from another
# 4. The mask family side by side, prefix-LM, and a classifier that names a mask
# 5. The blocks: encoder block, decoder block with cross-attention, checked against `nn.TransformerEncoderLayer` / `nn.TransformerDecoderLayer`
# 6. The three model kinds (BERT-style, GPT-style, and an encoder-decoder with the 2017 Transformer's layout) with the
#    shape at every arrow; an encoder-decoder trained to reverse, and what its cross-attention learned; their
#    parameters, and BERT, T5, BART and Whisper counted
# 7. Two block variants of the shared model: the parallel block and the MoE FFN
# 8. Why decoder-only won for LLMs, and the honest caveats
# 9. Common mistakes, self-check, evidence card, and the exercises
#
# Each subtopic follows the same pattern: the idea in plain words, the formula, a worked example
# with real numbers, an implementation check, where it shows up in real models, and a common mistake
# run beside the right version. Cells that start with `# NBVAL_CHECK_OUTPUT` are claims: the test
# suite re-runs the notebook and fails if their output ever changes.

# %% id="setup"
import math
import warnings
from dataclasses import replace

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from matplotlib.colors import LogNorm
from torch import nn

import helpers
from helpers.attention import (
    bidirectional_mask,
    causal_mask,
    causal_padding_mask,
    classify_mask,
    cross_mask,
    model_masks,
    prefix_lm_mask,
    scaled_dot_product_attention,
)
from helpers.blocks import (
    CrossDecoderBlock,
    DecoderBlock,
    EncoderBlock,
    ModelConfig,
    TinyDecoder,
    TinyEncoder,
    TinyEncoderDecoder,
    cross_attention,
    decoder_block,
    model_param_count,
    moe_balance_loss,
)
from helpers.ffn import load_balancing_loss, token_influence, top_k_route
from helpers.heads import attention_param_count
from helpers.llama import LLAMA2_7B, llama_config, llama_param_count
from helpers.plots import mask_grid
from helpers.reversal import anti_diagonal_mass, cross_attention_maps, reversal_batch, reversal_experiment

helpers.seed_everything(0)
device = helpers.get_device()
print("computing on:", device.type)


def randn(*shape: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Standard-normal numbers drawn on the CPU from their own seed, then moved to `device`."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=dtype).to(device)


def show(t: torch.Tensor, digits: int = 3) -> list:
    """A tensor as plain nested lists of rounded floats: no device, no dtype, no -0.0."""
    return (torch.round(t.detach().double().cpu(), decimals=digits) + 0.0).tolist()


def randomize(module: nn.Module, seed: int) -> nn.Module:
    """Every weight random (norm gammas near 1, betas near 0), so no weight can hide in a comparison."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype).to(p.device)
            if "norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * noise)
            else:
                p.copy_(noise / math.sqrt(p.shape[-1]))
    return module


def lengths_to_real(lengths, T: int) -> torch.Tensor:
    """(B,) lengths -> (B, T) bool, True = a real token (a key-padding mask)."""
    return torch.arange(T, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]

# %% [markdown] id="encoder"
# ## 1. Encoder self-attention: every token sees every real token
#
# **Main idea.** An encoder reads a whole input at once, so nothing stops token 2 from looking at
# token 5: its self-attention is **bidirectional**. The only keys it must not see are **padding**:
# the filler tokens that make sequences of different lengths fit one `(B, T)` tensor. Padding is
# removed from the **key axis** (columns): no query may attend to a padded key. A padded query row
# is still computed; its output is garbage that the loss ignores.
#
# **Formula.** With $M_{ij} = 0$ for a real key $j$ and $-\infty$ for a padded one,
#
# $$
# \mathrm{Attn}(Q, K, V) = \mathrm{softmax}\!\Big(\frac{QK^\top}{\sqrt{d_k}} + M\Big) V,
# \qquad \text{allowed}_{ij} = [\, j < \text{length} \,].
# $$
#
# **Worked example.** Four tokens with $d_k = 2$, the last one padding (length 3). The queries,
# keys and values are the token vectors themselves. Every real query spreads its weight over
# keys 0–2; column 3 is zero everywhere.

# %% id="encoder-example"
# NBVAL_CHECK_OUTPUT
x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [9.0, 9.0]]], dtype=torch.float64, device=device)  # (B, T, d) = (1, 4, 2)
allowed = bidirectional_mask([3], 4).to(device)  # (B, T_q, T_k) = (1, 4, 4)
print("mask (1 = may attend):", allowed[0].int().tolist())
out, weights = scaled_dot_product_attention(x, x, x, allowed)  # (1, 4, 2), (1, 4, 4)
print("weights:", show(weights[0]))
print("column 3 (the padded key) gets weight 0 from every query:", bool((weights[0, :, 3] == 0).all()))
print("query 0 sees the later tokens 1 and 2:", show(weights[0, 0, 1:3]))

# %% [markdown] id="encoder-mistake-text"
# **Common mistake: padding on the query axis.** Blocking padded *rows* instead of padded
# *columns* leaves the padded key visible to every real token. Here the padding token's vector is
# $[9, 9]$, large on purpose: the wrong mask lets it take most of the weight.

# %% id="encoder-mistake"
# NBVAL_CHECK_OUTPUT
real = lengths_to_real([3], 4)  # (B, T) = (1, 4)
right_mask = real[:, None, :]  # (B, 1, T_k): blocks key columns
wrong_mask = real[:, :, None]  # (B, T_q, 1): WRONG, blocks query rows
right, _ = scaled_dot_product_attention(x, x, x, right_mask)
wrong, wrong_weights = scaled_dot_product_attention(x, x, x, wrong_mask)
print("weight of the padded key in query 2's row, right:", show(weights[0, 2, 3]), "| wrong:", show(wrong_weights[0, 2, 3]))
print("output of token 2, right:", show(right[0, 2]), "| wrong:", show(wrong[0, 2]))

# %% [markdown] id="encoder-llm"
# **Where it shows up.** BERT and RoBERTa (masked-language-model pre-training), the encoders of T5,
# BART and Whisper, and most sentence-embedding models. In torch, `nn.TransformerEncoderLayer`
# takes the same padding as `src_key_padding_mask` with the opposite convention: **True = padded**
# (so pass `~real`).

# %% [markdown] id="decoder"
# ## 2. Decoder self-attention: causal
#
# **Main idea.** A decoder is trained to predict token $t+1$ from tokens $0..t$, at every position
# at once. If position $t$ could attend to position $t+1$, it would read the answer. So query $i$
# may attend only to keys $j \le i$: the **causal** mask, lower-triangular. Padding still blocks
# keys, but with right padding the causal triangle already hides it from every real token.
#
# **Formula.**
#
# $$
# \text{allowed}_{ij} = [\, j \le i \,] \wedge [\, j < \text{length} \,].
# $$
#
# **Worked example: the influence matrix.** The same input goes through an `EncoderBlock` and a
# (causal) `DecoderBlock` with *the same weights*. Entry $(i, j)$ of the influence matrix is how much
# output $i$ moves when input token $j$ is perturbed (`helpers.ffn.token_influence`, chapter 03).
# The encoder's matrix is full; the decoder's is zero above the diagonal: a future token
# never moves an earlier output.

# %% id="influence"
# NBVAL_CHECK_OUTPUT
config = ModelConfig(vocab_size=10, d_model=16, n_heads=4, d_ff=32)
encoder_block = randomize(EncoderBlock(config), seed=1).double().to(device).eval()
decoder_block_ = DecoderBlock(config).double().to(device).eval()
decoder_block_.load_state_dict(encoder_block.state_dict())  # the same weights, only the mask differs
x = randn(1, 6, 16, seed=2)  # (B, T, d_model)
influence_enc = token_influence(encoder_block, x)  # (T, T)
influence_dec = token_influence(decoder_block_, x)  # (T, T)
print("encoder: entries above the diagonal larger than 1e-9:", int((influence_enc.triu(1) > 1e-9).sum()), "of 15")
print("decoder: entries above the diagonal larger than 1e-9:", int((influence_dec.triu(1) > 1e-9).sum()), "of 15")

# %% id="influence-plot"
# The entries span orders of magnitude (the diagonal dominates), so the colours follow a log scale; a log
# scale has no place for an exact 0, which is drawn grey ("bad" values of the colour map).
both = torch.cat([influence_enc.flatten(), influence_dec.flatten()]).cpu()
smallest, largest = both[both > 0].min().item(), both.max().item()
cmap = plt.get_cmap("magma").copy()
cmap.set_bad("lightgray")
fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
for ax, matrix, title in [(axes[0], influence_enc, "EncoderBlock (bidirectional)"),
                          (axes[1], influence_dec, "DecoderBlock (causal)")]:
    image = ax.imshow(matrix.cpu().numpy(), cmap=cmap, norm=LogNorm(vmin=smallest / 2, vmax=largest))
    ax.set_xlabel("input token j that moved")
    ax.set_ylabel("output position i")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046)
fig.suptitle(f"Same weights, same input, log colour scale ({smallest:.2g} to {largest:.2g}): with the causal mask "
             "no output moves when a later token changes (upper triangle exactly 0, grey)", fontsize=9)
plt.tight_layout()
plt.show()

# %% [markdown] id="influence-plot-caption"
# *What to see:* with the same weights, the encoder block's outputs move when any input token moves
# (colour everywhere, small entries included: the log scale shows those far below the diagonal's),
# the decoder block's only when the same or an earlier token moves: its upper triangle is exactly 0,
# drawn grey.

# %% [markdown] id="decoder-cache-text"
# **Implementation check: why the causal mask makes a KV cache possible.** Because earlier outputs
# never depend on later tokens, appending a token leaves every earlier position's output unchanged,
# in every layer. So a decoder can keep the keys and values it already computed and process only
# the new token (chapter 07). An encoder cannot: appending a token changes every output.

# %% id="decoder-cache"
# NBVAL_CHECK_OUTPUT
longer = torch.cat([x, randn(1, 1, 16, seed=3)], dim=1)  # (B, T + 1, d_model): one token appended
with torch.no_grad():
    dec_moved = (decoder_block_(longer)[:, :6] - decoder_block_(x)).abs().max().item()
    enc_moved = (encoder_block(longer)[:, :6] - encoder_block(x)).abs().max().item()
print("decoder: the first 6 outputs change by less than 1e-12 after appending a token:", dec_moved < 1e-12)
print("encoder: largest change of the first 6 outputs after appending a token:", round(enc_moved, 2))

# %% [markdown] id="decoder-mistake-text"
# **Common mistake: a decoder trained without its causal mask.** The model sees the next token in
# its input. In training the loss drops fast (it only has to copy); at generation time the future is
# not there, and the model fails. The leak is easy to measure: perturb token $t+1$ and see whether
# the output at $t$ moves. The `DecoderBlock` with `causal=False` is exactly the encoder block.

# %% id="decoder-mistake"
# NBVAL_CHECK_OUTPUT
leaky = DecoderBlock(ModelConfig(vocab_size=10, d_model=16, n_heads=4, d_ff=32, causal=False)).double().to(device).eval()
leaky.load_state_dict(encoder_block.state_dict())
print("causal decoder: output 2 moves when token 3 changes:", bool(influence_dec[2, 3] > 1e-9))
print("decoder without its mask: output 2 moves when token 3 changes:", bool(token_influence(leaky, x)[2, 3] > 1e-9))

# %% [markdown] id="cross"
# ## 3. Cross-attention: the decoder reads the encoder
#
# **Main idea.** In an encoder-decoder, the encoder turns the source (a sentence to translate, an
# audio clip) into `memory`, one vector per source token. Each decoder block then has a third
# sublayer, **cross-attention**: its **queries** come from the decoder's own stream, its **keys and
# values** from `memory`. The mask has shape `(T_tgt, T_src)`: it is not square and not causal,
# because the whole source exists before the first target token is written. Only padded source keys
# are blocked.
#
# **Formula.**
#
# $$
# Q = x\,W_Q^\top \ (T_{\text{tgt}} \times d),\qquad K = \mathrm{memory}\,W_K^\top,\ V = \mathrm{memory}\,W_V^\top \ (T_{\text{src}} \times d),\qquad
# \mathrm{out} = \mathrm{softmax}\!\Big(\frac{QK^\top}{\sqrt{d_k}} + M_{\text{src pad}}\Big) V \ (T_{\text{tgt}} \times d).
# $$
#
# **Worked example.** Two target tokens read three source tokens, the last of which is padding.
# The weights are a `(2, 3)` matrix, each row sums to 1 over the two real source keys.

# %% id="cross-example"
# NBVAL_CHECK_OUTPUT
eye = torch.eye(2, dtype=torch.float64, device=device)  # identity weights: q = x, k = v = memory
target = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]], dtype=torch.float64, device=device)  # (B, T_tgt, d) = (1, 2, 2)
memory = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]], dtype=torch.float64, device=device)  # (B, T_src, d) = (1, 3, 2)
real_src = lengths_to_real([2], 3)  # (B, T_src): the third source token is padding
out, weights = cross_attention(target, memory, eye, eye, eye, eye, n_heads=1, memory_mask=real_src)
print("weights (T_tgt, T_src):", show(weights[0, 0]))
print("rows sum to:", show(weights[0, 0].sum(-1)))
print("out (T_tgt, d):", show(out[0]))
print("target 0 by hand: softmax([1, 0] / sqrt 2) =", show(torch.softmax(torch.tensor([1.0, 0.0]) / math.sqrt(2), -1)))

# %% [markdown] id="cross-check-text"
# **Implementation check.** `helpers.blocks.cross_attention` against `torch.nn.MultiheadAttention`
# called with `query = x` and `key = value = memory` (torch's padding mask means True = padded), and
# two properties: the output does not change when the memory tokens are permuted (attention has no
# notion of order; positions were added before the encoder), and padded memory never matters, even
# filled with huge numbers.

# %% id="cross-check"
# NBVAL_CHECK_OUTPUT
B, T_tgt, T_src, d_model, H = 2, 5, 7, 12, 3
x, memory = randn(B, T_tgt, d_model, seed=4), randn(B, T_src, d_model, seed=5)
w_q, w_k, w_v, w_o = (randn(d_model, d_model, seed=s) / math.sqrt(d_model) for s in (6, 7, 8, 9))
real_src = lengths_to_real([7, 4], T_src)  # (B, T_src)
ours, ours_w = cross_attention(x, memory, w_q, w_k, w_v, w_o, H, memory_mask=real_src)  # (B, T_tgt, d), (B, H, T_tgt, T_src)
mha = nn.MultiheadAttention(d_model, H, bias=False, batch_first=True, dtype=torch.float64).to(device)
with torch.no_grad():
    mha.in_proj_weight.copy_(torch.cat([w_q, w_k, w_v]))
    mha.out_proj.weight.copy_(w_o)
    theirs, theirs_w = mha(x, memory, memory, key_padding_mask=~real_src, average_attn_weights=False)
print("shapes: out", tuple(ours.shape), "weights", tuple(ours_w.shape))
print("max |ours - nn.MultiheadAttention|, out and weights below 1e-12:",
      (ours - theirs).abs().max().item() < 1e-12, (ours_w - theirs_w).abs().max().item() < 1e-12)
perm = torch.randperm(T_src, generator=torch.Generator().manual_seed(10)).to(device)
permuted, _ = cross_attention(x, memory[:, perm], w_q, w_k, w_v, w_o, H, memory_mask=real_src[:, perm])
print("permuting the memory tokens changes the output by less than 1e-12:", (permuted - ours).abs().max().item() < 1e-12)
garbage = memory.clone()
garbage[1, 4:] = 1e6
print("huge numbers in padded memory change the output by less than 1e-12:",
      (cross_attention(x, garbage, w_q, w_k, w_v, w_o, H, memory_mask=real_src)[0] - ours).abs().max().item() < 1e-12)

# %% [markdown] id="cross-mistake-text"
# **Common mistakes.** Two wrong versions run without an error. Taking keys and values from the
# decoder stream makes it self-attention: the output no longer depends on the source at all.
# Adding a causal mask to cross-attention makes target token 0 read only source token 0.

# %% id="cross-mistake"
# NBVAL_CHECK_OUTPUT
other_memory = randn(B, T_src, d_model, seed=11)


def cross_kv_from_x(x, memory):  # WRONG: keys and values from the decoder stream
    return cross_attention(x, x, w_q, w_k, w_v, w_o, H)[0]


def cross_right(x, memory):
    return cross_attention(x, memory, w_q, w_k, w_v, w_o, H)[0]


for name, fn in [("keys/values from x", cross_kv_from_x), ("right", cross_right)]:
    print(f"{name}: another source sentence changes the output:",
          not torch.allclose(fn(x, memory), fn(x, other_memory), atol=1e-9))
q = (x @ w_q.T).view(B, T_tgt, H, 4).transpose(1, 2)  # (B, H, T_tgt, d_head)
k = (memory @ w_k.T).view(B, T_src, H, 4).transpose(1, 2)  # (B, H, T_src, d_head)
v = (memory @ w_v.T).view(B, T_src, H, 4).transpose(1, 2)
causal_cross = torch.ones(T_tgt, T_src, dtype=torch.bool, device=device).tril()  # WRONG for cross-attention
_, w_wrong = scaled_dot_product_attention(q, k, v, causal_cross)
_, w_right = scaled_dot_product_attention(q, k, v)
print("source keys target 0 reads, right:", int((w_right[0, 0, 0] > 0).sum()), "of 7 | causal by mistake:",
      int((w_wrong[0, 0, 0] > 0).sum()), "of 7")

# %% [markdown] id="cross-llm"
# **Where it shows up.** The 2017 Transformer (translation), T5 and BART (text-to-text), Whisper
# (the encoder reads audio frames, the decoder writes text), and vision-language models of the
# Flamingo family, which insert cross-attention layers into a decoder-only LM so that text tokens
# can read image features. With grouped-query attention (`n_kv_heads < n_heads`, chapter 02) the
# keys and values of memory are computed once per key/value head: `cross_attention(...,
# n_kv_heads=...)` and the shared model's `Attention(..., source=memory)` both support it.

# %% [markdown] id="masks"
# ## 4. The mask family, side by side
#
# **Main idea.** Four masks cover every model in this chapter. Each is drawn below for a batch
# element with padding: the grey columns on the right are padded keys.
#
# | kind | allowed$_{ij}$ | shape |
# |---|---|---|
# | bidirectional | $j < n$ | $(T, T)$ |
# | causal | $j < n \wedge j \le i$ | $(T, T)$ |
# | prefix-LM (prefix $p$) | $j < n \wedge (j \le i \vee j < p)$ | $(T, T)$ |
# | cross | $j < n_{\text{src}}$ | $(T_{\text{tgt}}, T_{\text{src}})$ |
#
# A **prefix LM** is one decoder stack that reads its prompt bidirectionally and generates the rest
# causally (T5's prefix-LM objective, UniLM, GLM): with $p = 0$ or $1$ it is the causal mask, with
# $p = n$ the bidirectional one.

# %% id="mask-family"
# NBVAL_CHECK_OUTPUT
family = {
    "bidirectional": bidirectional_mask([5], 7)[0],
    "causal": causal_padding_mask([5], 7)[0],
    "prefix-lm": prefix_lm_mask([3], [5], 7)[0],
    "cross": cross_mask([5], 4, 7)[0],
}
for name, mask in family.items():
    print(f"{name:13s} shape {tuple(mask.shape)}  classify_mask -> {classify_mask(mask)!r}")

# %% id="mask-family-plot"
fig, axes = plt.subplots(1, 4, figsize=(17, 4.2))
for ax, (name, mask) in zip(axes, family.items()):
    mask_grid(mask, ax=ax, title=f"{name} (5 real keys of 7)")
fig.suptitle("The mask family, rows = queries, columns = keys: padding blocks the last two columns in every one; "
             "only causal and prefix-LM block anything above the diagonal", fontsize=10)
plt.tight_layout()
plt.show()

# %% [markdown] id="mask-family-plot-caption"
# *What to see:* all four masks block the two padding columns; only causal and prefix-LM block cells
# above the diagonal, prefix-LM lets its first three positions see each other both ways, and the
# cross-attention mask is rectangular (4 decoder queries against 7 encoder keys).

# %% [markdown] id="classifier-text"
# **Implementation check: naming a mask.** `helpers.attention.classify_mask` reads a mask the way
# you would: a non-square mask whose rows agree is `cross`; in a square mask, columns that no query
# may see are padding and are left out; then the diagonal must be allowed, and what is allowed above
# it decides between causal, prefix-LM and bidirectional. Masks that are none of these get an error
# that says why, and the builders of each model kind (`model_masks`) give the expected names.

# %% id="classifier"
# NBVAL_CHECK_OUTPUT
needs = model_masks("encoder-decoder", [5, 3], 5, [4, 4], 4)  # source lengths, T_src, target lengths, T_tgt
print({name: (tuple(m.shape), classify_mask(m)) for name, m in needs.items()})
broken = {
    "diagonal blocked": torch.ones(4, 4, dtype=torch.bool).tril(-1),
    "upper triangle (anti-causal)": torch.ones(4, 4, dtype=torch.bool).triu(),
    "not square, rows differ": torch.ones(3, 5, dtype=torch.bool).tril(),
}
for name, mask in broken.items():
    try:
        classify_mask(mask)
    except ValueError as error:
        print(f"{name}: {error}")

# %% [markdown] id="prefix-mistake-text"
# **Common mistake: a prefix-LM mask that is causal inside the prefix.** Then the prompt tokens do
# not see the prompt tokens after them, and the model is just a decoder: the mask equals the causal
# one. A second mistake puts the prefix on the query axis: prompt tokens then see the tokens that
# are still to be generated.

# %% id="prefix-mistake"
# NBVAL_CHECK_OUTPUT
i, j = torch.arange(7)[:, None], torch.arange(7)[None, :]
real_keys = j < 5
right = prefix_lm_mask([3], [5], 7)[0]
causal_inside = (j <= i) & real_keys  # WRONG: the prefix was forgotten
prefix_on_queries = ((j <= i) | (i < 3)) & real_keys  # WRONG: prefix rows see everything
print("causal inside the prefix is just causal:", torch.equal(causal_inside, causal_padding_mask([5], 7)[0]),
      "| classify_mask says", repr(classify_mask(causal_inside)))
print("prefix on queries: token 0 may see token 4 (generated later):", bool(prefix_on_queries[0, 4]),
      "| right:", bool(right[0, 4]))

# %% [markdown] id="blocks"
# ## 5. The blocks
#
# **Main idea.** An **encoder block** is the decoder block of the earlier chapters without the causal
# mask: self-attention and an FFN, each in a residual sublayer. The **decoder block of an
# encoder-decoder** has three residual sublayers: causal self-attention, cross-attention, FFN, each
# with its own norm:
#
# $$
# \begin{aligned}
# \text{Pre-LN:}\quad & x \leftarrow x + \mathrm{SelfAttn}(\mathrm{norm}_1(x), \text{causal}) &
# \text{Post-LN:}\quad & x \leftarrow \mathrm{norm}_1(x + \mathrm{SelfAttn}(x, \text{causal}))\\
# & x \leftarrow x + \mathrm{CrossAttn}(\mathrm{norm}_2(x), \mathrm{memory}) &
# & x \leftarrow \mathrm{norm}_2(x + \mathrm{CrossAttn}(x, \mathrm{memory}))\\
# & x \leftarrow x + \mathrm{FFN}(\mathrm{norm}_3(x)) &
# & x \leftarrow \mathrm{norm}_3(x + \mathrm{FFN}(x))
# \end{aligned}
# $$
#
# `memory` enters cross-attention as the encoder left it: in a Pre-LN model the encoder's final norm
# has already normalised it.
#
# **Implementation check.** `EncoderBlock` and `CrossDecoderBlock` against torch's
# `nn.TransformerEncoderLayer` and `nn.TransformerDecoderLayer` with the same weights copied in
# (dropout 0, eval mode, `bias=False` so that torch's attention, FFN and LayerNorms have no biases,
# like ours), for both norm placements and both float widths, with padded source and target.

# %% id="blocks-vs-torch"
# NBVAL_CHECK_OUTPUT
def torch_layers_like(enc: EncoderBlock, dec: CrossDecoderBlock, dtype: torch.dtype):
    c = enc.config
    kw = dict(dropout=0.0, activation="gelu", batch_first=True, norm_first=c.norm_placement == "pre", bias=False,
              dtype=dtype, device=device)
    t_enc = nn.TransformerEncoderLayer(c.d_model, c.n_heads, c.ffn_width, **kw).eval()
    t_dec = nn.TransformerDecoderLayer(c.d_model, c.n_heads, c.ffn_width, **kw).eval()
    with torch.no_grad():
        for ours, theirs in [(enc.attn, t_enc.self_attn), (dec.self_attn, t_dec.self_attn),
                             (dec.cross_attn, t_dec.multihead_attn)]:
            theirs.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
            theirs.out_proj.weight.copy_(ours.o_proj.weight)
        for ours, theirs in [(enc, t_enc), (dec, t_dec)]:
            theirs.linear1.weight.copy_(ours.ffn.fc1.weight)
            theirs.linear2.weight.copy_(ours.ffn.fc2.weight)
        for name in ("norm1", "norm2"):
            getattr(t_enc, name).weight.copy_(getattr(enc, name).weight)
        for name in ("norm1", "norm2", "norm3"):
            getattr(t_dec, name).weight.copy_(getattr(dec, name).weight)
    return t_enc, t_dec


for placement in ("pre", "post"):
    for dtype in (torch.float32, torch.float64):
        c = ModelConfig(vocab_size=10, d_model=12, n_heads=3, d_ff=20, norm_placement=placement)
        enc = randomize(EncoderBlock(c).to(dtype).to(device).eval(), seed=12)
        dec = randomize(CrossDecoderBlock(c).to(dtype).to(device).eval(), seed=13)
        with torch.no_grad():  # betas: torch's bias-free LayerNorm has none
            for m in (enc, dec):
                for name, p in m.named_parameters():
                    if name.endswith("bias"):
                        p.zero_()
        t_enc, t_dec = torch_layers_like(enc, dec, dtype)
        src, tgt = randn(2, 7, 12, seed=14, dtype=dtype), randn(2, 5, 12, seed=15, dtype=dtype)
        real = lengths_to_real([7, 4], 7)
        e_err = (enc(src, real[:, None, None, :]) - t_enc(src, src_key_padding_mask=~real)).abs().max().item()
        d_err = (dec(tgt, src, real) - t_dec(tgt, src, tgt_mask=~causal_mask(5, device=device),
                                             memory_key_padding_mask=~real)).abs().max().item()
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        print(f"{placement}-LN {str(dtype):13s} encoder layer max error < {tol:g}: {e_err < tol} | "
              f"decoder layer max error < {tol:g}: {d_err < tol}")

# %% [markdown] id="blocks-mistake-text"
# **Common mistake: normalising memory a second time.** In the Pre-LN decoder block, `norm2` is the
# decoder stream's norm. Applying it to `memory` as well runs without error but reads a differently
# scaled source (norm2 has its own $\gamma$), and no longer matches torch's layer or any trained model.

# %% id="blocks-mistake"
# NBVAL_CHECK_OUTPUT
c = ModelConfig(vocab_size=10, d_model=12, n_heads=3, d_ff=20)
dec = randomize(CrossDecoderBlock(c).double().to(device).eval(), seed=16)
tgt, src = randn(2, 5, 12, seed=17), randn(2, 7, 12, seed=18)


def self_sub(h, mask):
    return dec.self_attn(h, mask)[0]


def cross_sub(h, mem, mem_mask):
    return dec.cross_attn(h, None if mem_mask is None else mem_mask[:, None, None, :], source=mem)[0]


right = decoder_block(tgt, src, self_sub, cross_sub, dec.ffn, dec.norm1, dec.norm2, dec.norm3)
twice = decoder_block(tgt, dec.norm2(src), self_sub, cross_sub, dec.ffn, dec.norm1, dec.norm2, dec.norm3)  # WRONG
print("decoder_block equals CrossDecoderBlock:", torch.allclose(right, dec(tgt, src), atol=1e-12))
print("memory normalised twice, max difference from the right output:", round((twice - right).abs().max().item(), 3))

# %% [markdown] id="residual-mistake-text"
# **Common mistake: cross-attention without its residual.** Writing `x = cross_attn(norm2(x), memory)`
# instead of `x = x + cross_attn(...)` runs without an error, but it throws away the decoder stream:
# everything the target tokens carried (their embeddings and the self-attention's edit) is replaced
# by a weighted mix of the source's values. The target position survives only in *which* source
# tokens a query weights. With a one-token source there is nothing to choose from: every query puts
# weight 1 on that token, and every target position leaves the block with the same vector.

# %% id="residual-mistake"
# NBVAL_CHECK_OUTPUT
one_src = src[:, :1]  # (B, 1, d_model): a source of a single token
right = decoder_block(tgt, one_src, self_sub, cross_sub, dec.ffn, dec.norm1, dec.norm2, dec.norm3)  # (B, T_tgt, d)
h = tgt + self_sub(dec.norm1(tgt), causal_mask(5, device=device))  # (B, T_tgt, d_model): the first sublayer
h = cross_sub(dec.norm2(h), one_src, None)  # WRONG: no residual, the stream is replaced
no_residual = h + dec.ffn(dec.norm3(h))  # (B, T_tgt, d_model)
print("decoder_block with its residuals equals CrossDecoderBlock:", torch.allclose(right, dec(tgt, one_src), atol=1e-12))
for name, out in [("with the residual", right), ("without it", no_residual)]:
    distinct = len({tuple(show(row, 6)) for row in out[0]})
    print(f"{name}: distinct output vectors among the 5 target positions: {distinct}")

# %% [markdown] id="kinds"
# ## 6. Three kinds of model, with the shape at every arrow
#
# **Main idea.** The same config dataclass builds all three (`ModelConfig(kind=...)`). Below each
# model runs once on a small batch, and a forward hook prints the shape that leaves every stage:
#
# * **BERT-style** `TinyEncoder`: ids `(B, T)` → embeddings `(B, T, d)` → encoder blocks →
#   masked-LM logits `(B, T, V)`: one prediction per position, each made with both sides visible. It is
#   set up as BERT-base's shape scaled down: Post-LN (so no final norm: each block ends with one), a GELU
#   FFN of width $4d$ with biases, learned positions, the MLM head tied to the token table; BERT-base itself
#   is $d = 768$, 12 heads, 12 layers (its size is counted in `real-sizes` below).
# * **GPT-style** `TinyDecoder`: the same path with causal blocks; logits at position $t$ predict token $t+1$.
# * **encoder-decoder** `TinyEncoderDecoder`: source ids `(B, T_src)` → encoder → memory `(B, T_src, d)`;
#   target ids `(B, T_tgt)` → decoder blocks, each reading memory → logits `(B, T_tgt, V)`. It is the 2017
#   Transformer's layout (learned absolute positions here instead of its sinusoids, LayerNorm, a GELU MLP),
#   not T5: T5 has relative position buckets and RMSNorm without biases. The formula below is the
#   objective every encoder-decoder (the 2017 Transformer, T5, BART) trains.
#
# **Formulas: what each kind models.** With $\mathcal{M}$ the masked positions of a BERT input,
#
# $$
# \text{BERT: } \sum_{i \in \mathcal{M}} \log p(x_i \mid x_{\setminus \mathcal{M}}),\qquad
# \text{GPT: } \log p(x) = \sum_t \log p(x_t \mid x_{<t}),\qquad
# \text{encoder-decoder: } \log p(y \mid x) = \sum_t \log p(y_t \mid y_{<t}, x).
# $$

# %% id="kinds-shapes"
# NBVAL_CHECK_OUTPUT
def trace(model: nn.Module, *args) -> list[str]:
    """The shape entering each stack's first block (the embeddings) and leaving every block and final norm."""
    lines, handles = [], []
    for name, module in model.named_modules():
        parts = name.split(".")
        if len(parts) == 2 and parts[0] in ("blocks", "encoder", "decoder"):
            if parts[1] == "0":
                handles.append(module.register_forward_pre_hook(
                    lambda m, a, stack=parts[0]: lines.append(f"{stack} embeddings {tuple(a[0].shape)}")))
            handles.append(module.register_forward_hook(  # blocks may return (out, weights); a decoder block reads memory
                lambda m, a, out, name=name: lines.append(
                    f"{name} {tuple((out[0] if isinstance(out, tuple) else out).shape)}"
                    + (f" (reading memory {tuple(a[1].shape)})" if name.startswith("decoder") else ""))))
        elif name in ("final_norm", "encoder_norm", "decoder_norm"):
            handles.append(module.register_forward_hook(
                lambda m, a, out, name=name: lines.append(f"{name} {tuple(out.shape)}")))
    with torch.no_grad():
        logits = model(*args)
    for h in handles:
        h.remove()
    return lines + [f"logits {tuple(logits.shape)}"]


V, B, T, T_src, T_tgt = 50, 2, 6, 7, 5
gen = torch.Generator().manual_seed(19)
ids, src, tgt = (torch.randint(0, V, shape, generator=gen).to(device) for shape in [(B, T), (B, T_src), (B, T_tgt)])
base = dict(vocab_size=V, d_model=16, n_heads=4, n_layers=2, max_seq_len=16)
torch.manual_seed(0)
bert = TinyEncoder(ModelConfig(**base, kind="encoder", norm_placement="post", bias=True)).to(device)  # BERT-base, scaled down
gpt = TinyDecoder(ModelConfig(**base)).to(device)
enc_dec = TinyEncoderDecoder(ModelConfig(**base, kind="encoder-decoder")).to(device)
print("BERT-style: ids", (B, T), "->", " -> ".join(trace(bert, ids, [6, 4])))
print("GPT-style:  ids", (B, T), "->", " -> ".join(trace(gpt, ids)))
print("enc-dec:    src", (B, T_src), "tgt", (B, T_tgt), "->", " -> ".join(trace(enc_dec, src, tgt, [7, 3])))

# %% [markdown] id="kinds-mistake-text"
# **Common mistake: reading a bidirectional model's logits as next-token predictions.** A BERT-style
# encoder's prediction at position $t$ has already seen token $t+1$, so "predicting" it is copying.
# The two models below share the same weights; only the GPT-style one's logits at position 2 ignore
# token 3. (The other half of this mistake, comparing logits at $t$ with token $t$ instead of
# $t+1$, is chapter 08's shift by one.)

# %% id="kinds-mistake"
# NBVAL_CHECK_OUTPUT
torch.manual_seed(0)
bert_twin = TinyEncoder(ModelConfig(**base, kind="encoder")).to(device).eval()
gpt_twin = TinyDecoder(ModelConfig(**base)).to(device).eval()
gpt_twin.load_state_dict(bert_twin.state_dict())  # identical parameter names and shapes: the same weights
changed = ids.clone()
changed[:, 3] = (changed[:, 3] + 1) % V  # change token 3 only
with torch.no_grad():
    for name, model in [("BERT-style", bert_twin), ("GPT-style", gpt_twin)]:
        moved = not torch.allclose(model(ids)[:, 2], model(changed)[:, 2], atol=1e-6)
        print(f"{name}: the logits at position 2 move when token 3 changes: {moved}")

# %% [markdown] id="kinds-oracle-text"
# **Implementation check.** The whole encoder-decoder against `torch.nn.Transformer` with every
# weight copied: embeddings and positions by hand, then torch's 2 + 2 layers (and its final norms),
# then the tied head. The tests in `tests/test_block_variants.py` run the same comparison for both
# norm placements and both float widths.

# %% id="kinds-oracle"
# NBVAL_CHECK_OUTPUT
enc_dec = randomize(TinyEncoderDecoder(ModelConfig(**base, kind="encoder-decoder", d_ff=32)).double().to(device).eval(), 20)
with torch.no_grad():
    for name, p in enc_dec.named_parameters():
        if name.endswith("bias"):
            p.zero_()
with warnings.catch_warnings():  # torch notes that its nested-tensor fast path is off for norm_first
    warnings.simplefilter("ignore")
    transformer = nn.Transformer(16, 4, 2, 2, 32, dropout=0.0, activation="gelu", batch_first=True, norm_first=True,
                                 bias=False, dtype=torch.float64, device=device).eval()
for ours, theirs in zip(list(enc_dec.encoder) + list(enc_dec.decoder),
                        list(transformer.encoder.layers) + list(transformer.decoder.layers)):
    with torch.no_grad():
        for a, b in ([(ours.attn, theirs.self_attn)] if isinstance(ours, EncoderBlock) else
                     [(ours.self_attn, theirs.self_attn), (ours.cross_attn, theirs.multihead_attn)]):
            b.in_proj_weight.copy_(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]))
            b.out_proj.weight.copy_(a.o_proj.weight)
        theirs.linear1.weight.copy_(ours.ffn.fc1.weight)
        theirs.linear2.weight.copy_(ours.ffn.fc2.weight)
        for n in ("norm1", "norm2", "norm3"):
            if hasattr(ours, n):
                getattr(theirs, n).weight.copy_(getattr(ours, n).weight)
with torch.no_grad():
    transformer.encoder.norm.weight.copy_(enc_dec.encoder_norm.weight)
    transformer.decoder.norm.weight.copy_(enc_dec.decoder_norm.weight)
    real = lengths_to_real([7, 3], T_src)
    h = transformer(enc_dec.tok_emb(src) + enc_dec.src_pos_emb.weight[:T_src], enc_dec.tok_emb(tgt) + enc_dec.tgt_pos_emb.weight[:T_tgt],
                    tgt_mask=~causal_mask(T_tgt, device=device), src_key_padding_mask=~real, memory_key_padding_mask=~real)
    print("TinyEncoderDecoder equals nn.Transformer, max error < 1e-12:",
          (enc_dec(src, tgt, [7, 3]) - h @ enc_dec.tok_emb.weight.T).abs().max().item() < 1e-12)

# %% [markdown] id="cross-trained-text"
# **What cross-attention learns.** Every cross-attention weight so far came from random weights.
# To see what training puts there, the encoder-decoder above (1 layer per stack, $d_{\text{model}} = 32$,
# 2 heads, learned positions) learns to **reverse** a sequence of 8 random symbols:
# source `a b c d e f g h`, target `h g f e d c b a`, trained with teacher forcing (the decoder reads
# `BOS h g f e d c b`) for 600 AdamW steps of 64 sequences on the fast path
# (`helpers.reversal.reversal_experiment`, about 4 CPU-seconds). Target position $t$ must output
# source token $7 - t$, and the decoder's own input never contains it (it has read only the later
# source tokens), so the answer can only come through cross-attention, from a place fixed by
# position alone: query $t$ should read key $7 - t$, the **anti-diagonal** of the $(T_{\text{tgt}},
# T_{\text{src}})$ weights. Uniform attention puts $1/8 = 0.125$ there.
#
# The measures: token accuracy with teacher forcing and whole-sequence accuracy of greedy decoding
# (the decoder feeds itself, as at inference) on 512 held-out sequences, and the mean weight each
# head puts on the anti-diagonal, before and after training (read on the course path,
# `decode(..., return_weights=True)`).

# %% id="cross-trained"
reversal = reversal_experiment(seed=0)
shorter = reversal_experiment(seed=0, steps=300)  # the same run stopped at half the steps
for key in ("first_loss", "loss", "accuracy", "sequence_accuracy", "anti_diagonal_init", "anti_diagonal",
            "anti_diagonal_band", "chance", "cpu_seconds"):
    print(f"{key:>20}: {reversal[key]:.3f}")
print(f"after 300 steps instead: sequence accuracy {shorter['sequence_accuracy']:.3f}, anti-diagonal "
      f"{shorter['anti_diagonal']:.3f}, band {shorter['anti_diagonal_band']:.3f}")

# %% id="cross-trained-claims"
# NBVAL_CHECK_OUTPUT
print("held-out sequences reversed by greedy decoding, over 95 %:", reversal["sequence_accuracy"] > 0.95)
print("at initialization the best head's anti-diagonal weight is near uniform (< 1.5 / 8):",
      reversal["anti_diagonal_init"] < 1.5 * reversal["chance"])
print("trained, the best head puts over half its weight on the anti-diagonal (> 4 x uniform):",
      reversal["anti_diagonal"] > 4 * reversal["chance"])

# %% id="cross-trained-plot"
trained = reversal["model"]
torch.manual_seed(0)
untrained = TinyEncoderDecoder(trained.config).eval()  # the same seed: the trained model's starting point
src_r, tgt_in_r, _ = reversal_batch(256, 8, 10, torch.Generator().manual_seed(7))  # held-out sequences
fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
panels = [(untrained, 0, "random weights, head 0"), (trained, 0, "trained, head 0"), (trained, 1, "trained, head 1")]
for ax, (model, head, title) in zip(axes, panels):
    mean_map = cross_attention_maps(model, src_r, tgt_in_r)[-1, :, head].mean(0)  # (T_tgt, T_src): over 256 sequences
    image = ax.imshow(mean_map.numpy(), cmap="viridis", vmin=0, vmax=1)
    ax.set(xlabel="source position (key)", ylabel="target position (query)",
           title=f"{title}: anti-diagonal {anti_diagonal_mass(mean_map[None, None, None]).item():.2f}")
fig.colorbar(image, ax=axes, fraction=0.02)
fig.suptitle("Cross-attention weights of the decoder, mean over 256 held-out sequences: uniform at initialization, "
             "the anti-diagonal once trained to reverse", fontsize=10)
plt.show()

# %% [markdown] id="cross-trained-caption"
# *What to see:* at initialization every target position spreads its weight evenly over the 8 source
# positions (about 0.125 each); after training, target position 0 reads source position 7, position 1
# reads 6, and so on: the anti-diagonal. The band printed above (the weight within one position of
# the anti-diagonal) is higher than the anti-diagonal itself: the encoder's own self-attention can
# copy a token's identity into its neighbours, so a head that reads one place off still finds the
# symbol. Half the training leaves the pattern smeared in exactly this way (the 300-step line above:
# the same accuracy, far less weight on the anti-diagonal itself); longer training sharpens it.
# Attention-based translation shows the same kind of picture for real languages (Bahdanau et al.,
# 2015, plot the alignment of English and French words), where the alignment follows word order,
# mostly the diagonal, instead of reversing it.

# %% [markdown] id="kinds-params-text"
# **What each kind costs.** `model_param_count` covers every variant. With the same width and depth
# per stack, an encoder-only model costs about what a decoder-only one does (the blocks are the
# same, only the mask differs); an encoder-decoder has two stacks and a cross-attention per decoder
# layer: about $2\times$ the blocks, plus $4d^2$ per decoder layer.
#
# The sizes below are the 2017 Transformer's *base* model ($d = 512$, 8 heads, $d_{ff} = 2048$, 6 + 6
# layers). The paper reports 65M parameters for it (Vaswani et al., 2017, Table 3). The same counter
# with the paper's choices (a shared vocabulary of about 37 000 tokens, sinusoidal positions, biases
# in every linear layer, the embeddings tied to the output layer) gives about 63M; the course's
# variant (32 000 tokens, learned positions, no biases) about 61M. The paper does not break its 65M
# down, and gives its vocabulary only as "about 37 000" tokens; each 1000 tokens more are $512\,000$
# parameters more.

# %% id="kinds-params"
# NBVAL_CHECK_OUTPUT
size = dict(vocab_size=32000, d_model=512, n_heads=8, d_ff=2048, n_layers=6, max_seq_len=512)
for kind in ("encoder", "decoder", "encoder-decoder"):
    n = model_param_count(ModelConfig(**size, kind=kind))
    print(f"{kind:16s} {n:>12,d} parameters")
per_decoder_layer = 2 * 4 * 512 * 512 + 2 * 512 * 2048 + 3 * 2 * 512
print("one decoder layer of the encoder-decoder:", f"{per_decoder_layer:,d}", "(self + cross attention, FFN, 3 LayerNorms)")
paper = ModelConfig(**{**size, "vocab_size": 37000}, kind="encoder-decoder", positions="sinusoidal", bias=True)
print(f"Transformer-base as in the paper: {model_param_count(paper) / 1e6:.1f}M (the paper reports 65M) | "
      f"as above: {model_param_count(ModelConfig(**size, kind='encoder-decoder')) / 1e6:.1f}M")

# %% [markdown] id="real-sizes-text"
# **Real models, counted with the same counter.** The published sizes of the models this chapter
# names, recounted with `model_param_count` from their configurations (the sizes each paper or its
# released code gives: vocabulary, $d_{\text{model}}$, heads, $d_{ff}$, layers, norm placement, FFN
# biases). Our model kinds leave a few tensors out (attention biases, and each model's own extras);
# the cell adds each missing part by name, computed from the chapter's counters
# (`attention_param_count(..., bias=True)` minus the bias-free count, `_norm` sizes $2d$), so the
# total is the real architecture's. Published figures are those of the papers:
#
# | model | kind | published | what our model kind lacks |
# |---|---|---|---|
# | BERT-base (Devlin et al., 2019) | encoder, Post-LN | 110M | attention biases, 2 token-type (segment) rows, a LayerNorm on the embeddings, the pooler ($d \times d + d$) |
# | BERT-large | encoder, Post-LN | 340M | the same |
# | T5-base (Raffel et al., 2020) | encoder-decoder, Pre-LN, RMSNorm, no biases | 220M | one relative-position bias table per stack (32 buckets $\times$ 12 heads), no position table at all |
# | BART-base (Lewis et al., 2020; fairseq's release) | encoder-decoder, Post-LN | 140M | attention biases, a LayerNorm on each stack's embeddings, position tables of 1026 rows |
# | Whisper base (Radford et al., 2022) | encoder-decoder, Pre-LN | 74M | attention biases (none on $W_K$), two convolutions that read 80 mel channels, sinusoidal (parameter-free) audio positions, 448 learned text positions |
#
# The encoder-decoders share one token table between encoder, decoder and output (T5 and BART);
# Whisper's encoder reads audio, so its one table is the decoder's, tied to the output.

# %% id="real-sizes"
# NBVAL_CHECK_OUTPUT
def attention_biases(d: int, heads: int, n_attn: int) -> int:
    """Biases of n_attn attention layers: the counter with bias=True minus the bias-free count."""
    return n_attn * (attention_param_count(d, heads, bias=True) - attention_param_count(d, heads))


def bert(V, d, H, d_ff, L):
    cfg = ModelConfig(vocab_size=V, d_model=d, n_heads=H, d_ff=d_ff, n_layers=L, max_seq_len=512, kind="encoder",
                      norm_placement="post", bias=True)  # Post-LN, GELU FFN with biases, learned positions, tied head
    extras = {"attention biases": attention_biases(d, H, L), "token-type rows": 2 * d,
              "embedding LayerNorm": 2 * d, "pooler": d * d + d}
    return cfg, extras


def t5(V, d, H, d_ff, L):
    cfg = ModelConfig(vocab_size=V, d_model=d, n_heads=H, d_ff=d_ff, n_layers=L, kind="encoder-decoder",
                      positions="none", norm="rmsnorm", bias=False)  # Pre-LN RMSNorm, no biases, shared table
    return cfg, {"relative bias, 32 buckets x heads, per stack": 2 * 32 * H}


def bart(V, d, H, d_ff, L):
    cfg = ModelConfig(vocab_size=V, d_model=d, n_heads=H, d_ff=d_ff, n_layers=L, max_seq_len=1026,
                      kind="encoder-decoder", norm_placement="post", bias=True)
    return cfg, {"attention biases": attention_biases(d, H, 3 * L), "embedding LayerNorms": 2 * 2 * d}


def whisper(V, d, H, d_ff, L):
    cfg = ModelConfig(vocab_size=V, d_model=d, n_heads=H, d_ff=d_ff, n_layers=L, kind="encoder-decoder",
                      positions="none", bias=True)  # Pre-LN; positions added below
    convs = (80 * d * 3 + d) + (d * d * 3 + d)  # two kernel-3 convolutions: 80 mel channels -> d -> d
    return cfg, {"attention biases (q, v, out)": 3 * L * 3 * d, "audio stem (2 convolutions)": convs,
                 "448 learned text positions": 448 * d}


published = [("BERT-base", bert(30522, 768, 12, 3072, 12), 110), ("BERT-large", bert(30522, 1024, 16, 4096, 24), 340),
             ("T5-base", t5(32128, 768, 12, 3072, 12), 220), ("BART-base", bart(50265, 768, 12, 3072, 6), 140),
             ("Whisper base", whisper(51865, 512, 8, 2048, 6), 74), ("Whisper tiny", whisper(51865, 384, 6, 1536, 4), 39)]
print(f"{'model':>12} | {'model_param_count':>17} | {'+ parts it lacks':>16} | {'total':>13} | published")
for name, (cfg, extras), paper in published:
    ours = model_param_count(cfg)
    total = ours + sum(extras.values())
    print(f"{name:>12} | {ours:>17,d} | {sum(extras.values()):>16,d} | {total:>13,d} | {paper}M "
          f"({100 * (total / 1e6 - paper) / paper:+.1f} %)")
cfg, extras = bert(30522, 768, 12, 3072, 12)
print("BERT-base's missing parts:", {k: f"{v:,d}" for k, v in extras.items()})
blocks_share = 12 * (model_param_count(replace(cfg, n_layers=1)) - model_param_count(replace(cfg, n_layers=0)))
print(f"BERT-base: token and position tables {model_param_count(replace(cfg, n_layers=0)):,d}, "
      f"12 layers {blocks_share:,d} ({100 * blocks_share / model_param_count(cfg):.0f} % of the counter's total)")

# %% [markdown] id="real-sizes-read"
# **Reading the table.** BERT, T5 and BART come out within 1.5 % of their papers' figures (which are
# rounded: BERT's 110M and 340M, T5's 220M and BART's 140M), and the only parts our model kinds lack are
# small: biases, a second embedding table of 2 rows, a pooler. T5's gap to our counter is exactly its
# relative position biases, 384 numbers per stack: T5 has no position table, which is why the counter
# with `positions="none"` comes within 768 parameters of it. BART-base spends more than a quarter of
# its 140M on its 50 265-token table, which BART shares between encoder, decoder and output; untied,
# its output layer alone would add 38.6M. Whisper's paper rounds up: the tensors of the released
# architecture add up to about 72M for *base* and 37M for *tiny*, about 3–5 % under the 74M and 39M
# its table gives; the sizes are right in order and proportion, and we do not know which extra
# parameters, if any, the paper's figures include.

# %% [markdown] id="kinds-llama-text"
# **A modern decoder-only model: Llama's block as one unit.** The GPT-style model above is GPT-2's
# recipe. Llama (Touvron et al., 2023) keeps the decoder-only layout and the Pre-LN block and swaps
# four parts, each built in its own chapter: RMSNorm for LayerNorm (chapter 04), a SwiGLU FFN of width
# $\tfrac83 d$ rounded up to a multiple of 256 (chapter 03), RoPE on $q$ and $k$ instead of a position
# table (chapter 06), and, from Llama-2 70B on, grouped-query attention (chapter 02); the LM head is
# not tied to the embeddings. `helpers.llama.llama_config` is that combination as a `ModelConfig`: the
# same `TinyDecoder`, no second model. Its parameter count is
#
# $$
# N = \underbrace{2 V d}_{\text{embeddings, head}} + L\,\big(\underbrace{2 d^2 + 2 d\, H_{kv} d_{\text{head}}}_{W_Q, W_O;\ W_K, W_V}
#   + \underbrace{3 d\, d_{\text{ff}}}_{\text{gate, up, down}} + \underbrace{2d}_{\text{2 RMSNorms}}\big) + \underbrace{d}_{\text{final RMSNorm}} .
# $$
#
# Below, a small one runs with the shape at every arrow, and then the model is built at Llama-2-7B's
# published size ($L = 32$, $d = 4096$, 32 heads, $d_{\text{ff}} = 11008$, $V = 32000$) on PyTorch's
# `meta` device, which records shapes and allocates nothing (27 GB in float32 otherwise): the
# tensors it holds, the course's counter and the formula above all give 6,738,415,616, the size of
# the released checkpoint that Meta rounds to "7B". `tests/test_llama.py` builds a small model from
# `llama_config`, copies every weight into Hugging Face's `LlamaForCausalLM` and gets the same logits,
# so the whole block, not only its parts, is Llama's. (One difference is a setting: the course's
# RMSNorm has $\epsilon = 10^{-6}$, Llama-1's value; Llama 2 uses $10^{-5}$.)

# %% id="kinds-llama"
# NBVAL_CHECK_OUTPUT
torch.manual_seed(0)
llama_small = TinyDecoder(llama_config(vocab_size=V, d_model=16, n_heads=4, n_kv_heads=2, n_layers=2,
                                       multiple_of=8)).to(device).eval()
block = llama_small.blocks[0]
print("one block:", type(block.norm1).__name__, "->", f"attention ({block.attn.n_heads} query heads, "
      f"{block.attn.n_kv_heads} key/value heads, RoPE)", "->", type(block.norm2).__name__, "->",
      type(block.ffn).__name__, f"(d_ff = {llama_small.config.ffn_width})")
print("Llama-style: ids", (B, T), "->", " -> ".join(trace(llama_small, ids)))
config_7b = llama_config(**LLAMA2_7B)
with torch.device("meta"):  # shapes only: no memory is allocated
    llama_7b = TinyDecoder(config_7b)
held = sum(p.numel() for p in llama_7b.parameters())
formula = llama_param_count(32000, 4096, 32, 32, 11008)
print(f"Llama-2-7B on the meta device: {held:,d} parameters | model_param_count: {model_param_count(config_7b):,d} "
      f"| formula: {formula:,d}")
per_block = sum(p.numel() for p in llama_7b.blocks[0].parameters())
print(f"per block: {per_block:,d} (x 32 = {32 * per_block:,d}) | embeddings + untied head: {2 * 32000 * 4096:,d} "
      f"| final norm: {4096}")

# %% [markdown] id="variants"
# ## 7. Two block variants: the parallel block and the MoE FFN
#
# **The parallel block** (GPT-J, PaLM) feeds attention and the FFN *the same* normalised input and
# adds both edits at once:
#
# $$
# \text{sequential: } x \leftarrow x + \mathrm{attn}(\mathrm{norm}_1(x));\ x \leftarrow x + \mathrm{ffn}(\mathrm{norm}_2(x))
# \qquad\text{parallel: } x \leftarrow x + \mathrm{attn}(\mathrm{norm}(x)) + \mathrm{ffn}(\mathrm{norm}(x)).
# $$
#
# **What it saves.** Not FLOPs: both sublayers still run on every token. It saves one norm per layer
# (parameters: $2d$ with LayerNorm), and above all *time*: the FFN no longer waits for attention, so the
# input projections $W_Q, W_K, W_V$ and $W_1$ read the same $h$ and can be **fused into one matmul**
# (PaLM reports about 15 % faster training at large scale, with a small quality cost at small scale).
# The cell checks the fusion: one matmul with the four weight matrices stacked equals the four
# separate products.

# %% id="parallel"
# NBVAL_CHECK_OUTPUT
seq_cfg = ModelConfig(vocab_size=50, d_model=16, n_heads=4, d_ff=64)
par_cfg = ModelConfig(vocab_size=50, d_model=16, n_heads=4, d_ff=64, block="parallel")
print("parameters, sequential:", model_param_count(seq_cfg), "| parallel:", model_param_count(par_cfg),
      "| saved:", model_param_count(seq_cfg) - model_param_count(par_cfg), "= n_layers x 2 d_model")
block = randomize(DecoderBlock(par_cfg).double().to(device), seed=21)
x = randn(2, 6, 16, seed=22)
h = block.norm1(x)  # (B, T, d_model): computed once, read by both sublayers
a = block.attn
fused = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight, block.ffn.fc1.weight])  # (3 d + d_ff, d)
q, k, v, up = (h @ fused.T).split([16, 16, 16, 64], dim=-1)  # one matmul, then four slices
print("fused projection equals the four separate ones:",
      all(torch.allclose(t, h @ w.T, atol=1e-12) for t, w in
          [(q, a.q_proj.weight), (k, a.k_proj.weight), (v, a.v_proj.weight), (up, block.ffn.fc1.weight)]))
print("block output = x + attn(norm(x)) + ffn(norm(x)):",
      torch.allclose(block(x), x + a(h, causal_mask(6, device=device))[0] + block.ffn(h), atol=1e-12))

# %% [markdown] id="moe"
# **The MoE FFN** of chapter 03 plugs in as `ffn="moe"`: each layer's FFN becomes `n_experts` SwiGLU
# experts of which the router picks `top_k` per token. Its auxiliary load-balancing loss,
# Switch Transformer's $n_{\text{experts}} \sum_i f_i P_i$ ($f_i$ the share of the token choices that
# went to expert $i$, $P_i$ the router's mean probability for it), is kept by every MoE layer after a
# forward pass and summed by `moe_balance_loss(model)`, ready to be added to the training loss with a
# small coefficient.
#
# **Its range.** It is 1 when the load is balanced. Its maximum depends on `top_k`: each token makes
# `top_k` different choices, so no expert can receive more than $1/k$ of them ($f_i \le 1/k$), and
# since the $P_i$ sum to 1, $\sum_i f_i P_i \le \max_i f_i \le 1/k$. The loss is therefore at most
# $n_{\text{experts}}/k$: $n_{\text{experts}}$ only for Switch's top-1 routing, and 2 per layer for
# the 4 experts and top-2 routing here, reached when a collapsed router sends every token to the same
# two experts with all its probability on them. The cell computes both collapses with
# `load_balancing_loss` (the function each MoE layer calls).

# %% id="moe-model"
# NBVAL_CHECK_OUTPUT
moe_cfg = ModelConfig(vocab_size=50, d_model=16, n_heads=4, d_ff=32, n_layers=2, ffn="moe", n_experts=4, top_k=2)
torch.manual_seed(0)
moe_model = TinyDecoder(moe_cfg).to(device)
logits = moe_model(ids)
print("logits:", tuple(logits.shape), "| balance loss over 2 layers:", round(moe_balance_loss(moe_model).item(), 3),
      "(2.0 = perfectly balanced, 4.0 the most a top-2 router over 4 experts can reach)")
router_logits = randn(12, 4, seed=23)  # (N, n_experts): a router's logits for 12 tokens
for k, favoured in [(2, [30.0, 30.0, 0.0, 0.0]), (1, [30.0, 0.0, 0.0, 0.0])]:
    collapsed = router_logits + torch.tensor(favoured, dtype=torch.float64, device=device)  # (N, n_experts)
    _, chosen = top_k_route(collapsed, k)  # (N, k): the same expert(s) for every token
    print(f"collapsed router, top_k = {k}: every token goes to experts {sorted(set(chosen.flatten().tolist()))}, "
          f"loss {load_balancing_loss(collapsed, chosen).item():.3f} (n_experts / top_k = {4 / k:.0f})")
dense_cfg = ModelConfig(vocab_size=50, d_model=16, n_heads=4, d_ff=32, n_layers=2, ffn="swiglu")
print("parameters, SwiGLU:", model_param_count(dense_cfg), "| MoE with 4 experts:", model_param_count(moe_cfg))

# %% [markdown] id="why-decoder"
# ## 8. Why decoder-only won for LLMs, and the caveats
#
# **The argument.** Since GPT-3, nearly every large language model is decoder-only. Three reasons
# carry most of the weight:
#
# 1. **One stack, one objective, every token.** Next-token prediction turns *any* text into training
#    signal at *every* position: a length-$T$ sequence gives $T$ predictions. BERT's masked-LM loss is
#    computed on the 15 % of positions it masks, and span corruption (T5) on the corrupted spans.
# 2. **Generation is the native task.** The training objective is exactly how the model is used:
#    prompt in, continuation out. A task is a prompt; no task-specific head or fine-tuning is needed
#    to start (in-context learning).
# 3. **The KV cache.** With the causal mask, earlier positions never change (section 2), so the keys
#    and values of the prompt are computed once and each new token costs one position's work. A
#    bidirectional model would have to recompute everything after each token.
#
# **The honest caveats.**
#
# * For **understanding** tasks at a fixed, small size (classification, retrieval embeddings),
#   bidirectional encoders remain strong and cheap, and BERT-sized encoders are still widely used
#   where cost matters. Even here decoders have moved in: the top of the embedding benchmarks (MTEB)
#   is now held by models built from decoder-only LLMs (NV-Embed from Mistral-7B, Qwen3-Embedding
#   from Qwen3), some of which switch the causal mask off while they are fine-tuned into encoders.
# * **Encoder-decoders** do well when input and output are different in kind or length (translation,
#   speech recognition: Whisper), and the encoder's bidirectional pass over a long input is cheaper
#   than putting the input through every decoder step. T5-style models were competitive with
#   decoders in controlled comparisons: in the T5 paper's study of architectures and objectives, an
#   encoder-decoder trained with a denoising objective did best among the variants tried.
# * Part of the win is **engineering and scale**, not architecture alone: one stack is simpler to
#   shard, cache and serve, and the field's tooling converged on it. Prefix-LM masks (section 4) show
#   that the line between the kinds is only a mask.

# %% [markdown] id="common-mistakes"
# ## 9. Common mistakes
#
# | mistake | symptom you can print | the fix |
# |---|---|---|
# | padding on the query axis | a real token attends to a padded key (§1) | block key columns: `real[:, None, :]` |
# | decoder self-attention left bidirectional | an earlier output moves when a later token changes (§2) | the causal mask |
# | keys/values of cross-attention from the decoder stream | the output does not depend on the source (§3) | `K, V` from `memory` |
# | a causal mask on cross-attention | target token 0 reads only source token 0 (§3) | only source padding is masked |
# | prefix-LM causal inside the prefix | the mask equals the causal one (§4) | `(j <= i) \| (j < prefix)` |
# | memory normalised twice | differs from torch's layer (§5) | `cross_attn(norm2(x), memory)` |
# | cross-attention sublayer without its residual | the decoder stream is replaced by a mix of source values: with a one-token source every target position comes out the same (§5) | `x = x + cross_attn(...)` |
# | a course mask passed to `nn.MultiheadAttention` or an `nn.Transformer*` layer as it is | everything allowed is blocked and the rest allowed (below) | those layers read a bool mask as True = blocked: pass `~mask` |
# | `~mask` passed to `F.scaled_dot_product_attention` | the same inversion (below) | it reads True = may attend, like the course: pass `mask` |
#
# **The two conventions of torch's boolean masks, side by side.** `F.scaled_dot_product_attention`
# reads `True` as *may attend*, as every mask of this course does (chapter 07's `mask-compare` passes
# such a mask). `nn.MultiheadAttention` (`attn_mask`, `key_padding_mask`) and the `nn.Transformer*`
# layers built on it (`src_mask`, `tgt_mask`, `*_key_padding_mask`) read `True` as *blocked*. The cell
# runs one causal mask through both, each checked against the course's attention.

# %% id="mask-conventions"
# NBVAL_CHECK_OUTPUT
T_c, d_c = 5, 8
q_c, k_c, v_c = randn(1, 1, T_c, d_c, seed=24), randn(1, 1, T_c, d_c, seed=25), randn(1, 1, T_c, d_c, seed=26)
allowed = causal_mask(T_c, device=device)  # (T, T) bool, True = may attend (the course's convention)
ours, _ = scaled_dot_product_attention(q_c, k_c, v_c, allowed)  # (1, 1, T, d)
print("F.scaled_dot_product_attention(attn_mask=mask) equals the course's attention:",
      torch.allclose(F.scaled_dot_product_attention(q_c, k_c, v_c, attn_mask=allowed), ours, atol=1e-12))
print("F.scaled_dot_product_attention(attn_mask=~mask) equals it:",
      torch.allclose(F.scaled_dot_product_attention(q_c, k_c, v_c, attn_mask=~allowed).nan_to_num(), ours, atol=1e-12))
x_c = randn(1, T_c, d_c, seed=27)  # (B, T, d_model)
mha_c = nn.MultiheadAttention(d_c, 1, bias=False, batch_first=True, dtype=torch.float64).to(device)
w_in = torch.cat([mha_c.in_proj_weight[i * d_c:(i + 1) * d_c] for i in range(3)])  # (3 d, d): W_Q, W_K, W_V
with torch.no_grad():
    q_m, k_m, v_m = (x_c @ w.T for w in w_in.split(d_c))  # (B, T, d) each
    ours_m = scaled_dot_product_attention(q_m, k_m, v_m, allowed)[0] @ mha_c.out_proj.weight.T  # (B, T, d)
    for name, mask in [("~mask", ~allowed), ("mask", allowed)]:
        theirs_m = mha_c(x_c, x_c, x_c, attn_mask=mask, need_weights=False)[0].nan_to_num()
        print(f"nn.MultiheadAttention(attn_mask={name}) equals the course's attention:",
              torch.allclose(theirs_m, ours_m, atol=1e-12))

# %% [markdown] id="self-check"
# ## Self-check
#
# **Q1.** Which of the three kinds can use a KV cache when generating, and why?
#
# <details><summary>Answer</summary>
#
# Decoder-only, and the decoder of an encoder-decoder: with a causal mask the keys and values of
# earlier positions never change when a token is appended. (The encoder's memory is computed once
# anyway, so the decoder's cross-attention keys and values can be cached too.)
#
# </details>
#
# **Q2.** A mask has shape `(5, 8)` and every row is `[1, 1, 1, 1, 1, 1, 0, 0]`. What is it?
#
# <details><summary>Answer</summary>
#
# A cross mask: 5 target queries, 8 source keys of which the last 2 are padding.
#
# </details>
#
# **Q3.** In a prefix LM with prefix 3, which keys does query 1 see? Query 4?
#
# <details><summary>Answer</summary>
#
# Query 1: keys 0, 1, 2 (the whole prefix). Query 4: keys 0–4.
#
# </details>
#
# **Q4.** Where do the queries, keys and values of cross-attention come from, and what are the
# shapes of its weights?
#
# <details><summary>Answer</summary>
#
# Queries from the decoder stream, keys and values from the encoder's output; weights
# `(B, H, T_tgt, T_src)`.
#
# </details>
#
# **Q5.** Why does permuting the memory tokens not change a cross-attention output?
#
# <details><summary>Answer</summary>
#
# Attention is a weighted sum over keys; permuting keys and values together permutes the terms of
# the sum. Order information must be added to the tokens before the encoder (chapter 06).
#
# </details>
#
# **Q6.** How many residual sublayers and norms does one decoder layer of T5 have? And of GPT?
#
# <details><summary>Answer</summary>
#
# T5's decoder: three (self-attention, cross-attention, FFN) with three norms. GPT: two, with two norms.
#
# </details>
#
# **Q7.** The encoder-decoder of `cross-trained` reverses 8 symbols. Why must its cross-attention
# look like the anti-diagonal, and how can a head read one position off and still be right?
#
# <details><summary>Answer</summary>
#
# Target position $t$ must output source token $7 - t$, which the decoder's own input has not
# contained: it can only be read from memory, at a place fixed by position, key $7 - t$. But the
# encoder's self-attention can copy a token's identity into the vectors of its neighbours, so the
# memory vector at position $6 - t$ or $8 - t$ may also carry it; the band printed beside the
# anti-diagonal measures that.
#
# </details>

# %% [markdown] id="evidence-card"
# ## Evidence card
#
# | you can show | where |
# |---|---|
# | padding blocks key columns; on the query axis it leaks | §1, `encoder-example`, `encoder-mistake` |
# | an encoder output moves when a later token changes, a decoder output never does | §2, `influence`, `influence-plot`, `decoder-cache` |
# | cross-attention equals `nn.MultiheadAttention(x, memory, memory)`, ignores memory order and padding | §3, `cross-check` |
# | the catalogued cross-attention mistakes by their symptoms | §3, `cross-mistake` |
# | the four masks drawn with padding, named by `classify_mask`, broken masks refused | §4, `mask-family`, `classifier` |
# | encoder and decoder blocks equal torch's layers, both norm placements, float32 and float64 | §5, `blocks-vs-torch` |
# | cross-attention without its residual erases the decoder stream | §5, `residual-mistake` |
# | BERT-style, GPT-style and encoder-decoder data flow with shapes; the encoder-decoder equals `nn.Transformer`; Transformer-base's size against the paper's 65M | §6, `kinds-shapes`, `kinds-oracle`, `kinds-params` |
# | a trained encoder-decoder reverses sequences, and its cross-attention learned the anti-diagonal (uniform at initialization) | §6, `cross-trained`, `cross-trained-claims`, `cross-trained-plot` |
# | BERT-base/large, T5-base, BART-base and Whisper's sizes from the same counter, against their papers | §6, `real-sizes` |
# | the parallel block saves a norm and fuses the input projections; MoE's balance loss reaches the model, at most $n_{\text{experts}}/k$ | §7, `parallel`, `moe-model` |
# | torch's two boolean-mask conventions, each checked | §9, `mask-conventions` |

# %% [markdown] id="next"
# ## Next: the exercises
#
# Open [`exercises/05_blocks/05_blocks.ipynb`](../exercises/05_blocks/05_blocks.ipynb). You will write
# cross-attention from its weights, assemble the decoder block with cross-attention, name and build
# the masks of each model kind, write the prefix-LM mask, and count an encoder-decoder's parameters.
