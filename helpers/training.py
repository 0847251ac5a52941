"""Chapter 08: training signals, and the training loop chapters 06, 08 and 09 use.

    history = train(model, train_ids, val_ids, steps=300, batch_size=16, block_size=64)
    history.plot(baselines={"unigram": 3.2, "bigram": 2.5})   # train and val loss in one call
    history.val_loss[-1], history.tokens_per_s

**The next-token loss.** A decoder reads ids x_0 .. x_{T-1} and predicts, at every position t, the
token that comes next. Its logits at position t are scored against x_{t+1}, so logits and targets
are shifted by one against each other: the last position has no target, the first token is never a
target. With the logits z (B, T, V):

    loss = mean over (b, t < T-1) of  -log softmax(z[b, t])[x[b, t+1]]
         = mean of  logsumexp(z[b, t]) - z[b, t, x[b, t+1]]

`lm_loss(logits, ids)` does the shift itself; `token_loss(logits, targets)` scores position t
against targets[:, t] unshifted, for targets that are already shifted (what `batches` returns).
A target equal to `ignore_index` (-100, as in torch.nn.functional.cross_entropy) is left out of
both the sum and the count.

**The loop** (`train`): nanoGPT's recipe on a small scale.

* batches: `batches(ids, B, T, generator)` draws B random windows of T + 1 consecutive tokens from
  a long 1-D id tensor; x is a window's first T tokens, y its last T (x shifted left by one), so
  y[b, t] is the token after x[b, t]. A torch.Generator makes the draw repeat for a seed.
* optimizer: AdamW (decoupled weight decay) on every parameter; weight decay only on matrices
  (linear weights, embeddings), none on norms' gains and biases (`adamw`: torch's fused kernel).
* learning rate: a linear warm-up from lr / warmup to lr over the first `warmup` steps, then a
  cosine decay to min_lr at the last step (`lr_at`).
* gradient clipping: the global L2 norm of all gradients is scaled down to at most grad_clip.
* validation: the mean loss on `eval_batches` fixed validation batches (drawn once, so the curve
  moves only because the model does), before the first step, every `eval_every` steps and after
  the last.
* a `tqdm.auto` progress bar (a widget in JupyterLab, text in a terminal) with the latest losses.

* threads: torch's CPU thread count is measured, not guessed (`helpers.threads`), and the
  learner's own setting is restored afterwards.

On the CPU a run is deterministic: the same model, data, seed and thread count give bit-identical losses.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .shapes import ShapeError, fmt_shape, require_float, require_positive_int, require_tensor
from .threads import fastest_threads

__all__ = [
    "IGNORE_INDEX",
    "TrainHistory",
    "adamw",
    "batches",
    "bigram_loss",
    "lm_loss",
    "lm_labels",
    "lr_at",
    "mlm_loss",
    "mlm_mask",
    "param_count",
    "sample_tokens",
    "teacher_forcing_inputs",
    "tie_weights",
    "tied_param_saving",
    "token_loss",
    "train",
    "train_step",
    "unigram_loss",
]

IGNORE_INDEX = -100  # torch.nn.functional.cross_entropy's default


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------


def _require_ids(fn: str, name: str, ids: object, layout: str, rank: int) -> torch.Tensor:
    require_tensor(fn, name, ids)
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool or ids.dim() != rank:
        raise ShapeError(f"{fn}: {name} must be an integer tensor of shape {layout}; got "
                         f"{fmt_shape(ids.shape)} of dtype {ids.dtype}")
    return ids


def token_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean cross-entropy of logits (B, T, V) against targets (B, T), position by position, no shift.

    Positions whose target is ignore_index count neither in the sum nor in the mean; if every
    position is ignored the loss is NaN (0 / 0), as in torch.nn.functional.cross_entropy.
    """
    fn = "token_loss"
    require_float(fn, "logits", logits, "(B, T, V)")
    _require_ids(fn, "targets", targets, "(B, T)", 2)
    if tuple(targets.shape) != tuple(logits.shape[:2]):
        raise ShapeError(f"{fn}: targets must have shape (B, T) = {fmt_shape(logits.shape[:2])} as in logits "
                         f"{fmt_shape(logits.shape)} = (B, T, V); got {fmt_shape(targets.shape)}")
    V = logits.shape[-1]
    keep = targets != ignore_index  # (B, T) bool
    bad = keep & ((targets < 0) | (targets >= V))
    if bad.any():
        raise ValueError(f"{fn}: targets must lie in 0..V-1 = 0..{V - 1} or equal ignore_index = {ignore_index}; "
                         f"got {int(targets[bad][0])}")
    safe = torch.where(keep, targets, torch.zeros_like(targets))  # (B, T): any valid id where ignored
    log_z = torch.logsumexp(logits, dim=-1)  # (B, T)
    picked = logits.gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # (B, T): z[b, t, target]
    nll = (log_z - picked) * keep  # (B, T): -log p(target), 0 where ignored
    return nll.sum() / keep.sum()  # scalar


