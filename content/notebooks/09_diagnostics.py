# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] id="title"
# # Chapter 09: diagnostics
#
# A transformer with a bug rarely crashes. A missing causal mask, a softmax over the wrong axis or a
# forgotten $1/\sqrt{d_{\text{head}}}$ give tensors of the right shape, a loss that falls and samples
# that look almost plausible. This chapter builds the tests that find such bugs anyway, and runs each
# one on a healthy model and on a broken one side by side:
#
# 1. **shape checks**: every intermediate tensor against the shape map of chapter 00;
# 2. **mask tests**: which outputs move when a future token changes (by perturbation and by gradient);
# 3. **attention entropy** per layer and head, against its maximum $\ln T$;
# 4. **residual-stream norms** and update-to-stream ratios per layer (chapter 04's measure);
# 5. **ablations**: train several small configs the same way and compare them in a table;
# 6. **what heads do**: a previous-token head and the search for an induction head in a trained model;
# 7. the **debugging checklist** the chapter builds up, and what comes after pre-training.
#
# The reference code is `helpers/diagnostics.py`; the eight broken models of the exercises' bug
# hunt are built in `helpers/bugs.py` by replacing one component of a healthy shared model. Cells that
# start with `# NBVAL_CHECK_OUTPUT` are claims: the test suite re-runs the notebook and fails if their
# output ever changes.

# %% id="setup"
import math
import time

import matplotlib.pyplot as plt
import torch

import helpers
from helpers import bugs
from helpers import diagnostics as dg
from helpers.attention import causal_mask
from helpers.blocks import ModelConfig, TinyDecoder, build_model
from helpers.corpus import load_corpus
from helpers.norms import residual_norms
from helpers.plots import attention_heatmap
from helpers.tokenizers import course_chars
from helpers.training import bigram_loss, train

helpers.seed_everything(0)
device = helpers.get_device()
if device.type == "cpu":
    torch.set_num_threads(1)  # tiny models: one thread is faster than two on a small CPU (chapter 08)
print("computing on:", device.type)
started = time.perf_counter()


def tiny(**fields) -> torch.nn.Module:
    """A small shared model in float64, seeded: the same numbers on every run."""
    torch.manual_seed(0)
    config = {"vocab_size": 23, "d_model": 16, "n_heads": 2, "n_layers": 2, "max_seq_len": 32, **fields}
    return build_model(ModelConfig(**config)).double().eval()


ids = torch.randint(0, 23, (2, 8), generator=torch.Generator().manual_seed(0))  # (B, T) = (2, 8)

# %% [markdown] id="shapes"
# ## 1. Shape checks
#
# **Main idea.** Write down the shape every tensor *should* have before running anything (chapter 00's
# shape map), then measure what the model really produces and name the first tensor that differs.
# A shape bug found at the first tensor is a one-line fix; found at the logits it is an hour of
# printing.
#
# **Formula.** For a block with $B$ sequences of $T$ tokens, $H$ heads and $d_{\text{head}} =
# d_{\text{model}}/H$:
#
# $$
# X: (B, T, d_{\text{model}}) \;\to\; Q, K, V: (B, H, T, d_{\text{head}}) \;\to\; S, A: (B, H, T, T)
# \;\to\; O: (B, T, d_{\text{model}}) \;\to\; \text{logits}: (B, T, V).
# $$
#
# `shape_report(model, ids, **plan)` hooks block 0 (chapter 00's `measure_shapes`) and compares it
# with `shape_map` of the plan; by default the plan is the model's own config.

# %% id="shapes-healthy"
# NBVAL_CHECK_OUTPUT
model = tiny(n_heads=4)
print(dg.shape_report(model, ids))
print("first tensor that differs from the plan:", dg.shape_report(model, ids).first_mismatch)

# %% [markdown] id="shapes-mistake"
# **The common mistake.** The plan said 2 heads of width 8; the model was built with 4 heads of 4
# (a config typo, or a checkpoint loaded with the wrong `n_heads`). The logits still have the right
# shape, so only the report finds it, at $Q$:

# %% id="shapes-mistake-run"
# NBVAL_CHECK_OUTPUT
report = dg.shape_report(model, ids, n_heads=2)
print(report)
print("first tensor that differs from the plan:", report.first_mismatch)

# %% [markdown] id="shapes-llm"
# **In real LLMs.** Hugging Face models check little beyond the final shapes; the usual defence is
# shape assertions in the forward pass (nanoGPT's `# (B, nh, T, hs)` comments turned into code) and a
# one-batch smoke test whose intermediate shapes are printed once.

