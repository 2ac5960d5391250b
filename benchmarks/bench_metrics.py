"""Benchmark of the exact pixel metrics in zsad.metrics (run by hand, not a test).

Synthetic class at MVTec scale: ``--n`` maps of ``--size`` x ``--size`` (default 1,725 x
448 x 448, the MVTec AD test set at FADE's resolution); half the images carry 1-3
elliptical defects, maps are per-pixel Gaussian noise plus a positive shift inside the
defects (so nearly every float32 value is distinct, the hardest case for sorting).
uint8 maps are the same maps quantised to 0..255.

Each dtype runs in a fresh subprocess so that its peak RSS is its own.  Prints one JSON
object: wall time of ``pixel_metrics`` (s), resident memory after building the inputs
and peak resident memory of the process (GB, inputs included), optionally the time of
``pixel_metrics_ci``, and the machine.

Usage::

    python benchmarks/bench_metrics.py                  # both dtypes, full size
    python benchmarks/bench_metrics.py --n 200 --size 256 --ci-boot 200
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

import zsad
from zsad import metrics


def _rss_gb() -> float:
    """Current resident set size in GB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e9


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # ru_maxrss is KiB


def make_data(n: int, size: int, dtype: str, seed: int = 0):
    """Synthetic masks (N, size, size) bool and maps of ``dtype``, built image by image."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    maps = np.empty((n, size, size), dtype=np.float32 if dtype == "float32" else np.uint8)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for i in range(n):
        m = masks[i]
        if rng.random() < 0.5:
            for _ in range(rng.integers(1, 4)):
                cy, cx = rng.uniform(0, size, 2)
                ry, rx = rng.uniform(2, size / 7, 2)
                m |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        a = rng.standard_normal((size, size), dtype=np.float32)
        a += m * np.float32(rng.uniform(0.5, 2.5))
        if dtype == "float32":
            maps[i] = a
        else:
            np.clip(a * 32 + 64, 0, 255, out=a)
            maps[i] = a.astype(np.uint8)
    return masks, maps


def run_one(n: int, size: int, dtype: str, ci_boot: int, seed: int) -> dict:
    t0 = time.perf_counter()
    masks, maps = make_data(n, size, dtype, seed)
    t_gen = time.perf_counter() - t0
    rss_inputs = _rss_gb()
    t0 = time.perf_counter()
    res = metrics.pixel_metrics(masks, maps)
    t_metrics = time.perf_counter() - t0
    out = {
        "dtype": dtype,
        "n_images": n,
        "size": size,
        "n_pixels": int(masks.size),
        "defect_pixel_fraction": round(float(masks.mean()), 5),
        "generate_s": round(t_gen, 2),
        "pixel_metrics_s": round(t_metrics, 2),
        "rss_inputs_gb": round(rss_inputs, 2),
        "peak_rss_gb": round(_peak_rss_gb(), 2),
        "metrics": {k: round(v, 6) for k, v in res.items()},
    }
    if ci_boot:
        t0 = time.perf_counter()
        ci = metrics.pixel_metrics_ci(masks, maps, n_boot=ci_boot, seed=0)
        out["pixel_metrics_ci_s"] = round(time.perf_counter() - t0, 2)
        out["ci_n_boot"] = ci_boot
        out["ci"] = {k: [round(v[0], 6), round(v[1], 6)] for k, v in ci.items()}
        out["peak_rss_with_ci_gb"] = round(_peak_rss_gb(), 2)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1725, help="number of maps (default 1725)")
    ap.add_argument("--size", type=int, default=448, help="map height = width (default 448)")
    ap.add_argument("--dtype", choices=["both", "float32", "uint8"], default="both")
    ap.add_argument("--ci-boot", type=int, default=0, help="also time pixel_metrics_ci with this n_boot")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.dtype != "both":
        print(json.dumps(run_one(args.n, args.size, args.dtype, args.ci_boot, args.seed)))
        return
    runs = []
    for dtype in ("float32", "uint8"):
        cmd = [sys.executable, os.path.abspath(__file__), "--n", str(args.n), "--size", str(args.size),
               "--dtype", dtype, "--ci-boot", str(args.ci_boot), "--seed", str(args.seed)]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    machine = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "zsad": getattr(zsad, "__version__", "unknown"),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps({"machine": machine, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
