"""Chapter 08's yardsticks: count n-gram baselines, scoring a model on a whole split, the showcase run.

    ngram = NGramModel(train_ids, order=3, vocab_size=V)     # interpolated Witten-Bell trigram
    ngram.loss(val_ids)                                     # nats per token on the whole split
    ngram.distribution(context_ids)                         # p(. | context), (V,), sums to 1
    split_loss(model, val_ids, block_size=64)               # the transformer on the same targets

**Count models.** An order-n model predicts a token from the n - 1 tokens before it, with
probabilities counted on the training split. Raw relative frequencies give probability 0 to every
continuation the training text never showed, and one such token in the validation text makes the
loss infinite, so the counts are *smoothed*. Interpolated Witten-Bell smoothing (Witten & Bell
1991; the form in Chen & Goodman 1998, "An empirical study of smoothing techniques for language
modeling", eq. 9) mixes each order with the next lower one, recursively down to the uniform 1/V:

    p_k(w | h) = (c(h w) + T(h) p_{k-1}(w | h')) / (c(h) + T(h))     when c(h) > 0,
    p_k(w | h) = p_{k-1}(w | h')                                     when the context h was never seen,

where h is the last k tokens, h' its last k - 1, c(h w) how often h was followed by w in training,
c(h) how often h was followed by anything, T(h) how many *distinct* tokens followed h, and p_{-1}
the uniform 1/V. T(h) / (c(h) + T(h)) is the estimated chance that h is followed by something new:
a context seen with many different continuations leans on the lower order more. Every p_k(. | h)
sums to 1 over the vocabulary and is positive, so no validation token gets probability 0.

**Scoring on the same targets.** `NGramModel.loss` and `split_loss` both score every token of the
split after the first (targets at positions 1 .. N - 1), each from the tokens before it:
the count model from up to n - 1 of them, the transformer from up to block_size of them, through
overlapping windows (`stride` new targets per window, so every target but those of the first
window reads at least block_size - stride tokens of context).

**The run** (`showcase_run`): the configuration chapter 08 trains, scored on the whole validation
split against the unigram to 4-gram count models.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from .blocks import ModelConfig, TinyDecoder
from .corpus import load_corpus
from .shapes import ShapeError, fmt_shape, require_positive_int
from .tokenizers import course_chars
from .training import train

__all__ = [
    "NGramModel",
    "RUN_CONFIG",
    "RUN_TRAINING",
    "ngram_losses",
    "showcase_run",
    "split_loss",
]


def _require_ids(fn: str, name: str, ids: object, vocab_size: int) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.is_complex() \
            or ids.dtype == torch.bool or ids.dim() != 1:
        got = f"{fmt_shape(ids.shape)} of dtype {ids.dtype}" if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise ShapeError(f"{fn}: {name} must be a 1-D integer tensor (N,); got {got}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise ValueError(f"{fn}: {name} must hold ids in 0..vocab_size-1 = 0..{vocab_size - 1}; got ids from "
                         f"{int(ids.min())} to {int(ids.max())}")
    return ids.detach().cpu().long()


def _lookup(keys: torch.Tensor, counts: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """counts[i] where keys[i] == query (keys sorted and unique), 0 where the query is absent."""
    if keys.numel() == 0:
        return torch.zeros(query.shape, dtype=torch.float64)
    idx = torch.searchsorted(keys, query).clamp_max(keys.numel() - 1)  # (M,)
    return torch.where(keys[idx] == query, counts[idx], torch.zeros((), dtype=torch.float64))  # (M,)


class NGramModel:
    """An interpolated Witten-Bell n-gram model over ids 0..vocab_size-1, counted on train_ids (N,).

    order 1 is the unigram (no context), 2 the bigram, 3 the trigram, 4 the 4-gram. Building one
    counts every (context, next token) pair of each order up to `order` once (sort and unique:
    a fraction of a second for a few hundred thousand tokens).
    """

    def __init__(self, train_ids: torch.Tensor, order: int, vocab_size: int) -> None:
        fn = "NGramModel"
        require_positive_int(fn, "order", order)
        require_positive_int(fn, "vocab_size", vocab_size)
        if vocab_size ** order >= 2 ** 62:
            raise ValueError(f"{fn}: vocab_size ** order = {vocab_size}^{order} is too large to encode a context "
                             "in one int64")
        ids = _require_ids(fn, "train_ids", train_ids, vocab_size)
        if ids.numel() < order:
            raise ShapeError(f"{fn}: train_ids has {ids.numel()} tokens, fewer than order = {order}")
        self.order, self.vocab_size = order, vocab_size
        V = vocab_size
        # Per context length k = 0 .. order - 1: sorted unique keys and counts of
        # (context, next) pairs, of contexts, and the number of distinct next tokens per context.
        self._pairs, self._contexts = [], []
        for k in range(order):
            h = torch.zeros(ids.numel() - k, dtype=torch.long)  # (N - k,): context code of each position t >= k
            for j in range(k):
                h = h * V + ids[j:ids.numel() - k + j]
            w = ids[k:]  # (N - k,): the token after each context
            pair_keys, pair_counts = torch.unique(h * V + w, return_counts=True)  # sorted
            ctx_keys, ctx_counts = torch.unique(h, return_counts=True)
            ctx_of_pair = pair_keys // V  # (P,): sorted, one entry per distinct (h, w)
            distinct_keys, distinct = torch.unique_consecutive(ctx_of_pair, return_counts=True)
            assert torch.equal(distinct_keys, ctx_keys)
            self._pairs.append((pair_keys, pair_counts.double()))
            self._contexts.append((ctx_keys, ctx_counts.double(), distinct.double()))

    def _prob(self, contexts: list[torch.Tensor | None], w: torch.Tensor) -> torch.Tensor:
        """p(w | context) for M queries: contexts[k] the (M,) codes of the last k tokens (None where
        the query has fewer than k tokens of context: it keeps the lower order's estimate)."""
        V = self.vocab_size
        p = torch.full(w.shape, 1.0 / V, dtype=torch.float64)  # (M,): the uniform floor
        for k in range(self.order):
            h = contexts[k]
            if h is None:
                continue
            pair_keys, pair_counts = self._pairs[k]
            ctx_keys, ctx_counts, distinct = self._contexts[k]
            c_hw = _lookup(pair_keys, pair_counts, h * V + w)  # (M,)
            c_h = _lookup(ctx_keys, ctx_counts, h)  # (M,)
            t_h = _lookup(ctx_keys, distinct, h)  # (M,)
            mixed = (c_hw + t_h * p) / (c_h + t_h).clamp_min(1.0)  # (M,): guarded where c_h = 0
            p = torch.where(c_h > 0, mixed, p)  # an unseen context keeps the lower order
        return p

    def distribution(self, context: torch.Tensor | list[int]) -> torch.Tensor:
        """p(. | context) over the whole vocabulary, (V,) float64: the model's prediction after the
        given ids (only the last order - 1 of them are read; fewer use the lower orders)."""
        ctx = torch.as_tensor(context, dtype=torch.long).reshape(-1)
        ctx = _require_ids("NGramModel.distribution", "context", ctx, self.vocab_size)
        ctx = ctx[max(0, ctx.numel() - (self.order - 1)):] if self.order > 1 else ctx[:0]
        V = self.vocab_size
        w = torch.arange(V)  # (V,)
        codes: list[torch.Tensor | None] = []
        for k in range(self.order):
            if k > ctx.numel():
                codes.append(None)
                continue
            code = 0
            for token in ctx[ctx.numel() - k:].tolist():
                code = code * V + token
            codes.append(torch.full((V,), code, dtype=torch.long))
        return self._prob(codes, w)

    def token_log_probs(self, ids: torch.Tensor) -> torch.Tensor:
        """log p(ids[t] | the up to order - 1 ids before it) for t = 1 .. N - 1; (N - 1,) float64."""
        ids = _require_ids("NGramModel.token_log_probs", "ids", ids, self.vocab_size)
        N, V = ids.numel(), self.vocab_size
        if N < 2:
            raise ShapeError(f"NGramModel.token_log_probs: ids must hold at least 2 tokens; got {N}")
        t = torch.arange(1, N)  # (N - 1,): target positions
        w = ids[1:]  # (N - 1,)
        codes: list[torch.Tensor | None] = []
        for k in range(self.order):
            code = torch.zeros(N - 1, dtype=torch.long)  # (N - 1,)
            for j in range(k, 0, -1):  # the tokens at t - k .. t - 1, oldest first
                code = code * V + ids[(t - j).clamp_min(0)]
            # positions with fewer than k tokens before them keep the lower order: mark with -1
            codes.append(torch.where(t >= k, code, torch.full_like(code, -1)))
        return self._prob(codes, w).log()

    def loss(self, ids: torch.Tensor) -> float:
        """Mean -log p over the targets at positions 1 .. N - 1 of ids (N,), in nats per token."""
        return float(-self.token_log_probs(ids).mean())


def ngram_losses(train_ids: torch.Tensor, val_ids: torch.Tensor, vocab_size: int,
                 orders: tuple[int, ...] = (1, 2, 3, 4)) -> dict[str, float]:
    """Validation losses (nats per token, targets 1 .. N - 1 of val_ids) of interpolated Witten-Bell
    count models fit on train_ids: {"unigram": ..., "bigram": ..., "trigram": ..., "4-gram": ...}."""
    names = {1: "unigram", 2: "bigram", 3: "trigram"}
    return {names.get(n, f"{n}-gram"): NGramModel(train_ids, n, vocab_size).loss(val_ids) for n in orders}


@torch.no_grad()
def split_loss(model: nn.Module, ids: torch.Tensor, *, block_size: int, stride: int | None = None,
               batch_size: int = 64) -> float:
    """A language model's mean loss on a whole split: every target at positions 1 .. N - 1 of ids (N,)
    scored once, in nats per token, the targets the count models score.

    Windows of block_size tokens start every `stride` tokens (default block_size // 2); a window scores
    only the targets no earlier window scored, so each target after the first window is predicted from
    at least block_size - stride tokens of context. The last window ends at the split's last token.
    Cost: about N / stride forward passes of block_size tokens (twice the split, by default).
    """
    fn = "split_loss"
    require_positive_int(fn, "block_size", block_size)
    stride = block_size // 2 if stride is None else stride
    require_positive_int(fn, "stride", stride)
    if stride > block_size:
        raise ValueError(f"{fn}: stride must be at most block_size = {block_size}; got {stride}")
    if not isinstance(ids, torch.Tensor) or ids.dim() != 1 or ids.is_floating_point():
        raise ShapeError(f"{fn}: ids must be a 1-D integer tensor (N,); got "
                         f"{fmt_shape(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__}")
    N = ids.numel()
    if N < block_size + 1:
        raise ShapeError(f"{fn}: ids has {N} tokens, too few for one window of block_size + 1 = {block_size + 1}")
    device = next(model.parameters()).device
    starts = list(range(0, N - 1 - block_size, stride)) + [N - 1 - block_size]
    first_new = []  # per window: the first target position (1-based in ids) it scores
    done = 0  # targets at positions 1 .. done are scored
    for s in starts:
        first_new.append(max(done + 1, s + 1))
        done = s + block_size
    assert done == N - 1
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    offsets = torch.arange(block_size)  # (T,)
    for b in range(0, len(starts), batch_size):
        s = torch.tensor(starts[b:b + batch_size])  # (B,)
        idx = s[:, None] + offsets  # (B, T)
        x, y = ids[idx].to(device), ids[idx + 1].to(device)  # (B, T), (B, T): y at positions idx + 1
        logits = model(x).double()  # (B, T, V)
        nll = torch.logsumexp(logits, -1) - logits.gather(-1, y[..., None])[..., 0]  # (B, T)
        keep = (idx + 1 >= torch.tensor(first_new[b:b + batch_size])[:, None]).to(device)  # (B, T)
        total += float((nll * keep).sum())
        count += int(keep.sum())
    model.train(was_training)
    assert count == N - 1, (count, N)
    return total / count


# ---------------------------------------------------------------------------------------------
# The showcase run
# ---------------------------------------------------------------------------------------------

# The model chapter 08 trains: the shared TinyDecoder (Pre-LN, GELU, tied weights) with RoPE, on the
# fast path; vocab_size is the corpus' (course_chars: 94 characters).
RUN_CONFIG = dict(d_model=64, n_heads=4, n_layers=2, max_seq_len=64, positions="rope", kernels="fused")
# How it trains: 1,000 AdamW updates of 16 windows of 64 characters (about a million characters,
# each of the training split's seen about three times), warm-up 50, cosine decay to lr / 10.
RUN_TRAINING = dict(steps=1000, batch_size=16, block_size=64, lr=1e-2, warmup=50, min_lr=1e-3)


def showcase_run(seed: int = 0, steps: int | None = None, *, device: torch.device | str | None = None,
                 progress: bool = False, threads: int | None = None) -> dict:
    """Chapter 08's run: RUN_CONFIG trained with RUN_TRAINING on the course corpus, scored on the whole
    validation split (`split_loss`) beside count models fit on the training split (`ngram_losses`).

    Shows that a 2-layer, 105-thousand-parameter transformer with RoPE, trained for about 20 CPU
    seconds, beats the trigram and the 4-gram on the same validation targets: the model uses more
    context than three characters. seed: the model's initialization and the batch order (the count
    models are deterministic); steps: None for RUN_TRAINING's 1,000 (fewer for a shorter run, the
    warm-up scaled with it).

    Returns {"val_loss": the model on the whole split, "unigram", "bigram", "trigram", "4-gram",
    "train_seconds": CPU (process) seconds of the training loop, "model": the trained TinyDecoder,
    "history": its TrainHistory}. Cost: about 20 CPU-seconds at one thread (1,000 steps), 0.5 s
    for the count models, under a second for the whole-split evaluation.
    """

    tok = course_chars()
    train_ids = torch.tensor(tok.encode(load_corpus("train")))  # (N_train,)
    val_ids = torch.tensor(tok.encode(load_corpus("val")))  # (N_val,)
    result: dict = ngram_losses(train_ids, val_ids, tok.vocab_size)
    settings = dict(RUN_TRAINING)
    if steps is not None:
        require_positive_int("showcase_run", "steps", steps)
        settings["warmup"] = max(1, settings["warmup"] * steps // settings["steps"])
        settings["steps"] = steps
    torch.manual_seed(seed)
    model = TinyDecoder(ModelConfig(vocab_size=tok.vocab_size, **RUN_CONFIG))
    start = time.process_time()
    history = train(model, train_ids, val_ids, **settings, eval_every=max(1, settings["steps"] // 10),
                    eval_batches=4, seed=seed, progress=progress, device=device, threads=threads)
    result["train_seconds"] = time.process_time() - start
    result["val_loss"] = split_loss(model, val_ids.to(next(model.parameters()).device),
                                    block_size=settings["block_size"])
    result["model"], result["history"] = model, history
    return result
