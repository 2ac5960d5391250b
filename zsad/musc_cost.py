"""The "Beyond FADE" chapter's measurements: what MuSc's mutual scoring costs, how much its scores depend on the
other test images, and its results split into texture and object classes.

MuSc (:mod:`zsad.methods.musc`) compares every patch of every test image with every patch of every other test image
of the class, per layer and per aggregation degree: N (N - 1) P^2 C multiply-adds per (layer, degree) for N images
of P patches of width C. :func:`measure_cost` times that step and records its peak memory for growing N on random
unit features of a given shape, in this process; :func:`project_cost` extends a measurement to another N by the
N (N - 1) law. :func:`pool_effect` compares the image scores of two runs of the same images (all the other images
vs. a random part of them), :func:`pool_effects` does so for every such pair of a table: the transductive effect
the chapter shows. :func:`kind_table` puts the per-class results beside each class's kind (:func:`class_kind`).
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from zsad.methods.musc import lnamd, mutual_scores

__all__ = ["PeakRss", "token_shape", "measure_cost", "project_cost", "projection_table", "pool_effect", "pool_effects",
           "class_kind", "kind_table", "cost_plot"]

#: MVTec AD's texture classes (Bergmann et al., CVPR 2019, Tab. 1); its other ten classes are objects. Every VisA
#: class is an object (Zou et al., ECCV 2022); the embedded synthetic classes and magnetic tile are surfaces, the
#: synthetic ``part`` (zsad.data.synth.OBJECTS) an object.
MVTEC_TEXTURES = ("carpet", "grid", "leather", "tile", "wood")

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_bytes() -> int | None:
    """Resident set size of this process (Linux ``/proc``), or None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


