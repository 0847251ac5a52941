"""The shared mechanism (helpers/checks/core.py) after the values match: autograd, dtype and device.

Answers with the right values that a model could not train with (cut off from autograd, a wrong
gradient, a backward pass broken by an in-place edit) or that only run in float32 or on the CPU are
named, in the visible check already; answers that would work on a GPU are never blamed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import helpers.checks.attention as ch01
import helpers.checks.ffn as ch03
import helpers.checks.heads as ch02
import helpers.checks.norms as ch04
from helpers.checks import CheckFailed

HIDDEN = {"dtype": torch.float64, "seed": 5}


# ------------------------------------------------------------------------------------------------
# Correct computations, written here (the checks refuse the reference), then broken four ways
# ------------------------------------------------------------------------------------------------


def scores(q, k):
    return q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])


def split(x, n_heads):
    B, T, d = x.shape
    return x.reshape(B, T, n_heads, d // n_heads).transpose(1, 2)


def gelu(x, approximate="none"):
    if approximate == "tanh":
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def rms(x, gamma, eps=1e-6):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * gamma


def detached(f):
    return lambda *a, **kw: f(*a, **kw).detach()


def numpy_round_trip(f):
    def answer(*a, **kw):
        arrays = [v.detach().numpy() if isinstance(v, torch.Tensor) else v for v in a]
        out = f(*[torch.from_numpy(np.asarray(v)) if isinstance(v, np.ndarray) else v for v in arrays], **kw)
        return torch.from_numpy(out.numpy())
    return answer


def under_no_grad(f):
    def answer(*a, **kw):
        with torch.no_grad():
            return f(*a, **kw)
    return answer


def rebuilt_with_torch_tensor(f):
    def answer(*a, **kw):
        out = f(*a, **kw)
        return torch.tensor(out.tolist(), dtype=out.dtype)
    return answer


CHAPTERS = {
    "01 attention_scores": (ch01.check_attention_scores, scores),
    "02 split_heads": (ch02.check_split_heads, split),
    "03 gelu": (ch03.check_gelu, gelu),
    "04 rms_norm": (ch04.check_rms_norm, rms),
}
CUT_OFF = {"detach": detached, "numpy": numpy_round_trip, "no_grad": under_no_grad,
           "torch.tensor": rebuilt_with_torch_tensor}


@pytest.mark.parametrize("chapter", CHAPTERS)
@pytest.mark.parametrize("variant", ["visible", "hidden"])
def test_the_correct_computations_pass(chapter, variant, capsys):
    check, answer = CHAPTERS[chapter]
    check(answer, **(HIDDEN if variant == "hidden" else {}))
    assert "✓" in capsys.readouterr().out


@pytest.mark.parametrize("chapter", CHAPTERS)
@pytest.mark.parametrize("style", CUT_OFF)
@pytest.mark.parametrize("variant", ["visible", "hidden"])
def test_an_output_cut_off_from_autograd_is_named(chapter, style, variant):
    check, answer = CHAPTERS[chapter]
    with pytest.raises(CheckFailed, match=r"^your output is cut off from autograd: "):
        check(CUT_OFF[style](answer), **(HIDDEN if variant == "hidden" else {}))


def test_the_cut_off_message_says_how_it_happens_and_the_fix():
    with pytest.raises(CheckFailed) as failure:
        ch01.check_attention_scores(detached(scores))
    message = str(failure.value)
    for words in (".detach()", "NumPy", "torch.no_grad()", "torch.tensor(...)", "torch operations"):
        assert words in message


class _IdentityBackward(torch.autograd.Function):
    """Right values (the GELU), the wrong backward (the identity's)."""

    @staticmethod
    def forward(ctx, x, approximate):
        return gelu(x, approximate)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def straight_through_gelu(x, approximate="none"):
    return x + (gelu(x, approximate) - x).detach()  # the values of gelu, the gradient of x


@pytest.mark.parametrize("answer", [straight_through_gelu, lambda x, approximate="none": _IdentityBackward.apply(x, approximate)],
                         ids=["detach_trick", "custom_function"])
@pytest.mark.parametrize("variant", ["visible", "hidden"])
def test_right_values_with_a_wrong_gradient_are_named(answer, variant):
    with pytest.raises(CheckFailed, match=r"values are right but the gradient with respect to x is not"):
        ch03.check_gelu(answer, **(HIDDEN if variant == "hidden" else {}))


def test_a_gradient_that_does_not_reach_one_input_is_named():
    def scores_k_detached(q, k):
        return q @ k.detach().transpose(-2, -1) / math.sqrt(q.shape[-1])

    with pytest.raises(CheckFailed, match=r"cut off from autograd: no gradient reaches k"):
        ch01.check_attention_scores(scores_k_detached, **HIDDEN)


def test_an_in_place_edit_of_a_saved_tensor_is_a_check_failure_not_a_torch_error():
    def rms_in_place(x, gamma, eps=1e-6):
        y = x * 1.0
        scale = torch.rsqrt((y * y).mean(-1, keepdim=True) + eps)
        y.mul_(scale)  # y was saved by y * y for its backward pass
        return y * gamma

    with pytest.raises(CheckFailed, match=r"backward pass through your output fails"):
        ch04.check_rms_norm(rms_in_place)


def test_outputs_that_are_not_differentiable_are_not_asked_for_gradients(capsys):
    ch01.check_causal_mask(lambda T: torch.ones(T, T, dtype=torch.bool).tril())
    ch01.check_padding_mask(lambda lengths, T: (torch.arange(T, device=lengths.device) < lengths[:, None])[:, None])
    assert capsys.readouterr().out.count("✓") == 2


# ------------------------------------------------------------------------------------------------
# float32 only, CPU only: named in the visible check (float32 on the CPU)
# ------------------------------------------------------------------------------------------------


def split_float32_only(x, n_heads):
    B, T, d = x.shape
    out = torch.empty(B, n_heads, T, d // n_heads, dtype=torch.float32, device=x.device)
    out[:] = x.reshape(B, T, n_heads, d // n_heads).transpose(1, 2)
    return out


def test_an_answer_fixed_to_float32_is_named_visibly():
    with pytest.raises(CheckFailed, match=r"works in float32 but not in float64: .*keep the input's dtype"):
        ch02.check_split_heads(split_float32_only)


def padding_mask_through_numpy(lengths, T):
    return torch.from_numpy(np.arange(T)[None, None, :] < lengths.numpy()[:, None, None])


def masked_softmax_zeros_on_cpu(scores, mask):
    blocked = torch.zeros(scores.shape, dtype=scores.dtype)  # no device=: a CPU tensor
    s = torch.where(mask, scores, blocked - math.inf)
    w = torch.exp(s - s.amax(-1, keepdim=True).clamp_min(-1e30))
    w = torch.where(mask, w, blocked)
    total = w.sum(-1, keepdim=True)
    return torch.where(total > 0, w / torch.where(total > 0, total, 1), blocked)


def gelu_through_cpu(x, approximate="none"):
    return gelu(x.cpu(), approximate)


@pytest.mark.parametrize("check, answer", [
    (ch01.check_padding_mask, padding_mask_through_numpy),
    (ch01.check_masked_softmax, masked_softmax_zeros_on_cpu),
], ids=["numpy", "torch.zeros_without_device"])
def test_an_answer_that_works_only_on_cpu_is_named_visibly(check, answer):
    with pytest.raises(CheckFailed, match=r"works only on CPU tensors: .*device=x.device"):
        check(answer)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="on meta, copying out to the CPU is not an error")
def test_an_answer_that_moves_its_input_to_the_cpu_is_named_on_a_gpu():
    with pytest.raises(CheckFailed, match=r"works only on CPU tensors"):
        ch03.check_gelu(gelu_through_cpu)


def masked_softmax_with_item(scores, mask):
    """Correct on a GPU too: .item() and a Python branch on a tensor's value are allowed."""
    if bool(mask.all().item()):
        return torch.softmax(scores, dim=-1)
    s = scores.masked_fill(~mask, -math.inf)
    top = s.amax(-1, keepdim=True)
    w = torch.exp(s - torch.where(torch.isfinite(top), top, torch.zeros_like(top)))
    total = w.sum(-1, keepdim=True)
    return torch.where(total > 0, w / torch.where(total > 0, total, torch.ones_like(total)), torch.zeros_like(w))


def scores_with_a_0d_cpu_scale(q, k):
    """A 0-d CPU tensor mixes with tensors on any device (CUDA allows it too)."""
    return q @ k.transpose(-2, -1) / torch.tensor(float(q.shape[-1])).sqrt().to(q.dtype)


def padding_mask_with_tolist(lengths, T):
    return torch.tensor([[[j < n for j in range(T)]] for n in lengths.tolist()], device=lengths.device)


@pytest.mark.parametrize("check, answer", [
    (ch01.check_masked_softmax, masked_softmax_with_item),
    (ch01.check_attention_scores, scores_with_a_0d_cpu_scale),
    (ch01.check_padding_mask, padding_mask_with_tolist),
], ids=["item", "0d_cpu_tensor", "tolist"])
@pytest.mark.parametrize("variant", ["visible", "hidden"])
def test_answers_that_work_on_a_gpu_are_not_blamed_for_meta(check, answer, variant, capsys):
    kwargs = {} if variant == "visible" or check is ch01.check_padding_mask else HIDDEN
    check(answer, **kwargs)
    out = capsys.readouterr().out
    assert out.startswith("✓ ") and out.count("\n") == 1  # the ✓ line, unchanged and alone


# ------------------------------------------------------------------------------------------------
# Counts the exercise says are ints
# ------------------------------------------------------------------------------------------------


def _numbers(**answers):
    from helpers.checks.core import check_numbers

    check_numbers(answers, {"n": 3, "ratio": 1.5}, tolerance={"ratio": 1e-9}, integers=("n",),
                  mistakes={"n": [(3.5, "that counts half a pair; pairs come whole")]})


@pytest.mark.parametrize("n", [3, np.int64(3), np.int32(3)], ids=["int", "numpy-int64", "numpy-int32"])
def test_check_numbers_accepts_python_and_numpy_integers_for_counts(n, capsys):
    _numbers(n=n, ratio=1.5)
    assert capsys.readouterr().out.startswith("✓ all 2 answers are right")


@pytest.mark.parametrize("n, message", [
    (3.0, r"^n is a float \(3.0\); a count is an int: use // for exact division"),
    (np.float64(3.0), r"^n is a float \(3.0\); a count is an int"),
    (torch.tensor(3), r"^n is a 0-d tensor \(3\); a count is a Python int: return int\(...\) or .item\(\)"),
    (torch.tensor([3]), r"^n is a tensor of shape \(1,\) \(3\); a count is a Python int"),
    (2.5, r"^n is 2.5, which is not a whole number"),
    (3.5, r"^n = 3.5: that counts half a pair"),  # a catalogued wrong value says more than its type
    ("3", r"^n should be a number \(an int\); got a str"),
    (True, r"^n should be a number \(an int\); got a bool"),
], ids=["float", "numpy-float", "0d-tensor", "1d-tensor", "fraction", "catalogued", "str", "bool"])
def test_check_numbers_names_a_count_that_is_not_an_int(n, message):
    with pytest.raises(CheckFailed, match=message):
        _numbers(n=n, ratio=1.5)


def test_check_numbers_still_accepts_floats_and_tensors_where_no_int_is_asked(capsys):
    _numbers(n=3, ratio=torch.tensor(1.5, dtype=torch.float64))
    assert "✓" in capsys.readouterr().out


def test_integers_must_name_expected_keys():
    from helpers.checks.core import check_numbers

    with pytest.raises(ValueError, match="integers names keys with no expected value"):
        check_numbers({"n": 3}, {"n": 3}, integers=("m",))


def test_numpy_on_an_input_that_requires_grad_is_named_as_cut_off():
    """x.numpy() raises when x requires grad; the learner is told why, not shown torch's error."""
    def scores_in_numpy(q, k):
        return torch.from_numpy(q.numpy() @ k.numpy().swapaxes(-1, -2) / math.sqrt(q.shape[-1]))

    with pytest.raises(CheckFailed, match=r"^your output is cut off from autograd: .*requires grad"):
        ch01.check_attention_scores(scores_in_numpy)


# ------------------------------------------------------------------------------------------------
# Threads: a check runs on one torch thread and gives the learner's setting back
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("setting", [2, 3])
def test_a_check_runs_on_one_thread_and_restores_the_learners_count(setting):
    seen = []

    def recorded(q, k):
        seen.append(torch.get_num_threads())
        return scores(q, k)

    before = torch.get_num_threads()
    torch.set_num_threads(setting)
    try:
        ch01.check_attention_scores(recorded)
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == setting
        with pytest.raises(CheckFailed):  # and after a failing check too
            ch01.check_attention_scores(lambda q, k: recorded(q, k) * 2)
        assert torch.get_num_threads() == setting
    finally:
        torch.set_num_threads(before)


def test_every_public_check_of_every_chapter_runs_on_one_thread():
    import importlib
    import pkgutil

    import helpers.checks

    checks = []
    for info in pkgutil.iter_modules(helpers.checks.__path__):
        module = importlib.import_module(f"helpers.checks.{info.name}")
        checks += [(info.name, name) for name, value in vars(module).items()
                   if name.startswith("check_") and callable(value) and value.__module__ == module.__name__
                   and not getattr(value, "on_one_thread", False)]
    assert checks == []


# ------------------------------------------------------------------------------------------------
# Answers assigned in a cell, computed there by what the exercise forbids
# ------------------------------------------------------------------------------------------------


def test_answers_computed_in_the_cell_by_a_forbidden_object_are_found():
    """No check calls a function in a names-or-numbers answer cell, so the cell's code is read, each
    name looked up in the learner's namespace (an alias made in another cell included)."""
    import helpers
    import helpers.attention
    import helpers.blocks
    import helpers.checks.blocks as ch05
    from helpers.checks.core import answers_computed_by

    names = [f"mask_{k}" for k in "ABCDEF"]
    forbidden = ch05.FORBIDDEN["ex3a"] + (ch05.MASK_ANSWERS,)
    ns = {"helpers": helpers, "name_it": helpers.attention.classify_mask, "MASK_ANSWERS": ch05.MASK_ANSWERS}

    def found(*cells, names=names, forbidden=forbidden):
        return answers_computed_by(names, forbidden, cells=list(cells), namespace=ns)

    assert found("mask_A = helpers.attention.classify_mask(M['A'])") == ("mask_A", "helpers.attention.classify_mask")
    assert found("from helpers.attention import classify_mask as c\nmask_B = c(M['B'])") == \
        ("mask_B", "helpers.attention.classify_mask")
    assert found("mask_A, mask_C = (name_it(m) for m in masks)") == ("mask_A, mask_C", "helpers.attention.classify_mask")
    assert found("mask_D = MASK_ANSWERS['D']") == ("mask_D", "MASK_ANSWERS")
    assert found("model = helpers.blocks.TinyEncoderDecoder(cfg)\ntotal = sum(p.numel() for p in model.parameters())",
                 names=["total"], forbidden=(helpers.blocks,)) == ("total", "helpers.blocks.TinyEncoderDecoder")
    # Worked out by hand, or the forbidden call in a cell that sets no answer: nothing to refuse.
    assert found("mask_A = 'causal'  # nothing above the diagonal", "x = helpers.attention.classify_mask(m)") is None
    assert found("mask_A = 'causal' if not helpers.attention.causal_mask(3)[0, 1] else 'none'") is None
    # A config to read the sizes from is not the model.
    assert found("cfg = helpers.blocks.ModelConfig(vocab_size=3, d_model=8)\ntotal = 4 * cfg.d_model ** 2",
                 names=["total"], forbidden=(helpers.blocks,)) is None
