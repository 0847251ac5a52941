"""A later exercise that fails because the learner's function from an earlier exercise is wrong
names that exercise (core.check_function's `prerequisites`); a later function that is wrong on its
own is not blamed on the earlier ones.

Each test writes a notebook's worth of answers as source and runs it in one namespace, as a kernel
would: the later function finds the earlier ones by name in its globals.
"""

from __future__ import annotations

import textwrap

import pytest
import torch

from helpers.checks import attention as ch01
from helpers.checks import ffn as ch03
from helpers.checks import heads as ch02
from helpers.checks import positions as ch06
from helpers.checks.core import CheckFailed, _used_prerequisites

PREAMBLE = "import math\nimport torch\nimport torch.nn.functional as F\n"


def notebook(*sources: str) -> dict:
    """Run answer cells in one namespace, as a notebook does."""
    namespace: dict = {}
    for source in (PREAMBLE, *sources):
        exec(compile(textwrap.dedent(source), "<notebook cell>", "exec"), namespace)
    return namespace


def failure(check, fn, **kwargs) -> str:
    with pytest.raises(CheckFailed) as info:
        check(fn, **kwargs)
    return str(info.value)


# ---------------------------------------------------------------------------------------------
# Chapter 02: exercises 3 and 4 call split_heads (exercise 1) and merge_heads (exercise 2)
# ---------------------------------------------------------------------------------------------

SPLIT = """
def split_heads(x, n_heads):
    B, T, d_model = x.shape
    return x.reshape(B, T, n_heads, d_model // n_heads).transpose(1, 2)
"""
SPLIT_FLOAT32 = """
def split_heads(x, n_heads):
    B, T, d_model = x.shape
    return x.reshape(B, T, n_heads, d_model // n_heads).transpose(1, 2).float()
"""
SPLIT_NO_TRANSPOSE = """
def split_heads(x, n_heads):
    B, T, d_model = x.shape
    return x.reshape(B, n_heads, T, d_model // n_heads)
"""
MERGE = """
def merge_heads(x):
    B, H, T, d_head = x.shape
    return x.transpose(1, 2).reshape(B, T, H * d_head)
"""
MERGE_VIEW = """
def merge_heads(x):
    B, H, T, d_head = x.shape
    return x.transpose(1, 2).view(B, T, H * d_head)
"""
MHA = """
from helpers.attention import scaled_dot_product_attention

def multi_head_attention(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    q, k, v = (split_heads(x @ w.T, n_heads) for w in (w_q, w_k, w_v))
    heads, weights = scaled_dot_product_attention(q, k, v, mask)
    return merge_heads(heads) @ w_o.T, weights
"""
MHA_VIA_HELPER = """
from helpers.attention import scaled_dot_product_attention

def project(x, w, n_heads):
    return split_heads(x @ w.T, n_heads)

def multi_head_attention(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    heads, weights = scaled_dot_product_attention(project(x, w_q, n_heads), project(x, w_k, n_heads),
                                                  project(x, w_v, n_heads), mask)
    return merge_heads(heads) @ w_o.T, weights
"""
MHA_NO_OUTPUT_PROJECTION = """
from helpers.attention import scaled_dot_product_attention

def multi_head_attention(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    q, k, v = (split_heads(x @ w.T, n_heads) for w in (w_q, w_k, w_v))
    heads, weights = scaled_dot_product_attention(q, k, v, mask)
    return merge_heads(heads), weights
"""
GQA = """
from helpers.attention import scaled_dot_product_attention

def grouped_query_attention(x, w_q, w_k, w_v, w_o, n_heads, n_kv_heads, mask=None):
    group = n_heads // n_kv_heads
    q = split_heads(x @ w_q.T, n_heads)
    k = split_heads(x @ w_k.T, n_kv_heads).repeat_interleave(group, dim=1)
    v = split_heads(x @ w_v.T, n_kv_heads).repeat_interleave(group, dim=1)
    heads, weights = scaled_dot_product_attention(q, k, v, mask)
    return merge_heads(heads) @ w_o.T, weights
"""
GQA_MODULO = GQA.replace(".repeat_interleave(group, dim=1)", ".repeat(1, group, 1, 1)")


def test_right_answers_pass_through_earlier_functions(capsys):
    nb = notebook(SPLIT, MERGE, MHA, GQA)
    ch02.check_multi_head_attention(nb["multi_head_attention"])
    ch02.check_multi_head_attention(nb["multi_head_attention"], seed=5, dtype=torch.float64, B=3, T=7, H=4, d_head=2)
    ch02.check_grouped_query_attention(nb["grouped_query_attention"])
    assert capsys.readouterr().out.count("✓") == 3


