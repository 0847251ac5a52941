"""The probing rule of helpers.checks.core: a probe (a systematic variant of the reference) is named
only when the learner's output clearly is that variant, and never for an answer wrong in another way."""

from __future__ import annotations

import pytest
import torch

from helpers.checks import CheckFailed
from helpers.checks.core import (
    PROBE_MARGIN,
    PROBE_NEAR,
    Case,
    Mistake,
    Probe,
    check_function,
    closest_probe,
    output_distance,
)


def _reference(x, w):
    return x @ w.T / x.shape[-1] ** 0.5


PROBES = (
    Probe("scale_T", "scaled by sqrt(T)", lambda x, w: x @ w.T / x.shape[-2] ** 0.5),
    Probe("untransposed", "w is used untransposed", lambda x, w: x @ w / x.shape[-1] ** 0.5),
    Probe("abs", "the absolute value was taken", lambda x, w: (x @ w.T).abs() / x.shape[-1] ** 0.5),
)
CATALOGUE = (Mistake("no_scale", "the scale is missing", lambda x, w: x @ w.T),)


def _cases():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 9, 4, generator=gen, dtype=torch.float64)
    w = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    return [Case((x, w), {"B": 2, "T": 9, "d": 4}, ("x", "w"))]


def _message(fn) -> str:
    with pytest.raises(CheckFailed) as info:
        check_function(fn, name="f", reference=_reference, cases=_cases(), mistakes=CATALOGUE, probes=PROBES)
    return str(info.value)


@pytest.mark.parametrize("probe", PROBES, ids=lambda p: p.key)
def test_an_exact_probe_is_named_and_no_other(probe):
    message = _message(probe.impl)
    assert probe.message in message and "not exactly" not in message
    assert not [p for p in PROBES if p is not probe and p.message in message]


def test_a_probe_with_a_small_second_slip_is_named_as_near():
    message = _message(lambda x, w: PROBES[0].impl(x, w) * 1.01)
    assert PROBES[0].message in message and "not exactly" in message


def test_a_catalogued_mistake_wins_over_probes():
    message = _message(CATALOGUE[0].impl)
    assert message.endswith(CATALOGUE[0].message)
    assert not [p for p in PROBES if p.message in message]


@pytest.mark.parametrize("wrong", [
    lambda x, w: PROBES[0].impl(x, w.T),  # two probes' mistakes at once: neither alone is what happened
    lambda x, w: _reference(x, w) + 0.3 * torch.sin(3 * x @ w.T),  # wrong in a way no probe describes
    lambda x, w: _reference(x, w) * 1.02 + 0.01,  # nearly right: closer to the reference than to any probe
], ids=["two_mistakes", "unrelated", "nearly_right"])
def test_no_probe_is_blamed_for_an_answer_wrong_in_another_way(wrong):
    message = _message(wrong)
    assert not [p for p in PROBES if p.message in message]
    case = _cases()[0]
    assert closest_probe(wrong(*case.args), _reference(*case.args), PROBES, case, ("output",), "f") is None


def test_the_thresholds_separate_the_cases_above():
    """The figures behind PROBE_NEAR and PROBE_MARGIN on this example: a 1% slip on top of a probe
    sits at about 0.01 from it and about 1 from the reference and the other probes; two mistakes at
    once sit far from every probe; a nearly right answer sits nearer the reference than any probe."""
    case = _cases()[0]
    expected = _reference(*case.args)
    slip = PROBES[0].impl(*case.args) * 1.01
    near = output_distance(slip, PROBES[0].impl(*case.args))
    others = [output_distance(slip, p.impl(*case.args)) for p in PROBES[1:]] + [output_distance(slip, expected)]
    assert near < PROBE_NEAR and near < PROBE_MARGIN * min(others)
    both = PROBES[0].impl(case.args[0], case.args[1].T)
    assert min(output_distance(both, p.impl(*case.args)) for p in PROBES) > PROBE_NEAR


