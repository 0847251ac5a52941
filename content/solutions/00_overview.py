# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] id="intro"
# # Chapter 00 exercises: tokens, the shape map, the tour, order, budgets
#
# You will follow text the whole way into a decoder-only model and back out as next-token scores:
# turn text into ids and back, take one step of byte-pair encoding, count tokens, write down the
# shape of every tensor in a block, run the whole model as one function, test whether a layer
# cares about token order, and fit a request into a context window:
#
# | # | exercise |
# |---|---|
# | 1 | a character tokenizer: `char_encode(text, vocab)`, `char_decode(ids, vocab)` |
# | 2 | one step of byte-pair encoding: `most_frequent_pair(ids)`, `merge_pair(ids, pair, new_id)` |
# | 3 | counting tokens with the course's tokenizers |
# | 4 | the block shape map: `shape_map(B, T, d_model, n_heads, d_ff, vocab)` |
# | 5 | the tour in one function: `lm_forward(ids, wte, wpe, blocks, final_norm)` |
# | 6 | a permutation-equivariance test: `is_permutation_equivariant(f, x)` |
# | 7 | the prompt token budget |
#
# **How it works.** Write your answer in the cell marked `# YOUR CODE HERE` (delete the
# `raise NotImplementedError()` line), run it, then run the test cell below it. A visible test
# prints a line starting with ✓ when your answer is right; otherwise it stops with one sentence
# saying what is wrong. After each visible test sits a hidden test: it runs when the notebook is
# graded, with other texts, sizes, seeds and `float64` inputs, so make your functions general
# rather than fitted to the visible test.
#
# **Conventions** (the same in every chapter): tensors are `torch`; shapes are written `B` batch,
# `T` sequence, `d_model` features per token, `H` heads, `d_head = d_model / H`, `d_ff` hidden
# width of the feed-forward network, `V` vocabulary size. Token ids are integers `0 .. V-1`; a
# batch of them has shape `(B, T)`. Every block maps `(B, T, d_model)` to `(B, T, d_model)`.
#
# Write the answers yourself: an answer that calls the course's reference for the same thing
# (`helpers.overview`, `helpers.tokenizers`' encoders and merge functions, `helpers.blocks`'
# forward pass) is refused by the checks and scores no points. Run the next cell first.

# %% id="setup"

import torch

import helpers
import helpers.checks.overview  # load the checks before any answer runs
from helpers.corpus import load_corpus
from helpers.tokenizers import course_bpe, course_chars

helpers.seed_everything(0)
torch.set_printoptions(precision=4, sci_mode=False)

# %% [markdown] id="ex1"
# ## Exercise 1: a character tokenizer
#
# *Difficulty* ●○○○○ · *Importance* ●●●●○ · *Time* ~10 min · *Points*
#
# A model never sees text, only integer ids. The simplest tokenizer gives every character its own
# id: its position in a vocabulary string. With `vocab = " .acehmnost"`, the space is id 0, `"."`
# is id 1, `"a"` is id 2, and `"cat"` is `[3, 2, 10]`.
#
# Write
#
# | function | returns |
# |---|---|
# | `char_encode(text, vocab)` | a list of ints, one id per character of `text`, repeats included |
# | `char_decode(ids, vocab)` | the string those ids stand for: `char_decode(char_encode(t, v), v) == t` |
#
# A character that is not in `vocab` has no id: `char_encode` must **raise an error** (any
# exception, e.g. `ValueError`) rather than skip it, or the round trip would silently lose text.
#
# <details><summary>Hint: my ids are numbers like 116 and 104</summary>
#
# Those are Unicode code points, `ord(ch)`. The id is the character's index in `vocab`:
# `vocab.index(ch)` (which also raises `ValueError` for a missing character).
# </details>
#
# <details><summary>Hint: decode returns a list, or letters with spaces between them</summary>
#
# Join the characters with nothing between them: `"".join(...)`.
# </details>

# %% id="ex1-answer" kind="answer"
def char_encode(text, vocab):
    ### BEGIN SOLUTION
    index = {ch: i for i, ch in enumerate(vocab)}
    ids = []
    for ch in text:
        if ch not in index:
            raise ValueError(f"character {ch!r} is not in the vocabulary")
        ids.append(index[ch])
    return ids
    ### END SOLUTION


def char_decode(ids, vocab):
    ### BEGIN SOLUTION
    return "".join(vocab[i] for i in ids)
    ### END SOLUTION


# %% id="ex1-test" kind="test" points=1
from helpers.checks.overview import check_char_tokenizer

