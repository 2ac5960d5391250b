"""Reading images and masks, and the one preprocessing function (FADE's, exactly).

Everything that turns a file into pixels lives here, so that every method sees the same pixels:

- ``load_image``: any common file -> 8-bit RGB ``PIL.Image`` (full decode, clear errors).
- ``preprocess``: RGB image -> normalised CLIP input tensor, exactly as FADE builds it.
- ``load_mask``: mask file -> boolean ``(size, size)`` tensor, exactly as FADE builds it.
- ``read_image_size``: header-only ``(width, height)``, for cheap validation.

Mode handling of ``load_image`` (decided here, tested in ``tests/test_data.py``):

- ``RGB``: unchanged. ``L``, ``1``, ``P``, ``CMYK``, ``YCbCr``: PIL's ``convert("RGB")``, as FADE does
  (``PIL.Image.open(p).convert("RGB")``), so grey images become three equal channels and palettes are looked up.
- Alpha (``RGBA``, ``LA``, ``PA``, palette images with a transparency entry): the alpha channel is **dropped**,
  not composited: each pixel keeps its stored colour. This is what ``convert("RGB")`` does and therefore what
  FADE feeds its model; compositing onto a background would change the pixels of partly transparent images.
- 16-bit grey (``I;16``, ``I;16B``, ``I;16L``, and ``I``, the mode older Pillow versions give 16-bit PNGs): scaled
  over the full 16-bit range, ``v8 = round(v16 * 255 / 65535)`` (= ``round(v16 / 257)``; values outside
  ``[0, 65535]`` are clipped first), then grey -> RGB. PIL's own ``convert("L")`` of these modes clips at 255
  instead of scaling, which turns almost every real 16-bit image white. (16-bit *colour* PNGs are already
  reduced to 8-bit ``RGB`` by Pillow's decoder.)
- 32-bit float (``F``): values are taken as 0..255, clipped and rounded.
- Multi-frame files (TIFF, GIF): the first frame. EXIF orientation is **not** applied (neither FADE nor the
  datasets' masks do), so pixels stay aligned with their masks.
"""

from __future__ import annotations

import functools
from os import PathLike
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from .records import DatasetError, ImageRecord

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "load_image",
    "to_rgb",
    "preprocess",
    "clip_transform",
    "load_mask",
    "read_image_size",
]

#: OpenAI CLIP normalisation constants (the values FADE uses; open_clip's OPENAI_DATASET_MEAN/STD).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_file(path: Path, what: str) -> None:
    if not path.exists():
        raise DatasetError(f"{what} not found: {path}")
    if not path.is_file():
        raise DatasetError(f"{what} is not a file: {path}")


def to_rgb(image: Image.Image, *, source: str | PathLike | None = None) -> Image.Image:
    """Convert a decoded PIL image of any supported mode to 8-bit RGB (rules in the module docstring)."""
    mode = image.mode
    where = f"{source}: " if source is not None else ""
    if mode == "RGB":
        return image.copy()
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.float64)
        grey = np.rint(np.clip(values, 0.0, 65535.0) / 257.0).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "F":
        values = np.asarray(image).astype(np.float64)
        grey = np.rint(np.clip(np.nan_to_num(values), 0.0, 255.0)).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    try:
        if mode == "P" and "transparency" in image.info:
            # via RGBA (keeps every palette colour, then drops alpha) to avoid PIL's transparency warning
            return image.convert("RGBA").convert("RGB")
        if mode in ("LA", "La"):
            return image.getchannel(0).convert("RGB")
        if mode == "PA":
            return image.convert("RGBA").convert("RGB")
        return image.convert("RGB")
    except ValueError as exc:
        raise DatasetError(f"{where}unsupported image mode {mode!r} ({_describe(exc)})") from exc


def load_image(path: str | PathLike) -> Image.Image:
    """Read an image file fully (forcing a complete decode) and return it as 8-bit RGB.

    Raises ``DatasetError`` naming the file for a missing file, an unidentifiable or truncated image, or an
    unsupported mode.
    """
    p = Path(path)
    _check_file(p, "image file")
    try:
        with Image.open(p) as im:
            im.load()  # force the full decode so truncated files fail here, not later in a transform
            return to_rgb(im, source=p)
    except DatasetError:
        raise
    except _READ_ERRORS as exc:
        raise DatasetError(f"{p}: cannot read image ({_describe(exc)})") from exc


