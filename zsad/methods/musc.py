"""MuSc: zero-shot anomaly classification and segmentation by mutual scoring of the unlabeled test images.

Li, Huang, Xue and Zhou, "MuSc: Zero-Shot Industrial Anomaly Classification and Segmentation with Mutual Scoring
of the Unlabeled Images", ICLR 2024 (arXiv:2401.16753); official code https://github.com/xrli-U/MuSc
(``models/musc.py`` and ``models/modules/_LNAMD.py``, ``_MSM.py``, ``_RsCIN.py``). No prompts, no references: each
test image of a class is scored against the *other* test images of the class. A pure function of tokens (no file,
no encoder, no dataset); the runner :func:`zsad.runners.musc_class` feeds it.

The steps, for a class of N test images with a patch grid of h x w = P patches:

1. **LNAMD** (local neighbourhood aggregation with multiple degrees), per chosen layer l and degree r in
   ``r_list`` (1, 3, 5): the layer's patch tokens (CLS dropped) as a (C, h, w) map per image go through a
   LayerNorm over the *whole* map (no affine, eps 1e-5: the official code applies a fresh ``nn.LayerNorm([C, h,
   w])``), then an r x r box mean with zero padding that counts in the mean (the official unfold + adaptive
   average pooling is exactly this), then each patch vector is L2-normalised.
2. **MSM** (mutual scoring): for a patch p of image i and every other image j, the distance to its nearest patch
   in j, ``d_ij(p) = min_q ||z_i(p) - z_j(q)||`` (Euclidean, on unit vectors: ``sqrt(2 - 2 max_q z_i(p).z_j(q))``);
   the patch score is the mean of the ``k = int(0.3 (N - 1))`` smallest ``d_ij(p)`` over j (the official
   ``topmin_max = 0.3`` with ``topmin_min = 0``). A normal patch finds close patches in most other images; a
   defect found in few images keeps a large distance to most of them.
3. The maps of the layers are averaged, then those of the degrees r (plain means); the (h, w) map is upsampled
   bilinearly to the output size with ``align_corners=True`` (as the official code), and the image score is the
   maximum of the upsampled map.
4. **RsCIN** (re-scoring with a constrained image-level neighbourhood): image scores are min-max normalised over
   the class; with the class tokens' cosine matrix W (unit CLS embeddings), for each window k in ``rscin_k`` the
   k largest entries of each row are kept (the image itself included), the rows normalised to sum 1, and the
   scores replaced by that weighted mean of neighbours' scores; the windows' results are averaged. The official
   windows are (1, 2, 3) on MVTec AD and (1, 8, 9) on VisA; ``()`` turns re-scoring off.

Where zsad departs (each a stated choice, none changes the numbers on a set the official code can score):

- Classes too small for the 30 % rule are refused: with N <= 4 the official code takes the mean of zero distances
  (a silent NaN). A window larger than N is refused too (the official code fails there).
- Constant image scores (min = max) normalise to zeros instead of 0/0; a row of W whose k kept weights sum to <= 0
  (possible with random weights) is refused, naming the window.
- Memory is bounded: the nearest-patch similarities are computed for blocks of query and reference images sized
  by ``chunk_mb`` instead of one (P, (N-1) P) matrix per image; the result is the same up to float rounding.
- ``pool_fraction < 1`` scores each image against a seeded random subset of the other images (size
  ``round(pool_fraction (N - 1))``, k from that size) and restricts RsCIN's neighbours to the same subset: the
  transductive experiment of the "Beyond FADE" chapter. The default 1.0 is MuSc.
- Computation in float32 on the tokens' device, averages in float64; the official code runs under CUDA autocast.
- Maps are upsampled to the study's evaluation size (448 px, as every method's) rather than to the input size, so
  the image score is the maximum of that map; at an input size other than the tower's native one the positional
  embedding is resized as GEM resizes it (:func:`zsad.gem.resize_pos_embed`), where the official code builds the
  model at that size through its own open_clip factory.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from zsad.methods.base import MethodOutput, patch_grid

__all__ = ["MuscConfig", "default_layers", "lnamd", "mutual_scores", "rscin", "musc", "reference_pools",
           "check_class_size"]

#: RsCIN windows of the official code per dataset (``models/musc.py``): MVTec AD (1, 2, 3), VisA (1, 8, 9).
RSCIN_WINDOWS = {"mvtec": (1, 2, 3), "visa": (1, 8, 9)}


@dataclass(frozen=True)
class MuscConfig:
    """MuSc's settings (official defaults; see the module docstring)."""

    image_size: int = 240  # input size in px (the paper: 518 with ViT-L/14-336; 240 is ViT-B-16-plus-240's own)
    layers: tuple[int, ...] | None = None  # 0-based blocks; None: 4 evenly spaced (ViT-L/14: 5, 11, 17, 23)
    r_list: tuple[int, ...] = (1, 3, 5)  # LNAMD aggregation degrees (odd box sizes)
    topmin_max: float = 0.3  # MSM: mean of the smallest int(topmin_max * (N - 1)) nearest distances
    rscin_k: tuple[int, ...] = (1, 2, 3)  # RsCIN windows (MVTec AD's); () = no re-scoring
    features: str = "layers"  # "layers": MuSc's intermediate residual streams; "clip" / "gem": final tokens
    pool_fraction: float = 1.0  # share of the other test images each image is scored against (1.0 = MuSc)
    pool_seed: int = 0  # seed of the random pools when pool_fraction < 1
    chunk_mb: float = 256.0  # bound on the similarity block held at once (MiB)

    def validated(self) -> "MuscConfig":
        """This config with tuples normalised; a bad value is a ``ValueError`` naming the field."""
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 32:
            raise ValueError(f"image_size must be an int >= 32, got {self.image_size!r}")
        layers = None if self.layers is None else _int_tuple("layers", self.layers, low=0)
        if layers is not None and (not layers or len(set(layers)) != len(layers)):
            raise ValueError(f"layers must be distinct block indices (or None), got {self.layers!r}")
        r_list = _int_tuple("r_list", self.r_list, low=1)
        if not r_list or any(r % 2 == 0 for r in r_list):
            raise ValueError(f"r_list must hold odd box sizes (1, 3, 5, ...), got {self.r_list!r}")
        if not (isinstance(self.topmin_max, (int, float)) and 0 < self.topmin_max <= 1):
            raise ValueError(f"topmin_max must be in (0, 1], got {self.topmin_max!r}")
        rscin_k = _int_tuple("rscin_k", self.rscin_k, low=1)
        if self.features not in ("layers", "clip", "gem"):
            raise ValueError(f"features must be 'layers', 'clip' or 'gem', got {self.features!r}")
        if not (isinstance(self.pool_fraction, (int, float)) and 0 < self.pool_fraction <= 1):
            raise ValueError(f"pool_fraction must be in (0, 1], got {self.pool_fraction!r}")
        if isinstance(self.pool_seed, bool) or not isinstance(self.pool_seed, int) or self.pool_seed < 0:
            raise ValueError(f"pool_seed must be an int >= 0, got {self.pool_seed!r}")
        if not (isinstance(self.chunk_mb, (int, float)) and self.chunk_mb > 0 and math.isfinite(self.chunk_mb)):
            raise ValueError(f"chunk_mb must be a positive number, got {self.chunk_mb!r}")
        return MuscConfig(self.image_size, layers, r_list, float(self.topmin_max), rscin_k, self.features,
                          float(self.pool_fraction), self.pool_seed, float(self.chunk_mb))


