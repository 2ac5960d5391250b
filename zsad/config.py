"""Where things are: every path derives from the project root, overridable by environment variables.

``ZSAD_CHECKPOINT``  default CLIP checkpoint file (none: seeded random weights)
``ZSAD_MVTEC_ROOT``, ``ZSAD_VISA_ROOT``  dataset roots for paper-scale runs (not needed by the default job)
``ZSAD_RESULTS``  where run folders go (default ``<root>/results``; installed, not cloned: ``./results``)
``ZSAD_CACHE``  the feature cache (default ``<root>/cache``; installed, not cloned: ``~/.cache/zsad``)

In a clone (:func:`is_clone`) every path is under the project root, as always. Installed from a wheel the package's
parent is site-packages: then the prompt files and ``paper_reported.csv`` come from the package data in
``zsad/_data/`` (:data:`SHIPPED_DIR`), the cache defaults to ``$XDG_CACHE_HOME/zsad`` (``~/.cache/zsad``) and run
folders to ``results/`` in the current directory.
"""
from __future__ import annotations

import os
from pathlib import Path

from zsad.resources import SHIPPED_DIR, data_path  # noqa: F401  (SHIPPED_DIR: package data of an installed zsad)

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_DIR.parent


def is_clone(root=PROJECT_ROOT) -> bool:
    """Whether ``root`` is a zsad source tree.

    Parameters
    ----------
    root : path, default PROJECT_ROOT
        The folder to test.

    Returns
    -------
    bool
        True when its pyproject.toml names the project zsad and it has ``.git`` or the ``tests`` folder (an
        unpacked sdist or a copy of the checkout counts; site-packages does not).
    """
    root = Path(root)
    try:
        text = (root / "pyproject.toml").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    import re

    named = re.search(r'(?ms)^\[project\].*?^name\s*=\s*["\']zsad["\']', text) is not None
    return named and ((root / ".git").exists() or (root / "tests").is_dir())


IN_CLONE = is_clone(PROJECT_ROOT)


def default_cache_dir(in_clone: bool = IN_CLONE) -> Path:
    """The feature cache's folder when ``$ZSAD_CACHE`` is not set.

    Parameters
    ----------
    in_clone : bool, default IN_CLONE
        Whether zsad runs from a source tree.

    Returns
    -------
    pathlib.Path
        ``<root>/cache`` in a clone, else ``$XDG_CACHE_HOME/zsad`` (``~/.cache/zsad``).
    """
    if in_clone:
        return PROJECT_ROOT / "cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "zsad"


def default_results_dir(in_clone: bool = IN_CLONE) -> Path:
    """Where run folders go when ``$ZSAD_RESULTS`` is not set.

    Parameters
    ----------
    in_clone : bool, default IN_CLONE
        Whether zsad runs from a source tree.

    Returns
    -------
    pathlib.Path
        ``<root>/results`` in a clone, else ``results/`` in the current directory.
    """
    return PROJECT_ROOT / "results" if in_clone else Path.cwd() / "results"


DATA_DIR = PROJECT_ROOT / "data"
# Embedded default data: a committed real subset and a synthetic tree generated on demand (seed 0).
MAGNETIC_TILE_SUBSET = DATA_DIR / "magnetic_tile_subset"
SYNTHETIC_DIR = DATA_DIR / "synthetic"
SYNTHETIC_SEED = 0
RESULTS_DIR = Path(os.environ["ZSAD_RESULTS"]) if "ZSAD_RESULTS" in os.environ else default_results_dir()
PROMPTS_DIR = data_path("prompts", in_clone=IN_CLONE, root=PROJECT_ROOT)
#: The values the papers report (``zsad.paper``).
PAPER_REPORTED = data_path("paper_reported", in_clone=IN_CLONE, root=PROJECT_ROOT)

DATASET_ENV = {"mvtec": "ZSAD_MVTEC_ROOT", "visa": "ZSAD_VISA_ROOT", "magnetic_tile": "ZSAD_MAGNETIC_TILE_ROOT"}


def dataset_root(kind: str) -> Path | None:
    """The root a user configured for a dataset, or the embedded copy where there is one.

    Parameters
    ----------
    kind : str
        A dataset name (:data:`DATASETS`).

    Returns
    -------
    pathlib.Path or None
        ``$ZSAD_MVTEC_ROOT`` / ``$ZSAD_VISA_ROOT`` / ``$ZSAD_MAGNETIC_TILE_ROOT`` when set, the embedded
        magnetic-tile subset or synthetic tree, else None.
    """
    env = DATASET_ENV.get(kind)
    if env and os.environ.get(env):
        return Path(os.environ[env]).expanduser()
    if kind == "magnetic_tile":
        return MAGNETIC_TILE_SUBSET
    if kind == "synthetic":
        return SYNTHETIC_DIR
    return None


# Study dataset names -> (loader kind, default root). "synthetic" is an MVTec-layout tree made by `zsad data synth`.
DATASETS = ("synthetic", "magnetic_tile", "mvtec", "visa", "folder")


def resolve_dataset(name: str, root=None) -> tuple[str, Path]:
    """The loader kind and root of a study dataset.

    Parameters
    ----------
    name : str
        A dataset name (:data:`DATASETS`).
    root : path, optional
        Overrides the configured default (:func:`dataset_root`).

    Returns
    -------
    tuple of (str, pathlib.Path)
        ``(loader kind, root)``; ``synthetic`` is read as an MVTec-layout tree.

    Raises
    ------
    ValueError
        An unknown name, or a dataset with no root given or configured (naming its environment variable).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    kind = "mvtec" if name == "synthetic" else name
    chosen = Path(root).expanduser() if root else dataset_root(name)
    if chosen is None:
        env = DATASET_ENV.get(name)
        raise ValueError(f"dataset {name!r} needs a root: pass root=... / --root"
                         + (f" or set ${env}" if env else ""))
    return kind, chosen


def display_path(path) -> str:
    """A path as provenance and messages print it.

    Parameters
    ----------
    path : path
        Any path.

    Returns
    -------
    str
        Relative to the project root when it lies inside it (stable across clones), else absolute.
    """
    path = Path(path).resolve()
    try:
        return path.relative_to(PROJECT_ROOT).as_posix()
    except ValueError:
        return str(path)


def prompt_path(name) -> Path:
    """Find a prompt file.

    Parameters
    ----------
    name : str or path
        A path, or a file's name in the prompt folder (``prompts/`` in a clone, the package data when installed),
        with or without ``.json``.

    Returns
    -------
    pathlib.Path
        The file.

    Raises
    ------
    ValueError
        When neither the path nor the name exists.
    """
    path = Path(name).expanduser()
    if path.is_file():
        return path
    for candidate in (PROMPTS_DIR / str(name), PROMPTS_DIR / f"{name}.json"):
        if candidate.is_file():
            return candidate
    raise ValueError(f"{name}: prompt file not found (as a path, or by name in {display_path(PROMPTS_DIR)}/)")
