# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] id="intro"
# # Chapter 05 exercises: encoder, decoder, encoder-decoder, and which mask goes where
#
# You will write cross-attention from its weights, assemble the decoder block of an encoder-decoder
# from given sublayers, name masks and build the ones each kind of model needs, write the prefix-LM
# mask, and count the parameters of an encoder-decoder:
#
# | # | exercise |
# |---|---|
# | 1 | `cross_attention(x, memory, w_q, w_k, w_v, w_o, n_heads, n_kv_heads, memory_mask)` |
# | 2 | `decoder_block(x, memory, self_attn, cross_attn, ffn, norm1, norm2, norm3, memory_mask)` |
# | 3 | identify encoder-only, decoder-only and encoder-decoder masks: name six masks, then `model_masks(...)` |
# | 4 | `prefix_lm_mask(prefix_lengths, lengths, T)` |
# | 5 | counting: the parameters of an encoder-decoder |
#
# **How it works.** Write your answer in the cell marked `# YOUR CODE HERE` (delete the
# `raise NotImplementedError()` line), run it, then run the test cell below it. A visible test
# prints a line starting with ✓ when your answer is right; otherwise it stops with one sentence
# saying what is wrong. After each visible test sits a hidden test: it runs when the notebook is
# graded, with other shapes, seeds, lengths and `float64` inputs, so make your functions general
# rather than fitted to the visible test.
#
# **Conventions** (the same in every chapter): tensors are `torch`; shapes are written `B` batch,
# `T_tgt` target (decoder) tokens, `T_src` source (encoder) tokens, `H` heads, `H_kv` key/value
# heads, `d_model`, `d_head = d_model / H`. Weights follow `torch.nn.Linear`: `(out_features,
# in_features)`, a projection is `x @ W.T`. Boolean masks mean **True = may attend**, False =
# blocked, and broadcast against the scores `(B, H, T_q, T_k)`. Padding blocks **keys** (columns):
# a padded token is never attended to. `memory_mask` is a key-padding mask of shape `(B, T_src)`,
# True where the source token is real.
#
# You may use the earlier chapters' helpers: `helpers.attention.scaled_dot_product_attention`,
# `causal_mask`, `padding_mask`, and `helpers.heads.split_heads`, `merge_heads`, `repeat_kv`.
# Calling this chapter's reference (`helpers.blocks`, or the mask builders `bidirectional_mask`,
# `causal_padding_mask`, `prefix_lm_mask`, `cross_mask`, `model_masks`, `classify_mask` in
# `helpers.attention`), or torch's `nn.MultiheadAttention` and transformer layers, is refused by the
# checks and scores no points. Run the next cell first.

# %% id="setup"
import torch

import helpers
import helpers.checks.blocks  # load the checks before any answer runs
from helpers.attention import causal_mask, scaled_dot_product_attention
from helpers.heads import merge_heads, repeat_kv, split_heads

helpers.seed_everything(0)
torch.set_printoptions(precision=4, sci_mode=False)

# %% [markdown] id="ex1"
# ## Exercise 1: cross-attention from its weights
#
# *Difficulty* ●●○○○ · *Importance* ●●●●● · *Time* ~20 min · *Points*
#
# In an encoder-decoder (the 2017 Transformer, T5), each decoder block reads the source sentence
# through **cross-attention**: the **queries** come from the decoder stream `x`, the **keys and
# values** from the encoder's output `memory`:
#
# $$
# Q = x W_Q^\top,\quad K = \mathrm{memory}\, W_K^\top,\quad V = \mathrm{memory}\, W_V^\top,\qquad
# \mathrm{out} = \mathrm{concat}_h\!\Big(\mathrm{softmax}\big(\tfrac{Q_h K_{g(h)}^\top}{\sqrt{d_{\text{head}}}}\big) V_{g(h)}\Big) W_O^\top
# $$
#
# Write `cross_attention(x, memory, w_q, w_k, w_v, w_o, n_heads, n_kv_heads=None, memory_mask=None)`
# returning `(out, weights)`:
#
# | argument | shape |
# |---|---|
# | `x` | `(B, T_tgt, d_model)`: the decoder stream, source of the queries |
# | `memory` | `(B, T_src, d_model)`: the encoder's output, source of keys and values |
# | `w_q`, `w_o` | `(d_model, d_model)` |
# | `w_k`, `w_v` | `(n_kv_heads * d_head, d_model)`; `n_kv_heads=None` means `n_heads` |
# | `memory_mask` | `(B, T_src)` bool, True = real source token, or `None` |
# | returns | `out (B, T_tgt, d_model)`, `weights (B, H, T_tgt, T_src)` |
#
# With fewer key/value heads (grouped-query attention, chapter 02), query head `h` reads key/value
# head `h // (n_heads / n_kv_heads)`. There is **no causal mask** here: the source is complete
# before decoding starts. The first visible case has `T_src = T_tgt`, so that a mask on the wrong
# axis still runs and can be named.
#
# <details><summary>Hint: which tensors go where</summary>
#
# `q = split_heads(x @ w_q.T, n_heads)`, `k = split_heads(memory @ w_k.T, n_kv_heads)` (and `v`
# likewise), then `repeat_kv(k, n_heads // n_kv_heads)`. chapter 01's
# `scaled_dot_product_attention(q, k, v, mask)` takes a mask that broadcasts to `(B, H, T_tgt, T_src)`.
# </details>
#
# <details><summary>Hint: the test says the padding mask blocks queries</summary>
#
# `memory_mask` has one flag per **source** token, and source tokens are the keys, the last axis of
# the scores `(B, H, T_tgt, T_src)`: `memory_mask[:, None, None, :]` has shape `(B, 1, 1, T_src)`.
# </details>

