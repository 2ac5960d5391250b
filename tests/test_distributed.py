"""The Ray executor gives the same run folders as the in-process one (a local Ray instance with 2 CPUs)."""
import pytest

from zsad.tables import run_settings

SETTINGS = [{"method": "fade", "shots": 0}, {"method": "fade", "shots": 1}, {"method": "winclip", "shots": 1}]
COMMON = dict(datasets="synthetic", seeds="0", model="zsad-tiny-vit", sizes="240", max_images=6, n_boot=20,
              progress=False)


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="Ray is an optional extra; make test installs it")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_runs_equal_in_process_runs(synth_root, tmp_path, local_ray):
    local = run_settings("t", SETTINGS, roots=str(synth_root), results_dir=tmp_path / "local", **COMMON)
    remote = run_settings("t", SETTINGS, roots=str(synth_root), results_dir=tmp_path / "ray", executor="ray",
                          **COMMON)
    assert len(local["paths"]) == len(remote["paths"]) == 3
    for a, b in zip(local["paths"], remote["paths"]):
        assert a.relative_to(tmp_path / "local") == b.relative_to(tmp_path / "ray")
        assert (a / "metrics.csv").read_bytes() == (b / "metrics.csv").read_bytes()
        assert (a / "predictions.npz").read_bytes() == (b / "predictions.npz").read_bytes()
    assert local["metrics"].equals(remote["metrics"])


def test_unknown_executor():
    with pytest.raises(ValueError, match="unknown executor 'dask'"):
        run_settings("t", SETTINGS, executor="dask", **COMMON)


def test_cli_grid_on_ray_equals_in_process(synth_root, tmp_path, local_ray, capsys):
    from zsad.cli import main
    from zsad.tables import run_grid

    args = ["--datasets", "synthetic", "--roots", str(synth_root), "--seeds", "0", "--model", "zsad-tiny-vit",
            "--sizes", "240", "--max-images", "6", "--n-boot", "20", "--methods", "fade,patchcore", "--shots", "0,1",
            "--no-progress"]
    assert main(["grid", "main", *args, "--executor", "ray", "--results-dir", str(tmp_path / "ray")]) == 0
    out = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in out and "3 run folders" in out  # fade 0/1-shot, patchcore 1-shot (no 0-shot)
    local = run_grid("t02_main", methods="fade,patchcore", shots="0,1", roots=str(synth_root),
                     results_dir=tmp_path / "local", **COMMON)
    for path in local["paths"]:
        twin = tmp_path / "ray" / path.relative_to(tmp_path / "local")
        assert (twin / "metrics.csv").read_bytes() == (path / "metrics.csv").read_bytes()
