"""The one place that runs the CLIP image encoder over a dataset: tokens per (image, size), both streams.

Every method reads its image features from here. Tokens are L2-normalised (FADE normalises every token of both
streams before use; cosine similarities are then plain dot products). With a :class:`zsad.cache.FeatureCache` the
tokens of an (image, size) are computed once per model and read back from disk afterwards.

``autocast="bf16"`` (CPU or CUDA) or ``"fp16"`` (CUDA only) runs the image tower under ``torch.autocast`` (matmuls,
convolution and attention in that dtype); the tokens are returned as float32 either way, and the setting is part of
the cache key (:func:`token_params`), so autocast tokens never mix with float32 ones.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm  # not tqdm.auto: it warns on stderr in kernels without ipywidgets

from zsad.cache import FeatureCache, model_identity, unwrap_model
from zsad.data import CLIP_MEAN, CLIP_STD, ImageRecord, load_image, preprocess
from zsad.gem import DEFAULT_GEM_DEPTH, DEFAULT_SS_ATTN_ITER, encode_tokens
from zsad.methods.tokens import TokenSet

#: How dataset images become pixels for the CLIP tower (part of every cache key of its outputs).
CLIP_PREPROCESS = "clip_transform: square bicubic resize, ToTensor, Normalize"
#: ``autocast`` values of :func:`extract_tokens` and the dtype each runs the tower in (None: float32, no autocast).
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def token_params(size: int, autocast: str | None = None) -> dict:
    """The cache key parameters of one ``tokens`` entry (everything besides model and image that shapes it)."""
    return {"size": int(size), "preprocess": CLIP_PREPROCESS,
            "mean": list(CLIP_MEAN), "std": list(CLIP_STD), "streams": ["clip", "gem"], "normalise": "l2",
            "gem_depth": DEFAULT_GEM_DEPTH, "ss_attn_iter": DEFAULT_SS_ATTN_ITER, "ss_attn_temp": None,
            "autocast": autocast}


def check_autocast(autocast: str | None, device: torch.device) -> None:
    """Refuse an unknown autocast setting, and fp16 off CUDA (CPU fp16 kernels are slow or missing)."""
    if autocast is None:
        return
    if autocast not in AUTOCAST_DTYPES:
        raise ValueError(f"autocast must be None, 'bf16' or 'fp16', got {autocast!r}")
    if autocast == "fp16" and device.type != "cuda":
        raise ValueError(f"autocast='fp16' needs a CUDA model (this one is on {device.type}); use 'bf16' on CPU")


def autocast_context(device: torch.device, autocast: str | None):
    """``torch.autocast`` in the dtype of ``autocast`` (see :data:`AUTOCAST_DTYPES`), or no context for None.

    Every image tower of the study (CLIP tokens, WinCLIP windows, Cheung's crops, PatchCore's CNN) runs under it.
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

    ``autocast``: None (default, float32), ``"bf16"`` or ``"fp16"`` (CUDA only): the tower runs under
    ``torch.autocast`` in that dtype; tokens come back as float32 (normalised after the cast) and are cached under
    their own key.
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
