"""Numeric answers the exercise says to compute from given variables (chapter 02 exercise 7, chapter 07
exercise 4): the hidden test re-runs the learner's cells with other sizes, so typed-in numbers lose
its point, while answers computed in any way from the variables pass."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys

import nbformat
import numpy as np
import pytest
import torch

import helpers.checks.complexity as complexity
import helpers.checks.heads as heads
from helpers.checks import CheckFailed
from helpers.checks.recompute import recheck_with_other_sizes
from tools.build import ROOT

_MARKERS = ("### BEGIN SOLUTION", "### END SOLUTION")


def _cells(chapter: str) -> dict[str, str]:
    """The solution notebook's cells by id, as a learner who solved them would have them."""
    nb = nbformat.read(str(ROOT / "solutions" / chapter / f"{chapter}.ipynb"), as_version=4)
    return {c.id: "\n".join(line for line in c.source.splitlines() if line.strip() not in _MARKERS)
            for c in nb.cells if c.cell_type == "code"}


CH02, CH07 = _cells("02_heads"), _cells("07_complexity")
EX7 = {"sizes": CH02["ex7-sizes"], "answer": CH02["ex7-answer"], "test": CH02["ex7-test"], "hidden": CH02["ex7-hidden"]}
EX4 = {"sizes": CH07["ex4-sizes"], "answer": CH07["ex4-answer"], "test": CH07["ex4-test"], "hidden": CH07["ex4-hidden"]}

# The answers for the notebook's sizes, typed in as numbers.
LITERAL_EX7 = """params_mha = 67108864
params_gqa = 41943040
params_mqa = 34603008
params_gpt2 = 2362368
kv_bytes_mha = 2147483648
kv_bytes_gqa = 536870912
kv_bytes_mqa = 67108864
kv_saving_gqa = 4.0
"""
LITERAL_EX4 = """kv_llama2_7b = 2147483648
kv_llama3_8b = 1073741824
kv_falcon_7b = 16777216
kv_batch_llama3 = 17179869184
max_batch_llama3 = 65
gqa_saving_llama3 = 4.0
"""


def _run(sources, namespace=None):
    namespace = {} if namespace is None else namespace
    for source in sources:
        exec(compile(source, "<cell>", "exec"), namespace)
    return namespace


def _grade_ex7(answer_cells, *, before=(), visible=True):
    """Run chapter 02's ex7 cells as a notebook would (cells before the sizes cell first), then the hidden check."""
    ns = _run([*before, EX7["sizes"], *answer_cells, *([EX7["test"]] if visible else [])])
    cells = [*answer_cells, EX7["test"], EX7["hidden"]]
    heads.recheck_real_model_numbers(cells=cells, namespace=ns)
    return ns


def _grade_ex4(answer_cells, *, before=()):
    ns = _run([*before, EX4["sizes"], *answer_cells, EX4["test"]])
    complexity.recheck_kv_cache_numbers(cells=[*answer_cells, EX4["test"], EX4["hidden"]], namespace=ns)
    return ns


# ---------------------------------------------------------------------------------------------
# Chapter 02, exercise 7
# ---------------------------------------------------------------------------------------------


def test_the_literals_pass_the_visible_check():
    _run([EX7["sizes"], LITERAL_EX7, EX7["test"]])
    _run([EX4["sizes"], LITERAL_EX4, EX4["test"]])


def test_the_solution_passes():
    _grade_ex7([EX7["answer"]])
    _grade_ex4([EX4["answer"]])


