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
# 6. **what heads do**: a previous-token head and an induction head formed live, found by their scores,
#    their loss on repeated sequences and by ablating them;
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
from helpers.training import adamw, batches, bigram_loss, train, train_step, unigram_loss

helpers.seed_everything(0)
device = helpers.get_device()
if device.type == "cpu":
    torch.set_num_threads(1)  # tiny models: one thread is faster than two on a small CPU (chapter 08)
print("computing on:", device.type)
started, started_cpu = time.perf_counter(), time.process_time()


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

# %% [markdown] id="masks-llm-alignment"
# **Real systems disagree on what "causal" means when $T_q \ne T_k$**, the case of every decoding
# step with a KV cache (chapter 07). FlashAttention's `flash_attn_func(..., causal=True)` aligns the
# mask to the **bottom-right** corner (its docstring gives the example for 2
# queries and 5 keys: rows `1 1 1 1 0` and `1 1 1 1 1`); PyTorch's
# `F.scaled_dot_product_attention(..., is_causal=True)` aligns it **top-left**. Code that swaps one
# for the other runs without an error. The cell checks both conventions in code and runs an
# influence test (perturb one value, see which outputs move) on the first new query, token 3: under
# the top-left mask it is blind to its own past.

# %% id="masks-llm-run"
# NBVAL_CHECK_OUTPUT
sdpa = torch.nn.functional.scaled_dot_product_attention
flash_documented = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)  # flash_attn_func's docstring
bottom_right = torch.ones(2, 5, dtype=torch.bool).tril(5 - 2)  # (T_q, T_k): query i is token T_k - T_q + i
top_left = torch.ones(2, 5, dtype=torch.bool).tril()  # (T_q, T_k): query i sees keys 0 .. i
gen = torch.Generator().manual_seed(3)
q_, k_, v_ = (torch.randn(1, 1, t, 8, generator=gen, dtype=torch.float64) for t in (2, 5, 5))  # (B, H, T, d_head)
print("FlashAttention's documented causal mask is the bottom-right one:", torch.equal(flash_documented, bottom_right))
print("torch's is_causal=True equals the top-left mask:",
      torch.allclose(sdpa(q_, k_, v_, is_causal=True), sdpa(q_, k_, v_, attn_mask=top_left)))


def keys_that_move_query0(mask: torch.Tensor) -> list[int]:
    """The keys whose value, perturbed, changes the first query's output: the keys it really reads."""
    base = sdpa(q_, k_, v_, attn_mask=mask)[..., 0, :]  # (B, H, d_head)
    moved = []
    for j in range(v_.shape[-2]):
        v2 = v_.clone()
        v2[..., j, :] += 1.0
        if not torch.allclose(sdpa(q_, k_, v2, attn_mask=mask)[..., 0, :], base):
            moved.append(j)
    return moved


print("keys token 3 reads, bottom-right:", keys_that_move_query0(bottom_right))
print("keys token 3 reads, top-left (is_causal=True after a cache):", keys_that_move_query0(top_left))

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
# `d_model` 64, here with RoPE, the method of today's decoders: in the ablation of section 5 it beats
# both no positions and a learned table by about 0.4 nats, far beyond the seed noise; RoPE also keeps
# working past the training length, chapter 06) on the course corpus
# for 500 steps, about half a minute on one idle CPU thread; section 3 analyses it. (It trains with the fused attention kernel; asking for weights takes
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
# *What to see:* the heads differ. Low numbers are focused heads (a few keys carry the weight; section 6
# scores one such pattern, the previous-token head); high ones spread their attention over much of the past,
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

