"""Reading images and masks, and the one preprocessing function (FADE's, exactly).

Everything that turns a file into pixels lives here, so that every method sees the same pixels:

- ``load_image``: any common file -> 8-bit RGB ``PIL.Image`` (full decode, clear errors).
- ``preprocess``: RGB image -> normalised CLIP input tensor, exactly as FADE builds it.
- ``load_mask``: mask file -> boolean ``(size, size)`` tensor: FADE's recipe on lossless masks, one rule for
  every format (below).
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

Mask rule of ``load_mask`` (one rule for every format; thresholds are in 8-bit units, 0..255):

- The threshold ``t`` is the record's ``mask_threshold`` (or the ``threshold`` argument). ``t = 0`` means the
  format's default: 0 for lossless files (PNG, BMP, TIFF, GIF), ``LOSSY_MASK_THRESHOLD`` = 127 for lossy ones
  (JPEG, MPO, JPEG-compressed TIFF), because JPEG ringing leaves small non-zero values around every edge that
  does not fall on the 8x8 block grid, which ``!= 0`` counts as defect (a small 0/255 square saved as JPEG grows
  1.4-1.7x); 127 is the middle of the range, where the decoded edge of a 0/255 mask crosses, so the area stays
  within a few percent.
- ``t = 0`` (lossless default): a pixel is defect when its **stored** value is non-zero, FADE's rule exactly:
  palette *indices* for ``P`` files (not their colours), VisA class ids (1, 2, ...), raw 16-bit values. Results
  on MVTec AD (0/255 masks) and VisA are FADE's.
- ``t > 0``: a pixel is defect when the value ``load_image`` would give it is above ``t``: 16-bit samples
  rescaled ``round(v / 257)`` (so a 16-bit mask and its 8-bit conversion give the same pixels, and
  magnetic tile's 127 means the same on both), ``1``-bit as 0/255, palettes looked up to their colours, ``F`` as
  0..255.
- Multi-channel masks: a pixel counts when any colour channel passes; alpha is ignored.

Damaged files. Every file is decoded in full when read (``load_image``, ``load_mask``); an unreadable or truncated
file raises ``DatasetError`` naming it. Pillow (13.0) decodes damaged JPEG scan data without any sign: its libjpeg
error handler discards every warning ("Corrupt JPEG data: ...", "premature end of data segment") and the
undecodable part is filled in. JPEG files are therefore also checked here (bytes only, no second decode): a file
with no end-of-image marker after its image data is truncated (``DatasetError``, also when
``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is set); invalid or misplaced markers, bad segment lengths and restart
markers out of order or in the wrong number give an ``ImageWarning`` naming the file and the problem, and the
decoded pixels are used. Damage that keeps the marker structure (flipped bits, garbage without a 0xFF byte, which
is most random damage) only shows in the Huffman decode and cannot be seen this way.
"""

from __future__ import annotations

import functools
import io
import warnings
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
    "LOSSY_MASK_THRESHOLD",
    "ImageWarning",
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

#: default mask threshold (8-bit units) of lossy mask files (JPEG): see the mask rule in the module docstring
LOSSY_MASK_THRESHOLD = 127
_JPEG_FORMATS = ("JPEG", "MPO")
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# sequential and progressive DCT frames (not lossless, not hierarchical): their restart markers can be counted
_JPEG_COUNTED_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC9, 0xCA))


class ImageWarning(UserWarning):
    """A file decoded, but its data is damaged, so some of its pixels may be wrong. The message names the file."""


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_file(path: Path, what: str) -> None:
    if not path.exists():
        raise DatasetError(f"{what} not found: {path}")
    if not path.is_file():
        raise DatasetError(f"{what} is not a file: {path}")


def to_rgb(image: Image.Image, *, source: str | PathLike | None = None) -> Image.Image:
    """Convert a decoded PIL image of any supported mode to 8-bit RGB (rules in the module docstring).

    Parameters
    ----------
    image : PIL.Image.Image
        The decoded image.
    source : str or os.PathLike, optional
        The file it came from, named in error messages.

    Returns
    -------
    PIL.Image.Image
        A new ``RGB`` image (a copy when ``image`` is RGB already).

    Raises
    ------
    DatasetError
        When PIL cannot convert the mode.
    """
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


