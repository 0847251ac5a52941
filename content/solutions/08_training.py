# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] id="intro"
# # Chapter 08 exercises: training signals
#
# You will write the losses and inputs a transformer is trained with: the next-token loss with its
# shift by one, BERT's masking for the masked-LM loss, a decoder's teacher-forcing inputs, weight
# tying and the labels of a padded batch, and answer three counting questions:
#
# | # | exercise |
# |---|---|
# | 1 | `lm_loss(logits, ids, ignore_index=-100)`: the next-token loss, padding ignored |
# | 2 | `mlm_mask(ids, mask_id, vocab_size, generator)`: 15 %, then 80 / 10 / 10 |
# | 3 | `teacher_forcing_inputs(targets, bos_id)` |
# | 4 | `tie_weights(model)`: one matrix for the embedding and the LM head |
# | 5 | counting: parameters saved by tying, the loss of a fresh model, random tokens in a batch |
# | 6 | `padding_labels(ids, attention_mask)`: a loss mask that agrees with the attention mask |
# | 7 | reading loss curves: name the fault planted in each of five training runs |
#
# **How it works.** Write your answer in the cell marked `# YOUR CODE HERE` (delete the
# `raise NotImplementedError()` line), run it, then run the test cell below it. A visible test
# prints a line starting with ✓ when your answer is right; otherwise it stops with one sentence
# saying what is wrong. After each visible test sits a hidden test: it runs when the notebook is
# graded, with other shapes, seeds and `float64` inputs, so make your functions general.
#
# **Conventions.** `B` batch, `T` sequence, `V` vocabulary. Token ids are `int64`. A label or target
# equal to `ignore_index = -100` is not scored (the convention of `torch.nn.functional.cross_entropy`).
# Losses are in nats (natural log) and averaged over the scored positions.
#
# Write the losses yourself from `torch.log_softmax` or `torch.logsumexp` and indexing: an answer
# that calls `helpers.training` (the reference), `F.cross_entropy`, `F.nll_loss` or torch's loss
# modules is refused by the checks and scores no points. No exercise here trains a model; the theory
# notebook does that (exercise 7 reads the curves of runs trained beforehand). Run the next cell first.

# %% id="setup"
import math

import torch

import helpers
import helpers.checks.training  # load the checks before any answer runs

helpers.seed_everything(0)
torch.set_printoptions(precision=4, sci_mode=False)

# %% [markdown] id="ex1"
# ## Exercise 1: the next-token loss
#
# *Difficulty* ●●○○○ · *Importance* ●●●●● · *Time* ~15 min · *Points*
#
# A decoder reads `ids` `(B, T)` and returns `logits` `(B, T, V)`. The logits at position `t` are its
# guess for the **next** token, `ids[:, t + 1]`. Write `lm_loss(logits, ids, ignore_index=-100)`:
#
# $$
# \mathcal{L} = \frac{1}{N}\sum_{b}\ \sum_{t \,:\, \mathrm{ids}[b, t+1] \ne \text{ignore}}
# \Big(\log\sum_{v} e^{z_{b,t,v}} - z_{b,t,\mathrm{ids}[b,t+1]}\Big)
# $$
#
# where $z$ = `logits` and $N$ is the number of scored targets. Return a scalar tensor (shape `()`)
# of the logits' dtype. The last position has no next token; a target equal to `ignore_index` (a
# padding position) counts neither in the sum nor in $N$. The visible test has a right-padded batch.
#
# <details><summary>Hint: the test says there is no shift</summary>
#
# Pair `logits[:, :-1]` (predictions for positions 0..T-2) with `ids[:, 1:]` (the tokens at 1..T-1).
# </details>
#
# <details><summary>Hint: the test says the mean includes padding</summary>
#
# Build `keep = targets != ignore_index`, zero the ignored losses, and divide by `keep.sum()`, not by
# the number of positions. Index with a safe target (e.g. 0) where ignored, or gather would fail on -100.
# </details>
#
# <details><summary>Hint: my loss is about log V no matter what</summary>
#
# You probably applied `softmax` before `log_softmax`: the loss wants raw logits.
# </details>