def test_float32_split_heads_is_named_in_the_float64_test_of_exercise_3():
    nb = notebook(SPLIT_FLOAT32, MERGE, MHA)
    message = failure(ch02.check_multi_head_attention, nb["multi_head_attention"],
                      seed=5, dtype=torch.float64, B=3, T=7, H=4, d_head=2)
    assert "your `split_heads` from exercise 1" in message
    assert "dtype torch.float32; expected torch.float64" in message
    assert "fix exercise 1 first" in message


def test_wrong_split_heads_is_named_through_a_helper_function():
    nb = notebook(SPLIT_NO_TRANSPOSE, MERGE, MHA_VIA_HELPER)
    message = failure(ch02.check_multi_head_attention, nb["multi_head_attention"])
    assert "your `split_heads` from exercise 1" in message and "fix exercise 1 first" in message
    assert "without the transpose" in message  # exercise 1's own catalogued sentence


def test_merge_heads_that_raises_is_named_instead_of_the_torch_error():
    nb = notebook(SPLIT, MERGE_VIEW, MHA)
    message = failure(ch02.check_multi_head_attention, nb["multi_head_attention"])
    assert "your `merge_heads` from exercise 2" in message and "fix exercise 2 first" in message
    assert "view size is not compatible" in message  # what exercise 2's own check says


def test_wrong_split_heads_is_named_in_exercise_4():
    nb = notebook(SPLIT_NO_TRANSPOSE, MERGE, GQA)
    message = failure(ch02.check_grouped_query_attention, nb["grouped_query_attention"])
    assert "your `split_heads` from exercise 1" in message


def test_wrong_later_function_with_right_earlier_ones_is_not_blamed_on_them():
    nb = notebook(SPLIT, MERGE, MHA_NO_OUTPUT_PROJECTION, GQA_MODULO)
    message = failure(ch02.check_multi_head_attention, nb["multi_head_attention"])
    assert "exercise 1" not in message and "exercise 2" not in message
    assert "output projection is missing" in message
    message = failure(ch02.check_grouped_query_attention, nb["grouped_query_attention"])
    assert "exercise" not in message and "h % H_kv" in message


def test_a_function_not_called_is_not_blamed():
    """A wrong split_heads in the notebook does not take the blame for an answer that never uses it."""
    nb = notebook(SPLIT_NO_TRANSPOSE, MERGE, """
    def multi_head_attention(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
        return x, None
    """)
    assert _used_prerequisites(nb["multi_head_attention"], ch02._HEAD_PREREQUISITES) == {}
    message = failure(ch02.check_multi_head_attention, nb["multi_head_attention"])
    assert "exercise 1" not in message


def test_the_course_reference_under_an_earlier_name_is_not_blamed():
    """`from helpers.heads import split_heads` is not the learner's exercise 1."""
    nb = notebook(MERGE, "from helpers.heads import split_heads\n", MHA_NO_OUTPUT_PROJECTION)
    assert list(_used_prerequisites(nb["multi_head_attention"], ch02._HEAD_PREREQUISITES)) == ["merge_heads"]


# ---------------------------------------------------------------------------------------------
# Chapter 01: exercise 7 calls attention_scores (2), apply_mask (4) and masked_softmax (6)
# ---------------------------------------------------------------------------------------------

SCORES = """
def attention_scores(q, k):
    return q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
"""
APPLY_MASK = """
def apply_mask(scores, mask):
    return scores.masked_fill(~mask, float("-inf"))
"""
APPLY_MASK_ZERO = """
def apply_mask(scores, mask):
    return scores.masked_fill(~mask, 0.0)
"""
MASKED_SOFTMAX = """
def masked_softmax(scores, mask):
    weights = torch.softmax(apply_mask(scores, mask), dim=-1)
    return torch.where(mask.any(dim=-1, keepdim=True), weights, torch.zeros_like(weights))
"""
SDPA = """
def scaled_dot_product_attention(q, k, v, mask=None):
    scores = attention_scores(q, k)
    weights = torch.softmax(scores, dim=-1) if mask is None else masked_softmax(scores, mask)
    return weights @ v, weights
"""
SDPA_UNSCALED = SDPA.replace("scores = attention_scores(q, k)", "scores = q @ k.transpose(-2, -1)")


def test_ch01_right_chain_passes():
    nb = notebook(SCORES, APPLY_MASK, MASKED_SOFTMAX, SDPA)
    ch01.check_masked_softmax(nb["masked_softmax"])
    ch01.check_scaled_dot_product_attention(nb["scaled_dot_product_attention"])


