# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] id="intro"
# # Chapter 08: training signals, and a model that learns
#
# Chapters 01 to 07 built a transformer that computes; this one makes it **learn**. A language model
# is trained by comparing its predictions with the text itself, so the whole art is in what is
# compared with what: which position predicts which token, which positions count, and what the model
# is allowed to see while it predicts. Get one of these wrong and training still runs, the loss
# still falls, and the model is useless.
#
# | signal | what is compared | used by |
# |---|---|---|
# | next-token loss | logits at $t$ against the token at $t + 1$ (shift by one) | GPT, Llama: every decoder-only LM |
# | masked-LM loss | logits at hidden positions against the hidden tokens (15 %, 80/10/10) | BERT, RoBERTa |
# | teacher forcing | a decoder reads the true previous tokens, not its own guesses | every decoder in training (T5, translation) |
# | loss mask | padding positions are never targets, matching the attention mask | every batched training run |
# | weight tying | one $(V, d_{\text{model}})$ matrix embeds tokens and scores them | GPT-2, T5, many small models |
#
# **Map of this notebook.**
#
# 1. The next-token loss: the shift by one, by hand and against `F.cross_entropy`
# 2. The masked-LM loss: BERT's 15 % and 80 / 10 / 10, measured
# 3. Teacher forcing: the decoder's inputs, and why one pass trains every position
# 4. Loss masks and attention masks: padding that neither leaks nor counts
# 5. Weight tying: one matrix, shared storage, $V \times d_{\text{model}}$ parameters saved
# 6. The training loop, the fast path it uses, and its speed against nanoGPT
# 7. **The run**: a tiny GPT trained on Python's documentation, against unigram to 4-gram count models on
#    the whole validation split, and on the Markov language against its entropy rate
# 8. Teacher forcing vs free-running generation
# 9. A mask bug in training: a model that sees the next token
# 10. Common mistakes, self-check, evidence card
#
# Each subtopic follows the same pattern: the idea, the formula, a worked example computed in a cell,
# where it shows up in real models, and a common mistake run beside the right version. Cells that
# start with `# NBVAL_CHECK_OUTPUT` are claims: the test suite re-runs the notebook and fails if their
# output ever changes.

# %% id="setup"
import math
import os

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import helpers
from helpers.baselines import RUN_CONFIG, RUN_TRAINING, NGramModel, ngram_losses, split_loss
from helpers.blocks import ModelConfig, TinyDecoder, model_param_count
from helpers.corpus import load_corpus, markov_chain
from helpers.tokenizers import course_chars
from helpers.training import (
    IGNORE_INDEX,
    adamw,
    batches,
    lm_labels,
    lm_loss,
    lr_at,
    mlm_loss,
    mlm_mask,
    param_count,
    sample_tokens,
    teacher_forcing_inputs,
    tie_weights,
    token_loss,
    train,
    train_step,
)

helpers.seed_everything(0)
device = helpers.get_device()
if device.type == "cpu":
    # The models here are tiny: on a 2-core CPU, one thread runs them several times faster than two
    # (the threads spend more time waiting for each other than computing; section 7 has numbers).
    torch.set_num_threads(1)
print("computing on:", device.type)


def show(t: torch.Tensor, digits: int = 4) -> list:
    """A tensor as plain nested lists of rounded floats: no device, no dtype, no -0.0."""
    return (torch.round(t.detach().double().cpu(), decimals=digits) + 0.0).tolist()


# %% [markdown] id="next-token"
# ## 1. The next-token loss
#
# **Main idea.** A decoder reads tokens $x_0 \dots x_{T-1}$ and, at every position $t$, outputs
# logits $z_t \in \mathbb{R}^V$: its guess for the token that comes **next**. The causal mask lets
# position $t$ see $x_0 \dots x_t$ only, so one forward pass makes $T - 1$ honest predictions at once.
# Training compares the guess at $t$ with the true $x_{t+1}$: logits and targets are shifted by one
# against each other. The last position has no target; the first token is never one.
#
# **Formula.** The cross-entropy of the softmax of $z_t$ with the true next token, averaged:
#
# $$
# \mathcal{L} = \frac{1}{N}\sum_{b,\,t} -\log \operatorname{softmax}(z_{b,t})_{x_{b,t+1}}
# = \frac{1}{N}\sum_{b,\,t} \Big(\log \sum_{v} e^{z_{b,t,v}} - z_{b,t,x_{b,t+1}}\Big),
# \qquad N = B\,(T-1).
# $$
#
# **Worked example.** One sequence of $T = 3$ tokens over a vocabulary of $V = 4$, with logits chosen
# by hand. Two predictions are scored: position 0 against $x_1 = 2$, position 1 against $x_2 = 0$.

# %% id="next-token-by-hand"
# NBVAL_CHECK_OUTPUT
ids = torch.tensor([[3, 2, 0]])  # (B, T) = (1, 3)
logits = torch.tensor([[[0.0, 0.0, 2.0, 0.0],  # (B, T, V) = (1, 3, 4): position 0 favours token 2
                        [1.0, 0.0, 0.0, 1.0],  # position 1: tokens 0 and 3
                        [0.0, 5.0, 0.0, 0.0]]])  # position 2: no target, never scored
p0 = math.exp(2) / (math.exp(2) + 3)  # softmax(z_0)[2]
p1 = math.e / (2 * math.e + 2)  # softmax(z_1)[0]
by_hand = (-math.log(p0) - math.log(p1)) / 2
print(f"p(x_1 = 2 | x_0) = {p0:.4f}, p(x_2 = 0 | x_0, x_1) = {p1:.4f}")
print(f"by hand: {by_hand:.4f} | lm_loss: {lm_loss(logits, ids).item():.4f}"
      f" | F.cross_entropy on shifted tensors: "
      f"{F.cross_entropy(logits[0, :-1], ids[0, 1:]).item():.4f}")

# %% [markdown] id="next-token-check-text"
# **Implementation check.** Shapes first: `logits[:, :-1]` is `(B, T-1, V)`, `ids[:, 1:]` is
# `(B, T-1)`. `helpers.training.lm_loss` writes the formula with `logsumexp` and `gather`; on random
# inputs it equals `F.cross_entropy` on the shifted, flattened tensors. A freshly initialized model
# (weights with standard deviation 0.02, as GPT-2) spreads its probability almost evenly, so its
# first loss is close to $\log V$: that is the number to expect at step 0, and a sanity check on
# every new training run.

# %% id="next-token-check"
# NBVAL_CHECK_OUTPUT
gen = torch.Generator().manual_seed(1)
logits = torch.randn(4, 9, 50, generator=gen, dtype=torch.float64)  # (B, T, V)
ids = torch.randint(0, 50, (4, 9), generator=gen)  # (B, T)
ours = lm_loss(logits, ids)
theirs = F.cross_entropy(logits[:, :-1].reshape(-1, 50), ids[:, 1:].reshape(-1))  # (B (T-1), V) vs (B (T-1),)
print("lm_loss equals F.cross_entropy on shifted tensors:", torch.allclose(ours, theirs))

torch.manual_seed(0)
fresh = TinyDecoder(ModelConfig(vocab_size=512, d_model=64, n_heads=4, n_layers=2, max_seq_len=64))
ids = torch.randint(0, 512, (8, 64), generator=gen)  # (B, T)
with torch.no_grad():
    first = lm_loss(fresh(ids), ids).item()
print(f"fresh model, V = 512: loss {first:.2f} vs ln V = {math.log(512):.2f}")

