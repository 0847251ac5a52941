"""Transformer Internals: reference implementations (a module per chapter topic, and shared ones: the module
map in CONTRIBUTING.md), checks and plots.

    import helpers
    helpers.seed_everything(0)
    device = helpers.get_device()
    from helpers.attention import scaled_dot_product_attention
"""

from .runtime import get_device, seed_everything

__all__ = ["get_device", "seed_everything"]
__version__ = "0.1.0"
