"""Shared pytest fixtures (keep minimal; append new fixtures below)."""

import pytest


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A small synthetic MVTec-layout tree (classes weave and grain, seed 0), generated once per session."""
    from zsad.data import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("synth") / "tree", seed=0)


@pytest.fixture(scope="session", autouse=True)
def _private_feature_cache(tmp_path_factory):
    """Runs in tests cache features in a temporary folder, never in the project's cache/."""
    import os

    old = os.environ.get("ZSAD_CACHE")
    os.environ["ZSAD_CACHE"] = str(tmp_path_factory.mktemp("feature-cache"))
    yield
    if old is None:
        os.environ.pop("ZSAD_CACHE", None)
    else:
        os.environ["ZSAD_CACHE"] = old


@pytest.fixture(scope="module")
def single_thread():
    """Tiny models are thousands of tiny ops: intra-op threads only cost time (10-40x slower with 2 threads on a
    busy 2-core machine). Use with ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny():
    """The tiny random ViT with random LayerNorm affines (so every LN matters), for reference comparisons."""
    from helpers import perturb_norms

    from zsad.backbone import load_model

    return perturb_norms(load_model("zsad-tiny-vit", seed=0).model, seed=1)


@pytest.fixture(scope="module")
def tiny64(tiny):
    """``tiny`` in float64, for slow references written from the formulas."""
    import copy

    return copy.deepcopy(tiny).double()
