import math

import pandas as pd
import pytest

from zsad import paper
from zsad.paper import COLUMNS, DEFAULT_PATH, PaperDataError, compare, paper_reported


@pytest.fixture(scope="module")
def rep():
    return paper_reported()


def _one(rep, **key):
    sel = rep
    key.setdefault("variant", "")
    for col, val in key.items():
        sel = sel[sel[col] == val]
    assert len(sel) == 1, (key, sel)
    return sel.iloc[0]


def test_file_exists_and_validates(rep):
    assert DEFAULT_PATH.is_file(), f"{DEFAULT_PATH} is missing"
    assert list(rep.columns) == COLUMNS
    assert len(rep) > 0 and rep["value"].between(0, 1).all()
    assert set(rep["paper"]) <= set(paper.PAPERS)


def test_file_is_tidy_utf8_sorted():
    raw = DEFAULT_PATH.read_bytes()
    raw.decode("utf-8")
    assert b"\r" not in raw and raw.endswith(b"\n")
    df = pd.read_csv(DEFAULT_PATH, dtype=str, keep_default_na=False)
    keys = list(df[paper.KEY].itertuples(index=False, name=None))
    assert keys == sorted(keys)


@pytest.mark.parametrize("key, value, std", [
    # FADE abstract and AS table: pAUROC 89.6 (91.5) zero-shot, 95.4 (97.5) 1-shot
    (dict(paper="fade2024", dataset="mvtec", method="fade", setting="0-shot", metric="pauroc"), 0.896, 0.0),
    (dict(paper="fade2024", dataset="mvtec", method="fade", setting="1-shot", metric="pauroc"), 0.954, 0.003),
    (dict(paper="fade2024", dataset="visa", method="fade", setting="0-shot", metric="pauroc"), 0.915, 0.0),
    (dict(paper="fade2024", dataset="visa", method="fade", setting="1-shot", metric="pauroc"), 0.975, 0.001),
    # "92.01.0" is 92.0 +- 1.0 (PatchCore 1-shot MVTec pAUROC)
    (dict(paper="fade2024", dataset="mvtec", method="patchcore", setting="1-shot", metric="pauroc"), 0.920, 0.010),
    (dict(paper="fade2024", dataset="mvtec", method="winclip", setting="0-shot", metric="auroc"), 0.918, 0.0),
    (dict(paper="cheung2024", table="Tab. II", dataset="mvtec", method="cheung", setting="0-shot", metric="auroc"),
     0.930, None),
    (dict(paper="cheung2024", table="Tab. II", dataset="mvtec", method="cheung", setting="0-shot", metric="aupr"),
     0.965, None),
    (dict(paper="cheung2024", table="Tab. III", dataset="visa", method="cheung", setting="0-shot", metric="auroc"),
     0.829, None),
    (dict(paper="cheung2024", table="Tab. III", dataset="visa", method="cheung", setting="0-shot", metric="aupr"),
     0.857, None),
    (dict(paper="cheung2024", table="Tab. V", dataset="visa", method="cheung_no_object_detection",
          setting="0-shot", metric="auroc"), 0.792, None),
])
def test_spot_values(rep, key, value, std):
    row = _one(rep, **key)
    assert row["value"] == pytest.approx(value, abs=1e-9)
    assert math.isnan(row["std"]) if std is None else row["std"] == pytest.approx(std, abs=1e-9)
    assert row["source"].startswith("seeds/")


def test_fade_ablation_variants(rep):
    assert _one(rep, table="Tab. 3", dataset="mvtec", variant="clip_patches", metric="pauroc")["value"] == 0.18
    assert _one(rep, table="Tab. 9", setting="0-shot", variant="multi_scale", metric="pauroc")["value"] == 0.896
    assert _one(rep, table="Tab. 7", dataset="visa", variant="winclip_prompts", metric="pauroc")["value"] == 0.74


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        paper_reported(tmp_path / "nope.csv")


def _write(tmp_path, rows, header=COLUMNS):
    path = tmp_path / "bad.csv"
    pd.DataFrame(rows, columns=header).to_csv(path, index=False, lineterminator="\n")
    return path


_GOOD = ["fade2024", "Tab. 4", "mvtec", "fade", "0-shot", "", "pauroc", "0.896", "0", "seeds/002 x", ""]


def test_malformed_column_names_file(tmp_path):
    path = _write(tmp_path, [_GOOD], header=COLUMNS[:-1] + ["remark"])
    with pytest.raises(PaperDataError, match=r"bad\.csv.*line 1.*remark"):
        paper_reported(path)


