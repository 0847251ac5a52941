"""Known submissions of chapter 04 and the exact points each must get (see tests/test_grading.py)."""

from helpers.checks import norms as checks

from ..nbgrader_course import Submission, put, replace


def _msg(catalogue, key):
    return next(m.message for m in catalogue if m.key == key)


STUDENTS = {
    # One per main catalogued mistake of the issue.
    "unbiased_variance": Submission(
        {"ex2-answer": replace("((x - mean) ** 2).mean(dim=-1, keepdim=True)", "x.var(dim=-1, keepdim=True)")},
        {"ex2"}, _msg(checks.LAYER_NORM_MISTAKES, "unbiased")),
    "eps_outside": Submission(
        {"ex2-answer": replace("torch.sqrt(var + eps)", "(torch.sqrt(var) + eps)")},
        {"ex2"}, _msg(checks.LAYER_NORM_MISTAKES, "eps_outside")),
    "over_batch": Submission(
        {"ex2-answer": replace("dim=-1", "dim=0")},
        {"ex2"}, _msg(checks.LAYER_NORM_MISTAKES, "over_batch")),
    "rms_subtracts_mean": Submission(
        {"ex3-answer": replace("    rms = torch.sqrt(", "    x = x - x.mean(dim=-1, keepdim=True)\n    rms = torch.sqrt(")},
        {"ex3"}, _msg(checks.RMS_NORM_MISTAKES, "subtracts_mean")),
    "post_ln_norm_before_add": Submission(
        {"ex5-answer": lambda source: source.replace("x = norm1(x + attn(x))", "x = x + norm1(attn(x))")
                                            .replace("x = norm2(x + ffn(x))", "x = x + norm2(ffn(x))")},
        {"ex5"}, _msg(checks.POST_LN_MISTAKES, "norm_before_add")),
    "pre_ln_missing_final_residual": Submission(
        {"ex4-answer": replace("x = x + ffn(norm2(x))", "x = ffn(norm2(x))")},
        {"ex4"}, _msg(checks.PRE_LN_MISTAKES, "missing_final_residual")),
    "whole_tensor_norm": Submission(
        {"ex6-answer": lambda source: source.replace(".norm(dim=-1).mean()", ".norm()")},
        {"ex6"}, _msg(checks.RESIDUAL_MISTAKES, "frobenius")),
    # Right for the visible test's d_model = 7 only: the hidden tests' other sizes catch it.
    "hard_coded_d_model": Submission(
        {"ex2-answer": replace("((x - mean) ** 2).mean(dim=-1, keepdim=True)",
                               "((x - mean) ** 2).sum(dim=-1, keepdim=True) / 7")},
        {"ex2-hidden"}),
    "reference_import": Submission(
        {"ex2-answer": put("from helpers.norms import layer_norm")},
        {"ex2"}, "not your own function"),
    "builtin_wrapper": Submission(
        {"ex3-answer": put("import torch.nn.functional as F\n"
                           "def rms_norm(x, gamma, eps=1e-6):\n"
                           "    return F.rms_norm(x, (x.shape[-1],), gamma, eps)\n")},
        {"ex3"}, "calls torch"),
    # Wrong numeric answers: the unbiased variance by hand; GPT-2's final LayerNorm forgotten.
    "unbiased_by_hand": Submission(
        {"ex1-answer": replace("var_x = 9.0", "var_x = 12.0")},
        {"ex1"}, checks._M_UNBIASED),
    "forgot_ln_f": Submission(
        {"ex7-answer": replace("ln_params_gpt2 = (2 * 12 + 1) * 2 * 768", "ln_params_gpt2 = 2 * 12 * 2 * 768")},
        {"ex7"}, "the final LayerNorm (ln_f) after the last block is missing"),
}
