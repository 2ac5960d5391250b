"""Anomaly-detection metrics shared by every method in zsad.

Conventions
-----------
* Every metric is a *score*: higher is better, the value lies in [0, 1], and it is
  returned as a plain Python ``float``.
* ``labels`` / ``masks`` mark the anomalous class: 1 (or ``True``) = anomalous image or
  defect pixel, 0 = normal.  Boolean arrays and numeric arrays holding only 0 and 1 are
  accepted; anything else (e.g. a mask saved as 0/255) is a ``ValueError``.
* ``scores`` / ``maps`` are anomaly scores: higher = more anomalous.  Any real dtype is
  accepted; NaN and inf are rejected.  Scores are compared exactly in their own dtype
  (no conversion to float64, which could merge or split ties).
* Ties are handled as in scikit-learn: the curves have one point per *distinct* score,
  so tied samples enter the positive set together.
* Metrics are computed per class; :func:`mean_over_classes` gives the unweighted mean
  over classes that the FADE, WinCLIP and APRIL-GAN papers report.

Definitions (the book's chapter book/metrics.md; FADE's ``evaluation/`` code, github.com/BMVC-FADE/BMVC-FADE)
--------------------------------------------------------------------------------------------------------------
``auroc``
    Area under the ROC curve (= ``sklearn.metrics.roc_auc_score``).
``aupr``
    Trapezoidal area under the precision-recall curve: the points of
    ``sklearn.metrics.precision_recall_curve`` (including its final point
    precision 1, recall 0) integrated with ``sklearn.metrics.auc(recall, precision)``;
    this is what FADE and spot-diff report as "AUPR".
``ap``
    Step-wise average precision ``sum_k (R_k - R_{k-1}) P_k``
    (= ``sklearn.metrics.average_precision_score``; APRIL-GAN/AnomalyCLIP's "AP").
``f1_max``
    ``max 2PR / (P + R)`` over the precision-recall curve points (0 where P + R = 0).
``pauroc``, ``pf1_max``
    The same on all pixels of all images of a class (normal images included).
``pro``
    Exact area under the per-region-overlap curve up to a false-positive rate of 0.3,
    divided by 0.3, as in the official MVTec AD evaluation that FADE copies:
    connected components of every ground-truth mask with 8-connectivity; every
    normal pixel of every image counts ``1/N_normal`` towards the FPR; every pixel of
    region ``r`` counts ``1/(|r| N_regions)`` towards the PRO; points at each distinct
    score (the last point of each run of tied scores), clipped to <= 1, with (0, 0)
    prepended and (1, 1) appended; trapezoid from FPR 0 to 0.3 with the PRO value at
    0.3 linearly interpolated; divided by 0.3.  (The official code stores the FPR in
    float32; zsad keeps float64, a difference of order 1e-7.)

Implementation
--------------
All curve metrics are evaluated from one small *threshold table*: for each distinct
score in descending order, the number of positive and negative samples with exactly
that score and the summed PRO weight of those positives.  Consecutive rows without
positives may be merged without changing any metric (recall and PRO are constant
across them), which keeps the table at most ``2 K + 1`` rows for ``K`` distinct
positive scores.  ``uint8`` scores are counted with ``np.bincount`` (O(pixels), no
sort); other dtypes sort one copy of all scores (in their own dtype) and locate the
distinct positive scores in it with ``np.searchsorted`` (negatives below a score =
all below minus positives below).

Bootstrap
---------
:func:`bootstrap_ci` resamples *images* with replacement from
``numpy.random.default_rng(seed)`` and reports the percentile interval.  A resample
that holds only one class (the metric is undefined) is **redrawn** from the same
random stream, so every interval rests on exactly ``n_boot`` replicates, is
deterministic for a seed, and is conditional on both classes being present.
:func:`pixel_metrics_ci` follows the same protocol but evaluates a resample as a
weighted sum of per-image histograms (exact for uint8 maps; float maps are quantised
for the interval only).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = [
    "OneClassError",
    "auroc",
    "aupr",
    "average_precision",
    "f1_max",
    "pro_auc",
    "image_metrics",
    "pixel_metrics",
    "evaluate_class",
    "mean_over_classes",
    "bootstrap_ci",
    "image_metrics_ci",
    "pixel_metrics_ci",
    "PixelHistograms",
    "pixel_histograms",
    "class_mean_pixel_metrics_ci",
]

IMAGE_METRICS = ("auroc", "aupr", "ap", "f1_max")
PIXEL_METRICS = ("pauroc", "pf1_max", "pro")

_STRUCTURE_8 = np.ones((3, 3), dtype=bool)  # 8-connectivity, as the MVTec AD evaluation
_CHUNK = 1 << 22  # elements per chunk when counting uint8 values (bounds the intp temp)
_MAX_DRAWS_PER_REPLICATE = 100  # bootstrap gives up after this many draws per replicate


class OneClassError(ValueError):
    """Only one class is present, so the metric (AUROC, AP, PRO, ...) is undefined.

    A subclass of ``ValueError``; :func:`bootstrap_ci` redraws resamples that raise it.
    """


# --------------------------------------------------------------------------- validation


def _as_binary(y, name: str) -> np.ndarray:
    """Return ``y`` as a C-contiguous bool array or raise ``ValueError``."""
    y = np.asarray(y)
    if y.size == 0:
        raise ValueError(f"{name} is empty")
    if y.dtype == bool:
        return np.ascontiguousarray(y)
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise ValueError(f"{name} must be boolean or hold only 0 and 1; got dtype {y.dtype}")
    bad = (y != 0) & (y != 1)
    if bad.any():
        found = np.unique(y[bad])[:5].tolist()
        raise ValueError(
            f"{name} must be boolean or hold only 0 and 1; found other values {found}"
            + (" (binarise masks first, e.g. masks > 0)" if name == "masks" else "")
        )
    return np.ascontiguousarray(y != 0)


def _as_scores(s, name: str) -> np.ndarray:
    """Return ``s`` as a C-contiguous real array with finite values or raise."""
    s = np.asarray(s)
    if s.size == 0:
        raise ValueError(f"{name} is empty")
    if s.dtype == bool:
        s = s.view(np.uint8)
    if not (np.issubdtype(s.dtype, np.integer) or np.issubdtype(s.dtype, np.floating)):
        raise ValueError(f"{name} must be real numbers; got dtype {s.dtype}")
    s = np.ascontiguousarray(s)
    if np.issubdtype(s.dtype, np.floating):
        # min/max propagate NaN and expose +-inf without a full-size boolean temporary
        lo, hi = s.min(), s.max()
        if not (np.isfinite(lo) and np.isfinite(hi)):
            n_nan = int(np.isnan(s).sum())
            n_inf = int(np.isinf(s).sum())
            raise ValueError(f"{name} must be finite; found {n_nan} NaN and {n_inf} inf values")
    return s


def _check_pair(y, s, y_name: str, s_name: str) -> tuple[np.ndarray, np.ndarray]:
    y = _as_binary(y, y_name)
    s = _as_scores(s, s_name)
    if y.shape != s.shape:
        raise ValueError(f"{y_name} and {s_name} differ in shape: {y.shape} vs {s.shape}")
    return y, s


def _check_pixels(masks, maps) -> tuple[np.ndarray, np.ndarray]:
    masks, maps = _check_pair(masks, maps, "masks", "maps")
    if masks.ndim != 3:
        raise ValueError(f"masks and maps must have shape (N, H, W); got {masks.shape}")
    return masks, maps


def _need_both_classes(n_pos: int, n_neg: int, what: str) -> None:
    if n_pos == 0 or n_neg == 0:
        present = "anomalous" if n_pos else "normal"
        raise OneClassError(
            f"only {present} {what} present ({n_pos} anomalous, {n_neg} normal): "
            "AUROC, AP, F1 and PRO are undefined with one class"
        )


# ----------------------------------------------------------------------- threshold table


def _bincount_u8(a: np.ndarray) -> np.ndarray:
    """Histogram (256,) of a uint8 array, chunked so the intp copy stays small."""
    flat = a.reshape(-1)
    hist = np.zeros(256, dtype=np.int64)
    for start in range(0, flat.size, _CHUNK):
        hist += np.bincount(flat[start:start + _CHUNK], minlength=256)
    return hist


def _table_from_hist(pos_hist, neg_hist, w_hist=None):
    """Descending threshold table from per-value counts indexed by ascending value."""
    pos_hist = np.asarray(pos_hist)[::-1]
    neg_hist = np.asarray(neg_hist)[::-1]
    keep = (pos_hist + neg_hist) > 0
    w = None if w_hist is None else np.asarray(w_hist, dtype=np.float64)[::-1][keep]
    return pos_hist[keep].astype(np.int64), neg_hist[keep].astype(np.int64), w


def _table(y: np.ndarray, s: np.ndarray, pos_weight: np.ndarray | None = None):
    """Threshold table of validated arrays ``y`` (bool) and ``s`` (same shape).

    Returns ``(n_pos, n_neg, w)``: int64 counts per row and, if ``pos_weight`` (one
    value per True entry of ``y`` in C order) is given, the summed weight per row.
    Rows are in descending score order and never empty.
    """
    y = y.reshape(-1)
    s = s.reshape(-1)
    pos = s[y]
    n_pos_total = pos.size
    n_neg_total = s.size - n_pos_total
    _need_both_classes(n_pos_total, n_neg_total, "samples")

    if s.dtype == np.uint8:  # counting: O(n), no sort
        pos_hist = np.bincount(pos, minlength=256)
        neg_hist = _bincount_u8(s) - pos_hist
        w_hist = None
        if pos_weight is not None:
            w_hist = np.bincount(pos, weights=pos_weight, minlength=256)
        return _table_from_hist(pos_hist, neg_hist, w_hist)

    # Sort a copy of all scores (cheaper than extracting the negatives with a mostly-True
    # boolean index) and count negatives as "all minus positives".
    s_sorted = np.sort(s)
    order = np.argsort(pos, kind="stable")
    pos = pos[order]
    starts = np.flatnonzero(np.concatenate(([True], pos[1:] != pos[:-1])))
    values = pos[starts]  # distinct positive scores, ascending
    counts = np.diff(np.append(starts, pos.size))
    # negatives strictly below / at or below each distinct positive score
    lt = np.searchsorted(s_sorted, values, side="left") - starts
    le = np.searchsorted(s_sorted, values, side="right") - (starts + counts)
    del s_sorted
    gaps = np.append(lt, n_neg_total) - np.concatenate(([0], le))  # negatives strictly between
    k = values.size
    n_pos = np.zeros(2 * k + 1, dtype=np.int64)
    n_neg = np.empty(2 * k + 1, dtype=np.int64)
    n_pos[1::2] = counts
    n_neg[0::2] = gaps
    n_neg[1::2] = le - lt
    w = None
    if pos_weight is not None:
        w = np.zeros(2 * k + 1, dtype=np.float64)
        w[1::2] = np.add.reduceat(np.asarray(pos_weight, dtype=np.float64)[order], starts)
        w = w[::-1]
    n_pos, n_neg = n_pos[::-1], n_neg[::-1]
    keep = (n_pos + n_neg) > 0
    return n_pos[keep], n_neg[keep], (None if w is None else w[keep])


# ------------------------------------------------------------------ metrics from a table


def _trapezoid_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under ``y(x)`` for ``x`` in [0, limit], ``x`` non-decreasing.

    The value at ``limit`` is interpolated linearly between the last point with
    ``x < limit`` and the first with ``x > limit`` (as the MVTec AD evaluation does).
    """
    ins = int(np.searchsorted(x, limit, side="right"))  # points with x <= limit
    xs, ys = x[:ins], y[:ins]
    area = float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]))) / 2.0
    if ins < x.size and x[ins - 1] != limit:
        x0, x1, y0, y1 = x[ins - 1], x[ins], y[ins - 1], y[ins]
        y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        area += float((limit - x0) * (y0 + y_lim)) / 2.0
    return area


