"""The model every chapter shares: a decoder block and a tiny decoder-only language model.

    config = ModelConfig(vocab_size=512, d_model=64, n_heads=4, n_layers=2)
    model = TinyDecoder(config)
    logits = model(ids)                          # ids (B, T) int64 -> logits (B, T, V)
    logits, weights = model(ids, return_weights=True)   # weights: one (B, H, T, T) per layer

The path of one forward pass (chapter 00's tour):

    ids (B, T) -> token embeddings wte[ids] (B, T, d_model) (+ learned positions wpe[:T])
               -> n_layers x DecoderBlock, each (B, T, d_model) -> (B, T, d_model)
               -> final norm (Pre-LN only) -> LM head h @ W_headᵀ (B, T, V)

A DecoderBlock is composed from the chapters' own pieces, never a second copy of their math:
attention is `Attention` below, built from chapter 02's split_heads / repeat_kv / merge_heads and
chapter 01's attention (its steps kept apart so positions and the KV cache plug in one place each),
the FFN is helpers.ffn.FeedForward or SwiGLUFFN (chapter 03), the norms and the two block
equations are helpers.norms (chapter 04):

    pre   x = x + attn(norm1(x));  x = x + ffn(norm2(x))       GPT-2, Llama
    post  x = norm1(x + attn(x));  x = norm2(x + ffn(x))       the 2017 Transformer, BERT

A pre-norm DecoderBlock with LayerNorm and a GELU FFN gives the same numbers as
torch.nn.TransformerEncoderLayer(norm_first=True, activation="gelu", dropout=0.0,
batch_first=True, bias=False) with copied weights and a causal mask (torch's boolean masks mean
True = blocked, so pass ~causal_mask(T)); post-norm matches norm_first=False.

The config switches parts by name, so later chapters (and chapter 09's ablations) change a field,
not the code.

Chapter 05 adds the other two kinds of model and two block variants, all from the same config:

    kind="encoder"          TinyEncoder: EncoderBlocks (bidirectional, key padding), MLM logits
    kind="encoder-decoder"  TinyEncoderDecoder: encoder stack -> memory; CrossDecoderBlocks (causal
                            self-attention, cross-attention on memory, FFN: decoder_block's equations)
    block="parallel"        x + attn(norm(x)) + ffn(norm(x)) (GPT-J, PaLM): parallel_block
    ffn="moe"               chapter 03's MoEFFN (n_experts, top_k); moe_balance_loss(model) sums the
                            layers' load-balancing losses of the last forward pass
build_model(config) returns the model config.kind names; model_param_count covers every variant.

Positions (chapter 06, helpers.positions), each applied where it belongs:

    learned, sinusoidal   a (T, d_model) row per position added to the token embeddings
    rope                  q and k rotated inside Attention.forward, after `project` and before the
                          K/V heads are repeated (v never); config.rope_base, config.rope_pairs
    alibi, relative       a (H, T_q, T_k) bias added to the scores (`attend`'s bias); T5's bias
                          (config.relative_buckets, relative_max_distance) is one table shared by
                          all layers, as in T5
    none                  nothing: without a causal mask the model is permutation-equivariant

Every position-dependent method takes an `offset` (TinyDecoder.forward(ids, offset=t) computes
tokens at positions t .. t + T - 1), or explicit positions (TinyDecoder.position_bias), so a KV
cache can process one new token at position t exactly as a full forward pass would.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention_scores, causal_mask, masked_softmax, scaled_dot_product_attention
from .ffn import (
    FeedForward,
    MoEFFN,  # chapter 05
    SwiGLUFFN,
    ffn_param_count,
    load_balancing_loss,  # chapter 05
    moe_param_count,  # chapter 05
    top_k_route,  # chapter 05
)
from .heads import (
    _require_heads,
    _require_weight,  # chapter 05
    attention_param_count,
    merge_heads,
    repeat_kv,
    split_heads,
)
from .norms import LayerNorm, RMSNorm, post_ln_block, pre_ln_block
from .positions import PAIR_LAYOUTS, ALiBi, RelativePositionBias, RotaryEmbedding, learned_positions, sinusoidal_table
from .shapes import (
    ShapeError,
    fmt_shape,
    require_bool_mask,
    require_float,
    require_positive_int,
    require_same_dtype,
    require_tensor,
)
from .threads import fastest_threads

__all__ = [
    "Attention",
    "DecoderBlock",
    "KVCache",
    "LATER_CHAPTERS",
    "LayerCache",
    "ModelConfig",
    "TinyDecoder",
    "attend",
    "cached_causal_mask",
    "cached_forward",
    "fused_attend",
    "fused_ffn",
    "fused_norm",
    "decoder_forward",
    "generate",
    "model_param_count",
    # chapter 05
    "BalancedMoEFFN",
    "CrossDecoderBlock",
    "EncoderBlock",
    "TinyEncoder",
    "TinyEncoderDecoder",
    "build_model",
    "cross_attention",
    "cross_attention_sublayer",
    "decoder_block",
    "moe_balance_loss",
    "parallel_block",
    "self_attention_sublayer",
]

CHOICES = {
    "norm_placement": ("pre", "post"),
    "norm": ("layernorm", "rmsnorm"),
    "ffn": ("gelu", "swiglu", "moe"),
    "positions": ("none", "learned", "sinusoidal", "rope", "alibi", "relative"),
    "kind": ("decoder", "encoder", "encoder-decoder"),  # chapter 05
    "block": ("sequential", "parallel"),  # chapter 05
    "kernels": ("course", "fused"),  # chapter 08: the chapters' own functions, or torch's fused kernels
}

# (field, value) -> the chapter that adds it to the shared model. Empty since chapters 05 and 06
# landed; a value a future chapter adds is listed here (and refused, naming it) until it exists.
LATER_CHAPTERS: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class ModelConfig:
    """What a TinyDecoder is made of. d_ff=None means 4 * d_model; n_kv_heads=None means n_heads."""

    vocab_size: int
    d_model: int = 64
    n_heads: int = 4
    n_kv_heads: int | None = None  # key/value heads: n_heads (MHA), fewer (GQA), 1 (MQA)
    d_ff: int | None = None  # FFN width
    n_layers: int = 2
    max_seq_len: int = 256  # rows of the learned position table
    norm_placement: str = "pre"  # "pre" or "post"
    norm: str = "layernorm"  # "layernorm" or "rmsnorm"
    ffn: str = "gelu"  # "gelu" (GPT-2 MLP) or "swiglu" (Llama MLP)
    positions: str = "learned"  # "none", "learned", "sinusoidal", "rope", "alibi" or "relative" (chapter 06)
    tie_weights: bool = True  # the LM head reuses the token embedding matrix
    causal: bool = True  # decoder: each token sees itself and the past only
    bias: bool = False  # biases in the FFN's linear layers (attention never has them)
    # Chapter 06's position settings (each used only by its method):
    rope_base: float = 10000.0  # rope: pair k turns rope_base^(-2k / d_head) radians per position
    rope_pairs: str = "half"  # rope: "half" (channels k, k + d_head/2: HF Llama) or "interleaved" (2k, 2k+1: GPT-J)
    rope_scale: float = 1.0  # rope: positions read as p / rope_scale (position interpolation; HF's linear factor)
    sinusoidal_scale: float = 1.0  # sinusoidal: the table is multiplied by this before it is added (2017: 1)
    relative_buckets: int = 32  # relative: T5's number of distance buckets (per direction when not causal: half)
    relative_max_distance: int = 128  # relative: distances beyond this share the last bucket
    # chapter 05: which model (TinyDecoder, TinyEncoder, TinyEncoderDecoder), the block's layout
    # (x + attn(norm(x)) + ffn(norm(x)) for "parallel"), and the MoE FFN's experts (ffn="moe")
    kind: str = "decoder"  # "decoder" (GPT), "encoder" (BERT) or "encoder-decoder" (T5)
    block: str = "sequential"  # "sequential" or "parallel" (GPT-J, PaLM)
    n_experts: int = 4  # ffn="moe": experts per layer
    top_k: int = 2  # ffn="moe": experts per token
    kernels: str = "course"  # "course" (the chapters' functions, weights on request) or "fused" (same numbers, faster)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_heads", "max_seq_len"):
            _positive(name, getattr(self, name))
        if isinstance(self.n_layers, bool) or not isinstance(self.n_layers, int) or self.n_layers < 0:
            raise ValueError(f"ModelConfig: n_layers must be an int >= 0 (0: embeddings straight to the "
                             f"head, a bigram model); got {self.n_layers!r}")
        for name in ("n_kv_heads", "d_ff"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        for name in ("tie_weights", "causal", "bias"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"ModelConfig: {name} must be True or False; got {getattr(self, name)!r}")
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if (name, value) in LATER_CHAPTERS:
                raise ValueError(
                    f"ModelConfig: {name}={value!r} is added to the shared model in chapter "
                    f"{LATER_CHAPTERS[name, value]}; until then choose one of {allowed}")
            if value not in allowed:
                raise ValueError(f"ModelConfig: {name} must be one of {allowed}; got {value!r}")
        if self.d_model % self.n_heads:
            raise ShapeError(f"ModelConfig: d_model = {self.d_model} is not divisible by n_heads = "
                             f"{self.n_heads}; every head needs the same width d_head = d_model / n_heads")
        if self.n_heads % self.kv_heads:
            raise ShapeError(f"ModelConfig: n_heads = {self.n_heads} is not divisible by n_kv_heads = "
                             f"{self.kv_heads}; each key/value head serves n_heads / n_kv_heads query heads")
        _check_block_variants(self)  # chapter 05
        self._check_positions()

    def _check_positions(self) -> None:
        """Chapter 06's settings."""
        if isinstance(self.rope_base, bool) or not isinstance(self.rope_base, (int, float)) or not self.rope_base > 1:
            raise ValueError(f"ModelConfig: rope_base must be a number > 1; got {self.rope_base!r}")
        if self.rope_pairs not in PAIR_LAYOUTS:
            raise ValueError(f"ModelConfig: rope_pairs must be one of {PAIR_LAYOUTS}; got {self.rope_pairs!r}")
        for name in ("rope_scale", "sinusoidal_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise ValueError(f"ModelConfig: {name} must be a finite number > 0; got {value!r}")
        for name in ("relative_buckets", "relative_max_distance"):
            _positive(name, getattr(self, name))
        if self.positions == "rope" and self.d_head % 2:
            raise ShapeError(f"ModelConfig: positions='rope' rotates pairs of channels, so d_head = d_model / "
                             f"n_heads = {self.d_head} must be even")
        if self.positions == "relative":
            per_direction = self.relative_buckets if self.causal else self.relative_buckets // 2
            if per_direction < 2 or self.relative_max_distance <= per_direction // 2:
                raise ValueError(f"ModelConfig: positions='relative' needs at least 2 buckets per direction and "
                                 f"relative_max_distance > buckets per direction / 2; got relative_buckets = "
                                 f"{self.relative_buckets}, relative_max_distance = {self.relative_max_distance}")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def ffn_width(self) -> int:
        return 4 * self.d_model if self.d_ff is None else self.d_ff

    def describe(self) -> str:
        return ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self))


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"ModelConfig: {name} must be a positive int; got {value!r}")


