"""PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022), k-shot.

A pure function of patch features (made by :func:`zsad.cnn.extract_patch_features`: WideResNet-50-2 layer2+layer3,
3x3 local aggregation, 1024 dims on a 28x28 grid at 224 px):

1. Memory bank ``M``: every patch feature of the k normal reference images (``k * h * w`` vectors).
2. Coreset (paper sec. 3.2, Algorithm 1): greedy k-center selection of ``max(1, int(coreset_ratio * |M|))``
   patches. Distances are computed on a seeded Gaussian random projection of the features to ``projection_dim``
   (128) dimensions (Johnson-Lindenstrauss, as in the paper), starting from a seeded random patch and repeatedly
   adding the patch farthest from the selected set. ``coreset_ratio=1.0`` keeps the whole bank. With k-shot the
   bank is small (784 patches per reference image), so the default ratio 0.1 keeps ~78 patches per image.
3. Patch score: Euclidean distance of each test patch to its nearest memory patch (exact; ``torch.cdist`` in
   chunks finds the neighbour, the distance to it is then recomputed directly so that a test patch equal to a
   memory patch scores exactly 0).
4. Anomaly map: the grid of patch scores, upsampled bilinearly (``align_corners=False``) to ``map_size`` and blurred
   with a Gaussian of sigma 4 px (the paper's value, applied there to 224 px maps; here scaled with
   ``map_size / 224`` so the blur covers the same fraction of the image at any output size; scipy's
   ``gaussian_filter``, mode ``reflect``, truncate 4 sigma, as in the paper's code).
5. Image score: the maximum of the **un-blurred** patch scores (what the paper's code does; ``neighbours=0``, the
   default). ``neighbours=b >= 2`` applies the paper's eq. 7 instead: with ``m_test*`` the test patch of maximal
   score ``s*`` and ``m*`` its nearest memory patch, ``s = (1 - exp(|m_test* - m*|) / sum_{m in N_b(m*)}
   exp(|m_test* - m|)) * s*`` where ``N_b(m*)`` are the b nearest memory patches of ``m*`` (itself included).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from zsad.methods.base import MethodOutput

__all__ = ["PatchCoreConfig", "greedy_coreset", "coreset_size", "nearest_memory", "patchcore"]

#: the image size the paper's blur sigma refers to
PAPER_SIZE = 224


@dataclass(frozen=True)
class PatchCoreConfig:
    """Options of a PatchCore run (defaults: the paper's, with the image score of its code).

    Attributes
    ----------
    coreset_ratio : float, default 0.1
        Fraction of the memory bank kept by the greedy coreset, in (0, 1]; 1.0: no subsampling.
    projection_dim : int, optional, default 128
        Dimension of the random projection used for the coreset distances; None: full dimension.
    seed : int, default 0
        Seed of the coreset's projection and starting patch.
    neighbours : int, default 0
        0: image score = max patch score; b >= 2: the paper's eq. 7 reweighting over ``N_b(m*)``.
    blur_sigma : float, default 4.0
        Gaussian sigma in pixels of a 224 px map (scaled with ``map_size``); 0: no blur.
    chunk_elements : int, default ``1 << 25``
        Bound on (test patches x memory patches) per distance chunk.
    """

    coreset_ratio: float = 0.1  # fraction of the memory bank kept by the greedy coreset; 1.0: no subsampling
    projection_dim: int | None = 128  # random projection used for the coreset distances; None: full dimension
    seed: int = 0  # seed of the coreset's projection and starting patch
    neighbours: int = 0  # 0: image score = max patch score; b >= 2: the paper's eq. 7 reweighting over N_b(m*)
    blur_sigma: float = 4.0  # Gaussian sigma in pixels of a 224 px map (scaled with map_size); 0: no blur
    chunk_elements: int = 1 << 25  # bound on (test patches x memory patches) per distance chunk

    def validated(self) -> "PatchCoreConfig":
        """Check the options and return the config itself.

        Returns
        -------
        PatchCoreConfig
            ``self``, unchanged.

        Raises
        ------
        ValueError
            When ``coreset_ratio`` is not in (0, 1], ``projection_dim`` is < 1, ``neighbours`` is negative or 1,
            ``blur_sigma`` is negative or ``chunk_elements`` is < 1.
        """
        if not (0.0 < float(self.coreset_ratio) <= 1.0):
            raise ValueError(f"coreset_ratio must be in (0, 1], got {self.coreset_ratio}")
        if self.projection_dim is not None and int(self.projection_dim) < 1:
            raise ValueError(f"projection_dim must be >= 1 or None, got {self.projection_dim}")
        if self.neighbours < 0 or self.neighbours == 1:
            raise ValueError(f"neighbours must be 0 (max patch score) or >= 2 (eq. 7), got {self.neighbours}")
        if self.blur_sigma < 0:
            raise ValueError(f"blur_sigma must be >= 0, got {self.blur_sigma}")
        if self.chunk_elements < 1:
            raise ValueError(f"chunk_elements must be >= 1, got {self.chunk_elements}")
        return self


def coreset_size(n_memory: int, ratio: float) -> int:
    """Return the number of patches the coreset keeps.

    Parameters
    ----------
    n_memory : int
        Size of the memory bank.
    ratio : float
        The coreset ratio.

    Returns
    -------
    int
        ``n_memory`` for ``ratio >= 1``, else ``max(1, int(ratio * n_memory))``.
    """
    return n_memory if ratio >= 1.0 else max(1, int(ratio * n_memory))


def _as_float(x) -> torch.Tensor:
    x = torch.as_tensor(x)
    if not x.is_floating_point():
        x = x.float()
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def greedy_coreset(features, n: int, seed: int = 0, projection_dim: int | None = 128) -> torch.Tensor:
    """Choose ``n`` rows of ``features`` by greedy k-center selection.

    Starts from a row drawn with ``torch.Generator().manual_seed(seed)`` and repeatedly adds the row whose distance
    to the selected set is largest (first index on ties; a row is never chosen twice, so duplicate rows are picked
    only once the distinct ones are exhausted). When ``D > projection_dim`` the distances are computed on
    ``features @ P`` with ``P`` a (D, projection_dim) Gaussian matrix (entries N(0, 1/projection_dim)) from the same
    generator. ``n >= M`` returns ``arange(M)``. The global RNG is not used.

    Parameters
    ----------
    features : array_like or torch.Tensor
        (M, D) rows to choose from (non-floating and half-precision inputs are cast to float32).
    n : int
        Number of rows to choose, >= 1.
    seed : int, default 0
        Seed of the starting row and of the projection.
    projection_dim : int, optional, default 128
        Dimension of the random projection; None: distances in the full dimension.

    Returns
    -------
    torch.Tensor
        (min(n, M),) int64 row indices, in selection order.

    Raises
    ------
    ValueError
        When ``features`` is not a non-empty 2-D array or ``n`` is not an int >= 1.
    """
    x = _as_float(features)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"features must be a non-empty (M, D) array, got shape {tuple(x.shape)}")
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    m, d = x.shape
    if n >= m:
        return torch.arange(m, dtype=torch.int64)
    g = torch.Generator().manual_seed(int(seed))
    if projection_dim is not None and d > projection_dim:
        proj = torch.randn(d, int(projection_dim), generator=g, dtype=torch.float32) / math.sqrt(projection_dim)
        x = x.float() @ proj.to(x.device)
    start = int(torch.randint(m, (1,), generator=g).item())
    selected = torch.empty(int(n), dtype=torch.int64)
    selected[0] = start
    # squared distance of every row to the selected set; -1 marks selected rows so they are never picked again
    min_d = ((x - x[start]) ** 2).sum(dim=1)
    min_d[start] = -1.0
    for k in range(1, int(n)):
        i = int(torch.argmax(min_d).item())
        selected[k] = i
        min_d = torch.minimum(min_d, ((x - x[i]) ** 2).sum(dim=1))
        min_d[i] = -1.0
    return selected


def nearest_memory(queries, memory, chunk_elements: int = 1 << 25) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the Euclidean distance of each query row to its nearest memory row, and that row's index.

    ``torch.cdist`` in chunks of at most ``chunk_elements`` distances finds the neighbour; the returned distance is
    recomputed exactly as ``|q - memory[index]|`` (the matrix-product form of cdist is not exact near 0).

    Parameters
    ----------
    queries : array_like or torch.Tensor
        (Q, D) query rows.
    memory : array_like or torch.Tensor
        (B, D) memory rows, B >= 1 (moved to the queries' device and dtype).
    chunk_elements : int, default ``1 << 25``
        Bound on query rows x memory rows per chunk (at least one query row per chunk).

    Returns
    -------
    distances : torch.Tensor
        (Q,) distances.
    index : torch.Tensor
        (Q,) int64 index of each query's nearest memory row.

    Raises
    ------
    ValueError
        When the inputs are not 2-D, differ in D, or the memory is empty.
    """
    q = _as_float(queries)
    mem = _as_float(memory).to(q.device, q.dtype)
    if q.ndim != 2 or mem.ndim != 2 or q.shape[1] != mem.shape[1] or len(mem) == 0:
        raise ValueError(f"queries (Q, D) and memory (B, D) must share D, got {tuple(q.shape)} and {tuple(mem.shape)}")
    rows = max(1, int(chunk_elements) // len(mem))
    dists, index = [], []
    for start in range(0, len(q), rows):
        part = q[start:start + rows]
        idx = torch.cdist(part, mem).argmin(dim=1)
        dists.append(torch.linalg.vector_norm(part - mem[idx], dim=1))
        index.append(idx)
    if not dists:
        return torch.empty(0, dtype=q.dtype, device=q.device), torch.empty(0, dtype=torch.int64, device=q.device)
    return torch.cat(dists), torch.cat(index)


def _reweighted(test: torch.Tensor, patch: torch.Tensor, nn_index: torch.Tensor, memory: torch.Tensor,
                b: int) -> torch.Tensor:
    """Eq. 7 of the paper for each image: (N,) scores from (N, P, D) test features and (N, P) patch scores."""
    best = patch.argmax(dim=1)  # (N,)
    rows = torch.arange(len(test), device=test.device)
    m_test = test[rows, best]  # (N, D)
    s_star = patch[rows, best]  # (N,)
    m_star = memory[nn_index[rows, best]]  # (N, D)
    b = min(int(b), len(memory))
    support = torch.cdist(m_star, memory).topk(b, dim=1, largest=False).indices  # (N, b), m* itself first
    d = torch.linalg.vector_norm(m_test[:, None, :] - memory[support], dim=-1)  # (N, b)
    # exp(s*) / sum_j exp(d_j), computed stably (s* = |m_test* - m*| is d of m* itself)
    ratio = torch.exp(s_star - torch.logsumexp(d, dim=1))
    return (1.0 - ratio) * s_star


def patchcore(test_features, ref_features, grid: tuple[int, int], cfg: PatchCoreConfig | None = None,
              map_size: int = 224) -> MethodOutput:
    """Score test images against a memory bank built from k normal reference images.

    The steps are those of the module docstring.

    Parameters
    ----------
    test_features : array_like or torch.Tensor
        (N, h*w, D) patch features of the test images (row-major over the grid).
    ref_features : array_like or torch.Tensor
        (K, h*w, D) patch features of the reference images, or an (M, D) memory bank.
    grid : tuple of (int, int)
        (h, w) of the patch grid.
    cfg : PatchCoreConfig, optional
        The options (validated here); None: defaults.
    map_size : int, default 224
        Side of the returned square maps in px.

    Returns
    -------
    MethodOutput
        ``scores`` (N,), ``maps`` (N, map_size, map_size) float32 >= 0 and ``info`` (memory-bank and coreset
        sizes, the blur sigma used, the image-score rule).

    Raises
    ------
    ValueError
        When the config is invalid, the features do not fit ``grid`` or each other, or ``map_size`` is not a
        positive int.
    """
    cfg = (cfg or PatchCoreConfig()).validated()
    test = _as_float(test_features)
    ref = _as_float(ref_features).to(test.device, test.dtype)
    h, w = (int(v) for v in grid)
    if test.ndim != 3 or test.shape[1] != h * w:
        raise ValueError(f"test_features must be (N, {h}*{w}, D), got {tuple(test.shape)}")
    if ref.ndim not in (2, 3) or ref.shape[-1] != test.shape[-1] or ref.numel() == 0:
        raise ValueError(f"ref_features must be (K, P, {test.shape[-1]}) or (M, {test.shape[-1]}), "
                         f"got {tuple(ref.shape)}")
    if isinstance(map_size, bool) or int(map_size) != map_size or map_size < 1:
        raise ValueError(f"map_size must be a positive int, got {map_size!r}")
    n, p, d = test.shape
    bank = ref.reshape(-1, d)
    n_core = coreset_size(len(bank), cfg.coreset_ratio)
    memory = bank if n_core >= len(bank) else bank[greedy_coreset(bank, n_core, cfg.seed, cfg.projection_dim)
                                                    .to(bank.device)]
    dist, nn_index = nearest_memory(test.reshape(-1, d), memory, cfg.chunk_elements)
    patch = dist.reshape(n, p)
    if cfg.neighbours:
        scores = _reweighted(test, patch, nn_index.reshape(n, p), memory, cfg.neighbours)
    else:
        scores = patch.amax(dim=1)
    grid_maps = patch.reshape(n, 1, h, w)
    up = F.interpolate(grid_maps, size=(int(map_size), int(map_size)), mode="bilinear", align_corners=False)[:, 0]
    maps = up.cpu().numpy().astype(np.float32)
    sigma = cfg.blur_sigma * map_size / PAPER_SIZE
    if sigma > 0:
        maps = gaussian_filter(maps, sigma=(0.0, sigma, sigma), mode="reflect", truncate=4.0)
    maps = np.maximum(maps, 0.0, out=maps)
    info = {
        "memory_patches": int(len(bank)),
        "coreset_patches": int(len(memory)),
        "coreset_ratio": float(cfg.coreset_ratio),
        "projection_dim": cfg.projection_dim,
        "coreset_seed": int(cfg.seed),
        "grid": [h, w],
        "feature_dim": int(d),
        "blur_sigma_px": float(sigma),
        "image_score": "max patch score" if not cfg.neighbours else f"eq. 7 reweighting, b={cfg.neighbours}",
    }
    return MethodOutput(scores.detach().cpu().numpy().astype(np.float64), maps, info)
