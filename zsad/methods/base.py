"""What every method returns, and small helpers methods share."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class MethodOutput:
    """Per-image results of one method on one class.

    scores : (N,) float64 image anomaly scores (higher = more anomalous)
    maps : (N, H, W) anomaly maps, float32 or uint8, at the method's output size (the study resizes them to the
        evaluation size when it differs)
    info : anything per run worth recording (e.g. which references were used), JSON-serialisable
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
    """Side of the square patch grid of a token tensor (..., 1 + g*g, D) that includes the CLS token."""
    n = tokens.shape[-2] - 1
    g = int(round(n ** 0.5))
    if g * g != n:
        raise ValueError(f"{n} patch tokens do not form a square grid")
    return g


def resize_maps(maps: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of (N, h, w) float maps to (N, size, size) (half-pixel centres, no antialias)."""
    if maps.shape[-1] == size and maps.shape[-2] == size:
        return maps
    return F.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]