def test_value_out_of_range_names_file_and_line(tmp_path):
    bad = list(_GOOD)
    bad[7] = "1.5"
    path = _write(tmp_path, [_GOOD[:6] + ["pro"] + _GOOD[7:], bad])
    with pytest.raises(PaperDataError, match=r"bad\.csv: line 3: value '1.5'"):
        paper_reported(path)


@pytest.mark.parametrize("col, val, msg", [(0, "fade2025", "paper"), (2, "mvtec_ad", "dataset"),
                                           (6, "iauroc", "metric"), (4, "one-shot", "setting"),
                                           (8, "2", "std"), (9, "", "source")])
def test_other_malformed_fields(tmp_path, col, val, msg):
    bad = list(_GOOD)
    bad[col] = val
    with pytest.raises(PaperDataError, match=rf"bad\.csv: line 2: {msg}"):
        paper_reported(_write(tmp_path, [bad]))


def test_duplicate_key_rejected(tmp_path):
    with pytest.raises(PaperDataError, match=r"bad\.csv: lines 2, 3"):
        paper_reported(_write(tmp_path, [_GOOD, _GOOD]))


def test_conflicting_main_values_rejected(tmp_path):
    other = list(_GOOD)
    other[1], other[7] = "Tab. 9", "0.5"
    with pytest.raises(PaperDataError, match="different main values"):
        paper_reported(_write(tmp_path, [_GOOD, other]))


def test_compare_join(rep):
    ours = pd.DataFrame(
        [("mvtec", "mean", "fade", "0-shot", "pauroc", 0.88),
         ("mvtec", "bottle", "fade", "0-shot", "pauroc", 0.10),   # per-class rows are ignored
         ("mvtec", "mean", "cheung", "0-shot", "auroc", 0.91),
         ("mvtec", "mean", "cheung", "0-shot", "auroc", 0.93),    # two seeds -> mean 0.92
         ("synthetic", "mean", "fade", "0-shot", "auroc", 0.70)],  # no paper reports this
        columns=["dataset", "class", "method", "setting", "metric", "value"])
    out = compare(ours, reported=rep)
    assert list(out.columns) == ["dataset", "method", "setting", "metric", "ours", "reported", "reported_std",
                                 "paper", "source"]
    key = ["dataset", "method", "setting", "metric"]
    ix = out.set_index(key)

    row = ix.loc[("mvtec", "fade", "0-shot", "pauroc")]
    assert row["ours"] == pytest.approx(0.88) and row["reported"] == pytest.approx(0.896)
    assert row["reported_std"] == 0.0 and row["paper"] == "fade2024"

    row = ix.loc[("mvtec", "cheung", "0-shot", "auroc")]   # Tab. II and Tab. IV agree: one row, both cited
    assert row["ours"] == pytest.approx(0.92) and row["reported"] == pytest.approx(0.930)
    assert "Tab. II" in row["source"] and "Tab. IV" in row["source"]

    row = ix.loc[("synthetic", "fade", "0-shot", "auroc")]
    assert row["ours"] == pytest.approx(0.70) and math.isnan(row["reported"]) and pd.isna(row["paper"])

    row = ix.loc[("visa", "fade", "1-shot", "pauroc")]     # reported, no run of ours
    assert math.isnan(row["ours"]) and row["reported"] == pytest.approx(0.975)

    # WinCLIP 0-shot MVTec AUROC is reported by both papers: one row per paper
    both = out[(out.dataset == "mvtec") & (out.method == "winclip") & (out.setting == "0-shot")
               & (out.metric == "auroc")]
    assert sorted(both["paper"]) == ["cheung2024", "fade2024"]

    # ablation rows never join
    assert not out["source"].fillna("").str.contains(r"Tab\. [35-9]\b").any()

    only = compare(ours, "cheung2024", reported=rep)
    assert set(only["paper"].dropna()) == {"cheung2024"}
    assert math.isnan(only.set_index(key).loc[("mvtec", "fade", "0-shot", "pauroc"), "reported"])


def test_compare_rejects_bad_input(rep):
    with pytest.raises(ValueError, match="class"):
        compare(pd.DataFrame({"dataset": [], "method": []}), reported=rep)
    with pytest.raises(ValueError, match="unknown paper"):
        compare(pd.DataFrame(columns=["dataset", "class", "method", "setting", "metric", "value"]), "fade",
                reported=rep)
