# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] id="intro"
# # Chapter 00: the transformer at a glance
#
# A decoder-only language model such as GPT-2 or Llama does one thing: given the tokens so far, it
# scores every possible next token. This chapter follows one request the whole way, before the
# later chapters take the model apart: text becomes **tokens**, tokens become **ids**, ids become
# **vectors**, a stack of **blocks** mixes the vectors, and a last matrix turns each vector into
# **next-token logits**. Every tensor on the way has a shape you can write down before running
# anything, and most transformer bugs are a wrong axis in one of them.
#
# | piece | what it does | shape |
# |---|---|---|
# | tokenizer | text -> token ids | `(B, T)` integers |
# | embedding | id -> vector, plus a position vector | `(B, T, d_model)` |
# | block $\times L$ | attention mixes tokens, the MLP transforms each token | `(B, T, d_model)` in and out |
# | final norm + LM head | vector -> one score per vocabulary entry | `(B, T, V)` |
#
# **Map of this notebook.**
#
# 1. Design goal: sequence transduction, and next-token prediction as one
# 2. The tour, step 1: tokens and ids (a character tokenizer and a byte-pair encoding of the course corpus)
# 3. The tour, steps 2 to 4: embeddings, blocks, logits, with a diagram
# 4. The shape contract and the block shape map, measured on a real block
# 5. Parallel training versus recurrence: steps and seconds, measured
# 6. Context mixing: attention reads other tokens, the MLP does not
# 7. Position information: attention alone does not see order (permutation equivariance)
# 8. Stacked blocks: the whole model, its parameter count, weight tying
# 9. The prompt token budget lab
# 10. A synthetic language whose best possible loss is known (for chapter 08)
# 11. Roadmap of the course, common mistakes, self-check, evidence card
#
# Each subtopic follows the same pattern: the idea in plain words, the formula, a worked example
# with real numbers, an implementation check (shapes first, then code), where it shows up in real
# models, and a common mistake run beside the right version. Cells that start with
# `# NBVAL_CHECK_OUTPUT` are claims: the test suite re-runs the notebook and fails if their output
# ever changes.

# %% id="setup"
import math
import time
from dataclasses import replace

import matplotlib.pyplot as plt
import torch
from torch import nn

import helpers
from helpers.attention import causal_mask
from helpers.blocks import DecoderBlock, ModelConfig, TinyDecoder, generate, model_param_count
from helpers.corpus import corpus_documents, corpus_fingerprint, load_corpus, markov_chain
from helpers.ffn import FeedForward, token_influence
from helpers.heads import attention_param_count
from helpers.last_position import last_position_experiment
from helpers.llama import LLAMA2_7B, llama_config
from helpers.numerics import close
from helpers.overview import (
    SHAPE_MAP,
    AddPositions,
    budget_table,
    is_permutation_equivariant,
    largest_retrieved_context,
    measure_shapes,
    remaining_tokens,
    shape_map,
)
from helpers.positions import alibi_slopes, relative_position_bucket, rope_wavelength
from helpers.tokenizers import BPETokenizer, CharTokenizer, course_bpe, course_chars

helpers.seed_everything(0)
device = helpers.get_device()
print("computing on:", device.type)


def randn(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard-normal numbers drawn on the CPU from their own seed, then moved to `device`,
    so that every machine computes on the same inputs."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=dtype).to(device)


def model(seed: int = 0, **config) -> TinyDecoder:
    """A TinyDecoder built from its own seed, in evaluation mode, on `device`."""
    torch.manual_seed(seed)
    return TinyDecoder(ModelConfig(**config)).to(device).eval()

# %% [markdown] id="design"
# ## 1. Design goal: sequence transduction
#
# **Main idea.** A transformer maps a sequence of $T$ vectors to another sequence of $T$ vectors:
# *sequence transduction*. Translation, tagging and language modelling all fit that mould. A
# decoder-only language model reads token ids $x_1, \dots, x_T$ and returns, at every position $t$,
# a score for each of the $V$ vocabulary entries as the next token $x_{t+1}$. Because position $t$
# may only look at positions $\le t$ (a causal mask, chapter 01), one pass over a sequence gives $T$
# predictions at once, and the probability of a whole text factors into them:
#
# $$
# p_\theta(x_1, \dots, x_T) = \prod_{t=1}^{T} p_\theta(x_t \mid x_{<t}),
# \qquad
# p_\theta(\,\cdot \mid x_{\le t}) = \operatorname{softmax}\big(h_t W_{\text{head}}^\top\big) \in \mathbb{R}^{V},
# $$
#
# where $h_t \in \mathbb{R}^{d_{\text{model}}}$ is the last block's output at position $t$ and
# $W_{\text{head}} \in \mathbb{R}^{V \times d_{\text{model}}}$ is the LM head.
#
# **Worked example.** The outline's numbers: $d_{\text{model}} = 768$ split over 12 heads gives each
# head $d_{\text{head}} = 768 / 12 = 64$ features; one head's score matrix for one sequence of 128
# tokens is $128 \times 128$, one score per (query, key) pair. And a tiny model really does return
# one row of $V$ scores per input position.

# %% id="design-example"
# NBVAL_CHECK_OUTPUT
d_model, n_heads, T = 768, 12, 128
print("d_head =", d_model // n_heads, "| one head's score matrix:", (T, T), "=", T * T, "scores")

tiny = model(vocab_size=20, d_model=16, n_heads=2, n_layers=2, max_seq_len=32)
ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6, 5]], device=device)  # (B, T) = (1, 9)
logits = tiny(ids)  # (B, T, V)
print("ids", tuple(ids.shape), "-> logits", tuple(logits.shape), ": one distribution over 20 tokens per position")
probs = torch.softmax(logits[0, -1], dim=-1)  # (V,): the prediction after the last token
print("next-token probabilities sum to", round(probs.sum().item(), 6))

# %% [markdown] id="design-llm"
# **In real LLMs.** GPT-2 small: $V = 50257$, $d_{\text{model}} = 768$, 12 layers of 12 heads, a
# 1024-token window. Llama-2 7B: $V = 32000$, $d_{\text{model}} = 4096$, 32 layers of 32 heads, a
# 4096-token window. Same shapes, bigger numbers.
#
# **Common mistake.** "The model outputs the next token." It outputs **logits**, one score per
# vocabulary entry at every position; sampling or `argmax` turns the last row into a token. Reading
# `logits[:, -1]` during training throws away $T - 1$ of the $T$ predictions a pass makes: the
# forward and backward passes cost the same, but the loss scores $B$ targets instead of $B\,T$.
#
# Run below (`helpers.last_position.last_position_experiment`, about 3 s): the same tiny decoder, the same
# initialization, the same 150 batches of 16 windows of $T = 32$ characters of the course corpus, trained
# twice; only the loss differs. Both are then scored on validation windows, at every position and
# at the last position alone (the only one the wrong run was trained on). Losses are in nats; the
# uniform guess is $\ln V$.

# %% id="design-mistake"
run = last_position_experiment(seed=0)
print(f"targets scored per step: right {run['targets_full']:.0f} (B T) | wrong, logits[:, -1]: "
      f"{run['targets_last']:.0f} (B), {run['targets_full'] / run['targets_last']:.0f}x fewer for the same compute")
print(f"validation loss at initialization: {run['val_init']:.2f} (ln V = {run['uniform']:.2f})")
print(f"after 150 steps, every position: right {run['val_full']:.2f} | wrong {run['val_last']:.2f}")
print(f"after 150 steps, the last position only: right {run['last_pos_full']:.2f} | wrong {run['last_pos_last']:.2f}")

