"""Chapter 07: uncatalogued wrong answers."""

from __future__ import annotations

import math

import torch

from . import Wrong

TOPIC = "complexity"


def _flops(*, values=True, q_only=False, causal_half=False):
    def attention_flops(d_model, n_heads, T, n_kv_heads=None):
        n_kv = n_heads if n_kv_heads is None else n_kv_heads
        d_head = d_model // n_heads
        proj = 2 * T * d_model * (d_model if q_only else d_model + 2 * n_kv * d_head)
        pairs = T * (T + 1) // 2 if causal_half else T * T
        return {"projections": proj, "scores": 2 * n_heads * pairs * d_head,
                "values": 2 * n_heads * pairs * d_head if values else 0, "output": 2 * T * d_model * d_model}
    return attention_flops


def _kv_bytes(*, d_head=True, heads="kv"):
    def kv_cache_bytes(n_layers, n_kv_heads, d_head_, tokens, batch, dtype):
        size = torch.empty((), dtype=dtype).element_size()
        return 2 * n_layers * batch * n_kv_heads * tokens * (d_head_ if d_head else 1) * size
    return kv_cache_bytes


def _embed(how):
    def embed_new_tokens(ids, wte, wpe, cache_length):
        T = ids.shape[1]
        if how == "same_position":
            return wte[ids] + wpe[cache_length]
        if how == "wpe_by_ids":
            return wte[ids] + wpe[ids]
        if how == "ending_at_cache_length":
            return wte[ids] + wpe[cache_length - T + 1:cache_length + 1] if cache_length >= T - 1 else wte[ids] + wpe[:T]
        return wte[ids] + wpe[cache_length + 2:cache_length + 2 + T]
    return embed_new_tokens


def _step(*, order="append", scale=True, mask_shift=0, v_from_k=False, return_old=False):
    def attend_with_cache(q, k_new, v_new, k_cache, v_cache):
        cat = (lambda old, new: torch.cat([new, old], dim=2)) if order == "prepend" else \
            (lambda old, new: torch.cat([old, new], dim=2))
        k_all, v_all = cat(k_cache, k_new), cat(v_cache, v_new)
        g = q.shape[1] // k_all.shape[1]
        k, v = k_all.repeat_interleave(g, 1), v_all.repeat_interleave(g, 1)
        T_q, T_k = q.shape[2], k.shape[2]
        s = q @ k.transpose(-2, -1) / (math.sqrt(q.shape[-1]) if scale else 1.0)
        s = s.masked_fill(~torch.ones(T_q, T_k, dtype=torch.bool).tril(T_k - T_q + mask_shift), float("-inf"))
        out = torch.softmax(s, dim=-1) @ v
        return out, k_all, (k_all if v_from_k else v_all)
    return attend_with_cache


def _online(*, scale=True, keep_m=False, drop_last=False, per_block=False):
    def online_softmax_attention(q, k, v, block_size):
        sc = 1 / math.sqrt(q.shape[-1]) if scale else 1.0
        m = torch.full((*q.shape[:-1], 1), float("-inf"), dtype=q.dtype)
        l = q.new_zeros((*q.shape[:-1], 1))
        acc = q.new_zeros((*q.shape[:-1], v.shape[-1]))
        T_k = k.shape[-2]
        stop = T_k - block_size + 1 if drop_last else T_k
        for start in range(0, max(stop, 1), block_size):
            s = q @ k[..., start:start + block_size, :].transpose(-2, -1) * sc
            m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))
            p = torch.exp(s - m_new)
            if per_block:
                acc = acc + (p / p.sum(-1, keepdim=True)) @ v[..., start:start + block_size, :]
                l = l + 1
                m = m_new
                continue
            c = torch.exp(m - m_new)
            l = c * l + p.sum(dim=-1, keepdim=True)
            acc = c * acc + p @ v[..., start:start + block_size, :]
            if not keep_m:
                m = m_new
        return acc / l
    return online_softmax_attention


