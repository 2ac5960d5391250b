"""WinCLIP's image side: window embeddings of an open_clip ViT, batch-first, for open_clip 3.x.

WinCLIP (Jeong et al., CVPR 2023) describes an image by CLIP embeddings at three scales: the whole image (the CLS
embedding), and sliding windows of 2x2 and 3x3 patches (32 and 48 px on the 15x15 grid of ViT-B-16-plus-240 at
240 px), stride one patch: 196 and 169 windows. A window is not a crop that is re-encoded from pixels: its embedding
is computed by *masking the token sequence*, as anomalib (``anomalib.models.image.winclip``, ``torch_model.py``)
and zqhang/Accurate-WinCLIP-pytorch do (the book's Methods chapter, book/methods.md, section "WinCLIP and
WinCLIP+"):

    tokens = patch_embed(image) (+) CLS, + positional embedding    # the output of the embedding step
    keep CLS and the window's patch tokens                          # 1 + s*s tokens, positions kept
    ln_pre -> all transformer blocks -> ln_post -> CLS token -> @ proj

so a window "sees" only its own patches, with their original positional embeddings.

Why this module exists (a silent version trap: the book's chapter book/traps.md, section 2)
-------------------------------------------------------------------------------------------
anomalib's WinCLIP (and zqhang's) permute the masked tokens to (L, N, D) before calling ``visual.transformer``.
That was right for open_clip < 2.26; from 2.26 on the ``Transformer`` is batch-first and the permute makes every
block attend across *windows* instead of across tokens. Nothing raises; the window embeddings are just wrong (cosine
0.47-0.55 to the right ones, measured with anomalib 2.7 on open_clip 3.3.0) while the image embedding stays right.
zsad does not call ``visual.transformer`` at all: it recomputes the tower from its parts with the explicit
batch-first helpers of :mod:`zsad.gem` (``_embed``, ``_qkv``, ``_plain_block``, ``_head``), which are tested against
open_clip's own forward. ``tests/test_winclip.py`` checks :func:`encode_windows` against a slow per-window float64
reference (explicit per-head softmax attention, one window at a time) and checks that the window made of the whole
grid equals ``model.encode_image``.

Because ``ln_pre`` is a per-token LayerNorm, selecting tokens before or after it gives the same result, so the
embedding step (incl. ``ln_pre``) runs once per image and each window is a gather of its rows. All windows of all
images of a batch run as one batch of short sequences (5 tokens at scale 2, 10 at scale 3), in chunks of at most
``max_sequences`` sequences, with no per-window Python loop.

Full-scale patch tokens for WinCLIP+ (few-shot) -- ``patch_stream``
--------------------------------------------------------------------
WinCLIP+ also keeps a memory of the reference images' full-scale patch tokens. Implementations differ:

- ``"ln_post"`` (default; anomalib): final-block tokens after ``ln_post``, **not** projected (896-d for
  ViT-B-16-plus-240). This is what open_clip's ``output_tokens=True`` returns for a CLS-pooled ViT, which anomalib
  uses. Chosen as the default because anomalib is the maintained implementation and the tokens it uses are
  well-defined on open_clip 3.x.
- ``"raw"`` (zqhang/Accurate-WinCLIP-pytorch): final-block tokens before ``ln_post``, not projected (its custom
  open_clip applies ``ln_post`` to the pooled CLS only).
- ``"proj"``: after ``ln_post`` and ``@ proj`` (640-d), i.e. the same space as the CLS and window embeddings (what
  FADE's few-shot memory uses).

Only cosines between tokens of the same stream are ever taken, so the three are alternatives, not mixable.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm  # not tqdm.auto: it warns on stderr in kernels without ipywidgets

from zsad.gem import _check_config, _embed, _head, _plain_block, _qkv, _visual_of
from zsad.methods.tokens import DEFAULT_SCALES, WindowTokens, window_masks

__all__ = ["PATCH_STREAMS", "WindowTokens", "window_masks", "encode_windows", "encode_all",
           "patch_tokens_unprojected", "extract_window_tokens"]

PATCH_STREAMS = ("ln_post", "raw", "proj")
MAX_SEQUENCES = 4096  # sequences per block pass: bounds activation memory (4096 x 10 tokens x 896 x 4 B = 147 MB)


# ----------------------------------------------------------------------------------------------- the forward


def _check_tower(model: nn.Module) -> nn.Module:
    visual = _visual_of(model)
    try:  # same structural requirements as the GEM forward: plain blocks with nn.MultiheadAttention, 'tok' pool
        _check_config(visual, 2, 1, None)
    except ValueError as exc:
        raise ValueError(f"WinCLIP window embeddings: {str(exc).removeprefix('GEM: ')}") from None
    return visual


def _blocks(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """All residual blocks, batch-first: (B, L, C) -> (B, L, C)."""
    for blk in visual.transformer.resblocks:
        u = blk.ln_1(x)
        x = _plain_block(blk, x, u, *_qkv(blk, u))
    return x


def _grid_of_pixels(visual: nn.Module, pixels: torch.Tensor) -> tuple[int, int]:
    ph, pw = visual.conv1.kernel_size
    return pixels.shape[-2] // ph, pixels.shape[-1] // pw


def _window_forward(visual: nn.Module, x: torch.Tensor, mask: torch.Tensor, max_sequences: int) -> torch.Tensor:
    """Window embeddings from embedded tokens ``x`` (B, 1+P, C) (after ln_pre): (B, n_windows, D), not normalised."""
    B, _, C = x.shape
    n_win, k = mask.shape
    idx = torch.cat([torch.zeros(n_win, 1, dtype=torch.long), mask + 1], dim=1).to(x.device)  # CLS + window
    seqs = x[:, idx.reshape(-1)].reshape(B * n_win, k + 1, C)  # (B*n_win, 1+k, C), image-major
    outs = []
    for start in range(0, seqs.shape[0], max_sequences):
        z = _blocks(visual, seqs[start:start + max_sequences])
        outs.append(_head(visual, z[:, :1])[:, 0])  # ln_post on the CLS token, then proj
    return torch.cat(outs).reshape(B, n_win, -1)


def encode_windows(model: nn.Module, pixels: torch.Tensor, scales: Sequence[int] = DEFAULT_SCALES,
                   stride: int = 1, *, max_sequences: int = MAX_SEQUENCES) -> dict[int, torch.Tensor]:
    """Return the window embeddings of a batch of images, after ``proj``, NOT normalised.

    Windows are those of :func:`window_masks` on the image's patch grid. Call under ``torch.inference_mode()`` or
    ``no_grad``.

    Parameters
    ----------
    model : torch.nn.Module
        An open_clip CLIP model (or its visual tower) with plain blocks and a CLS-pooled ViT.
    pixels : torch.Tensor
        (B, 3, H, W) CLIP-normalised floats (H, W multiples of the patch size; another grid than the native one
        resizes the positional embedding as :func:`zsad.gem.encode_tokens` does).
    scales : sequence of int, default ``DEFAULT_SCALES`` = (2, 3)
        Window sides in patches.
    stride : int, default 1
        Step between windows, in patches.
    max_sequences : int, default ``MAX_SEQUENCES`` = 4096
        Window sequences per block pass (bounds activation memory).

    Returns
    -------
    dict of int to torch.Tensor
        ``{scale: (B, n_windows, D)}``.

    Raises
    ------
    ValueError
        When the tower is not supported, or on invalid scales, stride or ``max_sequences``.
    """
    return encode_all(model, pixels, scales, stride, max_sequences=max_sequences)[1]


def patch_tokens_unprojected(model: nn.Module, pixels: torch.Tensor, *, ln_post: bool = True) -> torch.Tensor:
    """Return the full-scale patch tokens of the last block, CLS dropped, NOT normalised, not projected.

    Parameters
    ----------
    model : torch.nn.Module
        An open_clip CLIP model (or its visual tower).
    pixels : torch.Tensor
        (B, 3, H, W) CLIP-normalised floats.
    ln_post : bool, default True
        True (anomalib, the default of :func:`extract_window_tokens`): after ``ln_post``; False (zqhang): the raw
        block output.

    Returns
    -------
    torch.Tensor
        (B, h*w, width).

    Raises
    ------
    ValueError
        When the tower is not supported.
    """
    visual = _check_tower(model)
    z = _blocks(visual, _embed(visual, pixels))[:, 1:]
    return visual.ln_post(z) if ln_post else z


def encode_all(model: nn.Module, pixels: torch.Tensor, scales: Sequence[int] = DEFAULT_SCALES, stride: int = 1,
               *, patch_stream: str = "ln_post", max_sequences: int = MAX_SEQUENCES
               ) -> tuple[torch.Tensor, dict[int, torch.Tensor], torch.Tensor]:
    """Compute everything WinCLIP needs from one embedding pass, none normalised.

    Parameters
    ----------
    model : torch.nn.Module
        An open_clip CLIP model (or its visual tower).
    pixels : torch.Tensor
        (B, 3, H, W) CLIP-normalised floats.
    scales : sequence of int, default ``DEFAULT_SCALES`` = (2, 3)
        Window sides in patches.
    stride : int, default 1
        Step between windows, in patches.
    patch_stream : {"ln_post", "raw", "proj"}, default "ln_post"
        Which full-scale patch tokens to return (module docstring).
    max_sequences : int, default ``MAX_SEQUENCES`` = 4096
        Window sequences per block pass (bounds activation memory).

    Returns
    -------
    cls : torch.Tensor
        (B, D) the image embedding (equals ``model.encode_image``).
    windows : dict of int to torch.Tensor
        ``{scale: (B, n_windows, D)}`` as :func:`encode_windows`.
    patch : torch.Tensor
        (B, h*w, D') full-scale patch tokens of ``patch_stream``.

    Raises
    ------
    ValueError
        When ``patch_stream`` is unknown, ``max_sequences`` is not an int >= 1, the tower is not supported, or on
        invalid scales or stride.
    """
    if patch_stream not in PATCH_STREAMS:
        raise ValueError(f"patch_stream must be one of {PATCH_STREAMS}, got {patch_stream!r}")
    if isinstance(max_sequences, bool) or not isinstance(max_sequences, int) or max_sequences < 1:
        raise ValueError(f"max_sequences must be an int >= 1, got {max_sequences!r}")
    visual = _check_tower(model)
    x = _embed(visual, pixels)  # (B, 1+P, C): CLS + patches + pos-emb, ln_pre
    masks = window_masks(_grid_of_pixels(visual, pixels), scales, stride)
    windows = {s: _window_forward(visual, x, m, max_sequences) for s, m in masks.items()}
    z = _blocks(visual, x)
    # The CLS is projected together with every token: a GEMM of B * (1 + h*w) rows rounds each row the same for any
    # batch and thread count, one of B rows (a small batch) does not (MKL; see zsad.distributed).
    full = visual.ln_post(z)
    proj = getattr(visual, "proj", None)
    projected = full @ proj if proj is not None else full
    cls = projected[:, 0]
    patch = z[:, 1:] if patch_stream == "raw" else projected[:, 1:] if patch_stream == "proj" else full[:, 1:]
    return cls, windows, patch


# ------------------------------------------------------------------------------------------- dataset level


@torch.inference_mode()
def extract_window_tokens(model, records: Sequence, *, size: int = 240, scales: Sequence[int] = DEFAULT_SCALES,
                          stride: int = 1, batch_size: int = 8, progress: bool = True,
                          patch_stream: str = "ln_post", desc: str = "windows", cache=None,
                          autocast: str | None = None) -> WindowTokens:
    """Run the image tower once per image and return its normalised WinCLIP features (:class:`WindowTokens`).

    ``records`` are :class:`zsad.data.ImageRecord` (or anything with ``.path`` and ``.relpath``); images are read
    and preprocessed with :func:`zsad.data.preprocess` (FADE's transform: bicubic square resize, CLIP mean/std)
    one batch at a time. This does not reuse :func:`zsad.features.extract_tokens`: that pass also runs the GEM
    stream (not needed here) and returns projected tokens only, while WinCLIP+ needs the unprojected ones and the
    window forwards need the embedding step, so one pass here yields the CLS, window and patch features together.

    ``model`` is a :class:`zsad.backbone.LoadedModel` (or its ``.model``). With a :class:`zsad.cache.FeatureCache`
    as ``cache``, each image is looked up first (kind ``windows``, keyed by model, image bytes, size, scales, stride
    and patch stream); the tower runs only on the misses and the result is the same (bit-identical with float32
    storage). ``autocast`` (None, ``"bf16"``, ``"fp16"``) as in :func:`zsad.features.extract_tokens`; part of the
    cache key.

    Parameters
    ----------
    model : zsad.backbone.LoadedModel or torch.nn.Module
        The CLIP model.
    records : sequence of zsad.data.ImageRecord
        The images (anything with ``.path`` and ``.relpath``); must not be empty.
    size : int, default 240
        Input size in px.
    scales : sequence of int, default ``DEFAULT_SCALES`` = (2, 3)
        Window sides in patches.
    stride : int, default 1
        Step between windows, in patches.
    batch_size : int, default 8
        Images per forward pass.
    progress : bool, default True
        Show a tqdm progress bar.
    patch_stream : {"ln_post", "raw", "proj"}, default "ln_post"
        Which full-scale patch tokens to keep (module docstring).
    desc : str, default "windows"
        Label of the progress bar.
    cache : zsad.cache.FeatureCache, optional
        Feature cache to look images up in and store the misses to.
    autocast : {None, "bf16", "fp16"}, optional
        Autocast dtype of the tower.

    Returns
    -------
    WindowTokens
        L2-normalised float32 CPU features, rows in the order of ``records``.

    Raises
    ------
    ValueError
        When ``batch_size`` is not an int >= 1, ``records`` is empty, or on invalid scales, stride, patch stream,
        autocast or tower.
    """
    from zsad.data import load_image, preprocess
    from zsad.features import autocast_context

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not records:
        raise ValueError("no images to encode")
    if cache is not None:
        return _cached_window_tokens(model, records, cache, size=size, scales=scales, stride=stride,
                                     batch_size=batch_size, progress=progress, patch_stream=patch_stream, desc=desc,
                                     autocast=autocast)
    from zsad.cache import unwrap_model

    model = unwrap_model(model)
    device = next(model.parameters()).device
    parts_cls, parts_patch = [], []
    parts_win: dict[int, list] = {}
    starts = range(0, len(records), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
        batch = records[start:start + batch_size]
        pixels = torch.stack([preprocess(load_image(r.path), size) for r in batch]).to(device)
        with autocast_context(device, autocast):
            cls, windows, patch = encode_all(model, pixels, scales, stride, patch_stream=patch_stream)
        parts_cls.append(F.normalize(cls.float(), dim=-1).cpu())
        parts_patch.append(F.normalize(patch.float(), dim=-1).cpu())
        for s, w in windows.items():
            parts_win.setdefault(s, []).append(F.normalize(w.float(), dim=-1).cpu())
    visual = _visual_of(model)
    ph, pw = visual.conv1.kernel_size
    return WindowTokens(
        relpaths=[r.relpath for r in records],
        cls=torch.cat(parts_cls),
        windows={s: torch.cat(p) for s, p in parts_win.items()},
        patch=torch.cat(parts_patch),
        grid=(size // ph, size // pw),
        stride=stride,
        size=size,
        patch_stream=patch_stream,
    )


def _cached_window_tokens(model, records: Sequence, cache, *, size: int, scales: Sequence[int], stride: int,
                          batch_size: int, progress: bool, patch_stream: str, desc: str,
                          autocast: str | None) -> WindowTokens:
    """:func:`extract_window_tokens` through the feature cache: look up, compute the misses uncached, store."""
    from zsad.cache import unwrap_model
    from zsad.data import CLIP_MEAN, CLIP_STD
    from zsad.features import CLIP_PREPROCESS

    if patch_stream not in PATCH_STREAMS:
        raise ValueError(f"patch_stream must be one of {PATCH_STREAMS}, got {patch_stream!r}")
    module = unwrap_model(model)
    ph, pw = _check_tower(module).conv1.kernel_size
    grid = (size // ph, size // pw)
    order = list(window_masks(grid, scales, stride))  # validates scales/stride; the order of the windows dict
    params = {"size": int(size), "preprocess": CLIP_PREPROCESS,
              "mean": list(CLIP_MEAN), "std": list(CLIP_STD), "scales": order, "stride": int(stride),
              "patch_stream": patch_stream, "normalise": "l2", "autocast": autocast}
    names = ("cls", "patch", *(f"windows.{s}" for s in order))

    def compute(missing):
        fresh = extract_window_tokens(module, [records[i] for i in missing], size=size, scales=scales,
                                      stride=stride, batch_size=batch_size, progress=progress,
                                      patch_stream=patch_stream, desc=desc, autocast=autocast)
        return {"cls": fresh.cls, "patch": fresh.patch, **{f"windows.{s}": w for s, w in fresh.windows.items()}}

    lk = cache.compute_missing("windows", model, params, records, compute, names=names)
    return WindowTokens(
        relpaths=[r.relpath for r in records],
        cls=lk.stack("cls"),
        windows={s: lk.stack(f"windows.{s}") for s in order},
        patch=lk.stack("patch"),
        grid=grid,
        stride=stride,
        size=size,
        patch_stream=patch_stream,
    )
