import json

import numpy as np
import pandas as pd
import pytest

from zsad import results
from zsad.results import RunFolderError, metrics_csv_bytes, read_predictions, read_run, write_run


def _metrics():
    rows = [
        ("synthetic", cls, "fade", "0-shot", 0, 0, metric, value, value - 0.1, value + 0.05)
        for cls, metric, value in [("weave", "auroc", 0.75), ("grain", "auroc", 1 / 3), ("mean", "auroc", 0.5416666)]
    ]
    return pd.DataFrame(rows, columns=results.METRIC_COLUMNS)


def _predictions(n=4, size=8):
    rng = np.random.default_rng(0)
    masks = np.zeros((n, size, size), bool)
    masks[1, 2:4, 2:4] = True
    return {"paths": [f"weave/test/x/{i}.png" for i in range(n)], "classes": ["weave"] * n,
            "labels": [0, 1, 0, 1], "scores": rng.random(n), "masks": masks,
            "maps": rng.random((n, size, size)).astype(np.float32)}


def _prov():
    return results.provenance({"method": "fade"}, seed=0)


def test_round_trip(tmp_path):
    run = write_run(tmp_path / "r1", _metrics(), _predictions(), _prov())
    back = read_run(run)
    assert back["provenance"]["parameters"] == {"method": "fade"}
    assert list(back["metrics"].columns) == results.METRIC_COLUMNS
    assert np.isclose(back["metrics"].set_index("class").loc["grain", "value"], 1 / 3)
    pred = read_predictions(run)
    assert pred["paths"][3] == "weave/test/x/3.png" and pred["masks"].dtype == bool
    np.testing.assert_array_equal(pred["maps"], _predictions()["maps"])


def test_metrics_csv_is_byte_identical_and_sorted():
    shuffled = _metrics().sample(frac=1, random_state=3)
    assert metrics_csv_bytes(_metrics()) == metrics_csv_bytes(shuffled)
    lines = metrics_csv_bytes(_metrics()).decode().splitlines()
    assert lines[0] == ",".join(results.METRIC_COLUMNS)
    assert [line.split(",")[1] for line in lines[1:]] == ["grain", "mean", "weave"]
    assert "0.3333333333" in lines[1]


def test_two_runs_give_identical_metrics_files(tmp_path):
    a = write_run(tmp_path / "a", _metrics(), _predictions(), _prov())
    b = write_run(tmp_path / "b", _metrics(), _predictions(), _prov())
    assert (a / "metrics.csv").read_bytes() == (b / "metrics.csv").read_bytes()
    assert (a / "predictions.npz").read_bytes() == (b / "predictions.npz").read_bytes()


def test_provenance_contents(tmp_path):
    prov = _prov()
    for key in ("git_commit", "packages", "seed", "parameters", "weights", "few_shot_references", "device"):
        assert key in prov
    assert prov["packages"]["torch"] != "not installed"
    run = write_run(tmp_path / "r", _metrics(), _predictions(), prov)
    assert json.loads((run / "provenance.json").read_text())["seed"] == 0


def test_existing_folder_is_refused_unless_overwrite(tmp_path):
    write_run(tmp_path / "r", _metrics(), _predictions(), _prov())
    with pytest.raises(RunFolderError, match="exists already"):
        write_run(tmp_path / "r", _metrics(), _predictions(), _prov())
    m = _metrics()
    m["value"] = 0.25
    write_run(tmp_path / "r", m, _predictions(), _prov(), overwrite=True)
    assert set(read_run(tmp_path / "r")["metrics"]["value"]) == {0.25}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_crash_leaves_no_folder(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(results, "_write_npz", boom)
    with pytest.raises(KeyboardInterrupt):
        write_run(tmp_path / "r", _metrics(), _predictions(), _prov())
    assert list(tmp_path.iterdir()) == []


def test_bad_metrics_and_predictions_are_rejected(tmp_path):
    with pytest.raises(RunFolderError, match="lacks columns"):
        write_run(tmp_path / "r", _metrics().drop(columns="ci_low"), _predictions(), _prov())
    dup = pd.concat([_metrics(), _metrics().head(1)])
    with pytest.raises(RunFolderError, match="duplicate rows"):
        write_run(tmp_path / "r", dup, _predictions(), _prov())
    bad = _predictions()
    bad["scores"] = bad["scores"][:3]
    with pytest.raises(RunFolderError, match="'scores' has 3 entries, 'paths' has 4"):
        write_run(tmp_path / "r", _metrics(), bad, _prov())
    bad = _predictions()
    bad["maps"] = bad["maps"][:, :4]
    with pytest.raises(RunFolderError, match="masks .* and maps .* differ"):
        write_run(tmp_path / "r", _metrics(), bad, _prov())
    assert list(tmp_path.iterdir()) == []


def test_unfinished_or_missing_runs_are_reported(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "metrics.csv").write_text("x\n")
    with pytest.raises(RunFolderError, match="half: not a finished run folder"):
        read_run(tmp_path / "half")
    with pytest.raises(RunFolderError, match="predictions file not found"):
        read_predictions(tmp_path / "half")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(RunFolderError, match="junk.npz: not a readable predictions"):
        read_predictions(tmp_path / "junk.npz")


def test_write_text_atomic(tmp_path):
    path = results.write_text_atomic(tmp_path / "sub" / "a.txt", "hello\n")
    assert path.read_text() == "hello\n" and [p.name for p in path.parent.iterdir()] == ["a.txt"]