# %% [markdown] id="masks"
# ## 2. Mask tests: perturbation and gradient
#
# **Main idea.** In a decoder, output $i$ may depend on tokens $0..i$ only. Test it from the outside:
#
# * **perturbation**: change token $j$, run the model again, and see which outputs moved. An output
#   $i < j$ that moved is a leak;
# * **gradient**: the gradient of output $i$ with respect to the residual stream at position $j$
#   must be exactly zero for $j > i$.
#
# $$
# \text{leak}(i, j) \iff j > i \ \text{ and } \ \Big\lVert \frac{\partial\, y_i}{\partial x_j} \Big\rVert > 0
# \quad\text{(gradient)}, \qquad
# \lVert y_i(x) - y_i(x^{(j)}) \rVert > \text{tol} \quad\text{(perturbation)}
# $$
#
# where $x^{(j)}$ is the input with token $j$ changed. The test does not read the mask: it finds a
# leak wherever it comes from (a mask, a norm over the wrong axis, a cumulative statistic).

# %% id="masks-run"
# NBVAL_CHECK_OUTPUT
healthy, leaky = tiny(), tiny(causal=False)  # the same weights; the second forgot its causal mask
for name, m in (("healthy decoder", healthy), ("decoder without its causal mask", leaky)):
    for method in ("perturbation", "gradient"):
        report = dg.leak_test(m, ids, method=method)
        print(f"{name:32} {method:12} leaking (query, key) pairs: {len(report.pairs):2}  first: {report.pairs[:3]}")

# %% id="masks-plot"
fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
grads = {name: dg.leak_test(m, ids, method="gradient").influence.log10().clamp(min=-12)  # (T, T)
         for name, m in (("healthy", healthy), ("no causal mask", leaky))}
top = max(float(g.max()) for g in grads.values())
for ax, (name, grad) in zip(axes, grads.items()):
    image = ax.imshow(grad.numpy(), cmap="magma", vmin=-12, vmax=top)  # one colour scale for both
    ax.set_title(f"{name}: log10 |d y_i / d x_j|")
    ax.set_xlabel("key position j (input)")
    ax.set_ylabel("query position i (output)")
fig.colorbar(image, ax=axes, label="log10 gradient norm (-12: exactly 0)")
fig.suptitle("Gradient of each output with respect to each input position")

# %% [markdown] id="masks-plot-caption"
# *What to see:* the healthy decoder's gradients are black (exactly zero) above the diagonal, so no
# output reads a later position; without the mask the upper triangle lights up as brightly as the
# lower one.

# %% [markdown] id="masks-kinds"
# The same test for every model kind of chapter 05 and every position method of chapter 06. An
# encoder may look both ways, so it can never leak; an encoder-decoder's decoder is tested through
# its target tokens with the source held fixed.

# %% id="masks-kinds-run"
# NBVAL_CHECK_OUTPUT
src = torch.randint(0, 23, (2, 6), generator=torch.Generator().manual_seed(1))  # (B, T_src)
variants = [("decoder", {"positions": p}) for p in ("none", "learned", "sinusoidal", "rope", "alibi", "relative")]
variants += [("encoder", {"kind": "encoder"}), ("encoder-decoder", {"kind": "encoder-decoder"})]
for name, fields in variants:
    m = tiny(**fields)
    found = [len(dg.leak_test(m, ids, method=k, src_ids=src).pairs) for k in ("perturbation", "gradient")]
    print(f"{name:16} {fields.get('positions', ''):11} leaks by perturbation {found[0]}, by gradient {found[1]}")

# %% [markdown] id="masks-mistake"
# **The common mistake: exact equality.** A recomputation may round differently in the last bits
# (a fused kernel, another batch size, another thread count). `bugs.PrefixSums` is a causal toy whose
# output $i$ is the sum of token vectors $0..i$, with one planted leak (output 1 also reads token 4)
# and a wobble of a few units in the last place whenever any token changes. Compared exactly, every
# pair looks like a leak; with the course's tolerance only the planted one remains. (The other two
# classic slips, perturbing only the last token and looking at outputs *after* $j$, are in the
# exercises' mistake catalogue: the first misses the planted leak, the second reports every legal
# dependency.)

