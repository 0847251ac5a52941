"""Known submissions of chapter 07 and the exact points each must get (see tests/test_grading.py)."""

from helpers.checks import complexity as checks

from ..nbgrader_course import Submission, put, replace


def _msg(catalogue, key):
    return next(m.message for m in catalogue if m.key == key)


def _number(key, start):
    """The message of the known wrong value of `key` whose message starts with `start`."""
    return next(message for _, message in checks._real_numbers()[1][key] if message.startswith(start))


STUDENTS = {
    # The catalogued mistakes, one each.
    "multiply_add_as_one": Submission(
        {"ex1-answer": put("def attention_flops(d_model, n_heads, T, n_kv_heads=None):\n"
                           "    n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads\n"
                           "    d_head = d_model // n_heads\n"
                           "    d_kv = n_kv_heads * d_head\n"
                           "    return {'projections': T * d_model * (d_model + 2 * d_kv),\n"
                           "            'scores': n_heads * T * T * d_head, 'values': n_heads * T * T * d_head,\n"
                           "            'output': T * d_model * d_model}\n")},
        {"ex1"}, _msg(checks.ATTENTION_FLOP_MISTAKES, "multiply_add_as_one")),
    "n_heads_for_kv": Submission(
        {"ex1-answer": replace("d_kv = n_kv_heads * d_head", "d_kv = n_heads * d_head")},
        {"ex1"}, _msg(checks.ATTENTION_FLOP_MISTAKES, "n_heads_for_kv")),
    "bytes_always_two": Submission(
        {"ex3-answer": replace("size = torch.empty((), dtype=dtype).element_size()", "size = 2")},
        {"ex3"}, _msg(checks.KV_BYTES_MISTAKES, "bytes_fixed_two")),
    "kv_numbers_n_heads": Submission(
        {"ex4-answer": replace('model["n_kv_heads"] * model["d_head"]', 'model["n_heads"] * model["d_head"]')},
        {"ex4"}, _number("kv_llama3_8b", "n_heads was used where n_kv_heads belongs")),
    "offset_plus_one": Submission(
        {"ex5-answer": replace("wpe[cache_length:cache_length + T]", "wpe[cache_length + 1:cache_length + 1 + T]")},
        {"ex5"}, _msg(checks.EMBED_MISTAKES, "offset_plus_one")),
    "top_left_mask": Submission(
        {"ex6-answer": replace(".tril(diagonal=T_k - T_new)", ".tril()")},
        {"ex6"}, _msg(checks.STEP_MISTAKES, "top_left_mask")),
    "sum_not_rescaled": Submission(
        {"ex7-answer": replace("l = c * l + p.sum(dim=-1, keepdim=True)", "l = l + p.sum(dim=-1, keepdim=True)")},
        {"ex7"}, _msg(checks.ONLINE_MISTAKES, "sum_not_rescaled")),
    # Issue 26: a decode step on the roofline, two catalogued mistakes and the reference.
    "roofline_times_added": Submission(
        {"ex8-answer": replace('"seconds": max(flops / peak_flops, moved / bandwidth)',
                               '"seconds": flops / peak_flops + moved / bandwidth')},
        {"ex8"}, _msg(checks.ROOFLINE_MISTAKES, "times_added")),
    "roofline_weights_per_sequence": Submission(
        {"ex8-answer": replace("moved = n_params * bytes_per_param ", "moved = n_params * bytes_per_param * batch ")},
        {"ex8"}, _msg(checks.ROOFLINE_MISTAKES, "weights_per_sequence")),
    "roofline_by_the_reference": Submission(
        {"ex8-answer": put("from helpers.complexity import decode_roofline")},
        {"ex8"}, "not your own function", report="scan: reference_import (ex8)"),
    # Issue 31: right numbers from the whole score matrix at once (no blocks, no running statistics).
    "whole_score_matrix": Submission(
        {"ex7-answer": put("def online_softmax_attention(q, k, v, block_size):\n"
                           "    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])\n"
                           "    p = torch.exp(s - s.amax(dim=-1, keepdim=True))\n"
                           "    return (p @ v) / p.sum(dim=-1, keepdim=True)\n")},
        {"ex7"}, "forms the whole score matrix"),
    "kv_numbers_by_the_reference": Submission(
        {"ex4-answer": replace('return (2 * model["n_layers"] * model["n_kv_heads"] * model["d_head"] * model["context"]\n'
                               '            * bytes_per_element)',
                               'return helpers.complexity.kv_cache_bytes(model["n_layers"], model["n_kv_heads"], '
                               'model["d_head"], model["context"])')},
        {"ex4"}, "uses helpers.complexity.kv_cache_bytes, which gives the answer away"),
    # Right for the visible configurations only: the hidden test's other configurations catch it.
    "hard_coded": Submission(
        {"ex2-answer": put("def mlp_flops(d_model, d_ff, T, kind='gelu'):\n"
                           "    return {(64, 172, 16, 'swiglu'): 1056768, (64, 256, 16, 'gelu'): 1048576,\n"
                           "            (768, 3072, 1024, 'gelu'): 9663676416,\n"
                           "            (4096, 14336, 1, 'swiglu'): 352321536}[(d_model, d_ff, T, kind)]\n")},
        {"ex2-hidden"}, "KeyError"),
    # The right numbers typed in: the visible test passes, the hidden test re-runs the cell with other sizes.
    "kv_numbers_typed_in": Submission(
        {"ex4-answer": put("kv_llama2_7b = 2147483648\nkv_llama3_8b = 1073741824\nkv_falcon_7b = 16777216\n"
                           "kv_batch_llama3 = 17179869184\nmax_batch_llama3 = 65\ngqa_saving_llama3 = 4.0\n")},
        {"ex4-hidden"}, "`gqa_saving_llama3` does not follow from the sizes: with llama3_8b['n_heads'] = 24 (not 32) "
                        "and llama3_8b['n_kv_heads'] = 4 (not 8) it should be 6.0, and your code gives 4.0"),
    # Cheats: the reference, and a wrapper of torch's fused attention.
    "reference_import": Submission(
        {"ex6-answer": put("from helpers.complexity import attend_with_cache")},
        {"ex6"}, "not your own function", report="scan: reference_import (ex6)"),
    "sdpa_wrapper": Submission(
        {"ex7-answer": put("import torch.nn.functional as F\n"
                           "def online_softmax_attention(q, k, v, block_size):\n"
                           "    return F.scaled_dot_product_attention(q, k, v)\n")},
        {"ex7"}, "calls torch.nn.functional.scaled_dot_product_attention", report="scan: torch_builtin (ex7)"),
}
