"""Chapter 09's checks: they accept correct answers written independently, name every catalogued
mistake with its own message, refuse the reference and torch.special.entr, and grade the bug hunt."""

from __future__ import annotations

import math
import re

import pytest
import torch

import helpers.checks.diagnostics as checks
import helpers.diagnostics
from helpers import bugs
from helpers.checks import CheckFailed
from helpers.numerics import assert_close

from . import loops_diagnostics as loops
from .hidden import calls_of, hidden_inputs
from .uncatalogued.ch09_diagnostics import _leaks  # a complete leak test, one thing done differently

# Tiny models: one torch thread is several times faster on a busy 2-core CPU (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")

CHECKS = {
    "future_leaks": checks.check_future_leaks,
    "attention_entropy": checks.check_attention_entropy,
    "update_ratios": checks.check_update_ratios,
    "ablation_verdicts": checks.check_ablation_verdicts,
}

# The inputs of the first hidden call of each check, read from the solution (tests/hidden.py).
HIDDEN = hidden_inputs("diagnostics", CHECKS)
# The mistakes the chapter's issue asked each check's catalogue to name (tests/test_catalogues.py).
ISSUE_LIST = {
    "future_leaks": {"last_token_only", "exact_equality", "after_not_before"},
    "attention_entropy": {"bits", "query_axis"},
    "update_ratios": {"norm_over_T"},
    # issue 26 item 5 (an exercise for ablations)
    "ablation_verdicts": {"no_sqrt_2_over_S", "population_variance", "per_config_variance", "sign_flipped",
                          "no_noise_floor"},
}


def entropy_with_xlogy(weights):
    return -torch.special.xlogy(weights, weights).sum(-1)


def ratios_with_linalg(stream):
    delta = torch.linalg.vector_norm(stream.diff(dim=0), dim=-1)
    return (delta / torch.linalg.vector_norm(stream[:-1], dim=-1)).flatten(1).mean(-1)


def leaks_with_isclose(f, ids, vocab_size):
    T = ids.shape[1]
    base = f(ids)
    out = torch.zeros(T, T, dtype=torch.bool)
    for j in range(T):
        x = ids.clone()
        x[:, j] = (x[:, j] + 1) % vocab_size
        moved = ~torch.isclose(f(x), base, rtol=1e-5, atol=1e-6 * float(base.abs().max()))
        out[:, j] = moved.reshape(*moved.shape[:2], -1).any(-1).any(0) & (torch.arange(T) < j)
    return out


@pytest.mark.parametrize("variant", ["visible", "hidden"])
def test_other_correct_answers_pass(variant, capsys):
    kw = (lambda n: HIDDEN[n]) if variant == "hidden" else (lambda n: {})
    checks.check_attention_entropy(entropy_with_xlogy, **kw("attention_entropy"))
    checks.check_update_ratios(ratios_with_linalg, **kw("update_ratios"))
    checks.check_future_leaks(leaks_with_isclose, **kw("future_leaks"))
    assert capsys.readouterr().out.count("✓") == 3


def test_reference_and_torch_entr_are_refused():
    from helpers.diagnostics import attention_entropy, update_ratios

    with pytest.raises(CheckFailed, match="not your own function"):
        checks.check_attention_entropy(attention_entropy)
    with pytest.raises(CheckFailed, match="calls helpers.diagnostics.update_ratios"):
        checks.check_update_ratios(lambda stream: update_ratios(stream))
    with pytest.raises(CheckFailed, match="special_entr"):
        checks.check_attention_entropy(lambda w: torch.special.entr(w).sum(-1))


def test_a_leak_test_that_misses_every_leak_is_told_where():
    with pytest.raises(CheckFailed, match="without its causal mask"):
        checks.check_future_leaks(lambda f, ids, V: torch.zeros(ids.shape[1], ids.shape[1], dtype=torch.bool))


# ------------------------------------------------------------------------------------------------
# The bug hunt
# ------------------------------------------------------------------------------------------------


