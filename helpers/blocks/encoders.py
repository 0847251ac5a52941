"""Chapter 05's other two kinds of model, built from the shared decoder's parts and config.

    kind="encoder"          TinyEncoder: EncoderBlocks (bidirectional, key padding), MLM logits
    kind="encoder-decoder"  TinyEncoderDecoder: encoder stack -> memory; CrossDecoderBlocks (causal
                            self-attention, cross-attention on memory, FFN: decoder_block's equations)

cross_attention and decoder_block are the chapter's functions (the reference of its exercises);
CrossDecoderBlock is decoder_block with Attention sublayers. build_model(config) returns the model
config.kind names (TinyDecoder for "decoder").
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ..attention import causal_mask, scaled_dot_product_attention
from ..heads import _require_heads, _require_weight, merge_heads, repeat_kv, split_heads
from ..shapes import ShapeError, fmt_shape, require_float, require_same_dtype, require_tensor
from .decoder import Attention, DecoderBlock, ModelConfig, TinyDecoder, _ffn, _norm, _require_kind
from .fused import fused_ffn, fused_norm

__all__ = [
    "CrossDecoderBlock",
    "EncoderBlock",
    "TinyEncoder",
    "TinyEncoderDecoder",
    "build_model",
    "cross_attention",
    "cross_attention_sublayer",
    "decoder_block",
    "self_attention_sublayer",
]




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


