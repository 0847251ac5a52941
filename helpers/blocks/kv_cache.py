"""Chapter 07's KV cache: each layer's keys and values of the tokens seen so far.

    cache = KVCache(config.n_layers)        one LayerCache per layer, (B, H_kv, T_cached, d_head) k and v
    cached_causal_mask(T_q, T_k)            the bottom-right aligned causal mask of T_q new tokens

Attention.forward and fused_forward (helpers.blocks.decoder) append to a LayerCache;
helpers.blocks.generation runs a model over the cache (cached_forward, generate).
"""

from __future__ import annotations

import torch

from ..shapes import ShapeError, fmt_shape, require_float, require_positive_int

__all__ = ["KVCache", "LayerCache", "cached_causal_mask"]



def cached_causal_mask(T_q: int, T_k: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """(T_q, T_k) bool causal mask for the T_q newest tokens of a T_k-token sequence (T_q <= T_k).

    Bottom-right aligned: query i is token T_k - T_q + i, so it may attend to keys 0 .. T_k - T_q + i.
    torch's is_causal=True aligns top-left instead (query i sees keys 0 .. i), which is the same
    only when T_q = T_k; after a cache (T_q < T_k) top-left would hide the newest keys.
    """
    fn = "cached_causal_mask"
    require_positive_int(fn, "T_q", T_q)
    require_positive_int(fn, "T_k", T_k)
    if T_q > T_k:
        raise ShapeError(f"{fn}: the T_q = {T_q} new tokens are part of the T_k = {T_k} keys, so T_q <= T_k")
    return torch.ones(T_q, T_k, dtype=torch.bool, device=device).tril(diagonal=T_k - T_q)  # (T_q, T_k)


class LayerCache:
    """One layer's keys and values of the tokens seen so far, (B, H_kv, T_cached, d_head) each."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    @property
    def length(self) -> int:
        """Tokens cached so far: the position of the next token."""
        return 0 if self.k is None else self.k.shape[2]

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new tokens' k, v (B, H_kv, T_new, d_head); return all (B, H_kv, T_cached + T_new, d_head)."""
        fn = "LayerCache.update"
        require_float(fn, "k", k, "(B, H_kv, T_new, d_head)")
        require_float(fn, "v", v, "(B, H_kv, T_new, d_head)")
        if k.shape != v.shape:
            raise ShapeError(f"{fn}: k {fmt_shape(k.shape)} and v {fmt_shape(v.shape)} must have the same shape")
        if self.k is not None and (k.shape[:2] != self.k.shape[:2] or k.shape[3] != self.k.shape[3]):
            raise ShapeError(f"{fn}: the cache holds (B, H_kv, T, d_head) = {fmt_shape(self.k.shape)}; the new k "
                             f"{fmt_shape(k.shape)} must match it in B, H_kv and d_head")
        if self.k is None:
            self.k, self.v = k.detach(), v.detach()
        else:
            self.k = torch.cat([self.k, k.detach()], dim=2)  # (B, H_kv, T_cached + T_new, d_head)
            self.v = torch.cat([self.v, v.detach()], dim=2)  # (B, H_kv, T_cached + T_new, d_head)
        return self.k, self.v

    @property
    def nbytes(self) -> int:
        return 0 if self.k is None else self.k.nbytes + self.v.nbytes


class KVCache:
    """A decoder's KV cache: one LayerCache per layer.

        cache = KVCache(model.config.n_layers)
        logits = cached_forward(model, prompt_ids, cache)      # prefill: every prompt token at once
        logits = cached_forward(model, next_id[:, None], cache)  # decode: one token, T_k = cached + 1
    """

    def __init__(self, n_layers: int) -> None:
        if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 0:
            raise ValueError(f"KVCache: n_layers must be an int >= 0; got {n_layers!r}")
        self.layers = [LayerCache() for _ in range(n_layers)]
        self.tokens = 0  # tokens processed (also the count for a model with no layers)

    def __len__(self) -> int:
        return self.tokens

    def __getitem__(self, layer: int) -> LayerCache:
        return self.layers[layer]

    @property
    def nbytes(self) -> int:
        """Bytes held: 2 x n_layers x B x H_kv x tokens x d_head x bytes per element."""
        return sum(layer.nbytes for layer in self.layers)


