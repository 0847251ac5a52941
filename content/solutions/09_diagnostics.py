# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] id="intro"
# # Chapter 09 exercises: diagnostics
#
# You will write three of the chapter's diagnostics, use them to find the bug in each of eight broken
# models, write your own debugging checklist, and decide what an ablation table says beyond its seed
# noise:
#
# | # | exercise |
# |---|---|
# | 1 | `future_leaks(f, ids, vocab_size)`: a leakage test by perturbation |
# | 2 | `attention_entropy(weights)`: entropy per query, in nats |
# | 3 | `update_ratios(stream)`: update-to-stream ratios per block |
# | 4 | the bug hunt: a `find_bug` that names each model's bug from diagnostics |
# | 5 | numbers: entropy maxima, the cost of a leakage test |
# | 6 | a transformer debugging checklist, graded by your instructor |
# | 7 | `ablation_verdicts(losses, z)`: an ablation table's verdicts against the seed noise |
#
# **How it works.** Write your answer in the cell marked `# YOUR CODE HERE` (delete the
# `raise NotImplementedError()` line), run it, then run the test cell below it. A visible test
# prints a line starting with ✓ when your answer is right; otherwise it stops with one sentence
# saying what is wrong. After the visible tests of exercises 1 to 3 and 7 sits a hidden test: it runs
# when the notebook is graded, with other shapes, seeds and `float64` inputs, so make your functions
# general. In the bug hunt the visible test checks the form of your answers and the hidden test grades
# your `find_bug` on other models. Exercise 6 is read and graded by a person; the autograder leaves it
# for your instructor.
#
# **Conventions.** `B` batch, `T` sequence, `H` heads, `L` blocks. Masks: `True` = may attend.
# Entropies are in nats (natural log). Exercises 1 to 3 and 7 are yours to write: an answer that calls
# `helpers.diagnostics` (the reference) or `torch.special.entr` is refused. The bug hunt runs on
# your own diagnostics: exercises 1 to 3 and your own code (`helpers.diagnostics.residual_stream`
# may give you the stream); the reference's diagnostics and `helpers.bugs.checkup` are refused there.
# Nothing here trains a model for long. Run the next cell first.

# %% id="setup"
import math

import torch

import helpers
import helpers.checks.diagnostics  # load the checks before any answer runs
from helpers import bugs

helpers.seed_everything(0)
torch.set_printoptions(precision=4, sci_mode=False)
if helpers.get_device().type == "cpu":
    torch.set_num_threads(1)  # tiny models: one thread is much faster than several on a busy CPU

# %% [markdown] id="ex1"
# ## Exercise 1: a leakage test by perturbation
#
# *Difficulty* ●●●○○ · *Importance* ●●●●● · *Time* ~20 min · *Points*
#
# `f` is a model: it maps integer ids `(B, T)` to outputs `(B, T, ...)` (logits, or any per-position
# vectors). In a causal model, output `i` may depend on tokens `0..i` only. Write
# `future_leaks(f, ids, vocab_size)` returning a bool tensor `(T, T)` that is `True` at `(i, j)` when
# `i < j` and output `i` changes as token `j` changes:
#
# 1. compute `base = f(ids)`;
# 2. for **every** position `j`: replace token `j` of every sequence by `(id + 1) % vocab_size`, run
#    `f` again, and find the positions `i` whose outputs moved (in any sequence of the batch);
# 3. keep only `i < j`: an output at or after `j` may legitimately depend on token `j`.
#
# "Moved" means: differs by more than a tolerance. A recomputation may round differently in the last
# bits, so compare with `torch.isclose` (e.g. `rtol=1e-5` and an `atol` of `1e-5` times the largest
# `|base|`) or `helpers.numerics.close`, never with `==`. The check runs your test on a healthy
# decoder, on one without its causal mask, on a toy with one planted leak, and on a toy whose two
# leaks each show in one sequence of the batch only (a leak in any sequence is a leak).
#
# <details><summary>Hint: the test says a leak from a middle position goes unseen</summary>
#
# Loop over every `j` in `range(T)`, not only the last position.
# </details>
#
# <details><summary>Hint: the test says rounding noise counts as a leak</summary>
#
# `out != base` is exact. Use `~torch.isclose(out, base, rtol=..., atol=...)`.
# </details>