# %% id="masks-mistake-run"
# NBVAL_CHECK_OUTPUT
toy = bugs.PrefixSums(0, 11, leaks=((1, 4),), wobble=True)
toy_ids = torch.randint(0, 11, (2, 6), generator=torch.Generator().manual_seed(2))  # (B, T) = (2, 6)
base = toy(toy_ids)  # (B, T, 5)
exact = torch.zeros(6, 6, dtype=torch.bool)
for j in range(6):
    changed = toy_ids.clone()
    changed[:, j] = (changed[:, j] + 1) % 11
    exact[:, j] = (toy(changed) != base).flatten(2).any(-1).any(0)  # WRONG: exact comparison
print("exact equality finds leaks:   ", dg.leaking_pairs(exact, causal_mask(6)))
print("with a tolerance finds leaks: ", dg.leaking_pairs(dg.influence_by_perturbation(toy, toy_ids, 11), causal_mask(6)))

# %% [markdown] id="masks-llm"
# **In real LLMs.** The same test catches the classic training bugs: a cached mask built for the
# wrong length, a sliding window off by one, a padding mask that lets padded keys through, a
# batch-norm-like statistic over the sequence. A validation loss that is suddenly far too good
# (chapter 08, section 9) is the symptom; this test is the proof.

# %% [markdown] id="entropy"
# ## 3. Attention entropy
#
# **Main idea.** Each query's weights are a probability distribution over the keys. Its entropy says
# how spread out the attention is: $0$ when a head looks at exactly one key, $\ln T$ when it looks at
# all $T$ keys equally. Under a causal mask query $i$ sees $i + 1$ keys, so its maximum is
# $\ln(i + 1)$.
#
# $$
# H_i = -\sum_{k} A_{ik} \ln A_{ik} \quad (\text{nats}; \ 0 \ln 0 = 0), \qquad 0 \le H_i \le \ln T_i
# $$
#
# **Worked example.** $A_i = (0.5, 0.25, 0.25)$: $H_i = -(0.5 \ln 0.5 + 2 \cdot 0.25 \ln 0.25) =
# 0.3466 + 0.6931 = 1.0397$ nats, below $\ln 3 = 1.0986$.

# %% id="entropy-example"
# NBVAL_CHECK_OUTPUT
row = torch.tensor([[0.5, 0.25, 0.25, 0.0]], dtype=torch.float64)  # one query, a blocked fourth key
print("H =", round(dg.attention_entropy(row).item(), 4), "nats; ln 3 =", round(math.log(3), 4))
print("the mistake, bits (log2):", round(-(row[row > 0] * row[row > 0].log2()).sum().item(), 4),
      "| the mistake, no 0 ln 0 = 0 rule:", (-(row * row.log()).sum()).item())
print("causal maxima ln(i + 1) for T = 4:", [round(v, 4) for v in dg.causal_max_entropy(4).tolist()])

# %% [markdown] id="entropy-bug"
# **Healthy vs broken.** The eight models of the bug hunt are built so that their scores have the
# scale of a trained model's. One of them forgot the $1/\sqrt{d_{\text{head}}}$: its scores are
# $\sqrt{d_{\text{head}}} = 4$ times too large and its softmax saturates. Entropy per layer and head:

# %% id="entropy-bug-run"
# NBVAL_CHECK_OUTPUT
hunt_ids = torch.randint(0, 48, (2, 12), generator=torch.Generator().manual_seed(0))  # (B, T) = (2, 12)
for name, m in (("healthy", bugs.healthy_model()), ("no 1/sqrt(d_head)", bugs.broken_model("no_scale"))):
    table = dg.entropy_table(m, hunt_ids)  # (L, H)
    print(f"{name:18} entropy per (layer, head): {[[round(v, 2) for v in r] for r in table.tolist()]} "
          f"mean {table.mean():.2f} nats")

# %% [markdown] id="train-intro"
# ### A trained model
#
# Entropy says more on a trained model. The next cell trains chapter 08's tiny GPT (2 layers, 4 heads,
# `d_model` 64, here with RoPE, the method of today's decoders: in the short ablation of section 5 it
# and no positions at all both learn faster than a learned table, within a few hundredths of a nat of
# each other; RoPE also keeps working past the training length, chapter 06) on the course corpus
# for 500 steps, about half a minute on one idle CPU thread; sections 3 and 6 analyse it. (It trains with the fused attention kernel; asking for weights takes
# the course path, which returns them.)

