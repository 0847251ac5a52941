"""Chapter 05: uncatalogued wrong answers."""

from __future__ import annotations

import math

import torch

from . import Wrong

TOPIC = "blocks"


def _cross(*, streams="right", proj="qkv", dim=-1, fill="-inf", merge="right", scale="d_head", out="proj",
           weights_out="masked", mask_after=False):
    def cross_attention(x, memory, w_q, w_k, w_v, w_o, n_heads, n_kv_heads=None, memory_mask=None):
        n_kv = n_heads if n_kv_heads is None else n_kv_heads
        B, T_q, d_model = x.shape
        d = d_model // n_heads
        q_src, kv_src = (memory, x) if streams == "swapped" else (x, memory)
        ws = {"q": w_q, "k": w_k, "v": w_v}
        q = (q_src @ ws[proj[0]].T).view(B, q_src.shape[1], n_heads, d).transpose(1, 2)
        k = (kv_src @ ws[proj[1]].T).view(B, kv_src.shape[1], n_kv, d).transpose(1, 2)
        v = (kv_src @ ws[proj[2]].T).view(B, kv_src.shape[1], n_kv, d).transpose(1, 2)
        k, v = k.repeat_interleave(n_heads // n_kv, 1), v.repeat_interleave(n_heads // n_kv, 1)
        scores = q @ k.transpose(-2, -1) / (math.sqrt(k.shape[-2]) if scale == "T_src" else math.sqrt(d))
        free = torch.softmax(scores, dim=-1)
        if memory_mask is not None and not mask_after:
            scores = scores.masked_fill(~memory_mask[:, None, None, :], 0.0 if fill == "zero" else float("-inf"))
        weights = torch.softmax(scores, dim=dim)
        if memory_mask is not None and mask_after:
            weights = weights * memory_mask[:, None, None, :]
        heads = weights @ v
        merged = (heads.transpose(1, 2).reshape(B, -1, d_model) if merge == "right"
                  else heads.permute(0, 2, 3, 1).reshape(B, -1, d_model))
        result = merged @ (w_o if out == "untransposed" else w_o.T)
        return (result + x if out == "residual" else result), (free if weights_out == "unmasked" else weights)
    return cross_attention


def _block(*, self_mask="causal", norms="123", residual="raw", final_norm=False, memory_mask_inverted=False):
    def decoder_block(x, memory, self_attn, cross_attn, ffn, norm1, norm2, norm3, memory_mask=None):
        T = x.shape[1]
        mask = {"causal": torch.ones(T, T, dtype=torch.bool).tril(),
                "triu": torch.ones(T, T, dtype=torch.bool).triu(),
                "next": torch.ones(T, T, dtype=torch.bool).tril(1)}[self_mask]
        n = {"1": norm1, "2": norm2, "3": norm3, "-": lambda t: t}
        n1, n2, n3 = (n[c] for c in norms)
        mm = None if memory_mask is None else (~memory_mask if memory_mask_inverted else memory_mask)
        h = n1(x)
        x = (h if residual == "normed" else x) + self_attn(h, mask)
        x = x + cross_attn(n2(x), memory, mm)
        out = x + ffn(n3(x))
        return norm3(out) if final_norm else out
    return decoder_block


def _prefix(rule):
    def prefix_lm_mask(prefix_lengths, lengths, T):
        i = torch.arange(T)[None, :, None]
        j = torch.arange(T)[None, None, :]
        p = torch.as_tensor(prefix_lengths)[:, None, None]
        n = torch.as_tensor(lengths)[:, None, None]
        if rule == "transposed":
            return ((i <= j) | (i < p)) & (i < n)
        if rule == "diagonal_blocked":
            return ((j < i) | (j < p)) & (j < n)
        if rule == "and":
            return ((j <= i) & (j < p)) & (j < n)
        if rule == "pad_inclusive":
            return ((j <= i) | (j < p)) & (j <= n)
        if rule == "prefix_short":
            return ((j <= i) | (j < p - 1)) & (j < n)
        return None
    return prefix_lm_mask


def _masks(*, causal="tril", pad="j < n", cross_rows=False, decoder_lengths="target"):
    def model_masks(kind, lengths, T, target_lengths=None, T_tgt=None):
        def build(lens, T_q, T_k, is_causal, rows=False):
            i, j = torch.arange(T_q)[None, :, None], torch.arange(T_k)[None, None, :]
            n = torch.as_tensor(lens)[:, None, None]
            m = (j <= n) if pad == "j <= n" else (j < n)
            if rows:
                m = m & (i < torch.as_tensor(target_lengths)[:, None, None])
            if is_causal:
                m = m & {"tril": j <= i, "triu": j >= i, "strict": j < i}[causal]
            return m.expand(len(lens), T_q, T_k)
        if kind == "encoder":
            return {"self": build(lengths, T, T, False)}
        if kind == "decoder":
            return {"self": build(lengths, T, T, True)}
        dec = target_lengths if decoder_lengths == "target" else torch.clamp(torch.as_tensor(lengths), max=T_tgt)
        return {"encoder": build(lengths, T, T, False), "decoder": build(dec, T_tgt, T_tgt, True),
                "cross": build(lengths, T_tgt, T, False, rows=cross_rows)}
    return model_masks


WRONG = [
    Wrong("cross_attention", "streams_swapped", _cross(streams="swapped"), r"queries .*x|stream"),
    Wrong("cross_attention", "v_with_w_k", _cross(proj="qkk"), r"V's projection|w_v"),
    Wrong("cross_attention", "k_with_w_v", _cross(proj="qvv"), r"K's projection|w_k"),
    Wrong("cross_attention", "softmax_query_axis", _cross(dim=-2), r"dim=-1|query axis"),
    Wrong("cross_attention", "fill_zero", _cross(fill="zero"), r"-inf"),
    Wrong("cross_attention", "scale_sqrt_T_src", _cross(scale="T_src"), r"sqrt\(d_head\)"),
    Wrong("cross_attention", "merge_interleaved", _cross(merge="interleaved"), r"merge"),
    Wrong("cross_attention", "w_o_untransposed", _cross(out="untransposed"), r"w_o"),
    Wrong("cross_attention", "weights_unmasked", _cross(weights_out="unmasked"), r"weights.*mask|mask.*weights"),
    Wrong("decoder_block", "self_mask_triu", _block(self_mask="triu"), r"causal|triu|above"),
    Wrong("decoder_block", "self_mask_next_token", _block(self_mask="next"), r"causal|tril|next"),
    Wrong("decoder_block", "norm3_missing", _block(norms="12-"), r"norm3"),
    Wrong("decoder_block", "norm2_before_ffn", _block(norms="122"), r"norm3|norm2"),
    Wrong("decoder_block", "residual_from_normed", _block(residual="normed"), r"residual|raw|norm1\(x\)"),
    Wrong("decoder_block", "memory_mask_inverted", _block(memory_mask_inverted=True), r"memory_mask"),
    Wrong("model_masks", "decoder_triu", _masks(causal="triu"), r"above the diagonal|after the query|causal"),
    Wrong("model_masks", "decoder_diagonal_blocked", _masks(causal="strict"), r"diagonal|itself"),
    Wrong("model_masks", "padding_one_too_many", _masks(pad="j <= n"), r"padded keys"),
    Wrong("model_masks", "cross_blocks_target_rows", _masks(cross_rows=True), r"rows|quer"),
    Wrong("model_masks", "decoder_source_lengths", _masks(decoder_lengths="source"), r"target_lengths|padded (target )?keys"),
    Wrong("prefix_lm_mask", "transposed", _prefix("transposed"), r"transpos|rows|key"),
    Wrong("prefix_lm_mask", "diagonal_blocked", _prefix("diagonal_blocked"), r"diagonal|itself"),
    Wrong("prefix_lm_mask", "and_not_or", _prefix("and"), r"\bor\b|\|"),
    Wrong("prefix_lm_mask", "padding_inclusive", _prefix("pad_inclusive"), r"padded keys"),
    Wrong("prefix_lm_mask", "prefix_one_short", _prefix("prefix_short"), r"prefix.*(one|short)"),
]

# Written after the probes, without looking at them again: how the probing does on mistakes it was
# not built from. `named` records what happens today.


def _cross_v_unprojected(x, memory, w_q, w_k, w_v, w_o, n_heads, n_kv_heads=None, memory_mask=None):
    n_kv = n_heads if n_kv_heads is None else n_kv_heads
    B, T_q, d_model = x.shape
    d = d_model // n_heads
    q = (x @ w_q.T).view(B, T_q, n_heads, d).transpose(1, 2)
    k = (memory @ w_k.T).view(B, -1, n_kv, d).transpose(1, 2).repeat_interleave(n_heads // n_kv, 1)
    v = memory[..., :n_kv * d].reshape(B, -1, n_kv, d).transpose(1, 2).repeat_interleave(n_heads // n_kv, 1)
    s = q @ k.transpose(-2, -1) / math.sqrt(d)
    if memory_mask is not None:
        s = s.masked_fill(~memory_mask[:, None, None, :], float("-inf"))
    w = torch.softmax(s, dim=-1)
    return (w @ v).transpose(1, 2).reshape(B, T_q, d_model) @ w_o.T, w


def _block_stale_stream(x, memory, self_attn, cross_attn, ffn, norm1, norm2, norm3, memory_mask=None):
    causal = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).tril()
    h1 = x + self_attn(norm1(x), causal)
    h2 = x + cross_attn(norm2(h1), memory, memory_mask)  # adds to x, not h1: the self-attention output is lost
    return h2 + ffn(norm3(h2))


def _prefix_counts_generated(prefix_lengths, lengths, T):
    i, j = torch.arange(T)[None, :, None], torch.arange(T)[None, None, :]
    p, n = torch.as_tensor(prefix_lengths)[:, None, None], torch.as_tensor(lengths)[:, None, None]
    return ((j <= i) | (j < n - p)) & (j < n)


HELD_OUT = [
    Wrong("cross_attention", "v_unprojected", _cross_v_unprojected, r"after the weights|V's projection|w_v"),
    Wrong("decoder_block", "cross_residual_on_stale_stream", _block_stale_stream, r"residual|self-attention", named=False),
    Wrong("prefix_lm_mask", "prefix_as_generated_length", _prefix_counts_generated, r"prefix"),
]
