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
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .attention import scaled_dot_product_attention
from .blocks import ModelConfig, cached_causal_mask
from .shapes import (
    ShapeError,
    fmt_shape,
    require_bool_mask,
    require_float,
    require_positive_int,
    require_same_dtype,
    require_tensor,
)

__all__ = [
    "attend_with_cache",
    "attention_flops",
    "attention_mlp_crossover",
    "bytes_per_element",
    "decode_step_flops",
    "embed_new_tokens",
    "kv_cache_bytes",
    "mlp_flops",
    "model_flops",
    "peak_tensor_bytes",
    "flops_per_token",
    "score_bytes",
    "tiled_attention",
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
