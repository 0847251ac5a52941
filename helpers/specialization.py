"""Chapter 02, section 5: head specialization measured on a briefly trained model.

    found = trained_heads_experiment(seed=0)     # plain floats, plus (layer, head) tensors
    previous_token_scores(weights)               # (n_layers, H): each head's mean weight on key i - 1

A module of its own (not helpers.heads) because it trains: helpers.heads is imported by the shared
model, and so by every chapter; this is imported by chapter 02's notebook and its test only.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import ModelConfig, TinyDecoder
from .corpus import load_corpus
from .shapes import ShapeError, fmt_shape, require_float, require_positive_int
from .threads import torch_threads
from .tokenizers import course_chars
from .training import batches, token_loss, train

__all__ = ["previous_token_scores", "trained_heads_experiment"]


def previous_token_scores(weights: list[torch.Tensor]) -> torch.Tensor:
    """Each head's mean attention weight on the token just before the query: (n_layers, H).

    weights: one (B, H, T, T) causal weight tensor per layer (TinyDecoder(..., return_weights=True)).
    Query 0 has no previous token and is left out, so the mean runs over queries 1..T-1 of every
    sequence. 1 means the head always reads the previous token; a head that spreads evenly over its
    t + 1 visible keys scores the mean of 1 / (t + 1).
    """
    fn = "previous_token_scores"
    rows = []
    for layer, w in enumerate(weights):
        require_float(fn, f"weights[{layer}]", w, "(B, H, T, T)")
        if w.dim() != 4 or w.shape[-1] != w.shape[-2] or w.shape[-1] < 2:
            raise ShapeError(f"{fn}: weights[{layer}] must be (B, H, T, T) with T >= 2; got {fmt_shape(w.shape)}")
        rows.append(torch.diagonal(w, offset=-1, dim1=-2, dim2=-1).mean(dim=(0, 2)))  # (H,): w[b, h, t, t - 1]
    return torch.stack(rows)  # (n_layers, H)


def _check_heads_settings(steps: int, batch_size: int, block_size: int) -> None:
    """trained_heads_experiment's sizes, each bad one refused by name."""
    for name, value in (("steps", steps), ("batch_size", batch_size), ("block_size", block_size)):
        require_positive_int("trained_heads_experiment", name, value)
    if block_size < 9:
        raise ValueError(f"trained_heads_experiment: block_size must be at least 9 (distances are read over "
                         f"queries 8..T-1); got {block_size}")


