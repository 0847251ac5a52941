"""Chapter 05: what cross-attention learns. A tiny encoder-decoder of the shared model learns to reverse.

The task: the source is `length` random symbols, the target is the same symbols in reverse order.

    src       a b c d e f g h                      (B, n) ids in 1..n_symbols
    tgt_in    BOS h g f e d c b                    (B, n) the decoder's input: teacher forcing
    tgt       h g f e d c b a                      (B, n) what each decoder position must predict

Target position t must output source token n - 1 - t. Nothing in the decoder's own input says
which symbol that is (it has only seen the later source tokens, reversed), so the information
can only come through cross-attention, and the place to read is fixed by position alone: a model
that solves the task has a cross-attention pattern close to the **anti-diagonal** (query t on key
n - 1 - t), while a random model's pattern is close to uniform (1 / n on every key).

`reversal_experiment` trains `helpers.blocks.TinyEncoderDecoder` (the model chapter 05 builds,
through its fast path `kernels="fused"`) with the course's AdamW (`helpers.training.adamw`,
`lr_at`'s warm-up and cosine schedule) and returns plain floats plus the model. The cross-attention
weights are read on the course path (`decode(..., return_weights=True)`), which the fast path
equals (tests/test_fused_attention.py).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from .blocks import ModelConfig, TinyEncoderDecoder
from .shapes import require_positive_int
from .threads import torch_threads
from .training import adamw, lr_at

__all__ = ["BOS", "anti_diagonal_mass", "cross_attention_maps", "greedy_reverse", "reversal_batch",
           "reversal_experiment"]

BOS = 0  # the decoder's start token; symbols are 1 .. n_symbols


def reversal_batch(batch_size: int, length: int, n_symbols: int, generator: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(src, tgt_in, tgt), each (batch_size, length) int64: random symbols 1..n_symbols, their reversal,
    and the reversal shifted right behind BOS (the decoder's teacher-forced input)."""
    fn = "reversal_batch"
    for name, value in (("batch_size", batch_size), ("length", length), ("n_symbols", n_symbols)):
        require_positive_int(fn, name, value)
    src = torch.randint(1, n_symbols + 1, (batch_size, length), generator=generator)  # (B, n)
    tgt = src.flip(1)  # (B, n): reversed
    tgt_in = torch.cat([torch.full((batch_size, 1), BOS), tgt[:, :-1]], dim=1)  # (B, n): BOS, then tgt shifted
    return src, tgt_in, tgt


@torch.no_grad()
def cross_attention_maps(model: TinyEncoderDecoder, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
    """The decoder's cross-attention weights, (n_layers, B, H, T_tgt, T_src), from the course path."""
    was_training = model.training
    model.eval()
    memory, memory_mask = model.encode(src)  # (B, T_src, d_model)
    _, weights = model.decode(tgt_in, memory, memory_mask, return_weights=True)  # per layer (self, cross)
    model.train(was_training)
    return torch.stack([cross for _, cross in weights])  # (n_layers, B, H, T_tgt, T_src)


def anti_diagonal_mass(maps: torch.Tensor, width: int = 0) -> torch.Tensor:
    """Mean weight that query t puts on keys within `width` of T - 1 - t, per layer and head:
    maps (L, B, H, T, T) -> (L, H). width=0 is the anti-diagonal itself: uniform attention gives
    1 / T, a perfect reversal head 1."""
    if maps.dim() != 5 or maps.shape[-1] != maps.shape[-2]:
        raise ValueError(f"anti_diagonal_mass: maps must be (n_layers, B, H, T, T); got {tuple(maps.shape)}")
    T = maps.shape[-1]
    t = torch.arange(T, device=maps.device)
    near = ((t[:, None] + t[None, :]) - (T - 1)).abs() <= width  # (T, T): |(t + j) - (T - 1)| <= width
    return (maps * near).sum(-1).mean(dim=(1, 3))  # (L, H)


@torch.no_grad()
def greedy_reverse(model: TinyEncoderDecoder, src: torch.Tensor) -> torch.Tensor:
    """Greedy decoding of the whole target, one token at a time from BOS (no teacher forcing): (B, T)."""
    was_training = model.training
    model.eval()
    memory, memory_mask = model.encode(src)  # (B, T_src, d_model), computed once
    out = torch.full((src.shape[0], 1), BOS, dtype=src.dtype, device=src.device)  # (B, 1)
    for _ in range(src.shape[1]):
        logits = model.decode(out, memory, memory_mask)  # (B, t, V)
        out = torch.cat([out, logits[:, -1].argmax(-1, keepdim=True)], dim=1)  # (B, t + 1)
    model.train(was_training)
    return out[:, 1:]  # (B, T): BOS dropped


def _loss(model: TinyEncoderDecoder, src, tgt_in, tgt) -> torch.Tensor:
    logits = model(src, tgt_in)  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1), tgt.flatten())  # mean over B * T target tokens


def _check_reversal_settings(seed: int, warmup: int, **sizes: int) -> None:
    """reversal_experiment's arguments, each bad one refused by name: `sizes` are the positive ints
    (steps, length, ...), the seed an int, warmup in 0..steps-1."""
    fn = "reversal_experiment"
    for name, value in sizes.items():
        require_positive_int(fn, name, value)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"{fn}: seed must be an int; got {type(seed).__name__}")
    steps = sizes["steps"]
    if not 0 <= warmup < steps:
        raise ValueError(f"{fn}: warmup must lie in 0..steps-1 = 0..{steps - 1}; got {warmup!r}")


