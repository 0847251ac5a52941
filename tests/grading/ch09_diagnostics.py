"""Known submissions of chapter 09 and the exact points each must get (see tests/test_grading.py).

The checklist (ex6) is a written answer: answered, it is left pending for the instructor (the
solution's own submission, "perfect", is); left as the template, it scores 0. Everything else is
scored either way.
"""

from helpers.checks import diagnostics as checks

from ..nbgrader_course import Submission, put, replace


def _msg(catalogue, key):
    return next(m.message for m in catalogue if m.key == key)


# find_bug with two bugs' names swapped
SWAPPED = {"ex4-answer": lambda source: source.replace('return "mask_leak"', 'return "@"')
           .replace('return "norm_axis"', 'return "mask_leak"').replace('return "@"', 'return "norm_axis"')}
# The visible models' names read from the package's key: right on the visible hunt only.
KEY_FROM_THE_PACKAGE = ("KEY = bugs._assignment(0)\n\n\n"
                        "def find_bug(model, reference):\n"
                        "    for label, m in models.items():  # the visible model with the same weights\n"
                        "        if torch.equal(m.net.tok_emb.weight, model.net.tok_emb.weight):\n"
                        "            return KEY[label]\n"
                        "    return 'mask_leak'\n")
BY_CHECKUP = ("def find_bug(model, reference):\n"
              "    card = bugs.checkup(model)\n"
              "    return 'untied' if card['extra_params'] > 0 else 'mask_leak'\n")
TEMPLATE = "YOUR ANSWER HERE"
# The bug hunt's find_bug runs the learner's exercises 1 to 3 (tests/nbgrader_course.pack keeps them apart).
USES = {"ex4": ("ex1", "ex2", "ex3")}

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
        SWAPPED, {"ex4-hidden"}, "the model with the bug 'mask_leak' was named 'norm_axis'; the diagnostic that "
                                 "finds 'mask_leak': the leakage test"),
    # Issue 31: the key of the visible hunt read from helpers.bugs earns nothing (the hidden hunt is
    # another), and bugs.checkup is refused inside find_bug.
    "bug_hunt_key_from_the_package": Submission(
        {"ex4-answer": put(KEY_FROM_THE_PACKAGE)}, {"ex4-hidden"}, "returned 'mask_leak' for more than one",
        report="scan: private_name (ex4)"),
    "bug_hunt_by_checkup": Submission(
        {"ex4-answer": put(BY_CHECKUP)}, {"ex4"}, "find_bug calls helpers.bugs.checkup"),
    # A count in bits instead of nats.
    "entropy_max_in_bits": Submission(
        {"ex5-answer": replace("max_entropy_1024 = math.log(1024)", "max_entropy_1024 = math.log2(1024)")},
        {"ex5"}, "that is log2 1024, in bits"),
    # A missing answer: exercise 3 handed in untouched; only it scores 0.
    "ratios_missing": Submission(
        {"ex3-answer": put("def update_ratios(stream):\n    # YOUR CODE HERE\n    raise NotImplementedError()\n")},
        {"ex3", "ex4"}, "update_ratios is not implemented yet"),  # the bug hunt runs it: "fix exercise 3 first"
    # The checklist answered by the student: pending for the instructor, the rest scored.
    "checklist_answered": Submission(
        {"ex6-answer": put("1. Shapes against the shape map.\n2. Perturb every token; no earlier output moves.\n"),
         "ex2-answer": replace("return -(weights * logs).sum(dim=-1)", "return -(weights * logs).sum(dim=-2)")},
        {"ex2"}, _msg(checks.ENTROPY_MISTAKES, "query_axis"), report="+ 4 pending manual grading (ex6)"),
    # The checklist left as the template: 0 for it, full points for the rest, nothing pending.
    "checklist_unanswered": Submission(
        {"ex6-answer": put(TEMPLATE)},
        {"ex6"}, report="20 / 24  ok"),
    # Ablation verdicts (issue 26 item 5): se without sqrt(2 / S), the noise of one run, not of a difference
    # of two S-seed means; the visible test (S = 3) and the hidden one (S = 5 and 4) both name it.
    "ablation_no_sqrt_2_over_S": Submission(
        {"ex7-answer": replace("se = sigma * math.sqrt(2 / S)", "se = sigma")},
        {"ex7"}, _msg(checks.VERDICT_MISTAKES, "no_sqrt_2_over_S")),
    # Delta compared with 0: every change is called; the row the control repeats stays 'within noise'.
    "ablation_no_noise_floor": Submission(
        {"ex7-answer": replace("floor = float(z * se)", "floor = 0.0")},
        {"ex7"}, _msg(checks.VERDICT_MISTAKES, "no_noise_floor")),
}
