import subprocess
import sys

import numpy as np
import pytest

from zsad.cli import main
from zsad.evaluate import metrics_table
from zsad.results import provenance, write_run


def test_help_runs():
    out = subprocess.run([sys.executable, "-m", "zsad", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "doctor" in out.stdout and "eval" in out.stdout


def test_the_command_line_lists_every_table_and_method():
    from zsad.cli import GRID_TABLES, build_parser
    from zsad.grids import TABLES
    from zsad.study import METHODS

    assert GRID_TABLES == list(TABLES)
    predict = build_parser()._subparsers._group_actions[0].choices["predict"]
    method_help = next(a.help for a in predict._actions if "--method" in a.option_strings)
    assert set(method_help.replace(",", " ").split()) == set(METHODS)


def test_doctor_reports_random_weights(capsys, monkeypatch):
    monkeypatch.delenv("ZSAD_CHECKPOINT", raising=False)
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in out and "open-clip-torch          3.3.0" in out and "LLM model" in out


def test_synth_writes_a_loadable_tree(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path / "s"), "--seed", "2", "--n-train", "2",
                 "--n-test-good", "1", "--n-test-defect", "1", "--size", "64"]) == 0
    assert main(["data", "summary", "--dataset", "synthetic", "--root", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "scratch" in out and "train" in out
    # a second call without --overwrite is refused with a clear message, exit code 2
    assert main(["data", "synth", "--out", str(tmp_path / "s")]) == 2
    # the object class from the command line: the same tree as make_synthetic writes
    from zsad.data import list_classes, make_synthetic

    assert main(["data", "synth", "--out", str(tmp_path / "p"), "--classes", "part", "--n-train", "1",
                 "--n-test-good", "1", "--n-test-defect", "1", "--size", "64"]) == 0
    make_synthetic(tmp_path / "q", classes=("part",), n_train=1, n_test_good=1, n_test_defect=1, size=64)
    assert list_classes("mvtec", tmp_path / "p") == ["part"]
    for f in sorted((tmp_path / "q").rglob("*.png")):
        assert (tmp_path / "p" / f.relative_to(tmp_path / "q")).read_bytes() == f.read_bytes()


def test_eval_recomputes_metrics(tmp_path, capsys):
    masks = np.zeros((4, 8, 8), bool)
    masks[2:, 2:4, 2:4] = True
    pred = {"paths": ["a", "b", "c", "d"], "classes": ["x"] * 4, "labels": [0, 0, 1, 1],
            "scores": [0.1, 0.4, 0.35, 0.8], "masks": masks, "maps": masks.astype(np.float32)}
    table = metrics_table(pred, dataset="toy", method="m", setting="0-shot", shots=0, seed=0, n_boot=0)
    run = write_run(tmp_path / "run", table, pred, provenance({"dataset": "toy"}, seed=0))
    assert main(["eval", "--predictions", str(run / "predictions.npz"), "--n-boot", "0",
                 "--out", str(tmp_path / "m.csv")]) == 0
    out = capsys.readouterr().out
    assert "0.7500" in out  # AUROC: 3 of 4 anomalous/normal pairs ordered
    assert (tmp_path / "m.csv").read_text().count("\n") == len(table) + 1


def test_eval_missing_file_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", "--predictions", str(tmp_path / "none.npz")]) == 2
    assert "none.npz: predictions file not found" in capsys.readouterr().err


def test_grid_runs_a_table_and_refuses_other_tables_parameters(synth_root, tmp_path, capsys):
    common = ["--datasets", "synthetic", "--roots", str(synth_root), "--model", "zsad-tiny-vit", "--max-images", "4",
              "--n-boot", "0", "--results-dir", str(tmp_path), "--no-progress"]
    assert main(["grid", "tamura", *common, "--random-words", "0"]) == 0
    out = capsys.readouterr().out
    # tamura_settings("0"): WinCLIP with class names, the FFN with "object" and 0 words, and with class names
    assert "RANDOM WEIGHTS" in out and "3 run folders" in out
    assert sorted(p.name for p in (tmp_path / "t07_tamura" / "synthetic").iterdir()) == [
        "tamura_0shot_class-names--0-random-words_seed0", "tamura_0shot_object--0-random-words_seed0",
        "winclip_0shot_class-names_seed0"]
    assert main(["grid", "tamura", *common, "--shots", "1"]) == 2
    assert "table 'tamura' has no parameter shots; its parameters: random_words" in capsys.readouterr().err


def test_grid_runs_every_requested_shot_count_or_refuses():
    from zsad.grids import grid_settings, skipped_pairs

    got = [(s["method"], s["shots"]) for s in grid_settings("fade,winclip,patchcore", "0,3")]
    assert got == [("fade", 0), ("fade", 3), ("winclip", 0), ("winclip", 3), ("patchcore", 3)]
    assert [(s["method"], s["shots"]) for s in grid_settings("fade", 3)] == [("fade", 3)]  # a scalar (papermill)
    assert skipped_pairs("fade,patchcore", "0,1") == ["patchcore 0-shot (patchcore: k-shot only, shots >= 1)"]
    with pytest.raises(ValueError, match="no method of patchcore has a 0-shot setting; patchcore: k-shot only"):
        grid_settings("patchcore", "0")
    with pytest.raises(ValueError, match="unknown method 'fadee'"):
        grid_settings("fadee", "0")


def test_grid_checks_every_run_before_the_first_computes(synth_root, tmp_path, monkeypatch, capsys):
    import zsad.grids

    monkeypatch.setattr(zsad.grids, "execute", lambda *a, **k: pytest.fail("a run computed before all were checked"))
    settings = [{"method": "fade", "shots": 0}, {"method": "fade", "shots": 99}]  # the later one is impossible
    with pytest.raises(ValueError, match="99 shots requested but only 8"):
        zsad.grids.run_settings("t", settings, datasets="synthetic", roots=str(synth_root), seeds="0",
                                 model="zsad-tiny-vit", results_dir=tmp_path)
    with pytest.raises(ValueError, match="sizes applies to none of this table's methods \\(winclip\\)"):
        zsad.grids.run_settings("t", [{"method": "winclip", "shots": 0}], datasets="synthetic",
                                 roots=str(synth_root), sizes="240", results_dir=tmp_path)
    assert main(["grid", "main", "--datasets", "synthetic", "--roots", str(synth_root), "--methods", "patchcore",
                 "--shots", "0", "--results-dir", str(tmp_path)]) == 2
    assert "no method of patchcore has a 0-shot setting" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("argv, msg", [
    (["--sizes", "abc"], "--sizes must be comma-separated integers"),
    (["--max-images", "-1"], "max_images must be an integer >= 2"),
    (["--n-boot", "-1"], "n_boot must be an integer >= 0 (0: no intervals)"),
    (["--method", "winclip", "--mode", "vision"], "winclip does not use --mode"),
])
def test_cli_predict_bad_options_are_clear(argv, msg, synth_root, tmp_path, capsys):
    assert main(["predict", "--dataset", "synthetic", "--root", str(synth_root), "--out", str(tmp_path / "r"),
                 *argv]) == 2
    assert msg in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_eval_refuses_bad_n_boot_and_a_folder_as_out(tmp_path, capsys):
    assert main(["eval", "--predictions", str(tmp_path / "none.npz"), "--n-boot", "-1"]) == 2
    assert "n_boot (--n-boot) must be an integer >= 0 (0: no intervals), got -1" in capsys.readouterr().err
    assert main(["eval", "--predictions", str(tmp_path / "none.npz"), "--out", str(tmp_path)]) == 2
    assert "name a .csv file to write (not a folder)" in capsys.readouterr().err
