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
    (tmp_path / "no_metrics").mkdir()
    (tmp_path / "no_metrics" / "provenance.json").write_text("{}")
    with pytest.raises(RunFolderError, match=r"no_metrics: not a finished run folder \(no metrics.csv\)"):
        read_run(tmp_path / "no_metrics")
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


# ------------------------------------------------------------------------------------------- compact map storage

def _two_class_predictions(size=16):
    """Two classes on very different value ranges, planted defects that the maps rank imperfectly."""
    rng = np.random.default_rng(1)
    n = 6
    masks = np.zeros((n, size, size), bool)
    masks[1, 3:7, 3:7] = masks[2, 8:12, 2:5] = masks[4, 0:5, 10:15] = masks[5, 9:14, 9:14] = True
    maps = (rng.random((n, size, size)) + 0.6 * masks).astype(np.float32)
    maps[3:] = 50.0 + 400.0 * maps[3:]  # class "grain": a range like PatchCore's distances
    return {"paths": [f"c/test/{i}.png" for i in range(n)], "classes": ["weave"] * 3 + ["grain"] * 3,
            "labels": [0, 1, 1, 0, 1, 1], "scores": rng.random(n), "masks": masks, "maps": maps}


def test_uint8_storage_quantises_each_class_on_its_own_range():
    """Hand-computed codes: 256 levels between a class's smallest and largest value."""
    maps = np.array([[[0.0, 1.0]], [[0.5, 0.25]], [[10.0, 20.0]], [[15.0, 12.0]]], np.float32)
    out = results.encode_maps(maps, ["a", "a", "b", "b"], "uint8")
    np.testing.assert_array_equal(out["maps"].reshape(4, 2), [[0, 255], [128, 64], [0, 255], [128, 51]])
    np.testing.assert_array_equal(out["maps_offset"], [0, 0, 10, 10])
    np.testing.assert_allclose(out["maps_scale"], [1 / 255, 1 / 255, 10 / 255, 10 / 255])
    back = results.decode_maps(out)
    assert back.dtype == np.float32
    assert np.abs(back - maps).max() <= 0.5 * 10 / 255 + 1e-6  # half a level of the wider class
    np.testing.assert_array_equal(results.decode_maps(out, dequantise=False), out["maps"])
    const = results.encode_maps(np.full((2, 1, 2), 3.5, np.float32), ["a", "a"], "uint8")
    np.testing.assert_array_equal(results.decode_maps(const), np.full((2, 1, 2), 3.5, np.float32))


@pytest.mark.parametrize("storage", results.MAP_STORAGES)
def test_stored_run_evaluates_to_its_metrics(tmp_path, storage):
    """Metrics computed on the maps as stored are what `zsad eval` recomputes from the run folder, exactly; the
    maps read back are float32 and within the storage's rounding of the computed ones."""
    from zsad.evaluate import evaluate_predictions, metrics_table

    pred = _two_class_predictions()
    stored = results.apply_map_storage(pred, storage)
    table = metrics_table(stored, dataset="synthetic", method="fade", setting="0-shot", shots=0, seed=0, n_boot=20)
    prov = results.provenance({"dataset": "synthetic", "method": "fade", "setting": "0-shot", "shots": 0,
                               "seed": 0}, seed=0)
    run = write_run(tmp_path / storage, table, pred, prov, map_storage=storage)
    again = evaluate_predictions(run, n_boot=20)
    assert metrics_csv_bytes(again) == (run / "metrics.csv").read_bytes()
    back = read_predictions(run)
    assert back["maps"].dtype == np.float32
    np.testing.assert_array_equal(back["maps"], stored["maps"])
    err = np.abs(back["maps"] - pred["maps"])
    bound = {"float32": 0.0, "float16": 2.0 ** -11 * np.abs(pred["maps"]),
             "uint8": np.where(np.arange(6)[:, None, None] < 3, 0.5 * np.ptp(pred["maps"][:3]) / 255,
                               0.5 * np.ptp(pred["maps"][3:]) / 255) * 1.0001}[storage]
    assert np.all(err <= bound)
    with np.load(run / "predictions.npz") as npz:
        members = set(npz.files)
        assert npz["maps"].dtype == {"float32": np.float32, "float16": np.float16, "uint8": np.uint8}[storage]
    assert members == set(results.PREDICTION_KEYS) | ({"maps_offset", "maps_scale"} if storage == "uint8" else set())
    recorded = json.loads((run / "provenance.json").read_text()).get("map_storage")
    assert recorded == (None if storage == "float32" else
                        {"requested": storage, "stored_dtype": storage, "quantised_per_class": storage == "uint8"})
    if storage == "uint8":  # the per-class codes give the same metrics through the uint8 path
        codes = read_predictions(run, dequantise=False)
        assert codes["maps"].dtype == np.uint8
        fast = metrics_table(codes, dataset="synthetic", method="fade", setting="0-shot", shots=0, seed=0, n_boot=0)
        slow = metrics_table(stored, dataset="synthetic", method="fade", setting="0-shot", shots=0, seed=0, n_boot=0)
        pd.testing.assert_frame_equal(fast, slow)


def test_uint8_maps_are_stored_as_they_are(tmp_path):
    """FADE's maps are uint8 already: every storage writes them unchanged, and says so."""
    pred = _two_class_predictions()
    pred["maps"] = (pred["maps"] % 1 * 255).astype(np.uint8)
    for storage in results.MAP_STORAGES:
        assert results.apply_map_storage(pred, storage) is pred
        run = write_run(tmp_path / storage, _metrics(), pred, _prov(), map_storage=storage)
        back = read_predictions(run)
        assert back["maps"].dtype == np.uint8
        np.testing.assert_array_equal(back["maps"], pred["maps"])
    assert json.loads((run / "provenance.json").read_text())["map_storage"] == {
        "requested": "uint8", "stored_dtype": "uint8", "quantised_per_class": False}


def test_bad_map_storage_is_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match=r"map_storage \(--map-storage\) must be one of"):
        write_run(tmp_path / "r", _metrics(), _predictions(), _prov(), map_storage="int4")
    assert not (tmp_path / "r").exists()
    big = _predictions()
    big["maps"] = big["maps"] * 1e5
    with pytest.raises(ValueError, match="exceeds float16's range"):
        write_run(tmp_path / "r", _metrics(), big, _prov(), map_storage="float16")
    bad = _predictions()
    bad["maps"][0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        results.apply_map_storage(bad, "uint8")
    assert not (tmp_path / "r").exists()