# %% [markdown] id="norms-llm-text"
# **In real LLMs.** Large models grow a few activations in their residual stream far beyond the rest:
# Sun et al. (2024, "Massive Activations in Large Language Models") find some about 100,000 times
# larger than the typical activation, at fixed places (in LLaMA2-7B, feature dimensions 1415 and 2533,
# on the starting token and the first period or newline), and show they act as fixed biases that pull
# attention onto those tokens. The per-layer mean norm above would hide them: they are a few numbers
# in a tensor of millions. The check that finds them is the largest activation against the median,
# per layer, computed below for the 6-layer Pre-LN stream above (at initialisation it has nothing of
# the kind; the quoted figures are the paper's, not measured here).

# %% id="norms-llm"
largest = {}
for p, s_ in streams.items():
    flat = s_.abs().flatten(1)  # (L + 1, B * T * d_model)
    ratio = flat.max(dim=1).values / flat.median(dim=1).values  # (L + 1,)
    largest[p] = ratio.max().item()
    print(f"{p}-LN, largest |activation| / median, per layer: {[round(v, 1) for v in ratio.tolist()]}")
assert max(largest.values()) < 50, largest  # a Gaussian-like stream: no activation thousands of times the median
print(f"largest ratio here {max(largest.values()):.1f}, against about 100,000 for the massive activations of LLMs")

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
# ...)` does that with chapter 08's `train` and returns one row per config. One run per config is not
# enough: two seeds of the *same* config already differ, so every row is trained on two seeds and a
# change counts only where it exceeds that seed-to-seed noise.
#
# **Formula: what an ablation measures.** With $L(c, s)$ the validation loss of config $c$ trained
# with seed $s = 1..S$ (initialisation and batches), the effect of the change is the difference of
# means against the baseline $b$, and the noise is pooled from the seeds of every row:
#
# $$
# \Delta_c = \frac1S \sum_s L(c, s) - \frac1S \sum_s L(b, s), \qquad
# \hat\sigma^2 = \frac1C \sum_{c} \frac{1}{S-1} \sum_s \big(L(c, s) - \bar L(c)\big)^2, \qquad
# \operatorname{se}(\Delta_c) = \hat\sigma \sqrt{2/S}.
# $$
#
# A change is called *worse* or *better* only when $|\Delta_c| > 2\,\operatorname{se}$, the **noise
# floor**; otherwise it is *within noise*. $\Delta_c$ measures the change's effect **at this training
# length and this size**: a change that slows the start (a learned position table begins as noise)
# can lose at 200 steps and tie at 20,000, so a ranking from a short run is a ranking of how fast
# configs start learning. `dg.ablation_summary(runs)` computes the table and verdicts.
#
# What is run: the model of section 3 at half width (`d_model` 32, 4 heads, `d_ff` 128, Pre-LN, RoPE)
# as the baseline, then one change each: 1 head, `d_ff` 32 (1x), Post-LN, no positions, a learned
# position table; 400 steps of 16 windows of 64 characters on the fast path, seeds 0 and 1.

# %% id="ablation-run"
base_config = dict(vocab_size=tok.vocab_size, d_model=32, n_heads=4, n_layers=2, max_seq_len=64, positions="rope",
                   kernels="fused")
configs = {
    "baseline (RoPE)": ModelConfig(**base_config),
    "1 head": ModelConfig(**{**base_config, "n_heads": 1}),
    "d_ff 32 (1x)": ModelConfig(**{**base_config, "d_ff": 32}),
    "post-LN": ModelConfig(**{**base_config, "norm_placement": "post"}),
    "no positions": ModelConfig(**{**base_config, "positions": "none"}),
    "learned positions": ModelConfig(**{**base_config, "positions": "learned"}),
}
settings = dict(steps=400, eval_every=400, eval_batches=1, batch_size=16, block_size=64, lr=1e-2, warmup=30, device=device)
ablation_runs = {seed: dg.run_ablation(configs, train_ids, val_ids, seed=seed, whole_split=True, **settings)
                 for seed in (0, 1)}  # scored on the whole validation split: the same data for every run
summary = dg.ablation_summary(ablation_runs)
print(dg.summary_table(summary))
print(f"seed noise sigma {summary['sigma']:.3f} nats; standard error of a difference {summary['se']:.3f}; "
      f"noise floor (2 se) {summary['noise_floor']:.3f}")