# %% [markdown] id="next-token-real"
# **In real models.** GPT-2's vocabulary has $V = 50{,}257$ byte-pair tokens, so its loss at step 0
# should be $\ln 50{,}257 \approx 10.8$ nats. The published figures, quoted as published and converted
# to nats per token in the cell: GPT-2's paper (Radford et al. 2019, table 3) reports zero-shot
# perplexities on WikiText-103 of 37.50 for the 117M model and 17.48 for the 1542M model; nanoGPT's
# README measures the released 124M checkpoint at a validation loss of 3.12 on OpenWebText.
# Perplexity is $e^{\mathcal{L}}$: the loss as "as unsure as a uniform choice among this many tokens".
# Per token is not per character: a GPT-2 token is about four characters of English, so these losses
# are not comparable with this chapter's character-level ones until divided by the characters per token.

# %% id="next-token-real-check"
# NBVAL_CHECK_OUTPUT
V_gpt2 = 50_257
print(f"GPT-2 at initialization: ln {V_gpt2} = {math.log(V_gpt2):.3f} nats per token (perplexity {V_gpt2})")
for name, ppl in [("GPT-2 117M, WikiText-103", 37.50), ("GPT-2 1542M, WikiText-103", 17.48)]:
    print(f"{name}: perplexity {ppl} = {math.log(ppl):.3f} nats per token, "
          f"{math.log(V_gpt2) - math.log(ppl):.2f} nats below the fresh model")
print(f"GPT-2 124M on OpenWebText (nanoGPT): 3.12 nats = perplexity {math.exp(3.12):.1f}")

# %% [markdown] id="next-token-mistake-text"
# **Common mistake: no shift, or the shift the wrong way.** Without the shift, position $t$ is scored
# against $x_t$, a token the model has just read: the model can learn to copy its input and the loss
# says nothing about prediction. Shifted the wrong way (`logits[:, 1:]` against `ids[:, :-1]`), each
# position is asked for the *previous* token. Both give a number that looks like a loss. Here a
# "model" that simply copies its input (huge logit on the token it reads) is scored all three ways.

# %% id="next-token-mistake"
# NBVAL_CHECK_OUTPUT
ids = torch.randint(0, 50, (4, 9), generator=torch.Generator().manual_seed(2))  # (B, T)
copier = 10.0 * F.one_hot(ids, 50).double()  # (B, T, V): logits that repeat the token just read
right = lm_loss(copier, ids).item()
no_shift = F.cross_entropy(copier.reshape(-1, 50), ids.reshape(-1)).item()
wrong_way = F.cross_entropy(copier[:, 1:].reshape(-1, 50), ids[:, :-1].reshape(-1)).item()
print(f"a copying model, right loss {right:.2f} | no shift {no_shift:.4f} (looks perfect) | "
      f"wrong way {wrong_way:.2f}")

# %% [markdown] id="mlm"
# ## 2. The masked-LM loss
#
# **Main idea.** An encoder like BERT sees the whole sequence at once (no causal mask), so "predict
# the next token" would be trivial. Instead some tokens are hidden and the model recovers them from
# both sides. BERT selects 15 % of positions; of those, 80 % become `[MASK]`, 10 % a random token
# and 10 % stay unchanged. The last two keep the model honest: `[MASK]` never appears when the
# model is used later, so it must build a good representation of *every* token, not only of masks.
# The loss is computed at the selected positions only; every other label is the ignore index.
#
# **Formula.** With $S$ the selected positions and $\tilde x$ the corrupted input,
#
# $$
# \mathcal{L}_{\text{MLM}} = \frac{1}{|S|}\sum_{(b,t) \in S} -\log \operatorname{softmax}\big(z_{b,t}(\tilde x)\big)_{x_{b,t}},
# \qquad P(\text{selected}) = 0.15,\ \ P(\texttt{[MASK]} \mid S) = 0.8,\ \ P(\text{random} \mid S) = P(\text{kept} \mid S) = 0.1.
# $$
#
# No shift here: position $t$ predicts its own (hidden) token. **Worked example:** `mlm_mask` on the
# corpus' first 20 000 characters, with a seeded generator; the rates land on their probabilities.

# %% id="mlm-rates"
# NBVAL_CHECK_OUTPUT
tok = course_chars()
V_chars = tok.vocab_size
text_ids = torch.tensor(tok.encode(load_corpus("train")[:20_000])).view(40, 500)  # (B, T)
MASK = V_chars  # one extra id for [MASK], beyond the characters
inputs, labels = mlm_mask(text_ids, MASK, V_chars + 1, torch.Generator().manual_seed(0))
selected = labels != -100  # (B, T)
k = int(selected.sum())
print(f"selected: {k / selected.numel():.3f} of {selected.numel()} positions")
print(f"  of those, [MASK]: {((inputs == MASK) & selected).sum().item() / k:.3f}, "
      f"random token: {((inputs != text_ids) & (inputs != MASK) & selected).sum().item() / k:.3f}, "
      f"unchanged: {((inputs == text_ids) & selected).sum().item() / k:.3f}")
print("unselected positions untouched:", torch.equal(inputs[~selected], text_ids[~selected]),
      "| labels there are -100:", bool((labels[~selected] == -100).all()))
print("first 60 characters, corrupted (# = [MASK]):")
print(repr("".join("#" if i == MASK else tok.decode([i]) for i in inputs[0, :60].tolist())))

# %% [markdown] id="mlm-mistake-text"
# **Common mistake: labels everywhere.** If the unselected positions keep their labels, most of the
# loss comes from positions where the answer is *in the input*: the model lowers it by copying, and
# the loss on the masked positions, the only part that teaches anything, is diluted 85 : 15. Below,
# a "model" that copies its input perfectly and knows nothing else: the right MLM loss says it is
# *worse* than knowing nothing, 9.03 nats against $\ln 95 = 4.55$ for a uniform guess (at the 90 % of
# selected positions whose input is [MASK] or a random token it bets everything on that wrong token),
# while the wrong one says it is nearly perfect.

# %% id="mlm-mistake"
# NBVAL_CHECK_OUTPUT
copier = 10.0 * F.one_hot(inputs, V_chars + 1).double()  # (B, T, V + 1): repeats its (corrupted) input
print(f"copying model: right MLM loss {mlm_loss(copier, labels).item():.2f} | "
      f"labels kept everywhere {mlm_loss(copier, text_ids).item():.2f}")
all_mask = torch.where(selected, torch.full_like(text_ids, MASK), text_ids)  # WRONG: 100 % [MASK]
print("with 100 % [MASK], a selected token is never visible in the input:",
      bool((all_mask[selected] == MASK).all()), "| with 80/10/10 it is in",
      f"{((inputs == text_ids) & selected).sum().item() / k:.0%} of them")

# %% [markdown] id="teacher-forcing"
# ## 3. Teacher forcing
#
# **Main idea.** A decoder that learns to produce a target sequence $y_0 \dots y_{T-1}$ (a translation,
# an answer, or simply the rest of a text) is fed the **true** previous tokens while training, not the
# ones it would have generated: its input at position $t$ is $y_{t-1}$ (a start token BOS at $t = 0$).
# With the causal mask, all $T$ positions then train in one parallel pass. At generation time there
# is no teacher: the model reads its own previous outputs (section 8 shows what that changes).
#
# **Formula.** Inputs $= [\text{BOS}, y_0, \dots, y_{T-2}]$, targets $= [y_0, \dots, y_{T-1}]$,
#
# $$
# \mathcal{L}_{\text{TF}} = \frac{1}{T}\sum_{t=0}^{T-1} -\log p_\theta\big(y_t \mid \text{BOS}, y_0, \dots, y_{t-1}\big),
# $$
#
# which is exactly the next-token loss of section 1 on the sequence $[\text{BOS}, y_0, \dots, y_{T-1}]$.

