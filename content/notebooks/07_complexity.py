# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] id="intro"
# # Chapter 07: what a transformer costs — FLOPs, memory, the KV cache, and FlashAttention's online softmax
#
# The earlier chapters asked *what* a transformer computes. This one asks *how much* it costs, and
# where the cost comes from. Three numbers decide whether a model runs on your hardware: the
# **FLOPs** (how much arithmetic), the **memory** (what has to be held at once), and the **bytes
# moved** per FLOP (whether the chip waits for arithmetic or for memory). Each of them grows with
# the sequence length `T` in its own way, and each has a standard trick against it: the **KV
# cache** for generation, **GQA/MQA** for the cache's size, and **FlashAttention** for the score
# matrix.
#
# **The FLOP convention of this chapter** (and of `helpers.complexity`): *one multiply-add is 2 FLOPs*,
# so a product of an `(m, k)` matrix with a `(k, n)` matrix costs $2mkn$ FLOPs. Only matrix products
# are counted; softmax, norms and activations cost $O(T\,d)$ each and are left out. That is exactly
# what `torch.utils.flop_counter.FlopCounterMode` counts, so every formula here is checked against it.
#
# | quantity | formula (one layer, one sequence) | grows like |
# |---|---|---|
# | attention projections Q, K, V, O | $2T d (2d + 2 d_{kv})$, $d_{kv} = H_{kv} d_{\text{head}}$ | $T$ |
# | scores $QK^\top$ and weighted values $AV$ | $2 \cdot 2 H T^2 d_{\text{head}} = 4 T^2 d$ | $T^2$ |
# | MLP (GELU: 2 matrices, SwiGLU: 3) | $2 m\, T d\, d_{ff}$ | $T$ |
# | score matrix memory | $H T^2 \times$ bytes | $T^2$ |
# | KV cache (whole model) | $2 \cdot L \cdot H_{kv} \cdot d_{\text{head}} \cdot T \times$ bytes | $T$ |
#
# **Map of this notebook.**
#
# 1. Attention FLOPs and MLP FLOPs, checked by torch's flop counter; where attention starts to dominate
# 2. Score memory, and time and memory *measured* against `T` (log-log), next to the formulas
# 3. FLOPs per token of a whole model, for inference and for training
# 4. The KV cache: the formula, the 2 GiB example, and what GQA/MQA save
# 5. Generating with a cache: identical tokens, timed side by side; the bottom-right causal mask
# 6. Prefill vs decode: why decoding is memory-bound (bytes moved per FLOP, measured)
# 7. Real accelerators on the roofline: H100 and A100, Llama-3-8B's decode floor, the crossover batch,
#    and this machine's own measured roof
# 8. FlashAttention's online softmax, derived and run block by block; its real claim, memory traffic
# 9. Context windows at scale: the memory bill, prefill latency measured against length, and a
#    window that is read but not used
# 10. Self-check and evidence card
#
# Cells that start with `# NBVAL_CHECK_OUTPUT` are claims: the test suite re-runs the notebook and
# fails if their output ever changes. Timings are measured on whatever machine runs the notebook, so
# they are printed but never checked.

# %% id="setup"
import math
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.ticker import NullFormatter
from torch.utils.flop_counter import FlopCounterMode

import helpers
from helpers.attention import causal_mask, scaled_dot_product_attention
from helpers.blocks import (
    Attention,
    KVCache,
    ModelConfig,
    TinyDecoder,
    cached_causal_mask,
    cached_forward,
    generate,
)
from helpers.complexity import (
    CONTEXT_WINDOWS,
    attainable_flops,
    attention_flops,
    attention_mlp_crossover,
    context_use_experiment,
    copy_bandwidth,
    count_attention_io,
    decode_crossover_batch,
    decode_floor_seconds,
    decode_roofline,
    decode_step_flops,
    decoder_param_count,
    flops_per_token,
    kv_cache_bytes,
    mlp_flops,
    model_flops,
    peak_tensor_bytes,
    prefill_latency,
    ridge_intensity,
    roofline_time,
    score_bytes,
    standard_attention_io,
    tiled_attention,
    tiled_attention_io,
)
from helpers.ffn import SwiGLUFFN, ffn_param_count
from helpers.heads import attention_param_count
from helpers.overview import remaining_tokens

helpers.seed_everything(0)
device = helpers.get_device()
# The measurements below compare how costs *grow*; one CPU thread keeps them steady on a busy
# machine (two threads that wait on each other can make small operations many times slower).
torch.set_num_threads(1)
print("computing on:", device.type)


def counted(fn) -> int:
    """FLOPs torch's FlopCounterMode sees while fn() runs."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def best_time(fn, *args, repeat: int = 5) -> float:
    """The fastest of `repeat` runs of fn(*args), in seconds (the least disturbed by other programs)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn(*args)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


GiB, MiB = 2**30, 2**20

# %% [markdown] id="flops"
# ## 1. Attention FLOPs and MLP FLOPs
#
# **The idea.** A layer does two kinds of work. Everything that acts on one token at a time — the
# Q, K, V and output projections and the MLP — costs the same for every token, so it grows like
# $T$. The attention core compares every query with every key — $QK^\top$ and then $AV$ — so it
# grows like $T^2$. For short sequences the per-token work dominates; past some length the
# quadratic part takes over.
#
# **The formulas** (one layer, batch 1, $d = d_{\text{model}}$, $d_{kv} = H_{kv} d_{\text{head}}$, $m$ =
# number of MLP matrices):
#
# $$
# \text{FLOPs}_{\text{attn}}(T) = \underbrace{2Td(d + 2d_{kv})}_{Q,K,V} + \underbrace{2HT^2d_{\text{head}}}_{QK^\top}
# + \underbrace{2HT^2d_{\text{head}}}_{AV} + \underbrace{2Td^2}_{O},
# \qquad
# \text{FLOPs}_{\text{MLP}}(T) = 2m\,T\,d\,d_{ff}.
# $$
#
# **Worked example**: GPT-2 small ($d = 768$, $H = 12$, $d_{ff} = 3072$) on $T = 1024$ tokens.

# %% id="flops-gpt2"
# NBVAL_CHECK_OUTPUT
gpt2 = ModelConfig(vocab_size=50257, d_model=768, n_heads=12, n_layers=12, max_seq_len=1024)
parts = attention_flops(768, 12, 1024)
for name, value in parts.items():
    print(f"attention {name:<12} {value / 1e9:7.3f} GFLOP")
print(f"MLP (GELU)             {mlp_flops(768, 3072, 1024) / 1e9:7.3f} GFLOP")
print("scores by hand: 2 * 12 * 1024 * 1024 * 64 =", 2 * 12 * 1024 * 1024 * 64)

# %% [markdown] id="flops-check-md"
# **Implementation check.** Shapes first: `x (1, T, 48)`, `Attention` with 6 query heads and 2 K/V
# heads ($d_{\text{head}} = 8$, $d_{kv} = 16$). torch's flop counter watches the real module run and
# reports each matrix product; the four projections are `aten.mm`, the two per-head products `aten.bmm`.

# %% id="flops-check"
# NBVAL_CHECK_OUTPUT
config = ModelConfig(vocab_size=11, d_model=48, n_heads=6, n_kv_heads=2)
attn = Attention(config)
x = torch.randn(1, 20, 48)
with FlopCounterMode(display=False) as counter:
    attn(x, causal_mask(20))
measured = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
formula = attention_flops(48, 6, 20, n_kv_heads=2)
print("flop counter:", measured)
print("formula:      aten.mm =", formula["projections"] + formula["output"], " aten.bmm =", formula["scores"] + formula["values"])
ffn = SwiGLUFFN(48, 128)
print("SwiGLU MLP: counter", counted(lambda: ffn(x)), "formula", mlp_flops(48, 128, 20, kind="swiglu"))

# %% [markdown] id="crossover-md"
# **Where attention starts to dominate.** Setting the two costs equal,
# $2Td(2d + 2d_{kv}) + 4T^2 d = 2mTd\,d_{ff}$ gives $T^\* = (m\,d_{ff} - 2d - 2d_{kv}) / 2$. For GPT-2
# that is $(2 \cdot 3072 - 1536 - 1536)/2 = 1536$ tokens: beyond it, one layer's attention (projections
# and the $T^2$ term together) costs more FLOPs than its MLP. The $T^2$ term *alone* catches up with
# the MLP later, at $4T^2d = 2mTd\,d_{ff}$, i.e. $T = m\,d_{ff}/2 = 3072$ for GPT-2; and it equals the
# projections at $T = d + d_{kv}$ (also 1536 for GPT-2, whose $d_{ff} = 4d$ makes the two points
# coincide). The course's small model reaches these points much sooner, because its MLP is small in
# absolute terms.

