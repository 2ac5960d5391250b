"""zsad: a reproducible study of zero-/few-shot industrial anomaly detection with CLIP.

The package computes; notebooks communicate. Public names are imported lazily so that light commands
(``zsad --help``, ``zsad eval``) do not pay for importing torch and open_clip.
"""
from __future__ import annotations

import importlib
import warnings

# huggingface_hub (imported by open_clip and transformers) imports tqdm.auto, which warns on stderr in a Jupyter
# kernel without ipywidgets. zsad's own progress bars are plain tqdm; the warning would only clutter notebooks.
warnings.filterwarnings("ignore", message="IProgress not found")

__version__ = "0.1.0"

_PUBLIC = {
    # data
    "load_dataset": "zsad.data", "list_classes": "zsad.data", "make_synthetic": "zsad.data",
    "sample_references": "zsad.data", "preprocess": "zsad.data", "load_image": "zsad.data",
    "load_mask": "zsad.data", "DatasetError": "zsad.data", "ImageWarning": "zsad.data",
    # models
    "load_model": "zsad.backbone",
    # metrics and evaluation
    "image_metrics": "zsad.metrics", "pixel_metrics": "zsad.metrics",
    "metrics_table": "zsad.evaluate", "evaluate_predictions": "zsad.evaluate",
    # run folders
    "write_run": "zsad.results", "read_run": "zsad.results", "read_predictions": "zsad.results",
    "provenance": "zsad.results", "provenance_markdown": "zsad.results",
    # orchestration and figures
    "dataset_overview": "zsad.study", "load_named": "zsad.study", "load_many": "zsad.study",
    "example_grid": "zsad.figures",
    # tables of the study
    "run_grid": "zsad.grids", "run_settings": "zsad.grids", "run_table": "zsad.grids", "summarise": "zsad.tables",
    "grid_settings": "zsad.grids",
    "format_table": "zsad.tables", "weights_note": "zsad.tables",
    "weights_banner": "zsad.tables", "weights_label": "zsad.tables",
    "gem_vs_clip_settings": "zsad.grids", "scale_settings": "zsad.grids", "prompt_settings": "zsad.grids",
    "tamura_settings": "zsad.grids", "cheung_settings": "zsad.grids", "guidance_settings": "zsad.grids",
    "musc_settings": "zsad.grids",
    "per_class": "zsad.tables", "read_results": "zsad.grids", "per_class_plot": "zsad.figures",
    "results_provenances": "zsad.tables", "method_label": "zsad.tables", "setting_label": "zsad.tables",
    "dataset_label": "zsad.tables",
    "paper_shaped": "zsad.paper_tables", "MarkdownTable": "zsad.paper_tables", "fusion_rules": "zsad.paper_tables",
    "plan_run": "zsad.study",
    "check_study": "zsad.preset",
    "shots_plot": "zsad.figures", "variant_plot": "zsad.figures", "gallery": "zsad.figures",
    "paper_reported": "zsad.paper",
    "FeatureCache": "zsad.cache",
    "predict": "zsad.study", "check_parameters": "zsad.notebook", "run_arguments": "zsad.notebook",
    "preset_parameters": "zsad.preset",
    # your own images
    "Detector": "zsad.api",
    # where things are
    "paths": "zsad.config",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))


def __getattr__(name: str):
    if name in _PUBLIC:
        module = importlib.import_module(_PUBLIC[name])
        return module if name == "paths" else getattr(module, name)
    raise AttributeError(f"module 'zsad' has no attribute {name!r}")
