"""Known submissions of chapter 06 and the exact points each must get (see tests/test_grading.py)."""

from helpers.checks import positions as checks

from ..nbgrader_course import Submission, put, replace


def _msg(catalogue, key):
    return next(m.message for m in catalogue if m.key == key)


STUDENTS = {
    # Issue 31: weak property tests (positions 0 .. 2 and one offset; q = k), and float32 angles.
    "relative_test_small_positions": Submission(
        {"ex5-answer": put("def relative_offset_holds(rope, d_head):\n"
                           "    g = torch.Generator().manual_seed(0)\n"
                           "    q = torch.randn(1, d_head, generator=g, dtype=torch.float64)\n"
                           "    k = torch.randn(1, d_head, generator=g, dtype=torch.float64)\n"
                           "    scores = torch.stack([(rope(q, n + 1) * rope(k, n)).sum() for n in (0, 1)])\n"
                           "    return bool(torch.allclose(scores, scores[0].expand(2)))\n")},
        {"ex5"}, _msg(checks.RELATIVE_TEST_MISTAKES, "small_positions")),
    "relative_test_q_equals_k": Submission(
        {"ex5-answer": replace("k = torch.randn(1, d_head, generator=g, dtype=torch.float64)", "k = q")},
        {"ex5"}, _msg(checks.RELATIVE_TEST_MISTAKES, "q_equals_k")),
    "table_float32_angles": Submission(
        {"ex1-answer": replace("dtype=torch.float64", "dtype=torch.float32")},
        {"ex1", "ex2-hidden"}, "the angles p * w_i are computed in float32"),
    # One per main catalogued mistake of the issue. Exercise 2 calls the learner's own table and
    # exercise 4 the learner's own RoPE, so a wrong table or rotation costs those points too.
    "sin_cos_swapped": Submission(
        {"ex1-answer": lambda source: source.replace("pe[:, 0::2] = torch.sin(angles)", "pe[:, 0::2] = torch.cos(angles)")
                                            .replace("pe[:, 1::2] = torch.cos(angles)", "pe[:, 1::2] = torch.sin(angles)")},
        # ex2's feedback names exercise 1 (core.check_function's prerequisites) and quotes its message
        {"ex1", "ex2"}, "add_positions uses your `sinusoidal_table` from exercise 1, which is not right yet"),
    "positions_after_attention": Submission(
        {"ex2-answer": replace("return attn(x + pe)", "return attn(x) + pe")},
        {"ex2"}, _msg(checks.ADD_POSITIONS_MISTAKES, "positions_after_attention")),
    "rope_interleaved": Submission(
        {"ex3-answer": lambda source: source.replace(
            "a, b = x[..., : d_head // 2], x[..., d_head // 2:]", "a, b = x[..., 0::2], x[..., 1::2]").replace(
            "torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)",
            "torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)")},
        {"ex3", "ex4"}, _msg(checks.ROPE_MISTAKES, "interleaved_layout").split(" of GPT-J")[0]),
    "rope_on_v": Submission(
        {"ex4-answer": replace("apply_rope(k, 0), v, mask)", "apply_rope(k, 0), apply_rope(v, 0), mask)")},
        {"ex4"}, _msg(checks.ROPE_ATTENTION_MISTAKES, "rope_on_v")),
    "cached_offset_off_by_one": Submission(
        {"ex4-answer": replace("apply_rope(q, start)", "apply_rope(q, start + 1)")},
        {"ex4"}, _msg(checks.ROPE_ATTENTION_MISTAKES, "q_offset_plus_one")),
    "property_test_exact_floats": Submission(
        {"ex5-answer": replace("if not torch.allclose(scores, scores[0].expand(3)):", "if not bool((scores == scores[0]).all()):")},
        {"ex5"}, _msg(checks.RELATIVE_TEST_MISTAKES, "exact_equality")),
    "alibi_sign_flipped": Submission(
        {"ex6-answer": replace("(-m[:, None, None] * distance)", "(m[:, None, None] * distance)")},
        {"ex6"}, _msg(checks.ALIBI_MISTAKES, "sign_flipped")),
    "alibi_one_geometric_sequence": Submission(
        {"ex6-answer": replace("slopes = geometric(P) + geometric(2 * P)[0::2][: n_heads - P]", "slopes = geometric(n_heads)")},
        {"ex6"}, _msg(checks.ALIBI_MISTAKES, "non_power_of_two")),
    # Right for the visible test's d_head = 8 only: the hidden test (d_head = 6) and exercise 4
    # (d_head = 4), which calls this RoPE, catch it.
    "hard_coded_d_head": Submission(
        {"ex3-answer": replace("T, d_head = x.shape[-2], x.shape[-1]", "T, d_head = x.shape[-2], 8")},
        {"ex3-hidden", "ex4"}),
    "reference_import": Submission(
        {"ex3-answer": put("from helpers.positions import apply_rope")},
        {"ex3"}, "not your own function", report="scan: reference_import (ex3)"),
    # Exercise 4 may use the reference's rotation: full marks, nothing reported.
    "allowed_reference_rope": Submission(
        {"ex4-answer": replace("return scaled_dot_product_attention(apply_rope(q, start), apply_rope(k, 0), v, mask)",
                               "from helpers.positions import apply_rope as reference_rope\n"
                               "    return scaled_dot_product_attention(reference_rope(q, start), reference_rope(k, 0), v, mask)")},
        set()),
    "turn_position_rounded_down": Submission(
        {"ex7-answer": replace("turn_position = math.ceil(wavelength_pair)", "turn_position = math.floor(wavelength_pair)")},
        {"ex7"}, "at that position the angle is still just below 2 pi; round up"),
}