# %% id="ex1-answer" kind="answer"
def lm_loss(logits, ids, ignore_index=-100):
    ### BEGIN SOLUTION
    preds, targets = logits[:, :-1], ids[:, 1:]  # (B, T-1, V), (B, T-1)
    keep = targets != ignore_index  # (B, T-1)
    safe = torch.where(keep, targets, torch.zeros_like(targets))  # (B, T-1)
    log_p = torch.log_softmax(preds, dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # (B, T-1)
    return -(log_p * keep).sum() / keep.sum()  # ()
    ### END SOLUTION


# %% id="ex1-test" kind="test" points=2
from helpers.checks.training import check_lm_loss

check_lm_loss(lm_loss)

# %% id="ex1-hidden" kind="test" points=2
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_lm_loss(lm_loss, seed=5, dtype=torch.float64, B=4, T=9, V=6)
check_lm_loss(lm_loss, seed=8, dtype=torch.float32, B=1, T=3, V=13)
### END HIDDEN TESTS

# %% [markdown] id="ex2"
# ## Exercise 2: masking for a masked-LM
#
# *Difficulty* ●●●○○ · *Importance* ●●●●○ · *Time* ~20 min · *Points*
#
# BERT is trained to recover hidden tokens. Write `mlm_mask(ids, mask_id, vocab_size, generator)`
# returning `(inputs, labels)`, both shaped like `ids` `(B, T)`:
#
# 1. each position is **selected** with probability 0.15;
# 2. a selected position becomes `mask_id` with probability 0.8, a uniformly random token
#    (`0 .. vocab_size - 1`) with probability 0.1, and stays itself with probability 0.1;
# 3. `labels` holds the original token at selected positions and `-100` everywhere else.
#
# So that a seed gives exact values, draw the random numbers from `generator` in this order, each
# with the shape of `ids`: `u = torch.rand(ids.shape, generator=generator)` (selected where
# `u < 0.15`), `r = torch.rand(ids.shape, generator=generator)` (mask token where `r < 0.8`,
# random token where `0.8 <= r < 0.9`), `random_ids = torch.randint(0, vocab_size, ids.shape,
# generator=generator)`. The check first measures the rates on 32 000 tokens, then compares
# exact values for two seeds.
#
# <details><summary>Hint: the test says every selected position became the mask token</summary>
#
# Only 80 % of them: `selected & (r < 0.8)` gets the mask token, `selected & (r >= 0.8) & (r < 0.9)`
# a random token, the rest keep theirs.
# </details>
#
# <details><summary>Hint: the rates are right but the values differ</summary>
#
# Draw exactly three tensors, in the order above, all with `generator=generator`, even if a step
# does not need every entry.
# </details>

# %% id="ex2-answer" kind="answer"
def mlm_mask(ids, mask_id, vocab_size, generator):
    ### BEGIN SOLUTION
    u = torch.rand(ids.shape, generator=generator)  # (B, T)
    r = torch.rand(ids.shape, generator=generator)  # (B, T)
    random_ids = torch.randint(0, vocab_size, ids.shape, generator=generator)  # (B, T)
    selected = u < 0.15  # (B, T)
    inputs = torch.where(selected & (r < 0.8), torch.full_like(ids, mask_id), ids)  # (B, T)
    inputs = torch.where(selected & (r >= 0.8) & (r < 0.9), random_ids, inputs)  # (B, T)
    labels = torch.where(selected, ids, torch.full_like(ids, -100))  # (B, T)
    return inputs, labels
    ### END SOLUTION


# %% id="ex2-test" kind="test" points=2
from helpers.checks.training import check_mlm_mask

check_mlm_mask(mlm_mask)

# %% id="ex2-hidden" kind="test" points=2
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_mlm_mask(mlm_mask, seed=7, B=3, T=41, V=17)
check_mlm_mask(mlm_mask, seed=11, B=1, T=64, V=100)
### END HIDDEN TESTS

# %% [markdown] id="ex3"
# ## Exercise 3: teacher-forcing inputs
#
# *Difficulty* ●○○○○ · *Importance* ●●●●○ · *Time* ~5 min · *Points*
#
# A decoder learning to produce `targets` `(B, T)` (a translation, an answer) is fed the **true**
# previous tokens, not its own guesses: that is teacher forcing, and it lets all `T` positions train
# in one parallel pass. Write `teacher_forcing_inputs(targets, bos_id)` returning `(B, T)` inputs:
# the start token `bos_id` first, then the targets shifted right by one.
#
# | position | 0 | 1 | ... | T-1 |
# |---|---|---|---|---|
# | input | BOS | $y_0$ | ... | $y_{T-2}$ |
# | target | $y_0$ | $y_1$ | ... | $y_{T-1}$ |
#
# <details><summary>Hint</summary>
#
# `torch.cat([a column of bos_id, targets[:, :-1]], dim=1)`; a column is `torch.full_like(targets[:, :1], bos_id)`.
# </details>

# %% id="ex3-answer" kind="answer"
def teacher_forcing_inputs(targets, bos_id):
    ### BEGIN SOLUTION
    bos = torch.full_like(targets[:, :1], bos_id)  # (B, 1)
    return torch.cat([bos, targets[:, :-1]], dim=1)  # (B, T)
    ### END SOLUTION


# %% id="ex3-test" kind="test" points=1
from helpers.checks.training import check_teacher_forcing_inputs

check_teacher_forcing_inputs(teacher_forcing_inputs)

# %% id="ex3-hidden" kind="test" points=1
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_teacher_forcing_inputs(teacher_forcing_inputs, seed=5, B=2, T=9, V=7)
### END HIDDEN TESTS

# %% [markdown] id="ex4"
# ## Exercise 4: weight tying
#
# *Difficulty* ●●○○○ · *Importance* ●●●○○ · *Time* ~10 min · *Points*
#
# The token embedding `model.tok_emb` (an `nn.Embedding`, weight `(V, d_model)`) and the LM head
# `model.lm_head` (an `nn.Linear(d_model, V)`, weight `(V, d_model)` too) have matrices of the same
# shape. GPT-2 and many others use **one** matrix for both. Write `tie_weights(model)` that makes
# the head use the embedding's weight, in place (return nothing). The check gives you a
# `helpers.blocks.TinyDecoder` built with `tie_weights=False` and then verifies that the two are one
# `nn.Parameter` with shared storage, that the parameter count dropped by exactly `V * d_model`,
# and that the shared weight still gets a gradient.
#
# <details><summary>Hint: the test says the head got a copy</summary>
#
# `clone()`, `copy_()` and `nn.Parameter(other.data)` all leave two tensors (or two Parameters) that
# an optimizer updates separately. Assign the Parameter object itself.
# </details>

# %% id="ex4-answer" kind="answer"
def tie_weights(model):
    ### BEGIN SOLUTION
    model.lm_head.weight = model.tok_emb.weight  # one Parameter, two uses
    ### END SOLUTION


# %% id="ex4-test" kind="test" points=2
from helpers.checks.training import check_tie_weights

check_tie_weights(tie_weights)

# %% id="ex4-hidden" kind="test" points=1
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_tie_weights(tie_weights, seed=3, V=29, d_model=8)
### END HIDDEN TESTS

# %% [markdown] id="ex5"
# ## Exercise 5: count it
#
# *Difficulty* ●●○○○ · *Importance* ●●●○○ · *Time* ~10 min · *Points*
#
# Answer with numbers (Python ints or floats).
#
# 1. `saved_gpt2`: GPT-2 small has `V = 50257` and `d_model = 768`. How many parameters does tying
#    its LM head to its token embedding save?
# 2. `initial_loss`: a freshly initialized model with `V = 512` gives (almost) every token the same
#    probability. What next-token loss (in nats) does it start at?
# 3. `random_tokens`: BERT's masking of a batch of `32` sequences of `128` tokens. On average, how
#    many positions get a **random** token?
#
# <details><summary>Hint</summary>
#
# 1: one `(V, d_model)` matrix. 2: $-\log(1/V)$. 3: positions x 0.15 x 0.1.
# </details>

# %% id="ex5-answer" kind="answer"
saved_gpt2 = None
initial_loss = None
random_tokens = None
### BEGIN SOLUTION
saved_gpt2 = 50257 * 768
initial_loss = math.log(512)
random_tokens = 32 * 128 * 0.15 * 0.1
### END SOLUTION

# %% id="ex5-test" kind="test" points=2
from helpers.checks.training import check_training_numbers

check_training_numbers(saved_gpt2=saved_gpt2, initial_loss=initial_loss, random_tokens=random_tokens)

# %% id="ex5-hidden" kind="test" points=1
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
_unanswered = [_n for _n, _v in {"saved_gpt2": saved_gpt2, "initial_loss": initial_loss, "random_tokens": random_tokens}.items() if _v is None]
assert not _unanswered, f"no answer yet for {', '.join(_unanswered)}: assign each a value and run its cell"
assert int(saved_gpt2) == 38597376 and float(saved_gpt2) == 38597376
assert abs(float(initial_loss) - 9 * math.log(2)) < 1e-3 and abs(float(random_tokens) - 61.44) < 1e-6
### END HIDDEN TESTS

# %% [markdown] id="ex6"
# ## Exercise 6: labels that agree with the attention mask
#
# *Difficulty* ●○○○○ · *Importance* ●●●●○ · *Time* ~5 min · *Points*
#
# A batch of sequences of different lengths is padded to one length `T`. The **attention mask**
# `attention_mask` `(B, T)` is `True` where a token is real and `False` at padding. The loss must
# agree with it: padding is never a target. Write `padding_labels(ids, attention_mask)` returning
# labels `(B, T)` for your `lm_loss` of exercise 1: the token id where the token is real, `-100`
# where it is padding. Do **not** shift: `lm_loss` shifts. The check uses right padding (padding
# after the text) and left padding (before it, as batched generation does).
#
# <details><summary>Hint</summary>
#
# One call: `ids.masked_fill(~attention_mask, -100)`, or `torch.where(attention_mask, ids, -100)`.
# </details>

# %% id="ex6-answer" kind="answer"
def padding_labels(ids, attention_mask):
    ### BEGIN SOLUTION
    return ids.masked_fill(~attention_mask, -100)  # (B, T)
    ### END SOLUTION


# %% id="ex6-test" kind="test" points=1
from helpers.checks.training import check_padding_labels

check_padding_labels(padding_labels)

# %% id="ex6-hidden" kind="test" points=1
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_padding_labels(padding_labels, seed=5, B=4, T=11, V=7)
### END HIDDEN TESTS

# %% [markdown] id="ex7"
# ## Exercise 7: what went wrong in this run?
#
# *Difficulty* ●●●○○ · *Importance* ●●●●○ · *Time* ~15 min · *Points*
#
# A loss curve is the first thing you look at when a run misbehaves. The next cell plots five runs
# of one recipe: a 16-layer Post-LN decoder (RoPE, `d_model` 32) trained for 100 steps on the course's
# Markov language of 26 letters (chapter 00), peak learning rate `2e-2` reached by a 70-step linear
# warm-up (chapter 04's set-up, 4 layers deeper). One run follows the recipe; each of the other four
# has one fault planted in it. Each panel shows a run's training loss per step (thin line) and its
# validation loss (dots), with three levels: **ln V** = ln 26 = 3.26 nats (a model that knows nothing), the
# **unigram entropy** (a model that knows only how often each letter occurs) and the **entropy rate**
# (the floor: the language's own uncertainty, the lowest loss any model that predicts the next
# letter from the past can reach).
#
# | fault name | what was planted |
# |---|---|
# | `"healthy"` | nothing: the recipe |
# | `"lr_too_high"` | a peak learning rate far too high (with the same warm-up) |
# | `"no_warmup"` | no warm-up: the peak learning rate from the first step |
# | `"mask_leak"` | the causal mask left out: each position can see the token it predicts |
# | `"frozen_layers"` | the optimizer was given the token embedding only; the 16 blocks never change |
#
# Assign `answers = {"A": ..., "B": ..., "C": ..., "D": ..., "E": ...}`: each curve's label to the
# name of its fault, each name used once. Read the curves; do not open the data file.
#
# <details><summary>Hint: two curves end on a plateau and I cannot tell them apart</summary>
#
# Compare the plateau with the unigram entropy and look at the first twenty steps. A run that sits
# **at** the unigram level from its first steps on learned the letter frequencies and then broke; a
# run that learned **past** the unigram level and then flattened above the healthy one kept learning
# with only part of its weights.
# </details>
#
# <details><summary>Hint: the test says a curve is not healthy, but it has the lowest loss</summary>
#
# No model that predicts honestly goes below the entropy rate. A loss below the floor means the
# model sees what it should predict.
# </details>

# %% id="ex7-curves"
import matplotlib.pyplot as plt

from helpers.loss_curves import labelled_curves

runs = labelled_curves()
fig, axes = plt.subplots(1, 5, figsize=(16, 3.2), sharex=True)
for ax, (label, run) in zip(axes, runs["curves"].items()):
    ax.plot(range(1, len(run["train_loss"]) + 1), run["train_loss"], lw=0.8)
    ax.plot(run["val_steps"], run["val_loss"], "o", ms=3)
    for level, style in (("uniform", "k:"), ("unigram", "g--"), ("entropy_rate", "r--")):
        ax.axhline(runs[level], ls=style[1:], color=style[0], lw=0.8)
    ax.set_ylim(0, max(4.5, 1.05 * max(run["train_loss"])))  # a run that climbs far keeps its own scale
    ax.set_title(f"{label}: final val {run['val_loss'][-1]:.2f}, max {max(run['train_loss']):.1f}")
    ax.set_xlabel("step")
axes[0].set_ylabel("loss (nats)")
fig.legend(["train", "validation", "ln V", "unigram entropy", "entropy rate"], loc="upper right", ncol=5)
fig.tight_layout(rect=(0, 0, 1, 0.9))
plt.show()
print(f"ln V = {runs['uniform']:.2f}, unigram entropy = {runs['unigram']:.2f}, "
      f"entropy rate = {runs['entropy_rate']:.2f} nats")

# %% id="ex7-answer" kind="answer"
answers = {"A": None, "B": None, "C": None, "D": None, "E": None}
### BEGIN SOLUTION
answers = {"A": "mask_leak", "B": "healthy", "C": "frozen_layers", "D": "no_warmup", "E": "lr_too_high"}
### END SOLUTION

# %% id="ex7-test" kind="test" points=2
from helpers.checks.training import check_loss_curves

check_loss_curves(answers)

# %% id="ex7-hidden" kind="test" points=1
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_loss_curves(answers)
### END HIDDEN TESTS

# %% [markdown] id="outro"
# ## Done
#
# With every visible test passing you have written the training signals of both model families:
# the shifted next-token loss of a decoder (GPT), the masked-LM inputs and labels of an encoder
# (BERT), the teacher-forcing inputs of a decoder that learns a target sequence, weight tying,
# labels that agree with the attention mask, and read the loss curves of five planted faults.
# The theory notebook trains a model with them. To see all your points, including the hidden
# tests, grade the whole notebook (see the README's learner section).
