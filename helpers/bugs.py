"""Chapter 09's bug hunt: eight models that each hide one classic transformer bug.

Every model is the shared decoder (`helpers.blocks`, RoPE positions, Pre-LN) inside the same
neutral wrapper `Model`, which adds left padding (`lengths`) and an `offset` for positions. A bug
is planted by replacing the `forward` of one component of a healthy model, never by a second copy
of the model: the class names, the reprs and the attribute names are the same for all of them, so
only a diagnostic tells them apart. Each one runs, generates and trains without an exception.

    models = hunt_models(seed=0)        # {"A": Model, ..., "H": Model}, a seeded assignment of BUGS
    reference = healthy_model(seed=0)   # a model without a bug, to compare against
    broken = broken_model("mask_leak")  # one bug by name (the theory notebook shows each one)

Each hunt model has weights of its own, drawn from the hunt's seed and its label: no broken_model
(or healthy_model) has them, so matching a hunt model's outputs against the named bugs finds
nothing. Chapter 09's graded hunt (`helpers.checks.diagnostics.check_bug_hunt`) runs the learner's
`find_bug` on a hunt whose seed only its hidden test knows.
"""

from __future__ import annotations

import hashlib
import math
import string
from types import MappingProxyType, MethodType

import torch
from torch import nn

from .attention import attention_scores, causal_mask, masked_softmax
from .blocks import ModelConfig, TinyDecoder, decoder_forward, model_param_count
from .diagnostics import entropy_table, leak_test, residual_stream, update_ratios
from .heads import merge_heads, repeat_kv
from .norms import layer_norm
from .shapes import ShapeError, fmt_shape
from .training import param_count

__all__ = ["BUGS", "HUNT_CONFIG", "Model", "PrefixSums", "checkup", "broken_model", "healthy_model", "hunt_models"]

# bug -> (what is wrong, the diagnostic that finds it)
BUGS = MappingProxyType({
    "mask_leak": ("the causal mask is missing: every token attends to the future",
                  "the leakage test (perturbation or gradient) finds pairs (i, j) with j > i, and the attention "
                  "weights above the diagonal are not zero"),
    "softmax_axis": ("the softmax runs over the query axis instead of the key axis",
                     "checking the attention weights: their rows (one per query) do not sum to 1, their columns do"),
    "no_residual": ("the residual connection around attention is missing",
                    "the residual-stream update ratios: block 0 replaces the stream (ratio about 1 or more) where a "
                    "healthy block edits it"),
    "norm_axis": ("the norms normalise over the sequence axis instead of d_model",
                  "the leakage test finds the future leaking although the attention weights are causal; the "
                  "normalised tokens do not have mean 0 and RMS 1 over d_model"),
    "rope_on_v": ("RoPE rotates the values as well as the queries and keys",
                  "the relative-offset test: moving every position by the same offset changes the outputs, "
                  "which RoPE on q and k alone never does"),
    "no_scale": ("the scores are not divided by sqrt(d_head)",
                 "the attention entropy per head: far below the healthy model's, the weights are almost one-hot"),
    "untied": ("the LM head has its own copy of the embedding although the config ties them",
               "counting parameters against model_param_count(config), or checking "
               "lm_head.weight is tok_emb.weight"),
    "padding_query": ("the padding mask blocks queries instead of keys",
                      "the padding test: changing the padded tokens moves the real tokens' outputs"),
})

HUNT_CONFIG = ModelConfig(vocab_size=48, d_model=32, n_heads=2, n_layers=2, max_seq_len=64, positions="rope")


class Masks(nn.Module):
    """The attention mask of a left-padded batch: causal, and padded keys blocked.

    lengths (B,) real tokens per sequence (the last `length` positions are real) or None
    -> bool (B, 1, T, T) (or (T, T) without lengths), True = may attend.
    """

    def forward(self, T: int, lengths: torch.Tensor | None = None) -> torch.Tensor:
        causal = causal_mask(T)  # (T, T)
        if lengths is None:
            return causal
        real = torch.arange(T)[None, :] >= (T - lengths)[:, None]  # (B, T): left padding
        return causal & real[:, None, None, :]  # (B, 1, T, T): blocks padded keys