# %% id="crossover"
# NBVAL_CHECK_OUTPUT
course = ModelConfig(vocab_size=512, d_model=128, n_heads=4, n_layers=4, max_seq_len=1024)
llama_like = ModelConfig(vocab_size=32000, d_model=4096, n_heads=32, n_kv_heads=8, n_layers=32,
                         ffn="swiglu", d_ff=14336, max_seq_len=8192)
for name, c in (("GPT-2 small", gpt2), ("course model", course), ("Llama-3-8B-like", llama_like)):
    m = 3 if c.ffn == "swiglu" else 2  # MLP matrices
    print(f"{name:<16} attention >= MLP from T = {attention_mlp_crossover(c)}; the T² term alone >= MLP from "
          f"T = m d_ff / 2 = {m * c.ffn_width // 2}, >= the projections from T = d + d_kv = {c.d_model + c.kv_heads * c.d_model // c.n_heads}")

# %% id="crossover-plot"
T_range = np.unique(np.logspace(4, 15, 60, base=2).astype(int))
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for ax, (name, c) in zip(axes, (("GPT-2 small", gpt2), ("course model", course))):
    parts = [attention_flops(c.d_model, c.n_heads, int(t), n_kv_heads=c.kv_heads) for t in T_range]
    ax.loglog(T_range, [p["projections"] + p["output"] for p in parts], label="attention projections (∝ T)")
    ax.loglog(T_range, [p["scores"] + p["values"] for p in parts], label="QKᵀ and AV (∝ T²)")
    ax.loglog(T_range, [p["projections"] + p["output"] + p["scores"] + p["values"] for p in parts], "k",
              lw=2.5, alpha=0.35, label="attention total (projections + T² term)")
    ax.loglog(T_range, [mlp_flops(c.d_model, c.ffn_width, int(t)) for t in T_range], label="MLP (∝ T)")
    ax.axvline(attention_mlp_crossover(c), color="gray", ls=":", label=f"T* = {attention_mlp_crossover(c)}: attention total = MLP")
    t2_meets_mlp = 2 * c.ffn_width // 2  # m d_ff / 2 with m = 2 (both are GELU MLPs)
    ax.axvline(t2_meets_mlp, color="gray", ls="-.", label=f"T = m d_ff / 2 = {t2_meets_mlp}: T² term = MLP")
    ax.set(title=f"{name}: FLOPs of one layer vs T", xlabel="sequence length T", ylabel="FLOPs")
    ax.legend(fontsize=7)
plt.suptitle("Attention's total (grey) overtakes the MLP at T* (dotted); the steeper T² term alone does at m·d_ff/2 (dash-dot)")
plt.tight_layout()
plt.show()

# %% [markdown] id="crossover-plot-caption"
# *What to see:* the per-token terms (projections, MLP) are lines of slope 1 and the $QK^\top$ /
# $AV$ term a line of slope 2; attention's total (the thick grey line) crosses the MLP at the dotted
# $T^*$, 1536 tokens for GPT-2 small but 256 for the narrow course model, which is also where the
# $T^2$ term meets the projections; the $T^2$ term alone crosses the MLP at the dash-dotted
# $m\,d_{ff}/2$, twice as far out.

# %% [markdown] id="flops-mistake-md"
# **Where it shows up.** Model cards quote "FLOPs per token"; hardware is quoted in FLOP/s, almost
# always with the same 2-per-multiply-add convention (a "989 TFLOP/s" GPU does about 495 T multiply-adds a
# second). Mixing the conventions halves or doubles every estimate.
#
# **Common mistake: counting a multiply-add as one FLOP.** Run beside the counter, the wrong count is
# exactly half:

# %% id="flops-mistake"
# NBVAL_CHECK_OUTPUT
W = torch.randn(64, 32)
a = torch.randn(10, 32)
print("flop counter for (10 x 32) @ (32 x 64):", counted(lambda: a @ W.T))
print("right, 2 m k n:", 2 * 10 * 32 * 64, "| wrong, m k n:", 10 * 32 * 64)

# %% [markdown] id="memory"
# ## 2. Score memory, and time and memory measured against T
#
# **The idea.** Plain attention builds the whole score matrix — one $T \times T$ matrix per head — and
# then the softmax weights, another matrix of the same size. Its memory grows like $T^2$ too, and at
# long contexts it is the memory, not the FLOPs, that stops you first.
#
# $$
# \text{score bytes} = B \cdot H \cdot T_q \cdot T_k \cdot \text{bytes per element}
# $$
#
# **Worked example.** GPT-2 small, one sequence of 1024 tokens, float32: $12 \cdot 1024^2 \cdot 4$
# bytes = 48 MiB *per layer*. At 32 768 tokens it is $32^2 = 1024$ times more: 48 GiB.

# %% id="memory-example"
# NBVAL_CHECK_OUTPUT
print("GPT-2, T = 1024: ", score_bytes(1, 12, 1024) / MiB, "MiB per layer")
print("GPT-2, T = 32768:", score_bytes(1, 12, 32768) / GiB, "GiB per layer")
print("Llama-3-8B-like, T = 8192, bf16:", score_bytes(1, 32, 8192, dtype=torch.bfloat16) / GiB, "GiB per layer")

# %% [markdown] id="measure-md"
# **Measured against the formulas.** How is memory measured here? Not with Python's `tracemalloc`:
# torch allocates its tensors in C++, which `tracemalloc` never sees. Not with the process's resident
# memory either, which mixes the tensors with the interpreter and allocator caches. Instead
# `peak_tensor_bytes` watches every tensor that torch's operators return during a call and adds up
# the bytes of those alive at the same time; its peak is the memory the computation needed.
# (`tools/bench_complexity.py` repeats the measurement with the peak resident memory of a fresh
# process, for comparison.) Shapes: `q, k, v (1, 4, T, 32)`.

# %% id="measure"
Ts = [128, 256, 512, 1024, 2048]
naive_time, naive_mem, tiled_mem, formula_mem = [], [], [], []
for T in Ts:
    q, k, v = (torch.randn(1, 4, T, 32, device=device) for _ in range(3))
    naive_time.append(best_time(scaled_dot_product_attention, q, k, v, repeat=7 if T <= 1024 else 3))  # more tries where they are cheap: the least disturbed counts
    naive_mem.append(peak_tensor_bytes(scaled_dot_product_attention, q, k, v)[1])
    tiled_mem.append(peak_tensor_bytes(tiled_attention, q, k, v, block_size=128)[1])
    formula_mem.append(score_bytes(1, 4, T))
for T, t, m, tm, f in zip(Ts, naive_time, naive_mem, tiled_mem, formula_mem):
    print(f"T = {T:5d}: naive {t * 1e3:7.2f} ms, peak {m / MiB:7.2f} MiB (score matrix {f / MiB:6.2f} MiB); "
          f"tiled peak {tm / MiB:5.2f} MiB")
slope_time = np.polyfit(np.log(Ts[2:]), np.log(naive_time[2:]), 1)[0]
slope_mem = np.polyfit(np.log(Ts[2:]), np.log(naive_mem[2:]), 1)[0]
print(f"log-log slopes from T = 512 on: time {slope_time:.2f}, memory {slope_mem:.2f} (the T² terms alone would give 2)")
segments = [math.log(naive_time[i + 1] / naive_time[i], 2) for i in range(len(Ts) - 1)]  # each step doubles T
print("time slope of each doubling of T:", ", ".join(f"{a}->{b}: {g:.2f}" for a, b, g in zip(Ts, Ts[1:], segments)))
print("time per score element (ns), the same FLOPs each:",
      ", ".join(f"T = {T}: {t / (4 * T * T) * 1e9:.1f}" for T, t in zip(Ts, naive_time)),
      "| one (4, T, T) float32 matrix:", ", ".join(f"{score_bytes(1, 4, T) / MiB:g}" for T in Ts), "MiB")
try:  # the CPU's per-core level-2 cache, where Linux reports it
    with open("/sys/devices/system/cpu/cpu0/cache/index2/size") as file:
        print("this CPU's level-2 cache per core:", file.read().strip())
except OSError:
    pass

# %% id="measure-plot"
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
axes[0].loglog(Ts, naive_time, "o-", label="measured, naive attention")
scale = naive_time[-1] / (2 * 4 * Ts[-1] ** 2 * 32 * 2)
axes[0].loglog(Ts, [scale * 2 * 4 * T**2 * 32 * 2 for T in Ts], "k--", label="∝ FLOPs of QKᵀ and AV (T²)")
axes[0].set(title="time vs T", xlabel="T", ylabel="seconds")
axes[1].loglog(Ts, naive_mem, "o-", label="measured peak, naive")
axes[1].loglog(Ts, tiled_mem, "s-", label="measured peak, tiled (block 128)")
axes[1].loglog(Ts, formula_mem, "k--", label="formula: one score matrix, 4 H T² bytes")
axes[1].set(title="memory vs T", xlabel="T", ylabel="bytes")
for ax in axes:
    ax.set_xticks(Ts, [str(T) for T in Ts])
    ax.xaxis.set_minor_formatter(NullFormatter())  # only the measured T are labelled
    ax.legend(fontsize=8)
