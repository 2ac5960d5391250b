"""Dataset loaders: MVTec AD (and any MVTec-like tree), VisA, magnetic tile, and a plain folder.

Every loader returns ``ImageRecord`` lists sorted by ``(cls, split, relpath)`` and raises ``DatasetError`` with
the offending path and the problem for bad input. No pixels are decoded here; with ``validate=True`` (default)
the image and mask headers are opened to check that every file is a readable image and that every mask has its
image's size.

Layouts (``kind``):

``"mvtec"``
    ``<root>/<class>/train/good/*``, ``<root>/<class>/test/<good|defect>/*``,
    ``<root>/<class>/ground_truth/<defect>/<stem>_mask.png``. Any class names: a class is a subfolder of the
    root that contains ``train/`` or ``test/`` (so the synthetic tree and other MVTec-like datasets load too).
    Only ``train/good`` is read for training. Images: ``.png .jpg .jpeg .bmp .tif .tiff`` (any case); hidden
    files and other files are ignored.

    Masks are paired **by file name**: the mask of ``test/<defect>/<stem>.<ext>`` is
    ``ground_truth/<defect>/<stem>_mask.png`` (a ``<stem>_mask`` or ``<stem>`` file with another image extension
    is accepted as a fallback, e.g. for BTAD-like trees; a JPEG mask is binarised ``> 127`` by default, see
    ``load_mask``). FADE (and APRIL-GAN/AnomalyCLIP) pair the i-th sorted image with the i-th sorted mask of the
    folder; on the published MVTec AD both give the same pairs, but name-pairing cannot silently shift every
    later pair when one file is missing or extra. A missing mask is an error naming the image and the expected
    mask path.

``"magnetic_tile"``
    The MVTec layout for one class whose folder *is* the root (``<root>/train/good``, ``<root>/test/...``,
    ``<root>/ground_truth/...``); the class is called ``"magnetic_tile"``. Its masks have soft, anti-aliased
    edges, so its records carry ``mask_threshold=127`` (binarise ``> 127``, as the data's README says; FADE's
    ``!= 0`` would grow most masks by ~8 %, a few many-fold). Four "uneven" masks of the published data are all
    zero: those images keep label 1 (they add anomalous images but no anomalous pixels).

``"visa"``
    ``<root>/split_csv/1cls.csv`` (columns ``object,split,label,image,mask``; the file is published in the
    spot-diff repository, github.com/amazon-science/spot-diff) read against the raw VisA layout
    (``<root>/<class>/Data/Images/...``, ``<root>/<class>/Data/Masks/...``), as FADE does. ``normal`` -> defect
    ``"good"``, label 0; ``anomaly`` -> defect ``"anomaly"``, label 1. Paths are relative to the root. Masks hold
    class ids (binarised ``!= 0`` by ``load_mask``). Each record keeps its csv row index in ``source_order``
    (FADE's reference sampling indexes the csv order, which is not sorted). An image listed on two rows (twice
    in one split, or as both train and test, which would put a test image among the references) is refused
    with the csv's line numbers. A converted MVTec-like VisA tree (``visa_pytorch/1cls``) loads with
    ``kind="mvtec"``.

``"folder"``
    A plain folder holding one class, named after the folder::

        <root>/good/*                       normal test images (label 0)
        <root>/<defect>/*                   anomalous test images (label 1), any folder name but the three below
        <root>/masks/<defect>/<stem>_mask.png   optional masks (same pairing rules as MVTec)
        <root>/train/*  or  <root>/train/good/*  optional normal reference images (split "train")

    If ``masks/<defect>/`` exists, every image of ``<defect>`` needs its mask; without it the defect images
    have ``mask_path=None`` (image-level labels only; pixel metrics are then undefined, see ``has_masks``).
"""

from __future__ import annotations

import csv
import dataclasses
import os
from os import PathLike
from pathlib import Path
from typing import Iterable, Sequence

from .images import read_image_size
from .records import IMAGE_EXTENSIONS, DatasetError, ImageRecord

