"""Chapter 07's generation: a TinyDecoder run token by token, with or without the KV cache.

    logits = cached_forward(model, ids, cache)          the new tokens' logits (B, T, V), the cache extended
    ids = generate(model, prompt_ids, max_new_tokens)   greedy (temperature=0) or sampled continuation

cached_forward's logits equal model(all ids so far)[:, -T:]; generate with and without the cache
gives the same tokens (tests/test_complexity.py).
"""

from __future__ import annotations

import torch

from ..shapes import ShapeError, fmt_shape, require_positive_int, require_tensor
from ..threads import fastest_threads
from .decoder import DecoderBlock, TinyDecoder, decoder_forward
from .kv_cache import KVCache, LayerCache

__all__ = ["cached_forward", "generate"]


def _position_rows(model: TinyDecoder, T: int, offset: int) -> torch.Tensor | None:
    """The absolute position rows added to tokens offset .. offset + T - 1, or None."""
    config = model.config
    if offset + T > config.max_seq_len and model.pos_emb is not None:
        raise ValueError(f"cached_forward: positions='learned' has a table of max_seq_len = {config.max_seq_len} "
                         f"rows, so the model cannot process position {offset + T - 1} (the cache holds {offset} "
                         f"tokens and {T} more were given); generate at most max_seq_len tokens in all, or use "
                         f"a position method without a table")
    rows = getattr(model, "position_rows", None)  # chapter 06's methods (sinusoidal, learned at an offset)
    if rows is not None:
        return rows(T, offset)  # (T, d_model) or None
    if model.pos_emb is not None:
        return model.pos_emb.weight[offset:offset + T]  # (T, d_model): rows of positions offset .. offset + T - 1
    return None


