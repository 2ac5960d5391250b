"""Tables of the study, as the book shows them: summaries over seeds, formatted cells, weights notes, per-class
tables. Running the grids is :mod:`zsad.grids`."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from zsad.paper_tables import METRIC_NAMES
from zsad.study import _names


def summarise(metrics: pd.DataFrame, *, level: str = "mean") -> pd.DataFrame:
    """Mean and standard deviation over seeds of each (dataset, method, setting, metric) at one class level.

    ``level="mean"`` takes the class-mean rows (what papers report); a class name takes that class's rows. The
    std is over few-shot seeds (0 for a single run); ``ci_low``/``ci_high`` are the bootstrap interval of the
    single run when there is only one seed.
    """
    rows = metrics[metrics["class"] == level]
    keys = ["dataset", "method", "setting", "shots", "metric"]
    g = rows.groupby(keys, sort=True)
    out = g["value"].agg(mean="mean", std=lambda v: float(v.std(ddof=0)), n_seeds="size").reset_index()
    single = g[["ci_low", "ci_high"]].first().reset_index()
    out = out.merge(single, on=keys)
    out.loc[out.n_seeds > 1, ["ci_low", "ci_high"]] = float("nan")
    return out


def format_table(summary: pd.DataFrame, metrics=("auroc", "aupr", "f1_max", "pauroc", "pro", "pf1_max"),
                 digits: int = 3) -> pd.DataFrame:
    """A wide table of strings, one row per (dataset, method, setting). Two quantities, never in one column:

    - ``<metric>``: ``mean ± std (n=K)`` over K few-shot seeds (std with ddof 0), or ``value (1 run)``;
    - ``<metric> 95% CI``: for a single run, the 95 % bootstrap interval over its test images ``[low, high]``
      (``–`` for rows averaged over seeds, whose spread is the std instead).
    """
    present = [m for m in metrics if m in set(summary.metric)]
    cells = summary[summary.metric.isin(present)].copy()

    def value(row) -> str:
        if row.n_seeds > 1:
            return f"{row['mean']:.{digits}f} ± {row['std']:.{digits}f} (n={row.n_seeds})"
        return f"{row['mean']:.{digits}f} (1 run)"

    def interval(row) -> str:
        if row.n_seeds == 1 and pd.notna(row.ci_low):
            return f"[{row.ci_low:.{digits}f}, {row.ci_high:.{digits}f}]"
        return "–"

    cells["value_text"] = cells.apply(value, axis=1)
    cells["ci_text"] = cells.apply(interval, axis=1)
    index = ["dataset", "method", "shots", "setting"]
    values = cells.pivot_table(index=index, columns="metric", values="value_text", aggfunc="first")
    cis = cells.pivot_table(index=index, columns="metric", values="ci_text", aggfunc="first")
    columns = {}
    for m in present:
        columns[m] = values[m]
        if (cis[m].fillna("–") != "–").any():
            columns[f"{m} 95% CI"] = cis[m]
    wide = pd.DataFrame(columns).droplevel("shots")
    wide.columns.name = None
    return wide.fillna("–")


def weights_text(provenances: dict) -> str:
    """One plain sentence saying which weights produced a table; it starts with "RANDOM WEIGHTS." when any run used
    random weights (the command line prints it under every table)."""
    weights = [p.get("weights") or {} for p in provenances.values()]
    labels = sorted({w.get("model", "?") + ": " + ("RANDOM" if w.get("random_weights") else
                                                  w.get("checkpoint_sha256", "?")[:12]) for w in weights})
    if any(w.get("random_weights") for w in weights):
        return (f"RANDOM WEIGHTS. These numbers come from seeded random-init models ({', '.join(labels)}). They test "
                "that the pipeline runs end to end; they are not results about CLIP, and they must not be compared "
                "with the papers' numbers.")
    return "Weights: " + ", ".join(labels)


def weights_label(provenances: dict) -> str:
    """A figure title's note on the weights: "RANDOM WEIGHTS" when any run used random weights, else the models
    and the first 12 hex digits of their checkpoints' sha256."""
    weights = [p.get("weights") or {} for p in provenances.values()]
    if any(w.get("random_weights") for w in weights):
        return "RANDOM WEIGHTS"
    return ", ".join(sorted({f"{w.get('model', '?')} {w.get('checkpoint_sha256', '?')[:12]}" for w in weights}))


