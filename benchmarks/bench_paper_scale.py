"""Paper-scale dry run: the main table's grid on MVTec-AD- and VisA-sized synthetic trees (issue 19, part 2).

Trees from :func:`zsad.data.paper_scale.make_paper_scale` (the datasets' classes, per-class counts scaled by
``--fraction``, and real image sizes), the main table (FADE 0/1/2/4-shot, WinCLIP 0/1/2/4, PatchCore 1/2/4) with the
tiny model (``zsad-tiny-vit``) for CLIP and the random WideResNet-50 for PatchCore, every test image, ``--seeds``.
Each phase runs in its own interpreter so that its peak resident memory (``ru_maxrss``) is its own:

- ``generate``: writing the trees (seconds per image, bytes per image);
- ``grid``: the grid on an empty feature cache, with the time of each step of the study summed over the runs
  (CLIP + GEM tokens, WinCLIP windows, PatchCore's CNN, text, FADE's patch distances, ground-truth masks, metrics,
  writing, planning, and the methods' own scoring as the rest of each run);
- ``eval``: ``evaluate_predictions`` of every run folder (the metrics with their bootstrap intervals alone);
- ``class rss``: FADE 0-shot on one class of N test images, for several N (peak memory against class size).

Then disk (cache per kind, run folders, predictions per map) and the projection of the full datasets with
ViT-B-16-plus-240 on this CPU and on a GPU from the measured per-image costs and the FLOPs of
``bench_fade_speed.py`` (written to the JSON; the table in ``benchmarks/README.md``).

    .venv/bin/python benchmarks/bench_paper_scale.py --fraction 0.03 --out /tmp/paper_scale.json      # ~12 min
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve()

# ViT-B-16-plus-240 on this CPU (benchmarks/README.md, bench_fade_speed.py, 2026-11-24): FADE's token pass at
# 240 + 448 + 896 px, seconds and TFLOP per image. WinCLIP's window pass and GEM's other costs are measured by
# --vitb-probe when asked; PatchCore's WideResNet is the real architecture in the dry run already.
VITB_FADE_SECONDS = 16.4
VITB_FADE_TFLOP = 2.82
# Exact pixel metrics with 1,000-resample intervals per 1,725 maps of 448 x 448 (bench_metrics.py, benchmarks/
# README.md): float32 maps 11.5 s + 46 s, uint8 maps (FADE's) 2.9 s + 2.5 s; FADE's scoring per image at the
# paper's three scales with ViT-B (bench_fade_speed.py): 0.08 s.
METRIC_SECONDS_PER_MAP = {"float32": (11.5 + 46.0) / 1725, "uint8": (2.9 + 2.5) / 1725}
VITB_FADE_SCORING_SECONDS = 0.08
# ViT-B-16-plus-240's text tower per prompt, full and trimmed context, weighted over the study's prompt sets
# (benchmarks/results/text_context_cpu_2026-12-01.json)
TEXT_SECONDS = {"full": 0.0593, "trim": 0.0112}


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _child(phase: str, args: list[str]) -> dict:
    """Run ``phase`` of this script in a fresh interpreter; its JSON report plus wall time and peak RSS."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, str(SCRIPT), "--phase", phase, *args], capture_output=True,
                         text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if out.returncode:
        raise SystemExit(f"phase {phase} failed ({out.returncode}):\n{out.stderr[-4000:]}")
    wall = time.perf_counter() - start
    report = json.loads(out.stdout.strip().splitlines()[-1])
    report.update(wall_seconds=wall, peak_rss_gib=report["peak_rss_kib"] / 2**20)  # the child's own ru_maxrss
    return report


def _own_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# --------------------------------------------------------------------------------------------------- phases


