"""Compact storage of anomaly maps and of cached tokens: bytes and metric deviation (issue 19, part 3).

1. **Maps** (``predictions.npz``, ``zsad.results.MAP_STORAGES``): every run folder under ``--results`` (the book's
   committed runs: every method on the embedded data) is read back as float32, stored as float16 and as 8-bit
   per-class quantisation in memory, and its metrics recomputed (``metrics_table``, no bootstrap); reported per
   method: the largest |deviation| of every metric from the float32 metrics, and the bytes of the maps member and of
   the whole ``predictions.npz`` per map (deflated as ``write_run`` does).
2. **Token cache** (``FeatureCache(float16=True)``): the CLIP + GEM tokens of ``--cache-images`` synthetic images at
   240 / 448 / 896 px with ``--cache-model`` (default ViT-B-16-plus-240, random weights) cached as float32 and as
   float16: bytes per image on disk, the largest token deviation, and FADE's 0-shot and 1-shot metric deviation
   (tiny model on the embedded synthetic set, ``--deviation-model``) between the two caches.

    .venv/bin/python benchmarks/bench_storage.py --out /tmp/storage.json                 # ~5 min
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from zsad import results
from zsad.evaluate import metrics_table

ROOT = Path(__file__).resolve().parent.parent


def npz_bytes(arrays: dict) -> int:
    """Bytes of an .npz of ``arrays`` written as ``write_run`` writes it."""
    buf = io.BytesIO()
    results._write_npz(buf, arrays)
    return buf.tell()


def _metrics(pred: dict) -> dict[tuple[str, str], float]:
    table = metrics_table(pred, dataset="d", method="m", setting="s", shots=0, seed=0, n_boot=0)
    return {(r["class"], r["metric"]): float(r["value"]) for _, r in table.iterrows()}


def map_storage(results_dir: Path, limit: int | None) -> dict:
    """Per method and storage: the largest metric deviation from float32 and bytes per map."""
    runs = sorted(p.parent for p in results_dir.rglob("predictions.npz"))[:limit]
    dev = defaultdict(lambda: defaultdict(lambda: defaultdict(float)))
    size = defaultdict(lambda: defaultdict(lambda: {"maps_bytes": 0, "npz_bytes": 0, "maps": 0}))
    dtypes = defaultdict(set)
    for run in runs:
        method = json.loads((run / "provenance.json").read_text())["parameters"]["method"]
        pred = results.read_predictions(run)
        if pred["maps"].shape[1:] == (1, 1):
            continue  # an image-level method: no maps
        dtypes[method].add(str(pred["maps"].dtype))
        base = _metrics(pred)
        for storage in results.MAP_STORAGES:
            stored = results.encode_maps(pred["maps"], pred["classes"], storage)
            got = _metrics(results.apply_map_storage(pred, storage))
            for key, value in got.items():
                if np.isfinite(value) or np.isfinite(base[key]):
                    d = dev[method][storage]
                    d[key[1]] = max(d[key[1]], abs(value - base[key]))
            s = size[method][storage]
            s["maps_bytes"] += npz_bytes({"maps": stored["maps"]})
            s["npz_bytes"] += npz_bytes({**pred, **stored})
            s["maps"] += len(pred["maps"])
        print(f"{run.relative_to(results_dir)}: {method}, {len(pred['maps'])} maps", flush=True)
    out = {}
    for method in sorted(size):
        out[method] = {"map_dtype_computed": sorted(dtypes[method]), "storages": {}}
        for storage in results.MAP_STORAGES:
            s = size[method][storage]
            out[method]["storages"][storage] = {
                "max_abs_metric_deviation": dict(sorted(dev[method][storage].items())),
                "maps_kib_per_map": s["maps_bytes"] / s["maps"] / 1024,
                "npz_kib_per_map": s["npz_bytes"] / s["maps"] / 1024, "maps": s["maps"]}
    return {"runs": len(runs), "methods": out}


def _entry_bytes(cache_root: Path) -> int:
    return sum(p.stat().st_size for p in (cache_root / "tokens").rglob("*.safetensors"))


def token_cache(model_name: str, images: int, sizes: tuple[int, ...], deviation_model: str, work: Path) -> dict:
    """Bytes per image of float32 and float16 token entries; token and FADE metric deviation."""
    import zsad
    from zsad.cache import FeatureCache
    from zsad.data import load_dataset, make_synthetic
    from zsad.features import extract_tokens
    from zsad.study import predict

    root = make_synthetic(work / "synth", seed=0, classes=("weave",), n_train=1, n_test_good=images,
                          n_test_defect=1, size=128)
    test = load_dataset("mvtec", root, classes=["weave"], split="test")[:images]
    loaded = zsad.load_model(model_name)
    per = {}
    toks = {}
    for storage in ("float32", "float16"):
        cache = FeatureCache(work / f"cache-{storage}", float16=storage == "float16")
        extract_tokens(loaded, test, sizes, progress=False, cache=cache)  # fills the cache
        toks[storage] = extract_tokens(loaded, test, sizes, progress=False, cache=cache)  # read back
        per[storage] = _entry_bytes(cache.root) / len(test)
    token_dev = max(float((toks["float16"].gem[s] - toks["float32"].gem[s]).abs().max()) for s in sizes)
    token_dev = max(token_dev, max(float((toks["float16"].clip[s] - toks["float32"].clip[s]).abs().max())
                                   for s in sizes))
    # FADE's metrics from float16 against float32 tokens: the tiny model on the embedded synthetic set
    metric_dev = {}
    for shots in (0, 1):
        got = {}
        for storage in ("float32", "float16"):
            res = predict("fade", "synthetic", model=deviation_model, shots=shots, seed=0, n_boot=0,
                          max_images=12, progress=False,
                          cache=FeatureCache(work / f"dev-{storage}", float16=storage == "float16"))
            got[storage] = {(r["class"], r["metric"]): float(r["value"]) for _, r in res["metrics"].iterrows()}
        metric_dev[f"{shots}-shot"] = {}
        for (cls, metric), value in got["float32"].items():
            d = abs(got["float16"][cls, metric] - value)
            metric_dev[f"{shots}-shot"][metric] = max(metric_dev[f"{shots}-shot"].get(metric, 0.0), d)
    return {"model": model_name, "images": len(test), "sizes": list(sizes),
            "bytes_per_image": per, "max_abs_token_deviation": token_dev,
            "fade_metric_deviation_model": deviation_model, "fade_max_abs_metric_deviation": metric_dev}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=ROOT / "results", help="run folders to re-store")
    ap.add_argument("--limit", type=int, help="at most this many run folders (first in sorted order)")
    ap.add_argument("--cache-model", default="ViT-B-16-plus-240")
    ap.add_argument("--cache-images", type=int, default=1)
    ap.add_argument("--sizes", type=int, nargs="+", default=[240, 448, 896])
    ap.add_argument("--deviation-model", default="zsad-tiny-vit")
    ap.add_argument("--skip-cache", action="store_true", help="only the map part")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    if not args.results.is_dir():
        ap.error(f"--results {args.results}: not a folder")
    if args.cache_images < 1:
        ap.error("--cache-images must be >= 1")
    report = {"argv": sys.argv[1:] if argv is None else list(argv), "date": time.strftime("%Y-%m-%d %H:%M"),
              "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "load_average_start": os.getloadavg()}
    t0 = time.perf_counter()
    report["maps"] = map_storage(args.results, args.limit)
    report["maps_seconds"] = time.perf_counter() - t0
    if not args.skip_cache:
        with tempfile.TemporaryDirectory(prefix="zsad-bench-storage-") as tmp:
            report["token_cache"] = token_cache(args.cache_model, args.cache_images, tuple(args.sizes),
                                                args.deviation_model, Path(tmp))
    report["load_average_end"] = os.getloadavg()
    print(json.dumps({k: report[k] for k in ("maps", "token_cache") if k in report}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
