"""Grids of runs: an interrupted table resumes from the finished run folders that match exactly."""
import json

import pytest

import zsad.grids
from zsad.grids import run_settings

COMMON = dict(datasets="synthetic", seeds="0", model="zsad-tiny-vit", sizes="240", max_images=4, n_boot=0,
              progress=False)


def test_finished_matching_runs_are_reused_and_changed_ones_recomputed(synth_root, tmp_path, monkeypatch):
    settings = [{"method": "fade", "shots": 0, "mode": "language"}, {"method": "fade", "shots": 1, "mode": "vision"}]
    first = run_settings("t", settings, roots=str(synth_root), results_dir=tmp_path, **COMMON)
    stamps = {p: (p / "provenance.json").stat().st_mtime_ns for p in first["paths"]}
    calls = []
    real = zsad.grids.execute
    monkeypatch.setattr(zsad.grids, "execute",
                        lambda plan, progress=True: calls.append(plan.out) or real(plan, progress))
    again = run_settings("t", settings, roots=str(synth_root), results_dir=tmp_path, **COMMON)
    assert calls == [] and again["metrics"].equals(first["metrics"])
    assert {p: (p / "provenance.json").stat().st_mtime_ns for p in again["paths"]} == stamps
    # a different parameter of one run recomputes that run only
    run_settings("t", [settings[0], {**settings[1], "options": {"vision_multiplier": 2.0}}], roots=str(synth_root),
                 results_dir=tmp_path, **COMMON)
    assert [p.name for p in calls] == ["fade_1shot_seed0"]
    # a run folder whose recorded code differs is recomputed too
    prov_file = first["paths"][0] / "provenance.json"
    prov = json.loads(prov_file.read_text())
    prov["fingerprint"]["code"] = "0" * 64
    prov_file.write_text(json.dumps(prov))
    calls.clear()
    run_settings("t", settings, roots=str(synth_root), results_dir=tmp_path, **COMMON)
    assert [p.name for p in calls] == ["fade_0shot_seed0", "fade_1shot_seed0"]  # 2nd: options changed back
    calls.clear()
    run_settings("t", settings, roots=str(synth_root), results_dir=tmp_path, resume=False, **COMMON)
    assert len(calls) == 2


def test_unknown_executor_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="unknown executor 'dask'"):
        run_settings("t", [{"method": "fade", "shots": 0}], executor="dask", results_dir=tmp_path, **COMMON)


def test_readers_see_the_runs_a_table_last_planned_not_older_folders(synth_root, tmp_path):
    from zsad.grids import read_results
    from zsad.results import MANIFEST
    from zsad.tables import results_provenances

    language = {"method": "fade", "shots": 0, "mode": "language"}
    vision = {"method": "fade", "shots": 0, "mode": "vision", "variant": "vision"}
    run_settings("t", [language, vision], roots=str(synth_root), results_dir=tmp_path, **COMMON)
    assert set(read_results(tmp_path, "t")["setting"]) == {"0-shot", "0-shot vision"}
    # the chapter's settings change: the old folder stays on disk (zsad deletes nothing) but is no longer read
    run_settings("t", [language], roots=str(synth_root), results_dir=tmp_path, **COMMON)
    assert (tmp_path / "t" / "synthetic" / "fade_0shot_vision_seed0" / "provenance.json").is_file()
    assert set(read_results(tmp_path, "t")["setting"]) == {"0-shot"}
    assert [p.rsplit("/", 1)[-1] for p in results_provenances(tmp_path, "t")] == ["fade_0shot_seed0"]
    assert json.loads((tmp_path / "t" / MANIFEST).read_text()) == {"runs": ["synthetic/fade_0shot_seed0"]}
    # a folder without a manifest (written before manifests existed) is read whole
    (tmp_path / "t" / MANIFEST).unlink()
    assert set(read_results(tmp_path, "t")["setting"]) == {"0-shot", "0-shot vision"}
    # a manifest naming a missing run is an error, not a silently shorter table
    (tmp_path / "t" / MANIFEST).write_text(json.dumps({"runs": ["synthetic/gone"]}))
    with pytest.raises(ValueError, match="lists run folders that are missing or unfinished: .*gone"):
        read_results(tmp_path, "t")