# %% [markdown] id="design-mistake-caption"
# The wrong run learns something (its loss falls below $\ln V$), but it ends far above the right one,
# even at the one position its loss reads: each step gave it 16 targets to learn from instead of 512.
# `tests/test_last_position.py` asserts this ordering on two seeds.

# %% [markdown] id="tokens"
# ## 2. The tour, step 1: tokens and ids
#
# **Main idea.** A model never sees text. A **tokenizer** cuts the text into pieces from a fixed
# vocabulary and replaces each piece by its integer id. Before interpreting anything a model does,
# know what the tokenizer actually produced: which pieces, how many, which ids.
#
# **Formula.** A tokenizer is a pair of maps, and the course requires an exact round trip:
#
# $$
# \text{encode}: \text{text} \to \{0, \dots, V-1\}^T, \qquad
# \text{decode}: \{0, \dots, V-1\}^T \to \text{text}, \qquad
# \text{decode}(\text{encode}(s)) = s .
# $$
#
# **Worked example.** The pieces and their positions: `enumerate` numbers the **positions**
# $0, 1, 2, \dots$, which are not the ids.

# %% id="enumerate-tokens"
# NBVAL_CHECK_OUTPUT
tokens = ["The", " cat", " sat"]
print(list(enumerate(tokens)))

# %% [markdown] id="char-tokenizer-text"
# The smallest real tokenizer gives each character its own id: its index in a sorted vocabulary.
# Built from the three words above, the vocabulary has 8 characters (the space first):

# %% id="char-tokenizer"
# NBVAL_CHECK_OUTPUT
text = "The cat sat"
chars = CharTokenizer.from_text(text)
ids = chars.encode(text)
print("vocabulary:", repr(chars.vocab), "| V =", chars.vocab_size)
print("ids:", ids)
print("(position, id, piece):", list(zip(range(len(ids)), ids, chars.token_strings(ids))))
print("round trip exact:", chars.decode(ids) == text)

# %% [markdown] id="corpus-text"
# **The course corpus.** Every Python installation ships the text that `help("if")` prints, in
# `pydoc_data.topics`: English prose with code examples, offline, no download. `helpers.corpus`
# cleans it (ASCII, no heading underlines, no topic that is a section of another) and splits it by
# whole documents: the last ones alphabetically, at least 10 % of the characters, are the
# validation split. The exact text depends on your Python release; the fingerprint names it.

# %% id="corpus"
documents = corpus_documents()
train_text, val_text = load_corpus("train"), load_corpus("val")
print(f"{len(documents)} documents, {len(train_text):,} training and {len(val_text):,} validation characters; "
      f"fingerprint {corpus_fingerprint()}")
print("validation documents:", [name for name, text in documents if text in val_text])
print(repr(train_text[:240]))

# %% [markdown] id="bpe-text"
# **Byte-pair encoding.** Characters make long sequences (one token per letter). Byte-pair encoding
# (BPE) learns longer pieces: start from the text's bytes (ids 0 to 255, so any text can be
# encoded), count adjacent pairs, give the most frequent pair a new id, and repeat. The course's BPE
# does this 256 times on the training split, so $V = 256 + 256 = 512$. Two rules make it the same on
# every machine: merges never cross the chunks a word, number or punctuation run forms (with its
# leading space), and ties between pairs with equal counts go to the smallest pair. Training takes a
# fraction of a second:

# %% id="bpe-train"
start = time.perf_counter()
bpe = BPETokenizer.train(train_text, 256)
print(f"trained {len(bpe.merges)} merges in {time.perf_counter() - start:.2f} s; V = {bpe.vocab_size}")
print("first 12 merges:", [bpe.token_strings([256 + r])[0] for r in range(12)])

sentence = "The cat sat on the mat."
sentence_ids = bpe.encode(sentence)
print(list(enumerate(bpe.token_strings(sentence_ids))))
print("ids:", sentence_ids)

# %% [markdown] id="bpe-claims"
# The claims behind those outputs, checked on every run: training twice gives the same merges (the
# course's `course_bpe()` is this tokenizer), the round trip is exact on the whole corpus and on text
# the corpus never contained, and BPE needs about half as many tokens as characters.

# %% id="bpe-checks"
# NBVAL_CHECK_OUTPUT
print("same merges as course_bpe():", bpe.merges == course_bpe().merges)
all_text = load_corpus("all")
print("round trip exact on the whole corpus:", bpe.decode(bpe.encode(all_text)) == all_text,
      "| characters:", course_chars().decode(course_chars().encode(all_text)) == all_text)
unseen = "naïve café, 東京, 🙂 and tabs\tstay intact"
print("round trip exact on unseen text:", bpe.decode(bpe.encode(unseen)) == unseen)
val_tokens = len(bpe.encode(val_text))
print("validation: characters per BPE token > 1.8:", len(val_text) / val_tokens > 1.8)

# %% [markdown] id="tokens-llm"
# **In real LLMs.** GPT-2's tokenizer is this algorithm (byte-level BPE with the same kind of chunk
# pattern) run for 50000 merges; Llama-2 uses a 32000-piece SentencePiece BPE; Llama-3 a 128256-piece
# one. A bigger vocabulary makes sequences shorter and the embedding and LM-head matrices larger.
#
# **Common mistake: counting words, or ignoring the leading space.** Token counts are not word
# counts, and `" cat"` (with its space, mid-sentence) and `"cat"` (at the start) are different pieces
# with different ids. Debug with the pieces, not with the string you meant to send.

# %% id="tokens-mistake"
# NBVAL_CHECK_OUTPUT
words = len(val_text.split())
print("validation split: BPE tokens / words > 1.3:", val_tokens / words > 1.3)
print("'cat' and ' cat' give different ids:", bpe.encode("cat") != bpe.encode(" cat"))

# %% [markdown] id="tour"
# ## 3. The tour, steps 2 to 4: embeddings, blocks, logits
#
# **Main idea.** An **embedding table** $W_E \in \mathbb{R}^{V \times d_{\text{model}}}$ turns each id
# into a vector (row `id` of the table); a second table adds a vector for each **position**. A stack
# of $L$ **blocks** updates all vectors together; each block maps `(B, T, d_model)` to
# `(B, T, d_model)`. A **final norm** and the **LM head** turn each vector into $V$ scores. In this
# course (as in GPT-2) the LM head reuses the embedding table, $W_{\text{head}} = W_E$: *weight
# tying*.
#
# **Formula.**
#
# $$
# h^{(0)}_t = W_E[x_t] + P[t], \qquad
# h^{(l)} = \operatorname{Block}_l\big(h^{(l-1)}\big)\ (l = 1, \dots, L), \qquad
# \text{logits}_t = \operatorname{norm}\big(h^{(L)}_t\big)\, W_E^\top \in \mathbb{R}^{V}.
# $$
#
# **Worked example.** The picture below is the path of one batch through `helpers.blocks.TinyDecoder`
# with the shapes it really has; the cell after it runs the same path step by step.

