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
attention is helpers.heads.MultiHeadAttention (chapter 02, which calls chapter 01's attention),
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
from torch import nn

from .attention import causal_mask
from .ffn import FeedForward, SwiGLUFFN, ffn_param_count
from .heads import MultiHeadAttention, attention_param_count
from .heads import _require_heads, _require_weight, merge_heads, repeat_kv, split_heads  # chapter 05
from .attention import scaled_dot_product_attention  # chapter 05
from .norms import LayerNorm, RMSNorm, post_ln_block, pre_ln_block
from .shapes import ShapeError, fmt_shape, require_float, require_same_dtype, require_tensor

__all__ = [
    "DecoderBlock",
    "LATER_CHAPTERS",
    "ModelConfig",
    "TinyDecoder",
    "decoder_forward",
    "model_param_count",
    # chapter 05
    "cross_attention",
    "decoder_block",
]

CHOICES = {
    "norm_placement": ("pre", "post"),
    "norm": ("layernorm", "rmsnorm"),
    "ffn": ("gelu", "swiglu"),
    "positions": ("none", "learned"),
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
        self.attn = MultiHeadAttention(config.d_model, config.n_heads, config.kv_heads)
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
            out, weights = self.attn(h, mask)  # (B, T, d_model), (B, H, T, T)
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
    mask = None
    if memory_mask is not None:
        require_tensor(fn, "memory_mask", memory_mask)
        if memory_mask.dtype != torch.bool or tuple(memory_mask.shape) != (B, T_src):
            raise ShapeError(f"{fn}: memory_mask must be a bool key-padding mask of shape (B, T_src) = "
                             f"({B}, {T_src}), True = real source token; got {fmt_shape(memory_mask.shape)} "
                             f"of dtype {memory_mask.dtype}")
        mask = memory_mask[:, None, None, :]  # (B, 1, 1, T_src): blocks keys, for every head and query
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
