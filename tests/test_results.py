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
    with pytest.raises(RunFolderError, match="a run folder exists there already; .* --overwrite"):
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


def test_overwrite_never_replaces_a_folder_zsad_did_not_write(tmp_path):
    # the data-loss defect: `--root X --out X --overwrite` deleted the dataset
    data = tmp_path / "dataset"
    (data / "bottle" / "test" / "good").mkdir(parents=True)
    (data / "bottle" / "test" / "good" / "000.png").write_bytes(b"png")
    with pytest.raises(RunFolderError, match="not a run folder written by zsad.*--overwrite or not"):
        write_run(data, _metrics(), _predictions(), _prov(), overwrite=True)
    assert (data / "bottle" / "test" / "good" / "000.png").read_bytes() == b"png"
    # a run folder with a file the user added is not ours alone either
    run = write_run(tmp_path / "run", _metrics(), _predictions(), _prov())
    (run / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="not a run folder written by zsad"):
        write_run(run, _metrics(), _predictions(), _prov(), overwrite=True)
    assert (run / "notes.txt").read_text() == "mine"
    # a provenance.json that is not ours does not make a folder ours
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "provenance.json").write_text("{}")
    with pytest.raises(RunFolderError, match="not a run folder written by zsad"):
        write_run(fake, _metrics(), _predictions(), _prov(), overwrite=True)
    # an existing file as --out, and a run folder inside the protected dataset root
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(RunFolderError, match="file.txt: exists and is not a folder"):
        write_run(tmp_path / "file.txt", _metrics(), _predictions(), _prov())
    with pytest.raises(RunFolderError, match="inside or over .*dataset"):
        results.check_run_target(data / "run", protect=[data])
    with pytest.raises(RunFolderError, match="inside or over"):
        results.check_run_target(tmp_path, protect=[data])
    assert results.check_run_target(tmp_path / "empty-new", protect=[data]) == tmp_path / "empty-new"


def test_run_files_get_ordinary_permissions(tmp_path):
    import os
    import stat

    run = write_run(tmp_path / "r", _metrics(), _predictions(), _prov())
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(run.stat().st_mode) == 0o777 & ~umask
    for name in results.RUN_FILES:
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o666 & ~umask
    text = results.write_text_atomic(tmp_path / "m.csv", "a\n")
    assert stat.S_IMODE(text.stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("damage", ["truncate", "crc"])
def test_damaged_predictions_file_is_a_clear_error(tmp_path, damage, capsys):
    from zsad.cli import main

    run = write_run(tmp_path / "r", _metrics(), _predictions(n=4, size=64), _prov())
    path = run / "predictions.npz"
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:  # flip bytes inside the deflated maps member: the zip CRC no longer matches
        i = data.find(b"maps.npy") + 200
        data[i:i + 16] = bytes(b ^ 0xFF for b in data[i:i + 16])
    path.write_bytes(bytes(data))
    with pytest.raises(RunFolderError, match="predictions.npz: not a readable predictions .npz, truncated or corrupt"):
        read_predictions(path)
    assert main(["eval", "--predictions", str(path), "--n-boot", "0"]) == 2
    err = capsys.readouterr().err
    assert "zsad: error:" in err and "Traceback" not in err


def test_commit_is_dirty_only_for_changes_in_code_prompts_or_data(tmp_path):
    import subprocess

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    for rel in ("zsad/a.py", "notebooks/t.ipynb", "prompts/p.json"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("0\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    assert not results.git_commit(tmp_path).endswith("+dirty")
    (tmp_path / "notebooks/t.ipynb").write_text("executed\n")  # papermill rewrites notebooks in place
    (tmp_path / "untracked.txt").write_text("x")
    assert not results.git_commit(tmp_path).endswith("+dirty")
    (tmp_path / "prompts/p.json").write_text("1\n")
    assert results.git_commit(tmp_path).endswith("+dirty")
