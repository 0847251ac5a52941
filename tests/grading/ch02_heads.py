"""Known submissions of chapter 02 and the exact points each must get (see tests/test_grading.py)."""

from helpers.checks import heads as checks

from ..nbgrader_course import Submission, put, replace


def _msg(catalogue, key):
    return next(m.message for m in catalogue if m.key == key)


STUDENTS = {
    # The classic: reshape straight to (B, H, T, d_head).
    "split_no_transpose": Submission(
        {"ex1-answer": replace("x.reshape(B, T, n_heads, d_head).transpose(1, 2)", "x.reshape(B, n_heads, T, d_head)")},
        {"ex1"}, _msg(checks.SPLIT_MISTAKES, "no_transpose")),
    "split_wrong_axis": Submission(
        {"ex1-answer": replace("x.reshape(B, T, n_heads, d_head).transpose(1, 2)",
                               "x.reshape(B, T, d_head, n_heads).permute(0, 3, 1, 2)")},
        {"ex1"}, _msg(checks.SPLIT_MISTAKES, "wrong_axis")),
    "merge_with_view": Submission(
        {"ex2-answer": replace(".reshape(B, T, H * d_head)", ".view(B, T, H * d_head)")},
        {"ex2"}, "view size is not compatible"),
    "no_output_projection": Submission(
        {"ex3-answer": replace("return merged @ w_o.T, weights", "return merged, weights")},
        {"ex3"}, _msg(checks.MHA_MISTAKES, "no_output_projection")),
    "head_averaged": Submission(
        {"ex3-answer": replace("return merged @ w_o.T, weights", "return merged @ w_o.T, weights.mean(dim=1)")},
        {"ex3"}, _msg(checks.MHA_MISTAKES, "head_averaged_weights")),
    "kv_modulo": Submission(
        {"ex4-answer": lambda source: replace("k.repeat_interleave(group, dim=1)", "k.repeat(1, group, 1, 1)")(
            replace("v.repeat_interleave(group, dim=1)", "v.repeat(1, group, 1, 1)")(source))},
        {"ex4"}, _msg(checks.GQA_MISTAKES, "kv_head_modulo")),
    "bias_full_width": Submission(
        {"ex5-answer": replace("count += 2 * d_model + 2 * d_kv", "count += 4 * d_model")},
        {"ex5"}, _msg(checks.PARAM_COUNT_MISTAKES, "bias_full_width")),
    # Right for the visible configurations only: the hidden test's other configurations catch it.
    "hard_coded": Submission(
        {"ex5-answer": put("def attention_param_count(d_model, n_heads, n_kv_heads=None, bias=False):\n"
                           "    return {(512, 8, None, False): 1048576, (512, 8, 2, False): 655360,\n"
                           "            (768, 12, None, True): 2362368, (512, 8, 2, True): 656640,\n"
                           "            (64, 4, 1, True): 10400}[(d_model, n_heads, n_kv_heads, bias)]\n")},
        {"ex5-hidden"}, "KeyError"),
    "reference_import": Submission(
        {"ex3-answer": put("from helpers.heads import multi_head_attention")},
        {"ex3"}, "not your own function", report="scan: reference_import (ex3)"),
    "torch_mha_wrapper": Submission(
        {"ex3-answer": put(
            "def multi_head_attention(x, w_q, w_k, w_v, w_o, n_heads, mask=None):\n"
            "    m = torch.nn.MultiheadAttention(x.shape[-1], n_heads, bias=False, batch_first=True, dtype=x.dtype)\n"
            "    with torch.no_grad():\n"
            "        m.in_proj_weight.copy_(torch.cat([w_q, w_k, w_v]))\n"
            "        m.out_proj.weight.copy_(w_o)\n"
            "    return m(x, x, x, average_attn_weights=False)\n")},
        {"ex3"}, "calls torch.nn.modules.activation.MultiheadAttention.forward", report="scan: torch_builtin (ex3)"),
    "enable_gqa_wrapper": Submission(
        {"ex4-answer": replace("heads, weights = scaled_dot_product_attention(q, k, v, mask)",
                               "heads = torch.nn.functional.scaled_dot_product_attention(q, k[:, ::group], "
                               "v[:, ::group], attn_mask=mask, enable_gqa=True)\n"
                               "    weights = None")},
        {"ex4"}, "calls torch.nn.functional.scaled_dot_product_attention", report="scan: torch_builtin (ex4)"),
    # A wrong numeric answer: the KV cache without the factor 2 for keys and values.
    "kv_bytes_no_factor_two": Submission(
        {"ex7-answer": replace("kv_bytes_gqa = 2 * n_layers", "kv_bytes_gqa = n_layers")},
        {"ex7"}, "only one of K and V is counted"),
    # The right numbers typed in: the visible test passes, the hidden test re-runs the cell with other sizes.
    "real_numbers_typed_in": Submission(
        {"ex7-answer": put("params_mha = 67108864\nparams_gqa = 41943040\nparams_mqa = 34603008\n"
                           "params_gpt2 = 2362368\nkv_bytes_mha = 2147483648\nkv_bytes_gqa = 536870912\n"
                           "kv_bytes_mqa = 67108864\nkv_saving_gqa = 4.0\n")},
        {"ex7-hidden"}, "`params_mha` does not follow from the sizes: with d_model = 1536 (not 4096) it should be "
                        "9437184, and your code gives 67108864"),
}
