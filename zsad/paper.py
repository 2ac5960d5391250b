"""Numbers reported in the papers, one cited value per row, and their join with our results.

The book shows a paper's own numbers only in columns labelled "reported in the paper", all read from one file,
``results/paper_reported.csv`` (UTF-8, ``\\n`` line ends, rows sorted by the first seven columns):

``paper``     fade2024 | cheung2024 | tamura2023 | winclip2023 | musc2024 (the document the value was read from)
``table``     the paper's table id as printed ("Tab. 1", "Tab. II")
``dataset``   mvtec | visa
``method``    zsad's method name where one exists (fade, winclip, patchcore, cheung, cheung_no_prompt_generation,
              cheung_no_object_detection, tamura), else a lower-case name (spade, padim); WinCLIP+ is ``winclip``
              with a k-shot setting, as in zsad
``setting``   "0-shot", "1-shot", ...
``variant``   empty for a method's main row; a short key for an ablation row ("gem_patches", "scale_448", ...)
``metric``    zsad's names: auroc, aupr, ap, f1_max (image level); pauroc, pro, pf1_max (pixel level)
``value``     a fraction in [0, 1] (89.6 % -> 0.896)
``std``       the printed standard deviation as a fraction, or empty
``source``    seed file and locator (table, row, column)
``note``      optional caveats

Sources are the seed texts under ``shared/seeds``; how each table was read (the FADE extraction glues mean and std,
e.g. "92.01.0" = 92.0 +- 1.0, and prints every cross-reference to a group of three tables as the group's last
number: 3, 6, 9) is recorded row by row in ``source`` and ``note``. FADE's tables are numbered by their order in
the text: 1 AC results, 2 aggregation rules (no numbers), 3 CLIP vs GEM patches, 4 AS results, 5/6 language vs
vision guidance (AC/AS), 7 prompt ensembles, 8/9 image scale (AC/AS).

>>> rep = paper_reported()                                           # doctest: +SKIP
>>> compare(read_run(run)["metrics"], paper="fade2024")              # doctest: +SKIP
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from zsad.config import PAPER_REPORTED

__all__ = ["paper_reported", "compare", "PaperDataError", "DEFAULT_PATH", "COLUMNS", "PAPERS", "KEY"]

DEFAULT_PATH = PAPER_REPORTED
COLUMNS = ["paper", "table", "dataset", "method", "setting", "variant", "metric", "value", "std", "source", "note"]
PAPERS = ("fade2024", "cheung2024", "tamura2023", "winclip2023", "musc2024")
DATASETS = ("mvtec", "visa")
METRICS = ("auroc", "aupr", "ap", "f1_max", "pauroc", "pro", "pf1_max")
#: The columns that identify one reported value; no two rows of the file share them.
KEY = ["paper", "table", "dataset", "method", "setting", "variant", "metric"]
#: The columns a comparison joins on.
JOIN = ["dataset", "method", "setting", "metric"]
COMPARE_COLUMNS = JOIN + ["ours", "reported", "reported_std", "paper", "source"]

_NAME = re.compile(r"^[a-z0-9][a-z0-9_+.\-]*$")
_SETTING = re.compile(r"^\d+-shot$")


class PaperDataError(ValueError):
    """The reported-values file is malformed; the message names the file and the line."""


def _fraction(text: str, what: str, fail) -> float:
    try:
        x = float(text)
    except ValueError:
        fail(f"{what} {text!r} is not a number")
    if not (math.isfinite(x) and 0.0 <= x <= 1.0):
        fail(f"{what} {text!r} is outside [0, 1] (values are fractions: 89.6 % is 0.896)")
    return x


def paper_reported(path: str | Path | None = None) -> pd.DataFrame:
    """Read and validate the reported-values file.

    Parameters
    ----------
    path : str or Path, optional
        Defaults to ``results/paper_reported.csv`` under the project root.

    Returns
    -------
    DataFrame with :data:`COLUMNS`; ``value`` and ``std`` are floats (``std`` NaN where none is printed),
    ``variant`` and ``note`` are strings ("" where empty).

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    PaperDataError
        Wrong header, an unknown paper/dataset/metric, a malformed setting or name, a value or std outside
        [0, 1], an empty table or source, a repeated key, or one main value reported twice by a paper with
        different numbers. The message names the file and the line (the header is line 1).
    """
    path = Path(path) if path is not None else DEFAULT_PATH
    if not path.is_file():
        raise FileNotFoundError(f"reported-values file not found: {path}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise PaperDataError(f"{path}: cannot be read as a UTF-8 CSV: {exc}") from exc
    if list(df.columns) != COLUMNS:
        missing = [c for c in COLUMNS if c not in df.columns]
        extra = [c for c in df.columns if c not in COLUMNS]
        raise PaperDataError(f"{path}: line 1: columns must be {', '.join(COLUMNS)} (in this order); "
                             f"missing {missing or 'none'}, unexpected {extra or 'none'}")

    values, stds = [], []
    for i, row in enumerate(df.itertuples(index=False), start=2):
        def fail(msg, _i=i):
            raise PaperDataError(f"{path}: line {_i}: {msg}")

        if row.paper not in PAPERS:
            fail(f"paper {row.paper!r} is not one of {', '.join(PAPERS)}")
        if row.dataset not in DATASETS:
            fail(f"dataset {row.dataset!r} is not one of {', '.join(DATASETS)}")
        if row.metric not in METRICS:
            fail(f"metric {row.metric!r} is not one of {', '.join(METRICS)}")
        if not _SETTING.match(row.setting):
            fail(f"setting {row.setting!r} is not like '0-shot' or '4-shot'")
        if not _NAME.match(row.method):
            fail(f"method {row.method!r} must be a lower-case name")
        if row.variant and not _NAME.match(row.variant):
            fail(f"variant {row.variant!r} must be empty or a lower-case key")
        if not row.table.strip():
            fail("table is empty")
        if not row.source.strip():
            fail("source is empty: every value needs a citation")
        values.append(_fraction(row.value, "value", fail))
        stds.append(_fraction(row.std, "std", fail) if row.std != "" else math.nan)
    df["value"] = pd.Series(values, index=df.index, dtype=float)
    df["std"] = pd.Series(stds, index=df.index, dtype=float)

    dup = df.duplicated(KEY, keep=False)
    if dup.any():
        lines = [str(i + 2) for i in df.index[dup]]
        raise PaperDataError(f"{path}: lines {', '.join(lines)}: the same ({', '.join(KEY)}) appears more than once")
    main = df[df["variant"] == ""]
    for key, idx in main.groupby(["paper"] + JOIN, sort=True).groups.items():
        vals = df.loc[idx, "value"]
        if vals.max() - vals.min() > 1e-12:
            lines = ", ".join(str(i + 2) for i in idx)
            raise PaperDataError(f"{path}: lines {lines}: {key[0]} reports different main values for "
                                 f"{tuple(key[1:])}; give one of them a variant")
    return df


def _main_rows(reported: pd.DataFrame) -> pd.DataFrame:
    """One row per (paper, dataset, method, setting, metric) of the main (variant-less) values.

    A paper that repeats a value in two tables (e.g. Cheung's 'Ours' in Tab. II and IV) gives one row: the first
    table's value and std, with the sources of all its tables joined by "; ".
    """
    main = reported[reported["variant"] == ""]
    rows = []
    for key, grp in main.groupby(["paper"] + JOIN, sort=True):
        first = grp.iloc[0]
        std = grp["std"].dropna()
        rows.append(dict(zip(["paper"] + JOIN, key), reported=float(first["value"]),
                         reported_std=float(std.iloc[0]) if len(std) else math.nan,
                         source="; ".join(grp["source"])))
    return pd.DataFrame(rows, columns=["paper"] + JOIN + ["reported", "reported_std", "source"])


def compare(ours: pd.DataFrame, paper: str | None = None, *, reported: pd.DataFrame | None = None) -> pd.DataFrame:
    """Join our class-mean metrics with the papers' main reported values.

    Parameters
    ----------
    ours : DataFrame
        Tidy metrics with at least the columns ``dataset, class, method, setting, metric, value`` (a run
        folder's ``metrics.csv``, or several concatenated). Only ``class == "mean"`` rows are used; where a key
        has several such rows (e.g. seeds), ``ours`` is their mean.
    paper : str, optional
        Keep only this paper's reported values (one of :data:`PAPERS`); by default every paper's, so a key
        reported by two papers gives two rows.
    reported : DataFrame, optional
        The reported values (as returned by :func:`paper_reported`); read from the default file when omitted.

    Returns
    -------
    DataFrame with columns ``dataset, method, setting, metric, ours, reported, reported_std, paper, source``,
    a full outer join on ``(dataset, method, setting, metric)``: ``ours`` is NaN where we have no run,
    ``reported`` (and ``paper``, ``source``) NaN where no paper reports the value. Ablation rows (non-empty
    ``variant``) are not joined. Sorted by the key, then paper.
    """
    need = {"dataset", "class", "method", "setting", "metric", "value"}
    missing = sorted(need - set(ours.columns))
    if missing:
        raise ValueError(f"ours lacks the column(s) {', '.join(missing)}; expected tidy metrics rows")
    if paper is not None and paper not in PAPERS:
        raise ValueError(f"unknown paper {paper!r}; choose one of {', '.join(PAPERS)}")
    rep = _main_rows(paper_reported() if reported is None else reported)
    if paper is not None:
        rep = rep[rep["paper"] == paper]
    mine = ours[ours["class"] == "mean"]
    mine = (mine.assign(value=pd.to_numeric(mine["value"], errors="coerce"))
            .groupby(JOIN, as_index=False, sort=True)["value"].mean().rename(columns={"value": "ours"}))
    out = mine.merge(rep, on=JOIN, how="outer")
    out = out.sort_values(JOIN + ["paper"], na_position="last", kind="stable").reset_index(drop=True)
    return out[COMPARE_COLUMNS]
