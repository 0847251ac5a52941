"""Chapter 04, section 6: gradients of a deep Pre-LN or Post-LN stack at initialization.

The set-up of Xiong et al. (2020, "On Layer Normalization in the Transformer Architecture"):

    every weight matrix  Xavier (Glorot) normal, one matrix at a time   N(0, 2 / (fan_in + fan_out))
    every bias           zero;  every LayerNorm gamma = 1, beta = 0
    the stack            L blocks, each pre_ln_block or post_ln_block (helpers.norms) with the
                         sublayers of an nn.TransformerEncoderLayer (ReLU MLP, dropout 0)
    Pre-LN only          one final LayerNorm after the last block
    readout              a Xavier linear layer to `vocab` logits, cross-entropy against random labels

What is measured per layer l = 1..L (after one backward pass, nothing trained):

    w2        ||dLoss/dW2_l||_F   the FFN's second matrix (the paper's Theorem 1 is about this one)
    non_norm  the L2 norm of the gradient of all the block's parameters except its two LayerNorms'
    stream    the mean token L2 norm of the residual stream before the first block and after each
    stream_sq the mean squared token L2 norm there (Lemma 2 of the paper bounds its expectation)

Theorem 1 of the paper: at initialization the last layer's ||dLoss/dW2|| is O(d sqrt(ln d)) for
Post-LN, independent of L, and O(d sqrt(ln d / L)) for Pre-LN. `loglog_slope` fits the exponent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ModelConfig, TinyDecoder
from .corpus import markov_chain
from .norms import LayerNorm, post_ln_block, pre_ln_block
from .shapes import require_positive_int
from .threads import torch_threads
from .training import train

__all__ = ["StackGradients", "WARMUP_RUNS", "direct_path_logits", "encoder_layer_sublayers", "loglog_slope",
           "stack_gradients", "table_loss", "warmup_experiment", "warmup_runs", "xavier_encoder_layer"]

ORDERS = ("pre", "post")


def _require_order(fn: str, order: object) -> str:
    if order not in ORDERS:
        raise ValueError(f"{fn}: order must be 'pre' or 'post'; got {order!r}")
    return order  # type: ignore[return-value]


def xavier_encoder_layer(d_model: int, n_heads: int, d_ff: int, order: str,
                         dtype: torch.dtype = torch.float64) -> nn.TransformerEncoderLayer:
    """An nn.TransformerEncoderLayer (ReLU, dropout 0) re-initialized as in Xiong et al.:
    each weight matrix Xavier-normal on its own (W_Q, W_K, W_V separately, not the stacked
    (3 d_model, d_model) in_proj), every bias zero, every LayerNorm gamma = 1 and beta = 0.
    Draws from torch's global generator (seed it first)."""
    fn = "xavier_encoder_layer"
    for name, value in (("d_model", d_model), ("n_heads", n_heads), ("d_ff", d_ff)):
        require_positive_int(fn, name, value)
    _require_order(fn, order)
    layer = nn.TransformerEncoderLayer(d_model, n_heads, d_ff, dropout=0.0, activation="relu", batch_first=True,
                                       norm_first=order == "pre", dtype=dtype)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.startswith("norm"):
                nn.init.ones_(p) if name.endswith("weight") else nn.init.zeros_(p)
            elif p.dim() == 1:
                nn.init.zeros_(p)
            elif name == "self_attn.in_proj_weight":
                for part in p.split(d_model):  # W_Q, W_K, W_V: (d_model, d_model) each
                    nn.init.xavier_normal_(part)
            else:
                nn.init.xavier_normal_(p)
    return layer


def encoder_layer_sublayers(layer: nn.TransformerEncoderLayer):
    """(attn, ffn, norm1, norm2) of an nn.TransformerEncoderLayer as callables (B, T, d) -> (B, T, d)."""
    attn = lambda h: layer.self_attn(h, h, h, need_weights=False)[0]  # noqa: E731
    ffn = lambda h: layer.linear2(layer.activation(layer.linear1(h)))  # noqa: E731
    return attn, ffn, layer.norm1, layer.norm2


@dataclass
class StackGradients:
    """One backward pass through a fresh stack. Tensors are float64 on the CPU."""

    w2: torch.Tensor  # (L,)  ||dLoss/dW2_l||_F per layer
    non_norm: torch.Tensor  # (L,)  gradient norm of each block's non-norm parameters
    stream: torch.Tensor  # (L + 1,)  mean token L2 norm of the residual stream, input first
    stream_sq: torch.Tensor  # (L + 1,)  mean squared token L2 norm of the residual stream, input first
    loss: float  # the cross-entropy at initialization


