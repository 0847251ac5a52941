# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] id="intro"
# # Chapter 06 exercises: positions — sinusoidal, RoPE, ALiBi
#
# Attention alone cannot tell where a token stands. You will write the sinusoidal table and add it
# where it belongs, rotate queries and keys with RoPE (including at the offset a KV cache needs),
# write a test that proves RoPE's defining property, build ALiBi's bias, and compute how slowly
# RoPE's slowest pairs turn:
#
# | # | exercise |
# |---|---|
# | 1 | `sinusoidal_table(T, d_model, offset=0)` |
# | 2 | `add_positions(x, attn, offset=0)`: positions go into the input |
# | 3 | `apply_rope(x, offset=0)` in the rotate-half convention |
# | 4 | `rope_attention(q, k, v)`: RoPE inside causal attention, with cached keys |
# | 5 | `relative_offset_holds(rope, d_head)`: a test of RoPE's relative-offset property |
# | 6 | `alibi_bias(n_heads, T)` |
# | 7 | numbers: the wavelength of a pair, the position of its first full turn, Llama 3's slowest pair |
#
# **How it works.** Write your answer in the cell marked `# YOUR CODE HERE` (delete the
# `raise NotImplementedError()` line), run it, then run the test cell below it. A visible test
# prints a line starting with ✓ when your answer is right; otherwise it stops with one sentence
# saying what is wrong. After each visible test sits a hidden test: it runs when the notebook is
# graded, with other sizes, offsets, head counts and `float64` inputs, so make your functions
# general rather than fitted to the visible test.
#
# **Conventions** (the same in every chapter): tensors are `torch`; `B` batch, `H` heads, `T`
# sequence (`T_q` queries, `T_k` keys), `d_model` features per token, `d_head` features per head.
# **Positions start at `offset`**: token `t` of a sequence stands at position `offset + t`. A
# decoder with a KV cache (chapter 07) feeds one new token at a time, at position `offset` = the
# number of tokens before it, and must compute exactly what a full pass would.
#
# Write the positions yourself: an answer that calls `helpers.positions` (the chapter's reference)
# is refused by the checks and scores no points, except where an exercise says it may use one of
# its functions. Chapter 01's `helpers.attention.scaled_dot_product_attention` is yours to use.
# Run the next cell first.

# %% id="setup"
import math

import torch

import helpers
import helpers.checks.positions  # load the checks before any answer runs
from helpers.attention import scaled_dot_product_attention

helpers.seed_everything(0)
torch.set_printoptions(precision=4, sci_mode=False)

# %% [markdown] id="ex1"
# ## Exercise 1: the sinusoidal table
#
# *Difficulty* ●●○○○ · *Importance* ●●●●○ · *Time* ~15 min · *Points*
#
# Write `sinusoidal_table(T, d_model, offset=0)` returning the 2017 Transformer's position vectors
# for positions `offset, offset + 1, ..., offset + T - 1`, as a `(T, d_model)` `float32` tensor
# (`d_model` is even):
#
# $$
# \mathrm{PE}(p, 2i) = \sin(p\, w_i), \qquad \mathrm{PE}(p, 2i+1) = \cos(p\, w_i), \qquad
# w_i = 10000^{-2i / d_{\text{model}}}, \quad i = 0, \dots, d_{\text{model}}/2 - 1 .
# $$
#
# Column `2i` is a sine and column `2i + 1` the cosine of the **same** angle; the columns alternate
# sin, cos, sin, cos. Row `t` of the result is position `offset + t`, so with `offset = 0` the first
# row is `PE(0) = [0, 1, 0, 1, ...]`. The table must be exact to float32 far into a sequence too (the
# check asks for offsets in the tens of thousands, as a long context does): compute the angles in
# `float64` and convert the table to `float32` at the end.
#
# <details><summary>Hint: where to start</summary>
#
# `p = torch.arange(offset, offset + T)` as a column `(T, 1)`, `w` from `torch.arange(0, d_model, 2)`
# as a row `(1, d_model/2)`; `angles = p * w` is `(T, d_model/2)`. Fill `pe[:, 0::2]` with the
# sines and `pe[:, 1::2]` with the cosines. Computing the angles in `float64` and converting at
# the end is the safest.
# </details>
#
# <details><summary>Hint: the test says the slowest pair reaches 1/100</summary>
#
# The exponent is `2i / d_model` with `i` the pair index (equivalently, `c / d_model` with `c` the
# even column index `2i`), not `i / d_model`.
# </details>

