"""Chapter 05's checks: they accept correct answers written independently (and in other correct
styles), name every catalogued mistake with its own message, and refuse the reference, the mask
builders and torch's attention and transformer layers."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import helpers.attention as masks
import helpers.blocks as reference
import helpers.checks.blocks as checks
from helpers.attention import classify_mask
from helpers.checks import CheckFailed
from helpers.heads import merge_heads, repeat_kv, split_heads

from . import loops_blocks as loops
from .hidden import hidden_inputs

CHECKS = {
    "cross_attention": checks.check_cross_attention,
    "decoder_block": checks.check_decoder_block,
    "model_masks": checks.check_model_masks,
    "prefix_lm_mask": checks.check_prefix_lm_mask,
}

# The inputs of the first hidden call of each check, read from the solution (tests/hidden.py).
HIDDEN = hidden_inputs("blocks", CHECKS)
# The mistakes the chapter's issue asked each check's catalogue to name (tests/test_catalogues.py).
ISSUE_LIST = {
    "cross_attention": {"kv_from_decoder", "causal_on_cross", "padding_on_query_axis"},
    "decoder_block": {"cross_no_residual", "memory_normalised_twice", "self_attention_bidirectional"},
    "prefix_lm_mask": {"causal_inside_prefix"},
    "model_masks": {"padding_on_query_axis", "causal_cross"},
}


def _other_correct_styles():
    def cross_with_course_helpers(x, memory, w_q, w_k, w_v, w_o, n_heads, n_kv_heads=None, memory_mask=None):
        n_kv = n_heads if n_kv_heads is None else n_kv_heads
        q = split_heads(x @ w_q.T, n_heads)
        k = repeat_kv(split_heads(memory @ w_k.T, n_kv), n_heads // n_kv)
        v = repeat_kv(split_heads(memory @ w_v.T, n_kv), n_heads // n_kv)
        mask = None if memory_mask is None else memory_mask[:, None, None, :]
        heads, weights = masks.scaled_dot_product_attention(q, k, v, mask)
        return merge_heads(heads) @ w_o.T, weights

    def cross_einsum(x, memory, w_q, w_k, w_v, w_o, n_heads, n_kv_heads=None, memory_mask=None):
        n_kv = n_heads if n_kv_heads is None else n_kv_heads
        B, T_q, d = x.shape
        dh = d // n_heads
        q = (x @ w_q.T).view(B, T_q, n_kv, n_heads // n_kv, dh)  # query heads grouped by their K/V head
        k = (memory @ w_k.T).view(B, -1, n_kv, dh)
        v = (memory @ w_v.T).view(B, -1, n_kv, dh)
        s = torch.einsum("bqgrd,bkgd->bgrqk", q, k) / dh ** 0.5
        if memory_mask is not None:
            s = s.masked_fill(~memory_mask[:, None, None, None, :], float("-inf"))
        w = torch.softmax(s, dim=-1)
        o = torch.einsum("bgrqk,bkgd->bqgrd", w, v).reshape(B, T_q, d)
        return o @ w_o.T, w.reshape(B, n_heads, T_q, -1)

    def block_one_expression(x, memory, self_attn, cross_attn, ffn, norm1, norm2, norm3, memory_mask=None):
        causal = masks.causal_mask(x.shape[1])
        x = x + self_attn(norm1(x), causal)
        x = x + cross_attn(norm2(x), memory, memory_mask)
        return x + ffn(norm3(x))

    def masks_with_broadcasting(kind, lengths, T, target_lengths=None, T_tgt=None):
        def keys(lens, T_q, T_k):
            return (torch.arange(T_k)[None, None, :] < torch.as_tensor(lens)[:, None, None]).expand(-1, T_q, -1)
        def causal(lens, T_):
            return keys(lens, T_, T_) & torch.ones(T_, T_, dtype=torch.bool).tril()
        if kind == "encoder":
            return {"self": keys(lengths, T, T)}
        if kind == "decoder":
            return {"self": causal(lengths, T)}
        return {"encoder": keys(lengths, T, T), "decoder": causal(target_lengths, T_tgt),
                "cross": keys(lengths, T_tgt, T)}

    def prefix_both_axes(prefix_lengths, lengths, T):
        i = torch.arange(T, device=lengths.device)[:, None]
        j = torch.arange(T, device=lengths.device)[None, :]
        p, n = prefix_lengths[:, None, None], lengths[:, None, None]
        inside = (i < p) & (j < p)  # the prefix block, then causal: the same mask written another way
        return (inside | (j <= i)) & (j < n)

    yield "cross_attention", cross_with_course_helpers
    yield "cross_attention", cross_einsum
    yield "decoder_block", block_one_expression
    yield "model_masks", masks_with_broadcasting
    yield "prefix_lm_mask", prefix_both_axes


@pytest.mark.parametrize("name, answer", list(_other_correct_styles()), ids=lambda v: getattr(v, "__name__", v))
@pytest.mark.parametrize("variant", ["visible", "hidden"])
def test_check_accepts_other_correct_styles(name, answer, variant, capsys):
    CHECKS[name](answer, **(HIDDEN[name] if variant == "hidden" else {}))
    assert "✓" in capsys.readouterr().out


def test_wrong_shape_is_reported_with_axis_names():
    with pytest.raises(CheckFailed, match=re.escape("output has shape (B, d_model, T_tgt) = (2, 12, 5); "
                                                    "expected (B, T_tgt, d_model) = (2, 5, 12)")):
        checks.check_decoder_block(lambda *a: loops.decoder_block(*a).transpose(1, 2))
    with pytest.raises(CheckFailed, match=re.escape("the 'cross' mask has shape (B, T_src, T_tgt) = (2, 6, 4); "
                                                    "expected (B, T_tgt, T_src) = (2, 4, 6)")):
        checks.check_model_masks(lambda kind, lengths, T, tl=None, T_tgt=None: {
            **loops.model_masks(kind, lengths, T, tl, T_tgt),
            **({"cross": loops.model_masks(kind, lengths, T, tl, T_tgt)["cross"].transpose(1, 2)}
               if kind == "encoder-decoder" else {})})


def test_model_masks_other_failures():
    with pytest.raises(CheckFailed, match=r"should return a dict with keys \['self'\]; it returned a Tensor"):
        checks.check_model_masks(lambda kind, lengths, T, tl=None, T_tgt=None: loops.model_masks("encoder", lengths, T)["self"])
    with pytest.raises(CheckFailed, match=r"should have the keys \['cross', 'decoder', 'encoder'\]"):
        checks.check_model_masks(lambda kind, lengths, T, tl=None, T_tgt=None: loops.model_masks(
            "decoder" if kind == "encoder-decoder" else kind, lengths, T))
    with pytest.raises(CheckFailed, match="dtype torch.int64; expected torch.bool"):
        checks.check_model_masks(lambda kind, lengths, T, tl=None, T_tgt=None:
                                 {k: v.long() for k, v in loops.model_masks(kind, lengths, T, tl, T_tgt).items()})


def test_not_implemented_yet_and_exceptions_name_the_inputs():
    def blank(*args):
        raise NotImplementedError()

    with pytest.raises(CheckFailed, match="not implemented yet"):
        checks.check_decoder_block(blank)

    with pytest.raises(CheckFailed) as info:  # self_attn takes (h, mask): a third argument is a TypeError
        checks.check_decoder_block(lambda *a: a[2](a[0], a[0], a[0]))
    assert "raised TypeError" in str(info.value) and "self_attn=self_attn (h, mask)" in str(info.value)


def test_block_mistakes_are_all_told_apart():
    """Every pair of catalogued decoder blocks gives different outputs on the check's inputs."""
    for case in (checks._block_case(torch.Generator().manual_seed(0), torch.float64, 2, 5, 7, 12, 3, 11, True),):
        outputs = [reference.decoder_block(*case.args)] + [m.impl(*case.args) for m in checks.BLOCK_MISTAKES]
        for i in range(len(outputs)):
            for j in range(i + 1, len(outputs)):
                assert not torch.allclose(outputs[i], outputs[j], atol=1e-3), (i, j)


