"""The model every chapter shares, and its config: a decoder block and a tiny decoder-only language model.

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
The two other kinds live in helpers.blocks.encoders (build_model(config) there returns the model
config.kind names); the block variants are here, and model_param_count covers every variant.
The KV cache is helpers.blocks.kv_cache, generation helpers.blocks.generation (chapter 07), and the
fast path's kernels (chapter 08) helpers.blocks.fused; helpers.blocks re-exports them all.

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

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import attention_scores, causal_mask, masked_softmax, scaled_dot_product_attention
from ..ffn import (
    FeedForward,
    MoEFFN,  # chapter 05
    SwiGLUFFN,
    ffn_param_count,
    load_balancing_loss,  # chapter 05
    moe_param_count,  # chapter 05
    top_k_route,  # chapter 05
)
from ..heads import (
    _require_heads,
    attention_param_count,
    merge_heads,
    repeat_kv,
    split_heads,
)
from ..norms import LayerNorm, RMSNorm, post_ln_block, pre_ln_block
from ..positions import PAIR_LAYOUTS, ALiBi, RelativePositionBias, RotaryEmbedding, learned_positions, sinusoidal_table
from ..shapes import (
    ShapeError,
    fmt_shape,
    require_float,
    require_tensor,
)
from .fused import fused_attend, fused_ffn, fused_norm
from .kv_cache import KVCache, LayerCache, cached_causal_mask

__all__ = [
    "Attention",
    "DecoderBlock",
    "LATER_CHAPTERS",
    "ModelConfig",
    "TinyDecoder",
    "attend",
    "decoder_forward",
    "model_param_count",
    # chapter 05's block variants
    "BalancedMoEFFN",
    "moe_balance_loss",
    "parallel_block",
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