# %% id="ex1-answer" kind="answer"
def sinusoidal_table(T, d_model, offset=0):
    ### BEGIN SOLUTION
    p = torch.arange(offset, offset + T, dtype=torch.float64)[:, None]  # (T, 1)
    w = 10000.0 ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)  # (d_model/2,)
    angles = p * w  # (T, d_model/2)
    pe = torch.empty(T, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angles)
    pe[:, 1::2] = torch.cos(angles)
    return pe.float()  # (T, d_model)
    ### END SOLUTION


# %% id="ex1-test" kind="test" points=2
from helpers.checks.positions import check_sinusoidal_table

check_sinusoidal_table(sinusoidal_table)

# %% id="ex1-hidden" kind="test" points=1
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_sinusoidal_table(sinusoidal_table, T=7, d_model=12, offsets=(0, 23), far=50000)
### END HIDDEN TESTS

# %% [markdown] id="ex2"
# ## Exercise 2: where the positions go
#
# *Difficulty* ●○○○○ · *Importance* ●●●●● · *Time* ~5 min · *Points*
#
# Absolute positions (learned or sinusoidal) are **added to the input** of the first block, so
# that attention compares tokens that already carry their positions. Write
# `add_positions(x, attn, offset=0)`:
#
# | argument | meaning |
# |---|---|
# | `x` | `(B, T, d_model)`: token embeddings of tokens at positions `offset .. offset + T - 1` |
# | `attn` | a callable `(B, T, d_model) -> (B, T, d_model)` (the test passes a real attention layer) |
# | returns | `attn(x + PE)` with `PE` the sinusoidal table of those positions, `(B, T, d_model)`, dtype of `x` |
#
# You may use your `sinusoidal_table` from exercise 1 or `helpers.positions.sinusoidal_table`
# (`sinusoidal_table(T, d_model, offset=offset, dtype=x.dtype)`). Exercise 1's table is always
# `float32`; the result must have the dtype of `x` (the hidden test passes `float64` inputs), so
# convert the table, `.to(x.dtype)`, before adding it.
#
# <details><summary>Hint: the test says the positions are added after attention</summary>
#
# `attn(x) + PE` gives each output a position, but the attention scores inside `attn` never saw
# one: shuffle the tokens and `attn(x)` shuffles along. The positions must be in the input.
# </details>

# %% id="ex2-answer" kind="answer"
def add_positions(x, attn, offset=0):
    ### BEGIN SOLUTION
    T, d_model = x.shape[1], x.shape[2]
    pe = sinusoidal_table(T, d_model, offset).to(x.dtype)  # (T, d_model)
    return attn(x + pe)  # (B, T, d_model) + (T, d_model), then attention
    ### END SOLUTION


# %% id="ex2-test" kind="test" points=1
from helpers.checks.positions import check_add_positions

check_add_positions(add_positions)

# %% id="ex2-hidden" kind="test" points=1
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_add_positions(add_positions, seed=5, dtype=torch.float64, B=3, T=6, d_model=12, n_heads=3, offset=11)
### END HIDDEN TESTS

# %% [markdown] id="ex3"
# ## Exercise 3: RoPE, rotate-half convention
#
# *Difficulty* ●●●○○ · *Importance* ●●●●● · *Time* ~20 min · *Points*
#
# RoPE rotates pairs of channels of a query or key by an angle proportional to the token's
# position. Write `apply_rope(x, offset=0)` for `x` of shape `(..., T, d_head)` (`d_head` even, any
# number of leading axes: the check passes `(B, H, T, d_head)` and `(T, d_head)`), returning the same
# shape and dtype, on the same device as `x`: the check also runs it on a second device (the GPU,
# else PyTorch's `meta` device), so create new tensors with `device=x.device`. **Convention of this exercise: rotate-half pairs** (HF Llama,
# GPT-NeoX): pair `k` is channels `(k, k + d_head/2)`, for `k = 0 .. d_head/2 - 1`. Token `t` is
# at position `p = offset + t` and its pair `k`, with values $(a, b)$, becomes
#
# $$
# (a\cos(p\,\theta_k) - b\sin(p\,\theta_k),\ \ a\sin(p\,\theta_k) + b\cos(p\,\theta_k)), \qquad
# \theta_k = 10000^{-2k / d_{\text{head}}} .
# $$
#
# (The other convention, GPT-J's and Meta's original Llama, pairs channels `(2k, 2k + 1)`: the
# same rotation on other channels, and a different model if you mix them up.)
#
# <details><summary>Hint: vectorised in four lines</summary>
#
# `angles` `(T, d_head/2)` as in exercise 1; `a, b = x[..., :d/2], x[..., d/2:]`; return
# `torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)` with `cos`, `sin` of the angles in
# `x`'s dtype. The `(T, d/2)` angles broadcast against `(..., T, d/2)`.
# </details>
#
# <details><summary>Hint: with offset = 0 my first token changes</summary>
#
# Position 0 has angle 0: the first token must come back unchanged. Row `t` is position `offset + t`.
# </details>

