"""Cheung et al. 2024, "Automatic Prompt Generation and Grounding Object Detection for Zero-Shot Image Anomaly
Detection" (APSIPA ASC 2024): image-level zero-shot anomaly classification from CLIP embeddings of the whole image
and of the product crops that Grounding DINO finds, scored against LLM-generated normal/anomaly prompts.

No official code exists; this follows the paper's text (section III):

- Object localisation (eq. 3): Grounding DINO, queried with the class name, returns boxes; each is cropped,
  ``I_object = I[y:y+h, x:x+w]``, and all boxes are used ("we repeat the above steps to obtain multiple image
  patches"). :func:`crop_boxes` turns boxes into integer pixel crops; :func:`object_crops` adds the cap and the
  fallback below.
- Features: ``e_object`` = mean CLIP embedding of the crops, ``e_image`` = CLIP embedding of the whole image,
  ``e_fused`` = their average (:func:`fuse`; ``fusion_weight`` is the weight of ``e_object``, 0.5 = the paper's
  plain average, 0 = the "w/o object detection" ablation, 1 = crops only). Every CLIP embedding is L2-normalised
  before averaging.
- Score (eq. 4): ``s = <e, t_a> / (<e, t_a> + <e, t_n>)`` with ``<.,.>`` raw cosines (``e``, ``t_n`` and ``t_a``
  are L2-normalised here, whatever the caller passes; ``t_n``/``t_a`` are the renormalised means of the two prompt
  ensembles), not a softmax.

Decisions where the paper is silent (the book's Methods chapter, book/methods.md, section "Cheung et al.")
---------------------------------------------------------------------------------------------------------
- **Box coordinates.** :func:`crop_boxes` takes pixel or normalised (``normalized=True``, fractions of width and
  height) boxes in ``xyxy`` (transformers' post-processed output, the default), ``cxcywh`` (Grounding DINO's raw
  ``pred_boxes``) or ``xywh`` (the paper's ``b = [x, y, w, h]``). Boxes are rounded outwards (floor of the start,
  ceil of the end, so the crop contains the whole box), clamped to the image (exclusive end, PIL ``crop`` /
  slicing convention), and dropped when non-finite or narrower/shorter than ``min_size`` pixels after clamping
  (inverted and fully-outside boxes therefore disappear).
- **Which boxes.** Every box above ``box_threshold`` (0.35; ``text_threshold`` 0.25 only labels the phrase), the
  official Grounding DINO demo defaults; at most ``max_boxes`` (10, highest scores first) as a guard against a
  random-weight detector that returns every query; ``None`` lifts the cap.
- **Nothing detected.** ``fallback="image"``: the whole image is the only crop, so ``e_object = e_image`` and the
  score is the whole-image score; the adapter records which images fell back. ``fallback="none"`` raises instead.
- **Crop preprocessing.** Each crop goes through :func:`zsad.data.preprocess` at 240 px like the whole image
  (bicubic squash to a square, no centre crop, so an elongated product is never cut).
- **Eq. 4 guard.** The ratio is a score only where both cosines are positive: then ``s`` lies in (0, 1), rises with
  ``<e, t_a>`` and falls with ``<e, t_n>``, and ``s > 0.5`` iff ``<e, t_a> > <e, t_n>``. Where the denominator is
  ``<= eps`` the ratio is undefined or flips sign, and where one cosine is negative it leaves [0, 1] and stops
  being monotone (e.g. ``c_n = -0.1``: ``c_a = 0.11`` gives 11 but ``c_a = 0.5`` gives 1.25). Real CLIP
  image-text cosines are about 0.15-0.35, so this should never fire with real weights; with random weights it
  fires for about half the images. The guard therefore applies wherever ``min(c_a, c_n) <= eps`` (a superset of
  "denominator <= eps") and is a parameter:

  - ``guard="shifted"`` (default): the same ratio on cosines shifted to [0, 1] by ``(1 + c) / 2``, i.e.
    ``(1 + c_a) / (2 + c_a + c_n)``: the same [0, 1] range and the same 0.5 boundary as eq. 4, monotone in both
    cosines, defined everywhere except ``c_a = c_n = -1`` (where it gives 0.5);
  - ``guard="softmax"``: CLIP's two-way softmax ``softmax([c_n, c_a] / T)[1]`` (``temperature`` T = 0.01, CLIP's
    logit scale 100), the score FADE and WinCLIP use;
  - ``guard="raise"``: a ``ValueError`` naming the guarded images.

  ``score="shifted"`` or ``score="softmax"`` use those formulas for every image instead of eq. 4 (useful to check
  how much the ratio itself matters). The per-image guard flags are returned so a run can report them.
- **Pixel maps.** The method is image-level only (AC): :class:`zsad.methods.base.MethodOutput` maps are (N, 1, 1),
  each the image's score, and ``info["image_only"] = True`` tells the study that pixel metrics are not defined.

Everything here is a pure function of embeddings and boxes (no file I/O, no models); ``zsad.runners``
runs CLIP and Grounding DINO and calls it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from zsad.methods.base import MethodOutput

__all__ = ["CheungConfig", "crop_boxes", "object_crops", "fuse", "eq4_scores", "cheung_scores", "image_only_output",
           "BOX_FORMATS", "GUARDS", "SCORES"]

BOX_FORMATS = ("xyxy", "cxcywh", "xywh")
GUARDS = ("shifted", "softmax", "raise")
SCORES = ("ratio", "shifted", "softmax")
FALLBACKS = ("image", "none")


@dataclass(frozen=True)
class CheungConfig:
    """Options of a Cheung et al. run (paper values where it gives them, documented choices otherwise).

    Attributes
    ----------
    use_detection : bool, default True
        False: ``e_fused = e_image`` (the paper's "w/o object detection" ablation).
    fusion_weight : float, default 0.5
        Weight of ``e_object`` in ``e_fused``, in [0, 1]; 0.5 = the paper's plain average.
    box_threshold : float, default 0.35
        Grounding DINO box score threshold, in [0, 1) (official demo default).
    text_threshold : float, default 0.25
        Grounding DINO phrase token threshold, in [0, 1) (labels only).
    max_boxes : int, optional, default 10
        At most this many crops per image (highest scores); None: all boxes.
    min_box_size : int, default 2
        Crops narrower or shorter than this (pixels, after clamping) are dropped.
    fallback : {"image", "none"}, default "image"
        Nothing detected: "image" (the whole image is the crop) or "none" (error).
    score : {"ratio", "shifted", "softmax"}, default "ratio"
        "ratio" (eq. 4), or the "shifted" / "softmax" formula for every image.
    guard : {"shifted", "softmax", "raise"}, default "shifted"
        What replaces eq. 4 where it is undefined (a cosine <= ``eps``).
    eps : float, default 1e-6
        Guard threshold on the cosines.
    temperature : float, default 0.01
        Softmax temperature (CLIP's logit scale 100), as FADE's and WinCLIP's ``temperature``.
    image_size : int, default 240
        CLIP input size of whole images and crops.

    Raises
    ------
    ValueError
        On construction, when an option is out of its range or not one of its allowed values.
    """

    use_detection: bool = True  # False: e_fused = e_image (the paper's "w/o object detection" ablation)
    fusion_weight: float = 0.5  # weight of e_object in e_fused; 0.5 = the paper's plain average
    box_threshold: float = 0.35  # Grounding DINO box score threshold (official demo default)
    text_threshold: float = 0.25  # Grounding DINO phrase token threshold (labels only)
    max_boxes: int | None = 10  # at most this many crops per image (highest scores); None: all boxes
    min_box_size: int = 2  # crops narrower or shorter than this (pixels, after clamping) are dropped
    fallback: str = "image"  # nothing detected: "image" (the whole image is the crop) | "none" (error)
    score: str = "ratio"  # "ratio" (eq. 4) | "shifted" | "softmax" (for every image)
    guard: str = "shifted"  # eq. 4 undefined (a cosine <= eps): "shifted" | "softmax" | "raise"
    eps: float = 1e-6  # guard threshold on the cosines
    temperature: float = 0.01  # softmax temperature (CLIP's logit scale 100), as FADE's and WinCLIP's `temperature`
    image_size: int = 240  # CLIP input size of whole images and crops

    def __post_init__(self):
        if not 0.0 <= float(self.fusion_weight) <= 1.0:
            raise ValueError(f"fusion_weight must be in [0, 1], got {self.fusion_weight}")
        for name in ("box_threshold", "text_threshold"):
            if not 0.0 <= float(getattr(self, name)) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.max_boxes is not None and (isinstance(self.max_boxes, bool) or int(self.max_boxes) < 1):
            raise ValueError(f"max_boxes must be None or >= 1, got {self.max_boxes}")
        if int(self.min_box_size) < 1:
            raise ValueError(f"min_box_size must be >= 1, got {self.min_box_size}")
        if self.fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, got {self.fallback!r}")
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {self.score!r}")
        if self.guard not in GUARDS:
            raise ValueError(f"guard must be one of {GUARDS}, got {self.guard!r}")
        if not (self.eps >= 0 and math.isfinite(self.eps)):
            raise ValueError(f"eps must be a finite number >= 0, got {self.eps}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a positive number, got {self.temperature}")


# ---------------------------------------------------------------------------------------------- crop geometry

def crop_boxes(image_size: tuple[int, int], boxes, *, normalized: bool = False, fmt: str = "xyxy",
               min_size: int = 2) -> list[tuple[int, int, int, int]]:
    """Return integer pixel crops ``(x0, y0, x1, y1)`` (end exclusive, for ``PIL.Image.crop``) of boxes on an image.

    Parameters
    ----------
    image_size : tuple of (int, int)
        ``(width, height)`` of the image (PIL's ``image.size``).
    boxes : array_like
        (K, 4) boxes (K may be 0), in ``fmt``.
    normalized : bool, default False
        Coordinates are fractions of width (x, w) and height (y, h) instead of pixels.
    fmt : {"xyxy", "cxcywh", "xywh"}, default "xyxy"
        ``"xyxy"`` corners, ``"cxcywh"`` centre and size, or ``"xywh"`` top-left corner and size.
    min_size : int, default 2
        Boxes narrower or shorter than this many pixels after clamping are dropped.

    Returns
    -------
    list of tuple of (int, int, int, int)
        The surviving boxes in input order, rounded outwards and clamped to ``[0, width] x [0, height]``;
        non-finite boxes are dropped.

    Raises
    ------
    ValueError
        When ``image_size`` is not positive, ``fmt`` is unknown, or non-empty ``boxes`` are not (K, 4).
    """
    width, height = (int(v) for v in image_size)
    if width < 1 or height < 1:
        raise ValueError(f"image_size must be positive (width, height), got {image_size}")
    if fmt not in BOX_FORMATS:
        raise ValueError(f"box format must be one of {BOX_FORMATS}, got {fmt!r}")
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        return []
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must have shape (K, 4), got {b.shape}")
    if fmt == "cxcywh":
        b = np.stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2], 1)
    elif fmt == "xywh":
        b = np.stack([b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]], 1)
    if normalized:
        b = b * np.array([width, height, width, height], dtype=np.float64)
    out = []
    for x0, y0, x1, y1 in b:
        if not np.isfinite([x0, y0, x1, y1]).all():
            continue
        # a tiny tolerance so that 0.1 * 100 = 10.000000000000002 does not round out to 11
        x0 = max(0, math.floor(x0 + 1e-9))
        y0 = max(0, math.floor(y0 + 1e-9))
        x1 = min(width, math.ceil(x1 - 1e-9))
        y1 = min(height, math.ceil(y1 - 1e-9))
        if x1 - x0 >= min_size and y1 - y0 >= min_size:
            out.append((int(x0), int(y0), int(x1), int(y1)))
    return out


def object_crops(image_size: tuple[int, int], boxes, cfg: CheungConfig = CheungConfig(), *,
                 normalized: bool = False, fmt: str = "xyxy") -> tuple[list[tuple[int, int, int, int]], bool]:
    """Return the crops of one image as the method uses them.

    The first ``cfg.max_boxes`` boxes that survive :func:`crop_boxes` are kept. With none left,
    ``cfg.fallback="image"`` gives the whole image ``[(0, 0, width, height)]``; ``"none"`` raises.

    Parameters
    ----------
    image_size : tuple of (int, int)
        ``(width, height)`` of the image.
    boxes : array_like
        (K, 4) boxes sorted by score (descending), as :func:`zsad.detector.detect` returns them.
    cfg : CheungConfig, default CheungConfig()
        Uses ``min_box_size``, ``max_boxes`` and ``fallback``.
    normalized : bool, default False
        Coordinates are fractions of width and height instead of pixels.
    fmt : {"xyxy", "cxcywh", "xywh"}, default "xyxy"
        Box format (see :func:`crop_boxes`).

    Returns
    -------
    crops : list of tuple of (int, int, int, int)
        Pixel crops ``(x0, y0, x1, y1)``, end exclusive.
    fell_back : bool
        True when no box survived and the whole image is the crop.

    Raises
    ------
    ValueError
        When no box survives and ``cfg.fallback="none"``, or the boxes are invalid (see :func:`crop_boxes`).
    """
    crops = crop_boxes(image_size, boxes, normalized=normalized, fmt=fmt, min_size=cfg.min_box_size)
    if cfg.max_boxes is not None:
        crops = crops[:int(cfg.max_boxes)]
    if crops:
        return crops, False
    if cfg.fallback == "none":
        raise ValueError(f"no usable box on an image of size {tuple(image_size)} and fallback='none'")
    width, height = (int(v) for v in image_size)
    return [(0, 0, width, height)], True


# ---------------------------------------------------------------------------------------------------- scoring

def _as_matrix(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).double()
    if t.ndim == 1:
        t = t[None]
    if t.ndim != 2:
        raise ValueError(f"{name} must be (D,) or (N, D), got shape {tuple(t.shape)}")
    return t


def fuse(e_image, e_object, weight: float = 0.5) -> torch.Tensor:
    """Return the fused embedding ``e_fused = (1 - weight) N(e_image) + weight N(e_object)``.

    ``N`` is L2 normalisation; the result is not renormalised.

    Parameters
    ----------
    e_image : array_like or torch.Tensor
        (N, D) or (D,) whole-image embeddings.
    e_object : array_like or torch.Tensor
        Object (mean crop) embeddings of the same shape.
    weight : float, default 0.5
        Weight of ``e_object``, in [0, 1].

    Returns
    -------
    torch.Tensor
        (N, D) float64 (a (D,) input gives (1, D)).

    Raises
    ------
    ValueError
        When ``weight`` is outside [0, 1], an input is not (D,) or (N, D), or the shapes differ.
    """
    if not 0.0 <= float(weight) <= 1.0:
        raise ValueError(f"fusion weight must be in [0, 1], got {weight}")
    a, b = _as_matrix(e_image, "e_image"), _as_matrix(e_object, "e_object")
    if a.shape != b.shape:
        raise ValueError(f"e_image {tuple(a.shape)} and e_object {tuple(b.shape)} differ in shape")
    return (1.0 - weight) * F.normalize(a, dim=-1) + weight * F.normalize(b, dim=-1)


def eq4_scores(e, t_n, t_a, *, score: str = "ratio", guard: str = "shifted", eps: float = 1e-6,
               temperature: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Compute eq. 4 on cosines, with the guard of the module docstring.

    All inputs are L2-normalised here, so the dot products are cosines.

    Parameters
    ----------
    e : array_like or torch.Tensor
        (N, D) or (D,) image embeddings.
    t_n : array_like or torch.Tensor
        (D,) normal text embedding.
    t_a : array_like or torch.Tensor
        (D,) anomaly text embedding.
    score : {"ratio", "shifted", "softmax"}, default "ratio"
        "ratio": eq. 4 with the guard; "shifted" / "softmax": that formula for every image.
    guard : {"shifted", "softmax", "raise"}, default "shifted"
        What replaces eq. 4 where ``min(c_a, c_n) <= eps``.
    eps : float, default 1e-6
        Guard threshold on the cosines.
    temperature : float, default 0.01
        Temperature of the softmax formula.

    Returns
    -------
    scores : numpy.ndarray
        (N,) float64 scores.
    guarded : numpy.ndarray
        (N,) bool, the images where eq. 4 was replaced (``score="ratio"`` only; always False otherwise).

    Raises
    ------
    ValueError
        When ``score`` or ``guard`` is unknown, the shapes do not fit, or ``guard="raise"`` and some image is
        guarded.
    """
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    if guard not in GUARDS:
        raise ValueError(f"guard must be one of {GUARDS}, got {guard!r}")
    e = F.normalize(_as_matrix(e, "e"), dim=-1)
    tn = F.normalize(_as_matrix(t_n, "t_n"), dim=-1)
    ta = F.normalize(_as_matrix(t_a, "t_a"), dim=-1)
    if tn.shape[0] != 1 or ta.shape[0] != 1 or tn.shape[1] != e.shape[1] or ta.shape[1] != e.shape[1]:
        raise ValueError(f"t_n {tuple(tn.shape)} and t_a {tuple(ta.shape)} must be single (D,) vectors of the "
                         f"embedding width {e.shape[1]}")
    c_n = (e @ tn[0]).numpy()
    c_a = (e @ ta[0]).numpy()
    den = 2.0 + c_a + c_n  # >= 0; 0 only when both cosines are -1
    shifted = np.where(den > 1e-12, (1.0 + c_a) / np.where(den > 1e-12, den, 1.0), 0.5)
    softmax = 1.0 / (1.0 + np.exp(-np.clip((c_a - c_n) / temperature, -700, 700)))  # softmax([c_n, c_a] / T)[1]
    if score == "shifted":
        return shifted, np.zeros(len(c_a), bool)
    if score == "softmax":
        return softmax, np.zeros(len(c_a), bool)
    guarded = np.minimum(c_a, c_n) <= eps  # includes every denominator <= eps (see the module docstring)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = c_a / (c_a + c_n)
    if guarded.any() and guard == "raise":
        idx = np.flatnonzero(guarded)
        raise ValueError(f"eq. 4 is undefined for {len(idx)} image(s) (a cosine <= {eps}): indices "
                         f"{idx[:10].tolist()}{' ...' if len(idx) > 10 else ''}")
    fallback = shifted if guard == "shifted" else softmax
    return np.where(guarded, fallback, ratio), guarded


def cheung_scores(e_image, e_object, t_n, t_a, cfg: CheungConfig = CheungConfig(), *,
                  return_guarded: bool = False):
    """Return the image anomaly scores of Cheung et al.: eq. 4 on ``fuse(e_image, e_object)``.

    Parameters
    ----------
    e_image : array_like or torch.Tensor
        (N, D) CLIP embeddings of the whole images.
    e_object : array_like or torch.Tensor or None
        (N, D) mean CLIP embedding of each image's crops (ignored, and may be None, when ``cfg.use_detection`` is
        False).
    t_n : array_like or torch.Tensor
        (D,) normal text embedding.
    t_a : array_like or torch.Tensor
        (D,) anomaly text embedding.
    cfg : CheungConfig, default CheungConfig()
        Uses ``use_detection``, ``fusion_weight``, ``score``, ``guard``, ``eps`` and ``temperature``.
    return_guarded : bool, default False
        Also return the guard flags.

    Returns
    -------
    scores : numpy.ndarray
        (N,) float64 scores.
    guarded : numpy.ndarray
        (N,) bool guard flags (:func:`eq4_scores`); only with ``return_guarded=True``.

    Raises
    ------
    ValueError
        When ``e_object`` is None with ``cfg.use_detection``, or as :func:`fuse` and :func:`eq4_scores` raise.
    """
    if cfg.use_detection:
        if e_object is None:
            raise ValueError("e_object is required when use_detection is True")
        e = fuse(e_image, e_object, cfg.fusion_weight)
    else:
        e = _as_matrix(e_image, "e_image")
    scores, guarded = eq4_scores(e, t_n, t_a, score=cfg.score, guard=cfg.guard, eps=cfg.eps,
                                 temperature=cfg.temperature)
    return (scores, guarded) if return_guarded else scores


def image_only_output(scores, info: dict | None = None) -> MethodOutput:
    """Wrap image scores in a :class:`MethodOutput` for an image-level method.

    Parameters
    ----------
    scores : array_like
        (N,) image scores.
    info : dict, optional
        Run record to copy into the output's ``info``.

    Returns
    -------
    MethodOutput
        float64 scores, (N, 1, 1) float32 maps holding each score, and ``info`` with ``image_only=True``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    maps = scores.astype(np.float32).reshape(-1, 1, 1)
    return MethodOutput(scores, maps, {**(info or {}), "image_only": True})