#: (module, function, component): the study's steps timed in the grid phase (wrapped for the phase's process only;
#: nested calls are not double-counted: none of these calls another of them).
TIMED = (("zsad.runners", "extract_tokens", "clip_gem_tokens"), ("zsad.runners", "extract_window_tokens",
                                                                   "winclip_windows"),
         ("zsad.runners", "extract_patch_features", "patchcore_cnn"), ("zsad.runners", "encode_prompts_cached", "text"),
         ("zsad.runners", "_cached_vision_distances", "fade_knn"), ("zsad.study", "_ground_truth", "masks"),
         ("zsad.study", "metrics_table", "metrics"), ("zsad.study", "write_run", "write"),
         ("zsad.grids", "execute", "execute_total"), ("zsad.grids", "plan_run", "plan"))


def _timed(func, acc: dict, name: str):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            acc[name] = acc.get(name, 0.0) + time.perf_counter() - t0
    return wrapper


def phase_grid(args) -> dict:
    import importlib

    from zsad.cache import FeatureCache
    from zsad.grids import run_table

    acc: dict[str, float] = {}
    for module, name, label in TIMED:
        mod = importlib.import_module(module)
        setattr(mod, name, _timed(getattr(mod, name), acc, label))
    t0 = time.perf_counter()
    res = run_table("main", datasets=args.datasets, roots=args.roots, seeds=args.seeds, model=args.model,
                    max_images=None, n_boot=args.n_boot, results_dir=args.results_dir,
                    cache=FeatureCache(args.cache), progress=False, resume=False)
    total = time.perf_counter() - t0
    inside = sum(v for k, v in acc.items() if k not in ("execute_total", "plan"))
    acc["scoring_and_rest"] = acc.get("execute_total", 0.0) - inside  # the methods' own scoring, resizing, ...
    return {"runs": len(res["paths"]), "seconds": total, "components": acc, "peak_rss_kib": _own_peak()}


def phase_eval(args) -> dict:
    from zsad.evaluate import evaluate_predictions

    runs = sorted(p.parent for p in Path(args.results_dir).rglob("predictions.npz"))
    t0 = time.perf_counter()
    for run in runs:
        evaluate_predictions(run, n_boot=args.n_boot)
    return {"runs": len(runs), "seconds": time.perf_counter() - t0, "peak_rss_kib": _own_peak()}


def phase_class(args) -> dict:
    from zsad.cache import FeatureCache
    from zsad.study import predict

    res = predict("fade", "mvtec", root=args.roots, classes=args.cls, model=args.model, shots=0, seed=0,
                  max_images=None, n_boot=0, progress=False, cache=FeatureCache(args.cache))
    return {"images": int(len(res["predictions"]["paths"])), "peak_rss_kib": _own_peak()}


PHASES = {"grid": phase_grid, "eval": phase_eval, "class": phase_class}


# ---------------------------------------------------------------------------------------------------- driver


def generate(work: Path, fraction: float, train_scale: int, max_side: int | None = None, min_test: int = 4,
             classes: dict | None = None) -> dict:
    from zsad.data.paper_scale import make_paper_scale, paper_scale_summary, scaled_counts

    out = {}
    for dataset in ("mvtec", "visa"):
        t0 = time.perf_counter()
        chosen = (classes or {}).get(dataset)
        tree = make_paper_scale(work / dataset, dataset, fraction=fraction, classes=chosen,
                                train_render_scale=train_scale, max_side=max_side, min_train=4, min_test=min_test)
        seconds = time.perf_counter() - t0
        counts = paper_scale_summary(scaled_counts(dataset, fraction, chosen, min_train=4, min_test=min_test))
        full = paper_scale_summary(scaled_counts(dataset, 1.0))
        test_files = [p for p in tree.rglob("*") if p.is_file() and ("/test/" in p.as_posix() or "/Anomaly/"
                                                                     in p.as_posix() or "ground_truth" in p.as_posix())]
        n = counts["train"] + counts["test"]
        out[dataset] = {"root": str(tree), "counts": counts, "full_counts": full, "seconds": seconds,
                        "seconds_per_image": seconds / n, "bytes": _du(tree),
                        "bytes_per_megapixel": _du(tree) / counts["megapixels"],
                        "projected_full_bytes": _du(tree) / counts["megapixels"] * full["megapixels"],
                        "test_files": len(test_files)}
        print(f"generated {dataset}: {n} images in {seconds:.0f} s, {_du(tree) / 1e6:.0f} MB", flush=True)
    return out


