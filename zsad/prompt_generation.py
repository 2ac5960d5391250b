"""Generating the seeded LLM prompt ensembles: recipes, clean-up rules, prompt files, user classes on the fly.

Split from :mod:`zsad.prompts` (which holds what the study reads at run time) so that scoring never imports the
generator or llama.cpp. The LLM itself (model file, loading, seeded sampling) lives in :mod:`zsad.llm`, imported
only when generating.

Two recipes (:data:`LLM_RECIPES`):

``llm_generic``
    FADE-style generic descriptions of normal and abnormal objects, no class names, from five recipes that follow the
    five instruction ideas of FADE's ChatGPT-3.5 ensembles (:data:`GENERIC_RECIPES`); one file per seed
    (``prompts/llm_generic_seed{0..4}.json``).
``llm_class``
    Class-specific descriptions of normal and defective appearance per class, as Cheung et al. ask GPT-3
    (:data:`CLASS_RECIPE`, :data:`CLASS_INFO`); one file per dataset (``prompts/llm_class_{mvtec,visa,
    magnetic_tile}.json``), or any class names (:func:`class_prompt_file`: a user's own class, generated on the fly
    and cached).

The LLM is a small local base model run by llama.cpp: completion-style recipes (a header, three numbered examples
drawn by seed from a pool of our own, an open item number), seeded sampling, then the clean-up rules of
:data:`CLEANUP_RULES` (:func:`clean_prompts`), applied the same way to every file. A generated file holds the prompts
per side with counts before and after clean-up, every dropped line with its rule, the recipe texts, the model file
name and sha256, the llama-cpp-python version, the seed, the sampling parameters and the raw output of every
completion (:func:`generate_ensemble`; canonical bytes: :func:`dumps_prompt_file`). ``zsad prompts check``
(:func:`regenerate_prompt_file`) regenerates the committed files and compares bytes.

User classes
------------
A class name that is not a dataset class (:data:`CLASS_INFO`) gets the same recipe with its name (``_`` read as a
space, as in the prompts of the study) and the generic product line :data:`USER_CLASS_HINT`. Sampler seeds derive
from (seed, class name, side, completion), so a class's prompts do not depend on the other classes generated with
it. :func:`class_prompt_file` keeps one file per (class name, seed, model sha256, recipe fingerprint) under
``<cache>/prompts/llm_class/``: a second request reads the file and loads no LLM.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import unicodedata
from pathlib import Path

from zsad.prompts import DEFECT_WORDS, FORMAT, NORMAL_WORDS, SIDES, _load_json

LLM_RECIPES = ("llm_generic", "llm_class")
GENERIC_SEEDS = (0, 1, 2, 3, 4)  # the study's llm_generic files

DATASET_CLASSES = {
    "mvtec": ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill", "screw",
              "tile", "toothbrush", "transistor", "wood", "zipper"),
    "visa": ("candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2", "pcb1", "pcb2", "pcb3",
             "pcb4", "pipe_fryum"),
    "magnetic_tile": ("magnetic_tile",),
}
# Per class: the name used in the class-specific recipe and the product information given with it (Cheung et al.
# give the LLM "relevant information about the product, including its category"; these one-liners are ours).
CLASS_INFO = {
    "bottle": ("bottle", "a glass bottle photographed from above, showing its round mouth and rim"),
    "cable": ("cable", "the cut end of an electrical cable with three insulated coloured wires inside a sheath"),
    "capsule": ("capsule", "a small two-part medicine capsule with black printing on it"),
    "carpet": ("carpet", "a close-up of a woven carpet texture"),
    "grid": ("metal grid", "a close-up of a regular metal wire mesh texture"),
    "hazelnut": ("hazelnut", "a single brown hazelnut in its shell"),
    "leather": ("leather surface", "a close-up of a grained leather texture"),
    "metal_nut": ("metal nut", "a flat metal nut with tabs around a central threaded hole"),
    "pill": ("pill", "an oval white tablet with small red speckles and a printed mark"),
    "screw": ("screw", "a single metal screw lying on a plain surface"),
    "tile": ("tile", "a close-up of a ceramic tile surface with a speckled texture"),
    "toothbrush": ("toothbrush", "the bristle head of a toothbrush seen from above"),
    "transistor": ("transistor", "a through-hole transistor with three metal legs mounted on a board"),
    "wood": ("wood surface", "a close-up of a wooden board with visible grain"),
    "zipper": ("zipper", "a close-up of a zipper with two rows of interlocking teeth on fabric"),
    "candle": ("candle", "white wax tea-light candles photographed from above"),
    "capsules": ("capsule", "green soft-gel capsules lying in a group"),
    "cashew": ("cashew", "a single roasted cashew nut"),
    "chewinggum": ("chewing gum", "a piece of chewing gum on a plain background"),
    "fryum": ("fryum", "a wheel-shaped fried snack (fryum)"),
    "macaroni1": ("macaroni", "pieces of dry macaroni pasta on a plain background"),
    "macaroni2": ("macaroni", "pieces of dry macaroni pasta on a textured green background"),
    "pcb1": ("circuit board", "a printed circuit board with electronic components"),
    "pcb2": ("circuit board", "a printed circuit board with electronic components"),
    "pcb3": ("circuit board", "a printed circuit board with electronic components"),
    "pcb4": ("circuit board", "a printed circuit board with electronic components and a light"),
    "pipe_fryum": ("pipe fryum", "a tube-shaped fried snack (pipe fryum)"),
    "magnetic_tile": ("magnetic tile", "the grey surface of a ferrite magnetic tile"),
}
#: The product line of a class that is not a dataset class (``{a}``: article, ``{name}``: the class's name).
USER_CLASS_HINT = "{a} {name} photographed for visual inspection"
#: Longest class name accepted for generation (it is repeated in every recipe prompt).
MAX_CLASS_NAME = 80
# Names the generic set must not mention (every class above; plural "s"/"es", digits and separators allowed).
CLASS_NAME_ALIASES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "hazel nut", "leather",
                      "metal nut", "nut", "pill", "screw", "tile", "toothbrush", "tooth brush", "transistor", "wood",
                      "wooden", "zipper", "candle", "cashew", "chewing gum", "gum", "fryum", "macaroni", "pcb",
                      "circuit board", "pipe fryum", "magnetic tile")

# --- the recipes: completion-style (a base model continues a numbered list); all texts are ours -------------------
# Each generic recipe follows one of the five instruction ideas of FADE's ChatGPT ensembles (FADE paper, sec. 3.2;
# the instructions are stored with the prompts in prompts/chatgpt3.5_prompt{1..5}.json of FADE's repository).
GENERIC_RECIPES = {
    "r1_undamaged": {
        "idea": "captions of a photo of an undamaged / damaged object that never name the object",
        "normal": ("Image captions from an industrial visual-inspection dataset. Every caption describes a photo of "
                   "an undamaged object and never says what the object is.",
                   ("a photo of an undamaged object.", "an intact object with a clean, even surface.",
                    "a close-up photo of an object in perfect condition.",
                    "a photo of a whole object with no visible damage.", "an object that looks exactly as it should.",
                    "a sharp photo of a spotless object on a plain background.")),
        "abnormal": ("Image captions from an industrial visual-inspection dataset. Every caption describes a photo "
                     "of a damaged object and never says what the object is.",
                     ("a photo of a damaged object.", "an object with a deep scratch across its surface.",
                      "a close-up photo of a cracked and dented object.",
                      "a photo of a broken object with a missing piece.", "an object with a stain near its edge.",
                      "a photo of an object with a hole in it.")),
    },
    "r2_synonyms": {
        "idea": "rewordings with the same meaning as 'a photo of an undamaged / damaged object'",
        "normal": ('Different ways to say "a photo of an undamaged object". Each line means the same thing in other '
                   "words.",
                   ("an image of an object that has no damage.", "a picture of an item in flawless condition.",
                    "a snapshot of an unharmed object.", "a photograph showing an object free of damage.",
                    "an image of an intact item.", "a photo of an object without any defects.")),
        "abnormal": ('Different ways to say "a photo of a damaged object". Each line means the same thing in other '
                     "words.",
                     ("an image of an object that has been damaged.", "a picture of a broken item.",
                      "a snapshot of a defective object.", "a photograph showing an object with damage.",
                      "an image of a damaged item.", "a photo of an object with defects.")),
    },
    "r3_diverse": {
        "idea": "like 'a photo of an undamaged / damaged object', with varied adjectives and sentence structure, "
                "no object name",
        "normal": ('Captions similar to "a photo of an undamaged object", written with varied adjectives and varied '
                   "sentence structure. No caption names the object.",
                   ("a crisp photo of a pristine object.",
                    "this object is in immaculate shape, without a single scratch.",
                    "a well-lit image of a flawless, unblemished object.",
                    "seen up close, the object looks brand new and undamaged.",
                    "a glossy, perfect object photographed on a table.",
                    "an object with smooth edges and an untouched surface.")),
        "abnormal": ('Captions similar to "a photo of a damaged object", written with varied adjectives and varied '
                     "sentence structure. No caption names the object.",
                     ("a blurry photo of a badly scratched object.", "this object is cracked down the middle.",
                      "a dim image of a dented, worn object.",
                      "seen up close, the object has a jagged chip along one side.",
                      "a corroded object with flaking paint.", "an object whose surface is stained and scuffed.")),
    },
    "r4_manufacturing": {
        "idea": "a photo of an undamaged / defective manufacturing object, no object name",
        "normal": ("Captions for photos of undamaged manufactured objects taken on a production line. No caption "
                   "names the object.",
                   ("a photo of a manufactured part that passed inspection.",
                    "a factory-made component with no defects.",
                    "a freshly produced item with precise, clean edges.",
                    "a photo of an undamaged product from the assembly line.",
                    "a machined part with a uniform, flawless finish.", "a molded component, perfectly formed.")),
        "abnormal": ("Captions for photos of defective manufactured objects taken on a production line. No caption "
                     "names the object.",
                     ("a photo of a defective manufactured part.", "a factory-made component with a crack.",
                      "a freshly produced item with a misaligned piece.",
                      "a photo of a faulty product from the assembly line.",
                      "a machined part with a deep gouge in its finish.", "a molded component that is deformed.")),
    },
    "r5_industrial": {
        "idea": "a photo of an undamaged / defective object or texture in industrial manufacturing, varied "
                "adjectives and sentence structure, no object name",
        "normal": ("Captions for photos of undamaged objects or textures in industrial manufacturing, written with "
                   "varied adjectives and sentence structure. No caption names the object or the material.",
                   ("a uniform industrial texture without defects.",
                    "a photo of an industrial surface with an even, regular pattern.",
                    "a flawless machined object under bright factory light.",
                    "close-up of a smooth, unblemished material sample.",
                    "an industrial component in pristine condition.",
                    "a regular woven texture with consistent color.")),
        "abnormal": ("Captions for photos of defective objects or textures in industrial manufacturing, written with "
                     "varied adjectives and sentence structure. No caption names the object or the material.",
                     ("a defective industrial texture with an irregular patch.",
                      "a photo of an industrial surface with a tear in its pattern.",
                      "a damaged machined object under bright factory light.",
                      "close-up of a material sample with a dark stain.",
                      "an industrial component with a broken corner.",
                      "a woven texture with a pulled thread and a hole.")),
    },
}
# The class-specific recipe (Cheung et al.: the LLM is given the product and its category and describes the
# expected appearance of normal and of anomalous products). ``{a}`` is the article, ``{name}`` the class's name.
CLASS_RECIPE = {
    "idea": "class-specific descriptions of normal and of defective appearance (Cheung et al., GPT-3 in the paper)",
    "normal": ("Visual inspection notes. Product: {name} ({hint}). Each note describes how a normal, defect-free "
               "{name} looks in a close-up photo.",
               ("a photo of a flawless {name}.", "{a} {name} with a uniform color and clean edges.",
                "a close-up of {a} {name} that looks exactly as it should.",
                "an intact {name} with no scratches or stains.",
                "{a} {name} in perfect condition, photographed from above.")),
    "abnormal": ("Visual inspection notes. Product: {name} ({hint}). Each note describes a defect that can be seen "
                 "on an anomalous {name} in a close-up photo.",
                 ("a photo of a defective {name}.", "{a} {name} with a scratch on its surface.",
                  "a close-up of a damaged {name} with a broken part.", "{a} {name} with a stain and a small crack.",
                  "a contaminated {name} with foreign material on it.")),
}
# How much each (recipe or class, side) asks for: completions are drawn until ``target_items`` numbered items were
# parsed or ``max_completions`` were drawn; each completion shows ``examples_shown`` examples of the pool (a seeded
# choice) and is capped at ``max_tokens`` new tokens.
GENERIC_BUDGET = {"target_items": 72, "max_completions": 16, "max_tokens": 256, "examples_shown": 3}
CLASS_BUDGET = {"target_items": 20, "max_completions": 8, "max_tokens": 200, "examples_shown": 3}

# --- clean-up rules -------------------------------------------------------------------------------------------
MIN_WORDS = 3
MAX_WORDS = 25
MAX_CHARS = 160
# A negator flips the words after it up to the end of its clause ("without any scratches or dents").
NEGATORS = frozenset("no not without free never nor neither none zero lacks lacking lack absent absence cannot".split())
# Words and marks that end a negation's clause ("free of scratches, with a deep crack").
SCOPE_BREAKERS = frozenset("""
but with showing shows show has have having which that although though yet while where whereas except
""".split())
CLEANUP_RULES = (
    ("empty", "nothing left after trimming spaces, quotes and list marks"),
    ("too_short", f"fewer than {MIN_WORDS} words"),
    ("too_long", f"more than {MAX_WORDS} words or {MAX_CHARS} characters"),
    ("markup", "holds markup or a link: < > { } http www."),
    ("example_copy", "repeats one of the recipe's own examples (case-insensitive)"),
    ("class_name", "mentions a dataset class name (generic ensembles only)"),
    ("contradicts_side", "normal: says something is wrong (an un-negated defect word or a negated normal word); "
                         "abnormal: says nothing is wrong (a normal word or a negated defect word) or names no defect"),
    ("duplicate", "repeats an earlier kept prompt of the same side (case-insensitive, spaces collapsed, final "
                  "full stop ignored)"),
)
_MARKUP_RE = re.compile(r"[<>{}]|https?:|www\.", re.IGNORECASE)
_TOKEN_RE = re.compile(r"[a-z]+(?:['\u2019-][a-z]+)*|[.;:!?]")
_CLASS_NAME_RE = re.compile(
    r"(?<![a-z])(?:" + "|".join(r"[\s_-]*".join(map(re.escape, a.split())) for a in
                                 sorted(CLASS_NAME_ALIASES, key=len, reverse=True)) + r")(?:s|es)?\d*(?![a-z])",
    re.IGNORECASE)


def trim_prompt(text: str) -> str:
    """Trim a generated line: collapse white space, strip list marks, surrounding quotes and asterisks.

    Parameters
    ----------
    text : str
        One generated line.

    Returns
    -------
    str
        The trimmed line (possibly empty).
    """
    text = " ".join(text.split())
    prev = None
    while prev != text:
        prev = text
        text = re.sub(r"^(?:[-*\u2022]\s+|\d+[.)]\s+)", "", text)
        text = text.strip(" \"'`*\u201c\u201d\u2018\u2019")
    return text


def side_evidence(text: str) -> dict[str, list[str]]:
    """Which words of ``text`` say "normal" and which say "abnormal", with negation.

    An un-negated defect word or a negated normal word ("not perfect") is abnormal evidence; a normal word or a
    negated defect word ("without scratches", "defect-free", "non-defective") is normal evidence. A negator
    (:data:`NEGATORS`, or a word ending in "n't") reaches to the end of its clause: a full stop, ; : ! ? or a word
    of :data:`SCOPE_BREAKERS`.

    Parameters
    ----------
    text : str
        A prompt.

    Returns
    -------
    dict
        ``{"normal": [words], "abnormal": [words]}``.
    """
    ev = {"normal": [], "abnormal": []}
    negated = False
    for tok in _TOKEN_RE.findall(text.lower().replace("\u2019", "'")):
        if tok in ".;:!?" or tok in SCOPE_BREAKERS:
            negated = False
            continue
        if tok in NEGATORS or tok.endswith("n't"):
            negated = True
            continue
        parts = tok.split("-")
        local_neg = negated
        if len(parts) > 1:
            if parts[-1] in ("free", "less") and any(p in DEFECT_WORDS for p in parts[:-1]):
                ev["normal"].append(tok)  # "defect-free", "scratch-free"
                continue
            if parts[0] in ("non", "un"):
                local_neg = not local_neg
                parts = parts[1:]
        for p in parts:
            if p in DEFECT_WORDS:
                ev["normal" if local_neg else "abnormal"].append(p)
            elif p in NORMAL_WORDS:
                ev["abnormal" if local_neg else "normal"].append(p)
    return ev


def contradicts_side(text: str, side: str) -> bool:
    """True when a prompt says the opposite of its side (see :func:`side_evidence`).

    Parameters
    ----------
    text : str
        A prompt.
    side : {"normal", "abnormal"}
        Its side; an abnormal prompt must also name a defect.

    Returns
    -------
    bool
    """
    ev = side_evidence(text)
    if side == "normal":
        return bool(ev["abnormal"])
    if side == "abnormal":
        return not ev["abnormal"] or bool(ev["normal"])
    raise ValueError(f"unknown side {side!r}; expected 'normal' or 'abnormal'")


def mentions_class_name(text: str) -> bool:
    """True when ``text`` names a class of MVTec AD, VisA or the magnetic tile set (:data:`CLASS_NAME_ALIASES`).

    Parameters
    ----------
    text : str
        A prompt.

    Returns
    -------
    bool
    """
    return _CLASS_NAME_RE.search(text) is not None


def _dedupe_key(text: str) -> str:
    return " ".join(text.casefold().split()).rstrip(" .")


def clean_prompts(items, side: str, *, generic: bool, examples=()) -> tuple[list[str], list[dict]]:
    """Apply the clean-up rules (:data:`CLEANUP_RULES`, in that order) to generated lines of one side.

    Parameters
    ----------
    items : sequence of str or (source, text) pairs
        The parsed lines.
    side : {"normal", "abnormal"}
        Their side.
    generic : bool
        Add the class-name rule (generic ensembles).
    examples : sequence of str
        The recipe's own examples (copies are dropped).

    Returns
    -------
    (list of str, list of dict)
        The kept prompts (first occurrence order) and one ``{"text", "rule", "source"}`` record per dropped line.
    """
    if side not in SIDES:
        raise ValueError(f"unknown side {side!r}; expected 'normal' or 'abnormal'")
    example_keys = {_dedupe_key(e) for e in examples}
    kept, dropped, seen = [], [], set()
    for item in items:
        source, raw = item if isinstance(item, tuple) else (None, item)
        text = trim_prompt(raw)
        n_words = len(text.split())
        key = _dedupe_key(text)
        if not text:
            rule = "empty"
        elif n_words < MIN_WORDS:
            rule = "too_short"
        elif n_words > MAX_WORDS or len(text) > MAX_CHARS:
            rule = "too_long"
        elif _MARKUP_RE.search(text):
            rule = "markup"
        elif key in example_keys:
            rule = "example_copy"
        elif generic and mentions_class_name(text):
            rule = "class_name"
        elif contradicts_side(text, side):
            rule = "contradicts_side"
        elif key in seen:
            rule = "duplicate"
        else:
            seen.add(key)
            kept.append(text)
            continue
        dropped.append({"text": raw, "rule": rule, "source": source})
    return kept, dropped


def parse_list_completion(first_number: int, text: str, finish: str) -> list[str]:
    """The numbered items of one completion that continued a list at item ``first_number``.

    Parameters
    ----------
    first_number : int
        The open item number the prompt ended with.
    text : str
        The completion text (it follows ``"<first_number>."``).
    finish : str
        Why the completion stopped; with ``"max_tokens"`` the last (cut) line is not an item.

    Returns
    -------
    list of str
        The items, up to the first line that is not a numbered item.
    """
    lines = f"{first_number}.{text}".split("\n")
    if finish == "max_tokens":
        lines = lines[:-1]
    items = []
    for line in lines:
        m = re.match(r"\s*\d+[.)](.*)$", line)
        if m is None:
            break
        items.append(m.group(1).strip())
    return items


# --- generation ------------------------------------------------------------------------------------------------
def _article(name: str) -> str:
    return "an" if name[:1].lower() in "aeiou" else "a"


def class_info(cls: str) -> tuple[str, str]:
    """``(name, hint)`` of a class for the class-specific recipe.

    Parameters
    ----------
    cls : str
        A dataset class (:data:`CLASS_INFO`) or any other class name (checked by :func:`check_class_name`).

    Returns
    -------
    (str, str)
        The dataset class's entry of :data:`CLASS_INFO`; for another name, the name with ``_`` read as a space and
        white space collapsed, and :data:`USER_CLASS_HINT` filled with it.
    """
    if cls in CLASS_INFO:
        return CLASS_INFO[cls]
    name = " ".join(check_class_name(cls).replace("_", " ").split())
    return name, USER_CLASS_HINT.format(name=name, a=_article(name))


def check_class_name(cls) -> str:
    """Return ``cls`` when it can go into a recipe, else raise a ValueError naming it.

    A class name is one line of at most :data:`MAX_CLASS_NAME` printable characters with a letter or digit in it:
    a line break would end the numbered list the model continues, and control characters would reach the prompt
    file and the caption of the object detector.

    Parameters
    ----------
    cls : str
        The class name.

    Returns
    -------
    str
        ``cls`` unchanged.
    """
    if not isinstance(cls, str) or not cls.strip():
        raise ValueError(f"class name must be a non-empty string, got {cls!r}")
    if len(cls) > MAX_CLASS_NAME:
        raise ValueError(f"class name {cls[:40]!r}... is longer than {MAX_CLASS_NAME} characters")
    bad = [c for c in cls if unicodedata.category(c)[0] in "CZ" and c != " "]
    if bad:
        raise ValueError(f"class name {cls!r} holds line breaks or control characters {bad!r}: give one line of "
                         "printable text")
    if not any(c.isalnum() for c in cls):
        raise ValueError(f"class name {cls!r} has no letter or digit")
    return cls


def _class_recipe_texts(cls: str) -> dict:
    name, hint = class_info(cls)
    fill = {"name": name, "hint": hint, "a": _article(name)}
    return {side: (CLASS_RECIPE[side][0].format(**fill), tuple(e.format(**fill) for e in CLASS_RECIPE[side][1]))
            for side in SIDES}


def _recipe_prompt(header: str, examples) -> tuple[str, int]:
    lines = [header, ""] + [f"{i}. {e}" for i, e in enumerate(examples, 1)]
    n = len(examples) + 1
    return "\n".join(lines) + f"\n{n}.", n


def _run_job(gen, seed: int, key: str, side: str, header: str, pool, budget: dict, raw: list) -> list[tuple]:
    """Draw completions for one (recipe or class, side) until enough items; append them to ``raw``."""
    from zsad.llm import derive_seed

    items = []
    for k in range(budget["max_completions"]):
        if len(items) >= budget["target_items"]:
            break
        rng = random.Random(derive_seed(seed, key, side, k, "examples"))
        shown = rng.sample(list(pool), min(budget["examples_shown"], len(pool)))
        prompt, first = _recipe_prompt(header, shown)
        sampler_seed = derive_seed(seed, key, side, k)
        out = gen.complete_list(prompt, sampler_seed, budget["max_tokens"])
        parsed = parse_list_completion(first, out["text"], out["finish"])
        raw.append({"key": key, "side": side, "completion": k, "seed": sampler_seed, "prompt": prompt,
                    "text": out["text"], "finish": out["finish"], "n_tokens": out["n_tokens"],
                    "n_items": len(parsed)})
        items += [(f"{key}/{side}/{k}", p) for p in parsed]
    return items


def _side_block(items_by_key: dict, side: str, *, generic: bool, examples_by_key: dict) -> dict:
    all_items = [it for key in items_by_key for it in items_by_key[key]]
    examples = [e for key in items_by_key for e in examples_by_key[key]]
    kept, dropped = clean_prompts(all_items, side, generic=generic, examples=examples)
    by_rule = {rule: sum(d["rule"] == rule for d in dropped) for rule, _ in CLEANUP_RULES}
    by_key = {}
    for key, items in items_by_key.items():
        n_drop = sum(1 for d in dropped if d["source"].startswith(f"{key}/"))
        by_key[key] = {"raw": len(items), "kept": len(items) - n_drop}
    return {"prompts": kept, "dropped": dropped,
            "counts": {"raw": len(all_items), "kept": len(kept), "dropped_by_rule": by_rule, "by_recipe": by_key}}


def _budget(recipe: str, budget) -> dict:
    base = dict(GENERIC_BUDGET if recipe == "llm_generic" else CLASS_BUDGET)
    if budget:
        unknown = set(budget) - set(base)
        if unknown:
            raise ValueError(f"unknown budget keys {sorted(unknown)}; expected {sorted(base)}")
        base.update({k: int(v) for k, v in budget.items()})
    if any(v < 1 for v in base.values()):
        raise ValueError(f"budget values must be positive integers, got {base}")
    return base


def _check_request(recipe: str, dataset, recipes, classes) -> tuple[list, list]:
    if recipe not in LLM_RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(LLM_RECIPES)} "
                         "(the winclip ensemble is built in code: zsad.prompts.winclip_prompts)")
    if recipe == "llm_generic":
        if dataset is not None or classes:
            raise ValueError("--dataset/classes apply to the llm_class recipe only; llm_generic has no class names")
        recipes = list(GENERIC_RECIPES) if not recipes else list(recipes)
        unknown = [r for r in recipes if r not in GENERIC_RECIPES]
        if unknown or not recipes:
            raise ValueError(f"unknown generic recipe(s) {unknown}; choose from {', '.join(GENERIC_RECIPES)}")
        return [r for r in GENERIC_RECIPES if r in recipes], []
    if recipes:
        raise ValueError("recipes apply to the llm_generic recipe only")
    if dataset is None and classes:  # class names of the user's own (or dataset classes), in the order given
        names = [check_class_name(c) for c in classes]
        twice = sorted({c for c in names if names.count(c) > 1})
        if twice:
            raise ValueError(f"class(es) given twice: {twice}")
        return [], names
    if dataset not in DATASET_CLASSES:
        raise ValueError(f"the llm_class recipe needs --dataset, one of {', '.join(DATASET_CLASSES)}, or class names "
                         f"(--classes); got dataset {dataset!r}")
    available = DATASET_CLASSES[dataset]
    classes = list(available) if not classes else list(classes)
    unknown = [c for c in classes if c not in available]
    if unknown or not classes:
        raise ValueError(f"unknown class(es) {unknown} for dataset {dataset}; available: {', '.join(available)}")
    return [], [c for c in available if c in classes]


def generate_ensemble(recipe: str, seed: int, *, model=None, dataset: str | None = None, recipes=None,
                      classes=None, budget: dict | None = None, n_threads: int | None = None,
                      progress: bool = True) -> dict:
    """Generate one LLM prompt ensemble and return the prompt file's content.

    Parameters
    ----------
    recipe : {"llm_generic", "llm_class"}
        The five generic recipes (or the subset ``recipes``), or the class-specific recipe.
    seed : int
        The file seed (non-negative); every completion's sampler seed derives from it.
    model : path, optional
        A GGUF file (default: the packaged Gemma 3 270M).
    dataset : str, optional
        llm_class: every class of this dataset (:data:`DATASET_CLASSES`), or the subset ``classes`` of it.
    recipes : list of str, optional
        llm_generic: a subset of :data:`GENERIC_RECIPES`.
    classes : list of str, optional
        llm_class: with ``dataset``, a subset of its classes; without, any class names (user classes, in the order
        given; :func:`class_info`).
    budget : dict, optional
        Overrides keys of :data:`GENERIC_BUDGET` / :data:`CLASS_BUDGET`.
    n_threads : int, optional
        llama.cpp threads (default :data:`zsad.llm.N_THREADS`; recorded).
    progress : bool
        Show a progress bar.

    Returns
    -------
    dict
        The prompt file's content (canonical bytes: :func:`dumps_prompt_file`). Same inputs, same model file and
        same llama.cpp build -> the same dict, hence the same bytes.
    """
    from tqdm.auto import tqdm

    from zsad import llm

    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    recipe_ids, class_ids = _check_request(recipe, dataset, recipes, classes)
    budget = _budget(recipe, budget)
    info = llm.resolve_model(model)
    gen = llm.Generator(info, n_threads=llm.N_THREADS if n_threads is None else n_threads)
    if recipe == "llm_generic":
        texts = {r: {side: GENERIC_RECIPES[r][side] for side in SIDES} for r in recipe_ids}
    else:
        texts = {c: _class_recipe_texts(c) for c in class_ids}
    jobs = [(key, side) for key in texts for side in SIDES]
    raw: list[dict] = []
    items: dict[str, dict[str, list]] = {key: {} for key in texts}
    bar = tqdm(jobs, desc=f"{recipe} seed {seed}" + (f" {dataset}" if dataset else ""), unit="list",
               disable=not progress)
    n_items = 0
    for key, side in bar:
        header, pool = texts[key][side]
        items[key][side] = _run_job(gen, seed, key, side, header, pool, budget, raw)
        n_items += len(items[key][side])
        bar.set_postfix(items=n_items, tokens=sum(r["n_tokens"] for r in raw))
    bar.close()

    data = {
        "format": FORMAT,
        "ensemble": recipe,
        "seed": seed,
        "dataset": dataset,
        "model": gen.settings,
        "llama_cpp_python": llm.llama_cpp_version(),
        "sampling": dict(llm.SAMPLING),
        "budget": budget,
        "cleanup": {"rules": dict(CLEANUP_RULES), "min_words": MIN_WORDS, "max_words": MAX_WORDS,
                    "max_chars": MAX_CHARS, "defect_words": sorted(DEFECT_WORDS),
                    "normal_words": sorted(NORMAL_WORDS), "negators": sorted(NEGATORS),
                    "scope_breakers": sorted(SCOPE_BREAKERS)},
        "raw_output": raw,
    }
    if recipe == "llm_generic":
        data["cleanup"]["class_names"] = list(CLASS_NAME_ALIASES)
        data["recipes"] = recipe_ids
        data["recipe_text"] = {r: {"idea": GENERIC_RECIPES[r]["idea"],
                                   **{side: {"header": GENERIC_RECIPES[r][side][0],
                                             "examples": list(GENERIC_RECIPES[r][side][1])} for side in SIDES}}
                               for r in recipe_ids}
        for side in SIDES:
            data[side] = _side_block({r: items[r][side] for r in recipe_ids}, side, generic=True,
                                     examples_by_key={r: GENERIC_RECIPES[r][side][1] for r in recipe_ids})
        data["counts"] = {side: {k: data[side]["counts"][k] for k in ("raw", "kept")} for side in SIDES}
    else:
        data["recipe_text"] = {"idea": CLASS_RECIPE["idea"],
                               **{side: {"header": CLASS_RECIPE[side][0], "examples": list(CLASS_RECIPE[side][1])}
                                  for side in SIDES}}
        data["classes"] = {}
        for c in class_ids:
            name, hint = class_info(c)
            entry = {"name": name, "hint": hint}
            for side in SIDES:
                entry[side] = _side_block({c: items[c][side]}, side, generic=False,
                                          examples_by_key={c: texts[c][side][1]})
            data["classes"][c] = entry
        data["counts"] = {side: {k: sum(data["classes"][c][side]["counts"][k] for c in class_ids)
                                 for k in ("raw", "kept")} for side in SIDES}
    return data


# --- files -----------------------------------------------------------------------------------------------------
def dumps_prompt_file(data: dict) -> str:
    """The canonical bytes of a prompt file: JSON, sorted keys, indent 1, ASCII only, trailing newline.

    Parameters
    ----------
    data : dict
        A prompt file's content.

    Returns
    -------
    str
        The text.
    """
    return json.dumps(data, sort_keys=True, indent=1, ensure_ascii=True) + "\n"


def write_prompt_file(path, data: dict, *, overwrite: bool = True) -> Path:
    """Write a prompt file atomically (temporary sibling + rename, ordinary file permissions).

    Parameters
    ----------
    path : path
        The file (parent folders are made).
    data : dict
        Its content (written as :func:`dumps_prompt_file`).
    overwrite : bool
        Replace an existing file (else a ValueError).

    Returns
    -------
    pathlib.Path
        The path written.
    """
    from zsad.atomic import write_text

    path = Path(path)
    if path.exists() and not overwrite:
        raise ValueError(f"{path} exists; pass --overwrite to replace it")
    return write_text(path, dumps_prompt_file(data))


def committed_prompt_files() -> list[Path]:
    """The generated ensembles committed under ``prompts/`` (what ``zsad prompts check`` regenerates).

    Returns
    -------
    list of pathlib.Path
        Sorted; from the clone's ``prompts/`` or an installed copy's package data (:func:`zsad.resources.data_path`).
    """
    from zsad.resources import data_path

    return sorted(p for p in data_path("prompts").glob("*.json") if _is_generated(p))


def _is_generated(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def regenerate_prompt_file(path, *, model=None, progress: bool = True) -> tuple[bool, str]:
    """Regenerate a prompt file from what it records.

    The recipe, seed, dataset, recipe/class subset, budget and thread count come from the file; recipes, clean-up
    rules and sampling parameters come from the code, so a stale file (code changed since) also fails.

    Parameters
    ----------
    path : path
        A generated prompt file.
    model : path, optional
        The GGUF it was generated with (default: the packaged one; its sha256 must match the file's).
    progress : bool
        Progress bar.

    Returns
    -------
    (bool, str)
        Whether the regenerated bytes equal the file's, and the regenerated text.
    """
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a generated prompt file (format {FORMAT!r} missing)")
    from zsad import llm

    info = llm.resolve_model(model)
    want = data.get("model", {}).get("sha256")
    if want != info.sha256:
        raise ValueError(f"{path} was generated with model {data.get('model', {}).get('file')} (sha256 {want}); "
                         f"the model here is {info.path} (sha256 {info.sha256}); pass --model FILE")
    new = generate_ensemble(data["ensemble"], data["seed"], model=info.path if model else None,
                            dataset=data.get("dataset"), recipes=data.get("recipes"),
                            classes=list(data["classes"]) if data.get("classes") else None, budget=data.get("budget"),
                            n_threads=data.get("model", {}).get("n_threads"), progress=progress)
    text = dumps_prompt_file(new)
    return text.encode() == path.read_bytes(), text


# --- class prompts on the fly (a user's own class) --------------------------------------------------------------
#: Sub-folder of the cache (:func:`zsad.cache.cache_root`) holding generated class prompt files; the feature cache's
#: maintenance (``zsad cache clear``) touches only its own kinds, so these survive it.
CLASS_CACHE_DIR = ("prompts", "llm_class")
#: The sources whose code decides a generated file's bytes: part of every cache key, so that a changed recipe,
#: clean-up rule or sampler never serves a stale file.
GENERATION_CODE = ("prompt_generation.py", "prompts.py", "llm.py")


def _slug(cls: str) -> str:
    """A file-name-safe stem of a class name (the cache key, not the slug, keeps distinct names apart)."""
    text = unicodedata.normalize("NFKD", cls).encode("ascii", "ignore").decode()
    return (re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "class")[:40]


def class_cache_key(cls: str, seed: int, model_sha256: str, *, budget: dict | None = None,
                    n_threads: int | None = None) -> str:
    """The cache key of one generated class: sha256 over what decides the file's bytes.

    Parameters
    ----------
    cls : str
        The class name, exactly as given (the key of the file's ``classes``).
    seed : int
        The generation seed.
    model_sha256 : str
        sha256 of the GGUF model file.
    budget, n_threads : optional
        As :func:`generate_ensemble` (defaults :data:`CLASS_BUDGET`, :data:`zsad.llm.N_THREADS`).

    Returns
    -------
    str
        64 hex digits over the class name, seed, model sha256, the recipe (texts, product line, budget), the
        sampling parameters, thread count, llama-cpp-python version and the sha256 of :data:`GENERATION_CODE`.
    """
    from zsad import llm
    from zsad.digest import file_sha256

    package = Path(__file__).resolve().parent
    recipe = {"format": FORMAT, "recipe": "llm_class", "class_recipe": CLASS_RECIPE, "info": list(class_info(cls)),
              "budget": _budget("llm_class", budget), "sampling": llm.SAMPLING,
              "n_threads": llm.N_THREADS if n_threads is None else int(n_threads),
              "llama_cpp_python": llm.llama_cpp_version(),
              "code": {name: file_sha256(package / name) for name in GENERATION_CODE}}
    text = json.dumps({"class": cls, "seed": int(seed), "model_sha256": model_sha256, "recipe": recipe},
                      sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _cached_file_ok(path: Path, cls: str, seed: int, model_sha256: str) -> bool:
    try:
        data = json.loads(path.read_text())
        return (data.get("format") == FORMAT and data.get("ensemble") == "llm_class" and data.get("seed") == seed
                and data.get("model", {}).get("sha256") == model_sha256 and list(data.get("classes", {})) == [cls])
    except (OSError, ValueError, AttributeError):
        return False


def class_prompt_file(cls: str, seed: int = 0, *, model=None, cache_dir=None, budget: dict | None = None,
                      n_threads: int | None = None, progress: bool = False) -> Path:
    """The llm_class prompt file of one class, generated with the local LLM on first use and cached.

    Parameters
    ----------
    cls : str
        Any class name (:func:`check_class_name`); the file's ``classes`` holds it exactly as given, which is what
        :func:`zsad.prompts.read_class_prompts` and Cheung et al.'s runner look up.
    seed : int
        Generation seed (the study's class files use 0).
    model : path, optional
        A GGUF file (default: the packaged Gemma 3 270M).
    cache_dir : path, optional
        Where generated files are kept (default ``<cache root>/prompts/llm_class``, :func:`zsad.cache.cache_root`:
        ``$ZSAD_CACHE``, the clone's ``cache/`` or ``~/.cache/zsad``).
    budget, n_threads, progress :
        As :func:`generate_ensemble`.

    Returns
    -------
    pathlib.Path
        ``<cache_dir>/<slug>-s<seed>-<key[:16]>.json`` (:func:`class_cache_key`): the canonical bytes of
        ``generate_ensemble("llm_class", seed, classes=[cls])``, so it is its own provenance (model file and sha256,
        llama-cpp-python version, sampling, recipe texts, raw output, clean-up counts). A file already there with
        the same key is returned without loading the LLM; an unreadable one is regenerated (written atomically).

    Raises
    ------
    ValueError
        A bad class name or seed, a missing or corrupt model file, or a side the clean-up rules emptied (the
        message names the class, seed and file; another seed or a hand-written ``class_prompts`` file helps).
    """
    from zsad import llm

    check_class_name(cls)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"prompt seed must be a non-negative integer, got {seed!r}")
    info = llm.resolve_model(model)
    key = class_cache_key(cls, seed, info.sha256, budget=budget, n_threads=n_threads)
    if cache_dir is None:
        from zsad.cache import cache_root

        cache_dir = cache_root().joinpath(*CLASS_CACHE_DIR)
    path = Path(cache_dir).expanduser() / f"{_slug(cls)}-s{seed}-{key[:16]}.json"
    if not _cached_file_ok(path, cls, seed, info.sha256):
        data = generate_ensemble("llm_class", seed, model=None if model is None else info.path, classes=[cls],
                                 budget=budget, n_threads=n_threads, progress=progress)
        write_prompt_file(path, data)
    data = json.loads(path.read_text())
    empty = [side for side in SIDES if not data["classes"][cls][side]["prompts"]]
    if empty:
        counts = data["classes"][cls][empty[0]]["counts"]
        rules = ", ".join(f"{r} {n}" for r, n in counts["dropped_by_rule"].items() if n) or "no lines generated"
        raise ValueError(f"the LLM gave no usable {' or '.join(empty)} prompt for class {cls!r} with seed {seed} "
                         f"({counts['raw']} lines, dropped: {rules}; file {path}): try another prompt seed or pass "
                         "a class_prompts file")
    return path


def generated_class_provenance(path) -> dict:
    """What a report records about a generated class file: class, seed, model, llama.cpp build, counts, file.

    Parameters
    ----------
    path : path
        A file written by :func:`class_prompt_file` (or ``zsad prompts generate --recipe llm_class``).

    Returns
    -------
    dict
        ``{"file", "classes", "seed", "model_file", "model_sha256", "llama_cpp_python", "sampling", "counts"}``.
    """
    path = Path(path)
    data = _load_json(path)
    return {"file": str(path), "classes": list(data.get("classes", {})), "seed": data.get("seed"),
            "model_file": data.get("model", {}).get("file"), "model_sha256": data.get("model", {}).get("sha256"),
            "llama_cpp_python": data.get("llama_cpp_python"), "sampling": data.get("sampling"),
            "counts": data.get("counts")}