plt.suptitle(f"Naive attention's memory climbs with slope 2 on log-log axes, its time with slope {slope_time:.2f} "
             "from T = 512\n(the FLOPs alone: 2); tiled memory stays nearly flat")
plt.tight_layout()
plt.show()

# %% [markdown] id="measure-plot-caption"
# *What to see:* left, naive attention's measured time rises about as steeply as the dashed $T^2$
# line from `T = 512` on, some doublings more steeply (the fitted slope is in the title, each
# doubling's slope printed above; why it can exceed 2 is explained below); right, its peak memory runs parallel to the one-score-matrix formula
# (slope 2) while the tiled version's stays nearly flat. The exact values depend on the machine.

# %% [markdown] id="memory-read"
# Read the right panel: the naive peak sits at about *twice* the formula's line, because the scores
# and the softmax weights are alive at the same moment. The time (left) is not the FLOPs alone. For
# short sequences fixed costs (Python, launching the operations, the $O(T d)$ work) weigh in, which is
# why the fit starts at `T = 512`. And the time *per score element* (printed above) is not constant,
# although every element costs the same FLOPs: it stays small while the `(4, T, T)` float32 matrices
# (1 MiB at `T = 256`, 4 MiB at 512, 16 MiB at 1024, 64 MiB at 2048) are about the size of a core's
# level-2 cache (printed above where Linux reports it), and grows once they are many times larger:
# then every pass over the scores (the product, the softmax, the product with $V$) has to fetch them
# from the slower shared cache or main memory. The doublings across that step have slopes above 2,
# and so can the fit. FLOP counts predict
# the arithmetic; the memory hierarchy decides the waiting. (On a busy machine the timings also
# jitter from run to run.)
# The tiled version (section 8) never holds more than a `block x block` piece of the scores: its peak
# grows only with the output, like $T$, and its blocks stay in the cache.
#
# **Common mistake: "memory is $O(T d)$, like the activations".** The activations `(B, T, d_model)`
# do grow linearly, but the score matrix per head is `(T, T)`, whatever `d_head` is. Run side by side:

# %% id="memory-mistake"
# NBVAL_CHECK_OUTPUT
T, d = 4096, 768
print("activations (T, d_model) float32:", T * d * 4 / MiB, "MiB")
print("scores of 12 heads (12, T, T) float32:", score_bytes(1, 12, T) / MiB, "MiB  <- the T² term")

# %% [markdown] id="per-token"
# ## 3. FLOPs per token of a whole model, inference and training
#
# **The idea.** Add up the layers and the LM head ($2 T d V$) and divide by $T$: that is the cost of
# one token. For inference it is about $2N$ for a model with $N$ parameters in its matrices (each
# weight is used in one multiply-add per token), plus the attention core's $4 T d$ per layer, which
# grows with the context. Training also runs the backward pass, which for every matrix product
# $y = xW$ computes two products of the same size (the gradients of $x$ and of $W$): training costs
# 3 × forward, the well-known $6N$ per token.
#
# $$
# \text{FLOPs/token} \approx 2N + L \cdot 4 T d \ \text{(inference)},
# \qquad \text{training} = 3 \times \text{forward}.
# $$
#
# **Check against the counter**, forward and forward + backward, on the course model:

# %% id="per-token-check"
# NBVAL_CHECK_OUTPUT
model = TinyDecoder(course)
ids = torch.randint(0, 512, (1, 256))
print("forward:            counter", counted(lambda: model(ids)), " formula", model_flops(course, 256))
print("forward + backward: counter", counted(lambda: model(ids).sum().backward()),
      " formula", model_flops(course, 256, training=True))
model.zero_grad(set_to_none=True)

# %% id="per-token-table"
# NBVAL_CHECK_OUTPUT
matrix_params = course.n_layers * (4 * 128 * 128 + 2 * 128 * 512) + 512 * 128  # layers' matrices + head
print("2N (matrices, head included) =", 2 * matrix_params)
for T in (1, 256, 1024):
    print(f"T = {T:4d}: inference {flops_per_token(course, T):>9,} FLOPs/token, "
          f"training {flops_per_token(course, T, training=True):>10,}")

# %% [markdown] id="per-token-md"
# At $T = 1$ the inference cost is exactly $2N$ plus a sliver (one score, one weighted value per head);
# at $T = 1024$ the attention core has added $4 \cdot 1024 \cdot 128 = 524\,288$ FLOPs per layer and
# token, which over this small model's 4 layers (2.1 million) is more than its whole $2N$. For
# GPT-3-sized models $d$ is so large that the same term stays a few percent until very long contexts.
#
# **Where it shows up.** Training budgets ("$6ND$" for $D$ training tokens), and the throughput numbers
# of inference servers.

# %% [markdown] id="kv-cache"
# ## 4. The KV cache
#
# **The idea.** A decoder generates one token at a time, and each new token attends to all earlier
# ones. Their keys and values never change (causal attention: the past does not see the future), so
# instead of recomputing them every step, every layer keeps them: the **KV cache**. It trades
# memory for FLOPs, and its memory is often the largest thing on an inference server.
#
# $$
# \text{KV bytes} = 2\ (K, V) \times L \times B \times H_{kv} \times T \times d_{\text{head}} \times \text{bytes per element}
# $$
#
# **Worked example** (the seeds' numbers): 32 layers × 32 K/V heads × 128 × 4096 tokens × 2 bytes
# (fp16) × 2 (K and V) = 2 GiB per sequence — Llama-2-7B's shape.

# %% id="kv-example"
# NBVAL_CHECK_OUTPUT
print("Llama-2-7B shape:", 2 * 32 * 32 * 128 * 4096 * 2 / GiB, "GiB =", kv_cache_bytes(32, 32, 128, 4096) / GiB, "GiB")
for name, h_kv in (("MHA, 32 K/V heads", 32), ("GQA,  8 K/V heads", 8), ("MQA,  1 K/V head ", 1)):
    print(f"{name}: {kv_cache_bytes(32, h_kv, 128, 4096) / MiB:7.0f} MiB per 4096-token sequence")

# %% [markdown] id="kv-real-md"
# **Implementation check: the formula against a real cache.** The shared model's `KVCache` holds one
# `(B, H_kv, T, d_head)` tensor for K and one for V per layer; their `.nbytes` must be the formula.
# The cache stores the $H_{kv}$ heads *before* they are repeated for the query heads: that is
# where GQA's saving lives.

# %% id="kv-real"
# NBVAL_CHECK_OUTPUT
for n_kv in (4, 2, 1):
    c = ModelConfig(vocab_size=512, d_model=128, n_heads=4, n_kv_heads=n_kv, n_layers=4, max_seq_len=1024)
    m = TinyDecoder(c).eval()
    cache = KVCache(c.n_layers)
    with torch.no_grad():
        cached_forward(m, torch.randint(0, 512, (2, 100)), cache)
    print(f"H_kv = {n_kv}: layer 0 K {tuple(cache[0].k.shape)}, cache.nbytes = {cache.nbytes:>7}, "
          f"formula = {kv_cache_bytes(4, n_kv, 32, 100, batch=2, dtype=torch.float32):>7}")

# %% [markdown] id="kv-mistake-md"
# **Common mistake: caching the repeated heads.** If the cache stores K and V *after* `repeat_kv`,
# a GQA model spends exactly as much cache memory as plain multi-head attention, and the saving is
# gone. Using `n_heads` where `n_kv_heads` belongs in the formula makes the same error on paper:

# %% id="kv-mistake"
# NBVAL_CHECK_OUTPUT
right = kv_cache_bytes(32, 8, 128, 8192)  # Llama-3-8B: 32 query heads share 8 K/V heads
wrong = kv_cache_bytes(32, 32, 128, 8192)
print(f"Llama-3-8B, 8192 tokens: right {right / GiB} GiB, with n_heads {wrong / GiB} GiB ({wrong // right}x too much)")

# %% [markdown] id="generate"
# ## 5. Generating with a cache: identical tokens, timed side by side
#
# `generate(model, prompt_ids, max_new_tokens, use_cache=...)` runs the prompt through the model
# once (the **prefill**), then feeds one token per step (the **decode**). With `use_cache=False` it
# recomputes the whole sequence every step instead. The results must be identical; only the time differs.
# Greedy decoding (`temperature=0`) makes the comparison exact. The FLOPs differ far more than the
# times: at this size each step is mostly fixed overhead (Python, launching small operations), which
# the cache does not remove. The gap in time grows with the number of tokens, because recomputation
# costs more every step and the cached step does not (`tools/bench_complexity.py` times 512 tokens).

