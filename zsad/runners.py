"""The study's runners: per class, ask the feature cache for what a method scores, load its prompts, call the pure
method and hand its output back. The methods themselves (:mod:`zsad.methods`) read no file and run no
encoder; everything that does lives here or in the feature modules.

Every runner is ``run(loaded, cls, test, refs, params, progress) -> MethodOutput``, registered in
:data:`zsad.study.METHODS`:

- ``loaded``: the backbone (:class:`zsad.backbone.LoadedModel`, or :class:`zsad.cnn.LoadedCNN` for PatchCore);
- ``cls``: the class name; ``test``: the class's test records; ``refs``: its reference records (k-shot; empty at
  0 shots);
- ``params``: the run parameters of :func:`zsad.study.plan_run` (``config``, ``cache``, ``autocast``, ...);
- ``progress``: tqdm bars per feature pass.

FADE, WinCLIP and PatchCore
---------------------------
Their feature passes (:func:`zsad.features.extract_tokens`, :func:`zsad.windows.extract_window_tokens`,
:func:`zsad.cnn.extract_patch_features`), text prototypes and FADE's cached patch distances.

Cheung et al. 2024
------------------
Cheung et al. 2024 on one class: images -> Grounding DINO boxes -> CLIP embeddings -> eq. 4 (the study adapter).

The math lives in :mod:`zsad.methods.cheung` (pure functions); this module does what needs files and models:

1. whole-image CLIP embeddings: the CLS token of the ordinary CLIP stream at 240 px from
   :func:`zsad.features.extract_tokens` (the one place that encodes dataset images; equal to ``encode_image``);
2. Grounding DINO on each test image, queried with the class name (``"metal nut."``), through the in-memory
   detection cache of :mod:`zsad.detector` (so ablation rows and reruns never repeat a detection);
3. the crops (:func:`zsad.methods.cheung.object_crops`), each preprocessed at 240 px and encoded with
   ``model.encode_image``; a crop equal to the whole image (the no-detection fallback) reuses the image embedding;
4. text embeddings: the renormalised mean of each prompt ensemble, prompts encoded as written (no FADE
   ``"a photo of a {}."`` wrapper). LLM prompts come from ``params["class_prompts"]`` (a class prompt file, read
   with ``zsad.prompts.read_class_prompts(path, cls)``); without it, WinCLIP's compositional ensemble, which is
   the paper's "w/o prompt generation" row (``zsad.study.predict`` refuses ``cheung`` without a prompt file, so
   the full row is never silently the ablation row).

Parameters read from ``params`` (all optional; the study's other keys are ignored):

- ``class_prompts``: path of an LLM class prompt file; None or "" -> the WinCLIP ensemble;
- ``detector``: a Grounding DINO folder, a :class:`zsad.detector.LoadedDetector`, or None / ``"random"`` (the tiny
  random config, the default CPU run) / ``"random-default"`` (the full-size random config); loaded once per process;
- ``detector_seed``: seed of a random detector (0);
- ``use_detection``, ``fusion_weight``, ``box_threshold``, ``text_threshold``, ``max_boxes``, ``min_box_size``,
  ``fallback``, ``score``, ``guard``, ``eps``, ``temperature``, ``image_size``: fields of
  :class:`zsad.methods.cheung.CheungConfig` (None -> its default).

The method is zero-shot: reference images (``refs``) are not used (their count is recorded). Every output is
image-level only: ``info["image_only"] = True``, maps are (N, 1, 1).

Tamura 2023
-----------
The study's per-class runner for Tamura 2023 (:mod:`zsad.methods.tamura`).

``tamura_class(loaded, cls, test, refs, params, progress)`` has the signature of the runners in
:data:`zsad.study.METHODS`. Config overrides come from ``params["options"]`` (a dict of :class:`TamuraConfig`
fields, e.g. ``{"object_word": "class"}``, ``{"n_random_words": 0}``); an unknown field is a ``ValueError``.

Steps: the prompt set (:func:`build_prompt_set`, object word "object" or the class name via
:func:`zsad.data.class_prompt_name`; vocabulary from ``loaded.tokenizer``), a check that no prompt exceeds the text
tower's context (open_clip's tokenizer would truncate silently), encoding of the distinct prompts with
:func:`zsad.text.encode_prompts` (L2-normalised), FFN training, then the test images' WinCLIP features
(:func:`zsad.windows.extract_window_tokens`, through ``params["cache"]`` when given) scored by
:func:`zsad.methods.tamura.score_windows`.

The method is zero-shot: reference images (``refs``) are not used; their count is recorded in ``info``.

The trained FFN is reused across the classes of a run when nothing it depends on changes (same model object, same
config, same object word, which is the case for every class with ``object_word="object"``): it is memoised per
model object (a weak reference, so nothing outlives the model). Training is deterministic, so reuse gives the same
numbers as retraining; ``info["training"]["reused"]`` says which happened. A model whose weights are changed in
place after a run would need :func:`clear_memo`.

MuSc (Li et al., ICLR 2024)
---------------------------
``musc_class`` reads the test images' tokens at ``config.image_size`` from the one feature pass
(:func:`zsad.features.extract_layers`: both streams and the residual stream after the chosen blocks, cached), the
class tokens for RsCIN from the ordinary stream's CLS (``encode_image``), and calls
:func:`zsad.methods.musc.musc`. ``features="clip"`` / ``"gem"`` score the final tokens of that stream instead of
the intermediate layers (the chapter's comparison with FADE's zero-shot vision memory, which reads GEM patches).
Zero-shot and transductive: the other test images of the class are the method's only reference; ``refs`` are not
used (their count is recorded).
"""
from __future__ import annotations