# %% id="tour-diagram"
def draw_tour(B: int, T: int, d: int, V: int, L: int):
    steps = [("text", '"The cat sat on ..."'), ("tokenizer", f"ids ({B}, {T})"),
             ("embedding\n+ positions", f"({B}, {T}, {d})"), (f"{L} x block", f"({B}, {T}, {d})\nin and out"),
             ("final norm", f"({B}, {T}, {d})"), ("LM head (tied)", f"logits\n({B}, {T}, {V})")]
    fig, ax = plt.subplots(figsize=(13, 2.6))
    for i, (name, shape) in enumerate(steps):
        x = i * 2.3
        ax.add_patch(plt.Rectangle((x, 0), 1.9, 1.1, facecolor="#dbe6f4" if i % 2 else "#f4e6db", edgecolor="black"))
        ax.text(x + 0.95, 0.75, name, ha="center", va="center", fontsize=9, weight="bold")
        ax.text(x + 0.95, 0.3, shape, ha="center", va="center", fontsize=8.5)
        if i:
            ax.annotate("", xy=(x, 0.55), xytext=(x - 0.4, 0.55), arrowprops=dict(arrowstyle="->"))
    ax.set_xlim(-0.2, 2.3 * len(steps)), ax.set_ylim(-0.2, 1.3), ax.axis("off")
    ax.set_title("the tour: text -> ids -> vectors -> blocks -> next-token logits (B batch, T tokens)")
    return fig


tour_cfg = dict(vocab_size=bpe.vocab_size, d_model=32, n_heads=4, n_layers=3, max_seq_len=512)
draw_tour(2, 6, 32, bpe.vocab_size, 3)
plt.show()

# %% [markdown] id="tour-diagram-caption"
# *What to see:* the shapes along the way: text becomes ids `(B, T)`, every id becomes a vector `(B,
# T, d_model)`, the blocks keep that shape in and out, and only the LM head changes the last axis,
# to the vocabulary size.

# %% id="tour-steps"
# NBVAL_CHECK_OUTPUT
lm = model(**tour_cfg)
rows = [bpe.encode("The cat sat on the mat."), bpe.encode("The dog ran away from home.")]
T = 6  # a batch is a rectangle: both cut to their first 6 tokens (padding instead: chapter 01)
batch = torch.tensor([row[:T] for row in rows], device=device)  # (B, T)
B = batch.shape[0]
print("ids", tuple(batch.shape), batch.dtype)
h = lm.tok_emb.weight[batch] + lm.pos_emb.weight[:T]  # (B, T, d_model): rows of the tables
print("embeddings + positions", tuple(h.shape))
with torch.no_grad():
    for l, block in enumerate(lm.blocks):
        h_next = block(h)  # (B, T, d_model) -> (B, T, d_model)
        print(f"block {l}: {tuple(h.shape)} -> {tuple(h_next.shape)}")
        h = h_next
    by_hand = lm.final_norm(h) @ lm.tok_emb.weight.T  # (B, T, V): the tied LM head
    print("logits", tuple(by_hand.shape), "| equal to the model's forward:", torch.allclose(by_hand, lm(batch), atol=1e-6))

# %% [markdown] id="tour-llm"
# **In real LLMs.** GPT-2 has exactly this path (`wte`, `wpe`, `h[0..11]`, `ln_f`, a tied `lm_head`).
# Llama drops the position table (positions enter inside attention as RoPE, chapter 06), uses
# RMSNorm and a SwiGLU MLP (`ModelConfig(norm="rmsnorm", ffn="swiglu")`), and does not tie the head.
#
# **Common mistake: indexing the position table by token id.** `P[x_t]` instead of `P[t]` gives the
# word "the" the same "position" wherever it stands, so the model still cannot see order. The
# shapes are the same, so nothing crashes.

# %% id="tour-mistake"
# NBVAL_CHECK_OUTPUT
the = bpe.encode(" the")[0]
two_the = torch.tensor([[the, the]], device=device)  # (1, 2): the same token at positions 0 and 1
right = lm.tok_emb.weight[two_the] + lm.pos_emb.weight[:2]
wrong = lm.tok_emb.weight[two_the] + lm.pos_emb.weight[two_the]  # WRONG: positions indexed by token id
print("right: the two copies differ:", not torch.equal(right[0, 0], right[0, 1]))
print("wrong: the two copies differ:", not torch.equal(wrong[0, 0], wrong[0, 1]))

# %% [markdown] id="shapes"
# ## 4. The shape contract and the block shape map
#
# **Main idea.** Every block takes `(B, T, d_model)` and returns `(B, T, d_model)`: the *shape
# contract*. That is what lets blocks stack, and lets a residual connection add a block's edit to
# its input. Inside a block the shapes change in a fixed pattern; write them down before writing
# code.
#
# **Formula** ($d_{\text{head}} = d_{\text{model}} / H$):
#
# $$
# H \in \mathbb{R}^{B \times T \times d_{\text{model}}} \to
# Q, K, V \in \mathbb{R}^{B \times H \times T \times d_{\text{head}}} \to
# S = \frac{QK^\top}{\sqrt{d_{\text{head}}}},\ A = \operatorname{softmax}(S) \in \mathbb{R}^{B \times H \times T \times T} \to
# O \in \mathbb{R}^{B \times T \times d_{\text{model}}} \to
# \text{MLP hidden} \in \mathbb{R}^{B \times T \times d_{\text{ff}}} \to
# \text{out} \in \mathbb{R}^{B \times T \times d_{\text{model}}}
# $$
#
# **Worked example.** `helpers.overview.shape_map` writes the map down for a configuration with all
# sizes different ($B = 2, T = 7, d_{\text{model}} = 12, H = 3, d_{\text{ff}} = 40, V = 50$), and
# `measure_shapes` runs a real `TinyDecoder` with that configuration and records what its first
# block actually produced (forward hooks on the block, its attention and its MLP). They agree.

# %% id="shape-map"
# NBVAL_CHECK_OUTPUT
config = dict(B=2, T=7, d_model=12, n_heads=3, d_ff=40, vocab=50)
written = shape_map(**config)
measured_model = model(vocab_size=50, d_model=12, n_heads=3, d_ff=40, n_layers=2, max_seq_len=16)
measured = measure_shapes(measured_model, torch.randint(0, 50, (2, 7), device=device))
print(f"{'name':<11}{'what':<34}{'axes':<20}{'written':<16}measured")
for name, (what, axes) in SHAPE_MAP.items():
    print(f"{name:<11}{what:<34}{axes:<20}{str(written[name]):<16}{measured[name]}")
print("written == measured:", written == measured)

# %% [markdown] id="contract-text"
# **Implementation check: the contract on a real block.** Any input `(B, T, d_model)` comes out with
# the same shape, whatever $B$ and $T$, and in every variant the config offers (Pre-LN or Post-LN,
# LayerNorm or RMSNorm, GELU or SwiGLU MLP, grouped-query attention).

# %% id="contract"
# NBVAL_CHECK_OUTPUT
variants = [dict(), dict(norm_placement="post"), dict(norm="rmsnorm", ffn="swiglu"), dict(n_kv_heads=1)]
for variant in variants:
    torch.manual_seed(0)
    block = DecoderBlock(ModelConfig(vocab_size=50, d_model=12, n_heads=3, **variant)).to(device).eval()
    shapes = {tuple(block(randn(b, t, 12, seed=1)).shape) for b, t in [(1, 1), (2, 7), (3, 20)]}
    print(f"{str(variant):<45} outputs: {sorted(shapes)}")

# %% [markdown] id="shapes-llm"
# **In real LLMs.** GPT-2 small at $B = 8$, $T = 1024$: $Q$ is `(8, 12, 1024, 64)`, the scores
# `(8, 12, 1024, 1024)` (100 million numbers per layer), the MLP hidden layer `(8, 1024, 3072)`,
# the logits `(8, 1024, 50257)`: the logits are often the largest tensor of all.
#
# **Common mistake: $T \times d$ scores.** Multiplying $Q^\top K$ instead of $QK^\top$ compares
# feature columns instead of tokens. With $T \ne d_{\text{head}}$ the shape gives it away; with
# $T = d_{\text{head}}$ it runs and is wrong.