def lm_loss(logits: torch.Tensor, ids: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Next-token loss: logits (B, T, V) at position t scored against ids[:, t + 1]; a scalar.

    The shift by one: predictions logits[:, :-1] (B, T-1, V), targets ids[:, 1:] (B, T-1).
    """
    fn = "lm_loss"
    require_float(fn, "logits", logits, "(B, T, V)")
    _require_ids(fn, "ids", ids, "(B, T)", 2)
    if tuple(ids.shape) != tuple(logits.shape[:2]):
        raise ShapeError(f"{fn}: ids must have shape (B, T) = {fmt_shape(logits.shape[:2])} as in logits "
                         f"{fmt_shape(logits.shape)} = (B, T, V): the ids the model read; got {fmt_shape(ids.shape)}")
    if ids.shape[1] < 2:
        raise ShapeError(f"{fn}: a next-token loss needs T >= 2 tokens (T - 1 predictions); got ids "
                         f"{fmt_shape(ids.shape)}")
    return token_loss(logits[:, :-1], ids[:, 1:], ignore_index)  # (B, T-1, V) vs (B, T-1)


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Masked-LM loss: logits (B, T, V) at position t scored against labels[:, t], no shift; labels
    are ignore_index everywhere except at the positions mlm_mask selected."""
    return token_loss(logits, labels, ignore_index)


def lm_labels(ids: torch.Tensor, attention_mask: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Next-token labels that agree with a key-padding attention mask: ids where the token is real,
    ignore_index where it is padding. ids (B, T), attention_mask (B, T) bool (True = real token).

    lm_loss(logits, lm_labels(ids, mask)) then scores position t only when token t + 1 is real, so
    no padding token is ever a target, and the mean runs over real targets only.
    """
    fn = "lm_labels"
    _require_ids(fn, "ids", ids, "(B, T)", 2)
    require_tensor(fn, "attention_mask", attention_mask)
    if attention_mask.dtype != torch.bool or attention_mask.shape != ids.shape:
        raise ShapeError(f"{fn}: attention_mask must be a bool tensor shaped like ids {fmt_shape(ids.shape)} "
                         f"(True = real token); got {fmt_shape(attention_mask.shape)} of dtype {attention_mask.dtype}")
    return ids.masked_fill(~attention_mask, ignore_index)  # (B, T)


# ---------------------------------------------------------------------------------------------
# Masked-LM inputs, teacher forcing, weight tying
# ---------------------------------------------------------------------------------------------


def mlm_mask(ids: torch.Tensor, mask_id: int, vocab_size: int, generator: torch.Generator, *,
             p: float = 0.15, can_mask: torch.Tensor | None = None,
             ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: (inputs (B, T), labels (B, T)) from ids (B, T).

    Each position that can_mask allows (default: all) is selected with probability p. A selected
    position gets the mask token with probability 0.8, a uniformly random token with 0.1, and keeps
    its own token with 0.1; its label is the original token. Every other position keeps its token
    and gets the label ignore_index, so the loss is computed on the selected positions only.

    The random numbers are drawn from `generator` in this order, each with the shape of ids:
    u = rand (selected where u < p), r = rand (mask token where r < 0.8, random token where
    0.8 <= r < 0.9), random = randint(0, vocab_size). So a seed gives exact, repeatable values.
    """
    fn = "mlm_mask"
    _require_ids(fn, "ids", ids, "(B, T)", 2)
    require_positive_int(fn, "vocab_size", vocab_size)
    if isinstance(mask_id, bool) or not isinstance(mask_id, int) or not 0 <= mask_id < vocab_size:
        raise ValueError(f"{fn}: mask_id must be an int in 0..vocab_size-1 = 0..{vocab_size - 1}; got {mask_id!r}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{fn}: generator must be a torch.Generator; got {type(generator).__name__}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{fn}: p must lie in [0, 1]; got {p!r}")
    u = torch.rand(ids.shape, generator=generator)  # (B, T): selection
    r = torch.rand(ids.shape, generator=generator)  # (B, T): what a selected position becomes
    random_ids = torch.randint(0, vocab_size, ids.shape, generator=generator)  # (B, T)
    selected = u < p  # (B, T) bool
    if can_mask is not None:
        if can_mask.dtype != torch.bool or can_mask.shape != ids.shape:
            raise ShapeError(f"{fn}: can_mask must be a bool tensor shaped like ids {fmt_shape(ids.shape)}; got "
                             f"{fmt_shape(can_mask.shape)} of dtype {can_mask.dtype}")
        selected = selected & can_mask.cpu()
    selected, r, random_ids = selected.to(ids.device), r.to(ids.device), random_ids.to(ids.device)
    inputs = torch.where(selected & (r < 0.8), torch.full_like(ids, mask_id), ids)  # (B, T): 80 % mask token
    inputs = torch.where(selected & (r >= 0.8) & (r < 0.9), random_ids, inputs)  # (B, T): 10 % random token
    labels = torch.where(selected, ids, torch.full_like(ids, ignore_index))  # (B, T): loss only where selected
    return inputs, labels


def teacher_forcing_inputs(targets: torch.Tensor, bos_id: int) -> torch.Tensor:
    """A decoder's inputs for training on targets (B, T): BOS, then the targets shifted right by one.

        targets  y_0  y_1  ...  y_{T-1}
        inputs   BOS  y_0  ...  y_{T-2}        position t reads the true y_{<t} and predicts y_t

    The model is fed the true previous tokens (teacher forcing), not its own predictions, so all T
    positions train in one parallel pass; the last target is never an input.
    """
    fn = "teacher_forcing_inputs"
    _require_ids(fn, "targets", targets, "(B, T)", 2)
    if isinstance(bos_id, bool) or not isinstance(bos_id, int):
        raise TypeError(f"{fn}: bos_id must be an int; got {type(bos_id).__name__}")
    bos = torch.full_like(targets[:, :1], bos_id)  # (B, 1)
    return torch.cat([bos, targets[:, :-1]], dim=1)  # (B, T)


def tie_weights(embedding: nn.Embedding, head: nn.Linear) -> None:
    """Make head use the embedding's weight tensor (V, d_model): one Parameter, two uses, shared storage.

    Assigning the Parameter itself shares it; copying its values (`.data.copy_`, `.clone()`) does not:
    the two would drift apart at the first optimizer step, and nothing is saved.
    """
    if not isinstance(embedding, nn.Embedding) or not isinstance(head, nn.Linear):
        raise TypeError("tie_weights: expected an nn.Embedding and an nn.Linear; got "
                        f"{type(embedding).__name__} and {type(head).__name__}")
    if tuple(head.weight.shape) != tuple(embedding.weight.shape):
        raise ShapeError(f"tie_weights: the head's weight {fmt_shape(head.weight.shape)} = (V, d_model) must have "
                         f"the embedding's shape {fmt_shape(embedding.weight.shape)}")
    head.weight = embedding.weight  # the same Parameter object: same storage, one gradient


def param_count(model: nn.Module) -> int:
    """Trainable numbers in a model, each shared tensor counted once (as the optimizer sees them)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():  # parameters() already yields a shared Parameter once
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def tied_param_saving(vocab_size: int, d_model: int) -> int:
    """Parameters saved by tying the LM head to the token embedding: one (V, d_model) matrix."""
    require_positive_int("tied_param_saving", "vocab_size", vocab_size)
    require_positive_int("tied_param_saving", "d_model", d_model)
    return vocab_size * d_model


# ---------------------------------------------------------------------------------------------
# Baselines and samples
# ---------------------------------------------------------------------------------------------


def unigram_loss(train_ids: torch.Tensor, val_ids: torch.Tensor, vocab_size: int, alpha: float = 1.0) -> float:
    """The validation loss of the best context-free guess: token frequencies counted on train_ids
    with add-alpha smoothing, p(v) = (count(v) + alpha) / (N + alpha V); mean -log p over val_ids."""
    fn = "unigram_loss"
    _require_ids(fn, "train_ids", train_ids, "(N,)", 1)
    _require_ids(fn, "val_ids", val_ids, "(N,)", 1)
    counts = torch.bincount(train_ids.cpu(), minlength=vocab_size).double() + alpha  # (V,)
    log_p = counts.log() - counts.sum().log()  # (V,)
    return float(-log_p[val_ids.cpu()].mean())


def bigram_loss(train_ids: torch.Tensor, val_ids: torch.Tensor, vocab_size: int, alpha: float = 0.1) -> float:
    """The validation loss of a count-based bigram model: p(b | a) = (count(a b) + alpha) /
    (count(a) + alpha V), counted on train_ids; mean -log p over the val_ids pairs. The best a
    model that sees only the previous token can do, up to the smoothing and the finite sample."""
    fn = "bigram_loss"
    _require_ids(fn, "train_ids", train_ids, "(N,)", 1)
    _require_ids(fn, "val_ids", val_ids, "(N,)", 1)
    a, b = train_ids[:-1].cpu(), train_ids[1:].cpu()
    counts = torch.bincount(a * vocab_size + b, minlength=vocab_size ** 2).double().view(vocab_size, vocab_size)
    counts = counts + alpha  # (V, V)
    log_p = counts.log() - counts.sum(dim=1, keepdim=True).log()  # (V, V): row a = p(. | a)
    va, vb = val_ids[:-1].cpu(), val_ids[1:].cpu()
    return float(-log_p[va, vb].mean())


@torch.no_grad()
def sample_tokens(model: nn.Module, prompt: torch.Tensor, n_new: int, *, generator: torch.Generator,
                  temperature: float = 1.0, block_size: int | None = None) -> torch.Tensor:
    """Free-running generation: prompt (B, T0) -> (B, T0 + n_new), each new token drawn from
    softmax(logits / temperature) at the last position, then fed back as input. No KV cache: the
    whole (cropped) sequence is re-read at every step, which is fine for a few hundred tokens.
    temperature 0 means greedy (argmax). block_size: how many trailing tokens the model reads."""
    fn = "sample_tokens"
    _require_ids(fn, "prompt", prompt, "(B, T0)", 2)
    require_positive_int(fn, "n_new", n_new)
    if block_size is None:
        block_size = getattr(getattr(model, "config", None), "max_seq_len", None) or prompt.shape[1] + n_new
    was_training = model.training
    model.eval()
    ids = prompt
    for _ in range(n_new):
        logits = model(ids[:, -block_size:])[:, -1]  # (B, V): the prediction after the last token
        if temperature == 0:
            nxt = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
        else:
            probs = torch.softmax(logits.double() / temperature, dim=-1).cpu()  # (B, V)
            nxt = torch.multinomial(probs, 1, generator=generator).to(ids.device)  # (B, 1)
        ids = torch.cat([ids, nxt], dim=1)  # (B, T + 1)
    model.train(was_training)
    return ids


# ---------------------------------------------------------------------------------------------
# Data and schedule
# ---------------------------------------------------------------------------------------------


def batches(ids: torch.Tensor, batch_size: int, block_size: int,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """B random windows of a 1-D id tensor: x (B, T) and the next tokens y (B, T), y[:, t] = x's next.

    Window starts are uniform over 0 .. len(ids) - T - 1 (drawn on the CPU with `generator`), so
    every window has its T + 1 tokens inside ids. x and y live on ids' device.
    """
    fn = "batches"
    _require_ids(fn, "ids", ids, "(N,)", 1)
    require_positive_int(fn, "batch_size", batch_size)
    require_positive_int(fn, "block_size", block_size)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{fn}: generator must be a torch.Generator (seeded: torch.Generator().manual_seed(0)); "
                        f"got {type(generator).__name__}")
    N = ids.shape[0]
    if N < block_size + 1:
        raise ShapeError(f"{fn}: ids has {N} tokens, too few for one window of block_size + 1 = "
                         f"{block_size + 1} (T inputs and the token after the last)")
    starts = torch.randint(0, N - block_size, (batch_size,), generator=generator,
                           device=generator.device)  # (B,)
    idx = starts.to(ids.device)[:, None] + torch.arange(block_size, device=ids.device)  # (B, T)
    return ids[idx], ids[idx + 1]  # (B, T), (B, T)


def lr_at(step: int, *, lr: float, steps: int, warmup: int, min_lr: float) -> float:
    """The learning rate of step `step` (0-based) of `steps`: warm-up, then cosine decay.

        step < warmup:   lr * (step + 1) / warmup                       linear, reaches lr at warmup - 1
        otherwise:       min_lr + (lr - min_lr) * (1 + cos(pi * p)) / 2,  p = (step + 1 - warmup) / (steps - warmup)

    so the last step (steps - 1) runs at min_lr.
    """
    if not 0 <= step < steps:
        raise ValueError(f"lr_at: step must lie in 0..steps-1 = 0..{steps - 1}; got {step}")
    if step < warmup:
        return lr * (step + 1) / warmup
    p = (step + 1 - warmup) / (steps - warmup)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * p))


# ---------------------------------------------------------------------------------------------
# The history of a run
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainHistory:
    """What a run of `train` measured.

    steps[i], train_loss[i], lr[i], grad_norm[i]: update number (1-based), the loss of its batch
    (before the update), its learning rate and its gradient norm before clipping.
    val_steps[j], val_loss[j]: updates done when validated (0 = the untrained model), mean loss.
    tokens_per_s: training tokens (steps * B * T) per second of training (validation excluded);
    seconds: wall time of the whole run; threads: torch's CPU thread count the run used.
    """

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    tokens_per_s: float = float("nan")
    seconds: float = float("nan")
    grad_norm: list[float] = field(default_factory=list)
    tokens: int = 0
    threads: int = 0

    def plot(self, ax=None, baselines: dict[str, float] | None = None, title: str | None = None):
        """Train loss (per step, faint, with a running mean) and validation loss on one Axes.

        baselines: {name: loss} drawn as dashed horizontal lines (e.g. unigram and bigram losses,
        or a known entropy rate). Returns the Axes.
        """
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(7, 4))
        if self.steps:
            ax.plot(self.steps, self.train_loss, color="tab:blue", alpha=0.25, lw=0.8)
            window = max(1, len(self.steps) // 25)
            smooth = torch.tensor(self.train_loss, dtype=torch.float64)  # (steps,)
            kernel = torch.ones(window, dtype=torch.float64) / window  # (window,)
            run = torch.nn.functional.conv1d(smooth[None, None], kernel[None, None])[0, 0]  # (steps - window + 1,)
            ax.plot(self.steps[window - 1:], run.tolist(), color="tab:blue",
                    label=f"train (running mean of {window})" if window > 1 else "train")
        if self.val_steps:
            ax.plot(self.val_steps, self.val_loss, "o-", color="tab:orange", ms=4, label="validation")
        styles = ["--", ":", "-.", (0, (5, 1))]
        for i, (name, value) in enumerate((baselines or {}).items()):
            ax.axhline(value, color="gray", ls=styles[i % len(styles)], lw=1, label=f"{name} {value:.3f}")
        ax.set_xlabel("update step")
        ax.set_ylabel("loss (nats per token)")
        ax.set_title(title or "Training and validation loss")
        ax.legend()
        return ax


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on tensors with 2+ dims (matrices, embeddings), none on gains and biases.
    A tied tensor (embedding = LM head) appears once: model.named_parameters() skips repeats."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(model: nn.Module, lr: float, *, betas: tuple[float, float] = (0.9, 0.95),
          weight_decay: float = 0.1) -> torch.optim.AdamW:
    """The loop's optimizer: AdamW with weight decay on matrices only (`_param_groups`).

    Where every parameter is a float tensor on the CPU or a CUDA GPU it runs torch's fused kernel
    (fused=True: one pass per tensor instead of a dozen small operations each, the same update
    everywhere); elsewhere torch's plain loop (foreach=False), so a run repeats on every machine.
    """
    groups = _param_groups(model, weight_decay)
    params = [p for group in groups for p in group["params"]]
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, **({"fused": True} if fused else {"foreach": False}))


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               grad_clip: float | None = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One update: loss of x (B, T) against y (B, T), backward, clip the global gradient norm to
    grad_clip (None or 0: no clipping), optimizer step. Returns (loss, gradient norm before clipping),
    both 0-d tensors (no .item() here, so a GPU is not made to wait)."""
    loss = token_loss(model(x), y)  # scalar: logits (B, T, V) vs y (B, T)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip, foreach=True)
    else:
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()
                                                     if p.grad is not None]))
    optimizer.step()
    return loss.detach(), norm


