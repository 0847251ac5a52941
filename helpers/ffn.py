"""Chapter 03: the position-wise feed-forward network (FFN), and mixture-of-experts (MoE) basics.

    FFN(x)    = W2 phi(W1 x + b1) + b2                 x (..., d_model) -> (..., d_model)
    SwiGLU(x) = W_down (silu(W_gate x) * (W_up x))     three matrices, no biases (Llama)
    MoE(x)    = sum over the k chosen experts e of  w_e(x) * expert_e(x)

Every function acts on the last axis only: the output at position t depends on the input at
position t and on nothing else. That is what "position-wise" means, and `token_influence` measures it.

Weights follow torch.nn.Linear: W has shape (out_features, in_features) and y = x @ W.T + b, so
W1 is (d_ff, d_model) and W2 is (d_model, d_ff).

Routing convention (Mixtral's): `top_k_route` takes the k largest router logits and a softmax over
those k only, so the weights of a token sum to 1. A softmax over all experts followed by top-k and
renormalisation gives the same numbers; a softmax over all experts *without* renormalising does not
(Switch Transformer with k = 1 and Qwen-MoE's `norm_topk_prob=False` use that on purpose).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .heads import attention_param_count
from .shapes import (
    ShapeError,
    fmt_shape,
    require_float,
    require_positive_int,
    require_same_dtype,
    require_tensor,
)

__all__ = [
    "ACTIVATIONS",
    "FeedForward",
    "MoEFFN",
    "SwiGLUFFN",
    "block_param_counts",
    "capacity_keep",
    "expert_capacity",
    "feed_forward",
    "ffn_param_count",
    "gelu",
    "load_balancing_loss",
    "moe_forward",
    "moe_param_count",
    "relu",
    "silu",
    "swiglu_ffn",
    "swiglu_width",
    "token_influence",
    "top_k_route",
]


# ---------------------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------------------


def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """GELU(x) = x * Phi(x), Phi the standard normal CDF; same numbers as F.gelu(x, approximate=...).

    "none":  0.5 x (1 + erf(x / sqrt 2))                              (BERT, F.gelu's default)
    "tanh":  0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))         (GPT-2's "gelu_new")
    """
    require_float("gelu", "x", x, "(...)")
    if approximate == "none":
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))  # same shape as x
    if approximate == "tanh":
        inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))  # same shape as x
        return 0.5 * x * (1.0 + torch.tanh(inner))
    raise ValueError(f"gelu: approximate must be 'none' or 'tanh'; got {approximate!r}")


def relu(x: torch.Tensor) -> torch.Tensor:
    """max(x, 0): the original transformer's activation."""
    require_float("relu", "x", x, "(...)")
    return x.clamp(min=0)


def silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU (swish) x * sigmoid(x): the gate's activation in SwiGLU; same numbers as F.silu."""
    require_float("silu", "x", x, "(...)")
    return x * torch.sigmoid(x)


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": gelu,
    "gelu_tanh": lambda x: gelu(x, approximate="tanh"),
    "relu": relu,
    "silu": silu,
}


# ---------------------------------------------------------------------------------------------
# The FFN and its gated variant
# ---------------------------------------------------------------------------------------------


def _require_linear(fn: str, name: str, w: torch.Tensor, out_name: str, out: int | None,
                    in_name: str, in_: int) -> None:
    """w must be (out_features, in_features) = (out_name, in_name), in_features = in_."""
    require_float(fn, name, w, f"({out_name}, {in_name})")
    if w.shape[1] != in_ or (out is not None and w.shape[0] != out):
        want = f"({out_name}, {in_name}) = ({out if out is not None else out_name}, {in_})"
        raise ShapeError(f"{fn}: {name} must have shape {want} (nn.Linear layout: out_features, "
                         f"in_features); got {fmt_shape(w.shape)}")


def _require_bias(fn: str, name: str, b: torch.Tensor | None, axis: str, size: int) -> None:
    if b is None:
        return
    require_float(fn, name, b, "(...)")
    if b.shape != (size,):
        raise ShapeError(f"{fn}: {name} must have shape ({axis},) = ({size},); got {fmt_shape(b.shape)}")


