"""Chapter 01: scaled dot-product attention, written out step by step.

    scores  S = Q Kᵀ / sqrt(d_k)                       (..., T_q, T_k)
    mask    S_ij <- -inf where mask_ij is False        True = may attend (as in F.scaled_dot_product_attention)
    weights A = softmax(S) over the key axis (-1)      each row sums to 1 over the allowed keys
    output  O = A V                                    (..., T_q, d_v)

A query row whose keys are all blocked has no distribution to take: it gets all-zero weights and
a zero output (not NaN), which is also what torch's fused kernel returns.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

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
    "attention_scores",
    "causal_mask",
    "padding_mask",
    "apply_mask",
    "masked_softmax",
    "scaled_dot_product_attention",
    "MASK_KINDS",
    "MODEL_KINDS",
    "bidirectional_mask",
    "causal_padding_mask",
    "classify_mask",
    "cross_mask",
    "model_masks",
    "prefix_lm_mask",
]


def _require_qk(fn: str, q: torch.Tensor, k: torch.Tensor) -> None:
    require_float(fn, "q", q, "(..., T_q, d_k)")
    require_float(fn, "k", k, "(..., T_k, d_k)")
    require_same_dtype(fn, q=q, k=k)
    if q.shape[:-2] != k.shape[:-2] or q.shape[-1] != k.shape[-1]:
        raise ShapeError(
            f"{fn}: q is (..., T_q, d_k) = {fmt_shape(q.shape)}, so k must be (..., T_k, d_k) with the "
            f"same leading axes {fmt_shape(q.shape[:-2])} and d_k = {q.shape[-1]}; got k {fmt_shape(k.shape)}"
        )


def attention_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """S = Q Kᵀ / sqrt(d_k): (..., T_q, d_k), (..., T_k, d_k) -> (..., T_q, T_k)."""
    _require_qk("attention_scores", q, k)
    d_k = q.shape[-1]
    return q @ k.transpose(-2, -1) / math.sqrt(d_k)  # (..., T_q, T_k)


def causal_mask(T: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """(T, T) bool, True on and below the diagonal: query i may attend to keys 0..i."""
    require_positive_int("causal_mask", "T", T)
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()  # (T, T)


def padding_mask(
    lengths: torch.Tensor | Sequence[int], T: int, *, device: torch.device | str | None = None
) -> torch.Tensor:
    """(B, 1, T) bool key-padding mask: key j of sequence b may be attended to iff j < lengths[b].

    The size-1 query axis broadcasts against scores (B, T_q, T_k); for per-head scores
    (B, H, T_q, T_k) insert the head axis: padding_mask(lengths, T)[:, None].
    """
    fn = "padding_mask"
    require_positive_int(fn, "T", T)
    lengths = torch.as_tensor(lengths, device=device)
    if lengths.dim() != 1 or lengths.is_floating_point() or lengths.dtype == torch.bool:
        raise ShapeError(
            f"{fn}: lengths must be a 1-D integer tensor of shape (B,); got {fmt_shape(lengths.shape)} "
            f"of dtype {lengths.dtype}"
        )
    if lengths.numel() and (lengths.min() < 0 or lengths.max() > T):
        raise ValueError(f"{fn}: every length must lie in 0..T = 0..{T}; got {lengths.tolist()}")
    positions = torch.arange(T, device=lengths.device)  # (T,)
    return (positions[None, :] < lengths[:, None])[:, None, :]  # (B, 1, T)


def apply_mask(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Blocked scores (mask False) become -inf; allowed scores are unchanged. Returns a new tensor."""
    require_float("apply_mask", "scores", scores, "(..., T_q, T_k)")
    require_bool_mask("apply_mask", mask, scores.shape)
    return scores.masked_fill(~mask, float("-inf"))  # (..., T_q, T_k)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax over the key axis (-1), giving blocked keys exactly zero weight.

    Rows with no allowed key are all zeros. They are computed from zeros rather than from a row
    of -inf, so neither the forward pass nor the gradient ever contains NaN.
    """
    require_float("masked_softmax", "scores", scores, "(..., T_q, T_k)")
    if mask is None:
        return torch.softmax(scores, dim=-1)  # (..., T_q, T_k)
    masked = apply_mask(scores, mask)  # (..., T_q, T_k), -inf where blocked
    has_key = mask.any(dim=-1, keepdim=True)  # (..., T_q or 1, 1)
    safe = torch.where(has_key, masked, torch.zeros((), dtype=scores.dtype, device=scores.device))
    weights = torch.softmax(safe, dim=-1)  # (..., T_q, T_k)
    return torch.where(has_key, weights, torch.zeros((), dtype=scores.dtype, device=scores.device))


def scaled_dot_product_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(Q Kᵀ / sqrt(d_k), blocked -> -inf) V.

    q (..., T_q, d_k), k (..., T_k, d_k), v (..., T_k, d_v), mask broadcastable to (..., T_q, T_k)
    -> (output (..., T_q, d_v), weights (..., T_q, T_k)).
    Same numbers as torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask).
    """
    fn = "scaled_dot_product_attention"
    _require_qk(fn, q, k)
    require_float(fn, "v", v, "(..., T_k, d_v)")
    require_same_dtype(fn, q=q, k=k, v=v)
    if v.shape[:-2] != k.shape[:-2] or v.shape[-2] != k.shape[-2]:
        raise ShapeError(
            f"{fn}: k is (..., T_k, d_k) = {fmt_shape(k.shape)}, so v must be (..., T_k, d_v) with the "
            f"same leading axes and T_k = {k.shape[-2]}; got v {fmt_shape(v.shape)}"
        )
    scores = attention_scores(q, k)  # (..., T_q, T_k)
    if mask is not None:
        require_bool_mask(fn, mask, scores.shape)
    weights = masked_softmax(scores, mask)  # (..., T_q, T_k)
    return weights @ v, weights  # (..., T_q, d_v), (..., T_q, T_k)


