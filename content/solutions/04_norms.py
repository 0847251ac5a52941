# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] id="intro"
# # Chapter 04 exercises: the residual stream, LayerNorm, RMSNorm, Pre-LN and Post-LN
#
# You will normalize a vector by hand, write both norms the way `torch.nn.LayerNorm` and
# `torch.nn.RMSNorm` compute them, write the two block equations that decide where the norm goes,
# and measure the residual stream of a real stack:
#
# | # | exercise |
# |---|---|
# | 1 | LayerNorm and RMSNorm for one vector, by hand |
# | 2 | `layer_norm(x, gamma, beta, eps=1e-5)` |
# | 3 | `rms_norm(x, gamma, eps=1e-6)` |
# | 4 | `pre_ln_block(x, attn, ffn, norm1, norm2)` |
# | 5 | `post_ln_block(x, attn, ffn, norm1, norm2)` |
# | 6 | `residual_norms(x, blocks)`: the residual stream's size, layer by layer |
# | 7 | counting: statistics per batch, norm parameters in GPT-2 and Llama |
#
# **How it works.** Write your answer in the cell marked `# YOUR CODE HERE` (delete the
# `raise NotImplementedError()` line), run it, then run the test cell below it. A visible test
# prints a line starting with ✓ when your answer is right; otherwise it stops with one sentence
# saying what is wrong. After each visible test sits a hidden test: it runs when the notebook is
# graded, with other shapes, seeds, `eps` values and `float64` inputs, so make your functions
# general rather than fitted to the visible test.
#
# **Conventions** (the same in every chapter): tensors are `torch`; shapes are written `B` batch,
# `T` sequence, `d_model` features per token, `d_ff` hidden width of the feed-forward network.
# A norm works on the **last axis only**: every token is normalized by its own statistics. The
# variance is the **biased** one (divide by `d_model`, as `torch.nn.LayerNorm` does), and `eps`
# sits **inside** the square root. `gamma` and `beta` have shape `(d_model,)`.
#
# Write the norms yourself: an answer that calls `helpers.norms` or one of torch's norm built-ins
# (`F.layer_norm`, `F.rms_norm`, `nn.LayerNorm`, `nn.RMSNorm`, `F.group_norm`, `F.instance_norm`,
# `F.batch_norm`) is refused by the checks and scores no points. Reductions such as `mean`, `var`
# and `sqrt` are yours to use. Run the next cell first.

# %% id="setup"
import math

import torch

import helpers
import helpers.checks.norms  # load the checks before any answer runs

helpers.seed_everything(0)
torch.set_printoptions(precision=4, sci_mode=False)

# %% [markdown] id="ex1"
# ## Exercise 1: LayerNorm and RMSNorm for one vector, by hand
#
# *Difficulty* ●○○○○ · *Importance* ●●●●● · *Time* ~15 min · *Points*
#
# One token with $d_{\text{model}} = 4$ features, and the norms' parameters:
#
# $$
# x = [0,\ 2,\ 2,\ 8],\qquad \gamma = [2,\ 0.5,\ 1,\ 2],\qquad \beta = [0.5,\ 0,\ 0,\ -1],\qquad \varepsilon = 7
# $$
#
# ($\varepsilon = 7$ is absurdly large on purpose: real models use $10^{-5}$ or $10^{-6}$, but here
# it changes the answer in the first decimal, so you can see where it goes.)
#
# $$
# \mathrm{LayerNorm}(x)_i = \frac{x_i - \mu}{\sqrt{\sigma^2 + \varepsilon}}\,\gamma_i + \beta_i,
# \quad \mu = \frac{1}{d}\sum_i x_i,\quad \sigma^2 = \frac{1}{d}\sum_i (x_i - \mu)^2
# \qquad
# \mathrm{RMSNorm}(x)_i = \frac{x_i}{\mathrm{rms}}\,\gamma_i,\quad \mathrm{rms} = \sqrt{\frac{1}{d}\sum_i x_i^2 + \varepsilon}
# $$
#
# Compute, on paper or with a calculator (no norm code):
#
# 1. `mean_x` $= \mu$ and `var_x` $= \sigma^2$ (the biased variance);
# 2. `ln_by_hand`: LayerNorm of $x$ with $\gamma$, $\beta$ and $\varepsilon$ above, a list of 4 numbers;
# 3. `rms_x`: the denominator $\mathrm{rms}$ of RMSNorm (with $\varepsilon$);
# 4. `rms_by_hand`: RMSNorm of $x$ with $\gamma$ (RMSNorm has no $\beta$), a list of 4 numbers.
#
# <details><summary>Hint: where to start</summary>
#
# $\mu = 12 / 4 = 3$. The deviations $x_i - \mu$ are $-3, -1, -1, 5$. Both denominators come out
# as whole numbers: $\sigma^2 + \varepsilon$ and $\operatorname{mean}(x^2) + \varepsilon$ are perfect squares.
# </details>
#
# <details><summary>Hint: my variance is 12</summary>
#
# You divided the sum of squared deviations (36) by $d - 1 = 3$. That is the unbiased variance
# (`torch.var`'s default). LayerNorm divides by $d = 4$.
# </details>
#
# <details><summary>Hint: my RMSNorm output has negative numbers</summary>
#
# RMSNorm does not subtract the mean; with $x \ge 0$ every output has the sign of $\gamma_i$.
# </details>