def _scan_end(data: bytes, pos: int) -> tuple[int, list[tuple[int, int]]]:
    """End of the entropy-coded data that starts at ``pos`` (the offset of the next marker's 0xFF, or the file's
    length), and the restart markers met on the way as ``(n, offset)`` for ``RSTn``."""
    restarts = []
    n = len(data)
    while True:
        j = data.find(b"\xff", pos)
        if j < 0 or j + 1 >= n:
            return n, restarts
        code = data[j + 1]
        if code == 0x00:  # a stuffed 0xFF data byte
            pos = j + 2
        elif 0xD0 <= code <= 0xD7:
            restarts.append((code - 0xD0, j))
            pos = j + 2
        elif code == 0xFF:  # fill bytes before a marker
            pos = j + 1
        else:
            return j, restarts


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _jpeg_problem(data: bytes) -> tuple[bool, str] | None:
    """Check the marker structure of a JPEG file: ``None`` if sound, else ``(truncated, what is wrong)``.

    Walks the segments from SOI to EOI; each scan's entropy-coded data must end at a marker that may follow a scan,
    its restart markers must run RST0, RST1, ... and number what the frame needs. Truncation is judged alone (no
    EOI after the first scan), so garbage that happens to look like a long segment is damage, not truncation.
    """
    n = len(data)
    first_scan = data.find(b"\xff\xda")
    if first_scan < 0 or data.find(b"\xff\xd9", first_scan) < 0:
        return True, "no end-of-image marker after the image data"
    pos, frame, sof, restart, scans = 2, None, 0, 0, 0
    while True:
        if pos >= n:
            return False, f"the file ends at byte {n} before its end-of-image marker"
        if data[pos] != 0xFF:
            return False, f"expected a marker at byte {pos}, found 0x{data[pos]:02X}"
        start = pos
        while pos < n and data[pos] == 0xFF:
            pos += 1
        if pos >= n:
            return False, f"the file ends at byte {n} before its end-of-image marker"
        code = data[pos]
        pos += 1
        if code == 0xD9:
            return None if scans else (False, f"end-of-image marker at byte {start} before any image data")
        if 0xD0 <= code <= 0xD7 or code == 0x01:
            continue  # a stray restart marker or TEM: no parameters, libjpeg skips it
        if code < 0xC0 or code == 0xD8:
            return False, f"invalid marker 0xFF{code:02X} at byte {start}"
        length = int.from_bytes(data[pos:pos + 2], "big")
        if length < 2 or pos + length > n:
            return False, f"marker 0xFF{code:02X} at byte {start} has an impossible length {length}"
        seg = data[pos + 2:pos + length]
        pos += length
        if code in _JPEG_SOF:
            if frame is not None and sof in _JPEG_COUNTED_SOF:
                return False, f"a second frame header (0xFF{code:02X}) at byte {start}"
            if len(seg) < 6 or len(seg) < 6 + 3 * seg[5]:
                return False, f"frame header at byte {start} is too short"
            height, width = int.from_bytes(seg[1:3], "big"), int.from_bytes(seg[3:5], "big")
            comps = {seg[6 + 3 * i]: (seg[7 + 3 * i] >> 4, seg[7 + 3 * i] & 15) for i in range(seg[5])}
            if not comps or any(h < 1 or v < 1 for h, v in comps.values()):
                return False, f"frame header at byte {start} has no components or a zero sampling factor"
            frame, sof = (width, height, comps), code
        elif code == 0xDD:
            restart = int.from_bytes(seg[:2], "big") if len(seg) >= 2 else 0
        elif code == 0xDA:
            if frame is None:
                return False, f"scan at byte {start} before any frame header"
            width, height, comps = frame
            ids = list(seg[1:1 + 2 * seg[0]:2]) if seg else []
            if not ids or len(ids) != seg[0] or any(i not in comps for i in ids):
                return False, f"scan header at byte {start} names components the frame does not have"
            pos, restarts = _scan_end(data, pos)
            scans += 1
            for k, (r, at) in enumerate(restarts):
                if r != k % 8:
                    return False, f"restart marker RST{r} at byte {at} where RST{k % 8} was due (scan data lost)"
            if sof in _JPEG_COUNTED_SOF and height:
                hmax = max(h for h, _ in comps.values())
                vmax = max(v for _, v in comps.values())
                if len(ids) > 1:  # interleaved: one MCU covers hmax x vmax blocks
                    mcus = _ceil_div(width, 8 * hmax) * _ceil_div(height, 8 * vmax)
                else:  # one component: one MCU is one of its blocks
                    h, v = comps[ids[0]]
                    mcus = _ceil_div(_ceil_div(width * h, hmax), 8) * _ceil_div(_ceil_div(height * v, vmax), 8)
                due = _ceil_div(mcus, restart) - 1 if restart else 0
                if not due <= len(restarts) <= due + 1:  # one trailing RST is tolerated, as libjpeg does
                    return False, (f"scan at byte {start} has {len(restarts)} restart marker(s) where {due} are due "
                                   "(scan data lost or added)")


