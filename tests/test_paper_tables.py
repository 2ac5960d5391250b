"""The papers' tables in their shapes: known cells from hand-made metrics, every reported value placed."""
import pandas as pd
import pytest

from zsad.paper import paper_reported
from zsad.paper_tables import TABLES, fusion_rules, paper_shaped
from zsad.results import METRIC_COLUMNS


def _metrics(rows):
    return pd.DataFrame([(d, "mean", m, s, int(s[0]), seed, metric, v, float("nan"), float("nan"))
                         for d, m, s, seed, metric, v in rows], columns=METRIC_COLUMNS)


def test_cells_show_ours_beside_the_paper():
    ours = _metrics([("mvtec", "fade", "1-shot", 0, "auroc", 0.90), ("mvtec", "fade", "1-shot", 1, "auroc", 0.92),
                     ("magnetic_tile", "winclip", "0-shot", 0, "auroc", 0.5)])
    t = paper_shaped(ours, "fade2024", "Tab. 1").frame
    fade1 = t[(t.setting == "1-shot") & (t.method == "FADE")].iloc[0]
    assert fade1["AUROC · MVTec-AD · ours"] == "91.0 ± 1.0 (n=2)"
    assert fade1["AUROC · MVTec-AD · paper"] == "93.9 ± 0.7"  # printed 93.9 ± 0.7
    assert fade1["AUROC · VisA · paper"] != "not printed" and "AUROC · VisA · ours" not in t.columns
    assert fade1["AUROC · magnetic tile · ours"] == "not run"
    win0 = t[(t.setting == "0-shot") & (t.method == "WinCLIP")].iloc[0]
    assert win0["AUROC · magnetic tile · ours"] == "50.0 (1 run)" and win0["AUROC · MVTec-AD · paper"] == "91.8"
    assert list(t.columns[:2]) == ["setting", "method"] and not t.isna().any().any()
    assert len(t) == 11  # 0-shot: WinCLIP, FADE; 1/2/4-shot: PatchCore, WinCLIP+, FADE


def test_pooled_llm_seeds_and_missing_bodies():
    ours = _metrics([("mvtec", "fade", f"0-shot winclip + llm_generic_seed{i}", 0, "pauroc", 0.80 + 0.01 * i)
                     for i in range(5)])
    t = paper_shaped(ours, "fade2024", "Tab. 7").frame.set_index("prompts")
    assert t.loc["WinCLIP + LLM prompts", "pAUROC · MVTec-AD · ours"] == "82.0 ± 1.4 (n=5)"
    assert t.loc["WinCLIP prompts", "pAUROC · MVTec-AD · paper"] == "83.7"
    t3 = paper_shaped(ours, "cheung2024", "Tab. III").frame.set_index("method")
    assert t3.loc["Ours", "AUROC · VisA · paper"] == "82.9"
    assert t3.loc["SPADE [23] (1-shot)", "AUROC · VisA · paper"] == "not printed"
    assert t3.loc["SPADE [23] (1-shot)", "AUROC · MVTec-AD · ours"] == "not in zsad"


@pytest.mark.parametrize("key", sorted(TABLES))
def test_every_reported_value_of_a_table_has_its_cell(key):
    paper, table = key
    rep = paper_reported()
    rep = rep[(rep.paper == paper) & (rep.table == table)]
    out = paper_shaped(_metrics([]), paper, table)
    md, frame = out.to_markdown(), out.frame
    for r in rep.itertuples():
        assert f"{100 * r.value:.1f}" in md, (r.dataset, r.method, r.setting, r.variant, r.metric)
    paper_cells = frame[[c for c in frame.columns if c.endswith("· paper")]].to_numpy().ravel()
    assert sum(c != "not printed" for c in paper_cells) == len(rep)  # each reported value in exactly one cell
    assert "nan" not in md.lower()


def test_fusion_rules_come_from_the_code():
    md = fusion_rules().to_markdown()
    assert "clip01(0.5 M_lang + 0.5 · 80 M_vis)" in md and "clip01(0.15 M_lang + 0.85 · 3.5 M_vis)" in md


def test_musc_table_places_each_reported_value_and_ours_beside_it():
    """MuSc's table (zero-shot, MVTec AD and VisA): hand-made reported rows land in exactly one cell each, and our
    MuSc runs fill the "ours" cells of their dataset."""
    rows = [("musc2024", "Tab. 1", ds, "musc", "0-shot", "", m, v, float("nan"), "hand-made", "")
            for ds, vals in (("mvtec", (0.901, 0.902, 0.903)), ("visa", (0.801, 0.802, 0.803)))
            for m, v in zip(("auroc", "pauroc", "pro"), vals)]
    rep = pd.DataFrame(rows, columns=["paper", "table", "dataset", "method", "setting", "variant", "metric", "value",
                                      "std", "source", "note"])
    ours = _metrics([("synthetic", "musc", "0-shot", 0, "pauroc", 0.75), ("synthetic", "fade", "0-shot", 0, "pauroc",
                                                                        0.5)])
    t = paper_shaped(ours, "musc2024", "Tab. 1", reported=rep).frame.set_index("method")
    assert t.loc["MuSc", "AUROC · MVTec-AD · paper"] == "90.1" and t.loc["MuSc", "PRO · VisA · paper"] == "80.3"
    assert t.loc["MuSc", "pAUROC · synthetic · ours"] == "75.0 (1 run)"
    assert t.loc["MuSc", "AUROC · synthetic · ours"] == "not run"
    cells = t[[c for c in t.columns if c.endswith("· paper")]].to_numpy().ravel()
    assert sorted(cells) == sorted(f"{100 * r[7]:.1f}" for r in rows)  # each value in exactly one cell