# %% id="ex3-answer" kind="answer"
def apply_rope(x, offset=0):
    ### BEGIN SOLUTION
    T, d_head = x.shape[-2], x.shape[-1]
    p = torch.arange(offset, offset + T, dtype=torch.float64, device=x.device)[:, None]  # (T, 1)
    theta = 10000.0 ** (-torch.arange(0, d_head, 2, dtype=torch.float64, device=x.device) / d_head)  # (d_head/2,)
    angles = p * theta  # (T, d_head/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    a, b = x[..., : d_head // 2], x[..., d_head // 2:]  # (..., T, d_head/2) each
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)  # (..., T, d_head)
    ### END SOLUTION


# %% id="ex3-test" kind="test" points=2
from helpers.checks.positions import check_apply_rope

check_apply_rope(apply_rope)

# %% id="ex3-hidden" kind="test" points=2
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_apply_rope(apply_rope, seed=5, dtype=torch.float64, B=1, H=2, T=7, d_head=6, offset=13)
### END HIDDEN TESTS

# %% [markdown] id="ex4"
# ## Exercise 4: RoPE inside attention, with cached keys
#
# *Difficulty* ●●●○○ · *Importance* ●●●●○ · *Time* ~15 min · *Points*
#
# A decoder with a KV cache holds the keys and values of all `T_k` tokens so far and computes
# queries only for the newest `T_q` of them. Write `rope_attention(q, k, v)` returning
# `(out, weights)` of causal attention with RoPE:
#
# | argument | shape | positions |
# |---|---|---|
# | `q` | `(B, H, T_q, d_head)` | the **last** `T_q` tokens: query `i` is at position `T_k - T_q + i` |
# | `k`, `v` | `(B, H, T_k, d_head)` | key/value `j` is at position `j` |
# | returns | `out (B, H, T_q, d_head)`, `weights (B, H, T_q, T_k)` | |
#
# Rotate `q` and `k` (rotate-half, base 10000) by their positions, **not** `v`, then apply
# chapter 01's attention with the causal mask in which query `i` sees keys `0 .. T_k - T_q + i`.
# Use your `apply_rope` from exercise 3 or `helpers.positions.apply_rope` (same convention, same
# signature), and `scaled_dot_product_attention` (imported in the setup cell).
#
# <details><summary>Hint: the mask</summary>
#
# `torch.ones(T_q, T_k, dtype=torch.bool).tril(diagonal=T_k - T_q)`: a causal mask whose diagonal
# is shifted right by the number of cached tokens before the first query.
# </details>
#
# <details><summary>Hint: only the one-new-token case fails</summary>
#
# The new token is at position `T_k - 1`, not 0: rotate the queries with `offset = T_k - T_q`.
# </details>

# %% id="ex4-answer" kind="answer"
def rope_attention(q, k, v):
    ### BEGIN SOLUTION
    T_q, T_k = q.shape[-2], k.shape[-2]
    start = T_k - T_q  # position of the first query
    mask = torch.ones(T_q, T_k, dtype=torch.bool, device=q.device).tril(diagonal=start)  # (T_q, T_k)
    return scaled_dot_product_attention(apply_rope(q, start), apply_rope(k, 0), v, mask)
    ### END SOLUTION


# %% id="ex4-test" kind="test" points=2
from helpers.checks.positions import check_rope_attention