def _norm(config: ModelConfig) -> nn.Module:
    return LayerNorm(config.d_model) if config.norm == "layernorm" else RMSNorm(config.d_model)


# ---------------------------------------------------------------------------------------------
# The attention sublayer
# ---------------------------------------------------------------------------------------------


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
           bias: torch.Tensor | None = None, *, fused: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The attention core of the shared model: chapter 01's attention, with an optional score bias.

    q (B, H, T_q, d_head), k and v (B, H, T_k, d_head) (K/V heads already repeated for GQA),
    mask bool broadcastable to (B, H, T_q, T_k) (True = may attend), bias float broadcastable to
    (B, H, T_q, T_k), added to the scaled scores before the mask (relative-position biases such as
    ALiBi or T5's live here) -> (out (B, H, T_q, d_head), weights (B, H, T_q, T_k)).

    fused=True computes the same out with torch's kernel (`fused_attend`) and returns weights None:
    a fused kernel never forms the (T_q, T_k) weight matrix, so it cannot hand it back.
    """
    if fused:
        return fused_attend(q, k, v, mask, bias), None  # (B, H, T_q, d_head), no weights
    if bias is None:
        return scaled_dot_product_attention(q, k, v, mask)  # (B, H, T_q, d_head), (B, H, T_q, T_k)
    scores = attention_scores(q, k)  # (B, H, T_q, T_k): q kᵀ / sqrt(d_head)
    if bias.dtype != scores.dtype or not bias.is_floating_point():
        raise TypeError(f"attend: bias must be a float tensor of the scores' dtype {scores.dtype}; got {bias.dtype}")
    try:
        scores = scores + bias  # (B, H, T_q, T_k)
    except RuntimeError:
        raise ShapeError(f"attend: bias must broadcast to the scores (B, H, T_q, T_k) = {fmt_shape(scores.shape)}; "
                         f"got {fmt_shape(bias.shape)}") from None
    weights = masked_softmax(scores, mask)  # (B, H, T_q, T_k)
    return weights @ v, weights  # (B, H, T_q, d_head), (B, H, T_q, T_k)


# Chapter 08: the fused path. ------------------------------------------------------------------


def fused_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                 bias: torch.Tensor | None = None) -> torch.Tensor:
    """attend's output through torch.nn.functional.scaled_dot_product_attention: out (B, H, T_q, d_head).

    Same inputs and conventions as `attend` (bool mask True = may attend; bias added to the scaled
    scores; a query row with every key blocked gives zeros, which torch's kernel also returns). The
    kernel computes softmax(q kᵀ / sqrt(d_head) + attn_mask) v in tiles without keeping the weights,
    so it is faster and lighter but returns no weights. How the course's inputs map onto it:

        mask only                 attn_mask = mask (bool, the same convention)
        the causal (T, T) mask    is_causal=True (the kernel skips the blocked tiles)
        bias (and mask)           attn_mask = bias where allowed, -inf where blocked (a float mask)
    """
    fn = "fused_attend"
    for name, t in (("q", q), ("k", k), ("v", v)):
        require_float(fn, name, t, "(..., T, d_head)")
    if k.shape[-1] != q.shape[-1] or k.shape[:-1] != v.shape[:-1]:
        raise ShapeError(f"{fn}: q {fmt_shape(q.shape)} = (..., T_q, d_head), k {fmt_shape(k.shape)} and "
                         f"v {fmt_shape(v.shape)} = (..., T_k, d_head) must agree on d_head and T_k")
    scores_shape = (*torch.broadcast_shapes(q.shape[:-2], k.shape[:-2]), q.shape[-2], k.shape[-2])
    T_q, T_k = q.shape[-2], k.shape[-2]
    if mask is not None:
        require_bool_mask(fn, mask, scores_shape)
        if bias is None and mask.dim() == 2 and T_q == T_k and torch.equal(mask, causal_mask(T_q, device=mask.device)):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T_q, d_head)
    if bias is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, T_q, d_head)
    if bias.dtype != q.dtype or not bias.is_floating_point():
        raise TypeError(f"{fn}: bias must be a float tensor of the scores' dtype {q.dtype}; got {bias.dtype}")
    try:
        torch.broadcast_shapes(bias.shape, scores_shape)
    except RuntimeError:
        raise ShapeError(f"{fn}: bias must broadcast to the scores (B, H, T_q, T_k) = {fmt_shape(scores_shape)}; "
                         f"got {fmt_shape(bias.shape)}") from None
    if mask is not None:
        bias = bias.masked_fill(~mask, float("-inf"))  # broadcast (..., T_q, T_k): blocked scores -> -inf
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, H, T_q, d_head)


_FUSED_ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda h: F.gelu(h, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


def fused_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """norm(x) through torch's kernel: F.layer_norm or F.rms_norm with the module's own gamma (and beta)."""
    if type(norm) is LayerNorm:
        return F.layer_norm(x, norm.weight.shape, norm.weight, norm.bias, norm.eps)  # (..., d_model)
    if type(norm) is RMSNorm:
        return F.rms_norm(x, norm.weight.shape, norm.weight, norm.eps)  # (..., d_model)
    return norm(x)  # any other norm: its own forward


def fused_ffn(ffn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """ffn(x) with torch's activations and, for SwiGLU, one matmul for the gate and up projections.

    A mixture of experts (chapter 05) routes tokens with the chapter's own function: its forward runs."""
    if type(ffn) is FeedForward:
        h = _FUSED_ACTIVATIONS[ffn.activation](F.linear(x, ffn.fc1.weight, ffn.fc1.bias))  # (..., d_ff)
        return F.linear(h, ffn.fc2.weight, ffn.fc2.bias)  # (..., d_model)
    if type(ffn) is SwiGLUFFN:
        w = torch.cat([ffn.gate.weight, ffn.up.weight])  # (2 d_ff, d_model)
        gate, up = F.linear(x, w).chunk(2, dim=-1)  # (..., d_ff) x 2
        return F.linear(F.silu(gate) * up, ffn.down.weight)  # (..., d_model)
    return ffn(x)


class Attention(nn.Module):
    """The shared model's attention sublayer: H query heads, H_kv key/value heads, no biases.

    Self-attention reads queries, keys and values from x; cross-attention (chapter 05) reads keys
    and values from another sequence, `source` (the encoder's output). The steps are kept apart so
    that later chapters add theirs in one place each: rotate q and k (RoPE, chapter 06) after
    `project`, keep K and V in a cache (chapter 07) before the heads are repeated, pass a score
    bias (ALiBi, T5, chapter 06) to `attend`.

        attn = Attention(config)
        out, weights = attn(x, mask)              # (B, T, d_model), (B, H, T, T)
        out, weights = attn(x, mask, source=mem)  # (B, T_q, d_model), (B, H, T_q, T_src)

    The four nn.Linear layers are named as in helpers.heads.MultiHeadAttention (and Llama), and the
    numbers are chapter 02's multi_head_attention / grouped_query_attention.

    With config.kernels = "fused" (chapter 08), a call with need_weights=False takes the fast path,
    `fused_forward` (same numbers: one matmul for Q, K and V, torch's fused attention kernel) and
    returns weights None; a call that needs the weights (the default) takes the course path, because
    a fused kernel never forms them.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d_model, n_heads, n_kv_heads = config.d_model, config.n_heads, config.kv_heads
        self.d_head = _require_heads("Attention", d_model, n_heads, n_kv_heads)
        self.d_model, self.n_heads, self.n_kv_heads = d_model, n_heads, n_kv_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=False)  # weight (d_model, d_model)
        self.k_proj = nn.Linear(d_model, n_kv_heads * self.d_head, bias=False)  # (H_kv * d_head, d_model)
        self.v_proj = nn.Linear(d_model, n_kv_heads * self.d_head, bias=False)  # (H_kv * d_head, d_model)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)  # weight (d_model, d_model)
        # Chapter 06: RoPE has no parameters; it rotates q and k of self-attention only.
        self.rope = (RotaryEmbedding(self.d_head, config.rope_base, config.rope_pairs, config.rope_scale)
                     if config.positions == "rope" else None)
        self.fused = config.kernels == "fused"  # chapter 08: the fast path when no weights are needed

    def _require_input(self, name: str, x: torch.Tensor, layout: str) -> None:
        require_float("Attention", name, x, layout)
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ShapeError(f"Attention: {name} must be {layout} with d_model = {self.d_model}; "
                             f"got {fmt_shape(x.shape)}")

    def project(self, x: torch.Tensor, source: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T_q, d_model) [, source (B, T_k, d_model)] -> q (B, H, T_q, d_head), k, v (B, H_kv, T_k, d_head)."""
        self._require_input("x", x, "(B, T_q, d_model)")
        if source is None:
            source = x  # self-attention: keys and values from the same tokens
        else:
            self._require_input("source", source, "(B, T_k, d_model)")
            if source.shape[0] != x.shape[0]:
                raise ShapeError(f"Attention: x {fmt_shape(x.shape)} and source {fmt_shape(source.shape)} "
                                 f"must have the same batch size B")
        q = split_heads(self.q_proj(x), self.n_heads)  # (B, T_q, d_model) -> (B, H, T_q, d_head)
        k = split_heads(self.k_proj(source), self.n_kv_heads)  # (B, T_k, H_kv * d_head) -> (B, H_kv, T_k, d_head)
        v = split_heads(self.v_proj(source), self.n_kv_heads)  # (B, H_kv, T_k, d_head)
        return q, k, v

    def rotate(self, q: torch.Tensor, k: torch.Tensor, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE (chapter 06): q (B, H, T_q, d_head) and k (B, H_kv, T_k, d_head) of tokens at positions
        offset, offset + 1, ... rotated; unchanged when the model does not use RoPE. Never v."""
        if self.rope is None:
            return q, k
        return self.rope(q, offset), self.rope(k, offset)  # same shapes

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *, source: torch.Tensor | None = None,
                bias: torch.Tensor | None = None, offset: int = 0,
                need_weights: bool = True,
                cache: LayerCache | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T_q, d_model), mask bool broadcastable to (B, H, T_q, T_k) [, source, bias]
        -> (out (B, T_q, d_model), weights (B, H, T_q, T_k), or None from the fused path).

        offset: the position of x's first token (RoPE rotates q and k of self-attention by it).
        cache (chapter 07): this layer's KV cache; the new k and v are appended to it and the
        queries attend to every cached key, T_k = cached + T_q (give a bottom-right causal mask)."""
        if self.fused and not need_weights:  # chapter 08: the fast path
            return self.fused_forward(x, mask, source=source, bias=bias, offset=offset, cache=cache), None
        q, k, v = self.project(x, source)  # (B, H, T_q, d_head), (B, H_kv, T_k, d_head) x 2
        if source is None:
            q, k = self.rotate(q, k, offset)  # RoPE: (B, H, T_q, d_head), (B, H_kv, T_k, d_head)
        if cache is not None:  # chapter 07: keep the H_kv heads (what GQA saves), before the repeat
            k, v = cache.update(k, v)  # (B, H_kv, T_cached + T_q, d_head) x 2
        group = self.n_heads // self.n_kv_heads  # query heads per key/value head
        k, v = repeat_kv(k, group), repeat_kv(v, group)  # (B, H, T_k, d_head): head h reads K/V head h // group
        heads, weights = attend(q, k, v, mask, bias)  # (B, H, T_q, d_head), (B, H, T_q, T_k)
        return self.o_proj(merge_heads(heads)), weights  # (B, T_q, d_model), (B, H, T_q, T_k)

    def fused_forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *, causal: bool = False,
                      source: torch.Tensor | None = None, bias: torch.Tensor | None = None, offset: int = 0,
                      cache: LayerCache | None = None) -> torch.Tensor:
        """The fast path (chapter 08): forward's output with fewer, larger operations; out (B, T_q, d_model).

        The same parameters and steps as forward, but Q, K and V come from one matmul with the three
        weights stacked (K and V from one for cross-attention), the heads are views, and the scores
        never exist: torch's F.scaled_dot_product_attention computes softmax(q kᵀ / sqrt(d_head)) v in
        one call. causal=True asks for the causal mask aligned to the cache (is_causal=True without a
        cache; no mask at all for one new token, which may see every cached key); mask and bias are
        forward's. Inputs are not validated here: the model validated its ids once.
        """
        B, T_q, _ = x.shape
        H, H_kv, d_head = self.n_heads, self.n_kv_heads, self.d_head
        d_kv = H_kv * d_head
        if source is None and B * T_q < self.d_model:
            # few rows (a decoding step): stacking the weights would copy more than the one matmul saves
            q = F.linear(x, self.q_proj.weight)  # (B, T_q, d_model)
            k, v = F.linear(x, self.k_proj.weight), F.linear(x, self.v_proj.weight)  # (B, T_q, d_kv) x 2
        elif source is None:
            w_qkv = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])  # (d_model + 2 d_kv, d_model)
            q, k, v = F.linear(x, w_qkv).split([self.d_model, d_kv, d_kv], dim=-1)  # (B, T, d_model), (B, T, d_kv) x 2
        else:
            q = F.linear(x, self.q_proj.weight)  # (B, T_q, d_model)
            w_kv = torch.cat([self.k_proj.weight, self.v_proj.weight])  # (2 d_kv, d_model)
            k, v = F.linear(source, w_kv).split([d_kv, d_kv], dim=-1)  # (B, T_k, d_kv) x 2
        q = q.view(B, T_q, H, d_head).transpose(1, 2)  # (B, H, T_q, d_head)
        k = k.view(B, -1, H_kv, d_head).transpose(1, 2)  # (B, H_kv, T_k, d_head)
        v = v.view(B, -1, H_kv, d_head).transpose(1, 2)  # (B, H_kv, T_k, d_head)
        if source is None:
            q, k = self.rotate(q, k, offset)  # RoPE
        cached = 0
        if cache is not None:
            cached = cache.length
            k, v = cache.update(k, v)  # (B, H_kv, cached + T_q, d_head) x 2
        if H_kv != H:
            k, v = k.repeat_interleave(H // H_kv, dim=1), v.repeat_interleave(H // H_kv, dim=1)  # (B, H, T_k, d_head)
        if causal and mask is None and bias is None and (cached == 0 or T_q == 1):
            # no cache: the kernel's own causal path; one new token after a cache sees every key: no mask
            heads = F.scaled_dot_product_attention(q, k, v, is_causal=cached == 0 and T_q > 1)  # (B, H, T_q, d_head)
        else:
            if causal:
                allowed = cached_causal_mask(T_q, cached + T_q, device=x.device)  # (T_q, T_k)
                mask = allowed if mask is None else mask & allowed
            heads = fused_attend(q, k, v, mask, bias)  # (B, H, T_q, d_head)
        out = heads.transpose(1, 2).reshape(B, T_q, self.d_model)  # (B, T_q, d_model): heads merged
        return F.linear(out, self.o_proj.weight)  # (B, T_q, d_model)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, d_head={self.d_head}"


# ---------------------------------------------------------------------------------------------
# One block
# ---------------------------------------------------------------------------------------------


class DecoderBlock(nn.Module):
    """Self-attention and an FFN, each wrapped in a residual connection and a norm.

    x (B, T, d_model) -> (B, T, d_model): the shape contract of every block.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"DecoderBlock: config must be a ModelConfig; got {type(config).__name__}")
        self.config = config
        self.norm1 = _norm(config)
        self.attn = Attention(config)
        # a parallel block (chapter 05) feeds both sublayers from norm1: it has no second norm
        self.norm2 = _norm(config) if config.block == "sequential" else None
        self.ffn = _ffn(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                return_weights: bool = False, *, bias: torch.Tensor | None = None, offset: int = 0,
                cache: LayerCache | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, d_model) -> out (B, T, d_model) [, weights (B, H, T, T)].

        mask: bool, True = may attend, broadcastable to (B, H, T, T). None means the causal mask
        when config.causal, else no mask. bias: a float score bias broadcastable to (B, H, T, T)
        (ALiBi, T5); offset: the position of x's first token (RoPE), both from chapter 06.
        cache (chapter 07): this layer's KV cache; then the default mask is the bottom-right
        aligned causal mask (T, cached + T).
        """
        fn = "DecoderBlock"
        require_float(fn, "x", x, "(B, T, d_model)")
        if x.shape[-1] != self.config.d_model:
            raise ShapeError(f"{fn}: x must be (B, T, d_model) with d_model = {self.config.d_model}; "
                             f"got {fmt_shape(x.shape)}")
        if self.attn.fused and not return_weights:  # chapter 08
            return self.fused_forward(x, mask, bias=bias, offset=offset, cache=cache)
        T = x.shape[1]
        if mask is None and self.config.causal:
            mask = (causal_mask(T, device=x.device) if cache is None  # (T, T)
                    else cached_causal_mask(T, cache.length + T, device=x.device))  # (T, cached + T)
        seen: list[torch.Tensor] = []

        def attend(h: torch.Tensor) -> torch.Tensor:
            out, weights = self.attn(h, mask, bias=bias, offset=offset, need_weights=return_weights,
                                     cache=cache)  # (B, T, d_model), (B, H, T, T_k) or None
            seen.append(weights)
            return out

        if self.config.block == "parallel":  # chapter 05
            out = parallel_block(x, attend, self.ffn, self.norm1)  # (B, T, d_model)
        else:
            block = pre_ln_block if self.config.norm_placement == "pre" else post_ln_block
            out = block(x, attend, self.ffn, self.norm1, self.norm2)  # (B, T, d_model)
        return (out, seen[0]) if return_weights else out

    def fused_forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *, bias: torch.Tensor | None = None,
                      offset: int = 0, cache: LayerCache | None = None) -> torch.Tensor:
        """The fast path (chapter 08): forward's equations on torch's kernels, no weights; (B, T, d_model).

        The same block equations as pre_ln_block, post_ln_block and parallel_block, written out, with
        the norms as F.layer_norm / F.rms_norm, the FFN as `fused_ffn` and attention as
        Attention.fused_forward (which applies the causal mask itself when mask is None)."""
        causal = mask is None and self.config.causal

        def attn(h: torch.Tensor) -> torch.Tensor:
            return self.attn.fused_forward(h, mask, causal=causal, bias=bias, offset=offset, cache=cache)

        if self.config.block == "parallel":  # x + attn(norm(x)) + ffn(norm(x))
            h = fused_norm(self.norm1, x)  # (B, T, d_model)
            return x + attn(h) + fused_ffn(self.ffn, h)
        if self.config.norm_placement == "pre":
            x = x + attn(fused_norm(self.norm1, x))  # (B, T, d_model)
            return x + fused_ffn(self.ffn, fused_norm(self.norm2, x))
        x = fused_norm(self.norm1, x + attn(x))  # (B, T, d_model): post-norm
        return fused_norm(self.norm2, x + fused_ffn(self.ffn, x))


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