# %% id="ablation-plot"
fig, ax = plt.subplots(figsize=(7.5, 3.4))
names = list(summary["configs"])
for k, seed in enumerate(summary["seeds"]):
    ax.scatter([row["losses"][k] for row in summary["configs"].values()], range(len(names)), marker="o|"[k],
               color="k", zorder=3, label=f"seed {seed}")
ax.barh(names, [row["mean"] for row in summary["configs"].values()], color=["tab:gray"] + ["tab:blue"] * (len(names) - 1),
        alpha=0.6)
base = summary["configs"][names[0]]["mean"]
ax.axvspan(base - summary["noise_floor"], base + summary["noise_floor"], color="tab:orange", alpha=0.25,
           label="baseline ± noise floor")
losses = [v for row in summary["configs"].values() for v in row["losses"]]
ax.set_xlim(min(losses) - 0.1, max(losses) + 0.05)
ax.invert_yaxis()
ax.set_xlabel(f"validation loss after {settings['steps']} steps (nats per character)")
ax.set_title("One change at a time: mean of two seeds (bars), each seed (marks)")
ax.legend(fontsize=8)
fig.tight_layout()

# %% [markdown] id="ablation-plot-caption"
# *What to see:* two changes stand far outside the noise band: **no positions** and a **learned
# position table** are both worse than RoPE by about 0.4 nats, more than twice the noise floor (a
# causal decoder can infer position from its mask, but RoPE's offsets are free and exact; the learned
# table's 64 x 32 numbers begin as noise and are still being learned). One head, a 1x MLP and
# Post-LN each cost something in this run (about 0.08-0.13 nats), but no more than two seeds of the
# same config can differ here (the noise floor printed above, about 0.14): at this length the table
# cannot rank them. The seeds of a row differ most where a config starts slowly (the learned table).

# %% [markdown] id="ablation-published"
# **In real models: Vaswani et al. (2017), Table 3.** The Transformer paper's own ablation changes
# one thing at a time in its base translation model (6 layers, `d_model` 512, 8 heads of 64, `d_ff`
# 2048) and reports the development-set perplexity on newstest2013 (English-German, per word piece)
# and BLEU. A perplexity is $e^{\text{loss}}$, so $\ln \text{PPL} - \ln \text{PPL}_{\text{base}}$ is
# the same $\Delta_c$ in nats per word piece. The numbers are quoted from the table; the differences
# are computed here. The paper trains each row once, so it states no noise floor.

# %% id="ablation-vaswani"
# NBVAL_CHECK_OUTPUT
vaswani = {  # row: (dev perplexity, dev BLEU), Vaswani et al. 2017, Table 3 (quoted)
    "base: 8 heads, d_k 64, d_ff 2048": (4.92, 25.8),
    "(A) 1 head, d_k 512": (5.29, 24.9), "(A) 4 heads, d_k 128": (5.00, 25.5),
    "(A) 16 heads, d_k 32": (4.91, 25.8), "(A) 32 heads, d_k 16": (5.01, 25.4),
    "(C) d_ff 1024": (5.12, 25.4), "(C) d_ff 4096": (4.75, 26.2),
    "(E) learned positions for sinusoids": (4.92, 25.7),
}
base_ppl = vaswani["base: 8 heads, d_k 64, d_ff 2048"][0]
for name, (ppl, bleu) in vaswani.items():
    print(f"{name:<38} PPL {ppl:.2f}  BLEU {bleu:.1f}  delta = ln PPL - ln {base_ppl} = {math.log(ppl / base_ppl):+.3f} nats")

# %% [markdown] id="ablation-published-caption"
# *Beside ours:* one head instead of eight costs the paper about 0.07 nats per word piece and 0.9
# BLEU, and too many heads (32 of width 16) costs too; halving `d_ff` costs about 0.04 and doubling
# it helps; a learned position table ties with the sinusoids (after 100,000 steps: a slow start no
# longer shows). Their effects are a few hundredths of a nat, below our noise floor: a table without
# one cannot tell a 0.04-nat effect from a lucky seed.