# %% id="ex1-answer" kind="answer"
def future_leaks(f, ids, vocab_size):
    ### BEGIN SOLUTION
    T = ids.shape[1]
    base = f(ids)  # (B, T, ...)
    atol = 1e-5 * float(base.abs().max())
    leaks = torch.zeros(T, T, dtype=torch.bool)
    for j in range(T):
        changed = ids.clone()
        changed[:, j] = (ids[:, j] + 1) % vocab_size  # (B, T): token j replaced
        moved = ~torch.isclose(f(changed), base, rtol=1e-5, atol=atol)  # (B, T, ...)
        moved = moved.reshape(moved.shape[0], T, -1).any(-1).any(0)  # (T,): output i moved in some sequence
        leaks[:, j] = moved & (torch.arange(T) < j)  # only outputs before j
    return leaks
    ### END SOLUTION


# %% id="ex1-test" kind="test" points=2
from helpers.checks.diagnostics import check_future_leaks

check_future_leaks(future_leaks)

# %% id="ex1-hidden" kind="test" points=2
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_future_leaks(future_leaks, seed=5, B=3, T=9, V=11, dtype=torch.float64)
### END HIDDEN TESTS

# %% [markdown] id="ex2"
# ## Exercise 2: attention entropy
#
# *Difficulty* ●●○○○ · *Importance* ●●●●○ · *Time* ~10 min · *Points*
#
# Write `attention_entropy(weights)`: attention weights `(..., T_q, T_k)`, each row a distribution
# over the keys, to the entropy of each row `(..., T_q)`, in **nats**:
#
# $$
# H_i = -\sum_{k} A_{ik} \ln A_{ik}, \qquad 0 \ln 0 = 0.
# $$
#
# Blocked keys have weight exactly 0, so the `0 ln 0 = 0` rule matters. Keep the input's dtype, and
# keep the result differentiable: an entropy can be part of a loss (an entropy regulariser), so the
# hidden test also runs a backward pass through your function and compares the gradients with the
# reference's. Compute it with torch operations on `weights` (no `.item()`, NumPy or `torch.tensor`
# of values).
#
# <details><summary>Hint: the test says the result contains NaN</summary>
#
# `0 * log(0)` is `0 * -inf = NaN`. Take the log only where the weight is positive:
# `torch.where(w > 0, w.log(), 0)`, or use `torch.xlogy(w, w)`.
# </details>

# %% id="ex2-answer" kind="answer"
def attention_entropy(weights):
    ### BEGIN SOLUTION
    logs = torch.where(weights > 0, weights.log(), torch.zeros((), dtype=weights.dtype))  # (..., T_q, T_k)
    return -(weights * logs).sum(dim=-1)  # (..., T_q)
    ### END SOLUTION


# %% id="ex2-test" kind="test" points=2
from helpers.checks.diagnostics import check_attention_entropy

check_attention_entropy(attention_entropy)

# %% id="ex2-hidden" kind="test" points=1
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_attention_entropy(attention_entropy, seed=5, B=3, H=2, T_q=4, T_k=9, dtype=torch.float64)
### END HIDDEN TESTS

# %% [markdown] id="ex3"
# ## Exercise 3: update-to-stream ratios
#
# *Difficulty* ●●○○○ · *Importance* ●●●●○ · *Time* ~10 min · *Points*
#
# `stream` `(L + 1, B, T, d_model)` holds the residual stream entering the first block (`stream[0]`)
# and after each of the `L` blocks. Write `update_ratios(stream)` returning `(L,)`: for each block,
# the mean over the `B x T` tokens of
#
# $$
# r_\ell[b, t] = \frac{\lVert x_{\ell+1}[b,t] - x_\ell[b,t] \rVert_2}{\lVert x_\ell[b,t] \rVert_2},
# $$
#
# each norm over `d_model` (one vector per token). A healthy Pre-LN block edits the stream (a ratio
# well below 1); a block whose residual connection is missing replaces it.
#
# <details><summary>Hint: the test says the norms run over T</summary>
#
# A token's vector is the last axis: `.norm(dim=-1)`.
# </details>