check_char_tokenizer(char_encode, char_decode)

# %% id="ex1-hidden" kind="test" points=2
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_char_tokenizer(char_encode, char_decode, text="hello, world! hello.", vocab=" !,.dehlorw", seed=5)
_text = load_corpus("val")[:2000]
_vocab = "".join(sorted(set(_text)))
assert char_decode(char_encode(_text, _vocab), _vocab) == _text, "the round trip on the corpus is not exact"
### END HIDDEN TESTS

# %% [markdown] id="ex2"
# ## Exercise 2: one step of byte-pair encoding
#
# *Difficulty* ●●○○○ · *Importance* ●●●○○ · *Time* ~15 min · *Points*
#
# Byte-pair encoding (BPE) builds longer tokens by repeating one step: find the adjacent pair of
# ids that occurs most often, and replace it everywhere by a new id. The course's BPE
# (`helpers.tokenizers.course_bpe()`) ran this step 256 times on the corpus. Write its two halves:
#
# | function | returns |
# |---|---|
# | `most_frequent_pair(ids)` | the tuple `(left, right)` of the adjacent pair that occurs most often; `None` when `len(ids) < 2` |
# | `merge_pair(ids, pair, new_id)` | a **new** list in which every occurrence of `pair` is replaced by `new_id`, left to right |
#
# Rules, so that training gives the same tokens on every machine:
#
# * count every adjacent pair, overlapping ones included: `[9, 9, 9]` holds `(9, 9)` twice;
# * **ties** go to the smallest pair: smallest left id, then smallest right id;
# * merging works left to right and never reuses an id: `merge_pair([5, 5, 5], (5, 5), 256)` is
#   `[256, 5]`;
# * do not modify `ids`.
#
# <details><summary>Hint: ties come out wrong</summary>
#
# `Counter.most_common(1)` returns the pair *seen first* among those with the top count. Find the
# top count, then take `min(...)` over the pairs that have it (tuples compare left id first).
# </details>
#
# <details><summary>Hint: merge_pair gives [256, 256] for [5, 5, 5], or loses the last id</summary>
#
# Walk with an index `i`: when `ids[i], ids[i + 1]` is the pair, append `new_id` and jump `i += 2`;
# otherwise append `ids[i]` and move `i += 1`. Loop while `i < len(ids)`, and check `i + 1 < len(ids)`
# before looking at `ids[i + 1]`.
# </details>

# %% id="ex2-answer" kind="answer"
def most_frequent_pair(ids):
    ### BEGIN SOLUTION
    counts = {}
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    if not counts:
        return None
    top = max(counts.values())
    return min(pair for pair, n in counts.items() if n == top)
    ### END SOLUTION


def merge_pair(ids, pair, new_id):
    ### BEGIN SOLUTION
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out
    ### END SOLUTION


# %% id="ex2-test" kind="test" points=1
from helpers.checks.overview import check_merge_pair, check_most_frequent_pair

check_most_frequent_pair(most_frequent_pair)
check_merge_pair(merge_pair)

# %% id="ex2-hidden" kind="test" points=2
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_most_frequent_pair(most_frequent_pair, seed=5)
check_merge_pair(merge_pair, seed=5)
assert most_frequent_pair([4]) is None and most_frequent_pair([]) is None
assert merge_pair([], (1, 2), 3) == [] and merge_pair([7], (7, 7), 9) == [7]
### END HIDDEN TESTS

# %% id="ex2-demo"
# Your two functions, run three times on a short text: the pieces grow.
try:
    _ids = list("the cat sat on the mat".encode("utf-8"))
    for _r in range(3):
        _pair = most_frequent_pair(_ids)
        _ids = merge_pair(_ids, _pair, 256 + _r)
        print(f"merge {_r}: {_pair} -> {256 + _r}; {len(_ids)} tokens")
except NotImplementedError:
    print("Run your answer to exercise 2 first.")

# %% [markdown] id="ex3"
# ## Exercise 3: count tokens
#
# *Difficulty* ●○○○○ · *Importance* ●●●●○ · *Time* ~10 min · *Points*
#
# Context windows, prices and speeds are counted in tokens, not characters or words. Use the
# course's tokenizers (imported in the first cell: `course_chars()`, `course_bpe()`, each with an
# `.encode(text)` method that returns a list of ids) and assign numbers:
#
# 1. `n_char_tokens`: how many tokens the character tokenizer makes of `text` below;
# 2. `n_bpe_tokens`: how many tokens the BPE makes of it;
# 3. `val_chars_per_token`: on the validation split, `load_corpus("val")`, how many characters
#    one BPE token stands for on average (two decimals are enough).
#
# <details><summary>Hint: my BPE count equals the number of words</summary>
#
# BPE tokens are not words: count the ids, `len(course_bpe().encode(text))`.
# </details>

