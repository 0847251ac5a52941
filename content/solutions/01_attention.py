# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] id="intro"
# # Chapter 01 exercises: scaled dot-product attention
#
# You will build attention from its parts, the way `torch.nn.functional.scaled_dot_product_attention`
# computes it, and prove each part right:
#
# | # | exercise |
# |---|---|
# | 1 | attention for tiny matrices, by hand |
# | 2 | `attention_scores(q, k)` |
# | 3 | `causal_mask(T)` |
# | 4 | `apply_mask(scores, mask)` |
# | 5 | `padding_mask(lengths, T)` |
# | 6 | `masked_softmax(scores, mask)` |
# | 7 | `scaled_dot_product_attention(q, k, v, mask=None)` |
# | 8 | counting: allowed pairs, score variance, score memory |
#
# **How it works.** Write your answer in the cell marked `# YOUR CODE HERE` (delete the
# `raise NotImplementedError()` line), run it, then run the test cell below it. A visible test
# prints a line starting with ✓ when your answer is right; otherwise it stops with one sentence
# saying what is wrong. After each visible test sits a hidden test: it runs when the notebook is
# graded, with other shapes, seeds and `float64` inputs, so make your functions general rather
# than fitted to the visible test.
#
# **Conventions** (the same in every chapter): tensors are `torch`; shapes are written `B` batch,
# `T_q` queries, `T_k` keys, `d_k` query/key width, `d_v` value width, `H` heads. Boolean masks use
# `True` = may attend and `False` = blocked, exactly like
# `torch.nn.functional.scaled_dot_product_attention`; a mask broadcasts against scores of shape
# `(..., T_q, T_k)`. Blocked scores become `-inf` before the softmax. A query row whose keys are all
# blocked gets zero weights and a zero output, not NaN.
#
# Write the attention code yourself: an answer that calls `helpers.attention` or torch's
# built-in attention is refused by the checks and scores no points. Run the next cell first.

# %% id="setup"
import math

import torch

import helpers
import helpers.checks.attention  # load the checks before any answer runs

helpers.seed_everything(0)
torch.set_printoptions(precision=4, sci_mode=False)

# %% [markdown] id="ex1"
# ## Exercise 1: attention for tiny matrices, by hand
#
# *Difficulty* ●○○○○ · *Importance* ●●●●● · *Time* ~15 min · *Points*
#
# Two queries attend over three keys. With $d_k = 4$:
#
# $$
# Q = \begin{bmatrix} 1 & 0 & 1 & 0 \\ 0 & 2 & 0 & 0 \end{bmatrix},\quad
# K = \begin{bmatrix} 1 & 0 & 1 & 0 \\ 0 & 1 & 0 & 1 \\ 2 & 0 & 0 & 0 \end{bmatrix},\quad
# V = \begin{bmatrix} 1 & 0 \\ 0 & 1 \\ 1 & 1 \end{bmatrix}
# $$
#
# Compute, on paper or with a calculator (no attention code):
#
# 1. the scores $S = QK^\top / \sqrt{d_k}$, shape $2 \times 3$ (row $i$ = query $i$, column $j$ = key $j$);
# 2. the weights $A = \operatorname{softmax}(S)$ taken along each row, shape $2 \times 3$;
# 3. the output $O = AV$, shape $2 \times 2$.
#
# Give the weights and the output to at least three decimals, as nested lists of numbers.
#
# <details><summary>Hint: where to start</summary>
#
# Each score is a dot product of a row of $Q$ with a row of $K$, divided by $\sqrt 4 = 2$. The
# scores come out as small whole numbers. For the softmax of a row $(a, b, c)$ you need
# $e^a, e^b, e^c$ and their sum; $e \approx 2.71828$.
# </details>
#
# <details><summary>Hint: my weights' columns sum to 1</summary>
#
# The softmax normalizes each query's row (over the keys), not each column.
# </details>