def _table_metrics(n_pos, n_neg, w=None, n_regions=None, pro_limit=0.3, which=None):
    """All curve metrics of one threshold table, as a dict of floats.

    ``which`` restricts the computation to a subset of
    {"auroc", "aupr", "ap", "f1_max", "pro"}; "pro" needs ``w`` and ``n_regions``.
    """
    which = set(which or ("auroc", "aupr", "ap", "f1_max"))
    tp = np.cumsum(n_pos)
    fp = np.cumsum(n_neg)
    p_total, n_total = int(tp[-1]), int(fp[-1])
    out = {}
    if "auroc" in which:
        # trapezoid of the ROC curve: sum_k dFP_k (TP_{k-1} + TP_k) / (2 P N)
        heights = (2 * tp - n_pos).astype(np.float64)
        out["auroc"] = float(np.dot(n_neg.astype(np.float64), heights) / (2.0 * p_total * n_total))
    if which & {"aupr", "ap", "f1_max"}:
        precision = tp / (tp + fp)  # rows are never empty, so tp + fp > 0
        recall = tp / p_total
        if "ap" in which:
            out["ap"] = float(np.sum(np.diff(recall, prepend=0.0) * precision))
        if "aupr" in which:
            prev_p = np.concatenate(([1.0], precision[:-1]))  # sklearn's final point (R=0, P=1)
            prev_r = np.concatenate(([0.0], recall[:-1]))
            out["aupr"] = float(np.sum((recall - prev_r) * (precision + prev_p)) / 2.0)
        if "f1_max" in which:
            denom = precision + recall
            f1 = np.zeros_like(denom)
            np.divide(2.0 * precision * recall, denom, out=f1, where=denom > 0)
            out["f1_max"] = float(f1.max())
    if "pro" in which:
        fpr = np.minimum(fp / n_total, 1.0)
        pro = np.minimum(np.cumsum(w) / n_regions, 1.0)
        x = np.concatenate(([0.0], fpr, [1.0]))
        y = np.concatenate(([0.0], pro, [1.0]))
        # min: rounding in the cumulative sums can otherwise give 1 + 1e-16
        out["pro"] = min(_trapezoid_to(x, y, pro_limit) / pro_limit, 1.0)
    return out