# %% id="ex3-text"
text = "Tokenizers cut text into pieces; the model only ever sees their ids."

# %% id="ex3-answer" kind="answer"
n_char_tokens = None
n_bpe_tokens = None
val_chars_per_token = None
### BEGIN SOLUTION
n_char_tokens = len(course_chars().encode(text))
n_bpe_tokens = len(course_bpe().encode(text))
_val = load_corpus("val")
val_chars_per_token = len(_val) / len(course_bpe().encode(_val))
### END SOLUTION

# %% id="ex3-test" kind="test" points=1
from helpers.checks.overview import check_count_tokens

check_count_tokens(n_char_tokens=n_char_tokens, n_bpe_tokens=n_bpe_tokens, val_chars_per_token=val_chars_per_token)

# %% id="ex3-hidden" kind="test" points=1
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
_unanswered = [_n for _n, _v in {"n_char_tokens": n_char_tokens, "n_bpe_tokens": n_bpe_tokens, "val_chars_per_token": val_chars_per_token}.items() if _v is None]
assert not _unanswered, f"no answer yet for {', '.join(_unanswered)}: assign each a value and run its cell"
assert int(n_char_tokens) == len(text)
assert int(n_bpe_tokens) == len(course_bpe().encode(text)) < len(text)
_v = load_corpus("val")
assert abs(float(val_chars_per_token) - len(_v) / len(course_bpe().encode(_v))) <= 0.006
### END HIDDEN TESTS

# %% [markdown] id="ex4"
# ## Exercise 4: the block shape map
#
# *Difficulty* ●●○○○ · *Importance* ●●●●● · *Time* ~15 min · *Points*
#
# Before writing transformer code, write down the shape of every tensor. Write
# `shape_map(B, T, d_model, n_heads, d_ff, vocab)` returning a dict from these names to shape
# tuples, for one decoder block and the LM head ($d_{\text{head}} = d_{\text{model}} / H$):
#
# | key | tensor |
# |---|---|
# | `"H"` | hidden states entering the block |
# | `"Q"`, `"K"`, `"V"` | queries, keys, values, split into heads (head axis before the tokens) |
# | `"S"` | attention scores $QK^\top / \sqrt{d_{\text{head}}}$ |
# | `"A"` | attention weights, the softmax of the scores |
# | `"O"` | attention output, heads merged and projected |
# | `"mlp_hidden"` | the feed-forward network's hidden layer |
# | `"block_out"` | the block's output |
# | `"logits"` | the LM head's output: next-token scores |
#
# For example `shape_map(2, 7, 12, 3, 40, 50)["H"] == (2, 7, 12)`. Compute the tuples from the
# arguments (no tensors needed); the hidden tests use other configurations.
#
# <details><summary>Hint: the check says Q has no head axis, or is d_model wide</summary>
#
# Each head gets its own slice of width $d_{\text{head}} = d_{\text{model}} / H$, and the head axis
# goes right after the batch: `(B, H, T, d_head)`.
# </details>
#
# <details><summary>Hint: the scores</summary>
#
# Every query is compared with every key: per head, `(T, d_head) @ (d_head, T)` is `T x T`.
# </details>

# %% id="ex4-answer" kind="answer"
def shape_map(B, T, d_model, n_heads, d_ff, vocab):
    ### BEGIN SOLUTION
    d_head = d_model // n_heads
    return {
        "H": (B, T, d_model),
        "Q": (B, n_heads, T, d_head),
        "K": (B, n_heads, T, d_head),
        "V": (B, n_heads, T, d_head),
        "S": (B, n_heads, T, T),
        "A": (B, n_heads, T, T),
        "O": (B, T, d_model),
        "mlp_hidden": (B, T, d_ff),
        "block_out": (B, T, d_model),
        "logits": (B, T, vocab),
    }
    ### END SOLUTION


# %% id="ex4-test" kind="test" points=2
from helpers.checks.overview import check_shape_map

check_shape_map(shape_map)

# %% id="ex4-hidden" kind="test" points=2
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_shape_map(shape_map, configs=[(1, 9, 16, 2, 24, 100), (4, 6, 8, 8, 10, 5)])
check_shape_map(shape_map, configs=[(8, 1024, 768, 12, 3072, 50257), (1, 1, 4, 1, 1, 2)])
### END HIDDEN TESTS

