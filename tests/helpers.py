"""Helpers shared by several test files (import with ``from helpers import ...``)."""
import torch


def perturb_norms(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random LayerNorm affine parameters, so that every LN (ln_pre, ln_1, ln_2, ln_post) matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.copy_(1 + 0.3 * torch.randn(mod.weight.shape, generator=gen))
                mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=gen))
    return model
