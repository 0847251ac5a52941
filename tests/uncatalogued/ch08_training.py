"""Chapter 08: uncatalogued wrong answers."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from . import Wrong

TOPIC = "training"
IGNORE = -100


def _lm(*, pred=lambda z: z[:, :-1], target=lambda ids: ids[:, 1:], keep_from=None, safe="zero",
        log_p=lambda z: torch.log_softmax(z, dim=-1), reduce="tokens", smoothing=0.0, base=None):
    """A next-token loss with one thing done differently; the defaults are the right loss."""
    def lm_loss(logits, ids, ignore_index=-100):
        z, y = pred(logits), target(ids)
        keep = (y if keep_from is None else keep_from(ids)) != ignore_index
        y_safe = torch.where(keep, y, torch.zeros_like(y)) if safe == "zero" else y.clamp(min=0)
        lp = log_p(z)
        nll = -lp.gather(-1, y_safe.unsqueeze(-1)).squeeze(-1)
        if smoothing:
            nll = (1 - smoothing) * nll - smoothing * lp.mean(-1)
        if base:
            nll = nll / math.log(base)
        if reduce == "tokens":
            return (nll * keep).sum() / keep.sum()
        if reduce == "all":  # every position, the ignored ones scored against token 0
            return nll.mean()
        if reduce == "per_sequence":
            return ((nll * keep).sum(1) / keep.sum(1)).mean()
        if reduce == "batch":
            return (nll * keep).sum() / z.shape[0]
        raise ValueError(reduce)
    return lm_loss


def _mlm(*, select=lambda u: u < 0.15, random_band=lambda r: (r >= 0.8) & (r < 0.9),
         randint_high=lambda V: V, unselected=IGNORE):
    def mlm_mask(ids, mask_id, vocab_size, generator):
        u = torch.rand(ids.shape, generator=generator)
        r = torch.rand(ids.shape, generator=generator)
        random_ids = torch.randint(0, randint_high(vocab_size), ids.shape, generator=generator)
        selected = select(u)
        inputs = torch.where(selected & (r < 0.8), torch.full_like(ids, mask_id), ids)
        inputs = torch.where(selected & random_band(r), random_ids, inputs)
        labels = torch.where(selected, ids, torch.full_like(ids, unselected))
        return inputs, labels
    return mlm_mask


def _tie_data(model):
    model.lm_head.weight.data = model.tok_emb.weight.data  # same storage, still the head's own Parameter


def _tie_a_copy(model):
    model = copy.deepcopy(model)  # "so as not to change the caller's model"
    model.lm_head.weight = model.tok_emb.weight
    return model


def _tie_module(model):
    model.lm_head = model.tok_emb  # the embedding module replaces the head


def _labels_next_real(ids, attention_mask):
    keep = attention_mask.clone()
    keep[:, :-1] &= attention_mask[:, 1:]  # "the last real token has no next token": also ignored
    return ids.masked_fill(~keep, -100)


def _labels_from_lengths(ids, attention_mask):
    lengths = attention_mask.sum(dim=1)  # right padding assumed
    real = torch.arange(ids.shape[1])[None, :] < lengths[:, None]
    return ids.masked_fill(~real, -100)


# Exercise 7's right answer, the base of its wrong ones.
_CURVES = {"A": "mask_leak", "B": "healthy", "C": "frozen_layers", "D": "no_warmup", "E": "lr_too_high"}

WRONG = [
    Wrong("lm_loss", "mean_per_sequence", _lm(reduce="per_sequence"), r"per sequence|sequence by sequence"),
    Wrong("lm_loss", "ignored_scored_as_token_0", _lm(safe="clamp", reduce="all"),
          r"ignore_index|ignored"),
    Wrong("lm_loss", "ignore_mask_from_inputs", _lm(keep_from=lambda ids: ids[:, :-1], safe="clamp"),
          r"ignore_index|ignored|ignore mask"),
    Wrong("lm_loss", "log_softmax_over_T", _lm(log_p=lambda z: torch.log_softmax(z, dim=1)),
          r"positions \(dim=1\)|last axis"),
    Wrong("lm_loss", "no_logsumexp", _lm(log_p=lambda z: z), r"logsumexp|log_softmax|normali"),
    Wrong("lm_loss", "label_smoothing", _lm(smoothing=0.1), r"smooth"),
    Wrong("lm_loss", "shift_by_two", _lm(pred=lambda z: z[:, :-2], target=lambda ids: ids[:, 2:]),
          r"t \+ 2|two"),
    Wrong("lm_loss", "no_shift_first_dropped", _lm(pred=lambda z: z[:, 1:]), r"shift|ids\[:, t\]"),
    Wrong("lm_loss", "bits", _lm(base=2), r"bits|log2|natural"),
    Wrong("lm_loss", "divided_by_B", _lm(reduce="batch"), r"divid|count"),
    Wrong("mlm_mask", "random_band_top", _mlm(random_band=lambda r: r >= 0.9), r"r >= 0\.9|0\.9 <= r"),
    Wrong("mlm_mask", "selected_at_the_top", _mlm(select=lambda u: u > 0.85), r"u > 0\.85|largest u"),
    Wrong("mlm_mask", "randint_excludes_last", _mlm(randint_high=lambda V: V - 1), r"vocab_size - 1|never"),
    Wrong("mlm_mask", "unselected_label_0", _mlm(unselected=0), r"-100|ignore"),
    Wrong("teacher_forcing_inputs", "rolled", lambda y, bos: torch.roll(y, 1, dims=1), r"BOS|bos_id"),
    Wrong("teacher_forcing_inputs", "padded_with_0", lambda y, bos: F.pad(y, (1, 0))[:, :-1], r"BOS|bos_id"),
    Wrong("teacher_forcing_inputs", "shifted_along_batch",
          lambda y, bos: torch.cat([torch.full_like(y[:1], bos), y[:-1]], dim=0), r"batch|dim=1|axis"),
    Wrong("tie_weights", "data_assigned", _tie_data, r"\.data"),
    Wrong("tie_weights", "ties_a_copy", _tie_a_copy, r"in place|unchanged"),
    Wrong("tie_weights", "module_replaced", _tie_module, r"module|nn\.Linear|lm_head"),
    Wrong("padding_labels", "minus_one", lambda ids, m: ids.masked_fill(~m, -1), r"padding .*-1\b|labelled -1"),
    Wrong("padding_labels", "next_token_real", _labels_next_real, r"real token|last"),
    Wrong("padding_labels", "lengths_assume_right_padding", _labels_from_lengths, r"lengths|attention_mask itself"),
    Wrong("padding_labels", "first_sequence_mask", lambda ids, m: ids.masked_fill(~m[0], -100),
          r"sequence|row", named=False),
    # Exercise 7: confusions of the curves that CURVE_CONFUSIONS does not list, and answers of the wrong form.
    Wrong("loss_curves", "leak_read_as_lr_too_high", {**_CURVES, "A": "lr_too_high", "E": "mask_leak"},
          r"curve A .*below the entropy rate"),
    Wrong("loss_curves", "frozen_read_as_lr_too_high", {**_CURVES, "C": "lr_too_high", "E": "frozen_layers"},
          r"curve C .*plateau well above the healthy"),
    Wrong("loss_curves", "names_in_the_tables_order", dict(zip("ABCDE", ("healthy", "lr_too_high", "no_warmup",
                                                                      "mask_leak", "frozen_layers"))),
          r"curve A .*below the entropy rate"),
    Wrong("loss_curves", "hyphenated_name", {**_CURVES, "D": "no-warmup"}, r"not one of the fault names"),
    Wrong("loss_curves", "lower_case_labels", {k.lower(): v for k, v in _CURVES.items()}, r"labelled A, B"),
]

# Written after the probes, without looking at them again: how the probing does on mistakes it was
# not built from. `named` records what happens today.


def _lm_logsumexp_over_T(logits, ids, ignore_index=-100):
    z, y = logits[:, :-1], ids[:, 1:]
    keep = y != ignore_index
    safe = torch.where(keep, y, torch.zeros_like(y))
    log_z = torch.logsumexp(z, dim=1).gather(-1, safe)  # (B, T - 1): logsumexp over the positions
    nll = log_z - z.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return (nll * keep).sum() / keep.sum()


def _lm_mean_over_everything(logits, ids, ignore_index=-100):
    z, y = logits[:, :-1], ids[:, 1:]
    keep = y != ignore_index
    onehot = F.one_hot(torch.where(keep, y, torch.zeros_like(y)), z.shape[-1]) * keep[..., None]
    return -(torch.log_softmax(z, -1) * onehot).mean()  # a mean over B, T - 1 and V


def _mlm_labels_on_mask_tokens_only(ids, mask_id, vocab_size, generator):
    inputs, _ = _mlm()(ids, mask_id, vocab_size, torch.Generator().manual_seed(generator.initial_seed()))
    _mlm()(ids, mask_id, vocab_size, generator)  # the same draws from the learner's generator
    return inputs, torch.where(inputs == mask_id, ids, torch.full_like(ids, -100))


def _mlm_randint_from_1(ids, mask_id, vocab_size, generator):
    u = torch.rand(ids.shape, generator=generator)
    r = torch.rand(ids.shape, generator=generator)
    random_ids = torch.randint(1, vocab_size, ids.shape, generator=generator)  # "id 0 is padding": skipped
    selected = u < 0.15
    inputs = torch.where(selected & (r < 0.8), torch.full_like(ids, mask_id), ids)
    inputs = torch.where(selected & (r >= 0.8) & (r < 0.9), random_ids, inputs)
    return inputs, torch.where(selected, ids, torch.full_like(ids, -100))


HELD_OUT = [
    Wrong("lm_loss", "logsumexp_over_T", _lm_logsumexp_over_T, r"vocabulary|last axis"),
    Wrong("lm_loss", "mean_over_B_T_V", _lm_mean_over_everything, r"divide|N ="),
    Wrong("lm_loss", "label_smoothing_0.2", _lm(smoothing=0.2), r"smooth|all its weight"),
    Wrong("mlm_mask", "randint_from_1", _mlm_randint_from_1, r"random tokens differ|randint"),
    Wrong("mlm_mask", "labels_on_mask_tokens_only", _mlm_labels_on_mask_tokens_only,
          r"random token|kept|every selected position", named=False),
    Wrong("teacher_forcing_inputs", "bos_second",
          lambda y, bos: torch.cat([y[:, :1], torch.full_like(y[:, :1], bos), y[:, 1:-1]], dim=1)[:, :y.shape[1]],
          r"column 0|first input", named=False),
    Wrong("padding_labels", "shifted_right",
          lambda ids, m: torch.cat([torch.full_like(ids[:, :1], -100), ids.masked_fill(~m, -100)[:, :-1]], dim=1),
          r"shift", named=False),
]
