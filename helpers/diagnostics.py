"""Chapter 09: diagnostics that find what a transformer gets wrong without raising an exception.

    shape_report(model, ids)                 every tensor of block 0 against chapter 00's shape map
    influence_by_perturbation(f, ids, V)     (T, T) bool: output i moved when token j was changed
    influence_by_gradient(f, block, ids)     (T, T): |d output_i / d stream_j| through the first block
    leak_test(model, ids)                    the (query, key) pairs that see what their mask forbids
    attention_entropy(weights)               nats per query, -sum_k p ln p (0 ln 0 = 0)
    entropy_table(model, ids)                (L, H) mean entropy per layer and head
    residual_stream(model, ids)              (L + 1, B, T, d_model): the stream before and after each block
    stream_norms(stream), update_ratios(stream)
    previous_token_score, induction_score    what a head does, scored from its weights
    run_ablation(configs, ...)               train several configs with chapter 08's loop: a table
    ablation_verdicts(losses, z)             (C, S) losses, the baseline first: changes, noise, verdicts

A leak is a pair (i, j) where output i changes when token j changes although the mask says query
i may not see key j (j > i in a decoder). Two ways to find it: change token j and compare the
outputs (perturbation), or take the gradient of output i with respect to the residual stream at
position j (gradient). Both must be compared with a tolerance, never with exact equality: a
recomputation may round differently.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .attention import causal_mask
from .baselines import split_loss
from .blocks import ModelConfig, build_model
from .corpus import load_corpus
from .numerics import tolerances
from .overview import measure_shapes, shape_map
from .shapes import ShapeError, fmt_shape, require_float, require_positive_int, require_tensor
from .threads import torch_threads
from .tokenizers import course_chars
from .training import adamw, batches, lr_at, param_count, train, train_step

__all__ = [
    "AblationRow",
    "LeakReport",
    "ShapeReport",
    "ablated_heads",
    "ablation_summary",
    "ablation_table",
    "ablation_verdicts",
    "attention_entropy",
    "causal_max_entropy",
    "entropy_table",
    "head_entropy",
    "copy_losses",
    "head_ablations",
    "head_scores",
    "induction_experiment",
    "induction_probe",
    "induction_score",
    "influence_by_gradient",
    "influence_by_perturbation",
    "leak_test",
    "load_induction_runs",
    "leaking_pairs",
    "max_entropy",
    "moved_positions",
    "previous_token_score",
    "per_position_loss",
    "repeated_chunk_batch",
    "repeated_letters",
    "repeated_random_tokens",
    "repeated_text",
    "uniform_scores",
    "residual_stream",
    "run_ablation",
    "shape_report",
    "split_loss",
    "stream_norms",
    "summary_table",
    "update_ratios",
]


# ---------------------------------------------------------------------------------------------
# 1. Shape checks
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapeReport:
    rows: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]  # (name, planned, measured)

    @property
    def first_mismatch(self) -> str | None:
        """The first tensor (in the order of the forward pass) whose shape differs from the plan."""
        return next((name for name, planned, got in self.rows if planned != got), None)

    def __str__(self) -> str:
        lines = [f"{'tensor':<11} {'planned':<18} {'measured':<18}"]
        for name, planned, got in self.rows:
            lines.append(f"{name:<11} {fmt_shape(planned):<18} {fmt_shape(got):<18}"
                         f"{'' if planned == got else '  <- differs'}")
        return "\n".join(lines)


def shape_report(model: nn.Module, ids: torch.Tensor, **plan: int) -> ShapeReport:
    """Measure block 0's tensors (chapter 00's measure_shapes) against the shape map of the plan.

    plan: the sizes you meant (d_model, n_heads, d_ff, vocab); each defaults to the model's config.
    """
    config = model.config
    require_tensor("shape_report", "ids", ids)
    if ids.dim() != 2:
        raise ShapeError(f"shape_report: ids must be (B, T); got {fmt_shape(ids.shape)}")
    sizes = {"d_model": config.d_model, "n_heads": config.n_heads, "d_ff": config.ffn_width,
             "vocab": config.vocab_size}
    unknown = set(plan) - set(sizes)
    if unknown:
        raise TypeError(f"shape_report: plan takes {sorted(sizes)}; got {sorted(unknown)}")
    sizes.update(plan)
    planned = shape_map(ids.shape[0], ids.shape[1], **sizes)
    measured = measure_shapes(model, ids)
    return ShapeReport(tuple((name, tuple(shape), tuple(measured[name])) for name, shape in planned.items()))


# ---------------------------------------------------------------------------------------------
# 2. Mask tests: perturbation and gradient
# ---------------------------------------------------------------------------------------------


def moved_positions(out: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """(B, T, ...) twice -> (T,) bool: position t moved (in any sequence) beyond the course's tolerance.

    The tolerance grows with the size of the outputs (atol scales with max |base|), so rounding
    noise of a recomputation is not read as a change.
    """
    if out.shape != base.shape:
        raise ShapeError(f"moved_positions: out {fmt_shape(out.shape)} and base {fmt_shape(base.shape)} differ")
    tol = tolerances(base.dtype, n=max(base.shape[-1], 1), scale=float(base.abs().max()) if base.numel() else 1.0)
    diff = (out - base).abs() > tol["atol"] + tol["rtol"] * base.abs()  # (B, T, ...)
    return diff.flatten(2).any(-1).any(0) if diff.dim() > 2 else diff.any(0)  # (T,)


def influence_by_perturbation(f: Callable[[torch.Tensor], torch.Tensor], ids: torch.Tensor,
                              vocab_size: int) -> torch.Tensor:
    """moved (T, T) bool: moved[i, j] is True when f's output at position i changes as token j changes.

    f maps ids (B, T) to outputs (B, T, ...). Token j of every sequence is replaced by (id + 1) mod V,
    one position at a time, and every output position is compared with the unperturbed one.
    """
    fn = "influence_by_perturbation"
    require_tensor(fn, "ids", ids)
    if ids.dim() != 2 or ids.is_floating_point():
        raise ShapeError(f"{fn}: ids must be integer ids (B, T); got {fmt_shape(ids.shape)} of dtype {ids.dtype}")
    require_positive_int(fn, "vocab_size", vocab_size)
    T = ids.shape[1]
    with torch.no_grad():
        base = f(ids)  # (B, T, ...)
        moved = torch.zeros(T, T, dtype=torch.bool)
        for j in range(T):
            changed = ids.clone()
            changed[:, j] = (ids[:, j] + 1) % vocab_size  # (B, T): token j replaced
            moved[:, j] = moved_positions(f(changed), base)  # (T,): which outputs moved
    return moved


def influence_by_gradient(f: Callable[[torch.Tensor], torch.Tensor], block: nn.Module,
                          ids: torch.Tensor) -> torch.Tensor:
    """grad (T, T) float: grad[i, j] = || d sum(output_i) / d x_j ||, x the stream entering `block`.

    A zero tensor delta (B, T, d_model) that requires grad is added to block's input by a forward
    pre-hook, so the gradient with respect to delta is the gradient with respect to the stream.
    One backward pass per output position i.
    """
    fn = "influence_by_gradient"
    require_tensor(fn, "ids", ids)
    holder: dict[str, torch.Tensor] = {}

    def add_delta(module, args, kwargs):
        x = args[0]
        delta = torch.zeros_like(x, requires_grad=True)  # (B, T, d_model)
        holder["delta"] = delta
        return (x + delta, *args[1:]), kwargs

    handle = block.register_forward_pre_hook(add_delta, with_kwargs=True)
    try:
        with torch.enable_grad():
            out = f(ids)  # (B, T, ...)
            delta = holder["delta"]
            T = out.shape[1]
            grad = torch.zeros(T, T, dtype=out.dtype)
            for i in range(T):
                (g,) = torch.autograd.grad(out[:, i].sum(), delta, retain_graph=i < T - 1, allow_unused=True)
                if g is not None:
                    grad[i] = g.detach().transpose(0, 1).flatten(1).norm(dim=-1)  # (T,): one norm per key j
    finally:
        handle.remove()
    return grad


def leaking_pairs(influence: torch.Tensor, allowed: torch.Tensor) -> list[tuple[int, int]]:
    """The (query i, key j) pairs with influence where the mask allows none, in row-major order."""
    moved = influence if influence.dtype == torch.bool else influence > 0
    return [(int(i), int(j)) for i, j in (moved & ~allowed).nonzero()]


@dataclass(frozen=True)
class LeakReport:
    method: str
    influence: torch.Tensor  # (T, T): bool (perturbation) or gradient norms
    allowed: torch.Tensor  # (T, T) bool: what the model's mask allows
    pairs: tuple[tuple[int, int], ...]  # (query, key) pairs that leak

    @property
    def leaks(self) -> bool:
        return bool(self.pairs)


def _probe(model: nn.Module, src_ids: torch.Tensor | None):
    """(f, first block, causal?) for each model kind: what to perturb and where the stream enters."""
    kind = getattr(getattr(model, "config", None), "kind", "decoder")
    if kind == "encoder-decoder":
        if src_ids is None:
            raise ValueError("leak_test: an encoder-decoder needs src_ids (the source the decoder reads)")
        return (lambda tgt: model(src_ids, tgt)), model.decoder[0], True
    return (lambda ids: model(ids)), model.blocks[0], kind == "decoder"


def leak_test(model: nn.Module, ids: torch.Tensor, *, method: str = "perturbation",
              src_ids: torch.Tensor | None = None) -> LeakReport:
    """Which (query, key) pairs see what their mask forbids, for a decoder, encoder or encoder-decoder.

    A decoder (and an encoder-decoder's decoder, perturbed through its target ids) must allow key
    j <= i only, whatever its config says (a decoder built with causal=False is the leak this
    finds); an encoder allows every pair, so it can never leak here.
    """
    if method not in ("perturbation", "gradient"):
        raise ValueError(f"leak_test: method must be 'perturbation' or 'gradient'; got {method!r}")
    f, block, causal = _probe(model, src_ids)
    T = ids.shape[1]
    allowed = causal_mask(T) if causal else torch.ones(T, T, dtype=torch.bool)
    if method == "perturbation":
        influence = influence_by_perturbation(f, ids, model.config.vocab_size)
        pairs = leaking_pairs(influence, allowed)
    else:
        influence = influence_by_gradient(f, block, ids)
        scale = float(influence.max()) if influence.numel() else 1.0
        tol = tolerances(influence.dtype, n=model.config.d_model, scale=scale)["atol"]
        pairs = leaking_pairs(influence > tol, allowed)
    return LeakReport(method, influence, allowed, tuple(pairs))


# ---------------------------------------------------------------------------------------------
# 3. Attention entropy
# ---------------------------------------------------------------------------------------------


def attention_entropy(weights: torch.Tensor) -> torch.Tensor:
    """weights (..., T_q, T_k), rows summing to 1 -> entropy (..., T_q) in nats: -sum_k p ln p, 0 ln 0 = 0."""
    require_float("attention_entropy", "weights", weights, "(..., T_q, T_k)")
    logs = torch.where(weights > 0, weights.log(), torch.zeros((), dtype=weights.dtype))  # (..., T_q, T_k)
    return -(weights * logs).sum(dim=-1)  # (..., T_q)


def head_entropy(weights: torch.Tensor) -> torch.Tensor:
    """weights (B, H, T_q, T_k) -> (H,): each head's entropy in nats, averaged over sequences and queries."""
    if weights.dim() != 4:
        raise ShapeError(f"head_entropy: weights must be (B, H, T_q, T_k); got {fmt_shape(weights.shape)}")
    return attention_entropy(weights).mean(dim=(0, 2))  # (H,)


def max_entropy(T: int) -> float:
    """ln T: the entropy of uniform attention over T keys, the most a row can have."""
    require_positive_int("max_entropy", "T", T)
    return math.log(T)


def causal_max_entropy(T: int) -> torch.Tensor:
    """(T,) float64: under a causal mask query i sees i + 1 keys, so its entropy is at most ln(i + 1)."""
    require_positive_int("causal_max_entropy", "T", T)
    return torch.log(torch.arange(1, T + 1, dtype=torch.float64))  # (T,)


def _weights(model: nn.Module, ids: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        _, weights = model(ids, return_weights=True)  # [(B, H, T, T)] per layer
    if any(w is None for w in weights):
        raise ValueError("the model returned no attention weights (a fused kernel keeps none); build it "
                         "with kernels='course'")
    return weights


def entropy_table(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """(L, H): head_entropy of every layer's attention weights on ids (B, T)."""
    return torch.stack([head_entropy(w) for w in _weights(model, ids)])  # (L, H)


# ---------------------------------------------------------------------------------------------
# 4. Residual-stream norms (chapter 04's measure, per layer)
# ---------------------------------------------------------------------------------------------


def residual_stream(model: nn.Module, ids: torch.Tensor, blocks: nn.ModuleList | None = None,
                    call: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """(L + 1, B, T, d_model): the stream entering the first block, then each block's output.

    Forward hooks record what the blocks really receive and return during call(ids) (default
    model(ids)); blocks defaults to model.blocks (for an encoder-decoder's decoder pass
    model.decoder and call=lambda tgt: model(src_ids, tgt)).
    """
    blocks = model.blocks if blocks is None else blocks
    seen: list[torch.Tensor] = []
    handles = [blocks[0].register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))]
    for block in blocks:
        handles.append(block.register_forward_hook(
            lambda m, a, out: seen.append((out[0] if isinstance(out, tuple) else out).detach())))
    try:
        with torch.no_grad():
            (call or model)(ids)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(seen)  # (L + 1, B, T, d_model)


def stream_norms(stream: torch.Tensor) -> torch.Tensor:
    """(L + 1, B, T, d_model) -> (L + 1,): mean over tokens of ||x_l[b, t, :]||_2 (chapter 04's residual_norms)."""
    require_float("stream_norms", "stream", stream, "(L + 1, B, T, d_model)")
    return stream.norm(dim=-1).mean(dim=(1, 2))  # (L + 1,)


def update_ratios(stream: torch.Tensor) -> torch.Tensor:
    """(L + 1, B, T, d_model) -> (L,): mean over tokens of ||x_{l+1} - x_l|| / ||x_l||, per token.

    How much block l changes each token's vector, relative to what it received: small (the block
    edits the stream) in a healthy Pre-LN stack; about 1 or more when a block replaces the stream.
    """
    fn = "update_ratios"
    require_float(fn, "stream", stream, "(L + 1, B, T, d_model)")
    if stream.dim() != 4 or stream.shape[0] < 2:
        raise ShapeError(f"{fn}: stream must be (L + 1, B, T, d_model) with L >= 1; got {fmt_shape(stream.shape)}")
    update = (stream[1:] - stream[:-1]).norm(dim=-1)  # (L, B, T): ||x_{l+1} - x_l|| per token
    return (update / stream[:-1].norm(dim=-1)).mean(dim=(1, 2))  # (L,)


# ---------------------------------------------------------------------------------------------
# 5. What heads do
# ---------------------------------------------------------------------------------------------


def _require_weights(fn: str, weights: torch.Tensor) -> None:
    require_float(fn, "weights", weights, "(B, H, T, T)")
    if weights.dim() != 4 or weights.shape[-1] != weights.shape[-2]:
        raise ShapeError(f"{fn}: weights must be (B, H, T, T); got {fmt_shape(weights.shape)}")


def previous_token_score(weights: torch.Tensor) -> torch.Tensor:
    """weights (B, H, T, T) -> (H,): the mean weight query i puts on key i - 1 (queries 1..T-1)."""
    _require_weights("previous_token_score", weights)
    return weights.diagonal(offset=-1, dim1=-2, dim2=-1).mean(dim=(0, 2))  # (B, H, T-1) -> (H,)


def induction_score(weights: torch.Tensor, period: int) -> torch.Tensor:
    """weights (B, H, T, T) on a sequence that repeats with `period` -> (H,).

    An induction head at query i (in the repeat, i >= period) looks at the token that followed the
    previous occurrence of the current token: key i - period + 1. The score is the mean weight there.
    """
    _require_weights("induction_score", weights)
    require_positive_int("induction_score", "period", period)
    T = weights.shape[-1]
    if T <= period:
        raise ShapeError(f"induction_score: T = {T} must exceed the period {period}")
    return weights.diagonal(offset=-(period - 1), dim1=-2, dim2=-1)[..., 1:].mean(dim=(0, 2))  # (H,)


def repeated_random_tokens(B: int, period: int, vocab_size: int, generator: torch.Generator) -> torch.Tensor:
    """(B, 2 * period): `period` random tokens, then the same tokens again (the induction test's input)."""
    half = torch.randint(0, vocab_size, (B, period), generator=generator)  # (B, period)
    return torch.cat([half, half], dim=1)  # (B, 2 * period)


# ---------------------------------------------------------------------------------------------
# 6. Ablations
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AblationRow:
    name: str
    params: int
    val_loss: float
    seconds: float


def run_ablation(configs: Mapping[str, ModelConfig], train_ids: torch.Tensor, val_ids: torch.Tensor, *,
                 steps: int, batch_size: int, block_size: int, seed: int = 0, whole_split: bool = False,
                 **train_kwargs) -> list[AblationRow]:
    """Train one model per config with chapter 08's `train` (same seed, batches and schedule); one row each.

    Deterministic for a seed: each model is initialised after torch.manual_seed(seed) and sees the
    same batches, so two configs differ only in what the config changes. val_loss is the run's last
    validation loss (train's eval batches, drawn from the seed), or with whole_split=True the loss
    on the whole of val_ids (`split_loss`: the same data for every seed, so seeds differ only by
    training).
    """
    rows = []
    for name, config in configs.items():
        if not isinstance(config, ModelConfig):
            raise TypeError(f"run_ablation: configs[{name!r}] must be a ModelConfig; got {type(config).__name__}")
        torch.manual_seed(seed)
        model = build_model(config)
        start = time.perf_counter()
        history = train(model, train_ids, val_ids, steps=steps, batch_size=batch_size, block_size=block_size,
                        seed=seed, progress=False, **train_kwargs)
        val_loss = split_loss(model, val_ids, block_size=block_size, stride=block_size) if whole_split else history.val_loss[-1]
        rows.append(AblationRow(name, param_count(model), val_loss, time.perf_counter() - start))
    return rows


def ablation_table(rows: list[AblationRow]) -> str:
    """The rows as a plain-text table, in the order run, with the change against the first row."""
    if not rows:
        return "(no runs)"
    base = rows[0].val_loss
    lines = [f"{'config':<22} {'params':>8} {'val loss':>9} {'vs first':>9}"]
    for row in rows:
        lines.append(f"{row.name:<22} {row.params:>8} {row.val_loss:>9.3f} {row.val_loss - base:>+9.3f}")
    return "\n".join(lines)


def ablation_verdicts(losses: torch.Tensor, z: float = 2.0) -> dict:
    """A table of losses (C configs x S seeds, the baseline in row 0) -> what it concludes.

    For config c with losses L(c, s) over seeds s = 1..S, against the first config (the baseline):

        delta_c = mean_s L(c, s) - mean_s L(base, s)
        sigma^2 = mean over configs of the sample variance of L(c, .) across seeds (pooled seed noise)
        se      = sigma * sqrt(2 / S)          (the standard error of a difference of two S-seed means)
        verdict = "worse" if delta_c > z * se, "better" if delta_c < -z * se, else "within noise"

    Returns {"delta": (C,) in the losses' dtype (delta[0] = 0), "se": a 0-d tensor, "verdicts": a list
    of C strings, "baseline" first}. Needs at least two seeds: one seed has no noise estimate.
    """
    require_float("ablation_verdicts", "losses", losses, "(C, S)")
    C, S = losses.shape
    if C < 1 or S < 2:
        raise ShapeError(f"ablation_verdicts: losses must have shape (C, S) with C >= 1 configs and S >= 2 seeds "
                         f"(one seed has no noise estimate); got {fmt_shape(losses.shape)}")
    means = losses.mean(dim=1)  # (C,)
    delta = means - means[0]  # (C,)
    sigma = losses.var(dim=1, unbiased=True).mean().sqrt()  # (): pooled over every config's seeds
    se = sigma * math.sqrt(2 / S)  # ()
    floor = float(z * se)
    verdicts = ["baseline"] + ["worse" if d > floor else "better" if d < -floor else "within noise"
                               for d in delta[1:].tolist()]
    return {"delta": delta, "se": se, "verdicts": verdicts}


def ablation_summary(runs: Mapping[int, list[AblationRow]], *, z: float = 2.0) -> dict:
    """Rows of run_ablation for several seeds (same configs, same order) -> what the table concludes.

    The numbers and verdicts are `ablation_verdicts`' (delta_c against the first config, the pooled
    seed noise sigma, se = sigma * sqrt(2 / S), the verdict at z * se) on the (C, S) table of losses.

    Returns {"configs": {name: {"losses", "mean", "delta", "verdict"}}, "sigma", "se", "noise_floor"
    (= z * se), "seeds"}. Needs at least two seeds: one seed has no noise estimate.
    """
    seeds = sorted(runs)
    if len(seeds) < 2:
        raise ValueError(f"ablation_summary: needs rows of at least 2 seeds to estimate the noise; got {len(seeds)}")
    names = [row.name for row in runs[seeds[0]]]
    for s in seeds[1:]:
        if [row.name for row in runs[s]] != names:
            raise ValueError(f"ablation_summary: seed {s} ran configs {[r.name for r in runs[s]]}, seed "
                             f"{seeds[0]} ran {names}; every seed must run the same configs in the same order")
    losses = torch.tensor([[row.val_loss for row in runs[s]] for s in seeds], dtype=torch.float64).T  # (C, S)
    table = ablation_verdicts(losses, z)
    means = losses.mean(dim=1)  # (C,)
    sigma = float(losses.var(dim=1, unbiased=True).mean().sqrt())
    configs = {}
    for c, name in enumerate(names):
        configs[name] = {"losses": losses[c].tolist(), "mean": float(means[c]), "delta": float(table["delta"][c]),
                         "verdict": table["verdicts"][c]}
    se = float(table["se"])
    return {"configs": configs, "sigma": sigma, "se": se, "noise_floor": z * se, "seeds": seeds}


def summary_table(summary: dict) -> str:
    """ablation_summary's result as a plain-text table: per-seed losses, mean, change, verdict."""
    seeds = summary["seeds"]
    width = max(18, *(len(name) + 1 for name in summary["configs"]))
    lines = [f"{'config':<{width}} " + " ".join(f"{'seed ' + str(s):>7}" for s in seeds)
             + f" {'mean':>7} {'vs base':>8}  verdict (noise floor {summary['noise_floor']:.3f})"]
    for name, row in summary["configs"].items():
        lines.append(f"{name:<{width}} " + " ".join(f"{v:>7.3f}" for v in row["losses"])
                     + f" {row['mean']:>7.3f} {row['delta']:>+8.3f}  {row['verdict']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# 7. Induction heads, formed live
# ---------------------------------------------------------------------------------------------

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def repeated_chunk_batch(ids: torch.Tensor, batch_size: int, block_size: int, generator: torch.Generator, *,
                         repeat_fraction: float = 1.0, periods: tuple[int, int] = (8, 32)
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Training windows where copying pays: x (B, T) and next tokens y (B, T).

    The first round(repeat_fraction * B) windows are a chunk of the text (a random start, a random
    length P in periods[0]..periods[1]) repeated until the window is full: from position P on every
    character is the one P places back, so a model that copies predicts it. The other windows are
    ordinary text (chapter 08's `batches`). repeat_fraction 0 is plain text: the control.
    """
    fn = "repeated_chunk_batch"
    if not 0.0 <= repeat_fraction <= 1.0:
        raise ValueError(f"{fn}: repeat_fraction must lie in [0, 1]; got {repeat_fraction!r}")
    lo, hi = periods
    if not 1 <= lo <= hi <= block_size:
        raise ValueError(f"{fn}: periods must satisfy 1 <= low <= high <= block_size = {block_size}; got {periods}")
    x, y = batches(ids, batch_size, block_size, generator)  # (B, T), (B, T)
    n_repeat = round(repeat_fraction * batch_size)
    if n_repeat:
        lengths = torch.randint(lo, hi + 1, (n_repeat,), generator=generator)  # (n,)
        starts = torch.randint(0, ids.shape[0] - hi, (n_repeat,), generator=generator)  # (n,)
        t = torch.arange(block_size + 1)  # (T + 1,)
        idx = starts[:, None] + t[None, :] % lengths[:, None]  # (n, T + 1): position t copies t mod P
        seq = ids[idx.to(ids.device)]  # (n, T + 1)
        x[:n_repeat], y[:n_repeat] = seq[:, :-1], seq[:, 1:]
    return x, y


def repeated_letters(B: int, period: int, tokenizer, generator: torch.Generator) -> torch.Tensor:
    """(B, 2 * period) ids: `period` random lowercase letters, then the same letters again.

    Common characters, unlike `repeated_random_tokens` over the whole vocabulary: a rare symbol
    costs far more than ln 26 nats even where a model has nothing to copy, which hides the drop.
    """
    letters = torch.tensor(tokenizer.encode(LETTERS))  # (26,)
    half = letters[torch.randint(0, len(LETTERS), (B, period), generator=generator)]  # (B, period)
    return torch.cat([half, half], dim=1)  # (B, 2 * period)


def repeated_text(text_ids: torch.Tensor, B: int, period: int, generator: torch.Generator) -> torch.Tensor:
    """(B, 2 * period) ids: B random `period`-character windows of the text, each followed by itself."""
    starts = torch.randint(0, text_ids.shape[0] - period, (B,), generator=generator)  # (B,)
    half = text_ids[starts[:, None] + torch.arange(period)]  # (B, period)
    return torch.cat([half, half], dim=1)  # (B, 2 * period)


def per_position_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """(B, T) ids -> (T - 1,): the loss of predicting token t + 1 from tokens 0..t, mean over the batch."""
    with torch.no_grad():
        logits = model(ids)  # (B, T, V)
    loss = nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")  # (B, T - 1)
    return loss.mean(dim=0)  # (T - 1,)


def copy_losses(curve: torch.Tensor, period: int) -> tuple[float, float]:
    """Per-position losses (2P - 1,) of a twice-repeated sequence -> (first copy, second copy), nats.

    First copy: predicting tokens 1..P-1 (nothing to copy yet). Second copy: tokens P+1..2P-1, each
    the token P places back. Token P (the first of the repeat) is in neither: nothing announces it.
    """
    if curve.shape != (2 * period - 1,):
        raise ShapeError(f"copy_losses: curve must be (2 * period - 1,) = ({2 * period - 1},); got {fmt_shape(curve.shape)}")
    return float(curve[:period - 1].mean()), float(curve[period:].mean())


@contextmanager
def ablated_heads(model: nn.Module, heads: list[tuple[int, int]]):
    """Zero-ablate heads [(layer, head), ...] inside the block: their output never reaches the stream.

    Head h's output occupies columns h * d_head .. (h + 1) * d_head of the merged heads, which the
    output projection W_O (d_model, d_model) reads through the same columns; zeroing them removes
    exactly that head's contribution, on the course path and on the fused one alike. The weights
    are restored afterwards, also after an error.
    """
    saved = []
    try:
        for layer, h in heads:
            attn = model.blocks[layer].attn
            cols = slice(h * attn.d_head, (h + 1) * attn.d_head)
            saved.append((attn.o_proj.weight, cols, attn.o_proj.weight.data[:, cols].clone()))
            attn.o_proj.weight.data[:, cols] = 0.0
        yield model
    finally:
        for weight, cols, values in saved:
            weight.data[:, cols] = values


def head_scores(model: nn.Module, text: torch.Tensor, repeat: torch.Tensor, period: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, H) previous-token scores on text (B, T) and (L, H) induction scores on repeat (B, 2 * period)."""
    prev = torch.stack([previous_token_score(w) for w in _weights(model, text)])  # (L, H)
    induction = torch.stack([induction_score(w, period) for w in _weights(model, repeat)])  # (L, H)
    return prev, induction


def uniform_scores(T: int, period: int) -> tuple[float, float]:
    """What a head that spreads its weight evenly over the keys it may see scores (query i: 1/(i + 1)).

    Previous-token score over queries 1..T-1 of a text window of T; induction score over queries
    P..2P-1 of a twice-repeated sequence of period P.
    """
    prev = sum(1 / (i + 1) for i in range(1, T)) / (T - 1)
    induction = sum(1 / (i + 1) for i in range(period, 2 * period)) / period
    return prev, induction


def induction_probe(model: nn.Module, *, period: int = 24, batch: int = 32, probe_seed: int = 0) -> dict:
    """Everything the chapter measures on a model, from fixed probe inputs (the same for every model).

    Letters: `batch` sequences of `period` random lowercase letters repeated once (nothing to predict
    in the first copy but "a letter", ln 26 nats; everything in the second). Text: validation text
    windows of `period` characters repeated once. Scores: previous-token on validation text windows
    of 64, induction on the letters. Returns floats and nested lists (per layer, per head).
    """

    tok = course_chars()
    val = torch.tensor(tok.encode(load_corpus("val")))  # (N_val,)
    gen = torch.Generator().manual_seed(probe_seed)
    letters = repeated_letters(batch, period, tok, gen)  # (batch, 2P)
    text_repeat = repeated_text(val, batch, period, gen)  # (batch, 2P)
    starts = torch.randint(0, val.shape[0] - 64, (8,), generator=gen)  # (8,)
    text = val[starts[:, None] + torch.arange(64)]  # (8, 64)
    was_training = model.training
    model.eval()
    try:
        curve = per_position_loss(model, letters)  # (2P - 1,)
        text_curve = per_position_loss(model, text_repeat)  # (2P - 1,)
        prev, induction = head_scores(model, text, letters, period)  # (L, H) x 2
    finally:
        model.train(was_training)
    first, second = copy_losses(curve, period)
    text_first, text_second = copy_losses(text_curve, period)
    prev_uniform, induction_uniform = uniform_scores(64, period)
    return {
        "previous_token_score": float(prev.max()), "induction_score": float(induction.max()),
        "loss_first_copy": first, "loss_second_copy": second,
        "text_loss_first_copy": text_first, "text_loss_second_copy": text_second,
        "previous_token_scores": prev.tolist(), "induction_scores": induction.tolist(),
        "previous_token_head": divmod(int(prev.argmax()), prev.shape[1]),
        "induction_head": divmod(int(induction.argmax()), induction.shape[1]),
        "uniform_previous_token": prev_uniform, "uniform_induction": induction_uniform,
        "loss_letters_no_copying": math.log(len(LETTERS)),
        "per_position_loss": curve.tolist(), "text_per_position_loss": text_curve.tolist(),
        "period": period,
    }


INDUCTION_SETUP = dict(d_model=64, n_heads=4, n_layers=2, block_size=64, batch_size=32, lr=1e-2,
                       warmup=30, steps=1000, periods=(8, 32), repeat_fraction=1.0)


def induction_config(vocab_size: int) -> ModelConfig:
    """The model of the induction experiment: chapter 08's tiny GPT with RoPE, on the fused path."""
    s = INDUCTION_SETUP
    return ModelConfig(vocab_size=vocab_size, d_model=s["d_model"], n_heads=s["n_heads"], n_layers=s["n_layers"],
                       max_seq_len=s["block_size"], positions="rope", kernels="fused")


def head_ablations(model: nn.Module, probe: dict, *, threshold: float = 0.2) -> dict:
    """Zero-ablate heads of a model and measure the letters probe again: what each head is for.

    probe: induction_probe(model)'s result. Three ablations, each a list of (layer, head):
    "induction": every layer-1 head whose induction score is at least `threshold` (seven times a
    uniform head's 0.028 at period 24); "best_induction": the best of them alone; "previous": the
    layer-0 head with the highest previous-token score (the first half of the circuit). Returns, per
    name, ablated_<name>_heads and the probe's ablated_<name>_first_copy, _second_copy and
    _text_second_copy losses.
    """
    induction, prev = probe["induction_scores"], probe["previous_token_scores"]
    layer1 = [(1, h) for h, v in enumerate(induction[1]) if v >= threshold]
    best = [tuple(probe["induction_head"])]
    best_prev = max(range(len(prev[0])), key=prev[0].__getitem__)
    out = {}
    for name, heads in (("induction", layer1 or best), ("best_induction", best), ("previous", [(0, best_prev)])):
        with ablated_heads(model, heads):
            ablated = induction_probe(model, period=probe["period"])
        out[f"ablated_{name}_heads"] = [tuple(h) for h in heads]
        out[f"ablated_{name}_first_copy"] = ablated["loss_first_copy"]
        out[f"ablated_{name}_second_copy"] = ablated["loss_second_copy"]
        out[f"ablated_{name}_text_second_copy"] = ablated["text_loss_second_copy"]
    return out


def _induction_setup(steps: int | None, repeat_fraction: float | None) -> dict:
    """INDUCTION_SETUP with the run's own steps and repeat_fraction where given."""
    s = dict(INDUCTION_SETUP)
    if steps is not None:
        require_positive_int("induction_experiment", "steps", steps)
        s["steps"] = steps
    if repeat_fraction is not None:
        s["repeat_fraction"] = repeat_fraction
    return s


def _record_induction(model: nn.Module, curve: dict[str, list[float]], step: int) -> None:
    """One point of the training curve: the letters probe's first- and second-copy losses and the
    best induction score after `step` updates (a smaller probe batch of 16, to keep it cheap)."""
    probe = induction_probe(model, batch=16)
    curve["curve_steps"].append(step)
    curve["curve_first"].append(probe["loss_first_copy"])
    curve["curve_second"].append(probe["loss_second_copy"])
    curve["curve_induction"].append(probe["induction_score"])


def _train_watching_induction(model: nn.Module, train_ids: torch.Tensor, s: dict, seed: int,
                              eval_every: int) -> tuple[dict[str, list[float]], float]:
    """Train on repeated-chunk batches (set-up s, batches seeded by `seed`), probing every eval_every
    steps and at the end: (the curve, the CPU seconds the probes took)."""
    optimizer = adamw(model, s["lr"])
    gen = torch.Generator().manual_seed(seed)
    curve: dict[str, list[float]] = {"curve_steps": [], "curve_first": [], "curve_second": [],
                                     "curve_induction": []}
    probe_seconds = 0.0
    model.train()
    for step in range(s["steps"]):
        if step % eval_every == 0:
            t0 = time.process_time()
            _record_induction(model, curve, step)
            probe_seconds += time.process_time() - t0
        rate = lr_at(step, lr=s["lr"], steps=s["steps"], warmup=s["warmup"], min_lr=s["lr"] / 10)
        for group in optimizer.param_groups:
            group["lr"] = rate
        x, y = repeated_chunk_batch(train_ids, s["batch_size"], s["block_size"], gen,
                                    repeat_fraction=s["repeat_fraction"], periods=s["periods"])  # (B, T) x 2
        train_step(model, optimizer, x, y)
    _record_induction(model, curve, s["steps"])
    return curve, probe_seconds


def _drop_step(curve: dict[str, list[float]]) -> int:
    """The first evaluated step whose second-copy loss is at most half the first copy's; -1 if none."""
    drops = [st for st, a, b in zip(curve["curve_steps"], curve["curve_first"], curve["curve_second"])
             if b <= a / 2]
    return drops[0] if drops else -1


def induction_experiment(seed: int = 0, steps: int | None = None, *, repeat_fraction: float | None = None,
                         eval_every: int = 50, threads: int = 1) -> dict:
    """Train a 2-layer model on text where copying pays and watch an induction head form.

    What it shows: with windows that repeat a chunk of text (period 8-32), the model forms a
    previous-token head in layer 0 and an induction head in layer 1 within a thousand steps; its loss
    on the second copy of a sequence of random letters falls far below the first copy's (ln 26 is
    the floor without copying), and zero-ablating the induction head brings the second copy's loss
    back up. repeat_fraction=0 trains on plain text (the control): no induction head, no drop.

    Set-up (INDUCTION_SETUP): d_model 64, 4 heads, 2 layers, RoPE, AdamW at lr 1e-2 with 30 warm-up
    steps and cosine decay to lr / 10, batches of 32 windows of 64 characters from the training
    split, `steps` (default 1000) updates, seeded by `seed` (initialisation and batches), on
    `threads` CPU threads (one: the same numbers on every run on one machine).
    Cost: about 35-45 CPU-seconds at one thread for 1000 steps (2 cores shared with other work).

    Returns a dict of floats and lists: induction_probe's numbers for the trained model, the curve
    (curve_steps, curve_first, curve_second, curve_induction: letters losses and the best induction
    score every eval_every steps, step 0 included), drop_step (the first evaluated step whose second-
    copy loss is at most half the first copy's, -1 if none), head_ablations' losses, cpu_seconds
    (train_cpu_seconds without the probes), the set-up, and "model" (the trained TinyDecoder, in eval
    mode, on the CPU).
    """

    s = _induction_setup(steps, repeat_fraction)
    tok = course_chars()
    train_ids = torch.tensor(tok.encode(load_corpus("train")))  # (N_train,)
    with torch_threads(threads):
        start = time.process_time()
        torch.manual_seed(seed)
        model = build_model(induction_config(tok.vocab_size))
        curve, probe_seconds = _train_watching_induction(model, train_ids, s, seed, eval_every)
        model.eval()
        result = induction_probe(model)
        result.update(curve)
        result["drop_step"] = _drop_step(curve)
        result.update(head_ablations(model, result))
        result["cpu_seconds"] = time.process_time() - start
        result["train_cpu_seconds"] = result["cpu_seconds"] - probe_seconds
    result.update(seed=seed, steps=s["steps"], repeat_fraction=s["repeat_fraction"], model=model)
    return result


INDUCTION_RUNS = {"seed 0": dict(seed=0), "seed 1": dict(seed=1), "text only": dict(seed=0, repeat_fraction=0.0)}
INDUCTION_CHECKPOINT = Path(__file__).parent / "checkpoints" / "induction.pt"


def load_induction_runs(retrain: bool = False, path: Path | str | None = None) -> dict[str, dict]:
    """The induction experiment's three runs (INDUCTION_RUNS): two seeds and the text-only control.

    retrain=False loads what `python tools/train_induction.py` saved (the weights and the training
    curves; every other number is recomputed from the loaded weights here, so it is this machine's
    measurement); retrain=True trains the three models now (about two CPU-minutes at one thread).
    Each value is induction_experiment's dict with "model" and "source" ("checkpoint" or "trained").
    """
    if retrain:
        return {name: {**induction_experiment(**kwargs), "source": "trained"} for name, kwargs in INDUCTION_RUNS.items()}

    saved = torch.load(path or INDUCTION_CHECKPOINT, weights_only=True)
    runs = {}
    for name, run in saved["runs"].items():
        model = build_model(induction_config(course_chars().vocab_size))
        model.load_state_dict(run["state_dict"])
        model.eval()
        probe = induction_probe(model)
        curve = {k: v for k, v in run["metrics"].items() if k.startswith("curve_") or k in (
            "drop_step", "seed", "steps", "repeat_fraction", "cpu_seconds", "train_cpu_seconds")}
        runs[name] = {**probe, **head_ablations(model, probe), **curve, "model": model, "source": "checkpoint",
                      "saved": run["metrics"]}
    return runs