# %% id="ex1-answer" kind="answer"
mean_x = None
var_x = None
ln_by_hand = None  # 4 numbers
rms_x = None
rms_by_hand = None  # 4 numbers
### BEGIN SOLUTION
mean_x = 3.0
var_x = 9.0  # (9 + 1 + 1 + 25) / 4
ln_by_hand = [-1.0, -0.125, -0.25, 1.5]  # [-3, -1, -1, 5] / sqrt(9 + 7) * gamma + beta
rms_x = 5.0  # sqrt((0 + 4 + 4 + 64) / 4 + 7)
rms_by_hand = [0.0, 0.2, 0.4, 3.2]  # [0, 2, 2, 8] / 5 * gamma
### END SOLUTION

# %% id="ex1-test" kind="test" points=2
from helpers.checks.norms import check_norms_by_hand

check_norms_by_hand(mean_x, var_x, ln_by_hand, rms_x, rms_by_hand)

# %% id="ex1-hidden" kind="test" points=1
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
_unanswered = [_n for _n, _v in {"rms_x": rms_x, "var_x": var_x, "ln_by_hand": ln_by_hand, "rms_by_hand": rms_by_hand}.items() if _v is None]
assert not _unanswered, f"no answer yet for {', '.join(_unanswered)}: assign each a value and run its cell"
_x, _g, _b = [0.0, 2.0, 2.0, 8.0], [2.0, 0.5, 1.0, 2.0], [0.5, 0.0, 0.0, -1.0]
_mu = sum(_x) / 4
_sd = math.sqrt(sum((v - _mu) ** 2 for v in _x) / 4 + 7)
_rms = math.sqrt(sum(v * v for v in _x) / 4 + 7)
_want = {"ln_by_hand": [(v - _mu) / _sd * g + b for v, g, b in zip(_x, _g, _b)],
         "rms_by_hand": [v / _rms * g for v, g in zip(_x, _g)]}
for _name, _got in [("ln_by_hand", ln_by_hand), ("rms_by_hand", rms_by_hand)]:
    _got = torch.as_tensor(_got, dtype=torch.float64)
    assert _got.shape == (4,), f"{_name} has the wrong shape"
    assert (_got - torch.tensor(_want[_name], dtype=torch.float64)).abs().max() <= 2e-3, f"{_name} is not right"
assert abs(float(rms_x) - _rms) <= 2e-3 and abs(float(var_x) - (_sd ** 2 - 7)) <= 2e-3
### END HIDDEN TESTS

# %% [markdown] id="ex2"
# ## Exercise 2: LayerNorm for tensors
#
# *Difficulty* ●●○○○ · *Importance* ●●●●● · *Time* ~15 min · *Points*
#
# Write `layer_norm(x, gamma, beta, eps=1e-5)` returning the same numbers as
# `torch.nn.LayerNorm(d_model, eps=eps)` with weight `gamma` and bias `beta`.
#
# | argument | shape |
# |---|---|
# | `x` | `(..., d_model)`: `(T, d_model)`, `(B, T, d_model)`, or any leading axes |
# | `gamma`, `beta` | `(d_model,)` |
# | `eps` | a float; use the one you are given |
# | returns | `(..., d_model)`, the dtype of `x` |
#
# Each token (each position along the leading axes) gets its own mean and variance, taken over its
# `d_model` features. The visible test includes a token whose values are all tiny (variance about
# $10^{-6}$), where `eps` decides the answer, and a non-contiguous input.
#
# <details><summary>Hint: my values are all too small by the same factor (about 7 % for d_model = 7)</summary>
#
# `torch.var` and `x.var()` divide by `d_model - 1` by default. Pass `correction=0` (or
# `unbiased=False`), or compute `((x - mean) ** 2).mean(dim=-1, keepdim=True)` yourself.
# </details>
#
# <details><summary>Hint: the test says the statistics run over the batch or sequence axis</summary>
#
# Reduce over `dim=-1` only, with `keepdim=True` so that the mean `(..., 1)` broadcasts back
# against `x` `(..., d_model)`.
# </details>
#
# <details><summary>Hint: only the tiny token is wrong</summary>
#
# Look at where `eps` goes: `(x - mean) / torch.sqrt(var + eps)`, not `/ (torch.sqrt(var) + eps)`.
# </details>

