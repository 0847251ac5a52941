"""Chapter 02: uncatalogued wrong answers."""

from __future__ import annotations

import torch

from . import Wrong

TOPIC = "heads"


def _gqa(*, proj="qkv", scale=lambda d: d ** -0.5, dim=-1, merge="right", v_layout="interleave",
         weights_unmasked=False):
    def gqa(x, w_q, w_k, w_v, w_o, n_heads, n_kv_heads, mask=None):
        B, T, d_model = x.shape
        d = d_model // n_heads
        ws = {"q": w_q, "k": w_k, "v": w_v}
        q = (x @ ws[proj[0]].T).view(B, T, n_heads, d).transpose(1, 2)
        k = (x @ ws[proj[1]].T)[..., :n_kv_heads * d].reshape(B, T, n_kv_heads, d).transpose(1, 2)
        v = (x @ ws[proj[2]].T)[..., :n_kv_heads * d].reshape(B, T, n_kv_heads, d).transpose(1, 2)
        g = n_heads // n_kv_heads
        k = k.repeat_interleave(g, dim=1)
        v = v.repeat_interleave(g, dim=1) if v_layout == "interleave" else v.repeat(1, g, 1, 1)
        scores = q @ k.transpose(-2, -1) * scale(d)
        free = torch.softmax(scores, dim=dim)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.nan_to_num(torch.softmax(scores, dim=dim), nan=0.0)
        heads = weights @ v
        merged = (heads.transpose(1, 2).reshape(B, T, d_model) if merge == "right"
                  else heads.permute(0, 2, 3, 1).reshape(B, T, d_model))
        return merged @ w_o.T, (free if weights_unmasked else weights)
    return gqa


def _mha(**kw):
    gqa = _gqa(**kw)
    return lambda x, w_q, w_k, w_v, w_o, n_heads, mask=None: gqa(x, w_q, w_k, w_v, w_o, n_heads, n_heads, mask)


def _split_heads_reversed(x, n_heads):
    B, T, d_model = x.shape
    return x.reshape(B, T, n_heads, d_model // n_heads).transpose(1, 2).flip(1)


def _params_no_q(d_model, n_heads, n_kv_heads=None, bias=False):
    kv = (n_kv_heads or n_heads) * (d_model // n_heads)
    return 2 * kv * d_model + d_model * d_model + ((2 * kv + d_model) if bias else 0)


WRONG = [
    Wrong("multi_head_attention", "v_with_w_k", _mha(proj="qkk"), r"V's projection|w_v"),
    Wrong("multi_head_attention", "k_with_w_q", _mha(proj="qqv"), r"K's projection|w_k"),
    Wrong("multi_head_attention", "no_scale", _mha(scale=lambda d: 1.0), r"sqrt\(d_head\)"),
    Wrong("multi_head_attention", "scale_d_head", _mha(scale=lambda d: 1.0 / d), r"sqrt\(d_head\)"),
    Wrong("multi_head_attention", "softmax_query_axis", _mha(dim=-2), r"dim=-1|query axis"),
    Wrong("multi_head_attention", "merge_interleaved", _mha(merge="interleaved"), r"merge"),
    Wrong("multi_head_attention", "weights_before_mask", _mha(weights_unmasked=True), r"weights.*mask|mask.*weights"),
    Wrong("grouped_query_attention", "v_with_w_k", _gqa(proj="qkk"), r"V's projection|w_v"),
    Wrong("grouped_query_attention", "v_heads_repeat", _gqa(v_layout="repeat"), r"repeat|h // "),
    Wrong("grouped_query_attention", "k_with_w_v", _gqa(proj="qvv"), r"K's projection|w_k"),
    Wrong("split_heads", "heads_reversed", _split_heads_reversed, r"wrong places"),
    Wrong("merge_heads", "heads_reversed", lambda x: x.flip(1).transpose(1, 2).reshape(x.shape[0], x.shape[2], -1),
          r"wrong places"),
    Wrong("attention_param_count", "no_w_q", _params_no_q, r"W_Q"),
]

# Written after the probes, without looking at them again: how the probing does on mistakes it was
# not built from. `named` records what happens today.


def _mha_extra(style):
    def mha(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
        B, T, d_model = x.shape
        d = d_model // n_heads
        q, k, v = ((x @ w.T).view(B, T, n_heads, d).transpose(1, 2) for w in (w_q, w_k, w_v))
        if style == "v_head0":
            v = v[:, :1].expand_as(v)
        scale = (d_model / 2) ** -0.5 if style == "half_width" else d ** -0.5
        scores = q @ k.transpose(-2, -1) * scale
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)
        out = (weights @ v).transpose(1, 2).reshape(B, T, d_model) @ w_o.T
        return (out + x if style == "residual" else out), weights
    return mha


HELD_OUT = [
    Wrong("multi_head_attention", "residual_added", _mha_extra("residual"), r"after the weights"),
    Wrong("multi_head_attention", "scale_half_width", _mha_extra("half_width"), r"scale"),
    Wrong("multi_head_attention", "v_of_head_0", _mha_extra("v_head0"), r"after the weights|V"),
]
