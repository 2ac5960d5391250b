"""Per-image time of FADE zero-shot at 240, 448 and 896 px (run by hand; figures go into README.md).

Builds the paper's ViT-B-16-plus-240 (random weights unless --checkpoint; speed does not depend on the weights),
runs the GEM + CLIP token pass and FADE's 0-shot scoring for a few synthetic images at each scale separately and
for the full multi-scale setting, and prints JSON: seconds per image, peak RSS, device, threads.

    .venv/bin/python benchmarks/bench_fade_speed.py --images 2
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time

import torch

from zsad.backbone import load_model
from zsad.data import load_dataset, make_synthetic
from zsad.features import extract_tokens
from zsad.methods.fade import FadeConfig, fade
from zsad.prompts import winclip_prompts
from zsad.text import encode_prompts, prototypes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--checkpoint")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=1)
    args = ap.parse_args()
    loaded = load_model("ViT-B-16-plus-240", checkpoint=args.checkpoint, device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = make_synthetic(f"{tmp}/s", classes=("weave",), n_train=1, n_test_good=args.images, n_test_defect=0)
        records = [r for r in load_dataset("mvtec", root) if r.split == "test"][: args.images]
        p = winclip_prompts("object")
        proto = prototypes(encode_prompts(loaded.model, loaded.tokenizer, p["normal"]),
                           encode_prompts(loaded.model, loaded.tokenizer, p["abnormal"]))
        runs = {}
        for sizes in ((240,), (448,), (896,), (240, 448, 896)):
            start = time.perf_counter()
            tokens = extract_tokens(loaded.model, records, sorted(set(sizes) | {240}), batch_size=args.batch_size,
                                    progress=False)
            mid = time.perf_counter()
            fade(tokens, FadeConfig(sizes=sizes), ac_prototypes=proto, as_prototypes=proto)
            end = time.perf_counter()
            runs["+".join(map(str, sizes))] = {"features_s_per_image": round((mid - start) / len(records), 3),
                                                "fade_s_per_image": round((end - mid) / len(records), 3)}
    print(json.dumps({"device": args.device if args.device == "cpu" else torch.cuda.get_device_name(0),
                      "cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
                      "images": len(records), "batch_size": args.batch_size, "runs": runs,
                      "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}, indent=1))


if __name__ == "__main__":
    main()