def _decode(path: Path, what: str) -> Image.Image:
    """Open and fully decode ``path`` (``what``: ``"image"`` or ``"mask"``), checking JPEG files (module docstring)."""
    _check_file(path, f"{what} file")
    try:
        data = path.read_bytes()
        im = Image.open(io.BytesIO(data))
        im.load()  # force the full decode so truncated files fail here, not later in a transform
    except _READ_ERRORS as exc:
        raise DatasetError(f"{path}: cannot read {what} ({_describe(exc)})") from exc
    if im.format in _JPEG_FORMATS:
        problem = _jpeg_problem(data)
        if problem is not None and problem[0]:
            raise DatasetError(f"{path}: cannot read {what} (truncated JPEG: {problem[1]})")
        if problem is not None:
            # Pillow filled in what it could not decode without saying so; tell the user which file it was
            warnings.warn(f"{path}: corrupt JPEG data ({problem[1]}); Pillow decoded it without an error, so part "
                          f"of the {what} may be filled in or wrong", ImageWarning, stacklevel=3)
    return im


def load_image(path: str | PathLike) -> Image.Image:
    """Read an image file fully (forcing a complete decode) and return it as 8-bit RGB.

    Parameters
    ----------
    path : str or os.PathLike
        The image file.

    Returns
    -------
    PIL.Image.Image
        The image in mode ``RGB`` (conversion rules in the module docstring).

    Raises
    ------
    DatasetError
        Naming the file, for a missing file, an unidentifiable or truncated image, or an unsupported mode.

    Warns
    -----
    ImageWarning
        Naming the file, for a JPEG whose data is damaged but decodes (see the module docstring).
    """
    p = Path(path)
    return to_rgb(_decode(p, "image"), source=p)


def read_image_size(path: str | PathLike) -> tuple[int, int]:
    """Read an image's size from the file header only (no pixel decode).

    Parameters
    ----------
    path : str or os.PathLike
        The image file.

    Returns
    -------
    tuple of (int, int)
        ``(width, height)``.

    Raises
    ------
    DatasetError
        When the file is missing, not a file, or its header cannot be read.
    """
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
    """Return FADE's image transform for one square size: ``Resize((s, s), bicubic)`` -> ``ToTensor`` -> ``Normalize``.

    The aspect ratio is not preserved and there is no centre crop (FADE's ``--square`` default). On a PIL input
    torchvision's ``Resize`` calls PIL's own bicubic resize, which always antialiases (PIL's filter support
    scales with the downsampling factor); the ``antialias`` argument only affects tensor inputs, so leaving it
    at its default cannot change the result here. Memoised per size.

    Parameters
    ----------
    size : int
        Output side in px, >= 1.

    Returns
    -------
    torchvision.transforms.Compose
        Maps an RGB PIL image to a (3, size, size) float32 tensor normalised with ``CLIP_MEAN`` / ``CLIP_STD``.

    Raises
    ------
    ValueError
        When ``size`` is not a positive int.
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

    See ``clip_transform`` for the transform itself.

    Parameters
    ----------
    image : PIL.Image.Image or str or os.PathLike
        A PIL image (converted to RGB by ``to_rgb`` if it is not RGB already) or a path (read with
        ``load_image``).
    size : int
        Output side in px.

    Returns
    -------
    torch.Tensor
        (3, size, size) float32.

    Raises
    ------
    ValueError
        When ``size`` is not a positive int.
    TypeError
        When ``image`` is neither a PIL image nor a path.
    DatasetError
        When a path cannot be read (as ``load_image``).
    """
    size = _check_size(size)
    if isinstance(image, (str, PathLike)):
        image = load_image(image)
    elif not isinstance(image, Image.Image):
        raise TypeError(f"preprocess expects a PIL image or a path, got {type(image).__name__}")
    elif image.mode != "RGB":
        image = to_rgb(image)
    return clip_transform(size)(image)


