"""The Ray executor gives the same run folders as the in-process one, for every registered method (a local Ray
instance with 2 CPUs), and runs with another torch thread count or another cache state stay within the tolerance
that :data:`zsad.distributed.THREAD_TOLERANCE` states per method (0: byte-identical)."""
import json

import numpy as np
import pytest
import torch

from zsad.cache import FeatureCache
from zsad.distributed import THREAD_TOLERANCE
from zsad.grids import run_settings
from zsad.study import METHODS

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models: 1 thread is faster; tests set 2 where it matters

SETTINGS = [{"method": m, "shots": k} for m in METHODS
            for k in ((0,) if METHODS[m].shots == "zero" else (1,) if METHODS[m].shots == "k" else (0, 1))]
COMMON = dict(datasets="synthetic", seeds="0", model="zsad-tiny-vit", sizes="240", classes="grain", max_images=6,
              n_boot=20, progress=False)


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="Ray is an optional extra; make test installs it")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def grid(synth_root, tmp_path_factory):
    """Run every registered method with ``threads`` torch threads on ``executor``, through the cache ``cache``."""
    tmp = tmp_path_factory.mktemp("grid")
    prompts = tmp / "class_prompts.json"  # cheung (the full row) needs LLM class prompts; a small file for grain
    prompts.write_text(json.dumps({"classes": {"grain": {"normal": {"prompts": ["a smooth grain texture"]},
                                                         "abnormal": {"prompts": ["a grain texture with a stain"]}}}}))
    done = {}

    def run(name, *, threads, cache, executor="local"):
        if name not in done:
            before = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                done[name] = run_settings("t", SETTINGS, roots=str(synth_root), results_dir=tmp / name,
                                          executor=executor, cache=FeatureCache(tmp / f"cache-{cache}"),
                                          class_prompts=str(prompts), **COMMON)
            finally:
                torch.set_num_threads(before)
        return done[name]
    return run


def _method(path) -> str:
    return path.name.split("_0shot")[0].split("_1shot")[0]


def assert_same_bytes(a, b):
    assert [p.name for p in a["paths"]] == [p.name for p in b["paths"]]
    assert {_method(p) for p in a["paths"]} == set(METHODS)  # every registered method ran
    for x, y in zip(a["paths"], b["paths"]):
        for name in ("metrics.csv", "predictions.npz"):
            assert (x / name).read_bytes() == (y / name).read_bytes(), f"{y.name}/{name} differs"
    assert a["metrics"].equals(b["metrics"])


def assert_within_tolerance(a, b):
    for x, y in zip(a["paths"], b["paths"]):
        tol = THREAD_TOLERANCE[_method(x)]
        if tol == 0.0:
            for name in ("metrics.csv", "predictions.npz"):
                assert (x / name).read_bytes() == (y / name).read_bytes(), f"{y.name}/{name} differs"
            continue
        px, py = np.load(x / "predictions.npz"), np.load(y / "predictions.npz")
        for key in ("paths", "labels", "masks"):
            assert np.array_equal(px[key], py[key])
        for key in ("scores", "maps"):
            diff = np.abs(px[key].astype(np.float64) - py[key].astype(np.float64)).max()
            assert diff <= tol, f"{y.name}: {key} differ by {diff:.2e} > {tol:.0e}"


def test_ray_runs_equal_in_process_runs(grid, local_ray):
    """Driver and tasks with 1 thread, cold caches both times: the same bytes for every method."""
    assert_same_bytes(grid("local-t1", threads=1, cache="local-t1"),
                      grid("ray-t1", threads=1, cache="ray-t1", executor="ray"))


def test_ray_tasks_take_over_the_driver_thread_count(grid, local_ray):
    """Driver with 2 threads: the tasks compute with 2 too (Tamura's FFN on a few image embeddings rounds
    differently with 1 thread), here reading a cache that a 2-thread in-process run filled."""
    assert_same_bytes(grid("local-t2", threads=2, cache="local-t2"),
                      grid("ray-t2-warm", threads=2, cache="local-t2", executor="ray"))


def test_thread_counts_and_cache_states_within_the_stated_tolerance(grid):
    one = grid("local-t1", threads=1, cache="local-t1")
    assert_within_tolerance(one, grid("local-t2", threads=2, cache="local-t2"))  # cold caches, 1 vs 2 threads
    # features cached by the 2-thread run, scored with 1 thread; and a warm cache of its own thread count
    assert_within_tolerance(one, grid("local-t1-warm-t2", threads=1, cache="local-t2"))
    assert_same_bytes(one, grid("local-t1-warm", threads=1, cache="local-t1"))


def test_every_method_has_a_stated_tolerance():
    assert set(THREAD_TOLERANCE) == set(METHODS)
    assert all(0.0 <= tol <= 1e-5 for tol in THREAD_TOLERANCE.values())


