"""Run many study runs as Ray tasks (optional: ``pip install .[ray]``; the default executor is in-process).

Each task is one :func:`zsad.study.predict` call; the feature cache on disk is shared (its writes are atomic), so
several workers extracting the same image do the work twice at worst, never corrupt an entry. Runs are
deterministic, so results equal the in-process ones byte for byte.
"""
from __future__ import annotations

import os

from tqdm import tqdm

_FORWARDED_ENV = ("ZSAD_CACHE", "ZSAD_RESULTS", "ZSAD_CHECKPOINT", "ZSAD_CNN_CHECKPOINT", "ZSAD_MVTEC_ROOT",
                  "ZSAD_VISA_ROOT", "ZSAD_MAGNETIC_TILE_ROOT", "HF_HUB_OFFLINE")


def _predict_job(job: dict) -> dict:
    from zsad.study import predict

    res = predict(**{**job, "progress": False})
    res.pop("predictions")  # the run folder holds them; no need to ship maps back to the driver
    return res


def run_on_ray(jobs: list[dict], *, progress: bool = True) -> list[dict]:
    """Results of ``predict(**job)`` for every job, in job order, computed as Ray tasks."""
    try:
        import ray
    except ImportError:
        raise ValueError("executor 'ray' needs Ray: pip install 'zsad[ray]' (or ray[default])") from None
    import torch

    if not ray.is_initialized():
        env = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": env}, ignore_reinit_error=True)
    task = ray.remote(num_gpus=1 if torch.cuda.is_available() else 0)(_predict_job)
    refs = [task.remote(job) for job in jobs]
    pending = list(refs)
    with tqdm(total=len(refs), desc="ray runs", disable=not progress) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            bar.update(len(done))
    return ray.get(refs)