# %% id="ablation-check"
# NBVAL_CHECK_OUTPUT
verdicts = {name: row["verdict"] for name, row in summary["configs"].items()}
floor = summary["noise_floor"]
assert verdicts["no positions"] == "worse", verdicts  # the baseline (RoPE) beats no positions beyond the noise
assert verdicts["learned positions"] == "worse", verdicts
assert all(row["delta"] > -floor for row in summary["configs"].values()), "a change beat the baseline beyond noise"
print("RoPE beats no positions beyond the noise floor:", verdicts["no positions"] == "worse")
print("RoPE beats a learned position table beyond the noise floor:", verdicts["learned positions"] == "worse")
print("no change beats the baseline beyond the noise floor:", all(row["delta"] > -floor for row in summary["configs"].values()))

# %% [markdown] id="heads"
# ## 6. What heads do: an induction head formed live
#
# **Main idea.** Score each head against a pattern it might implement:
#
# * a **previous-token head** puts its weight on key $i - 1$: score $= \operatorname{mean}_i A_{i,i-1}$;
# * an **induction head** completes a repeat: on a sequence of $P$ tokens followed by the same $P$
#   tokens again, query $i \ge P$ looks at the token *after* the previous occurrence of its own
#   token, key $i - P + 1$: score $= \operatorname{mean}_{i \ge P} A_{i,i-P+1}$. It needs two layers:
#   a previous-token head in layer 0 writes "the token before me was $x$" into each position, and a
#   layer-1 head whose query is the current token finds the key that carries it (Olsson et al., 2022).
#
# A head that spreads its weight evenly scores $\operatorname{mean}_i 1/(i+1)$ (about 0.06 and 0.03
# here). What an induction head buys is measured in the loss, per position $t$ of a repeated
# sequence, $\ell_t = -\ln p(x_{t+1} \mid x_{\le t})$, and the **in-context drop**
#
# $$
# \Delta_{\text{copy}} = \underbrace{\operatorname{mean}_{t < P-1} \ell_t}_{\text{first copy}}
# \;-\; \underbrace{\operatorname{mean}_{t \ge P} \ell_t}_{\text{second copy}} .
# $$
#
# **Why the model of section 3 forms none, and what does.** In 64-character windows of prose,
# copying from earlier in the window almost never pays, so the text-trained model has no reason to
# learn it (the control below, trained on plain text exactly as long, shows it). Train the same model
# on windows where it pays: each training window is a chunk of the corpus, 8 to 32 characters long,
# repeated until the window is full, so from position $P$ on every character is the one $P$ places
# back. `dg.induction_experiment(seed)` does it: `d_model` 64, 4 heads, 2 layers, RoPE, AdamW at
# $10^{-2}$ (30 warm-up steps, cosine to $10^{-3}$), 1,000 steps of 32 windows of 64 characters,
# about 40 CPU-seconds per run on one thread; every 50 steps it measures the probe below.
#
# **The probe: common characters.** $P = 24$ random lowercase letters, then the same 24 letters
# again. Before the repeat nothing is predictable beyond "a letter" ($\ln 26 = 3.26$ nats at best;
# a model trained on prose does worse, since random letters are not words); in the repeat everything
# is. (Random ids over the whole vocabulary include rare symbols whose loss hides the drop.) A
# second probe repeats 24-character windows of validation text.
#
# Three runs take about two CPU-minutes, more than this notebook's budget, so
# `python tools/train_induction.py` trained them once and saved the weights and training curves;
# the next cell loads them and recomputes every score and loss from the weights. Set `RETRAIN = True`
# to train them here instead.

