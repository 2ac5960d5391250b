"""FADE: Few-shot/zero-shot Anomaly Detection Engine (Li, Ivanova and Bruveris, BMVC 2024), as its code runs.

Every rule below follows the official code (github.com/BMVC-FADE/BMVC-FADE at commit 43d237b of 2024-11-22:
``scripts/run_fade.py``, ``utils/anomaly_detection.py``, ``utils/image_model.py``, ``utils/text_model.py``; the
book's Methods chapter, book/methods.md, section "FADE"); where the paper and the code differ, the code wins and the
paper's reading is an option.

Language-guided (text prototypes ``t_n``, ``t_a``; ``<.,.>`` cosine; temperature ``tau`` = 0.01)

- AC: ``s_lang = softmax([<e, t_n>, <e, t_a>] / tau)[1]`` with ``e`` the CLS token of the ordinary CLIP stream at
  240 px;
- AS: the same softmax per patch token (GEM stream by default) at each scale, each grid resized bilinearly to the
  largest grid (56x56 for 240/448/896) and averaged over scales.

Vision-guided (memory ``R`` of patch tokens; ``d(f) = k-th smallest of (1 - <f, r>) / 2``)

- 0-shot: the query's own patch tokens (GEM stream) at each scale, ``k = 2`` (the first neighbour is the patch
  itself);
- k-shot: all patch tokens of the k reference images at the same scale (ordinary CLIP stream), ``k = 1``;
- per scale a grid, resized to 56x56 and averaged over scales like the language map, then multiplied by ``m``
  (80 for 0-shot, 3.5 for k-shot) "to calibrate its upper bound to around 1".

Fusion (``clip01`` = clip to [0, 1]):

===========  ===========================================  =============================================
setting      image score                                   anomaly map
===========  ===========================================  =============================================
0-shot       ``clip01(s_lang)``                            ``clip01(0.5 M_lang + 0.5 m M_vis)``
k-shot       ``clip01((s_lang + max_p m M_vis) / 2)``      ``clip01(0.15 M_lang + 0.85 m M_vis)``
language     ``s_lang``                                    ``M_lang``
vision       ``max_p m M_vis``                             ``m M_vis``
===========  ===========================================  =============================================

``fade_compat`` (on by default) keeps the official details that change numbers: the 56x56 map is clipped to
[0, 1], scaled by 255 and truncated to uint8 before the bilinear resize to 448 (so pixel scores are integers with
many ties) and all resizes use OpenCV's bilinear filter. Off: the float map is resized with torch.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np
import torch

from zsad.methods.base import MethodOutput, resize_maps
from zsad.methods.tokens import TokenSet

MODES = ("language", "vision", "both")


@dataclass(frozen=True)
class FadeConfig:
    """Options of a FADE run; ``None`` fields take the official value for the setting (0-shot or k-shot).

    Attributes
    ----------
    shots : int, default 0
        0: zero-shot (query self-memory); k >= 1: k reference images.
    ac_mode : {"language", "vision", "both"}, default "both"
        Guidance of the image-level classification (AC).
    as_mode : {"language", "vision", "both"}, default "both"
        Guidance of the pixel-level segmentation (AS).
    sizes : tuple of int, default (240, 448, 896)
        Segmentation scales in px (multiples of 16).
    ac_size : int, default 240
        Scale of the CLS token used for language AC.
    ac_stream : {"clip", "gem"}, default "clip"
        Token stream of the language AC (CLS).
    language_stream : {"clip", "gem"}, default "gem"
        Token stream of the language AS patches.
    vision_stream : {"clip", "gem"}, optional
        Token stream of the vision-guided memory; None: ``"gem"`` for 0-shot, ``"clip"`` for k-shot.
    temperature : float, default 0.01
        Softmax temperature ``tau`` of the language scores.
    vision_multiplier : float, optional
        Multiplier ``m`` of the vision map; None: 80.0 for 0-shot, 3.5 for k-shot.
    vision_weight : float, optional
        Weight of the vision map in the AS fusion (the language map gets ``1 - vision_weight``); None: 0.5 for
        0-shot, 0.85 for k-shot.
    map_size : int, default 448
        Side of the returned maps in px.
    fade_compat : bool, default True
        uint8 quantisation before the resize to ``map_size``, OpenCV resizes (see the module docstring).
    """

    shots: int = 0  # 0: zero-shot (query self-memory); k >= 1: k reference images
    ac_mode: str = "both"  # language | vision | both (image-level classification)
    as_mode: str = "both"  # language | vision | both (pixel-level segmentation)
    sizes: tuple[int, ...] = (240, 448, 896)  # segmentation scales
    ac_size: int = 240  # scale of the CLS token used for language AC
    ac_stream: str = "clip"  # token stream of the language AC (CLS)
    language_stream: str = "gem"  # token stream of the language AS patches
    vision_stream: str | None = None  # None: gem for 0-shot, clip for k-shot
    temperature: float = 0.01
    vision_multiplier: float | None = None  # None: 80.0 for 0-shot, 3.5 for k-shot
    vision_weight: float | None = None  # weight of the vision map in the AS fusion; None: 0.5 / 0.85
    map_size: int = 448  # size of the returned maps
    fade_compat: bool = True  # uint8 quantisation before the resize to map_size, OpenCV resizes

    def resolved(self) -> "FadeConfig":
        """Return the config with every ``None`` replaced by the official value for its setting, validated.

        ``sizes`` is also sorted and deduplicated.

        Returns
        -------
        FadeConfig
            A new, fully specified config.

        Raises
        ------
        ValueError
            When a mode is not one of ``MODES``, ``shots`` < 0, a stream is neither ``"clip"`` nor ``"gem"``, or
            ``sizes`` is empty or holds a size that is not a multiple of 16.
        """
        if self.ac_mode not in MODES or self.as_mode not in MODES:
            raise ValueError(f"ac_mode/as_mode must be one of {MODES}, got {self.ac_mode!r}/{self.as_mode!r}")
        if self.shots < 0:
            raise ValueError(f"shots must be >= 0, got {self.shots}")
        for name in ("ac_stream", "language_stream", "vision_stream"):
            if getattr(self, name) not in ("clip", "gem", None):
                raise ValueError(f"{name} must be a token stream, 'clip' or 'gem', got {getattr(self, name)!r}")
        if not self.sizes or any(s % 16 for s in self.sizes):
            raise ValueError(f"segmentation sizes must be multiples of 16, got {self.sizes}")
        zero = self.shots == 0
        return replace(
            self,
            sizes=tuple(sorted(set(self.sizes))),
            vision_stream=self.vision_stream or ("gem" if zero else "clip"),
            vision_multiplier=self.vision_multiplier if self.vision_multiplier is not None else (80.0 if zero else 3.5),
            vision_weight=self.vision_weight if self.vision_weight is not None else (0.5 if zero else 0.85),
        )


def language_scores(tokens: torch.Tensor, prototypes: torch.Tensor, temperature: float) -> torch.Tensor:
    """Return the language-guided anomaly probability ``softmax([<x, t_n>, <x, t_a>] / tau)[1]`` of each token.

    Parameters
    ----------
    tokens : torch.Tensor
        (..., D) L2-normalised tokens.
    prototypes : torch.Tensor
        (2, D) normalised text prototypes ``[normal, abnormal]``.
    temperature : float
        The temperature ``tau``.

    Returns
    -------
    torch.Tensor
        (...) probability of the abnormal prototype, in [0, 1].
    """
    logits = tokens @ prototypes.T / temperature
    return logits.softmax(dim=-1)[..., 1]


def knn_distance(queries: torch.Tensor, memory: torch.Tensor, k: int, chunk: int = 4096) -> torch.Tensor:
    """Return the k-th smallest distance ``(1 - <q, r>) / 2`` of each query over a memory.

    Parameters
    ----------
    queries : torch.Tensor
        (Q, D) L2-normalised query vectors.
    memory : torch.Tensor
        (R, D) L2-normalised memory vectors.
    k : int
        Which neighbour (1: the nearest).
    chunk : int, default 4096
        Queries per similarity matrix (bounds memory use at ``chunk * R`` similarities).

    Returns
    -------
    torch.Tensor
        (Q,) distances, in [0, 1].

    Raises
    ------
    ValueError
        When the memory has fewer than ``k`` entries.
    """
    if memory.shape[0] < k:
        raise ValueError(f"memory has {memory.shape[0]} entries, fewer than k={k}")
    out = []
    for start in range(0, queries.shape[0], chunk):
        sim = queries[start:start + chunk] @ memory.T
        kth = sim.max(dim=-1).values if k == 1 else sim.topk(k, dim=-1).values[:, k - 1]
        out.append((1.0 - kth) / 2.0)
    return torch.cat(out)


def _resize_grid(maps: torch.Tensor, size: int, compat: bool) -> torch.Tensor:
    """(N, g, g) -> (N, size, size) bilinear; OpenCV's filter in compat mode, as the official code."""
    if maps.shape[-1] == size:
        return maps
    if not compat:
        return resize_maps(maps, size)
    arr = maps.numpy().astype(np.float32)
    return torch.from_numpy(np.stack([cv2.resize(m, (size, size), interpolation=cv2.INTER_LINEAR) for m in arr]))


