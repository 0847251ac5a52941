"""The model every chapter shares: one config, one decoder, and what chapters 05, 07 and 08 add to it.

    from helpers.blocks import ModelConfig, TinyDecoder, generate   # every public name is here

Each part lives in the module named for what it holds (the import graph has no cycle: decoder
imports fused and kv_cache; encoders and generation import decoder; this package imports them all):

    helpers.blocks.decoder      ModelConfig, Attention, DecoderBlock, TinyDecoder, decoder_forward,
                                model_param_count; chapter 05's block variants (parallel, MoE)
    helpers.blocks.encoders     chapter 05: cross_attention, decoder_block, EncoderBlock,
                                CrossDecoderBlock, TinyEncoder, TinyEncoderDecoder, build_model
    helpers.blocks.kv_cache     chapter 07: LayerCache, KVCache, cached_causal_mask
    helpers.blocks.generation   chapter 07: cached_forward, generate
    helpers.blocks.fused        chapter 08: fused_attend, fused_norm, fused_ffn (the fast path's kernels)

See helpers.blocks.decoder for the model's path and the config's fields.
"""

from __future__ import annotations

from .decoder import (
    CHOICES,  # noqa: F401  importable, but not in __all__, as before the split
    LATER_CHAPTERS,
    Attention,
    BalancedMoEFFN,
    DecoderBlock,
    ModelConfig,
    TinyDecoder,
    attend,
    decoder_forward,
    model_param_count,
    moe_balance_loss,
    parallel_block,
)
from .encoders import (
    CrossDecoderBlock,
    EncoderBlock,
    TinyEncoder,
    TinyEncoderDecoder,
    build_model,
    cross_attention,
    cross_attention_sublayer,
    decoder_block,
    self_attention_sublayer,
)
from .fused import fused_attend, fused_ffn, fused_norm
from .generation import cached_forward, generate
from .kv_cache import KVCache, LayerCache, cached_causal_mask

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
