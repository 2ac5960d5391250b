"""Presets of the study's run parameters, and the check that a paper-scale study can run before it starts.

``default``: the job ``make book`` runs on the embedded data (the tiny random ViT, 12 test images per class).
``paper``: the papers' settings: ViT-B-16-plus-240 from the checkpoint FADE uses, MVTec AD and VisA with every test
image, five few-shot seeds, 1,000 bootstrap resamples; FADE's own settings (240/448/896 px, its prompts, its
sampler) are zsad's defaults anyway. FADE reports mean ± std over "different random runs" without saying how many
in the text we have; five seeds are our choice.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

PRESETS = {
    "default": {"model": "zsad-tiny-vit", "max_images": 12, "seeds": "0,1", "n_boot": 100},
    "paper": {"model": "ViT-B-16-plus-240", "datasets": "mvtec,visa", "max_images": 0, "seeds": "0,1,2,3,4",
              "n_boot": 1000},
}
#: Per-dataset settings of the chapters that need them under the paper preset.
PAPER_CLASS_PROMPTS = "llm_class_mvtec,llm_class_visa"
CHECKPOINT_NAME = "vit_b_16_plus_240-laion400m_e31-8fb26589.pt"

# Measured costs (benchmarks/README.md, 2026-11-24, 2 CPU cores): FADE's feature pass for one image at 240 + 448 +
# 896 px with both token streams, and its FLOPs; the token cache holds (1 + (s/16)^2) x 640 float32 per stream.
FADE_CPU_SECONDS_PER_IMAGE = 16.4
FADE_TFLOP_PER_IMAGE = 2.82
_VITB_DIM = 640
_SIZES = (240, 448, 896)


def preset_parameters(name: str) -> dict:
    """The run parameters a preset sets (a copy)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])