def vitb_probe() -> dict:
    """ViT-B-16-plus-240 (random weights): seconds and TFLOP of WinCLIP's window pass for one image."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    import zsad
    from zsad.data import load_dataset, make_synthetic
    from zsad.windows import extract_window_tokens

    with tempfile.TemporaryDirectory() as tmp:
        root = make_synthetic(Path(tmp) / "s", classes=("weave",), n_train=1, n_test_good=2, n_test_defect=0)
        recs = load_dataset("mvtec", root, classes=["weave"], split="test")[:2]
        loaded = zsad.load_model("ViT-B-16-plus-240")
        extract_window_tokens(loaded, recs[:1], progress=False)  # warm-up
        t0 = time.perf_counter()
        extract_window_tokens(loaded, recs[1:], progress=False)
        seconds = time.perf_counter() - t0
        # the counter has no formula for the fused CPU attention kernel: count through the math kernel
        with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
            extract_window_tokens(loaded, recs[1:], progress=False, batch_size=1)
    return {"winclip_seconds_per_image": seconds, "winclip_tflop_per_image": fc.get_total_flops() / 1e12}


def _settings() -> list[dict]:
    from zsad.grids import grid_settings

    return grid_settings()


def runs_per_dataset(seeds: int) -> int:
    """Run folders of the main table per dataset with ``seeds`` few-shot seeds (zero-shot settings run once)."""
    from zsad.grids import grid_settings

    return sum(1 if st["shots"] == 0 else seeds for st in grid_settings())


def project(report: dict, gpu_peak_tflops: float, gpu_efficiency: float, seeds: int = 5,
            n_boot: int = 1000) -> dict:
    """Full MVTec AD + VisA, main table, ViT-B-16-plus-240: per-image costs from the dry run and the FLOPs.

    The work after the feature passes scales with test images x runs, the feature passes with the images only.
    ``n_boot`` is recorded; the metrics' cost is bench_metrics' measurement with 1,000 resamples."""
    gen, grid = report["generate"], report["grid"]
    comp = grid["components"]
    test_dry = sum(g["counts"]["test"] for g in gen.values())
    test_full = sum(g["full_counts"]["test"] for g in gen.values())
    scale = test_full / test_dry
    # tiny-model feature time of the dry run: what the ViT-B pass replaces; the rest scales with the test images
    runs_full = runs_per_dataset(seeds) * len(gen)
    run_scale = runs_full / grid["runs"]
    # after the feature passes, per test image and run, from the dry run: scoring, masks, writing, planning
    # (FADE's patch distances are replaced by ViT-B's measured FADE scoring below; metrics from bench_metrics)
    per_run = sum(comp.get(k, 0.0) for k in ("scoring_and_rest", "masks", "write", "plan"))
    # every run of a dataset scores that dataset's test images: maps = test images x runs per dataset
    fade_runs = sum(1 if st["shots"] == 0 else seeds for st in _settings() if st["method"] == "fade")
    other_runs = runs_per_dataset(seeds) - fade_runs
    metrics = test_full * (fade_runs * METRIC_SECONDS_PER_MAP["uint8"] + other_runs * METRIC_SECONDS_PER_MAP["float32"])
    other = per_run * scale * run_scale + test_full * fade_runs * VITB_FADE_SCORING_SECONDS + metrics
    # PatchCore's WideResNet-50 is the real network in the dry run: its measured time per image is kept
    dry_features = comp.get("patchcore_cnn", 0.0) * scale
    probe = report.get("vitb_probe") or {}
    win_s, win_tf = probe.get("winclip_seconds_per_image", 0.0), probe.get("winclip_tflop_per_image", 0.0)
    classes_dry = sum(g["counts"]["classes"] for g in gen.values())
    classes_full = sum(g["full_counts"]["classes"] for g in gen.values())
    refs = report["distinct_reference_images"] * classes_full / classes_dry
    images = test_full + refs
    metrics_dry = report["eval"]["seconds"]  # the dry run's own metrics phase, for comparison
    # text: the class-name ensembles (FADE's wrapped, WinCLIP's raw) per class, the rest once
    from zsad.prompts import winclip_prompts

    per_class = 2 * sum(len(v) for v in winclip_prompts("x").values())
    shared = report["disk"]["cache_entries_by_kind"].get("text", 0) - per_class * classes_dry
    text_full = shared + per_class * classes_full
    cpu_features = images * (VITB_FADE_SECONDS + win_s) + dry_features + text_full * TEXT_SECONDS["full"]
    tflop = images * (VITB_FADE_TFLOP + win_tf)
    gpu_features = tflop / (gpu_peak_tflops * gpu_efficiency) + dry_features / 20  # WRN50 on a GPU: >= 20x
    return {"test_images_full": test_full, "scale_from_dry_run": scale, "reference_images": refs,
            "seeds": seeds, "n_boot": n_boot,
            "runs_full": runs_per_dataset(seeds) * len(gen), "runs_dry": grid["runs"],
            # every run folder holds one map per test image of its dataset; both datasets have the same runs
            "run_folders_bytes_full": report["disk"]["results_bytes_per_map"] * test_full
            * runs_per_dataset(seeds),
            "text_prompts_full": text_full, "vitb_text_hours": {"full": text_full * TEXT_SECONDS["full"] / 3600,
                                                                "trim": text_full * TEXT_SECONDS["trim"] / 3600},
            "vitb_feature_tflop": tflop, "dry_run_feature_hours_scaled": dry_features / 3600,
            "cpu": {"features_hours": cpu_features / 3600, "rest_hours": other / 3600,
                    "metrics_hours": metrics / 3600, "dry_run_metrics_seconds": metrics_dry,
                    "total_hours": (cpu_features + other) / 3600},
            "gpu_assumption": {"peak_tflops": gpu_peak_tflops, "efficiency": gpu_efficiency},
            "gpu": {"features_hours": gpu_features / 3600, "rest_hours_on_cpu": other / 3600,
                    "total_hours": (gpu_features + other) / 3600},
            "note": "rest = scoring, masks, writing, planning per image and run from the dry run, FADE's ViT-B "
                    "scoring (0.08 s/image) and the metrics with 1,000-resample intervals from bench_metrics; it "
                    "stays on the CPU with a GPU. GPU features: FLOPs at the assumed fraction of peak, WideResNet-50 "
                    "assumed 20x faster than on this CPU"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="zsad-tiny-vit",
                    help="open_clip architecture of the grid (random weights; ViT-B-16-plus-240 on a GPU)")
    ap.add_argument("--fraction", type=float, default=0.03, help="of every per-class count (at least 1)")
    ap.add_argument("--seeds", default="0,1", help="few-shot seeds of the grid (the paper preset: 0,1,2,3,4)")
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (the paper preset: 1000)")
    ap.add_argument("--train-render-scale", type=int, default=4)
    ap.add_argument("--min-test", type=int, default=4,
                    help="at least this many normal and defective test images per class (bootstrap needs both)")
    ap.add_argument("--mvtec-classes", help="comma-separated subset of MVTec AD's classes (default: all 15)")
    ap.add_argument("--visa-classes", help="comma-separated subset of VisA's classes (default: all 12)")
    ap.add_argument("--max-side", type=int, help="cap the image side (a quick smoke run; default: real sizes)")
    ap.add_argument("--class-sizes", default="20,40,80", help="test images of the class-RSS phase")
    ap.add_argument("--vitb-probe", action="store_true", help="also time WinCLIP's ViT-B window pass (1 image)")
    ap.add_argument("--project-seeds", type=int, default=5, help="seeds of the projected study (paper preset: 5)")
    ap.add_argument("--project-n-boot", type=int, default=1000, help="resamples of the projected study")
    ap.add_argument("--gpu-peak-tflops", type=float, default=989.0, help="H100/H200 dense bf16")
    ap.add_argument("--gpu-efficiency", type=float, default=0.3, help="assumed fraction of peak sustained")
    ap.add_argument("--work", type=Path, help="keep trees, caches and runs here (default: a temp folder)")
    ap.add_argument("--out", type=Path)
    # internal: one phase in this interpreter
    ap.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    ap.add_argument("--datasets", help=argparse.SUPPRESS)
    ap.add_argument("--roots", help=argparse.SUPPRESS)
    ap.add_argument("--results-dir", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    ap.add_argument("--cls", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.phase:
        print(json.dumps(PHASES[args.phase](args)))
        return 0
    if not 0 < args.fraction <= 1:
        ap.error("--fraction must be in (0, 1]")
    report = {"argv": sys.argv[1:] if argv is None else list(argv), "date": time.strftime("%Y-%m-%d %H:%M"),
              "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "load_average_start": os.getloadavg(), "n_boot": args.n_boot, "seeds": args.seeds, "model": args.model}
    with tempfile.TemporaryDirectory(prefix="zsad-bench-paper-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        report["generate"] = generate(work / "trees", args.fraction, args.train_render_scale,
                                      args.max_side, args.min_test,
                                      {"mvtec": args.mvtec_classes and args.mvtec_classes.split(","),
                                       "visa": args.visa_classes and args.visa_classes.split(",")})
        roots = ",".join(report["generate"][d]["root"] for d in ("mvtec", "visa"))
        common = ["--model", args.model,
                  "--datasets", "mvtec,visa", "--roots", roots, "--seeds", args.seeds, "--n-boot", str(args.n_boot),
                  "--results-dir", str(work / "results"), "--cache", str(work / "cache")]
        report["grid"] = _child("grid", common)
        print(f"grid: {report['grid']['wall_seconds']:.0f} s, peak {report['grid']['peak_rss_gib']:.2f} GiB, "
              + ", ".join(f"{k} {v:.0f} s" for k, v in report["grid"]["components"].items()), flush=True)
        report["eval"] = _child("eval", common)
        print(f"eval: {report['eval']['seconds']:.0f} s", flush=True)
        from zsad.cache import FeatureCache

        info = FeatureCache(work / "cache").info()
        runs = sorted(p.parent for p in (work / "results").rglob("predictions.npz"))
        maps = 0
        import numpy as np

        for run in runs:
            with np.load(run / "predictions.npz") as npz:
                maps += len(npz["scores"])
        report["disk"] = {"cache_bytes_by_kind": {k: v["bytes"] for k, v in info["kinds"].items()},
                          "cache_entries_by_kind": {k: v["entries"] for k, v in info["kinds"].items()},
                          "results_bytes": _du(work / "results"), "run_folders": len(runs), "maps": maps,
                          "results_bytes_per_map": _du(work / "results") / max(1, maps)}
        refs = set()
        for run in runs:
            prov = json.loads((run / "provenance.json").read_text())
            for files in prov.get("few_shot_references", {}).values():
                refs.update(files)
        report["distinct_reference_images"] = len(refs)
        # peak memory against class size: one class, FADE 0-shot, its own tree at 448 px images
        from zsad.data.paper_scale import make_paper_scale

        report["class_rss"] = []
        for n in [int(v) for v in args.class_sizes.split(",")]:
            frac = min(1.0, n / 160)  # screw: 41 + 119 test images
            tree = make_paper_scale(work / f"class{n}", "mvtec", fraction=frac, classes=["screw"], max_side=448,
                                    train_render_scale=4, overwrite=True)
            r = _child("class", ["--model", args.model,
                                 "--roots", str(tree), "--cls", "screw", "--cache", str(work / f"cache-class{n}")])
            report["class_rss"].append({"test_images": r["images"], "peak_rss_gib": r["peak_rss_gib"],
                                        "wall_seconds": r["wall_seconds"]})
            print(f"class of {r['images']} test images: peak {r['peak_rss_gib']:.2f} GiB", flush=True)
    if args.vitb_probe:
        report["vitb_probe"] = vitb_probe()
    report["projection"] = project(report, args.gpu_peak_tflops, args.gpu_efficiency,
                                   args.project_seeds, args.project_n_boot)
    report["load_average_end"] = os.getloadavg()
    print(json.dumps(report["projection"], indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
