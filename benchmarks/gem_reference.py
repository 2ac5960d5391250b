"""zsad.gem against the official GEM (gem-torch 1.0.1) on identical weights; and the open_clip version trap.

Run by hand, not in CI (it needs extra virtual environments, see gem_reference_README.md):

    # official: torch 2.14.1 + open_clip_torch 2.24.0 + gem-torch 1.0.1; traps: the same on open_clip 2.29.0 / 3.3.0
    .venv/bin/python benchmarks/gem_reference.py --ref-python /tmp/gemref-venv/bin/python \
        --trap oc2.29.0=/tmp/gemtrap229-venv/bin/python --trap oc3.3.0=/tmp/gemtrap-venv/bin/python

What it does:
1. saves a seeded random-init ViT-B-16-plus-240 state dict (zsad's ``load_model``) to a .pt file, and a few seeded,
   spatially smooth random images (CLIP-normalised) at every size;
2. runs the sides, each as a subprocess of its own interpreter, each loading the SAME .pt file:
   ``zsad``      zsad.gem.encode_tokens on open_clip 3.3.0 (this interpreter),
   ``official``  gem.create_gem_model(pretrained=path) on open_clip 2.24.0 (the combination FADE's author uses),
   ``trap_*``    the same official code on a newer open_clip (what ``pip install gem-torch`` gives). Where
                 ``create_gem_model`` itself fails (open_clip 3.x changed ``create_model``'s positional
                 parameters), the side records the error and applies the official ``GEMWrapper`` to a model made
                 with ``open_clip.create_model(name, pretrained=path)``: GEM's own module code, unchanged;
3. prints one JSON document: per size and stream, zsad vs official (max abs difference, max relative difference,
   token cosines) and each trap vs official (the same numbers), plus versions and timings.

The official sides never import zsad; each side only writes its tokens to the work folder.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from side_versions import versions  # benchmarks/ is on sys.path when a script runs

REPO = Path(__file__).resolve().parents[1]
MODEL = "ViT-B-16-plus-240"
DEFAULT_TRAPS = [("oc2.29.0", "/tmp/gemtrap229-venv/bin/python"), ("oc3.3.0", "/tmp/gemtrap-venv/bin/python")]
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ------------------------------------------------------------------------------------------------ inputs


def make_inputs(work: Path, sizes: list[int], n_images: int, n_large: int, large_from: int, seed: int) -> dict:
    """Random weights (zsad's seeded init) saved as a plain state dict, and seeded smooth images per size."""
    sys.path.insert(0, str(REPO))
    import torch
    import torch.nn.functional as F

    from zsad.backbone import load_model

    loaded = load_model(MODEL, seed=seed)
    ckpt = work / f"vit_b_16_plus_240-random-seed{seed}.pt"
    torch.save(loaded.model.state_dict(), ckpt)
    gen = torch.Generator().manual_seed(seed)
    # smooth structure (coarse noise, bicubic-upsampled) plus fine noise: images with regions, not white noise
    coarse = torch.rand(n_images, 3, 12, 12, generator=gen)
    fine = torch.rand(n_images, 3, 1024, 1024, generator=gen)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    files = {}
    for size in sizes:
        n = n_large if size >= large_from else n_images
        base = F.interpolate(coarse[:n], size=(size, size), mode="bicubic", align_corners=False)
        noise = F.interpolate(fine[:n], size=(size, size), mode="area")
        img = (0.8 * base + 0.2 * noise).clamp(0, 1)
        files[size] = work / f"pixels_{size}.pt"
        torch.save(((img - mean) / std).contiguous(), files[size])
    return {"checkpoint": str(ckpt), "pixels": {str(s): str(p) for s, p in files.items()}}


# ------------------------------------------------------------------------------------------------- sides


def run_side(side: str, inputs: dict, work: Path) -> None:
    import torch

    torch.set_grad_enabled(False)
    factory_error = None
    if side == "zsad":
        sys.path.insert(0, str(REPO))
        from zsad.backbone import load_model
        from zsad.gem import encode_tokens

        model = load_model(MODEL, checkpoint=inputs["checkpoint"]).model

        def forward(px):
            clip, gem = encode_tokens(model, px)
            return clip, gem
    else:  # official GEM, whatever open_clip this interpreter has
        import gem as gem_pkg

        try:
            wrapper = gem_pkg.create_gem_model(MODEL, pretrained=inputs["checkpoint"], device="cpu")
        except TypeError as exc:  # open_clip 3.x: create_model's positional parameters moved
            import open_clip
            from gem.gem_wrapper import GEMWrapper

            factory_error = f"{type(exc).__name__}: {exc}"
            base = open_clip.create_model(MODEL, pretrained=inputs["checkpoint"], device="cpu")
            wrapper = GEMWrapper(base, open_clip.get_tokenizer(MODEL), depth=7, ss_attn_iter=1, ss_attn_temp=None)
        wrapper.eval()

        def forward(px):
            gem, clip = wrapper.model.visual(px)  # GEM's patched forward returns [gem, clip]
            return clip, gem

    report = {"versions": versions(), "seconds": {}}
    if side != "zsad":
        report["create_gem_model"] = "ok" if factory_error is None else f"failed, wrapped by hand ({factory_error})"
    for size, path in inputs["pixels"].items():
        px = torch.load(path)
        with torch.inference_mode():
            t0 = time.perf_counter()
            clip, gem = forward(px)
            report["seconds"][size] = round(time.perf_counter() - t0, 3)
        torch.save({"clip": clip.float().clone(), "gem": gem.float().clone()}, work / f"{side}_{size}.pt")
    (work / f"{side}.json").write_text(json.dumps(report))


# ----------------------------------------------------------------------------------------------- compare


def _stats(ours, ref) -> dict:
    import torch.nn.functional as F

    diff = (ours.double() - ref.double()).abs()
    cos = F.cosine_similarity(ours.double(), ref.double(), dim=-1)  # per token
    return {"max_abs_diff": float(diff.max()), "max_abs_ref": float(ref.abs().max()),
            "max_rel_diff": float(diff.max() / ref.abs().max()),
            "min_token_cos": float(cos.min()), "mean_token_cos": float(cos.mean()),
            "mean_cls_cos": float(cos[:, 0].mean()), "mean_patch_cos": float(cos[:, 1:].mean())}


def compare(work: Path, sizes: list[int], sides: list[str]) -> dict:
    import torch
    import torch.nn.functional as F

    out = {}
    for size in sizes:
        ref = torch.load(work / f"official_{size}.pt")
        row = {"tokens": list(ref["gem"].shape),
               # context: how different the two streams are on these weights (cosine of gem vs clip tokens)
               "official_gem_vs_clip_mean_cos": float(F.cosine_similarity(ref["gem"], ref["clip"], dim=-1).mean())}
        for side in sides:
            if side == "official":
                continue
            other = torch.load(work / f"{side}_{size}.pt")
            row[f"{side}_vs_official"] = {s: _stats(other[s], ref[s]) for s in ("clip", "gem")}
        out[str(size)] = row
    return out


def _call(python: str, side: str, inputs_file: Path, work: Path) -> None:
    cmd = [python, str(Path(__file__).resolve()), "--side", side, "--inputs", str(inputs_file), "--work", str(work)]
    env = dict(os.environ, PYTHONWARNINGS="ignore", HF_HUB_OFFLINE="1")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd="/tmp")
    if res.returncode != 0:
        raise SystemExit(f"side {side} failed ({python}):\n{res.stderr[-4000:]}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref-python", default="/tmp/gemref-venv/bin/python")
    ap.add_argument("--trap", action="append", metavar="NAME=PYTHON",
                    help="an interpreter with gem-torch on a newer open_clip (repeatable; default: "
                         "oc2.29.0=/tmp/gemtrap229-venv/bin/python and oc3.3.0=/tmp/gemtrap-venv/bin/python, "
                         "those that exist); 'none' for no trap side")
    ap.add_argument("--sizes", type=int, nargs="+", default=[240, 448, 896])
    ap.add_argument("--n-images", type=int, default=2)
    ap.add_argument("--n-large", type=int, default=1, help="images at sizes >= --large-from (896 is slow on CPU)")
    ap.add_argument("--large-from", type=int, default=896)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/tmp/gemref-work", help="scratch folder (its *.pt/*.json are replaced)")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--side", help=argparse.SUPPRESS)
    ap.add_argument("--inputs", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    if args.side:  # child process
        run_side(args.side, json.loads(Path(args.inputs).read_text()), work)
        return

    t0 = time.perf_counter()
    for stale in [*work.glob("*.json"), *work.glob("*.pt")]:  # never compare against a previous run's files
        stale.unlink()
    inputs = make_inputs(work, args.sizes, args.n_images, args.n_large, args.large_from, args.seed)
    inputs_file = work / "inputs.json"
    inputs_file.write_text(json.dumps(inputs))
    sides = {"zsad": sys.executable, "official": args.ref_python}
    traps = args.trap or [f"{name}={py}" for name, py in DEFAULT_TRAPS if Path(py).exists()]
    for item in traps:
        if item == "none":
            continue
        name, _, python = item.partition("=")
        sides[f"trap_{name}"] = python
    for side, python in sides.items():  # one at a time: a small machine
        _call(python, side, inputs_file, work)
    result = {
        "model": MODEL, "weights": f"random init, zsad load_model seed {args.seed}, saved to one .pt file",
        "images": f"{args.n_images} seeded smooth random images (CLIP-normalised); {args.n_large} at >= "
                  f"{args.large_from} px",
        "sides": {side: json.loads((work / f"{side}.json").read_text()) for side in sides},
        "sizes": compare(work, args.sizes, list(sides)),
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