def stack_gradients(n_layers: int, order: str, *, seed: int, d_model: int = 32, n_heads: int = 4, d_ff: int = 128,
                    T: int = 16, B: int = 8, vocab: int = 64, final_norm: bool | None = None) -> StackGradients:
    """Build an L-layer stack as in Xiong et al. from `seed`, run one batch, backpropagate a
    cross-entropy readout, and return the per-layer gradient norms (float64 throughout).

    final_norm: Pre-LN's LayerNorm after the last block; defaults to True for "pre" and False for
    "post" (a Post-LN block already ends with a norm). final_norm=False with "pre" is the mistake
    of reading a Pre-LN stack without its final norm.
    """
    fn = "stack_gradients"
    for name, value in (("n_layers", n_layers), ("T", T), ("B", B), ("vocab", vocab)):
        require_positive_int(fn, name, value)
    _require_order(fn, order)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"{fn}: seed must be an int; got {type(seed).__name__}")
    final_norm = (order == "pre") if final_norm is None else bool(final_norm)
    with torch_threads(1):  # these matrices are tiny: a second thread only adds overhead (10x on a busy 2-core CPU)
        return _stack_gradients(n_layers, order, seed, d_model, n_heads, d_ff, T, B, vocab, final_norm)


def _stack_gradients(n_layers: int, order: str, seed: int, d_model: int, n_heads: int, d_ff: int, T: int, B: int,
                     vocab: int, final_norm: bool) -> StackGradients:
    dtype = torch.float64
    with torch.random.fork_rng(devices=[]):  # leave the caller's global generator alone
        torch.manual_seed(seed)
        layers = [xavier_encoder_layer(d_model, n_heads, d_ff, order, dtype) for _ in range(n_layers)]
        readout = nn.Linear(d_model, vocab, dtype=dtype)
        with torch.no_grad():
            nn.init.xavier_normal_(readout.weight)
            nn.init.zeros_(readout.bias)
    data = torch.Generator().manual_seed(10_000 + seed)
    x = torch.randn(B, T, d_model, generator=data, dtype=dtype)  # (B, T, d_model): RMS 1 per token
    labels = torch.randint(vocab, (B, T), generator=data)  # (B, T)
    block = pre_ln_block if order == "pre" else post_ln_block
    h, stream, stream_sq = x, [x.detach().norm(dim=-1).mean()], [x.detach().pow(2).sum(-1).mean()]
    for layer in layers:
        h = block(h, *encoder_layer_sublayers(layer))  # (B, T, d_model)
        stream.append(h.detach().norm(dim=-1).mean())
        stream_sq.append(h.detach().pow(2).sum(-1).mean())
    if final_norm:
        h = LayerNorm(d_model).to(dtype)(h)  # (B, T, d_model)
    logits = readout(h)  # (B, T, vocab)
    loss = F.cross_entropy(logits.reshape(B * T, vocab), labels.reshape(B * T))
    loss.backward()
    w2 = torch.stack([layer.linear2.weight.grad.norm() for layer in layers])  # (L,)
    non_norm = torch.stack([
        torch.cat([p.grad.flatten() for name, p in layer.named_parameters() if not name.startswith("norm")]).norm()
        for layer in layers
    ])  # (L,)
    return StackGradients(w2=w2.detach(), non_norm=non_norm.detach(), stream=torch.stack(stream),
                          stream_sq=torch.stack(stream_sq), loss=loss.item())