# %% id="ex3-answer" kind="answer"
def update_ratios(stream):
    ### BEGIN SOLUTION
    update = (stream[1:] - stream[:-1]).norm(dim=-1)  # (L, B, T)
    return (update / stream[:-1].norm(dim=-1)).mean(dim=(1, 2))  # (L,)
    ### END SOLUTION


# %% id="ex3-test" kind="test" points=2
from helpers.checks.diagnostics import check_update_ratios

check_update_ratios(update_ratios)

# %% id="ex3-hidden" kind="test" points=1
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_update_ratios(update_ratios, seed=5, L=4, B=3, T=6, d_model=9, dtype=torch.float64)
### END HIDDEN TESTS

# %% [markdown] id="ex4"
# ## Exercise 4: the bug hunt
#
# *Difficulty* ●●●●○ · *Importance* ●●●●● · *Time* ~30 min · *Points*
#
# The next cell gives you eight models, `models["A"]` to `models["H"]`, and a healthy `reference`.
# All are the course's decoder (2 layers, 2 heads, `d_model` 32, RoPE, vocabulary 48) behind the same
# interface: `model(ids, lengths=None, return_weights=False, offset=0)` with `ids` `(B, T)`, optional
# left padding (`lengths` `(B,)`: the last `lengths[b]` tokens of sequence `b` are real) and an
# `offset` for the positions. Each model hides exactly one of the bugs below, each bug is in exactly
# one model, and every model runs and trains without an exception:
#
# | bug | what is wrong |
# |---|---|
# | `mask_leak` | the causal mask is missing |
# | `softmax_axis` | the softmax runs over the query axis instead of the key axis |
# | `no_residual` | the residual connection around attention is missing |
# | `norm_axis` | the norms normalise over the sequence axis instead of `d_model` |
# | `rope_on_v` | RoPE rotates the values as well as the queries and keys |
# | `no_scale` | the scores are not divided by `sqrt(d_head)` |
# | `untied` | the LM head has its own copy of the embedding although the config ties them |
# | `padding_query` | the padding mask blocks queries instead of keys |
#
# Write `find_bug(model, reference)` that returns the name of `model`'s bug (a key of the table),
# found with **diagnostics**: your `future_leaks`, `attention_entropy` and `update_ratios`, the weights
# that `model(ids, return_weights=True)` returns, parameter counts, and comparisons with `reference`,
# the healthy model (`helpers.diagnostics.residual_stream(model, ids)` gives the stream that
# `update_ratios` takes). The reference's diagnostics, `helpers.bugs.checkup` and the bug builders
# (`broken_model`, `healthy_model`, `hunt_models`) are refused inside `find_bug`. The visible test
# runs it on the eight models below and checks the form (a bug from the list for each, each bug
# once); the hidden test runs it on eight **other** models (other weights, another assignment of the
# bugs) and grades each answer, naming for a wrong one the diagnostic that would have found it. So
# the names of the models below, however found, earn nothing: only a `find_bug` that diagnoses does.
#
# <details><summary>Hint: three models leak the future</summary>
#
# The leakage test finds future tokens moving earlier outputs in three models. Look at their
# attention weights: in one the weights above the diagonal are not zero; in the other two they are,
# so the leak comes from somewhere else. Do the rows of the weights sum to 1? And does anything but
# attention mix the positions?
# </details>
#
# <details><summary>Hint: which threshold?</summary>
#
# Compare with `reference`: a healthy model's numbers are the baseline (its leaks: none, its rows sum
# to 1, its entropy, its update ratio). A bug moves its number far from the baseline, not a little.
# </details>