# ------------------------------------------------------------------------ public: basic


def auroc(labels, scores) -> float:
    """Area under the ROC curve (equals ``sklearn.metrics.roc_auc_score``).

    Parameters
    ----------
    labels : array-like of shape (n_samples,) or any shape
        Ground truth, 1/True = anomalous.  Pixel masks of shape (N, H, W) are fine.
    scores : array-like of the same shape as ``labels``
        Anomaly scores, higher = more anomalous.  ``uint8`` is counted (fast path).

    Returns
    -------
    float
        AUROC in [0, 1]; 0.5 for constant scores.

    Raises
    ------
    OneClassError
        If only one class is present (AUROC is undefined).
    ValueError
        On empty input, shape mismatch, non-finite scores or labels not in {0, 1}.

    Examples
    --------
    >>> auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    """
    y, s = _check_pair(labels, scores, "labels", "scores")
    return _table_metrics(*_table(y, s)[:2], which=("auroc",))["auroc"]


def aupr(labels, scores) -> float:
    """Trapezoidal area under the precision-recall curve (FADE's "AUPR").

    Equals ``sklearn.metrics.auc(recall, precision)`` on the output of
    ``sklearn.metrics.precision_recall_curve``.

    Parameters
    ----------
    labels : array-like of shape (n_samples,) or any shape
        Ground truth, 1/True = anomalous.
    scores : array-like of the same shape as ``labels``
        Anomaly scores, higher = more anomalous.

    Returns
    -------
    float
        AUPR in [0, 1].

    Raises
    ------
    OneClassError
        If only one class is present.
    ValueError
        On empty input, shape mismatch, non-finite scores or labels not in {0, 1}.

    Examples
    --------
    >>> round(aupr([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]), 6)
    0.791667
    """
    y, s = _check_pair(labels, scores, "labels", "scores")
    return _table_metrics(*_table(y, s)[:2], which=("aupr",))["aupr"]


