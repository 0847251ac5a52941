"""Chapter 06's reference: closed forms (plain-math loops, complex multiplication), and the
properties the chapter teaches (relative offsets, norms, the fixed shift map, slopes, buckets)."""

from __future__ import annotations

import math

import pytest
import torch

import helpers.positions as P
from helpers.numerics import assert_close, close
from helpers.shapes import ShapeError

# ------------------------------------------------------------------------------------------------
# Sinusoidal and learned tables
# ------------------------------------------------------------------------------------------------


def test_sinusoidal_table_matches_the_formula_entry_by_entry():
    T, d = 9, 12
    got = P.sinusoidal_table(T, d, dtype=torch.float64)
    want = torch.tensor([[math.sin(p / 10000 ** (c / d)) if c % 2 == 0 else math.cos(p / 10000 ** ((c - 1) / d))
                          for c in range(d)] for p in range(T)], dtype=torch.float64)
    assert got.shape == (T, d)
    assert_close(got, want)


@pytest.mark.parametrize("base", [10000.0, 100.0])
def test_sinusoidal_shift_is_one_linear_map_for_every_position(base):
    d, k = 16, 7
    table = P.sinusoidal_table(40, d, base=base, dtype=torch.float64)  # (40, d)
    M = P.sinusoidal_shift(k, d, base=base)  # (d, d)
    assert_close(table[:-k] @ M, table[k:], n=d)  # PE(p + k) = PE(p) M_k for all p at once
    assert_close(M @ M.T, torch.eye(d, dtype=torch.float64), n=d)  # a rotation: orthogonal
    assert_close(P.sinusoidal_shift(3, d, base=base) @ P.sinusoidal_shift(4, d, base=base), M, n=d)


def test_sinusoidal_offset_and_explicit_positions_equal_the_full_table():
    full = P.sinusoidal_table(50, 8)
    assert_close(P.sinusoidal_table(1, 8, offset=37), full[37:38])
    assert_close(P.sinusoidal_table(10, 8, offset=40), full[40:])
    assert_close(P.sinusoidal_table(None, 8, positions=torch.tensor([3, 0, 49])), full[[3, 0, 49]])


def test_sinusoidal_angles_are_computed_in_float64():
    """At position 10 000 float32 angles lose digits; the float64 angles round once at the end."""
    p = 10_000
    got = P.sinusoidal_table(1, 4, offset=p)  # float32
    want = torch.tensor([math.sin(p), math.cos(p), math.sin(p / 100), math.cos(p / 100)], dtype=torch.float32)
    assert_close(got[0], want)


def test_sinusoidal_rejects_odd_width_and_negative_offsets():
    with pytest.raises(ShapeError, match="d_model = 7 must be even"):
        P.sinusoidal_table(4, 7)
    with pytest.raises(ValueError, match="offset"):
        P.sinusoidal_table(4, 8, offset=-1)


def test_learned_positions_slice_rows_and_refuse_positions_past_the_table():
    table = torch.randn(16, 4)
    assert torch.equal(P.learned_positions(table, 3, offset=5), table[5:8])
    with pytest.raises(ShapeError, match=r"positions 10\.\.17 are needed .* rows for positions 0\.\.15 only"):
        P.learned_positions(table, 8, offset=10)


# ------------------------------------------------------------------------------------------------
# RoPE
# ------------------------------------------------------------------------------------------------