# %% id="heads-run"
RETRAIN = False  # True: train the three models in this notebook (about two CPU-minutes) instead of loading them
torch.set_grad_enabled(False)  # analysis only from here on
runs = dg.load_induction_runs(retrain=RETRAIN)
print("the three models were", "trained in this notebook" if RETRAIN else
      "loaded from helpers/checkpoints/induction.pt (python tools/train_induction.py); the numbers below are "
      "recomputed from their weights here")
P = runs["seed 0"]["period"]
print(f"uniform attention scores: previous-token {runs['seed 0']['uniform_previous_token']:.3f}, "
      f"induction {runs['seed 0']['uniform_induction']:.3f}; letters without copying: ln 26 = {math.log(26):.2f} nats\n")
print(f"{'run':<10} {'prev-token':>10} {'induction':>9} {'letters: 1st copy':>17} {'2nd copy':>8} "
      f"{'text: 1st copy':>14} {'2nd copy':>8} {'drop at step':>12}")
for name, r in runs.items():
    print(f"{name:<10} {r['previous_token_score']:>10.2f} {r['induction_score']:>9.2f} {r['loss_first_copy']:>17.2f} "
          f"{r['loss_second_copy']:>8.2f} {r['text_loss_first_copy']:>14.2f} {r['text_loss_second_copy']:>8.2f} "
          f"{r['drop_step'] if r['drop_step'] >= 0 else 'never':>12}")

# %% id="heads-loss-plot"
colors = {"seed 0": "tab:blue", "seed 1": "tab:green", "text only": "tab:gray"}
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
for ax, key, title in ((axes[0], "per_position_loss", f"{P} random letters, then the same {P} again"),
                       (axes[1], "text_per_position_loss", f"{P} characters of text, then the same {P} again")):
    for name, r in runs.items():
        ax.plot(range(1, 2 * P), r[key], "o-", ms=3, color=colors[name], label=name)
    ax.axvline(P - 0.5, color="k", lw=0.8, ls="--")
    ax.set(xlabel="position of the predicted token", title=title)
axes[0].axhline(math.log(26), color="tab:red", lw=0.8, ls=":", label="ln 26: a letter, no copying")
axes[0].set_ylabel("loss (nats)")
axes[0].legend()
fig.suptitle("Loss per position: the repeat (right of the dashed line) is predicted only by the models that copy")
fig.tight_layout()

# %% [markdown] id="heads-loss-plot-caption"
# *What to see:* on the first copy every model pays several nats per letter (above $\ln 26$: it
# expects words); from position $P + 1$ on, the two models trained where copying pays drop to a
# fraction of that, while the text-only control stays where it was. Repeated text shows the same
# drop from a lower start (text is partly predictable without copying).

# %% id="heads-curve"
fig, ax = plt.subplots(figsize=(8, 3.8))
twin = ax.twinx()
for name, r in runs.items():
    ax.plot(r["curve_steps"], r["curve_first"], ls=":", color=colors[name])
    ax.plot(r["curve_steps"], r["curve_second"], "-", color=colors[name], label=f"{name}: 2nd copy (dotted: 1st)")
    twin.plot(r["curve_steps"], r["curve_induction"], "--", color=colors[name], alpha=0.5)
    if r["drop_step"] >= 0:
        ax.axvline(r["drop_step"], color=colors[name], lw=0.8)
ax.set(xlabel="training step", ylabel="letters loss (nats)", title="The repeat loss drops when the induction score rises")
twin.set_ylabel("best induction score (dashed)")
ax.legend(loc="lower left", fontsize=8)
fig.tight_layout()

# %% [markdown] id="heads-curve-caption"
# *What to see:* for the first 150-250 steps the two copies cost the same; then, within a couple of
# hundred steps, the best induction score (dashed) climbs and the second copy's loss (solid) falls
# away from the first's (dotted). The vertical lines mark the first measured step where the second
# copy costs at most half the first. The control's curves never part. A fairly sudden change of
# this kind is what Olsson et al. (2022) call a phase change in their models; here it is measured
# every 50 steps on one probe, so its exact step moves with the seed.