def decoder_forward(ids: torch.Tensor, wte: torch.Tensor, wpe: torch.Tensor | None, blocks,
                    final_norm, lm_head: torch.Tensor | None = None) -> torch.Tensor:
    """The tour in one function: ids (B, T) -> logits (B, T, V).

    wte (V, d_model) token embeddings; wpe (T_max, d_model) learned positions or None; blocks: callables
    (B, T, d_model) -> (B, T, d_model); final_norm: a callable or None; lm_head (V, d_model), None = wte (tied).
    """
    fn = "decoder_forward"
    require_tensor(fn, "ids", ids)
    if ids.dim() != 2 or ids.is_floating_point() or ids.dtype == torch.bool:
        raise ShapeError(f"{fn}: ids must be an integer tensor of shape (B, T); got {fmt_shape(ids.shape)} "
                         f"of dtype {ids.dtype}")
    require_float(fn, "wte", wte, "(V, d_model)")
    V = wte.shape[0]
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= V):
        raise ValueError(f"{fn}: token ids must lie in 0..V-1 = 0..{V - 1}; got ids from {int(ids.min())} "
                         f"to {int(ids.max())}")
    T = ids.shape[1]
    h = wte[ids]  # (B, T, d_model): row ids[b, t] of the table
    if wpe is not None:
        require_float(fn, "wpe", wpe, "(T_max, d_model)")
        if T > wpe.shape[0]:
            raise ShapeError(f"{fn}: the sequence has T = {T} tokens but the position table wpe "
                             f"{fmt_shape(wpe.shape)} = (T_max, d_model) has only T_max = {wpe.shape[0]} rows")
        h = h + wpe[:T]  # (B, T, d_model) + (T, d_model): position t's row added to token t
    for block in blocks:
        h = block(h)  # (B, T, d_model) -> (B, T, d_model)
    if final_norm is not None:
        h = final_norm(h)  # (B, T, d_model)
    head = wte if lm_head is None else lm_head  # (V, d_model)
    return h @ head.T  # (B, T, V)


