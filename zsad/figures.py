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


def _title(fig, title: str | None, weights: str) -> None:
    text = " · ".join(t for t in (title, weights) if t)
    if text:
        fig.suptitle(text, fontsize=10, color="#b00000" if "RANDOM" in weights else "black")


def shots_plot(summary, metrics=("auroc", "pauroc"), title: str | None = None, weights: str = ""):
    """One panel per (dataset, metric): metric against the number of shots, one line per method over the k-shot
    settings, the zero-shot value a separate marker (a different pipeline: no reference images), error bars = std
    over few-shot seeds (the ``± std`` of the tables). ``summary`` is :func:`zsad.tables.summarise` output;
    ``weights`` (:func:`zsad.tables.weights_label`) goes into the title."""
    import seaborn as sns

    data = summary[summary.metric.isin(metrics)]
    datasets = sorted(data.dataset.unique())
    fig, axes = plt.subplots(len(datasets), len(metrics), figsize=(4.2 * len(metrics), 3.2 * len(datasets)),
                             squeeze=False, sharey=True)
    palette = dict(zip(sorted(data.method.unique()), sns.color_palette("colorblind")))
    for i, dataset in enumerate(datasets):
        for j, metric in enumerate(metrics):
            ax = axes[i, j]
            for method, rows in data[(data.dataset == dataset) & (data.metric == metric)].groupby("method"):
                rows = rows.sort_values("shots")
                zero, k = rows[rows.shots == 0], rows[rows.shots > 0]
                ax.errorbar(k.shots, k["mean"], yerr=k["std"], marker="o", capsize=3, label=method,
                            color=palette[method])
                if len(zero):
                    ax.plot(zero.shots, zero["mean"], marker="D", ls="none", color=palette[method],
                            label=None if len(k) else method)
            ax.axhline(0.5, color="grey", lw=0.8, ls=":")
            ax.set(title=f"{dataset}: {metric}", xlabel="shots", ylim=(0, 1.02), xticks=sorted(data.shots.unique()))
    axes[0, -1].legend(fontsize=8, loc="lower right")
    _title(fig, title, weights)
    fig.tight_layout()
    return fig


def variant_plot(summary, metric: str = "pauroc", title: str | None = None, weights: str = ""):
    """Horizontal bars of one metric per (dataset, method, setting) row of :func:`zsad.tables.summarise` output,
    with the std over seeds as error bars (for comparing variants of one setting)."""
    data = summary[summary.metric == metric].sort_values(["dataset", "method", "shots", "setting"])
    datasets = list(dict.fromkeys(data.dataset))
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.8 * len(datasets), 0.35 * len(data) / len(datasets) + 1.4),
                             squeeze=False, sharex=True)
    for ax, dataset in zip(axes[0], datasets):
        rows = data[data.dataset == dataset]
        labels = [f"{m}: {s}" for m, s in zip(rows.method, rows.setting)]
        ax.barh(range(len(rows)), rows["mean"], xerr=rows["std"], color="#4c72b0", capsize=2)
        ax.set_yticks(range(len(rows)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.axvline(0.5, color="grey", lw=0.8, ls=":")
        ax.set(xlim=(0, 1), title=f"{dataset}: {metric}")
    _title(fig, title, weights)
    fig.tight_layout()
    return fig


def gallery(run_dir, n: int = 2, size: int = 160):
    """Best and worst test images of one run folder: the ``n`` anomalous images scored highest and lowest, and the
    ``n`` normal images scored highest (false alarms), each with its anomaly map overlaid and the defect outlined.

    Images are read from the dataset root recorded in the run's provenance (relative to the project root for the
    embedded data).
    """
    import json
    from pathlib import Path

    import numpy as np

    from zsad.config import PROJECT_ROOT
    from zsad.results import read_predictions

    run_dir = Path(run_dir)
    pred = read_predictions(run_dir)
    prov = json.loads((run_dir / "provenance.json").read_text())
    params = prov["parameters"]
    root = Path(params["root"])
    root = root if root.is_absolute() else PROJECT_ROOT / root
    labels, scores = pred["labels"], pred["scores"]
    anomalous, normal = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    order_a = anomalous[np.argsort(-scores[anomalous], kind="stable")]
    order_n = normal[np.argsort(-scores[normal], kind="stable")]
    picks = [("top anomalous", i) for i in order_a[:n]] + [("lowest anomalous", i) for i in order_a[::-1][:n]] + \
        [("top normal", i) for i in order_n[:n]]
    fig, axes = plt.subplots(1, len(picks), figsize=(1.9 * len(picks), 2.4), squeeze=False)
    vmax = float(np.max(pred["maps"])) or 1.0
    for ax, (what, i) in zip(axes[0], picks):
        image = np.asarray(load_image(root / pred["paths"][i]).resize((size, size), resample=3))
        heat = np.asarray(pred["maps"][i], dtype=np.float32)
        ax.imshow(image)
        if heat.shape[-1] > 1:  # image-level methods store one value per image: nothing to overlay
            ax.imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=vmax, extent=(0, size, size, 0))
            mask = pred["masks"][i]
            if mask.any():
                ax.contour(np.linspace(0, size, mask.shape[1]), np.linspace(0, size, mask.shape[0]), mask,
                           levels=[0.5], colors=["white"], linewidths=0.8)
        ax.set_title(f"{what}\n{pred['classes'][i]} {scores[i]:.3f}", fontsize=7)
        ax.axis("off")
    weights = prov.get("weights") or {}
    label = "RANDOM WEIGHTS" if weights.get("random_weights") else weights.get("checkpoint_sha256", "")[:12]
    fig.suptitle(f"{params['method']} {params['setting']} on {params['dataset']} · {label}", fontsize=9,
                 color="#b00000" if weights.get("random_weights") else "black")
    fig.tight_layout()
    return fig