# %% id="ex2-answer" kind="answer"
def layer_norm(x, gamma, beta, eps=1e-5):
    ### BEGIN SOLUTION
    mean = x.mean(dim=-1, keepdim=True)  # (..., 1)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)  # (..., 1), biased
    return (x - mean) / torch.sqrt(var + eps) * gamma + beta  # (..., d_model)
    ### END SOLUTION


# %% id="ex2-test" kind="test" points=2
from helpers.checks.norms import check_layer_norm

check_layer_norm(layer_norm)

# %% id="ex2-hidden" kind="test" points=2
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_layer_norm(layer_norm, seed=5, dtype=torch.float64, B=3, T=4, d_model=9, eps=1e-3)
check_layer_norm(layer_norm, seed=17, dtype=torch.float32, B=1, T=8, d_model=3, eps=0.5)
### END HIDDEN TESTS

# %% [markdown] id="ex3"
# ## Exercise 3: RMSNorm for tensors
#
# *Difficulty* ●●○○○ · *Importance* ●●●●● · *Time* ~10 min · *Points*
#
# Write `rms_norm(x, gamma, eps=1e-6)` returning the same numbers as
# `torch.nn.RMSNorm(d_model, eps=eps)` with weight `gamma`:
#
# $$
# \mathrm{RMSNorm}(x) = \frac{x}{\sqrt{\operatorname{mean}(x^2) + \varepsilon}} \odot \gamma
# $$
#
# with the mean over the last axis. Shapes as in exercise 2; there is no `beta`. Careful when you
# compare with torch yourself: `nn.RMSNorm`'s default `eps` is `None`, which means
# `torch.finfo(dtype).eps` (about `1.2e-7` in `float32`), not `1e-6`. Always pass `eps`.
#
# <details><summary>Hint: my output has mean 0 per token</summary>
#
# Then you subtracted the mean: that is LayerNorm without `beta`. RMSNorm divides `x` itself.
# </details>
#
# <details><summary>Hint: my output is about sqrt(d_model) times too small</summary>
#
# Average the squares (`mean`), do not sum them: summing gives unit L2 norm, not unit RMS.
# </details>

# %% id="ex3-answer" kind="answer"
def rms_norm(x, gamma, eps=1e-6):
    ### BEGIN SOLUTION
    rms = torch.sqrt((x ** 2).mean(dim=-1, keepdim=True) + eps)  # (..., 1)
    return x / rms * gamma  # (..., d_model)
    ### END SOLUTION


# %% id="ex3-test" kind="test" points=1
from helpers.checks.norms import check_rms_norm

check_rms_norm(rms_norm)

# %% id="ex3-hidden" kind="test" points=2
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_rms_norm(rms_norm, seed=5, dtype=torch.float64, B=3, T=4, d_model=9, eps=1e-3)
check_rms_norm(rms_norm, seed=17, dtype=torch.float32, B=1, T=8, d_model=3, eps=0.5)
### END HIDDEN TESTS

# %% [markdown] id="ex4"
# ## Exercise 4: the Pre-LN block
#
# *Difficulty* ●●○○○ · *Importance* ●●●●● · *Time* ~10 min · *Points*
#
# A transformer block has two sublayers, attention and a feed-forward network, each wrapped in a
# residual connection and a norm. You are given all four pieces as functions that map
# `(B, T, d_model)` to `(B, T, d_model)`: `attn`, `ffn`, `norm1` (the attention sub-block's norm)
# and `norm2` (the feed-forward sub-block's norm). Write the **Pre-LN** block (GPT-2, Llama,
# `nn.TransformerEncoderLayer(norm_first=True)`):
#
# $$
# x \leftarrow x + \mathrm{attn}(\mathrm{norm}_1(x)), \qquad x \leftarrow x + \mathrm{ffn}(\mathrm{norm}_2(x))
# $$
#
# Each sublayer reads a normalized copy of the stream; its output is added to the raw stream. The
# final norm of a Pre-LN model (GPT-2's `ln_f`) sits once after the last block, not in the block.
# The test's `attn` mixes tokens and `norm1` and `norm2` have different parameters, so every other
# order of these calls gives different numbers.
#
# <details><summary>Hint: the test says the second residual is missing</summary>
#
# The second line adds too: `x = x + ffn(norm2(x))`, not `x = ffn(norm2(x))`.
# </details>
#
# <details><summary>Hint: the test says the residual adds the normalized copy</summary>
#
# Keep the raw `x` for the addition: `x + attn(norm1(x))`, not `h = norm1(x); h + attn(h)`.
# </details>