class Model(nn.Module):
    """The shared decoder with a padding-aware mask: forward(ids, lengths=None, return_weights=False, offset=0).

    ids (B, T) -> logits (B, T, V) [, [weights (B, H, T, T)] per layer]. lengths (B,): left padding.
    offset: the position of the first token (RoPE), as TinyDecoder.forward's.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.net = TinyDecoder(config)
        self.masks = Masks()
        self.config = config

    @property
    def blocks(self) -> nn.ModuleList:
        return self.net.blocks

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor | None = None, return_weights: bool = False,
                offset: int = 0):
        if ids.dim() != 2:
            raise ShapeError(f"Model: ids must be (B, T); got {fmt_shape(ids.shape)}")
        T = ids.shape[1]
        if lengths is not None:
            lengths = torch.as_tensor(lengths)
        mask = self.masks(T, lengths)  # (T, T) or (B, 1, T, T)
        weights: list[torch.Tensor] = []

        def run(block):
            def call(h: torch.Tensor) -> torch.Tensor:
                out, w = block(h, mask, return_weights=True, offset=offset)  # (B, T, d_model), (B, H, T, T)
                weights.append(w)
                return out
            return call

        net = self.net
        lm_head = None if net.lm_head.weight is net.tok_emb.weight else net.lm_head.weight
        logits = decoder_forward(ids, net.tok_emb.weight, net.position_rows(T, offset),
                                 [run(b) for b in net.blocks], net.final_norm, lm_head)  # (B, T, V)
        return (logits, weights) if return_weights else logits


def healthy_model(seed: int = 0, config: ModelConfig = HUNT_CONFIG) -> Model:
    """The hunt's model without a bug, initialised at a trained model's scale.

    GPT-2's N(0, 0.02^2) start makes every score nearly 0 and every head nearly uniform, which hides
    what the scale of the scores does; here embeddings are N(0, 1) and the projections N(0, 1/d_model),
    so q and k have entries of variance about 1, as in a trained model.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Model(config)
        d = config.d_model
        nn.init.normal_(model.net.tok_emb.weight, std=1.0)
        for block in model.net.blocks:
            for proj in (block.attn.q_proj, block.attn.k_proj, block.attn.v_proj, block.attn.o_proj):
                nn.init.normal_(proj.weight, std=d ** -0.5)
    return model


# ---------------------------------------------------------------------------------------------
# Planting a bug: one component's forward replaced
# ---------------------------------------------------------------------------------------------


def _plant(module: nn.Module, forward) -> None:
    """module.forward <- forward, under the name of the class's own forward (nothing in a repr changes)."""
    original = type(module).forward
    forward.__name__, forward.__qualname__, forward.__doc__ = original.__name__, original.__qualname__, original.__doc__
    module.forward = MethodType(forward, module)


def _attention(*, softmax_axis: int = -1, scaled: bool = True, rotate_v: bool = False):
    """An Attention.forward built from the chapters' pieces with one step changed."""
    def forward(self, x, mask=None, *, source=None, bias=None, offset=0, need_weights=True, cache=None):
        q, k, v = self.project(x, source)  # (B, H, T, d_head), (B, H_kv, T, d_head) x 2
        q, k = self.rotate(q, k, offset)
        if rotate_v and self.rope is not None:
            v = self.rope(v, offset)  # the bug: positions rotate the values too
        group = self.n_heads // self.n_kv_heads
        k, v = repeat_kv(k, group), repeat_kv(v, group)  # (B, H, T, d_head)
        scores = attention_scores(q, k)  # (B, H, T_q, T_k): already / sqrt(d_head)
        if not scaled:
            scores = scores * math.sqrt(self.d_head)  # the bug: the 1/sqrt(d_head) undone
        if bias is not None:
            scores = scores + bias
        if softmax_axis == -1:
            weights = masked_softmax(scores, mask)  # (B, H, T_q, T_k)
        else:  # the bug: normalised over the queries (each column sums to 1)
            full = torch.ones(scores.shape[-2:], dtype=torch.bool) if mask is None else mask
            full = torch.broadcast_to(full, scores.shape)
            weights = masked_softmax(scores.transpose(-1, -2), full.transpose(-1, -2)).transpose(-1, -2)
        return self.o_proj(merge_heads(weights @ v)), weights  # (B, T, d_model), (B, H, T_q, T_k)
    return forward