def loglog_slope(xs, ys) -> float:
    """Least-squares slope of log(y) against log(x): the exponent a of y ~ c * x**a."""
    xs, ys = [float(v) for v in xs], [float(v) for v in ys]
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError(f"loglog_slope: need two equally long sequences of at least 2 points; got {len(xs)} and {len(ys)}")
    if min(xs) <= 0 or min(ys) <= 0:
        raise ValueError("loglog_slope: every x and y must be positive (they are logged)")
    lx, ly = [math.log(v) for v in xs], [math.log(v) for v in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    sxx = sum((a - mx) ** 2 for a in lx)
    if sxx == 0:
        raise ValueError("loglog_slope: the x values must not all be equal")
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sxx


# ------------------------------------------------------------------------------------------------
# The residual stream's direct path: embedding -> (final norm) -> unembedding, skipping every block
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def direct_path_logits(model: nn.Module) -> torch.Tensor:
    """The logits a TinyDecoder would give if every block added nothing: row a is
    lm_head(final_norm(W_E[a])), a (V, V) table indexed [current token, next token].

    Position embeddings are left out (they are a separate input to the stream); with
    positions="none" and n_layers=0 this is exactly the model's own next-token logits.
    """
    fn = "direct_path_logits"
    for name in ("tok_emb", "lm_head"):
        if not hasattr(model, name):
            raise TypeError(f"{fn}: model must be a TinyDecoder (with tok_emb and lm_head); got {type(model).__name__}")
    h = model.tok_emb.weight  # (V, d_model): one stream state per current token
    if getattr(model, "final_norm", None) is not None:
        h = model.final_norm(h)  # (V, d_model)
    return model.lm_head(h)  # (V, V)


def table_loss(log_probs: torch.Tensor, ids: torch.Tensor) -> float:
    """Mean -log p(ids[t+1] | ids[t]) under a (V, V) table of log-probabilities [current, next]."""
    fn = "table_loss"
    if log_probs.dim() != 2 or log_probs.shape[0] != log_probs.shape[1]:
        raise ValueError(f"{fn}: log_probs must be (V, V); got {tuple(log_probs.shape)}")
    if ids.dim() != 1 or ids.numel() < 2:
        raise ValueError(f"{fn}: ids must be a 1-D tensor of at least 2 token ids; got shape {tuple(ids.shape)}")
    ids = ids.to(log_probs.device)
    return float(-log_probs[ids[:-1], ids[1:]].mean())


# ---------------------------------------------------------------------------------------------
# Warm-up measured: Post-LN and Pre-LN trained with and without a learning-rate warm-up
# ---------------------------------------------------------------------------------------------

WARMUP_RUNS = (("post", True), ("post", False), ("pre", True), ("pre", False))


def _run_name(order: str, warm: bool) -> str:
    return f"{order}_{'warmup' if warm else 'no_warmup'}"


def warmup_runs(seed: int = 0, *, n_layers: int = 12, d_model: int = 32, n_heads: int = 4, steps: int = 100,
                warmup: int = 70, lr: float = 2e-2, batch_size: int = 16, block_size: int = 32,
                n_states: int = 26, sharpness: float = 3.0, betas: tuple[float, float] = (0.9, 0.999),
                runs=WARMUP_RUNS) -> dict:
    """Train four deep TinyDecoders (Post-LN and Pre-LN, each with and without warm-up) on the course's
    Markov language (helpers.corpus.markov_chain); {name: TrainHistory} plus "entropy_rate" and
    "uniform" (ln n_states), the floor and the loss of a model that has learned nothing.

    Names: "post_warmup", "post_no_warmup", "pre_warmup", "pre_no_warmup". Every run starts from
    the same seed (the same initial weights for each norm placement, the same batches), uses the
    course's loop (helpers.training.train: AdamW, gradient clipping at 1, cosine decay to lr / 10)
    on one thread, and differs only in `warmup` (linear warm-up steps, or 0). betas default to
    Adam's (0.9, 0.999); the course's loop defaults to 0.95. runs: which (order, warm-up) pairs to
    train, a subset of WARMUP_RUNS (all four by default).
    """

    fn = "warmup_runs"
    for name, value in (("n_layers", n_layers), ("steps", steps), ("warmup", warmup)):
        require_positive_int(fn, name, value)
    if warmup >= steps:
        raise ValueError(f"{fn}: warmup must be below steps = {steps}; got {warmup}")
    runs = tuple(tuple(run) for run in runs)
    if not runs or any(run not in WARMUP_RUNS for run in runs):
        raise ValueError(f"{fn}: runs must be a non-empty subset of {WARMUP_RUNS}; got {runs!r}")
    chain = markov_chain(n_states=n_states, seed=0, sharpness=sharpness)
    encode = {c: i for i, c in enumerate(chain.alphabet)}
    train_ids = torch.tensor([encode[c] for c in chain.sample(30_000, seed=2 * seed)])  # (N,)
    val_ids = torch.tensor([encode[c] for c in chain.sample(5_000, seed=2 * seed + 1)])  # (N_val,)
    out: dict = {"entropy_rate": chain.entropy_rate(), "uniform": math.log(n_states)}
    for order, warm in runs:
        with torch.random.fork_rng(devices=[]):  # leave the caller's global generator alone
            torch.manual_seed(seed)
            model = TinyDecoder(ModelConfig(vocab_size=n_states, d_model=d_model, n_heads=n_heads, n_layers=n_layers,
                                            max_seq_len=block_size, norm_placement=order, kernels="fused"))
        out[_run_name(order, warm)] = train(
            model, train_ids, val_ids, steps=steps, batch_size=batch_size, block_size=block_size, lr=lr,
            warmup=warmup if warm else 0, betas=betas, eval_every=max(1, steps // 10), eval_batches=4, seed=seed,
            progress=False, device="cpu", threads=1)
    return out


def warmup_experiment(seed: int = 0, **kwargs) -> dict:
    """Does a deep Post-LN stack need a learning-rate warm-up? The four final validation losses.

    Shows: at a learning rate where Pre-LN trains with or without warm-up and Post-LN trains with
    it, Post-LN without warm-up learns nothing (its loss stays near ln V) while the other three
    approach the language's entropy rate. kwargs go to `warmup_runs` (defaults: 12 layers,
    d_model 32, 100 steps of 16 x 32 tokens, peak lr 2e-2, 70 warm-up steps).
    Cost with the defaults: about 13 CPU-seconds on one thread (four runs of about 3 s).

    Returns floats: post_warmup, post_no_warmup, pre_warmup, pre_no_warmup (final validation
    losses, nats per token), entropy_rate (the floor), uniform (ln V).
    """
    runs = warmup_runs(seed, **kwargs)
    return {name: (run if isinstance(run, float) else float(run.val_loss[-1])) for name, run in runs.items()}