# ------------------------------------------------------------------------------------------------
# Cheats: the reference, torch's built-ins, wrappers of either
# ------------------------------------------------------------------------------------------------


# The reference answers a check must refuse as not the learner's own (tests/test_catalogues.py).
REFERENCES = [
    ("cross_attention", reference.cross_attention),
    ("decoder_block", reference.decoder_block),
    ("model_masks", masks.model_masks),
    ("prefix_lm_mask", masks.prefix_lm_mask),
]


def _mha_wrapper(x, memory, w_q, w_k, w_v, w_o, n_heads, n_kv_heads=None, memory_mask=None):
    mha = nn.MultiheadAttention(x.shape[-1], n_heads, bias=False, batch_first=True, dtype=x.dtype)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([w_q, w_k, w_v]))
        mha.out_proj.weight.copy_(w_o)
    return mha(x, memory, memory, key_padding_mask=None if memory_mask is None else ~memory_mask,
               average_attn_weights=False)


def _attention_module_wrapper(x, memory, w_q, w_k, w_v, w_o, n_heads, n_kv_heads=None, memory_mask=None):
    config = reference.ModelConfig(vocab_size=2, d_model=x.shape[-1], n_heads=n_heads, n_kv_heads=n_kv_heads)
    attn = reference.Attention(config).to(x.dtype)
    with torch.no_grad():
        for layer, w in zip((attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj), (w_q, w_k, w_v, w_o)):
            layer.weight.copy_(w)
    return attn(x, None if memory_mask is None else memory_mask[:, None, None, :], source=memory)


