"""Chapter 07: what a transformer costs — FLOPs, memory, the KV cache, and FlashAttention's online softmax.

Convention for every FLOP count here: one multiply-add is 2 FLOPs, and only matrix products are
counted (the projections, Q Kᵀ, A V, the FFN's matrices and the LM head). A product of an (m, k)
matrix with a (k, n) one costs 2 m k n FLOPs. Softmax, norms, activations and residual additions
cost O(T d) each and are left out, which is also what torch.utils.flop_counter.FlopCounterMode
counts, so the tests compare these formulas with it on the real modules.

    attention  projections  2 T d (d + 2 H_kv d_head)       Q, K, V from d_model features
               scores       2 H T_q T_k d_head              Q Kᵀ: quadratic in T
               values       2 H T_q T_k d_head              A V: quadratic in T
               output       2 T d d                         W_O
    MLP        GELU 2 matrices: 4 T d d_ff;  SwiGLU 3 matrices: 6 T d d_ff
    training   forward + backward = 3 x forward (the backward pass of y = x W needs x's and W's gradient)

Memory, in bytes (bytes per element from the dtype: 4 for float32, 2 for float16/bfloat16):

    score matrix  B H T_q T_k x bytes
    KV cache      2 (K and V) x n_layers x B x H_kv x tokens x d_head x bytes

`tiled_attention` is FlashAttention's forward pass in plain torch: it walks over blocks of keys
with a running maximum m and a running sum l per query, rescaling what it has accumulated whenever
m grows, so it never holds more than a (block x block) piece of the T x T score matrix.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .attention import scaled_dot_product_attention
from .blocks import ModelConfig, TinyDecoder, cached_causal_mask
from .corpus import load_corpus
from .ffn import ffn_param_count
from .heads import attention_param_count
from .shapes import (
    ShapeError,
    fmt_shape,
    require_bool_mask,
    require_float,
    require_positive_int,
    require_same_dtype,
    require_tensor,
)
from .tokenizers import course_chars
from .training import train

__all__ = [
    "arithmetic_intensity",
    "attainable_flops",
    "attend_with_cache",
    "attention_flops",
    "attention_mlp_crossover",
    "bytes_per_element",
    "copy_bandwidth",
    "count_attention_io",
    "decode_crossover_batch",
    "decode_floor_seconds",
    "decode_roofline",
    "decode_step_flops",
    "decoder_param_count",
    "embed_new_tokens",
    "kv_cache_bytes",
    "loss_by_visible_context",
    "mlp_flops",
    "model_flops",
    "peak_tensor_bytes",
    "flops_per_token",
    "prefill_latency",
    "ridge_intensity",
    "roofline_time",
    "score_bytes",
    "standard_attention_io",
    "tiled_attention",
    "tiled_attention_io",
]


def _count(fn: str, name: str, value: object) -> int:
    return require_positive_int(fn, name, value)


def _kv_heads(fn: str, n_heads: int, n_kv_heads: int | None) -> int:
    n_kv_heads = n_heads if n_kv_heads is None else _count(fn, "n_kv_heads", n_kv_heads)
    if n_heads % n_kv_heads:
        raise ShapeError(f"{fn}: n_heads = {n_heads} is not divisible by n_kv_heads = {n_kv_heads}")
    return n_kv_heads


# ---------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------


def attention_flops(d_model: int, n_heads: int, T: int, *, T_k: int | None = None,
                    n_kv_heads: int | None = None, batch: int = 1) -> dict[str, int]:
    """FLOPs of one self-attention layer on T new tokens that attend to T_k keys (T_k=None: T).

    T_k > T is a decoding step with a KV cache: only the T new tokens are projected, but their
    queries meet every cached key. The dense score matrix is counted in full, also with a causal
    mask (a dense kernel computes the blocked scores too, then throws them away).
    Returns {"projections", "scores", "values", "output", "total"}; 1 multiply-add = 2 FLOPs.
    """
    fn = "attention_flops"
    for name, value in (("d_model", d_model), ("n_heads", n_heads), ("T", T), ("batch", batch)):
        _count(fn, name, value)
    T_k = T if T_k is None else _count(fn, "T_k", T_k)
    n_kv_heads = _kv_heads(fn, n_heads, n_kv_heads)
    if d_model % n_heads:
        raise ShapeError(f"{fn}: d_model = {d_model} is not divisible by n_heads = {n_heads}")
    d_head = d_model // n_heads
    d_kv = n_kv_heads * d_head  # width of K and of V
    counts = {
        "projections": 2 * batch * T * d_model * (d_model + 2 * d_kv),  # x W_Qᵀ, x W_Kᵀ, x W_Vᵀ
        "scores": 2 * batch * n_heads * T * T_k * d_head,  # Q Kᵀ per head
        "values": 2 * batch * n_heads * T * T_k * d_head,  # A V per head
        "output": 2 * batch * T * d_model * d_model,  # merged heads @ W_Oᵀ
    }
    counts["total"] = sum(counts.values())
    return counts


def mlp_flops(d_model: int, d_ff: int, T: int, *, kind: str = "gelu", batch: int = 1) -> int:
    """FLOPs of one FFN on T tokens: GELU (2 matrices) 4 B T d d_ff, SwiGLU (3 matrices) 6 B T d d_ff."""
    fn = "mlp_flops"
    for name, value in (("d_model", d_model), ("d_ff", d_ff), ("T", T), ("batch", batch)):
        _count(fn, name, value)
    matrices = {"gelu": 2, "swiglu": 3}
    if kind not in matrices:
        raise ValueError(f"{fn}: kind must be 'gelu' or 'swiglu'; got {kind!r}")
    return matrices[kind] * 2 * batch * T * d_model * d_ff


def _config_parts(fn: str, config) -> tuple:
    if not isinstance(config, ModelConfig):
        raise TypeError(f"{fn}: config must be a ModelConfig; got {type(config).__name__}")
    if config.ffn not in ("gelu", "swiglu"):
        raise ValueError(f"{fn}: counts FLOPs of the 'gelu' and 'swiglu' FFNs; got ffn={config.ffn!r}")
    return config


def model_flops(config, T: int, *, batch: int = 1, training: bool = False) -> int:
    """FLOPs of TinyDecoder(config) on a batch of sequences of T tokens (all tokens at once).

    n_layers x (attention + MLP) + LM head 2 B T d V; training=True counts forward + backward
    = 3 x forward. Embedding look-ups, norms and the softmax are not matrix products (not counted).
    """
    fn = "model_flops"
    config = _config_parts(fn, config)
    _count(fn, "T", T)
    if not isinstance(training, bool):
        raise TypeError(f"{fn}: training must be True or False; got {training!r}")
    d = config.d_model
    layer = (attention_flops(d, config.n_heads, T, n_kv_heads=config.kv_heads, batch=batch)["total"]
             + mlp_flops(d, config.ffn_width, T, kind=config.ffn, batch=batch))
    forward = config.n_layers * layer + 2 * batch * T * d * config.vocab_size  # + LM head
    return 3 * forward if training else forward


def flops_per_token(config, T: int, *, training: bool = False) -> int:
    """model_flops(config, T) / T: the cost of one token of a T-token sequence (grows with T)."""
    return model_flops(config, T, training=training) // T


def decode_step_flops(config, context: int, *, batch: int = 1) -> int:
    """FLOPs to generate one token with a KV cache that already holds `context` tokens.

    The new token is projected alone (T = 1) and attends to context + 1 keys (the cache and itself).
    """
    fn = "decode_step_flops"
    config = _config_parts(fn, config)
    if isinstance(context, bool) or not isinstance(context, int) or context < 0:
        raise ValueError(f"{fn}: context must be an int >= 0; got {context!r}")
    d = config.d_model
    layer = (attention_flops(d, config.n_heads, 1, T_k=context + 1, n_kv_heads=config.kv_heads, batch=batch)["total"]
             + mlp_flops(d, config.ffn_width, 1, kind=config.ffn, batch=batch))
    return config.n_layers * layer + 2 * batch * d * config.vocab_size


def attention_mlp_crossover(config) -> int:
    """The smallest T at which one layer's attention costs at least as many FLOPs as its MLP.

    attention(T) = 2 T d (2 d + 2 d_kv) + 4 T² d   and   MLP(T) = 2 m T d d_ff (m = 2 GELU, 3 SwiGLU),
    so they are equal at T = (m d_ff - 2 d - 2 d_kv) / 2 (at least 1).
    """
    fn = "attention_mlp_crossover"
    config = _config_parts(fn, config)
    d, d_kv = config.d_model, config.kv_heads * config.d_head
    m = 2 if config.ffn == "gelu" else 3
    return max(1, math.ceil((m * config.ffn_width - 2 * d - 2 * d_kv) / 2))


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------


def bytes_per_element(dtype: torch.dtype) -> int:
    """4 for float32, 2 for float16 and bfloat16, 8 for float64, 1 for int8 / bool."""
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"bytes_per_element: dtype must be a torch.dtype (e.g. torch.float16); got {dtype!r}")
    return torch.empty((), dtype=dtype).element_size()


def score_bytes(batch: int, n_heads: int, T_q: int, T_k: int | None = None, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of one layer's attention score matrix (B, H, T_q, T_k) (T_k=None: T_q)."""
    fn = "score_bytes"
    for name, value in (("batch", batch), ("n_heads", n_heads), ("T_q", T_q)):
        _count(fn, name, value)
    T_k = T_q if T_k is None else _count(fn, "T_k", T_k)
    return batch * n_heads * T_q * T_k * bytes_per_element(dtype)


