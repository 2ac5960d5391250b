"""Text tower at full context (77 positions) against each batch trimmed to its longest prompt (issue 19, part 1).

For each model: the study's prompt sets (FADE's wrapped WinCLIP ensembles, an LLM ensemble, WinCLIP's raw prompts,
Tamura's 2 x 1,000 random-word prompts), encoded with ``context="full"`` and ``context="trim"`` in one process,
repetitions interleaved (full, trim, full, trim, ...) so that load on a shared machine hits both alike. Reports
seconds per prompt, the speed-up, the largest absolute deviation of any embedding value, and the largest deviation
of FADE's language-only image scores and map values (0-shot, synthetic images) when its two text prototypes come
from trimmed instead of full-context embeddings.

    .venv/bin/python benchmarks/bench_text_context.py --out /tmp/text_context.json
    .venv/bin/python benchmarks/bench_text_context.py --models ViT-B-16-plus-240 --reps 2 --images 4
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import zsad
from zsad.data import load_dataset, make_synthetic
from zsad.features import extract_tokens
from zsad.methods.fade import FadeConfig, fade
from zsad.methods.tamura import TamuraConfig, build_prompt_set, vocabulary_words
from zsad.prompts import read_prompt_file, winclip_prompts
from zsad.text import encode_prompts, prototypes

ROOT = Path(__file__).resolve().parent.parent


def prompt_sets(tokenizer) -> dict[str, tuple[list[str], str | None]]:
    """``name -> (prompts, wrapper)``: the kinds of prompt the study encodes (wrapper None = raw)."""
    from zsad.text import FADE_WRAPPER

    win = winclip_prompts("bottle")
    llm = read_prompt_file(ROOT / "prompts" / "llm_generic_seed0.json")
    cfg = TamuraConfig()
    tam = build_prompt_set(cfg, "bottle", vocabulary_words(tokenizer, cfg.word_min_len, cfg.word_max_len))
    return {
        "fade_winclip_wrapped": (win["normal"] + win["abnormal"], FADE_WRAPPER),
        "llm_generic_seed0_wrapped": (llm["normal"] + llm["abnormal"], FADE_WRAPPER),
        "winclip_raw": (win["normal"] + win["abnormal"], None),
        "tamura_random_words": (tam.unique()[0], cfg.wrapper),
    }


def token_lengths(tokenizer, texts) -> dict:
    ends = tokenizer(texts).argmax(-1) + 1
    return {"min": int(ends.min()), "mean": round(float(ends.float().mean()), 1), "max": int(ends.max())}


def fade_deviation(loaded, images: int, work: Path) -> dict:
    """Largest |trim - full| of FADE's language-only 0-shot image scores and maps (240 px, synthetic images)."""
    root = make_synthetic(work / "synth", seed=0, classes=("weave",), n_train=1, n_test_good=images // 2,
                          n_test_defect=max(1, images // 6), size=128)
    test = load_dataset("mvtec", root, classes=["weave"], split="test")[:images]
    tokens = extract_tokens(loaded, test, (240,), progress=False)
    win_cls, win_obj = winclip_prompts("weave"), winclip_prompts("object")
    cfg = FadeConfig(shots=0, ac_mode="language", as_mode="language", sizes=(240,))
    out = {}
    for context in ("full", "trim"):
        ac = prototypes(*(encode_prompts(loaded, None, win_cls[s], context=context) for s in ("normal", "abnormal")))
        as_ = prototypes(*(encode_prompts(loaded, None, win_obj[s], context=context) for s in ("normal", "abnormal")))
        out[context] = fade(tokens, cfg, ac_prototypes=ac, as_prototypes=as_)
    return {"images": len(test),
            "max_abs_image_score": float(np.abs(np.asarray(out["trim"].scores, np.float64)
                                                - np.asarray(out["full"].scores, np.float64)).max()),
            "max_abs_map_value": float(np.abs(np.asarray(out["trim"].maps, np.float64)
                                              - np.asarray(out["full"].maps, np.float64)).max()),
            "maps_dtype": str(out["full"].maps.dtype)}


def bench_model(name: str, reps: int, images: int, work: Path, max_prompts: int | None = None) -> dict:
    loaded = zsad.load_model(name)
    rows = {}
    for set_name, (texts, wrapper) in prompt_sets(loaded.tokenizer).items():
        texts = texts[:max_prompts] if max_prompts else texts
        wrapped = [wrapper.format(t) for t in texts] if wrapper else texts
        times = {"full": [], "trim": []}
        emb = {}
        for _ in range(reps):
            for context in ("full", "trim"):
                t0 = time.perf_counter()
                emb[context] = encode_prompts(loaded, None, texts, wrapper=wrapper, context=context)
                times[context].append(time.perf_counter() - t0)
        best = {c: min(v) for c, v in times.items()}
        rows[set_name] = {
            "prompts": len(texts), "tokens": token_lengths(loaded.tokenizer, wrapped),
            "seconds_per_prompt": {c: best[c] / len(texts) for c in best},
            "speedup": best["full"] / best["trim"],
            "max_abs_embedding": float((emb["trim"] - emb["full"]).abs().max()),
            "bit_identical": bool(torch.equal(emb["trim"], emb["full"])),
        }
        print(f"{name:<20} {set_name:<26} {len(texts):5d} prompts  full {best['full'] / len(texts) * 1e3:7.2f} "
              f"ms/prompt  trim {best['trim'] / len(texts) * 1e3:7.2f}  x{rows[set_name]['speedup']:.2f}  "
              f"max|d| {rows[set_name]['max_abs_embedding']:.2e}", flush=True)
    return {"prompt_sets": rows, "fade_language_only": fade_deviation(loaded, images, work)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["zsad-tiny-vit", "ViT-B-16-plus-240"])
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions per context (best is kept)")
    ap.add_argument("--images", type=int, default=6, help="synthetic test images for FADE's score deviation")
    ap.add_argument("--max-prompts", type=int, help="encode at most this many prompts of each set (first ones)")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    if args.reps < 1 or args.images < 2:
        ap.error("--reps must be >= 1 and --images >= 2")
    report = {"argv": sys.argv[1:] if argv is None else list(argv),
              "date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
              "load_average_start": os.getloadavg(), "models": {}}
    with tempfile.TemporaryDirectory(prefix="zsad-bench-text-") as tmp:
        for name in args.models:
            report["models"][name] = bench_model(name, args.reps, args.images, Path(tmp) / name,
                                                   args.max_prompts)
            print(name, json.dumps(report["models"][name]["fade_language_only"]), flush=True)
    report["load_average_end"] = os.getloadavg()
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
