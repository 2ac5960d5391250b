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
