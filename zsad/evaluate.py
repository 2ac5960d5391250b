"""From per-image predictions to the tidy metrics table of a run folder (per class, plus the mean over classes)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from zsad import metrics
from zsad.results import METRIC_COLUMNS, read_predictions

MEAN = "mean"
_RUN_KEYS = ("dataset", "method", "setting", "shots", "seed")


def _ci_rows(point: dict, ci: dict) -> list[tuple[str, float, float, float]]:
    return [(name, value, *ci.get(name, (np.nan, np.nan))) for name, value in point.items()]


def class_metrics(labels, scores, masks=None, maps=None, *, n_boot: int = 200, seed: int = 0, histograms=None):
    """Compute the metrics of one class, with bootstrap intervals.

    Pixel metrics are computed when the class has at least one defect pixel; intervals are percentile bootstrap
    intervals over the class's images.

    Parameters
    ----------
    labels : array_like
        (N,) image labels, 1 = anomalous.
    scores : array_like
        (N,) image anomaly scores.
    masks : array_like, optional
        (N, H, W) ground-truth defect masks.
    maps : array_like, optional
        (N, H, W) anomaly maps; needed when ``masks`` holds a defect pixel.
    n_boot : int, default 200
        Bootstrap replicates; 0: no intervals (NaN).
    seed : int, default 0
        Seed of the bootstrap.
    histograms : zsad.metrics.PixelHistograms, optional
        The class's :func:`zsad.metrics.pixel_histograms` when already computed.

    Returns
    -------
    list of tuple
        ``[(metric, value, ci_low, ci_high), ...]``: the image metrics, then the pixel metrics if any.

    Raises
    ------
    ValueError
        As the functions of :mod:`zsad.metrics` (e.g. :class:`zsad.metrics.OneClassError` for a one-label class).
    """
    point = metrics.image_metrics(labels, scores)
    ci = metrics.image_metrics_ci(labels, scores, n_boot=n_boot, seed=seed) if n_boot else {}
    rows = _ci_rows(point, ci)
    if masks is not None and np.any(masks):
        point = metrics.pixel_metrics(masks, maps)
        ci = metrics.pixel_metrics_ci(masks, maps, n_boot=n_boot, seed=seed, histograms=histograms) if n_boot else {}
        rows += _ci_rows(point, ci)
    return rows


def check_n_boot(n_boot) -> int:
    """Check a number of bootstrap replicates.

    Parameters
    ----------
    n_boot : int
        Replicates; 0: no intervals.

    Returns
    -------
    int
        ``n_boot`` as an int >= 0.

    Raises
    ------
    ValueError
        When ``n_boot`` is not an integer (bools excluded) >= 0.
    """
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ValueError(f"n_boot (--n-boot) must be an integer >= 0 (0: no intervals), got {n_boot!r}")
    return int(n_boot)


def metrics_table(pred: dict, *, dataset: str, method: str, setting: str, shots: int, seed: int,
                  n_boot: int = 200, boot_seed: int = 0) -> pd.DataFrame:
    """Build the tidy metrics table for predictions of one or more classes.

    The ``mean`` rows are the unweighted means over classes (as every paper reports) of the metrics every class
    has, with intervals too: images resampled over all classes at once, every class's metric recomputed and
    averaged (pixel intervals of the mean only when every class has pixel metrics).

    Parameters
    ----------
    pred : dict
        ``classes``, ``labels``, ``scores`` (N,) and optionally ``masks``/``maps`` (N, H, W).
    dataset : str
        Dataset name of the rows.
    method : str
        Method name of the rows.
    setting : str
        Setting of the rows (the study writes e.g. ``"0-shot"``, ``"4-shot"``, possibly with a variant).
    shots : int
        Number of reference images.
    seed : int
        The run's seed (recorded in the rows).
    n_boot : int, default 200
        Bootstrap replicates; 0: no intervals (NaN).
    boot_seed : int, default 0
        Seed of the bootstrap.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`zsad.results.METRIC_COLUMNS`; one row per class and metric, then the ``mean`` rows.

    Raises
    ------
    ValueError
        When ``n_boot`` is invalid, or as the functions of :mod:`zsad.metrics`.
    """
    check_n_boot(n_boot)
    classes = np.asarray(pred["classes"], dtype=str)
    labels, scores = np.asarray(pred["labels"]), np.asarray(pred["scores"])
    masks, maps = pred.get("masks"), pred.get("maps")
    key = (dataset, method, setting, int(shots), int(seed))
    rows, per_class, hists = [], {}, {}
    for cls in sorted(set(classes)):
        idx = np.flatnonzero(classes == cls)
        cls_masks, cls_maps = (None, None) if masks is None else (masks[idx], maps[idx])
        if n_boot and cls_masks is not None and np.any(cls_masks):
            hists[cls] = metrics.pixel_histograms(cls_masks, cls_maps)  # shared by the class and the mean interval
        cls_rows = class_metrics(labels[idx], scores[idx], cls_masks, cls_maps, n_boot=n_boot, seed=boot_seed,
                                 histograms=hists.get(cls))
        per_class[cls] = {name: value for name, value, _, _ in cls_rows}
        rows += [(*key[:1], cls, *key[1:], *r) for r in cls_rows]
    shared = set.intersection(*(set(m) for m in per_class.values()))
    mean = metrics.mean_over_classes({c: {k: v for k, v in m.items() if k in shared} for c, m in per_class.items()})
    mean_ci = _mean_image_ci(classes, labels, scores, n_boot, boot_seed) if n_boot else {}
    if n_boot and set(metrics.PIXEL_METRICS) <= shared:  # every class has pixel metrics
        mean_ci.update(metrics.class_mean_pixel_metrics_ci(hists, n_boot=n_boot, seed=boot_seed))
    rows += [(dataset, MEAN, *key[1:], name, value, *mean_ci.get(name, (np.nan, np.nan)))
             for name, value in mean.items()]
    return pd.DataFrame(rows, columns=METRIC_COLUMNS)


def _class_mean_metric(all_classes):
    def mean_of_classes(classes, labels, scores) -> dict[str, float]:
        per_class = {}
        for cls in all_classes:
            idx = classes == cls
            if not idx.any():  # a resample without this class: redrawn, like a one-label resample
                raise metrics.OneClassError(f"class {cls!r} absent from the resample")
            per_class[cls] = metrics.image_metrics(labels[idx], scores[idx])
        return metrics.mean_over_classes(per_class)
    return mean_of_classes


def _mean_image_ci(classes, labels, scores, n_boot: int, seed: int) -> dict:
    """Intervals of the class-mean image metrics: images resampled over all classes at once, every class's
    metric recomputed and averaged (a resample in which a class lacks a label is redrawn). The pixel metrics of the
    mean row get theirs from :func:`zsad.metrics.class_mean_pixel_metrics_ci` (per-image histograms, so cheap)."""
    return metrics.bootstrap_ci(_class_mean_metric(sorted(set(classes))), classes, labels, scores,
                                n_boot=n_boot, seed=seed)


def evaluate_predictions(path, *, n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """Recompute the metrics table from a ``predictions.npz`` (or a run folder holding one).

    The run's dataset, method, setting, shots and seed are read from the ``provenance.json`` beside the file when
    there is one (``"unknown"`` / 0 otherwise), so the result can be compared row by row with the run's own
    ``metrics.csv``.

    Parameters
    ----------
    path : str or os.PathLike
        A ``predictions.npz`` or a run folder holding one.
    n_boot : int, default 200
        Bootstrap replicates; 0: no intervals.
    seed : int, default 0
        Seed of the bootstrap.

    Returns
    -------
    pandas.DataFrame
        As :func:`metrics_table`.

    Raises
    ------
    ValueError
        When ``n_boot`` is invalid, or as :func:`metrics_table`.
    """
    check_n_boot(n_boot)
    path = Path(path)
    pred = read_predictions(path)
    prov_file = (path if path.is_dir() else path.parent) / "provenance.json"
    params = json.loads(prov_file.read_text()).get("parameters", {}) if prov_file.is_file() else {}
    key = {k: params.get(k, "unknown" if k in ("dataset", "method", "setting") else 0) for k in _RUN_KEYS}
    return metrics_table(pred, **key, n_boot=n_boot, boot_seed=seed)