import os
import time
import weakref
from collections.abc import Sequence
from dataclasses import asdict, fields, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm  # not tqdm.auto: it warns on stderr in kernels without ipywidgets

from zsad.cache import encode_prompts_cached, unwrap_model
from zsad.cnn import extract_patch_features
from zsad.data import ImageRecord, class_prompt_name, load_image, preprocess
from zsad.detector import LoadedDetector, caption, detect, load_detector
from zsad.features import CLIP_PREPROCESS, autocast_context, extract_layers, extract_tokens, token_params
from zsad.methods.base import MethodOutput
from zsad.methods.cheung import CheungConfig, cheung_scores, image_only_output, object_crops
from zsad.methods.fade import fade, vision_distances
from zsad.methods.musc import default_layers, musc
from zsad.methods.patchcore import patchcore
from zsad.methods.tamura import (
    TamuraConfig,
    build_prompt_set,
    excluded_words,
    ffn_probability,
    score_windows,
    train_ffn,
    vocabulary_words,
)
from zsad.methods.tokens import TokenSet
from zsad.methods.winclip import winclip
from zsad.prompts import read_class_prompts, read_prompt_file, winclip_prompts
from zsad.text import prototypes
from zsad.windows import extract_window_tokens

__all__ = ["fade_class", "winclip_class", "patchcore_class", "cheung_class", "cheung_ablation", "tamura_class",
           "musc_class", "musc_layers",
           "CHEUNG_METHODS", "ABLATION_ROWS", "class_prompts_for", "config_from_params", "get_detector",
           "tamura_config", "prepare_detector", "clear_memo"]


# ------------------------------------------------------------------------------------- FADE, WinCLIP, PatchCore

def _prompt_sets(cls: str, prompt_files, winclip_in_segmentation: bool = True) -> tuple[dict, dict]:
    """FADE's two ensembles: classification with the class name, segmentation with "object" + the prompt files
    (the WinCLIP part can be left out, to compare ensembles)."""
    ac = winclip_prompts(class_prompt_name(cls))
    seg = winclip_prompts("object") if winclip_in_segmentation else {"normal": [], "abnormal": []}
    for path in prompt_files:
        extra = read_prompt_file(path)
        seg = {side: seg[side] + extra[side] for side in seg}
    return ac, seg


#: Test images FADE scores at once (:func:`fade_class`): a multiple of extract_tokens' batch (8), so a cold cache
#: computes the same batches as one pass over the class; classes up to this size are scored in one call.
FADE_CHUNK = 64


