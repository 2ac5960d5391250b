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
- MuSc: identical (1, 2 and 3 threads, synthetic and magnetic tile, tiny ViT; its distances are GEMMs over every
  patch of a class, never a few rows);
- Cheung et al.'s three rows: identical on the test sets, but exposed: a last batch of 5-11 object crops or a class
  with 5-11 LLM prompts (MVTec's cable, pill, toothbrush, ...) differs by up to 4e-9 in the score.

GPUs and worker logs
--------------------
With a GPU every task used to ask for a whole one (``num_gpus=1``), so a one-GPU node ran the runs one at a time
while the GPU sat idle during each run's CPU work (decoding images, metrics, writing). ``gpu_fraction`` asks for a
share instead: a number in (0, 1], or ``"auto"``, as many tasks per GPU as fit in its memory at
:data:`TASK_GPU_BYTES` each and as the node's CPUs allow (:func:`gpu_request`). Tasks that share a GPU compute the
same values as alone (each is its own process with its own CUDA context); only their wall time changes.
``worker_log`` writes one JSON line per task: the worker's host, pid, the GPUs Ray gave it, its CPU and GPU request,
its thread count and its start, end and wall seconds, so that the concurrency can be seen; ``log_to_driver=True``
also forwards the workers' own output to the driver.

Pin the driver's thread count (``torch.set_num_threads``, ``OMP_NUM_THREADS``) to reproduce those bit for bit. The
run's provenance records the thread count and the CPU's vector ISA.
"""
from __future__ import annotations

import json
import math
import os
import socket
import time
from pathlib import Path

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
    "musc": 0.0,
}


#: GPU memory one study run is planned with by ``gpu_fraction="auto"``: ViT-B-16-plus-240 (0.8 GB of weights),
#: batch 8 at 896 px with the flash-attention kernels (about 2 GB of activations on the CPU, where the pass peaks at
#: 1.65 GB above the loaded model; benchmarks/README.md), CUDA context and allocator slack. An estimate from the CPU
#: measurements, not a GPU measurement: none was lent to this study's sessions.
TASK_GPU_BYTES = 6 * 2**30


def gpu_request(gpu_fraction=None, *, cuda: bool, node_cpus: int = 0, cpus_per_task: int = 1,
                gpu_bytes: int | None = None, task_bytes: int = TASK_GPU_BYTES) -> float:
    """The ``num_gpus`` one Ray task asks for.

    Parameters
    ----------
    gpu_fraction : None, float or "auto"
        None: a whole GPU per task when there is one (1.0), else 0. A number in (0, 1]: that share of a GPU.
        ``"auto"``: ``1 / n`` with ``n`` the tasks that fit on one GPU, by memory (``gpu_bytes // task_bytes``) and by
        the node's CPUs (``node_cpus // cpus_per_task``), at least 1.
    cuda : bool
        Whether the driver sees a GPU; without one every request is 0.
    node_cpus, cpus_per_task : int
        CPUs of the largest node and of one task (0 node CPUs: not limited by them).
    gpu_bytes : int, optional
        Memory of one GPU (``"auto"`` needs it).
    task_bytes : int
        GPU memory planned per task (:data:`TASK_GPU_BYTES`).

    Returns
    -------
    float
        The ``num_gpus`` of every task.
    """
    if gpu_fraction is not None and gpu_fraction != "auto":
        if isinstance(gpu_fraction, bool) or not isinstance(gpu_fraction, (int, float)) \
                or not 0 < gpu_fraction <= 1:
            raise ValueError(f"gpu_fraction (--gpu-fraction) must be a number in (0, 1] or 'auto', "
                             f"got {gpu_fraction!r}")
    if not cuda:
        return 0.0
    if gpu_fraction is None:
        return 1.0
    if gpu_fraction != "auto":
        return float(gpu_fraction)
    if not gpu_bytes or gpu_bytes <= 0:
        raise ValueError("gpu_fraction='auto' needs the GPU's memory (gpu_bytes)")
    by_memory = max(1, int(gpu_bytes // task_bytes))
    by_cpus = max(1, node_cpus // max(1, cpus_per_task)) if node_cpus else by_memory
    n = min(by_memory, by_cpus)
    return math.floor(1e4 / n) / 1e4  # Ray keeps 4 decimals of a fractional GPU; round down so n tasks fit


def _predict_job(job: dict, threads: int | None = None, request: dict | None = None) -> dict:
    import torch

    from zsad.study import predict

    start = time.time()
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)  # the driver's: some float32 kernels round differently with the count
    try:
        res = predict(**{**job, "progress": False})
    finally:
        torch.set_num_threads(before)
    res.pop("predictions")  # the run folder holds them; no need to ship maps back to the driver
    try:
        import ray

        gpu_ids = [str(g) for g in ray.get_gpu_ids()] if ray.is_initialized() else []
    except ImportError:
        gpu_ids = []
    end = time.time()
    res["worker"] = {"host": socket.gethostname(), "pid": os.getpid(), "gpu_ids": gpu_ids,
                     "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "threads": threads or before,
                     **(request or {}), "out": str(job.get("out")), "start_unix": round(start, 3),
                     "end_unix": round(end, 3), "wall_seconds": round(end - start, 3)}
    return res


def _largest_node_cpus(ray) -> int:
    cpus = [int(node.get("Resources", {}).get("CPU", 0)) for node in ray.nodes() if node.get("Alive", True)]
    return max(cpus, default=0)


def run_on_ray(jobs: list[dict], *, progress: bool = True, threads: int | None = None, gpu_fraction=None,
               worker_log: str | os.PathLike | None = None, log_to_driver: bool = False) -> list[dict]:
    """Results of ``predict(**job)`` for every job, in job order, computed as Ray tasks.

    Parameters
    ----------
    jobs : list of dict
        :func:`zsad.study.predict` arguments, one dict per run.
    progress : bool
        A progress bar over finished tasks.
    threads : int, optional
        torch intra-op threads of every task (default: the caller's ``torch.get_num_threads()``, so a task computes
        what the in-process executor computes); each task reserves that many CPUs, at most a node's.
    gpu_fraction : None, float or "auto"
        Share of a GPU each task asks for when the driver sees one (:func:`gpu_request`; None: a whole GPU).
    worker_log : path, optional
        Write one JSON line per task (host, pid, GPUs, request, threads, times) here, in job order.
    log_to_driver : bool
        Forward the workers' stdout and stderr to the driver (when this call starts Ray).

    Returns
    -------
    list of dict
        ``predict``'s results without the predictions (the run folders hold them), each with a ``worker`` record.
    """
    try:
        import ray
    except ImportError:
        raise ValueError("executor 'ray' needs Ray: pip install 'zsad[ray]' (or ray[default])") from None
    import torch

    threads = int(threads or torch.get_num_threads())
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    cuda = torch.cuda.is_available()
    gpu_request(gpu_fraction, cuda=False)  # a bad value is refused before Ray starts
    if worker_log is not None and not Path(worker_log).expanduser().parent.is_dir():
        raise ValueError(f"worker_log {worker_log}: its folder does not exist")
    if not ray.is_initialized():
        env = {k: os.environ[k] for k in _FORWARDED_ENV + NUMERICS_ENV if k in os.environ}
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, include_dashboard=False,
                 log_to_driver=bool(log_to_driver), runtime_env={"env_vars": env}, ignore_reinit_error=True)
    node_cpus = _largest_node_cpus(ray)
    cpus = max(1, min(threads, node_cpus or threads))
    gpus = gpu_request(gpu_fraction, cuda=cuda, node_cpus=node_cpus, cpus_per_task=cpus,
                       gpu_bytes=torch.cuda.get_device_properties(0).total_memory if cuda else None)
    task = ray.remote(num_cpus=cpus, num_gpus=gpus)(_predict_job)
    request = {"num_cpus": cpus, "num_gpus": gpus}
    refs = [task.remote(job, threads, request) for job in jobs]
    pending = list(refs)
    with tqdm(total=len(refs), desc="ray runs", disable=not progress) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            bar.update(len(done))
    results = ray.get(refs)
    if worker_log is not None:
        lines = "".join(json.dumps(r["worker"], sort_keys=True) + "\n" for r in results)
        Path(worker_log).expanduser().write_text(lines)
    return results
