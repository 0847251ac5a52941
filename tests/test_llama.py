"""The Llama-style configuration of the shared model, checked as one unit (issue 26, item 4).

Oracle: Hugging Face's LlamaForCausalLM (transformers, the `oracle` extra of pyproject.toml, installed
by .ci/run) at a tiny size, every weight copied from the course's TinyDecoder, logits compared. Without transformers
the oracle tests skip, unless COURSE_REQUIRE_ORACLE=1 (CI) turns the skip into a failure.

The parameter count at Llama-2-7B's shape is counted on the meta device: nothing is allocated.
"""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch

from helpers.blocks import TinyDecoder, model_param_count
from helpers.llama import LLAMA2_7B, llama_config, llama_param_count
from helpers.numerics import assert_close, close

REQUIRED = os.environ.get("COURSE_REQUIRE_ORACLE") == "1"

# distinct sizes, so that a transposed weight or a swapped axis cannot pass by accident
TINY = dict(vocab_size=97, d_model=48, n_heads=6, n_kv_heads=2, n_layers=2, multiple_of=32)  # d_ff 128


def _transformers():
    try:
        import transformers  # noqa: F401
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError as error:
        if REQUIRED:
            pytest.fail(f"COURSE_REQUIRE_ORACLE=1 but transformers cannot be imported: {error}")
        pytest.skip("transformers is not installed (pip install -e '.[oracle]')")
    return LlamaConfig, LlamaForCausalLM


def _randomized(config, seed: int) -> TinyDecoder:
    """A TinyDecoder whose every parameter is random, norm gains included (gains of 1 would hide a lost gain)."""
    torch.manual_seed(seed)
    model = TinyDecoder(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "final_norm.weight":
                p.copy_(1 + 0.3 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.15)
    return model


def _hf_twin(model: TinyDecoder, rms_eps: float = 1e-6):
    """Hugging Face's LlamaForCausalLM with the course model's weights, each HF parameter copied once."""
    LlamaConfig, LlamaForCausalLM = _transformers()
    c = model.config
    hf_config = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.ffn_width,
                            num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads,
                            num_key_value_heads=c.kv_heads, max_position_embeddings=c.max_seq_len,
                            rms_norm_eps=rms_eps, tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
                            rope_parameters={"rope_type": "default", "rope_theta": c.rope_base})
    hf_config._attn_implementation = "eager"
    torch.manual_seed(123)
    hf = LlamaForCausalLM(hf_config).eval()
    ours = dict(model.named_parameters())
    names = {"model.embed_tokens.weight": "tok_emb.weight", "model.norm.weight": "final_norm.weight",
             "lm_head.weight": "lm_head.weight"}
    for i in range(c.n_layers):
        hf_layer, our_block = f"model.layers.{i}.", f"blocks.{i}."
        names[hf_layer + "input_layernorm.weight"] = our_block + "norm1.weight"
        names[hf_layer + "post_attention_layernorm.weight"] = our_block + "norm2.weight"
        for p in ("q", "k", "v", "o"):
            names[hf_layer + f"self_attn.{p}_proj.weight"] = our_block + f"attn.{p}_proj.weight"
        for p in ("gate", "up", "down"):
            names[hf_layer + f"mlp.{p}_proj.weight"] = our_block + f"ffn.{p}.weight"
    hf_params = dict(hf.named_parameters())
    assert set(hf_params) == set(names), f"unmapped HF parameters: {sorted(set(hf_params) ^ set(names))}"
    assert sorted(names.values()) == sorted(ours), f"unmapped course parameters: {sorted(set(ours) - set(names.values()))}"
    with torch.no_grad():
        for hf_name, our_name in names.items():
            if hf_params[hf_name].shape != ours[our_name].shape:
                raise AssertionError(f"{hf_name} {tuple(hf_params[hf_name].shape)} vs {our_name} "
                                     f"{tuple(ours[our_name].shape)}")
            hf_params[hf_name].copy_(ours[our_name])
    return hf


def _hf_logits(hf, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf(input_ids=ids, use_cache=False).logits  # (B, T, V)


@pytest.mark.parametrize("seed", [0, 1])
def test_llama_config_matches_hugging_face_llama_with_copied_weights(seed):
    config = llama_config(**TINY)
    assert (config.norm, config.ffn, config.positions, config.kv_heads, config.tie_weights) == (
        "rmsnorm", "swiglu", "rope", 2, False)
    model = _randomized(config, seed)
    hf = _hf_twin(model)
    ids = torch.randint(0, config.vocab_size, (3, 13), generator=torch.Generator().manual_seed(seed))  # (B, T)
    expected = _hf_logits(hf, ids)  # (B, T, V)
    with torch.no_grad():
        got = model(ids)  # the course path: (B, T, V)
        fused = TinyDecoder(llama_config(**TINY, kernels="fused")).eval()
        fused.load_state_dict(model.state_dict())
        got_fused = fused(ids)  # the fast path
    assert got.shape == expected.shape == (3, 13, config.vocab_size)
    n = config.ffn_width  # the longest reduction: the FFN's down projection over d_ff
    assert_close(got, expected, n=n)
    assert_close(got_fused, expected, n=n)


def test_the_oracle_comparison_fails_on_a_wrong_rope_pairing():
    """The same comparison with GPT-J's interleaved RoPE pairs (a real, silent porting mistake) misses by far."""
    right = _randomized(llama_config(**TINY), seed=0)
    hf = _hf_twin(right)
    ids = torch.randint(0, TINY["vocab_size"], (2, 11), generator=torch.Generator().manual_seed(3))  # (B, T)
    wrong = TinyDecoder(replace(llama_config(**TINY), rope_pairs="interleaved")).eval()
    wrong.load_state_dict(right.state_dict())
    expected = _hf_logits(hf, ids)
    with torch.no_grad():
        assert close(right(ids), expected, n=128)
        assert (wrong(ids) - expected).abs().max() > 1e-2  # tolerance: about 1e-5


def test_llama2_7b_parameter_count_on_the_meta_device():
    config = llama_config(**LLAMA2_7B)
    assert config.ffn_width == 11008 == llama_config(32000, 4096, 32, 32).ffn_width  # Llama's 8/3 rule, multiple of 256
    with torch.device("meta"):
        model = TinyDecoder(config)
    assert all(p.is_meta for p in model.parameters())
    held = sum(p.numel() for p in model.parameters())
    assert held == model_param_count(config) == llama_param_count(32000, 4096, 32, 32, 11008) == 6_738_415_616


def test_llama_param_count_with_gqa_matches_the_model():
    """Llama-2-70B's shape (80 layers, d 8192, 64 heads, 8 KV heads, d_ff 28672): 68,976,648,192 parameters."""
    config = llama_config(32000, 8192, 64, 80, n_kv_heads=8, d_ff=28672)
    with torch.device("meta"):
        model = TinyDecoder(config)
    held = sum(p.numel() for p in model.parameters())
    assert held == model_param_count(config) == llama_param_count(32000, 8192, 64, 80, 28672, n_kv_heads=8)
    assert held == 68_976_648_192


def test_llama_config_refuses_bad_sizes():
    with pytest.raises(ValueError, match="n_layers must be a positive int"):
        llama_config(97, 48, 6, 0)
    with pytest.raises(ValueError, match="d_model"):
        llama_param_count(97, 0, 6, 2, 128)