class TinyDecoder(nn.Module):
    """A decoder-only language model: embeddings, n_layers DecoderBlocks, final norm, LM head."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"TinyDecoder: config must be a ModelConfig; got {type(config).__name__}")
        _require_kind("TinyDecoder", config, "decoder")  # chapter 05
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)  # weight (V, d_model)
        self.pos_emb = nn.Embedding(config.max_seq_len, config.d_model) if config.positions == "learned" else None
        # Chapter 06's score biases: T5's learned table (shared by every layer) or ALiBi's fixed slopes.
        self.rel_bias = (RelativePositionBias(config.n_heads, config.relative_buckets, config.relative_max_distance,
                                              bidirectional=not config.causal)
                         if config.positions == "relative" else None)
        self.alibi = ALiBi(config.n_heads) if config.positions == "alibi" else None
        self.blocks = nn.ModuleList(DecoderBlock(config) for _ in range(config.n_layers))
        # A Post-LN block already ends with a norm; a Pre-LN stack needs one after its last block.
        self.final_norm = _norm(config) if config.norm_placement == "pre" else None
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)  # weight (V, d_model)
        self.apply(self._init_weights)
        if config.tie_weights:
            self.lm_head.weight = self.tok_emb.weight  # one tensor, two uses

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """GPT-2's initialization: weights N(0, 0.02^2), biases 0 (norms keep gamma 1, beta 0)."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def position_rows(self, T: int, offset: int = 0) -> torch.Tensor | None:
        """The absolute position rows for positions offset .. offset + T - 1: (T, d_model), or None when
        the model adds none (rope, alibi, relative, none). Learned rows past the table raise a ShapeError."""
        if self.config.positions == "sinusoidal":
            weight = self.tok_emb.weight
            table = sinusoidal_table(T, self.config.d_model, offset=offset, dtype=weight.dtype,
                                     device=weight.device)  # (T, d_model)
            scale = self.config.sinusoidal_scale
            return table if scale == 1 else table * scale  # (T, d_model)
        if self.pos_emb is not None:
            return learned_positions(self.pos_emb.weight, T, offset)  # (T, d_model)
        return None

    def position_bias(self, q_positions: torch.Tensor, k_positions: torch.Tensor) -> torch.Tensor | None:
        """The score bias of queries at q_positions (T_q,) against keys at k_positions (T_k,):
        (H, T_q, T_k) for alibi and relative, None for the other methods."""
        dtype = self.tok_emb.weight.dtype
        if self.alibi is not None:
            return self.alibi(q_positions, k_positions, dtype=dtype)  # (H, T_q, T_k)
        if self.rel_bias is not None:
            return self.rel_bias(q_positions, k_positions).to(dtype)  # (H, T_q, T_k)
        return None

    def forward(self, ids: torch.Tensor, return_weights: bool = False, *, offset: int = 0):
        """ids (B, T) -> logits (B, T, V) [, [weights (B, H, T, T) for each layer]].

        offset: the position of the first token (default 0). Without a KV cache the T tokens attend
        to each other only, at positions offset .. offset + T - 1."""
        weights: list[torch.Tensor] = []
        require_tensor("TinyDecoder", "ids", ids)
        if self.config.kernels == "fused" and not return_weights:  # chapter 08
            return self.fused_forward(ids, offset)
        T = ids.shape[-1] if ids.dim() else 0
        bias = None
        if self.config.positions in ("alibi", "relative") and T:
            positions = torch.arange(offset, offset + T, device=ids.device)  # (T,)
            bias = self.position_bias(positions, positions)  # (H, T, T)

        def run(block: DecoderBlock, keep: bool):
            def call(h: torch.Tensor) -> torch.Tensor:
                if not keep:  # no weights asked for: the fused path (chapter 08) may run
                    return block(h, bias=bias, offset=offset)  # (B, T, d_model)
                out, w = block(h, return_weights=True, bias=bias, offset=offset)  # (B, T, d_model), (B, H, T, T)
                weights.append(w)
                return out
            return call

        if self.config.positions == "learned" and offset == 0:
            wpe = self.pos_emb.weight  # the whole table: decoder_forward names T_max if T is longer
        else:
            wpe = self.position_rows(T, offset) if T and ids.dim() == 2 else None  # (T, d_model) or None
        lm_head = None if self.lm_head.weight is self.tok_emb.weight else self.lm_head.weight
        plain = not return_weights and offset == 0 and bias is None
        blocks = list(self.blocks) if plain else [run(b, return_weights) for b in self.blocks]
        logits = decoder_forward(ids, self.tok_emb.weight, wpe, blocks, self.final_norm, lm_head)  # (B, T, V)
        return (logits, weights) if return_weights else logits

    def fused_forward(self, ids: torch.Tensor, offset: int = 0, cache: KVCache | None = None) -> torch.Tensor:
        """The fast path (chapter 08): forward's logits (B, T, V) with torch's kernels, no weights.

        The tour of decoder_forward on the same parameters: F.embedding, position rows, each block's
        fused_forward, F.layer_norm / F.rms_norm, the head. cache: a KVCache (cached_forward passes
        it); the tokens then sit at positions len(cache) = offset onwards.
        """
        fn = "TinyDecoder"
        if ids.dim() != 2 or ids.shape[1] < 1 or ids.is_floating_point() or ids.dtype == torch.bool:
            raise ShapeError(f"{fn}: ids must be an integer tensor of shape (B, T) with T >= 1; got "
                             f"{fmt_shape(ids.shape)} of dtype {ids.dtype}")
        V, T = self.config.vocab_size, ids.shape[1]
        if int(ids.min()) < 0 or int(ids.max()) >= V:
            raise ValueError(f"{fn}: token ids must lie in 0..V-1 = 0..{V - 1}; got ids from {int(ids.min())} "
                             f"to {int(ids.max())}")
        h = F.embedding(ids, self.tok_emb.weight)  # (B, T, d_model)
        rows = self.position_rows(T, offset)  # (T, d_model) or None
        if rows is not None:
            h = h + rows  # (B, T, d_model)
        bias = None
        if self.alibi is not None or self.rel_bias is not None:
            q_pos = torch.arange(offset, offset + T, device=ids.device)  # (T,)
            k_pos = q_pos if cache is None else torch.arange(0, offset + T, device=ids.device)  # (T_k,)
            bias = self.position_bias(q_pos, k_pos)  # (H, T, T_k)
        layers = [None] * len(self.blocks) if cache is None else cache.layers
        for block, layer in zip(self.blocks, layers):
            h = block.fused_forward(h, bias=bias, offset=offset, cache=layer)  # (B, T, d_model)
        if self.final_norm is not None:
            h = fused_norm(self.final_norm, h)  # (B, T, d_model)
        return F.linear(h, self.lm_head.weight)  # (B, T, V)


