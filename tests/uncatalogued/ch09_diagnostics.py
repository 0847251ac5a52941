"""Chapter 09: uncatalogued wrong answers."""

from __future__ import annotations

import math

import torch

from . import Wrong

TOPIC = "diagnostics"


def _leaks(*, perturb=lambda ids, j, V: _next_token(ids, j, V), moved=None, over_batch="any", transpose=False):
    """A perturbation leak test with one thing done differently; the defaults are the right test."""
    def future_leaks(f, ids, vocab_size):
        T = ids.shape[1]
        base = f(ids)
        leaks = torch.zeros(T, T, dtype=torch.bool)
        for j in range(T):
            out = f(perturb(ids, j, vocab_size))
            if moved is None:
                diff = ~torch.isclose(out, base, rtol=1e-5, atol=1e-5 * float(base.abs().max()))
                diff = diff.reshape(diff.shape[0], T, -1).any(-1)  # (B, T)
            else:
                diff = moved(out, base)
            diff = diff.any(0) if over_batch == "any" else diff.all(0) if over_batch == "all" else diff[0]
            leaks[:, j] = diff & (torch.arange(T) < j)
        return leaks.T.contiguous() if transpose else leaks
    return future_leaks


def _next_token(ids, j, V):
    changed = ids.clone()
    changed[:, j] = (ids[:, j] + 1) % V
    return changed


def _previous_token(ids, j, V):
    changed = ids.clone()
    changed[:, max(j - 1, 0)] = (ids[:, max(j - 1, 0)] + 1) % V  # off by one: the token before j
    return changed


def _suffix(ids, j, V):
    changed = ids.clone()
    changed[:, j:] = (ids[:, j:] + 1) % V  # every token from j on
    return changed


def _no_modulo(ids, j, V):
    changed = ids.clone()
    changed[:, j] = ids[:, j] + 1  # V - 1 becomes V: out of the vocabulary
    return changed


def _argmax_moved(out, base):
    return out.argmax(-1) != base.argmax(-1)  # (B, T): only a change of the top prediction counts


def _plogp(w, log=torch.log):
    return w * torch.where(w > 0, log(w), torch.zeros((), dtype=w.dtype))


def _ratios(*, update=lambda s: s[1:] - s[:-1], size=lambda s: s[:-1], norm=lambda x: x.norm(dim=-1),
            power=1):
    def update_ratios(stream):
        return ((norm(update(stream)) / norm(size(stream))) ** power).mean(dim=(1, 2))
    return update_ratios


def _verdicts(*, means=lambda x: x.mean(dim=1), against=lambda x, m: m[0], sigma=None, factor=lambda S: math.sqrt(2 / S),
              labels=("worse", "better", "within noise"), baseline="baseline", keep=lambda v: v):
    """ablation_verdicts with one thing done differently; the defaults are the right computation."""
    def ablation_verdicts(losses, z=2.0):
        m = means(losses)  # (C,)
        delta = m - against(losses, m)
        s = losses.var(dim=1).mean().sqrt() if sigma is None else sigma(losses)
        se = s * factor(losses.shape[1])
        floor = float(z * se)
        worse, better, within = labels
        verdicts = [baseline] + [worse if d > floor else better if d < -floor else within for d in delta[1:].tolist()]
        return {"delta": keep(delta), "se": se, "verdicts": keep(verdicts)}
    return ablation_verdicts