# %% id="ex4-answer" kind="answer"
def pre_ln_block(x, attn, ffn, norm1, norm2):
    ### BEGIN SOLUTION
    x = x + attn(norm1(x))  # (B, T, d_model)
    x = x + ffn(norm2(x))  # (B, T, d_model)
    return x
    ### END SOLUTION


# %% id="ex4-test" kind="test" points=1
from helpers.checks.norms import check_pre_ln_block

check_pre_ln_block(pre_ln_block)

# %% id="ex4-hidden" kind="test" points=2
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_pre_ln_block(pre_ln_block, seed=5, dtype=torch.float64, B=3, T=4, d_model=9, d_ff=6)
check_pre_ln_block(pre_ln_block, seed=11, dtype=torch.float32, B=1, T=7, d_model=4, d_ff=10)
### END HIDDEN TESTS

# %% [markdown] id="ex5"
# ## Exercise 5: the Post-LN block
#
# *Difficulty* ●●○○○ · *Importance* ●●●●○ · *Time* ~10 min · *Points*
#
# Now the **Post-LN** block of the original Transformer and BERT
# (`nn.TransformerEncoderLayer(norm_first=False)`, torch's default), with the same four pieces:
#
# $$
# x \leftarrow \mathrm{norm}_1(x + \mathrm{attn}(x)), \qquad x \leftarrow \mathrm{norm}_2(x + \mathrm{ffn}(x))
# $$
#
# The sublayer reads the raw stream, its output is added, and the **sum** is normalized.
#
# <details><summary>Hint: the test says the output is normalized before the residual add</summary>
#
# `x + norm1(attn(x))` normalizes only the sublayer's output. Add first, then normalize the sum:
# `norm1(x + attn(x))`.
# </details>
#
# <details><summary>Hint: the test says ffn reads the block's input</summary>
#
# Assign the first line's result back to `x` before the second line uses it.
# </details>

# %% id="ex5-answer" kind="answer"
def post_ln_block(x, attn, ffn, norm1, norm2):
    ### BEGIN SOLUTION
    x = norm1(x + attn(x))  # (B, T, d_model)
    x = norm2(x + ffn(x))  # (B, T, d_model)
    return x
    ### END SOLUTION


# %% id="ex5-test" kind="test" points=1
from helpers.checks.norms import check_post_ln_block

check_post_ln_block(post_ln_block)

# %% id="ex5-hidden" kind="test" points=2
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_post_ln_block(post_ln_block, seed=5, dtype=torch.float64, B=3, T=4, d_model=9, d_ff=6)
check_post_ln_block(post_ln_block, seed=11, dtype=torch.float32, B=1, T=7, d_model=4, d_ff=10)
### END HIDDEN TESTS

# %% [markdown] id="ex6"
# ## Exercise 6: measure the residual stream
#
# *Difficulty* ●●○○○ · *Importance* ●●●○○ · *Time* ~10 min · *Points*
#
# How big does the residual stream get as it passes through a stack of blocks? Write
# `residual_norms(x, blocks)`:
#
# | argument | meaning |
# |---|---|
# | `x` | `(B, T, d_model)`: the stream entering the first block |
# | `blocks` | a list of `L` callables, each `(B, T, d_model) -> (B, T, d_model)` |
# | returns | a tensor of shape `(L + 1,)`, dtype of `x` |
#
# Entry `l` is the **mean over the `B * T` tokens of each token's L2 norm** $\lVert x_l[b, t, :] \rVert_2$,
# where $x_0 = x$ and $x_l = \mathrm{blocks}[l-1](x_{l-1})$: the input first, then the stream after
# each block. The test uses stacks of torch's own `nn.TransformerEncoderLayer`, Pre-LN and Post-LN.
# The demonstration cell after the tests runs your function on two 12-layer stacks.
#
# <details><summary>Hint: my numbers grow with the batch size</summary>
#
# `x.norm()` is the norm of the whole tensor. A token's norm is `x.norm(dim=-1)`, shape `(B, T)`;
# average that.
# </details>
#
# <details><summary>Hint: the test says my tensor has L entries</summary>
#
# Entry 0 is the input itself, before any block.
# </details>