# %% id="teacher-forcing-check"
# NBVAL_CHECK_OUTPUT
targets = torch.tensor([tok.encode("attention")])  # (B, T) = (1, 9)
BOS = V_chars  # an extra id for the start token
inputs = teacher_forcing_inputs(targets, BOS)  # (1, 9)
print("inputs :", ["BOS" if i == BOS else tok.decode([i]) for i in inputs[0].tolist()])
print("targets:", [tok.decode([i]) for i in targets[0].tolist()])
torch.manual_seed(0)
toy = TinyDecoder(ModelConfig(vocab_size=V_chars + 1, d_model=32, n_heads=2, n_layers=1, max_seq_len=16)).double()
full = torch.cat([torch.full((1, 1), BOS), targets], dim=1)  # (1, 10): BOS y_0 .. y_8
with torch.no_grad():
    tf = token_loss(toy(inputs), targets).item()  # targets unshifted: the inputs carry the shift
    lm = lm_loss(toy(full), full).item()
print(f"teacher-forcing loss {tf:.6f} == next-token loss of BOS + targets {lm:.6f}:", math.isclose(tf, lm))

# %% [markdown] id="teacher-forcing-llm"
# **In real systems.** Teacher forcing is what makes pre-training affordable: one forward pass scores
# every position of every window. nanoGPT's GPT-2 (124M) recipe (`config/train_gpt2.py`) takes 12
# windows of 1,024 tokens per GPU, 5 accumulation steps, on 8 GPUs: 491,520 tokens per update, each of
# them a target, and 600,000 updates, about 300B tokens. Without teacher forcing each target would need
# the model's own previous outputs first: 1,024 sequential passes per window instead of one. The cell
# does the arithmetic, and measures the same trade on the toy model above.

# %% id="teacher-forcing-llm-run"
# NBVAL_CHECK_OUTPUT
per_update = 12 * 1024 * 5 * 8  # batch x block x accumulation x GPUs: every token is a target
print(f"targets per update: {per_update:,d} | in 600,000 updates: {per_update * 600_000 / 1e9:.1f}B tokens")
print("forward passes to score one window of 1,024 targets: teacher forcing 1, free-running 1,024")
with torch.no_grad():
    one_pass = toy(inputs)[0, :, :-1].argmax(-1)  # (T,): every position's guess in one pass, BOS + true prefix
    stepwise = torch.stack([toy(inputs[:, :t + 1])[0, -1, :-1].argmax() for t in range(inputs.shape[1])])  # T passes
print(f"the toy's {inputs.shape[1]} teacher-forced guesses from 1 pass equal those of {inputs.shape[1]} "
      f"separate passes:", torch.equal(one_pass, stepwise))

# %% [markdown] id="teacher-forcing-mistake-text"
# **Common mistake: feeding the targets, not the targets shifted right.** Forget the shift and the
# decoder's input at position $t$ is $y_t$ itself, the token it is asked to predict. The causal mask
# does not help: $y_t$ is at position $t$, which position $t$ may always read. Below, two copies of
# the same 1-layer model train for 150 steps on windows of the corpus, one on
# `teacher_forcing_inputs(y, BOS)`, one on `y` itself (the mistake); both are scored on validation
# windows with the inputs they were trained on, then asked to continue "The " greedily.

# %% id="teacher-forcing-mistake"
corpus_ids = torch.tensor(tok.encode(load_corpus("train")))  # (N_train,)
held_out = torch.tensor(tok.encode(load_corpus("val")))  # (N_val,)
_, y_val = batches(held_out, 64, 32, torch.Generator().manual_seed(1))  # (64, 32): validation targets


