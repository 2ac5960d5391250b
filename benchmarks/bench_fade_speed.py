"""Per-image time of FADE zero-shot at 240, 448 and 896 px, and how close it runs to the hardware's limit.

Builds the paper's ViT-B-16-plus-240 (random weights unless --checkpoint; speed does not depend on the weights),
runs the GEM + CLIP token pass and FADE's 0-shot scoring for a few synthetic images at each scale separately and
for the full multi-scale setting (after one warm-up batch), and prints JSON: seconds per image, images/s, peak
memory, device, threads. The floating-point work of one image's token pass is counted once per setting with
``torch.utils.flop_counter`` (attention through the math kernel for the count, since the counter has no formula
for the fused CPU kernel); with ``--peak-tflops`` (the device's dense peak in the dtype used) the achieved fraction
of it is reported.

    .venv/bin/python benchmarks/bench_fade_speed.py --images 2                        # CPU, fp32, batch 1
    .venv/bin/python benchmarks/bench_fade_speed.py --device cuda --images 32 --batch-size 16 \
        --autocast bf16 --peak-tflops 989                                              # H100 SXM, dense bf16
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from zsad.backbone import load_model
from zsad.data import load_dataset, make_synthetic
from zsad.features import extract_tokens
from zsad.gem import encode_tokens
from zsad.methods.fade import FadeConfig, fade
from zsad.prompts import winclip_prompts
from zsad.text import encode_prompts, prototypes


def token_pass_flops(model, size: int) -> int:
    """Floating-point operations of one image's CLIP + GEM token pass at ``size`` px (a multiply-add counts 2)."""
    pixels = torch.zeros(1, 3, size, size, device=next(model.parameters()).device)
    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        encode_tokens(model, pixels)
    return counter.get_total_flops()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--checkpoint")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--autocast", choices=["bf16", "fp16"], help="run the tower under torch.autocast")
    ap.add_argument("--peak-tflops", type=float, help="the device's dense peak TFLOP/s in the dtype used")
    args = ap.parse_args()
    loaded = load_model("ViT-B-16-plus-240", checkpoint=args.checkpoint, device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = make_synthetic(f"{tmp}/s", classes=("weave",), n_train=1, n_test_good=args.images, n_test_defect=0)
        records = [r for r in load_dataset("mvtec", root) if r.split == "test"][: args.images]
        p = winclip_prompts("object")
        proto = prototypes(encode_prompts(loaded.model, loaded.tokenizer, p["normal"]),
                           encode_prompts(loaded.model, loaded.tokenizer, p["abnormal"]))
        flops = {size: token_pass_flops(loaded.model, size) for size in (240, 448, 896)}
        extract_tokens(loaded.model, records[:args.batch_size], [240], batch_size=args.batch_size, progress=False,
                       autocast=args.autocast)  # warm-up: kernels, allocator
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        runs = {}
        for sizes in ((240,), (448,), (896,), (240, 448, 896)):
            passes = sorted(set(sizes) | {240})  # FADE's classification always needs the 240 px pass
            _sync(args.device)
            start = time.perf_counter()
            tokens = extract_tokens(loaded.model, records, passes, batch_size=args.batch_size, progress=False,
                                    autocast=args.autocast)
            _sync(args.device)
            mid = time.perf_counter()
            fade(tokens, FadeConfig(sizes=sizes), ac_prototypes=proto, as_prototypes=proto)
            _sync(args.device)
            end = time.perf_counter()
            per_image = (mid - start) / len(records)
            tflop = sum(flops[s] for s in passes) / 1e12
            run = {"features_s_per_image": round(per_image, 4),
                   "fade_s_per_image": round((end - mid) / len(records), 4),
                   "images_per_s": round(len(records) / (end - start), 3), "tflop_per_image": round(tflop, 4),
                   "achieved_tflops": round(tflop / per_image, 3)}
            if args.peak_tflops:
                run["fraction_of_peak"] = round(tflop / per_image / args.peak_tflops, 3)
            runs["+".join(map(str, sizes))] = run
    print(json.dumps({"device": args.device if args.device == "cpu" else torch.cuda.get_device_name(0),
                      "cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
                      "images": len(records), "batch_size": args.batch_size, "autocast": args.autocast,
                      "peak_tflops": args.peak_tflops,
                      "tflop_per_pass": {s: round(f / 1e12, 4) for s, f in flops.items()},
                      "runs": runs,
                      "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                      "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)
                      if args.device.startswith("cuda") else None}, indent=1))


if __name__ == "__main__":
    main()
