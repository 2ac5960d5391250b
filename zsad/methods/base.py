"""What every method returns, and small helpers methods share."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class MethodOutput:
    """Per-image results of one method on one class.

    ``scores`` is converted to float64 and ``maps`` to an array on construction.

    Attributes
    ----------
    scores : numpy.ndarray
        (N,) float64 image anomaly scores (higher = more anomalous).
    maps : numpy.ndarray
        (N, H, W) anomaly maps, float32 or uint8, at the method's output size (the study resizes them to the
        evaluation size when it differs).
    info : dict, default {}
        Anything per run worth recording (e.g. which references were used), JSON-serialisable.

    Raises
    ------
    ValueError
        When ``scores`` is not 1-D, ``maps`` is not 3-D or they do not hold the same number of images.
    """

    scores: np.ndarray
    maps: np.ndarray
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        self.scores = np.asarray(self.scores, dtype=np.float64)
        self.maps = np.asarray(self.maps)
        if self.scores.ndim != 1 or self.maps.ndim != 3 or len(self.scores) != len(self.maps):
            raise ValueError(f"method output shapes do not fit: scores {self.scores.shape}, maps {self.maps.shape}")


def patch_grid(tokens: torch.Tensor) -> int:
    """Return the side of the square patch grid of a token tensor that includes the CLS token.

    Parameters
    ----------
    tokens : torch.Tensor
        (..., 1 + g*g, D) tokens, CLS first.

    Returns
    -------
    int
        The grid side ``g``.

    Raises
    ------
    ValueError
        When the number of patch tokens (all but the CLS token) is not a perfect square.
    """
    n = tokens.shape[-2] - 1
    g = int(round(n ** 0.5))
    if g * g != n:
        raise ValueError(f"{n} patch tokens do not form a square grid")
    return g


def resize_maps(maps: torch.Tensor, size: int) -> torch.Tensor:
    """Resize maps bilinearly to a square size (half-pixel centres, no antialias).

    Parameters
    ----------
    maps : torch.Tensor
        (N, h, w) maps.
    size : int
        Side of the output maps in pixels.

    Returns
    -------
    torch.Tensor
        (N, size, size) float maps; ``maps`` itself, unchanged (not cast), when it already has that size.
    """
    if maps.shape[-1] == size and maps.shape[-2] == size:
        return maps
    return F.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]