def _torch_decoder_layer_wrapper(x, memory, self_attn, cross_attn, ffn, norm1, norm2, norm3, memory_mask=None):
    layer = nn.TransformerDecoderLayer(x.shape[-1], 1, 4, dropout=0.0, batch_first=True, norm_first=True)
    return layer(x, memory)


@pytest.mark.parametrize("name, answer", [
    ("cross_attention", lambda *a: reference.cross_attention(*a)),
    ("cross_attention", _mha_wrapper),
    ("cross_attention", _attention_module_wrapper),
    ("decoder_block", lambda *a: reference.decoder_block(*a)),
    ("decoder_block", _torch_decoder_layer_wrapper),
    ("model_masks", lambda kind, lengths, T, tl=None, T_tgt=None: masks.model_masks(kind, lengths, T, tl, T_tgt)),
    ("model_masks", lambda kind, lengths, T, tl=None, T_tgt=None: (
        {"self": masks.bidirectional_mask(lengths, T)} if kind == "encoder" else loops.model_masks(kind, lengths, T, tl, T_tgt))),
    ("prefix_lm_mask", lambda p, n, T: masks.prefix_lm_mask(p, n, T)),
    ("prefix_lm_mask", lambda p, n, T: masks.model_masks("decoder", n, T)["self"] | loops.prefix_lm_mask(p, n, T)),
], ids=["ref", "nn.MultiheadAttention", "blocks.Attention", "ref-block", "TransformerDecoderLayer", "ref-masks",
        "bidirectional_mask", "ref-prefix", "model_masks-inside"])
def test_answers_calling_the_reference_or_builtin_are_refused(name, answer):
    with pytest.raises(CheckFailed, match="calls|not your own function"):
        CHECKS[name](answer)


def test_answers_may_use_earlier_chapters_helpers(capsys):
    """causal_mask (chapter 01) and split_heads/repeat_kv/merge_heads (chapter 02) are allowed."""
    for name, answer in _other_correct_styles():
        if name in ("cross_attention", "decoder_block"):
            CHECKS[name](answer)
    assert capsys.readouterr().out.count("✓") == 3


def test_patched_library_function_makes_checks_refuse():
    original = torch.softmax
    try:
        torch.softmax = lambda *a, **k: original(*a, **k)
        with pytest.raises(CheckFailed, match="softmax was replaced"):
            checks.check_cross_attention(loops.cross_attention)
    finally:
        torch.softmax = original


def test_hard_coded_visible_output_fails_hidden_inputs():
    memory = {}

    def record(prefix_lengths, lengths, T):
        key = (tuple(prefix_lengths.tolist()), tuple(lengths.tolist()), T)
        return memory.setdefault(key, loops.prefix_lm_mask(prefix_lengths, lengths, T))

    checks.check_prefix_lm_mask(record)
    frozen = dict(memory)
    with pytest.raises(CheckFailed):
        checks.check_prefix_lm_mask(lambda p, n, T: frozen[(tuple(p.tolist()), tuple(n.tolist()), T)], **HIDDEN["prefix_lm_mask"])


# ------------------------------------------------------------------------------------------------
# Named masks and counted parameters
# ------------------------------------------------------------------------------------------------


def test_mask_answers_agree_with_the_classifier():
    for key, mask in checks.MASKS_TO_NAME.items():
        if checks.MASK_ANSWERS[key] == "none":
            with pytest.raises(ValueError):
                classify_mask(mask)
        else:
            assert classify_mask(mask) == checks.MASK_ANSWERS[key]