# %% id="ex6-answer" kind="answer"
def residual_norms(x, blocks):
    ### BEGIN SOLUTION
    norms = [x.norm(dim=-1).mean()]  # mean over (B, T) of per-token L2 norms
    for block in blocks:
        x = block(x)  # (B, T, d_model)
        norms.append(x.norm(dim=-1).mean())
    return torch.stack(norms)  # (L + 1,)
    ### END SOLUTION


# %% id="ex6-test" kind="test" points=1
from helpers.checks.norms import check_residual_norms

check_residual_norms(residual_norms)

# %% id="ex6-hidden" kind="test" points=2
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_residual_norms(residual_norms, seed=5, dtype=torch.float64, B=3, T=4, d_model=10, n_heads=2, d_ff=7, n_layers=6)
check_residual_norms(residual_norms, seed=8, dtype=torch.float32, B=2, T=3, d_model=8, n_heads=4, d_ff=16, n_layers=0)
### END HIDDEN TESTS

# %% id="ex6-demo"
# Your residual_norms on two 12-layer stacks at initialization: the Pre-LN stream keeps growing,
# the Post-LN stream is renormalized after every sub-block (its size stays near sqrt(d_model) = 8).
def _stack(norm_first):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return [torch.nn.TransformerEncoderLayer(64, 4, 256, dropout=0.0, batch_first=True,
                                                 norm_first=norm_first).eval() for _ in range(12)]


_x = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(1))  # (B, T, d_model)
try:
    with torch.no_grad():
        for _name, _first in [("Pre-LN ", True), ("Post-LN", False)]:
            print(_name, [round(v, 1) for v in residual_norms(_x, _stack(_first)).tolist()])
except (NotImplementedError, NameError):
    print("Run your answer to exercise 6 first.")

# %% [markdown] id="ex7"
# ## Exercise 7: count it
#
# *Difficulty* ●●○○○ · *Importance* ●●●○○ · *Time* ~10 min · *Points*
#
# Answer with numbers (Python ints or floats).
#
# 1. `n_means`: a batch of `B = 8` sequences of `T = 512` tokens with `d_model = 768` goes through
#    one LayerNorm. How many means does it compute (it computes as many variances)?
# 2. `ln_params_gpt2`: GPT-2 small has 12 Pre-LN blocks with `d_model = 768`, two LayerNorms per
#    block (before attention, before the MLP) and one final LayerNorm `ln_f`. How many parameters do
#    all its LayerNorms hold together?
# 3. `rms_params_llama`: Llama-2 7B has 32 blocks with `d_model = 4096`, two RMSNorms per block and
#    one final RMSNorm. How many parameters do its RMSNorms hold together?
#
# <details><summary>Hint: question 1</summary>
#
# One mean per token: the statistics never mix tokens, and never mix sequences.
# </details>
#
# <details><summary>Hint: questions 2 and 3</summary>
#
# A LayerNorm over `d` features has `gamma` and `beta`, `d` numbers each; an RMSNorm has only `gamma`.
# Count the norms first: two per block, plus one at the end.
# </details>

# %% id="ex7-answer" kind="answer"
n_means = None
ln_params_gpt2 = None
rms_params_llama = None
### BEGIN SOLUTION
n_means = 8 * 512
ln_params_gpt2 = (2 * 12 + 1) * 2 * 768
rms_params_llama = (2 * 32 + 1) * 4096
### END SOLUTION

# %% id="ex7-test" kind="test" points=2
from helpers.checks.norms import check_norm_counts

check_norm_counts(n_means=n_means, ln_params_gpt2=ln_params_gpt2, rms_params_llama=rms_params_llama)

# %% id="ex7-hidden" kind="test" points=1
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
_unanswered = [_n for _n, _v in {"n_means": n_means, "ln_params_gpt2": ln_params_gpt2, "rms_params_llama": rms_params_llama}.items() if _v is None]
assert not _unanswered, f"no answer yet for {', '.join(_unanswered)}: assign each a value and run its cell"
assert int(n_means) == 4096 and float(n_means) == 4096
assert int(ln_params_gpt2) == 25 * 1536 and int(rms_params_llama) == 65 * 4096
### END HIDDEN TESTS

# %% [markdown] id="outro"
# ## Done
#
# With every visible test passing you have written both norms the way torch computes them and
# both block layouts the way `nn.TransformerEncoderLayer` runs them. Next: chapter 05 assembles
# full encoder and decoder blocks. To see all your points, including the hidden tests, grade the
# whole notebook (see the README's learner section).