def test_ch01_wrong_apply_mask_is_named_in_exercises_6_and_7():
    nb = notebook(SCORES, APPLY_MASK_ZERO, MASKED_SOFTMAX, SDPA)
    message = failure(ch01.check_masked_softmax, nb["masked_softmax"])
    assert "your `apply_mask` from exercise 4" in message and "fix exercise 4 first" in message
    # exercise 7 reaches apply_mask through the learner's masked_softmax
    message = failure(ch01.check_scaled_dot_product_attention, nb["scaled_dot_product_attention"])
    assert "your `apply_mask` from exercise 4" in message and "fix exercise 4 first" in message


def test_ch01_wrong_sdpa_with_right_helpers_is_not_blamed_on_them():
    nb = notebook(SCORES, APPLY_MASK, MASKED_SOFTMAX, SDPA_UNSCALED)
    message = failure(ch01.check_scaled_dot_product_attention, nb["scaled_dot_product_attention"])
    assert "from exercise" not in message


# ---------------------------------------------------------------------------------------------
# Chapter 03: feed_forward calls gelu (exercise 1), moe_forward calls top_k_route (exercise 6)
# ---------------------------------------------------------------------------------------------

GELU = """
def gelu(x, approximate="none"):
    if approximate == "tanh":
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
"""
GELU_ALWAYS_TANH = """
def gelu(x, approximate="none"):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
"""
FFN = """
def feed_forward(x, w1, b1, w2, b2):
    return gelu(x @ w1.T + b1) @ w2.T + b2
"""
FFN_NO_B2 = FFN.replace(" + b2\n", "\n")
ROUTE = """
def top_k_route(router_logits, k):
    top, idx = router_logits.topk(k, dim=-1)
    return torch.softmax(top, dim=-1), idx
"""
ROUTE_SOFTMAX_FIRST = """
def top_k_route(router_logits, k):
    return torch.softmax(router_logits, dim=-1).topk(k, dim=-1)
"""
MOE = """
def moe_forward(x, router_weight, experts, k):
    flat = x.reshape(-1, x.shape[-1])
    weights, chosen = top_k_route(flat @ router_weight.T, k)
    out = torch.zeros_like(flat)
    for e, expert in enumerate(experts):
        token, slot = torch.where(chosen == e)
        if len(token) > 0:
            out = out.index_add(0, token, weights[token, slot, None] * expert(flat[token]))
    return out.reshape(x.shape)
"""
MOE_UNWEIGHTED = MOE.replace("weights[token, slot, None] * ", "")


def test_ch03_wrong_gelu_is_named_in_feed_forward():
    nb = notebook(GELU_ALWAYS_TANH, FFN)
    message = failure(ch03.check_feed_forward, nb["feed_forward"])
    assert "your `gelu` from exercise 1" in message and "fix exercise 1 first" in message


def test_ch03_wrong_feed_forward_with_right_gelu_is_not_blamed_on_it():
    nb = notebook(GELU, FFN)
    ch03.check_feed_forward(nb["feed_forward"])
    nb = notebook(GELU, FFN_NO_B2)
    assert "exercise 1" not in failure(ch03.check_feed_forward, nb["feed_forward"])


def test_an_attribute_of_the_same_name_is_not_a_use_of_the_earlier_function():
    """`F.gelu` is torch's GELU, not the learner's `gelu`: a wrong exercise 1 is not blamed for an
    exercise 2 that never calls it (seen in a graded notebook with both mistakes)."""
    ffn_activation_last = """
def feed_forward(x, w1, b1, w2, b2):
    return F.gelu((x @ w1.T + b1) @ w2.T + b2)
"""
    nb = notebook(GELU_ALWAYS_TANH, ffn_activation_last)
    message = failure(ch03.check_feed_forward, nb["feed_forward"])
    assert "exercise 1" not in message
    assert "the activation is applied after the second projection" in message


def test_ch03_wrong_top_k_route_is_named_in_moe_forward():
    nb = notebook(ROUTE_SOFTMAX_FIRST, MOE)
    message = failure(ch03.check_moe_forward, nb["moe_forward"])
    assert "your `top_k_route` from exercise 6" in message and "fix exercise 6 first" in message
    nb = notebook(ROUTE, MOE)
    ch03.check_moe_forward(nb["moe_forward"])
    nb = notebook(ROUTE, MOE_UNWEIGHTED)
    assert "exercise 6" not in failure(ch03.check_moe_forward, nb["moe_forward"])


# ---------------------------------------------------------------------------------------------
# Chapter 06: add_positions calls sinusoidal_table (1), rope_attention calls apply_rope (3)
# ---------------------------------------------------------------------------------------------