def _int_tuple(name: str, value, low: int) -> tuple[int, ...]:
    items = (value,) if isinstance(value, int) and not isinstance(value, bool) else tuple(value)
    for v in items:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise ValueError(f"{name} must hold ints >= {low}, got {value!r}")
    return tuple(int(v) for v in items)


def default_layers(n_blocks: int, count: int = 4) -> tuple[int, ...]:
    """``count`` evenly spaced blocks ending at the last, 0-based: MuSc's ``[5, 11, 17, 23]`` for 24 blocks.

    Parameters
    ----------
    n_blocks : the tower's number of residual blocks.
    count : how many layers (MuSc: 4).

    Returns
    -------
    tuple of int
        ``(n_blocks * (i + 1) // count - 1 for i in range(count))``; 12 blocks give (2, 5, 8, 11).
    """
    if n_blocks < count:
        raise ValueError(f"a tower of {n_blocks} blocks has fewer than {count} layers to choose")
    return tuple(n_blocks * (i + 1) // count - 1 for i in range(count))


# ------------------------------------------------------------------------------------------------------ LNAMD


def lnamd(tokens: torch.Tensor, r: int, *, has_cls: bool = True) -> torch.Tensor:
    """MuSc's aggregated patch features of one layer: whole-map LayerNorm, r x r zero-padded box mean, L2 norm.

    Parameters
    ----------
    tokens : (N, 1 + P, C) with a CLS token first (``has_cls``), or (N, P, C); P a square grid.
    r : odd box size (1 = no aggregation).
    has_cls : whether token 0 is a CLS token to drop.

    Returns
    -------
    torch.Tensor
        (N, P, C) float32, each patch vector of unit length.
    """
    return _aggregate(_normalised_map(tokens, has_cls), r)


def _normalised_map(tokens: torch.Tensor, has_cls: bool) -> torch.Tensor:
    """(N, [1 +] P, C) tokens -> (N, C, g, g) maps after one LayerNorm per image over channels and positions."""
    x = tokens[:, 1:] if has_cls else tokens
    n, p, c = x.shape
    g = int(round(math.sqrt(p)))
    if g * g != p:
        raise ValueError(f"{p} patch tokens do not form a square grid")
    x = x.float().transpose(1, 2).reshape(n, c, g, g)
    return F.layer_norm(x, (c, g, g), eps=1e-5)  # the official fresh nn.LayerNorm([C, h, w]): no affine


def _aggregate(x: torch.Tensor, r: int) -> torch.Tensor:
    """(N, C, g, g) -> (N, g*g, C): r x r box mean (zero padding counted, as the official unfold), L2 norm."""
    if r < 1 or r % 2 == 0:
        raise ValueError(f"r must be an odd box size >= 1, got {r}")
    n, c, g, _ = x.shape
    if r > 1:
        x = F.avg_pool2d(x, r, stride=1, padding=r // 2, count_include_pad=True)
    return F.normalize(x.reshape(n, c, g * g).transpose(1, 2), dim=-1)


# -------------------------------------------------------------------------------------------------------- MSM


def reference_pools(n: int, fraction: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Which images score which: a (n, n) bool matrix, row i True at the images i is scored against.

    ``fraction`` 1.0: every other image (MuSc). Below 1: for each i a seeded random subset of the others of size
    ``round(fraction * (n - 1))`` (at least 1), drawn independently per row from one ``numpy`` generator.

    Parameters
    ----------
    n : number of images.
    fraction : share of the other images in each pool, in (0, 1].
    seed : seed of the draw.

    Returns
    -------
    torch.Tensor
        (n, n) bool, False on the diagonal.
    """
    pools = ~torch.eye(n, dtype=torch.bool)
    if fraction >= 1 or n < 2:
        return pools
    size = max(1, int(round(fraction * (n - 1))))
    rng = np.random.default_rng(seed)
    out = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        others = np.array([j for j in range(n) if j != i])
        out[i, torch.from_numpy(np.sort(rng.choice(others, size=size, replace=False)))] = True
    return out


def _k_smallest(n_pool: int, topmin_max: float) -> int:
    k = int(n_pool * topmin_max)
    if k < 1:
        raise ValueError(f"mutual scoring averages the int({topmin_max:g} x {n_pool}) = {k} smallest distances to "
                         f"the other images: {n_pool} other images are too few (MuSc needs a class of at least "
                         f"{math.ceil(1 / topmin_max) + 1} test images at this setting)")
    return k


def check_class_size(n: int, cfg: MuscConfig) -> None:
    """Refuse a class too small for ``cfg`` before any feature is computed.

    Parameters
    ----------
    n : number of test images of the class.
    cfg : the settings (the 30 % rule needs ``int(topmin_max * pool) >= 1``; RsCIN's largest window at most the
        class, or the pool plus the image itself).

    Raises
    ------
    ValueError
        Saying how many images the setting needs.
    """
    cfg = cfg.validated()
    pool = max(1, int(round(cfg.pool_fraction * (n - 1)))) if cfg.pool_fraction < 1 and n > 1 else n - 1
    _k_smallest(pool, cfg.topmin_max)
    limit = n if cfg.pool_fraction >= 1 else pool + 1
    if cfg.rscin_k and 0 not in cfg.rscin_k and max(cfg.rscin_k) > limit:
        raise ValueError(f"RsCIN window {max(cfg.rscin_k)} needs at least {max(cfg.rscin_k)} images in each "
                         f"neighbourhood, the class gives {limit}: use smaller rscin_k values or () for none")


def mutual_scores(features: torch.Tensor, *, topmin_max: float = 0.3, pools: torch.Tensor | None = None,
                  chunk_mb: float = 256.0) -> torch.Tensor:
    """MSM: each patch's mean nearest-patch distance to the images it is scored against (smallest 30 %).

    Parameters
    ----------
    features : (N, P, C) unit patch vectors (:func:`lnamd`).
    topmin_max : share of the pool whose smallest distances are averaged (``k = int(topmin_max * pool size)``).
    pools : (N, N) bool, row i = the images i is scored against (:func:`reference_pools`); default every other
        image. Every row must hold the same number of images.
    chunk_mb : bound on the similarity block (query images x reference images x P x P float32) held at once.

    Returns
    -------
    torch.Tensor
        (N, P) float64 patch scores.
    """
    n, p, c = features.shape
    if pools is None:
        pools = ~torch.eye(n, dtype=torch.bool)
    pools = pools.to(torch.bool).cpu()
    if pools.shape != (n, n) or pools.diagonal().any():
        raise ValueError(f"pools must be an ({n}, {n}) bool matrix with a False diagonal")
    sizes = pools.sum(1)
    if n < 2 or not (sizes == sizes[0]).all():
        raise ValueError("mutual scoring needs at least 2 images and pools of one size")
    k = _k_smallest(int(sizes[0]), topmin_max)
    z = features.float()
    # block sizes: bq query images x bj reference images x P x P similarities stay under chunk_mb
    budget = max(1, int(chunk_mb * 2 ** 20 // (4 * p * p)))
    bj = max(1, min(n, budget))
    bq = max(1, min(n, budget // bj))
    out = torch.empty(n, p, dtype=torch.float64)
    for q0 in range(0, n, bq):
        zq = z[q0:q0 + bq]  # (bq, P, C)
        nearest = torch.empty(zq.shape[0], n, p, dtype=torch.float32)  # (bq, N, P): max similarity per image
        for j0 in range(0, n, bj):
            zj = z[j0:j0 + bj]  # (bj, P, C)
            sim = torch.einsum("apc,bqc->abpq", zq, zj)  # (bq, bj, P, P)
            nearest[:, j0:j0 + bj] = sim.amax(-1).cpu()
        dist = (2.0 - 2.0 * nearest.double()).clamp_min(0.0).sqrt()  # Euclidean distance of unit vectors
        dist[~pools[q0:q0 + bq]] = math.inf  # not in the pool (the image itself included): never among the k
        smallest = dist.topk(k, dim=1, largest=False).values  # (bq, k, P)
        out[q0:q0 + bq] = smallest.mean(dim=1)
    return out


# ------------------------------------------------------------------------------------------------------ RsCIN


def rscin(scores, cls_tokens: torch.Tensor, windows: Sequence[int] = (1, 2, 3),
          pools: torch.Tensor | None = None) -> np.ndarray:
    """RsCIN: image scores re-scored by their neighbours in the class-token graph.

    Parameters
    ----------
    scores : (N,) image scores.
    cls_tokens : (N, D) image embeddings (normalised here).
    windows : the k values; each keeps the k largest similarities of a row (the image itself included); empty: the
        scores are returned unchanged (as are they, in the official code, with a 0 among the windows).
    pools : optional (N, N) bool of allowed neighbours besides the image itself (:func:`reference_pools`).

    Returns
    -------
    numpy.ndarray
        (N,) float64 re-scored values: min-max normalised scores averaged over each window's neighbours, then over
        the windows.
    """
    s = np.asarray(scores, dtype=np.float64)
    n = len(s)
    windows = tuple(int(k) for k in windows)
    if not windows or 0 in windows:
        return s.copy()
    if max(windows) > n:
        raise ValueError(f"RsCIN window {max(windows)} is larger than the class ({n} images): use smaller "
                         "rscin_k values or () for no re-scoring")
    span = s.max() - s.min()
    norm = (s - s.min()) / span if span > 0 else np.zeros_like(s)
    c = F.normalize(cls_tokens.double(), dim=-1)
    w = (c @ c.T).cpu()
    if pools is not None:
        allowed = pools.to(torch.bool).cpu() | torch.eye(n, dtype=torch.bool)
        if max(windows) > int(allowed.sum(1).min()):
            raise ValueError(f"RsCIN window {max(windows)} is larger than the neighbourhood pool "
                             f"({int(allowed.sum(1).min())} images with the image itself)")
        w = w.masked_fill(~allowed, -math.inf)
    out = np.zeros(n)
    t = torch.from_numpy(norm)
    for k in windows:
        vals, idx = w.topk(k, dim=1)  # the k most similar images per row (ties: torch's order)
        sums = vals.sum(1)
        if (sums <= 0).any():
            raise ValueError(f"RsCIN window {k}: the kept similarities of an image sum to <= 0; re-scoring "
                             "is undefined (use rscin_k=() for none)")
        out += ((vals / sums[:, None]) * t[idx]).sum(1).numpy()
    return out / len(windows)


# ---------------------------------------------------------------------------------------------- the method


def musc(layer_tokens: Mapping[int, torch.Tensor], cls_tokens: torch.Tensor, cfg: MuscConfig, *,
         map_size: int, has_cls: bool = True) -> MethodOutput:
    """MuSc on the test images of one class.

    Parameters
    ----------
    layer_tokens : ``{layer: (N, 1 + P, C)}`` tokens of each chosen layer (CLS first when ``has_cls``), all of one
        patch grid; a single entry for ``features="clip"`` / ``"gem"``.
    cls_tokens : (N, D) image embeddings for RsCIN (CLIP's ``encode_image``, i.e. the CLS of the ordinary stream).
    cfg : :class:`MuscConfig` (validated here).
    map_size : side of the output maps in px (the evaluation size).
    has_cls : whether token 0 of ``layer_tokens`` is a CLS token.

    Returns
    -------
    MethodOutput
        ``scores`` (N,) float64 (RsCIN-re-scored unless ``rscin_k=()``), ``maps`` (N, map_size, map_size)
        float32, ``info`` with the layers, degrees, k of the 30 % rule, the pool size and the raw maximum scores.
    """
    cfg = cfg.validated()
    if not layer_tokens:
        raise ValueError("musc needs the tokens of at least one layer")
    shapes = {tuple(t.shape[:2]) for t in layer_tokens.values()}
    if len(shapes) != 1:
        raise ValueError(f"the layers' tokens differ in shape: {sorted(shapes)}")
    n = next(iter(layer_tokens.values())).shape[0]
    if cls_tokens.shape[0] != n:
        raise ValueError(f"{cls_tokens.shape[0]} class tokens for {n} images")
    check_class_size(n, cfg)  # before any work
    pools = reference_pools(n, cfg.pool_fraction, cfg.pool_seed)
    k = _k_smallest(int(pools[0].sum()), cfg.topmin_max)
    grid = patch_grid(next(iter(layer_tokens.values()))) if has_cls else int(round(math.sqrt(shapes.pop()[1])))
    normed = [_normalised_map(t, has_cls) for t in layer_tokens.values()]  # once per layer, for every r
    per_r = []
    for r in cfg.r_list:
        per_layer = [mutual_scores(_aggregate(x, r), topmin_max=cfg.topmin_max, pools=pools, chunk_mb=cfg.chunk_mb)
                     for x in normed]
        per_r.append(torch.stack(per_layer).mean(0))  # mean over layers (float64)
    patch_map = torch.stack(per_r).mean(0).reshape(n, 1, grid, grid)  # then over the degrees r
    maps = F.interpolate(patch_map, size=(map_size, map_size), mode="bilinear", align_corners=True)[:, 0]
    raw = maps.reshape(n, -1).amax(-1).numpy()
    scores = rscin(raw, cls_tokens, cfg.rscin_k, pools if cfg.pool_fraction < 1 else None)
    info = {"method": "musc", "layers": [int(x) for x in layer_tokens], "r_list": list(cfg.r_list), "k": k,
            "pool_size": int(pools[0].sum()), "grid": grid, "raw_scores": raw.tolist(),
            "rscin_k": list(cfg.rscin_k)}
    return MethodOutput(scores, maps.float().numpy(), info)