# %% id="shapes-mistake"
# NBVAL_CHECK_OUTPUT
q, k = randn(2, 3, 7, 4, seed=2), randn(2, 3, 7, 4, seed=3)  # (B, H, T, d_head)
print("right  Q @ K^T:", tuple((q @ k.transpose(-2, -1)).shape), "= (B, H, T, T)")
print("wrong  Q^T @ K:", tuple((q.transpose(-2, -1) @ k).shape), "= (B, H, d_head, d_head)")
print("GPT-2 small scores per layer at B=8, T=1024:", 8 * 12 * 1024 * 1024, "numbers")

# %% [markdown] id="parallel"
# ## 5. Parallel training versus recurrence
#
# **Main idea.** A recurrent network reads a sequence one token at a time: step $t$ needs the state
# of step $t - 1$, so $T$ tokens take $T$ sequential steps, however many processors you have. A
# transformer layer computes every position at once with a few matrix products; a whole model takes
# $L$ sequential steps (one per layer) for any $T$. That is why transformers train so much faster on
# GPUs, and why the attention scores are a $T \times T$ matrix: every pair is computed at once.
#
# **Formula.**
#
# $$
# \text{RNN: } h_t = \tanh(W_{hh} h_{t-1} + W_{xh} x_t + b) \quad (t = 1, \dots, T \text{ in order}),
# \qquad
# \text{attention: } O = \operatorname{softmax}\!\Big(\frac{QK^\top}{\sqrt{d_{\text{head}}}} + M\Big) V \quad (\text{all } t \text{ at once}).
# $$
#
# **Worked example.** Same width, same sequence: an `nn.RNNCell` run in a loop against one call of a
# decoder block. The step counts are exact; the seconds depend on your machine.

# %% id="parallel-steps"
# NBVAL_CHECK_OUTPUT
d = 64
cell = nn.RNNCell(d, d).to(device).eval()
torch.manual_seed(0)
block = DecoderBlock(ModelConfig(vocab_size=2, d_model=d, n_heads=4)).to(device).eval()