def _block_without_attention_residual(self, x, mask=None, return_weights=False, *, bias=None, offset=0,
                                      cache=None):
    out, w = self.attn(self.norm1(x), mask, bias=bias, offset=offset)  # (B, T, d_model), (B, H, T, T)
    x = out  # the bug: x + out, the skip connection, is missing
    x = x + self.ffn(self.norm2(x))  # (B, T, d_model)
    return (x, w) if return_weights else x


def _norm_over_sequence(self, x):
    xt = x.transpose(-1, -2)  # (B, d_model, T): the bug normalises each channel over the positions
    T = xt.shape[-1]
    ones, zeros = torch.ones(T, dtype=x.dtype), torch.zeros(T, dtype=x.dtype)
    normed = layer_norm(xt, ones, zeros, self.eps).transpose(-1, -2)  # (B, T, d_model)
    return normed * self.weight + (self.bias if getattr(self, "bias", None) is not None else 0)


def _mask_without_causal(self, T, lengths=None):
    allowed = torch.ones(T, T, dtype=torch.bool)  # the bug: no causal mask
    if lengths is None:
        return allowed
    real = torch.arange(T)[None, :] >= (T - lengths)[:, None]  # (B, T)
    return allowed & real[:, None, None, :]  # (B, 1, T, T)


def _mask_on_queries(self, T, lengths=None):
    causal = causal_mask(T)
    if lengths is None:
        return causal
    real = torch.arange(T)[None, :] >= (T - lengths)[:, None]  # (B, T)
    return causal & real[:, None, :, None]  # the bug: (B, 1, T, 1) blocks padded queries, not keys


def _plant_bug(model: Model, bug: str) -> None:
    net = model.net
    if bug == "mask_leak":
        _plant(model.masks, _mask_without_causal)
    elif bug == "padding_query":
        _plant(model.masks, _mask_on_queries)
    elif bug in ("softmax_axis", "no_scale", "rope_on_v"):
        forward = {"softmax_axis": lambda: _attention(softmax_axis=-2), "no_scale": lambda: _attention(scaled=False),
                   "rope_on_v": lambda: _attention(rotate_v=True)}[bug]
        for block in net.blocks:
            _plant(block.attn, forward())
    elif bug == "no_residual":
        _plant(net.blocks[0], _block_without_attention_residual)
    elif bug == "norm_axis":
        for block in net.blocks:
            _plant(block.norm1, _norm_over_sequence)
            _plant(block.norm2, _norm_over_sequence)
    elif bug == "untied":
        net.lm_head.weight = nn.Parameter(net.tok_emb.weight.detach().clone())
    else:
        raise ValueError(f"unknown bug {bug!r}; the bugs are {sorted(BUGS)}")


def broken_model(bug: str, seed: int = 0) -> Model:
    """healthy_model(seed) with `bug` (a key of BUGS) planted."""
    if bug not in BUGS:
        raise ValueError(f"broken_model: unknown bug {bug!r}; the bugs are {sorted(BUGS)}")
    model = healthy_model(seed)
    _plant_bug(model, bug)
    return model


def _assignment(seed: int) -> dict[str, str]:
    """label -> bug: a seeded permutation of BUGS over the labels A, B, ..."""
    order = torch.randperm(len(BUGS), generator=torch.Generator().manual_seed(1000 + seed)).tolist()
    keys = sorted(BUGS)
    return {string.ascii_uppercase[i]: keys[k] for i, k in enumerate(order)}


