"""Random parameters for a model under test, the one helper every model test uses."""

from __future__ import annotations

import math

import torch
from torch import nn


def randomize(module: nn.Module, seed: int, *, biases: bool) -> None:
    """Every parameter random (norm gammas around 1), so that no weight can be skipped unnoticed.

    biases: random biases too, or zero biases (to compare with a torch module that has none, such
    as a layer with bias=False whose LayerNorm has no beta). No default: a caller says which."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.3 * noise)
            elif name.endswith("bias"):
                p.copy_(0.3 * noise if biases else torch.zeros_like(p))
            else:
                p.copy_(noise / math.sqrt(p.shape[-1]))