def _to_grids(values: torch.Tensor) -> torch.Tensor:
    g = int(round(values.shape[-1] ** 0.5))
    return values.reshape(values.shape[0], g, g)


def _fuse_scales(per_scale: list[torch.Tensor], compat: bool) -> torch.Tensor:
    """Mean over scales after resizing each (N, g, g) grid to the largest grid."""
    side = max(m.shape[-1] for m in per_scale)
    return torch.stack([_resize_grid(m, side, compat) for m in per_scale]).mean(0)


def language_map(test: TokenSet, prototypes: torch.Tensor, cfg: FadeConfig) -> torch.Tensor:
    """Return the language-guided anomaly map M_lang, fused over scales.

    Per size of ``cfg.sizes``, :func:`language_scores` of the patch tokens of ``cfg.language_stream``; each grid is
    resized bilinearly to the largest grid and the grids are averaged.

    Parameters
    ----------
    test : TokenSet
        Tokens of the test images at every size of ``cfg.sizes``.
    prototypes : torch.Tensor
        (2, D) segmentation text prototypes ``[normal, abnormal]``.
    cfg : FadeConfig
        A resolved config (:meth:`FadeConfig.resolved`).

    Returns
    -------
    torch.Tensor
        (N, G, G) with G the largest grid.
    """
    stream = test.stream(cfg.language_stream)
    grids = [_to_grids(language_scores(stream[s][:, 1:], prototypes, cfg.temperature)) for s in cfg.sizes]
    return _fuse_scales(grids, cfg.fade_compat)


