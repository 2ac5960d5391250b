"""WinCLIP and WinCLIP+ (Jeong et al., "WinCLIP: Zero-/Few-Shot Anomaly Classification and Segmentation",
CVPR 2023, arXiv:2303.14814), as the re-implementations that reproduce the paper best realise it (the book's
Methods chapter, book/methods.md, section "WinCLIP and WinCLIP+").

There is no official code; the formulas follow anomalib (``models/image/winclip``) with zqhang's
Accurate-WinCLIP-pytorch as the second reading. Features come from :mod:`zsad.windows` (image embedding ``e_0``,
window embeddings ``e_w`` at scales 2x2 and 3x3 patches, full-scale patch tokens ``f_p``, all L2-normalised);
text prototypes ``t_n``, ``t_a`` from :mod:`zsad.text`. ``<a, b>`` is the cosine.

Zero-shot WinCLIP (language only)
---------------------------------
- window score ``a(w) = softmax([<e_w, t_n>, <e_w, t_a>] / tau)[1]``; image score ``s_0 = a(image)`` (CLS);
- per scale s, harmonic aggregation onto each patch p over the windows ``W_p`` of that scale containing it:
  ``M_s(p) = |W_p| / sum_{w in W_p} 1 / a(w)``;
- map ``M_0(p) = (1 + S) / (1/s_0 + sum_s 1/M_s(p))`` (harmonic mean of the image score broadcast and the S
  scale maps; with scales (2, 3): ``3 / (1/s_0 + 1/M_2 + 1/M_3)``); image score ``s_0``.

WinCLIP+ (k normal reference images)
------------------------------------
- memories: all reference window embeddings of each scale and all reference full-scale patch tokens (every
  position of every reference image pooled, no coreset);
- per query window / patch ``d(f) = min_{r in R} (1 - <f, r>) / 2``; window distances harmonic-aggregated onto
  patches as above, patch distances used as they are;
- ``M_W`` = arithmetic mean of the full-scale, 2x2 and 3x3 maps;
- ``fusion="mean"`` (default, anomalib): map ``(M_0 + M_W) / 2``; ``fusion="sum"`` (zqhang): ``M_0 + M_W``. A
  positive factor of 2, so every ranking metric (AUROC, AUPR, F1-max, PRO) is identical; only absolute values
  (e.g. a fixed threshold) differ. Image score in both: ``(s_0 + max_p M_W(p)) / 2``.

The other zqhang difference is feature-side: its patch memory uses the block output before ``ln_post``
(``patch_stream="raw"`` in :func:`zsad.windows.extract_window_tokens`); anomalib's (the default) uses the
``ln_post`` tokens, unprojected (896-d for ViT-B-16-plus-240).

Decisions
---------
- **temperature tau = 0.07** (default). anomalib and zqhang (whose zero-shot MVTec reproduction, 90.4 / 82.3, is
  the closest to the paper's 91.8 / 85.1) both use 0.07, CLIP's initial temperature; caoyunkang and FADE's own
  scoring use CLIP's learned logit scale 100 (tau = 0.01). The zero-shot image score is a monotone function of
  ``<e, t_a> - <e, t_n>`` and so ranks the same for any tau, but the harmonic aggregations are dominated by their
  smallest terms, and at tau = 0.01 the window probabilities saturate towards 0/1, so one confident-normal
  window pulls its patches towards 0; the maps and the few-shot image score therefore depend on tau. 0.01 is an option.
- scores are computed in float64; in the harmonic means a zero term (a query window identical to a reference,
  or a softmax underflow) makes the result exactly 0, as anomalib's ``nan_to_num(posinf=0)`` does, never NaN.
- the text prototypes are L2-normalised here (cosine), so mean-of-normalised (zsad.text) and mean-of-raw
  (anomalib) prototypes differ only through their direction. Prompt ensemble (22 vs anomalib's 21 templates) and
  the "a photo of a {}." wrapper are the caller's choice (:func:`zsad.prompts.winclip_prompts`; anomalib encodes
  prompts without any wrapper).
- maps: the 15x15 grid bilinearly upsampled (half-pixel centres) to ``map_size`` (240, the input size, as in
  anomalib and zqhang); no smoothing.

Pure: no file I/O, no dataset knowledge.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from zsad.methods.base import MethodOutput, resize_maps
from zsad.methods.tokens import WindowTokens, window_masks

__all__ = ["WinClipConfig", "winclip", "harmonic_aggregate", "harmonic_mean", "text_scores", "memory_distance",
           "FUSIONS"]

FUSIONS = ("mean", "sum")
_TINY = torch.finfo(torch.float64).tiny


@dataclass(frozen=True)
class WinClipConfig:
    """Options of a WinCLIP / WinCLIP+ run (decisions and their sources in the module docstring).

    Attributes
    ----------
    shots : int, default 0
        0: zero-shot WinCLIP; k >= 1: WinCLIP+ with the first k images of ``ref_windows``.
    temperature : float, default 0.07
        Softmax temperature tau (anomalib / zqhang); 0.01 = CLIP's logit scale 100 (caoyunkang, FADE).
    scales : tuple of int, default (2, 3)
        Window sizes in patches.
    fusion : {"mean", "sum"}, default "mean"
        Few-shot map: ``(M_0 + M_W) / 2`` (anomalib) or ``M_0 + M_W`` (zqhang).
    map_size : int, default 240
        Side of the returned maps in px.
    chunk : int, default 16
        Query images per distance computation (memory bound).
    """

    shots: int = 0  # 0: zero-shot WinCLIP; k >= 1: WinCLIP+ with the first k images of ref_windows
    temperature: float = 0.07  # anomalib / zqhang; 0.01 = CLIP's logit scale 100 (caoyunkang, FADE)
    scales: tuple[int, ...] = (2, 3)  # window sizes in patches
    fusion: str = "mean"  # few-shot map: "mean" (M_0 + M_W)/2 (anomalib) | "sum" M_0 + M_W (zqhang)
    map_size: int = 240  # side of the returned maps
    chunk: int = 16  # query images per distance computation (memory bound)

    def validated(self) -> "WinClipConfig":
        """Check the options and return the config itself.

        Returns
        -------
        WinClipConfig
            ``self``, unchanged.

        Raises
        ------
        ValueError
            When ``shots`` is not an int >= 0, ``temperature`` is not a positive finite number, ``scales`` are not
            distinct ints >= 1, ``fusion`` is not one of ``FUSIONS``, or ``map_size`` or ``chunk`` is < 1.
        """
        if isinstance(self.shots, bool) or not isinstance(self.shots, int) or self.shots < 0:
            raise ValueError(f"shots must be an int >= 0, got {self.shots!r}")
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0 and np.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a positive number, got {self.temperature!r}")
        if len(set(self.scales)) != len(self.scales) or any(int(s) < 1 for s in self.scales):
            raise ValueError(f"scales must be distinct ints >= 1, got {self.scales!r}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.map_size < 1 or self.chunk < 1:
            raise ValueError(f"map_size and chunk must be >= 1, got {self.map_size}, {self.chunk}")
        return self


# -------------------------------------------------------------------------------------------- building blocks


def text_scores(emb: torch.Tensor, text_prototypes: torch.Tensor, temperature: float) -> torch.Tensor:
    """Return the language-guided anomaly probability ``softmax([<e, t_n>, <e, t_a>] / tau)[1]``.

    Both embeddings and prototypes are L2-normalised here and the computation is in float64.

    Parameters
    ----------
    emb : torch.Tensor
        (..., D) embeddings.
    text_prototypes : torch.Tensor
        (2, D) prototypes ``[normal, abnormal]``.
    temperature : float
        The temperature tau.

    Returns
    -------
    torch.Tensor
        (...) float64 probability of the abnormal prototype.

    Raises
    ------
    ValueError
        When the prototypes are not (2, D) or their dimension differs from the embeddings'.
    """
    if text_prototypes.ndim != 2 or text_prototypes.shape[0] != 2:
        raise ValueError(f"text prototypes must be (2, D) [normal, abnormal], got {tuple(text_prototypes.shape)}")
    if text_prototypes.shape[1] != emb.shape[-1]:
        raise ValueError(f"text prototypes have dimension {text_prototypes.shape[1]}, embeddings {emb.shape[-1]}")
    e = F.normalize(emb.double(), dim=-1)
    t = F.normalize(text_prototypes.double().to(e.device), dim=-1)
    return torch.softmax(e @ t.T / temperature, dim=-1)[..., 1]


def _incidence(masks: torch.Tensor, n_patches: int) -> torch.Tensor:
    """(n_windows, n_patches) 0/1 float64 matrix: window w covers patch p."""
    inc = torch.zeros(masks.shape[0], n_patches, dtype=torch.float64)
    inc.scatter_(1, masks.long(), 1.0)
    return inc


def harmonic_aggregate(window_scores: torch.Tensor, masks: torch.Tensor, grid) -> torch.Tensor:
    """Return, per patch, the harmonic mean of the scores of the windows covering it.

    ``M(p) = |W_p| / sum_{w in W_p} 1 / score(w)``. A zero (or negative) window score makes its patches 0 (no NaN);
    a patch covered by no window is an error.

    Parameters
    ----------
    window_scores : torch.Tensor
        (N, n_windows) scores of each image's windows.
    masks : torch.Tensor
        (n_windows, k) each window's patch indices (:func:`zsad.windows.window_masks`).
    grid : int or tuple of (int, int)
        The patch grid: a side or ``(h, w)``.

    Returns
    -------
    torch.Tensor
        (N, h, w) float64 map.

    Raises
    ------
    ValueError
        When ``window_scores`` is not 2-D or does not have one column per window, or some patch is covered by no
        window.
    """
    h, w = (grid, grid) if isinstance(grid, int) else (int(grid[0]), int(grid[1]))
    if window_scores.ndim != 2 or window_scores.shape[1] != masks.shape[0]:
        raise ValueError(f"window scores {tuple(window_scores.shape)} do not fit {masks.shape[0]} windows")
    inc = _incidence(masks.cpu(), h * w).to(window_scores.device)
    count = inc.sum(0)
    if bool((count == 0).any()):
        raise ValueError("some patches are covered by no window")
    scores = window_scores.double()
    out = count / ((1.0 / scores.clamp_min(_TINY)) @ inc)  # finite terms (<= 1/tiny); an overflow gives 0
    has_zero = ((scores <= 0).double() @ inc) > 0
    return out.masked_fill(has_zero, 0.0).reshape(-1, h, w)


def harmonic_mean(maps: list[torch.Tensor]) -> torch.Tensor:
    """Return the element-wise harmonic mean of equally shaped tensors.

    Parameters
    ----------
    maps : list of torch.Tensor
        Tensors of one shape.

    Returns
    -------
    torch.Tensor
        float64 tensor of that shape; 0 wherever any input is zero (or negative).
    """
    stack = torch.stack([m.double() for m in maps])
    out = len(maps) / (1.0 / stack.clamp_min(_TINY)).sum(0)
    return out.masked_fill((stack <= 0).any(0), 0.0)


def memory_distance(query: torch.Tensor, memory: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """Return the nearest-neighbour distance ``min_r (1 - <f, r>) / 2`` of each query feature over a memory.

    Both sides are L2-normalised here; cosines are computed in float32 on the memory's device. Clamped at 0 (float
    round-off can give a cosine a hair above 1).

    Parameters
    ----------
    query : torch.Tensor
        (N, L, D) query features (L per image).
    memory : torch.Tensor
        (M, D) reference features.
    chunk : int, default 16
        Query images per similarity computation (memory bound).

    Returns
    -------
    torch.Tensor
        (N, L) float64 distances.

    Raises
    ------
    ValueError
        When ``memory`` is not 2-D or its dimension differs from the queries'.
    """
    if memory.ndim != 2 or query.shape[-1] != memory.shape[-1]:
        raise ValueError(f"memory {tuple(memory.shape)} does not fit query features {tuple(query.shape)}")
    mem = F.normalize(memory.float(), dim=-1)
    out = []
    for start in range(0, query.shape[0], chunk):
        q = F.normalize(query[start:start + chunk].float().to(mem.device), dim=-1)
        best = (q @ mem.T).amax(dim=-1)  # (n, L) highest cosine = nearest reference
        out.append(((1.0 - best.double()) / 2).clamp_min(0.0))
    return torch.cat(out)


# -------------------------------------------------------------------------------------------------- entry point


def _check_tokens(t: WindowTokens, scales, what: str) -> None:
    missing = [s for s in scales if s not in t.windows]
    if missing:
        raise ValueError(f"{what} windows lack scales {missing} (have {sorted(t.windows)})")
    n = len(t.cls)
    if t.patch.shape[0] != n or any(t.windows[s].shape[0] != n for s in scales):
        raise ValueError(f"{what} features have inconsistent image counts")
    if t.patch.shape[1] != t.grid[0] * t.grid[1]:
        raise ValueError(f"{what}: {t.patch.shape[1]} patch tokens do not fit the grid {t.grid}")


def winclip(test_windows: WindowTokens, text_prototypes: torch.Tensor, cfg: WinClipConfig = WinClipConfig(),
            ref_windows: WindowTokens | None = None) -> MethodOutput:
    """Score test images with WinCLIP (``cfg.shots == 0``) or WinCLIP+ (``cfg.shots = k``).

    Parameters
    ----------
    test_windows : WindowTokens
        Features of the test images (:func:`zsad.windows.extract_window_tokens`).
    text_prototypes : torch.Tensor
        (2, D) ``[normal, abnormal]`` prompt-ensemble prototypes (normalised here).
    cfg : WinClipConfig, default WinClipConfig()
        The options (validated here).
    ref_windows : WindowTokens, optional
        Features of normal reference images, extracted with the same grid, stride and patch stream; WinCLIP+ uses
        its first ``cfg.shots`` images. Must be None for zero-shot.

    Returns
    -------
    MethodOutput
        Scores (N,) float64 and maps (N, map_size, map_size) float32; ``info`` records the settings and, for
        WinCLIP+, the reference relpaths.

    Raises
    ------
    ValueError
        When the config is invalid, the features lack a scale or do not fit their grid and stride, ``ref_windows``
        is given for zero-shot or missing / too small for WinCLIP+, or the references differ from the test
        features in grid, stride or patch stream.
    """
    cfg = cfg.validated()
    scales = tuple(int(s) for s in cfg.scales)
    _check_tokens(test_windows, scales, "test")
    grid = tuple(test_windows.grid)
    masks = window_masks(grid, scales, test_windows.stride)
    for s in scales:
        if test_windows.windows[s].shape[1] != masks[s].shape[0]:
            raise ValueError(f"test windows at scale {s}: {test_windows.windows[s].shape[1]} windows, the grid "
                             f"{grid} with stride {test_windows.stride} has {masks[s].shape[0]}")
    n = len(test_windows.cls)
    h, w = grid

    # zero-shot: language-guided, harmonic aggregation over windows then over scales
    s0 = text_scores(test_windows.cls, text_prototypes, cfg.temperature)  # (N,)
    layers = [s0.view(n, 1, 1).expand(n, h, w)]
    for s in scales:
        a = text_scores(test_windows.windows[s], text_prototypes, cfg.temperature)  # (N, n_windows)
        layers.append(harmonic_aggregate(a, masks[s], grid))
    m0 = harmonic_mean(layers)
    scores, grid_maps = s0, m0
    info = {"method": "winclip", **asdict(cfg), "scales": list(scales), "grid": list(grid),
            "stride": test_windows.stride, "patch_stream": test_windows.patch_stream}

    if cfg.shots == 0:
        if ref_windows is not None:
            raise ValueError("ref_windows given for a zero-shot run (cfg.shots == 0)")
    else:
        if ref_windows is None:
            raise ValueError(f"WinCLIP+ with {cfg.shots} shots needs ref_windows")
        if len(ref_windows) < cfg.shots:
            raise ValueError(f"{cfg.shots} shots requested, ref_windows holds {len(ref_windows)} images")
        if tuple(ref_windows.grid) != grid or ref_windows.stride != test_windows.stride:
            raise ValueError("reference and test features differ in grid or window stride")
        if ref_windows.patch_stream != test_windows.patch_stream:
            raise ValueError(f"reference patch stream {ref_windows.patch_stream!r} != test "
                             f"{test_windows.patch_stream!r}")
        refs = ref_windows.subset(range(cfg.shots))
        _check_tokens(refs, scales, "reference")
        vis = [memory_distance(test_windows.patch, refs.patch.reshape(-1, refs.patch.shape[-1]),
                               cfg.chunk).reshape(n, h, w)]
        for s in scales:
            mem = refs.windows[s].reshape(-1, refs.windows[s].shape[-1])
            d = memory_distance(test_windows.windows[s], mem, cfg.chunk)  # (N, n_windows)
            vis.append(harmonic_aggregate(d, masks[s], grid))
        mw = torch.stack(vis).mean(0)
        grid_maps = (m0 + mw) / 2 if cfg.fusion == "mean" else m0 + mw
        scores = (s0 + mw.amax(dim=(-2, -1))) / 2
        info["references"] = list(refs.relpaths)

    maps = resize_maps(grid_maps.float(), cfg.map_size)
    return MethodOutput(scores.cpu().numpy(), maps.cpu().numpy().astype(np.float32), info)