def test_typed_in_numbers_fail_naming_each_answer():
    with pytest.raises(CheckFailed) as error:
        _grade_ex7([LITERAL_EX7])
    message = str(error.value)
    for name in heads._REAL_HINTS:
        assert f"`{name}` does not follow from the sizes" in message, name
    assert ("`params_mha` does not follow from the sizes: with d_model = 1536 (not 4096) it should be 9437184, "
            "and your code gives 67108864 (the answer for the notebook's sizes).") in message
    # Only the sizes an answer depends on are named.
    gqa = re.search(r"`params_gqa` does not follow from the sizes: with (.*?) it should be", message).group(1)
    assert gqa == "d_model = 1536 (not 4096), n_heads = 24 (not 32) and n_kv_heads_gqa = 4 (not 8)"
    assert "`kv_saving_gqa` does not follow from the sizes: with n_heads = 24 (not 32) and n_kv_heads_gqa = 4 " \
           "(not 8) it should be 6.0, and your code gives 4.0" in message
    assert message.endswith("Compute each answer from the variables rather than typing the number: the hidden "
                            "test re-runs your cells after the sizes cell with other sizes.")


def test_one_typed_in_number_is_the_only_one_named():
    answer = EX7["answer"].replace("params_gpt2 = 4 * gpt2_d_model * gpt2_d_model + 4 * gpt2_d_model",
                                   "params_gpt2 = 2362368")
    assert answer != EX7["answer"]
    with pytest.raises(CheckFailed) as error:
        _grade_ex7([answer])
    message = str(error.value)
    assert message.startswith("`params_gpt2` does not follow from the sizes: with gpt2_d_model = 1024 (not 768) "
                              "it should be 4198400, and your code gives 2362368 (the answer for the notebook's "
                              "sizes).")
    assert message.count("does not follow") == 1


def test_a_typed_in_intermediate_is_named_too():
    # d_head typed in as 128 instead of d_model // n_heads: right for the notebook, wrong for other sizes.
    answer = EX7["answer"].replace("d_head = d_model // n_heads", "d_head = 128")
    with pytest.raises(CheckFailed) as error:
        _grade_ex7([answer])
    message = str(error.value)
    assert "`params_gqa` does not follow" in message and "`kv_bytes_mha` does not follow" in message
    assert "`params_mha` does not follow" not in message  # 4 * d_model * d_model does not use d_head
    assert "(the answer for the notebook's sizes)" not in message.split("`params_gqa`")[1].split(".")[0]


def test_an_answer_split_over_two_cells_passes():
    first = "d_head = d_model // n_heads\nper_token = 2 * n_layers * d_head * bytes_per_element\n"
    second = """params_mha = 4 * d_model ** 2
params_gqa = 2 * d_model ** 2 + 2 * n_kv_heads_gqa * d_head * d_model
params_mqa = 2 * d_model ** 2 + 2 * n_kv_heads_mqa * d_head * d_model
params_gpt2 = 4 * gpt2_d_model * (gpt2_d_model + 1)
kv_bytes_mha, kv_bytes_gqa, kv_bytes_mqa = (per_token * h * context for h in (n_heads, n_kv_heads_gqa, n_kv_heads_mqa))
kv_saving_gqa = kv_bytes_mha / kv_bytes_gqa
"""
    _grade_ex7([first, second])


def test_helpers_from_earlier_exercises_that_take_arguments_pass():
    # The learner's own ex5 and ex6 functions, defined before the sizes cell (they are not re-run).
    ex5_ex6 = CH02["ex5-answer"] + "\n\n" + CH02["ex6-answer"]
    answer = """d_head = d_model // n_heads
params_mha = attention_param_count(d_model, n_heads)
params_gqa = attention_param_count(d_model, n_heads, n_kv_heads_gqa)
params_mqa = attention_param_count(d_model, n_heads, n_kv_heads_mqa)
params_gpt2 = attention_param_count(gpt2_d_model, gpt2_n_heads, bias=True)
def cache(h):
    return kv_cache_elements_per_token(n_layers, h, d_head) * context * bytes_per_element
kv_bytes_mha, kv_bytes_gqa, kv_bytes_mqa = cache(n_heads), cache(n_kv_heads_gqa), cache(n_kv_heads_mqa)
kv_saving_gqa = kv_bytes_mha / kv_bytes_gqa
"""
    _grade_ex7([answer], before=[ex5_ex6])