def feed_forward(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor,
                 b2: torch.Tensor | None, activation: str = "gelu") -> torch.Tensor:
    """W2 phi(W1 x + b1) + b2 on the last axis: (..., d_model) -> (..., d_model).

    w1 (d_ff, d_model), b1 (d_ff,) or None, w2 (d_model, d_ff), b2 (d_model,) or None;
    activation is one of "gelu" (exact), "gelu_tanh", "relu", "silu".
    """
    fn = "feed_forward"
    require_float(fn, "x", x, "(..., d_model)")
    d_model = x.shape[-1]
    _require_linear(fn, "w1", w1, "d_ff", None, "d_model", d_model)
    d_ff = w1.shape[0]
    _require_linear(fn, "w2", w2, "d_model", d_model, "d_ff", d_ff)
    _require_bias(fn, "b1", b1, "d_ff", d_ff)
    _require_bias(fn, "b2", b2, "d_model", d_model)
    require_same_dtype(fn, x=x, w1=w1, w2=w2)
    if activation not in ACTIVATIONS:
        raise ValueError(f"{fn}: activation must be one of {sorted(ACTIVATIONS)}; got {activation!r}")
    h = x @ w1.T  # (..., d_ff)
    if b1 is not None:
        h = h + b1  # (..., d_ff)
    h = ACTIVATIONS[activation](h)  # (..., d_ff): the only nonlinearity, between the projections
    y = h @ w2.T  # (..., d_model)
    return y + b2 if b2 is not None else y  # (..., d_model)


def swiglu_ffn(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """W_down (silu(W_gate x) * (W_up x)): (..., d_model) -> (..., d_model), as in Llama's MLP.

    w_gate (d_ff, d_model) goes through SiLU; w_up (d_ff, d_model) stays linear; w_down (d_model, d_ff).
    """
    fn = "swiglu_ffn"
    require_float(fn, "x", x, "(..., d_model)")
    d_model = x.shape[-1]
    _require_linear(fn, "w_gate", w_gate, "d_ff", None, "d_model", d_model)
    d_ff = w_gate.shape[0]
    _require_linear(fn, "w_up", w_up, "d_ff", d_ff, "d_model", d_model)
    _require_linear(fn, "w_down", w_down, "d_model", d_model, "d_ff", d_ff)
    require_same_dtype(fn, x=x, w_gate=w_gate, w_up=w_up, w_down=w_down)
    gate = silu(x @ w_gate.T)  # (..., d_ff)
    up = x @ w_up.T  # (..., d_ff)
    return (gate * up) @ w_down.T  # (..., d_model)


class FeedForward(nn.Module):
    """The GPT-2 MLP: Linear(d_model, d_ff) -> activation -> Linear(d_ff, d_model)."""

    def __init__(self, d_model: int, d_ff: int, activation: str = "gelu", bias: bool = True) -> None:
        super().__init__()
        require_positive_int("FeedForward", "d_model", d_model)
        require_positive_int("FeedForward", "d_ff", d_ff)
        if activation not in ACTIVATIONS:
            raise ValueError(f"FeedForward: activation must be one of {sorted(ACTIVATIONS)}; got {activation!r}")
        self.activation = activation
        self.fc1 = nn.Linear(d_model, d_ff, bias=bias)  # weight (d_ff, d_model)
        self.fc2 = nn.Linear(d_ff, d_model, bias=bias)  # weight (d_model, d_ff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return feed_forward(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias,
                            self.activation)  # (..., d_model)