def fade_class(loaded, cls, test, refs, params, progress):
    """FADE on one class: tokens at every scale (and 240 px for classification), the two prompt
    ensembles' prototypes, the cached patch distances, then :func:`zsad.methods.fade.fade`.

    Parameters
    ----------
    loaded, cls, test, refs, params, progress
        The runner arguments (module docstring).

    Returns
    -------
    MethodOutput
    """
    cache, autocast, cfg = params.get("cache"), params.get("autocast"), params["config"]
    sizes = tuple(sorted(set(cfg.sizes) | {240}))
    ref_tokens = extract_tokens(loaded, refs, cfg.sizes, progress=progress, desc=f"{cls} refs",
                                cache=cache, autocast=autocast) if refs else None
    ac, seg = _prompt_sets(cls, params["prompts"], params["winclip_in_segmentation"])
    enc = {name: prototypes(encode_prompts_cached(loaded, p["normal"], cache=cache),
                            encode_prompts_cached(loaded, p["abnormal"], cache=cache))
           for name, p in (("ac", ac), ("as", seg))}
    outs = []
    # Every FADE score and map depends on its own image (and the references) only, so a large class is scored
    # FADE_CHUNK images at a time: its tokens in memory stay bounded (ViT-B, 240/448/896 px: about 21 MB per image).
    for start in range(0, len(test), FADE_CHUNK):
        part = test[start:start + FADE_CHUNK]
        tokens = extract_tokens(loaded, part, sizes, progress=progress, desc=f"{cls} test", cache=cache,
                                autocast=autocast)
        vision = _cached_vision_distances(loaded, part, refs, tokens, ref_tokens, cfg, cache, autocast)
        outs.append(fade(tokens, cfg, ac_prototypes=enc["ac"], as_prototypes=enc["as"], refs=ref_tokens,
                         vision=vision))
    if len(outs) == 1:
        return outs[0]
    return MethodOutput(np.concatenate([o.scores for o in outs]), np.concatenate([o.maps for o in outs]),
                        outs[0].info)


def _cached_vision_distances(loaded, test, refs, tokens, ref_tokens, cfg, cache, autocast):
    """FADE's patch distances per size through the feature cache (kind ``knn``), or None (fade computes them).

    A test image's distances depend on its tokens, the stream, the size and (k-shot) the reference images, not on
    the prompts, the fusion or the table: every table that scores the image the same way reads them back.
    """
    cfg = cfg.resolved()
    if cache is None or (cfg.ac_mode == "language" and cfg.as_mode == "language"):
        return None
    memory = "self, 2nd neighbour" if cfg.shots == 0 else sorted(cache.digest(r) for r in refs)
    out = {}
    for size in cfg.sizes:
        params = {"tokens": token_params(size, autocast), "stream": cfg.vision_stream, "memory": memory}

        def compute(missing, size=size):
            part, index = TokenSet([tokens.relpaths[i] for i in missing]), torch.tensor(missing)
            part.clip[size], part.gem[size] = tokens.clip[size][index], tokens.gem[size][index]
            return {"distance": vision_distances(part, replace(cfg, sizes=(size,)), ref_tokens)[size]}

        out[size] = cache.compute_missing("knn", loaded, params, test, compute, names=("distance",)).stack("distance")
    return out


def winclip_class(loaded, cls, test, refs, params, progress):
    """WinCLIP / WinCLIP+ on one class: window embeddings of the test (and reference) images and the
    class's prompt prototypes, then :func:`zsad.methods.winclip.winclip`.

    Parameters
    ----------
    loaded, cls, test, refs, params, progress
        The runner arguments (module docstring).

    Returns
    -------
    MethodOutput
    """
    cache, autocast = params.get("cache"), params.get("autocast")
    windows = extract_window_tokens(loaded, test, progress=progress, cache=cache, autocast=autocast)
    ref_windows = extract_window_tokens(loaded, refs, progress=progress, cache=cache,
                                        autocast=autocast) if refs else None
    p = winclip_prompts(class_prompt_name(cls))
    # WinCLIP averages the raw text embeddings (no FADE wrapper); winclip() normalises the prototypes.
    proto = prototypes(*(encode_prompts_cached(loaded, p[side], cache=cache, wrapper=None, normalise=False)
                         for side in ("normal", "abnormal")))
    return winclip(windows, proto, params["config"], ref_windows=ref_windows)


