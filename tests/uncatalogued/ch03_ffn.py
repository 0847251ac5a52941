"""Chapter 03: uncatalogued wrong answers."""

from __future__ import annotations

import math

import torch

from . import Wrong

TOPIC = "ffn"


def _phi(x):
    return 0.5 * (1 + torch.erf(x / math.sqrt(2.0)))


def _gelu(x):
    return x * _phi(x)


def _ffn(*, act=_gelu, b1=True, b2=True):
    def feed_forward(x, w1, bias1, w2, bias2):
        h = x @ w1.T + (bias1 if b1 else 0)
        return act(h) @ w2.T + (bias2 if b2 else 0)
    return feed_forward


def _swiglu(hidden):
    return lambda x, w_gate, w_up, w_down: hidden(x @ w_gate.T, x @ w_up.T) @ w_down.T


def _route_ascending(router_logits, k):
    values, idx = router_logits.topk(k, dim=-1)
    return torch.softmax(values, dim=-1).flip(-1), idx.flip(-1).sort(dim=-1).values


def _moe(weigh):
    def moe_forward(x, router_weight, experts, k):
        flat = x.reshape(-1, x.shape[-1])
        logits = flat @ router_weight.T
        values, idx = logits.topk(k, dim=-1)
        weights = weigh(values, logits, idx)
        out = torch.zeros_like(flat)
        for t in range(flat.shape[0]):
            for j in range(k):
                out[t] += weights[t, j] * experts[int(idx[t, j])](flat[t:t + 1])[0]
        return out.reshape(x.shape)
    return moe_forward


WRONG = [
    Wrong("gelu", "silu", lambda x, approximate="none": x * torch.sigmoid(x), r"SiLU|x \* sigmoid\(x\)"),
    Wrong("gelu", "phi_only", lambda x, approximate="none": _phi(x), r"Phi|times x|multipl"),
    Wrong("gelu", "erf_half", lambda x, approximate="none": x * 0.5 * (1 + torch.erf(x / 2)), r"sqrt\(2\)|sqrt2"),
    Wrong("feed_forward", "no_b2", _ffn(b2=False), r"b2"),
    Wrong("feed_forward", "no_b1", _ffn(b1=False), r"b1"),
    Wrong("feed_forward", "silu", _ffn(act=lambda h: h * torch.sigmoid(h)), r"SiLU"),
    Wrong("swiglu_ffn", "relu_gate", _swiglu(lambda g, u: g.clamp(min=0) * u), r"ReLU"),
    Wrong("swiglu_ffn", "up_ignored", _swiglu(lambda g, u: g * torch.sigmoid(g) * g), r"up"),
    Wrong("top_k_route", "indices_sorted", _route_ascending, r"order|align|sort", named=False),
    Wrong("moe_forward", "logit_weights", _moe(lambda v, logits, idx: v), r"softmax"),
    Wrong("moe_forward", "sigmoid_weights", _moe(lambda v, logits, idx: torch.sigmoid(v)), r"softmax"),
]

# Written after the probes, without looking at them again: how the probing does on mistakes it was
# not built from. `named` records what happens today.

HELD_OUT = [
    Wrong("gelu", "odd_extension", lambda x, approximate="none": torch.sign(x) * _gelu(x.abs()), r"negative|odd|sign",
          named=False),
    Wrong("feed_forward", "residual_added", lambda x, w1, b1, w2, b2: x + _ffn()(x, w1, b1, w2, b2), r"residual|x \+",
          named=False),
    Wrong("swiglu_ffn", "halved", _swiglu(lambda g, u: 0.5 * g * torch.sigmoid(g) * u), r"times 0.5"),
    Wrong("moe_forward", "weights_squared", _moe(lambda v, logits, idx: torch.softmax(v, -1) ** 2), r"softmax|weight",
          named=False),
]