def _scores_and_loss(model: nn.Module, x_val: torch.Tensor, y_val: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The model (put in eval mode) on the fixed validation windows x_val, y_val (8, T): each head's
    previous-token score (n_layers, H) and the validation loss."""
    model.eval()
    with torch.no_grad():
        logits, weights = model(x_val, return_weights=True)  # (8, T, V), n_layers x (8, H, T, T)
    return previous_token_scores(weights), token_loss(logits, y_val).item()


def _reading_habits(weights: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each head reads, from one (B, H, T, T) weight tensor per layer: (offsets (n_layers, H, 3),
    the mean weight on the key 0, 1 and 2 tokens back over queries 3..T-1; distance (n_layers, H), the
    mean attention distance over queries 8..T-1; argmax_prev (n_layers, H), the share of queries
    i >= 1 whose top key is i - 1)."""
    offsets = torch.stack([torch.stack([torch.diagonal(w, offset=-k, dim1=-2, dim2=-1)[..., 3 - k:].mean(dim=(0, 2))
                                        for k in range(3)], dim=-1) for w in weights])  # (n_layers, H, 3)
    T_ = weights[0].shape[-1]
    lag = (torch.arange(T_)[:, None] - torch.arange(T_)[None, :]).clamp(min=0).to(weights[0].dtype)  # (T, T): i - j
    distance = torch.stack([(w * lag).sum(-1)[..., 8:].mean(dim=(0, 2)) for w in weights])  # (n_layers, H)
    argmax_prev = torch.stack([(w[..., 1:, :].argmax(-1) == torch.arange(T_ - 1)).double().mean(dim=(0, 2))
                               for w in weights])  # (n_layers, H): share of queries i >= 1 whose top key is i - 1
    return offsets, distance, argmax_prev


def trained_heads_experiment(seed: int = 0, steps: int = 300, *, positions: str = "rope", lr: float = 1e-2,
                             batch_size: int = 16, block_size: int = 48,
                             threads: int = 1) -> dict:
    """Train the course's tiny decoder briefly on the course corpus (characters) and look for a
    previous-token head: the one whose attention sits on the token just before the query.

    The model is the shared TinyDecoder (2 layers of 4 heads, d_model 64, RoPE, fused kernels for
    training), trained with helpers.training.train (AdamW, warm-up, cosine) on windows of T = block_size
    characters; attention weights are read on 8 fixed validation windows before and after. RoPE, not
    learned positions: with a learned table (initialized at N(0, 0.02^2)) no head read the previous
    token after 300 or 600 steps (best scores 0.08 and 0.23, measured), since the heads must first
    learn what the positions are; RoPE makes "one step back" a direction every head can find.

    Returns plain floats: "prev_init" and "prev_trained" (the best head's previous-token score before
    and after training, see previous_token_scores), "best_layer", "best_head", "others_trained" (the
    mean score of the other heads after training), "uniform" (what a head that spreads evenly scores),
    "val_init" and "val_trained" (validation loss, nats); and, as tensors, "scores" (n_layers, H) after
    training and "offsets" (n_layers, H, 3): each head's mean weight on the key 0, 1 and 2 tokens back
    (queries 3..T-1), and "distance" (n_layers, H): each head's mean attention distance sum_j A_ij (i - j)
    over queries 8..T-1 (how far back it reads), with its extremes "nearest_distance", "farthest_distance",
    and "uniform_distance" (what an evenly spread head reads: the mean of i / 2); "argmax_prev" (n_layers, H):
    the share of queries whose largest weight is on the previous token (Voita et al. 2019 call a head
    positional when such a share reaches 90 %), and "top_is_previous", that share for the best head.

    What it shows: nobody wires a previous-token head into this model, yet a short run produces one
    (about half its weight on the previous character, against 0.07 for an evenly spread head), while
    the heads differ several-fold in how far back they read.
    Cost: about 5 CPU-s at one thread for the defaults; deterministic for a seed and a thread count.
    """
    _check_heads_settings(steps, batch_size, block_size)
    chars = course_chars()
    train_ids = torch.tensor(chars.encode(load_corpus("train")))  # (N,)
    val_ids = torch.tensor(chars.encode(load_corpus("val")))  # (N_val,)
    T = block_size
    x_val, y_val = batches(val_ids, 8, T, torch.Generator().manual_seed(seed + 4243))  # (8, T) x 2

    with torch_threads(threads):
        torch.manual_seed(seed)
        model = TinyDecoder(ModelConfig(vocab_size=chars.vocab_size, d_model=64, n_heads=4, n_layers=2,
                                        max_seq_len=T, positions=positions, kernels="fused"))
        scores_init, val_init = _scores_and_loss(model, x_val, y_val)
        train(model, train_ids, val_ids, steps=steps, batch_size=batch_size, block_size=T, lr=lr, seed=seed,
              progress=False, threads=threads, eval_every=steps, eval_batches=2)
        scores, val_trained = _scores_and_loss(model, x_val, y_val)
        model.eval()
        with torch.no_grad():
            _, weights = model(x_val, return_weights=True)  # n_layers x (8, H, T, T)
    offsets, distance, argmax_prev = _reading_habits(weights)
    best = int(scores.flatten().argmax())
    layer, head = divmod(best, scores.shape[1])
    others = torch.cat([scores.flatten()[:best], scores.flatten()[best + 1:]])
    return {"prev_init": scores_init.max().item(), "prev_trained": scores[layer, head].item(),
            "best_layer": float(layer), "best_head": float(head), "others_trained": others.mean().item(),
            "uniform": sum(1 / (t + 1) for t in range(1, T)) / (T - 1),
            "val_init": val_init, "val_trained": val_trained, "scores": scores, "offsets": offsets,
            "nearest_distance": distance.min().item(), "farthest_distance": distance.max().item(),
            "argmax_prev": argmax_prev, "top_is_previous": argmax_prev[layer, head].item(),
            "distance": distance, "uniform_distance": sum(i / 2 for i in range(8, T)) / (T - 8)}
