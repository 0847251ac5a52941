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
not the code. Values that later chapters add (sinusoidal, RoPE and ALiBi positions; MoE FFNs) are
refused with a ValueError that names the chapter.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention_scores, causal_mask, masked_softmax, scaled_dot_product_attention
from .ffn import FeedForward, SwiGLUFFN, ffn_param_count
from .heads import _require_heads, attention_param_count, merge_heads, repeat_kv, split_heads
from .norms import LayerNorm, RMSNorm, post_ln_block, pre_ln_block
from .shapes import ShapeError, fmt_shape, require_bool_mask, require_float, require_tensor

__all__ = [
    "Attention",
    "DecoderBlock",
    "LATER_CHAPTERS",
    "ModelConfig",
    "TinyDecoder",
    "attend",
    "fused_attend",
    "decoder_forward",
    "model_param_count",
]

CHOICES = {
    "norm_placement": ("pre", "post"),
    "norm": ("layernorm", "rmsnorm"),
    "ffn": ("gelu", "swiglu"),
    "positions": ("none", "learned"),
    "attention": ("course", "fused"),  # chapter 08: the chapters' attention, or torch's fused kernel
}

# (field, value) -> the chapter that adds it to the shared model.
LATER_CHAPTERS = {
    ("positions", "sinusoidal"): "06_positions",
    ("positions", "rope"): "06_positions",
    ("positions", "alibi"): "06_positions",
    ("positions", "relative"): "06_positions",
    ("ffn", "moe"): "05_blocks",
}


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
    positions: str = "learned"  # "none" or "learned"
    tie_weights: bool = True  # the LM head reuses the token embedding matrix
    causal: bool = True  # decoder: each token sees itself and the past only
    bias: bool = False  # biases in the FFN's linear layers (attention never has them)
    attention: str = "course"  # "course" (chapter 01's, returns weights) or "fused" (same numbers, faster)

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

    With config.attention = "fused" (chapter 08), a call with need_weights=False runs torch's fused
    kernel (`fused_attend`, same numbers) and returns weights None; a call that needs the weights
    (the default) takes the course path, because a fused kernel never forms them.
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
        self.fused = config.attention == "fused"  # chapter 08: torch's kernel when no weights are needed

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

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *, source: torch.Tensor | None = None,
                bias: torch.Tensor | None = None, need_weights: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T_q, d_model), mask bool broadcastable to (B, H, T_q, T_k) [, source, bias]
        -> (out (B, T_q, d_model), weights (B, H, T_q, T_k), or None from the fused path)."""
        q, k, v = self.project(x, source)  # (B, H, T_q, d_head), (B, H_kv, T_k, d_head) x 2
        group = self.n_heads // self.n_kv_heads  # query heads per key/value head
        k, v = repeat_kv(k, group), repeat_kv(v, group)  # (B, H, T_k, d_head): head h reads K/V head h // group
        fused = self.fused and not need_weights  # the fused kernel cannot return weights
        heads, weights = attend(q, k, v, mask, bias, fused=fused)  # (B, H, T_q, d_head), (B, H, T_q, T_k) or None
        return self.o_proj(merge_heads(heads)), weights  # (B, T_q, d_model), (B, H, T_q, T_k)

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
        self.norm2 = _norm(config)
        if config.ffn == "gelu":
            self.ffn = FeedForward(config.d_model, config.ffn_width, activation="gelu", bias=config.bias)
        else:
            self.ffn = SwiGLUFFN(config.d_model, config.ffn_width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                return_weights: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, d_model) -> out (B, T, d_model) [, weights (B, H, T, T)].

        mask: bool, True = may attend, broadcastable to (B, H, T, T). None means the causal mask
        when config.causal, else no mask.
        """
        fn = "DecoderBlock"
        require_float(fn, "x", x, "(B, T, d_model)")
        if x.shape[-1] != self.config.d_model:
            raise ShapeError(f"{fn}: x must be (B, T, d_model) with d_model = {self.config.d_model}; "
                             f"got {fmt_shape(x.shape)}")
        T = x.shape[1]
        if mask is None and self.config.causal:
            mask = causal_mask(T, device=x.device)  # (T, T)
        seen: list[torch.Tensor] = []

        def attend(h: torch.Tensor) -> torch.Tensor:
            out, weights = self.attn(h, mask, need_weights=return_weights)  # (B, T, d_model), (B, H, T, T) or None
            seen.append(weights)
            return out

        block = pre_ln_block if self.config.norm_placement == "pre" else post_ln_block
        out = block(x, attend, self.ffn, self.norm1, self.norm2)  # (B, T, d_model)
        return (out, seen[0]) if return_weights else out


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
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)  # weight (V, d_model)
        self.pos_emb = nn.Embedding(config.max_seq_len, config.d_model) if config.positions == "learned" else None
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

    def forward(self, ids: torch.Tensor, return_weights: bool = False):
        """ids (B, T) -> logits (B, T, V) [, [weights (B, H, T, T) for each layer]]."""
        weights: list[torch.Tensor] = []

        def run(block: DecoderBlock):
            def call(h: torch.Tensor) -> torch.Tensor:
                out, w = block(h, return_weights=True)  # (B, T, d_model), (B, H, T, T)
                weights.append(w)
                return out
            return call

        wpe = self.pos_emb.weight if self.pos_emb is not None else None
        lm_head = None if self.lm_head.weight is self.tok_emb.weight else self.lm_head.weight
        blocks = [run(b) for b in self.blocks] if return_weights else list(self.blocks)
        logits = decoder_forward(ids, self.tok_emb.weight, wpe, blocks, self.final_norm, lm_head)  # (B, T, V)
        return (logits, weights) if return_weights else logits


def model_param_count(config: ModelConfig) -> int:
    """Parameters of TinyDecoder(config), each shared tensor counted once.

        V d (token embeddings) + T_max d (learned positions)
        + n_layers * (attention + FFN + 2 norms)        attention: chapter 02, FFN: chapter 03
        + final norm (Pre-LN) + V d (LM head, only when untied)
    A LayerNorm has 2 d parameters (gamma, beta), an RMSNorm d (gamma).
    """
    if not isinstance(config, ModelConfig):
        raise TypeError(f"model_param_count: config must be a ModelConfig; got {type(config).__name__}")
    d, V = config.d_model, config.vocab_size
    norm = 2 * d if config.norm == "layernorm" else d
    attention = attention_param_count(d, config.n_heads, config.kv_heads)
    if config.ffn == "gelu":
        ffn = ffn_param_count(d, config.ffn_width, gated=False, bias=config.bias)
    else:
        ffn = ffn_param_count(d, config.ffn_width, gated=True, bias=False)
    embeddings = V * d + (config.max_seq_len * d if config.positions == "learned" else 0)
    final = norm if config.norm_placement == "pre" else 0
    head = 0 if config.tie_weights else V * d
    return embeddings + config.n_layers * (attention + ffn + 2 * norm) + final + head
