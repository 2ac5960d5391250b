"""The papers' tables in their own shapes: the paper's rows and columns, each cell ours beside the paper's.

A :class:`PaperTable` names, for one table of one paper, its rows (labels as printed, and the keys that pick a
reported value and our runs) and its columns (a metric or a shot count). :func:`paper_shaped` fills it from tidy
metrics (one or more run folders' ``metrics.csv``) and ``results/paper_reported.csv``:

- **ours**: class-mean values over our runs of that (dataset, method, setting), as ``mean ± std (n)``, with the
  standard deviation over few-shot seeds (or over the LLM prompt seeds where a row pools them; ``ddof = 0``) and
  ``n`` the number of runs; a single run shows its value and ``(1 run)``. Bootstrap intervals over test images are
  a different quantity and never appear in these tables (the chapters' own tables show them).
- **paper**: the value as printed, in percent, with the printed standard deviation where there is one.

Every dataset the paper reports gets a "paper" column and every dataset we ran an "ours" column, so the default
job (synthetic and magnetic-tile data) shows our numbers next to the paper's MVTec AD / VisA numbers without
pretending they are the same experiment: the column header names the dataset. Empty cells say why they are empty:
``not run`` (we did not run it), ``not in zsad`` (a baseline zsad does not implement), ``not printed`` (the
source has no value for it).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from zsad.paper import paper_reported

DATASET_NAMES = {"mvtec": "MVTec-AD", "visa": "VisA", "magnetic_tile": "magnetic tile", "synthetic": "synthetic"}
METRIC_NAMES = {"auroc": "AUROC", "aupr": "AUPR", "ap": "AP", "f1_max": "F1-max", "pauroc": "pAUROC",
                "pro": "PRO", "pf1_max": "pixel F1-max"}
#: Methods of the papers' tables that zsad does not implement.
NOT_IN_ZSAD = ("spade", "padim")


@dataclass(frozen=True)
class Row:
    """One printed row: its labels and the keys it fixes (``method``, ``setting``, ``variant`` of the reported
    value; ``ours``: the suffixes of our ``setting`` column after ``"<k>-shot"``, several when a row pools runs)."""

    labels: tuple[str, ...]
    keys: dict = field(default_factory=dict)
    ours: tuple[str, ...] = ("",)


@dataclass(frozen=True)
class Column:
    label: str
    keys: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PaperTable:
    paper: str
    table: str
    title: str
    header: tuple[str, ...]  # names of the label columns
    rows: tuple[Row, ...]
    columns: tuple[Column, ...]
    datasets: tuple[str, ...] = ("mvtec", "visa")  # the datasets the paper reports in this table
    note: str = ""


class MarkdownTable:
    """A table shown as Markdown in the book and as the same text in plain-text outputs (which nbval compares)."""

    def __init__(self, frame: pd.DataFrame, caption: str = "", note: str = ""):
        self.frame, self.caption, self.note = frame, caption, note

    def to_markdown(self) -> str:
        cols = list(self.frame.columns)
        lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in self.frame.itertuples(index=False)]
        parts = [f"**{self.caption}**", ""] if self.caption else []
        parts += lines
        if self.note:
            parts += ["", self.note]
        return "\n".join(parts)

    def _repr_markdown_(self) -> str:
        return self.to_markdown()

    def __repr__(self) -> str:
        return self.to_markdown()


def _main_rows(k_values=(0, 1, 2, 4)) -> tuple[Row, ...]:
    rows = []
    for k in k_values:
        setting = f"{k}-shot"
        if k == 0:
            rows.append(Row((setting, "WinCLIP"), {"method": "winclip", "setting": setting}))
        else:
            rows.append(Row((setting, "PatchCore"), {"method": "patchcore", "setting": setting}))
            rows.append(Row((setting, "WinCLIP+"), {"method": "winclip", "setting": setting}))
        rows.append(Row((setting, "FADE"), {"method": "fade", "setting": setting}))
    return tuple(rows)


def _metric_columns(metrics) -> tuple[Column, ...]:
    return tuple(Column(METRIC_NAMES[m], {"metric": m}) for m in metrics)


def _shot_columns(shots, metric) -> tuple[Column, ...]:
    return tuple(Column(f"{k}-shot", {"setting": f"{k}-shot", "metric": metric}) for k in shots)


def _fade_rows(variants, setting=None) -> tuple[Row, ...]:
    """FADE rows keyed by the paper's variant; ``variants``: (label, paper variant, our setting suffixes)."""
    base = {"method": "fade", **({"setting": setting} if setting else {})}
    return tuple(Row((label,), {**base, "variant": v}, tuple(ours)) for label, v, ours in variants)