# ---------------------------------------------------------------------------------------------
# Chapter 05: the mask family, and which model kind uses which
# ---------------------------------------------------------------------------------------------
#
# Every mask below is bool with True = may attend, shape (B, T_q, T_k): one (T_q, T_k) mask per
# sequence. Padding blocks **keys** (columns) only: a padded query row is still computed (it sees
# the real keys), and the loss ignores it. For per-head scores (B, H, T_q, T_k) use mask[:, None].
#
#     bidirectional  (encoder self-attention, BERT)   key j < length
#     causal         (decoder self-attention, GPT)    key j <= query i, and j < length
#     prefix-lm      (T5's prefix LM, UniLM, GLM)     key j < length, and (j <= i or j < prefix)
#     cross          (decoder -> encoder, T5)         source key j < source length, every target query

MASK_KINDS = ("bidirectional", "causal", "prefix-lm", "cross")
MODEL_KINDS = ("encoder", "decoder", "encoder-decoder")


def _lengths(fn: str, name: str, lengths, T: int, device=None) -> torch.Tensor:
    """(B,) int64 tensor, every entry in 0..T."""
    lengths = torch.as_tensor(lengths, device=device)
    if lengths.dim() != 1 or lengths.is_floating_point() or lengths.dtype == torch.bool:
        raise ShapeError(f"{fn}: {name} must be a 1-D integer tensor (or list) of shape (B,); got "
                         f"{fmt_shape(lengths.shape)} of dtype {lengths.dtype}")
    if lengths.numel() and (int(lengths.min()) < 0 or int(lengths.max()) > T):
        raise ValueError(f"{fn}: every entry of {name} must lie in 0..{T}; got {lengths.tolist()}")
    return lengths.long()


def bidirectional_mask(lengths: torch.Tensor | Sequence[int], T: int) -> torch.Tensor:
    """(B, T, T): every query sees every real key; padded keys (j >= lengths[b]) are blocked."""
    fn = "bidirectional_mask"
    require_positive_int(fn, "T", T)
    lengths = _lengths(fn, "lengths", lengths, T)
    keys = torch.arange(T, device=lengths.device)  # (T,)
    real = keys[None, :] < lengths[:, None]  # (B, T_k)
    return real[:, None, :].expand(-1, T, -1).clone()  # (B, T_q, T_k): the same row for every query