def model_param_count(config: ModelConfig) -> int:
    """Parameters of TinyDecoder(config), each shared tensor counted once.

        V d (token embeddings) + T_max d (learned positions) + buckets H (relative: one shared table)
        + n_layers * (attention + FFN + 2 norms)        attention: chapter 02, FFN: chapter 03
        + final norm (Pre-LN) + V d (LM head, only when untied)
    A LayerNorm has 2 d parameters (gamma, beta), an RMSNorm d (gamma). Sinusoidal positions, RoPE
    and ALiBi have no parameters.
    """
    if not isinstance(config, ModelConfig):
        raise TypeError(f"model_param_count: config must be a ModelConfig; got {type(config).__name__}")
    if config.kind != "decoder":  # chapter 05: TinyEncoder, TinyEncoderDecoder
        return _encoder_model_param_count(config)
    d, V = config.d_model, config.vocab_size
    norm = _norm_param_count(config)
    attention = attention_param_count(d, config.n_heads, config.kv_heads)
    ffn = _ffn_param_count(config)
    embeddings = V * d + (config.max_seq_len * d if config.positions == "learned" else 0)
    embeddings += config.relative_buckets * config.n_heads if config.positions == "relative" else 0
    final = norm if config.norm_placement == "pre" else 0
    head = 0 if config.tie_weights else V * d
    norms_per_block = 1 if config.block == "parallel" else 2
    return embeddings + config.n_layers * (attention + ffn + norms_per_block * norm) + final + head


# ---------------------------------------------------------------------------------------------
# Chapter 05: cross-attention and the decoder block with cross-attention
# ---------------------------------------------------------------------------------------------