WRONG = [
    Wrong("future_leaks", "transposed", _leaks(transpose=True), r"transpos|\(j, i\)", named=False),
    Wrong("future_leaks", "previous_token_perturbed", _leaks(perturb=_previous_token), r"token j|perturb"),
    Wrong("future_leaks", "suffix_perturbed", _leaks(perturb=_suffix), r"one position|only token j|from j on"),
    Wrong("future_leaks", "argmax_moved", _leaks(moved=_argmax_moved), r"miss|unseen|argmax"),
    Wrong("future_leaks", "no_modulo", _leaks(perturb=_no_modulo), r"must lie in 0\.\.V-1|% vocab_size"),
    Wrong("future_leaks", "moved_in_every_sequence", _leaks(over_batch="all"), r"sequence|any"),
    Wrong("attention_entropy", "mean_over_keys", lambda w: -_plogp(w).mean(-1), r"mean|average"),
    Wrong("attention_entropy", "log10", lambda w: -_plogp(w, torch.log10).sum(-1), r"log10|base 10|natural"),
    Wrong("attention_entropy", "softmax_again", lambda w: -_plogp(torch.softmax(w, -1)).sum(-1), r"softmax"),
    Wrong("attention_entropy", "no_p_factor",
          lambda w: -torch.where(w > 0, w.log(), torch.zeros((), dtype=w.dtype)).sum(-1), r"p ln p|weight"),
    Wrong("attention_entropy", "log1p", lambda w: -(w * torch.log1p(w)).sum(-1), r"log1p|ln\(1 \+ p\)"),
    Wrong("attention_entropy", "normalised_by_ln_T_k", lambda w: -_plogp(w).sum(-1) / math.log(w.shape[-1]),
          r"ln T_k|normali"),
    Wrong("update_ratios", "divided_by_next", _ratios(size=lambda s: s[1:]), r"x_\{l\+1\}|x_l\b|after"),
    Wrong("update_ratios", "squared", _ratios(power=2), r"squar"),
    Wrong("update_ratios", "change_from_input", _ratios(update=lambda s: s[1:] - s[:1]), r"x_0|previous|cumulat"),
    Wrong("update_ratios", "per_element",
          lambda s: ((s[1:] - s[:-1]).abs() / s[:-1].abs()).mean(dim=(1, 2, 3)), r"element|per token|d_model"),
    Wrong("update_ratios", "l1_norm", _ratios(norm=lambda x: x.abs().sum(-1)), r"L1|L2"),
    Wrong("update_ratios", "std_ratio", _ratios(norm=lambda x: x.std(-1)), r"std|standard deviation"),
    Wrong("ablation_verdicts", "mean_of_stds", _verdicts(sigma=lambda x: x.std(dim=1).mean()), r"se is .*sqrt\(2 / S\)"),
    Wrong("ablation_verdicts", "variance_as_sigma", _verdicts(sigma=lambda x: x.var(dim=1).mean()), r"se is .*sigma\^2"),
    Wrong("ablation_verdicts", "whole_table_variance", _verdicts(sigma=lambda x: x.var().sqrt()),
          r"se is .*each config's sample"),
    Wrong("ablation_verdicts", "spread_of_the_means", _verdicts(sigma=lambda x: x.mean(dim=1).std()),
          r"se is .*across its S seeds"),
    Wrong("ablation_verdicts", "se_is_the_floor", _verdicts(factor=lambda S: 2 * math.sqrt(2 / S)),
          r"se is .*\(2 times it\)"),
    Wrong("ablation_verdicts", "mean_over_configs", _verdicts(means=lambda x: x.mean(dim=0)), r"delta has shape \(S,\)"),
    Wrong("ablation_verdicts", "against_the_first_seed", _verdicts(against=lambda x, m: x[0, 0]), r"delta\[0\]"),
    Wrong("ablation_verdicts", "against_the_grand_mean", _verdicts(against=lambda x, m: m.mean()), r"delta\[0\]"),
    Wrong("ablation_verdicts", "median_over_seeds", _verdicts(means=lambda x: x.median(dim=1).values),
          r"mean over the S seeds"),
    Wrong("ablation_verdicts", "labels_swapped", _verdicts(labels=("better", "worse", "within noise")),
          r"'worse' when delta > z \* se"),
    Wrong("ablation_verdicts", "baseline_within_noise", _verdicts(baseline="within noise"), r"row 0 is the baseline"),
    Wrong("ablation_verdicts", "label_with_underscore", _verdicts(labels=("worse", "better", "within_noise")),
          r"not a verdict"),
    Wrong("ablation_verdicts", "delta_as_a_list", _verdicts(keep=lambda v: v.tolist() if hasattr(v, "tolist") else v),
          r"torch\.Tensor"),
]

# Written after the probes, without looking at them again: how the probing does on mistakes it was
# not built from. `named` records what happens today.


def _leaks_loose(f, ids, vocab_size):
    T = ids.shape[1]
    base = f(ids)
    leaks = torch.zeros(T, T, dtype=torch.bool)
    for j in range(T):
        out = f(_next_token(ids, j, vocab_size))
        moved = ~torch.isclose(out, base, rtol=0.5, atol=0.0)  # "generous, to be safe from rounding"
        leaks[:, j] = moved.reshape(moved.shape[0], T, -1).any(-1).any(0) & (torch.arange(T) < j)
    return leaks


def _leaks_absolute(f, ids, vocab_size):
    T = ids.shape[1]
    base = f(ids)
    leaks = torch.zeros(T, T, dtype=torch.bool)
    for j in range(T):
        out = f(_next_token(ids, j, vocab_size))
        moved = (out - base).abs().sum(-1) > 1e-6  # an absolute threshold, whatever the outputs' size
        leaks[:, j] = moved.any(0) & (torch.arange(T) < j)
    return leaks


HELD_OUT = [
    Wrong("future_leaks", "tolerance_too_loose", _leaks_loose, r"miss"),
    Wrong("future_leaks", "absolute_threshold", _leaks_absolute, r"reported|tolerance"),
    Wrong("attention_entropy", "eps_too_large", lambda w: -(w * torch.log(w + 1e-3)).sum(-1), r"each term|ln p"),
    Wrong("attention_entropy", "collision_entropy", lambda w: -torch.log((w * w).sum(-1)), r"p ln p|each term", named=False),
    Wrong("update_ratios", "per_sequence_norm",
          lambda s: (torch.linalg.norm(s[1:] - s[:-1], dim=(-2, -1)) / torch.linalg.norm(s[:-1], dim=(-2, -1)))
          .mean(dim=1), r"per token|each sequence|\(T, d_model\)"),
    Wrong("update_ratios", "median", lambda s: ((s[1:] - s[:-1]).norm(dim=-1) / s[:-1].norm(dim=-1))
          .flatten(1).median(dim=1).values, r"median|mean", named=False),
    Wrong("update_ratios", "plus_one_in_denominator",
          lambda s: ((s[1:] - s[:-1]).norm(dim=-1) / (s[:-1].norm(dim=-1) + 1)).mean(dim=(1, 2)),
          r"denominator|\+ 1", named=False),
]
