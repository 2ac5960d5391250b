"""Presets of the study's run parameters, and the check that a paper-scale study can run before it starts.

``default``: the job ``make book`` runs on the embedded data (the tiny random ViT, 12 test images per class).
``paper``: the papers' settings: ViT-B-16-plus-240 from the checkpoint FADE uses, MVTec AD and VisA with every test
image, five few-shot seeds, 1,000 bootstrap resamples; FADE's own settings (240/448/896 px, its prompts, its
sampler) are zsad's defaults anyway. FADE reports mean ± std over "different random runs" without saying how many
in the text we have; five seeds are our choice.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from zsad.config import DATASET_ENV, dataset_root

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
    """Return the run parameters a preset sets.

    Parameters
    ----------
    name : {"default", "paper"}
        The preset.

    Returns
    -------
    dict
        A copy of ``PRESETS[name]``.

    Raises
    ------
    ValueError
        When ``name`` is not a preset.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])


def token_bytes_per_image(sizes=_SIZES, dim: int = _VITB_DIM, streams: int = 2) -> int:
    """Return the bytes of the feature cache's token entries of one image (float32).

    Each size ``s`` holds ``1 + (s // 16) ** 2`` tokens (CLS and patches, patch size 16) of ``dim`` floats per stream.

    Parameters
    ----------
    sizes : sequence of int, default (240, 448, 896)
        Input sizes in px.
    dim : int, default 640
        Token dimension (ViT-B-16-plus-240's embedding width).
    streams : int, default 2
        Token streams (CLIP and GEM).

    Returns
    -------
    int
        Bytes per image.
    """
    return sum((1 + (s // 16) ** 2) * dim * 4 * streams for s in sizes)


@dataclass
class StudyCheck:
    """What :func:`check_study` found: ``missing`` stops the study; ``random`` rows run but say RANDOM.

    Attributes
    ----------
    missing : list of str, default []
        What is missing and fatal, one line each.
    random : list of str, default []
        What is missing but allowed (those rows run with random weights), one line each.
    counts : dict, default {}
        Dataset name -> (classes, test images, train images).
    """

    missing: list[str] = field(default_factory=list)
    random: list[str] = field(default_factory=list)
    counts: dict = field(default_factory=dict)  # dataset -> (classes, test images, train images)

    def report(self) -> str:
        """Format the findings as text.

        Returns
        -------
        str
            One line per dataset count, a projection of the feature pass's cost (FLOPs, CPU and GPU hours, token
            cache size) when there are test images, then the RANDOM and missing lines.
        """
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


def study_files(checkpoint=None, mvtec_root=None, visa_root=None, cnn_checkpoint=None, detector=None) -> dict:
    """Return the files of a paper-scale study as paths (None where there is none).

    Each is the argument, else the default every command uses (``$ZSAD_CHECKPOINT``, ``$ZSAD_MVTEC_ROOT``,
    ``$ZSAD_VISA_ROOT``, ``$ZSAD_CNN_CHECKPOINT``); the detector has no default. ``~`` is expanded in arguments.

    Parameters
    ----------
    checkpoint : str or os.PathLike, optional
        The CLIP checkpoint.
    mvtec_root : str or os.PathLike, optional
        The MVTec AD root.
    visa_root : str or os.PathLike, optional
        The VisA root.
    cnn_checkpoint : str or os.PathLike, optional
        PatchCore's WideResNet-50 file.
    detector : str or os.PathLike, optional
        The Grounding DINO folder of Cheung et al.

    Returns
    -------
    dict
        ``checkpoint``, ``mvtec_root``, ``visa_root``, ``cnn_checkpoint``, ``detector`` -> pathlib.Path or None.
    """
    from zsad.backbone import default_checkpoint
    from zsad.cnn import default_cnn_checkpoint

    def path(value):
        return Path(value).expanduser() if value else None

    return {"checkpoint": path(checkpoint or default_checkpoint()),
            "mvtec_root": path(mvtec_root) or dataset_root("mvtec"),
            "visa_root": path(visa_root) or dataset_root("visa"),
            "cnn_checkpoint": path(cnn_checkpoint or default_cnn_checkpoint()), "detector": path(detector)}


def check_study(checkpoint=None, mvtec_root=None, visa_root=None, cnn_checkpoint=None, detector=None) -> StudyCheck:
    """Check every file and dataset a paper-scale study needs, without loading a model (seconds).

    Missing and fatal: the CLIP checkpoint (argument or ``$ZSAD_CHECKPOINT``), a dataset root that is not there
    or does not load. Missing but allowed (those rows say RANDOM): the WideResNet-50 file of PatchCore
    (``$ZSAD_CNN_CHECKPOINT``) and the Grounding DINO folder of Cheung et al.; a file or folder that is named but
    not there is fatal.

    Parameters
    ----------
    checkpoint, mvtec_root, visa_root, cnn_checkpoint, detector : str or os.PathLike, optional
        As :func:`study_files`.

    Returns
    -------
    StudyCheck
        The fatal and allowed gaps, and the datasets' class and image counts.
    """
    from zsad.data import load_dataset

    out = StudyCheck()
    files = study_files(checkpoint, mvtec_root, visa_root, cnn_checkpoint, detector)
    checkpoint, cnn_checkpoint, detector = files["checkpoint"], files["cnn_checkpoint"], files["detector"]
    if not checkpoint:
        out.missing.append(f"the CLIP checkpoint: set CHECKPOINT=... (make) / --checkpoint / $ZSAD_CHECKPOINT to "
                           f"the open_clip file FADE uses, {CHECKPOINT_NAME}")
    elif not checkpoint.is_file():
        out.missing.append(f"the CLIP checkpoint {checkpoint}: file not found")
    for name in ("mvtec", "visa"):
        root = files[f"{name}_root"]
        if not root:
            out.missing.append(f"the {name} root: set {name.upper()}_ROOT=... (make) / ${DATASET_ENV[name]}")
            continue
        try:
            records = load_dataset(name, root)
        except (ValueError, OSError) as exc:
            out.missing.append(f"the {name} root {root}: {exc}")
            continue
        classes = {r.cls for r in records}
        out.counts[name] = (len(classes), sum(r.split == "test" for r in records),
                            sum(r.split == "train" for r in records))
    if not cnn_checkpoint:
        out.random.append("PatchCore rows (no WideResNet-50 file: CNN_CHECKPOINT=... / $ZSAD_CNN_CHECKPOINT)")
    elif not cnn_checkpoint.is_file():
        out.missing.append(f"the WideResNet-50 file {cnn_checkpoint}: file not found")
    if not detector:
        out.random.append("Cheung et al.'s detector (no Grounding DINO folder: DETECTOR=...)")
    elif not detector.is_dir():
        out.missing.append(f"the Grounding DINO folder {detector}: not a folder")
    return out


def _chapter_values(files: dict, results_dir: str) -> dict:
    """What a chapter receives under the paper preset (each value when the chapter has that parameter)."""
    values = {"preset": "paper", "datasets": "mvtec,visa", "roots": f"{files['mvtec_root']},{files['visa_root']}",
              "results_dir": results_dir, "class_prompts": PAPER_CLASS_PROMPTS, "checkpoint": str(files["checkpoint"])}
    if files["detector"]:
        values["detector"] = str(files["detector"])
    return values


def run_study(out_dir="_study", results_dir="results/paper", executor: str = "local", **check_args) -> Path:
    """Check the study, execute every chapter under the paper preset and build the book.

    After :func:`check_study` (its report is printed), every chapter ``notebooks/t*.ipynb`` is executed with
    papermill into ``out_dir`` (a copy of the book's sources; the repository's own notebooks stay as they are) and
    the book is built there with ``jupyter-book build -W -n --keep-going``. Finished run folders that match are
    reused (``resume``), so an interrupted study continues where it stopped.

    Parameters
    ----------
    out_dir : str or os.PathLike, default "_study"
        Folder of the copy of the book.
    results_dir : str or os.PathLike, default "results/paper"
        Run folders' root, passed to the chapters.
    executor : str, default "local"
        How the chapters run their tables of runs (passed to the chapters that take it).
    **check_args
        ``checkpoint``, ``mvtec_root``, ``visa_root``, ``cnn_checkpoint``, ``detector`` (:func:`study_files`).

    Returns
    -------
    pathlib.Path
        The built book's ``index.html``.

    Raises
    ------
    ValueError
        When the check finds something fatal missing.
    subprocess.CalledProcessError
        When the book build fails.
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
    values = {**_chapter_values(study_files(**check_args), str(Path(results_dir).resolve())), "executor": executor}
    for nb in sorted((PROJECT_ROOT / "notebooks").glob("t*.ipynb")):
        known = papermill.inspect_notebook(str(nb))
        params = {k: v for k, v in values.items() if k in known}
        print(f"== {nb.name}: " + ", ".join(f"{k}={v}" for k, v in params.items()), flush=True)
        papermill.execute_notebook(str(nb), str(out / "notebooks" / nb.name), parameters=params,
                                   cwd=str(out / "notebooks"), progress_bar=True)
    jb = Path(sys.executable).with_name("jupyter-book")
    subprocess.run([str(jb), "build", str(out), "-W", "-n", "--keep-going"], check=True)
    return out / "_build" / "html" / "index.html"