# %% id="heads-scores-plot"
labels = [f"L{l}H{h}" for l in range(2) for h in range(4)]
fig, axes = plt.subplots(1, 2, figsize=(11, 3.4), sharey=True)
for ax, key, uniform, title in ((axes[0], "previous_token_scores", "uniform_previous_token", "previous-token score"),
                                (axes[1], "induction_scores", "uniform_induction", f"induction score (P = {P})")):
    for k, name in enumerate(runs):
        ax.bar([i + 0.27 * (k - 1) for i in range(8)], sum(runs[name][key], []), width=0.27, color=colors[name], label=name)
    ax.axhline(runs["seed 0"][uniform], color="k", lw=0.8, ls="--", label="uniform attention")
    ax.set_xticks(range(8), labels)
    ax.set_title(title)
axes[0].set_ylabel("mean attention weight")
axes[0].legend(fontsize=8)
fig.suptitle("Per head (L = layer, H = head): layer 0 holds the previous-token head, layer 1 the induction heads")
fig.tight_layout()

# %% [markdown] id="heads-scores-caption"
# *What to see:* in both seeds one layer-0 head stands out on the previous-token score, far above
# uniform attention, and the layer-1 heads carry the induction scores; the text-only control also
# grows a previous-token head (text rewards it too), but none of its heads scores above uniform on
# induction: the second half of the circuit is what the repeated data teaches.

# %% id="heads-stripe"
tok_letters = dg.repeated_letters(32, P, tok, torch.Generator().manual_seed(0))  # the probe's letters (B, 2P)
fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
r = runs["seed 0"]
l_p, h_p = r["previous_token_head"]
w_prev = r["model"](text_ids[:, :16], return_weights=True)[1][l_p][0, h_p]  # (16, 16)
attention_heatmap(w_prev.numpy(), ax=axes[0], query_labels=list(text[:16]), key_labels=list(text[:16]),
                  title=f"seed 0, layer {l_p} head {h_p}, on text\nprevious-token score {r['previous_token_score']:.2f}")
for ax, name in zip(axes[1:], ("seed 0", "text only")):
    h_i = max(range(4), key=runs[name]["induction_scores"][1].__getitem__)  # the best head of layer 1
    w_ind = runs[name]["model"](tok_letters, return_weights=True)[1][1][:, h_i].mean(0)  # (2P, 2P): mean of 32
    attention_heatmap(w_ind.numpy(), ax=ax, title=f"{name}, layer 1 head {h_i}, on repeated letters (mean of 32)\n"
                      f"induction score {runs[name]['induction_scores'][1][h_i]:.2f}")
    ax.set_xticks(range(0, 2 * P, 4), [str(j) for j in range(0, 2 * P, 4)])
    ax.set_yticks(range(0, 2 * P, 4), [str(i) for i in range(0, 2 * P, 4)])
fig.tight_layout()

# %% [markdown] id="heads-stripe-caption"
# *What to see:* left, a clean previous-token head: one bright line just below the diagonal. Middle,
# the induction stripe: from query $P$ on, each query's weight sits on key $i - P + 1$, a diagonal
# $P - 1$ places left of the main one, the letter that followed the last occurrence of the current
# letter (averaged over the 32 probe sequences). Right, the text-only control's best layer-1 head on
# the same input: no stripe; its weight stays near the diagonal and on the first keys.

# %% [markdown] id="heads-ablation"
# **The ablation: remove the heads, lose the drop.** Zero a head's output (its $d_{\text{head}}$
# columns of $W_O$, `dg.ablated_heads`) and measure the probe again. If the in-context drop is the
# induction heads' doing, it must vanish with them, and with the previous-token head that feeds them.

