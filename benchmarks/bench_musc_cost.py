"""MuSc's mutual scoring at class sizes up to 200: time and peak extra memory of one (layer, degree) pass, measured.

A class costs 12 such passes (4 layers x 3 aggregation degrees); the feature pass comes on top. Tokens are random
unit vectors of the architecture's shape (speed does not depend on the weights). Prints one JSON document:
device, torch threads, machine load before and after, and one row per (shape, N).

    .venv/bin/python benchmarks/bench_musc_cost.py                       # ViT-B-16-plus-240 at 240 px, N 25..200
    .venv/bin/python benchmarks/bench_musc_cost.py --model ViT-L-14-336 --size 518 --sizes 10,25
    .venv/bin/python benchmarks/bench_musc_cost.py --device cuda         # on a GPU, when one is lent
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from zsad.methods.musc import lnamd, mutual_scores
from zsad.musc_cost import PeakRss, token_shape


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-16-plus-240")
    ap.add_argument("--size", type=int, default=240)
    ap.add_argument("--sizes", default="25,50,100,200", help="class sizes N")
    ap.add_argument("--chunk-mb", type=float, default=256.0)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    shape = token_shape(args.model, args.size)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    rows = []
    load_before = os.getloadavg()
    for n in (int(v) for v in args.sizes.split(",")):
        tokens = torch.nn.functional.normalize(
            torch.randn(n, 1 + shape["patches"], shape["width"], generator=gen), dim=-1).to(device)
        t0 = time.perf_counter()
        z = lnamd(tokens, 5)
        t1 = time.perf_counter()
        with PeakRss() as mem:
            mutual_scores(z, chunk_mb=args.chunk_mb)
            if device.type == "cuda":
                torch.cuda.synchronize()
        t2 = time.perf_counter()
        macs = n * (n - 1) * shape["patches"] ** 2 * shape["width"]
        rows.append({"n_images": n, "lnamd_s": round(t1 - t0, 3), "msm_s": round(t2 - t1, 2),
                     "class_s": round(12 * (t2 - t0), 1), "s_per_image": round(12 * (t2 - t0) / n, 3),
                     "peak_extra_mib": round(mem.extra / 2 ** 20, 1), "gmac_per_s": round(macs / (t2 - t1) / 1e9, 1)})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"shape": shape, "device": str(device), "cpu": platform.processor() or platform.machine(),
                      "threads": torch.get_num_threads(), "chunk_mb": args.chunk_mb,
                      "load_before": load_before, "load_after": os.getloadavg(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