def vision_distances(test: TokenSet, cfg: FadeConfig, refs: TokenSet | None = None) -> dict[int, torch.Tensor]:
    """Return each test patch's nearest-neighbour distance, per size of ``cfg.sizes``.

    Zero-shot over the image's own patches (2nd neighbour, the 1st is the patch itself), k-shot over all reference
    patches (1st neighbour), with :func:`knn_distance` on the patch tokens of ``cfg.vision_stream``.

    A row depends only on its own image (and the references), so rows can be computed, cached and reused per image.

    Parameters
    ----------
    test : TokenSet
        Tokens of the test images at every size of ``cfg.sizes``.
    cfg : FadeConfig
        A resolved config (:meth:`FadeConfig.resolved`).
    refs : TokenSet, optional
        Tokens of the k reference images; required when ``cfg.shots`` >= 1, ignored for 0-shot.

    Returns
    -------
    dict of int to torch.Tensor
        ``{size: (N, g*g)}`` distances.

    Raises
    ------
    ValueError
        When a k-shot config gets no reference tokens at one of the sizes.
    """
    stream = test.stream(cfg.vision_stream)
    out = {}
    for s in cfg.sizes:
        patches = stream[s][:, 1:]
        if cfg.shots == 0:
            out[s] = torch.stack([knn_distance(p, p, k=2) for p in patches])
        else:
            if refs is None or s not in refs.stream(cfg.vision_stream):
                raise ValueError(f"{cfg.shots}-shot FADE needs reference tokens at {s} px ({cfg.vision_stream})")
            memory = refs.stream(cfg.vision_stream)[s][:, 1:].reshape(-1, patches.shape[-1])
            out[s] = knn_distance(patches.reshape(-1, patches.shape[-1]), memory, k=1).reshape(patches.shape[:2])
    return out


