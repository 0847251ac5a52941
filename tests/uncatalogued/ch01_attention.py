"""Chapter 01: uncatalogued wrong answers."""

from __future__ import annotations

import torch

from . import Wrong

TOPIC = "attention"


def _masked_softmax(scores, mask, *, shift=True, log=False, dim=-1):
    s = scores.masked_fill(~mask, float("-inf"))
    if log:
        out = torch.log_softmax(s, dim=dim)
        return torch.where(mask.expand_as(s), out, torch.zeros((), dtype=s.dtype))
    if shift:
        return torch.nan_to_num(torch.softmax(s, dim=dim), nan=0.0)
    e = torch.exp(s)
    return torch.nan_to_num(e / e.sum(dim=dim, keepdim=True), nan=0.0)


def _sdpa(*, scale=lambda q, k: q.shape[-1] ** -0.5, out_scale=False):
    def sdpa(q, k, v, mask=None):
        scores = q @ k.transpose(-2, -1) * (1.0 if out_scale else scale(q, k))
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)
        out = weights @ v
        return (out * scale(q, k) if out_scale else out), weights
    return sdpa


WRONG = [
    Wrong("attention_scores", "scale_sqrt_T_k", lambda q, k: q @ k.transpose(-2, -1) / k.shape[-2] ** 0.5,
          r"T_k"),
    Wrong("attention_scores", "scale_fourth_root", lambda q, k: q @ k.transpose(-2, -1) / q.shape[-1] ** 0.25,
          r"scale|times|factor"),
    Wrong("causal_mask", "one_future_token", lambda T: torch.ones(T, T, dtype=torch.bool).tril(1),
          r"diagonal|future|tril"),
    Wrong("padding_mask", "last_real_key_blocked",
          lambda lengths, T: (torch.arange(T)[None, :] < torch.as_tensor(lengths)[:, None] - 1)[:, None, :],
          r"last real key|length - 1"),
    Wrong("apply_mask", "fill_minus_1e4", lambda s, m: s.masked_fill(~m, -1e4), r"finite|-inf"),
    Wrong("masked_softmax", "no_max_shift", lambda s, m: _masked_softmax(s, m, shift=False),
          r"max|overflow"),
    Wrong("masked_softmax", "log_softmax", lambda s, m: _masked_softmax(s, m, log=True), r"log"),
    Wrong("masked_softmax", "softmax_over_batch", lambda s, m: _masked_softmax(s, m, dim=0),
          r"axis|dim=-1|sum to 1"),
    Wrong("scaled_dot_product_attention", "scale_sqrt_T_k", _sdpa(scale=lambda q, k: k.shape[-2] ** -0.5),
          r"T_k"),
    Wrong("scaled_dot_product_attention", "scale_on_output", _sdpa(out_scale=True),
          r"output|after the softmax|weights are right"),
    Wrong("scaled_dot_product_attention", "scale_sqrt_T_q", _sdpa(scale=lambda q, k: q.shape[-2] ** -0.5),
          r"T_q"),
]

# Written after the probes, without looking at them again: how the probing does on mistakes it was
# not built from. `named` records what happens today.


def _sdpa_extra(style):
    def sdpa(q, k, v, mask=None):
        scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
        if mask is not None:
            scores = scores + mask.to(scores.dtype) if style == "additive_bool" else scores.masked_fill(~mask, float("-inf"))
        weights = torch.nan_to_num(torch.softmax(scores * (2 if style == "squared" else 1), dim=-1), nan=0.0)
        return weights @ v, weights
    return sdpa


HELD_OUT = [
    Wrong("scaled_dot_product_attention", "temperature_2", _sdpa_extra("squared"), r"times 2|scale"),
    Wrong("scaled_dot_product_attention", "additive_bool_mask", _sdpa_extra("additive_bool"), r"blocked"),
    Wrong("causal_mask", "batched", lambda T: torch.ones(T, T, dtype=torch.bool).tril()[None], r"shape"),
    Wrong("attention_scores", "plus_small_bias", lambda q, k: q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5 + 0.01,
          r"bias|added|constant", named=False),
]
