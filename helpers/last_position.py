"""Chapter 00, section 1's common mistake, run: training on `logits[:, -1]` throws away T - 1 of T predictions.

    run = last_position_experiment(seed=0)       # plain floats: losses of the right and the wrong run

A module of its own (not helpers.overview) because it trains; chapter 00's notebook and its test
import it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .blocks import ModelConfig, TinyDecoder
from .corpus import load_corpus
from .shapes import require_positive_int
from .threads import torch_threads
from .tokenizers import course_chars
from .training import adamw, batches, token_loss

__all__ = ["last_position_experiment"]


def last_position_experiment(seed: int = 0, steps: int = 150, *, block_size: int = 32, batch_size: int = 16,
                             d_model: int = 48, lr: float = 3e-3, threads: int = 1) -> dict[str, float]:
    """Train one tiny decoder twice on the course corpus (characters): once with the next-token loss
    at every position, once with the loss at the last position only (`logits[:, -1]` against the
    last target, the mistake). Same initialization, same batches, same optimizer, same number of
    forward and backward passes: only the loss differs.

    Returns plain floats: the targets scored per step by each ("targets_full" = B T, "targets_last"
    = B), the validation loss at initialization ("val_init", about ln V), and after training for each
    run, both averaged over every position of a validation window ("val_full", "val_last") and at the
    last position alone ("last_pos_full", "last_pos_last"), all in nats; "uniform" = ln V.

    What it shows: with the same compute, the last-position run gets 1/T of the training signal and
    ends far above the full run, even on the one position it was trained on.
    Cost: about 3 CPU-s for the defaults (2 x 150 steps of a 2-layer, d_model 48 model, T 32), run on
    `threads` torch threads (1: faster for a model this small; the caller's setting is restored).
    Deterministic for a seed and a thread count.
    """

    with torch_threads(threads):
        return _last_position_runs(seed, steps, block_size, batch_size, d_model, lr)


def _last_position_runs(seed: int, steps: int, block_size: int, batch_size: int, d_model: int,
                        lr: float) -> dict[str, float]:

    fn = "last_position_experiment"
    for name, value in (("steps", steps), ("block_size", block_size), ("batch_size", batch_size),
                        ("d_model", d_model)):
        require_positive_int(fn, name, value)
    chars = course_chars()
    train_ids = torch.tensor(chars.encode(load_corpus("train")))  # (N,)
    val_ids = torch.tensor(chars.encode(load_corpus("val")))  # (N_val,)
    config = ModelConfig(vocab_size=chars.vocab_size, d_model=d_model, n_heads=4, n_layers=2,
                         max_seq_len=block_size, kernels="fused")
    val_gen = torch.Generator().manual_seed(seed + 7919)
    val_set = [batches(val_ids, 64, block_size, val_gen) for _ in range(4)]  # 4 x (64, T) windows, fixed

    def evaluate(model: nn.Module) -> tuple[float, float]:
        with torch.no_grad():
            logits = [(model(x), y) for x, y in val_set]  # (64, T, V), (64, T)
            every = sum(token_loss(z, y).item() for z, y in logits) / len(logits)
            last = sum(token_loss(z[:, -1:], y[:, -1:]).item() for z, y in logits) / len(logits)
        return every, last

    out: dict[str, float] = {"uniform": math.log(chars.vocab_size),
                             "targets_full": float(batch_size * block_size), "targets_last": float(batch_size)}
    for name in ("full", "last"):
        torch.manual_seed(seed)
        model = TinyDecoder(config).eval()
        if name == "full":
            out["val_init"] = evaluate(model)[0]
        optimizer = adamw(model, lr)
        gen = torch.Generator().manual_seed(seed)  # the same batches for both runs
        model.train()
        for _ in range(steps):
            x, y = batches(train_ids, batch_size, block_size, gen)  # (B, T), (B, T)
            logits = model(x)  # (B, T, V): T predictions per window, whichever loss reads them
            if name == "full":
                loss = token_loss(logits, y)  # all B T targets
            else:
                loss = token_loss(logits[:, -1:], y[:, -1:])  # the mistake: B targets, T - 1 of T thrown away
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        model.eval()
        out[f"val_{name}"], out[f"last_pos_{name}"] = evaluate(model)
    return out