def read_image_size(path: str | PathLike) -> tuple[int, int]:
    """``(width, height)`` from the file header only (no pixel decode). ``DatasetError`` if unreadable."""
    p = Path(path)
    _check_file(p, "image file")
    try:
        with Image.open(p) as im:
            return (int(im.size[0]), int(im.size[1]))
    except _READ_ERRORS as exc:
        raise DatasetError(f"{p}: cannot read image header ({_describe(exc)})") from exc


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or int(size) < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    return int(size)


@functools.lru_cache(maxsize=16)
def clip_transform(size: int) -> transforms.Compose:
    """FADE's image transform for one square size: ``Resize((s, s), bicubic)`` -> ``ToTensor`` -> ``Normalize``.

    The aspect ratio is not preserved and there is no centre crop (FADE's ``--square`` default). On a PIL input
    torchvision's ``Resize`` calls PIL's own bicubic resize, which always antialiases (PIL's filter support
    scales with the downsampling factor); the ``antialias`` argument only affects tensor inputs, so leaving it
    at its default cannot change the result here.
    """
    size = _check_size(size)
    return transforms.Compose(
        [
            transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.ToTensor(),
            transforms.Normalize(mean=CLIP_MEAN, std=CLIP_STD),
        ]
    )


def preprocess(image: Image.Image | str | PathLike, size: int) -> torch.Tensor:
    """Turn an image into a ``(3, size, size)`` float32 CLIP input, exactly as FADE does.

    ``image`` is a PIL image (converted to RGB by ``to_rgb`` if it is not RGB already) or a path (read with
    ``load_image``). See ``clip_transform`` for the transform itself.
    """
    size = _check_size(size)
    if isinstance(image, (str, PathLike)):
        image = load_image(image)
    elif not isinstance(image, Image.Image):
        raise TypeError(f"preprocess expects a PIL image or a path, got {type(image).__name__}")
    elif image.mode != "RGB":
        image = to_rgb(image)
    return clip_transform(size)(image)


def load_mask(
    path_or_none: str | PathLike | ImageRecord | None,
    size: int,
    *,
    image_size: tuple[int, int] | None = None,
    image_path: str | PathLike | None = None,
    threshold: int | None = None,
) -> torch.Tensor:
    """Read a ground-truth mask as a boolean ``(size, size)`` tensor, exactly as FADE does.

    FADE's recipe: take the stored pixel values (palette *indices* for ``P`` images, class ids for VisA),
    binarise ``value != 0``, resize the float 0/1 map to ``(size, size)`` with torchvision's default for tensors
    (bilinear, antialias on), and threshold ``> 0.5``. Multi-channel masks count a pixel as anomalous when any
    colour channel passes (an alpha channel is ignored).

    ``path_or_none`` is a mask path, ``None`` (a normal image: all-False mask), or an ``ImageRecord`` (its
    ``mask_path`` and ``mask_threshold`` are used; prefer this form, it carries the dataset's binarisation
    rule). ``threshold``: binarise ``value > threshold`` instead of ``!= 0`` (overrides the record's; 0 or
    ``None`` without a record means FADE's ``!= 0``). If ``image_size`` (``(width, height)`` of the image) is
    given and the mask has another size, ``DatasetError`` names both files and sizes (``image_path``, or the
    record's image, names the image in the message).
    """
    size = _check_size(size)
    if isinstance(path_or_none, ImageRecord):
        record = path_or_none
        path_or_none = record.mask_path
        if threshold is None:
            threshold = record.mask_threshold
        if image_path is None:
            image_path = record.path
    threshold = int(threshold or 0)
    if path_or_none is None:
        return torch.zeros((size, size), dtype=torch.bool)
    p = Path(path_or_none)
    _check_file(p, "mask file")
    try:
        with Image.open(p) as im:
            im.load()
            mode = im.mode
            mask_size = (int(im.size[0]), int(im.size[1]))
            values = np.asarray(im)
    except _READ_ERRORS as exc:
        raise DatasetError(f"{p}: cannot read mask ({_describe(exc)})") from exc
    if image_size is not None and tuple(int(v) for v in image_size) != mask_size:
        img = f"image {image_path}" if image_path is not None else "its image"
        raise DatasetError(
            f"mask {p} is {mask_size[0]}x{mask_size[1]} but {img} is "
            f"{int(image_size[0])}x{int(image_size[1])} (width x height)"
        )
    if values.ndim == 3 and mode in _ALPHA_MODES:
        values = values[..., :-1]
    binary = (values != 0) if threshold == 0 else (values > threshold)
    if binary.ndim == 3:
        binary = binary.any(axis=-1)
    mask = torch.from_numpy(np.ascontiguousarray(binary, dtype=np.float32))[None]
    resized = transforms.Resize((size, size))(mask)
    return resized[0] > 0.5