def vision_map(test: TokenSet, cfg: FadeConfig, refs: TokenSet | None = None,
               distances: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """Return the vision-guided anomaly map M_vis before the multiplier, fused over scales.

    Parameters
    ----------
    test : TokenSet
        Tokens of the test images at every size of ``cfg.sizes``.
    cfg : FadeConfig
        A resolved config (:meth:`FadeConfig.resolved`).
    refs : TokenSet, optional
        Tokens of the k reference images (k-shot only); used only when ``distances`` is None.
    distances : dict of int to torch.Tensor, optional
        The distances as :func:`vision_distances` returns them; computed here when not given.

    Returns
    -------
    torch.Tensor
        (N, G, G) with G the largest grid.
    """
    distances = vision_distances(test, cfg, refs) if distances is None else distances
    return _fuse_scales([_to_grids(distances[s]) for s in cfg.sizes], cfg.fade_compat)


def _final_maps(fused: torch.Tensor, cfg: FadeConfig) -> np.ndarray:
    if cfg.fade_compat:
        quantised = (fused.clamp(0, 1) * 255).to(torch.uint8).numpy()  # truncation, as the official code
        return np.stack([cv2.resize(m, (cfg.map_size, cfg.map_size), interpolation=cv2.INTER_LINEAR)
                         for m in quantised])
    return resize_maps(fused, cfg.map_size).numpy().astype(np.float32)


def fade(test: TokenSet, cfg: FadeConfig, *, ac_prototypes: torch.Tensor | None = None,
         as_prototypes: torch.Tensor | None = None, refs: TokenSet | None = None,
         vision: dict[int, torch.Tensor] | None = None) -> MethodOutput:
    """Run FADE on one class: image scores (N,) and anomaly maps (N, map_size, map_size).

    The fusion rules are those of the module docstring's table.

    Parameters
    ----------
    test : TokenSet
        Tokens of the test images at ``cfg.ac_size`` and every size of ``cfg.sizes``.
    cfg : FadeConfig
        The options; resolved here (:meth:`FadeConfig.resolved`).
    ac_prototypes : torch.Tensor, optional
        (2, D) text prototypes ``[normal, abnormal]`` for classification (class-name prompts); needed unless
        ``cfg.ac_mode`` is ``"vision"``.
    as_prototypes : torch.Tensor, optional
        (2, D) text prototypes ``[normal, abnormal]`` for segmentation (the "object" ensemble); needed unless
        ``cfg.as_mode`` is ``"vision"``.
    refs : TokenSet, optional
        Tokens of the k reference images (k-shot only).
    vision : dict of int to torch.Tensor, optional
        :func:`vision_distances` of these test images for this config when already known (e.g. from the feature
        cache); computed from ``test`` and ``refs`` otherwise.

    Returns
    -------
    MethodOutput
        Scores (N,); maps (N, map_size, map_size), uint8 in compat mode, float32 otherwise; ``info`` holds the
        fused grid side and the resolved config.

    Raises
    ------
    ValueError
        When a language-guided mode lacks its prototypes, the config is invalid, or k-shot references are missing.
    """
    cfg = cfg.resolved()
    needs_lang_ac, needs_lang_as = cfg.ac_mode != "vision", cfg.as_mode != "vision"
    needs_vis = cfg.ac_mode != "language" or cfg.as_mode != "language"
    if (needs_lang_ac and ac_prototypes is None) or (needs_lang_as and as_prototypes is None):
        raise ValueError("language-guided FADE needs text prototypes (ac_prototypes and as_prototypes)")
    m_vis = vision_map(test, cfg, refs, vision) * cfg.vision_multiplier if needs_vis else None
    m_lang = language_map(test, as_prototypes, cfg) if needs_lang_as else None
    s_lang = None
    if needs_lang_ac:
        cls = test.stream(cfg.ac_stream)[cfg.ac_size][:, 0]
        s_lang = language_scores(cls, ac_prototypes, cfg.temperature)

    if cfg.ac_mode == "language":
        scores = s_lang
    elif cfg.ac_mode == "vision":
        scores = m_vis.flatten(1).max(1).values
    elif cfg.shots == 0:  # the 0-shot "both" image score is language only (official fix of 2024-11-22)
        scores = s_lang.clamp(0, 1)
    else:
        scores = ((s_lang + m_vis.flatten(1).max(1).values) / 2).clamp(0, 1)

    if cfg.as_mode == "language":
        fused = m_lang
    elif cfg.as_mode == "vision":
        fused = m_vis
    else:
        fused = ((1 - cfg.vision_weight) * m_lang + cfg.vision_weight * m_vis).clamp(0, 1)
    info = {"grid": int(fused.shape[-1]), "config": {k: v for k, v in cfg.__dict__.items()}}
    return MethodOutput(scores.double().numpy(), _final_maps(fused, cfg), info)
