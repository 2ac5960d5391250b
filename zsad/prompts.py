"""Prompt ensembles: WinCLIP's compositional ensemble (built in code) and prompt files.

WinCLIP's compositional prompt ensemble (Jeong et al. 2023; the 22-template list FADE's ``winclip_prompt.json``
holds, method notes 1.8): 7 normal and 4 abnormal state phrases around the class name, each inside 22 templates,
giving 154 normal and 88 abnormal prompts. anomalib's copy has 21 templates (one duplicated, one missing).
"""
from __future__ import annotations

NORMAL_STATES = ("{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw", "{} without defect",
                 "{} without damage")
ABNORMAL_STATES = ("damaged {}", "{} with flaw", "{} with defect", "{} with damage")
TEMPLATES = (
    "a cropped photo of the {}", "a cropped photo of a {}", "a close-up photo of a {}", "a close-up photo of the {}",
    "a bright photo of a {}", "a bright photo of the {}", "a dark photo of the {}", "a dark photo of a {}",
    "a jpeg corrupted photo of a {}", "a jpeg corrupted photo of the {}", "a blurry photo of the {}",
    "a blurry photo of a {}", "a photo of a {}", "a photo of the {}", "a photo of a small {}",
    "a photo of the small {}", "a photo of a large {}", "a photo of the large {}",
    "a photo of the {} for visual inspection", "a photo of a {} for visual inspection",
    "a photo of the {} for anomaly detection", "a photo of a {} for anomaly detection",
)


def winclip_prompts(classname: str = "object") -> dict[str, list[str]]:
    """WinCLIP's ensemble for one class name: ``{"normal": 154 prompts, "abnormal": 88 prompts}``."""
    if not classname or not classname.strip():
        raise ValueError("class name for the WinCLIP prompt ensemble is empty")
    return {side: [t.format(s.format(classname)) for s in states for t in TEMPLATES]
            for side, states in (("normal", NORMAL_STATES), ("abnormal", ABNORMAL_STATES))}


def read_prompt_file(path) -> dict[str, list[str]]:
    """Read a prompt ensemble file: JSON with a ``normal`` and an ``abnormal`` side.

    Each side is a list of prompts or an object whose ``prompts`` key holds the list (zsad's generated files
    carry their provenance beside it). A missing or empty side is an error naming the file.
    """
    import json
    from pathlib import Path

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: prompt file not found") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable JSON prompt file ({exc})") from None
    out = {}
    for side in ("normal", "abnormal"):
        value = data.get(side) if isinstance(data, dict) else None
        prompts = value.get("prompts") if isinstance(value, dict) else value
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ValueError(f"{path}: the '{side}' side must be a non-empty list of prompts")
        out[side] = prompts
    return out
