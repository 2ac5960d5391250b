"""Figures the notebooks show. Plotting only: no computing that a table depends on.

Every figure names methods, settings, datasets and metrics as the tables do (:func:`zsad.tables.method_label` and
its siblings), fits the book's column (about 8 inches at 100 dpi, so that 8-9 pt text stays readable), and lays
out its titles with matplotlib's constrained layout, which keeps titles off their neighbours.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from zsad.data import load_image, load_mask
from zsad.paper_tables import METRIC_NAMES
from zsad.tables import dataset_label, method_label, row_order, setting_label, weights_label

MASK_COLOUR = (1.0, 0.15, 0.1)
#: The anomaly-map colour map of the gallery (blue low, red high).
MAP_CMAP = "jet"
#: Width the figures aim at, in inches: the book's text column at 100 dpi.
BOOK_WIDTH = 8.0


def _first_per_group(records, per_group: int):
    groups: dict[tuple[str, str], list] = {}
    for r in records:
        if r.split == "test":
            groups.setdefault((r.cls, r.defect), []).append(r)
    return [(key, items[:per_group]) for key, items in sorted(groups.items())]


def _bare(ax) -> None:
    """No ticks and no frame, but (unlike ``axis("off")``) the y label stays visible."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def example_grid(records, *, per_group: int = 1, size: int = 160, title: str | None = None):
    """Test images of a dataset with their masks: one row per class (named on the left), its defect types across
    (``good`` first, the defect type above each image), the ground-truth mask outlined in red.

    Parameters
    ----------
    records : iterable of zsad.data.ImageRecord
        A dataset's records; only the test split is shown.
    per_group : int
        Images per (class, defect type).
    size : int
        Images are shown resized to ``size`` x ``size``, as every method sees them (aspect ratio not kept).
    title : str, optional
        The figure's title (e.g. the dataset's name).

    Returns
    -------
    matplotlib.figure.Figure
    """
    groups = _first_per_group(records, per_group)
    classes = sorted({cls for (cls, _), _ in groups})
    rows: dict[str, list] = {cls: [] for cls in classes}
    for (cls, defect), items in sorted(groups, key=lambda g: (g[0][0], g[0][1] != "good", g[0][1])):
        rows[cls] += [(defect, rec) for rec in items]
    ncols = max(len(v) for v in rows.values())
    panel = min(1.6, BOOK_WIDTH / ncols)
    fig, axes = plt.subplots(len(classes), ncols, figsize=(panel * ncols + 0.4, (panel + 0.35) * len(classes) + 0.4),
                             squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for row, cls in enumerate(classes):
        for j, (defect, rec) in enumerate(rows[cls]):
            ax = axes[row, j]
            ax.axis("on")
            _bare(ax)
            image = np.asarray(load_image(rec.path).resize((size, size), resample=3))  # 3 = bicubic
            ax.imshow(image)
            mask = load_mask(rec, size).numpy()
            if mask.any():
                ax.contour(mask, levels=[0.5], colors=[MASK_COLOUR], linewidths=1.0)
            ax.set_title(defect, fontsize=8)
            if j == 0:
                ax.set_ylabel(cls, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _title(fig, title: str | None, weights: str) -> None:
    text = " · ".join(t for t in (title, weights) if t)
    if text:
        fig.suptitle(text, fontsize=10, color="#b00000" if "RANDOM" in weights else "black")


def shots_plot(summary, metrics=("auroc", "pauroc"), title: str | None = None, weights: str = ""):
    """One panel per (dataset, metric): the metric against the number of shots.

    One line per method over its k-shot settings; the zero-shot value is a separate diamond (a different pipeline:
    no reference images), named apart in the legend where the papers name it apart (WinCLIP, WinCLIP+). Error bars
    are the std over few-shot seeds (the ``± std`` of the tables).

    Parameters
    ----------
    summary : pandas.DataFrame
        :func:`zsad.tables.summarise` output.
    metrics : sequence of str
        Metric keys, one column of panels each.
    title : str, optional
        Figure title, before the weights note.
    weights : str
        :func:`zsad.tables.weights_label` of the runs; "RANDOM WEIGHTS" turns the title red.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import seaborn as sns

    data = summary[summary.metric.isin(metrics)]
    datasets = sorted(data.dataset.unique(), key=lambda d: row_order(d, "", 0, ""))
    methods = sorted(data.method.unique(), key=lambda m: row_order("", m, 0, ""))
    width = min(3.9 * len(metrics), BOOK_WIDTH)
    fig, axes = plt.subplots(len(datasets), len(metrics), figsize=(width, 2.9 * len(datasets) + 0.8),
                             squeeze=False, sharey=True, layout="constrained")
    palette = dict(zip(methods, sns.color_palette("colorblind")))
    entries: dict[str, tuple] = {}  # legend name -> (sort key, handle)
    for i, dataset in enumerate(datasets):
        for j, metric in enumerate(metrics):
            ax = axes[i, j]
            for method in methods:
                rows = data[(data.dataset == dataset) & (data.metric == metric) & (data.method == method)]
                rows = rows.sort_values("shots")
                zero, k = rows[rows.shots == 0], rows[rows.shots > 0]
                if len(k):
                    line = ax.errorbar(k.shots, k["mean"], yerr=k["std"], marker="o", capsize=3,
                                       color=palette[method])
                    entries.setdefault(method_label(method, 1), (row_order("", method, 1, ""), line))
                if len(zero):
                    (dot,) = ax.plot(zero.shots, zero["mean"], marker="D", ls="none", color=palette[method])
                    # FADE's 0-shot point keeps its line's name; WinCLIP's is named apart from WinCLIP+.
                    entries.setdefault(method_label(method, 0), (row_order("", method, 0, ""), dot))
            ax.axhline(0.5, color="grey", lw=0.8, ls=":")
            ax.set_title(f"{dataset_label(dataset)}: {METRIC_NAMES.get(metric, metric)}", fontsize=10)
            ax.set(xlabel="shots", ylim=(0, 1.02), xticks=sorted(data.shots.unique()))
    # One legend for the figure, below the panels (inside a panel it would hide points), in the tables' order.
    legend = sorted(entries.items(), key=lambda item: item[1][0])
    fig.legend([h for _, (_, h) in legend], [name for name, _ in legend], loc="outside lower center",
               ncols=min(len(legend), 6), fontsize=8, frameon=False)
    _title(fig, title, weights)
    return fig


def variant_plot(summary, metric: str = "pauroc", title: str | None = None, weights: str = ""):
    """Horizontal bars of one metric per (method, setting), one panel per dataset, the std over seeds as error bars
    (for comparing variants of one setting).

    Rows are named as the tables name them; when every row is one method, the method goes into the title and the
    rows show only their settings. The panels share their rows (labelled once, on the left).

    Parameters
    ----------
    summary : pandas.DataFrame
        :func:`zsad.tables.summarise` output.
    metric : str
        The metric key to plot.
    title : str, optional
        Figure title, before the weights note (default: the method, when there is only one).
    weights : str
        :func:`zsad.tables.weights_label` of the runs; "RANDOM WEIGHTS" turns the title red.

    Returns
    -------
    matplotlib.figure.Figure
    """
    data = summary[summary.metric == metric]
    keys = sorted({(m, int(k), s) for m, k, s in zip(data.method, data.shots, data.setting)},
                  key=lambda key: row_order("", *key))
    datasets = sorted(data.dataset.unique(), key=lambda d: row_order(d, "", 0, ""))
    one_method = len({m for m, _, _ in keys}) == 1
    if one_method:
        labels = [setting_label(s) for _, _, s in keys]
        title = title or method_label(keys[0][0])
    else:
        labels = [f"{method_label(m, k)}: {setting_label(s)}" for m, k, s in keys]
    label_width = 0.075 * max(len(text) for text in labels) + 0.3  # inches of 8 pt text
    panel = max(2.2, min(3.6, (BOOK_WIDTH - label_width) / len(datasets)))
    fig, axes = plt.subplots(1, len(datasets), figsize=(label_width + panel * len(datasets),
                                                        0.3 * len(keys) + 1.5),
                             squeeze=False, sharex=True, sharey=True, layout="constrained")
    for ax, dataset in zip(axes[0], datasets):
        rows = data[data.dataset == dataset].set_index(["method", "shots", "setting"])
        at = [i for i, key in enumerate(keys) if key in rows.index]
        means = [rows.loc[keys[i], "mean"] for i in at]
        stds = [rows.loc[keys[i], "std"] for i in at]
        ax.barh(at, means, xerr=stds, color="#4c72b0", capsize=2)
        ax.set_yticks(range(len(keys)), labels, fontsize=8)
        ax.set_ylim(len(keys) - 0.5, -0.5)
        ax.axvline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_xlim(0, 1)
        ax.set_title(f"{dataset_label(dataset)}: {METRIC_NAMES.get(metric, metric)}", fontsize=10)
    _title(fig, title, weights)
    return fig


def gallery_picks(classes, labels, scores) -> list[tuple[str, int | None, int | None]]:
    """The gallery's best and worst detected image of each class.

    Best: the class's defective test image with the highest image score (the detector's most confident hit);
    worst: its defective test image with the lowest score (the clearest miss). Ties go to the earlier image.

    Parameters
    ----------
    classes : array-like of str
        Class of each test image.
    labels : array-like of int
        1 for a defective image, 0 for a defect-free one.
    scores : array-like of float
        Image scores (higher: more anomalous).

    Returns
    -------
    list of (str, int or None, int or None)
        ``(class, best index, worst index)`` per class in sorted order; ``None`` for a class without defective test
        images.
    """
    classes, labels = np.asarray(classes, dtype=str), np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    out = []
    for cls in sorted(set(classes.tolist())):
        defective = np.flatnonzero((classes == cls) & (labels == 1))
        if defective.size == 0:
            out.append((cls, None, None))
            continue
        # argmax / argmin return the first of equal values: ties go to the earlier image, deterministically.
        out.append((cls, int(defective[np.argmax(scores[defective])]), int(defective[np.argmin(scores[defective])])))
    return out


def gallery(run_dir, size: int = 160):
    """Per class, the best and the worst detected test image of one run (:func:`gallery_picks`), each as the image,
    its ground-truth mask and the method's anomaly map (the defect outlined in white), with the image score below.

    Every map of the figure is drawn with one colour scale, from the minimum to the maximum over all of the run's
    test maps (so classes and picks compare), shown by the colourbar. The title names the method and setting as
    the tables do, the dataset, and the weights (:func:`zsad.tables.weights_label`; red when RANDOM).

    Parameters
    ----------
    run_dir : path
        A finished run folder of a method that writes anomaly maps. Images are read from the dataset root
        recorded in its provenance (relative to the project root for the embedded data).
    size : int
        Display size of the images, in pixels.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        When the run's method scores images only (no anomaly maps to show).
    """
    import json
    from pathlib import Path

    from matplotlib.colors import Normalize

    from zsad.config import PROJECT_ROOT
    from zsad.results import read_predictions

    run_dir = Path(run_dir)
    pred = read_predictions(run_dir)
    prov = json.loads((run_dir / "provenance.json").read_text())
    params = prov["parameters"]
    if pred["maps"].ndim != 3 or min(pred["maps"].shape[1:]) <= 1:
        raise ValueError(f"{run_dir}: {params.get('method')} gives image scores only; the gallery shows anomaly maps")
    root = Path(params["root"])
    root = root if root.is_absolute() else PROJECT_ROOT / root
    maps = np.asarray(pred["maps"], dtype=np.float32)
    lo, hi = float(maps.min()), float(maps.max())
    norm = Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1.0)  # a constant map still gets a valid scale
    picks = gallery_picks(pred["classes"], pred["labels"], pred["scores"])
    # Columns: best (image, truth, map), a narrow gap, worst (image, truth, map).
    fig, axes = plt.subplots(len(picks), 7, figsize=(BOOK_WIDTH, 1.35 * len(picks) + 0.75), squeeze=False,
                             layout="constrained", gridspec_kw={"width_ratios": [1, 1, 1, 0.12, 1, 1, 1]})
    heads = ("best: image", "ground truth", "anomaly map", "", "worst: image", "ground truth", "anomaly map")
    image_artist = None
    for row, (cls, best, worst) in enumerate(picks):
        for start, index in ((0, best), (4, worst)):
            image_ax, truth_ax, map_ax = axes[row, start:start + 3]
            for ax in (image_ax, truth_ax, map_ax):
                _bare(ax)
            if index is None:
                image_ax.text(0.5, 0.5, "no defective\ntest image", ha="center", va="center", fontsize=8,
                              transform=image_ax.transAxes)
                continue
            image_ax.imshow(np.asarray(load_image(root / pred["paths"][index]).resize((size, size), resample=3)))
            image_ax.set_xlabel(f"score {pred['scores'][index]:.3f}", fontsize=8)
            mask = pred["masks"][index]
            truth_ax.imshow(mask, cmap="gray", vmin=0, vmax=1)
            image_artist = map_ax.imshow(maps[index], cmap=MAP_CMAP, norm=norm)
            if mask.any():
                map_ax.contour(mask, levels=[0.5], colors=["white"], linewidths=0.8)
        axes[row, 0].set_ylabel(cls, fontsize=9)
        axes[row, 3].axis("off")
    for ax, head in zip(axes[0], heads):
        if head:
            ax.set_title(head, fontsize=9)
    if image_artist is not None:
        bar = fig.colorbar(image_artist, ax=axes.ravel().tolist(), shrink=min(1.0, 2.6 / (1.35 * len(picks))),
                           pad=0.02)
        bar.set_label(f"map value, one scale: {lo:.3g} to {hi:.3g}", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    k = int(params.get("shots", 0) or 0)
    run_name = f"{method_label(params['method'], k)} {setting_label(params['setting'])}"
    _title(fig, f"{run_name} on {dataset_label(params['dataset'])}", weights_label({"run": prov}))
    return fig


def per_class_plot(metrics, metric: str = "auroc", title: str | None = None, weights: str = ""):
    """A heat map of one metric per class (rows, by dataset) and per method and setting (columns, named and ordered
    as the tables are): each cell the mean over seeds, written in it, on one colour scale from 0 to 1.

    Parameters
    ----------
    metrics : pandas.DataFrame
        Tidy metrics (``metrics.csv`` rows of one or more run folders); the class-mean rows are left out.
    metric : str
        The metric key to show.
    title : str, optional
        Figure title, before the weights note.
    weights : str
        :func:`zsad.tables.weights_label` of the runs; "RANDOM WEIGHTS" turns the title red.

    Returns
    -------
    matplotlib.figure.Figure
    """
    rows = metrics[(metrics.metric == metric) & (metrics["class"] != "mean")]
    if rows.empty:
        raise ValueError(f"no per-class {metric} values to plot")
    cells = rows.groupby(["dataset", "class", "method", "shots", "setting"])["value"].mean()
    columns = sorted({key[2:] for key in cells.index}, key=lambda key: row_order("", *key))
    classes = sorted({key[:2] for key in cells.index}, key=lambda key: (row_order(key[0], "", 0, ""), key[1]))
    grid = np.full((len(classes), len(columns)), np.nan)
    for (dataset, cls, method, shots, setting), value in cells.items():
        grid[classes.index((dataset, cls)), columns.index((method, shots, setting))] = value
    width = min(BOOK_WIDTH, 2.2 + 0.62 * len(columns))
    fig, ax = plt.subplots(figsize=(width, 0.36 * len(classes) + 2.6), layout="constrained")
    image = ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    for (i, j), value in np.ndenumerate(grid):
        if np.isfinite(value):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(columns)), [f"{method_label(m, k)}, {setting_label(s)}" for m, k, s in columns],
                  rotation=50, ha="right", rotation_mode="anchor", fontsize=7)
    ax.set_yticks(range(len(classes)), [f"{dataset_label(d)}: {c}" for d, c in classes], fontsize=8)
    bar = fig.colorbar(image, ax=ax, shrink=0.9, pad=0.02)
    bar.set_label(f"{METRIC_NAMES.get(metric, metric)} (mean over seeds; one scale, 0 to 1)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    _title(fig, title or f"{METRIC_NAMES.get(metric, metric)} per class", weights)
    return fig