def test_cells_that_raise_under_other_sizes_get_a_clear_message():
    answer = "assert d_model == 4096, 'Llama sizes only'\n" + EX7["answer"]
    with pytest.raises(CheckFailed) as error:
        _grade_ex7([answer])
    message = str(error.value)
    assert message.startswith("with other sizes (n_layers = 24, d_model = 1536, n_heads = 24, n_kv_heads_gqa = 4, "
                              "context = 1024, bytes_per_element = 4, gpt2_d_model = 1024, gpt2_n_heads = 16) your "
                              "cell that starts `assert d_model == 4096, 'Llama sizes only'` raises AssertionError: "
                              "Llama sizes only.")
    assert "compute each answer from the variables" in message


def test_an_answer_cell_that_calls_the_visible_check_itself_passes():
    # The call is left out of the re-run (under other sizes the visible check would refuse the answers).
    _grade_ex7([EX7["answer"] + "\n" + EX7["test"]])
    with pytest.raises(CheckFailed, match="`params_mha` does not follow"):
        _grade_ex7([LITERAL_EX7 + "\n" + EX7["test"]])


def test_a_cell_that_raised_in_the_notebook_too_does_not_count():
    scratch = "params_mha = 4 * d_model * d_model\nprint(kv_bytes_total)  # a typo: raises NameError anyway\n"
    ns = _run([EX7["sizes"], EX7["answer"]])
    with pytest.raises(NameError):
        _run([scratch], ns)
    heads.recheck_real_model_numbers(cells=[EX7["answer"], scratch, EX7["test"], EX7["hidden"]], namespace=ns)
    # A cell whose error comes from the other sizes still counts.
    sized = "assert n_layers == 32\n"
    with pytest.raises(CheckFailed, match="your cell that starts `assert n_layers == 32` raises AssertionError"):
        heads.recheck_real_model_numbers(cells=[EX7["answer"], sized, EX7["test"]], namespace=ns)


def test_the_learner_namespace_and_the_generators_are_unchanged():
    ns = _run([EX7["sizes"], LITERAL_EX7, EX7["test"]])
    before = dict(ns)
    states = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    reseeding = "import torch, random\ntorch.manual_seed(123)\nrandom.seed(4)\nnew_name = 1\n"
    with pytest.raises(CheckFailed):
        heads.recheck_real_model_numbers(cells=[reseeding, LITERAL_EX7, EX7["test"]], namespace=ns)
    assert ns.keys() == before.keys() and all(ns[k] is before[k] for k in before)
    assert ns["d_model"] == 4096 and "new_name" not in ns
    assert random.getstate() == states[0] and (np.random.get_state()[1] == states[1]).all()
    assert torch.equal(torch.get_rng_state(), states[2])
    # The solution's helpers defined in a re-run cell read the other sizes, the learner's copies do not.
    ns = _grade_ex4([EX4["answer"]])
    assert ns["one_sequence"](ns["llama3_8b"]) == 2**30


def test_printed_output_is_silenced(capsys):
    _grade_ex7([EX7["answer"]])
    captured = capsys.readouterr()
    assert captured.out.count("KV cache per sequence") == 1  # the notebook's own run, not the re-run
    assert "6.0" not in captured.out


def test_without_history_the_message_says_so(monkeypatch):
    import IPython

    monkeypatch.setattr(IPython, "get_ipython", lambda: None)
    with pytest.raises(CheckFailed, match="needs the notebook's"):
        heads.recheck_real_model_numbers()
    with pytest.raises(CheckFailed, match="needs the notebook's cell history"):
        recheck_with_other_sizes(["x"], sizes_marker="# sizes", original={"a": 1}, variants=[{"a": 2}],
                                 expected_for=lambda s: {"x": s["a"]}, namespace={"a": 1, "x": 1})