# %% id="ex1-answer" kind="answer"
scores_by_hand = None  # 2 x 3
weights_by_hand = None  # 2 x 3
output_by_hand = None  # 2 x 2
### BEGIN SOLUTION
scores_by_hand = [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
weights_by_hand = [[0.4223, 0.1554, 0.4223], [0.2119, 0.5761, 0.2119]]
output_by_hand = [[0.8446, 0.5777], [0.4239, 0.7881]]
### END SOLUTION

# %% id="ex1-test" kind="test" points=2
from helpers.checks.attention import check_sdpa_by_hand

check_sdpa_by_hand(scores_by_hand, weights_by_hand, output_by_hand)

# %% id="ex1-hidden" kind="test" points=1
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
_unanswered = [_n for _n, _v in {"weights_by_hand": weights_by_hand, "output_by_hand": output_by_hand}.items() if _v is None]
assert not _unanswered, f"no answer yet for {', '.join(_unanswered)}: assign each a value and run its cell"
_e = math.e
_weights = [[_e / (2 * _e + 1), 1 / (2 * _e + 1), _e / (2 * _e + 1)], [1 / (_e + 2), _e / (_e + 2), 1 / (_e + 2)]]
_output = [[_weights[0][0] + _weights[0][2], _weights[0][1] + _weights[0][2]],
           [_weights[1][0] + _weights[1][2], _weights[1][1] + _weights[1][2]]]
for _name, _got, _want in [("weights_by_hand", weights_by_hand, _weights), ("output_by_hand", output_by_hand, _output)]:
    _got = torch.as_tensor(_got, dtype=torch.float64)
    assert _got.shape == (2, len(_want[0])), f"{_name} has the wrong shape"
    assert (_got - torch.tensor(_want, dtype=torch.float64)).abs().max() <= 2e-3, f"{_name} is not right"
### END HIDDEN TESTS

# %% [markdown] id="ex2"
# ## Exercise 2: the score matrix
#
# *Difficulty* ●●○○○ · *Importance* ●●●●● · *Time* ~10 min · *Points*
#
# Write `attention_scores(q, k)` returning $S = QK^\top / \sqrt{d_k}$.
#
# | argument | shape |
# |---|---|
# | `q` | `(..., T_q, d_k)` |
# | `k` | `(..., T_k, d_k)` |
# | returns | `(..., T_q, T_k)`, the same dtype as `q` |
#
# `...` stands for any leading axes: `(B,)` for a batch, `(B, H)` for a batch of heads. The hidden
# tests use 3-D and 4-D inputs in `float64`.
#
# <details><summary>Hint: my result has shape (..., T_k, T_q)</summary>
#
# That is $KQ^\top$: one row per key. Put the queries on the left.
# </details>
#
# <details><summary>Hint: `k.T` fails or gives a strange shape</summary>
#
# `.T` reverses every axis of a batched tensor. Swap only the last two: `k.transpose(-2, -1)`.
# </details>
#
# <details><summary>Hint: all my scores are about 3.3 times too large</summary>
#
# The visible test uses $d_k = 11$, and $\sqrt{11} \approx 3.3$: divide by $\sqrt{d_k}$.
# </details>

# %% id="ex2-answer" kind="answer"
def attention_scores(q, k):
    ### BEGIN SOLUTION
    d_k = q.shape[-1]
    return q @ k.transpose(-2, -1) / math.sqrt(d_k)  # (..., T_q, T_k)
    ### END SOLUTION


# %% id="ex2-test" kind="test" points=1
from helpers.checks.attention import check_attention_scores

check_attention_scores(attention_scores)

# %% id="ex2-hidden" kind="test" points=2
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_attention_scores(attention_scores, seed=5, dtype=torch.float64, B=3, H=2, T_q=4, T_k=9, d_k=6)
check_attention_scores(attention_scores, seed=17, dtype=torch.float32, B=1, H=4, T_q=8, T_k=3, d_k=2)
### END HIDDEN TESTS

# %% [markdown] id="ex3"
# ## Exercise 3: the causal mask
#
# *Difficulty* ●○○○○ · *Importance* ●●●●● · *Time* ~5 min · *Points*
#
# A decoder predicts token $t+1$ from tokens $0 \dots t$, so query $i$ may attend to keys
# $j \le i$ and never to a later one. Write `causal_mask(T)` returning a `(T, T)` tensor of dtype
# `torch.bool` that is `True` where query $i$ may attend to key $j$.
#
# For `T = 4` it reads, row by row (query 0 first):
#
# ```
# allow block block block
# allow allow block block
# allow allow allow block
# allow allow allow allow
# ```
#
# <details><summary>Hint: which triangle?</summary>
#
# Rows are queries, columns are keys. `torch.ones(T, T, dtype=torch.bool).tril()` keeps the
# diagonal and everything below it; `tril(-1)` would drop the diagonal, `triu()` keeps the wrong half.
# </details>

# %% id="ex3-answer" kind="answer"
def causal_mask(T):
    ### BEGIN SOLUTION
    return torch.ones(T, T, dtype=torch.bool).tril()  # (T, T)
    ### END SOLUTION


# %% id="ex3-test" kind="test" points=1
from helpers.checks.attention import check_causal_mask

check_causal_mask(causal_mask)

# %% id="ex3-hidden" kind="test" points=1
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_causal_mask(causal_mask, sizes=(9, 2, 1))
### END HIDDEN TESTS

# %% [markdown] id="ex4"
# ## Exercise 4: apply a mask to the scores
#
# *Difficulty* ●○○○○ · *Importance* ●●●●● · *Time* ~5 min · *Points*
#
# Write `apply_mask(scores, mask)`: a new tensor equal to `scores` where `mask` is `True` and
# `float("-inf")` where it is `False`. `scores` has shape `(..., T_q, T_k)`; `mask` is boolean and
# broadcasts against it: a causal mask `(T, T)` serves every sequence of a batch; for scores
# `(B, T_q, T_k)` a padding mask `(B, 1, T_k)` serves every query of its sequence (the per-head
# scores `(B, H, T_q, T_k)` used from chapter 02 on take it as `(B, 1, 1, T_k)`). Do not modify `scores` itself.
#
# Then run the demonstration cell after the tests: it applies your causal mask to real scores.
#
# <details><summary>Hint: blocked positions come out as 0</summary>
#
# $e^0 = 1$, so a zero score still receives weight after the softmax. Only $-\infty$ gives
# $e^{-\infty} = 0$.
# </details>
#
# <details><summary>Hint: the test says I modified the input</summary>
#
# Methods ending in `_` (`masked_fill_`) work in place. Use `scores.masked_fill(~mask, float("-inf"))`
# or `torch.where`.
# </details>

# %% id="ex4-answer" kind="answer"
def apply_mask(scores, mask):
    ### BEGIN SOLUTION
    return scores.masked_fill(~mask, float("-inf"))  # (..., T_q, T_k)
    ### END SOLUTION


# %% id="ex4-test" kind="test" points=1
from helpers.checks.attention import check_apply_mask

check_apply_mask(apply_mask)

# %% id="ex4-hidden" kind="test" points=1
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_apply_mask(apply_mask, seed=5, dtype=torch.float64, B=3, T_q=4, T_k=9)
### END HIDDEN TESTS

# %% id="ex4-demo"
# Your causal mask applied to the scores of 4 tokens: the future (upper triangle) becomes -inf.
_q, _k = torch.randn(4, 8), torch.randn(4, 8)  # (T, d_k)
try:
    print(apply_mask(attention_scores(_q, _k), causal_mask(4)))  # (T, T)
except (NotImplementedError, NameError):
    print("Run your answers to exercises 2 to 4 first.")

# %% [markdown] id="ex5"
# ## Exercise 5: the padding mask
#
# *Difficulty* ●●○○○ · *Importance* ●●●●○ · *Time* ~10 min · *Points*
#
# Sequences of different lengths share a batch by padding the short ones to length `T`. Padded
# positions are not tokens, so no query may attend to them. Write `padding_mask(lengths, T)`:
#
# | argument | meaning |
# |---|---|
# | `lengths` | 1-D integer tensor of shape `(B,)`: the real length of each sequence, `0 <= lengths[b] <= T` |
# | `T` | the padded length |
# | returns | bool tensor `(B, 1, T)`: `True` at key `j` of sequence `b` iff `j < lengths[b]` |
#
# The size-1 middle axis is the query axis: it lets the mask broadcast against scores
# `(B, T_q, T_k)`, blocking the same keys for every query.
#
# <details><summary>Hint: the test says I masked query positions</summary>
#
# Padding blocks keys (columns of the score matrix). The mask's last axis is the key axis.
# </details>
#
# <details><summary>Hint: a comparison does it all</summary>
#
# `torch.arange(T, device=lengths.device)` gives the positions `(T,)` (on the GPU when `lengths` is
# there); compare it with `lengths` after giving each a new axis so they broadcast to `(B, T)`, then
# insert the query axis.
# </details>

# %% id="ex5-answer" kind="answer"
def padding_mask(lengths, T):
    ### BEGIN SOLUTION
    positions = torch.arange(T, device=lengths.device)  # (T,), on the device of lengths
    return (positions[None, :] < lengths[:, None])[:, None, :]  # (B, 1, T)
    ### END SOLUTION


# %% id="ex5-test" kind="test" points=1
from helpers.checks.attention import check_padding_mask

check_padding_mask(padding_mask)

# %% id="ex5-hidden" kind="test" points=1
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_padding_mask(padding_mask, lengths=(4, 0, 7, 1), T=7)
check_padding_mask(padding_mask, lengths=(2,), T=3)
### END HIDDEN TESTS

# %% [markdown] id="ex6"
# ## Exercise 6: the masked softmax
#
# *Difficulty* ●●●○○ · *Importance* ●●●●● · *Time* ~15 min · *Points*
#
# Write `masked_softmax(scores, mask)` returning the attention weights, shape `(..., T_q, T_k)`:
#
# $$
# A_{ij} = \frac{\exp(S_{ij})}{\sum_{j' \text{ allowed}} \exp(S_{ij'})} \text{ if key } j \text{ is allowed for query } i,
# \qquad A_{ij} = 0 \text{ otherwise.}
# $$
#
# * the softmax runs over the key axis (the last one), so each query's row sums to 1;
# * blocked keys get exactly 0 (set their scores to `-inf` *before* the softmax);
# * a query row in which every key is blocked has nothing to attend to: return zeros for it,
#   not NaN (the softmax of a row of `-inf` is $0/0$).
#
# <details><summary>Hint: I get NaN in some rows</summary>
#
# Those rows have no allowed key. Find them with `mask.any(dim=-1, keepdim=True)` and put zeros
# there, for example with `torch.where`.
# </details>
#
# <details><summary>Hint: my rows sum to less than 1</summary>
#
# Multiplying the weights by the mask after the softmax removes weight without renormalizing.
# Mask the scores before the softmax.
# </details>

# %% id="ex6-answer" kind="answer"
def masked_softmax(scores, mask):
    ### BEGIN SOLUTION
    has_key = mask.any(dim=-1, keepdim=True)  # (..., T_q or 1, 1)
    masked = scores.masked_fill(~mask, float("-inf"))  # (..., T_q, T_k)
    weights = torch.softmax(masked, dim=-1)  # (..., T_q, T_k), NaN in rows with no allowed key
    return torch.where(has_key, weights, torch.zeros_like(weights))
    ### END SOLUTION


# %% id="ex6-test" kind="test" points=1
from helpers.checks.attention import check_masked_softmax

check_masked_softmax(masked_softmax)

# %% id="ex6-hidden" kind="test" points=2
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_masked_softmax(masked_softmax, seed=5, dtype=torch.float64, B=3, T_q=4, T_k=9)
check_masked_softmax(masked_softmax, seed=23, dtype=torch.float32, B=1, T_q=6, T_k=2)
### END HIDDEN TESTS

# %% [markdown] id="ex7"
# ## Exercise 7: scaled dot-product attention
#
# *Difficulty* ●●●○○ · *Importance* ●●●●● · *Time* ~15 min · *Points*
#
# Put it together: `scaled_dot_product_attention(q, k, v, mask=None)` returns
# `(output, weights)` with
#
# $$
# \operatorname{Attention}(Q, K, V) = \operatorname{softmax}\!\left(\frac{QK^\top}{\sqrt{d_k}} + M\right)V,
# \qquad M_{ij} = \begin{cases} 0 & \text{mask}_{ij} \text{ True} \\ -\infty & \text{mask}_{ij} \text{ False} \end{cases}
# $$
#
# | argument | shape |
# |---|---|
# | `q` | `(..., T_q, d_k)` |
# | `k` | `(..., T_k, d_k)` |
# | `v` | `(..., T_k, d_v)` |
# | `mask` | `None` (every key allowed) or bool, broadcastable to `(..., T_q, T_k)` |
# | returns | `output (..., T_q, d_v)`, `weights (..., T_q, T_k)` |
#
# Its output must equal `torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)`,
# including zeros for fully blocked rows, but write it yourself: you may call your functions from
# exercises 2 to 6 (fix them first) or write it in one piece. The hidden tests use 4-D inputs,
# other sizes and `float64`.
#
# <details><summary>Hint: the weights are right but the output is not</summary>
#
# The output is `weights @ v`: every output row is a weighted average of the value rows.
# </details>
#
# <details><summary>Hint: it fails only with mask=None</summary>
#
# `None` means no mask at all: skip the masking step rather than calling it with `None`.
# </details>

# %% id="ex7-answer" kind="answer"
def scaled_dot_product_attention(q, k, v, mask=None):
    ### BEGIN SOLUTION
    d_k = q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)  # (..., T_q, T_k)
    if mask is None:
        weights = torch.softmax(scores, dim=-1)  # (..., T_q, T_k)
    else:
        has_key = mask.any(dim=-1, keepdim=True)  # (..., T_q or 1, 1)
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)  # (..., T_q, T_k)
        weights = torch.where(has_key, weights, torch.zeros_like(weights))
    return weights @ v, weights  # (..., T_q, d_v), (..., T_q, T_k)
    ### END SOLUTION


