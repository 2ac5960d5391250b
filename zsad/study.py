"""The orchestrator the CLI and the notebooks call: named datasets in, tidy tables and run folders out."""
from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from zsad import config
from zsad.backbone import DEFAULT_MODEL, default_checkpoint, load_model
from zsad.cache import FeatureCache, encode_prompts_cached
from zsad.cnn import default_cnn_checkpoint, extract_patch_features, load_wide_resnet50
from zsad.data import class_prompt_name, load_dataset, load_mask, sample_references
from zsad.evaluate import metrics_table
from zsad.features import TokenSet, check_autocast, extract_tokens, token_params
from zsad.methods.base import resize_maps
from zsad.methods.cheung_run import CHEUNG_METHODS
from zsad.methods.fade import FadeConfig, fade, vision_distances
from zsad.methods.patchcore import PatchCoreConfig, patchcore
from zsad.methods.tamura_run import tamura_class
from zsad.methods.winclip import WinClipConfig, winclip
from zsad.prompts import read_prompt_file, winclip_prompts
from zsad.results import provenance, write_run
from zsad.text import prototypes
from zsad.windows import extract_window_tokens


def _names(value) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value)


def load_named(name: str, root=None, classes=None, split=None):
    """Records of a study dataset (``synthetic``, ``magnetic_tile``, ``mvtec``, ``visa``, ``folder``)."""
    kind, path = config.resolve_dataset(name, root)
    return load_dataset(kind, path, classes=classes, split=split)


def load_many(datasets="synthetic,magnetic_tile", roots="") -> dict[str, list]:
    """Records of several study datasets, by name.

    ``datasets`` and ``roots`` are comma-separated lists (or sequences) in the same order; an empty root means the
    configured default (the embedded data, or ``$ZSAD_MVTEC_ROOT`` / ``$ZSAD_VISA_ROOT``).
    """
    names, given = _names(datasets), _names(roots)
    if len(given) > len(names):
        raise ValueError(f"{len(given)} roots given for {len(names)} datasets ({', '.join(names)})")
    given += [""] * (len(names) - len(given))
    return {name: load_named(name, root or None) for name, root in zip(names, given)}


def dataset_overview(datasets="synthetic,magnetic_tile", roots="") -> pd.DataFrame:
    """Images and masks per dataset, class, split and defect type (arguments as :func:`load_many`)."""
    frames = []
    for name, records in load_many(datasets, roots).items():
        df = pd.DataFrame([{"class": r.cls, "split": r.split, "defect": r.defect,
                            "has_mask": r.mask_path is not None} for r in records])
        counts = df.groupby(["class", "split", "defect"], sort=True).agg(
            images=("has_mask", "size"), masks=("has_mask", "sum")).reset_index()
        counts.insert(0, "dataset", name)
        frames.append(counts)
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------------------------- predict

def subset_evenly(records, max_images: int | None):
    """At most ``max_images`` records, evenly spaced over the sorted list (so every defect folder is sampled)."""
    if not max_images or len(records) <= max_images:
        return list(records)
    idx = np.unique(np.linspace(0, len(records) - 1, max_images).round().astype(int))
    return [records[i] for i in idx]


@functools.lru_cache(maxsize=4096)
def _mask(record, size: int) -> np.ndarray:
    """A record's mask at the evaluation size; memoised because every setting of a table evaluates the same images."""
    mask = load_mask(record, size).numpy()
    mask.flags.writeable = False
    return mask


def _ground_truth(records, size: int) -> np.ndarray:
    return np.stack([_mask(r, size) for r in records]) if records else np.zeros((0, size, size), bool)


def _prompt_sets(cls: str, prompt_files, winclip_in_segmentation: bool = True) -> tuple[dict, dict]:
    """FADE's two ensembles: classification with the class name, segmentation with "object" + the prompt files
    (the WinCLIP part can be left out, to compare ensembles)."""
    ac = winclip_prompts(class_prompt_name(cls))
    seg = winclip_prompts("object") if winclip_in_segmentation else {"normal": [], "abnormal": []}
    for path in prompt_files:
        extra = read_prompt_file(path)
        seg = {side: seg[side] + extra[side] for side in seg}
    return ac, seg


def _fade_config(params) -> FadeConfig:
    base = dict(shots=params["shots"], ac_mode=params["mode"], as_mode=params["mode"], sizes=tuple(params["sizes"]),
                eval_size=params["eval_size"])
    return FadeConfig(**{**base, **params["options"]})


def _fade_class(loaded, cls, test, refs, params, progress):
    cache, autocast = params.get("cache"), params.get("autocast")
    sizes = tuple(sorted(set(params["sizes"]) | {240}))
    tokens = extract_tokens(loaded, test, sizes, progress=progress, desc=f"{cls} test", cache=cache,
                            autocast=autocast)
    ref_tokens = extract_tokens(loaded, refs, params["sizes"], progress=progress, desc=f"{cls} refs",
                                cache=cache, autocast=autocast) if refs else None
    ac, seg = _prompt_sets(cls, params["prompts"], params["winclip_in_segmentation"])
    enc = {name: prototypes(encode_prompts_cached(loaded, p["normal"], cache=cache),
                            encode_prompts_cached(loaded, p["abnormal"], cache=cache))
           for name, p in (("ac", ac), ("as", seg))}
    cfg = _fade_config(params)
    vision = _cached_vision_distances(loaded, test, refs, tokens, ref_tokens, cfg, cache, autocast)
    return fade(tokens, cfg, ac_prototypes=enc["ac"], as_prototypes=enc["as"], refs=ref_tokens, vision=vision)


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