# %% [markdown] id="ex5"
# ## Exercise 5: the tour in one function
#
# *Difficulty* ●●●○○ · *Importance* ●●●●● · *Time* ~15 min · *Points*
#
# Write the forward pass of a decoder-only language model, from token ids to next-token logits:
#
# | argument | shape / type |
# |---|---|
# | `ids` | `(B, T)` integer token ids |
# | `wte` | `(V, d_model)` token embedding table: row `i` is token `i`'s vector |
# | `wpe` | `(T_max, d_model)` learned position table (row `t` for position `t`), or `None` for a model without positions |
# | `blocks` | a sequence of callables (the course's decoder blocks), each `(B, T, d_model) -> (B, T, d_model)` |
# | `final_norm` | a callable `(B, T, d_model) -> (B, T, d_model)` |
# | returns | logits `(B, T, V)` |
#
# 1. look up each token's row of `wte` and add the row of `wpe` for its position;
# 2. run the blocks one after the other;
# 3. apply `final_norm`;
# 4. the LM head reuses the embedding table (weight tying): logits $= h\,W_E^\top$.
#
# Do not call the course's model (`helpers.blocks.decoder_forward` or `TinyDecoder`); calling the
# blocks and `final_norm` you are given is the point.
#
# <details><summary>Hint: indexing a table with a tensor of ids</summary>
#
# `wte[ids]` has shape `(B, T, d_model)`: one row per id. Positions are `0 .. T-1` for every
# sequence, so their rows are `wpe[:T]`, shape `(T, d_model)`, which broadcasts over the batch.
# </details>
#
# <details><summary>Hint: the check says the positions were indexed by token ids</summary>
#
# `wpe[ids]` picks rows by *token*; the position table is indexed by *position*: `wpe[:T]`.
# </details>

# %% id="ex5-answer" kind="answer"
def lm_forward(ids, wte, wpe, blocks, final_norm):
    ### BEGIN SOLUTION
    T = ids.shape[1]
    h = wte[ids]  # (B, T, d_model)
    if wpe is not None:
        h = h + wpe[:T]  # (B, T, d_model) + (T, d_model)
    for block in blocks:
        h = block(h)  # (B, T, d_model)
    h = final_norm(h)  # (B, T, d_model)
    return h @ wte.T  # (B, T, V)
    ### END SOLUTION


# %% id="ex5-test" kind="test" points=2
from helpers.checks.overview import check_lm_forward

check_lm_forward(lm_forward)

# %% id="ex5-hidden" kind="test" points=2
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_lm_forward(lm_forward, seed=5, dtype=torch.float64, B=3, T=4, d_model=8, H=2, V=19, n_layers=3, T_max=24)
check_lm_forward(lm_forward, seed=7, dtype=torch.float32, B=1, T=1, d_model=6, H=1, V=11, n_layers=0, T_max=16)
### END HIDDEN TESTS

# %% [markdown] id="ex6"
# ## Exercise 6: does a layer care about token order?
#
# *Difficulty* ●●●○○ · *Importance* ●●●●○ · *Time* ~15 min · *Points*
#
# A function `f` of a sequence is **permutation equivariant** when reordering its input tokens only
# reorders its outputs in the same way: for every permutation $\pi$ of the positions,
#
# $$
# f(x_{\pi(1)}, \dots, x_{\pi(T)}) = \big(f(x)_{\pi(1)}, \dots, f(x)_{\pi(T)}\big),
# \qquad\text{in code: } f(x[:, \pi]) = f(x)[:, \pi].
# $$
#
# Self-attention without positions and without a mask has this property, so it cannot know the
# order of the words. Write `is_permutation_equivariant(f, x)` that **tests** it:
#
# | argument | meaning |
# |---|---|
# | `f` | a function (an `nn.Module`) mapping `(B, T, d)` to `(B, T, d)` |
# | `x` | a `(B, T, d)` float tensor |
# | returns | `True` if `f(x[:, perm])` equals `f(x)[:, perm]`, `False` otherwise |
#
# * use a permutation of the token axis that **moves every token** (a random one, drawn again while
#   any position stays in place, or `torch.roll`), or try several;
# * equivariant functions agree only up to floating-point rounding: compare with
#   `torch.allclose(a, b, atol=1e-5)`, not `==`;
# * run `f` under `torch.no_grad()`.
#
# The check gives your test a block without positions, a position-aware block, a causal block and
# a few traps, so a test that always answers `True` (or `False`) fails.
#
# <details><summary>Hint: my test says False for the block without positions</summary>
#
# The outputs come back in the new order: compare `f(x[:, perm])` with `f(x)[:, perm]`, not with
# `f(x)`. And use a tolerance: the sums inside attention run in another order after a permutation.
# </details>
#
# <details><summary>Hint: my test says True for the position-aware block</summary>
#
# Is your permutation the identity? Does it act on axis 1 (tokens), not 0 (batch) or 2 (features)?
# </details>