def _complex_rope(x: torch.Tensor, positions: torch.Tensor, pairs: str, base: float = 10000.0) -> torch.Tensor:
    """Oracle: each pair as a complex number a + ib, multiplied by exp(i p theta_k) (torch.polar)."""
    d = x.shape[-1]
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    rot = torch.polar(torch.ones(len(positions), d // 2, dtype=torch.float64),
                      positions.double()[:, None] * theta)  # (T, d/2) complex
    xd = x.double()
    if pairs == "interleaved":  # Meta's Llama: view_as_complex(x.reshape(..., d/2, 2))
        z = torch.view_as_complex(xd.reshape(*x.shape[:-1], d // 2, 2).contiguous()) * rot
        return torch.view_as_real(z).flatten(-2).to(x.dtype)
    z = torch.complex(xd[..., : d // 2], xd[..., d // 2:]) * rot
    return torch.cat([z.real, z.imag], dim=-1).to(x.dtype)


@pytest.mark.parametrize("pairs", P.PAIR_LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rope_equals_complex_multiplication(pairs, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 10, generator=g, dtype=dtype)  # (B, H, T, d_head)
    assert_close(P.apply_rope(x, 4, pairs=pairs), _complex_rope(x, torch.arange(4, 11), pairs))
    assert_close(P.apply_rope(x, pairs=pairs, base=500.0), _complex_rope(x, torch.arange(7), pairs, 500.0))


@pytest.mark.parametrize("pairs", P.PAIR_LAYOUTS)
def test_rope_scores_depend_only_on_the_offset(pairs):
    """<R_m q, R_n k> is the same for every (m, n) with the same m - n."""
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 16, generator=g, dtype=torch.float64), torch.randn(1, 16, generator=g, dtype=torch.float64)

    def score(m: int, n: int) -> torch.Tensor:
        return (P.apply_rope(q, m, pairs=pairs) * P.apply_rope(k, n, pairs=pairs)).sum()

    for delta in (0, 1, 5, -3):
        scores = torch.stack([score(n + delta, n) for n in (3, 10, 250)])
        assert_close(scores, scores[:1].expand(3), n=16)
    assert not torch.allclose(score(5, 0), score(6, 0))  # but it does depend on the offset


@pytest.mark.parametrize("pairs", P.PAIR_LAYOUTS)
def test_rope_preserves_norms_and_leaves_position_zero_alone(pairs):
    x = torch.randn(4, 9, 8, dtype=torch.float64)
    out = P.apply_rope(x, 100, pairs=pairs)
    assert_close(out.norm(dim=-1), x.norm(dim=-1), n=8)
    assert_close(P.apply_rope(x[:, :1], 0, pairs=pairs), x[:, :1])


def test_the_two_pair_layouts_agree_after_a_fixed_permutation():
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    perm = P.rope_permutation(12)
    assert perm.tolist() == [0, 6, 1, 7, 2, 8, 3, 9, 4, 10, 5, 11]
    assert_close(P.apply_rope(x[..., perm], 3, pairs="interleaved"), P.apply_rope(x, 3, pairs="half")[..., perm])
    assert not torch.allclose(P.apply_rope(x, 3, pairs="interleaved"), P.apply_rope(x, 3, pairs="half"))
    # Scores are permutation-invariant: permuting q and k alike leaves q . k unchanged.
    q, k = torch.randn(12, dtype=torch.float64), torch.randn(12, dtype=torch.float64)
    assert_close((q[perm] * k[perm]).sum(), (q * k).sum(), n=12)


@pytest.mark.parametrize("pairs", P.PAIR_LAYOUTS)
def test_rope_with_an_offset_equals_the_full_sequence_token_by_token(pairs):
    x = torch.randn(2, 6, 8)
    full = P.apply_rope(x, pairs=pairs)
    for t in range(6):
        assert_close(P.apply_rope(x[:, t:t + 1], t, pairs=pairs), full[:, t:t + 1])
    assert_close(P.apply_rope(x, pairs=pairs, positions=torch.arange(6)), full)
    rope = P.RotaryEmbedding(8, pairs=pairs)
    assert_close(rope(x[:, 2:], 2), full[:, 2:])


def test_rope_pair_zero_rotates_one_radian_per_position():
    x = torch.zeros(3, 4, dtype=torch.float64)
    x[:, 0] = 1.0  # pair 0 of the half layout is channels (0, 2)
    out = P.apply_rope(x)
    assert_close(out[:, 0], torch.cos(torch.arange(3.0, dtype=torch.float64)))
    assert_close(out[:, 2], torch.sin(torch.arange(3.0, dtype=torch.float64)))


def test_rope_wavelengths():
    assert P.rope_wavelength(0, 64) == pytest.approx(2 * math.pi)
    assert P.rope_wavelength(8, 64) == pytest.approx(2 * math.pi * 10)  # theta_8 = 10000^(-16/64) = 0.1
    assert_close(P.rope_frequencies(64)[8], torch.tensor(0.1, dtype=torch.float64))


def test_rope_input_errors_name_the_shapes():
    with pytest.raises(ShapeError, match="d_head = 7 must be even"):
        P.apply_rope(torch.randn(3, 7))
    with pytest.raises(ShapeError, match="one position per token"):
        P.apply_rope(torch.randn(3, 8), positions=torch.arange(4))
    with pytest.raises(ValueError, match="pairs must be 'half'"):
        P.apply_rope(torch.randn(3, 8), pairs="neox")
    with pytest.raises(ShapeError, match="d_head = 8"):
        P.RotaryEmbedding(8)(torch.randn(3, 6))


# ------------------------------------------------------------------------------------------------
# ALiBi
# ------------------------------------------------------------------------------------------------


def test_alibi_slopes_for_8_heads_are_powers_of_one_half():
    assert P.alibi_slopes(8).tolist() == [2.0 ** -h for h in range(1, 9)]


def test_alibi_slopes_for_other_head_counts_follow_the_paper():
    assert P.alibi_slopes(4).tolist() == [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8]
    assert_close(P.alibi_slopes(16), torch.tensor([2 ** (-0.5 * h) for h in range(1, 17)], dtype=torch.float64))
    # 6 heads: the 4 slopes of 4 heads, then the 1st and 3rd slopes of 8 heads.
    assert P.alibi_slopes(6).tolist() == [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8, 2.0 ** -1, 2.0 ** -3]
    assert len(P.alibi_slopes(12)) == 12 and len(set(P.alibi_slopes(12).tolist())) == 12


def test_alibi_bias_is_minus_slope_times_distance():
    slopes = P.alibi_slopes(2)  # 1/16, 1/256
    bias = P.alibi_bias(slopes, torch.arange(4), torch.arange(4), dtype=torch.float64)
    want = -slopes[:, None, None] * (torch.arange(4)[:, None] - torch.arange(4)[None, :]).abs().double()
    assert bias.shape == (2, 4, 4)
    assert_close(bias, want)
    assert (bias.diagonal(dim1=-2, dim2=-1) == 0).all()


def test_alibi_bias_with_an_offset_is_the_last_rows_of_the_full_bias():
    slopes = P.alibi_slopes(3)
    full = P.alibi_bias(slopes, torch.arange(9), torch.arange(9))
    assert_close(P.alibi_bias(slopes, torch.tensor([8]), torch.arange(9)), full[:, 8:9])
    assert_close(P.ALiBi(3)(torch.arange(5, 9), torch.arange(9)), full[:, 5:])


# ------------------------------------------------------------------------------------------------
# T5 buckets
# ------------------------------------------------------------------------------------------------


def _bucket_by_formula(j_minus_i: int, bidirectional: bool, nb: int = 32, md: int = 128) -> int:
    """The T5 paper's rule written out with math.log, one number at a time."""
    bucket, n = 0, -j_minus_i
    if bidirectional:
        nb //= 2
        bucket = nb if n < 0 else 0
        n = abs(n)
    else:
        n = max(n, 0)
    exact = nb // 2
    if n < exact:
        return bucket + n
    return bucket + min(nb - 1, exact + int(math.log(n / exact) / math.log(md / exact) * (nb - exact)))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_t5_buckets_match_the_formula(bidirectional):
    rel = torch.arange(-300, 301)
    got = P.relative_position_bucket(rel, bidirectional=bidirectional)
    assert got.tolist() == [_bucket_by_formula(int(r), bidirectional) for r in rel]


def test_t5_bucket_properties():
    past = P.relative_position_bucket(-torch.arange(0, 400))  # keys 0..399 tokens back, decoder
    assert past[:16].tolist() == list(range(16))  # exact for small distances
    assert (past.diff() >= 0).all() and past.max() == 31  # monotone, saturates in the last bucket
    assert (past[128:] == 31).all() and past[127] < 31 + 1
    assert (P.relative_position_bucket(torch.arange(1, 50)) == 0).all()  # a decoder ignores the future
    both = P.relative_position_bucket(torch.arange(-40, 41), bidirectional=True)
    assert both[40] == 0 and both[41] == 17 and both[39] == 1  # the future gets the upper half (16 + distance)
    assert int(P.relative_position_bucket(torch.tensor([-32]))) == 21 and int(P.relative_position_bucket(torch.tensor([-64]))) == 26


def test_relative_position_bias_looks_up_one_number_per_bucket_and_head():
    torch.manual_seed(0)
    rpb = P.RelativePositionBias(n_heads=3, num_buckets=8, max_distance=20)
    bias = rpb(torch.arange(6), torch.arange(6))  # (H, T_q, T_k)
    assert bias.shape == (3, 6, 6)
    buckets = P.relative_position_bucket(torch.arange(6)[None, :] - torch.arange(6)[:, None], num_buckets=8,
                                         max_distance=20)
    for h in range(3):
        assert torch.equal(bias[h], rpb.bias.weight[buckets, h])
    assert torch.equal(rpb(torch.tensor([5]), torch.arange(6)), bias[:, 5:])  # one new token at position 5
    assert sum(p.numel() for p in rpb.parameters()) == 8 * 3


# ------------------------------------------------------------------------------------------------
# The shared model's `positions` field
# ------------------------------------------------------------------------------------------------

from helpers.attention import causal_mask  # noqa: E402
from helpers.blocks import ModelConfig, TinyDecoder, attend, model_param_count  # noqa: E402
from helpers.heads import merge_heads, repeat_kv  # noqa: E402

METHODS = ("none", "learned", "sinusoidal", "rope", "alibi", "relative")


def _model(positions: str, seed: int = 0, **overrides) -> TinyDecoder:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=40, d_model=24, n_heads=4, n_kv_heads=2, n_layers=2, max_seq_len=32,
                         positions=positions, **overrides)
    return TinyDecoder(config).double().eval()


@pytest.mark.parametrize("positions", METHODS)
@pytest.mark.parametrize("overrides", [dict(), dict(tie_weights=False, norm="rmsnorm", ffn="swiglu", d_ff=20),
                                       dict(causal=False, norm_placement="post")])
def test_every_method_runs_and_counts_its_parameters(positions, overrides):
    model = _model(positions, **overrides)
    logits, weights = model(torch.randint(0, 40, (2, 11)), return_weights=True)
    assert logits.shape == (2, 11, 40) and len(weights) == 2 and weights[0].shape == (2, 4, 11, 11)
    assert model_param_count(model.config) == sum(p.numel() for p in model.parameters())


def test_position_parameters_are_the_table_the_buckets_or_nothing():
    base = model_param_count(_model("none").config)
    extra = {m: model_param_count(_model(m).config) - base for m in METHODS}
    assert extra == {"none": 0, "learned": 32 * 24, "sinusoidal": 0, "rope": 0, "alibi": 0, "relative": 32 * 4}


@pytest.mark.parametrize("positions", METHODS)
def test_only_a_model_without_positions_is_permutation_equivariant(positions):
    """No causal mask: with positions='none' shuffling the tokens shuffles the outputs; any method breaks it."""
    model = _model(positions, causal=False)
    ids = torch.randint(0, 40, (2, 9), generator=torch.Generator().manual_seed(3))
    perm = torch.tensor([3, 0, 8, 1, 5, 2, 7, 4, 6])
    with torch.no_grad():
        equivariant = close(model(ids[:, perm]), model(ids)[:, perm], n=24)
    assert equivariant == (positions == "none")


@pytest.mark.parametrize("positions", ["rope", "alibi", "relative"])
def test_relative_methods_do_not_care_where_the_sequence_starts(positions):
    model = _model(positions)
    ids = torch.randint(0, 40, (2, 9))
    with torch.no_grad():
        assert_close(model(ids, offset=17), model(ids), n=24)


@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_absolute_methods_add_the_rows_of_their_offset(positions):
    model = _model(positions)
    ids = torch.randint(0, 40, (1, 5))
    with torch.no_grad():
        assert not torch.allclose(model(ids, offset=3), model(ids))
        assert_close(model.position_rows(5, 3), model.position_rows(8)[3:])
    with pytest.raises(ShapeError, match="learned table"):
        _model("learned").position_rows(4, 30)


def test_learned_positions_refuse_sequences_longer_than_the_table():
    with pytest.raises(ShapeError, match="T = 33 tokens but the position table wpe"):
        _model("learned")(torch.zeros(1, 33, dtype=torch.long))
    for positions in ("sinusoidal", "rope", "alibi", "relative"):
        assert _model(positions)(torch.zeros(1, 33, dtype=torch.long)).shape == (1, 33, 40)


@pytest.mark.parametrize("positions", ["rope", "alibi", "relative", "none"])
def test_one_new_token_at_position_t_gets_what_the_full_pass_computes(positions):
    """What a KV cache does: the last token's q at offset t, against the keys of positions 0..t."""
    model = _model(positions)
    attn = model.blocks[0].attn
    T = 7
    x = torch.randn(2, T, 24, dtype=torch.float64)
    full_bias = model.position_bias(torch.arange(T), torch.arange(T))
    full, _ = attn(x, causal_mask(T), bias=full_bias)  # (B, T, d_model)

    q_old, k_old, v_old = attn.project(x[:, :-1])
    _, k_old = attn.rotate(q_old, k_old, offset=0)  # cached keys, rotated at their own positions
    q_new, k_new, v_new = attn.project(x[:, -1:])
    q_new, k_new = attn.rotate(q_new, k_new, offset=T - 1)  # the new token at position T - 1
    k = repeat_kv(torch.cat([k_old, k_new], dim=2), 2)
    v = repeat_kv(torch.cat([v_old, v_new], dim=2), 2)
    bias = model.position_bias(torch.tensor([T - 1]), torch.arange(T))  # (H, 1, T) or None
    heads, _ = attend(q_new, k, v, None, bias)
    assert_close(attn.o_proj(merge_heads(heads)), full[:, -1:], n=24)


def test_rope_settings_change_the_model():
    ids = torch.randint(0, 40, (1, 8))
    with torch.no_grad():
        half, inter = _model("rope")(ids), _model("rope", rope_pairs="interleaved")(ids)
        other_base = _model("rope", rope_base=100.0)(ids)
    assert not torch.allclose(half, inter) and not torch.allclose(half, other_base)
    assert _model("rope").blocks[0].attn.rope.pairs == "half"


def test_rope_never_touches_v_and_the_model_uses_its_rotation():
    model = _model("rope")
    attn = model.blocks[0].attn
    x = torch.randn(1, 6, 24, dtype=torch.float64)
    q, k, v = attn.project(x)
    rq, rk = attn.rotate(q, k, 0)
    out, weights = attn(x, causal_mask(6))
    manual, w = attend(rq, repeat_kv(rk, 2), repeat_kv(v, 2), causal_mask(6))
    assert_close(weights, w, n=6)
    assert_close(out, attn.o_proj(merge_heads(manual)), n=24)


@pytest.mark.parametrize("overrides, message", [
    (dict(positions="rope", d_model=12, n_heads=4), "d_head = d_model / n_heads = 3 must be even"),
    (dict(positions="rope", rope_pairs="neox"), "rope_pairs must be one of"),
    (dict(rope_base=1), "rope_base must be a number > 1"),
    (dict(rope_scale=0), "rope_scale must be a finite number > 0"),
    (dict(rope_scale=float("nan")), "rope_scale must be a finite number > 0"),
    (dict(sinusoidal_scale=-0.1), "sinusoidal_scale must be a finite number > 0"),
    (dict(sinusoidal_scale=True), "sinusoidal_scale must be a finite number > 0"),
    (dict(positions="relative", relative_buckets=2, causal=False), "at least 2 buckets per direction"),
    (dict(positions="absolute"), "positions must be one of"),
])
def test_bad_position_settings_are_refused(overrides, message):
    with pytest.raises((ValueError, ShapeError), match=message):
        ModelConfig(**{"vocab_size": 10, **overrides})


# ------------------------------------------------------------------------------------------------
# Chapter 06, section 7: position interpolation, the sinusoidal scale, context-extension rules
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pairs", P.PAIR_LAYOUTS)
def test_position_interpolation_reads_position_p_as_p_over_scale(pairs):
    x = torch.randn(3, 10, 16, dtype=torch.float64)
    even = torch.arange(0, 40, 4)  # (10,): positions 0, 4, ..., 36
    assert_close(P.apply_rope(x, positions=even, scale=4.0, pairs=pairs), P.apply_rope(x, pairs=pairs), n=16)
    assert_close(P.rope_angles(10, 16, offset=5, scale=2.5), P.rope_angles(10, 16, offset=5) / 2.5)
    assert not close(P.apply_rope(x, scale=4.0, pairs=pairs), P.apply_rope(x, pairs=pairs), n=16)
    assert_close(P.RotaryEmbedding(16, scale=4.0, pairs=pairs)(x, positions=even), P.apply_rope(x, pairs=pairs), n=16)
    for bad in (0, -1.0, float("inf"), True):
        with pytest.raises(ValueError, match="scale"):
            P.apply_rope(x, scale=bad)


def test_the_models_rope_scale_and_sinusoidal_scale():
    ids = torch.randint(0, 40, (2, 12), generator=torch.Generator().manual_seed(4))
    plain, squeezed = _model("rope"), _model("rope", rope_scale=4.0)
    assert squeezed.blocks[0].attn.rope.scale == 4.0
    with torch.no_grad():
        assert not close(squeezed(ids), plain(ids), n=24)
        fused = TinyDecoder(ModelConfig(**{**vars(squeezed.config), "kernels": "fused"})).double().eval()
        fused.load_state_dict(squeezed.state_dict())
        assert_close(fused(ids), squeezed(ids), n=24)  # the fast path rotates with the same scale
    small = _model("sinusoidal", sinusoidal_scale=0.03)
    assert_close(small.position_rows(7, 2), 0.03 * P.sinusoidal_table(7, 24, offset=2, dtype=torch.float64))
    assert_close(_model("sinusoidal").position_rows(7), P.sinusoidal_table(7, 24, dtype=torch.float64))


def _llama31_loop(d_head, base, factor, original_len, low, high):
    """Llama 3.1's published scaling rule, pair by pair in plain Python (Meta's reference apply_scaling)."""
    out = []
    for k in range(d_head // 2):
        freq = base ** (-2 * k / d_head)
        wavelen = 2 * math.pi / freq
        if wavelen < original_len / high:
            out.append(freq)
        elif wavelen > original_len / low:
            out.append(freq / factor)
        else:
            smooth = (original_len / wavelen - low) / (high - low)
            out.append((1 - smooth) * freq / factor + smooth * freq)
    return torch.tensor(out, dtype=torch.float64)


def test_context_extension_rules():
    d, s = 128, 8.0
    theta = P.rope_frequencies(d, 10000.0)
    assert_close(P.rope_scaled_frequencies(d, method="none", factor=s), theta)
    assert_close(P.rope_scaled_frequencies(d, method="pi", factor=s), theta / s)
    ntk = P.rope_scaled_frequencies(d, method="ntk", factor=s)
    assert_close(ntk[[0, -1]], torch.stack([theta[0], theta[-1] / s]))  # fastest kept, slowest exactly / s
    assert bool(((ntk <= theta) & (ntk >= theta / s)).all())
    yarn = P.rope_scaled_frequencies(d, method="yarn", factor=s, original_len=4096, alpha=1, beta=32)
    turns = 4096 * theta / (2 * math.pi)  # turns of each pair within the trained context
    assert_close(yarn[turns > 32], theta[turns > 32])  # many turns within L: kept
    assert_close(yarn[turns < 1], theta[turns < 1] / s)  # less than one turn: interpolated
    assert bool((turns > 32).any() and (turns < 1).any())
    for L, low, high in [(8192, 1.0, 4.0), (4096, 2.0, 8.0)]:
        got = P.rope_scaled_frequencies(d, 500000.0, method="llama3", factor=s, original_len=L,
                                        low_freq_factor=low, high_freq_factor=high)
        assert_close(got, _llama31_loop(d, 500000.0, s, L, low, high))
    with pytest.raises(ValueError, match="method must be one of"):
        P.rope_scaled_frequencies(d, method="linear")
