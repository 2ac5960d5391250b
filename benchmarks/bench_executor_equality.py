"""Every registered method's run folder across executors, torch thread counts and feature-cache states.

Run by hand (figures go into benchmarks/README.md and the tolerance table of ``zsad.distributed``):

    .venv/bin/python benchmarks/bench_executor_equality.py --threads 1 2 3 --out /tmp/executor_equality.json
    .venv/bin/python benchmarks/bench_executor_equality.py --dataset magnetic_tile --threads 1 2
    .venv/bin/python benchmarks/bench_executor_equality.py --dataset magnetic_tile --model ViT-B-16-plus-240 \
        --methods fade,winclip,tamura,cheung_no_prompt_generation --ray-cpus 0     # ~25 min on 2 cores

Every method of ``zsad.study.METHODS`` (or ``--methods``) runs on a small set (``--max-images`` test images per
class, 6; the random CLIP ``--model``, default the tiny ``zsad-tiny-vit``, at 240 px; seeded random
WideResNet-50-2 for PatchCore; zero-shot and, where the method has one, a 1-shot setting, seed 0) in these
conditions, each writing its own run folders through :func:`zsad.grids.run_settings`:

- ``local t=<n> cold``: in-process with ``torch.set_num_threads(n)``, an empty feature cache;
- ``local t=<n> warm(<m>)``: in-process with n threads, reading the cache that the cold run with m threads filled;
- ``local t=<n> mixed batches``: in-process with the first thread count, reading a cache that runs on half as many
  images per class filled (other subsets, so the cached features were computed in other batches), computing the rest;
- ``ray t=<n> cold``: ``executor="ray"`` on a local Ray instance (``--ray-cpus`` CPUs, one task per run) with the
  driver at n threads (:func:`zsad.distributed.run_on_ray` gives every task the driver's count), an empty cache;
- ``ray t=<n> warm``: the same for the first thread count, reading the cache of the first local run.

The first condition is the reference; a Ray condition is also compared with the local run of its thread count.
Stderr: one line per comparison, naming the runs that are not byte-identical and their largest difference. Printed
JSON: per condition and run, whether ``metrics.csv`` and ``predictions.npz`` are byte-identical, and the max abs
difference of the image scores and of the maps (``predictions.npz``), plus the seconds per condition.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from zsad.cache import FeatureCache
from zsad.data import make_synthetic
from zsad.grids import run_settings
from zsad.study import METHODS

CLASS_PROMPTS = {"synthetic": None, "magnetic_tile": "llm_class_magnetic_tile"}


def settings_for(methods) -> list[dict]:
    """Zero-shot and 1-shot where a method has them (PatchCore: 1-shot only)."""
    out = []
    for m in methods:
        kind = METHODS[m].shots
        out += [{"method": m, "shots": k} for k in ((0,) if kind == "zero" else (1,) if kind == "k" else (0, 1))]
    return out


def _synthetic_prompts(folder: Path) -> Path:
    path = folder / "class_prompts.json"
    path.write_text(json.dumps({"classes": {cls: {"normal": {"prompts": [f"a smooth {cls} texture"]},
                                                  "abnormal": {"prompts": [f"a {cls} texture with a stain"]}}
                                            for cls in ("grain", "weave")}}))
    return path


def compare(ref_paths, paths) -> list[dict]:
    rows = []
    for a, b in zip(ref_paths, paths):
        pa, pb = np.load(a / "predictions.npz"), np.load(b / "predictions.npz")
        rows.append({
            "run": str(a.relative_to(a.parents[1])),
            "metrics_csv_equal": (a / "metrics.csv").read_bytes() == (b / "metrics.csv").read_bytes(),
            "predictions_npz_equal": (a / "predictions.npz").read_bytes() == (b / "predictions.npz").read_bytes(),
            "max_abs_scores": float(np.max(np.abs(pa["scores"] - pb["scores"]))),
            "max_abs_maps": float(np.max(np.abs(pa["maps"].astype(np.float64) - pb["maps"].astype(np.float64)))),
        })
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="synthetic", help="synthetic (generated in a temporary folder) or "
                    "magnetic_tile (the embedded subset)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--model", default="zsad-tiny-vit", help="CLIP architecture (random weights)")
    ap.add_argument("--max-images", type=int, default=6)
    ap.add_argument("--n-boot", type=int, default=0)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--ray-cpus", type=int, default=2, help="0: no Ray conditions")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="executor-equality-"))
    root = make_synthetic(tmp / "data", seed=0) if args.dataset == "synthetic" else None
    class_prompts = CLASS_PROMPTS.get(args.dataset) or (str(_synthetic_prompts(tmp)) if root else None)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    common = dict(datasets=args.dataset, roots=str(root) if root else "", seeds="0", model=args.model,
                  max_images=args.max_images, n_boot=args.n_boot, progress=False)
    uses = set().union(*(METHODS[m].uses for m in methods))
    common.update({k: v for k, v in (("sizes", "240"), ("class_prompts", class_prompts)) if k in uses})
    settings = settings_for(methods)
    before = torch.get_num_threads()
    report = {"dataset": args.dataset, "settings": settings, "torch": torch.__version__,
              "cpu": platform.processor() or platform.machine(), "driver_threads": before,
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "conditions": {}}
    paths = {}

    def condition(name, cache_dir, executor="local", threads=None, against=None, **overrides):
        """Run every setting; compare with the first condition's runs (and with ``against``'s when given)."""
        torch.set_num_threads(threads or before)
        t0 = time.perf_counter()
        res = run_settings("t", settings, results_dir=tmp / "runs" / name.replace(" ", "_"), executor=executor,
                           cache=FeatureCache(cache_dir), **{**common, **overrides})
        if overrides:
            return
        seconds = round(time.perf_counter() - t0, 1)
        torch.set_num_threads(before)
        paths[name] = res["paths"]
        report["conditions"][name] = {"seconds": seconds, "threads": threads or before}
        for other in dict.fromkeys([next(iter(paths)), against or next(iter(paths))]):
            rows = compare(paths[other], res["paths"])
            report["conditions"][name][f"vs {other}"] = rows
            differ = [f"{r['run'].split('/')[-1]} ({max(r['max_abs_scores'], r['max_abs_maps']):.1e})"
                      for r in rows if not (r["metrics_csv_equal"] and r["predictions_npz_equal"])]
            print(f"{name:28s} {seconds:6.1f} s  vs {other:16s} byte-identical: {len(rows) - len(differ)}/"
                  f"{len(rows)}" + (f"; differ: {', '.join(differ)}" if differ else ""), file=sys.stderr,
                  flush=True)

    for t in args.threads:
        condition(f"local t={t} cold", tmp / f"cache-t{t}", threads=t)
    for t in args.threads:
        for m in args.threads:
            if m != t:
                condition(f"local t={t} warm({m})", tmp / f"cache-t{m}", threads=t)
    # a cache filled by runs on other image subsets (so other batches), then read and completed by a run
    t = args.threads[0]
    condition("fill cache: half the images", tmp / "cache-mixed", threads=t, max_images=max(2, args.max_images // 2))
    condition(f"local t={t} mixed batches", tmp / "cache-mixed", threads=t)
    if args.ray_cpus:
        import ray

        ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
        for t in args.threads:  # the tasks take over the driver's thread count
            condition(f"ray t={t} cold", tmp / f"cache-ray-t{t}", executor="ray", threads=t,
                      against=f"local t={t} cold")
        t = args.threads[0]
        condition(f"ray t={t} warm", tmp / f"cache-t{t}", executor="ray", threads=t, against=f"local t={t} cold")
        ray.shutdown()
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
