"""Checks for chapter 05 (cross-attention, the decoder block with cross-attention, the mask family,
the prefix-LM mask, encoder-decoder parameter counts) and their catalogue of known mistakes.

Each `check_*` takes the learner's function, calls it on generated inputs and raises `CheckFailed`
with one sentence when something is wrong. Keyword arguments choose other seeds, dtypes and axis
sizes: the visible tests use the defaults, the hidden tests use others.

Answers may use the earlier chapters' helpers (`helpers.attention.scaled_dot_product_attention`,
`causal_mask`, `padding_mask`; `helpers.heads.split_heads`, `merge_heads`, `repeat_kv`). They may not
call this chapter's reference (`helpers.blocks`, and the mask builders `helpers.attention` gained in
this chapter) or torch's multi-head attention and transformer layers.

The decoder-block exercise hands over its sublayers: attention sublayers of the shared model
(helpers.blocks.Attention with random weights) and torch's own FFN and LayerNorms; calling them is
the exercise. norm1, norm2 and norm3 have different parameters, so each misplaced norm is recognised.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Self

import torch
import torch.nn.functional as F
from torch import nn

from .. import attention as masks_ref
from .. import blocks as ref
from . import probes as _probes
from .conventions import key_padding_advice, rank_aware_mask_advice
from .core import (
    Case,
    CheckFailed,
    Mistake,
    call_learner,
    check_function,
    check_numbers,
    compare,
    protect,
    refuse_answers_computed_by,
    verify_environment,
)
from .core import randn as _randn

__all__ = [
    "MASKS_TO_NAME",
    "MISTAKES",
    "check_cross_attention",
    "check_decoder_block",
    "check_encoder_decoder_counts",
    "check_mask_names",
    "check_model_masks",
    "check_prefix_lm_mask",
]

# ---------------------------------------------------------------------------------------------
# Forbidden: what each exercise may not call or be (its checks refuse it; course-scan flags it)
# ---------------------------------------------------------------------------------------------

_TORCH_MHA = (F.multi_head_attention_forward, nn.MultiheadAttention.forward)
_TORCH_LAYERS = (nn.TransformerDecoderLayer.forward, nn.TransformerDecoder.forward, nn.Transformer.forward,
                 nn.TransformerEncoderLayer.forward)
# This chapter's mask builders live in helpers.attention (chapter 01's module): named one by one.
_MASK_BUILDERS = (masks_ref.bidirectional_mask, masks_ref.causal_padding_mask, masks_ref.prefix_lm_mask,
                  masks_ref.cross_mask, masks_ref.model_masks, masks_ref.classify_mask)
FORBIDDEN = {
    "ex1": (ref,) + _TORCH_MHA,
    "ex2": (ref.decoder_block, ref.CrossDecoderBlock.forward, ref.TinyEncoderDecoder.forward,
            ref.TinyEncoderDecoder.decode) + _TORCH_LAYERS,
    "ex3a": (ref,) + _MASK_BUILDERS,
    "ex3b": (ref,) + _MASK_BUILDERS,
    "ex4": (ref,) + _MASK_BUILDERS,
    "ex5": (ref,),
}


# ---------------------------------------------------------------------------------------------
# Exercise 1: cross-attention, and its mistakes
# ---------------------------------------------------------------------------------------------


def _cross(*, kv_from: str = "memory", causal: bool = False, mask_axis: str = "keys", scale: str = "d_head",
           kv_map: str = "interleave", project_out: bool = True):
    """A complete cross_attention with the given mistakes built in."""
    def wrong(x, memory, w_q, w_k, w_v, w_o, n_heads, n_kv_heads=None, memory_mask=None):
        n_kv = n_heads if n_kv_heads is None else n_kv_heads
        B, T_q, d_model = x.shape
        d_head = d_model // n_heads
        source = memory if kv_from == "memory" else x
        T_k = source.shape[1]
        q = (x @ w_q.T).reshape(B, T_q, n_heads, d_head).transpose(1, 2)  # (B, H, T_q, d_head)
        k = (source @ w_k.T).reshape(B, T_k, n_kv, d_head).transpose(1, 2)  # (B, H_kv, T_k, d_head)
        v = (source @ w_v.T).reshape(B, T_k, n_kv, d_head).transpose(1, 2)
        if kv_map == "interleave":
            k, v = k.repeat_interleave(n_heads // n_kv, dim=1), v.repeat_interleave(n_heads // n_kv, dim=1)
        else:  # WRONG: query head h reads key/value head h % H_kv
            k, v = k.repeat(1, n_heads // n_kv, 1, 1), v.repeat(1, n_heads // n_kv, 1, 1)
        scores = q @ k.transpose(-2, -1)  # (B, H, T_q, T_k)
        scores = scores / {"d_head": math.sqrt(d_head), "none": 1.0, "d_model": math.sqrt(d_model)}[scale]
        allow = torch.ones(B, 1, T_q, T_k, dtype=torch.bool, device=x.device)
        # (keys taken from x still get the mask when it fits them, as a learner's code would do)
        if memory_mask is not None and memory_mask.shape[-1] == T_k:
            if mask_axis == "keys":
                allow = allow & memory_mask[:, None, None, :]
            elif mask_axis == "queries":  # WRONG: needs T_q == T_src to even run
                allow = allow & memory_mask[:, None, :, None]
            elif mask_axis == "inverted":
                allow = allow & ~memory_mask[:, None, None, :]
        if causal:
            allow = allow & torch.ones(T_q, T_k, dtype=torch.bool, device=x.device).tril()
        scores = scores.masked_fill(~allow, float("-inf"))
        has_key = allow.any(-1, keepdim=True)
        weights = torch.softmax(torch.where(has_key, scores, torch.zeros_like(scores)), dim=-1)
        weights = torch.where(has_key, weights, torch.zeros_like(weights))  # (B, H, T_q, T_k)
        heads = (weights @ v).transpose(1, 2).reshape(B, T_q, d_model)  # (B, T_q, d_model)
        return (heads @ w_o.T if project_out else heads), weights
    return wrong


CROSS_MISTAKES = (
    Mistake("kv_from_decoder",
            "keys and values are computed from the decoder stream x; in cross-attention only the queries "
            "come from x, the keys and values come from memory (the encoder's output): k = memory @ w_k.T, "
            "v = memory @ w_v.T",
            _cross(kv_from="x")),
    Mistake("causal_on_cross",
            "a causal mask is applied to cross-attention, so target position i only sees source tokens "
            "0..i; the source is complete before decoding starts, and every target position may read all "
            "of it (only padded source keys are blocked)",
            _cross(causal=True)),
    Mistake("padding_on_query_axis",
            "the padding mask blocks queries (rows) instead of keys (columns): memory_mask marks which "
            "source tokens are real, and source tokens are the keys; broadcast it as "
            f"memory_mask[:, None, None, :]: {key_padding_advice(4, keys='T_src', queries='T_tgt', from_chapter_01=False)}",
            _cross(mask_axis="queries")),
    Mistake("mask_inverted",
            "the padding mask is inverted: True in memory_mask means a real source token that may be "
            "attended to, so the padded keys (False) are the ones to fill with -inf",
            _cross(mask_axis="inverted")),
    Mistake("mask_ignored",
            "memory_mask is ignored, so padded source tokens receive attention; fill the scores of keys "
            "where memory_mask is False with -inf before the softmax",
            _cross(mask_axis="none")),
    Mistake("no_scale",
            "the scores are not divided by sqrt(d_head); scale q k^T by 1 / sqrt(d_head) with d_head = "
            "d_model / n_heads",
            _cross(scale="none")),
    Mistake("scale_d_model",
            "the scores are divided by sqrt(d_model); each head's scores are divided by sqrt(d_head), "
            "d_head = d_model / n_heads",
            _cross(scale="d_model")),
    Mistake("kv_heads_tiled",
            "query head h reads key/value head h % n_kv_heads (tensor.repeat); in grouped-query attention "
            "each run of n_heads / n_kv_heads consecutive query heads shares one key/value head, h // "
            "(n_heads / n_kv_heads): use repeat_interleave (or helpers.heads.repeat_kv)",
            _cross(kv_map="tile")),
    Mistake("no_output_projection",
            "the output projection is missing: after merging the heads, multiply by w_o.T",
            _cross(project_out=False)),
)


# Probes: one-step variants of cross-attention that no catalogue lists, named only when a wrong
# answer clearly is one of them (core.closest_probe)


def _cross_variant(*, q_from: str = "x", k_from: str = "memory", v_from: str = "memory", proj: str = "qkv",
                   merge: str = "right", out: str = "right", weights_out: str = "masked",
                   **attention: Any) -> Callable[..., Any]:
    """cross_attention with one mistake built in: which stream each of q, k, v reads, which weight
    projects it (`proj`, "qkk": V projected with w_k), the merge, the output step, the weights
    returned; the rest (scale, swap_qk, dim, fill, after) as in probes.attention."""
    def wrong(x, memory, w_q, w_k, w_v, w_o, n_heads, n_kv_heads=None, memory_mask=None):
        n_kv = n_heads if n_kv_heads is None else n_kv_heads
        streams, w = {"x": x, "memory": memory}, {"q": w_q, "k": w_k, "v": w_v}
        q = _split(streams[q_from] @ w[proj[0]].T, n_heads)  # (B, H, T_q, d_head)
        k = _split(streams[k_from] @ w[proj[1]].T, n_kv).repeat_interleave(n_heads // n_kv, dim=1)
        v = _split(streams[v_from] @ w[proj[2]].T, n_kv).repeat_interleave(n_heads // n_kv, dim=1)
        mask = None if memory_mask is None else memory_mask[:, None, None, :]  # (B, 1, 1, T_k)
        heads, weights = _probes.attention(q, k, v, mask, **attention)  # (B, H, T_q, d_head)
        if weights_out == "unmasked":
            weights = _probes.attention(q, k, v, None, **attention)[1]
        B, H, T_q, d_head = heads.shape
        merged = (heads.transpose(1, 2) if merge == "right" else heads.permute(0, 2, 3, 1)).reshape(B, T_q, H * d_head)
        result = merged @ (w_o if out == "w_o_untransposed" else w_o.T)  # (B, T_q, d_model)
        return (result + x if out == "residual" else result), weights
    return wrong


def _split(t: torch.Tensor, n: int) -> torch.Tensor:
    B, T, width = t.shape
    return t.reshape(B, T, n, width // n).transpose(1, 2)  # (B, n, T, width / n)


_CROSS_PROBES = {
    "streams_swapped": ("the queries come from memory and the keys and values from x: the two streams are "
                        "swapped. In cross-attention the decoder asks (q = x @ w_q.T) and the encoder's output "
                        "answers (k = memory @ w_k.T, v = memory @ w_v.T)",
                        {"q_from": "memory", "k_from": "x", "v_from": "x"}),
    "k_from_x": ("the keys are computed from the decoder stream x; like the values, they come from memory: "
                 "k = memory @ w_k.T", {"k_from": "x"}),
    "v_from_x": ("the values are computed from the decoder stream x; like the keys, they come from memory: "
                 "v = memory @ w_v.T", {"v_from": "x"}),
    "k_with_w_v": ("K is projected with w_v; K's projection is memory @ w_k.T", {"proj": "qvv"}),
    "v_with_w_k": ("V is projected with w_k; V's projection is memory @ w_v.T", {"proj": "qkk"}),
    # Other scales are left to the diagnosis (the weights' temperature): at the hidden test's sizes
    # T_q = T_k = d_head = sqrt(d_model) in the first case, so 1 / T_k, 1 / T_q, 1 / d_head and the
    # catalogued 1 / sqrt(d_model) cannot be told apart there.
    **{key: (message, {"scale": f}) for key, (message, f) in _probes.scale_variants("d_head").items()
       if key == "scale_sqrt_T_k"},
    "k_q_swapped": ("the scores are K Qᵀ, one row per key; they are Q Kᵀ, one row per query (decoder "
                    "position), so that the mask and the softmax act on each query's source keys",
                    {"swap_qk": True}),
    "softmax_query_axis": ("the softmax runs over the query axis (dim=-2); each query's weights over the "
                           "source keys must sum to 1 (dim=-1)", {"dim": -2}),
    "fill_zero": ("padded source keys get the score 0 before the softmax, but exp(0) = 1 still gives them "
                  "weight; set them to -inf", {"fill": "zero"}),
    "mask_after_softmax": ("memory_mask is applied after the softmax, so the remaining weights no longer sum "
                           "to 1; set the scores of padded keys to -inf before the softmax", {"after": True}),
    "weights_unmasked": ("the weights returned are the softmax before masking, while the output uses masked "
                         "ones; return the masked weights", {"weights_out": "unmasked"}),
    "merge_interleaved": ("the heads are merged interleaved (feature c of head h lands at c*H + h); "
                          "concatenate them: transpose back to (B, T_tgt, H, d_head), then reshape to "
                          "(B, T_tgt, d_model)", {"merge": "interleaved"}),
    "w_o_untransposed": ("the output projection multiplies by w_o instead of w_o.T; like the other "
                         "weights, w_o is stored (out, in): merged @ w_o.T", {"out": "w_o_untransposed"}),
    "residual_added": ("the output includes the residual x + ...; cross_attention returns the attention's "
                       "output only, and the block (exercise 2) adds it to the stream", {"out": "residual"}),
}
CROSS_PROBES = _probes.probes({key: (message, _cross_variant(**how)) for key, (message, how) in _CROSS_PROBES.items()})


def _cross_diagnose(got: Any, expected: Any, case: Case) -> str | None:
    """Which step went wrong first, from the learner's own weights: before the softmax or after it."""
    if not isinstance(got, (tuple, list)) or len(got) != 2 or not isinstance(got[1], torch.Tensor):
        return None
    w_got, w_exp = got[1].detach().cpu().double(), expected[1].detach().cpu().double()
    if w_got.shape != w_exp.shape:
        return None
    if torch.allclose(w_got, w_exp, rtol=1e-4, atol=1e-6):
        return ("the attention weights are right but the output is not, so a step after the weights is wrong: "
                "V's projection (memory @ w_v.T) or its heads, weights @ V, the merge, or the output "
                "projection @ w_o.T")
    rows = torch.nan_to_num(w_got, nan=0.0).sum(dim=-1)
    if ((rows - 1).abs() > 1e-4).any() and (rows != 0).any():
        columns = torch.nan_to_num(w_got, nan=0.0).sum(dim=-2)
        along = "; they sum to 1 down the query axis: the softmax ran over dim=-2" if (
            ((columns - 1).abs() < 1e-4) | (columns == 0)).all() else ""
        return f"rows of the weights do not sum to 1{along}; each query's softmax runs over the source keys (dim=-1)"
    memory_mask = case.args[8]
    mask = None if memory_mask is None else memory_mask[:, None, None, :]
    c = _probes.softmax_temperature(w_got, torch.log(w_exp.clamp_min(1e-300)), mask)
    if c is not None and abs(c - 1) > 1e-3:
        return _probes.temperature_message(c, "d_head")
    return ("the attention weights (the second output) are already wrong, so the mistake is at or before the "
            "softmax: Q from x, K from memory, their projections and heads, Q Kᵀ and its scale, or memory_mask")