def test_a_variant_must_set_every_size():
    with pytest.raises(ValueError, match="same variables"):
        recheck_with_other_sizes(["x"], sizes_marker="# sizes", original={"a": 1, "b": 2}, variants=[{"a": 2}],
                                 expected_for=lambda s: {"x": s["a"]}, namespace={"a": 1, "b": 2, "x": 1},
                                 cells=["x = a"])


_IPYTHON_SCRIPT = """
import json, sys
from IPython.core.interactiveshell import InteractiveShell
store_history, cells = json.loads(sys.stdin.read())
shell = InteractiveShell.instance()
results = []
for source in cells:
    result = shell.run_cell(source, store_history=store_history)
    error = result.error_in_exec or result.error_before_exec
    results.append(None if error is None else f"{type(error).__name__}: {error}")
results.append(shell.user_ns["d_model"])
print(json.dumps(results))
"""


def _in_ipython(cells: list[str], store_history: bool) -> list:
    """Run `cells` in a fresh process's IPython shell (a shell changes process-wide state: displayhook,
    builtins); each cell's error, or None, then d_model as the shell's namespace has it."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}  # the course folder on sys.path
    run = subprocess.run([sys.executable, "-c", _IPYTHON_SCRIPT], input=json.dumps([store_history, cells]),
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


_HIDDEN_AS_RUN = EX7["hidden"].replace("### BEGIN HIDDEN TESTS", "").replace("### END HIDDEN TESTS", "")
_PARTLY_TYPED = LITERAL_EX7.replace("params_mha = 67108864", "params_mha = 4 * d_model * d_model")


@pytest.mark.parametrize("store_history", [True, False], ids=["jupyter", "nbval"])
def test_in_an_ipython_kernel_the_cells_run_are_used(store_history):
    # nbval runs cells with store_history=False: IPython's history is empty, the module's record is not
    # (the chapter's checks module is imported in an early test cell, as in the notebooks).
    cells = ["import helpers.checks.heads  # an early test cell", "x = 1", EX7["sizes"], _PARTLY_TYPED, EX7["test"],
             _HIDDEN_AS_RUN, EX7["answer"], _HIDDEN_AS_RUN]
    results = _in_ipython(cells, store_history)
    assert results[:5] == [None] * 5
    assert results[5].startswith("CheckFailed: `params_gqa` does not follow from the sizes")
    assert "`params_mha`" not in results[5]
    assert results[6:] == [None, None, 4096]  # the solution passes, from the last run of the sizes cell on


def test_in_ipython_the_history_serves_when_the_checks_were_imported_late():
    # Imported first in the visible test cell, after the sizes cell: the module's record misses the sizes cell.
    results = _in_ipython([EX7["sizes"], _PARTLY_TYPED, EX7["test"], _HIDDEN_AS_RUN], store_history=True)
    assert results[:3] == [None] * 3 and results[3].startswith("CheckFailed: `params_gqa` does not follow")


def test_in_ipython_without_the_sizes_cell_in_any_record_the_message_says_so():
    results = _in_ipython([EX7["sizes"], EX7["answer"], EX7["test"], _HIDDEN_AS_RUN], store_history=False)
    assert results[3] == ("CheckFailed: the read-only sizes cell (it starts with '# Read-only: the sizes the "
                          "questions use.') has not been run in this kernel: run the notebook from the top")


# ---------------------------------------------------------------------------------------------
# Chapter 07, exercise 4
# ---------------------------------------------------------------------------------------------


def test_ch07_typed_in_numbers_fail_naming_each_answer():
    with pytest.raises(CheckFailed) as error:
        _grade_ex4([LITERAL_EX4])
    message = str(error.value)
    for name in complexity._REAL_HINTS:
        assert f"`{name}` does not follow from the sizes" in message, name
    assert ("`max_batch_llama3` does not follow from the sizes: with llama3_8b['n_layers'] = 24 (not 32), "
            "llama3_8b['n_kv_heads'] = 4 (not 8), llama3_8b['d_head'] = 64 (not 128), "
            "llama3_8b['context'] = 4096 (not 8192), gpu_bytes = 42949672960 (not 85899345920) and "
            "weight_bytes_llama3 = 11274289152 (not 16000000000) it should be 314, and your code gives 65 "
            "(the answer for the notebook's sizes).") in message


def test_ch07_the_learners_kv_cache_bytes_passes():
    answer = """import torch
