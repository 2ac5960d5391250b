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
    """Normalised tokens of a list of images, per stream and input size.

    Attributes
    ----------
    relpaths : list of str
        The images, in the order of the token rows; ``len(token_set)`` is their number.
    clip : dict of int to torch.Tensor, default {}
        ``clip[size]``: (N, 1 + g*g, D) tokens of the CLIP stream at input size ``size`` px, CLS first.
    gem : dict of int to torch.Tensor, default {}
        ``gem[size]``: (N, 1 + g*g, D) tokens of the GEM stream at input size ``size`` px, CLS first.
    """

    relpaths: list[str]
    clip: dict[int, torch.Tensor] = field(default_factory=dict)
    gem: dict[int, torch.Tensor] = field(default_factory=dict)

    def stream(self, name: str) -> dict[int, torch.Tensor]:
        """Return one stream's tokens by name.

        Parameters
        ----------
        name : {"clip", "gem"}
            The stream.

        Returns
        -------
        dict of int to torch.Tensor
            ``self.clip`` or ``self.gem`` (the same object, not a copy).

        Raises
        ------
        ValueError
            When ``name`` is neither ``"clip"`` nor ``"gem"``.
        """
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
    """Return the patch indices of every sliding window, per window scale.

    Patches are numbered row-major on the ``grid`` (``row * width + col``, CLS not counted); windows are ordered
    row-major by their top-left patch, and the indices inside a window are row-major too. On the 15x15 grid with
    stride 1 there are 14*14 = 196 windows of 2x2 and 13*13 = 169 of 3x3 (as in anomalib, zqhang and caoyunkang).
    With a stride > 1 a last row/column of windows flush with the border is added where the stride would
    otherwise leave the border patches uncovered (anomalib's ``unfold`` would leave them out and give them a 0
    score), so every patch lies in at least one window of each scale.

    Parameters
    ----------
    grid : int or tuple of (int, int), default 15
        Patch grid: a side (square grid) or ``(height, width)``.
    scales : sequence of int, default ``DEFAULT_SCALES`` = (2, 3)
        Window sides in patches.
    stride : int, default 1
        Step between neighbouring windows, in patches.

    Returns
    -------
    dict of int to torch.Tensor
        ``{scale: LongTensor (n_windows, scale*scale)}``.

    Raises
    ------
    ValueError
        When the grid is not positive, ``stride`` is not an int >= 1, a scale is not an int >= 1 or a scale does
        not fit the grid.
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

    Attributes
    ----------
    relpaths : list of str
        The images, in the order of the feature rows; ``len(window_tokens)`` is their number.
    cls : torch.Tensor
        (N, D) image embeddings.
    windows : dict of int to torch.Tensor
        ``{scale: (N, n_windows, D)}`` window embeddings.
    patch : torch.Tensor
        (N, h*w, D') full-scale patch tokens of ``patch_stream``.
    grid : tuple of (int, int)
        (h, w) patch grid.
    stride : int, default 1
        Stride of the windows, in patches.
    size : int, default 240
        Input image size in px.
    patch_stream : str, default "ln_post"
        Which stream ``patch`` was taken from.
    info : dict, default {}
        Free-form record of how the features were made.
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
        """Return the features of some images.

        Parameters
        ----------
        index : int, slice or sequence of int
            Positions of the images to keep (an int keeps one image, still with a leading axis).

        Returns
        -------
        WindowTokens
            A new container with the selected rows, the same geometry and a shallow copy of ``info``.
        """
        if isinstance(index, int):
            index = [index]
        if isinstance(index, slice):
            pos = list(range(len(self)))[index]
        else:
            pos = [int(i) for i in index]
        t = torch.as_tensor(pos, dtype=torch.long)
        return WindowTokens([self.relpaths[i] for i in pos], self.cls[t], {s: w[t] for s, w in self.windows.items()},
                            self.patch[t], self.grid, self.stride, self.size, self.patch_stream, dict(self.info))