# %% id="train-run"
tok = course_chars()
train_ids = torch.tensor(tok.encode(load_corpus("train")))  # (N_train,)
val_ids = torch.tensor(tok.encode(load_corpus("val")))  # (N_val,)
config = ModelConfig(vocab_size=tok.vocab_size, d_model=64, n_heads=4, n_layers=2, max_seq_len=64,
                     positions="rope", kernels="fused")
torch.manual_seed(0)
gpt = TinyDecoder(config).to(device)
history = train(gpt, train_ids, val_ids, steps=500, batch_size=16, block_size=64, lr=1e-2, warmup=50,
                min_lr=1e-3, eval_every=100, eval_batches=4, seed=0, device=device, progress=False)
gpt = gpt.cpu().eval()
bigram = bigram_loss(train_ids, val_ids, tok.vocab_size)
print(f"validation loss {history.val_loss[0]:.2f} -> {history.val_loss[-1]:.2f} nats per character "
      f"(bigram baseline {bigram:.2f}) in {history.seconds:.0f} s")

# %% id="train-claim"
# NBVAL_CHECK_OUTPUT
print("trained below the bigram baseline:", history.val_loss[-1] < bigram)

# %% id="entropy-heatmap"
text = load_corpus("val")[:64]
text_ids = torch.tensor([tok.encode(text)])  # (1, 64)
table = dg.entropy_table(gpt, text_ids)  # (L, H)
normalised = table / dg.causal_max_entropy(64)[1:].mean()  # share of the mean causal maximum
fig, ax = plt.subplots(figsize=(6.5, 3.0), layout="constrained")
image = ax.imshow(table.numpy(), cmap="viridis", vmin=0, vmax=math.log(64))
for (l, h), v in zip(((l, h) for l in range(table.shape[0]) for h in range(table.shape[1])), table.flatten().tolist()):
    ax.text(h, l, f"{v:.2f}", ha="center", va="center", color="white" if v < 2 else "black")
ax.set_xticks(range(table.shape[1]), [f"head {h}" for h in range(table.shape[1])])
ax.set_yticks(range(table.shape[0]), [f"layer {l}" for l in range(table.shape[0])])
fig.colorbar(image, ax=ax, label="nats (max ln 64 = 4.16)")
fig.suptitle("Attention entropy of the trained model, per layer and head")
plt.show()

# %% [markdown] id="entropy-heatmap-caption"
# *What to see:* the heads differ. Low numbers are focused heads (a few keys carry the weight, such
# as the previous-token head of section 6); high ones spread their attention over much of the past,
# closer to uniform. A head stuck at $\ln(i+1)$ everywhere has learned nothing; a whole model near 0
# at initialisation points at missing score scaling.

# %% [markdown] id="norms"
# ## 4. Residual-stream norms per layer
#
# **Main idea.** Chapter 04: the residual stream carries the old state plus each block's edit. Two
# numbers per layer say whether that is happening: the stream's size $\lVert x_\ell \rVert$ (mean over
# tokens, chapter 04's `residual_norms`), and the **update-to-stream ratio**, how big the block's edit
# is compared with what it received:
#
# $$
# r_\ell = \operatorname{mean}_{b,t} \frac{\lVert x_{\ell+1}[b,t] - x_\ell[b,t] \rVert_2}{\lVert x_\ell[b,t] \rVert_2},
# \qquad \text{norms over } d_{\text{model}}.
# $$
#
# `residual_stream(model, ids)` records what the blocks really receive and return (forward hooks),
# `stream_norms` and `update_ratios` reduce it. First, the stream of a 6-layer model at
# initialisation, Pre-LN against Post-LN:

# %% id="norms-run"
# NBVAL_CHECK_OUTPUT
deep = {p: tiny(n_layers=6, d_model=32, norm_placement=p) for p in ("pre", "post")}
streams = {p: dg.residual_stream(m, ids) for p, m in deep.items()}  # (L + 1, B, T, d_model)
for p, s in streams.items():
    print(f"{p}-LN stream norms: {[round(v, 3) for v in dg.stream_norms(s).tolist()]}")
    print(f"{p}-LN update ratios: {[round(v, 3) for v in dg.update_ratios(s).tolist()]}")
same = torch.allclose(dg.stream_norms(streams["pre"]), residual_norms(streams["pre"][0], list(deep["pre"].blocks)))
print("the norms equal chapter 04's residual_norms:", same)

# %% id="norms-plot"
fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
for p, s in streams.items():
    axes[0].plot(dg.stream_norms(s).numpy(), "o-", label=f"{p}-LN")
    axes[1].plot(range(1, 7), dg.update_ratios(s).numpy(), "o-", label=f"{p}-LN")