def cross_attention(x: torch.Tensor, memory: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor,
                    w_v: torch.Tensor, w_o: torch.Tensor, n_heads: int, n_kv_heads: int | None = None,
                    memory_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries from the decoder stream, keys and values from the encoder's output.

    x (B, T_tgt, d_model), memory (B, T_src, d_model); w_q, w_o (d_model, d_model); w_k, w_v
    (n_kv_heads * d_head, d_model) (n_kv_heads=None: n_heads); memory_mask (B, T_src) bool, True = a
    real source token (a key-padding mask: it blocks keys, never queries)
    -> (out (B, T_tgt, d_model), weights (B, H, T_tgt, T_src)).

    No causal mask: every target position may read the whole source, which is complete before
    decoding starts. Built from chapter 02's pieces (split_heads, repeat_kv, merge_heads) and
    chapter 01's scaled_dot_product_attention.
    """
    fn = "cross_attention"
    require_float(fn, "x", x, "(B, T_tgt, d_model)")
    require_float(fn, "memory", memory, "(B, T_src, d_model)")
    B, T_tgt, d_model = x.shape
    if memory.shape[0] != B or memory.shape[2] != d_model:
        raise ShapeError(f"{fn}: x is (B, T_tgt, d_model) = {fmt_shape(x.shape)}, so memory must be "
                         f"(B, T_src, d_model) with B = {B} and d_model = {d_model}; got {fmt_shape(memory.shape)}")
    T_src = memory.shape[1]
    n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
    d_head = _require_heads(fn, d_model, n_heads, n_kv_heads)
    kv_layout = "(n_kv_heads * d_head, d_model)"
    _require_weight(fn, "w_q", w_q, (d_model, d_model), "(d_model, d_model)")
    _require_weight(fn, "w_k", w_k, (n_kv_heads * d_head, d_model), kv_layout)
    _require_weight(fn, "w_v", w_v, (n_kv_heads * d_head, d_model), kv_layout)
    _require_weight(fn, "w_o", w_o, (d_model, d_model), "(d_model, d_model)")
    require_same_dtype(fn, x=x, memory=memory, w_q=w_q, w_k=w_k, w_v=w_v, w_o=w_o)
    mask = _memory_key_mask(fn, memory_mask, B, T_src)  # (B, 1, 1, T_src) or None
    q = split_heads(x @ w_q.T, n_heads)  # (B, T_tgt, d_model) -> (B, H, T_tgt, d_head)
    k = split_heads(memory @ w_k.T, n_kv_heads)  # (B, T_src, H_kv * d_head) -> (B, H_kv, T_src, d_head)
    v = split_heads(memory @ w_v.T, n_kv_heads)  # (B, H_kv, T_src, d_head)
    k = repeat_kv(k, n_heads // n_kv_heads)  # (B, H, T_src, d_head)
    v = repeat_kv(v, n_heads // n_kv_heads)  # (B, H, T_src, d_head)
    heads, weights = scaled_dot_product_attention(q, k, v, mask)  # (B, H, T_tgt, d_head), (B, H, T_tgt, T_src)
    return merge_heads(heads) @ w_o.T, weights  # (B, T_tgt, d_model), (B, H, T_tgt, T_src)


def decoder_block(x: torch.Tensor, memory: torch.Tensor, self_attn, cross_attn, ffn, norm1, norm2, norm3,
                  memory_mask: torch.Tensor | None = None, norm_placement: str = "pre") -> torch.Tensor:
    """The decoder block of an encoder-decoder: three residual sublayers.

    x (B, T_tgt, d_model) the decoder stream, memory (B, T_src, d_model) the encoder's output (already
    normalised by the encoder's final norm in a Pre-LN model: it is not normalised again here);
    self_attn(h, mask) -> (B, T_tgt, d_model) with mask a (T_tgt, T_tgt) bool causal mask;
    cross_attn(h, memory, memory_mask) -> (B, T_tgt, d_model); ffn, norm1..3: (B, T, d_model) -> same.

        pre   x = x + self_attn(norm1(x), causal)
              x = x + cross_attn(norm2(x), memory, memory_mask)
              x = x + ffn(norm3(x))                             T5, torch norm_first=True
        post  x = norm1(x + self_attn(x, causal))
              x = norm2(x + cross_attn(x, memory, memory_mask))
              x = norm3(x + ffn(x))                             the 2017 Transformer, torch's default
    """
    fn = "decoder_block"
    require_float(fn, "x", x, "(B, T_tgt, d_model)")
    require_float(fn, "memory", memory, "(B, T_src, d_model)")
    if norm_placement not in ("pre", "post"):
        raise ValueError(f"{fn}: norm_placement must be 'pre' or 'post'; got {norm_placement!r}")
    causal = causal_mask(x.shape[1], device=x.device)  # (T_tgt, T_tgt): the decoder never sees its future
    if norm_placement == "pre":
        x = x + self_attn(norm1(x), causal)  # (B, T_tgt, d_model)
        x = x + cross_attn(norm2(x), memory, memory_mask)  # (B, T_tgt, d_model): reads the source
        return x + ffn(norm3(x))  # (B, T_tgt, d_model)
    x = norm1(x + self_attn(x, causal))  # (B, T_tgt, d_model)
    x = norm2(x + cross_attn(x, memory, memory_mask))  # (B, T_tgt, d_model)
    return norm3(x + ffn(x))  # (B, T_tgt, d_model)


def _memory_key_mask(fn: str, memory_mask: torch.Tensor | None, B: int, T_src: int) -> torch.Tensor | None:
    """A (B, T_src) key-padding mask (True = real source token) -> (B, 1, 1, T_src) for the scores."""
    if memory_mask is None:
        return None
    require_tensor(fn, "memory_mask", memory_mask)
    if memory_mask.dtype != torch.bool or tuple(memory_mask.shape) != (B, T_src):
        raise ShapeError(f"{fn}: memory_mask must be a bool key-padding mask of shape (B, T_src) = "
                         f"({B}, {T_src}), True = real source token; got {fmt_shape(memory_mask.shape)} "
                         f"of dtype {memory_mask.dtype}")
    return memory_mask[:, None, None, :]  # (B, 1, 1, T_src): blocks keys, for every head and query


def self_attention_sublayer(attn: Attention, weights: list | None = None):
    """attn as the function decoder_block calls: (h (B, T, d_model), mask) -> (B, T, d_model).

    weights: a list that collects each call's attention weights (B, H, T, T), or None.
    """
    def sublayer(h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        out, w = attn(h, mask)  # (B, T, d_model), (B, H, T, T)
        if weights is not None:
            weights.append(w)
        return out
    return sublayer


def cross_attention_sublayer(attn: Attention, weights: list | None = None):
    """attn as cross-attention: (h (B, T_tgt, d_model), memory (B, T_src, d_model), memory_mask (B, T_src)
    or None) -> (B, T_tgt, d_model). Keys and values come from memory; no causal mask."""
    def sublayer(h: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = _memory_key_mask("cross-attention", memory_mask, memory.shape[0], memory.shape[1])
        out, w = attn(h, mask, source=memory)  # (B, T_tgt, d_model), (B, H, T_tgt, T_src)
        if weights is not None:
            weights.append(w)
        return out
    return sublayer


def parallel_block(x: torch.Tensor, attn, ffn, norm) -> torch.Tensor:
    """GPT-J's and PaLM's parallel block: x + attn(norm(x)) + ffn(norm(x)).

    Both sublayers read the same normalised input, so they can run at the same time (and their
    input projections can be fused into one matmul); one norm per block instead of two.
    """
    require_float("parallel_block", "x", x, "(B, T, d_model)")
    h = norm(x)  # (B, T, d_model), computed once for both sublayers
    return x + attn(h) + ffn(h)  # (B, T, d_model)


# ---------------------------------------------------------------------------------------------
# Chapter 05: the config's block variants (kind, parallel, MoE)
# ---------------------------------------------------------------------------------------------


def _check_block_variants(config: ModelConfig) -> None:
    for name in ("n_experts", "top_k"):
        _positive(name, getattr(config, name))
    if config.ffn == "moe" and config.top_k > config.n_experts:
        raise ValueError(f"ModelConfig: top_k = {config.top_k} is more than n_experts = {config.n_experts}")
    if config.block == "parallel" and config.norm_placement != "pre":
        raise ValueError("ModelConfig: block='parallel' reads one normalised input, x + attn(norm(x)) + "
                         "ffn(norm(x)), so it needs norm_placement='pre'")
    if config.block == "parallel" and config.kind == "encoder-decoder":
        raise ValueError("ModelConfig: block='parallel' is defined for decoder-only and encoder-only blocks "
                         "(two sublayers); an encoder-decoder's decoder block has three")


def _require_kind(fn: str, config: ModelConfig, kind: str) -> None:
    if config.kind != kind:
        model = {"decoder": "TinyDecoder", "encoder": "TinyEncoder", "encoder-decoder": "TinyEncoderDecoder"}
        raise ValueError(f"{fn}: config.kind must be {kind!r}; got {config.kind!r} (build it with "
                         f"{model[config.kind]}, or build_model(config))")


class BalancedMoEFFN(MoEFFN):
    """Chapter 03's MoEFFN that keeps its auxiliary load-balancing loss from the last forward pass.

    After a forward pass, `balance_loss` is Switch Transformer's n_experts * sum_i f_i P_i over the
    tokens of that pass (0-d, carries the router's gradient); moe_balance_loss(model) sums it over layers.
    """

    def __init__(self, d_model: int, d_ff: int, n_experts: int, k: int) -> None:
        super().__init__(d_model, d_ff, n_experts, k, gated=True)
        self.balance_loss: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = x @ self.router.weight.T  # (..., n_experts): the same logits moe_forward routes by
        _, chosen = top_k_route(logits, self.k)  # (..., k)
        self.balance_loss = load_balancing_loss(logits, chosen)  # 0-d
        return super().forward(x)  # (..., d_model)


def _ffn(config: ModelConfig) -> nn.Module:
    """The FFN sublayer the config names: GPT-2's MLP, Llama's SwiGLU, or a mixture of SwiGLU experts."""
    if config.ffn == "gelu":
        return FeedForward(config.d_model, config.ffn_width, activation="gelu", bias=config.bias)
    if config.ffn == "swiglu":
        return SwiGLUFFN(config.d_model, config.ffn_width)
    return BalancedMoEFFN(config.d_model, config.ffn_width, config.n_experts, config.top_k)


def moe_balance_loss(model: nn.Module) -> torch.Tensor:
    """The sum over a model's MoE layers of their load-balancing losses from its last forward pass.

    Add it to the training loss with a small coefficient (Switch Transformer: 0.01). 1 per layer means
    perfectly balanced routing, n_experts per layer everything on one expert.
    """
    layers = [m for m in model.modules() if isinstance(m, BalancedMoEFFN)]
    if not layers:
        raise ValueError("moe_balance_loss: the model has no MoE layer (build it with ffn='moe')")
    if any(m.balance_loss is None for m in layers):
        raise ValueError("moe_balance_loss: run a forward pass first; the loss is that pass's routing statistic")
    return torch.stack([m.balance_loss for m in layers]).sum()


def _norm_param_count(config: ModelConfig) -> int:
    """A LayerNorm has gamma and beta (2 d), an RMSNorm gamma (d)."""
    return 2 * config.d_model if config.norm == "layernorm" else config.d_model


def _ffn_param_count(config: ModelConfig) -> int:
    d = config.d_model
    if config.ffn == "gelu":
        return ffn_param_count(d, config.ffn_width, gated=False, bias=config.bias)
    if config.ffn == "swiglu":
        return ffn_param_count(d, config.ffn_width, gated=True, bias=False)
    return moe_param_count(d, config.ffn_width, config.n_experts, config.top_k, gated=True)["total"]


# ---------------------------------------------------------------------------------------------
# Chapter 05: encoder block, decoder block with cross-attention, the two other model kinds
# ---------------------------------------------------------------------------------------------


class EncoderBlock(DecoderBlock):
    """Bidirectional self-attention + FFN (BERT, T5's encoder): a DecoderBlock without the causal mask.

    forward(x, mask=None): mask bool broadcastable to (B, H, T, T), e.g. a key-padding mask
    bidirectional_mask(lengths, T)[:, None]; None = every token sees every token.
    """

    def __init__(self, config: ModelConfig) -> None:
        if not isinstance(config, ModelConfig):
            raise TypeError(f"EncoderBlock: config must be a ModelConfig; got {type(config).__name__}")
        super().__init__(replace(config, causal=False))


class CrossDecoderBlock(nn.Module):
    """The decoder block of an encoder-decoder: causal self-attention, cross-attention, FFN.

    Three residual sublayers with their norms (norm1, norm2, norm3), Pre-LN or Post-LN, in the order
    and with the names of torch.nn.TransformerDecoderLayer; the equations are decoder_block's.
    x (B, T_tgt, d_model), memory (B, T_src, d_model) -> (B, T_tgt, d_model).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"CrossDecoderBlock: config must be a ModelConfig; got {type(config).__name__}")
        self.config = config
        self.norm1 = _norm(config)
        self.self_attn = Attention(config)
        self.norm2 = _norm(config)
        self.cross_attn = Attention(config)  # H_kv key/value heads read memory: GQA works here too
        self.norm3 = _norm(config)
        self.ffn = _ffn(config)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None = None,
                return_weights: bool = False):
        """x (B, T_tgt, d_model), memory (B, T_src, d_model), memory_mask (B, T_src) bool (True = real)
        -> out (B, T_tgt, d_model) [, (self weights (B, H, T_tgt, T_tgt), cross weights (B, H, T_tgt, T_src))]."""
        fn = "CrossDecoderBlock"
        for name, t in (("x", x), ("memory", memory)):
            require_float(fn, name, t, "(B, T, d_model)")
            if t.shape[-1] != self.config.d_model:
                raise ShapeError(f"{fn}: {name} must be (B, T, d_model) with d_model = {self.config.d_model}; "
                                 f"got {fmt_shape(t.shape)}")
        if self.self_attn.fused and not return_weights:  # chapter 08: decoder_block's equations, fast path
            return self.fused_forward(x, memory, memory_mask)
        self_w: list[torch.Tensor] = []
        cross_w: list[torch.Tensor] = []
        out = decoder_block(x, memory, self_attention_sublayer(self.self_attn, self_w),
                            cross_attention_sublayer(self.cross_attn, cross_w), self.ffn,
                            self.norm1, self.norm2, self.norm3, memory_mask,
                            self.config.norm_placement)  # (B, T_tgt, d_model)
        return (out, (self_w[0], cross_w[0])) if return_weights else out

    def fused_forward(self, x: torch.Tensor, memory: torch.Tensor,
                      memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The fast path (chapter 08): decoder_block's three sublayers on torch's kernels; (B, T_tgt, d_model)."""
        mask = _memory_key_mask("CrossDecoderBlock", memory_mask, memory.shape[0], memory.shape[1])  # (B, 1, 1, T_src)

        def self_attn(h: torch.Tensor) -> torch.Tensor:
            return self.self_attn.fused_forward(h, causal=True)  # (B, T_tgt, d_model)

        def cross_attn(h: torch.Tensor) -> torch.Tensor:
            return self.cross_attn.fused_forward(h, mask, source=memory)  # (B, T_tgt, d_model)

        if self.config.norm_placement == "pre":
            x = x + self_attn(fused_norm(self.norm1, x))  # (B, T_tgt, d_model)
            x = x + cross_attn(fused_norm(self.norm2, x))  # (B, T_tgt, d_model)
            return x + fused_ffn(self.ffn, fused_norm(self.norm3, x))
        x = fused_norm(self.norm1, x + self_attn(x))  # (B, T_tgt, d_model)
        x = fused_norm(self.norm2, x + cross_attn(x))  # (B, T_tgt, d_model)
        return fused_norm(self.norm3, x + fused_ffn(self.ffn, x))


def _final_norm(config: ModelConfig, norm: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """A stack's final norm: the course module, or its fused kernel on the fast path (chapter 08)."""
    return fused_norm(norm, h) if config.kernels == "fused" else norm(h)


def _require_ids(fn: str, name: str, ids: torch.Tensor, config: ModelConfig) -> None:
    require_tensor(fn, name, ids)
    if ids.dim() != 2 or ids.is_floating_point() or ids.dtype == torch.bool:
        raise ShapeError(f"{fn}: {name} must be an integer tensor of shape (B, T); got {fmt_shape(ids.shape)} "
                         f"of dtype {ids.dtype}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= config.vocab_size):
        raise ValueError(f"{fn}: token ids must lie in 0..V-1 = 0..{config.vocab_size - 1}; got {name} from "
                         f"{int(ids.min())} to {int(ids.max())}")
    if config.positions == "learned" and ids.shape[1] > config.max_seq_len:
        raise ShapeError(f"{fn}: {name} has T = {ids.shape[1]} tokens but the position table has only "
                         f"max_seq_len = {config.max_seq_len} rows")


def _key_padding(fn: str, lengths, B: int, T: int, device) -> torch.Tensor | None:
    """lengths (B,) -> (B, T) bool, True = real token; None -> None."""
    if lengths is None:
        return None
    lengths = torch.as_tensor(lengths, device=device)
    if tuple(lengths.shape) != (B,) or lengths.is_floating_point() or lengths.dtype == torch.bool:
        raise ShapeError(f"{fn}: lengths must be B = {B} integers, one per sequence; got {fmt_shape(lengths.shape)} "
                         f"of dtype {lengths.dtype}")
    if int(lengths.min()) < 1 or int(lengths.max()) > T:
        raise ValueError(f"{fn}: every length must lie in 1..T = 1..{T}; got {lengths.tolist()}")
    return torch.arange(T, device=device)[None, :] < lengths[:, None]  # (B, T)


class _Embedded(nn.Module):
    """Shared parts of TinyEncoder and TinyEncoderDecoder: token embeddings, learned positions, head."""

    def _setup(self, config: ModelConfig, fn: str) -> None:
        if not isinstance(config, ModelConfig):
            raise TypeError(f"{fn}: config must be a ModelConfig; got {type(config).__name__}")
        if config.positions not in ("none", "learned"):
            raise ValueError(f"{fn}: positions must be 'none' or 'learned' for this model; got {config.positions!r}")
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)  # weight (V, d_model)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)  # weight (V, d_model)

    def _finish(self) -> None:
        self.apply(TinyDecoder._init_weights)
        if self.config.tie_weights:
            self.lm_head.weight = self.tok_emb.weight  # one tensor, two uses

    def _positions(self) -> nn.Embedding | None:
        c = self.config
        return nn.Embedding(c.max_seq_len, c.d_model) if c.positions == "learned" else None

    def _embed(self, ids: torch.Tensor, pos_emb: nn.Embedding | None) -> torch.Tensor:
        h = self.tok_emb(ids)  # (B, T, d_model)
        if pos_emb is not None:
            h = h + pos_emb.weight[: ids.shape[1]]  # (B, T, d_model) + (T, d_model)
        return h


class TinyEncoder(_Embedded):
    """An encoder-only model (BERT-shaped): embeddings, n_layers EncoderBlocks, final norm (Pre-LN),
    and a masked-LM head. Every token sees every real token of its sequence.

        config = ModelConfig(vocab_size=512, kind="encoder")
        logits = TinyEncoder(config)(ids, lengths)   # ids (B, T), lengths (B,) -> (B, T, V)
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self._setup(config, "TinyEncoder")
        _require_kind("TinyEncoder", config, "encoder")
        self.pos_emb = self._positions()
        self.blocks = nn.ModuleList(EncoderBlock(config) for _ in range(config.n_layers))
        self.final_norm = _norm(config) if config.norm_placement == "pre" else None
        self._finish()

    def encode(self, ids: torch.Tensor, lengths=None, return_weights: bool = False):
        """ids (B, T) [, lengths (B,)] -> hidden states (B, T, d_model) [, [weights (B, H, T, T)] per layer]."""
        _require_ids("TinyEncoder", "ids", ids, self.config)
        B, T = ids.shape
        real = _key_padding("TinyEncoder", lengths, B, T, ids.device)  # (B, T) or None
        mask = None if real is None else real[:, None, None, :]  # (B, 1, 1, T): padded keys blocked
        h = self._embed(ids, self.pos_emb)  # (B, T, d_model)
        weights = []
        for block in self.blocks:
            if return_weights:
                h, w = block(h, mask, return_weights=True)  # (B, T, d_model), (B, H, T, T)
                weights.append(w)
            else:
                h = block(h, mask)  # (B, T, d_model); the fast path when config.kernels = "fused"
        if self.final_norm is not None:
            h = _final_norm(self.config, self.final_norm, h)  # (B, T, d_model)
        return (h, weights) if return_weights else h

    def forward(self, ids: torch.Tensor, lengths=None, return_weights: bool = False):
        """ids (B, T) [, lengths (B,)] -> logits (B, T, V) [, weights per layer]."""
        if not return_weights:
            return self.encode(ids, lengths) @ self.lm_head.weight.T  # (B, T, V)
        h, weights = self.encode(ids, lengths, return_weights=True)  # (B, T, d_model)
        logits = h @ self.lm_head.weight.T  # (B, T, V)
        return logits, weights


class TinyEncoderDecoder(_Embedded):
    """An encoder-decoder (T5- or 2017-Transformer-shaped): an encoder stack reads the source, a decoder
    stack of CrossDecoderBlocks writes the target, reading the encoder's output at every layer.

        config = ModelConfig(vocab_size=512, kind="encoder-decoder")
        logits = TinyEncoderDecoder(config)(src_ids, tgt_ids, src_lengths)   # -> (B, T_tgt, V)

    One token embedding (shared by source, target and the tied head, as in T5), a learned position
    table each for source and target, n_layers blocks in each stack, and in a Pre-LN model a final
    norm after each stack: the memory the decoder reads is normalised once, by the encoder's norm.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self._setup(config, "TinyEncoderDecoder")
        _require_kind("TinyEncoderDecoder", config, "encoder-decoder")
        self.src_pos_emb = self._positions()
        self.tgt_pos_emb = self._positions()
        self.encoder = nn.ModuleList(EncoderBlock(config) for _ in range(config.n_layers))
        self.encoder_norm = _norm(config) if config.norm_placement == "pre" else None
        self.decoder = nn.ModuleList(CrossDecoderBlock(config) for _ in range(config.n_layers))
        self.decoder_norm = _norm(config) if config.norm_placement == "pre" else None
        self._finish()

    def encode(self, src_ids: torch.Tensor, src_lengths=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """src_ids (B, T_src) -> (memory (B, T_src, d_model), memory_mask (B, T_src) bool or None)."""
        _require_ids("TinyEncoderDecoder", "src_ids", src_ids, self.config)
        B, T_src = src_ids.shape
        real = _key_padding("TinyEncoderDecoder", src_lengths, B, T_src, src_ids.device)  # (B, T_src)
        mask = None if real is None else real[:, None, None, :]  # (B, 1, 1, T_src)
        h = self._embed(src_ids, self.src_pos_emb)  # (B, T_src, d_model)
        for block in self.encoder:
            h = block(h, mask)  # (B, T_src, d_model)
        if self.encoder_norm is not None:
            h = _final_norm(self.config, self.encoder_norm, h)  # (B, T_src, d_model): normalised once, here
        return h, real

    def decode(self, tgt_ids: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None = None,
               return_weights: bool = False):
        """tgt_ids (B, T_tgt), memory (B, T_src, d_model) -> logits (B, T_tgt, V)
        [, [(self (B, H, T_tgt, T_tgt), cross (B, H, T_tgt, T_src))] per layer]."""
        _require_ids("TinyEncoderDecoder", "tgt_ids", tgt_ids, self.config)
        h = self._embed(tgt_ids, self.tgt_pos_emb)  # (B, T_tgt, d_model)
        weights = []
        for block in self.decoder:
            if return_weights:
                h, w = block(h, memory, memory_mask, return_weights=True)  # (B, T_tgt, d_model)
                weights.append(w)
            else:
                h = block(h, memory, memory_mask)  # (B, T_tgt, d_model); fast path when kernels = "fused"
        if self.decoder_norm is not None:
            h = _final_norm(self.config, self.decoder_norm, h)  # (B, T_tgt, d_model)
        logits = h @ self.lm_head.weight.T  # (B, T_tgt, V)
        return (logits, weights) if return_weights else logits

    def forward(self, src_ids: torch.Tensor, tgt_ids: torch.Tensor, src_lengths=None, return_weights: bool = False):
        """src_ids (B, T_src), tgt_ids (B, T_tgt) [, src_lengths (B,)] -> logits (B, T_tgt, V)."""
        memory, memory_mask = self.encode(src_ids, src_lengths)  # (B, T_src, d_model), (B, T_src)
        return self.decode(tgt_ids, memory, memory_mask, return_weights)


def build_model(config: ModelConfig) -> nn.Module:
    """TinyDecoder, TinyEncoder or TinyEncoderDecoder, as config.kind says."""
    if not isinstance(config, ModelConfig):
        raise TypeError(f"build_model: config must be a ModelConfig; got {type(config).__name__}")
    return {"decoder": TinyDecoder, "encoder": TinyEncoder, "encoder-decoder": TinyEncoderDecoder}[config.kind](config)


def _encoder_model_param_count(config: ModelConfig) -> int:
    """TinyEncoder and TinyEncoderDecoder.

        encoder:          V d + T_max d + L (attention + FFN + norms) + final norm (Pre-LN) + V d (untied head)
        encoder-decoder:  V d (shared) + 2 T_max d + L (attention + FFN + 2 norms)
                          + L (2 attention + FFN + 3 norms) + 2 final norms (Pre-LN) + V d (untied head)
    """
    d, V, L = config.d_model, config.vocab_size, config.n_layers
    norm = _norm_param_count(config)
    attention = attention_param_count(d, config.n_heads, config.kv_heads)
    ffn = _ffn_param_count(config)
    table = config.max_seq_len * d if config.positions == "learned" else 0
    head = 0 if config.tie_weights else V * d
    final = norm if config.norm_placement == "pre" else 0
    encoder_layer = attention + ffn + (1 if config.block == "parallel" else 2) * norm
    if config.kind == "encoder":
        return V * d + table + L * encoder_layer + final + head
    decoder_layer = 2 * attention + ffn + 3 * norm  # self-attention, cross-attention, FFN; three norms
    return V * d + 2 * table + L * (encoder_layer + decoder_layer) + 2 * final + head


# ---------------------------------------------------------------------------------------------
# The KV cache and generation (chapter 07)
# ---------------------------------------------------------------------------------------------


def cached_causal_mask(T_q: int, T_k: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """(T_q, T_k) bool causal mask for the T_q newest tokens of a T_k-token sequence (T_q <= T_k).

    Bottom-right aligned: query i is token T_k - T_q + i, so it may attend to keys 0 .. T_k - T_q + i.
    torch's is_causal=True aligns top-left instead (query i sees keys 0 .. i), which is the same
    only when T_q = T_k; after a cache (T_q < T_k) top-left would hide the newest keys.
    """
    fn = "cached_causal_mask"
    require_positive_int(fn, "T_q", T_q)
    require_positive_int(fn, "T_k", T_k)
    if T_q > T_k:
        raise ShapeError(f"{fn}: the T_q = {T_q} new tokens are part of the T_k = {T_k} keys, so T_q <= T_k")
    return torch.ones(T_q, T_k, dtype=torch.bool, device=device).tril(diagonal=T_k - T_q)  # (T_q, T_k)


class LayerCache:
    """One layer's keys and values of the tokens seen so far, (B, H_kv, T_cached, d_head) each."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    @property
    def length(self) -> int:
        """Tokens cached so far: the position of the next token."""
        return 0 if self.k is None else self.k.shape[2]

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new tokens' k, v (B, H_kv, T_new, d_head); return all (B, H_kv, T_cached + T_new, d_head)."""
        fn = "LayerCache.update"
        require_float(fn, "k", k, "(B, H_kv, T_new, d_head)")
        require_float(fn, "v", v, "(B, H_kv, T_new, d_head)")
        if k.shape != v.shape:
            raise ShapeError(f"{fn}: k {fmt_shape(k.shape)} and v {fmt_shape(v.shape)} must have the same shape")
        if self.k is not None and (k.shape[:2] != self.k.shape[:2] or k.shape[3] != self.k.shape[3]):
            raise ShapeError(f"{fn}: the cache holds (B, H_kv, T, d_head) = {fmt_shape(self.k.shape)}; the new k "
                             f"{fmt_shape(k.shape)} must match it in B, H_kv and d_head")
        if self.k is None:
            self.k, self.v = k.detach(), v.detach()
        else:
            self.k = torch.cat([self.k, k.detach()], dim=2)  # (B, H_kv, T_cached + T_new, d_head)
            self.v = torch.cat([self.v, v.detach()], dim=2)  # (B, H_kv, T_cached + T_new, d_head)
        return self.k, self.v

    @property
    def nbytes(self) -> int:
        return 0 if self.k is None else self.k.nbytes + self.v.nbytes


class KVCache:
    """A decoder's KV cache: one LayerCache per layer.

        cache = KVCache(model.config.n_layers)
        logits = cached_forward(model, prompt_ids, cache)      # prefill: every prompt token at once
        logits = cached_forward(model, next_id[:, None], cache)  # decode: one token, T_k = cached + 1
    """

    def __init__(self, n_layers: int) -> None:
        if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 0:
            raise ValueError(f"KVCache: n_layers must be an int >= 0; got {n_layers!r}")
        self.layers = [LayerCache() for _ in range(n_layers)]
        self.tokens = 0  # tokens processed (also the count for a model with no layers)

    def __len__(self) -> int:
        return self.tokens

    def __getitem__(self, layer: int) -> LayerCache:
        return self.layers[layer]

    @property
    def nbytes(self) -> int:
        """Bytes held: 2 x n_layers x B x H_kv x tokens x d_head x bytes per element."""
        return sum(layer.nbytes for layer in self.layers)


def _position_rows(model: TinyDecoder, T: int, offset: int) -> torch.Tensor | None:
    """The absolute position rows added to tokens offset .. offset + T - 1, or None."""
    config = model.config
    if offset + T > config.max_seq_len and model.pos_emb is not None:
        raise ValueError(f"cached_forward: positions='learned' has a table of max_seq_len = {config.max_seq_len} "
                         f"rows, so the model cannot process position {offset + T - 1} (the cache holds {offset} "
                         f"tokens and {T} more were given); generate at most max_seq_len tokens in all, or use "
                         f"a position method without a table")
    rows = getattr(model, "position_rows", None)  # chapter 06's methods (sinusoidal, learned at an offset)
    if rows is not None:
        return rows(T, offset)  # (T, d_model) or None
    if model.pos_emb is not None:
        return model.pos_emb.weight[offset:offset + T]  # (T, d_model): rows of positions offset .. offset + T - 1
    return None


def cached_forward(model: TinyDecoder, ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """ids (B, T) of the tokens at positions len(cache) .. len(cache) + T - 1 -> logits (B, T, V).

    Each layer appends the new tokens' keys and values to its LayerCache and attends over all of
    them with the bottom-right causal mask, so the logits equal model(all ids so far)[:, -T:].
    """
    fn = "cached_forward"
    if not isinstance(model, TinyDecoder):
        raise TypeError(f"{fn}: model must be a TinyDecoder; got {type(model).__name__}")
    if not isinstance(cache, KVCache) or len(cache.layers) != model.config.n_layers:
        raise TypeError(f"{fn}: cache must be a KVCache({model.config.n_layers}) for this model's "
                        f"{model.config.n_layers} layers; got {cache!r}")
    if not model.config.causal:
        raise ValueError(f"{fn}: a KV cache serves a causal decoder (config.causal=True): with causal=False "
                         f"every earlier token would have to see the new ones, and their cached keys go stale")
    require_tensor(fn, "ids", ids)
    if ids.dim() != 2 or ids.shape[1] < 1:
        raise ShapeError(f"{fn}: ids must be (B, T) with T >= 1; got {fmt_shape(ids.shape)}")
    offset, T = len(cache), ids.shape[1]
    wpe = _position_rows(model, T, offset)  # (T, d_model) or None
    if model.config.kernels == "fused":  # chapter 08: the fast path, same numbers
        logits = model.fused_forward(ids, offset, cache)  # (B, T, V)
        cache.tokens += T
        return logits
    extra = {}
    position_bias = getattr(model, "position_bias", None)  # chapter 06: ALiBi / T5 biases, RoPE offset
    if position_bias is not None:
        q_pos = torch.arange(offset, offset + T, device=ids.device)  # (T,)
        k_pos = torch.arange(0, offset + T, device=ids.device)  # (cached + T,)
        extra = {"bias": position_bias(q_pos, k_pos), "offset": offset}  # bias (H, T, cached + T) or None

    def run(block: DecoderBlock, layer: LayerCache):
        return lambda h: block(h, cache=layer, **extra)  # (B, T, d_model) -> (B, T, d_model)

    blocks = [run(b, layer) for b, layer in zip(model.blocks, cache.layers)]
    lm_head = None if model.lm_head.weight is model.tok_emb.weight else model.lm_head.weight
    logits = decoder_forward(ids, model.tok_emb.weight, wpe, blocks, model.final_norm, lm_head)  # (B, T, V)
    cache.tokens += T
    return logits


def _next_token(logits: torch.Tensor, temperature: float, top_k: int | None,
                generator: torch.Generator | None) -> torch.Tensor:
    """logits (B, V) -> ids (B, 1): argmax for temperature 0, else a sample of softmax(logits / t) over the top k."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)  # (B, 1)
    logits = logits / temperature  # (B, V)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1): the k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))  # (B, V)
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator)  # (B, 1)


def generate(model: TinyDecoder, prompt_ids: torch.Tensor, max_new_tokens: int, use_cache: bool = True, *,
             temperature: float = 1.0, top_k: int | None = None,
             generator: torch.Generator | None = None, threads: int | None = None) -> torch.Tensor:
    """prompt_ids (B, T_prompt) -> (B, T_prompt + max_new_tokens): the prompt and the new tokens.

    temperature 0 picks the most likely token (greedy); otherwise tokens are drawn from
    softmax(logits / temperature), restricted to the top_k most likely when top_k is given, with
    `generator` (seed it for repeatable samples). use_cache=True runs the prompt once (prefill) and
    then one token per step against the KV cache; use_cache=False recomputes the whole sequence
    every step. Both give the same tokens.

    threads: torch's CPU thread count while generating; None measures which is faster here and now
    (helpers.threads.choose_threads on one prefill and decoding step, or one recomputation at the
    average length); the learner's own setting is restored afterwards, also after an error.
    """
    fn = "generate"
    if not isinstance(model, TinyDecoder):
        raise TypeError(f"{fn}: model must be a TinyDecoder; got {type(model).__name__}")
    require_tensor(fn, "prompt_ids", prompt_ids)
    if prompt_ids.dim() != 2 or prompt_ids.shape[1] < 1 or prompt_ids.is_floating_point():
        raise ShapeError(f"{fn}: prompt_ids must be integer ids of shape (B, T_prompt) with T_prompt >= 1; got "
                         f"{fmt_shape(prompt_ids.shape)} of dtype {prompt_ids.dtype}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"{fn}: max_new_tokens must be an int >= 0; got {max_new_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature < 0:
        raise ValueError(f"{fn}: temperature must be a number >= 0 (0 = greedy); got {temperature!r}")
    if top_k is not None:
        require_positive_int(fn, "top_k", top_k)
    total = prompt_ids.shape[1] + max_new_tokens
    if model.pos_emb is not None and total > model.config.max_seq_len:
        raise ValueError(f"{fn}: positions='learned' has max_seq_len = {model.config.max_seq_len} rows, but the "
                         f"prompt ({prompt_ids.shape[1]} tokens) plus max_new_tokens = {max_new_tokens} needs "
                         f"{total} positions")
    was_training = model.training
    model.eval()
    ids = prompt_ids
    device = model.tok_emb.weight.device

    def probe() -> None:  # one step of the work ahead, on throwaway ids and a throwaway cache
        if use_cache:
            cache = KVCache(model.config.n_layers)
            cached_forward(model, prompt_ids, cache)  # prefill
            cached_forward(model, prompt_ids[:, -1:], cache)  # one decoding step
        else:
            model(torch.zeros(prompt_ids.shape[0], (prompt_ids.shape[1] + total) // 2, dtype=torch.long,
                              device=prompt_ids.device))  # a recomputation at the average length

    try:
        # inference_mode, not only no_grad: no autograd bookkeeping at all (version counters, views), which
        # is a tenth of a decoding step's time for a small model; the ids are cloned out of it below.
        with torch.inference_mode(), fastest_threads(None if device.type != "cpu" or max_new_tokens < 2 else probe,
                                                     threads):
            cache = KVCache(model.config.n_layers) if use_cache else None
            step_input = prompt_ids  # (B, T_prompt): the prefill
            for _ in range(max_new_tokens):
                if use_cache:
                    logits = cached_forward(model, step_input, cache)[:, -1]  # (B, V)
                else:
                    logits = model(ids)[:, -1]  # (B, V): the whole sequence again
                step_input = _next_token(logits, temperature, top_k, generator)  # (B, 1)
                ids = torch.cat([ids, step_input], dim=1)  # (B, T + 1)
    finally:
        model.train(was_training)
    return ids.clone()  # (B, T_prompt + max_new_tokens): a normal tensor, usable with autograd later