def test_a_constant_factor_is_named():
    message = _message(lambda x, w: _reference(x, w) * 1.7)
    assert "times 1.7 everywhere" in message


def test_distance():
    a = torch.tensor([1.0, float("nan"), float("inf")])
    assert output_distance(a, a.clone()) == 0.0
    assert output_distance(a, torch.tensor([1.0, 0.0, float("inf")])) == float("inf")
    assert output_distance(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0])) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------
# Chapters 05-07: the readers behind their diagnoses name a mistake only when the answer is that
# mistake, and say nothing about an answer wrong in another way.
# ---------------------------------------------------------------------------------------------

_THETA = 10000.0 ** (-2 * torch.arange(4, dtype=torch.float64) / 8)  # 4 pairs, width 8
_POSITIONS = torch.arange(3, 8, dtype=torch.float64)  # rows at positions 3 .. 7


def _angle_message(phi):
    from helpers.checks.probes import angle_symptom
    return angle_symptom(phi, _POSITIONS, _THETA, what="row", pair="pairs", base=10000.0, width="d")


def test_angle_symptom_names_shifted_rows_frozen_pairs_and_another_base():
    right = _POSITIONS[:, None] * _THETA[None, :]
    assert _angle_message(right) is None
    assert "off by +1" in _angle_message((_POSITIONS + 1)[:, None] * _THETA[None, :])
    frozen = right.clone()
    frozen[:, 2:] = 0.0
    assert "k in [2, 3] are not rotated" in _angle_message(frozen)
    other = 1000.0 ** (-2 * torch.arange(4, dtype=torch.float64) / 8)
    assert "base 1000" in _angle_message(_POSITIONS[:, None] * other[None, :])


def test_angle_symptom_says_nothing_about_unrelated_angles():
    gen = torch.Generator().manual_seed(0)
    noise = (torch.rand(5, 4, generator=gen, dtype=torch.float64) - 0.5) * 6
    assert _angle_message(noise) is None


def test_a_mask_wrong_in_two_regions_gets_no_region():
    from helpers.checks.blocks import _region_symptom
    T, lengths = 5, torch.tensor([5, 3])
    i, j = torch.arange(T)[None, :, None], torch.arange(T)[None, None, :]
    right = ((j <= i) & (j < lengths[:, None, None])).expand(2, T, T)
    one_region = right | ((j >= lengths[:, None, None]) & (i == 0))  # a padded key visible to query 0
    assert "padded keys" in _region_symptom(one_region, right, lengths, None, True, "lengths")
    two_regions = one_region.clone()
    two_regions[0, 0, 0] = False  # and the diagonal
    assert _region_symptom(two_regions, right, lengths, None, True, "lengths") is None


def test_counts_off_by_no_argument_are_not_blamed_on_one():
    from helpers.checks.complexity import _factor_symptom
    configs, names = ((2, 3), (4, 5)), ("a", "b")
    expected = [a * b for a, b in configs]
    assert "lacks a factor of b" in _factor_symptom([a for a, _ in configs], expected, configs, names, None)
    assert _factor_symptom([e + 1 for e in expected], expected, configs, names, None) is None


def test_the_online_softmax_reader_names_a_run_of_keys_only_when_it_is_one():
    from helpers.checks.complexity import _online_diagnose
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 3, 4, generator=gen, dtype=torch.float64), torch.randn(1, 7, 4, generator=gen,
               dtype=torch.float64), torch.randn(1, 7, 2, generator=gen, dtype=torch.float64))
    case = Case((q, k, v, 3), {}, ("q", "k", "v", "block_size"))
    full = torch.softmax(q @ k.transpose(-2, -1) / 2.0, dim=-1) @ v
    head = torch.softmax(q @ k[:, :6].transpose(-2, -1) / 2.0, dim=-1) @ v[:, :6]
    assert "keys 0 .. 5 only" in _online_diagnose(head, full, case)
    assert _online_diagnose(full * 1.1, full, case) is None