axes[0].set(xlabel="layer (0 = embeddings)", ylabel="mean ||x_l||", title="Stream norm per layer")
axes[1].set(xlabel="block", ylabel="||x_{l+1} - x_l|| / ||x_l||", title="Update-to-stream ratio per block")
for ax in axes:
    ax.legend()
fig.suptitle("Pre-LN lets the stream grow; Post-LN renormalises it after every block")
fig.tight_layout()

# %% [markdown] id="norms-plot-caption"
# *What to see:* Pre-LN's stream norm grows block by block while each block's relative edit shrinks
# (from about 0.55 to 0.3: later blocks are smaller corrections to a larger stream). Post-LN pins the
# norm at $\sqrt{d_{\text{model}}} \approx 5.7$ after every block: its first "update" is that
# renormalisation of the small embeddings (a ratio of about 36), and after it the blocks' edits at
# initialisation are tiny against the renormalised stream (about 0.014).

# %% [markdown] id="norms-bug"
# **Healthy vs broken.** In one hunt model the skip connection around block 0's attention is
# missing: `x = attn(norm(x))` instead of `x = x + attn(norm(x))`. Nothing crashes and the model
# trains, but block 0 replaces the stream instead of editing it:

# %% id="norms-bug-run"
# NBVAL_CHECK_OUTPUT
for name, m in (("healthy", bugs.healthy_model()), ("no residual", bugs.broken_model("no_residual"))):
    ratios = dg.update_ratios(dg.residual_stream(m, hunt_ids))
    print(f"{name:12} update ratios per block: {[round(v, 2) for v in ratios.tolist()]}")

# %% [markdown] id="norms-mistake"
# **The common mistake.** Norms over the wrong axis: `x.norm(dim=-2)` measures each channel across
# the positions, which mixes tokens and changes with the sequence length. The ratios of the same
# stream, right and wrong:

# %% id="norms-mistake-run"
# NBVAL_CHECK_OUTPUT
s = streams["pre"]
wrong = ((s[1:] - s[:-1]).norm(dim=-2) / s[:-1].norm(dim=-2)).mean(dim=(1, 2))  # WRONG: over positions T
print("per token (right):  ", [round(v, 3) for v in dg.update_ratios(s).tolist()])
print("over positions (wrong):", [round(v, 3) for v in wrong.tolist()])

# %% [markdown] id="ablation"
# ## 5. Ablations
#
# **Main idea.** To learn what a part contributes, change one config field and train again with
# everything else fixed: the same seed, the same batches, the same schedule. `run_ablation(configs,
# ...)` does that with chapter 08's `train` and returns one row per config. A difference smaller than
# the seed-to-seed spread (measured here by a second seed of the baseline) is no difference.
#
# What was run (within this notebook's two-minute budget): a 2-layer, `d_model` 32 model with 4
# heads, `d_ff` 128, Pre-LN and learned positions as the baseline; then one change each: 1 head,
# `d_ff` 32, Post-LN, no positions, RoPE; 150 steps of 16 windows of 64 characters each.

# %% id="ablation-run"
base_config = dict(vocab_size=tok.vocab_size, d_model=32, n_heads=4, n_layers=2, max_seq_len=64, kernels="fused")
configs = {
    "baseline": ModelConfig(**base_config),
    "1 head": ModelConfig(**{**base_config, "n_heads": 1}),
    "d_ff 32 (1x)": ModelConfig(**{**base_config, "d_ff": 32}),
    "post-LN": ModelConfig(**{**base_config, "norm_placement": "post"}),
    "no positions": ModelConfig(**{**base_config, "positions": "none"}),
    "RoPE": ModelConfig(**{**base_config, "positions": "rope"}),
}
settings = dict(steps=150, batch_size=16, block_size=64, lr=1e-2, warmup=15, eval_batches=4, device=device)
rows = dg.run_ablation(configs, train_ids, val_ids, seed=0, **settings)
spread = dg.run_ablation({"baseline, seed 1": configs["baseline"]}, train_ids, val_ids, seed=1, **settings)
print(dg.ablation_table(rows + spread))