def causal_padding_mask(lengths: torch.Tensor | Sequence[int], T: int) -> torch.Tensor:
    """(B, T, T): query i sees keys 0..i that are real (j < lengths[b])."""
    fn = "causal_padding_mask"
    require_positive_int(fn, "T", T)
    lengths = _lengths(fn, "lengths", lengths, T)
    return bidirectional_mask(lengths, T) & causal_mask(T, device=lengths.device)  # (B, T, T)


def prefix_lm_mask(prefix_lengths: torch.Tensor | Sequence[int], lengths: torch.Tensor | Sequence[int],
                   T: int) -> torch.Tensor:
    """(B, T, T): bidirectional inside the first prefix_lengths[b] tokens, causal after them.

    Key j is visible to query i when it is real (j < lengths[b]) and either not in the future
    (j <= i) or inside the prefix (j < prefix_lengths[b]). Prefix 0 (or 1) is the causal mask,
    prefix = length the bidirectional one.
    """
    fn = "prefix_lm_mask"
    require_positive_int(fn, "T", T)
    lengths = _lengths(fn, "lengths", lengths, T)
    prefix = _lengths(fn, "prefix_lengths", prefix_lengths, T, device=lengths.device)
    if prefix.shape != lengths.shape:
        raise ShapeError(f"{fn}: prefix_lengths {fmt_shape(prefix.shape)} and lengths {fmt_shape(lengths.shape)} "
                         f"must both be (B,)")
    if bool((prefix > lengths).any()):
        raise ValueError(f"{fn}: a prefix cannot be longer than its sequence; got prefix_lengths "
                         f"{prefix.tolist()} and lengths {lengths.tolist()}")
    keys = torch.arange(T, device=lengths.device)  # (T,)
    in_prefix = keys[None, :] < prefix[:, None]  # (B, T_k)
    visible = causal_mask(T, device=lengths.device)[None] | in_prefix[:, None, :]  # (B, T_q, T_k)
    return visible & bidirectional_mask(lengths, T)  # (B, T, T)


def cross_mask(source_lengths: torch.Tensor | Sequence[int], T_tgt: int, T_src: int) -> torch.Tensor:
    """(B, T_tgt, T_src): every target query sees every real source key; nothing is causal here."""
    fn = "cross_mask"
    require_positive_int(fn, "T_tgt", T_tgt)
    require_positive_int(fn, "T_src", T_src)
    lengths = _lengths(fn, "source_lengths", source_lengths, T_src)
    keys = torch.arange(T_src, device=lengths.device)  # (T_src,)
    real = keys[None, :] < lengths[:, None]  # (B, T_src)
    return real[:, None, :].expand(-1, T_tgt, -1).clone()  # (B, T_tgt, T_src)


def model_masks(kind: str, lengths: torch.Tensor | Sequence[int], T: int,
                target_lengths: torch.Tensor | Sequence[int] | None = None,
                T_tgt: int | None = None) -> dict[str, torch.Tensor]:
    """The masks a model of this kind needs, by the attention that uses them.

    encoder          {"self": bidirectional (B, T, T)}
    decoder          {"self": causal (B, T, T)}
    encoder-decoder  {"encoder": bidirectional (B, T, T), "decoder": causal (B, T_tgt, T_tgt),
                      "cross": cross (B, T_tgt, T)}: lengths/T describe the source,
                      target_lengths/T_tgt the target
    """
    fn = "model_masks"
    if kind not in MODEL_KINDS:
        raise ValueError(f"{fn}: kind must be one of {MODEL_KINDS}; got {kind!r}")
    if kind == "encoder":
        return {"self": bidirectional_mask(lengths, T)}
    if kind == "decoder":
        return {"self": causal_padding_mask(lengths, T)}
    if target_lengths is None or T_tgt is None:
        raise ValueError(f"{fn}: an encoder-decoder needs target_lengths and T_tgt as well as the source's "
                         f"lengths and T")
    return {"encoder": bidirectional_mask(lengths, T),
            "decoder": causal_padding_mask(target_lengths, T_tgt),
            "cross": cross_mask(lengths, T_tgt, T)}