def find_bug(model, reference):
    """The bug hunt solved with diagnostics written here (loops_diagnostics), not the course's."""
    V = model.config.vocab_size
    ids = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(0))  # (B, T)
    with torch.no_grad():
        logits, weights = model(ids, return_weights=True)
        _, healthy_weights = reference(ids, return_weights=True)
        if sum(p.numel() for p in model.parameters()) > sum(p.numel() for p in reference.parameters()):
            return "untied"
        if max(float((w.sum(-1) - 1).abs().max()) for w in weights) > 1e-3:
            return "softmax_axis"
        if max(float(w.triu(1).abs().max()) for w in weights) > 1e-3:
            return "mask_leak"
        if loops.future_leaks(model, ids, V).any():
            return "norm_axis"
        padded = ids.clone()
        padded[:, :6] = (padded[:, :6] + 1) % V
        lengths = torch.tensor([6, 6])
        if (model(padded, lengths)[:, 6:] - model(ids, lengths)[:, 6:]).abs().max() > 1e-3:
            return "padding_query"
        if (model(ids, offset=5) - logits).abs().max() > 1e-3:
            return "rope_on_v"
        entropy = torch.stack([loops.attention_entropy(w).mean() for w in weights]).mean()
        healthy = torch.stack([loops.attention_entropy(w).mean() for w in healthy_weights]).mean()
        if entropy < 0.6 * healthy:
            return "no_scale"
        stream = helpers.diagnostics.residual_stream(model, ids)
        if loops.update_ratios(stream)[0] > 0.9:
            return "no_residual"
    return None


_ANSWERS: dict[bytes, str | None] = {}


def _find_bug_once(model, reference):
    """find_bug, each hunt model diagnosed once per test session (its embedding's bytes identify it)."""
    key = model.net.tok_emb.weight.detach().numpy().tobytes()
    if key not in _ANSWERS:
        _ANSWERS[key] = find_bug(model, reference)
    return _ANSWERS[key]


def _renamed(find, rename):
    find = _find_bug_once if find is find_bug else find
    return lambda model, reference: rename(find(model, reference))


_NEXT = dict(zip(sorted(bugs.BUGS), sorted(bugs.BUGS)[1:] + sorted(bugs.BUGS)[:1]))  # every name moved on


def test_bug_hunt_accepts_a_find_bug_that_diagnoses(capsys):
    checks.check_bug_hunt(_find_bug_once)
    checks.check_bug_hunt(_find_bug_once, secret=2026)  # the hidden test's hunt
    assert capsys.readouterr().out.count("✓ all 8 bugs found") == 2


def test_the_visible_bug_hunt_test_checks_the_form_only(capsys):
    checks.check_bug_hunt(_renamed(find_bug, _NEXT.get), grade=False)  # every answer wrong, each bug once
    assert "the hidden test grades it on other models" in capsys.readouterr().out
    with pytest.raises(CheckFailed, match="0 of 8 right"):
        checks.check_bug_hunt(_renamed(find_bug, _NEXT.get), secret=2026)
    with pytest.raises(CheckFailed, match="returned 'no_scale' for more than one"):
        checks.check_bug_hunt(_renamed(find_bug, lambda bug: "no_scale" if bug == "no_residual" else bug),
                              grade=False)