def test_mask_names_right_and_each_known_wrong_name(capsys):
    checks.check_mask_names(**checks.MASK_ANSWERS)
    checks.check_mask_names(**{k: v.upper() + " " for k, v in checks.MASK_ANSWERS.items()})
    assert capsys.readouterr().out.count("✓") == 2
    for (key, wrong), reason in checks._NAME_MISTAKES.items():
        with pytest.raises(CheckFailed, match=re.escape(f"mask {key} is not {wrong}: {reason}")):
            checks.check_mask_names(**{**checks.MASK_ANSWERS, key: wrong})
    with pytest.raises(CheckFailed, match="mask C is not none: it is one of the four kinds"):
        checks.check_mask_names(**{**checks.MASK_ANSWERS, "C": "none"})
    with pytest.raises(CheckFailed, match="mask E has no answer yet"):
        checks.check_mask_names(**{**checks.MASK_ANSWERS, "E": None})
    with pytest.raises(CheckFailed, match="answer with one of"):
        checks.check_mask_names(**{**checks.MASK_ANSWERS, "B": "prefix"})


def test_count_answers_equal_the_shared_models_parameter_count():
    config = reference.ModelConfig(**checks.COUNT_CONFIG)
    assert checks.COUNT_QUESTIONS["total"] == reference.model_param_count(config)
    small = reference.ModelConfig(**{**checks.COUNT_CONFIG, "vocab_size": 50, "max_seq_len": 8, "n_layers": 1})
    model = reference.TinyEncoderDecoder(small)
    assert sum(p.numel() for p in model.encoder[0].parameters()) == checks.COUNT_QUESTIONS["encoder_layer"]
    assert sum(p.numel() for p in model.decoder[0].parameters()) == checks.COUNT_QUESTIONS["decoder_layer"]


def test_counts_right_and_each_known_wrong_value(capsys):
    checks.check_encoder_decoder_counts(**checks.COUNT_QUESTIONS)
    assert "✓" in capsys.readouterr().out
    for key, wrongs in checks._COUNT_MISTAKES.items():
        for value, message in wrongs:
            with pytest.raises(CheckFailed, match=re.escape(message)):
                checks.check_encoder_decoder_counts(**{**checks.COUNT_QUESTIONS, key: value})
    with pytest.raises(CheckFailed, match="is not right; self-attention, cross-attention"):
        checks.check_encoder_decoder_counts(**{**checks.COUNT_QUESTIONS, "decoder_layer": 1})


def _block_with_masks(self_mask, cross_mask):
    """A Pre-LN decoder block whose masks are chosen by self_mask(x, memory) and cross_mask(x, memory, memory_mask)."""
    def decoder_block(x, memory, self_attn, cross_attn, ffn, norm1, norm2, norm3, memory_mask=None):
        x = x + self_attn(norm1(x), self_mask(x, memory))
        x = x + cross_attn(norm2(x), memory, cross_mask(x, memory, memory_mask))
        return x + ffn(norm3(x))
    return decoder_block


@pytest.mark.parametrize("variant", ["visible", "hidden"])
def test_decoder_block_messages_say_which_mask_went_where(variant):
    """Issue 31: these raised a raw broadcast error from inside attention; the message names the mask."""
    kwargs = HIDDEN["decoder_block"] if variant == "hidden" else {}
    sized_by_source = _block_with_masks(lambda x, memory: masks.causal_mask(memory.shape[1]),
                                        lambda x, memory, memory_mask: memory_mask)
    with pytest.raises(CheckFailed, match=r"^decoder_block \(padded memory\): the causal mask is sized by the source: "
                                          r"self-attention got a \(T_src, T_src\) = \(\d+, \d+\) mask.*"
                                          r"causal_mask\(x\.shape\[1\]\)"):
        checks.check_decoder_block(sized_by_source, **kwargs)
    causal_to_cross = _block_with_masks(lambda x, memory: None,
                                        lambda x, memory, memory_mask: torch.ones(x.shape[1], memory.shape[1],
                                                                                  dtype=torch.bool).tril())
    with pytest.raises(CheckFailed, match=r"the causal mask went to cross-attention and self-attention got none"):
        checks.check_decoder_block(causal_to_cross, **kwargs)
    # The right masks pass (an oracle for the helper above).
    checks.check_decoder_block(_block_with_masks(lambda x, memory: masks.causal_mask(x.shape[1]),
                                                 lambda x, memory, memory_mask: memory_mask), **kwargs)