def kv_cache_bytes(n_layers: int, n_kv_heads: int, d_head: int, tokens: int, batch: int = 1,
                   dtype: torch.dtype = torch.float16) -> int:
    """Bytes of a decoder's KV cache: 2 (K and V) x n_layers x batch x n_kv_heads x tokens x d_head x bytes.

    Example (the seeds'): 32 layers, 32 KV heads, d_head 128, 4096 tokens, fp16 -> 2 GiB per sequence.
    """
    fn = "kv_cache_bytes"
    for name, value in (("n_layers", n_layers), ("n_kv_heads", n_kv_heads), ("d_head", d_head), ("batch", batch)):
        _count(fn, name, value)
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise ValueError(f"{fn}: tokens must be an int >= 0; got {tokens!r}")
    return 2 * n_layers * batch * n_kv_heads * tokens * d_head * bytes_per_element(dtype)


# ---------------------------------------------------------------------------------------------
# The roofline: is a computation limited by arithmetic or by memory?
# ---------------------------------------------------------------------------------------------


def _positive_number(fn: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{fn}: {name} must be a finite number > 0; got {value!r}")
    return float(value)


def arithmetic_intensity(flops: float, bytes_moved: float) -> float:
    """FLOPs per byte moved between memory and the chip: the x axis of the roofline."""
    fn = "arithmetic_intensity"
    return _positive_number(fn, "flops", flops) / _positive_number(fn, "bytes_moved", bytes_moved)


def ridge_intensity(peak_flops: float, bandwidth: float) -> float:
    """The intensity (FLOP/byte) where the memory roof meets the compute roof: peak_flops / bandwidth.
    Below it a computation waits for memory, above it for arithmetic (H100 SXM, bf16: 989.4e12 / 3.35e12
    = 295 FLOP/byte)."""
    fn = "ridge_intensity"
    return _positive_number(fn, "peak_flops", peak_flops) / _positive_number(fn, "bandwidth", bandwidth)


def attainable_flops(intensity: float, peak_flops: float, bandwidth: float) -> float:
    """The roofline: min(peak_flops, intensity x bandwidth) FLOP/s at a given intensity (FLOP/byte)."""
    fn = "attainable_flops"
    intensity = _positive_number(fn, "intensity", intensity)
    return min(_positive_number(fn, "peak_flops", peak_flops), intensity * _positive_number(fn, "bandwidth", bandwidth))


def roofline_time(flops: float, bytes_moved: float, peak_flops: float, bandwidth: float) -> float:
    """The shortest time a chip needs: max(flops / peak_flops, bytes_moved / bandwidth) seconds.

    Arithmetic and memory traffic overlap on a real chip, so the slower of the two sets the time (their
    sum would be an upper estimate, their minimum is never reachable)."""
    fn = "roofline_time"
    return max(_positive_number(fn, "flops", flops) / _positive_number(fn, "peak_flops", peak_flops),
               _positive_number(fn, "bytes_moved", bytes_moved) / _positive_number(fn, "bandwidth", bandwidth))


def decode_floor_seconds(bytes_read: float, bandwidth: float) -> float:
    """The latency floor of one decode step that must read `bytes_read` bytes (weights, plus the KV cache
    where given): bytes_read / bandwidth. At batch 1 the arithmetic finishes far sooner."""
    fn = "decode_floor_seconds"
    return _positive_number(fn, "bytes_read", bytes_read) / _positive_number(fn, "bandwidth", bandwidth)


def decode_crossover_batch(peak_flops: float, bandwidth: float, bytes_per_param: float) -> int:
    """The smallest batch B at which a decode step turns compute-bound (its weights only, no KV cache).

    One step of B sequences reads each weight once (bytes_per_param bytes) and uses it in B multiply-adds
    (2 B FLOPs): intensity 2 B / bytes_per_param, which reaches the ridge at B = ridge x bytes_per_param / 2.
    H100 SXM in bf16: ceil(295.3 x 2 / 2) = 296."""
    fn = "decode_crossover_batch"
    ridge = ridge_intensity(peak_flops, bandwidth)
    return math.ceil(ridge * _positive_number(fn, "bytes_per_param", bytes_per_param) / 2)


def decode_roofline(n_params: int, batch: int, bytes_per_param: float, peak_flops: float,
                    bandwidth: float) -> dict[str, float]:
    """One decode step of `batch` sequences through a model of n_params weights, on the roofline.

    FLOPs 2 n_params batch (one multiply-add per weight and token), bytes n_params x bytes_per_param
    (the weights are read once per step, whatever the batch; the KV cache is left out) ->
    {"intensity": FLOP/byte, "seconds": roofline_time, "crossover_batch": decode_crossover_batch}.
    Exercise 8 of the chapter's exercises."""
    fn = "decode_roofline"
    _count(fn, "n_params", n_params)
    _count(fn, "batch", batch)
    flops = 2 * n_params * batch
    moved = n_params * _positive_number(fn, "bytes_per_param", bytes_per_param)
    return {"intensity": arithmetic_intensity(flops, moved),
            "seconds": roofline_time(flops, moved, peak_flops, bandwidth),
            "crossover_batch": decode_crossover_batch(peak_flops, bandwidth, bytes_per_param)}


def decoder_param_count(config) -> int:
    """Parameters of TinyDecoder(config), from the chapters' counters (chapter 02's attention_param_count,
    chapter 03's ffn_param_count) plus embeddings, norms and the LM head.

    V d (token embeddings) + [max_seq_len d (learned positions)] + L (attention + FFN + 2 norms) + final
    norm + [V d (LM head, when not tied)]; a LayerNorm has 2 d parameters, an RMSNorm d; config.bias
    gives the GELU FFN biases (the SwiGLU FFN never has them).
    Llama-3-8B (32 layers, d 4096, 32 heads, 8 K/V heads, d_ff 14336, V 128256, untied): 8,030,261,248."""

    fn = "decoder_param_count"
    config = _config_parts(fn, config)
    d, V = config.d_model, config.vocab_size
    norm = 2 * d if config.norm == "layernorm" else d
    gated = config.ffn == "swiglu"  # the shared model's SwiGLU is bias-free, like Llama's
    layer = (attention_param_count(d, config.n_heads, config.kv_heads)
             + ffn_param_count(d, config.ffn_width, gated=gated, bias=config.bias and not gated) + 2 * norm)
    positions = config.max_seq_len * d if config.positions == "learned" else 0
    head = 0 if config.tie_weights else V * d
    return V * d + positions + config.n_layers * layer + norm + head


def copy_bandwidth(n_bytes: int = 256 * 2**20, *, repeat: int = 5, device: torch.device | str = "cpu") -> float:
    """This machine's measured memory bandwidth in bytes/s: the best of `repeat` copies of n_bytes
    (float32), counting each byte read and each byte written (2 n_bytes per copy). Choose n_bytes far
    larger than the caches (the default 256 MiB), or the caches are measured instead."""

    fn = "copy_bandwidth"
    _count(fn, "n_bytes", n_bytes)
    _count(fn, "repeat", repeat)
    src = torch.ones(n_bytes // 4, device=device)  # touched once, so its pages exist before timing
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = math.inf
    for _ in range(repeat):
        if src.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        dst.copy_(src)
        if src.device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best


# ---------------------------------------------------------------------------------------------
# One decoding step with a cache, as functions (the exercises' versions of blocks.KVCache)
# ---------------------------------------------------------------------------------------------


def embed_new_tokens(ids: torch.Tensor, wte: torch.Tensor, wpe: torch.Tensor, cache_length: int) -> torch.Tensor:
    """Embeddings of T new tokens that follow cache_length cached ones, with learned positions.

    ids (B, T), wte (V, d_model), wpe (T_max, d_model) -> wte[ids] + wpe[cache_length : cache_length + T]
    (B, T, d_model): the new tokens sit at positions cache_length .. cache_length + T - 1.
    """
    fn = "embed_new_tokens"
    require_tensor(fn, "ids", ids)
    if ids.dim() != 2 or ids.is_floating_point():
        raise ShapeError(f"{fn}: ids must be integer ids of shape (B, T); got {fmt_shape(ids.shape)}")
    require_float(fn, "wte", wte, "(V, d_model)")
    require_float(fn, "wpe", wpe, "(T_max, d_model)")
    if isinstance(cache_length, bool) or not isinstance(cache_length, int) or cache_length < 0:
        raise ValueError(f"{fn}: cache_length must be an int >= 0; got {cache_length!r}")
    T = ids.shape[1]
    if cache_length + T > wpe.shape[0]:
        raise ShapeError(f"{fn}: positions {cache_length} .. {cache_length + T - 1} need rows of wpe, which has "
                         f"T_max = {wpe.shape[0]} rows")
    return wte[ids] + wpe[cache_length:cache_length + T]  # (B, T, d_model) + (T, d_model)


def attend_with_cache(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, k_cache: torch.Tensor,
                      v_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One attention step of T_new new tokens against a cache of T_past tokens (GQA-aware).

    q (B, H, T_new, d_head); k_new, v_new (B, H_kv, T_new, d_head); k_cache, v_cache
    (B, H_kv, T_past, d_head), T_past may be 0 -> (out (B, H, T_new, d_head), k_all, v_all
    (B, H_kv, T_past + T_new, d_head)). The new keys join the cache *before* attending (a token
    sees itself), the cache keeps the H_kv heads (repeated to H only for the attention), and the
    causal mask is bottom-right aligned: new query i sees keys 0 .. T_past + i.
    """
    fn = "attend_with_cache"
    for name, x in (("q", q), ("k_new", k_new), ("v_new", v_new), ("k_cache", k_cache), ("v_cache", v_cache)):
        require_float(fn, name, x, "(B, heads, T, d_head)")
    require_same_dtype(fn, q=q, k_new=k_new, v_new=v_new, k_cache=k_cache, v_cache=v_cache)
    B, H, T_new, d_head = q.shape
    H_kv = k_new.shape[1]
    if (k_new.shape != (B, H_kv, T_new, d_head) or v_new.shape != k_new.shape
            or k_cache.shape[:2] != (B, H_kv) or k_cache.shape[3] != d_head or v_cache.shape != k_cache.shape
            or H % H_kv):
        raise ShapeError(f"{fn}: expected q (B, H, T_new, d_head) = {fmt_shape(q.shape)}, k_new and v_new "
                         f"(B, H_kv, T_new, d_head) with H_kv dividing H, k_cache and v_cache (B, H_kv, T_past, "
                         f"d_head); got k_new {fmt_shape(k_new.shape)}, v_new {fmt_shape(v_new.shape)}, k_cache "
                         f"{fmt_shape(k_cache.shape)}, v_cache {fmt_shape(v_cache.shape)}")
    k_all = torch.cat([k_cache, k_new], dim=2)  # (B, H_kv, T_past + T_new, d_head)
    v_all = torch.cat([v_cache, v_new], dim=2)  # (B, H_kv, T_past + T_new, d_head)
    group = H // H_kv
    k, v = k_all.repeat_interleave(group, dim=1), v_all.repeat_interleave(group, dim=1)  # (B, H, T_k, d_head)
    mask = cached_causal_mask(T_new, k_all.shape[2], device=q.device)  # (T_new, T_k)
    out, _ = scaled_dot_product_attention(q, k, v, mask)  # (B, H, T_new, d_head)
    return out, k_all, v_all


# ---------------------------------------------------------------------------------------------
# FlashAttention's forward pass: the online softmax over blocks
# ---------------------------------------------------------------------------------------------


def _mask_block(mask: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:
    """mask[..., rows, cols], leaving broadcast (size-1) axes alone."""
    r = rows if mask.shape[-2] != 1 else slice(None)
    c = cols if mask.shape[-1] != 1 else slice(None)
    return mask[..., r, c]


def tiled_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None, *,
                    causal: bool = False, block_size: int = 64) -> torch.Tensor:
    """Exact softmax(Q Kᵀ / sqrt(d_k)) V, computed block by block without the T_q x T_k matrix.

    q (..., T_q, d_k), k (..., T_k, d_k), v (..., T_k, d_v); mask bool broadcastable to
    (..., T_q, T_k) (True = may attend); causal=True allows query i the keys j <= i + (T_k - T_q)
    (bottom-right aligned, as for new queries after a KV cache) -> output (..., T_q, d_v).

    For each block of block_size queries it walks over blocks of block_size keys, keeping per query
    a running max m, a running sum l = sum exp(s - m) and an accumulator acc = sum exp(s - m) v:

        m_new = max(m, rowmax(S_blk));  c = exp(m - m_new)
        l = c l + rowsum(exp(S_blk - m_new));  acc = c acc + exp(S_blk - m_new) V_blk;  m = m_new
        output = acc / l      (a row that saw no allowed key keeps l = 0 and gets zeros)

    Key blocks that a causal mask blocks entirely are skipped. The largest temporary is one
    (..., block_size, block_size) piece of the scores.
    """
    fn = "tiled_attention"
    require_float(fn, "q", q, "(..., T_q, d_k)")
    require_float(fn, "k", k, "(..., T_k, d_k)")
    require_float(fn, "v", v, "(..., T_k, d_v)")
    require_same_dtype(fn, q=q, k=k, v=v)
    if q.shape[:-2] != k.shape[:-2] or q.shape[-1] != k.shape[-1] or v.shape[:-1] != k.shape[:-1]:
        raise ShapeError(f"{fn}: q (..., T_q, d_k) = {fmt_shape(q.shape)}, k (..., T_k, d_k) = "
                         f"{fmt_shape(k.shape)} and v (..., T_k, d_v) = {fmt_shape(v.shape)} must share "
                         f"their leading axes, d_k and T_k")
    require_positive_int(fn, "block_size", block_size)
    if not isinstance(causal, bool):
        raise TypeError(f"{fn}: causal must be True or False; got {causal!r}")
    T_q, T_k = q.shape[-2], k.shape[-2]
    if mask is not None:
        require_bool_mask(fn, mask, (*q.shape[:-1], T_k))
    scale = 1.0 / math.sqrt(q.shape[-1])
    shift = T_k - T_q  # causal: query i sees keys 0 .. i + shift
    out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)  # (..., T_q, d_v)
    zero = torch.zeros((), dtype=q.dtype, device=q.device)
    for q0 in range(0, T_q, block_size):
        q1 = min(q0 + block_size, T_q)
        q_blk = q[..., q0:q1, :] * scale  # (..., bq, d_k)
        m = torch.full((*q_blk.shape[:-1], 1), float("-inf"), dtype=q.dtype, device=q.device)  # (..., bq, 1)
        l = torch.zeros_like(m)  # (..., bq, 1)
        acc = torch.zeros(*q_blk.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)  # (..., bq, d_v)
        for k0 in range(0, T_k, block_size):
            if causal and k0 > q1 - 1 + shift:
                break  # this key block and every later one lie above the diagonal
            k1 = min(k0 + block_size, T_k)
            s = q_blk @ k[..., k0:k1, :].transpose(-2, -1)  # (..., bq, bk)
            allowed = None
            if causal:
                rows = torch.arange(q0, q1, device=q.device)[:, None]  # (bq, 1)
                cols = torch.arange(k0, k1, device=q.device)[None, :]  # (1, bk)
                allowed = cols <= rows + shift  # (bq, bk)
            if mask is not None:
                block = _mask_block(mask, slice(q0, q1), slice(k0, k1))  # broadcastable to (..., bq, bk)
                allowed = block if allowed is None else allowed & block
            if allowed is not None:
                s = s.masked_fill(~allowed, float("-inf"))  # (..., bq, bk)
            m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))  # (..., bq, 1)
            m_safe = torch.where(torch.isinf(m_new), zero, m_new)  # rows with nothing allowed yet: 0
            p = torch.exp(s - m_safe)  # (..., bq, bk); blocked keys give exp(-inf) = 0
            c = torch.exp(m - m_safe)  # (..., bq, 1): rescales what was summed under the old max
            l = c * l + p.sum(dim=-1, keepdim=True)  # (..., bq, 1)
            acc = c * acc + p @ v[..., k0:k1, :]  # (..., bq, d_v)
            m = m_new
        out[..., q0:q1, :] = torch.where(l > 0, acc / torch.where(l > 0, l, torch.ones_like(l)), zero)
    return out


# ---------------------------------------------------------------------------------------------
# Measuring memory
# ---------------------------------------------------------------------------------------------


class _LiveBytes(TorchDispatchMode):
    """Watches every tensor an ATen operator returns; adds its storage's bytes while it lives."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()
        self._outside: set[int] = set()  # storages made before the call (inputs, weights)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for t in tree_flatten((args, kwargs))[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in self._seen:
                self._outside.add(t.untyped_storage().data_ptr())
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
            if size == 0 or key in self._seen or key in self._outside:  # a view: nothing new allocated
                continue
            self._seen.add(key)
            self.live += size
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key, size)
        return out

    def _free(self, key: int, size: int) -> None:
        self.live -= size
        self._seen.discard(key)


def peak_tensor_bytes(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, int]:
    """Run fn(*args, **kwargs); return (its result, the peak bytes of tensors it had alive at once).

    Counts the storage of every tensor that torch's operators create during the call (inputs that
    existed before are not counted) and subtracts it when the tensor is freed. This is torch's own
    allocation, on any device; Python's tracemalloc does not see it (torch allocates in C++), and
    a process's RSS mixes it with the interpreter and allocator caches. Scratch buffers a kernel
    uses internally and frees before returning are not visible to it.
    """
    if not callable(fn):
        raise TypeError(f"peak_tensor_bytes: fn must be callable; got {type(fn).__name__}")
    with _LiveBytes() as mode:
        result = fn(*args, **kwargs)
    return result, mode.peak


# ---------------------------------------------------------------------------------------------
# Memory traffic: FlashAttention's claim (Dao et al. 2022, Theorem 2)
# ---------------------------------------------------------------------------------------------


def standard_attention_io(T: int, d_head: int, *, batch_heads: int = 1) -> dict[str, int]:
    """Elements standard attention (Dao et al. 2022, Algorithm 0) reads from and writes to main memory.

    Per head: read Q, K (2 T d), write S = Q Kᵀ (T²); read S, write P = softmax(S) (T², T²); read P and V
    (T² + T d), write O (T d). Reads 3 T d + 2 T², writes T d + 2 T²: Θ(T d + T²) in all."""
    fn = "standard_attention_io"
    for name, value in (("T", T), ("d_head", d_head), ("batch_heads", batch_heads)):
        _count(fn, name, value)
    read = batch_heads * (3 * T * d_head + 2 * T * T)
    written = batch_heads * (T * d_head + 2 * T * T)
    return {"read": read, "written": written, "total": read + written}


def tiled_attention_io(T_q: int, T_k: int, d_head: int, block_size: int, *, d_v: int | None = None,
                       causal: bool = False, batch_heads: int = 1) -> dict[str, int]:
    """Elements `tiled_attention` reads from its inputs and writes to its output, per its loop order.

    Each block of queries is read once (T_q d in all) and, for every key block it visits, reads that
    block of K and of V: without a mask 2 T_k d ceil(T_q / block_size) in all; with causal=True only
    the key blocks at or below the diagonal. The output is written twice: filled with zeros, then
    each query block's result (2 T_q d_v). With block_size = M / (4 d) (blocks of Q, K, V and the
    output accumulator in an on-chip memory of M elements) the K/V term is 8 T_q T_k d² / M:
    Dao et al.'s Θ(N² d² / M)."""
    fn = "tiled_attention_io"
    for name, value in (("T_q", T_q), ("T_k", T_k), ("d_head", d_head), ("block_size", block_size),
                        ("batch_heads", batch_heads)):
        _count(fn, name, value)
    d_v = d_head if d_v is None else _count(fn, "d_v", d_v)
    shift = T_k - T_q
    keys = 0
    for q0 in range(0, T_q, block_size):
        q1 = min(q0 + block_size, T_q)
        for k0 in range(0, T_k, block_size):
            if causal and k0 > q1 - 1 + shift:
                break
            keys += min(k0 + block_size, T_k) - k0
    read = batch_heads * (T_q * d_head + keys * (d_head + d_v))
    written = batch_heads * 2 * T_q * d_v
    return {"read": read, "written": written, "total": read + written}


class _InputOutputTraffic(TorchDispatchMode):
    """Counts the elements that operators read from watched storages and write to any storage."""

    _NO_TRAFFIC = ("aten::empty", "aten::empty_like", "aten::empty_strided", "aten::detach", "aten::lift_fresh")

    def __init__(self, inputs: set[int]) -> None:
        super().__init__()
        self.inputs = inputs
        self.read = 0
        self.writes: list[tuple[int, int]] = []  # (storage, elements)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view or func._schema.name in self._NO_TRAFFIC:
            return out
        mutated = func._schema.name.endswith("_") or any(a.alias_info is not None and a.alias_info.is_write
                                                          for a in func._schema.arguments)
        flat = tree_flatten((args, kwargs))[0]
        for i, t in enumerate(flat):
            if isinstance(t, torch.Tensor) and not (mutated and i == 0):
                if t.untyped_storage().data_ptr() in self.inputs:
                    self.read += t.numel()
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.writes.append((t.untyped_storage().data_ptr(), t.numel()))
        return out


def count_attention_io(fn: Callable[..., Any], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       **kwargs: Any) -> dict[str, int]:
    """Run fn(q, k, v, **kwargs) and count its traffic with main memory, measured operator by operator:
    elements read from q, k and v (every operator that consumes a piece of them; views are free) and
    elements written into the tensor it returns. Temporaries (score blocks, running statistics) are
    what a fused kernel keeps on chip, so they are not counted. -> {"read", "written", "total"}."""
    if not callable(fn):
        raise TypeError(f"count_attention_io: fn must be callable; got {type(fn).__name__}")
    for name, x in (("q", q), ("k", k), ("v", v)):
        require_tensor("count_attention_io", name, x)
    with _InputOutputTraffic({x.untyped_storage().data_ptr() for x in (q, k, v)}) as mode:
        result = fn(q, k, v, **kwargs)
    target = result.untyped_storage().data_ptr()
    written = sum(n for ptr, n in mode.writes if ptr == target)
    return {"read": mode.read, "written": written, "total": mode.read + written}


# ---------------------------------------------------------------------------------------------
# Context length in practice: prefill latency, and context that is readable but unused
# ---------------------------------------------------------------------------------------------


def prefill_latency(config, lengths: Sequence[int], *, repeat: int = 3, seed: int = 0) -> dict[int, float]:
    """Seconds to run one prompt of each length through TinyDecoder(config) on the fast path (the
    prefill), the best of `repeat` timed runs after one warm-up, on the current torch thread count and
    device of a fresh model (CPU). Cost: about repeat + 1 forward passes per length."""
    from dataclasses import replace

    fn = "prefill_latency"
    config = _config_parts(fn, config)
    _count(fn, "repeat", repeat)
    lengths = [_count(fn, "length", T) for T in lengths]
    if max(lengths) > config.max_seq_len and config.positions == "learned":
        raise ValueError(f"{fn}: length {max(lengths)} needs max_seq_len >= it; got {config.max_seq_len}")
    torch.manual_seed(seed)
    model = TinyDecoder(replace(config, kernels="fused")).eval()
    gen = torch.Generator().manual_seed(seed)
    out = {}
    with torch.inference_mode():
        for T in lengths:
            ids = torch.randint(0, config.vocab_size, (1, T), generator=gen)  # (1, T)
            model(ids)  # warm-up
            best = math.inf
            for _ in range(repeat):
                start = time.perf_counter()
                model(ids)
                best = min(best, time.perf_counter() - start)
            out[T] = best
    return out


def loss_by_visible_context(model: torch.nn.Module, ids: torch.Tensor, windows: Sequence[int], *,
                            n_targets: int = 512, seed: int = 0) -> dict[int, float]:
    """Mean next-token loss (nats) when the model sees only the last w tokens, for each w in `windows`.

    The same n_targets target positions (drawn once with `seed`, each with max(windows) tokens before
    it) are predicted from windows of w tokens ending just before them: the window is the model's
    input, so it sees nothing older. A loss that stops falling at some w means the model does not use
    context beyond w tokens, however long its window is."""
    fn = "loss_by_visible_context"
    require_tensor(fn, "ids", ids)
    if ids.dim() != 1 or ids.is_floating_point():
        raise ShapeError(f"{fn}: ids must be integer ids of shape (N,); got {fmt_shape(ids.shape)}")
    windows = [_count(fn, "window", w) for w in windows]
    longest = max(windows)
    if ids.numel() <= longest:
        raise ValueError(f"{fn}: ids has {ids.numel()} tokens; need more than the longest window {longest}")
    gen = torch.Generator().manual_seed(seed)
    targets = torch.randint(longest, ids.numel(), (n_targets,), generator=gen)  # (n_targets,)
    was_training = model.training
    model.eval()
    out = {}
    with torch.no_grad():
        for w in windows:
            idx = targets[:, None] - w + torch.arange(w)[None, :]  # (n_targets, w)
            logits = model(ids[idx])[:, -1]  # (n_targets, V): the prediction after the window
            out[w] = torch.nn.functional.cross_entropy(logits.float(), ids[targets]).item()
    model.train(was_training)
    return out


CONTEXT_WINDOWS = (1, 2, 4, 8, 16, 32, 64)


def context_use_experiment(seed: int = 0, *, steps: int = 200, n_targets: int = 1024) -> dict[str, Any]:
    """A window the model can read is not context it uses: train the course's small decoder (2 layers,
    d_model 64, a 64-character window, chapter 08's character data and fast path) for `steps` AdamW
    steps on one thread, then measure its validation loss when it sees only the last w characters,
    w in CONTEXT_WINDOWS.

    Shows: the loss falls from w = 1 to w of about 4 and then stays flat (or worsens) up to the full
    64: the trained model reads 64 characters but its predictions use only the last few.
    Returns {"loss": {w: nats}, "val_loss": the trained model's validation loss, "cpu_seconds"}.
    Deterministic for a seed; costs about 5 CPU-seconds (200 steps of 16 x 64 characters)."""

    start = time.process_time()
    tok = course_chars()
    train_ids = torch.tensor(tok.encode(load_corpus("train")))  # (N_train,)
    val_ids = torch.tensor(tok.encode(load_corpus("val")))  # (N_val,)
    torch.manual_seed(seed)
    model = TinyDecoder(ModelConfig(vocab_size=tok.vocab_size, d_model=64, n_heads=4, n_layers=2,
                                    max_seq_len=max(CONTEXT_WINDOWS), kernels="fused"))
    history = train(model, train_ids, val_ids, steps=steps, batch_size=16, block_size=max(CONTEXT_WINDOWS),
                    lr=1e-2, warmup=steps // 10, min_lr=1e-3, eval_every=steps, eval_batches=2, seed=seed,
                    progress=False, threads=1)
    loss = loss_by_visible_context(model, val_ids, CONTEXT_WINDOWS, n_targets=n_targets, seed=seed)
    return {"loss": loss, "val_loss": float(history.val_loss[-1]), "cpu_seconds": time.process_time() - start}