_GUIDANCE = (("✓ ✓ (language + vision)", "language+vision", ("",)),
             ("✓ ✗ (language only)", "language_only", ("language only",)),
             ("✗ ✓ (vision only)", "vision_only", ("vision only",)))
_SCALES = (("240", "scale_240", ("240 px",)), ("448", "scale_448", ("448 px",)), ("896", "scale_896", ("896 px",)),
           ("Multi-scale", "multi_scale", ("multi-scale",)))
_LLM_SEEDS = tuple(f"winclip + llm_generic_seed{i}" for i in range(5))
_CHEUNG_BASELINES = (Row(("WinCLIP [5] (0-shot)",), {"method": "winclip", "setting": "0-shot"}),
                     Row(("SPADE [23] (1-shot)",), {"method": "spade", "setting": "1-shot"}),
                     Row(("PaDiM [24] (1-shot)",), {"method": "padim", "setting": "1-shot"}),
                     Row(("PatchCore [25] (1-shot)",), {"method": "patchcore", "setting": "1-shot"}),
                     Row(("Ours",), {"method": "cheung", "setting": "0-shot"}))
_CHEUNG_ABLATION = (Row(("Ours",), {"method": "cheung", "setting": "0-shot"}),
                    Row(("Ours w/o prompt generation",), {"method": "cheung_no_prompt_generation",
                                                          "setting": "0-shot"}),
                    Row(("Ours w/o object detection",), {"method": "cheung_no_object_detection",
                                                         "setting": "0-shot"}))