check_rope_attention(rope_attention)

# %% id="ex4-hidden" kind="test" points=1
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_rope_attention(rope_attention, seed=5, dtype=torch.float64, B=1, H=2, T_k=9, d_head=6)
### END HIDDEN TESTS

# %% [markdown] id="ex5"
# ## Exercise 5: test RoPE's defining property
#
# *Difficulty* ●●●○○ · *Importance* ●●●●○ · *Time* ~15 min · *Points*
#
# RoPE is chosen for one property: the score of a query at position $m$ and a key at position $n$
# depends on their **offset** $m - n$ only,
#
# $$
# \langle R_m q,\ R_n k\rangle = \langle q,\ R_{n-m} k\rangle \quad\text{for all } m, n .
# $$
#
# Write the test: `relative_offset_holds(rope, d_head)` returns `True` when
# `<rope(q, m), rope(k, n)>` is the same for every pair `(m, n)` with the same offset, and `False`
# otherwise. `rope(x, offset)` takes `x` of shape `(T, d_head)` (use `T = 1`: one vector at position
# `offset`) and returns the same shape. The check hands your test ten functions: three correct
# RoPEs (both pair layouts, another base), one that ignores positions altogether (its scores never
# change, so they depend on $m - n$ only, trivially: `True`), and six impostors whose scores
# depend on absolute positions, three of them only where a quick test does not look: past the first
# few positions, at some offsets only, or through the offset's sign, which a test that uses one
# vector as both `q` and `k` cannot see. Your test must tell them apart.
#
# <details><summary>Hint: a plan</summary>
#
# Draw `q` and `k` separately with `torch.randn(1, d_head, dtype=torch.float64)`. For a few offsets
# `delta` (include 0, an even and an odd one, and a negative one), compute the score at several
# absolute positions `(n + delta, n)` for `n` in, say, 3, 11 and 40, and compare them with
# `torch.allclose` or `math.isclose`.
# </details>
#
# <details><summary>Hint: my test fails the correct RoPEs</summary>
#
# Compare with a tolerance: two correct float computations of the same number differ in the last bits.
# </details>

# %% id="ex5-answer" kind="answer"
def relative_offset_holds(rope, d_head):
    ### BEGIN SOLUTION
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, d_head, generator=g, dtype=torch.float64)  # (1, d_head): one vector
    k = torch.randn(1, d_head, generator=g, dtype=torch.float64)
    for delta in (0, 1, 5, -3):
        scores = torch.stack([(rope(q, n + delta) * rope(k, n)).sum() for n in (3, 11, 40)])  # (3,)
        if not torch.allclose(scores, scores[0].expand(3)):
            return False
    return True
    ### END SOLUTION


# %% id="ex5-test" kind="test" points=2
from helpers.checks.positions import check_relative_offset_test

check_relative_offset_test(relative_offset_holds)

# %% id="ex5-hidden" kind="test" points=1
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_relative_offset_test(relative_offset_holds, d_heads=(6, 16))
### END HIDDEN TESTS

# %% [markdown] id="ex6"
# ## Exercise 6: the ALiBi bias
#
# *Difficulty* ●●○○○ · *Importance* ●●●○○ · *Time* ~15 min · *Points*
#
# ALiBi adds no position vectors at all: it subtracts from each score a penalty that grows
# linearly with the distance between query and key, with a different slope $m_h$ per head. Write
# `alibi_bias(n_heads, T)` returning the `(H, T, T)` `float32` bias
#
# $$
# \mathrm{bias}[h, i, j] = -m_h\, |i - j| .
# $$
#
# The slopes follow the ALiBi paper. For $H$ a power of two, $m_h = r^{h+1}$ for $h = 0 .. H-1$
# with $r = 2^{-8/H}$ (8 heads: $1/2, 1/4, \dots, 1/256$). Otherwise let $P$ be the largest power
# of two below $H$: take the $P$ slopes of $P$ heads, then the slopes of $2P$ heads at even
# indices $0, 2, 4, \dots$ until there are $H$ in all. Compute the slopes yourself (the reference
# is refused here).
#
# <details><summary>Hint: 6 heads</summary>
#
# $P = 4$: $1/4, 1/16, 1/64, 1/256$; then the slopes of 8 heads at indices 0 and 2: $1/2, 1/8$.
# </details>
#
# <details><summary>Hint: my bias is positive above the diagonal</summary>
#
# Use the absolute distance $|i - j|$. (In a causal decoder those entries are masked anyway, but
# the exercise asks for the symmetric bias an encoder would use.)
# </details>

