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

from . import decoder, encoders, fused, generation, kv_cache
from .decoder import *  # noqa: F403  each module's __all__ is its public names, written once there
from .decoder import CHOICES  # noqa: F401  importable, but not in __all__, as before the split
from .encoders import *  # noqa: F403
from .fused import *  # noqa: F403
from .generation import *  # noqa: F403
from .kv_cache import *  # noqa: F403

__all__ = [*decoder.__all__, *encoders.__all__, *kv_cache.__all__, *generation.__all__, *fused.__all__]