def _winclip_class(loaded, cls, test, refs, params, progress):
    cache, autocast = params.get("cache"), params.get("autocast")
    windows = extract_window_tokens(loaded, test, progress=progress, cache=cache, autocast=autocast)
    ref_windows = extract_window_tokens(loaded, refs, progress=progress, cache=cache,
                                        autocast=autocast) if refs else None
    p = winclip_prompts(class_prompt_name(cls))
    # WinCLIP averages the raw text embeddings (no FADE wrapper); winclip() normalises the prototypes.
    proto = prototypes(*(encode_prompts_cached(loaded, p[side], cache=cache, wrapper=None, normalise=False)
                         for side in ("normal", "abnormal")))
    return winclip(windows, proto, WinClipConfig(**{"shots": params["shots"], **params["options"]}),
                   ref_windows=ref_windows)


def _patchcore_class(loaded, cls, test, refs, params, progress):
    if not refs:
        raise ValueError("PatchCore is a k-shot baseline: pass shots >= 1")
    cache, autocast = params.get("cache"), params.get("autocast")
    test_feat, grid = extract_patch_features(loaded, test, progress=progress, cache=cache, autocast=autocast)
    ref_feat, _ = extract_patch_features(loaded, refs, progress=progress, cache=cache, autocast=autocast)
    return patchcore(test_feat, ref_feat, grid, PatchCoreConfig(seed=params["seed"]), out_size=params["eval_size"])


# name -> (per-class runner, backbone family). CLIP methods share load_model; PatchCore uses a WideResNet-50.
METHODS = {"fade": (_fade_class, "clip"), "winclip": (_winclip_class, "clip"), "patchcore": (_patchcore_class, "cnn")}
# Cheung et al.: the full method and its two ablation rows share one detection cache.
METHODS.update({name: (run, "clip") for name, run in CHEUNG_METHODS.items()})
METHODS["tamura"] = (tamura_class, "clip")


def _default_device(device) -> str:
    return str(device) if device else ("cuda" if torch.cuda.is_available() else "cpu")


def _load_weights(family: str, model: str, checkpoint, device: str):
    """The backbone of a run, loaded once per process and reused by every later run with the same weights (a table
    has dozens of runs; building the model, reading the checkpoint and hashing it each time was a large share of a
    run's time). The models are only used in eval mode under inference_mode, never changed."""
    stamp = None
    if checkpoint:
        path = Path(checkpoint).expanduser()
        st = path.stat() if path.is_file() else None  # a missing file: the loader raises its own clear error
        stamp = (str(path.resolve()), st.st_size, st.st_mtime_ns) if st else (str(path), None, None)
    return _load_weights_memo(family, model, stamp, device)


@functools.lru_cache(maxsize=2)
def _load_weights_memo(family: str, model: str, stamp, device: str):
    checkpoint = stamp[0] if stamp else None
    if family == "cnn":
        return load_wide_resnet50(checkpoint, seed=0, device=device)
    return load_model(model, checkpoint=checkpoint, seed=0, device=device)


def _setting(shots: int) -> str:
    return "0-shot" if shots == 0 else f"{shots}-shot"