def _train_to_reverse(model: TinyEncoderDecoder, data: torch.Generator, *, steps: int, lr: float, warmup: int,
                      batch_size: int, length: int, n_symbols: int) -> float:
    """`steps` AdamW updates (no weight decay, lr_at's warm-up and cosine to lr / 10, gradients clipped
    to norm 1) on fresh batches drawn from `data`; the first batch's loss."""
    optimizer = adamw(model, lr, weight_decay=0.0)
    model.train()
    first_loss = None
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, lr=lr, steps=steps, warmup=warmup, min_lr=lr / 10)
        loss = _loss(model, *reversal_batch(batch_size, length, n_symbols, data))
        first_loss = loss.item() if first_loss is None else first_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return first_loss


def _held_out_scores(model: TinyEncoderDecoder, held_out: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
                     ) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """The trained model (left in eval mode) on the held-out set: its loss, teacher-forced token accuracy
    and greedy sequence accuracy; and the last decoder layer's anti-diagonal mass per head, (H,), on the
    anti-diagonal itself and within one position of it."""
    model.eval()
    src, tgt_in, tgt = held_out  # (N, T) each
    with torch.no_grad():
        logits = model(src, tgt_in)  # (N, T, V)
        scores = {
            "loss": F.cross_entropy(logits.flatten(0, 1), tgt.flatten()).item(),
            "accuracy": (logits.argmax(-1) == tgt).double().mean().item(),
            "sequence_accuracy": (greedy_reverse(model, src) == tgt).all(-1).double().mean().item(),
        }
    maps = cross_attention_maps(model, src, tgt_in)  # (L, N, H, T, T)
    mass = anti_diagonal_mass(maps)[-1]  # (H,): last decoder layer
    band = anti_diagonal_mass(maps, width=1)[-1]  # (H,)
    return scores, mass, band


def reversal_experiment(seed: int = 0, *, steps: int = 600, length: int = 8, n_symbols: int = 10,
                        d_model: int = 32, n_heads: int = 2, n_layers: int = 1, batch_size: int = 64,
                        lr: float = 1e-2, warmup: int = 20, eval_size: int = 512) -> dict:
    """Train a TinyEncoderDecoder to reverse `length` random symbols; what its cross-attention learned.

    Shows: the trained model reverses held-out sequences (teacher-forced token accuracy and greedy
    whole-sequence accuracy near 1), and its decoder's cross-attention puts most of its weight on
    the anti-diagonal (query t reads source position length - 1 - t), against 1 / length for uniform
    attention and about that for the same model at initialization.

    Deterministic for a seed (weights, batches and the held-out set all drawn from it) on one thread.
    Cost with the defaults: about 4 CPU-seconds on one thread (600 steps of 64 sequences of 8 tokens).

    Returns floats: accuracy (teacher-forced, per target token), sequence_accuracy (greedy decoding,
    whole sequence right), loss (held-out cross-entropy, nats per token), first_loss (the first
    batch's), chance_loss (ln n_symbols), anti_diagonal (best head's mean anti-diagonal weight, last
    decoder layer), anti_diagonal_mean (over that layer's heads), anti_diagonal_band (best head's
    weight within one position of the anti-diagonal: the encoder's self-attention can move a token's
    identity to its neighbours, so a head may read one place off), anti_diagonal_init (best head
    before training), chance (1 / length), cpu_seconds; and "model", the trained model (eval mode, CPU).
    """
    _check_reversal_settings(seed, warmup, steps=steps, length=length, n_symbols=n_symbols, d_model=d_model,
                             n_heads=n_heads, n_layers=n_layers, batch_size=batch_size, eval_size=eval_size)
    config = ModelConfig(vocab_size=n_symbols + 1, d_model=d_model, n_heads=n_heads, n_layers=n_layers,
                         max_seq_len=length, kind="encoder-decoder", kernels="fused")
    start = time.process_time()
    with torch_threads(1), torch.random.fork_rng(devices=[]):  # tiny matrices: one thread is fastest
        torch.manual_seed(seed)
        model = TinyEncoderDecoder(config)
        data = torch.Generator().manual_seed(seed)
        held_out = reversal_batch(eval_size, length, n_symbols, torch.Generator().manual_seed(seed + 1_000_003))
        init_mass = anti_diagonal_mass(cross_attention_maps(model, *held_out[:2]))[-1]  # (H,)
        first_loss = _train_to_reverse(model, data, steps=steps, lr=lr, warmup=warmup, batch_size=batch_size,
                                       length=length, n_symbols=n_symbols)
        scores, mass, band = _held_out_scores(model, held_out)
    return {
        "accuracy": scores["accuracy"],
        "sequence_accuracy": scores["sequence_accuracy"],
        "loss": scores["loss"],
        "first_loss": first_loss,
        "chance_loss": float(torch.log(torch.tensor(float(n_symbols)))),
        "anti_diagonal": mass.max().item(),
        "anti_diagonal_mean": mass.mean().item(),
        "anti_diagonal_band": band.max().item(),
        "anti_diagonal_init": init_mass.max().item(),
        "chance": 1.0 / length,
        "cpu_seconds": time.process_time() - start,
        "model": model,
    }
