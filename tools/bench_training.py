"""Training throughput of the shared model against a minimal nanoGPT-style GPT (a benchmark, not a test).

    python tools/bench_training.py                  # nanoGPT's CPU configuration, torch's default threads
    python tools/bench_training.py --threads 1 --steps 30
    python tools/bench_training.py --device cuda    # where a GPU is present

Tokens per second of one training step (forward, backward and an AdamW update, no validation) at
nanoGPT's CPU configuration (`train_shakespeare_char` on a laptop: 4 layers, 4 heads, d_model 128,
block 64, batch 12, vocabulary 65, no bias, no dropout), for three models of the same shape:

* `TinyDecoder(attention="course")`: the course's own attention (chapter 01's function, weights formed);
* `TinyDecoder(attention="fused")`: the same model through F.scaled_dot_product_attention;
* `MiniGPT` below, written the way nanoGPT's model.py is: one fused QKV nn.Linear, F.scaled_dot_product_attention
  with is_causal=True, torch's F.layer_norm and nn.GELU, tied embedding and head.

The three run in interleaved rounds (A B C, A B C, ...) on the same random batches, so a busy machine
slows all of them alike; the table gives the median round of each. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers.blocks import ModelConfig, TinyDecoder  # noqa: E402
from helpers.training import param_count  # noqa: E402

NANOGPT_CPU = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, vocab_size=65)


# ---------------------------------------------------------------------------------------------
# A minimal GPT in nanoGPT's style (bias=False, dropout=0)
# ---------------------------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=False)  # q, k, v in one matmul
        self.c_proj = nn.Linear(n_embd, n_embd, bias=False)
        self.n_head = n_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.c_proj(y)


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=False)
        self.attn = CausalSelfAttention(n_embd, n_head)
        self.ln_2 = nn.LayerNorm(n_embd, bias=False)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd, bias=False), nn.GELU(),
                                 nn.Linear(4 * n_embd, n_embd, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class MiniGPT(nn.Module):
    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=False)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # weight tying
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))  # (B, T, C)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))  # (B, T, vocab_size)


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


def build(name: str, device: torch.device) -> nn.Module:
    c = NANOGPT_CPU
    torch.manual_seed(0)
    if name == "MiniGPT (nanoGPT style)":
        return MiniGPT(c["vocab_size"], c["block_size"], c["n_layer"], c["n_head"], c["n_embd"]).to(device)
    attention = "fused" if "fused" in name else "course"
    config = ModelConfig(vocab_size=c["vocab_size"], d_model=c["n_embd"], n_heads=c["n_head"], n_layers=c["n_layer"],
                         max_seq_len=c["block_size"], bias=False, attention=attention)
    return TinyDecoder(config).to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per model first")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    c = NANOGPT_CPU
    B, T, V = c["batch_size"], c["block_size"], c["vocab_size"]
    names = ["TinyDecoder, course attention", "TinyDecoder, fused attention", "MiniGPT (nanoGPT style)"]
    models = {name: build(name, device) for name in names}
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
                  for name, m in models.items()}
    gen = torch.Generator().manual_seed(0)
    data = [torch.randint(0, V, (B, T + 1), generator=gen).to(device) for _ in range(8)]

    def step(name: str, i: int) -> None:
        batch = data[i % len(data)]
        x, y = batch[:, :-1], batch[:, 1:]  # (B, T), (B, T)
        logits = models[name](x)  # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
        optimizers[name].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[name].step()

    for name in names:
        for i in range(args.warmup):
            step(name, i)
    sync(device)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            sync(device)
            start = time.perf_counter()
            for i in range(args.steps):
                step(name, i)
            sync(device)
            rates[name].append(args.steps * B * T / (time.perf_counter() - start))

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"nanoGPT CPU configuration: {c['n_layer']} layers, {c['n_head']} heads, d_model {c['n_embd']}, "
          f"block {T}, batch {B}, vocabulary {V}, no bias, no dropout")
    print(f"{args.rounds} rounds x {args.steps} steps, forward + backward + AdamW; device {device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {load:.1f}, {platform.machine()}")
    baseline = statistics.median(rates[names[-1]])
    print("\n| model | parameters | tokens/s (median) | min..max | vs MiniGPT |\n|---|---|---|---|---|")
    for name in names:
        median = statistics.median(rates[name])
        print(f"| {name} | {param_count(models[name]):,} | {median:,.0f} | {min(rates[name]):,.0f}.."
              f"{max(rates[name]):,.0f} | {median / baseline:.2f}x |")


if __name__ == "__main__":
    main()
