"""Known submissions of chapter 01 and the exact points each must get (see tests/test_grading.py)."""

from helpers.checks import attention as checks

from ..nbgrader_course import Submission, put, replace


def _msg(catalogue, key):
    return next(m.message for m in catalogue if m.key == key)


NO_SCALE_SDPA = replace("/ math.sqrt(d_k)  # (..., T_q, T_k)\n    if mask", "  # (..., T_q, T_k)\n    if mask")

# The infinite loop costs one cell timeout: keep it short for this run.
AUTOGRADE_ARGS = ("--Execute.timeout=15",)

STUDENTS = {
    "no_scale": Submission({"ex2-answer": replace(" / math.sqrt(d_k)", "")}, {"ex2"},
                           _msg(checks.SCORES_MISTAKES, "no_scale")),
    "query_axis": Submission({"ex6-answer": replace("torch.softmax(masked, dim=-1)", "torch.softmax(masked, dim=-2)")},
                             {"ex6"}, _msg(checks.SOFTMAX_MISTAKES, "softmax_query_axis")),
    "diagonal": Submission({"ex3-answer": replace(".tril()", ".tril(-1)")}, {"ex3"},
                           _msg(checks.CAUSAL_MISTAKES, "diagonal_blocked")),
    # Test cells edited or deleted are restored from the gradebook, so the mistake is still caught.
    "tampered": Submission(
        {"ex7-answer": replace('torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)',
                               "torch.softmax(scores, dim=-1) * mask"),
         "ex7-test": put("pass  # tests removed"),
         "ex7-hidden": put("# nothing to see")},
        {"ex7"}, _msg(checks.SDPA_MISTAKES, "mask_after_softmax")),
    "loop": Submission({"ex5-answer": lambda source: "while True:\n    pass\n" + source}, {"ex5"}, "CellTimeoutError"),
    "reference_import": Submission(
        {"ex7-answer": put("from helpers.attention import scaled_dot_product_attention")},
        {"ex7"}, "not your own function"),
    "builtin_wrapper": Submission(
        {"ex7-answer": put("import torch.nn.functional as F\n"
                           "def scaled_dot_product_attention(q, k, v, mask=None):\n"
                           "    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)\n"
                           "    return out, None\n")},
        {"ex7"}, "calls torch"),
    "patched_check": Submission(
        {"ex7-answer": lambda source: NO_SCALE_SDPA(source) + (
            "\nimport helpers.checks.attention as _c\n"
            "_c.check_scaled_dot_product_attention = lambda *a, **k: print('all good')\n")},
        {"ex7"}, _msg(checks.SDPA_MISTAKES, "no_scale")),
    # A patched library makes every later check refuse to run: exercise 7 and exercise 8's visible test.
    "patched_allclose": Submission(
        {"ex7-answer": lambda source: NO_SCALE_SDPA(source) + (
            "\nimport numpy\n"
            "torch.allclose = lambda *a, **k: True\n"
            "numpy.allclose = lambda *a, **k: True\n")},
        {"ex7", "ex8-test"}, "was replaced after the notebook"),
    "noisy_but_right": Submission(
        {"ex2-answer": lambda source: (
            "import sys, warnings\n"
            "warnings.warn('this answer cell is noisy', DeprecationWarning)\n"
            + source.replace("    d_k = q.shape[-1]",
                             "    warnings.warn('noisy inside', UserWarning)\n"
                             "    print('debug: shapes', q.shape, k.shape, file=sys.stderr)\n"
                             "    d_k = q.shape[-1]"))}),
    # Right for the visible sizes only: the hidden test's other sizes catch it.
    "hard_coded": Submission(
        {"ex3-answer": put("def causal_mask(T):\n"
                           "    table = {6: torch.ones(6, 6, dtype=torch.bool).tril(), 1: torch.ones(1, 1, dtype=torch.bool)}\n"
                           "    return table[T]\n")},
        {"ex3-hidden"}, "KeyError"),
    # A package named `helpers` beside the notebook whose checks pass everything: it must not be imported.
    "shadowing_helpers": Submission(
        {"ex7-answer": put("def scaled_dot_product_attention(q, k, v, mask=None):\n    return q, q\n")},
        {"ex7"}, "output has shape (B, T_q, d_k) = (2, 5, 11); expected (B, T_q, d_v) = (2, 5, 13)",
        files={"helpers/__init__.py": "def seed_everything(seed):\n    pass\n",
               "helpers/checks/__init__.py": "",
               "helpers/checks/attention.py": "def __getattr__(name):\n    return lambda *args, **kwargs: print('ok')\n"}),
}
