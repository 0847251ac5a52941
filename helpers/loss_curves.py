"""Chapter 08, exercise 7: the loss curves of planted training faults, read by the learner.

One recipe, the healthy run, and four runs that each change one thing in it:

    healthy        a 16-layer Post-LN TinyDecoder (d_model 32, 4 heads, RoPE, tied embedding) on the course's
                   Markov language (26 letters, chapter 00), the course's loop (helpers.training.train: AdamW
                   betas (0.9, 0.999), clipping at 1, cosine decay), 100 steps of 16 x 32 tokens, peak lr 2e-2
                   reached by a 70-step linear warm-up: chapter 04's warm-up set-up with RoPE positions
    lr_too_high    peak lr 3.0 instead of 2e-2 (the same warm-up)
    no_warmup      no warm-up: the peak lr from the first step (chapter 04: a deep Post-LN stack needs one)
    mask_leak      the causal mask left out (ModelConfig(causal=False)): each position sees the token it predicts
    frozen_layers  the optimizer updates the token embedding only (tied to the head); the 16 blocks stay at
                   their initialization

What each shows (final validation loss, nats per token; the floor is the language's entropy rate, 1.23,
and ln 26 = 3.26 the loss of a model that knows nothing; seed 0): healthy falls towards the floor
(1.49); mask_leak falls below the floor (0.46), which no honest model can do; frozen_layers stops on a
flat plateau above the healthy run (2.15); no_warmup reaches the letter frequencies' entropy (2.78) in
its first steps and stays there (it ends at 2.83); lr_too_high climbs far above ln 26 (to
over 100 nats in training) and ends at 4.2 as the cosine schedule lowers the rate.

Why 16 layers: with 12 (chapter 04's depth) and RoPE, the run without warm-up trained as well as the
healthy one on seed 3 of seeds 0-3 (1.67 nats); with 16 it failed (2.73-2.87) and the healthy run
trained (1.39-1.70) on each of seeds 0-5. A peak lr of 3e-2 broke the healthy run too (seeds 0-3).

`python tools/loss_curves.py` trains the five runs (about 25 CPU-seconds at one thread) and writes
CURVES_FILE (per-step training losses, validation losses, a few KB); the exercise only loads it.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import torch

from .blocks import ModelConfig, TinyDecoder
from .corpus import markov_chain
from .shapes import require_positive_int
from .training import train

__all__ = ["CURVES_FILE", "FAULTS", "LABELS", "ORDER_SEED", "fault_runs", "labelled_curves", "load_curves",
           "true_labels"]

# The exercise's vocabulary: the learner names each curve with one of these.
FAULTS = ("healthy", "lr_too_high", "no_warmup", "mask_leak", "frozen_layers")
LABELS = ("A", "B", "C", "D", "E")
ORDER_SEED = 8  # the fixed shuffle that puts the five runs behind the labels A-E
CURVES_FILE = Path(__file__).parent / "checkpoints" / "loss_curves.json"

SETUP = {"n_layers": 16, "d_model": 32, "n_heads": 4, "positions": "rope", "norm_placement": "post", "steps": 100,
         "warmup": 70, "lr": 2e-2, "batch_size": 16, "block_size": 32, "n_states": 26, "sharpness": 3.0}
CHANGES = {"healthy": {}, "lr_too_high": {"lr": 3.0}, "no_warmup": {"warmup": 0}, "mask_leak": {"causal": False},
           "frozen_layers": {"frozen": True}}


def fault_runs(seed: int = 0, faults=FAULTS) -> dict:
    """Train the healthy recipe and its faulty variants (SETUP, CHANGES) from `seed`.

    Returns plain lists and floats: {"entropy_rate", "uniform" (ln V), "unigram" (the letters'
    entropy), "seed", "runs": {fault: {"train_loss": [per step], "val_steps": [...], "val_loss": [...]}}}.
    Every run starts from the same weights and sees the same batches. Cost: about 5 CPU-seconds per
    run at one thread.
    """
    fn = "fault_runs"
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"{fn}: seed must be an int; got {type(seed).__name__}")
    faults = tuple(faults)
    if not faults or any(f not in FAULTS for f in faults):
        raise ValueError(f"{fn}: faults must be a non-empty subset of {FAULTS}; got {faults!r}")
    s = SETUP
    require_positive_int(fn, "steps", s["steps"])
    chain = markov_chain(n_states=s["n_states"], seed=0, sharpness=s["sharpness"])
    encode = {c: i for i, c in enumerate(chain.alphabet)}
    train_ids = torch.tensor([encode[c] for c in chain.sample(30_000, seed=2 * seed)])  # (N,)
    val_ids = torch.tensor([encode[c] for c in chain.sample(5_000, seed=2 * seed + 1)])  # (N_val,)
    out: dict = {"entropy_rate": chain.entropy_rate(), "uniform": math.log(s["n_states"]),
                 "unigram": chain.unigram_entropy(), "seed": seed, "runs": {}}
    for fault in faults:
        change = {**s, "causal": True, "frozen": False, **CHANGES[fault]}
        with torch.random.fork_rng(devices=[]):  # leave the caller's global generator alone
            torch.manual_seed(seed)
            model = TinyDecoder(ModelConfig(
                vocab_size=s["n_states"], d_model=s["d_model"], n_heads=s["n_heads"], n_layers=s["n_layers"],
                max_seq_len=s["block_size"], norm_placement=s["norm_placement"], positions=s["positions"],
                causal=change["causal"], kernels="fused"))
        if change["frozen"]:
            for p in model.blocks.parameters():  # the optimizer (which skips frozen tensors) sees the embedding only
                p.requires_grad_(False)
        history = train(model, train_ids, val_ids, steps=s["steps"], batch_size=s["batch_size"],
                        block_size=s["block_size"], lr=change["lr"], warmup=change["warmup"], betas=(0.9, 0.999),
                        eval_every=10, eval_batches=4, seed=seed, progress=False, device="cpu", threads=1)
        out["runs"][fault] = {"train_loss": list(history.train_loss), "val_steps": list(history.val_steps),
                              "val_loss": list(history.val_loss)}
    return out


def load_curves(path: Path | str = CURVES_FILE) -> dict:
    """What `python tools/loss_curves.py` saved: fault_runs's dict, losses rounded to 3 decimals."""
    return json.loads(Path(path).read_text())


def true_labels(order_seed: int = ORDER_SEED) -> dict[str, str]:
    """{label: fault}: FAULTS shuffled by `order_seed` and put behind A-E (the exercise's answer key)."""
    order = list(FAULTS)
    random.Random(order_seed).shuffle(order)
    return dict(zip(LABELS, order))


def labelled_curves(data: dict | None = None, order_seed: int = ORDER_SEED) -> dict:
    """The curves the learner reads: {"curves": {label: run}, "entropy_rate", "uniform", "unigram"},
    the runs behind A-E in the order of `true_labels(order_seed)` (no fault names)."""
    data = load_curves() if data is None else data
    key = true_labels(order_seed)
    return {"curves": {label: data["runs"][fault] for label, fault in key.items()},
            **{name: data[name] for name in ("entropy_rate", "uniform", "unigram")}}