# %% id="ex1-answer" kind="answer"
def cross_attention(x, memory, w_q, w_k, w_v, w_o, n_heads, n_kv_heads=None, memory_mask=None):
    ### BEGIN SOLUTION
    n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
    q = split_heads(x @ w_q.T, n_heads)  # (B, H, T_tgt, d_head)
    k = repeat_kv(split_heads(memory @ w_k.T, n_kv_heads), n_heads // n_kv_heads)  # (B, H, T_src, d_head)
    v = repeat_kv(split_heads(memory @ w_v.T, n_kv_heads), n_heads // n_kv_heads)  # (B, H, T_src, d_head)
    mask = None if memory_mask is None else memory_mask[:, None, None, :]  # (B, 1, 1, T_src)
    heads, weights = scaled_dot_product_attention(q, k, v, mask)  # (B, H, T_tgt, d_head), (B, H, T_tgt, T_src)
    return merge_heads(heads) @ w_o.T, weights  # (B, T_tgt, d_model)
    ### END SOLUTION


# %% id="ex1-test" kind="test" points=2
from helpers.checks.blocks import check_cross_attention

check_cross_attention(cross_attention)

# %% id="ex1-hidden" kind="test" points=2
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_cross_attention(cross_attention, seed=5, dtype=torch.float64, B=3, T_tgt=4, T_src=9, d_model=16,
                      n_heads=4, n_kv_heads=2)
check_cross_attention(cross_attention, seed=9, dtype=torch.float32, B=1, T_tgt=6, T_src=3, d_model=6,
                      n_heads=3, n_kv_heads=3)
### END HIDDEN TESTS

# %% [markdown] id="ex2"
# ## Exercise 2: the decoder block with cross-attention
#
# *Difficulty* ●●○○○ · *Importance* ●●●●● · *Time* ~15 min · *Points*
#
# The decoder block of an encoder-decoder has **three** residual sublayers. Write its Pre-LN form
# (T5, `nn.TransformerDecoderLayer(norm_first=True)`):
#
# $$
# x \leftarrow x + \mathrm{self\_attn}(\mathrm{norm}_1(x),\ \text{causal}),\quad
# x \leftarrow x + \mathrm{cross\_attn}(\mathrm{norm}_2(x),\ \mathrm{memory},\ \mathrm{memory\_mask}),\quad
# x \leftarrow x + \mathrm{ffn}(\mathrm{norm}_3(x))
# $$
#
# `decoder_block(x, memory, self_attn, cross_attn, ffn, norm1, norm2, norm3, memory_mask=None)`
# receives every sublayer ready-made:
#
# | argument | call | returns |
# |---|---|---|
# | `self_attn` | `self_attn(h, mask)`, `mask` a `(T_tgt, T_tgt)` bool mask (True = may attend) or `None` | `(B, T_tgt, d_model)` |
# | `cross_attn` | `cross_attn(h, memory, memory_mask)` | `(B, T_tgt, d_model)` |
# | `ffn`, `norm1`, `norm2`, `norm3` | `f(h)` | same shape as `h` |
#
# `x` is `(B, T_tgt, d_model)`, `memory` `(B, T_src, d_model)`; return `(B, T_tgt, d_model)`. The
# decoder's self-attention must be **causal**: build the mask yourself. `memory` comes out of the
# encoder's final norm already normalised, so it is passed to `cross_attn` as it is.
#
# <details><summary>Hint: the test says the self-attention is left bidirectional</summary>
#
# `self_attn(h, None)` lets every target token see the whole target. Pass
# `torch.ones(T, T, dtype=torch.bool).tril()` (or chapter 01's `causal_mask(T)`) with `T = x.shape[1]`.
# </details>
#
# <details><summary>Hint: the test says memory is normalised twice</summary>
#
# `norm2` belongs to the decoder stream: `cross_attn(norm2(x), memory, memory_mask)`, not `norm2(memory)`.
# </details>

# %% id="ex2-answer" kind="answer"
def decoder_block(x, memory, self_attn, cross_attn, ffn, norm1, norm2, norm3, memory_mask=None):
    ### BEGIN SOLUTION
    causal = causal_mask(x.shape[1])  # (T_tgt, T_tgt)
    x = x + self_attn(norm1(x), causal)  # (B, T_tgt, d_model)
    x = x + cross_attn(norm2(x), memory, memory_mask)  # (B, T_tgt, d_model)
    return x + ffn(norm3(x))  # (B, T_tgt, d_model)
    ### END SOLUTION


# %% id="ex2-test" kind="test" points=1
from helpers.checks.blocks import check_decoder_block

check_decoder_block(decoder_block)

# %% id="ex2-hidden" kind="test" points=2
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_decoder_block(decoder_block, seed=5, dtype=torch.float64, B=3, T_tgt=4, T_src=6, d_model=8, n_heads=2, d_ff=5)
check_decoder_block(decoder_block, seed=13, dtype=torch.float32, B=1, T_tgt=7, T_src=2, d_model=6, n_heads=3, d_ff=9)
### END HIDDEN TESTS

# %% [markdown] id="ex3"
# ## Exercise 3: identify encoder-only, decoder-only and encoder-decoder masks
#
# *Points*
#
# Four kinds of mask cover the three kinds of model. Each is `(T_q, T_k)` per sequence, True = may
# attend, with padded keys (columns no query may see) blocked:
#
# | kind | rule for query `i`, key `j` | used by |
# |---|---|---|
# | `bidirectional` | every real key | encoder self-attention (BERT, T5's encoder) |
# | `causal` | real keys with `j <= i` | decoder self-attention (GPT, T5's decoder) |
# | `prefix-lm` | real keys with `j <= i` or `j < prefix` | prefix LMs (T5's prefix-LM objective, UniLM, GLM) |
# | `cross` | every real **source** key, for every **target** query | encoder-decoder cross-attention |
#
# Part (a) names six masks; part (b) builds the masks of each kind of model. The next cell prints
# the six masks of part (a) (1 = may attend).

# %% id="ex3-masks"
from helpers.checks.blocks import MASKS_TO_NAME

for _name, _mask in MASKS_TO_NAME.items():
    print(f"mask {_name}: {tuple(_mask.shape)}")
    print(_mask.int().numpy(), "\n")

# %% [markdown] id="ex3a"
# ### Part (a): name the masks
#
# *Difficulty* ●○○○○ · *Importance* ●●●●● · *Time* ~10 min · *Points*
#
# Name each mask printed above: `"bidirectional"`, `"causal"`, `"prefix-lm"`, `"cross"`, or `"none"`
# when it is none of them.
#
# <details><summary>Hint: a procedure</summary>
#
# Is it square? (Not square: queries and keys come from two sequences.) Which columns are blocked
# for every query? (Padding.) Ignoring those: is the diagonal allowed? Is anything above the
# diagonal allowed, and if so, for which keys?
# </details>

# %% id="ex3a-answer" kind="answer"
mask_A = None  # one of "bidirectional", "causal", "prefix-lm", "cross", "none"
mask_B = None
mask_C = None
mask_D = None
mask_E = None
mask_F = None
### BEGIN SOLUTION
mask_A = "causal"  # nothing above the diagonal; the last two columns are padding
mask_B = "prefix-lm"  # tokens 0-2 see each other, then causal
mask_C = "cross"  # 4 target queries x 6 source keys, the last key padded
mask_D = "bidirectional"  # every query sees keys 0-3; 4-5 are padding
mask_E = "none"  # query 1 cannot see its own token
mask_F = "prefix-lm"  # a prefix of 2, then causal; the last column is padding
### END SOLUTION

# %% id="ex3a-test" kind="test" points=1
from helpers.checks.blocks import check_mask_names

check_mask_names(A=mask_A, B=mask_B, C=mask_C, D=mask_D, E=mask_E, F=mask_F)

# %% id="ex3a-hidden" kind="test" points=1
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
_unanswered = [_n for _n, _v in {"mask_A": mask_A, "mask_B": mask_B, "mask_C": mask_C, "mask_D": mask_D, "mask_E": mask_E, "mask_F": mask_F}.items() if _v is None]
assert not _unanswered, f"no answer yet for {', '.join(_unanswered)}: assign each a value and run its cell"
_given = [mask_A, mask_B, mask_C, mask_D, mask_E, mask_F]
assert all(isinstance(v, str) for v in _given), "every mask needs a name"
assert [v.strip().lower() for v in _given] == ["causal", "prefix-lm", "cross", "bidirectional", "none", "prefix-lm"]
check_mask_names(A=mask_A, B=mask_B, C=mask_C, D=mask_D, E=mask_E, F=mask_F)  # names worked out, not looked up
### END HIDDEN TESTS

# %% [markdown] id="ex3b"
# ### Part (b): build the masks of each model kind
#
# *Difficulty* ●●○○○ · *Importance* ●●●●● · *Time* ~15 min · *Points*
#
# Now build them. Write `model_masks(kind, lengths, T, target_lengths=None, T_tgt=None)`
# returning a dict of `(B, T_q, T_k)` bool masks, the ones a model of that kind needs:
#
# | `kind` | returns |
# |---|---|
# | `"encoder"` | `{"self": bidirectional (B, T, T)}` |
# | `"decoder"` | `{"self": causal (B, T, T)}` |
# | `"encoder-decoder"` | `{"encoder": bidirectional (B, T, T), "decoder": causal (B, T_tgt, T_tgt), "cross": cross (B, T_tgt, T)}` |
#
# `lengths` (a `(B,)` integer tensor) gives the real tokens of each sequence (of the source, for an
# encoder-decoder); `target_lengths` those of the target. Key `j` of sequence `b` is real when
# `j < lengths[b]`. Padded **query** rows are not blocked: they still see the real keys (the loss
# ignores them).
#
# <details><summary>Hint: one building block</summary>
#
# `torch.arange(T_k)[None, None, :] < lengths[:, None, None]` is `(B, 1, T_k)`: the real keys. `&`
# it with a `(T_q, T_k)` pattern (all True, or `tril`) and expand to `(B, T_q, T_k)`.
# </details>
#
# <details><summary>Hint: the test says padding blocks query rows</summary>
#
# Compare the **key** index (the last axis) with the length, not the query index.
# </details>

# %% id="ex3b-answer" kind="answer"
def model_masks(kind, lengths, T, target_lengths=None, T_tgt=None):
    ### BEGIN SOLUTION
    def real_keys(lens, T_q, T_k):
        keys = torch.arange(T_k)[None, None, :] < torch.as_tensor(lens)[:, None, None]  # (B, 1, T_k)
        return keys.expand(-1, T_q, T_k)  # (B, T_q, T_k)

    def causal(lens, T_):
        return real_keys(lens, T_, T_) & torch.ones(T_, T_, dtype=torch.bool).tril()  # (B, T, T)

    if kind == "encoder":
        return {"self": real_keys(lengths, T, T)}
    if kind == "decoder":
        return {"self": causal(lengths, T)}
    return {"encoder": real_keys(lengths, T, T), "decoder": causal(target_lengths, T_tgt),
            "cross": real_keys(lengths, T_tgt, T)}
    ### END SOLUTION


# %% id="ex3b-test" kind="test" points=1
from helpers.checks.blocks import check_model_masks

check_model_masks(model_masks)

# %% id="ex3b-hidden" kind="test" points=2
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_model_masks(model_masks, T=5, T_tgt=7, lengths=(5, 2, 4), target_lengths=(7, 3, 1))
check_model_masks(model_masks, T=3, T_tgt=2, lengths=(1,), target_lengths=(2,))
### END HIDDEN TESTS

# %% [markdown] id="ex4"
# ## Exercise 4: the prefix-LM mask
#
# *Difficulty* ●●○○○ · *Importance* ●●●○○ · *Time* ~10 min · *Points*
#
# A prefix LM is one decoder stack that reads its prompt (the prefix) **bidirectionally** and
# generates the rest **causally**. Write `prefix_lm_mask(prefix_lengths, lengths, T)` returning a
# `(B, T, T)` bool mask in which query `i` of sequence `b` may see key `j` when
#
# $$
# j < \mathrm{lengths}[b] \quad\text{and}\quad \big(j \le i \ \text{ or } \ j < \mathrm{prefix\_lengths}[b]\big).
# $$
#
# `prefix_lengths` and `lengths` are `(B,)` integer tensors with `prefix_lengths[b] <= lengths[b] <= T`.
#
# <details><summary>Hint: the test says the prefix is applied to queries</summary>
#
# The prefix decides which **keys** everyone may see; a prefix token does not see the generated
# part after the prefix.
# </details>

# %% id="ex4-answer" kind="answer"
def prefix_lm_mask(prefix_lengths, lengths, T):
    ### BEGIN SOLUTION
    i = torch.arange(T, device=lengths.device)[None, :, None]  # (1, T_q, 1)
    j = torch.arange(T, device=lengths.device)[None, None, :]  # (1, 1, T_k)
    visible = (j <= i) | (j < prefix_lengths[:, None, None])  # (B, T, T)
    return visible & (j < lengths[:, None, None])  # (B, T, T)
    ### END SOLUTION


# %% id="ex4-test" kind="test" points=1
from helpers.checks.blocks import check_prefix_lm_mask

check_prefix_lm_mask(prefix_lm_mask)

# %% id="ex4-hidden" kind="test" points=2
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_prefix_lm_mask(prefix_lm_mask, T=6, prefix_lengths=(2, 4), lengths=(6, 5))
check_prefix_lm_mask(prefix_lm_mask, T=9, prefix_lengths=(5, 0, 2, 9), lengths=(8, 3, 2, 9))
### END HIDDEN TESTS

# %% [markdown] id="ex5"
# ## Exercise 5: the parameters of an encoder-decoder
#
# *Difficulty* ●●○○○ · *Importance* ●●●○○ · *Time* ~15 min · *Points*
#
# An encoder-decoder shaped like the 2017 Transformer's base model, written as the course's config:
#
# ```python
# ModelConfig(vocab_size=32000, d_model=512, n_heads=8, d_ff=2048, n_layers=6, max_seq_len=512,
#             kind="encoder-decoder", norm="layernorm", norm_placement="pre", tie_weights=True)
# ```
#
# No biases in attention or FFN; each LayerNorm has `gamma` and `beta`. One token embedding
# `(V, d_model)` serves the source, the target and (tied) the LM head; the source and the target
# each have a learned position table `(max_seq_len, d_model)`; each of the two stacks has 6 layers
# and, being Pre-LN, one final LayerNorm. Answer with numbers:
#
# 1. `encoder_layer`: the parameters of one encoder layer (self-attention, FFN, two LayerNorms);
# 2. `decoder_layer`: the parameters of one decoder layer;
# 3. `total`: the parameters of the whole model.
#
# <details><summary>Hint: the pieces</summary>
#
# Attention with four `d_model x d_model` projections: $4 d^2$. FFN: $2\, d\, d_{ff}$. LayerNorm:
# $2d$. A decoder layer has two attentions and three norms.
# </details>

# %% id="ex5-answer" kind="answer"
encoder_layer = None
decoder_layer = None
total = None
### BEGIN SOLUTION
d, d_ff, L, V, T_max = 512, 2048, 6, 32000, 512
encoder_layer = 4 * d * d + 2 * d * d_ff + 2 * (2 * d)
decoder_layer = 2 * (4 * d * d) + 2 * d * d_ff + 3 * (2 * d)
total = V * d + 2 * T_max * d + L * (encoder_layer + decoder_layer) + 2 * (2 * d)
### END SOLUTION

# %% id="ex5-test" kind="test" points=2
from helpers.checks.blocks import check_encoder_decoder_counts

check_encoder_decoder_counts(encoder_layer=encoder_layer, decoder_layer=decoder_layer, total=total)

# %% id="ex5-hidden" kind="test" points=1
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
_unanswered = [_n for _n, _v in {"encoder_layer": encoder_layer, "decoder_layer": decoder_layer, "total": total}.items() if _v is None]
assert not _unanswered, f"no answer yet for {', '.join(_unanswered)}: assign each a value and run its cell"
assert int(encoder_layer) == 3_147_776 and int(decoder_layer) == 4_197_376
assert int(total) == 60_981_248 and float(total) == 60_981_248
check_encoder_decoder_counts(encoder_layer=encoder_layer, decoder_layer=decoder_layer, total=total)  # counted, not measured
### END HIDDEN TESTS

# %% [markdown] id="outro"
# ## Done
#
# With every visible test passing you have written cross-attention and the decoder block the way
# `nn.TransformerDecoderLayer` runs them, and you can read off a mask which kind of model it belongs
# to. Next: chapter 06 gives the tokens their positions. To see all your points, including the
# hidden tests, grade the whole notebook (see the README's learner section).