def average_precision(labels, scores) -> float:
    """Step-wise average precision (equals ``sklearn.metrics.average_precision_score``).

    ``AP = sum_k (R_k - R_{k-1}) P_k`` over distinct thresholds in descending order.

    Parameters
    ----------
    labels : array-like of shape (n_samples,) or any shape
        Ground truth, 1/True = anomalous.
    scores : array-like of the same shape as ``labels``
        Anomaly scores, higher = more anomalous.

    Returns
    -------
    float
        AP in [0, 1].

    Raises
    ------
    OneClassError
        If only one class is present.
    ValueError
        On empty input, shape mismatch, non-finite scores or labels not in {0, 1}.

    Examples
    --------
    >>> round(average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]), 6)
    0.833333
    """
    y, s = _check_pair(labels, scores, "labels", "scores")
    return _table_metrics(*_table(y, s)[:2], which=("ap",))["ap"]


def f1_max(labels, scores) -> float:
    """Maximum F1 over the points of the precision-recall curve.

    ``max 2 P R / (P + R)``, with 0 where ``P + R = 0``.

    Parameters
    ----------
    labels : array-like of shape (n_samples,) or any shape
        Ground truth, 1/True = anomalous.
    scores : array-like of the same shape as ``labels``
        Anomaly scores, higher = more anomalous.

    Returns
    -------
    float
        F1-max in [0, 1].

    Raises
    ------
    OneClassError
        If only one class is present.
    ValueError
        On empty input, shape mismatch, non-finite scores or labels not in {0, 1}.

    Examples
    --------
    >>> round(f1_max([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]), 6)
    0.8
    """
    y, s = _check_pair(labels, scores, "labels", "scores")
    return _table_metrics(*_table(y, s)[:2], which=("f1_max",))["f1_max"]


def _region_weights(masks: np.ndarray):
    """8-connected components of each mask.

    Returns
    -------
    inv_size : ndarray of shape (n_defect_pixels,)
        ``1 / |r|`` for every True pixel of ``masks`` in C order (the order of
        ``maps[masks]``).
    n_regions : ndarray of shape (N,)
        Number of regions per image.
    """
    n = masks.shape[0]
    n_regions = np.zeros(n, dtype=np.int64)
    parts = []
    has_defect = masks.reshape(n, -1).any(axis=1)
    for i in np.flatnonzero(has_defect):
        lab, k = ndimage.label(masks[i], structure=_STRUCTURE_8)
        n_regions[i] = k
        inv = 1.0 / np.bincount(lab.reshape(-1)).astype(np.float64)
        parts.append(inv[lab[masks[i]]])
    inv_size = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)
    return inv_size, n_regions


def _check_limit(pro_limit) -> float:
    pro_limit = float(pro_limit)
    if not 0.0 < pro_limit <= 1.0:
        raise ValueError(f"pro_limit must be in (0, 1]; got {pro_limit}")
    return pro_limit


def pro_auc(masks, maps, *, limit: float = 0.3) -> float:
    """Normalised area under the per-region-overlap curve up to FPR ``limit`` (AUPRO).

    Exact MVTec AD definition; see the module docstring.

    Parameters
    ----------
    masks : array-like of shape (N, H, W)
        Ground-truth defect masks (bool or 0/1).  Regions are 8-connected components.
    maps : array-like of shape (N, H, W)
        Anomaly maps; ``uint8`` maps are counted (fast path), other dtypes sorted.
    limit : float, default 0.3
        Integration limit on the false-positive rate; the area is divided by it.

    Returns
    -------
    float
        AUPRO in [0, 1].

    Raises
    ------
    OneClassError
        If there is no defect pixel or no normal pixel.
    ValueError
        On shape mismatch, bad masks, non-finite maps or ``limit`` outside (0, 1].
    """
    masks, maps = _check_pixels(masks, maps)
    return _pixel_metrics(masks, maps, _check_limit(limit), ("pro",))["pro"]


# ---------------------------------------------------------------------- public: bundles


def image_metrics(labels, scores) -> dict[str, float]:
    """Image-level metrics of one class.

    Parameters
    ----------
    labels : array-like of shape (n_images,)
        1/True = anomalous image.
    scores : array-like of shape (n_images,)
        Image anomaly scores.

    Returns
    -------
    dict
        ``{"auroc", "aupr", "ap", "f1_max"}`` -> float (definitions in the module
        docstring).

    Raises
    ------
    OneClassError
        If all images have the same label.
    ValueError
        On empty input, length mismatch, non-1-D input, NaN/inf scores or labels not
        in {0, 1}.

    Examples
    --------
    >>> m = image_metrics([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    >>> m["auroc"], round(m["ap"], 4), round(m["aupr"], 4), round(m["f1_max"], 4)
    (0.75, 0.8333, 0.7917, 0.8)
    """
    y = _as_binary(labels, "labels")
    s = _as_scores(scores, "scores")
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D; got shapes {y.shape} and {s.shape}")
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} vs {s.size}")
    m = _table_metrics(*_table(y, s)[:2])
    return {k: m[k] for k in IMAGE_METRICS}


def _pixel_metrics(masks, maps, pro_limit, which) -> dict[str, float]:
    """Pixel metrics of validated arrays; ``which`` is a subset of {"auroc", "f1_max", "pro"}."""
    inv_size = n_regions = None
    if "pro" in which:
        inv_size, per_image = _region_weights(masks)
        n_regions = int(per_image.sum())
    n_pos, n_neg, w = _table(masks, maps, inv_size)
    m = _table_metrics(n_pos, n_neg, w, n_regions, pro_limit, which)
    names = {"auroc": "pauroc", "f1_max": "pf1_max", "pro": "pro"}
    return {names[k]: m[k] for k in ("auroc", "f1_max", "pro") if k in m}


