"""Run many study runs as Ray tasks (optional: ``pip install .[ray]``; the default executor is in-process).

Each task is one :func:`zsad.study.predict` call; the feature cache on disk is shared (its writes are atomic), so
several workers extracting the same image do the work twice at worst, never corrupt an entry.

What holds across executors, thread counts and cache states
-----------------------------------------------------------
Some float32 CPU kernels round differently with the number of intra-op threads: oneDNN's convolutions (PatchCore's
WideResNet; :mod:`zsad.cnn` now runs torch's own convolution, which does not) and MKL's GEMM when the matrix has
few rows (5 to 11 rows differ between 1 and 2 threads on this project's CPU; 1 to 3 rows round differently from the
same rows inside a larger matrix, so with the batch they were computed in). A Ray worker of a 1-CPU task runs torch
with one thread while the driver uses every core, so the executors used to disagree: PatchCore's scores by up to
7.6e-6, WinCLIP's and Tamura's by up to 1e-7.

Therefore every task runs with the **driver's** torch thread count (``torch.get_num_threads()`` when
:func:`run_on_ray` is called; set in the worker for the task, restored after it), reserves as many CPUs (at most a
node's), and the environment variables that select kernels (:data:`NUMERICS_ENV`) travel with it. On machines with
the same CPU and software a Ray run folder is then byte-identical to the in-process one for every method, with cold
or warm caches (``tests/test_distributed.py``). One case is left to the tolerance below: concurrent tasks that
share images (a 1-shot and a 2-shot run with the same reference) may fill the cache for each other in another batch
than the in-process order would; only Cheung et al.'s rows feel that, within the tolerance below.

Across thread counts and cache states (features cached by a run with another thread count, or in other batches),
:data:`THREAD_TOLERANCE` states per method the largest difference of any score or map value; 0.0 means byte-identical
run folders. Measured with ``benchmarks/bench_executor_equality.py`` (1, 2 and 3 threads, cold, warm and mixed-batch
caches, synthetic and magnetic tile sets, tiny ViT and ViT-B-16-plus-240):

- PatchCore: identical (the CNN runs one GEMM per image; the scoring's GEMMs have hundreds of rows and the distances
  are recomputed exactly);
- FADE: identical (tokens come from GEMMs over every token of a batch, its text batches have at least 19 prompts,
  its k-shot distance chunks never end on 1-11 rows for the study's sizes and up to 400 test images per class);
- WinCLIP and Tamura: identical. They differed by up to 1.8e-7 / 4.8e-7 while the window pass projected the image
  embeddings of a batch alone (``cls @ proj``, one row per image) and Tamura's FFN ran on a class's few image
  embeddings with the caller's thread count; the CLS is now projected together with every token of the batch
  (:func:`zsad.windows.encode_all`) and the FFN scores with one thread (:func:`zsad.methods.tamura.ffn_probability`);
- Cheung et al.'s three rows: identical on the test sets, but exposed: a last batch of 5-11 object crops or a class
  with 5-11 LLM prompts (MVTec's cable, pill, toothbrush, ...) differs by up to 4e-9 in the score.

Pin the driver's thread count (``torch.set_num_threads``, ``OMP_NUM_THREADS``) to reproduce those bit for bit. The
run's provenance records the thread count and the CPU's vector ISA.
"""
from __future__ import annotations

import os

from tqdm import tqdm

_FORWARDED_ENV = ("ZSAD_CACHE", "ZSAD_RESULTS", "ZSAD_CHECKPOINT", "ZSAD_CNN_CHECKPOINT", "ZSAD_MVTEC_ROOT",
                  "ZSAD_VISA_ROOT", "ZSAD_MAGNETIC_TILE_ROOT", "HF_HUB_OFFLINE")
#: Variables that choose CPU kernels or their numerics (torch's vector ISA, MKL's code path and reproducibility
#: mode, oneDNN's ISA): a worker must see the driver's values to compute the same bits.
NUMERICS_ENV = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "MKL_DYNAMIC", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA",
                "DNNL_MAX_CPU_ISA", "CUBLAS_WORKSPACE_CONFIG")

#: Largest absolute difference of any image score or map value (``predictions.npz``) between runs with other torch
#: thread counts or other cache states, per method (the measurements of the module docstring with a margin of 4 or
#: more); 0.0: byte-identical run folders. Between executors with the same thread count every method is
#: byte-identical. Measured on the 2-core AMD EPYC (AVX-512), torch 2.14.1 with MKL 2024.2.
THREAD_TOLERANCE = {
    "fade": 0.0,
    "winclip": 0.0,
    "patchcore": 0.0,
    "tamura": 0.0,
    "cheung": 1e-6,
    "cheung_no_prompt_generation": 1e-6,
    "cheung_no_object_detection": 1e-6,
}


def _predict_job(job: dict, threads: int | None = None) -> dict:
    import torch

    from zsad.study import predict

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)  # the driver's: some float32 kernels round differently with the count
    try:
        res = predict(**{**job, "progress": False})
    finally:
        torch.set_num_threads(before)
    res.pop("predictions")  # the run folder holds them; no need to ship maps back to the driver
    return res


def _largest_node_cpus(ray) -> int:
    cpus = [int(node.get("Resources", {}).get("CPU", 0)) for node in ray.nodes() if node.get("Alive", True)]
    return max(cpus, default=0)


def run_on_ray(jobs: list[dict], *, progress: bool = True, threads: int | None = None) -> list[dict]:
    """Results of ``predict(**job)`` for every job, in job order, computed as Ray tasks.

    ``threads``: torch intra-op threads of every task (default: the caller's ``torch.get_num_threads()``, so a task
    computes what the in-process executor computes); each task reserves that many CPUs, at most a node's.
    """
    try:
        import ray
    except ImportError:
        raise ValueError("executor 'ray' needs Ray: pip install 'zsad[ray]' (or ray[default])") from None
    import torch

    threads = int(threads or torch.get_num_threads())
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if not ray.is_initialized():
        env = {k: os.environ[k] for k in _FORWARDED_ENV + NUMERICS_ENV if k in os.environ}
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": env}, ignore_reinit_error=True)
    cpus = max(1, min(threads, _largest_node_cpus(ray) or threads))
    task = ray.remote(num_cpus=cpus, num_gpus=1 if torch.cuda.is_available() else 0)(_predict_job)
    refs = [task.remote(job, threads) for job in jobs]
    pending = list(refs)
    with tqdm(total=len(refs), desc="ray runs", disable=not progress) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            bar.update(len(done))
    return ray.get(refs)
