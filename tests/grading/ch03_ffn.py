"""Known submissions of chapter 03 and the exact points each must get (see tests/test_grading.py)."""

from helpers.checks import ffn as checks

from ..nbgrader_course import Submission, put, replace


def _msg(catalogue, key):
    return next(m.message for m in catalogue if m.key == key)


def _number(table, key, start):
    """The message of the known wrong value of `key` whose message starts with `start`."""
    return next(message for _, message in table[key] if message.startswith(start))


STUDENTS = {
    # The catalogued mistakes, one each.
    "activation_after_second": Submission(
        {"ex2-answer": put("def feed_forward(x, w1, b1, w2, b2):\n"
                           "    return F.gelu((x @ w1.T + b1) @ w2.T + b2)\n")},
        {"ex2"}, _msg(checks.FFN_MISTAKES, "activation_after_second")),
    "biases_forgotten": Submission(
        {"ex4-answer": replace("gpt2_mlp = 2 * 768 * 3072 + 3072 + 768", "gpt2_mlp = 2 * 768 * 3072")},
        {"ex4"}, _number(checks._COUNT_MISTAKES, "gpt2_mlp", "biases forgotten")),
    "gate_up_swapped": Submission(
        {"ex3-answer": put("def swiglu_ffn(x, w_gate, w_up, w_down):\n"
                           "    return (F.silu(x @ w_up.T) * (x @ w_gate.T)) @ w_down.T\n")},
        {"ex3"}, _msg(checks.SWIGLU_MISTAKES, "gate_up_swapped")),
    "softmax_all_experts": Submission(
        {"ex6-answer": replace("return torch.softmax(top_logits, dim=-1), expert_indices",
                               "return torch.softmax(router_logits, dim=-1), expert_indices")},
        {"ex6"}, _msg(checks.ROUTE_MISTAKES, "softmax_all_experts")),
    "not_renormalized": Submission(
        {"ex6-answer": replace("return torch.softmax(top_logits, dim=-1), expert_indices",
                               "return torch.softmax(router_logits, dim=-1).gather(-1, expert_indices), expert_indices")},
        {"ex6"}, _msg(checks.ROUTE_MISTAKES, "not_renormalized")),
    # The same mistake inside the MoE forward pass.
    "moe_not_renormalized": Submission(
        {"ex7-answer": replace("weights = torch.softmax(top_logits, dim=-1)  # (N, k)",
                               "weights = torch.softmax(flat @ router_weight.T, dim=-1).gather(-1, chosen)")},
        {"ex7"}, _msg(checks.MOE_MISTAKES, "not_renormalized")),
    # A test for token independence that cannot fail.
    "always_true": Submission(
        {"ex5-answer": put("def is_token_independent(fn, x):\n    return True\n")},
        {"ex5"}, _msg(checks.INDEPENDENCE_MISTAKES, "always_true")),
    # float32 is hard-coded: the visible test's float64 probe names it (and the hidden float64 inputs).
    "hard_coded_float32": Submission(
        {"ex2-answer": put("def feed_forward(x, w1, b1, w2, b2):\n"
                           "    x, w1, b1, w2, b2 = (t.to(torch.float32) for t in (x, w1, b1, w2, b2))\n"
                           "    return F.gelu(x @ w1.T + b1) @ w2.T + b2\n")},
        {"ex2"}, "works in float32 but not in float64: output has dtype torch.float32; expected torch.float64"),
    # Cheats: the reference, and a wrapper of the built-in the exercise asks for.
    "reference_import": Submission(
        {"ex2-answer": put("from helpers.ffn import feed_forward")},
        {"ex2"}, "not your own function", report="scan: reference_import (ex2)"),
    "builtin_wrapper": Submission(
        {"ex1-answer": put("def gelu(x, approximate='none'):\n"
                           "    return F.gelu(x, approximate=approximate)\n")},
        {"ex1"}, "gelu calls torch.nn.functional.gelu"),
    # A wrong number with a known reason.
    "balance_loss_without_n": Submission(
        {"ex8-answer": replace("balance_loss = 4 * (", "balance_loss = (")},
        {"ex8"}, _number(checks._MOE_MISTAKES, "balance_loss", "the factor n_experts = 4 is missing")),
}
