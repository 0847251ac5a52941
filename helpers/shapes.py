"""Input validation that names the shapes it expected and the shapes it got.

Every reference function in `helpers` validates its inputs with these, so a learner who passes
the wrong thing reads "k has shape (2, 7, 12); expected (..., T_k, d_k) with d_k = 11 as in q"
instead of a matmul error from deep inside torch.
"""

from __future__ import annotations

from typing import Sequence

import torch


class ShapeError(ValueError):
    """A tensor has the wrong rank or a dimension that does not match another tensor's."""


def fmt_shape(shape: Sequence[int]) -> str:
    """(2, 5, 11) for torch.Size([2, 5, 11]); (7,) for a vector."""
    dims = tuple(int(d) for d in shape)
    return "(" + ", ".join(str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"


def require_tensor(fn: str, name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor; got {type(x).__name__}")
    return x


def require_float(fn: str, name: str, x: object, layout: str) -> torch.Tensor:
    """A floating-point tensor shaped like `layout`: '(..., T_q, d_k)' means rank >= 2,
    '(B, T, d_model)' means rank exactly 3."""
    require_tensor(fn, name, x)
    if not x.is_floating_point():
        raise TypeError(f"{fn}: {name} must be a floating-point tensor; got dtype {x.dtype}")
    axes = [a.strip() for a in layout.strip("()").split(",")]
    named = [a for a in axes if a != "..."]
    ok = x.dim() >= len(named) if "..." in axes else x.dim() == len(named)
    if not ok:
        raise ShapeError(
            f"{fn}: {name} must have shape {layout}; got {fmt_shape(x.shape)} (rank {x.dim()})"
        )
    return x


def require_same_dtype(fn: str, **tensors: torch.Tensor) -> None:
    dtypes = {name: t.dtype for name, t in tensors.items()}
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{name} {dtype}" for name, dtype in dtypes.items())
        raise TypeError(f"{fn}: inputs must share one dtype; got {listed}")


def require_bool_mask(fn: str, mask: object, scores_shape: Sequence[int]) -> torch.Tensor:
    """A boolean mask (True = may attend) that broadcasts to the scores' shape (..., T_q, T_k)."""
    require_tensor(fn, "mask", mask)
    if mask.dtype != torch.bool:
        raise TypeError(
            f"{fn}: mask must be a bool tensor (True = may attend, False = blocked); got dtype "
            f"{mask.dtype}. Build it with a comparison (e.g. positions < length) or .bool()"
        )
    try:
        broadcast = torch.broadcast_shapes(tuple(mask.shape), tuple(scores_shape))
    except RuntimeError:
        broadcast = None
    if broadcast != torch.Size(scores_shape):
        raise ShapeError(
            f"{fn}: mask of shape {fmt_shape(mask.shape)} does not broadcast to the scores' shape "
            f"{fmt_shape(scores_shape)} = {scores_layout(len(scores_shape))}; {mask_advice(len(scores_shape))}"
        )
    return mask


def scores_layout(rank: int, keys: str = "T_k", queries: str = "T_q") -> str:
    """The scores' axes for this rank: (B, T_q, T_k), or per head (B, H, T_q, T_k)."""
    if rank == 4:
        return f"(B, H, {queries}, {keys})"
    if rank == 3:
        return f"(B, {queries}, {keys})"
    return f"(..., {queries}, {keys})"


def key_padding_shape(rank: int, keys: str = "T_k") -> str:
    """The shape of a key-padding mask that broadcasts against scores of this rank."""
    if rank == 4:
        return f"(B, 1, 1, {keys})"
    if rank == 3:
        return f"(B, 1, {keys})"
    raise ValueError(f"no key-padding mask layout for scores of rank {rank}")


def mask_advice(rank: int) -> str:
    """Which masks fit scores of this rank: chapter 01's scores are (B, T_q, T_k), and from chapter 02
    on they are per head, (B, H, T_q, T_k), where a key-padding mask needs a head axis too."""
    if rank in (3, 4):
        return (f"a key-padding mask for scores {scores_layout(rank)} has shape {key_padding_shape(rank)}, "
                f"a causal mask (T_q, T_k)")
    return (f"a key-padding mask has shape {key_padding_shape(3)} for scores {scores_layout(3)} and "
            f"{key_padding_shape(4)} for scores {scores_layout(4)}, a causal mask (T_q, T_k)")


def require_positive_int(fn: str, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{fn}: {name} must be a positive int; got {value!r}")
    return value
