"""helpers.threads: the count inside a block and the old count after it; the count chosen by a timed
probe; train and generate run on the chosen count and restore the learner's, also after an error."""

from __future__ import annotations

import time

import pytest
import torch

from helpers import threads as threads_module
from helpers.blocks import ModelConfig, TinyDecoder, generate, generation
from helpers.threads import choose_threads, fastest_threads, torch_threads
from helpers.training import train


def test_the_count_is_set_inside_and_restored_after_even_on_error():
    before = torch.get_num_threads()
    with pytest.raises(KeyError):
        with torch_threads(1):
            assert torch.get_num_threads() == 1
            raise KeyError("boom")
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("n", [0, -1, 1.0, True, "1"])
def test_a_count_that_is_not_a_positive_int_is_refused(n):
    with pytest.raises(ValueError, match="positive int"):
        with torch_threads(n):
            pass


# ------------------------------------------------------------------------------------------------
# Choosing the count by measurement, and restoring the learner's
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def learner_threads(monkeypatch):
    """The learner's own setting during a test: 3, which no candidate tried by a probe of {1, 2} equals;
    the machine counts as idle (a test must not depend on what else runs), except where a test says."""
    monkeypatch.setattr(threads_module, "machine_is_busy", lambda: False)
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    yield 3
    torch.set_num_threads(before)


def _probe(seconds: dict[int, float], seen: list):
    def probe():
        seen.append(torch.get_num_threads())
        time.sleep(seconds[torch.get_num_threads()])
    return probe


@pytest.mark.parametrize("seconds, expected", [({1: 0.03, 2: 0.015, 3: 0.002}, 3), ({1: 0.03, 2: 0.002, 3: 0.03}, 2),
                                               ({1: 0.002, 2: 0.03, 3: 0.03}, 1)])
def test_choose_threads_picks_the_count_under_which_the_probe_ran_fastest(learner_threads, seconds, expected):
    seen: list[int] = []
    assert choose_threads(_probe(seconds, seen)) == expected
    assert set(seen) == {1, 2, 3} and torch.get_num_threads() == learner_threads  # all tried, setting restored


def test_more_threads_must_win_clearly_and_one_candidate_is_not_probed(learner_threads):
    assert choose_threads(lambda: time.sleep(0.005)) == 1  # a tie: one thread
    assert choose_threads(lambda: pytest.fail("probed"), candidates=[1]) == 1


def test_fastest_threads_sets_the_count_inside_and_restores_it_even_on_error(learner_threads):
    with pytest.raises(KeyError):
        with fastest_threads(_probe({1: 0.002, 2: 0.03, 3: 0.03}, [])) as n:
            assert n == torch.get_num_threads() == 1
            raise KeyError("boom")
    assert torch.get_num_threads() == learner_threads
    with fastest_threads(lambda: pytest.fail("probed"), threads=2) as n:  # a count given: no probe
        assert n == torch.get_num_threads() == 2
    with fastest_threads(None) as n:  # no probe (work on a GPU): the learner's count
        assert n == learner_threads
    assert torch.get_num_threads() == learner_threads


class _Recording(torch.nn.Module):
    """A tiny decoder that records torch's thread count at each training forward, and can fail."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = TinyDecoder(ModelConfig(vocab_size=16, d_model=16, n_heads=2, n_layers=1, max_seq_len=16,
                                             kernels="fused"))
        self.config = self.model.config
        self.counts: list[int] = []
        self.fail_at = fail_at

    def forward(self, ids):
        if self.training:
            self.counts.append(torch.get_num_threads())
            if len(self.counts) == self.fail_at:
                raise RuntimeError("a failing step")
        return self.model(ids)


@pytest.mark.parametrize("chosen", [1, 2])
def test_train_runs_on_the_chosen_count_and_restores_the_learners(learner_threads, monkeypatch, chosen):
    monkeypatch.setattr(threads_module, "choose_threads", lambda probe, **kw: (probe(), chosen)[1])
    data = torch.randint(0, 16, (500,), generator=torch.Generator().manual_seed(0))
    model = _Recording()
    history = train(model, data, data, steps=3, batch_size=2, block_size=8, progress=False, eval_batches=1)
    assert history.threads == chosen and model.counts[-3:] == [chosen] * 3
    assert torch.get_num_threads() == learner_threads
    failing = _Recording(fail_at=3)
    with pytest.raises(RuntimeError, match="a failing step"):
        train(failing, data, data, steps=5, batch_size=2, block_size=8, progress=False, eval_batches=1)
    assert torch.get_num_threads() == learner_threads  # restored after the error too


def test_train_measures_one_and_two_threads_with_a_forward_and_backward_probe(learner_threads):
    data = torch.randint(0, 16, (500,), generator=torch.Generator().manual_seed(0))
    model = _Recording()
    history = train(model, data, data, steps=2, batch_size=2, block_size=8, progress=False, eval_batches=1)
    assert set(model.counts[:-2]) == {1, 2, 3}  # the probe ran under every candidate before the 2 steps
    assert history.threads in (1, 2, 3) and torch.get_num_threads() == learner_threads
    assert all(p.grad is None or p.grad.abs().sum() > 0 for p in model.parameters())
    fixed = train(_Recording(), data, data, steps=2, batch_size=2, block_size=8, progress=False, eval_batches=1,
                  threads=2)
    assert fixed.threads == 2 and torch.get_num_threads() == learner_threads


@pytest.mark.parametrize("use_cache", [True, False])
def test_generate_runs_on_the_chosen_count_and_restores_the_learners(unsealed, learner_threads, monkeypatch,
                                                                     use_cache):
    unsealed(generation, threads_module)
    torch.manual_seed(0)
    model = TinyDecoder(ModelConfig(vocab_size=16, d_model=16, n_heads=2, n_layers=1, max_seq_len=32))
    prompt = torch.randint(0, 16, (1, 3), generator=torch.Generator().manual_seed(1))
    seen: list[int] = []
    real_next = generation._next_token

    def recording_next(*args):
        seen.append(torch.get_num_threads())
        return real_next(*args)

    monkeypatch.setattr(generation, "_next_token", recording_next)
    monkeypatch.setattr(threads_module, "choose_threads", lambda probe, **kw: (probe(), 2)[1])
    out = generate(model, prompt, 5, use_cache=use_cache, temperature=0)
    assert out.shape == (1, 8) and seen == [2] * 5 and torch.get_num_threads() == learner_threads
    monkeypatch.setattr(generation, "_next_token", lambda *args: (_ for _ in ()).throw(RuntimeError("failed step")))
    with pytest.raises(RuntimeError, match="failed step"):
        generate(model, prompt, 5, use_cache=use_cache, temperature=0)
    assert torch.get_num_threads() == learner_threads


def test_a_busy_machine_gets_one_thread_without_a_probe(learner_threads, monkeypatch):
    monkeypatch.setattr(threads_module, "machine_is_busy", lambda: True)
    assert threads_module.thread_candidates() == [1]
    assert choose_threads(lambda: pytest.fail("probed on a busy machine")) == 1
    monkeypatch.undo()  # the real machine_is_busy, on a faked load average:
    monkeypatch.setattr(threads_module.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(threads_module.os, "getloadavg", lambda: (2.0, 0.0, 0.0))
    assert threads_module.machine_is_busy()
    monkeypatch.setattr(threads_module.os, "getloadavg", lambda: (1.2, 0.0, 0.0))
    assert not threads_module.machine_is_busy()