# %% id="generate-run"
torch.manual_seed(0)
gen_model = TinyDecoder(course).to(device).eval()
prompt = torch.randint(0, 512, (1, 8), device=device)
new_tokens = 100
start = time.perf_counter()
fast = generate(gen_model, prompt, new_tokens, use_cache=True, temperature=0)
t_cached = time.perf_counter() - start
start = time.perf_counter()
slow = generate(gen_model, prompt, new_tokens, use_cache=False, temperature=0)
t_full = time.perf_counter() - start
print(f"cached {t_cached:.2f} s, recomputed {t_full:.2f} s: {t_full / t_cached:.1f}x faster with the cache")

# %% id="generate-same"
# NBVAL_CHECK_OUTPUT
print("identical tokens:", torch.equal(fast, slow), "| shape", tuple(fast.shape))
flops_full = sum(model_flops(course, t) for t in range(8, 8 + new_tokens))
flops_cached = model_flops(course, 8) + sum(decode_step_flops(course, t) for t in range(8, 8 + new_tokens - 1))
print(f"FLOPs: recomputed {flops_full:.3e}, cached {flops_cached:.3e} ({flops_full / flops_cached:.0f}x fewer)")

# %% [markdown] id="decode-latency-md"
# **How far from the arithmetic limit?** One decoding step of this model multiplies about
# `decode_step_flops` numbers: under 2 MFLOP, which a CPU core's matmul units finish in tens of
# microseconds. The next cell times the cached decode per token on the course path and on the fast
# path (`kernels="fused"`, chapter 08: the same numbers with fewer, larger operations) and divides:
# the achieved GFLOP/s against a large matmul's rate on this CPU. The gap is Python and the
# per-operation cost of launching a few hundred small operations per token, not arithmetic.

# %% id="decode-latency"
from dataclasses import replace

from helpers.nanogpt import matmul_peak

fast_model = TinyDecoder(replace(course, kernels="fused")).to(device).eval()
fast_model.load_state_dict(gen_model.state_dict())
per_token_flops = sum(decode_step_flops(course, t) for t in range(8, 8 + new_tokens)) / new_tokens
peak = matmul_peak(1, n=512) if device.type == "cpu" else float("nan")
for name, m in (("course path", gen_model), ("fast path", fast_model)):
    generate(m, prompt, 4, temperature=0)  # warm-up
    start = time.perf_counter()
    tokens = generate(m, prompt, new_tokens, temperature=0)
    latency = (time.perf_counter() - start) / new_tokens
    rate = per_token_flops / latency / 1e9
    print(f"{name}: {latency * 1e3:.2f} ms per token for {per_token_flops / 1e6:.2f} MFLOP -> {rate:.2f} GFLOP/s, "
          f"{rate / peak:.1%} of one thread's matmul peak ({peak:.0f} GFLOP/s: {per_token_flops / peak / 1e3:.0f} us "
          f"of arithmetic); same tokens: {torch.equal(tokens, fast)}")

# %% [markdown] id="mask-md"
# **The causal mask after a cache is aligned bottom-right.** With $T_q$ new queries and $T_k$ keys
# (cached + new), new query $i$ is token $T_k - T_q + i$ and may see keys $0 \dots T_k - T_q + i$.
# torch's `is_causal=True` aligns the mask **top-left** instead (query $i$ sees keys $0 \dots i$), which is
# the same only when $T_q = T_k$. Here is the mistake run next to the right version, for 2 new tokens
# after 4 cached ones:

# %% id="mask-compare"
# NBVAL_CHECK_OUTPUT
print("bottom-right (right), query rows = tokens 4 and 5:")
print(cached_causal_mask(2, 6).int())
print("top-left (is_causal=True), wrong here:")
print(torch.ones(2, 6, dtype=torch.bool).tril().int())
q6, k6, v6 = (torch.randn(1, 1, t, 8, generator=torch.Generator().manual_seed(s)) for t, s in ((6, 1), (6, 2), (6, 3)))
full = F.scaled_dot_product_attention(q6, k6, v6, is_causal=True)[:, :, 4:]  # all 6 tokens, keep the last 2
right_step = F.scaled_dot_product_attention(q6[:, :, 4:], k6, v6, attn_mask=cached_causal_mask(2, 6))
wrong_step = F.scaled_dot_product_attention(q6[:, :, 4:], k6, v6, is_causal=True)
print("bottom-right equals full recomputation:", torch.allclose(right_step, full, atol=1e-5),
      "| is_causal does:", torch.allclose(wrong_step, full, atol=1e-5))

# %% [markdown] id="offset-md"
# **Common mistake: the position offset.** With learned positions, the new token after $n$ cached
# tokens sits at position $n$. Off by one, the model reads the wrong row of the position table and
# its logits change. The cell runs the off-by-one version (the cache's token counter one short, so the
# new token is embedded at position 8 instead of 9) and compares its logits with a full recomputation.
# Past the end of the table there is no row at all: the shared model says so instead of failing with
# an index error.

