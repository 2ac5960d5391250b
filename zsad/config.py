"""Where things are: every path derives from the project root, overridable by environment variables.

``ZSAD_CHECKPOINT``  default CLIP checkpoint file (none: seeded random weights)
``ZSAD_MVTEC_ROOT``, ``ZSAD_VISA_ROOT``  dataset roots for paper-scale runs (not needed by the default job)
``ZSAD_RESULTS``  where run folders go (default ``<root>/results``)
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_DIR.parent
DATA_DIR = PROJECT_ROOT / "data"
# Embedded default data: a committed real subset and a synthetic tree generated on demand (seed 0).
MAGNETIC_TILE_SUBSET = DATA_DIR / "magnetic_tile_subset"
SYNTHETIC_DIR = DATA_DIR / "synthetic"
SYNTHETIC_SEED = 0
RESULTS_DIR = Path(os.environ.get("ZSAD_RESULTS", PROJECT_ROOT / "results"))
PROMPTS_DIR = PROJECT_ROOT / "prompts"

DATASET_ENV = {"mvtec": "ZSAD_MVTEC_ROOT", "visa": "ZSAD_VISA_ROOT", "magnetic_tile": "ZSAD_MAGNETIC_TILE_ROOT"}


def dataset_root(kind: str) -> Path | None:
    """The root a user configured for a dataset kind, or the embedded copy where there is one."""
    env = DATASET_ENV.get(kind)
    if env and os.environ.get(env):
        return Path(os.environ[env]).expanduser()
    if kind == "magnetic_tile":
        return MAGNETIC_TILE_SUBSET
    if kind == "synthetic":
        return SYNTHETIC_DIR
    return None