def _hunt_weights_seed(seed: int, label: str) -> int:
    """The weights' seed of hunt model `label`: 48 bits from a hash, far from any seed a learner would try."""
    return int.from_bytes(hashlib.sha256(f"bug hunt {seed} model {label}".encode()).digest()[:6], "big")


def hunt_models(seed: int = 0) -> dict[str, Model]:
    """{"A": Model, ...}: one model per bug, labelled by a seeded permutation; each model's weights are
    its own (healthy_model's initialisation from a seed hashed from `seed` and the label)."""
    models = {}
    for label, bug in _assignment(seed).items():
        model = healthy_model(_hunt_weights_seed(seed, label))
        _plant_bug(model, bug)
        models[label] = model
    return models


class PrefixSums:
    """A causal toy f for leakage tests: ids (B, T) -> out (B, T, 5), out[:, i] = the sum of the first
    i + 1 token vectors, plus planted leaks (i, j) (output i also reads token j > i) and, with wobble,
    a rounding wobble of a few ulps that changes whenever any token changes (as a kernel that
    reorders a sum would): a leakage test must compare with a tolerance."""

    def __init__(self, seed: int, V: int, leaks: tuple[tuple[int, int], ...], wobble: bool) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.table = torch.randn(V, 5, generator=gen, dtype=torch.float64).float()  # (V, 5)
        self.leaks, self.wobble = leaks, wobble

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.table[ids]  # (B, T, 5)
        out = x.cumsum(dim=1)  # (B, T, 5): position i sums tokens 0..i
        for i, j in self.leaks:
            out[:, i] = out[:, i] + x[:, j]
        if self.wobble:
            out = out * (1 + 3e-7 * (ids.sum() % 3).item())  # a few ulps, different whenever any token changes
        return out


def checkup(model: Model, seed: int = 0, B: int = 2, T: int = 12) -> dict[str, float]:
    """Every diagnostic of the chapter on one hunt model, as numbers (a healthy model's are in the comments).

        leaks           (i, j) pairs with j > i that the perturbation test finds          0
        above_diagonal  largest attention weight above the diagonal                      0
        row_sum_error   largest |sum over keys - 1| of a row of attention weights         ~1e-7
        entropy         mean attention entropy (nats) over layers, heads and queries     ~1.4 here
        update_ratio    block 0's update-to-stream ratio                                 ~0.65 here
        offset_change   largest logit change when every position moves by 5 (RoPE)      ~1e-5
        padding_change  largest change of a real token's logits when padded tokens change  0
        extra_params    parameters beyond model_param_count(config)                      0
    """

    gen = torch.Generator().manual_seed(seed)
    V = model.config.vocab_size
    ids = torch.randint(0, V, (B, T), generator=gen)  # (B, T)
    with torch.no_grad():
        logits, weights = model(ids, return_weights=True)  # (B, T, V), [(B, H, T, T)] per layer
        shifted = model(ids, offset=5)  # (B, T, V): the same tokens at positions 5 .. T + 4
        lengths = torch.full((B,), T // 2)  # left padding: the first T - T // 2 tokens are padding
        padded = ids.clone()
        padded[:, : T - T // 2] = (padded[:, : T - T // 2] + 1) % V
        real = slice(T - T // 2, T)
        padding_change = (model(padded, lengths)[:, real] - model(ids, lengths)[:, real]).abs().max()
    return {
        "leaks": float(len(leak_test(model, ids).pairs)),
        "above_diagonal": max(float(w.triu(1).abs().max()) for w in weights),
        "row_sum_error": max(float((w.sum(-1) - 1).abs().max()) for w in weights),
        "entropy": float(entropy_table(model, ids).mean()),
        "update_ratio": float(update_ratios(residual_stream(model, ids))[0]),
        "offset_change": float((shifted - logits).abs().max()),
        "padding_change": float(padding_change),
        "extra_params": float(param_count(model) - model_param_count(model.config)),
    }