# %% id="ex7-test" kind="test" points=2
from helpers.checks.attention import check_scaled_dot_product_attention

check_scaled_dot_product_attention(scaled_dot_product_attention)

# %% id="ex7-hidden" kind="test" points=3
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_scaled_dot_product_attention(scaled_dot_product_attention, seed=5, dtype=torch.float64,
                                   B=3, H=2, T_q=4, T_k=9, d_k=6, d_v=5, T=8)
check_scaled_dot_product_attention(scaled_dot_product_attention, seed=31, dtype=torch.float32,
                                   B=1, H=5, T_q=7, T_k=2, d_k=3, d_v=9, T=4)
### END HIDDEN TESTS

# %% [markdown] id="ex8"
# ## Exercise 8: count it
#
# *Difficulty* ●●○○○ · *Importance* ●●●○○ · *Time* ~10 min · *Points*
#
# Answer with numbers (Python ints or floats), not code that calls attention functions.
#
# 1. `n_causal_allowed`: how many (query, key) pairs does a causal mask allow for `T = 6`?
# 2. `n_padding_allowed`: a batch has `lengths = (3, 5)` padded to `T = 5`, with scores of shape
#    `(B, T, T)` and the padding mask of exercise 5. How many (query, key) pairs are allowed in the
#    whole batch?
# 3. `var_unscaled`: the entries of `q` and `k` are independent with mean 0 and variance 1, and
#    $d_k = 64$. What is the variance of the dot product $q \cdot k$?
# 4. `var_scaled`: and the variance of $q \cdot k / \sqrt{d_k}$?
# 5. `n_score_entries`: how many numbers does the score tensor hold for a batch of `B = 2`
#    sequences, `H = 12` heads and `T = 1024` tokens?
# 6. `score_bytes`: how many bytes is that in `float32`?
#
# <details><summary>Hint: question 2</summary>
#
# A padding mask blocks keys, not queries: every one of the `T` query rows of sequence `b`
# allows `lengths[b]` keys.
# </details>
#
# <details><summary>Hint: questions 3 and 4</summary>
#
# $q \cdot k = \sum_{c=1}^{d_k} q_c k_c$ is a sum of $d_k$ independent terms, each with variance
# $\operatorname{Var}(q_c)\operatorname{Var}(k_c) = 1$. And $\operatorname{Var}(x / a) = \operatorname{Var}(x) / a^2$.
# </details>