def token_bytes_per_image(sizes=_SIZES, dim: int = _VITB_DIM, streams: int = 2) -> int:
    """Bytes of the feature cache's token entries of one image (float32)."""
    return sum((1 + (s // 16) ** 2) * dim * 4 * streams for s in sizes)


@dataclass
class StudyCheck:
    """What :func:`check_study` found: ``missing`` stops the study; ``random`` rows run but say RANDOM."""

    missing: list[str] = field(default_factory=list)
    random: list[str] = field(default_factory=list)
    counts: dict = field(default_factory=dict)  # dataset -> (classes, test images, train images)

    def report(self) -> str:
        lines = []
        for name, (classes, test, train) in self.counts.items():
            lines.append(f"{name}: {classes} classes, {test} test and {train} train images")
        n_images = sum(test for _, test, _ in self.counts.values())
        if n_images:
            hours = n_images * FADE_CPU_SECONDS_PER_IMAGE / 3600
            disk = n_images * token_bytes_per_image() / 1e9
            lines.append(f"projected: one feature pass over {n_images} test images (+ few-shot references): "
                         f"{n_images * FADE_TFLOP_PER_IMAGE:,.0f} TFLOP, about {hours:,.0f} h on 2 CPU cores "
                         f"({FADE_CPU_SECONDS_PER_IMAGE} s/image measured; a GPU at 50 TFLOP/s sustained: about "
                         f"{n_images * FADE_TFLOP_PER_IMAGE / 50 / 3600:,.1f} h); token cache about {disk:,.0f} GB "
                         "float32, run folders a few GB")
        lines += [f"RANDOM: {text}" for text in self.random]
        lines += [f"missing: {text}" for text in self.missing]
        return "\n".join(lines)


def check_study(checkpoint=None, mvtec_root=None, visa_root=None, cnn_checkpoint=None, detector=None) -> StudyCheck:
    """Check every file and dataset a paper-scale study needs, without loading a model (seconds).

    Missing and fatal: the CLIP checkpoint (argument or ``$ZSAD_CHECKPOINT``), a dataset root that is not there
    or does not load. Missing but allowed (those rows say RANDOM): the WideResNet-50 file of PatchCore
    (``$ZSAD_CNN_CHECKPOINT``) and the Grounding DINO folder of Cheung et al.
    """
    from zsad.data import load_dataset

    out = StudyCheck()
    checkpoint = checkpoint or os.environ.get("ZSAD_CHECKPOINT", "")
    if not checkpoint:
        out.missing.append(f"the CLIP checkpoint: set CHECKPOINT=... (make) / --checkpoint / $ZSAD_CHECKPOINT to "
                           f"the open_clip file FADE uses, {CHECKPOINT_NAME}")
    elif not Path(checkpoint).expanduser().is_file():
        out.missing.append(f"the CLIP checkpoint {checkpoint}: file not found")
    for name, root, env in (("mvtec", mvtec_root, "ZSAD_MVTEC_ROOT"), ("visa", visa_root, "ZSAD_VISA_ROOT")):
        root = root or os.environ.get(env, "")
        if not root:
            out.missing.append(f"the {name} root: set {name.upper()}_ROOT=... (make) / ${env}")
            continue
        try:
            records = load_dataset(name, Path(root).expanduser())
        except (ValueError, OSError) as exc:
            out.missing.append(f"the {name} root {root}: {exc}")
            continue
        classes = {r.cls for r in records}
        out.counts[name] = (len(classes), sum(r.split == "test" for r in records),
                            sum(r.split == "train" for r in records))
    cnn_checkpoint = cnn_checkpoint or os.environ.get("ZSAD_CNN_CHECKPOINT", "")
    if not cnn_checkpoint:
        out.random.append("PatchCore rows (no WideResNet-50 file: CNN_CHECKPOINT=... / $ZSAD_CNN_CHECKPOINT)")
    elif not Path(cnn_checkpoint).expanduser().is_file():
        out.missing.append(f"the WideResNet-50 file {cnn_checkpoint}: file not found")
    if not detector:
        out.random.append("Cheung et al.'s detector (no Grounding DINO folder: DETECTOR=...)")
    elif not Path(detector).expanduser().is_dir():
        out.missing.append(f"the Grounding DINO folder {detector}: not a folder")
    return out


#: What a chapter receives under the paper preset, beyond ``preset``, when it has the parameter.
def _chapter_values(check_args: dict, results_dir: str) -> dict:
    roots = ",".join(str(Path(check_args[k] or os.environ.get(env, "")).expanduser())
                     for k, env in (("mvtec_root", "ZSAD_MVTEC_ROOT"), ("visa_root", "ZSAD_VISA_ROOT")))
    values = {"preset": "paper", "datasets": "mvtec,visa", "roots": roots, "results_dir": results_dir,
              "class_prompts": PAPER_CLASS_PROMPTS,
              "checkpoint": str(Path(check_args["checkpoint"] or os.environ["ZSAD_CHECKPOINT"]).expanduser())}
    if check_args.get("detector"):
        values["detector"] = str(Path(check_args["detector"]).expanduser())
    return values


def run_study(out_dir="_study", results_dir="results/paper", executor: str = "local", **check_args) -> Path:
    """Check (:func:`check_study`), then execute every chapter under the paper preset into ``out_dir`` (a copy of
    the book's sources; the repository's own notebooks stay as they are) and build the book there.

    Finished run folders that match are reused (``resume``), so an interrupted study continues where it stopped.
    Returns the path of the built book's ``index.html``.
    """
    import shutil
    import subprocess
    import sys

    import papermill

    from zsad.config import PROJECT_ROOT

    check = check_study(**check_args)
    print(check.report())
    if check.missing:
        raise ValueError("the paper-scale study cannot start: " + "; ".join(check.missing))
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(PROJECT_ROOT / name, out / name)
    for folder in ("book", "notebooks"):
        shutil.copytree(PROJECT_ROOT / folder, out / folder, dirs_exist_ok=True)
    (out / "benchmarks").mkdir(exist_ok=True)
    shutil.copy2(PROJECT_ROOT / "benchmarks" / "README.md", out / "benchmarks" / "README.md")
    values = {**_chapter_values(check_args, str(Path(results_dir).resolve())), "executor": executor}
    for nb in sorted((PROJECT_ROOT / "notebooks").glob("t*.ipynb")):
        known = papermill.inspect_notebook(str(nb))
        params = {k: v for k, v in values.items() if k in known}
        print(f"== {nb.name}: " + ", ".join(f"{k}={v}" for k, v in params.items()), flush=True)
        papermill.execute_notebook(str(nb), str(out / "notebooks" / nb.name), parameters=params,
                                   cwd=str(out / "notebooks"), progress_bar=True)
    jb = Path(sys.executable).with_name("jupyter-book")
    subprocess.run([str(jb), "build", str(out), "-W", "-n", "--keep-going"], check=True)
    return out / "_build" / "html" / "index.html"
