"""Known submissions of chapter 09 and the exact points each must get (see tests/test_grading.py).

The checklist (ex6) is a written answer: answered, it is left pending for the instructor (the
solution's own submission, "perfect", is); left as the template, it scores 0. Everything else is
scored either way.
"""

from helpers.checks import diagnostics as checks

from ..nbgrader_course import Submission, put, replace


def _msg(catalogue, key):
    return next(m.message for m in catalogue if m.key == key)


SWAPPED = ('answers = {"A": "no_residual", "B": "norm_axis", "C": "rope_on_v", "D": "softmax_axis", '
           '"E": "untied", "F": "padding_query", "G": "mask_leak", "H": "no_scale"}\n')
TEMPLATE = "YOUR ANSWER HERE"

STUDENTS = {
    # The catalogued mistakes, one per exercise (and a second for the leakage test).
    "leak_last_token_only": Submission(
        {"ex1-answer": replace("for j in range(T):", "for j in [T - 1]:")},
        {"ex1"}, _msg(checks.LEAK_MISTAKES, "last_token_only")),
    "leak_exact_equality": Submission(
        {"ex1-answer": replace("moved = ~torch.isclose(f(changed), base, rtol=1e-5, atol=atol)",
                               "moved = f(changed) != base")},
        {"ex1"}, _msg(checks.LEAK_MISTAKES, "exact_equality")),
    "entropy_in_bits": Submission(
        {"ex2-answer": replace("weights.log()", "weights.log2()")},
        {"ex2"}, _msg(checks.ENTROPY_MISTAKES, "bits")),
    "norms_over_T": Submission(
        {"ex3-answer": replace(".norm(dim=-1)", ".norm(dim=-2)")},
        {"ex3"}, _msg(checks.RATIO_MISTAKES, "norm_over_T")),
    # Two models swapped: 6 of 8, and the feedback names the diagnostic that finds each real bug.
    "bug_hunt_swapped": Submission(
        {"ex4-answer": put(SWAPPED)},
        {"ex4-hidden"}, "model A is not 'no_residual'; the diagnostic that finds its bug: the leakage test"),
    # A count in bits instead of nats.
    "entropy_max_in_bits": Submission(
        {"ex5-answer": replace("max_entropy_1024 = math.log(1024)", "max_entropy_1024 = math.log2(1024)")},
        {"ex5"}, "that is log2 1024, in bits"),
    # A missing answer: exercise 3 handed in untouched; only it scores 0.
    "ratios_missing": Submission(
        {"ex3-answer": put("def update_ratios(stream):\n    # YOUR CODE HERE\n    raise NotImplementedError()\n")},
        {"ex3"}, "update_ratios is not implemented yet"),
    # The checklist answered by the student: pending for the instructor, the rest scored.
    "checklist_answered": Submission(
        {"ex6-answer": put("1. Shapes against the shape map.\n2. Perturb every token; no earlier output moves.\n"),
         "ex2-answer": replace("return -(weights * logs).sum(dim=-1)", "return -(weights * logs).sum(dim=-2)")},
        {"ex2"}, _msg(checks.ENTROPY_MISTAKES, "query_axis"), report="+ 4 pending manual grading (ex6)"),
    # The checklist left as the template: 0 for it, full points for the rest, nothing pending.
    "checklist_unanswered": Submission(
        {"ex6-answer": put(TEMPLATE)},
        {"ex6"}, report="17 / 21  ok"),
}
