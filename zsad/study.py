"""The orchestrator the CLI and the notebooks call: named datasets in, tidy tables and run folders out."""
from __future__ import annotations

import pandas as pd

from zsad import config
from zsad.data import load_dataset


def _names(value) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value)


def load_named(name: str, root=None, classes=None, split=None):
    """Records of a study dataset (``synthetic``, ``magnetic_tile``, ``mvtec``, ``visa``, ``folder``)."""
    kind, path = config.resolve_dataset(name, root)
    return load_dataset(kind, path, classes=classes, split=split)


def load_many(datasets="synthetic,magnetic_tile", roots="") -> dict[str, list]:
    """Records of several study datasets, by name.

    ``datasets`` and ``roots`` are comma-separated lists (or sequences) in the same order; an empty root means the
    configured default (the embedded data, or ``$ZSAD_MVTEC_ROOT`` / ``$ZSAD_VISA_ROOT``).
    """
    names, given = _names(datasets), _names(roots)
    if len(given) > len(names):
        raise ValueError(f"{len(given)} roots given for {len(names)} datasets ({', '.join(names)})")
    given += [""] * (len(names) - len(given))
    return {name: load_named(name, root or None) for name, root in zip(names, given)}


def dataset_overview(datasets="synthetic,magnetic_tile", roots="") -> pd.DataFrame:
    """Images and masks per dataset, class, split and defect type (arguments as :func:`load_many`)."""
    frames = []
    for name, records in load_many(datasets, roots).items():
        df = pd.DataFrame([{"class": r.cls, "split": r.split, "defect": r.defect,
                            "has_mask": r.mask_path is not None} for r in records])
        counts = df.groupby(["class", "split", "defect"], sort=True).agg(
            images=("has_mask", "size"), masks=("has_mask", "sum")).reset_index()
        counts.insert(0, "dataset", name)
        frames.append(counts)
    return pd.concat(frames, ignore_index=True)