# %% id="offset-mistake"
# NBVAL_CHECK_OUTPUT
small = TinyDecoder(ModelConfig(vocab_size=512, d_model=128, n_heads=4, n_layers=4, max_seq_len=16)).eval()
ids = torch.randint(0, 512, (1, 10), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    reference_logits = small(ids)[:, -1]
    cache = KVCache(4)
    cached_forward(small, ids[:, :9], cache)
    right = cached_forward(small, ids[:, 9:], cache)[:, -1]  # (1, V)
    off_by_one = KVCache(4)
    cached_forward(small, ids[:, :9], off_by_one)
    off_by_one.tokens -= 1  # WRONG: the counter says 8 cached tokens, so the new one is embedded at position 8
    wrong = cached_forward(small, ids[:, 9:], off_by_one)[:, -1]  # (1, V)
print("offset 9 (right): logits equal the full recomputation:", torch.allclose(right, reference_logits, atol=1e-5))
print("offset 8 (WRONG): logits equal the full recomputation:", torch.allclose(wrong, reference_logits, atol=1e-5),
      "| they differ by more than 0.01 somewhere:", (wrong - reference_logits).abs().max().item() > 0.01)
try:
    generate(small, ids, 7)
except ValueError as error:
    print("past max_seq_len:", str(error)[:80], "...")

# %% [markdown] id="prefill-decode"
# ## 6. Prefill vs decode: why decoding is memory-bound
#
# **The idea.** To multiply $T$ token vectors by a $d \times d$ weight matrix, the chip must read the
# $d^2$ weights from memory once, and then does $2Td^2$ FLOPs with them. The **arithmetic intensity**
# (FLOPs per byte moved) is about
#
# $$
# \frac{2Td^2}{\text{bytes}(W) + \text{bytes}(x) + \text{bytes}(y)} = \frac{2Td^2}{4(d^2 + 2Td)} \approx \frac{T}{2}
# \quad (\text{float32}, T \ll d).
# $$
#
# A prefill has $T$ in the hundreds or thousands: many FLOPs per byte, the arithmetic units are busy
# (**compute-bound**). A decode step has $T = 1$ per sequence: half a FLOP per byte, and the chip spends
# its time waiting for the weights (and the KV cache) to arrive (**memory-bound**). Measured: the
# time of one `(T, 2048) @ (2048, 2048)` product as `T` grows.

# %% id="prefill-measure"
d_big = 2048
W_big = torch.randn(d_big, d_big, device=device)
rows = [1, 4, 16, 64, 256, 512]
per_token, intensity, achieved = [], [], []
for T in rows:
    xb = torch.randn(T, d_big, device=device)
    seconds = best_time(torch.matmul, xb, W_big.T, repeat=7)
    flops = 2 * T * d_big * d_big
    moved = 4 * (d_big * d_big + 2 * T * d_big)
    per_token.append(seconds / T)
    intensity.append(flops / moved)
    achieved.append(flops / seconds)
    print(f"T = {T:5d}: {flops / moved:7.1f} FLOP/byte, {seconds * 1e3:7.3f} ms, "
          f"{seconds / T * 1e6:8.2f} µs per token, {flops / seconds / 1e9:6.1f} GFLOP/s")
# The compute roof: what this machine's matmul reaches when arithmetic, not memory, limits it: the best of
# a square product with T = d_big (about 1000 FLOP per byte) and the rows above.
roof = max([2 * d_big**3 / best_time(torch.matmul, W_big, W_big.T, repeat=3)] + achieved)
print(f"compute roof (the best of a {d_big} x {d_big} x {d_big} product and the rows above): {roof / 1e9:.1f} GFLOP/s; "
      f"decode (T = 1) reaches "
      f"{achieved[0] / roof:.0%} of it, T = {rows[-1]} reaches {achieved[-1] / roof:.0%}")

# %% id="prefill-plot"
fig, ax = plt.subplots(figsize=(6, 3.8))
ax.loglog(intensity, achieved, "o-", label="(T, 2048) @ (2048, 2048)")
ax.axhline(roof, color="k", ls="--", lw=1, label=f"compute roof, measured: {roof / 1e9:.0f} GFLOP/s")
ax.set_ylim(top=roof * 2)
for T, x_, y_ in zip(rows, intensity, achieved):
    ax.annotate(f"T={T}", (x_, y_), fontsize=8)
ax.set(xlabel="arithmetic intensity (FLOP per byte moved)", ylabel="achieved FLOP/s",
       title=f"Decode (T=1) runs at {achieved[0] / roof:.0%} of the roof; prefill climbs towards it")
ax.legend(fontsize=8, loc="lower right")
plt.tight_layout()
plt.show()

# %% [markdown] id="prefill-plot-caption"
# *What to see:* achieved FLOP/s rises with arithmetic intensity towards the dashed compute roof
# (the best speed the same machine's matmul reached): decoding one token (T = 1, bottom left)
# moves many bytes per FLOP and runs at a small fraction of the roof, prefill of hundreds of tokens
# at a large fraction of it (both fractions are printed above). The exact values depend on the machine, and
# on a busy one the points jitter.

# %% [markdown] id="prefill-read"
# With one token the multiply runs at a small fraction of the speed the same weights reach with
# hundreds of tokens: the time of a decode step is the time to *read the weights* (and, at long
# contexts, the KV cache), not to multiply. That is why servers batch many sequences' decode steps
# together (more tokens per byte of weights), and why the cache's bytes (section 4) matter so much:
# every decode step reads all of them.

# %% id="decode-bytes"
# NBVAL_CHECK_OUTPUT
weights_bytes = 8 * 10**9 * 2  # an 8-billion-parameter model in bf16 (8e9, not 8 * 2**30 = 8.59e9)
cache_8k = kv_cache_bytes(32, 8, 128, 8192)
step_flops = 2 * 8 * 10**9  # about 2N FLOPs per decoded token
print(f"decode step of one sequence: reads {(weights_bytes + cache_8k) / GiB:.0f} GiB for {step_flops / 1e9:.0f} GFLOP "
      f"= {step_flops / (weights_bytes + cache_8k):.2f} FLOP/byte")

# %% [markdown] id="roofline"
# ## 7. Real accelerators on the roofline
#
# **The idea.** A chip has two speeds: how fast it does arithmetic (peak FLOP/s, $P$) and how fast it
# moves bytes between its main memory and its arithmetic units (bandwidth, $B$ bytes/s). A computation
# of $F$ FLOPs that moves $D$ bytes needs at least the longer of the two times; its **arithmetic
# intensity** $I = F/D$ says which one it is:
#
# $$
# t \ge \max\left(\frac{F}{P}, \frac{D}{B}\right), \qquad
# \text{attainable FLOP/s} = \min(P,\ I \cdot B), \qquad
# I^\* = \frac{P}{B}\ \text{(the ridge)}.
# $$
#
# Below the ridge $I^\*$ the chip waits for memory, above it for arithmetic. (Arithmetic and memory
# traffic overlap, so the times do not add.) A decode step of $B_s$ sequences reads every weight once
# ($N$ weights of $b$ bytes) and uses each in $B_s$ multiply-adds: $I = 2 B_s N / (b N) = 2B_s / b$,
# so it turns compute-bound at the **crossover batch** $B_s^\* = I^\* b / 2$.
#
# **The chips, from NVIDIA's data sheets** (dense figures: the H100 sheet prints the bf16 Tensor Core
# rate *with* 2:4 structured sparsity and notes that the dense figures are half; the A100 sheet prints
# both):
#
# | chip | bf16 Tensor Core, dense | memory bandwidth | source |
# |---|---|---|---|
# | H100 SXM (80 GB HBM3) | 989.4 TFLOP/s (sheet: 1,979 with sparsity; NVIDIA's Hopper architecture whitepaper: 1,978.9) | 3.35 TB/s | NVIDIA H100 Tensor Core GPU data sheet |
# | A100 80GB SXM (HBM2e) | 312 TFLOP/s (sheet: 624 with sparsity) | 2,039 GB/s | NVIDIA A100 Tensor Core GPU data sheet |
#
# (1 TB/s = $10^{12}$ bytes/s. Both are peaks that real kernels approach but do not reach; this
# machine's own, measured at the end of this section, are what its code actually got.)

# %% id="roofline-chips"
# NBVAL_CHECK_OUTPUT
CHIPS = {"H100 SXM": (989.4e12, 3.35e12), "A100 80GB": (312e12, 2.039e12)}  # (bf16 dense FLOP/s, bytes/s)
for chip, (P, B) in CHIPS.items():
    print(f"{chip:<10} ridge I* = {P / 1e12:g}e12 / {B / 1e12:g}e12 = {ridge_intensity(P, B):6.1f} FLOP/byte; "
          f"at I = 1 it attains {attainable_flops(1, P, B) / 1e12:5.2f} TFLOP/s ({attainable_flops(1, P, B) / P:.2%} of peak)")

# %% [markdown] id="llama-params-md"
# **Worked example: Llama-3-8B.** Its published configuration: 32 layers, $d = 4096$, 32 query heads
# sharing 8 K/V heads ($d_{\text{head}} = 128$), SwiGLU with $d_{ff} = 14336$, RMSNorm, RoPE,
# $V = 128256$, LM head not tied to the embeddings. Its parameter count from the chapters' own
# counters (chapter 02's `attention_param_count`, chapter 03's `ffn_param_count`), checked against the
# shared model's real parameters at a small size with the same switches:

# %% id="llama-params"
# NBVAL_CHECK_OUTPUT
llama3_8b = ModelConfig(vocab_size=128256, d_model=4096, n_heads=32, n_kv_heads=8, d_ff=14336, n_layers=32,
                        norm="rmsnorm", ffn="swiglu", positions="rope", tie_weights=False, max_seq_len=8192)
attn_p, ffn_p = attention_param_count(4096, 32, 8), ffn_param_count(4096, 14336, gated=True, bias=False)
n_llama = decoder_param_count(llama3_8b)
print(f"per layer: attention {attn_p:,} + SwiGLU {ffn_p:,} + 2 RMSNorms {2 * 4096:,}")
print(f"embeddings {128256 * 4096:,}, LM head {128256 * 4096:,}, final norm 4,096")
print(f"Llama-3-8B: {n_llama:,} parameters")
small_llama = ModelConfig(vocab_size=97, d_model=48, n_heads=6, n_kv_heads=2, d_ff=80, n_layers=3, norm="rmsnorm",
                          ffn="swiglu", positions="rope", tie_weights=False)
print("same formula at a small size: counter", decoder_param_count(small_llama),
      "| the shared model's parameters", sum(p.numel() for p in TinyDecoder(small_llama).parameters()))
embed = 128256 * 4096  # looked up one row per token: not streamed in a decode step
norms = (2 * 32 + 1) * 4096  # read too, but tiny
print("a decode step's FLOPs = 2 x (weights in matrices) + the attention core:",
      decode_step_flops(llama3_8b, 0) == 2 * (n_llama - embed - norms) + 32 * 4 * 4096)

# %% [markdown] id="decode-floor-md"
# **The decode floor.** At batch 1 a decode step must stream every matrix weight from memory: about
# $2(N - Vd)$ bytes in bf16 (the embedding table is only looked up, one row per token), plus the KV
# cache of the context. The arithmetic, $2N$ FLOPs, would take a few microseconds; the bytes take
# milliseconds. That floor is a hard upper bound on tokens per second per sequence, whatever the
# software, and it is why a server batches: the same bytes serve every sequence in the batch until
# the crossover batch, where arithmetic becomes the limit.

# %% id="decode-floor"
# NBVAL_CHECK_OUTPUT
weight_bytes = 2 * (n_llama - embed)  # bf16, the matrices (and norms) a step streams
kv_8k = kv_cache_bytes(32, 8, 128, 8192, dtype=torch.bfloat16)
for chip, (P, B) in CHIPS.items():
    floor = decode_floor_seconds(weight_bytes, B)
    with_kv = decode_floor_seconds(weight_bytes + kv_8k, B)
    print(f"{chip:<10} batch 1: weights {weight_bytes / 1e9:.2f} GB -> {floor * 1e3:.2f} ms per token "
          f"(<= {1 / floor:.0f} tokens/s); with an 8192-token KV cache {with_kv * 1e3:.2f} ms; "
          f"the arithmetic alone {2 * n_llama / P * 1e6:.1f} us; crossover batch {decode_crossover_batch(P, B, 2)}")
print("H100, whole-model decode step on the roofline (weights only):")
for batch in (1, 64, 296, 1024):
    r = decode_roofline(n_llama - embed, batch, 2, *CHIPS["H100 SXM"])  # the weights a step streams
    print(f"  batch {batch:4d}: {r['intensity']:6.1f} FLOP/byte, {r['seconds'] * 1e3:6.2f} ms per step, "
          f"{batch / r['seconds']:>9,.0f} tokens/s")

# %% [markdown] id="roofline-mistake-md"
# **Common mistake: dividing FLOPs by peak FLOP/s.** $2N / P$ gives Llama-3-8B 16 µs per token on an
# H100, 60 000 tokens/s for one user; the bytes allow at most about 220 (above). At batch 1 the time
# is the bytes, not the FLOPs. Run side by side:

# %% id="roofline-mistake"
# NBVAL_CHECK_OUTPUT
P, B = CHIPS["H100 SXM"]
wrong = 2 * n_llama / P
right = roofline_time(2 * n_llama, weight_bytes, P, B)
print(f"FLOPs / peak (WRONG): {wrong * 1e6:.1f} us per token | roofline: {right * 1e6:.0f} us per token "
      f"({right / wrong:.0f}x longer)")

# %% [markdown] id="roofline-here-md"
# **This machine on the same axes.** Its compute roof is the best matmul rate measured in section 6
# (`roof`, float32). Its memory roof depends on *which* memory the bytes come from: a copy of a
# 128 MiB tensor (each byte read once and written once) measures main memory, a copy that touches
# 16 MiB, the size of section 6's weight matrix `W_big`, measures what a matrix read again and again
# gets when it stays in the CPU's caches. Section 6's `(T, 2048) @ (2048, 2048)` products read that
# one matrix seven times in a row; the bytes per second they achieved are printed beside both:

# %% id="roofline-here"
copy_bw = copy_bandwidth(128 * MiB, repeat=5, device=device)  # main memory
cache_bw = copy_bandwidth(8 * MiB, repeat=7, device=device)  # 8 MiB read + 8 MiB written: W_big's 16 MiB
print(f"this machine: matmul {roof / 1e9:.0f} GFLOP/s (float32); copy of 128 MiB {copy_bw / 1e9:.1f} GB/s "
      f"(ridge {ridge_intensity(roof, copy_bw):.1f} FLOP/byte), copy touching 16 MiB {cache_bw / 1e9:.1f} GB/s "
      f"(ridge {ridge_intensity(roof, cache_bw):.1f})")
print(f"the T = 1 product moved {achieved[0] / intensity[0] / 1e9:.1f} GB/s: "
      f"{achieved[0] / intensity[0] / copy_bw:.1f}x the main-memory copy, {achieved[0] / intensity[0] / cache_bw:.1f}x "
      f"the 16 MiB copy")
print(f"H100's peaks are {CHIPS['H100 SXM'][0] / roof:,.0f}x and {CHIPS['H100 SXM'][1] / copy_bw:,.0f}x this "
      "machine's matmul and main memory")

# %% id="roofline-plot"
I_axis = np.logspace(-1, 4, 200)
fig, ax = plt.subplots(figsize=(7.5, 4.2))
machines = [*CHIPS.items(), ("this machine, main memory", (roof, copy_bw)), ("this machine, 16 MiB in cache", (roof, cache_bw))]
for (chip, (P, B)), color, style in zip(machines, ("C0", "C1", "C2", "C2"), ("-", "-", "-", "--")):
    ax.loglog(I_axis, [attainable_flops(i, P, B) for i in I_axis], color=color, ls=style,
              label=f"{chip}: ridge {P / B:.0f} FLOP/byte")
    ax.plot(P / B, P, "o", color=color)
ax.loglog(intensity, achieved, "s", color="C2", ms=4, label="section 6's matmuls, measured here (float32)")
ax.axvline(1.0, color="gray", ls=":", label="decode at batch 1 in bf16: 1 FLOP/byte")
ax.set(xlabel="arithmetic intensity (FLOP per byte)", ylabel="attainable FLOP/s",
       title="Rooflines: min(peak, intensity x bandwidth)")
ax.legend(fontsize=7, loc="lower right")
plt.tight_layout()
plt.show()

# %% [markdown] id="roofline-plot-caption"
# *What to see:* each roof rises with slope 1 (memory-bound) until its ridge (dot), then stays flat
# (compute-bound). Batch-1 decoding (dotted line, 1 FLOP/byte) sits far left of every GPU's ridge, at
# under 1 % of an H100's peak. This machine's roofs lie three to four orders of magnitude below the
# GPUs'. Its measured matmuls (squares) are not bound by the main-memory roof at low intensity: they
# re-read one 16 MiB matrix, which stays in the caches, so the roof that applies to them is the cache's
# (dashed), as the bandwidths printed above show. A model too large for the caches, like any real LLM on
# a GPU, streams its weights from main memory every step: the solid roof.

# %% [markdown] id="online-softmax"
# ## 8. FlashAttention's online softmax
#
# **The idea.** The score matrix is needed only to be softmaxed and multiplied by $V$. FlashAttention
# never stores it: it walks over the keys in blocks and keeps, for every query, three running
# quantities — the largest score so far $m$, the sum $\ell = \sum_j e^{s_j - m}$, and the unnormalised
# output $\text{acc} = \sum_j e^{s_j - m} v_j$. When a new block brings a larger maximum, everything
# summed so far was computed against the old $m$ and is rescaled by $e^{m_{\text{old}} - m_{\text{new}}}$:
#
# $$
# m' = \max(m, \max_j s_j), \quad
# \ell' = e^{m - m'} \ell + \sum_j e^{s_j - m'}, \quad
# \text{acc}' = e^{m - m'} \text{acc} + \sum_j e^{s_j - m'} v_j, \qquad
# \text{out} = \text{acc} / \ell .
# $$
#
# Why it is exact: for every key $j$ seen so far, its term is $e^{s_j - m}$ with the *current* $m$,
# because each rescaling multiplies $e^{s_j - m_{\text{old}}}$ by $e^{m_{\text{old}} - m_{\text{new}}}$.
# At the end, $\text{acc}/\ell = \sum_j e^{s_j - m} v_j / \sum_j e^{s_j - m} = \sum_j \operatorname{softmax}(s)_j v_j$.
# Subtracting $m$ keeps every exponent $\le 0$, so nothing overflows.
#
# **Worked example**: one query, 7 keys, blocks of 3 (the last block has 1 key), statistics printed.

# %% id="online-steps"
# NBVAL_CHECK_OUTPUT
scores_row = torch.tensor([1.0, 3.0, 0.5, 4.0, 2.0, 6.0, -1.0], dtype=torch.float64)
values_row = torch.arange(7, dtype=torch.float64)[:, None] * torch.tensor([[1.0, -1.0]], dtype=torch.float64)  # (7, 2)
m, l, acc = -math.inf, 0.0, torch.zeros(2, dtype=torch.float64)
for start in range(0, 7, 3):
    s = scores_row[start:start + 3]
    m_new = max(m, s.max().item())
    c = math.exp(m - m_new)  # rescale factor for what was summed under the old max
    l = c * l + torch.exp(s - m_new).sum().item()
    acc = c * acc + torch.exp(s - m_new) @ values_row[start:start + 3]
    print(f"block {start}-{min(start + 3, 7) - 1}: m = {m_new:.1f}, rescale {c:.4f}, l = {l:.4f}, acc = {acc.numpy().round(4)}")
    m = m_new
exact = torch.softmax(scores_row, dim=0) @ values_row
print("online:", (acc / l).numpy().round(6), " exact softmax:", exact.numpy().round(6))

# %% [markdown] id="online-tiled-md"
# **Implementation check.** `tiled_attention(q, k, v, mask=None, causal=False, block_size=...)` does
# this for blocks of queries against blocks of keys, skips key blocks that a causal mask blocks
# entirely, and gives zeros to a query whose keys are all masked (chapter 01's convention). Against
# torch's fused attention, with block sizes that do not divide `T`:

# %% id="online-tiled"
# NBVAL_CHECK_OUTPUT
gen = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(2, 4, 100, 16, generator=gen) for _ in range(3))
for block in (7, 32, 100):
    for causal in (False, True):
        ours = tiled_attention(q, k, v, causal=causal, block_size=block)
        torch_out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        print(f"block {block:3d}, causal={causal!s:<5}: max |difference| < 1e-5: {(ours - torch_out).abs().max().item() < 1e-5}")

