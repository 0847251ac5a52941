"""Chapter 09's reference diagnostics against oracles: torch's Categorical entropy and autograd
Jacobians, closed forms (ln T, exact ratios), chapter 04's residual_norms and chapter 00's shape
map; and the eight planted bugs: each runs and trains, each is found by its diagnostic, none is
named by its model's class, repr or attribute names."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from torch.distributions import Categorical

from helpers import bugs
from helpers import diagnostics as dg
from helpers.attention import causal_mask
from helpers.blocks import ModelConfig, build_model
from helpers.norms import residual_norms
from helpers.numerics import assert_close
from helpers.shapes import ShapeError
from helpers.training import train

# Tiny models: one torch thread is several times faster on a busy 2-core CPU (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")

def _ids(B, T, V, seed=0):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def _model(**kw):
    torch.manual_seed(0)
    return build_model(ModelConfig(**{"vocab_size": 23, "d_model": 16, "n_heads": 2, "n_layers": 2,
                                      "max_seq_len": 32, **kw})).double().eval()


# ------------------------------------------------------------------------------------------------
# Entropy
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_entropy_matches_torch_categorical(dtype):
    scores = torch.randn(2, 3, 5, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    mask = torch.ones(5, 7, dtype=torch.bool).tril(diagonal=2)  # zeros in most rows
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    expected = Categorical(probs=weights).entropy()
    assert_close(dg.attention_entropy(weights), expected, n=7)
    assert_close(dg.head_entropy(weights), expected.mean(dim=(0, 2)), n=7 * 10)


def test_entropy_maxima_are_ln_T_and_ln_of_the_keys_a_causal_query_sees():
    T = 9
    uniform = torch.full((1, 1, T, T), 1.0 / T, dtype=torch.float64)
    assert_close(dg.attention_entropy(uniform)[0, 0], torch.full((T,), math.log(T), dtype=torch.float64), n=T)
    assert dg.max_entropy(T) == math.log(T)
    causal = causal_mask(T).double() / causal_mask(T).sum(-1, keepdim=True)  # uniform over the seen keys
    assert_close(dg.attention_entropy(causal), dg.causal_max_entropy(T), n=T)
    one_hot = torch.eye(T, dtype=torch.float64)
    assert torch.equal(dg.attention_entropy(one_hot), torch.zeros(T, dtype=torch.float64))


def test_entropy_table_has_one_row_per_layer_and_one_column_per_head():
    model = _model(n_layers=3, n_heads=4)
    table = dg.entropy_table(model, _ids(2, 10, 23))
    assert table.shape == (3, 4)
    assert bool((table >= 0).all()) and bool((table <= math.log(10) + 1e-9).all())


# ------------------------------------------------------------------------------------------------
# Residual stream
# ------------------------------------------------------------------------------------------------


def test_stream_norms_match_chapter_04s_residual_norms():
    model = _model(n_layers=3)
    ids = _ids(2, 8, 23)
    stream = dg.residual_stream(model, ids)
    assert stream.shape == (4, 2, 8, 16)
    assert_close(stream_norms := dg.stream_norms(stream), residual_norms(stream[0], list(model.blocks)), n=16)
    assert stream_norms.shape == (4,)
    # the stream's last entry, through the final norm and the head, is the model's output
    assert_close(model.final_norm(stream[-1]) @ model.lm_head.weight.T, model(ids), n=16)


def test_update_ratios_closed_form():
    x = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    stream = torch.stack([x, 1.5 * x, -1.5 * x])  # x1 - x0 = 0.5 x0; x2 - x1 = -3 x1 / 1.5 * ... = -2 x1
    assert_close(dg.update_ratios(stream), torch.tensor([0.5, 2.0], dtype=torch.float64), n=7)
    with pytest.raises(ShapeError, match="L >= 1"):
        dg.update_ratios(x[None])


def test_residual_stream_of_an_encoder_decoders_decoder():
    model = _model(kind="encoder-decoder")
    src, tgt = _ids(2, 6, 23, 1), _ids(2, 5, 23, 2)
    stream = dg.residual_stream(model, tgt, model.decoder, call=lambda t: model(src, t))
    assert stream.shape == (3, 2, 5, 16)


# ------------------------------------------------------------------------------------------------
# Leakage tests
# ------------------------------------------------------------------------------------------------

KINDS = [{"kind": "decoder", "positions": p} for p in ("none", "learned", "sinusoidal", "rope", "alibi", "relative")]
KINDS += [{"kind": "encoder"}, {"kind": "encoder-decoder"}]


@pytest.mark.parametrize("config", KINDS, ids=lambda c: "-".join(c.values()))
@pytest.mark.parametrize("method", ["perturbation", "gradient"])
def test_healthy_models_of_every_kind_and_position_method_do_not_leak(config, method):
    model = _model(**config)
    src = _ids(2, 6, 23, 3) if config["kind"] == "encoder-decoder" else None
    report = dg.leak_test(model, _ids(2, 7, 23), method=method, src_ids=src)
    assert report.pairs == () and not report.leaks
    if config["kind"] != "encoder":  # a causal stack: the past does reach later positions
        moved = report.influence if method == "perturbation" else report.influence > 0
        assert bool(moved.tril(-1).any())


@pytest.mark.parametrize("positions", ["learned", "rope", "alibi"])
@pytest.mark.parametrize("method", ["perturbation", "gradient"])
def test_a_decoder_without_its_causal_mask_leaks_every_future_pair(positions, method):
    model = _model(positions=positions, causal=False)
    report = dg.leak_test(model, _ids(2, 6, 23), method=method)
    assert set(report.pairs) == {(i, j) for i in range(6) for j in range(6) if j > i}


def test_gradient_influence_matches_the_jacobian():
    model = _model()
    ids = _ids(1, 5, 23)
    grad = dg.influence_by_gradient(lambda x: model(x), model.blocks[0], ids)
    h0 = dg.residual_stream(model, ids)[0]  # (1, 5, 16)

    def from_stream(h):
        for block in model.blocks:
            h = block(h)
        return (model.final_norm(h) @ model.lm_head.weight.T).sum(-1)  # (1, 5): sum over the vocabulary

    jac = torch.autograd.functional.jacobian(from_stream, h0)  # (1, 5, 1, 5, 16)
    assert_close(grad, jac[0, :, 0].norm(dim=-1), n=16 * 23)


def test_perturbation_uses_a_tolerance_not_exact_equality():
    toy = bugs.PrefixSums(0, 11, ((1, 4),), wobble=True)
    moved = dg.influence_by_perturbation(toy, _ids(2, 6, 11), 11)
    expected = causal_mask(6).clone()
    expected[1, 4] = True
    assert torch.equal(moved, expected)
    assert dg.leaking_pairs(moved, causal_mask(6)) == [(1, 4)]


# ------------------------------------------------------------------------------------------------
# Shapes, heads, ablations
# ------------------------------------------------------------------------------------------------


def test_shape_report_names_the_first_tensor_that_differs_from_the_plan():
    model = _model(n_heads=4)
    ids = _ids(2, 6, 23)
    assert dg.shape_report(model, ids).first_mismatch is None
    report = dg.shape_report(model, ids, n_heads=2)  # planned 2 heads of 8, built 4 heads of 4
    assert report.first_mismatch == "Q"
    assert "<- differs" in str(report)
    assert dg.shape_report(model, ids, d_ff=32).first_mismatch == "mlp_hidden"


def test_head_scores_on_known_patterns():
    T, P = 8, 4
    prev = torch.zeros(1, 2, T, T, dtype=torch.float64)
    prev[0, 0, 0, 0] = 1.0
    prev[0, 0, torch.arange(1, T), torch.arange(T - 1)] = 1.0  # head 0 looks one token back
    prev[0, 1] = causal_mask(T).double() / causal_mask(T).sum(-1, keepdim=True)  # head 1: uniform
    scores = dg.previous_token_score(prev)
    expected_uniform = sum(1 / (i + 1) for i in range(1, T)) / (T - 1)
    assert_close(scores, torch.tensor([1.0, expected_uniform], dtype=torch.float64), n=T)
    ind = torch.zeros(1, 1, T, T, dtype=torch.float64)
    ind[0, 0, torch.arange(P, T), torch.arange(1, T - P + 1)] = 1.0  # query i -> key i - P + 1
    assert_close(dg.induction_score(ind, P), torch.ones(1, dtype=torch.float64))
    assert float(dg.induction_score(prev, P)[0]) == 0.0
    seq = dg.repeated_random_tokens(3, P, 50, torch.Generator().manual_seed(0))
    assert seq.shape == (3, 2 * P) and torch.equal(seq[:, :P], seq[:, P:])


def test_ablation_is_deterministic_for_a_seed():
    data = _ids(1, 400, 23)[0]
    configs = {"2 heads": ModelConfig(vocab_size=23, d_model=16, n_heads=2, n_layers=1, max_seq_len=16),
               "post-LN": ModelConfig(vocab_size=23, d_model=16, n_heads=2, n_layers=1, max_seq_len=16,
                                      norm_placement="post")}
    kw = dict(steps=3, batch_size=4, block_size=8, eval_batches=1)
    first, second = dg.run_ablation(configs, data, data, **kw), dg.run_ablation(configs, data, data, **kw)
    assert [(r.name, r.params, r.val_loss) for r in first] == [(r.name, r.params, r.val_loss) for r in second]
    assert first[0].params != first[1].params or first[0].val_loss != first[1].val_loss
    assert "post-LN" in dg.ablation_table(first)


@pytest.mark.parametrize("S", [2, 3, 5])
def test_ablation_verdicts_match_pythons_statistics_module(S):
    """delta, the pooled standard error and the verdicts against statistics.fmean / statistics.variance
    (sample variance, S - 1), computed one config at a time; and ablation_summary says the same."""
    gen = torch.Generator().manual_seed(S)
    losses = 2.0 + 0.05 * torch.randn(6, S, generator=gen, dtype=torch.float64)  # (C, S)
    losses[1] += 0.5  # far worse
    losses[2] -= 0.5  # far better
    rows = [[float(v) for v in row] for row in losses]
    means = [statistics.fmean(row) for row in rows]
    se = math.sqrt(statistics.fmean(statistics.variance(row) for row in rows)) * math.sqrt(2 / S)
    got = dg.ablation_verdicts(losses, 2.5)
    assert_close(got["delta"], torch.tensor([m - means[0] for m in means], dtype=torch.float64), n=S)
    assert_close(got["se"], torch.tensor(se, dtype=torch.float64), n=S * 6)
    expected = ["baseline"] + ["worse" if m - means[0] > 2.5 * se else "better" if m - means[0] < -2.5 * se
                               else "within noise" for m in means[1:]]
    assert got["verdicts"] == expected and expected[1:3] == ["worse", "better"]
    summary = dg.ablation_summary({s: [dg.AblationRow(str(c), 0, rows[c][s], 0.0) for c in range(6)]
                                   for s in range(S)}, z=2.5)
    assert [row["verdict"] for row in summary["configs"].values()] == expected
    assert math.isclose(summary["se"], se, rel_tol=1e-12) and math.isclose(summary["noise_floor"], 2.5 * se, rel_tol=1e-12)
    with pytest.raises(ShapeError, match="S >= 2 seeds"):
        dg.ablation_verdicts(losses[:, :1])
    with pytest.raises(ShapeError, match=r"\(C, S\)"):
        dg.ablation_verdicts(losses[0])


# ------------------------------------------------------------------------------------------------
# The bug hunt
# ------------------------------------------------------------------------------------------------

# which checkup number gives each bug away (the healthy model's are all small or ~ its own)
SIGNATURE = {
    "mask_leak": lambda c: c["above_diagonal"] > 0.1,
    "softmax_axis": lambda c: c["row_sum_error"] > 0.1,
    "no_residual": lambda c: c["update_ratio"] > 1.0,
    "norm_axis": lambda c: c["leaks"] > 0 and c["above_diagonal"] == 0 and c["row_sum_error"] < 1e-5,
    "rope_on_v": lambda c: c["offset_change"] > 0.1,
    "no_scale": lambda c: c["entropy"] < 1.0,
    "untied": lambda c: c["extra_params"] > 0,
    "padding_query": lambda c: c["padding_change"] > 0.1 and c["leaks"] == 0,
}


def test_the_healthy_model_passes_every_diagnostic():
    card = bugs.checkup(bugs.healthy_model())
    assert not any(sign(card) for sign in SIGNATURE.values()), card


@pytest.mark.parametrize("bug", sorted(bugs.BUGS))
def test_each_bug_is_found_by_its_diagnostic(bug):
    card = bugs.checkup(bugs.broken_model(bug))
    assert [b for b, sign in SIGNATURE.items() if sign(card)] == [bug], card


@pytest.mark.parametrize("bug", sorted(bugs.BUGS))
def test_each_broken_model_runs_and_trains_without_an_exception(bug):
    model = bugs.broken_model(bug)
    data = _ids(1, 300, model.config.vocab_size)[0]
    history = train(model, data, data, steps=2, batch_size=2, block_size=8, eval_batches=1, progress=False)
    assert all(math.isfinite(v) for v in history.train_loss)
    assert model(_ids(2, 9, 48), torch.tensor([9, 4])).shape == (2, 9, 48)


def test_hunt_models_do_not_name_their_bugs():
    models = bugs.hunt_models(0)
    assert sorted(models) == list("ABCDEFGH")
    assert sorted(bugs._assignment(0).values()) == sorted(bugs.BUGS)
    reprs = {repr(m) for m in models.values()}
    assert len(reprs) == 1 and not any(word in next(iter(reprs)) for word in ("leak", "bug", "broken", "wrong"))
    names = {tuple(n for n, _ in m.named_modules()) for m in models.values()}
    assert len(names) == 1
    assert {type(m).__name__ for m in models.values()} == {"Model"}
    for m in models.values():
        for module in m.modules():
            if "forward" in vars(module):  # a planted forward carries the class's own name
                assert module.forward.__qualname__ == type(module).forward.__qualname__
    assert bugs._assignment(0) != bugs._assignment(1)