def rnn_forward(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """x (B, T, d) -> (states (B, T, d), number of sequential steps)."""
    state, states = torch.zeros(x.shape[0], d, device=device), []
    for t in range(x.shape[1]):  # one step per token, in order
        state = cell(x[:, t], state)  # (B, d)
        states.append(state)
    return torch.stack(states, dim=1), x.shape[1]


x = randn(4, 256, d, seed=4)  # (B, T, d)
with torch.no_grad():
    states, rnn_steps = rnn_forward(x)
    out = block(x)  # one call: every position at once
print("RNN:", tuple(states.shape), "after", rnn_steps, "sequential steps")
print("block:", tuple(out.shape), "after 1 call; a 12-layer model: 12 sequential steps for any T")

# %% [markdown] id="parallel-equivalence-text"
# **Implementation check: one parallel pass equals the tokens one at a time.** "Parallel" must not
# change the numbers. With the causal mask, position $t$ of one call over all $T$ tokens sees
# exactly tokens $0..t$, so it must equal the last position of a call on the prefix $x_{0..t}$
# alone: $T$ separate calls, one per token, as an RNN would walk the sequence.

# %% id="parallel-equivalence"
# NBVAL_CHECK_OUTPUT
x12 = randn(2, 12, d, seed=6)  # (B, T, d) with T = 12
with torch.no_grad():
    at_once = block(x12)  # (B, T, d): one call, every position in parallel
    one_by_one = torch.stack([block(x12[:, : t + 1])[:, -1] for t in range(12)], dim=1)  # (B, T, d): 12 calls
print("one causal pass == 12 prefix calls, position by position:", close(at_once, one_by_one, n=4 * d))
print("calls: 1 parallel vs", 12, "one at a time")

# %% id="parallel-timing"
def seconds(fn, *args, repeats: int = 5) -> float:
    """Best of `repeats` wall-clock runs (GPU work is waited for)."""
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            fn(*args)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


lengths = [32, 64, 128, 256, 512]
threads = torch.get_num_threads()
if device.type == "cpu":
    torch.set_num_threads(1)  # one thread: two threads on a busy 2-core CPU measure contention, not the model
rnn_s = [seconds(rnn_forward, randn(4, t, d, seed=5)) for t in lengths]
block_s = [seconds(block, randn(4, t, d, seed=5)) for t in lengths]
conditions = f"{device.type}, {torch.get_num_threads()} thread(s), width {d}, batch 4"
torch.set_num_threads(threads)
for t, r, b in zip(lengths, rnn_s, block_s):
    print(f"T = {t:4d}: RNN {1e3 * r:7.2f} ms ({t} steps) | block {1e3 * b:6.2f} ms (1 call)")
fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
axes[0].plot(lengths, lengths, "o-", label="RNN: T steps, each waits for the last")
axes[0].plot(lengths, [12] * len(lengths), "s-", label="12-layer transformer, training or prefill: 12 steps")
axes[0].set(xscale="log", yscale="log", xlabel="sequence length T", ylabel="sequential steps",
            title="what the claim is about: sequential steps (counted)")
axes[0].set_xscale("log", base=2)
axes[0].legend(fontsize=8)
axes[1].plot(lengths, [1e3 * s for s in rnn_s], "o-", label="RNN cell, T sequential steps")
axes[1].plot(lengths, [1e3 * s for s in block_s], "s-", label="decoder block, one parallel call")
axes[1].set(xlabel="sequence length T", ylabel="milliseconds (best of 5)", title=f"measured here: {conditions}")
axes[1].set_xscale("log", base=2)
axes[1].set_yscale("log")
axes[1].text(0.02, 0.75, "a CPU with few cores runs few multiply-adds at once,\nso the block's extra arithmetic "
             "(T x T scores,\n4x wider MLP) is not hidden: it need not be faster here;\non a GPU the one call "
             "wins by far", transform=axes[1].transAxes, fontsize=8, va="top")
axes[1].legend(fontsize=8, loc="lower right")
fig.tight_layout()
plt.show()

# %% [markdown] id="parallel-timing-caption"
# *What to see:* on the left, the counted claim: an RNN needs $T$ steps one after another, a
# 12-layer transformer 12 steps at every length. On the right, the seconds on this machine, with
# its conditions in the title: on a CPU with two cores the single block call is not reliably faster
# than the RNN's loop (it does more arithmetic per token), which is why the chapter's claim is
# about steps and about parallel hardware, not about this CPU.

# %% [markdown] id="parallel-llm"
# **Reading the timings.** The step counts are the claim; the seconds depend on the hardware. The
# block does far more arithmetic per token than the RNN cell (attention over all $T$ keys, an MLP four
# times wider), and its $T \times T$ scores grow quadratically. On a laptop CPU with a few cores,
# which can only run a few multiply-adds at once, that extra work can cost as much time as the RNN's
# $T$ small sequential steps, or more at long $T$. On a GPU, which runs thousands of them at once,
# the single parallel call wins by a wide margin, and the RNN's steps cannot be parallelized at all.
#
# **In real LLMs.** Training and the *prefill* of a prompt run all positions in parallel. Generating
# text does not: each new token needs the previous one, so decoding is $N$ sequential steps for $N$
# new tokens, made cheaper by caching keys and values (chapter 07).
#
# GPT-3 175B, for instance, has 96 layers and a 2048-token context: a training forward pass over
# 2048 tokens is 96 sequential layer steps, while generating 100 new tokens takes 100 forward passes.
#
# **Common mistake.** "Transformers generate all tokens in parallel." Only the tokens you already
# have are processed in parallel; new ones come one at a time. Run below on a small random
# `TinyDecoder` (greedy decoding, `float64`): generating 8 tokens one at a time, against reading all 8
# "at once" from a single pass over the prompt plus 8 placeholder tokens. The single pass only
# works when the tokens are already known, as in training (teacher forcing) or prefill.

# %% id="parallel-mistake"
# NBVAL_CHECK_OUTPUT
lm8 = model(seed=3, vocab_size=20, d_model=32, n_heads=4, n_layers=2, max_seq_len=32).double()
prompt = torch.tensor([[1, 5, 7, 2]], device=device)  # (1, 4)
with torch.no_grad():
    sequential = generate(lm8, prompt, 8, temperature=0.0)[0, 4:]  # 8 forward passes, one per new token
    placeholders = torch.cat([prompt, torch.zeros(1, 8, dtype=torch.long, device=device)], dim=1)  # (1, 12)
    at_once = lm8(placeholders)[0, 3:11].argmax(-1)  # WRONG: one pass, every "next token" read at once
    known = torch.cat([prompt, sequential[None, :-1]], dim=1)  # (1, 11): the tokens already generated
    teacher_forced = lm8(known)[0, 3:].argmax(-1)  # one pass is fine once the tokens are known
print("one at a time (8 passes):     ", sequential.tolist())
print("all at once from placeholders:", at_once.tolist(),
      f"-> {(at_once == sequential).sum().item()} of 8 match")
print("one pass over the known tokens reproduces all 8:", torch.equal(teacher_forced, sequential))

# %% [markdown] id="mixing"
# ## 6. Context mixing: attention reads other tokens, the MLP does not
#
# **Main idea.** A block has two jobs, done by two sublayers. Attention **mixes information across
# positions**: token $i$'s output is a weighted average of every allowed token's value. The MLP
# transforms **each position on its own**, with the same weights everywhere. So "which token
# influences which" is decided entirely by attention (and its mask).
#
# **Formula.** $\ \text{attention: } o_i = \sum_j A_{ij} v_j, \qquad \text{MLP: } y_i = W_2\,\phi(W_1 x_i + b_1) + b_2 .$
#
# **Worked example.** `helpers.ffn.token_influence` perturbs one input token at a time and records
# how much each output token moves. The MLP's matrix is diagonal (exact zeros elsewhere), full
# attention's is full, causal attention's is lower-triangular.

# %% id="mixing-influence"
# NBVAL_CHECK_OUTPUT
torch.manual_seed(0)
full_attention = DecoderBlock(ModelConfig(vocab_size=2, d_model=16, n_heads=2, causal=False)).to(device).eval()
torch.manual_seed(0)
causal_attention = DecoderBlock(ModelConfig(vocab_size=2, d_model=16, n_heads=2, causal=True)).to(device).eval()
mlp = FeedForward(16, 64).to(device)
x = randn(2, 6, 16, seed=6)  # (B, T, d_model)
influence = {
    "MLP (position-wise)": token_influence(mlp, x),
    "attention, no mask": token_influence(lambda h: full_attention.attn(h)[0], x),
    "attention, causal": token_influence(lambda h: causal_attention.attn(h, causal_mask(6, device=device))[0], x),
}
lower = torch.ones(6, 6, dtype=torch.bool).tril()  # (T, T): on and below the diagonal
off_diagonal = ~torch.eye(6, dtype=torch.bool)
print("MLP: every off-diagonal entry exactly 0:", bool((influence["MLP (position-wise)"][off_diagonal] == 0).all()))
print("attention, no mask: every entry > 0:", bool((influence["attention, no mask"] > 0).all()))
print("attention, causal: upper triangle exactly 0:", bool((influence["attention, causal"][~lower] == 0).all()),
      "| on and below the diagonal > 0:", bool((influence["attention, causal"][lower] > 0).all()))

# %% id="mixing-plot"
fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
for ax, (name, matrix) in zip(axes, influence.items()):
    ax.imshow(matrix.numpy(), cmap="viridis")
    ax.set_title(name), ax.set_xlabel("input token j (perturbed)"), ax.set_ylabel("output token i")
fig.suptitle("how much output token i moves when input token j changes")
plt.tight_layout()
plt.show()

# %% [markdown] id="mixing-plot-caption"
# *What to see:* the MLP's influence lies only on the diagonal (each output depends on its own
# token); attention without a mask fills the whole grid (every output moves when any input moves);
# the causal mask leaves only the lower triangle, so no output depends on a later token.

# %% [markdown] id="mixing-llm"
# **In real LLMs.** Everything a model knows about the context reaches a position through attention:
# in GPT-2 small that is $12$ layers $\times$ $12$ heads $= 144$ attention patterns per token, the only
# places where its 1024 positions exchange information;
# interpretability work traces "which token read which" through the attention weights. MLP layers
# hold much of the per-token knowledge (facts about a word), applied one position at a time.
#
# **Common mistake.** "The MLP mixes tokens." It never does: the matrix above has exact zeros off
# its diagonal. A bug that makes an MLP see other tokens (a reshape that merges the token axis into
# the feature axis) is a real bug.

# %% [markdown] id="positions"
# ## 7. Position information: attention alone does not see order
#
# **Main idea.** Attention compares tokens by content only. Reorder the input tokens, and without a
# mask and without position information the outputs are the same vectors, reordered the same way:
# attention is **permutation equivariant**. "dog bites man" and "man bites dog" would then mean the
# same thing to the model. Adding a position vector to each token (section 3) breaks the symmetry;
# so, partly, does a causal mask (token $t$ sees $t$ predecessors, so the mask itself leaks order).
#
# **Formula.** For a permutation matrix $P$ (reordering rows = tokens), with $X' = PX$:
#
# $$
# S' = \frac{(PXW_Q)(PXW_K)^\top}{\sqrt{d}} = P S P^\top,\quad
# \operatorname{softmax}(PSP^\top) = P\,\operatorname{softmax}(S)\,P^\top,\quad
# A' V' = P A P^\top P X W_V = P\,(A V),
# $$
#
# since $P^\top P = I$ and a row-wise softmax does not care how the columns are ordered. The MLP and
# the norms act per token, so they are equivariant too, and so is a whole block without positions.
#
# **Worked example.** Three words, a model without positions and without a causal mask, both orders:

# %% id="positions-words"
# NBVAL_CHECK_OUTPUT
words = {"dog": 0, "bites": 1, "man": 2}
sentence_a = torch.tensor([[words["dog"], words["bites"], words["man"]]], device=device)
sentence_b = torch.tensor([[words["man"], words["bites"], words["dog"]]], device=device)
for positions in ("none", "learned"):
    lm_words = model(vocab_size=3, d_model=16, n_heads=2, positions=positions, causal=False, max_seq_len=8)
    with torch.no_grad():
        out_a, out_b = lm_words(sentence_a)[0], lm_words(sentence_b)[0]  # (T, V) each
    same = torch.allclose(out_a[0], out_b[2], atol=1e-5)  # "dog" first in a, last in b
    print(f"positions={positions!r:10}: the output at 'dog' is the same in both sentences: {same}")

# %% [markdown] id="positions-test-text"
# **Implementation check.** `helpers.overview.is_permutation_equivariant(f, x)` permutes the token
# axis with a permutation that moves every token and compares $f(x[:, \pi])$ with $f(x)[:, \pi]$ up
# to rounding. It is a test that can fail: on the same block, adding positions or a causal mask
# makes it say `False`.

# %% id="positions-test"
# NBVAL_CHECK_OUTPUT
x = randn(2, 7, 16, seed=7)  # (B, T, d_model)
table = randn(7, 16, seed=8)  # a learned-position table (T_max, d_model)
perm = torch.tensor([3, 0, 6, 1, 5, 2, 4], device=device)
with torch.no_grad():
    gap = (full_attention(x[:, perm]) - full_attention(x)[:, perm]).abs().max().item()
print("block without positions or mask: largest |f(x[:, perm]) - f(x)[:, perm]| < 1e-5:", gap < 1e-5)
print("equivariant, block without positions or mask:", is_permutation_equivariant(full_attention, x))
print("equivariant, same block after adding positions:", is_permutation_equivariant(nn.Sequential(AddPositions(table), full_attention), x))
print("equivariant, block with a causal mask:", is_permutation_equivariant(causal_attention, x))
print("equivariant, the MLP alone:", is_permutation_equivariant(mlp, x))

# %% [markdown] id="positions-llm"
# **In real LLMs.** The 2017 Transformer added fixed sinusoids, GPT-2 and BERT learned position
# tables, T5 adds a learned bias to the scores, BLOOM a fixed linear penalty per head (ALiBi), Llama
# rotates queries and keys (RoPE); chapter 06 builds them. Some decoder-only models use no position
# signal at all and still learn order, from the causal mask alone.
#
# The cell below computes, with chapter 06's functions, what each published configuration means
# over its training context: GPT-2 (learned, 1024 positions, $d = 768$), BERT-base (learned, 512,
# $d = 768$), T5-base (32 relative buckets, maximum distance 128, 12 heads, one table per stack,
# inputs of 512 tokens), BLOOM-176B (ALiBi over 112 heads, 2048 tokens), Llama 2 (RoPE, base 10 000,
# $d_{\text{head}} = 128$, 4096 tokens) and Llama 3 (RoPE, base 500 000, 8192 tokens). A learned
# table has no row past its length; T5 stops telling distances apart; ALiBi's steepest head all but
# erases distant keys, and even its gentlest multiplies the weight of a key 2047 tokens back by
# $e^{-8} \approx 3 \times 10^{-4}$ against the same score at distance 0; and many of RoPE's 64 pairs
# turn less than once across the whole window.

# %% id="positions-llm-numbers"
# NBVAL_CHECK_OUTPUT
for name, T_max, d in (("GPT-2", 1024, 768), ("BERT-base", 512, 768)):
    print(f"{name:10s} learned table: {T_max} x {d} = {T_max * d:,d} parameters; position {T_max} has no row")
offsets = torch.arange(512)[None, :] - torch.arange(512)[:, None]  # (T, T): key minus query, a 512-token input
buckets = relative_position_bucket(offsets, bidirectional=True, num_buckets=32, max_distance=128)  # (T, T)
far = buckets % 16 == 15  # (T, T): the last bucket of either direction (16 buckets each way)
print(f"T5-base    relative buckets: 32 x 12 = {32 * 12} parameters per stack; {buckets.unique().numel()} buckets "
      f"used over 512 tokens; every distance >= {offsets.abs()[far].min().item()} shares its direction's last "
      f"bucket: {far.float().mean().item():.0%} of the pairs")
slopes = alibi_slopes(112)  # (H,)
print(f"BLOOM-176B ALiBi, 0 parameters: bias at distance 2047 from {-2047 * slopes.max().item():.0f} "
      f"(steepest head) to {-2047 * slopes.min().item():.1f} (gentlest)")
for name, base, context in (("Llama 2", 1e4, 4096), ("Llama 3", 5e5, 8192)):
    waves = [rope_wavelength(k, 128, base) for k in range(64)]
    print(f"{name:10s} RoPE, 0 parameters: wavelengths {waves[0]:.1f} to {waves[-1]:,.0f} positions; "
          f"{sum(w > context for w in waves)} of 64 pairs turn less than once in {context} tokens")

# %% [markdown] id="positions-mistake-text"
# **Common mistake: comparing with the unpermuted output.** $f(x[:, \pi]) = f(x)$ would be
# *invariance* (the same output whatever the order), which a block does not have. And comparing with
# `torch.equal` fails on a perfectly equivariant block: after a permutation the sums inside attention
# run in another order and round differently.

# %% id="positions-mistake"
# NBVAL_CHECK_OUTPUT
with torch.no_grad():
    permuted_out, out = full_attention(x[:, perm]), full_attention(x)
print("right, allclose(f(x[:, perm]), f(x)[:, perm]):", torch.allclose(permuted_out, out[:, perm], atol=1e-5))
print("wrong, allclose(f(x[:, perm]), f(x)):         ", torch.allclose(permuted_out, out, atol=1e-5))
print("wrong, torch.equal(f(x[:, perm]), f(x)[:, perm]):", torch.equal(permuted_out, out[:, perm]))

# %% [markdown] id="stack"
# ## 8. Stacked blocks: the whole model
#
# **Main idea.** Depth comes from repeating one block design $L$ times, each with its own weights.
# Because every block keeps the shape contract, a model is a loop, and its size is a sum you can
# write down: embeddings, $L$ times (attention + MLP + two norms), a final norm, and the LM head,
# which costs nothing extra when tied to the embeddings.
#
# **Formula** (LayerNorm, GELU MLP without biases, tied head, learned positions):
#
# $$
# N = \underbrace{V d}_{W_E} + \underbrace{T_{\max} d}_{P}
#   + L\,\big(\underbrace{4 d^2}_{W_Q, W_K, W_V, W_O} + \underbrace{2 d\, d_{\text{ff}}}_{W_1, W_2} + \underbrace{4d}_{2 \text{ LayerNorms}}\big)
#   + \underbrace{2d}_{\text{final norm}} .
# $$
#
# **Worked example.** The tour's model, counted three ways: by the formula, by
# `helpers.blocks.model_param_count`, and by summing the tensors the model really holds. Weight tying
# means one tensor: the LM head's weight is the embedding table, the same storage.

# %% id="stack-count"
# NBVAL_CHECK_OUTPUT
c = lm.config
V, d_, L_, f_ = c.vocab_size, c.d_model, c.n_layers, c.ffn_width
by_formula = V * d_ + c.max_seq_len * d_ + L_ * (4 * d_ * d_ + 2 * d_ * f_ + 4 * d_) + 2 * d_
print("formula:", by_formula, "| model_param_count:", model_param_count(c),
      "| tensors:", sum(p.numel() for p in lm.parameters()))
print("LM head is the embedding table:", lm.lm_head.weight is lm.tok_emb.weight,
      "| same storage:", lm.lm_head.weight.data_ptr() == lm.tok_emb.weight.data_ptr())
untied = model_param_count(ModelConfig(**{**tour_cfg, "tie_weights": False}))
print("untying adds V * d_model =", untied - model_param_count(c), "parameters")

gpt2 = ModelConfig(vocab_size=50257, d_model=768, n_heads=12, n_layers=12, max_seq_len=1024, bias=True)
attention_biases = 12 * (attention_param_count(768, 12, bias=True) - attention_param_count(768, 12))
print("GPT-2 small shape: ours", model_param_count(gpt2), "+ attention biases", attention_biases,
      "=", model_param_count(gpt2) + attention_biases)
llama2 = llama_config(**LLAMA2_7B)  # RMSNorm, SwiGLU, RoPE, untied head (chapter 05 builds it)
per_block = model_param_count(replace(llama2, n_layers=1)) - model_param_count(replace(llama2, n_layers=0))
print(f"Llama-2 7B: {llama2.n_layers} blocks of {per_block:,d} + embeddings and untied head "
      f"{2 * llama2.vocab_size * llama2.d_model:,d} + final norm {llama2.d_model:,d} = {model_param_count(llama2):,d}")

# %% [markdown] id="stack-llm"
# **In real LLMs.** The last line is GPT-2 small's published 124,439,808 parameters: GPT-2 also has
# biases in its attention projections, which the course's attention leaves out (as Llama does).
# Llama-2 7B (last line, from `helpers.llama.llama_config`): 32 blocks of 202,383,360 parameters
# each, plus two untied $32000 \times 4096$ matrices, 6,738,415,616 in all, the checkpoint Meta
# calls "7B".
#
# **Common mistake: counting a tied head twice.** Summing `numel()` over `model.state_dict()` lists
# the shared tensor under both names; `model.parameters()` yields it once.

# %% id="stack-mistake"
# NBVAL_CHECK_OUTPUT
state_dict_count = sum(t.numel() for t in lm.state_dict().values())
print("parameters():", sum(p.numel() for p in lm.parameters()), "| state_dict() (tied head twice):",
      state_dict_count, "| difference = V * d_model:", state_dict_count - model_param_count(c) == V * d_)

# %% [markdown] id="budget"
# ## 9. The prompt token budget lab
#
# **Main idea.** A model attends over at most its **context window** of tokens, and everything in a
# request shares it: system prompt, retrieved documents, the user's message, **and the answer**,
# which is written into the same window one token at a time. So reserve the output cap too, and
# count in tokens, not words.
#
# **Formula.** $\ \text{margin} = W - (\text{system} + \text{retrieved} + \text{user} + \text{output cap})$;
# the request fits when margin $\ge 0$, and the largest retrieved context that fits is
# $W - \text{system} - \text{user} - \text{output cap}$.
#
# **Worked example.** System prompt 600, retrieved context 6000, user input 400, output cap 1000, in
# an 8192-token window: $600 + 6000 + 400 + 1000 = 8000$, leaving only 192 tokens of margin.

# %% id="budget-lab"
# NBVAL_CHECK_OUTPUT
window = 8192
parts = dict(system=600, retrieved=6000, user=400, output=1000)
for name, tokens, share in budget_table(window, parts):
    print(f"{name:<10}{tokens:6d} tokens  {share:5.1f} %")
print(" + ".join(str(v) for v in parts.values()), "=", sum(parts.values()), "of", window,
      "leaves", remaining_tokens(window, **parts))
fixed = dict(system=600, user=400, output=1000)
print("largest retrieved context that fits:", largest_retrieved_context(window, **fixed))
print("in whole chunks of 512 + 8 separator tokens:", largest_retrieved_context(window, chunk_tokens=520, **fixed) // 520,
      "chunks")

# %% [markdown] id="budget-grow-text"
# **What happens as retrieved context grows.** Add documents and the margin shrinks one for one; at
# 6192 retrieved tokens the window is exactly full, and one more token overflows. Past that point
# something must give: drop whole documents, truncate them, or lower the output cap (and risk a
# cut-off answer). Silent truncation by an API usually drops the *start* of the prompt, often the
# system prompt.

# %% id="budget-grow"
retrieved = list(range(0, 8001, 250))
margins = [remaining_tokens(window, retrieved=r, **fixed) for r in retrieved]
fig, ax = plt.subplots(figsize=(7, 3.2))
ax.plot(retrieved, margins, "-", color="#4c72b0")
ax.axhline(0, color="black", lw=0.8)
ax.fill_between(retrieved, margins, 0, where=[m < 0 for m in margins], color="#c44e52", alpha=0.3, label="overflow")
ax.axvline(6000, ls="--", color="gray"), ax.text(6050, 1500, "lab: 6000 -> margin 192", fontsize=8)
ax.axvline(6192, ls=":", color="#c44e52"), ax.text(6250, -1500, "6192: full", fontsize=8)
ax.set_xlabel("retrieved context (tokens)"), ax.set_ylabel("margin (tokens)"), ax.legend(loc="upper right")
ax.set_title("8192-token window, system 600 + user 400 + output cap 1000")
plt.show()
chars_per_token = len(val_text) / val_tokens
print(f"with this corpus's BPE, 6192 tokens hold about {6192 * chars_per_token:,.0f} characters of documentation")

# %% [markdown] id="budget-grow-caption"
# *What to see:* the margin falls by one token per retrieved token and crosses zero at 6192
# retrieved tokens (dotted line); the red area is overflow, and the lab's choice of 6000 (dashed)
# leaves only 192 tokens to spare.

# %% [markdown] id="budget-llm"
# **In real LLMs.** Windows range from 2048 (GPT-3) and 4096 (Llama-2) to 128k tokens and more; a
# longer window costs prefill time and key/value-cache memory that grow with every token
# (chapter 07), and a model does not necessarily use everything in it well.
#
# **Common mistakes: forgetting the output, and the off-by-one.** Without the output cap the margin
# looks like 1192 and the answer gets cut off. And a request that fills the window exactly fits:
# "fits" means margin $\ge 0$, not $> 0$.

# %% id="budget-mistake"
# NBVAL_CHECK_OUTPUT
print("forgot the output cap: margin", remaining_tokens(window, system=600, retrieved=6000, user=400), "(wrong)")
print("exactly full fits:", remaining_tokens(window, retrieved=6192, **fixed) >= 0,
      "| one more token fits:", remaining_tokens(window, retrieved=6193, **fixed) >= 0)

# %% [markdown] id="markov"
# ## 10. A synthetic language whose best possible loss is known
#
# **Main idea.** How good can a language model get? For real text nobody knows. For a language we
# generate ourselves we can compute it: text from a **Markov chain**, where the next letter depends
# only on the current one through a transition matrix $P$, has an **entropy rate** $H$, the lowest
# average next-token loss (in nats) any model can reach. Chapter 08 trains a model on this language
# and compares its loss with $H$.
#
# **Formula** (Cover and Thomas, *Elements of Information Theory*, theorem 4.2.4), with $\pi$ the
# stationary distribution ($\pi P = \pi$):
#
# $$
# H = -\sum_i \pi_i \sum_j P_{ij} \log P_{ij}
# \;\le\; H(\pi) = -\sum_i \pi_i \log \pi_i \;\le\; \log V .
# $$
#
# **Worked example.** The course's chain over 8 letters: its entropy rate, the best loss of a model
# that ignores the previous letter ($H(\pi)$), the loss of uniform guessing ($\log 8$), and the
# average loss of the true model on a long sample, which converges to $H$.

# %% id="markov-chain"
# NBVAL_CHECK_OUTPUT
chain = markov_chain()
sample = chain.sample(50_000, seed=0)
index = {ch: i for i, ch in enumerate(chain.alphabet)}
letters = torch.tensor([index[ch] for ch in sample])
true_model_loss = -torch.log(chain.transition[letters[:-1], letters[1:]]).mean().item()
print("sample:", sample[:60])
print(f"entropy rate H = {chain.entropy_rate():.4f} nats | H(pi) = {chain.unigram_entropy():.4f} | "
      f"log 8 = {math.log(8):.4f}")
print(f"true model's average loss on the sample: {true_model_loss:.2f}")

# %% [markdown] id="roadmap"
# ## 11. Roadmap of the course
#
# Each chapter opens one part of the block you just ran and proves it against an independent
# oracle (a torch module, a closed form, a property test). The shared model, `helpers.blocks`,
# gains a config field when a chapter adds a part, and refuses a value it does not know, naming
# the ones it has:

# %% id="roadmap-refusal"
# NBVAL_CHECK_OUTPUT
for field, value in [("norm", "batchnorm"), ("positions", "xpos")]:
    try:
        ModelConfig(vocab_size=10, **{field: value})
    except ValueError as error:
        print(error)

# %% [markdown] id="roadmap-table"
# All ten chapters, 00 to 09, are here. The table says what each chapter proves.
#
# | chapter | opens | proves |
# |---|---|---|
# | 00 overview | the whole path, tokens to logits | shape map = shapes measured on a running block; permutation equivariance without positions; tokenizer round trip; token budgets |
# | 01 attention | $Q, K, V$, scores, $\sqrt{d_k}$, masks, softmax | `scaled_dot_product_attention` = `F.scaled_dot_product_attention`, masks included |
# | 02 heads | head splitting, concatenation, GQA/MQA | multi-head attention = `nn.MultiheadAttention`; parameter and KV-cache counts |
# | 03 ffn | the position-wise MLP, GELU, SwiGLU, MoE basics | FFN = torch's layers; token independence; MLP vs attention parameters |
# | 04 norms | residual stream, LayerNorm, RMSNorm, Pre-LN vs Post-LN | norms = `nn.LayerNorm` / `nn.RMSNorm`; blocks = `nn.TransformerEncoderLayer` |
# | 05 blocks | encoder, decoder, cross-attention, model families | blocks = `nn.TransformerEncoderLayer` / `DecoderLayer`; which masks each family uses |
# | 06 positions | sinusoidal, learned, relative bias, ALiBi, RoPE | RoPE scores depend only on the offset; behaviour past the training length |
# | 07 complexity | FLOPs, score memory, KV cache, FlashAttention | measured time and memory follow the formulas; cached decoding = full recompute |
# | 08 training | next-token and masked-LM losses, teacher forcing | a tiny model trained on this corpus; its loss against the entropy rate |
# | 09 diagnostics | leakage tests, attention entropy, residual norms, ablations | each broken model is found by the test meant for it |

# %% [markdown] id="mistakes"
# ## Common mistakes at a glance
#
# | mistake | symptom | fix |
# |---|---|---|
# | counting words instead of tokens | budgets that overflow | count `len(tokenizer.encode(text))` |
# | positions indexed by token id | repeated words get the same "position" | `wpe[:T]`, not `wpe[ids]` |
# | $Q^\top K$ instead of $QK^\top$ | scores `(B, H, d_head, d_head)` | `q @ k.transpose(-2, -1)`: `(B, H, T, T)` |
# | logits only at the last position in training | $T - 1$ predictions lost | keep `(B, T, V)` |
# | "the MLP mixes tokens" | wrong mental model of where context enters | attention mixes, the MLP is position-wise |
# | equivariance tested against `f(x)` or with `torch.equal` | an equivariant block "fails" | compare `f(x[:, perm])` with `f(x)[:, perm]`, with a tolerance |
# | tied head counted twice | parameter count too large by $V d$ | count `model.parameters()` |
# | output cap left out of the budget | answers cut off | reserve it: margin = window - all four parts |

# %% [markdown] id="self-check"
# ## Self-check
#
# Try to answer before opening each answer.
#
# **Q1.** A batch of 4 sequences of 100 tokens goes into a model with $d_{\text{model}} = 256$, 8 heads
# and $V = 1000$. What are the shapes of $Q$ (per head), the scores and the logits?
#
# <details><summary>Answer</summary>
#
# $Q$: `(4, 8, 100, 32)`; scores: `(4, 8, 100, 100)`; logits: `(4, 100, 1000)`.
#
# </details>
#
# **Q2.** Why does a transformer need position information, and why is a causal mask not a full
# substitute for it?
#
# <details><summary>Answer</summary>
#
# Attention without positions is permutation equivariant: it cannot tell "dog bites man" from
# "man bites dog". A causal mask breaks the symmetry (each token sees a different number of
# predecessors), but the model must then infer positions indirectly.
#
# </details>
#
# **Q3.** How many sequential steps does a 24-layer transformer need to process 2000 tokens in
# training? And to generate 2000 new tokens?
#
# <details><summary>Answer</summary>
#
# Training: 24 (one per layer, all positions in parallel). Generation: 2000 forward passes, one per
# new token, each of them 24 layers deep.
#
# </details>
#
# **Q4.** Which sublayer lets token 5 use information from token 2?
#
# <details><summary>Answer</summary>
#
# Attention (if the mask allows it). The MLP and the norms work on each token separately.
#
# </details>
#
# **Q5.** A 4096-token window; system 500, user 300, output cap 800. What is the largest retrieved
# context that fits?
#
# <details><summary>Answer</summary>
#
# $4096 - 500 - 300 - 800 = 2496$ tokens (the request then fills the window exactly).
#
# </details>
#
# **Q6.** Your tokenizer's `decode(encode(s))` differs from `s` on one document. Why does that matter
# before any training?
#
# <details><summary>Answer</summary>
#
# The model will learn from, and be evaluated on, text that is not what you think it is; losses and
# generated samples stop meaning what they seem to. A character tokenizer that skips unknown
# characters is a typical cause.
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
# | one pass returns $T$ next-token distributions | §1, `design-example` |
# | what a tokenizer produced: positions, ids, pieces; exact round trips; deterministic BPE | §2, `enumerate-tokens`, `char-tokenizer`, `bpe-checks` |
# | the tour step by step equals the model's forward pass | §3, `tour-steps` |
# | the block shape map written down equals the shapes measured on a running block | §4, `shape-map` |
# | the shape contract `(B, T, d_model)` in and out, in every block variant | §4, `contract` |
# | $T$ sequential RNN steps against one parallel call, counted and measured (with the conditions) | §5, `parallel-steps`, `parallel-timing` |
# | one causal parallel pass equals the tokens processed one at a time | §5, `parallel-equivalence` |
# | new tokens are generated one at a time: reading them all from one pass goes wrong | §5, `parallel-mistake` |
# | attention mixes tokens, the MLP never does; the causal mask's triangle | §6, `mixing-influence` |
# | permutation equivariance without positions, broken by positions or a causal mask | §7, `positions-words`, `positions-test` |
# | the parameter count three ways; the tied head is one tensor | §8, `stack-count` |
# | 600 + 6000 + 400 + 1000 = 8000 of 8192 leaves 192; the largest retrieved context is 6192 | §9, `budget-lab` |
# | a language whose best loss is known in closed form | §10, `markov-chain` |

# %% [markdown] id="next"
# ## Next: the exercises
#
# Open [`exercises/00_overview/00_overview.ipynb`](../exercises/00_overview/00_overview.ipynb). You will
# write a character tokenizer and one step of BPE, count tokens, write the block shape map, run the
# whole model as one function, write a permutation-equivariance test that must tell a
# position-aware model from one without positions, and budget a context window. Then chapter 01
# opens the block and starts with attention.