def fit_decoder(wrong: bool, steps: int = 150) -> TinyDecoder:
    torch.manual_seed(0)
    m = TinyDecoder(ModelConfig(vocab_size=V_chars + 1, d_model=32, n_heads=2, n_layers=1, max_seq_len=32,
                                positions="rope", kernels="fused")).to(device)
    opt = adamw(m, 1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        _, y = batches(corpus_ids, 16, 32, gen)  # (16, 32): the targets
        x = y if wrong else teacher_forcing_inputs(y, BOS)  # (16, 32); WRONG when x is y
        train_step(m, opt, x.to(device), y.to(device))
    return m.eval()


tf_models = {"shifted (right)": fit_decoder(wrong=False), "targets as inputs (WRONG)": fit_decoder(wrong=True)}
tf_val = {}
start_ids = torch.tensor([[BOS] + tok.encode("The ")], device=device)  # (1, 5)
for name, m in tf_models.items():
    x_val = y_val if "WRONG" in name else teacher_forcing_inputs(y_val, BOS)  # (64, 32)
    with torch.no_grad():
        tf_val[name] = token_loss(m(x_val.to(device)), y_val.to(device)).item()
    greedy = sample_tokens(m, start_ids, 30, generator=torch.Generator(), temperature=0)  # (1, 35)
    print(f"{name:>26}: validation loss {tf_val[name]:.3f} | greedy after 'The ': "
          f"{tok.decode(greedy[0, 5:].tolist())!r}")

# %% id="teacher-forcing-mistake-claims"
# NBVAL_CHECK_OUTPUT
print("targets as inputs: validation loss below 0.1 nats:", tf_val["targets as inputs (WRONG)"] < 0.1)
print("shifted inputs: an honest loss, above 1.5 nats:", tf_val["shifted (right)"] > 1.5)

# %% [markdown] id="teacher-forcing-mistake-caption"
# The wrong run's loss is nearly zero within 150 steps: it has learned to copy its input, which the
# training data rewards at every position. At generation time the input at the last position is the
# *previous* token, not the next, so the copier repeats the last character it read forever. A
# loss far below what the data allows, with useless samples, is the signature of a leak; section 9
# meets the same signature from a mask.

# %% [markdown] id="loss-mask"
# ## 4. Loss masks and attention masks
#
# **Main idea.** Sequences in a batch have different lengths, so the short ones are padded. Two
# masks must then agree: the **attention mask** keeps real tokens from reading padding, and the
# **loss mask** keeps padding from being scored. With right padding and a causal mask, real
# positions never see the padding after them; so the only thing left is the loss. Setting the
# labels of padding positions to the ignore index does it (`lm_labels`), and the mean must divide by
# the number of *scored* targets.
#
# **Formula.** With $m_{b,t} = 1$ where token $t$ of sequence $b$ is real (the attention mask),
#
# $$
# \mathcal{L} = \frac{\sum_{b,t} m_{b,t+1}\,\ell_{b,t}}{\sum_{b,t} m_{b,t+1}},
# \qquad \ell_{b,t} = -\log \operatorname{softmax}(z_{b,t})_{x_{b,t+1}} .
# $$
#
# **Worked example.** Three sequences of lengths 9, 6 and 3, padded to 9: the masked batch loss
# equals the loss of the three sequences computed one by one without padding. Averaging over every
# position (padding included) does not.

# %% id="loss-mask-check"
# NBVAL_CHECK_OUTPUT
torch.manual_seed(0)
toy = TinyDecoder(ModelConfig(vocab_size=20, d_model=16, n_heads=2, n_layers=2, max_seq_len=16)).double().eval()
gen = torch.Generator().manual_seed(3)
lengths = [9, 6, 3]
seqs = [torch.randint(0, 19, (n,), generator=gen) for n in lengths]
PAD = 19
ids = torch.full((3, 9), PAD)  # (B, T), right-padded
for b, s in enumerate(seqs):
    ids[b, :len(s)] = s
attention_mask = torch.arange(9) < torch.tensor(lengths)[:, None]  # (B, T): True = real token
print(attention_mask.int())
with torch.no_grad():
    logits = toy(ids)  # (B, T, V)
    masked = lm_loss(logits, lm_labels(ids, attention_mask)).item()
    one_by_one = sum(F.cross_entropy(toy(s[None])[0, :-1], s[1:], reduction="sum").item() for s in seqs) \
        / sum(n - 1 for n in lengths)
    targets = lm_labels(ids, attention_mask)[:, 1:]  # (B, T-1)
    per_token = F.cross_entropy(logits[:, :-1].reshape(-1, 20), targets.reshape(-1), reduction="none")
    padded_mean = per_token.sum().item() / per_token.numel()  # WRONG: padding counted in the mean
print(f"masked batch loss {masked:.4f} | sequences one by one {one_by_one:.4f} | "
      f"mean over all positions {padded_mean:.4f} (wrong)")

# %% [markdown] id="ignore-index-text"
# **In real trainers.** The ignore index is a convention, and everyone uses the same one: $-100$.
# It is the default `ignore_index` of `torch.nn.functional.cross_entropy` and of
# `nn.CrossEntropyLoss`. Hugging Face's causal language models (GPT-2, Llama, ...) take `labels`
# shaped like `input_ids`, with $-100$ wherever no loss is wanted, shift them inside the model
# (`logits[..., :-1, :]` against `labels[..., 1:]`) and call `cross_entropy` with `ignore_index=-100`;
# its `DataCollatorForLanguageModeling(mlm=False)` writes $-100$ into the labels at padding. The cell
# reads torch's defaults and runs that recipe on the padded batch above: it is the masked loss.

# %% id="ignore-index"
# NBVAL_CHECK_OUTPUT
import inspect

print("F.cross_entropy's default ignore_index:", inspect.signature(F.cross_entropy).parameters["ignore_index"].default,
      "| nn.CrossEntropyLoss().ignore_index:", torch.nn.CrossEntropyLoss().ignore_index,
      "| helpers.training.IGNORE_INDEX:", IGNORE_INDEX)
hf_labels = ids.clone()  # (B, T): Hugging Face's labels start as the input ids
hf_labels[~attention_mask] = -100  # ... with -100 at padding
shift_logits, shift_labels = logits[..., :-1, :], hf_labels[..., 1:]  # (B, T-1, V), (B, T-1): the shift inside the model
hf_loss = F.cross_entropy(shift_logits.reshape(-1, 20), shift_labels.reshape(-1)).item()  # default ignore_index
print(f"Hugging Face's recipe {hf_loss:.4f} | masked batch loss {masked:.4f} | equal:", math.isclose(hf_loss, masked))

# %% [markdown] id="tying"
# ## 5. Weight tying
#
# **Main idea.** The token embedding $W_E$ maps an id to a vector, `(V, d_model)`; the LM head
# $W_U$ maps a vector to $V$ scores, also `(V, d_model)` in `nn.Linear` layout. Tying uses one matrix
# for both, $W_U = W_E$: a token's input vector is also the direction that scores it as output
# (Press & Wolf 2017; GPT-2, T5). It saves $V \times d_{\text{model}}$ parameters, a large share of a
# small model, and the shared matrix gets gradients from both ends. It must be **one tensor**: a copy
# would drift apart at the first optimizer step and save nothing.
#
# $$
# \text{logits} = h\,W_E^{\top}, \qquad \#\text{params}_{\text{untied}} - \#\text{params}_{\text{tied}} = V\,d_{\text{model}}.
# $$

# %% id="tying-check"
# NBVAL_CHECK_OUTPUT
config = dict(vocab_size=V_chars, d_model=64, n_heads=4, n_layers=2, max_seq_len=64)
untied = TinyDecoder(ModelConfig(**config, tie_weights=False))
before = param_count(untied)
copied = TinyDecoder(ModelConfig(**config, tie_weights=False))
copied.lm_head.weight = torch.nn.Parameter(copied.tok_emb.weight.detach().clone())  # WRONG: a copy
tie_weights(untied.tok_emb, untied.lm_head)  # right: the same Parameter
print(f"V = {V_chars}, d_model = 64: untied {before} parameters, tied {param_count(untied)}, "
      f"saved {before - param_count(untied)} = V x d_model = {V_chars * 64}")
print("formula (helpers.blocks.model_param_count) agrees:",
      param_count(untied) == model_param_count(ModelConfig(**config, tie_weights=True)))
print("tied: same Parameter:", untied.lm_head.weight is untied.tok_emb.weight,
      "| same storage:", untied.lm_head.weight.data_ptr() == untied.tok_emb.weight.data_ptr())
print("copy: same storage:", copied.lm_head.weight.data_ptr() == copied.tok_emb.weight.data_ptr(),
      "| parameters:", param_count(copied))
x = torch.randint(0, V_chars, (2, 16), generator=torch.Generator().manual_seed(4))
for name, m in [("tied", untied), ("copy", copied)]:
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    lm_loss(m(x), x).backward()
    opt.step()
    gap = (m.lm_head.weight - m.tok_emb.weight).abs().max().item()
    print(f"after one AdamW step, {name}: max |W_U - W_E| = {gap:.4f}")

# %% [markdown] id="loop"
# ## 6. The training loop, the fast path, and its speed
#
# `helpers.training.train` is nanoGPT's recipe at a small scale; chapters 06 and 09 use it too.
#
# * **batches**: B random windows of T + 1 consecutive tokens; x is the first T, y the last T, so
#   `y[:, t]` is the token after `x[:, t]` (the shift is done once, here, and the loss is
#   `token_loss(model(x), y)`, unshifted);
# * **AdamW** (decoupled weight decay 0.1 on matrices and embeddings, none on norm gains);
# * **learning rate**: linear warm-up to `lr`, then cosine decay to `min_lr` at the last step;
# * **gradient clipping**: the global gradient norm is scaled down to at most 1;
# * **validation** on fixed held-out batches before the first step, regularly, and at the end;
# * a `tqdm.auto` **progress bar** and a returned history that plots in one call.
#
# $$
# \eta_t = \begin{cases} \eta\,\dfrac{t+1}{w} & t < w \\[4pt]
# \eta_{\min} + \tfrac12(\eta - \eta_{\min})\big(1 + \cos \pi p_t\big),\ \ p_t = \dfrac{t + 1 - w}{S - w} & t \ge w \end{cases}
# $$

# %% id="loop-schedule"
# NBVAL_CHECK_OUTPUT
rates = [lr_at(s, lr=3e-3, steps=100, warmup=10, min_lr=3e-4) for s in range(100)]
print("warm-up:", [f"{r:.1e}" for r in rates[:3]], "... peak at step 9:", f"{rates[9]:.1e}",
      "| last step:", f"{rates[-1]:.1e}")
x, y = batches(torch.arange(100), 2, 5, torch.Generator().manual_seed(0))
print("a batch of windows:", x.tolist(), "-> next tokens:", y.tolist())

# %% [markdown] id="fused"
# **Which kernels train.** The shared model has two paths through the same parameters, chosen by
# one config field. `kernels="course"` runs the chapters' own functions: chapter 01's attention,
# which forms the `(T, T)` weight matrix and can return it (chapter 09's diagnostics need that),
# chapter 04's norms, chapter 03's FFN, every input checked. `kernels="fused"` is the fast path:
# one matmul for Q, K and V (the three weights stacked), `torch.nn.functional.scaled_dot_product_attention`
# (which never materializes the weights; on a GPU it is FlashAttention-style tiled attention, chapter 07),
# `F.layer_norm` / `F.rms_norm`, `F.gelu` / `F.silu`, the embedding looked up by `F.embedding`.
# The test suite proves the two equal, outputs and gradients, for every model kind, position
# method, norm, block and FFN variant, grouped K/V heads and the KV cache
# (`tests/test_fused_attention.py`); a model asked for its weights takes the course path.
# Training needs no weights, so the runs of chapters 06, 08 and 09 use `"fused"`. The same check on one batch:

# %% id="fused-check"
# NBVAL_CHECK_OUTPUT
torch.manual_seed(0)
course_model = TinyDecoder(ModelConfig(**config, kernels="course")).double()
fused_model = TinyDecoder(ModelConfig(**config, kernels="fused")).double()
fused_model.load_state_dict(course_model.state_dict())
x = torch.randint(0, V_chars, (3, 32), generator=torch.Generator().manual_seed(5))  # (B, T)
losses = [lm_loss(m(x), x) for m in (course_model, fused_model)]
for loss in losses:
    loss.backward()
grad_gap = max((a.grad - b.grad).abs().max().item()
               for a, b in zip(course_model.parameters(), fused_model.parameters()))
print(f"course loss {losses[0].item():.10f} | fused loss {losses[1].item():.10f} | "
      f"largest gradient difference below 1e-12: {grad_gap < 1e-12}")

# %% [markdown] id="throughput-text"
# **How fast, against nanoGPT.** The next cell times training steps at nanoGPT's CPU configuration
# (4 layers, 4 heads, `d_model` 128, block 64, batch 12, 65 characters) for the course path, the fast
# path and `helpers.nanogpt.NanoGPT`, nanoGPT's `model.py` architecture (Pre-LN GPT, one `c_attn`
# for Q, K, V, causal `F.scaled_dot_product_attention`, GELU MLP, tied head), each run with its own
# training iteration: our `train_step` (clipping, torch's fused AdamW), nanoGPT's (clipping, its
# plain AdamW loop on a CPU). The models take turns (interleaved rounds), so a busy machine slows all
# three alike; compare the ratios, not the raw rates, and rerun the cell to see the spread. The
# `GFLOP/s` column is tokens/s times the training FLOPs per token, $6N + 12 L d T$, and the last
# column its fraction of a large float32 matmul's rate on this CPU: the arithmetic limit.
# `tools/bench_training.py` runs the same comparison longer, with the model alone as well.

# %% id="throughput"
from helpers.nanogpt import NANOGPT_CPU, NanoGPT, compare_training, matmul_peak, nanogpt_step, training_flops_per_token

nc = NANOGPT_CPU
bench_gen = torch.Generator().manual_seed(0)
bench_data = [torch.randint(0, nc["vocab_size"], (nc["batch_size"], nc["block_size"] + 1), generator=bench_gen)
              for _ in range(4)]  # 4 batches of (B, T + 1)
bench_data = [(d[:, :-1].contiguous(), d[:, 1:].contiguous()) for d in bench_data]  # x, y (B, T)


def our_stepper(kernels: str):
    torch.manual_seed(0)
    m = TinyDecoder(ModelConfig(vocab_size=nc["vocab_size"], d_model=nc["n_embd"], n_heads=nc["n_head"],
                                n_layers=nc["n_layer"], max_seq_len=nc["block_size"], kernels=kernels))
    opt = adamw(m, 1e-3, betas=(0.9, 0.99))
    return lambda i: train_step(m, opt, *bench_data[i % 4])


torch.manual_seed(0)
nano = NanoGPT(nc["vocab_size"], nc["block_size"], nc["n_layer"], nc["n_head"], nc["n_embd"])
nano_opt = nano.configure_optimizers(0.1, 1e-3, (0.9, 0.99))
steppers = {"course path": our_stepper("course"), "fast path": our_stepper("fused"),
            "nanoGPT": lambda i: nanogpt_step(nano, nano_opt, *bench_data[i % 4])}
tokens = nc["batch_size"] * nc["block_size"]
flops = training_flops_per_token(param_count(nano) - nc["block_size"] * nc["n_embd"], nc["n_layer"],
                                 nc["n_embd"], nc["block_size"])
rates = compare_training(steppers, tokens, threads=(1, 2), rounds=3, seconds=0.2, warmup=1)
print(f"{'threads':>7} {'model':>12} {'tokens/s':>9} {'vs nanoGPT':>10} {'GFLOP/s':>8} {'of peak':>8}")
for n, by_model in rates.items():
    peak = matmul_peak(n, n=512)
    for name, r in by_model.items():
        tps = sorted(r)[len(r) // 2]
        base = sorted(by_model["nanoGPT"])[len(r) // 2]
        print(f"{n:>7} {name:>12} {tps:>9,.0f} {tps / base:>9.2f}x {tps * flops / 1e9:>8.1f} "
              f"{tps * flops / 1e9 / peak:>8.0%}")
load, cpus = os.getloadavg()[0], os.cpu_count()
print(f"load average {load:.1f} on {cpus} CPUs: " + ("above the CPU count, a busy machine (other work slowed these timings)"
                                                  if load > cpus else "not above the CPU count (little other work competed with these timings)"))

# %% [markdown] id="throughput-caption"
# *Reading the table:* on one thread the course path is the slowest (it computes the same numbers
# with many small, checked operations and forms the weights), and the fast path runs at about
# nanoGPT's rate, because it does the same operations (`tools/bench_training.py` shows that the
# model alone, with the same loss and optimizer, is at parity; our training step gains a little
# more from torch's fused AdamW). On two threads a model this small gains little: most of its
# operations are too short to split, and each one that is split waits for the second thread. On a
# machine that other programs keep busy (load average above the CPU count) that wait is a whole
# scheduler time slice, the two-thread rows measure the waiting rather than the models, and two
# threads run several times *slower* than one. `train` and `generate` therefore time a probe on one
# and on two threads and keep the faster setting (`helpers.threads.choose_threads`), then restore yours.

# %% [markdown] id="run"
# ## 7. The run
#
# **Data.** Python's own documentation (chapter 00's corpus, no download), one id per character:
# 94 distinct characters. The split is by whole documents, so no paragraph is in both halves.
#
# **Baselines: count models on the same targets.** An order-$n$ count model predicts a character from
# the $n - 1$ before it with frequencies counted on the training split: **unigram** (no context),
# **bigram** (one character), **trigram** (two), **4-gram** (three). Raw frequencies give probability
# 0 to anything the training text never showed, so they are smoothed; `helpers.baselines.NGramModel`
# uses interpolated Witten-Bell smoothing (Chen & Goodman 1998), which mixes each order with the
# next lower one down to the uniform $1/V$:
#
# $$
# p_k(w \mid h) = \frac{c(h\,w) + T(h)\,p_{k-1}(w \mid h')}{c(h) + T(h)},
# $$
#
# with $h$ the last $k$ characters, $h'$ its last $k-1$, $c$ training counts and $T(h)$ the number of
# distinct characters that followed $h$ (an unseen $h$ uses $p_{k-1}$). Every model, the transformer
# included, is scored on **every** character of the validation split after the first, each from the
# characters before it: the transformer through overlapping windows of 64 (`split_loss`), so that all
# but the first 64 targets see at least 32 characters of context. A handful of random windows would
# give a noisy number on other text than the baselines'.
#
# A transformer that uses more than the last three characters must end below the 4-gram line.
#
# **Model.** `TinyDecoder`: 2 layers, 4 heads, `d_model` 64, block of 64 characters, Pre-LN,
# GELU, RoPE positions, tied weights, the fast path: about 105 thousand parameters
# (`helpers.baselines.RUN_CONFIG`), trained for 1,000 steps of 16 windows (`RUN_TRAINING`).
# `train` picks torch's thread count itself (one thread, or more when a timed probe says they are
# clearly faster) and restores yours afterwards; `history.threads` says which it used. (This
# notebook chose one thread in its first cell, so here one is the only candidate.)

# %% id="run-data"
# NBVAL_CHECK_OUTPUT
train_ids = torch.tensor(tok.encode(load_corpus("train")))  # (N_train,)
val_ids = torch.tensor(tok.encode(load_corpus("val")))  # (N_val,)
counts = ngram_losses(train_ids, val_ids, V_chars)  # {"unigram": ..., ..., "4-gram": ...}
print(f"characters: train {len(train_ids)}, validation {len(val_ids)}, V = {V_chars}")
print(f"whole validation split, nats per character: uniform ln V = {math.log(V_chars):.3f}, "
      + ", ".join(f"{name} {loss:.3f}" for name, loss in counts.items()))

# %% [markdown] id="ngram-check-text"
# **Implementation check.** A smoothed model is a probability distribution after every context,
# seen or not: the trigram's $p(\cdot \mid h)$ sums to 1 over the 94 characters and is never 0. The
# counts behind one prediction, by hand: after "th", the training text has a known number of
# continuations, and the formula above turns them into the model's $p(\text{e} \mid \text{th})$.

# %% id="ngram-check"
# NBVAL_CHECK_OUTPUT
trigram = NGramModel(train_ids, 3, V_chars)
bigram_model = NGramModel(train_ids, 2, V_chars)
for context in ["th", "qz", "\n\n"]:
    p = trigram.distribution(tok.encode(context))  # (V,)
    print(f"after {context!r}: sum of p = {p.sum().item():.12f}, smallest p > 0: {bool(p.min() > 0)}")
pairs = list(zip(train_ids[:-2].tolist(), train_ids[1:-1].tolist(), train_ids[2:].tolist()))
th = [c for a, b, c in pairs if (a, b) == tuple(tok.encode("th"))]  # what followed "th" in training
c_h, c_hw, T_h = len(th), th.count(tok.encode("e")[0]), len(set(th))
p_lower = bigram_model.distribution(tok.encode("h"))[tok.encode("e")[0]].item()  # p_1(e | h)
by_hand = (c_hw + T_h * p_lower) / (c_h + T_h)
print(f'"th" seen {c_h} times, followed by "e" {c_hw} times, by {T_h} distinct characters; '
      f"p_1(e | h) = {p_lower:.4f}")
print(f"p(e | th) by hand {by_hand:.4f} | NGramModel {trigram.distribution(tok.encode('th'))[tok.encode('e')[0]].item():.4f}")

# %% id="run-model"
run_config = ModelConfig(vocab_size=V_chars, **RUN_CONFIG)
torch.manual_seed(0)
model = TinyDecoder(run_config).to(device)
print(f"{param_count(model)} parameters; fresh validation loss should be near ln V = {math.log(V_chars):.3f}")
x_probe = val_ids[:64 * 64].view(64, 64).to(device)  # (64, 64): validation windows
with torch.no_grad():
    p_read = torch.softmax(model(x_probe).double(), -1).gather(-1, x_probe[..., None]).mean().item()
print(f"fresh model's probability for the character it just read: {p_read:.4f} vs 1/V = {1 / V_chars:.4f} | "
      f"validation characters equal to the one before: {(val_ids[1:] == val_ids[:-1]).double().mean().item():.0%}")
prompt = torch.tensor([tok.encode("The ")], device=device)  # (1, 4)
before = sample_tokens(model, prompt, 80, generator=torch.Generator().manual_seed(0))
print("sample before training:", repr(tok.decode(before[0].tolist())))

# %% id="run-train"
print(RUN_TRAINING)
history = train(model, train_ids, val_ids, **RUN_TRAINING, eval_every=100, eval_batches=4, seed=0, device=device)
whole = split_loss(model, val_ids.to(device), block_size=RUN_TRAINING["block_size"])
print(f"{history.tokens} training tokens in {history.seconds:.0f} s: {history.tokens_per_s:,.0f} tokens/s "
      f"on {history.threads} thread(s) (forward + backward + AdamW, validation excluded)")
print(f"validation loss on 4 fixed batches (the curve): start {history.val_loss[0]:.3f}, end {history.val_loss[-1]:.3f}")
print(f"validation loss on the whole split: {whole:.3f}; trigram {counts['trigram']:.3f}, 4-gram {counts['4-gram']:.3f}")

# %% id="run-claims"
# NBVAL_CHECK_OUTPUT
print("fresh model within 0.15 of ln V:", abs(history.val_loss[0] - math.log(V_chars)) < 0.15)
print("trained model, whole split, below the trigram:", whole < counts["trigram"])
print("trained model, whole split, below the 4-gram:", whole < counts["4-gram"])

# %% id="run-plot"
ax = history.plot(baselines=counts, title="The run ends below the 4-gram line: it reads more than 3 characters back")
ax.plot([history.val_steps[-1]], [whole], "*", color="tab:red", ms=14, label=f"whole validation split {whole:.3f}")
ax.legend()
plt.show()

# %% [markdown] id="run-plot-caption"
# *What to see:* the validation loss (orange, on 4 fixed batches) starts just under $\ln V = 4.54$
# (4.43 here: the fresh model gives the character it just read almost twice its share, `run-model`
# prints it, and 18 % of this corpus' characters, mostly the spaces of indented code, repeat the one
# before) and
# falls through the unigram, bigram and trigram lines; at the end, the loss on the whole validation
# split (red star, the same targets the count models score) is below the 4-gram line. The four
# batches and the whole split differ by a few hundredths: a curve drawn from a handful of windows is
# an estimate, and a comparison with a baseline must use the baseline's own data.

# %% id="run-samples"
after = sample_tokens(model, prompt, 300, generator=torch.Generator().manual_seed(0), temperature=0.8)
print("sample after training (temperature 0.8):")
print(tok.decode(after[0].tolist()))

# %% [markdown] id="run-samples-text"
# Before training the sample is uniform noise over the 94 characters. After a million characters of
# training (1,000 steps of 16 x 64; each character of the training split seen about three times) it
# is made mostly of real words of the documentation ("statement", "defined", "character",
# "namespace", "attribute"), with made-up ones in between, and its lines look like the corpus' lines, but its
# sentences mean nothing: at about 1.46 nats per character the model knows spelling and a little
# syntax. Two changes against the chapter's first version of this run made the difference:
# **RoPE** instead of a learned position table (which starts as noise and must be learned for every
# one of the 64 positions: the same 500 steps end at 2.36 with it, 1.68 with RoPE) and twice the
# steps. More width or a third layer buy little more at this budget.

# %% [markdown] id="markov-run"
# **Against a known floor: the Markov language.** On real text nobody knows the best possible loss.
# Chapter 00 built a language where we do: text from a Markov chain over 8 letters, whose entropy
# rate $H = -\sum_i \pi_i \sum_j P_{ij} \log P_{ij}$ is the lowest average loss any model can reach.
# The same loop trains a 1-layer model on 50,000 letters of it and scores it on 10,000 more; the
# chain itself, scored on the same validation letters, shows how far this finite sample lets the
# loss differ from $H$.

# %% id="markov-run-train"
chain = markov_chain()
letters = torch.tensor([chain.alphabet.index(c) for c in chain.sample(60_000, seed=0)])  # (60000,)
chain_train, chain_val = letters[:50_000], letters[50_000:]  # (50000,), (10000,)
torch.manual_seed(0)
chain_model = TinyDecoder(ModelConfig(vocab_size=8, d_model=32, n_heads=2, n_layers=1, max_seq_len=32,
                                      positions="rope", kernels="fused")).to(device)
chain_history = train(chain_model, chain_train, chain_val, steps=300, batch_size=16, block_size=32, lr=1e-2,
                      warmup=20, min_lr=1e-3, eval_every=30, eval_batches=4, seed=0, device=device, progress=False)
chain_whole = split_loss(chain_model, chain_val.to(device), block_size=32)
P = chain.transition  # (8, 8)
chain_on_val = -P[chain_val[:-1], chain_val[1:]].log().mean().item()  # the true chain's loss on the same targets
print(f"entropy rate H = {chain.entropy_rate():.4f} | the chain itself on these letters {chain_on_val:.4f} | "
      f"trained model {chain_whole:.4f} | ignoring context H(pi) = {chain.unigram_entropy():.4f} | "
      f"ln 8 = {math.log(8):.4f} nats")

# %% id="markov-run-claims"
# NBVAL_CHECK_OUTPUT
print("trained model within 0.02 nats of the entropy rate:", abs(chain_whole - chain.entropy_rate()) < 0.02)
print("no model can beat the chain by much: the chain's own loss within 0.02 of H:",
      abs(chain_on_val - chain.entropy_rate()) < 0.02)
print("the model uses the previous letter (far below H(pi)):", chain_whole < chain.unigram_entropy() - 0.3)

# %% id="markov-run-plot"
ax = chain_history.plot(baselines={"H(pi): no context": chain.unigram_entropy(), "entropy rate H": chain.entropy_rate()},
                        title="On the Markov language the loss stops at the entropy rate")
ax.plot([chain_history.val_steps[-1]], [chain_whole], "*", color="tab:red", ms=14,
        label=f"whole validation split {chain_whole:.3f}")
ax.legend()
plt.show()

# %% [markdown] id="markov-run-caption"
# *What to see:* the loss falls from $\ln 8$ through $H(\pi)$ and then flattens on the entropy-rate
# line, not below it: once a model knows $P$ there is nothing left to learn. The 4-batch curve runs
# a few hundredths under $H$ (its 2,048 letters happen to be a little easier than average); on the
# whole validation split (red star) the model is within a few thousandths of a nat of $H$, and the
# chain itself scores within a thousandth of $H$ on the same letters. On real text there is no such line, which is
# why the count models above stand in for it.

# %% [markdown] id="free-running"
# ## 8. Teacher forcing vs free-running generation
#
# During training the model always reads the **true** previous characters (teacher forcing). When it
# generates, it reads **its own** previous outputs. Here the same validation text is continued both
# ways: with teacher forcing, the next character is predicted (greedily) from the true prefix at
# every position; free-running, the model writes 60 characters after a true prompt and each guess is
# fed back. One early mistake changes every later input, and the free-running text drifts from the
# truth, while the teacher-forced guesses stay as good as the loss says.

# %% id="free-running-check"
start = load_corpus("val").find("\nThe ", 10_000) + 1  # a sentence of prose in the validation split
chunk = val_ids[start:start + 64][None].to(device)  # (1, 64): 24 characters of prompt + 40 to predict
with torch.no_grad():
    teacher = model(chunk).argmax(-1)  # (1, 64): the guess for the next character at every position
tf_hits = (teacher[0, 23:-1] == chunk[0, 24:]).float().mean().item()
free = sample_tokens(model, chunk[:, :24], 40, generator=torch.Generator(), temperature=0)  # (1, 64) greedy
free_hits = (free[0, 24:] == chunk[0, 24:]).float().mean().item()
print(f"teacher-forced greedy guesses matching the true next character: {tf_hits:.0%} of 40")
print(f"free-running greedy text matching the true continuation:       {free_hits:.0%} of 40")

# %% id="free-running-claim"
# NBVAL_CHECK_OUTPUT
print("teacher-forced guesses match the truth more often than free-running text:", tf_hits > free_hits)

# %% id="free-running-show"
print("prompt       :", repr(tok.decode(chunk[0, :24].tolist())))
print("truth        :", repr(tok.decode(chunk[0, 24:].tolist())))
print("teacher-forced guesses:", repr(tok.decode(teacher[0, 23:-1].tolist())))
print("free-running :", repr(tok.decode(free[0, 24:].tolist())))

# %% [markdown] id="free-running-loop"
# The free-running line above falls into a loop ("statement is a statement is a ..."). That loop is
# **greedy decoding**, not teacher forcing's fault: the most likely continuation of "statement is a "
# is "statement is a " again, and a deterministic rule that comes back to a state it has been in repeats it forever. (The drift that
# teacher forcing is blamed for, *exposure bias*, is the model meeting its own mistakes as inputs,
# which it never saw in training.) Sampling from the same model at temperature 0.8 does not loop,
# though it drifts from the truth just as much:

# %% id="free-running-sampled"
sampled = sample_tokens(model, chunk[:, :24], 40, generator=torch.Generator().manual_seed(0), temperature=0.8)
sampled_hits = (sampled[0, 24:] == chunk[0, 24:]).float().mean().item()


def longest_repeat(ids: list[int]) -> int:
    """How many characters at the end repeat the characters a short period (1..20) earlier."""
    best = 0
    for period in range(1, 21):
        n = 0
        while n + period < len(ids) and ids[-1 - n] == ids[-1 - n - period]:
            n += 1
        best = max(best, n)
    return best


print("sampled (t = 0.8):", repr(tok.decode(sampled[0, 24:].tolist())), f"matching the truth: {sampled_hits:.0%}")
print("characters at the end that repeat a short period: greedy", longest_repeat(free[0, 24:].tolist()),
      "| sampled", longest_repeat(sampled[0, 24:].tolist()))

# %% [markdown] id="mask-bug"
# ## 9. A mask bug: a model that sees the next token
#
# Train the same model with `causal=False`: no causal mask, so position $t$ can read $x_{t+1}$, the
# very token it is asked to predict (windows of 16 characters, 32 per batch, so that the shortcut is
# found within the budget: in longer windows the attention takes longer to single out one position).
# Nothing crashes. The loss falls far faster than the real run's and
# far below anything a language model can reach: from about 4.5 to about 0.5 in 200 steps (printed below),
# where the causal model needs 1,000 steps of 64-character windows to reach about 1.5. It does not go to zero: the last position of each
# window has no next token inside the window to read, so 1 prediction in 16 stays an honest guess.
# The true floor for English text is well above that,
# and this model has learned no language: at generation time there is no next token to read, and the
# samples are garbage. An impossibly good loss is a bug, most often in the mask.

# %% id="mask-bug-train"
torch.manual_seed(0)
leaky = TinyDecoder(ModelConfig(**{**vars(run_config), "causal": False})).to(device)
leak_history = train(leaky, train_ids, val_ids, steps=200, batch_size=32, block_size=16, lr=1e-2, warmup=20,
                     min_lr=1e-3, eval_every=25, eval_batches=4, seed=0, device=device, progress=False)
print(f"leaky model: validation loss {leak_history.val_loss[0]:.2f} -> {leak_history.val_loss[-1]:.2f} in 200 steps; "
      f"the causal model ended at {history.val_loss[-1]:.2f} after 1,000 (same 4-batch estimate)")

# %% id="mask-bug-claims"
# NBVAL_CHECK_OUTPUT
print("leaky model far below the bigram baseline:", leak_history.val_loss[-1] < counts["bigram"] - 1.0)
print("leaky model below the trained causal model:", leak_history.val_loss[-1] < history.val_loss[-1])

# %% id="mask-bug-plot"
fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(history.val_steps, history.val_loss, "o-", label="causal (right)")
ax.plot(leak_history.val_steps, leak_history.val_loss, "s-", color="tab:red", label="no causal mask (bug)")
ax.axhline(counts["bigram"], color="gray", ls="--", label=f"bigram {counts['bigram']:.2f}")
ax.set_xlabel("update step")
ax.set_ylabel("validation loss (nats per character)")
ax.set_title("A model that can see the next token reaches an impossibly low loss")
ax.legend()
plt.show()

# %% [markdown] id="mask-bug-plot-caption"
# *What to see:* the model without a causal mask (red) falls far below the bigram line to an
# impossibly low loss, because it can read the token it has to predict; the correct causal model
# (blue) descends more slowly and ends well below the bigram line, at an honest loss.

# %% id="mask-bug-sample"
garbage = sample_tokens(leaky, prompt, 120, generator=torch.Generator().manual_seed(0), temperature=0.8)
print("sample from the leaky model:", repr(tok.decode(garbage[0].tolist())))

# %% [markdown] id="mistakes-summary"
# ## 10. Common mistakes
#
# | mistake | symptom you can print | the fix |
# |---|---|---|
# | no shift | a copying model gets loss ~0; the model learns to copy | `logits[:, :-1]` vs `ids[:, 1:]` |
# | shift the wrong way | the model is asked for the previous token | same as above |
# | averaging over padding | the batch loss changes with the amount of padding | labels -100 on padding, divide by scored targets |
# | loss on probabilities (softmax twice) | loss stuck near $\ln V$, tiny gradients | feed raw logits to the loss |
# | MLM: all selected tokens become `[MASK]` | the model never has to represent a visible selected token | 80 / 10 / 10 |
# | MLM: labels on unselected positions | copying looks like learning; the masked signal is diluted | labels -100 off the selection |
# | teacher forcing: the targets as the decoder's inputs | training loss near 0 at once; generation repeats the last input | inputs = BOS + targets shifted right (section 3) |
# | a model scored on a few batches, its baselines on the whole split | a margin that is partly noise and partly other text | score both on the same targets (`split_loss`, section 7) |
# | tying by copying | `data_ptr` differs; the matrices drift apart after one step; no parameters saved | assign the Parameter itself |
# | no causal mask in a decoder | impossibly low loss, garbage samples | causal mask (section 9) |
# | fresh loss far from $\ln V$ | a bad initialization or a bug before training starts | check step 0 |

# %% [markdown] id="self-check"
# ## Self-check
#
# **Q1.** `logits` is `(8, 128, 50257)` and `ids` is `(8, 128)`. How many predictions does the
# next-token loss average over, with no padding?
#
# <details><summary>Answer</summary>
#
# $8 \times 127 = 1016$: the last position of each sequence has no next token.
#
# </details>
#
# **Q2.** Your first logged loss for a model with $V = 32000$ is 18.7. Is something wrong?
#
# <details><summary>Answer</summary>
#
# Probably: a fresh model should start near $\ln 32000 \approx 10.4$. A much higher start means
# confident wrong predictions at initialization (weights too large, a missing scaling).
#
# </details>
#
# **Q3.** Why does BERT leave 10 % of the selected tokens unchanged?
#
# <details><summary>Answer</summary>
#
# `[MASK]` never appears at fine-tuning or inference; if only masked positions were ever scored, the
# model could ignore visible tokens' representations. Keeping some selected tokens visible (and
# replacing some at random) forces a good prediction for every position.
#
# </details>
#
# **Q4.** Write the teacher-forcing inputs for targets `[y0, y1, y2]`.
#
# <details><summary>Answer</summary>
#
# `[BOS, y0, y1]`.
#
# </details>
#
# **Q5.** A model's validation loss is 0.05 nats per character on English text after five minutes
# of CPU training. What do you check first?
#
# <details><summary>Answer</summary>
#
# The attention mask (and the shift): a loss that low means the model can see what it predicts.
#
# </details>
#
# **Q6.** How many parameters does tying save in a model with $V = 32000$ and $d_{\text{model}} = 4096$?
#
# <details><summary>Answer</summary>
#
# $32000 \times 4096 = 131{,}072{,}000$. (Llama does not tie; GPT-2 and T5 do.)
#
# </details>

# %% [markdown] id="evidence-card"
# ## Evidence card
#
# | you can show | where |
# |---|---|
# | the shifted loss by hand equals `lm_loss` and `F.cross_entropy`; a fresh model starts at $\ln V$ | §1, `next-token-by-hand`, `next-token-check` |
# | GPT-2's loss at initialization (ln 50,257) and its published losses in nats | §1, `next-token-real-check` |
# | no shift lets a copying model look perfect | §1, `next-token-mistake` |
# | BERT's 15 % and 80/10/10 measured; labels everywhere reward copying | §2, `mlm-rates`, `mlm-mistake` |
# | teacher forcing is the next-token loss of BOS + targets | §3, `teacher-forcing-check` |
# | feeding the targets unshifted gives a loss near 0 and a model that repeats its input | §3, `teacher-forcing-mistake-claims` |
# | a loss mask that agrees with the attention mask gives the unpadded loss | §4, `loss-mask-check` |
# | torch's and Hugging Face's ignore index is -100; their recipe gives the masked loss | §4, `ignore-index` |
# | tying shares storage and saves $V \times d_{\text{model}}$; a copy drifts | §5, `tying-check` |
# | the fast path equals the course path, loss and gradients | §6, `fused-check` |
# | the fast path trains at about nanoGPT's speed; two threads do not pay on a small model | §6, `throughput` |
# | a tiny GPT trained on CPU beats the trigram and 4-gram count models on the whole validation split, with samples and tokens/s | §7, `run-data`, `ngram-check`, `run-train`, `run-claims`, `run-plot` |
# | on the Markov language the loss stops at the entropy rate | §7, `markov-run-train`, `markov-run-claims` |
# | free-running generation drifts from the truth while teacher-forced guesses do not | §8, `free-running-check`, `free-running-claim` |
# | a missing causal mask gives an impossibly low loss and garbage samples | §9, `mask-bug-claims`, `mask-bug-plot` |

# %% [markdown] id="next"
# ## Next: the exercises
#
# Open [`exercises/08_training/08_training.ipynb`](../exercises/08_training/08_training.ipynb). You
# will write `lm_loss` with its shift and padding, BERT's `mlm_mask`, the teacher-forcing inputs,
# weight tying and padding labels that agree with the attention mask, each with a visible check that
# names the mistake if you make one of those above.
