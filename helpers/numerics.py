"""How close two floating-point results must be: one rule for the references' tests and the checks.

Two correct implementations of the same formula rarely agree bit for bit. A matrix multiply, a sum
or a softmax may be computed in a different order on another CPU (AVX2 or AVX-512 kernels, another
blocking of the matrix, one thread or two), and every reordering of a float sum changes its last
bits. So no test or check compares float results exactly; they compare within

    |got - expected| <= atol + rtol * |expected|

with rtol and atol derived from the dtype's machine epsilon and from n, the length of the longest
reduction in the computation (the inner dimension of a matmul, the number of summed terms):
rounding errors of n terms grow like sqrt(n) * eps on average (and n * eps at worst).

    tolerances(torch.float32)                 -> {"rtol": 1.3e-06, "atol": 1e-05}   torch's defaults
    tolerances(torch.float32, n=4096)         -> wider, for a long reduction
    assert_close(got, expected, n=d_model)    -> torch.testing.assert_close with those tolerances

Exact comparison is right only for results that involve no rounding: integers, booleans, indexing,
copies and permutations of stored values.
"""

from __future__ import annotations

import math

import torch

__all__ = ["assert_close", "close", "tolerances"]

# torch.testing.assert_close's defaults: the floor for short computations.
_FLOOR = {
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
    torch.float32: (1.3e-6, 1e-5),
    torch.float64: (1e-7, 1e-7),
}
# How many machine epsilons per sqrt(term) a reordered reduction may drift: generous for the
# average case (about 1), tight enough that a wrong formula (errors of order 1e-2 or more) fails.
_EPS_PER_SQRT_TERM = 8.0


def tolerances(dtype: torch.dtype, n: int = 1, scale: float = 1.0) -> dict[str, float]:
    """rtol and atol for comparing results of `dtype` computed through reductions of n terms.

    scale: the typical magnitude of the values (atol grows with it, so values near zero that are
    differences of large numbers are not over-judged).
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"tolerances: dtype must be a floating-point torch.dtype; got {dtype!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"tolerances: n (terms in the longest reduction) must be an int >= 1; got {n!r}")
    if not scale > 0:
        raise ValueError(f"tolerances: scale must be positive; got {scale!r}")
    eps = torch.finfo(dtype).eps
    floor_rtol, floor_atol = _FLOOR.get(dtype, (eps, eps))
    grown = _EPS_PER_SQRT_TERM * eps * math.sqrt(n)
    return {"rtol": max(floor_rtol, grown), "atol": max(floor_atol, grown) * max(scale, 1.0)}


def close(got: torch.Tensor, expected: torch.Tensor, n: int = 1, scale: float = 1.0) -> bool:
    """True when got equals expected within tolerances(expected.dtype, n, scale) (NaN equal to NaN)."""
    tol = tolerances(expected.dtype, n, scale) if expected.is_floating_point() else {"rtol": 0.0, "atol": 0.0}
    return bool(torch.allclose(got.to(expected.dtype), expected, equal_nan=True, **tol))


def assert_close(got: torch.Tensor, expected: torch.Tensor, n: int = 1, scale: float = 1.0, **kwargs) -> None:
    """torch.testing.assert_close with the course's tolerances for expected's dtype and n terms."""
    if expected.is_floating_point():
        kwargs = {**tolerances(expected.dtype, n, scale), **kwargs}
    torch.testing.assert_close(got, expected, **kwargs)
