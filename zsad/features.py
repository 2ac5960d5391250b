"""The one place that runs the CLIP image encoder over a dataset: tokens per (image, size), both streams.

Every method reads its image features from here. Tokens are L2-normalised (FADE normalises every token of both
streams before use; cosine similarities are then plain dot products). With a :class:`zsad.cache.FeatureCache` the
tokens of an (image, size) are computed once per model and read back from disk afterwards.

``autocast="bf16"`` (CPU or CUDA) or ``"fp16"`` (CUDA only) runs the image tower under ``torch.autocast`` (matmuls,
convolution and attention in that dtype); the tokens are returned as float32 either way, and the setting is part of
the cache key (:func:`token_params`), so autocast tokens never mix with float32 ones.

:func:`extract_layers` also returns the residual stream after chosen blocks (MuSc's intermediate-layer tokens,
:func:`zsad.gem.encode_tokens_and_layers`) from the same pass that gives both streams: one run of the tower per
(image, size) fills the ``tokens`` entry *and* a separate entry of the layers (kind ``tokens`` too, its own
parameters :func:`layer_params`, so the ordinary entries and their keys are untouched).
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm  # not tqdm.auto: it warns on stderr in kernels without ipywidgets

from zsad.cache import FeatureCache, model_identity, unwrap_model
from zsad.data import CLIP_MEAN, CLIP_STD, ImageRecord, load_image, preprocess
from zsad.gem import DEFAULT_GEM_DEPTH, DEFAULT_SS_ATTN_ITER, encode_tokens, encode_tokens_and_layers
from zsad.methods.tokens import TokenSet

#: How dataset images become pixels for the CLIP tower (part of every cache key of its outputs).
CLIP_PREPROCESS = "clip_transform: square bicubic resize, ToTensor, Normalize"
#: ``autocast`` values of :func:`extract_tokens` and the dtype each runs the tower in (None: float32, no autocast).
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def token_params(size: int, autocast: str | None = None) -> dict:
    """The cache key parameters of one ``tokens`` entry (everything besides model and image that shapes it).

    Parameters
    ----------
    size : the square input size in px.
    autocast : the compute dtype of the tower (None: float32, ``"bf16"``, ``"fp16"``).

    Returns
    -------
    dict
        JSON-serialisable parameters of :meth:`zsad.cache.FeatureCache.key_document`.
    """
    return {"size": int(size), "preprocess": CLIP_PREPROCESS,
            "mean": list(CLIP_MEAN), "std": list(CLIP_STD), "streams": ["clip", "gem"], "normalise": "l2",
            "gem_depth": DEFAULT_GEM_DEPTH, "ss_attn_iter": DEFAULT_SS_ATTN_ITER, "ss_attn_temp": None,
            "autocast": autocast}


def layer_params(size: int, layers: Sequence[int], autocast: str | None = None) -> dict:
    """The cache key parameters of one entry of intermediate-layer tokens (:func:`extract_layers`).

    They extend :func:`token_params` (same preprocessing and compute dtype) with the layer list and say what is
    stored: the raw residual stream after each block, CLS first, not normalised. ``streams`` differs from the
    ordinary entry's, so the two never share a key.

    Parameters
    ----------
    size : the square input size in px.
    layers : 0-based block indices, in the order they are stored.
    autocast : the compute dtype of the tower (None: float32, ``"bf16"``, ``"fp16"``).

    Returns
    -------
    dict
        JSON-serialisable parameters of :meth:`zsad.cache.FeatureCache.key_document`.
    """
    return {**token_params(size, autocast), "streams": [f"layer{int(layer)}" for layer in layers],
            "layers": [int(layer) for layer in layers], "normalise": None,
            "output": "residual stream after the block, before ln_post"}


def check_autocast(autocast: str | None, device: torch.device) -> None:
    """Refuse an unknown autocast setting, and fp16 off CUDA (CPU fp16 kernels are slow or missing).

    Parameters
    ----------
    autocast : None, ``"bf16"`` or ``"fp16"``.
    device : where the model runs.

    Raises
    ------
    ValueError
        Naming the bad value.
    """
    if autocast is None:
        return
    if autocast not in AUTOCAST_DTYPES:
        raise ValueError(f"autocast must be None, 'bf16' or 'fp16', got {autocast!r}")
    if autocast == "fp16" and device.type != "cuda":
        raise ValueError(f"autocast='fp16' needs a CUDA model (this one is on {device.type}); use 'bf16' on CPU")


def autocast_context(device: torch.device, autocast: str | None):
    """``torch.autocast`` in the dtype of ``autocast`` (see :data:`AUTOCAST_DTYPES`), or no context for None.

    Every image tower of the study (CLIP tokens, WinCLIP windows, Cheung's crops, PatchCore's CNN) runs under it.

    Parameters
    ----------
    device : where the model runs (its type picks the autocast backend).
    autocast : None, ``"bf16"`` or ``"fp16"`` (checked by :func:`check_autocast`).

    Returns
    -------
    contextlib.AbstractContextManager
    """
    check_autocast(autocast, device)
    if autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[autocast])


@torch.inference_mode()
def extract_tokens(model, records: Sequence[ImageRecord], sizes: Sequence[int], *, batch_size: int = 8,
                   progress: bool = True, desc: str = "features", cache: FeatureCache | None = None,
                   autocast: str | None = None) -> TokenSet:
    """Run the image tower once per (image, size); both token streams come from the same pass.

    ``model`` is a :class:`zsad.backbone.LoadedModel` (or its ``.model``). With a :class:`zsad.cache.FeatureCache`
    every (image, size) is looked up first (kind ``tokens``, one entry per image and size holding both streams);
    the model runs only on the misses, batched as without a cache, and the result is the same TokenSet (bit-identical
    with float32 storage). A bare module as ``model`` works with a cache too, but is identified by hashing all its
    weights on every call.

    Parameters
    ----------
    model : a :class:`zsad.backbone.LoadedModel` (or its ``.model``).
    records : the images.
    sizes : square input sizes in px (multiples of the patch size); each image is encoded once per size.
    batch_size : images per forward pass.
    progress : a tqdm bar over the batches.
    desc : the bar's label.
    cache : a :class:`zsad.cache.FeatureCache`, or None for none.
    autocast : None (default, float32), ``"bf16"`` or ``"fp16"`` (CUDA only): the tower runs under
        ``torch.autocast`` in that dtype; tokens come back as float32 (normalised after the cast) and are cached
        under their own key.

    Returns
    -------
    TokenSet
        ``clip[size]`` and ``gem[size]``: (N, 1 + g*g, D) L2-normalised tokens, CLS first.
    """
    module = unwrap_model(model)
    check_autocast(autocast, next(module.parameters()).device)
    if cache is None or not records:
        return _extract(module, records, sizes, batch_size, progress, desc, autocast)
    unique = sorted(set(int(s) for s in sizes))
    ident = model_identity(model)
    digests = [cache.digest(r) for r in records]
    lookups = {s: cache.lookup("tokens", ident, token_params(s, autocast), records, expect=("clip", "gem"),
                               digests=digests)
               for s in unique}
    # sizes that miss the same images are computed in one call (each image is read once for all of them)
    groups: dict[tuple[int, ...], list[int]] = {}
    for s in unique:
        if lookups[s].missing:
            groups.setdefault(tuple(lookups[s].missing), []).append(s)
    for missing, group in groups.items():
        fresh = _extract(module, [records[i] for i in missing], group, batch_size, progress, desc, autocast)
        for s in group:
            for j, i in enumerate(missing):
                lookups[s].store(i, {"clip": fresh.clip[s][j], "gem": fresh.gem[s][j]})
    out = TokenSet([r.relpath for r in records])
    for s in unique:
        out.clip[s] = lookups[s].stack("clip")
        out.gem[s] = lookups[s].stack("gem")
    return out


def _extract(model, records: Sequence[ImageRecord], sizes: Sequence[int], batch_size: int, progress: bool,
             desc: str, autocast: str | None = None) -> TokenSet:
    """The uncached pass: all images of ``records`` at every size."""
    device = next(model.parameters()).device
    out = TokenSet([r.relpath for r in records])
    images = [load_image(r.path) for r in records]
    steps = [(s, i) for s in sorted(set(sizes)) for i in range(0, len(images), batch_size)]
    clip_parts: dict[int, list] = {s: [] for s in sizes}
    gem_parts: dict[int, list] = {s: [] for s in sizes}
    for size, start in tqdm(steps, desc=desc, disable=not progress, leave=False):
        pixels = torch.stack([preprocess(im, size) for im in images[start:start + batch_size]]).to(device)
        with autocast_context(device, autocast):
            clip, gem = encode_tokens(model, pixels)
        clip_parts[size].append(F.normalize(clip.float(), dim=-1).cpu())
        gem_parts[size].append(F.normalize(gem.float(), dim=-1).cpu())
    for size in sorted(set(sizes)):
        out.clip[size] = torch.cat(clip_parts[size])
        out.gem[size] = torch.cat(gem_parts[size])
    return out


@torch.inference_mode()
def extract_layers(model, records: Sequence[ImageRecord], size: int, layers: Sequence[int], *, batch_size: int = 8,
                   progress: bool = True, desc: str = "features", cache: FeatureCache | None = None,
                   autocast: str | None = None) -> tuple[TokenSet, dict[int, torch.Tensor]]:
    """Both token streams at one size and the residual stream after the blocks ``layers``, from one pass.

    Parameters
    ----------
    model : a :class:`zsad.backbone.LoadedModel` (or its ``.model``).
    records : the images.
    size : the square input size in px (a multiple of the patch size).
    layers : 0-based block indices (:func:`zsad.gem.encode_tokens_and_layers`).
    batch_size, progress, desc, autocast : as :func:`extract_tokens`.
    cache : a :class:`zsad.cache.FeatureCache`, or None. With a cache each image is looked up twice, in the
        ordinary ``tokens`` entry (:func:`token_params`) and in its layers entry (:func:`layer_params`); the tower
        runs once on the images that miss either, and that pass fills both entries (the ordinary one only where it
        was missing, so tokens another run stored are never replaced).

    Returns
    -------
    tuple
        ``(TokenSet, {layer: (N, 1 + h*w, width) float32})``: the TokenSet equals :func:`extract_tokens`' at
        ``size`` (L2-normalised clip and gem streams); the layers are not normalised (MuSc normalises after its
        aggregation).
    """
    module = unwrap_model(model)
    check_autocast(autocast, next(module.parameters()).device)
    layers = [int(layer) for layer in layers]
    names = [f"layer{layer}" for layer in layers]
    size = int(size)
    if not records:
        raise ValueError("extract_layers: no images given")
    if cache is None:
        return _extract_layers(module, records, size, layers, batch_size, progress, desc, autocast)
    ident = model_identity(model)
    digests = [cache.digest(r) for r in records]
    plain = cache.lookup("tokens", ident, token_params(size, autocast), records, expect=("clip", "gem"),
                         digests=digests)
    deep = cache.lookup("tokens", ident, layer_params(size, layers, autocast), records, expect=names,
                        digests=digests)
    # one pass for every image missing either entry (positions of their first occurrence, no duplicates)
    missing = sorted(set(plain.missing) | set(deep.missing))
    if missing:
        fresh, taps = _extract_layers(module, [records[i] for i in missing], size, layers, batch_size, progress,
                                      desc, autocast)
        need_plain, need_deep = set(plain.missing), set(deep.missing)
        for j, i in enumerate(missing):
            if i in need_plain:
                plain.store(i, {"clip": fresh.clip[size][j], "gem": fresh.gem[size][j]})
            if i in need_deep:
                deep.store(i, {name: taps[layer][j] for name, layer in zip(names, layers)})
    out = TokenSet([r.relpath for r in records])
    out.clip[size] = plain.stack("clip")
    out.gem[size] = plain.stack("gem")
    return out, {layer: deep.stack(name) for name, layer in zip(names, layers)}


def _extract_layers(model, records: Sequence[ImageRecord], size: int, layers: list[int], batch_size: int,
                    progress: bool, desc: str, autocast: str | None) -> tuple[TokenSet, dict[int, torch.Tensor]]:
    """The uncached pass of :func:`extract_layers`: batched exactly as :func:`_extract` at one size."""
    device = next(model.parameters()).device
    out = TokenSet([r.relpath for r in records])
    images = [load_image(r.path) for r in records]
    clip_parts, gem_parts, tap_parts = [], [], {layer: [] for layer in layers}
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
        pixels = torch.stack([preprocess(im, size) for im in images[start:start + batch_size]]).to(device)
        with autocast_context(device, autocast):
            (clip, gem), taps = encode_tokens_and_layers(model, pixels, layers)
        clip_parts.append(F.normalize(clip.float(), dim=-1).cpu())
        gem_parts.append(F.normalize(gem.float(), dim=-1).cpu())
        for layer in layers:
            tap_parts[layer].append(taps[layer].float().cpu())
    out.clip[size] = torch.cat(clip_parts)
    out.gem[size] = torch.cat(gem_parts)
    return out, {layer: torch.cat(parts) for layer, parts in tap_parts.items()}