# %% id="heads-ablation-run"
print(f"{'run':<7} {'heads zeroed':<36} {'(layer, head)':<34} {'letters: 1st':>12} {'2nd':>5} {'drop':>5} {'text: 2nd':>9}")
for name in ("seed 0", "seed 1"):
    r = runs[name]
    print(f"{name:<7} {'none':<36} {'':<34} {r['loss_first_copy']:>12.2f} {r['loss_second_copy']:>5.2f} "
          f"{r['loss_first_copy'] - r['loss_second_copy']:>5.2f} {r['text_loss_second_copy']:>9.2f}")
    for kind, label in (("induction", "layer-1 heads with induction >= 0.2"), ("best_induction", "the best induction head only"),
                        ("previous", "the layer-0 previous-token head")):
        heads = r[f"ablated_{kind}_heads"]
        first, second = r[f"ablated_{kind}_first_copy"], r[f"ablated_{kind}_second_copy"]
        print(f"{'':<7} {label:<36} {', '.join(map(str, heads)):<34} {first:>12.2f} {second:>5.2f} {first - second:>5.2f} "
              f"{r[f'ablated_{kind}_text_second_copy']:>9.2f}")

# %% [markdown] id="heads-ablation-caption"
# *What to see:* zeroing the layer-1 heads with an induction score of at least 0.2 removes the drop:
# the second copy costs as much as the first. Zeroing the one previous-token head of layer 0 does the
# same although layer 1 is untouched: the induction heads need what it writes (the two-layer circuit).
# Zeroing only the best induction head leaves most of the drop: the other layer-1 heads do the same job.

# %% id="heads-claims"
# NBVAL_CHECK_OUTPUT
for name in ("seed 0", "seed 1"):
    r = runs[name]
    print(f"{name}: induction head formed (score >= 0.3, ten times uniform):", r["induction_score"] >= 0.3)
    print(f"{name}: previous-token head in layer 0 (score >= 0.5):", r["previous_token_head"][0] == 0 and r["previous_token_score"] >= 0.5)
    print(f"{name}: second copy at most half the first:", r["loss_second_copy"] <= r["loss_first_copy"] / 2)
    print(f"{name}: ablating the induction heads removes the drop (2nd copy >= 0.9 x 1st):",
          r["ablated_induction_second_copy"] >= 0.9 * r["ablated_induction_first_copy"])
    print(f"{name}: ablating the previous-token head removes it too:",
          r["ablated_previous_second_copy"] >= 0.9 * r["ablated_previous_first_copy"])
    print(f"{name}: the best induction head alone is not needed (drop kept above half):",
          r["ablated_best_induction_first_copy"] - r["ablated_best_induction_second_copy"]
          > (r["loss_first_copy"] - r["loss_second_copy"]) / 2)
c = runs["text only"]
print("text only: no induction head (score < 0.1):", c["induction_score"] < 0.1)
print("text only: no drop (2nd copy > 0.8 x 1st):", c["loss_second_copy"] > 0.8 * c["loss_first_copy"])