class SwiGLUFFN(nn.Module):
    """The Llama MLP: down(silu(gate(x)) * up(x)), three bias-free Linear layers."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        require_positive_int("SwiGLUFFN", "d_model", d_model)
        require_positive_int("SwiGLUFFN", "d_ff", d_ff)
        self.gate = nn.Linear(d_model, d_ff, bias=False)  # weight (d_ff, d_model)
        self.up = nn.Linear(d_model, d_ff, bias=False)  # weight (d_ff, d_model)
        self.down = nn.Linear(d_ff, d_model, bias=False)  # weight (d_model, d_ff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return swiglu_ffn(x, self.gate.weight, self.up.weight, self.down.weight)  # (..., d_model)


# ---------------------------------------------------------------------------------------------
# Counting parameters
# ---------------------------------------------------------------------------------------------


def ffn_param_count(d_model: int, d_ff: int, gated: bool = False, bias: bool = True) -> int:
    """Weights and biases of one FFN.

    plain (W1, W2):             2 d_model d_ff  (+ d_ff + d_model biases)
    gated (W_gate, W_up, W_down): 3 d_model d_ff  (+ 2 d_ff + d_model biases)
    """
    require_positive_int("ffn_param_count", "d_model", d_model)
    require_positive_int("ffn_param_count", "d_ff", d_ff)
    n_in = 2 if gated else 1  # matrices d_model -> d_ff
    weights = (n_in + 1) * d_model * d_ff
    biases = n_in * d_ff + d_model if bias else 0
    return weights + biases


def swiglu_width(d_model: int, multiple_of: int = 1) -> int:
    """The d_ff of a SwiGLU FFN with the parameters of a 4 d_model plain MLP: 8/3 d_model.

    3 d_model d_ff = 2 d_model (4 d_model)  =>  d_ff = 8/3 d_model, rounded up to a multiple of
    `multiple_of` exactly as Llama does (Llama-1/2 7B: d_model 4096, multiple_of 256 -> 11008).
    """
    require_positive_int("swiglu_width", "d_model", d_model)
    require_positive_int("swiglu_width", "multiple_of", multiple_of)
    d_ff = int(2 * (4 * d_model) / 3)
    return multiple_of * ((d_ff + multiple_of - 1) // multiple_of)


def block_param_counts(d_model: int, d_ff: int, *, gated: bool = False, bias: bool = True) -> dict[str, int]:
    """{'attention': ..., 'mlp': ...}: the two weight blocks of one transformer layer (norms left out)."""
    require_positive_int("block_param_counts", "d_model", d_model)
    # heads split d_model, they do not add parameters: one head counts the same as twelve
    return {"attention": attention_param_count(d_model, n_heads=1, bias=bias),
            "mlp": ffn_param_count(d_model, d_ff, gated=gated, bias=bias)}


# ---------------------------------------------------------------------------------------------
# Token independence, measured
# ---------------------------------------------------------------------------------------------


def token_influence(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
    """(T, T) matrix: entry [i, j] = largest change of output i when input token j is perturbed.

    x (B, T, d_model) or (T, d_model); fn maps it to the same leading shape (..., T, d_out).
    A position-wise function (an FFN) gives a diagonal matrix with exact zeros elsewhere; attention
    fills it; causal attention fills the lower triangle.
    """
    require_float("token_influence", "x", x, "(..., T, d_model)")
    T = x.shape[-2]
    gen = torch.Generator().manual_seed(seed)
    delta = torch.randn(x.shape[-1], generator=gen, dtype=torch.float64).to(x.dtype).to(x.device)  # (d_model,)
    with torch.no_grad():
        base = fn(x)  # (..., T, d_out)
        influence = torch.zeros(T, T, dtype=torch.float64)
        for j in range(T):
            moved = x.clone()
            moved[..., j, :] += delta  # token j changes in every sequence of the batch
            change = (fn(moved) - base).abs()  # (..., T, d_out)
            influence[:, j] = change.transpose(-2, 0).reshape(T, -1).amax(dim=-1).double().cpu()  # (T,)
    return influence


# ---------------------------------------------------------------------------------------------
# Mixture of experts
# ---------------------------------------------------------------------------------------------


def top_k_route(router_logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick each token's k experts: (..., n_experts) -> (weights (..., k), expert_indices (..., k)).

    The indices are those of the k largest logits, largest first (as torch.topk); the weights are a
    softmax over those k logits only, so each token's weights sum to 1.
    """
    fn = "top_k_route"
    require_float(fn, "router_logits", router_logits, "(..., n_experts)")
    require_positive_int(fn, "k", k)
    n_experts = router_logits.shape[-1]
    if k > n_experts:
        raise ValueError(f"{fn}: k = {k} is more than n_experts = {n_experts} (router_logits "
                         f"{fmt_shape(router_logits.shape)} = (..., n_experts))")
    top_logits, expert_indices = router_logits.topk(k, dim=-1)  # (..., k), (..., k)
    weights = torch.softmax(top_logits, dim=-1)  # (..., k): softmax over the chosen k
    return weights, expert_indices


