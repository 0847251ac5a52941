"""A baseline for speed: a GPT built the way nanoGPT's model.py builds it, and a fair stopwatch.

Chapter 08 and tools/bench_training.py time the shared model (helpers.blocks.TinyDecoder) against
this one. It follows the public description of nanoGPT's `model.py` (Karpathy, 2022) and is written
for this course, not copied:

    token + learned position embeddings (wte, wpe), dropout
    n_layer x Block (Pre-LN):  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))
        attn: one Linear c_attn (d -> 3 d) gives q, k, v; heads (B, nh, T, hs); causal
              F.scaled_dot_product_attention; heads merged; Linear c_proj; dropout
        mlp:  Linear c_fc (d -> 4 d), GELU (exact), Linear c_proj (4 d -> d), dropout
    ln_f, lm_head tied to wte; weights N(0, 0.02), each c_proj N(0, 0.02 / sqrt(2 n_layer))
    AdamW with weight decay on tensors of 2+ dimensions only; torch's fused AdamW on CUDA only

LayerNorm and Linear have a bias when `bias=True` (model.py's default); nanoGPT's train.py, which
runs the CPU configuration below, sets bias=False (and dropout 0.0 on the CPU).

`compare_training(...)` runs training steps of several models in interleaved rounds (A B C, A B C,
...), so a change in the machine's load hits every model alike, at each thread count asked for.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NANOGPT_CPU", "NanoGPT", "compare_training", "matmul_peak", "nanogpt_step", "training_flops_per_token"]

# nanoGPT's README, "I only have a macbook": train_shakespeare_char on a CPU
NANOGPT_CPU = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, vocab_size=65)


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (torch's nn.LayerNorm could not leave it out in older versions)."""

    def __init__(self, n: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.bias = nn.Parameter(torch.zeros(n)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, bias: bool, dropout: float) -> None:
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)
        self.n_head, self.dropout = n_head, dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=True)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, n_embd: int, bias: bool, dropout: float) -> None:
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, bias: bool, dropout: float) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(n_embd, bias)
        self.attn = CausalSelfAttention(n_embd, n_head, bias, dropout)
        self.ln_2 = LayerNorm(n_embd, bias)
        self.mlp = MLP(n_embd, bias, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    """nanoGPT's GPT: idx (B, T) [, targets (B, T)] -> (logits (B, T, V), loss or None)."""

    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int, *,
                 bias: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.block_size = block_size
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.h = nn.ModuleList(Block(n_embd, n_head, bias, dropout) for _ in range(n_layer))
        self.ln_f = LayerNorm(n_embd, bias)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # weight tying
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # residual projections, scaled for depth (GPT-2)
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        T = idx.shape[1]
        pos = torch.arange(0, T, dtype=torch.long, device=idx.device)  # (T,)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)

    def configure_optimizers(self, weight_decay: float, learning_rate: float,
                             betas: tuple[float, float]) -> torch.optim.AdamW:
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        fused = all(p.device.type == "cuda" for p in params)  # nanoGPT: the fused kernel on CUDA only
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **({"fused": True} if fused else {}))


def nanogpt_step(model: NanoGPT, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                 grad_clip: float = 1.0) -> torch.Tensor:
    """One iteration of nanoGPT's train.py (no gradient accumulation): loss, backward, clip, step, zero."""
    _, loss = model(x, y)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def training_flops_per_token(n_params: int, n_layer: int, d_model: int, T: int) -> int:
    """Training FLOPs per token, forward + backward: 6 N for the weights (2 forward, 4 backward per
    parameter) + 12 L d T for attention's q kᵀ and weights @ v (PaLM's appendix, nanoGPT's estimate_mfu).
    n_params: the parameters a token multiplies, the position table excluded."""
    return 6 * n_params + 12 * n_layer * d_model * T


def matmul_peak(threads: int, n: int = 1024, repeats: int = 5) -> float:
    """The float32 matmul rate (GFLOP/s) measured here on `threads` threads: best of repeats of an
    (n, n) @ (n, n) product, 2 n³ FLOPs. The ceiling for a model whose time goes into matmuls."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
        a @ b  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    return 2 * n ** 3 / best / 1e9


def compare_training(steppers: Mapping[str, Callable[[int], object]], tokens_per_step: int, *,
                     threads: tuple[int, ...] = (1, 2), rounds: int = 3, seconds: float = 0.3,
                     warmup: int = 2) -> dict[int, dict[str, list[float]]]:
    """Tokens per second of each training step function, in interleaved rounds, at each thread count.

    steppers: name -> step(i) doing one training step on batch i. Each (thread count, round,
    model) runs whole steps for at least `seconds` (and at least one step), so a slow setting costs
    little time; rounds cycle through the models in order. Returns {threads: {name: [tokens/s per
    round]}}; the learner's thread count is restored afterwards.
    """
    before = torch.get_num_threads()
    results: dict[int, dict[str, list[float]]] = {}
    try:
        for n in threads:
            torch.set_num_threads(n)
            for step in steppers.values():
                for i in range(warmup):
                    step(i)
            rates: dict[str, list[float]] = {name: [] for name in steppers}
            for _ in range(rounds):
                for name, step in steppers.items():
                    done, start = 0, time.perf_counter()
                    while True:
                        step(done)
                        done += 1
                        elapsed = time.perf_counter() - start
                        if elapsed >= seconds:
                            break
                    rates[name].append(done * tokens_per_step / elapsed)
            results[n] = rates
    finally:
        torch.set_num_threads(before)
    return results


def median(values: list[float]) -> float:
    return statistics.median(values)


def load_average() -> float:
    """The 1-minute load average (runnable processes; above the core count means a busy machine)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