# %% id="ex6-answer" kind="answer"
def is_permutation_equivariant(f, x):
    ### BEGIN SOLUTION
    T = x.shape[1]
    perm = torch.randperm(T)
    while T > 1 and bool((perm == torch.arange(T)).any()):
        perm = torch.randperm(T)  # draw again until every token moves
    with torch.no_grad():
        return torch.allclose(f(x[:, perm]), f(x)[:, perm], atol=1e-5)
    ### END SOLUTION


# %% id="ex6-test" kind="test" points=2
from helpers.checks.overview import check_permutation_test

check_permutation_test(is_permutation_equivariant)

# %% id="ex6-hidden" kind="test" points=2
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
check_permutation_test(is_permutation_equivariant, seed=5, dtype=torch.float64, B=3, T=5, d=12, H=3)
check_permutation_test(is_permutation_equivariant, seed=9, dtype=torch.float32, B=1, T=9, d=4, H=1)
### END HIDDEN TESTS

# %% [markdown] id="ex7"
# ## Exercise 7: the prompt token budget
#
# *Difficulty* ●○○○○ · *Importance* ●●●●● · *Time* ~10 min · *Points*
#
# Everything in a request shares the model's context window: the system prompt, retrieved
# documents, the user's message, **and the answer the model will write** (reserve the output cap).
# The margin is `window - (system + retrieved + user + output)`; a request fits when the margin is
# `>= 0`. Answer with numbers:
#
# 1. `margin_8k`: window 8192; system 600, retrieved 6000, user 400, output cap 1000.
# 2. `margin_4k`: window 4096; system 350, retrieved 3200, user 250, output cap 512.
# 3. `max_retrieved`: in the 8192 window of question 1 (system 600, user 400, output cap 1000),
#    the largest retrieved context, in tokens, that still fits.
# 4. `max_chunks`: the retrieved context comes in chunks of 512 tokens, each wrapped in 8 separator
#    tokens. How many whole chunks fit in `max_retrieved` tokens?
#
# <details><summary>Hint: question 2 comes out positive</summary>
#
# Add the four parts first: the request needs more than 4096 tokens, so it does not fit and the
# margin is negative.
# </details>
#
# <details><summary>Hint: question 3 is off by one</summary>
#
# A request that fills the window exactly still fits: a margin of 0 is allowed.
# </details>

# %% id="ex7-answer" kind="answer"
margin_8k = None
margin_4k = None
max_retrieved = None
max_chunks = None
### BEGIN SOLUTION
margin_8k = 8192 - (600 + 6000 + 400 + 1000)
margin_4k = 4096 - (350 + 3200 + 250 + 512)
max_retrieved = 8192 - 600 - 400 - 1000
max_chunks = max_retrieved // (512 + 8)
### END SOLUTION

# %% id="ex7-test" kind="test" points=2
from helpers.checks.overview import check_token_budget

check_token_budget(margin_8k=margin_8k, margin_4k=margin_4k, max_retrieved=max_retrieved, max_chunks=max_chunks)

# %% id="ex7-hidden" kind="test" points=1
# Hidden tests run when your notebook is graded.
### BEGIN HIDDEN TESTS
_unanswered = [_n for _n, _v in {"margin_8k": margin_8k, "margin_4k": margin_4k, "max_retrieved": max_retrieved, "max_chunks": max_chunks}.items() if _v is None]
assert not _unanswered, f"no answer yet for {', '.join(_unanswered)}: assign each a value and run its cell"
assert int(margin_8k) == 8192 - 8000 and int(margin_4k) == -(350 + 3200 + 250 + 512 - 4096)
assert int(max_retrieved) + 600 + 400 + 1000 == 8192
assert int(max_chunks) * 520 <= int(max_retrieved) < (int(max_chunks) + 1) * 520
### END HIDDEN TESTS

# %% [markdown] id="outro"
# ## Done
#
# With every visible test passing you can turn text into ids and back, say the shape of every
# tensor in a block, run a decoder-only model end to end, test whether a layer knows token order,
# and budget a context window. Next: chapter 01 opens the block and builds attention from its
# parts. To see all your points, including the hidden tests, grade the whole notebook (see the
# README's learner section).