def predict(method: str = "fade", dataset: str = "synthetic", root=None, classes=None, *,
            model: str = DEFAULT_MODEL, checkpoint=None, cnn_checkpoint=None, shots: int = 0, seed: int = 0, mode: str = "both",
            sizes=(240, 448, 896), prompts=(), winclip_in_segmentation: bool = True, options=None, variant: str = "",
            class_prompts=None, detector=None, max_images: int | None = None, eval_size: int = 448,
            n_boot: int = 200, cache=True, autocast: str | None = None, device: str | None = None, out=None,
            overwrite: bool = False, progress: bool = True) -> dict:
    """Run one method on one dataset (every class, or ``classes``) and write a run folder when ``out`` is given.

    Returns ``{"metrics": DataFrame, "predictions": dict, "provenance": dict, "path": Path | None}``.
    Inputs are checked before any model runs: unknown method or class, shots larger than a class's train set,
    sizes not multiples of 16, prompt files without both sides, unknown FADE options.

    ``cache``: True = the feature cache under ``$ZSAD_CACHE`` (default ``cache/``), a :class:`FeatureCache`, or
    False/None for none. ``options`` are method config fields (e.g. ``{"language_stream": "clip"}`` for FADE, ``{"temperature": 0.01}``
    for WinCLIP); ``variant`` names such a run in the ``setting`` column (``"0-shot <variant>"``).
    ``autocast``: None (float32), ``"bf16"`` or ``"fp16"`` (CUDA): every image tower of the method runs under
    ``torch.autocast`` (see :func:`zsad.features.extract_tokens`; features are cached under their own key). It is
    recorded in the run's parameters; the deviation from float32 is measured in ``benchmarks/bench_autocast.py``.
    ``device``: where the models run (default ``cuda`` when torch sees a GPU, else ``cpu``); features come back to
    the CPU for scoring.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(sorted(METHODS))}")
    run_class, family = METHODS[method]
    if family == "cnn" and shots < 1:
        raise ValueError(f"{method} is a k-shot baseline: shots must be >= 1, got {shots}")
    sizes = tuple(int(s) for s in (_names(sizes) if isinstance(sizes, str) else sizes))
    if not sizes or any(s <= 0 or s % 16 for s in sizes):
        raise ValueError(f"sizes must be positive multiples of the patch size 16, got {sizes}")
    prompts = tuple(config.prompt_path(p) for p in (_names(prompts) if isinstance(prompts, str) else prompts or ()))
    class_prompts = config.prompt_path(class_prompts) if class_prompts else None
    for path in prompts:
        read_prompt_file(path)  # fail early on a bad file
    if method == "cheung" and not class_prompts:
        raise ValueError("cheung (the full method) needs class prompts from the LLM: pass class_prompts / "
                         "--class-prompts, e.g. prompts/llm_class_mvtec.json; cheung_no_prompt_generation is the "
                         "row without them")
    autocast, device = autocast or None, _default_device(device)
    check_autocast(autocast, torch.device(device))  # before any data or model is loaded; fp16 needs CUDA
    if method == "fade" and not prompts and not winclip_in_segmentation:
        raise ValueError("the segmentation ensemble is empty: give prompt files or keep the WinCLIP prompts")
    kind, data_root = config.resolve_dataset(dataset, root)
    records = load_dataset(kind, data_root, classes=_names(classes) if isinstance(classes, str) else classes)
    by_class: dict[str, dict] = {}
    for r in records:
        by_class.setdefault(r.cls, {"train": [], "test": []})[r.split].append(r)
    references = {}
    for cls, parts in by_class.items():
        if not parts["test"]:
            raise ValueError(f"class {cls!r} of {data_root} has no test images")
        references[cls] = sample_references(parts["train"], shots, seed) if shots else []
    params = {"method": method, "dataset": dataset, "root": config.display_path(data_root),
              "classes": sorted(by_class), "model": model, "shots": shots, "seed": seed, "mode": mode,
              "sizes": list(sizes), "prompts": [config.display_path(p) for p in prompts],
              "max_images": max_images, "eval_size": eval_size,
              "class_prompts": config.display_path(class_prompts) if class_prompts else None,
              "detector": config.display_path(detector) if detector else None, "n_boot": n_boot,
              "setting": _setting(shots) + (f" {variant}" if variant else ""), "options": dict(options or {}),
              "winclip_in_segmentation": winclip_in_segmentation, "autocast": autocast,
              "device": device}
    if method == "fade":
        try:
            _fade_config(params).resolved()
        except TypeError as exc:
            raise ValueError(f"bad FADE option: {exc}") from None

    weights = (cnn_checkpoint or default_cnn_checkpoint()) if family == "cnn" else (checkpoint or default_checkpoint())
    loaded = _load_weights(family, model, weights, params["device"])
    if family == "cnn":
        params["model"] = loaded.name
    feature_cache = FeatureCache() if cache is True else (cache or None)
    parts = []
    for cls in sorted(by_class):
        test = subset_evenly(by_class[cls]["test"], max_images)
        run_params = {**params, "prompts": prompts, "class_prompts": class_prompts, "detector": detector,
                      "cache": feature_cache}
        out_cls = run_class(loaded, cls, test, references[cls], run_params, progress)
        if out_cls.info.get("image_only"):  # image-level method: no maps, so no pixel metrics
            maps = out_cls.maps.reshape(len(test), 1, 1).astype(np.float32)
            masks = np.zeros_like(maps, dtype=bool)
        else:
            maps = out_cls.maps
            if maps.shape[-1] != eval_size:
                maps = resize_maps(torch.from_numpy(maps.astype(np.float32)), eval_size).numpy()
            masks = _ground_truth(test, eval_size)
        pred = {"paths": [r.relpath for r in test], "classes": [cls] * len(test),
                "labels": [r.label for r in test], "scores": out_cls.scores, "masks": masks, "maps": maps}
        parts.append(pred)
    predictions = {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}
    table = metrics_table(predictions, dataset=dataset, method=method, setting=params["setting"], shots=shots,
                          seed=seed, n_boot=n_boot)
    prov = provenance(params, model=loaded, seed=seed,
                      references={c: [r.relpath for r in refs] for c, refs in references.items() if refs})
    path = write_run(out, table, predictions, prov, overwrite=overwrite) if out else None
    return {"metrics": table, "predictions": predictions, "provenance": prov, "path": path}
