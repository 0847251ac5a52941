"""Chapter 06, section 7: length extrapolation measured. One tiny decoder of the shared model per
position method and seed is trained on short windows and read on windows eight times longer; the
loss per position range shows which methods hold past the training length (ALiBi) and which do not
(RoPE, learned and sinusoidal positions), and what position interpolation and the NTK-aware base
recover. The formulas of the methods themselves are in helpers.positions; this module trains.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch
from torch import nn

from .blocks import ModelConfig, TinyDecoder
from .corpus import load_corpus
from .shapes import require_positive_int
from .tokenizers import course_chars
from .training import train

__all__ = ["LENGTH_METHODS", "ROPE_VARIANTS", "length_experiment", "length_ranges"]

LENGTH_METHODS = ("none", "learned", "sinusoidal", "sinusoidal-x1", "rope", "alibi", "relative")
ROPE_VARIANTS = ("rope-pi", "rope-ntk", "rope-pi-tuned", "rope-tuned")


def length_ranges(train_len: int, eval_len: int) -> list[tuple[int, int]]:
    """[0, L), [L, 2L), [2L, 4L), ... up to eval_len: the ranges of positions the experiment reports."""
    ranges, start, stop = [], 0, train_len
    while start < eval_len:
        ranges.append((start, min(stop, eval_len)))
        start, stop = stop, 2 * stop
    return ranges


def _checked_methods_and_seeds(methods, seeds, **sizes: int) -> tuple[tuple[str, ...], tuple]:
    """length_experiment's methods (one name or several) and seeds as tuples, each bad argument refused
    by name; `sizes` are the positive ints train_len, eval_len, steps, ..."""
    fn = "length_experiment"
    if isinstance(methods, str):
        methods = (methods,)
    methods = tuple(methods)
    known = LENGTH_METHODS + ROPE_VARIANTS
    for method in methods:
        if method not in known:
            raise ValueError(f"{fn}: unknown method {method!r}; choose from {known}")
    for name, value in sizes.items():
        require_positive_int(fn, name, value)
    train_len, eval_len = sizes["train_len"], sizes["eval_len"]
    if eval_len <= 2 * train_len:
        raise ValueError(f"{fn}: eval_len = {eval_len} must exceed 2 * train_len = {2 * train_len}: the rise is "
                         f"measured on positions [2 train_len, eval_len)")
    seeds = tuple(seeds)
    if not seeds:
        raise ValueError(f"{fn}: give at least one seed")
    return methods, seeds


@dataclass
class _LengthRun:
    """What every model of one length experiment shares: the character data, the evaluation windows
    and the training settings."""

    vocab_size: int
    train_ids: torch.Tensor  # (N_train,)
    val_ids: torch.Tensor  # (N_val,)
    windows: torch.Tensor  # (W, eval_len + 1)
    device: torch.device
    steps: int
    train_len: int
    batch_size: int

    @classmethod
    def load(cls, eval_len: int, eval_windows: int, device: torch.device, **settings: int) -> _LengthRun:
        """The course's corpus as characters; eval_windows validation windows of eval_len + 1 (seed 1)."""
        chars = course_chars()
        train_ids = torch.tensor(chars.encode(load_corpus("train")), device=device)  # (N_train,)
        val_ids = torch.tensor(chars.encode(load_corpus("val")), device=device)  # (N_val,)
        starts = torch.randint(0, len(val_ids) - eval_len - 1, (eval_windows,),
                               generator=torch.Generator().manual_seed(1))
        windows = torch.stack([val_ids[s:s + eval_len + 1] for s in starts.tolist()])  # (W, eval_len + 1)
        return cls(chars.vocab_size, train_ids, val_ids, windows, device, **settings)

    @property
    def eval_len(self) -> int:
        return self.windows.shape[1] - 1

    def fit(self, config: ModelConfig, seed: int, *, init: dict | None = None, n: int | None = None,
            length: int | None = None, batch: int | None = None, lr: float = 3e-3) -> TinyDecoder:
        """A model of `config` initialized with `seed` (or loaded from `init`), trained with `train` on
        n batches (default: steps) of `batch` windows (default: batch_size) of `length` (default: train_len)."""
        n = self.steps if n is None else n
        length = self.train_len if length is None else length
        batch = self.batch_size if batch is None else batch
        torch.manual_seed(seed)
        model = TinyDecoder(config).to(self.device)
        if init is not None:
            model.load_state_dict(init)
        train(model, self.train_ids, self.val_ids, steps=n, batch_size=batch, block_size=length, lr=lr,
              eval_every=n, eval_batches=1, seed=seed, progress=False,
              threads=1 if self.device.type == "cpu" else None)
        return model

    @torch.no_grad()
    def per_position(self, model: nn.Module) -> torch.Tensor:
        """The model's mean next-character loss at each position of the evaluation windows: (eval_len,)."""
        model.eval()
        logits = model(self.windows[:, :-1])  # (W, eval_len, V)
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), self.windows[:, 1:],
                                                 reduction="none")  # (W, eval_len)
        return loss.mean(dim=0).double().cpu()  # (eval_len,)