# %% id="ex4-models"
models = bugs.hunt_models(seed=0)
reference = bugs.healthy_model(seed=0)
print({label: type(m).__name__ for label, m in models.items()})

# %% id="ex4-answer" kind="answer"
def find_bug(model, reference):
    ### BEGIN SOLUTION
    V = model.config.vocab_size
    ids = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(0))  # (B, T)
    with torch.no_grad():
        logits, weights = model(ids, return_weights=True)  # (B, T, V), [(B, H, T, T)] per layer
        _, healthy_weights = reference(ids, return_weights=True)
        if sum(p.numel() for p in model.parameters()) > sum(p.numel() for p in reference.parameters()):
            return "untied"  # a second (V, d_model) matrix: the head is not the embedding
        if max(float((w.sum(-1) - 1).abs().max()) for w in weights) > 1e-3:
            return "softmax_axis"  # the rows of the weights do not sum to 1
        if max(float(w.triu(1).abs().max()) for w in weights) > 1e-3:
            return "mask_leak"  # weight above the diagonal: queries see later keys
        if future_leaks(model, ids, V).any():
            return "norm_axis"  # the future leaks although the attention weights are causal
        lengths = torch.tensor([6, 6])  # left padding: the first 6 tokens of each sequence
        padded = ids.clone()
        padded[:, :6] = (padded[:, :6] + 1) % V
        if (model(padded, lengths)[:, 6:] - model(ids, lengths)[:, 6:]).abs().max() > 1e-3:
            return "padding_query"  # changing padded tokens moves the real tokens' outputs
        if (model(ids, offset=5) - logits).abs().max() > 1e-3:
            return "rope_on_v"  # RoPE on q and k alone does not care where the sequence starts
        entropy = torch.stack([attention_entropy(w).mean() for w in weights]).mean()
        healthy = torch.stack([attention_entropy(w).mean() for w in healthy_weights]).mean()
        if entropy < 0.6 * healthy:
            return "no_scale"  # nearly one-hot weights: the scores are too large
        if update_ratios(helpers.diagnostics.residual_stream(model, ids))[0] > 0.9:
            return "no_residual"  # block 0 replaces the stream instead of editing it
    return None
    ### END SOLUTION


# %% id="ex4-test" kind="test" points=1
from helpers.checks.diagnostics import check_bug_hunt

check_bug_hunt(find_bug, grade=False)

# %% id="ex4-hidden" kind="test" points=3
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_bug_hunt(find_bug, secret=2026)
### END HIDDEN TESTS

# %% [markdown] id="ex5"
# ## Exercise 5: numbers
#
# *Difficulty* ●○○○○ · *Importance* ●●●○○ · *Time* ~5 min · *Points*
#
# Answer with numbers (Python ints or floats).
#
# 1. `max_entropy_1024`: the largest entropy, in nats, that one query's attention over `T = 1024`
#    keys can have.
# 2. `causal_max_query_9`: in a causal decoder, the largest entropy (nats) of query 9 (positions
#    count from 0).
# 3. `leak_test_passes`: how many forward passes does your `future_leaks` make on a sequence of
#    `T = 128` tokens?
#
# <details><summary>Hint: the test says "in bits"</summary>
#
# `math.log` is the natural log (nats); `math.log2` gives bits.
# </details>

# %% id="ex5-answer" kind="answer"
max_entropy_1024 = None
causal_max_query_9 = None
leak_test_passes = None
### BEGIN SOLUTION
max_entropy_1024 = math.log(1024)  # uniform over 1024 keys
causal_max_query_9 = math.log(10)  # query 9 sees keys 0..9
leak_test_passes = 1 + 128  # the baseline, then one run per changed position
### END SOLUTION

# %% id="ex5-test" kind="test" points=2
from helpers.checks.diagnostics import check_diagnostics_numbers

