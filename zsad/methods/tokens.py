"""The feature containers the methods score, and the window geometry WinCLIP and Tamura share.

Pure data and index arithmetic: the encoders that fill these containers live in :mod:`zsad.features` (tokens of the
CLIP and GEM streams) and :mod:`zsad.windows` (WinCLIP's window embeddings); the methods import only this module.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

__all__ = ["TokenSet", "WindowTokens", "window_masks", "DEFAULT_SCALES"]

DEFAULT_SCALES = (2, 3)


@dataclass
class TokenSet:
    """Normalised tokens of a list of images: ``clip[size]`` and ``gem[size]`` are (N, 1 + g*g, D), CLS first."""

    relpaths: list[str]
    clip: dict[int, torch.Tensor] = field(default_factory=dict)
    gem: dict[int, torch.Tensor] = field(default_factory=dict)

    def stream(self, name: str) -> dict[int, torch.Tensor]:
        if name not in ("clip", "gem"):
            raise ValueError(f"token stream must be 'clip' or 'gem', got {name!r}")
        return self.clip if name == "clip" else self.gem

    def __len__(self) -> int:
        return len(self.relpaths)


# ------------------------------------------------------------------------------------------------ window masks


def _grid_hw(grid) -> tuple[int, int]:
    if isinstance(grid, (tuple, list)):
        h, w = (int(g) for g in grid)
    else:
        h = w = int(grid)
    if h < 1 or w < 1:
        raise ValueError(f"grid must be positive, got {grid!r}")
    return h, w


def _starts(n: int, scale: int, stride: int) -> list[int]:
    """Top-left offsets along one axis; the last window is added when the stride would leave the edge uncovered."""
    starts = list(range(0, n - scale + 1, stride))
    if starts[-1] != n - scale:
        starts.append(n - scale)
    return starts


def window_masks(grid: int | tuple[int, int] = 15, scales: Sequence[int] = DEFAULT_SCALES, stride: int = 1
                 ) -> dict[int, torch.Tensor]:
    """Patch indices of every sliding window: ``{scale: LongTensor (n_windows, scale*scale)}``.

    Patches are numbered row-major on the ``grid`` (``row * width + col``, CLS not counted); windows are ordered
    row-major by their top-left patch, and the indices inside a window are row-major too. On the 15x15 grid with
    stride 1 there are 14*14 = 196 windows of 2x2 and 13*13 = 169 of 3x3 (as in anomalib, zqhang and caoyunkang).
    With a stride > 1 a last row/column of windows flush with the border is added where the stride would
    otherwise leave the border patches uncovered (anomalib's ``unfold`` would leave them out and give them a 0
    score), so every patch lies in at least one window of each scale.
    """
    h, w = _grid_hw(grid)
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be an int >= 1, got {stride!r}")
    out = {}
    for scale in scales:
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
            raise ValueError(f"window scales must be ints >= 1, got {scale!r}")
        if scale > h or scale > w:
            raise ValueError(f"window scale {scale} does not fit the {h}x{w} patch grid")
        rows = torch.tensor(_starts(h, scale, stride))
        cols = torch.tensor(_starts(w, scale, stride))
        top_left = (rows[:, None] * w + cols[None, :]).reshape(-1)  # (n_windows,)
        offs = (torch.arange(scale)[:, None] * w + torch.arange(scale)[None, :]).reshape(-1)  # (s*s,)
        out[int(scale)] = (top_left[:, None] + offs[None, :]).long()
    return out


@dataclass
class WindowTokens:
    """L2-normalised WinCLIP features of a list of images (float32, CPU).

    cls : (N, D) image embeddings; windows : ``{scale: (N, n_windows, D)}``; patch : (N, h*w, D') full-scale
    patch tokens of ``patch_stream``; ``grid`` = (h, w) patch grid; ``stride`` of the windows; ``size`` in px.
    """

    relpaths: list[str]
    cls: torch.Tensor
    windows: dict[int, torch.Tensor]
    patch: torch.Tensor
    grid: tuple[int, int]
    stride: int = 1
    size: int = 240
    patch_stream: str = "ln_post"
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.relpaths)

    def subset(self, index) -> "WindowTokens":
        """The features of some images (``index``: int, slice or a sequence of positions)."""
        if isinstance(index, int):
            index = [index]
        if isinstance(index, slice):
            pos = list(range(len(self)))[index]
        else:
            pos = [int(i) for i in index]
        t = torch.as_tensor(pos, dtype=torch.long)
        return WindowTokens([self.relpaths[i] for i in pos], self.cls[t], {s: w[t] for s, w in self.windows.items()},
                            self.patch[t], self.grid, self.stride, self.size, self.patch_stream, dict(self.info))
