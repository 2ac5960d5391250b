import numpy as np
import pytest

from zsad.evaluate import evaluate_predictions, metrics_table
from zsad.results import metrics_csv_bytes, provenance, write_run


def _pred():
    # class a: scores rank 1 of 2 anomalous above both normals -> AUROC = (2 + 1) / 4 = 0.75
    # class b: perfect ranking -> AUROC 1.0; mean over classes 0.875
    masks = np.zeros((8, 4, 4), bool)
    maps = np.zeros((8, 4, 4), np.float32)
    for i in (2, 3, 6, 7):
        masks[i, 1:3, 1:3] = True
        maps[i, 1:3, 1:3] = 1.0
    return {"paths": [f"{c}/{i}.png" for c in "ab" for i in range(4)], "classes": list("aaaabbbb"),
            "labels": [0, 0, 1, 1, 0, 0, 1, 1], "scores": [0.2, 0.5, 0.9, 0.3, 0.1, 0.2, 0.8, 0.9],
            "masks": masks, "maps": maps}


def test_metrics_table_per_class_and_mean():
    t = metrics_table(_pred(), dataset="toy", method="m", setting="0-shot", shots=0, seed=0, n_boot=50)
    auroc = t[t.metric == "auroc"].set_index("class")["value"]
    assert auroc["a"] == pytest.approx(0.75) and auroc["b"] == 1.0 and auroc["mean"] == pytest.approx(0.875)
    pauroc = t[t.metric == "pauroc"].set_index("class")["value"]
    assert pauroc["a"] == 1.0 and pauroc["mean"] == 1.0  # maps equal the masks
    row_a = t[(t.metric == "auroc") & (t["class"] == "a")].iloc[0]
    assert row_a.ci_low <= 0.75 <= row_a.ci_high
    mean_rows = t[t["class"] == "mean"].set_index("metric")
    assert mean_rows.loc["auroc", "ci_low"] <= 0.875 <= mean_rows.loc["auroc", "ci_high"] <= 1.0
    assert mean_rows.loc["pro", "ci_low"] == mean_rows.loc["pro", "ci_high"] == 1.0  # maps equal the masks
    assert set(t.metric) == {"auroc", "aupr", "ap", "f1_max", "pauroc", "pf1_max", "pro"}


def test_metrics_table_is_deterministic():
    kw = dict(dataset="toy", method="m", setting="0-shot", shots=0, seed=0, n_boot=30)
    assert metrics_csv_bytes(metrics_table(_pred(), **kw)) == metrics_csv_bytes(metrics_table(_pred(), **kw))


def test_no_pixel_metrics_without_defect_pixels():
    pred = _pred()
    pred["masks"][:] = False
    t = metrics_table(pred, dataset="toy", method="m", setting="0-shot", shots=0, seed=0, n_boot=0)
    assert set(t.metric) == {"auroc", "aupr", "ap", "f1_max"}


def test_evaluate_predictions_reproduces_the_run(tmp_path):
    kw = dict(dataset="toy", method="m", setting="1-shot", shots=1, seed=3)
    table = metrics_table(_pred(), **kw, n_boot=20)
    prov = provenance({k: v for k, v in kw.items()}, seed=3)
    run = write_run(tmp_path / "run", table, _pred(), prov)
    again = evaluate_predictions(run / "predictions.npz", n_boot=20, seed=0)
    assert metrics_csv_bytes(again) == (run / "metrics.csv").read_bytes()
