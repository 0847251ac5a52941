"""A Llama-style decoder from the shared model's config: RMSNorm, SwiGLU, RoPE and GQA as one unit.

    config = llama_config(vocab_size=32000, d_model=4096, n_heads=32, n_layers=32)   # Llama-2-7B's shape
    model = TinyDecoder(config)            # the shared model (helpers.blocks); nothing is forked here

Each of the four pieces is taught on its own (RMSNorm chapter 04, SwiGLU chapter 03, RoPE chapter 06,
GQA chapter 02); this module only names the combination Llama uses (Touvron et al., 2023):

    pre-norm blocks      x = x + attn(rmsnorm(x));  x = x + swiglu(rmsnorm(x))
    attention            no biases; q and k rotated by RoPE (the "half" pairing of Hugging Face's
                         Llama: channel k with k + d_head/2), H_kv key/value heads (H_kv = H: Llama-1/2
                         7B and 13B; 8: Llama-2 70B and Llama 3)
    FFN                  SwiGLU, d_ff = 8/3 d_model rounded up to a multiple of `multiple_of`
    head                 a final RMSNorm, then an LM head that is NOT tied to the embeddings

The course's RMSNorm has eps = 1e-6 (Llama-1's value; Llama-2 uses 1e-5): at unit-scale activations
the two differ in the sixth decimal. tests/test_llama.py checks a small llama_config model against
Hugging Face's LlamaForCausalLM with copied weights, and the Llama-2-7B count against
`llama_param_count`.
"""

from __future__ import annotations

from .blocks import ModelConfig
from .ffn import swiglu_width
from .shapes import require_positive_int

__all__ = ["LLAMA2_7B", "llama_config", "llama_param_count"]

# Llama-2-7B's published shape (Touvron et al., 2023, "Llama 2", and its released config):
# 32 layers, d_model 4096, 32 heads (no GQA at 7B), d_ff 11008, V = 32000, untied head, RoPE base 10000,
# a 4096-token context.
LLAMA2_7B = dict(vocab_size=32000, d_model=4096, n_heads=32, n_kv_heads=32, d_ff=11008, n_layers=32,
                 rope_base=10000.0, max_seq_len=4096)


def llama_config(vocab_size: int, d_model: int, n_heads: int, n_layers: int, *, n_kv_heads: int | None = None,
                 d_ff: int | None = None, multiple_of: int = 256, rope_base: float = 10000.0,
                 max_seq_len: int = 4096, kernels: str = "course") -> ModelConfig:
    """The shared model's config with Llama's choices: RMSNorm, pre-norm, SwiGLU, RoPE, GQA, untied head.

    n_kv_heads None means n_heads (multi-head attention, Llama-1/2 7B); d_ff None means Llama's
    8/3 d_model rounded up to a multiple of `multiple_of` (4096 -> 11008 with 256). max_seq_len is
    the context the model was trained on; RoPE has no table, so it adds no parameters.
    """
    fn = "llama_config"
    for name, value in (("vocab_size", vocab_size), ("d_model", d_model), ("n_heads", n_heads),
                        ("n_layers", n_layers), ("multiple_of", multiple_of)):
        require_positive_int(fn, name, value)
    if d_ff is None:
        d_ff = swiglu_width(d_model, multiple_of)
    return ModelConfig(vocab_size=vocab_size, d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads,
                       d_ff=d_ff, n_layers=n_layers, max_seq_len=max_seq_len, norm_placement="pre",
                       norm="rmsnorm", ffn="swiglu", positions="rope", rope_base=float(rope_base),
                       rope_pairs="half", tie_weights=False, causal=True, bias=False, kernels=kernels)


def llama_param_count(vocab_size: int, d_model: int, n_heads: int, n_layers: int, d_ff: int,
                      n_kv_heads: int | None = None) -> int:
    """Llama's parameter count written out from its architecture (no course counter is used):

        V d (embeddings) + L (2 d^2 + 2 d H_kv d_head (W_Q, W_O; W_K, W_V)
                              + 3 d d_ff (gate, up, down) + 2 d (two RMSNorm gains))
        + d (final RMSNorm) + V d (untied LM head)

    Llama-2-7B: 6,738,415,616.
    """
    fn = "llama_param_count"
    for name, value in (("vocab_size", vocab_size), ("d_model", d_model), ("n_heads", n_heads),
                        ("n_layers", n_layers), ("d_ff", d_ff)):
        require_positive_int(fn, name, value)
    n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
    d, V, d_head = d_model, vocab_size, d_model // n_heads
    per_layer = 2 * d * d + 2 * d * n_kv_heads * d_head + 3 * d * d_ff + 2 * d
    return V * d + n_layers * per_layer + d + V * d