WRONG = [
    Wrong("attention_flops", "values_forgotten", _flops(values=False), r"values"),
    Wrong("attention_flops", "q_projection_only", _flops(q_only=True), r"projections not right|K and V"),
    Wrong("attention_flops", "causal_half", _flops(causal_half=True), r"causal|T \(T \+ 1\)|every query.*every key"),
    Wrong("mlp_flops", "gelu_three_matrices",
          lambda d, f, T, kind="gelu": 3 * 2 * T * d * f, r"GELU MLP .*(three|3) matrices|(three|3) matrices .*GELU"),
    Wrong("kv_cache_bytes", "d_head_forgotten", _kv_bytes(d_head=False), r"factor .*d_head|d_head .*(missing|forgotten)"),
    Wrong("embed_new_tokens", "same_position", _embed("same_position"), r"same position|each new token|positions"),
    Wrong("embed_new_tokens", "wpe_by_ids", _embed("wpe_by_ids"), r"wpe.*ids|token ids|position"),
    Wrong("embed_new_tokens", "offset_plus_two", _embed("plus_two"), r"off by 2|two|position"),
    Wrong("attend_with_cache", "prepended", _step(order="prepend"), r"before the cache|prepend|after the cached|order"),
    Wrong("attend_with_cache", "no_scale", _step(scale=False), r"sqrt\(d_head\)|scale"),
    Wrong("attend_with_cache", "mask_sees_next", _step(mask_shift=1), r"mask|next|future"),
    Wrong("attend_with_cache", "v_all_is_k", _step(v_from_k=True), r"v_all"),
    Wrong("online_softmax_attention", "no_scale", _online(scale=False), r"sqrt\(d_head\)|scale"),
    Wrong("online_softmax_attention", "max_not_updated", _online(keep_m=True), r"last block|keys \d+ \.\. \d+ only|running max"),
    Wrong("online_softmax_attention", "last_block_dropped", _online(drop_last=True), r"last.*block|block_size"),
    Wrong("online_softmax_attention", "normalised_per_block", _online(per_block=True), r"per block|each block|block"),
]

# Written after the probes, without looking at them again: how the probing does on mistakes it was
# not built from. `named` records what happens today.


def _flops_output_once(d_model, n_heads, T, n_kv_heads=None):
    n_kv = n_heads if n_kv_heads is None else n_kv_heads
    d_head = d_model // n_heads
    return {"projections": 2 * T * d_model * (d_model + 2 * n_kv * d_head), "scores": 2 * n_heads * T * T * d_head,
            "values": 2 * n_heads * T * T * d_head, "output": T * d_model * d_model}


def _embed_from_end(ids, wte, wpe, cache_length):
    T = ids.shape[1]
    return wte[ids] + wpe[-T:]


def _step_new_keys_only(q, k_new, v_new, k_cache, v_cache):
    k_all, v_all = torch.cat([k_cache, k_new], dim=2), torch.cat([v_cache, v_new], dim=2)
    g = q.shape[1] // k_new.shape[1]
    k, v = k_new.repeat_interleave(g, 1), v_new.repeat_interleave(g, 1)
    T = q.shape[2]
    s = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(
        ~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(s, -1) @ v, k_all, v_all


def _online_normalise_each_step(q, k, v, block_size):
    sc = 1 / math.sqrt(q.shape[-1])
    m = torch.full((*q.shape[:-1], 1), float("-inf"), dtype=q.dtype)
    l = q.new_zeros((*q.shape[:-1], 1))
    acc = q.new_zeros((*q.shape[:-1], v.shape[-1]))
    for start in range(0, k.shape[-2], block_size):
        s = q @ k[..., start:start + block_size, :].transpose(-2, -1) * sc
        m_new = torch.maximum(m, s.amax(-1, keepdim=True))
        p = torch.exp(s - m_new)
        c = torch.exp(m - m_new)
        l = c * l + p.sum(-1, keepdim=True)
        acc = (c * acc + p @ v[..., start:start + block_size, :]) / l  # divided at every block
        m = m_new
    return acc


HELD_OUT = [
    Wrong("attention_flops", "output_without_factor_two", _flops_output_once, r"output"),
    Wrong("embed_new_tokens", "positions_from_the_end", _embed_from_end, r"position"),
    Wrong("attend_with_cache", "attends_to_new_keys_only", _step_new_keys_only, r"cache|attention over"),
    Wrong("online_softmax_attention", "divided_every_block", _online_normalise_each_step, r"l\b|divide|normalis", named=False),
]