def weights_banner(model: str | None = None, checkpoint=None, *, detector=False, **_ignored) -> str:
    """The box a chapter opens with, before anything runs: which weights its runs will use (RANDOM, or the
    checkpoint's file name and sha256), from the chapter's parameters (``**run_arguments(globals())`` fits; other
    keys are ignored). ``detector``: Cheung et al.'s Grounding DINO folder, ``""``/None for the small RANDOM one,
    False (default) for a chapter without a detector."""
    from zsad.backbone import DEFAULT_MODEL, default_checkpoint, file_sha256

    checkpoint = checkpoint or default_checkpoint()
    model = model or DEFAULT_MODEL
    random = not checkpoint or (detector is not False and not detector)
    if checkpoint:
        lines = [f"Weights: {model} from `{Path(checkpoint).expanduser().resolve().name}`, "
                 f"sha256 `{file_sha256(checkpoint)}`."]
    else:
        lines = [f"**RANDOM WEIGHTS** ({model}, seeded random init): every number and figure of this chapter tests "
                 "the pipeline; none is a result about CLIP, and none may be compared with the papers'."]
    if detector is not False:
        lines.append(f"Detector: Grounding DINO from `{Path(detector).name}`." if detector else
                     "Detector: a small seeded **RANDOM** Grounding DINO (no detector folder given).")
    return "```{" + ("warning" if random else "note") + "}\n" + "\n\n".join(lines) + "\n```"


def weights_note(provenances: dict) -> str:
    """:func:`weights_text` as a Markdown box; a warning in bold capitals when any run used random weights."""
    text = weights_text(provenances)
    if text.startswith("RANDOM WEIGHTS."):
        return "```{warning}\n**RANDOM WEIGHTS.**" + text[len("RANDOM WEIGHTS."):] + "\n```"
    return "```{note}\n" + text + "\n```"


def paper_table(metrics: pd.DataFrame, paper: str = "fade2024", methods=None,
                metric_names=("auroc", "aupr", "f1_max", "pauroc", "pro", "pf1_max"), digits: int = 3) -> pd.DataFrame:
    """Our class-mean values beside the values *reported in the paper*, for the (dataset, method, setting) rows the
    paper has. Our column is empty where we did not run that dataset (the default job runs embedded data only)."""
    from zsad.paper import compare

    both = compare(metrics, paper)
    both = both[both.metric.isin(metric_names) & both.reported.notna()]
    if methods is not None:
        both = both[both.method.isin(_names(methods) if isinstance(methods, str) else methods)]
    fmt = lambda v: "–" if pd.isna(v) else f"{v:.{digits}f}"  # noqa: E731
    both = both.assign(ours=both.ours.map(fmt), reported=both.reported.map(fmt))
    both["shots"] = both.setting.str.extract(r"^(\d+)", expand=False).astype(int)
    wide = both.pivot_table(index=["dataset", "method", "shots", "setting"], columns="metric",
                            values=["ours", "reported"], aggfunc="first").droplevel("shots")
    wide = wide.rename(columns={"ours": "ours", "reported": "reported in the paper"}, level=0)
    order = [m for m in metric_names if m in set(both.metric)]
    return wide.reorder_levels([1, 0], axis=1).reindex(columns=pd.MultiIndex.from_product(
        [order, ["ours", "reported in the paper"]])).fillna("–")


def per_class(metrics: pd.DataFrame, metric_names=("auroc", "aupr", "f1_max", "pauroc", "pro", "pf1_max"),
              digits: int = 3) -> pd.DataFrame:
    """Per-class values of every (dataset, method, setting): ``mean ± std (n)`` over seeds (``ddof = 0``), one row
    per class and the class mean last; a column per metric ("–" where the method has no such metric, e.g. pixel
    metrics of an image-level method). Plain columns, no index."""
    keys = ["dataset", "method", "setting", "class"]
    g = metrics[metrics.metric.isin(metric_names)].groupby(keys + ["metric"], sort=False)["value"]

    def text(v) -> str:
        v = v.to_numpy(dtype=float)
        if v.size == 1:
            return f"{v[0]:.{digits}f}"
        return f"{v.mean():.{digits}f} ± {v.std(ddof=0):.{digits}f} (n={v.size})"

    cells = g.apply(text).unstack("metric")
    present = [m for m in metric_names if m in cells.columns]
    wide = cells[present].reset_index()
    wide["_mean_last"] = wide["class"] == "mean"
    wide = wide.sort_values(["dataset", "method", "setting", "_mean_last", "class"], kind="stable")
    wide = wide.drop(columns="_mean_last").fillna("–")
    wide.columns = [*keys, *(METRIC_NAMES.get(m, m) for m in present)]
    return wide.reset_index(drop=True)
