"""The record type every loader returns, and the one error type of the data layer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["ImageRecord", "DatasetError", "IMAGE_EXTENSIONS"]

#: File name suffixes (lower case) that the folder-based loaders treat as images.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class DatasetError(ValueError):
    """Bad dataset input. The message always names the offending file or folder and the problem."""


@dataclass(frozen=True)
class ImageRecord:
    """One image of a dataset, with its label and (for anomalous test images) its mask file.

    Attributes
    ----------
    path : pathlib.Path
        Absolute path of the image.
    relpath : str
        Posix path relative to the dataset root; this is what goes into results files.
    cls : str
        Class name as in the dataset (e.g. ``"metal_nut"``); see ``class_prompt_name`` for prompts.
    split : {"train", "test"}
        The split.
    label : int
        0 normal, 1 anomalous.
    defect : str
        ``"good"`` or the defect type folder name (``"anomaly"`` for VisA).
    mask_path : pathlib.Path or None
        Mask file of an anomalous image, ``None`` for normal images (and for anomalous images of a ``folder``
        dataset that ships no masks). A mask file may be all zero (magnetic tile has 4 such "uneven" images): the
        image stays anomalous, it simply contributes no anomalous pixels.
    source_order : int, optional
        Position of the image in the dataset's own listing, where that listing is not the sorted path order: for
        VisA the row index in ``split_csv/1cls.csv``. ``None`` (default) for the folder layouts (MVTec AD, magnetic
        tile, folder, synthetic), whose listing order is the sorted path order. Used by the ``"fade"`` reference
        sampler to index the same list FADE's data loader shuffles.
    mask_threshold : int, default 0
        Mask pixel values above it are anomalous, in 8-bit units (0..255; 16-bit masks are rescaled like images
        first). 0 (default) is the mask format's default: FADE's rule (``value != 0``) for lossless files, right
        for MVTec AD, VisA (class ids) and the synthetic masks, and ``> 127`` for JPEG masks (compression
        ringing); magnetic tile uses 127 because its masks have soft, anti-aliased edges (``!= 0`` would grow
        them by a median 8 %, some many-fold). ``load_mask(record, size)`` applies it (rule in
        ``zsad.data.images``).
    """

    path: Path
    relpath: str
    cls: str
    split: str
    label: int
    defect: str
    mask_path: Path | None
    source_order: int | None = None
    mask_threshold: int = 0