# %% [markdown] id="online-mistake-md"
# **Common mistake: forgetting to rescale the running sum.** Without the factor $e^{m - m'}$ on
# $\ell$, the terms summed under an old, smaller maximum are far too large compared with the new
# ones, and the output is wrong — silently, no NaN. Without any running max, large scores overflow:

# %% id="online-mistake"
# NBVAL_CHECK_OUTPUT
def online(scores, values, block, rescale_sum=True, running_max=True):
    m, l, acc = -math.inf, 0.0, torch.zeros(values.shape[1], dtype=values.dtype)
    for start in range(0, len(scores), block):
        s = scores[start:start + block]
        m_new = max(m, s.max().item()) if running_max else 0.0
        c = math.exp(m - m_new) if running_max else 1.0
        l = (c if rescale_sum else 1.0) * l + torch.exp(s - m_new).sum().item()
        acc = c * acc + torch.exp(s - m_new) @ values[start:start + block]
        m = m_new
    return acc / l


print("right:                 ", online(scores_row, values_row, 3).numpy().round(4))
print("sum not rescaled:      ", online(scores_row, values_row, 3, rescale_sum=False).numpy().round(4))
big = scores_row.float() * 100  # scores of several hundred: exp overflows float32 at about 88.7
print("no running max, float32:", online(big, values_row.float(), 3, running_max=False).numpy(),
      "| with it:", online(big, values_row.float(), 3).numpy().round(4))