# %% id="ablation-plot"
fig, ax = plt.subplots(figsize=(7, 3.2))
names = [r.name for r in rows + spread]
losses = [r.val_loss for r in rows + spread]
ax.barh(names, losses, color=["tab:gray"] + ["tab:blue"] * (len(rows) - 1) + ["tab:gray"])
ax.axvline(rows[0].val_loss, color="k", lw=0.8, ls="--")
ax.set_xlim(min(losses) - 0.1, max(losses) + 0.05)
ax.invert_yaxis()
ax.set_xlabel("validation loss after 150 steps (nats per character)")
ax.set_title("One change at a time against the baseline (dashed)")
fig.tight_layout()

# %% [markdown] id="ablation-plot-caption"
# *What to see:* the gap between the two gray baseline bars (seeds 0 and 1, about 0.06 nats) is the
# noise floor of a run this short; only bars further than that from the dashed line mean something.
# In the run above: one head is worse by about 0.1 nats (nearly twice the floor); the baseline's *learned*
# position table is the slowest start, since its 64 x 32 numbers begin as noise, while no positions at
# all (a causal decoder can infer position from its mask) and RoPE (no parameters) are both about
# 0.3 nats better; Post-LN is a little better at this depth (2 layers, too shallow for its gradient
# trouble) and a 1x MLP is about as far off as the noise floor. A 150-step run ranks configs by how
# fast they start learning, not by where they end; chapter 06 measures positions past the training length, where
# "none" fails.

# %% [markdown] id="heads"
# ## 6. What the trained model's heads do
#
# **Main idea.** Score each head against a pattern it might implement:
#
# * a **previous-token head** puts its weight on key $i - 1$: score $= \operatorname{mean}_i A_{i,i-1}$;
# * an **induction head** completes a repeat: on a sequence of $P$ random tokens followed by the same
#   $P$ tokens again, query $i \ge P$ looks at the token *after* the previous occurrence of its own
#   token, key $i - P + 1$: score $= \operatorname{mean}_{i \ge P} A_{i,i-P+1}$. It needs two layers
#   (a previous-token head feeding a second-layer head), and a random repeat is text the model never
#   saw, so only a real copying mechanism scores high.
#
# Chance level is about $1/(i+1)$ for a uniform head.

# %% id="heads-run"
torch.set_grad_enabled(False)  # analysis only from here on
prev = torch.stack([dg.previous_token_score(w) for w in gpt(text_ids, return_weights=True)[1]])  # (L, H)
P = 24
repeat = dg.repeated_random_tokens(8, P, tok.vocab_size, torch.Generator().manual_seed(0))  # (8, 2P)
_, repeat_weights = gpt(repeat, return_weights=True)
induction = torch.stack([dg.induction_score(w, P) for w in repeat_weights])  # (L, H)
uniform = sum(1 / (i + 1) for i in range(P, 2 * P)) / P  # a uniform head's induction score
prev_uniform = sum(1 / (i + 1) for i in range(1, 64)) / 63  # a uniform head's previous-token score
print("previous-token score per (layer, head):", [[round(v, 2) for v in r] for r in prev.tolist()],
      f"(uniform attention: {prev_uniform:.3f})")
print("induction score per (layer, head):     ", [[round(v, 2) for v in r] for r in induction.tolist()],
      f"(uniform attention: {uniform:.3f})")
repeat_loss = torch.nn.functional.cross_entropy(gpt(repeat)[:, :-1].transpose(1, 2), repeat[:, 1:],
                                              reduction="none")  # (8, 2P - 1)
print(f"loss on the first copy {repeat_loss[:, :P - 1].mean():.2f}, on the repeat {repeat_loss[:, P:].mean():.2f} "
      f"nats per token")

# %% id="heads-plot"
best_prev = divmod(int(prev.argmax()), prev.shape[1])
best_ind = divmod(int(induction.argmax()), induction.shape[1])
fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
w_prev = gpt(text_ids[:, :16], return_weights=True)[1][best_prev[0]][0, best_prev[1]]
attention_heatmap(w_prev.numpy(), ax=axes[0], query_labels=list(text[:16]), key_labels=list(text[:16]),
                  title=f"layer {best_prev[0]} head {best_prev[1]}: previous-token score {prev.max():.2f}")
w_ind = repeat_weights[best_ind[0]][0, best_ind[1]]  # (2P, 2P): the first repeated sequence
attention_heatmap(w_ind.numpy(), ax=axes[1],
                  title=f"layer {best_ind[0]} head {best_ind[1]} on a repeat: induction score {induction.max():.2f}")