# %% [markdown] id="heads-published"
# **In real LLMs.** Olsson et al. (2022, "In-context learning and induction heads") find induction
# heads in transformers of two or more layers, from small attention-only models to large language
# models; in their models the heads form in a narrow window early in training, visible as a bump in
# the training loss, at the same time as in-context learning improves. They score heads the same way
# this section does, on repeated sequences of random tokens. Michel et al. (2019, "Are Sixteen Heads
# Really Better than One?") remove heads at test time from a trained translation Transformer and from
# BERT and find that a large share of them can be removed without a significant drop, some layers
# even down to a single head; Voita et al. (2019) prune 38 of the 48 encoder heads of an
# English-Russian translation model for a loss of 0.15 BLEU and find that the heads that
# survive have roles one can name, among them *positional* heads that attend to the previous or next
# token. The run above shows both in miniature (measured, not quoted): with the best induction head
# removed more than half of the in-context drop survives, because the other layer-1 heads duplicate
# it, while removing the single previous-token head of layer 0 (a positional head) removes the drop. (Quoted: the papers' findings and numbers; computed here: every score
# and loss printed in this section.)

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
# 9. **Ablations**: one change at a time, same seed and batches, every row on two or more seeds,
#    scored on the same data; call a difference only beyond twice its standard error (the noise floor).
# 10. **Overfit one batch**: before a long run, train on a single batch; a healthy model drives its
#     loss towards zero within a hundred-odd steps. If it cannot, the bug is in the model or the loss,
#     not in the data or the schedule.
# 11. **Input-independent baseline**: the best loss without reading the input is the unigram loss
#     (predict each token's overall frequency). Feed the trained model constant inputs: its loss must
#     rise to about that level; if it does not, the model is not using its input (or the targets leak
#     into it).
#
# ### After pre-training
#
# Everything in this course is pre-training: predicting the next token. Chat models are then
# fine-tuned on instructions and on human preferences, with a reward model and reinforcement learning
# (RLHF, PPO) or directly from preference pairs (DPO). Those stages optimise **this same
# architecture** with a different loss; masks, shapes, entropy, residual norms and the checklist above
# apply unchanged, and a mask leak in a reward model is as silent as one in a language model.

# %% [markdown] id="checklist-runs"
# Items 10 and 11 run on this chapter's models: the first on a fresh copy of the section-3 model and
# one batch of 8 windows, the second on the trained one.

# %% id="checklist-run"
torch.set_grad_enabled(True)
torch.manual_seed(0)
fresh = TinyDecoder(config)
one_batch = batches(train_ids, 8, 64, torch.Generator().manual_seed(0))  # x, y: (8, 64) each
optimizer = adamw(fresh, 3e-3)
overfit = [train_step(fresh, optimizer, *one_batch)[0].item() for _ in range(150)]
print(f"overfit one batch: loss {overfit[0]:.2f} -> {overfit[49]:.2f} (step 50) -> {overfit[-1]:.3f} (step 150)")
torch.set_grad_enabled(False)
unigram = unigram_loss(train_ids, val_ids, tok.vocab_size)
val_x, val_y = batches(val_ids, 16, 64, torch.Generator().manual_seed(1))  # (16, 64) each
real = torch.nn.functional.cross_entropy(gpt(val_x).flatten(0, 1), val_y.flatten()).item()
constant = torch.nn.functional.cross_entropy(gpt(torch.full_like(val_x, tok.encode(" ")[0])).flatten(0, 1),
                                             val_y.flatten()).item()
print(f"input-independent baseline (unigram) {unigram:.2f} nats; trained model {real:.2f} on real inputs, "
      f"{constant:.2f} when every input is a space")

# %% id="checklist-claims"
# NBVAL_CHECK_OUTPUT
print("one batch overfitted (loss below 0.2 after 150 steps):", overfit[-1] < 0.2)
print("the trained model beats the input-independent baseline:", real < unigram)
print("without its input it is no better than that baseline:", constant >= unigram - 0.1)

# %% id="budget"
print(f"this notebook ran in {time.perf_counter() - started:.0f} s ({time.process_time() - started_cpu:.0f} s of CPU time)")

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
# | an ablation table on two seeds per row with its noise floor, the formula it measures, Vaswani et al.'s Table 3 beside it, and its conclusions checked automatically | §5, `ablation-run`, `ablation-vaswani`, `ablation-check` |
| a model that overfits one batch, and a trained model against the input-independent baseline | §7, `checklist-run` |
# | an induction head formed live on two seeds: per-head scores, the per-position loss drop, the stripe, the step it forms, a text-only control, and the ablation that removes the drop | §6, `heads-run` to `heads-claims` |

# %% [markdown] id="next"
# ## Next: the exercises
#
# Open [`exercises/09_diagnostics/09_diagnostics.ipynb`](../exercises/09_diagnostics/09_diagnostics.ipynb).
# You will write a leakage test, attention entropy and update ratios, hunt the eight bugs, and write
# your own debugging checklist.