__all__ = [
    "DATASET_KINDS",
    "list_classes",
    "load_dataset",
    "class_prompt_name",
    "has_masks",
    "MAGNETIC_TILE_CLASS",
    "MASK_THRESHOLDS",
    "VISA_SPLIT_CSV",
]

DATASET_KINDS = ("mvtec", "visa", "magnetic_tile", "folder")
MAGNETIC_TILE_CLASS = "magnetic_tile"
#: default ``ImageRecord.mask_threshold`` per kind, 8-bit units (0 = the mask format's default: FADE's
#: ``value != 0`` for lossless files, ``> 127`` for JPEG; see ``load_mask``)
MASK_THRESHOLDS = {"mvtec": 0, "visa": 0, "magnetic_tile": 127, "folder": 0}
VISA_SPLIT_CSV = "split_csv/1cls.csv"
_SPLITS = ("train", "test")
_VISA_COLUMNS = ("object", "split", "label", "image", "mask")
_FOLDER_RESERVED = ("train", "masks", "good")


# ----------------------------------------------------------------------------------------------- helpers


def class_prompt_name(cls: str) -> str:
    """Return the class name as it goes into prompts: ``"metal_nut"`` -> ``"metal nut"``.

    FADE replaces ``_`` by a space.

    Parameters
    ----------
    cls : str
        The class name as in the dataset.

    Returns
    -------
    str
        ``cls`` with every ``_`` replaced by a space.
    """
    return cls.replace("_", " ")


def has_masks(records: Iterable[ImageRecord]) -> bool:
    """Tell whether every anomalous record has a mask file (pixel-level metrics are defined).

    Parameters
    ----------
    records : iterable of ImageRecord
        The records.

    Returns
    -------
    bool
        True when no record with label 1 has ``mask_path=None`` (also True without anomalous records).
    """
    return all(r.mask_path is not None for r in records if r.label == 1)


def _root(root: str | PathLike) -> Path:
    p = Path(os.path.abspath(os.path.expanduser(os.fspath(root))))
    if not p.exists():
        raise DatasetError(f"dataset root not found: {p}")
    if not p.is_dir():
        raise DatasetError(f"dataset root is not a folder: {p}")
    return p


def _check_split(split: str | None) -> None:
    if split is not None and split not in _SPLITS:
        raise DatasetError(f"unknown split {split!r}; expected 'train', 'test' or None")


def _is_image(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if _is_image(p)), key=lambda p: p.name)


def _subdirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _find_mask(mask_dir: Path, image: Path) -> Path:
    """Mask of ``image`` in ``mask_dir`` by name; ``DatasetError`` naming the image and expected path if absent."""
    expected = mask_dir / f"{image.stem}_mask.png"
    if expected.is_file():
        return expected
    for stem in (f"{image.stem}_mask", image.stem):
        for ext in IMAGE_EXTENSIONS:
            for cand in (mask_dir / f"{stem}{ext}", mask_dir / f"{stem}{ext.upper()}"):
                if cand.is_file():
                    return cand
    raise DatasetError(f"mask missing for defect image {image}: expected {expected}")


def _select_classes(available: Sequence[str], classes: str | Iterable[str] | None, where: Path) -> list[str]:
    if classes is None:
        return list(available)
    wanted = [classes] if isinstance(classes, str) else list(classes)
    if not wanted:
        raise DatasetError(f"no classes requested for {where}; available: {', '.join(available) or '(none)'}")
    unknown = [c for c in wanted if c not in available]
    if unknown:
        raise DatasetError(
            f"unknown class(es) {', '.join(map(repr, unknown))} in {where}; "
            f"available: {', '.join(available) or '(none)'}"
        )
    return sorted(set(wanted))


def _sort(records: list[ImageRecord]) -> list[ImageRecord]:
    return sorted(records, key=lambda r: (r.cls, r.split, r.relpath))


def _validate(records: Sequence[ImageRecord]) -> None:
    """Open every image header (and mask header) once; masks must have their image's size."""
    for r in records:
        size = read_image_size(r.path)
        if r.mask_path is not None:
            msize = read_image_size(r.mask_path)
            if msize != size:
                raise DatasetError(
                    f"mask {r.mask_path} is {msize[0]}x{msize[1]} but image {r.path} is "
                    f"{size[0]}x{size[1]} (width x height)"
                )


