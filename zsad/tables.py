"""Tables of the study, as the book shows them: summaries over seeds, formatted cells, weights notes, per-class
tables, and the names every table and figure legend gives methods, settings and datasets. Running the grids is
:mod:`zsad.grids`."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from zsad.paper_tables import DATASET_NAMES, METRIC_NAMES

#: Methods as the papers name their rows (FADE Tab. 1 and 4; Cheung et al. Tab. II and IV, "Ours" made explicit;
#: Tamura 2023; MuSc), in the order the tables list them. WinCLIP with reference images is "WinCLIP+"
#: (:func:`method_label`).
METHOD_LABELS = {
    "fade": "FADE",
    "winclip": "WinCLIP",
    "patchcore": "PatchCore",
    "cheung": "Cheung et al. (full)",
    "cheung_no_prompt_generation": "Cheung et al. w/o prompt generation",
    "cheung_no_object_detection": "Cheung et al. w/o object detection",
    "tamura": "Tamura (random words)",
    "musc": "MuSc",
}

#: The variant part of a ``setting`` (after ``"<k>-shot "``) as the book prints it: (pattern, replacement), the first
#: full match wins; a variant that none matches is printed as it is.
_VARIANT_LABELS = (
    (r"(language|vision) (clip|gem)", lambda m: f"{m[1]} guidance, {m[2].upper()} tokens"),
    (r"winclip prompts", "WinCLIP prompts"),
    (r"winclip \+ llm_generic_seed(\d+)", r"WinCLIP + LLM prompts (seed \1)"),
    (r"llm_generic_seed(\d+) only", r"LLM prompts (seed \1) only"),
    (r"(language|vision) only", r"\1 guidance only"),
    (r"object, (\d+) random words", r'"object", \1 random words'),
    (r"class names, (\d+) random words", r"class name, \1 random words"),
    (r"class names", "class name"),
)


def method_label(method: str, shots: int | None = None) -> str:
    """A method as the papers name it in their tables.

    Parameters
    ----------
    method : str
        A registered method name (``zsad.study.METHODS``), e.g. ``"cheung_no_object_detection"``.
    shots : int, optional
        Reference images of the row: WinCLIP with reference images is the papers' "WinCLIP+".

    Returns
    -------
    str
        The printed name, e.g. ``"Cheung et al. w/o object detection"``; an unknown method comes back unchanged.
    """
    if method == "winclip" and shots:
        return "WinCLIP+"
    return METHOD_LABELS.get(method, method)


def setting_label(setting: str) -> str:
    """A ``setting`` value (``"<k>-shot[ <variant>]"``, as run folders record it) as the book prints it.

    Parameters
    ----------
    setting : str
        E.g. ``"0-shot language gem"`` or ``"0-shot winclip + llm_generic_seed3"``.

    Returns
    -------
    str
        E.g. ``"0-shot, language guidance, GEM tokens"`` or ``"0-shot, WinCLIP + LLM prompts (seed 3)"``; the shot
        count stays first, a variant no rule knows is kept as it is.
    """
    shots, _, variant = setting.partition(" ")
    if not variant:
        return shots
    for pattern, replacement in _VARIANT_LABELS:
        match = re.fullmatch(pattern, variant)
        if match:
            variant = replacement(match) if callable(replacement) else match.expand(replacement)
            break
    return f"{shots}, {variant}"


def dataset_label(dataset: str) -> str:
    """A dataset key as the papers' tables name it (``"mvtec"`` -> ``"MVTec-AD"``; unknown keys unchanged).

    Parameters
    ----------
    dataset : str
        A dataset key of ``zsad.data`` (``mvtec``, ``visa``, ``magnetic_tile``, ``synthetic``, ...).

    Returns
    -------
    str
        The printed name.
    """
    return DATASET_NAMES.get(dataset, dataset)


def row_order(dataset: str, method: str, shots: int, setting: str) -> tuple:
    """The sort key of a table row or figure entry, so that tables list rows as the papers do.

    Parameters
    ----------
    dataset, method : str
        Keys as run folders record them; datasets sort in :data:`zsad.paper_tables.DATASET_NAMES` order, methods in
        :data:`METHOD_LABELS` order, unknown ones after the known, by name.
    shots : int
        Reference images.
    setting : str
        The ``setting`` value (by name, within a method and shot count).

    Returns
    -------
    tuple
        A key for ``sorted``.
    """
    datasets, methods = list(DATASET_NAMES), list(METHOD_LABELS)
    return (datasets.index(dataset) if dataset in datasets else len(datasets), dataset,
            methods.index(method) if method in methods else len(methods), method, int(shots), setting)


def summarise(metrics: pd.DataFrame, *, level: str = "mean") -> pd.DataFrame:
    """Mean and standard deviation over seeds of each (dataset, method, setting, metric) at one class level.

    Parameters
    ----------
    metrics : pandas.DataFrame
        Tidy metrics (``metrics.csv`` rows of one or more run folders).
    level : str
        ``"mean"``: the class-mean rows (what papers report); a class name: that class's rows.

    Returns
    -------
    pandas.DataFrame
        One row per (dataset, method, setting, shots, metric): ``mean``, ``std`` over few-shot seeds (ddof 0; 0 for
        a single run), ``n_seeds``, and ``ci_low``/``ci_high``, the bootstrap interval of a single run (NaN for
        rows over several seeds).
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
    """A wide table of strings, one row per (dataset, method, setting), named as the papers name them.

    Two quantities, never in one column:

    - ``<metric>``: ``mean ± std (n=K)`` over K few-shot seeds (std with ddof 0), or ``value (1 run)``;
    - ``<metric> 95% CI``: for a single run, the 95 % bootstrap interval over its test images ``[low, high]``
      (``–`` for rows averaged over seeds, whose spread is the std instead).

    Parameters
    ----------
    summary : pandas.DataFrame
        :func:`summarise` output.
    metrics : sequence of str
        Metric keys to show, in this order (those absent from ``summary`` are left out).
    digits : int
        Decimal places.

    Returns
    -------
    pandas.DataFrame
        Indexed by (dataset, method, setting) as printed (:func:`dataset_label`, :func:`method_label`,
        :func:`setting_label`), rows in the papers' order (:func:`row_order`); columns named by
        ``zsad.paper_tables.METRIC_NAMES``.
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
        name = METRIC_NAMES.get(m, m)
        columns[name] = values[m]
        if (cis[m].fillna("–") != "–").any():
            columns[f"{name} 95% CI"] = cis[m]
    wide = pd.DataFrame(columns)
    # Sort on the keys, then print the names: the papers' row order, not the alphabet of the printed names.
    order = sorted(wide.index, key=lambda key: row_order(*key))
    wide = wide.loc[order]
    wide.index = pd.MultiIndex.from_tuples(
        [(dataset_label(d), method_label(m, k), setting_label(s)) for d, m, k, s in order],
        names=["dataset", "method", "setting"])
    wide.columns.name = None
    return wide.fillna("–")


def weights_text(provenances: dict) -> str:
    """One plain sentence saying which weights produced a table (the command line prints it under every table).

    Parameters
    ----------
    provenances : dict
        Run provenances (:func:`zsad.results.provenance`), by any key.

    Returns
    -------
    str
        Starts with "RANDOM WEIGHTS." when any run used random weights, else "Weights: " and the models with the
        first 12 hex digits of their checkpoints' sha256.
    """
    weights = [p.get("weights") or {} for p in provenances.values()]
    labels = sorted({w.get("model", "?") + ": " + ("RANDOM" if w.get("random_weights") else
                                                  w.get("checkpoint_sha256", "?")[:12]) for w in weights})
    if any(w.get("random_weights") for w in weights):
        return (f"RANDOM WEIGHTS. These numbers come from seeded random-init models ({', '.join(labels)}). They test "
                "that the pipeline runs end to end; they are not results about CLIP, and they must not be compared "
                "with the papers' numbers.")
    return "Weights: " + ", ".join(labels)


def weights_label(provenances: dict) -> str:
    """A figure title's note on the weights.

    Parameters
    ----------
    provenances : dict
        Run provenances (:func:`zsad.results.provenance`), by any key.

    Returns
    -------
    str
        "RANDOM WEIGHTS" when any run used random weights, else each model with its checkpoint's file name (the
        first 12 hex digits of its sha256 where the provenance names no file).
    """
    weights = [p.get("weights") or {} for p in provenances.values()]
    if any(w.get("random_weights") for w in weights):
        return "RANDOM WEIGHTS"

    def one(w: dict) -> str:
        name = Path(w["checkpoint"]).name if w.get("checkpoint") else w.get("checkpoint_sha256", "?")[:12]
        return f"{w.get('model', '?')} ({name})"

    return ", ".join(sorted({one(w) for w in weights}))


def weights_banner(model: str | None = None, checkpoint=None, *, detector=False, **_ignored) -> str:
    """The box a chapter opens with, before anything runs: which weights its runs will use.

    Parameters
    ----------
    model : str, optional
        The open_clip architecture (default: ``zsad.backbone.DEFAULT_MODEL``).
    checkpoint : path, optional
        The checkpoint file (default: ``$ZSAD_CHECKPOINT``); none means seeded RANDOM weights.
    detector : str, None or False
        Cheung et al.'s Grounding DINO folder; ``""`` or None for the small seeded RANDOM one; False (default)
        for a chapter without a detector.
    **_ignored
        The chapter's other run parameters (``**run_arguments(globals())`` fits).

    Returns
    -------
    str
        A MyST ``warning`` box (RANDOM weights or detector) or ``note`` box (the checkpoint's file name and
        sha256).
    """
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
    """:func:`weights_text` as a Markdown box.

    Parameters
    ----------
    provenances : dict
        Run provenances (:func:`zsad.results.provenance`), by any key.

    Returns
    -------
    str
        A MyST ``warning`` box starting with a bold "RANDOM WEIGHTS." when any run used random weights, else a
        ``note`` box.
    """
    text = weights_text(provenances)
    if text.startswith("RANDOM WEIGHTS."):
        return "```{warning}\n**RANDOM WEIGHTS.**" + text[len("RANDOM WEIGHTS."):] + "\n```"
    return "```{note}\n" + text + "\n```"


def results_provenances(results_dir=None, studies=None) -> dict:
    """The provenance of every finished run folder the per-class appendix reads, for its weights banner and its
    figure's title (:func:`weights_note`, :func:`weights_label`).

    Parameters
    ----------
    results_dir : path, optional
        Where the chapters wrote their run folders (default ``results/``).
    studies : str or sequence of str, optional
        The chapters' folders to include (comma-separated or a list; default all), as
        :func:`zsad.grids.read_results` takes them.

    Returns
    -------
    dict
        Run folder path -> its ``provenance.json``; a ``ValueError`` when there is no finished run folder.
    """
    import json

    from zsad import config
    from zsad.results import finished_runs

    root = Path(results_dir or config.RESULTS_DIR)
    provenances = {str(run): json.loads((run / "provenance.json").read_text())
                   for _, run in finished_runs(root, studies)}
    if not provenances:
        raise ValueError(f"no finished run folders under {root} (run the chapters first: make notebooks)")
    return provenances


def per_class(metrics: pd.DataFrame, metric_names=("auroc", "aupr", "f1_max", "pauroc", "pro", "pf1_max"),
              digits: int = 3) -> pd.DataFrame:
    """Per-class values of every (dataset, method, setting), named as the papers name them.

    Each cell is ``mean ± std (n=K)`` over K seeds (``ddof = 0``) or a single run's value; one row per class and the
    class mean (``mean``) last; a column per metric ("–" where the method has no such metric, e.g. pixel metrics of
    an image-level method).

    Parameters
    ----------
    metrics : pandas.DataFrame
        Tidy metrics (``metrics.csv`` rows of one or more run folders).
    metric_names : sequence of str
        Metric keys to show, in this order.
    digits : int
        Decimal places.

    Returns
    -------
    pandas.DataFrame
        Plain columns (no index): dataset, method, setting, class (printed names) and one per metric
        (``zsad.paper_tables.METRIC_NAMES``); blocks in the papers' row order.
    """
    keys = ["dataset", "method", "setting", "class"]
    g = metrics[metrics.metric.isin(metric_names)].groupby(keys + ["shots", "metric"], sort=False)["value"]

    def text(v) -> str:
        v = v.to_numpy(dtype=float)
        if v.size == 1:
            return f"{v[0]:.{digits}f}"
        return f"{v.mean():.{digits}f} ± {v.std(ddof=0):.{digits}f} (n={v.size})"

    cells = g.apply(text).unstack("metric")
    present = [m for m in metric_names if m in cells.columns]
    wide = cells[present].reset_index()
    wide["_order"] = [(*row_order(d, m, k, s), c == "mean", c)
                      for d, m, k, s, c in zip(wide.dataset, wide.method, wide.shots, wide.setting, wide["class"])]
    wide = wide.sort_values("_order", kind="stable").drop(columns="_order").fillna("–")
    wide["method"] = [method_label(m, k) for m, k in zip(wide.method, wide.shots)]
    wide["dataset"] = wide.dataset.map(dataset_label)
    wide["setting"] = wide.setting.map(setting_label)
    wide = wide[keys + present]
    wide.columns = [*keys, *(METRIC_NAMES.get(m, m) for m in present)]
    return wide.reset_index(drop=True)