def patchcore_class(loaded, cls, test, refs, params, progress):
    """PatchCore on one class: WideResNet-50 patch features of the test and reference images, then
    :func:`zsad.methods.patchcore.patchcore` at the evaluation size.

    Parameters
    ----------
    loaded, cls, test, refs, params, progress
        The runner arguments (module docstring).

    Returns
    -------
    MethodOutput
    """
    cache, autocast = params.get("cache"), params.get("autocast")
    test_feat, grid = extract_patch_features(loaded, test, progress=progress, cache=cache, autocast=autocast)
    ref_feat, _ = extract_patch_features(loaded, refs, progress=progress, cache=cache, autocast=autocast)
    return patchcore(test_feat, ref_feat, grid, params["config"], map_size=params["eval_size"])


# ------------------------------------------------------------------------------------------ Cheung et al.

#: The rows of the paper's Tables IV/V: key -> (paper label, parameter overrides).
ABLATION_ROWS = {
    "full": ("Ours", {}),
    "no_prompt_generation": ("Ours w/o prompt generation", {"class_prompts": None}),
    "no_object_detection": ("Ours w/o object detection", {"use_detection": False}),
}
_CONFIG_FIELDS = {f.name for f in fields(CheungConfig)}
_DETECTORS: dict[tuple, LoadedDetector] = {}
_CROP_BATCH = 16  # crops encoded per CLIP batch


def config_from_params(params: dict) -> CheungConfig:
    """A :class:`CheungConfig` from the keys of ``params`` that name its fields (an ablation row's overrides) and
    ``params["options"]`` (the run's own settings, validated by the orchestrator).

    Parameters
    ----------
    params : the run parameters (ablation overrides and ``options``).

    Returns
    -------
    CheungConfig
    """
    given = {k: v for k, v in params.items() if k in _CONFIG_FIELDS and v is not None}
    return CheungConfig(**{**given, **(params.get("options") or {})})


def get_detector(spec=None, seed: int = 0, device="cpu") -> LoadedDetector:
    """The detector named by ``params["detector"]``; loaded once per process and kept (per folder, seed, device).

    Parameters
    ----------
    spec : a :class:`zsad.detector.LoadedDetector`, a Grounding DINO folder, or None / ``"random"`` /
        ``"random-default"``.
    seed : seed of a random detector.
    device : where it runs.

    Returns
    -------
    LoadedDetector
    """
    if isinstance(spec, LoadedDetector):
        return spec
    if spec in (None, "", "random", "random-small"):
        key = ("random", True, int(seed), str(device))
    elif spec == "random-default":
        key = ("random", False, int(seed), str(device))
    else:
        key = (str(Path(spec).expanduser().resolve()), False, int(seed), str(device))
    if key not in _DETECTORS:
        folder = None if key[0] == "random" else key[0]
        _DETECTORS[key] = load_detector(folder, seed=key[2], small=key[1], device=device)
    return _DETECTORS[key]


def class_prompts_for(cls: str, class_prompts=None) -> tuple[dict[str, list[str]], str, str | None]:
    """``(prompts, source, note)``: the LLM prompts of ``cls`` from the first class prompt file that holds the class
    (``class_prompts``: a path or a sequence of paths, e.g. one file per dataset), else WinCLIP's ensemble.

    Parameters
    ----------
    cls : the class name.
    class_prompts : a class prompt file, a sequence of them, or None.

    Returns
    -------
    tuple
        ``(prompts, source, note)``: ``{"normal": [...], "abnormal": [...]}``, ``"llm:<path>"`` or ``"winclip"``,
        and a note or None.
    """
    if not class_prompts:
        return winclip_prompts(class_prompt_name(cls)), "winclip", None
    files = [class_prompts] if isinstance(class_prompts, (str, os.PathLike)) else list(class_prompts)
    errors = []
    for path in files:
        try:
            prompts = read_class_prompts(path, cls)
        except ValueError as exc:
            errors.append(str(exc))
            continue
        return {side: list(prompts[side]) for side in ("normal", "abnormal")}, f"llm:{path}", None
    raise ValueError("; ".join(errors))