axes[1].set_xticks(range(0, 2 * P, 4), [str(j) for j in range(0, 2 * P, 4)])  # every 4th position: readable
axes[1].set_yticks(range(0, 2 * P, 4), [str(i) for i in range(0, 2 * P, 4)])
fig.tight_layout()
# What the right panel shows instead of a stripe: how much weight stays local, and the columns.
i_q, j_k = torch.arange(2 * P)[:, None], torch.arange(2 * P)[None, :]
local = w_ind[(i_q - j_k >= 0) & (i_q - j_k <= 3)].sum().item() / (2 * P)  # weight on the current and 3 previous keys
stripe = w_ind[torch.arange(P, 2 * P), torch.arange(1, P + 1)].mean().item()  # A[i, i - P + 1] for i >= P
strong = (w_ind > 0.2) & (i_q - j_k >= 4)  # heavy weights on keys at least 4 tokens back
columns = [(j, int(n)) for j, n in enumerate(strong.sum(0).tolist()) if n >= 3]
print(f"right panel: share of each query's weight on its own and the 3 previous keys, on average: {local:.2f}; "
      f"on the induction key i - P + 1: {stripe:.2f}")
print("keys that 3 or more queries at least 4 tokens later weight above 0.2 (key, queries):", columns)

# %% [markdown] id="heads-plot-caption"
# *What to see:* left, the head with the highest previous-token score on real text: its weight sits
# on or just below the diagonal, often on the previous character but as often on the current one or an
# earlier letter of the same word; a clean previous-token head would be one bright line just below
# the diagonal. Right, the head with the highest induction score on a random sequence repeated after 24 tokens:
# an induction head would draw a bright stripe from the second half back to offset $P - 1$ in the
# first half; there is none (its mean weight is printed above). What there is: weight near the
# diagonal (the share on the current and three previous keys is printed), and bright columns,
# single keys that several much later queries weight heavily whatever their distance (listed above;
# the claim is checked below). Neither is the copying pattern of an induction head.

# %% id="heads-claims"
# NBVAL_CHECK_OUTPUT
print("a head leans on the previous token (score > 0.25, four times uniform):", bool(prev.max() > 0.25))
print("a clean previous-token head (score > 0.5):", bool(prev.max() > 0.5))
print("an induction head formed (score > 0.3, ten times uniform):", bool(induction.max() > 0.3))
print("right panel: a column, a key that 3 or more queries at least 4 tokens later weight above 0.2:", bool(columns))

# %% [markdown] id="heads-honest"
# **What this run found.** The printed scores are the evidence. **Previous-token attention, but no
# clean previous-token head**: every head puts a quarter to a third of its weight on the previous
# character (the best about 0.37, six times a uniform head's 0.06), sharing the rest with the
# current character and a few before it, so none passes the 0.5 of a dedicated head. **No induction
# head formed** in this 500-step, 2-layer character model: its best induction score (about 0.04) is
# at the level of unfocused attention (0.03), and its loss on the repeated half (about 6.8 nats per
# character) is barely below the first copy's (about 6.9), so it hardly uses the repeat. In published small models induction heads appear
# abruptly after thousands of steps on token-level text (Olsson et al., 2022); this run is far too
# short for that, and the notebook reports it rather than tuning the run until a stripe appears.

# %% [markdown] id="hunt"
# ## 7. The bug hunt, and the checklist
#
# The exercises hand you eight models labelled A to H; each hides one of these bugs, and each runs and
# trains without an exception: a mask leak, a softmax over the wrong axis, a missing residual, a norm
# over the wrong axis, RoPE applied to $V$, a missing $1/\sqrt{d_{\text{head}}}$, untied weights where
# tying was configured, and a padding mask on the query axis. `bugs.checkup(model)` runs every
# diagnostic of this chapter on a model; here it is on the healthy reference (the numbers a bug moves
# are the ones to compare):

# %% id="hunt-checkup"
# NBVAL_CHECK_OUTPUT
card = bugs.checkup(bugs.healthy_model())
for key, value in card.items():  # rounding noise differs between CPUs: anything below 1e-4 is shown as such
    shown = str(int(value)) if key in ("leaks", "extra_params") else (f"{value:.3g}" if abs(value) >= 1e-4 else "< 1e-4")
    print(f"{key:15} {shown}")