# %% id="ex8-answer" kind="answer"
n_causal_allowed = None
n_padding_allowed = None
var_unscaled = None
var_scaled = None
n_score_entries = None
score_bytes = None
### BEGIN SOLUTION
n_causal_allowed = 6 * 7 // 2
n_padding_allowed = (3 + 5) * 5
var_unscaled = 64.0
var_scaled = 1.0
n_score_entries = 2 * 12 * 1024 * 1024
score_bytes = n_score_entries * 4
### END SOLUTION

# %% id="ex8-test" kind="test" points=2
from helpers.checks.attention import check_counts

check_counts(n_causal_allowed=n_causal_allowed, n_padding_allowed=n_padding_allowed,
             var_unscaled=var_unscaled, var_scaled=var_scaled,
             n_score_entries=n_score_entries, score_bytes=score_bytes)

# %% id="ex8-hidden" kind="test" points=1
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
_unanswered = [_n for _n, _v in {"n_causal_allowed": n_causal_allowed, "n_padding_allowed": n_padding_allowed, "var_unscaled": var_unscaled, "var_scaled": var_scaled, "n_score_entries": n_score_entries, "score_bytes": score_bytes}.items() if _v is None]
assert not _unanswered, f"no answer yet for {', '.join(_unanswered)}: assign each a value and run its cell"
assert int(n_causal_allowed) == sum(i + 1 for i in range(6))
assert int(n_padding_allowed) == sum(5 * length for length in (3, 5))
assert abs(float(var_unscaled) - 64) < 1e-9 and abs(float(var_scaled) - 1) < 1e-9
assert int(n_score_entries) == 2 * 12 * 1024**2 and int(score_bytes) == 4 * 2 * 12 * 1024**2
### END HIDDEN TESTS

# %% [markdown] id="outro"
# ## Done
#
# With every visible test passing you have written attention the way torch computes it. Next:
# chapter 02 splits it into heads. To see all your points, including the hidden tests, grade the
# whole notebook (see the README's learner section).
