"""Chapter 00: the transformer at a glance. The block shape map, permutation equivariance, token budgets.

    shape_map(B=2, T=7, d_model=12, n_heads=3, d_ff=48, vocab=50)["S"]   # (2, 3, 7, 7)
    measure_shapes(model, ids)          # the same names, measured on a running TinyDecoder
    is_permutation_equivariant(f, x)    # f(x[:, perm]) == f(x)[:, perm] ?
    remaining_tokens(8192, system=600, retrieved=6000, user=400, output=1000)   # 192

The shape map of one decoder block (d_head = d_model / H):

    H           hidden states entering the block      (B, T, d_model)
    Q, K, V     queries, keys, values, per head        (B, H, T, d_head)
    S           attention scores Q Kᵀ / sqrt(d_head)   (B, H, T, T)
    A           attention weights softmax(S)           (B, H, T, T)
    O           attention output, heads merged         (B, T, d_model)
    mlp_hidden  the FFN's hidden layer                 (B, T, d_ff)
    block_out   the block's output                     (B, T, d_model)
    logits      the LM head's output                   (B, T, V)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import nn

from .attention import attention_scores
from .blocks import TinyDecoder
from .ffn import ACTIVATIONS, SwiGLUFFN, silu
from .heads import split_heads
from .shapes import ShapeError, fmt_shape, require_float, require_positive_int

__all__ = [
    "AddPositions",
    "MixOneToken",
    "OrderSensitiveRounding",
    "SHAPE_MAP",
    "budget_table",
    "is_permutation_equivariant",
    "largest_retrieved_context",
    "measure_shapes",
    "measure_tensors",
    "remaining_tokens",
    "shape_map",
]

# name -> (what it is, its axes)
SHAPE_MAP: dict[str, tuple[str, str]] = {
    "H": ("hidden states entering the block", "(B, T, d_model)"),
    "Q": ("queries, per head", "(B, H, T, d_head)"),
    "K": ("keys, per head", "(B, H, T, d_head)"),
    "V": ("values, per head", "(B, H, T, d_head)"),
    "S": ("attention scores", "(B, H, T, T)"),
    "A": ("attention weights", "(B, H, T, T)"),
    "O": ("attention output, heads merged", "(B, T, d_model)"),
    "mlp_hidden": ("the FFN's hidden layer", "(B, T, d_ff)"),
    "block_out": ("the block's output", "(B, T, d_model)"),
    "logits": ("next-token logits", "(B, T, V)"),
}


# ---------------------------------------------------------------------------------------------
# The block shape map
# ---------------------------------------------------------------------------------------------


def shape_map(B: int, T: int, d_model: int, n_heads: int, d_ff: int, vocab: int) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor in one decoder block and the LM head (keys as in SHAPE_MAP)."""
    fn = "shape_map"
    for name, value in (("B", B), ("T", T), ("d_model", d_model), ("n_heads", n_heads), ("d_ff", d_ff),
                        ("vocab", vocab)):
        require_positive_int(fn, name, value)
    if d_model % n_heads:
        raise ShapeError(f"{fn}: d_model = {d_model} is not divisible by n_heads = {n_heads}; every head "
                         f"needs the same width d_head = d_model / n_heads")
    d_head = d_model // n_heads
    per_head = (B, n_heads, T, d_head)
    return {
        "H": (B, T, d_model),
        "Q": per_head,
        "K": per_head,
        "V": per_head,
        "S": (B, n_heads, T, T),  # one T x T matrix per sequence and head
        "A": (B, n_heads, T, T),
        "O": (B, T, d_model),  # heads merged back: H * d_head = d_model
        "mlp_hidden": (B, T, d_ff),
        "block_out": (B, T, d_model),  # the shape contract: what comes in goes out
        "logits": (B, T, vocab),  # one score per vocabulary entry, at every position
    }


