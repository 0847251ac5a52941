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
from dataclasses import dataclass

import torch
from torch import nn

from .attention import causal_mask
from .blocks import ModelConfig, build_model
from .numerics import tolerances
from .overview import measure_shapes, shape_map
from .shapes import ShapeError, fmt_shape, require_float, require_positive_int, require_tensor
from .training import param_count, train

__all__ = [
    "AblationRow",
    "LeakReport",
    "ShapeReport",
    "ablation_table",
    "attention_entropy",
    "causal_max_entropy",
    "entropy_table",
    "head_entropy",
    "induction_score",
    "influence_by_gradient",
    "influence_by_perturbation",
    "leak_test",
    "leaking_pairs",
    "max_entropy",
    "moved_positions",
    "previous_token_score",
    "repeated_random_tokens",
    "residual_stream",
    "run_ablation",
    "shape_report",
    "stream_norms",
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
                 steps: int, batch_size: int, block_size: int, seed: int = 0, **train_kwargs) -> list[AblationRow]:
    """Train one model per config with chapter 08's `train` (same seed, batches and schedule); one row each.

    Deterministic for a seed: each model is initialised after torch.manual_seed(seed) and sees the
    same batches, so two configs differ only in what the config changes.
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
        rows.append(AblationRow(name, param_count(model), history.val_loss[-1], time.perf_counter() - start))
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
