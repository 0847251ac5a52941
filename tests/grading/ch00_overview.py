"""Known submissions of chapter 00 and the exact points each must get (see tests/test_grading.py)."""

from helpers.checks import overview as checks

from ..nbgrader_course import Submission, put, replace


def _msg(catalogue, key):
    return next(m.message for m in catalogue if m.key == key)


def _budget_msg(key, value):
    return next(message for wrong, message in checks._BUDGET_MISTAKES[key] if wrong == value)


STUDENTS = {
    # Issue 31: a permutation test that compares only the first token of the outputs.
    "permutation_first_token_only": Submission(
        {"ex6-answer": replace("return torch.allclose(f(x[:, perm]), f(x)[:, perm], atol=1e-5)",
                               "return torch.allclose(f(x[:, perm])[:, 0], f(x)[:, perm][:, 0], atol=1e-5)")},
        {"ex6"}, "compares only some of the output tokens"),
    # One per main catalogued mistake of the issue: the shape map ...
    "no_head_axis": Submission(
        {"ex4-answer": replace('        "Q": (B, n_heads, T, d_head),\n        "K": (B, n_heads, T, d_head),\n'
                               '        "V": (B, n_heads, T, d_head),',
                               '        "Q": (B, T, d_model),\n        "K": (B, T, d_model),\n'
                               '        "V": (B, T, d_model),')},
        {"ex4"}, _msg(checks.SHAPE_MAP_MISTAKES, "no_head_axis")),
    "scores_T_by_d": Submission(
        {"ex4-answer": replace('"S": (B, n_heads, T, T),\n        "A": (B, n_heads, T, T),',
                               '"S": (B, n_heads, T, d_head),\n        "A": (B, n_heads, T, d_head),')},
        {"ex4"}, _msg(checks.SHAPE_MAP_MISTAKES, "scores_T_by_d")),
    "logits_no_vocab": Submission(
        {"ex4-answer": replace('"logits": (B, T, vocab),', '"logits": (B, T, d_model),')},
        {"ex4"}, _msg(checks.SHAPE_MAP_MISTAKES, "logits_no_vocab")),
    # ... the tour, the tokenizers ...
    "positions_by_token_id": Submission(
        {"ex5-answer": replace("h = h + wpe[:T]", "h = h + wpe[ids]")},
        {"ex5"}, _msg(checks.TOUR_MISTAKES, "positions_by_token_id")),
    "char_code_points": Submission(
        {"ex1-answer": replace("ids.append(index[ch])", "ids.append(ord(ch))")},
        {"ex1"}, _msg(checks.CHAR_ENCODE_MISTAKES, "code_points")),
    "merge_no_skip": Submission(
        {"ex2-answer": replace("i += 2", "i += 1")},
        {"ex2"}, _msg(checks.MERGE_MISTAKES, "no_skip")),
    # ... the permutation-equivariance test: `return True` and exact equality both fail ...
    "always_true": Submission(
        {"ex6-answer": put("def is_permutation_equivariant(f, x):\n    return True\n")},
        {"ex6"}, _msg(checks.PERMUTATION_MISTAKES, "always_true")),
    "exact_equality": Submission(
        {"ex6-answer": replace("torch.allclose(f(x[:, perm]), f(x)[:, perm], atol=1e-5)",
                               "torch.equal(f(x[:, perm]), f(x)[:, perm])")},
        {"ex6"}, _msg(checks.PERMUTATION_MISTAKES, "exact_equality")),
    # ... and wrong numeric answers: the output reservation forgotten, the off-by-one, words counted.
    "budget_forgot_output": Submission(
        {"ex7-answer": replace("margin_8k = 8192 - (600 + 6000 + 400 + 1000)", "margin_8k = 8192 - (600 + 6000 + 400)")},
        {"ex7"}, _budget_msg("margin_8k", 1192)),
    "budget_off_by_one": Submission(
        {"ex7-answer": replace("max_retrieved = 8192 - 600 - 400 - 1000", "max_retrieved = 8192 - 600 - 400 - 1000 - 1")},
        {"ex7"}, _budget_msg("max_retrieved", 6191)),
    "count_words": Submission(
        {"ex3-answer": replace("n_bpe_tokens = len(course_bpe().encode(text))", "n_bpe_tokens = len(text.split())")},
        {"ex3"}, "that is the number of words"),
    # Right for the visible configurations only: the hidden tests' other sizes catch it.
    "hard_coded_d_head": Submission(
        {"ex4-answer": replace("d_head = d_model // n_heads", "d_head = {12: 4, 30: 6}[d_model]")},
        {"ex4-hidden"}, "KeyError"),
    # The reference, imported or wrapped.
    "reference_import": Submission(
        {"ex4-answer": put("from helpers.overview import shape_map")},
        {"ex4"}, "not your own function", report="scan: reference_import (ex4)"),
    "reference_wrapper": Submission(
        {"ex5-answer": put("from helpers.blocks import decoder_forward\n\n\n"
                           "def lm_forward(ids, wte, wpe, blocks, final_norm):\n"
                           "    return decoder_forward(ids, wte, wpe, blocks, final_norm)\n")},
        {"ex5"}, "calls helpers.blocks.decoder_forward"),
}