#: Every table of the three papers that prints numbers, by (paper, table id as printed).
TABLES: dict[tuple[str, str], PaperTable] = {(t.paper, t.table): t for t in (
    PaperTable("fade2024", "Tab. 1", "FADE Tab. 1: anomaly classification (AC), class means", ("setting", "method"),
               _main_rows(), _metric_columns(("auroc", "aupr", "f1_max"))),
    PaperTable("fade2024", "Tab. 4", "FADE Tab. 4: anomaly segmentation (AS), class means", ("setting", "method"),
               _main_rows(), _metric_columns(("pauroc", "pro", "pf1_max"))),
    PaperTable("fade2024", "Tab. 3", "FADE Tab. 3: CLIP vs GEM patch embeddings, language-guided zero-shot AS",
               ("patch embeddings",),
               _fade_rows((("CLIP", "clip_patches", ("language clip",)), ("GEM", "gem_patches", ("language gem",))),
                          "0-shot"), _metric_columns(("pauroc",))),
    PaperTable("fade2024", "Tab. 5", "FADE Tab. 5: language vs vision guidance for AC (AUROC)", ("guidance",),
               _fade_rows(_GUIDANCE), _shot_columns((1, 4), "auroc"), ("mvtec",),
               "The paper's two check-mark headers are lost in the text extraction; read as (language, vision)."),
    PaperTable("fade2024", "Tab. 6", "FADE Tab. 6: language vs vision guidance for AS (pAUROC)", ("guidance",),
               _fade_rows(_GUIDANCE), _shot_columns((0, 1, 4), "pauroc"), ("mvtec",),
               "The paper's two check-mark headers are lost in the text extraction; read as (language, vision)."),
    PaperTable("fade2024", "Tab. 7", "FADE Tab. 7: prompt ensembles, language-guided zero-shot AS", ("prompts",),
               _fade_rows((("WinCLIP prompts", "winclip_prompts", ("winclip prompts",)),
                           ("WinCLIP + LLM prompts", "winclip+llm_prompts", _LLM_SEEDS)), "0-shot"),
               _metric_columns(("pauroc",)), note="Paper: ChatGPT's ensemble. Ours: the local LLM's ensembles of five "
               "seeds, pooled (n counts them)."),
    PaperTable("fade2024", "Tab. 8", "FADE Tab. 8: image scale, AC (AUROC)", ("scale",), _fade_rows(_SCALES),
               _shot_columns((1, 2, 4), "auroc"), ("mvtec",)),
    PaperTable("fade2024", "Tab. 9", "FADE Tab. 9: image scale, AS (pAUROC)", ("scale",), _fade_rows(_SCALES),
               _shot_columns((0, 1, 2, 4), "pauroc"), ("mvtec",)),
    PaperTable("cheung2024", "Tab. II", "Cheung et al. Tab. II: MVTec-AD, image level", ("method",),
               _CHEUNG_BASELINES, _metric_columns(("auroc", "aupr")), ("mvtec",),
               "The paper prints 'PathCore' (a typo for PatchCore, its ref. [25])."),
    PaperTable("cheung2024", "Tab. III", "Cheung et al. Tab. III: VisA, image level", ("method",),
               _CHEUNG_BASELINES, _metric_columns(("auroc", "aupr")), ("visa",),
               "The body of Tab. III is missing from the source text; only the 'Ours' values are known, from the "
               "paper's text (Sec. IV-B)."),
    PaperTable("cheung2024", "Tab. IV", "Cheung et al. Tab. IV: ablation on MVTec-AD", ("method",),
               _CHEUNG_ABLATION, _metric_columns(("auroc", "aupr")), ("mvtec",)),
    PaperTable("cheung2024", "Tab. V", "Cheung et al. Tab. V: ablation on VisA", ("method",),
               _CHEUNG_ABLATION, _metric_columns(("auroc", "aupr")), ("visa",)),
    PaperTable("musc2024", "Tab. 1", "MuSc (Li et al., ICLR 2024): zero-shot, class means", ("method",),
               (Row(("MuSc",), {"method": "musc", "setting": "0-shot"}),),
               _metric_columns(("auroc", "pauroc", "pro")),
               note="Paper: CLIP ViT-L/14-336 at 518 px, all test images of a class scored together (transductive); "
                    "its PRO is the 200-threshold approximation, ours the exact MVTec PRO."),
)}


def _pct(value: float, digits: int = 1) -> str:
    return f"{100 * value:.{digits}f}"


def _ours_text(values: np.ndarray) -> str:
    if values.size == 0:
        return "not run"
    if values.size == 1:
        return f"{_pct(values[0])} (1 run)"
    return f"{_pct(values.mean())} ± {_pct(values.std(ddof=0))} (n={values.size})"


def _paper_text(rep: pd.DataFrame) -> str:
    if rep.empty:
        return "not printed"
    row = rep.iloc[0]
    std = row["std"]
    return _pct(row["value"]) + (f" ± {_pct(std)}" if pd.notna(std) and std > 0 else "")