def pixel_metrics(masks, maps, *, pro_limit: float = 0.3) -> dict[str, float]:
    """Pixel-level metrics of one class, computed exactly on all pixels of all images.

    Parameters
    ----------
    masks : array-like of shape (N, H, W)
        Ground-truth defect masks (bool or 0/1); defect-free images take part.
    maps : array-like of shape (N, H, W)
        Anomaly maps at the same resolution.  ``uint8`` maps are evaluated by counting
        (O(pixels)); other dtypes by one sort of a copy of all scores, in their own
        dtype (float32 maps need half the memory of float64).
    pro_limit : float, default 0.3
        FPR integration limit of ``pro``.

    Returns
    -------
    dict
        ``{"pauroc", "pf1_max", "pro"}`` -> float.

    Raises
    ------
    OneClassError
        If there is no defect pixel or no normal pixel.
    ValueError
        On shape mismatch, masks not bool-like, NaN/inf maps, or bad ``pro_limit``.
    """
    masks, maps = _check_pixels(masks, maps)
    return _pixel_metrics(masks, maps, _check_limit(pro_limit), ("auroc", "f1_max", "pro"))


def evaluate_class(labels, scores, masks=None, maps=None, *,
                   pro_limit: float = 0.3) -> dict[str, float]:
    """Image metrics and, if ``masks`` and ``maps`` are given, pixel metrics of a class.

    Parameters
    ----------
    labels : array-like of shape (N,)
        1/True = anomalous image.
    scores : array-like of shape (N,)
        Image anomaly scores.
    masks : array-like of shape (N, H, W), optional
        Ground-truth defect masks (bool or 0/1).
    maps : array-like of shape (N, H, W), optional
        Anomaly maps at the masks' resolution.  Give both ``masks`` and ``maps`` or neither.  Image ``i`` must be
        the same image in all four inputs.
    pro_limit : float, default 0.3
        FPR integration limit of ``pro``.

    Returns
    -------
    dict
        ``auroc, aupr, ap, f1_max`` and, with pixels, ``pauroc, pf1_max, pro``.

    Raises
    ------
    ValueError
        As :func:`image_metrics` and :func:`pixel_metrics`; also if only one of
        ``masks``/``maps`` is given, if their image count differs from ``labels``, or
        if an image labelled normal has defect pixels in its mask.
    """
    out = image_metrics(labels, scores)
    if (masks is None) != (maps is None):
        raise ValueError("give both masks and maps, or neither")
    if masks is not None:
        y = _as_binary(labels, "labels")
        masks_b = _as_binary(masks, "masks")
        if masks_b.ndim != 3 or masks_b.shape[0] != y.size:
            raise ValueError(
                f"masks must have shape (N, H, W) with N = {y.size} images; got {masks_b.shape}"
            )
        bad = np.flatnonzero(masks_b.reshape(y.size, -1).any(axis=1) & ~y)
        if bad.size:
            raise ValueError(
                f"images {bad[:5].tolist()} are labelled normal but their masks have defect pixels"
            )
        out.update(pixel_metrics(masks_b, maps, pro_limit=pro_limit))
    return out