class PeakRss:
    """A context manager that samples this process's resident set size every ``interval`` seconds on a thread;
    ``extra`` is the peak above the size at entry, in bytes (NaN where ``/proc`` is missing)."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.start, self.peak = interval, _rss_bytes(), _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            now = _rss_bytes()
            if now is not None and self.peak is not None:
                self.peak = max(self.peak, now)
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        now = _rss_bytes()
        if now is not None and self.peak is not None:
            self.peak = max(self.peak, now)

    @property
    def extra(self) -> float:
        return float("nan") if self.start is None else float(self.peak - self.start)


def token_shape(model: str, image_size: int) -> dict:
    """The patch grid and token width MuSc scores for an open_clip architecture at an input size (from its config
    file; no weights are built).

    Parameters
    ----------
    model : an open_clip architecture name (``zsad-tiny-vit``, ``ViT-B-16-plus-240``, ``ViT-L-14-336``, ...).
    image_size : the input size in px.

    Returns
    -------
    dict
        ``{"model", "image_size", "grid", "patches", "width", "blocks"}``.
    """
    import open_clip

    import zsad.backbone  # noqa: F401  (registers zsad's own model configs with open_clip)

    cfg = open_clip.get_model_config(model)
    if cfg is None or "vision_cfg" not in cfg:
        raise ValueError(f"unknown open_clip architecture {model!r}")
    vision = cfg["vision_cfg"]
    patch = int(vision["patch_size"])
    if image_size % patch:
        raise ValueError(f"image size {image_size} is not a multiple of {model}'s patch size {patch}")
    grid = image_size // patch
    return {"model": model, "image_size": int(image_size), "grid": grid, "patches": grid * grid,
            "width": int(vision["width"]), "blocks": int(vision["layers"])}


def measure_cost(n_images: Sequence[int] = (8, 16, 32), *, grid: int = 15, dim: int = 64, n_layers: int = 4,
                 r_list: Sequence[int] = (1, 3, 5), chunk_mb: float = 256.0, repeats: int = 1,
                 seed: int = 0) -> pd.DataFrame:
    """Time and peak memory of MuSc's scoring step for classes of ``n_images`` images, measured here.

    For each N: random unit tokens of shape (N, 1 + grid^2, dim) (seeded), one LNAMD at the largest degree and one
    mutual scoring (:func:`zsad.methods.musc.mutual_scores`), timed (best of ``repeats``) with the process's
    resident memory sampled every 2 ms during the call. A whole class costs ``n_layers * len(r_list)`` such
    steps; ``total_s`` is that product (the steps are sequential and alike).

    Parameters
    ----------
    n_images : class sizes to measure (each >= 5: the 30 % rule needs 4 other images).
    grid : patch grid side (15 for 240 px with 16 px patches; 37 for 518 px with 14 px patches).
    dim : token width (the tower's width: 64 for zsad-tiny-vit, 896 for ViT-B-16-plus-240, 1024 for ViT-L/14).
    n_layers, r_list : layers and degrees of the run (MuSc: 4 and (1, 3, 5)).
    chunk_mb : the memory bound of :func:`mutual_scores`.
    repeats : timings per N (the fastest is kept: the least disturbed by other work on the machine).
    seed : seed of the random tokens.

    Returns
    -------
    pandas.DataFrame
        One row per N: ``n_images, patches, dim, msm_s`` (one mutual scoring), ``lnamd_s``, ``total_s``
        (``n_layers * len(r_list) * (msm_s + lnamd_s)``), ``peak_extra_mib`` (resident memory above the start of
        the call; NaN off Linux), ``macs`` (N (N - 1) P^2 C of one mutual scoring) and ``threads`` (torch's).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if any(int(n) < 5 for n in n_images):
        raise ValueError(f"every class size must be >= 5 (the 30 % rule), got {list(n_images)}")
    gen = torch.Generator().manual_seed(seed)
    steps = n_layers * len(r_list)
    rows = []
    for n in (int(v) for v in n_images):
        tokens = torch.nn.functional.normalize(torch.randn(n, 1 + grid * grid, dim, generator=gen), dim=-1)
        best_msm = best_lnamd = float("inf")
        peak = float("nan")
        for _ in range(repeats):
            t0 = time.perf_counter()
            z = lnamd(tokens, max(r_list))
            t1 = time.perf_counter()
            with PeakRss() as mem:
                mutual_scores(z, chunk_mb=chunk_mb)
            t2 = time.perf_counter()
            best_lnamd, best_msm = min(best_lnamd, t1 - t0), min(best_msm, t2 - t1)
            peak = mem.extra / 2 ** 20 if np.isnan(peak) else max(peak, mem.extra / 2 ** 20)
        p = grid * grid
        rows.append({"n_images": n, "patches": p, "dim": dim, "msm_s": best_msm, "lnamd_s": best_lnamd,
                     "total_s": steps * (best_msm + best_lnamd), "peak_extra_mib": peak,
                     "macs": n * (n - 1) * p * p * dim, "threads": torch.get_num_threads()})
    return pd.DataFrame(rows)


def project_cost(measured: pd.DataFrame, n_images: int, *, patches: int | None = None,
                 dim: int | None = None) -> dict:
    """Extend a :func:`measure_cost` table to a class of ``n_images`` (and optionally another P and C).

    The time per multiply-add of the largest measured N (the least dominated by fixed overheads) is applied to the
    N (N - 1) P^2 C multiply-adds of the new class. Memory: the scoring holds blocks of at most ``chunk_mb`` plus
    (query block x N x P) distances, so it stays bounded; the projection does not extrapolate it.

    Parameters
    ----------
    measured : the output of :func:`measure_cost`.
    n_images : the class size to project to (e.g. 200).
    patches, dim : P and C of the projected class (default: the measured ones).

    Returns
    -------
    dict
        ``n_images, patches, dim, msm_s, total_s, s_per_gmac`` (seconds per 1e9 multiply-adds, measured).
    """
    last = measured.sort_values("n_images").iloc[-1]
    p = int(patches or last["patches"])
    c = int(dim or last["dim"])
    per_mac = float(last["msm_s"]) / float(last["macs"])
    macs = n_images * (n_images - 1) * p * p * c
    steps = float(last["total_s"]) / (float(last["msm_s"]) + float(last["lnamd_s"]))
    msm = per_mac * macs
    return {"n_images": int(n_images), "patches": p, "dim": c, "msm_s": msm, "total_s": steps * msm,
            "s_per_gmac": per_mac * 1e9}


def projection_table(measured: pd.DataFrame, n_images: int, shapes: Sequence[dict], *,
                     as_text: bool = False) -> pd.DataFrame:
    """:func:`project_cost` of one measurement for several architectures (:func:`token_shape` dicts).

    Parameters
    ----------
    measured : the output of :func:`measure_cost` (its seconds per multiply-add are applied to every shape).
    n_images : the class size to project to.
    shapes : :func:`token_shape` outputs.
    as_text : times as text with their unit (``"12.3 s"``), as the book prints them (the notebooks' checks
        replace durations, which vary from run to run, by a placeholder); default numbers.

    Returns
    -------
    pandas.DataFrame
        One row per shape: ``model, image_size, patches, width, n_images, msm_s`` (one mutual scoring) and
        ``total_s`` (all layers and degrees of the measurement), ``s_per_image`` (``total_s / n_images``).
    """
    rows = []
    for shape in shapes:
        got = project_cost(measured, n_images, patches=shape["patches"], dim=shape["width"])
        rows.append({"model": shape["model"], "image_size": shape["image_size"], "patches": shape["patches"],
                     "width": shape["width"], "n_images": int(n_images), "msm_s": got["msm_s"],
                     "total_s": got["total_s"], "s_per_image": got["total_s"] / n_images})
    out = pd.DataFrame(rows)
    if as_text:
        for col in ("msm_s", "total_s", "s_per_image"):
            out[col] = [f"{v:.1f} s" for v in out[col]]  # no exponent or separator: one duration token
    return out


def pool_effect(full: dict, partial: dict) -> pd.DataFrame:
    """Per class, how much the image scores of one run move when each image is scored against only part of the
    other images (``pool_fraction < 1``) instead of all of them.

    Parameters
    ----------
    full, partial : predictions of the two runs (:func:`zsad.results.read_predictions`: ``paths``, ``classes``,
        ``scores``), of the same images.

    Returns
    -------
    pandas.DataFrame
        One row per class: ``images``, ``spearman`` (rank correlation of the two runs' image scores),
        ``max_abs_change`` and ``mean_abs_change`` of the scores, ``top_changed`` (whether the most anomalous image
        differs).
    """
    if list(full["paths"]) != list(partial["paths"]):
        raise ValueError("pool_effect: the two runs scored different images")
    rows = []
    classes = np.asarray(full["classes"], dtype=str)
    for cls in sorted(set(classes.tolist())):
        sel = classes == cls
        x, y = np.asarray(full["scores"], float)[sel], np.asarray(partial["scores"], float)[sel]
        rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
        rho = float(np.corrcoef(rx, ry)[0, 1]) if np.ptp(rx) > 0 and np.ptp(ry) > 0 else float("nan")
        d = np.abs(x - y)
        rows.append({"class": cls, "images": int(sel.sum()), "spearman": rho, "max_abs_change": float(d.max()),
                     "mean_abs_change": float(d.mean()), "top_changed": bool(np.argmax(x) != np.argmax(y))})
    return pd.DataFrame(rows)


def pool_effects(result: dict) -> pd.DataFrame:
    """:func:`pool_effect` of every MuSc run of a table that scores against part of the others, against the run
    of the same dataset and token features that scores against all of them.

    Parameters
    ----------
    result : what :func:`zsad.grids.run_settings` returns (``provenance`` by run id and ``paths`` in that order).

    Returns
    -------
    pandas.DataFrame
        :func:`pool_effect`'s rows with ``dataset``, ``pool_fraction`` and ``pool_seed`` first.
    """
    from zsad.results import read_predictions

    runs = []
    for (rid, prov), path in zip(result["provenance"].items(), result["paths"]):
        params = prov["parameters"]
        if params.get("method") == "musc":
            runs.append((params["dataset"], params["config"], path))
    frames = []
    for dataset, cfg, path in runs:
        if cfg["pool_fraction"] >= 1:
            continue
        full = [p for d, c, p in runs if d == dataset and c["pool_fraction"] >= 1
                and {k: v for k, v in c.items() if k not in ("pool_fraction", "pool_seed")}
                == {k: v for k, v in cfg.items() if k not in ("pool_fraction", "pool_seed")}]
        if not full:
            raise ValueError(f"{dataset}: no MuSc run with pool_fraction 1 and the same other settings to compare "
                             f"the pool_fraction {cfg['pool_fraction']} run with")
        part = pool_effect(read_predictions(full[0]), read_predictions(path))
        part.insert(0, "pool_seed", cfg["pool_seed"])
        part.insert(0, "pool_fraction", cfg["pool_fraction"])
        part.insert(0, "dataset", dataset)
        frames.append(part)
    if not frames:
        raise ValueError("no MuSc run with pool_fraction < 1 in this result")
    return pd.concat(frames, ignore_index=True)


def class_kind(dataset: str, cls: str) -> str:
    """``"texture"`` or ``"object"``: MVTec AD's five texture classes (:data:`MVTEC_TEXTURES`), VisA's objects, the
    embedded surfaces (synthetic weave and grain, magnetic tile) and the synthetic object kinds
    (:data:`zsad.data.synth.OBJECTS`: ``part``, a nut on a table); ``"unknown"`` for other datasets.

    Parameters
    ----------
    dataset : a study dataset key (``mvtec``, ``visa``, ``synthetic``, ``magnetic_tile``, ...).
    cls : the class name.

    Returns
    -------
    str
    """
    from zsad.data.synth import OBJECTS

    if dataset == "mvtec":
        return "texture" if cls in MVTEC_TEXTURES else "object"
    if dataset == "visa":
        return "object"
    if dataset == "synthetic":
        return "object" if cls in OBJECTS else "texture"
    if dataset == "magnetic_tile":
        return "texture"
    return "unknown"


def kind_table(metrics: pd.DataFrame, metric: str = "pauroc", digits: int = 3) -> pd.DataFrame:
    """Per class, one metric of every (method, setting) of a table, with the class's kind; mean over seeds.

    Parameters
    ----------
    metrics : tidy metrics (``metrics.csv`` rows of the runs).
    metric : the metric key (e.g. ``pauroc``, ``auroc``).
    digits : decimal places of the cells.

    Returns
    -------
    pandas.DataFrame
        Columns ``dataset, class, kind`` and one per (method, setting) as the tables name them; a row per class, then
        one per (dataset, kind) with the mean over its classes (``class`` = ``mean of textures`` / ``objects``).
    """
    from zsad.tables import dataset_label, method_label, setting_label

    rows = metrics[(metrics["metric"] == metric) & (metrics["class"] != "mean")]
    if rows.empty:
        raise ValueError(f"no per-class {metric!r} values in these metrics")
    # columns: methods in the tables' order (FADE before MuSc), settings in the order the runs come
    from zsad.tables import METHOD_LABELS

    order = {m: i for i, m in enumerate(METHOD_LABELS)}
    keys = list(dict.fromkeys((d, m, int(k), s) for d, m, k, s in rows[["dataset", "method", "shots", "setting"]]
                              .itertuples(index=False)))
    keys = sorted(keys, key=lambda t: order.get(t[1], len(order)))  # stable: run order within a method
    names = {(m, s): f"{method_label(m, k)} ({setting_label(s)})" for _, m, k, s in keys}
    table = (rows.groupby(["dataset", "class", "method", "setting"], sort=False)["value"].mean().reset_index())
    table["column"] = [names[(m, s)] for m, s in zip(table["method"], table["setting"])]
    wide = table.pivot_table(index=["dataset", "class"], columns="column", values="value", sort=False)
    wide = wide[[names[k] for k in dict.fromkeys((m, s) for _, m, _, s in keys)]].reset_index()
    wide.insert(2, "kind", [class_kind(d, c) for d, c in zip(wide["dataset"], wide["class"])])
    means = wide.groupby(["dataset", "kind"], sort=False).mean(numeric_only=True).reset_index()
    means.insert(1, "class", [f"mean of {k}s" for k in means["kind"]])
    out = pd.concat([wide, means[wide.columns]], ignore_index=True)
    out["dataset"] = out["dataset"].map(dataset_label)
    value_cols = [c for c in out.columns if c not in ("dataset", "class", "kind")]
    out[value_cols] = out[value_cols].map(lambda v: f"{v:.{digits}f}" if pd.notna(v) else "–")
    out.columns.name = None
    return out


def cost_plot(measured: pd.DataFrame, title: str = "MuSc scoring cost", weights: str = ""):
    """Time of one mutual scoring and its peak extra memory against the class size (two panels).

    Parameters
    ----------
    measured : the output of :func:`measure_cost`.
    title : the figure title; ``weights`` (e.g. the weights label) is appended when given.
    weights : label of the weights (random features here, so usually empty).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(8, 3.2), constrained_layout=True)
    n = measured["n_images"].to_numpy()
    ax_t.plot(n, measured["msm_s"], "o-", label="measured")
    last = measured.sort_values("n_images").iloc[-1]
    fit = last["msm_s"] * n * (n - 1) / (last["n_images"] * (last["n_images"] - 1))
    ax_t.plot(n, fit, "--", color="grey", label="N (N - 1) law")
    ax_t.set_xlabel("test images in the class (N)")
    ax_t.set_ylabel("seconds per mutual scoring")
    ax_t.legend(fontsize=8)
    ax_m.plot(n, measured["peak_extra_mib"], "s-", color="tab:orange")
    ax_m.set_xlabel("test images in the class (N)")
    ax_m.set_ylabel("peak extra memory (MiB)")
    ax_m.set_ylim(bottom=0)
    fig.suptitle(title + (f" ({weights})" if weights else ""), fontsize=10)
    return fig