def measure_shapes(model: TinyDecoder, ids: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Run `model` on `ids` (B, T) and record the shapes of its first block's tensors (keys as in SHAPE_MAP)."""
    return {name: tuple(t.shape) for name, t in measure_tensors(model, ids).items()}


def measure_tensors(model: TinyDecoder, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run `model` on `ids` (B, T) and keep its first block's tensors (keys as in SHAPE_MAP).

    Forward hooks catch what the block's modules really produce: the block's input and output, the
    attention layer's input and output, the FFN's input. The rest are explicit calls on those real
    tensors with the layers' own weights, as the chapters' functions compute them: Q, K, V =
    split_heads(h @ W.T) (helpers.heads), S = attention_scores(Q, K) (helpers.attention), the FFN's
    hidden layer phi(x @ W1.T + b1) or silu(x @ W_gate.T) * (x @ W_up.T) (helpers.ffn). The weights
    A are what the block returns.
    """
    fn = "measure_tensors"
    if not isinstance(model, TinyDecoder):
        raise TypeError(f"{fn}: model must be a helpers.blocks.TinyDecoder; got {type(model).__name__}")
    if model.config.kv_heads != model.config.n_heads:
        raise ValueError(f"{fn}: the shape map assumes multi-head attention (n_kv_heads = n_heads)")
    block = model.blocks[0]
    H = model.config.n_heads
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str, pick: Callable = lambda args, out: out):
        def hook(module, args, out):
            seen[name] = pick(args, out)
        return hook

    handles = [
        block.register_forward_hook(keep("H", lambda args, out: args[0])),
        block.register_forward_hook(keep("block_out", lambda args, out: out[0] if isinstance(out, tuple) else out)),
        block.attn.register_forward_hook(keep("attn_in", lambda args, out: args[0])),
        block.attn.register_forward_hook(keep("O", lambda args, out: out[0])),
        block.ffn.register_forward_hook(keep("ffn_in", lambda args, out: args[0])),
    ]
    try:
        with torch.no_grad():
            logits, weights = model(ids, return_weights=True)  # (B, T, V), [(B, H, T, T)] * n_layers
    finally:
        for handle in handles:
            handle.remove()
    h, attn = seen["attn_in"], block.attn  # h (B, T, d_model): what the attention layer read
    with torch.no_grad():
        q, k, v = (split_heads(h @ proj.weight.T, H)  # (B, T, d_model) -> (B, H, T, d_head)
                   for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
        scores = attention_scores(q, k)  # (B, H, T, T)
        x, ffn = seen["ffn_in"], block.ffn  # x (B, T, d_model): what the FFN read
        if isinstance(ffn, SwiGLUFFN):
            hidden = silu(x @ ffn.gate.weight.T) * (x @ ffn.up.weight.T)  # (B, T, d_ff)
        else:
            pre = x @ ffn.fc1.weight.T + (0 if ffn.fc1.bias is None else ffn.fc1.bias)  # (B, T, d_ff)
            hidden = ACTIVATIONS[ffn.activation](pre)  # (B, T, d_ff)
    return {"H": seen["H"], "Q": q, "K": k, "V": v, "S": scores, "A": weights[0], "O": seen["O"],
            "mlp_hidden": hidden, "block_out": seen["block_out"], "logits": logits}


# ---------------------------------------------------------------------------------------------
# Position information: attention alone is permutation equivariant
# ---------------------------------------------------------------------------------------------


def is_permutation_equivariant(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *,
                               perm: torch.Tensor | None = None, seed: int = 0, atol: float = 1e-5,
                               rtol: float = 1e-5) -> bool:
    """True if f(x[:, perm]) equals f(x)[:, perm]: reordering the tokens only reorders the outputs.

    x (B, T, d); f maps it to (B, T, d_out). perm defaults to a seeded random permutation of the T
    positions that moves every token (a derangement), so a lucky identity cannot hide anything.
    """
    fn = "is_permutation_equivariant"
    require_float(fn, "x", x, "(B, T, d)")
    T = x.shape[1]
    if perm is None:
        perm = _derangement(T, seed)
    perm = perm.to(x.device)
    if sorted(perm.tolist()) != list(range(T)):
        raise ValueError(f"{fn}: perm must be a permutation of 0..T-1 = 0..{T - 1}; got {perm.tolist()}")
    with torch.no_grad():
        out = f(x)  # (B, T, d_out)
        out_of_permuted = f(x[:, perm])  # (B, T, d_out)
    if out.shape[:2] != x.shape[:2] or out_of_permuted.shape != out.shape:
        raise ShapeError(f"{fn}: f must map (B, T, d) = {fmt_shape(x.shape)} to (B, T, d_out); got "
                         f"{fmt_shape(out.shape)}")
    return bool(torch.allclose(out_of_permuted, out[:, perm], atol=atol, rtol=rtol))


class OrderSensitiveRounding(nn.Module):
    """A token-wise map (so permutation equivariant) that rounds like a reordered reduction.

    x (B, T, d) -> 2 x (B, T, d), one unit in the last place higher when the tokens are not those of
    `original` in their original order.

    Whether f(x[:, perm]) and f(x)[:, perm] are bit-identical for a real block depends on the CPU:
    one kernel sums in the same order for both, another blocks the matrix differently after the
    permutation. This trap makes the difference certain on every machine: given its tokens in any
    order but the original one, every output moves by one unit in the last place, as a reordered
    sum's would. So an exact comparison always says False here, and a tolerance says True.
    """

    def __init__(self, original: torch.Tensor) -> None:
        super().__init__()
        self.original = original

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = 2 * x  # (B, T, d): token-wise and exact
        if x.shape != self.original.shape or not torch.equal(x, self.original.to(x.device, x.dtype)):
            out = torch.nextafter(out, torch.full_like(out, math.inf))  # one ulp up: another summation order
        return out


class MixOneToken(nn.Module):
    """x with token `t` (only) mixed with its left neighbour: out[:, t] = x[:, t] + x[:, t - 1] / 2.

    x (B, T, d) -> (B, T, d). Not permutation equivariant, but a test that compares only output token
    i (the first, say) sees it only when t is i or perm[i], so the checks use it at every position.
    """

    def __init__(self, t: int) -> None:
        super().__init__()
        if t < 1:
            raise ValueError(f"MixOneToken: t must be at least 1 (token t mixes with token t - 1); got {t}")
        self.t = t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        require_float("MixOneToken", "x", x, "(B, T, d)")
        if x.shape[1] <= self.t:
            raise ShapeError(f"MixOneToken: x {fmt_shape(x.shape)} = (B, T, d) has no token {self.t}")
        out = x.clone()  # (B, T, d)
        out[:, self.t] = x[:, self.t] + x[:, self.t - 1] / 2
        return out

    def extra_repr(self) -> str:
        return f"t={self.t}"


class AddPositions(nn.Module):
    """x + table[:T]: absolute positions added to hidden states, (B, T, d) -> (B, T, d).

    nn.Sequential(AddPositions(table), block) is a block that knows where each token stands.
    """

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        require_float("AddPositions", "table", table, "(T_max, d)")
        self.table = nn.Parameter(table.detach().clone())  # (T_max, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        require_float("AddPositions", "x", x, "(B, T, d)")
        T = x.shape[1]
        if T > self.table.shape[0] or x.shape[-1] != self.table.shape[1]:
            raise ShapeError(f"AddPositions: x {fmt_shape(x.shape)} = (B, T, d) needs a table of at least T rows "
                             f"and d columns; the table is {fmt_shape(self.table.shape)}")
        return x + self.table[:T]  # (B, T, d) + (T, d)

    def extra_repr(self) -> str:
        return f"table {fmt_shape(self.table.shape)}"


def _derangement(T: int, seed: int) -> torch.Tensor:
    """A seeded permutation of 0..T-1 that moves every position (for T = 1: the identity)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(T, generator=gen)  # (T,)
        if T == 1 or bool((perm != torch.arange(T)).all()):
            return perm


# ---------------------------------------------------------------------------------------------
# Token budgets: everything in a request shares one context window
# ---------------------------------------------------------------------------------------------


def _require_count(fn: str, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{fn}: {name} must be a token count, an int >= 0; got {value!r}")
    return value


def remaining_tokens(context_window: int, **parts: int) -> int:
    """context_window - sum(parts): the margin left (negative when the request does not fit).

    remaining_tokens(8192, system=600, retrieved=6000, user=400, output=1000) == 192. Reserve the
    output too: the model's answer is written into the same window as the prompt.
    """
    fn = "remaining_tokens"
    require_positive_int(fn, "context_window", context_window)
    return context_window - sum(_require_count(fn, name, value) for name, value in parts.items())


def largest_retrieved_context(context_window: int, *, chunk_tokens: int = 1, **fixed: int) -> int:
    """The most retrieved tokens that still fit beside the fixed parts: a multiple of chunk_tokens, >= 0.

    largest_retrieved_context(8192, system=600, user=400, output=1000) == 6192 (the request then
    fills the window exactly: a margin of 0 still fits). With chunk_tokens=c only whole chunks count.
    """
    fn = "largest_retrieved_context"
    require_positive_int(fn, "chunk_tokens", chunk_tokens)
    free = remaining_tokens(context_window, **fixed)
    return max(free, 0) // chunk_tokens * chunk_tokens


def budget_table(context_window: int, parts: Mapping[str, int]) -> list[tuple[str, int, float]]:
    """(name, tokens, share of the window in %) for each part, then ('margin', ..., ...)."""
    rows = [(name, int(tokens), 100 * tokens / context_window) for name, tokens in parts.items()]
    margin = remaining_tokens(context_window, **parts)
    return rows + [("margin", margin, 100 * margin / context_window)]