check_diagnostics_numbers(max_entropy_1024=max_entropy_1024, causal_max_query_9=causal_max_query_9,
                          leak_test_passes=leak_test_passes)

# %% id="ex5-hidden" kind="test" points=1
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
_answers = {"max_entropy_1024": max_entropy_1024, "causal_max_query_9": causal_max_query_9,
            "leak_test_passes": leak_test_passes}
_unanswered = [_n for _n, _v in _answers.items() if _v is None]
assert not _unanswered, f"no answer yet for {', '.join(_unanswered)}: assign each a value and run its cell"
assert abs(float(max_entropy_1024) - 10 * math.log(2)) < 1e-3 and int(leak_test_passes) == 129
assert abs(float(causal_max_query_9) - math.log(2) - math.log(5)) < 1e-3
### END HIDDEN TESTS

# %% [markdown] id="ex6"
# ## Exercise 6: write a transformer debugging checklist
#
# *Difficulty* ●●●○○ · *Importance* ●●●●● · *Time* ~25 min · *Points* (graded by your instructor)
#
# Write the checklist you would run on a new transformer implementation before trusting its loss
# curve, in the cell below (Markdown; a numbered list is fine). For each item say **what** you
# measure, **what a healthy model shows**, and **which bug** a failure points at. Cover at least
# shapes, masks (causal and padding), attention weights or entropy, the residual stream, and the loss
# at the start of training; add anything else you found useful in the bug hunt.
#
# <details><summary>Hint: what makes an item useful</summary>
#
# "Check the mask" is not yet an item. "Change token j and check that no output before j moves (with a
# tolerance); if one does, the causal mask is missing or misaligned" is.
# </details>
# %% [markdown] id="ex6-answer" kind="manual" points=4
# ### BEGIN SOLUTION
# **Rubric (4 points; for the grader).** One point each for:
#
# 1. **Shapes and masks**: a shape check of the intermediate tensors against a planned shape map
#    (naming the first tensor that differs), *and* a causal-leak test that perturbs every position (or
#    takes gradients) and compares with a tolerance, with what a failure means (a missing or misaligned
#    causal mask, a norm or statistic over the sequence axis).
# 2. **Padding and attention weights**: changing padded tokens must not move real tokens' outputs
#    (padding blocks keys, not queries); weight rows sum to 1 over the keys and are zero above the
#    diagonal (softmax axis, mask).
# 3. **Entropy and residual stream**: entropy per layer and head against `ln T` (near 0 everywhere at
#    initialisation: a missing `1/sqrt(d_head)`); stream norms and update ratios per layer (a ratio
#    near 1: a missing residual; exploding norms: depth, Post-LN, learning rate).
# 4. **Loss and parameters**: the initial loss is about `ln V`; the loss ends below a simple baseline
#    and a loss far below what the data allows is a leak; the parameter count matches the formula
#    (tied weights are one tensor); with RoPE, shifting all positions leaves outputs unchanged.
#
# Half a point off an item that names a measurement without saying what a healthy model shows or
# which bug a failure indicates. A list copied from the theory notebook without the "which bug" part
# earns at most 2 points.
#
# **A model answer.**
#
# 1. Shapes: `shape_report` on one batch; every tensor matches the shape map; the first differing
#    tensor is the bug's location (wrong `n_heads`, transposed split).
# 2. Causal leaks: perturb each token `j` and compare outputs `i < j` with a tolerance (and
#    `∂y_i/∂x_j = 0` for `j > i`); a failure means a missing mask or a statistic across positions.
# 3. Padding: change padded tokens; real outputs must not move; padded keys get zero weight.
# 4. Weights: rows sum to 1 over keys; zero above the diagonal.
# 5. Entropy per head vs `ln T`: all near 0 at init means unscaled scores.
# 6. Residual stream: update ratios well below 1; a ratio ≥ 1 means a block replaces the stream.
# 7. Positions: with RoPE, `model(ids, offset=k)` equals `model(ids)`.
# 8. Parameters: count equals the formula; tied weights are the same tensor.
# 9. Loss: starts at `ln V`, falls below the bigram baseline, never impossibly low.
# ### END SOLUTION