def expert_capacity(n_tokens: int, n_experts: int, k: int = 1, capacity_factor: float = 1.0) -> int:
    """Slots per expert: ceil(capacity_factor * n_tokens * k / n_experts) (Switch Transformer, GShard)."""
    require_positive_int("expert_capacity", "n_tokens", n_tokens)
    require_positive_int("expert_capacity", "n_experts", n_experts)
    require_positive_int("expert_capacity", "k", k)
    if not capacity_factor > 0:
        raise ValueError(f"expert_capacity: capacity_factor must be > 0; got {capacity_factor!r}")
    slots = round(capacity_factor * n_tokens * k / n_experts, 9)  # round: 1.1 * 10 is 11.000000000000002
    return math.ceil(slots)


def capacity_keep(expert_indices: torch.Tensor, n_experts: int, capacity: int) -> torch.Tensor:
    """(..., k) bool: True where an assignment fits into its expert's `capacity` slots.

    Slots are filled first choices first (every token's first choice, in token order, then every
    second choice, ...); the assignments that do not fit are dropped: they contribute nothing, and
    the token's residual connection carries it past the layer unchanged.
    """
    fn = "capacity_keep"
    require_tensor(fn, "expert_indices", expert_indices)
    if expert_indices.dim() < 1 or expert_indices.is_floating_point():
        raise ShapeError(f"{fn}: expert_indices must be an integer tensor of shape (..., k); got "
                         f"{fmt_shape(expert_indices.shape)} of dtype {expert_indices.dtype}")
    require_positive_int(fn, "n_experts", n_experts)
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
        raise ValueError(f"{fn}: capacity must be an int >= 0; got {capacity!r}")
    k = expert_indices.shape[-1]
    order = expert_indices.reshape(-1, k).T.reshape(-1)  # (k * N,): slot-major, then token order
    one_hot = torch.nn.functional.one_hot(order, n_experts)  # (k * N, n_experts)
    position = (one_hot.cumsum(dim=0) * one_hot).sum(dim=-1) - 1  # (k * N,): place in its expert's queue
    keep = (position < capacity).reshape(k, -1).T  # (N, k)
    return keep.reshape(expert_indices.shape)  # (..., k)


def moe_forward(x: torch.Tensor, router_weight: torch.Tensor,
                experts: Sequence[Callable[[torch.Tensor], torch.Tensor]], k: int,
                capacity_factor: float | None = None) -> torch.Tensor:
    """Sparse MoE layer: each token goes to its top-k experts; outputs are mixed by the router weights.

    x (..., d_model), router_weight (n_experts, d_model), experts: n_experts functions
    (N, d_model) -> (N, d_model), k experts per token -> (..., d_model). With capacity_factor, the
    assignments beyond each expert's capacity are dropped (they add nothing; weights are not renormalised).
    Each expert runs once, on just the tokens routed to it.
    """
    fn = "moe_forward"
    require_float(fn, "x", x, "(..., d_model)")
    d_model = x.shape[-1]
    _require_linear(fn, "router_weight", router_weight, "n_experts", None, "d_model", d_model)
    n_experts = router_weight.shape[0]
    if len(experts) != n_experts:
        raise ShapeError(f"{fn}: router_weight {fmt_shape(router_weight.shape)} = (n_experts, d_model) "
                         f"routes to {n_experts} experts, but {len(experts)} experts were given")
    logits = x @ router_weight.T  # (..., n_experts)
    weights, chosen = top_k_route(logits, k)  # (..., k), (..., k)
    flat_x = x.reshape(-1, d_model)  # (N, d_model), N = all tokens
    flat_w = weights.reshape(-1, k)  # (N, k)
    flat_e = chosen.reshape(-1, k)  # (N, k)
    keep = torch.ones_like(flat_e, dtype=torch.bool)  # (N, k)
    if capacity_factor is not None:
        capacity = expert_capacity(flat_x.shape[0], n_experts, k, capacity_factor)
        keep = capacity_keep(flat_e, n_experts, capacity)  # (N, k)
    out = torch.zeros_like(flat_x)  # (N, d_model)
    for e, expert in enumerate(experts):
        token, slot = torch.where((flat_e == e) & keep)  # (n_e,), (n_e,): the tokens sent to expert e
        if token.numel() == 0:
            continue
        y = expert(flat_x[token])  # (n_e, d_model)
        out = out.index_add(0, token, flat_w[token, slot, None] * y)  # (N, d_model)
    return out.reshape(x.shape)  # (..., d_model)