@torch.no_grad()
def _evaluate(model: nn.Module, val_set: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    was_training = model.training
    model.eval()
    total = sum(token_loss(model(x), y).item() for x, y in val_set) / len(val_set)
    model.train(was_training)
    return total


def _train_settings(model: nn.Module, train_ids: torch.Tensor, val_ids: torch.Tensor, *, steps: int,
                    batch_size: int, block_size: int, lr: float, warmup: int | None, min_lr: float | None,
                    eval_every: int | None, eval_batches: int) -> tuple[int, float, int]:
    """`train`'s arguments checked (each bad one refused by name) and its defaults filled in:
    (warmup, min_lr, eval_every)."""
    fn = "train"
    if not isinstance(model, nn.Module):
        raise TypeError(f"{fn}: model must be a torch.nn.Module; got {type(model).__name__}")
    _require_ids(fn, "train_ids", train_ids, "(N,)", 1)
    _require_ids(fn, "val_ids", val_ids, "(N,)", 1)
    for name, value in (("steps", steps), ("batch_size", batch_size), ("block_size", block_size),
                        ("eval_batches", eval_batches)):
        require_positive_int(fn, name, value)
    warmup = max(1, steps // 10) if warmup is None else warmup
    if isinstance(warmup, bool) or not isinstance(warmup, int) or not 0 <= warmup < steps:
        raise ValueError(f"{fn}: warmup must be an int in 0..steps-1 = 0..{steps - 1}; got {warmup!r}")
    min_lr = lr / 10 if min_lr is None else min_lr
    if not (lr > 0 and 0 <= min_lr <= lr):
        raise ValueError(f"{fn}: need lr > 0 and 0 <= min_lr <= lr; got lr={lr!r}, min_lr={min_lr!r}")
    eval_every = max(1, steps // 10) if eval_every is None else eval_every
    require_positive_int(fn, "eval_every", eval_every)
    max_len = getattr(getattr(model, "config", None), "max_seq_len", None)
    if max_len is not None and block_size > max_len and getattr(model.config, "positions", "") == "learned":
        raise ShapeError(f"{fn}: block_size = {block_size} exceeds the model's learned position table "
                         f"(max_seq_len = {max_len} rows)")
    return warmup, min_lr, eval_every


def _training_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    """Where `train` runs: `device`, else where the model's parameters are (the CPU for a model without any)."""
    if device is None:
        params = list(model.parameters())
        device = params[0].device if params else torch.device("cpu")
    return torch.device(device)


def _validation_set(val_ids: torch.Tensor, batch_size: int, block_size: int, eval_batches: int,
                    seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The fixed validation batches, drawn once from a generator of their own (seed + 1_000_003), so
    every validation of a run (and of another run with the same seed) reads the same windows."""
    val_gen = torch.Generator().manual_seed(seed + 1_000_003)
    return [batches(val_ids, batch_size, block_size, val_gen) for _ in range(eval_batches)]  # (B, T), (B, T) each


def _thread_probe(model: nn.Module, val_set: list[tuple[torch.Tensor, torch.Tensor]]) -> Callable[[], None]:
    """What `fastest_threads` times: one forward and backward pass on a validation batch, the gradients dropped."""
    def probe() -> None:
        token_loss(model(val_set[0][0]), val_set[0][1]).backward()
        model.zero_grad(set_to_none=True)
    return probe


def _update(model: nn.Module, optimizer: torch.optim.Optimizer, rate: float, x: torch.Tensor, y: torch.Tensor,
            grad_clip: float | None) -> tuple[float, torch.Tensor]:
    """One update at learning rate `rate` on the batch x, y (B, T): (its loss as a float, gradient norm)."""
    for group in optimizer.param_groups:
        group["lr"] = rate
    loss, norm = train_step(model, optimizer, x, y, grad_clip)
    return loss.item(), norm  # .item() waits for the step to finish on a GPU


def _record_step(history: TrainHistory, step: int, value: float, rate: float, norm: torch.Tensor) -> None:
    """One update's loss, learning rate and gradient norm into the history; a loss that is not finite
    stops the run with advice."""
    if not math.isfinite(value):
        raise FloatingPointError(f"train: the training loss became {value} at step {step}; lower lr "
                                 f"(now {rate:.3g}) or keep grad_clip on")
    history.steps.append(step)
    history.train_loss.append(value)
    history.lr.append(rate)
    history.grad_norm.append(float(norm))


def _record_validation(history: TrainHistory, step: int, model: nn.Module,
                       val_set: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """The mean validation loss after `step` updates, recorded in the history and returned."""
    history.val_steps.append(step)
    history.val_loss.append(_evaluate(model, val_set))
    return history.val_loss[-1]


def _record_throughput(history: TrainHistory, tokens: int, train_seconds: float, seconds: float) -> None:
    """Training tokens, tokens per second of training (validation excluded) and the run's wall time."""
    history.tokens = tokens
    history.tokens_per_s = tokens / train_seconds if train_seconds > 0 else float("inf")
    history.seconds = seconds


def train(model: nn.Module, train_ids: torch.Tensor, val_ids: torch.Tensor, *, steps: int, batch_size: int,
          block_size: int, lr: float = 3e-3, warmup: int | None = None, min_lr: float | None = None,
          weight_decay: float = 0.1, grad_clip: float | None = 1.0, eval_every: int | None = None,
          eval_batches: int = 8, seed: int = 0, progress: bool = True, device: torch.device | str | None = None,
          betas: tuple[float, float] = (0.9, 0.95), threads: int | None = None) -> TrainHistory:
    """Train `model` (ids (B, T) int64 -> logits (B, T, V)) for `steps` AdamW updates; the history.

    warmup: steps of linear warm-up (None: 10 % of steps); min_lr: the learning rate at the last
    step (None: lr / 10); grad_clip: max global gradient norm (None or 0: no clipping);
    eval_every: validate every so many steps (None: 10 times per run), always at 0 and at the end;
    eval_batches: validation batches of batch_size windows, drawn once; seed: the batch sampler's
    seed (the model's initialization is the caller's); device: where to train (None: where the
    model's parameters are). The model is trained in place and left in its original train/eval mode.

    threads: torch's CPU thread count for the run; None measures which is faster for this model on
    this machine right now (`helpers.threads.choose_threads`, a few forward and backward passes on a
    validation batch: one thread, or two when they win by 10 %). The learner's own setting is
    restored afterwards, also after an error; history.threads records the count used. A run is
    bit-identical for the same seed and thread count.
    """
    warmup, min_lr, eval_every = _train_settings(
        model, train_ids, val_ids, steps=steps, batch_size=batch_size, block_size=block_size, lr=lr,
        warmup=warmup, min_lr=min_lr, eval_every=eval_every, eval_batches=eval_batches)
    device = _training_device(model, device)
    model.to(device)
    train_ids, val_ids = train_ids.to(device), val_ids.to(device)

    gen = torch.Generator().manual_seed(seed)  # training batches
    val_set = _validation_set(val_ids, batch_size, block_size, eval_batches, seed)
    optimizer = adamw(model, lr, betas=betas, weight_decay=weight_decay)

    history = TrainHistory()
    was_training = model.training
    start = time.perf_counter()
    train_seconds = 0.0

    from tqdm.auto import tqdm

    bar = tqdm(range(1, steps + 1), desc="training", disable=not progress, leave=True)
    probe = _thread_probe(model, val_set) if device.type == "cpu" else None
    try:
        with fastest_threads(probe, threads) as history.threads:
            _record_validation(history, 0, model, val_set)
            model.train()
            for step in bar:
                t0 = time.perf_counter()
                rate = lr_at(step - 1, lr=lr, steps=steps, warmup=warmup, min_lr=min_lr)
                x, y = batches(train_ids, batch_size, block_size, gen)  # (B, T), (B, T)
                value, norm = _update(model, optimizer, rate, x, y, grad_clip)
                train_seconds += time.perf_counter() - t0
                _record_step(history, step, value, rate, norm)
                if step % eval_every == 0 or step == steps:
                    val = _record_validation(history, step, model, val_set)
                    bar.set_postfix(loss=f"{value:.3f}", val=f"{val:.3f}", lr=f"{rate:.2e}")
    finally:
        bar.close()
        model.train(was_training)
    _record_throughput(history, steps * batch_size * block_size, train_seconds, time.perf_counter() - start)
    return history