# %% id="ex6-answer" kind="answer"
def alibi_bias(n_heads, T):
    ### BEGIN SOLUTION
    def geometric(n):
        r = 2.0 ** (-8.0 / n)
        return [r ** (h + 1) for h in range(n)]

    P = 2 ** int(math.log2(n_heads))  # largest power of two <= n_heads
    slopes = geometric(P) + geometric(2 * P)[0::2][: n_heads - P]
    m = torch.tensor(slopes, dtype=torch.float64)  # (H,)
    pos = torch.arange(T)
    distance = (pos[:, None] - pos[None, :]).abs().double()  # (T, T)
    return (-m[:, None, None] * distance).float()  # (H, T, T)
    ### END SOLUTION


# %% id="ex6-test" kind="test" points=2
from helpers.checks.positions import check_alibi_bias

check_alibi_bias(alibi_bias)

# %% id="ex6-hidden" kind="test" points=1
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_alibi_bias(alibi_bias, heads=(8, 12, 3), T=7)
### END HIDDEN TESTS

# %% [markdown] id="ex7"
# ## Exercise 7: how slowly the slow pairs turn
#
# *Difficulty* ●●○○○ · *Importance* ●●●○○ · *Time* ~10 min · *Points*
#
# RoPE's pair $i$ turns by $\theta_i = \text{base}^{-2i/d_{\text{head}}}$ radians per position.
# Answer with numbers (floats or ints):
#
# 1. `wavelength_pair`: with `d_head = 64` and base 10000, how many positions does pair $i = 8$
#    need for one full turn ($2\pi$ radians)?
# 2. `turn_position`: the first whole position $p$ at which pair 8 has turned by at least $2\pi$.
# 3. `llama3_longest_wavelength`: Llama 3 uses `d_head = 128` and base 500 000. How many positions
#    does its slowest pair (the last one) need for one full turn? (Three significant digits are enough.)
#
# <details><summary>Hint</summary>
#
# One turn takes $2\pi / \theta_i = 2\pi\, \text{base}^{2i/d_{\text{head}}}$ positions. For pair 8
# of 64 channels, $\text{base}^{16/64} = 10000^{1/4} = 10$.
# </details>

# %% id="ex7-answer" kind="answer"
wavelength_pair = None
turn_position = None
llama3_longest_wavelength = None
### BEGIN SOLUTION
wavelength_pair = 2 * math.pi * 10000 ** (2 * 8 / 64)  # 62.83 positions
turn_position = math.ceil(wavelength_pair)  # 63
llama3_longest_wavelength = 2 * math.pi * 500000 ** (2 * 63 / 128)  # about 2.56 million positions
### END SOLUTION

# %% id="ex7-test" kind="test" points=1
from helpers.checks.positions import check_rope_numbers

check_rope_numbers(wavelength_pair=wavelength_pair, turn_position=turn_position,
                   llama3_longest_wavelength=llama3_longest_wavelength)

# %% id="ex7-hidden" kind="test" points=1
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
_unanswered = [_n for _n, _v in {"wavelength_pair": wavelength_pair, "turn_position": turn_position, "llama3_longest_wavelength": llama3_longest_wavelength}.items() if _v is None]
assert not _unanswered, f"no answer yet for {', '.join(_unanswered)}: assign each a value and run its cell"
assert abs(float(wavelength_pair) - 20 * math.pi) < 0.01 and int(turn_position) == 63
assert abs(float(llama3_longest_wavelength) / (2 * math.pi * 500000 ** (126 / 128)) - 1) < 1e-3
### END HIDDEN TESTS

# %% [markdown] id="outro"
# ## Done
#
# With every visible test passing you have written both kinds of position signal the course's
# model uses: vectors added to the input (sinusoidal), and a rotation of q and k (RoPE) and a score
# bias (ALiBi) inside attention, each at any offset, which is what chapter 07's KV cache needs.
# To see all your points, including the hidden tests, grade the whole notebook (see the README's
# learner section).