TABLE = """
def sinusoidal_table(T, d_model, offset=0):
    p = torch.arange(offset, offset + T, dtype=torch.float64)[:, None]
    angles = p * 10000.0 ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    pe = torch.empty(T, d_model, dtype=torch.float64)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(angles), torch.cos(angles)
    return pe.float()
"""
TABLE_SWAPPED = TABLE.replace("torch.sin(angles), torch.cos(angles)", "torch.cos(angles), torch.sin(angles)")
ADD_POSITIONS = """
def add_positions(x, attn, offset=0):
    return attn(x + sinusoidal_table(x.shape[1], x.shape[2], offset).to(x.dtype))
"""
ADD_POSITIONS_AFTER = """
def add_positions(x, attn, offset=0):
    return attn(x) + sinusoidal_table(x.shape[1], x.shape[2], offset).to(x.dtype)
"""
ROPE = """
def apply_rope(x, offset=0):
    T, d = x.shape[-2], x.shape[-1]
    p = torch.arange(offset, offset + T, dtype=torch.float64, device=x.device)[:, None]
    angles = p * 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64, device=x.device) / d)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    a, b = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)
"""
ROPE_NO_OFFSET = ROPE.replace("torch.arange(offset, offset + T,", "torch.arange(0, T,")
ROPE_ATTENTION = """
from helpers.attention import scaled_dot_product_attention

def rope_attention(q, k, v):
    T_q, T_k = q.shape[-2], k.shape[-2]
    mask = torch.ones(T_q, T_k, dtype=torch.bool, device=q.device).tril(diagonal=T_k - T_q)
    return scaled_dot_product_attention(apply_rope(q, T_k - T_q), apply_rope(k, 0), v, mask)
"""
ROPE_ATTENTION_NO_MASK = ROPE_ATTENTION.replace("apply_rope(k, 0), v, mask)", "apply_rope(k, 0), v)")


def test_ch06_wrong_table_is_named_in_add_positions():
    nb = notebook(TABLE_SWAPPED, ADD_POSITIONS)
    message = failure(ch06.check_add_positions, nb["add_positions"])
    assert "your `sinusoidal_table` from exercise 1" in message and "fix exercise 1 first" in message
    nb = notebook(TABLE, ADD_POSITIONS)
    ch06.check_add_positions(nb["add_positions"])
    nb = notebook(TABLE, ADD_POSITIONS_AFTER)
    assert "exercise 1" not in failure(ch06.check_add_positions, nb["add_positions"])


def test_ch06_wrong_apply_rope_is_named_in_rope_attention():
    nb = notebook(ROPE_NO_OFFSET, ROPE_ATTENTION)
    message = failure(ch06.check_rope_attention, nb["rope_attention"])
    assert "your `apply_rope` from exercise 3" in message and "fix exercise 3 first" in message
    nb = notebook(ROPE, ROPE_ATTENTION)
    ch06.check_rope_attention(nb["rope_attention"])
    nb = notebook(ROPE, ROPE_ATTENTION_NO_MASK)
    assert "exercise 3" not in failure(ch06.check_rope_attention, nb["rope_attention"])


def test_prerequisite_checks_run_only_when_the_check_fails():
    from helpers.checks.core import Case, check_function

    calls = []

    def earlier_check(fn, *, dtype=torch.float32):
        calls.append(dtype)
        raise CheckFailed("helper: returns the wrong thing")

    x = torch.arange(6, dtype=torch.float64).reshape(2, 3)
    cases = [Case((x,), {"B": 2, "T": 3}, ("x",))]
    nb = notebook("def helper(x):\n    return x\n", "def later(x):\n    return 2 * helper(x)\n",
                  "def later_wrong(x):\n    return 3 * helper(x)\n")
    rules = dict(name="later", reference=lambda x: 2 * x, cases=cases,
                 prerequisites={"helper": (earlier_check, "exercise 1")})
    check_function(nb["later"], **rules)
    assert calls == []
    with pytest.raises(CheckFailed, match=r"^later uses your `helper` from exercise 1, which is not right yet: "
                                          r"returns the wrong thing; fix exercise 1 first"):
        check_function(nb["later_wrong"], **rules)
    assert calls == [torch.float32]  # the first failing run is enough


def test_an_earlier_function_fitted_to_the_visible_sizes_is_named():
    """apply_rope that hard-codes the visible test's d_head = 8 passes exercise 3's visible check;
    exercise 4 (d_head = 4) fails because of it, and says so."""
    nb = notebook(ROPE.replace("T, d = x.shape[-2], x.shape[-1]", "T, d = x.shape[-2], 8"), ROPE_ATTENTION)
    ch06.check_apply_rope(nb["apply_rope"])  # the visible check of exercise 3 passes
    message = failure(ch06.check_rope_attention, nb["rope_attention"])
    assert "your `apply_rope` from exercise 3" in message and "fix exercise 3 first" in message
