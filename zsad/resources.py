"""Committed data files the package reads, found the same way in a clone and in an installed (wheel) copy.

Two kinds of file are read by the code and live, as their one canonical copy, outside the package in the source
tree: the generated prompt ensembles ``prompts/*.json`` and the papers' reported values
``results/paper_reported.csv``. A wheel carries copies of them under ``zsad/_data/`` (:data:`SHIPPED_DIR`),
copied there by the build (``setup.py``'s ``build_py`` step, which reads :data:`SHIPPED` and
:func:`shipped_files` from this file); nothing is committed under ``zsad/_data/``, so there is no second copy that
could drift. :func:`data_path` is the one resolver every reader uses: in a clone it returns the canonical path, in
an installed copy the shipped one.

This module imports nothing from zsad (``setup.py`` loads it by file path, before zsad is importable).
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["SHIPPED", "SHIPPED_DIR", "data_path", "shipped_files"]

PACKAGE_DIR = Path(__file__).resolve().parent
#: Where an installed zsad keeps its package data.
SHIPPED_DIR = PACKAGE_DIR / "_data"
#: name -> (path in the source tree, relative to its root; file pattern for a folder or None for a file;
#: path under :data:`SHIPPED_DIR`).
SHIPPED = {
    "prompts": ("prompts", "*.json", "prompts"),
    "paper_reported": ("results/paper_reported.csv", None, "paper_reported.csv"),
}


def _entry(name: str) -> tuple[str, str | None, str]:
    if name not in SHIPPED:
        raise ValueError(f"unknown package data {name!r}; known: {', '.join(SHIPPED)}")
    return SHIPPED[name]


def data_path(name: str, *, in_clone: bool | None = None, root=None) -> Path:
    """The path of a committed data file or folder, in a clone or in an installed copy.

    Parameters
    ----------
    name : str
        A key of :data:`SHIPPED`: ``"prompts"`` (the folder of prompt files) or ``"paper_reported"`` (the csv).
    in_clone : bool, optional
        Whether zsad runs from a source tree; default :data:`zsad.config.IN_CLONE`.
    root : path, optional
        The source tree's root; default :data:`zsad.config.PROJECT_ROOT` (the package's parent).

    Returns
    -------
    pathlib.Path
        ``<root>/<canonical path>`` in a clone, ``zsad/_data/<shipped path>`` otherwise.
    """
    source, _, shipped = _entry(name)
    if in_clone is None or root is None:
        from zsad import config  # lazily: config may itself call data_path with both arguments while it loads

        in_clone = config.IN_CLONE if in_clone is None else in_clone
        root = config.PROJECT_ROOT if root is None else root
    return Path(root) / source if in_clone else SHIPPED_DIR / shipped


def shipped_files(root) -> list[tuple[Path, str]]:
    """The files a build copies into the wheel: ``(canonical file, destination relative to zsad/_data)``.

    Parameters
    ----------
    root : path
        The root of the source tree being built (a clone or an unpacked sdist).

    Returns
    -------
    list of (pathlib.Path, str)
        Every file of every :data:`SHIPPED` entry, sorted by destination.

    Raises
    ------
    FileNotFoundError
        When a canonical file or folder is missing or a folder holds no matching file: a wheel without them
        would fail only later, at run time, on the user's machine.
    """
    root = Path(root)
    out = []
    for name, (source, pattern, shipped) in SHIPPED.items():
        src = root / source
        if pattern is None:
            if not src.is_file():
                raise FileNotFoundError(f"package data {name!r}: {src} is missing (it must ship in the wheel)")
            out.append((src, shipped))
            continue
        files = sorted(p for p in src.glob(pattern) if p.is_file()) if src.is_dir() else []
        if not files:
            raise FileNotFoundError(f"package data {name!r}: no {pattern} files in {src} (they must ship in the "
                                    "wheel)")
        out += [(p, f"{shipped}/{p.name}") for p in files]
    return sorted(out, key=lambda item: item[1])