# %% [markdown] id="online-where"
# **Where it shows up.** FlashAttention (1, 2 and 3) runs exactly this recurrence inside one GPU
# kernel, keeping the blocks in fast on-chip memory; its backward pass recomputes the blocks instead
# of storing the scores. `F.scaled_dot_product_attention` picks such a kernel when it can. The FLOPs
# are the same as plain attention (a little more); the win is memory, $O(T)$ instead of $O(T^2)$, and
# fewer bytes moved between the chip and its main memory.

# %% [markdown] id="flash-io"
# **FlashAttention's actual claim is memory traffic.** Attention's elementwise work is cheap; what
# makes plain attention slow on a GPU is that the score matrix $S$ and the weights $P$ are written to
# main memory (HBM) and read back. Dao et al. (2022, Theorem 2), for sequence length $N$, head width
# $d$ and on-chip memory (SRAM) of $M$ elements with $d \le M \le Nd$:
#
# $$
# \text{standard attention: } \Theta(Nd + N^2) \text{ HBM accesses}, \qquad
# \text{FlashAttention: } \Theta\!\left(\frac{N^2 d^2}{M}\right).
# $$
#
# Standard attention (their Algorithm 0) reads $Q, K$, writes $S$, reads $S$, writes $P$, reads $P$
# and $V$, writes $O$: $4Nd + 4N^2$ elements per head. A tiled kernel reads each block of queries
# once and, for each, streams all of $K$ and $V$: $2Nd \lceil N/b \rceil$ elements, with blocks of
# $b = M/(4d)$ rows so that blocks of $Q$, $K$, $V$ and the output fit in $M$ together, which is
# $8N^2d^2/M$: the theorem's term. (This is FlashAttention-2's loop order; the paper's Algorithm 1 nests
# the loops the other way round, streaming $Q$ and $O$ once per block of $K$ and $V$, with traffic of
# the same order.) `tiled_attention` follows this loop order; below, its reads and writes are
# *measured* operator by operator (every operator that consumes a piece of `q`, `k` or `v`, every write
# into the output: zero-filled once, then written block by block) and compared with that count.

# %% id="flash-io-check"
# NBVAL_CHECK_OUTPUT
gen = torch.Generator().manual_seed(1)
q, k, v = (torch.randn(1, 2, 300, 16, generator=gen) for _ in range(3))  # (B, H, N, d)
for block, causal in ((64, False), (64, True), (300, False)):
    measured = count_attention_io(tiled_attention, q, k, v, block_size=block, causal=causal)
    formula = tiled_attention_io(300, 300, 16, block, causal=causal, batch_heads=2)
    print(f"block {block:3d}, causal={causal!s:<5}: measured {measured}, formula equal: {measured == formula}")
print("standard attention at the same size:", standard_attention_io(300, 16, batch_heads=2))

# %% [markdown] id="flash-io-real-md"
# **At real sizes.** One head, $d = 64$, bf16, on-chip memory $M$ = 100 KB (the paper discusses
# Theorem 2 with $M$ around 100 KB for $d$ of 64–128; its A100 has 192 KB of SRAM per streaming
# multiprocessor, an H100 up to 228 KB), so $b = \lfloor 10^5 / (4 \cdot 64 \cdot 2) \rfloor = 195$ rows:

# %% id="flash-io-real"
# NBVAL_CHECK_OUTPUT
d_real, M_bytes = 64, 100_000
b_real = M_bytes // (4 * d_real * 2)  # rows per block: Q, K, V and the output block fit in M
print(f"block of {b_real} rows")
for N in (1024, 2048, 4096, 8192, 16384):
    std = standard_attention_io(N, d_real)["total"]
    tiled = tiled_attention_io(N, N, d_real, b_real)["total"]
    print(f"N = {N:5d}: standard {std * 2 / 1e6:8.1f} MB, tiled {tiled * 2 / 1e6:7.1f} MB per head "
          f"({std / tiled:4.1f}x less); Theta terms: N d + N^2 = {N * d_real + N * N:>11,}, "
          f"N^2 d^2 / M = {N * N * d_real**2 // (M_bytes // 2):>10,}")

# %% [markdown] id="flash-io-paper"
# Both grow like $N^2$ at fixed $d$ and $M$, so the saving tends to a constant: $4N^2 / (2Nd \cdot N/b)
# = 2b/d \approx 6$ here, more with a larger SRAM. The win compounds with the memory *held*: no
# $N \times N$ matrix is ever stored. **What the paper measured** (Dao et al. 2022, on an A100):
#
# - Figure 2 (left), GPT-2 medium attention ($N = 1024$, $d = 64$, 16 heads, batch 64), forward and
#   backward: standard 66.6 GFLOPs, 40.3 GB of HBM reads and writes, 41.7 ms; FlashAttention
#   75.2 GFLOPs (more: the backward pass recomputes), 4.4 GB, 7.3 ms.
# - Abstract: 15 % faster end-to-end training of BERT-large (sequence 512) than the MLPerf 1.1
#   record, 3× faster GPT-2 training (sequence 1K), 2.4× on Long-Range Arena (1K–4K).
# - Section 4.3 (Figure 3, right): memory footprint linear in $N$, up to 20× more memory efficient
#   than exact attention baselines.

# %% id="flash-io-paper-ratios"
# NBVAL_CHECK_OUTPUT
print(f"Figure 2: {75.2 / 66.6:.2f}x the FLOPs, {40.3 / 4.4:.1f}x less HBM traffic, {41.7 / 7.3:.1f}x faster")
print(f"the formulas above at N = 1024, d = 64: "
      f"{standard_attention_io(1024, 64)['total'] / tiled_attention_io(1024, 1024, 64, b_real)['total']:.1f}x "
      "less traffic (forward only; the paper's 9.2x includes the backward pass and its own block sizes)")

# %% [markdown] id="context"
# ## 9. Context windows at scale
#
# Chapter 00 split an 8192-token window into a prompt budget: 600 (system) + 6000 (retrieved) + 400
# (user) + 1000 (reserved output) = 8000, leaving 192. The window is a hard limit of the model
# (learned positions have no row past it; other methods degrade past the training length, chapter 06).
# Every token of that budget also costs memory on the server: its keys and values sit in the cache
# for as long as the request runs, in every layer.

# %% id="context-bill"
# NBVAL_CHECK_OUTPUT
print("margin:", remaining_tokens(8192, system=600, retrieved=6000, user=400, output=1000), "tokens")
for window in (8192, 32768, 131072):
    kv = kv_cache_bytes(32, 8, 128, window)
    scores = score_bytes(1, 32, window, dtype=torch.bfloat16)
    print(f"window {window:>6}: KV cache {kv / GiB:5.1f} GiB per sequence (GQA, bf16); "
          f"naive scores {scores / GiB:7.1f} GiB per layer")

# %% [markdown] id="context-read"
# At a 128k window a single sequence's cache takes 16 GiB even with GQA, and the naive score matrix of
# one layer would take 1 TiB — which is why long-context models need both GQA (or MQA) and a tiled
# attention kernel. Doubling the context doubles the cache and the per-token FLOPs of the attention
# core, and quadruples what naive attention would have to hold.

# %% [markdown] id="prefill-latency"
# **Prefill latency against context length, measured.** Before the first new token, the whole prompt
# goes through the model at once (the prefill). Its FLOPs are $aT + cT^2$: the per-token matrices and
# the $4T^2d$ per layer of the attention core (section 3), so its time should be a parabola in $T$ whose
# quadratic part grows in share. Measured on the course model (4 layers, $d = 128$, the fast path),
# fitted with $t(T) = t_0 + t_1 T + t_2 T^2$:

# %% id="prefill-latency-run"
prefill_config = ModelConfig(vocab_size=512, d_model=128, n_heads=4, n_layers=4, max_seq_len=2048)
lengths = [128, 256, 512, 1024, 2048]
latency = prefill_latency(prefill_config, lengths, repeat=3)
t0, t1, t2 = np.polynomial.polynomial.polyfit(lengths, [latency[T] for T in lengths], 2)
for T in lengths:
    core = prefill_config.n_layers * 4 * T * T * prefill_config.d_model  # QKᵀ and AV, all layers
    print(f"T = {T:4d}: {latency[T] * 1e3:7.2f} ms; fitted T² share {t2 * T * T / latency[T]:5.1%}; "
          f"attention core's share of the FLOPs {core / model_flops(prefill_config, T):5.1%}")
print(f"time of 2048 tokens / time of 1024: {latency[2048] / latency[1024]:.2f}; FLOPs of 2048 / FLOPs of 1024: "
      f"{model_flops(prefill_config, 2048) / model_flops(prefill_config, 1024):.2f} (2 if linear, 4 if quadratic)")

# %% [markdown] id="prefill-latency-read"
# The FLOP column is exact: the attention core's share grows from about an eighth at 128 tokens to
# about 70 % at 2048, and doubling $T$ from 1024 to 2048 multiplies the FLOPs by 3.1 and the measured
# time by more than 2 (both printed above). The fitted share is noisier: timings on a shared CPU
# jitter, and a fit of three terms through five points follows the jitter. A serving system's "time to
# first token" grows with the prompt for the same reason: the prefill is this computation.
#
# **A window the model can read is not context it uses.** A model's context window says how far back
# it *can* look; whether it *does* is a measurement. The test: give the model only the last $w$ tokens
# before each prediction, and see where its loss stops falling. Here chapter 08's small character
# model (2 layers, $d = 64$, a 64-character window) is trained for 200 steps (about 5 CPU-seconds),
# then scored on the same 1024 validation targets with $w$ = 1 … 64 characters visible
# (`loss_by_visible_context`):

# %% id="context-use-run"
use = context_use_experiment(seed=0)
print("validation loss (nats) with the last w characters visible:")
print("  ".join(f"w={w}: {use['loss'][w]:.3f}" for w in CONTEXT_WINDOWS))
print(f"(trained for {use['cpu_seconds']:.1f} CPU-seconds)")

# %% id="context-use-claims"
# NBVAL_CHECK_OUTPUT
loss_w = use["loss"]
print("the first few characters help (loss at w=1 above w=4 by more than 0.15):", loss_w[1] > loss_w[4] + 0.15)
print("the other 60 do not (loss at w=64 not below w=4 by 0.05 or more):", loss_w[64] > loss_w[4] - 0.05)

# %% [markdown] id="context-use-read"
# The model reads 64 characters at every position, and its loss with 4 visible is already as low as
# with all 64: the context it *uses* is a few characters, a sixteenth of its window. A window is a
# limit on what a model may read, not evidence of what it uses; for a real model the same kind of
# measurement (loss by visible context or by token position, retrieval of a fact planted at varying
# depths) is what tells. A long window is a cost (the KV cache and the $T^2$ term above) that pays
# only when the model has learned to use it.

# %% [markdown] id="self-check"
# ## 10. Self-check
#
# **Q1.** A layer has $d = 1024$, $d_{ff} = 4096$ (GELU), 16 heads, no GQA. At which $T$ does its
# attention cost as many FLOPs as its MLP?
#
# <details><summary>Answer</summary>
#
# $T^\* = (2 \cdot 4096 - 2 \cdot 1024 - 2 \cdot 1024)/2 = 2048$.
# </details>
#
# **Q2.** Why is training about 3 × the FLOPs of a forward pass?
#
# <details><summary>Answer</summary>
#
# For each product $y = xW$ the backward pass computes $\partial L/\partial x = (\partial L/\partial y) W^\top$
# and $\partial L/\partial W = x^\top (\partial L/\partial y)$: two products of the same size as the forward one.
# </details>
#
# **Q3.** Mistral-7B has 32 layers, 8 K/V heads of 128, and caches in bf16. How many bytes does one
# 4096-token sequence take, and how much would it take with 32 K/V heads?
#
# <details><summary>Answer</summary>
#
# $2 \cdot 32 \cdot 8 \cdot 128 \cdot 4096 \cdot 2 = 512$ MiB; with 32 heads 2 GiB (4× more).
# </details>
#
# **Q4.** After 10 cached tokens, 3 new ones arrive together. Which keys may new query 0 see? What
# does `is_causal=True` give it instead?
#
# <details><summary>Answer</summary>
#
# Keys 0..10 (it is token 10). `is_causal=True` aligns top-left and gives it key 0 only.
# </details>
#
# **Q5.** In the online softmax, the running max grows from 2 to 5 when a block arrives. What must
# happen to $\ell$ and to the accumulated output, and why?
#
# <details><summary>Answer</summary>
#
# Both are multiplied by $e^{2 - 5} = e^{-3}$: their terms were $e^{s - 2}$ and must become $e^{s - 5}$
# to be added to the new block's terms.
# </details>
#
# **Q6.** Why does batching many users' decode steps together make a server faster?
#
# <details><summary>Answer</summary>
#
# A decode step is memory-bound: its time is reading the weights. With a batch of $B$ sequences the
# same weights serve $B$ tokens, multiplying the FLOPs per byte by $B$ (the KV caches, one per
# sequence, do not get shared).
# </details>
#
# **Q7.** An accelerator does 400 TFLOP/s and moves 2 TB/s. A 13-billion-parameter model decodes in
# bf16 at batch 1. What is its latency floor per token, and from which batch is a step compute-bound?
#
# <details><summary>Answer</summary>
#
# It reads $13 \cdot 10^9 \cdot 2 = 26$ GB per step: $26 / 2000 = 13$ ms. The ridge is $400/2 = 200$
# FLOP/byte and the intensity $2B/2 = B$, so from batch 200 on.
# </details>

# %% [markdown] id="evidence-card"
# ## Evidence card
#
# What you can now show, and the cell that shows it (cells marked `# NBVAL_CHECK_OUTPUT` are checked
# by the test suite):
#
# | you can show | where |
# |---|---|
# | attention's parts and the MLP in FLOPs, equal to torch's flop counter (2 FLOPs per multiply-add) | §1, `flops-gpt2`, `flops-check`, `flops-mistake` |
# | attention overtakes the MLP at $T^\*$ = 1536 for GPT-2 small; its $T^2$ term alone at $m\,d_{ff}/2$ = 3072 | §1, `crossover`, `crossover-plot` |
# | score memory is $O(T^2)$; measured memory has slope 2 on log-log axes, measured time about 2 or more once the scores outgrow the cache | §2, `memory-example`, `measure`, `measure-plot` |
# | forward and training FLOPs of a whole model, equal to the flop counter | §3, `per-token-check`, `per-token-table` |
# | 2 GiB of KV cache per 4096-token sequence for Llama-2-7B's shape; GQA ÷4, MQA ÷32; `.nbytes` of a real cache | §4, `kv-example`, `kv-real`, `kv-mistake` |
# | cached generation gives identical tokens, faster; the cache mask is bottom-right, not `is_causal` | §5, `generate-run`, `generate-same`, `mask-compare`, `offset-mistake` |
# | decode is memory-bound: FLOP/s against FLOP/byte, measured | §6, `prefill-measure`, `prefill-plot`, `decode-bytes` |
# | the online softmax, step by step, equal to exact attention; without rescaling it is wrong | §8, `online-steps`, `online-tiled`, `online-mistake` |
# | H100 and A100 on the roofline; Llama-3-8B's 8,030,261,248 parameters from the chapters' counters; its batch-1 decode floor (4.48 ms on an H100) and crossover batch (296); FLOPs / peak is about 280x too optimistic; this machine's measured roof on the same axes | §7, `roofline-chips`, `llama-params`, `decode-floor`, `roofline-mistake`, `roofline-here`, `roofline-plot` |
# | the tiled kernel's reads and writes, measured, equal the $\Theta(N^2d^2/M)$ count; standard attention's $\Theta(Nd + N^2)$ at 1k–16k tokens; the paper's Figure 2 ratios | §8, `flash-io-check`, `flash-io-real`, `flash-io-paper-ratios` |
# | what a long context window costs in cache and scores; prefill time measured against $T$ beside the attention core's FLOP share | §9, `context-bill`, `prefill-latency-run` |
# | a 64-character window used for about 4: loss by visible context | §9, `context-use-run`, `context-use-claims` |

# %% [markdown] id="next"
# ## Next: the exercises
#
# Open [`exercises/07_complexity/07_complexity.ipynb`](../exercises/07_complexity/07_complexity.ipynb).
# You will write attention and MLP FLOP counters (checked against the flop counter's numbers), compute
# the KV-cache memory of real decoders with MHA, GQA and MQA, embed new tokens at the right position
# offset, write one cached attention step, write the online softmax over blocks, and put a decode step
# of a real model on the roofline of a real chip.