def load_balancing_loss(router_logits: torch.Tensor, expert_indices: torch.Tensor) -> torch.Tensor:
    """Switch Transformer's auxiliary loss: n_experts * sum_i f_i * P_i (a 0-d tensor).

    f_i: fraction of the N * k assignments that went to expert i (counted, no gradient);
    P_i: mean over tokens of the router's softmax probability of expert i (carries the gradient).
    Perfect balance gives 1; everything on one expert gives n_experts. (Hugging Face's Mixtral
    version sums the k choices separately, which is k times this number.)
    """
    fn = "load_balancing_loss"
    require_float(fn, "router_logits", router_logits, "(..., n_experts)")
    require_tensor(fn, "expert_indices", expert_indices)
    if expert_indices.is_floating_point() or expert_indices.shape[:-1] != router_logits.shape[:-1]:
        raise ShapeError(f"{fn}: expert_indices must be integers of shape (..., k) with the leading axes "
                         f"of router_logits {fmt_shape(router_logits.shape)} = (..., n_experts); got "
                         f"{fmt_shape(expert_indices.shape)} of dtype {expert_indices.dtype}")
    n_experts = router_logits.shape[-1]
    probs = torch.softmax(router_logits.reshape(-1, n_experts), dim=-1)  # (N, n_experts)
    P = probs.mean(dim=0)  # (n_experts,)
    counts = torch.bincount(expert_indices.reshape(-1), minlength=n_experts)  # (n_experts,)
    f = counts.to(P.dtype) / expert_indices.numel()  # (n_experts,), sums to 1
    return n_experts * (f * P).sum()


def moe_param_count(d_model: int, d_ff: int, n_experts: int, k: int, *, gated: bool = True,
                    bias: bool = False) -> dict[str, int]:
    """{'total': ..., 'active': ...} for one MoE layer: every expert plus the router, and what one token uses.

    A token uses the router and its k experts, so compute per token follows 'active', while memory
    must hold 'total'.
    """
    require_positive_int("moe_param_count", "n_experts", n_experts)
    require_positive_int("moe_param_count", "k", k)
    if k > n_experts:
        raise ValueError(f"moe_param_count: k = {k} is more than n_experts = {n_experts}")
    expert = ffn_param_count(d_model, d_ff, gated=gated, bias=bias)
    router = n_experts * d_model
    return {"total": n_experts * expert + router, "active": k * expert + router}


class MoEFFN(nn.Module):
    """A sparse MoE feed-forward layer: a bias-free router and n_experts FFNs, k per token."""

    def __init__(self, d_model: int, d_ff: int, n_experts: int, k: int, *, gated: bool = True,
                 capacity_factor: float | None = None) -> None:
        super().__init__()
        require_positive_int("MoEFFN", "n_experts", n_experts)
        require_positive_int("MoEFFN", "k", k)
        if k > n_experts:
            raise ValueError(f"MoEFFN: k = {k} is more than n_experts = {n_experts}")
        self.k, self.capacity_factor = k, capacity_factor
        self.router = nn.Linear(d_model, n_experts, bias=False)  # weight (n_experts, d_model)
        self.experts = nn.ModuleList(
            SwiGLUFFN(d_model, d_ff) if gated else FeedForward(d_model, d_ff) for _ in range(n_experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return moe_forward(x, self.router.weight, list(self.experts), self.k, self.capacity_factor)  # (..., d_model)