def test_unknown_executor():
    with pytest.raises(ValueError, match="unknown executor 'dask'"):
        run_settings("t", SETTINGS[:1], executor="dask", **COMMON)


def test_cli_grid_on_ray_equals_in_process(synth_root, tmp_path, local_ray, capsys):
    from zsad.cli import main
    from zsad.grids import run_grid

    args = ["--datasets", "synthetic", "--roots", str(synth_root), "--seeds", "0", "--model", "zsad-tiny-vit",
            "--sizes", "240", "--max-images", "6", "--n-boot", "20", "--methods", "fade,patchcore", "--shots", "0,1",
            "--no-progress"]
    assert main(["grid", "main", *args, "--executor", "ray", "--results-dir", str(tmp_path / "ray")]) == 0
    out = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in out and "3 run folders" in out  # fade 0/1-shot, patchcore 1-shot (no 0-shot)
    local = run_grid("t02_main", methods="fade,patchcore", shots="0,1", roots=str(synth_root),
                     results_dir=tmp_path / "local", **{**COMMON, "classes": None, "max_images": 6})
    for path in local["paths"]:
        twin = tmp_path / "ray" / path.relative_to(tmp_path / "local")
        assert (twin / "metrics.csv").read_bytes() == (path / "metrics.csv").read_bytes()
        assert (twin / "predictions.npz").read_bytes() == (path / "predictions.npz").read_bytes()


def test_cnn_features_do_not_depend_on_threads_or_batch(synth_root):
    """PatchCore's WideResNet runs torch's own convolution on the CPU (oneDNN's rounds with the thread count)."""
    from zsad.cnn import extract_patch_features, load_wide_resnet50
    from zsad.data import load_dataset

    cnn = load_wide_resnet50(None)
    records = load_dataset("mvtec", synth_root, classes="grain", split="test")[:3]
    feats = {}
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            feats[threads, 3] = extract_patch_features(cnn, records, progress=False)[0]
            feats[threads, 1] = extract_patch_features(cnn, records, batch_size=1, progress=False)[0]
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(f, feats[1, 3]) for f in feats.values())
    assert torch.backends.mkldnn.enabled  # the flag is restored after the forward


def test_gpu_request_shares_a_gpu_when_memory_and_cpus_allow():
    from zsad.distributed import TASK_GPU_BYTES, gpu_request

    assert gpu_request(None, cuda=False) == 0.0 and gpu_request(0.25, cuda=False) == 0.0  # no GPU: none asked
    assert gpu_request(None, cuda=True) == 1.0  # a whole GPU, as before, unless a share is asked for
    assert gpu_request(0.25, cuda=True) == 0.25
    gib = 2**30
    # 141 GiB fit 23 tasks of 6 GiB; 16 CPUs at 2 per task allow 8: 8 tasks share the GPU
    assert gpu_request("auto", cuda=True, node_cpus=16, cpus_per_task=2, gpu_bytes=141 * gib) == 0.125
    assert gpu_request("auto", cuda=True, node_cpus=64, cpus_per_task=1, gpu_bytes=141 * gib) == 0.0434  # 1/23
    assert gpu_request("auto", cuda=True, node_cpus=16, gpu_bytes=TASK_GPU_BYTES - 1) == 1.0  # one fits at most
    for bad in (0, 1.5, -0.1, True, "half"):
        with pytest.raises(ValueError, match=r"gpu_fraction \(--gpu-fraction\) must be a number in \(0, 1\]"):
            gpu_request(bad, cuda=True)
    with pytest.raises(ValueError, match="needs the GPU's memory"):
        gpu_request("auto", cuda=True, node_cpus=4)


def test_ray_worker_log_shows_each_task(synth_root, tmp_path, local_ray):
    """One JSON line per task, in job order: another process than the driver, the request it ran with (no GPU here),
    the driver's thread count, and its run folder."""
    import os

    from zsad.distributed import run_on_ray

    jobs = [dict(method="fade", dataset="synthetic", root=str(synth_root), classes="grain", model="zsad-tiny-vit",
                 sizes="240", max_images=2, n_boot=0, shots=0, seed=0, out=tmp_path / f"run{i}") for i in range(2)]
    log = tmp_path / "workers.jsonl"
    with pytest.raises(ValueError, match="gpu_fraction"):
        run_on_ray(jobs, progress=False, gpu_fraction=2)
    results = run_on_ray(jobs, progress=False, threads=1, worker_log=log)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["worker"] for r in results] == lines
    assert [line["out"] for line in lines] == [str(tmp_path / "run0"), str(tmp_path / "run1")]
    for line in lines:
        assert line["pid"] != os.getpid() and line["num_gpus"] == 0.0 and line["num_cpus"] == 1
        assert line["threads"] == 1 and line["gpu_ids"] == [] and 0 < line["wall_seconds"]
        assert line["start_unix"] <= line["end_unix"]
    assert all((tmp_path / f"run{i}" / "provenance.json").is_file() for i in range(2))