def _position_config(base: ModelConfig, method: str, sinusoidal_scale: float) -> ModelConfig:
    """The model of a trained method: its positions, and the sinusoidal table's scale."""
    if method == "sinusoidal-x1":
        return replace(base, positions="sinusoidal", sinusoidal_scale=1.0)
    if method == "sinusoidal":
        return replace(base, positions="sinusoidal", sinusoidal_scale=sinusoidal_scale)
    return replace(base, positions=method)


def _rope_variant(run: _LengthRun, method: str, rope_config: ModelConfig, rope_state: dict, seed: int, *,
                  tune_steps: int) -> TinyDecoder:
    """The trained rope model read at eval_len another way (ROPE_VARIANTS): interpolated positions, the
    NTK-aware base, or a short training at eval_len with or without interpolation."""
    s = run.eval_len / run.train_len
    if method == "rope-pi":
        model = TinyDecoder(replace(rope_config, rope_scale=s)).to(run.device)
        model.load_state_dict(rope_state)
    elif method == "rope-ntk":
        d_head = rope_config.d_head
        model = TinyDecoder(replace(rope_config, rope_base=rope_config.rope_base * s ** (d_head / (d_head - 2))))
        model = model.to(run.device)
        model.load_state_dict(rope_state)
    else:  # a short training at eval_len, with or without interpolation
        scale = s if method == "rope-pi-tuned" else 1.0
        model = run.fit(replace(rope_config, rope_scale=scale), seed + 100, init=rope_state, n=tune_steps,
                        length=run.eval_len, batch=max(1, run.batch_size // 2), lr=1e-3)
    return model


def _curves_of_one_seed(run: _LengthRun, methods: tuple[str, ...], seed: int, base_config: ModelConfig, *,
                        sinusoidal_scale: float, tune_steps: int) -> dict[str, torch.Tensor]:
    """{method: per-position loss (eval_len,)} of one seed: the trained methods first, then the rope
    variants, which start from the rope model (trained here if "rope" is not among the methods)."""
    curves = {}
    rope_state = None
    for method in methods:
        if method in ROPE_VARIANTS:
            continue
        model = run.fit(_position_config(base_config, method, sinusoidal_scale), seed)
        curves[method] = run.per_position(model)
        if method == "rope":
            rope_state = {k: v.clone() for k, v in model.state_dict().items()}
    variants = [m for m in methods if m in ROPE_VARIANTS]
    if variants:
        rope_config = replace(base_config, positions="rope")
        if rope_state is None:
            rope_state = run.fit(rope_config, seed).state_dict()
        for method in variants:
            curves[method] = run.per_position(_rope_variant(run, method, rope_config, rope_state, seed,
                                                            tune_steps=tune_steps))
    return curves


def _summary(curves: dict[int, torch.Tensor], seeds: tuple, train_len: int, eval_len: int) -> dict:
    """One method's entry of the result from its per-position curves by seed: losses per range and
    seed, their means over seeds, the rise and the mean curve."""
    ranges = length_ranges(train_len, eval_len)
    labels = [f"{a}-{b}" for a, b in ranges]
    by_seed = {seed: {label: float(curves[seed][a:b].mean()) for label, (a, b) in zip(labels, ranges)}
               for seed in seeds}
    rise_by_seed = {seed: float(curves[seed][2 * train_len:].mean() - curves[seed][:train_len].mean())
                    for seed in seeds}
    mean_curve = torch.stack([curves[seed] for seed in seeds]).mean(dim=0)  # (eval_len,)
    return {
        "ranges": {label: sum(by_seed[seed][label] for seed in seeds) / len(seeds) for label in labels},
        "by_seed": by_seed,
        "rise": sum(rise_by_seed.values()) / len(seeds),
        "rise_by_seed": rise_by_seed,
        "curve": mean_curve.tolist(),
    }


def length_experiment(methods=LENGTH_METHODS, *, seeds=(0, 1), train_len: int = 32, eval_len: int = 256,
                      steps: int = 300, batch_size: int = 16, d_model: int = 64, n_heads: int = 4,
                      n_layers: int = 2, sinusoidal_scale: float = 0.03, tune_steps: int = 20,
                      eval_windows: int = 32, device: torch.device | str | None = None) -> dict[str, dict]:
    """Train one tiny decoder per position method on windows of train_len characters; read eval_len.

    What it shows (Press et al. 2022's result in miniature): past about twice the training length the
    loss of RoPE, of learned positions (a table of eval_len rows, only the first train_len ever
    trained) and of sinusoidal positions rises, while ALiBi's stays flat. Methods:

        none, learned, sinusoidal, rope, alibi, relative   ModelConfig(positions=...)
        sinusoidal-x1      the 2017 table at its full +-1 scale beside embeddings of std 0.02: the
                           mistake (it swamps the tokens); "sinusoidal" multiplies it by sinusoidal_scale
        rope-pi            the rope model read with positions p * train_len / eval_len (rope_scale),
                           no further training
        rope-ntk           the rope model read with the NTK-aware base 10000 * s^(d/(d-2)), s = eval_len / L
        rope-pi-tuned      rope-pi after tune_steps of training at eval_len (Chen et al.'s recipe)
        rope-tuned         the control: the rope model trained the same tune_steps at eval_len, plain RoPE

    Every model: the course's character tokenizer and corpus, d_model, n_heads, n_layers, AdamW
    (helpers.training.train, one thread on a CPU), `steps` batches of batch_size windows of
    train_len, the same seed for its initialization and its batches; evaluated on the same
    eval_windows validation windows of eval_len characters (drawn with seed 1).

    Returns {method: {"ranges": {"0-32": loss, ...}, "by_seed": {seed: {"0-32": loss, ...}},
    "rise": float, "rise_by_seed": {seed: float}, "curve": [loss at each position]}}: mean
    next-character losses in nats over the positions of each range (length_ranges) and seed, their
    mean over seeds, and rise = the loss on positions [2 train_len, eval_len) minus the loss on
    [0, train_len). Plus "_cost": {"cpu_seconds": process CPU time of the whole call}.
    Deterministic for the same seeds and thread count. Cost: about 3 CPU-seconds per trained model
    and seed at the defaults (one thread), the rope variants about 1 s more each ("-tuned").
    """
    methods, seeds = _checked_methods_and_seeds(methods, seeds, train_len=train_len, eval_len=eval_len, steps=steps,
                                                batch_size=batch_size, eval_windows=eval_windows,
                                                tune_steps=tune_steps)
    device = torch.device("cpu") if device is None else torch.device(device)

    cpu_start = time.process_time()
    run = _LengthRun.load(eval_len, eval_windows, device, steps=steps, train_len=train_len, batch_size=batch_size)
    base_config = ModelConfig(vocab_size=run.vocab_size, d_model=d_model, n_heads=n_heads, n_layers=n_layers,
                              max_seq_len=eval_len, kernels="fused")
    curves: dict[str, dict[int, torch.Tensor]] = {m: {} for m in methods}
    for seed in seeds:
        found = _curves_of_one_seed(run, methods, seed, base_config, sinusoidal_scale=sinusoidal_scale,
                                    tune_steps=tune_steps)
        for method, curve in found.items():
            curves[method][seed] = curve
    result: dict[str, dict] = {method: _summary(curves[method], seeds, train_len, eval_len) for method in methods}
    result["_cost"] = {"cpu_seconds": time.process_time() - cpu_start}
    return result