# ------------------------------------------------------------------------------------------ MVTec layout


def _mvtec_classes(root: Path) -> list[str]:
    names = [d.name for d in _subdirs(root) if (d / "train").is_dir() or (d / "test").is_dir()]
    if not names:
        raise DatasetError(
            f"no class folders in {root}: expected <root>/<class>/train/good and <root>/<class>/test/<defect> "
            "(MVTec AD layout)"
        )
    return names


def _load_mvtec_class(class_dir: Path, cls: str, root: Path, split: str | None) -> list[ImageRecord]:
    records: list[ImageRecord] = []
    if split in (None, "train"):
        for img in _images_in(class_dir / "train" / "good"):
            records.append(ImageRecord(img, _rel(img, root), cls, "train", 0, "good", None))
    if split in (None, "test"):
        for defect_dir in _subdirs(class_dir / "test"):
            defect = defect_dir.name
            for img in _images_in(defect_dir):
                if defect == "good":
                    records.append(ImageRecord(img, _rel(img, root), cls, "test", 0, "good", None))
                else:
                    mask = _find_mask(class_dir / "ground_truth" / defect, img)
                    records.append(ImageRecord(img, _rel(img, root), cls, "test", 1, defect, mask))
    if not records:
        which = "images" if split is None else f"{split} images"
        raise DatasetError(
            f"no {which} in class folder {class_dir} (expected image files in train/good/ and test/<defect>/)"
        )
    return records


# ------------------------------------------------------------------------------------------------- VisA


def _visa_rows(root: Path) -> list[tuple[int, int, dict[str, str]]]:
    """``(row index, line number, row)`` of every csv row; refuses an image listed on two rows."""
    csv_path = root / VISA_SPLIT_CSV
    if not csv_path.is_file():
        raise DatasetError(
            f"{csv_path} not found: the VisA root must contain {VISA_SPLIT_CSV} (the 1-class split published in "
            "the spot-diff repository, github.com/amazon-science/spot-diff), next to the raw class folders "
            "<class>/Data/Images/...; a converted MVTec-like VisA tree loads with kind='mvtec'"
        )
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in _VISA_COLUMNS if c not in header]
            if missing:
                raise DatasetError(
                    f"{csv_path}: missing column(s) {', '.join(missing)}; expected header "
                    f"{','.join(_VISA_COLUMNS)}"
                )
            rows = []
            for i, row in enumerate(reader):
                clean = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
                rows.append((i, reader.line_num, clean))  # line_num: the file's line (blank lines are skipped)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{csv_path}: cannot read csv ({exc})") from exc
    if not rows:
        raise DatasetError(f"{csv_path}: no rows")
    _visa_check_repeats(csv_path, rows)
    return rows


def _visa_check_repeats(csv_path: Path, rows: list[tuple[int, int, dict[str, str]]]) -> None:
    # A repeated image would be scored twice, and one listed as train and test would be its own reference.
    first: dict[str, tuple[int, str]] = {}
    repeats = []
    for _, line, row in rows:
        if not row["image"]:
            continue  # reported with its line by _load_visa
        rel = Path(row["image"]).as_posix()
        if rel in first:
            repeats.append((first[rel], (line, row["split"]), rel))
        else:
            first[rel] = (line, row["split"])
    if not repeats:
        return
    (line_a, split_a), (line_b, split_b), rel = repeats[0]
    more = f" ({len(repeats) - 1} more repeated row(s) in the file)" if len(repeats) > 1 else ""
    if {split_a, split_b} == set(_SPLITS):
        raise DatasetError(
            f"{csv_path} lines {line_a} ({split_a}) and {line_b} ({split_b}): image {rel} is listed as both train "
            f"and test (a test image must not be a reference image){more}"
        )
    raise DatasetError(f"{csv_path} lines {line_a} and {line_b}: image {rel} is listed twice{more}")


