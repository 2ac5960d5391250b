"""Figures the notebooks show. Plotting only: no computing that a table depends on."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from zsad.data import load_image, load_mask

MASK_COLOUR = (1.0, 0.15, 0.1)


def _first_per_group(records, per_group: int):
    groups: dict[tuple[str, str], list] = {}
    for r in records:
        if r.split == "test":
            groups.setdefault((r.cls, r.defect), []).append(r)
    return [(key, items[:per_group]) for key, items in sorted(groups.items())]


def example_grid(records, *, per_group: int = 1, size: int = 160, title: str | None = None):
    """One row per class, one column per test defect type (``good`` first): image with its mask outlined in red.

    Images are shown resized to ``size`` x ``size``, as every method sees them (aspect ratio not kept).
    """
    groups = _first_per_group(records, per_group)
    classes = sorted({cls for (cls, _), _ in groups})
    defects = sorted({d for (_, d), _ in groups}, key=lambda d: (d != "good", d))
    ncols = len(defects) * per_group
    fig, axes = plt.subplots(len(classes), ncols, figsize=(1.9 * ncols, 2.1 * len(classes)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for (cls, defect), items in groups:
        row = classes.index(cls)
        for j, rec in enumerate(items):
            ax = axes[row, defects.index(defect) * per_group + j]
            image = np.asarray(load_image(rec.path).resize((size, size), resample=3))  # 3 = bicubic
            ax.imshow(image)
            mask = load_mask(rec, size).numpy()
            if mask.any():
                ax.contour(mask, levels=[0.5], colors=[MASK_COLOUR], linewidths=1.0)
            ax.set_title(f"{cls}\n{defect}" if j == 0 else "", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
