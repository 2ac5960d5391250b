"""FADE 0-shot feature extraction, zsad against the official GEM stack: time and peak memory per image, side by side.

Run by hand, not in CI (it needs the reference venv of gem_reference_README.md: torch 2.14.1 + open_clip_torch
2.24.0 + gem-torch 1.0.1 at /tmp/gemref-venv):

    .venv/bin/python benchmarks/bench_vs_official.py --out /tmp/bench_vs_official.json

What is measured: both token streams (ordinary CLIP and GEM, after ``ln_post`` and ``proj``) of ViT-B-16-plus-240 at
240, 448 and 896 px, i.e. FADE's zero-shot feature pass. The sides:

``official``  what the official code runs: ``gem.create_gem_model(name, pretrained=path)`` (gem-torch 1.0.1 on
              open_clip_torch 2.24.0, the combination FADE's author reports), one image at a time, under
              ``torch.no_grad()``, ``wrapper.model.visual(pixels)`` -> [gem, clip];
``zsad``      ``zsad.gem.encode_tokens`` (open_clip 3.3.0, sdpa) under ``torch.inference_mode()``, the timed images
              in one batch (what ``zsad.features.extract_tokens`` does, batch_size 8 by default);
``zsad_b1``   the same, one image at a time (separates batching from the forward itself).

Every side loads the SAME checkpoint file (a seeded random-init state dict, saved once into the work folder and
reused) and the SAME images (seeded smooth random images, CLIP-normalised). Each (side, size) is a subprocess of its
own interpreter, so the memory figures are that process's own: the peak resident set of the forward pass
(``VmHWM`` after a reset through ``/proc/self/clear_refs`` once the model is loaded, i.e. model + activations,
without the transient state-dict copy of loading) and the lifetime peak (``ru_maxrss``, which includes loading).
Same thread count on every side (``--threads``, default 2; also OMP/MKL_NUM_THREADS). One warm-up image per
(side, size) is excluded from timing, then ``--images`` timed images. The sides of one size run one after the
other, the official first; the parent also checks that the sides computed the same tokens (max abs difference).

Prints one JSON document with per side and size the seconds per image and the memory, and per size the ratios
zsad / official (time per image, forward peak, lifetime peak). The issue's targets at 896 px: time ratio <= 1/3,
peak-memory ratio <= 1/2.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

from side_versions import versions  # benchmarks/ is on sys.path when a script runs

REPO = Path(__file__).resolve().parents[1]
MODEL = "ViT-B-16-plus-240"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIDES = ("official", "zsad", "zsad_b1")
TARGETS = {"time_ratio_max": 1 / 3, "peak_ratio_max": 1 / 2, "at_size": 896}


# ------------------------------------------------------------------------------------------------ inputs


def make_inputs(work: Path, sizes: list[int], n_images: int, seed: int) -> dict:
    """The checkpoint (saved once, reused while the file is there) and 1 warm-up + n_images images per size."""
    import torch
    import torch.nn.functional as F

    ckpt = work / f"vit_b_16_plus_240-random-seed{seed}.pt"
    if not ckpt.is_file():
        sys.path.insert(0, str(REPO))
        from zsad.backbone import load_model

        loaded = load_model(MODEL, seed=seed)
        tmp = ckpt.with_suffix(".pt.tmp")
        torch.save(loaded.model.state_dict(), tmp)
        os.replace(tmp, ckpt)
        del loaded
    n = n_images + 1  # image 0 is the warm-up
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 12, 12, generator=gen)  # regions (bicubic-upsampled) + fine noise, as gem_reference
    fine = torch.rand(n, 3, 1024, 1024, generator=gen)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    pixels = {}
    for size in sizes:
        base = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
        noise = F.interpolate(fine, size=(size, size), mode="area")
        img = (0.8 * base + 0.2 * noise).clamp(0, 1)
        path = work / f"pixels_{size}_n{n}_seed{seed}.pt"
        torch.save(((img - mean) / std).contiguous(), path)
        pixels[str(size)] = str(path)
    gc.collect()
    return {"checkpoint": str(ckpt), "pixels": pixels}


# ------------------------------------------------------------------------------------------------- sides


def _status_kb(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run_side(side: str, size: int, inputs: dict, work: Path, threads: int, profile: bool,
             zsad_batch: int | None = None) -> None:
    import torch

    torch.set_num_threads(threads)
    t_load = time.perf_counter()
    if side in ("zsad", "zsad_b1"):
        sys.path.insert(0, str(REPO))
        from zsad.backbone import load_model
        from zsad.gem import encode_tokens

        model = load_model(MODEL, checkpoint=inputs["checkpoint"]).model
        grad_off = torch.inference_mode

        def forward(px):
            return encode_tokens(model, px)  # (clip, gem)
    else:
        import gem as gem_pkg

        wrapper = gem_pkg.create_gem_model(MODEL, pretrained=inputs["checkpoint"], device="cpu")
        wrapper.eval()
        grad_off = torch.no_grad

        def forward(px):
            gem, clip = wrapper.model.visual(px)  # GEM's patched forward returns [gem, clip]
            return clip, gem
    load_s = time.perf_counter() - t_load

    pixels = torch.load(inputs["pixels"][str(size)])
    warm, timed = pixels[:1], pixels[1:]
    if side == "zsad":
        n = zsad_batch or len(timed)  # a batch larger than the timed images repeats them (memory of a real batch)
        batches = [timed.repeat((n + len(timed) - 1) // len(timed), 1, 1, 1)[:n]]
    else:
        batches = [timed[i:i + 1] for i in range(len(timed))]
    n_timed = sum(len(b) for b in batches)
    gc.collect()
    rss_loaded_kb = _status_kb("VmRSS")
    reset_ok = _reset_peak()
    with grad_off():
        t0 = time.perf_counter()
        forward(warm)
        warm_s = time.perf_counter() - t0
        seconds, first = [], None
        for px in batches:
            t0 = time.perf_counter()
            clip, gem = forward(px)
            seconds.append(time.perf_counter() - t0)
            if first is None:
                first = {"clip": clip[:1].float().clone(), "gem": gem[:1].float().clone()}
            del clip, gem
    peak_kb = _status_kb("VmHWM")
    report = {"side": side, "size": size, "versions": versions(), "threads": torch.get_num_threads(),
              "images": n_timed, "batch": len(batches[0]), "load_s": round(load_s, 2),
              "warmup_s": round(warm_s, 3), "batch_seconds": [round(s, 3) for s in seconds],
              "s_per_image": round(sum(seconds) / n_timed, 4),
              "rss_loaded_gb": round(rss_loaded_kb / 2**20, 3),
              "peak_forward_gb": round(peak_kb / 2**20, 3) if reset_ok else None,
              "peak_forward_over_loaded_gb": round((peak_kb - rss_loaded_kb) / 2**20, 3) if reset_ok else None,
              "peak_lifetime_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
    if profile:
        report["profile"] = _profile(forward, grad_off, timed[:1])
    torch.save(first, work / f"tokens_{side}_{size}.pt")
    (work / f"{side}_{size}.json").write_text(json.dumps(report))


def _profile(forward, grad_off, px, rows: int = 25) -> str:
    """torch.profiler table (self CPU time per op) of one batch-1 forward."""
    from torch.profiler import ProfilerActivity, profile

    with grad_off(), profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        forward(px)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


# ----------------------------------------------------------------------------------------------- parent


def _call(python: str, side: str, size: int, inputs_file: Path, work: Path, threads: int, profile: bool,
          zsad_batch: int | None) -> dict:
    cmd = [python, str(Path(__file__).resolve()), "--side", side, "--size", str(size), "--inputs", str(inputs_file),
           "--work", str(work), "--threads", str(threads)] + (["--profile"] if profile else [])
    if zsad_batch and side == "zsad":
        cmd += ["--zsad-batch", str(zsad_batch)]
    env = dict(os.environ, PYTHONWARNINGS="ignore", HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd="/tmp")
    if res.returncode != 0:
        raise SystemExit(f"side {side} at {size} px failed ({python}):\n{res.stderr[-4000:]}")
    return json.loads((work / f"{side}_{size}.json").read_text())


def _ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref-python", default="/tmp/gemref-venv/bin/python",
                    help="interpreter with torch 2.14.1 + open_clip_torch 2.24.0 + gem-torch 1.0.1")
    ap.add_argument("--sizes", type=int, nargs="+", default=[240, 448, 896])
    ap.add_argument("--images", type=int, default=3, help="timed images per size (plus one warm-up image)")
    ap.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated subset of {','.join(SIDES)}")
    ap.add_argument("--zsad-batch", type=int, help="batch of the zsad side (default: --images); larger values "
                    "repeat the timed images, e.g. 8 = extract_tokens' default batch_size")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/tmp/bench-vs-official", help="scratch folder (checkpoint kept between runs)")
    ap.add_argument("--profile", action="store_true", help="also a torch.profiler table per side and size")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--side", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--inputs", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    if args.side:  # child process
        run_side(args.side, args.size, json.loads(Path(args.inputs).read_text()), work, args.threads, args.profile,
                 args.zsad_batch)
        return

    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if "official" not in sides or "zsad" not in sides or not set(sides) <= set(SIDES):
        raise SystemExit(f"--sides must include official and zsad, from {SIDES}")
    for stale in [*work.glob("*_*.json"), *work.glob("tokens_*.pt")]:
        stale.unlink()
    t_start = time.perf_counter()
    inputs = make_inputs(work, args.sizes, args.images, args.seed)
    inputs_file = work / "inputs.json"
    inputs_file.write_text(json.dumps(inputs))

    import torch

    runs: dict[str, dict] = {}
    summary = {}
    for size in args.sizes:
        runs[str(size)] = {}
        for side in sides:  # official first, then zsad, then zsad_b1: one process at a time
            python = args.ref_python if side == "official" else sys.executable
            runs[str(size)][side] = _call(python, side, size, inputs_file, work, args.threads, args.profile,
                                          args.zsad_batch)
        ref = torch.load(work / f"tokens_official_{size}.pt")
        off = runs[str(size)]["official"]
        row = {}
        for side in sides:
            if side == "official":
                continue
            r = runs[str(size)][side]
            tok = torch.load(work / f"tokens_{side}_{size}.pt")
            row[side] = {
                "time_ratio": _ratio(r["s_per_image"], off["s_per_image"]),
                "peak_forward_ratio": _ratio(r["peak_forward_gb"], off["peak_forward_gb"]),
                "peak_forward_over_loaded_ratio": _ratio(r["peak_forward_over_loaded_gb"],
                                                         off["peak_forward_over_loaded_gb"]),
                "peak_lifetime_ratio": _ratio(r["peak_lifetime_gb"], off["peak_lifetime_gb"]),
                "max_abs_token_diff_vs_official": {s: float((tok[s] - ref[s]).abs().max()) for s in ("clip", "gem")},
            }
        summary[str(size)] = row
    # the profile tables are printed below the JSON, not inside it
    profiles = {f"{side}@{size}": r.pop("profile") for size, rr in runs.items() for side, r in rr.items()
                if "profile" in r}
    at = str(TARGETS["at_size"])
    targets = None
    if at in summary:
        z = summary[at]["zsad"]
        targets = {**TARGETS, "time_ratio": z["time_ratio"], "peak_forward_ratio": z["peak_forward_ratio"],
                   "time_met": z["time_ratio"] is not None and z["time_ratio"] <= TARGETS["time_ratio_max"],
                   "peak_met": z["peak_forward_ratio"] is not None
                   and z["peak_forward_ratio"] <= TARGETS["peak_ratio_max"]}
    result = {
        "model": MODEL, "weights": f"random init (zsad load_model seed {args.seed}), one .pt file for every side",
        "images": f"{args.images} timed + 1 warm-up per size, seeded smooth random images (CLIP-normalised)",
        "zsad_batch": args.zsad_batch or args.images,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "threads": args.threads, "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
        "runs": runs, "ratios_vs_official": summary, "targets_896": targets,
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    print("\nper size: zsad / official (time per image, forward peak RSS, lifetime peak RSS)")
    for size, row in summary.items():
        for side, r in row.items():
            print(f"  {size:>4} px  {side:<8} time x{r['time_ratio']}  peak x{r['peak_forward_ratio']}  "
                  f"lifetime peak x{r['peak_lifetime_ratio']}")
    for name, table in profiles.items():
        print(f"\n=== profile {name} (one batch-1 forward) ===\n{table}")


if __name__ == "__main__":
    main()