kv_llama2_7b, kv_llama3_8b, kv_falcon_7b = (
    kv_cache_bytes(m["n_layers"], m["n_kv_heads"], m["d_head"], m["context"], 1, torch.float16)
    for m in (llama2_7b, llama3_8b, falcon_7b))
kv_batch_llama3 = kv_cache_bytes(llama3_8b["n_layers"], llama3_8b["n_kv_heads"], llama3_8b["d_head"],
                                 llama3_8b["context"], batch, torch.float16)
max_batch_llama3 = (gpu_bytes - weight_bytes_llama3) // kv_llama3_8b
gqa_saving_llama3 = llama3_8b["n_heads"] / llama3_8b["n_kv_heads"]
"""
    _grade_ex4([answer], before=["import torch\n" + CH07["ex3-answer"]])


def test_ch07_a_typed_in_gpu_size_is_named():
    answer = EX4["answer"].replace("(gpu_bytes - weight_bytes_llama3)", "(80 * 2**30 - weight_bytes_llama3)")
    assert answer != EX4["answer"]
    with pytest.raises(CheckFailed) as error:
        _grade_ex4([answer])
    message = str(error.value)
    assert message.startswith("`max_batch_llama3` does not follow from the sizes")
    assert "gpu_bytes = 42949672960 (not 85899345920)" in message and message.count("does not follow") == 1


def test_the_other_sizes_differ_from_the_notebooks_and_are_consistent():
    for size in heads.OTHER_SIZES:
        assert size.keys() == heads.REAL_SIZES.keys()
        assert all(size[k] != heads.REAL_SIZES[k] for k in size if k != "n_kv_heads_mqa")
        assert size["d_model"] % size["n_heads"] == 0 and size["n_heads"] % size["n_kv_heads_gqa"] == 0
        assert size["d_model"] // size["n_heads"] != heads.REAL_SIZES["d_model"] // heads.REAL_SIZES["n_heads"]
        expected, real = heads._real_numbers(size)[0], heads._real_numbers()[0]
        assert all(expected[k] != real[k] for k in expected)
    for size in complexity.OTHER_CONFIGS:
        expected, real = complexity._real_numbers(size)[0], complexity._real_numbers()[0]
        assert all(expected[k] != real[k] for k in expected)
        assert size["llama2_7b"]["n_kv_heads"] == size["llama2_7b"]["n_heads"] and size["falcon_7b"]["n_kv_heads"] == 1
        free = size["gpu_bytes"] - size["weight_bytes_llama3"]
        assert free % expected["kv_llama3_8b"] != 0  # rounding down matters


def test_answers_computed_by_the_reference_lose_the_hidden_point():
    """Re-run with other sizes, the reference gives the right numbers too: the cell's code is read instead."""
    by_reference = EX4["answer"].replace(
        'return (2 * model["n_layers"] * model["n_kv_heads"] * model["d_head"] * model["context"]\n'
        '            * bytes_per_element)',
        'return kv_cache_bytes(model["n_layers"], model["n_kv_heads"], model["d_head"], model["context"])')
    assert by_reference != EX4["answer"]
    with pytest.raises(CheckFailed, match=r"the cell that sets .*kv_llama2_7b.* uses helpers\.complexity\.kv_cache_bytes, "
                                          r"which gives the answer away"):
        _grade_ex4([by_reference], before=["from helpers.complexity import kv_cache_bytes"])