def _cross_case(gen: torch.Generator, dtype: torch.dtype, B: int, T_tgt: int, T_src: int, d_model: int,
                n_heads: int, n_kv_heads: int, lengths: Sequence[int] | None, note: str) -> Case:
    d_kv = n_kv_heads * (d_model // n_heads)
    scale = 1.5 / math.sqrt(d_model)
    args = (_randn(gen, B, T_tgt, d_model, dtype=dtype), _randn(gen, B, T_src, d_model, dtype=dtype),
            _randn(gen, d_model, d_model, dtype=dtype, scale=scale), _randn(gen, d_kv, d_model, dtype=dtype, scale=scale),
            _randn(gen, d_kv, d_model, dtype=dtype, scale=scale), _randn(gen, d_model, d_model, dtype=dtype, scale=scale),
            n_heads, n_kv_heads,
            None if lengths is None else torch.arange(T_src)[None, :] < torch.tensor(lengths)[:, None])
    sizes = {"B": B, "T_tgt": T_tgt, "T_src": T_src, "d_model": d_model, "H": n_heads, "H_kv": n_kv_heads,
             "d_head": d_model // n_heads}
    names = ("x", "memory", "w_q", "w_k", "w_v", "w_o", "n_heads", "n_kv_heads", "memory_mask")
    return Case(args, sizes, names, note)


@rank_aware_mask_advice()  # helpers.shapes' mask advice, for per-head scores
def check_cross_attention(fn: Any, *, seed: int = 0, dtype: torch.dtype = torch.float32, B: int = 2,
                          T_tgt: int = 5, T_src: int = 7, d_model: int = 12, n_heads: int = 4,
                          n_kv_heads: int = 2) -> None:
    """cross_attention(x, memory, w_q, w_k, w_v, w_o, n_heads, n_kv_heads, memory_mask) -> (out, weights)."""
    gen = torch.Generator().manual_seed(seed)
    short = [max(1, T_tgt - 2 - b) for b in range(B)]
    cases = [
        _cross_case(gen, dtype, B, T_tgt, T_tgt, d_model, n_heads, n_heads, [T_tgt] + short[1:],
                    "T_src = T_tgt, all heads full, the last sequences padded"),
        _cross_case(gen, dtype, B, T_tgt, T_src, d_model, n_heads, n_kv_heads,
                    [T_src] + [max(1, T_src - 3 - b) for b in range(1, B)],
                    f"T_src != T_tgt, {n_kv_heads} key/value heads, padded memory"),
        _cross_case(gen, dtype, B, T_tgt, T_src, d_model, n_heads, 1, None, "one key/value head, no mask"),
    ]
    check_function(fn, name="cross_attention", reference=ref.cross_attention, cases=cases,
                   outputs=("out", "weights"), mistakes=CROSS_MISTAKES, forbidden=FORBIDDEN["ex1"],
                   probes=CROSS_PROBES, diagnose=_cross_diagnose)


# ---------------------------------------------------------------------------------------------
# Exercise 2: the decoder block with cross-attention, and its mistakes
# ---------------------------------------------------------------------------------------------


def _causal(x):
    T = x.shape[1]
    return torch.ones(T, T, dtype=torch.bool).tril()


def _block_pre(x, memory, self_attn, cross_attn, ffn, norm1, norm2, norm3, memory_mask=None):
    x = x + self_attn(norm1(x), _causal(x))
    x = x + cross_attn(norm2(x), memory, memory_mask)
    return x + ffn(norm3(x))


def _block_bidirectional(x, memory, self_attn, cross_attn, ffn, norm1, norm2, norm3, memory_mask=None):
    x = x + self_attn(norm1(x), None)
    x = x + cross_attn(norm2(x), memory, memory_mask)
    return x + ffn(norm3(x))


def _block_cross_no_residual(x, memory, self_attn, cross_attn, ffn, norm1, norm2, norm3, memory_mask=None):
    x = x + self_attn(norm1(x), _causal(x))
    x = cross_attn(norm2(x), memory, memory_mask)
    return x + ffn(norm3(x))


def _block_memory_normalised(x, memory, self_attn, cross_attn, ffn, norm1, norm2, norm3, memory_mask=None):
    x = x + self_attn(norm1(x), _causal(x))
    x = x + cross_attn(norm2(x), norm2(memory), memory_mask)
    return x + ffn(norm3(x))


def _block_kv_from_decoder(x, memory, self_attn, cross_attn, ffn, norm1, norm2, norm3, memory_mask=None):
    x = x + self_attn(norm1(x), _causal(x))
    h = norm2(x)
    x = x + cross_attn(h, h, None)
    return x + ffn(norm3(x))


def _block_mask_dropped(x, memory, self_attn, cross_attn, ffn, norm1, norm2, norm3, memory_mask=None):
    x = x + self_attn(norm1(x), _causal(x))
    x = x + cross_attn(norm2(x), memory, None)
    return x + ffn(norm3(x))


def _block_cross_first(x, memory, self_attn, cross_attn, ffn, norm1, norm2, norm3, memory_mask=None):
    x = x + cross_attn(norm2(x), memory, memory_mask)
    x = x + self_attn(norm1(x), _causal(x))
    return x + ffn(norm3(x))


def _block_post(x, memory, self_attn, cross_attn, ffn, norm1, norm2, norm3, memory_mask=None):
    x = norm1(x + self_attn(x, _causal(x)))
    x = norm2(x + cross_attn(x, memory, memory_mask))
    return norm3(x + ffn(x))


def _block_norms_swapped(x, memory, self_attn, cross_attn, ffn, norm1, norm2, norm3, memory_mask=None):
    return _block_pre(x, memory, self_attn, cross_attn, ffn, norm2, norm1, norm3, memory_mask)


def _block_ffn_no_residual(x, memory, self_attn, cross_attn, ffn, norm1, norm2, norm3, memory_mask=None):
    x = x + self_attn(norm1(x), _causal(x))
    x = x + cross_attn(norm2(x), memory, memory_mask)
    return ffn(norm3(x))


def _block_no_cross(x, memory, self_attn, cross_attn, ffn, norm1, norm2, norm3, memory_mask=None):
    x = x + self_attn(norm1(x), _causal(x))
    return x + ffn(norm3(x))


BLOCK_MISTAKES = (
    Mistake("self_attention_bidirectional",
            "the decoder's self-attention is left bidirectional (no mask), so each target position reads "
            "the target tokens after it, which it is being trained to predict; pass the causal mask "
            "(T_tgt, T_tgt): self_attn(norm1(x), causal)",
            _block_bidirectional),
    Mistake("cross_no_residual",
            "the cross-attention sublayer has no residual connection: x = cross_attn(...) throws away the "
            "stream; add its output: x = x + cross_attn(norm2(x), memory, memory_mask)",
            _block_cross_no_residual),
    Mistake("memory_normalised_twice",
            "memory is normalised again with norm2; the encoder's final norm has already normalised it, "
            "and norm2 belongs to the decoder stream only: cross_attn(norm2(x), memory, memory_mask)",
            _block_memory_normalised),
    Mistake("kv_from_decoder",
            "cross_attn reads the decoder stream as its memory; its second argument is the encoder's "
            "output, memory, which supplies the keys and values",
            _block_kv_from_decoder),
    Mistake("memory_mask_dropped",
            "memory_mask is not passed to cross_attn, so padded source tokens are attended to; call "
            "cross_attn(norm2(x), memory, memory_mask)",
            _block_mask_dropped),
    Mistake("cross_before_self",
            "cross-attention runs before self-attention; the decoder block first lets the target tokens "
            "read each other (causal self-attention), then reads the source (cross-attention), then the FFN",
            _block_cross_first),
    Mistake("post_ln",
            "this is the Post-LN decoder block, norm1(x + self_attn(x, causal)); this exercise asks for "
            "Pre-LN: each sublayer reads a normalised copy and adds to the raw stream, x + self_attn(norm1(x), causal)",
            _block_post),
    Mistake("norms_swapped",
            "norm1 and norm2 are swapped; norm1 goes before self-attention and norm2 before cross-attention",
            _block_norms_swapped),
    Mistake("ffn_no_residual",
            "the FFN sublayer has no residual connection; the block ends with x + ffn(norm3(x))",
            _block_ffn_no_residual),
    Mistake("no_cross_attention",
            "the cross-attention sublayer is missing: without it the decoder never reads the source; "
            "between self-attention and the FFN add x = x + cross_attn(norm2(x), memory, memory_mask)",
            _block_no_cross),
)


# Probes: the decoder block with one step changed (which norm a sublayer reads, where its residual
# starts, the self-attention mask, the mask handed to cross-attention, an extra final norm)

_SUBLAYERS = ("self", "cross", "ffn")
_OWN_NORM = {"self": "norm1", "cross": "norm2", "ffn": "norm3"}
_LABEL = {"self": "self-attention", "cross": "cross-attention", "ffn": "FFN"}
_CALL = {"self": "x + self_attn(norm1(x), causal)", "cross": "x + cross_attn(norm2(x), memory, memory_mask)",
         "ffn": "x + ffn(norm3(x))"}


def _block_variant(*, norms: dict[str, str] | None = None, residual: dict[str, str] | None = None,
                   self_mask: str = "causal", memory_mask: str = "right", final: str | None = None) -> Callable[..., Any]:
    """decoder_block with one step changed: `norms` sublayer -> "norm1".."norm3" or "none" (what its
    input goes through), `residual` sublayer -> "normed" (the residual starts from the normalised copy),
    "none" (no residual) or "twice" (x added twice); the self-attention mask ("causal", "triu",
    "next" = tril(1), "diagonal" = eye); memory_mask "inverted"; `final` a norm applied to the output."""
    norms, residual = {**_OWN_NORM, **(norms or {})}, residual or {}

    def wrong(x, memory, self_attn, cross_attn, ffn, norm1, norm2, norm3, memory_mask_=None):
        pick = {"norm1": norm1, "norm2": norm2, "norm3": norm3, "none": lambda t: t}
        T = x.shape[1]
        ones = torch.ones(T, T, dtype=torch.bool, device=x.device)
        mask = {"causal": ones.tril(), "triu": ones.triu(), "next": ones.tril(1),
                "diagonal": torch.eye(T, dtype=torch.bool, device=x.device)}[self_mask]
        m = memory_mask_ if memory_mask_ is None or memory_mask == "right" else ~memory_mask_
        sublayers = {"self": lambda h: self_attn(h, mask), "cross": lambda h: cross_attn(h, memory, m), "ffn": ffn}
        for name in _SUBLAYERS:
            h = pick[norms[name]](x)
            how = residual.get(name, "raw")
            base = {"raw": x, "normed": h, "none": 0, "twice": 2 * x}[how]
            x = base + sublayers[name](h)
        return pick[final](x) if final else x
    return wrong


def _block_probe_table() -> dict[str, tuple[str, Callable[..., Any]]]:
    table: dict[str, tuple[str, Callable[..., Any]]] = {}
    for name in _SUBLAYERS:
        own = _OWN_NORM[name]
        for other in ("norm1", "norm2", "norm3", "none"):
            if other == own:
                continue
            reads = "without a norm" if other == "none" else f"through {other}"
            table[f"{name}_{other}"] = (
                f"the {_LABEL[name]} "
                f"sublayer reads x {reads}; each sublayer has its own norm: {_CALL[name]}",
                _block_variant(norms={name: other}))
        table[f"{name}_residual_normed"] = (
            f"the residual of the {_LABEL[name]} "
            f"sublayer starts from the normalised copy ({own}(x) + ...); Pre-LN adds each sublayer's output to the raw "
            f"stream: {_CALL[name]}", _block_variant(residual={name: "normed"}))
        table[f"{name}_residual_twice"] = (
            f"x is added twice around the {_LABEL[name]} "
            f"sublayer (2x + ...); the residual adds the sublayer's output to the stream once: {_CALL[name]}",
            _block_variant(residual={name: "twice"}))
    table["self_no_residual"] = (
        "the self-attention sublayer has no residual connection: x = self_attn(...) throws away the stream; "
        "x = x + self_attn(norm1(x), causal)", _block_variant(residual={"self": "none"}))
    for key, (what, how) in {"triu": ("triu(): each position sees itself and the positions after it",
                                      {"self_mask": "triu"}),
                             "next": ("tril(1): each position also sees the next target token", {"self_mask": "next"}),
                             "diagonal": ("the diagonal only: each position sees itself alone", {"self_mask": "diagonal"})
                             }.items():
        table[f"self_mask_{key}"] = (f"the self-attention mask is {what}; the causal mask is tril() of ones "
                                     "(T_tgt, T_tgt), True where key <= query", _block_variant(**how))
    table["memory_mask_inverted"] = ("memory_mask is inverted before cross_attn (~memory_mask): True marks a real "
                                     "source token; pass memory_mask as it is", _block_variant(memory_mask="inverted"))
    for norm in ("norm1", "norm2", "norm3"):
        table[f"final_{norm}"] = (f"{norm} is applied again to the block's output; a Pre-LN block returns the "
                                  "raw stream x + ffn(norm3(x)) (the model's final norm comes after the last block)",
                                  _block_variant(final=norm))
    return table


BLOCK_PROBES = _probes.probes(_block_probe_table())


class _Given(functools.partial):
    """A sublayer or norm handed to the learner: a plain call of a callable, with a short repr."""

    def __new__(cls, description: str, func: Callable[..., Any], *args: Any) -> Self:
        self = super().__new__(cls, func, *args)
        self.description = description
        return self

    def __repr__(self) -> str:
        return self.description


def _fill_(module: nn.Module, gen: torch.Generator, dtype: torch.dtype) -> None:
    with torch.no_grad():
        for name, p in module.named_parameters():
            if isinstance(module, nn.LayerNorm) or "norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.5 * _randn(gen, *p.shape, dtype=dtype))
            else:
                p.copy_(_randn(gen, *p.shape, dtype=dtype, scale=1.5 / math.sqrt(p.shape[-1])))
    module.requires_grad_(False)


def _block_case(gen: torch.Generator, dtype: torch.dtype, B: int, T_tgt: int, T_src: int, d_model: int,
                n_heads: int, d_ff: int, padded: bool) -> Case:
    config = ref.ModelConfig(vocab_size=2, d_model=d_model, n_heads=n_heads, max_seq_len=max(T_tgt, T_src))
    with torch.random.fork_rng(devices=[]):  # build modules without touching the learner's random state
        self_attn, cross_attn = ref.Attention(config).to(dtype), ref.Attention(config).to(dtype)
        mlp = nn.Sequential(nn.Linear(d_model, d_ff, dtype=dtype), nn.Tanh(), nn.Linear(d_ff, d_model, dtype=dtype))
        norms = [nn.LayerNorm(d_model, dtype=dtype) for _ in range(3)]
    for module in (self_attn, cross_attn, mlp, *norms):
        _fill_(module, gen, dtype)
    lengths = [T_src] + [max(1, T_src - 2 - b) for b in range(1, B)]
    memory_mask = torch.arange(T_src)[None, :] < torch.tensor(lengths)[:, None] if padded else None  # (B, T_src)
    args = (_randn(gen, B, T_tgt, d_model, dtype=dtype), _randn(gen, B, T_src, d_model, dtype=dtype) * 2 + 1,
            _Given(f"self_attn (h, mask) -> (B, T_tgt, d_model): self-attention, {n_heads} heads",
                   ref.self_attention_sublayer(self_attn)),
            _Given(f"cross_attn (h, memory, memory_mask) -> (B, T_tgt, d_model): cross-attention, {n_heads} heads",
                   ref.cross_attention_sublayer(cross_attn)),
            _Given(f"ffn (Linear {d_model}->{d_ff}, tanh, Linear {d_ff}->{d_model})", mlp),
            *[_Given(f"norm{i + 1} (nn.LayerNorm({d_model}) with its own gamma and beta)", n) for i, n in enumerate(norms)],
            memory_mask)
    names = ("x", "memory", "self_attn", "cross_attn", "ffn", "norm1", "norm2", "norm3", "memory_mask")
    sizes = {"B": B, "T_tgt": T_tgt, "T_src": T_src, "d_model": d_model}
    return Case(args, sizes, names, "padded memory" if padded else "no memory_mask")


def check_decoder_block(fn: Any, *, seed: int = 0, dtype: torch.dtype = torch.float32, B: int = 2,
                        T_tgt: int = 5, T_src: int = 7, d_model: int = 12, n_heads: int = 3, d_ff: int = 11) -> None:
    """decoder_block(x, memory, self_attn, cross_attn, ffn, norm1, norm2, norm3, memory_mask): Pre-LN,
    causal self-attention, cross-attention on memory, FFN; three residual sublayers."""
    gen = torch.Generator().manual_seed(seed)
    cases = [_block_case(gen, dtype, B, T_tgt, T_src, d_model, n_heads, d_ff, True),
             _block_case(gen, dtype, B, T_tgt, T_src, d_model, n_heads, d_ff, False)]
    try:
        check_function(fn, name="decoder_block", reference=ref.decoder_block, cases=cases, outputs=("output",),
                       mistakes=BLOCK_MISTAKES, forbidden=FORBIDDEN["ex2"], probes=BLOCK_PROBES)
    except CheckFailed:
        for case in cases:  # a raw shape error from inside a sublayer says less than which mask went where
            problem = _block_mask_problem(fn, case)
            if problem:
                raise CheckFailed(f"decoder_block ({case.note}): {problem}") from None
        raise


def _block_mask_problem(fn: Any, case: Case) -> str | None:
    """Which mask the learner's block handed to which attention, when that is the mistake."""
    x, memory = case.args[0], case.args[1]
    T_tgt, T_src = x.shape[1], memory.shape[1]
    given_self, given_cross = case.args[2], case.args[3]
    self_masks: list[tuple[int, ...] | None] = []
    cross_masks: list[tuple[int, ...] | None] = []

    def self_attn(h: Any, *args: Any, **kwargs: Any) -> Any:
        mask = args[0] if args else kwargs.get("mask")
        self_masks.append(None if mask is None else tuple(mask.shape))
        return given_self(h, *args, **kwargs)

    def cross_attn(h: Any, *args: Any, **kwargs: Any) -> Any:
        mask = args[1] if len(args) > 1 else kwargs.get("memory_mask")
        cross_masks.append(None if mask is None else tuple(mask.shape))
        return given_cross(h, *args, **kwargs)

    args = list(case.args)
    args[2], args[3] = _Given(given_self.description, self_attn), _Given(given_cross.description, cross_attn)
    with contextlib.suppress(Exception), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fn(*[a.clone() if isinstance(a, torch.Tensor) else a for a in args])
    if T_src != T_tgt and any(m is not None and m[-2:] == (T_src, T_src) for m in self_masks):
        return (f"the causal mask is sized by the source: self-attention got a (T_src, T_src) = ({T_src}, {T_src}) "
                f"mask, but its scores are (T_tgt, T_tgt) = ({T_tgt}, {T_tgt}); build it from the target's length, "
                f"causal_mask(x.shape[1]) (memory's length only sizes cross-attention's keys)")
    if self_masks and all(m is None for m in self_masks) and any(m is not None and m[-2:] == (T_tgt, T_src)
                                                                 for m in cross_masks):
        return ("the causal mask went to cross-attention and self-attention got none: the target's self-attention "
                "is the causal one (causal_mask(T_tgt)); cross-attention may see every real source token, and its "
                "only mask is memory_mask, the padding of the source")
    return None


# ---------------------------------------------------------------------------------------------
# Exercise 3a: name the masks
# ---------------------------------------------------------------------------------------------


def _named_masks() -> dict[str, torch.Tensor]:
    """The masks of exercise 3 (printed in the notebook), each (T_q, T_k), True = may attend."""
    diagonal_blocked = torch.ones(6, 6, dtype=torch.bool).tril(-1)  # strictly below the diagonal
    diagonal_blocked[0, 0] = True
    return {
        "A": masks_ref.causal_padding_mask([4], 6)[0],
        "B": masks_ref.prefix_lm_mask([3], [6], 6)[0],
        "C": masks_ref.cross_mask([5], 4, 6)[0],
        "D": masks_ref.bidirectional_mask([4], 6)[0],
        "E": diagonal_blocked,
        "F": masks_ref.prefix_lm_mask([2], [5], 6)[0],
    }


MASKS_TO_NAME = _named_masks()
MASK_ANSWERS = {"A": "causal", "B": "prefix-lm", "C": "cross", "D": "bidirectional", "E": "none", "F": "prefix-lm"}

_NAME_MISTAKES = {
    ("A", "prefix-lm"): "the last two columns are blocked for every query: they are padded keys, not a "
                        "prefix; above the diagonal nothing is allowed, so it is causal",
    ("A", "bidirectional"): "query 0 sees only key 0: nothing above the diagonal is allowed, which is causal",
    ("B", "bidirectional"): "queries 0-2 see keys 0-2 together, but query 3 cannot see key 4: bidirectional "
                            "only inside a prefix, causal after it",
    ("B", "causal"): "query 0 sees keys 1 and 2, which are after it: inside the prefix of 3 tokens every "
                     "token sees every other, which makes it prefix-lm",
    ("C", "bidirectional"): "it is not square (4 queries, 6 keys): queries and keys come from two different "
                            "sequences, which is cross-attention",
    ("D", "causal"): "query 0 sees keys 1-3, which are after it; the blocked columns are padding",
    ("D", "cross"): "it is square and its queries and keys are the same 6 positions: a self-attention mask "
                    "in which every query sees every real key",
    ("E", "causal"): "query 1 cannot see key 1, its own token: a causal mask allows j <= i, diagonal "
                     "included; no mask kind blocks the diagonal",
    ("F", "causal"): "query 0 sees key 1: the first 2 tokens see each other, so it is prefix-lm "
                     "(the last column is padding)",
    ("F", "bidirectional"): "query 2 cannot see key 3: after the prefix of 2 tokens it is causal",
}


def check_mask_names(**answers: Any) -> None:
    """Exercise 3a: the kind of each printed mask, or 'none'."""
    verify_environment()
    refuse_answers_computed_by([f"mask_{key}" for key in MASK_ANSWERS], FORBIDDEN["ex3a"] + (MASK_ANSWERS,))
    kinds = (*masks_ref.MASK_KINDS, "none")
    for key, right in MASK_ANSWERS.items():
        if key not in answers or answers[key] is None:
            raise CheckFailed(f"mask {key} has no answer yet: set it to one of {kinds}")
        value = answers[key]
        if not isinstance(value, str) or value.strip().lower() not in kinds:
            raise CheckFailed(f"mask {key}: answer with one of {kinds}; got {value!r}")
        value = value.strip().lower()
        if value == right:
            continue
        reason = _NAME_MISTAKES.get((key, value))
        if reason is None:
            reason = ("it is one of the four kinds; look at the diagonal, the part above it, and the columns "
                      "no query may see" if value == "none" else
                      "look at its shape, its diagonal, what lies above the diagonal, and which columns are "
                      "blocked for every query")
        raise CheckFailed(f"mask {key} is not {value}: {reason}")
    verify_environment()
    print(f"✓ all {len(MASK_ANSWERS)} masks are named right")


# ---------------------------------------------------------------------------------------------
# Exercise 3b: build the masks each model kind needs
# ---------------------------------------------------------------------------------------------


def _masks_wrong(*, encoder: str = "bidirectional", decoder: str = "causal", cross: str = "right",
                 padding: str = "keys", inverted: bool = False):
    """A complete model_masks with the given mistakes built in."""
    def build(kind_of_mask: str, lengths: torch.Tensor, T_q: int, T_k: int) -> torch.Tensor:
        q = torch.arange(T_q)[:, None]  # (T_q, 1)
        k = torch.arange(T_k)[None, :]  # (1, T_k)
        if padding == "keys":
            real = (k[None] < lengths[:, None, None])  # (B, 1, T_k)
        elif padding == "queries":  # WRONG: blocks query rows of padded positions
            real = (q[None] < lengths[:, None, None])  # (B, T_q, 1)
        else:
            real = torch.ones(1, 1, 1, dtype=torch.bool)
        structure = {"bidirectional": torch.ones(T_q, T_k, dtype=torch.bool),
                     "causal": k <= q}[kind_of_mask]
        mask = (structure[None] & real).expand(lengths.shape[0], T_q, T_k).clone()
        return ~mask if inverted else mask

    def wrong(kind, lengths, T, target_lengths=None, T_tgt=None):
        lengths = torch.as_tensor(lengths)
        if kind == "encoder":
            return {"self": build(encoder, lengths, T, T)}
        if kind == "decoder":
            return {"self": build(decoder, lengths, T, T)}
        target_lengths = torch.as_tensor(target_lengths)
        if cross == "right":
            c = build("bidirectional", lengths, T_tgt, T)
        elif cross == "causal":
            c = build("causal", lengths, T_tgt, T)
        elif cross == "target_lengths":
            c = build("bidirectional", torch.clamp(target_lengths, max=T), T_tgt, T)
        else:  # "transposed": (B, T_src, T_tgt)
            c = build("bidirectional", target_lengths, T, T_tgt)
        return {"encoder": build(encoder, lengths, T, T), "decoder": build(decoder, target_lengths, T_tgt, T_tgt),
                "cross": c}
    return wrong


MODEL_MASK_MISTAKES = (
    Mistake("padding_on_query_axis",
            "padding blocks query rows instead of key columns: a padded token must not be attended to "
            "(its column is False), but its own row may stay as it is; compare the key index j with the length",
            _masks_wrong(padding="queries")),
    Mistake("no_padding", "padded tokens are not blocked: a key j is real only when j < lengths[b]",
            _masks_wrong(padding="none")),
    Mistake("inverted", "the masks are inverted: True means may attend, False blocked",
            _masks_wrong(inverted=True)),
    Mistake("causal_encoder",
            "the encoder's mask is causal; an encoder (BERT, T5's encoder) is bidirectional: every token sees "
            "every real token of its sequence",
            _masks_wrong(encoder="causal")),
    Mistake("bidirectional_decoder",
            "the decoder's self-attention mask is bidirectional; a decoder (GPT, T5's decoder) is causal: "
            "query i sees keys 0..i only",
            _masks_wrong(decoder="bidirectional")),
    Mistake("causal_cross",
            "the cross mask is causal; every target position may see the whole (real) source, so only "
            "padded source keys are blocked",
            _masks_wrong(cross="causal")),
    Mistake("cross_target_lengths",
            "the cross mask blocks source keys by the target's lengths; its keys are source tokens, so use "
            "the source lengths (lengths)",
            _masks_wrong(cross="target_lengths")),
    Mistake("cross_transposed",
            "the cross mask has shape (B, T_src, T_tgt); its queries are the target tokens and its keys the "
            "source tokens: (B, T_tgt, T_src)",
            _masks_wrong(cross="transposed")),
)

_MASK_KEYS = {"encoder": ("self",), "decoder": ("self",), "encoder-decoder": ("encoder", "decoder", "cross")}


def _masks_case(kind: str, lengths: Sequence[int], T: int, target_lengths: Sequence[int] | None,
                T_tgt: int | None) -> Case:
    args = (kind, torch.tensor(lengths), T) + ((torch.tensor(target_lengths), T_tgt) if kind == "encoder-decoder" else ())
    sizes = {"B": len(lengths), "T": T} if T_tgt is None else {"B": len(lengths), "T_src": T, "T_tgt": T_tgt}
    names = ("kind", "lengths", "T", "target_lengths", "T_tgt")[:len(args)]
    return Case(args, sizes, names, f"kind={kind!r}")


def check_model_masks(fn: Any, *, T: int = 6, T_tgt: int = 4, lengths: Sequence[int] = (6, 3),
                      target_lengths: Sequence[int] = (4, 2)) -> None:
    """model_masks(kind, lengths, T, target_lengths=None, T_tgt=None) -> dict of (B, T_q, T_k) bool masks."""
    verify_environment()
    cases = [_masks_case("encoder", lengths, T, None, None), _masks_case("decoder", lengths, T, None, None),
             _masks_case("encoder-decoder", lengths, T, target_lengths, T_tgt)]
    for case in cases:
        expected = masks_ref.model_masks(*case.args)
        got = call_learner(fn, "model_masks", case, FORBIDDEN["ex3b"])
        problem = _dict_problem(got, expected, case)
        if problem is None:
            continue
        for mistake in MODEL_MASK_MISTAKES:
            try:
                wrong = mistake.impl(*case.args)
            except Exception:  # a mistake that cannot run on this case cannot match it
                continue
            if _dict_problem(got, wrong, case) is None:
                raise CheckFailed(f"model_masks ({case.note}): {mistake.message}")
        symptom = _masks_symptom(got, expected, case) if isinstance(got, dict) and set(got) == set(expected) else None
        raise CheckFailed(f"model_masks ({case.note}): {symptom or problem} [inputs: {case.describe_inputs()}]")
    verify_environment()
    print(f"✓ model_masks: matches the reference on all {len(cases)} cases")


def _region_symptom(got: torch.Tensor, expected: torch.Tensor, key_lengths: torch.Tensor,
                    query_lengths: torch.Tensor | None, causal: bool, lengths_name: str) -> str | None:
    """The one region of a (B, T_q, T_k) mask that holds every wrong entry: the padded keys, the rows of
    padded queries, the diagonal, or the keys after the query; None when the wrong entries are spread."""
    if not (isinstance(got, torch.Tensor) and got.shape == expected.shape and got.dtype == torch.bool):
        return None
    T_q, T_k = expected.shape[-2:]
    i, j = torch.arange(T_q)[None, :, None], torch.arange(T_k)[None, None, :]
    n = torch.as_tensor(key_lengths).cpu()[:, None, None]  # (B, 1, 1)
    wrong = got.detach().cpu() != expected.cpu()
    regions = [(j >= n, f"only the padded keys are wrong (columns j >= {lengths_name}[b]): a key is visible only "
                        f"when it is a real token, j < {lengths_name}[b]")]
    if query_lengths is not None:
        nq = torch.as_tensor(query_lengths).cpu()[:, None, None]
        regions.append(((i >= nq) & (j < n), "only the rows of padded queries are wrong: padding blocks keys "
                                              "(columns), not queries; a padded query's row keeps its pattern "
                                              "(its output is never used)"))
    if causal:
        regions += [((i == j) & (j < n), "only the diagonal is wrong: in a causal mask each token sees itself, "
                                         "key j visible to query i when j <= i"),
                    ((j > i) & (j < n), "only the keys after the query (above the diagonal) are wrong: a causal "
                                        "mask allows key j for query i exactly when j <= i (tril)"),
                    ((j < i) & (j < n), "only the keys before the query (below the diagonal) are wrong: a causal "
                                        "mask allows every earlier real key, j <= i (tril)")]
    for region, message in regions:
        if bool(wrong.any()) and not bool((wrong & ~region.expand_as(wrong)).any()):
            return message
    if causal and torch.equal(got.detach().cpu(), ((j >= i) & (j < n)).expand_as(wrong)):
        return ("it is upper triangular (triu: query i sees the keys j >= i, the future); a causal mask is lower "
                "triangular, key j visible to query i when j <= i (tril)")
    return None


def _masks_symptom(got: Any, expected: dict[str, torch.Tensor], case: Case) -> str | None:
    """The first wrong mask of the dict, and the region of it that is wrong."""
    kind, lengths = case.args[0], case.args[1]
    target = case.args[3] if kind == "encoder-decoder" else None
    specs = {"encoder": {"self": (lengths, None, False, "lengths")},
             "decoder": {"self": (lengths, None, True, "lengths")},
             "encoder-decoder": {"encoder": (lengths, None, False, "lengths"),
                                 "decoder": (target, None, True, "target_lengths"),
                                 "cross": (lengths, target, False, "lengths")}}[kind]
    for key in _MASK_KEYS[kind]:
        if not isinstance(got.get(key), torch.Tensor) or torch.equal(got[key].cpu(), expected[key].cpu()):
            continue
        symptom = _region_symptom(got[key], expected[key], *specs[key])
        return f"the {key!r} mask: {symptom}" if symptom else None
    return None


def _dict_problem(got: Any, expected: dict[str, torch.Tensor], case: Case) -> str | None:
    if not isinstance(got, dict):
        return f"model_masks should return a dict with keys {sorted(expected)}; it returned a {type(got).__name__}"
    if set(got) != set(expected):
        return f"the dict should have the keys {sorted(expected)}; it has {sorted(got)}"
    for key in _MASK_KEYS[case.args[0]]:
        problem = compare(got[key], expected[key], (f"the {key!r} mask",), case.sizes, "model_masks")
        if problem:
            return problem
    return None


# ---------------------------------------------------------------------------------------------
# Exercise 4: the prefix-LM mask
# ---------------------------------------------------------------------------------------------


def _prefix_wrong(rule: str):
    def wrong(prefix_lengths, lengths, T):
        i = torch.arange(T)[None, :, None]  # (1, T_q, 1)
        j = torch.arange(T)[None, None, :]  # (1, 1, T_k)
        p = torch.as_tensor(prefix_lengths)[:, None, None]  # (B, 1, 1)
        n = torch.as_tensor(lengths)[:, None, None]  # (B, 1, 1)
        real = j < n
        if rule == "first_prefix":  # WRONG: prefix_lengths[0] for every sequence of the batch
            p = p[:1].expand(p.shape[0], 1, 1)
            visible = (j <= i) | (j < p)
        elif rule == "causal_inside_prefix":
            visible = j <= i
        elif rule == "prefix_on_queries":
            visible = (j <= i) | (i < p)
        elif rule == "prefix_inclusive":
            visible = (j <= i) | (j <= p)
        elif rule == "bidirectional":
            visible = torch.ones_like(j <= i)
        elif rule == "no_padding":
            visible, real = (j <= i) | (j < p), torch.ones_like(real)
        elif rule == "padding_on_queries":
            visible, real = (j <= i) | (j < p), i < n
        else:  # "causal_then_prefix_blocked": the prefix sees only itself, the rest is causal over non-prefix keys
            visible = ((j < p) & (i < p)) | ((j <= i) & (j >= p))
        return (visible & real).expand(p.shape[0], T, T).clone()
    return wrong


PREFIX_MISTAKES = (
    Mistake("causal_inside_prefix",
            "the mask is causal inside the prefix too; in a prefix-LM every prefix token sees the whole "
            "prefix (keys j < prefix_length), including the tokens after it",
            _prefix_wrong("causal_inside_prefix")),
    Mistake("prefix_on_queries",
            "the prefix is applied to queries: prefix tokens see the whole sequence, including the part "
            "being generated; the prefix decides which keys are visible to everyone: (j <= i) | (j < prefix)",
            _prefix_wrong("prefix_on_queries")),
    Mistake("prefix_inclusive",
            "the prefix includes one token too many (j <= prefix); a prefix of length p covers keys 0..p-1: "
            "j < prefix_length",
            _prefix_wrong("prefix_inclusive")),
    Mistake("bidirectional",
            "the mask is bidirectional everywhere; after the prefix it is causal: query i sees keys j <= i",
            _prefix_wrong("bidirectional")),
    Mistake("no_padding",
            "padded keys (j >= lengths[b]) are not blocked; combine the prefix-LM pattern with the key-padding "
            "mask j < lengths[b]",
            _prefix_wrong("no_padding")),
    Mistake("padding_on_query_axis",
            "padding blocks query rows instead of key columns; a padded token must not be seen (its column "
            "is False): compare the key index j with the length",
            _prefix_wrong("padding_on_queries")),
    Mistake("prefix_cut_off",
            "the tokens after the prefix cannot see the prefix; they see the whole prefix and the "
            "generated tokens up to themselves: (j <= i) | (j < prefix)",
            _prefix_wrong("prefix_cut_off")),
    Mistake("first_prefix_for_all",
            "every sequence got the first sequence's prefix (prefix_lengths[0]); each sequence has its own "
            "prefix: compare the key index with prefix_lengths[:, None, None], one prefix per sequence",
            _prefix_wrong("first_prefix")),
)


def _prefix_variant(*, causal: str = "j <= i", prefix: str = "j < p", combine: str = "or", padding: str = "j < n",
                    transposed: bool = False) -> Callable[..., torch.Tensor]:
    """prefix_lm_mask with one of its parts changed: the causal part, the prefix part, how they combine,
    the padding part (each a comparison of the query index i, the key index j, the prefix p and the
    length n), or the whole mask transposed."""
    def wrong(prefix_lengths, lengths, T):
        i = torch.arange(T)[None, :, None]  # (1, T_q, 1)
        j = torch.arange(T)[None, None, :]  # (1, 1, T_k)
        p = torch.as_tensor(prefix_lengths).cpu()[:, None, None]  # (B, 1, 1)
        n = torch.as_tensor(lengths).cpu()[:, None, None]  # (B, 1, 1)
        parts = {"j <= i": j <= i, "j < i": j < i, "j <= i + 1": j <= i + 1,
                 "j < p": j < p, "j < p - 1": j < p - 1,
                 "j < n": j < n, "j <= n": j <= n, "j < n - 1": j < n - 1}
        a, b = parts[causal], parts[prefix]
        mask = ((a | b) if combine == "or" else (a & b)) & parts[padding]
        mask = mask.expand(p.shape[0], T, T)
        return (mask.transpose(-2, -1) if transposed else mask).clone().to(torch.as_tensor(lengths).device)
    return wrong


_PREFIX_RULE = "key j is visible to query i when j < lengths[b] and (j <= i or j < prefix_lengths[b])"
PREFIX_PROBES = _probes.probes({
    "diagonal_blocked": (f"no token may see itself (j < i); the causal part includes the diagonal: {_PREFIX_RULE}",
                         _prefix_variant(causal="j < i")),
    "sees_next": (f"each token after the prefix also sees the next one (j <= i + 1); {_PREFIX_RULE}",
                  _prefix_variant(causal="j <= i + 1")),
    "prefix_one_short": ("the prefix covers one token too few (j < prefix - 1); a prefix of length p covers the "
                         f"keys 0 .. p - 1: {_PREFIX_RULE}", _prefix_variant(prefix="j < p - 1")),
    "and_not_or": ("the causal part and the prefix part are combined with & (and); a key is visible when it is "
                   f"not in the future OR inside the prefix: {_PREFIX_RULE}", _prefix_variant(combine="and")),
    "last_real_key_blocked": ("padding blocks the last real key too (j < lengths[b] - 1); the real keys are "
                              f"0 .. lengths[b] - 1: {_PREFIX_RULE}", _prefix_variant(padding="j < n - 1")),
    "transposed": ("the mask is transposed: mask[b, i, j] has the query i on the rows and the key j on the "
                   f"columns (build it from i = arange(T)[:, None] and j = arange(T)[None, :]); {_PREFIX_RULE}",
                   _prefix_variant(transposed=True)),
})


def _prefix_diagnose(got: Any, expected: Any, case: Case) -> str | None:
    """The part of the mask that is wrong, when all the wrong entries lie in one part: the padded keys,
    the prefix keys, or the keys after the prefix (causal there)."""
    if not (isinstance(got, torch.Tensor) and got.shape == expected.shape and got.dtype == torch.bool):
        return None
    prefix, lengths, T = case.args
    g, e = got.detach().cpu(), expected.cpu()
    j = torch.arange(T)[None, None, :]  # (1, 1, T_k)
    p, n = torch.as_tensor(prefix).cpu()[:, None, None], torch.as_tensor(lengths).cpu()[:, None, None]  # (B, 1, 1)
    wrong = g != e
    if not bool(wrong.any()):
        return None
    b, qi, kj = (int(t) for t in wrong.nonzero()[0])
    said = "True" if bool(g[b, qi, kj]) else "False"
    where = f"mask[{b}, {qi}, {kj}] is {said} (prefix_lengths[{b}] = {int(p[b])}, lengths[{b}] = {int(n[b])})"
    parts = {
        "padding": (j >= n, "only the padded keys (columns j >= lengths[b]) are wrong: every query must be "
                            "blocked from them, whatever the prefix; the real keys are j < lengths[b]"),
        "prefix": ((j < p) & (j < n), "only the prefix keys (columns j < prefix_lengths[b]) are wrong: every "
                                      "query sees the whole prefix, the prefix tokens after it included"),
        "after": ((j >= p) & (j < n), "only the keys after the prefix are wrong: there the mask is causal, "
                                      "key j visible to query i exactly when j <= i"),
    }
    for region, message in parts.values():
        if not bool((wrong & ~region.expand_as(wrong)).any()):
            return f"{where}; {message}"
    return None


def check_prefix_lm_mask(fn: Any, *, T: int = 7, prefix_lengths: Sequence[int] = (3, 2, 0),
                         lengths: Sequence[int] = (7, 5, 4)) -> None:
    """prefix_lm_mask(prefix_lengths, lengths, T) -> (B, T, T) bool."""
    B = len(lengths)
    names = ("prefix_lengths", "lengths", "T")
    sizes = {"B": B, "T": T}
    cases = [
        Case((torch.tensor(prefix_lengths), torch.tensor(lengths), T), sizes, names, "prefixes " + str(list(prefix_lengths))),
        Case((torch.tensor(lengths), torch.tensor(lengths), T), sizes, names, "prefix = the whole sequence"),
    ]
    check_function(fn, name="prefix_lm_mask", reference=masks_ref.prefix_lm_mask, cases=cases, outputs=("mask",),
                   mistakes=PREFIX_MISTAKES, forbidden=FORBIDDEN["ex4"], probes=PREFIX_PROBES,
                   diagnose=_prefix_diagnose)


# ---------------------------------------------------------------------------------------------
# Exercise 5: parameters of an encoder-decoder
# ---------------------------------------------------------------------------------------------

# The config of exercise 5 (printed there): a base-sized encoder-decoder like the 2017 Transformer's,
# with LayerNorm, learned position tables, tied embeddings and no biases.
COUNT_CONFIG = dict(vocab_size=32000, d_model=512, n_heads=8, d_ff=2048, n_layers=6, max_seq_len=512,
                    kind="encoder-decoder", norm="layernorm", norm_placement="pre", tie_weights=True)


def _count_answers() -> dict[str, int]:
    d, f, L, V, T = 512, 2048, 6, 32000, 512
    attention = 4 * d * d
    ffn = 2 * d * f
    norm = 2 * d
    encoder_layer = attention + ffn + 2 * norm
    decoder_layer = 2 * attention + ffn + 3 * norm
    total = V * d + 2 * T * d + L * (encoder_layer + decoder_layer) + 2 * norm
    return {"encoder_layer": encoder_layer, "decoder_layer": decoder_layer, "total": total}


COUNT_QUESTIONS = _count_answers()
_D, _F, _L, _V, _T = 512, 2048, 6, 32000, 512
_COUNT_MISTAKES = {
    "encoder_layer": [(4 * _D * _D + 2 * _D * _F, "the two LayerNorms are missing: each has gamma and beta, 2 d_model numbers"),
                      (4 * _D * _D + 2 * _D * _F + 2 * _D, "a LayerNorm has gamma and beta: 2 norms x 2 d_model")],
    "decoder_layer": [(4 * _D * _D + 2 * _D * _F + 4 * _D,
                       "that is an encoder layer; a decoder layer adds cross-attention (another 4 d_model^2) and a "
                       "third LayerNorm"),
                      (8 * _D * _D + 2 * _D * _F + 4 * _D, "the third LayerNorm (before the FFN) is missing"),
                      (4 * _D * _D + 2 * _D * _F + 6 * _D, "cross-attention's four projections (4 d_model^2) are missing")],
    "total": [(COUNT_QUESTIONS["total"] + _V * _D, "the embedding is counted twice; with tied weights the LM head "
                                                    "is the embedding matrix (and T5 shares it between encoder and decoder)"),
              (COUNT_QUESTIONS["total"] - 2 * 2 * _D, "the final LayerNorms after each stack are missing (Pre-LN: one per stack)"),
              (COUNT_QUESTIONS["total"] - _T * _D, "there are two position tables, one for the source and one for the target"),
              (_V * _D + 2 * _T * _D + 2 * _L * (4 * _D * _D + 2 * _D * _F + 4 * _D) + 4 * _D,
               "the decoder layers are counted as encoder layers: each also has cross-attention and a third norm")],
}
_COUNT_HINTS = {
    "encoder_layer": "attention (4 d_model^2) + FFN (2 d_model d_ff) + 2 LayerNorms (2 d_model each)",
    "decoder_layer": "self-attention, cross-attention, FFN, and three LayerNorms",
    "total": "one shared embedding, two position tables, 6 layers per stack, and a final norm per stack",
}


def check_encoder_decoder_counts(**answers: Any) -> None:
    """Exercise 5: parameters of one encoder layer, one decoder layer, and the whole model."""
    refuse_answers_computed_by(COUNT_QUESTIONS, FORBIDDEN["ex5"])
    check_numbers(answers, COUNT_QUESTIONS, mistakes=_COUNT_MISTAKES, hints=_COUNT_HINTS,
                  name="check_encoder_decoder_counts", integers=COUNT_QUESTIONS)


# ---------------------------------------------------------------------------------------------
# Catalogue: every check's mistakes and probes (read by the tests and the site)
# ---------------------------------------------------------------------------------------------

PROBES = {"cross_attention": CROSS_PROBES, "decoder_block": BLOCK_PROBES, "prefix_lm_mask": PREFIX_PROBES}

MISTAKES = {
    "cross_attention": CROSS_MISTAKES,
    "decoder_block": BLOCK_MISTAKES,
    "model_masks": MODEL_MASK_MISTAKES,
    "prefix_lm_mask": PREFIX_MISTAKES,
}

protect(ref, masks_ref, sys.modules[__name__])