def _is_lossy(im: Image.Image) -> bool:
    compression = str(im.info.get("compression", "")).lower()
    return im.format in _JPEG_FORMATS or (im.format == "TIFF" and "jpeg" in compression)


def load_mask(
    path_or_none: str | PathLike | ImageRecord | None,
    size: int,
    *,
    image_size: tuple[int, int] | None = None,
    image_path: str | PathLike | None = None,
    threshold: int | None = None,
) -> torch.Tensor:
    """Read a ground-truth mask as a boolean ``(size, size)`` tensor, with FADE's resizing.

    Binarisation follows the mask rule of the module docstring: with threshold ``t`` (8-bit units) 0, the
    format's default, lossless files count every non-zero stored value (FADE's ``value != 0``: palette indices,
    VisA class ids, raw 16-bit values) and lossy files (JPEG) use ``t = LOSSY_MASK_THRESHOLD`` (127); with
    ``t > 0`` a pixel is defect when the 8-bit value ``load_image`` would give it (16-bit rescaled
    ``round(v / 257)``, palette colours) is above ``t``. Any colour channel counts, alpha is ignored. The 0/1 map
    is then resized to ``(size, size)`` as FADE does (torchvision's default for tensors: bilinear, antialias on)
    and thresholded ``> 0.5``.

    Parameters
    ----------
    path_or_none : str or os.PathLike or ImageRecord or None
        A mask path, ``None`` (a normal image: all-False mask), or an ``ImageRecord`` (its ``mask_path`` and
        ``mask_threshold`` are used; prefer this form, it carries the dataset's threshold).
    size : int
        Side of the returned mask in px.
    image_size : tuple of (int, int), optional
        ``(width, height)`` of the image; when given, a mask of another size is an error.
    image_path : str or os.PathLike, optional
        Names the image in that error message (default: the record's image, if a record is given).
    threshold : int, optional
        Threshold ``t`` in 0..255; overrides the record's. 0 or ``None`` without a record means the format's
        default.

    Returns
    -------
    torch.Tensor
        (size, size) bool.

    Raises
    ------
    ValueError
        When ``size`` is not a positive int or the threshold is outside 0..255.
    DatasetError
        When the mask's size differs from ``image_size`` (naming both files and sizes), or the mask file is
        missing or cannot be read (as ``load_image``, naming the mask file).

    Warns
    -----
    ImageWarning
        For a damaged JPEG mask that decodes, as ``load_image``.
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
    if not 0 <= threshold <= 255:
        raise ValueError(f"mask threshold must be in 0..255 (8-bit units), got {threshold}")
    if path_or_none is None:
        return torch.zeros((size, size), dtype=torch.bool)
    p = Path(path_or_none)
    im = _decode(p, "mask")
    mask_size = (int(im.size[0]), int(im.size[1]))
    if image_size is not None and tuple(int(v) for v in image_size) != mask_size:
        img = f"image {image_path}" if image_path is not None else "its image"
        raise DatasetError(
            f"mask {p} is {mask_size[0]}x{mask_size[1]} but {img} is "
            f"{int(image_size[0])}x{int(image_size[1])} (width x height)"
        )
    if threshold == 0 and _is_lossy(im):
        threshold = LOSSY_MASK_THRESHOLD
    if threshold == 0:
        values = np.asarray(im)  # stored values: palette indices, class ids, raw 16-bit samples
        if values.ndim == 3 and im.mode in _ALPHA_MODES:
            values = values[..., :-1]
        binary = values != 0
    else:
        # the pixels load_image gives (16-bit rescaled like images, palettes looked up, alpha dropped)
        binary = np.asarray(to_rgb(im, source=p)) > threshold
    if binary.ndim == 3:
        binary = binary.any(axis=-1)
    mask = torch.from_numpy(np.ascontiguousarray(binary, dtype=np.float32))[None]
    resized = transforms.Resize((size, size))(mask)
    return resized[0] > 0.5