def _text_embeddings(loaded, prompts: dict, cache=None) -> tuple[torch.Tensor, torch.Tensor]:
    normal = encode_prompts_cached(loaded, prompts["normal"], cache=cache, wrapper=None)
    abnormal = encode_prompts_cached(loaded, prompts["abnormal"], cache=cache, wrapper=None)
    proto = prototypes(normal, abnormal, renormalise=True)
    return proto[0], proto[1]


@torch.inference_mode()
def _encode_pil(model, images: Sequence, size: int, batch_size: int = 16, autocast: str | None = None) -> torch.Tensor:
    """L2-normalised ``encode_image`` of PIL images at ``size`` px, (N, D) float32."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        pixels = torch.stack([preprocess(im, size) for im in images[i:i + batch_size]]).to(device)
        with autocast_context(device, autocast):
            emb = model.encode_image(pixels)
        out.append(F.normalize(emb.float(), dim=-1).cpu())
    return torch.cat(out)


def _encode_crops(loaded, crops: Sequence, size: int, cache=None, autocast: str | None = None) -> torch.Tensor:
    """:func:`_encode_pil` of object crops through the feature cache (kind ``crops``, keyed by the crop's pixels), so
    the ablation rows and re-runs do not encode the same crops again."""
    if cache is None:
        return _encode_pil(loaded.model, crops, size, _CROP_BATCH, autocast)
    params = {"size": int(size), "preprocess": CLIP_PREPROCESS,
              "output": "encode_image, l2", "autocast": autocast}
    return cache.compute_missing(
        "crops", loaded, params, crops, names=("embedding",),
        compute=lambda missing: {"embedding": _encode_pil(loaded.model, [crops[i] for i in missing], size,
                                                          _CROP_BATCH, autocast)}).stack("embedding")


def _class_features(loaded, cls: str, test: Sequence[ImageRecord], cfg: CheungConfig, detector_spec, seed: int,
                    progress: bool, cache=None, autocast: str | None = None) -> dict:
    """Everything prompt-independent: whole-image and crop embeddings, detections and crops of each image."""
    tokens = extract_tokens(loaded, test, (cfg.image_size,), progress=progress, desc=f"{cls} images",
                            cache=cache, autocast=autocast)
    e_image = tokens.clip[cfg.image_size][:, 0].double()  # CLS of the ordinary stream, L2-normalised
    feats = {"e_image": e_image, "e_object": None, "detector": None}
    if not cfg.use_detection:
        return feats
    detector = get_detector(detector_spec, seed, next(loaded.model.parameters()).device)  # beside CLIP
    query = caption(class_prompt_name(cls))
    crops, fell_back, n_dets, top = [], [], [], []
    pending, owner = [], []  # crops to encode, and the image each belongs to
    sums = torch.zeros_like(e_image)
    counts = torch.zeros(len(test), dtype=torch.float64)
    for i, rec in enumerate(tqdm(test, desc=f"{cls} detection", disable=not progress, leave=False)):
        image = load_image(rec.path)
        dets = detect(detector, image, query, cfg.box_threshold, cfg.text_threshold)
        boxes, fb = object_crops(image.size, dets.boxes, cfg)
        crops.append([list(b) for b in boxes])
        fell_back.append(fb)
        n_dets.append(len(dets))
        top.append(float(dets.scores[0]) if len(dets) else None)
        for box in boxes:
            if tuple(box) == (0, 0, *image.size):  # the crop is the image, so is its embedding
                sums[i] += e_image[i]
                counts[i] += 1
            else:
                pending.append(image.crop(box))
                owner.append(i)
        if len(pending) >= _CROP_BATCH or (pending and i == len(test) - 1):  # bounded memory on large images
            emb = _encode_crops(loaded, pending, cfg.image_size, cache, autocast).double()
            sums.index_add_(0, torch.tensor(owner), emb)
            counts += torch.bincount(torch.tensor(owner), minlength=len(test)).double()
            pending, owner = [], []
    feats.update(e_object=sums / counts[:, None], detector=detector, query=query, crops=crops,
                 fallback=fell_back, n_detections=n_dets, top_score=top)
    return feats


def _output(feats: dict, prompts: dict, source: str, note, cfg: CheungConfig, t: tuple, row: str,
            refs: Sequence) -> MethodOutput:
    scores, guarded = cheung_scores(feats["e_image"], feats["e_object"], t[0], t[1], cfg, return_guarded=True)
    info = {"method": "cheung", "row": row, "prompts": source, "n_prompts": {k: len(v) for k, v in prompts.items()},
            "config": asdict(cfg), "guarded": guarded.tolist(), "n_guarded": int(guarded.sum()),
            "references_ignored": len(refs)}
    if note:
        info["prompt_note"] = note
    if cfg.use_detection:
        det = feats["detector"]
        info.update(detector=det.provenance(), detector_weights=det.weights_label, query=feats["query"],
                    crops=feats["crops"], fallback=feats["fallback"], n_fallback=int(sum(feats["fallback"])),
                    n_detections=feats["n_detections"], top_score=feats["top_score"])
    return image_only_output(scores, info)


def cheung_class(loaded, cls: str, test_records: Sequence[ImageRecord], refs: Sequence[ImageRecord], params: dict,
                 progress: bool = True) -> MethodOutput:
    """Cheung et al. on one class (the study's runner).

    Parameters
    ----------
    loaded, cls, test_records, refs, params, progress
        The runner arguments (module docstring); ``refs`` are not used (their count is recorded), ``params`` also
        carry ``class_prompts``, ``detector`` and the config fields.

    Returns
    -------
    MethodOutput
        Image-level scores (maps (N, 1, 1)).
    """
    cfg = config_from_params(params)
    feats = _class_features(loaded, cls, test_records, cfg, params.get("detector"),
                            int(params.get("detector_seed") or 0), progress, params.get("cache"),
                            params.get("autocast"))
    prompts, source, note = class_prompts_for(cls, params.get("class_prompts"))
    row = ("Ours" if source != "winclip" else "Ours w/o prompt generation") if cfg.use_detection else \
        "Ours w/o object detection"
    return _output(feats, prompts, source, note, cfg, _text_embeddings(loaded, prompts, params.get("cache")), row,
                   refs)


def cheung_ablation(loaded, cls: str, test_records: Sequence[ImageRecord], refs: Sequence[ImageRecord],
                    params: dict, progress: bool = True) -> dict[str, MethodOutput]:
    """The three rows of the paper's ablation (keys of :data:`ABLATION_ROWS`) from one detector and one CLIP pass.

    ``params`` describe the full method (``class_prompts`` should name the LLM prompt file; without it the full row
    equals the "w/o prompt generation" row, and ``info["prompt_note"]`` says so).

    Parameters
    ----------
    loaded, cls, test_records, refs, params, progress
        The runner arguments (module docstring); ``refs`` are not used (their count is recorded), ``params`` also
        carry ``class_prompts``, ``detector`` and the config fields.

    Returns
    -------
    dict
        ``{row key: MethodOutput}`` for the keys of :data:`ABLATION_ROWS`.
    """
    cfg = replace(config_from_params(params), use_detection=True)
    feats = _class_features(loaded, cls, test_records, cfg, params.get("detector"),
                            int(params.get("detector_seed") or 0), progress, params.get("cache"),
                            params.get("autocast"))
    llm, llm_source, llm_note = class_prompts_for(cls, params.get("class_prompts"))
    if llm_source == "winclip" and not llm_note:
        llm_note = "no class_prompts given: the full row uses the WinCLIP ensemble (= w/o prompt generation)"
    fixed, fixed_source, _ = class_prompts_for(cls, None)
    t_llm = _text_embeddings(loaded, llm, params.get("cache"))
    t_fixed = t_llm if llm_source == fixed_source else _text_embeddings(loaded, fixed, params.get("cache"))
    no_det = replace(cfg, use_detection=False)
    return {
        "full": _output(feats, llm, llm_source, llm_note, cfg, t_llm, ABLATION_ROWS["full"][0], refs),
        "no_prompt_generation": _output(feats, fixed, fixed_source, None, cfg, t_fixed,
                                        ABLATION_ROWS["no_prompt_generation"][0], refs),
        "no_object_detection": _output(feats, llm, llm_source, llm_note, no_det, t_llm,
                                       ABLATION_ROWS["no_object_detection"][0], refs),
    }


def _variant(overrides: dict, loaded, cls, test_records, refs, params, progress=True) -> MethodOutput:
    return cheung_class(loaded, cls, test_records, refs, {**params, **overrides}, progress)


#: Adapters for the study's ``METHODS`` registry: the full method and its two ablation rows as separate methods.
#: Run one after another in a process, they share the detection cache (the detector runs once per image).
CHEUNG_METHODS = {
    "cheung": cheung_class,
    "cheung_no_prompt_generation": partial(_variant, ABLATION_ROWS["no_prompt_generation"][1]),
    "cheung_no_object_detection": partial(_variant, ABLATION_ROWS["no_object_detection"][1]),
}


# ------------------------------------------------------------------------------------------------ Tamura

_MEMO: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def tamura_config(options: dict | None) -> TamuraConfig:
    """:class:`TamuraConfig` from an options dict; unknown fields and bad values are ``ValueError``s.

    Parameters
    ----------
    options : fields of :class:`TamuraConfig` (or None).

    Returns
    -------
    TamuraConfig
    """
    options = dict(options or {})
    known = {f.name for f in fields(TamuraConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"bad Tamura option(s) {unknown}; known: {sorted(known)}")
    return TamuraConfig(**options).validated()


def clear_memo() -> None:
    """Forget every memoised FFN."""
    _MEMO.clear()


def _context_length(tokenizer) -> int:
    return int(getattr(tokenizer, "context_length", 77))


def _check_lengths(tokenizer, texts) -> int:
    """The longest prompt in tokens (incl. start/end); raise if one would be truncated."""
    enc = getattr(tokenizer, "encode", None)
    if enc is None:
        return -1
    longest = max(len(enc(t)) + 2 for t in texts)
    if longest > _context_length(tokenizer):
        raise ValueError(f"a generated prompt has {longest} tokens, more than the text context "
                         f"{_context_length(tokenizer)}: use fewer or shorter random words")
    return longest


def prepare_detector(loaded, cfg: TamuraConfig, object_name: str, cache=None):
    """Build the prompt set, encode it (through the feature cache when given) and train the FFN: ``(net, info)``
    (memoised, see the module docstring).

    Parameters
    ----------
    loaded : the CLIP model (its tokenizer and text tower are used).
    cfg : the :class:`TamuraConfig`.
    object_name : the object word of the prompts ("object" or the class name).
    cache : a :class:`zsad.cache.FeatureCache` for the text embeddings, or None.

    Returns
    -------
    tuple
        ``(net, info)``: the trained FFN and what its training recorded.
    """
    from zsad.cache import encode_prompts_cached

    key = (cfg, object_name)
    memo = _MEMO.setdefault(loaded.model, {})
    if key in memo:
        net, info = memo[key]
        return net, {**info, "training": {**info["training"], "reused": True}}
    t0 = time.perf_counter()
    vocab = None
    if cfg.word_source == "vocab" and cfg.n_random_words > 0:
        vocab = vocabulary_words(loaded.tokenizer, cfg.word_min_len, cfg.word_max_len,
                                 excluded_words() if cfg.exclude_state_words else ())
    ps = build_prompt_set(cfg, object_name, vocab)
    texts, inverse = ps.unique()
    wrapped = [cfg.wrapper.format(t) for t in texts] if cfg.wrapper else texts
    longest = _check_lengths(loaded.tokenizer, wrapped)
    emb = encode_prompts_cached(loaded, texts, cache=cache, wrapper=cfg.wrapper, normalise=True).cpu()
    t_encode = time.perf_counter() - t0
    net, history = train_ffn(emb[torch.from_numpy(inverse)], ps.labels, cfg)
    examples = {side: [ps.texts[i] for i in range(len(ps)) if ps.labels[i] == label][:5]
                for label, side in enumerate(("normal", "abnormal"))}
    info = {"prompts": {**ps.info, "n_samples": len(ps), "n_unique": len(texts), "longest_tokens": longest,
                        "examples": examples, "encode_seconds": t_encode},
            "training": {**history, "reused": False}}
    memo[key] = (net, info)
    return net, info


def tamura_class(loaded, cls, test, refs, params, progress) -> MethodOutput:
    """Tamura 2023 on one class: train on generated text embeddings, score the test images (AC and AS).

    Parameters
    ----------
    loaded, cls, test, refs, params, progress
        The runner arguments (module docstring).

    Returns
    -------
    MethodOutput
    """
    from zsad.data import class_prompt_name
    from zsad.windows import extract_window_tokens

    cfg = params.get("config") or tamura_config(params.get("options"))
    object_name = "object" if cfg.object_word == "object" else class_prompt_name(cls)
    net, info = prepare_detector(loaded, cfg, object_name, params.get("cache"))
    windows = extract_window_tokens(loaded, test, scales=cfg.scales, progress=progress,
                                    desc=f"{cls} test", cache=params.get("cache"), autocast=params.get("autocast"))
    out = score_windows(windows, lambda e: ffn_probability(net, e, cfg.temperature), cfg)
    out.info.update({**asdict(cfg), "scales": list(cfg.scales), **info, "references_ignored": len(refs or [])})
    return out


# -------------------------------------------------------------------------------------------------- MuSc


def musc_layers(loaded, cfg) -> tuple[int, ...]:
    """The blocks MuSc reads: ``cfg.layers``, or 4 evenly spaced ones of this tower (:func:`default_layers`).

    Parameters
    ----------
    loaded : the CLIP model (or its module).
    cfg : a :class:`zsad.methods.musc.MuscConfig`.

    Returns
    -------
    tuple of int
        0-based block indices.
    """
    n_blocks = len(unwrap_model(loaded).visual.transformer.resblocks)
    layers = tuple(cfg.layers) if cfg.layers is not None else default_layers(n_blocks)
    if max(layers) >= n_blocks:
        raise ValueError(f"musc layers {list(layers)}: this tower has {n_blocks} blocks (0-based indices)")
    return layers


def musc_class(loaded, cls, test, refs, params, progress) -> MethodOutput:
    """MuSc on one class: tokens from the one cached feature pass, then the pure method (module docstring).

    Parameters
    ----------
    loaded : the CLIP model (:class:`zsad.backbone.LoadedModel`).
    cls : the class name (for progress bars).
    test : the class's test records; every one is scored against the others.
    refs : reference images; MuSc uses none (their count is recorded in ``info``).
    params : the run parameters (``config``: a :class:`zsad.methods.musc.MuscConfig`; ``eval_size``, ``cache``,
        ``autocast``).
    progress : tqdm bars.

    Returns
    -------
    MethodOutput
        Scores and maps at ``eval_size`` (:func:`zsad.methods.musc.musc`), ``info`` with the layers read.
    """
    cfg, cache, autocast = params["config"], params.get("cache"), params.get("autocast")
    size = cfg.image_size
    if cfg.features == "layers":
        layers = musc_layers(loaded, cfg)
        tokens, taps = extract_layers(loaded, test, size, layers, progress=progress, desc=f"{cls} test",
                                      cache=cache, autocast=autocast)
    else:
        tokens = extract_tokens(loaded, test, (size,), progress=progress, desc=f"{cls} test", cache=cache,
                                autocast=autocast)
        taps = {-1: tokens.stream(cfg.features)[size]}  # -1: the stream's final tokens (after ln_post and proj)
    out = musc(taps, tokens.clip[size][:, 0], cfg, map_size=params["eval_size"])
    out.info.update(features=cfg.features, image_size=size, references_ignored=len(refs or []))
    return out