def paper_shaped(metrics: pd.DataFrame, paper: str, table: str, *, reported: pd.DataFrame | None = None,
                 datasets=None) -> MarkdownTable:
    """One paper table in its shape, ours beside the paper's (rules in the module docstring).

    Parameters
    ----------
    metrics : tidy metrics of our runs (``metrics.csv`` rows of one or more run folders).
    paper, table : a key of :data:`TABLES`, e.g. ``("fade2024", "Tab. 1")``.
    reported : the reported values (default: ``results/paper_reported.csv``).
    datasets : our datasets to show (default: those in ``metrics``, in the order mvtec, visa, then the others).
    """
    if (paper, table) not in TABLES:
        raise ValueError(f"no table {table!r} of {paper!r}; known: "
                         + ", ".join(f"{p} {t}" for p, t in TABLES))
    spec = TABLES[(paper, table)]
    rep = paper_reported() if reported is None else reported
    rep = rep[(rep["paper"] == paper) & (rep["table"] == table)]
    means = metrics[metrics["class"] == "mean"]
    order = {d: i for i, d in enumerate(DATASET_NAMES)}
    ours_ds = list(datasets) if datasets is not None else sorted(set(means["dataset"]),
                                                                 key=lambda d: (order.get(d, 99), d))
    shown = list(spec.datasets) + [d for d in ours_ds if d not in spec.datasets]
    records = []
    for row in spec.rows:
        record = dict(zip(spec.header, row.labels))
        for col in spec.columns:
            keys = {**row.keys, **col.keys}
            for ds in shown:
                name = f"{col.label} · {DATASET_NAMES.get(ds, ds)}"
                if ds in ours_ds:
                    if keys["method"] in NOT_IN_ZSAD:
                        record[f"{name} · ours"] = "not in zsad"
                    else:
                        settings = [keys["setting"] + (f" {s}" if s else "") for s in row.ours]
                        sel = means[(means["dataset"] == ds) & (means["method"] == keys["method"])
                                    & means["setting"].isin(settings) & (means["metric"] == keys["metric"])]
                        record[f"{name} · ours"] = _ours_text(sel["value"].to_numpy(dtype=float))
                if ds in spec.datasets:
                    hit = rep[(rep["dataset"] == ds) & (rep["method"] == keys["method"])
                              & (rep["setting"] == keys["setting"]) & (rep["variant"] == keys.get("variant", ""))
                              & (rep["metric"] == keys["metric"])]
                    record[f"{name} · paper"] = _paper_text(hit)
        records.append(record)
    notes = [spec.note] if spec.note else []
    notes.append("Ours: mean ± std over runs (n runs; seeds of the few-shot references"
                 + (", or of the LLM prompts" if any(len(r.ours) > 1 for r in spec.rows) else "")
                 + "), in percent. Paper: as printed, in percent.")
    return MarkdownTable(pd.DataFrame(records), caption=spec.title, note=" ".join(notes))


def fusion_rules() -> MarkdownTable:
    """FADE's Tab. 2: how language and vision guidance combine per setting, read from :class:`FadeConfig`'s
    resolved defaults (so the table shows what the code does)."""
    from zsad.methods.fade import FadeConfig

    zero, k = FadeConfig(shots=0).resolved(), FadeConfig(shots=1).resolved()
    w0, wk = zero.vision_weight, k.vision_weight
    rows = [
        {"setting": "0-shot", "vision memory": f"the query's own patches ({zero.vision_stream.upper()}, 2nd "
         "neighbour)", "image score (AC)": "clip01(s_lang): language only",
         "anomaly map (AS)": f"clip01({1 - w0:g} M_lang + {w0:g} · {zero.vision_multiplier:g} M_vis)"},
        {"setting": "k-shot", "vision memory": f"the k reference images' patches ({k.vision_stream.upper()}, "
         "1st neighbour)", "image score (AC)": f"clip01((s_lang + max {k.vision_multiplier:g} M_vis) / 2)",
         "anomaly map (AS)": f"clip01({1 - wk:g} M_lang + {wk:g} · {k.vision_multiplier:g} M_vis)"},
        {"setting": "language only", "vision memory": "none", "image score (AC)": "s_lang",
         "anomaly map (AS)": "M_lang"},
        {"setting": "vision only", "vision memory": "as above", "image score (AC)": "max m M_vis",
         "anomaly map (AS)": "m M_vis"},
    ]
    return MarkdownTable(pd.DataFrame(rows), caption="FADE Tab. 2: combining language and vision guidance",
                         note=f"s_lang: softmax of the CLS token against the two text prototypes (temperature "
                              f"{zero.temperature:g}); M_lang, M_vis: the language and vision maps; m the vision "
                              "multiplier. Read from zsad.methods.fade.FadeConfig's defaults, which follow the "
                              "official code.")