def _visa_classes(root: Path) -> list[str]:
    return sorted({row["object"] for _, _, row in _visa_rows(root)})


def _load_visa(root: Path, classes, split: str | None) -> list[ImageRecord]:
    rows = _visa_rows(root)
    csv_path = root / VISA_SPLIT_CSV
    available = sorted({row["object"] for _, _, row in rows})
    selected = _select_classes(available, classes, csv_path)
    records: list[ImageRecord] = []
    for i, line, row in rows:
        cls = row["object"]
        if cls not in selected:
            continue
        row_split = row["split"]
        if row_split not in _SPLITS:
            raise DatasetError(f"{csv_path} line {line}: split must be 'train' or 'test', got {row_split!r}")
        if split is not None and row_split != split:
            continue
        if row["label"] == "normal":
            label, defect = 0, "good"
        elif row["label"] == "anomaly":
            label, defect = 1, "anomaly"
        else:
            raise DatasetError(f"{csv_path} line {line}: label must be 'normal' or 'anomaly', got {row['label']!r}")
        if not row["image"]:
            raise DatasetError(f"{csv_path} line {line}: empty image path")
        relpath = Path(row["image"]).as_posix()
        image = root / relpath
        if not image.is_file():
            raise DatasetError(f"image file not found: {image} (referenced by {csv_path} line {line})")
        mask = None
        if label == 1:
            if not row["mask"]:
                raise DatasetError(f"mask missing for defect image {image}: {csv_path} line {line} has no mask path")
            mask = root / Path(row["mask"]).as_posix()
            if not mask.is_file():
                raise DatasetError(
                    f"mask missing for defect image {image}: {mask} not found (referenced by {csv_path} line {line})"
                )
        records.append(ImageRecord(image, relpath, cls, row_split, label, defect, mask, source_order=i))
    for cls in selected:
        if not any(r.cls == cls for r in records):
            which = "rows" if split is None else f"{split} rows"
            raise DatasetError(f"no {which} for class {cls!r} in {csv_path}")
    return records


# ------------------------------------------------------------------------------------------------ folder


def _load_folder(root: Path, split: str | None) -> list[ImageRecord]:
    cls = root.name
    records: list[ImageRecord] = []
    if split in (None, "train"):
        for img in _images_in(root / "train") + _images_in(root / "train" / "good"):
            records.append(ImageRecord(img, _rel(img, root), cls, "train", 0, "good", None))
    if split in (None, "test"):
        for img in _images_in(root / "good"):
            records.append(ImageRecord(img, _rel(img, root), cls, "test", 0, "good", None))
        for defect_dir in _subdirs(root):
            defect = defect_dir.name
            if defect in _FOLDER_RESERVED:
                continue
            mask_dir = root / "masks" / defect
            for img in _images_in(defect_dir):
                mask = _find_mask(mask_dir, img) if mask_dir.is_dir() else None
                records.append(ImageRecord(img, _rel(img, root), cls, "test", 1, defect, mask))
    if not records:
        which = "images" if split is None else f"{split} images"
        raise DatasetError(
            f"no {which} in folder {root}: expected good/* (normal), <defect>/* (anomalous), optional "
            "masks/<defect>/<stem>_mask.png and train/*"
        )
    return records


# ------------------------------------------------------------------------------------------------ public


def _kind_and_root(dataset: str, root) -> tuple[str, Path]:
    """``(loader kind, root)`` of a dataset name: ``synthetic`` is an MVTec-layout tree, and without ``root`` a
    name's configured default applies (the embedded data, ``$ZSAD_MVTEC_ROOT``, ``$ZSAD_VISA_ROOT``)."""
    if dataset in DATASET_KINDS and root is not None:
        return dataset, _root(root)
    from zsad.config import DATASETS, resolve_dataset

    if dataset not in DATASETS:
        raise DatasetError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    try:
        kind, path = resolve_dataset(dataset, root)
    except ValueError as exc:  # no root configured for this name
        raise DatasetError(str(exc)) from None
    return kind, _root(path)