# %% [markdown] id="ex7"
# ## Exercise 7: ablation verdicts
#
# *Difficulty* ●●○○○ · *Importance* ●●●●○ · *Time* ~15 min · *Points*
#
# An ablation trains the baseline and each changed config on the same `S` seeds. `losses` `(C, S)`
# holds the validation loss of config `c` trained with seed `s`: row 0 is the **baseline**, each other
# row changes one thing. Write `ablation_verdicts(losses, z=2.0)` that says which changes moved the
# loss by more than two seeds of the same config differ, as the theory notebook's ablation section
# does (`helpers.diagnostics.ablation_summary`):
#
# $$
# \Delta_c = \bar L(c) - \bar L(0), \qquad
# \hat\sigma^2 = \frac1C \sum_{c} \frac{1}{S-1} \sum_s \big(L(c, s) - \bar L(c)\big)^2, \qquad
# \operatorname{se} = \hat\sigma \sqrt{2/S},
# $$
#
# with $\bar L(c)$ the mean of row `c` over its seeds. A change is `"worse"` when
# $\Delta_c > z \cdot \operatorname{se}$ (the noise floor), `"better"` when $\Delta_c < -z \cdot
# \operatorname{se}$, and `"within noise"` otherwise. Return a dict:
#
# | key | what |
# |---|---|
# | `"delta"` | `(C,)` tensor in the dtype of `losses`: $\Delta_c$ for every row (`delta[0]` is 0) |
# | `"se"` | the standard error: one number for the whole table (a Python float or a 0-d tensor) |
# | `"verdicts"` | a list of `C` strings: `"baseline"` for row 0, then `"worse"`, `"better"` or `"within noise"` |
#
# The test runs your function on tables of 3 to 5 seeds and other `z`: changes far from the noise
# floor, a control row that repeats the baseline's losses exactly, and rows just inside and just
# outside the floor. Torch operations or plain loops are both fine; `helpers.diagnostics` (the
# reference) is refused.
#
# <details><summary>Hint: the test says se is sigma, or sigma / sqrt(S)</summary>
#
# Each mean over `S` seeds has variance $\sigma^2 / S$; $\Delta_c$ is the difference of two such
# means, whose variances add: $2\sigma^2/S$. Its standard error is the square root of that.
# </details>
#
# <details><summary>Hint: the test says the variances divide by S, or that se has one value per config</summary>
#
# Each row's sample variance divides by `S - 1` (torch's `var` does by default); the noise is pooled:
# average the `C` variances, the baseline's included, then take one square root.
# </details>

# %% id="ex7-answer" kind="answer"
def ablation_verdicts(losses, z=2.0):
    ### BEGIN SOLUTION
    C, S = losses.shape
    means = losses.mean(dim=1)  # (C,): each config's mean over its seeds
    delta = means - means[0]  # (C,): against the baseline, row 0
    sigma = losses.var(dim=1).mean().sqrt()  # (): the pooled seed noise (sample variances, S - 1)
    se = sigma * math.sqrt(2 / S)  # (): the standard error of a difference of two S-seed means
    floor = float(z * se)
    verdicts = ["baseline"]
    for change in delta[1:].tolist():
        verdicts.append("worse" if change > floor else "better" if change < -floor else "within noise")
    return {"delta": delta, "se": se, "verdicts": verdicts}
    ### END SOLUTION


# %% id="ex7-test" kind="test" points=2
from helpers.checks.diagnostics import check_ablation_verdicts

check_ablation_verdicts(ablation_verdicts)

# %% id="ex7-hidden" kind="test" points=1
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_ablation_verdicts(ablation_verdicts, seed=5, C=6, S=5, z=3.0, dtype=torch.float64)
check_ablation_verdicts(ablation_verdicts, seed=7, C=4, S=4, z=2.5, dtype=torch.float64)
### END HIDDEN TESTS