# %% [markdown] id="checklist"
# ### The debugging checklist this chapter built
#
# 1. **Shapes**: write the shape map first; run `shape_report` on one batch; fix the first tensor
#    that differs, not the last.
# 2. **Masks**: perturb each position (and take gradients); no output before $j$ may move when token
#    $j$ changes; compare with a tolerance. Repeat with padding: changing a padded token must not move a
#    real token's output.
# 3. **Attention weights**: rows sum to 1 over the keys; zero above the diagonal in a decoder; padded
#    keys get zero weight.
# 4. **Entropy**: per layer and head against $\ln T$; near 0 everywhere at initialisation means the
#    scores are too large (missing $1/\sqrt{d_{\text{head}}}$), near the maximum everywhere after
#    training means the heads learned nothing.
# 5. **Residual stream**: norms and update ratios per layer; a ratio near 1 means a block replaces
#    the stream (a missing residual), exploding norms point at Post-LN depth or learning rate.
# 6. **Positions**: with RoPE, moving every position by the same offset must not change the output.
# 7. **Parameters**: the count equals the formula for the config (`model_param_count`); tied weights
#    are the same tensor (`is`), not a copy.
# 8. **Loss**: starts at $\ln V$; ends below the bigram baseline; a loss far below what the data
#    allows is a leak, not a success.
# 9. **Ablations**: one change at a time, same seed and batches, and a second seed for the noise floor.
#
# ### After pre-training
#
# Everything in this course is pre-training: predicting the next token. Chat models are then
# fine-tuned on instructions and on human preferences, with a reward model and reinforcement learning
# (RLHF, PPO) or directly from preference pairs (DPO). Those stages optimise **this same
# architecture** with a different loss; masks, shapes, entropy, residual norms and the checklist above
# apply unchanged, and a mask leak in a reward model is as silent as one in a language model.

# %% id="budget"
print(f"this notebook ran in {time.perf_counter() - started:.0f} s")

# %% [markdown] id="self-check"
# ## Self-check
#
# **Q1.** A leakage test changes only the last token and finds nothing. Why is that not enough?
#
# <details><summary>Answer</summary>
#
# Changing the last token can only reveal leaks *from* the last position. A leak from a middle
# position (output 1 seeing token 4) goes unseen; perturb every position in turn.
#
# </details>
#
# **Q2.** What is the largest possible entropy of query 4 (the fifth token) in a causal decoder?
#
# <details><summary>Answer</summary>
#
# It sees 5 keys: $\ln 5 \approx 1.609$ nats (2.32 bits).
#
# </details>
#
# **Q3.** Block 0's update-to-stream ratio is 1.2, the other blocks' 0.3. What do you suspect?
#
# <details><summary>Answer</summary>
#
# Block 0 replaces the stream instead of adding to it: a missing residual connection.
#
# </details>
#
# **Q4.** Two configs differ by 0.02 nats after a short run; two seeds of the same config differ by
# 0.03. What can you conclude?
#
# <details><summary>Answer</summary>
#
# Nothing: the difference is inside the seed-to-seed noise. Run longer or with more seeds.
#
# </details>
#
# **Q5.** Why does the gradient test perturb the residual stream rather than the token ids?
#
# <details><summary>Answer</summary>
#
# Token ids are integers: there is no gradient with respect to them. The stream entering the first
# block is the continuous stand-in for "token $j$".
#
# </details>

# %% [markdown] id="evidence-card"
# ## Evidence card
#
# | you can show | where |
# |---|---|
# | the measured shapes against the shape map, and the first tensor that differs | §1, `shapes-healthy`, `shapes-mistake-run` |
# | a mask leak found by perturbation and by gradient; no leak in any model kind or position method | §2, `masks-run`, `masks-kinds-run` |
# | exact equality reports rounding noise as leaks; a tolerance finds only the real one | §2, `masks-mistake-run` |
# | entropy in nats with its $\ln T$ and causal maxima; a missing $1/\sqrt{d_{\text{head}}}$ collapses it | §3, `entropy-example`, `entropy-bug-run` |
# | Pre-LN vs Post-LN stream norms and update ratios; a missing residual shows as a ratio above 1 | §4, `norms-run`, `norms-bug-run` |
# | an ablation table with a seed-to-seed noise floor | §5, `ablation-run` |
# | previous-token attention scored per head, and an honest negative for induction heads at this scale | §6, `heads-run`, `heads-claims` |

# %% [markdown] id="next"
# ## Next: the exercises
#
# Open [`exercises/09_diagnostics/09_diagnostics.ipynb`](../exercises/09_diagnostics/09_diagnostics.ipynb).
# You will write a leakage test, attention entropy and update ratios, hunt the eight bugs, and write
# your own debugging checklist.
