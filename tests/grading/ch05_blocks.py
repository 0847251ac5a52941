"""Known submissions of chapter 05 and the exact points each must get (see tests/test_grading.py)."""

from helpers.checks import blocks as checks

from ..nbgrader_course import Submission, put, replace


def _msg(catalogue, key):
    return next(m.message for m in catalogue if m.key == key)


def _number(table, key, start):
    """The message of the known wrong value of `key` whose message starts with `start`."""
    return next(message for _, message in table[key] if message.startswith(start))


STUDENTS = {
    # The catalogued mistakes, one each.
    "kv_from_decoder": Submission(
        {"ex1-answer": lambda source: source.replace("memory @ w_k.T", "x @ w_k.T").replace("memory @ w_v.T", "x @ w_v.T")},
        {"ex1"}, _msg(checks.CROSS_MISTAKES, "kv_from_decoder")),
    "causal_on_cross": Submission(
        {"ex1-answer": replace("    heads, weights = scaled_dot_product_attention(q, k, v, mask)",
                               "    causal = torch.ones(x.shape[1], memory.shape[1], dtype=torch.bool).tril()\n"
                               "    mask = causal if mask is None else mask & causal\n"
                               "    heads, weights = scaled_dot_product_attention(q, k, v, mask)")},
        {"ex1"}, _msg(checks.CROSS_MISTAKES, "causal_on_cross")),
    "padding_on_query_axis": Submission(
        {"ex1-answer": replace("memory_mask[:, None, None, :]", "memory_mask[:, None, :, None]")},
        {"ex1"}, _msg(checks.CROSS_MISTAKES, "padding_on_query_axis")),
    "self_attention_bidirectional": Submission(
        {"ex2-answer": replace("self_attn(norm1(x), causal)", "self_attn(norm1(x), None)")},
        {"ex2"}, _msg(checks.BLOCK_MISTAKES, "self_attention_bidirectional")),
    "memory_normalised_twice": Submission(
        {"ex2-answer": replace("cross_attn(norm2(x), memory, memory_mask)", "cross_attn(norm2(x), norm2(memory), memory_mask)")},
        {"ex2"}, _msg(checks.BLOCK_MISTAKES, "memory_normalised_twice")),
    "cross_no_residual": Submission(
        {"ex2-answer": replace("x = x + cross_attn(", "x = cross_attn(")},
        {"ex2"}, _msg(checks.BLOCK_MISTAKES, "cross_no_residual")),
    "prefix_causal_inside": Submission(
        {"ex4-answer": replace("visible = (j <= i) | (j < prefix_lengths[:, None, None])", "visible = j <= i")},
        {"ex4"}, _msg(checks.PREFIX_MISTAKES, "causal_inside_prefix")),
    "masks_padding_on_queries": Submission(
        {"ex3b-answer": replace("torch.arange(T_k)[None, None, :]", "torch.arange(T_q)[None, :, None]")},
        {"ex3b"}, _msg(checks.MODEL_MASK_MISTAKES, "padding_on_query_axis")),
    # Wrong names and counts with a known reason.
    "padding_read_as_prefix": Submission(
        {"ex3a-answer": replace('mask_A = "causal"', 'mask_A = "prefix-lm"')},
        {"ex3a"}, checks._NAME_MISTAKES["A", "prefix-lm"]),
    "decoder_layer_without_cross_attention": Submission(
        {"ex5-answer": replace("decoder_layer = 2 * (4 * d * d)", "decoder_layer = 4 * d * d")},
        {"ex5"}, _number(checks._COUNT_MISTAKES, "decoder_layer", "cross-attention's four projections")),
    # Right for the visible test's T = 7 only: the hidden tests' other lengths catch it.
    "hard_coded_T": Submission(
        {"ex4-answer": lambda source: source.replace("torch.arange(T, ", "torch.arange(7, ")},
        {"ex4-hidden"}),
    # Issue 31: answers computed in the answer cell by the reference (no check calls a function there).
    "mask_names_from_classify_mask": Submission(
        {"ex3a-answer": put("from helpers.attention import classify_mask\n\n\n"
                            "def _name(mask):\n"
                            "    try:\n"
                            "        return classify_mask(mask)\n"
                            "    except ValueError:\n"
                            "        return 'none'\n\n\n"
                            "mask_A, mask_B, mask_C, mask_D, mask_E, mask_F = (_name(MASKS_TO_NAME[k]) for k in 'ABCDEF')\n")},
        {"ex3a"}, "uses helpers.attention.classify_mask, which gives the answer away", report="scan: reference_import (ex3a)"),
    "counts_measured_on_the_reference": Submission(
        {"ex5-answer": put("cfg = helpers.blocks.ModelConfig(vocab_size=32000, d_model=512, n_heads=8, d_ff=2048, "
                           "n_layers=6, max_seq_len=512, kind='encoder-decoder', norm='layernorm', "
                           "norm_placement='pre', tie_weights=True)\n"
                           "model = helpers.blocks.TinyEncoderDecoder(cfg)\n"
                           "encoder_layer = sum(p.numel() for p in model.encoder[0].parameters())\n"
                           "decoder_layer = 4_197_376\n"
                           "total = sum(p.numel() for p in model.parameters())\n")},
        {"ex5"}, "uses helpers.blocks.TinyEncoderDecoder, which gives the answer away"),
    # The reference itself.
    "reference_import": Submission(
        {"ex1-answer": put("from helpers.blocks import cross_attention")},
        {"ex1"}, "not your own function", report="scan: reference_import (ex1)"),
}