def cached_forward(model: TinyDecoder, ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """ids (B, T) of the tokens at positions len(cache) .. len(cache) + T - 1 -> logits (B, T, V).

    Each layer appends the new tokens' keys and values to its LayerCache and attends over all of
    them with the bottom-right causal mask, so the logits equal model(all ids so far)[:, -T:].
    """
    fn = "cached_forward"
    if not isinstance(model, TinyDecoder):
        raise TypeError(f"{fn}: model must be a TinyDecoder; got {type(model).__name__}")
    if not isinstance(cache, KVCache) or len(cache.layers) != model.config.n_layers:
        raise TypeError(f"{fn}: cache must be a KVCache({model.config.n_layers}) for this model's "
                        f"{model.config.n_layers} layers; got {cache!r}")
    if not model.config.causal:
        raise ValueError(f"{fn}: a KV cache serves a causal decoder (config.causal=True): with causal=False "
                         f"every earlier token would have to see the new ones, and their cached keys go stale")
    require_tensor(fn, "ids", ids)
    if ids.dim() != 2 or ids.shape[1] < 1:
        raise ShapeError(f"{fn}: ids must be (B, T) with T >= 1; got {fmt_shape(ids.shape)}")
    offset, T = len(cache), ids.shape[1]
    wpe = _position_rows(model, T, offset)  # (T, d_model) or None
    if model.config.kernels == "fused":  # chapter 08: the fast path, same numbers
        logits = model.fused_forward(ids, offset, cache)  # (B, T, V)
        cache.tokens += T
        return logits
    extra = {}
    position_bias = getattr(model, "position_bias", None)  # chapter 06: ALiBi / T5 biases, RoPE offset
    if position_bias is not None:
        q_pos = torch.arange(offset, offset + T, device=ids.device)  # (T,)
        k_pos = torch.arange(0, offset + T, device=ids.device)  # (cached + T,)
        extra = {"bias": position_bias(q_pos, k_pos), "offset": offset}  # bias (H, T, cached + T) or None

    def run(block: DecoderBlock, layer: LayerCache):
        return lambda h: block(h, cache=layer, **extra)  # (B, T, d_model) -> (B, T, d_model)

    blocks = [run(b, layer) for b, layer in zip(model.blocks, cache.layers)]
    lm_head = None if model.lm_head.weight is model.tok_emb.weight else model.lm_head.weight
    logits = decoder_forward(ids, model.tok_emb.weight, wpe, blocks, model.final_norm, lm_head)  # (B, T, V)
    cache.tokens += T
    return logits


def _next_token(logits: torch.Tensor, temperature: float, top_k: int | None,
                generator: torch.Generator | None) -> torch.Tensor:
    """logits (B, V) -> ids (B, 1): argmax for temperature 0, else a sample of softmax(logits / t) over the top k."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)  # (B, 1)
    logits = logits / temperature  # (B, V)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1): the k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))  # (B, V)
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator)  # (B, 1)


def generate(model: TinyDecoder, prompt_ids: torch.Tensor, max_new_tokens: int, use_cache: bool = True, *,
             temperature: float = 1.0, top_k: int | None = None,
             generator: torch.Generator | None = None, threads: int | None = None) -> torch.Tensor:
    """prompt_ids (B, T_prompt) -> (B, T_prompt + max_new_tokens): the prompt and the new tokens.

    temperature 0 picks the most likely token (greedy); otherwise tokens are drawn from
    softmax(logits / temperature), restricted to the top_k most likely when top_k is given, with
    `generator` (seed it for repeatable samples). use_cache=True runs the prompt once (prefill) and
    then one token per step against the KV cache; use_cache=False recomputes the whole sequence
    every step. Both give the same tokens.

    threads: torch's CPU thread count while generating; None measures which is faster here and now
    (helpers.threads.choose_threads on one prefill and decoding step, or one recomputation at the
    average length); the learner's own setting is restored afterwards, also after an error.
    """
    fn = "generate"
    if not isinstance(model, TinyDecoder):
        raise TypeError(f"{fn}: model must be a TinyDecoder; got {type(model).__name__}")
    require_tensor(fn, "prompt_ids", prompt_ids)
    if prompt_ids.dim() != 2 or prompt_ids.shape[1] < 1 or prompt_ids.is_floating_point():
        raise ShapeError(f"{fn}: prompt_ids must be integer ids of shape (B, T_prompt) with T_prompt >= 1; got "
                         f"{fmt_shape(prompt_ids.shape)} of dtype {prompt_ids.dtype}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"{fn}: max_new_tokens must be an int >= 0; got {max_new_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature < 0:
        raise ValueError(f"{fn}: temperature must be a number >= 0 (0 = greedy); got {temperature!r}")
    if top_k is not None:
        require_positive_int(fn, "top_k", top_k)
    total = prompt_ids.shape[1] + max_new_tokens
    if model.pos_emb is not None and total > model.config.max_seq_len:
        raise ValueError(f"{fn}: positions='learned' has max_seq_len = {model.config.max_seq_len} rows, but the "
                         f"prompt ({prompt_ids.shape[1]} tokens) plus max_new_tokens = {max_new_tokens} needs "
                         f"{total} positions")
    was_training = model.training
    model.eval()
    ids = prompt_ids
    device = model.tok_emb.weight.device

    def probe() -> None:  # one step of the work ahead, on throwaway ids and a throwaway cache
        if use_cache:
            cache = KVCache(model.config.n_layers)
            cached_forward(model, prompt_ids, cache)  # prefill
            cached_forward(model, prompt_ids[:, -1:], cache)  # one decoding step
        else:
            model(torch.zeros(prompt_ids.shape[0], (prompt_ids.shape[1] + total) // 2, dtype=torch.long,
                              device=prompt_ids.device))  # a recomputation at the average length

    try:
        # inference_mode, not only no_grad: no autograd bookkeeping at all (version counters, views), which
        # is a tenth of a decoding step's time for a small model; the ids are cloned out of it below.
        with torch.inference_mode(), fastest_threads(None if device.type != "cpu" or max_new_tokens < 2 else probe,
                                                     threads):
            cache = KVCache(model.config.n_layers) if use_cache else None
            step_input = prompt_ids  # (B, T_prompt): the prefill
            for _ in range(max_new_tokens):
                if use_cache:
                    logits = cached_forward(model, step_input, cache)[:, -1]  # (B, V)
                else:
                    logits = model(ids)[:, -1]  # (B, V): the whole sequence again
                step_input = _next_token(logits, temperature, top_k, generator)  # (B, 1)
                ids = torch.cat([ids, step_input], dim=1)  # (B, T + 1)
    finally:
        model.train(was_training)
    return ids.clone()  # (B, T_prompt + max_new_tokens): a normal tensor, usable with autograd later

