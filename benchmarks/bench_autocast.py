"""FADE with the image tower under bf16 autocast against float32: time per image and the deviation of every metric.

Run by hand (figures go into benchmarks/README.md):

    .venv/bin/python benchmarks/bench_autocast.py --out /tmp/bench_autocast.json
    .venv/bin/python benchmarks/bench_autocast.py --sizes 240 448 896 --classes weave   # 896 px too (slow on CPU)

On the synthetic set (``zsad.data.make_synthetic``, written to a temporary folder) with ViT-B-16-plus-240 (random
weights unless --checkpoint): for each precision (float32, then ``autocast="bf16"``; ``fp16`` too with --fp16 on
CUDA) the tokens of every test and reference image are extracted with :func:`zsad.features.extract_tokens`
(no cache, one call per size, timed after a one-image warm-up per size), then FADE 0-shot and 1-shot run per class
(``zsad.methods.fade.fade``, official prompts and settings, as ``zsad.study.predict`` does) and are evaluated with
:func:`zsad.metrics.evaluate_class` (class means). Printed JSON: seconds per image per size and precision, every
metric per FADE setting in each precision and its deviation from float32, and the max abs difference / min cosine
of the (L2-normalised) tokens per size and stream.

Random weights put the metrics near chance, so the deviations measure how much the lower precision moves the
scores and maps through FADE's pipeline (including its uint8 map quantisation), not a loss of accuracy on real data.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from zsad.backbone import load_model
from zsad.cache import encode_prompts_cached
from zsad.data import load_dataset, make_synthetic, sample_references
from zsad.features import extract_tokens
from zsad.methods.fade import FadeConfig, fade
from zsad.metrics import evaluate_class, mean_over_classes
from zsad.runners import _prompt_sets
from zsad.study import _ground_truth
from zsad.text import prototypes

EVAL_SIZE = 448


def _extract_timed(loaded, records, sizes, autocast, batch_size):
    """Tokens of ``records`` at ``sizes`` (one extract_tokens call per size, each after a one-image warm-up) and the
    seconds per image of each size."""
    tokens, seconds = None, {}
    for size in sizes:
        extract_tokens(loaded, records[:1], [size], batch_size=batch_size, progress=False, autocast=autocast)
        t0 = time.perf_counter()
        part = extract_tokens(loaded, records, [size], batch_size=batch_size, progress=False, autocast=autocast)
        seconds[size] = round((time.perf_counter() - t0) / len(records), 4)
        if tokens is None:
            tokens = part
        else:
            tokens.clip[size], tokens.gem[size] = part.clip[size], part.gem[size]
    return tokens, seconds


def _subset(tokens, idx):
    from zsad.features import TokenSet

    out = TokenSet([tokens.relpaths[i] for i in idx])
    for s in tokens.clip:
        out.clip[s], out.gem[s] = tokens.clip[s][idx], tokens.gem[s][idx]
    return out


def _settings(sizes):
    """FADE segmentation scale sets: each size alone (with the 240 CLS for AC) and all sizes together."""
    sets = [(s,) for s in sizes]
    if len(sizes) > 1:
        sets.append(tuple(sizes))
    return sets


def class_prototypes(loaded, classes):
    """FADE's (2, D) text prototypes per class: ``ac`` (class-name prompts) and ``as`` (the "object" ensemble).
    Computed once in float32 (the text tower is not part of the comparison)."""
    out = {}
    for cls in classes:
        ac, seg = _prompt_sets(cls, ())
        out[cls] = {name: prototypes(encode_prompts_cached(loaded, p["normal"], cache=None),
                                     encode_prompts_cached(loaded, p["abnormal"], cache=None))
                    for name, p in (("ac", ac), ("as", seg))}
    return out


def run_precision(loaded, by_class, refs, protos, sizes, autocast, batch_size, shots_list):
    """Extract every image once, then run every FADE setting; returns timings, tokens and metrics."""
    order = [r for cls in sorted(by_class) for r in by_class[cls]] + [r for cls in sorted(refs) for r in refs[cls]]
    tokens, seconds = _extract_timed(loaded, order, sorted(set(sizes) | {240}), autocast, batch_size)
    index = {id(r): i for i, r in enumerate(order)}
    metrics = {}
    t0 = time.perf_counter()
    for shots in shots_list:
        for scale_set in _settings(sizes):
            per_class = {}
            for cls in sorted(by_class):
                test = by_class[cls]
                tt = _subset(tokens, [index[id(r)] for r in test])
                rt = _subset(tokens, [index[id(r)] for r in refs[cls][:shots]]) if shots else None
                out = fade(tt, FadeConfig(shots=shots, sizes=scale_set, map_size=EVAL_SIZE),
                           ac_prototypes=protos[cls]["ac"], as_prototypes=protos[cls]["as"], refs=rt)
                per_class[cls] = evaluate_class([r.label for r in test], out.scores, _ground_truth(test, EVAL_SIZE),
                                                out.maps)
            name = f"{shots}-shot @ {'+'.join(map(str, scale_set))}"
            metrics[name] = {k: round(float(v), 6) for k, v in mean_over_classes(per_class).items()}
    return {"seconds_per_image": seconds, "fade_and_metrics_s": round(time.perf_counter() - t0, 2)}, tokens, metrics


def token_deviation(ref, other):
    out = {}
    for size in ref.clip:
        for stream in ("clip", "gem"):
            a, b = ref.stream(stream)[size].double(), other.stream(stream)[size].double()
            cos = F.cosine_similarity(a, b, dim=-1)
            out[f"{size}/{stream}"] = {"max_abs_diff": float((a - b).abs().max()),
                                       "mean_abs_diff": float((a - b).abs().mean()),
                                       "min_token_cos": float(cos.min()), "mean_token_cos": float(cos.mean())}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[240, 448])
    ap.add_argument("--classes", nargs="+", default=["weave", "grain"])
    ap.add_argument("--n-good", type=int, default=4, help="normal test images per class")
    ap.add_argument("--n-defect", type=int, default=2, help="defect test images per class and defect type (3 types)")
    ap.add_argument("--shots", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--checkpoint")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--fp16", action="store_true", help="also autocast='fp16' (CUDA only)")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    loaded = load_model("ViT-B-16-plus-240", checkpoint=args.checkpoint, device=args.device)
    precisions = [None, "bf16"] + (["fp16"] if args.fp16 else [])
    with tempfile.TemporaryDirectory() as tmp:
        root = make_synthetic(f"{tmp}/synth", seed=0, classes=tuple(args.classes), n_train=max(args.shots) + 1,
                              n_test_good=args.n_good, n_test_defect=args.n_defect)
        records = load_dataset("mvtec", root)
        by_class = {c: [r for r in records if r.cls == c and r.split == "test"] for c in args.classes}
        refs = {c: sample_references([r for r in records if r.cls == c and r.split == "train"], max(args.shots), 0)
                if max(args.shots) else [] for c in args.classes}
        protos = class_prototypes(loaded, args.classes)
        runs, tokens, metrics = {}, {}, {}
        for prec in precisions:
            name = prec or "fp32"
            runs[name], tokens[name], metrics[name] = run_precision(loaded, by_class, refs, protos, args.sizes, prec,
                                                                    args.batch_size, args.shots)
            print(f"{name}: {runs[name]}", file=sys.stderr, flush=True)
    deviation = {}
    for prec in precisions[1:]:
        deviation[prec] = {
            "metrics": {setting: {k: round(v - metrics["fp32"][setting][k], 6) for k, v in m.items()}
                        for setting, m in metrics[prec].items()},
            "max_abs_metric_deviation": max(abs(v - metrics["fp32"][s][k]) for s, m in metrics[prec].items()
                                            for k, v in m.items()),
            "tokens": token_deviation(tokens["fp32"], tokens[prec]),
            "speedup": {str(s): round(runs["fp32"]["seconds_per_image"][s] / t, 3)
                        for s, t in runs[prec]["seconds_per_image"].items()},
        }
    n_test = sum(len(v) for v in by_class.values())
    result = {"model": "ViT-B-16-plus-240", "weights": args.checkpoint or "random init (seed 0)",
              "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(0),
              "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
              "torch_threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "images": {"test": n_test, "references": sum(len(v) for v in refs.values()),
                         "classes": args.classes}, "batch_size": args.batch_size,
              "runs": runs, "metrics": metrics, "deviation_vs_fp32": deviation}
    text = json.dumps(result, indent=1, default=lambda o: o.item() if isinstance(o, np.generic) else str(o))
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