def test_the_graded_hunt_is_not_the_visible_one_nor_the_named_models():
    """The hidden test's key is not bugs._assignment of the visible seed, and no hunt model has the weights
    (so the outputs) of a named broken_model: matching outputs against the named bugs finds nothing."""
    secret = checks.hunt_seed(2026)
    assert bugs._assignment(secret) != bugs._assignment(0)
    ids = torch.randint(0, 48, (1, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        named = [bugs.broken_model(bug, seed)(ids) for bug in bugs.BUGS for seed in range(3)]
        for model in bugs.hunt_models(0).values():
            out = model(ids)
            assert not any(torch.allclose(out, other) for other in named)


def _by_checkup(model, reference):
    card = bugs.checkup(model)
    return "untied" if card["extra_params"] > 0 else "mask_leak"


def _by_output_matching(model, reference):
    ids = torch.randint(0, 48, (1, 6), generator=torch.Generator().manual_seed(1))
    for bug in bugs.BUGS:
        named = bugs.broken_model(bug)
        named.load_state_dict(model.state_dict(), strict=False)
        if torch.allclose(named(ids), model(ids)):
            return bug
    return None


def _with_reference_diagnostics(model, reference):
    ids = torch.randint(0, 48, (2, 8), generator=torch.Generator().manual_seed(1))
    return "mask_leak" if helpers.diagnostics.leak_test(model, ids).pairs else "no_scale"


@pytest.mark.parametrize("answer, refused", [
    (_by_checkup, "helpers.bugs.checkup"),
    (_by_output_matching, "helpers.bugs.broken_model"),
    (_with_reference_diagnostics, "helpers.diagnostics.leak_test"),
], ids=["checkup", "output-matching", "reference-leak-test"])
def test_find_bug_must_use_the_learners_own_diagnostics(answer, refused):
    with pytest.raises(CheckFailed, match=rf"find_bug calls {re.escape(refused)}, which is what this exercise asks"):
        checks.check_bug_hunt(answer, grade=False)


def test_bug_hunt_refuses_a_dict_of_names():
    with pytest.raises(CheckFailed, match=r"asks for a function find_bug\(model, reference\)"):
        checks.check_bug_hunt(dict(bugs._assignment(0)))


def test_numbers_accept_the_right_values_and_name_the_known_wrong_ones(capsys):
    right = {"max_entropy_1024": math.log(1024), "causal_max_query_9": math.log(10), "leak_test_passes": 129}
    checks.check_diagnostics_numbers(**right)
    assert "✓" in capsys.readouterr().out
    for key, wrong, message in (("max_entropy_1024", 10, "in bits"), ("causal_max_query_9", math.log(9), "ten keys"),
                                ("leak_test_passes", 128, "plus the unperturbed run")):
        with pytest.raises(CheckFailed, match=message):
            checks.check_diagnostics_numbers(**{**right, key: wrong})


def test_bug_hunt_names_the_diagnostic_for_each_wrong_choice():
    swap = {"mask_leak": "norm_axis", "norm_axis": "mask_leak"}
    with pytest.raises(CheckFailed) as info:
        checks.check_bug_hunt(_renamed(find_bug, lambda bug: swap.get(bug, bug)), secret=2026)
    message = str(info.value)
    assert message.startswith("6 of 8 right")
    assert "the model with the bug 'mask_leak' was named 'norm_axis'" in message
    assert "the model with the bug 'norm_axis' was named 'mask_leak'" in message
    for bug in swap:
        assert bugs.BUGS[bug][1] in message  # the diagnostic that finds the real bug


def test_bug_hunt_refuses_missing_and_unknown_choices():
    with pytest.raises(CheckFailed, match="find_bug returned no bug for model"):
        checks.check_bug_hunt(_renamed(find_bug, lambda bug: None if bug == "untied" else bug))
    with pytest.raises(CheckFailed, match="returned 'cosmic rays' for model ., which is not one of the bugs"):
        checks.check_bug_hunt(_renamed(find_bug, lambda bug: "cosmic rays" if bug == "untied" else bug))


def test_a_hunt_that_fails_on_a_wrong_exercise_1_says_to_fix_exercise_1_first():
    """find_bug runs on the learner's own future_leaks: a wrong one is named, not the models."""
    import inspect
    namespace = {"torch": torch, "helpers": helpers, "loops": loops,
                 "future_leaks": lambda f, ids, V: torch.zeros(ids.shape[1], ids.shape[1], dtype=torch.bool),
                 "attention_entropy": loops.attention_entropy, "update_ratios": loops.update_ratios}
    source = inspect.getsource(find_bug).replace("loops.future_leaks", "future_leaks")
    exec(compile(source, "<notebook cell>", "exec"), namespace)
    with pytest.raises(CheckFailed, match=r"^find_bug uses your `future_leaks` from exercise 1, which is not right "
                                          r"yet: .*fix exercise 1 first"):
        checks.check_bug_hunt(namespace["find_bug"], secret=2026)


def _plus_one_unwrapped(ids, j, V):
    changed = ids.clone()
    changed[:, j] = ids[:, j] + 1  # WRONG: id V - 1 becomes V, past the vocabulary
    return changed


def _in_place(ids, j, V):
    ids[:, j] = (ids[:, j] + 1) % V  # WRONG: the caller's ids are changed (and never put back)
    return ids


@pytest.mark.parametrize("variant", ["visible", "hidden"])
def test_leak_test_messages_name_the_cause(variant):
    kwargs = HIDDEN["future_leaks"] if variant == "hidden" else {}
    with pytest.raises(CheckFailed, match=r"^future_leaks gave the model token ids from \d+ to (\d+), but its "
                                          r"vocabulary has the ids 0 \.\. \d+ .*wrap it around, changed\[:, j\] = "
                                          r"\(ids\[:, j\] \+ 1\) % vocab_size$"):
        checks.check_future_leaks(_leaks(perturb=_plus_one_unwrapped), **kwargs)
    with pytest.raises(CheckFailed, match=r"^future_leaks modified its input ids in place; change a copy instead "
                                          r"\(ids\.clone\(\)\)") as info:
        checks.check_future_leaks(_leaks(perturb=_in_place), **kwargs)
    assert "masked_fill" not in str(info.value)


def test_a_models_repr_is_one_line_in_messages():
    """An error raised with a model among the inputs shows the model in one line, not its 25-line repr."""
    def crashes(f, ids, vocab_size):
        return f(ids.float())  # the model refuses float ids

    with pytest.raises(CheckFailed) as info:
        checks.check_future_leaks(crashes)
    message = str(info.value)
    assert "\n" not in message and re.search(r"f=TinyDecoder\(2 blocks, [\d,]+ parameters\)", message), message


# ------------------------------------------------------------------------------------------------
# Ablation verdicts
# ------------------------------------------------------------------------------------------------


def verdicts_with_torch_where(losses, z=2.0):
    """Another correct answer: var_mean for the pooled noise, torch.where for the verdicts, se a 0-d tensor."""
    variances, means = torch.var_mean(losses, dim=1)  # (C,) each
    delta = means - means[:1]
    se = (variances.sum() / losses.shape[0] * 2 / losses.shape[1]).sqrt()
    code = torch.where(delta > z * se, 1, torch.where(delta < -z * se, -1, 0)).tolist()
    return {"verdicts": ["baseline"] + [{1: "worse", -1: "better", 0: "within noise"}[k] for k in code[1:]],
            "se": se, "delta": delta}


@pytest.mark.parametrize("variant", ["visible", "hidden"])
def test_ablation_verdicts_accept_another_correct_answer(variant, capsys):
    checks.check_ablation_verdicts(verdicts_with_torch_where, **(HIDDEN["ablation_verdicts"] if variant == "hidden" else {}))
    assert "✓ ablation_verdicts" in capsys.readouterr().out


def test_ablation_verdicts_refuse_the_reference():
    with pytest.raises(CheckFailed, match="not your own function"):
        checks.check_ablation_verdicts(helpers.diagnostics.ablation_verdicts)

    def through_the_summary(losses, z=2.0):
        runs = {s: [helpers.diagnostics.AblationRow(str(c), 0, float(losses[c, s]), 0.0) for c in range(losses.shape[0])]
                for s in range(losses.shape[1])}
        summary = helpers.diagnostics.ablation_summary(runs, z=z)
        delta = torch.tensor([row["delta"] for row in summary["configs"].values()], dtype=losses.dtype)
        return {"delta": delta, "se": summary["se"], "verdicts": [row["verdict"] for row in summary["configs"].values()]}

    with pytest.raises(CheckFailed, match="calls helpers.diagnostics.ablation_summary"):
        checks.check_ablation_verdicts(through_the_summary)


def test_ablation_tables_hold_what_the_exercise_promises():
    """The visible and hidden tables: a control row with delta exactly 0, rows 4 % inside and outside the
    noise floor, and every verdict present; the check refuses sizes where a catalogued factor cannot show."""
    from helpers.checks.diagnostics import _FAR, _NEAR, _ablation_losses

    for kwargs in ({}, *(call.kwargs for call in calls_of("diagnostics", "ablation_verdicts",
                                                          checks.check_ablation_verdicts))):
        C, S, z = kwargs.get("C", 5), kwargs.get("S", 3), kwargs.get("z", 2.0)
        dtype = kwargs.get("dtype", torch.float32)
        gen = torch.Generator().manual_seed(kwargs.get("seed", 0))
        far = helpers.diagnostics.ablation_verdicts(_ablation_losses(gen, C, S, z, _FAR, dtype, control=False), z)
        near_losses = _ablation_losses(gen, C, S, z, _NEAR, dtype, control=True)
        near = helpers.diagnostics.ablation_verdicts(near_losses, z)
        assert torch.equal(near_losses[1], near_losses[0]) and float(near["delta"][1]) == 0.0
        multiples = (near["delta"] / (z * near["se"])).double()
        # the tables are drawn in float64 and cast (float32 visible): 1e-4 is far inside the rows' 4 % margins
        assert_close(multiples, torch.tensor(_NEAR[:C], dtype=torch.float64), rtol=1e-4, atol=1e-4)
        assert {"worse", "better", "within noise"} <= set(far["verdicts"]) | set(near["verdicts"])
    with pytest.raises(ValueError, match="S >= 3"):
        checks.check_ablation_verdicts(verdicts_with_torch_where, S=2)


def test_ablation_verdicts_name_what_is_wrong():
    def changed(**edits):
        def wrong(losses, z=2.0):
            out = verdicts_with_torch_where(losses, z)
            return {**out, **{k: f(out, losses, z) for k, f in edits.items()}}
        return wrong

    cases = [
        (changed(verdicts=lambda o, x, z: ["within noise"] + o["verdicts"][1:]), r"verdicts\[0\] is 'within noise'"),
        (changed(verdicts=lambda o, x, z: [v.replace(" ", "_") for v in o["verdicts"]]), r"'within_noise' is not a verdict"),
        (changed(se=lambda o, x, z: o["se"].reshape(1)), r"se has shape \(1,\); expected one number"),
        (changed(se=lambda o, x, z: o["se"].to(torch.bfloat16)), r"se is .*sqrt\(2 / S\)"),  # rounded past the tolerance
        (changed(delta=lambda o, x, z: o["delta"].tolist()), r"delta should be a torch\.Tensor"),
        (changed(verdicts=lambda o, x, z: o["verdicts"][1:]), r"a list of C = 5 strings"),
        (lambda losses, z=2.0: [1.0], r"should return a dict with the keys"),
    ]
    for answer, message in cases:
        with pytest.raises(CheckFailed, match=message):
            checks.check_ablation_verdicts(answer)
    # se is asked for as a number: a Python float, or a 0-d tensor in another dtype, is accepted
    checks.check_ablation_verdicts(changed(se=lambda o, x, z: float(o["se"])), **HIDDEN["ablation_verdicts"])
    checks.check_ablation_verdicts(changed(se=lambda o, x, z: torch.tensor(float(o["se"]), dtype=torch.float32)))
    checks.check_ablation_verdicts(changed(se=lambda o, x, z: o["se"].double()))


def test_an_answer_that_ignores_z_passes_the_visible_test_and_fails_the_hidden_one(capsys):
    """z = 2 hard-coded: right on the visible tables (z = 2), named on the hidden ones (z = 3) by the row it
    decides wrongly, with its delta against the floor."""
    def fixed_z(losses, z=2.0):
        return verdicts_with_torch_where(losses, 2.0)

    checks.check_ablation_verdicts(fixed_z)
    assert "✓" in capsys.readouterr().out
    with pytest.raises(CheckFailed, match=r"config \d has delta = [-+][\d.]+ against a noise floor z \* se = [\d.]+ "
                                          r"\(z = 3\.0\): expected 'within noise', got '(worse|better)'"):
        checks.check_ablation_verdicts(fixed_z, **HIDDEN["ablation_verdicts"])