def _classify_one(mask: torch.Tensor, where: str) -> str:
    """The kind of one (T_q, T_k) mask; ValueError when it is none of them."""
    T_q, T_k = mask.shape
    real = mask.any(dim=0)  # (T_k,): a key no query may see is a padded key
    n = int(real.sum())
    if n == 0:
        raise ValueError(f"classify_mask: {where}blocks every key, so no query can attend to anything")
    if T_q != T_k:
        rows_equal = bool((mask == mask[:1]).all())
        if rows_equal:
            return "cross"
        row = int((mask != mask[:1]).any(dim=1).nonzero()[0])
        raise ValueError(
            f"classify_mask: {where}is not square ({T_q} queries x {T_k} keys), so it is not a self-attention "
            f"mask, and it is not a cross mask either: cross-attention blocks only padded source keys, the "
            f"same for every target query, but query {row} sees other keys than query 0")
    idx = real.nonzero().flatten()  # (n,): the real positions, in order
    sub = mask[idx][:, idx]  # (n, n): real queries x real keys
    diagonal = sub.diagonal()
    if not bool(diagonal.all()):
        i = int(idx[int((~diagonal).nonzero()[0])])
        raise ValueError(f"classify_mask: {where}blocks the diagonal: query {i} cannot see its own token "
                         f"(key {i}), which no self-attention mask does")
    lower = torch.ones(n, n, dtype=torch.bool, device=mask.device).tril()  # (n, n)
    if bool(sub.all()):
        return "bidirectional"
    if not bool((sub & ~lower).any()):  # nothing above the diagonal
        if bool(sub[lower].all()):
            return "causal"
        i, j = (int(v) for v in (lower & ~sub).nonzero()[0])
        raise ValueError(f"classify_mask: {where}is lower-triangular but query {int(idx[i])} cannot see the "
                         f"earlier key {int(idx[j])}; a causal mask allows every key j <= i")
    for p in range(2, n):
        keys = torch.arange(n, device=mask.device)
        if torch.equal(sub, lower | (keys[None, :] < p)):
            return "prefix-lm"
    i, j = (int(v) for v in (sub & ~lower).nonzero()[0])
    raise ValueError(
        f"classify_mask: {where}lets query {int(idx[i])} see the later key {int(idx[j])}, but it is neither "
        f"bidirectional (every query sees every real key) nor prefix-lm (bidirectional inside a prefix, "
        f"causal after it)")


def classify_mask(mask: torch.Tensor) -> str:
    """Name a boolean self- or cross-attention mask: 'bidirectional', 'causal', 'prefix-lm' or 'cross'.

    mask: (T_q, T_k) or (B, T_q, T_k) or (B, 1, T_q, T_k), True = may attend. Keys that no query may
    see are read as padding and left out. A square mask is a self-attention mask; a cross mask is
    told apart when T_q != T_k (a square cross mask looks exactly like a bidirectional one). Raises
    ValueError for a mask that is none of these (not square and rows differing, a blocked diagonal,
    a future key outside any prefix, ...). A batch gets the plainest name that fits every sequence:
    causal and bidirectional sequences together are a prefix-LM batch (prefixes 1 and the whole
    length), and a sequence with a single real token fits any kind.
    """
    fn = "classify_mask"
    require_tensor(fn, "mask", mask)
    if mask.dtype != torch.bool:
        raise TypeError(f"{fn}: mask must be a bool tensor (True = may attend); got dtype {mask.dtype}")
    if mask.dim() == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]  # (B, T_q, T_k)
    if mask.dim() == 2:
        return _classify_one(mask, "")
    if mask.dim() != 3:
        raise ShapeError(f"{fn}: mask must have shape (T_q, T_k), (B, T_q, T_k) or (B, 1, T_q, T_k); got "
                         f"{fmt_shape(mask.shape)}")
    kinds = [_classify_one(m, f"sequence {b} of the batch ") for b, m in enumerate(mask)]
    if kinds[0] == "cross":  # a (B, T_q, T_k) batch with T_q != T_k: every sequence was checked to be cross
        return "cross"
    # A causal mask is a prefix-LM mask with prefix 1, a bidirectional one a prefix-LM mask whose
    # prefix is the whole sequence, and a sequence with one real token fits every kind: name the
    # plainest kind that fits every sequence.
    single = [int(m.any(dim=0).sum()) == 1 for m in mask]
    for kind in ("bidirectional", "causal"):
        if all(k == kind or one for k, one in zip(kinds, single)):
            return kind
    return "prefix-lm"