def list_classes(kind: str, root: str | PathLike | None = None) -> list[str]:
    """Sorted class names of a dataset.

    Parameters
    ----------
    kind : str
        A dataset name or loader kind: ``synthetic``, ``magnetic_tile``, ``mvtec``, ``visa`` or ``folder``.
    root : str or os.PathLike, optional
        The dataset root; default: the name's configured root (see :func:`load_dataset`).

    Returns
    -------
    list of str
        The class names, sorted (``magnetic_tile``: ``["magnetic_tile"]``; ``folder``: the folder's name).

    Raises
    ------
    DatasetError
        An unknown dataset, a missing root, or a root without the layout's class folders (or VisA csv).
    """
    kind, r = _kind_and_root(kind, root)
    if kind == "mvtec":
        return _mvtec_classes(r)
    if kind == "visa":
        return _visa_classes(r)
    if kind == "magnetic_tile":
        if not ((r / "train").is_dir() or (r / "test").is_dir()):
            raise DatasetError(f"no train/ or test/ folder in magnetic-tile root {r} (MVTec layout, root = class)")
        return [MAGNETIC_TILE_CLASS]
    return [r.name]


def load_dataset(
    kind: str,
    root: str | PathLike | None = None,
    classes: str | Iterable[str] | None = None,
    split: str | None = None,
    *,
    validate: bool = True,
    mask_threshold: int | None = None,
) -> list[ImageRecord]:
    """Load the records of a dataset, sorted by ``(cls, split, relpath)``.

    Parameters
    ----------
    kind : str
        A dataset name or loader kind, the names the study uses: ``synthetic`` (the embedded MVTec-layout tree),
        ``magnetic_tile``, ``mvtec``, ``visa`` or ``folder`` (layouts in the module docstring).
    root : str or os.PathLike, optional
        The dataset root. None: the name's configured root (``synthetic`` and ``magnetic_tile``: the embedded
        data; ``mvtec`` / ``visa``: ``$ZSAD_MVTEC_ROOT`` / ``$ZSAD_VISA_ROOT``; ``folder``: an error).
    classes : str or iterable of str, optional
        A class name or names (None: all); an unknown name raises ``DatasetError`` listing the available ones.
    split : {"train", "test"}, optional
        One split, or None for both.
    validate : bool, default True
        Open every image and mask header (no pixel decode) to check that the files are readable images and that
        each mask has its image's size. Truncated pixel data is only found when the image is decoded
        (``load_image``).
    mask_threshold : int, optional
        Stored in every record, in 8-bit units 0..255 (``load_mask(record, size)`` binarises ``value >
        threshold``, values of 16-bit masks rescaled like images; 0 means the mask format's default: FADE's
        ``!= 0`` for lossless files, ``> 127`` for JPEG); None uses the kind's default (``MASK_THRESHOLDS``).

    Returns
    -------
    list of ImageRecord
        One record per image, sorted.

    Raises
    ------
    DatasetError
        An unknown dataset, split or class, a missing root, a ``mask_threshold`` outside 0..255, or a file that
        breaks the layout (named).
    """
    _check_split(split)
    kind, r = _kind_and_root(kind, root)
    if kind == "mvtec":
        selected = _select_classes(_mvtec_classes(r), classes, r)
        records = [rec for cls in selected for rec in _load_mvtec_class(r / cls, cls, r, split)]
    elif kind == "magnetic_tile":
        available = list_classes(kind, r)
        _select_classes(available, classes, r)
        records = _load_mvtec_class(r, MAGNETIC_TILE_CLASS, r, split)
    elif kind == "visa":
        records = _load_visa(r, classes, split)
    else:
        _select_classes([r.name], classes, r)
        records = _load_folder(r, split)
    threshold = MASK_THRESHOLDS[kind] if mask_threshold is None else int(mask_threshold)
    if not 0 <= threshold <= 255:
        raise DatasetError(f"mask_threshold must be in 0..255 (8-bit units), got {threshold}")
    if threshold:
        records = [dataclasses.replace(rec, mask_threshold=threshold) for rec in records]
    records = _sort(records)
    if validate:
        _validate(records)
    return records