def mean_over_classes(per_class: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Unweighted mean of each metric over classes (the "mean" row of the papers).

    Parameters
    ----------
    per_class : mapping of class name -> mapping of metric name -> float
        The metrics of each class (e.g. :func:`evaluate_class` outputs); every class must report the same metrics.

    Returns
    -------
    dict
        metric name -> mean over classes, keys in the order of the first class.

    Raises
    ------
    ValueError
        If ``per_class`` is empty, if the classes do not report the same metrics (the
        message names the class and the metric), or if a value is NaN/inf or not a
        number.  No value is silently ignored.

    Examples
    --------
    >>> mean_over_classes({"a": {"auroc": 0.9}, "b": {"auroc": 0.7}})
    {'auroc': 0.8}
    """
    if not per_class:
        raise ValueError("per_class is empty")
    classes = list(per_class)
    keys = list(per_class[classes[0]])
    for c in classes:
        got = set(per_class[c])
        missing = [k for k in keys if k not in got]
        extra = sorted(got - set(keys))
        if missing or extra:
            raise ValueError(
                f"class {c!r} has missing metrics {missing} and extra metrics {extra} "
                f"relative to class {classes[0]!r}"
            )
    out = {}
    for k in keys:
        vals = []
        for c in classes:
            v = per_class[c][k]
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"metric {k!r} of class {c!r} is not a number: {v!r}") from None
            if not math.isfinite(v):
                raise ValueError(f"metric {k!r} of class {c!r} is {v}")
            vals.append(v)
        out[k] = math.fsum(vals) / len(vals)
    return out


# ------------------------------------------------------------------------ bootstrap CIs


def _check_boot(n_boot, alpha) -> tuple[int, float]:
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer; got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1); got {alpha}")
    return int(n_boot), float(alpha)


def _percentile_interval(reps, alpha) -> tuple[float, float]:
    lo, hi = np.quantile(np.asarray(reps, dtype=np.float64), [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


def _draw(rng: np.random.Generator, n: int, n_boot: int, is_valid: Callable):
    """Yield ``n_boot`` valid resample index vectors (length n, with replacement).

    A draw for which ``is_valid(idx)`` is False is discarded and redrawn from the same
    stream, so the result depends only on the seed.
    """
    draws = 0
    accepted = 0
    while accepted < n_boot:
        if draws >= _MAX_DRAWS_PER_REPLICATE * n_boot:
            raise ValueError(
                f"only {accepted} of {draws} bootstrap resamples contained both classes; "
                "too few images of one class to bootstrap"
            )
        idx = rng.integers(0, n, size=n)
        draws += 1
        if is_valid(idx):
            accepted += 1
            yield idx


def bootstrap_ci(metric_fn: Callable, *arrays, n_boot: int = 1000, alpha: float = 0.05,
                 seed: int = 0):
    """Percentile bootstrap confidence interval, resampling images.

    Each replicate draws ``n`` indices with replacement (``n = len(arrays[0])``) from
    ``numpy.random.default_rng(seed)`` and evaluates ``metric_fn(*(a[idx] for a in
    arrays))``.  A resample for which ``metric_fn`` raises :class:`OneClassError` (only
    one class drawn) is **redrawn** from the same random stream, so exactly ``n_boot``
    replicates are used and the result is deterministic for a seed; the interval is
    conditional on both classes being present.

    Parameters
    ----------
    metric_fn : callable
        ``metric_fn(*arrays) -> float`` or ``-> dict[str, float]``.  It is first called
        on the full data, so invalid input fails early.
    *arrays : array-like
        Indexed along the first axis, all of the same length.
    n_boot : int, default 1000
        Number of (valid) bootstrap replicates.
    alpha : float, default 0.05
        The interval covers ``1 - alpha``: quantiles ``alpha/2`` and ``1 - alpha/2`` of
        the replicates (``numpy.quantile``, linear interpolation).
    seed : int, default 0
        Seed of ``numpy.random.default_rng``.

    Returns
    -------
    tuple of float or dict
        ``(low, high)``, or ``{name: (low, high)}`` if ``metric_fn`` returns a dict.

    Raises
    ------
    ValueError
        If no arrays are given, lengths differ, ``n_boot``/``alpha`` are invalid, or
        fewer than one in 100 draws contains both classes.
    """
    n_boot, alpha = _check_boot(n_boot, alpha)
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array")
    arrays = [np.asarray(a) for a in arrays]
    if any(a.ndim == 0 for a in arrays):
        raise ValueError("bootstrap_ci needs arrays with a first axis (images); got a scalar")
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"arrays differ in length along axis 0: {[len(a) for a in arrays]}")
    full = metric_fn(*arrays)  # validates the input (and the data has both classes)
    reps = []

    def is_valid(idx):  # evaluates the replicate too, so each resample is computed once
        try:
            reps.append(metric_fn(*(a[idx] for a in arrays)))
        except OneClassError:
            return False
        return True

    for _ in _draw(np.random.default_rng(seed), n, n_boot, is_valid):
        pass
    if isinstance(full, Mapping):
        return {k: _percentile_interval([r[k] for r in reps], alpha) for k in full}
    return _percentile_interval(reps, alpha)


def image_metrics_ci(labels, scores, n_boot: int = 1000, seed: int = 0, *, alpha: float = 0.05):
    """Bootstrap intervals of :func:`image_metrics` (images resampled).

    Parameters
    ----------
    labels : array-like of shape (n_images,)
        1/True = anomalous image.
    scores : array-like of shape (n_images,)
        Image anomaly scores.
    n_boot : int, default 1000
        Number of (valid) bootstrap replicates.
    seed : int, default 0
        Seed of ``numpy.random.default_rng``.
    alpha : float, default 0.05
        The interval covers ``1 - alpha`` (percentile interval).

    Returns
    -------
    dict
        metric name -> ``(low, high)``.  One-class resamples are redrawn, see
        :func:`bootstrap_ci`.

    Raises
    ------
    OneClassError
        If the full data holds only one class.
    ValueError
        As :func:`image_metrics` and :func:`bootstrap_ci`.
    """
    return bootstrap_ci(image_metrics, labels, scores, n_boot=n_boot, alpha=alpha, seed=seed)


def _quantised_codes(masks, maps, n_bins):
    """Map scores to ordered integer codes for the bootstrap; returns (codes_fn, n_codes).

    uint8 maps are their own codes (exact).  Other dtypes use bin edges taken from the
    score distribution of the defect pixels (``n_bins // 2`` equal-frequency edges) and
    of the normal pixels (the other half), from a deterministic strided sample of about
    4M values per class (all values for smaller inputs); if a class has no more
    distinct values than its share of edges, all its values become edges.  Equal
    scores always share a code and codes follow the order of scores, so quantisation
    can only add ties, never reverse an order; if every distinct score is an edge the
    codes are exact.
    """
    if maps.dtype == np.uint8:
        return (lambda a: a), 256
    half = max(1, n_bins // 2)
    flat_maps, flat_masks = maps.reshape(-1), masks.reshape(-1)
    step = max(1, flat_maps.size // (1 << 22))  # strided sample: no full-size copy
    sample_maps, sample_masks = flat_maps[::step], flat_masks[::step]
    pos_vals = flat_maps[flat_masks]  # defect pixels are few: take them all ...
    pos_vals = pos_vals[::max(1, pos_vals.size // (1 << 22))]  # ... up to ~4M
    neg_vals = sample_maps[~sample_masks]
    edge_parts = []
    for vals in (pos_vals, neg_vals):
        vals = np.sort(vals)
        distinct = vals[np.concatenate(([True], vals[1:] != vals[:-1]))]
        if distinct.size <= half:
            edge_parts.append(distinct)
        else:
            pick = np.linspace(0, vals.size - 1, half).round().astype(np.int64)
            edge_parts.append(vals[pick])
    edges = np.unique(np.concatenate(edge_parts))
    return (lambda a: np.searchsorted(edges, a, side="right")), edges.size + 1


def pixel_metrics_ci(masks, maps, n_boot: int = 1000, seed: int = 0, *, alpha: float = 0.05,
                     pro_limit: float = 0.3, n_bins: int = 4096, histograms: "PixelHistograms | None" = None):
    """Bootstrap intervals of :func:`pixel_metrics`, resampling whole images.

    The resampling protocol is that of :func:`bootstrap_ci` (same random stream, so the
    same resamples for the same seed; resamples without defect pixels are redrawn),
    but a replicate costs O(n_images x n_codes) instead of O(pixels): every image is
    reduced once to histograms over score codes of its defect pixels, its normal
    pixels and its PRO weights ``sum 1/|r|``; a resample is a weighted sum of these
    histograms (image multiplicities as weights; repeated images contribute their
    regions again, so ``N_regions`` is weighted too).

    For ``uint8`` maps the codes are the values and the intervals are exact (identical
    to ``bootstrap_ci(pixel_metrics, masks, maps)``).  For other dtypes the scores are
    **quantised, for the interval only**, to at most ``n_bins`` ordered codes (half
    from the defect-pixel, half from the normal-pixel score distribution; exact when
    there are few distinct scores): the interval is that of the quantised metric and
    can differ slightly from one computed on exact replicates.

    Parameters
    ----------
    masks : array-like of shape (N, H, W)
        Ground-truth defect masks (bool or 0/1).
    maps : array-like of shape (N, H, W)
        Anomaly maps.
    n_boot : int, default 1000
        Number of (valid) bootstrap replicates.
    seed : int, default 0
        Seed of ``numpy.random.default_rng``.
    alpha : float, default 0.05
        The interval covers ``1 - alpha`` (percentile interval).
    pro_limit : float, default 0.3
        FPR integration limit of ``pro``.
    n_bins : int, default 4096
        Number of codes for non-uint8 maps.
    histograms : PixelHistograms, optional
        :func:`pixel_histograms` of these masks and maps when already computed (``masks``, ``maps`` and
        ``n_bins`` are then not used).

    Returns
    -------
    dict
        ``{"pauroc", "pf1_max", "pro"}`` -> ``(low, high)``.

    Raises
    ------
    OneClassError
        If there is no defect pixel or no normal pixel.
    ValueError
        On bad masks or maps (as :func:`pixel_metrics`), ``n_bins`` < 2, invalid ``n_boot``, ``alpha`` or
        ``pro_limit``, or too few resamples with both classes.
    """
    n_boot, alpha = _check_boot(n_boot, alpha)
    pro_limit = _check_limit(pro_limit)
    h = histograms if histograms is not None else pixel_histograms(masks, maps, n_bins)
    _need_both_classes(int(h.npos.sum()), int(h.nneg.sum()), "pixels")

    def is_valid(idx):
        return bool(h.npos[idx].sum() > 0 and h.nneg[idx].sum() > 0)

    mult = _multiplicities(np.random.default_rng(seed), len(h.npos), n_boot, is_valid)
    return {k: _percentile_interval(v, alpha) for k, v in _pixel_replicates(h, mult, pro_limit).items()}


@dataclass(frozen=True)
class PixelHistograms:
    """Every image of a class reduced to histograms over ordered score codes.

    A bootstrap resample is then a weighted sum of rows (see :func:`pixel_metrics_ci`).

    Attributes
    ----------
    h_pos : numpy.ndarray
        (N, n_codes) float64 counts of each image's defect pixels per code.
    h_neg : numpy.ndarray
        (N, n_codes) float64 counts of each image's normal pixels per code.
    h_w : numpy.ndarray
        (N, n_codes) PRO weights per code (sum of ``1/|region|`` over the defect pixels with that code).
    n_regions : numpy.ndarray
        (N,) number of defect regions (8-connected) per image.
    npos : numpy.ndarray
        (N,) number of defect pixels per image.
    nneg : numpy.ndarray
        (N,) number of normal pixels per image.
    """

    h_pos: np.ndarray
    h_neg: np.ndarray
    h_w: np.ndarray
    n_regions: np.ndarray
    npos: np.ndarray
    nneg: np.ndarray


def pixel_histograms(masks, maps, n_bins: int = 4096) -> PixelHistograms:
    """Reduce one class's masks and maps to :class:`PixelHistograms` (codes as in :func:`pixel_metrics_ci`).

    Parameters
    ----------
    masks : array-like of shape (N, H, W)
        Ground-truth defect masks (bool or 0/1).
    maps : array-like of shape (N, H, W)
        Anomaly maps; ``uint8`` maps are their own codes (exact).
    n_bins : int, default 4096
        Number of codes for non-uint8 maps.

    Returns
    -------
    PixelHistograms

    Raises
    ------
    OneClassError
        If there is no defect pixel or no normal pixel.
    ValueError
        On shape mismatch, bad masks, non-finite maps or ``n_bins`` not an integer >= 2.
    """
    masks, maps = _check_pixels(masks, maps)
    if int(n_bins) != n_bins or n_bins < 2:
        raise ValueError(f"n_bins must be an integer >= 2; got {n_bins}")
    n = masks.shape[0]
    flat_masks = masks.reshape(n, -1)
    npos = flat_masks.sum(axis=1)
    nneg = flat_masks.shape[1] - npos
    _need_both_classes(int(npos.sum()), int(nneg.sum()), "pixels")

    inv_size, n_regions = _region_weights(masks)
    encode, n_codes = _quantised_codes(masks, maps, int(n_bins))
    h_pos = np.zeros((n, n_codes))
    h_neg = np.zeros((n, n_codes))
    h_w = np.zeros((n, n_codes))
    offsets = np.concatenate(([0], np.cumsum(npos)))
    for i in range(n):
        codes = encode(maps[i].reshape(-1))
        h_all = np.bincount(codes, minlength=n_codes)
        if npos[i]:
            c_pos = codes[flat_masks[i]]
            h_pos[i] = np.bincount(c_pos, minlength=n_codes)
            weights = inv_size[offsets[i]:offsets[i + 1]]
            h_w[i] = np.bincount(c_pos, weights=weights, minlength=n_codes)
        h_neg[i] = h_all - h_pos[i]
    return PixelHistograms(h_pos, h_neg, h_w, n_regions, npos, nneg)


def _multiplicities(rng: np.random.Generator, n: int, n_boot: int, is_valid: Callable) -> np.ndarray:
    """(n_boot, n) image multiplicities of the valid resamples :func:`_draw` yields."""
    return np.stack([np.bincount(idx, minlength=n) for idx in _draw(rng, n, n_boot, is_valid)]).astype(np.float64)


def _pixel_replicates(h: PixelHistograms, mult: np.ndarray, pro_limit: float) -> dict[str, np.ndarray]:
    """pAUROC, pF1-max and PRO of every resample, given as (n_boot, N) image multiplicities."""
    reps = {"pauroc": [], "pf1_max": [], "pro": []}
    for start in range(0, mult.shape[0], 256):  # bounded memory: 256 x n_codes per matrix
        c = mult[start:start + 256]
        pos_b = np.rint(c @ h.h_pos).astype(np.int64)
        neg_b = np.rint(c @ h.h_neg).astype(np.int64)
        w_b = c @ h.h_w
        nreg_b = c @ h.n_regions
        for j in range(c.shape[0]):
            tab = _table_from_hist(pos_b[j], neg_b[j], w_b[j])
            m = _table_metrics(*tab, n_regions=nreg_b[j], pro_limit=pro_limit,
                               which=("auroc", "f1_max", "pro"))
            reps["pauroc"].append(m["auroc"])
            reps["pf1_max"].append(m["f1_max"])
            reps["pro"].append(m["pro"])
    return {k: np.asarray(v) for k, v in reps.items()}


def class_mean_pixel_metrics_ci(histograms: Mapping[str, PixelHistograms], n_boot: int = 1000, seed: int = 0, *,
                                alpha: float = 0.05, pro_limit: float = 0.3) -> dict[str, tuple[float, float]]:
    """Bootstrap intervals of the class-mean pixel metrics (the unweighted mean over classes papers report).

    Images are resampled over all classes at once (classes in sorted order, each class's images in their order),
    as for the class-mean image metrics; each class's metrics are computed from its own images in the resample
    and averaged. A resample in which some class has no defect or no normal pixel is redrawn. Each class's
    ``histograms`` come from :func:`pixel_histograms`, so the cost per resample is that of the per-class intervals.

    Parameters
    ----------
    histograms : mapping of class name -> PixelHistograms
        Each class's :func:`pixel_histograms`.
    n_boot : int, default 1000
        Number of (valid) bootstrap replicates.
    seed : int, default 0
        Seed of ``numpy.random.default_rng``.
    alpha : float, default 0.05
        The interval covers ``1 - alpha`` (percentile interval).
    pro_limit : float, default 0.3
        FPR integration limit of ``pro``.

    Returns
    -------
    dict
        ``{"pauroc", "pf1_max", "pro"}`` -> ``(low, high)`` of the class means.

    Raises
    ------
    ValueError
        If ``histograms`` is empty, ``n_boot``, ``alpha`` or ``pro_limit`` is invalid, or too few resamples hold
        both classes in every class.
    """
    n_boot, alpha = _check_boot(n_boot, alpha)
    pro_limit = _check_limit(pro_limit)
    names = sorted(histograms)
    if not names:
        raise ValueError("no classes to average")
    sizes = [len(histograms[c].npos) for c in names]
    bounds = np.concatenate(([0], np.cumsum(sizes)))
    owner = np.repeat(np.arange(len(names)), sizes)
    npos = np.concatenate([histograms[c].npos for c in names])
    nneg = np.concatenate([histograms[c].nneg for c in names])

    def is_valid(idx):
        pos = np.bincount(owner[idx], weights=npos[idx], minlength=len(names))
        neg = np.bincount(owner[idx], weights=nneg[idx], minlength=len(names))
        return bool((pos > 0).all() and (neg > 0).all())

    mult = _multiplicities(np.random.default_rng(seed), int(bounds[-1]), n_boot, is_valid)
    per_class = [_pixel_replicates(histograms[c], mult[:, bounds[i]:bounds[i + 1]], pro_limit)
                 for i, c in enumerate(names)]
    return {k: _percentile_interval(np.mean([r[k] for r in per_class], axis=0), alpha) for k in per_class[0]}
