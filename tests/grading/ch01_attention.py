"""Known submissions of chapter 01 and the exact points each must get (see tests/test_grading.py)."""

from helpers.checks import attention as checks

from ..nbgrader_course import Submission, put, replace


def _msg(catalogue, key):
    return next(m.message for m in catalogue if m.key == key)


NO_SCALE_SDPA = replace("/ math.sqrt(d_k)  # (..., T_q, T_k)\n    if mask", "  # (..., T_q, T_k)\n    if mask")

# The infinite loop costs one cell timeout: keep it short for this run.
GRADE_ARGS = ("--timeout", "15")


def _before(code: str):
    """An edit that puts `code` before the (right) answer."""
    return lambda source: code + source


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
        {"ex7"}, _msg(checks.SDPA_MISTAKES, "mask_after_softmax"),
        report="locked cells edited, restored before grading: ex7-test"),
    "loop": Submission({"ex5-answer": _before("while True:\n    pass\n")}, {"ex5"}, "CellTimeoutError",
                       report="ex5-answer ran past the time limit"),
    "reference_import": Submission(
        {"ex7-answer": put("from helpers.attention import scaled_dot_product_attention")},
        {"ex7"}, "not your own function", report="scan: reference_import (ex7)"),
    # FORBIDDEN is read-only once the checks are loaded: emptying exercise 7's set raises, and the
    # reference is still refused.
    "emptied_forbidden": Submission(
        {"ex7-answer": put("import helpers.checks.attention as _c\n"
                           "try:\n    _c.FORBIDDEN['ex7'] = ()\nexcept TypeError:\n    pass\n"
                           "from helpers.attention import scaled_dot_product_attention\n")},
        {"ex7"}, "not your own function", report="patching (ex7)"),
    "builtin_wrapper": Submission(
        {"ex7-answer": put("import torch.nn.functional as F\n"
                           "def scaled_dot_product_attention(q, k, v, mask=None):\n"
                           "    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)\n"
                           "    return out, None\n")},
        {"ex7"}, "calls torch", report="scan: torch_builtin (ex7)"),
    "patched_check": Submission(
        {"ex7-answer": lambda source: NO_SCALE_SDPA(source) + (
            "\nimport helpers.checks.attention as _c\n"
            "_c.check_scaled_dot_product_attention = lambda *a, **k: print('all good')\n")},
        {"ex7"}, _msg(checks.SDPA_MISTAKES, "no_scale"), report="checks_import (ex7), patching (ex7)"),
    # A patched library makes every later check refuse to run: exercise 7 and exercise 8's visible test.
    "patched_allclose": Submission(
        {"ex7-answer": lambda source: NO_SCALE_SDPA(source) + (
            "\nimport numpy\n"
            "torch.allclose = lambda *a, **k: True\n"
            "numpy.allclose = lambda *a, **k: True\n")},
        {"ex7", "ex8-test"}, "was replaced after the notebook", report="scan: patching (ex7)"),
    "noisy_but_right": Submission(
        {"ex2-answer": lambda source: (
            "import sys, warnings\n"
            "warnings.warn('this answer cell is noisy', DeprecationWarning)\n"
            + source.replace("    d_k = q.shape[-1]",
                             "    warnings.warn('noisy inside', UserWarning)\n"
                             "    print('debug: shapes', q.shape, k.shape, file=sys.stderr)\n"
                             "    d_k = q.shape[-1]"))}),
    # Test cells deleted outright: nbgrader puts them back (add_missing_cells) and they fail.
    "deleted_tests": Submission(
        {"ex4-answer": replace("float(\"-inf\")", "0.0"), "ex4-test": lambda source: None,
         "ex4-hidden": lambda source: None},
        {"ex4"}, _msg(checks.APPLY_MASK_MISTAKES, "fill_zero"), report="test cells deleted, restored"),
    # Robustness: none of these may stop the others from being graded, and the report says what happened.
    "kernel_crash": Submission({"ex5-answer": put("import os\nos._exit(1)\n")}, {"all"},
                               report="kernel died"),
    "output_flood": Submission({"ex3-answer": _before("for _ in range(50_000):\n    print('spam ' * 20)\n")},
                               report="output was truncated"),
    "memory_hog": Submission({"ex3-answer": _before("_hog = [torch.ones(2**28) for _ in range(64)]  # 64 GiB\n")},
                             {"ex3"}, "can't allocate memory", report="ran out of memory"),
    # Reaches outside its folder but answers right: full points, and the scan reports it.
    "writes_elsewhere": Submission(
        {"ex2-answer": _before("try:\n    open('{COURSE}/planted.txt', 'w').write('x')\nexcept OSError as error:\n"
                               "    print('blocked:', error)\n")},
        report="scan: file_access (ex2)"),
    "reads_gradebook": Submission(
        {"ex2-answer": _before("try:\n    print('read', len(open('{COURSE}/gradebook.db', 'rb').read()))\n"
                               "except OSError as error:\n    print('blocked:', error)\n")},
        report="scan: file_access (ex2)"),
    "uses_network": Submission(
        {"ex2-answer": _before("import socket\ntry:\n    socket.create_connection(('pypi.org', 443), timeout=2).close()\n"
                               "    print('network reachable')\nexcept OSError as error:\n    print('no network:', error)\n")},
        report="scan: network (ex2)"),
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
        report="scan: extra_files (-)",
        files={"helpers/__init__.py": "def seed_everything(seed):\n    pass\n",
               "helpers/checks/__init__.py": "",
               "helpers/checks/attention.py": "def __getattr__(name):\n    return lambda *args, **kwargs: print('ok')\n"}),
}
