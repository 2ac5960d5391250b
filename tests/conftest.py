"""Shared pytest fixtures (keep minimal; append new fixtures below)."""

import pytest


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A small synthetic MVTec-layout tree (classes weave and grain, seed 0), generated once per session."""
    from zsad.data import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("synth") / "tree", seed=0)
