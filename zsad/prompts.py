"""Prompt ensembles at run time: WinCLIP's compositional ensemble (built in code) and the readers of prompt files.

This is what the study imports; generating the LLM ensembles (recipes, clean-up rules, llama.cpp) lives in
:mod:`zsad.prompt_generation`, which nothing on the scoring path imports.

Three ensembles (:data:`ENSEMBLES`):

``winclip``
    WinCLIP's compositional prompt ensemble (Jeong et al. 2023; the 22-template list of ``prompts/winclip_prompt.json``
    in FADE's repository, github.com/BMVC-FADE/BMVC-FADE): 7 normal and 4 abnormal state phrases around the class
    name, each inside 22 templates, giving 154 normal and 88 abnormal prompts, without a trailing full stop.
    anomalib's copy (``anomalib.models.image.winclip.prompting``) has 21 entries, each ending in ".": two of these
    templates are missing and one is repeated (the book's Methods chapter, book/methods.md, section "Where zsad
    departs from a reference implementation").
``llm_generic``
    FADE-style generic descriptions of normal and abnormal objects, no class names, one file per seed
    (``prompts/llm_generic_seed{0..4}.json``), read with :func:`read_prompt_file` like any prompt file.
``llm_class``
    Class-specific descriptions of normal and defective appearance per class, as Cheung et al. ask GPT-3; one file
    per dataset (``prompts/llm_class_{mvtec,visa,magnetic_tile}.json``) or per generated user class, read per class
    with :func:`read_class_prompts`.

:data:`DEFECT_WORDS` and :data:`NORMAL_WORDS` (words that say something is / nothing is wrong) are shared by the
clean-up rules of the generator and by Tamura's word list (:mod:`zsad.methods.tamura`).
"""
from __future__ import annotations

import json
from pathlib import Path

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
    """WinCLIP's compositional ensemble for one class name.

    Parameters
    ----------
    classname : str
        The class name as it goes into the prompts (``"metal nut"``).

    Returns
    -------
    dict
        ``{"normal": 154 prompts, "abnormal": 88 prompts}`` (7 / 4 state phrases in 22 templates).
    """
    if not classname or not classname.strip():
        raise ValueError("class name for the WinCLIP prompt ensemble is empty")
    return {side: [t.format(s.format(classname)) for s in states for t in TEMPLATES]
            for side, states in (("normal", NORMAL_STATES), ("abnormal", ABNORMAL_STATES))}


def read_prompt_file(path) -> dict[str, list[str]]:
    """Read a prompt ensemble file: JSON with a ``normal`` and an ``abnormal`` side.

    Parameters
    ----------
    path : path
        The file. Each side is a list of prompts or an object whose ``prompts`` key holds the list (zsad's
        generated files carry their provenance beside it).

    Returns
    -------
    dict
        ``{"normal": [...], "abnormal": [...]}``; a missing or empty side, a class-specific file or unreadable JSON
        is a ValueError naming the file.
    """
    path = Path(path)
    data = _load_json(path)
    if isinstance(data, dict) and "classes" in data and "normal" not in data:
        raise ValueError(f"{path}: a class-specific prompt file (llm_class); read it with read_class_prompts(path, "
                         "cls)")
    out = {}
    for side in ("normal", "abnormal"):
        value = data.get(side) if isinstance(data, dict) else None
        prompts = value.get("prompts") if isinstance(value, dict) else value
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ValueError(f"{path}: the '{side}' side must be a non-empty list of prompts")
        out[side] = prompts
    return out



ENSEMBLES = ("winclip", "llm_generic", "llm_class")
#: The format tag of zsad's generated prompt files (:mod:`zsad.prompt_generation` writes them).
FORMAT = "zsad-prompt-ensemble/1"
SIDES = ("normal", "abnormal")

# Words that say something is wrong (exact word forms, lower case).
DEFECT_WORDS = frozenset("""
abnormal abnormality abnormalities anomalous anomaly anomalies bad badly bent blemish blemished blemishes blotch
blotches blotchy blowhole blowholes break breaks broken bruise bruised bulge bulging burn burns burnt burned chip
chips chipped contaminant contaminants contaminated contamination corroded corrosion crack cracks cracked cracking
crease creased creases crumpled crushed cut cuts damage damaged damages decayed defect defects defective defectives
deformed deformation deformity dent dents dented deteriorated ding dings dirt dirty discolored discoloured
discoloration discolouration disfigured distorted dust dusty fault faults faulty flaking flaw flaws flawed fracture
fractured fractures fray frayed gouge gouged gouges hole holes imperfect imperfection imperfections impurities
impurity irregular irregularities irregularity leak leaking leaks malformed melted misaligned misplaced missing
moldy mouldy nick nicks peeling pitted poor puncture punctured rejected residue rip ripped rotten ruined rust rusted
rusty scrape scraped scrapes scratch scratched scratches scuff scuffed scuffs shattered smudge smudged smudges split
splits spoiled spoilt squeezed stain stained stains tear tears torn uneven unusable warped worn wrinkle wrinkled
wrinkles
""".split())
# Words that say nothing is wrong.
NORMAL_WORDS = frozenset("""
defectless faultless flawless immaculate impeccable intact normal perfect pristine spotless unblemished unbroken
uncracked undamaged undented unharmed unmarked unscathed unscratched unspoiled unspoilt untouched
""".split())


def _load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: prompt file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable JSON prompt file ({exc})") from None


def read_class_prompts(path, cls: str) -> dict[str, list[str]]:
    """The prompts of one class from an llm_class file.

    Parameters
    ----------
    path : path
        A class-specific prompt file (``classes: {cls: {normal, abnormal}}``).
    cls : str
        The class, exactly as the file's key.

    Returns
    -------
    dict
        ``{"normal": [...], "abnormal": [...]}``; a class the file does not hold is a ValueError naming the file and
        the classes it holds.
    """
    path = Path(path)
    data = _load_json(path)
    classes = data.get("classes") if isinstance(data, dict) else None
    if not isinstance(classes, dict):
        raise ValueError(f"{path}: not a class-specific prompt file (no 'classes'; generic files are read with "
                         "read_prompt_file)")
    if cls not in classes:
        raise ValueError(f"{path}: no prompts for class {cls!r}; the file holds {', '.join(classes) or '(none)'}")
    out = {}
    for side in SIDES:
        value = classes[cls].get(side) if isinstance(classes[cls], dict) else None
        prompts = value.get("prompts") if isinstance(value, dict) else value
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ValueError(f"{path}: class {cls!r}: the '{side}' side must be a non-empty list of prompts")
        out[side] = list(prompts)
    return out


