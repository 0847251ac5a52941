"""Chapter 04: uncatalogued wrong answers."""

from __future__ import annotations

from . import Wrong

TOPIC = "norms"


def _ln(*, spread="std", affine=lambda xh, g, b: xh * g + b):
    def layer_norm(x, gamma, beta, eps=1e-5):
        mu = x.mean(-1, keepdim=True)
        if spread == "std":
            s = ((x - mu) ** 2).mean(-1, keepdim=True).add(eps).sqrt()
        else:  # mean absolute deviation
            s = (x - mu).abs().mean(-1, keepdim=True) + eps
        return affine((x - mu) / s, gamma, beta)
    return layer_norm


def _rms(*, spread=lambda x, eps: (x * x).mean(-1, keepdim=True).add(eps).sqrt(), how="divide",
         affine=lambda y, g: y * g):
    def rms_norm(x, gamma, eps=1e-6):
        s = spread(x, eps)
        return affine(x / s if how == "divide" else x * s, gamma)
    return rms_norm


WRONG = [
    Wrong("layer_norm", "gamma_beta_swapped", _ln(affine=lambda xh, g, b: xh * b + g), r"swap"),
    Wrong("layer_norm", "mean_abs_deviation", _ln(spread="mad"), r"variance|squared|standard deviation"),
    Wrong("layer_norm", "beta_multiplied", _ln(affine=lambda xh, g, b: xh * g * b), r"beta .*(multipl|added)"),
    Wrong("rms_norm", "mean_abs", _rms(spread=lambda x, eps: x.abs().mean(-1, keepdim=True) + eps),
          r"square|mean\(x\^2\)|RMS"),
    Wrong("rms_norm", "gamma_added", _rms(affine=lambda y, g: y + g), r"gamma"),
    Wrong("rms_norm", "multiplies", _rms(how="multiply"), r"divide|multipl"),
    Wrong("pre_ln_block", "no_norm1",
          lambda x, attn, ffn, norm1, norm2: (h := x + attn(x)) + ffn(norm2(h)), r"norm1"),
    Wrong("pre_ln_block", "norm1_twice",
          lambda x, attn, ffn, norm1, norm2: (h := x + attn(norm1(x))) + ffn(norm1(h)), r"norm2"),
    Wrong("post_ln_block", "norm1_twice",
          lambda x, attn, ffn, norm1, norm2: norm1((h := norm1(x + attn(x))) + ffn(h)), r"norm2"),
    Wrong("post_ln_block", "ffn_reads_unnormalized",
          lambda x, attn, ffn, norm1, norm2: norm2(norm1(s := x + attn(x)) + ffn(s)), r"ffn|norm1"),
    Wrong("pre_ln_block", "attn_twice",
          lambda x, attn, ffn, norm1, norm2: (h := x + attn(norm1(x))) + attn(norm2(h)), r"ffn|attn"),
]

# Written after the probes, without looking at them again: how the probing does on mistakes it was
# not built from. `named` records what happens today. Two catalogued mistakes at once must not be
# named as one of them.

HELD_OUT = [
    Wrong("layer_norm", "unbiased_and_eps_outside",
          lambda x, gamma, beta, eps=1e-5: (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + eps) * gamma
          + beta, r"unbiased.*eps|eps.*unbiased", named=False),
    Wrong("rms_norm", "gamma_inside", _rms(spread=lambda x, eps: x.pow(2).mean(-1, keepdim=True).add(eps).sqrt(),
                                           affine=lambda y, g: y * g * g), r"gamma", named=False),
    Wrong("pre_ln_block", "half_residual",
          lambda x, attn, ffn, norm1, norm2: (h := x + 0.5 * attn(norm1(x))) + ffn(norm2(h)), r"0\.5|half|residual"),
]
