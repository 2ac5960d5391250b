"""Helpers shared by several test files (import with ``from helpers import ...``)."""
import shutil

import pytest
import torch

#: Headless Chromium without network, profile state or scrollbars (the book and the inspect report render checks).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def chromium_or_skip() -> str:
    """The Chromium executable; without one the calling test is skipped, saying why (``make browser`` installs it)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Chromium is not installed (Debian package 'chromium'): the browser rendering check is skipped")
    return browser


def perturb_norms(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random LayerNorm affine parameters, so that every LN (ln_pre, ln_1, ln_2, ln_post) matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.copy_(1 + 0.3 * torch.randn(mod.weight.shape, generator=gen))
                mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=gen))
    return model
